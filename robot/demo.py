"""A short demo of the robot cell: a few pokes and grasps with before/after PNGs.

    python -m robot.demo [--out runs/demo] [--n 6] [--clutter cluttered] [--seed 0]

Targets are picked without any learning or ground truth: pixels whose observed 3D point stands more
than 1.5 cm above the table plane (z = 0 in the robot frame), i.e. "something is here".
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from data.geometry import height_above_table
from robot.base import Action, Primitive
from robot.sim_robot import SimRobot, SimRobotConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--clutter", default="cluttered", choices=["sparse", "cluttered", "piled"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    t0 = time.perf_counter()
    rows = []
    with SimRobot(SimRobotConfig(clutter=a.clutter, seed=a.seed)) as robot:
        for i in range(a.n):
            before = robot.get_observation()
            h = height_above_table(before.depth, before.K, before.camera_pose)
            cand = np.argwhere(np.nan_to_num(h) > 0.015)
            if len(cand) == 0:
                print("nothing above the table; stopping")
                break
            v, u = cand[rng.integers(len(cand))]
            prim = Primitive.POKE if i % 2 == 0 else Primitive.GRASP
            outcome = robot.send_action(Action(prim, (float(u), float(v)), angle=float(rng.uniform(-np.pi, np.pi))))
            after = robot.get_observation()
            moved = outcome.info["ground_truth"]["moved_ids"]  # sim-only ground truth, shown for the demo
            vis = np.concatenate([before.rgb, after.rgb], 1).copy()
            cv2.circle(vis, (int(u), int(v)), 5, (255, 255, 0), 2)
            path = out / f"{i:03d}_{prim.value}.png"
            cv2.imwrite(str(path), cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
            rows.append((i, prim.value, (int(u), int(v)), outcome.executed, outcome.grasp_success, len(moved), path))
    print(f"\n{'#':>3} {'primitive':9} {'pixel':>12} {'executed':8} {'grasped':7} {'moved':5}  before|after PNG")
    for i, p, px, ex, gs, nm, path in rows:
        print(f"{i:>3} {p:9} {str(px):>12} {str(ex):8} {str(gs):7} {nm:>5}  {path}")
    print(f"\n{len(rows)} interactions in {time.perf_counter() - t0:.1f} s; images in {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
