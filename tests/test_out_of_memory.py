"""Frames that run out of GPU memory render in smaller pieces (simulated on the CPU) and give the same image."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from relsnerf_ns.rendering.out_of_memory import ShrinkingSize, decode_frame

from .conftest import camera


def out_of_memory_above(limit, function, size_of):
    """`function`, except that it raises torch.OutOfMemoryError when asked for more than `limit`."""
    calls = []

    def limited(*args, **kwargs):
        size = size_of(*args, **kwargs)
        calls.append(size)
        if size > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: {size} > {limit})")
        return function(*args, **kwargs)

    limited.calls = calls
    return limited


def messages(capsys):
    return " ".join(capsys.readouterr().out.split())


def assert_same_outputs(a, b):
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.parametrize("path", ["fast", "plain"])
def test_decoded_frame_falls_back_to_smaller_ray_chunks(model, path, monkeypatch, capsys):  # noqa: F811
    model.eval()
    model.config.inference_path = path
    cam = camera(width=64, height=48)  # 8 x 6 = 48 latent rays
    expected = model.get_outputs_for_camera(cam)
    limited = out_of_memory_above(20, model.render_latents, lambda bundle, **_: len(bundle))
    monkeypatch.setattr(model, "render_latents", limited)
    capsys.readouterr()

    assert_same_outputs(model.get_outputs_for_camera(cam), expected)
    text = messages(capsys)
    if path == "fast":  # the whole-frame bundle failed first
        assert "Out of GPU memory rendering a 64x48 frame as one bundle of 48 latent rays" in text
    assert "Out of GPU memory rendering latent rays in chunks of" in text and "using chunks of 12 rays" in text
    assert model.latent_ray_chunks.limit == 12

    # Later frames start at the chunk that fitted: no failed attempt, no message.
    limited.calls.clear()
    assert_same_outputs(model.get_outputs_for_camera(cam), expected)
    assert max(limited.calls) == 12 and messages(capsys) == ""


def test_rgb_nerf_frame_falls_back_to_smaller_ray_chunks(model, monkeypatch, capsys):  # noqa: F811
    model.eval()
    cam = camera(width=40, height=30)  # 1200 rays, one chunk normally
    expected = model.render_rgb_nerf_outputs(cam)
    limited = out_of_memory_above(500, model.forward, lambda ray_bundle: len(ray_bundle))
    monkeypatch.setattr(model, "forward", limited)
    capsys.readouterr()
    assert_same_outputs(model.render_rgb_nerf_outputs(cam), expected)
    assert "RGB-NeRF (one ray per pixel) in chunks of" in messages(capsys)
    assert model.pixel_ray_chunks.limit == 300 and max(limited.calls) == 1200
    limited.calls.clear()
    assert_same_outputs(model.render_rgb_nerf_outputs(cam), expected)
    assert max(limited.calls) == 300 and messages(capsys) == ""


def test_decoder_falls_back_to_overlapping_tiles(model, monkeypatch, capsys):  # noqa: F811
    """The model's decoded frame through the tiled decoder: each tile is the decode of its latent block plus halo.

    (R32's instance norm sees per-tile statistics, so tiles this small do not match a whole-frame decode; exactness
    for purely convolutional decoders is the next test.)"""
    model.eval()
    model.config.inference_path = "plain"
    model.config.decode_tile_halo = 2
    cam = camera(width=128, height=96)  # a 16 x 12 latent map
    latent = model.render_latent_frame(cam)["latent"].permute(2, 0, 1)[None]
    original = model.autoencoder.decode
    decode = out_of_memory_above(8, original, lambda latent: max(latent.shape[-2:]))
    monkeypatch.setattr(model.autoencoder, "decode", decode)
    capsys.readouterr()
    outputs = model.get_outputs_for_camera(cam)
    assert outputs["rgb"].shape == (96, 128, 3)
    assert "Out of GPU memory decoding a 16x12 latent map at once: decoding in tiles of 4x4" in messages(capsys)
    assert model.decode_tiles.limit == 4 and max(decode.calls[-12:]) <= 8  # 3 x 4 tiles of at most 8 x 8
    with torch.no_grad():  # the tile of latent rows 4-8, columns 8-12, decoded with its 2-pixel halo
        tile = original(latent[..., 2:10, 6:14])[0].permute(1, 2, 0)[16:48, 16:48].clamp(0, 1)
    torch.testing.assert_close(outputs["rgb"][32:64, 64:96], tile)
    assert not torch.allclose(outputs["rgb"][32:64, 64:96], outputs["rgb"][0:32, 0:32])


def test_tiles_with_a_halo_covering_the_receptive_field_decode_exactly(capsys):
    """A purely convolutional decoder (receptive radius under 2 latent pixels): tiled and whole decodes agree."""
    torch.manual_seed(0)
    decoder = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.Upsample(scale_factor=2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Upsample(scale_factor=4),
        nn.Conv2d(8, 3, 3, padding=1),
    ).eval()
    latent = torch.randn(1, 4, 20, 13)
    with torch.no_grad():
        whole = decoder(latent)
        limited = out_of_memory_above(9, decoder, lambda x: max(x.shape[-2:]))
        tiles = ShrinkingSize()
        tiled = decode_frame(limited, latent, tiles, halo=2)
        assert tiles.limit == 5  # 20 -> 10 (10 + 2 halo > 9) -> 5 (5 + 4 <= 9)
        torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-6)
        assert "decoding in tiles of 5x5" in messages(capsys)
        # The next frame starts with tiles that fit; a smaller frame is decoded whole.
        limited.calls.clear()
        decode_frame(limited, latent, tiles, halo=2)
        assert max(limited.calls) <= 9
        small = torch.randn(1, 4, 5, 3)
        torch.testing.assert_close(decode_frame(limited, small, tiles, halo=2), decoder(small))
        assert messages(capsys) == ""


class FakeCapture:
    """torch.cuda's graph-capture API on the CPU: what `LatentFrameRenderer._capture` calls, with `capturing` set
    while a graph is being captured. Like a real capture whose allocation failed, ending it raises a RuntimeError (the
    capture was invalidated) with the OutOfMemoryError only in its context."""

    def __init__(self, monkeypatch):
        self.capturing = False
        self.captures = 0
        fake = self

        class Graph:
            def replay(self):
                raise AssertionError("a failed capture must not be replayed")

        class CaptureContext:
            def __init__(self, graph):
                pass

            def __enter__(self):
                fake.capturing, fake.captures = True, fake.captures + 1

            def __exit__(self, kind, value, traceback):
                fake.capturing = False
                if value is not None:
                    raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

        class Stream:
            def __init__(self, *args, **kwargs):
                pass

            def wait_stream(self, other):
                pass

        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", CaptureContext)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda *args: Stream())


def test_running_out_of_memory_while_capturing_a_cuda_graph_falls_back_to_chunks(model, monkeypatch, capsys):  # noqa: F811
    """The fast path captures a resolution's frame as a CUDA graph at its second sighting; an allocation that fails
    during the capture is an out-of-memory case like the others (chunks from then on, graphs kept for what fits), not
    a capture failure that would turn graphs off for every size."""
    model.eval()
    model.config.inference_path = "fast"
    renderer = model.frame_renderer
    cam = camera(width=64, height=48)  # 48 latent rays
    expected = model.get_outputs_for_camera(cam)
    capture = FakeCapture(monkeypatch)
    monkeypatch.setattr(type(renderer), "_use_graphs", lambda self, rays: self.cuda_graphs and not self._graphs_failed)
    render_latents = model.render_latents

    def no_memory_while_capturing(bundle, **kwargs):
        if capture.capturing:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated, during graph capture)")
        return render_latents(bundle, **kwargs)

    monkeypatch.setattr(model, "render_latents", no_memory_while_capturing)
    capsys.readouterr()
    assert_same_outputs(model.get_outputs_for_camera(cam), expected)  # first sighting: eager
    assert capture.captures == 0 and messages(capsys) == ""
    assert_same_outputs(model.get_outputs_for_camera(cam), expected)  # second: the capture runs out of memory
    assert capture.captures == 1
    text = messages(capsys)
    assert "Out of GPU memory rendering a 64x48 frame as one bundle of 48 latent rays" in text
    assert "capture failed" not in text and not renderer._graphs_failed  # graphs stay on for sizes that fit
    assert model.fast_path_max_rays == 48 and renderer.num_captured == 0
    # Frames this large now go straight to chunks (no new capture attempt, no message); smaller ones keep the fast path.
    assert_same_outputs(model.get_outputs_for_camera(cam), expected)
    assert capture.captures == 1 and messages(capsys) == ""
    small = camera(width=32, height=24)
    model.get_outputs_for_camera(small)
    model.get_outputs_for_camera(small)  # second sighting of a size that fits: captured (and fails again here)
    assert capture.captures == 2
