"""The three fitting phases of ReLS-NeRF and the step schedule that switches among them.

(A) autoencoder pretraining, (B) joint NeRF fitting, (C) decoder distillation (paper section III-B). Steps are the
trainer's global steps: phase A runs on [0, a), B on [a, a + b), C on [a + b, a + b + c).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Dict, Literal, Optional, Tuple


class Phase(str, Enum):
    AE_PRETRAIN = "A"
    JOINT = "B"
    DISTILL = "C"

    @property
    def title(self) -> str:
        return {"A": "A: autoencoder pretraining", "B": "B: joint NeRF fitting", "C": "C: decoder distillation"}[
            self.value
        ]

    @property
    def index(self) -> int:
        """0, 1, 2: the value logged as the `phase` scalar."""
        return "ABC".index(self.value)


# The paper's iteration counts (appendix B) and our short preset, per autoencoder family.
PAPER_STEPS: Dict[str, Tuple[int, int, int]] = {"sd": (500, 20000, 3000), "r32": (3000, 20000, 10000)}
SHORT_STEPS: Dict[str, Tuple[int, int, int]] = {"sd": (100, 3000, 500), "r32": (300, 3000, 1000)}
# Phase C's RGB-NeRF renders at interpolated cameras (paper: 512). Each is a full-resolution per-pixel render (fern at
# 1008x756 on an H200: about 0.6 s with writing it to disk, 0.34-0.42 s the render alone), so the short preset makes 64.
DISTILL_RENDERS: Dict[str, int] = {"paper": 512, "short": 64}


@dataclass
class PhaseScheduleConfig:
    """How many steps each phase runs. Unset counts come from the preset."""

    preset: Literal["paper", "short"] = "paper"
    """'paper': the paper's iteration counts; 'short': a quick run (~1/7 of the steps, same schedule shapes)."""
    ae_pretrain_steps: Optional[int] = None
    """Steps of phase A (autoencoder pretraining); None takes the preset's."""
    joint_steps: Optional[int] = None
    """Steps of phase B (joint NeRF + latent fitting); None takes the preset's."""
    distill_steps: Optional[int] = None
    """Steps of phase C (decoder distillation); None takes the preset's."""
    skip_ae_pretrain: bool = False
    """Ablation: skip phase A (the decoder then starts from its initial weights in phase B)."""
    skip_distill: bool = False
    """Ablation: skip phase C."""
    family: Literal["sd", "r32"] = "r32"
    """Which preset row applies: 'sd' for pretrained decoders (SD-VAE, tiny AE), 'r32' for decoders from scratch."""

    def steps(self) -> Tuple[int, int, int]:
        """(A, B, C) step counts after presets, overrides and skips."""
        table = PAPER_STEPS if self.preset == "paper" else SHORT_STEPS
        a, b, c = table[self.family]
        a = a if self.ae_pretrain_steps is None else self.ae_pretrain_steps
        b = b if self.joint_steps is None else self.joint_steps
        c = c if self.distill_steps is None else self.distill_steps
        if min(a, b, c) < 0:
            raise ValueError(f"phase step counts must be >= 0, got A={a}, B={b}, C={c}")
        if b == 0:
            raise ValueError("phase B (joint fitting) needs at least one step: it is the phase that fits the NeRF")
        return (0 if self.skip_ae_pretrain else a, b, 0 if self.skip_distill else c)

    def boundaries(self) -> Tuple[int, int, int]:
        """Global steps at which B starts, C starts, and training ends."""
        a, b, c = self.steps()
        return a, a + b, a + b + c

    @property
    def total_steps(self) -> int:
        return self.boundaries()[2]

    def phase_at(self, step: int) -> Phase:
        b_start, c_start, _ = self.boundaries()
        if step < b_start:
            return Phase.AE_PRETRAIN
        if step < c_start:
            return Phase.JOINT
        return Phase.DISTILL

    def start_of(self, phase: Phase) -> int:
        b_start, c_start, _ = self.boundaries()
        return {Phase.AE_PRETRAIN: 0, Phase.JOINT: b_start, Phase.DISTILL: c_start}[phase]

    def length_of(self, phase: Phase) -> int:
        return self.steps()[phase.index]

    def distill_renders(self) -> int:
        """The preset's number of phase-C renders."""
        return DISTILL_RENDERS[self.preset]

    def paper_length_of(self, phase: Phase) -> int:
        """The paper's length of a phase: the reference that learning-rate periods are given for."""
        return PAPER_STEPS[self.family][phase.index]
