"""Trainer for ReLS-NeRF: the phase schedule sets the run length and every learning rate; faults lose nothing.

- The number of steps comes from the pipeline's phase schedule (A + B + C), also when resuming: a run resumed at
  step s trains the remaining steps, not another full schedule (nerfstudio's loop would).
- Phase-aware schedulers get the pipeline's schedule, so step counts set on the command line move the learning rate
  changes with them, and the model recipe's phase-B NeRF decay period where the optimizer groups leave it None.
- Checkpoints are written to a temporary file beside the checkpoint folder, synced and renamed, so a kill never leaves
  a truncated checkpoint (nor a stray file that nerfstudio's `--load-dir` / ns-eval step parsing trips over); the
  temporary file of a process that was killed while saving is removed at the next start. A write that fails (a full
  disk) says so in one message naming the intact checkpoint to resume from. Checkpoints hold only tensors and plain
  values, which `torch.load(weights_only=True)` (the default since torch 2.6) accepts, and besides nerfstudio's states
  (model, optimizers, schedulers, grad scaler) the random generators and the proposal sampler's counters, so a resumed
  run continues exactly as an uninterrupted one (bit for bit on the CPU with `--deterministic True`).
- Ctrl-C (SIGINT) or SIGTERM: the step in progress is finished and saved, then training stops; a second signal stops
  at once (the last saved checkpoint stays intact). Either way the process exits with 128 + the signal number (130,
  143), as shells report a process ended by that signal, without a traceback.
- A set-up that fails (unreadable data, missing weights) removes the run folder it had just created (config.yml).
- A step whose loss or gradients are not finite is not applied; after `max_consecutive_nonfinite_steps` such steps in a
  row the run stops with the last good state saved.
- Phase C's renders live in the run directory; a resumed run reuses those of the run it resumes.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import random
import re
import shutil
import signal
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.trainer import TRAIN_INTERATION_OUTPUT, Trainer, TrainerConfig
from nerfstudio.utils import comms, profiler
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE
from torch.profiler import record_function

from relsnerf_ns.known_warnings import silence_known_warnings
from relsnerf_ns.model.train_batches import TrainBatch
from relsnerf_ns.training.captured_step import CapturedJointStep
from relsnerf_ns.training.phases import Phase
from relsnerf_ns.training.relsnerf_pipeline import RelsNerfPipeline, RelsNerfPipelineConfig
from relsnerf_ns.training.rng_state import RngSnapshot, capture_rng_state, restore_rng_state, snapshot_rng_state
from relsnerf_ns.training.schedulers import PhasedSchedulerConfig

DISTILL_RENDER_DIR = "distill_renders"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class NonFiniteLossError(RuntimeError):
    """Training stopped: too many consecutive steps had a NaN or infinite loss or gradient."""


class TrainingInterrupted(SystemExit):
    """Ctrl-C or SIGTERM stopped training (after the step in progress was finished and saved, unless sent twice).

    A SystemExit with status 128 + the signal number (130 for SIGINT, 143 for SIGTERM), what shells report for a process
    ended by that signal, so that scripts can tell an interrupted run from a finished one (status 0). nerfstudio's
    launcher prints a traceback and exits with 0 on KeyboardInterrupt; it lets a SystemExit through, and Python exits
    with its status and prints nothing more (the message is already on the console).
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.message = message

    def __str__(self) -> str:
        return self.message


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); the message names the intact one to resume from."""


@dataclass
class RelsNerfTrainerConfig(TrainerConfig):
    """nerfstudio's trainer settings; the run length follows --pipeline.phases."""

    _target: Type = field(default_factory=lambda: RelsNerfTrainer)
    pipeline: RelsNerfPipelineConfig = field(default_factory=RelsNerfPipelineConfig)
    """The three-phase ReLS-NeRF pipeline."""
    max_consecutive_nonfinite_steps: int = 50
    """A step whose loss or gradients are NaN or infinite is skipped (parameters and optimizer states stay as they
    were). After this many such steps in a row the run stops, naming the phase and step, with the last good state
    saved as a checkpoint to resume from. 0: skip such steps but never stop."""
    deterministic: bool = False
    """Reproducible runs: torch's deterministic algorithms (torch.use_deterministic_algorithms) and cuDNN without
    benchmarking. On the CPU two runs of the same seed, and an interrupted run resumed with --load-dir (this flag set
    again), then end with bit-identical parameters; without it the CPU hash-grid backward sums in a thread-dependent
    order. Some steps get slower. On a GPU the fused hash-grid kernels (atomic adds) give way to nerfstudio's lookup and
    operations without a deterministic implementation warn instead of failing: close, not guaranteed bit-identical."""
    captured_joint_step: bool = False
    """Experimental: capture phase B's forward and backward once as a CUDA graph and replay it each step, so that the
    host no longer issues thousands of kernel launches per step (a single GPU, CUDA only). Steps that cannot be
    replayed (after a capture failed, said once) run as usual. Its speed-up is not yet measured."""


class RelsNerfTrainer(Trainer):
    config: RelsNerfTrainerConfig
    pipeline: RelsNerfPipeline

    def __init__(self, config: RelsNerfTrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        silence_known_warnings()  # before nerfstudio's Trainer builds its grad scaler
        config.max_num_iterations = config.pipeline.phases.total_steps
        if config.deterministic:
            use_deterministic_algorithms(config)
        super().__init__(config, local_rank, world_size)
        self._loaded_resume_state: Optional[Dict[str, Any]] = None
        self._stop_signal: Optional[str] = None
        self._stop_signum = int(signal.SIGINT)
        self._previous_handlers: Dict[int, Any] = {}
        self._last_completed_step: Optional[int] = None
        self._nonfinite_streak = 0
        self._state_at_step_start: Optional[Tuple[RngSnapshot, Dict[str, Any]]] = None
        self._state_before_streak: Optional[Dict[str, Any]] = None
        self.captured_step: Optional[CapturedJointStep] = None
        """Phase B's CUDA-graph replay (--captured-joint-step), when on for this run."""

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        self._remove_partial_checkpoints()
        try:
            self._check_encoder_adaptation_rate()
            self.config.pipeline.distill_render_dir = self._distill_render_dir()
            super().setup(test_mode=test_mode)
            self.pipeline.config.distill_render_dir = self.config.pipeline.distill_render_dir
            self.config.max_num_iterations = max(0, self.pipeline.schedule.total_steps - self._start_step)
            # Last, after everything in set-up that draws random numbers (model initialisation among others).
            if self._loaded_resume_state is not None:
                self._restore_resume_state(self._loaded_resume_state)
            self.captured_step = self._make_captured_step()
        except BaseException as error:
            self._remove_run_folder_of_failed_setup()
            if isinstance(error, KeyboardInterrupt):
                message = "SIGINT during set-up: nothing trained, nothing saved"
                CONSOLE.print(f"[bold yellow]{message}.")
                raise TrainingInterrupted(signal.SIGINT, message) from None
            raise

    def _check_encoder_adaptation_rate(self) -> None:
        """Encoder adaptation trains the encoder in phase B, where its default rate is 0 (frozen, as in the paper)."""
        model = getattr(self.config.pipeline, "model", None)
        scheduler = self.config.optimizers.get("ae_encoder", {}).get("scheduler")
        if getattr(model, "encoder_adaptation_mult", 0.0) <= 0 or not isinstance(scheduler, PhasedSchedulerConfig):
            return
        if scheduler.phase_b.lr <= 0:
            raise ValueError(
                f"--pipeline.model.encoder-adaptation-mult {model.encoder_adaptation_mult} trains the encoder in "
                "phase B, but its phase-B rate is 0 (the encoder is frozen there by default). Give it one, e.g. "
                "--optimizers.ae-encoder.scheduler.phase-b.lr 1e-4, or set the mult to 0."
            )

    def _remove_run_folder_of_failed_setup(self) -> None:
        """ns-train writes config.yml into a new run folder before set-up; a set-up that fails leaves nothing else in
        it, and a folder holding only the configuration of a run that never started is clutter (and looks like a run).
        Folders that hold anything else (an earlier run's files) are kept."""
        base = self.base_dir
        ours = {"config.yml", str(self.config.viewer.relative_log_filename)}
        if not base.is_dir():
            return
        files = [p for p in base.rglob("*") if not p.is_dir()]
        if not files or any(str(p.relative_to(base)) not in ours for p in files):
            return
        shutil.rmtree(base, ignore_errors=True)
        # The experiment and method folders above it, when this run was all they held (never the output folder).
        output = Path(self.config.output_dir).resolve()
        parent = base.parent
        while parent.resolve() != output and output in parent.resolve().parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        CONSOLE.print(f"[yellow]Set-up failed: removed the run folder it had created, {base} (only config.yml).")

    def _remove_partial_checkpoints(self) -> None:
        """Temporary checkpoint files of processes that were killed while saving (see `write_checkpoint_atomically`),
        beside this run's checkpoint folder and the one it resumes from; those of a process still running are kept."""
        folders = {self.checkpoint_dir}
        if self.config.load_dir is not None:
            folders.add(Path(self.config.load_dir))
        if self.config.load_checkpoint is not None:
            folders.add(Path(self.config.load_checkpoint).parent)
        removed = []
        for folder in folders:
            for tmp in folder.parent.glob(f".{folder.name}.step-*.tmp"):
                match = TMP_CHECKPOINT.fullmatch(tmp.name[len(folder.name) + 1 :])
                if match is None or (match["pid"] is not None and _process_alive(int(match["pid"]))):
                    continue
                try:
                    tmp.unlink()
                    removed.append(tmp)
                except OSError:
                    pass
        if removed:
            CONSOLE.print(
                f"Removed {len(removed)} partial checkpoint file{'s' if len(removed) > 1 else ''} of an interrupted "
                f"save: {', '.join(str(p) for p in sorted(removed))} (the complete checkpoints are untouched)."
            )

    def _distill_render_dir(self) -> Path:
        if self.config.load_dir is not None:
            previous = Path(self.config.load_dir).parent / DISTILL_RENDER_DIR
            if previous.is_dir():
                return previous
        return self.base_dir / DISTILL_RENDER_DIR

    def setup_optimizers(self) -> Optimizers:
        # Phase-aware schedulers get copies with the run's schedule and the model recipe's phase-B period where theirs
        # is None (a number set on the command line wins); the config's own are shared (by groups, by the registered
        # methods) and stay as they are.
        recipe_period = self.config.pipeline.model.nerf_tenfold_decay_every()
        optimizer_config = {}
        for name, group in self.config.optimizers.items():
            scheduler = group.get("scheduler")
            if isinstance(scheduler, PhasedSchedulerConfig):
                group = {**group, "scheduler": scheduler.for_run(self.config.pipeline.phases, recipe_period)}
            optimizer_config[name] = group
        return Optimizers(optimizer_config, self.pipeline.get_param_groups())

    # ------------------------------------------------------------------ training loop
    def train(self) -> None:
        self._stop_signal = None
        self._nonfinite_streak = 0
        self._last_completed_step = self._start_step - 1 if self._start_step > 0 else None
        self._install_stop_handlers()
        try:
            super().train()
        finally:
            self._restore_stop_handlers()

    def _after_train(self) -> None:
        # Ctrl-C must work normally again (nerfstudio's viewer waits for it after training).
        self._restore_stop_handlers()
        # nerfstudio saves `self.step`, which is the step *about to run* when its loop stops early (viewer stop).
        if self._last_completed_step is not None:
            self.step = self._last_completed_step
        super()._after_train()

    def _install_stop_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._on_stop_signal)

    def _restore_stop_handlers(self) -> None:
        while self._previous_handlers:
            signum, handler = self._previous_handlers.popitem()
            signal.signal(signum, handler)

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._stop_signal is not None:
            message = f"{name} again: stopped at once; the last saved checkpoint in {self.checkpoint_dir} is intact"
            CONSOLE.print(f"[bold yellow]{message}.")
            raise TrainingInterrupted(signum, message)
        self._stop_signal = name
        self._stop_signum = signum
        CONSOLE.print(
            f"[yellow]{name}: finishing step {self.step}, then saving a checkpoint and stopping "
            "(send it again to stop at once)."
        )
        if self.training_state == "paused":  # nerfstudio's pause loop only ends on a step or a viewer stop
            self.training_state = "training"

    def _stop_for_signal(self, step: int) -> None:
        """Called at the start of `step`: everything of step - 1 (update, callbacks, evaluation) is done."""
        last = step - 1
        where = "nothing trained yet, nothing saved"
        if last >= 0:
            self.save_checkpoint(last)
            where = (
                f"stopped after step {last} (phase {self.pipeline.schedule.phase_at(last).title}); checkpoint saved "
                f"in {self.checkpoint_dir}, resume with --load-dir {self.checkpoint_dir}"
            )
        CONSOLE.print(f"[bold yellow]{self._stop_signal}: {where}.")
        raise TrainingInterrupted(self._stop_signum, f"{self._stop_signal}: {where}")

    def _train_complete_viewer(self) -> None:
        """nerfstudio keeps the viewer up after training until Ctrl-C; that Ctrl-C ends a finished run (status 0),
        without the traceback nerfstudio's launcher would print for it."""
        try:
            super()._train_complete_viewer()
        except KeyboardInterrupt:
            CONSOLE.print("Viewer closed.")

    @profiler.time_function
    def train_iteration(self, step: int) -> TRAIN_INTERATION_OUTPUT:
        """nerfstudio's iteration plus a finiteness check of the loss and of every gradient the step would apply.

        A step with a NaN or infinite value changes no parameter, optimizer or scheduler state (all parameter groups
        skip it together; a grad scaler alone would skip only the optimizers whose own gradients are not finite).
        Under mixed precision the gradients are unscaled first and the scaler still lowers its scale after an
        overflow; a non-finite loss leaves the scale as it was. Cost: one pass over the gradients and one host
        synchronisation per step.

        Mirrors nerfstudio 1.1.5 `Trainer.train_iteration` (zero the groups that start accumulating, forward under
        autocast, scaled backward, the groups' optimizer steps, gradient logging, scaler update, scheduler step),
        with three additions marked below. It is a copy because nerfstudio has no seam between the backward pass and
        the optimizer steps: the loss is local to its train_iteration (the grad scaler, the only object that sees
        it, is replaced by whoever sets up mixed precision), and `Optimizers.optimizer_scaler_step_some` unscales
        only groups with a max_norm, and one group at a time as it steps, while the check must see every group's
        unscaled gradients before any group steps.
        """
        self._start_step_checks(step)  # addition 1: stop signals, the state the step starts from
        accumulation = self.gradient_accumulation_steps
        needs_zero = [group for group in self.optimizers.parameters if step % accumulation[group] == 0]
        self.optimizers.zero_grad_some(needs_zero)
        device_type = self.device.split(":")[0]
        device_type = "cpu" if device_type == "mps" else device_type
        replayed, train_batch = self._replay_captured_step(step)
        if replayed is not None:  # forward and backward replayed as a CUDA graph (--captured-joint-step)
            loss, loss_dict, metrics_dict = replayed
        else:
            with torch.autocast(device_type=device_type, enabled=self.mixed_precision):
                if train_batch is None:
                    _, loss_dict, metrics_dict = self.pipeline.get_train_loss_dict(step=step)
                else:  # drawn already for a replay that could not happen: the same batch, eagerly
                    _, loss_dict, metrics_dict = self.pipeline.train_loss_dict_for(train_batch)
                loss = functools.reduce(torch.add, loss_dict.values())
            with record_function("relsnerf/backward"):
                self.grad_scaler.scale(loss).backward()  # type: ignore
        stepping = [
            group
            for group in self.optimizers.parameters
            if step % accumulation[group] == accumulation[group] - 1 and self._gradients([group])
        ]
        reason = self._unscale_and_check_finite(loss, loss_dict, stepping)  # addition 2: the finiteness guard
        if reason is not None:
            self._skip_nonfinite_step(step, reason)
            self._last_completed_step = step
            return _for_logging(loss, loss_dict, metrics_dict)

        with record_function("relsnerf/optimizer"):
            for group in stepping:  # Optimizers.optimizer_scaler_step_some, on gradients unscaled already
                max_norm = self.optimizers.config[group]["optimizer"].max_norm
                if max_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.optimizers.parameters[group], max_norm)
                # The guard has seen every gradient finite, so the scaler's step would step the optimizer and do
                # nothing else; it would first wait for the device to read its own inf flag (one host wait per
                # group), which a host-bound step cannot afford.
                self.optimizers.optimizers[group].step()
        if self.config.log_gradients:
            total_grad = 0
            for tag, value in self.pipeline.model.named_parameters():
                if value.grad is not None:
                    grad = value.grad.norm()
                    metrics_dict[f"Gradients/{tag}"] = grad  # type: ignore
                    total_grad += grad
            metrics_dict["Gradients/Total"] = total_grad  # type: ignore
        # On the device, from the inf flags of the unscale above (all zero): the scale grows on schedule. nerfstudio
        # steps the schedulers unless the scaler lowered its scale, which it cannot have done here; reading the scale
        # back to check would be two more host waits.
        self.grad_scaler.update()
        self.optimizers.scheduler_step_all(step)
        self._nonfinite_streak = 0  # addition 3: the step counts as completed
        self._last_completed_step = step
        return _for_logging(loss, loss_dict, metrics_dict)

    def _replay_captured_step(self, step: int) -> Tuple[Optional[Tuple[Any, Dict, Dict]], Optional[TrainBatch]]:
        """With --captured-joint-step in phase B: the step's batch and its (loss, loss_dict, metrics) replayed from a
        CUDA graph, or (None, batch) when this step runs eagerly; (None, None) otherwise (nothing drawn yet)."""
        if self.captured_step is None:
            return None, None
        if self.pipeline.schedule.phase_at(step) != Phase.JOINT:
            self.captured_step.release()  # phase B is over: its graphs' memory goes back to the allocator
            return None, None
        train_batch = self.pipeline.next_train_batch(step)
        with record_function("relsnerf/captured_step"):
            return self.captured_step.run(train_batch), train_batch

    def _make_captured_step(self) -> Optional[CapturedJointStep]:
        """The CUDA-graph replay of phase B's forward and backward, when asked for and possible here."""
        if not self.config.captured_joint_step:
            return None
        reasons = []
        if self.world_size > 1:
            reasons.append("it runs in a single process (not with several GPUs)")
        if not str(self.device).startswith("cuda"):
            reasons.append(f"it needs a CUDA device (this run trains on {self.device})")
        if self.config.deterministic:
            reasons.append("--deterministic asks for the plain hash-grid lookups, which it does not capture")
        if reasons:
            CONSOLE.print(f"[yellow]--captured-joint-step is off for this run: {'; '.join(reasons)}.")
            return None
        return CapturedJointStep(
            self.pipeline.train_loss_dict_for, self.pipeline.model, self.grad_scaler, self.mixed_precision
        )

    def _start_step_checks(self, step: int) -> None:
        """Stop at this step when a stop signal came (on any rank); keep what the step starts from."""
        if self._any_rank(self._stop_signal is not None):  # all ranks stop at the same step
            if self._stop_signal is None:
                self._stop_signal = "stop signal on another rank"
            self._stop_for_signal(step)
        # Cheap references (converted only if this step starts a run of non-finite steps that ends the run).
        self._state_at_step_start = (snapshot_rng_state(), self.pipeline.resume_state())

    def _unscale_and_check_finite(
        self, loss: torch.Tensor, loss_dict: Dict[str, torch.Tensor], stepping: List[str]
    ) -> Optional[str]:
        """Unscale the gradients of the groups about to step; None when the loss and all of them are finite, else
        what was not (after the scaler's update: halved after overflowing gradients, kept after a non-finite loss)."""
        scaled = self.grad_scaler.is_enabled()
        if scaled:
            for group in stepping:
                self.grad_scaler.unscale_(self.optimizers.optimizers[group])
        with record_function("relsnerf/finite_check"):
            finite = torch.isfinite(loss.detach())
            grads = self._gradients(stepping)
            if grads:
                finite = finite & torch.stack(torch._foreach_norm(grads)).isfinite().all()
            # All ranks skip a step together (their gradients are averaged, their losses are their own).
            finite = not self._any_rank(not bool(finite))
        if finite:
            return None
        loss_is_finite = bool(torch.isfinite(loss.detach()))
        reason = self._nonfinite_reason(loss_dict, stepping)
        if scaled:
            scale = self.grad_scaler.get_scale()
            # Overflowing gradients: the scaler halves its scale as usual. A non-finite loss says nothing about
            # the scale: keep it (update() also ends this step's unscale bookkeeping either way).
            self.grad_scaler.update(None if loss_is_finite else scale)
            if loss_is_finite:
                reason += f" at grad scale {scale:g}"
        return reason

    def _gradients(self, groups: List[str]) -> List[torch.Tensor]:
        return [p.grad for group in groups for p in self.optimizers.parameters[group] if p.grad is not None]

    def _nonfinite_reason(self, loss_dict: Dict[str, torch.Tensor], groups: List[str]) -> str:
        """What was not finite (computed on bad steps only)."""
        values = {name: float(value.detach()) for name, value in loss_dict.items()}
        bad_losses = {name: value for name, value in values.items() if not math.isfinite(value)}
        if bad_losses:
            return "non-finite loss (" + ", ".join(f"{name}={value}" for name, value in bad_losses.items()) + ")"
        bad_groups = [g for g in groups if any(not bool(torch.isfinite(x).all()) for x in self._gradients([g]))]
        return "non-finite gradients in " + ", ".join(bad_groups)

    def _skip_nonfinite_step(self, step: int, reason: str) -> None:
        """The update of `step` is not applied; stop with the last good state saved after too many in a row."""
        self.optimizers.zero_grad_all()  # nothing of this step may reach a later one
        if self._nonfinite_streak == 0:
            self._state_before_streak = self._resume_state(at_step_start=True)
        self._nonfinite_streak += 1
        limit = self.config.max_consecutive_nonfinite_steps
        phase = self.pipeline.schedule.phase_at(step)
        CONSOLE.print(
            f"[yellow]Step {step} (phase {phase.title}): {reason}; step skipped "
            f"({self._nonfinite_streak} in a row{f', the run stops at {limit}' if limit > 0 else ''})."
        )
        if limit <= 0 or self._nonfinite_streak < limit:
            return
        first = step - self._nonfinite_streak + 1
        last_good = first - 1
        if last_good >= 0:
            self.save_checkpoint(last_good, resume_state=self._state_before_streak)
            saved = (
                f"The last good state (step {last_good}, phase {self.pipeline.schedule.phase_at(last_good).title}) "
                f"is saved in {self.checkpoint_dir / checkpoint_name(last_good)}; resume from it with "
                f"--load-dir {self.checkpoint_dir} once the cause is fixed (e.g. a lower learning rate)."
            )
        else:
            saved = "No step had succeeded, so there is nothing to save."
        message = (
            f"Training stopped in phase {phase.title} at step {step}: {self._nonfinite_streak} consecutive steps "
            f"({first}-{step}) had a NaN or infinite loss or gradients (last: {reason}); none of them was applied "
            f"(limit: --max-consecutive-nonfinite-steps {limit}). {saved}"
        )
        CONSOLE.print(f"[bold red]{message}")
        raise NonFiniteLossError(message)

    # ------------------------------------------------------------------ checkpoints
    def _resume_state(self, at_step_start: bool = False) -> Dict[str, Any]:
        """What a checkpoint needs besides nerfstudio's states: now, or as the current step found it."""
        if at_step_start:
            assert self._state_at_step_start is not None
            rng, pipeline = self._state_at_step_start
            return {"rng": capture_rng_state(rng), "pipeline": pipeline}
        return {"rng": capture_rng_state(), "pipeline": self.pipeline.resume_state()}

    def _restore_resume_state(self, state: Dict[str, Any]) -> None:
        if "rng" in state:
            restore_rng_state(state["rng"])
            if self.world_size > 1:
                _separate_rank_streams(comms.get_rank())
        self.pipeline.load_resume_state(state.get("pipeline", {}))

    # ------------------------------------------------------------------ several processes
    def _any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (one small all-reduce; `flag` itself in one process)."""
        if self.world_size <= 1 or not comms.is_dist_avail_and_initialized():
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item() > 0)

    def eval_iteration(self, step: int) -> None:
        """Evaluation on rank 0 only (what it logs is rank 0's; the other ranks wait at the next step's all-reduce)."""
        if comms.is_main_process():
            super().eval_iteration(step)

    @check_main_thread
    def save_checkpoint(self, step: int, resume_state: Optional[Dict[str, Any]] = None) -> None:
        """Write `step-<step>.ckpt` atomically; `resume_state` (random generators etc.) defaults to the current one.

        Mirrors nerfstudio 1.1.5 `Trainer.save_checkpoint` (same keys, plus "resume"; the pipeline's state under
        one-process names). A copy: nerfstudio builds the dict inline and `torch.save`s it straight to the final
        name, so neither the extra state nor the atomic write can be added around it.
        """
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / checkpoint_name(step)
        state = {
            "step": int(step),
            "pipeline": single_process_state(self.pipeline.state_dict()),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
            "resume": resume_state if resume_state is not None else self._resume_state(),
        }
        write_checkpoint_atomically(state, path)
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("step-*.ckpt"):
                if old != path:
                    old.unlink()

    def _load_checkpoint(self) -> None:
        """nerfstudio's loading (pipeline, optimizers, schedulers, grad scaler) plus the resume state.

        Unlike nerfstudio's, it picks the latest `step-*.ckpt` among checkpoint files only, loads with
        `weights_only=True`, and when the latest cannot be read (e.g. a checkpoint truncated by an older,
        non-atomic writer) says so and takes the one before it, unless --load-step asks for that exact one.

        Mirrors nerfstudio 1.1.5 `Trainer._load_checkpoint` (the same states loaded in the same order). A copy:
        nerfstudio chooses the file by parsing every name in the folder (a stray file fails it), asserts it exists,
        and keeps the loaded dict to itself, so the fallback and the resume state would need the file read twice.
        """
        candidates = self._checkpoints_to_try()
        if not candidates:
            CONSOLE.print("No Nerfstudio checkpoint to load, so training from scratch.")
            return
        loaded, path = None, None
        for index, path in enumerate(candidates):
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
                break
            except Exception as error:  # torch raises several types for damaged archives
                problem = f"checkpoint {path} cannot be read ({type(error).__name__}: {error})"
                if index + 1 == len(candidates):
                    raise RuntimeError(f"{problem}; no readable checkpoint is left to resume from") from error
                CONSOLE.print(f"[yellow]{problem}; trying the one before it, {candidates[index + 1].name}.")
        assert loaded is not None and path is not None
        step = int(loaded["step"])
        self._start_step = step + 1
        self.pipeline.load_pipeline(loaded["pipeline"], step)
        # A checkpoint without decoder guidance has no state for its group, which then starts fresh (as at its first
        # step); one of a version that trained the guidance modules within the decoder's group gets them split off.
        if "decoder_guidance" in self.optimizers.optimizers:
            move_trailing_parameters(loaded["optimizers"], self.optimizers.optimizers, "ae_decoder", "decoder_guidance")
            restart_changed_group(loaded["optimizers"], self.optimizers.optimizers, "decoder_guidance")
        self.optimizers.load_optimizers(loaded["optimizers"])
        if "schedulers" in loaded and self.config.load_scheduler:
            self.optimizers.load_schedulers(loaded["schedulers"])
            catch_up_new_schedulers(self.optimizers.schedulers, loaded["schedulers"])
        self.grad_scaler.load_state_dict(loaded["scalers"])
        self._loaded_resume_state = loaded.get("resume")
        CONSOLE.print(f"Done loading Nerfstudio checkpoint from {path}")
        schedule = self.pipeline.schedule
        if self._start_step < schedule.total_steps:
            CONSOLE.print(
                f"Resuming at step {self._start_step} in phase {schedule.phase_at(self._start_step).title} "
                f"(checkpoint of step {step})."
            )
        else:
            CONSOLE.print(f"The checkpoint (step {step}) is at the end of the schedule: nothing left to train.")

    def _checkpoints_to_try(self) -> List[Path]:
        """Checkpoint files to load, preferred first."""
        if self.config.load_dir is not None:
            load_dir = Path(self.config.load_dir)
            if self.config.load_step is not None:
                path = load_dir / checkpoint_name(self.config.load_step)
                if not path.exists():
                    steps = sorted(step for step, _ in checkpoint_files(load_dir))
                    raise FileNotFoundError(f"checkpoint {path} does not exist; {load_dir} has steps {steps}")
                return [path]
            found = [path for _, path in sorted(checkpoint_files(load_dir), reverse=True)]
            if not found:
                raise FileNotFoundError(f"--load-dir {load_dir} holds no checkpoint (step-<number>.ckpt)")
            return found
        if self.config.load_checkpoint is not None:
            path = Path(self.config.load_checkpoint)
            if not path.exists():
                raise FileNotFoundError(f"checkpoint {path} does not exist")
            return [path]
        return []


def single_process_state(state: Dict[str, Any]) -> Dict[str, Any]:
    """The pipeline's state under the names of a one-process run: DDP's `_model.module.` prefix dropped, so that a
    checkpoint of a multi-GPU run loads anywhere (one GPU, ns-eval, ns-viewer) like any other."""
    prefix = "_model.module."
    return {("_model." + k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}.ckpt"


def checkpoint_files(directory: Path) -> List[tuple]:
    """(step, path) of each `step-<number>.ckpt` in `directory` (other files are ignored)."""
    found = []
    for path in directory.glob("step-*.ckpt"):
        number = path.stem[len("step-") :]
        if number.isdigit():
            found.append((int(number), path))
    return found


def _separate_rank_streams(rank: int) -> None:
    """After a resume every rank restored rank 0's generators; give the others streams of their own (rank 0 keeps
    its, and continues exactly as it would have). A rank's seed follows from the checkpoint's state and the rank."""
    if rank == 0:
        return
    seed = (zlib.crc32(torch.get_rng_state().numpy().tobytes()) + 1_000_003 * rank) % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


TMP_CHECKPOINT = re.compile(r"\.step-\d+\.ckpt(?:\.(?P<pid>\d+))?\.tmp")
"""The name of a temporary checkpoint file after `.<checkpoint folder>`; the writer's process id tells whether it is
still being written (files without one come from earlier versions)."""

DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def temporary_checkpoint_path(path: Path, pid: Optional[int] = None) -> Path:
    """Where `write_checkpoint_atomically` writes `path` before renaming it (by this process, or by `pid`)."""
    return path.parent.parent / f".{path.parent.name}.{path.name}.{os.getpid() if pid is None else pid}.tmp"


def write_checkpoint_atomically(state: Dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file next to the checkpoint folder, fsync, then rename over `path`.

    A kill or an error at any point leaves either the complete new file or none (and the earlier checkpoints as they
    were). The temporary file lives in the parent folder because nerfstudio's `--load-dir` and ns-eval parse the
    step out of every file name in the checkpoint folder and fail on anything else; it carries the writer's process id
    so that the next start can remove what a killed process left without touching a save in progress.
    A write that fails with an OSError (a full disk, a read-only or vanished folder) raises CheckpointWriteError.
    """
    tmp = temporary_checkpoint_path(path)
    try:
        with open(tmp, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        cause = _os_error_in(error)
        if cause is None or not isinstance(error, Exception):
            raise
        # torch.save reports a failed write as "RuntimeError: [enforce fail at inline_container.cc] unexpected pos",
        # the OSError only in its context: say what happened instead (the OSError's text is kept in the message).
        raise CheckpointWriteError(_describe_failed_write(path, cause)) from None
    try:  # make the rename itself durable (not available on every platform)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass


def _os_error_in(error: BaseException) -> Optional[OSError]:
    """The OSError that `error` is or was raised while handling (torch.save wraps a failed write)."""
    seen = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _describe_failed_write(path: Path, error: OSError) -> str:
    folder = path.parent
    earlier = sorted(checkpoint_files(folder), reverse=True) if folder.is_dir() else []
    if earlier:
        intact = earlier[0][1]
        size = intact.stat().st_size / 2**20
        kept = f"The previous checkpoint, {intact}, is intact"
        then = f"then resume from it with --load-dir {folder}"
        need = f" (a checkpoint of this run takes about {size:.0f} MiB)"
    else:
        kept, then, need = "No earlier checkpoint exists", "then train again", ""
    try:
        free = f"; {shutil.disk_usage(folder.parent).free / 2**20:.0f} MiB are free there"
    except OSError:
        free = ""
    if error.errno in DISK_FULL:
        what = f"The disk is full: checkpoint {path} could not be written ({error}){free}"
        fix = f"Free some space{need}, {then}."
    else:
        what = f"Checkpoint {path} could not be written ({type(error).__name__}: {error})"
        fix = f"Fix the cause, {then}."
    return f"{what}. Nothing of it was kept. {kept}. {fix}"


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is only starting: nothing of its own is being written yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return False
    return True


def _for_logging(loss: torch.Tensor, loss_dict: Dict, metrics_dict: Dict) -> TRAIN_INTERATION_OUTPUT:
    """A step's outputs as nerfstudio's loop uses them, for logging only (float(...)): detached, so that torch does not
    warn about converting tensors that require gradients."""

    def detached(value: Any) -> Any:
        return value.detach() if isinstance(value, torch.Tensor) else value

    return (
        detached(loss),
        {key: detached(value) for key, value in loss_dict.items()},
        {key: detached(value) for key, value in metrics_dict.items()},
    )


def use_deterministic_algorithms(config: RelsNerfTrainerConfig) -> None:
    """--deterministic True: torch's deterministic algorithms for this process (see the flag's help)."""
    on_gpu = config.machine.device_type == "cuda"
    notes = []
    if on_gpu:
        # cuBLAS is deterministic only with a fixed workspace; it reads this when it creates its first handle.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        model = config.pipeline.model
        if getattr(model, "hash_grid_kernel", None) == "fused":
            model.hash_grid_kernel = "torch"  # the fused table gradient sums with atomic adds, in any order
            notes.append("nerfstudio's hash-grid lookup instead of the fused kernels")
        notes.append("operations without a deterministic implementation warn")
    torch.use_deterministic_algorithms(True, warn_only=on_gpu)
    torch.backends.cudnn.benchmark = False  # ns-train turns benchmarking on, which picks kernels by timing
    torch.backends.cudnn.deterministic = True
    CONSOLE.print(f"Deterministic algorithms on (--deterministic True){': ' + '; '.join(notes) if notes else ''}.")


def catch_up_new_schedulers(schedulers: Dict[str, Any], loaded: Dict[str, Any]) -> None:
    """Bring the schedulers of groups that a checkpoint has no state for (the decoder-guidance group of a checkpoint
    of an older version) to the checkpoint's step count: a fresh one would count from 0, i.e. from phase A's rates."""
    counts = {state.get("last_epoch") for state in loaded.values() if isinstance(state, dict)}
    counts.discard(None)
    if len(counts) != 1:
        return
    (count,) = counts
    for name, scheduler in schedulers.items():
        if name in loaded or not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            continue
        scheduler.last_epoch = count
        rates = [base * factor(count) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, rate in zip(scheduler.optimizer.param_groups, rates):
            group["lr"] = rate
        scheduler._last_lr = rates  # what get_last_lr() reports, as after a step


def move_trailing_parameters(
    states: Dict[str, Any], optimizers: Dict[str, torch.optim.Optimizer], group: str, to: str
) -> None:
    """Move the Adam state of the parameters that a checkpoint's `group` holds beyond this run's into group `to`.

    Checkpoints of older versions trained the decoder-guidance modules in the decoder's group, after the decoder's
    own parameters; they now have a group of their own with its own rate. Their moments move with them; the rates
    and other options of `to` stay this run's. Nothing changes when the checkpoint already has `to` or `group` holds
    no more parameters than this run's."""
    saved = states.get(group)
    if saved is None or to in states or len(saved["param_groups"]) != 1:
        return
    saved_ids = list(saved["param_groups"][0]["params"])
    wanted = len(optimizers[group].param_groups[0]["params"])
    if len(saved_ids) <= wanted:
        return
    kept, moved = saved_ids[:wanted], saved_ids[wanted:]
    moments = saved.get("state", {})
    options = dict(saved["param_groups"][0], params=kept)
    states[group] = {"state": {i: moments[i] for i in kept if i in moments}, "param_groups": [options]}
    states[to] = {
        "state": {new: moments[old] for new, old in enumerate(moved) if old in moments},
        "param_groups": [dict(optimizers[to].state_dict()["param_groups"][0], params=list(range(len(moved))))],
    }


def restart_changed_group(states: Dict[str, Any], optimizers: Dict[str, torch.optim.Optimizer], group: str) -> None:
    """Fresh Adam moments for `group` when the checkpoint's holds another number of parameters than this run's (the
    guidance modules of an earlier layout, whose weights the model maps onto the new ones): its moments would not fit
    the new parameters. Says so once; nothing changes when the counts agree."""
    saved = states.get(group)
    if saved is None or len(saved["param_groups"]) != 1:
        return
    count = len(optimizers[group].param_groups[0]["params"])
    if len(saved["param_groups"][0]["params"]) == count:
        return
    states[group] = optimizers[group].state_dict()
    CONSOLE.print(
        f"The checkpoint's optimizer group '{group}' holds {len(saved['param_groups'][0]['params'])} parameters, this "
        f"run's {count} (an earlier layout of its modules): it resumes with fresh Adam moments for them."
    )
