"""Evaluate a trained segmenter on exported held-out scenes.

    python -m learner.evaluate --model CKPT_OR_RUN_DIR --scenes DIR [--out PREFIX] [--limit N]

CKPT_OR_RUN_DIR: a trainer checkpoint (`checkpoints/last.pt`), a deployable model
(`model/segmenter.pt`) or a run directory (its deployable model is used). Writes PREFIX.json and
PREFIX.md with COCO mask AP/AP50/AP75/AP30/AR100, UOIS overlap/boundary P/R/F, the share of objects
with F >= 0.75, the double-pick rate and the pickable-area fraction (learner/eval_harness.py).

Proposal clean-up ablations (learner/hypotheses.py): `--table-gate -1` (no table gate),
`--no-largest-component`, `--score objectness_x_mask` (the first exports' score),
`--objectness-threshold 0.5` (the first exports' seed threshold).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from learner.eval_harness import add_eval_args, run_eval_cli
from learner.hypotheses import OBJECTNESS_THRESHOLD, SCORES, propose
from learner.mask_cleaning import CONTESTED_OVERLAP, DEPTH_EDGE_M, TABLE_GATE_M, contested_option
from learner.model import PointSegmenter, SegmenterConfig, build_model


def load_model(path: str | Path) -> tuple[PointSegmenter, dict]:
    """Load a segmenter from a checkpoint file or a run directory (weights_only, CPU, eval mode)."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "model" / "segmenter.pt", p / "checkpoints" / "last.pt", p / "segmenter.pt"):
            if cand.exists():
                p = cand
                break
        else:
            raise FileNotFoundError(f"{path}: no model/segmenter.pt or checkpoints/last.pt in this directory")
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file
        raise ValueError(f"{p}: not a segmenter checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{p}: not a segmenter checkpoint (needs 'model' and 'model_config')")
    model = build_model(SegmenterConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint file or run directory")
    ap.add_argument("--name", default=None, help="method name in the report (default: from the checkpoint)")
    ap.add_argument("--table-gate", type=float, default=TABLE_GATE_M,
                    help="metres above the fitted table plane still counted as table and cut from masks "
                         "(negative: off)")
    ap.add_argument("--depth-edge", type=float, default=DEPTH_EDGE_M,
                    help="cut masks along depth steps of at least this many metres (negative: off)")
    ap.add_argument("--contested", type=contested_option, default=CONTESTED_OVERLAP,
                    help="remove pixels shared by two proposals overlapping by less than this share of the "
                         "smaller one (learner.mask_cleaning.release_contested; 0 or negative: off)")
    ap.add_argument("--no-largest-component", action="store_true", help="keep every component of a mask")
    ap.add_argument("--score", default=SCORES[0], choices=list(SCORES), help="proposal score")
    ap.add_argument("--objectness-threshold", type=float, default=OBJECTNESS_THRESHOLD,
                    help="seed threshold on the objectness probability")
    add_eval_args(ap)
    a = ap.parse_args(argv)
    try:
        model, ckpt = load_model(a.model)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    gate = None if a.table_gate < 0 else a.table_gate
    edge = None if a.depth_edge < 0 else a.depth_edge

    def predict(rgb, depth, K):
        with torch.no_grad():
            return propose(model, rgb, depth, K, table_gate_m=gate, largest_component=not a.no_largest_component,
                           score=a.score, objectness_threshold=a.objectness_threshold, depth_edge_m=edge,
                           contested_overlap=a.contested)

    name = a.name or ("oracle (supervised on sim GT)" if ckpt.get("oracle") else "self-supervised")
    run_eval_cli(predict, name.replace(" ", "_").replace("(", "").replace(")", ""), a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
