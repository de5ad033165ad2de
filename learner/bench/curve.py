"""Learning-curve benchmark: held-out quality against the number of robot interactions.

    python -m learner.bench_curve --out runs/curve [--interactions 500,1000,2000] [--domain wide]
                                  [--cross-scenes runs/cross_test] [--steps N | --passes P]
                                  [--test-scenes 100] [--variants ours,robust_loss,no_pseudo,oracle]

1. Exports `--test-scenes` held-out scenes of the TEST split (objects never used in training).
2. Records one interaction log in the sim twin with the cold-start agent (targets from the robot's
   own depth prior; resumable: an existing log is extended), in `--domain` narrow (today's cell) or
   wide (randomised cells: cameras, rooms, tables, light, sensor artefacts; training objects only).
   All self-supervised variants train on the same first N records, so the comparison is controlled.
3. For every N and variant, trains a fresh model, saves it to OUT/models/VARIANT_N.pt and evaluates it
   on the in-domain test scenes and, with `--cross-scenes`, on cross-domain test scenes (other object
   families, cameras, rooms; `sim.export_scenes --domain cross --split test`), run at its training
   resolution. Training effort scales with N (`learner.train.effort.TrainingEffort`: `--passes` over the
   log, clipped to `--min-steps`..`--max-steps`) unless `--steps` fixes it:
   - `ours`: the default TrainConfig: BCE + Dice on the interaction masks (after label propagation)
     + RISE pseudo-sequences (+ association);
   - `robust_loss`: ours with Pathak's robust set loss (tau = TrainConfig.tau) instead;
   - `no_robust`: ours with BCE + Dice (the same as `ours` while that is the default loss);
   - `no_pseudo`: ours without pseudo-sequences;
   - `no_propagation`: each frame keeps only its own interaction's mask (ablation of
     data/label_propagation.py);
   - `oracle`: the SAME model trained on simulator ground-truth masks of N exported TRAIN-split scenes
     of the same twin (narrow, or wide for a wide log) with the same steps (an upper-bound baseline,
     labelled as such);
   plus the depth-clustering baseline (no training) on the same scenes.
4. Writes `curve.json`, `curve.md` (a table: in-domain, then cross-domain columns) and `curve.png`.
The table reports each model's steps and the seconds its training took.

Runs can share one log and one scene set (`--log`, `--scenes`) and run side by side, e.g. the curve
of ours and the oracle in one process and the ablations at the largest N in another;
`--merge DIR DIR --out OUT` then writes one table and plot from their curve.json files.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.log import InteractionLog
from learner.evaluate.harness import evaluate_segmenter
from learner.loop.agent import Agent, AgentConfig
from learner.loop.record import build_record
from learner.model.backend import torch_segmenter
from learner.model.network import SegmenterConfig
from learner.train.data import SceneSource
from learner.train.effort import TrainingEffort
from learner.train.trainer import TrainConfig, Trainer, log_source
from robot.sim_robot import SimRobot, SimRobotConfig

VARIANTS = ("ours", "robust_loss", "no_robust", "no_pseudo", "no_propagation", "oracle")
DEFAULT_VARIANTS = ("ours", "robust_loss", "no_pseudo", "oracle")
KEYS = ("AP50", "AP", "AP30", "overlap_F", "boundary_F")


def collect(log_path: Path, n: int, seed: int, clutter: str = "cluttered", per_scene: int = 20,
            domain: str = "narrow") -> None:
    """Extend the log to `n` committed interactions with the cold-start agent (train split objects; `domain`
    narrow: today's twin, wide: the randomised cells of sim/randomization.py)."""
    if (log_path / "zarr.json").exists():  # long enough already: read only (other benchmark runs may share it)
        with InteractionLog.open(log_path, "r") as log:
            if len(log) >= n:
                return
    with InteractionLog.open_or_create(log_path, 240, 320) as log:
        if len(log) >= n:
            return
        agent = Agent(AgentConfig(exploration=1.0), np.random.default_rng(seed + len(log)))
        cfg = SimRobotConfig(split="train", clutter=clutter, seed=seed + len(log), interactions_per_scene=per_scene,
                             domain=domain)
        with SimRobot(cfg) as robot:
            for _ in tqdm(range(n - len(log)), desc="collect"):
                before = robot.get_observation()
                H, W = before.depth.shape
                action, chosen, _ = agent.choose(before, np.zeros((0, H, W), bool), np.zeros(0))
                outcome = robot.send_action(action)
                log.append(build_record(before, robot.get_observation(), action, outcome, chosen_hypothesis=chosen,
                                        table_bounds=robot.table_bounds))


def variant_config(name: str, threads: int = 2) -> TrainConfig:
    """TrainConfig of a variant: `ours` and `oracle` are the defaults, the others change one thing."""
    cfg = TrainConfig(num_threads=threads)
    if name == "robust_loss":
        cfg.loss = "robust"
    elif name == "no_robust":
        cfg.loss = "bce_dice"
    elif name == "no_pseudo":
        cfg.pseudo_sequences = False
        cfg.association_weight = 0.0
    elif name == "no_propagation":
        cfg.propagate_labels = False
    return cfg


def evaluate_model(model, scenes: Path, net_size: tuple[int, int] | None = None) -> dict[str, float]:
    """Held-out metrics of a model run at `net_size` (H, W; its training resolution) on exported scenes."""
    r = evaluate_segmenter(torch_segmenter(model, net_size=net_size).predict, scenes, double_pick=False, per_scene=False)
    return {k: float(r[k]) for k in KEYS}


SETS = ("", "cross_")  # row key prefixes: "" the in-domain test split, "cross_" the cross-domain test split


def run(out: Path, ns: list[int], steps: int | None, n_test: int, variants: list[str], seed: int = 0,
        model_cfg: SegmenterConfig | None = None, per_scene: int = 20, log_path: Path | None = None,
        test_dir: Path | None = None, threads: int = 2, domain: str = "narrow", cross_dir: Path | None = None,
        effort: TrainingEffort | None = None) -> list[dict]:
    """The curve. steps: a fixed number of optimiser steps per model, or None: `effort` (default
    TrainingEffort()) decides from N. domain: the twin the log (and the oracle's scenes) come from.
    cross_dir: exported cross-domain test scenes evaluated next to the in-domain ones (keys `cross_*`)."""
    from learner.evaluate.baselines.depth_clustering import DepthClusteringSegmenter
    from sim.export_scenes import export_scenes

    out.mkdir(parents=True, exist_ok=True)
    test_dir = test_dir or out / "test_scenes"
    if not (test_dir / "instances_coco.json").exists():
        export_scenes(test_dir, "test", n_test, seed=seed, progress=True)
    scene_sets = {"": test_dir, **({"cross_": cross_dir} if cross_dir else {})}
    log_path = log_path or out / "interactions.zarr"
    collect(log_path, max(ns), seed, per_scene=per_scene, domain=domain)
    effort = effort or TrainingEffort()
    rows: list[dict] = []
    base: dict = {"variant": "depth_clustering", "interactions": 0, "steps": 0, "train_s": 0.0}
    for prefix, d in scene_sets.items():
        r = evaluate_segmenter(DepthClusteringSegmenter().predict, d, double_pick=False, per_scene=False)
        base.update({prefix + k: float(r[k]) for k in KEYS})
    rows.append(base)
    for n in ns:
        for name in variants:
            t0 = time.perf_counter()
            trainer = Trainer(variant_config(name, threads), model_cfg, oracle=name == "oracle", seed=seed)
            if name == "oracle":
                train_dir = out / f"oracle_train_{n}"
                if not (train_dir / "instances_coco.json").exists():
                    export_scenes(train_dir, "train", n, seed=seed + 7, progress=False,
                                  domain="narrow" if domain == "narrow" else "wide")
                source = SceneSource(train_dir)
            else:
                source = log_source(log_path, trainer.cfg, limit=n)
            n_steps = steps if steps is not None else effort.steps(n, trainer.cfg.batch_size)
            trainer.train(source, n_steps, progress=True)
            trainer.save(out / "models" / f"{name}_{n}.pt")  # for later benchmarks (learner.evaluate, bench_confidence)
            row = {"variant": name, "interactions": n, "steps": n_steps, "train_s": time.perf_counter() - t0}
            for prefix, d in scene_sets.items():
                row.update({prefix + k: v for k, v in evaluate_model(trainer.model, d, trainer.input_size).items()})
            rows.append(row)
            tqdm.write(json.dumps(row))
            (out / "curve.json").write_text(json.dumps(rows, indent=1))
    write_outputs(out, rows)
    return rows


def _cell(r: dict, key: str) -> str:
    return f"{r[key]:.3f}" if key in r else "-"


def write_outputs(out: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "curve.json").write_text(json.dumps(rows, indent=1))
    sets = [p for p in SETS if any(p + "AP50" in r for r in rows)]
    cols = ("AP50", "AP", "overlap_F", "boundary_F")
    head = " | ".join(f"{'cross ' if p else ''}{c.replace('_', ' ')}" for p in sets for c in cols)
    lines = [f"| variant | interactions | steps | {head} | train s |",
             "|---|---|---|" + "---|" * (len(sets) * len(cols)) + "---|"]
    for r in rows:
        cells = " | ".join(_cell(r, p + c) for p in sets for c in cols)
        lines.append(f"| {r['variant']} | {r['interactions']} | {r.get('steps', '-')} | {cells} | {r['train_s']:.0f} |")
    (out / "curve.md").write_text("\n".join(lines) + "\n")
    panels = [(p, key) for p in sets for key in ("AP50", "boundary_F")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (prefix, key) in zip(axes[0], panels, strict=True):
        for name in sorted({r["variant"] for r in rows} - {"depth_clustering"}):
            pts = sorted((r["interactions"], r[prefix + key]) for r in rows if r["variant"] == name and prefix + key in r)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        for r in rows:
            if r["variant"] == "depth_clustering" and prefix + key in r:
                ax.axhline(r[prefix + key], color="k", linestyle="--", label="depth clustering")
        ax.set_title(f"{'cross-domain' if prefix else 'in-domain'} test: {key}")
        ax.set_xlabel("interactions (oracle: labelled scenes)")
        ax.set_ylabel(key)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=100)
    plt.close(fig)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--interactions", default="500,1000,2000")
    ap.add_argument("--steps", type=int, default=None,
                    help="fixed optimiser steps per model (default: scaled with N, learner.train.effort.TrainingEffort)")
    ap.add_argument("--passes", type=float, default=TrainingEffort.passes, help="images sampled per logged record")
    ap.add_argument("--min-steps", type=int, default=TrainingEffort.min_steps)
    ap.add_argument("--max-steps", type=int, default=TrainingEffort.max_steps)
    ap.add_argument("--domain", default="narrow", choices=["narrow", "wide"],
                    help="the twin the log is collected in (wide: randomised cells, training objects only)")
    ap.add_argument("--cross-scenes", help="exported cross-domain test scenes (sim.export_scenes --domain cross "
                                           "--split test): evaluated next to the in-domain test split")
    ap.add_argument("--test-scenes", type=int, default=100)
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"some of {','.join(VARIANTS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-scene", type=int, default=20, help="interactions before the sim table is re-spawned")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per training (1 when runs share the CPU)")
    ap.add_argument("--log", help="an existing log to use (default OUT/interactions.zarr); extended if too short")
    ap.add_argument("--scenes", help="exported test scenes to use (default OUT/test_scenes, exported if missing)")
    ap.add_argument("--merge", nargs="+", metavar="DIR",
                    help="only merge the curve.json of earlier runs (e.g. one with ablations) into OUT")
    a = ap.parse_args(argv)
    if a.merge:
        rows = []
        for d in a.merge:
            for r in json.loads((Path(d) / "curve.json").read_text()):
                if r["variant"] == "depth_clustering" and any(x["variant"] == "depth_clustering" for x in rows):
                    continue
                rows.append(r)
        Path(a.out).mkdir(parents=True, exist_ok=True)
        write_outputs(Path(a.out), rows)
        return 0
    variants = a.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    ns = sorted(int(x) for x in a.interactions.split(","))
    if not ns or ns[0] <= 0:
        ap.error("--interactions must be positive numbers")
    effort = TrainingEffort(a.passes, a.min_steps, a.max_steps)
    try:
        effort.validate()
    except ValueError as e:
        ap.error(str(e))
    run(Path(a.out), ns, a.steps, a.test_scenes, variants, a.seed, per_scene=a.per_scene,
        log_path=Path(a.log) if a.log else None, test_dir=Path(a.scenes) if a.scenes else None, threads=a.threads,
        domain=a.domain, cross_dir=Path(a.cross_scenes) if a.cross_scenes else None, effort=effort)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
