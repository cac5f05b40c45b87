"""Phase-aware learning rates: each parameter group gets its own rate (and decay) in each phase.

The paper's rates (appendix B) differ between phases for the same parameters (the decoder: 4e-4 with halvings in A for
R32, a fixed 1e-4 in B, 1e-4 halved every 2500 steps in C), so one scheduler per parameter group maps the global step to
the phase it falls in and the step within that phase. Decay periods are given for the paper's phase length and stretch
with the phase when a run uses another length (the short preset keeps the paper's schedule shapes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Tuple, Type

import tyro
from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig
from torch.optim import Optimizer, lr_scheduler

from relsnerf_ns.training.phases import Phase, PhaseScheduleConfig


@dataclass
class PhaseLR:
    """The learning rate of one parameter group during one phase; t is the step within the phase."""

    lr: float
    """Rate at the start of the phase."""
    halve_at: Tuple[int, ...] = ()
    """Halve the rate at these steps within the phase (paper-length steps)."""
    halve_every: int = 0
    """Halve the rate every this many steps within the phase (paper-length steps; 0: never)."""
    tenfold_decay_every: Optional[int] = 0
    """Exponential decay lr * 0.1^(t / this) (paper-length steps; 0: none). None: the model recipe's period for the
    NeRF in phase B (--pipeline.model.recipe: 20000 for 'relsnerf', the paper's 10000 for 'paper'); a number set here
    wins over the recipe."""

    def at(self, t: float) -> float:
        if self.tenfold_decay_every is None:
            raise RuntimeError(
                "PhaseLR.tenfold_decay_every is None (the model recipe's period): the RelsNerfTrainer resolves it for "
                "phase B at set-up; elsewhere set a number"
            )
        rate = self.lr
        rate *= 0.5 ** sum(1 for m in self.halve_at if t >= m)
        if self.halve_every > 0:
            rate *= 0.5 ** int(t // self.halve_every)
        if self.tenfold_decay_every > 0:
            rate *= 0.1 ** (t / self.tenfold_decay_every)
        return rate


@dataclass
class PhasedSchedulerConfig(SchedulerConfig):
    """Learning rate per phase (A, B, C) of one parameter group."""

    _target: Type = field(default_factory=lambda: PhasedScheduler)
    phase_a: PhaseLR = field(default_factory=lambda: PhaseLR(lr=0.0))
    """Rate during phase A (autoencoder pretraining); lr 0 freezes the group."""
    phase_b: PhaseLR = field(default_factory=lambda: PhaseLR(lr=0.0))
    """Rate during phase B (joint fitting); lr 0 freezes the group."""
    phase_c: PhaseLR = field(default_factory=lambda: PhaseLR(lr=0.0))
    """Rate during phase C (decoder distillation); lr 0 freezes the group."""
    # Not a CLI option (an Optional dataclass would become a tyro subcommand per parameter group): the trainer
    # copies the pipeline's schedule here so the two always agree.
    schedule: tyro.conf.Suppress[Optional[PhaseScheduleConfig]] = None

    def for_run(self, schedule: PhaseScheduleConfig, recipe_tenfold_decay_every: int) -> PhasedSchedulerConfig:
        """A copy with the run's schedule and, where phase B's decay period is None, the model recipe's.

        Copies, never changes self: one PhaseLR is shared by several groups and by the registered methods' configs."""
        phase_b = self.phase_b
        if phase_b.tenfold_decay_every is None:
            phase_b = replace(phase_b, tenfold_decay_every=recipe_tenfold_decay_every)
        return replace(self, phase_b=phase_b, schedule=schedule)

    def rate(self, step: int) -> float:
        if self.schedule is None:
            raise RuntimeError("PhasedSchedulerConfig.schedule is unset: the RelsNerfTrainer fills it in at set-up")
        phase = self.schedule.phase_at(step)
        spec = {Phase.AE_PRETRAIN: self.phase_a, Phase.JOINT: self.phase_b, Phase.DISTILL: self.phase_c}[phase]
        t = step - self.schedule.start_of(phase)
        stretch = self.schedule.length_of(phase) / max(1, self.schedule.paper_length_of(phase))
        return spec.at(t / max(stretch, 1e-8))


class PhasedScheduler(Scheduler):
    """LambdaLR whose factor is the phase's rate divided by the optimizer's initial rate."""

    config: PhasedSchedulerConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        config = self.config

        def factor(step: int) -> float:
            return config.rate(step) / lr_init

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
