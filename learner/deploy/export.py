"""Export a trained segmenter to ONNX + model card (`python -m learner.deploy export`).

    card = export("runs/exp", "export_dir")               # run directory, checkpoint directory or .pt
    card = export(ckpt, out, proposals=ProposalConfig(max_hypotheses=10))

Writes OUT/segmenter.onnx (the network forward, fixed input size, B = 1, opset 17, BatchNorm folded),
OUT/segmenter_mc.onnx (the same network with per-channel factors on the head trunk: MC dropout),
OUT/model_card.json (also embedded in the ONNX metadata) and, with torchscript, OUT/segmenter.ts.
The card's input section is `learner.proposals.frame.InputSpec`, its proposal parameters
`learner.proposals.config.ProposalConfig.to_card()`: the runtime (`learner.deploy.runtime`) reads them
back into the same pipeline the torch model goes through. Importing this module does not import
torch (only `export` does).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from learner.deploy import DeployError
from learner.deploy.runtime import (
    CARD_METADATA_KEY,
    CARD_NAME,
    INPUT_NAME,
    LATENT_OUTPUT,
    MC_INPUT_NAME,
    MC_ONNX_NAME,
    ONNX_NAME,
    OUTPUT_NAMES,
)
from learner.proposals.config import ProposalConfig, field_names
from learner.proposals.frame import CHANNELS, IN_CHANNELS, InputSpec, make_input
from learner.proposals.segmenter import SamplerConfig

TS_NAME = "segmenter.ts"
DEFAULT_SIZE_HW = (240, 320)  # the training resolution (sim camera 320x240)
OPSET = 17
CARD_FORMAT = "interactive-seg/segmenter-card"
CARD_FORMAT_VERSION = 2  # 2: input gained the plane_height channel
# export overrides where 0 or a negative value means "off" (as the --depth-edge / --contested options)
OFF_AT_ZERO = ("depth_edge_m", "contested_overlap")


def synthetic_frame(H: int, W: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A plausible tabletop RGB-D frame (table plane + boxes) for checks and benchmarks:
    rgb (H,W,3) uint8, depth (H,W) float32 metres (2 % missing), K (3,3)."""
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


# ---------------------------------------------------------------------------------- proposals


def proposal_config(proposals: ProposalConfig | dict[str, Any] | None = None) -> ProposalConfig:
    """The proposal parameters an export writes to its card.

    A ProposalConfig is taken as it is. A dict holds overrides of the defaults (ProposalConfig()):
    None values keep the default (options not given on the command line), and depth_edge_m /
    contested_overlap of 0 or less turn the depth-edge cut / the contested-pixel rule off.
    Raises DeployError naming an unknown or bad parameter."""
    try:
        if isinstance(proposals, ProposalConfig):
            return proposals.validate()
        given = dict(proposals or {})
        unknown = sorted(set(given) - set(field_names()))
        if unknown:
            raise DeployError(f"unknown proposal parameter(s) {unknown}; expected some of {sorted(field_names())}")
        over: dict[str, Any] = {}
        for k, v in given.items():
            if v is None:
                continue
            if k in OFF_AT_ZERO and isinstance(v, int | float) and not isinstance(v, bool) and v <= 0:
                v = None
            over[k] = v
        return ProposalConfig().replace(**over)
    except (TypeError, ValueError) as e:
        raise DeployError(f"invalid proposal parameters: {e}") from None


def proposals_card(cfg: ProposalConfig) -> dict[str, Any]:
    """The card's "proposals" entry: every ProposalConfig field (`to_card`) plus what they mean."""
    return {
        **cfg.to_card(),
        "parameters": "learner.proposals.config.ProposalConfig (ProposalConfig.from_card reads this entry)",
        "max_seeds_default": "null = 3 x max_hypotheses",
        "seed_nms_kernel": 3,
        "table_gate": "pixels with depth whose height above the fitted plane is <= max(table_gate_m, "
        "table_gate_z2 x z^2) metres (z: the pixel's camera depth in metres) are removed from every mask "
        "(table_gate_m null: off); then, if largest_component, the mask is cut along depth "
        "steps: pixels with a 4-neighbour nearer by depth_edge_m metres or more (missing depth first "
        "filled with the farthest valid depth within 2 pixels; null: no cut), and only its largest "
        "4-connected component is kept, plus the cut pixels that are not behind it",
        "contested": "after the NMS, two kept masks sharing pixels, fewer than contested_overlap x the smaller "
        "one's area, both lose the shared pixels (decided on the masks before any removal); masks left with "
        "fewer than min_area pixels are dropped; scores unchanged (null: off)",
        "score_description": "mask: mean mask probability in the mask; objectness_x_mask: that times the "
        "mean objectness probability in the mask",
    }


def input_card(spec: InputSpec, H: int, W: int) -> dict[str, Any]:
    """The card's "input" entry: the InputSpec numbers and the conventions of `make_input`."""
    return {
        "name": INPUT_NAME,
        "shape": [1, IN_CHANNELS, H, W],
        "height": H,
        "width": W,
        "dtype": "float32",
        "layout": "NCHW",
        "channels": list(CHANNELS),
        "builder": "learner.proposals.frame.make_input (numbers: learner.proposals.frame.InputSpec)",
        "rgb": {
            "scale": "1/255 (uint8 -> [0,1]), then (x - mean) / std",
            "mean": list(spec.rgb_mean),
            "std": list(spec.rgb_std),
        },
        "xyz": {
            "frame": "camera, OpenCV axes (x right, y down, z forward), metres",
            "deprojection": "X = (u - cx) Z / fx, Y = (v - cy) Z / fy, Z = depth",
            "centre": "per-image lower median of the valid points (per axis)",
            "scale_m": float(spec.xyz_scale_m),
            "missing": "XYZ = 0 where depth is missing",
        },
        "valid": "1 where depth was measured (> 0, finite), else 0",
        "plane_height": {
            "meaning": "signed distance (metres) of each pixel's point to the dominant plane found by "
            "seeded RANSAC on the depth (learner/proposals/plane.py), positive towards the camera; "
            "clipped to [min_m, max_m], divided by scale_m; 0 where depth is missing",
            "scale_m": float(spec.height_scale_m),
            "min_m": float(spec.height_min_m),
            "max_m": float(spec.height_max_m),
        },
        "depth_units": "metres internally; the runtime accepts float metres or uint16 millimetres "
        "(0 / NaN = missing)",
        "pixel_convention": "(u, v) = (column, row), origin at the centre of the top-left pixel",
        "resize": "frames of another size are resized to height x width: RGB area-averaged when "
        "shrinking, bilinear when enlarging; depth nearest-exact; fx' = sx fx, "
        "cx' = (cx + 0.5) sx - 0.5 (same for y); masks resized back with nearest-exact",
    }


# ---------------------------------------------------------------------------------- graphs


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


def _onnx_session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _export_mc_graph(model: Any, x: Any, out: Path, check: bool) -> dict[str, Any]:
    """Write OUT/segmenter_mc.onnx: the network with `model.<MC_MODULE>`'s output multiplied by a
    per-channel input `trunk_scale` (1, C, 1, 1). Feeding Bernoulli(1 - r) / (1 - r) factors is
    F.dropout2d(rate r) there (MC dropout); ones give the plain network. The torch backend
    (`learner.model.backend.TorchBackend`) applies the same factors with the same forward hook, and
    the sampler draws them with numpy, so both see the same factors for a seed. Built with a
    forward hook while tracing, so the model code is not touched."""
    import torch

    from learner.model.backend import MC_MODULE

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
        scale = ((np.random.default_rng(0).random((1, C, 1, 1)) >= 0.3) / np.float32(0.7)).astype(np.float32)
        with torch.no_grad():
            ref = wrapper(x, torch.from_numpy(scale))
        got = _onnx_session(tmp).run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy(), MC_INPUT_NAME: scale})
        diff = max(float(np.abs(g - r.numpy()).max()) for r, g in zip(ref, got, strict=True))
        if diff > 1e-3:
            tmp.unlink(missing_ok=True)
            raise DeployError(f"MC-dropout ONNX graph and torch disagree after export (max abs diff {diff})")
    os.replace(tmp, path)
    return {
        "module": MC_MODULE,
        "input": MC_INPUT_NAME,
        "shape": [1, C, 1, 1],
        "default_rate": SamplerConfig().dropout_rate,
        "meaning": f"{MC_ONNX_NAME} multiplies the output of the model's {MC_MODULE!r} module by this "
        "per-channel factor; MC dropout feeds Bernoulli(1 - rate) / (1 - rate) draws (F.dropout2d), ones "
        "give the plain network",
        "draws": "numpy default_rng([seed, 1]).random(shape) >= rate, one draw per sample after the first "
        "(sample 0 is the plain network): learner.proposals.segmenter, the same for the torch model",
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


def _load(src: str | Path) -> tuple[Any, dict[str, Any], Path, str]:
    """(model in eval mode, checkpoint dict, checkpoint path, kind) via learner.model.checkpoint."""
    from learner.model.checkpoint import (
        CheckpointError,
        model_from_checkpoint,
        read_checkpoint,
        resolve_checkpoint,
    )

    try:
        path, kind = resolve_checkpoint(src)
        ckpt = read_checkpoint(path)
        return model_from_checkpoint(ckpt, path), ckpt, path, kind
    except CheckpointError as e:
        raise DeployError(str(e)) from None


def export(
    src: str | Path,
    out_dir: str | Path,
    size_hw: tuple[int, int] | None = None,
    torchscript: bool = False,
    proposals: ProposalConfig | dict[str, Any] | None = None,
    check: bool = True,
    mc_dropout: bool = True,
) -> dict[str, Any]:
    """Export a run directory or checkpoint to OUT_DIR; returns the model card.

    proposals: the card's proposal parameters (`proposal_config`: a ProposalConfig, or a dict of
    overrides of the defaults). check: compare onnxruntime with torch on a synthetic frame (fails
    above 1e-3). mc_dropout: also write the MC-dropout graph (segmenter_mc.onnx) used by the
    distributional predict modes. Raises DeployError (the message names the file or parameter)."""
    from learner.model.checkpoint import trained_size

    pcfg = proposal_config(proposals)
    model, ckpt, ckpt_path, kind = _load(src)
    size_hw = size_hw or trained_size(ckpt) or DEFAULT_SIZE_HW
    H, W = int(size_hw[0]), int(size_hw[1])
    if H < 16 or W < 16:
        raise DeployError(f"input size must be at least 16x16, got {H}x{W}")
    cfg = model.config
    if int(cfg.in_channels) != IN_CHANNELS:
        raise DeployError(f"{ckpt_path}: the model takes {cfg.in_channels} input channels, the input builder "
                          f"(learner.proposals.frame.make_input) makes {IN_CHANNELS}")

    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / ONNX_NAME
    tmp_onnx = out / (ONNX_NAME + ".tmp")

    spec = InputSpec()
    rgb, depth, K = synthetic_frame(H, W)
    x = torch.from_numpy(make_input(rgb, depth, K, spec))
    with torch.no_grad():
        ref = model(x)
    h, w = ref["objectness"].shape[-2:]
    names = _graph_outputs(model)
    try:
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
        got = _onnx_session(tmp_onnx).run(list(names), {INPUT_NAME: x.numpy()})
        diffs = {k: float(np.abs(g - ref[k].numpy()).max()) for k, g in zip(names, got, strict=True)}
        if max(diffs.values()) > 1e-3:
            tmp_onnx.unlink(missing_ok=True)
            raise DeployError(f"ONNX and torch outputs disagree after export (max abs diff {diffs})")

    mc_info = _export_mc_graph(model, x, out, check) if mc_dropout else None

    ts_name = None
    if torchscript:
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
        "input": input_card(spec, H, W),
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
        "proposals": proposals_card(pcfg),
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
