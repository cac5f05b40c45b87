"""Training on several processes through DistributedDataParallel, on the CPU with gloo (2 ranks, phases A, B, C).

The two processes are started as nerfstudio's `ns-train --machine.num-devices 2` starts them (`_distributed_worker`:
a process group, the per-machine group in `comms.LOCAL_PROCESS_GROUP`, seed + rank as in `train_loop`), with gloo in
place of NCCL. Checked:
- after every step the parameters of the two ranks are equal, bit for bit;
- at one step of each phase, the loss and the gradient of the 2-rank step (each rank its own batch, DDP averages)
  equal those of one process on the union of the two batches (`union_of_batches`), to TOLERANCE;
- the ranks draw different crops, rays, patches; phase C's renders are made once over both ranks (each its share);
- the checkpoint is written once, under one-process names, and loads in a one-process trainer.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nerfstudio.scripts import train as ns_train
from nerfstudio.utils import comms

from relsnerf_ns.model.train_batches import AutoencoderBatch, JointBatch, union_of_batches
from relsnerf_ns.training.phases import Phase

from .conftest import tiny_config

WORLD = 2
STEPS = (1, 2, 1)
CHECK_STEPS = {0: Phase.AE_PRETRAIN, 2: Phase.JOINT, 3: Phase.DISTILL}
TOLERANCE = 1e-4
"""Largest relative difference (|g_2rank - g_union| / |g_union| per parameter group, and of the loss) allowed
between the averaged 2-rank step and the 1-process step on the union batch. Both are the same sums of float32 terms
in another order (two means of 256 rays averaged vs one mean of 512, per-rank hash-grid scatters, gloo's
all-reduce), so they agree to float32 rounding accumulated through the networks: measured below 2e-6 (the
decoder's gradient in phase B; the test prints them all). 1e-4 leaves room for other CPUs and BLAS builds, while a
real mistake (a gradient not all-reduced or not averaged, a batch counted twice) is off by tens of percent."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _flat_parameters(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _gradients(trainer):
    return {
        group: [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        for group, params in trainer.optimizers.parameters.items()
    }


def _set_sampling_jitter(model, on: bool) -> None:
    """nerfacto's samplers jitter sample positions from the process's generator; a single process on the union batch
    cannot draw what two ranks drew, so the gradient checks turn the jitter off (training keeps it)."""
    for module in model.modules():
        if hasattr(module, "train_stratified"):
            module.train_stratified = on


def _backward(pipeline, trainer, batch, module=None):
    trainer.optimizers.zero_grad_all()
    _, loss_dict, _ = pipeline.train_loss_dict_for(batch, module=module)
    loss = sum(loss_dict.values())
    loss.backward()
    return float(loss.detach())


def _different(a, b) -> bool:
    if isinstance(a, AutoencoderBatch):
        return not torch.equal(a.images, b.images)
    if isinstance(a, JointBatch):
        return not torch.equal(a.batch["indices"], b.batch["indices"]) and not torch.equal(
            a.batch["latent_patch"].image, b.batch["latent_patch"].image
        )
    return not torch.equal(a.targets, b.targets)


def _worker(rank: int, port: int, scene: Path, output: Path, results: Path) -> None:
    # What nerfstudio's _distributed_worker and train_loop do, with gloo on the CPU.
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=WORLD, rank=rank, timeout=timedelta(seconds=120)
    )
    comms.LOCAL_PROCESS_GROUP = dist.new_group(list(range(WORLD)))
    torch.set_num_threads(1)
    config = tiny_config("relsnerf-r32", scene, output, STEPS)
    config.machine.num_devices = WORLD
    ns_train._set_random_seed(config.machine.seed + rank)
    trainer = config.setup(local_rank=rank, world_size=WORLD)
    trainer.setup()
    pipeline = trainer.pipeline
    assert isinstance(pipeline._model, torch.nn.parallel.DistributedDataParallel)
    model = pipeline.model
    renders_made = []
    render_rgb_nerf = model.render_rgb_nerf
    model.render_rgb_nerf = lambda camera: renders_made.append(1) or render_rgb_nerf(camera)
    pipeline.train()
    report = {"checks": {}, "steps": 0}
    for step in range(sum(STEPS)):
        if step in CHECK_STEPS:
            counters = pipeline.resume_state()
            before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
            batch = pipeline.next_train_batch(step)
            batches = [None] * WORLD
            dist.all_gather_object(batches, batch)
            assert _different(batches[0], batches[1]), f"ranks drew the same batch at step {step}"
            _set_sampling_jitter(model, False)
            loss = _backward(pipeline, trainer, batch)  # through DDP: gradients averaged over the ranks
            averaged = _gradients(trainer)
            losses = [None] * WORLD
            dist.all_gather_object(losses, loss)
            if rank == 0:  # one process, the same state, both batches at once, no DDP
                pipeline.load_resume_state(counters)
                union = union_of_batches(batches)
                union_loss = _backward(pipeline, trainer, union, module=model)
                reference = _gradients(trainer)
                errors = {}
                for group in averaged:
                    a = torch.cat([g.reshape(-1) for g in averaged[group]]).double()
                    b = torch.cat([g.reshape(-1) for g in reference[group]]).double()
                    scale = float(b.norm())
                    errors[group] = (float((a - b).norm()) / scale) if scale > 0 else float(a.norm())
                mean_loss = sum(losses) / WORLD
                report["checks"][step] = {
                    "phase": CHECK_STEPS[step].value,
                    "loss_error": abs(mean_loss - union_loss) / abs(union_loss),
                    "grad_errors": errors,
                }
                for key, value in before.items():  # nothing of the check changed the model
                    assert torch.equal(model.state_dict()[key], value), key
            dist.barrier()
            _set_sampling_jitter(model, True)
            trainer.optimizers.zero_grad_all()
            pipeline.load_resume_state(counters)
        trainer.train_iteration(step)
        assert pipeline.phase == Phase(pipeline.schedule.phase_at(step))
        mine = _flat_parameters(model)
        gathered = [torch.empty_like(mine) for _ in range(WORLD)]
        dist.all_gather(gathered, mine)
        assert all(torch.equal(gathered[0], other) for other in gathered[1:]), f"parameters differ after step {step}"
        report["steps"] += 1
    trainer.save_checkpoint(sum(STEPS) - 1)  # every rank calls it, as nerfstudio's loop does; rank 0 writes
    dist.barrier()
    renders = pipeline.distill_renders
    assert renders is not None
    report["renders_made"] = len(renders_made)
    report["renders"] = torch.stack(renders.images)
    report["parameters"] = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    torch.save(report, results / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_train_a_b_c_like_one_process_on_the_union(scene, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    output = tmp_path / "out"
    mp.spawn(_worker, args=(_free_port(), scene, output, results), nprocs=WORLD, join=True)
    reports = [torch.load(results / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert all(report["steps"] == sum(STEPS) for report in reports)

    checks = reports[0]["checks"]
    assert sorted(check["phase"] for check in checks.values()) == ["A", "B", "C"]
    worst = 0.0
    for step, check in checks.items():
        errors = check["grad_errors"]
        print(f"step {step} (phase {check['phase']}): loss {check['loss_error']:.2e}, gradients {errors}")
        assert check["loss_error"] < TOLERANCE, (step, check)
        for group, error in errors.items():
            assert error < TOLERANCE, (step, group, error)
        worst = max([worst, check["loss_error"], *errors.values()])
    print(f"largest relative difference, 2 ranks vs 1 process on the union: {worst:.2e}")

    # Phase C's 3 renders: made once over both ranks (shares 0, 2 and 1), the same on both.
    assert [report["renders_made"] for report in reports] == [2, 1]
    assert torch.equal(reports[0]["renders"], reports[1]["renders"])

    # One checkpoint, one-process names; it loads in a one-process trainer to rank 0's parameters.
    checkpoints = list(output.rglob("*.ckpt"))
    assert [path.name for path in checkpoints] == [f"step-{sum(STEPS) - 1:09d}.ckpt"], checkpoints
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert not any(".module." in key for key in state["pipeline"])
    config = tiny_config("relsnerf-r32", scene, tmp_path / "single", STEPS)
    config.load_dir = checkpoints[0].parent
    single = config.setup(local_rank=0, world_size=1)
    single.setup()
    loaded = single.pipeline.model.state_dict()
    for key, value in reports[0]["parameters"].items():
        assert torch.equal(loaded[key], value), key
