"""Throughput of the sim twin: interactions per second (before capture + primitive + after capture).

    python -m sim.bench [--n 60] [--resolutions 320x240,640x480] [--domains narrow,wide] [--no-append]

Runs on one core (pybullet is single-threaded). Each interaction is a capture, a poke or grasp at a
random object pixel (picked from simulator ground truth — this is a benchmark, not learning), and the
after capture. Also reports the floor: the time spent in the two renders plus the physics steps of the
simulated motion, and what is left (IK, bookkeeping, noise model). Appends a table to
docs/benchmarks.md unless --no-append.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from pathlib import Path

import numpy as np

from sim.env import CameraConfig, InteractiveTabletopEnv, TabletopConfig

BENCH_FILE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def bench_resolution(width: int, height: int, n: int, seed: int = 0, shadows: bool = False,
                     domain: str = "narrow") -> dict[str, float]:
    env = InteractiveTabletopEnv(TabletopConfig(camera=CameraConfig(width=width, height=height, shadows=shadows),
                                                domain=domain, split="test" if domain == "cross" else "train"))
    t_reset = time.perf_counter()
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    resets, reset_s = 1, time.perf_counter() - t_reset
    for k in env.timing:
        env.timing[k] = 0
    total, done = 0.0, 0
    while done < n:
        label = info["instance_label"]
        ids = np.unique(label[label > 0])
        if ids.size == 0:
            t_r = time.perf_counter()
            obs, info = env.reset()
            resets, reset_s = resets + 1, reset_s + time.perf_counter() - t_r
            continue
        vs, us = np.nonzero(label == rng.choice(ids))
        j = rng.integers(len(vs))
        t0 = time.perf_counter()
        env._capture()  # the "before" capture of an interaction (the env caches its last one)
        obs, _, term, trunc, info = env.step(
            {"primitive": done % 2, "pixel": (us[j], vs[j]), "angle": [rng.uniform(-np.pi, np.pi)], "push_length": [0.1]}
        )
        total += time.perf_counter() - t0
        done += 1
        if term or trunc:
            t_before = env.timing.copy()
            t_r = time.perf_counter()
            obs, info = env.reset()
            resets, reset_s = resets + 1, reset_s + time.perf_counter() - t_r
            env.timing.update(t_before)  # reset's own settling is not part of an interaction
    tm = env.timing
    env.close()
    per = total / n
    floor = (tm["render_s"] + tm["physics_s"]) / n
    return {
        "width": width, "height": height, "n": n, "shadows": shadows, "domain": domain,
        "reset_ms": 1000 * reset_s / resets,
        "interactions_per_s": 1.0 / per, "ms_per_interaction": 1000 * per,
        "render_ms": 1000 * tm["render_s"] / tm["renders"],
        "physics_ms": 1000 * tm["physics_s"] / n, "physics_steps": tm["physics_steps"] / n,
        "floor_ms": 1000 * floor, "overhead_ms": 1000 * (per - floor),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--resolutions", default="320x240,640x480")
    ap.add_argument("--shadows", action="store_true", help="also measure with TinyRenderer shadows on")
    ap.add_argument("--domains", default="narrow", help="comma-separated: narrow, wide, cross (cross uses split test)")
    ap.add_argument("--no-append", action="store_true")
    a = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    rows = []
    for res in a.resolutions.split(","):
        w, h = (int(x) for x in res.lower().split("x"))
        for domain in a.domains.split(","):
            for shadows in [False, True] if a.shadows else [False]:
                r = bench_resolution(w, h, a.n, shadows=shadows, domain=domain)
                rows.append(r)
                print(
                    f"{domain} {w}x{h} shadows={shadows}: {r['interactions_per_s']:.2f} interactions/s "
                    f"({r['ms_per_interaction']:.0f} ms; floor {r['floor_ms']:.0f} ms = 2 renders x {r['render_ms']:.0f} ms "
                    f"+ {r['physics_steps']:.0f} physics steps {r['physics_ms']:.0f} ms; other {r['overhead_ms']:.0f} ms; "
                    f"scene reset {r['reset_ms']:.0f} ms)"
                )
    if not a.no_append:
        lines = [
            f"\n### sim.bench — {dt.date.today().isoformat()} ({platform.processor() or platform.machine()}, one core)\n",
            f"Command: `python -m sim.bench --n {a.n} --resolutions {a.resolutions} --domains {a.domains}"
            f"{' --shadows' if a.shadows else ''}`\n",
            "| domain | resolution | shadows | interactions/s | ms/interaction | floor ms (2 renders + physics) | render ms | physics steps | physics ms | other ms | reset ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['domain']} | {r['width']}x{r['height']} | {r['shadows']} | {r['interactions_per_s']:.2f} | "
                f"{r['ms_per_interaction']:.0f} | "
                f"{r['floor_ms']:.0f} ({100 * r['floor_ms'] / r['ms_per_interaction']:.0f}%) | {r['render_ms']:.0f} | "
                f"{r['physics_steps']:.0f} | {r['physics_ms']:.0f} | {r['overhead_ms']:.0f} | {r['reset_ms']:.0f} |"
            )
        BENCH_FILE.parent.mkdir(parents=True, exist_ok=True)
        with open(BENCH_FILE, "a") as f:
            f.write("\n".join(lines) + "\n")
        print(f"appended to {BENCH_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
