"""OfflineNerfactoModel mirrors nerfacto's construction exactly, minus the LPIPS download."""

from __future__ import annotations

import math

import torch
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.models.nerfacto import NerfactoModelConfig

from relsnerf_ns.model.offline_nerfacto import OfflineNerfactoModelConfig

NERFACTO = dict(num_levels=4, max_res=128, log2_hashmap_size=12, hidden_dim=16, hidden_dim_color=16)


def _build(config, seed: int = 0):
    torch.manual_seed(seed)
    box = SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    return config.setup(scene_box=box, num_train_data=3, metadata={})


def test_same_modules_and_initial_weights_as_nerfacto(monkeypatch):
    """Same state-dict keys and initial values as nerfstudio's NerfactoModel built from the same seed: the copy of
    its populate_modules has not drifted from the installed nerfstudio (its LPIPS is left out of the comparison)."""
    import torchmetrics.image.lpip as lpip_module

    offline = _build(OfflineNerfactoModelConfig(**NERFACTO)).state_dict()
    # Only here, to build the reference offline: nerfacto's own LPIPS (which would download AlexNet) is stubbed.
    monkeypatch.setattr(lpip_module, "LearnedPerceptualImagePatchSimilarity", lambda *a, **k: torch.nn.Identity())
    reference = _build(NerfactoModelConfig(**NERFACTO)).state_dict()
    assert sorted(offline) == sorted(reference)
    for key, value in reference.items():
        assert torch.equal(offline[key], value), key


def test_construction_downloads_nothing_and_lpips_is_skipped_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty torch cache
    model = _build(OfflineNerfactoModelConfig(**NERFACTO))
    assert not any(tmp_path.iterdir())
    assert not any(name.startswith("lpips") for name in model.state_dict())
    image = torch.rand(1, 3, 8, 8)
    assert math.isnan(float(model.lpips(image, image)))


def test_of_keeps_every_setting():
    nerfacto = NerfactoModelConfig(**NERFACTO, near_plane=0.3)
    offline = OfflineNerfactoModelConfig.of(nerfacto)
    assert offline.near_plane == 0.3 and offline.num_levels == 4
    assert offline._target.__name__ == "OfflineNerfactoModel"
