"""Trainer for ReLS-NeRF: the phase schedule sets the run length and every learning rate; checkpoints are atomic.

- The number of steps comes from the pipeline's phase schedule (A + B + C), also when resuming: a run resumed at
  step s trains the remaining steps, not another full schedule (nerfstudio's loop would).
- Phase-aware schedulers get the pipeline's schedule, so step counts set on the command line move the learning rate
  changes with them.
- Checkpoints are written to a temporary file and renamed, so a kill never leaves a truncated checkpoint, and they
  hold only tensors and plain values, which `torch.load(weights_only=True)` (the default since torch 2.6) accepts.
- Phase C's renders live in the run directory; a resumed run reuses those of the run it resumes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Type

import torch
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread

from relsnerf_ns.relsnerf_pipeline import RelsNerfPipeline, RelsNerfPipelineConfig
from relsnerf_ns.schedulers import PhasedSchedulerConfig

DISTILL_RENDER_DIR = "distill_renders"


@dataclass
class RelsNerfTrainerConfig(TrainerConfig):
    """nerfstudio's trainer settings; the run length follows --pipeline.phases."""

    _target: Type = field(default_factory=lambda: RelsNerfTrainer)
    pipeline: RelsNerfPipelineConfig = field(default_factory=RelsNerfPipelineConfig)
    """The three-phase ReLS-NeRF pipeline."""


class RelsNerfTrainer(Trainer):
    config: RelsNerfTrainerConfig
    pipeline: RelsNerfPipeline

    def __init__(self, config: RelsNerfTrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        config.max_num_iterations = config.pipeline.phases.total_steps
        super().__init__(config, local_rank, world_size)

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        self.config.pipeline.distill_render_dir = self._distill_render_dir()
        super().setup(test_mode=test_mode)
        self.pipeline.config.distill_render_dir = self.config.pipeline.distill_render_dir
        self.config.max_num_iterations = max(0, self.pipeline.schedule.total_steps - self._start_step)

    def _distill_render_dir(self) -> Path:
        if self.config.load_dir is not None:
            previous = Path(self.config.load_dir).parent / DISTILL_RENDER_DIR
            if previous.is_dir():
                return previous
        return self.base_dir / DISTILL_RENDER_DIR

    def setup_optimizers(self) -> Optimizers:
        optimizer_config = self.config.optimizers.copy()
        for group in optimizer_config.values():
            scheduler = group.get("scheduler")
            if isinstance(scheduler, PhasedSchedulerConfig):
                scheduler.schedule = self.config.pipeline.phases
        return Optimizers(optimizer_config, self.pipeline.get_param_groups())

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        state = {
            "step": int(step),
            "pipeline": self.pipeline.module.state_dict()
            if hasattr(self.pipeline, "module")
            else self.pipeline.state_dict(),  # type: ignore
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != path:
                    old.unlink()
