"""`learner.init`: the trained model a fresh loop run starts from (a run directory, a checkpoint .pt or
an ONNX export's source checkpoint), read and checked before the run starts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learner.deploy.runtime import CARD_NAME, ONNX_NAME  # no onnxruntime at import
from learner.model.checkpoint import (
    CheckpointError,
    model_from_checkpoint,
    read_checkpoint,
    resolve_checkpoint,
    trained_size,
)
from learner.model.network import PointSegmenter


@dataclass
class InitSource:
    """A trained model to start a fresh run from (`learner.init`), read and checked by `resolve_init`."""

    given: str  # the path as the user gave it
    checkpoint: Path  # the torch checkpoint the weights come from
    kind: str  # resolve_checkpoint's kind, or "onnx_export_source"
    model: PointSegmenter
    meta: dict[str, Any] = field(default_factory=dict)  # the source's model_version / interactions / train steps
    input_size: tuple[int, int] | None = None  # (H, W) pixels it was trained at (None: not recorded)




def _export_source(p: Path) -> tuple[Path, int | None] | None:
    """(the checkpoint an ONNX export was made from (its model card's training.source), the exported model
    version); None if `p` is no export. CheckpointError when it is one but the card or its source is missing."""
    if p.is_file() and p.suffix == ".onnx":
        d = p.parent
    elif p.is_file() and p.name == CARD_NAME:
        d = p.parent
    elif p.is_dir() and ((p / CARD_NAME).is_file() or (p / ONNX_NAME).is_file()):
        d = p
    else:
        return None
    card_path = d / CARD_NAME
    no_finetune = (f"learner.init={p} is an ONNX export; an ONNX graph cannot be fine-tuned: learner.init needs the torch "
                   "checkpoint it was exported from (a run directory, its checkpoints/last.pt or model/segmenter.pt)")
    if not card_path.is_file():
        raise CheckpointError(f"{no_finetune}, which the export's {card_path} names under training.source; "
                              f"{card_path} is missing")
    try:
        card = json.loads(card_path.read_text())
        src = card["training"]["source"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{no_finetune}; {card_path} does not name it (training.source: {e})") from None
    if not src or not Path(src).exists():
        raise CheckpointError(f"{no_finetune}; {card_path} names training.source = {src}, which does not exist")
    version = (card.get("model") or {}).get("version")
    return Path(src), None if version is None else int(version)


def resolve_init(path: str | Path) -> InitSource:
    """`learner.init`: a run directory, a checkpoint .pt (trainer checkpoint or the deployable
    model/segmenter.pt) or an ONNX export directory (through its model card's training.source) -> the model.
    CheckpointError (a ValueError) naming the path when it does not exist or is not a segmenter checkpoint."""
    p = Path(path).expanduser()
    try:
        export = _export_source(p)
        ckpt_path, kind = resolve_checkpoint(export[0] if export is not None else p)
        ckpt = read_checkpoint(ckpt_path)
        model = model_from_checkpoint(ckpt, ckpt_path)
    except CheckpointError as e:
        msg = str(e)
        raise CheckpointError(msg if msg.startswith("learner.init") else f"learner.init={path}: {msg}") from None
    meta = {key: int(ckpt[key]) for key in ("model_version", "interactions", "step", "train_steps")
            if isinstance(ckpt.get(key), int | float)}
    if export is not None:
        kind = "onnx_export_source"
        meta["exported_model_version"] = export[1]
        if export[1] is not None and meta.get("model_version") not in (None, export[1]):
            print(f"learner.init={path}: note: the export is model v{export[1]}, its source {ckpt_path} is now "
                  f"v{meta['model_version']} (the run went on training); starting from the source as it is now")
    return InitSource(str(path), ckpt_path.resolve(), kind, model, meta, trained_size(ckpt))
