"""`make demo`: make a procedural scene, train relsnerf-r32 through phases A, B and C, render a video, evaluate.

Uses the standard commands (ns-train, ns-render, ns-eval) exactly as a user would. The schedule and field sizes are
small so the whole demo fits in about 6 minutes on 2 CPU cores (plus the first set-up); on a GPU it uses the GPU.

    python -m relsnerf_ns.demo [--output demo_output] [--steps A B C]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from relsnerf_ns.demo_scene import write_demo_scene

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A nerfstudio command of this environment (next to its python), else from PATH."""
    local = BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


# Field and batch sizes for a CPU-sized demo (the paper's sizes are the method's defaults).
DEMO_ARGS = [
    "--pipeline.model.num-levels", "8", "--pipeline.model.max-res", "512", "--pipeline.model.log2-hashmap-size", "15",
    "--pipeline.model.hidden-dim", "32", "--pipeline.model.hidden-dim-color", "32",
    "--pipeline.model.num-proposal-samples-per-ray", "64", "32", "--pipeline.model.num-nerf-samples-per-ray", "24",
    "--pipeline.model.latent-num-levels", "8", "--pipeline.model.latent-max-res", "512",
    "--pipeline.model.latent-log2-hashmap-size", "15", "--pipeline.model.latent-hidden-dim", "32",
    "--pipeline.datamanager.train-num-rays-per-batch", "1024", "--pipeline.datamanager.latent-patch-size", "8",
    "--pipeline.datamanager.ae-crop-size", "64", "--pipeline.datamanager.ae-batch-size", "3",
    "--pipeline.datamanager.distill-crop-size", "64", "--pipeline.num-distill-renders", "16",
]  # fmt: skip


def run(command: list, what: str) -> None:
    print(f"\n=== {what}\n$ {' '.join(map(str, command))}", flush=True)
    start = time.time()
    subprocess.run([str(c) for c in command], check=True)
    print(f"=== {what}: done in {time.time() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="folder for the scene and the run")
    parser.add_argument("--steps", type=int, nargs=3, default=(40, 240, 40), metavar=("A", "B", "C"))
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scene = args.output / "scene"
    if args.output.exists():
        shutil.rmtree(args.output)
    write_demo_scene(scene, width=128, height=96, num_views=16)
    print(f"scene: 16 procedural views of 128x96 in {scene}; training on {device}")
    a, b, c = args.steps
    run(
        [tool("ns-train"), "relsnerf-r32", "--output-dir", args.output / "runs", "--experiment-name", "demo",
         "--timestamp", "run", "--vis", "tensorboard", "--machine.device-type", device,
         "--pipeline.phases.ae-pretrain-steps", a, "--pipeline.phases.joint-steps", b,
         "--pipeline.phases.distill-steps", c, "--steps-per-eval-image", 400, "--steps-per-eval-batch", 400,
         "--steps-per-save", 500, "--logging.steps-per-log", 50, *DEMO_ARGS, "nerfstudio-data", "--data", scene],
        "ns-train relsnerf-r32 (phases A -> B -> C)",
    )  # fmt: skip
    config = args.output / "runs" / "demo" / "relsnerf-r32" / "run" / "config.yml"
    video = args.output / "spiral.mp4"
    run(
        [tool("ns-render"), "spiral", "--load-config", config, "--output-path", video, "--seconds", 3,
         "--frame-rate", 10, "--rendered-output-names", "rgb", "rgb_nerf"],
        "ns-render spiral (decoded | RGB-NeRF, side by side)",
    )  # fmt: skip
    metrics = args.output / "metrics.json"
    run([tool("ns-eval"), "--load-config", config, "--output-path", metrics], "ns-eval on the held-out views")
    results = json.loads(metrics.read_text())["results"]
    print("\nHeld-out metrics (decoded output | RGB-NeRF):")
    for name in ("psnr", "ssim", "flip", "lpips"):
        if name in results:
            print(f"  {name:6s} {results[name]:8.3f} | {results.get(name + '_rgb_nerf', float('nan')):8.3f}")
    print(f"\nvideo: {video}\nmetrics: {metrics}\nrun: {config.parent}")


if __name__ == "__main__":
    main()
