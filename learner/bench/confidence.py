"""Benchmark of distributional predictions: double picks vs pickable area (Latent-MaskRCNN Fig. 5),
sampler diversity, inference cost and grasps in the sim twin.

    python -m learner.bench_confidence --model CKPT_OR_RUN_DIR --scenes SCENES_DIR --out OUT_DIR \\
        [--limit N] [--samples 10] [--ps 0.5,0.6,0.7,0.8,0.9,0.95] [--sim-scenes 30] [--sim-grasps 3]

On held-out exported scenes (`sim.export_scenes`, label PNGs used for evaluation only):
- the single-prediction model (`Segmenter.predict` = the prior-mean mode) with masks of
  score >= t flattened into one label image (t = 0.5 is what `learner.evaluate` reports; the other
  thresholds show what a plain score knob buys);
- p-confidence masks for every p and every sampler ("tta": test-time augmentation, the default;
  "mc_dropout": channel dropout on the head trunk; "latent" / "tta_latent" for latent models; "ensemble"
  when several --model checkpoints are given), with Alg. 1 as published (the default) and optionally
  the nested variant (--compare-methods); Union-NMS of each sampler's samples;
- for each: pooled double-pick rate and pickable-area fraction (`learner.metrics.double_pick_stats`,
  paper Sec. V-D: a gripper disk of 2 cm radius sampled inside the predicted masks; a double pick if
  it touches two ground-truth objects; pickable area = predicted-mask area / ground-truth object
  area), the same settings as `learner.eval_harness`;
- sampler diversity (`learner.mask_sets.sample_diversity`) and latency (torch, one thread; and the
  exported ONNX runtime unless --no-onnx).
In the sim twin (`robot.sim_robot.SimRobot`, objects of the test split, grasped objects go to a bin):
on each scene, the top `--sim-grasps` masks of each mode are grasped one at a time at their most
interior pixel (distance-transform peak) across the mask's minor axis, the agent's grasp rule; the
scene is re-spawned identically before every grasp. A grasp *lifts two objects* when two or more
objects left the table during it (simulator ground truth `displacement == inf`, evaluation only;
an object knocked off the table would count too).

Writes OUT/confidence.json, OUT/confidence.md and OUT/confidence.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data import scene_io
from learner.evaluate import metrics
from learner.proposals.config import ProposalConfig, add_proposal_args, from_args
from learner.proposals.mask_sets import (
    ConfidenceConfig,
    confidence_masks,
    prepare_samples,
    sample_diversity,
    union_nms,
)
from learner.proposals.segmenter import SAMPLERS, SamplerConfig, Segmenter, ensemble_samples
from learner.proposals.tta import TTAConfig

DEFAULT_PS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@dataclass
class BenchConfig:
    """Benchmark settings (see the module docstring)."""

    ps: tuple[float, ...] = DEFAULT_PS
    samples: int = 10
    single_thresholds: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.9)
    reference_threshold: float = 0.5  # the single-model operating point learner.evaluate reports
    goal_p: float = 0.9
    samplers: dict[str, SamplerConfig] = field(default_factory=lambda: {
        "mc_dropout": SamplerConfig(method="mc_dropout"),
        "tta": SamplerConfig(method="tta"),
    })
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    compare_methods: bool = False  # also the other confidence method ("confidence-nested/..." or "-greedy")
    union_iou: float = 0.5
    gripper_radius_m: float = 0.02
    n_pick_samples: int = 500
    seed: int = 0
    proposals: ProposalConfig = field(default_factory=ProposalConfig)  # every mode alike

    def validate(self) -> None:
        for p in self.ps:
            if not 0 < p <= 1:
                raise ValueError(f"every p must lie in (0, 1], got {p}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.goal_p not in self.ps:
            raise ValueError(f"goal_p {self.goal_p} must be one of ps {self.ps}")
        if self.reference_threshold not in self.single_thresholds:
            raise ValueError("reference_threshold must be one of single_thresholds")


class _Pool:
    """Pooled double-pick statistics of one method over scenes (sums, as eval_harness pools)."""

    def __init__(self) -> None:
        self.n_double = self.n_samples = self.pred_area = self.gt_area = self.fit_area = 0
        self.weighted_double = 0.0
        self.n_masks = 0
        self.n_scenes = 0

    def add(self, dp: dict[str, Any], n_masks: int) -> None:
        self.n_double += dp["n_double"]
        self.n_samples += dp["n_samples"]
        self.pred_area += dp["pred_area"]
        self.gt_area += dp["gt_area"]
        self.fit_area += dp["fit_area"]
        self.weighted_double += dp["double_pick_rate"] * dp["fit_area"]
        self.n_masks += n_masks
        self.n_scenes += 1

    def result(self) -> dict[str, float]:
        return {
            "double_pick_rate": self.n_double / self.n_samples if self.n_samples else 0.0,
            "double_pick_rate_area_weighted": self.weighted_double / self.fit_area if self.fit_area else 0.0,
            "pickable_area_fraction": self.pred_area / self.gt_area if self.gt_area else 0.0,
            "fit_area_fraction": self.fit_area / self.gt_area if self.gt_area else 0.0,
            "n_double": self.n_double,
            "n_pick_samples": self.n_samples,
            "masks_per_scene": self.n_masks / max(self.n_scenes, 1),
        }


def _double_pick(scene, masks: np.ndarray, scores: np.ndarray, cfg: BenchConfig, k: int) -> dict[str, Any]:
    h, w = scene.label.shape
    label = metrics.masks_to_label(masks, scores, shape=(h, w))
    _, flat = metrics.label_to_masks(label)
    return metrics.double_pick_stats(
        scene.label, flat, scene.K, scene.depth, gripper_radius_m=cfg.gripper_radius_m,
        n_samples=cfg.n_pick_samples, rng=np.random.default_rng([cfg.seed, k]),
    )


def evaluate_scenes(
    model: Segmenter,
    scenes_dir: str | Path,
    cfg: BenchConfig,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
    members: Sequence[Segmenter] = (),
) -> dict[str, Any]:
    """Double-pick rate / pickable area per method, diversity per sampler, torch latency.
    members: more models; if given, an "ensemble" sampler splits the k TTA views over model + members."""
    cfg.validate()
    ids = scene_io.list_scenes(scenes_dir)[: limit if limit else None]
    if not ids:
        raise ValueError(f"no scenes in {scenes_dir}")
    pools: dict[str, _Pool] = {}
    div_sum: dict[str, dict[str, float]] = {}
    times: dict[str, list[float]] = {}

    def pool(name: str) -> _Pool:
        return pools.setdefault(name, _Pool())

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        r = fn()
        times.setdefault(name, []).append(time.perf_counter() - t)
        return r

    model.proposals = cfg.proposals
    for m in members:
        m.proposals = cfg.proposals
    for k, sid in enumerate(ids):
        sc = scene_io.read_scene(scenes_dir, sid)
        samples_by = {}
        for name, scfg in cfg.samplers.items():
            scfg = replace(scfg, samples=cfg.samples)
            samples_by[name] = timed(f"sample/{name}",
                                     lambda s=scfg, f=sc: model.predict_samples(f.rgb, f.depth, f.K, s))
        if members:
            samples_by["ensemble"] = timed("sample/ensemble", lambda f=sc: ensemble_samples(
                [model, *members], f.rgb, f.depth, f.K, cfg.samples))
        # the single model = sample 0 of every sampler (the plain prediction) unless TTA leaves out the identity
        first = next(iter(cfg.samplers.values()))
        if first.method != "tta" or first.tta.include_identity:
            m0, s0 = samples_by[next(iter(cfg.samplers))][0]
        else:
            inst = model.predict(sc.rgb, sc.depth, sc.K)
            m0, s0 = inst.masks, inst.scores
        for t in cfg.single_thresholds:
            keep = s0 >= t
            pool(f"single@{t:g}").add(_double_pick(sc, m0[keep], s0[keep], cfg, k), int(keep.sum()))
        for name, smp in samples_by.items():
            ps = timed(f"prepare/{name}", lambda s=smp: prepare_samples(s))
            d = sample_diversity(ps)
            acc = div_sum.setdefault(name, {})
            for key, v in d.items():
                acc[key] = acc.get(key, 0.0) + float(v)
            variants = [("confidence", cfg.confidence.method)]
            if cfg.compare_methods:
                other = "nested" if cfg.confidence.method == "greedy" else "greedy"
                variants.append((f"confidence-{other}", other))
            for label, method in variants:
                for p in cfg.ps:
                    c = ConfidenceConfig(**{**asdict(cfg.confidence), "p": p, "method": method})
                    key = f"{label}/{name}/p={p:g}"
                    r = timed(key, lambda c=c, ps=ps: confidence_masks(ps, config=c))
                    pool(key).add(_double_pick(sc, r.masks, r.scores, cfg, k), len(r))
            u = timed(f"union/{name}", lambda ps=ps: union_nms(ps, cfg.union_iou, cfg.confidence.max_masks))
            pool(f"union/{name}").add(_double_pick(sc, u.masks, u.scores, cfg, k), len(u))
        if progress:
            progress(f"scene {sid} ({k + 1}/{len(ids)})")
    n = len(ids)
    return {
        "n_scenes": n,
        "methods": {name: p.result() for name, p in pools.items()},
        "diversity": {name: {key: v / n for key, v in acc.items()} for name, acc in div_sum.items()},
        "torch_latency_ms": {name: 1000 * float(np.mean(v)) for name, v in times.items()},
    }


# ------------------------------------------------------------------------------------------- sim


def _grasp_action(frame, mask: np.ndarray):
    from data.geometry import world_points
    from learner.loop.agent import interior_pixel, minor_axis_yaw
    from robot.base import Action, Primitive

    u, v = interior_pixel(mask)
    pts = world_points(frame.depth, frame.K, frame.camera_pose)[mask]
    pts = pts[np.isfinite(pts).all(1)]
    yaw = minor_axis_yaw(pts[:, :2]) if len(pts) else 0.0
    return Action(Primitive.GRASP, (u, v), angle=yaw)


def sim_grasps(
    predictors: dict[str, Callable[[Any], tuple[np.ndarray, np.ndarray]]],
    n_scenes: int = 30,
    grasps_per_scene: int = 3,
    min_area: int = 40,
    seed: int = 0,
    clutter: str = "cluttered",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Grasp the top masks of every predictor on the same sim scenes; count double lifts.

    predictors: name -> fn(frame) -> (masks, scores) at the frame's resolution. Returns per predictor:
    grasps, executed, lifted_none / lifted_one / lifted_two_plus counts and the shares."""
    from robot.sim_robot import SimRobot, SimRobotConfig

    robot = SimRobot(SimRobotConfig(split="test", clutter=clutter, place="bin", interactions_per_scene=1, seed=seed))
    robot.connect()
    res = {name: {"grasps": 0, "executed": 0, "lifted_none": 0, "lifted_one": 0, "lifted_two_plus": 0,
                  "mask_spans_two_gt": 0} for name in predictors}
    try:
        for s in range(int(n_scenes)):
            robot.load_state_dict({"scene_count": s})
            frame = robot.get_observation()
            label = robot.ground_truth_label().copy()
            targets = {}
            for name, fn in predictors.items():
                masks, scores = fn(frame)
                order = [int(i) for i in np.argsort(-np.asarray(scores), kind="stable") if masks[i].sum() >= min_area]
                targets[name] = [masks[i] for i in order[:grasps_per_scene]]
            for name, ms in targets.items():
                r = res[name]
                for mask in ms:
                    robot.load_state_dict({"scene_count": s})
                    f = robot.get_observation()  # the same scene again (deterministic re-spawn)
                    action = _grasp_action(f, mask)
                    out = robot.send_action(action)
                    robot.get_observation()  # the after-capture of this grasp
                    gt = out.info["ground_truth"]
                    lifted = sum(1 for d in gt["displacement"].values() if math.isinf(d))
                    r["grasps"] += 1
                    r["executed"] += int(out.executed)
                    key = "lifted_none" if lifted == 0 else ("lifted_one" if lifted == 1 else "lifted_two_plus")
                    r[key] += 1
                    ids = np.unique(label[mask])
                    r["mask_spans_two_gt"] += int(np.count_nonzero(ids) >= 2)
            if progress:
                progress(f"sim scene {s + 1}/{n_scenes}")
    finally:
        robot.disconnect()
    for r in res.values():
        g = max(r["grasps"], 1)
        lifted = r["lifted_one"] + r["lifted_two_plus"]
        r["two_plus_share"] = r["lifted_two_plus"] / g
        r["two_plus_share_of_lifts"] = r["lifted_two_plus"] / lifted if lifted else 0.0
        r["lift_share"] = lifted / g
    return {"n_scenes": int(n_scenes), "grasps_per_scene": int(grasps_per_scene), "clutter": clutter,
            "seed": seed, "per_mode": res}


# ------------------------------------------------------------------------------------------ ONNX


def onnx_latency(ckpt: Path, scenes_dir: Path, out_dir: Path, samples: int, p: float, n: int = 10,
                 proposals: ProposalConfig | None = None) -> dict[str, Any]:
    """Export the checkpoint and time the torch-free runtime per mode (1 thread, load excluded)."""
    from learner.deploy.export import export
    from learner.deploy.runtime import Segmenter

    export(ckpt, out_dir, proposals=proposals or ProposalConfig())
    seg = Segmenter.load(out_dir, threads=1)
    frames = [(s.rgb, s.depth, s.K) for s in scene_io.iter_scenes(scenes_dir, limit=n)]
    res = {}
    runs = [("mean", "mean", None), ("confidence (mc_dropout)", "confidence", "mc_dropout"),
            ("confidence (tta)", "confidence", "tta"), ("union (mc_dropout)", "union", "mc_dropout")]
    if seg.backend.latent_weight is not None:
        runs.append(("confidence (latent)", "confidence", "latent"))
    for name, mode, sampler in runs:
        ts = []
        for rgb, depth, K in frames:
            t = time.perf_counter()
            if mode == "mean":
                seg.predict(rgb, depth, K)
            else:
                seg.predict_distributional(rgb, depth, K, mode=mode, p=p, sampler=SamplerConfig(sampler, samples))
            ts.append(time.perf_counter() - t)
        res[name] = {"samples": 1 if mode == "mean" else samples, "mean_ms": 1000 * float(np.mean(ts)),
                     "p50_ms": 1000 * float(np.median(ts))}
    return res


# ---------------------------------------------------------------------------------------- report


def _fmt(x: float, pct: bool = False) -> str:
    return f"{100 * x:.2f}%" if pct else f"{x:.3f}"


def format_markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    m = res["eval"]["methods"]
    ref = m[f"single@{cfg['reference_threshold']:g}"]
    lines = [
        f"Model: `{res['model']}`; scenes: `{res['scenes']}` ({res['eval']['n_scenes']} scenes); k = {cfg['samples']} "
        f"samples; gripper radius {cfg['gripper_radius_m']} m, {cfg['n_pick_samples']} disks per scene; depth-edge "
        f"cut of the proposals: {'off' if cfg['proposals'].get('depth_edge_m') is None else str(cfg['proposals']['depth_edge_m']) + ' m'}; "
        f"contested pixels removed below an overlap of: {'off' if cfg['proposals'].get('contested_overlap') is None else cfg['proposals']['contested_overlap']}.",
        "",
        "DP: pooled like learner.eval_harness (the same number of disks in every scene); DP (area-weighted):",
        "every scene weighted by its gripper-fit area, i.e. disks dropped uniformly on the images as in",
        "the paper. A scene whose only graspable mask is a merge weighs 500 disks in the first however",
        "small that mask is, so the first is dominated by a few scenes.",
        "",
        "| method | DP | DP (area-weighted) | pickable area | fit area | masks/scene | DP vs single | "
        "DP (area-w.) vs single | area vs single |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def rel(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "n/a"

    for name, r in m.items():
        lines.append(
            f"| {name} | {_fmt(r['double_pick_rate'], True)} | {_fmt(r['double_pick_rate_area_weighted'], True)} | "
            f"{_fmt(r['pickable_area_fraction'])} | {_fmt(r['fit_area_fraction'])} | {r['masks_per_scene']:.1f} | "
            f"{rel(r['double_pick_rate'], ref['double_pick_rate'])} | "
            f"{rel(r['double_pick_rate_area_weighted'], ref['double_pick_rate_area_weighted'])} | "
            f"{rel(r['pickable_area_fraction'], ref['pickable_area_fraction'])} |")
    g = res.get("goal")
    if g:
        lines += ["", f"Goal (p = {cfg['goal_p']}, {g['sampler']}): double-pick rate (the paper's: disks uniform on "
                  f"the image, i.e. area-weighted) <= 0.5x single (got {g['dp_ratio_area_weighted']:.2f}x) with "
                  f">= 0.8x its pickable area (got {g['area_ratio']:.2f}x): **{'met' if g['met'] else 'not met'}** "
                  f"(pooled like eval_harness, {g['dp_ratio']:.2f}x: **{'met' if g['met_pooled'] else 'not met'}**)."]
    lines += ["", "Sampler diversity (mean over scenes; see learner.mask_sets.sample_diversity):", "",
              "| sampler | boundary diversity (1 - IoU of matched masks) | unmatched masks | distinct segmentations "
              "| pixel agreement | masks/sample |", "|---|---|---|---|---|---|"]
    for name, d in res["eval"]["diversity"].items():
        lines.append(f"| {name} | {d['boundary_diversity']:.3f} | {d['unmatched_rate']:.3f} | "
                     f"{d['distinct_segmentations']:.1f} / {d['k']:.0f} | {d['pixel_agreement']:.3f} | "
                     f"{d['masks_per_sample']:.1f} |")
    lines += ["", "Latency per frame (torch, 1 thread; sampling = k forward passes + proposals, one pass for latent):", "",
              "| step | ms |", "|---|---|"]
    for name, v in res["eval"]["torch_latency_ms"].items():
        lines.append(f"| {name} | {v:.1f} |")
    if res.get("onnx_latency"):
        lines += ["", "Latency per frame (exported ONNX runtime, 1 thread, end to end):", "",
                  "| mode | samples | mean ms | p50 ms |", "|---|---|---|---|"]
        for mode, v in res["onnx_latency"].items():
            lines.append(f"| {mode} | {v['samples']} | {v['mean_ms']:.1f} | {v['p50_ms']:.1f} |")
    sim = res.get("sim")
    if sim:
        lines += ["", f"Sim grasps ({sim['n_scenes']} test-split scenes, {sim['clutter']}, top {sim['grasps_per_scene']} "
                  "masks per scene, same scenes for every mode):", "",
                  "| mode | grasps | lifted nothing | lifted one | lifted two or more | share two+ of grasps | "
                  "share two+ of lifts | target mask spans two GT objects |", "|---|---|---|---|---|---|---|---|"]
        for name, r in sim["per_mode"].items():
            lines.append(f"| {name} | {r['grasps']} | {r['lifted_none']} | {r['lifted_one']} | {r['lifted_two_plus']} | "
                         f"{_fmt(r['two_plus_share'], True)} | {_fmt(r['two_plus_share_of_lifts'], True)} | "
                         f"{r['mask_spans_two_gt']} |")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = res["eval"]["methods"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, title in ((axes[0], "double_pick_rate", "pooled as learner.eval_harness"),
                           (axes[1], "double_pick_rate_area_weighted", "scenes weighted by fit area (paper)")):
        _plot_panel(ax, m, res, key, title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_panel(ax: Any, m: dict[str, Any], res: dict[str, Any], key: str, title: str) -> None:
    """One double-pick vs pickable-area panel; key: which double-pick rate goes on the x axis."""
    single = [(float(k.split("@")[1]), v) for k, v in m.items() if k.startswith("single@")]
    xs = [100 * v[key] for _, v in single]
    ys = [v["pickable_area_fraction"] for _, v in single]
    ax.plot(xs, ys, "s--", color="tab:gray", label="single prediction (score threshold t)")
    for (t, _), x, y in zip(single, xs, ys, strict=True):
        ax.annotate(f"t={t:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color="tab:gray")
    colors = {"mc_dropout": "tab:orange", "tta": "tab:blue", "latent": "tab:green", "ensemble": "tab:red"}
    for sampler in res["eval"]["diversity"]:
        for label, style in (("confidence", "o-"), ("confidence-greedy", "x:"), ("confidence-nested", "x:")):
            pts = sorted((float(k.split("p=")[1]), v) for k, v in m.items() if k.startswith(f"{label}/{sampler}/"))
            if not pts:
                continue
            xs = [100 * v[key] for _, v in pts]
            ys = [v["pickable_area_fraction"] for _, v in pts]
            name = "p-confidence" if label == "confidence" else f"p-confidence, {label.split('-')[1]}"
            ax.plot(xs, ys, style, color=colors.get(sampler), label=f"{name} ({sampler})")
            for (p, _), x, y in zip(pts, xs, ys, strict=True):
                ax.annotate(f"{p:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        u = m.get(f"union/{sampler}")
        if u:
            ax.plot([100 * u[key]], [u["pickable_area_fraction"]], "^", color=colors.get(sampler),
                    label=f"Union-NMS ({sampler})")
    ax.set_xlabel("double-pick rate % (lower is better)")
    ax.set_ylabel("pickable area fraction (higher is better)")
    ax.set_title(f"Double-pick rate vs pickable area\n({title})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def goal_check(res: dict[str, Any], sampler: str = SamplerConfig.method) -> dict[str, Any]:
    cfg = res["config"]
    m = res["eval"]["methods"]
    ref = m[f"single@{cfg['reference_threshold']:g}"]
    c = m[f"confidence/{sampler}/p={cfg['goal_p']:g}"]
    def ratio(key: str) -> float:  # 0/0 (no double picks either way) counts as 0
        return c[key] / ref[key] if ref[key] else (0.0 if c[key] == 0 else float("inf"))

    dp, dpw = ratio("double_pick_rate"), ratio("double_pick_rate_area_weighted")
    ar = c["pickable_area_fraction"] / ref["pickable_area_fraction"] if ref["pickable_area_fraction"] else 0.0
    return {"sampler": sampler, "dp_ratio": dp, "dp_ratio_area_weighted": dpw, "area_ratio": ar,
            # the paper's rate (Sec. V-D) drops disks uniformly on the image: the area-weighted one
            "met": bool(dpw <= 0.5 and ar >= 0.8), "met_pooled": bool(dp <= 0.5 and ar >= 0.8)}


def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True,
                    help="checkpoint file or run directory; several, comma-separated, add an 'ensemble' sampler "
                         "(k TTA views split over the models; the first model is the single-prediction reference)")
    ap.add_argument("--scenes", required=True, help="held-out exported scenes (with labels)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--limit", type=int, default=None, help="only the first N scenes")
    ap.add_argument("--samples", type=int, default=10, help="k samples per frame")
    ap.add_argument("--ps", type=_floats, default=DEFAULT_PS)
    ap.add_argument("--goal-p", type=float, default=0.9)
    ap.add_argument("--dropout-rate", type=float, default=SamplerConfig.dropout_rate)
    ap.add_argument("--tta-scale", type=_floats, default=TTAConfig.scale_range,
                    help="TTA zoom range lo,hi (learner.tta.TTAConfig.scale_range)")
    ap.add_argument("--tta-shift", type=float, default=TTAConfig.max_shift,
                    help="TTA shift, share of the image size (learner.tta.TTAConfig.max_shift)")
    ap.add_argument("--tta-roll", type=float, default=TTAConfig.max_roll_deg,
                    help="TTA in-plane rotation, max degrees (learner.tta.TTAConfig.max_roll_deg; 0 = none)")
    ap.add_argument("--samplers", default="tta,mc_dropout",
                    help="comma-separated: tta, mc_dropout, latent (latent models only); the first one is the "
                         "headline (goal check, sim)")
    add_proposal_args(ap)
    ap.add_argument("--compare-methods", action="store_true",
                    help="also the other p-confidence method (nested, monotone in p) as confidence-nested/...")
    ap.add_argument("--sim-scenes", type=int, default=30, help="sim scenes for the grasp experiment (0 = skip)")
    ap.add_argument("--sim-grasps", type=int, default=3, help="masks grasped per scene and mode")
    ap.add_argument("--sim-clutter", default="cluttered", choices=("sparse", "cluttered", "piled"))
    ap.add_argument("--no-onnx", action="store_true", help="skip the exported-runtime latency")
    ap.add_argument("--onnx-frames", type=int, default=10, help="frames timed per mode with the exported runtime")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    from learner.model.backend import torch_segmenter
    from learner.model.checkpoint import CheckpointError, load_model

    torch.set_num_threads(a.threads)
    proposals = from_args(a)
    try:
        model, *members = [torch_segmenter(load_model(p)[0], proposals) for p in a.model.split(",")]
    except CheckpointError as e:
        print(f"error: {e}", file=__import__("sys").stderr)
        return 2
    samplers = {}
    for name in a.samplers.split(","):
        if name not in SAMPLERS:
            ap.error(f"unknown sampler {name!r} (expected some of {', '.join(SAMPLERS)})")
        samplers[name] = SamplerConfig(method=name, samples=a.samples, seed=a.seed, dropout_rate=a.dropout_rate,
                                       tta=TTAConfig(scale_range=tuple(a.tta_scale), max_shift=a.tta_shift,
                                                     max_roll_deg=a.tta_roll))
    cfg = BenchConfig(ps=a.ps, samples=a.samples, goal_p=a.goal_p, samplers=samplers, seed=a.seed,
                      compare_methods=a.compare_methods, proposals=proposals)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res: dict[str, Any] = {"model": str(a.model), "scenes": str(a.scenes),
                           "config": {**{k: v for k, v in asdict(cfg).items() if k != "samplers"},
                                      "samplers": {k: asdict(v) for k, v in samplers.items()}},
                           "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    res["eval"] = evaluate_scenes(model, a.scenes, cfg, a.limit, progress=lambda s: print(s, flush=True),
                                  members=members)
    headline = next(iter(samplers))
    res["goal"] = goal_check(res, headline)
    if not a.no_onnx:
        from learner.model.checkpoint import resolve_checkpoint

        ckpt, _ = resolve_checkpoint(a.model.split(",")[0])
        res["onnx_latency"] = onnx_latency(ckpt, Path(a.scenes), out / "onnx", a.samples, a.goal_p, a.onnx_frames,
                                           proposals)
    if a.sim_scenes > 0:
        sampler = samplers[headline]

        def single(frame):
            inst = model.predict(frame.rgb, frame.depth, frame.K)
            return inst.masks, inst.scores

        def conf(frame):
            inst = model.predict_distributional(frame.rgb, frame.depth, frame.K, mode="confidence", p=a.goal_p,
                                                sampler=sampler)
            return inst.masks, inst.scores

        res["sim"] = sim_grasps({"single": single, f"confidence p={a.goal_p:g} ({sampler.method})": conf},
                                a.sim_scenes, a.sim_grasps, seed=a.seed, clutter=a.sim_clutter,
                                progress=lambda s: print(s, flush=True))
    res["wall_s"] = time.time() - t0
    (out / "confidence.json").write_text(json.dumps(res, indent=1))
    md = format_markdown(res)
    (out / "confidence.md").write_text(md)
    plot(res, out / "confidence.png")
    print(md)
    print(f"wrote {out / 'confidence.json'}, {out / 'confidence.md'}, {out / 'confidence.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
