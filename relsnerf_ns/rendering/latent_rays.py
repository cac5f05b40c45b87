"""Rays for latent maps: one ray through the centre of each 8x8 pixel block.

A latent pixel (i, j) stands for the image block of rows [8i, 8i + 8) and columns [8j, 8j + 8); its ray goes through
that block's centre, pixel coordinate (8i + 4, 8j + 4) in nerfstudio's convention (pixel k spans [k, k + 1)). The
same rays serve phase B's latent patches, phase C's crops and full-frame inference, so the decoder always sees latent
maps sampled the way it was trained on.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import OrientedBox
from torch import Tensor


def block_centre_coords(
    top: int, left: int, rows: int, cols: int, block: int = 8, device: torch.device | str = "cpu"
) -> Float[Tensor, "rows cols 2"]:
    """(y, x) pixel coordinates of the centres of a rows x cols grid of blocks whose corner is (top, left)."""
    ys = top + block * torch.arange(rows, device=device, dtype=torch.float32) + block / 2
    xs = left + block * torch.arange(cols, device=device, dtype=torch.float32) + block / 2
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)


def latent_ray_bundle(
    cameras: Cameras,
    camera_index: int,
    top: int,
    left: int,
    rows: int,
    cols: int,
    block: int = 8,
    obb_box: Optional[OrientedBox] = None,
) -> RayBundle:
    """RayBundle of shape [rows, cols] through the block centres of camera `camera_index`."""
    coords = block_centre_coords(top, left, rows, cols, block, device=cameras.device)
    indices = torch.full((rows, cols, 1), camera_index, dtype=torch.long, device=cameras.device)
    bundle = cameras.generate_rays(camera_indices=indices, coords=coords, obb_box=obb_box)
    return bundle
