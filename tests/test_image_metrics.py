"""Offline image metrics: PSNR, SSIM and FLIP always; LPIPS only from weights in the torch cache, never downloaded."""

from __future__ import annotations

import math

import flip_evaluator
import numpy as np
import pytest
import torch

from relsnerf_ns.evaluation.image_metrics import ALEXNET_FILE, OfflineLPIPS, flip_error, image_metrics


def images():
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(32, 40, 3, generator=generator)
    noisy = (reference + 0.1 * torch.randn(32, 40, 3, generator=generator)).clamp(0, 1)
    return reference, noisy


def test_without_cached_weights_lpips_is_skipped_with_one_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    lpips = OfflineLPIPS()
    reference, noisy = images()
    first = image_metrics(reference, noisy, lpips)
    second = image_metrics(reference, noisy, lpips, suffix="_rgb_nerf")
    assert set(first) == {"psnr", "ssim", "flip"} and set(second) == {"psnr_rgb_nerf", "ssim_rgb_nerf", "flip_rgb_nerf"}
    assert first["flip"] == pytest.approx(flip_error(reference, noisy)) and 0 < first["flip"] < 1
    mse = float(((noisy - reference) ** 2).mean())
    assert abs(first["psnr"] - (-10 * torch.log10(torch.tensor(mse)).item())) < 1e-3
    text = " ".join(capsys.readouterr().out.split())
    assert text.count("LPIPS skipped") == 1 and ALEXNET_FILE in text and "TORCH_HOME" in text
    assert not (tmp_path / "hub").exists()  # nothing was fetched


def test_with_cached_weights_lpips_is_computed(tmp_path, monkeypatch):
    from torchvision.models import alexnet

    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    # Random weights of the right architecture stand in for the real file (the test must not download it).
    torch.save(alexnet().state_dict(), checkpoints / ALEXNET_FILE)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    lpips = OfflineLPIPS()
    reference, noisy = images()
    metrics = image_metrics(reference, noisy, lpips)
    assert set(metrics) == {"psnr", "ssim", "flip", "lpips"}
    assert metrics["lpips"] > 0
    assert image_metrics(reference, reference, lpips)["lpips"] < 1e-6


# ---------------------------------------------------------------------- FLIP
def smooth_image(height: int = 48, width: int = 64) -> torch.Tensor:
    """Sinusoids of a few pixels' period in each channel: shifts of a pixel or two are visible, none is periodic."""
    y, x = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    channels = [torch.sin(x / 5.0), torch.cos(y / 7.0), torch.sin((x + y) / 9.0)]
    return 0.5 + 0.45 * torch.stack(channels, dim=-1)


def test_flip_of_identical_images_is_zero():
    reference, noisy = images()
    assert flip_error(reference, reference) == 0.0
    assert flip_error(reference, reference.clone()) == 0.0
    assert flip_error(reference, noisy) > 0.05


def test_flip_is_flip_evaluators_ldr_mean_at_67_pixels_per_degree():
    reference, noisy = images()  # 32 x 40 x 3: FLIP of the same pixels read in another layout would differ
    error_map, mean, parameters = flip_evaluator.evaluate(
        reference.numpy().astype(np.float32), noisy.numpy().astype(np.float32), "LDR", applyMagma=False
    )
    assert parameters["ppd"] == pytest.approx(67.02, abs=0.01)  # the package's default viewing conditions
    assert flip_error(reference, noisy) == pytest.approx(mean, rel=1e-6)
    assert mean == pytest.approx(float(error_map.mean()), rel=1e-5)
    # Any float dtype, the same value: the images are copied to float32 for FLIP.
    assert flip_error(reference.double(), noisy.double()) == pytest.approx(mean, rel=1e-6)
    # Black against white, FLIP's largest kind of error: close to its maximum of 1.
    black, white = torch.zeros(16, 16, 3), torch.ones(16, 16, 3)
    assert 0.9 < flip_error(black, white) <= 1.0


def test_flip_orders_known_distortions():
    generator = torch.Generator().manual_seed(1)
    reference = smooth_image()
    noise = torch.randn(reference.shape, generator=generator)
    noisy = [flip_error(reference, (reference + sigma * noise).clamp(0, 1)) for sigma in (0.01, 0.03, 0.1, 0.3)]
    assert all(a < b for a, b in zip(noisy, noisy[1:])) and noisy[0] < 0.5 * noisy[-1], noisy
    shifted = [flip_error(reference, torch.roll(reference, shifts, dims=1)) for shifts in (1, 2, 4)]
    assert 0 < shifted[0] < shifted[1] < shifted[2], shifted
    small, large = (flip_error(reference, (reference + offset).clamp(0, 1)) for offset in (0.01, 0.1))
    assert 0 < small < large, (small, large)
    # The same offset, brighter or darker, is an error of about the same size.
    darker = flip_error(reference, (reference - 0.1).clamp(0, 1))
    assert darker == pytest.approx(large, rel=0.5)


def test_flip_rejects_wrong_shapes_ranges_and_values():
    reference, noisy = images()
    with pytest.raises(ValueError, match=r"\[H, W, 3\] RGB image, got shape \[3, 32, 40\]"):
        flip_error(reference.permute(2, 0, 1), noisy.permute(2, 0, 1))
    with pytest.raises(ValueError, match=r"\[H, W, 3\] RGB image"):
        flip_error(reference[..., :1], noisy[..., :1])
    with pytest.raises(ValueError, match=r"differ in shape: \[32, 40, 3\] and \[16, 40, 3\]"):
        flip_error(reference, noisy[:16])
    with pytest.raises(ValueError, match=r"prediction values must lie in \[0, 1\].*got \[0, 2\]"):
        flip_error(reference, noisy * 2 / noisy.max())
    with pytest.raises(ValueError, match=r"reference values must lie in \[0, 1\]"):
        flip_error(reference - 0.5, noisy)
    broken = noisy.clone()
    broken[3, 4, 1] = float("nan")
    with pytest.raises(ValueError, match="prediction has non-finite values"):
        flip_error(reference, broken)
    with pytest.raises(ValueError, match=r"floats in \[0, 1\], got dtype torch.uint8"):
        flip_error((reference * 255).to(torch.uint8), (noisy * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="must be a torch tensor, got ndarray"):
        flip_error(reference.numpy(), noisy)


def test_image_metrics_clamps_for_flip_and_gives_nan_for_a_non_finite_render(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    lpips = OfflineLPIPS()
    reference, noisy = images()
    overshoot = noisy * 1.2 - 0.1  # a render slightly outside [0, 1] is clamped, as for PSNR and SSIM
    assert image_metrics(reference, overshoot, lpips)["flip"] == pytest.approx(
        flip_error(reference, overshoot.clamp(0, 1))
    )
    broken = noisy.clone()
    broken[0, 0, 0] = float("nan")
    assert math.isnan(image_metrics(reference, broken, lpips, suffix="_rgb_nerf")["flip_rgb_nerf"])
