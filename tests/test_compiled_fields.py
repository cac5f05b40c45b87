"""--pipeline.model.compile-training: a phase-B step with the fields' sample evaluations compiled gives the losses and
gradients of the eager step; rendering outside training stays eager; copies and state dicts are unaffected."""

from __future__ import annotations

import copy

import torch

from relsnerf_ns.model.compiled_fields import CompiledInTraining, compile_sample_evaluations
from relsnerf_ns.model.latent_targets import LatentTargets

from .conftest import camera
from .test_joint_pass import assert_same_step, joint_batch, no_sampling_jitter, step, with_density

# Tracing reorders no arithmetic with the 'aot_eager' backend (the same aten operations run), so the values agree to
# float32 rounding; the tolerance is that of the one-pass test.
RTOL, ATOL = 1e-5, 1e-6


def test_compiled_step_gives_the_losses_and_gradients_of_the_eager_step(model):
    model.train()
    model.latent_targets = LatentTargets([torch.randn(8, 6, 8)])
    model.config.depth_loss_mult = 0.1
    no_sampling_jitter(model)
    compiled = copy.deepcopy(model)
    replaced = compile_sample_evaluations(compiled, backend="aot_eager")
    with_density(model)
    with_density(compiled)  # the same steps, the second compiled: the CPU's arithmetic is deterministic
    assert replaced == 3 + len(compiled.proposal_networks)
    assert isinstance(vars(compiled.field)["get_density"], CompiledInTraining)
    assert "get_density" not in vars(model.field)  # the original is left eager

    eager_losses, eager_grads = step(model, joint_batch(with_depth=True, num_patches=2))
    torch._dynamo.utils.counters.clear()
    for _ in range(2):  # the second step runs the cached graphs
        compiled.zero_grad(set_to_none=True)
        compiled_step = step(compiled, joint_batch(with_depth=True, num_patches=2))
        assert_same_step(compiled_step, (eager_losses, eager_grads), rtol=RTOL, atol=ATOL)
    wrapper = vars(compiled.field)["get_density"]
    assert wrapper._compiled is not None  # it did run compiled: graphs were traced, once (static shapes)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 4, dict(torch._dynamo.utils.counters["stats"])
    assert compiled.state_dict().keys() == model.state_dict().keys()


def test_outside_training_the_eager_methods_run_and_copies_wrap_their_own_module(model):
    compile_sample_evaluations(model, backend="aot_eager")
    rays = camera().generate_rays(camera_indices=0, keep_shape=False)[:16]
    model.eval()
    with torch.no_grad():
        model(rays)
    for module in [model.field, *model.proposal_networks]:
        assert vars(module)["get_density"]._compiled is None  # never compiled: evaluation is eager
    copied = copy.deepcopy(model)
    wrapper = vars(copied.field)["get_density"]
    assert wrapper.module is copied.field and wrapper.eager.__self__ is copied.field
