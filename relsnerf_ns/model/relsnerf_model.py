"""ReLS-NeRF model: nerfacto's RGB-NeRF plus a latent field rendered at 1/8 resolution and decoded by an autoencoder."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import Frustums, RayBundle, RaySamples
from nerfstudio.data.scene_box import OrientedBox
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.models.nerfacto import NerfactoModelConfig
from nerfstudio.utils import colormaps
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor
from torch.nn import Parameter
from torch.profiler import record_function

from relsnerf_ns.autoencoders import AutoencoderConfig, LatentAutoencoder, R32AutoencoderConfig
from relsnerf_ns.evaluation.image_metrics import image_metrics, psnr_from_mse
from relsnerf_ns.model.compiled_fields import compile_sample_evaluations
from relsnerf_ns.model.decoder_guidance import SURFACE_POINTS_PER_SIDE, DecoderGuidance, DecoderGuidanceKind
from relsnerf_ns.model.latent_targets import CENTRED_OFFSETS, LatentTargets
from relsnerf_ns.model.offline_nerfacto import OfflineNerfactoModel
from relsnerf_ns.model.relsnerf_field import RelsNerfField, resolve_implementation
from relsnerf_ns.model.train_batches import AutoencoderBatch, DistillBatch, JointBatch, TrainBatch, cat_dataclasses
from relsnerf_ns.model.viewer_controls import (
    RENDER_DECODED,
    RENDER_RGB_NERF,
    TrainingCameraStart,
    phase_text,
    render_mode_dropdown,
)
from relsnerf_ns.rendering.fast_render import LatentFrameRenderer
from relsnerf_ns.rendering.hash_grid_kernel import use_fused_hash_grids
from relsnerf_ns.rendering.latent_rays import block_sub_ray_directions, latent_ray_bundle
from relsnerf_ns.rendering.out_of_memory import ShrinkingSize, decode_frame, free_cached_memory, render_in_chunks

__all__ = ["RENDER_DECODED", "RENDER_RGB_NERF", "RelsNerfModel", "RelsNerfModelConfig"]

LATENT_DOWNSCALE = 8


class CheckpointMismatchError(RuntimeError):
    """A checkpoint was trained with another method or autoencoder than the one being loaded into."""


# The registered method of each autoencoder, to name configurations the way a user chose them.
METHOD_OF_AUTOENCODER = {
    "StableDiffusionVAE": "relsnerf",
    "R32Autoencoder": "relsnerf-r32",
    "TinyAutoencoder": "relsnerf-tiny",
}


def describe_identity(identity: Any) -> str:
    """'relsnerf-r32 (RelsNerfModel, R32Autoencoder, 8 latent channels)' for a model identity (see `identity`)."""
    if not isinstance(identity, dict):
        return "no ReLS-NeRF model (e.g. a nerfacto checkpoint)"
    autoencoder = identity.get("autoencoder", "?")
    method = METHOD_OF_AUTOENCODER.get(autoencoder, "a ReLS-NeRF method")
    return (
        f"{method} ({identity.get('model', '?')}, autoencoder {autoencoder}, "
        f"{identity.get('latent_channels', '?')} latent channels)"
    )


def describe_checkpoint_mismatch(
    trained: Any,
    configured: Dict[str, Any],
    missing: Sequence[str] = (),
    unexpected: Sequence[str] = (),
    misshaped: Sequence[str] = (),
) -> str:
    """The message of a CheckpointMismatchError: both configurations, and which tensors do not fit."""
    if isinstance(trained, dict) and trained == configured:
        head = (
            f"the checkpoint was trained with {describe_identity(trained)}, like this run, but with other sizes "
            "(hash grids, MLP widths or autoencoder widths)"
        )
    else:
        head = (
            f"the checkpoint was trained with {describe_identity(trained)}; this run is {describe_identity(configured)}"
        )
    details = []
    if missing or unexpected or misshaped:
        details.append(f"{len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} mis-shaped tensors")
    for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if names:
            details.append(f"e.g. {label} {sorted(names)[:3]}")
    return (
        head
        + (": " + "; ".join(details) if details else "")
        + ". Nothing was loaded: load it with the method and settings it was trained with (the config.yml beside its "
        "checkpoint folder has them)."
    )


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
    recipe: Literal["relsnerf", "paper"] = "relsnerf"
    """Which losses phase B uses where the two flags below are unset, and the NeRF's phase-B learning rate where the
    optimizer groups leave its period unset (None). 'relsnerf' (the default): the latent rendered on every colour ray
    is also supervised with the phase-A encoder's latents of the training images (L_z), the DS-NeRF depth loss is off,
    and the NeRF's rate falls tenfold over phase B (1e-2 * 0.1^(t / 20000)); 'paper': the paper's
    L_B = L_r + lambda_d L_d + lambda_gr L_gr + L_p exactly (lambda_d = 0.1, no L_z) and its rate
    1e-2 * 0.1^(t / 10000) (a hundredfold over phase B). Periods are paper-length steps and stretch with the phase.
    docs/method.md gives the measured effect of each."""
    distortion_loss_mult: float = 5e-4
    """lambda_gr: weight of the distortion loss (paper: 1e-3 / 2)."""
    depth_loss_mult: Optional[float] = None
    """lambda_d: weight of the DS-NeRF depth loss on rays through sparse points; 0 turns it off. None takes the
    recipe's: 0 for 'relsnerf' (with sparse COLMAP depth it cost the colour NeRF held-out PSNR), 0.1 for 'paper'."""
    latent_loss_mult: Optional[float] = None
    """Weight of L_z, the error between the latent rendered on each colour ray and the encoder's latent of its
    training image at that pixel (in units of each latent channel's spread); 0 turns it off. None takes the recipe's:
    1 for 'relsnerf', 0 for 'paper'. Used only when the encoder is pretrained or phase A trained it."""
    latent_target_phases: int = 1
    """L_z's targets: the encoder's latents averaged over this many x this many offsets of the 8x8 block grid (the
    views of a point disagree on its latent by where in its block it falls; the average is what a latent field shared
    by all views can render). 1: the plain E(I)."""
    latent_target_offsets: int = 8
    """L_z's targets centred on each colour ray's pixel: the training images are encoded at P x P shifts of 8 / P
    pixels (P = 1, 2, 4 or 8), and a ray's target is the latent of the 8x8 block centred (to 8 / P pixels) on its
    pixel, instead of E(I) interpolated between block centres, which is not what a view whose block grid is centred
    there encodes (docs/method.md gives the measured effect). Encoding takes P^2 encoder passes per image at the
    start of phase B; the targets take P^2 / 2 times the memory of plain E(I) (half precision), at most
    `latent_target_max_gib` (P is lowered to fit, said once). 1: plain E(I). Not combined with
    `latent_target_phases`."""
    latent_target_max_gib: float = 2.0
    """Most memory (GiB, on the training device) that centred L_z targets may take; P is halved until they fit."""
    encoder_adaptation_mult: float = 0.0
    """Phase B (beyond the paper): weight of pulling the encoder's latents of each step's latent-patch crop towards the
    latents the field renders there (the field detached; in units of each latent channel's spread, as L_z). The views
    of a point disagree on its latent, so a field shared by all views renders something like their mean, which the
    decoder decodes softly; this term makes the encoder agree with what a 3D field can render, and
    `encoder_reconstruction_mult` keeps its latents decodable. With L_z on, its targets are then re-encoded every
    `latent_target_refresh_every` steps. 0 (the default): the encoder is frozen after phase A, as in the paper."""
    encoder_reconstruction_mult: float = 1.0
    """With encoder adaptation on: weight of the autoencoder's reconstruction MSE on the same crop, D(E(crop)) against
    the crop (reaches encoder and decoder)."""
    latent_target_refresh_every: int = 250
    """With encoder adaptation on: re-encode L_z's targets of the training images every this many phase-B steps."""
    depth_sigma: float = 0.01
    """Spread of the DS-NeRF depth loss around each sparse point (nerfstudio's convention: exp(-d^2 / (2 sigma)))."""
    patch_loss_mult: float = 1.0
    """Weight of L_p, the MSE between image patches and decoded latent patches (paper: 1)."""
    joint_pass: Literal["single", "separate"] = "single"
    """How a phase-B step renders its rays. 'single': the colour rays, the latent patch's rays and the depth rays in
    one bundle (one proposal sampling, one field pass), each loss on its own rays as with 'separate', which renders
    them in three passes. The losses and gradients are the same; 'single' is faster where a step is bound by kernel
    launches (on a GPU)."""
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
    decoder_guidance: Optional[DecoderGuidanceKind] = None
    """Beyond the paper: what the decoder sees besides the latent map. 'none': the latent map alone, D(z), as in the
    paper. 'rgb': also the colour NeRF's colour on the latent rays; 'rgb-depth': also their log depth and
    accumulation; 'rgb-depth-surface': also the colour NeRF on sub-block rays of each 8x8 block
    (--pipeline.model.surface-rays-per-side), composited from the latent ray's samples of highest weight
    (--pipeline.model.surface-samples). The maps pass through a small convolutional adapter whose output, zero until
    trained, is added to the latent map (D(z + A(g))), and are detached (L_p still never reaches the colour NeRF).
    None takes the recipe's: 'rgb-depth' for 'relsnerf', 'none' for 'paper'. relsnerf_ns/model/decoder_guidance.py
    says why; docs/method.md gives the measured effect."""
    surface_samples: int = 8
    """Surface guidance: how many of a latent ray's samples, those of highest weight, each of its block's sub-block
    rays composites (one field evaluation each; no proposal sampling). More costs decoded-frame time and catches
    more of a block's depth range."""
    surface_rays_per_side: int = SURFACE_POINTS_PER_SIDE
    """Surface guidance: sub-block rays per side of each 8x8 block (1, 2, 4 or 8): 4 renders the colour NeRF at 1/2
    resolution, 2 at 1/4 (a quarter of the field evaluations). Each costs surface-samples evaluations."""
    rgb_nerf_full_resolution: bool = False
    """get_outputs_for_camera renders `rgb_nerf` with one ray per pixel (slow, like nerfacto). When False it is the
    colour NeRF composited on the latent rays (1/8 resolution) and upsampled; evaluation always renders it in full."""
    compile_training: bool = False
    """Training steps (phases B and C): run the per-sample evaluations of the field and the proposal networks through
    torch.compile, which fuses nerfacto's many small operations into a few kernels (a step on a GPU is bound by
    launching them). They compile at the first step that uses them; rendering and evaluation stay eager. Values
    are unchanged; docs/results.md gives the measured speed."""
    compile_backend: str = "inductor"
    """With `compile_training`: the torch.compile backend ('inductor' generates Triton kernels on a GPU and C++ on
    the CPU, which needs a C++ compiler; 'aot_eager' traces without generating code)."""
    inference_path: Literal["fast", "plain"] = "fast"
    """How the decoded output is rendered for the viewer, ns-render and ns-eval. 'fast': one latent ray bundle per
    frame, replayed as a CUDA graph per resolution on a GPU (torch implementation), decoder in half precision;
    'plain': the same rays in float32 chunks, nerfacto-style."""
    inference_cuda_graphs: bool = True
    """With the fast path on a GPU: capture each resolution's frame as a CUDA graph (removes launch overhead)."""
    inference_half_precision_decoder: bool = True
    """With the fast path on a GPU: run the decoder under float16 autocast."""
    decode_tile_halo: int = 24
    """After the decoder ran out of GPU memory on a whole frame, frames are decoded in tiles; each tile is decoded with
    this many latent pixels of its neighbours around it (at least the decoder's receptive radius for seamless tiles:
    TAESD about 19, R32 about 8)."""
    viewer_start_at_training_camera: bool = True
    """Open each viewer client at the first training camera (viser's default pose often looks at empty space)."""
    camera_optimizer: CameraOptimizerConfig = field(default_factory=lambda: CameraOptimizerConfig(mode="off"))
    """Camera pose refinement; off as in the paper (held-out cameras are not aligned to refined poses)."""

    def depth_loss_weight(self) -> float:
        """lambda_d after the recipe: the flag when set, else 0 ('relsnerf') or the paper's 0.1."""
        if self.depth_loss_mult is not None:
            return self.depth_loss_mult
        return RECIPES[self.recipe]["depth_loss_mult"]

    def latent_loss_weight(self) -> float:
        """The weight of L_z after the recipe: the flag when set, else 1 ('relsnerf') or 0 ('paper')."""
        if self.latent_loss_mult is not None:
            return self.latent_loss_mult
        return RECIPES[self.recipe]["latent_loss_mult"]

    def decoder_guidance_kind(self) -> DecoderGuidanceKind:
        """What guides the decoder after the recipe: the flag when set, else 'rgb-depth' ('relsnerf') or 'none'
        ('paper')."""
        if self.decoder_guidance is not None:
            return self.decoder_guidance
        return RECIPES[self.recipe]["decoder_guidance"]

    def nerf_tenfold_decay_every(self) -> int:
        """The period (paper-length steps) of the tenfold decay of the NeRF's phase-B rate after the recipe: 20000
        ('relsnerf', tenfold over phase B) or the paper's 10000. The trainer gives it to the optimizer groups whose
        --optimizers.GROUP.scheduler.phase-b.tenfold-decay-every is None (proposal-networks, fields, latent-field)."""
        return int(RECIPES[self.recipe]["nerf_tenfold_decay_every"])


RECIPES: Dict[str, Dict[str, Any]] = {
    "relsnerf": {
        "depth_loss_mult": 0.0,
        "latent_loss_mult": 1.0,
        "nerf_tenfold_decay_every": 20000,
        "decoder_guidance": "rgb-depth",
    },
    "paper": {
        "depth_loss_mult": 0.1,
        "latent_loss_mult": 0.0,
        "nerf_tenfold_decay_every": 10000,
        "decoder_guidance": "none",
    },
}
"""Per recipe: the loss weights and the decoder's guidance where the model's flags leave them unset, and the NeRF's
phase-B decay period where the optimizer groups leave it None (the latter stretches with the phase: 20000 falls
tenfold over any phase B)."""


class RelsNerfModel(OfflineNerfactoModel):
    """Renders colour for training rays (as nerfacto) and latents for latent rays; decodes latents to images."""

    config: RelsNerfModelConfig
    field: RelsNerfField
    autoencoder: LatentAutoencoder

    def make_field(self, **nerfacto_field_arguments: Any) -> RelsNerfField:
        """nerfacto's field with the latent branch (built where nerfacto builds its field)."""
        return RelsNerfField(
            **nerfacto_field_arguments,
            latent_channels=self.autoencoder.latent_channels,
            latent_num_levels=self.config.latent_num_levels,
            latent_max_res=self.config.latent_max_res,
            latent_log2_hashmap_size=self.config.latent_log2_hashmap_size,
            latent_features_per_level=self.config.latent_features_per_level,
            latent_hidden_dim=self.config.latent_hidden_dim,
            latent_view_dependent=self.config.latent_view_dependent,
        )

    def populate_modules(self) -> None:
        if not 1 <= self.config.latent_target_phases <= LATENT_DOWNSCALE:
            raise ValueError(
                f"--pipeline.model.latent-target-phases must be 1 (plain E(I)) to {LATENT_DOWNSCALE} (every pixel "
                f"offset of the 8x8 grid), got {self.config.latent_target_phases}"
            )
        if self.config.latent_target_offsets not in CENTRED_OFFSETS:
            raise ValueError(
                f"--pipeline.model.latent-target-offsets must be one of {', '.join(map(str, CENTRED_OFFSETS))} "
                f"(shifts of 8 / P whole pixels), got {self.config.latent_target_offsets}"
            )
        if self.config.latent_target_offsets > 1 and self.config.latent_target_phases > 1:
            raise ValueError(
                "--pipeline.model.latent-target-offsets (targets centred on each pixel) and "
                "--pipeline.model.latent-target-phases (targets averaged over offsets) are two alternatives: set one "
                f"of them to 1 (got {self.config.latent_target_offsets} and {self.config.latent_target_phases})"
            )
        if self.config.surface_samples < 1:
            raise ValueError(
                "--pipeline.model.surface-samples must be at least 1 (how many of a latent ray's samples each "
                f"sub-block ray of surface guidance composites), got {self.config.surface_samples}"
            )
        self.config.implementation = resolve_implementation(self.config.implementation)
        self.autoencoder = self.config.autoencoder.setup()
        # Its random initialisation draws from a forked generator: the rest of the model, and every random number of
        # training, are then those of a run without guidance (same seed), so the two compare like for like.
        with torch.random.fork_rng(devices=[]):
            self.decoder_guidance = DecoderGuidance(
                self.config.decoder_guidance_kind(),
                self.autoencoder.latent_channels,
                surface_rays_per_side=self.config.surface_rays_per_side,
            )
        super().populate_modules()  # nerfacto's modules, with our field (make_field) and without LPIPS downloads
        if self.config.implementation == "torch" and self.config.hash_grid_kernel == "fused":
            use_fused_hash_grids(self)
        if self.config.compile_training:
            compile_sample_evaluations(self, backend=self.config.compile_backend)
        # LPIPS from cached weights only, built on first use (not a submodule: no LPIPS tensors in checkpoints).
        self.offline_lpips = self.lpips.offline
        self.render_rgb_nerf_full_resolution = self.config.rgb_nerf_full_resolution
        # Not a submodule (it refers back to the model); holds the captured CUDA graphs of the fast path.
        self.frame_renderer = LatentFrameRenderer(
            self,
            cuda_graphs=self.config.inference_cuda_graphs,
            half_precision_decoder=self.config.inference_half_precision_decoder,
        )
        # Work sizes that shrink when a frame runs out of GPU memory, and stay shrunk (see out_of_memory.py).
        self.latent_ray_chunks = ShrinkingSize()
        self.pixel_ray_chunks = ShrinkingSize()
        self.decode_tiles = ShrinkingSize()
        self.fast_path_max_rays: Optional[int] = None
        """Frames with at least this many latent rays skip the fast path (one of them ran out of memory in it)."""
        self.latent_targets: Optional[LatentTargets] = None
        """The encoder's latents of the training images (L_z's targets); the pipeline sets them at the start of
        phase B. Not a buffer: they follow from the frozen encoder, so checkpoints need not carry them."""
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
        guidance = list(self.decoder_guidance.parameters())
        if guidance:  # trained in phases B and C (phase A has no NeRF), at their own rate (relsnerf_config)
            groups["decoder_guidance"] = guidance
        self.camera_optimizer.get_param_groups(param_groups=groups)
        return groups

    # ------------------------------------------------------------------ rendering
    def forward(
        self, ray_bundle: Optional[RayBundle] = None, latent: bool = False, train_batch: Optional[TrainBatch] = None
    ) -> Any:
        """nerfstudio's Model.forward, plus `latent`: in training, also render z on these rays (see get_outputs).

        With `train_batch`, one training step of its phase instead: (outputs, loss_dict, metrics) of every loss of
        the step. The pipeline calls it through the DDP-wrapped module, so that on several GPUs every computation
        that reaches a parameter happens inside DDP's forward and its gradients are averaged across ranks."""
        if train_batch is not None:
            return self.train_step(train_batch)
        assert ray_bundle is not None
        if self.collider is not None:
            ray_bundle = self.collider(ray_bundle)
        return self.get_outputs(ray_bundle, latent=latent)

    def train_step(self, train_batch: TrainBatch) -> Tuple[Dict[str, Any], Dict[str, Tensor], Dict[str, Tensor]]:
        """The losses of one step of phase A, B or C (by the batch's type)."""
        if isinstance(train_batch, AutoencoderBatch):
            return self._autoencoder_step(train_batch)
        if isinstance(train_batch, JointBatch):
            return self._joint_step(train_batch)
        if isinstance(train_batch, DistillBatch):
            return self._distill_step(train_batch)
        raise TypeError(f"not a training batch: {type(train_batch).__name__}")

    def _autoencoder_step(self, train_batch: AutoencoderBatch):
        """Phase A: reconstruction MSE of image crops."""
        images = train_batch.images.to(self.device)
        reconstruction = self.autoencoder.reconstruct(images)
        mse = F.mse_loss(reconstruction, images)
        metrics = {"ae_psnr": psnr_from_mse(mse.detach(), 1e-10)}
        return {}, {"ae_loss": mse}, metrics

    def _joint_step(self, train_batch: JointBatch):
        """Phase B: colour rays (with L_z when targets are set), depth rays, and the decoded latent patch (L_p)."""
        ray_bundle, batch = train_batch.ray_bundle, dict(train_batch.batch)
        if isinstance(batch.get("image"), Tensor):
            batch["image"] = batch["image"].to(self.device)  # once: nerfacto's metrics and losses each copy it
        patches = batch["latent_patch"]
        patches = list(patches) if isinstance(patches, (list, tuple)) else [patches]
        n = patches[0].latent_size  # several patches (a union of batches) have one size
        patch_rays = [p.ray_bundle.flatten().to(self.device) for p in patches]
        with record_function("relsnerf/patch_targets"):
            target = torch.stack([p.image for p in patches]).to(self.device)
        depth = batch.get("depth_rays")
        if self.config.joint_pass == "single":
            outputs, patch_maps, depth_outputs = self._render_joint_rays(ray_bundle, patch_rays, depth)
        else:
            outputs, patch_maps, depth_outputs = self._render_joint_rays_separately(ray_bundle, patch_rays, depth)
        patch_latent = patch_maps["latent"]
        with record_function("relsnerf/losses"):
            metrics = self.get_metrics_dict(outputs, batch)
            loss_dict = self.get_loss_dict(outputs, batch, metrics)
            if depth is not None:
                _, distance, weight = depth
                loss_dict["depth_loss"] = self.config.depth_loss_weight() * self.get_depth_loss(
                    depth_outputs, distance.to(self.device), weight.to(self.device)
                )
        with record_function("relsnerf/latent_patch_decoder"):
            patch_inputs = self.decoder_input_map(patch_maps).view(len(patches), n, n, -1)
            patch_mse = F.mse_loss(self.decode_latent_map(patch_inputs), target)
        loss_dict["patch_loss"] = self.config.patch_loss_mult * patch_mse
        metrics["patch_psnr"] = psnr_from_mse(patch_mse.detach(), 1e-10)
        if self.config.encoder_adaptation_mult > 0:
            with record_function("relsnerf/encoder_adaptation"):
                loss_dict.update(self._encoder_adaptation_losses(target, patch_latent.view(len(patches), n, n, -1)))
        return outputs, loss_dict, metrics

    def _encoder_adaptation_losses(
        self, crops: Float[Tensor, "patches 3 size size"], field_latent: Float[Tensor, "patches n n channels"]
    ) -> Dict[str, Tensor]:
        """The encoder pulled towards the field's latents of the same crops (the field detached: this term moves the
        encoder alone), and the reconstruction of the crops through E and D (encoder and decoder)."""
        encoded = self.autoencoder.encode(crops)
        field_latent = field_latent.detach().permute(0, 3, 1, 2).float()
        # Each channel in units of its spread over the training latents (L_z's), so the weight means the same for
        # every autoencoder; without L_z's targets, the spread of the field's latents of this step.
        if self.latent_targets is not None:
            spread = self.latent_targets.std.to(encoded.device)
        else:
            spread = field_latent.std(dim=(0, 2, 3)).clamp_min(1e-3)
        agreement = (((encoded.float() - field_latent) / spread[None, :, None, None]) ** 2).mean()
        reconstruction = F.mse_loss(self.autoencoder.decode(encoded), crops)
        return {
            "encoder_adaptation_loss": self.config.encoder_adaptation_mult * agreement,
            "encoder_reconstruction_loss": self.config.encoder_reconstruction_mult * reconstruction,
        }

    def _render_joint_rays(
        self, colour_rays: RayBundle, patch_rays: List[RayBundle], depth: Optional[Tuple[RayBundle, Tensor, Tensor]]
    ) -> Tuple[Dict[str, Any], Dict[str, Tensor], Optional[Dict[str, Any]]]:
        """One pass over colour, latent-patch and depth rays: (colour rays' outputs, with their latents when L_z is
        on; the patch rays' latents, with their colour, depth and accumulation when the decoder is guided; the depth
        rays' outputs). Each part's outputs are those rays' rows of the joint outputs, so nerfacto's interlevel and
        distortion losses see the colour rays alone, as in the separate passes; the patch rays' weights are detached
        (L_p reaches the latent field and the decoder only)."""
        parts = [colour_rays.flatten(), *patch_rays] + ([depth[0].to(self.device)] if depth is not None else [])
        sizes = [len(part) for part in parts]
        with record_function("relsnerf/joint_rays"):
            joint = self.forward(cat_dataclasses(parts))
            n_colour, n_patch = sizes[0], sum(sizes[1 : 1 + len(patch_rays)])
            with_latent = n_colour + n_patch
            # z only where a loss needs it: the colour rays (L_z) and the patch rays (L_p).
            first = 0 if self.latent_targets is not None else n_colour
            latent = self._composite_latent(
                joint["ray_samples_list"][-1][first:with_latent], joint["weights_list"][-1][first:with_latent]
            )
        outputs = rows_of(joint, 0, n_colour)
        if self.latent_targets is not None:
            outputs["latent"] = latent[:n_colour]
        depth_outputs = rows_of(joint, with_latent, sum(sizes)) if depth is not None else None
        patch_maps = {"latent": latent[-n_patch:]}
        if self.decoder_guidance.enabled:  # detached where the guidance maps are made
            patch_maps["rgb_nerf"] = joint["rgb"][n_colour:with_latent]
            patch_maps["depth"] = joint["depth"][n_colour:with_latent]
            patch_maps["accumulation"] = joint["accumulation"][n_colour:with_latent]
            if self.decoder_guidance.needs_surface:
                # The patch rays' own bundle: the joint one keeps the colour rays' metadata, without pixel axes.
                patch_maps["surface"] = self.surface_guidance(
                    cat_dataclasses(patch_rays),
                    joint["ray_samples_list"][-1][n_colour:with_latent],
                    joint["weights_list"][-1][n_colour:with_latent],
                )
        return outputs, patch_maps, depth_outputs

    def _render_joint_rays_separately(
        self, colour_rays: RayBundle, patch_rays: List[RayBundle], depth: Optional[Tuple[RayBundle, Tensor, Tensor]]
    ) -> Tuple[Dict[str, Any], Dict[str, Tensor], Optional[Dict[str, Any]]]:
        """The same outputs as `_render_joint_rays`, from one pass per kind of ray."""
        with record_function("relsnerf/colour_rays"):
            # Colour rays first: nerfacto's proposal sampler trains its networks on the first pass of a step.
            outputs = self.forward(colour_rays, latent=self.latent_targets is not None)
        depth_outputs = None
        if depth is not None:
            with record_function("relsnerf/depth_rays"):
                depth_outputs = self.forward(depth[0].to(self.device))
        with record_function("relsnerf/latent_patch"):
            patch_maps = self.render_latents(cat_dataclasses(patch_rays), with_colour=self.decoder_guidance.enabled)
        return outputs, patch_maps, depth_outputs

    def _distill_step(self, train_batch: DistillBatch):
        """Phase C (eq. 4): decoder MSE on crops of cached decoder input maps (latents, with the guidance maps when
        the decoder is guided), real images and renders weighted apart."""
        inputs = train_batch.latents.to(self.device).detach()
        targets = train_batch.targets.to(self.device)
        per_crop = ((self.decode_latent_map(inputs) - targets) ** 2).mean(dim=(1, 2, 3))
        k, weight = train_batch.num_real, train_batch.real_weight
        real = per_crop[0] if k == 1 else per_crop[:k].mean()
        loss_dict = {"distill_real_loss": weight * real}
        if len(per_crop) > k:
            loss_dict["distill_render_loss"] = (1.0 - weight) * per_crop[k:].mean()
        metrics = {"distill_real_psnr": psnr_from_mse(real.detach(), 1e-10)}
        return {}, loss_dict, metrics

    def get_outputs(self, ray_bundle: RayBundle, latent: bool = False) -> Dict[str, Any]:
        """nerfacto's outputs; with `latent` (training only), also z composited with the colour NeRF's final samples
        and detached weights, so that L_z reaches the latent branch and nothing else."""
        outputs = super().get_outputs(ray_bundle)
        if latent:
            if not self.training:
                raise RuntimeError("latents on colour rays are a training output (render_latents renders them)")
            outputs["latent"] = self._composite_latent(outputs["ray_samples_list"][-1], outputs["weights_list"][-1])
        return outputs

    def _composite_latent(
        self, samples: RaySamples, weights: Float[Tensor, "rays samples 1"]
    ) -> Float[Tensor, "rays latent_channels"]:
        """z composited with the colour NeRF's weights, detached: a latent loss reaches the latent branch only."""
        return torch.sum(weights.detach() * self.field.get_latent(samples), dim=-2)

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
            if self.decoder_guidance.needs_surface:
                outputs["surface"] = self.surface_guidance(ray_bundle, ray_samples, weights)
        return outputs

    @torch.no_grad()
    def surface_guidance(
        self, latent_rays: RayBundle, samples: RaySamples, weights: Float[Tensor, "rays samples 1"]
    ) -> Float[Tensor, "rays S"]:
        """The colour NeRF on the rays through k x k sub-blocks of each latent ray's block (k: surface_rays_per_side),
        composited from the latent ray's `surface_samples` samples of highest weight, moved onto each sub-block ray at
        the same distance from the camera (no proposal sampling): per sub-block ray, its colour (normalised by its
        accumulation) and accumulation. The rays need the pixel axes that `latent_ray_bundle` gives them."""
        metadata = latent_rays.metadata or {}
        missing = [key for key in ("directions_norm", "pixel_axes") if key not in metadata]
        if missing:
            raise KeyError(
                f"surface guidance needs latent rays made by latent_ray_bundle (their metadata lacks {missing})"
            )
        count = min(self.config.surface_samples, weights.shape[-2])
        # The latent ray's samples where its surface is, kept in their order along the ray.
        chosen = torch.topk(weights[..., 0], count, dim=-1).indices.sort(dim=-1).values  # [rays, count]
        starts = samples.frustums.starts[..., 0].gather(-1, chosen)
        ends = samples.frustums.ends[..., 0].gather(-1, chosen)
        norm = metadata["directions_norm"].to(starts)
        sub = block_sub_ray_directions(
            latent_rays.directions.to(starts),
            norm,
            metadata["pixel_axes"].to(starts),
            self.decoder_guidance.surface_rays_per_side,
        )  # [rays, k, 3]
        rays, per_ray = sub.shape[:2]
        length = sub.norm(dim=-1, keepdim=True)
        scale = length / norm[:, None, :]  # [rays, k, 1]: the same distance from the camera as the latent ray's samples
        sub_starts = (starts[:, None, :] * scale).reshape(rays * per_ray, count, 1)
        sub_ends = (ends[:, None, :] * scale).reshape(rays * per_ray, count, 1)

        def each_sample(values: Tensor) -> Tensor:  # [rays, k or 1, c] -> [rays * k, count, c]
            return (
                values.expand(rays, per_ray, -1)[:, :, None, :]
                .expand(-1, -1, count, -1)
                .reshape(rays * per_ray, count, -1)
            )

        sub_samples = RaySamples(
            frustums=Frustums(
                origins=each_sample(latent_rays.origins[:, None, :]),
                directions=each_sample(sub / length),
                starts=sub_starts,
                ends=sub_ends,
                pixel_area=each_sample(latent_rays.pixel_area[:, None, :]),
            ),
            camera_indices=each_sample(latent_rays.camera_indices[:, None, :]),
            deltas=sub_ends - sub_starts,
        )
        field_outputs = self.field.forward(sub_samples)
        # Compositing the chosen samples alone treats the gaps between them as empty space: they are where the latent
        # ray's weights are low, i.e. little density that the sub-block ray would have crossed.
        sub_weights = sub_samples.get_weights(field_outputs[FieldHeadNames.DENSITY])
        accumulation = sub_weights.sum(dim=-2)
        # Normalised: a sub-block ray whose surface lies partly outside the chosen samples still gets its colour;
        # its accumulation says how much of it they hold. Bounded by 1 (sum(w c) <= sum(w)).
        rgb = (sub_weights * field_outputs[FieldHeadNames.RGB]).sum(dim=-2) / accumulation.clamp_min(1e-3)
        return self.decoder_guidance.surface_guidance(
            rgb.reshape(rays, per_ray, 3), accumulation.reshape(rays, per_ray, 1)
        )

    def decoder_input_map(self, maps: Dict[str, Tensor]) -> Float[Tensor, "*batch rows cols c"]:
        """What the decoder decodes, channels last: the latent map, with the guidance channels appended when the
        decoder is guided (from the same rays' `rgb_nerf`, `depth` and `accumulation`, as `render_latents` gives them
        with `with_colour`)."""
        latent = maps["latent"]
        if not self.decoder_guidance.enabled:
            return latent
        missing = [key for key in ("rgb_nerf", "depth", "accumulation") if key not in maps]
        if missing:
            raise KeyError(
                f"the decoder is guided ({self.decoder_guidance.kind!r}) but the rendered maps lack {missing}: "
                "render the latent rays with their colour (render_latents(..., with_colour=True))"
            )
        if self.decoder_guidance.needs_surface and "surface" not in maps:
            raise KeyError(
                f"the decoder is guided ({self.decoder_guidance.kind!r}) but the rendered maps lack 'surface': render "
                "latent rays made by latent_ray_bundle with their colour (render_latents(..., with_colour=True))"
            )
        guidance = self.decoder_guidance.guidance_maps(
            maps["rgb_nerf"], maps["depth"], maps["accumulation"], maps.get("surface")
        )
        return torch.cat([latent, guidance.to(latent.dtype)], dim=-1)

    def decode_latent_map(self, inputs: Float[Tensor, "*batch rows cols c"]) -> Float[Tensor, "*batch 3 H W"]:
        """D(I_Z): decoder input maps (channels last, as rendered: see `decoder_input_map`) to images (channels
        first)."""
        batched = inputs if inputs.ndim == 4 else inputs[None]
        images = self.decode_channels_first(batched.permute(0, 3, 1, 2).contiguous())
        return images if inputs.ndim == 4 else images[0]

    def decode_channels_first(self, inputs: Float[Tensor, "batch c h w"]) -> Float[Tensor, "batch 3 h*8 w*8"]:
        """The decoder on [latent, guidance] channels: D(z), or D(z + A(g)) when the decoder is guided, plus the
        refiner's correction R(D, S) of surface guidance."""
        n = self.autoencoder.latent_channels
        expected = n + self.decoder_guidance.channels
        if inputs.shape[1] != expected:
            raise ValueError(
                f"the decoder takes {expected} channels ({n} latent + {self.decoder_guidance.channels} guidance, "
                f"--pipeline.model.decoder-guidance {self.decoder_guidance.kind}), got {inputs.shape[1]}: build its "
                "input with decoder_input_map"
            )
        latent, guidance = inputs[:, :n], inputs[:, n:]
        if not self.decoder_guidance.enabled:
            return self.autoencoder.decode(latent)
        decoded = self.autoencoder.decode(latent + self.decoder_guidance(guidance).to(latent.dtype))
        return self.decoder_guidance.refine(decoded, guidance)

    def _render_latent_bundle_chunked(self, bundle: RayBundle) -> Dict[str, Tensor]:
        rows, cols = bundle.shape
        flat = bundle.flatten()
        outputs = render_in_chunks(
            len(flat),
            self.config.eval_num_rays_per_chunk,
            self.latent_ray_chunks,
            lambda start, end: self.render_latents(flat[start:end].to(self.device), with_colour=True),
            "rendering latent rays",
        )
        return {k: v.view(rows, cols, -1) for k, v in outputs.items()}

    def decode_latent_frame(self, inputs: Float[Tensor, "rows cols c"]) -> Float[Tensor, "3 H W"]:
        """D(decoder input map) for inference: the whole map, or overlapping tiles once a frame ran out of GPU
        memory."""
        batched = inputs.permute(2, 0, 1)[None].contiguous()
        return decode_frame(self.decode_channels_first, batched, self.decode_tiles, self.config.decode_tile_halo)[0]

    def _render_fast_frame(self, camera: Cameras, obb_box: Optional[OrientedBox]):
        """The fast path's frame, or None when frames this large do not fit in GPU memory as one bundle."""
        height, width = int(camera.height.flatten()[0]), int(camera.width.flatten()[0])
        num_rays = math.ceil(height / LATENT_DOWNSCALE) * math.ceil(width / LATENT_DOWNSCALE)
        if self.fast_path_max_rays is not None and num_rays >= self.fast_path_max_rays:
            return None
        try:
            return self.frame_renderer(camera, obb_box=obb_box)
        except torch.OutOfMemoryError:
            pass
        self.frame_renderer.clear()  # captured CUDA graphs hold memory pools of their own
        free_cached_memory()
        self.fast_path_max_rays = num_rays
        self.latent_ray_chunks.shrink(num_rays)  # the chunked path starts below the size that failed
        chunk = self.latent_ray_chunks(self.config.eval_num_rays_per_chunk)
        CONSOLE.print(
            f"[yellow]Out of GPU memory rendering a {width}x{height} frame as one bundle of {num_rays} latent rays: "
            f"frames this large are rendered in chunks of at most {chunk} rays from now on."
        )
        return None

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
        frame = self._render_fast_frame(camera, obb_box) if self.config.inference_path == "fast" else None
        if frame is not None:
            low, decoded = frame.low, frame.decoded
        else:  # the plain path (chunks that shrink when out of GPU memory, tiled decoding when needed)
            low = self.render_latent_frame(camera, obb_box=obb_box)
            decoded = self.decode_latent_frame(self.decoder_input_map(low)).clamp(0.0, 1.0)
        outputs = {"rgb": decoded.permute(1, 2, 0)[:height, :width]}
        for key in ("rgb_nerf", "depth", "accumulation", "latent"):
            outputs[key] = upsample_latent_grid(low[key], height, width)
        return outputs

    @torch.no_grad()
    def get_outputs_for_camera_ray_bundle(self, camera_ray_bundle: RayBundle) -> Dict[str, Tensor]:
        """nerfstudio's chunked per-pixel rendering (used by nerfacto's get_outputs_for_camera), with chunks that
        shrink when out of GPU memory."""
        input_device = camera_ray_bundle.directions.device
        height, width = camera_ray_bundle.origins.shape[:2]

        def render(start: int, end: int) -> Dict[str, Tensor]:
            bundle = camera_ray_bundle.get_row_major_sliced_ray_bundle(start, end).to(self.device)
            outputs = self.forward(ray_bundle=bundle)
            return {k: v.to(input_device) for k, v in outputs.items() if isinstance(v, Tensor)}

        outputs = render_in_chunks(
            len(camera_ray_bundle),
            self.config.eval_num_rays_per_chunk,
            self.pixel_ray_chunks,
            render,
            "rendering the RGB-NeRF (one ray per pixel)",
        )
        return {k: v.view(height, width, -1) for k, v in outputs.items()}

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
    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        """nerfacto's losses, plus L_z when the outputs carry the colour rays' latents and targets are set."""
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        weight = self.config.latent_loss_weight()
        if "latent" in outputs and self.latent_targets is not None and weight > 0:
            target = self.latent_targets.at_pixels(batch["indices"])
            loss_dict["latent_loss"] = weight * self.latent_targets.normalised_mse(outputs["latent"], target)
        return loss_dict

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
            raise CheckpointMismatchError(describe_checkpoint_mismatch(state, expected))


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


def rows_of(outputs: Dict[str, Any], start: int, end: int) -> Dict[str, Any]:
    """Rays [start, end) of a flat bundle's training outputs: tensors and the per-level lists of weights and samples."""
    rows: Dict[str, Any] = {}
    for key, value in outputs.items():
        if isinstance(value, list):
            rows[key] = [item[start:end] for item in value]
        elif isinstance(value, Tensor):
            rows[key] = value[start:end]
        else:
            rows[key] = value
    return rows
