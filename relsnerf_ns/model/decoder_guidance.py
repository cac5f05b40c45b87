"""Decoder guidance: the colour NeRF's colour, depth and accumulation on the latent rays, as extra decoder inputs.

Beyond the paper. The latent rays are composited with the colour NeRF's weights, so the same samples also give the
RGB-NeRF's colour, depth and accumulation of each 8x8 block for the cost of the colour head. Unlike the latents,
which a field shared by all views fits only as something like their mean over views (docs/method.md, "What limits
the decoded output"), these maps are view-consistent by construction, and depth says where occlusion edges lie in
this view. The decoder gets them through a small convolutional adapter whose output is added to the latent map
before decoding: D(z + A(g)). The adapter's last layer starts at zero (ControlNet's "zero convolution"), so an
untrained adapter leaves the decoder exactly as phase A (or the pretrained weights) left it, and it is trained with
the decoder in phases B and C. Nothing of it reaches the NeRF: the guidance maps are detached.

`rgb-depth-surface` adds what one ray per block cannot give: the colour NeRF on the rays through the centres of k x k
sub-blocks of each block (k = `--pipeline.model.surface-rays-per-side`, 4 by default: 2x2 pixels each), composited from
the latent ray's own samples of highest weight, moved onto each sub-block ray at the same distance from the camera
(`RelsNerfModel.surface_guidance`). Each such sample is one evaluation of the colour field, without proposal sampling.
Where a sub-block ray's surface lies outside those depths (an occlusion edge inside the block), its accumulation stays
low, and the adapter sees that. A single point per sub-block ray (on the plane through the latent ray's median depth,
the first version) gave a surface image of 19.0 dB on the demo scene, where the colour NeRF at half resolution gives
28.0 and 16 composited samples 27.2 (docs/method.md). The sub-block colours also reach the decoded image directly, as
latentSplat's skip connections do: laid out as an image at k/8 of the resolution and upsampled, they go with the decoded
image, with the sub-block rays' accumulations (where their colours can be trusted), through a small full-resolution
refiner whose correction, zero until trained, is added to it: D(z + A(g)) + R(D(z+A(g)), S). Detail the latent map
cannot hold then has a path that does not go through the autoencoder's latent space.

In code, a "decoder input map" is the latent map with the guidance channels appended, channels last:
[..., rows, cols, n + G]. Everything that carries latent maps to the decoder (phase B's patches, phase C's cached
maps and crops, the inference paths) carries decoder input maps instead, so that crops of both stay aligned.
"""

from __future__ import annotations

from typing import Dict, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

DecoderGuidanceKind = Literal["none", "rgb", "rgb-depth", "rgb-depth-surface"]

SURFACE_POINTS_PER_SIDE = 4
"""Surface guidance's default number of sub-block rays per side of each 8x8 block (2x2-pixel spacing)."""

SURFACE_CHANNELS_PER_POINT = 4
"""Colour (3) and accumulation of each sub-block ray."""

GUIDANCE_CHANNELS: Dict[str, Tuple[str, ...]] = {
    "none": (),
    "rgb": ("rgb",) * 3,
    "rgb-depth": ("rgb",) * 3 + ("log_depth", "accumulation"),
    "rgb-depth-surface": ("rgb",) * 3 + ("log_depth", "accumulation"),  # + the sub-block rays' (guidance_channels)
}
"""Which rendered quantity each guidance channel holds, per kind, before the sub-block rays' channels."""


def guidance_channels(kind: str, surface_rays_per_side: int = SURFACE_POINTS_PER_SIDE) -> Tuple[str, ...]:
    """Which rendered quantity each guidance channel of `kind` holds (69 channels for surface guidance with 4x4
    sub-block rays: 5 + 16 x 4)."""
    surface = (
        ("surface",) * (SURFACE_CHANNELS_PER_POINT * surface_rays_per_side**2) if kind == "rgb-depth-surface" else ()
    )
    return GUIDANCE_CHANNELS[kind] + surface


REFINER_CHANNELS = 32
"""Width of surface guidance's full-resolution refiner."""

HIDDEN_CHANNELS: Dict[str, int] = {"rgb": 64, "rgb-depth": 64, "rgb-depth-surface": 128}
"""The adapter's hidden width per kind: wider where it reads a block's 16 sub-block rays (69 channels)."""

MIN_DEPTH = 1e-3
"""Depths are clamped to this before their logarithm (a ray that hits nothing can render a depth of 0)."""


class DecoderGuidance(nn.Module):
    """Maps guidance maps [B, G, h, w] to an offset of the latent map [B, n, h, w] (zero until trained).

    Args:
        kind: which rendered maps guide the decoder ("none" builds no layers and adds nothing).
        latent_channels: n, the autoencoder's latent channels.
        hidden_channels: width of the adapter's hidden layers (HIDDEN_CHANNELS[kind] when not given).
        surface_rays_per_side: surface guidance's sub-block rays per side of a block (1, 2, 4 or 8).
    """

    def __init__(
        self,
        kind: DecoderGuidanceKind,
        latent_channels: int,
        hidden_channels: Optional[int] = None,
        surface_rays_per_side: int = SURFACE_POINTS_PER_SIDE,
    ) -> None:
        super().__init__()
        if kind not in GUIDANCE_CHANNELS:
            raise ValueError(
                f"--pipeline.model.decoder-guidance must be one of {', '.join(GUIDANCE_CHANNELS)}, got {kind!r}"
            )
        if surface_rays_per_side not in (1, 2, 4, 8):  # sub-blocks of a whole number of pixels
            raise ValueError(
                "--pipeline.model.surface-rays-per-side must divide the 8-pixel block evenly (1, 2, 4 or 8), got "
                f"{surface_rays_per_side}"
            )
        self.kind = kind
        self.surface_rays_per_side = surface_rays_per_side
        self.channel_names = guidance_channels(kind, surface_rays_per_side)
        self.channels = len(self.channel_names)
        self.latent_channels = latent_channels
        self.adapter = None
        if self.channels:
            hidden_channels = hidden_channels or HIDDEN_CHANNELS[kind]
            last = nn.Conv2d(hidden_channels, latent_channels, 3, padding=1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.adapter = nn.Sequential(
                nn.Conv2d(self.channels, hidden_channels, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
                nn.ReLU(),
                last,
            )
        self.surface_channels = self.channel_names.count("surface")
        self.refiner = None
        if self.surface_channels:
            # Full resolution, so kept small: three 3x3 convolutions over the decoded image and the surface image
            # with its accumulation (7 channels). An earlier refiner had two over 6 channels:
            # `upgrade_earlier_refiner` maps its weights onto this one exactly.
            correction = nn.Conv2d(REFINER_CHANNELS, 3, 3, padding=1)
            nn.init.zeros_(correction.weight)
            nn.init.zeros_(correction.bias)
            self.refiner = nn.Sequential(
                nn.Conv2d(7, REFINER_CHANNELS, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(REFINER_CHANNELS, REFINER_CHANNELS, 3, padding=1),
                nn.ReLU(),
                correction,
            )

    @property
    def enabled(self) -> bool:
        return self.adapter is not None

    @property
    def needs_surface(self) -> bool:
        """Whether the guidance reads the colour field at points of each block's surface (`surface_guidance`)."""
        return self.surface_channels > 0

    def guidance_maps(
        self,
        rgb: Float[Tensor, "*batch 3"],
        depth: Float[Tensor, "*batch 1"],
        accumulation: Float[Tensor, "*batch 1"],
        surface: Optional[Float[Tensor, "*batch S"]] = None,
    ) -> Float[Tensor, "*batch G"]:
        """The guidance channels of rendered colour, depth, accumulation and, for surface guidance, the surface
        points' channels (`surface_guidance`), channels last, detached."""
        parts = {
            "rgb": rgb.detach(),
            "log_depth": torch.log(depth.detach().float().clamp_min(MIN_DEPTH)),
            "accumulation": accumulation.detach(),
        }
        if self.needs_surface:
            if surface is None:
                raise ValueError(f"decoder guidance {self.kind!r} needs the sub-block rays' colours and accumulations")
            parts["surface"] = surface.detach()
        used = [parts[name] for name in dict.fromkeys(self.channel_names)]  # each quantity once, in channel order
        if not used:
            return rgb.new_zeros(*rgb.shape[:-1], 0)
        return torch.cat([part.to(rgb.dtype) for part in used], dim=-1)

    def surface_guidance(
        self, rgb: Float[Tensor, "rays k 3"], accumulation: Float[Tensor, "rays k 1"]
    ) -> Float[Tensor, "rays S"]:
        """The surface channels of each latent ray: colour and accumulation of its k sub-block rays, ray by ray."""
        return torch.cat([rgb.float(), accumulation.float()], dim=-1).flatten(-2)

    def forward(self, guidance: Float[Tensor, "batch G h w"]) -> Float[Tensor, "batch n h w"]:
        if self.adapter is None:
            raise RuntimeError("decoder guidance is off (kind 'none'): there is no adapter to run")
        return self.adapter(guidance)

    def refine(
        self, decoded: Float[Tensor, "batch 3 H W"], guidance: Float[Tensor, "batch G h w"]
    ) -> Float[Tensor, "batch 3 H W"]:
        """The decoded image plus the refiner's correction from the sub-block rays' colours (surface guidance only;
        the image unchanged otherwise)."""
        if self.refiner is None:
            return decoded
        surface = self.upsampled_surface_image(guidance, decoded.shape[-2:], with_accumulation=True)
        return decoded + self.refiner(torch.cat([decoded, surface.to(decoded.dtype)], dim=1))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.refiner is not None:
            upgrade_earlier_refiner(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def upsampled_surface_image(
        self, guidance: Float[Tensor, "batch G h w"], size: Tuple[int, int], with_accumulation: bool = False
    ) -> Float[Tensor, "batch c H W"]:
        """The sub-block rays' colours (and accumulations, with `with_accumulation`) as an image, bilinearly upsampled
        to `size`: what the refiner reads."""
        # The surface channels come last.
        surface = surface_image(guidance[:, -self.surface_channels :], self.surface_rays_per_side, with_accumulation)
        return F.interpolate(surface, size=tuple(size), mode="bilinear", align_corners=False)


def upgrade_earlier_refiner(state_dict: Dict[str, Tensor], prefix: str = "") -> bool:
    """Rewrite, in place, the weights of the earlier surface-guidance refiner (two convolutions over the decoded image
    and the surface colours: conv(6 -> w), ReLU, conv(w -> 3)) as this refiner's, computing the same correction: a
    zero weight for the accumulation channel and an identity middle layer (ReLU of a ReLU output is itself). True when
    it did; state dicts of this layout, or without a refiner, are left alone."""
    first, last = f"{prefix}refiner.0.weight", f"{prefix}refiner.2.weight"
    if first not in state_dict or last not in state_dict:
        return False
    weight = state_dict[first]
    if weight.shape[1] != 6 or state_dict[last].shape[0] != 3:
        return False
    width = weight.shape[0]
    state_dict[first] = torch.cat([weight, weight.new_zeros(width, 1, 3, 3)], dim=1)
    state_dict[f"{prefix}refiner.4.weight"] = state_dict.pop(last)
    state_dict[f"{prefix}refiner.4.bias"] = state_dict.pop(f"{prefix}refiner.2.bias")
    identity = weight.new_zeros(width, width, 3, 3)
    identity[torch.arange(width), torch.arange(width), 1, 1] = 1.0
    state_dict[last] = identity
    state_dict[f"{prefix}refiner.2.bias"] = weight.new_zeros(width)
    return True


def surface_image(
    surface: Float[Tensor, "batch S h w"], k: int = SURFACE_POINTS_PER_SIDE, with_accumulation: bool = False
) -> Float[Tensor, "batch c h*k w*k"]:
    """The k x k sub-block rays' colours (and accumulations: c = 4) as an image: ray (i, j) of block (r, c) at pixel
    (k r + i, k c + j)."""
    batch, _, rows, cols = surface.shape
    channels = 4 if with_accumulation else 3
    points = surface.reshape(batch, k, k, SURFACE_CHANNELS_PER_POINT, rows, cols)[:, :, :, :channels]
    return points.permute(0, 3, 4, 1, 5, 2).reshape(batch, channels, rows * k, cols * k)


__all__ = [
    "GUIDANCE_CHANNELS",
    "guidance_channels",
    "SURFACE_POINTS_PER_SIDE",
    "DecoderGuidance",
    "DecoderGuidanceKind",
    "upgrade_earlier_refiner",
]
