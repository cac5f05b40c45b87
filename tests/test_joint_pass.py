"""Phase B in one pass: colour, latent-patch and depth rays in one bundle give the losses and gradients of three
passes, and each loss still reaches only the parameters it reached before."""

from __future__ import annotations

import copy
from typing import Dict

import pytest
import torch

from relsnerf_ns.data.relsnerf_datamanager import ImagePatch
from relsnerf_ns.model.latent_targets import LatentTargets
from relsnerf_ns.model.train_batches import JointBatch
from relsnerf_ns.rendering.latent_rays import latent_ray_bundle

from .conftest import camera, reached_groups

# float32 on the CPU: the same per-ray arithmetic in bundles of other sizes differs in the last bits of matrix
# products; measured differences are ~1e-7 relative, the tolerance leaves two orders of magnitude.
RTOL, ATOL = 1e-5, 1e-6


def no_sampling_jitter(model) -> None:
    """Both passes then place the same samples on the same rays (jitter draws random numbers per bundle)."""
    for module in model.modules():
        if hasattr(module, "train_stratified"):
            module.train_stratified = False


def with_density(model) -> None:
    """Colour steps towards a two-tone image, so that the random field's fog starts to take shape: at initialisation
    the proposal weights bound the final ones everywhere, and the interlevel loss and its gradients are 0."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    rays = camera().generate_rays(camera_indices=0, keep_shape=False)[::7]
    two_tone = (rays.directions[:, :1] > 0).float().repeat(1, 3)
    for _ in range(12):
        optimizer.zero_grad()
        (model(rays)["rgb"] - two_tone).square().mean().backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)


def joint_batch(with_depth: bool, num_patches: int = 1) -> JointBatch:
    torch.manual_seed(3)
    cam = camera()
    pixels = torch.stack(torch.meshgrid(torch.arange(48), torch.arange(64), indexing="ij"), -1).reshape(-1, 2)
    chosen = torch.randperm(len(pixels))[:96]
    indices = torch.cat([torch.zeros(len(chosen), 1, dtype=torch.long), pixels[chosen]], dim=1)
    rays = cam.generate_rays(camera_indices=indices[:, :1], coords=pixels[chosen].float() + 0.5)
    patches = [
        ImagePatch(0, 8 * k, 16, 16, torch.rand(3, 16, 16), latent_ray_bundle(cam, 0, 8 * k, 16, 2, 2))
        for k in range(num_patches)
    ]
    batch: Dict = {"image": torch.rand(len(chosen), 3), "indices": indices}
    batch["latent_patch"] = patches if num_patches > 1 else patches[0]
    if with_depth:
        depth_pixels = torch.rand(24, 2) * torch.tensor([48.0, 64.0])
        depth_rays = cam.generate_rays(camera_indices=torch.zeros(24, 1, dtype=torch.long), coords=depth_pixels)
        batch["depth_rays"] = (depth_rays, 2.5 + torch.rand(24, 1), torch.rand(24, 1) + 0.5)
    return JointBatch(rays, batch)


def step(model, train_batch: JointBatch):
    _, losses, _ = model.train_step(train_batch)
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def assert_same_step(got, expected, rtol: float = RTOL, atol: float = ATOL) -> None:
    """Two steps' (losses, gradients), as `step` returns them, agree: the same names, every expected loss non-zero,
    values within the tolerance."""
    (got_losses, got_grads), (expected_losses, expected_grads) = got, expected
    assert set(got_losses) == set(expected_losses)
    for name, value in expected_losses.items():
        assert value != 0, name
        torch.testing.assert_close(got_losses[name], value, rtol=rtol, atol=atol, msg=name)
    assert set(got_grads) == set(expected_grads)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("with_depth,num_patches", [(False, 1), (True, 2)])
def test_single_pass_gives_the_losses_and_gradients_of_separate_passes(model, with_depth, num_patches):
    model.train()
    model.latent_targets = LatentTargets([torch.randn(8, 6, 8)])
    model.config.depth_loss_mult = 0.1 if with_depth else 0.0
    no_sampling_jitter(model)
    separate = copy.deepcopy(model)
    separate.config.joint_pass = "separate"
    model.config.joint_pass = "single"
    with_density(model)
    with_density(separate)  # the same steps: the CPU's arithmetic is deterministic

    single_losses, single_grads = step(model, joint_batch(with_depth, num_patches))
    separate_losses, separate_grads = step(separate, joint_batch(with_depth, num_patches))

    expected = {"rgb_loss", "interlevel_loss", "distortion_loss", "latent_loss", "patch_loss"}
    assert set(separate_losses) == expected | ({"depth_loss"} if with_depth else set())
    assert_same_step((single_losses, single_grads), (separate_losses, separate_grads))


def test_each_loss_of_the_single_pass_reaches_what_it_should(model):
    model.train()
    model.latent_targets = LatentTargets([torch.randn(8, 6, 8)])
    model.config.depth_loss_mult = 0.1
    model.config.joint_pass = "single"
    no_sampling_jitter(model)
    with_density(model)
    _, losses, _ = model.train_step(joint_batch(with_depth=True))
    assert model.decoder_guidance.enabled  # the recipe's default guidance: its adapter has a group of its own
    assert reached_groups(model, losses["patch_loss"]) == {"latent_field", "ae_decoder", "decoder_guidance"}
    assert reached_groups(model, losses["latent_loss"]) == {"latent_field"}
    assert reached_groups(model, losses["rgb_loss"]) == {"fields"}
    assert reached_groups(model, losses["depth_loss"]) == {"fields"}
    assert reached_groups(model, losses["interlevel_loss"]) == {"proposal_networks"}
