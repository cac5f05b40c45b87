"""Encoder adaptation in phase B: the encoder pulled towards the field's latents, its reconstruction kept, L_z's
targets re-encoded, and a clear error when the encoder has no phase-B rate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from relsnerf_ns.model.latent_targets import LatentTargets
from relsnerf_ns.training.phases import Phase

from .conftest import reached_groups, tiny_config


def test_agreement_moves_the_encoder_alone_and_reconstruction_the_autoencoder(model):
    model.train()
    model.config.encoder_adaptation_mult, model.config.encoder_reconstruction_mult = 0.5, 2.0
    model.latent_targets = LatentTargets([torch.randn(8, 6, 8) * 3.0])
    torch.manual_seed(1)
    crops = torch.rand(2, 3, 32, 32)
    field_latent = torch.randn(2, 4, 4, 8, requires_grad=True)  # stands for the rendered patch latents
    losses = model._encoder_adaptation_losses(crops, field_latent)
    assert set(losses) == {"encoder_adaptation_loss", "encoder_reconstruction_loss"}

    encoded = model.autoencoder.encode(crops)
    std = model.latent_targets.std[None, :, None, None]
    expected = (((encoded - field_latent.detach().permute(0, 3, 1, 2)) / std) ** 2).mean()
    torch.testing.assert_close(losses["encoder_adaptation_loss"], 0.5 * expected)
    expected = F.mse_loss(model.autoencoder.decode(encoded), crops)
    torch.testing.assert_close(losses["encoder_reconstruction_loss"], 2.0 * expected)

    assert reached_groups(model, losses["encoder_adaptation_loss"]) == {"ae_encoder"}
    assert field_latent.grad is None  # the field is the reference, not pulled towards the encoder
    assert reached_groups(model, losses["encoder_reconstruction_loss"]) == {"ae_encoder", "ae_decoder"}


def adapting_config(scene, tmp_path, refresh_every=2):
    config = tiny_config("relsnerf-r32", scene, tmp_path, steps=(2, 5, 0))
    config.pipeline.model.encoder_adaptation_mult = 1.0
    config.pipeline.model.latent_target_refresh_every = refresh_every
    config.optimizers["ae_encoder"]["scheduler"].phase_b.lr = 1e-3
    return config


def test_phase_b_trains_the_encoder_and_re_encodes_the_targets(scene, tmp_path, capsys):
    trainer = adapting_config(scene, tmp_path).setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.pipeline.train()
    model = trainer.pipeline.model
    encoder = model.autoencoder.encoder_parameters()
    targets_at = {}
    for step in range(7):
        before = [p.detach().clone() for p in encoder]
        if step == 6:
            fresh = trainer.pipeline._encode_training_images()  # with the encoder as step 6 starts
        _, loss_dict, _ = trainer.train_iteration(step)
        if trainer.pipeline.phase == Phase.JOINT:
            assert {"encoder_adaptation_loss", "encoder_reconstruction_loss", "latent_loss"} <= set(loss_dict)
            assert any(not torch.equal(a, b) for a, b in zip(before, encoder)), step
            targets_at[step] = model.latent_targets
    # Encoded at the first phase-B step (2), again every 2 phase-B steps (4, 6) with the encoder as it is then.
    assert targets_at[2] is targets_at[3] and targets_at[4] is targets_at[5]
    assert targets_at[3] is not targets_at[4] and targets_at[5] is not targets_at[6]
    assert not torch.equal(targets_at[3].maps, targets_at[4].maps)
    torch.testing.assert_close(targets_at[6].maps[0].permute(2, 0, 1), fresh[0])
    printed = " ".join(capsys.readouterr().out.split())
    assert printed.count("Latent loss L_z on") == 1 and "re-encoded every 2 steps: the encoder adapts" in printed


def test_off_by_default_the_encoder_stays_frozen_and_targets_are_encoded_once(scene, tmp_path):
    config = tiny_config("relsnerf-r32", scene, tmp_path, steps=(2, 5, 0))
    assert config.pipeline.model.encoder_adaptation_mult == 0.0
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.pipeline.train()
    for step in range(2):
        trainer.train_iteration(step)
    model = trainer.pipeline.model
    encoder = [p.detach().clone() for p in model.autoencoder.encoder_parameters()]
    targets = []
    for step in range(2, 7):
        _, loss_dict, _ = trainer.train_iteration(step)
        assert "encoder_adaptation_loss" not in loss_dict and "encoder_reconstruction_loss" not in loss_dict
        targets.append(model.latent_targets)
    assert all(t is targets[0] for t in targets)
    assert all(torch.equal(a, b) for a, b in zip(encoder, model.autoencoder.encoder_parameters()))


def test_adaptation_without_an_encoder_rate_is_an_error_naming_the_flag(scene, tmp_path):
    config = adapting_config(scene, tmp_path)
    config.optimizers["ae_encoder"]["scheduler"].phase_b.lr = 0.0
    with pytest.raises(
        ValueError, match=r"encoder-adaptation-mult 1.0 .* --optimizers.ae-encoder.scheduler.phase-b.lr"
    ):
        config.setup(local_rank=0, world_size=1).setup()
