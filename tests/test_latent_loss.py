"""L_z (the encoder's latents as targets of the colour rays' latents), the loss recipes, and phase C's latent maps."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from nerfstudio.data.scene_box import SceneBox

from relsnerf_ns.data.relsnerf_datamanager import aligned_crop
from relsnerf_ns.model.latent_targets import (
    LatentTargets,
    centred_encoding,
    encode_images,
    offsets_within,
    phase_averaged_encoding,
    shifted_by,
    target_bytes,
)
from relsnerf_ns.relsnerf_config import relsnerf_r32
from relsnerf_ns.rendering.latent_rays import latent_ray_bundle
from relsnerf_ns.training.phases import Phase

from .conftest import camera, phase_losses, tiny_config
from .scene_writers import write_llff_scene


@pytest.fixture(scope="module")
def llff_scene(tmp_path_factory):
    """A procedural LLFF scene with sparse COLMAP points (40x30 images)."""
    root = tmp_path_factory.mktemp("llff_latent")
    write_llff_scene(root)
    return root


def ramp_map(rows: int, cols: int, channels: int = 3) -> torch.Tensor:
    """Channel c of latent pixel (i, j) is (c + 1) * i + 10 * j: linear, so bilinear sampling is exact."""
    i = torch.arange(rows, dtype=torch.float32)[:, None]
    j = torch.arange(cols, dtype=torch.float32)[None, :]
    return torch.stack([(c + 1) * i + 10 * j for c in range(channels)])


def test_targets_are_bilinear_between_block_centres_and_clamped_at_the_borders():
    targets = LatentTargets([ramp_map(6, 8), ramp_map(4, 5) + 100.0])
    # Pixel (y, x) has centre (y + 0.5, x + 0.5); latent pixel i's block centre is pixel coordinate 8i + 4.
    pixels = torch.tensor([[0, 19, 27], [0, 20, 28], [1, 11, 3], [0, 0, 0], [1, 31, 39], [0, 47, 63]])
    got = targets.at_pixels(pixels)
    u = (pixels[:, 1].float() + 0.5) / 8 - 0.5
    v = (pixels[:, 2].float() + 0.5) / 8 - 0.5
    rows = torch.tensor([6, 6, 4, 6, 4, 6]).float()
    cols = torch.tensor([8, 8, 5, 8, 5, 8]).float()
    u = torch.minimum(u.clamp_min(0), rows - 1)
    v = torch.minimum(v.clamp_min(0), cols - 1)
    offset = torch.where(pixels[:, 0] == 1, 100.0, 0.0)
    for c in range(3):
        torch.testing.assert_close(got[:, c], (c + 1) * u + 10 * v + offset)
    # The second image is smaller: its rays clamp to its own last row and column, not the padding.
    assert got[4, 0] == pytest.approx(1 * 3 + 10 * 4 + 100.0)


def test_targets_normalise_each_channel_by_its_spread():
    small, large = torch.randn(1, 4, 4) * 0.01, torch.randn(1, 4, 4) * 10.0
    targets = LatentTargets([torch.cat([small, large])])
    torch.testing.assert_close(targets.std, torch.stack([small.std(), large.std()]))
    error = torch.zeros(16, 2)
    error[:, 0] = small.std()  # one spread off in channel 0 ...
    error[:, 1] = large.std()  # ... and in channel 1 weigh alike
    assert targets.normalised_mse(error, torch.zeros(16, 2)) == pytest.approx(1.0, rel=1e-5)


def test_encode_images_pads_sides_to_multiples_of_8_by_replication():
    seen = []

    def encode(batch):
        seen.append(batch)
        return batch[:, :, ::8, ::8]

    image = torch.rand(13, 10, 3)
    (latent,) = encode_images(encode, [image], "cpu")
    assert seen[0].shape == (1, 3, 16, 16) and latent.shape == (3, 2, 2)
    torch.testing.assert_close(seen[0][0, :, 15, 9], image[12, 9])  # bottom rows copy the last row
    torch.testing.assert_close(seen[0][0, :, 3, 15], image[3, 9])  # right columns copy the last column


def block_means(batch):
    """A stand-in encoder: each 8x8 block's mean (one latent pixel per block, as the real encoders)."""
    return F.avg_pool2d(batch, 8)


def test_phase_averaged_targets_stay_aligned_with_the_block_centres():
    # A ramp's block means follow the ramp exactly, whatever the grid's offset, once resampled at the original block
    # centres: the average over offsets equals the plain encoding away from the replicated edges. A resampling at the
    # wrong place (or in the wrong direction) would shift every target by up to half a block.
    ramp = torch.arange(64.0)[None, None, None, :].expand(1, 1, 24, 64).contiguous()
    plain = block_means(ramp)
    for phases in (2, 4):
        averaged = phase_averaged_encoding(block_means, ramp, phases)
        assert averaged.shape == plain.shape
        torch.testing.assert_close(averaged[..., 1:-1], plain[..., 1:-1])
    torch.testing.assert_close(phase_averaged_encoding(block_means, ramp, 1), plain)
    assert torch.equal(shifted_by(ramp, 0, 3)[..., 10], ramp[..., 7])  # content moves right by dx


def test_phase_averaged_targets_smooth_what_the_grid_offset_changes():
    # A single bright pixel belongs to one block in the plain encoding; averaged over grid offsets its energy spreads
    # to the neighbouring latent pixels, the same for every view whatever its offset.
    spike = torch.zeros(1, 1, 32, 32)
    spike[..., 13, 13] = 64.0
    plain, averaged = block_means(spike), phase_averaged_encoding(block_means, spike, 4)
    assert (plain > 0).sum() == 1 and (averaged > 0).sum() > 1
    torch.testing.assert_close(averaged.sum(), plain.sum())  # block means of shifted copies keep the total
    image = torch.rand(16, 24, 3)
    (four,) = encode_images(block_means, [image], "cpu", phases=4)
    (one,) = encode_images(block_means, [image], "cpu")
    assert four.shape == one.shape == (3, 2, 3) and not torch.allclose(four, one)


def test_centred_encoding_holds_the_block_centred_every_8_over_p_pixels():
    # Entry (m, n) of the P-times finer map is the mean of the 8x8 block of pixels (8m/P ... 8m/P + 7, same for n),
    # the block centred at pixel coordinate 4 + 8m/P: checked against every such block of a random image away from
    # the replicated right and bottom edges.
    image = torch.rand(1, 2, 32, 40)
    for offsets in (2, 4, 8):
        fine = centred_encoding(block_means, image, offsets)
        assert fine.shape == (1, 2, 4 * offsets, 5 * offsets)
        spacing = 8 // offsets
        blocks = F.avg_pool2d(image, 8, stride=spacing)  # the block starting at every multiple of the spacing
        rows, cols = blocks.shape[-2:]
        torch.testing.assert_close(fine[..., :rows, :cols], blocks)
        # Every P-th entry is the plain encoding.
        torch.testing.assert_close(fine[..., ::offsets, ::offsets], block_means(image))
    torch.testing.assert_close(centred_encoding(block_means, image, 1), block_means(image))


def test_centred_targets_give_each_ray_the_block_centred_on_its_pixel():
    # With P = 8 a ray through pixel y (centre y + 0.5) lies halfway between the blocks centred at coordinates y and
    # y + 1, i.e. covering pixels y - 4 ... y + 3 and y - 3 ... y + 4: its target is the mean of those two block
    # means (per axis). Plain targets interpolate between the blocks of the fixed grid instead, which for a detailed
    # image is a different, blurred value.
    image = torch.rand(10, 12, 3).repeat_interleave(4, 0).repeat_interleave(4, 1)  # detail of 4-pixel tiles
    (fine,) = encode_images(block_means, [image], "cpu", offsets=8)
    (plain,) = encode_images(block_means, [image], "cpu")
    centred, interpolated = LatentTargets([fine], offsets=8), LatentTargets([plain])
    assert centred.maps.dtype == torch.float16 and fine.shape == (3, 40, 48)
    ys, xs = torch.meshgrid(torch.arange(4, 32), torch.arange(4, 40), indexing="ij")
    pixels = torch.stack([torch.zeros_like(ys), ys, xs], -1).reshape(-1, 3)
    blocks = F.avg_pool2d(image.permute(2, 0, 1)[None], 8, stride=1)[0]  # block starting at (r, c), 8x8
    window = 0.25 * (blocks[:, :-1, :-1] + blocks[:, 1:, :-1] + blocks[:, :-1, 1:] + blocks[:, 1:, 1:])
    expected = window[:, pixels[:, 1] - 4, pixels[:, 2] - 4].T  # pixel y: blocks starting at y - 4 and y - 3
    torch.testing.assert_close(centred.at_pixels(pixels), expected, atol=2e-3, rtol=0)
    assert (interpolated.at_pixels(pixels) - expected).abs().mean() > 10 * 2e-3
    # Statistics come from the block grid itself, so both kinds normalise alike.
    torch.testing.assert_close(centred.std, interpolated.std, atol=2e-3, rtol=0)


def test_latent_target_offsets_not_dividing_8_or_combined_with_phases_is_an_error_naming_the_flags():
    scene_box = SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    config = copy.deepcopy(relsnerf_r32.config.pipeline.model)
    config.latent_target_offsets = 3
    with pytest.raises(ValueError, match=r"--pipeline.model.latent-target-offsets must be one of 1, 2, 4, 8 .*got 3"):
        config.setup(scene_box=scene_box, num_train_data=2, metadata={}, device="cpu")
    config.latent_target_offsets, config.latent_target_phases = 2, 4
    with pytest.raises(ValueError, match=r"latent-target-offsets .*latent-target-phases .*set one"):
        config.setup(scene_box=scene_box, num_train_data=2, metadata={}, device="cpu")
    with pytest.raises(ValueError, match="not both"):
        encode_images(block_means, [torch.rand(8, 8, 3)], "cpu", phases=2, offsets=2)


def test_latent_target_phases_outside_1_to_8_is_an_error_naming_the_flag():
    config = copy.deepcopy(relsnerf_r32.config.pipeline.model)
    config.latent_target_phases = 0
    scene_box = SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"--pipeline.model.latent-target-phases must be 1 .* to 8 .*got 0"):
        config.setup(scene_box=scene_box, num_train_data=2, metadata={}, device="cpu")


def test_latent_loss_reaches_only_the_latent_field(model):
    model.train()
    cam = camera()
    bundle = cam.generate_rays(camera_indices=0, keep_shape=False)
    rays = bundle[torch.arange(0, 64 * 48, 37)]
    pixels = torch.stack(torch.meshgrid(torch.arange(48), torch.arange(64), indexing="ij"), -1).reshape(-1, 2)
    indices = torch.cat([torch.zeros(len(pixels), 1, dtype=torch.long), pixels], dim=1)[torch.arange(0, 64 * 48, 37)]
    model.latent_targets = LatentTargets([torch.randn(8, 6, 8)])
    outputs = model(rays, latent=True)
    assert outputs["latent"].shape == (len(rays), 8)
    batch = {"image": torch.rand(len(rays), 3), "indices": indices}
    metrics = model.get_metrics_dict(outputs, batch)
    loss = model.get_loss_dict(outputs, batch, metrics)["latent_loss"]
    assert loss > 0
    loss.backward()
    groups = model.get_param_groups()
    reached = {
        name for name, params in groups.items() if any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    }
    assert reached == {"latent_field"}


def test_no_latent_loss_without_targets_or_with_weight_zero(model):
    model.train()
    rays = camera().generate_rays(camera_indices=0, keep_shape=False)[:32]
    batch = {"image": torch.rand(32, 3), "indices": torch.zeros(32, 3, dtype=torch.long)}
    outputs = model(rays, latent=True)
    assert "latent_loss" not in model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch))
    model.latent_targets = LatentTargets([torch.randn(8, 6, 8)])
    model.config.latent_loss_mult = 0.0
    assert "latent_loss" not in model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch))
    model.eval()
    with pytest.raises(RuntimeError, match="training output"):
        model(rays, latent=True)


def test_recipes_set_the_loss_weights_and_flags_override_them():
    config = copy.deepcopy(relsnerf_r32.config.pipeline.model)
    assert config.recipe == "relsnerf"
    assert (config.depth_loss_weight(), config.latent_loss_weight()) == (0.0, 1.0)
    assert config.nerf_tenfold_decay_every() == 20000
    config.recipe = "paper"
    assert (config.depth_loss_weight(), config.latent_loss_weight()) == (0.1, 0.0)
    assert config.nerf_tenfold_decay_every() == 10000
    config.depth_loss_mult, config.latent_loss_mult = 0.01, 0.5
    assert (config.depth_loss_weight(), config.latent_loss_weight()) == (0.01, 0.5)


def test_default_recipe_trains_latent_loss_and_no_depth_loss_with_sparse_depth(llff_scene, tmp_path, capsys):
    config = tiny_config("relsnerf-r32", llff_scene, tmp_path, steps=(2, 2, 1))
    config.pipeline.datamanager.dataparser = _llff(llff_scene)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    printed = " ".join(capsys.readouterr().out.split())
    assert printed.count("DS-NeRF depth loss off") == 1 and "'relsnerf' recipe leaves it off" in printed, printed
    assert trainer.pipeline.datamanager.sparse_depth is None
    losses = phase_losses(trainer, range(4))
    assert "latent_loss" in losses[Phase.JOINT] and "depth_loss" not in losses[Phase.JOINT]
    printed = " ".join(capsys.readouterr().out.split())
    assert printed.count("Latent loss L_z on") == 1, printed
    targets = trainer.pipeline.model.latent_targets
    images = trainer.pipeline.datamanager.train_images
    assert targets.maps.shape[0] == len(images) and targets.channels == 8
    assert "centred every 1 pixel)" in printed  # the default: the block centred on each ray's pixel
    assert targets.offsets == 8 and targets.maps.dtype == torch.float16


def test_centred_latent_targets_are_built_at_phase_b_and_said(llff_scene, tmp_path, capsys):
    config = tiny_config("relsnerf-r32", llff_scene, tmp_path, steps=(2, 2, 1))
    config.pipeline.datamanager.dataparser = _llff(llff_scene)
    config.pipeline.model.latent_target_offsets = 4
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    losses = phase_losses(trainer, range(4))
    assert "latent_loss" in losses[Phase.JOINT]
    printed = " ".join(capsys.readouterr().out.split())
    assert "centred every 2 pixels" in printed, printed
    assert "L_z targets: encoding the training images (16 encoder passes each)" in printed
    targets = trainer.pipeline.model.latent_targets
    height, width = trainer.pipeline.datamanager.train_images[0].shape[:2]
    assert targets.offsets == 4 and targets.maps.shape[1:3] == (4 * -(-height // 8), 4 * -(-width // 8))


def test_centred_targets_over_the_memory_budget_use_fewer_offsets_and_say_so(llff_scene, tmp_path, capsys):
    config = tiny_config("relsnerf-r32", llff_scene, tmp_path, steps=(2, 2, 1))
    config.pipeline.datamanager.dataparser = _llff(llff_scene)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    images = trainer.pipeline.datamanager.train_images
    sizes = [tuple(image.shape[:2]) for image in images]
    # A budget between the sizes of P = 2 and P = 4: P = 2 is what fits.
    budget = (target_bytes(sizes, 8, 2) + target_bytes(sizes, 8, 4)) / 2
    trainer.pipeline.relsnerf_model.config.latent_target_max_gib = budget / 2**30
    phase_losses(trainer, range(4))
    printed = " ".join(capsys.readouterr().out.split())
    assert printed.count("L_z targets centred every 4 pixels, not every 1") == 1, printed
    assert "--pipeline.model.latent-target-max-gib" in printed
    assert trainer.pipeline.model.latent_targets.offsets == 2


def test_target_memory_and_the_offsets_that_fit():
    sizes = [(30, 40), (16, 16)]  # 4 x 5 + 2 x 2 = 24 blocks
    assert target_bytes(sizes, 8, 1) == 24 * 8 * 4  # float32 plain maps
    assert target_bytes(sizes, 8, 8) == 24 * 64 * 8 * 2  # float16 centred maps
    assert offsets_within(sizes, 8, 8, max_bytes=1e9) == 8
    assert offsets_within(sizes, 8, 8, max_bytes=target_bytes(sizes, 8, 4)) == 4
    assert offsets_within(sizes, 8, 4, max_bytes=1e9) == 4  # never more than asked
    assert offsets_within(sizes, 8, 8, max_bytes=0) == 1  # plain targets whatever the budget


def test_paper_recipe_trains_depth_loss_and_no_latent_loss(llff_scene, tmp_path, capsys):
    config = tiny_config("relsnerf-r32", llff_scene, tmp_path, steps=(2, 2, 1))
    config.pipeline.datamanager.dataparser = _llff(llff_scene)
    config.pipeline.model.recipe = "paper"
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    assert "DS-NeRF depth loss on" in " ".join(capsys.readouterr().out.split())
    losses = phase_losses(trainer, range(4))
    assert "depth_loss" in losses[Phase.JOINT] and "latent_loss" not in losses[Phase.JOINT]
    assert trainer.pipeline.model.latent_targets is None
    # The recipe also sets the NeRF's phase-B rate (the paper's period; the registered config's is None).
    for group in ("proposal_networks", "fields", "latent_field"):
        assert trainer.optimizers.config[group]["scheduler"].phase_b.tenfold_decay_every == 10000
        assert config.optimizers[group]["scheduler"].phase_b.tenfold_decay_every is None


def test_latent_loss_is_off_with_one_message_when_the_encoder_never_trained(scene, tmp_path, capsys):
    config = tiny_config("relsnerf-r32", scene, tmp_path, steps=(0, 3, 0))  # R32 is random; phase A skipped
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    losses = phase_losses(trainer, range(3))
    assert "latent_loss" not in losses[Phase.JOINT]
    printed = " ".join(capsys.readouterr().out.split())
    assert printed.count("Latent loss L_z off: the encoder is neither pretrained nor trained in phase A") == 1


def test_phase_c_crops_the_latent_maps_that_inference_renders(scene, tmp_path):
    config = tiny_config("relsnerf-r32", scene, tmp_path, steps=(1, 2, 2))
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    phase_losses(trainer, range(4))
    pipeline, model = trainer.pipeline, trainer.pipeline.model
    latents = pipeline.distill_latents
    cameras = pipeline.datamanager.train_cameras
    assert len(latents["train"]) == len(cameras) and len(latents["renders"]) == 3
    # 48x64 images; 8 latent channels, then the 5 channels that guide the decoder (colour, log depth, accumulation)
    assert latents["train"][0].shape == (6, 8, 8 + 5)
    # The map of a camera equals the latents of the rays through its blocks, rendered directly; a crop of it is
    # the latent of that crop's blocks.
    model.eval()
    with torch.no_grad():
        direct = model.render_latents(latent_ray_bundle(cameras, 1, 16, 24, 2, 3).flatten())["latent"]
    torch.testing.assert_close(latents["train"][1][2:4, 3:6, :8].reshape(6, -1), direct, atol=1e-5, rtol=1e-5)
    torch.manual_seed(3)
    image, latent = aligned_crop(pipeline.datamanager.train_images[1], latents["train"][1], 32)
    assert image.shape == (3, 32, 32) and latent.shape == (4, 4, 8 + 5)
    torch.manual_seed(3)
    top = 8 * int(torch.randint((48 - 32) // 8 + 1, (1,)))
    left = 8 * int(torch.randint((64 - 32) // 8 + 1, (1,)))
    torch.testing.assert_close(
        image, pipeline.datamanager.train_images[1][top : top + 32, left : left + 32].permute(2, 0, 1)
    )
    torch.testing.assert_close(latent, latents["train"][1][top // 8 : top // 8 + 4, left // 8 : left // 8 + 4])


def test_phase_c_crops_anywhere_render_the_latents_of_their_blocks(scene, tmp_path):
    config = tiny_config("relsnerf-r32", scene, tmp_path, steps=(1, 2, 2))
    config.pipeline.distill_crop_alignment = "any"
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    losses = phase_losses(trainer, range(5))
    assert losses[Phase.DISTILL] == {"distill_real_loss", "distill_render_loss"}
    pipeline, model = trainer.pipeline, trainer.pipeline.model
    assert pipeline.distill_latents is None  # no maps cached: each step renders its crops' rays
    cameras, images = pipeline.datamanager.train_cameras, pipeline.datamanager.train_images
    renders = pipeline.distill_renders
    offsets = set()
    for seed in range(6):
        torch.manual_seed(seed)
        batch = pipeline._next_distill_batch()
        # 48x64 images; 8 latent + 5 guidance channels
        assert batch.latents.shape == (3, 6, 6, 8 + 5) and batch.targets.shape == (3, 3, 48, 48)
        # The same draws: the real image, two renders, then each crop's top and left at any pixel.
        torch.manual_seed(seed)
        picks = [(cameras, images, int(torch.randint(len(images), (1,))))]
        picks += [(renders.cameras, renders.images, int(torch.randint(len(renders.images), (1,)))) for _ in range(2)]
        model.eval()
        for k, (cams, imgs, index) in enumerate(picks):
            top = int(torch.randint(imgs[index].shape[0] - 48 + 1, (1,)))
            left = int(torch.randint(imgs[index].shape[1] - 48 + 1, (1,)))
            offsets.add((top % 8, left % 8))
            torch.testing.assert_close(
                batch.targets[k], imgs[index][top : top + 48, left : left + 48, :3].permute(2, 0, 1)
            )
            with torch.no_grad():
                bundle = latent_ray_bundle(cams, index, top, left, 6, 6).flatten()
                direct = model.decoder_input_map(model.render_latents(bundle, with_colour=True))
            torch.testing.assert_close(batch.latents[k].reshape(36, -1), direct, atol=1e-5, rtol=1e-5)
    assert len(offsets) > 1 and offsets != {(0, 0)}  # crops start inside blocks, not only on the grid


def _llff(root):
    from relsnerf_ns.data.llff_dataparser import LLFFDataParserConfig

    return LLFFDataParserConfig(data=root, downscale_factor=1)
