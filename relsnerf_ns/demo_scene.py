"""A small procedural scene in nerfstudio's data format, made by ray casting (nothing is downloaded).

Two textured spheres in front of a checkered wall and floor, seen by forward-facing cameras on an arc: enough
structure for a NeRF to fit in minutes on a CPU, and used by `make demo` and the tests.

    python -m relsnerf_ns.demo_scene OUTPUT_DIR [--width 128 --height 96 --num-views 16]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image


@dataclass
class Sphere:
    centre: Tuple[float, float, float]
    radius: float
    colour_a: Tuple[float, float, float]
    colour_b: Tuple[float, float, float]


SPHERES = [
    Sphere((0.0, 0.0, 0.0), 0.55, (0.9, 0.35, 0.2), (0.95, 0.85, 0.3)),
    Sphere((0.85, -0.25, 0.45), 0.3, (0.2, 0.45, 0.9), (0.85, 0.9, 0.95)),
    Sphere((-0.8, -0.3, 0.35), 0.25, (0.25, 0.75, 0.35), (0.1, 0.25, 0.15)),
]
WALL_Z = -1.6
FLOOR_Y = -0.6
LIGHT = np.array([0.4, 0.8, 0.6]) / np.linalg.norm([0.4, 0.8, 0.6])


def look_at(position: np.ndarray, target: np.ndarray, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Camera-to-world 4x4 in nerfstudio/OpenGL convention (x right, y up, camera looks along -z)."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up))
    right = right / np.linalg.norm(right)
    true_up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, -forward, position
    return c2w


def demo_camera_poses(num_views: int, radius: float = 3.2) -> List[np.ndarray]:
    """Forward-facing poses on an arc (+-30 degrees yaw, a little pitch), all looking at the scene centre."""
    poses = []
    for i in range(num_views):
        s = i / max(1, num_views - 1)
        yaw = np.deg2rad(-30.0 + 60.0 * s)
        pitch = np.deg2rad(8.0 + 6.0 * np.sin(2 * np.pi * s))
        position = radius * np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
        poses.append(look_at(position, np.array([0.0, -0.1, 0.0])))
    return poses


def checker(u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    return ((np.floor(u * scale) + np.floor(v * scale)) % 2).astype(np.float64)


def cast(origins: np.ndarray, directions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Colour [N, 3] and hit distance [N] of rays (directions unit length)."""
    n = len(directions)
    best_t = np.full(n, np.inf)
    colour = np.zeros((n, 3))
    normal = np.zeros((n, 3))
    # Wall (z = WALL_Z) and floor (y = FLOOR_Y).
    for axis, value, scale, colours in (
        (2, WALL_Z, 2.5, ((0.85, 0.85, 0.8), (0.3, 0.3, 0.35))),
        (1, FLOOR_Y, 2.0, ((0.6, 0.5, 0.4), (0.25, 0.2, 0.15))),
    ):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (value - origins[:, axis]) / directions[:, axis]
        hit = (t > 1e-4) & (t < best_t)
        points = origins + t[:, None] * directions
        uv = [points[:, k] for k in range(3) if k != axis]
        pattern = checker(uv[0], uv[1], scale)[:, None]
        c = np.asarray(colours[0]) * pattern + np.asarray(colours[1]) * (1 - pattern)
        best_t = np.where(hit, t, best_t)
        colour = np.where(hit[:, None], c, colour)
        nrm = np.zeros(3)
        nrm[axis] = 1.0
        normal = np.where(hit[:, None], nrm, normal)
    for sphere in SPHERES:
        centre = np.asarray(sphere.centre)
        oc = origins - centre
        b = np.sum(oc * directions, axis=1)
        c = np.sum(oc * oc, axis=1) - sphere.radius**2
        disc = b * b - c
        with np.errstate(invalid="ignore"):
            t = -b - np.sqrt(disc)
        hit = (disc > 0) & (t > 1e-4) & (t < best_t)
        points = origins + t[:, None] * directions
        local = (points - centre) / sphere.radius
        theta = np.arctan2(local[:, 0], local[:, 2])
        phi = np.arcsin(np.clip(local[:, 1], -1, 1))
        pattern = checker(theta / np.pi, phi / np.pi, 4.0)[:, None]
        c_s = np.asarray(sphere.colour_a) * pattern + np.asarray(sphere.colour_b) * (1 - pattern)
        best_t = np.where(hit, t, best_t)
        colour = np.where(hit[:, None], c_s, colour)
        normal = np.where(hit[:, None], local, normal)
    shade = 0.35 + 0.65 * np.clip(np.sum(normal * LIGHT, axis=1), 0.0, 1.0)
    colour = np.where(np.isfinite(best_t)[:, None], colour * shade[:, None], np.array([0.55, 0.7, 0.9]))
    return np.clip(colour, 0.0, 1.0), best_t


def pixel_rays(c2w: np.ndarray, width: int, height: int, focal: float) -> Tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    directions = np.stack([(xs - width / 2) / focal, -(ys - height / 2) / focal, -np.ones_like(xs)], -1).reshape(-1, 3)
    directions = directions @ c2w[:3, :3].T
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    origins = np.broadcast_to(c2w[:3, 3], directions.shape)
    return origins, directions


def render_view(c2w: np.ndarray, width: int, height: int, focal: float) -> np.ndarray:
    """[H, W, 3] float image, 2x2 supersampled against aliasing."""
    origins, directions = pixel_rays(c2w, width * 2, height * 2, focal * 2)
    colour, _ = cast(origins, directions)
    return colour.reshape(height, 2, width, 2, 3).mean(axis=(1, 3))


def write_demo_scene(
    output: Path, width: int = 128, height: int = 96, num_views: int = 16, fov_degrees: float = 50.0
) -> Path:
    """Write images/ and transforms.json (nerfstudio format); returns the scene directory."""
    output = Path(output)
    (output / "images").mkdir(parents=True, exist_ok=True)
    focal = 0.5 * width / np.tan(0.5 * np.deg2rad(fov_degrees))
    frames = []
    for index, c2w in enumerate(demo_camera_poses(num_views)):
        image = render_view(c2w, width, height, focal)
        name = f"images/frame_{index:04d}.png"
        Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(output / name)
        frames.append({"file_path": name, "transform_matrix": c2w.tolist()})
    meta = {
        "camera_model": "OPENCV",
        "fl_x": focal,
        "fl_y": focal,
        "cx": width / 2,
        "cy": height / 2,
        "w": width,
        "h": height,
        "frames": frames,
    }
    (output / "transforms.json").write_text(json.dumps(meta, indent=1))
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="scene directory to write")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--num-views", type=int, default=16)
    args = parser.parse_args()
    path = write_demo_scene(args.output, args.width, args.height, args.num_views)
    print(f"wrote {args.num_views} views of {args.width}x{args.height} to {path}")


if __name__ == "__main__":
    main()
