"""Interrupting a run (SIGINT) in phase A, B or C and resuming it with --load-dir gives the uninterrupted run.

Phase, step, learning rate at every step and the final parameters are compared with an uninterrupted run of the same
seed, all with `--deterministic True` (bit-identical parameters on the CPU). The resumed process is seeded as ns-train
seeds it (the seed also fixes the order in which nerfstudio caches the training images); its generators then stand
where set-up leaves them, so only the states saved in the checkpoint make it draw the rays, patches and crops that the
uninterrupted run drew after the interrupted step.
"""

from __future__ import annotations

import random
import signal

import numpy as np
import pytest
import torch

from relsnerf_ns.training.phases import Phase
from relsnerf_ns.training.relsnerf_trainer import TrainingInterrupted

from .conftest import tiny_config

STEPS = (2, 4, 2)  # A: 0-1, B: 2-5, C: 6-7
LAST_STEP = sum(STEPS) - 1


@pytest.fixture(autouse=True, scope="module")
def restore_deterministic_mode():
    """`--deterministic True` (the trainers here) switches torch's deterministic algorithms on for the whole process:
    switch them back off for the other test modules."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(previous[0])
    torch.backends.cudnn.benchmark = previous[1]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_trainer(scene, output, load_dir=None, seed=7):
    config = tiny_config("relsnerf-r32", scene, output, STEPS)
    # Bit-reproducible runs: the CPU hash-grid backward accumulates in a thread-dependent order otherwise, and Adam
    # (eps 1e-15) turns that noise into visible differences in parameters whose gradient is ~0 (biases before an
    # instance norm).
    config.deterministic = True
    config.save_only_latest_checkpoint = False
    config.load_dir = load_dir
    seed_everything(seed)  # what ns-train does before set-up
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def watch(trainer):
    """Per step: the learning rates the step trains with and the phase it ran in."""
    rates, phases = {}, {}
    iteration = trainer.train_iteration

    def spy(step):
        rates[step] = {name: opt.param_groups[0]["lr"] for name, opt in trainer.optimizers.optimizers.items()}
        result = iteration(step)
        phases[step] = trainer.pipeline.phase
        return result

    trainer.train_iteration = spy
    return rates, phases


def parameters(trainer):
    return {k: v.detach().clone() for k, v in trainer.pipeline.state_dict().items() if isinstance(v, torch.Tensor)}


@pytest.fixture(scope="module")
def uninterrupted(scene, tmp_path_factory):
    torch.use_deterministic_algorithms(False)  # the flag, not an earlier test, turns them on
    trainer = new_trainer(scene, tmp_path_factory.mktemp("uninterrupted"))
    assert torch.are_deterministic_algorithms_enabled()
    rates, phases = watch(trainer)
    trainer.train()
    assert trainer.step == LAST_STEP
    return parameters(trainer), rates, phases


@pytest.mark.parametrize("phase, interrupt_at", [("A", 0), ("B", 3), ("C", 6)])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(
    phase, interrupt_at, scene, tmp_path, monkeypatch, uninterrupted
):
    final, reference_rates, reference_phases = uninterrupted
    first = new_trainer(scene, tmp_path / "first")
    get_loss = first.pipeline.get_train_loss_dict

    def press_ctrl_c_during(step):
        if step == interrupt_at:
            signal.raise_signal(signal.SIGINT)
        return get_loss(step)

    monkeypatch.setattr(first.pipeline, "get_train_loss_dict", press_ctrl_c_during)
    with pytest.raises(TrainingInterrupted, match=f"stopped after step {interrupt_at} \\(phase {phase}:") as stopped:
        first.train()
    assert stopped.value.code == 130  # what shells report for a process ended by SIGINT
    # The step in progress was finished and saved; nothing else was written.
    assert [p.name for p in first.checkpoint_dir.glob("*.ckpt")] == [f"step-{interrupt_at:09d}.ckpt"]
    saved = torch.load(first.checkpoint_dir / f"step-{interrupt_at:09d}.ckpt", map_location="cpu", weights_only=True)
    assert {"torch", "numpy", "python"} <= set(saved["resume"]["rng"])
    counters = first.pipeline.resume_state()

    resumed = new_trainer(scene, tmp_path / "resumed", load_dir=first.checkpoint_dir)
    assert resumed._start_step == interrupt_at + 1
    assert resumed.pipeline.resume_state() == counters  # nerfacto's proposal-update counters came back too
    rates, phases = watch(resumed)
    resumed.train()

    assert resumed.step == LAST_STEP
    assert phases[interrupt_at + 1] == Phase(phase)  # continues in the phase it was interrupted in
    assert phases == {s: reference_phases[s] for s in range(interrupt_at + 1, LAST_STEP + 1)}
    for step, step_rates in rates.items():
        assert step_rates == pytest.approx(reference_rates[step], rel=1e-12), step
    after = parameters(resumed)
    assert set(after) == set(final)
    for key, value in final.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    if phase == "C":  # the renders made before the interruption were reused, not made again
        assert resumed.pipeline.config.distill_render_dir == first.base_dir / "distill_renders"
