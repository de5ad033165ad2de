"""Software-camera frames: exported sim scenes captured through the real pyrealsense2 driver path.

    python -m robot.software_frames --scenes runs/cross_test --out runs/sw_frames [--n 4] [--first 0]
    python -m learner.deploy predict --model MODEL --rgb runs/sw_frames/rgb --depth runs/sw_frames/depth \\
        --intrinsics runs/sw_frames/intrinsics --out runs/sw_pred

For each of N exported scenes (`data.scene_io`, from index --first on) the scene's RGB and depth are
injected into a `robot.software_camera.SoftwareRealSense` of the scene's size: colour (rgb8) and depth
(z16, `DEPTH_UNITS` metres per unit, a read-only option like a D400's) streams with the scene's K as
both intrinsics and identity depth-to-colour extrinsics. One frame is read back through
`RealSenseCamera(device=...)` exactly as from a real camera (sensor streaming at `FPS` in the device's
thread, syncer, `rs.align` to colour, depth scale and K read from the device), waiting for the first
frame whose colour image is the injected one. Written per frame, STEM = ``sw_<scene id>``, in the
layout `python -m learner.deploy predict --rgb/--depth/--intrinsics` pairs by stem::

    OUT/rgb/STEM.png           8-bit colour PNG of the camera's rgb image
    OUT/depth/STEM.png         uint16 millimetres along the camera z axis, 0 = missing
    OUT/intrinsics/STEM.json   {"fx", "fy", "cx", "cy" (pixels), "width", "height"}: the CAMERA's
                               reported K (`RealSenseCamera.K`, float32 inside librealsense), not the scene's

Units and frames as in `robot.base`: pixels (u, v) = (column, row) from the top-left pixel centre,
depth in metres in memory (millimetres on disk), OpenCV camera axes. The depth is what rs.align
returns, not a copy of the scene's: rs.align maps each depth pixel's footprint without interpolation,
so even with identical colour and depth cameras a few per cent of the pixels come back empty (thin
row/column stripes) or carry a neighbouring pixel's depth, as on a real camera; every frame's line
reports how many pixels equal the scene's depth.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data.scene_io import Scene, depth_m_to_mm, list_scenes, read_scene
from robot.base import RGBDFrame
from robot.camera import CameraError
from robot.realsense_camera import RealSenseCamera, RealSenseConfig
from robot.software_camera import SoftwareRealSense

FPS = 30  # Hz, the software device's stream rate
DEPTH_UNITS = 0.001  # metres per z16 unit (a D400's default): depth arrives in whole millimetres
WARMUP_FRAMES = 2  # a software device has no auto exposure to settle
WAIT_S = 5.0  # longest wait for a frame showing the injected image
SETUP_HINT = "it needs the `franka` extra and Debian's libusb-1.0-0: run `bash scripts/setup.sh franka`"


@dataclass
class Capture:
    """One scene read back through the software camera: its frame (rgb uint8, depth metres), the
    camera's reported K (pixels) and depth scale (metres per unit), and the frames read until it came."""

    scene_id: str
    frame: RGBDFrame
    K: np.ndarray
    depth_scale: float
    reads: int


def capture_scene(scene: Scene, fps: int = FPS, wait_s: float | None = None) -> Capture:
    """Stream `scene` from a software RealSense and read one frame showing it through `RealSenseCamera`
    (CameraError if none does within `wait_s` seconds, default `WAIT_S`)."""
    wait_s = WAIT_S if wait_s is None else wait_s
    # colour and depth share the scene's K; extrinsics default to identity
    dev = SoftwareRealSense(scene.width, scene.height, scene.K, fps, depth_units=DEPTH_UNITS,
                            serial=f"SW-{scene.id}")
    dev.set_frames(scene.rgb, scene.depth)
    dev.start()
    cfg = RealSenseConfig(width=scene.width, height=scene.height, fps=fps, warmup_frames=WARMUP_FRAMES)
    try:
        with RealSenseCamera(cfg, device=dev.device) as cam:
            deadline = time.monotonic() + wait_s
            reads = 0
            while True:
                frame = cam.read()
                reads += 1
                if np.array_equal(frame.rgb, scene.rgb):
                    return Capture(scene.id, frame, cam.K, cam.depth_scale, reads)
                if time.monotonic() > deadline:
                    raise CameraError(f"scene {scene.id}: no frame showing the injected image within {wait_s:.1f} s "
                                      f"({reads} frames read)")
    finally:
        dev.stop()


def _imwrite(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write image {path}")


def write_capture(out: Path, stem: str, cap: Capture) -> None:
    """OUT/rgb/STEM.png, OUT/depth/STEM.png (uint16 mm) and OUT/intrinsics/STEM.json (the camera's K)."""
    rgb, K = cap.frame.rgb, cap.K
    _imwrite(out / "rgb" / f"{stem}.png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    _imwrite(out / "depth" / f"{stem}.png", depth_m_to_mm(cap.frame.depth))
    h, w = rgb.shape[:2]
    intr = {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
            "width": int(w), "height": int(h)}
    (out / "intrinsics").mkdir(parents=True, exist_ok=True)
    (out / "intrinsics" / f"{stem}.json").write_text(json.dumps(intr, indent=1))


def depth_agreement(captured_m: np.ndarray, scene_m: np.ndarray) -> tuple[float, float]:
    """(share of the scene's valid pixels whose captured depth is within 1 mm of it, share of all pixels
    valid in the scene but empty in the capture)."""
    got, ref = depth_m_to_mm(captured_m).astype(np.int32), depth_m_to_mm(scene_m).astype(np.int32)
    valid = ref > 0
    same = valid & (np.abs(got - ref) <= 1)
    return float(same.sum() / max(int(valid.sum()), 1)), float((valid & (got == 0)).mean())


def _check_args(a: argparse.Namespace) -> list[str]:
    """The scene ids to capture; ValueError / FileNotFoundError / FileExistsError on bad input."""
    scenes, out = Path(a.scenes), Path(a.out)
    if a.n < 1:
        raise ValueError(f"--n must be at least 1, got {a.n}")
    if a.first < 0:
        raise ValueError(f"--first must be >= 0, got {a.first}")
    if not scenes.is_dir():
        raise FileNotFoundError(f"no such scenes directory: {scenes}")
    ids = list_scenes(scenes)
    if a.first >= len(ids):
        raise ValueError(f"{scenes} holds {len(ids)} scene(s); --first {a.first} selects none")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory; choose a new one")
    return ids[a.first:a.first + a.n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m robot.software_frames", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", required=True, help="exported scenes directory (data.scene_io layout)")
    ap.add_argument("--out", required=True, help="new or empty output directory")
    ap.add_argument("--n", type=int, default=4, help="number of scenes to capture (default 4)")
    ap.add_argument("--first", type=int, default=0, help="index of the first scene in sorted order (default 0)")
    a = ap.parse_args(argv)
    try:
        ids = _check_args(a)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        import pyrealsense2  # noqa: F401
    except ImportError as e:
        print(f"error: pyrealsense2 cannot be imported ({e}); {SETUP_HINT}", file=sys.stderr)
        return 2
    out = Path(a.out)
    t0 = time.perf_counter()
    written = 0
    same_sum = 0.0
    for sid in ids:
        stem = f"sw_{sid}"
        try:
            scene = read_scene(a.scenes, sid, require_label=False)
            cap = capture_scene(scene)
            write_capture(out, stem, cap)
        except (CameraError, OSError, ValueError, RuntimeError) as e:
            print(f"error: {stem}: {e} ({written} frame(s) written before it to {out})", file=sys.stderr)
            return 2
        written += 1
        same, holes = depth_agreement(cap.frame.depth, scene.depth)
        same_sum += same
        K = cap.K
        print(f"{stem}: {scene.width}x{scene.height} fx={K[0, 0]:.2f} fy={K[1, 1]:.2f} cx={K[0, 2]:.2f} "
              f"cy={K[1, 2]:.2f} px, depth scale {cap.depth_scale:.6g} m/unit, read {cap.reads} frame(s); "
              f"rgb = injected, depth within 1 mm of the scene on {100 * same:.1f}% of its valid pixels, "
              f"{100 * holes:.1f}% emptied by alignment")
    print(f"{written} software-camera frame(s) from {a.scenes} in {time.perf_counter() - t0:.1f} s -> {out}/"
          f"{{rgb,depth,intrinsics}}; depth within 1 mm of the scenes on {100 * same_sum / written:.1f}% of valid "
          f"pixels on average. Segment with: python -m learner.deploy predict --model MODEL --rgb {out / 'rgb'} "
          f"--depth {out / 'depth'} --intrinsics {out / 'intrinsics'} --out DIR")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
