"""Where a trained model's decoded output loses against its colour branch, on training and on held-out views.

    python docs/scripts/decoded_gap.py --load-config outputs/.../config.yml [--phases 4]

For each split, the mean over its views of:
- decoded: PSNR of the decoded output (as ns-eval renders it);
- RGB-NeRF: PSNR of the colour branch, one ray per pixel;
- D(E(I)): PSNR of the model's own autoencoder on the ground-truth image (its ceiling with the trained decoder);
- D(avg E(I)): the same for the image's latents averaged over --phases x --phases offsets of the 8x8 grid (what a
  latent field shared by all views can render; see docs/method.md);
- latent error: mean squared difference of the rendered latent map and E(I), relative to E(I)'s variance;
- with surface guidance, also: surface image, the PSNR of the surface points' colours (bilinearly upsampled from their
  half resolution: what the refiner reads), and without refiner, the decoded output without the refiner's correction.
A decoded output close to D(E(I)) on both splits says the autoencoder is the limit; decoded far above its held-out
level on training views says the latent field fits the training views' own latents and not the scene.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from nerfstudio.utils.eval_utils import eval_setup
from torchmetrics.functional.image import peak_signal_noise_ratio

from relsnerf_ns.model.latent_targets import LATENT_DOWNSCALE, phase_averaged_encoding


def psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    return float(peak_signal_noise_ratio(image.clamp(0, 1), target, data_range=1.0))


@torch.no_grad()
def view_figures(model, dataset, index: int, phases: int) -> tuple:
    camera = dataset.cameras[index : index + 1]
    target = dataset.get_image_float32(index)[..., :3].to(model.device)
    height = target.shape[0] // LATENT_DOWNSCALE * LATENT_DOWNSCALE
    width = target.shape[1] // LATENT_DOWNSCALE * LATENT_DOWNSCALE
    target = target[:height, :width]
    image = target.permute(2, 0, 1)[None].contiguous()
    encoding = model.autoencoder.encode(image)
    averaged = phase_averaged_encoding(model.autoencoder.encode, image, phases)
    rows, cols = encoding.shape[-2:]
    low = model.render_latent_frame(camera)
    field = low["latent"][:rows, :cols]
    reference = encoding[0].permute(1, 2, 0)

    def decoded(latent: torch.Tensor) -> torch.Tensor:
        return model.autoencoder.decode(latent)[0].permute(1, 2, 0)

    figures = (
        psnr(model.get_outputs_for_camera(camera)["rgb"][:height, :width], target),
        psnr(model.render_rgb_nerf_outputs(camera)["rgb"][:height, :width], target),
        psnr(decoded(encoding), target),
        psnr(decoded(averaged), target),
        float(((field - reference) ** 2).mean() / reference.var()),
    )
    if not model.decoder_guidance.needs_surface:
        return figures
    inputs = model.decoder_input_map(low).permute(2, 0, 1)[None]
    n = model.autoencoder.latent_channels
    guidance = inputs[:, n:]
    size = (inputs.shape[-2] * LATENT_DOWNSCALE, inputs.shape[-1] * LATENT_DOWNSCALE)
    surface = model.decoder_guidance.upsampled_surface_image(guidance, size)
    unrefined = model.autoencoder.decode(inputs[:, :n] + model.decoder_guidance(guidance))
    return figures + (
        psnr(surface[0].permute(1, 2, 0)[:height, :width], target),
        psnr(unrefined[0].permute(1, 2, 0)[:height, :width], target),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-config", type=Path, required=True, help="config.yml of a relsnerf run")
    parser.add_argument("--phases", type=int, default=4, help="grid offsets per axis for D(avg E(I))")
    args = parser.parse_args()
    _, pipeline, _, step = eval_setup(args.load_config, test_mode="test")
    model = pipeline.model
    model.eval()
    print(f"{args.load_config} (step {step})")
    splits = (("training", pipeline.datamanager.train_dataset), ("held-out", pipeline.datamanager.eval_dataset))
    for split, dataset in splits:
        mean = np.mean([view_figures(model, dataset, i, args.phases) for i in range(len(dataset))], axis=0)
        print(
            f"{split} views ({len(dataset)}): decoded {mean[0]:.2f} dB, RGB-NeRF {mean[1]:.2f} dB, "
            f"D(E(I)) {mean[2]:.2f} dB, D(avg E(I)) {mean[3]:.2f} dB, latent error {mean[4]:.3f}"
            + (f", surface image {mean[5]:.2f} dB, without refiner {mean[6]:.2f} dB" if len(mean) > 5 else "")
        )


if __name__ == "__main__":
    main()
