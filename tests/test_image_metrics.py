"""Offline image metrics: PSNR/SSIM always; LPIPS only from weights already in the torch cache, never downloaded."""

from __future__ import annotations

import torch

from relsnerf_ns.image_metrics import ALEXNET_FILE, OfflineLPIPS, image_metrics


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
    assert set(first) == {"psnr", "ssim"} and set(second) == {"psnr_rgb_nerf", "ssim_rgb_nerf"}
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
    assert set(metrics) == {"psnr", "ssim", "lpips"}
    assert metrics["lpips"] > 0
    assert image_metrics(reference, reference, lpips)["lpips"] < 1e-6
