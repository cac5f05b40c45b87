"""nerfstudio's commands on a relsnerf run: ns-eval, ns-render (every sub-command), ns-train --load-dir, ns-viewer.

All run as the real console scripts on the tiny run that `trained_run` makes once per test session; nothing is
downloaded (TORCH_HOME points at an empty cache, so LPIPS must be skipped, not fetched).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import VENV_BIN
from .scene_writers import write_camera_path


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory) -> Dict[str, str]:
    env = dict(os.environ)
    env["TORCH_HOME"] = str(tmp_path_factory.mktemp("empty_torch_cache"))
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="module")
def loaded(trained_run):
    """The trained pipeline loaded in this process, as ns-render loads it."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, step = eval_setup(trained_run, test_mode="test")
    return pipeline, step


def run(command: List[str], env: Dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return result


def video_frames(video: Path, tmp_path: Path) -> List[np.ndarray]:
    """Every frame of a video as float RGB [H, W, 3] (decoded by ffmpeg)."""
    pattern = tmp_path / f"{video.stem}_%03d.png"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(video), str(pattern)], check=True)
    files = sorted(tmp_path.glob(f"{video.stem}_*.png"))
    return [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255 for f in files]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10 * np.log10(np.mean((a - b) ** 2) + 1e-12))


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory, offline_env):
    """ns-eval of the trained run: (its JSON's results, what it printed)."""
    output = tmp_path_factory.mktemp("eval") / "metrics.json"
    result = run(
        [str(VENV_BIN / "ns-eval"), "--load-config", str(trained_run), "--output-path", str(output)], offline_env
    )
    return json.loads(output.read_text())["results"], result


def test_ns_eval_reports_quality_and_speed_side_by_side(evaluated):
    metrics, result = evaluated
    for suffix in ("", "_rgb_nerf"):
        for key in ("psnr", "ssim", "ms_per_frame", "fps"):
            value = metrics[key + suffix]
            assert math.isfinite(value) and value > 0, key + suffix
        assert 5 < metrics["psnr" + suffix] < 60
        assert 0 < metrics["ssim" + suffix] <= 1
        assert 0 < metrics["flip" + suffix] < 1  # mean FLIP error: no weights, so always there
        assert metrics["fps" + suffix] == pytest.approx(1000 / metrics["ms_per_frame" + suffix])
    assert metrics["speedup_over_rgb_nerf"] == pytest.approx(metrics["ms_per_frame_rgb_nerf"] / metrics["ms_per_frame"])
    # Measured at the evaluation resolution (the scene's 64x48 images).
    assert (metrics["eval_width"], metrics["eval_height"]) == (64, 48)
    # LPIPS weights are not in the (empty) torch cache: skipped with one message, nothing downloaded.
    assert "lpips" not in metrics and "lpips_rgb_nerf" not in metrics
    assert " ".join(result.stdout.split()).count("LPIPS skipped") == 1
    assert "decoded" in result.stdout and "RGB-NeRF" in result.stdout
    rows = [line.replace("│", " ").replace("|", " ").split() for line in result.stdout.splitlines()]
    assert any(row[:1] == ["flip"] and len(row) == 3 for row in rows)  # the table's row: flip, decoded, RGB-NeRF


def test_decoded_gap_script_splits_the_runs_figures_and_agrees_with_ns_eval(trained_run, evaluated, offline_env):
    metrics, _ = evaluated
    script = Path(__file__).parents[1] / "docs" / "scripts" / "decoded_gap.py"
    result = run([sys.executable, str(script), "--load-config", str(trained_run), "--phases", "2"], offline_env)
    pattern = re.compile(
        r"^(training|held-out) views \((\d+)\): decoded ([\d.]+) dB, RGB-NeRF ([\d.]+) dB, D\(E\(I\)\) ([\d.]+) dB, "
        r"D\(avg E\(I\)\) ([\d.]+) dB, latent error ([\d.]+)$"
    )
    rows = {m[1]: m for m in map(pattern.match, result.stdout.splitlines()) if m}
    assert set(rows) == {"training", "held-out"}, result.stdout
    held_out = rows["held-out"]
    # The held-out figures are ns-eval's: the same renders, the same views.
    assert float(held_out[3]) == pytest.approx(metrics["psnr"], abs=0.01)
    assert float(held_out[4]) == pytest.approx(metrics["psnr_rgb_nerf"], abs=0.01)
    for row in rows.values():
        assert int(row[2]) > 0 and all(5 < float(row[k]) < 60 for k in (3, 4, 5, 6)) and float(row[7]) >= 0


def test_ns_render_camera_path_writes_each_output(trained_run, loaded, tmp_path, offline_env):
    pipeline, _ = loaded
    width, height = 88, 50  # not multiples of 8: the latent map is padded and the image cropped
    camera_path = tmp_path / "path.json"
    write_camera_path(camera_path, pipeline, width, height)
    video = tmp_path / "path.mp4"
    run(
        [
            str(VENV_BIN / "ns-render"),
            "camera-path",
            "--load-config",
            str(trained_run),
            "--camera-path-filename",
            str(camera_path),
            "--output-path",
            str(video),
            "--rendered-output-names",
            "rgb",
            "rgb_nerf",
            "latent",
            "depth",
        ],
        offline_env,
    )
    frames = video_frames(video, tmp_path)
    assert len(frames) == 3
    first = frames[0]
    assert first.shape == (height, 4 * width, 3)
    panels = [first[:, i * width : (i + 1) * width] for i in range(4)]
    # The first frame is training camera 0: the decoded panel is the model's decoded render of that camera.
    cameras = pipeline.datamanager.train_dataset.cameras
    camera = cameras[0:1]
    scale = height / float(camera.height[0])
    camera.fx, camera.fy = camera.fx * scale, camera.fy * scale
    camera.cx, camera.cy = torch.full_like(camera.cx, width / 2), torch.full_like(camera.cy, height / 2)
    camera.width, camera.height = torch.full_like(camera.width, width), torch.full_like(camera.height, height)
    expected = pipeline.model.get_outputs_for_camera(camera)
    assert psnr(panels[0], expected["rgb"].cpu().numpy()) > 28  # video compression only
    assert psnr(panels[1], expected["rgb_nerf"].cpu().numpy()) > 28
    for panel, name in zip(panels[2:], ("latent", "depth")):
        assert panel.std() > 0.02, f"the {name} panel is blank"


def test_ns_render_spiral_and_interpolate_write_videos(trained_run, tmp_path, offline_env):
    spiral = tmp_path / "spiral.mp4"
    run(
        [
            str(VENV_BIN / "ns-render"),
            "spiral",
            "--load-config",
            str(trained_run),
            "--output-path",
            str(spiral),
            "--seconds",
            "1",
            "--frame-rate",
            "4",
        ],
        offline_env,
    )
    frames = video_frames(spiral, tmp_path)
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3)
    interpolated = tmp_path / "interpolate.mp4"
    run(
        [
            str(VENV_BIN / "ns-render"),
            "interpolate",
            "--load-config",
            str(trained_run),
            "--output-path",
            str(interpolated),
            "--pose-source",
            "train",
            "--interpolation-steps",
            "2",
            "--frame-rate",
            "4",
            "--rendered-output-names",
            "rgb",
            "depth",
        ],
        offline_env,
    )
    frames = video_frames(interpolated, tmp_path)
    assert len(frames) >= 4 and frames[0].shape == (48, 2 * 64, 3)


def test_ns_render_dataset_writes_images_of_each_output(trained_run, loaded, tmp_path, offline_env):
    pipeline, _ = loaded
    output = tmp_path / "dataset"
    run(
        [
            str(VENV_BIN / "ns-render"),
            "dataset",
            "--load-config",
            str(trained_run),
            "--output-path",
            str(output),
            "--split",
            "train",  # (nerfstudio names files by their path under the split's common folder: >1 image needed)
            "--rendered-output-names",
            "rgb",
            "rgb_nerf",
            "latent",
            "depth",
        ],
        offline_env,
    )
    num_train = len(pipeline.datamanager.train_dataset)
    for name in ("rgb", "rgb_nerf", "latent", "depth"):
        files = sorted((output / "train" / name).rglob("*.jpg"))
        assert len(files) == num_train, name
        image = np.asarray(Image.open(files[0]).convert("RGB"))
        assert image.shape == (48, 64, 3), name


def test_ns_train_load_dir_continues_the_run(trained_run, scene, tmp_path, offline_env):
    from .conftest import tiny_cli_args

    checkpoints = trained_run.parent / "nerfstudio_models"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    last = max(int(p.stem.split("-")[1]) for p in checkpoints.glob("step-*.ckpt"))
    result = run(
        [
            str(VENV_BIN / "ns-train"),
            "relsnerf-r32",
            "--output-dir",
            str(tmp_path),
            "--experiment-name",
            "resumed",
            "--timestamp",
            "run",
            "--load-dir",
            str(checkpoints),
            "--pipeline.phases.ae-pretrain-steps",
            "3",
            "--pipeline.phases.joint-steps",
            "8",
            "--pipeline.phases.distill-steps",
            "5",
            *tiny_cli_args("relsnerf-r32"),
            "nerfstudio-data",
            "--data",
            str(scene),
        ],
        offline_env,
    )
    assert f"step-{last:09d}.ckpt" in " ".join(result.stdout.split()).replace(" ", "")
    resumed = sorted((tmp_path / "resumed" / "relsnerf-r32" / "run" / "nerfstudio_models").glob("step-*.ckpt"))
    assert resumed and int(resumed[-1].stem.split("-")[1]) == 3 + 8 + 5 - 1
    # The run it resumed from is untouched.
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before
