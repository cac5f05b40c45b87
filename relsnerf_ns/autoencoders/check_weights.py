"""Check a pretrained tiny autoencoder: load it strictly and report encode-decode PSNR on a folder of images.

    python -m relsnerf_ns.autoencoders.check_weights --encoder taef2_encoder.pth --decoder taef2_decoder.pth \
        --images path/to/images
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from relsnerf_ns.autoencoders.tiny import TinyAutoencoderConfig
from relsnerf_ns.evaluation.image_metrics import psnr_from_mse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", type=Path, required=True)
    parser.add_argument("--decoder", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--latent-channels", type=int, default=32)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = TinyAutoencoderConfig(
        encoder_weights=args.encoder, decoder_weights=args.decoder, latent_channels=args.latent_channels
    )
    ae = config.setup().to(device).eval()
    psnrs = []
    for path in sorted(args.images.glob("*.png")) + sorted(args.images.glob("*.jpg")):
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        h, w = image.shape[0] // 8 * 8, image.shape[1] // 8 * 8
        x = torch.from_numpy(image[:h, :w]).permute(2, 0, 1)[None].to(device)
        with torch.no_grad():
            y = ae.reconstruct(x).clamp(0, 1)
        psnrs.append(float(psnr_from_mse(torch.mean((x - y) ** 2))))
        print(f"{path.name}: {w}x{h} PSNR {psnrs[-1]:.2f} dB")
    print(f"mean encode-decode PSNR over {len(psnrs)} images: {np.mean(psnrs):.2f} dB")


if __name__ == "__main__":
    main()
