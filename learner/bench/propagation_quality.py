"""How good are propagated masks? Measured against simulator ground truth.

    python -m data.propagation_quality [--scenes 6] [--per-scene 30] [--split val] [--clutter cluttered]

Runs cold-start interactions in the sim twin (targets as in data/mask_quality.py), extracts each
interaction's mask by frame differencing, propagates masks between the frames of a scene
(data/label_propagation.py) and scores every mask a frame receives against that frame's ground-truth
instance labels: IoU with the ground-truth object it overlaps most. Reports, for the frame's own
masks and for propagated ones: count, mean IoU, the share with IoU >= 0.5, and the share of
ground-truth objects per frame that end up with a mask. Ground truth is used for measurement only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from data.frame_diff import frame_difference
from data.label_propagation import PropagationConfig, propagate_masks
from data.schema import Label
from learner.bench.mask_quality import pick_pixel
from robot.base import Action, Primitive
from robot.sim_robot import SimRobot, SimRobotConfig


@dataclass
class PropagationStats:
    own_ious: list[float] = field(default_factory=list)
    propagated_ious: list[float] = field(default_factory=list)
    coverage_own: list[float] = field(default_factory=list)  # per frame: share of GT objects with a mask
    coverage_all: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        def mean(x: list[float]) -> float:
            return float(np.mean(x)) if x else float("nan")

        return {
            "own_masks": len(self.own_ious), "own_mean_iou": mean(self.own_ious),
            "own_iou50": mean([float(i >= 0.5) for i in self.own_ious]),
            "propagated_masks": len(self.propagated_ious), "propagated_mean_iou": mean(self.propagated_ious),
            "propagated_iou50": mean([float(i >= 0.5) for i in self.propagated_ious]),
            "objects_labelled_own": mean(self.coverage_own), "objects_labelled_with_propagation": mean(self.coverage_all),
        }


def best_iou(mask: np.ndarray, gt: np.ndarray) -> tuple[float, int]:
    """IoU of `mask` with the ground-truth instance it overlaps most, and that instance's id (0 = none)."""
    ids, counts = np.unique(gt[mask], return_counts=True)
    best, best_id = 0.0, 0
    for i, c in zip(ids, counts, strict=True):
        if i == 0:
            continue
        iou = c / float((mask | (gt == i)).sum())
        if iou > best:
            best, best_id = float(iou), int(i)
    return best, best_id


def score_scene(frames: list[dict], cfg: PropagationConfig, stats: PropagationStats) -> None:
    known = propagate_masks([f["rgb"] for f in frames], [f["depth"] for f in frames], [f["pose"] for f in frames],
                            [f["mask"] for f in frames], cfg)
    for t, f in enumerate(frames):
        gt = f["gt"]
        objects = set(np.unique(gt)) - {0}
        hit_own, hit_all = set(), set()
        for s in known[t]:
            iou, gid = best_iou(frames[s]["mask"], gt)
            (stats.own_ious if s == t else stats.propagated_ious).append(iou)
            if iou >= 0.5:
                hit_all.add(gid)
                if s == t:
                    hit_own.add(gid)
        if objects:
            stats.coverage_own.append(len(hit_own) / len(objects))
            stats.coverage_all.append(len(hit_all) / len(objects))


def run(scenes: int, per_scene: int, split: str, clutter: str, seed: int,
        cfg: PropagationConfig | None = None) -> PropagationStats:
    cfg = cfg or PropagationConfig()
    rng = np.random.default_rng(seed)
    stats = PropagationStats()
    robot_cfg = SimRobotConfig(split=split, clutter=clutter, seed=seed, interactions_per_scene=per_scene)
    with SimRobot(robot_cfg) as robot:
        for _ in tqdm(range(scenes), desc="scenes"):
            frames: list[dict] = []
            for _ in range(per_scene):
                before = robot.get_observation()
                gt_before = robot.ground_truth_label().copy()
                pixel = pick_pixel(before, rng)
                prim = Primitive.POKE if rng.random() < 0.5 else Primitive.GRASP
                outcome = robot.send_action(Action(prim, pixel, angle=float(rng.uniform(-np.pi, np.pi))))
                after = robot.get_observation()
                mask = None
                if outcome.executed:
                    res = frame_difference(before.rgb, before.depth, after.rgb, after.depth, before.K,
                                           before.camera_pose, pixel, robot.table_bounds)
                    if res.label == Label.POSITIVE and res.mask.sum() >= 30:
                        mask = res.mask
                # a scene that ends early (too few objects left) re-spawns with another camera pose,
                # which propagation never crosses
                frames.append({"rgb": before.rgb, "depth": before.depth, "pose": before.camera_pose, "mask": mask,
                               "gt": gt_before})
            score_scene(frames, cfg, stats)
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=6)
    ap.add_argument("--per-scene", type=int, default=30)
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--clutter", default="cluttered", choices=["sparse", "cluttered", "piled"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    s = run(a.scenes, a.per_scene, a.split, a.clutter, a.seed).summary()
    print("| masks | n | mean IoU | IoU >= 0.5 |\n|---|---|---|---|")
    print(f"| own interaction | {s['own_masks']} | {s['own_mean_iou']:.3f} | {s['own_iou50']:.3f} |")
    print(f"| propagated | {s['propagated_masks']} | {s['propagated_mean_iou']:.3f} | {s['propagated_iou50']:.3f} |")
    print(f"\nGT objects per frame with a mask (IoU >= 0.5): own {s['objects_labelled_own']:.3f}, "
          f"with propagation {s['objects_labelled_with_propagation']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
