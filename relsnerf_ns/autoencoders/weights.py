"""Loading pretrained autoencoder weights from local files, with errors that say what is wrong and how to fix it."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Sequence

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


def mismatch_report(expected: Mapping[str, Tensor], found: Mapping[str, Tensor], limit: int = 8) -> List[str]:
    """Lines naming the mis-shaped, missing and unexpected parameters (first `limit` of each), with their shapes."""

    def shown(items: List[str]) -> str:
        return "; ".join(items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")

    mis_shaped = [
        f"{k}: file {tuple(found[k].shape)} vs expected {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if tuple(expected[k].shape) != tuple(found[k].shape)
    ]
    missing = [f"{k} {tuple(expected[k].shape)}" for k in sorted(set(expected) - set(found))]
    unexpected = [f"{k} {tuple(found[k].shape)}" for k in sorted(set(found) - set(expected))]
    lines = []
    if mis_shaped:
        lines.append("  shape mismatches: " + shown(mis_shaped))
    if missing:
        lines.append("  missing keys (expected shape): " + shown(missing))
    if unexpected:
        lines.append("  unexpected keys (shape in the file): " + shown(unexpected))
    return lines


def load_state_dict_strictly(
    module: nn.Module,
    state: Dict[str, Tensor],
    source: Path,
    what: str,
    how_to_supply: str = "",
    hints: Sequence[str] = (),
) -> None:
    """Load every tensor with matching shapes, or name the missing, unexpected and mis-shaped keys with their shapes,
    what the file seems to hold (`hints`) and how to supply the right weights."""
    lines = mismatch_report(module.state_dict(), state)
    if lines:
        lines.insert(0, f"{what}: '{source}' does not match the expected architecture.")
        lines += [f"  {hint}" for hint in hints]
        if how_to_supply:
            lines.append(how_to_supply)
        raise PretrainedWeightsError("\n".join(lines))
    module.load_state_dict(state, strict=True)
