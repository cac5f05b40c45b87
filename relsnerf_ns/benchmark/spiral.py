"""The benchmark's video path: an LLFF-style spiral around the average training camera (LLFF's render_path_spiral).

The paper computes RCC (and its video metrics) on "120-frame spiral video renders from the NeRF (as in LLFF)". LLFF
builds that path as follows (``load_llff_data`` / ``render_path_spiral`` in the LLFF and NeRF code):

- the average pose: centre = mean camera position, viewing axis = normalised sum of the cameras' back (+z) axes, up =
  sum of their up (+y) axes;
- radii: per axis of the average camera's frame, the 90th percentile of |camera position| in that frame;
- focus depth: 1 / ((1 - dt) / close + dt / far) with dt = 0.75, close = 0.9 x the nearest scene depth, far = 5 x the
  farthest (LLFF takes them from the COLMAP-derived near/far bounds);
- frame k of N at theta = 2 pi rots k / N (rots = 2; configurable): position = average pose applied to
  (r_x cos theta, -r_y sin theta, -r_z sin(theta zrate)) with zrate = 0.5, looking at the point `focus` in front of
  the average camera, with the average up vector.

Here it runs on nerfstudio cameras (OpenGL axes, the same as LLFF's render poses) after the dataparser's transform,
so every model trained on the same data gets exactly the same path. The scene depths come, in this order, from an
explicit focus depth, the dataparser's sparse points (``points3D_xyz``; the llff-data parser provides them: 0.1 and
99.9 percentiles of their depths in the average camera, LLFF's bounds), the point where the training cameras' optical
axes converge (least squares; object-centred captures such as the procedural demo scene), else 1 scene unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from jaxtyping import Float
from nerfstudio.cameras.camera_utils import normalize, viewmatrix
from nerfstudio.cameras.cameras import Cameras, CameraType
from torch import Tensor

LLFF_ROTATIONS = 2
LLFF_ZRATE = 0.5
LLFF_DT = 0.75
LLFF_RADIUS_PERCENTILE = 90.0


@dataclass
class SpiralPath:
    """The spiral cameras and how they were made (recorded in the benchmark's JSON)."""

    cameras: Cameras
    focus_depth: float
    focus_source: str
    """'given', 'sparse points', 'camera axes' or 'default'."""
    radii: Tuple[float, float, float]
    rotations: int = LLFF_ROTATIONS

    def describe(self) -> Dict[str, object]:
        return {
            "frames": len(self.cameras),
            "focus_depth": self.focus_depth,
            "focus_source": self.focus_source,
            "radii": list(self.radii),
            "resolution": [int(self.cameras.width[0, 0]), int(self.cameras.height[0, 0])],
            "rotations": self.rotations,
            "zrate": LLFF_ZRATE,
        }


def average_pose(camera_to_worlds: Float[Tensor, "n 3 4"]) -> Float[Tensor, "3 4"]:
    """LLFF's poses_avg: mean position, summed viewing (back) axis and summed up axis."""
    centre = camera_to_worlds[:, :3, 3].mean(0)
    back = normalize(camera_to_worlds[:, :3, 2].sum(0))
    up = camera_to_worlds[:, :3, 1].sum(0)
    return viewmatrix(back, up, centre)


def _percentile(values: Tensor, q: float) -> float:
    return float(torch.quantile(values.double(), q / 100.0))


def _depths_in(pose: Float[Tensor, "3 4"], points: Float[Tensor, "p 3"]) -> Tensor:
    """Depth along the viewing axis (-z) of world points in a camera."""
    local = (points - pose[:, 3]) @ pose[:, :3]
    return -local[:, 2]


def llff_focus_from_depths(near: float, far: float) -> float:
    """LLFF's focus depth from the scene's near and far depths."""
    close, infinity = 0.9 * near, 5.0 * far
    return 1.0 / ((1.0 - LLFF_DT) / close + LLFF_DT / infinity)


def axes_convergence_depth(camera_to_worlds: Float[Tensor, "n 3 4"], pose: Float[Tensor, "3 4"]) -> Optional[float]:
    """Depth in the average camera of the point closest (least squares) to all optical axes; None when the axes are
    nearly parallel (a forward-facing capture: no convergence point) or it lies behind the cameras."""
    origins = camera_to_worlds[:, :3, 3].double()
    directions = -camera_to_worlds[:, :3, 2].double()
    directions = directions / torch.linalg.vector_norm(directions, dim=-1, keepdim=True)
    eye = torch.eye(3, dtype=torch.float64)
    projectors = eye - directions[:, :, None] * directions[:, None, :]
    system = projectors.sum(0)
    # Parallel axes leave the system singular along the common direction; demand a clear minimum.
    if float(torch.linalg.eigvalsh(system)[0]) < 0.02 * len(origins):
        return None
    point = torch.linalg.solve(system, (projectors @ origins[:, :, None]).sum(0))[:, 0]
    depth = float(_depths_in(pose.double(), point[None])[0])
    return depth if depth > 0 else None


def llff_spiral(
    train_cameras: Cameras,
    reference: Cameras,
    num_frames: int = 120,
    points: Optional[Float[Tensor, "p 3"]] = None,
    focus_depth: Optional[float] = None,
    rotations: int = LLFF_ROTATIONS,
) -> SpiralPath:
    """LLFF's spiral around the training cameras, with `reference`'s intrinsics and image size (one camera).

    points: sparse scene points in the cameras' frame (their depths give LLFF's near/far bounds).
    rotations: turns of the spiral (LLFF: 2 for 120 frames); few frames need fewer turns to overlap.
    """
    if num_frames < 2:
        raise ValueError(f"the spiral needs at least 2 frames, got {num_frames}")
    c2w = train_cameras.camera_to_worlds.reshape(-1, 3, 4).float().cpu()
    pose = average_pose(c2w)
    up = normalize(c2w[:, :3, 1].sum(0))
    local_positions = (c2w[:, :3, 3] - pose[:, 3]) @ pose[:, :3]
    radii = tuple(_percentile(local_positions[:, axis].abs(), LLFF_RADIUS_PERCENTILE) for axis in range(3))

    source = "given"
    if focus_depth is None and points is not None and len(points) > 0:
        depths = _depths_in(pose, points.reshape(-1, 3).float().cpu())
        depths = depths[torch.isfinite(depths) & (depths > 0)]
        if len(depths) >= 2:
            focus_depth = llff_focus_from_depths(_percentile(depths, 0.1), _percentile(depths, 99.9))
            source = "sparse points"
    if focus_depth is None:
        focus_depth = axes_convergence_depth(c2w, pose)
        source = "camera axes"
    if focus_depth is None:
        focus_depth, source = 1.0, "default"
    if not (math.isfinite(focus_depth) and focus_depth > 0):
        raise ValueError(f"the spiral's focus depth must be a positive number, got {focus_depth}")

    rx, ry, rz = radii
    focus_point = pose[:, :3] @ torch.tensor([0.0, 0.0, -focus_depth]) + pose[:, 3]
    poses = []
    for theta in torch.linspace(0.0, 2.0 * math.pi * rotations, num_frames + 1)[:-1].tolist():
        offset = torch.tensor([rx * math.cos(theta), -ry * math.sin(theta), -rz * math.sin(theta * LLFF_ZRATE)])
        position = pose[:, :3] @ offset + pose[:, 3]
        poses.append(viewmatrix(normalize(position - focus_point), up, position))

    ref = reference.reshape((-1,))[0:1]
    cameras = Cameras(
        camera_to_worlds=torch.stack(poses),
        fx=float(ref.fx[0, 0]),
        fy=float(ref.fy[0, 0]),
        cx=float(ref.cx[0, 0]),
        cy=float(ref.cy[0, 0]),
        width=int(ref.width[0, 0]),
        height=int(ref.height[0, 0]),
        camera_type=CameraType.PERSPECTIVE,
    )
    return SpiralPath(
        cameras=cameras, focus_depth=float(focus_depth), focus_source=source, radii=radii, rotations=rotations
    )


def evenly_spaced(count: int, total: int) -> list:
    """`count` indices spread over range(total), first and last included (all of them when count >= total)."""
    if count >= total:
        return list(range(total))
    if count <= 1:
        return [0]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})
