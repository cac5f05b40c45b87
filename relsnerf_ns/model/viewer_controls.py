"""What ReLS-NeRF adds to nerfstudio's viewer: the training phase, a decoded / RGB-NeRF switch, a start camera.

nerfstudio's viewer collects the `ViewerElement` and `ViewerControl` attributes of the model (both during `ns-train`
and in `ns-viewer`), so the model holds these as attributes and nothing in nerfstudio is patched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from nerfstudio.viewer.viewer_elements import ViewerControl, ViewerDropdown, ViewerText

if TYPE_CHECKING:
    from nerfstudio.cameras.cameras import Cameras

RENDER_DECODED = "decoded (latent map + decoder)"
RENDER_RGB_NERF = "RGB-NeRF (one ray per pixel)"


class TrainingCameraStart(ViewerControl):
    """Puts each new browser client at the first training camera (position, orientation, vertical field of view).

    viser starts every client at a fixed default pose, which for a forward-facing capture often looks at empty space;
    starting at a training view shows the scene at once. The user moves freely afterwards.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def _setup(self, viewer: Any) -> None:
        super()._setup(viewer)
        if self.enabled:
            self.viser_server.on_client_connect(self._place_client)

    def _training_cameras(self) -> Optional["Cameras"]:
        dataset = getattr(getattr(self.viewer.pipeline, "datamanager", None), "train_dataset", None)
        cameras = getattr(dataset, "cameras", None)
        return cameras if cameras is not None and len(cameras) > 0 else None

    def _place_client(self, client: Any) -> None:
        # The client's camera state is only readable once the browser has sent it: place the camera on that first
        # update, once per client.
        placed = False

        @client.camera.on_update
        def _(camera: Any) -> None:
            nonlocal placed
            if not placed:
                placed = True
                self._move_to_training_camera(camera)

    def _move_to_training_camera(self, camera: Any) -> None:
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

        cameras = self._training_cameras()
        if cameras is None:
            return
        c2w = cameras.camera_to_worlds[0].detach().cpu().double().numpy()
        position = c2w[:3, 3] * VISER_NERFSTUDIO_SCALE_RATIO
        height, fy = float(cameras.height[0]), float(cameras.fy[0])
        camera.fov = float(2.0 * np.arctan(height / (2.0 * fy)))
        camera.position = position
        # nerfstudio cameras look along -z with +y up; orbit around a point one unit in front of the camera.
        camera.look_at = position - c2w[:3, 2] * VISER_NERFSTUDIO_SCALE_RATIO
        camera.up_direction = c2w[:3, 1]


def phase_text() -> ViewerText:
    """Shows the current fitting phase (A, B or C) and the step it started at."""
    return ViewerText("Training phase", "not training", disabled=True, hint="ReLS-NeRF fitting phase")


def render_mode_dropdown() -> ViewerDropdown:
    """Chooses what the main `rgb` output shows: the decoded latent render or the per-pixel colour NeRF."""
    return ViewerDropdown(
        "Main image",
        RENDER_DECODED,
        [RENDER_DECODED, RENDER_RGB_NERF],
        hint="'rgb' shows the decoded latent render (fast) or the colour NeRF rendered per pixel (slow)",
    )
