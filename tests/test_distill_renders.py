"""Phase C's render cache in the run directory: reused when complete, only missing or damaged renders made again."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from PIL import Image

from relsnerf_ns.training.distill_renders import MANIFEST, DistillRenders

COUNT = 5


def training_cameras(n: int = 4, width: int = 24, height: int = 16) -> Cameras:
    c2w = torch.eye(4)[:3].repeat(n, 1, 1)
    c2w[:, 0, 3] = torch.linspace(-1, 1, n)
    c2w[:, 2, 3] = 3.0
    return Cameras(camera_to_worlds=c2w, fx=20.0, fy=20.0, cx=width / 2, cy=height / 2, width=width, height=height)


class FakeNerf:
    """Renders a flat colour that depends on the camera position; remembers which cameras it rendered."""

    def __init__(self) -> None:
        self.rendered = []

    def __call__(self, camera: Cameras) -> torch.Tensor:
        self.rendered.append(camera.camera_to_worlds[0, :, 3].clone())
        height, width = int(camera.height[0]), int(camera.width[0])
        value = torch.sigmoid(camera.camera_to_worlds[0, :, 3])
        return value.expand(height, width, 3).clone()


def build(directory, seed=0, fingerprint=1.0):
    nerf = FakeNerf()
    renders = DistillRenders(training_cameras(), COUNT, seed, directory, nerf_fingerprint=fingerprint)
    renders.build(nerf)
    return renders, nerf


def message(capsys) -> str:
    return " ".join(capsys.readouterr().out.split())


@pytest.fixture()
def cache(tmp_path, capsys):
    directory = tmp_path / "distill_renders"
    complete, nerf = build(directory)
    assert len(nerf.rendered) == COUNT and f"Phase C renders: making {COUNT} in" in message(capsys)
    return directory, complete


def test_a_complete_matching_cache_is_reused(cache, capsys):
    directory, complete = cache
    again, nerf = build(directory)
    assert nerf.rendered == []
    assert f"all {COUNT} reused" in message(capsys)
    for a, b in zip(again.images, complete.images):
        assert torch.equal(a, b)


def test_missing_truncated_and_wrong_size_renders_are_made_again_alone(cache, capsys):
    directory, complete = cache
    (directory / "render_0001.png").unlink()
    damaged = directory / "render_0002.png"
    damaged.write_bytes(damaged.read_bytes()[:-30])  # truncated: the end of the image data and IEND are gone
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(directory / "render_0004.png")
    again, nerf = build(directory)
    assert len(nerf.rendered) == 3
    for index in (1, 2, 4):  # exactly the damaged ones, at their own cameras
        assert any(torch.equal(position, again.cameras.camera_to_worlds[index, :, 3]) for position in nerf.rendered)
    text = message(capsys)
    assert "2 reused, 3 made again (1 missing, 1 of the wrong size, 1 unreadable or truncated)" in text
    for a, b in zip(again.images, complete.images):
        assert torch.equal(a, b)
    # ... and the cache is complete again.
    build(directory)
    assert f"all {COUNT} reused" in message(capsys)


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(seed=1), "made for other cameras"),
        (dict(fingerprint=2.0), "made from another NeRF"),
        ("garbage manifest", "without a readable cameras.json"),
        ("one camera moved", "made for other cameras"),
    ],
)
def test_renders_that_do_not_match_the_manifest_are_made_again(cache, capsys, change, reason):
    directory, _ = cache
    if change == "garbage manifest":
        (directory / MANIFEST).write_text('{"version": 2, "cam')
        change = {}
    elif change == "one camera moved":
        manifest = json.loads((directory / MANIFEST).read_text())
        manifest["cameras"][3]["fx"] += 1.0
        (directory / MANIFEST).write_text(json.dumps(manifest))
        change = {}
    again, nerf = build(directory, **change)
    expected = 1 if reason == "made for other cameras" and not change else COUNT
    assert len(nerf.rendered) == expected
    assert f"{COUNT - expected} reused, {expected} made again ({expected} {reason})" in message(capsys)
    assert json.loads((directory / MANIFEST).read_text())["seed"] == change.get("seed", 0)
    assert sorted(p.name for p in directory.iterdir()) == [MANIFEST] + [f"render_{i:04d}.png" for i in range(COUNT)]
