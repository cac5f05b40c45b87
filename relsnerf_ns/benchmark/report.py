"""Result records and report writers of the benchmark (`relsnerf-bench`): JSON, markdown tables, speed/quality plot.

The benchmark trains nerfacto and ReLS-NeRF variants on one scene and fills a `BenchmarkReport`:

- `ModelResult.quality[output]`: held-out PSNR / SSIM / FLIP / LPIPS and the spiral-video RCC per output. Outputs are
  `"rgb"` (nerfacto), `"decoded"` (ReLS-NeRF: the decoder applied to the rendered latent map) and `"rgb_nerf"`
  (ReLS-NeRF's colour NeRF branch).
- `ModelResult.timing[output]`: median full-resolution render time per frame.
- `ModelResult.fit_seconds[phase]`: fitting wall time per phase, keyed "A" (autoencoder), "B" (NeRF fitting; the only
  phase of nerfacto, as in the paper's Table 2) and "C" (decoder distillation).

Writers: `BenchmarkReport.to_json` (every figure, derived ones included), `write_markdown` (tables shaped like the
paper's Tables 1 and 2), `write_speed_quality_plot` (PNG) and `write_report` (all three). Every file is written
atomically (`atomic_files`), so a crash never leaves half a file behind.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type, TypeVar

from relsnerf_ns.data.atomic_files import atomic_write_bytes, atomic_write_text

OUTPUT_RGB = "rgb"
OUTPUT_DECODED = "decoded"
OUTPUT_RGB_NERF = "rgb_nerf"
OUTPUT_ORDER = (OUTPUT_RGB, OUTPUT_DECODED, OUTPUT_RGB_NERF)
OUTPUT_LABELS = {OUTPUT_RGB: "RGB", OUTPUT_DECODED: "decoded", OUTPUT_RGB_NERF: "RGB-NeRF branch"}

PHASE_ORDER = ("A", "B", "C")
PHASE_LABELS = {"A": "(A) AE", "B": "(B) NeRF", "C": "(C) decoder"}

REFERENCE_KIND = "nerfacto"
"""Speed-ups are relative to the `"rgb"` output of the first model of this kind (the paper's RGB NeRF, "[1x]")."""

MISSING = "–"
SCHEMA_VERSION = 1

T = TypeVar("T")


@dataclass
class QualityMetrics:
    """Quality of one output: held-out-view PSNR (dB), SSIM, FLIP, LPIPS, and RCC (dB) on the spiral video."""

    psnr: Optional[float] = None
    ssim: Optional[float] = None
    flip: Optional[float] = None
    """Mean LDR-FLIP error (0 = identical, lower is better) at FLIP's default 67 pixels per degree; None when not
    measured (an evaluation recorded before FLIP was part of it)."""
    lpips: Optional[float] = None
    """None when not measured (its AlexNet weights are downloaded on first use, which an offline machine cannot)."""
    rcc: Optional[float] = None


@dataclass
class RenderTiming:
    """Full-resolution render time of one output."""

    ms_per_frame: float
    """Median over the timed frames (after warm-up), milliseconds."""
    resolution: Tuple[int, int]
    """(width, height) of the rendered frames."""
    fps: Optional[float] = None
    """Frames per second; derived from ms_per_frame when not given."""
    num_frames_timed: Optional[int] = None
    breakdown_ms: Optional[Dict[str, float]] = None
    """Optional median ms per stage, e.g. {"latent_render": 60.0, "decode": 25.0}."""
    peak_gpu_memory_mb: Optional[float] = None
    """Peak GPU memory while rendering this output (model weights included), when measured on its own."""

    def __post_init__(self) -> None:
        self.resolution = (int(self.resolution[0]), int(self.resolution[1]))
        if self.fps is None and _finite(self.ms_per_frame) and self.ms_per_frame > 0:
            self.fps = 1000.0 / self.ms_per_frame

    def seconds_for(self, num_frames: int) -> float:
        """Time to render a video of num_frames at the median rate (the paper's Table 2 reports 120 frames)."""
        return self.ms_per_frame * num_frames / 1000.0


@dataclass
class ModelResult:
    """Everything measured for one trained model."""

    name: str
    """e.g. "nerfacto", "relsnerf-r32", "relsnerf-tiny", "relsnerf" (SD-VAE)."""
    kind: str
    """"nerfacto" or "relsnerf"."""
    autoencoder: Optional[str] = None
    """"r32", "tiny", "sd" for ReLS-NeRF; None for nerfacto."""
    quality: Dict[str, QualityMetrics] = field(default_factory=dict)
    """Output name ("rgb", "decoded", "rgb_nerf") -> its metrics."""
    timing: Dict[str, RenderTiming] = field(default_factory=dict)
    """Output name -> its full-resolution render timing."""
    fit_seconds: Dict[str, float] = field(default_factory=dict)
    """Phase ("A", "B", "C") -> wall seconds of fitting; nerfacto's training counts as phase B."""
    steps: Dict[str, int] = field(default_factory=dict)
    """Phase -> optimisation steps run."""
    peak_gpu_memory_mb_train: Optional[float] = None
    peak_gpu_memory_mb_render: Optional[float] = None
    num_eval_images: Optional[int] = None
    notes: List[str] = field(default_factory=list)
    """Free-text remarks shown as footnotes."""

    @property
    def total_fit_seconds(self) -> Optional[float]:
        values = [v for v in self.fit_seconds.values() if _finite(v)]
        return sum(values) if values else None

    def outputs(self) -> List[str]:
        """Output names with quality or timing, in the canonical order (rgb, decoded, rgb_nerf, then others)."""
        names = set(self.quality) | set(self.timing)
        return [o for o in OUTPUT_ORDER if o in names] + sorted(names - set(OUTPUT_ORDER))


@dataclass
class BenchmarkReport:
    """One benchmark run on one scene."""

    scene: str
    resolution: Tuple[int, int]
    """(width, height) at which evaluation and timing renders are made."""
    schedule: str
    """The step schedule, e.g. "paper" or "short" with step counts."""
    machine: str
    date: str
    command: str
    models: List[ModelResult] = field(default_factory=list)
    video_frames: int = 120
    """Frames of the spiral video (RCC) and of the render-time column, as in the paper."""
    notes: List[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.resolution = (int(self.resolution[0]), int(self.resolution[1]))

    def model(self, name: str) -> ModelResult:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"no model named {name!r} (models: {[m.name for m in self.models]})")

    def reference_timing(self) -> Optional[RenderTiming]:
        """The nerfacto RGB timing that speed-ups are relative to; None when there is none."""
        for model in self.models:
            if model.kind == REFERENCE_KIND and OUTPUT_RGB in model.timing:
                return model.timing[OUTPUT_RGB]
        return None

    def speedup(self, model: ModelResult, output: str) -> Optional[float]:
        """nerfacto's ms per frame / this output's ms per frame (13.0 means 13x faster); None when not computable."""
        reference, timing = self.reference_timing(), model.timing.get(output)
        if reference is None or timing is None:
            return None
        if not (_finite(reference.ms_per_frame) and _finite(timing.ms_per_frame)) or timing.ms_per_frame <= 0:
            return None
        return reference.ms_per_frame / timing.ms_per_frame

    # ------------------------------------------------------------------ JSON
    def derived(self) -> Dict[str, Any]:
        """The figures the tables compute (speed-ups, video render times, total fit times), keyed "model/output"."""
        speedups, video_seconds, fit_total = {}, {}, {}
        for model in self.models:
            fit_total[model.name] = model.total_fit_seconds
            for output, timing in model.timing.items():
                speedups[f"{model.name}/{output}"] = self.speedup(model, output)
                video_seconds[f"{model.name}/{output}"] = timing.seconds_for(self.video_frames)
        return {
            "speedup_vs_nerfacto": speedups,
            f"render_seconds_{self.video_frames}_frames": video_seconds,
            "fit_seconds_total": fit_total,
        }

    def to_dict(self) -> Dict[str, Any]:
        """Plain, strict-JSON dict: every field, plus a "derived" section; non-finite numbers become null."""
        data = dataclasses.asdict(self)
        data["derived"] = self.derived()
        return _json_safe(data)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "BenchmarkReport":
        """Inverse of to_dict (the "derived" section and unknown keys are ignored)."""
        version = data.get("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise ValueError(f"report schema version {version} is newer than this code's ({SCHEMA_VERSION})")
        models = [_model_from_dict(m) for m in data.get("models", [])]
        return _build(cls, {**data, "models": models})

    def to_json(self, path: os.PathLike | str) -> Path:
        """Write the report as indented JSON, atomically."""
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        return atomic_write_text(path, text)

    @classmethod
    def from_json(cls, path: os.PathLike | str) -> "BenchmarkReport":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _finite(value: Optional[float]) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _json_safe(value: Any) -> Any:
    """Tuples to lists, non-finite floats to None (JSON has no NaN or Infinity)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _build(cls: Type[T], data: Dict[str, Any]) -> T:
    """Construct a dataclass from the keys it knows (files from newer writers may carry more)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _model_from_dict(data: Dict[str, Any]) -> ModelResult:
    quality = {k: _build(QualityMetrics, v) for k, v in (data.get("quality") or {}).items()}
    timing = {k: _build(RenderTiming, v) for k, v in (data.get("timing") or {}).items()}
    return _build(ModelResult, {**data, "quality": quality, "timing": timing})


# ---------------------------------------------------------------------- formatting
def format_number(value: Optional[float], spec: str) -> str:
    """value formatted with spec, or the missing mark."""
    return format(value, spec) if _finite(value) else MISSING


def format_duration(seconds: Optional[float]) -> str:
    """Seconds as "42.0 s", "12.5 min" or "1.50 h" (the paper's Table 2 reports fitting in minutes and hours)."""
    if not _finite(seconds):
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def format_speedup(ratio: Optional[float]) -> str:
    return f"{ratio:.1f}x" if _finite(ratio) else MISSING


def format_memory(megabytes: Optional[float]) -> str:
    return f"{megabytes:,.0f} MB" if _finite(megabytes) else MISSING


def format_fps(fps: Optional[float]) -> str:
    if not _finite(fps):
        return MISSING
    return f"{fps:.2f}" if fps < 10 else f"{fps:.1f}"


def _cell(text: str) -> str:
    """Markdown table cells cannot hold a bare pipe or a newline."""
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: List[str], align: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def output_label(output: str) -> str:
    return OUTPUT_LABELS.get(output, output)


def _quality_rows(report: BenchmarkReport) -> Iterator[Tuple[ModelResult, str, QualityMetrics]]:
    for model in report.models:
        for output in model.outputs():
            if output in model.quality:
                yield model, output, model.quality[output]


def _phases(report: BenchmarkReport) -> List[str]:
    """Always A, B, C (the paper's columns, so nerfacto's row shows "–" under A and C), then any other phase keys."""
    present = {phase for model in report.models for phase in model.fit_seconds}
    return list(PHASE_ORDER) + sorted(present - set(PHASE_ORDER))


def markdown_report(report: BenchmarkReport) -> str:
    """The report as markdown: header, Table 1 (quality) and Table 2 (speed and fitting), footnotes."""
    width, height = report.resolution
    lines = [
        f"# ReLS-NeRF benchmark: {report.scene}",
        "",
        f"- Scene: `{report.scene}`, evaluated and timed at {width}x{height}",
        f"- Schedule: {report.schedule}",
        f"- Machine: {report.machine}",
        f"- Date: {report.date}",
        f"- Command: `{report.command}`",
        "",
    ]
    footnotes: List[str] = []

    # Table 1: one row per (model, output), like the paper's RGB / Ours-SD / Ours-R32 rows, with both outputs of each
    # ReLS-NeRF model so that the decoder's effect over its own colour NeRF is visible.
    lines += [
        f"## Table 1: quality (held-out views; RCC on the {report.video_frames}-frame spiral video)",
        "",
    ]
    rows, missing_lpips, missing_flip, missing_rcc, missing_other = [], False, False, False, False
    for model, output, q in _quality_rows(report):
        rows.append(
            [
                model.name,
                output_label(output),
                format_number(q.psnr, ".2f"),
                format_number(q.ssim, ".3f"),
                format_number(q.flip, ".3f"),
                format_number(q.lpips, ".3f"),
                format_number(q.rcc, ".2f"),
                str(model.num_eval_images) if model.num_eval_images is not None else MISSING,
            ]
        )
        missing_lpips |= not _finite(q.lpips)
        missing_flip |= not _finite(q.flip)
        missing_rcc |= not _finite(q.rcc)
        missing_other |= not (_finite(q.psnr) and _finite(q.ssim))
    header = ["Method", "Output", "PSNR↑", "SSIM↑", "FLIP↓", "LPIPS↓", "RCC↑ (dB)", "Eval images"]
    align = ["---", "---"] + ["---:"] * (len(header) - 2)
    lines += _table(header, align, rows) if rows else ["(no results)"]
    if missing_lpips:
        footnotes.append(
            f"LPIPS {MISSING}: not measured; its AlexNet weights are downloaded on first use and were not in the "
            "torch cache (offline machine)."
        )
    if missing_flip:
        footnotes.append(
            f"FLIP {MISSING}: not measured for this output (its evaluation was recorded before FLIP was measured: "
            "run relsnerf-bench evaluate --model NAME again)."
        )
    if missing_rcc:
        footnotes.append(
            f"RCC {MISSING}: not computed for this output (no spiral video with depth was rendered for it)."
        )
    if missing_other:
        footnotes.append(f"PSNR/SSIM {MISSING}: not measured for this output.")
    lines.append("")

    # Table 2: the paper's render time for 120 frames with the speed-up in brackets, and fitting time per phase.
    phases = _phases(report)
    lines += [f"## Table 2: rendering ({width}x{height}, {report.video_frames} frames) and fitting time", ""]
    header = [
        "Method",
        "Output",
        f"Render {report.video_frames} frames",
        "ms/frame",
        "fps",
        "Speed-up vs nerfacto",
    ]
    header += [f"Fit {PHASE_LABELS.get(p, p)}" for p in phases] + ["Fit total", "Peak GPU mem (train)"]
    header += ["Peak GPU mem (render)"]
    align = ["---", "---"] + ["---:"] * (len(header) - 2)
    rows = []
    breakdowns: List[str] = []
    for model in report.models:
        timed = [o for o in model.outputs() if o in model.timing] or [None]
        for position, output in enumerate(timed):
            timing = model.timing.get(output) if output is not None else None
            row = [model.name, output_label(output) if output is not None else MISSING]
            if timing is not None:
                row += [
                    f"{timing.seconds_for(report.video_frames):.1f} s",
                    format_number(timing.ms_per_frame, ".1f"),
                    format_fps(timing.fps),
                    format_speedup(report.speedup(model, output)),
                ]
                if timing.breakdown_ms:
                    parts = ", ".join(f"{k} {v:.1f}" for k, v in timing.breakdown_ms.items())
                    breakdowns.append(f"{model.name} ({output_label(output)}): {parts}")
            else:
                row += [MISSING] * 4
            if position == 0:  # fitting belongs to the model: shown once, on its first row
                row += [format_duration(model.fit_seconds.get(p)) for p in phases]
                row += [format_duration(model.total_fit_seconds), format_memory(model.peak_gpu_memory_mb_train)]
            else:
                row += [""] * (len(phases) + 2)
            # Render memory per output when measured per output, else the model's (on its first row).
            if timing is not None and timing.peak_gpu_memory_mb is not None:
                row.append(format_memory(timing.peak_gpu_memory_mb))
            else:
                row.append(format_memory(model.peak_gpu_memory_mb_render) if position == 0 else "")
            rows.append(row)
    lines += _table(header, align, rows) if rows else ["(no results)"]
    lines.append("")
    if breakdowns:
        lines += ["Render-time breakdown (median ms per frame):", ""] + [f"- {b}" for b in breakdowns] + [""]

    reference = report.reference_timing()
    footnotes.append(
        f"Render {report.video_frames} frames = {report.video_frames} x the median full-resolution frame time. "
        "Speed-up = nerfacto's ms/frame / the output's ms/frame"
        + ("." if reference is not None else f"; {MISSING} here because no nerfacto RGB timing was recorded.")
        + " The RGB-NeRF branch row times the colour NeRF alone, without the latent component (as in the paper)."
    )
    footnotes.append(
        "Fitting phases: (A) autoencoder pretraining, (B) NeRF fitting (nerfacto's whole training), "
        f"(C) decoder distillation; {MISSING} where a model has no such phase or it was not measured. "
        "Fitting time and training memory belong to the model and are shown on its first row; render memory is the "
        "peak while rendering each output at full resolution (model weights included)."
    )
    footnotes.append(f"{MISSING} marks a value that is missing or not applicable.")
    for model in report.models:
        footnotes += [f"{model.name}: {note}" for note in model.notes]
    footnotes += report.notes
    lines += ["Notes:", ""] + [f"{i}. {note}" for i, note in enumerate(footnotes, start=1)] + [""]
    return "\n".join(lines)


def write_markdown(report: BenchmarkReport, path: os.PathLike | str) -> Path:
    """Write `markdown_report(report)` atomically."""
    return atomic_write_text(path, markdown_report(report))


# ---------------------------------------------------------------------- plot
def speed_quality_points(report: BenchmarkReport) -> List[Tuple[str, str, float, float]]:
    """(model name, output, fps, PSNR) of every output that has both a timing and a PSNR."""
    points = []
    for model in report.models:
        for output in model.outputs():
            timing, quality = model.timing.get(output), model.quality.get(output)
            if timing is None or quality is None or not (_finite(timing.fps) and _finite(quality.psnr)):
                continue
            if timing.fps <= 0:
                continue
            points.append((model.name, output, float(timing.fps), float(quality.psnr)))
    return points


def write_speed_quality_plot(report: BenchmarkReport, path: os.PathLike | str, dpi: int = 120) -> Path:
    """Scatter of rendering speed (fps, log axis) against held-out PSNR, one labelled point per model output.

    Uses matplotlib's object-oriented Agg canvas rather than pyplot, so no global backend is switched and nothing
    needs a display.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    markers = {OUTPUT_RGB: "o", OUTPUT_DECODED: "s", OUTPUT_RGB_NERF: "^"}
    figure = Figure(figsize=(7.0, 4.8), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    points = speed_quality_points(report)
    colours: Dict[str, Any] = {}
    for name, output, fps, psnr in points:
        colour = colours.setdefault(name, f"C{len(colours) % 10}")
        axes.scatter([fps], [psnr], color=colour, marker=markers.get(output, "D"), s=60, zorder=3)
        axes.annotate(
            f"{name} ({output_label(output)})",
            (fps, psnr),
            textcoords="offset points",
            xytext=(6, 5),
            fontsize=8,
        )
    if points:
        axes.set_xscale("log")
        fps_values = [p[2] for p in points]
        # Pad the log range so labels of the extreme points stay inside the axes.
        axes.set_xlim(min(fps_values) / 1.6, max(fps_values) * 2.5)
        psnrs = [p[3] for p in points]
        spread = max(max(psnrs) - min(psnrs), 0.5)
        axes.set_ylim(min(psnrs) - 0.2 * spread, max(psnrs) + 0.3 * spread)
    else:
        axes.text(0.5, 0.5, "no output with both a timing and a PSNR", ha="center", va="center")
        axes.set_xticks([])
        axes.set_yticks([])
    width, height = report.resolution
    axes.set_xlabel(f"rendering speed at {width}x{height} (frames per second, log scale)")
    axes.set_ylabel("held-out PSNR (dB)")
    axes.set_title(f"{report.scene}: speed vs quality (up and right is better)", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------------- all together
def write_report(report: BenchmarkReport, directory: os.PathLike | str, stem: str = "benchmark") -> Dict[str, Path]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>_speed_quality.png` into directory; returns their paths."""
    directory = Path(directory)
    return {
        "json": report.to_json(directory / f"{stem}.json"),
        "markdown": write_markdown(report, directory / f"{stem}.md"),
        "plot": write_speed_quality_plot(report, directory / f"{stem}_speed_quality.png"),
    }


def describe_machine() -> str:
    """A one-line description of this machine for the report header (GPU, CPU count, torch and CUDA versions)."""
    import torch

    parts = []
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        parts.append(f"{torch.cuda.get_device_name(index)} ({props.total_memory / 2**30:.0f} GiB)")
    else:
        parts.append("no GPU")
    parts.append(f"{os.cpu_count()} CPU cores ({platform.machine()})")
    parts.append(f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if torch.version.cuda else ""))
    parts.append(f"Python {platform.python_version()}")
    return ", ".join(parts)
