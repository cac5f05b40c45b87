"""`make demo`: make a procedural scene, train relsnerf-r32 through phases A, B and C, render a video, evaluate.

Uses the standard commands (ns-train, ns-render, ns-eval) exactly as a user would, and prints each command line. The
scene, field sizes and schedule are chosen so that the whole demo fits in 10 minutes on 2 CPU cores after set-up
(measured: 9 min 22 s wall, 9 min 3 s CPU on a 2-core CPU that other jobs shared) with a held-out decoded PSNR above
24 dB; on a GPU it uses the GPU (same schedule; `--steps` and ns-train options train longer or larger).

    python -m relsnerf_ns.demo [--output demo_output] [--steps A B C] [--distill-renders N] [NS-TRAIN OPTIONS ...]

Options it does not know are passed on to ns-train (before the dataparser), e.g. `--pipeline.model.num-levels 16`.
Writes, in --output: the scene (scene/), the run (runs/), `video.mp4` (decoded | RGB-NeRF along the path through the
held-out cameras), `metrics.json` (ns-eval), `side_by_side.png` (ground truth | decoded | RGB-NeRF of one held-out
view) and ns-eval's images of every held-out view (eval_images/).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from PIL import Image, ImageDraw

from relsnerf_ns.demo_scene import held_out_views, write_demo_scene
from relsnerf_ns.training.phases import PAPER_STEPS, Phase

BIN = Path(sys.executable).parent

# The scene: 32 views of 128x96 on a 70-degree arc; every 8th view (between training views) is held out: 28 train, 4
# evaluate. Latent maps are 16x12.
WIDTH, HEIGHT, VIEWS, HOLD_OUT_EVERY = 128, 96, 32, 8
STEPS = (200, 450, 1000)
"""Phase lengths A, B, C of the demo. The colour NeRF fits this scene within a few hundred phase-B steps; the decoder
is what needs the steps, and phase C's steps are cheap (a decoder pass on cached latent crops, no rays)."""
# The autoencoder's rates in phase A (encoder and decoder) and C (decoder): (rate at the start, halvings).
# The paper's (4e-4 halved 6 times in A; 1e-4 halved 4 times in C) are for 3000 and 10000 steps.
AE_RATE = (1e-3, 2)
DISTILL_RATE = (5e-4, 2)
DISTILL_RENDERS = 8


def tool(name: str) -> str:
    """A nerfstudio command of this environment (next to its python), else from PATH."""
    local = BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


# Field, batch and autoencoder sizes for a CPU-sized demo (the paper's sizes are the method's defaults).
DEMO_ARGS = [
    "--pipeline.model.num-levels", "10", "--pipeline.model.max-res", "256", "--pipeline.model.log2-hashmap-size", "15",
    "--pipeline.model.hidden-dim", "32", "--pipeline.model.hidden-dim-color", "32",
    "--pipeline.model.num-proposal-samples-per-ray", "32", "16", "--pipeline.model.num-nerf-samples-per-ray", "16",
    "--pipeline.model.latent-num-levels", "10", "--pipeline.model.latent-max-res", "256",
    "--pipeline.model.latent-log2-hashmap-size", "15", "--pipeline.model.latent-hidden-dim", "32",
    "--pipeline.model.autoencoder.encoder-widths", "16", "32", "64", "128", "128",
    "--pipeline.model.autoencoder.decoder-widths", "128", "128", "64", "32", "16",
    "--pipeline.datamanager.train-num-rays-per-batch", "1024", "--pipeline.datamanager.latent-patch-size", "8",
    "--pipeline.datamanager.ae-crop-size", "64", "--pipeline.datamanager.ae-batch-size", "4",
    "--pipeline.datamanager.distill-crop-size", "64",
]  # fmt: skip


def rate_args(phase: Phase, lr: float, halvings: int) -> List[str]:
    """ns-train options for the autoencoder's rate in phase A (encoder and decoder) or C (decoder): `lr`, halved
    `halvings` times at even intervals of the phase.

    Rate periods are given in the paper's phase steps (R32: 3000 in A, 10000 in C) and stretch with the phase, so the
    paper's "halve every 500" in phase A halves six times whatever the phase length: in a phase A of a few hundred
    steps the rate is 1/64 of its start before the autoencoder has learnt much. The demo starts higher and halves
    twice."""
    period = max(1, round(PAPER_STEPS["r32"][phase.index] / (halvings + 1)))  # in the paper's phase steps
    groups = ("ae-encoder", "ae-decoder") if phase == Phase.AE_PRETRAIN else ("ae-decoder",)
    name = f"phase-{phase.value.lower()}"
    return [
        arg
        for group in groups
        for arg in (
            *(f"--optimizers.{group}.scheduler.{name}.lr", str(lr)),
            *(f"--optimizers.{group}.scheduler.{name}.halve-every", str(period)),
        )
    ]


def demo_rate_args() -> List[str]:
    return [*rate_args(Phase.AE_PRETRAIN, *AE_RATE), *rate_args(Phase.DISTILL, *DISTILL_RATE)]


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of the commands it ran so far."""
    children, own = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    return children.ru_utime + children.ru_stime + own.ru_utime + own.ru_stime


def command_env() -> Dict[str, str]:
    """The commands' environment: on the CPU, torch with one thread unless OMP_NUM_THREADS says otherwise.

    On a 2-core machine that anything else also uses, two OpenMP threads spend most of their time waiting for each
    other: on a shared 2-core machine one forward and backward pass of the demo's decoder took 2.4 s with two threads
    and 0.03 s with one."""
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run(command: Sequence, what: str) -> None:
    print(f"\n=== {what}\n$ {' '.join(map(str, command))}", flush=True)
    start, cpu = time.time(), cpu_seconds()
    subprocess.run([str(c) for c in command], check=True, env=command_env())
    print(f"=== {what}: done in {time.time() - start:.0f} s wall, {cpu_seconds() - cpu:.0f} s CPU", flush=True)


LABEL_HEIGHT = 18
"""Pixels of the label strip above the side-by-side picture."""


def side_by_side(eval_images: Path, output: Path, index: int, scale: int = 3) -> Optional[Path]:
    """ns-eval's `img` of held-out view `index` (ground truth | decoded | RGB-NeRF, concatenated), enlarged and
    labelled."""
    image = eval_images / f"eval_img_{index:04d}.png"
    if not image.exists():
        return None
    strip = Image.open(image).convert("RGB")
    strip = strip.resize((strip.width * scale, strip.height * scale), Image.Resampling.NEAREST)
    labelled = Image.new("RGB", (strip.width, strip.height + LABEL_HEIGHT), "white")
    labelled.paste(strip, (0, LABEL_HEIGHT))
    draw = ImageDraw.Draw(labelled)
    panel = strip.width // 3
    for column, label in enumerate(("ground truth (held out)", "decoded (ReLS-NeRF)", "RGB-NeRF")):
        draw.text((column * panel + 4, 3), label, fill="black")
    labelled.save(output)
    return output


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="folder for the scene and the run")
    parser.add_argument("--steps", type=int, nargs=3, default=STEPS, metavar=("A", "B", "C"), help="phase lengths")
    parser.add_argument("--distill-renders", type=int, default=DISTILL_RENDERS, help="phase C's RGB-NeRF renders")
    parser.add_argument("--views", type=int, default=VIEWS, help="views of the scene (every 4th is held out)")
    parser.add_argument("--size", type=int, nargs=2, default=(WIDTH, HEIGHT), metavar=("W", "H"), help="image size")
    parser.add_argument("--video-steps", type=int, default=12, help="video frames between two held-out cameras")
    args, ns_train_extra = parser.parse_known_args(argv)
    start = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    output: Path = args.output
    if output.exists():
        shutil.rmtree(output)
    scene = output / "scene"
    width, height = args.size
    write_demo_scene(scene, width=width, height=height, num_views=args.views, hold_out_every=HOLD_OUT_EVERY)
    print(f"scene: {args.views} procedural views of {width}x{height} in {scene} (every {HOLD_OUT_EVERY}th held out)")
    print(f"training on {device}")
    a, b, c = args.steps
    run(
        [tool("ns-train"), "relsnerf-r32", "--output-dir", output / "runs", "--experiment-name", "demo",
         "--timestamp", "run", "--vis", "tensorboard", "--machine.device-type", device,
         "--pipeline.phases.ae-pretrain-steps", a, "--pipeline.phases.joint-steps", b,
         "--pipeline.phases.distill-steps", c, "--pipeline.num-distill-renders", args.distill_renders,
         "--steps-per-eval-image", 10**6, "--steps-per-eval-batch", 10**6, "--steps-per-eval-all-images", 10**6,
         "--steps-per-save", 10**6, "--logging.steps-per-log", 50, *DEMO_ARGS, *demo_rate_args(),
         *ns_train_extra, "nerfstudio-data", "--data", scene],
        "ns-train relsnerf-r32 (phases A -> B -> C)",
    )  # fmt: skip
    config = output / "runs" / "demo" / "relsnerf-r32" / "run" / "config.yml"
    video = output / "video.mp4"
    run(
        [tool("ns-render"), "interpolate", "--load-config", config, "--output-path", video, "--pose-source", "eval",
         "--interpolation-steps", args.video_steps, "--frame-rate", 12, "--rendered-output-names", "rgb", "rgb_nerf"],
        "ns-render interpolate through the held-out cameras (decoded | RGB-NeRF, side by side)",
    )  # fmt: skip
    metrics = output / "metrics.json"
    eval_images = output / "eval_images"
    run(
        [tool("ns-eval"), "--load-config", config, "--output-path", metrics, "--render-output-path", eval_images],
        "ns-eval on the held-out views",
    )
    held_out = held_out_views(args.views, HOLD_OUT_EVERY)
    shown = len(held_out) // 2  # a view from the middle of the arc
    picture = side_by_side(eval_images, output / "side_by_side.png", shown)
    results = json.loads(metrics.read_text())["results"]
    print("\nHeld-out metrics (decoded output | RGB-NeRF):")
    for name in ("psnr", "ssim", "flip", "lpips"):
        if name in results:
            print(f"  {name:6s} {results[name]:8.3f} | {results.get(name + '_rgb_nerf', float('nan')):8.3f}")
    print(f"\ndemo took {time.time() - start:.0f} s wall, {cpu_seconds():.0f} s CPU")
    print(f"video:   {video}\nmetrics: {metrics}\npicture: {picture}")
    print(f"         (held-out view frame_{held_out[shown]:04d}.png: ground truth | decoded | RGB-NeRF)")
    print(f"run:     {config.parent}")


if __name__ == "__main__":
    main()
