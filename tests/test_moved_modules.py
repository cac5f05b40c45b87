"""Runs trained with the flat layout (config.yml naming `relsnerf_ns.relsnerf_model...`) load into today's classes."""

from __future__ import annotations

import re

import torch
import yaml
from nerfstudio.utils.eval_utils import eval_setup

from relsnerf_ns.data.llff_dataparser import LLFFDataParserConfig
from relsnerf_ns.model.relsnerf_model import RelsNerfModel, RelsNerfModelConfig
from relsnerf_ns.moved_modules import MOVED_MODULES
from relsnerf_ns.training.phases import PhaseScheduleConfig
from relsnerf_ns.training.relsnerf_pipeline import RelsNerfPipeline
from relsnerf_ns.training.relsnerf_trainer import RelsNerfTrainerConfig
from relsnerf_ns.training.schedulers import PhasedSchedulerConfig

from .conftest import tiny_config


def as_flat_layout(text: str) -> str:
    """A config.yml as the flat layout wrote it: every moved module under its old path."""
    for old, new in MOVED_MODULES.items():
        text = re.sub(re.escape(new) + r"(?=[.:\s'])", old, text)
    return text


def test_a_config_yml_of_the_flat_layout_loads_with_its_checkpoint_into_the_new_classes(scene, tmp_path):
    trainer = tiny_config("relsnerf-r32", scene, tmp_path, steps=(1, 1, 0)).setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.config.save_config()
    trainer.train()
    config_path = trainer.base_dir / "config.yml"
    old_text = as_flat_layout(config_path.read_text())
    for old in ("relsnerf_model.RelsNerfModelConfig", "relsnerf_pipeline.RelsNerfPipeline", "phases.PhaseSchedule"):
        assert f"relsnerf_ns.{old}" in old_text  # the file really names the old paths
    assert "relsnerf_ns.model." not in old_text and "relsnerf_ns.training." not in old_text
    config_path.write_text(old_text)

    config, pipeline, _, step = eval_setup(config_path, test_mode="test")
    assert step == 1
    assert type(config) is RelsNerfTrainerConfig
    assert type(config.pipeline.model) is RelsNerfModelConfig
    assert type(config.pipeline.phases) is PhaseScheduleConfig
    assert all(type(group["scheduler"]) is PhasedSchedulerConfig for group in config.optimizers.values())
    assert type(pipeline) is RelsNerfPipeline and type(pipeline.model) is RelsNerfModel
    trained = trainer.pipeline.model.state_dict()
    for key, value in pipeline.model.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value.cpu(), trained[key].cpu()), key


def test_every_old_path_gives_the_moved_module_names():
    import importlib

    for old, new in MOVED_MODULES.items():
        alias, moved = importlib.import_module(old), importlib.import_module(new)
        public = [name for name in vars(moved) if not name.startswith("_")]
        assert public and all(getattr(alias, name) is getattr(moved, name) for name in public), old
    # The dataparser's entry point of installs made before the move.
    spec = importlib.import_module("relsnerf_ns.llff_dataparser").llff_dataparser
    assert isinstance(spec.config, LLFFDataParserConfig)
    loaded = yaml.load("!!python/name:relsnerf_ns.relsnerf_model.RelsNerfModel ''", Loader=yaml.Loader)
    assert loaded is RelsNerfModel


def test_old_command_paths_run_the_moved_commands():
    import subprocess
    import sys

    # Each old path runs the moved command itself (its own options), not an empty module as __main__.
    for old, option in (("relsnerf_ns.llff_dataparser", "--check"), ("relsnerf_ns.benchmark_step", "--joint-pass")):
        result = subprocess.run([sys.executable, "-m", old, "--help"], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert option in result.stdout, old
