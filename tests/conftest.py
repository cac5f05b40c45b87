"""Shared fixtures: a procedural scene and tiny configurations (CPU, seconds per run)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from nerfstudio.cameras.cameras import Cameras  # noqa: E402
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig  # noqa: E402
from nerfstudio.data.scene_box import SceneBox  # noqa: E402

from relsnerf_ns.demo_scene import write_demo_scene  # noqa: E402
from relsnerf_ns.relsnerf_config import relsnerf, relsnerf_r32, relsnerf_tiny  # noqa: E402

VENV_BIN = Path(sys.executable).parent
METHODS = {"relsnerf": relsnerf, "relsnerf-r32": relsnerf_r32, "relsnerf-tiny": relsnerf_tiny}

# Tiny field, rays and autoencoders: the same settings in-process (apply_tiny) and on the command line (TINY_ARGS).
TINY_MODEL = dict(
    num_levels=4,
    max_res=128,
    log2_hashmap_size=12,
    hidden_dim=16,
    hidden_dim_color=16,
    num_proposal_samples_per_ray=(32, 16),
    num_nerf_samples_per_ray=16,
    latent_num_levels=4,
    latent_max_res=128,
    latent_log2_hashmap_size=12,
    latent_hidden_dim=16,
    implementation="torch",
)
TINY_DATA = dict(
    train_num_rays_per_batch=256,
    eval_num_rays_per_batch=256,
    latent_patch_size=4,
    ae_crop_size=64,
    ae_batch_size=2,
    distill_crop_size=64,
    depth_rays_per_batch=64,
)
TINY_AE = {
    "relsnerf": dict(init="random", block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4),
    "relsnerf-r32": dict(encoder_widths=(8, 16, 16, 32, 32), decoder_widths=(32, 32, 16, 16, 8), latent_channels=8),
    "relsnerf-tiny": dict(init="random", width=16, latent_channels=8),
}


def _flag(prefix: str, name: str, value) -> list:
    flag = f"--{prefix}.{name.replace('_', '-')}"
    return [flag, *map(str, value)] if isinstance(value, tuple) else [flag, str(value)]


def tiny_cli_args(method: str) -> list:
    args = []
    for k, v in TINY_MODEL.items():
        args += _flag("pipeline.model", k, v)
    for k, v in TINY_DATA.items():
        args += _flag("pipeline.datamanager", k, v)
    for k, v in TINY_AE[method].items():
        args += _flag("pipeline.model.autoencoder", k, v)
    return args + ["--pipeline.num-distill-renders", "3", "--machine.device-type", "cpu", "--vis", "tensorboard"]


def tiny_config(method: str, scene: Path, output: Path, steps=(4, 8, 4)):
    """A deep copy of a registered method's config with tiny settings and a short A/B/C schedule."""
    config = copy.deepcopy(METHODS[method].config)
    model, data = config.pipeline.model, config.pipeline.datamanager
    for k, v in TINY_MODEL.items():
        setattr(model, k, v)
    for k, v in TINY_DATA.items():
        setattr(data, k, v)
    for k, v in TINY_AE[method].items():
        setattr(model.autoencoder, k, v)
    data.dataparser = NerfstudioDataParserConfig(data=scene)
    data.data = scene
    config.data = scene
    config.pipeline.num_distill_renders = 3
    config.pipeline.phases.ae_pretrain_steps, config.pipeline.phases.joint_steps = steps[0], steps[1]
    config.pipeline.phases.distill_steps = steps[2]
    config.machine.device_type = "cpu"
    config.machine.seed = 7
    config.mixed_precision = False
    config.vis = "tensorboard"
    config.output_dir = output
    config.timestamp = "run"
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**6
    config.steps_per_save = 10**6
    return config


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> Path:
    return write_demo_scene(tmp_path_factory.mktemp("scene"), width=64, height=48, num_views=10)


@pytest.fixture(scope="session")
def trained_run(scene, tmp_path_factory) -> Path:
    """One relsnerf-r32 run through A -> B -> C with the real `ns-train` command; returns its config.yml."""
    output = tmp_path_factory.mktemp("runs")
    command = [
        str(VENV_BIN / "ns-train"),
        "relsnerf-r32",
        "--output-dir",
        str(output),
        "--experiment-name",
        "cli",
        "--timestamp",
        "run",
        "--pipeline.phases.ae-pretrain-steps",
        "3",
        "--pipeline.phases.joint-steps",
        "8",
        "--pipeline.phases.distill-steps",
        "3",
        "--steps-per-eval-image",
        "1000",
        "--steps-per-eval-batch",
        "1000",
        *tiny_cli_args("relsnerf-r32"),
        "nerfstudio-data",
        "--data",
        str(scene),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = output / "cli" / "relsnerf-r32" / "run" / "config.yml"
    assert config.exists()
    return config


@pytest.fixture()
def model():
    """A tiny relsnerf-r32 model (random R32 autoencoder) on the CPU, seeded."""
    torch.manual_seed(0)
    config = copy.deepcopy(relsnerf_r32.config.pipeline.model)
    for k, v in TINY_MODEL.items():
        setattr(config, k, v)
    for k, v in TINY_AE["relsnerf-r32"].items():
        setattr(config.autoencoder, k, v)
    scene_box = SceneBox(aabb=torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]]))
    return config.setup(scene_box=scene_box, num_train_data=4, metadata={}, device="cpu")


def camera(width=64, height=48, n=1) -> Cameras:
    """`n` identical pinhole cameras 3 units in front of the origin, looking at it."""
    c2w = torch.eye(4)[:3].clone()
    c2w[2, 3] = 3.0
    return Cameras(
        camera_to_worlds=c2w[None].repeat(n, 1, 1),
        fx=60.0,
        fy=60.0,
        cx=width / 2,
        cy=height / 2,
        width=width,
        height=height,
    )


def reached_groups(model, loss: torch.Tensor) -> set:
    """The model's parameter groups that `loss` gives a non-zero gradient (gradients cleared first)."""
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {
        name
        for name, params in model.get_param_groups().items()
        if any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    }


def phase_losses(trainer, steps) -> dict:
    """Train `steps` (in training mode) and collect, per phase, the names of the losses its steps computed."""
    trainer.pipeline.train()
    losses: dict = {}
    for step in steps:
        _, loss_dict, _ = trainer.train_iteration(step)
        losses.setdefault(trainer.pipeline.phase, set()).update(loss_dict)
    return losses
