"""The interface every ReLS-NeRF autoencoder implements.

The NeRF renders latent maps that live in the autoencoder's latent space; the pipeline only needs to encode images
(phase A), decode latent maps (phases B and C, and inference) and know which parameters belong to the encoder and
which to the decoder (each phase trains its own). Images are always float RGB in [0, 1], channels first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Type

from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn


@dataclass
class AutoencoderConfig(InstantiateConfig):
    """Common configuration of a latent autoencoder."""

    _target: Type = field(default_factory=lambda: LatentAutoencoder)
    """Set by each concrete autoencoder config."""


class LatentAutoencoder(nn.Module):
    """An image autoencoder with an 8x spatial downsampling latent space."""

    latent_channels: int
    """Number of channels n of the latent vector z."""
    downscale: int = 8
    """Spatial downsampling factor between images and latent maps."""

    # Defaults for autoencoders built as an `encoder` and a `decoder` module (R32, tiny AE); SD-VAE overrides them.
    encoder: nn.Module
    decoder: nn.Module

    def encode(self, images: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch n height/8 width/8"]:
        check_image_batch(images, self.downscale)
        return self.encoder(images)

    def decode(self, latents: Float[Tensor, "batch n h w"]) -> Float[Tensor, "batch 3 h*8 w*8"]:
        return self.decoder(latents)

    def encoder_parameters(self) -> List[nn.Parameter]:
        return list(self.encoder.parameters())

    def decoder_parameters(self) -> List[nn.Parameter]:
        return list(self.decoder.parameters())

    def reconstruct(self, images: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch 3 height width"]:
        """Encode then decode: the phase-A training target."""
        return self.decode(self.encode(images))

    @property
    def is_pretrained(self) -> bool:
        """Whether the weights were loaded from a trained model (then the encoder's latents mean something before
        phase A has run)."""
        init = getattr(getattr(self, "config", None), "init", None)
        return init == "pretrained"

    @property
    def architecture(self) -> str:
        """A short name of the architecture, stored in checkpoints so a resume with another autoencoder fails loudly."""
        return type(self).__name__


def check_image_batch(images: Tensor, downscale: int = 8) -> None:
    """Raise a clear error when an image batch cannot go through an 8x autoencoder."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape [batch, 3, height, width], got {tuple(images.shape)}")
    if images.shape[2] % downscale or images.shape[3] % downscale:
        raise ValueError(
            f"image height and width must be multiples of {downscale} to be encoded, got {tuple(images.shape[2:])}"
        )


def to_signed(images: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1], the range diffusers' autoencoders work in."""
    return images * 2.0 - 1.0


def to_unit(images: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1]."""
    return (images + 1.0) * 0.5


__all__ = [
    "AutoencoderConfig",
    "LatentAutoencoder",
    "check_image_batch",
    "to_signed",
    "to_unit",
]
