"""A small procedural scene in nerfstudio's data format, made by ray casting (nothing is downloaded).

A red-and-yellow ball, a blue crate and a green striped post stand on a tiled floor in front of a striped wall, lit by
one sun with hard shadows; cameras on a 70-degree arc look at them, so near objects move against the wall (parallax).
The textures are bold and low-frequency: a NeRF fits them in minutes on a CPU and a person recognises the objects at
128x96. Used by `make demo` and the tests.

    python -m relsnerf_ns.demo_scene OUTPUT_DIR [--width 128 --height 96 --num-views 16 --hold-out-every 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

FLOOR_Y = 0.0
WALL_Z = -2.2
SPHERE_CENTRE, SPHERE_RADIUS = np.array([-0.8, 0.45, 0.15]), 0.45
BOX_CENTRE, BOX_HALF, BOX_YAW = np.array([0.75, 0.32, -0.1]), np.array([0.32, 0.32, 0.32]), np.deg2rad(30.0)
CYLINDER_BASE, CYLINDER_RADIUS, CYLINDER_HEIGHT = np.array([0.05, 0.0, -0.85]), 0.2, 1.05
LOOK_AT = np.array([0.0, 0.35, -0.25])
LIGHT = np.array([-0.45, 0.8, 0.55]) / np.linalg.norm([-0.45, 0.8, 0.55])
AMBIENT = 0.4
BACKGROUND = np.array([0.6, 0.75, 0.95])


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


def demo_camera_poses(num_views: int, radius: float = 4.2, arc_degrees: float = 70.0) -> List[np.ndarray]:
    """Poses on an arc (yaw +-arc/2 around the objects, the height rising and falling a little), looking at them."""
    poses = []
    for i in range(num_views):
        s = i / max(1, num_views - 1)
        yaw = np.deg2rad(arc_degrees * (s - 0.5))
        pitch = np.deg2rad(18.0 + 5.0 * np.sin(2 * np.pi * s))
        offset = radius * np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
        poses.append(look_at(LOOK_AT + offset, LOOK_AT))
    return poses


def soft_stripes(x: np.ndarray, period: float) -> np.ndarray:
    """0..1, a smoothed square wave of the given period (bold bands with soft edges)."""
    return np.clip(0.5 + 1.5 * np.sin(2 * np.pi * x / period), 0.0, 1.0)


def mix(a, b, t: np.ndarray) -> np.ndarray:
    return np.asarray(a)[None] * (1 - t[:, None]) + np.asarray(b)[None] * t[:, None]


# Each primitive: (hit distance [N] (inf where missed), normal [N, 3], colour [N, 3]) of rays (o, d).
Hit = Tuple[np.ndarray, np.ndarray, np.ndarray]


def _plane(o: np.ndarray, d: np.ndarray, axis: int, value: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (value - o[:, axis]) / d[:, axis]
    return np.where(np.isfinite(t) & (t > 1e-4), t, np.inf)


def floor(o: np.ndarray, d: np.ndarray) -> Hit:
    t = _plane(o, d, 1, FLOOR_Y)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    tiles = soft_stripes(p[:, 0], 1.0) * soft_stripes(p[:, 2], 1.0)
    tiles = tiles + (1 - soft_stripes(p[:, 0], 1.0)) * (1 - soft_stripes(p[:, 2], 1.0))
    colour = mix((0.45, 0.33, 0.24), (0.86, 0.78, 0.62), tiles)
    return t, np.broadcast_to([0.0, 1.0, 0.0], o.shape), colour


def wall(o: np.ndarray, d: np.ndarray) -> Hit:
    t = _plane(o, d, 2, WALL_Z)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    stripes = soft_stripes(p[:, 0], 1.2)
    colour = mix((0.93, 0.9, 0.82), (0.55, 0.7, 0.78), stripes) * (0.85 + 0.15 * np.clip(p[:, 1], 0, 1))[:, None]
    return t, np.broadcast_to([0.0, 0.0, 1.0], o.shape), colour


def sphere(o: np.ndarray, d: np.ndarray) -> Hit:
    oc = o - SPHERE_CENTRE
    b = np.sum(oc * d, axis=1)
    disc = b * b - (np.sum(oc * oc, axis=1) - SPHERE_RADIUS**2)
    with np.errstate(invalid="ignore"):
        t = -b - np.sqrt(disc)
    t = np.where((disc > 0) & (t > 1e-4), t, np.inf)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    normal = (p - SPHERE_CENTRE) / SPHERE_RADIUS
    bands = soft_stripes(np.arcsin(np.clip(normal[:, 1], -1, 1)) + 0.3 * np.arctan2(normal[:, 0], normal[:, 2]), 1.0)
    return t, normal, mix((0.85, 0.15, 0.12), (0.98, 0.82, 0.2), bands)


def _box_rotation() -> np.ndarray:
    c, s = np.cos(BOX_YAW), np.sin(BOX_YAW)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # local -> world


def box(o: np.ndarray, d: np.ndarray) -> Hit:
    rotation = _box_rotation()
    lo, ld = (o - BOX_CENTRE) @ rotation, d @ rotation  # world -> local (rows times R = R^T applied)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-BOX_HALF - lo) / ld, (BOX_HALF - lo) / ld
    near = np.nanmax(np.minimum(t1, t2), axis=1)
    far = np.nanmin(np.maximum(t1, t2), axis=1)
    t = np.where((near <= far) & (near > 1e-4), near, np.inf)
    local = lo + np.where(np.isfinite(t), t, 0.0)[:, None] * ld
    scaled = local / BOX_HALF
    face = np.argmax(np.abs(scaled), axis=1)
    normal_local = np.zeros_like(local)
    normal_local[np.arange(len(local)), face] = np.sign(scaled[np.arange(len(local)), face])
    # A lighter square inset on every face (a crate's panel), soft-edged.
    others = np.abs(scaled)
    others[np.arange(len(local)), face] = 0.0
    panel = np.clip((0.72 - others.max(axis=1)) * 12.0, 0.0, 1.0)
    colour = mix((0.12, 0.25, 0.62), (0.45, 0.65, 0.95), panel)
    return t, normal_local @ rotation.T, colour


def cylinder(o: np.ndarray, d: np.ndarray) -> Hit:
    """A vertical post with a flat top."""
    oc = o - CYLINDER_BASE
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = oc[:, 0] * d[:, 0] + oc[:, 2] * d[:, 2]
    c = oc[:, 0] ** 2 + oc[:, 2] ** 2 - CYLINDER_RADIUS**2
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(disc)) / a
    y_side = oc[:, 1] + t_side * d[:, 1]
    t_side = np.where((disc > 0) & (t_side > 1e-4) & (y_side >= 0) & (y_side <= CYLINDER_HEIGHT), t_side, np.inf)
    t_top = _plane(oc, d, 1, CYLINDER_HEIGHT)
    top = oc + np.where(np.isfinite(t_top), t_top, 0.0)[:, None] * d
    t_top = np.where(top[:, 0] ** 2 + top[:, 2] ** 2 <= CYLINDER_RADIUS**2, t_top, np.inf)
    t = np.minimum(t_side, t_top)
    p = oc + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    on_top = t_top <= t_side
    side_normal = np.stack([p[:, 0], np.zeros(len(p)), p[:, 2]], 1) / CYLINDER_RADIUS
    normal = np.where(on_top[:, None], np.array([0.0, 1.0, 0.0]), side_normal)
    stripes = soft_stripes(np.arctan2(p[:, 0], p[:, 2]), 2 * np.pi / 5)
    colour = mix((0.1, 0.5, 0.22), (0.7, 0.9, 0.55), np.where(on_top, 1.0, stripes))
    return t, normal, colour


OBJECTS = (sphere, box, cylinder)


def cast(origins: np.ndarray, directions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Colour [N, 3] and hit distance [N] of rays (directions unit length): Lambert shading with hard shadows."""
    origins = np.broadcast_to(origins, directions.shape)
    best_t = np.full(len(directions), np.inf)
    normal = np.zeros(directions.shape)
    colour = np.broadcast_to(BACKGROUND, directions.shape).copy()
    for primitive in (floor, wall, *OBJECTS):
        t, n, c = primitive(origins, directions)
        closer = t < best_t
        best_t = np.where(closer, t, best_t)
        normal = np.where(closer[:, None], n, normal)
        colour = np.where(closer[:, None], c, colour)
    hit = np.isfinite(best_t)
    points = origins + np.where(hit, best_t, 0.0)[:, None] * directions + 1e-3 * normal
    light = np.broadcast_to(LIGHT, directions.shape)
    shadowed = np.zeros(len(directions), dtype=bool)
    for primitive in OBJECTS:
        shadowed |= np.isfinite(primitive(points, light)[0])
    lambert = np.clip(np.sum(normal * LIGHT, axis=1), 0.0, 1.0) * ~shadowed
    shade = AMBIENT + (1 - AMBIENT) * lambert
    colour = np.where(hit[:, None], colour * shade[:, None], colour)
    return np.clip(colour, 0.0, 1.0), best_t


def pixel_rays(c2w: np.ndarray, width: int, height: int, focal: float) -> Tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    directions = np.stack([(xs - width / 2) / focal, -(ys - height / 2) / focal, -np.ones_like(xs)], -1).reshape(-1, 3)
    directions = directions @ c2w[:3, :3].T
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    origins = np.broadcast_to(c2w[:3, 3], directions.shape)
    return origins, directions


def render_view(c2w: np.ndarray, width: int, height: int, focal: float) -> np.ndarray:
    """[H, W, 3] float image, 3x3 supersampled against aliasing."""
    k = 3
    origins, directions = pixel_rays(c2w, width * k, height * k, focal * k)
    colour, _ = cast(origins, directions)
    return colour.reshape(height, k, width, k, 3).mean(axis=(1, 3))


def held_out_views(num_views: int, every: int) -> List[int]:
    """Every `every`-th view from the middle of the first gap on (never the two ends of the arc): the held-out views
    then lie between training views."""
    if every <= 1:
        return []
    return [i for i in range(every // 2, num_views - 1, every) if i > 0]


def write_demo_scene(
    output: Path,
    width: int = 128,
    height: int = 96,
    num_views: int = 16,
    fov_degrees: float = 50.0,
    hold_out_every: int = 0,
) -> Path:
    """Write images/ and transforms.json (nerfstudio format); returns the scene directory.

    With `hold_out_every` N > 1, transforms.json names its split: every N-th view (between training views) is held
    out for evaluation (`val_filenames`, `test_filenames`), the others train. With 0, nerfstudio-data's own split
    applies (by default 90% train, rounded up)."""
    output = Path(output)
    (output / "images").mkdir(parents=True, exist_ok=True)
    focal = 0.5 * width / np.tan(0.5 * np.deg2rad(fov_degrees))
    frames = []
    for index, c2w in enumerate(demo_camera_poses(num_views)):
        image = render_view(c2w, width, height, focal)
        name = f"images/frame_{index:04d}.png"
        Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(output / name)
        frames.append({"file_path": name, "transform_matrix": c2w.tolist()})
    meta: Dict[str, object] = {
        "camera_model": "OPENCV",
        "fl_x": focal,
        "fl_y": focal,
        "cx": width / 2,
        "cy": height / 2,
        "w": width,
        "h": height,
        "frames": frames,
    }
    held_out = held_out_views(num_views, hold_out_every)
    if held_out:
        names = [frame["file_path"] for frame in frames]
        meta["train_filenames"] = [n for i, n in enumerate(names) if i not in held_out]
        meta["val_filenames"] = meta["test_filenames"] = [names[i] for i in held_out]
    (output / "transforms.json").write_text(json.dumps(meta, indent=1))
    return output


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="scene directory to write")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--num-views", type=int, default=16)
    parser.add_argument("--hold-out-every", type=int, default=0, help="hold out every N-th view")
    args = parser.parse_args(argv)
    path = write_demo_scene(args.output, args.width, args.height, args.num_views, hold_out_every=args.hold_out_every)
    print(f"wrote {args.num_views} views of {args.width}x{args.height} to {path}")


if __name__ == "__main__":
    main()
