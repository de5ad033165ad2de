"""A contact sheet of a model's predictions on a few held-out scenes, as one PNG.

The loop writes it at every evaluation (`RUN/eval_preview.png`, `learner/loop/interactive.py`) and the
HTML report of `python -m data.inspect` embeds the file when it is there: the report itself never runs
a model (data/ imports nothing of the learner). One row per scene: RGB | ground-truth instances |
predicted instances with score >= `score_thresh`, each instance in its own colour with its outline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data import scene_io
from data.inspect import png_bytes
from learner.evaluate.metrics import masks_to_label

PREVIEW_NAME = "eval_preview.png"
PREVIEW_SCENES = 4


def _colours(n: int) -> np.ndarray:
    import colorsys

    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb((0.61803 * k + 0.1) % 1.0, 0.8, 1.0)]
                     for k in range(n)], dtype=np.float32).reshape(n, 3)  # fmt: skip


def label_overlay(rgb: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Instances of a label image (0 = background) over a dimmed copy of `rgb`, outlined."""
    import cv2

    out = rgb.astype(np.float32) * 0.55
    ids = [int(i) for i in np.unique(label) if i > 0]
    col = _colours(len(ids))
    for c, i in zip(col, ids, strict=True):
        m = label == i
        out[m] = 0.45 * rgb[m].astype(np.float32) + 0.55 * c
    out = np.ascontiguousarray(out.round().clip(0, 255).astype(np.uint8))
    for c, i in zip(col, ids, strict=True):
        contours, _ = cv2.findContours((label == i).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(x) for x in c), 1)
    return out


def _caption(panel: np.ndarray, text: str) -> np.ndarray:
    import cv2

    bar = np.full((18, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (20, 20, 20), 1, cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)


def preview_image(scenes: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]], title: str,
                  *, score_thresh: float = 0.5) -> np.ndarray:
    """scenes: (scene id, rgb, ground-truth label, predicted masks (N, H, W), scores (N,)) -> RGB uint8."""
    import cv2

    rows = []
    for sid, rgb, gt, masks, scores in scenes:
        keep = np.asarray(scores) >= score_thresh
        pred = masks_to_label(np.asarray(masks)[keep], np.asarray(scores)[keep], shape=gt.shape)
        n_gt = len([i for i in np.unique(gt) if i > 0])
        rows.append(np.concatenate([
            _caption(np.ascontiguousarray(rgb), f"scene {sid}"),
            _caption(label_overlay(rgb, gt), f"ground truth: {n_gt} objects"),
            _caption(label_overlay(rgb, pred), f"predicted: {int(keep.sum())} (score >= {score_thresh:g})"),
        ], axis=1))  # fmt: skip
    width = max(r.shape[1] for r in rows) if rows else 480
    head = np.full((24, width, 3), 255, np.uint8)
    cv2.putText(head, title, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([head, *rows], axis=0)


def write_preview(path: str | os.PathLike, scenes_dir: str | os.PathLike,
                  predictions: Sequence[tuple[str, Any]], title: str, *, score_thresh: float = 0.5) -> Path:
    """Write the contact sheet of `predictions` ((scene id, Instances or (masks, scores))) atomically;
    the RGB and ground truth come from the exported scenes in `scenes_dir`."""
    scenes = []
    for sid, out in predictions:
        s = scene_io.read_scene(scenes_dir, sid)
        masks, scores = (out.masks, out.scores) if hasattr(out, "masks") else out
        masks = np.asarray(masks, dtype=bool).reshape(-1, *s.label.shape)
        scenes.append((sid, s.rgb, s.label, masks, np.asarray(scores, dtype=np.float64).reshape(-1)))
    png = png_bytes(preview_image(scenes, title, score_thresh=score_thresh))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(png)
    os.replace(tmp, path)
    return path
