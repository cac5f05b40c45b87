"""Rays for latent maps: one ray through the centre of each 8x8 pixel block.

A latent pixel (i, j) stands for the image block of rows [8i, 8i + 8) and columns [8j, 8j + 8); its ray goes through
that block's centre, pixel coordinate (8i + 4, 8j + 4) in nerfstudio's convention (pixel k spans [k, k + 1)). The
same rays serve phase B's latent patches, phase C's crops and full-frame inference, so the decoder always sees latent
maps sampled the way it was trained on.

Each latent ray also carries, as `metadata["pixel_axes"]`, how its (unnormalised) direction changes per pixel of
the full-resolution image along x and y. With it, `block_surface_points` places points of the surface a latent ray
hits under the other pixels of its block, which is how the decoder's surface guidance sees the colour NeRF at finer
than one ray per block (relsnerf_ns/model/decoder_guidance.py).
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


def block_surface_points(
    origins: Float[Tensor, "rays 3"],
    directions: Float[Tensor, "rays 3"],
    directions_norm: Float[Tensor, "rays 1"],
    axes: Float[Tensor, "rays 6"],
    depth: Float[Tensor, "rays 1"],
    per_side: int,
    block: int = 8,
) -> Float[Tensor, "rays k 3"]:
    """Points under the centres of each block's per_side x per_side sub-blocks, on the plane parallel to the image
    through the point at `depth` along the block's ray.

    `depth` is a distance along the normalised direction (nerfstudio's depth) and `directions_norm` the length of
    the unnormalised direction, so depth / directions_norm is the point's distance from the camera along its optical
    axis: a pixel offset (dx, dy) moves the point by that distance times dx * axes[:3] + dy * axes[3:].
    """
    offsets = block_offsets(per_side, block, device=origins.device).to(origins.dtype)  # [k, 2]
    centre = origins + depth * directions  # [rays, 3]
    along_axis = depth / directions_norm  # [rays, 1]
    shift = offsets[None, :, 0:1] * axes[:, None, :3] + offsets[None, :, 1:2] * axes[:, None, 3:]  # [rays, k, 3]
    return centre[:, None, :] + along_axis[:, None, :] * shift
