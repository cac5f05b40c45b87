"""Where a training step's time goes: steps per second of each phase and a per-section breakdown of phase B.

    python -m relsnerf_ns.benchmark.step --data fern --dataparser llff-data --downscale-factor 4 \
        --model relsnerf-r32 --ae-steps 60 --joint-steps 300 --distill-steps 150

Trains one ReLS-NeRF model for the given (short) phase lengths with nerfstudio's Trainer, as `relsnerf-bench train`
builds it, and prints:
- steps per second of each phase, from the device-synchronised wall time of its steps after the first
  `--warmup-steps` (which include kernel selection, CUDA-graph capture, phase C's renders and latent maps);
- a torch-profiler table of `--profile-steps` phase-B steps, by the pipeline's and trainer's `relsnerf/...`
  sections (data, colour and latent rays, losses, patch, backward, optimizer, checks): CPU and device time each.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Literal, Optional

import torch
import tyro
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.utils.rich_utils import CONSOLE

from relsnerf_ns.benchmark.cli import _Training, resolve_device
from relsnerf_ns.benchmark.models import ModelName, spec
from relsnerf_ns.evaluation.held_out import DECODED, warmup_renders
from relsnerf_ns.evaluation.render_timing import median_call_ms, synchronize
from relsnerf_ns.model.decoder_guidance import DecoderGuidanceKind


@dataclass(kw_only=True)
class StepBenchmark(_Training):
    model: ModelName = "relsnerf-r32"
    """The model to profile."""
    output_dir: Path = Path("outputs/step-benchmark")
    """Where the run is written."""
    schedule: str = "short"  # type: ignore[assignment]
    """Phase lengths: the short preset unless --ae-steps / --joint-steps / --distill-steps say otherwise."""
    warmup_steps: int = 20
    """Steps at the start of each phase left out of its rate."""
    profile_steps: int = 20
    """Phase-B steps under the torch profiler (0: none), taken after the warm-up."""
    json_output: Optional[Path] = None
    """Also write the rates and the breakdown as JSON here."""
    joint_pass: Literal["single", "separate"] = "single"
    """Phase B's rays in one bundle, or one pass per kind of ray (the model's --pipeline.model.joint-pass)."""
    compile_training: bool = False
    """Compile the fields' sample evaluations for training (the model's --pipeline.model.compile-training); they
    compile in the warm-up steps."""
    captured_joint_step: bool = False
    """Replay phase B's forward and backward as a CUDA graph (the trainer's --captured-joint-step); it is captured in
    the warm-up steps."""
    decoder_guidance: Optional[DecoderGuidanceKind] = None
    """The model's --pipeline.model.decoder-guidance (None: the method's default)."""
    surface_rays_per_side: Optional[int] = None
    """The model's --pipeline.model.surface-rays-per-side (None: its default)."""
    surface_samples: Optional[int] = None
    """The model's --pipeline.model.surface-samples (None: its default)."""
    decoded_frames: int = 3
    """After training, time this many decoded frames of the held-out views (device-synchronised median, after warm-up
    renders) in the same process: the rendering cost of what the step trains (0: none)."""


def main(options: StepBenchmark) -> Dict[str, object]:
    device = resolve_device("auto")
    model = spec(options.model)
    config = options.model_config(model, Path(options.output_dir).resolve(), device)
    config.timestamp = "step"
    config.steps_per_save = 10**9
    config.pipeline.model.joint_pass = options.joint_pass
    config.pipeline.model.compile_training = options.compile_training
    config.captured_joint_step = options.captured_joint_step
    if options.decoder_guidance is not None:
        config.pipeline.model.decoder_guidance = options.decoder_guidance
    if options.surface_rays_per_side is not None:
        config.pipeline.model.surface_rays_per_side = options.surface_rays_per_side
    if options.surface_samples is not None:
        config.pipeline.model.surface_samples = options.surface_samples
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    schedule = trainer.pipeline.schedule
    _, c_start, total = schedule.boundaries()
    # The profiled steps are the last of phase B, left out of its rate (the profiler slows them down).
    window = (c_start - options.profile_steps, c_start) if options.profile_steps else (-1, -1)
    starts: Dict[str, tuple] = {}
    ends: Dict[str, tuple] = {}
    profiled: Dict[str, object] = {}
    profiler = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU]
        + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else []),
    )

    def mark(step: int) -> tuple:
        synchronize(device)
        return time.perf_counter(), step

    def before(step: int) -> None:
        phase = schedule.phase_at(step)
        within = step - schedule.start_of(phase)
        if within == options.warmup_steps:
            starts[phase.value] = mark(step)
        if step == window[0]:
            ends["B"] = mark(step)
            profiler.start()
        if within == 0 and step > 0:
            previous = schedule.phase_at(step - 1).value
            if step == window[1]:
                profiler.stop()
                profiled["table"] = profiler.key_averages().table(
                    sort_by="cuda_time_total" if device == "cuda" else "cpu_time_total", row_limit=45
                )
            ends.setdefault(previous, mark(step))

    trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before))
    trainer.train()
    ends.setdefault(schedule.phase_at(total - 1).value, mark(total))
    rates = {
        phase: (ends[phase][1] - begin[1]) / max(ends[phase][0] - begin[0], 1e-9)
        for phase, begin in starts.items()
        if phase in ends and ends[phase][1] > begin[1]
    }
    CONSOLE.rule(f"{options.model}: steps per second after {options.warmup_steps} warm-up steps")
    for phase, rate in sorted(rates.items()):
        CONSOLE.print(f"phase {phase}: {rate:.1f} steps/s ({1000.0 / rate:.1f} ms per step)")
    if "table" in profiled:
        print(profiled["table"])
    captured = trainer.captured_step
    if captured is not None:
        CONSOLE.print(
            f"captured phase-B step: {captured.replays} replays, {captured.captures} captures"
            + (f", {captured.failure}" if captured.failure else "")
        )
    decoded_ms = decoded_frame_ms(trainer, device, options.decoded_frames)
    if decoded_ms is not None:
        CONSOLE.print(f"decoded frame: {decoded_ms:.1f} ms (median of {options.decoded_frames} held-out views)")
    result = {
        "model": options.model,
        "joint_pass": options.joint_pass,
        "compile_training": options.compile_training,
        "captured_joint_step": options.captured_joint_step,
        "mixed_precision": options.mixed_precision,
        "decoder_guidance": config.pipeline.model.decoder_guidance_kind(),
        "surface_rays_per_side": config.pipeline.model.surface_rays_per_side,
        "surface_samples": config.pipeline.model.surface_samples,
        "decoded_ms_per_frame": decoded_ms,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
    }
    result.update({"steps_per_second": rates, "profile_table": profiled.get("table")})
    if options.json_output is not None:
        Path(options.json_output).write_text(json.dumps(result, indent=2))
    return result


def decoded_frame_ms(trainer, device: str, frames: int) -> Optional[float]:
    """Median ms of a decoded frame of the first `frames` held-out views, as ns-eval times them."""
    if frames <= 0:
        return None
    model = trainer.pipeline.model
    cameras = trainer.pipeline.datamanager.eval_dataset.cameras
    views = [cameras[i : i + 1].to(model.device) for i in range(min(frames, len(cameras)))]
    model.eval()
    with torch.no_grad():
        calls = [functools.partial(model.render_decoded_outputs, camera) for camera in views]
        return median_call_ms(calls, device, warmup=max(len(calls), warmup_renders(DECODED)))


def entrypoint() -> None:
    main(tyro.cli(StepBenchmark))


if __name__ == "__main__":
    entrypoint()
