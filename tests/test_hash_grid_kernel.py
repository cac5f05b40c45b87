"""The fused hash-grid kernels compute nerfstudio's torch lookup: values, table gradients, position gradients, and a
model's renders and training gradients.

The kernels run on a GPU, or on the CPU through Triton's interpreter (TRITON_INTERPRET=1, read when Triton compiles
the kernels, so at import). A plain CPU run of the suite therefore runs this file once more in a subprocess with the
interpreter on (`test_kernels_pass_under_the_triton_interpreter`); on a GPU the tests run natively.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nerfstudio.field_components.encodings import HashEncoding

from relsnerf_ns.rendering.hash_grid_kernel import INTERPRET, fused_lookup, use_fused_hash_grids, uses_fused_hash_grids
from tests.conftest import tiny_config

DEVICE = "cuda" if torch.cuda.is_available() else ("cpu" if INTERPRET else None)
needs_kernels = pytest.mark.skipif(DEVICE is None, reason="needs CUDA or TRITON_INTERPRET=1 (see the module doc)")

GRIDS = [
    # levels, min res, max res, log2 table size, features per level: nerfacto's density grid, its proposal grids,
    # and odd sizes (levels not a power of two, one and four features, a table smaller than the finest level).
    (16, 16, 2048, 19, 2),
    (5, 16, 128, 17, 1),
    (3, 4, 64, 8, 4),
]


def _encoding(levels, min_res, max_res, log2, features, seed=0) -> HashEncoding:
    torch.manual_seed(seed)
    encoding = HashEncoding(levels, min_res, max_res, log2, features, implementation="torch").to(DEVICE)
    with torch.no_grad():
        encoding.hash_table.normal_()  # the default init (1e-3 scale) would hide interpolation errors
    return encoding


def _positions(count: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    positions = torch.rand(count, 3, generator=generator)
    # Grid points (ceil == floor), the cube's faces and corners: where corner choice and weights are delicate.
    positions[:6] = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.25, 0.0], [1.0, 0.0, 0.5]] + [[0.0625] * 3] * 2
    )
    return positions.to(DEVICE)


@needs_kernels
@pytest.mark.parametrize("grid", GRIDS)
def test_lookup_values_and_gradients_match_nerfstudio(grid):
    encoding = _encoding(*grid)
    positions = _positions(517).requires_grad_(True)  # not a multiple of the kernel's block
    reference = HashEncoding.pytorch_fwd(encoding, positions)
    upstream = torch.randn_like(reference)
    ref_positions, ref_table = torch.autograd.grad(reference, [positions, encoding.hash_table], upstream)

    fused = fused_lookup(encoding, positions)
    got_positions, got_table = torch.autograd.grad(fused, [positions, encoding.hash_table], upstream)

    assert fused.shape == reference.shape == (517, grid[0] * grid[4])
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-6)  # the same roundings (no fused multiply-adds)
    torch.testing.assert_close(got_table, ref_table, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_positions, ref_positions, rtol=1e-4, atol=1e-3)
    assert ref_table.abs().sum() > 0 and ref_positions.abs().sum() > 0  # the comparison is not between zeros


@needs_kernels
def test_batch_shapes_and_empty_input():
    encoding = _encoding(*GRIDS[2])
    positions = _positions(24).view(2, 3, 4, 3)
    out = fused_lookup(encoding, positions)
    assert out.shape == (2, 3, 4, 12)
    torch.testing.assert_close(out, HashEncoding.pytorch_fwd(encoding, positions), rtol=0, atol=1e-6)
    assert fused_lookup(encoding, positions[:0]).shape == (0, 3, 4, 12)


def test_switching_leaves_parameters_alone():
    encoding = HashEncoding(4, 16, 128, 10, 2, implementation="torch")
    model = torch.nn.Sequential(encoding, torch.nn.Linear(8, 2))
    keys = set(model.state_dict())
    assert use_fused_hash_grids(model) == 1 and uses_fused_hash_grids(model)
    assert set(model.state_dict()) == keys
    positions = torch.rand(10, 3)
    if DEVICE is None:  # without kernels for this device the torch lookup still runs
        torch.testing.assert_close(encoding(positions), HashEncoding.pytorch_fwd(encoding, positions))
    assert use_fused_hash_grids(model, enabled=False) == 1 and not uses_fused_hash_grids(model)


@needs_kernels
def test_model_renders_and_trains_the_same_with_fused_lookups(scene, tmp_path):
    config = tiny_config("relsnerf-r32", scene, tmp_path)
    config.machine.device_type = DEVICE
    pipeline = config.pipeline.setup(device=DEVICE, test_mode="val")
    model = pipeline.model
    assert uses_fused_hash_grids(model)  # the default (hash_grid_kernel="fused")
    camera = pipeline.datamanager.train_dataset.cameras[0:1].to(DEVICE)
    model.eval()
    with torch.no_grad():
        fused = model.get_outputs_for_camera(camera)
        use_fused_hash_grids(model, enabled=False)
        reference = model.get_outputs_for_camera(camera)
    for key in ("rgb", "rgb_nerf", "depth", "latent"):
        torch.testing.assert_close(fused[key], reference[key], rtol=1e-4, atol=1e-5, msg=key)

    # One colour-NeRF training pass: the same loss and the same gradient for every parameter.
    model.train()
    bundle = camera.generate_rays(camera_indices=0).flatten()[::7]
    grads = {}
    for fused_lookups in (False, True):
        use_fused_hash_grids(model, enabled=fused_lookups)
        model.zero_grad(set_to_none=True)
        outputs = model(bundle)  # Model.forward sets near/far (collider) first
        loss = outputs["rgb"].square().mean() + outputs["weights_list"][0].mean()
        loss.backward()
        grads[fused_lookups] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys()
    assert any("hash_table" in name for name in grads[True])
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.skipif(INTERPRET or torch.cuda.is_available(), reason="the kernels run natively in this process")
def test_kernels_pass_under_the_triton_interpreter():
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)), "-k", "not interpreter"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = result.stdout[-2000:] + result.stderr[-2000:]
    assert result.returncode == 0, summary
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) == 6 and "skipped" not in summary, summary


@pytest.mark.skipif(INTERPRET, reason="interpreted kernels are no JITFunctions: no Triton IR")
def test_torch_compile_sees_each_kernel_write_only_its_output_not_under_the_interpreter(monkeypatch):
    """torch.compile learns from the kernels' Triton IR which arguments they write. Were positions or scalings
    among them, the backward would 'write' saved inputs and AOTAutograd could not partition the training graph
    ("Node ... was invalid, but is output"). Runs without a GPU: only the IR is generated, for an sm_90 target."""
    pytest.importorskip("triton")
    from torch._higher_order_ops.triton_kernel_wrap import identify_mutated_tensors
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    from relsnerf_ns.rendering import hash_grid_kernel as kernels

    if not torch.cuda.is_available():

        class Target:
            def get_current_target(self):
                return GPUTarget("cuda", 90, 32)

        monkeypatch.setattr(driver, "_active", Target())
    encoding = HashEncoding(5, 16, 128, 12, 2, implementation="torch")
    _, meta = kernels._launch_shape(encoding, 100)
    x, table, scalings = torch.empty(100, 3), encoding.hash_table, torch.empty(5)
    features = torch.empty(100, 10)
    launches = {
        "out_ptr": (
            kernels._hash_grid_forward,
            dict(x_ptr=x, table_ptr=table, scalings_ptr=scalings, out_ptr=features),
        ),
        "grad_table_ptr": (
            kernels._hash_grid_table_backward,
            dict(x_ptr=x, scalings_ptr=scalings, grad_out_ptr=features, grad_table_ptr=torch.empty_like(table)),
        ),
        "grad_x_ptr": (
            kernels._hash_grid_position_backward,
            dict(
                x_ptr=x, table_ptr=table, scalings_ptr=scalings, grad_out_ptr=features, grad_x_ptr=torch.empty_like(x)
            ),
        ),
    }
    for output, (kernel, tensors) in launches.items():
        written = identify_mutated_tensors(kernel, {**tensors, "n_samples": 100, **meta}, {})
        assert written == [output], (kernel, written)
