"""Phase schedule, phase-aware learning rates, interpolated cameras."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import tyro
from nerfstudio.cameras.cameras import Cameras

from relsnerf_ns.model.relsnerf_model import RelsNerfModelConfig
from relsnerf_ns.relsnerf_config import relsnerf_optimizers, relsnerf_r32, relsnerf_tiny
from relsnerf_ns.training.camera_interpolation import interpolated_cameras, sample_triplets
from relsnerf_ns.training.phases import Phase, PhaseScheduleConfig
from relsnerf_ns.training.relsnerf_trainer import RelsNerfTrainer
from relsnerf_ns.training.schedulers import PhaseLR

NERF_GROUPS = ("proposal_networks", "fields", "latent_field")


def test_paper_schedules_and_boundaries():
    r32 = PhaseScheduleConfig(family="r32")
    assert r32.steps() == (3000, 20000, 10000)
    assert r32.boundaries() == (3000, 23000, 33000)
    assert [r32.phase_at(s) for s in (0, 2999, 3000, 22999, 23000, 32999)] == [
        Phase.AE_PRETRAIN,
        Phase.AE_PRETRAIN,
        Phase.JOINT,
        Phase.JOINT,
        Phase.DISTILL,
        Phase.DISTILL,
    ]
    assert PhaseScheduleConfig(family="sd").steps() == (500, 20000, 3000)
    custom = PhaseScheduleConfig(family="sd", ae_pretrain_steps=7, skip_distill=True)
    assert custom.steps() == (7, 20000, 0) and custom.total_steps == 20007
    assert PhaseScheduleConfig(skip_ae_pretrain=True, joint_steps=5).phase_at(0) == Phase.JOINT
    with pytest.raises(ValueError, match="phase B"):
        PhaseScheduleConfig(joint_steps=0).steps()


def rates(family: str, schedule: PhaseScheduleConfig, group: str, steps, recipe: str = "relsnerf"):
    period = RelsNerfModelConfig(recipe=recipe).nerf_tenfold_decay_every()
    scheduler = relsnerf_optimizers(family)[group]["scheduler"].for_run(schedule, period)
    return [scheduler.rate(s) for s in steps]


def set_up_optimizers(config):
    """RelsNerfTrainer.setup_optimizers on a trainer config, with one parameter per group (no pipeline is built)."""
    groups = {name: [torch.nn.Parameter(torch.zeros(1))] for name in config.optimizers}
    trainer = SimpleNamespace(config=config, pipeline=SimpleNamespace(get_param_groups=lambda: groups))
    return RelsNerfTrainer.setup_optimizers(trainer)


def optimizer_rates(optimizers, group: str, steps):
    """The rates the group's LambdaLR gives its optimizer at these steps."""
    scheduler, lr_init = optimizers.schedulers[group], optimizers.config[group]["optimizer"].lr
    return [lr_init * scheduler.lr_lambdas[0](s) for s in steps]


def test_paper_learning_rates_per_phase():
    r32 = PhaseScheduleConfig(family="r32")
    # A: 4e-4 halved every 500; B: decoder fixed 1e-4; C: 1e-4 halved every 2500.
    assert rates("r32", r32, "ae_decoder", [0, 499, 500, 2999]) == pytest.approx([4e-4, 4e-4, 2e-4, 4e-4 / 32])
    assert rates("r32", r32, "ae_decoder", [3000, 22999]) == pytest.approx([1e-4, 1e-4])
    assert rates("r32", r32, "ae_decoder", [23000, 25499, 25500, 32999]) == pytest.approx([1e-4, 1e-4, 5e-5, 1.25e-5])
    # The encoder trains in phase A only.
    assert rates("r32", r32, "ae_encoder", [0, 3000, 23000]) == pytest.approx([4e-4, 0.0, 0.0])
    # NeRF: 1e-2 * 0.1^(t / 2e4) from the start of B (tenfold over the phase; the paper's period is 1e4), frozen
    # elsewhere.
    assert rates("r32", r32, "fields", [2999, 3000, 13000, 22999, 23000]) == pytest.approx(
        [0.0, 1e-2, 1e-2 * 0.1**0.5, 1e-2 * 0.1 ** (19999 / 20000), 0.0]
    )
    sd = PhaseScheduleConfig(family="sd")
    assert rates("sd", sd, "ae_decoder", [149, 150, 300, 450]) == pytest.approx([1e-4, 5e-5, 2.5e-5, 1.25e-5])
    assert rates("sd", sd, "ae_decoder", [20500, 21500]) == pytest.approx([1e-4, 5e-5])


def test_short_runs_stretch_the_schedule_shapes():
    short = PhaseScheduleConfig(family="r32", ae_pretrain_steps=300, joint_steps=2000, distill_steps=1000)
    # A is 1/10 of the paper's: halvings every 50 steps; B (1/10 of the paper's): tenfold decay over its 2000 steps.
    assert rates("r32", short, "ae_decoder", [49, 50]) == pytest.approx([4e-4, 2e-4])
    assert rates("r32", short, "latent_field", [300, 1300, 2299]) == pytest.approx(
        [1e-2, 1e-2 * 0.1**0.5, 1e-2 * 0.1 ** (1999 / 2000)]
    )


@pytest.mark.parametrize("recipe, period", [("relsnerf", 20000), ("paper", 10000)])
def test_the_recipe_sets_the_nerf_rate_of_phase_b(recipe, period):
    config = copy.deepcopy(relsnerf_r32.config)
    config.pipeline.model.recipe = recipe
    phases = config.pipeline.phases
    phases.ae_pretrain_steps, phases.joint_steps, phases.distill_steps = 300, 2000, 1000  # B: 1/10 of the paper's
    optimizers = set_up_optimizers(config)
    start = phases.start_of(Phase.JOINT)
    t = [0, 500, 1000, 1999]
    for group in NERF_GROUPS:
        assert optimizer_rates(optimizers, group, [start + s for s in t]) == pytest.approx(
            [1e-2 * 0.1 ** (s * 10 / period) for s in t], rel=1e-9
        ), group
        assert optimizer_rates(optimizers, group, [start - 1, start + 2000]) == [0.0, 0.0]
    # The camera optimizer keeps its own period, whatever the recipe.
    assert optimizer_rates(optimizers, "camera_opt", [start + 1000]) == pytest.approx([1e-3 * 0.1**0.5])


def test_a_period_set_on_the_command_line_wins_over_the_recipe():
    args = ["--pipeline.model.recipe", "paper", "--optimizers.fields.scheduler.phase-b.tenfold-decay-every", "20000"]
    config = tyro.cli(type(relsnerf_r32.config), default=copy.deepcopy(relsnerf_r32.config), args=args)
    optimizers = set_up_optimizers(config)
    start = config.pipeline.phases.start_of(Phase.JOINT)
    assert optimizer_rates(optimizers, "fields", [start + 10000]) == pytest.approx([1e-2 * 0.1**0.5])
    for group in ("proposal_networks", "latent_field"):
        assert optimizer_rates(optimizers, group, [start + 10000]) == pytest.approx([1e-3]), group


def test_setting_up_the_optimizers_leaves_the_registered_config_as_it_was():
    config = relsnerf_tiny.config  # the module-level config itself, not a copy
    before = {name: group["scheduler"] for name, group in config.optimizers.items()}
    optimizers = set_up_optimizers(config)
    for group in NERF_GROUPS:
        assert optimizers.config[group]["scheduler"].phase_b.tenfold_decay_every == 20000  # resolved in the copy
        scheduler = config.optimizers[group]["scheduler"]
        assert scheduler is before[group]
        assert scheduler.phase_b.tenfold_decay_every is None and scheduler.schedule is None
    assert relsnerf_optimizers("sd")["fields"]["scheduler"].phase_b.tenfold_decay_every is None


def test_an_unresolved_recipe_period_is_an_error():
    with pytest.raises(RuntimeError, match="recipe's period"):
        PhaseLR(lr=1e-2, tenfold_decay_every=None).at(0)
    scheduler = relsnerf_optimizers("r32")["fields"]["scheduler"]
    scheduler.schedule = PhaseScheduleConfig(family="r32")
    with pytest.raises(RuntimeError, match="RelsNerfTrainer resolves it"):
        scheduler.rate(3000)


def triangle_barycentric(points, corners):
    """Barycentric coordinates of points in the plane of each triangle (least squares)."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    basis = torch.stack([b - a, c - a], dim=-1)  # [n, 3, 2]
    uv = torch.linalg.lstsq(basis, (points - a)[..., None]).solution[..., 0]
    return torch.stack([1 - uv.sum(-1), uv[:, 0], uv[:, 1]], dim=-1)


def test_interpolated_cameras_stay_inside_their_triplet_with_valid_rotations():
    torch.manual_seed(0)
    n = 6
    angles = torch.linspace(-0.6, 0.6, n)
    c2w = torch.zeros(n, 3, 4)
    for i, a in enumerate(angles):
        rot = torch.tensor([[torch.cos(a), 0, torch.sin(a)], [0, 1, 0], [-torch.sin(a), 0, torch.cos(a)]])
        c2w[i, :, :3] = rot
        c2w[i, :, 3] = torch.tensor([3 * torch.sin(a), 0.2 * i, 3 * torch.cos(a)])
    cams = Cameras(camera_to_worlds=c2w, fx=50.0, fy=50.0, cx=32.0, cy=24.0, width=64, height=48)
    out, triplets, weights = interpolated_cameras(cams, 200, seed=3)
    assert out.camera_to_worlds.shape == (200, 3, 4)
    assert (triplets[:, 0] != triplets[:, 1]).all() and (triplets[:, 1] != triplets[:, 2]).all()
    assert (triplets[:, 0] != triplets[:, 2]).all()
    assert (weights >= 0).all() and torch.allclose(weights.sum(-1), torch.ones(200))
    centres = out.camera_to_worlds[..., 3]
    bary = triangle_barycentric(centres, c2w[triplets][..., 3])
    assert (bary > -1e-4).all(), "a centre left its triangle"
    torch.testing.assert_close(bary, weights, atol=1e-4, rtol=0)
    rot = out.camera_to_worlds[..., :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(200, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.det(rot), torch.ones(200), atol=1e-5, rtol=0)
    # Rotation angles (about y) stay between those of the triplet.
    yaw = torch.atan2(rot[:, 0, 2], rot[:, 0, 0])
    tri_yaw = angles[triplets]
    assert (yaw >= tri_yaw.min(-1).values - 1e-4).all() and (yaw <= tri_yaw.max(-1).values + 1e-4).all()
    # Same seed, same cameras (phase C's renders are found again after a resume).
    again, _, _ = interpolated_cameras(cams, 200, seed=3)
    torch.testing.assert_close(again.camera_to_worlds, out.camera_to_worlds)


def line_of_cameras(n):
    c2w = torch.eye(4)[:3].repeat(n, 1, 1)
    c2w[:, 0, 3] = torch.arange(n, dtype=torch.float32)  # centres at x = 0, 1, ...
    return c2w, Cameras(camera_to_worlds=c2w, fx=50.0, fy=50.0, cx=32.0, cy=24.0, width=64, height=48)


def test_two_cameras_interpolate_along_their_segment_and_say_so_once(capsys):
    c2w, cams = line_of_cameras(2)
    c2w[1, :, :3] = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # 90 degrees about y
    cams.camera_to_worlds = c2w
    out, triplets, weights = interpolated_cameras(cams, 50, seed=0)
    assert len(out) == 50
    assert set(triplets[:, :2].flatten().tolist()) == {0, 1} and (triplets[:, 0] == triplets[:, 2]).all()
    assert (triplets[:, 0] != triplets[:, 1]).all()
    torch.testing.assert_close(weights[:, 2], torch.zeros(50))
    torch.testing.assert_close(weights.sum(-1), torch.ones(50))
    centres = out.camera_to_worlds[..., 3]
    # Every centre on the segment x in [0, 1], at the fraction its weight says.
    torch.testing.assert_close(centres[:, 1:], torch.zeros(50, 2))
    expected_x = torch.where(triplets[:, 0] == 1, weights[:, 0], weights[:, 1])
    torch.testing.assert_close(centres[:, 0], expected_x)
    assert 0.1 < float(centres[:, 0].std()) < 0.5  # spread along the segment, not stuck at one end
    rot = out.camera_to_worlds[..., :3]
    torch.testing.assert_close(torch.det(rot), torch.ones(50), atol=1e-5, rtol=0)
    text = " ".join(capsys.readouterr().out.split())
    assert text.count("only 2 training cameras") == 1 and "along the segment" in text


def test_one_camera_is_used_as_it_is_and_said_once(capsys):
    c2w, cams = line_of_cameras(1)
    out, triplets, weights = interpolated_cameras(cams, 64, seed=0)
    assert len(out) == 1  # 64 renders of the same view would be the same image
    torch.testing.assert_close(out.camera_to_worlds, c2w)
    assert triplets.tolist() == [[0, 0, 0]] and weights.tolist() == [[1.0, 0.0, 0.0]]
    assert int(out.width) == 64 and int(out.height) == 48
    assert " ".join(capsys.readouterr().out.split()).count("single training camera") == 1


def test_camera_tuples_need_at_least_one_camera():
    with pytest.raises(ValueError, match="at least 2 training cameras"):
        sample_triplets(1, 4, torch.Generator().manual_seed(0))
    c2w, cams = line_of_cameras(2)
    with pytest.raises(ValueError, match="at least one training camera"):
        interpolated_cameras(cams[:0], 4, seed=0)


def test_phase_c_makes_one_render_for_a_single_training_camera(tmp_path):
    from relsnerf_ns.training.distill_renders import DistillRenders

    _, cams = line_of_cameras(1)
    renders = DistillRenders(cams, count=5, seed=0, directory=tmp_path)
    renders.build(lambda camera: torch.full((int(camera.height), int(camera.width), 3), 0.5))
    assert len(renders.images) == 1 and renders.images[0].shape == (48, 64, 3)
    assert [p.name for p in tmp_path.glob("render_*.png")] == ["render_0000.png"]
