"""Cameras interpolated inside random triplets of training cameras (paper section III-B, Gamma(S_Pi)).

Positions are convex combinations of the three camera centres with barycentric weights drawn uniformly on the
simplex; rotations are the weighted chordal mean of the three rotations (the weighted sum of the matrices projected back
onto SO(3) by SVD), so every sample is a valid rotation between its three cameras.

Scenes with fewer than three training cameras still get phase C (said once): with two, cameras are interpolated along
the segment between them (a triplet (i, j, i) with weights (w, 1 - w, 0)); with one, that camera is used as it is
(a single render, since more would all be the same image).
"""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Float, Int
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor


def project_to_rotation(matrices: Float[Tensor, "*batch 3 3"]) -> Float[Tensor, "*batch 3 3"]:
    """Closest rotation (Frobenius norm) to each matrix."""
    u, _, vh = torch.linalg.svd(matrices)
    det = torch.det(u @ vh)
    fix = torch.ones_like(matrices[..., 0])
    fix[..., 2] = det.sign()
    return u @ torch.diag_embed(fix) @ vh


def sample_triplets(num_cameras: int, count: int, generator: torch.Generator) -> Int[Tensor, "count 3"]:
    """`count` triplets of distinct camera indices; with two cameras, pairs written as (i, j, i)."""
    if num_cameras < 2:
        raise ValueError(f"interpolating cameras needs at least 2 training cameras, the scene has {num_cameras}")
    keys = torch.rand(count, num_cameras, generator=generator)
    order = keys.argsort(dim=1)
    return order[:, :3] if num_cameras >= 3 else order[:, [0, 1, 0]]


def uniform_simplex_weights(count: int, generator: torch.Generator, vertices: int = 3) -> Float[Tensor, "count 3"]:
    """Barycentric weights uniform on the simplex of 3 (or 2: a segment, third weight 0) vertices (normalised
    exponentials = Dirichlet(1, ..., 1))."""
    e = -torch.log(torch.rand(count, 3, generator=generator).clamp_min(1e-12))
    e[:, vertices:] = 0.0
    return e / e.sum(dim=1, keepdim=True)


def interpolate_camera_to_worlds(
    camera_to_worlds: Float[Tensor, "n 3 4"], triplets: Int[Tensor, "count 3"], weights: Float[Tensor, "count 3"]
) -> Float[Tensor, "count 3 4"]:
    poses = camera_to_worlds[triplets]  # [count, 3, 3, 4]
    w = weights.to(poses)
    centres = (w[..., None] * poses[..., :, 3]).sum(dim=1)
    rotations = project_to_rotation((w[..., None, None] * poses[..., :, :3]).sum(dim=1))
    return torch.cat([rotations, centres[..., None]], dim=-1)


def interpolated_cameras(
    cameras: Cameras, count: int, seed: int
) -> Tuple[Cameras, Int[Tensor, "count 3"], Float[Tensor, "count 3"]]:
    """`count` cameras inside random triplets; intrinsics and image size are the first camera's of each triplet.

    Fewer than three cameras: along the segment between two, or the one camera itself (once), said once.
    """
    generator = torch.Generator().manual_seed(seed)
    cameras = cameras.to("cpu")
    num_cameras = len(cameras)
    if num_cameras == 0:
        raise ValueError("phase C needs at least one training camera to render from; the scene has none")
    if num_cameras == 1:
        CONSOLE.print(
            f"[yellow]Phase C: the scene has a single training camera, so there is nothing to interpolate; its one "
            f"RGB-NeRF render (instead of {count} at interpolated cameras) goes next to the real image."
        )
        count = 1
        triplets = torch.zeros(1, 3, dtype=torch.long)
        weights = torch.tensor([[1.0, 0.0, 0.0]])
    else:
        if num_cameras == 2:
            CONSOLE.print(
                "[yellow]Phase C: the scene has only 2 training cameras; RGB-NeRF renders are made at cameras "
                "interpolated along the segment between them (instead of inside triplets of 3)."
            )
        triplets = sample_triplets(num_cameras, count, generator)
        weights = uniform_simplex_weights(count, generator, vertices=min(3, num_cameras))
    c2w = interpolate_camera_to_worlds(cameras.camera_to_worlds, triplets, weights)
    first = triplets[:, 0]
    result = Cameras(
        camera_to_worlds=c2w,
        fx=cameras.fx[first],
        fy=cameras.fy[first],
        cx=cameras.cx[first],
        cy=cameras.cy[first],
        width=cameras.width[first],
        height=cameras.height[first],
        camera_type=cameras.camera_type[first],
    )
    return result, triplets, weights
