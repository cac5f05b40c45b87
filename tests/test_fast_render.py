"""The fast inference path of the decoded output against the plain (chunked, float32) path."""

from __future__ import annotations

import pytest
import torch

from relsnerf_ns.benchmark.evaluate import stage_times

from .conftest import camera

OUTPUTS = ("rgb", "rgb_nerf", "depth", "accumulation", "latent")


def outputs_of(model, path, cam):  # noqa: F811
    model.config.inference_path = path
    return model.get_outputs_for_camera(cam)


@pytest.mark.parametrize("size", [(64, 48), (61, 45), (13, 9)])
def test_fast_and_plain_paths_give_the_same_images(model, size):  # noqa: F811
    model.eval()
    model.config.eval_num_rays_per_chunk = 7  # the plain path renders many chunks, the fast one a single bundle
    cam = camera(width=size[0], height=size[1])
    fast, plain = outputs_of(model, "fast", cam), outputs_of(model, "plain", cam)
    assert set(fast) == set(plain) == set(OUTPUTS)
    for key in OUTPUTS:
        assert fast[key].shape == plain[key].shape == (size[1], size[0], fast[key].shape[-1])
        # Stated tolerance on CPU (both float32): 1e-5. On a GPU the fast path's float16 decoder differs by up to
        # ~1e-2 per pixel; the benchmark checks that held-out PSNR moves by less than 0.05 dB.
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-5, atol=1e-5, msg=key)
    assert fast["rgb"].std() > 0


def test_fast_path_is_the_default_for_inference(model, monkeypatch):  # noqa: F811
    from relsnerf_ns.relsnerf_config import relsnerf, relsnerf_r32, relsnerf_tiny

    for spec in (relsnerf, relsnerf_r32, relsnerf_tiny):
        assert spec.config.pipeline.model.inference_path == "fast"
    calls = []
    original = model.frame_renderer.__class__.__call__

    def spy(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(model.frame_renderer.__class__, "__call__", spy)
    model.eval()
    model.get_outputs_for_camera(camera(width=24, height=16))
    assert len(calls) == 1


def test_stage_times_time_the_stages_that_make_the_frame(model):  # noqa: F811
    model.eval()
    cam = camera(width=32, height=24)
    results = []

    def timer(fn):
        results.append(fn())
        return 0.001 * len(results)

    times = stage_times(model.frame_renderer, cam, timer)
    assert list(times) == ["ray_generation", "proposal_sampling", "field", "compositing", "decoding"]
    assert list(times.values()) == pytest.approx([0.001, 0.002, 0.003, 0.004, 0.005])  # one timed call per stage
    # What was timed is the frame itself: the decoding stage's output is the decoded frame.
    frame = model.frame_renderer(cam)
    torch.testing.assert_close(results[-1], frame.decoded, rtol=1e-5, atol=1e-5)
    assert results[0].shape == (3, 4) and results[-1].shape == (3, 24, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_matches_eager_rendering(model):  # noqa: F811
    model.to("cuda").eval()
    renderer = model.frame_renderer
    cam = camera(width=61, height=45)
    renderer.cuda_graphs, renderer.half_precision_decoder = False, False
    eager = renderer(cam)
    renderer.cuda_graphs = True
    renderer(cam)  # first sighting of this resolution: eager
    replayed = renderer(cam)  # second: captured and replayed
    assert renderer.num_captured == 1
    again = renderer(camera(width=61, height=45))
    for key in eager.low:
        torch.testing.assert_close(replayed.low[key], eager.low[key], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(again.low[key], eager.low[key], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(replayed.decoded, eager.decoded, rtol=1e-4, atol=1e-4)
