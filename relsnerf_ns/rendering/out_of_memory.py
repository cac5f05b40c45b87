"""Rendering that survives running out of GPU memory: free the cache, halve the piece, retry, keep the smaller size.

A frame larger than the ones a run was tuned for (a 4K `ns-render`, a large viewer window) should render more slowly,
not fail. Each rendering path keeps a `ShrinkingSize`: an upper bound on its work size (rays per chunk, side of a
decoder tile) that halves on `torch.OutOfMemoryError` (`torch.cuda.OutOfMemoryError` is the same class) and stays
halved for later frames, so only the first frame that does not fit pays for the retries. One message says so.

Decoding in tiles: each tile of the latent map is decoded with a margin (`halo`) of neighbouring latent pixels and only
its centre is kept. For purely convolutional decoders whose receptive field fits in the halo (TAESD-family decoders
without the group-norm pool: radius about 19 latent pixels) the result equals the whole-frame decode. Decoders with
normalisation or attention (R32's instance norm, SD-VAE's group norm and mid-block attention, TAEF2's group-norm pool)
compute those statistics per tile instead of per frame, so tiles are close to, not identical with, a whole-frame
decode; phases B and C train the decoder on crops of 256-512 pixels, so tiles of that size are within what it saw.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from typing import Callable, Dict, List, Optional

import torch
from jaxtyping import Float
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor


def free_cached_memory() -> None:
    """Drop unreferenced tensors and return the CUDA allocator's cached blocks (a no-op without CUDA)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class ShrinkingSize:
    """An upper bound on a work size that halves on each out-of-memory error and is kept for later calls."""

    def __init__(self) -> None:
        self.limit: Optional[int] = None
        """None until the first out-of-memory error."""

    def __call__(self, requested: int) -> int:
        """The size to use: the requested one, capped by what fitted so far."""
        return requested if self.limit is None else max(1, min(requested, self.limit))

    def shrink(self, failed: int) -> int:
        """Half of the size that failed (0 when it cannot shrink further)."""
        smaller = failed // 2
        if smaller >= 1:
            self.limit = smaller if self.limit is None else min(self.limit, smaller)
        return smaller


def render_in_chunks(
    num_rays: int,
    chunk: int,
    sizes: ShrinkingSize,
    render: Callable[[int, int], Dict[str, Tensor]],
    what: str,
) -> Dict[str, Tensor]:
    """`render(start, end)` over [0, num_rays) in chunks of at most `chunk` rays, outputs concatenated along rays.

    A chunk that runs out of memory is retried at half the size (down to one ray, then the error is raised).
    """
    size = sizes(chunk)
    first = size
    pieces: Dict[str, List[Tensor]] = defaultdict(list)
    start = 0
    while start < num_rays:
        end = min(start + size, num_rays)
        outputs: Optional[Dict[str, Tensor]] = None
        try:
            outputs = render(start, end)
        except torch.OutOfMemoryError:
            if end - start <= 1:
                raise
        if outputs is None:  # outside the handler, so the failed attempt's tensors are released first
            free_cached_memory()
            size = sizes.shrink(end - start)
            continue
        for key, value in outputs.items():
            pieces[key].append(value)
        start = end
    if size < first:
        CONSOLE.print(
            f"[yellow]Out of GPU memory {what} in chunks of {first} rays: using chunks of {size} rays from now on."
        )
    return {key: torch.cat(values) for key, values in pieces.items()}


def decode_in_tiles(
    decode: Callable[[Tensor], Tensor],
    latent: Float[Tensor, "batch n rows cols"],
    tile: int,
    halo: int,
    scale: int = 8,
) -> Float[Tensor, "batch c rows*scale cols*scale"]:
    """Decode `tile` x `tile` blocks of the latent map, each with `halo` latent pixels of context, keep the centres."""
    rows, cols = latent.shape[-2:]
    result: Optional[Tensor] = None
    for top in range(0, rows, tile):
        for left in range(0, cols, tile):
            bottom, right = min(top + tile, rows), min(left + tile, cols)
            top_in, left_in = max(0, top - halo), max(0, left - halo)
            bottom_in, right_in = min(rows, bottom + halo), min(cols, right + halo)
            decoded = decode(latent[..., top_in:bottom_in, left_in:right_in])
            if result is None:
                result = decoded.new_empty(*decoded.shape[:-2], rows * scale, cols * scale)
            result[..., top * scale : bottom * scale, left * scale : right * scale] = decoded[
                ...,
                (top - top_in) * scale : (bottom - top_in) * scale,
                (left - left_in) * scale : (right - left_in) * scale,
            ]
    assert result is not None
    return result


def decode_frame(
    decode: Callable[[Tensor], Tensor],
    latent: Float[Tensor, "batch n rows cols"],
    tiles: ShrinkingSize,
    halo: int,
    scale: int = 8,
) -> Float[Tensor, "batch c rows*scale cols*scale"]:
    """The whole latent map at once, or, once that ran out of memory, in tiles that halve until they fit."""
    side = max(latent.shape[-2:])
    tile = tiles(side)
    first = tile
    while True:
        decoded: Optional[Tensor] = None
        try:
            decoded = decode(latent) if tile >= side else decode_in_tiles(decode, latent, tile, halo, scale)
        except torch.OutOfMemoryError:
            if tile <= 1:
                raise
        if decoded is not None:
            break
        free_cached_memory()
        tile = tiles.shrink(tile)
    if tile < first:
        rows, cols = latent.shape[-2:]
        CONSOLE.print(
            f"[yellow]Out of GPU memory decoding a {cols}x{rows} latent map"
            + (" at once" if first >= side else f" in tiles of {first}")
            + f": decoding in tiles of {tile}x{tile} latent pixels with {halo} pixels of overlap from now on."
        )
    return decoded
