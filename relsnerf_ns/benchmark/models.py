"""The models the benchmark compares, how their training configs are built, and how trained runs are loaded.

Every model is trained on the same data and split (one dataparser config) with the same NeRF budget: nerfacto trains
for as many steps as ReLS-NeRF's phase B (the phase that fits the NeRF), as in the paper's Table 2, where the RGB
NeRF has only a "(B)" fitting time.

nerfacto is nerfstudio's own `nerfacto` method config with three changes, each for a reason:

- the camera optimizer is off: with it on, training poses drift from the dataparser's, the held-out cameras are not
  aligned to them, and held-out PSNR collapses (ReLS-NeRF has it off too, as in the paper);
- nerfstudio's `VanillaDataManager` replaces its `ParallelDataManager`: the same uniform random rays (4096 per step)
  that ReLS-NeRF's phase B samples, generated in-process (no worker process to spawn), so fitting times compare;
- its model is `OfflineNerfactoModel` (nerfacto whose construction does not build torchmetrics' LPIPS, which
  downloads AlexNet and fails offline; LPIPS comes from cached weights only). The benchmark computes every model's
  metrics with `image_metrics` anyway.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Literal, Optional, Tuple

import torch
import yaml
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.nerfacto import NerfactoModelConfig
from nerfstudio.pipelines.base_pipeline import Pipeline
from nerfstudio.plugins.types import MethodSpecification
from nerfstudio.utils.eval_utils import eval_load_checkpoint

from relsnerf_ns.autoencoders import StableDiffusionVAEConfig, TinyAutoencoderConfig
from relsnerf_ns.model.offline_nerfacto import OfflineNerfactoModelConfig
from relsnerf_ns.training.phases import PhaseScheduleConfig

ModelName = Literal[
    "nerfacto",
    "relsnerf-r32",
    "relsnerf-tiny",
    "relsnerf",
    "relsnerf-r32-paper",
    "relsnerf-tiny-paper",
    "relsnerf-paper",
]
ScheduleName = Literal["paper", "short", "minimal"]
DataParserName = Literal["nerfstudio-data", "llff-data"]

MINIMAL_STEPS = (2, 6, 2)
"""A/B/C steps of the 'minimal' schedule: a smoke test (the CPU tests), not a benchmark. The other schedules are the
pipeline's phase presets ('paper', 'short'; `phases.py`)."""
MINIMAL_DISTILL_RENDERS = 3
"""Phase C's RGB-NeRF renders with the 'minimal' schedule (the others take their preset's, `phases.DISTILL_RENDERS`)."""
TAEF2_FILES = ("taef2_encoder.pth", "taef2_decoder.pth")
DEFAULT_MODELS: Tuple[ModelName, ...] = ("nerfacto", "relsnerf-r32", "relsnerf-tiny")
PAPER_RECIPE_SUFFIX = "-paper"


class BenchmarkError(RuntimeError):
    """A benchmark step cannot run; the message says what is missing and how to supply it."""


def relsnerf_method(name: str) -> MethodSpecification:
    """A registered ReLS-NeRF method (`relsnerf_config`), by its name."""
    from relsnerf_ns.relsnerf_config import relsnerf, relsnerf_r32, relsnerf_tiny

    return {"relsnerf": relsnerf, "relsnerf-r32": relsnerf_r32, "relsnerf-tiny": relsnerf_tiny}[name]


@dataclass(frozen=True)
class ModelSpec:
    name: ModelName
    kind: Literal["nerfacto", "relsnerf"]

    @property
    def recipe(self) -> Literal["relsnerf", "paper"]:
        """The model's recipe (`--pipeline.model.recipe`): '-paper' models train with the paper's exact losses and
        phase-B NeRF rate (the trainer gives the recipe's rate to the NeRF's optimizer groups)."""
        return "paper" if self.name.endswith(PAPER_RECIPE_SUFFIX) else "relsnerf"

    @property
    def method(self) -> Optional[str]:
        """The registered method the model trains ('relsnerf-r32' for 'relsnerf-r32-paper'); None for nerfacto."""
        if self.kind == "nerfacto":
            return None
        return self.name[: -len(PAPER_RECIPE_SUFFIX)] if self.recipe == "paper" else self.name

    @property
    def autoencoder(self) -> Optional[Literal["sd", "r32", "tiny"]]:
        """The short name of the method's autoencoder ('sd', 'r32', 'tiny', as the report writes it); None for
        nerfacto."""
        method = self.method
        if method is None:
            return None
        autoencoder = relsnerf_method(method).config.pipeline.model.autoencoder
        if isinstance(autoencoder, StableDiffusionVAEConfig):
            return "sd"
        return "tiny" if isinstance(autoencoder, TinyAutoencoderConfig) else "r32"

    @property
    def phases(self) -> PhaseScheduleConfig:
        """The method's phase schedule (which preset row applies: pretrained decoders 'sd', from scratch 'r32');
        nerfacto's, whose training is phase B, is the default schedule's."""
        method = self.method
        return PhaseScheduleConfig() if method is None else relsnerf_method(method).config.pipeline.phases

    @property
    def outputs(self) -> Tuple[str, ...]:
        """The outputs measured: nerfacto's 'rgb'; ReLS-NeRF's 'decoded' and its colour NeRF's 'rgb_nerf'."""
        return ("rgb",) if self.kind == "nerfacto" else ("decoded", "rgb_nerf")


MODEL_ORDER: Tuple[ModelName, ...] = (
    "nerfacto",
    "relsnerf",
    "relsnerf-paper",
    "relsnerf-r32",
    "relsnerf-r32-paper",
    "relsnerf-tiny",
    "relsnerf-tiny-paper",
)
"""Report order: the RGB NeRF first, then ReLS-NeRF as in the paper (SD, R32), then the tiny AE; each with its
paper-recipe twin when that was trained."""
MODEL_SPECS: Dict[str, ModelSpec] = {
    name: ModelSpec(name, "nerfacto" if name == "nerfacto" else "relsnerf") for name in typing.get_args(ModelName)
}


def spec(name: str) -> ModelSpec:
    if name not in MODEL_SPECS:
        raise BenchmarkError(f"unknown model {name!r}; choose from {', '.join(MODEL_SPECS)}")
    return MODEL_SPECS[name]


@dataclass(frozen=True)
class StepBudget:
    """Step counts of one schedule: phases A, B, C of ReLS-NeRF (per model) and nerfacto's steps."""

    schedule: ScheduleName
    ae_steps: Optional[int] = None
    joint_steps: Optional[int] = None
    distill_steps: Optional[int] = None

    def schedule_of(self, model: ModelSpec) -> PhaseScheduleConfig:
        """The model's phase schedule (`phases.PhaseScheduleConfig`) under this budget's preset and step counts."""
        a, b, c = MINIMAL_STEPS if self.schedule == "minimal" else (None, None, None)
        return dataclasses.replace(
            model.phases,
            preset="paper" if self.schedule == "paper" else "short",
            ae_pretrain_steps=a if self.ae_steps is None else self.ae_steps,
            joint_steps=b if self.joint_steps is None else self.joint_steps,
            distill_steps=c if self.distill_steps is None else self.distill_steps,
        )

    def steps_for(self, model: ModelSpec) -> Dict[str, int]:
        """Phase -> steps; nerfacto's whole training is phase B, as long as ReLS-NeRF's phase B."""
        try:
            a, b, c = self.schedule_of(model).steps()
        except ValueError as error:
            raise BenchmarkError(f"{error} (--ae-steps, --joint-steps, --distill-steps)") from None
        return {"B": b} if model.kind == "nerfacto" else {"A": a, "B": b, "C": c}

    def describe(self, models) -> str:
        parts = []
        for model in models:
            steps = self.steps_for(model)
            parts.append(f"{model.name} " + "/".join(f"{k}={v}" for k, v in steps.items()))
        return f"{self.schedule} ({'; '.join(parts)})"


def make_dataparser(name: DataParserName, data: Path, downscale_factor: Optional[int]) -> DataParserConfig:
    """The dataparser config shared by every model (so every model sees the same images and split)."""
    if name == "nerfstudio-data":
        from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

        config: DataParserConfig = NerfstudioDataParserConfig(data=data)
    elif name == "llff-data":
        try:  # imported here: the LLFF parser is optional for nerfstudio-data scenes
            from relsnerf_ns.data.llff_dataparser import LLFFDataParserConfig
        except ImportError as error:
            raise BenchmarkError(f"the llff-data dataparser cannot be imported: {error}") from error
        config = LLFFDataParserConfig(data=data)
    else:
        raise BenchmarkError(f"unknown dataparser {name!r}; choose nerfstudio-data or llff-data")
    if downscale_factor is not None:
        config.downscale_factor = downscale_factor  # type: ignore[attr-defined]
    return config


@dataclass(frozen=True)
class ModelBuild:
    """What a model's training config needs beyond the method defaults."""

    dataparser: DataParserConfig
    budget: StepBudget
    output_dir: Path
    """The benchmark's runs/ folder; each model trains in runs/<name>/<method>/bench/."""
    device: Literal["cuda", "cpu"]
    mixed_precision: bool
    seed: int
    taef2_weights: Path
    sd_vae_weights: Optional[Path]
    num_distill_renders: Optional[int]
    steps_per_save: int = 1000


def model_choices(config: TrainerConfig) -> Dict[str, object]:
    """What a ReLS-NeRF config trains with after its recipe (losses, decoder input): part of a run's recorded
    settings, so that a run cached with other defaults is trained again. Empty for nerfacto."""
    model = config.pipeline.model
    if not hasattr(model, "decoder_guidance_kind"):
        return {}
    return {
        "recipe": model.recipe,
        "depth_loss_mult": model.depth_loss_weight(),
        "latent_loss_mult": model.latent_loss_weight(),
        "latent_target_offsets": model.latent_target_offsets,
        "decoder_guidance": model.decoder_guidance_kind(),
    }


def build_config(model: ModelSpec, build: ModelBuild) -> TrainerConfig:
    """The nerfstudio trainer config of one model (a deep copy of its method config, changed for the benchmark)."""
    if model.kind == "nerfacto":
        config = _nerfacto_config(build)
    else:
        config = _relsnerf_config(model, build)
    data = getattr(build.dataparser, "data", None)
    config.data = data
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.dataparser = copy.deepcopy(build.dataparser)
    config.machine.device_type = build.device
    config.machine.seed = build.seed
    config.mixed_precision = build.mixed_precision
    # The benchmark measures quality itself after training; nerfstudio's periodic evaluations would only slow the
    # fitting that is being timed. The viewer is off (tensorboard logs only); the console shows our progress bar.
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
    config.steps_per_save = build.steps_per_save
    config.save_only_latest_checkpoint = True
    config.vis = "tensorboard"
    config.logging.local_writer.enable = False
    config.output_dir = build.output_dir
    config.experiment_name = model.name
    config.timestamp = "bench"
    return config


def _nerfacto_config(build: ModelBuild) -> TrainerConfig:
    from nerfstudio.configs.method_configs import method_configs

    from relsnerf_ns.model.relsnerf_field import resolve_implementation

    config = copy.deepcopy(method_configs["nerfacto"])
    config.max_num_iterations = build.budget.steps_for(MODEL_SPECS["nerfacto"])["B"]
    previous = config.pipeline.datamanager
    config.pipeline.datamanager = VanillaDataManagerConfig(
        train_num_rays_per_batch=previous.train_num_rays_per_batch,
        eval_num_rays_per_batch=previous.eval_num_rays_per_batch,
    )
    config.pipeline.model = OfflineNerfactoModelConfig.of(config.pipeline.model)
    config.pipeline.model.camera_optimizer.mode = "off"
    # The same hash grid / MLP implementation as ReLS-NeRF's "auto" (tinycudann on a GPU when installed).
    config.pipeline.model.implementation = resolve_implementation("auto")
    return config


def _relsnerf_config(model: ModelSpec, build: ModelBuild) -> TrainerConfig:
    assert model.method is not None
    config = copy.deepcopy(relsnerf_method(model.method).config)
    config.pipeline.model.recipe = model.recipe
    build.budget.steps_for(model)  # a clear BenchmarkError for impossible step counts
    config.pipeline.phases = build.budget.schedule_of(model)
    config.max_num_iterations = config.pipeline.phases.total_steps
    renders = build.num_distill_renders
    if renders is None and build.budget.schedule == "minimal":
        renders = MINIMAL_DISTILL_RENDERS
    if renders is not None:
        config.pipeline.num_distill_renders = renders
    autoencoder = config.pipeline.model.autoencoder
    if isinstance(autoencoder, TinyAutoencoderConfig):
        autoencoder.encoder_weights = build.taef2_weights / TAEF2_FILES[0]
        autoencoder.decoder_weights = build.taef2_weights / TAEF2_FILES[1]
    elif isinstance(autoencoder, StableDiffusionVAEConfig) and build.sd_vae_weights is not None:
        autoencoder.pretrained = str(build.sd_vae_weights)
    return config


def check_weights(model: ModelSpec, config: TrainerConfig) -> None:
    """Fail before any training when a pretrained autoencoder's files are missing (naming them and the fix)."""
    autoencoder = getattr(config.pipeline.model, "autoencoder", None)
    if isinstance(autoencoder, TinyAutoencoderConfig) and autoencoder.init == "pretrained":
        missing = [p for p in (autoencoder.encoder_weights, autoencoder.decoder_weights) if not Path(p).is_file()]
        if missing:
            folder = Path(autoencoder.encoder_weights).parent
            raise BenchmarkError(
                f"{model.name} needs the TAEF2 weights, but {', '.join(str(p) for p in missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing. Pass --taef2-weights DIR, a folder holding "
                f"{' and '.join(TAEF2_FILES)} (now: {folder}; the files come from github.com/madebyollin/taesd), "
                f"or leave {model.name} out of --models."
            )
    if isinstance(autoencoder, StableDiffusionVAEConfig) and autoencoder.init == "pretrained":
        path = Path(autoencoder.pretrained)
        if not path.is_dir():
            raise BenchmarkError(
                f"{model.name} (SD-VAE) needs a local diffusers folder of the Stable Diffusion VAE (with "
                f"config.json and the weights, e.g. a download of stabilityai/sd-vae-ft-mse), but {path} is not a "
                "folder. Pass it with --sd-vae-weights DIR, or leave relsnerf out of --models."
            )


# ---------------------------------------------------------------------- loading trained runs
@contextlib.contextmanager
def nerfstudio_checkpoint_globals() -> Iterator[None]:
    """Let `torch.load` (weights_only, the default since torch 2.6) read nerfstudio's own checkpoints.

    nerfstudio's Trainer saves its schedulers' state, whose learning rates are numpy scalars; torch's safe unpickler
    refuses those unless allow-listed. Only numpy scalar and dtype types are added: still no arbitrary code.
    """
    import numpy as np

    allowed: list = [np.dtype] + [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        with contextlib.suppress(ImportError, AttributeError):
            allowed.append(getattr(__import__(module, fromlist=["scalar"]), "scalar"))
    with torch.serialization.safe_globals(allowed):
        yield


def load_config(config_path: Path) -> TrainerConfig:
    config = yaml.load(Path(config_path).read_text(), Loader=yaml.Loader)
    if not isinstance(config, TrainerConfig):
        raise BenchmarkError(f"{config_path} does not hold a nerfstudio trainer config")
    if type(config.pipeline.model) is NerfactoModelConfig:  # runs of earlier versions: the same model, offline
        config.pipeline.model = OfflineNerfactoModelConfig.of(config.pipeline.model)
    return config


def load_trained(
    config_path: Path, device: str, test_mode: Literal["test", "val", "inference"] = "test"
) -> Tuple[TrainerConfig, Pipeline, int]:
    """A trained run's pipeline in eval mode on `device`, with its latest checkpoint (nerfstudio's eval_setup,
    except that the device is ours and the checkpoint folder is found next to config.yml, so a moved benchmark
    folder still loads; the datamanager is the one the run was trained with)."""
    config = load_config(config_path)
    config.load_dir = Path(config_path).parent / config.relative_model_dir
    if not config.load_dir.is_dir() or not any(config.load_dir.glob("step-*.ckpt")):
        raise BenchmarkError(f"no checkpoint in {config.load_dir}: train the model first (relsnerf-bench train)")
    config.load_step = None
    data = getattr(config.pipeline.datamanager.dataparser, "data", None)
    if data is not None and not Path(data).exists():
        raise BenchmarkError(f"the run {config_path} was trained on {data}, which does not exist here")
    pipeline = config.pipeline.setup(device=device, test_mode=test_mode)
    pipeline.eval()
    with nerfstudio_checkpoint_globals():
        _, step = eval_load_checkpoint(config, pipeline)
    return config, pipeline, step
