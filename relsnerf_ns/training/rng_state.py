"""Random number generator states as checkpoint entries, so a resumed run draws what an uninterrupted run would.

Every random draw of a ReLS-NeRF step goes through the process-wide generators: torch's (rays of nerfstudio's pixel
sampler, patch and crop positions, the proposal sampler's jitter; CUDA's generator when the model is on a GPU),
Python's `random` (nerfstudio's evaluation image choice and masked pixel sampling) and numpy's. Phase C's interpolated
cameras use a generator seeded from `distill_render_seed` each time, so they need no state. The states are stored as
tensors and plain values only, which `torch.load(weights_only=True)` accepts.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor


class RngSnapshot(NamedTuple):
    """The generators' states as the libraries return them, cheap enough to take every step (converted only when
    saved). numpy's is left out: taking it costs ~0.1 ms and no training step draws from it (nerfstudio and this
    package draw from torch's and Python's generators), so its state when saving is its state at any step start."""

    torch: Tensor
    python: Tuple[Any, ...]
    cuda: Optional[List[Tensor]]


def snapshot_rng_state() -> RngSnapshot:
    # CUDA only when in use: asking for its state would otherwise initialise CUDA in a CPU run.
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return RngSnapshot(torch.get_rng_state(), random.getstate(), cuda)


def capture_rng_state(snapshot: Optional[RngSnapshot] = None) -> Dict[str, Any]:
    """The states of torch's CPU (and, once initialised, CUDA) generators, numpy's and Python's, as checkpoint
    entries: now, or as they were in `snapshot`."""
    snapshot = snapshot_rng_state() if snapshot is None else snapshot
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = snapshot.python
    state: Dict[str, Any] = {
        "torch": snapshot.torch,
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if snapshot.cuda is not None:
        state["cuda"] = [s.clone() for s in snapshot.cuda]
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Set the generators to a state from `capture_rng_state` (a CUDA state is skipped on a machine without CUDA)."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            int(numpy_state["pos"]),
            int(numpy_state["has_gauss"]),
            float(numpy_state["cached_gaussian"]),
        )
    )
    python_state = state["python"]
    random.setstate(
        (
            int(python_state["version"]),
            tuple(int(v) for v in python_state["internal"].tolist()),
            python_state["gauss_next"],
        )
    )
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
