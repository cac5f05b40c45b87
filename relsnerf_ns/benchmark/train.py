"""Training one benchmark model in-process with nerfstudio's Trainer, timing each fitting phase.

- Phase wall time: the trainer's loop is timed from the first step of a phase to the first step of the next (the
  device is synchronised at each boundary), so it includes everything the phase costs: phase C's RGB-NeRF renders,
  data loading, logging and checkpoints; set-up before the first step is recorded apart.
- Peak GPU memory: `torch.cuda.max_memory_allocated` over the training (None on a CPU).
- Time limit: with `time_limit_minutes`, training stops after the step that crosses the limit, saves a checkpoint
  of exactly that step, and records how far it got; the next `train` of the same model resumes from it (a 10-minute
  GPU command per piece). Phase times and steps add up over the pieces.
- A piece killed from outside (a command's time limit) resumes from the latest checkpoint: nerfstudio's periodic
  ones (`steps_per_save`) and one at each phase boundary; the record is rewritten at each of them, so the time of the
  steps before it still counts.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import writer
from nerfstudio.utils.misc import step_check
from nerfstudio.utils.rich_utils import CONSOLE, get_progress

from relsnerf_ns.benchmark.models import ModelSpec, nerfstudio_checkpoint_globals
from relsnerf_ns.data.atomic_files import atomic_write_text
from relsnerf_ns.evaluation.render_timing import synchronize
from relsnerf_ns.rendering.hash_grid_kernel import uses_fused_hash_grids
from relsnerf_ns.rendering.out_of_memory import free_cached_memory

ConfigTransform = Callable[[str, TrainerConfig], Optional[TrainerConfig]]
"""(model name, config) -> config (or None after changing it in place): applied before training (tests shrink the
fields and autoencoders with it)."""


@dataclass
class FitRecord:
    """The fit facts of one model (results/<name>.fit.json)."""

    name: str
    kind: str
    autoencoder: Optional[str]
    method: str
    config: str
    """config.yml of the run, relative to the benchmark folder."""
    settings: Dict[str, object]
    """What must agree between the models of one benchmark (data, split, schedule, seed, ...)."""
    total_steps: int
    steps_planned: Dict[str, int]
    fit_seconds: Dict[str, float] = field(default_factory=dict)
    steps: Dict[str, int] = field(default_factory=dict)
    setup_seconds: float = 0.0
    peak_gpu_memory_mb_train: Optional[float] = None
    next_step: int = 0
    """The first step not trained yet (= total_steps when complete)."""
    completed: bool = False
    pieces: int = 0
    """How many `train` invocations it took."""
    running: bool = False
    """True while a `train` invocation works on it (still True afterwards: that invocation was killed)."""
    device: str = ""
    details: Dict[str, object] = field(default_factory=dict)
    """Facts of the run worth reporting: hash grid implementation, phase C's render count."""
    notes: list = field(default_factory=list)

    def to_json(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: Path) -> "FitRecord":
        data = json.loads(Path(path).read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class _TimeLimitReached(Exception):
    """Raised from a callback to leave nerfstudio's training loop after a checkpointed step."""


class PhaseClock:
    """Wall time and step count per phase; the device is synchronised when the phase changes or is read."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.seconds: Dict[str, float] = defaultdict(float)
        self.steps: Dict[str, int] = defaultdict(int)
        self.phase: Optional[str] = None
        self._since = 0.0

    def before_step(self, phase: str) -> None:
        if phase != self.phase:
            self._close()
            self.phase, self._since = phase, time.perf_counter()
        self.steps[phase] += 1

    def _close(self) -> None:
        if self.phase is not None:
            synchronize(self.device)
            now = time.perf_counter()
            self.seconds[self.phase] += now - self._since
            self._since = now

    def totals(self) -> Dict[str, float]:
        """Seconds per phase so far, the running phase included."""
        self._close()
        return dict(self.seconds)

    def stop(self) -> None:
        self._close()
        self.phase = None


def _reset_nerfstudio_writers() -> None:
    """nerfstudio keeps its event writers in module globals: without this, a second training in the same process
    would also log into the first run's tensorboard folder."""
    for event_writer in writer.EVENT_WRITERS:
        summary = getattr(event_writer, "tb_writer", None)
        if summary is not None:
            summary.close()
    writer.EVENT_WRITERS.clear()
    writer.EVENT_STORAGE.clear()
    writer.GLOBAL_BUFFER.clear()


def _seed_everything(seed: int) -> None:
    """What ns-train does before training (nerfstudio.scripts.train._set_random_seed)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def latest_checkpoint_step(checkpoint_dir: Path) -> Optional[int]:
    steps = [int(p.stem.split("-")[1]) for p in checkpoint_dir.glob("step-*.ckpt")]
    return max(steps) if steps else None


def train_model(
    model: ModelSpec,
    config: TrainerConfig,
    record_path: Path,
    benchmark_dir: Path,
    settings: Dict[str, object],
    time_limit_minutes: Optional[float] = None,
    force: bool = False,
) -> FitRecord:
    """Train `model` with `config` (fresh, or resuming an unfinished run with the same settings); write its record.

    A model whose record says it finished with the same settings is not trained again unless `force`.
    """
    base_dir = config.get_base_dir()
    checkpoint_dir = config.get_checkpoint_dir()
    previous = FitRecord.from_json(record_path) if record_path.exists() else None
    same = previous is not None and previous.settings == settings
    if previous is not None and same and previous.completed and not force:
        CONSOLE.print(f"[green]{model.name}: already trained with these settings ({record_path}); --force retrains.")
        return previous
    resume_step = latest_checkpoint_step(checkpoint_dir) if same and not force else None
    if resume_step is None or previous is None:
        if base_dir.exists():
            CONSOLE.print(f"{model.name}: removing the previous run {base_dir}")
            shutil.rmtree(base_dir)
        record = FitRecord(
            name=model.name,
            kind=model.kind,
            autoencoder=model.autoencoder,
            method=str(config.method_name),
            config=str((base_dir / "config.yml").relative_to(benchmark_dir)),
            settings=settings,
            total_steps=int(config.max_num_iterations),
            steps_planned=dict(settings["steps"]),  # type: ignore[arg-type]
        )
    else:
        record = previous
        config.load_dir = checkpoint_dir
        config.load_step = resume_step
        if record.running:
            record.notes.append(
                f"training piece {record.pieces + 1} was stopped from outside; its time after its last checkpoint "
                "is not counted and those steps were trained again"
            )
            record.pieces += 1
        CONSOLE.print(f"[bold]{model.name}: resuming after step {resume_step} of {record.total_steps}")
    record.device = config.machine.device_type
    config.save_config()

    _seed_everything(config.machine.seed)
    _reset_nerfstudio_writers()
    device = config.machine.device_type
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    setup_start = time.perf_counter()
    with nerfstudio_checkpoint_globals():  # the latter for resuming nerfacto
        trainer: Trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
    # nerfstudio's loop trains max_num_iterations steps from the loaded one; ReLS-NeRF's trainer sets the remainder
    # itself, nerfacto's does not.
    trainer.config.max_num_iterations = max(0, record.total_steps - trainer._start_step)
    record.setup_seconds += time.perf_counter() - setup_start
    record.details["implementation"] = getattr(trainer.pipeline.model.config, "implementation", None)
    record.details["hash_grid_lookup"] = "fused" if uses_fused_hash_grids(trainer.pipeline.model) else "nerfstudio"
    if hasattr(trainer.pipeline, "num_distill_renders"):
        record.details["num_distill_renders"] = int(trainer.pipeline.num_distill_renders)

    clock = PhaseClock(device)
    schedule = getattr(trainer.pipeline, "schedule", None)
    base_seconds, base_steps, base_peak = dict(record.fit_seconds), dict(record.steps), record.peak_gpu_memory_mb_train

    def phase_of(step: int) -> str:
        return schedule.phase_at(step).value if schedule is not None else "B"

    def write_record(next_step: int, running: bool) -> None:
        """The record as of a checkpoint (so an invocation killed from outside resumes with its times counted)."""
        totals = clock.totals()
        record.fit_seconds = {p: base_seconds.get(p, 0.0) + totals.get(p, 0.0) for p in {*base_seconds, *totals}}
        record.steps = {p: base_steps.get(p, 0) + clock.steps.get(p, 0) for p in {*base_steps, *clock.steps}}
        if device == "cuda":
            record.peak_gpu_memory_mb_train = max(torch.cuda.max_memory_allocated() / 2**20, base_peak or 0.0)
        record.next_step, record.running = next_step, running
        record.completed = next_step >= record.total_steps and not running
        record.to_json(record_path)

    write_record(trainer._start_step, running=True)
    last_loss: Dict[str, torch.Tensor] = {}
    original_iteration = trainer.train_iteration

    def train_iteration(step: int):
        loss, loss_dict, metrics = original_iteration(step)
        last_loss["loss"] = loss.detach()
        return loss, loss_dict, metrics

    trainer.train_iteration = train_iteration  # type: ignore[method-assign]
    started = time.perf_counter()
    limit_seconds = None if time_limit_minutes is None else 60.0 * time_limit_minutes
    last_step = record.total_steps - 1
    shown = {"at": 0.0}
    save_every = config.steps_per_save

    with get_progress("[bold]{task.description}") as progress:  # the description shows the phase and loss
        task = progress.add_task(f"{model.name}", total=record.total_steps, completed=trainer._start_step)

        def before(step: int) -> None:
            previous_step = step - 1
            if previous_step >= trainer._start_step:
                if phase_of(step) != phase_of(previous_step) and not step_check(previous_step, save_every):
                    # A checkpoint at each phase boundary: a piece killed while phase C makes its renders (minutes)
                    # then resumes at the start of C instead of at the last periodic checkpoint inside B.
                    trainer.save_checkpoint(previous_step)
                    write_record(step, running=True)
                elif step_check(previous_step, save_every):
                    write_record(step, running=True)  # nerfstudio saved the checkpoint of previous_step just now
            clock.before_step(phase_of(step))

        def after(step: int) -> None:
            now = time.perf_counter()
            description = None
            if now - shown["at"] > 0.5 or step == last_step:  # reading the loss waits for the GPU: not every step
                shown["at"] = now
                loss = float(last_loss["loss"]) if "loss" in last_loss else float("nan")
                description = f"{model.name} phase {phase_of(step)} loss {loss:.4f}"
            progress.update(task, completed=step + 1, description=description)
            if limit_seconds is not None and step < last_step and now - started > limit_seconds:
                trainer.save_checkpoint(step)
                raise _TimeLimitReached(step)

        trainer.callbacks += [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after),
        ]
        stopped_at = None
        try:
            trainer.train()
        except _TimeLimitReached as stop:
            stopped_at = int(stop.args[0])
        clock.stop()

    record.pieces += 1
    write_record(record.total_steps if stopped_at is None else stopped_at + 1, running=False)
    if stopped_at is None:
        times = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(record.fit_seconds.items()))
        CONSOLE.print(f"[green]{model.name}: trained {record.total_steps} steps ({times}); record {record_path}")
    else:
        CONSOLE.print(
            f"[yellow]{model.name}: time limit reached after step {stopped_at} of {record.total_steps}; "
            "checkpoint saved. Run the same `relsnerf-bench train` command again to continue."
        )
    _reset_nerfstudio_writers()
    del trainer
    free_cached_memory()
    return record
