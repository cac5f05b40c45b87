"""Phase C's RGB-NeRF renders at interpolated cameras, made once and kept in the run directory.

Each render is written as its own PNG (to a temporary name, then renamed) next to a manifest of the cameras, so an
interrupted build resumes where it stopped and a resumed run reuses the renders instead of making them again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor

from relsnerf_ns.camera_interpolation import interpolated_cameras

MANIFEST = "cameras.json"


def camera_manifest(cameras: Cameras, seed: int) -> dict:
    return {
        "seed": seed,
        "count": len(cameras),
        "camera_to_worlds": cameras.camera_to_worlds.tolist(),
        "fx": cameras.fx.flatten().tolist(),
        "fy": cameras.fy.flatten().tolist(),
        "cx": cameras.cx.flatten().tolist(),
        "cy": cameras.cy.flatten().tolist(),
        "width": cameras.width.flatten().tolist(),
        "height": cameras.height.flatten().tolist(),
    }


def write_png_atomically(path: Path, image: Float[Tensor, "H W 3"]) -> None:
    array = (image.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def read_png(path: Path) -> Optional[Tensor]:
    try:
        with Image.open(path) as image:
            return torch.from_numpy(np.array(image.convert("RGB"))).float() / 255.0
    except (OSError, ValueError):
        return None


class DistillRenders:
    """`count` RGB-NeRF renders at cameras interpolated inside random triplets of the training cameras."""

    def __init__(self, train_cameras: Cameras, count: int, seed: int, directory: Optional[Path]) -> None:
        self.cameras, self.triplets, self.weights = interpolated_cameras(train_cameras, count, seed)
        self.seed = seed
        self.directory = directory
        self.images: List[Tensor] = []

    def path(self, index: int) -> Path:
        assert self.directory is not None
        return self.directory / f"render_{index:04d}.png"

    def build(self, render: Callable[[Cameras], Tensor]) -> None:
        """Load the renders found on disk (when made for the same cameras), render the missing ones."""
        manifest = camera_manifest(self.cameras, self.seed)
        reusable = False
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            manifest_path = self.directory / MANIFEST
            if manifest_path.exists():
                try:
                    reusable = json.loads(manifest_path.read_text()) == json.loads(json.dumps(manifest))
                except (OSError, ValueError):
                    reusable = False
                if not reusable:
                    CONSOLE.print(f"[yellow]{self.directory}: renders were made for other cameras; making them again.")
            if not reusable:
                for old in self.directory.glob("render_*.png"):
                    old.unlink()
                tmp = manifest_path.with_name(MANIFEST + ".tmp")
                tmp.write_text(json.dumps(manifest))
                os.replace(tmp, manifest_path)
        self.images = []
        reused = 0
        with Progress(
            TextColumn("[bold]Phase C: RGB-NeRF renders at interpolated cameras"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=CONSOLE,
            transient=True,
        ) as progress:
            task = progress.add_task("renders", total=len(self.cameras))
            for index in range(len(self.cameras)):
                image = read_png(self.path(index)) if self.directory is not None and reusable else None
                if image is not None and tuple(image.shape[:2]) == (
                    int(self.cameras.height[index]),
                    int(self.cameras.width[index]),
                ):
                    reused += 1
                else:
                    image = render(self.cameras[index : index + 1]).detach().cpu().float().clamp(0, 1)
                    if self.directory is not None:
                        write_png_atomically(self.path(index), image)
                    # Keep exactly what a resumed run would read back from the PNG.
                    image = (image * 255.0 + 0.5).floor() / 255.0
                self.images.append(image)
                progress.advance(task)
        where = f" in {self.directory}" if self.directory is not None else ""
        CONSOLE.print(
            f"Phase C renders ready{where}: {len(self.images)} ({reused} reused, {len(self.images) - reused} new)."
        )
