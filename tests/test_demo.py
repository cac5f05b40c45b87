"""`make demo`: its procedural scene, its ns-train options, and a whole demo run with a tiny schedule."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tyro
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from PIL import Image

from relsnerf_ns import demo
from relsnerf_ns.demo_scene import cast, demo_camera_poses, held_out_views, pixel_rays, write_demo_scene
from relsnerf_ns.relsnerf_config import relsnerf_r32
from relsnerf_ns.training.phases import Phase

from .conftest import tiny_cli_args


def test_the_scene_is_a_valid_nerfstudio_scene_with_held_out_views_between_training_views(tmp_path):
    scene = write_demo_scene(tmp_path / "scene", width=64, height=48, num_views=12, hold_out_every=4)
    meta = json.loads((scene / "transforms.json").read_text())
    assert (meta["w"], meta["h"], len(meta["frames"])) == (64, 48, 12)
    for frame in meta["frames"]:
        image = Image.open(scene / frame["file_path"])
        assert image.size == (64, 48) and image.mode == "RGB"
        c2w = np.asarray(frame["transform_matrix"])
        assert c2w.shape == (4, 4) and np.allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-9)
    held_out = [f"images/frame_{i:04d}.png" for i in (2, 6, 10)]
    assert meta["test_filenames"] == meta["val_filenames"] == held_out
    assert sorted(meta["train_filenames"] + held_out) == sorted(f["file_path"] for f in meta["frames"])
    # nerfstudio-data reads the split from transforms.json.
    parser = NerfstudioDataParserConfig(data=scene).setup()
    assert len(parser.get_dataparser_outputs("train").image_filenames) == 9
    assert [p.name for p in parser.get_dataparser_outputs("test").image_filenames] == [
        "frame_0002.png",
        "frame_0006.png",
        "frame_0010.png",
    ]


def test_held_out_views_are_never_the_ends_of_the_arc():
    assert held_out_views(32, 4) == [2, 6, 10, 14, 18, 22, 26, 30]
    assert held_out_views(32, 8) == [4, 12, 20, 28]
    assert held_out_views(8, 0) == [] and held_out_views(8, 1) == []
    for views in range(3, 40):
        assert all(0 < i < views - 1 for i in held_out_views(views, 4))


def test_the_scene_has_depth_and_parallax():
    """Objects stand well in front of the wall, and they move against it from one end of the arc to the other."""
    first, last = demo_camera_poses(2)
    focal = 0.5 * 64 / np.tan(np.deg2rad(25.0))
    depths = [cast(*pixel_rays(c2w, 64, 48, focal))[1].reshape(48, 64) for c2w in (first, last)]
    for depth in depths:
        assert np.isfinite(depth).all()  # the wall and the floor close the scene
        assert depth.max() > 1.5 * depth.min()
    # The nearest thing in the middle row differs between the ends of the arc (parallax, not a flat picture).
    middle = [np.argmin(depth[24]) for depth in depths]
    assert abs(middle[0] - middle[1]) > 8


def test_the_demo_options_parse_as_ns_train_options():
    """DEMO_ARGS and the rate flags are valid ns-train options of relsnerf-r32 and set what they say."""
    a, b, c = demo.STEPS
    args = [
        *demo.DEMO_ARGS,
        *demo.demo_rate_args(),
        *("--pipeline.phases.ae-pretrain-steps", str(a), "--pipeline.phases.joint-steps", str(b)),
        *("--pipeline.phases.distill-steps", str(c)),
    ]
    config = tyro.cli(type(relsnerf_r32.config), default=copy.deepcopy(relsnerf_r32.config), args=args)
    assert config.pipeline.model.autoencoder.encoder_widths == (16, 32, 64, 128, 128)
    assert config.pipeline.model.num_nerf_samples_per_ray == 16
    schedule = config.pipeline.phases
    assert schedule.steps() == demo.STEPS
    period = config.pipeline.model.nerf_tenfold_decay_every()  # what the trainer gives the NeRF groups
    scheduler = {
        group: config.optimizers[group]["scheduler"].for_run(schedule, period)
        for group in ("ae_encoder", "ae_decoder", "fields")
    }
    # In phase A the autoencoder's rate halves twice, at a third and two thirds of the phase (the paper's period would
    # halve it six times); in phase C the decoder's likewise; phase B keeps the paper's decoder rate.
    for phase, (lr, halvings), groups in (
        (Phase.AE_PRETRAIN, demo.AE_RATE, ("ae_encoder", "ae_decoder")),
        (Phase.DISTILL, demo.DISTILL_RATE, ("ae_decoder",)),
    ):
        start, length = schedule.start_of(phase), schedule.length_of(phase)
        for group in groups:
            rates = [scheduler[group].rate(step) for step in range(start, start + length)]
            assert rates[0] == pytest.approx(lr) and rates[-1] == pytest.approx(lr * 0.5**halvings)
            assert len(set(rates)) == halvings + 1
            assert rates[length // 3 - 1] == pytest.approx(lr) and rates[length // 3 + 1] == pytest.approx(lr / 2)
    assert scheduler["ae_encoder"].rate(schedule.start_of(Phase.DISTILL)) == 0.0  # the encoder stays frozen
    assert scheduler["ae_decoder"].rate(schedule.start_of(Phase.JOINT)) == pytest.approx(1e-4)
    # Phase B's NeRF rate falls tenfold over the phase (the paper's period would make it a hundredfold).
    assert scheduler["fields"].rate(schedule.start_of(Phase.JOINT)) == pytest.approx(1e-2)
    end_of_b = schedule.start_of(Phase.DISTILL)
    assert scheduler["fields"].rate(end_of_b - 1) == pytest.approx(1e-2 * 0.1 ** (1 - 1 / b), rel=1e-6)


def test_a_tiny_demo_writes_the_video_metrics_and_side_by_side_picture_and_prints_where(tmp_path):
    output = tmp_path / "demo_output"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TORCH_HOME=str(tmp_path / "empty_torch_cache"))
    command = [
        sys.executable, "-m", "relsnerf_ns.demo", "--output", str(output), "--steps", "2", "4", "2",
        "--distill-renders", "2", "--views", "16", "--size", "64", "48", "--video-steps", "2",
        *tiny_cli_args("relsnerf-r32"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = dict(re.findall(r"^(video|metrics|picture): +(\S+)", result.stdout, re.MULTILINE))
    assert printed == {
        "video": str(output / "video.mp4"),
        "metrics": str(output / "metrics.json"),
        "picture": str(output / "side_by_side.png"),
    }
    assert (output / "video.mp4").stat().st_size > 0
    metrics = json.loads((output / "metrics.json").read_text())["results"]
    assert {"psnr", "psnr_rgb_nerf", "ssim", "ssim_rgb_nerf"} <= set(metrics)
    # ground truth | decoded | RGB-NeRF of the middle held-out view (of views 4 and 12: 12), enlarged 3x under labels.
    picture = np.asarray(Image.open(output / "side_by_side.png").convert("RGB"))
    assert picture.shape == (demo.LABEL_HEIGHT + 48 * 3, 3 * 64 * 3, 3)
    truth = np.asarray(Image.open(output / "scene" / "images" / "frame_0012.png").convert("RGB"))
    panels = np.split(picture[demo.LABEL_HEIGHT :], 3, axis=1)
    assert np.array_equal(panels[0], truth.repeat(3, axis=0).repeat(3, axis=1))
    assert "frame_0012.png" in result.stdout
