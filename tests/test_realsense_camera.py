"""RealSenseCamera against pyrealsense2 without hardware: a `software_device` streaming synthetic frames, and
a recording of it played back through `rs.pipeline` (the code path of a real camera).

pyrealsense2 not installed (no `franka` extra): the module skips. Installed but Debian's libusb-1.0-0
missing: every test fails naming the package (not an ImportError at collection, which
pytest.importorskip lets through)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from robot.camera import CameraError, CameraTimeoutError
from robot.realsense_camera import RealSenseCamera, RealSenseConfig
from robot.software_camera import SoftwareRealSense
from tests import franka_helpers

if not franka_helpers.is_installed("pyrealsense2"):
    pytest.skip(f"pyrealsense2 not installed ({franka_helpers.EXTRA_HINT})", allow_module_level=True)


@pytest.fixture(autouse=True)
def _pyrealsense2_loads():
    """pyrealsense2 imports for each test: a missing system library fails the test, naming the Debian package."""
    franka_helpers.require("pyrealsense2")


W, H, FPS = 160, 128, 30
K_COLOR = np.array([[190.0, 0.0, 80.5], [0.0, 191.0, 63.0], [0.0, 0.0, 1.0]])
K_DEPTH = np.array([[170.0, 0.0, 78.0], [0.0, 170.0, 65.5], [0.0, 0.0, 1.0]])
BASELINE = 0.015  # metres, depth camera -> colour camera along x (D435: ~15 mm)
UNITS = 0.0005  # metres per z16 unit (not the D435 default 0.001: it must be read from the device)
Z_FAR, Z_NEAR = 0.9, 0.6
BLOCK = (50, 90, 40, 80)  # depth-image columns u0..u1, rows v0..v1 of a near block


def _scene() -> tuple[np.ndarray, np.ndarray]:
    depth = np.full((H, W), Z_FAR, np.float32)
    u0, u1, v0, v1 = BLOCK
    depth[v0:v1 + 1, u0:u1 + 1] = Z_NEAR
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = np.arange(W, dtype=np.uint8)[None, :]
    rgb[..., 1] = np.arange(H, dtype=np.uint8)[:, None]
    rgb[..., 2] = 77
    return rgb, depth


def _device() -> SoftwareRealSense:
    T = np.eye(4)
    T[0, 3] = -BASELINE  # p_color = p_depth + t
    dev = SoftwareRealSense(W, H, K_COLOR, FPS, K_depth=K_DEPTH, depth_to_color=T, depth_units=UNITS,
                            serial="SW-TEST-1")
    dev.set_frames(*_scene())
    return dev


def _expected_block_in_color() -> np.ndarray:
    """Colour pixels that see the near block: back-project each colour pixel at Z_NEAR into the depth camera."""
    v, u = np.mgrid[0:H, 0:W].astype(float)
    x_c, y_c = (u - K_COLOR[0, 2]) * Z_NEAR / K_COLOR[0, 0], (v - K_COLOR[1, 2]) * Z_NEAR / K_COLOR[1, 1]
    x_d = x_c + BASELINE
    u_d, v_d = K_DEPTH[0, 0] * x_d / Z_NEAR + K_DEPTH[0, 2], K_DEPTH[1, 1] * y_c / Z_NEAR + K_DEPTH[1, 2]
    u0, u1, v0, v1 = BLOCK
    return (u_d >= u0 - 0.5) & (u_d <= u1 + 0.5) & (v_d >= v0 - 0.5) & (v_d <= v1 + 0.5)


def _cfg(**kw) -> RealSenseConfig:
    base = dict(width=W, height=H, fps=FPS, warmup_frames=3, timeout_s=0.5, reconnect_attempts=1, reconnect_wait_s=0.1)
    base.update(kw)
    return RealSenseConfig(**base)


def _check_frame(frame, cam) -> None:
    rgb, _ = _scene()
    assert frame.rgb.dtype == np.uint8 and frame.rgb.shape == (H, W, 3)
    np.testing.assert_array_equal(frame.rgb, rgb)
    assert frame.depth.dtype == np.float32 and frame.depth.shape == (H, W)
    np.testing.assert_allclose(frame.K, K_COLOR, atol=1e-4)  # colour intrinsics, read from the stream profile
    assert cam.depth_scale == pytest.approx(UNITS, rel=1e-6)
    valid = frame.depth > 0
    assert valid.mean() > 0.9  # alignment leaves a few holes (0 = missing), as on a real camera
    assert np.all(np.isclose(frame.depth[valid], Z_FAR, atol=0.002) | np.isclose(frame.depth[valid], Z_NEAR, atol=0.002))
    near = valid & (frame.depth < 0.75)
    expected = _expected_block_in_color()
    iou = (near & expected).sum() / (near | expected).sum()
    assert iou > 0.9, iou
    v, u = np.nonzero(near)
    ve, ue = np.nonzero(expected)
    assert abs(u.mean() - ue.mean()) <= 0.75 and abs(v.mean() - ve.mean()) <= 0.75  # rs.align rounds footprints to pixels
    # without alignment the block would sit BASELINE * fx / z (~ 5 px) and a different scale away
    u0, u1, _, _ = BLOCK
    assert abs(ue.mean() - (u0 + u1) / 2) > 3


def test_software_device_frames_are_aligned_scaled_and_in_metres():
    dev = _device()
    dev.start()
    pose = np.eye(4)
    pose[:3, 3] = [1.0, 2.0, 3.0]
    cam = RealSenseCamera(_cfg(), camera_pose=pose, device=dev.device)
    try:
        with pytest.raises(CameraError, match="after connect"):
            _ = cam.K
        with cam:
            frame = cam.read()
            _check_frame(frame, cam)
            np.testing.assert_array_equal(frame.camera_pose, pose)
            assert cam.distortion[0].endswith("none")
            _check_frame(cam.read(), cam)  # and again: each read drains queued frames first
    finally:
        dev.stop()


def _without_hanging(fn, limit_s: float = 60.0):
    """fn() in a thread: its result or exception, or a test failure if it has not returned after limit_s
    (a guard against a hang only, far above any expected duration; not a speed check)."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit_s)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__qualname__', fn)} hung (no return within {limit_s:.0f} s)", pytrace=False)
    if "error" in out:
        raise out.pop("error")
    return out.get("value")


def test_silent_camera_times_out_and_a_dropped_one_reconnects():
    dev = _device()
    dev.start()
    cam = RealSenseCamera(_cfg(timeout_s=0.3, reconnect_attempts=2, reconnect_wait_s=0.1), device=dev.device)
    try:
        cam.connect()
        # a drop: the device goes silent and comes back while the camera is restarting the stream
        dev.pause()
        threading.Timer(0.5, dev.start).start()
        frame = cam.read()
        assert cam.reconnects >= 1 and frame.depth.shape == (H, W)
        # a camera that stops delivering for good: an error after the configured number of restarts, never a
        # hang (the guard's 60 s only turns a hang into a failure; the read gives up after about 1 s)
        dev.pause()
        before = cam.reconnects
        with pytest.raises(CameraTimeoutError, match=r"no RGB-D frame .*\(after 2 reconnect attempt\(s\)"):
            _without_hanging(cam.read)
        assert cam.reconnects - before == 2  # exactly reconnect_attempts restarts, then the error
        dev.start()  # back again: the next read recovers without a new connect()
        assert cam.read().rgb.shape == (H, W, 3)
    finally:
        cam.disconnect()
        dev.stop()


def _record(dev: SoftwareRealSense, path_stem) -> str:
    """Record the software device's streams with pyrealsense2's recorder (.db3 in 2.56+, .bag before)."""
    import pyrealsense2 as rs

    for suffix in (".db3", ".bag"):
        path = str(path_stem) + suffix
        try:
            rec = rs.recorder(path, dev.device)
            break
        except RuntimeError as e:
            if "extension" not in str(e):
                raise
    else:  # pragma: no cover
        pytest.skip("this pyrealsense2 records neither .db3 nor .bag")
    sync = rs.syncer(2)
    sensors = rec.query_sensors()
    for s in sensors:
        s.open(s.get_stream_profiles()[0])
        s.start(sync)
    dev.start()
    got = 0
    deadline = time.monotonic() + 10
    while got < 20 and time.monotonic() < deadline:
        ok, _ = sync.try_wait_for_frames(500)
        got += ok
    dev.pause()
    for s in sensors:
        s.stop()
        s.close()
    del sensors, rec  # the file is finalised when the recorder goes
    return path


def test_recording_plays_back_through_the_pipeline(tmp_path):
    dev = _device()
    try:
        path = _record(dev, tmp_path / "synthetic")
    finally:
        dev.stop()
    cam = RealSenseCamera(_cfg(playback_file=path, timeout_s=2.0))
    with cam:
        for _ in range(3):
            _check_frame(cam.read(), cam)


def test_missing_device_or_recording_fails_clearly(tmp_path):
    cam = RealSenseCamera(_cfg(playback_file=str(tmp_path / "missing.db3")))
    with pytest.raises((CameraError, RuntimeError)):
        cam.connect()
    with pytest.raises(CameraError, match="not connected"):
        cam.read()
    with pytest.raises(ValueError, match="timeout_s"):
        RealSenseConfig(timeout_s=0).validate()
