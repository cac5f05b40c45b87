"""What one training step of each phase consumes, drawn apart from the loss so that batches can be injected.

The pipeline draws a batch (`RelsNerfPipeline.next_train_batch`) and hands it to the model's forward
(`model(train_batch=...)`), through DistributedDataParallel when training on several GPUs: every computation that
produces a loss then runs inside the wrapped module's forward, so DDP sees (and averages) all of its gradients.
`union_of_batches` joins the batches of several ranks into the one batch that a single process would have to see for
its step to equal their averaged step (what tests/test_ddp.py checks).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Union

import torch
from nerfstudio.cameras.rays import RayBundle
from torch import Tensor

from relsnerf_ns.data.relsnerf_datamanager import ImagePatch


@dataclass
class AutoencoderBatch:
    """Phase A: image crops [B, 3, S, S] to reconstruct."""

    images: Tensor


@dataclass
class JointBatch:
    """Phase B: colour rays and the datamanager's batch (image, indices, `latent_patch`: one ImagePatch or a list of
    equally sized ones, `depth_rays` when the depth loss is on)."""

    ray_bundle: RayBundle
    batch: Dict[str, Any]


@dataclass
class DistillBatch:
    """Phase C: crops of decoder input maps [K, n, n, C] (latents, with guidance channels when the decoder is
    guided) and their target images [K, 3, 8n, 8n]; the first `num_real` are real
    images, the rest RGB-NeRF renders. Loss: real_weight * mean over real + (1 - real_weight) * mean over renders."""

    latents: Tensor
    targets: Tensor
    num_real: int
    real_weight: float


TrainBatch = Union[AutoencoderBatch, JointBatch, DistillBatch]


def cat_dataclasses(items: Sequence[Any]) -> Any:
    """Concatenate tensor dataclasses (ray bundles) field by field along the first dimension."""
    first = items[0]
    if isinstance(first, Tensor):
        return torch.cat(list(items))
    if isinstance(first, dict):
        return {key: cat_dataclasses([item[key] for item in items]) for key in first}
    if isinstance(first, tuple):
        return tuple(cat_dataclasses([item[i] for item in items]) for i in range(len(first)))
    if dataclasses.is_dataclass(first):
        fields = {
            f.name: cat_dataclasses([getattr(item, f.name) for item in items])
            for f in dataclasses.fields(first)
            if f.init and not f.name.startswith("_")
        }
        return dataclasses.replace(first, **fields)
    return first  # None and plain values: the first item's


def _patches(batch: Dict[str, Any]) -> List[ImagePatch]:
    patch = batch["latent_patch"]
    return list(patch) if isinstance(patch, (list, tuple)) else [patch]


def union_of_batches(batches: Sequence[TrainBatch]) -> TrainBatch:
    """The batch of one process whose loss is the mean of the given batches' losses (equal batch sizes): crops,
    rays and patches of all of them together; in phase C real crops first, then renders."""
    first = batches[0]
    if isinstance(first, AutoencoderBatch):
        return AutoencoderBatch(torch.cat([b.images for b in batches]))  # type: ignore[union-attr]
    if isinstance(first, JointBatch):
        joint: List[JointBatch] = list(batches)  # type: ignore[arg-type]
        merged: Dict[str, Any] = {}
        for key in first.batch:
            if key == "latent_patch":
                merged[key] = [patch for b in joint for patch in _patches(b.batch)]
            else:
                merged[key] = cat_dataclasses([b.batch[key] for b in joint])
        return JointBatch(cat_dataclasses([b.ray_bundle for b in joint]), merged)
    distill: List[DistillBatch] = list(batches)  # type: ignore[arg-type]
    real = [b.latents[: b.num_real] for b in distill] + [b.latents[b.num_real :] for b in distill]
    targets = [b.targets[: b.num_real] for b in distill] + [b.targets[b.num_real :] for b in distill]
    return DistillBatch(
        torch.cat(real),
        torch.cat(targets),
        sum(b.num_real for b in distill),
        first.real_weight,  # type: ignore
    )
