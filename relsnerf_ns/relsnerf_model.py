"""ReLS-NeRF model: nerfacto's RGB-NeRF plus a latent field rendered at 1/8 resolution and decoded by an autoencoder."""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import OrientedBox
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from nerfstudio.utils import colormaps
from torch import Tensor
from torch.nn import Parameter

from relsnerf_ns.autoencoders import AutoencoderConfig, LatentAutoencoder, R32AutoencoderConfig
from relsnerf_ns.fast_render import LatentFrameRenderer
from relsnerf_ns.hash_grid_kernel import use_fused_hash_grids
from relsnerf_ns.image_metrics import OfflineLPIPS, image_metrics
from relsnerf_ns.latent_rays import latent_ray_bundle
from relsnerf_ns.relsnerf_field import RelsNerfField, resolve_implementation
from relsnerf_ns.viewer_controls import (
    RENDER_DECODED,
    RENDER_RGB_NERF,
    TrainingCameraStart,
    phase_text,
    render_mode_dropdown,
)

__all__ = ["RENDER_DECODED", "RENDER_RGB_NERF", "RelsNerfModel", "RelsNerfModelConfig"]

LATENT_DOWNSCALE = 8


class CheckpointMismatchError(RuntimeError):
    """A checkpoint was trained with another method or autoencoder than the one being loaded into."""


@dataclass
class RelsNerfModelConfig(NerfactoModelConfig):
    """ReLS-NeRF: nerfacto's density and colour fields plus a latent field decoded by a convolutional autoencoder."""

    _target: Type = field(default_factory=lambda: RelsNerfModel)
    autoencoder: AutoencoderConfig = field(default_factory=R32AutoencoderConfig)
    """The autoencoder whose latent space the NeRF renders (its decoder D turns latent maps into images)."""
    implementation: Literal["tcnn", "torch", "auto"] = "auto"
    """Hash grids and MLPs: 'tcnn' (tinycudann), 'torch', or 'auto' (tcnn when installed and on a GPU)."""
    hash_grid_kernel: Literal["fused", "torch"] = "fused"
    """With the torch implementation on a GPU: 'fused' computes each hash-grid lookup (and its gradient) in one Triton
    kernel, the same arithmetic as nerfstudio's ~60 separate tensor operations, several times faster in training and
    rendering; 'torch' keeps nerfstudio's lookup. No effect with tinycudann or on the CPU."""
    distortion_loss_mult: float = 5e-4
    """lambda_gr: weight of the distortion loss (paper: 1e-3 / 2)."""
    depth_loss_mult: float = 0.1
    """lambda_d: weight of the DS-NeRF depth loss on rays through sparse points (paper: 0.1)."""
    depth_sigma: float = 0.01
    """Spread of the DS-NeRF depth loss around each sparse point (nerfstudio's convention: exp(-d^2 / (2 sigma)))."""
    patch_loss_mult: float = 1.0
    """Weight of L_p, the MSE between image patches and decoded latent patches (paper: 1)."""
    latent_num_levels: int = 16
    """Hash grid levels of the latent branch."""
    latent_max_res: int = 2048
    """Finest hash grid resolution of the latent branch."""
    latent_log2_hashmap_size: int = 19
    """log2 of the hash table size per level of the latent branch."""
    latent_features_per_level: int = 2
    """Features per hash grid level of the latent branch."""
    latent_hidden_dim: int = 64
    """Width of the latent branch's MLPs."""
    latent_view_dependent: bool = True
    """Feed the viewing direction to the latent head (latents, like colours, can depend on the view)."""
    rgb_nerf_full_resolution: bool = False
    """get_outputs_for_camera renders `rgb_nerf` with one ray per pixel (slow, like nerfacto). When False it is the
    colour NeRF composited on the latent rays (1/8 resolution) and upsampled; evaluation always renders it in full."""
    inference_path: Literal["fast", "plain"] = "fast"
    """How the decoded output is rendered for the viewer, ns-render and ns-eval. 'fast': one latent ray bundle per
    frame, replayed as a CUDA graph per resolution on a GPU (torch implementation), decoder in half precision;
    'plain': the same rays in float32 chunks, nerfacto-style."""
    inference_cuda_graphs: bool = True
    """With the fast path on a GPU: capture each resolution's frame as a CUDA graph (removes launch overhead)."""
    inference_half_precision_decoder: bool = True
    """With the fast path on a GPU: run the decoder under float16 autocast."""
    viewer_start_at_training_camera: bool = True
    """Open each viewer client at the first training camera (viser's default pose often looks at empty space)."""
    camera_optimizer: CameraOptimizerConfig = field(default_factory=lambda: CameraOptimizerConfig(mode="off"))
    """Camera pose refinement; off as in the paper (held-out cameras are not aligned to refined poses)."""


@contextlib.contextmanager
def _nerfacto_construction(field_factory: Any) -> Iterator[None]:
    """Let nerfacto's populate_modules build our field and skip its LPIPS.

    nerfacto creates `NerfactoField(...)` and torchmetrics' LPIPS inside populate_modules; the LPIPS constructor
    downloads AlexNet (fails offline). Swapping the two names nerfacto looks up for the duration of the call reuses
    all of nerfacto's set-up (proposal networks, samplers, renderers) without copying it.
    """
    import nerfstudio.models.nerfacto as nerfacto_module
    import torchmetrics.image.lpip as lpip_module

    saved = nerfacto_module.NerfactoField, lpip_module.LearnedPerceptualImagePatchSimilarity
    nerfacto_module.NerfactoField = field_factory
    lpip_module.LearnedPerceptualImagePatchSimilarity = lambda *args, **kwargs: None
    try:
        yield
    finally:
        nerfacto_module.NerfactoField, lpip_module.LearnedPerceptualImagePatchSimilarity = saved


class RelsNerfModel(NerfactoModel):
    """Renders colour for training rays (as nerfacto) and latents for latent rays; decodes latents to images."""

    config: RelsNerfModelConfig
    field: RelsNerfField
    autoencoder: LatentAutoencoder

    def populate_modules(self) -> None:
        self.config.implementation = resolve_implementation(self.config.implementation)
        self.autoencoder = self.config.autoencoder.setup()
        latent_field = functools.partial(
            RelsNerfField,
            latent_channels=self.autoencoder.latent_channels,
            latent_num_levels=self.config.latent_num_levels,
            latent_max_res=self.config.latent_max_res,
            latent_log2_hashmap_size=self.config.latent_log2_hashmap_size,
            latent_features_per_level=self.config.latent_features_per_level,
            latent_hidden_dim=self.config.latent_hidden_dim,
            latent_view_dependent=self.config.latent_view_dependent,
        )
        with _nerfacto_construction(latent_field):
            super().populate_modules()
        if self.config.implementation == "torch" and self.config.hash_grid_kernel == "fused":
            use_fused_hash_grids(self)
        # Not a submodule: its frozen backbone must stay out of checkpoints.
        del self.lpips
        self.offline_lpips = OfflineLPIPS()
        self.render_rgb_nerf_full_resolution = self.config.rgb_nerf_full_resolution
        # Not a submodule (it refers back to the model); holds the captured CUDA graphs of the fast path.
        self.frame_renderer = LatentFrameRenderer(
            self,
            cuda_graphs=self.config.inference_cuda_graphs,
            half_precision_decoder=self.config.inference_half_precision_decoder,
        )
        # Viewer controls (nerfstudio's viewer collects ViewerElement attributes of the model).
        self.viewer_phase = phase_text()
        self.viewer_render_mode = render_mode_dropdown()
        self.viewer_start_camera = TrainingCameraStart(enabled=self.config.viewer_start_at_training_camera)

    # ------------------------------------------------------------------ parameters
    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = {
            "proposal_networks": list(self.proposal_networks.parameters()),
            "fields": self.field.rgb_nerf_parameters(),
            "latent_field": self.field.latent_parameters(),
            "ae_encoder": self.autoencoder.encoder_parameters(),
            "ae_decoder": self.autoencoder.decoder_parameters(),
        }
        self.camera_optimizer.get_param_groups(param_groups=groups)
        return groups

    # ------------------------------------------------------------------ rendering
    def render_latents(self, ray_bundle: RayBundle, with_colour: bool = False) -> Dict[str, Tensor]:
        """Volume-render z (eq. 1) with the colour NeRF's weights, detached so L_p never reaches density/proposals.

        With `with_colour`, the same samples also give colour, depth and accumulation (one pass for inference).
        """
        if ray_bundle.nears is None and self.collider is not None:
            ray_bundle = self.collider(ray_bundle)  # what Model.forward does for colour rays
        with torch.no_grad():
            ray_samples, _, _ = self.proposal_sampler(ray_bundle, density_fns=self.density_fns)
            if with_colour:
                field_outputs = self.field.forward(ray_samples)
                density = field_outputs[FieldHeadNames.DENSITY]
            else:
                density, _ = self.field.get_density(ray_samples)
            weights = ray_samples.get_weights(density)
        z = self.field.get_latent(ray_samples)
        outputs = {"latent": torch.sum(weights * z, dim=-2)}
        if with_colour:
            outputs["rgb_nerf"] = self.renderer_rgb(rgb=field_outputs[FieldHeadNames.RGB], weights=weights)
            outputs["depth"] = self.renderer_depth(weights=weights, ray_samples=ray_samples)
            outputs["accumulation"] = self.renderer_accumulation(weights=weights)
        return outputs

    def decode_latent_map(self, latent: Float[Tensor, "*batch rows cols n"]) -> Float[Tensor, "*batch 3 H W"]:
        """D(I_Z): latent maps (channels last, as rendered) to images (channels first)."""
        batched = latent if latent.ndim == 4 else latent[None]
        images = self.autoencoder.decode(batched.permute(0, 3, 1, 2).contiguous())
        return images if latent.ndim == 4 else images[0]

    def render_latent_map(
        self, cameras: Cameras, camera_index: int, top: int, left: int, rows: int, cols: int, with_colour: bool = False
    ) -> Dict[str, Tensor]:
        """Latent map [rows, cols, n] of the blocks of a camera's image whose corner is (top, left)."""
        bundle = latent_ray_bundle(cameras, camera_index, top, left, rows, cols).to(self.device)
        outputs = self.render_latents(bundle.flatten(), with_colour=with_colour)
        return {k: v.view(rows, cols, -1) for k, v in outputs.items()}

    def _render_latent_bundle_chunked(self, bundle: RayBundle) -> Dict[str, Tensor]:
        rows, cols = bundle.shape
        flat = bundle.flatten()
        chunk = self.config.eval_num_rays_per_chunk
        pieces: Dict[str, List[Tensor]] = {}
        for start in range(0, len(flat), chunk):
            part = self.render_latents(flat[start : start + chunk].to(self.device), with_colour=True)
            for key, value in part.items():
                pieces.setdefault(key, []).append(value)
        return {k: torch.cat(v).view(rows, cols, -1) for k, v in pieces.items()}

    @torch.no_grad()
    def render_latent_frame(
        self, camera: Cameras, obb_box: Optional[OrientedBox] = None
    ) -> Dict[str, Float[Tensor, "rows cols c"]]:
        """The plain path: one ray per 8x8 block of the camera's image (padded up to a multiple of 8), rendered in
        float32 chunks: latent map, RGB-NeRF colour, depth and accumulation at 1/8 resolution."""
        height, width = int(camera.height.flatten()[0]), int(camera.width.flatten()[0])
        rows, cols = math.ceil(height / LATENT_DOWNSCALE), math.ceil(width / LATENT_DOWNSCALE)
        camera = camera.to(self.device)
        bundle = latent_ray_bundle(camera.flatten()[:1], 0, 0, 0, rows, cols, LATENT_DOWNSCALE, obb_box=obb_box)
        return self._render_latent_bundle_chunked(bundle)

    @torch.no_grad()
    def render_decoded_outputs(self, camera: Cameras, obb_box: Optional[OrientedBox] = None) -> Dict[str, Tensor]:
        """The latent frame decoded to the full-resolution `rgb`; the other outputs upsampled x8."""
        height, width = int(camera.height.flatten()[0]), int(camera.width.flatten()[0])
        if self.config.inference_path == "fast":
            frame = self.frame_renderer(camera, obb_box=obb_box)
            low, decoded = frame.low, frame.decoded
        else:
            low = self.render_latent_frame(camera, obb_box=obb_box)
            decoded = self.decode_latent_map(low["latent"]).clamp(0.0, 1.0)
        outputs = {"rgb": decoded.permute(1, 2, 0)[:height, :width]}
        for key in ("rgb_nerf", "depth", "accumulation", "latent"):
            outputs[key] = upsample_latent_grid(low[key], height, width)
        return outputs

    @torch.no_grad()
    def render_rgb_nerf_outputs(self, camera: Cameras, obb_box: Optional[OrientedBox] = None) -> Dict[str, Tensor]:
        """The colour NeRF with one ray per pixel (nerfacto's chunked path): rgb, depth, accumulation."""
        full = super().get_outputs_for_camera(camera.to(self.device), obb_box=obb_box)
        return {key: full[key] for key in ("rgb", "depth", "accumulation")}

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box: Optional[OrientedBox] = None) -> Dict[str, Tensor]:
        """Render the latent map at 1/8 resolution, decode it, crop to the camera (any image size works).

        Outputs (all [H, W, C], what the viewer's output dropdown and `ns-render --rendered-output-names` offer):
        rgb (decoded, or the per-pixel RGB-NeRF when the viewer's switch says so), rgb_nerf, depth, accumulation and
        latent (x8 upsampled; shown with a PCA colour map).
        """
        outputs = self.render_decoded_outputs(camera, obb_box=obb_box)
        show_rgb_nerf = self.viewer_render_mode.value == RENDER_RGB_NERF
        if self.render_rgb_nerf_full_resolution or show_rgb_nerf:
            full = self.render_rgb_nerf_outputs(camera, obb_box=obb_box)
            outputs["rgb_nerf"], outputs["depth"], outputs["accumulation"] = (
                full["rgb"],
                full["depth"],
                full["accumulation"],
            )
        if show_rgb_nerf:
            outputs["rgb"] = outputs["rgb_nerf"]
        return outputs

    @torch.no_grad()
    def render_rgb_nerf(self, camera: Cameras) -> Float[Tensor, "H W 3"]:
        """The colour NeRF with one ray per pixel: phase C's distillation targets."""
        return self.render_rgb_nerf_outputs(camera)["rgb"]

    # ------------------------------------------------------------------ losses
    def get_depth_loss(
        self,
        outputs: Dict[str, Any],
        termination_depth: Float[Tensor, "rays 1"],
        point_weights: Float[Tensor, "rays 1"],
    ) -> Tensor:
        """DS-NeRF depth loss on rays through sparse points, weighted per point (DS-NeRF's reprojection weights).

        The same expression as nerfstudio's `ds_nerf_depth_loss` (which averages without weights);
        `termination_depth` is the along-ray distance of each point, 0 where there is none.
        """
        weights = outputs["weights_list"][-1]
        samples = outputs["ray_samples_list"][-1]
        steps = (samples.frustums.starts + samples.frustums.ends) / 2
        lengths = samples.frustums.ends - samples.frustums.starts
        near_point = torch.exp(-((steps - termination_depth[:, None]) ** 2) / (2 * self.config.depth_sigma))
        per_ray = (-torch.log(weights + 1e-7) * near_point * lengths).sum(-2)
        per_ray = per_ray * (termination_depth > 0) * point_weights
        return per_ray.sum() / point_weights.sum().clamp_min(1e-8)

    # ------------------------------------------------------------------ evaluation
    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        gt = self.renderer_rgb.blend_background(batch["image"].to(self.device))  # RGBA: alpha over the background
        metrics = image_metrics(gt, outputs["rgb"], self.offline_lpips)
        metrics.update(image_metrics(gt, outputs["rgb_nerf"], self.offline_lpips, suffix="_rgb_nerf"))
        images = {
            "img": torch.cat([gt, outputs["rgb"], outputs["rgb_nerf"].to(gt)], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
            "latent": colormaps.apply_pca_colormap(outputs["latent"]),
        }
        return metrics, images

    # ------------------------------------------------------------------ checkpoint identity
    def identity(self) -> Dict[str, Any]:
        return {
            "model": type(self).__name__,
            "autoencoder": self.autoencoder.architecture,
            "latent_channels": int(self.autoencoder.latent_channels),
        }

    def get_extra_state(self) -> Dict[str, Any]:
        return self.identity()

    def set_extra_state(self, state: Any) -> None:
        expected = self.identity()
        if isinstance(state, dict) and state != expected:
            raise CheckpointMismatchError(
                f"the checkpoint was trained with {state}, but this run is configured with {expected}. "
                "Load it with the method (and --pipeline.model.autoencoder settings) it was trained with."
            )


def upsample_latent_grid(grid: Float[Tensor, "rows cols c"], height: int, width: int) -> Float[Tensor, "H W c"]:
    """Bilinear x8 upsampling that maps each block centre back to its block, cropped to the image."""
    rows, cols = grid.shape[:2]
    up = F.interpolate(
        grid.permute(2, 0, 1)[None].float(),
        size=(rows * LATENT_DOWNSCALE, cols * LATENT_DOWNSCALE),
        mode="bilinear",
        align_corners=False,
    )[0]
    # Contiguous: cropping the width of the channels-last view leaves strides that `.view` (nerfstudio's PCA colour
    # map of the latent output, in evaluation and the viewer) cannot flatten.
    return up.permute(1, 2, 0)[:height, :width].contiguous()
