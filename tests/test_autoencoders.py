"""Autoencoders: the R32 architecture of appendix C, the tiny AE's strict loading, the SD-VAE wrapper."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from relsnerf_ns.autoencoders import (
    PretrainedWeightsError,
    R32AutoencoderConfig,
    StableDiffusionVAEConfig,
    TinyAutoencoderConfig,
)
from relsnerf_ns.autoencoders.r32 import RBIN, Resample


def stage_widths(sequence: nn.Sequential):
    """(kind, output channels) of each stage: C = conv block, R = RBIN, D/U = bilinear halving/doubling."""
    stages = []
    for module in sequence:
        if isinstance(module, RBIN):
            stages.append(("R", module[1].conv2.out_channels))
        elif isinstance(module, Resample):
            stages.append(("D" if module.factor < 1 else "U", None))
        elif isinstance(module, nn.Conv2d):
            stages.append(("C", module.out_channels))
        elif isinstance(module, nn.Sequential):  # C5
            stages.append(("C5", module[0].out_channels))
        elif isinstance(module, nn.Sigmoid):
            stages.append(("S", None))
    return stages


def test_r32_layers_follow_appendix_c():
    ae = R32AutoencoderConfig().setup()
    assert stage_widths(ae.encoder) == [
        ("C5", 32),
        ("R", 128),
        ("D", None),
        ("R", 128),
        ("D", None),
        ("R", 256),
        ("D", None),
        ("R", 256),
        ("C", 32),
    ]
    assert stage_widths(ae.decoder) == [
        ("C", 256),
        ("R", 256),
        ("U", None),
        ("R", 128),
        ("U", None),
        ("R", 128),
        ("U", None),
        ("R", 32),
        ("C", 3),
        ("S", None),
    ]
    assert ae.encoder[0][0].kernel_size == (5, 5)
    assert isinstance(ae.encoder[0][1], nn.InstanceNorm2d) and isinstance(ae.encoder[0][2], nn.ELU)
    assert ae.encoder[-1].kernel_size == (1, 1) and ae.decoder[0].kernel_size == (1, 1)
    block = ae.encoder[1][0]
    assert block.conv1.kernel_size == (3, 3) and isinstance(block.norm1, nn.InstanceNorm2d)


def test_r32_shapes_and_output_range():
    ae = R32AutoencoderConfig().setup()
    images = torch.rand(2, 3, 64, 48)
    latents = ae.encode(images)
    assert latents.shape == (2, 32, 8, 6)
    decoded = ae.decode(latents)
    assert decoded.shape == (2, 3, 64, 48)
    assert decoded.min() >= 0 and decoded.max() <= 1  # sigmoid output
    with pytest.raises(ValueError, match="multiples of 8"):
        ae.encode(torch.rand(1, 3, 60, 48))


def test_r32_parameter_groups_split_encoder_and_decoder():
    ae = R32AutoencoderConfig().setup()
    enc, dec = {id(p) for p in ae.encoder_parameters()}, {id(p) for p in ae.decoder_parameters()}
    assert enc and dec and not enc & dec
    assert enc | dec == {id(p) for p in ae.parameters()}


def test_tiny_autoencoder_loads_taesd_layout_strictly(tmp_path):
    random_ae = TinyAutoencoderConfig(init="random").setup()
    # taesd.py's released files are plain nn.Sequential state dicts in float16.
    torch.save({k: v.half() for k, v in random_ae.encoder.state_dict().items()}, tmp_path / "enc.pth")
    torch.save({k: v.half() for k, v in random_ae.decoder.state_dict().items()}, tmp_path / "dec.pth")
    assert "11.pool.1.weight" in random_ae.encoder.state_dict()  # TAEF2's group-norm pool branch
    assert "1.conv.0.weight" in random_ae.encoder.state_dict()
    loaded = TinyAutoencoderConfig(encoder_weights=tmp_path / "enc.pth", decoder_weights=tmp_path / "dec.pth").setup()
    for key, value in random_ae.decoder.state_dict().items():
        torch.testing.assert_close(loaded.decoder.state_dict()[key], value.half().float())
    latents = loaded.encode(torch.rand(1, 3, 32, 40))
    assert latents.shape == (1, 32, 4, 5)
    assert loaded.decode(latents).shape == (1, 3, 32, 40)


def test_tiny_autoencoder_errors_name_path_and_shapes(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="no file at .*missing.pth.*--pipeline.model.autoencoder"):
        TinyAutoencoderConfig(encoder_weights=tmp_path / "missing.pth").setup()
    other = TinyAutoencoderConfig(init="random", latent_channels=4, group_norm_pool=False).setup()
    torch.save(other.encoder.state_dict(), tmp_path / "enc4.pth")
    torch.save(other.decoder.state_dict(), tmp_path / "dec4.pth")
    with pytest.raises(PretrainedWeightsError) as error:
        TinyAutoencoderConfig(encoder_weights=tmp_path / "enc4.pth", decoder_weights=tmp_path / "dec4.pth").setup()
    message = str(error.value)
    assert "enc4.pth" in message and "14.weight: file (4, 64, 3, 3) vs expected (32, 64, 3, 3)" in message
    assert "missing keys: 11.pool.0.weight" in message


def test_sd_vae_random_architecture_round_trip():
    ae = StableDiffusionVAEConfig(
        init="random", block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4
    ).setup()
    assert ae.latent_channels == 4 and ae.downscale == 8
    latents = ae.encode(torch.rand(1, 3, 32, 48))
    assert latents.shape == (1, 4, 4, 6)
    assert ae.decode(latents).shape == (1, 3, 32, 48)
    enc, dec = {id(p) for p in ae.encoder_parameters()}, {id(p) for p in ae.decoder_parameters()}
    assert enc and dec and not enc & dec and enc | dec == {id(p) for p in ae.parameters()}


def test_sd_vae_missing_weights_say_how_to_supply_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsError, match="--pipeline.model.autoencoder.pretrained"):
        StableDiffusionVAEConfig(pretrained=str(tmp_path / "no-such-vae")).setup()
    with pytest.raises(PretrainedWeightsError, match="huggingface-cli download"):
        StableDiffusionVAEConfig(pretrained="someone/not-in-the-cache").setup()
