"""R32: the paper's small residual autoencoder (appendix C), trained from scratch.

Encoder: C5, RBIN, HD, RBIN, HD, RBIN, HD, RBIN, C1 with widths (32, 128, 128, 256, 256).
Decoder: C1, RBIN, HU, RBIN, HU, RBIN, HU, RBIN, C1, sigmoid with widths (256, 256, 128, 128, 32).
C5 = conv 5x5 + instance norm + ELU; RBIN = two residual blocks of (conv 3x3 + instance norm); HD / HU = bilinear
halving / doubling; C1 = conv 1x1. The widths are the output channels of C5/C1 and of the four RBIN stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple, Type

import torch.nn.functional as F
from torch import Tensor, nn

from relsnerf_ns.autoencoders.base import AutoencoderConfig, LatentAutoencoder


class ResidualBlock(nn.Module):
    """conv3x3-norm-ELU-conv3x3-norm plus a (1x1-projected when widths differ) shortcut, then ELU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(out_channels, affine=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(out_channels, affine=True)
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        self.act = nn.ELU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return self.act(h + self.shortcut(x))


class RBIN(nn.Sequential):
    """Two residual blocks with instance norm; the first one changes the width."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ResidualBlock(in_channels, out_channels), ResidualBlock(out_channels, out_channels))


class Resample(nn.Module):
    """Bilinear halving (HD, factor 0.5) or doubling (HU, factor 2)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)


def conv_norm_elu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """The C5 block."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.InstanceNorm2d(out_channels, affine=True),
        nn.ELU(),
    )


@dataclass
class R32AutoencoderConfig(AutoencoderConfig):
    """The paper's R32 residual autoencoder (appendix C), randomly initialised."""

    _target: Type = field(default_factory=lambda: R32Autoencoder)
    latent_channels: int = 32
    """Channels of the latent vector z (32 gives the paper's R32)."""
    encoder_widths: Tuple[int, int, int, int, int] = (32, 128, 128, 256, 256)
    """Output widths of C5 and the four RBIN stages of the encoder."""
    decoder_widths: Tuple[int, int, int, int, int] = (256, 256, 128, 128, 32)
    """Output widths of the first C1 and the four RBIN stages of the decoder."""


class R32Autoencoder(LatentAutoencoder):
    """Encoder E and decoder D of appendix C, 8x downsampling (three bilinear halvings)."""

    config: R32AutoencoderConfig

    def __init__(self, config: R32AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_channels = config.latent_channels
        e = config.encoder_widths
        d = config.decoder_widths
        self.encoder = nn.Sequential(
            conv_norm_elu(3, e[0], 5),  # C5
            RBIN(e[0], e[1]),
            Resample(0.5),
            RBIN(e[1], e[2]),
            Resample(0.5),
            RBIN(e[2], e[3]),
            Resample(0.5),
            RBIN(e[3], e[4]),
            nn.Conv2d(e[4], config.latent_channels, 1),  # C1
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(config.latent_channels, d[0], 1),  # C1
            RBIN(d[0], d[1]),
            Resample(2.0),
            RBIN(d[1], d[2]),
            Resample(2.0),
            RBIN(d[2], d[3]),
            Resample(2.0),
            RBIN(d[3], d[4]),
            nn.Conv2d(d[4], 3, 1),  # C1
            nn.Sigmoid(),
        )
