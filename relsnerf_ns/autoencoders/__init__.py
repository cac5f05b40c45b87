"""Latent autoencoders for ReLS-NeRF: SD-VAE (pretrained), R32 (from scratch) and TAESD-family tiny AEs."""

from relsnerf_ns.autoencoders.base import AutoencoderConfig, LatentAutoencoder
from relsnerf_ns.autoencoders.r32 import R32Autoencoder, R32AutoencoderConfig
from relsnerf_ns.autoencoders.sd_vae import StableDiffusionVAE, StableDiffusionVAEConfig
from relsnerf_ns.autoencoders.tiny import TinyAutoencoder, TinyAutoencoderConfig
from relsnerf_ns.autoencoders.weights import PretrainedWeightsError

__all__ = [
    "AutoencoderConfig",
    "LatentAutoencoder",
    "PretrainedWeightsError",
    "R32Autoencoder",
    "R32AutoencoderConfig",
    "StableDiffusionVAE",
    "StableDiffusionVAEConfig",
    "TinyAutoencoder",
    "TinyAutoencoderConfig",
]
