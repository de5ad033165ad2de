"""Benchmark appends to the interaction log with synthetic but realistic records.

    python -m data.bench_log [--n 200] [--out DIR] [--noise 1.5] [--height 240 --width 320]

Each record is a 320x240 table-top scene (smooth shaded table, a handful of coloured objects, one of
them displaced in the after image), a depth map with the matching geometry plus ~1 mm noise and
missing pixels, ~10 hypothesis masks and a noisy extracted mask. `--noise` is the RGB sensor noise
standard deviation in 8-bit levels (0 = noise-free sim renders, ~1.5 = a RealSense-like camera);
noise dominates the compressed size of RGB. Prints mean / p95 / max append time and bytes per
interaction on disk. Without `--out` the log is written to a temporary directory and deleted.

`synthetic_record(seed, height, width)` is deterministic in `seed` and is reused by the tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from data.schema import InteractionRecord, Label


def _ellipse(H: int, W: int, cx: float, cy: float, rx: float, ry: float, theta: float) -> np.ndarray:
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    c, s = np.cos(theta), np.sin(theta)
    x, y = (u - cx) * c + (v - cy) * s, -(u - cx) * s + (v - cy) * c
    return (x / rx) ** 2 + (y / ry) ** 2 <= 1.0


def synthetic_record(
    seed: int, height: int = 240, width: int = 320, *, n_hypotheses: int | None = None, noise: float = 1.5
) -> InteractionRecord:
    """A deterministic, plausible interaction record (content depends only on the arguments)."""
    rng = np.random.default_rng(seed)
    H, W = height, width
    fx = fy = 0.9 * W
    K = np.array([[fx, 0.0, (W - 1) / 2], [0.0, fy, (H - 1) / 2], [0.0, 0.0, 1.0]])
    pose = np.eye(4)
    pose[:3, :3] = [[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]  # looking down at the table
    pose[:3, 3] = [0.5, 0.0, 0.8 + 0.01 * rng.standard_normal()]

    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    table_rgb = np.array([150, 120, 90], np.float32) + (u[..., None] * 0.05 + v[..., None] * 0.08)
    table_depth = 0.8 + 0.0004 * (v - H / 2)

    n_obj = int(rng.integers(3, 7))
    objs = []
    for _ in range(n_obj):
        objs.append(
            dict(
                cx=rng.uniform(0.15 * W, 0.85 * W),
                cy=rng.uniform(0.15 * H, 0.85 * H),
                rx=rng.uniform(0.04, 0.10) * W,
                ry=rng.uniform(0.04, 0.10) * W,
                theta=rng.uniform(0, np.pi),
                color=rng.uniform(30, 230, 3).astype(np.float32),
                height=rng.uniform(0.03, 0.12),
            )
        )

    def render(objects: list[dict]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        rgb = table_rgb.copy()
        depth = table_depth.copy()
        masks = []
        for o in objects:
            m = _ellipse(H, W, o["cx"], o["cy"], o["rx"], o["ry"], o["theta"])
            shade = 1.0 - 0.25 * ((u - o["cx"]) / (2 * o["rx"]))[..., None]
            rgb = np.where(m[..., None], o["color"] * shade, rgb)
            depth = np.where(m, np.minimum(depth, 0.8 - o["height"]), depth)
            masks.append(m)
        if noise > 0:
            rgb = rgb + rng.normal(0.0, noise, rgb.shape)
        depth = depth + rng.normal(0.0, 0.001, depth.shape)
        depth[rng.random(depth.shape) < 0.02] = 0.0  # missing measurements
        depth[:, :6] = 0.0
        return np.clip(rgb, 0, 255).astype(np.uint8), depth.astype(np.float32), masks

    rgb_b, depth_b, masks_b = render(objs)
    moved = int(rng.integers(n_obj))
    after = [dict(o) for o in objs]
    angle = float(rng.uniform(-np.pi, np.pi))
    after[moved]["cx"] += 25 * np.cos(angle)
    after[moved]["cy"] += 25 * np.sin(angle)
    rgb_a, depth_a, _ = render(after)

    n = int(rng.integers(8, 13)) if n_hypotheses is None else int(n_hypotheses)
    hyps = np.zeros((n, H, W), dtype=bool)
    for k in range(n):
        if k < n_obj:
            base = masks_b[k]
            hyps[k] = np.roll(base, int(rng.integers(-3, 4)), axis=int(rng.integers(2)))
        else:
            o = objs[int(rng.integers(n_obj))]
            hyps[k] = _ellipse(H, W, o["cx"], o["cy"], o["rx"] * 1.3, o["ry"] * 0.8, o["theta"])
    scores = rng.random(n).astype(np.float32)

    mask = masks_b[moved].copy()
    mask ^= rng.random((H, W)) < 0.002  # speckle noise
    ys, xs = np.nonzero(masks_b[moved])
    pixel = (
        np.array([xs.mean(), ys.mean()], dtype=np.float32)
        if len(xs)
        else np.array([W / 2, H / 2], np.float32)
    )
    label = Label(int(rng.integers(3)))
    t0 = 1.7e9 + seed * 7.0
    return InteractionRecord(
        rgb_before=rgb_b,
        depth_before=depth_b,
        rgb_after=rgb_a,
        depth_after=depth_a,
        K=K,
        camera_pose=pose,
        primitive="poke" if seed % 3 else "grasp",
        pixel=pixel,
        angle=angle,
        push_length=0.1,
        target_robot=np.array([0.5, 0.02 * seed % 0.3, 0.05], dtype=np.float32),
        hypotheses=hyps,
        hypothesis_scores=scores,
        chosen_hypothesis=int(rng.integers(-1, n)) if n else -1,
        mask=mask,
        label=label,
        label_reason={Label.POSITIVE: "moved", Label.NEGATIVE: "nothing_moved", Label.INVALID: "arm_leak"}[
            label
        ],
        t_start=t0,
        t_end=t0 + 4.5,
        model_version=seed // 50,
        robot_kind="sim",
        grasp_success=-1 if seed % 3 else int(rng.integers(2)),
    )


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="records to append")
    ap.add_argument(
        "--out", type=Path, default=None, help="directory to keep the log in (default: temp, deleted)"
    )
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--noise", type=float, default=1.5, help="RGB noise std in 8-bit levels (0 = sim render)")
    ap.add_argument("--distinct", type=int, default=20, help="distinct synthetic records to cycle through")
    args = ap.parse_args(argv)

    from data.log import InteractionLog  # after argparse so --help is instant

    records = [synthetic_record(s, args.height, args.width, noise=args.noise) for s in range(args.distinct)]
    tmp = None
    if args.out is None:
        tmp = tempfile.mkdtemp(prefix="bench_log_")
        root = Path(tmp)
    else:
        root = args.out
        root.mkdir(parents=True, exist_ok=True)
    path = root / "interactions.zarr"
    try:
        times, cpu = [], []
        with InteractionLog.create(path, args.height, args.width, code_version="bench") as log:
            for i in range(args.n):
                rec = records[i % len(records)]
                t, c = time.perf_counter(), time.process_time()
                log.append(rec)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        t = time.perf_counter()
        reader = InteractionLog.open(path, "r")
        n_read = min(args.n, 50)
        for i in range(n_read):
            reader[i]
        read_ms = (time.perf_counter() - t) / max(n_read, 1) * 1e3
        reader.close()

        ms = np.array(times) * 1e3
        size = _dir_bytes(path)
        raw = sum(
            r.rgb_before.nbytes * 2 + r.depth_before.size * 2 * 2 + r.mask.size + r.hypotheses.size
            for r in records
        ) / len(records)
        n_hyp = np.mean([r.num_hypotheses for r in records])
        print(
            f"{args.n} appends of {args.width}x{args.height} records (~{n_hyp:.1f} hypotheses, rgb noise {args.noise}):\n"
            f"  append ms: mean {ms.mean():.1f}  p50 {np.percentile(ms, 50):.1f}  "
            f"p95 {np.percentile(ms, 95):.1f}  max {ms.max():.1f}  (process CPU {np.mean(cpu) * 1e3:.1f} ms/append, "
            f"load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)\n"
            f"  on disk: {size / args.n / 1024:.1f} KiB per interaction ({size / 2**20:.1f} MiB total; "
            f"uncompressed ~{raw / 1024:.0f} KiB, ratio {raw * args.n / size:.1f}x)\n"
            f"  read: {read_ms:.1f} ms per full record\n"
            f"  log: {path if tmp is None else '(temporary, deleted)'}"
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
