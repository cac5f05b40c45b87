"""What L_z's targets decode to, without a NeRF: interpolated E(I) against centred (shifted) encodings.

    python docs/scripts/centred_targets_probe.py --images fern/images_8 --weights weights/taef2

A view whose 8x8 block grid lies s pixels off a training view's grid needs the latents of the image moved by s pixels.
For pretrained TAEF2 and a few images (PSNR of the decoded latents against the moved image, 8-pixel border left out):
1. E(I) interpolated at offset s (the plain L_z target there) against the encoding of the moved image (the centred
   target, `--pipeline.model.latent-target-offsets 8`), for s = 0, 2, 4 pixels;
2. the target midway between two centred entries 2, 4 or 8 pixels apart (offsets 4, 2, 1), at offset 1, 2, 4;
3. with 8 offsets, a ray at a pixel centre: the mean of the four nearest entries (half a pixel off in both axes)
   against the image moved by half a pixel (bilinear), and the plain reconstruction D(E(I)) for scale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from decoder_adaptation import load, psnr, taef2  # this folder's script

from relsnerf_ns.model.latent_targets import at_fractional_offset, shifted_by

BORDER = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="a folder of images (e.g. an LLFF scene's images_8)")
    parser.add_argument("--weights", type=Path, required=True, help="folder with taef2_encoder.pth, taef2_decoder.pth")
    parser.add_argument("--every", type=int, default=7, help="use every this many-th image (sorted by name)")
    parser.add_argument("--count", type=int, default=3, help="how many images")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(2)
    autoencoder = taef2(args.weights, args.device).eval()
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    paths = paths[:: args.every][: args.count]
    scores: dict = {}

    def score(name: str, latent: torch.Tensor, reference: torch.Tensor) -> None:
        scores.setdefault(name, []).append(psnr(autoencoder.decode(latent), reference, BORDER))

    with torch.no_grad():
        for path in paths:
            image = load(path, args.device)
            plain = autoencoder.encode(image)

            def moved(s: int) -> torch.Tensor:  # content moved up and left by s pixels
                return shifted_by(image, -s, -s)

            for s in (0, 2, 4):
                score(f"1. offset {s} px: E(I) interpolated", at_fractional_offset(plain, s / 8, s / 8), moved(s))
                score(
                    f"1. offset {s} px: centred (encoding of the moved image)", autoencoder.encode(moved(s)), moved(s)
                )
            for spacing, s in ((2, 1), (4, 2), (8, 4)):
                midway = 0.5 * (
                    autoencoder.encode(moved(s - spacing // 2)) + autoencoder.encode(moved(s + spacing // 2))
                )
                score(f"2. midway between centres {spacing} px apart (offset {s} px)", midway, moved(s))
            corners = [shifted_by(image, -dy, -dx) for dy in (0, 1) for dx in (0, 1)]
            half = sum(corners) / 4  # moved by half a pixel in both axes (bilinear)
            score(
                "3. 8 offsets, ray at a pixel centre: mean of 4 entries",
                sum(map(autoencoder.encode, corners)) / 4,
                half,
            )
            score("3. D(E(I)) of the unmoved image", plain, image)
    print(f"{len(paths)} images of {args.images}: {', '.join(p.name for p in paths)}")
    for name, values in scores.items():
        print(f"{name}: {np.mean(values):.2f} dB")


if __name__ == "__main__":
    main()
