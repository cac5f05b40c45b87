"""Fused multiresolution hash-grid lookups (Instant-NGP) for nerfstudio's torch `HashEncoding`, written in Triton.

Without tinycudann, nerfstudio's torch hash grid computes each lookup as ~60 separate tensor operations (eight corner
hashes, eight gathers, seven interpolations per level), each writing a [samples, levels, ...] tensor to memory. A
1008x756 frame's latent rays alone make ~3 million proposal samples and ~600 thousand field samples, so those
intermediates, not the gathers themselves, dominate the frame time and a good part of each training step.

Here one kernel does the whole lookup per (sample, level) in registers, and a second scatters the table's gradient
with atomic adds. The arithmetic is nerfstudio's, term by term (same hash, the same ceil/floor corners, the same
interpolation order), so a trained model renders the same images with either (float32 rounding aside). The gradient
with respect to the positions (camera pose refinement) is a third kernel, run only when it is needed. Triton ships
with PyPI's CUDA builds of torch; on the CPU, or without Triton, the torch lookup runs (set TRITON_INTERPRET=1 to
run these kernels on the CPU through Triton's interpreter, as the tests do).
"""

from __future__ import annotations

import os
import types
from typing import Dict, Tuple

import torch
from jaxtyping import Float
from nerfstudio.field_components.encodings import HashEncoding
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - PyPI's Linux torch wheels bring Triton
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
"""Triton's CPU interpreter is on: the kernels also run on CPU tensors (slowly; for tests)."""

BLOCK_SAMPLES = 64
"""Samples per program; each program handles all levels of its samples (a [BLOCK_SAMPLES, levels] tile)."""


if triton is not None:

    @triton.jit
    def _corner_index(ix, iy, iz, level_offset, table_mask):
        # nerfstudio's hash: (x * 1) ^ (y * 2654435761) ^ (z * 805459861), modulo the table size. It multiplies in
        # int64, we in uint32: the table size is a power of two, so only the low bits matter and those agree.
        h = ix.to(tl.uint32) ^ (iy.to(tl.uint32) * 2654435761) ^ (iz.to(tl.uint32) * 805459861)
        return (h & table_mask).to(tl.int32) + level_offset

    @triton.jit
    def _tile(n_samples, pid, NUM_LEVELS: tl.constexpr, LEVELS_PAD: tl.constexpr, BLOCK: tl.constexpr):
        """This program's tile of (sample, level) pairs: row and level indices and which of them exist."""
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        levels = tl.arange(0, LEVELS_PAD)
        row_ok = rows < n_samples
        mask = row_ok[:, None] & (levels < NUM_LEVELS)[None, :]
        return rows, levels, row_ok, mask

    # The kernels load positions and level scales themselves and hand the helpers values, never pointers:
    # torch.compile's mutation analysis of user Triton kernels (torch._higher_order_ops.triton_kernel_wrap) takes
    # every pointer passed to a helper whose results reach a store's address as written. With the loads inside
    # `_corners`, positions and scalings counted as outputs of all three kernels, and AOTAutograd failed on the
    # backward "writing" the saved positions ("Node ... was invalid, but is output").

    @triton.jit
    def _corners(x, y, z, scale, levels, LOG2_TABLE: tl.constexpr):
        """Per (sample, level): the 8 corner indices and the 3 interpolation offsets, from the samples' positions
        x, y, z [BLOCK] and the levels' scales [1, LEVELS_PAD]."""
        px = x[:, None] * scale
        py = y[:, None] * scale
        pz = z[:, None] * scale
        cx, cy, cz = tl.ceil(px).to(tl.int32), tl.ceil(py).to(tl.int32), tl.ceil(pz).to(tl.int32)
        fx, fy, fz = tl.floor(px).to(tl.int32), tl.floor(py).to(tl.int32), tl.floor(pz).to(tl.int32)
        ox, oy, oz = px - fx.to(tl.float32), py - fy.to(tl.float32), pz - fz.to(tl.float32)
        offset = levels[None, :] * (1 << LOG2_TABLE)
        table_mask = (1 << LOG2_TABLE) - 1
        # nerfstudio's corner numbering: c = ceil, f = floor along x, y, z.
        i0 = _corner_index(cx, cy, cz, offset, table_mask)
        i1 = _corner_index(cx, fy, cz, offset, table_mask)
        i2 = _corner_index(fx, fy, cz, offset, table_mask)
        i3 = _corner_index(fx, cy, cz, offset, table_mask)
        i4 = _corner_index(cx, cy, fz, offset, table_mask)
        i5 = _corner_index(cx, fy, fz, offset, table_mask)
        i6 = _corner_index(fx, fy, fz, offset, table_mask)
        i7 = _corner_index(fx, cy, fz, offset, table_mask)
        return i0, i1, i2, i3, i4, i5, i6, i7, ox, oy, oz

    @triton.jit
    def _gather_corners(table_ptr, i0, i1, i2, i3, i4, i5, i6, i7, f, mask, FEATURES: tl.constexpr):
        """Feature f of the 8 corners' table entries."""
        return (
            tl.load(table_ptr + i0 * FEATURES + f, mask=mask, other=0.0),
            tl.load(table_ptr + i1 * FEATURES + f, mask=mask, other=0.0),
            tl.load(table_ptr + i2 * FEATURES + f, mask=mask, other=0.0),
            tl.load(table_ptr + i3 * FEATURES + f, mask=mask, other=0.0),
            tl.load(table_ptr + i4 * FEATURES + f, mask=mask, other=0.0),
            tl.load(table_ptr + i5 * FEATURES + f, mask=mask, other=0.0),
            tl.load(table_ptr + i6 * FEATURES + f, mask=mask, other=0.0),
            tl.load(table_ptr + i7 * FEATURES + f, mask=mask, other=0.0),
        )

    @triton.jit
    def _hash_grid_forward(x_ptr, table_ptr, scalings_ptr, out_ptr, n_samples, NUM_LEVELS: tl.constexpr,
                           LEVELS_PAD: tl.constexpr, FEATURES: tl.constexpr, LOG2_TABLE: tl.constexpr,
                           BLOCK: tl.constexpr):  # fmt: skip
        rows, levels, row_ok, mask = _tile(n_samples, tl.program_id(0), NUM_LEVELS, LEVELS_PAD, BLOCK)
        scale = tl.load(scalings_ptr + levels, mask=levels < NUM_LEVELS, other=0.0)[None, :]
        x = tl.load(x_ptr + rows * 3 + 0, mask=row_ok, other=0.0)
        y = tl.load(x_ptr + rows * 3 + 1, mask=row_ok, other=0.0)
        z = tl.load(x_ptr + rows * 3 + 2, mask=row_ok, other=0.0)
        i0, i1, i2, i3, i4, i5, i6, i7, ox, oy, oz = _corners(x, y, z, scale, levels, LOG2_TABLE)
        out_row = rows[:, None] * (NUM_LEVELS * FEATURES) + levels[None, :] * FEATURES
        for f in tl.static_range(FEATURES):
            f0, f1, f2, f3, f4, f5, f6, f7 = _gather_corners(
                table_ptr, i0, i1, i2, i3, i4, i5, i6, i7, f, mask, FEATURES
            )
            # The interpolation in nerfstudio's order: x first, then y, then z.
            f03 = f0 * ox + f3 * (1 - ox)
            f12 = f1 * ox + f2 * (1 - ox)
            f56 = f5 * ox + f6 * (1 - ox)
            f47 = f4 * ox + f7 * (1 - ox)
            f0312 = f03 * oy + f12 * (1 - oy)
            f4756 = f47 * oy + f56 * (1 - oy)
            value = f0312 * oz + f4756 * (1 - oz)
            tl.store(out_ptr + out_row + f, value, mask=mask)

    @triton.jit
    def _hash_grid_table_backward(x_ptr, scalings_ptr, grad_out_ptr, grad_table_ptr, n_samples,
                                  NUM_LEVELS: tl.constexpr, LEVELS_PAD: tl.constexpr, FEATURES: tl.constexpr,
                                  LOG2_TABLE: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        rows, levels, row_ok, mask = _tile(n_samples, tl.program_id(0), NUM_LEVELS, LEVELS_PAD, BLOCK)
        scale = tl.load(scalings_ptr + levels, mask=levels < NUM_LEVELS, other=0.0)[None, :]
        x = tl.load(x_ptr + rows * 3 + 0, mask=row_ok, other=0.0)
        y = tl.load(x_ptr + rows * 3 + 1, mask=row_ok, other=0.0)
        z = tl.load(x_ptr + rows * 3 + 2, mask=row_ok, other=0.0)
        i0, i1, i2, i3, i4, i5, i6, i7, ox, oy, oz = _corners(x, y, z, scale, levels, LOG2_TABLE)
        out_row = rows[:, None] * (NUM_LEVELS * FEATURES) + levels[None, :] * FEATURES
        # d value / d f_k: the product of the factors on f_k's path through the interpolation above.
        w0 = ox * oy * oz
        w1 = ox * (1 - oy) * oz
        w2 = (1 - ox) * (1 - oy) * oz
        w3 = (1 - ox) * oy * oz
        w4 = ox * oy * (1 - oz)
        w5 = ox * (1 - oy) * (1 - oz)
        w6 = (1 - ox) * (1 - oy) * (1 - oz)
        w7 = (1 - ox) * oy * (1 - oz)
        for f in tl.static_range(FEATURES):
            g = tl.load(grad_out_ptr + out_row + f, mask=mask, other=0.0)
            tl.atomic_add(grad_table_ptr + i0 * FEATURES + f, g * w0, mask=mask)
            tl.atomic_add(grad_table_ptr + i1 * FEATURES + f, g * w1, mask=mask)
            tl.atomic_add(grad_table_ptr + i2 * FEATURES + f, g * w2, mask=mask)
            tl.atomic_add(grad_table_ptr + i3 * FEATURES + f, g * w3, mask=mask)
            tl.atomic_add(grad_table_ptr + i4 * FEATURES + f, g * w4, mask=mask)
            tl.atomic_add(grad_table_ptr + i5 * FEATURES + f, g * w5, mask=mask)
            tl.atomic_add(grad_table_ptr + i6 * FEATURES + f, g * w6, mask=mask)
            tl.atomic_add(grad_table_ptr + i7 * FEATURES + f, g * w7, mask=mask)

    @triton.jit
    def _hash_grid_position_backward(x_ptr, table_ptr, scalings_ptr, grad_out_ptr, grad_x_ptr, n_samples,
                                     NUM_LEVELS: tl.constexpr, LEVELS_PAD: tl.constexpr, FEATURES: tl.constexpr,
                                     LOG2_TABLE: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        rows, levels, row_ok, mask = _tile(n_samples, tl.program_id(0), NUM_LEVELS, LEVELS_PAD, BLOCK)
        scale = tl.load(scalings_ptr + levels, mask=levels < NUM_LEVELS, other=0.0)[None, :]
        x = tl.load(x_ptr + rows * 3 + 0, mask=row_ok, other=0.0)
        y = tl.load(x_ptr + rows * 3 + 1, mask=row_ok, other=0.0)
        z = tl.load(x_ptr + rows * 3 + 2, mask=row_ok, other=0.0)
        i0, i1, i2, i3, i4, i5, i6, i7, ox, oy, oz = _corners(x, y, z, scale, levels, LOG2_TABLE)
        out_row = rows[:, None] * (NUM_LEVELS * FEATURES) + levels[None, :] * FEATURES
        gx = tl.zeros_like(ox)
        gy = tl.zeros_like(ox)
        gz = tl.zeros_like(ox)
        for f in tl.static_range(FEATURES):
            g = tl.load(grad_out_ptr + out_row + f, mask=mask, other=0.0)
            f0, f1, f2, f3, f4, f5, f6, f7 = _gather_corners(
                table_ptr, i0, i1, i2, i3, i4, i5, i6, i7, f, mask, FEATURES
            )
            # d value / d offset (the offsets move with the position; the corners do not), per axis.
            gx += g * ((f0 - f3) * oy * oz + (f1 - f2) * (1 - oy) * oz + (f4 - f7) * oy * (1 - oz)
                       + (f5 - f6) * (1 - oy) * (1 - oz))  # fmt: skip
            f03 = f0 * ox + f3 * (1 - ox)
            f12 = f1 * ox + f2 * (1 - ox)
            f56 = f5 * ox + f6 * (1 - ox)
            f47 = f4 * ox + f7 * (1 - ox)
            gy += g * ((f03 - f12) * oz + (f47 - f56) * (1 - oz))
            gz += g * ((f03 * oy + f12 * (1 - oy)) - (f47 * oy + f56 * (1 - oy)))
        # d offset / d position = the level's scale; sum over levels.
        tl.store(grad_x_ptr + rows * 3 + 0, tl.sum(gx * scale, axis=1), mask=row_ok)
        tl.store(grad_x_ptr + rows * 3 + 1, tl.sum(gy * scale, axis=1), mask=row_ok)
        tl.store(grad_x_ptr + rows * 3 + 2, tl.sum(gz * scale, axis=1), mask=row_ok)


def _launch_shape(encoding: HashEncoding, n_samples: int) -> Tuple[Tuple[int], Dict[str, object]]:
    grid = (triton.cdiv(max(n_samples, 1), BLOCK_SAMPLES),)
    meta = {
        "NUM_LEVELS": encoding.num_levels,
        "LEVELS_PAD": triton.next_power_of_2(encoding.num_levels),
        "FEATURES": encoding.features_per_level,
        "LOG2_TABLE": encoding.log2_hashmap_size,
        "BLOCK": BLOCK_SAMPLES,
        # No fused multiply-adds: every product is rounded, as in torch's separate operations, so the values equal
        # nerfstudio's lookup (with them, `x * scale - floor` alone differs by up to an ulp of x * scale, ~1e-4
        # at the finest level). The kernels are memory-bound; this costs nothing measurable.
        "enable_fp_fusion": False,
    }
    return grid, meta


class _HashGridLookup(torch.autograd.Function):
    """positions [N, 3] in [0, 1] -> features [N, levels * features]; gradients for the table and positions."""

    @staticmethod
    def forward(ctx, positions: Tensor, table: Tensor, scalings: Tensor, encoding: HashEncoding) -> Tensor:
        n_samples = positions.shape[0]
        out = torch.empty(n_samples, encoding.num_levels * encoding.features_per_level, device=positions.device)
        if n_samples:
            grid, meta = _launch_shape(encoding, n_samples)
            _hash_grid_forward[grid](positions, table, scalings, out, n_samples, **meta)
        ctx.save_for_backward(positions, table, scalings)
        ctx.encoding = encoding
        ctx.table_shape = table.shape
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        positions, table, scalings = ctx.saved_tensors
        n_samples = positions.shape[0]
        grid, meta = _launch_shape(ctx.encoding, n_samples)
        grad = grad_out.float().contiguous()
        grad_positions = grad_table = None
        if ctx.needs_input_grad[1]:
            grad_table = torch.zeros(ctx.table_shape, device=positions.device, dtype=torch.float32)
            if n_samples:
                _hash_grid_table_backward[grid](positions, scalings, grad, grad_table, n_samples, **meta)
        if ctx.needs_input_grad[0]:
            # Only when positions carry a gradient that someone uses (camera pose refinement, normals).
            grad_positions = torch.zeros_like(positions)
            if n_samples:
                _hash_grid_position_backward[grid](positions, table, scalings, grad, grad_positions, n_samples, **meta)
        return grad_positions, grad_table, None, None


def kernels_available(device: torch.device) -> bool:
    """Whether the fused lookups can run on tensors of this device."""
    return triton is not None and (device.type == "cuda" or INTERPRET)


def fused_lookup(encoding: HashEncoding, positions: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch features"]:
    """`encoding.pytorch_fwd(positions)` computed by the fused kernels (same values within float32 rounding)."""
    batch = positions.shape[:-1]
    flat = positions.reshape(-1, 3).float().contiguous()
    # nerfstudio keeps `scalings` as a plain CPU tensor; keep a float32 copy on the positions' device.
    scalings = getattr(encoding, "_fused_scalings", None)
    if scalings is None or scalings.device != flat.device:
        scalings = encoding.scalings.to(device=flat.device, dtype=torch.float32).contiguous()
        encoding._fused_scalings = scalings
    table = encoding.hash_table
    if table.dtype != torch.float32 or not table.is_contiguous():
        return HashEncoding.pytorch_fwd(encoding, positions)
    out = _HashGridLookup.apply(flat, table, scalings, encoding)
    return out.view(*batch, out.shape[-1])


def _hash_grid_forward_method(encoding: HashEncoding, positions: Tensor) -> Tensor:
    if not kernels_available(positions.device):
        return HashEncoding.pytorch_fwd(encoding, positions)
    return fused_lookup(encoding, positions)


def use_fused_hash_grids(module: torch.nn.Module, enabled: bool = True) -> int:
    """Route every torch-implemented `HashEncoding` inside `module` through the fused kernels (or back to
    nerfstudio's lookup with `enabled=False`). Returns how many encodings were switched.

    Encodings backed by tinycudann are left alone; parameters, state dicts and checkpoints do not change.
    """
    count = 0
    for encoding in module.modules():
        if isinstance(encoding, HashEncoding) and encoding.tcnn_encoding is None:
            if enabled:
                encoding.pytorch_fwd = types.MethodType(_hash_grid_forward_method, encoding)
                # The kernels' float32 copy of the level scales, moved with the module (not saved): created here
                # rather than on first use, so that torch.compile sees the same attribute from its first trace.
                scalings = encoding.scalings.to(torch.float32).contiguous()
                encoding.register_buffer("_fused_scalings", scalings, persistent=False)
            else:
                vars(encoding).pop("pytorch_fwd", None)
                encoding._buffers.pop("_fused_scalings", None)
            count += 1
    return count


def uses_fused_hash_grids(module: torch.nn.Module) -> bool:
    """Whether the torch hash grids inside `module` are routed through the fused kernels."""
    return any("pytorch_fwd" in vars(encoding) for encoding in module.modules() if isinstance(encoding, HashEncoding))
