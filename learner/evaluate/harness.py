"""Evaluate any segmenter ``predict_fn(rgb, depth, K) -> (masks (N, H, W) bool, scores (N,))`` on a
directory of exported scenes (`data.scene_io` format).

Metrics (see `learner.metrics` for definitions):
- COCO mask AP (.50:.95), AP50, AP75, AP30, AR100 over all scenes, using every predicted mask.
- UOIS Overlap / Boundary P/R/F and obj_detected_075_percentage: per-scene values averaged over
  scenes. They need a hard segmentation, so masks with score >= ``score_thresh`` are flattened into a
  non-overlapping label image (higher score wins).
- Double-pick rate and pickable-area fraction on the same flattened masks; pooled over scenes
  (sum of double picks / sum of samples, sum of predicted area / sum of GT area).
- Latency of ``predict_fn`` (mean / median / max seconds per frame, wall clock, including any
  conversion it does itself).

CLI::

    python -m learner.eval_harness --baseline depth_clustering --scenes DIR [--out PREFIX]

writes PREFIX.json and PREFIX.md (default PREFIX: DIR/eval_<baseline>) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data import scene_io
from learner.evaluate import metrics

PredictFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

SUMMARY_KEYS = (
    "AP",
    "AP50",
    "AP75",
    "AP30",
    "AR100",
    *metrics.UOIS_KEYS,
    "double_pick_rate",
    "pickable_area_fraction",
    "fit_area_fraction",
    "latency_mean_s",
    "latency_median_s",
    "latency_max_s",
    "n_scenes",
    "n_gt",
    "n_pred",
)


def _check_prediction(out: Any, h: int, w: int, scene_id: str) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(out, "masks") and hasattr(out, "scores"):  # learner.proposals.segmenter.Instances
        out = (out.masks, out.scores)
    try:
        masks, scores = out
    except (TypeError, ValueError):
        raise ValueError(f"scene {scene_id}: predict_fn must return (masks, scores) or Instances") from None
    masks = np.asarray(masks)
    if masks.size == 0:
        masks = np.zeros((0, h, w), dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != (h, w):
        raise ValueError(f"scene {scene_id}: masks must be (N, {h}, {w}), got {masks.shape}")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != masks.shape[0]:
        raise ValueError(f"scene {scene_id}: {masks.shape[0]} masks but {scores.shape[0]} scores")
    return masks.astype(bool, copy=False), scores


def evaluate_segmenter(
    predict_fn: PredictFn,
    scenes_dir: str | Path,
    limit: int | None = None,
    double_pick: bool = True,
    *,
    score_thresh: float = 0.5,
    gripper_radius_m: float = 0.02,
    n_pick_samples: int = 500,
    seed: int = 0,
    bound_th: float = metrics.BOUNDARY_TH,
    per_scene: bool = True,
) -> dict[str, Any]:
    """Run ``predict_fn`` on every scene of ``scenes_dir`` (first ``limit`` if given) and score it.

    Returns a flat dict with the keys of SUMMARY_KEYS (double-pick keys only if ``double_pick``),
    a ``settings`` dict and, if ``per_scene``, a ``per_scene`` list of per-scene metrics.
    """
    scenes_dir = Path(scenes_dir)
    ids = scene_io.list_scenes(scenes_dir)
    if limit is not None:
        ids = ids[: int(limit)]
    if not ids:
        raise ValueError(f"no scenes found in {scenes_dir}")

    gt_labels, preds, uois, latencies, rows = [], [], [], [], []
    dp_double = dp_samples = pred_area = gt_area = fit_area = 0
    for k, sid in enumerate(ids):
        s = scene_io.read_scene(scenes_dir, sid)
        h, w = s.label.shape
        t0 = time.perf_counter()
        out = predict_fn(s.rgb, s.depth, s.K)
        latencies.append(time.perf_counter() - t0)
        masks, scores = _check_prediction(out, h, w, sid)
        gt_labels.append(s.label)
        preds.append((masks, scores))

        keep = scores >= score_thresh
        pred_label = metrics.masks_to_label(masks[keep], scores[keep], shape=(h, w))
        u = metrics.uois_prf(s.label, pred_label, bound_th=bound_th)
        uois.append(u)
        row: dict[str, Any] = {"scene": sid, "latency_s": latencies[-1], "n_pred": int(masks.shape[0])}
        row.update({key: u[key] for key in (*metrics.UOIS_KEYS, "obj_gt", "obj_detected")})
        if double_pick:
            _, flat = metrics.label_to_masks(pred_label)
            dp = metrics.double_pick_stats(
                s.label,
                flat,
                s.K,
                s.depth,
                gripper_radius_m=gripper_radius_m,
                n_samples=n_pick_samples,
                rng=np.random.default_rng([seed, k]),
            )
            dp_double += dp["n_double"]
            dp_samples += dp["n_samples"]
            pred_area += dp["pred_area"]
            gt_area += dp["gt_area"]
            fit_area += dp["fit_area"]
            row.update(
                {key: dp[key] for key in ("double_pick_rate", "pickable_area_fraction", "fit_area_fraction")}
            )
        rows.append(row)

    res: dict[str, Any] = {}
    coco = metrics.coco_mask_metrics(gt_labels, preds)
    res.update({key: coco[key] for key in ("AP", "AP50", "AP75", "AP30", "AR100")})
    agg = metrics.aggregate_uois(uois)
    res.update({key: agg[key] for key in metrics.UOIS_KEYS})
    if double_pick:
        res["double_pick_rate"] = dp_double / dp_samples if dp_samples else 0.0
        res["pickable_area_fraction"] = pred_area / gt_area if gt_area else 0.0
        res["fit_area_fraction"] = fit_area / gt_area if gt_area else 0.0
    lat = np.asarray(latencies)
    res.update(
        latency_mean_s=float(lat.mean()),
        latency_median_s=float(np.median(lat)),
        latency_max_s=float(lat.max()),
        n_scenes=len(ids),
        n_gt=coco["n_gt"],
        n_pred=coco["n_pred"],
    )
    res["settings"] = {
        "scenes_dir": str(scenes_dir),
        "score_thresh": score_thresh,
        "gripper_radius_m": gripper_radius_m,
        "n_pick_samples": n_pick_samples,
        "seed": seed,
        "boundary_bound_th": bound_th,
        "boundary_slack_px": int(uois[0]["slack_px"]),
        "double_pick": double_pick,
    }
    if per_scene:
        res["per_scene"] = rows
    return res


def format_markdown(results: dict[str, Any], title: str = "Segmentation evaluation") -> str:
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    for key in SUMMARY_KEYS:
        if key not in results:
            continue
        v = results[key]
        if key.startswith("latency"):
            txt = f"{1000 * v:.1f} ms"
        elif isinstance(v, float):
            txt = f"{v:.4f}"
        else:
            txt = str(v)
        lines.append(f"| {key} | {txt} |")
    settings = results.get("settings")
    if settings:
        lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())]
    return "\n".join(lines) + "\n"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def write_report(
    results: dict[str, Any], out_json: str | Path, out_md: str | Path, title: str | None = None
) -> None:
    """Write the full results as JSON and the summary as a markdown table."""
    out_json, out_md = Path(out_json), Path(out_md)
    for p in (out_json, out_md):
        p.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(_jsonable(results), indent=1))
    out_md.write_text(format_markdown(results, title or "Segmentation evaluation"))


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    """Arguments shared with other evaluation entry points (e.g. learner.evaluate)."""
    parser.add_argument("--scenes", required=True, help="exported scenes directory (data.scene_io format)")
    parser.add_argument("--out", default=None, help="output prefix; writes PREFIX.json and PREFIX.md")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N scenes")
    parser.add_argument("--no-double-pick", action="store_true", help="skip the double-pick metrics")
    parser.add_argument(
        "--score-thresh", type=float, default=0.5, help="score threshold for UOIS/double-pick"
    )
    parser.add_argument("--gripper-radius", type=float, default=0.02, help="gripper disk radius, metres")
    parser.add_argument("--pick-samples", type=int, default=500, help="gripper disks sampled per scene")
    parser.add_argument("--seed", type=int, default=0)


def run_eval_cli(predict_fn: PredictFn, name: str, args: argparse.Namespace) -> dict[str, Any]:
    res = evaluate_segmenter(
        predict_fn,
        args.scenes,
        limit=args.limit,
        double_pick=not args.no_double_pick,
        score_thresh=args.score_thresh,
        gripper_radius_m=args.gripper_radius,
        n_pick_samples=args.pick_samples,
        seed=args.seed,
    )
    res["method"] = name
    prefix = Path(args.out) if args.out else Path(args.scenes) / f"eval_{name}"
    out_json, out_md = prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".md")
    write_report(res, out_json, out_md, title=f"{name} on {args.scenes}")
    print(format_markdown(res, f"{name} on {args.scenes}"))
    print(f"wrote {out_json} and {out_md}")
    return res


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from learner.evaluate.baselines import BASELINES, get_baseline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, choices=BASELINES)
    add_eval_args(parser)
    args = parser.parse_args(argv)
    return run_eval_cli(get_baseline(args.baseline), args.baseline, args)


if __name__ == "__main__":
    main()
