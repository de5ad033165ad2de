"""Deploy the learned segmenter: export to ONNX + model card, predict on frames, benchmark.

    python -m learner.deploy export RUN_DIR_OR_CKPT OUT_DIR [--size 240x320] [--torchscript]
    python -m learner.deploy predict --model OUT_DIR --rgb IMG.png --depth DEPTH.png \\
        --intrinsics K.json --out DIR
    python -m learner.deploy predict --model OUT_DIR --scenes SCENES_DIR --out DIR
    python -m learner.deploy predict ... --mode confidence --p 0.9 --samples 10   # safer grasp targets
    python -m learner.deploy bench --model OUT_DIR [--n 50]

`export` (learner/deploy/export.py) takes a run directory (its `model/segmenter.pt`, else
`checkpoints/last.pt`) or a .pt file and writes OUT_DIR/segmenter.onnx (network forward, fixed input
size, B = 1, opset 17, BatchNorm folded), OUT_DIR/segmenter_mc.onnx (MC dropout),
OUT_DIR/model_card.json (also embedded in the ONNX metadata) and, with --torchscript,
OUT_DIR/segmenter.ts. `predict` (learner/deploy/predict.py) and the Python runtime
(`learner.deploy.runtime`) need only numpy, onnxruntime and opencv; torch is imported only by
`export` and `bench` (learner/deploy/bench.py). Torch and ONNX models share one proposal pipeline
(`learner.proposals`). See docs/deploy.md.

Exit codes: 0 success, 2 bad input (missing model, unreadable or inconsistent files, bad options);
with several frames, the good ones are still written and every bad one is reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from learner.deploy import DeployError
from learner.deploy.bench import bench
from learner.deploy.export import DEFAULT_SIZE_HW, export, synthetic_frame
from learner.deploy.predict import cmd_predict, predict_frame
from learner.deploy.runtime import MC_ONNX_NAME, MODES, ONNX_NAME, SAMPLERS
from learner.proposals.config import ProposalConfig
from learner.proposals.segmenter import SamplerConfig

__all__ = ["main", "export", "bench", "predict_frame", "cmd_predict", "synthetic_frame", "DeployError"]

# export options -> ProposalConfig fields (None = not given: the default stays)
EXPORT_PROPOSAL_OPTIONS = ("max_hypotheses", "objectness_threshold", "nms_iou", "mask_threshold", "min_area",
                           "max_seeds", "depth_edge_m", "contested_overlap")


def _size(s: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 240x320, got {s!r}") from None
    return h, w


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m learner.deploy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d, s = ProposalConfig(), SamplerConfig()

    e = sub.add_parser("export", help="export a run directory / checkpoint to ONNX + model card")
    e.add_argument("src", help="run directory (model/segmenter.pt or checkpoints/last.pt) or a .pt file")
    e.add_argument("out", help="output directory")
    e.add_argument("--size", type=_size, default=None,
                   help="network input HxW (default: the resolution the model was trained at; "
                        f"{DEFAULT_SIZE_HW[0]}x{DEFAULT_SIZE_HW[1]} for checkpoints that do not record it)")
    e.add_argument("--torchscript", action="store_true", help="also write segmenter.ts (traced)")
    e.add_argument("--no-mc-dropout", action="store_true",
                   help=f"do not write {MC_ONNX_NAME} (the graph the distributional predict modes sample with)")
    g = e.add_argument_group("proposal parameters written to the card (defaults: learner/proposals/config.py)")
    g.add_argument("--max-hypotheses", type=int, help=f"default {d.max_hypotheses}")
    g.add_argument("--objectness-threshold", type=float, help=f"default {d.objectness_threshold}")
    g.add_argument("--nms-iou", type=float, help=f"default {d.nms_iou}")
    g.add_argument("--mask-threshold", type=float, help=f"default {d.mask_threshold}")
    g.add_argument("--min-area", type=int, help=f"default {d.min_area}")
    g.add_argument("--max-seeds", type=int, help="default 3 x max-hypotheses")
    g.add_argument("--depth-edge", type=float, dest="depth_edge_m",
                   help=f"cut masks along depth steps of at least this many metres (0: no cut; default {d.depth_edge_m})")
    g.add_argument("--contested", type=float, dest="contested_overlap",
                   help="remove the pixels two masks share when that is less than this share of the smaller one "
                        f"(0: off; default {d.contested_overlap})")

    p = sub.add_parser("predict", help="segment RGB-D frames with an exported model (no torch needed)")
    p.add_argument("--model", required=True, help="export directory or .onnx file")
    p.add_argument("--rgb", help="RGB image or directory of images")
    p.add_argument("--depth", help="depth: uint16 millimetre PNG or float metre .npy (file or directory)")
    p.add_argument("--intrinsics", help="JSON with fx, fy, cx, cy (file for all frames or directory STEM.json)")
    p.add_argument("--scenes", help="an exported scenes directory (rgb/, depth/, camera/) instead of the three above")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--sheet", metavar="PNG", help="also write one contact sheet: every frame's RGB beside its overlay")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", choices=MODES, default="mean",
                   help="mean: one forward pass (default); confidence: p-confidence masks (fewer double picks); "
                        "union: Union-NMS (high recall). The last two run --samples sampled segmentations per frame")
    p.add_argument("--p", type=float, default=0.9, help="confidence requirement in (0, 1] (--mode confidence)")
    p.add_argument("--samples", type=int, default=s.samples, help="samples per frame (--mode confidence/union)")
    p.add_argument("--sampler", choices=SAMPLERS, default=s.method,
                   help="tta: flips / rolls / zooms / shifts / noise of the frame; mc_dropout: channel dropout on "
                        "the head trunk (needs segmenter_mc.onnx, written by export); latent / tta_latent: draws "
                        "from a latent model's prior")
    p.add_argument("--dropout-rate", type=float, default=s.dropout_rate, help="MC-dropout channel drop rate")
    p.add_argument("--seed", type=int, default=s.seed, help="seed of the random draws")
    p.add_argument("--camera-pose", metavar="POSE.json",
                   help="world-from-camera 4x4 (world z up, metres): a JSON 4x4 list or an object with \"pose\" "
                        "(scene camera JSONs qualify), one file for all frames or a directory of STEM.json; the "
                        "support plane is then the one at the pose's height above the table top (--table-z)")
    p.add_argument("--table-z", type=float, default=0.0, help="table top height in the world frame, metres (default 0)")
    p.add_argument("--workspace", type=float, nargs=6, metavar=("X0", "X1", "Y0", "Y1", "Z0", "Z1"),
                   help="world-frame box (metres, needs --camera-pose): masks are cut to the points inside it")

    b = sub.add_parser("bench", help="latency of a 640x480 frame: onnxruntime vs torch, through the same pipeline")
    b.add_argument("--model", required=True)
    b.add_argument("--n", type=int, default=50)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--size", type=_size, default=(480, 640), help="synthetic frame HxW (default 480x640)")
    b.add_argument("--scenes", help="use frames of an exported scenes directory instead of synthetic ones")
    b.add_argument("--checkpoint", help="torch weights (default: the card's training.source)")
    b.add_argument("--no-torch", action="store_true")
    b.add_argument("--no-stress", action="store_true", help="skip the objectness_threshold=0 (max seeds) run")
    b.add_argument("--spin", action="store_true", help="let onnxruntime worker threads busy-wait (its default)")
    b.add_argument("--json", action="store_true", help="print JSON only")
    return ap


def _cmd_export(args: argparse.Namespace) -> int:
    props = {k: getattr(args, k) for k in EXPORT_PROPOSAL_OPTIONS}
    card = export(args.src, args.out, args.size, args.torchscript, props, mc_dropout=not args.no_mc_dropout)
    print(f"exported {card['training']['source']} -> {Path(args.out) / ONNX_NAME} "
          f"({card['input']['width']}x{card['input']['height']}, model version {card['model']['version']}, "
          f"max |onnx - torch| {max(card['export']['onnx_vs_torch_max_abs_diff'].values(), default=0):.1e})")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    r = bench(args.model, args.n, args.warmup, args.threads, args.size, args.checkpoint,
              not args.no_torch, not args.no_stress, args.scenes, args.spin)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"frame {r['frame']} -> net {r['net']}, {r['threads']} threads, n={r['n']}, load avg {r['load_avg']}")
    for k, v in r.items():
        if isinstance(v, dict):
            print(f"{k:28s} p50 {v['p50_ms']:7.1f} ms  p95 {v['p95_ms']:7.1f} ms  "
                  f"mean {v['mean_ms']:7.1f} ms  instances {v['instances']:.1f}")
    if "torch_weights" in r:
        print(f"torch weights: {r['torch_weights']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"export": _cmd_export, "predict": cmd_predict, "bench": _cmd_bench}
    try:
        return commands[args.cmd](args)
    except DeployError as ex:
        print(f"error: {ex}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
