"""What limits the decoded output: the autoencoder, the averaging a shared latent field does, and how much a decoder
trained for averaged latents wins back. No NeRF is trained; it needs the scene's images and TAEF2 weights.

    python docs/scripts/decoder_adaptation.py --images path/to/fern/images_4 --weights path/to/taef2 --device cuda

Prints, on an LLFF-style split (every 8th image held out):
1. D(E(I)) of every image: the autoencoder's own ceiling;
2. on the held-out images, D of the latents averaged over `--phases` x `--phases` offsets of the 8x8 grid (each
   offset's latent resampled at the original block centres): what a latent field that all views share can render;
3. the same after fine-tuning the decoder on such averaged latents of the training images (`--steps` steps of
   `--crops` 256x256 crops, Adam at `--lr`), next to D(E(I)) of the held-out images with that decoder.
With `--adapt autoencoder`, step 3 also trains the encoder, as `--pipeline.model.encoder-adaptation-mult` does in
phase B: its latents of each crop are pulled towards the offset average of its image (the stand-in for what a shared
field renders; detached, re-encoded every `--refresh-every` steps; weight `--agreement-mult`, in units of each
channel's spread) while it keeps reconstructing the crop, and the held-out averages are re-encoded with it. The
latent error printed is the offset average's mean squared difference to E(I), relative to E(I)'s variance.
The offsets move the image with torch.roll (content wraps around); the held-out figures leave a 16-pixel border out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio

from relsnerf_ns.autoencoders.tiny import TinyAutoencoderConfig
from relsnerf_ns.model.latent_targets import LATENT_DOWNSCALE, phase_averaged_encoding

BORDER = 16
CROP = 256


def load(path: Path, device: str) -> torch.Tensor:
    image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).float().div(255).permute(2, 0, 1)[None]
    return image[..., : image.shape[-2] // 8 * 8, : image.shape[-1] // 8 * 8].to(device)


def taef2(weights: Path, device: str) -> torch.nn.Module:
    """The pretrained TAEF2 autoencoder from a folder with taef2_encoder.pth and taef2_decoder.pth."""
    config = TinyAutoencoderConfig(
        encoder_weights=str(weights / "taef2_encoder.pth"), decoder_weights=str(weights / "taef2_decoder.pth")
    )
    return config.setup().to(device)


def rolled(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The image's content moved by (dy, dx), wrapping around (how the figures in docs/method.md were measured)."""
    return torch.roll(image, (dy, dx), dims=(-2, -1))


def psnr(decoded: torch.Tensor, image: torch.Tensor, border: int = 0) -> float:
    window = (..., slice(border, -border or None), slice(border, -border or None))
    return float(peak_signal_noise_ratio(decoded[window].clamp(0, 1), image[window], data_range=1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="folder of the scene's images (e.g. images_4)")
    parser.add_argument("--weights", type=Path, required=True, help="folder with taef2_encoder.pth, taef2_decoder.pth")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--phases", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--crops", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--adapt", choices=("decoder", "autoencoder"), default="decoder", help="what step 3 trains")
    parser.add_argument("--agreement-mult", type=float, default=0.1, help="with --adapt autoencoder")
    parser.add_argument("--refresh-every", type=int, default=250, help="re-encode the training averages")
    parser.add_argument("--crop", type=int, default=CROP, help="crop side in pixels (multiple of 8)")
    args = parser.parse_args()
    crop_size = args.crop
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    images = [load(p, args.device) for p in files]
    held = list(range(0, len(images), 8))
    train = [i for i in range(len(images)) if i not in held]
    autoencoder = taef2(args.weights, args.device)
    with torch.no_grad():
        ceiling = [psnr(autoencoder.reconstruct(image), image) for image in images]
        averaged = [phase_averaged_encoding(autoencoder.encode, image, args.phases, rolled) for image in images]
    print(f"D(E(I)), all {len(images)} images: {np.mean(ceiling):.2f} dB")

    spread = torch.cat([a.flatten(2) for a in averaged], dim=2).std(dim=(0, 2))[None, :, None, None]

    def evaluate(what: str) -> None:
        with torch.no_grad():
            if args.adapt == "autoencoder":  # the encoder changed: so did the averages
                for i in held:
                    averaged[i] = phase_averaged_encoding(autoencoder.encode, images[i], args.phases, rolled)
            of_averaged = [psnr(autoencoder.decode(averaged[i]), images[i], BORDER) for i in held]
            of_plain = [psnr(autoencoder.reconstruct(images[i]), images[i], BORDER) for i in held]
            error = [float(((averaged[i] - (z := autoencoder.encode(images[i]))) ** 2).mean() / z.var()) for i in held]
        print(
            f"{what}: held-out D({args.phases}x{args.phases}-offset average of E) {np.mean(of_averaged):.2f} dB, "
            f"D(E(I)) {np.mean(of_plain):.2f} dB, latent error of the average {np.mean(error):.3f}",
            flush=True,
        )

    evaluate("pretrained autoencoder")
    trained = autoencoder.decoder_parameters()
    if args.adapt == "autoencoder":
        trained = trained + autoencoder.encoder_parameters()
    optimizer = torch.optim.Adam(trained, lr=args.lr)
    start = time.time()
    n = crop_size // LATENT_DOWNSCALE
    for step in range(1, args.steps + 1):
        loss = 0.0
        for _ in range(args.crops):
            i = train[rng.integers(len(train))]
            y = int(rng.integers(averaged[i].shape[-2] - n))
            x = int(rng.integers(averaged[i].shape[-1] - n))
            target = images[i][..., 8 * y : 8 * y + crop_size, 8 * x : 8 * x + crop_size]
            if args.adapt == "decoder":
                latent = averaged[i][..., y : y + n, x : x + n]
                loss = loss + F.mse_loss(autoencoder.decode(latent), target) / args.crops
                continue
            # As phase B with encoder adaptation: the decoder learns the shared latents (L_p), the encoder is pulled
            # towards them (detached) and both keep reconstructing the crop.
            shared = averaged[i][..., y : y + n, x : x + n]
            encoded = autoencoder.encode(target)
            agreement = (((encoded - shared) / spread) ** 2).mean()
            loss = (
                loss
                + (
                    F.mse_loss(autoencoder.decode(shared), target)
                    + args.agreement_mult * agreement
                    + F.mse_loss(autoencoder.decode(encoded), target)
                )
                / args.crops
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if args.adapt == "autoencoder" and step % args.refresh_every == 0:  # as L_z's targets in phase B
            with torch.no_grad():
                for i in train:
                    averaged[i] = phase_averaged_encoding(autoencoder.encode, images[i], args.phases, rolled)
        if step in (100, 250, 500, 1000, 2000, args.steps):
            evaluate(f"{args.adapt} fine-tuned {step} steps ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
