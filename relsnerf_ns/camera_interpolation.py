"""Cameras interpolated inside random triplets of training cameras (paper section III-B, Gamma(S_Pi)).

Positions are convex combinations of the three camera centres with barycentric weights drawn uniformly on the
simplex; rotations are the weighted chordal mean of the three rotations (the weighted sum of the matrices projected back
onto SO(3) by SVD), so every sample is a valid rotation between its three cameras.
"""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Float, Int
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor


def project_to_rotation(matrices: Float[Tensor, "*batch 3 3"]) -> Float[Tensor, "*batch 3 3"]:
    """Closest rotation (Frobenius norm) to each matrix."""
    u, _, vh = torch.linalg.svd(matrices)
    det = torch.det(u @ vh)
    fix = torch.ones_like(matrices[..., 0])
    fix[..., 2] = det.sign()
    return u @ torch.diag_embed(fix) @ vh


def sample_triplets(num_cameras: int, count: int, generator: torch.Generator) -> Int[Tensor, "count 3"]:
    """`count` triplets of distinct camera indices."""
    if num_cameras < 3:
        raise ValueError(
            f"interpolating cameras inside triplets needs at least 3 training cameras, the scene has {num_cameras}"
        )
    keys = torch.rand(count, num_cameras, generator=generator)
    return keys.argsort(dim=1)[:, :3]


def uniform_simplex_weights(count: int, generator: torch.Generator) -> Float[Tensor, "count 3"]:
    """Barycentric weights uniform on the 2-simplex (normalised exponentials = Dirichlet(1, 1, 1))."""
    e = -torch.log(torch.rand(count, 3, generator=generator).clamp_min(1e-12))
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
    """`count` cameras inside random triplets; intrinsics and image size are the first camera's of each triplet."""
    generator = torch.Generator().manual_seed(seed)
    cameras = cameras.to("cpu")
    triplets = sample_triplets(len(cameras), count, generator)
    weights = uniform_simplex_weights(count, generator)
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
