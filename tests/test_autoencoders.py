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
    assert "missing keys (expected shape): 11.pool.0.weight (256, 64, 1, 1)" in message
    # What the file is and the settings that fit it.
    assert "latent-channels=4, width=64, group-norm-pool=False" in message
    assert (
        "--pipeline.model.autoencoder.latent-channels 4 --pipeline.model.autoencoder.group-norm-pool False" in message
    )


def test_tiny_weights_of_another_size_or_part_say_what_they_are_and_how_to_fix(tmp_path):
    narrow = TinyAutoencoderConfig(init="random", width=32).setup()  # same layout, half the width
    torch.save(narrow.encoder.state_dict(), tmp_path / "narrow_enc.pth")
    with pytest.raises(PretrainedWeightsError) as error:
        TinyAutoencoderConfig(encoder_weights=tmp_path / "narrow_enc.pth").setup()
    message = str(error.value)
    assert f"tiny autoencoder encoder: '{tmp_path / 'narrow_enc.pth'}' does not match" in message
    assert "0.weight: file (32, 3, 3, 3) vs expected (64, 3, 3, 3)" in message and "(78 in all)" in message
    assert "run with --pipeline.model.autoencoder.width 32" in message
    assert "--pipeline.model.autoencoder.encoder-weights PATH" in message  # how to supply the right files
    # The encoder file passed as the decoder.
    right = TinyAutoencoderConfig(init="random").setup()
    torch.save(right.encoder.state_dict(), tmp_path / "enc.pth")
    with pytest.raises(PretrainedWeightsError, match=r"(?s)decoder: .*enc\.pth.*looks like an ENCODER file.*swap"):
        TinyAutoencoderConfig(encoder_weights=tmp_path / "enc.pth", decoder_weights=tmp_path / "enc.pth").setup()
    # Another architecture altogether: R32's decoder.
    torch.save(R32AutoencoderConfig(latent_channels=32).setup().decoder.state_dict(), tmp_path / "r32_dec.pth")
    with pytest.raises(PretrainedWeightsError) as error:
        TinyAutoencoderConfig(encoder_weights=tmp_path / "enc.pth", decoder_weights=tmp_path / "r32_dec.pth").setup()
    message = str(error.value)
    assert "missing keys (expected shape): 1.bias (64,); 1.weight (64, 32, 3, 3)" in message
    assert "unexpected keys (shape in the file): 0.bias (256,); 0.weight (256, 32, 1, 1)" in message
    assert "it is not a taesd.py decoder" in message


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


def test_sd_vae_missing_weights_say_how_to_supply_them(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capfd.readouterr()
    with pytest.raises(PretrainedWeightsError, match="--pipeline.model.autoencoder.pretrained"):
        StableDiffusionVAEConfig(pretrained=str(tmp_path / "no-such-vae")).setup()
    with pytest.raises(PretrainedWeightsError, match="huggingface-cli download"):
        StableDiffusionVAEConfig(pretrained="someone/not-in-the-cache").setup()
    # Only the error: not diffusers' notice about installing accelerate once per attempt (four attempts here).
    printed = capfd.readouterr()
    assert "accelerate" not in printed.out + printed.err


def tiny_vae(**overrides):
    settings = dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4)
    settings.update(overrides)
    return StableDiffusionVAEConfig(init="random", **settings).setup().vae


def test_sd_vae_weights_of_another_architecture_are_named_with_shapes(tmp_path):
    tiny_vae().save_pretrained(tmp_path / "vae")
    tiny_vae(block_out_channels=(8, 16, 16, 16)).save_pretrained(tmp_path / "wider")
    # config.json of one VAE next to the weights of a wider one.
    weights = "diffusion_pytorch_model.safetensors"
    (tmp_path / "vae" / weights).write_bytes((tmp_path / "wider" / weights).read_bytes())
    with pytest.raises(PretrainedWeightsError) as error:
        StableDiffusionVAEConfig(pretrained=str(tmp_path / "vae")).setup()
    message = str(error.value)
    assert f"the weights in '{tmp_path / 'vae'}' do not match the architecture its config.json describes" in message
    assert "decoder.conv_in.weight: file (16, 4, 3, 3) vs expected (8, 4, 3, 3)" in message
    assert "unexpected keys (shape in the file): decoder.up_blocks.3.resnets.0.conv_shortcut.bias (8,)" in message
    assert "--pipeline.model.autoencoder.pretrained" in message


def test_sd_vae_with_missing_weights_fails_instead_of_using_random_ones(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_vae().save_pretrained(tmp_path / "sd" / "vae")  # a Stable Diffusion directory with a vae/ subfolder
    path = tmp_path / "sd" / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    save_file({k: v for k, v in state.items() if not k.startswith("decoder.up_blocks.3.")}, str(path))
    with pytest.raises(PretrainedWeightsError) as error:
        StableDiffusionVAEConfig(pretrained=str(tmp_path / "sd")).setup()
    message = str(error.value)
    assert str(tmp_path / "sd" / "vae") in message
    assert "missing keys (expected shape): decoder.up_blocks.3.resnets.0.conv1.bias (8,)" in message
