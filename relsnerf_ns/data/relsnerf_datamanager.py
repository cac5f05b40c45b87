"""DataManager for ReLS-NeRF: random rays (as nerfacto), latent patches, autoencoder crops and sparse-depth rays.

Phase A asks for image crops; phase B for 4096 random rays plus one latent patch (the rays through the centres of a
32x32 grid of 8x8 pixel blocks with the matching 256x256 image patch) plus, when the dataparser gives sparse depth,
4096 rays through sparse points; phase C crops real images and the latent maps of their cameras (`aligned_crop`).

Awkward input is handled at start-up (`setup_train`): unreadable images are named in one error, any pixel format is
read as RGB or RGBA (`image_files.py`), patches and crops shrink once, with one message, to fit the smallest image
(images of any size, different sizes in one scene included: each patch is cut from one image with its own camera's
rays), and images too small for a 2x2 latent patch are named. RGBA crops are blended with the model's background
colour, as nerfacto blends its colour targets. A scene file the dataparser cannot parse (a truncated transforms.json)
is named with the position of the error. A split that holds no image out (nerfstudio-data's default below 10 images)
is said at start-up with the flags that change it; ns-eval then says there is nothing to evaluate, and ns-render's
spiral and interpolate use the training cameras.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple, Type, Union

import torch
import tyro
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import (
    VanillaDataManager,
    VanillaDataManagerConfig,
    variable_res_collate,
)
from nerfstudio.utils import colors
from nerfstudio.utils.misc import get_dict_to_torch
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from relsnerf_ns.data.image_files import HOW_TO_FIX, ImageFileError, ImageInfo, RelsNerfInputDataset
from relsnerf_ns.data.metadata_keys import SPARSE_DEPTH_KEY
from relsnerf_ns.known_warnings import silence_known_warnings
from relsnerf_ns.rendering.latent_rays import latent_ray_bundle


@dataclass
class ImagePatch:
    """A square crop of one image and the latent rays through its 8x8 blocks."""

    camera_index: int
    top: int
    left: int
    size: int
    image: Float[Tensor, "3 size size"]
    ray_bundle: RayBundle  # [size/8, size/8]

    @property
    def latent_size(self) -> int:
        return self.size // 8


MIN_PATCH = 16
"""Smallest patch or crop side in pixels: 2x2 latent pixels (R32's instance norms need more than one latent pixel)."""


class ImageSizeError(ValueError):
    """Images too small for ReLS-NeRF's latent patches; the message names them."""


class SceneFileError(ValueError):
    """A scene file the dataparser cannot parse (e.g. a truncated transforms.json); the message names it and where."""


class NoEvaluationImagesError(ValueError):
    """The split holds no image out, so there is nothing to evaluate; the message says how to hold some out."""


def largest_patch(requested: int, images: List[Tensor]) -> int:
    """The requested patch side, shrunk to fit the smallest image, in multiples of 8."""
    smallest = min(min(int(image.shape[0]), int(image.shape[1])) for image in images)
    size = min(requested, smallest) // 8 * 8
    if size < MIN_PATCH:
        raise ImageSizeError(
            f"images must be at least {MIN_PATCH}x{MIN_PATCH} pixels to hold a 2x2 latent patch; the smallest side is "
            f"{smallest}"
        )
    return size


def blend_alpha(
    pixels: Float[Tensor, "*batch C"], background: Optional[Float[Tensor, "3"]] = None
) -> Float[Tensor, "*batch 3"]:
    """RGB of RGB or RGBA pixels, RGBA composited over `background` (black when None), as nerfacto's targets."""
    if pixels.shape[-1] < 4:
        return pixels[..., :3]
    colour = torch.zeros(3) if background is None else background
    alpha = pixels[..., 3:4]
    return pixels[..., :3] * alpha + colour.to(pixels) * (1.0 - alpha)


def random_patch(
    cameras: Cameras,
    images: List[Tensor],
    size: int,
    index: Optional[int] = None,
    with_rays: bool = True,
    background: Optional[Tensor] = None,
) -> ImagePatch:
    """A random size x size crop (channels first, RGBA blended over `background`) of a random (or given) image and
    its latent rays. The crop lies inside that image whatever its size; the rays are that image's camera's."""
    if index is None:
        index = int(torch.randint(len(images), (1,)))
    image = images[index]
    height, width = int(image.shape[0]), int(image.shape[1])
    top = int(torch.randint(height - size + 1, (1,)))
    left = int(torch.randint(width - size + 1, (1,)))
    crop = blend_alpha(image[top : top + size, left : left + size], background).permute(2, 0, 1)
    bundle = latent_ray_bundle(cameras, index, top, left, size // 8, size // 8) if with_rays else None
    return ImagePatch(index, top, left, size, crop, bundle)  # type: ignore[arg-type]


def aligned_crop(
    image: Float[Tensor, "H W C"],
    latent: Float[Tensor, "rows cols n"],
    size: int,
    background: Optional[Tensor] = None,
) -> Tuple[Float[Tensor, "3 size size"], Float[Tensor, "size/8 size/8 n"]]:
    """A random size x size crop of an image (channels first, RGBA blended) and of its latent map, starting at a
    multiple of 8 pixels: the latent pixels of the crop are those of the whole frame, as inference renders them."""
    height, width = int(image.shape[0]), int(image.shape[1])
    top = 8 * int(torch.randint((height - size) // 8 + 1, (1,)))
    left = 8 * int(torch.randint((width - size) // 8 + 1, (1,)))
    crop = blend_alpha(image[top : top + size, left : left + size], background).permute(2, 0, 1)
    n = size // 8
    return crop, latent[top // 8 : top // 8 + n, left // 8 : left // 8 + n]


def describe_json_error(error: json.JSONDecodeError, data: Optional[Path]) -> str:
    """Which file a dataparser failed to parse, where, and what is there (json's own message names no file)."""
    path = _json_file_in_traceback(error) or _scene_json(data)
    where = f"line {error.lineno}, column {error.colno} (character {error.pos})"
    if error.pos >= len(error.doc.rstrip()):
        found = "the file ends there: it is truncated"
    else:
        line = error.doc.splitlines()[error.lineno - 1] if error.doc else ""
        found = f"the line reads {line.strip()[:80]!r}"
    return (
        f"{path if path is not None else 'a scene file'} is not valid JSON: {error.msg} at {where}; {found}. Restore "
        "the file from a copy or write it again (for nerfstudio-data scenes ns-process-data writes transforms.json)."
    )


def _json_file_in_traceback(error: BaseException) -> Optional[Path]:
    """The JSON file being read where `error` was raised: the innermost frame holding an open .json file (json.load's
    argument), else a path to an existing .json file (e.g. nerfstudio's `load_from_json(filename)`)."""
    frames = []
    traceback = error.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    for want_file in (True, False):
        for frame in reversed(frames):
            for value in frame.f_locals.values():
                if want_file and hasattr(value, "read") and str(getattr(value, "name", "")).endswith(".json"):
                    return Path(value.name)
                if not want_file and isinstance(value, (Path, str)) and str(value).endswith(".json"):
                    if len(str(value)) < 4096 and os.path.isfile(value):
                        return Path(value)
    return None


def _scene_json(data: Optional[Path]) -> Optional[Path]:
    if data is None:
        return None
    data = Path(data)
    if data.suffix == ".json":
        return data
    return data / "transforms.json" if (data / "transforms.json").is_file() else None


def describe_empty_split(dataparser: Any, num_images: int) -> Tuple[str, str]:
    """Why the dataparser's split holds no image out, and how to hold some out (flags after its sub-command)."""
    command = _dataparser_command(dataparser)
    mode = getattr(dataparser, "eval_mode", None)
    if mode == "fraction":
        fraction = float(getattr(dataparser, "train_split_fraction", 0.9))
        # nerfstudio trains on ceil(n * fraction) of n images: the first n that leaves one for evaluation.
        first = next((n for n in range(2, 100_000) if math.ceil(n * fraction) < n), None)
        why = f"--eval-mode fraction trains on ceil({fraction:g} x {num_images}) = all {num_images} images" + (
            f"; this fraction holds one out from {first} images on" if first is not None else ""
        )
    elif mode is not None:
        why = f"--eval-mode {mode} leaves no image for evaluation"
    else:
        why = "the dataparser gives no evaluation image"
    if num_images < 2:
        how = "add views (a scene of one image cannot hold one out)"
    elif mode is not None:
        interval = min(8, num_images)
        how = f"hold images out with e.g. `{command} --eval-mode interval --eval-interval {interval}` (images 0, " + (
            f"{interval}, {2 * interval}, ...)"
            + (
                f" or `{command} --train-split-fraction {math.floor(100 * (num_images - 1) / num_images) / 100:g}`"
                if mode == "fraction"
                else ""
            )
        )
    else:
        how = f"hold images out with the split options of `{command} --help`"
    return why, how


def _dataparser_command(dataparser: Any) -> str:
    """The ns-train sub-command of a dataparser configuration ('nerfstudio-data', 'llff-data', ...)."""
    from nerfstudio.configs.dataparser_configs import all_dataparsers

    for name, config in all_dataparsers.items():
        if type(config) is type(dataparser):
            return name
    return "the dataparser"


class NoHeldOutImages:
    """Stands in for nerfstudio's evaluation loaders when the split holds no image out.

    `get_camera(i)` gives training camera i (what `ns-render spiral` starts from); iterating (ns-eval, evaluation
    during training) raises NoEvaluationImagesError, so training images are never reported as held-out results.
    """

    def __init__(self, train_dataset: RelsNerfInputDataset, device: Union[torch.device, str], message: str) -> None:
        self.input_dataset = train_dataset
        self.cameras = train_dataset.cameras
        self.device = device
        self.message = message

    def get_camera(self, image_idx: int = 0) -> Tuple[Cameras, Dict]:
        camera = self.cameras[image_idx : image_idx + 1].to(self.device)
        batch = get_dict_to_torch(self.input_dataset[image_idx], device=self.device, exclude=["image"])
        return camera, batch  # type: ignore[return-value]

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator:
        raise NoEvaluationImagesError(self.message)

    def __next__(self) -> Any:
        raise NoEvaluationImagesError(self.message)


@dataclass
class RelsNerfDataManagerConfig(VanillaDataManagerConfig):
    """Rays, latent patches, autoencoder crops and sparse-depth rays for the three phases."""

    _target: Type = field(default_factory=lambda: RelsNerfDataManager)
    train_num_rays_per_batch: int = 4096
    """Random rays per phase-B step for the colour loss (paper: 4096)."""
    eval_num_rays_per_batch: int = 4096
    """Random rays per evaluation batch."""
    latent_patch_size: int = 32
    """Side of the phase-B latent patch in latent pixels (32 -> a 256x256 image patch); shrinks for small images."""
    latent_patches_per_step: int = 1
    """Latent patches per phase-B step (paper: 1), each from a random training image. L_p, through the decoder, is
    the loss that makes the latent maps decode sharply; each patch adds latent_patch_size^2 latent rays to the
    step's ray pass and one crop to the decoder's batch."""
    depth_rays_per_batch: int = 4096
    """Rays through sparse points per phase-B step for the DS-NeRF loss (paper: 4096) when the model's depth loss is
    on (--pipeline.model.depth-loss-mult); 0 turns the loss off."""
    depth_loss_off_reason: tyro.conf.Suppress[Optional[str]] = None
    """Set by the pipeline when the model's depth-loss weight is 0: why no depth rays are drawn (said once)."""
    ae_crop_size: int = 512
    """Side of the phase-A image crops (paper: 512); shrinks to fit small images."""
    ae_batch_size: int = 5
    """Crops per phase-A step (paper: 3 for SD-VAE, 5 for R32)."""
    distill_crop_size: int = 512
    """Side of the phase-C crops of real images and RGB-NeRF renders (bounds decoder memory at full resolution)."""
    images_on_gpu: bool = True
    """Keep the training images on the training device (nerfstudio's flag; its default is False). Every phase-B
    step samples pixels and cuts a patch from them: on the host, each step's copies to the GPU wait for the GPU's
    queued work, so the host cannot run ahead. Costs 12 bytes per pixel of device memory (fern at 1008x756: 155 MB
    for 20 images); turn it off for captures that do not fit."""


class RelsNerfDataManager(VanillaDataManager):
    """VanillaDataManager plus the patch and crop batches that ReLS-NeRF's phases need."""

    config: RelsNerfDataManagerConfig
    train_dataset: RelsNerfInputDataset
    eval_dataset: RelsNerfInputDataset

    def __init__(self, config: RelsNerfDataManagerConfig, *args, **kwargs) -> None:
        silence_known_warnings()  # ns-eval / ns-render / ns-viewer set up no trainer: the earliest plugin code
        self.alpha_background: Tensor = torch.zeros(3)
        """Colour RGBA crops are blended over (the pipeline sets the model's, see `set_alpha_background`)."""
        self.held_out_note: Optional[str] = None
        """Set when the split holds no image out (said once at start-up, with the dataparser flags that change it)."""
        try:
            super().__init__(config, *args, **kwargs)
        except json.JSONDecodeError as error:
            raise SceneFileError(describe_json_error(error, self.config.dataparser.data)) from None
        except (FileNotFoundError, UnidentifiedImageError) as error:
            # A dataparser opening an image itself (nerfstudio-data reads the first one to pick a downscale factor).
            if isinstance(error, FileNotFoundError) and (
                error.filename is None or Path(str(error.filename)).suffix.lower() not in Image.registered_extensions()
            ):
                raise  # not an image (transforms.json, a scene folder): the dataparser's own message says it
            raise ImageFileError(f"the dataparser cannot read an image: {error}. {HOW_TO_FIX}") from error
        if len(self.eval_dataset) == 0 and len(self.train_dataset) > 0:
            self._without_held_out_images()

    def _without_held_out_images(self) -> None:
        """Say so once, and stand in for the evaluation loaders nerfstudio does not create for an empty split.

        nerfstudio's commands read the evaluation split for more than evaluation: `ns-render spiral` starts at its
        first camera, `ns-render interpolate` goes through its cameras. Those use the training cameras here; anything
        that would evaluate (ns-eval, evaluation during training) raises NoEvaluationImagesError instead.
        """
        why, how = describe_empty_split(self.config.dataparser, len(self.train_dataset))
        self.held_out_note = f"Nothing is held out for evaluation ({why}): ns-eval will have nothing to evaluate."
        if self.test_mode != "inference":
            CONSOLE.print(
                f"[yellow]{self.held_out_note} To evaluate, {how}. ns-render spiral and interpolate use the training "
                "cameras."
            )
        self.eval_dataset.cameras = self.train_dataset.cameras
        stand_in = NoHeldOutImages(
            self.train_dataset,
            self.device,
            f"Nothing to evaluate: this run held no image out for evaluation ({why}). To evaluate, train again and "
            f"{how}.",
        )
        self.eval_dataloader = self.fixed_indices_eval_dataloader = self.iter_eval_image_dataloader = stand_in

    def create_train_dataset(self) -> RelsNerfInputDataset:
        return RelsNerfInputDataset(self.train_dataparser_outputs, scale_factor=self.config.camera_res_scale_factor)

    def create_eval_dataset(self) -> RelsNerfInputDataset:
        return RelsNerfInputDataset(
            self.dataparser.get_dataparser_outputs(split=self.test_split),
            scale_factor=self.config.camera_res_scale_factor,
        )

    def set_alpha_background(self, background_color: Union[Literal["random", "last_sample", "black", "white"], Tensor]):
        """Blend RGBA crops as the model's `blend_background` blends colour targets: over its fixed background colour,
        over black for 'last_sample' and 'random' (a decoded patch has no accumulation to blend a random colour with,
        and evaluation compares with black-blended images too)."""
        if isinstance(background_color, Tensor):
            self.alpha_background = background_color.detach().float().cpu()
        elif background_color in colors.COLORS_DICT:
            self.alpha_background = colors.COLORS_DICT[background_color].float().clone()
        else:
            self.alpha_background = torch.zeros(3)

    def _check_config(self) -> None:
        """Settings the patch batches cannot work with, named by their command-line flags."""
        config = self.config
        prefix = "--pipeline.datamanager."
        for flag, value, minimum in (
            ("latent-patch-size", config.latent_patch_size, MIN_PATCH // 8),
            ("ae-crop-size", config.ae_crop_size, MIN_PATCH),
            ("distill-crop-size", config.distill_crop_size, MIN_PATCH),
            ("ae-batch-size", config.ae_batch_size, 1),
            ("latent-patches-per-step", config.latent_patches_per_step, 1),
        ):
            if value < minimum:
                raise ValueError(f"{prefix}{flag} must be at least {minimum}, got {value}")
        sampled = config.train_num_images_to_sample_from
        if sampled != -1 and sampled < len(self.train_dataset):
            raise ValueError(
                f"{prefix}train-num-images-to-sample-from {sampled}: ReLS-NeRF cuts its latent patches and crops from "
                f"every training image, so it keeps all {len(self.train_dataset)} in memory; leave it at -1."
            )

    def setup_train(self) -> None:
        self._check_config()
        self._use_sizes(self.train_dataset.check_images("training"))  # unreadable files named now, before caching
        super().setup_train()
        batch = next(self.iter_train_image_dataloader)
        images = batch["image"]
        # Every image of the (cached) training set, [H, W, C] each; sizes may differ from image to image.
        self.train_images: List[Tensor] = [images[i] for i in range(len(images))]
        order = batch["image_idx"].tolist() if "image_idx" in batch else list(range(len(images)))
        self.train_images = [img for _, img in sorted(zip(order, self.train_images), key=lambda pair: pair[0])]
        self.train_cameras: Cameras = self.train_ray_generator.cameras
        self.patch_sizes = self._fit_patch_sizes()
        self.sparse_depth = self._collect_sparse_depth()

    def setup_eval(self) -> None:
        self._use_sizes(self.eval_dataset.check_images("evaluation"))
        super().setup_eval()

    def _use_sizes(self, infos: List[ImageInfo]) -> None:
        """Images of different sizes are cached as a list: nerfstudio picks that from the cameras' sizes, which may
        be equal within the one-pixel slack `check_sizes` allows while the files differ."""
        if len({(info.width, info.height) for info in infos}) > 1:
            self.config.collate_fn = variable_res_collate

    def _fit_patch_sizes(self) -> Dict[str, int]:
        """Sides of phase A's crops, phase B's latent patch and phase C's crops, shrunk (once, said once) to fit the
        smallest training image in multiples of 8; images too small for a 2x2 latent patch are an error."""
        names = [Path(p).name for p in self.train_dataset.image_filenames]
        sides = [min(int(image.shape[0]), int(image.shape[1])) for image in self.train_images]
        too_small = [f"{names[i]} ({self._size(i)})" for i, side in enumerate(sides) if side < MIN_PATCH]
        if too_small:
            raise ImageSizeError(
                f"{len(too_small)} training images are smaller than {MIN_PATCH}x{MIN_PATCH} pixels: "
                f"{', '.join(too_small[:5])}{' ...' if len(too_small) > 5 else ''}. ReLS-NeRF decodes patches of at "
                f"least 2x2 latent pixels (8x8 image pixels each); use larger images or remove these from the scene."
            )
        smallest = min(range(len(sides)), key=sides.__getitem__)
        requested = {
            "ae_crop": self.config.ae_crop_size,
            "latent_patch": self.config.latent_patch_size * 8,
            "distill_crop": self.config.distill_crop_size,
        }
        sizes = {key: largest_patch(value, self.train_images) for key, value in requested.items()}
        changed = [key for key in sizes if sizes[key] != requested[key]]
        if changed:
            what = {
                "ae_crop": lambda s: f"phase-A crops {s}x{s}",
                "latent_patch": lambda s: f"phase-B latent patch {s}x{s} ({s // 8}x{s // 8} latent pixels)",
                "distill_crop": lambda s: f"phase-C crops {s}x{s}",
            }
            parts = [f"{what[key](sizes[key])} instead of {requested[key]}x{requested[key]}" for key in changed]
            CONSOLE.print(
                f"[yellow]Patches shrink to fit the smallest training image, {names[smallest]} "
                f"({self._size(smallest)}), in multiples of 8 pixels: {'; '.join(parts)}."
            )
        return sizes

    def _size(self, index: int) -> str:
        image = self.train_images[index]
        return f"{int(image.shape[1])}x{int(image.shape[0])}"

    def _collect_sparse_depth(self) -> Optional[Tuple[Tensor, Tensor]]:
        """All sparse points as (camera index, x, y, depth, weight) rows, or None (depth loss off, said once)."""
        metadata = self.train_dataparser_outputs.metadata
        per_image = metadata.get(SPARSE_DEPTH_KEY)
        if per_image is None or self.config.depth_rays_per_batch <= 0:
            if SPARSE_DEPTH_KEY in metadata and per_image is None:
                return None  # the dataparser found none and has said why
            if per_image is None:
                reason = "the dataparser gives no sparse depth"
            else:
                reason = self.config.depth_loss_off_reason or "depth_rays_per_batch is 0"
            if per_image is None and metadata.get("depth_filenames"):
                reason += " (dense depth maps, depth_file_path, are not used)"
            CONSOLE.print(f"[yellow]DS-NeRF depth loss off: {reason}.")
            return None
        scale = self.config.camera_res_scale_factor
        rows = []
        for index, points in enumerate(per_image):
            points = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 4)
            if len(points):
                rows.append(torch.cat([torch.full((len(points), 1), float(index)), points], dim=1))
        if not rows:
            CONSOLE.print("[yellow]DS-NeRF depth loss off: no training image has sparse points.")
            return None
        table = torch.cat(rows)
        table[:, 1:3] *= scale
        CONSOLE.print(f"DS-NeRF depth loss on: {len(table)} sparse points over {len(rows)} training images.")
        device = self.train_cameras.device  # drawn from every step: kept where the rays are made
        return table[:, 0].long().to(device), table[:, 1:].to(device)

    # ------------------------------------------------------------------ phase A
    def next_ae_batch(self, step: int) -> Float[Tensor, "batch 3 size size"]:
        """Random crops of training images for autoencoder pretraining."""
        size = self.patch_sizes["ae_crop"]
        crops = [
            random_patch(
                self.train_cameras, self.train_images, size, with_rays=False, background=self.alpha_background
            ).image
            for _ in range(self.config.ae_batch_size)
        ]
        return torch.stack(crops).to(self.device)

    # ------------------------------------------------------------------ phase B
    def next_latent_patch(self) -> ImagePatch:
        size = self.patch_sizes["latent_patch"]
        return random_patch(self.train_cameras, self.train_images, size, background=self.alpha_background)

    def next_depth_rays(self) -> Optional[Tuple[RayBundle, Tensor, Tensor]]:
        """Rays through random sparse points: (bundle, along-ray distance [R, 1], point weight [R, 1])."""
        if self.sparse_depth is None:
            return None
        camera_indices, points = self.sparse_depth
        chosen = torch.randint(len(points), (self.config.depth_rays_per_batch,), device=points.device)
        xy_depth_weight = points[chosen]
        coords = xy_depth_weight[:, [1, 0]]  # (y, x)
        bundle = self.train_cameras.generate_rays(camera_indices=camera_indices[chosen, None], coords=coords)
        # Sparse depth is z along the camera axis; rays are parametrised by distance, |d_unnormalised| = 1 / cos.
        distance = xy_depth_weight[:, 2:3] * bundle.metadata["directions_norm"]
        return bundle, distance, xy_depth_weight[:, 3:4]

    def next_joint(self, step: int) -> Tuple[RayBundle, Dict]:
        """Phase B: random rays with their colours, the latent patch (a list when several per step), and sparse-depth
        rays when available."""
        ray_bundle, batch = self.next_train(step)
        count = self.config.latent_patches_per_step
        batch["latent_patch"] = (
            self.next_latent_patch() if count == 1 else [self.next_latent_patch() for _ in range(count)]
        )
        depth = self.next_depth_rays()
        if depth is not None:
            batch["depth_rays"] = depth
        return ray_bundle, batch
