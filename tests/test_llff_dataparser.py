"""The llff-data dataparser on a procedural LLFF scene with known poses and COLMAP points."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from relsnerf_ns.data.llff_dataparser import (
    SPARSE_DEPTH_KEY,
    LLFFDataError,
    LLFFDataParserConfig,
    LLFFMissingFileError,
)
from relsnerf_ns.training.phases import Phase

from .scene_writers import (
    FOCAL,
    HEIGHT,
    NUM_IMAGES,
    NUM_POINTS,
    WIDTH,
    Truth,
    axis_depth,
    project_to_pixels,
    write_llff_scene,
)


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
        depth = axis_depth(truth.points[seen], truth.c2w[row])
        keep = (depth >= truth.bounds[row, 0]) & (depth <= truth.bounds[row, 1])  # DS-NeRF drops out-of-bounds
        seen, depth = seen[keep], depth[keep]
        xy = project_to_pixels(truth.points[seen], truth.c2w[row], factor)
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
