"""The held-out evaluation loop shared by `ns-eval` (the pipeline's `get_average_image_metrics`) and the benchmark.

Every evaluation view is rendered by every output, each render timed on its own (device-synchronised, `timed`) at the
evaluation resolution. Before the first view is timed, each output renders it untimed (`warmup_renders`): first-call
costs (kernel selection, allocations, the fast path's CUDA-graph capture) are not render time. What is computed from
the renders (metrics, images to save) is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Tuple, Union

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import get_progress
from torch import Tensor

from relsnerf_ns.evaluation.render_timing import timed

Render = Callable[[Cameras], Dict[str, Tensor]]
"""One output's render of one camera: nerfstudio's output dict ('rgb', 'depth', ...)."""

DECODED = "decoded"
"""The name of ReLS-NeRF's decoded output among the renders (the one with a CUDA-graph fast path)."""


def warmup_renders(output: str) -> int:
    """Untimed renders before timing an output: the decoded path's fast renderer captures a resolution's CUDA graph
    the second time it sees it, so it needs two (three to be safe); the per-pixel paths need one."""
    return 3 if output == DECODED else 1


@dataclass
class HeldOutView:
    """One evaluation view as every output rendered it."""

    index: int
    camera: Cameras
    """On the evaluation device."""
    batch: Dict[str, Any]
    """The datamanager's batch of the view ('image', ...)."""
    outputs: Dict[str, Dict[str, Tensor]]
    """Output name -> what its render returned."""
    seconds: Dict[str, float]
    """Output name -> how long its render took (device-synchronised)."""


@torch.no_grad()
def held_out_views(
    loader: Iterable[Tuple[Cameras, Dict[str, Any]]],
    renders: Mapping[str, Render],
    device: Union[str, torch.device],
    description: str,
    warmup: bool = True,
) -> Iterator[HeldOutView]:
    """Each view of `loader` (an evaluation dataloader of (camera, batch)) rendered by each of `renders`, in order,
    with a progress bar; with `warmup`, the first view is first rendered untimed by each output."""
    total = len(loader) if hasattr(loader, "__len__") else None
    with get_progress(description) as progress:
        task = progress.add_task(description, total=total)
        for index, (camera, batch) in enumerate(loader):
            camera = camera.to(device)
            if index == 0 and warmup:
                for output, render in renders.items():
                    for _ in range(warmup_renders(output)):
                        render(camera)
            outputs: Dict[str, Dict[str, Tensor]] = {}
            seconds: Dict[str, float] = {}
            for output, render in renders.items():
                outputs[output], seconds[output] = timed(lambda: render(camera), device)
            yield HeldOutView(index, camera, batch, outputs, seconds)
            progress.advance(task)
