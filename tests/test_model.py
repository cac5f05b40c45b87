"""The latent field: rendering, gradient isolation, latent rays, and full-frame decoding at any size."""

from __future__ import annotations

import pytest
import torch
from nerfstudio.field_components.field_heads import FieldHeadNames

from relsnerf_ns.rendering.latent_rays import latent_ray_bundle

from .conftest import camera


def test_latent_is_the_weighted_sum_of_z_along_each_ray(model):
    model.eval()  # no sampling jitter: both computations see the same samples
    bundle = model.collider(latent_ray_bundle(camera(), 0, 8, 16, 3, 4).flatten())
    with torch.no_grad():
        rendered = model.render_latents(bundle, with_colour=True)
        samples, _, _ = model.proposal_sampler(bundle, density_fns=model.density_fns)
        outputs = model.field.forward(samples)
        weights = samples.get_weights(outputs[FieldHeadNames.DENSITY])
        z = model.field.get_latent(samples)
    expected = (weights * z).sum(dim=-2)
    assert rendered["latent"].shape == (12, 8)
    torch.testing.assert_close(rendered["latent"], expected)
    # Colour uses the very same weights.
    torch.testing.assert_close(rendered["accumulation"], weights.sum(dim=-2))
    assert z.abs().sum() > 0 and weights.sum() > 0


def test_patch_loss_reaches_only_the_latent_field_and_decoder(model):
    model.train()
    bundle = latent_ray_bundle(camera(), 0, 0, 0, 4, 4).flatten()
    maps = model.render_latents(bundle, with_colour=True)  # the colour, depth and accumulation guide the decoder
    decoded = model.decode_latent_map(model.decoder_input_map({k: v.view(4, 4, -1) for k, v in maps.items()}))
    assert decoded.shape == (3, 32, 32)
    torch.nn.functional.mse_loss(decoded, torch.rand(3, 32, 32)).backward()
    groups = model.get_param_groups()

    def has_grad(params):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)

    assert has_grad(groups["latent_field"]) and has_grad(groups["ae_decoder"])
    for name in ("fields", "proposal_networks", "ae_encoder"):
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in groups[name]), name


def test_colour_loss_does_not_reach_the_latent_field(model):
    model.train()
    bundle = camera().generate_rays(camera_indices=torch.zeros(40, 1, dtype=torch.long), coords=torch.rand(40, 2) * 40)
    outputs = model(bundle)
    outputs["rgb"].sum().backward()
    groups = model.get_param_groups()
    assert any(p.grad is not None for p in groups["fields"])
    assert all(p.grad is None for p in groups["latent_field"])


def test_latent_rays_go_through_block_centres():
    cams = camera(width=80, height=64, n=2)
    bundle = latent_ray_bundle(cams, 1, top=16, left=8, rows=3, cols=5)
    assert bundle.shape == (3, 5)
    # Project a point on each ray back into the camera: (x, y) = (fx X / -Z + cx, -fy Y / -Z + cy) in camera frame.
    points = bundle.origins + 2.0 * bundle.directions
    c2w = cams.camera_to_worlds[1]
    local = (points - c2w[:, 3]) @ c2w[:, :3]
    x = 60.0 * local[..., 0] / -local[..., 2] + 40.0
    y = -60.0 * local[..., 1] / -local[..., 2] + 32.0
    rows = torch.arange(3)[:, None].expand(3, 5)
    cols = torch.arange(5)[None, :].expand(3, 5)
    torch.testing.assert_close(y, 16 + 8 * rows + 4.0, rtol=0, atol=1e-4)
    torch.testing.assert_close(x, 8 + 8 * cols + 4.0, rtol=0, atol=1e-4)
    assert (bundle.camera_indices == 1).all()


@pytest.mark.parametrize("size", [(64, 48), (61, 45), (20, 13)])
def test_outputs_for_camera_at_any_size(model, size):
    width, height = size
    model.eval()
    outputs = model.get_outputs_for_camera(camera(width=width, height=height))
    low = model.render_latent_frame(camera(width=width, height=height))
    for key in ("rgb", "rgb_nerf", "depth", "accumulation", "latent"):
        assert outputs[key].shape[:2] == (height, width), key
    assert outputs["rgb"].shape[-1] == 3 and outputs["latent"].shape[-1] == 8
    assert low["latent"].shape[:2] == ((height + 7) // 8, (width + 7) // 8)
    assert set(outputs) == {"rgb", "rgb_nerf", "depth", "accumulation", "latent"}
    assert 0 <= outputs["rgb"].min() and outputs["rgb"].max() <= 1
    # The decoded image is D(latent map, guided by the same rays' colour, depth and accumulation), cropped.
    expected = model.decode_latent_map(model.decoder_input_map(low)).clamp(0, 1).permute(1, 2, 0)[:height, :width]
    torch.testing.assert_close(outputs["rgb"], expected)


def test_full_resolution_rgb_nerf_matches_nerfacto_path(model):
    model.eval()
    model.render_rgb_nerf_full_resolution = True
    outputs = model.get_outputs_for_camera(camera(width=24, height=16))
    expected = model.render_rgb_nerf(camera(width=24, height=16))
    torch.testing.assert_close(outputs["rgb_nerf"], expected)


def test_viewer_switch_shows_the_rgb_nerf_per_pixel(model):
    from relsnerf_ns.model.relsnerf_model import RENDER_RGB_NERF

    model.eval()
    cam = camera(width=24, height=16)
    decoded = model.get_outputs_for_camera(cam)["rgb"]
    model.viewer_render_mode.value = RENDER_RGB_NERF
    switched = model.get_outputs_for_camera(cam)["rgb"]
    torch.testing.assert_close(switched, model.render_rgb_nerf(cam))
    assert not torch.allclose(switched, decoded)
