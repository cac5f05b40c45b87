"""Headless Chromium driving nerfstudio's viewer (Debian's `chromium` and `chromium-driver`, from `make setup`)."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, TypeVar

import numpy as np
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1200, 800)
T = TypeVar("T")


def require_browser() -> None:
    """The browser tests are part of `make test`: a missing browser is a set-up error, not a reason to skip."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing or shutil.which("chromium") is None:
        raise RuntimeError(
            f"headless Chromium is needed for the viewer tests ({', '.join(missing)} missing): "
            "run `make setup` (it installs Debian's chromium and chromium-driver)"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Optional[T]], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll `condition` until it returns a result (not None, False or empty); fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        empty = isinstance(value, (list, tuple, str, dict)) and len(value) == 0
        if value is not None and value is not False and not empty:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_for_server(port: int, process: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the viewer process exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        return port_open(port)

    wait_for(ready, timeout, f"the viewer on port {port}")


@contextlib.contextmanager
def chromium() -> Iterator["object"]:
    """A headless Chromium session (Selenium with Debian's chromedriver; nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def render_canvas_box(driver) -> Dict[str, float]:
    """Page box of the canvas that shows the rendered frame (viser's scene canvas, left of the control panel)."""
    boxes: List[Dict[str, float]] = driver.execute_script(
        "return Array.from(document.querySelectorAll('canvas')).map(c => c.getBoundingClientRect().toJSON())"
    )
    boxes = [b for b in boxes if b["width"] > 100 and b["height"] > 100]
    if not boxes:
        raise AssertionError("the viewer page has no scene canvas")
    return min(boxes, key=lambda b: b["width"] * b["height"])


def screenshot(driver) -> np.ndarray:
    """The page as float RGB in [0, 1], [H, W, 3]."""
    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"), dtype=np.float32) / 255


def canvas_pixels(driver) -> np.ndarray:
    box = render_canvas_box(driver)
    page = screenshot(driver)
    top, left = int(round(box["top"])), int(round(box["left"]))
    return page[top : top + int(box["height"]), left : left + int(box["width"])]


def input_values(driver) -> List[str]:
    return driver.execute_script("return Array.from(document.querySelectorAll('input')).map(e => e.value)")


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    pil = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    return np.asarray(pil.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10 * np.log10(np.mean((a - b) ** 2) + 1e-12))
