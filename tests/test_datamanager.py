"""The DataManager's batches: latent patches, autoencoder crops, sparse-depth rays."""

from __future__ import annotations

import pytest
import torch

from relsnerf_ns.data.relsnerf_datamanager import SPARSE_DEPTH_KEY, largest_patch

from .conftest import tiny_config


@pytest.fixture(scope="module")
def datamanager(scene, tmp_path_factory):
    config = tiny_config("relsnerf-r32", scene, tmp_path_factory.mktemp("dm"))
    config.pipeline.model.depth_loss_mult = 0.1  # the depth rays are drawn only when the model's depth loss is on
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    return pipeline.datamanager


def test_latent_patch_pairs_rays_with_its_image_patch(datamanager):
    patch = datamanager.next_latent_patch()
    assert patch.size == 32 and patch.latent_size == 4  # 4 latent pixels -> 32x32 pixels
    image = datamanager.train_images[patch.camera_index]
    expected = image[patch.top : patch.top + 32, patch.left : patch.left + 32, :3].permute(2, 0, 1)
    torch.testing.assert_close(patch.image, expected)
    cameras = datamanager.train_cameras
    full = cameras.generate_rays(camera_indices=patch.camera_index, keep_shape=True)
    # Block centre (top + 8i + 4, left + 8j + 4) lies between pixels; its direction is the mean of the 4 around it.
    i, j = 2, 3
    y, x = patch.top + 8 * i + 3, patch.left + 8 * j + 3
    around = full.directions[y : y + 2, x : x + 2].reshape(4, 3).mean(0)
    around = around / around.norm()
    torch.testing.assert_close(patch.ray_bundle.directions[i, j], around, atol=2e-3, rtol=0)


def test_joint_batch_has_rays_and_a_patch(datamanager):
    ray_bundle, batch = datamanager.next_joint(0)
    assert len(ray_bundle) == 256 and batch["image"].shape == (256, 3)
    assert batch["latent_patch"].ray_bundle.shape == (4, 4)
    assert "depth_rays" not in batch  # the nerfstudio dataparser gives no sparse depth


def test_several_latent_patches_per_step_come_as_a_list(datamanager):
    datamanager.config.latent_patches_per_step = 3
    try:
        _, batch = datamanager.next_joint(0)
    finally:
        datamanager.config.latent_patches_per_step = 1
    patches = batch["latent_patch"]
    assert isinstance(patches, list) and len(patches) == 3
    assert all(p.ray_bundle.shape == (4, 4) and p.image.shape == (3, 32, 32) for p in patches)
    assert len({(p.camera_index, p.top, p.left) for p in patches}) == 3  # drawn apart


def test_autoencoder_crops(datamanager):
    crops = datamanager.next_ae_batch(0)
    assert crops.shape == (2, 3, 48, 48)  # 64 requested, shrunk to the 48-pixel image height
    assert crops.min() >= 0 and crops.max() <= 1


def test_patch_sizes_shrink_to_fit_in_multiples_of_8():
    assert largest_patch(256, [torch.zeros(100, 300, 3), torch.zeros(120, 90, 3)]) == 88
    with pytest.raises(ValueError, match="at least 16x16"):  # a 2x2 latent patch (R32's instance norms need it)
        largest_patch(256, [torch.zeros(12, 300, 3)])


def test_sparse_depth_rays_end_at_the_points(datamanager):
    cameras = datamanager.train_cameras
    # Points at known pixels and z-depths in two images.
    points = {
        0: torch.tensor([[10.5, 20.5, 2.0, 1.0], [50.0, 5.0, 3.0, 0.5]]),
        3: torch.tensor([[30.0, 40.0, 1.5, 1.0]]),
    }
    per_image = [points.get(i, torch.zeros(0, 4)) for i in range(len(cameras))]
    datamanager.train_dataparser_outputs.metadata[SPARSE_DEPTH_KEY] = per_image
    try:
        datamanager.sparse_depth = datamanager._collect_sparse_depth()
        bundle, distance, weight = datamanager.next_depth_rays()
    finally:
        del datamanager.train_dataparser_outputs.metadata[SPARSE_DEPTH_KEY]
        datamanager.sparse_depth = None
    assert len(bundle) == 64 and distance.shape == (64, 1)
    ends = bundle.origins + distance * bundle.directions
    for n in range(64):
        index = int(bundle.camera_indices[n])
        c2w = cameras.camera_to_worlds[index]
        local = (ends[n] - c2w[:, 3]) @ c2w[:, :3]
        depth = -local[2]
        x = float(cameras.fx[index]) * local[0] / depth + float(cameras.cx[index])
        y = -float(cameras.fy[index]) * local[1] / depth + float(cameras.cy[index])
        match = [p for p in points[index] if abs(p[0] - x) < 1e-3 and abs(p[1] - y) < 1e-3]
        assert len(match) == 1, (index, x, y)
        assert depth == pytest.approx(float(match[0][2]), abs=1e-4)
        assert float(weight[n]) == float(match[0][3])


def test_depth_loss_off_is_said_once_with_its_reason(datamanager, capsys):
    metadata = datamanager.train_dataparser_outputs.metadata
    count = len(datamanager.train_cameras)
    try:
        for per_image, rays, reason in (
            (None, 64, "the dataparser gives no sparse depth"),
            ([torch.zeros(0, 4)] * count, 64, "no training image has sparse points"),
            ([torch.tensor([[10.0, 10.0, 2.0, 1.0]])] * count, 0, "depth_rays_per_batch is 0"),
        ):
            metadata.pop(SPARSE_DEPTH_KEY, None)
            if per_image is not None:
                metadata[SPARSE_DEPTH_KEY] = per_image
            datamanager.config.depth_rays_per_batch = rays
            capsys.readouterr()
            assert datamanager._collect_sparse_depth() is None
            printed = " ".join(capsys.readouterr().out.split())
            assert printed.count("DS-NeRF depth loss off") == 1 and reason in printed, printed
    finally:
        metadata.pop(SPARSE_DEPTH_KEY, None)
        datamanager.config.depth_rays_per_batch = 64
        datamanager.sparse_depth = None
