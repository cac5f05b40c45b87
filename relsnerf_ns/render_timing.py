"""Wall-clock timing of renders that is honest on a GPU: the device is synchronised before and after each call.

CUDA kernels run asynchronously, so timing a render without synchronising measures only how long Python took to
queue it. Used by `ns-eval` (per-frame times of the decoded and the RGB-NeRF outputs) and by the benchmark.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, List, Tuple, TypeVar, Union

import torch

T = TypeVar("T")


def synchronize(device: Union[str, torch.device]) -> None:
    """Wait for all queued work on `device` (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], T], device: Union[str, torch.device]) -> Tuple[T, float]:
    """Run `function()` and return its result and the seconds it took, device-synchronised."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - start


def median_seconds(function: Callable[[], object], device: Union[str, torch.device], repeats: int, warmup: int = 1):
    """Median seconds per call of `function()` after `warmup` untimed calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        function()
    seconds: List[float] = [timed(function, device)[1] for _ in range(repeats)]
    return statistics.median(seconds)
