"""Loading pretrained autoencoder weights from local files, with errors that say what is wrong and how to fix it."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch
from torch import Tensor, nn


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights are missing, unreadable or of another architecture."""


def read_state_dict(path: Path, what: str, how_to_supply: str) -> Dict[str, Tensor]:
    """Read a plain tensor state dict (.pth/.pt with weights_only, or .safetensors)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(f"{what}: no file at '{path}'. {how_to_supply}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PretrainedWeightsError(f"{what}: could not read '{path}' ({type(error).__name__}: {error}).") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{what}: '{path}' does not hold a state dict of tensors.")
    return state


def load_state_dict_strictly(module: nn.Module, state: Dict[str, Tensor], source: Path, what: str) -> None:
    """Load every tensor with matching shapes, or name the missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = [
        f"{k}: file {tuple(state[k].shape)} vs expected {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if own[k].shape != state[k].shape
    ]
    if missing or unexpected or mis_shaped:
        lines = [f"{what}: '{source}' does not match the expected architecture."]
        if mis_shaped:
            lines.append("  shape mismatches: " + "; ".join(mis_shaped[:8]) + (" ..." if len(mis_shaped) > 8 else ""))
        if missing:
            lines.append("  missing keys: " + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            lines.append("  unexpected keys: " + ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else ""))
        raise PretrainedWeightsError("\n".join(lines))
    module.load_state_dict(state, strict=True)
