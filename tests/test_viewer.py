"""nerfstudio's viewer on relsnerf runs in a real (headless) browser: `ns-viewer` on a finished run, live `ns-train`.

The browser test checks what a user sees: the page served on localhost, the rendered frame in its canvas (compared with
the model's own render of the same camera: the viewer opens at the first training camera), the phase text, the
output names, and the decoded / RGB-NeRF switch.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from . import browser
from .conftest import VENV_BIN, tiny_cli_args


@pytest.fixture(scope="module")
def loaded(trained_run):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, step = eval_setup(trained_run, test_mode="test")
    return pipeline, step


def viewer_resolution(driver) -> tuple:
    """The resolution the viewer last rendered at, from its 'Resolution: WxHpx' line."""
    text = driver.find_element("tag name", "body").text
    match = re.search(r"Resolution:\s*(\d+)\s*[x×]\s*(\d+)px", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def settled_canvas(driver, timeout: float = 240.0) -> np.ndarray:
    """The canvas once a frame is shown and no longer changing (the viewer renders low-res first, then full)."""
    previous = None

    def stable():
        nonlocal previous
        try:
            current = browser.canvas_pixels(driver)
        except AssertionError:  # the page is still building its canvas
            return None
        done = (
            previous is not None
            and previous.shape == current.shape  # the layout has settled (the control panel is in place)
            and current.std() > 0.02
            and np.abs(current - previous).mean() < 2e-3
        )
        previous = current
        return current if done else None

    return browser.wait_for(stable, timeout, "a rendered frame in the viewer canvas", interval=3.0)


def start_camera_render(pipeline, width: int, height: int, rgb_nerf: bool = False) -> np.ndarray:
    """What the model renders at the viewer's start camera (training camera 0, its vertical field of view)."""
    cameras = pipeline.datamanager.train_dataset.cameras
    camera = cameras[0:1]
    fov = 2 * math.atan(float(camera.height[0]) / (2 * float(camera.fy[0])))
    focal = height / (2 * math.tan(fov / 2))
    camera.fx, camera.fy = torch.full_like(camera.fx, focal), torch.full_like(camera.fy, focal)
    camera.cx, camera.cy = torch.full_like(camera.cx, width / 2), torch.full_like(camera.cy, height / 2)
    camera.width, camera.height = torch.full_like(camera.width, width), torch.full_like(camera.height, height)
    model = pipeline.model
    with torch.no_grad():
        image = model.render_rgb_nerf(camera) if rgb_nerf else model.get_outputs_for_camera(camera)["rgb"]
    return image.cpu().numpy()


def compare_with_render(canvas: np.ndarray, render: np.ndarray) -> tuple:
    """PSNR of the canvas against the render and against the canvas's mean colour (a blank frame), at 1/4 size.

    The lower-left corner (viser's axes widget) is left out.
    """
    height, width = canvas.shape[:2]
    size = (max(8, width // 4), max(8, height // 4))
    shown = browser.resize(canvas, *size)
    expected = browser.resize(render, *size)
    keep = np.ones(shown.shape[:2], dtype=bool)
    keep[-size[1] // 4 :, : size[0] // 8] = False
    shown, expected = shown[keep], expected[keep]
    return browser.psnr(shown, expected), browser.psnr(shown, shown.mean(axis=0, keepdims=True))


def select_option(driver, current_value: str, option_text: str) -> None:
    """Open the viser dropdown whose input shows `current_value` and click `option_text`."""
    field = next(e for e in driver.find_elements("tag name", "input") if e.get_attribute("value") == current_value)
    field.click()
    option = browser.wait_for(
        lambda: next((o for o in driver.find_elements("css selector", "[role=option]") if o.text == option_text), None),
        30,
        f"the dropdown option {option_text!r}",
    )
    option.click()


def dropdown_options(driver, current_value: str) -> list:
    field = next(e for e in driver.find_elements("tag name", "input") if e.get_attribute("value") == current_value)
    field.click()
    options = browser.wait_for(
        lambda: [o.text for o in driver.find_elements("css selector", "[role=option]")], 30, "dropdown options"
    )
    field.click()  # close it again
    return options


def test_ns_viewer_shows_the_rendered_scene_in_a_browser(trained_run, loaded, tmp_path):
    browser.require_browser()
    pipeline, step = loaded
    port = browser.free_port()
    log = tmp_path / "viewer.log"
    command = [
        str(VENV_BIN / "ns-viewer"),
        "--load-config",
        str(trained_run),
        "--viewer.websocket-port",
        str(port),
        # No training-image thumbnails in the 3D scene: the canvas shows only the model's render.
        "--viewer.max-num-display-images",
        "0",
    ]
    with log.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        browser.wait_for_server(port, process, log)
        with browser.chromium() as driver:
            driver.get(f"http://127.0.0.1:{port}")
            canvas = settled_canvas(driver)
            driver.save_screenshot(str(tmp_path / "viewer.png"))
            assert (tmp_path / "viewer.png").stat().st_size > 10_000
            width, height = browser.wait_for(lambda: viewer_resolution(driver), 60, "the viewer's resolution line")
            # The frame is the model's decoded render of the start camera (JPEG-compressed and scaled by the browser).
            render = start_camera_render(pipeline, width, height)
            against_render, against_blank = compare_with_render(canvas, render)
            assert against_render > 24, (against_render, against_blank)
            assert against_render > against_blank + 3, (against_render, against_blank)
            # The phase of the loaded checkpoint and the switch are in the control panel.
            values = browser.input_values(driver)
            assert f"C: decoder distillation (finished at step {step})" in values, values
            assert "decoded (latent map + decoder)" in values
            assert {"rgb", "rgb_nerf", "latent", "depth"} <= set(dropdown_options(driver, "rgb"))
            # Switching to the RGB-NeRF shows the colour NeRF rendered per pixel.
            select_option(driver, "decoded (latent map + decoder)", "RGB-NeRF (one ray per pixel)")
            time.sleep(2.0)
            canvas = settled_canvas(driver)
            width, height = viewer_resolution(driver)
            rgb_nerf = start_camera_render(pipeline, width, height, rgb_nerf=True)
            against_render, against_blank = compare_with_render(canvas, rgb_nerf)
            assert against_render > 24, (against_render, against_blank)
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "127.0.0.1" in e["message"]]
            assert not [e for e in errors if "Error" in e["message"]], errors
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_live_viewer_during_ns_train_shows_each_phase(scene, tmp_path):
    browser.require_browser()
    port = browser.free_port()
    log = tmp_path / "train.log"
    command = [
        str(VENV_BIN / "ns-train"),
        "relsnerf-r32",
        "--output-dir",
        str(tmp_path),
        "--experiment-name",
        "live",
        "--timestamp",
        "run",
        "--pipeline.phases.ae-pretrain-steps",
        "10",
        "--pipeline.phases.joint-steps",
        "30",
        "--pipeline.phases.distill-steps",
        "15",
        *tiny_cli_args("relsnerf-r32"),
        "--vis",  # after tiny_cli_args, which ask for tensorboard
        "viewer",
        "--viewer.websocket-port",
        str(port),
        "--viewer.max-num-display-images",
        "0",
        "--viewer.quit-on-train-completion",
        "True",
        "nerfstudio-data",
        "--data",
        str(scene),
    ]
    with log.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    seen = set()
    try:
        browser.wait_for_server(port, process, log)
        with browser.chromium() as driver:
            driver.get(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + 400
            while process.poll() is None and time.monotonic() < deadline:
                for value in browser.input_values(driver):
                    if re.match(r"[ABC]: ", value):
                        seen.add(value[0])
                time.sleep(0.3)
            assert browser.canvas_pixels(driver).std() > 0.02  # frames were rendered while training
        assert process.wait(timeout=60) == 0, Path(log).read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    # The viewer followed the phases as training went through them.
    assert {"B", "C"} <= seen, seen
