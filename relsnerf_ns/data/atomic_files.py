"""Files written atomically: a temporary file in the same folder, synced, then renamed over the target.

A crash or a kill at any point leaves either the complete new file or the old one, never half a file. Used for phase
C's renders and their manifest and for the benchmark's records and reports. (Checkpoints have a writer of their own,
`relsnerf_trainer.write_checkpoint_atomically`: their temporary file must live outside the checkpoint folder.)
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
from jaxtyping import Float
from PIL import Image
from torch import Tensor


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> Path:
    """Write data to path through a temporary file in the same folder and os.replace (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; these are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: os.PathLike | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def png_bytes(image: Float[Tensor, "H W 3"]) -> bytes:
    """An RGB image with values in [0, 1] as 8-bit PNG (rounded to the nearest level, as torchvision saves)."""
    array = (image.detach().clamp(0, 1).cpu().float().numpy() * 255.0 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: os.PathLike | str, image: Float[Tensor, "H W 3"]) -> Path:
    """`png_bytes(image)`, written atomically."""
    return atomic_write_bytes(path, png_bytes(image))
