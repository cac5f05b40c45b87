"""Measuring one trained model: held-out quality, RCC on the spiral video, and full-resolution render times.

Outputs and how each is rendered (one camera at a time, outputs kept on the device, no autocast added):

- nerfacto `"rgb"`: `model.get_outputs_for_camera` (one ray per pixel);
- ReLS-NeRF `"decoded"`: `model.get_outputs_for_camera`, the path the viewer and ns-render use (the latent map at 1/8
  resolution, decoded; its other outputs upsampled), with the per-pixel colour NeRF switched off; it renders as the
  model's `inference_path` says (by default on a GPU: CUDA graphs and a float16 decoder, see `fast_render.py`);
- ReLS-NeRF `"rgb_nerf"`: `model.render_rgb_nerf_outputs`, its colour NeRF with one ray per pixel (nerfacto's path,
  without the latent component, as the paper times it).

RCC (`rcc.py`) reprojects each frame with a depth map. By default (`depth="full"`) every model uses the per-pixel
NeRF depth (nerfacto's `"depth"`, the median termination distance, and the same output of ReLS-NeRF's colour NeRF,
which shares its density with the latent field): the decoded frames of ReLS-NeRF are reprojected with that depth, so
both of its outputs are compared on the same geometry and the decoder's inconsistencies are what RCC sees.
`depth="latent"` uses the decoded path's own depth instead (rendered at 1/8 resolution and upsampled; coarse at
edges) and skips the per-pixel render, so the `"rgb_nerf"` RCC is not computed.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.pipelines.base_pipeline import Pipeline
from nerfstudio.utils.rich_utils import CONSOLE, get_progress
from torch import Tensor

from relsnerf_ns.benchmark.models import ModelSpec
from relsnerf_ns.benchmark.spiral import SpiralPath, llff_spiral
from relsnerf_ns.data.atomic_files import write_png
from relsnerf_ns.evaluation.held_out import Render, held_out_views, warmup_renders
from relsnerf_ns.evaluation.image_metrics import OfflineLPIPS, image_metrics
from relsnerf_ns.evaluation.rcc import RCCAccumulator
from relsnerf_ns.evaluation.render_timing import median_call_ms, median_ms, synchronize, timed

RCCDepth = Literal["full", "latent"]


def output_renderers(pipeline: Pipeline, model_spec: ModelSpec) -> Dict[str, Render]:
    """Output name -> function rendering it for one camera (see the module docstring)."""
    model = pipeline.model
    if model_spec.kind == "nerfacto":
        return {"rgb": model.get_outputs_for_camera}
    from relsnerf_ns.model.viewer_controls import RENDER_DECODED

    # The decoded path exactly as the viewer's default: no per-pixel colour NeRF next to it.
    model.render_rgb_nerf_full_resolution = False
    if model.viewer_render_mode.value != RENDER_DECODED:
        model.viewer_render_mode.value = RENDER_DECODED
    return {"decoded": model.get_outputs_for_camera, "rgb_nerf": model.render_rgb_nerf_outputs}


def spiral_for(pipeline: Pipeline, frames: int, focus_depth: Optional[float] = None, rotations: int = 2) -> SpiralPath:
    """The LLFF spiral of this run's training cameras at its evaluation images' resolution and intrinsics."""
    datamanager = pipeline.datamanager
    reference = datamanager.eval_dataset.cameras[0:1] if len(datamanager.eval_dataset) else None
    train_cameras = datamanager.train_dataset.cameras
    outputs = getattr(datamanager, "train_dataparser_outputs", None)
    points = None if outputs is None else outputs.metadata.get("points3D_xyz")
    return llff_spiral(
        train_cameras,
        reference if reference is not None else train_cameras[0:1],
        frames,
        points=points if isinstance(points, Tensor) else None,
        focus_depth=focus_depth,
        rotations=rotations,
    )


# ---------------------------------------------------------------------- held-out views
@torch.no_grad()
def held_out_quality(
    pipeline: Pipeline,
    model_spec: ModelSpec,
    device: str,
    lpips: OfflineLPIPS,
    save_images: int = 1,
    save_prefix: Optional[str] = None,
) -> Dict[str, object]:
    """Mean PSNR / SSIM / FLIP / LPIPS per output over the evaluation split, with the per-frame render times of this
    pass (`held_out.held_out_views`: the loop `ns-eval` runs too, first view rendered untimed first).

    `save_images` views are written as `<save_prefix>_<index>.png`: ground truth, then each output, side by side.
    """
    model = pipeline.model
    renders = output_renderers(pipeline, model_spec)
    loader = pipeline.datamanager.fixed_indices_eval_dataloader
    metrics: Dict[str, List[Dict[str, float]]] = {output: [] for output in renders}
    seconds: Dict[str, List[float]] = {output: [] for output in renders}
    resolution: Tuple[int, int] = (0, 0)
    for view in held_out_views(loader, renders, device, f"[bold]{model_spec.name}: held-out views"):
        camera = view.camera
        resolution = (int(camera.width.flatten()[0]), int(camera.height.flatten()[0]))
        image = reference_image(model, view.batch, device)
        for output, outputs in view.outputs.items():
            seconds[output].append(view.seconds[output])
            metrics[output].append(image_metrics(image, outputs["rgb"], lpips))
        if save_prefix is not None and view.index < save_images:
            row = torch.cat([image.float()] + [view.outputs[o]["rgb"].to(image).float() for o in renders], dim=1)
            write_png(f"{save_prefix}_{view.index:03d}.png", row)
    if not any(metrics.values()):
        raise ValueError("the evaluation split has no images; nothing to evaluate")
    quality = {
        output: {key: float(np.mean([m[key] for m in frames])) for key in frames[0]}
        for output, frames in metrics.items()
    }
    timing = {
        output: {"ms_per_frame": median_ms(values), "num_frames_timed": len(values)}
        for output, values in seconds.items()
    }
    return {"quality": quality, "timing": timing, "num_eval_images": len(loader), "resolution": list(resolution)}


def reference_image(model, batch: Dict[str, Tensor], device: str) -> Tensor:
    """The ground truth of a view as RGB, over the model's background where it has one (nerfacto, ReLS-NeRF)."""
    image = batch["image"].to(device)[..., :3]
    return model.renderer_rgb.blend_background(image) if hasattr(model, "renderer_rgb") else image


@torch.no_grad()
def plain_path_psnr(pipeline: Pipeline, device: str) -> float:
    """Mean held-out PSNR of ReLS-NeRF's decoded output rendered through the plain path (float32 chunks, no CUDA
    graphs, float32 decoder): the reference the default inference path must match."""
    model = pipeline.model
    saved = model.config.inference_path
    model.config.inference_path = "plain"
    values = []
    loader = pipeline.datamanager.fixed_indices_eval_dataloader
    renders = {"plain": model.get_outputs_for_camera}
    try:
        for view in held_out_views(loader, renders, device, "[bold]plain path: held-out views", warmup=False):
            image = reference_image(model, view.batch, device)
            values.append(
                image_metrics(image, view.outputs["plain"]["rgb"], lambda reference, prediction: None)["psnr"]
            )
    finally:
        model.config.inference_path = saved
    return float(np.mean(values))


# ---------------------------------------------------------------------- RCC on the spiral
@torch.no_grad()
def spiral_rcc(
    pipeline: Pipeline,
    model_spec: ModelSpec,
    spiral: SpiralPath,
    device: str,
    depth: RCCDepth = "full",
    min_accumulation: Optional[float] = None,
) -> Dict[str, Dict[str, object]]:
    """RCC (dB and per-pair details) of each output over the spiral video (see the module docstring for depth);
    `rcc_db` is None, with an `error`, when no pair of frames has a pixel to compare."""
    renders = output_renderers(pipeline, model_spec)
    if model_spec.kind == "nerfacto":
        outputs_measured = ["rgb"]
    else:
        outputs_measured = ["decoded", "rgb_nerf"] if depth == "full" else ["decoded"]
    accumulators = {output: RCCAccumulator(depth_kind="ray") for output in outputs_measured}
    cameras = spiral.cameras
    description = f"[bold]{model_spec.name}: spiral video for RCC"
    with get_progress(description) as progress:
        task = progress.add_task(description, total=len(cameras))
        for index in range(len(cameras)):
            camera = cameras[index : index + 1].to(device)
            frames: Dict[str, Tuple[Tensor, Tensor, Tensor]] = {}
            if model_spec.kind == "nerfacto":
                out = renders["rgb"](camera)
                frames["rgb"] = (out["rgb"], out["depth"], out["accumulation"])
            else:
                decoded = renders["decoded"](camera)
                if depth == "full":
                    full = renders["rgb_nerf"](camera)
                    frames["decoded"] = (decoded["rgb"], full["depth"], full["accumulation"])
                    frames["rgb_nerf"] = (full["rgb"], full["depth"], full["accumulation"])
                else:
                    frames["decoded"] = (decoded["rgb"], decoded["depth"], decoded["accumulation"])
            for output, (rgb, depth_map, accumulation) in frames.items():
                mask = None if min_accumulation is None else accumulation[..., 0] > min_accumulation
                accumulators[output].add(rgb, depth_map, camera, mask=mask)
            progress.advance(task)
    results: Dict[str, Dict[str, object]] = {}
    for output, accumulator in accumulators.items():
        try:
            results[output] = accumulator.result().to_dict()
        except ValueError as error:  # no pair with a valid pixel (e.g. an untrained model): no RCC, say why
            CONSOLE.print(f"[yellow]{model_spec.name} {output}: no RCC: {error}")
            results[output] = {"rcc_db": None, "error": str(error)}
    return results


# ---------------------------------------------------------------------- render timing
@torch.no_grad()
def time_model(
    pipeline: Pipeline, model_spec: ModelSpec, cameras: List[Cameras], device: str, warmup: int
) -> Dict[str, object]:
    """Full-resolution render time of each output on the given cameras, with a latent-render / decode breakdown of
    the decoded path and the peak GPU memory of the renders."""
    model = pipeline.model
    renders = output_renderers(pipeline, model_spec)
    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    width, height = int(cameras[0].width.flatten()[0]), int(cameras[0].height.flatten()[0])
    timing: Dict[str, Dict[str, object]] = {}
    for output, render in renders.items():
        CONSOLE.print(f"  timing {model_spec.name} {output} at {width}x{height} ({len(cameras)} frames)")
        if on_gpu:  # each output's own peak (weights included): the per-pixel path must not mask the decoded one's
            synchronize(device)
            torch.cuda.reset_peak_memory_stats()
        calls = [functools.partial(render, camera) for camera in cameras]
        ms = median_call_ms(calls, device, max(warmup, warmup_renders(output)))
        timing[output] = {"ms_per_frame": ms, "resolution": [width, height], "num_frames_timed": len(cameras)}
        timing[output]["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None
    if model_spec.kind == "relsnerf":
        timing["decoded"]["breakdown_ms"] = decoded_breakdown_ms(model, cameras, device)
    peaks = [t["peak_gpu_memory_mb"] for t in timing.values() if t.get("peak_gpu_memory_mb") is not None]
    peak = max(peaks) if peaks else None
    return {"timing": timing, "peak_gpu_memory_mb_render": peak, "inference": inference_details(model, device)}


def inference_details(model, device: str) -> Dict[str, object]:
    """How ReLS-NeRF's decoded path rendered when it was timed (its `inference_path` settings and whether CUDA graphs
    were in use); empty for nerfacto."""
    config = model.config
    if not hasattr(config, "inference_path"):
        return {}
    details: Dict[str, object] = {"inference_path": config.inference_path}
    renderer = getattr(model, "frame_renderer", None)
    on_gpu = device.startswith("cuda")
    if config.inference_path == "fast" and renderer is not None:
        details["cuda_graphs"] = bool(on_gpu and getattr(renderer, "num_captured", 0) > 0)
        details["half_precision_decoder"] = bool(on_gpu and getattr(config, "inference_half_precision_decoder", False))
    return details


@torch.no_grad()
def decoded_breakdown_ms(model, cameras: List[Cameras], device: str) -> Dict[str, float]:
    """Median ms per stage of the decoded path over the cameras, each stage timed on its own in an eager frame.

    Uses `stage_times` on the fast renderer (ray generation, proposal sampling, field, compositing, decoding) when the
    model has one, else the plain path's two stages (latent render, decode). Stages timed apart add up to a little
    more than a frame rendered in one go, and a frame replayed as a CUDA graph takes less than their sum.
    """
    renderer = getattr(model, "frame_renderer", None)
    stages: Dict[str, List[float]] = {}
    for camera in cameras:
        if renderer is not None:
            seconds = stage_times(renderer, camera, lambda function: timed(function, device)[1])
        else:
            low, latent_seconds = timed(lambda: model.render_latent_frame(camera), device)
            _, decode_seconds = timed(lambda: model.decode_latent_map(model.decoder_input_map(low)).clamp(0, 1), device)
            seconds = {"latent_render": latent_seconds, "decode": decode_seconds}
        for stage, value in seconds.items():
            stages.setdefault(stage, []).append(value)
    return {stage: median_ms(values) for stage, values in stages.items()}


def stage_times(renderer: Any, camera: Cameras, timer: Callable[[Callable[[], object]], float]) -> Dict[str, float]:
    """Seconds per stage of one eager frame: ray generation, proposal sampling, field, compositing, decoding.

    `timer(fn)` returns the device-synchronised seconds of `fn()` (e.g. a median over repeats). Stages are timed
    separately, so the sum is a little above the time of a frame rendered in one go.
    """
    model = renderer.model
    times: Dict[str, float] = {}
    with torch.no_grad():
        times["ray_generation"] = timer(lambda: renderer.latent_rays(camera))
        bundle = renderer.latent_rays(camera).flatten()
        times["proposal_sampling"] = timer(lambda: model.proposal_sampler(bundle, density_fns=model.density_fns))
        samples, _, _ = model.proposal_sampler(bundle, density_fns=model.density_fns)

        def field():
            return model.field.forward(samples), model.field.get_latent(samples)

        times["field"] = timer(field)
        field_outputs, z = field()

        def composite():
            weights = samples.get_weights(field_outputs[FieldHeadNames.DENSITY])
            return (
                torch.sum(weights * z, dim=-2),
                model.renderer_rgb(rgb=field_outputs[FieldHeadNames.RGB], weights=weights),
                model.renderer_depth(weights=weights, ray_samples=samples),
                model.renderer_accumulation(weights=weights),
            )

        times["compositing"] = timer(composite)
        shape = renderer.latent_rays(camera).shape
        maps = dict(zip(("latent", "rgb_nerf", "depth", "accumulation"), composite()))
        inputs = model.decoder_input_map({key: value.reshape(*shape, -1) for key, value in maps.items()})
        times["decoding"] = timer(lambda: renderer.decode(inputs))
    return times
