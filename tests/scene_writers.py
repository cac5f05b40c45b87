"""Procedural inputs several test modules share: an LLFF scene with COLMAP points, and a viewer camera path."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np
import torch
from nerfstudio.data.utils import colmap_parsing_utils as colmap_utils
from PIL import Image

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


def axis_depth(points: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    return (points - c2w[:, 3]) @ -c2w[:, 2]


def project_to_pixels(points: np.ndarray, c2w: np.ndarray, factor: int) -> np.ndarray:
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
        xy = project_to_pixels(points, c2w[row], 1)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < WIDTH) & (xy[:, 1] >= 0) & (xy[:, 1] < HEIGHT)
        for p in np.flatnonzero(inside & (rng.uniform(size=NUM_POINTS) < 0.6)):
            tracks[p].append(row)
    for p, track in enumerate(tracks):
        if len(track) >= 2:
            tracks[p] = track + track[:1]  # a repeated image in a track, as COLMAP tracks can have
    seen_by_row = [np.array([p for p in range(NUM_POINTS) if row in tracks[p]]) for row in range(NUM_IMAGES)]
    bounds = np.array(  # what LLFF's imgs2poses writes: percentiles of the depths of the points each image saw
        [np.percentile(axis_depth(points[seen], c2w[row]), [0.1, 99.9]) for row, seen in enumerate(seen_by_row)]
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


def write_camera_path(path: Path, pipeline, width: int, height: int) -> List[torch.Tensor]:
    """A camera path in the viewer's format through three training cameras (world = nerfstudio's frame)."""
    cameras = pipeline.datamanager.train_dataset.cameras
    poses, keyframes = [], []
    for index in (0, 3, 6):
        c2w = torch.eye(4)
        c2w[:3] = cameras.camera_to_worlds[index]
        fov = math.degrees(2 * math.atan(float(cameras.height[index]) / (2 * float(cameras.fy[index]))))
        keyframes.append({"camera_to_world": c2w.flatten().tolist(), "fov": fov, "aspect": width / height})
        poses.append(c2w)
    path.write_text(
        json.dumps(
            {
                "camera_type": "perspective",
                "render_width": width,
                "render_height": height,
                "seconds": 3,
                "camera_path": keyframes,
            }
        )
    )
    return poses
