"""Decoder guidance: the colour NeRF's colour, depth and accumulation of the latent rays (and, for surface guidance,
the colour field at 4x4 points of each block's surface) as extra decoder inputs.

What is checked: the channels of a decoder input map, where the surface points lie, that an untrained adapter decodes
exactly as the plain decoder, which parameters L_p reaches with guidance (the adapter and the decoder, never the
colour NeRF), phase C and the inference paths carrying the guidance channels, errors, and loading a checkpoint
trained without guidance."""

from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
import torch
from nerfstudio.cameras.rays import Frustums, RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.field_heads import FieldHeadNames

from relsnerf_ns.model.decoder_guidance import MIN_DEPTH, DecoderGuidance, surface_image
from relsnerf_ns.relsnerf_config import GUIDANCE_LR, relsnerf_r32
from relsnerf_ns.rendering.latent_rays import (
    block_centre_coords,
    block_offsets,
    block_sub_ray_directions,
    latent_ray_bundle,
)
from relsnerf_ns.training.phases import Phase
from relsnerf_ns.training.relsnerf_trainer import restart_changed_group

from .conftest import TINY_AE, TINY_MODEL, camera, phase_losses, reached_groups, tiny_config
from .test_joint_pass import joint_batch


def guided_model(kind: str = "rgb-depth", seed: int = 0, **options):
    """The conftest `model` (a tiny relsnerf-r32 on the CPU) with decoder guidance and any other model `options`."""
    torch.manual_seed(seed)
    config = copy.deepcopy(relsnerf_r32.config.pipeline.model)
    for k, v in {**TINY_MODEL, **options}.items():
        setattr(config, k, v)
    for k, v in TINY_AE["relsnerf-r32"].items():
        setattr(config.autoencoder, k, v)
    config.decoder_guidance = kind
    scene_box = SceneBox(aabb=torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]]))
    return config.setup(scene_box=scene_box, num_train_data=4, metadata={}, device="cpu")


def rendered_maps(model, rows: int = 3, cols: int = 4):
    bundle = latent_ray_bundle(camera(), 0, 8, 16, rows, cols).flatten()
    with torch.no_grad():
        maps = model.render_latents(bundle, with_colour=True)
    return {key: value.view(rows, cols, -1) for key, value in maps.items()}


SURFACE = "rgb-depth-surface"
GUIDED_KINDS = ["rgb-depth", SURFACE]


def sub_block_rays(cam, top: int, left: int, rows: int, cols: int, per_side: int = 4):
    """Rays of nerfstudio's own through the centres of the per_side x per_side sub-blocks of each 8x8 block:
    [rays, per_side^2]."""
    coords = block_centre_coords(top, left, rows, cols).reshape(-1, 1, 2) + block_offsets(per_side)[None, :, [1, 0]]
    indices = torch.zeros(*coords.shape[:2], 1, dtype=torch.long)
    return cam.generate_rays(camera_indices=indices, coords=coords)


@pytest.mark.parametrize("per_side", [2, 4])
def test_sub_block_ray_directions_are_nerfstudios_rays_through_the_sub_block_centres(per_side):
    cam = camera()
    rows, cols, k = 3, 4, per_side**2
    rays = latent_ray_bundle(cam, 0, 8, 16, rows, cols).flatten()
    norm = rays.metadata["directions_norm"]
    sub = block_sub_ray_directions(rays.directions, norm, rays.metadata["pixel_axes"], per_side)
    assert sub.shape == (rows * cols, k, 3)
    reference = sub_block_rays(cam, 8, 16, rows, cols, per_side)
    torch.testing.assert_close(sub / sub.norm(dim=-1, keepdim=True), reference.directions, atol=1e-5, rtol=1e-5)
    # A distance t along the block ray and t * |sub| / norm along a sub-block ray: the same distance along the axis.
    forward = -cam.camera_to_worlds[0, :, 2]
    t = 1.0 + 2.0 * torch.rand(len(rays), 1)
    block_point = (t * rays.directions) @ forward
    sub_point = ((t / norm)[:, None, :] * sub) @ forward
    torch.testing.assert_close(sub_point, block_point[:, None].expand(-1, k), atol=1e-5, rtol=1e-5)
    # The sub-block directions average to the block ray's own.
    torch.testing.assert_close(sub.mean(dim=1), rays.directions * norm, atol=1e-6, rtol=1e-5)


def reference_surface_channels(model, cam, rows, cols, count, per_side=4):
    """The surface channels computed from nerfstudio's own sub-block rays, independently of the model's code."""
    rays = latent_ray_bundle(cam, 0, 8, 16, rows, cols).flatten()
    rays = model.collider(rays) if model.collider is not None else rays
    with torch.no_grad():
        samples, _, _ = model.proposal_sampler(rays, density_fns=model.density_fns)
        weights = samples.get_weights(model.field.forward(samples)[FieldHeadNames.DENSITY])
    chosen = torch.topk(weights[..., 0], count, dim=-1).indices.sort(dim=-1).values
    forward = -cam.camera_to_worlds[0, :, 2]
    along_axis = (rays.directions @ forward)[:, None]  # per unit of distance along the block ray
    reference = sub_block_rays(cam, 8, 16, rows, cols, per_side)  # [rays, k]
    per_unit = (reference.directions @ forward)[..., None]  # [rays, k, 1]
    channels = []
    for point in range(per_side**2):
        starts = samples.frustums.starts[..., 0].gather(-1, chosen) * along_axis / per_unit[:, point]
        ends = samples.frustums.ends[..., 0].gather(-1, chosen) * along_axis / per_unit[:, point]
        shape = starts.shape
        sub = RaySamples(
            frustums=Frustums(
                origins=reference.origins[:, point, None].expand(*shape, 3),
                directions=reference.directions[:, point, None].expand(*shape, 3),
                starts=starts[..., None],
                ends=ends[..., None],
                pixel_area=torch.ones(*shape, 1),
            ),
            camera_indices=torch.zeros(*shape, 1, dtype=torch.long),
            deltas=(ends - starts)[..., None],
        )
        with torch.no_grad():
            field = model.field.forward(sub)
        w = sub.get_weights(field[FieldHeadNames.DENSITY])
        accumulation = w.sum(dim=-2)
        rgb = (w * field[FieldHeadNames.RGB]).sum(dim=-2) / accumulation.clamp_min(1e-3)
        channels.append(torch.cat([rgb, accumulation], dim=-1))
    return torch.stack(channels, dim=1).reshape(rows, cols, 4 * per_side**2)


@pytest.mark.parametrize("kind, channels", [("none", 0), ("rgb", 3), ("rgb-depth", 5), (SURFACE, 5 + 64)])
def test_decoder_input_map_appends_the_guidance_channels(kind, channels):
    model = guided_model(kind)
    model.eval()
    maps = rendered_maps(model)
    inputs = model.decoder_input_map(maps)
    assert inputs.shape == (3, 4, 8 + channels)
    torch.testing.assert_close(inputs[..., :8], maps["latent"])
    if channels:
        torch.testing.assert_close(inputs[..., 8:11], maps["rgb_nerf"])
    if channels >= 5:
        expected_depth = torch.log(maps["depth"].clamp_min(MIN_DEPTH))
        torch.testing.assert_close(inputs[..., 11:12], expected_depth)
        torch.testing.assert_close(inputs[..., 12:13], maps["accumulation"])
    if kind == SURFACE:
        # Per sub-block ray, colour and accumulation of the latent ray's samples of highest weight moved onto it.
        count = model.config.surface_samples
        expected = reference_surface_channels(model, camera(), 3, 4, count)
        torch.testing.assert_close(inputs[..., 13:], expected, atol=1e-4, rtol=1e-4)
        colours, accumulations = expected.reshape(3, 4, 16, 4)[..., :3], expected.reshape(3, 4, 16, 4)[..., 3]
        assert colours.std() > 0 and accumulations.std() > 0  # colours and accumulations, not constants
        assert 0 <= float(colours.min()) and float(colours.max()) <= 1 and float(accumulations.max()) <= 1
    # Three convolutions of the adapter (weight, bias); surface guidance adds the refiner's three.
    assert len(list(model.decoder_guidance.parameters())) == {0: 0, 3: 6, 5: 6, 69: 12}[channels]


@pytest.mark.parametrize("k", [2, 4])
def test_the_surface_image_puts_each_point_under_its_sub_block(k):
    rows, cols = 2, 3
    # Channel (point * 4 + c) of block (r, c0) holds a code of (r, c0, point, c): colour channels 0-2, density 3.
    codes = torch.zeros(1, 4 * k * k, rows, cols)
    for r in range(rows):
        for col in range(cols):
            for point in range(k * k):
                for c in range(4):
                    codes[0, point * 4 + c, r, col] = 1000 * r + 100 * col + 4 * point + c
    image = surface_image(codes, k)
    assert image.shape == (1, 3, rows * k, cols * k)
    with_accumulation = surface_image(codes, k, with_accumulation=True)
    assert with_accumulation.shape == (1, 4, rows * k, cols * k)
    for y, x in [(0, 0), (rows * k - 1, 2), (rows * k - 1, cols * k - 1), (3, cols * k - 3)]:
        r, i, col, j = y // k, y % k, x // k, x % k
        point = i * k + j  # row-major over the block, as block_offsets orders them
        for c in range(3):
            assert image[0, c, y, x] == 1000 * r + 100 * col + 4 * point + c
        for c in range(4):
            assert with_accumulation[0, c, y, x] == 1000 * r + 100 * col + 4 * point + c


def surface_guidance_inputs(latent_channels=8, rows=3, cols=4, seed=1):
    """A surface-guidance module with random weights everywhere, a decoded image and its guidance maps."""
    torch.manual_seed(seed)
    guidance_module = DecoderGuidance("rgb-depth-surface", latent_channels)
    for parameter in guidance_module.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    guidance = torch.rand(2, guidance_module.channels, rows, cols)
    decoded = torch.rand(2, 3, 8 * rows, 8 * cols)
    return guidance_module, guidance, decoded


def test_the_refiner_reads_the_sub_block_rays_accumulation():
    module, guidance, decoded = surface_guidance_inputs()
    accumulation_channels = [i for i in range(module.channels - module.surface_channels, module.channels) if i % 4 == 3]
    other = guidance.clone()
    other[:, accumulation_channels] = torch.rand_like(other[:, accumulation_channels])
    assert not torch.allclose(module.refine(decoded, guidance), module.refine(decoded, other))
    assert module.refiner[0].in_channels == 7  # decoded image, surface colours, surface accumulation


def test_a_checkpoint_of_the_earlier_refiner_loads_and_refines_exactly_as_it_did():
    module, guidance, decoded = surface_guidance_inputs()
    torch.manual_seed(2)
    width = module.refiner[0].out_channels
    first, last = torch.nn.Conv2d(6, width, 3, padding=1), torch.nn.Conv2d(width, 3, 3, padding=1)
    for parameter in [*first.parameters(), *last.parameters()]:
        torch.nn.init.normal_(parameter, std=0.2)
    state = {k: v for k, v in module.state_dict().items() if not k.startswith("refiner.")}
    state.update({"refiner.0.weight": first.weight, "refiner.0.bias": first.bias})
    state.update({"refiner.2.weight": last.weight, "refiner.2.bias": last.bias})
    module.load_state_dict({k: v.detach().clone() for k, v in state.items()})  # strict: every key maps
    # What the earlier refiner computed: decoded + conv(ReLU(conv([decoded, upsampled surface colours]))).
    colours = module.upsampled_surface_image(guidance, decoded.shape[-2:])
    expected = decoded + last(torch.relu(first(torch.cat([decoded, colours], dim=1))))
    torch.testing.assert_close(module.refine(decoded, guidance), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", GUIDED_KINDS)
def test_an_untrained_adapter_decodes_exactly_as_the_plain_decoder(kind):
    guided, plain = guided_model(kind), guided_model("none")
    # The adapter is initialised from a forked generator: with the same seed, every other tensor is the plain run's.
    plain_state = plain.state_dict()
    guided_state = {k: v for k, v in guided.state_dict().items() if not k.startswith("decoder_guidance.")}
    assert set(guided_state) == set(plain_state)
    for key, value in plain_state.items():
        assert not isinstance(value, torch.Tensor) or torch.equal(guided_state[key], value), key
    guided.eval()
    maps = rendered_maps(guided)
    # Guidance channels far from zero: only the adapter's zero-initialised last layer keeps them out.
    assert maps["rgb_nerf"].abs().sum() > 0
    torch.testing.assert_close(
        guided.decode_latent_map(guided.decoder_input_map(maps)), plain.decode_latent_map(maps["latent"])
    )


@pytest.mark.parametrize("kind", GUIDED_KINDS)
def test_patch_loss_with_guidance_reaches_the_latent_field_decoder_and_adapter_only(kind):
    model = guided_model(kind)
    model.train()
    _, losses, _ = model.train_step(joint_batch(with_depth=False))
    assert reached_groups(model, losses["patch_loss"]) == {"latent_field", "ae_decoder", "decoder_guidance"}
    # The adapter's last layer (zero at first) gets a gradient: its output moves the latent map the decoder sees.
    last = model.decoder_guidance.adapter[-1]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0
    if kind == SURFACE:  # and so does the refiner's correction, from the decoded image and the surface image
        correction = model.decoder_guidance.refiner[-1]
        assert correction.weight.grad is not None and correction.weight.grad.abs().sum() > 0
    # The guidance maps are detached: nothing of L_p flows into colour, density or the proposal networks.
    # Adapter and refiner are the guidance group, at its own rate; the decoder's group keeps the decoder alone.
    groups = model.get_param_groups()
    assert {id(p) for p in model.decoder_guidance.parameters()} == {id(p) for p in groups["decoder_guidance"]}
    assert {id(p) for p in groups["ae_decoder"]} == {id(p) for p in model.autoencoder.decoder_parameters()}


@pytest.mark.parametrize("kind", GUIDED_KINDS)
def test_one_pass_and_separate_passes_give_the_same_guided_patch_loss(kind):
    model = guided_model(kind)
    # A trained-looking adapter: non-zero last layer, so the guidance changes the decoded patch.
    torch.nn.init.normal_(model.decoder_guidance.adapter[-1].weight, std=0.1)
    if kind == SURFACE:
        torch.nn.init.normal_(model.decoder_guidance.refiner[-1].weight, std=0.1)
    for module in model.modules():
        if hasattr(module, "train_stratified"):
            module.train_stratified = False
    model.train()
    losses = {}
    for joint_pass in ("single", "separate"):
        model.config.joint_pass = joint_pass
        torch.manual_seed(5)
        _, step_losses, _ = model.train_step(joint_batch(with_depth=False))
        losses[joint_pass] = step_losses["patch_loss"].detach()
    torch.testing.assert_close(losses["single"], losses["separate"], rtol=1e-5, atol=1e-6)


def test_decoding_a_map_without_its_guidance_channels_says_how_to_build_it():
    model = guided_model("rgb")
    maps = rendered_maps(model)
    with pytest.raises(ValueError, match=r"takes 11 channels \(8 latent \+ 3 guidance.*decoder_input_map"):
        model.decode_latent_map(maps["latent"])
    with pytest.raises(KeyError, match="render the latent rays with their colour"):
        model.decoder_input_map({"latent": maps["latent"]})
    with pytest.raises(ValueError, match="--pipeline.model.decoder-guidance must be one of none, rgb, rgb-depth"):
        DecoderGuidance("colour", 8)  # type: ignore[arg-type]
    surface = guided_model(SURFACE)
    maps = rendered_maps(surface)
    without_surface = {key: value for key, value in maps.items() if key != "surface"}
    with pytest.raises(KeyError, match="lack 'surface'.*latent_ray_bundle"):
        surface.decoder_input_map(without_surface)
    rays = latent_ray_bundle(camera(), 0, 8, 16, 3, 4).flatten()
    rays.metadata.pop("pixel_axes")
    with pytest.raises(
        KeyError, match=r"latent rays made by latent_ray_bundle \(their metadata lacks \['pixel_axes'\]\)"
    ):
        surface.render_latents(rays, with_colour=True)


@pytest.mark.parametrize("kind", GUIDED_KINDS)
def test_fast_and_plain_inference_paths_decode_with_the_guidance(tmp_path, kind):
    model = guided_model(kind)
    torch.nn.init.normal_(model.decoder_guidance.adapter[-1].weight, std=0.1)
    if kind == SURFACE:
        torch.nn.init.normal_(model.decoder_guidance.refiner[-1].weight, std=0.1)
    model.eval()
    cam = camera(width=60, height=44)  # not multiples of 8: padded, decoded, cropped
    model.config.inference_path = "fast"
    fast = model.get_outputs_for_camera(cam)
    model.config.inference_path = "plain"
    plain = model.get_outputs_for_camera(cam)
    assert fast["rgb"].shape == (44, 60, 3)
    torch.testing.assert_close(fast["rgb"], plain["rgb"], atol=1e-5, rtol=1e-5)
    # The guidance moved the image: without the adapter's offset the decoded frame differs.
    low = model.render_latent_frame(cam)
    if kind == SURFACE:
        assert low["surface"].shape == (*low["latent"].shape[:2], 64)
    guidance_channels = model.decoder_guidance.channels
    unguided = model.decode_channels_first(
        torch.cat([low["latent"], torch.zeros(*low["latent"].shape[:2], guidance_channels)], -1).permute(2, 0, 1)[None]
    )
    with torch.no_grad():
        guided = model.decode_latent_frame(model.decoder_input_map(low))
    assert (guided - unguided[0]).abs().max() > 1e-4


@pytest.mark.parametrize("alignment, kind", [("grid", "rgb-depth"), ("any", "rgb-depth"), ("grid", SURFACE)])
def test_phase_c_trains_the_guided_decoder_on_guided_crops(scene, tmp_path, alignment, kind):
    config = tiny_config("relsnerf-r32", scene, tmp_path, steps=(1, 2, 2))
    config.pipeline.model.decoder_guidance = kind
    config.pipeline.distill_crop_alignment = alignment
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    pipeline, model = trainer.pipeline, trainer.pipeline.model
    last = model.decoder_guidance.adapter[-1].weight
    losses = phase_losses(trainer, range(3))
    assert losses[Phase.JOINT] >= {"patch_loss"}
    after_b = last.detach().clone()
    assert after_b.abs().sum() > 0  # phase B trained the adapter (it starts at zero)
    losses = phase_losses(trainer, range(3, 5))
    assert losses[Phase.DISTILL] == {"distill_real_loss", "distill_render_loss"}
    assert not torch.equal(last.detach(), after_b)  # and so did phase C
    if kind == SURFACE:
        assert torch.count_nonzero(model.decoder_guidance.refiner[-1].weight) > 0  # the refiner trains from zero too
    if alignment == "grid":
        maps = pipeline.distill_latents
        # 48x64 images: 8 latent + 5 guidance channels (+ 64 of the surface points)
        assert maps["train"][0].shape == (6, 8, 8 + model.decoder_guidance.channels)
        model.eval()
        model.proposal_sampler.set_anneal(1.0)  # as the maps were made (inference sampling)
        low = model.render_latent_frame(pipeline.datamanager.train_cameras[1:2])
        torch.testing.assert_close(maps["train"][1][..., 8:], model.decoder_input_map(low)[..., 8:])
    else:
        assert pipeline.distill_latents is None


def test_a_checkpoint_trained_without_guidance_loads_into_a_guided_run_and_decodes_as_before(scene, tmp_path, capsys):
    config = tiny_config("relsnerf-r32", scene, tmp_path / "plain", steps=(1, 1, 0))
    config.pipeline.model.decoder_guidance = "none"
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    state = {f"_model.{k}": v for k, v in trainer.pipeline.model.state_dict().items()}
    assert not any("decoder_guidance" in k for k in state)
    guided_config = tiny_config("relsnerf-r32", scene, tmp_path / "guided", steps=(1, 1, 0))
    guided_config.pipeline.model.decoder_guidance = "rgb-depth"
    guided = guided_config.setup(local_rank=0, world_size=1)
    guided.setup()
    capsys.readouterr()
    guided.pipeline.load_pipeline(state, step=1)
    assert "trained without decoder guidance" in " ".join(capsys.readouterr().out.split())
    plain_model, guided_model_ = trainer.pipeline.model, guided.pipeline.model
    plain_model.eval()
    guided_model_.eval()
    cam = camera()
    with torch.no_grad():
        expected = plain_model.get_outputs_for_camera(cam)["rgb"]
        got = guided_model_.get_outputs_for_camera(cam)["rgb"]
    torch.testing.assert_close(got, expected)
    assert math.isfinite(float(got.mean()))


def test_a_run_of_the_earlier_refiner_loads_through_the_pipeline_computing_the_same_correction(scene, tmp_path, capsys):
    config = tiny_config("relsnerf-r32", scene, tmp_path, steps=(1, 1, 0))
    config.pipeline.model.decoder_guidance = "rgb-depth-surface"
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    module = trainer.pipeline.model.decoder_guidance
    width = module.refiner[0].out_channels
    torch.manual_seed(3)
    first, last = torch.nn.Conv2d(6, width, 3, padding=1), torch.nn.Conv2d(width, 3, 3, padding=1)
    own = trainer.pipeline.model.state_dict()
    state = {f"_model.{k}": v.clone() if torch.is_tensor(v) else v for k, v in own.items() if ".refiner." not in k}
    for name, layer in (("0", first), ("2", last)):
        state[f"_model.decoder_guidance.refiner.{name}.weight"] = layer.weight.detach().clone()
        state[f"_model.decoder_guidance.refiner.{name}.bias"] = layer.bias.detach().clone()
    capsys.readouterr()
    trainer.pipeline.load_pipeline(state, step=1)
    assert "refiner has the earlier layout" in " ".join(capsys.readouterr().out.split())
    guidance = torch.rand(1, module.channels, 2, 3)
    decoded = torch.rand(1, 3, 16, 24)
    colours = module.upsampled_surface_image(guidance, decoded.shape[-2:])
    with torch.no_grad():
        expected = decoded + last(torch.relu(first(torch.cat([decoded, colours], dim=1))))
        torch.testing.assert_close(module.refine(decoded, guidance), expected, atol=1e-5, rtol=1e-5)


def test_the_recipe_chooses_the_guidance_unless_the_flag_is_set():
    config = copy.deepcopy(relsnerf_r32.config.pipeline.model)
    assert config.decoder_guidance is None
    assert config.decoder_guidance_kind() == "rgb-depth"  # the 'relsnerf' recipe
    config.recipe = "paper"
    assert config.decoder_guidance_kind() == "none"  # the paper's decoder input, the latent map alone
    config.decoder_guidance = "rgb"
    assert config.decoder_guidance_kind() == "rgb"


def checkpoint_in_phase_b(scene, tmp_path, guidance=None):
    """A tiny relsnerf-r32 run (A/B/C = 1/3/2 steps) trained 3 steps, saved at step 2 (phase B): (trainer, path)."""
    config = tiny_config("relsnerf-r32", scene, tmp_path / "old", steps=(1, 3, 2))
    if guidance is not None:
        config.pipeline.model.decoder_guidance = guidance
    config.save_only_latest_checkpoint = False
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    for step in range(3):
        trainer.train_iteration(step)
    trainer.save_checkpoint(2)
    return trainer, trainer.checkpoint_dir / "step-000000002.ckpt"


def test_a_run_trained_without_guidance_resumes_with_it_and_trains_the_adapter(scene, tmp_path, capsys):
    first, path = checkpoint_in_phase_b(scene, tmp_path, guidance="none")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    decoder_params = len(saved["optimizers"]["ae_decoder"]["param_groups"][0]["params"])

    resumed_config = tiny_config("relsnerf-r32", scene, tmp_path / "new", steps=(1, 3, 2))
    resumed_config.load_dir = first.checkpoint_dir
    resumed = resumed_config.setup(local_rank=0, world_size=1)
    resumed.setup()
    assert resumed._start_step == 3
    assert "trained without decoder guidance" in " ".join(capsys.readouterr().out.split())
    assert len(resumed.optimizers.optimizers["ae_decoder"].param_groups[0]["params"]) == decoder_params
    # The adapter's group is new to the checkpoint: fresh moments, and the rate of the step it resumes at (phase B),
    # not that of a scheduler counting from step 0 (phase A's 0).
    guidance = resumed.optimizers.optimizers["decoder_guidance"]
    assert len(guidance.param_groups[0]["params"]) == len(list(resumed.pipeline.model.decoder_guidance.parameters()))
    assert not guidance.state
    assert guidance.param_groups[0]["lr"] == pytest.approx(GUIDANCE_LR)
    last = resumed.pipeline.model.decoder_guidance.adapter[-1].weight
    assert torch.count_nonzero(last) == 0
    resumed.pipeline.train()
    for step in range(3, 6):  # the rest of phase B, then phase C
        resumed.train_iteration(step)
    assert torch.count_nonzero(last) > 0  # the adapter trains from its zero start


def test_a_checkpoint_with_the_adapter_in_the_decoder_group_resumes_with_its_moments_in_the_guidance_group(
    scene, tmp_path
):
    # Older versions trained the adapter in the decoder's group, after the decoder's parameters.
    first, path = checkpoint_in_phase_b(scene, tmp_path)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    decoder, guidance = saved["optimizers"]["ae_decoder"], saved["optimizers"].pop("decoder_guidance")
    saved["schedulers"].pop("decoder_guidance")
    n_decoder = len(decoder["param_groups"][0]["params"])
    n_guidance = len(guidance["param_groups"][0]["params"])
    decoder["param_groups"][0]["params"] = list(range(n_decoder + n_guidance))
    decoder["state"].update({n_decoder + i: state for i, state in guidance["state"].items()})
    torch.save(saved, path)

    resumed_config = tiny_config("relsnerf-r32", scene, tmp_path / "new", steps=(1, 3, 2))
    resumed_config.load_dir = first.checkpoint_dir
    resumed = resumed_config.setup(local_rank=0, world_size=1)
    resumed.setup()
    optimizers = resumed.optimizers.optimizers
    assert len(optimizers["ae_decoder"].param_groups[0]["params"]) == n_decoder
    moved = optimizers["decoder_guidance"]
    assert moved.param_groups[0]["lr"] == pytest.approx(GUIDANCE_LR)
    for i, param in enumerate(moved.param_groups[0]["params"]):
        torch.testing.assert_close(moved.state[param]["exp_avg"], guidance["state"][i]["exp_avg"])
    for i, param in enumerate(optimizers["ae_decoder"].param_groups[0]["params"]):
        torch.testing.assert_close(optimizers["ae_decoder"].state[param]["exp_avg"], decoder["state"][i]["exp_avg"])
    resumed.pipeline.train()
    for step in range(3, 6):
        resumed.train_iteration(step)


def test_surface_samples_below_one_are_refused_with_the_flag_named():
    with pytest.raises(ValueError, match="--pipeline.model.surface-samples must be at least 1.*got 0"):
        guided_model(SURFACE, surface_samples=0)


@pytest.mark.parametrize("count, per_side", [(1, 4), (3, 4), (16, 4), (3, 2)])
def test_each_sub_block_ray_composites_the_configured_number_of_the_latent_rays_samples(count, per_side):
    model = guided_model(SURFACE, surface_rays_per_side=per_side)
    model.eval()
    model.config.surface_samples = count  # 16: all of the tiny model's samples
    inputs = model.decoder_input_map(rendered_maps(model))
    assert inputs.shape == (3, 4, 8 + 5 + 4 * per_side**2)
    torch.testing.assert_close(
        inputs[..., 13:], reference_surface_channels(model, camera(), 3, 4, count, per_side), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("per_side", [3, 16])
def test_sub_block_rays_that_do_not_tile_the_block_are_refused_with_the_flag_named(per_side):
    with pytest.raises(ValueError, match=f"--pipeline.model.surface-rays-per-side must divide.*got {per_side}"):
        guided_model(SURFACE, surface_rays_per_side=per_side)


def test_surface_guidance_refuses_cameras_that_are_not_pinhole_before_training(scene, tmp_path):
    fisheye = tmp_path / "fisheye"
    shutil.copytree(scene, fisheye)
    transforms = json.loads((fisheye / "transforms.json").read_text())
    transforms["camera_model"] = "OPENCV_FISHEYE"
    (fisheye / "transforms.json").write_text(json.dumps(transforms))
    config = tiny_config("relsnerf-r32", fisheye, tmp_path / "out", (1, 1, 0))
    config.pipeline.model.decoder_guidance = SURFACE
    trainer = config.setup(local_rank=0, world_size=1)
    with pytest.raises(
        ValueError, match="sub-block rays for pinhole cameras.*include FISHEYE.*decoder-guidance rgb-depth"
    ):
        trainer.setup()
    config.pipeline.model.decoder_guidance = "rgb-depth"  # the other kinds need no pixel axes
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    assert trainer.pipeline.relsnerf_model.decoder_guidance.kind == "rgb-depth"


def test_a_checkpoints_guidance_group_of_another_size_resumes_with_fresh_moments(capsys):
    def adam(count, lr):
        params = [torch.nn.Parameter(torch.ones(2)) for _ in range(count)]
        optimizer = torch.optim.Adam(params, lr=lr)
        sum(p.sum() for p in params).backward()
        optimizer.step()  # moments to carry
        return optimizer

    now = {"decoder_guidance": torch.optim.Adam([torch.nn.Parameter(torch.ones(2)) for _ in range(12)], lr=1e-3)}
    earlier = {"decoder_guidance": adam(10, 5e-4).state_dict()}
    restart_changed_group(earlier, now, "decoder_guidance")
    restarted = earlier["decoder_guidance"]
    assert restarted["state"] == {} and restarted["param_groups"][0]["params"] == list(range(12))
    assert restarted["param_groups"][0]["lr"] == 1e-3
    now["decoder_guidance"].load_state_dict(restarted)  # what nerfstudio's load_optimizers then does
    printed = " ".join(capsys.readouterr().out.split())
    assert "optimizer group 'decoder_guidance' holds 10 parameters, this run's 12" in printed
    assert "fresh Adam moments" in printed
    same = {"decoder_guidance": adam(12, 5e-4).state_dict()}
    kept = copy.deepcopy(same)
    restart_changed_group(same, now, "decoder_guidance")
    assert same["decoder_guidance"]["param_groups"] == kept["decoder_guidance"]["param_groups"]
    assert same["decoder_guidance"]["state"].keys() == kept["decoder_guidance"]["state"].keys() != set()
