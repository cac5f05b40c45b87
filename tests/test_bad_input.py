"""Awkward and broken input: odd image sizes and formats, unreadable files and scene files, few cameras, no sparse
depth, splits that hold no image out, start-ups that fail."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from PIL import Image

from relsnerf_ns.autoencoders.weights import PretrainedWeightsError
from relsnerf_ns.data.image_files import ImageFileError, read_image
from relsnerf_ns.data.relsnerf_datamanager import (
    ImageSizeError,
    NoEvaluationImagesError,
    RelsNerfDataManagerConfig,
    SceneFileError,
    aligned_crop,
    blend_alpha,
    random_patch,
)
from relsnerf_ns.demo_scene import demo_camera_poses, render_view, write_demo_scene
from relsnerf_ns.training.phases import Phase

from .conftest import tiny_config

MAGENTA = np.array([255, 0, 255], dtype=np.uint8)  # what transparent pixels hold: must never reach a target


def save_as(rgb: np.ndarray, mode: str, path: Path) -> None:
    """An [H, W, 3] uint8 image saved in a given PIL mode; RGBA is transparent (and magenta) on its left third."""
    image = Image.fromarray(rgb)
    if mode == "RGBA":
        rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
        third = rgb.shape[1] // 3
        rgba[:, :third, :3], rgba[:, :third, 3] = MAGENTA, 0
        image = Image.fromarray(rgba)
    elif mode == "I;16":
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(gray)
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path)


def write_scene(root: Path, frames: List[Tuple[int, int, str]]) -> Path:
    """A nerfstudio-format demo scene whose frames each have their own size (and intrinsics) and pixel format."""
    (root / "images").mkdir(parents=True)
    entries = []
    for index, ((width, height, mode), c2w) in enumerate(zip(frames, demo_camera_poses(len(frames)))):
        focal = 0.5 * width / np.tan(0.5 * np.deg2rad(50.0))
        rgb = (render_view(c2w, width, height, focal) * 255 + 0.5).astype(np.uint8)
        name = f"images/frame_{index:04d}.png"
        save_as(rgb, mode, root / name)
        entries.append(
            {"file_path": name, "transform_matrix": c2w.tolist(), "w": width, "h": height}
            | {"fl_x": focal, "fl_y": focal, "cx": width / 2, "cy": height / 2}
        )
    (root / "transforms.json").write_text(json.dumps({"camera_model": "OPENCV", "frames": entries}))
    return root


def flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def datamanager_config(scene: Path, **overrides) -> RelsNerfDataManagerConfig:
    config = tiny_config("relsnerf-r32", scene, scene.parent / "out").pipeline.datamanager
    config.dataparser = NerfstudioDataParserConfig(data=scene, eval_mode="all")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


# ---------------------------------------------------------------------------------------------------- pixel formats
def test_every_pixel_format_is_read_as_rgb_or_rgba(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    for mode in ("L", "LA", "P", "I;16", "CMYK", "1", "RGBA"):
        save_as(rgb, mode, tmp_path / f"{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}")
    read = {p.stem: read_image(p) for p in tmp_path.iterdir()}
    assert all(a.dtype == np.uint8 for a in read.values())
    assert read["L"].shape == (10, 12, 3) and (read["L"] == gray[..., None]).all()  # gray in all three channels
    assert read["LA"].shape == (10, 12, 4) and (read["LA"][..., :3] == gray[..., None]).all()
    assert read["I16"].shape == (10, 12, 3) and (read["I16"][..., 0] == gray).all()  # 16 bits rescaled, not wrapped
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).convert("RGB")
    assert (read["P"] == np.asarray(palette)).all()  # colours, not palette indices
    assert read["CMYK"].shape == (10, 12, 3) and np.abs(read["CMYK"].astype(int) - rgb).mean() < 12
    assert read["1"].shape == (10, 12, 3) and set(np.unique(read["1"])) <= {0, 255}
    assert read["RGBA"].shape == (10, 12, 4) and (read["RGBA"][:, :4, 3] == 0).all()
    # A scene mixing RGB and RGBA gets an opaque alpha channel on its RGB images (batches need one channel count).
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    with_alpha = read_image(tmp_path / "plain.png", alpha=True)
    assert with_alpha.shape == (10, 12, 4) and (with_alpha[..., 3] == 255).all() and (with_alpha[..., :3] == rgb).all()


def test_rgba_crops_are_blended_with_the_background():
    pixels = torch.tensor([[[1.0, 0.0, 1.0, 0.0], [0.2, 0.4, 0.6, 1.0], [1.0, 1.0, 1.0, 0.5]]])
    torch.testing.assert_close(blend_alpha(pixels), torch.tensor([[[0.0, 0.0, 0.0], [0.2, 0.4, 0.6], [0.5] * 3]]))
    white = blend_alpha(pixels, torch.ones(3))
    torch.testing.assert_close(white, torch.tensor([[[1.0, 1.0, 1.0], [0.2, 0.4, 0.6], [1.0] * 3]]))
    assert blend_alpha(pixels[..., :3]) is not None and blend_alpha(pixels[..., :3]).shape == (1, 3, 3)


# ---------------------------------------------------------------------------------------------------- sizes and formats
FRAMES = [(60, 44, "RGB"), (90, 70, "L"), (44, 36, "RGBA"), (73, 51, "P"), (64, 48, "I;16")]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A datamanager on a scene of five sizes (none a multiple of 8 but one, all smaller than a 256x256 patch) and
    five pixel formats, with the paper's patch sizes; returns it and what it printed while being set up."""
    scene = write_scene(tmp_path_factory.mktemp("mixed") / "scene", FRAMES)
    config = datamanager_config(scene, latent_patch_size=32, ae_crop_size=512, distill_crop_size=512)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        datamanager = config.setup(device="cpu", test_mode="val")
    return datamanager, flat(out.getvalue())


def test_patches_shrink_once_to_the_smallest_image_with_one_message(mixed):
    datamanager, printed = mixed
    assert datamanager.patch_sizes == {"ae_crop": 32, "latent_patch": 32, "distill_crop": 32}  # 36 -> 32
    assert printed.count("Patches shrink") == 1
    assert "frame_0002.png (44x36)" in printed
    assert "phase-B latent patch 32x32 (4x4 latent pixels) instead of 256x256" in printed
    assert "phase-A crops 32x32 instead of 512x512" in printed and "phase-C crops 32x32 instead of 512x512" in printed
    assert datamanager.next_ae_batch(0).shape == (2, 3, 32, 32)
    size = datamanager.patch_sizes["distill_crop"]
    image, latent = aligned_crop(datamanager.train_images[2], torch.zeros(5, 6, 4), size)
    assert image.shape == (3, 32, 32) and latent.shape == (4, 4, 4)


def test_images_of_different_sizes_and_formats_load_as_they_are(mixed):
    datamanager, printed = mixed
    shapes = [tuple(image.shape) for image in datamanager.train_images]
    # Every image at its own size; one RGBA image gives all an alpha channel.
    assert shapes == [(h, w, 4) for w, h, _ in FRAMES]
    assert all(bool((image[..., 3] == 1).all()) for i, image in enumerate(datamanager.train_images) if i != 2)
    gray = datamanager.train_images[1]
    assert torch.equal(gray[..., 0], gray[..., 1]) and torch.equal(gray[..., 0], gray[..., 2])
    assert "8-bit grayscale (L, e.g. frame_0001.png)" in printed and "palette (P" in printed
    assert "16-bit grayscale (I;16" in printed
    assert "1 of 5 training images have transparency" in printed
    ray_bundle, batch = datamanager.next_train(0)  # nerfstudio's pixel sampler over images of different sizes
    assert len(ray_bundle) == 256 and batch["image"].shape == (256, 4)


def test_latent_patches_come_from_one_image_with_its_own_cameras_rays(mixed):
    datamanager, _ = mixed
    torch.manual_seed(0)
    seen = set()
    for _ in range(30):
        patch = datamanager.next_latent_patch()
        index = patch.camera_index
        seen.add(index)
        image = datamanager.train_images[index]
        height, width = image.shape[:2]
        assert 0 <= patch.top <= height - 32 and 0 <= patch.left <= width - 32
        crop = blend_alpha(image[patch.top : patch.top + 32, patch.left : patch.left + 32])
        torch.testing.assert_close(patch.image, crop.permute(2, 0, 1))
        camera = datamanager.train_cameras[index : index + 1]
        assert (int(camera.width), int(camera.height)) == (width, height)
        full = datamanager.train_cameras.generate_rays(camera_indices=index, keep_shape=True)
        i, j = 1, 2  # block centre (top + 8i + 4, left + 8j + 4): between the four pixels around it
        y, x = patch.top + 8 * i + 3, patch.left + 8 * j + 3
        around = full.directions[y : y + 2, x : x + 2].reshape(4, 3).mean(0)
        torch.testing.assert_close(patch.ray_bundle.directions[i, j], around / around.norm(), atol=2e-3, rtol=0)
    assert seen == set(range(len(FRAMES)))


def test_transparent_pixels_take_the_background_colour_not_their_rgb(mixed):
    datamanager, _ = mixed
    rgba = datamanager.train_images[2]
    transparent = rgba[..., 3] == 0
    assert transparent.any() and torch.allclose(rgba[transparent][:, :3], torch.tensor(MAGENTA / 255.0).float())
    for colour, expected in (("last_sample", 0.0), ("white", 1.0), ("black", 0.0)):
        datamanager.set_alpha_background(colour)
        patch = random_patch(
            datamanager.train_cameras, datamanager.train_images, 32, 2, False, datamanager.alpha_background
        )
        mask = transparent[patch.top : patch.top + 32, patch.left : patch.left + 32]
        assert mask.any()
        assert torch.all(patch.image.permute(1, 2, 0)[mask] == expected), colour
    datamanager.set_alpha_background("last_sample")


def test_images_whose_size_disagrees_with_their_camera_are_named(tmp_path):
    scene = write_scene(tmp_path / "scene", [(40, 32, "RGB")] * 3)
    Image.new("RGB", (41, 32)).save(scene / "images" / "frame_0000.png")  # one pixel: a rounding difference
    datamanager = datamanager_config(scene).setup(device="cpu", test_mode="val")
    assert [tuple(image.shape) for image in datamanager.train_images] == [(32, 41, 3), (32, 40, 3), (32, 40, 3)]
    Image.new("RGB", (48, 32)).save(scene / "images" / "frame_0001.png")  # transforms.json still says 40x32
    with pytest.raises(
        ImageFileError,
        match=r"1 training images differ in size from their cameras \(frame_0001\.png "
        r"is 48x32, its camera 40x32\).*transforms\.json",
    ):
        datamanager_config(scene).setup(device="cpu", test_mode="val")


def test_images_too_small_for_a_latent_patch_are_named(tmp_path):
    scene = write_scene(tmp_path / "scene", [(40, 32, "RGB"), (14, 30, "RGB"), (40, 32, "RGB")])
    with pytest.raises(ImageSizeError, match=r"frame_0001\.png \(14x30\).*at least 2x2 latent pixels"):
        datamanager_config(scene).setup(device="cpu", test_mode="val")


def test_patch_settings_that_cannot_work_are_named_by_their_flag(scene):
    with pytest.raises(ValueError, match="--pipeline.datamanager.latent-patch-size must be at least 2, got 1"):
        datamanager_config(scene, latent_patch_size=1).setup(device="cpu", test_mode="val")
    with pytest.raises(ValueError, match="train-num-images-to-sample-from 4: .* leave it at -1"):
        datamanager_config(scene, train_num_images_to_sample_from=4).setup(device="cpu", test_mode="val")


# ---------------------------------------------------------------------------------------------------- unreadable files
def test_a_missing_image_that_the_dataparser_opens_is_named(tmp_path):
    scene = write_scene(tmp_path / "scene", [(40, 32, "RGB")] * 3)
    (scene / "images" / "frame_0000.png").unlink()  # nerfstudio-data opens the first image itself
    with pytest.raises(ImageFileError, match=r"frame_0000\.png.*Restore or replace the file"):
        datamanager_config(scene).setup(device="cpu", test_mode="val")


def test_all_unreadable_images_are_named_in_one_error_before_loading(tmp_path):
    scene = write_scene(tmp_path / "scene", [(40, 32, "RGB")] * 4)
    (scene / "images" / "frame_0001.png").write_bytes(b"not an image")
    (scene / "images" / "frame_0003.png").unlink()
    with pytest.raises(ImageFileError) as error:
        datamanager_config(scene).setup(device="cpu", test_mode="val")
    message = str(error.value)
    assert message.startswith("2 of 4 training images cannot be read")
    assert "frame_0001.png: not a readable image" in message and "frame_0003.png: no such file" in message
    assert "remove it from the scene (its frame in transforms.json" in message


def test_a_truncated_image_is_named_when_its_pixels_are_read(tmp_path):
    scene = write_scene(tmp_path / "scene", [(40, 32, "RGB")] * 3)
    path = scene / "images" / "frame_0002.png"
    path.write_bytes(path.read_bytes()[:200])  # the header is intact: only decoding fails
    with pytest.raises(ImageFileError, match=r"cannot read image .*frame_0002\.png .*corrupt, truncated"):
        datamanager_config(scene).setup(device="cpu", test_mode="val")


# ---------------------------------------------------------------------------------------------------- end to end
def test_an_awkward_scene_trains_through_a_b_c_and_says_each_thing_once(tmp_path, capsys):
    """Two training images of different sizes (neither a multiple of 8, one grayscale), an RGBA evaluation image,
    no sparse depth: phases A, B and C run, each adaptation is said once, and evaluation blends alpha."""
    scene = write_scene(tmp_path / "scene", [(60, 44, "RGB"), (52, 40, "RGBA"), (90, 70, "L")])
    config = tiny_config("relsnerf-r32", scene, tmp_path / "out", steps=(1, 2, 1))
    config.pipeline.datamanager.dataparser.train_split_fraction = 0.5  # frames 0 and 2 train, frame 1 evaluates
    config.pipeline.model.background_color = "white"
    config.pipeline.datamanager.latent_patch_size = 8  # 64x64 pixels: shrinks to 40x40 with phases A and C
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    datamanager = trainer.pipeline.datamanager
    assert [tuple(image.shape) for image in datamanager.train_images] == [(44, 60, 3), (70, 90, 3)]
    assert torch.equal(datamanager.alpha_background, torch.ones(3))  # the model's background colour
    losses = {}
    for step in range(4):
        _, loss_dict, _ = trainer.train_iteration(step)
        assert all(torch.isfinite(v) for v in loss_dict.values()), (step, loss_dict)
        losses.setdefault(trainer.pipeline.phase, set()).update(loss_dict)
    assert "patch_loss" in losses[Phase.JOINT] and "depth_loss" not in losses[Phase.JOINT]
    assert losses[Phase.DISTILL] == {"distill_real_loss", "distill_render_loss"}
    renders = trainer.pipeline.distill_renders
    assert len(renders.images) == 3 and set(renders.triplets[:, :2].flatten().tolist()) <= {0, 1}
    assert {tuple(image.shape[:2]) for image in renders.images} <= {(44, 60), (70, 90)}
    printed = flat(capsys.readouterr().out)
    assert printed.count("Patches shrink") == 1 and "phase-A crops 40x40 instead of 64x64" in printed
    assert "phase-B latent patch 40x40 (5x5 latent pixels)" in printed and "phase-C crops 40x40" in printed
    assert printed.count("only 2 training cameras") == 1
    assert printed.count("DS-NeRF depth loss off") == 1
    # Evaluation compares with the RGBA image blended over the white background, not with its magenta RGB.
    trainer.pipeline.eval()
    camera, batch = datamanager.next_eval_image(0)
    assert batch["image"].shape == (40, 52, 4)
    outputs = trainer.pipeline.model.get_outputs_for_camera(camera)
    metrics, images = trainer.pipeline.model.get_image_metrics_and_images(outputs, batch)
    gt = images["img"][:, :52]
    assert torch.all(gt[:, :17] == 1.0) and np.isfinite(metrics["psnr"])


# ---------------------------------------------------------------------------------------------------- scene files
def test_a_transforms_json_that_is_not_json_is_named_with_the_position(tmp_path):
    scene = write_scene(tmp_path / "scene", [(40, 32, "RGB")] * 3)
    transforms = scene / "transforms.json"
    text = transforms.read_text()
    cut = text[: text.index('"frames": [') + len('"frames": [')] + "\n"  # a copy that stopped after the list opened
    for broken, found in ((cut, "the file ends there: it is truncated"), (text.replace('"OPENCV"', "OPENCV"), "")):
        transforms.write_text(broken)
        with pytest.raises(json.JSONDecodeError) as parsed:
            json.loads(broken)
        with pytest.raises(SceneFileError) as error:
            datamanager_config(scene).setup(device="cpu", test_mode="val")
        message = str(error.value)
        where = f"line {parsed.value.lineno}, column {parsed.value.colno} (character {parsed.value.pos})"
        assert message.startswith(f"{transforms} is not valid JSON: {parsed.value.msg} at {where}; "), message
        assert (found or 'the line reads \'{"camera_model": OPENCV') in message
        assert error.value.__cause__ is None and error.value.__suppress_context__  # one message, not json's traceback


@pytest.mark.parametrize("fault", ["unparsable transforms.json", "missing decoder weights"])
def test_a_failed_start_leaves_no_run_folder_behind(fault, scene, tmp_path):
    outputs = tmp_path / "outputs"
    if fault == "unparsable transforms.json":
        bad = write_scene(tmp_path / "bad", [(40, 32, "RGB")] * 3)
        (bad / "transforms.json").write_text('{"frames": [\n')
        config, error = tiny_config("relsnerf-r32", bad, outputs, steps=(1, 1, 0)), SceneFileError
    else:
        config, error = tiny_config("relsnerf", scene, outputs, steps=(1, 1, 0)), PretrainedWeightsError
        config.pipeline.model.autoencoder.init = "pretrained"
        config.pipeline.model.autoencoder.pretrained = str(tmp_path / "no-such-vae")
    config.save_config()  # what ns-train writes before set-up
    run_folder = config.get_base_dir()
    assert (run_folder / "config.yml").is_file()
    with pytest.raises(error):
        config.setup(local_rank=0, world_size=1).setup()
    assert not run_folder.exists() and list(outputs.iterdir()) == []  # nor the experiment and method folders
    if fault == "unparsable transforms.json":  # a run folder that holds an earlier run's files is left as it was
        config.save_config()
        (run_folder / "nerfstudio_models").mkdir()
        (run_folder / "nerfstudio_models" / "step-000000009.ckpt").write_bytes(b"earlier")
        with pytest.raises(error):
            config.setup(local_rank=0, world_size=1).setup()
        assert sorted(p.name for p in run_folder.rglob("*")) == [
            "config.yml",
            "nerfstudio_models",
            "step-000000009.ckpt",
        ]


# ------------------------------------------------------------------------------------------------ no held-out images
@pytest.mark.parametrize("views", [8, 2])
def test_a_split_that_holds_no_image_out_is_said_at_start_up(views, tmp_path):
    scene = write_demo_scene(tmp_path / "scene", width=64, height=48, num_views=views)
    config = datamanager_config(scene)
    config.dataparser = NerfstudioDataParserConfig(data=scene)  # nerfstudio-data's default split: 0.9, rounded up
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        datamanager = config.setup(device="cpu", test_mode="val")
    printed = flat(out.getvalue())
    assert printed.count("Nothing is held out for evaluation") == 1
    assert f"(--eval-mode fraction trains on ceil(0.9 x {views}) = all {views} images; this fraction holds" in printed
    assert f"`nerfstudio-data --eval-mode interval --eval-interval {views}`" in printed
    assert "ns-render spiral and interpolate use the training cameras" in printed
    assert len(datamanager.eval_dataset) == 0 and len(datamanager.train_dataset) == views
    camera, _ = datamanager.eval_dataloader.get_camera(image_idx=0)  # where ns-render spiral starts
    assert torch.equal(camera.camera_to_worlds, datamanager.train_dataset.cameras.camera_to_worlds[:1])
    with pytest.raises(NoEvaluationImagesError, match="Nothing to evaluate: this run held no image out"):
        datamanager.next_eval_image(0)  # never training images reported as held-out results


@pytest.fixture(scope="module")
def run_without_held_out_images(tmp_path_factory) -> Path:
    """A run on 8 views with nerfstudio-data's default split (phases A and B, one step each), as ns-train leaves it."""
    root = tmp_path_factory.mktemp("no_held_out")
    scene = write_demo_scene(root / "scene", width=64, height=48, num_views=8)
    config = tiny_config("relsnerf-r32", scene, root / "outputs", steps=(1, 1, 0))
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    return config.get_base_dir() / "config.yml"


def test_ns_eval_of_a_run_without_held_out_images_says_there_is_nothing_to_evaluate(
    run_without_held_out_images, tmp_path
):
    from nerfstudio.scripts.eval import ComputePSNR  # what ns-eval runs (an uncaught error: exit status 1)

    output = tmp_path / "metrics.json"
    with pytest.raises(NoEvaluationImagesError) as error:
        ComputePSNR(load_config=run_without_held_out_images, output_path=output).main()
    message = str(error.value)
    assert message.startswith("Nothing to evaluate: this run held no image out for evaluation (--eval-mode fraction")
    assert "To evaluate, train again and hold images out with e.g. `nerfstudio-data --eval-mode interval" in message
    assert not output.exists()


def test_ns_render_of_a_run_without_held_out_images_uses_the_training_cameras(run_without_held_out_images, tmp_path):
    from nerfstudio.scripts.render import RenderCameraPath, RenderInterpolated, SpiralRender
    from nerfstudio.utils.eval_utils import eval_setup

    from .scene_writers import write_camera_path

    common = dict(load_config=run_without_held_out_images, output_format="images", image_format="png")
    SpiralRender(output_path=tmp_path / "spiral.mp4", seconds=0.25, frame_rate=8, **common).main()
    # --pose-source eval (the default): the evaluation cameras are the training cameras.
    RenderInterpolated(output_path=tmp_path / "interpolate.mp4", interpolation_steps=1, **common).main()
    _, pipeline, _, _ = eval_setup(run_without_held_out_images, test_mode="inference")
    write_camera_path(tmp_path / "path.json", pipeline, 40, 30)
    RenderCameraPath(output_path=tmp_path / "path.mp4", camera_path_filename=tmp_path / "path.json", **common).main()
    for name, frames, size in (("spiral", 2, (64, 48)), ("interpolate", 7, (64, 48)), ("path", 3, (40, 30))):
        files = sorted((tmp_path / name).glob("*.png"))
        assert len(files) >= frames and Image.open(files[0]).size == size, name
