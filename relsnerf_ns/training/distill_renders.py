"""Phase C's RGB-NeRF renders at interpolated cameras, made once and kept in the run directory.

Each render is written atomically as its own PNG next to a manifest (`cameras.json`) of the cameras and of the NeRF
they were rendered from, so an interrupted build resumes where it stopped and a resumed run reuses the renders instead
of making them again. On reuse every file is checked: a render is made again when its PNG
is missing, truncated or otherwise unreadable, of the wrong size, or made for another camera (or from another NeRF,
e.g. a run resumed with other step counts); the others are kept. One message says what was reused and what is made.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import CONSOLE, get_progress
from PIL import Image
from torch import Tensor

from relsnerf_ns.data.atomic_files import atomic_write_text, write_png
from relsnerf_ns.training.camera_interpolation import interpolated_cameras

MANIFEST = "cameras.json"
MANIFEST_VERSION = 2
RENDER_NAME = re.compile(r"render_(\d+)\.png")
MISSING = "missing"


def camera_entry(cameras: Cameras, index: int) -> Dict[str, Any]:
    return {
        "camera_to_world": cameras.camera_to_worlds[index].tolist(),
        "fx": float(cameras.fx[index]),
        "fy": float(cameras.fy[index]),
        "cx": float(cameras.cx[index]),
        "cy": float(cameras.cy[index]),
        "width": int(cameras.width[index]),
        "height": int(cameras.height[index]),
    }


def camera_manifest(cameras: Cameras, seed: int, nerf_fingerprint: Optional[float] = None) -> Dict[str, Any]:
    """What the renders were made for: one entry per camera, the seed, and a fingerprint of the rendering NeRF."""
    manifest = {
        "version": MANIFEST_VERSION,
        "seed": seed,
        "nerf_fingerprint": nerf_fingerprint,
        "cameras": [camera_entry(cameras, index) for index in range(len(cameras))],
    }
    return json.loads(json.dumps(manifest))  # as it reads back from the file


def read_png(path: Path) -> Optional[Tensor]:
    """The image as float RGB [H, W, 3], or None when the file is missing, truncated or damaged."""
    try:
        with Image.open(path) as image:
            image.verify()  # every chunk's checksum, through to the end of the file
        with Image.open(path) as image:
            return torch.from_numpy(np.array(image.convert("RGB"))).float() / 255.0
    except Exception:  # PIL raises OSError, SyntaxError, ValueError, zlib and struct errors for damaged files
        return None


def _as_read_back(image: Tensor) -> Tensor:
    """Exactly what a resumed run reads back from the PNG of a render."""
    image = image.detach().cpu().float().clamp(0, 1)
    return (image * 255.0 + 0.5).floor() / 255.0


def _read_manifest(path: Path) -> Optional[Dict[str, Any]]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _same_nerf(a: Any, b: Any) -> bool:
    """Fingerprints agree (to float summation-order noise), or neither run recorded one."""
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)


class DistillRenders:
    """`count` RGB-NeRF renders at cameras interpolated inside random triplets of the training cameras."""

    def __init__(
        self,
        train_cameras: Cameras,
        count: int,
        seed: int,
        directory: Optional[Path],
        nerf_fingerprint: Optional[float] = None,
    ) -> None:
        self.cameras, self.triplets, self.weights = interpolated_cameras(train_cameras, count, seed)
        self.seed = seed
        self.directory = directory
        self.nerf_fingerprint = nerf_fingerprint
        self.images: List[Tensor] = []

    def path(self, index: int) -> Path:
        assert self.directory is not None
        return self.directory / f"render_{index:04d}.png"

    def _stale_indices(self, manifest: Dict[str, Any]) -> Tuple[Set[int], str]:
        """Indices whose files on disk, if any, were made for something else than `manifest`, and why."""
        assert self.directory is not None
        count = len(self.cameras)
        found = _read_manifest(self.directory / MANIFEST)
        if found is None:
            return set(range(count)), "without a readable cameras.json"
        if found.get("version") != MANIFEST_VERSION or found.get("seed") != manifest["seed"]:
            return set(range(count)), "made for other cameras"
        if not _same_nerf(found.get("nerf_fingerprint"), manifest["nerf_fingerprint"]):
            return set(range(count)), "made from another NeRF"
        old = found.get("cameras") if isinstance(found.get("cameras"), list) else []
        return {i for i in range(count) if i >= len(old) or old[i] != manifest["cameras"][i]}, "made for other cameras"

    def render_share(self, render: Callable[[Cameras], Tensor], share: Callable[[int], bool]) -> Dict[int, Tensor]:
        """Render the cameras whose index `share` accepts, in memory (one rank's part of a run without a directory)."""
        return {
            index: _as_read_back(render(self.cameras[index : index + 1]))
            for index in range(len(self.cameras))
            if share(index)
        }

    def build(
        self,
        render: Callable[[Cameras], Tensor],
        share: Optional[Callable[[int], bool]] = None,
        report: bool = True,
    ) -> None:
        """Load the renders found on disk that are complete and match, render the missing, damaged or stale ones.

        With `share` (several ranks), only the missing renders whose index it accepts are made; the others are left
        empty (another rank makes them). `report`: print the one message about reuse."""
        count = len(self.cameras)
        todo: Dict[int, str] = {}  # index -> why it is made (again)
        self.images = [torch.empty(0)] * count
        if self.directory is None:
            todo = {index: MISSING for index in range(count)}
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            manifest = camera_manifest(self.cameras, self.seed, self.nerf_fingerprint)
            stale, why = self._stale_indices(manifest)
            # Stale files go before the new manifest is written, so a kill in between never pairs them with it.
            for old in self.directory.glob("render_*.png"):
                match = RENDER_NAME.fullmatch(old.name)
                if match is None or int(match.group(1)) >= count or int(match.group(1)) in stale:
                    if match is not None and int(match.group(1)) in stale:
                        todo[int(match.group(1))] = why
                    old.unlink()
            if _read_manifest(self.directory / MANIFEST) != manifest:
                atomic_write_text(self.directory / MANIFEST, json.dumps(manifest))
            for index in range(count):
                if index in todo:
                    continue
                path = self.path(index)
                image = read_png(path) if index not in stale else None
                height, width = int(self.cameras.height[index]), int(self.cameras.width[index])
                if image is None:
                    todo[index] = MISSING if not path.exists() else "unreadable or truncated"
                elif tuple(image.shape[:2]) != (height, width):
                    todo[index] = "of the wrong size"
                else:
                    self.images[index] = image
        if report:
            self._report(count, todo)
        if share is not None:
            todo = {index: why for index, why in todo.items() if share(index)}
        if not todo:
            return
        with get_progress("[bold]Phase C: RGB-NeRF renders at interpolated cameras") as progress:
            task = progress.add_task("renders", total=len(todo))
            for index in sorted(todo):
                image = render(self.cameras[index : index + 1]).detach().cpu().float().clamp(0, 1)
                if self.directory is not None:
                    write_png(self.path(index), image)
                self.images[index] = _as_read_back(image)
                progress.advance(task)

    def _report(self, count: int, todo: Dict[int, str]) -> None:
        """The one message about the renders: how many are reused, how many made, and why."""
        where = f"in {self.directory}" if self.directory is not None else "(kept in memory only)"
        reused = count - len(todo)
        if reused == count:
            CONSOLE.print(f"Phase C renders: all {count} reused from {self.directory}.")
        elif reused == 0 and set(todo.values()) == {MISSING}:
            CONSOLE.print(f"Phase C renders: making {count} {where}.")
        else:
            reasons = Counter(todo.values())
            details = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
            CONSOLE.print(f"[yellow]Phase C renders {where}: {reused} reused, {len(todo)} made again ({details}).")
