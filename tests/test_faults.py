"""Faults in training: non-finite losses, checkpoint writes that fail midway or on a full disk, partial checkpoints of
killed saves, signals (exit status, console), mismatched checkpoints."""

from __future__ import annotations

import copy
import errno
import io
import os
import re
import signal
import subprocess
import time

import pytest
import torch

import relsnerf_ns.training.relsnerf_trainer as trainer_module
from relsnerf_ns.known_warnings import KNOWN_HARMLESS
from relsnerf_ns.model.relsnerf_model import CheckpointMismatchError
from relsnerf_ns.training.relsnerf_trainer import CheckpointWriteError, NonFiniteLossError, temporary_checkpoint_path

from .conftest import TINY_MODEL, VENV_BIN, tiny_cli_args, tiny_config


def make_trainer(scene, output, steps, method="relsnerf-r32", **settings):
    config = tiny_config(method, scene, output, steps)
    for key, value in settings.items():
        setattr(config, key, value)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def training_state(trainer):
    """Parameters, optimizer states, learning rates, scheduler positions and grad scale, copied."""
    return {
        "parameters": {
            k: v.detach().clone() for k, v in trainer.pipeline.model.state_dict().items() if torch.is_tensor(v)
        },
        "optimizers": {k: copy.deepcopy(o.state_dict()) for k, o in trainer.optimizers.optimizers.items()},
        "schedulers": {k: s.last_epoch for k, s in trainer.optimizers.schedulers.items()},
        "scale": trainer.grad_scaler.get_scale(),
    }


def assert_same_state(a, b):
    assert a["schedulers"] == b["schedulers"] and a["scale"] == b["scale"]
    for key, value in a["parameters"].items():
        assert torch.equal(value, b["parameters"][key]), key
    for name, state in a["optimizers"].items():
        other = b["optimizers"][name]
        assert state["param_groups"] == other["param_groups"], name
        assert state["state"].keys() == other["state"].keys(), name
        for index, entry in state["state"].items():
            for key, value in entry.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(other["state"][index][key])), (name, key)


def poison(trainer, monkeypatch, bad_steps):
    """Make the loss (or only the gradients, keeping the loss finite) of chosen steps NaN or infinite."""
    get_loss = trainer.pipeline.get_train_loss_dict
    decoder_weight = next(trainer.pipeline.model.autoencoder.decoder.parameters())

    def poisoned(step):
        outputs, loss_dict, metrics = get_loss(step)
        kind = bad_steps.get(step)
        name = next(iter(loss_dict))
        if kind == "nan":
            loss_dict[name] = loss_dict[name] * float("nan")
        elif kind == "inf":
            loss_dict[name] = loss_dict[name] + float("inf")
        elif kind == "nan-gradient":  # sqrt'(0) * 0: the loss stays finite (0 added), the gradient is NaN
            loss_dict["poison"] = torch.sqrt((decoder_weight * 0).sum())
        return outputs, loss_dict, metrics

    monkeypatch.setattr(trainer.pipeline, "get_train_loss_dict", poisoned)


def test_nonfinite_steps_are_skipped_and_too_many_in_a_row_stop_with_the_last_good_checkpoint(
    scene, tmp_path, monkeypatch
):
    trainer = make_trainer(scene, tmp_path, (2, 4, 2), max_consecutive_nonfinite_steps=3)
    # Step 2 (phase B): NaN gradient, finite loss; then training recovers at step 3; steps 4-6 fail in a row.
    bad = {2: "nan-gradient", 4: "nan", 5: "inf", 6: "nan"}
    poison(trainer, monkeypatch, bad)
    states = {}
    iteration = trainer.train_iteration

    def record(step):
        before = training_state(trainer)
        try:
            return iteration(step)
        finally:
            states[step] = (before, training_state(trainer))

    trainer.train_iteration = record
    with pytest.raises(NonFiniteLossError) as stopped:
        trainer.train()
    assert sorted(states) == list(range(7))  # stopped at step 6, the third bad one in a row
    for step in bad:  # nothing of a bad step was applied
        assert_same_state(*states[step])
    before, after = states[3]
    assert any(not torch.equal(v, after["parameters"][k]) for k, v in before["parameters"].items())
    message = " ".join(str(stopped.value).split())
    assert "phase C: decoder distillation at step 6" in message and "(4-6)" in message
    assert "last good state (step 3, phase B: joint NeRF fitting)" in message
    assert "--max-consecutive-nonfinite-steps 3" in message
    # The last good state is on disk, under its own step, loadable with torch's safe loader.
    assert [p.name for p in trainer.checkpoint_dir.glob("*.ckpt")] == ["step-000000003.ckpt"]
    saved = torch.load(trainer.checkpoint_dir / "step-000000003.ckpt", map_location="cpu", weights_only=True)
    assert saved["step"] == 3
    for key, value in training_state(trainer)["parameters"].items():
        assert torch.equal(saved["pipeline"][f"_model.{key}"], value), key
    # ... with the random generators as they were when step 4 began, not as the failed steps left them.
    assert torch.equal(saved["resume"]["rng"]["torch"], trainer._state_before_streak["rng"]["torch"])
    assert not torch.equal(saved["resume"]["rng"]["torch"], torch.get_rng_state())


def test_with_a_grad_scaler_its_skipped_steps_count_and_a_nonfinite_loss_keeps_the_scale(scene, tmp_path, monkeypatch):
    """Mixed precision on CUDA: the grad scaler skips steps with non-finite gradients itself (here on the CPU)."""
    trainer = make_trainer(scene, tmp_path, (3, 1, 0), max_consecutive_nonfinite_steps=2)
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    poison(trainer, monkeypatch, {1: "nan-gradient", 2: "nan"})
    trainer.pipeline.train()
    trainer.train_iteration(0)
    before = training_state(trainer)
    trainer.train_iteration(1)  # NaN gradients in the decoder: no group is updated (not even the encoder), scale halved
    after = training_state(trainer)
    assert after["scale"] == before["scale"] / 2
    before["scale"] = after["scale"]
    assert_same_state(before, after)
    with pytest.raises(NonFiniteLossError, match="step 2"):
        trainer.train_iteration(2)  # NaN loss: skipped before the scaler sees it, scale unchanged
    assert trainer.grad_scaler.get_scale() == after["scale"]
    assert [p.name for p in trainer.checkpoint_dir.glob("*.ckpt")] == ["step-000000000.ckpt"]


def test_a_finite_step_under_a_grad_scaler_applies_the_unscaled_update_and_steps_the_schedulers(scene, tmp_path):
    """The guard replaces the scaler's per-group step (and its host waits): a finite step updates every group as
    without a scaler (a power-of-two scale unscales exactly), steps the schedulers and counts towards the scale's
    growth."""
    states = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)):
        torch.manual_seed(0)  # the same initial weights and batches in both runs
        trainer = make_trainer(scene, tmp_path / str(scaler is None), (2, 2, 0))
        if scaler is not None:
            trainer.grad_scaler = scaler
        trainer.pipeline.train()
        trainer.train_iteration(0)
        trainer.train_iteration(2)  # phase B
        states.append(training_state(trainer))
    plain, scaled = states
    assert scaled["scale"] == 1024.0 * 4  # grown after each of the two finite steps (growth_interval 1)
    assert scaled["schedulers"] == plain["schedulers"] and max(plain["schedulers"].values()) > 0
    for key, value in plain["parameters"].items():
        torch.testing.assert_close(scaled["parameters"][key], value, rtol=1e-6, atol=1e-7, msg=lambda m: f"{key}: {m}")


@pytest.fixture(scope="module")
def saver(scene, tmp_path_factory):
    """One tiny trainer for the checkpoint-writing tests; each points it at a checkpoint folder of its own."""
    return make_trainer(scene, tmp_path_factory.mktemp("saver"), (1, 1, 0), save_only_latest_checkpoint=True)


def checkpoint_folder(trainer, tmp_path):
    trainer.checkpoint_dir = tmp_path / "run" / "nerfstudio_models"
    return trainer.checkpoint_dir


def test_a_checkpoint_write_that_fails_midway_leaves_the_previous_checkpoint_intact(saver, tmp_path, monkeypatch):
    folder = checkpoint_folder(saver, tmp_path)
    saver.save_checkpoint(0)
    previous = folder / "step-000000000.ckpt"
    intact = previous.read_bytes()
    real_save = torch.save

    def interrupted_save(state, file, *args, **kwargs):  # Ctrl-C halfway through the write
        real_save(state, file, *args, **kwargs)
        file.truncate(file.tell() // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        saver.save_checkpoint(1)
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in folder.iterdir()] == ["step-000000000.ckpt"]
    assert previous.read_bytes() == intact
    assert not list(tmp_path.rglob("*.tmp"))
    assert torch.load(previous, map_location="cpu", weights_only=True)["step"] == 0


def fill_the_disk_after(monkeypatch, budget: int) -> None:
    """Files the trainer module opens take `budget` bytes, then fail as on a full disk (ENOSPC)."""

    class FullDisk(io.FileIO):
        def write(self, data):
            nonlocal budget
            if len(data) > budget:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            budget -= len(data)
            return super().write(data)

    monkeypatch.setattr(trainer_module, "open", lambda path, mode="r": FullDisk(path, mode), raising=False)


def test_a_full_disk_while_saving_says_so_in_one_message_and_keeps_the_previous_checkpoint(
    saver, tmp_path, monkeypatch
):
    folder = checkpoint_folder(saver, tmp_path)
    saver.save_checkpoint(0)
    previous = folder / "step-000000000.ckpt"
    intact = previous.read_bytes()
    fill_the_disk_after(monkeypatch, budget=len(intact) // 2)  # the disk fills up halfway through the next one
    with pytest.raises(CheckpointWriteError) as error:
        saver.save_checkpoint(1)
    message = str(error.value)
    assert message.startswith(
        f"The disk is full: checkpoint {folder / 'step-000000001.ckpt'} could not be written ([Errno 28] No space left "
        "on device)"
    )
    assert f"The previous checkpoint, {previous}, is intact." in message
    assert "Free some space (a checkpoint of this run takes about" in message
    assert message.endswith(f"then resume from it with --load-dir {folder}.")
    # One message: not torch's "[enforce fail at inline_container.cc] unexpected pos" with the cause in its context.
    assert "inline_container" not in message and error.value.__suppress_context__
    assert [p.name for p in folder.iterdir()] == ["step-000000000.ckpt"] and previous.read_bytes() == intact
    assert not list(tmp_path.rglob("*.tmp"))


def test_partial_checkpoints_of_killed_saves_are_removed_at_the_next_start(saver, scene, tmp_path, capsys):
    folder = checkpoint_folder(saver, tmp_path)
    saver.save_checkpoint(0)
    complete = (folder / "step-000000000.ckpt").read_bytes()
    ended = subprocess.Popen(["true"])
    ended.wait()
    # What saves killed between writing and renaming leave beside the folder (a process that has ended, and a file of
    # an earlier version without a process id), and the file of a save still in progress in another process.
    killed = temporary_checkpoint_path(folder / "step-000000001.ckpt", pid=ended.pid)
    legacy = folder.parent / ".nerfstudio_models.step-000000002.ckpt.tmp"
    in_progress = temporary_checkpoint_path(folder / "step-000000003.ckpt", pid=os.getppid())
    for path in (killed, legacy, in_progress):
        path.write_bytes(complete[:100])
    capsys.readouterr()
    resumed = make_trainer(scene, tmp_path / "next", (1, 1, 0), load_dir=folder)
    out = "".join(capsys.readouterr().out.split())  # (rich wraps long paths anywhere)
    assert "Removed2partialcheckpointfilesofaninterruptedsave:" in out
    assert str(legacy).replace(" ", "") in out and str(killed).replace(" ", "") in out
    assert not killed.exists() and not legacy.exists() and in_progress.exists()
    assert (folder / "step-000000000.ckpt").read_bytes() == complete and resumed._start_step == 1


def test_resume_skips_stray_files_and_an_unreadable_latest_checkpoint(scene, tmp_path, capsys):
    first = make_trainer(scene, tmp_path / "a", (2, 1, 0), save_only_latest_checkpoint=False, steps_per_save=1)
    first.train()  # checkpoints of steps 1 and 2
    # What a kill during a non-atomic write (older nerfstudio runs) leaves: a truncated latest checkpoint; and a
    # stray temporary file that nerfstudio's own step parsing would choke on.
    good = (first.checkpoint_dir / "step-000000002.ckpt").read_bytes()
    (first.checkpoint_dir / "step-000000009.ckpt").write_bytes(good[: len(good) // 3])
    (first.checkpoint_dir / "step-000000010.ckpt.tmp").write_bytes(b"partial")
    capsys.readouterr()
    resumed = make_trainer(scene, tmp_path / "b", (2, 1, 0), load_dir=first.checkpoint_dir)
    out = "".join(capsys.readouterr().out.split())  # (rich wraps long paths anywhere)
    assert "step-000000009.ckptcannotberead" in out and "tryingtheonebeforeit,step-000000002.ckpt" in out
    assert resumed._start_step == 3
    with pytest.raises(FileNotFoundError, match=r"has steps \[1, 2, 9\]"):
        make_trainer(scene, tmp_path / "c", (2, 1, 0), load_dir=first.checkpoint_dir, load_step=5)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_ns_train_stopped_by_a_signal_saves_the_step_in_progress(stop_signal, scene, tmp_path):
    command = [
        str(VENV_BIN / "ns-train"),
        "relsnerf-r32",
        "--output-dir",
        str(tmp_path),
        "--experiment-name",
        "signal",
        "--timestamp",
        "run",
        "--pipeline.phases.ae-pretrain-steps",
        "2",
        "--pipeline.phases.joint-steps",
        "100000",
        "--steps-per-save",
        "100000",
        *tiny_cli_args("relsnerf-r32"),
        "nerfstudio-data",
        "--data",
        str(scene),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )
    lines = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Phase B" in line:  # training is in phase B: stop it there
                time.sleep(1.0)
                process.send_signal(stop_signal)
                break
        output = "".join(lines) + process.communicate(timeout=300)[0]
    finally:
        if process.poll() is None:
            process.kill()
    text = " ".join(output.split())
    name = signal.Signals(stop_signal).name
    assert f"{name}: finishing step" in text and f"{name}: stopped after step" in text, text[-3000:]
    # Status 128 + signal number (130, 143), as shells report for a process ended by the signal; no traceback.
    assert process.returncode == 128 + stop_signal, (process.returncode, text[-3000:])
    assert "Traceback" not in output
    # The console of a run: nerfstudio's and torch's known harmless warnings are silenced (the only warnings left are
    # those nerfstudio prints while importing its own modules, before any plugin code runs).
    for _, message, _, _ in KNOWN_HARMLESS:
        assert not re.search(message, output), message
    assert "Converting a tensor with requires_grad=True to a scalar" not in output
    warnings_left = {line for line in output.splitlines() if re.search(r"\w+Warning: ", line)}
    assert all("torch.cuda.amp.custom_" in line for line in warnings_left), warnings_left
    checkpoints = sorted((tmp_path / "signal" / "relsnerf-r32" / "run" / "nerfstudio_models").glob("*"))
    assert len(checkpoints) == 1 and checkpoints[0].suffix == ".ckpt"
    saved = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert saved["step"] >= 2 and f"stopped after step {saved['step']} (phase B" in text
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_second_signal_stops_at_once_with_the_signals_exit_status(saver, capsys):
    from relsnerf_ns.training.relsnerf_trainer import TrainingInterrupted

    saver._stop_signal = None
    saver._on_stop_signal(signal.SIGTERM, None)  # the first: finish the step, save, stop
    with pytest.raises(TrainingInterrupted) as stopped:
        saver._on_stop_signal(signal.SIGTERM, None)
    assert stopped.value.code == 143 and isinstance(stopped.value, SystemExit)  # not nerfstudio's KeyboardInterrupt
    assert "SIGTERM again: stopped at once; the last saved checkpoint in" in str(stopped.value)
    assert "SIGTERM again" in capsys.readouterr().out
    saver._stop_signal = None


# ---------------------------------------------------------------------------------------------- mismatched checkpoints
@pytest.fixture(scope="module")
def r32_checkpoint(scene, tmp_path_factory):
    trainer = make_trainer(scene, tmp_path_factory.mktemp("r32"), (1, 1, 0))
    trainer.config.save_config()  # config.yml, as ns-train writes it
    trainer.train()
    return trainer.checkpoint_dir


def test_ns_train_load_dir_with_another_autoencoder_fails_naming_both(r32_checkpoint, scene, tmp_path):
    result = subprocess.run(
        [
            str(VENV_BIN / "ns-train"),
            "relsnerf-tiny",
            "--output-dir",
            str(tmp_path),
            "--load-dir",
            str(r32_checkpoint),
            *tiny_cli_args("relsnerf-tiny"),
            "nerfstudio-data",
            "--data",
            str(scene),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    text = " ".join((result.stdout + result.stderr).split())
    assert "CheckpointMismatchError" in text
    assert "trained with relsnerf-r32 (RelsNerfModel, autoencoder R32Autoencoder" in text
    assert "this run is relsnerf-tiny (RelsNerfModel, autoencoder TinyAutoencoder" in text
    assert not list(tmp_path.rglob("*.ckpt"))


def test_eval_style_loading_of_a_mismatched_checkpoint_fails_naming_both(r32_checkpoint):
    """ns-eval / ns-render load through eval_setup -> pipeline.load_pipeline: a config whose autoencoder differs from
    the checkpoint's (same architecture, other widths) fails before anything is copied."""
    from nerfstudio.utils.eval_utils import eval_setup

    def wider_decoder(config):
        config.pipeline.model.autoencoder.decoder_widths = (32, 32, 16, 16, 16)
        return config

    with pytest.raises(CheckpointMismatchError) as error:
        eval_setup(r32_checkpoint.parent / "config.yml", update_config_callback=wider_decoder)
    message = " ".join(str(error.value).split())
    assert "trained with relsnerf-r32" in message and "like this run, but with other sizes" in message
    assert "mis-shaped" in message and "autoencoder.decoder" in message


def test_loading_a_nerfacto_checkpoint_into_relsnerf_fails_clearly(r32_checkpoint, scene, tmp_path):
    from relsnerf_ns.model.offline_nerfacto import OfflineNerfactoModelConfig

    resumed = make_trainer(scene, tmp_path, (1, 1, 0))
    nerfacto = OfflineNerfactoModelConfig(**{k: v for k, v in TINY_MODEL.items() if not k.startswith("latent")})
    model = nerfacto.setup(
        scene_box=resumed.pipeline.datamanager.train_dataset.scene_box, num_train_data=9, metadata={}
    )
    state = {f"_model.{k}": v for k, v in model.state_dict().items()}
    before = {k: v.clone() for k, v in resumed.pipeline.state_dict().items() if torch.is_tensor(v)}
    with pytest.raises(
        CheckpointMismatchError, match="trained with no ReLS-NeRF model \\(e.g. a nerfacto checkpoint\\)"
    ):
        resumed.pipeline.load_pipeline(state, 0)
    for key, value in before.items():  # not a partial load
        assert torch.equal(resumed.pipeline.state_dict()[key], value), key
