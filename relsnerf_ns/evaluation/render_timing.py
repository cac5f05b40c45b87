"""Wall-clock timing of renders that is honest on a GPU: the device is synchronised before and after each call.

CUDA kernels run asynchronously, so timing a render without synchronising measures only how long Python took to
queue it. Used by `ns-eval` (per-frame times of the decoded and the RGB-NeRF outputs) and by the benchmark.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable, Sequence, Tuple, TypeVar, Union

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


def median_ms(seconds: Iterable[float]) -> float:
    """The median of timings in seconds, in milliseconds (the median: one slow outlier frame does not move it)."""
    return 1000.0 * statistics.median(seconds)


def median_call_ms(calls: Sequence[Callable[[], object]], device: Union[str, torch.device], warmup: int = 0) -> float:
    """Median ms of one timed call of each of `calls`, after `warmup` untimed calls taken from `calls` in turn
    (first-call costs such as kernel selection and allocations are not what is measured)."""
    for index in range(warmup):
        calls[index % len(calls)]()
    synchronize(device)
    return median_ms(timed(call, device)[1] for call in calls)
