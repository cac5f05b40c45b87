"""The inference path of the decoded output: one latent ray bundle per frame, replayed as a CUDA graph on a GPU.

At 1/8 resolution a 1008x756 frame is 126x95 = 11,970 rays: no chunking is needed, and the GPU work per frame is a
few milliseconds. Rendered eagerly, the time goes to launching the thousands of small kernels of the torch hash grids,
proposal networks and samplers, and to the Python that issues them. So on CUDA the whole frame (proposal sampling,
field, compositing, decoder) is captured once per resolution as a CUDA graph and replayed; each frame then costs one
ray generation, a copy into the graph's input buffers and one replay. The decoder runs in half precision where that
is enabled (its output is an 8-bit image in the end).

The plain path (`RelsNerfModelConfig.inference_path = "plain"`) renders the same rays in float32 chunks, as nerfacto
does; tests compare the two.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple

import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import OrientedBox
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor
from torch.overrides import TorchFunctionMode

from relsnerf_ns.rendering.latent_rays import latent_ray_bundle


class LatentRenderingModel(Protocol):
    """What the renderer uses of a model: nerfacto's modules plus ReLS-NeRF's latent rendering and decoding.

    `RelsNerfModel` is one. Typed by what it offers, so that this module does not import the model (which builds a
    renderer, and so imports this module).
    """

    device: torch.device
    training: bool
    config: Any
    collider: Any
    field: Any
    proposal_sampler: Any
    density_fns: List[Callable]
    renderer_rgb: Any
    renderer_depth: Any
    renderer_accumulation: Any

    def render_latents(self, ray_bundle: RayBundle, with_colour: bool = False) -> Dict[str, Tensor]: ...

    def decoder_input_map(self, maps: Dict[str, Tensor]) -> Float[Tensor, "*batch rows cols c"]: ...

    def decode_latent_map(self, inputs: Float[Tensor, "*batch rows cols c"]) -> Float[Tensor, "*batch 3 H W"]: ...

    def modules(self) -> Iterator[torch.nn.Module]: ...


@dataclass
class LatentFrame:
    """One frame of the decoded path: the 1/8-resolution maps and the decoded image (padded to whole blocks)."""

    low: Dict[str, Float[Tensor, "rows cols c"]]
    """latent, rgb_nerf, depth, accumulation at one ray per 8x8 block (and the surface channels of surface
    guidance)."""
    decoded: Float[Tensor, "3 H8 W8"]
    """D(latent map) in [0, 1], 8 * rows by 8 * cols."""


@dataclass
class _CapturedFrame:
    graph: "torch.cuda.CUDAGraph"
    inputs: Dict[str, Tensor]
    outputs: Dict[str, Tensor]


class LatentFrameRenderer:
    """Renders and decodes whole latent frames for inference (viewer, ns-render, ns-eval).

    Args:
        model: the ReLS-NeRF model (its proposal sampler, field, renderers and autoencoder are used as they are).
        cuda_graphs: capture each resolution as a CUDA graph (CUDA and the torch implementation only).
        half_precision_decoder: run the decoder under float16 autocast on CUDA.
        max_cached_graphs: how many resolutions keep a graph (the viewer changes resolution while moving).
    """

    def __init__(
        self,
        model: LatentRenderingModel,
        cuda_graphs: bool = True,
        half_precision_decoder: bool = True,
        max_cached_graphs: int = 4,
    ) -> None:
        self.model = model
        self.cuda_graphs = cuda_graphs
        self.half_precision_decoder = half_precision_decoder
        self.max_cached_graphs = max_cached_graphs
        self._graphs: "OrderedDict[Tuple, _CapturedFrame]" = OrderedDict()
        self._seen: Dict[Tuple, int] = {}
        self._graphs_failed = False

    # ------------------------------------------------------------------ stages
    def latent_rays(self, camera: Cameras, obb_box: Optional[OrientedBox] = None) -> RayBundle:
        """One ray per 8x8 block (the image padded up to whole blocks), near/far set as the model's collider does."""
        model = self.model
        height, width = int(camera.height.flatten()[0]), int(camera.width.flatten()[0])
        rows, cols = -(-height // 8), -(-width // 8)
        camera = camera.to(model.device)
        bundle = latent_ray_bundle(camera.flatten()[:1], 0, 0, 0, rows, cols, 8, obb_box=obb_box)
        if bundle.nears is None and model.collider is not None:
            bundle = model.collider(bundle)
        return bundle

    def decode(self, inputs: Float[Tensor, "rows cols c"]) -> Float[Tensor, "3 H8 W8"]:
        """The decoder on a decoder input map (the latent map, with guidance channels when the decoder is guided)."""
        autocast = (
            torch.autocast("cuda", dtype=torch.float16)
            if self.half_precision_decoder and inputs.is_cuda
            else contextlib.nullcontext()
        )
        with autocast:
            decoded = self.model.decode_latent_map(inputs)
        return decoded.float().clamp(0.0, 1.0)

    def _frame(self, rays: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Sampling, field, compositing and decoding of a [rows, cols] bundle given as plain tensors."""
        rows, cols = rays["origins"].shape[:2]
        bundle = RayBundle(
            origins=rays["origins"].reshape(-1, 3),
            directions=rays["directions"].reshape(-1, 3),
            pixel_area=rays["pixel_area"].reshape(-1, 1),
            camera_indices=rays["camera_indices"].reshape(-1, 1),
            nears=rays["nears"].reshape(-1, 1),
            fars=rays["fars"].reshape(-1, 1),
            metadata={
                "directions_norm": rays["directions_norm"].reshape(-1, 1),
                "pixel_axes": rays["pixel_axes"].reshape(-1, 6),
            },
        )
        low = self.model.render_latents(bundle, with_colour=True)
        outputs = {key: value.reshape(rows, cols, -1) for key, value in low.items()}
        outputs["decoded"] = self.decode(self.model.decoder_input_map(outputs))
        return outputs

    # ------------------------------------------------------------------ frames
    @torch.no_grad()
    def __call__(self, camera: Cameras, obb_box: Optional[OrientedBox] = None) -> LatentFrame:
        bundle = self.latent_rays(camera, obb_box)
        rays = _bundle_tensors(bundle)
        if self._use_graphs(rays):
            outputs = self._replay(rays)
        else:
            outputs = self._frame(rays)
        low = {key: value for key, value in outputs.items() if key != "decoded"}
        return LatentFrame(low=low, decoded=outputs["decoded"])

    def _use_graphs(self, rays: Dict[str, Tensor]) -> bool:
        model = self.model
        return (
            self.cuda_graphs
            and not self._graphs_failed
            and rays["origins"].is_cuda
            and not model.training
            # tinycudann launches on its own streams; its kernels are not captured reliably.
            and model.config.implementation == "torch"
        )

    def _replay(self, rays: Dict[str, Tensor]) -> Dict[str, Tensor]:
        # The proposal sampler's annealing exponent is a Python float baked into a capture: part of the key.
        key = (tuple(rays["origins"].shape), str(rays["origins"].device), float(self.model.proposal_sampler._anneal))
        captured = self._graphs.get(key)
        if captured is None:
            # Capture a resolution the second time it is asked for: the viewer passes through many resolutions
            # while the camera moves, and a capture costs a few eager frames.
            self._seen[key] = self._seen.get(key, 0) + 1
            if self._seen[key] < 2:
                return self._frame(rays)
            try:
                captured = self._capture(rays)
            except RuntimeError as error:  # torch.OutOfMemoryError is one
                if out_of_memory(error):
                    # Not a capture problem: this size does not fit (a graph's private memory pool comes on top of
                    # the blocks the eager frames keep cached). Raised as what it is, so that the model renders frames
                    # this large in chunks from now on, as for any other out-of-memory error; graphs stay on for the
                    # sizes that fit.
                    self._seen.pop(key, None)
                    if isinstance(error, torch.OutOfMemoryError):
                        raise
                    raise torch.OutOfMemoryError(f"out of GPU memory capturing a CUDA graph ({error})") from error
                # An op that cannot be captured: render eagerly from now on.
                self._graphs_failed = True
                CONSOLE.print(f"[yellow]CUDA graph capture failed ({error}); rendering without graphs.")
                return self._frame(rays)
            self._graphs[key] = captured
            while len(self._graphs) > self.max_cached_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        for name, value in rays.items():
            captured.inputs[name].copy_(value)
        captured.graph.replay()
        # The graph's outputs are overwritten by the next replay: hand out copies.
        return {name: value.clone() for name, value in captured.outputs.items()}

    def _capture(self, rays: Dict[str, Tensor]) -> _CapturedFrame:
        device = rays["origins"].device
        move_plain_tensors(self.model, device)
        inputs = {name: value.clone() for name, value in rays.items()}
        # Factory calls without a device inside nerfstudio's samplers (torch.linspace(...).to(device)) would copy
        # from host memory during capture, which CUDA forbids: make them allocate on the GPU instead, and serve
        # constant tensors built from Python data (the hash primes of the torch hash grid) from a device cache.
        with torch.device(device), DeviceConstants(device):
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: cuDNN/cuBLAS choose their kernels outside the capture
                    self._frame(inputs)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = self._frame(inputs)
        return _CapturedFrame(graph=graph, inputs=inputs, outputs=outputs)

    def clear(self) -> None:
        """Drop the captured graphs (and their memory)."""
        self._graphs.clear()
        self._seen.clear()

    @property
    def num_captured(self) -> int:
        return len(self._graphs)


class DeviceConstants(TorchFunctionMode):
    """During warm-up and capture: `torch.tensor(python_data)` returns one cached device tensor per value.

    `torch.tensor([...], device="cuda")` builds the tensor on the host and copies it, which cannot be captured;
    nerfstudio's torch hash grid does that on every call. The warm-up (not captured) fills the cache, the capture
    then reads the cached tensor. Only used around the model's own render path, which does not modify such constants.
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.cache: Dict[Tuple, Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.tensor and args and isinstance(args[0], (list, tuple, int, float, bool)):
            key = (repr(args[0]), kwargs.get("dtype"))
            if key not in self.cache:
                self.cache[key] = func(*args, **{**kwargs, "device": self.device})
            return self.cache[key]
        return func(*args, **kwargs)


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is, or was raised while handling, the GPU running out of memory.

    An allocation that fails during a capture can surface as the error of the capture's end (the capture was
    invalidated), with the OutOfMemoryError only in its context; a failed cudaMalloc outside torch's allocator says
    "out of memory" in a plain RuntimeError.
    """
    seen = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        if isinstance(current, torch.OutOfMemoryError) or "out of memory" in str(current).lower():
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def move_plain_tensors(model: torch.nn.Module, device: torch.device) -> None:
    """Move tensors that modules keep as plain attributes (not buffers) to the device.

    nerfstudio's torch HashEncoding keeps `scalings` and `hash_offset` as plain CPU tensors and copies them to the
    GPU on every call (`.to(x.device)`); a copy from pageable host memory cannot be captured in a CUDA graph. Once
    they live on the device those copies are no-ops (and still correct if the model later moves elsewhere).
    """
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, Tensor) and value.device != device:
                setattr(module, name, value.to(device))


def _bundle_tensors(bundle: RayBundle) -> Dict[str, Tensor]:
    metadata = bundle.metadata or {}
    norm = metadata.get("directions_norm")
    if norm is None:
        norm = torch.ones_like(bundle.origins[..., :1])
    return {
        "origins": bundle.origins,
        "directions": bundle.directions,
        "pixel_area": bundle.pixel_area,
        "camera_indices": bundle.camera_indices,
        "nears": bundle.nears,
        "fars": bundle.fars,
        "directions_norm": norm,
        "pixel_axes": metadata["pixel_axes"],  # latent_ray_bundle's: where surface guidance puts its points
    }
