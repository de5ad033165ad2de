"""A RealSense without hardware: a pyrealsense2 `software_device` fed with synthetic RGB-D frames.

`SoftwareRealSense` builds a software device with a depth sensor (z16, `depth_units` metres per
unit, read-only option like a real D400) and a colour sensor (rgb8), registers the depth-to-colour
extrinsics, and pushes frames from a background thread at `fps`. `RealSenseCamera(device=...)`
reads it exactly like a real camera (alignment, intrinsics and depth scale from the device,
timeouts, restarts), so the driver code runs against the real library in tests and in the
`robot.camera=software` end-to-end check with franky-sim.

`render_table_scene` ray-casts a static table (the plane z = 0 of the robot frame) with boxes on
it, for a pinhole camera with intrinsics K (pixels) and pose world(robot base)-from-camera (OpenCV
axes); depth is metres along the camera z axis, 0 where the ray misses the table.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


def d435_like_K(width: int, height: int) -> np.ndarray:
    """(3,3) intrinsics of a RealSense-D435-like colour camera (640x480: fx = fy = 616, cx = 318.5,
    cy = 241.5, as in the sim twin) resampled to width x height (pixel-centre convention)."""
    sx, sy = width / 640.0, height / 480.0
    return np.array([[616.0 * sx, 0.0, (318.5 + 0.5) * sx - 0.5], [0.0, 616.0 * sy, (241.5 + 0.5) * sy - 0.5],
                     [0.0, 0.0, 1.0]])


@dataclass
class SyntheticBox:
    """An upright box on the table: centre (x, y) and size (sx, sy, sz) in metres, yaw in radians."""

    center: tuple[float, float]
    size: tuple[float, float, float]
    yaw: float = 0.0
    color: tuple[int, int, int] = (200, 60, 40)


def default_boxes() -> list[SyntheticBox]:
    return [
        SyntheticBox((0.52, -0.08), (0.05, 0.07, 0.045), 0.3, (200, 60, 40)),
        SyntheticBox((0.60, 0.07), (0.06, 0.04, 0.06), -0.5, (40, 120, 200)),
        SyntheticBox((0.45, 0.10), (0.04, 0.04, 0.03), 0.0, (60, 170, 70)),
    ]


@dataclass
class SyntheticTable:
    """Table extent (x_min, x_max, y_min, y_max) in the robot frame, metres, and its colour."""

    bounds: tuple[float, float, float, float] = (0.1, 1.0, -0.6, 0.6)
    color: tuple[int, int, int] = (150, 130, 105)
    boxes: list[SyntheticBox] = field(default_factory=default_boxes)


def render_table_scene(K: np.ndarray, width: int, height: int, camera_pose: np.ndarray,
                       table: SyntheticTable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rgb (H,W,3) uint8, depth (H,W) float32 metres, 0 = miss) of the table scene."""
    table = table or SyntheticTable()
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)  # z = 1
    R, o = camera_pose[:3, :3], camera_pose[:3, 3]
    d = d_cam @ R.T  # world ray directions; the ray parameter t is the camera-z depth
    t_best = np.full((height, width), np.inf)
    rgb = np.zeros((height, width, 3), np.float64)
    # table plane z = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t_plane = np.where(d[..., 2] < -1e-9, -o[2] / d[..., 2], np.inf)
    p = o + d * np.where(np.isfinite(t_plane), t_plane, 0.0)[..., None]
    x0, x1, y0, y1 = table.bounds
    on_table = np.isfinite(t_plane) & (p[..., 0] >= x0) & (p[..., 0] <= x1) & (p[..., 1] >= y0) & (p[..., 1] <= y1)
    t_best[on_table] = t_plane[on_table]
    checker = ((np.floor(p[..., 0] / 0.05) + np.floor(p[..., 1] / 0.05)) % 2)[..., None]
    rgb[on_table] = (np.array(table.color) * (0.92 + 0.08 * checker))[on_table]
    # boxes: slab test in each box's own frame
    for box in table.boxes:
        c, s = np.cos(-box.yaw), np.sin(-box.yaw)
        Rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        ob = Rz @ (o - np.array([box.center[0], box.center[1], 0.0]))
        db = d @ Rz.T
        lo = np.array([-box.size[0] / 2, -box.size[1] / 2, 0.0])
        hi = np.array([box.size[0] / 2, box.size[1] / 2, box.size[2]])
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (lo - ob) / db, (hi - ob) / db
        tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
        t_near, t_far = np.nanmax(tmin, -1), np.nanmin(tmax, -1)
        face = np.nanargmax(tmin, -1)  # 0/1 = side walls, 2 = top
        hit = (t_near <= t_far) & (t_near > 0) & (t_near < t_best)
        t_best[hit] = t_near[hit]
        shade = np.where(face == 2, 1.0, np.where(face == 0, 0.75, 0.6))
        rgb[hit] = (np.array(box.color)[None, :] * shade[hit][:, None])
    depth = np.where(np.isfinite(t_best), t_best, 0.0).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8), depth


class SoftwareRealSense:
    """A pyrealsense2 software device (depth z16 + colour rgb8) streaming the frames it is given.

    K_color / K_depth: (3,3) pixels. depth_to_color: (4,4) transform from the depth camera frame to
    the colour camera frame (metres), registered as the device's extrinsics. depth_units: metres per
    z16 unit. Frames given to `set_frames` are in each sensor's own image (depth: metres, 0 = none).
    """

    def __init__(self, width: int, height: int, K_color: np.ndarray, fps: int = 30, *,
                 depth_size: tuple[int, int] | None = None, K_depth: np.ndarray | None = None,
                 depth_to_color: np.ndarray | None = None, depth_units: float = 0.001,
                 serial: str = "SW-REALSENSE-0"):
        import pyrealsense2 as rs

        self.rs = rs
        self.width, self.height, self.fps = width, height, fps
        self.depth_w, self.depth_h = depth_size or (width, height)
        self.depth_units = depth_units
        K_depth = K_color if K_depth is None else K_depth
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.name, "Software RealSense (synthetic frames)")
        self.device.register_info(rs.camera_info.serial_number, serial)
        self._depth_sensor = self.device.add_sensor("Stereo Module")
        self._color_sensor = self.device.add_sensor("RGB Camera")
        self._depth_profile = self._depth_sensor.add_video_stream(
            self._stream(rs.stream.depth, 0, self.depth_w, self.depth_h, rs.format.z16, 2, K_depth), True)
        self._depth_sensor.add_read_only_option(rs.option.depth_units, float(depth_units))
        self._color_profile = self._color_sensor.add_video_stream(
            self._stream(rs.stream.color, 1, width, height, rs.format.rgb8, 3, K_color), True)
        T = np.eye(4) if depth_to_color is None else np.asarray(depth_to_color, float)
        ext = rs.extrinsics()
        ext.rotation = [float(x) for x in T[:3, :3].flatten(order="F")]  # column-major
        ext.translation = [float(x) for x in T[:3, 3]]
        self._depth_profile.register_extrinsics_to(self._color_profile, ext)
        self.device.create_matcher(rs.matchers.default)
        self._lock = threading.Lock()
        self._rgb = np.zeros((height, width, 3), np.uint8)
        self._depth_raw = np.zeros((self.depth_h, self.depth_w), np.uint16)
        self._running = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._frame_number = 0
        self.frames_sent = 0

    def _stream(self, kind, uid, w, h, fmt, bpp, K):
        rs = self.rs
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid = kind, 0, uid
        vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = w, h, self.fps, bpp, fmt
        intr = rs.intrinsics()
        intr.width, intr.height = w, h
        intr.fx, intr.fy, intr.ppx, intr.ppy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
        intr.model = rs.distortion.none
        intr.coeffs = [0.0] * 5
        vs.intrinsics = intr
        return vs

    def set_frames(self, rgb: np.ndarray, depth_m: np.ndarray) -> None:
        """Frames to stream from now on: rgb (H,W,3) uint8 colour image, depth (h,w) metres."""
        if rgb.shape != (self.height, self.width, 3) or depth_m.shape != (self.depth_h, self.depth_w):
            raise ValueError(f"expected rgb {(self.height, self.width, 3)} and depth {(self.depth_h, self.depth_w)}, "
                             f"got {rgb.shape} and {depth_m.shape}")
        raw = np.clip(np.round(np.nan_to_num(depth_m) / self.depth_units), 0, 65535).astype(np.uint16)
        with self._lock:
            self._rgb = np.ascontiguousarray(rgb, np.uint8)
            self._depth_raw = np.ascontiguousarray(raw)

    # ---------------------------------------------------------------- streaming thread
    def start(self) -> None:
        """Start (or resume) pushing frames at `fps`."""
        self._running.set()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._feed, name="software-realsense", daemon=True)
            self._thread.start()

    def pause(self) -> None:
        """Stop delivering frames (a camera that went silent); `start()` resumes."""
        self._running.clear()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def _feed(self) -> None:
        rs = self.rs
        period = 1.0 / self.fps
        next_t = time.monotonic()
        while not self._stop.is_set():
            if not self._running.wait(timeout=0.1):
                continue
            if self._stop.is_set():
                break
            with self._lock:
                rgb, raw = self._rgb, self._depth_raw
            n = self._frame_number
            ts = n * 1000.0 / self.fps
            for sensor, profile, pixels, bpp, w in (
                (self._depth_sensor, self._depth_profile, raw, 2, self.depth_w),
                (self._color_sensor, self._color_profile, rgb, 3, self.width),
            ):
                f = rs.software_video_frame()
                f.pixels, f.bpp, f.stride = pixels, bpp, bpp * w
                f.timestamp, f.domain, f.frame_number = ts, rs.timestamp_domain.hardware_clock, n
                f.profile = profile.as_video_stream_profile()
                if bpp == 2:
                    f.depth_units = self.depth_units
                sensor.on_video_frame(f)
            self._frame_number += 1
            self.frames_sent += 1
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
            if time.monotonic() - next_t > 1.0:  # resumed after a pause: do not burst
                next_t = time.monotonic()
