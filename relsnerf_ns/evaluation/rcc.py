"""Reprojective Colour Consistency (RCC), the paper's shimmer metric (section IV-A.2, equation 5).

    RCC = PSNR( E_i[ MSE(I_{i+1}, Reproj_{D_i, Pi_{i+1}} I_i) ] )

For each pair of adjacent video frames (i, i+1): every pixel centre of frame i is lifted to 3D with frame i's rendered
depth D_i and camera i, projected into camera i+1, and frame i+1's colour is sampled there. The pair's MSE is taken
over the pixels that (a) have a usable source depth, (b) land in front of camera i+1 and inside its image, and (c) pass
a depth (occlusion) test: the point's depth as seen from camera i+1 must agree with frame i+1's rendered depth at that
spot within a relative tolerance, so pixels hidden in frame i+1 behind something else are not compared. RCC is the PSNR
(images in [0, 1]) of the mean of the per-pair MSEs; pairs with no valid pixel are skipped.

Sampling frame i+1 at the projected points of frame i is how Reproj is realised here: it uses exactly D_i and
Pi_{i+1}, as equation 5 does, and avoids the holes and z-buffering of splatting frame i forward.

Conventions (nerfstudio's):

- Cameras: `Cameras.camera_to_worlds` [3, 4] in OpenGL axes (x right, y up, the camera looks along -z); pinhole
  intrinsics fx, fy, cx, cy in pixels; pixel (u, v) with u to the right and v down, the centre of pixel (row, col) at
  (col + 0.5, row + 0.5), as `Cameras.get_image_coords` (pixel_offset=0.5) makes them. Only undistorted perspective
  cameras are supported (nerfstudio's spiral/interpolated render paths are).
- Depth, `depth_kind="ray"` (the default): distance from the camera centre along the pixel's ray. This is what
  nerfstudio renders: rays have unit-length directions (`Cameras.generate_rays` normalises them and keeps the norm as
  `metadata["directions_norm"]`), and `DepthRenderer` composites sample distances along them. Nerfacto's `"depth"` is
  the *median* termination distance and `"expected_depth"` the expected one; both are ray distances, and so is the
  `"depth"` of the ReLS-NeRF model. `depth_kind="z"`: distance along the camera's viewing axis (-z), i.e.
  ray distance / directions_norm.

Colour and depth of frame i+1 are sampled bilinearly by default. Nearest sampling misregisters every correspondence
by up to half a pixel, an error proportional to the image gradient that would penalise sharp renders for being sharp;
bilinear interpolation of a smooth image is second-order accurate. The price: bilinear sampling averages up to four
pixels of frame i+1, which attenuates *pixel-independent* noise in frame i+1 (to between 1/4 and 1 of its variance,
4/9 on average over uniform sub-pixel offsets). The shimmer the metric targets comes from a decoder that paints 8x8
patches, which is spatially correlated and hardly attenuated. `sampling="nearest"` is available where per-pixel noise
must count in full. Depth is sampled the same way, which also makes the depth test conservative at occlusion edges: a
bilinear mix of a foreground and a background depth matches neither, so such pixels are rejected.

A pair whose MSE is 0 (an exactly consistent video) would give an infinite PSNR; the mean MSE is floored at
`min_mse` (1e-10, i.e. RCC <= 100 dB) so the result is always a finite number that JSON and tables can hold.

For long videos at full resolution use `RCCAccumulator`, which keeps only the previous frame in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from nerfstudio.cameras.cameras import Cameras, CameraType
from torch import Tensor

from relsnerf_ns.evaluation.image_metrics import psnr_from_mse

DepthKind = Literal["ray", "z"]
Sampling = Literal["bilinear", "nearest"]

DEFAULT_DEPTH_RTOL = 0.05
"""Default relative tolerance of the depth test: occlusions on adjacent frames change depth by far more than 5%,
while the rendered depth of one surface seen from two nearby cameras agrees to well within it."""

MIN_MSE = 1e-10
"""Floor on the mean MSE (RCC <= 100 dB), so a perfectly consistent video gives a finite, very high RCC."""


@dataclass(frozen=True)
class PinholeCamera:
    """One undistorted perspective camera as plain tensors (nerfstudio conventions, see the module docstring)."""

    camera_to_world: Float[Tensor, "3 4"]
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_cameras(cls, cameras: Cameras, index: Optional[int] = None) -> "PinholeCamera":
        """The camera `index` of a flat `Cameras` batch, or the only camera of a single `Cameras` when index is None."""
        flat = cameras.flatten() if cameras.shape != () else cameras.reshape((1,))
        if index is None:
            if flat.shape[0] != 1:
                raise ValueError(f"expected a single camera, got a batch of shape {tuple(cameras.shape)}; pass index")
            index = 0
        if not 0 <= index < flat.shape[0]:
            raise IndexError(f"camera index {index} out of range for {flat.shape[0]} cameras")
        camera_type = int(flat.camera_type[index].flatten()[0])
        if camera_type != CameraType.PERSPECTIVE.value:
            raise ValueError(
                f"RCC supports perspective cameras only, camera {index} has type {CameraType(camera_type)}"
            )
        if flat.distortion_params is not None and bool((flat.distortion_params[index] != 0).any()):
            raise ValueError(f"RCC supports undistorted cameras only, camera {index} has distortion parameters")
        return cls(
            camera_to_world=flat.camera_to_worlds[index],
            fx=float(flat.fx[index]),
            fy=float(flat.fy[index]),
            cx=float(flat.cx[index]),
            cy=float(flat.cy[index]),
            width=int(flat.width[index]),
            height=int(flat.height[index]),
        )


@dataclass
class Reprojection:
    """Where the pixels of a source frame land in a destination camera (all maps are over the source pixel grid)."""

    coords: Float[Tensor, "H W 2"]
    """(u, v) in destination pixels, pixel (row, col) centred at (col + 0.5, row + 0.5)."""
    depth_in_dst: Float[Tensor, "H W 1"]
    """Depth of the 3D point as seen from the destination camera, in the same `depth_kind` as the input depth."""
    inside: Bool[Tensor, "H W"]
    """The point is in front of the destination camera and its projection lies inside the destination image."""


@dataclass
class PairConsistency:
    """The reprojection error of one pair of adjacent frames."""

    mse: float
    """Mean squared colour error over the valid pixels (and the three channels); NaN when no pixel is valid."""
    valid_fraction: float
    """Share of the source frame's pixels that were compared."""
    valid: Bool[Tensor, "H W"]
    """Which source pixels were compared."""
    inside_fraction: float
    """Share of source pixels landing inside the destination frame (before the depth test)."""


@dataclass
class RCCResult:
    """RCC of one video, with the per-pair figures behind it."""

    rcc_db: float
    """PSNR of the mean MSE over the pairs used (dB; at most -10 log10(min_mse))."""
    mean_mse: float
    """Mean of the per-pair MSEs over the pairs used."""
    mse_per_pair: List[float]
    """MSE of pair (i, i+1) for each i; NaN for a pair skipped because it had no valid pixel."""
    valid_fraction_per_pair: List[float]
    """Share of frame i's pixels compared in pair (i, i+1)."""
    num_pairs_used: int = field(default=0)

    def to_dict(self) -> Dict[str, object]:
        """Plain JSON-friendly dict (NaN MSEs of skipped pairs become None)."""
        return {
            "rcc_db": self.rcc_db,
            "mean_mse": self.mean_mse,
            "mse_per_pair": [None if math.isnan(m) else m for m in self.mse_per_pair],
            "valid_fraction_per_pair": list(self.valid_fraction_per_pair),
            "num_pairs_used": self.num_pairs_used,
        }


def pixel_centres(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Float[Tensor, "H W 2"]:
    """(u, v) of every pixel centre: u = col + 0.5, v = row + 0.5 (nerfstudio's pixel_offset=0.5)."""
    rows = torch.arange(height, device=device, dtype=dtype) + 0.5
    cols = torch.arange(width, device=device, dtype=dtype) + 0.5
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([u, v], dim=-1)


def camera_directions(camera: PinholeCamera, uv: Float[Tensor, "*batch 2"]) -> Float[Tensor, "*batch 3"]:
    """Unnormalised camera-frame ray directions with z = -1, as nerfstudio builds them before normalising."""
    x = (uv[..., 0] - camera.cx) / camera.fx
    y = -(uv[..., 1] - camera.cy) / camera.fy  # v grows downwards, camera y upwards (OpenCV -> OpenGL flip)
    return torch.stack([x, y, -torch.ones_like(x)], dim=-1)


def unproject(
    depth: Float[Tensor, "H W 1"], camera: PinholeCamera, depth_kind: DepthKind = "ray"
) -> Float[Tensor, "H W 3"]:
    """World points seen at each pixel centre at the given depth."""
    height, width = depth.shape[:2]
    directions = camera_directions(camera, pixel_centres(height, width, depth.device, depth.dtype))
    if depth_kind == "ray":
        directions = directions / torch.linalg.vector_norm(directions, dim=-1, keepdim=True)
    elif depth_kind != "z":
        raise ValueError(f"depth_kind must be 'ray' or 'z', got {depth_kind!r}")
    points_cam = directions * depth
    c2w = camera.camera_to_world.to(depth)
    return points_cam @ c2w[:, :3].T + c2w[:, 3]


def project(
    points: Float[Tensor, "*batch 3"], camera: PinholeCamera, depth_kind: DepthKind = "ray"
) -> Tuple[Float[Tensor, "*batch 2"], Float[Tensor, "*batch 1"], Float[Tensor, "*batch 1"]]:
    """Pixel coordinates (u, v), depth (in `depth_kind`) and z-depth (> 0 in front) of world points in a camera."""
    c2w = camera.camera_to_world.to(points)
    points_cam = (points - c2w[:, 3]) @ c2w[:, :3]  # R^T (p - o), row-vector form
    z = -points_cam[..., 2:3]  # the camera looks along -z, so points in front have positive z-depth
    # Points behind or at the camera would divide by ~0; their coordinates are meaningless and masked by callers.
    safe_z = torch.where(z > 0, z, torch.ones_like(z))
    u = camera.cx + camera.fx * points_cam[..., 0:1] / safe_z
    v = camera.cy - camera.fy * points_cam[..., 1:2] / safe_z
    if depth_kind == "ray":
        depth = torch.linalg.vector_norm(points_cam, dim=-1, keepdim=True)
    elif depth_kind == "z":
        depth = z
    else:
        raise ValueError(f"depth_kind must be 'ray' or 'z', got {depth_kind!r}")
    return torch.cat([u, v], dim=-1), depth, z


def reproject(
    depth_src: Float[Tensor, "H W 1"],
    camera_src: PinholeCamera,
    camera_dst: PinholeCamera,
    depth_kind: DepthKind = "ray",
) -> Reprojection:
    """Lift each pixel centre of the source frame with its depth and project it into the destination camera."""
    if depth_src.ndim != 3 or depth_src.shape[-1] != 1:
        raise ValueError(f"depth must be [H, W, 1], got {tuple(depth_src.shape)}")
    if tuple(depth_src.shape[:2]) != (camera_src.height, camera_src.width):
        raise ValueError(
            f"depth is {depth_src.shape[1]}x{depth_src.shape[0]} (WxH) but the source camera is "
            f"{camera_src.width}x{camera_src.height}"
        )
    points = unproject(depth_src, camera_src, depth_kind)
    coords, depth_in_dst, z = project(points, camera_dst, depth_kind)
    u, v = coords[..., 0], coords[..., 1]
    inside = (z[..., 0] > 0) & (u >= 0) & (u < camera_dst.width) & (v >= 0) & (v < camera_dst.height)
    inside &= torch.isfinite(coords).all(dim=-1) & torch.isfinite(depth_in_dst[..., 0])
    return Reprojection(coords=coords, depth_in_dst=depth_in_dst, inside=inside)


def sample_image(
    image: Float[Tensor, "H W C"], coords: Float[Tensor, "*batch 2"], sampling: Sampling = "bilinear"
) -> Float[Tensor, "*batch C"]:
    """Values of an image at pixel coordinates (u, v) (pixel centres at +0.5), edges clamped."""
    if sampling not in ("bilinear", "nearest"):
        raise ValueError(f"sampling must be 'bilinear' or 'nearest', got {sampling!r}")
    height, width = image.shape[:2]
    batch_shape = coords.shape[:-1]
    # grid_sample with align_corners=False maps -1/+1 to the outer edges of the border pixels: u = 0 and u = W.
    grid = coords.reshape(1, 1, -1, 2).to(image).clone()
    grid[..., 0] = grid[..., 0] * (2.0 / width) - 1.0
    grid[..., 1] = grid[..., 1] * (2.0 / height) - 1.0
    sampled = F.grid_sample(
        image.permute(2, 0, 1)[None], grid, mode=sampling, padding_mode="border", align_corners=False
    )  # [1, C, 1, P]
    return sampled[0, :, 0].T.reshape(*batch_shape, image.shape[-1])


def pair_consistency(
    image_src: Float[Tensor, "H W 3"],
    depth_src: Float[Tensor, "H W 1"],
    camera_src: PinholeCamera,
    image_dst: Float[Tensor, "H W 3"],
    depth_dst: Float[Tensor, "H W 1"],
    camera_dst: PinholeCamera,
    depth_kind: DepthKind = "ray",
    depth_rtol: Optional[float] = DEFAULT_DEPTH_RTOL,
    sampling: Sampling = "bilinear",
    mask_src: Optional[Bool[Tensor, "H W"]] = None,
) -> PairConsistency:
    """MSE between frame src and frame dst sampled at src's reprojected pixels (one term of equation 5).

    depth_rtol: a pixel passes the depth test when |d_proj - d_dst| <= depth_rtol * d_dst, where d_proj is the
        point's depth from the destination camera and d_dst the destination's rendered depth sampled there.
        None disables the test (occluded pixels are then compared too).
    mask_src: optional extra restriction on the source pixels (e.g. accumulation > 0.5 to drop empty sky).
    """
    rep = reproject(depth_src, camera_src, camera_dst, depth_kind)
    valid = rep.inside & torch.isfinite(depth_src[..., 0]) & (depth_src[..., 0] > 0)
    if mask_src is not None:
        valid &= mask_src.to(valid.device).bool()
    inside_fraction = float(rep.inside.float().mean())
    coords = rep.coords[valid]
    if depth_rtol is not None and coords.shape[0] > 0:
        depth_at = sample_image(depth_dst, coords, sampling)[..., 0]
        projected = rep.depth_in_dst[valid][..., 0]
        passes = (depth_at > 0) & ((projected - depth_at).abs() <= depth_rtol * depth_at)
        keep = valid.clone()
        keep[valid] = passes  # scatter the test results back onto the pixel grid, in the same (row-major) order
        valid = keep
        coords = coords[passes]
    count = int(valid.sum())
    if count == 0:
        mse = float("nan")
    else:
        colour_dst = sample_image(image_dst, coords, sampling)
        mse = float(((colour_dst - image_src[valid]) ** 2).mean())
    return PairConsistency(mse=mse, valid_fraction=count / valid.numel(), valid=valid, inside_fraction=inside_fraction)


def mse_to_psnr(mse: float, min_mse: float = MIN_MSE) -> float:
    """PSNR (dB) of an MSE for images in [0, 1], with the MSE floored at min_mse."""
    return float(psnr_from_mse(mse, min_mse))


class RCCAccumulator:
    """RCC over a video fed one frame at a time (only the previous frame is kept: full-resolution 120-frame videos)."""

    def __init__(
        self,
        depth_kind: DepthKind = "ray",
        depth_rtol: Optional[float] = DEFAULT_DEPTH_RTOL,
        sampling: Sampling = "bilinear",
        min_mse: float = MIN_MSE,
    ) -> None:
        if depth_kind not in ("ray", "z"):
            raise ValueError(f"depth_kind must be 'ray' or 'z', got {depth_kind!r}")
        if sampling not in ("bilinear", "nearest"):
            raise ValueError(f"sampling must be 'bilinear' or 'nearest', got {sampling!r}")
        self.depth_kind: DepthKind = depth_kind
        self.depth_rtol = depth_rtol
        self.sampling: Sampling = sampling
        self.min_mse = min_mse
        self._previous: Optional[Tuple[Tensor, Tensor, PinholeCamera, Optional[Tensor]]] = None
        self.mse_per_pair: List[float] = []
        self.valid_fraction_per_pair: List[float] = []
        self.num_frames = 0

    def add(
        self,
        image: Float[Tensor, "H W 3"],
        depth: Float[Tensor, "H W 1"],
        camera: PinholeCamera | Cameras,
        mask: Optional[Bool[Tensor, "H W"]] = None,
    ) -> Optional[PairConsistency]:
        """Append the next frame; returns the consistency of (previous frame, this frame), None for the first."""
        if not isinstance(camera, PinholeCamera):
            camera = PinholeCamera.from_cameras(camera)
        image, depth = _check_frame(image, depth, camera, self.num_frames)
        if mask is not None and tuple(mask.shape[:2]) != tuple(image.shape[:2]):
            raise ValueError(f"mask of frame {self.num_frames} is {tuple(mask.shape)}, image is {tuple(image.shape)}")
        if mask is not None:
            mask = mask.reshape(image.shape[:2]).bool()
        pair = None
        if self._previous is not None:
            prev_image, prev_depth, prev_camera, prev_mask = self._previous
            if prev_image.shape != image.shape:
                raise ValueError(
                    f"frame {self.num_frames} is {tuple(image.shape)}, frame {self.num_frames - 1} was "
                    f"{tuple(prev_image.shape)}: all frames of a video must have the same size"
                )
            pair = pair_consistency(
                prev_image,
                prev_depth,
                prev_camera,
                image.to(prev_image.device),
                depth.to(prev_image.device),
                camera,
                depth_kind=self.depth_kind,
                depth_rtol=self.depth_rtol,
                sampling=self.sampling,
                mask_src=prev_mask,
            )
            self.mse_per_pair.append(pair.mse)
            self.valid_fraction_per_pair.append(pair.valid_fraction)
        self._previous = (image, depth, camera, mask)
        self.num_frames += 1
        return pair

    def result(self) -> RCCResult:
        """RCC over the pairs seen so far; raises when there is no pair with a valid pixel."""
        if self.num_frames < 2:
            raise ValueError(f"RCC needs at least 2 frames, got {self.num_frames}")
        used = [m for m in self.mse_per_pair if not math.isnan(m)]
        if not used:
            raise ValueError(
                f"no pair of the {self.num_frames} frames has a valid pixel (none lands inside the next frame and "
                "passes the depth test): check the cameras, the depth convention (depth_kind) and the depth scale"
            )
        mean_mse = sum(used) / len(used)
        return RCCResult(
            rcc_db=mse_to_psnr(mean_mse, self.min_mse),
            mean_mse=mean_mse,
            mse_per_pair=list(self.mse_per_pair),
            valid_fraction_per_pair=list(self.valid_fraction_per_pair),
            num_pairs_used=len(used),
        )


def _check_frame(
    image: Tensor, depth: Tensor, camera: PinholeCamera, index: int
) -> Tuple[Float[Tensor, "H W 3"], Float[Tensor, "H W 1"]]:
    """Shape checks with messages that name the frame; a [H, W] depth is accepted as [H, W, 1]."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image of frame {index} must be [H, W, 3], got {tuple(image.shape)}")
    if depth.ndim == 2:
        depth = depth[..., None]
    if depth.ndim != 3 or depth.shape[-1] != 1:
        raise ValueError(f"depth of frame {index} must be [H, W, 1], got {tuple(depth.shape)}")
    if depth.shape[:2] != image.shape[:2]:
        raise ValueError(
            f"depth of frame {index} is {tuple(depth.shape)} but its image is {tuple(image.shape)}: same H, W needed"
        )
    if tuple(image.shape[:2]) != (camera.height, camera.width):
        raise ValueError(
            f"image of frame {index} is {image.shape[1]}x{image.shape[0]} (WxH) but its camera is "
            f"{camera.width}x{camera.height}"
        )
    # float32 at least: a half-precision depth would make the reprojection of a 1000-pixel image drift by pixels.
    dtype = torch.promote_types(image.dtype, torch.float32)
    return image.to(dtype), depth.to(device=image.device, dtype=dtype)


def reprojective_colour_consistency(
    images: Float[Tensor, "N H W 3"],
    depths: Float[Tensor, "N H W 1"],
    cameras: Cameras,
    depth_kind: DepthKind = "ray",
    depth_rtol: Optional[float] = DEFAULT_DEPTH_RTOL,
    sampling: Sampling = "bilinear",
    masks: Optional[Bool[Tensor, "N H W 1"]] = None,
    min_mse: float = MIN_MSE,
) -> RCCResult:
    """RCC (equation 5) of a rendered video: frames in order, images in [0, 1], depths in `depth_kind` convention.

    cameras: N nerfstudio cameras (any batch shape with N cameras in total, flattened in order).
    masks: optional per-frame source-pixel masks (e.g. accumulation > 0.5).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3], got {tuple(images.shape)}")
    if depths.ndim == 3:
        depths = depths[..., None]
    if depths.ndim != 4 or depths.shape[-1] != 1:
        raise ValueError(f"depths must be [N, H, W, 1], got {tuple(depths.shape)}")
    if depths.shape[:3] != images.shape[:3]:
        raise ValueError(f"depths {tuple(depths.shape)} do not match images {tuple(images.shape)} in N, H, W")
    num_frames = images.shape[0]
    if num_frames < 2:
        raise ValueError(f"RCC needs at least 2 frames, got {num_frames}")
    flat = cameras.flatten() if cameras.shape != () else cameras.reshape((1,))
    if flat.shape[0] != num_frames:
        raise ValueError(f"got {num_frames} frames but {flat.shape[0]} cameras")
    if masks is not None and tuple(masks.shape[:3]) != tuple(images.shape[:3]):
        raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)} in N, H, W")
    accumulator = RCCAccumulator(depth_kind=depth_kind, depth_rtol=depth_rtol, sampling=sampling, min_mse=min_mse)
    for i in range(num_frames):
        mask = None if masks is None else masks[i].reshape(images.shape[1:3])
        accumulator.add(images[i], depths[i], PinholeCamera.from_cameras(flat, i), mask=mask)
    return accumulator.result()


def rcc_from_outputs(
    outputs: Sequence[Mapping[str, Tensor]],
    cameras: Cameras,
    rgb_key: str = "rgb",
    depth_key: str = "depth",
    depth_kind: DepthKind = "ray",
    min_accumulation: Optional[float] = None,
    **kwargs,
) -> RCCResult:
    """RCC of a video given as nerfstudio model outputs (`model.get_outputs_for_camera`), one per camera in order.

    Nerfacto and ReLS-NeRF render `"depth"` as a ray distance, hence depth_kind="ray". For a ReLS-NeRF model,
    rgb_key="rgb" is the decoded image and "rgb_nerf" the colour NeRF's; its "depth" is rendered at the latent
    resolution and upsampled unless the model renders the colour NeRF at full resolution.
    min_accumulation: when set, only pixels whose "accumulation" exceeds it are used as sources.
    Further keyword arguments go to `RCCAccumulator` (depth_rtol, sampling, min_mse).
    """
    flat = cameras.flatten() if cameras.shape != () else cameras.reshape((1,))
    if len(outputs) != flat.shape[0]:
        raise ValueError(f"got {len(outputs)} outputs but {flat.shape[0]} cameras")
    accumulator = RCCAccumulator(depth_kind=depth_kind, **kwargs)
    for i, output in enumerate(outputs):
        for key in (rgb_key, depth_key) + (("accumulation",) if min_accumulation is not None else ()):
            if key not in output:
                raise KeyError(f"output {i} has no {key!r} (keys: {sorted(output)})")
        mask = None if min_accumulation is None else output["accumulation"][..., 0] > min_accumulation
        accumulator.add(output[rgb_key], output[depth_key], PinholeCamera.from_cameras(flat, i), mask=mask)
    return accumulator.result()
