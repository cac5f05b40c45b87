"""Training through phases A -> B -> C: switching steps, which parameters move, every method, resuming."""

from __future__ import annotations

import subprocess

import pytest
import torch

from relsnerf_ns.training.phases import Phase

from .conftest import VENV_BIN, tiny_config

GROUPS_PER_PHASE = {
    Phase.AE_PRETRAIN: {"ae_encoder", "ae_decoder"},
    Phase.JOINT: {"proposal_networks", "fields", "latent_field", "ae_decoder", "decoder_guidance"},
    Phase.DISTILL: {"ae_decoder", "decoder_guidance"},
}
"""With the recipe's default decoder guidance, whose adapter trains with the decoder in phases B and C."""


def make_trainer(method, scene, tmp_path, steps=(4, 8, 4)):
    trainer = tiny_config(method, scene, tmp_path, steps).setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def snapshot(trainer):
    return {name: [p.detach().clone() for p in params] for name, params in trainer.optimizers.parameters.items()}


def changed_groups(before, after):
    return {name for name in before if any(not torch.equal(a, b) for a, b in zip(before[name], after[name]))}


def test_phases_switch_at_configured_steps_and_train_only_their_parameters(scene, tmp_path):
    trainer = make_trainer("relsnerf-r32", scene, tmp_path, steps=(2, 3, 2))
    trainer.pipeline.train()
    expected_phases = ["A", "A", "B", "B", "B", "C", "C"]
    for step, phase in enumerate(expected_phases):
        before = snapshot(trainer)
        loss, loss_dict, metrics = trainer.train_iteration(step)
        assert trainer.pipeline.phase.value == phase, step
        assert trainer.pipeline.model.viewer_phase.value.startswith(phase + ":")
        assert metrics["phase"].item() == "ABC".index(phase)
        assert changed_groups(before, snapshot(trainer)) == GROUPS_PER_PHASE[Phase(phase)], (step, phase)
        assert torch.isfinite(loss)
        keys = set(loss_dict)
        if phase == "A":
            assert keys == {"ae_loss"}
        elif phase == "B":
            assert {"rgb_loss", "patch_loss", "distortion_loss", "interlevel_loss"} <= keys
        else:
            assert keys == {"distill_real_loss", "distill_render_loss"}
    # Learning rates follow the phase: NeRF groups at 1e-2 in B, decoder 1e-4 in B and C.
    lrs = {name: opt.param_groups[0]["lr"] for name, opt in trainer.optimizers.optimizers.items()}
    assert lrs["fields"] == 0.0 and lrs["ae_encoder"] == 0.0 and lrs["ae_decoder"] > 0
    # The guidance adapter at ten times the decoder's rate, halving with it in phase C.
    assert lrs["decoder_guidance"] == pytest.approx(10 * lrs["ae_decoder"])


def test_skip_switches_remove_phases(scene, tmp_path):
    config = tiny_config("relsnerf-r32", scene, tmp_path, steps=(3, 2, 3))
    config.pipeline.phases.skip_ae_pretrain = True
    config.pipeline.phases.skip_distill = True
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    assert trainer.config.max_num_iterations == 2
    trainer.train_iteration(0)
    assert trainer.pipeline.phase == Phase.JOINT


@pytest.mark.parametrize("method", ["relsnerf", "relsnerf-r32", "relsnerf-tiny"])
def test_every_method_trains_through_a_b_c(method, scene, tmp_path):
    trainer = make_trainer(method, scene, tmp_path, steps=(2, 4, 2))
    trainer.train()
    assert trainer.step == 7 and trainer.pipeline.phase == Phase.DISTILL
    renders = sorted((trainer.base_dir / "distill_renders").glob("render_*.png"))
    assert len(renders) == 3
    checkpoint = trainer.checkpoint_dir / "step-000000007.ckpt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # loads under torch's safe default
    assert state["step"] == 7
    assert state["pipeline"]["_model._extra_state"]["model"] == "RelsNerfModel"
    trainer.pipeline.eval()
    camera, batch = trainer.pipeline.datamanager.next_eval_image(0)
    outputs = trainer.pipeline.model.get_outputs_for_camera(camera)
    metrics, _ = trainer.pipeline.model.get_image_metrics_and_images(outputs, batch)
    assert {"psnr", "ssim", "psnr_rgb_nerf", "ssim_rgb_nerf"} <= set(metrics)


def test_resume_mid_phase_continues_in_that_phase(scene, tmp_path):
    first = tiny_config("relsnerf-r32", scene, tmp_path / "a", steps=(2, 4, 2))
    first.steps_per_save = 3
    first.save_only_latest_checkpoint = False
    trainer = first.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    saved = torch.load(trainer.checkpoint_dir / "step-000000003.ckpt", map_location="cpu", weights_only=True)

    second = tiny_config("relsnerf-r32", scene, tmp_path / "b", steps=(2, 4, 2))
    second.load_dir = trainer.checkpoint_dir
    second.load_step = 3
    resumed = second.setup(local_rank=0, world_size=1)
    resumed.setup()
    assert resumed._start_step == 4 and resumed.config.max_num_iterations == 4
    # Parameters and learning rates are those of the checkpoint (phase B, step 3).
    for key, value in saved["pipeline"].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(resumed.pipeline.state_dict()[key], value)
    for name, optimizer in resumed.optimizers.optimizers.items():
        expected = saved["optimizers"][name]["param_groups"][0]["lr"]
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected), name
    resumed.train_iteration(4)
    assert resumed.pipeline.phase == Phase.JOINT
    resumed.train()
    assert resumed.step == 7
    # Phase C reused the renders of the run it resumed instead of making them again.
    assert resumed.pipeline.config.distill_render_dir == trainer.base_dir / "distill_renders"


def test_resume_with_another_autoencoder_fails_clearly(scene, tmp_path):
    first = tiny_config("relsnerf-r32", scene, tmp_path / "a", steps=(1, 2, 0))
    trainer = first.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    other = tiny_config("relsnerf-tiny", scene, tmp_path / "b", steps=(1, 2, 0))
    other.load_dir = trainer.checkpoint_dir
    resumed = other.setup(local_rank=0, world_size=1)
    with pytest.raises(RuntimeError, match="R32Autoencoder"):
        resumed.setup()


@pytest.mark.parametrize("method", ["relsnerf", "relsnerf-r32", "relsnerf-tiny"])
def test_ns_train_help_documents_the_options(method):
    result = subprocess.run([str(VENV_BIN / "ns-train"), method, "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    for option in (
        "--pipeline.phases.preset",
        "--pipeline.phases.skip-distill",
        "--pipeline.num-distill-renders",
        "--pipeline.datamanager.latent-patch-size",
        "--pipeline.model.patch-loss-mult",
        "--pipeline.model.autoencoder.",
        "--max-consecutive-nonfinite-steps",
        "--pipeline.model.decode-tile-halo",
        "--deterministic",
    ):
        assert option in text, option
    assert "skip phase C" in text and "gamma of eq. 4" in text  # field docstrings reach --help
    unboxed = " ".join(result.stdout.replace("│", " ").split())
    assert "After this many such steps in a row the run stops, naming the phase and step" in unboxed
    assert "an interrupted run resumed with --load-dir (this flag set again), then end with bit-identical" in unboxed


IMPORT_CHECK = """
import sys
import nerfstudio.plugins.registry as methods, nerfstudio.plugins.registry_dataparser as dataparsers
methods.discover_methods = dataparsers.discover_dataparsers = lambda: ({}, {})
import nerfstudio.configs.method_configs  # what every ns-* command imports, here without its plugins
before = set(sys.modules)
import relsnerf_ns.relsnerf_config, relsnerf_ns.data.llff_dataparser  # the plugin's entry points
print(sorted({name.split(".")[0] for name in set(sys.modules) - before}))
"""


def test_the_plugin_imports_nothing_that_nerfstudio_does_not_import_already():
    """nerfstudio imports every plugin's entry points for every ns-* command: heavy modules (torchmetrics, diffusers)
    are imported where they are used, so that loading the plugin costs only its own modules (~0.1 s)."""
    result = subprocess.run([str(VENV_BIN / "python"), "-c", IMPORT_CHECK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "['relsnerf_ns']", result.stdout
