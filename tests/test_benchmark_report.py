"""The benchmark's result records and writers, on made-up results shaped like the paper's Tables 1 and 2."""

from __future__ import annotations

import json
import math
import os

import pytest
from PIL import Image

from relsnerf_ns.benchmark import report as br
from relsnerf_ns.benchmark.report import (
    MISSING,
    BenchmarkReport,
    ModelResult,
    QualityMetrics,
    RenderTiming,
    format_duration,
    markdown_report,
    write_markdown,
    write_report,
    write_speed_quality_plot,
)

RES = (1008, 756)


def fake_report() -> BenchmarkReport:
    """The paper's figures where it has them (Table 1 PSNR/LPIPS/RCC, Table 2 times / 120 frames); the rest invented."""
    nerfacto = ModelResult(
        name="nerfacto",
        kind="nerfacto",
        quality={"rgb": QualityMetrics(psnr=23.52, ssim=0.7512, flip=0.1523, lpips=0.37, rcc=25.6)},
        timing={"rgb": RenderTiming(ms_per_frame=1100.8, resolution=RES, num_frames_timed=20)},
        fit_seconds={"B": 3600.0},
        steps={"B": 30000},
        peak_gpu_memory_mb_train=5120.0,
        peak_gpu_memory_mb_render=2048.4,
        num_eval_images=8,
    )
    r32 = ModelResult(
        name="relsnerf-r32",
        kind="relsnerf",
        autoencoder="r32",
        quality={
            "decoded": QualityMetrics(psnr=23.37, ssim=0.7401, flip=0.1611, lpips=0.40, rcc=25.3),
            "rgb_nerf": QualityMetrics(psnr=23.50, ssim=0.7499, flip=0.1531, lpips=0.371, rcc=25.58),
        },
        timing={
            "decoded": RenderTiming(
                ms_per_frame=85.0, resolution=RES, breakdown_ms={"latent_render": 60.0, "decode": 25.0}
            ),
            "rgb_nerf": RenderTiming(ms_per_frame=1050.0, resolution=RES),
        },
        fit_seconds={"A": 2400.0, "B": 5400.0, "C": 5400.0},
        steps={"A": 3000, "B": 20000, "C": 10000},
        peak_gpu_memory_mb_train=9000.0,
        peak_gpu_memory_mb_render=3000.0,
        num_eval_images=8,
    )
    tiny = ModelResult(
        name="relsnerf-tiny",
        kind="relsnerf",
        autoencoder="tiny",
        # LPIPS unavailable offline; no RCC for the colour branch, whose FLIP is missing too (an older evaluation).
        quality={
            "decoded": QualityMetrics(psnr=23.1, ssim=0.73, flip=0.1702, lpips=None, rcc=25.1),
            "rgb_nerf": QualityMetrics(psnr=23.4, ssim=0.745, flip=None, lpips=None, rcc=None),
        },
        timing={"decoded": RenderTiming(ms_per_frame=40.0, resolution=RES)},
        fit_seconds={"A": 45.0, "B": 1800.0},
        notes=["phase C skipped (ablation)"],
        num_eval_images=8,
    )
    return BenchmarkReport(
        scene="llff/fern",
        resolution=RES,
        schedule="paper (A/B/C = 3000/20000/10000 for r32)",
        machine="NVIDIA H100 80GB HBM3 (79 GiB), 16 CPU cores",
        date="2025-01-02T03:04:05+00:00",
        command="relsnerf-bench --scene llff/fern --schedule paper",
        models=[nerfacto, r32, tiny],
        notes=["LPIPS weights were absent on this machine."],
    )


def table_rows(markdown: str, title_prefix: str) -> list[list[str]]:
    """Cells of the rows of the table under the heading that starts with title_prefix."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_prefix))
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("|"):  # header, separator, then body rows
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_json_round_trip_is_exact(tmp_path):
    report = fake_report()
    path = report.to_json(tmp_path / "out" / "report.json")
    loaded = BenchmarkReport.from_json(path)
    assert loaded == report
    assert isinstance(loaded.models[1].timing["decoded"], RenderTiming)
    assert loaded.models[1].timing["decoded"].resolution == RES
    # Strict JSON with every figure, derived ones included.
    data = json.loads(path.read_text())
    assert data["schema_version"] == br.SCHEMA_VERSION
    assert data["derived"]["speedup_vs_nerfacto"]["relsnerf-r32/decoded"] == pytest.approx(1100.8 / 85.0)
    assert data["derived"]["render_seconds_120_frames"]["nerfacto/rgb"] == pytest.approx(132.096)
    assert data["derived"]["fit_seconds_total"]["relsnerf-r32"] == pytest.approx(13200.0)
    assert data["models"][2]["quality"]["decoded"]["lpips"] is None
    assert data["models"][0]["quality"]["rgb"]["flip"] == pytest.approx(0.1523)
    assert data["models"][1]["quality"]["rgb_nerf"]["flip"] == pytest.approx(0.1531)
    assert data["models"][2]["quality"]["rgb_nerf"]["flip"] is None
    assert data["models"][0]["timing"]["rgb"]["fps"] == pytest.approx(1000 / 1100.8)


def test_non_finite_numbers_become_null_and_unknown_keys_are_ignored(tmp_path):
    report = fake_report()
    report.models[0].quality["rgb"].rcc = float("nan")
    report.models[0].quality["rgb"].psnr = float("inf")
    path = report.to_json(tmp_path / "report.json")
    data = json.loads(path.read_text())  # json.loads would accept NaN; check the text is strict JSON instead
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert data["models"][0]["quality"]["rgb"]["rcc"] is None
    data["models"][0]["future_field"] = 1
    data["future_top_level"] = {"x": 1}
    loaded = BenchmarkReport.from_dict(data)
    assert loaded.models[0].quality["rgb"].rcc is None
    assert "| nerfacto | RGB | – | 0.751 | 0.152 | 0.370 | – |" in markdown_report(loaded)
    # A record written before FLIP was measured (no "flip" key) reads back as not measured.
    del data["models"][0]["quality"]["rgb"]["flip"]
    assert BenchmarkReport.from_dict(data).models[0].quality["rgb"].flip is None


def test_newer_schema_is_refused():
    data = fake_report().to_dict()
    data["schema_version"] = br.SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="newer"):
        BenchmarkReport.from_dict(data)


def test_speedup_is_nerfacto_ms_over_model_ms():
    report = fake_report()
    r32 = report.model("relsnerf-r32")
    assert report.speedup(report.model("nerfacto"), "rgb") == pytest.approx(1.0)
    assert report.speedup(r32, "decoded") == pytest.approx(1100.8 / 85.0)
    assert report.speedup(r32, "rgb_nerf") == pytest.approx(1100.8 / 1050.0)
    assert report.speedup(report.model("relsnerf-tiny"), "rgb_nerf") is None  # not timed
    without_reference = BenchmarkReport(**{**vars(report), "models": report.models[1:]})
    assert without_reference.speedup(r32, "decoded") is None
    with pytest.raises(KeyError, match="relsnerf-sd"):
        report.model("relsnerf-sd")


def test_markdown_quality_table(tmp_path):
    text = write_markdown(fake_report(), tmp_path / "report.md").read_text()
    assert text.startswith("# ReLS-NeRF benchmark: llff/fern")
    for header_line in (
        "- Machine: NVIDIA H100 80GB HBM3 (79 GiB), 16 CPU cores",
        "- Date: 2025-01-02T03:04:05+00:00",
        "- Command: `relsnerf-bench --scene llff/fern --schedule paper`",
        "- Scene: `llff/fern`, evaluated and timed at 1008x756",
    ):
        assert header_line in text
    rows = table_rows(text, "## Table 1")
    assert rows[0] == ["Method", "Output", "PSNR↑", "SSIM↑", "FLIP↓", "LPIPS↓", "RCC↑ (dB)", "Eval images"]
    assert rows[1] == ["---", "---"] + ["---:"] * 6
    assert rows[2:] == [
        ["nerfacto", "RGB", "23.52", "0.751", "0.152", "0.370", "25.60", "8"],
        ["relsnerf-r32", "decoded", "23.37", "0.740", "0.161", "0.400", "25.30", "8"],
        ["relsnerf-r32", "RGB-NeRF branch", "23.50", "0.750", "0.153", "0.371", "25.58", "8"],
        ["relsnerf-tiny", "decoded", "23.10", "0.730", "0.170", MISSING, "25.10", "8"],
        ["relsnerf-tiny", "RGB-NeRF branch", "23.40", "0.745", MISSING, MISSING, MISSING, "8"],
    ]
    # Footnotes explain each kind of missing value.
    assert f"LPIPS {MISSING}: not measured" in text
    assert f"RCC {MISSING}:" in text
    assert f"FLIP {MISSING}: not measured for this output" in text and "relsnerf-bench evaluate" in text
    assert "relsnerf-tiny: phase C skipped (ablation)" in text
    assert "LPIPS weights were absent on this machine." in text


def test_markdown_speed_table():
    text = markdown_report(fake_report())
    rows = table_rows(text, "## Table 2")
    header = rows[0]
    assert header[:6] == ["Method", "Output", "Render 120 frames", "ms/frame", "fps", "Speed-up vs nerfacto"]
    assert header[6:] == [
        "Fit (A) AE",
        "Fit (B) NeRF",
        "Fit (C) decoder",
        "Fit total",
        "Peak GPU mem (train)",
        "Peak GPU mem (render)",
    ]
    body = {(r[0], r[1]): dict(zip(header, r)) for r in rows[2:]}
    nerfacto = body[("nerfacto", "RGB")]
    # The paper's RGB row: 132.1 s [1x], fitting only in (B).
    assert nerfacto["Render 120 frames"] == "132.1 s"
    assert nerfacto["ms/frame"] == "1100.8"
    assert nerfacto["fps"] == "0.91"
    assert nerfacto["Speed-up vs nerfacto"] == "1.0x"
    assert (nerfacto["Fit (A) AE"], nerfacto["Fit (B) NeRF"], nerfacto["Fit (C) decoder"]) == (
        MISSING,
        "1.00 h",
        MISSING,
    )
    assert nerfacto["Peak GPU mem (train)"] == "5,120 MB" and nerfacto["Peak GPU mem (render)"] == "2,048 MB"
    decoded = body[("relsnerf-r32", "decoded")]
    # The paper's Ours-R32 row: 10.2 s [13x], 40m / 1.5h / 1.5h.
    assert decoded["Render 120 frames"] == "10.2 s"
    assert decoded["Speed-up vs nerfacto"] == "13.0x"
    assert decoded["fps"] == "11.8"
    assert [decoded[f"Fit {label}"] for label in ("(A) AE", "(B) NeRF", "(C) decoder")] == [
        "40.0 min",
        "1.50 h",
        "1.50 h",
    ]
    assert decoded["Fit total"] == "3.67 h"
    branch = body[("relsnerf-r32", "RGB-NeRF branch")]
    assert branch["Speed-up vs nerfacto"] == "1.0x" and branch["Render 120 frames"] == "126.0 s"
    assert branch["Fit total"] == ""  # per-model figures appear once, on the model's first row
    tiny = body[("relsnerf-tiny", "decoded")]
    assert tiny["Speed-up vs nerfacto"] == "27.5x"
    assert tiny["Fit (C) decoder"] == MISSING and tiny["Fit (A) AE"] == "45.0 s"
    assert tiny["Peak GPU mem (train)"] == MISSING
    assert ("relsnerf-tiny", "RGB-NeRF branch") not in body  # untimed outputs are not rows of the speed table
    assert "- relsnerf-r32 (decoded): latent_render 60.0, decode 25.0" in text


def test_model_without_timing_gets_a_row_of_dashes():
    report = fake_report()
    report.models[2].timing = {}
    rows = table_rows(markdown_report(report), "## Table 2")
    tiny = [r for r in rows if r[0] == "relsnerf-tiny"]
    assert len(tiny) == 1 and tiny[0][1:6] == [MISSING] * 5
    assert tiny[0][-3] == "30.8 min"  # fit total 45 s + 1800 s


def test_speedup_column_without_nerfacto():
    report = fake_report()
    report.models = report.models[1:]
    text = markdown_report(report)
    rows = table_rows(text, "## Table 2")
    assert all(r[5] == MISSING for r in rows[2:])
    assert "no nerfacto RGB timing was recorded" in text


def test_format_duration():
    assert format_duration(42.04) == "42.0 s"
    assert format_duration(600) == "10.0 min"
    assert format_duration(9000) == "2.50 h"
    assert format_duration(None) == MISSING
    assert format_duration(math.nan) == MISSING


def test_pipes_in_names_do_not_break_the_table():
    report = fake_report()
    report.models[0].name = "nerfacto|big"
    assert "| nerfacto\\|big | RGB |" in markdown_report(report)


def test_plot_is_a_valid_png(tmp_path):
    path = write_speed_quality_plot(fake_report(), tmp_path / "plots" / "speed.png")
    assert path.stat().st_size > 5000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 400 and image.size[1] > 300
        image.load()
    assert len(br.speed_quality_points(fake_report())) == 4  # nerfacto, r32 x2, tiny decoded


def test_plot_without_points_still_writes(tmp_path):
    report = fake_report()
    for model in report.models:
        model.timing = {}
    path = write_speed_quality_plot(report, tmp_path / "empty.png")
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_write_report_writes_all_three(tmp_path):
    paths = write_report(fake_report(), tmp_path / "bench")
    assert sorted(p.name for p in paths.values()) == ["benchmark.json", "benchmark.md", "benchmark_speed_quality.png"]
    assert all(p.is_file() for p in paths.values())
    assert sorted(os.listdir(tmp_path / "bench")) == sorted(p.name for p in paths.values())  # no temporary files


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    path.write_text("previous")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(br.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        fake_report().to_json(path)
    assert path.read_text() == "previous"
    assert os.listdir(tmp_path) == ["report.json"]  # the temporary file was removed


def test_describe_machine_is_one_line():
    text = br.describe_machine()
    assert "CPU cores" in text and "torch" in text and "\n" not in text


def test_no_flip_footnote_when_every_output_has_flip():
    report = fake_report()
    report.models[2].quality["rgb_nerf"].flip = 0.1544
    text = markdown_report(report)
    assert "| relsnerf-tiny | RGB-NeRF branch | 23.40 | 0.745 | 0.154 | – | – | 8 |" in text
    assert f"FLIP {MISSING}" not in text
