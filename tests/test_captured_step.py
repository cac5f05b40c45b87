"""Phase B's step replayed as a CUDA graph (--captured-joint-step): what it keys its graphs on, how it refills their
inputs, when it stays off, and (on a GPU) that a replay gives the eager step's losses and gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from relsnerf_ns.model.train_batches import AutoencoderBatch, JointBatch
from relsnerf_ns.training.captured_step import (
    AGREEMENT,
    CapturedJointStep,
    batch_signature,
    copy_into,
    loss_disagreement,
    proposal_update_due,
    static_copy,
    tensor_leaves,
)
from relsnerf_ns.training.phases import Phase

from .conftest import tiny_config


def joint_trainer(scene, tmp_path, device="cpu", **settings):
    config = tiny_config("relsnerf-r32", scene, tmp_path, steps=(1, 20, 1))
    config.machine.device_type = device
    for key, value in settings.items():
        setattr(config, key, value)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.pipeline.train()
    trainer.train_iteration(0)  # phase A
    assert trainer.pipeline.schedule.phase_at(1) == Phase.JOINT
    return trainer


def tensor_leaves_list(value):
    return list(tensor_leaves(value))


def test_graphs_are_keyed_on_the_batch_shapes_and_not_on_where_the_patch_was_cropped(scene, tmp_path):
    trainer = joint_trainer(scene, tmp_path)
    first, second = trainer.pipeline.next_train_batch(1), trainer.pipeline.next_train_batch(2)
    patches = first.batch["latent_patch"], second.batch["latent_patch"]
    assert (patches[0].top, patches[0].left, patches[0].camera_index) != (
        patches[1].top,
        patches[1].left,
        patches[1].camera_index,
    ), "the test needs two patches from different places"
    assert batch_signature(first) == batch_signature(second)
    fewer_rays = JointBatch(first.ray_bundle[:-1], first.batch)
    assert batch_signature(fewer_rays) != batch_signature(first)
    other_size = dict(first.batch, latent_patch=dataclasses.replace(patches[0], size=patches[0].size + 8))
    assert batch_signature(JointBatch(first.ray_bundle, other_size)) != batch_signature(first)
    half = JointBatch(first.ray_bundle, dict(first.batch, image=first.batch["image"].half()))
    assert batch_signature(half) != batch_signature(first)


def test_copy_into_refills_the_static_batch_with_the_new_batch_without_aliasing_either(scene, tmp_path):
    trainer = joint_trainer(scene, tmp_path)
    first, second = trainer.pipeline.next_train_batch(1), trainer.pipeline.next_train_batch(2)
    first_values = [t.clone() for t in tensor_leaves_list(first)]
    static = static_copy(first, torch.device("cpu"))
    assert len(tensor_leaves_list(static)) == len(tensor_leaves_list(first)) > 10
    assert all(s is not f for s, f in zip(tensor_leaves_list(static), tensor_leaves_list(first)))
    copy_into(static, second)
    for s, n in zip(tensor_leaves_list(static), tensor_leaves_list(second)):
        assert s is not n and torch.equal(s, n)
    assert any(not torch.equal(a, b) for a, b in zip(first_values, tensor_leaves_list(second))), "batches should differ"
    for kept, now in zip(first_values, tensor_leaves_list(first)):  # the batch copied from is untouched
        assert torch.equal(kept, now)


def test_proposal_update_due_is_the_samplers_own_decision(scene, tmp_path):
    trainer = joint_trainer(scene, tmp_path)
    model = trainer.pipeline.model
    sampler = model.proposal_sampler
    bundle = trainer.pipeline.next_train_batch(1).ray_bundle
    decisions = []
    # Started at least one step after an update, the sampler's counter is back at 0 exactly when it updated.
    for step, since in [(5, 1), (50, 1), (50, 2), (5000, 3), (5000, 9)]:
        sampler._step, sampler._steps_since_update = step, since
        due = proposal_update_due(sampler)
        model.get_outputs(model.collider(bundle))
        assert (sampler._steps_since_update == 0) == due, (step, since)
        decisions.append(due)
    assert decisions == [True, False, True, False, True]


def test_the_captured_step_stays_off_on_the_cpu_and_says_why(scene, tmp_path, capsys):
    trainer = joint_trainer(scene, tmp_path, captured_joint_step=True)
    assert trainer.captured_step is None
    printed = " ".join(capsys.readouterr().out.split())
    assert "--captured-joint-step is off for this run: it needs a CUDA device (this run trains on cpu)" in printed
    # The run trains as without the option.
    loss, loss_dict, _ = trainer.train_iteration(1)
    assert torch.isfinite(loss) and "patch_loss" in loss_dict


def test_a_replayer_on_a_cpu_model_or_another_phase_leaves_the_step_to_the_eager_path(scene, tmp_path):
    trainer = joint_trainer(scene, tmp_path)
    model = trainer.pipeline.model
    replayer = CapturedJointStep(trainer.pipeline.train_loss_dict_for, model, trainer.grad_scaler, False)
    batch = trainer.pipeline.next_train_batch(1)
    assert replayer.ineligible(AutoencoderBatch(torch.zeros(1, 3, 16, 16))) == "not a phase-B batch"
    assert replayer.ineligible(batch) == "CUDA graphs need the model on a CUDA device"
    assert replayer.run(batch) is None and replayer.captures == 0 and not replayer.graphs


def test_a_new_graph_is_used_only_if_its_losses_agree_with_the_eager_pass():
    eager = {"rgb_loss": 0.25, "patch_loss": 0.5}
    close = {"rgb_loss": torch.tensor(0.25 * (1 + AGREEMENT / 2)), "patch_loss": torch.tensor(0.5)}
    assert loss_disagreement(eager, close) is None
    off = {"rgb_loss": torch.tensor(0.25), "patch_loss": torch.tensor(0.5 * (1 + 3 * AGREEMENT))}
    assert loss_disagreement(eager, off) == "patch_loss 0.5015 instead of 0.5"
    missing = {"rgb_loss": torch.tensor(0.25)}
    assert loss_disagreement(eager, missing) == "losses ['rgb_loss'] instead of ['patch_loss', 'rgb_loss']"
    assert (
        loss_disagreement(eager, {**close, "patch_loss": torch.tensor(float("nan"))}) == "patch_loss nan instead of 0.5"
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_replayed_step_gives_the_eager_steps_losses_and_gradients(scene, tmp_path):
    trainer = joint_trainer(scene, tmp_path, device="cuda", captured_joint_step=True)
    assert trainer.captured_step is not None
    model = trainer.pipeline.model
    # Without the samplers' random jitter, so that both paths sample the same points.
    model.proposal_sampler.initial_sampler.train_stratified = False
    model.proposal_sampler.pdf_sampler.train_stratified = False
    model.proposal_sampler.set_anneal(0.7)
    replayer = trainer.captured_step
    for step in (1, 2, 3):
        batch = trainer.pipeline.next_train_batch(step)
        sampler_state = (model.proposal_sampler._steps_since_update, model.proposal_sampler._step)
        model.zero_grad(set_to_none=True)
        _, eager_losses, _ = trainer.pipeline.train_loss_dict_for(batch)
        sum(eager_losses.values()).backward()
        eager_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        model.proposal_sampler._steps_since_update, model.proposal_sampler._step = sampler_state
        model.zero_grad(set_to_none=True)
        replayed = replayer.run(batch)
        assert replayed is not None and replayer.failure is None, replayer.failure
        _, losses, _ = replayed
        assert losses.keys() == eager_losses.keys()
        for name, value in losses.items():
            torch.testing.assert_close(value, eager_losses[name], rtol=1e-4, atol=1e-7, msg=name)
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        assert grads.keys() == eager_grads.keys(), step
        for name, grad in grads.items():
            torch.testing.assert_close(grad, eager_grads[name], rtol=1e-3, atol=1e-6, msg=name)
        model.proposal_sampler.step_cb(step)
    assert replayer.captures >= 1 and replayer.replays == 3
    replayer.release()
    assert not replayer.graphs and all(p.grad is None for p in model.parameters())
