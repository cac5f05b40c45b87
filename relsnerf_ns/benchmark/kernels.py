"""Before/after timings of the rendering and training paths, side by side in one process (relsnerf-bench's companion).

    python -m relsnerf_ns.benchmark.kernels [--config RUN/config.yml] [--nerfacto-config RUN/config.yml]
        [--frames 10] [--json FILE]
    python -m relsnerf_ns.benchmark.kernels --write-random-sd-vae DIR   # an SD-VAE with random weights, for timing

1. Hash-grid lookups alone (random positions, the sizes of one 1008x756 latent frame and of one training batch):
   nerfstudio's torch lookup vs the fused Triton kernels (`hash_grid_kernel.py`), forward and forward + backward.
2. With `--config` (a trained ReLS-NeRF run, e.g. from relsnerf-bench): the decoded output of
   `get_outputs_for_camera` at full resolution through each inference variant, from the plain path with torch lookups
   (before any of this work) to the default (fast path, fused lookups, CUDA graphs, float16 decoder); the colour
   NeRF with one ray per pixel with torch and fused lookups; and one training step of the colour NeRF (4096 rays,
   forward + backward) with either lookup. Cameras: an LLFF spiral around the training cameras, at the resolution
   of the run's evaluation images. Medians of
   device-synchronised frames after warm-up; peak GPU memory per variant; the decoded images of all variants are
   compared with the plain path's (max abs difference, PSNR between them). With `--nerfacto-config` (a nerfacto run
   on the same data) nerfacto as nerfstudio ships it is timed on the same cameras and every row gets its speed-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import torch
from nerfstudio.field_components.encodings import HashEncoding

from relsnerf_ns.evaluation.image_metrics import psnr_from_mse
from relsnerf_ns.evaluation.render_timing import median_call_ms, synchronize
from relsnerf_ns.rendering.hash_grid_kernel import kernels_available, use_fused_hash_grids
from relsnerf_ns.rendering.out_of_memory import free_cached_memory


def _median_ms(function: Callable[[], object], device: str, repeats: int, warmup: int = 3) -> float:
    return median_call_ms([function] * repeats, device, warmup)


def lookup_timings(device: str, repeats: int = 20) -> List[Dict[str, object]]:
    """Median ms of torch vs fused lookups for nerfacto's grids at the sizes one latent frame / batch makes."""
    cases = [
        # (what, samples, levels, log2 table, features, max res): proposal networks 1 and 2, the density field,
        # for 126x95 latent rays (256 / 96 / 48 samples per ray) and for a 4096-ray training batch.
        ("frame: proposal net 1", 11970 * 256, 5, 17, 2, 128),
        ("frame: proposal net 2", 11970 * 96, 5, 17, 2, 256),
        ("frame: density grid", 11970 * 48, 16, 19, 2, 2048),
        ("train batch: density grid", 4096 * 48, 16, 19, 2, 2048),
    ]
    rows = []
    generator = torch.Generator(device=device).manual_seed(0)
    for name, samples, levels, log2, features, max_res in cases:
        encoding = HashEncoding(levels, 16, max_res, log2, features, implementation="torch").to(device)
        positions = torch.rand(samples, 3, device=device, generator=generator)
        grad = torch.randn(samples, levels * features, device=device, generator=generator)
        row: Dict[str, object] = {"case": name, "samples": samples, "levels": levels}
        for variant, fused in (("torch", False), ("fused", True)):
            use_fused_hash_grids(encoding, enabled=fused)
            with torch.no_grad():
                row[f"{variant}_forward_ms"] = _median_ms(lambda: encoding(positions), device, repeats)

            def forward_backward():
                encoding.hash_table.grad = None
                encoding(positions).backward(grad)

            row[f"{variant}_train_ms"] = _median_ms(forward_backward, device, repeats)
        with torch.no_grad():
            use_fused_hash_grids(encoding, enabled=False)
            reference = encoding(positions)
            use_fused_hash_grids(encoding, enabled=True)
            row["max_abs_difference"] = float((encoding(positions) - reference).abs().max())
        rows.append(row)
        del encoding, positions, grad
    return rows


@contextlib.contextmanager
def _variant(model, path: str, fused: bool, graphs: bool) -> Iterator[None]:
    saved = (model.config.inference_path, model.frame_renderer.cuda_graphs)
    model.config.inference_path = path
    model.frame_renderer.cuda_graphs = graphs
    model.frame_renderer.clear()  # graphs captured with other kernels must not be replayed
    use_fused_hash_grids(model, enabled=fused)
    try:
        yield
    finally:
        model.config.inference_path, model.frame_renderer.cuda_graphs = saved
        model.frame_renderer.clear()


def _peak_mb(function: Callable[[], object], device: str) -> Optional[float]:
    if not device.startswith("cuda"):
        function()
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats()
    function()
    synchronize(device)
    return torch.cuda.max_memory_allocated() / 2**20


def model_timings(
    config_path: Path, device: str, frames: int, nerfacto_config: Optional[Path] = None
) -> Dict[str, object]:
    from relsnerf_ns.benchmark.evaluate import spiral_for
    from relsnerf_ns.benchmark.models import load_trained
    from relsnerf_ns.model.viewer_controls import RENDER_DECODED

    _, pipeline, step = load_trained(config_path, device)
    model = pipeline.model
    model.render_rgb_nerf_full_resolution = False
    model.viewer_render_mode.value = RENDER_DECODED
    spiral = spiral_for(pipeline, 120)
    picks = [round(i * (len(spiral.cameras) - 1) / max(frames - 1, 1)) for i in range(frames)]
    cameras = [spiral.cameras[index : index + 1].to(device) for index in picks]
    width, height = int(cameras[0].width.flatten()[0]), int(cameras[0].height.flatten()[0])

    def render_all(render: Callable) -> List[torch.Tensor]:
        return [render(camera)["rgb"].clone() for camera in cameras[:3]]

    variants = [
        ("decoded: plain path, torch lookups (before)", "plain", False, False),
        ("decoded: fast path, torch lookups, CUDA graphs", "fast", False, True),
        ("decoded: fast path, fused lookups, no graphs", "fast", True, False),
        ("decoded: fast path, fused lookups, CUDA graphs (default)", "fast", True, True),
    ]
    rows: List[Dict[str, object]] = []
    reference: Optional[List[torch.Tensor]] = None
    for name, path, fused, graphs in variants:
        if path == "fast" and graphs and not device.startswith("cuda"):
            continue
        with _variant(model, path, fused, graphs), torch.no_grad():
            render = model.get_outputs_for_camera
            ms = statistics.median(
                [_median_ms(lambda camera=camera: render(camera), device, repeats=1, warmup=3) for camera in cameras]
            )
            peak = _peak_mb(lambda: render(cameras[0]), device)
            images = render_all(render)
        row: Dict[str, object] = {"variant": name, "ms_per_frame": ms, "peak_gpu_memory_mb": peak}
        if reference is None:
            reference = images
        else:
            mse = statistics.mean(float(((a - b) ** 2).mean()) for a, b in zip(images, reference))
            row["max_abs_difference_vs_plain"] = max(float((a - b).abs().max()) for a, b in zip(images, reference))
            row["psnr_vs_plain_db"] = psnr_from_mse(mse)
        rows.append(row)
    for name, fused in (
        ("colour NeRF per pixel: torch lookups", False),
        ("colour NeRF per pixel: fused lookups", True),
    ):
        with _variant(model, "fast", fused, True), torch.no_grad():
            ms = _median_ms(lambda: model.render_rgb_nerf_outputs(cameras[0]), device, repeats=3, warmup=1)
            peak = _peak_mb(lambda: model.render_rgb_nerf_outputs(cameras[0]), device)
        rows.append({"variant": name, "ms_per_frame": ms, "peak_gpu_memory_mb": peak})
    if nerfacto_config is not None:
        rows.append(_nerfacto_row(nerfacto_config, device, cameras[:3]))
    # One training step of the colour NeRF (nerfacto's part of phase B): 4096 random rays, forward + backward.
    bundle = cameras[0].generate_rays(camera_indices=0).flatten()
    choice = torch.randperm(len(bundle), device=bundle.origins.device)[:4096]
    bundle = bundle[choice]
    bundle.camera_indices = torch.zeros_like(bundle.camera_indices)
    model.train()
    for name, fused in (
        ("train step, 4096 rays: torch lookups", False),
        ("train step, 4096 rays: fused lookups", True),
    ):
        use_fused_hash_grids(model, enabled=fused)

        def step_once():
            model.zero_grad(set_to_none=True)
            outputs = model(bundle)  # Model.forward sets near/far (collider) first
            loss = outputs["rgb"].square().mean() + sum(w.mean() for w in outputs["weights_list"])
            loss.backward()

        rows.append({"variant": name, "ms_per_frame": _median_ms(step_once, device, repeats=10)})
    model.eval()
    use_fused_hash_grids(model, enabled=True)
    return {
        "config": str(config_path),
        "autoencoder": model.autoencoder.architecture,
        "checkpoint_step": step,
        "resolution": [width, height],
        "rows": rows,
    }


def _nerfacto_row(config_path: Path, device: str, cameras: List) -> Dict[str, object]:
    """nerfstudio's nerfacto as shipped (its own torch lookups), on the same cameras, in this process."""
    from relsnerf_ns.benchmark.models import load_trained

    _, pipeline, _ = load_trained(config_path, device)
    render = pipeline.model.get_outputs_for_camera
    with torch.no_grad():
        ms = statistics.median(
            [_median_ms(lambda camera=camera: render(camera), device, repeats=1, warmup=1) for camera in cameras]
        )
        peak = _peak_mb(lambda: render(cameras[0]), device)
    del pipeline
    free_cached_memory()
    return {"variant": "nerfacto (nerfstudio's lookups)", "ms_per_frame": ms, "peak_gpu_memory_mb": peak}


def write_random_sd_vae(directory: Path) -> None:
    """Stable Diffusion's VAE architecture (83.7 M parameters, 4 latent channels) with random weights, saved as a
    local diffusers folder that `--sd-vae-weights` accepts. Render and training speed do not depend on the weights."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    vae.save_pretrained(directory)
    count = sum(p.numel() for p in vae.parameters()) / 1e6
    print(f"wrote a randomly initialised SD-VAE ({count:.1f} M parameters) to {directory}: for timing only")


def _print_lookups(rows: List[Dict[str, object]]) -> None:
    print(f"{'hash-grid lookup':<28}{'samples':>10}  {'fwd torch':>10}{'fwd fused':>10}{'ratio':>7}"
          f"  {'f+b torch':>10}{'f+b fused':>10}{'ratio':>7}  max|diff|")  # fmt: skip
    for r in rows:
        print(
            f"{r['case']:<28}{r['samples']:>10}  {r['torch_forward_ms']:>8.2f}ms{r['fused_forward_ms']:>8.2f}ms"
            f"{r['torch_forward_ms'] / r['fused_forward_ms']:>6.1f}x  {r['torch_train_ms']:>8.2f}ms"
            f"{r['fused_train_ms']:>8.2f}ms{r['torch_train_ms'] / r['fused_train_ms']:>6.1f}x"
            f"  {r['max_abs_difference']:.1e}"
        )


def _print_model(result: Dict[str, object]) -> None:
    rows = result["rows"]  # type: ignore[index]
    base = rows[0]["ms_per_frame"]
    nerfacto = next((r["ms_per_frame"] for r in rows if r["variant"].startswith("nerfacto")), None)
    print(
        f"\n{result['config']} (step {result['checkpoint_step']}) "
        f"at {result['resolution'][0]}x{result['resolution'][1]}"
    )  # type: ignore[index]
    print(f"{'variant':<62}{'ms':>9}{'fps':>8}{'vs first':>10}{'vs nerfacto':>12}{'peak MB':>10}  vs plain")
    for r in rows:
        ms = r["ms_per_frame"]
        extra = ""
        if "psnr_vs_plain_db" in r:
            extra = f"PSNR {r['psnr_vs_plain_db']:.1f} dB, max|diff| {r['max_abs_difference_vs_plain']:.1e}"
        peak = "" if r.get("peak_gpu_memory_mb") is None else f"{r['peak_gpu_memory_mb']:,.0f}"
        versus = "" if nerfacto is None or r["variant"].startswith("train") else f"{nerfacto / ms:.1f}x"
        print(f"{r['variant']:<62}{ms:>9.1f}{1000 / ms:>8.1f}{base / ms:>9.1f}x{versus:>12}{peak:>10}  {extra}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="config.yml of a trained ReLS-NeRF run (adds the model timings)")
    parser.add_argument(
        "--nerfacto-config", type=Path, help="config.yml of a nerfacto run on the same data: timed on the same cameras"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=10, help="spiral cameras timed per variant")
    parser.add_argument("--skip-lookups", action="store_true", help="only the model timings")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument(
        "--write-random-sd-vae",
        type=Path,
        metavar="DIR",
        help="only write a diffusers folder with a randomly initialised Stable Diffusion VAE (the real architecture) "
        "to DIR, for timing relsnerf's SD decoder where no pretrained weights exist (never for quality)",
    )
    args = parser.parse_args(argv)
    if args.write_random_sd_vae is not None:
        write_random_sd_vae(args.write_random_sd_vae)
        return
    if not kernels_available(torch.device(args.device)):
        parser.error(f"the fused kernels cannot run on {args.device} (they need CUDA and Triton)")
    results: Dict[str, object] = {"device": args.device}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name()
    if not args.skip_lookups:
        results["lookups"] = lookup_timings(args.device)
        _print_lookups(results["lookups"])  # type: ignore[arg-type]
    if args.config is not None:
        results["model"] = model_timings(args.config, args.device, args.frames, args.nerfacto_config)
        _print_model(results["model"])  # type: ignore[arg-type]
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
