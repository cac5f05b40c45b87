"""Known-answer tests of the RCC metric on an analytically rendered scene.

The scene is textured planes z = const (an infinite background and, optionally, a square in front of it). Frames are
rendered exactly by intersecting nerfstudio's own rays (`Cameras.generate_rays`, unit directions) with the planes, so
the depth maps are exact ray distances: the convention `depth_kind="ray"` is checked against nerfstudio itself rather
than against the projection code under test. Textures are smooth (periods of about 20 pixels or more) so that bilinear
resampling of an exact render is accurate to well under 1e-4 MSE and the static-scene bound of 40 dB is meaningful.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType

from relsnerf_ns.evaluation.rcc import (
    PinholeCamera,
    RCCAccumulator,
    mse_to_psnr,
    pair_consistency,
    rcc_from_outputs,
    reproject,
    reprojective_colour_consistency,
)

WIDTH, HEIGHT, FOCAL = 80, 60, 70.0
BACKGROUND_Z = -7.0
SQUARE_Z, SQUARE_HALF = -3.0, 0.6


@dataclass
class Plane:
    z: float
    half_extent: Optional[float]  # None: infinite; else the square |x|, |y| <= half_extent
    phase: float  # texture phase, so planes have different colours


def texture(x: torch.Tensor, y: torch.Tensor, phase: float) -> torch.Tensor:
    """Smooth colour in [0.2, 0.8]: world-space periods of 1.8-2.6 units (about 20-40 pixels at these depths)."""
    channels = [
        0.5 + 0.3 * torch.sin(2 * math.pi * (x / 2.2 + phase)) * torch.cos(2 * math.pi * (y / 2.6 - phase)),
        0.5 + 0.3 * torch.cos(2 * math.pi * (x / 1.9 + y / 2.4 + 2 * phase)),
        0.5 + 0.3 * torch.sin(2 * math.pi * (y / 1.8 + 3 * phase)),
    ]
    return torch.stack(channels, dim=-1)


BACKGROUND = Plane(BACKGROUND_Z, None, 0.0)
SQUARE = Plane(SQUARE_Z, SQUARE_HALF, 0.37)


def rotation_y(degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    return torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])


def make_cameras(
    poses: Sequence[Tuple[Tuple[float, float, float], float]],
    distortion_params: Optional[torch.Tensor] = None,
    camera_type: CameraType = CameraType.PERSPECTIVE,
) -> Cameras:
    """Pinhole cameras at the given positions, yawed by the given degrees, looking roughly along -z."""
    c2w = torch.stack([torch.cat([rotation_y(yaw), torch.tensor(pos)[:, None]], dim=1) for pos, yaw in poses])
    n = len(poses)
    return Cameras(
        camera_to_worlds=c2w,
        fx=torch.full((n, 1), FOCAL),
        fy=torch.full((n, 1), FOCAL),
        cx=torch.full((n, 1), WIDTH / 2),
        cy=torch.full((n, 1), HEIGHT / 2),
        width=torch.full((n, 1), WIDTH, dtype=torch.long),
        height=torch.full((n, 1), HEIGHT, dtype=torch.long),
        camera_type=camera_type,
        distortion_params=distortion_params,
    )


def render(cameras: Cameras, planes: Sequence[Plane]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact images [N,H,W,3], ray depths [N,H,W,1], z-depths [N,H,W,1] and hit points [N,H,W,3]; depth 0 = no hit."""
    images, depths, z_depths, points = [], [], [], []
    for i in range(cameras.shape[0]):
        rays = cameras.generate_rays(camera_indices=i)  # [H, W], unit directions
        origins, directions = rays.origins, rays.directions
        best_t = torch.full(directions.shape[:-1], float("inf"))
        colour = torch.zeros(directions.shape)
        for plane in planes:
            t = (plane.z - origins[..., 2]) / directions[..., 2]
            hit = origins + t[..., None] * directions
            ok = t > 0
            if plane.half_extent is not None:
                ok &= (hit[..., 0].abs() <= plane.half_extent) & (hit[..., 1].abs() <= plane.half_extent)
            closer = ok & (t < best_t)
            best_t = torch.where(closer, t, best_t)
            colour = torch.where(closer[..., None], texture(hit[..., 0], hit[..., 1], plane.phase), colour)
        depth = torch.where(torch.isfinite(best_t), best_t, torch.zeros_like(best_t))[..., None]
        images.append(colour)
        depths.append(depth)
        z_depths.append(depth / rays.metadata["directions_norm"])  # nerfstudio's ray-distance -> z-depth factor
        points.append(origins + depth * directions)
    return torch.stack(images), torch.stack(depths), torch.stack(z_depths), torch.stack(points)


# A generic camera path: sideways, upwards and forward steps (1-4 pixels of parallax) with a little yaw each frame.
GENERIC_POSES = [((0.12 * i, 0.04 * i, -0.05 * i), -0.8 * i) for i in range(5)]


@pytest.fixture(scope="module")
def generic_video():
    cameras = make_cameras(GENERIC_POSES)
    images, depths, z_depths, _ = render(cameras, [BACKGROUND, SQUARE])
    return cameras, images, depths, z_depths


def expected_rcc(mse_per_pair: Sequence[float]) -> float:
    return -10.0 * math.log10(sum(mse_per_pair) / len(mse_per_pair))


def test_exact_static_scene_has_very_high_rcc(generic_video):
    cameras, images, depths, _ = generic_video
    result = reprojective_colour_consistency(images, depths, cameras)
    # Bilinear resampling error of the smooth texture is far below 1e-4 MSE; 40 dB would already flag a half-pixel
    # misprojection (which gives about 33 dB with these gradients).
    assert result.rcc_db > 40.0
    assert result.num_pairs_used == 4
    assert all(0.5 < f < 1.0 for f in result.valid_fraction_per_pair)


def test_half_pixel_misprojection_is_detected(generic_video):
    """Sanity check of the bound above: shifting the principal point by half a pixel drops the RCC well below 40 dB."""
    cameras, images, depths, _ = generic_video
    shifted = make_cameras(GENERIC_POSES)
    shifted.cx[1::2] += 0.5
    assert reprojective_colour_consistency(images, depths, shifted).rcc_db < 40.0


def test_z_depth_convention_gives_the_same_answer(generic_video):
    cameras, images, depths, z_depths = generic_video
    by_ray = reprojective_colour_consistency(images, depths, cameras, depth_kind="ray")
    by_z = reprojective_colour_consistency(images, z_depths, cameras, depth_kind="z")
    assert by_z.rcc_db == pytest.approx(by_ray.rcc_db, abs=0.05)
    assert by_z.valid_fraction_per_pair == pytest.approx(by_ray.valid_fraction_per_pair, abs=2.0 / (WIDTH * HEIGHT))
    cam0, cam1 = PinholeCamera.from_cameras(cameras, 0), PinholeCamera.from_cameras(cameras, 1)
    ray_rep, z_rep = reproject(depths[0], cam0, cam1, "ray"), reproject(z_depths[0], cam0, cam1, "z")
    assert torch.allclose(ray_rep.coords, z_rep.coords, atol=1e-3)
    # Wrong convention: ray distances read as z-depths put off-axis points up to 15% too far; with small camera steps
    # this costs only parallax errors of a fraction of a pixel, but they are visible.
    assert reprojective_colour_consistency(images, depths, cameras, depth_kind="z").rcc_db < by_ray.rcc_db - 3


def test_reprojection_matches_rendered_hit_points():
    """Reprojected pixel coordinates land where nerfstudio's ray for that pixel of the next camera hits the plane."""
    cameras = make_cameras([((0.0, 0.0, 0.0), 0.0), ((0.3, -0.1, 0.2), 3.0)])
    _, depths, _, points = render(cameras, [BACKGROUND])
    cam0, cam1 = PinholeCamera.from_cameras(cameras, 0), PinholeCamera.from_cameras(cameras, 1)
    rep = reproject(depths[0], cam0, cam1)
    # A point reprojected into camera 1 at coords (u, v) must be the hit point of camera 1's ray through (u, v).
    inside = rep.inside
    uv = rep.coords[inside]
    rays = cameras.generate_rays(camera_indices=torch.ones(uv.shape[0], 1, dtype=torch.long), coords=uv.flip(-1))
    t = (BACKGROUND_Z - rays.origins[..., 2]) / rays.directions[..., 2]
    hits = rays.origins + t[..., None] * rays.directions
    assert torch.allclose(hits, points[0][inside], atol=1e-3)
    # The depth seen from camera 1 is that ray's length.
    assert torch.allclose(rep.depth_in_dst[inside][..., 0], t, rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_shimmer_lowers_rcc_by_the_predicted_amount_nearest(generic_video, seed):
    """Independent noise of std sigma per frame adds 2 sigma^2 to every pair's MSE when each sample is one pixel."""
    cameras, images, depths, _ = generic_video
    sigma = 0.05
    baseline = reprojective_colour_consistency(images, depths, cameras, sampling="nearest")
    generator = torch.Generator().manual_seed(seed)
    noisy = images + sigma * torch.randn(images.shape, generator=generator)
    shimmer = reprojective_colour_consistency(noisy, depths, cameras, sampling="nearest")
    predicted = expected_rcc([m + 2 * sigma**2 for m in baseline.mse_per_pair])
    assert shimmer.rcc_db == pytest.approx(predicted, abs=0.3)
    assert shimmer.rcc_db == pytest.approx(-10 * math.log10(2 * sigma**2), abs=0.6)  # the baseline is small
    assert shimmer.rcc_db < baseline.rcc_db - 5


def test_shimmer_on_whole_pixel_motion_gives_two_sigma_squared():
    """Fronto-parallel plane, camera steps of exactly 2 pixels: bilinear samples hit pixel centres, MSE = 2 sigma^2."""
    step = 2.0 * abs(BACKGROUND_Z) / FOCAL  # 2 pixels of parallax on the background plane
    cameras = make_cameras([((step * i, 0.0, 0.0), 0.0) for i in range(6)])
    images, depths, _, _ = render(cameras, [BACKGROUND])
    exact = reprojective_colour_consistency(images, depths, cameras)
    assert exact.rcc_db > 60.0
    # Known valid fraction: the 2 columns at the left edge leave the next frame.
    assert exact.valid_fraction_per_pair == pytest.approx([(WIDTH - 2) / WIDTH] * 5, abs=1e-6)
    sigma = 0.04
    noisy = images + sigma * torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    shimmer = reprojective_colour_consistency(noisy, depths, cameras)
    assert shimmer.rcc_db == pytest.approx(-10 * math.log10(2 * sigma**2), abs=0.3)


def bilinear_weight_energy(coords: torch.Tensor) -> torch.Tensor:
    """Sum of squared bilinear weights per sample ((1-a)^2 + a^2 per axis; 1 where the edge clamp leaves one tap)."""
    energies = []
    for axis, size in ((0, WIDTH), (1, HEIGHT)):
        position = coords[..., axis] - 0.5
        a = position - position.floor()
        energy = (1 - a) ** 2 + a**2
        energies.append(torch.where((position < 0) | (position > size - 1), torch.ones_like(energy), energy))
    return energies[0] * energies[1]


def test_shimmer_lowers_rcc_by_the_predicted_amount_bilinear(generic_video):
    """With bilinear sampling the next frame's noise is averaged: MSE gains sigma^2 (1 + sum of squared weights)."""
    cameras, images, depths, _ = generic_video
    sigma = 0.05
    baseline = reprojective_colour_consistency(images, depths, cameras)
    noisy = images + sigma * torch.randn(images.shape, generator=torch.Generator().manual_seed(7))
    shimmer = reprojective_colour_consistency(noisy, depths, cameras)
    predicted_mse = []
    for i in range(len(images) - 1):
        cam_i, cam_j = PinholeCamera.from_cameras(cameras, i), PinholeCamera.from_cameras(cameras, i + 1)
        valid = pair_consistency(images[i], depths[i], cam_i, images[i + 1], depths[i + 1], cam_j).valid
        energy = bilinear_weight_energy(reproject(depths[i], cam_i, cam_j).coords[valid]).mean()
        predicted_mse.append(baseline.mse_per_pair[i] + sigma**2 * (1 + float(energy)))
    assert shimmer.rcc_db == pytest.approx(expected_rcc(predicted_mse), abs=0.3)
    # The averaging is real: about 1.4 dB above the nearest-sampling 2 sigma^2 on generic sub-pixel motion.
    assert shimmer.rcc_db > -10 * math.log10(2 * sigma**2) + 0.5


def test_static_camera_reduces_to_plain_psnr_between_frames():
    cameras = make_cameras([((0.1, 0.2, 0.0), 5.0)] * 4)
    _, depths, _, _ = render(cameras, [BACKGROUND, SQUARE])
    images = torch.rand(4, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(0))  # unrelated frames
    result = reprojective_colour_consistency(images, depths, cameras)
    pair_mse = [float(((images[i + 1] - images[i]) ** 2).mean()) for i in range(3)]
    assert result.valid_fraction_per_pair == [1.0, 1.0, 1.0]
    assert result.mse_per_pair == pytest.approx(pair_mse, rel=1e-4)
    assert result.rcc_db == pytest.approx(expected_rcc(pair_mse), abs=1e-3)
    # Two frames: exactly the PSNR of the pair.
    two = reprojective_colour_consistency(images[:2], depths[:2], cameras[:2])
    assert two.rcc_db == pytest.approx(mse_to_psnr(pair_mse[0]), abs=1e-3)


def test_identical_frames_from_a_static_camera_hit_the_mse_floor():
    cameras = make_cameras([((0.0, 0.0, 0.0), 0.0)] * 3)
    images, depths, _, _ = render(cameras, [BACKGROUND])
    result = reprojective_colour_consistency(images, depths, cameras)
    assert math.isfinite(result.rcc_db) and result.rcc_db >= 90.0
    assert result.rcc_db <= 100.0 + 1e-9


def occluded_by_square(points: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """Whether the segment from a camera centre to each point crosses the square (strictly before the point)."""
    s = (SQUARE_Z - origin[2]) / (points[..., 2] - origin[2])
    crossing = origin + s[..., None] * (points - origin)
    inside = (crossing[..., 0].abs() <= SQUARE_HALF) & (crossing[..., 1].abs() <= SQUARE_HALF)
    return inside & (s > 0) & (s < 1 - 1e-4)


def test_depth_test_rejects_occluded_pixels():
    # A sideways move big enough that a wide strip of background visible in frame 0 hides behind the square in frame 1.
    cameras = make_cameras([((0.0, 0.0, 0.0), 0.0), ((0.5, 0.0, 0.0), 0.0)])
    images, depths, _, points = render(cameras, [BACKGROUND, SQUARE])
    cam0, cam1 = PinholeCamera.from_cameras(cameras, 0), PinholeCamera.from_cameras(cameras, 1)
    pair = pair_consistency(images[0], depths[0], cam0, images[1], depths[1], cam1)
    inside = reproject(depths[0], cam0, cam1).inside
    rejected = inside & ~pair.valid
    occluded = inside & occluded_by_square(points[0], cameras.camera_to_worlds[1, :, 3])
    assert int(occluded.sum()) > 100  # the construct really has occlusion
    # Every truly occluded pixel is rejected; the only other rejections are a thin band at the square's edges, where
    # bilinear depth mixes foreground and background (1-2 pixels along the edges: < 2 * perimeter).
    assert bool(rejected[occluded].all())
    assert int((rejected & ~occluded).sum()) <= 2 * 2 * (HEIGHT + WIDTH)
    assert pair.mse < 1e-4
    # Without the depth test the occluded background is compared with the square's colours.
    no_test = pair_consistency(images[0], depths[0], cam0, images[1], depths[1], cam1, depth_rtol=None)
    assert no_test.mse > 20 * pair.mse
    with_test = reprojective_colour_consistency(images, depths, cameras)
    without = reprojective_colour_consistency(images, depths, cameras, depth_rtol=None)
    assert with_test.rcc_db > 40.0 and without.rcc_db < with_test.rcc_db - 10


def test_pixels_landing_outside_are_excluded(generic_video):
    cameras, images, depths, _ = generic_video
    cam0, cam1 = PinholeCamera.from_cameras(cameras, 0), PinholeCamera.from_cameras(cameras, 1)
    rep = reproject(depths[0], cam0, cam1)
    u, v = rep.coords[..., 0], rep.coords[..., 1]
    landed_inside = (u >= 0) & (u < WIDTH) & (v >= 0) & (v < HEIGHT)
    assert torch.equal(rep.inside, landed_inside)
    assert 0.8 < float(rep.inside.float().mean()) < 1.0
    pair = pair_consistency(images[0], depths[0], cam0, images[1], depths[1], cam1)
    assert not bool(pair.valid[~rep.inside].any())


def test_pairs_without_valid_pixels_are_skipped_and_all_empty_is_an_error():
    forward = ((0.0, 0.0, 0.0), 0.0)
    backward = ((0.0, 0.0, 0.0), 180.0)  # looks along +z, away from every plane
    cameras = make_cameras([forward, ((0.1, 0.0, 0.0), 0.0), backward, ((0.2, 0.0, 0.0), 0.0)])
    images, depths, _, _ = render(cameras, [BACKGROUND])
    result = reprojective_colour_consistency(images, depths, cameras)
    assert result.num_pairs_used == 1
    assert math.isnan(result.mse_per_pair[1]) and math.isnan(result.mse_per_pair[2])
    assert result.valid_fraction_per_pair[1:] == [0.0, 0.0]
    assert result.rcc_db == pytest.approx(mse_to_psnr(result.mse_per_pair[0]))
    assert result.to_dict()["mse_per_pair"][1] is None
    with pytest.raises(ValueError, match="no pair"):
        reprojective_colour_consistency(images[1:3], depths[1:3], cameras[1:3])


def test_accumulator_and_model_outputs_match_the_batch_function(generic_video):
    cameras, images, depths, _ = generic_video
    batch = reprojective_colour_consistency(images, depths, cameras)
    accumulator = RCCAccumulator()
    first = accumulator.add(images[0], depths[0], cameras[0:1])
    assert first is None
    for i in range(1, len(images)):
        accumulator.add(images[i], depths[i][..., 0], cameras[i : i + 1])  # [H, W] depth is accepted
    assert accumulator.result().rcc_db == pytest.approx(batch.rcc_db, abs=1e-9)
    outputs = [
        {"rgb": images[i], "depth": depths[i], "accumulation": (depths[i] > 0).float()} for i in range(len(images))
    ]
    assert rcc_from_outputs(outputs, cameras).rcc_db == pytest.approx(batch.rcc_db, abs=1e-9)
    masked = rcc_from_outputs(outputs, cameras, min_accumulation=0.5)
    assert masked.rcc_db == pytest.approx(batch.rcc_db, abs=1e-9)  # every pixel hits a plane here
    with pytest.raises(KeyError, match="rgb_nerf"):
        rcc_from_outputs(outputs, cameras, rgb_key="rgb_nerf")


def test_input_shape_errors_are_clear(generic_video):
    cameras, images, depths, _ = generic_video
    with pytest.raises(ValueError, match=r"images must be \[N, H, W, 3\]"):
        reprojective_colour_consistency(images[..., 0], depths, cameras)
    with pytest.raises(ValueError, match="do not match images"):
        reprojective_colour_consistency(images, depths[:, :-1], cameras)
    with pytest.raises(ValueError, match="at least 2 frames"):
        reprojective_colour_consistency(images[:1], depths[:1], cameras[:1])
    with pytest.raises(ValueError, match="5 frames but 4 cameras"):
        reprojective_colour_consistency(images, depths, cameras[:4])
    with pytest.raises(ValueError, match="but its camera is 80x60"):
        reprojective_colour_consistency(images[:, :, :40], depths[:, :, :40], cameras)
    with pytest.raises(ValueError, match="depth_kind"):
        reprojective_colour_consistency(images, depths, cameras, depth_kind="disparity")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sampling"):
        reprojective_colour_consistency(images, depths, cameras, sampling="bicubic")  # type: ignore[arg-type]
    accumulator = RCCAccumulator()
    accumulator.add(images[0], depths[0], cameras[0:1])
    with pytest.raises(ValueError, match="WxH"):
        accumulator.add(images[1, :, :40], depths[1, :, :40], cameras[1:2])


def test_distorted_or_non_perspective_cameras_are_refused(generic_video):
    cameras, images, depths, _ = generic_video
    distortion = torch.zeros(len(GENERIC_POSES), 6)
    distortion[2, 0] = 0.1
    distorted = make_cameras(GENERIC_POSES, distortion_params=distortion)
    with pytest.raises(ValueError, match="undistorted"):
        reprojective_colour_consistency(images, depths, distorted)
    fisheye = make_cameras(GENERIC_POSES, camera_type=CameraType.FISHEYE)
    with pytest.raises(ValueError, match="perspective"):
        reprojective_colour_consistency(images, depths, fisheye)
