"""`RealSenseCamera`: an Intel RealSense RGB-D camera through pyrealsense2, behind `robot.camera.Camera`.

What it does (units and frames as in `robot.base`):
- streams colour (rgb8) and depth (z16) at the configured resolutions and frame rate;
- aligns depth to the colour image (`rs.align(rs.stream.color)`), so depth pixel (u, v) belongs to
  colour pixel (u, v) and K is the colour intrinsics;
- reads K from the active colour stream profile and the depth scale (metres per z16 unit) from the
  depth sensor, never from configuration; depth is returned as float32 metres, 0 = no measurement;
- discards `warmup_frames` after starting (auto exposure settles) and, on every `read()`, drops
  frames that were queued before the call so the frame is fresh (captured after the arm parked);
- waits at most `timeout_s` for a complete frame; on a timeout it restarts the stream (a USB drop
  re-enumerates the device) up to `reconnect_attempts` times, then raises `CameraTimeoutError`.

Three sources deliver the frames, all through the same processing:
- a device (`serial`, or the first one found) through `rs.pipeline` (the real camera);
- a recording (`playback_file`, .bag or ROS2 .db3) through `rs.pipeline` as well;
- an `rs.device` handed in by the caller, e.g. a `pyrealsense2.software_device`
  (`robot.software_camera`), whose sensors are opened directly and synchronised by an `rs.syncer`
  (pyrealsense2 2.59 does not list software devices in a context, so a pipeline cannot pick one).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot.base import RGBDFrame
from robot.camera import Camera, CameraError, CameraTimeoutError

log = logging.getLogger(__name__)


def _rs():
    try:
        import pyrealsense2 as rs
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "the RealSense camera needs pyrealsense2 (and Debian's libusb-1.0-0); run `bash scripts/setup.sh franka`"
        ) from e
    return rs


@dataclass
class RealSenseConfig:
    """Streams and robustness settings. Resolutions in pixels, rates in Hz, times in seconds."""

    serial: str = ""  # "" = the first device found
    width: int = 640  # colour stream; delivered frames have this size
    height: int = 480
    fps: int = 30
    depth_width: int = 0  # 0 = same as the colour stream
    depth_height: int = 0
    warmup_frames: int = 15  # discarded after every (re)start: auto exposure settles
    timeout_s: float = 2.0  # longest wait for one complete frame
    reconnect_attempts: int = 3  # stream restarts after a timeout before giving up
    reconnect_wait_s: float = 1.0  # pause before a restart (a re-enumerating USB device needs it)
    playback_file: str = ""  # a .bag / .db3 recording played through the pipeline instead of a device
    playback_repeat: bool = True
    playback_realtime: bool = False  # False: frames as fast as they are read

    def validate(self) -> None:
        for key in ("width", "height", "fps"):
            if getattr(self, key) <= 0:
                raise ValueError(f"RealSenseConfig.{key} must be > 0, got {getattr(self, key)}")
        if self.timeout_s <= 0:
            raise ValueError(f"RealSenseConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.reconnect_attempts < 0 or self.warmup_frames < 0:
            raise ValueError("RealSenseConfig.reconnect_attempts and warmup_frames must be >= 0")


class _PipelineSource:
    """A real device or a recording through `rs.pipeline`."""

    def __init__(self, cfg: RealSenseConfig):
        self.cfg = cfg
        self.pipeline = None
        self.device = None

    @property
    def name(self) -> str:
        c = self.cfg
        return f"recording {c.playback_file}" if c.playback_file else f"RealSense {c.serial or '(first found)'}"

    def start(self) -> Any:
        rs = _rs()
        c = self.cfg
        pipeline, config = rs.pipeline(), rs.config()
        if c.playback_file:
            config.enable_device_from_file(c.playback_file, repeat_playback=c.playback_repeat)
            config.enable_stream(rs.stream.depth)
            config.enable_stream(rs.stream.color)
        else:
            if c.serial:
                config.enable_device(c.serial)
            config.enable_stream(rs.stream.depth, c.depth_width or c.width, c.depth_height or c.height, rs.format.z16, c.fps)
            config.enable_stream(rs.stream.color, c.width, c.height, rs.format.rgb8, c.fps)
        try:
            profile = pipeline.start(config)
        except RuntimeError as e:
            raise CameraError(f"cannot start {self.name}: {e}") from e
        self.pipeline = pipeline
        self.device = profile.get_device()
        if c.playback_file:
            self.device.as_playback().set_real_time(c.playback_realtime)
        return self.device

    def wait(self, timeout_ms: int):
        ok, frames = self.pipeline.try_wait_for_frames(timeout_ms)
        return frames if ok else None

    def poll(self):
        frames = self.pipeline.poll_for_frames()
        return frames if frames else None

    def stop(self) -> None:
        if self.pipeline is not None:
            try:
                self.pipeline.stop()
            except RuntimeError as e:
                log.debug("pipeline stop: %s", e)
        self.pipeline = None


class _DeviceSource:
    """An `rs.device` given by the caller (e.g. a software device): its sensors into an `rs.syncer`."""

    def __init__(self, cfg: RealSenseConfig, device: Any):
        self.cfg = cfg
        self.device = device
        self.syncer = None
        self.sensors: list[Any] = []

    @property
    def name(self) -> str:
        rs = _rs()
        try:
            return f"device {self.device.get_info(rs.camera_info.serial_number)}"
        except RuntimeError:
            return "device"

    def _pick(self, sensor: Any, stream: Any, fmt: Any, width: int, height: int) -> Any:
        for p in sensor.get_stream_profiles():
            if p.stream_type() != stream or p.format() != fmt:
                continue
            v = p.as_video_stream_profile()
            if (v.width(), v.height()) == (width, height) and p.fps() == self.cfg.fps:
                return p
        return None

    def start(self) -> Any:
        rs = _rs()
        c = self.cfg
        wanted = [(rs.stream.depth, rs.format.z16, c.depth_width or c.width, c.depth_height or c.height),
                  (rs.stream.color, rs.format.rgb8, c.width, c.height)]
        self.syncer = rs.syncer(2)
        opened = []
        for stream, fmt, w, h in wanted:
            for sensor in self.device.query_sensors():
                profile = self._pick(sensor, stream, fmt, w, h)
                if profile is not None:
                    sensor.open(profile)
                    sensor.start(self.syncer)
                    opened.append(sensor)
                    break
            else:
                self.sensors = opened
                self.stop()
                raise CameraError(f"{self.name} has no {stream} stream {w}x{h} {fmt} at {c.fps} Hz")
        self.sensors = opened
        return self.device

    def wait(self, timeout_ms: int):
        ok, frames = self.syncer.try_wait_for_frames(timeout_ms)
        return frames if ok else None

    def poll(self):
        frames = self.syncer.poll_for_frames()
        return frames if frames else None

    def stop(self) -> None:
        for s in self.sensors:
            for op in (s.stop, s.close):
                try:
                    op()
                except RuntimeError as e:
                    log.debug("sensor stop/close: %s", e)
        self.sensors = []


class RealSenseCamera(Camera):
    """RGB-D frames from a RealSense (or a recording / software device) in project units."""

    def __init__(self, cfg: RealSenseConfig | None = None, camera_pose: np.ndarray | None = None,
                 device: Any = None):
        self.cfg = cfg or RealSenseConfig()
        self.cfg.validate()
        self.camera_pose = np.eye(4) if camera_pose is None else np.asarray(camera_pose, np.float64).reshape(4, 4)
        self._source = _DeviceSource(self.cfg, device) if device is not None else _PipelineSource(self.cfg)
        self._align = None
        self._K: np.ndarray | None = None
        self._depth_scale: float | None = None
        self._distortion: tuple[str, list[float]] | None = None
        self._running = False  # the source is streaming
        self._connected = False  # connect() was called (and disconnect() not since)
        self.reconnects = 0  # stream restarts after timeouts since connect()

    # ---------------------------------------------------------------- lifecycle
    def connect(self) -> None:
        if self._connected:
            return
        self._start()
        self._connected = True
        log.info("%s streaming: colour %dx%d, depth scale %.6g m/unit, fx=%.1f fy=%.1f cx=%.1f cy=%.1f",
                 self._source.name, self.cfg.width, self.cfg.height, self._depth_scale,
                 self._K[0, 0], self._K[1, 1], self._K[0, 2], self._K[1, 2])

    def disconnect(self) -> None:
        if self._running:
            self._source.stop()
        self._running = False
        self._connected = False

    @property
    def K(self) -> np.ndarray:
        if self._K is None:
            raise CameraError("camera intrinsics are known only after connect()")
        return self._K.copy()

    @property
    def depth_scale(self) -> float:
        """Metres per z16 depth unit, as reported by the device's depth sensor."""
        if self._depth_scale is None:
            raise CameraError("the depth scale is known only after connect()")
        return self._depth_scale

    @property
    def distortion(self) -> tuple[str, list[float]] | None:
        """(model name, coefficients) of the colour stream as reported by the device."""
        return self._distortion

    # ---------------------------------------------------------------- frames
    def read(self) -> RGBDFrame:
        if not self._connected:
            raise CameraError("camera is not connected; call connect() first")
        frames = None
        if self._running:  # else a restart failed earlier: try again below
            self._drain()
            frames = self._complete_frameset()
        attempt = 0
        while frames is None:
            if attempt >= self.cfg.reconnect_attempts:
                raise CameraTimeoutError(
                    f"no RGB-D frame from {self._source.name} within {self.cfg.timeout_s:.1f} s "
                    f"(after {attempt} reconnect attempt(s)); check the cable/USB port or the recording"
                )
            attempt += 1
            log.warning("%s delivered no frame within %.1f s; restarting the stream (attempt %d/%d)",
                        self._source.name, self.cfg.timeout_s, attempt, self.cfg.reconnect_attempts)
            self._restart()
            frames = self._complete_frameset() if self._running else None
        return self._to_frame(frames)

    # ---------------------------------------------------------------- internals
    def _start(self) -> None:
        rs = _rs()
        device = self._source.start()
        try:
            self._depth_scale = float(device.first_depth_sensor().get_depth_scale())
            self._align = rs.align(rs.stream.color)
            self._running = True
            for _ in range(self.cfg.warmup_frames):
                if self._complete_frameset() is None:
                    raise CameraTimeoutError(
                        f"{self._source.name}: no frame within {self.cfg.timeout_s:.1f} s during warm-up")
            frames = self._complete_frameset()
            if frames is None:
                raise CameraTimeoutError(f"{self._source.name}: no frame within {self.cfg.timeout_s:.1f} s after start")
            self._read_intrinsics(frames)
        except BaseException:
            self._running = False
            self._source.stop()
            raise

    def _restart(self) -> None:
        self._source.stop()
        self._running = False
        self.reconnects += 1
        time.sleep(self.cfg.reconnect_wait_s)
        try:
            self._start()
        except CameraError as e:  # device gone or still silent: the caller counts the attempt
            log.warning("restart failed: %s", e)

    def _read_intrinsics(self, frames: Any) -> None:
        color = frames.get_color_frame()
        intr = color.profile.as_video_stream_profile().get_intrinsics()
        if (intr.width, intr.height) != (self.cfg.width, self.cfg.height):
            raise CameraError(f"{self._source.name} streams colour at {intr.width}x{intr.height}, "
                              f"configured {self.cfg.width}x{self.cfg.height}")
        self._K = np.array([[intr.fx, 0.0, intr.ppx], [0.0, intr.fy, intr.ppy], [0.0, 0.0, 1.0]])
        coeffs = [float(c) for c in intr.coeffs]
        self._distortion = (str(intr.model), coeffs)
        if any(abs(c) > 1e-6 for c in coeffs):
            log.warning("colour stream reports distortion %s %s; frames are used undistorted", intr.model, coeffs)

    def _drain(self) -> None:
        """Drop framesets queued before this call (they may show the arm still moving)."""
        for _ in range(64):
            if self._source.poll() is None:
                return

    def _complete_frameset(self) -> Any:
        """The next frameset with both depth and colour, or None after timeout_s."""
        deadline = time.monotonic() + self.cfg.timeout_s
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return None
            frames = self._source.wait(remaining_ms)
            if frames is None:
                return None
            fs = frames.as_frameset() if hasattr(frames, "as_frameset") else frames
            if fs.get_depth_frame() and fs.get_color_frame():
                return fs

    def _to_frame(self, frames: Any) -> RGBDFrame:
        aligned = self._align.process(frames)
        depth_f, color_f = aligned.get_depth_frame(), aligned.get_color_frame()
        rgb = np.asanyarray(color_f.get_data()).copy()
        depth = np.asanyarray(depth_f.get_data()).astype(np.float32) * np.float32(self._depth_scale)
        H, W = self.cfg.height, self.cfg.width
        if rgb.shape != (H, W, 3) or depth.shape != (H, W):
            raise CameraError(f"frame shapes rgb {rgb.shape} / depth {depth.shape} differ from {H}x{W}")
        return RGBDFrame(rgb=rgb, depth=depth, K=self._K.copy(), camera_pose=self.camera_pose.copy(), timestamp=time.time())
