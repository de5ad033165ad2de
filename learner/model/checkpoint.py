"""Find and load a trained segmenter: a run directory, a checkpoint directory or a .pt file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from learner.model.network import PointSegmenter, SegmenterConfig, build_model

# where a directory keeps its model, in the order they are tried, and what each is
CANDIDATES = (("model/segmenter.pt", "run_model"), ("checkpoints/last.pt", "trainer_checkpoint"),
              ("segmenter.pt", "run_model"), ("last.pt", "trainer_checkpoint"))


class CheckpointError(ValueError):
    """A missing, unreadable or foreign checkpoint (the message names the file)."""


def resolve_checkpoint(path: str | Path) -> tuple[Path, str]:
    """A run directory, a checkpoint directory or a .pt file -> (checkpoint path, kind)."""
    p = Path(path)
    if p.is_file():
        return p, "file"
    if p.is_dir():
        for rel, kind in CANDIDATES:
            if (p / rel).is_file():
                return p / rel, kind
        tried = ", ".join(str(p / rel) for rel, _ in CANDIDATES)
        raise CheckpointError(f"no model in {p} (looked for {tried})")
    raise CheckpointError(f"no such run directory or checkpoint: {p}")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict (weights_only, CPU); CheckpointError if it is not a segmenter checkpoint."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a segmenter checkpoint (torch cannot read it: {first})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a segmenter checkpoint (needs 'model' and 'model_config'; has {keys})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], path: Path | str = "checkpoint") -> PointSegmenter:
    try:
        model = build_model(SegmenterConfig.from_dict(dict(ckpt["model_config"])))
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: model_config and weights do not fit: {e}") from None
    return model.eval()


def trained_size(ckpt: dict[str, Any]) -> tuple[int, int] | None:
    """The (H, W) pixels of the images a checkpoint's model was trained on (None for checkpoints from before
    it was recorded). Every caller runs the network at this size (frames of another size are resized with
    consistent intrinsics), as the ONNX export does: objects keep the pixel scale the model learnt."""
    size = ckpt.get("input_size")
    if size is None or len(size) != 2:
        return None
    return int(size[0]), int(size[1])


def load_model(path: str | Path) -> tuple[PointSegmenter, dict[str, Any]]:
    """(model in eval mode, checkpoint dict) of a run directory, checkpoint directory or .pt file."""
    p, _ = resolve_checkpoint(path)
    ckpt = read_checkpoint(p)
    return model_from_checkpoint(ckpt, p), ckpt
