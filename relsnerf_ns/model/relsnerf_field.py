"""The ReLS-NeRF field: nerfacto's density and colour plus a latent vector z from features of its own.

Density is shared: latents are composited with the same weights as colour. The latent branch has its own hash grid
and MLP so that the patch loss, which only reaches z, cannot change density or colour (paper section III-C).
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.mlp import MLP, MLPWithHashEncoding
from nerfstudio.fields.base_field import get_normalized_directions
from nerfstudio.fields.nerfacto_field import NerfactoField
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn


def resolve_implementation(requested: Literal["tcnn", "torch", "auto"]) -> Literal["tcnn", "torch"]:
    """'auto' uses tinycudann when it imports and a GPU is present, else the pure-torch fallback."""
    if requested != "auto":
        return requested
    if not torch.cuda.is_available():
        return "torch"
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        CONSOLE.print("tinycudann is not installed: using the torch implementation of hash grids and MLPs.")
        return "torch"
    return "tcnn"


class RelsNerfField(NerfactoField):
    """A nerfacto field with an extra latent head z(x, d) in R^n."""

    def __init__(
        self,
        aabb: Tensor,
        num_images: int,
        latent_channels: int,
        latent_num_levels: int = 16,
        latent_base_res: int = 16,
        latent_max_res: int = 2048,
        latent_log2_hashmap_size: int = 19,
        latent_features_per_level: int = 2,
        latent_hidden_dim: int = 64,
        latent_num_layers: int = 2,
        latent_view_dependent: bool = True,
        **nerfacto_kwargs,
    ) -> None:
        super().__init__(aabb, num_images, **nerfacto_kwargs)
        implementation = nerfacto_kwargs.get("implementation", "tcnn")
        self.latent_channels = latent_channels
        self.latent_view_dependent = latent_view_dependent
        self.mlp_latent_base = MLPWithHashEncoding(
            num_levels=latent_num_levels,
            min_res=latent_base_res,
            max_res=latent_max_res,
            log2_hashmap_size=latent_log2_hashmap_size,
            features_per_level=latent_features_per_level,
            num_layers=latent_num_layers,
            layer_width=latent_hidden_dim,
            out_dim=latent_hidden_dim,
            activation=nn.ReLU(),
            out_activation=nn.ReLU(),
            implementation=implementation,
        )
        head_in = latent_hidden_dim + (self.direction_encoding.get_out_dim() if latent_view_dependent else 0)
        # Latents are unbounded (SD-VAE latents span roughly [-4, 4]): no output activation.
        self.mlp_latent_head = MLP(
            in_dim=head_in,
            num_layers=latent_num_layers,
            layer_width=latent_hidden_dim,
            out_dim=latent_channels,
            activation=nn.ReLU(),
            out_activation=None,
            implementation=implementation,
        )

    def normalized_positions(self, ray_samples: RaySamples) -> Float[Tensor, "*batch 3"]:
        """Sample positions mapped to [0, 1]^3 exactly as the density grid sees them (contracted when unbounded)."""
        positions = ray_samples.frustums.get_positions()
        if self.spatial_distortion is not None:
            positions = (self.spatial_distortion(positions) + 2.0) / 4.0
        else:
            positions = SceneBox.get_normalized_positions(positions, self.aabb)
        inside = ((positions > 0.0) & (positions < 1.0)).all(dim=-1, keepdim=True)
        return positions * inside

    def get_latent(self, ray_samples: RaySamples) -> Float[Tensor, "*batch latent_channels"]:
        """z at every sample, from the latent branch's own features (no density or colour features)."""
        positions = self.normalized_positions(ray_samples).detach()
        shape = positions.shape[:-1]
        features = self.mlp_latent_base(positions.reshape(-1, 3))
        if self.latent_view_dependent:
            directions = get_normalized_directions(ray_samples.frustums.directions).reshape(-1, 3)
            features = torch.cat([features, self.direction_encoding(directions)], dim=-1)
        return self.mlp_latent_head(features).view(*shape, self.latent_channels).float()

    def latent_parameters(self):
        return list(self.mlp_latent_base.parameters()) + list(self.mlp_latent_head.parameters())

    def rgb_nerf_parameters(self):
        """Density and colour parameters: everything but the latent branch."""
        latent_ids = {id(p) for p in self.latent_parameters()}
        return [p for p in self.parameters() if id(p) not in latent_ids]
