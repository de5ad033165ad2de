"""Deploy the learned segmenter: export to ONNX + model card, predict on frames, benchmark.

    python -m learner.deploy export RUN_DIR_OR_CKPT OUT_DIR [--size 240x320] [--torchscript]
    python -m learner.deploy predict --model OUT_DIR --rgb IMG.png --depth DEPTH.png \\
        --intrinsics K.json --out DIR
    python -m learner.deploy predict --model OUT_DIR --scenes SCENES_DIR --out DIR
    python -m learner.deploy predict ... --mode confidence --p 0.9 --samples 10   # safer grasp targets
    python -m learner.deploy bench --model OUT_DIR [--n 50]

`export` takes a run directory (its `model/segmenter.pt`, else `checkpoints/last.pt`) or a .pt
file and writes OUT_DIR/segmenter.onnx (network forward, fixed input size, B = 1, opset 17,
BatchNorm folded), OUT_DIR/model_card.json (also embedded in the ONNX metadata) and, with
--torchscript, OUT_DIR/segmenter.ts. `predict` and the Python runtime (`learner.segmenter_runtime`)
need only numpy, onnxruntime and opencv; torch is imported only by `export` and `bench`.
See docs/deploy.md.

Exit codes: 0 success, 2 bad input (missing model, unreadable or inconsistent files); with several
frames, the good ones are still written and every bad one is reported.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from learner.mask_cleaning import PROPOSAL_SCORES, check_contested_overlap
from learner.segmenter_runtime import (
    CARD_METADATA_KEY,
    CARD_NAME,
    DEFAULT_DROPOUT_RATE,
    INPUT_NAME,
    LATENT_OUTPUT,
    MC_INPUT_NAME,
    MC_ONNX_NAME,
    MODES,
    ONNX_NAME,
    OUTPUT_NAMES,
    SAMPLERS,
    InputError,
    Instances,
    ModelError,
    Segmenter,
)

TS_NAME = "segmenter.ts"
DEFAULT_SIZE_HW = (240, 320)  # the training resolution (sim camera 320x240)
OPSET = 17
CARD_FORMAT = "interactive-seg/segmenter-card"
CARD_FORMAT_VERSION = 2  # 2: input gained the plane_height channel
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DeployError(Exception):
    """A user-facing problem (message names the file); the CLI prints it and exits with 2."""


# ==============================================================================================
# export
# ==============================================================================================


def resolve_checkpoint(path: str | Path) -> tuple[Path, str]:
    """A run directory, a checkpoint directory or a .pt file -> (checkpoint path, kind)."""
    p = Path(path)
    if p.is_file():
        return p, "file"
    if p.is_dir():
        candidates = [
            (p / "model" / "segmenter.pt", "run_model"),
            (p / "checkpoints" / "last.pt", "trainer_checkpoint"),
            (p / "segmenter.pt", "run_model"),
            (p / "last.pt", "trainer_checkpoint"),
        ]
        for c, kind in candidates:
            if c.is_file():
                return c, kind
        tried = ", ".join(str(c) for c, _ in candidates)
        raise DeployError(f"no model in {p} (looked for {tried})")
    raise DeployError(f"no such run directory or checkpoint: {p}")


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise DeployError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise DeployError(f"{path} is not a segmenter checkpoint (needs 'model' and 'model_config'; has {keys})")
    return ckpt


def build_model_from_checkpoint(ckpt: dict[str, Any], path: Path | str = "checkpoint"):
    from learner.model import build_model

    try:
        model = build_model(dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        raise DeployError(f"{path}: model_config and weights do not fit: {e}") from None
    return model.eval()


def _git_head() -> str:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
        return r.stdout.strip() if r.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _parse_metrics(m: Any) -> dict[str, Any]:
    if m is None:
        return {}
    if isinstance(m, str):
        try:
            m = json.loads(m) if m.strip() else {}
        except json.JSONDecodeError:
            return {"raw": m}
    return dict(m) if isinstance(m, dict) else {"raw": str(m)}


def _default_proposal_params() -> dict[str, Any]:
    """Read the defaults from learner.hypotheses so the card cannot drift from the torch path.
    max_seeds None means 3 x max_hypotheses (as in propose_from_output)."""
    import inspect

    from learner.hypotheses import propose, propose_from_output

    sp = inspect.signature(propose).parameters
    so = inspect.signature(propose_from_output).parameters
    p = {k: sp[k].default for k in ("max_hypotheses", "objectness_threshold", "nms_iou", "mask_threshold",
                                    "table_gate_m", "largest_component", "score", "depth_edge_m",
                                    "contested_overlap")}
    p["min_area"] = so["min_area"].default
    p["max_seeds"] = so["max_seeds"].default
    return p


def _check_proposal_params(pp: dict[str, Any]) -> None:
    for k in ("objectness_threshold", "nms_iou", "mask_threshold"):
        if not 0.0 <= float(pp[k]) <= 1.0:
            raise DeployError(f"{k} must lie in [0, 1], got {pp[k]}")
    if int(pp["max_hypotheses"]) < 1 or int(pp["min_area"]) < 0:
        raise DeployError("max_hypotheses must be >= 1 and min_area >= 0")
    if pp["max_seeds"] is not None and int(pp["max_seeds"]) < 1:
        raise DeployError(f"max_seeds must be >= 1, got {pp['max_seeds']}")
    if pp["table_gate_m"] is not None and not 0.0 <= float(pp["table_gate_m"]) <= 0.1:
        raise DeployError(f"table_gate_m must be null or in [0, 0.1] metres, got {pp['table_gate_m']}")
    if pp["depth_edge_m"] is not None and not 0.0 < float(pp["depth_edge_m"]) <= 0.5:
        raise DeployError(f"depth_edge_m must be null or in (0, 0.5] metres, got {pp['depth_edge_m']}")
    if pp["contested_overlap"] is not None:
        try:
            check_contested_overlap(pp["contested_overlap"])
        except ValueError as e:
            raise DeployError(f"{e} (or null: off)") from None
    if pp["score"] not in PROPOSAL_SCORES:
        raise DeployError(f"score must be one of {PROPOSAL_SCORES}, got {pp['score']!r}")


def _synthetic_frame(H: int, W: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A plausible tabletop RGB-D frame (table plane + boxes) for checks and benchmarks."""
    rng = np.random.default_rng(seed)
    f = 0.9 * W
    K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]], np.float64)
    v = np.arange(H, dtype=np.float32)[:, None]
    depth = np.broadcast_to(0.9 - 0.25 * (v / H), (H, W)).astype(np.float32).copy()
    rgb = np.empty((H, W, 3), np.uint8)
    rgb[:] = (150, 130, 110)
    for _ in range(6):
        h, w = int(rng.integers(H // 10, H // 4)), int(rng.integers(W // 12, W // 5))
        y, x = int(rng.integers(H // 4, H - h)), int(rng.integers(0, W - w))
        depth[y : y + h, x : x + w] -= rng.uniform(0.03, 0.12)
        rgb[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    rgb = np.clip(rgb.astype(np.int16) + rng.integers(-8, 9, rgb.shape), 0, 255).astype(np.uint8)
    depth += rng.normal(0, 0.002, depth.shape).astype(np.float32)
    depth[rng.random(depth.shape) < 0.02] = 0.0
    return rgb, depth, K


MC_MODULE = "trunk"  # the module whose output MC dropout drops channels of (learner.sampling's default)


def _graph_outputs(model: Any) -> tuple[str, ...]:
    """Output names of the exported graph: the three heads, plus the prior log-variance of a latent model."""
    return OUTPUT_NAMES + ((LATENT_OUTPUT,) if int(getattr(model.config, "latent_dim", 0)) > 0 else ())


def _heads_only(model: Any, names: tuple[str, ...]) -> Any:
    """The model with a tuple output in `names` order (the forward dict also holds training-only entries)."""
    import torch

    class HeadsOnly(torch.nn.Module):
        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, *inp: torch.Tensor):
            out = self.net(*inp)
            return tuple(out[k] for k in names)

    return HeadsOnly(model).eval()


def _export_mc_graph(model: Any, x: Any, out: Path, check: bool) -> dict[str, Any]:
    """Write OUT/segmenter_mc.onnx: the network with `model.<MC_MODULE>`'s output multiplied by a
    per-channel input `trunk_scale` (1, C, 1, 1). Feeding Bernoulli(1 - r) / (1 - r) factors is
    F.dropout2d(rate r) there (MC dropout, learner.sampling); ones give the plain network. Built with
    a forward hook while tracing, so the model code is not touched."""
    import warnings

    import torch

    target = getattr(model, MC_MODULE, None)
    if not isinstance(target, torch.nn.Module):
        raise DeployError(f"model has no {MC_MODULE!r} module for the MC-dropout graph")
    shape: dict[str, tuple[int, ...]] = {}

    def record(_m: Any, _i: Any, o: Any) -> None:  # returns None: the output is left alone
        shape["out"] = tuple(o.shape)

    h = target.register_forward_hook(record)
    with torch.no_grad():
        model(x)
    h.remove()
    C = int(shape["out"][1])

    class ChannelScaled(torch.nn.Module):
        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, inp: torch.Tensor, scale: torch.Tensor):
            handle = getattr(self.net, MC_MODULE).register_forward_hook(lambda _m, _i, o: o * scale)
            try:
                return self.net(inp)
            finally:
                handle.remove()

    wrapper = _heads_only(ChannelScaled(model).eval(), OUTPUT_NAMES)
    path, tmp = out / MC_ONNX_NAME, out / (MC_ONNX_NAME + ".tmp")
    ones = torch.ones(1, C, 1, 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, (x, ones), str(tmp), input_names=[INPUT_NAME, MC_INPUT_NAME],
                output_names=list(OUTPUT_NAMES), opset_version=OPSET, do_constant_folding=True, dynamo=False,
            )
    except Exception as e:  # noqa: BLE001
        tmp.unlink(missing_ok=True)
        raise DeployError(f"ONNX export of the MC-dropout graph failed: {e}") from None
    diff = None
    if check:
        import onnxruntime as ort

        gen = torch.Generator().manual_seed(0)
        scale = (torch.rand(1, C, 1, 1, generator=gen) >= 0.3).float() / 0.7
        with torch.no_grad():
            ref = wrapper(x, scale)
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy(), MC_INPUT_NAME: scale.numpy()})
        diff = max(float(np.abs(g - r.numpy()).max()) for r, g in zip(ref, got, strict=True))
        if diff > 1e-3:
            tmp.unlink(missing_ok=True)
            raise DeployError(f"MC-dropout ONNX graph and torch disagree after export (max abs diff {diff})")
    os.replace(tmp, path)
    return {
        "module": MC_MODULE,
        "input": MC_INPUT_NAME,
        "shape": [1, C, 1, 1],
        "default_rate": DEFAULT_DROPOUT_RATE,
        "meaning": f"{MC_ONNX_NAME} multiplies the output of the model's {MC_MODULE!r} module by this "
        "per-channel factor; MC dropout feeds Bernoulli(1 - rate) / (1 - rate) draws (F.dropout2d), ones "
        "give the plain network",
        "onnx_vs_torch_max_abs_diff": diff,
    }


def _latent_card(model: Any, h: int, w: int) -> dict[str, Any] | None:
    """Card entry of a latent model (None otherwise): what the runtime's "latent" sampler needs."""
    Z = int(getattr(model.config, "latent_dim", 0))
    if Z <= 0:
        return None
    W = model.latent_proj.weight.detach().cpu().numpy().astype(np.float32)
    return {
        "dim": Z,
        "output": LATENT_OUTPUT,
        "output_shape": [1, Z, int(h), int(w)],
        "weight": [[float(v) for v in row] for row in W],
        "meaning": "Latent-MaskRCNN per-query code z ~ N(mu(p), exp(logvar(p))) of the prior at query p. The "
        "graph's kernels are the prior-mean kernels (mu folded in); a prior sample decodes with kernel "
        f"parameters kernels(p) + weight @ (exp(0.5 {LATENT_OUTPUT}(p)) * eps), eps ~ N(0, I), weight "
        "(num_kernel_params, dim), both maps sampled bilinearly at p like the kernels",
    }


def export(
    src: str | Path,
    out_dir: str | Path,
    size_hw: tuple[int, int] = DEFAULT_SIZE_HW,
    torchscript: bool = False,
    proposals: dict[str, Any] | None = None,
    check: bool = True,
    mc_dropout: bool = True,
) -> dict[str, Any]:
    """Export a run directory or checkpoint to OUT_DIR; returns the model card. mc_dropout: also
    write the MC-dropout graph (segmenter_mc.onnx) used by the distributional predict modes."""
    import torch

    from learner import preprocess

    H, W = int(size_hw[0]), int(size_hw[1])
    if H < 16 or W < 16:
        raise DeployError(f"input size must be at least 16x16, got {H}x{W}")
    ckpt_path, kind = resolve_checkpoint(src)
    ckpt = load_checkpoint(ckpt_path)
    model = build_model_from_checkpoint(ckpt, ckpt_path)
    cfg = model.config
    pp = _default_proposal_params()
    for k, v in (proposals or {}).items():
        if k not in pp:
            raise DeployError(f"unknown proposal parameter {k!r}; expected one of {sorted(pp)}")
        if k in ("depth_edge_m", "contested_overlap") and v is not None and float(v) <= 0:
            pp[k] = None  # 0 or negative: no depth-edge cut / contested-pixel rule (None means "the default" here)
        elif v is not None:
            pp[k] = v
    _check_proposal_params(pp)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / ONNX_NAME
    tmp_onnx = out / (ONNX_NAME + ".tmp")

    rgb, depth, K = _synthetic_frame(H, W)
    x = preprocess.make_input(rgb, depth, K)
    with torch.no_grad():
        ref = model(x)
    h, w = ref["objectness"].shape[-2:]
    names = _graph_outputs(model)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _heads_only(model, names), (x,), str(tmp_onnx), input_names=[INPUT_NAME], output_names=list(names),
                opset_version=OPSET, do_constant_folding=True, dynamo=False,
            )
    except Exception as e:  # noqa: BLE001
        tmp_onnx.unlink(missing_ok=True)
        raise DeployError(f"ONNX export failed: {e}") from None

    diffs: dict[str, float] = {}
    if check:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        sess = ort.InferenceSession(str(tmp_onnx), sess_options=so, providers=["CPUExecutionProvider"])
        got = sess.run(list(names), {INPUT_NAME: x.numpy()})
        diffs = {k: float(np.abs(g - ref[k].numpy()).max()) for k, g in zip(names, got, strict=True)}
        if max(diffs.values()) > 1e-3:
            tmp_onnx.unlink(missing_ok=True)
            raise DeployError(f"ONNX and torch outputs disagree after export (max abs diff {diffs})")

    mc_info = None
    if mc_dropout:
        mc_info = _export_mc_graph(model, x, out, check)

    ts_name = None
    if torchscript:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, (x,), strict=False)
            traced.save(str(out / (TS_NAME + ".tmp")))
        os.replace(out / (TS_NAME + ".tmp"), out / TS_NAME)
        ts_name = TS_NAME

    metrics = _parse_metrics(ckpt.get("metrics"))
    mv = ckpt.get("model_version")
    train_steps = ckpt.get("train_steps", ckpt.get("step"))
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "format_version": CARD_FORMAT_VERSION,
        "files": {"onnx": ONNX_NAME, "torchscript": ts_name, "onnx_mc_dropout": MC_ONNX_NAME if mc_info else None},
        "input": {
            "name": INPUT_NAME,
            "shape": [1, int(cfg.in_channels), H, W],
            "height": H,
            "width": W,
            "dtype": "float32",
            "layout": "NCHW",
            "channels": ["r", "g", "b", "x", "y", "z", "valid", "plane_height"],
            "rgb": {
                "scale": "1/255 (uint8 -> [0,1]), then (x - mean) / std",
                "mean": list(preprocess.RGB_MEAN),
                "std": list(preprocess.RGB_STD),
            },
            "xyz": {
                "frame": "camera, OpenCV axes (x right, y down, z forward), metres",
                "deprojection": "X = (u - cx) Z / fx, Y = (v - cy) Z / fy, Z = depth",
                "centre": "per-image lower median of the valid points (per axis)",
                "scale_m": float(preprocess.XYZ_SCALE_M),
                "missing": "XYZ = 0 where depth is missing",
            },
            "valid": "1 where depth was measured (> 0, finite), else 0",
            "plane_height": {
                "meaning": "signed distance (metres) of each pixel's point to the dominant plane found by "
                "seeded RANSAC on the depth (learner/table_plane.py), positive towards the camera; "
                "clipped to [min_m, max_m], divided by scale_m; 0 where depth is missing",
                "scale_m": float(preprocess.HEIGHT_SCALE_M),
                "min_m": float(preprocess.HEIGHT_MIN_M),
                "max_m": float(preprocess.HEIGHT_MAX_M),
            },
            "depth_units": "metres internally; the runtime accepts float metres or uint16 millimetres "
            "(0 / NaN = missing)",
            "pixel_convention": "(u, v) = (column, row), origin at the centre of the top-left pixel",
            "resize": "frames of another size are resized to height x width: RGB area-averaged when "
            "shrinking, bilinear when enlarging; depth nearest-exact; fx' = sx fx, "
            "cx' = (cx + 0.5) sx - 0.5 (same for y); masks resized back with nearest-exact",
        },
        "outputs": {
            "objectness": [1, 1, int(h), int(w)],
            "features": [1, int(cfg.embed_dim), int(h), int(w)],
            "kernels": [1, int(cfg.num_kernel_params), int(h), int(w)],
            "stride": H / int(h),
        },
        "dynamic_head": {
            "embed_dim": int(cfg.embed_dim),
            "dyn_hidden": int(cfg.dyn_hidden),
            "coord_scale": float(cfg.coord_scale),
            "num_kernel_params": int(cfg.num_kernel_params),
            "kernel_layout": "w1 (dyn_hidden, embed_dim + 2) row-major | b1 (dyn_hidden) | w2 (dyn_hidden) | b2 (1)",
            "mlp_input": "[features(x), (u_x - u_p) / coord_scale, (v_x - v_p) / coord_scale], input pixels, "
            "x at stride-4 cell centres",
            "kernel_sampling": "bilinear at the query point (align_corners=False, border)",
        },
        "proposals": {
            **{k: pp[k] for k in ("max_hypotheses", "max_seeds", "objectness_threshold", "nms_iou",
                                  "mask_threshold", "min_area", "table_gate_m", "depth_edge_m", "largest_component",
                                  "score", "contested_overlap")},
            "max_seeds_default": "null = 3 x max_hypotheses",
            "seed_nms_kernel": 3,
            "table_gate": "pixels with depth whose height above the fitted plane is <= table_gate_m metres are "
            "removed from every mask (null: off); then, if largest_component, the mask is cut along depth "
            "steps: pixels with a 4-neighbour nearer by depth_edge_m metres or more (missing depth first "
            "filled with the farthest valid depth within 2 pixels; null: no cut), and only its largest "
            "4-connected component is kept, plus the cut pixels that are not behind it",
            "contested": "after the NMS, two kept masks sharing pixels, fewer than contested_overlap x the smaller "
            "one's area, both lose the shared pixels (decided on the masks before any removal); masks left with "
            "fewer than min_area pixels are dropped; scores unchanged (null: off)",
            "score_description": "mask: mean mask probability in the mask; objectness_x_mask: that times the "
            "mean objectness probability in the mask",
        },
        "mc_dropout": mc_info,
        "latent": _latent_card(model, h, w),
        "model": {
            "version": None if mv is None else int(mv),
            "config": cfg.to_dict(),
            "parameters": int(model.num_parameters()),
        },
        "training": {
            "interactions": None if ckpt.get("interactions") is None else int(ckpt["interactions"]),
            "train_steps": None if train_steps is None else int(train_steps),
            "oracle": bool(ckpt.get("oracle", False)),
            "source": str(ckpt_path.resolve()),
            "source_kind": kind,
        },
        "metrics": metrics,
        "export": {
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "code_version": _git_head(),
            "torch_version": torch.__version__,
            "opset": OPSET,
            "onnx_vs_torch_max_abs_diff": diffs,
        },
    }
    if "model_version" in metrics and mv is not None:
        card["training"]["metrics_model_version"] = metrics["model_version"]

    import onnx

    m = onnx.load(str(tmp_onnx))
    del m.metadata_props[:]
    prop = m.metadata_props.add()
    prop.key, prop.value = CARD_METADATA_KEY, json.dumps(card)
    m.doc_string = "interactive-seg point-conditioned segmenter; see model_card"
    onnx.save(m, str(tmp_onnx))
    os.replace(tmp_onnx, onnx_path)
    tmp_card = out / (CARD_NAME + ".tmp")
    tmp_card.write_text(json.dumps(card, indent=1))
    os.replace(tmp_card, out / CARD_NAME)
    return card


# ==============================================================================================
# predict (torch-free)
# ==============================================================================================


def read_intrinsics(path: Path) -> tuple[np.ndarray, tuple[int, int] | None]:
    """JSON with fx, fy, cx, cy (optional width, height; scene_io camera JSONs qualify) or "K" 3x3
    -> (K, (W, H) or None)."""
    if not path.is_file():
        raise DeployError(f"missing intrinsics file: {path}")
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DeployError(f"malformed intrinsics JSON {path}: {e}") from None
    if not isinstance(d, dict):
        raise DeployError(f"malformed intrinsics JSON {path}: expected an object with fx, fy, cx, cy")
    try:
        if all(k in d for k in ("fx", "fy", "cx", "cy")):
            K = np.array([[float(d["fx"]), 0.0, float(d["cx"])], [0.0, float(d["fy"]), float(d["cy"])], [0, 0, 1]])
        elif "K" in d:
            K = np.asarray(d["K"], dtype=np.float64).reshape(3, 3)
        else:
            missing = [k for k in ("fx", "fy", "cx", "cy") if k not in d]
            raise DeployError(f"intrinsics {path} lack {', '.join(missing)} (need fx, fy, cx, cy or K)")
        size = None
        if "width" in d or "height" in d:
            size = (int(d["width"]), int(d["height"]))
    except (TypeError, ValueError, KeyError) as e:
        raise DeployError(f"malformed intrinsics {path}: {e}") from None
    if not np.all(np.isfinite(K)):
        raise DeployError(f"intrinsics {path} contain NaN or inf")
    return K, size


def read_rgb(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DeployError(f"missing rgb file: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DeployError(f"corrupt or unreadable rgb image: {path}")
    if img.dtype != np.uint8:
        raise DeployError(f"rgb image must be 8-bit, got {img.dtype}: {path}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif img.shape[2] != 3:
        raise DeployError(f"rgb image must have 3 channels, got {img.shape}: {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_depth(path: Path) -> np.ndarray:
    """uint16 PNG millimetres or .npy (float metres; uint16 read as millimetres)."""
    if not path.is_file():
        raise DeployError(f"missing depth file: {path}")
    if path.suffix.lower() == ".npy":
        try:
            d = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DeployError(f"corrupt or unreadable depth array {path}: {e}") from None
        return d
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None:
        raise DeployError(f"corrupt or unreadable depth image: {path}")
    if d.ndim != 2 or d.dtype != np.uint16:
        desc = f"{d.dtype} with {1 if d.ndim == 2 else d.shape[2]} channel(s)"
        raise DeployError(f"depth PNG must be single-channel uint16 millimetres, got {desc}: {path}")
    return d


def _list_frames(d: Path, exts: tuple[str, ...], what: str) -> dict[str, Path]:
    if not d.is_dir():
        raise DeployError(f"no such {what} directory: {d}")
    out: dict[str, Path] = {}
    for p in sorted(d.iterdir()):
        if p.is_file() and p.suffix.lower() in exts:
            if p.stem in out:
                raise DeployError(f"two {what} files share the stem {p.stem!r}: {out[p.stem]} and {p}")
            out[p.stem] = p
    return out


def collect_frames(rgb: Path, depth: Path, intr: Path) -> list[tuple[str, Path, Path, Path]]:
    """Pair rgb/depth/intrinsics by file stem -> [(stem, rgb, depth, intrinsics)]."""
    if rgb.is_dir() != depth.is_dir():
        raise DeployError(f"--rgb and --depth must both be files or both be directories ({rgb}, {depth})")
    if not rgb.is_dir():
        for p, what in ((rgb, "rgb"), (depth, "depth")):
            if not p.is_file():
                raise DeployError(f"missing {what} file: {p}")
        if intr.is_dir():
            return [(rgb.stem, rgb, depth, intr / f"{rgb.stem}.json")]
        return [(rgb.stem, rgb, depth, intr)]
    rgbs = _list_frames(rgb, IMAGE_EXTS, "rgb")
    depths = _list_frames(depth, (".png", ".npy"), "depth")
    if not rgbs:
        raise DeployError(f"no rgb images in {rgb}")
    only_rgb = sorted(set(rgbs) - set(depths))
    only_depth = sorted(set(depths) - set(rgbs))
    if only_rgb or only_depth:
        msg = []
        if only_rgb:
            msg.append("rgb without depth: " + ", ".join(str(rgbs[s]) for s in only_rgb))
        if only_depth:
            msg.append("depth without rgb: " + ", ".join(str(depths[s]) for s in only_depth))
        raise DeployError("unpaired frames (rgb and depth are paired by file stem); " + "; ".join(msg))
    return [(s, rgbs[s], depths[s], intr / f"{s}.json" if intr.is_dir() else intr) for s in sorted(rgbs)]


_PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
     [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40],
     [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128]],
    np.uint8,
)


def overlay_image(rgb: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB (H,W,3) with each instance tinted and outlined, ids written at the mask centres."""
    out = rgb.astype(np.float32)
    ids = [int(i) for i in np.unique(label) if i != 0]
    for i in ids:
        m = label == i
        out[m] = (1 - alpha) * out[m] + alpha * _PALETTE[(i - 1) % len(_PALETTE)]
    out = out.astype(np.uint8)
    for i in ids:
        m = (label == i).astype(np.uint8)
        col = tuple(int(c) for c in _PALETTE[(i - 1) % len(_PALETTE)])
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, col, 1)
        vv, uu = np.nonzero(m)
        cv2.putText(out, str(i), (int(uu.mean()), int(vv.mean())), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def _encode_png(img: np.ndarray, what: str) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise DeployError(f"could not encode {what}")
    return buf.tobytes()


def _write_all(files: dict[Path, bytes]) -> None:
    """Write every file or none: temporaries first, then renames; cleaned up on failure."""
    tmps: list[tuple[Path, Path]] = []
    try:
        for p, data in files.items():
            t = p.with_name(p.name + ".tmp")
            t.write_bytes(data)
            tmps.append((t, p))
        for t, p in tmps:
            os.replace(t, p)
    except OSError as e:
        for t, p in tmps:
            t.unlink(missing_ok=True)
            p.unlink(missing_ok=True)
        raise DeployError(f"could not write outputs: {e}") from None


def predict_frame(
    seg: Segmenter, stem: str, rgb_path: Path, depth_path: Path, intr_path: Path, out_dir: Path,
    mode: str = "mean", p: float = 0.9, samples: int = 10, seed: int = 0, sampler: str = "tta",
    dropout_rate: float = DEFAULT_DROPOUT_RATE,
) -> dict[str, Any]:
    """Read, check, predict and write one frame's outputs (all or nothing); returns its JSON.

    mode "mean" is the plain prediction; "confidence" / "union" are the distributional modes of
    `Segmenter.predict_distributional` (p, samples, seed, sampler, dropout_rate as there)."""
    rgb = read_rgb(rgb_path)
    depth = read_depth(depth_path)
    K, size = read_intrinsics(intr_path)
    H, W = rgb.shape[:2]
    if size is not None and size != (W, H):
        raise DeployError(
            f"intrinsics {intr_path} are for {size[0]}x{size[1]} but {rgb_path} is {W}x{H}; "
            "use the intrinsics of this resolution"
        )
    t0 = time.perf_counter()
    try:
        if mode == "mean":
            inst: Instances = seg.predict(rgb, depth, K)
        else:
            inst = seg.predict_distributional(rgb, depth, K, mode=mode, p=p, samples=samples, seed=seed,
                                              sampler=sampler, dropout_rate=dropout_rate)
    except InputError as e:
        raise DeployError(f"{rgb_path} / {depth_path} / {intr_path}: {e}") from None
    dt = time.perf_counter() - t0
    label = inst.label_image()
    rec = {
        "rgb": str(rgb_path),
        "depth": str(depth_path),
        "intrinsics": str(intr_path),
        "width": W,
        "height": H,
        "model_version": seg.model_version,
        "num_seeds": inst.info.get("num_seeds"),
        "latency_ms": round(1000 * dt, 2),
        "bbox_convention": "[x0, y0, x1, y1] half-open pixel bounds",
        "centroid_frame": "camera, OpenCV axes, metres (null when the mask has no valid depth)",
        "instances": inst.to_records(),
    }
    if mode != "mean":  # the mean-mode record stays exactly as before
        rec["distributional"] = {k: inst.info.get(k) for k in ("mode", "p", "samples", "required_agreement", "seed",
                                                                "sampler", "dropout_rate")}
        rec["seed_uv_meaning"] = "most interior pixel of the mask (distance-transform peak)"
    files = {
        out_dir / f"{stem}_label.png": _encode_png(label, "label image"),
        out_dir / f"{stem}_overlay.png": _encode_png(cv2.cvtColor(overlay_image(rgb, label), cv2.COLOR_RGB2BGR),
                                                     "overlay"),
        out_dir / f"{stem}.json": json.dumps(rec, indent=1).encode(),
    }
    _write_all(files)
    return rec


def cmd_predict(args: argparse.Namespace) -> int:
    if args.scenes:
        sc = Path(args.scenes)
        rgb, depth, intr = sc / "rgb", sc / "depth", sc / "camera"
    else:
        if not (args.rgb and args.depth and args.intrinsics):
            raise DeployError("give --scenes DIR, or all of --rgb, --depth and --intrinsics")
        rgb, depth, intr = Path(args.rgb), Path(args.depth), Path(args.intrinsics)
    mode = getattr(args, "mode", "mean")
    p, samples, seed = getattr(args, "p", 0.9), getattr(args, "samples", 10), getattr(args, "seed", 0)
    if mode not in MODES:
        raise DeployError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not (isinstance(p, int | float) and math.isfinite(p) and 0.0 < p <= 1.0):
        raise DeployError(f"--p must lie in (0, 1], got {p}")
    if samples < 1:
        raise DeployError(f"--samples must be >= 1, got {samples}")
    sampler = getattr(args, "sampler", SAMPLERS[0])
    rate = getattr(args, "dropout_rate", DEFAULT_DROPOUT_RATE)
    if not 0.0 <= rate < 1.0:
        raise DeployError(f"--dropout-rate must lie in [0, 1), got {rate}")
    frames = collect_frames(rgb, depth, intr)
    try:
        seg = Segmenter.load(args.model, threads=args.threads)
        if mode != "mean" and sampler == "mc_dropout" and not seg.has_mc_dropout:
            seg._mc()  # raises ModelError with the re-export hint
    except ModelError as e:
        raise DeployError(str(e)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for stem, r, d, k in frames:
        try:
            rec = predict_frame(seg, stem, r, d, k, out, mode, p, samples, seed, sampler, rate)
        except DeployError as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
            continue
        print(f"{stem}: {len(rec['instances'])} instances, {rec['latency_ms']:.1f} ms")
    if failed:
        print(f"error: {failed} of {len(frames)} frame(s) failed; nothing was written for them", file=sys.stderr)
        return 2
    return 0


# ==============================================================================================
# bench
# ==============================================================================================


def _percentiles(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "mean_ms": float(a.mean())}


def bench(
    model_dir: str | Path,
    n: int = 50,
    warmup: int = 5,
    threads: int = 2,
    size_hw: tuple[int, int] = (480, 640),
    checkpoint: str | Path | None = None,
    use_torch: bool = True,
    stress: bool = True,
    scenes: str | Path | None = None,
    allow_spinning: bool = False,
) -> dict[str, Any]:
    """End-to-end latency (validation + resize + network + proposals; load excluded) of one frame,
    onnxruntime vs torch (learner.hypotheses.propose with net_size = the model's input size)."""
    seg = Segmenter.load(model_dir, threads=threads, allow_spinning=allow_spinning)
    if scenes:
        from data.scene_io import iter_scenes

        frames = [(s.rgb, s.depth, s.K) for s in iter_scenes(scenes, require_label=False)]
        if not frames:
            raise DeployError(f"no scenes in {scenes}")
    else:
        frames = [_synthetic_frame(*size_hw, seed=i) for i in range(4)]
    modes: list[tuple[str, dict[str, Any]]] = [("configured", {})]
    if stress:
        modes.append(("max_seeds", {"objectness_threshold": 0.0}))
    res: dict[str, Any] = {
        "frame": f"{frames[0][0].shape[1]}x{frames[0][0].shape[0]}",
        "net": f"{seg.input_size[1]}x{seg.input_size[0]}",
        "threads": threads,
        "n": n,
        "frames": len(frames),
        "ort_spinning": allow_spinning,
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }

    def run(fn, params) -> tuple[dict[str, float], float]:
        counts = []
        for i in range(warmup):
            fn(*frames[i % len(frames)], params)
        times = []
        for i in range(n):
            f = frames[i % len(frames)]
            t = time.perf_counter()
            counts.append(fn(*f, params))
            times.append(time.perf_counter() - t)
        return _percentiles(times), float(np.mean(counts))

    def ort_fn(rgb, depth, K, params):
        return len(seg.predict(rgb, depth, K, **params))

    for name, params in modes:
        stats, cnt = run(ort_fn, params)
        res[f"onnxruntime/{name}"] = {**stats, "instances": cnt}

    if use_torch:
        import torch

        from learner.hypotheses import propose
        from learner.model import build_model

        torch.set_num_threads(threads)
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise DeployError(f"no such checkpoint: {checkpoint}")
        src = checkpoint or seg.card.get("training", {}).get("source")
        if src and Path(src).is_file():
            model = build_model_from_checkpoint(load_checkpoint(Path(src)), src)
            res["torch_weights"] = str(src)
        else:
            model = build_model(seg.card["model"]["config"]).eval()
            res["torch_weights"] = "random (source checkpoint not found; proposal counts differ)"
        pp = dict(seg.proposal_params)
        pp.pop("max_seeds", None)
        pp.pop("min_area", None)

        def torch_fn(rgb, depth, K, params):
            with torch.inference_mode():
                m, _ = propose(model, rgb, depth, K, net_size=seg.input_size, **{**pp, **params})
            return len(m)

        for name, params in modes:
            stats, cnt = run(torch_fn, params)
            res[f"torch/{name}"] = {**stats, "instances": cnt}
    return res


# ==============================================================================================
# CLI
# ==============================================================================================


def _size(s: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 240x320, got {s!r}") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m learner.deploy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("export", help="export a run directory / checkpoint to ONNX + model card")
    e.add_argument("src", help="run directory (model/segmenter.pt or checkpoints/last.pt) or a .pt file")
    e.add_argument("out", help="output directory")
    e.add_argument("--size", type=_size, default=DEFAULT_SIZE_HW, help="network input HxW (default 240x320)")
    e.add_argument("--torchscript", action="store_true", help="also write segmenter.ts (traced)")
    e.add_argument("--no-mc-dropout", action="store_true",
                   help=f"do not write {MC_ONNX_NAME} (the graph the distributional predict modes sample with)")
    e.add_argument("--max-hypotheses", type=int)
    e.add_argument("--objectness-threshold", type=float)
    e.add_argument("--nms-iou", type=float)
    e.add_argument("--mask-threshold", type=float)
    e.add_argument("--min-area", type=int)
    e.add_argument("--max-seeds", type=int)
    e.add_argument("--depth-edge", type=float, dest="depth_edge_m",
                   help="cut masks along depth steps of at least this many metres (0: no cut; default 0.02)")
    e.add_argument("--contested", type=float, dest="contested_overlap",
                   help="remove the pixels two masks share when that is less than this share of the smaller one "
                        "(0: off; default 0.25)")

    p = sub.add_parser("predict", help="segment RGB-D frames with an exported model (no torch needed)")
    p.add_argument("--model", required=True, help="export directory or .onnx file")
    p.add_argument("--rgb", help="RGB image or directory of images")
    p.add_argument("--depth", help="depth: uint16 millimetre PNG or float metre .npy (file or directory)")
    p.add_argument("--intrinsics", help="JSON with fx, fy, cx, cy (file for all frames or directory STEM.json)")
    p.add_argument("--scenes", help="an exported scenes directory (rgb/, depth/, camera/) instead of the three above")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", choices=MODES, default="mean",
                   help="mean: one forward pass (default); confidence: p-confidence masks (fewer double picks); "
                        "union: Union-NMS (high recall). The last two run --samples sampled segmentations per frame")
    p.add_argument("--p", type=float, default=0.9, help="confidence requirement in (0, 1] (--mode confidence)")
    p.add_argument("--samples", type=int, default=10, help="samples per frame (--mode confidence/union)")
    p.add_argument("--sampler", choices=SAMPLERS, default=SAMPLERS[0],
                   help="mc_dropout: channel dropout on the head trunk (needs segmenter_mc.onnx, written by export); "
                        "tta: flips / rolls / zooms / shifts / noise of the frame")
    p.add_argument("--dropout-rate", type=float, default=DEFAULT_DROPOUT_RATE, help="MC-dropout channel drop rate")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws")

    b = sub.add_parser("bench", help="latency of a 640x480 frame: onnxruntime vs torch")
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

    args = ap.parse_args(argv)
    try:
        if args.cmd == "export":
            props = {k: getattr(args, k) for k in ("max_hypotheses", "objectness_threshold", "nms_iou",
                                                   "mask_threshold", "min_area", "max_seeds", "depth_edge_m",
                                                   "contested_overlap")}
            card = export(args.src, args.out, args.size, args.torchscript, props, mc_dropout=not args.no_mc_dropout)
            print(f"exported {card['training']['source']} -> {Path(args.out) / ONNX_NAME} "
                  f"({card['input']['width']}x{card['input']['height']}, model version {card['model']['version']}, "
                  f"max |onnx - torch| {max(card['export']['onnx_vs_torch_max_abs_diff'].values(), default=0):.1e})")
            return 0
        if args.cmd == "predict":
            return cmd_predict(args)
        if args.cmd == "bench":
            try:
                r = bench(args.model, args.n, args.warmup, args.threads, args.size, args.checkpoint,
                          not args.no_torch, not args.no_stress, args.scenes, args.spin)
            except ModelError as ex:
                raise DeployError(str(ex)) from None
            if args.json:
                print(json.dumps(r, indent=1))
                return 0
            print(f"frame {r['frame']} -> net {r['net']}, {r['threads']} threads, n={r['n']}, "
                  f"load avg {r['load_avg']}")
            for k, v in r.items():
                if isinstance(v, dict):
                    print(f"{k:28s} p50 {v['p50_ms']:7.1f} ms  p95 {v['p95_ms']:7.1f} ms  "
                          f"mean {v['mean_ms']:7.1f} ms  instances {v['instances']:.1f}")
            if "torch_weights" in r:
                print(f"torch weights: {r['torch_weights']}")
            return 0
    except DeployError as ex:
        print(f"error: {ex}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
