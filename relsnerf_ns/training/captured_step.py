"""Phase B's forward and backward captured once as a CUDA graph and replayed (`--captured-joint-step`).

Phase B's step is bound by the host: the device computes for about 15 ms of a 60 ms step, the rest is Python and
kernel launches of nerfstudio's samplers, fields and renderers, and of autograd (docs/results.md). A CUDA graph
records the kernels of one forward and backward pass over a batch held in fixed ("static") tensors; each later step
copies its batch into them and replays the graph: one launch instead of thousands. The optimizers, the finiteness
guard and the schedulers stay as they are (eager), after the replay.

What a replay cannot see, and how each is handled:
- Python values of the batch are baked in at capture. The joint step reads only its tensors, whose shapes must match
  the captured ones (else that step runs eagerly, and a new graph is captured for the new shapes, up to
  `MAX_GRAPHS`); the patch's origin (`camera_index`, `top`, `left`) changes every step and is not read by the loss.
- nerfacto's proposal sampler decides in Python whether its networks get gradients this step (`update_sched`), so
  there is one graph per decision, and its bookkeeping is done here on replay. Its weight-annealing exponent, a
  Python float that changes every step at first, is read from a device tensor in the graph, filled before each
  replay.
- Tensors that the model replaces (L_z's targets when re-encoded) are part of the graph's key: a new one means a new
  capture.
- Each captured backward writes the gradients into buffers of its own graph; after a replay they are attached to the
  parameters again (the trainer zeroes gradients by setting them to None).
- Random numbers (the samplers' jitter) come from the CUDA generator's state at replay time, as in an eager step.

Each new graph is checked once before it is used: its first replay must give the losses of an eager forward pass
over the same batch from the same random state (to `AGREEMENT`). If a capture fails (an operation that synchronises
with the host inside the step, e.g. from a new loss term) or a check does, the run goes on eagerly and says so once.
Everything here is CUDA-only: on other devices `run` returns None.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Iterator, Optional, Tuple

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from relsnerf_ns.model.train_batches import JointBatch
from relsnerf_ns.rendering.fast_render import DeviceConstants, move_plain_tensors

MAX_GRAPHS = 4
"""Graphs kept at once (one per batch shape and proposal-update decision; two in a normal run)."""

WARMUP_PASSES = 2
"""Eager passes on a side stream before a capture (CUDA graphs need the kernels' lazy set-up done first)."""

AGREEMENT = 1e-3
"""Relative difference allowed between a new graph's losses and the eager pass's (the annealing exponent is a device
tensor in the graph and a Python float eagerly; float16 sums may also round differently)."""

UNREAD_BATCH_VALUES = frozenset({"camera_index", "top", "left"})
"""Python values of a phase-B batch that change every step and that the loss does not read (where the latent
patch was cropped): left out of the graph's key."""

StepOutputs = Tuple[Tensor, Dict[str, Tensor], Dict[str, Any]]


def batch_signature(value: Any) -> Hashable:
    """What a captured graph depends on in a batch: each tensor's shape, dtype and device, and the Python values
    (except `UNREAD_BATCH_VALUES`), in a fixed order."""
    if isinstance(value, Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    if isinstance(value, dict):
        return ("dict", tuple((key, batch_signature(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(batch_signature(item) for item in value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            tuple(
                (f.name, batch_signature(getattr(value, f.name)))
                for f in dataclasses.fields(value)
                if f.name not in UNREAD_BATCH_VALUES and not f.name.startswith("_")
            ),
        )
    return ("value", value if isinstance(value, Hashable) else repr(value))


def static_copy(value: Any, device: torch.device) -> Any:
    """A copy of a batch whose tensors are new tensors on `device` (the graph's inputs)."""
    return _map_tensors(value, lambda tensor: tensor.detach().to(device, copy=True))


def copy_into(static: Any, value: Any) -> None:
    """Copy a batch's tensors into the static batch of the same signature (host tensors asynchronously)."""
    for target, source in zip(tensor_leaves(static), tensor_leaves(value)):
        target.copy_(source, non_blocking=True)


def _fields(value: Any) -> Iterator[str]:
    """The fields of a batch dataclass that `_map_tensors` and `tensor_leaves` visit."""
    return (f.name for f in dataclasses.fields(value) if f.init and not f.name.startswith("_"))


def _map_tensors(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {key: _map_tensors(item, fn) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(item, fn) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{name: _map_tensors(getattr(value, name), fn) for name in _fields(value)})
    return value


def tensor_leaves(value: Any) -> Iterator[Tensor]:
    """A batch's tensors, in the order `_map_tensors` rebuilds them (so two batches of one signature pair up)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensor_leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensor_leaves(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for name in _fields(value):
            yield from tensor_leaves(getattr(value, name))


def proposal_update_due(sampler: Any) -> bool:
    """Whether nerfacto's proposal sampler trains its networks this step (its own test, from its state)."""
    return bool(sampler._steps_since_update > sampler.update_sched(sampler._step) or sampler._step < 10)


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    batch: JointBatch
    loss: Tensor
    loss_dict: Dict[str, Tensor]
    metrics: Dict[str, Any]
    grads: Dict[torch.nn.Parameter, Tensor]
    proposal_update: bool
    inputs_kept: Any
    """Objects whose identity is part of the key, kept alive so that their ids cannot be reused."""
    replays: int = 0


class CapturedJointStep:
    """Replays phase B's forward and backward (loss, scaled by the grad scaler, and its gradients) as CUDA graphs.

    Args:
        forward: the step's losses of a batch, as the trainer computes them: (outputs, loss_dict, metrics).
        model: the model whose parameters receive the gradients (its proposal sampler is consulted).
        grad_scaler: the trainer's grad scaler (its scale is read on the device at replay time).
        mixed_precision: whether the forward runs under autocast (float16), as in the trainer.
    """

    def __init__(
        self,
        forward: Callable[[JointBatch], Tuple[Any, Dict[str, Tensor], Dict[str, Any]]],
        model: torch.nn.Module,
        grad_scaler: Any,
        mixed_precision: bool,
    ) -> None:
        self.forward = forward
        self.model = model
        self.grad_scaler = grad_scaler
        self.mixed_precision = mixed_precision
        self.graphs: Dict[Hashable, _Graph] = {}
        self.failure: Optional[str] = None
        self.replays = 0
        self.captures = 0
        self.anneal: Optional[Tensor] = None
        """The proposal sampler's annealing exponent as the graphs read it (filled before each replay)."""

    @property
    def sampler(self) -> Any:
        return getattr(self.model, "proposal_sampler", None)

    def ineligible(self, batch: Any) -> Optional[str]:
        """Why this batch's step cannot be replayed (None: it can)."""
        if self.failure is not None:
            return self.failure
        if not isinstance(batch, JointBatch):
            return "not a phase-B batch"
        if not torch.cuda.is_available() or next(self.model.parameters()).device.type != "cuda":
            return "CUDA graphs need the model on a CUDA device"
        return None

    def _key(self, batch: JointBatch) -> Hashable:
        sampler = self.sampler
        targets = getattr(self.model, "latent_targets", None)
        return (
            batch_signature(batch),
            proposal_update_due(sampler) if sampler is not None else False,
            id(targets),
        )

    def run(self, batch: Any) -> Optional[StepOutputs]:
        """The step's (loss, loss_dict, metrics) with the parameters' gradients set, replayed from a graph; None when
        the step must run eagerly (`ineligible`, or a capture that failed)."""
        if self.ineligible(batch) is not None:
            return None
        key = self._key(batch)
        captured = self.graphs.get(key)
        reference = None
        if captured is None:
            if len(self.graphs) >= MAX_GRAPHS:
                self.graphs.clear()  # batch shapes keep changing: free the oldest graphs' memory
            captured = self._capture(batch, key)
            if captured is None:
                return None
        copy_into(captured.batch, batch)
        if captured.replays == 0:
            reference = self._eager_losses(captured.batch)
        if self.anneal is not None:
            self.anneal.fill_(float(self.sampler._anneal))
        captured.graph.replay()
        if reference is not None:
            disagreement = loss_disagreement(reference, captured.loss_dict)
            if disagreement is not None:
                self._give_up(f"a replay gave other losses than the eager step ({disagreement})")
                return None
            if self.replays == 0:
                CONSOLE.print("Phase B's forward and backward are replayed from a CUDA graph from now on.")
        captured.replays += 1
        self.replays += 1
        if captured.proposal_update and self.sampler is not None:
            self.sampler._steps_since_update = 0  # what the sampler's own forward does after an update
        for parameter in self.model.parameters():
            parameter.grad = captured.grads.get(parameter)
        # Copies: the next replay overwrites the graph's outputs, and the trainer logs these after the step.
        loss_dict = {name: value.clone() for name, value in captured.loss_dict.items()}
        metrics = {
            key: value.clone() if isinstance(value, Tensor) else value for key, value in captured.metrics.items()
        }
        return captured.loss.clone(), loss_dict, metrics

    def _forward_backward(self, batch: JointBatch) -> Tuple[Tensor, Dict[str, Tensor], Dict[str, Any]]:
        with torch.autocast(device_type="cuda", enabled=self.mixed_precision, cache_enabled=False):
            _, loss_dict, metrics = self.forward(batch)
            loss = functools.reduce(torch.add, loss_dict.values())
        self.grad_scaler.scale(loss).backward()
        return loss, loss_dict, metrics

    def release(self) -> None:
        """Drop the graphs and their memory (phase B is over; a later phase-B step captures again)."""
        if self.graphs:
            self.graphs.clear()
            self.model.zero_grad(set_to_none=True)  # the gradients lived in the graphs' memory

    def _eager_losses(self, batch: JointBatch) -> Dict[str, float]:
        """The batch's losses from an eager forward pass, leaving the random state and the sampler as they were."""
        device = next(self.model.parameters()).device
        random_state = torch.cuda.get_rng_state(device)
        sampler = self.sampler
        saved = (sampler._steps_since_update, sampler._step) if sampler is not None else None
        with torch.no_grad(), torch.autocast(device_type="cuda", enabled=self.mixed_precision, cache_enabled=False):
            _, loss_dict, _ = self.forward(batch)
        values = {name: float(value) for name, value in loss_dict.items()}
        torch.cuda.set_rng_state(random_state, device)
        self._restore_sampler(saved)
        return values

    def _give_up(self, reason: str) -> None:
        self.graphs.clear()
        self.model.zero_grad(set_to_none=True)
        self.failure = reason
        CONSOLE.print(f"[yellow]--captured-joint-step: {reason}; training goes on with the eager step (no CUDA graph).")

    def _capture(self, batch: JointBatch, key: Hashable) -> Optional[_Graph]:
        device = next(self.model.parameters()).device
        sampler = self.sampler
        saved = (sampler._steps_since_update, sampler._step) if sampler is not None else None
        proposal_update = key[1]  # type: ignore[index]
        static = static_copy(batch, device)
        float_anneal = getattr(sampler, "_anneal", None)
        if float_anneal is not None:
            if self.anneal is None:
                self.anneal = torch.ones((), device=device)
            self.anneal.fill_(float(float_anneal))
            sampler._anneal = self.anneal  # the captured torch.pow(weights, anneal) reads it from the device
        try:
            move_plain_tensors(self.model, device)
            # As for the inference graphs (fast_render): factory calls without a device allocate on the GPU, and
            # tensors built from Python data come from a device cache, since copies from host memory cannot be
            # captured.
            with torch.device(device), DeviceConstants(device):
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    for _ in range(WARMUP_PASSES):
                        self._restore_sampler(saved)
                        self.model.zero_grad(set_to_none=True)
                        self._forward_backward(static)
                torch.cuda.current_stream(device).wait_stream(side)
                # The captured backward must allocate the gradients (assignment), not add to earlier ones.
                self.model.zero_grad(set_to_none=True)
                self._restore_sampler(saved)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    loss, loss_dict, metrics = self._forward_backward(static)
        except Exception as error:  # noqa: BLE001 - any failure leaves the eager step, which is always correct
            if float_anneal is not None:
                sampler._anneal = float_anneal
            self._restore_sampler(saved)
            first_line = (str(error).splitlines() or [""])[0][:200]
            self._give_up(f"the phase-B step could not be captured ({type(error).__name__}: {first_line})")
            return None
        self._restore_sampler(saved)
        if float_anneal is not None:
            sampler._anneal = float_anneal
        grads = {p: p.grad for p in self.model.parameters() if p.grad is not None}
        self.model.zero_grad(set_to_none=True)
        targets = getattr(self.model, "latent_targets", None)
        captured = _Graph(graph, static, loss, loss_dict, metrics, grads, bool(proposal_update), targets)
        self.graphs[key] = captured
        self.captures += 1
        return captured

    def _restore_sampler(self, saved: Optional[Tuple[int, int]]) -> None:
        if saved is not None:
            self.sampler._steps_since_update, self.sampler._step = saved


def loss_disagreement(reference: Dict[str, float], losses: Dict[str, Tensor]) -> Optional[str]:
    """Where a graph's losses differ from the eager ones by more than `AGREEMENT` (None: nowhere)."""
    if reference.keys() != losses.keys():
        return f"losses {sorted(losses)} instead of {sorted(reference)}"
    for name, expected in reference.items():
        value = float(losses[name])
        if not abs(value - expected) <= AGREEMENT * max(abs(value), abs(expected)) + 1e-7:
            return f"{name} {value:.6g} instead of {expected:.6g}"
    return None
