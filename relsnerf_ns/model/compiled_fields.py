"""torch.compile for the fields' sample evaluations in training (`--pipeline.model.compile-training`).

A phase-B step on a GPU is bound by launching kernels, not by running them: under the profiler it spends most of its
host time issuing nerfacto's many small tensor operations (hash-grid encodings, MLPs, activations, dtype casts) for
the proposal networks and the field, forward and backward. torch.compile fuses the operations of each evaluation
into a few generated kernels. Only the per-sample evaluations are compiled (the field's `get_density`,
`get_outputs` and `get_latent`, each proposal network's `get_density`): their shapes are fixed in training (the same
rays and samples every step), so each compiles once; the sampler, renderers and losses around them stay eager.

The compiled functions run only while the module trains with gradients on. Rendering for the viewer, evaluation and
phase C's no-grad renders keep the eager functions: their ray counts vary from frame to frame, and the fast
inference path has its own CUDA graphs. The compiled and the eager evaluations compute the same values (checked on
the CPU in tests/test_compiled_fields.py); parameters, state dicts and checkpoints do not change.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

FIELD_METHODS = ("get_density", "get_outputs", "get_latent")
PROPOSAL_METHODS = ("get_density",)


class CompiledInTraining:
    """Stands in for `module.<name>`: the compiled method while `module` trains with gradients on, the eager one
    otherwise. Compiles on first use (on the device the module then lives on)."""

    def __init__(self, module: nn.Module, name: str, backend: str) -> None:
        self.module = module
        self.name = name
        self.backend = backend
        self.eager: Callable[..., Any] = getattr(type(module), name).__get__(module)
        self._compiled: Optional[Callable[..., Any]] = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not (self.module.training and torch.is_grad_enabled()):
            return self.eager(*args, **kwargs)
        if self._compiled is None:
            # Static shapes: a training step evaluates the same number of samples every step.
            self._compiled = torch.compile(self.eager, backend=self.backend, dynamic=False)
        return self._compiled(*args, **kwargs)

    def __deepcopy__(self, memo: Dict[int, Any]) -> "CompiledInTraining":
        # A copy of the model gets its own wrapper around its own module (compiled anew on its first use).
        return CompiledInTraining(copy.deepcopy(self.module, memo), self.name, self.backend)


def compile_in_training(module: nn.Module, names: Tuple[str, ...], backend: str) -> int:
    """Replace each method `names` of `module` (an instance attribute shadowing the class's) by its compiled form for
    training. Returns how many were replaced."""
    for name in names:
        setattr(module, name, CompiledInTraining(module, name, backend))
    return len(names)


def compile_sample_evaluations(model: nn.Module, backend: str = "inductor") -> int:
    """Compile the field's and every proposal network's per-sample evaluations for training (see the module
    docstring). Returns the number of methods replaced."""
    count = compile_in_training(model.field, FIELD_METHODS, backend)
    for network in model.proposal_networks:
        count += compile_in_training(network, PROPOSAL_METHODS, backend)
    return count
