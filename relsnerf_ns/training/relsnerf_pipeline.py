"""The staged ReLS-NeRF pipeline: (A) autoencoder pretraining, (B) joint fitting, (C) decoder distillation.

The phase is a function of the global step (see `phases.py`), so a run resumed from any checkpoint continues in the
phase, and at the learning rate, that its step belongs to. Each phase's loss only reaches that phase's parameters.
"""

from __future__ import annotations

import contextlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Mapping, Optional, Tuple, Type

import torch
import torch.distributed as dist
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.datamanagers.base_datamanager import DataManagerConfig
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE, get_progress
from rich.table import Table
from torch import Tensor
from torch.cuda.amp.grad_scaler import GradScaler
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.profiler import record_function

from relsnerf_ns.data.atomic_files import write_png
from relsnerf_ns.data.relsnerf_datamanager import (
    RelsNerfDataManager,
    RelsNerfDataManagerConfig,
    aligned_crop,
    blend_alpha,
    largest_patch,
    random_patch,
)
from relsnerf_ns.evaluation.held_out import DECODED, held_out_views
from relsnerf_ns.model.decoder_guidance import upgrade_earlier_refiner
from relsnerf_ns.model.latent_targets import LatentTargets, encode_images, offsets_within, target_bytes
from relsnerf_ns.model.relsnerf_model import (
    CheckpointMismatchError,
    RelsNerfModel,
    RelsNerfModelConfig,
    describe_checkpoint_mismatch,
)
from relsnerf_ns.model.train_batches import AutoencoderBatch, DistillBatch, JointBatch, TrainBatch
from relsnerf_ns.training.distill_renders import DistillRenders
from relsnerf_ns.training.phases import Phase, PhaseScheduleConfig

GUIDANCE_PREFIX = "decoder_guidance."
"""State-dict keys of the decoder guidance adapter (absent from checkpoints trained before it existed)."""


@dataclass
class RelsNerfPipelineConfig(VanillaPipelineConfig):
    """Three-phase ReLS-NeRF fitting."""

    _target: Type = field(default_factory=lambda: RelsNerfPipeline)
    datamanager: DataManagerConfig = field(default_factory=RelsNerfDataManagerConfig)
    """Rays, latent patches and crops."""
    model: ModelConfig = field(default_factory=RelsNerfModelConfig)
    """The ReLS-NeRF model."""
    phases: PhaseScheduleConfig = field(default_factory=PhaseScheduleConfig)
    """Step counts of phases A, B and C, presets and ablation switches."""
    distill_real_weight: float = 0.7
    """gamma of eq. 4: weight of real images in phase C (1 - gamma goes to RGB-NeRF renders)."""
    num_distill_renders: Optional[int] = None
    """RGB-NeRF renders at interpolated cameras made at the start of phase C; None takes the preset's (paper: 512,
    short: 64)."""
    distill_renders_per_step: int = 2
    """Renders per phase-C step, next to one real image (paper: 2)."""
    distill_render_seed: int = 0
    """Seed of the interpolated cameras (fixed so a resumed run finds the same renders)."""
    distill_render_dir: Optional[Path] = None
    """Where phase C keeps its renders; the trainer sets it to the run directory (None: memory only)."""
    distill_crop_alignment: Literal["grid", "any"] = "grid"
    """Where phase-C crops start. 'grid': at multiples of 8 pixels, cropping latent maps rendered once per camera, on
    the grid that inference renders (the paper). 'any': at any pixel, with the latent rays of each crop rendered at
    its step, so the decoder also learns the field's latents of content that falls anywhere inside an 8x8 block, as
    it does in novel views."""


class RelsNerfPipeline(VanillaPipeline):
    """Routes each step to its phase's batch and loss."""

    config: RelsNerfPipelineConfig
    datamanager: RelsNerfDataManager

    def __init__(
        self,
        config: RelsNerfPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ) -> None:
        model_config = typing.cast(RelsNerfModelConfig, config.model)
        if model_config.depth_loss_weight() <= 0 and isinstance(config.datamanager, RelsNerfDataManagerConfig):
            # No depth rays are drawn (one field pass less per step); the datamanager says so once, with this.
            config.datamanager.depth_rays_per_batch = 0
            config.datamanager.depth_loss_off_reason = (
                f"the {model_config.recipe!r} recipe leaves it off (turn it on with --pipeline.model.depth-loss-mult "
                "0.1, the paper's lambda_d, or --pipeline.model.recipe paper)"
                if model_config.depth_loss_mult is None
                else "--pipeline.model.depth-loss-mult is 0"
            )
        if world_size > 1 and str(device).startswith("cuda"):
            torch.cuda.set_device(torch.device(device))  # collectives of Python objects use the current device
        # nerfstudio would wrap the model in DDP with device_ids=[local_rank], which fails for a CPU model (gloo):
        # build it as one process would, then wrap it here.
        super().__init__(config, device, test_mode, 1, local_rank, grad_scaler)
        self.world_size, self.local_rank = world_size, local_rank
        self.datamanager.world_size = world_size
        if world_size > 1:
            on_gpu = str(device).startswith("cuda")
            # Every parameter requires gradients all run long (phases differ in which losses reach which groups and
            # in learning rates, never in requires_grad), so DDP's buckets hold them all. find_unused_parameters:
            # each phase's forward uses only some of them (and nerfacto's proposal networks train on some steps).
            self._model = typing.cast(
                RelsNerfModel,
                DDP(self._model, device_ids=[local_rank] if on_gpu else None, find_unused_parameters=True),
            )
            self.barrier()
        self._check_surface_guidance_cameras()
        # RGBA crops for the latent paths are blended like the model's colour targets.
        self.datamanager.set_alpha_background(self.relsnerf_model.config.background_color)
        self.schedule = config.phases
        self.schedule.steps()  # validate the step counts early, with a clear message
        self.phase: Optional[Phase] = None
        self.distill_renders: Optional[DistillRenders] = None
        self.distill_latents: Optional[Dict[str, List[torch.Tensor]]] = None
        """Phase C's decoder input maps of the training and render cameras (the latent field is frozen in phase C)."""
        self.loaded_without_guidance = False
        """Whether the loaded checkpoint predates decoder guidance (its optimizer state lacks the adapter too)."""
        self._latent_targets_decided = False
        self._latent_target_offsets = 1
        """The centred offsets of L_z's targets in use (the configured number, or fewer to fit the memory budget)."""

    @property
    def relsnerf_model(self) -> RelsNerfModel:
        return typing.cast(RelsNerfModel, self.model)

    def _check_surface_guidance_cameras(self) -> None:
        """Surface guidance builds its sub-block rays with a pinhole model (`latent_rays.pixel_axes`): refuse other
        camera models before training rather than guide the decoder with rays in the wrong directions."""
        if not self.relsnerf_model.decoder_guidance.needs_surface:
            return
        for split in ("train_dataset", "eval_dataset"):
            dataset = getattr(self.datamanager, split, None)
            if dataset is None:
                continue
            types = {CameraType(int(value)).name for value in dataset.cameras.camera_type.flatten().unique()}
            others = sorted(types - {CameraType.PERSPECTIVE.name})
            if others:
                kind, data = self.relsnerf_model.decoder_guidance.kind, self.datamanager.config.data
                raise ValueError(
                    f"--pipeline.model.decoder-guidance {kind} builds its sub-block rays for pinhole cameras, but the "
                    f"{split.split('_')[0]} cameras of {data} include {', '.join(others)} ones: use "
                    "--pipeline.model.decoder-guidance rgb-depth, or undistort the images to a pinhole model."
                )

    # ------------------------------------------------------------------ several processes
    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    @property
    def rank(self) -> int:
        return dist.get_rank() if self.distributed else 0

    def barrier(self) -> None:
        """Wait for every rank (nothing in one process)."""
        if self.distributed:
            on_gpu = str(self.device).startswith("cuda")
            dist.barrier(device_ids=[torch.device(self.device).index or 0] if on_gpu else None)

    # ------------------------------------------------------------------ phases
    def enter_phase(self, step: int) -> Phase:
        phase = self.schedule.phase_at(step)
        if phase != self.phase:
            a, b, c = self.schedule.steps()
            CONSOLE.rule(f"[bold]Phase {phase.title}[/bold] (step {step}; schedule A={a}, B={b}, C={c} steps)")
            self.phase = phase
            self.relsnerf_model.viewer_phase.value = f"{phase.title} (steps {self.schedule.start_of(phase)}+)"
        return phase

    def get_train_loss_dict(self, step: int):
        """The step's batch (`next_train_batch`) through the (DDP-wrapped) model's forward (`train_loss_dict_for`).

        Replaces nerfstudio's, whose multi-GPU branch expects a `train_sampler` that no datamanager sets: each rank
        draws its own rays, patches and crops from its own random stream (nerfstudio seeds rank r with seed + r)."""
        return self.train_loss_dict_for(self.next_train_batch(step))

    def next_train_batch(self, step: int) -> TrainBatch:
        """What the step of `step`'s phase trains on, drawn from this process's random generators."""
        phase = self.enter_phase(step)
        if phase == Phase.AE_PRETRAIN:
            return AutoencoderBatch(self.datamanager.next_ae_batch(step))
        if phase == Phase.JOINT:
            self.ensure_latent_targets(step)
            with record_function("relsnerf/data"):
                ray_bundle, batch = self.datamanager.next_joint(step)
            return JointBatch(ray_bundle, batch)
        return self._next_distill_batch()

    def train_loss_dict_for(self, train_batch: TrainBatch, module: Optional[torch.nn.Module] = None):
        """(outputs, loss_dict, metrics) of a batch, computed inside the forward of `module` (default: the model as
        wrapped for training, DDP on several GPUs; tests pass the bare model for a single-process reference)."""
        module = self._model if module is None else module
        outputs, loss_dict, metrics = module(train_batch=train_batch)
        phase = {AutoencoderBatch: Phase.AE_PRETRAIN, JointBatch: Phase.JOINT, DistillBatch: Phase.DISTILL}
        metrics["phase"] = torch.tensor(float(phase[type(train_batch)].index))
        return outputs, loss_dict, metrics

    def ensure_latent_targets(self, step: Optional[int] = None) -> Optional[LatentTargets]:
        """Encode the training images at the first phase-B step of this process, when L_z is on (said once).

        Without encoder adaptation the encoder is frozen from phase B on, so the targets are the same all phase long
        and in a resumed run. With it (`--pipeline.model.encoder-adaptation-mult`), they are re-encoded with the
        current encoder every `latent_target_refresh_every` phase-B steps (`step` given). The targets need an encoder
        that has learnt something: a pretrained one, or one that phase A trained."""
        model = self.relsnerf_model
        if self._latent_targets_decided:
            if model.latent_targets is not None and step is not None and self._latent_targets_refresh_due(step):
                model.latent_targets = LatentTargets(self._encode_training_images(), self._latent_target_offsets)
            return model.latent_targets
        self._latent_targets_decided = True
        if model.config.latent_loss_weight() <= 0:
            return None
        if not model.autoencoder.is_pretrained and self.schedule.length_of(Phase.AE_PRETRAIN) == 0:
            CONSOLE.print(
                "[yellow]Latent loss L_z off: the encoder is neither pretrained nor trained in phase A (skipped), so "
                "its latents are no targets; the latent field learns through the decoder (L_p) alone."
            )
            return None
        self._latent_target_offsets = self._centred_offsets_that_fit()
        maps = self._encode_training_images()
        model.latent_targets = LatentTargets(maps, self._latent_target_offsets)
        std = model.latent_targets.std
        refresh = ""
        if model.config.encoder_adaptation_mult > 0:
            refresh = f" (re-encoded every {model.config.latent_target_refresh_every} steps: the encoder adapts)"
        CONSOLE.print(
            f"Latent loss L_z on: encoder latents of {len(maps)} training images ({model.latent_targets.channels} "
            f"channels, spread {float(std.min()):.3g}-{float(std.max()):.3g}, {self._latent_target_kind()}) "
            f"supervise the latent of every colour ray{refresh}."
        )
        return model.latent_targets

    def _centred_offsets_that_fit(self) -> int:
        """The configured number of centred offsets, lowered (said once) until the targets fit the memory budget."""
        config = self.relsnerf_model.config
        if config.latent_target_phases > 1:
            return 1
        sizes = [tuple(image.shape[:2]) for image in self.datamanager.train_images]
        channels = self.relsnerf_model.autoencoder.latent_channels
        budget = config.latent_target_max_gib * 2**30
        offsets = offsets_within(sizes, channels, config.latent_target_offsets, budget)
        if offsets < config.latent_target_offsets:
            wanted = target_bytes(sizes, channels, config.latent_target_offsets) / 2**30
            spacing, wanted_spacing = 8 // offsets, 8 // config.latent_target_offsets
            CONSOLE.print(
                f"[yellow]L_z targets centred every {spacing} pixels, not every {wanted_spacing}: "
                f"that would take {wanted:.1f} GiB for {len(sizes)} training images, over "
                f"--pipeline.model.latent-target-max-gib {config.latent_target_max_gib:g} (raise it to keep them)."
            )
        return offsets

    def _latent_target_kind(self) -> str:
        config = self.relsnerf_model.config
        if self._latent_target_offsets > 1:
            spacing = 8 // self._latent_target_offsets
            return f"centred every {spacing} pixel{'s' if spacing > 1 else ''}"
        if config.latent_target_phases > 1:
            return f"averaged over {config.latent_target_phases}^2 grid offsets"
        return "interpolated between block centres"

    def _encode_training_images(self) -> List[torch.Tensor]:
        """E(I) of every training image (alpha blended as the colour targets), averaged over grid offsets or centred
        on them as set."""
        config = self.relsnerf_model.config
        background = self.datamanager.alpha_background
        passes = max(config.latent_target_phases, self._latent_target_offsets) ** 2
        maps: List[torch.Tensor] = []
        # Centred targets take 64 encoder passes per image: show the progress (minutes with a large encoder).
        description = (
            f"[bold]L_z targets: encoding the training images ({passes} encoder pass{'es' if passes > 1 else ''} each)"
        )
        with get_progress(description) as progress:
            for image in progress.track(self.datamanager.train_images):
                maps += encode_images(
                    self.relsnerf_model.autoencoder.encode,
                    [blend_alpha(image, background)],
                    self.device,
                    phases=config.latent_target_phases,
                    offsets=self._latent_target_offsets,
                )
        return maps

    def _latent_targets_refresh_due(self, step: int) -> bool:
        config = self.relsnerf_model.config
        if config.encoder_adaptation_mult <= 0 or config.latent_target_refresh_every <= 0:
            return False
        since = step - self.schedule.start_of(Phase.JOINT)
        return since > 0 and since % config.latent_target_refresh_every == 0

    def _next_distill_batch(self) -> DistillBatch:
        """Decoder fine-tuning (eq. 4) on crops of real images and of RGB-NeRF renders, with their latent maps.

        The latent field is frozen in phase C. With grid-aligned crops each camera's latent map is rendered once
        (`ensure_distill_latents`) and a step crops it at multiples of 8 pixels; with crops anywhere, a step renders
        the latent rays of its crops (`distill_crop_alignment`)."""
        renders = self.ensure_distill_renders()
        train_images = self.datamanager.train_images
        size = largest_patch(self.datamanager.patch_sizes["distill_crop"], renders.images or train_images)
        background = self.datamanager.alpha_background
        real = int(torch.randint(len(train_images), (1,)))
        picks = [("train", real)]
        for _ in range(self.config.distill_renders_per_step if renders.images else 0):
            picks.append(("renders", int(torch.randint(len(renders.images), (1,)))))
        if self.config.distill_crop_alignment == "grid":
            latents = self.ensure_distill_latents()
            images = {"train": train_images, "renders": renders.images}
            crops = [
                aligned_crop(images[kind][index], latents[kind][index], size, background if kind == "train" else None)
                for kind, index in picks
            ]
        else:
            crops = [self._crop_anywhere(kind, index, size) for kind, index in picks]
        # Real images may live on the device (--pipeline.datamanager.images-on-gpu), renders stay on the host.
        targets = torch.stack([image.to(self.device) for image, _ in crops])
        with torch.no_grad():
            latent_batch = torch.stack([latent.to(self.device) for _, latent in crops])
        return DistillBatch(latent_batch, targets, 1, self.config.distill_real_weight)

    def _crop_anywhere(self, kind: str, index: int, size: int) -> Tuple[Tensor, Tensor]:
        """A crop at any pixel of a training image or render, and the latent map its blocks' rays render."""
        if kind == "train":
            cameras, images = self.datamanager.train_cameras, self.datamanager.train_images
            background = self.datamanager.alpha_background
        else:
            cameras, images, background = (
                self.ensure_distill_renders().cameras,
                self.ensure_distill_renders().images,
                None,
            )
        patch = random_patch(cameras.to(self.device), images, size, index, background=background)
        model = self.relsnerf_model
        with self._inference_sampling(), torch.no_grad():
            maps = model.render_latents(patch.ray_bundle.flatten(), with_colour=model.decoder_guidance.enabled)
            inputs = model.decoder_input_map(maps)
        return patch.image, inputs.float().view(patch.latent_size, patch.latent_size, -1)

    @contextlib.contextmanager
    def _inference_sampling(self) -> Iterator[None]:
        """The model in eval mode with the proposal weights' annealing exponent of a loaded model (nerfstudio's
        default, 1): the latents phase C sees are those that inference renders, at whichever phase-C step a (resumed)
        run makes them, also when phase B was too short for nerfacto's anneal schedule to reach 1."""
        model = self.relsnerf_model
        was_training, anneal = model.training, model.proposal_sampler._anneal
        model.eval()
        model.proposal_sampler.set_anneal(1.0)
        try:
            yield
        finally:
            model.proposal_sampler.set_anneal(anneal)
            model.train(was_training)

    def ensure_distill_latents(self) -> Dict[str, List[torch.Tensor]]:
        """The decoder input maps [rows, cols, c] (latent maps, with the guidance channels when the decoder is
        guided) of every training camera and every phase-C render camera, made once."""
        if self.distill_latents is None:
            model = self.relsnerf_model
            renders = self.ensure_distill_renders()
            cameras = self.datamanager.train_cameras

            def inputs(camera: Cameras) -> torch.Tensor:
                return model.decoder_input_map(model.render_latent_frame(camera))

            with self._inference_sampling():
                self.distill_latents = {
                    "train": [inputs(cameras[i : i + 1]) for i in range(len(cameras))],
                    "renders": [inputs(renders.cameras[i : i + 1]) for i in range(len(renders.cameras))],
                }
        return self.distill_latents

    @property
    def num_distill_renders(self) -> int:
        count = self.config.num_distill_renders
        return self.schedule.distill_renders() if count is None else count

    def ensure_distill_renders(self) -> DistillRenders:
        """Make (or reload) the phase-C renders once, at the first phase-C step of this process."""
        if self.distill_renders is None:
            model = self.relsnerf_model
            renders = DistillRenders(
                self.datamanager.train_dataset.cameras,
                self.num_distill_renders,
                self.config.distill_render_seed,
                self.config.distill_render_dir,
                nerf_fingerprint=self.nerf_fingerprint(),
            )
            was_training = model.training
            model.eval()
            render = lambda camera: model.render_rgb_nerf(camera.to(self.device))  # noqa: E731
            if not self.distributed:
                renders.build(render)
            else:
                self._build_distill_renders_shared(renders, render)
            model.train(was_training)
            self.distill_renders = renders
        return self.distill_renders

    def _build_distill_renders_shared(self, renders: DistillRenders, render) -> None:
        """Several ranks: each render is made once, by one rank (rank r makes those whose index is r modulo the
        number of ranks), and every rank ends with all of them. Rank 0 first checks the directory (stale files out,
        manifest written) alone; the ranks then render their shares into it and read back the others' files. Without
        a directory the shares are exchanged as objects. The NeRF is the same on all ranks (DDP keeps it so)."""
        world, rank = dist.get_world_size(), dist.get_rank()
        if renders.directory is None:
            mine = renders.render_share(render, lambda index: index % world == rank)
            shares: List[Any] = [None] * world
            dist.all_gather_object(shares, mine)
            merged: Dict[int, torch.Tensor] = {}
            for share in shares:
                merged.update(share)
            renders.images = [merged[index] for index in range(len(renders.cameras))]
            return
        if rank == 0:
            renders.build(render, share=lambda index: False)  # check, clean and report only
        self.barrier()
        renders.build(render, share=lambda index: index % world == rank, report=False)
        self.barrier()
        renders.build(render, share=lambda index: False, report=False)  # every render is on disk now: read them
        if any(image.numel() == 0 for image in renders.images):
            raise RuntimeError(f"phase C renders missing in {renders.directory} after every rank made its share")

    def nerf_fingerprint(self) -> float:
        """Sum of |w| over the colour NeRF (proposal networks and fields): which NeRF phase C's renders came from."""
        groups = self.relsnerf_model.get_param_groups()
        parameters = [p for name in ("proposal_networks", "fields") for p in groups[name]]
        return float(sum(float(p.detach().double().abs().sum()) for p in parameters))

    # ------------------------------------------------------------------ callbacks and evaluation
    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        """nerfacto's callbacks (proposal annealing, update schedule) count steps from the start of phase B."""
        callbacks = self.datamanager.get_training_callbacks(training_callback_attributes)
        start = self.schedule.start_of(Phase.JOINT)
        for callback in self.model.get_training_callbacks(training_callback_attributes):
            callback.func = _shift_steps(callback.func, start)
            callbacks.append(callback)
        return callbacks

    @torch.no_grad()
    def get_average_image_metrics(
        self,
        data_loader,
        image_prefix: str,
        step: Optional[int] = None,
        output_path: Optional[Path] = None,
        get_std: bool = False,
    ) -> Dict[str, float]:
        """Held-out quality and speed of the decoded output and of the RGB-NeRF (one ray per pixel), side by side.

        Each frame is rendered both ways, each render timed on its own (device-synchronised) at the evaluation
        resolution. Keys: psnr, ssim, flip (mean LDR-FLIP error), lpips (when available), ms_per_frame, fps for the
        decoded output, the same with the suffix `_rgb_nerf` for the RGB-NeRF, and `speedup_over_rgb_nerf`. `ns-eval`
        writes them to its JSON.
        """
        model = self.relsnerf_model
        self.eval()
        if output_path is not None:
            output_path.mkdir(exist_ok=True, parents=True)
        per_frame: List[Dict[str, float]] = []
        renders = {DECODED: model.render_decoded_outputs, "rgb_nerf": model.render_rgb_nerf_outputs}
        description = "[green]Evaluating all images (decoded and RGB-NeRF)..."
        for view in held_out_views(data_loader, renders, self.device, description):
            outputs, full = view.outputs[DECODED], view.outputs["rgb_nerf"]
            outputs.update(rgb_nerf=full["rgb"], depth=full["depth"], accumulation=full["accumulation"])
            metrics, images = model.get_image_metrics_and_images(outputs, view.batch)
            metrics["ms_per_frame"] = 1000.0 * view.seconds[DECODED]
            metrics["ms_per_frame_rgb_nerf"] = 1000.0 * view.seconds["rgb_nerf"]
            metrics["eval_width"], metrics["eval_height"] = float(view.camera.width[0]), float(view.camera.height[0])
            per_frame.append(metrics)
            if output_path is not None:
                for key, image in images.items():
                    write_png(output_path / f"{image_prefix}_{key}_{view.index:04d}.png", image)
        self.train()
        if not per_frame:
            raise ValueError("the evaluation split has no images; nothing to evaluate")
        result = average_metrics(per_frame, get_std)
        print_side_by_side(result)
        return result

    # ------------------------------------------------------------------ checkpoints
    def load_pipeline(self, loaded_state: Dict[str, Any], step: int) -> None:
        """Load strictly: a checkpoint of another method or autoencoder is an error, never a partial load."""
        state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in loaded_state.items()}
        self.model.update_to_step(step)
        self.load_state_dict(state, strict=True)
        # What the viewer shows for a loaded run (ns-viewer) until training, if any, moves on.
        phase = self.schedule.phase_at(step)
        done = step + 1 >= self.schedule.total_steps
        self.relsnerf_model.viewer_phase.value = (
            f"{phase.title} (finished at step {step})" if done else f"{phase.title} (checkpoint at step {step})"
        )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: Optional[bool] = True):
        """Strict, and checked before anything is copied: a mismatch raises CheckpointMismatchError naming both
        configurations (nerfstudio's pipeline would retry non-strictly, a silent partial load)."""
        # Checkpoints of nerfstudio's own DDP runs name the model's tensors `_model.module.*`.
        state_dict = {
            ("_model." + k[len("_model.module.") :] if k.startswith("_model.module.") else k): v
            for k, v in state_dict.items()
        }
        model_state = {k[len("_model.") :]: v for k, v in state_dict.items() if k.startswith("_model.")}
        own = self.model.state_dict()
        guidance = [k for k in own if k.startswith(GUIDANCE_PREFIX)]
        if guidance and not any(k.startswith(GUIDANCE_PREFIX) for k in model_state):
            # Trained before decoder guidance existed: its untrained adapter (zero output) decodes exactly as that
            # run's decoder did, so the run loads and renders as it was trained.
            CONSOLE.print(
                "The checkpoint was trained without decoder guidance; it decodes the latent map alone, as it was "
                "trained (its guidance adapter stays at zero)."
            )
            self.loaded_without_guidance = True
            state_dict = dict(state_dict)
            for key in guidance:
                model_state[key] = own[key]
                state_dict["_model." + key] = own[key]
        if any(k.startswith(GUIDANCE_PREFIX + "refiner.") for k in own) and upgrade_earlier_refiner(
            model_state, GUIDANCE_PREFIX
        ):
            CONSOLE.print(
                "The checkpoint's surface-guidance refiner has the earlier layout (two convolutions over the surface "
                "colours): loaded into the current one, which computes the same correction."
            )
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("_model.")}
            state_dict.update({"_model." + k: v for k, v in model_state.items()})
        missing = sorted(set(own) - set(model_state))
        unexpected = sorted(set(model_state) - set(own))
        shapes = [
            k for k in set(own) & set(model_state) if hasattr(own[k], "shape") and own[k].shape != model_state[k].shape
        ]
        trained, configured = model_state.get("_extra_state"), self.relsnerf_model.identity()
        if missing or unexpected or shapes or (isinstance(trained, dict) and trained != configured):
            raise CheckpointMismatchError(
                describe_checkpoint_mismatch(trained, configured, missing, unexpected, shapes)
            )
        return super().load_state_dict(state_dict, strict=True)

    # ------------------------------------------------------------------ resuming
    def resume_state(self) -> Dict[str, Any]:
        """In-memory counters that a checkpoint must carry for a resumed run to continue exactly.

        nerfacto's proposal sampler counts steps since its networks were last updated (it updates them every few
        steps once warmed up); neither counter is a module buffer, so neither is in the state dict.
        """
        sampler = self.relsnerf_model.proposal_sampler
        return {
            "proposal_sampler_step": int(sampler._step),
            "proposal_steps_since_update": int(sampler._steps_since_update),
        }

    def load_resume_state(self, state: Mapping[str, Any]) -> None:
        sampler = self.relsnerf_model.proposal_sampler
        sampler._step = int(state.get("proposal_sampler_step", sampler._step))
        sampler._steps_since_update = int(state.get("proposal_steps_since_update", sampler._steps_since_update))


def average_metrics(per_frame: List[Dict[str, float]], get_std: bool = False) -> Dict[str, float]:
    """Means (and standard deviations) over frames; frames per second from the mean time, not the mean of rates."""
    result: Dict[str, float] = {}
    for key in per_frame[0]:
        values = torch.tensor([frame[key] for frame in per_frame], dtype=torch.float64)
        result[key] = float(values.mean())
        if get_std and not key.startswith("eval_"):
            result[f"{key}_std"] = float(values.std()) if len(values) > 1 else 0.0
    result["fps"] = 1000.0 / result["ms_per_frame"]
    result["fps_rgb_nerf"] = 1000.0 / result["ms_per_frame_rgb_nerf"]
    result["speedup_over_rgb_nerf"] = result["ms_per_frame_rgb_nerf"] / result["ms_per_frame"]
    return result


def print_side_by_side(metrics: Dict[str, float]) -> None:
    """A table of the decoded output next to the RGB-NeRF output."""
    table = Table(title="ReLS-NeRF held-out evaluation", show_lines=False)
    table.add_column("metric")
    table.add_column("decoded")
    table.add_column("RGB-NeRF")
    rows = (("psnr", "{:.2f}"), ("ssim", "{:.4f}"), ("flip", "{:.4f}"), ("lpips", "{:.4f}"), ("ms_per_frame", "{:.1f}"))
    for name, fmt in rows:
        decoded, rgb_nerf = metrics.get(name), metrics.get(f"{name}_rgb_nerf")
        table.add_row(
            name,
            "n/a" if decoded is None else fmt.format(decoded),
            "n/a" if rgb_nerf is None else fmt.format(rgb_nerf),
        )
    table.add_row("fps", f"{metrics['fps']:.2f}", f"{metrics['fps_rgb_nerf']:.2f}")
    width, height = int(metrics["eval_width"]), int(metrics["eval_height"])
    CONSOLE.print(table)
    CONSOLE.print(
        f"decoded output renders {metrics['speedup_over_rgb_nerf']:.1f}x faster than the RGB-NeRF at {width}x{height}"
    )


def _shift_steps(func, start: int):
    def shifted(*args, step: int, **kwargs):
        if step >= start:
            return func(*args, step=step - start, **kwargs)
        return None

    return shifted
