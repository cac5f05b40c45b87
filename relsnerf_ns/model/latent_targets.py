"""The encoder's latent maps of the training images: direct targets for the latent field (L_z).

The paper trains the latent field only through the decoder, on one 32x32 latent patch per step (L_p). With the
phase-A encoder E frozen from phase B on, E(I) of every training image is a fixed latent target, so every colour ray
of a step can also supervise the latent rendered on it (as latent-space NeRFs such as IG-AE train theirs): the same
samples and weights, one more head evaluated, and ~4x more latent supervision per step than the patch gives.

Latent pixel (i, j) stands for the 8x8 block whose centre is pixel coordinate (8i + 4, 8j + 4) (`latent_rays.py`); a
colour ray through pixel (y, x) (coordinate (y + 0.5, x + 0.5)) gets the bilinear interpolation of the latent map at
((y + 0.5) / 8 - 0.5, (x + 0.5) / 8 - 0.5), which is exact at block centres. The loss is the mean squared error in
units of each latent channel's standard deviation over the training set, so that channels of small and large spread
(SD-VAE latents span about [-4, 4], TAEF2's much less) weigh alike and the weight means the same for every autoencoder.

Centred targets (`offsets` P > 1): the encoder's latent of a block depends on where the content lies inside it, so
interpolating E(I) between block centres is not the latent of a block centred between them (on fern, 504x378,
pretrained TAEF2, E(I) interpolated at a grid offset of 2 or 4 pixels decodes to 18.7 / 18.0 dB, the encoding of the
image shifted by that offset to 26.1 dB: docs/scripts/centred_targets_probe.py). A colour ray whose pixel lies
between block centres then teaches the field a latent that decodes far worse than the one a view whose grid is
centred there needs. With P > 1 the image is encoded at P x P shifts of 8 / P pixels and the maps are interleaved
into one map P times finer: entry (m, n) is the latent of the 8x8 block centred at pixel coordinate (4 + 8m / P, 4 +
8n / P), and a ray's target is interpolated from the nearest such centres (exact for P = 8 up to half a pixel). P =
1 is plain E(I).
"""

from __future__ import annotations

import math
from typing import Callable, List

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

LATENT_DOWNSCALE = 8
CENTRED_OFFSETS = (1, 2, 4, 8)
"""Allowed numbers of sub-block shifts per axis for centred targets (the shifts must be whole pixels)."""


class LatentTargets:
    """Latent maps of the training images (channels last, padded to one size) and per-channel statistics."""

    def __init__(self, maps: List[Float[Tensor, "n rows cols"]], offsets: int = 1) -> None:
        """`maps`: per training image its latent map, P = `offsets` times finer than the latent grid when the
        targets are centred (`encode_images(..., offsets=P)`)."""
        if not maps:
            raise ValueError("latent targets need at least one training image")
        if offsets not in CENTRED_OFFSETS:
            raise ValueError(f"latent target offsets must be one of {CENTRED_OFFSETS} (divisors of 8), got {offsets}")
        self.offsets = offsets
        channels = int(maps[0].shape[0])
        rows = max(int(m.shape[1]) for m in maps)
        cols = max(int(m.shape[2]) for m in maps)
        # Centred maps hold P^2 times more values (P = 8: 32 channels at every pixel of every training image);
        # half precision halves that, and its ~1e-3 relative rounding is far below what a field fits.
        dtype = torch.float16 if offsets > 1 else maps[0].dtype
        stack = maps[0].new_zeros(len(maps), rows, cols, channels, dtype=dtype)
        for index, latent in enumerate(maps):
            stack[index, : latent.shape[1], : latent.shape[2]] = latent.permute(1, 2, 0)
        self.maps: Float[Tensor, "images rows cols n"] = stack
        self.sizes: Int[Tensor, "images 2"] = torch.tensor(
            [[int(m.shape[1]), int(m.shape[2])] for m in maps], device=stack.device
        )
        # Statistics of the latents on the block grid itself (every P-th entry), as for plain targets.
        values = torch.cat([m[:, ::offsets, ::offsets].permute(1, 2, 0).reshape(-1, channels).float() for m in maps])
        self.mean: Float[Tensor, "n"] = values.mean(dim=0)
        # A channel that is constant over the training set would divide by zero: floor the spread.
        self.std: Float[Tensor, "n"] = values.std(dim=0).clamp_min(1e-3 * float(values.std().clamp_min(1e-8)))

    @property
    def channels(self) -> int:
        return int(self.maps.shape[-1])

    def at_pixels(self, indices: Int[Tensor, "rays 3"]) -> Float[Tensor, "rays n"]:
        """Targets of colour rays through pixels (camera index, y, x): bilinear between the nearest block centres
        (every 8 / P pixels; entry m is centred at pixel coordinate 4 + 8m / P)."""
        indices = indices.to(self.maps.device).long()
        camera, y, x = indices[:, 0], indices[:, 1], indices[:, 2]
        rows, cols = self.sizes[camera, 0], self.sizes[camera, 1]
        spacing = LATENT_DOWNSCALE / self.offsets
        centre = LATENT_DOWNSCALE / 2
        u = ((y.float() + 0.5 - centre) / spacing).clamp_min(0.0)
        v = ((x.float() + 0.5 - centre) / spacing).clamp_min(0.0)
        u = torch.minimum(u, (rows - 1).float())
        v = torch.minimum(v, (cols - 1).float())
        u0, v0 = u.floor().long(), v.floor().long()
        u1, v1 = torch.minimum(u0 + 1, rows - 1), torch.minimum(v0 + 1, cols - 1)
        fu, fv = (u - u0.float())[:, None], (v - v0.float())[:, None]
        maps = self.maps
        top = maps[camera, u0, v0].float() * (1 - fv) + maps[camera, u0, v1].float() * fv
        bottom = maps[camera, u1, v0].float() * (1 - fv) + maps[camera, u1, v1].float() * fv
        return top * (1 - fu) + bottom * fu

    def normalised_mse(self, predicted: Float[Tensor, "rays n"], target: Float[Tensor, "rays n"]) -> Tensor:
        """Mean squared error in units of each channel's standard deviation over the training latents."""
        return (((predicted.float() - target) / self.std) ** 2).mean()


def target_bytes(image_sizes: List[tuple], channels: int, offsets: int) -> int:
    """Memory of the latent targets of images of these (height, width): float32 plain maps, float16 centred ones
    (`offsets`^2 entries per 8x8 block)."""
    blocks = sum(math.ceil(h / LATENT_DOWNSCALE) * math.ceil(w / LATENT_DOWNSCALE) for h, w in image_sizes)
    return blocks * offsets**2 * channels * (2 if offsets > 1 else 4)


def offsets_within(image_sizes: List[tuple], channels: int, wanted: int, max_bytes: float) -> int:
    """The largest number of centred offsets up to `wanted` whose targets fit in `max_bytes` (at least 1)."""
    for offsets in sorted((p for p in CENTRED_OFFSETS if 1 < p <= wanted), reverse=True):
        if target_bytes(image_sizes, channels, offsets) <= max_bytes:
            return offsets
    return 1


def shifted_by(
    image: Float[Tensor, "1 3 H W"], dy: int, dx: int, margin: int = LATENT_DOWNSCALE
) -> Float[Tensor, "1 3 H W"]:
    """The image with its content moved down by dy and right by dx pixels, edges replicated."""
    height, width = image.shape[-2:]
    padded = F.pad(image, (margin, margin, margin, margin), mode="replicate")
    return padded[..., margin - dy : margin - dy + height, margin - dx : margin - dx + width]


def at_fractional_offset(latent: Float[Tensor, "1 n h w"], fy: float, fx: float) -> Float[Tensor, "1 n h w"]:
    """The latent map resampled (bilinearly) at positions (i + fy, j + fx), 0 <= f < 1, last row/column replicated."""
    padded = F.pad(latent, (0, 1, 0, 1), mode="replicate")
    across = (1 - fx) * padded[..., :, :-1] + fx * padded[..., :, 1:]
    return (1 - fy) * across[..., :-1, :] + fy * across[..., 1:, :]


@torch.no_grad()
def phase_averaged_encoding(
    encode: Callable[[Tensor], Tensor],
    image: Float[Tensor, "1 3 H W"],
    phases: int,
    shift: Callable[[Tensor, int, int], Tensor] = shifted_by,
) -> Float[Tensor, "1 n h w"]:
    """E(I) averaged over `phases` x `phases` sub-block offsets of the 8x8 grid, each resampled at the original block
    centres.

    Why: a surface point falls at a different place inside its 8x8 block in every view, and the encoder's latent of a
    block depends on where in it the content lies, so the encoder's latents of one point disagree between views. A
    latent field that all views share can only render something like their mean over those offsets; this target is
    that mean, the same for every view, instead of a different inconsistent target per view. With phases = 1 it is
    E(I). `shift(image, dy, dx)` moves the content (default: edges replicated)."""
    if phases <= 1:
        return encode(image)
    offsets = [LATENT_DOWNSCALE * k // phases for k in range(phases)]
    total = None
    for dy in offsets:
        for dx in offsets:
            # Content moved by (dy, dx): original block centre 8i + 4 sits at latent index i + dy / 8 of this map.
            latent = at_fractional_offset(encode(shift(image, dy, dx)), dy / LATENT_DOWNSCALE, dx / LATENT_DOWNSCALE)
            total = latent if total is None else total + latent
    return total / len(offsets) ** 2


@torch.no_grad()
def centred_encoding(
    encode: Callable[[Tensor], Tensor], image: Float[Tensor, "1 3 H W"], offsets: int
) -> Float[Tensor, "1 n rows*offsets cols*offsets"]:
    """The latents of 8x8 blocks centred every 8 / `offsets` pixels: entry (m, n) is the latent of the block centred
    at pixel coordinate (4 + 8m / P, 4 + 8n / P), P = `offsets` (see the module docstring). With P = 1 it is E(I)."""
    if offsets <= 1:
        return encode(image)
    step = LATENT_DOWNSCALE // offsets
    fine = None
    for ky in range(offsets):
        for kx in range(offsets):
            # Content moved up and left by the shift: block i of this map is centred at 8i + 4 + shift.
            latent = encode(shifted_by(image, -ky * step, -kx * step))
            if fine is None:
                batch, channels, rows, cols = latent.shape
                fine = latent.new_empty(batch, channels, rows * offsets, cols * offsets)
            fine[:, :, ky::offsets, kx::offsets] = latent
    return fine


@torch.no_grad()
def encode_images(
    encode: Callable[[Tensor], Tensor],
    images: List[Float[Tensor, "H W 3"]],
    device: torch.device | str,
    phases: int = 1,
    offsets: int = 1,
) -> List[Float[Tensor, "n rows cols"]]:
    """E(I) of each image (RGB in [0, 1]), one at a time: averaged over `phases`^2 grid offsets (see
    `phase_averaged_encoding`), or centred every 8 / `offsets` pixels (`centred_encoding`, a map `offsets` times
    finer); both 1: plain E(I). Sides that are not multiples of 8 are padded by edge replication (the latent rays of
    the last, partial block row and column see the padded block too)."""
    if phases > 1 and offsets > 1:
        raise ValueError("latent targets are either averaged over grid offsets or centred on them, not both")
    maps = []
    for image in images:
        height, width = int(image.shape[0]), int(image.shape[1])
        batch = image.to(device).float().permute(2, 0, 1)[None]
        pad_h = math.ceil(height / LATENT_DOWNSCALE) * LATENT_DOWNSCALE - height
        pad_w = math.ceil(width / LATENT_DOWNSCALE) * LATENT_DOWNSCALE - width
        if pad_h or pad_w:
            batch = F.pad(batch, (0, pad_w, 0, pad_h), mode="replicate")
        if offsets > 1:
            maps.append(centred_encoding(encode, batch.contiguous(), offsets)[0].half())
        else:
            maps.append(phase_averaged_encoding(encode, batch.contiguous(), phases)[0].float())
    return maps
