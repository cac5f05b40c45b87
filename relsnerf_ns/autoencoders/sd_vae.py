"""The Stable Diffusion VAE (diffusers ``AutoencoderKL``), the decoder of the paper's main model.

Pretrained weights come from a local diffusers directory (``config.json`` + weights, or a full Stable Diffusion
pipeline directory with a ``vae/`` subfolder) or a Hugging Face hub id that is already in the local cache or
reachable. ``init="random"`` builds the same architecture with random weights (used by the tests, never for results).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal, Optional, Tuple, Type

from jaxtyping import Float
from torch import Tensor, nn

from relsnerf_ns.autoencoders.base import AutoencoderConfig, LatentAutoencoder, check_image_batch, to_signed, to_unit
from relsnerf_ns.autoencoders.weights import PretrainedWeightsError, mismatch_report, read_state_dict

HOW_TO_SUPPLY = (
    "Supply it as a local directory: on a machine with internet run\n"
    "  huggingface-cli download stabilityai/sd-vae-ft-mse --local-dir sd-vae-ft-mse\n"
    "copy the folder here and pass  --pipeline.model.autoencoder.pretrained /path/to/sd-vae-ft-mse\n"
    "(a full Stable Diffusion directory with a vae/ subfolder works too)."
)
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)


def _weights_mismatch(source: str, subfolder: Optional[str], detail: str) -> PretrainedWeightsError:
    """The error for weights that do not fit the architecture of their config.json: which tensors, with shapes."""
    from diffusers import AutoencoderKL

    directory = Path(source).expanduser() / (subfolder or "")
    report: List[str] = []
    if directory.is_dir():
        try:
            expected = AutoencoderKL.from_config(AutoencoderKL.load_config(str(directory))).state_dict()
            weights = next(directory / name for name in WEIGHT_FILES if (directory / name).is_file())
            report = mismatch_report(expected, read_state_dict(weights, "Stable Diffusion VAE", ""))
        except Exception:  # fall back to diffusers' own description
            report = []
    where = str(directory) if directory.is_dir() else f"{source} (subfolder={subfolder})"
    return PretrainedWeightsError(
        f"Stable Diffusion VAE: the weights in '{where}' do not match the architecture its config.json describes "
        "(another model's weights, or a config.json of another model).\n"
        + ("\n".join(report) if report else f"  {detail}")
        + "\nUse the config.json that came with these weights, or download the VAE again.\n"
        + HOW_TO_SUPPLY
    )


def _from_pretrained(source: str, subfolder: Optional[str], local_only: bool):
    """diffusers' loading, made strict: without `accelerate`, diffusers fills missing weights with random values
    (and only logs it), and reports wrong shapes with a RuntimeError that says nothing about how to fix it."""
    from diffusers import AutoencoderKL
    from diffusers.utils import is_accelerate_available

    try:
        with warnings.catch_warnings():
            # diffusers passes huggingface_hub an argument that it has deprecated and ignores.
            warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
            vae, info = AutoencoderKL.from_pretrained(
                source,
                subfolder=subfolder,
                local_files_only=local_only,
                output_loading_info=True,
                # What diffusers falls back to without accelerate anyway, said explicitly: otherwise it logs its
                # notice about installing accelerate on every attempt (up to four per load).
                low_cpu_mem_usage=is_accelerate_available(),
            )
    except (RuntimeError, ValueError) as error:  # the type and wording depend on whether accelerate is installed
        if any(text in str(error).lower() for text in ("size mismatch", "missing key", "are missing", "mismatched")):
            raise _weights_mismatch(source, subfolder, str(error).splitlines()[0]) from error
        raise
    if info.get("missing_keys") or info.get("mismatched_keys"):
        detail = f"missing: {info.get('missing_keys', [])[:8]}; mis-shaped: {info.get('mismatched_keys', [])[:8]}"
        raise _weights_mismatch(source, subfolder, detail)
    return vae


@dataclass
class StableDiffusionVAEConfig(AutoencoderConfig):
    """Stable Diffusion's KL autoencoder through diffusers' ``AutoencoderKL``."""

    _target: Type = field(default_factory=lambda: StableDiffusionVAE)
    pretrained: str = "stabilityai/sd-vae-ft-mse"
    """Local diffusers directory (with config.json, or a Stable Diffusion directory with a vae/ subfolder) or a hub id
    found in the Hugging Face cache."""
    init: Literal["pretrained", "random"] = "pretrained"
    """'pretrained' loads `pretrained`; 'random' builds the architecture below with random weights (tests only)."""
    block_out_channels: Tuple[int, ...] = (128, 256, 512, 512)
    """Widths of the random-init architecture (ignored when loading pretrained weights)."""
    layers_per_block: int = 2
    """Resnet layers per block of the random-init architecture."""
    norm_num_groups: int = 32
    """Group-norm groups of the random-init architecture."""
    latent_channels: int = 4
    """Latent channels of the random-init architecture; a pretrained VAE brings its own."""


def load_autoencoder_kl(source: str):
    """Load a diffusers AutoencoderKL from a local directory or the hub cache, or explain how to supply it."""
    path = Path(source).expanduser()
    attempts = []
    if path.exists():
        if not path.is_dir():
            raise PretrainedWeightsError(
                f"Stable Diffusion VAE weights: '{path}' is a file; pass the diffusers directory that holds "
                "config.json and diffusion_pytorch_model.safetensors (or a Stable Diffusion directory with vae/)."
            )
        subfolders = [None, "vae"] if (path / "config.json").exists() else ["vae", None]
        for subfolder in subfolders:
            try:
                return _from_pretrained(str(path), subfolder, local_only=True)
            except PretrainedWeightsError:
                raise
            except (OSError, ValueError, EnvironmentError) as error:
                attempts.append(f"{path}{'/' + subfolder if subfolder else ''}: {error}")
    else:
        for subfolder, local_only in ((None, True), ("vae", True), (None, False), ("vae", False)):
            try:
                return _from_pretrained(source, subfolder, local_only)
            except PretrainedWeightsError:
                raise
            except Exception as error:  # hub errors come in many types (offline, missing repo, missing file)
                attempts.append(f"{source} (subfolder={subfolder}, local_only={local_only}): {type(error).__name__}")
    raise PretrainedWeightsError(
        f"Could not load the Stable Diffusion VAE from '{source}'.\n"
        + HOW_TO_SUPPLY
        + "\nTried:\n  "
        + "\n  ".join(attempts)
    )


class StableDiffusionVAE(LatentAutoencoder):
    """Encode with the posterior mode scaled by ``scaling_factor``; decode back to [0, 1] images."""

    config: StableDiffusionVAEConfig

    def __init__(self, config: StableDiffusionVAEConfig) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.config = config
        if config.init == "pretrained":
            self.vae = load_autoencoder_kl(config.pretrained)
        else:
            n_blocks = len(config.block_out_channels)
            self.vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * n_blocks,
                up_block_types=("UpDecoderBlock2D",) * n_blocks,
                block_out_channels=tuple(config.block_out_channels),
                layers_per_block=config.layers_per_block,
                norm_num_groups=config.norm_num_groups,
                latent_channels=config.latent_channels,
            )
        self.latent_channels = int(self.vae.config.latent_channels)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.downscale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if self.downscale != 8:
            raise PretrainedWeightsError(
                f"the VAE from '{config.pretrained}' downsamples by {self.downscale}, ReLS-NeRF needs 8 "
                f"(block_out_channels={self.vae.config.block_out_channels})"
            )

    def encode(self, images: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch n height/8 width/8"]:
        check_image_batch(images, self.downscale)
        posterior = self.vae.encode(to_signed(images)).latent_dist
        return posterior.mode() * self.scaling_factor

    def decode(self, latents: Float[Tensor, "batch n h w"]) -> Float[Tensor, "batch 3 h*8 w*8"]:
        decoded = self.vae.decode(latents / self.scaling_factor).sample
        return to_unit(decoded)

    def encoder_parameters(self) -> List[nn.Parameter]:
        modules = [self.vae.encoder, getattr(self.vae, "quant_conv", None)]
        return [p for m in modules if m is not None for p in m.parameters()]

    def decoder_parameters(self) -> List[nn.Parameter]:
        modules = [getattr(self.vae, "post_quant_conv", None), self.vae.decoder]
        return [p for m in modules if m is not None for p in m.parameters()]
