"""Render an HTML report in headless Chromium (Debian package chromium) and return the screenshot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest


def chromium() -> str | None:
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")


def chromium_screenshot(page: Path, shot: Path, tmp_path: Path, *, width: int = 1200, height: int = 2000) -> np.ndarray:
    """Screenshot of `page` (BGR, height x width); skips the test when chromium is not installed."""
    exe = chromium()
    if exe is None:
        pytest.skip(
            "chromium not installed (Debian package chromium: `bash scripts/setup.sh dev` as root, or "
            "`sudo apt-get install -y chromium`): HTML not rendered"
        )
    res = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={shot}",
         f"--window-size={width},{height}", f"file://{page}"],
        capture_output=True, text=True, timeout=90, cwd=tmp_path,
    )  # fmt: skip
    assert shot.is_file(), f"no screenshot (exit {res.returncode}): {res.stderr[-2000:]}"
    png = cv2.imread(str(shot))
    assert png is not None and png.shape[:2] == (height, width)
    assert png.std() > 20, "screenshot looks blank"
    return png
