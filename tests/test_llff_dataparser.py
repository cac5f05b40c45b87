"""The llff-data dataparser on a procedural LLFF scene with known poses and COLMAP points."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from nerfstudio.data.utils import colmap_parsing_utils as colmap_utils
from PIL import Image

from relsnerf_ns.data.llff_dataparser import (
    SPARSE_DEPTH_KEY,
    LLFFDataError,
    LLFFDataParserConfig,
    LLFFMissingFileError,
)
from relsnerf_ns.training.phases import Phase

WIDTH, HEIGHT, FOCAL = 40, 30, 35.0  # full-size images (images/); images_2/ holds 20x15 copies
NUM_IMAGES, NUM_POINTS = 17, 300


@dataclass
class Truth:
    """What the procedural scene was made from (world frame, OpenGL cameras, rows in sorted image-name order)."""

    c2w: np.ndarray  # [N, 3, 4]
    points: np.ndarray  # [P, 3]
    errors: np.ndarray  # [P]
    seen_by_row: List[np.ndarray]  # per row, indices of the points whose track holds that image
    bounds: np.ndarray  # [N, 2]


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _axis_depth(points: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    return (points - c2w[:, 3]) @ -c2w[:, 2]


def _pixels(points: np.ndarray, c2w: np.ndarray, factor: int) -> np.ndarray:
    local = (points - c2w[:, 3]) @ c2w[:, :3]
    depth = -local[:, 2]
    f = FOCAL / factor
    return np.stack([WIDTH / factor / 2 + f * local[:, 0] / depth, HEIGHT / factor / 2 - f * local[:, 1] / depth], -1)


def write_llff_scene(root: Path, seed: int = 0) -> Truth:
    """An LLFF scene: poses_bounds.npy, images/ and images_2/, sparse/0 with cameras, images and points (binary).

    A forward-facing rig turned by an arbitrary rotation and offset; COLMAP numbers the images in a shuffled order
    (so name order and id order differ), and each point is seen by a random subset of the images it projects into.
    """
    rng = np.random.default_rng(seed)
    world = _rotation(np.array([0.3, -1.0, 0.5]), 1.1)
    offset = np.array([2.0, -1.0, 3.0])
    c2w = np.zeros((NUM_IMAGES, 3, 4))
    for n in range(NUM_IMAGES):
        wobble = _rotation(rng.normal(size=3), rng.uniform(-0.08, 0.08))
        c2w[n, :, :3] = world @ wobble
        c2w[n, :, 3] = world @ np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.4, 0.4), 0.0]) + offset
    depth = rng.uniform(4.0, 10.0, NUM_POINTS)
    local = np.stack([rng.uniform(-0.4, 0.4, NUM_POINTS) * depth, rng.uniform(-0.3, 0.3, NUM_POINTS) * depth, -depth])
    points = local.T @ world.T + offset
    errors = rng.uniform(0.1, 2.0, NUM_POINTS)

    image_ids = rng.permutation(NUM_IMAGES) + 1  # COLMAP id of each row
    tracks: List[List[int]] = [[] for _ in range(NUM_POINTS)]
    for row in range(NUM_IMAGES):
        xy = _pixels(points, c2w[row], 1)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < WIDTH) & (xy[:, 1] >= 0) & (xy[:, 1] < HEIGHT)
        for p in np.flatnonzero(inside & (rng.uniform(size=NUM_POINTS) < 0.6)):
            tracks[p].append(row)
    for p, track in enumerate(tracks):
        if len(track) >= 2:
            tracks[p] = track + track[:1]  # a repeated image in a track, as COLMAP tracks can have
    seen_by_row = [np.array([p for p in range(NUM_POINTS) if row in tracks[p]]) for row in range(NUM_IMAGES)]
    bounds = np.array(  # what LLFF's imgs2poses writes: percentiles of the depths of the points each image saw
        [np.percentile(_axis_depth(points[seen], c2w[row]), [0.1, 99.9]) for row, seen in enumerate(seen_by_row)]
    )

    hwf = np.array([HEIGHT, WIDTH, FOCAL])
    llff = np.stack([-c2w[:, :, 1], c2w[:, :, 0], c2w[:, :, 2], c2w[:, :, 3], np.tile(hwf, (NUM_IMAGES, 1))], -1)
    np.save(root / "poses_bounds.npy", np.concatenate([llff.reshape(NUM_IMAGES, 15), bounds], 1))

    for folder, factor in (("images", 1), ("images_2", 2)):
        (root / folder).mkdir()
        for row in range(NUM_IMAGES):
            pixels = rng.integers(0, 255, (HEIGHT // factor, WIDTH // factor, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"image{row:03d}.png")

    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True)
    camera = colmap_utils.Camera(id=1, model="SIMPLE_RADIAL", width=WIDTH, height=HEIGHT, params=[FOCAL, 20, 15, 0])
    colmap_utils.write_cameras_binary({1: camera}, sparse / "cameras.bin")
    images = {}
    for row in np.argsort(image_ids):  # written in id order, as COLMAP does
        image_id = int(image_ids[row])
        rotation = c2w[row, :, :3] * np.array([1, -1, -1])  # OpenGL -> OpenCV camera axes
        qvec = colmap_utils.rotmat2qvec(rotation.T)
        tvec = -rotation.T @ c2w[row, :, 3]
        images[image_id] = colmap_utils.BaseImage(
            id=image_id,
            qvec=qvec,
            tvec=tvec,
            camera_id=1,
            name=f"IMG_{100 + row}.JPG",
            xys=np.zeros((0, 2)),
            point3D_ids=np.zeros(0, dtype=np.int64),
        )
    colmap_utils.write_images_binary(images, sparse / "images.bin")
    colmap_points = {
        p + 1: colmap_utils.Point3D(
            id=p + 1,
            xyz=points[p],
            rgb=np.array([10, 20, 30]),
            error=float(errors[p]),
            image_ids=np.array([image_ids[row] for row in tracks[p]], dtype=np.int64),
            point2D_idxs=np.arange(len(tracks[p])),
        )
        for p in range(NUM_POINTS)
    }
    colmap_utils.write_points3D_binary(colmap_points, sparse / "points3D.bin")
    return Truth(c2w=c2w, points=points, errors=errors, seen_by_row=seen_by_row, bounds=bounds)


@pytest.fixture(scope="module")
def llff(tmp_path_factory) -> Dict:
    root = tmp_path_factory.mktemp("llff")
    truth = write_llff_scene(root)
    no_images_bin = tmp_path_factory.mktemp("llff_no_images_bin") / "scene"
    shutil.copytree(root, no_images_bin)
    (no_images_bin / "sparse" / "0" / "images.bin").unlink()
    return {"root": root, "truth": truth, "no_images_bin": no_images_bin}


def parse(root: Path, split: str = "train", **kwargs):
    kwargs.setdefault("downscale_factor", 2)  # the test scene has images/ and images_2/
    parser = LLFFDataParserConfig(data=root, **kwargs).setup()
    return parser, parser.get_dataparser_outputs(split)


def test_poses_round_trip_to_the_camera_to_world_matrices(llff):
    truth = llff["truth"]
    for split in ("train", "val"):
        parser, outputs = parse(llff["root"], split, downscale_factor=2)
        rows = parser.split_indices(split)
        original = outputs.transform_poses_to_original_space(outputs.cameras.camera_to_worlds, "opengl")
        torch.testing.assert_close(original, torch.from_numpy(truth.c2w[rows]).float(), atol=1e-4, rtol=0)
    # Normalised: average camera at the origin looking along +y with up +z, nearest bound at distance 1.
    scene_c2w = parser.scene.scene_c2w()
    np.testing.assert_allclose(scene_c2w[:, :, 3].mean(0), 0, atol=1e-9)
    forward, up = -scene_c2w[:, :, 2].mean(0), scene_c2w[:, :, 1].mean(0)
    np.testing.assert_allclose(forward / np.linalg.norm(forward), [0, 1, 0], atol=1e-9)
    assert up[0] == pytest.approx(0, abs=1e-9) and up[2] > 0.99  # up is made orthogonal to the mean forward
    assert truth.bounds[:, 0].min() * outputs.dataparser_scale == pytest.approx(1.0)
    assert outputs.scene_box.aabb.tolist() == [[-1, -1, -1], [1, 1, 1]]


def test_intrinsics_scale_with_the_downscale_factor(llff):
    for factor in (1, 2):
        _, outputs = parse(llff["root"], downscale_factor=factor)
        cameras = outputs.cameras
        assert torch.all(cameras.width == WIDTH // factor) and torch.all(cameras.height == HEIGHT // factor)
        torch.testing.assert_close(cameras.fx, torch.full_like(cameras.fx, FOCAL / factor))
        torch.testing.assert_close(cameras.fy, torch.full_like(cameras.fy, FOCAL / factor))
        torch.testing.assert_close(cameras.cx, torch.full_like(cameras.cx, WIDTH / factor / 2))
        torch.testing.assert_close(cameras.cy, torch.full_like(cameras.cy, HEIGHT / factor / 2))
        assert all(path.parent.name == ("images" if factor == 1 else "images_2") for path in outputs.image_filenames)


def test_every_eighth_image_is_held_out(llff):
    _, train = parse(llff["root"])
    _, val = parse(llff["root"], "val")
    assert [p.name for p in val.image_filenames] == ["image000.png", "image008.png", "image016.png"]
    assert len(train.image_filenames) == NUM_IMAGES - 3 and not set(train.image_filenames) & set(val.image_filenames)
    _, val4 = parse(llff["root"], "val", eval_interval=4)
    assert [p.name for p in val4.image_filenames] == [f"image{i:03d}.png" for i in (0, 4, 8, 12, 16)]
    with pytest.raises(LLFFDataError, match="eval-interval"):
        parse(llff["root"], eval_interval=0)


@pytest.mark.parametrize("scene", ["root", "no_images_bin"])
@pytest.mark.parametrize("factor", [1, 2])
def test_sparse_depth_is_the_distance_along_the_camera_axis(llff, scene, factor):
    truth: Truth = llff["truth"]
    parser, outputs = parse(llff[scene], downscale_factor=factor)
    expected_source = "images.bin" if scene == "root" else "track ids matched by bounds (ids permuted)"
    assert parser.scene.sparse.source == expected_source
    rows = parser.split_indices("train")
    per_image = outputs.metadata[SPARSE_DEPTH_KEY]
    assert len(per_image) == len(rows) == len(outputs.image_filenames)
    weights = 2 * np.exp(-((truth.errors / truth.errors.mean()) ** 2))
    for got, row in zip(per_image, rows):
        seen = truth.seen_by_row[row]
        depth = _axis_depth(truth.points[seen], truth.c2w[row])
        keep = (depth >= truth.bounds[row, 0]) & (depth <= truth.bounds[row, 1])  # DS-NeRF drops out-of-bounds
        seen, depth = seen[keep], depth[keep]
        xy = _pixels(truth.points[seen], truth.c2w[row], factor)
        expected = np.concatenate([xy, depth[:, None] * outputs.dataparser_scale, weights[seen, None]], 1)
        got = got.double().numpy()
        assert got.shape == expected.shape and len(got) > 10
        order_got, order_expected = np.lexsort(got[:, :2].T), np.lexsort(expected[:, :2].T)
        np.testing.assert_allclose(got[order_got], expected[order_expected], rtol=1e-5, atol=1e-4)


def test_sparse_depth_rays_end_at_the_points(llff):
    """Through the ReLS-NeRF datamanager: rays through the (x, y) of a sparse point reach it at the given distance."""
    from relsnerf_ns.data.relsnerf_datamanager import RelsNerfDataManagerConfig

    config = RelsNerfDataManagerConfig(
        dataparser=LLFFDataParserConfig(data=llff["root"], downscale_factor=1), depth_rays_per_batch=64
    )
    datamanager = config.setup(device="cpu", test_mode="val")
    bundle, distance, weight = datamanager.next_depth_rays()
    outputs = datamanager.train_dataparser_outputs
    ends = (bundle.origins + distance * bundle.directions).double()
    transform = outputs.dataparser_transform.double()
    world = (ends / outputs.dataparser_scale - transform[:, 3]) @ transform[:, :3]  # inverse of the rigid transform
    nearest = torch.cdist(world, torch.from_numpy(llff["truth"].points)).min(1).values
    assert float(nearest.max()) < 1e-3
    assert torch.all(weight > 0) and torch.all(weight <= 2)


def test_outputs_load_as_a_plain_nerfstudio_dataset(llff):
    """Methods that ignore sparse depth (nerfacto) read the same outputs through nerfstudio's InputDataset."""
    from nerfstudio.data.datasets.base_dataset import InputDataset

    _, outputs = parse(llff["root"], downscale_factor=2)
    item = InputDataset(outputs)[0]
    assert item["image"].shape == (HEIGHT // 2, WIDTH // 2, 3)
    assert outputs.metadata["points3D_xyz"].shape == (NUM_POINTS, 3)


def test_without_a_sparse_model_depth_is_off_with_one_message(llff, tmp_path, capsys):
    scene = tmp_path / "scene"
    shutil.copytree(llff["root"], scene)
    shutil.rmtree(scene / "sparse")
    parser = LLFFDataParserConfig(data=scene, downscale_factor=2).setup()
    for split in ("train", "val", "test"):
        # None (not absent): the datamanager knows the dataparser has already said why, and stays quiet.
        metadata = parser.get_dataparser_outputs(split).metadata
        assert SPARSE_DEPTH_KEY in metadata and metadata[SPARSE_DEPTH_KEY] is None
    assert " ".join(capsys.readouterr().out.split()).count("depth supervision is off") == 1  # rich wraps lines


def test_unmatched_track_ids_fall_back_to_projection(llff, tmp_path, capsys):
    scene = tmp_path / "scene"
    shutil.copytree(llff["no_images_bin"], scene)
    array = np.load(scene / "poses_bounds.npy")
    array[:, 15:] *= 1.2  # bounds no longer reproduced by any track: ids cannot be told apart
    np.save(scene / "poses_bounds.npy", array)
    parser, outputs = parse(scene)
    assert parser.scene.sparse.source == "projection"
    assert "cannot tell which image each track id is" in " ".join(capsys.readouterr().out.split())  # rich wraps
    assert sum(len(points) for points in outputs.metadata[SPARSE_DEPTH_KEY]) > 0


def test_clear_errors(llff, tmp_path):
    scene = tmp_path / "scene"
    shutil.copytree(llff["root"], scene)
    with pytest.raises(LLFFMissingFileError, match=r"images_4 .*images, images_2"):
        parse(scene, downscale_factor=4)
    (scene / "images_2" / "image016.png").unlink()
    with pytest.raises(LLFFDataError, match="17 poses but .*images_2 has 16 images"):
        parse(scene, downscale_factor=2)
    (scene / "images" / "image003.png").write_bytes(b"not a png")
    with pytest.raises(LLFFDataError, match=r"cannot read image .*image003\.png.*Replace it .*poses_bounds\.npy"):
        parse(scene, downscale_factor=1)
    (scene / "poses_bounds.npy").unlink()
    with pytest.raises(FileNotFoundError, match="no poses_bounds.npy in"):
        parse(scene, downscale_factor=1)


def test_registered_as_llff_data():
    from nerfstudio.plugins.registry_dataparser import discover_dataparsers

    dataparsers, descriptions = discover_dataparsers()
    assert isinstance(dataparsers["llff-data"], LLFFDataParserConfig) and "LLFF" in descriptions["llff-data"]


def test_pipeline_without_sparse_depth_has_no_depth_loss_and_one_message(llff, tmp_path, capsys):
    """The dataparser says once that depth supervision is off; the datamanager and phase B add nothing."""
    from .conftest import tiny_config

    runs = {}
    for name, remove_sparse in (("with_sparse", False), ("without_sparse", True)):
        scene = tmp_path / name
        shutil.copytree(llff["root"], scene)
        if remove_sparse:
            shutil.rmtree(scene / "sparse")
        config = tiny_config("relsnerf-r32", scene, tmp_path / "out")
        config.pipeline.model.recipe = "paper"  # the recipe with the depth loss on
        config.pipeline.datamanager.dataparser = LLFFDataParserConfig(data=scene, downscale_factor=1)
        capsys.readouterr()
        pipeline = config.pipeline.setup(device="cpu", test_mode="val")
        step = pipeline.schedule.start_of(Phase.JOINT)
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        runs[name] = (pipeline, loss_dict, " ".join(capsys.readouterr().out.split()))
    pipeline, loss_dict, printed = runs["with_sparse"]
    assert "depth_loss" in loss_dict and float(loss_dict["depth_loss"]) > 0  # the control: depth supervises
    assert "depth supervision is off" not in printed and "DS-NeRF depth loss on" in printed
    pipeline, loss_dict, printed = runs["without_sparse"]
    assert pipeline.datamanager.sparse_depth is None and pipeline.datamanager.next_depth_rays() is None
    assert "depth_loss" not in loss_dict and "patch_loss" in loss_dict
    assert printed.count("depth supervision is off") == 1 and "DS-NeRF depth loss" not in printed
