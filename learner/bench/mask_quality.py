"""How noisy is frame differencing? Measured against simulator ground truth.

    python -m data.mask_quality [--n 40] [--split val] [--levels sparse,cluttered,piled]
                                [--primitives poke,grasp] [--seed 0] [--append]

Runs `n` sim interactions per (primitive, clutter level). Targets are picked as the loop's cold start
does, without ground truth: 80% at random pixels standing > 1.5 cm above the table, 20% at random table
pixels (so negatives are exercised). Each extracted mask is compared with the ground-truth before-frame
mask of the object that really moved (the one under the pixel if it moved; for collateral motion, the mover the mask overlaps most). Reports per primitive and level: mean IoU of positives whose object moved, false positives (a
mask though nothing moved), false negatives (the object under the pixel moved but no mask), and masks
spanning two objects (a second object contributes > 15% of the mask). Ground truth is used here for
measurement only. Tune thresholds on the val split.
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.frame_diff import FrameDiffConfig, frame_difference
from data.geometry import height_above_table
from data.schema import Label
from robot.base import Action, Primitive
from robot.sim_robot import SimRobot, SimRobotConfig

BENCH_FILE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


@dataclass
class QualityStats:
    n: int = 0
    moved: int = 0  # ground truth: an object moved at the target
    positives: int = 0  # extracted masks
    ious: list[float] = field(default_factory=list)
    ious_success: list[float] = field(default_factory=list)  # grasps where the gripper held the object
    false_pos: int = 0
    false_neg: int = 0
    spanning: int = 0
    invalid: int = 0
    nothing_moved: int = 0

    def row(self) -> dict[str, float]:
        return {
            "n": self.n,
            "gt_moved": self.moved,
            "positives": self.positives,
            "mean_iou": float(np.mean(self.ious)) if self.ious else float("nan"),
            "median_iou": float(np.median(self.ious)) if self.ious else float("nan"),
            "mean_iou_held": float(np.mean(self.ious_success)) if self.ious_success else float("nan"),
            "n_held": len(self.ious_success),
            "false_pos": self.false_pos,
            "false_pos_rate": self.false_pos / max(self.nothing_moved, 1),
            "false_neg": self.false_neg,
            "false_neg_rate": self.false_neg / max(self.moved, 1),
            "spanning_two": self.spanning,
            "spanning_rate": self.spanning / max(self.positives, 1),
            "invalid": self.invalid,
        }


def pick_pixel(frame, rng: np.random.Generator, object_fraction: float = 0.8) -> tuple[float, float]:
    """Cold-start target: a pixel standing > 1.5 cm above the table, or (sometimes) a table pixel."""
    h = np.nan_to_num(height_above_table(frame.depth, frame.K, frame.camera_pose), nan=-1.0)
    above = np.argwhere(h > 0.015)
    table = np.argwhere((h > -0.005) & (h < 0.005))
    pool = above if (rng.random() < object_fraction and len(above)) or not len(table) else table
    v, u = pool[rng.integers(len(pool))]
    return float(u), float(v)


def evaluate_interaction(res, gt_before: np.ndarray, moved_ids: list[int], pixel, stats: QualityStats,
                         grasp_success: bool | None = None) -> None:
    """Score one extracted mask against ground truth.

    The object that really moved is the one under the pixel if it moved; if the pixel was on something
    that did not move but another object did (collateral motion), a mask is compared with the moved
    object it overlaps most, and no mask there is not a false negative (the point is not on a mover).
    """
    u, v = int(round(pixel[0])), int(round(pixel[1]))
    under = int(gt_before[v, u])
    stats.n += 1
    if res.label == Label.INVALID:
        stats.invalid += 1
        return
    if not moved_ids:
        stats.nothing_moved += 1
        stats.false_pos += res.label == Label.POSITIVE
        return
    on_mover = under in moved_ids
    stats.moved += on_mover
    if res.label != Label.POSITIVE:
        stats.false_neg += on_mover
        return
    stats.positives += 1
    if on_mover:
        target = under
    else:
        target = max(moved_ids, key=lambda i: int((gt_before[res.mask] == i).sum()))
    gt = gt_before == target
    iou = float((res.mask & gt).sum() / max((res.mask | gt).sum(), 1))
    stats.ious.append(iou)
    if grasp_success:
        stats.ious_success.append(iou)
    ids, counts = np.unique(gt_before[res.mask], return_counts=True)
    others = [(i, c) for i, c in zip(ids, counts, strict=True) if i not in (0, target)]
    if any(c > 0.15 * res.mask.sum() for _, c in others):
        stats.spanning += 1


def run(n: int, split: str, levels: list[str], primitives: list[str], seed: int,
        cfg: FrameDiffConfig | None = None) -> dict[tuple[str, str], QualityStats]:
    rng = np.random.default_rng(seed)
    out: dict[tuple[str, str], QualityStats] = {}
    for level in levels:
        with SimRobot(SimRobotConfig(split=split, clutter=level, seed=seed, interactions_per_scene=10)) as robot:
            for prim in primitives:
                stats = out.setdefault((prim, level), QualityStats())
                for _ in tqdm(range(n), desc=f"{prim:5s} {level}", leave=False):
                    before = robot.get_observation()
                    pixel = pick_pixel(before, rng)
                    outcome = robot.send_action(
                        Action(Primitive(prim), pixel, angle=float(rng.uniform(-np.pi, np.pi)), push_length=0.06)
                    )
                    if not outcome.executed:
                        continue
                    after = robot.get_observation()
                    gt = outcome.info["ground_truth"]
                    res = frame_difference(before.rgb, before.depth, after.rgb, after.depth, before.K,
                                           before.camera_pose, pixel, robot.table_bounds, cfg)
                    evaluate_interaction(res, gt["instance_label_before"], gt["moved_ids"], pixel, stats,
                                         outcome.grasp_success)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="interactions per primitive and clutter level")
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--levels", default="sparse,cluttered,piled")
    ap.add_argument("--primitives", default="poke,grasp")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--append", action="store_true", help="append the table to docs/benchmarks.md")
    a = ap.parse_args(argv)
    results = run(a.n, a.split, a.levels.split(","), a.primitives.split(","), a.seed)
    header = ("| primitive | clutter | n | pixel on a mover | masks | mean IoU | median IoU | mean IoU, grasp held (n) "
              "| false pos (rate) | false neg (rate) | spans two (rate) | invalid |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    per_prim: dict[str, QualityStats] = {}
    for (prim, _level), s in results.items():
        agg = per_prim.setdefault(prim, QualityStats())
        for f in ("n", "moved", "positives", "false_pos", "false_neg", "spanning", "invalid", "nothing_moved"):
            setattr(agg, f, getattr(agg, f) + getattr(s, f))
        agg.ious += s.ious
        agg.ious_success += s.ious_success
    rows = [((p, lvl), s) for (p, lvl), s in results.items()] + [((p, "all"), s) for p, s in per_prim.items()]
    for (prim, level), s in rows:
        r = s.row()
        lines.append(
            f"| {prim} | {level} | {r['n']} | {r['gt_moved']} | {r['positives']} | {r['mean_iou']:.3f} | "
            f"{r['median_iou']:.3f} | {r['mean_iou_held']:.3f} ({r['n_held']}) | {r['false_pos']} ({r['false_pos_rate']:.2f}) | {r['false_neg']} "
            f"({r['false_neg_rate']:.2f}) | {r['spanning_two']} ({r['spanning_rate']:.2f}) | {r['invalid']} |"
        )
    print("\n".join(lines))
    if a.append:
        cmd = (f"python -m data.mask_quality --n {a.n} --split {a.split} --levels {a.levels} "
               f"--primitives {a.primitives} --seed {a.seed} --append")
        with open(BENCH_FILE, "a") as f:
            f.write(f"\n### data.mask_quality — {dt.date.today().isoformat()}\n\nCommand: `{cmd}`\n\n" + "\n".join(lines) + "\n")
        print(f"appended to {BENCH_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
