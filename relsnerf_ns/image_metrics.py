"""Image quality metrics that work offline: PSNR and SSIM always, LPIPS when its backbone is in the torch cache.

torchmetrics' LPIPS builds torchvision's pretrained AlexNet, which downloads its weights when they are not cached;
nerfacto builds it at model construction, which fails on a machine without internet. Here it is built on first use,
and only when the weights file is already in the torch hub cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch
from jaxtyping import Float
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


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


def image_metrics(
    reference: Float[Tensor, "H W 3"], prediction: Float[Tensor, "H W 3"], lpips: OfflineLPIPS, suffix: str = ""
) -> Dict[str, float]:
    """PSNR, SSIM and (when available) LPIPS of one image pair, keys suffixed (e.g. 'psnr_rgb_nerf')."""
    # Imported here: torchmetrics (with scipy's signal and stats modules) takes ~1 s, and nerfstudio imports this
    # plugin for every ns-* command. From .image: torchmetrics.functional's names for them warn of their deprecation.
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    ref = reference.permute(2, 0, 1)[None].clamp(0, 1)
    pred = prediction.permute(2, 0, 1)[None].clamp(0, 1).to(ref)
    metrics = {
        f"psnr{suffix}": float(peak_signal_noise_ratio(pred, ref, data_range=1.0)),
        f"ssim{suffix}": float(structural_similarity_index_measure(pred, ref, data_range=1.0)),
    }
    value = lpips(ref, pred)
    if value is not None:
        metrics[f"lpips{suffix}"] = value
    return metrics
