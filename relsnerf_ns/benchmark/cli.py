"""`relsnerf-bench`: nerfacto against ReLS-NeRF variants on one scene, reported like the paper's Tables 1 and 2.

    relsnerf-bench all --data SCENE --output-dir bench/SCENE [--schedule paper|short|minimal] [--models ...]

or in separate steps, each of which fits a 10-minute GPU command (see docs/benchmark.md):

    relsnerf-bench train    --model nerfacto --data SCENE --output-dir OUT   # one model per invocation
    relsnerf-bench evaluate --model nerfacto --output-dir OUT                # held-out metrics + RCC
    relsnerf-bench time     --output-dir OUT                                 # every model in one process
    relsnerf-bench report   --output-dir OUT                                 # markdown + JSON + PNG

What is measured:

- training (`train.py`): every model on the same data and split, ReLS-NeRF through phases A, B, C, nerfacto
  for as many steps as phase B; wall time per phase, peak GPU memory;
- evaluation (`evaluate.py`): PSNR, SSIM, FLIP and LPIPS (when its AlexNet weights are in the torch cache) on
  the held-out views for each output (nerfacto: `rgb`; ReLS-NeRF: `decoded` and its colour NeRF `rgb_nerf`), and RCC on
  an LLFF-style spiral video (`spiral.py`);
- timing: the median full-resolution render time per frame of every output of every model, measured in one process
  on the same cameras, so the speed-up ratios compare like with like;
- report (`report.py`): `benchmark.md` (Tables 1 and 2), `benchmark.json` (every figure),
  `benchmark_speed_quality.png`.

Folder layout: OUT/runs/<model>/<method>/bench/ (nerfstudio runs: config.yml, checkpoints, tensorboard logs),
OUT/results/<model>.fit.json, <model>.eval.json, timing.json (per-step records), OUT/benchmark.* (the report).

Python API (the tests use it to shrink the models): `Train(...).run(config_transform=...)`,
`All(...).run(config_transform=...)`, `Evaluate(...).run()`, `Time(...).run()`, `Report(...).run()`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import torch
import tyro
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from relsnerf_ns.benchmark.evaluate import (
    RCCDepth,
    held_out_quality,
    plain_path_psnr,
    spiral_for,
    spiral_rcc,
    time_model,
)
from relsnerf_ns.benchmark.models import (
    DEFAULT_MODELS,
    MODEL_ORDER,
    BenchmarkError,
    DataParserName,
    ModelBuild,
    ModelName,
    ModelSpec,
    ScheduleName,
    StepBudget,
    build_config,
    check_weights,
    load_trained,
    make_dataparser,
    model_choices,
    spec,
)
from relsnerf_ns.benchmark.report import (
    BenchmarkReport,
    ModelResult,
    QualityMetrics,
    RenderTiming,
    describe_machine,
    format_number,
    write_report,
)
from relsnerf_ns.benchmark.spiral import evenly_spaced
from relsnerf_ns.benchmark.train import ConfigTransform, FitRecord, train_model
from relsnerf_ns.data.atomic_files import atomic_write_text
from relsnerf_ns.evaluation.image_metrics import OfflineLPIPS
from relsnerf_ns.rendering.hash_grid_kernel import use_fused_hash_grids
from relsnerf_ns.rendering.out_of_memory import free_cached_memory


def location_setting(path: Path) -> str:
    """How a record names a scene or weight folder: its name and a digest of its absolute path ("fern#1a2b3c4d").
    Records then say which scene they measured without writing a machine's paths, and two folders of one name
    (another scene called fern) still count as different settings."""
    resolved = Path(path).resolve()
    return f"{resolved.name}#{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"


def location_name(setting: object) -> str:
    """The folder name of a `location_setting` (or of an absolute path, as older records stored)."""
    return Path(str(setting).split("#")[0]).name


SHARED_SETTINGS = ("data", "dataparser", "downscale_factor", "schedule", "nerf_steps", "seed")
"""Fit settings that must agree between the models of one benchmark for the comparison to be fair."""


@dataclass(frozen=True)
class Layout:
    """Where a benchmark keeps its files."""

    root: Path

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def fit_json(self, name: str) -> Path:
        return self.results / f"{name}.fit.json"

    def eval_json(self, name: str) -> Path:
        return self.results / f"{name}.eval.json"

    @property
    def timing_json(self) -> Path:
        return self.results / "timing.json"

    def trained_models(self) -> List[str]:
        """Models with a fit record, in report order."""
        return [name for name in MODEL_ORDER if self.fit_json(name).exists()]

    def finished_models(self) -> List[str]:
        """Models whose training is complete, in report order."""
        return [name for name in self.trained_models() if self.fit(name).completed]

    def fit(self, name: str) -> FitRecord:
        path = self.fit_json(name)
        if not path.exists():
            raise BenchmarkError(f"{name} has not been trained in {self.root} (no {path}): run relsnerf-bench train")
        return FitRecord.from_json(path)


def _fit_signature(record: FitRecord) -> Dict[str, object]:
    """What an evaluation or timing was made from: a retrained model makes them stale."""
    return {"settings": record.settings, "next_step": record.next_step, "pieces": record.pieces}


def _read_json(path: Path) -> Dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, data: Dict) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def resolve_device(device: str) -> Literal["cuda", "cpu"]:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda was asked for, but torch sees no CUDA GPU")
    return device  # type: ignore[return-value]


# ---------------------------------------------------------------------- options (tyro turns docstrings into --help)
@dataclass(kw_only=True)
class _Folder:
    output_dir: Path
    """Benchmark folder: runs/ (nerfstudio runs), results/ (per-model records) and the report files."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """Where to train, render and time; 'auto' is cuda when torch sees a GPU."""

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.output_dir).resolve())


@dataclass(kw_only=True)
class _Training:
    data: Path
    """Scene folder (one scene; every model is trained on it with the same dataparser settings and split)."""
    dataparser: DataParserName = "nerfstudio-data"
    """'nerfstudio-data' (transforms.json) or 'llff-data' (poses_bounds.npy + images_N/, e.g. fern)."""
    downscale_factor: Optional[int] = None
    """Passed to the dataparser (llff-data: read images_N/, 1 = images/; default: the dataparser's own)."""
    schedule: ScheduleName = "paper"
    """Step counts: 'paper' (appendix B: A/B/C = 3000/20000/10000 for R32, 500/20000/3000 for pretrained decoders),
    'short' (about 1/7 of that), 'minimal' (2/6/2: a smoke test). nerfacto trains as many steps as phase B."""
    ae_steps: Optional[int] = None
    """Override phase A's steps (every ReLS-NeRF model)."""
    joint_steps: Optional[int] = None
    """Override phase B's steps (every ReLS-NeRF model, and nerfacto's training length)."""
    distill_steps: Optional[int] = None
    """Override phase C's steps (every ReLS-NeRF model)."""
    num_distill_renders: Optional[int] = None
    """RGB-NeRF renders made for phase C (default: the preset's, 512 for paper as in the paper, 64 for short; 3 for
    minimal). Each is a full-resolution per-pixel render (fern at 1008x756 on an H200 without tinycudann: about
    0.6 s, writing included)."""
    taef2_weights: Path = Path("weights/taef2")
    """Folder with taef2_encoder.pth and taef2_decoder.pth (relsnerf-tiny's pretrained tiny autoencoder)."""
    sd_vae_weights: Optional[Path] = None
    """Local diffusers folder of the Stable Diffusion VAE; when given, relsnerf (SD-VAE) joins the default models."""
    mixed_precision: bool = True
    """Train with mixed precision (as the methods do; nerfstudio turns it off on a CPU). Renders are float32."""
    seed: int = 42
    """Random seed of every training."""
    time_limit_minutes: Optional[float] = None
    """Stop a training after this many minutes with a checkpoint; the same train command then continues it."""
    force: bool = False
    """Train (and evaluate) again even when a finished run with the same settings exists."""

    def budget(self) -> StepBudget:
        return StepBudget(self.schedule, self.ae_steps, self.joint_steps, self.distill_steps)

    def settings(self, model: ModelSpec) -> Dict[str, object]:
        budget = self.budget()
        settings: Dict[str, object] = {
            "data": location_setting(self.data),
            "dataparser": self.dataparser,
            "downscale_factor": self.downscale_factor,
            "schedule": self.schedule,
            "nerf_steps": budget.steps_for(spec("nerfacto"))["B"],
            "seed": self.seed,
            "steps": budget.steps_for(model),
            "mixed_precision": self.mixed_precision,
        }
        if model.kind == "relsnerf":
            settings["num_distill_renders"] = self.num_distill_renders
        if model.autoencoder == "tiny":
            settings["weights"] = location_setting(self.taef2_weights)
        if model.autoencoder == "sd":
            settings["weights"] = None if self.sd_vae_weights is None else location_setting(self.sd_vae_weights)
        return settings

    def model_config(self, model: ModelSpec, runs: Path, device: Literal["cuda", "cpu"]) -> TrainerConfig:
        if not Path(self.data).exists():
            raise BenchmarkError(f"--data {self.data} does not exist")
        build = ModelBuild(
            dataparser=make_dataparser(self.dataparser, Path(self.data).resolve(), self.downscale_factor),
            budget=self.budget(),
            output_dir=runs,
            device=device,
            mixed_precision=self.mixed_precision,
            seed=self.seed,
            taef2_weights=Path(self.taef2_weights).resolve(),
            sd_vae_weights=None if self.sd_vae_weights is None else Path(self.sd_vae_weights).resolve(),
            num_distill_renders=self.num_distill_renders,
        )
        return build_config(model, build)


@dataclass(kw_only=True)
class _Spiral:
    spiral_frames: int = 120
    """Frames of the LLFF-style spiral video that RCC is computed on (the paper: 120); timing uses some of them."""
    spiral_focus_depth: Optional[float] = None
    """Depth the spiral looks at (scene units); default: LLFF's rule from the sparse points, else where the training
    cameras' axes converge."""
    spiral_rotations: int = 2
    """Turns of the spiral (LLFF: 2 over 120 frames)."""


@dataclass(kw_only=True)
class _Evaluation(_Spiral):
    rcc_depth: RCCDepth = "full"
    """Depth RCC reprojects with: 'full' = the per-pixel NeRF depth for every output; 'latent' = the decoded path's
    1/8-resolution depth (faster: no per-pixel render; no RCC of the RGB-NeRF branch)."""
    rcc_min_accumulation: Optional[float] = None
    """When set, RCC only uses source pixels whose accumulation exceeds it (e.g. 0.5 to leave out empty sky)."""
    save_images: int = 1
    """Held-out views saved as PNG (ground truth | outputs) in results/."""
    fused_lookups_for_quality: bool = True
    """Render nerfacto's held-out views and spiral (quality only, never its timing) with relsnerf's fused hash-grid
    lookups: the same images to float32 rounding, several times faster without tinycudann."""


@dataclass(kw_only=True)
class _Timing(_Spiral):
    timing_frames: int = 10
    """Spiral frames (evenly spread) each rendered once, timed, at full evaluation resolution; the median counts."""
    timing_warmup: int = 2
    """Untimed renders per output before timing (kernel selection, allocations); at least 3 for the decoded path,
    whose fast renderer captures a CUDA graph the second time it sees a resolution."""


def _resolve_models(models: Optional[Sequence[str]], sd_vae_weights: Optional[Path]) -> List[str]:
    """The models to run, in report order (SD-VAE joins the defaults only when its weights are given)."""
    if models is None:
        chosen = list(DEFAULT_MODELS) + (["relsnerf"] if sd_vae_weights is not None else [])
    else:
        chosen = list(dict.fromkeys(models))
    for name in chosen:
        spec(name)
    if "relsnerf" in chosen and sd_vae_weights is None:
        raise BenchmarkError(
            "relsnerf (SD-VAE) needs the Stable Diffusion VAE as a local diffusers folder: pass --sd-vae-weights DIR"
        )
    return [name for name in MODEL_ORDER if name in chosen]


# ---------------------------------------------------------------------- steps
def _train(
    options: _Training,
    folder: _Folder,
    name: str,
    config_transform: Optional[ConfigTransform] = None,
    config: Optional[TrainerConfig] = None,
) -> FitRecord:
    layout = folder.layout
    device = resolve_device(folder.device)
    model = spec(name)
    if config is None:
        config = prepare_config(options, layout, model, device, config_transform)
    CONSOLE.rule(f"[bold]Training {name}")
    settings = {**options.settings(model), **model_choices(config)}
    record = train_model(
        model,
        config,
        layout.fit_json(name),
        layout.root,
        settings,
        time_limit_minutes=options.time_limit_minutes,
        force=options.force,
    )
    free_cached_memory()
    return record


def prepare_config(
    options: _Training,
    layout: Layout,
    model: ModelSpec,
    device: Literal["cuda", "cpu"],
    config_transform: Optional[ConfigTransform] = None,
) -> TrainerConfig:
    """A model's training config, transformed, with its pretrained weights checked (before anything trains)."""
    config = options.model_config(model, layout.runs, device)
    if config_transform is not None:
        config = config_transform(model.name, config) or config
    check_weights(model, config)
    return config


def _evaluate(options: _Evaluation, folder: _Folder, name: str) -> Dict[str, object]:
    layout = folder.layout
    device = resolve_device(folder.device)
    model = spec(name)
    record = layout.fit(name)
    if not record.completed:
        raise BenchmarkError(
            f"{name}'s training is unfinished (next step {record.next_step} of {record.total_steps}): run the same "
            "relsnerf-bench train command again to continue it"
        )
    CONSOLE.rule(f"[bold]Evaluating {name}")
    _, pipeline, step = load_trained(layout.root / record.config, device)
    if model.kind == "nerfacto" and options.fused_lookups_for_quality:
        use_fused_hash_grids(pipeline.model)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    layout.results.mkdir(parents=True, exist_ok=True)
    held_out = held_out_quality(
        pipeline,
        model,
        device,
        OfflineLPIPS(),
        save_images=options.save_images,
        save_prefix=str(layout.results / f"{name}_heldout"),
    )
    spiral = spiral_for(pipeline, options.spiral_frames, options.spiral_focus_depth, options.spiral_rotations)
    rcc = spiral_rcc(pipeline, model, spiral, device, options.rcc_depth, options.rcc_min_accumulation)
    quality = {output: dict(values) for output, values in held_out["quality"].items()}  # type: ignore[union-attr]
    for output, result in rcc.items():
        quality.setdefault(output, {})["rcc"] = result["rcc_db"]
    if model.kind == "relsnerf":
        quality["decoded"]["psnr_plain_path"] = plain_path_psnr(pipeline, device)
    evaluation = {
        "name": name,
        "checkpoint_step": step,
        "fit": _fit_signature(record),
        "quality": quality,
        "rcc": rcc,
        "rcc_depth": options.rcc_depth,
        "rcc_min_accumulation": options.rcc_min_accumulation,
        "spiral": spiral.describe(),
        "num_eval_images": held_out["num_eval_images"],
        "resolution": held_out["resolution"],
        "eval_timing": held_out["timing"],
        "peak_gpu_memory_mb_render": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "device": device,
        "machine": describe_machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    _write_json(layout.eval_json(name), evaluation)
    summary = ", ".join(
        f"{output}: PSNR {format_number(values.get('psnr'), '.2f')}, RCC {format_number(values.get('rcc'), '.2f')}"
        for output, values in quality.items()
    )
    CONSOLE.print(f"[green]{name}: {summary}; record {layout.eval_json(name)}")
    del pipeline
    free_cached_memory()
    return evaluation


def _time(options: _Timing, folder: _Folder, names: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Time every model in this one process, on the same cameras, one model loaded at a time."""
    layout = folder.layout
    device = resolve_device(folder.device)
    names = list(names) if names else layout.finished_models()
    if not names:
        raise BenchmarkError(f"no trained model in {layout.root}: run relsnerf-bench train first")
    CONSOLE.rule(f"[bold]Timing {', '.join(names)} (one process)")
    cameras = None
    models: Dict[str, object] = {}
    for name in names:
        record = layout.fit(name)
        if not record.completed:
            raise BenchmarkError(f"{name}'s training is unfinished: finish it before timing")
        _, pipeline, _ = load_trained(layout.root / record.config, device)
        if cameras is None:
            spiral = spiral_for(pipeline, options.spiral_frames, options.spiral_focus_depth, options.spiral_rotations)
            chosen = evenly_spaced(options.timing_frames, len(spiral.cameras))
            cameras = [spiral.cameras[i : i + 1].to(device) for i in chosen]
        measured = time_model(pipeline, spec(name), cameras, device, options.timing_warmup)
        models[name] = {**measured, "fit": _fit_signature(record)}
        del pipeline
        free_cached_memory()
    assert cameras is not None
    timing = {
        "machine": describe_machine(),
        "device": device,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "frames_timed": len(cameras),
        "warmup": options.timing_warmup,
        "spiral_frames": options.spiral_frames,
        "resolution": [int(cameras[0].width.flatten()[0]), int(cameras[0].height.flatten()[0])],
        "models": models,
    }
    _write_json(layout.timing_json, timing)
    for name, measured in models.items():
        parts = ", ".join(f"{o} {t['ms_per_frame']:.1f} ms" for o, t in measured["timing"].items())  # type: ignore
        CONSOLE.print(f"  {name}: {parts}")
    CONSOLE.print(f"[green]timings of {len(models)} models written to {layout.timing_json}")
    return timing


def _timing_is_current(layout: Layout, names: Sequence[str]) -> bool:
    if not layout.timing_json.exists():
        return False
    timing = _read_json(layout.timing_json)
    for name in names:
        entry = timing.get("models", {}).get(name)
        if entry is None or entry.get("fit") != _fit_signature(layout.fit(name)):
            return False
    return True


def collect_report(layout: Layout, command: str) -> BenchmarkReport:
    """A `BenchmarkReport` from the records in the benchmark folder (fit, evaluation, timing)."""
    names = layout.trained_models()
    if not names:
        raise BenchmarkError(f"no trained model in {layout.root}")
    records = {name: layout.fit(name) for name in names}
    evaluations = {n: _read_json(layout.eval_json(n)) for n in names if layout.eval_json(n).exists()}
    timing = _read_json(layout.timing_json) if layout.timing_json.exists() else None
    notes: List[str] = []
    models: List[ModelResult] = []
    resolution: Optional[Tuple[int, int]] = None
    timed_in_one_process = []
    for name in names:
        model, record = spec(name), records[name]
        result = ModelResult(name=name, kind=model.kind, autoencoder=model.autoencoder)
        result.fit_seconds = {p: s for p, s in record.fit_seconds.items() if record.steps.get(p, 0) > 0}
        result.steps = {p: n for p, n in record.steps.items() if n > 0}
        result.peak_gpu_memory_mb_train = record.peak_gpu_memory_mb_train
        result.notes += _model_notes(model, record)
        evaluation = evaluations.get(name)
        if evaluation is None:
            result.notes.append(f"not evaluated yet: relsnerf-bench evaluate --model {name}")
        else:
            if evaluation.get("fit") != _fit_signature(record):
                result.notes.append("its evaluation predates its latest training: evaluate it again")
            result.num_eval_images = evaluation.get("num_eval_images")
            result.peak_gpu_memory_mb_render = evaluation.get("peak_gpu_memory_mb_render")
            resolution = resolution or tuple(evaluation["resolution"])  # type: ignore[assignment]
            for output in model.outputs:
                values = evaluation["quality"].get(output, {})
                result.quality[output] = QualityMetrics(
                    psnr=values.get("psnr"),
                    ssim=values.get("ssim"),
                    flip=values.get("flip"),
                    lpips=values.get("lpips"),
                    rcc=values.get("rcc"),
                )
            decoded = evaluation["quality"].get("decoded", {})
            if decoded.get("psnr_plain_path") is not None and decoded.get("psnr") is not None:
                result.notes.append(
                    f"decoded output, held-out PSNR through the default inference path {decoded['psnr']:.3f} dB, "
                    f"through the plain path (float32, chunked) {decoded['psnr_plain_path']:.3f} dB: "
                    f"{decoded['psnr'] - decoded['psnr_plain_path']:+.3f} dB"
                )
        entry = (timing or {}).get("models", {}).get(name)
        if entry is not None:
            if entry.get("fit") != _fit_signature(record):
                result.notes.append("its timing predates its latest training: run relsnerf-bench time again")
            for output, values in entry["timing"].items():
                result.timing[output] = RenderTiming(
                    ms_per_frame=values["ms_per_frame"],
                    resolution=tuple(values["resolution"]),
                    num_frames_timed=values.get("num_frames_timed"),
                    breakdown_ms=values.get("breakdown_ms"),
                    peak_gpu_memory_mb=values.get("peak_gpu_memory_mb"),
                )
            result.peak_gpu_memory_mb_render = entry.get("peak_gpu_memory_mb_render")
            timed_in_one_process.append(name)
            inference = entry.get("inference") or {}
            if inference:
                result.notes.append(
                    f"decoded path timed with inference_path={inference.get('inference_path')}"
                    + (
                        f", CUDA graphs {'on' if inference['cuda_graphs'] else 'off'}"
                        if "cuda_graphs" in inference
                        else ""
                    )
                    + (
                        f", decoder in {'float16' if inference['half_precision_decoder'] else 'float32'}"
                        if "half_precision_decoder" in inference
                        else ""
                    )
                )
        elif evaluation is not None:
            for output, values in evaluation["eval_timing"].items():
                result.timing[output] = RenderTiming(
                    ms_per_frame=values["ms_per_frame"],
                    resolution=tuple(evaluation["resolution"]),
                    num_frames_timed=values.get("num_frames_timed"),
                )
            result.notes.append(
                "render times from its own evaluate process (held-out views), not from the shared timing process"
            )
        models.append(result)

    if timing is not None and timed_in_one_process:
        resolution = tuple(timing["resolution"])  # type: ignore[assignment]
        notes.append(
            f"Render times of {', '.join(timed_in_one_process)} were measured in one process ({timing['date']}, "
            f"{timing['device']}): {timing['frames_timed']} frames spread over the {timing['spiral_frames']}-frame "
            f"spiral at {resolution[0]}x{resolution[1]}, each output rendered {timing['warmup']} times untimed first "
            "(the decoded path at least 3: it captures a CUDA graph the second time it sees a resolution), then once "
            "per frame with the device synchronised before and after; the median counts. One camera at a time, "
            "outputs left on the device."
        )
    notes += _shared_notes(records, evaluations)
    if "relsnerf" not in names:
        notes.append(
            "relsnerf (SD-VAE, the paper's Ours-SD) was skipped: it needs the Stable Diffusion VAE as a local "
            "diffusers folder (--sd-vae-weights DIR) and none was given."
        )
    first = records[names[0]]
    machine = timing["machine"] if timing is not None else describe_machine()
    schedule = f"{first.settings['schedule']} (" + "; ".join(
        f"{n} " + "/".join(f"{p}={s}" for p, s in records[n].steps_planned.items()) for n in names
    )
    schedule += ")"
    video_frames = next((e["spiral"]["frames"] for e in evaluations.values()), 120)
    return BenchmarkReport(
        scene=location_name(first.settings["data"]),
        resolution=resolution or (0, 0),
        schedule=schedule,
        machine=machine,
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        command=command,
        models=models,
        video_frames=int(video_frames),
        notes=notes,
    )


def _model_notes(model: ModelSpec, record: FitRecord) -> List[str]:
    notes = []
    if model.kind == "nerfacto":
        notes.append(
            f"nerfstudio's nerfacto trained for {record.steps_planned.get('B')} steps, the length of ReLS-NeRF's "
            "phase B (its whole fit counts as phase B); camera optimizer off (with it on, the training poses drift "
            "away from the held-out cameras' and held-out PSNR collapses); VanillaDataManager with nerfacto's 4096 "
            "random rays per step (the rays of ReLS-NeRF's phase B) instead of its parallel datamanager"
        )
    else:
        renders = record.details.get("num_distill_renders")
        notes.append(
            "decoded = the decoder applied to the latent map rendered at 1/8 resolution (what the viewer and "
            "ns-render show); RGB-NeRF branch = its colour NeRF rendered with one ray per pixel"
            + (f"; phase C distilled from {renders} RGB-NeRF renders" if renders is not None else "")
        )
    if not record.completed:
        notes.append(f"training unfinished: {record.next_step} of {record.total_steps} steps")
    if record.pieces > 1:
        notes.append(f"trained in {record.pieces} pieces (resumed from checkpoints); fit times add the pieces up")
    return notes + list(record.notes)


def _shared_notes(records: Dict[str, FitRecord], evaluations: Dict[str, Dict]) -> List[str]:
    notes = []
    first_name, first = next(iter(records.items()))
    settings = first.settings
    notes.append(
        f"Data: {location_name(settings['data'])} read by {settings['dataparser']}"
        + (f" with downscale factor {settings['downscale_factor']}" if settings["downscale_factor"] else "")
        + f"; the dataparser's own train/eval split; seed {settings['seed']}."
    )
    implementations = {str(r.details.get("implementation")) for r in records.values() if r.details}
    if implementations:
        notes.append(
            f"Hash grids and MLPs: {', '.join(sorted(implementations))} implementation"
            + (" (tinycudann not used)." if implementations == {"torch"} else ".")
        )
    lookups = {name: r.details.get("hash_grid_lookup") for name, r in records.items() if r.details}
    if "fused" in lookups.values():
        fused = sorted(name for name, lookup in lookups.items() if lookup == "fused")
        stock = sorted(name for name, lookup in lookups.items() if lookup != "fused")
        notes.append(
            f"Hash-grid lookups: {', '.join(fused)} use relsnerf's fused Triton kernels (hash_grid_kernel.py, "
            "the same arithmetic as nerfstudio's torch lookup) in training and rendering"
            + (
                f"; {', '.join(stock)} runs as nerfstudio ships it (its timing and training use nerfstudio's torch "
                "lookup; only its quality renders, which are not timed, use the fused lookups to save time)."
                if stock
                else "."
            )
        )
    for name, record in records.items():
        different = [k for k in SHARED_SETTINGS if record.settings.get(k) != settings.get(k)]
        if different:
            notes.append(
                f"WARNING: {name} was trained with other settings than {first_name} ({', '.join(different)}): "
                "the comparison is not like for like"
            )
    if evaluations:
        evaluation = next(iter(evaluations.values()))
        spiral = evaluation["spiral"]
        depth = (
            "the per-pixel NeRF depth ('depth': nerfacto's median termination distance, and the same output of "
            "ReLS-NeRF's colour NeRF, used for its decoded frames too)"
            if evaluation["rcc_depth"] == "full"
            else "the decoded path's own depth (rendered at 1/8 resolution, upsampled)"
        )
        notes.append(
            f"RCC (dB, eq. 5) over adjacent frames of a {spiral['frames']}-frame LLFF spiral (2 rotations around the "
            f"average training camera, radii {', '.join(f'{r:.3g}' for r in spiral['radii'])}, focus depth "
            f"{spiral['focus_depth']:.3g} from {spiral['focus_source']}) at {spiral['resolution'][0]}x"
            f"{spiral['resolution'][1]}, reprojected with {depth}."
        )
    return notes


def _report(options: _Timing, folder: _Folder, timing: str, command: Optional[str]) -> Dict[str, Path]:
    layout = folder.layout
    names = layout.finished_models()  # unfinished ones are reported, with a note, but not timed
    if names and (timing == "run" or (timing == "auto" and not _timing_is_current(layout, names))):
        _time(options, folder, names)
    report = collect_report(layout, command or _command_line())
    paths = write_report(report, layout.root)
    CONSOLE.rule("[bold]Report")
    for kind, path in paths.items():
        CONSOLE.print(f"  {kind}: {path}")
    return paths


def _command_line() -> str:
    return " ".join(["relsnerf-bench", *sys.argv[1:]])


# ---------------------------------------------------------------------- subcommands
@dataclass(kw_only=True)
class Train(_Folder, _Training):
    """Train one model (nerfacto or a ReLS-NeRF variant) and record its fitting time per phase."""

    model: ModelName
    """The model to train."""

    def run(self, config_transform: Optional[ConfigTransform] = None) -> FitRecord:
        return _train(self, self, self.model, config_transform)


@dataclass(kw_only=True)
class Evaluate(_Evaluation, _Folder):
    """Evaluate one trained model: held-out PSNR/SSIM/FLIP/LPIPS per output and RCC on the spiral video."""

    model: ModelName
    """The model to evaluate."""

    def run(self) -> Dict[str, object]:
        return _evaluate(self, self, self.model)


@dataclass(kw_only=True)
class Time(_Timing, _Folder):
    """Time the full-resolution rendering of every trained model in this one process (fair speed-up ratios)."""

    models: Optional[Tuple[ModelName, ...]] = None
    """Models to time (default: every trained model in the folder)."""

    def run(self) -> Dict[str, object]:
        return _time(self, self, self.models)


@dataclass(kw_only=True)
class Report(_Timing, _Folder):
    """Write benchmark.md, benchmark.json and benchmark_speed_quality.png from the records in the folder."""

    timing: Literal["auto", "run", "skip"] = "auto"
    """'auto': time every model now unless results/timing.json is current; 'run': always; 'skip': use what exists
    (timing.json, else each model's evaluate-process times, marked as such)."""

    def run(self, command: Optional[str] = None) -> Dict[str, Path]:
        return _report(self, self, self.timing, command)


@dataclass(kw_only=True)
class All(_Evaluation, _Timing, _Folder, _Training):
    """Train and evaluate every model, time them all in one process, and write the report."""

    models: Optional[Tuple[ModelName, ...]] = None
    """Models to run (default: nerfacto relsnerf-r32 relsnerf-tiny, plus relsnerf when --sd-vae-weights is given)."""

    def run(self, config_transform: Optional[ConfigTransform] = None, command: Optional[str] = None) -> Dict[str, Path]:
        layout = self.layout
        device = resolve_device(self.device)
        names = _resolve_models(self.models, self.sd_vae_weights)
        # Every config is built and every weight file checked before the first model trains.
        configs = {name: prepare_config(self, layout, spec(name), device, config_transform) for name in names}
        CONSOLE.print(
            f"[bold]relsnerf-bench[/bold]: {', '.join(names)} on {self.data}, schedule "
            f"{self.budget().describe([spec(n) for n in names])}, device {device}, folder {layout.root}"
        )
        for name in names:
            record = _train(self, self, name, config=configs[name])
            if not record.completed:
                raise BenchmarkError(f"{name} stopped at its time limit: run the same command again to continue")
            evaluation = layout.eval_json(name)
            if self.force or not evaluation.exists() or _read_json(evaluation).get("fit") != _fit_signature(record):
                _evaluate(self, self, name)
            else:
                CONSOLE.print(f"[green]{name}: already evaluated ({evaluation})")
        return _report(self, self, "auto", command)


SUBCOMMANDS = {"train": Train, "evaluate": Evaluate, "time": Time, "report": Report, "all": All}


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of `relsnerf-bench`."""
    command = tyro.extras.subcommand_cli_from_dict(
        SUBCOMMANDS, prog="relsnerf-bench", description=__doc__.split("\n\n")[0], args=argv
    )
    try:
        command.run()
    except BenchmarkError as error:
        CONSOLE.print(f"[bold red]relsnerf-bench: {error}")
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
