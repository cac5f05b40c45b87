"""LLFF scenes (``poses_bounds.npy`` + ``images_N/``) for nerfstudio, with DS-NeRF sparse depth from COLMAP points.

Registered as the ``llff-data`` dataparser, so it works with any method::

    ns-train relsnerf-r32 llff-data --data SCENE --downscale-factor 4
    ns-train nerfacto llff-data --data SCENE --downscale-factor 4

Scene layout (what LLFF's ``imgs2poses.py`` and the NeRF data release give)::

    SCENE/poses_bounds.npy      N x 17, one row per image in sorted image-name order
    SCENE/images_N/             the images downscaled by N (``images/`` for N = 1)
    SCENE/sparse/0/             optional COLMAP model: points3D.bin (+ cameras.bin, images.bin when present)

Conventions
    Each row of ``poses_bounds.npy`` is a 3x5 matrix ``[R | t | hwf]`` flattened row-major, then ``(near, far)``.
    ``R``'s columns are LLFF's ``[down, right, back]`` axes of the camera in COLMAP's world frame, ``t`` is the camera
    centre, ``hwf = (H, W, focal)`` describes the *full-size* images. ``near``/``far`` are the 0.1 / 99.9 percentiles of
    the depths of the COLMAP points that image saw. nerfstudio wants OpenGL camera-to-world matrices with columns
    ``[right, up, back]``: ``[col1, -col0, col2]``. The focal length is rescaled per axis to the images actually read
    (``focal * w / W``, ``focal * h / H``), the principal point is the image centre and the camera is a pinhole (LLFF's
    and NeRF's convention: COLMAP's small radial term is not used).

Scene normalisation, scene box and contraction (nerfstudio has no NDC)
    The poses are recentred on the average camera and rotated so that the average camera looks along +y with its up
    vector along +z (nerfstudio's viewer is z-up); then the scene is scaled so that the nearest content (the smallest
    ``near`` bound) lies ``near_distance`` (default 1) from the origin. The scene box is ``[-1, 1]^3``.

    Why: nerfacto (and ReLS-NeRF, which uses nerfacto's fields) contract space with the L-inf contraction
    ``x -> (2 - 1/|x|_inf) x / |x|_inf`` outside the unit box. A point in front of a forward-facing rig lies inside
    a 90-degree cone around +y (LLFF fields of view are about +-30 degrees), so ``|x|_inf`` is its depth ``y`` and the
    contraction maps it to ``(2 - 1/y) * (x/y, 1, z/y)``: perspective-divided image coordinates and inverse depth,
    which is the NDC parametrisation NeRF uses for LLFF. Everything from the near bound to infinity then fills the
    shell ``1 <= |x|_inf < 2`` with a resolution proportional to inverse depth, the same spacing nerfacto's proposal
    sampler uses (linear up to distance 1, uniform in disparity beyond), and far background stays representable.
    Methods that only sample *inside* the scene box (no contraction: vanilla-nerf's AABB collider, instant-ngp)
    would cut the scene at the box: give them ``--scene-box-bound`` about the far bound in scene units (the parser
    prints it).

Sparse depth (DS-NeRF)
    With ``sparse/0/points3D.bin``, each image gets the COLMAP points it observed, as ``metadata["sparse_depth"]``: per
    image of the split a float tensor ``[K, 4]`` of ``(x, y, z, weight)``; ``(x, y)`` is the projection of the point
    with the loaded camera (pixels, x right, y down, pixel centres at +0.5, at the resolution read), so the ray
    through it passes through the point exactly; ``z`` is the depth along the camera axis in scene units; ``weight =
    2 exp(-(err / mean err)^2)`` from COLMAP's reprojection error, as in DS-NeRF. As in DS-NeRF, depths outside the
    image's ``[near, far]`` are dropped. Which images observed a point comes from the point's track:

    - with ``images.bin``, image ids are mapped to poses rows through the sorted image names (what LLFF does);
    - without it, the track's image ids are matched to poses rows by the ``near``/``far`` bounds, which LLFF computed
      from exactly these tracks (identity first, else an optimal assignment); a match within 1% is required;
    - if neither works, every point in front of a camera and inside its image counts as observed (with a warning).

    ``metadata["points3D_xyz"]`` / ``["points3D_rgb"]`` (scene frame) also seed splatfacto like the COLMAP parser.

Check a scene (fraction of observed points that reproject inside the images, depths against the bounds)::

    python -m relsnerf_ns.data.llff_dataparser --check SCENE [--downscale-factor N]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Literal, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from jaxtyping import Bool, Float, Int, UInt8
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.data.utils import colmap_parsing_utils as colmap_utils
from nerfstudio.data.utils.dataparsers_utils import (
    get_train_eval_split_all,
    get_train_eval_split_filename,
    get_train_eval_split_fraction,
    get_train_eval_split_interval,
)
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image
from torch import Tensor

from relsnerf_ns.data.metadata_keys import SPARSE_DEPTH_KEY

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
InsideFn = Callable[[np.ndarray, int], np.ndarray]
"""(points [P, 3] in the world frame, poses row) -> which points are in front of that camera and inside its image."""
BOUNDS_MATCH_TOLERANCE = 0.01
"""Largest |log(percentile / bound)| for a track's image id to count as matched to a poses row (1%)."""


class LLFFDataError(ValueError):
    """An LLFF scene that cannot be read; the message names the file and how to fix it."""


class LLFFMissingFileError(LLFFDataError, FileNotFoundError):
    """A file or folder an LLFF scene needs is missing."""


@dataclass
class LLFFDataParserConfig(DataParserConfig):
    """LLFF forward-facing scenes: poses_bounds.npy + images_N/, sparse depth from sparse/0 when present."""

    _target: Type = field(default_factory=lambda: LLFFDataParser)
    """target class to instantiate"""
    data: Path = Path()
    """Scene folder with poses_bounds.npy, images_N/ (images/ for factor 1) and optionally sparse/0/."""
    downscale_factor: int = 4
    """Read the images of images_{N}/ (1: images/). 4 gives 1008x756 on the standard LLFF scenes (the paper's size)."""
    eval_mode: Literal["interval", "fraction", "filename", "all"] = "interval"
    """Train/eval split: every eval_interval-th image held out (LLFF's llffhold), a fraction, by 'train'/'eval' in
    the file names, or all images in both."""
    eval_interval: int = 8
    """With eval_mode interval: images 0, N, 2N, ... are held out for evaluation (LLFF convention: 8)."""
    train_split_fraction: float = 0.9
    """With eval_mode fraction: the fraction of images used for training."""
    near_distance: float = 1.0
    """Scene-unit distance at which the nearest content (the smallest near bound) lands after normalisation. 1 puts it
    on the scene box, where nerfacto's L-inf contraction becomes an NDC-like inverse-depth mapping."""
    scene_box_bound: float = 1.0
    """Half side of the scene box. Contracting methods treat it as the uncontracted region; raise it to about the far
    bound in scene units for methods that only sample inside the box."""
    sparse_path: Path = Path("sparse/0")
    """COLMAP model (relative to data) with points3D.bin (+ cameras.bin, images.bin when present)."""
    load_sparse_depth: bool = True
    """Give each image the depths of the COLMAP points it observed (DS-NeRF depth supervision)."""
    clip_depth_to_bounds: bool = True
    """Drop sparse depths outside the image's near/far bounds (DS-NeRF does)."""
    load_3D_points: bool = True
    """Also give the sparse points (scene frame) as points3D_xyz/points3D_rgb (splatfacto's initialisation)."""


@dataclass
class SparseModel:
    """COLMAP points in the world frame of poses_bounds.npy, and which images observed each."""

    xyz: Float[np.ndarray, "points 3"]
    rgb: UInt8[np.ndarray, "points 3"]
    error: Float[np.ndarray, "points"]
    observed: Bool[np.ndarray, "points images"]
    source: str
    """How `observed` was found: 'images.bin', 'track ids matched by bounds', or 'projection'."""


@dataclass
class LLFFScene:
    """Everything of an LLFF scene that does not depend on the split (all images in poses_bounds row order)."""

    image_filenames: List[Path]
    widths: Int[np.ndarray, "images"]
    heights: Int[np.ndarray, "images"]
    c2w: Float[np.ndarray, "images 3 4"]
    """OpenGL camera-to-world in the world frame of poses_bounds.npy (before normalisation)."""
    bounds: Float[np.ndarray, "images 2"]
    fx: Float[np.ndarray, "images"]
    fy: Float[np.ndarray, "images"]
    transform: Float[np.ndarray, "3 4"]
    """Rigid normalisation: world -> scene frame before scaling."""
    scale: float
    sparse: Optional[SparseModel]
    sparse_depth: Optional[List[Float[Tensor, "points 4"]]]
    """Per image (x, y, z-depth in scene units, weight) of its observed sparse points."""

    @property
    def cx(self) -> Float[np.ndarray, "images"]:
        return self.widths / 2.0

    @property
    def cy(self) -> Float[np.ndarray, "images"]:
        return self.heights / 2.0

    def scene_c2w(self) -> Float[np.ndarray, "images 3 4"]:
        """Normalised camera-to-world matrices."""
        rotation, translation = self.transform[:, :3], self.transform[:, 3]
        c2w = np.concatenate(
            [rotation @ self.c2w[:, :, :3], (self.c2w[:, :, 3] @ rotation.T + translation)[..., None]], -1
        )
        c2w[:, :, 3] *= self.scale
        return c2w

    def to_scene(self, points: Float[np.ndarray, "points 3"]) -> Float[np.ndarray, "points 3"]:
        return (points @ self.transform[:, :3].T + self.transform[:, 3]) * self.scale


# ---------------------------------------------------------------------------------------------------- geometry
def llff_to_opengl(poses: Float[np.ndarray, "images 3 5"]) -> Float[np.ndarray, "images 3 4"]:
    """LLFF [down, right, back | centre] -> OpenGL [right, up, back | centre]."""
    return np.stack([poses[:, :, 1], -poses[:, :, 0], poses[:, :, 2], poses[:, :, 3]], axis=-1)


def normalising_transform(
    c2w: Float[np.ndarray, "images 3 4"], near: float, near_distance: float
) -> Tuple[Float[np.ndarray, "3 4"], float]:
    """Rigid transform putting the average camera at the origin looking along +y, up +z; scale putting `near` at
    `near_distance` (see the module docstring for why)."""
    centre = c2w[:, :, 3].mean(0)
    forward = -c2w[:, :, 2].mean(0)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, c2w[:, :, 1].mean(0))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rotation = np.stack([right, forward, up])  # rows: the new x, y, z axes in world coordinates
    transform = np.concatenate([rotation, -(rotation @ centre)[:, None]], axis=1)
    return transform, near_distance / near


def project(
    points: Float[np.ndarray, "points 3"], c2w: Float[np.ndarray, "3 4"], fx: float, fy: float, cx: float, cy: float
) -> Tuple[Float[np.ndarray, "points"], Float[np.ndarray, "points"], Float[np.ndarray, "points"]]:
    """Pixel (x right, y down; pixel centres at +0.5) and depth along the axis of an OpenGL camera."""
    local = (points - c2w[:, 3]) @ c2w[:, :3]  # (right, up, back)
    depth = -local[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = cx + fx * local[:, 0] / depth
        y = cy - fy * local[:, 1] / depth
    return x, y, depth


def axis_depths(
    points: Float[np.ndarray, "points 3"], c2w: Float[np.ndarray, "images 3 4"]
) -> Float[np.ndarray, "points images"]:
    """Depth of every point along every camera's viewing axis (LLFF's zvals)."""
    return np.einsum("pni,ni->pn", points[:, None, :] - c2w[None, :, :, 3], -c2w[:, :, 2])


def match_track_ids(
    tracks: Sequence[np.ndarray], depths: Float[np.ndarray, "points images"], bounds: Float[np.ndarray, "images 2"]
) -> Optional[Dict[int, int]]:
    """COLMAP image id -> poses row, found from the bounds (None when no assignment reproduces them).

    LLFF's imgs2poses computed each row's near/far as the 0.1 / 99.9 percentiles of the depths of the points whose
    track holds that image, so the right id reproduces its row's bounds (exactly, on the LLFF release).
    """
    ids = sorted({int(i) for track in tracks for i in track})
    num_rows = len(bounds)
    if not ids or len(ids) > num_rows:
        return None
    column = {image_id: j for j, image_id in enumerate(ids)}
    membership = np.zeros((len(tracks), len(ids)), dtype=bool)
    for p, track in enumerate(tracks):
        membership[p, [column[int(i)] for i in track]] = True
    cost = np.full((len(ids), num_rows), np.inf)
    for j in range(len(ids)):
        members = membership[:, j]
        near, far = np.percentile(depths[members], [0.1, 99.9], axis=0)  # [images] each
        valid = (near > 0) & (far > 0)
        cost[j, valid] = np.maximum(
            np.abs(np.log(near[valid] / bounds[valid, 0])), np.abs(np.log(far[valid] / bounds[valid, 1]))
        )
    # COLMAP usually numbers images in name order (DS-NeRF assumes so): try that first, else an optimal assignment.
    if ids == list(range(1, len(ids) + 1)) and len(ids) == num_rows:
        identity = cost[np.arange(num_rows), np.arange(num_rows)]
        if np.all(identity < BOUNDS_MATCH_TOLERANCE):
            return {image_id: image_id - 1 for image_id in ids}
    from scipy.optimize import linear_sum_assignment  # a nerfstudio dependency (through viser)

    rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e6))
    if np.all(cost[rows, cols] < BOUNDS_MATCH_TOLERANCE):
        return {ids[r]: int(c) for r, c in zip(rows, cols)}
    return None


# ---------------------------------------------------------------------------------------------------- reading
def _image_folder(data: Path, factor: int) -> Path:
    folder = data / ("images" if factor == 1 else f"images_{factor}")
    if not folder.is_dir():
        existing = sorted(p.name for p in data.glob("images*") if p.is_dir())
        hint = (
            f"folders there: {', '.join(existing)}; pick the factor with --downscale-factor"
            if existing
            else "there is no images* folder at all"
        )
        raise LLFFMissingFileError(f"no image folder {folder} for --downscale-factor {factor} ({hint})")
    return folder


def _image_sizes(filenames: Sequence[Path]) -> Tuple[np.ndarray, np.ndarray]:
    """Widths and heights from the image headers; every image must open (checked now, not mid-training)."""
    sizes = []
    for filename in filenames:
        try:
            with Image.open(filename) as image:
                sizes.append(image.size)
                image.verify()  # structure and checksums, without decoding the pixels
        except Exception as error:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError)
            raise LLFFDataError(
                f"cannot read image {filename}: {error}. Replace it with a readable copy (to drop it instead, also "
                "remove its row from poses_bounds.npy: rows and images pair up in sorted name order)"
            ) from error
    widths, heights = np.array(sizes, dtype=np.int64).T
    return widths, heights


def _read_poses_bounds(data: Path) -> Tuple[Float[np.ndarray, "images 3 5"], Float[np.ndarray, "images 2"]]:
    path = data / "poses_bounds.npy"
    if not path.is_file():
        raise LLFFMissingFileError(
            f"no poses_bounds.npy in {data}: an LLFF scene needs it (LLFF's imgs2poses.py writes it from a COLMAP "
            "model); check --data"
        )
    try:
        array = np.load(path)
    except Exception as error:
        raise LLFFDataError(f"cannot read {path}: {error}") from error
    if array.ndim != 2 or array.shape[1] != 17:
        raise LLFFDataError(f"{path} has shape {array.shape}; LLFF's is (images, 17): a 3x5 pose and near/far per row")
    return array[:, :15].reshape(-1, 3, 5).astype(np.float64), array[:, 15:].astype(np.float64)


def _read_points(sparse: Path) -> Optional[Dict[int, colmap_utils.Point3D]]:
    if (sparse / "points3D.bin").is_file():
        return colmap_utils.read_points3D_binary(sparse / "points3D.bin")
    if (sparse / "points3D.txt").is_file():
        return colmap_utils.read_points3D_text(sparse / "points3D.txt")
    return None


def _check_colmap_camera(sparse: Path, hwf: Float[np.ndarray, "3"]) -> None:
    """Warn when the sparse model's camera does not describe the images of poses_bounds.npy."""
    path = sparse / "cameras.bin"
    if not path.is_file():
        return
    cameras = colmap_utils.read_cameras_binary(path)
    height, width, focal = hwf
    for camera in cameras.values():
        if (camera.width, camera.height) != (round(width), round(height)) or abs(camera.params[0] / focal - 1) > 0.01:
            CONSOLE.print(
                f"[yellow]Warning: {path}: camera {camera.id} is {camera.width}x{camera.height} with focal "
                f"{camera.params[0]:.1f}, poses_bounds.npy says {width:.0f}x{height:.0f} with focal {focal:.1f}; "
                "the sparse model may belong to other images."
            )


def _image_id_rows(sparse: Path, num_rows: int) -> Optional[Dict[int, int]]:
    """COLMAP image id -> poses row through the sorted image names of images.bin (LLFF's order), if present."""
    path = sparse / "images.bin"
    if not path.is_file():
        return None
    images = colmap_utils.read_images_binary(path)
    if len(images) != num_rows:
        CONSOLE.print(
            f"[yellow]Warning: {path} has {len(images)} images, poses_bounds.npy {num_rows}; matching by bounds."
        )
        return None
    names = sorted((image.name, image_id) for image_id, image in images.items())
    return {image_id: row for row, (_, image_id) in enumerate(names)}


def read_sparse_model(
    sparse: Path, c2w: Float[np.ndarray, "images 3 4"], bounds: Float[np.ndarray, "images 2"], inside: InsideFn
) -> Optional[SparseModel]:
    """The COLMAP points and which poses rows observed them (None without points3D.bin/.txt).

    `inside(xyz, row)` tells which points project in front of camera `row` and inside its image (the fallback).
    """
    points = _read_points(sparse)
    if points is None:
        return None
    values = list(points.values())
    xyz = np.array([p.xyz for p in values], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([p.rgb for p in values], dtype=np.uint8).reshape(-1, 3)
    error = np.array([float(p.error) for p in values], dtype=np.float64)
    tracks = [np.asarray(p.image_ids, dtype=np.int64) for p in values]
    num_rows = len(c2w)
    source = "images.bin"
    rows = _image_id_rows(sparse, num_rows)
    if rows is None:
        rows = match_track_ids(tracks, axis_depths(xyz, c2w), bounds) if len(xyz) else None
        in_order = rows is not None and all(row == image_id - 1 for image_id, row in rows.items())
        source = f"track ids matched by bounds ({'ids in name order' if in_order else 'ids permuted'})"
    observed = np.zeros((len(xyz), num_rows), dtype=bool)
    if rows is not None:
        for p, track in enumerate(tracks):
            observed[p, [rows[int(i)] for i in track if int(i) in rows]] = True
    else:
        source = "projection"
        CONSOLE.print(
            f"[yellow]Warning: {sparse}: cannot tell which image each track id is (no images.bin, and no id order "
            "reproduces the near/far bounds); every point in front of a camera and inside its image counts as seen."
        )
        for row in range(num_rows):
            observed[:, row] = inside(xyz, row)
    return SparseModel(xyz=xyz, rgb=rgb, error=error, observed=observed, source=source)


def load_llff_scene(config: LLFFDataParserConfig) -> LLFFScene:
    """Read and check a scene; see the module docstring for the conventions."""
    data = Path(config.data)
    poses, bounds = _read_poses_bounds(data)
    folder = _image_folder(data, config.downscale_factor)
    filenames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if len(filenames) != len(poses):
        raise LLFFDataError(
            f"{data / 'poses_bounds.npy'} has {len(poses)} poses but {folder} has {len(filenames)} images "
            f"({', '.join(IMAGE_SUFFIXES)}); they must match one to one in sorted name order"
        )
    widths, heights = _image_sizes(filenames)
    full_height, full_width, focal = poses[:, 0, 4], poses[:, 1, 4], poses[:, 2, 4]
    fx, fy = focal * widths / full_width, focal * heights / full_height
    c2w = llff_to_opengl(poses)
    if np.any(bounds[:, 0] <= 0):
        raise LLFFDataError(f"{data / 'poses_bounds.npy'}: near bounds must be positive, got min {bounds[:, 0].min()}")
    transform, scale = normalising_transform(c2w, float(bounds[:, 0].min()), config.near_distance)

    def inside(xyz: np.ndarray, row: int) -> np.ndarray:
        x, y, depth = project(xyz, c2w[row], fx[row], fy[row], widths[row] / 2.0, heights[row] / 2.0)
        return (depth > 0) & (x >= 0) & (x < widths[row]) & (y >= 0) & (y < heights[row])

    sparse_dir = data / config.sparse_path
    sparse = None
    if config.load_sparse_depth or config.load_3D_points:
        _check_colmap_camera(sparse_dir, poses[0, :, 4])
        sparse = read_sparse_model(sparse_dir, c2w, bounds, inside)
    scene = LLFFScene(
        image_filenames=filenames,
        widths=widths,
        heights=heights,
        c2w=c2w,
        bounds=bounds,
        fx=fx,
        fy=fy,
        transform=transform,
        scale=scale,
        sparse=sparse,
        sparse_depth=None,
    )
    if sparse is not None and config.load_sparse_depth:
        scene.sparse_depth = sparse_depth_per_image(scene, inside, config.clip_depth_to_bounds)
    return scene


def sparse_depth_per_image(scene: LLFFScene, inside: InsideFn, clip_to_bounds: bool) -> List[Float[Tensor, "points 4"]]:
    """Per image, (x, y, z, weight) of the points it observed, in front, inside it (and within its bounds)."""
    sparse = scene.sparse
    assert sparse is not None
    mean_error = max(float(sparse.error.mean()), 1e-12) if len(sparse.error) else 1.0
    weights = 2.0 * np.exp(-((sparse.error / mean_error) ** 2))  # DS-NeRF's confidence
    per_image = []
    for row in range(len(scene.c2w)):
        keep = sparse.observed[:, row] & inside(sparse.xyz, row)
        x, y, depth = project(
            sparse.xyz[keep], scene.c2w[row], scene.fx[row], scene.fy[row], scene.cx[row], scene.cy[row]
        )
        within = np.ones_like(depth, dtype=bool)
        if clip_to_bounds:
            within = (depth >= scene.bounds[row, 0]) & (depth <= scene.bounds[row, 1])
        rows = np.stack([x, y, depth * scene.scale, weights[keep]], axis=-1)[within]
        per_image.append(torch.from_numpy(rows.astype(np.float32)).reshape(-1, 4))
    return per_image


# ---------------------------------------------------------------------------------------------------- dataparser
class LLFFDataParser(DataParser):
    """LLFF forward-facing scenes; see the module docstring."""

    config: LLFFDataParserConfig

    def __init__(self, config: LLFFDataParserConfig):
        super().__init__(config)
        self.config = config
        self._scene: Optional[LLFFScene] = None
        self._told_no_depth = False

    @property
    def scene(self) -> LLFFScene:
        """The scene, read once for all splits (train and eval share the normalisation)."""
        if self._scene is None:
            scene = self._scene = load_llff_scene(self.config)
            sparse = ""
            if scene.sparse_depth is not None and scene.sparse is not None:
                count = sum(len(points) for points in scene.sparse_depth)
                sparse = f"; sparse depth: {count} points ({scene.sparse.source})"
            CONSOLE.print(
                f"LLFF: {len(scene.image_filenames)} images {scene.widths[0]}x{scene.heights[0]} from "
                f"{scene.image_filenames[0].parent.name}/, near {scene.bounds[:, 0].min() * scene.scale:.2f} and far "
                f"{scene.bounds[:, 1].max() * scene.scale:.2f} scene units{sparse}"
            )
        return self._scene

    def split_indices(self, split: str) -> Int[np.ndarray, "split_images"]:
        """Rows of the split: eval = every eval_interval-th image from 0 by default (LLFF's llffhold)."""
        filenames = self.scene.image_filenames
        if self.config.eval_mode == "interval":
            if self.config.eval_interval < 1:
                raise LLFFDataError(f"--eval-interval must be >= 1, got {self.config.eval_interval}")
            i_train, i_eval = get_train_eval_split_interval(filenames, self.config.eval_interval)
        elif self.config.eval_mode == "fraction":
            i_train, i_eval = get_train_eval_split_fraction(filenames, self.config.train_split_fraction)
        elif self.config.eval_mode == "filename":
            i_train, i_eval = get_train_eval_split_filename(filenames)
        else:
            i_train, i_eval = get_train_eval_split_all(filenames)
        return np.asarray(i_train if split == "train" else i_eval, dtype=np.int64)

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        scene = self.scene
        indices = self.split_indices(split)
        c2w = torch.from_numpy(scene.scene_c2w()[indices]).float()

        def column(values: np.ndarray) -> Tensor:
            return torch.from_numpy(np.asarray(values, dtype=np.float32)[indices, None])

        cameras = Cameras(
            camera_to_worlds=c2w,
            fx=column(scene.fx),
            fy=column(scene.fy),
            cx=column(scene.cx),
            cy=column(scene.cy),
            width=torch.from_numpy(scene.widths[indices, None]),
            height=torch.from_numpy(scene.heights[indices, None]),
            camera_type=CameraType.PERSPECTIVE,
        )
        metadata: Dict[str, object] = {}
        if scene.sparse_depth is not None:
            metadata[SPARSE_DEPTH_KEY] = [scene.sparse_depth[i] for i in indices]
        else:
            metadata[SPARSE_DEPTH_KEY] = None  # looked, found none, said so below (once)
        if scene.sparse_depth is None and not self._told_no_depth:
            self._told_no_depth = True
            why = "--load-sparse-depth is off" if not self.config.load_sparse_depth else "no points3D.bin there"
            CONSOLE.print(
                f"[yellow]LLFF: no sparse depth from {self.config.data / self.config.sparse_path} ({why}): "
                "DS-NeRF depth supervision is off."
            )
        if scene.sparse is not None and self.config.load_3D_points:
            metadata["points3D_xyz"] = torch.from_numpy(scene.to_scene(scene.sparse.xyz)).float()
            metadata["points3D_rgb"] = torch.from_numpy(scene.sparse.rgb)
        bound = self.config.scene_box_bound
        return DataparserOutputs(
            image_filenames=[scene.image_filenames[i] for i in indices],
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-bound] * 3, [bound] * 3], dtype=torch.float32)),
            metadata=metadata,
            dataparser_transform=torch.from_numpy(scene.transform).float(),
            dataparser_scale=scene.scale,
        )


llff_dataparser = DataParserSpecification(
    config=LLFFDataParserConfig(),
    description="LLFF forward-facing scenes (poses_bounds.npy + images_N/), DS-NeRF sparse depth from sparse/0",
)


# ---------------------------------------------------------------------------------------------------- --check
def check_scene(data: Path, downscale_factor: int) -> Dict[str, float]:
    """Reproject the observed sparse points with the loaded (normalised) cameras; compare depths with the bounds."""
    parser = LLFFDataParser(LLFFDataParserConfig(data=data, downscale_factor=downscale_factor, eval_mode="all"))
    outputs = parser.get_dataparser_outputs("train")
    scene = parser.scene
    sparse = scene.sparse
    if sparse is None:
        raise LLFFMissingFileError(f"no sparse model (points3D.bin) in {data / parser.config.sparse_path}")
    cameras = outputs.cameras
    points = scene.to_scene(sparse.xyz)
    inside, total, depth_errors = 0, 0, []
    for row in range(len(cameras)):
        seen = points[sparse.observed[:, row]]
        c2w = cameras.camera_to_worlds[row].double().numpy()
        x, y, depth = project(
            seen, c2w, float(cameras.fx[row]), float(cameras.fy[row]), float(cameras.cx[row]), float(cameras.cy[row])
        )
        width, height = int(cameras.width[row]), int(cameras.height[row])
        inside += int(np.sum((depth > 0) & (x >= 0) & (x < width) & (y >= 0) & (y < height)))
        total += len(seen)
        if len(seen):
            near, far = np.percentile(depth / scene.scale, [0.1, 99.9])  # LLFF's own bounds recipe, world units
            depth_errors.append(max(abs(near / scene.bounds[row, 0] - 1), abs(far / scene.bounds[row, 1] - 1)))
    per_image = [len(d) for d in scene.sparse_depth or []]
    all_depth = torch.cat(scene.sparse_depth)[:, 2].numpy() if per_image and sum(per_image) else np.zeros(1)
    results = {
        "images": float(len(cameras)),
        "points": float(len(points)),
        "observations": float(total),
        "inside_fraction": inside / max(total, 1),
        "bounds_max_relative_error": float(max(depth_errors, default=float("nan"))),
        "depth_min": float(all_depth.min()),
        "depth_max": float(all_depth.max()),
        "near_min": float(scene.bounds[:, 0].min() * scene.scale),
        "far_max": float(scene.bounds[:, 1].max() * scene.scale),
        "supervised_min": float(min(per_image, default=0)),
        "supervised_mean": float(np.mean(per_image)) if per_image else 0.0,
        "supervised_max": float(max(per_image, default=0)),
    }
    CONSOLE.print(
        f"{data}: {len(cameras)} images {int(cameras.width[0])}x{int(cameras.height[0])}, "
        f"fx {float(cameras.fx[0]):.2f}, scale {scene.scale:.5f} (world -> scene units)\n"
        f"sparse model: {len(points)} points, {total} observations; which images saw a point: {sparse.source}\n"
        f"observed points reprojecting inside their images (loaded cameras): {inside}/{total} "
        f"= {results['inside_fraction']:.4f}"
        f"{' (by construction: visibility came from projection)' if sparse.source == 'projection' else ''}\n"
        f"per-image 0.1/99.9% depth percentiles vs poses_bounds near/far: max relative difference "
        f"{results['bounds_max_relative_error']:.2e}\n"
        f"sparse depth (scene units): {results['depth_min']:.3f} .. {results['depth_max']:.3f}; bounds (scene units) "
        f"near >= {results['near_min']:.3f}, far <= {results['far_max']:.3f}\n"
        f"supervised points per image: min {results['supervised_min']:.0f}, mean {results['supervised_mean']:.1f}, "
        f"max {results['supervised_max']:.0f}"
    )
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check an LLFF scene: do the sparse points reproject inside the images, do depths match bounds?"
    )
    parser.add_argument("--check", type=Path, required=True, metavar="SCENE", help="LLFF scene folder")
    parser.add_argument("--downscale-factor", type=int, default=4, help="read images_N (1: images/)")
    args = parser.parse_args(argv)
    try:
        check_scene(args.check, args.downscale_factor)
    except LLFFDataError as error:
        CONSOLE.print(f"[red]{error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
