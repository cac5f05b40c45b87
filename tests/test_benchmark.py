"""`relsnerf-bench` end to end on the procedural scene (CPU, tiny models, the minimal schedule).

One `all` run (train, evaluate, time in one process, report) and one run in separate steps (nerfacto trained in two
pieces through the time limit, then each model trained and evaluated on its own, then `report`, which times them all)
must give reports of the same structure with every figure there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict

import pytest
import torch
from PIL import Image

from relsnerf_ns.benchmark.cli import All, Evaluate, Report, Train, main
from relsnerf_ns.benchmark.report import MISSING
from relsnerf_ns.benchmark.spiral import average_pose, llff_spiral

from .conftest import TINY_AE, TINY_DATA, TINY_MODEL

MODELS = ("nerfacto", "relsnerf-r32", "relsnerf-tiny")
OUTPUTS = {"nerfacto": ["rgb"], "relsnerf-r32": ["decoded", "rgb_nerf"], "relsnerf-tiny": ["decoded", "rgb_nerf"]}
# Few frames: one turn of the spiral so that adjacent frames overlap (RCC needs shared pixels).
VIDEO = dict(spiral_frames=6, spiral_rotations=1)
TIMING = dict(timing_frames=2, timing_warmup=1)
TRAINING = dict(schedule="minimal", num_distill_renders=1)
# Smaller proposal networks and fewer samples than conftest's TINY_MODEL: rendering dominates this test's time.
PROPOSAL_NETS = [
    dict(hidden_dim=16, log2_hashmap_size=10, num_levels=2, max_res=64, use_linear=False),
    dict(hidden_dim=16, log2_hashmap_size=10, num_levels=2, max_res=128, use_linear=False),
]


def shrink(name: str, config) -> None:
    """conftest's tiny field, rays and autoencoders (random init: no weight files) for every model."""
    model, data = config.pipeline.model, config.pipeline.datamanager
    for key, value in TINY_MODEL.items():
        if hasattr(model, key):  # nerfacto has no latent_* fields
            setattr(model, key, value)
    model.proposal_net_args_list = PROPOSAL_NETS
    model.num_proposal_samples_per_ray, model.num_nerf_samples_per_ray = (8, 4), 4
    for key, value in TINY_DATA.items():
        if hasattr(data, key):
            setattr(data, key, value)
    for key, value in TINY_AE.get(name, {}).items():
        setattr(model.autoencoder, key, value)


def common(output: Path) -> Dict:
    return dict(output_dir=output, device="cpu")


def training(scene: Path) -> Dict:
    return dict(data=scene, **TRAINING)


@pytest.fixture(scope="module")
def all_run(scene, tmp_path_factory):
    output = tmp_path_factory.mktemp("bench_all")
    paths = All(**common(output), **training(scene), **VIDEO, **TIMING).run(
        config_transform=shrink, command="relsnerf-bench all (test)"
    )
    return output, paths


def structure(report: Dict) -> Dict:
    """What must not depend on how the benchmark was run: models, outputs, measured figures, sections."""
    models = {}
    for model in report["models"]:
        models[model["name"]] = {
            "kind": model["kind"],
            "autoencoder": model["autoencoder"],
            "quality": {o: sorted(k for k, v in q.items() if v is not None) for o, q in model["quality"].items()},
            "timing": sorted(model["timing"]),
            "phases": sorted(model["fit_seconds"]),
            "steps": model["steps"],
        }
    return {
        "keys": sorted(report),
        "derived": {k: sorted(v) for k, v in report["derived"].items()},
        "models": models,
        "video_frames": report["video_frames"],
        "resolution": report["resolution"],
    }


def check_report(output: Path, paths: Dict[str, Path]) -> Dict:
    assert set(paths) == {"json", "markdown", "plot"}
    report = json.loads(paths["json"].read_text())
    assert [m["name"] for m in report["models"]] == list(MODELS)
    assert report["resolution"] == [64, 48] and report["video_frames"] == VIDEO["spiral_frames"]
    derived = report["derived"]["speedup_vs_nerfacto"]
    nerfacto_ms = report["models"][0]["timing"]["rgb"]["ms_per_frame"]
    for model in report["models"]:
        name = model["name"]
        assert sorted(model["quality"]) == sorted(OUTPUTS[name]) and sorted(model["timing"]) == sorted(OUTPUTS[name])
        for kind in OUTPUTS[name]:
            quality = model["quality"][kind]
            assert 0 < quality["psnr"] < 60 and 0 < quality["ssim"] <= 1, (name, kind)
            assert 0 < quality["flip"] < 1, (name, kind)  # mean FLIP error, measured offline for every output
            assert quality["rcc"] is not None and math.isfinite(quality["rcc"]), (name, kind)
            ms = model["timing"][kind]["ms_per_frame"]
            assert ms > 0 and model["timing"][kind]["resolution"] == [64, 48]
            assert derived[f"{name}/{kind}"] == pytest.approx(nerfacto_ms / ms)
        assert model["num_eval_images"] >= 1
        expected_phases = ["B"] if name == "nerfacto" else ["A", "B", "C"]
        assert sorted(model["fit_seconds"]) == expected_phases and all(s > 0 for s in model["fit_seconds"].values())
        assert model["steps"] == ({"B": 6} if name == "nerfacto" else {"A": 2, "B": 6, "C": 2})
    assert derived["nerfacto/rgb"] == pytest.approx(1.0)
    assert "breakdown_ms" in report["models"][1]["timing"]["decoded"]

    markdown = paths["markdown"].read_text()
    for row in (
        "| nerfacto | RGB |",
        "| relsnerf-r32 | decoded |",
        "| relsnerf-r32 | RGB-NeRF branch |",
        "| relsnerf-tiny | decoded |",
        "| relsnerf-tiny | RGB-NeRF branch |",
    ):
        assert markdown.count(row) == 2, row  # one row in Table 1, one in Table 2
    assert "## Table 1" in markdown and "## Table 2" in markdown
    assert "| FLIP↓ |" in markdown and f"FLIP {MISSING}" not in markdown
    assert "camera optimizer off" in markdown and "measured in one process" in markdown
    assert "relsnerf (SD-VAE, the paper's Ours-SD) was skipped" in markdown
    with Image.open(paths["plot"]) as image:
        image.load()
        assert image.format == "PNG" and image.size[0] > 300
    assert (output / "results" / "timing.json").exists()
    assert list((output / "results").glob("relsnerf-r32_heldout_*.png"))
    # The default inference path matches the plain path on held-out views (on a CPU both are float32).
    for name in ("relsnerf-r32", "relsnerf-tiny"):
        evaluation = json.loads((output / "results" / f"{name}.eval.json").read_text())
        decoded = evaluation["quality"]["decoded"]
        assert decoded["psnr_plain_path"] == pytest.approx(decoded["psnr"], abs=0.01), name
    assert markdown.count("through the plain path (float32, chunked)") == 2
    # Records name the scene and the weights by folder name, never by a path of the machine that measured them.
    for record in (output / "results").glob("*.json"):
        text = record.read_text()
        assert str(Path.home()) not in text and "/tmp/" not in text and str(output) not in text, record.name
    settings = json.loads((output / "results" / "relsnerf-tiny.fit.json").read_text())["settings"]
    assert "/" not in settings["data"] and "/" not in settings["weights"]
    # What the recipe chose is part of the settings: a run cached with other defaults is not taken for this one.
    assert settings["recipe"] == "relsnerf" and settings["decoder_guidance"] == "rgb-depth"
    assert settings["depth_loss_mult"] == 0.0 and settings["latent_loss_mult"] == 1.0
    assert "decoder_guidance" not in json.loads((output / "results" / "nerfacto.fit.json").read_text())["settings"]
    return report


def test_all_trains_evaluates_times_and_reports(all_run):
    output, paths = all_run
    check_report(output, paths)


def test_separate_steps_give_the_same_report(all_run, scene, tmp_path):
    output = tmp_path / "bench"
    # nerfacto in two pieces: a zero time limit stops it after its first step, the same command continues it.
    first = Train(model="nerfacto", time_limit_minutes=0.0, **common(output), **training(scene)).run(shrink)
    assert not first.completed and first.next_step == 1 and first.steps == {"B": 1}
    for name in MODELS:
        record = Train(model=name, **common(output), **training(scene)).run(config_transform=shrink)
        assert record.completed and record.next_step == record.total_steps
    assert record.pieces == 1
    nerfacto = json.loads((output / "results" / "nerfacto.fit.json").read_text())
    assert nerfacto["pieces"] == 2 and nerfacto["steps"] == {"B": 6} and nerfacto["completed"]
    # A finished model with the same settings is not trained again.
    again = Train(model="relsnerf-r32", **common(output), **training(scene)).run(config_transform=shrink)
    assert again.pieces == 1
    for name in MODELS:
        Evaluate(model=name, **common(output), **VIDEO).run()
    paths = Report(**common(output), **VIDEO, **TIMING).run(command="relsnerf-bench report (test)")
    separate = check_report(output, paths)
    combined = json.loads(all_run[1]["json"].read_text())
    assert structure(separate) == structure(combined)
    assert "trained in 2 pieces" in paths["markdown"].read_text()


def test_missing_taef2_weights_fail_before_training(scene, tmp_path, capsys):
    missing = tmp_path / "no_weights"
    output = tmp_path / "bench"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "train",
                "--model",
                "relsnerf-tiny",
                "--data",
                str(scene),
                "--output-dir",
                str(output),
                "--taef2-weights",
                str(missing),
                "--device",
                "cpu",
            ]
        )
    assert exit_info.value.code == 2
    message = " ".join(capsys.readouterr().out.split())
    assert str(missing / "taef2_encoder.pth") in message and "--taef2-weights" in message
    assert "taef2_decoder.pth" in message
    assert not (output / "runs").exists()


def test_cli_help_lists_subcommands_and_documents_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for subcommand in ("train", "evaluate", "time", "report", "all"):
        assert subcommand in text
    with pytest.raises(SystemExit):
        main(["all", "--help"])
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    for option in ("--schedule", "--models", "--sd-vae-weights", "--taef2-weights", "--dataparser", "--spiral-frames"):
        assert option in text, option
    assert "nerfacto trains as many steps as phase B" in text


def test_llff_spiral_circles_the_average_camera():
    # Eight forward-facing cameras on a small grid, all looking along -z.
    c2w = torch.zeros(8, 3, 4)
    c2w[:, :3, :3] = torch.eye(3)
    c2w[:, 0, 3] = torch.linspace(-1, 1, 8)
    c2w[:, 1, 3] = torch.tensor([0.2, -0.2] * 4)
    from nerfstudio.cameras.cameras import Cameras

    cameras = Cameras(camera_to_worlds=c2w, fx=50.0, fy=50.0, cx=32.0, cy=24.0, width=64, height=48)
    points = torch.stack([torch.zeros(100), torch.zeros(100), -torch.linspace(2.0, 10.0, 100)], dim=-1)
    spiral = llff_spiral(cameras, cameras[0:1], num_frames=120, points=points)
    assert len(spiral.cameras) == 120 and spiral.focus_source == "sparse points"
    assert int(spiral.cameras.width[0]) == 64 and int(spiral.cameras.height[0]) == 48
    # LLFF's focus: 1 / (0.25 / (0.9 near) + 0.75 / (5 far)) with near/far the 0.1 / 99.9 percentiles of the depths.
    near, far = float(torch.quantile(torch.linspace(2.0, 10.0, 100), 0.001)), 10.0 - 8.0 * 0.001
    assert spiral.focus_depth == pytest.approx(1 / (0.25 / (0.9 * near) + 0.75 / (5 * far)), rel=1e-3)
    pose = average_pose(c2w)
    positions = spiral.cameras.camera_to_worlds[:, :, 3]
    # The radii are the 90th percentiles of |position| about the average camera; frame 0 is at +x radius.
    assert positions[0, 0] - pose[0, 3] == pytest.approx(spiral.radii[0], abs=1e-5)
    assert (positions[:, 0] - pose[0, 3]).abs().max() <= spiral.radii[0] + 1e-5
    # Every frame looks at the focus point in front of the average camera.
    focus = pose[:, 3] - spiral.focus_depth * pose[:, 2]
    view = -spiral.cameras.camera_to_worlds[:, :, 2]
    towards = torch.nn.functional.normalize(focus - positions, dim=-1)
    assert torch.allclose((view * towards).sum(-1), torch.ones(120), atol=1e-5)
    # Without points the camera axes decide, and parallel axes (forward-facing) fall back to the default depth.
    assert llff_spiral(cameras, cameras[0:1], num_frames=6).focus_source == "default"


def test_the_step_benchmark_times_decoded_frames_of_the_model_it_trained(scene, tmp_path, monkeypatch):
    from relsnerf_ns.benchmark.step import decoded_frame_ms

    from .conftest import tiny_config

    config = tiny_config("relsnerf-r32", scene, tmp_path, (1, 1, 0))
    config.pipeline.model.decoder_guidance = "rgb-depth-surface"
    config.pipeline.model.surface_rays_per_side = 2
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    model = trainer.pipeline.model
    rendered = []
    render = model.render_decoded_outputs
    monkeypatch.setattr(model, "render_decoded_outputs", lambda camera: rendered.append(camera) or render(camera))
    ms = decoded_frame_ms(trainer, "cpu", 2)
    assert ms is not None and 0 < ms < 60_000
    assert not model.training
    # The held-out views (as many as asked for, at most all), warmed up first (the fast path captures a resolution's
    # graph at its second render).
    views = trainer.pipeline.datamanager.eval_dataset.cameras
    timed = rendered[-min(2, len(views)) :]
    assert len(rendered) >= len(timed) + 3
    for index, camera in enumerate(timed):
        torch.testing.assert_close(camera.camera_to_worlds, views[index : index + 1].camera_to_worlds)
    assert rendered[-1].height.item() == 48 and rendered[-1].width.item() == 64
    assert decoded_frame_ms(trainer, "cpu", 0) is None
