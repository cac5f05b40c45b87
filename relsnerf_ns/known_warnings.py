"""Warnings of nerfstudio and torch that every ReLS-NeRF run would print although nothing is wrong, silenced.

Each filter names the warning's category, the start of its message and the module that issues it, so that the same
message from anywhere else, and every other warning, still shows. They are installed when a ReLS-NeRF trainer or
datamanager is set up (`ns-train`, `ns-eval`, `ns-render`, `ns-viewer` with a relsnerf config), not when the plugin is
imported: nerfstudio imports every plugin for every command, and a nerfacto run keeps its console as it was.

Not here: warnings that nerfstudio emits while importing its own modules (e.g. `torch.cuda.amp.custom_fwd` is
deprecated, from nerfstudio's activations), which are printed before any plugin code runs.
"""

from __future__ import annotations

import warnings
from typing import Tuple, Type

KNOWN_HARMLESS: Tuple[Tuple[Type[Warning], str, str, str], ...] = (
    # (category, message start, issuing module, why it is harmless)
    (
        FutureWarning,
        r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated",
        r"nerfstudio\.engine\.trainer",
        "nerfstudio's Trainer builds its grad scaler through the deprecated alias; it works the same",
    ),
    (
        UserWarning,
        r"torch\.cuda\.amp\.GradScaler is enabled, but CUDA is not available",
        r"torch\.cuda\.amp\.grad_scaler",
        "mixed precision is off on the CPU anyway (nerfstudio says so once); the scaler disables itself",
    ),
    (
        UserWarning,
        r"This DataLoader will create \d+ worker processes in total",
        r"torch\.utils\.data\.dataloader",
        "nerfstudio's loaders ask for 4 workers per device to cache the images once; fewer cores only slow that",
    ),
    (
        UserWarning,
        r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`",
        r"nerfstudio\.engine\.optimizers",
        "by design: every group's phase-aware schedule advances each step, also in phases that do not train it",
    ),
    (
        UserWarning,
        r"Using a non-tuple sequence for multidimensional indexing is deprecated",
        r"nerfstudio\.cameras\.cameras",
        "nerfstudio's ray generation indexes with lists; torch 2.11 still reads them as tuples (same rays)",
    ),
    (
        UserWarning,
        r"Using torch\.cross without specifying the dim arg is deprecated",
        r"nerfstudio\.cameras\.camera_utils",
        "nerfstudio's camera paths (ns-render spiral) cross 3-vectors, where the default dim is the only one",
    ),
)

_installed = False


def silence_known_warnings() -> None:
    """Install the filters of `KNOWN_HARMLESS` (once per process)."""
    global _installed
    if _installed:
        return
    for category, message, module, _ in KNOWN_HARMLESS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    _installed = True
