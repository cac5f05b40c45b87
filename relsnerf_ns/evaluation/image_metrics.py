"""Image quality metrics that work offline: PSNR, SSIM and FLIP always, LPIPS when its backbone is in the torch cache.

FLIP is NVIDIA's LDR-FLIP (the `flip-evaluator` package: a perceptual error with no learned weights; see `flip_error`).
torchmetrics' LPIPS builds torchvision's pretrained AlexNet, which downloads its weights when they are not cached;
nerfacto builds it at model construction, which fails on a machine without internet. Here it is built on first use,
and only when the weights file is already in the torch hub cache.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from jaxtyping import Float
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"

FLIP_VIEWING_CONDITIONS = (0.7, 3840.0, 0.7)
"""FLIP's default viewing conditions, passed explicitly: (distance to the display in metres, display width in pixels,
display width in metres), i.e. 0.7 * 3840 / 0.7 * pi / 180 = 67.02 pixels per degree of visual angle."""


def alexnet_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


class OfflineLPIPS:
    """LPIPS (AlexNet) built lazily from cached weights; returns None, after one message, when they are absent."""

    def __init__(self) -> None:
        self._metric = None
        self._unavailable = False

    def available(self) -> bool:
        return alexnet_weights_path().is_file()

    def __call__(self, reference: Float[Tensor, "1 3 H W"], prediction: Float[Tensor, "1 3 H W"]) -> Optional[float]:
        if self._unavailable:
            return None
        if self._metric is None:
            if not self.available():
                self._unavailable = True
                CONSOLE.print(
                    "[yellow]LPIPS skipped: its AlexNet weights are not in the torch cache "
                    f"({alexnet_weights_path()}). "
                    f"To enable it, copy {ALEXNET_FILE} (from https://download.pytorch.org/models/{ALEXNET_FILE}) "
                    "there, or set TORCH_HOME to a cache that has it. PSNR and SSIM are unaffected."
                )
                return None
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            self._metric = LearnedPerceptualImagePatchSimilarity(normalize=True)
        metric = self._metric.to(prediction.device)
        return float(metric(reference.clamp(0, 1), prediction.clamp(0, 1)))


def psnr_from_mse(mse: Union[float, Tensor], min_mse: float = 0.0) -> Union[float, Tensor]:
    """PSNR (dB) of images in [0, 1] from their mean squared error, with the error floored at `min_mse`.

    A tensor gives a tensor (differentiable, e.g. a training metric), a number a float; an error of 0 gives infinity.
    """
    if isinstance(mse, Tensor):
        return -10.0 * torch.log10(mse.clamp_min(min_mse))
    mse = max(float(mse), min_mse)
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def flip_error(reference: Float[Tensor, "H W 3"], prediction: Float[Tensor, "H W 3"]) -> float:
    """Mean LDR-FLIP error of `prediction` against `reference`: 0 for identical images, at most 1; lower is better.

    Both are [H, W, 3] RGB images with values in [0, 1], read as sRGB-encoded display values (what nerfstudio renders
    and loads), torch tensors of any float dtype on any device; they are copied to float32 CPU arrays for
    `flip_evaluator.evaluate` (C++). Viewing conditions: FLIP's default, 67 pixels per degree (a 0.7 m wide
    3840-pixel display seen from 0.7 m, `FLIP_VIEWING_CONDITIONS`). The value is the mean of FLIP's per-pixel error
    map; it depends on the viewing conditions, so compare only values computed at the same pixels per degree.

    Raises ValueError for another layout (e.g. [3, H, W]), different shapes, values outside [0, 1] or non-finite
    values: FLIP itself would accept them silently and return a meaningless number.
    """
    for name, image in (("reference", reference), ("prediction", prediction)):
        if not isinstance(image, Tensor):
            raise ValueError(f"FLIP: {name} must be a torch tensor, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[-1] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"FLIP: {name} must be an [H, W, 3] RGB image, got shape {list(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"FLIP: {name} must hold floats in [0, 1], got dtype {image.dtype}")
    if reference.shape != prediction.shape:
        raise ValueError(
            f"FLIP: reference and prediction differ in shape: {list(reference.shape)} and {list(prediction.shape)}"
        )
    arrays = []
    for name, image in (("reference", reference), ("prediction", prediction)):
        values = image.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"FLIP: {name} has non-finite values (NaN or infinity)")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"FLIP: {name} values must lie in [0, 1] (LDR-FLIP), got [{low:.4g}, {high:.4g}]")
        arrays.append(values.contiguous().numpy())
    import flip_evaluator  # imported where used: nerfstudio imports this plugin for every ns-* command

    _, mean_error, _ = flip_evaluator.evaluate(
        arrays[0],
        arrays[1],
        "LDR",
        inputsRGB=True,
        applyMagma=False,
        computeMeanError=True,
        parameters={"vc": list(FLIP_VIEWING_CONDITIONS)},
    )
    return float(mean_error)


def image_metrics(
    reference: Float[Tensor, "H W 3"], prediction: Float[Tensor, "H W 3"], lpips: OfflineLPIPS, suffix: str = ""
) -> Dict[str, float]:
    """PSNR, SSIM, FLIP and (when available) LPIPS of one image pair, keys suffixed (e.g. 'psnr_rgb_nerf').

    Both images are clamped to [0, 1] first. A prediction with non-finite values gets FLIP NaN, as its PSNR is.
    """
    # Imported here: torchmetrics (with scipy's signal and stats modules) takes ~1 s, and nerfstudio imports this
    # plugin for every ns-* command. From .image: torchmetrics.functional's names for them warn of their deprecation.
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    ref = reference.permute(2, 0, 1)[None].clamp(0, 1)
    pred = prediction.permute(2, 0, 1)[None].clamp(0, 1).to(ref)
    finite = bool(torch.isfinite(pred).all()) and bool(torch.isfinite(ref).all())
    metrics = {
        f"psnr{suffix}": float(peak_signal_noise_ratio(pred, ref, data_range=1.0)),
        f"ssim{suffix}": float(structural_similarity_index_measure(pred, ref, data_range=1.0)),
        f"flip{suffix}": flip_error(ref[0].permute(1, 2, 0), pred[0].permute(1, 2, 0)) if finite else math.nan,
    }
    value = lpips(ref, pred)
    if value is not None:
        metrics[f"lpips{suffix}"] = value
    return metrics
