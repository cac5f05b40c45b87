"""Reading input images robustly: any common pixel format becomes RGB or RGBA, unreadable files are named.

nerfstudio's `InputDataset` turns an image into an array with `np.array(pil_image, dtype="uint8")`, which is right for
RGB, RGBA and 8-bit grayscale only: palette images come out as palette indices (shown as gray), 16-bit grayscale
wraps around modulo 256, grayscale-with-alpha fails an assertion without naming the file, and a missing or corrupt
file fails in a loader thread with PIL's message. `RelsNerfInputDataset` reads through `read_image` instead, and the
datamanager calls `check_images` before caching, so every unreadable file is reported at start-up in one message.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image

HOW_TO_FIX = (
    "Restore or replace the file with a readable image (PNG or JPEG), or remove it from the scene "
    "(its frame in transforms.json, or the image and its camera for other dataparsers)."
)

# What each PIL mode is read as, and how to say so. Modes not listed are converted by PIL to RGB.
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
MODE_NAMES = {
    "L": "8-bit grayscale",
    "LA": "grayscale with alpha",
    "La": "grayscale with alpha",
    "1": "1-bit",
    "P": "palette",
    "PA": "palette with alpha",
    "I": "32-bit integer grayscale",
    "I;16": "16-bit grayscale",
    "I;16B": "16-bit grayscale",
    "I;16L": "16-bit grayscale",
    "I;16N": "16-bit grayscale",
    "F": "floating-point grayscale",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "Lab",
    "HSV": "HSV",
    "RGBa": "premultiplied RGBA",
}


class ImageFileError(ValueError):
    """An input image that cannot be read; the message names the file and says what to do."""


@dataclass
class ImageInfo:
    """What an image's header says."""

    path: Path
    mode: str
    width: int
    height: int
    has_alpha: bool


def has_alpha(image: Image.Image) -> bool:
    """Whether an image carries transparency (an alpha channel, or a transparent palette entry / colour)."""
    return image.mode in ALPHA_MODES or "transparency" in image.info


def read_header(path: Path) -> ImageInfo:
    """Mode and size from the file header (pixels are not decoded); ImageFileError names the file."""
    try:
        with Image.open(path) as image:
            return ImageInfo(Path(path), image.mode, image.width, image.height, has_alpha(image))
    except FileNotFoundError as error:
        raise ImageFileError(f"{path}: no such file") from error
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError
        raise ImageFileError(f"{path}: not a readable image ({type(error).__name__}: {error})") from error


def to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """8-bit RGB, or RGBA when the image has transparency, whatever the file's pixel format."""
    mode = image.mode
    if mode in ("RGB", "RGBA"):
        return image if mode == "RGBA" or "transparency" not in image.info else image.convert("RGBA")
    if mode.startswith("I") or mode == "F":
        # High-bit-depth grayscale: PIL's convert("L") clips at 255 instead of rescaling, so rescale here.
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and values.max(initial=0) > 255):
            values = values / 257.0  # 65535 -> 255
        elif mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0  # a float image in [0, 1]
        gray = np.clip(values + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return image.convert("RGBA" if has_alpha(image) else "RGB")


def read_image(path: Path, scale_factor: float = 1.0, alpha: Optional[bool] = None) -> npt.NDArray[np.uint8]:
    """[H, W, 3] or [H, W, 4] uint8 pixels of an image file, resized like nerfstudio's InputDataset.

    `alpha=True` adds an opaque alpha channel to images without one, so that all images of a scene have the same
    number of channels; otherwise each image keeps its own (4 only when it has transparency).
    """
    try:
        with Image.open(path) as image:
            image.load()
            converted = to_rgb_or_rgba(image)
    except FileNotFoundError as error:
        raise ImageFileError(f"cannot read image {path}: no such file. {HOW_TO_FIX}") from error
    except Exception as error:
        raise ImageFileError(
            f"cannot read image {path} ({type(error).__name__}: {error}): the file is corrupt, truncated or not an "
            f"image. {HOW_TO_FIX}"
        ) from error
    if scale_factor != 1.0:
        size = (int(converted.width * scale_factor), int(converted.height * scale_factor))
        converted = converted.resize(size, resample=Image.Resampling.BILINEAR)
    array = np.array(converted, dtype=np.uint8)
    if alpha and array.shape[2] == 3:
        array = np.concatenate([array, np.full_like(array[..., :1], 255)], axis=2)
    return array


class RelsNerfInputDataset(InputDataset):
    """nerfstudio's InputDataset reading every pixel format as RGB or RGBA (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.uniform_alpha = False
        """Give every image an alpha channel (set by `check_images` when some, not all, images have one), so that
        images stack and pixel batches concatenate."""

    def get_numpy_image(self, image_idx: int) -> npt.NDArray[np.uint8]:
        path = self._dataparser_outputs.image_filenames[image_idx]
        return read_image(path, self.scale_factor, alpha=self.uniform_alpha or None)

    def check_images(self, split: str) -> List[ImageInfo]:
        """Read every header now: one error naming all unreadable files, one naming images whose size is not their
        camera's; one note on converted pixel formats and one on transparency."""
        infos: List[ImageInfo] = []
        problems: List[str] = []
        for path in self.image_filenames:
            try:
                infos.append(read_header(path))
            except ImageFileError as error:
                problems.append(str(error))
        if problems:
            shown = "\n  ".join(problems[:10]) + (
                f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            )
            raise ImageFileError(
                f"{len(problems)} of {len(self)} {split} images cannot be read:\n  {shown}\n{HOW_TO_FIX}"
            )
        with_alpha = sum(info.has_alpha for info in infos)
        self.uniform_alpha = 0 < with_alpha < len(infos)
        note_conversions(infos, split)
        if with_alpha:
            CONSOLE.print(
                f"{with_alpha} of {len(infos)} {split} images have transparency: alpha is blended with the model's "
                "background colour (black unless --pipeline.model.background-color white)."
            )
        check_sizes(infos, self.cameras, self.scale_factor, split)
        return infos


def note_conversions(infos: Sequence[ImageInfo], split: str) -> None:
    counts: Counter = Counter(info.mode for info in infos if info.mode not in ("RGB", "RGBA"))
    if not counts:
        return
    examples: Dict[str, Path] = {}
    for info in infos:
        examples.setdefault(info.mode, info.path)
    parts = [
        f"{count} {MODE_NAMES.get(mode, mode)} ({mode}, e.g. {examples[mode].name})" for mode, count in counts.items()
    ]
    CONSOLE.print(f"{split} images read as RGB/RGBA: {', '.join(parts)}.")


def check_sizes(infos: Sequence[ImageInfo], cameras: Cameras, scale_factor: float, split: str) -> None:
    """Rays come from the cameras, pixels from the files: they must describe images of the same size."""
    mismatches: List[Tuple[Path, Tuple[int, int], Tuple[int, int]]] = []
    widths, heights = cameras.width.flatten().tolist(), cameras.height.flatten().tolist()
    for info, width, height in zip(infos, widths, heights):
        size = (int(info.width * scale_factor), int(info.height * scale_factor))
        # A pixel of slack: downscaled copies (images_2/, ...) round their sizes differently from the cameras.
        if abs(size[0] - int(width)) > 1 or abs(size[1] - int(height)) > 1:
            mismatches.append((info.path, size, (int(width), int(height))))
    if mismatches:
        shown = "; ".join(f"{p.name} is {w}x{h}, its camera {cw}x{ch}" for p, (w, h), (cw, ch) in mismatches[:5])
        raise ImageFileError(
            f"{len(mismatches)} {split} images differ in size from their cameras ({shown}"
            f"{' ...' if len(mismatches) > 5 else ''}), so rays would not pass through their pixels. Fix the image "
            "size (w, h) and intrinsics the dataparser reads (e.g. in transforms.json), or use the images the cameras "
            "were calibrated on."
        )
