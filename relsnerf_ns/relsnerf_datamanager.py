"""DataManager for ReLS-NeRF: random rays (as nerfacto), latent patches, autoencoder crops and sparse-depth rays.

Phase A asks for image crops; phase B for 4096 random rays plus one latent patch (the rays through the centres of a
32x32 grid of 8x8 pixel blocks with the matching 256x256 image patch) plus, when the dataparser gives sparse depth,
4096 rays through sparse points; phase C for real-image crops with their latent rays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Type

import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from relsnerf_ns.latent_rays import latent_ray_bundle
from relsnerf_ns.metadata_keys import SPARSE_DEPTH_KEY


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


def largest_patch(requested: int, images: List[Tensor]) -> int:
    """The requested patch side, shrunk to fit the smallest image, in multiples of 8."""
    smallest = min(min(int(image.shape[0]), int(image.shape[1])) for image in images)
    size = min(requested, smallest) // 8 * 8
    if size < 8:
        raise ValueError(
            f"images must be at least 8x8 pixels to hold one latent pixel; the smallest side is {smallest}"
        )
    return size


def random_patch(
    cameras: Cameras, images: List[Tensor], size: int, index: Optional[int] = None, with_rays: bool = True
) -> ImagePatch:
    """A random size x size crop (channels first) of a random (or given) image and its latent rays."""
    if index is None:
        index = int(torch.randint(len(images), (1,)))
    image = images[index]
    height, width = int(image.shape[0]), int(image.shape[1])
    top = int(torch.randint(height - size + 1, (1,)))
    left = int(torch.randint(width - size + 1, (1,)))
    crop = image[top : top + size, left : left + size, :3].permute(2, 0, 1)
    bundle = latent_ray_bundle(cameras, index, top, left, size // 8, size // 8) if with_rays else None
    return ImagePatch(index, top, left, size, crop, bundle)  # type: ignore[arg-type]


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
    depth_rays_per_batch: int = 4096
    """Rays through sparse points per phase-B step for the DS-NeRF loss (paper: 4096); 0 turns the loss off."""
    ae_crop_size: int = 512
    """Side of the phase-A image crops (paper: 512); shrinks to fit small images."""
    ae_batch_size: int = 5
    """Crops per phase-A step (paper: 3 for SD-VAE, 5 for R32)."""
    distill_crop_size: int = 512
    """Side of the phase-C crops of real images and RGB-NeRF renders (bounds decoder memory at full resolution)."""


class RelsNerfDataManager(VanillaDataManager):
    """VanillaDataManager plus the patch and crop batches that ReLS-NeRF's phases need."""

    config: RelsNerfDataManagerConfig

    def setup_train(self) -> None:
        super().setup_train()
        batch = next(self.iter_train_image_dataloader)
        images = batch["image"]
        # Every image of the (cached) training set, [H, W, C] each; sizes may differ from image to image.
        self.train_images: List[Tensor] = [images[i] for i in range(len(images))]
        order = batch["image_idx"].tolist() if "image_idx" in batch else list(range(len(images)))
        self.train_images = [img for _, img in sorted(zip(order, self.train_images), key=lambda pair: pair[0])]
        self.train_cameras: Cameras = self.train_ray_generator.cameras
        self.sparse_depth = self._collect_sparse_depth()

    def _collect_sparse_depth(self) -> Optional[Tuple[Tensor, Tensor]]:
        """All sparse points as (camera index, x, y, depth, weight) rows, or None (depth loss off, said once)."""
        metadata = self.train_dataparser_outputs.metadata
        per_image = metadata.get(SPARSE_DEPTH_KEY)
        if per_image is None or self.config.depth_rays_per_batch <= 0:
            if SPARSE_DEPTH_KEY in metadata and per_image is None:
                return None  # the dataparser found none and has said why
            reason = "the dataparser gives no sparse depth" if per_image is None else "depth_rays_per_batch is 0"
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
        return table[:, 0].long(), table[:, 1:]

    # ------------------------------------------------------------------ phase A
    def next_ae_batch(self, step: int) -> Float[Tensor, "batch 3 size size"]:
        """Random crops of training images for autoencoder pretraining."""
        size = largest_patch(self.config.ae_crop_size, self.train_images)
        crops = [
            random_patch(self.train_cameras, self.train_images, size, with_rays=False).image
            for _ in range(self.config.ae_batch_size)
        ]
        return torch.stack(crops).to(self.device)

    # ------------------------------------------------------------------ phase B
    def next_latent_patch(self) -> ImagePatch:
        size = largest_patch(self.config.latent_patch_size * 8, self.train_images)
        return random_patch(self.train_cameras, self.train_images, size)

    def next_depth_rays(self) -> Optional[Tuple[RayBundle, Tensor, Tensor]]:
        """Rays through random sparse points: (bundle, along-ray distance [R, 1], point weight [R, 1])."""
        if self.sparse_depth is None:
            return None
        camera_indices, points = self.sparse_depth
        chosen = torch.randint(len(points), (self.config.depth_rays_per_batch,))
        xy_depth_weight = points[chosen].to(self.train_cameras.device)
        coords = xy_depth_weight[:, [1, 0]]  # (y, x)
        bundle = self.train_cameras.generate_rays(
            camera_indices=camera_indices[chosen, None].to(self.train_cameras.device), coords=coords
        )
        # Sparse depth is z along the camera axis; rays are parametrised by distance, |d_unnormalised| = 1 / cos.
        distance = xy_depth_weight[:, 2:3] * bundle.metadata["directions_norm"]
        return bundle, distance, xy_depth_weight[:, 3:4]

    def next_joint(self, step: int) -> Tuple[RayBundle, Dict]:
        """Phase B: random rays with their colours, one latent patch, and sparse-depth rays when available."""
        ray_bundle, batch = self.next_train(step)
        batch["latent_patch"] = self.next_latent_patch()
        depth = self.next_depth_rays()
        if depth is not None:
            batch["depth_rays"] = depth
        return ray_bundle, batch

    # ------------------------------------------------------------------ phase C
    def next_real_crop(self) -> ImagePatch:
        size = largest_patch(self.config.distill_crop_size, self.train_images)
        return random_patch(self.train_cameras, self.train_images, size)
