"""Segment RGB-D frames on disk with an exported model (`python -m learner.deploy predict`; torch-free).

    python -m learner.deploy predict --model OUT_DIR --rgb IMG.png --depth DEPTH.png --intrinsics K.json --out DIR
    python -m learner.deploy predict --model OUT_DIR --scenes SCENES_DIR --out DIR
    python -m learner.deploy predict ... --mode confidence --p 0.9 --samples 10   # safer grasp targets
    python -m learner.deploy predict ... --camera-pose POSE.json --workspace 0.2 0.8 -0.4 0.4 -0.01 0.3

Without a camera pose the support plane (the network's height channel, the table gate, the
off-support rule) comes from the pose-free rule of `learner.proposals.plane`; with --camera-pose
(world-from-camera, world z up) it is the plane at the pose's height above the table top
(--table-z), and --workspace (world box, metres) cuts every mask to the points inside it.

Frames go through `learner.deploy.runtime.Segmenter` (the one proposal pipeline of
`learner.proposals` over onnxruntime); the distributional modes take a
`learner.proposals.segmenter.SamplerConfig`. Per frame: STEM_label.png (uint16 instance ids),
STEM_overlay.png and STEM.json, written all or nothing. Needs only numpy, onnxruntime and opencv.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from learner.deploy import DeployError
from learner.deploy.runtime import MC_ONNX_NAME, MODES, InputError, Instances, ModelError, Segmenter
from learner.proposals.frame import check_inputs
from learner.proposals.plane import fill_holes, use_camera_pose, workspace_mask
from learner.proposals.segmenter import SamplerConfig

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LATENT_SAMPLERS = ("latent", "tta_latent")


def read_intrinsics(path: Path) -> tuple[np.ndarray, tuple[int, int] | None]:
    """JSON with fx, fy, cx, cy (optional width, height; scene_io camera JSONs qualify) or "K" 3x3
    -> (K, (W, H) or None)."""
    if not path.is_file():
        raise DeployError(f"missing intrinsics file: {path}")
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DeployError(f"malformed intrinsics JSON {path}: {e}") from None
    if not isinstance(d, dict):
        raise DeployError(f"malformed intrinsics JSON {path}: expected an object with fx, fy, cx, cy")
    try:
        if all(k in d for k in ("fx", "fy", "cx", "cy")):
            K = np.array([[float(d["fx"]), 0.0, float(d["cx"])], [0.0, float(d["fy"]), float(d["cy"])], [0, 0, 1]])
        elif "K" in d:
            K = np.asarray(d["K"], dtype=np.float64).reshape(3, 3)
        else:
            missing = [k for k in ("fx", "fy", "cx", "cy") if k not in d]
            raise DeployError(f"intrinsics {path} lack {', '.join(missing)} (need fx, fy, cx, cy or K)")
        size = None
        if "width" in d or "height" in d:
            size = (int(d["width"]), int(d["height"]))
    except (TypeError, ValueError, KeyError) as e:
        raise DeployError(f"malformed intrinsics {path}: {e}") from None
    if not np.all(np.isfinite(K)):
        raise DeployError(f"intrinsics {path} contain NaN or inf")
    return K, size


def read_camera_pose(path: Path) -> np.ndarray:
    """JSON 4x4 list, or an object with "pose" (scene_io camera JSONs) -> (4, 4) world-from-camera."""
    if not path.is_file():
        raise DeployError(f"missing camera pose file: {path}")
    try:
        d = json.loads(path.read_text())
        T = np.asarray(d["pose"] if isinstance(d, dict) else d, dtype=np.float64)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DeployError(f"malformed camera pose JSON {path} (a 4x4 list or {{\"pose\": 4x4}}): {e}") from None
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise DeployError(f"camera pose {path} must be a finite 4x4 matrix, got shape {T.shape}")
    if not np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-3) or not np.allclose(T[3], (0, 0, 0, 1)):
        raise DeployError(f"camera pose {path} is not a rigid transform (rotation + translation)")
    return T


def cut_to_workspace(inst: Instances, depth_m: np.ndarray, K: np.ndarray, pose: np.ndarray,
                     box: tuple[tuple[float, float], tuple[float, float], tuple[float, float]],
                     min_area: int) -> Instances:
    """Instances with every mask cut to the pixels whose point lies in the world box (plus depth
    holes enclosed by them); masks left under min_area pixels are dropped."""
    keep_px = fill_holes(workspace_mask(depth_m, K, pose, box))
    masks = inst.masks & keep_px[None]
    keep = masks.reshape(masks.shape[0], -1).sum(axis=1) >= max(int(min_area), 1)
    return Instances(masks[keep], inst.scores[keep], inst.points[keep], inst.depth, inst.K, dict(inst.info))


def read_rgb(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DeployError(f"missing rgb file: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DeployError(f"corrupt or unreadable rgb image: {path}")
    if img.dtype != np.uint8:
        raise DeployError(f"rgb image must be 8-bit, got {img.dtype}: {path}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif img.shape[2] != 3:
        raise DeployError(f"rgb image must have 3 channels, got {img.shape}: {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_depth(path: Path) -> np.ndarray:
    """uint16 PNG millimetres or .npy (float metres; uint16 read as millimetres)."""
    if not path.is_file():
        raise DeployError(f"missing depth file: {path}")
    if path.suffix.lower() == ".npy":
        try:
            d = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DeployError(f"corrupt or unreadable depth array {path}: {e}") from None
        return d
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None:
        raise DeployError(f"corrupt or unreadable depth image: {path}")
    if d.ndim != 2 or d.dtype != np.uint16:
        desc = f"{d.dtype} with {1 if d.ndim == 2 else d.shape[2]} channel(s)"
        raise DeployError(f"depth PNG must be single-channel uint16 millimetres, got {desc}: {path}")
    return d


def _list_frames(d: Path, exts: tuple[str, ...], what: str) -> dict[str, Path]:
    if not d.is_dir():
        raise DeployError(f"no such {what} directory: {d}")
    out: dict[str, Path] = {}
    for p in sorted(d.iterdir()):
        if p.is_file() and p.suffix.lower() in exts:
            if p.stem in out:
                raise DeployError(f"two {what} files share the stem {p.stem!r}: {out[p.stem]} and {p}")
            out[p.stem] = p
    return out


def collect_frames(rgb: Path, depth: Path, intr: Path) -> list[tuple[str, Path, Path, Path]]:
    """Pair rgb/depth/intrinsics by file stem -> [(stem, rgb, depth, intrinsics)]."""
    if rgb.is_dir() != depth.is_dir():
        raise DeployError(f"--rgb and --depth must both be files or both be directories ({rgb}, {depth})")
    if not rgb.is_dir():
        for p, what in ((rgb, "rgb"), (depth, "depth")):
            if not p.is_file():
                raise DeployError(f"missing {what} file: {p}")
        if intr.is_dir():
            return [(rgb.stem, rgb, depth, intr / f"{rgb.stem}.json")]
        return [(rgb.stem, rgb, depth, intr)]
    rgbs = _list_frames(rgb, IMAGE_EXTS, "rgb")
    depths = _list_frames(depth, (".png", ".npy"), "depth")
    if not rgbs:
        raise DeployError(f"no rgb images in {rgb}")
    only_rgb = sorted(set(rgbs) - set(depths))
    only_depth = sorted(set(depths) - set(rgbs))
    if only_rgb or only_depth:
        msg = []
        if only_rgb:
            msg.append("rgb without depth: " + ", ".join(str(rgbs[s]) for s in only_rgb))
        if only_depth:
            msg.append("depth without rgb: " + ", ".join(str(depths[s]) for s in only_depth))
        raise DeployError("unpaired frames (rgb and depth are paired by file stem); " + "; ".join(msg))
    return [(s, rgbs[s], depths[s], intr / f"{s}.json" if intr.is_dir() else intr) for s in sorted(rgbs)]


_PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
     [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40],
     [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128]],
    np.uint8,
)


def overlay_image(rgb: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB (H,W,3) with each instance tinted and outlined, ids written at the mask centres."""
    out = rgb.astype(np.float32)
    ids = [int(i) for i in np.unique(label) if i != 0]
    for i in ids:
        m = label == i
        out[m] = (1 - alpha) * out[m] + alpha * _PALETTE[(i - 1) % len(_PALETTE)]
    out = out.astype(np.uint8)
    for i in ids:
        m = (label == i).astype(np.uint8)
        col = tuple(int(c) for c in _PALETTE[(i - 1) % len(_PALETTE)])
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, col, 1)
        vv, uu = np.nonzero(m)
        cv2.putText(out, str(i), (int(uu.mean()), int(vv.mean())), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def _encode_png(img: np.ndarray, what: str) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise DeployError(f"could not encode {what}")
    return buf.tobytes()


def _write_all(files: dict[Path, bytes]) -> None:
    """Write every file or none: temporaries first, then renames; cleaned up on failure."""
    tmps: list[tuple[Path, Path]] = []
    try:
        for p, data in files.items():
            t = p.with_name(p.name + ".tmp")
            t.write_bytes(data)
            tmps.append((t, p))
        for t, p in tmps:
            os.replace(t, p)
    except OSError as e:
        for t, p in tmps:
            t.unlink(missing_ok=True)
            p.unlink(missing_ok=True)
        raise DeployError(f"could not write outputs: {e}") from None


def predict_frame(
    seg: Segmenter, stem: str, rgb_path: Path, depth_path: Path, intr_path: Path, out_dir: Path,
    mode: str = "mean", p: float = 0.9, sampler: SamplerConfig | None = None,
    pose_path: Path | None = None, workspace: tuple[tuple[float, float], ...] | None = None, table_z: float = 0.0,
) -> dict[str, Any]:
    """Read, check, predict and write one frame's outputs (all or nothing); returns its JSON.

    mode "mean" is the plain prediction (`Segmenter.predict`); "confidence" / "union" are the
    distributional modes of `Segmenter.predict_distributional` with p and the sampler settings
    (default SamplerConfig()). pose_path: the frame's camera pose JSON (`read_camera_pose`), used for
    the support plane (`learner.proposals.plane.use_camera_pose`, table top at world z = table_z)
    and, with workspace ((x0, x1), (y0, y1), (z0, z1)) world metres, to cut the masks to that box."""
    rgb = read_rgb(rgb_path)
    depth = read_depth(depth_path)
    K, size = read_intrinsics(intr_path)
    H, W = rgb.shape[:2]
    if size is not None and size != (W, H):
        raise DeployError(
            f"intrinsics {intr_path} are for {size[0]}x{size[1]} but {rgb_path} is {W}x{H}; "
            "use the intrinsics of this resolution"
        )
    pose = read_camera_pose(pose_path) if pose_path is not None else None
    if workspace is not None and pose is None:
        raise DeployError("--workspace needs --camera-pose (the box is in the world frame)")
    t0 = time.perf_counter()
    try:
        with use_camera_pose(pose, table_z):
            if mode == "mean":
                inst: Instances = seg.predict(rgb, depth, K)
            else:
                inst = seg.predict_distributional(rgb, depth, K, mode=mode, p=p, sampler=sampler or SamplerConfig())
        if workspace is not None:
            _, depth_m, Kc = check_inputs(rgb, depth, K)
            inst = cut_to_workspace(inst, depth_m, Kc, pose, workspace, seg.proposals.min_area)
    except InputError as e:
        raise DeployError(f"{rgb_path} / {depth_path} / {intr_path}: {e}") from None
    except ModelError as e:
        raise DeployError(str(e)) from None
    dt = time.perf_counter() - t0
    label = inst.label_image()
    rec = {
        "rgb": str(rgb_path),
        "depth": str(depth_path),
        "intrinsics": str(intr_path),
        **({"camera_pose": str(pose_path)} if pose_path is not None else {}),
        **({"workspace": [list(w) for w in workspace]} if workspace is not None else {}),
        "width": W,
        "height": H,
        "model_version": seg.model_version,
        "num_seeds": inst.info.get("num_seeds"),
        "latency_ms": round(1000 * dt, 2),
        "bbox_convention": "[x0, y0, x1, y1] half-open pixel bounds",
        "centroid_frame": "camera, OpenCV axes, metres (null when the mask has no valid depth)",
        "instances": inst.to_records(),
    }
    if mode != "mean":  # the mean-mode record stays exactly as before
        rec["distributional"] = {k: inst.info.get(k) for k in ("mode", "p", "samples", "required_agreement", "seed",
                                                                "sampler", "dropout_rate")}
        rec["seed_uv_meaning"] = "most interior pixel of the mask (distance-transform peak)"
    files = {
        out_dir / f"{stem}_label.png": _encode_png(label, "label image"),
        out_dir / f"{stem}_overlay.png": _encode_png(cv2.cvtColor(overlay_image(rgb, label), cv2.COLOR_RGB2BGR),
                                                     "overlay"),
        out_dir / f"{stem}.json": json.dumps(rec, indent=1).encode(),
    }
    _write_all(files)
    return rec


def sampler_from_args(args: argparse.Namespace) -> tuple[str, float, SamplerConfig]:
    """(mode, p, SamplerConfig) of the predict options; DeployError naming a bad option."""
    mode = getattr(args, "mode", "mean")
    p = getattr(args, "p", 0.9)
    d = SamplerConfig()
    samples, seed = getattr(args, "samples", d.samples), getattr(args, "seed", d.seed)
    method = getattr(args, "sampler", d.method)
    rate = getattr(args, "dropout_rate", d.dropout_rate)
    if mode not in MODES:
        raise DeployError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not (isinstance(p, int | float) and math.isfinite(p) and 0.0 < p <= 1.0):
        raise DeployError(f"--p must lie in (0, 1], got {p}")
    if samples < 1:
        raise DeployError(f"--samples must be >= 1, got {samples}")
    if not 0.0 <= rate < 1.0:
        raise DeployError(f"--dropout-rate must lie in [0, 1), got {rate}")
    try:
        sampler = SamplerConfig(method=method, samples=int(samples), seed=int(seed), dropout_rate=float(rate)).validate()
    except ValueError as e:
        raise DeployError(str(e)) from None
    return mode, float(p), sampler


def write_sheet(path: Path, rgb: Path, out: Path, frames: list[tuple[str, int]], width: int = 480) -> None:
    """One PNG to look at: per frame (a row) its RGB beside the overlay written to `out`, with the instance count.
    rgb: the --rgb file or directory (frames are found by stem); width: pixels per panel."""
    rows = []
    for stem, n in frames:
        src = rgb if rgb.is_file() else next(rgb.glob(f"{stem}.*"))
        a, b = cv2.imread(str(src)), cv2.imread(str(out / f"{stem}_overlay.png"))
        h = int(round(a.shape[0] * width / a.shape[1]))
        a, b = cv2.resize(a, (width, h)), cv2.resize(b, (width, h))
        cv2.putText(b, f"{stem}: {n} instances", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
        rows.append(np.hstack([a, b]))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack(rows))


def cmd_predict(args: argparse.Namespace) -> int:
    """The predict command: every frame of --rgb/--depth/--intrinsics or --scenes; 2 if any failed."""
    if args.scenes:
        sc = Path(args.scenes)
        rgb, depth, intr = sc / "rgb", sc / "depth", sc / "camera"
    else:
        if not (args.rgb and args.depth and args.intrinsics):
            raise DeployError("give --scenes DIR, or all of --rgb, --depth and --intrinsics")
        rgb, depth, intr = Path(args.rgb), Path(args.depth), Path(args.intrinsics)
    mode, p, sampler = sampler_from_args(args)
    frames = collect_frames(rgb, depth, intr)
    try:
        seg = Segmenter.load(args.model, threads=args.threads)
    except ModelError as e:
        raise DeployError(str(e)) from None
    if mode != "mean":  # a sampler the model cannot run fails before any frame
        if sampler.method == "mc_dropout" and seg.backend.mc_shape is None:
            raise DeployError(f"{args.model}: this export has no MC-dropout graph ({MC_ONNX_NAME}); re-export it "
                              "with `python -m learner.deploy export`, or use --sampler tta")
        if sampler.method in LATENT_SAMPLERS and seg.backend.latent_weight is None:
            raise DeployError(f"{args.model}: sampler {sampler.method!r} needs a model with a latent code "
                              "(trained with latent_dim > 0); use --sampler tta or mc_dropout")
    pose_arg = getattr(args, "camera_pose", None)
    ws = getattr(args, "workspace", None)
    workspace = None if ws is None else ((ws[0], ws[1]), (ws[2], ws[3]), (ws[4], ws[5]))
    if workspace is not None and pose_arg is None:
        raise DeployError("--workspace needs --camera-pose (the box is in the world frame)")
    if workspace is not None and not all(lo < hi for lo, hi in workspace):
        raise DeployError(f"--workspace needs X0 < X1, Y0 < Y1, Z0 < Z1, got {ws}")
    table_z = float(getattr(args, "table_z", 0.0))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    sheet: list[tuple[str, int]] = []
    for stem, r, d, k in frames:
        pose_path = None
        if pose_arg is not None:
            pose_path = Path(pose_arg) / f"{stem}.json" if Path(pose_arg).is_dir() else Path(pose_arg)
        try:
            rec = predict_frame(seg, stem, r, d, k, out, mode, p, sampler, pose_path, workspace, table_z)
        except DeployError as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
            continue
        print(f"{stem}: {len(rec['instances'])} instances, {rec['latency_ms']:.1f} ms")
        sheet.append((stem, len(rec["instances"])))
    if getattr(args, "sheet", None) and sheet:
        write_sheet(Path(args.sheet), rgb, out, sheet)
        print(f"wrote {args.sheet}")
    if failed:
        print(f"error: {failed} of {len(frames)} frame(s) failed; nothing was written for them", file=sys.stderr)
        return 2
    return 0
