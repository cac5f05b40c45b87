"""A pretrained tiny autoencoder of the TAESD family (madebyollin/taesd, MIT), e.g. TAEF2 (FLUX.2, 32 channels).

Own module rather than diffusers' ``AutoencoderTiny``: the FLUX.2 variant adds a group-norm "pool" branch to the
blocks around the latent (encoder's last stage, decoder's first stage), which ``AutoencoderTiny`` cannot express.
The layer order follows taesd.py's ``nn.Sequential`` exactly, so its released ``*_encoder.pth`` / ``*_decoder.pth``
state dicts (keys like ``1.conv.0.weight``) load strictly without a key map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Type

import torch
from torch import Tensor, nn

from relsnerf_ns.autoencoders.base import AutoencoderConfig, LatentAutoencoder
from relsnerf_ns.autoencoders.weights import (
    PretrainedWeightsError,
    load_state_dict_strictly,
    mismatch_report,
    read_state_dict,
)


def conv3x3(n_in: int, n_out: int, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias, stride=stride)


class Clamp(nn.Module):
    """Soft clamp of latents to (-3, 3), as TAESD's decoder input."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class TinyBlock(nn.Module):
    """TAESD block: three 3x3 convs with ReLU plus skip; optionally a group-norm pool branch added to the input."""

    def __init__(self, n_in: int, n_out: int, group_norm_pool: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            conv3x3(n_in, n_out), nn.ReLU(), conv3x3(n_out, n_out), nn.ReLU(), conv3x3(n_out, n_out)
        )
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if group_norm_pool:
            hidden = 4 * n_in
            self.pool = nn.Sequential(
                nn.Conv2d(n_in, hidden, 1, bias=False),
                nn.GroupNorm(4, hidden),
                nn.ReLU(),
                nn.Conv2d(hidden, n_in, 1, bias=False),
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def tiny_encoder(latent_channels: int, width: int, group_norm_pool: bool) -> nn.Sequential:
    def stage(pool: bool = False) -> List[nn.Module]:
        return [conv3x3(width, width, bias=False, stride=2)] + [TinyBlock(width, width, pool) for _ in range(3)]

    return nn.Sequential(
        conv3x3(3, width),
        TinyBlock(width, width),
        *stage(),
        *stage(),
        *stage(group_norm_pool),
        conv3x3(width, latent_channels),
    )


def tiny_decoder(latent_channels: int, width: int, group_norm_pool: bool) -> nn.Sequential:
    def stage(pool: bool = False) -> List[nn.Module]:
        return [TinyBlock(width, width, pool) for _ in range(3)] + [
            nn.Upsample(scale_factor=2),
            conv3x3(width, width, bias=False),
        ]

    return nn.Sequential(
        Clamp(),
        conv3x3(latent_channels, width),
        nn.ReLU(),
        *stage(group_norm_pool),
        *stage(),
        *stage(),
        TinyBlock(width, width),
        conv3x3(width, 3),
    )


def _layer_index(key: str) -> int:
    head = key.split(".", 1)[0]
    return int(head) if head.isdigit() else -1


def describe_tiny_weights(state: Dict[str, Tensor], part: Literal["encoder", "decoder"], config) -> List[str]:
    """What a state dict that failed to load seems to be, and the settings that would fit it (taesd.py layout)."""
    hints: List[str] = []
    prefixes = sorted({k.split(".", 1)[0] for k in state if not k.split(".", 1)[0].isdigit()})
    if prefixes:
        return [
            f"its keys start with {', '.join(repr(p + '.') for p in prefixes[:4])} rather than layer numbers: it is "
            "not a taesd.py state dict (a combined or diffusers AutoencoderTiny checkpoint?); use taesd.py's separate "
            "*_encoder.pth and *_decoder.pth files."
        ]
    first = state.get("0.weight")
    looks_like_encoder = first is not None and first.ndim == 4 and first.shape[1] == 3  # conv3x3(3, width)
    looks_like_decoder = first is None and "1.weight" in state  # Clamp() has no weights; then conv3x3(latent, width)
    if part == "decoder" and looks_like_encoder:
        return ["it looks like an ENCODER file (its first layer takes 3 image channels): swap the two paths?"]
    if part == "encoder" and looks_like_decoder:
        return ["it looks like a DECODER file (its first layer is a latent soft clamp): swap the two paths?"]
    flag = "--pipeline.model.autoencoder."
    found: Dict[str, object] = {}
    convs = [k for k in state if k.endswith(".weight") and state[k].ndim == 4]
    if part == "encoder" and looks_like_encoder and convs:
        last = max(convs, key=_layer_index)  # the final conv3x3(width, latent_channels)
        found["latent-channels"], found["width"] = int(state[last].shape[0]), int(first.shape[0])  # type: ignore
    elif part == "decoder" and looks_like_decoder and state["1.weight"].ndim == 4:
        found["width"], found["latent-channels"] = (int(n) for n in state["1.weight"].shape[:2])
    else:
        shapes = ", ".join(f"{k} {tuple(state[k].shape)}" for k in sorted(state, key=_layer_index)[:2])
        return [
            f"it is not a taesd.py {part} (its first layers are {shapes or 'absent'}): pass the {part} file of a "
            "TAESD-family model."
        ]
    found["group-norm-pool"] = any(".pool." in k for k in state)
    configured = {
        "latent-channels": config.latent_channels,
        "width": config.width,
        "group-norm-pool": config.group_norm_pool,
    }
    differing = [f"{flag}{name} {value}" for name, value in found.items() if configured[name] != value]
    if differing:
        hints.append(
            f"the file looks like a TAESD-family {part} with latent-channels={found.get('latent-channels', '?')}, "
            f"width={found.get('width', '?')}, group-norm-pool={found['group-norm-pool']}; if it is the model you "
            f"want, run with {' '.join(differing)} (TAESD/TAESDXL: 4 channels, no pool; TAESD3/TAEF1: 16; TAEF2: 32 "
            "with pool)."
        )
    return hints


@dataclass
class TinyAutoencoderConfig(AutoencoderConfig):
    """A TAESD-family tiny autoencoder; defaults describe TAEF2 (FLUX.2 latents, 32 channels)."""

    _target: Type = field(default_factory=lambda: TinyAutoencoder)
    encoder_weights: Path = Path("weights/taef2/taef2_encoder.pth")
    """Encoder state dict (taesd.py layout, .pth or .safetensors)."""
    decoder_weights: Path = Path("weights/taef2/taef2_decoder.pth")
    """Decoder state dict (taesd.py layout, .pth or .safetensors)."""
    init: Literal["pretrained", "random"] = "pretrained"
    """'pretrained' loads the two files strictly; 'random' keeps random weights (tests only)."""
    latent_channels: int = 32
    """Latent channels (TAESD/TAESDXL: 4, TAESD3/TAEF1: 16, TAEF2: 32)."""
    width: int = 64
    """Channels of every hidden layer."""
    group_norm_pool: bool = True
    """The FLUX.2 variant's group-norm pool branch around the latent (TAEF2: True; older TAESD models: False)."""


class TinyAutoencoder(LatentAutoencoder):
    """Encoder takes [0, 1] images; decoder returns [0, 1] images (TAESD's raw latent convention)."""

    config: TinyAutoencoderConfig

    def __init__(self, config: TinyAutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_channels = config.latent_channels
        self.encoder = tiny_encoder(config.latent_channels, config.width, config.group_norm_pool)
        self.decoder = tiny_decoder(config.latent_channels, config.width, config.group_norm_pool)
        if config.init == "pretrained":
            how = (
                "Pass the TAESD-family weight files with --pipeline.model.autoencoder.encoder-weights PATH and "
                "--pipeline.model.autoencoder.decoder-weights PATH (for TAEF2: taef2_encoder.pth / taef2_decoder.pth "
                "from github.com/madebyollin/taesd)."
            )
            for module, path, part in (
                (self.encoder, config.encoder_weights, "encoder"),
                (self.decoder, config.decoder_weights, "decoder"),
            ):
                what = f"tiny autoencoder {part}"
                state = read_state_dict(path, what, how)
                state = {k: v.float() for k, v in state.items()}  # released weights are float16
                hints = (
                    describe_tiny_weights(state, part, config) if mismatch_report(module.state_dict(), state) else []
                )
                load_state_dict_strictly(module, state, path, what, how, hints)


__all__ = ["PretrainedWeightsError", "TinyAutoencoder", "TinyAutoencoderConfig"]
