"""Fixtures for the real-robot tests without hardware: a franky-sim server on loopback (MuJoCo, headless:
no viewer is opened without --render, so no display or GL context is needed), fast FrankaConfigs, and
pixel helpers for the synthetic table scene of the software camera.

`require(module)` is pytest.importorskip for the `franka` extra's modules, which load shared libraries
at import: a module that is not installed skips (the extra is optional; with CI set, tests/conftest.py
turns the skip into a failure), one that is installed but cannot load a system library fails the test
with the Debian package to install. pytest.importorskip catches only ModuleNotFoundError, so
pyrealsense2 without libusb-1.0-0 used to crash collection with `ImportError: libusb-1.0.so.0`."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

STARTUP_TIMEOUT_S = 90.0  # only against a hang: franky-sim prints its address within a few seconds

# Debian packages providing the system libraries these modules load at import (pip cannot install them)
DEBIAN_PACKAGES = {"pyrealsense2": "libusb-1.0-0"}
SONAME_PACKAGES = {"libusb-1.0.so.0": "libusb-1.0-0"}
EXTRA_HINT = "the `franka` extra: bash scripts/setup.sh dev franka"


def is_installed(module: str) -> bool:
    """True when `module` can be found, without importing it (so without loading its shared libraries)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def broken_import_message(module: str, error: BaseException) -> str:
    """Why an installed `module` fails to import, naming the Debian package that provides the missing library."""
    text = str(error)
    package = next((pkg for so, pkg in SONAME_PACKAGES.items() if so in text), None) or DEBIAN_PACKAGES.get(module)
    msg = f"{module} is installed but cannot be imported: {type(error).__name__}: {text}."
    if package:
        msg += (f" It needs the Debian package {package}: run `bash scripts/setup.sh dev franka` as root, or "
                f"`sudo apt-get install -y {package}`.")
    return msg


def require(module: str, reason: str | None = None):
    """The imported module. Not installed: skip (`reason`). Installed but a system library is missing: fail
    with the Debian package to install (a clear test failure, not an ImportError at collection)."""
    if not is_installed(module):
        pytest.skip(reason or f"{module} not installed ({EXTRA_HINT})")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        message = broken_import_message(module, e)
    pytest.fail(message, pytrace=False)  # outside the except: no chained ImportError traceback in the report


@pytest.fixture(scope="session")
def franky_sim_host(tmp_path_factory) -> str:
    """Start `franky-sim -s mujoco` for the test session; yield the robot address it prints; kill it after."""
    require("franky", reason=f"franky-control not installed ({EXTRA_HINT})")
    require("franky_sim", reason=f"franky-sim not installed ({EXTRA_HINT})")
    require("mujoco", reason=f"mujoco not installed (franky-sim's dependency; {EXTRA_HINT})")
    log_path = Path(tmp_path_factory.mktemp("franky_sim")) / "server.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-u", "-m", "franky_sim.run_server", "-s", "mujoco"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    host = None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            m = re.search(r"using '([^']+)' as the robot IP", log_path.read_text())
            if m:
                host = m.group(1)
                break
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        if host is None:
            raise RuntimeError(f"franky-sim did not start (exit code {proc.poll()}):\n{log_path.read_text()[-3000:]}")
        yield host
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fast_config(host: str, **overrides):
    """A FrankaConfig for franky-sim: no RT kernel, no prompt, software camera at 320x240, brisk motions.

    The software camera is a pyrealsense2 device: skips / fails like `require("pyrealsense2")`."""
    from robot.franka_robot import FrankaConfig

    require("pyrealsense2")

    cfg = FrankaConfig(ip=host, dry_run=False, confirm=False, realtime=False, camera="software", width=320,
                       height=240, camera_warmup_frames=2, dynamics_factor=1.0, contact_dynamics_factor=0.5,
                       max_translation_speed=1.0, gripper_open_width=0.05, gripper_speed=0.1)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def pixel_of(frame, xyz) -> tuple[float, float]:
    """Pixel (u, v) where the robot-frame point `xyz` (metres) appears in `frame`."""
    p = np.linalg.inv(frame.camera_pose) @ np.append(np.asarray(xyz, float), 1.0)
    K = frame.K
    return float(K[0, 0] * p[0] / p[2] + K[0, 2]), float(K[1, 1] * p[1] / p[2] + K[1, 2])


def box_top_pixel(frame, index: int = 0) -> tuple[float, float]:
    """Pixel at the centre of the top face of synthetic box `index` of the software camera scene."""
    from robot.software_camera import default_boxes

    b = default_boxes()[index]
    return pixel_of(frame, [b.center[0], b.center[1], b.size[2]])


class BoardOnHandCamera:
    """A `robot.camera.Camera` double for calibration tests: renders a ChArUco board rigidly fixed to the hand
    (gripper_from_board) as seen from a camera at base_from_camera, using the arm's measured pose from franky."""

    def __init__(self, franky_robot, base_from_camera, gripper_from_board, spec, K, width: int = 640, height: int = 480):
        self.robot, self.camera_pose, self.gripper_from_board = franky_robot, base_from_camera, gripper_from_board
        self.spec, self._K, self.width, self.height = spec, np.asarray(K, float), width, height
        self.distortion = None

    @property
    def K(self):
        return self._K.copy()

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def read(self):
        import franky

        from robot.base import RGBDFrame
        from tests.board_views import render_board_view

        s = self.robot.state
        base_from_gripper = np.asarray(self.robot.model.pose(franky.Frame.EndEffector, s.q, s.F_T_EE, s.EE_T_K).matrix)
        cam_from_board = np.linalg.inv(self.camera_pose) @ base_from_gripper @ self.gripper_from_board
        rgb = render_board_view(self.spec, self._K, self.width, self.height, cam_from_board)
        return RGBDFrame(rgb, np.zeros((self.height, self.width), np.float32), self.K, self.camera_pose.copy(), time.time())
