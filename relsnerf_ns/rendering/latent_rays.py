"""Rays for latent maps: one ray through the centre of each 8x8 pixel block.

A latent pixel (i, j) stands for the image block of rows [8i, 8i + 8) and columns [8j, 8j + 8); its ray goes through
that block's centre, pixel coordinate (8i + 4, 8j + 4) in nerfstudio's convention (pixel k spans [k, k + 1)). The
same rays serve phase B's latent patches, phase C's crops and full-frame inference, so the decoder always sees latent
maps sampled the way it was trained on.

Each latent ray also carries, as `metadata["pixel_axes"]`, how its (unnormalised) direction changes per pixel of
the full-resolution image along x and y. With it, `block_sub_ray_directions` gives the rays through the other pixels
of its block, along which the decoder's surface guidance composites the latent ray's samples: that is how it sees
the colour NeRF at finer than one ray per block (relsnerf_ns/model/decoder_guidance.py).
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
    axes = pixel_axes(cameras, camera_index).to(bundle.origins)
    bundle.metadata["pixel_axes"] = axes.expand(rows, cols, 6).contiguous()
    return bundle


def pixel_axes(cameras: Cameras, camera_index: int) -> Float[Tensor, "6"]:
    """The change of a ray's unnormalised direction per pixel along the image's x and y axes, in world coordinates
    (a pinhole model: nerfstudio's directions are R @ [(x - cx) / fx, -(y - cy) / fy, -1] before normalisation)."""
    rotation = cameras.camera_to_worlds[camera_index, :3, :3].float()
    fx = cameras.fx[camera_index].float().reshape(())
    fy = cameras.fy[camera_index].float().reshape(())
    return torch.cat([rotation[:, 0] / fx, -rotation[:, 1] / fy])


def block_offsets(per_side: int, block: int = 8, device: torch.device | str = "cpu") -> Float[Tensor, "k 2"]:
    """(x, y) pixel offsets from a block's centre of the centres of its per_side x per_side sub-blocks, row-major."""
    step = block / per_side
    centres = step * torch.arange(per_side, device=device, dtype=torch.float32) + step / 2 - block / 2
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


def block_sub_ray_directions(
    directions: Float[Tensor, "rays 3"],
    directions_norm: Float[Tensor, "rays 1"],
    axes: Float[Tensor, "rays 6"],
    per_side: int,
    block: int = 8,
) -> Float[Tensor, "rays k 3"]:
    """Unnormalised directions of the camera's rays through the centres of each block's per_side x per_side
    sub-blocks, on the scale of the block ray's own (`directions * directions_norm`, as nerfstudio generates it):
    a point at distance t along the block ray and the point at t * |sub| / directions_norm along a sub-block ray lie
    at the same distance from the camera along its optical axis."""
    offsets = block_offsets(per_side, block, device=directions.device).to(directions.dtype)  # [k, 2]
    shift = offsets[None, :, 0:1] * axes[:, None, :3] + offsets[None, :, 1:2] * axes[:, None, 3:]  # [rays, k, 3]
    return (directions * directions_norm)[:, None, :] + shift
