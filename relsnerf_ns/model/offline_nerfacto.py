"""nerfacto without its LPIPS download: the base of ReLS-NeRF's model and the benchmark's nerfacto.

nerfstudio 1.1.5's `NerfactoModel.populate_modules` ends by constructing torchmetrics' LPIPS, whose constructor builds
torchvision's pretrained AlexNet and downloads its weights when they are not in the torch cache (an error on a machine
without internet, a 233 MB download on one with it). nerfstudio has no seam to skip it: the class is imported inside
populate_modules, no config field turns it off, and it is the method's last statement, so nothing can be overridden
before it runs. Calling nerfacto's populate_modules would need that module global swapped while it runs; instead
`OfflineNerfactoModel.populate_modules` mirrors it with two changes:

- the field is built by `make_field` (nerfacto's `NerfactoField`; ReLS-NeRF builds its field with a latent branch);
- `self.lpips` is `DeferredLPIPS`: nothing is built until nerfacto's evaluation calls it, and then only from the
  torch cache (`image_metrics.OfflineLPIPS`). It is not a torch module, so checkpoints have no LPIPS tensors.

Everything else is built as nerfacto builds it, in the same order (so random initial weights are the same), under the
same attribute names (so state-dict keys are nerfacto's).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Type

import numpy as np
import torch
from nerfstudio.cameras.camera_optimizers import CameraOptimizer
from nerfstudio.field_components.spatial_distortions import SceneContraction
from nerfstudio.fields.density_fields import HashMLPDensityField
from nerfstudio.fields.nerfacto_field import NerfactoField
from nerfstudio.model_components.losses import MSELoss
from nerfstudio.model_components.ray_samplers import ProposalNetworkSampler, UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, NormalsRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import NearFarCollider
from nerfstudio.model_components.shaders import NormalsShader
from nerfstudio.models.base_model import Model
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from torch import Tensor

from relsnerf_ns.evaluation.image_metrics import OfflineLPIPS


class DeferredLPIPS:
    """What nerfacto's evaluation calls as `self.lpips(gt, prediction)`: LPIPS from the torch cache only, a tensor
    (NaN when the AlexNet weights are not cached, after `OfflineLPIPS`'s one message).

    Deliberately not a torch module, so it adds nothing to checkpoints.
    """

    def __init__(self) -> None:
        self.offline = OfflineLPIPS()

    def __call__(self, reference: Tensor, prediction: Tensor) -> Tensor:
        value = self.offline(reference, prediction)
        return torch.tensor(math.nan if value is None else value)


@dataclass
class OfflineNerfactoModelConfig(NerfactoModelConfig):
    """nerfacto, with LPIPS computed only from cached weights (nothing is downloaded)."""

    _target: Type = field(default_factory=lambda: OfflineNerfactoModel)

    @classmethod
    def of(cls, nerfacto: NerfactoModelConfig) -> "OfflineNerfactoModelConfig":
        """The same settings as a nerfacto model config (e.g. nerfstudio's `nerfacto` method's)."""
        return cls(**{f.name: getattr(nerfacto, f.name) for f in dataclasses.fields(nerfacto) if f.name != "_target"})


class OfflineNerfactoModel(NerfactoModel):
    """nerfacto whose construction downloads nothing (see the module docstring)."""

    config: OfflineNerfactoModelConfig

    def make_field(self, **nerfacto_field_arguments: Any) -> NerfactoField:
        """The radiance field, from the arguments nerfacto builds its `NerfactoField` with."""
        return NerfactoField(**nerfacto_field_arguments)

    def populate_modules(self) -> None:
        """Mirrors nerfstudio 1.1.5 `NerfactoModel.populate_modules` (see the module docstring for why it is a copy
        and for its two changes, marked below)."""
        Model.populate_modules(self)

        if self.config.disable_scene_contraction:
            scene_contraction = None
        else:
            scene_contraction = SceneContraction(order=float("inf"))

        appearance_embedding_dim = self.config.appearance_embed_dim if self.config.use_appearance_embedding else 0

        # Change 1: the field comes from `make_field`.
        self.field = self.make_field(
            aabb=self.scene_box.aabb,
            hidden_dim=self.config.hidden_dim,
            num_levels=self.config.num_levels,
            max_res=self.config.max_res,
            base_res=self.config.base_res,
            features_per_level=self.config.features_per_level,
            log2_hashmap_size=self.config.log2_hashmap_size,
            hidden_dim_color=self.config.hidden_dim_color,
            hidden_dim_transient=self.config.hidden_dim_transient,
            spatial_distortion=scene_contraction,
            num_images=self.num_train_data,
            use_pred_normals=self.config.predict_normals,
            use_average_appearance_embedding=self.config.use_average_appearance_embedding,
            appearance_embedding_dim=appearance_embedding_dim,
            average_init_density=self.config.average_init_density,
            implementation=self.config.implementation,
        )

        self.camera_optimizer: CameraOptimizer = self.config.camera_optimizer.setup(
            num_cameras=self.num_train_data, device="cpu"
        )
        self.density_fns = []
        num_prop_nets = self.config.num_proposal_iterations
        self.proposal_networks = torch.nn.ModuleList()
        if self.config.use_same_proposal_network:
            assert len(self.config.proposal_net_args_list) == 1, "Only one proposal network is allowed."
            prop_net_args = self.config.proposal_net_args_list[0]
            network = HashMLPDensityField(
                self.scene_box.aabb,
                spatial_distortion=scene_contraction,
                **prop_net_args,
                average_init_density=self.config.average_init_density,
                implementation=self.config.implementation,
            )
            self.proposal_networks.append(network)
            self.density_fns.extend([network.density_fn for _ in range(num_prop_nets)])
        else:
            for i in range(num_prop_nets):
                prop_net_args = self.config.proposal_net_args_list[min(i, len(self.config.proposal_net_args_list) - 1)]
                network = HashMLPDensityField(
                    self.scene_box.aabb,
                    spatial_distortion=scene_contraction,
                    **prop_net_args,
                    average_init_density=self.config.average_init_density,
                    implementation=self.config.implementation,
                )
                self.proposal_networks.append(network)
            self.density_fns.extend([network.density_fn for network in self.proposal_networks])

        def update_schedule(step):
            return np.clip(
                np.interp(step, [0, self.config.proposal_warmup], [0, self.config.proposal_update_every]),
                1,
                self.config.proposal_update_every,
            )

        initial_sampler = None  # None is for piecewise as default (see ProposalNetworkSampler)
        if self.config.proposal_initial_sampler == "uniform":
            initial_sampler = UniformSampler(single_jitter=self.config.use_single_jitter)

        self.proposal_sampler = ProposalNetworkSampler(
            num_nerf_samples_per_ray=self.config.num_nerf_samples_per_ray,
            num_proposal_samples_per_ray=self.config.num_proposal_samples_per_ray,
            num_proposal_network_iterations=self.config.num_proposal_iterations,
            single_jitter=self.config.use_single_jitter,
            update_sched=update_schedule,
            initial_sampler=initial_sampler,
        )

        self.collider = NearFarCollider(near_plane=self.config.near_plane, far_plane=self.config.far_plane)

        self.renderer_rgb = RGBRenderer(background_color=self.config.background_color)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer(method="median")
        self.renderer_expected_depth = DepthRenderer(method="expected")
        self.renderer_normals = NormalsRenderer()

        self.normals_shader = NormalsShader()

        self.rgb_loss = MSELoss()
        from torchmetrics.functional import structural_similarity_index_measure
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = structural_similarity_index_measure
        # Change 2: LPIPS from cached weights only, built on first use.
        self.lpips = DeferredLPIPS()
        self.step = 0
