"""Latency of one frame, onnxruntime vs torch, through the one pipeline (`python -m learner.deploy bench`).

Both backends run the same code after the network (`learner.proposals.segmenter.Segmenter`: checks,
resize, input, proposals) with the card's proposal parameters: the exported graph through
`learner.deploy.runtime.Segmenter`, the torch model through `learner.model.backend.torch_segmenter`
at the card's input size. So the timings differ only by the network's runtime, and with the same
weights both give the same instances (up to float rounding at the mask threshold).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from learner.deploy import DeployError
from learner.deploy.export import synthetic_frame
from learner.deploy.runtime import ModelError, Segmenter


def _percentiles(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "mean_ms": float(a.mean())}


def _torch_model(seg: Segmenter, checkpoint: str | Path | None) -> tuple[Any, str]:
    """The torch model of an export: --checkpoint, else the card's training.source, else random
    weights of the card's model config (said so in the result)."""
    from learner.model.checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint
    from learner.model.network import SegmenterConfig, build_model

    if checkpoint is not None and not Path(checkpoint).is_file():
        raise DeployError(f"no such checkpoint: {checkpoint}")
    src = checkpoint or seg.card.get("training", {}).get("source")
    if src and Path(src).is_file():
        try:
            return model_from_checkpoint(read_checkpoint(Path(src)), src), str(src)
        except CheckpointError as e:
            raise DeployError(str(e)) from None
    try:
        model = build_model(SegmenterConfig.from_dict(dict(seg.card["model"]["config"]))).eval()
    except (KeyError, TypeError, ValueError) as e:
        raise DeployError(f"model card has no usable model.config: {e}") from None
    return model, "random (source checkpoint not found; proposal counts differ)"


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
    onnxruntime vs torch, both through the one pipeline with the card's proposal parameters.
    Modes: "configured" (the card's parameters) and, with stress, "max_seeds"
    (objectness_threshold = 0: every local maximum is a seed, up to max_seeds)."""
    try:
        seg = Segmenter.load(model_dir, threads=threads, allow_spinning=allow_spinning)
    except ModelError as e:
        raise DeployError(str(e)) from None
    if scenes:
        from data.scene_io import iter_scenes

        frames = [(s.rgb, s.depth, s.K) for s in iter_scenes(scenes, require_label=False)]
        if not frames:
            raise DeployError(f"no scenes in {scenes}")
    else:
        frames = [synthetic_frame(*size_hw, seed=i) for i in range(4)]
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

    def run(s: Any, params: dict[str, Any]) -> tuple[dict[str, float], float]:
        for i in range(warmup):
            s.predict(*frames[i % len(frames)], **params)
        counts, times = [], []
        for i in range(n):
            f = frames[i % len(frames)]
            t = time.perf_counter()
            counts.append(len(s.predict(*f, **params)))
            times.append(time.perf_counter() - t)
        return _percentiles(times), float(np.mean(counts))

    backends: list[tuple[str, Any]] = [("onnxruntime", seg)]
    if use_torch:
        import torch

        from learner.model.backend import torch_segmenter

        torch.set_num_threads(threads)
        model, res["torch_weights"] = _torch_model(seg, checkpoint)
        backends.append(("torch", torch_segmenter(model, seg.proposals, net_size=seg.input_size)))
    for backend, s in backends:
        for name, params in modes:
            stats, cnt = run(s, params)
            res[f"{backend}/{name}"] = {**stats, "instances": cnt}
    return res
