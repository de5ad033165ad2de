"""Evaluate a trained segmenter on exported held-out scenes.

    python -m learner.evaluate --model MODEL --scenes DIR [--out PREFIX] [--limit N]

MODEL: a trainer checkpoint (`checkpoints/last.pt`), a deployable model (`model/segmenter.pt`), a run
directory (its deployable model is used) or an ONNX export directory (`learner.deploy export`; run
with onnxruntime, its card's proposal parameters unless overridden). Either way the frames go through
the one proposal pipeline (`learner.proposals`). Writes PREFIX.json and PREFIX.md with COCO mask
AP/AP50/AP75/AP30/AR100, UOIS overlap/boundary P/R/F, the share of objects with F >= 0.75, the
double-pick rate and the pickable-area fraction (learner/evaluate/harness.py).

Proposal ablations (`learner/proposals/config.py`): `--table-gate 0` (no table gate),
`--no-largest-component`, `--score objectness_x_mask` (the first exports' score),
`--objectness-threshold 0.5` (the first exports' seed threshold), `--depth-edge 0`, `--contested 0`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from learner.evaluate.harness import add_eval_args, run_eval_cli
from learner.proposals.config import add_proposal_args, from_args


def _segmenter(model: str, args: argparse.Namespace, parser: argparse.ArgumentParser):
    """(Segmenter, default method name) for --model: an ONNX export directory or a torch checkpoint.
    Proposal options given on the command line override the card's (exports) or the defaults."""
    from learner.deploy.runtime import CARD_NAME, Segmenter

    if (Path(model) / CARD_NAME).is_file() or model.endswith(".onnx"):
        seg = Segmenter.load(model, threads=2)
        seg.proposals = from_args(args, seg.proposals, parser)
        return seg, "oracle_onnx" if seg.card.get("training", {}).get("oracle") else "self-supervised_onnx"
    import torch

    from learner.model.backend import torch_segmenter
    from learner.model.checkpoint import load_model, trained_size

    torch.set_num_threads(2)
    net, ckpt = load_model(model)  # run at the resolution it was trained at, as its export would
    return torch_segmenter(net, from_args(args), net_size=trained_size(ckpt)), ("oracle_supervised_on_sim_GT" if ckpt.get("oracle") else "self-supervised")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint file, run directory or ONNX export directory")
    ap.add_argument("--name", default=None, help="method name in the report (default: from the checkpoint)")
    add_proposal_args(ap)
    add_eval_args(ap)
    a = ap.parse_args(argv)
    from learner.model.checkpoint import CheckpointError
    from learner.proposals.segmenter import ModelError

    try:
        seg, default_name = _segmenter(a.model, a, ap)
    except (CheckpointError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = a.name or default_name
    run_eval_cli(seg.predict, name.replace(" ", "_").replace("(", "").replace(")", ""), a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
