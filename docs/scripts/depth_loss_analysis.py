"""Why the DS-NeRF depth loss hurts the colour NeRF: its size and gradient next to the RGB loss's, and what it sees.

    python docs/scripts/depth_loss_analysis.py --data path/to/fern --downscale-factor 8 --steps 300

Trains relsnerf-r32's phase B with the paper's recipe (lambda_d = 0.1) on an LLFF scene with small fields (a CPU
can run it) and, every `--every` steps, prints for the density/colour field ("fields" parameter group):
- the weighted depth loss and the RGB loss;
- the norm of each one's gradient on the field, and their ratio;
- on the depth rays: the spacing of the final samples at the sparse point's distance, the Gaussian's width there
  (sqrt of nerfstudio's sigma), and the share of rays whose sparse point has no sample within one width;
- the rendered depth's median relative error at the sparse points.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from relsnerf_ns.data.llff_dataparser import LLFFDataParserConfig
from relsnerf_ns.relsnerf_config import relsnerf_r32


def grad_norm(loss: torch.Tensor, params) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--downscale-factor", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--rays", type=int, default=1024)
    parser.add_argument("--output", type=Path, default=Path("outputs/depth-loss-analysis"))
    args = parser.parse_args()
    torch.manual_seed(0)

    config = copy.deepcopy(relsnerf_r32.config)
    model = config.pipeline.model
    model.recipe = "paper"
    for key, value in dict(
        num_levels=12, max_res=1024, log2_hashmap_size=17, latent_num_levels=4, latent_max_res=128,
        latent_log2_hashmap_size=12, latent_hidden_dim=16, implementation="torch",
    ).items():  # fmt: skip
        setattr(model, key, value)
    data = config.pipeline.datamanager
    data.dataparser = LLFFDataParserConfig(data=args.data, downscale_factor=args.downscale_factor)
    data.data = config.data = args.data
    data.train_num_rays_per_batch = data.depth_rays_per_batch = args.rays
    data.latent_patch_size = 4
    phases = config.pipeline.phases
    phases.ae_pretrain_steps, phases.joint_steps, phases.distill_steps = 0, args.steps, 0
    config.machine.device_type = "cpu"
    config.mixed_precision = False
    config.vis = "tensorboard"
    config.output_dir = args.output
    config.timestamp = "run"
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
    config.steps_per_save = 10**9
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    pipeline = trainer.pipeline
    nerf = pipeline.model
    fields = trainer.optimizers.parameters["fields"]
    sigma_width = float(nerf.config.depth_sigma) ** 0.5
    print(f"depth loss weight {nerf.config.depth_loss_weight()}, Gaussian width sqrt(sigma) = {sigma_width:.3f}")
    print(
        "step  rgb_loss  depth_loss(w)  |grad rgb|  |grad depth(w)|  ratio  spacing@point  no-sample-share  depth-err"
    )
    original = pipeline.train_loss_dict_for
    counter = {"step": 0}

    def observed(train_batch, module=None):
        outputs, loss_dict, metrics = original(train_batch, module)
        step = counter["step"]
        counter["step"] += 1
        if step % args.every == 0 or step == args.steps - 1:
            batch = train_batch.batch
            g_rgb = grad_norm(loss_dict["rgb_loss"], fields)
            g_depth = grad_norm(loss_dict["depth_loss"], fields)
            depth_bundle, distance, _ = batch["depth_rays"]
            with torch.no_grad():
                depth_outputs = nerf(depth_bundle)
                samples = depth_outputs["ray_samples_list"][-1]
                mids = ((samples.frustums.starts + samples.frustums.ends) / 2)[..., 0]
                lengths = (samples.frustums.ends - samples.frustums.starts)[..., 0]
                nearest = (mids - distance).abs().argmin(dim=-1, keepdim=True)
                spacing = lengths.gather(-1, nearest)[:, 0]
                no_sample = ((mids - distance).abs().min(dim=-1).values > sigma_width).float().mean()
                rendered = depth_outputs["depth"][:, 0]
                error = ((rendered - distance[:, 0]).abs() / distance[:, 0]).median()
            print(
                f"{step:4d}  {float(loss_dict['rgb_loss']):.4f}    {float(loss_dict['depth_loss']):.4f}         "
                f"{g_rgb:.3e}   {g_depth:.3e}       {g_depth / max(g_rgb, 1e-12):6.2f}  "
                f"{float(spacing.median()):.3f}          {float(no_sample):.2f}             {float(error):.3f}",
                flush=True,
            )
        return outputs, loss_dict, metrics

    pipeline.train_loss_dict_for = observed
    trainer.train()


if __name__ == "__main__":
    main()
