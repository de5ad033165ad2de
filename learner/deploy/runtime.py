"""Torch-free runtime for an exported segmenter (numpy + onnxruntime + opencv only).

    from learner.deploy.runtime import Segmenter
    seg = Segmenter.load("export_dir")           # or "export_dir/segmenter.onnx"
    inst = seg.predict(rgb, depth, K)            # any resolution, e.g. a 640x480 RealSense frame
    inst.masks, inst.scores                      # (N,H,W) bool at the input resolution, (N,)
    inst.label_image(), inst.boxes(), inst.areas(), inst.centroids()

`export_dir` is written by `python -m learner.deploy export` (segmenter.onnx + model_card.json). The
card carries everything needed (input size and normalisation, dynamic-head layout, proposal
parameters). This module only runs the graph (`OnnxBackend`); frames, proposals, samplers and the
distributional modes are the one pipeline of `learner.proposals` (see `learner.proposals.segmenter`),
the same code the torch model goes through in training and evaluation. Sampler "mc_dropout" runs the
exported MC graph (`segmenter_mc.onnx`: the network with its head-trunk output multiplied by a
per-channel input).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from learner.proposals.config import ProposalConfig
from learner.proposals.frame import InputError, InputSpec, check_inputs
from learner.proposals.pipeline import HeadSpec, interior_points
from learner.proposals.segmenter import MODES, SAMPLERS, Instances, ModelError, SamplerConfig
from learner.proposals.segmenter import Segmenter as _Segmenter

CARD_NAME = "model_card.json"
ONNX_NAME = "segmenter.onnx"
CARD_METADATA_KEY = "model_card"  # the card is also embedded in the ONNX metadata
INPUT_NAME = "input"
OUTPUT_NAMES = ("objectness", "features", "kernels")
MC_ONNX_NAME = "segmenter_mc.onnx"  # the same network with a per-channel factor on the head trunk (MC dropout)
MC_INPUT_NAME = "trunk_scale"
LATENT_OUTPUT = "prior_logvar"  # extra graph output of latent models (card "latent")

__all__ = ["Segmenter", "OnnxBackend", "Instances", "InputError", "ModelError", "SamplerConfig", "check_inputs",
           "interior_points", "CARD_NAME", "ONNX_NAME", "MC_ONNX_NAME", "MODES", "SAMPLERS", "LATENT_OUTPUT"]


def _read_card(onnx_path: Path, card_path: Path | None) -> dict[str, Any]:
    if card_path is not None and card_path.is_file():
        try:
            return json.loads(card_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"corrupt model card {card_path}: {e}") from None
    import onnx  # only when the card is not next to the model

    try:
        meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt file
        raise ModelError(f"cannot read ONNX model {onnx_path}: {e}") from None
    if CARD_METADATA_KEY not in meta:
        raise ModelError(f"no {CARD_NAME} next to {onnx_path} and none embedded in it")
    return json.loads(meta[CARD_METADATA_KEY])


def _card_get(card: dict, *keys: str) -> Any:
    d: Any = card
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            raise ModelError(f"model card lacks {'.'.join(keys)}")
        d = d[k]
    return d


def _session(onnx_path: Path, threads: int, allow_spinning: bool) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelError(f"cannot load ONNX model {onnx_path}: {e}") from None


def input_spec_from_card(card: dict[str, Any]) -> InputSpec:
    inp = _card_get(card, "input")
    return InputSpec(
        rgb_mean=tuple(float(v) for v in _card_get(inp, "rgb", "mean")),
        rgb_std=tuple(float(v) for v in _card_get(inp, "rgb", "std")),
        xyz_scale_m=float(_card_get(inp, "xyz", "scale_m")),
        height_scale_m=float(_card_get(inp, "plane_height", "scale_m")),
        height_min_m=float(_card_get(inp, "plane_height", "min_m")),
        height_max_m=float(_card_get(inp, "plane_height", "max_m")),
    )


class OnnxBackend:
    """An exported graph run with onnxruntime (the `learner.proposals.segmenter.Backend` protocol)."""

    def __init__(self, session: Any, card: dict[str, Any], mc_path: Path | None = None,
                 session_options: dict[str, Any] | None = None):
        self.session = session
        self.card = card
        if int(card.get("format_version", 0)) < 2:
            raise ModelError("this export predates the plane_height input channel (card format_version < 2); "
                             "re-export the checkpoint with `python -m learner.deploy export`")
        inp = _card_get(card, "input")
        self.input_size: tuple[int, int] | None = (int(_card_get(inp, "height")), int(_card_get(inp, "width")))
        self.spec = input_spec_from_card(card)
        h = _card_get(card, "dynamic_head")
        self.head = HeadSpec(int(h["embed_dim"]), int(h["dyn_hidden"]), float(h["coord_scale"]))
        lat = card.get("latent")
        self.latent_weight = None if not lat else np.asarray(_card_get(card, "latent", "weight"), np.float32)  # (Kp, Z)
        if self.latent_weight is not None:
            kp = int(h.get("num_kernel_params", self.head.num_kernel_params))
            if self.latent_weight.shape != (kp, int(_card_get(card, "latent", "dim"))):
                raise ModelError(f"model card latent.weight has shape {self.latent_weight.shape}, expected "
                                 f"({kp}, latent.dim); re-export the checkpoint")
        self.mc_path = mc_path  # the MC-dropout graph, loaded on first use
        self._mc_session: Any = None
        self._session_options = dict(session_options or {})
        shape = (card.get("mc_dropout") or {}).get("shape")
        self.mc_shape: tuple[int, ...] | None = tuple(int(v) for v in shape) if mc_path is not None and shape else None

    def run(self, x: np.ndarray, trunk_scale: np.ndarray | None = None) -> dict[str, np.ndarray]:
        feed = {INPUT_NAME: np.ascontiguousarray(x, np.float32)}
        if trunk_scale is None:
            names = OUTPUT_NAMES + ((LATENT_OUTPUT,) if self.latent_weight is not None else ())
            return dict(zip(names, self.session.run(list(names), feed), strict=True))
        feed[MC_INPUT_NAME] = np.ascontiguousarray(trunk_scale, np.float32)
        return dict(zip(OUTPUT_NAMES, self._mc().run(list(OUTPUT_NAMES), feed), strict=True))

    def _mc(self) -> Any:
        if self._mc_session is None:
            if self.mc_path is None:
                raise ModelError(f"this export has no MC-dropout graph ({MC_ONNX_NAME}); re-export it with "
                                 "`python -m learner.deploy export`, or use sampler='tta'")
            o = self._session_options
            self._mc_session = _session(self.mc_path, o.get("threads", 2), o.get("allow_spinning", False))
        return self._mc_session


class Segmenter(_Segmenter):
    """An exported segmenter: `learner.proposals.segmenter.Segmenter` over an `OnnxBackend`, with the
    card's proposal parameters. Create with `Segmenter.load(path)`."""

    backend: OnnxBackend

    def __init__(self, backend: OnnxBackend, path: Path | None = None):
        card = backend.card
        try:
            proposals = ProposalConfig.from_card(_card_get(card, "proposals"))
        except (TypeError, ValueError) as e:
            raise ModelError(f"model card proposals are invalid: {e}") from None
        super().__init__(backend, proposals, card.get("model", {}).get("version"))
        self.card = card
        self.path = path

    @classmethod
    def load(cls, path: str | Path, threads: int = 2, allow_spinning: bool = False) -> Segmenter:
        """path: an export directory (segmenter.onnx + model_card.json) or the .onnx file itself.

        threads: onnxruntime intra-op threads. allow_spinning: let idle onnxruntime worker threads
        busy-wait for work (onnxruntime's own default). Off by default: after a run the spinning
        worker competes with the numpy post-processing and with other processes, which on a busy
        2-core machine made a frame about 1.7x slower."""
        p = Path(path)
        if p.is_dir():
            onnx_path, card_path = p / ONNX_NAME, p / CARD_NAME
        else:
            onnx_path, card_path = p, p.parent / CARD_NAME
        if not onnx_path.is_file():
            raise ModelError(f"no exported model at {onnx_path} (run `python -m learner.deploy export` first)")
        card = _read_card(onnx_path, card_path)
        sess = _session(onnx_path, threads, allow_spinning)
        mc_name = (card.get("files") or {}).get("onnx_mc_dropout")
        mc_path = onnx_path.parent / mc_name if mc_name and (onnx_path.parent / mc_name).is_file() else None
        return cls(OnnxBackend(sess, card, mc_path, {"threads": threads, "allow_spinning": allow_spinning}), onnx_path)
