"""Training data that scales (issue #19): one retrain's start-up time and peak memory against the log's size.

    python -m learner.bench.train_data_scale --records 500 2000 10000 --out docs/train_data_scale.json

Builds one interaction log (320x240 by default) of synthetic table-top interactions (`scene_records`:
a fixed camera, objects that rest between interactions so label propagation has real work, one object
moved per positive interaction; `--distinct` records generated, then replicated with increasing start
times) and grows it to each N in `--records`. At each N it runs, each in a fresh subprocess with one
torch thread and the default `TrainConfig` / `SegmenterConfig`:

- warm: the loop's steady state. A learner process opens a `LogSource` on the log at N - 100 records
  and a `Trainer` (untimed); then this process appends the last 100 records (a real writer, while the
  learner's reader is open), and the learner times one retrain's start-up: `source.update()` (reads
  the 100 new records only) plus `Trainer.train(source, 1)` up to its first optimiser step.
- cold: a fresh learner process opening the N-record log: `log_source(...)` (reads every record once:
  propagation and the instance bank need each record's images) plus the first optimiser step.

Both report the peak RSS of their process (`resource.getrusage(...).ru_maxrss`) and, for warm, the peak
RSS during the retrain alone (Linux VmHWM after resetting it through /proc/self/clear_refs). The table
is printed and, with `--out`, written as JSON. The log lives in a temporary directory unless `--keep DIR`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from data.bench_log import _ellipse
from data.schema import InteractionRecord, Label

WARM_NEW = 100  # records a warm learner reads at its retrain (the loop's update interval, roughly)


# ----------------------------------------------------------------------------- synthetic interactions


def scene_records(n: int, height: int = 240, width: int = 320, seed: int = 0, episode: int = 60,
                  noise: float = 1.5) -> list[InteractionRecord]:
    """`n` consecutive interactions on one table seen by a fixed camera (deterministic in `seed`).

    Every `episode` records the table is re-arranged (3-6 new objects). In between, a positive (~65 %)
    moves one object by 25 px (its mask, with speckle noise, is the record's mask; the others rest,
    so their masks propagate), a negative (~25 %) touches the bare table, an invalid (~10 %) changes
    nothing. Depth: table at ~0.8 m, objects 3-12 cm tall, 1 mm noise, 2 % missing pixels; RGB noise
    `noise` levels. Start times increase by 5 s per record.
    """
    rng = np.random.default_rng(seed)
    H, W = height, width
    fx = 0.9 * W
    K = np.array([[fx, 0.0, (W - 1) / 2], [0.0, fx, (H - 1) / 2], [0.0, 0.0, 1.0]])
    pose = np.eye(4)
    pose[:3, :3] = [[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]
    pose[:3, 3] = [0.5, 0.0, 0.8]
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    table_rgb = np.array([150, 120, 90], np.float32) + (u[..., None] * 0.05 + v[..., None] * 0.08)
    table_depth = 0.8 + 0.0004 * (v - H / 2)

    def new_objects() -> list[dict[str, Any]]:
        return [dict(cx=rng.uniform(0.2 * W, 0.8 * W), cy=rng.uniform(0.2 * H, 0.8 * H),
                     rx=rng.uniform(0.04, 0.08) * W, ry=rng.uniform(0.04, 0.08) * W, theta=rng.uniform(0, np.pi),
                     color=rng.uniform(30, 230, 3).astype(np.float32), height=rng.uniform(0.03, 0.12))
                for _ in range(int(rng.integers(3, 7)))]  # fmt: skip

    def render(objs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        rgb, depth, masks = table_rgb.copy(), table_depth.copy(), []
        for o in objs:
            m = _ellipse(H, W, o["cx"], o["cy"], o["rx"], o["ry"], o["theta"])
            rgb = np.where(m[..., None], o["color"], rgb)
            depth = np.where(m, np.minimum(depth, 0.8 - o["height"]), depth)
            masks.append(m)
        rgb = rgb + rng.normal(0.0, noise, rgb.shape) if noise > 0 else rgb
        depth = (depth + rng.normal(0.0, 0.001, depth.shape)).astype(np.float32)
        depth[rng.random(depth.shape) < 0.02] = 0.0
        return np.clip(rgb, 0, 255).astype(np.uint8), depth, masks

    out = []
    objs: list[dict[str, Any]] = []
    for k in range(n):
        if k % episode == 0:
            objs = new_objects()
        rgb_b, depth_b, masks_b = render(objs)
        x = rng.random()
        after = [dict(o) for o in objs]
        mask = np.zeros((H, W), bool)
        if x < 0.65:
            label, reason = Label.POSITIVE, "moved"
            j = int(rng.integers(len(objs)))
            a = float(rng.uniform(-np.pi, np.pi))
            after[j]["cx"] = float(np.clip(after[j]["cx"] + 25 * np.cos(a), 0.15 * W, 0.85 * W))
            after[j]["cy"] = float(np.clip(after[j]["cy"] + 25 * np.sin(a), 0.15 * H, 0.85 * H))
            mask = masks_b[j] ^ (rng.random((H, W)) < 0.002)
            ys, xs = np.nonzero(masks_b[j])
            pixel = np.array([xs.mean(), ys.mean()], np.float32)
        else:
            label, reason = (Label.NEGATIVE, "nothing_moved") if x < 0.9 else (Label.INVALID, "arm_leak")
            pixel = np.array([rng.uniform(10, W - 10), rng.uniform(10, H - 10)], np.float32)
        rgb_a, depth_a, _ = render(after)
        objs = after
        t0 = 1.7e9 + 5.0 * k
        out.append(InteractionRecord(
            rgb_before=rgb_b, depth_before=depth_b, rgb_after=rgb_a, depth_after=depth_a, K=K, camera_pose=pose,
            primitive="poke", pixel=pixel, angle=0.0, push_length=0.1,
            target_robot=np.array([0.5, 0.0, 0.05], np.float32), hypotheses=np.zeros((0, H, W), bool),
            hypothesis_scores=np.zeros(0, np.float32), chosen_hypothesis=-1, mask=mask, label=label,
            label_reason=reason, t_start=t0, t_end=t0 + 4.0, model_version=0, robot_kind="sim", grasp_success=-1,
        ))  # fmt: skip
    return out


def replicated(base: list[InteractionRecord], k: int) -> InteractionRecord:
    """Record k of a long log made by cycling `base` (start times keep increasing by 5 s per record)."""
    r = base[k % len(base)]
    t0 = 1.7e9 + 5.0 * k
    return dataclasses.replace(r, t_start=t0, t_end=t0 + 4.0)


# ----------------------------------------------------------------------------- learner processes


def _rss_mb() -> tuple[float, float]:
    """(current, peak since the last reset) resident set size of this process in MB (Linux /proc)."""
    cur = peak = float("nan")
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return cur, peak


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _child(mode: str, log: str, cache_mb: float) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from learner.model.network import SegmenterConfig
    from learner.train.trainer import TrainConfig, Trainer, log_source

    cfg = TrainConfig(num_threads=1)
    trainer = Trainer(cfg, SegmenterConfig(), seed=0)
    out: dict[str, Any] = {"mode": mode}
    if mode == "warm":
        source = log_source(log, cfg, cache_mb=cache_mb)
        out["records_before"] = source.n_records
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("warm learner: expected 'go'")
        out["rss_before_retrain_mb"] = _rss_mb()[0]
        reset = _reset_peak_rss()
        ingested0 = source.stats.records_ingested
        t0 = time.perf_counter()
        out["new_usable"] = source.update()
        t1 = time.perf_counter()
        trainer.train(source, 1, progress=False)
        t2 = time.perf_counter()
        out["records_read_at_retrain"] = source.stats.records_ingested - ingested0
        out["retrain_peak_rss_mb"] = _rss_mb()[1] if reset else float("nan")
    else:
        t0 = time.perf_counter()
        source = log_source(log, cfg, cache_mb=cache_mb)
        t1 = time.perf_counter()
        trainer.train(source, 1, progress=False)
        t2 = time.perf_counter()
        out["records_read_at_retrain"] = source.stats.records_ingested
    out.update(records=source.n_records, usable=len(source), data_s=t1 - t0, first_step_s=t2 - t1,
               startup_s=t2 - t0, cache_peak_mb=source.cache.peak_nbytes / 2**20, bank=len(source.bank),
               known_masks=source.n_known_masks,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: kB
    source.close()
    return out


def _spawn(mode: str, log: Path, cache_mb: float) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "learner.bench.train_data_scale", "--child", mode, "--log", str(log),
                             "--cache-mb", str(cache_mb)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, cwd=Path(__file__).resolve().parents[2])  # fmt: skip


def _result(proc: subprocess.Popen) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"learner process failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def run(records: list[int], height: int, width: int, distinct: int, cache_mb: float, root: Path) -> list[dict[str, Any]]:
    """Grow one log through the sizes in `records`, measuring a warm and a cold learner at each."""
    from data.log import InteractionLog

    path = root / "interactions.zarr"
    base = scene_records(distinct, height, width)
    rows = []
    with InteractionLog.create(path, height, width, code_version="bench") as log:
        for n in sorted(records):
            if n < WARM_NEW + 1:
                raise ValueError(f"--records must be > {WARM_NEW}, got {n}")
            if n < len(log):
                raise ValueError(f"--records must be distinct, got {n} twice")
            t = time.perf_counter()
            while len(log) < n - WARM_NEW:
                log.append(replicated(base, len(log)))
            warm = _spawn("warm", path, cache_mb)
            if warm.stdout.readline().strip() != "ready":
                raise RuntimeError("warm learner did not start")
            while len(log) < n:  # the writer appends while the learner's reader is open
                log.append(replicated(base, len(log)))
            warm.stdin.write("go\n")
            warm.stdin.flush()
            w = _result(warm)
            c = _result(_spawn("cold", path, cache_mb))
            rows.append({"records": n, "warm": w, "cold": c, "append_s": time.perf_counter() - t})
            print(_row(rows[-1]), flush=True)
    return rows


HEADER = (f"{'N':>6} | {'warm: read':>10} {'data s':>7} {'1st step s':>10} {'start-up s':>10} {'peak RSS MB':>11} "
          f"{'retrain peak MB':>15} | {'cold: read':>10} {'data s':>7} {'start-up s':>10} {'peak RSS MB':>11}")  # fmt: skip


def _row(r: dict[str, Any]) -> str:
    w, c = r["warm"], r["cold"]
    return (f"{r['records']:>6} | {w['records_read_at_retrain']:>10} {w['data_s']:>7.2f} {w['first_step_s']:>10.2f} "
            f"{w['startup_s']:>10.2f} {w['peak_rss_mb']:>11.0f} {w['retrain_peak_rss_mb']:>15.0f} | "
            f"{c['records_read_at_retrain']:>10} {c['data_s']:>7.2f} {c['startup_s']:>10.2f} {c['peak_rss_mb']:>11.0f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, nargs="+", default=[500, 2000, 10000], help="log sizes N (> 100)")
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--distinct", type=int, default=240, help="distinct synthetic records, replicated to N")
    ap.add_argument("--cache-mb", type=float, default=None, help="LogSource image cache, MB (default: its default)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--keep", type=Path, default=None, help="build the log in this directory and keep it")
    ap.add_argument("--child", choices=["warm", "cold"], help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.cache_mb is None:
        from learner.train.data import DEFAULT_CACHE_MB

        a.cache_mb = DEFAULT_CACHE_MB
    if a.child:
        print(json.dumps(_child(a.child, a.log, a.cache_mb)), flush=True)
        return 0
    tmp = None
    if a.keep is None:
        tmp = tempfile.mkdtemp(prefix="train_data_scale_")
        root = Path(tmp)
    else:
        root = a.keep
        root.mkdir(parents=True, exist_ok=True)
    try:
        print(f"{a.width}x{a.height} log, {a.distinct} distinct synthetic records replicated; warm = read "
              f"N-{WARM_NEW} before, update with the last {WARM_NEW}; cache {a.cache_mb:g} MB; 1 torch thread")
        print(HEADER, flush=True)
        rows = run(a.records, a.height, a.width, a.distinct, a.cache_mb, root)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"height": a.height, "width": a.width, "distinct": a.distinct,
                                     "cache_mb": a.cache_mb, "warm_new": WARM_NEW, "cpus": os.cpu_count(),
                                     "rows": rows}, indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
