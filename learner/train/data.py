"""Training images and their partial labels, built from an interaction log or from labelled scenes.

A `TrainImage` is one RGB-D frame with whatever is known about it:
- `masks` + `points`: instance masks (noisy for interactions and pasted cut-outs, exact for the
  oracle) and the query pixels (u, v) whose decoded mask should equal each of them;
- `negatives`: pixels (u, v) where an interaction moved nothing ("no object here");
- `table`: pixels whose observed 3D point lies on the table plane (z ~ 0 in the robot frame). This
  is geometry the robot measures itself (its calibrated camera and table), not a label; it tells the
  objectness head where the bare table is. Switched off with `TrainConfig.table_prior = False`.
- `group`/`instance_ids`: pseudo-sequence frames x1 and x2 share a group; instance ids tie the same
  pasted object across the two frames (RISE association).

Sources:
- `LogSource`: committed records of an interaction log (self-supervised: positives, negatives and
  RISE pseudo-sequences pasted from an instance bank of good interaction masks). Records with a chunk
  that cannot be decoded (a damaged chunk file, `data.log.ChunkDamageError`) are skipped and reported
  in one warning naming their indices and arrays (`skipped`); training goes on with the rest. If no
  record of a non-empty log can be read, it raises `data.log.LogFormatError` (a ValueError) naming the log.
- `SceneSource`: exported scenes with ground-truth labels — ONLY for the supervised oracle baseline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from data.geometry import height_above_table
from data.label_propagation import PropagationConfig, propagate_masks
from data.log import ChunkDamageError, InteractionLog, LogFormatError, records_text
from data.schema import Label
from learner.train.pseudo_sequences import InstanceBank, cutout_from_interaction, make_pseudo_sequence

_logger = logging.getLogger(__name__)

# what a training image needs of a record (not the hypotheses: a damaged hypothesis chunk costs training nothing)
RECORD_FIELDS = ("rgb_before", "depth_before", "depth_after", "K", "camera_pose", "pixel", "mask", "label")


@dataclass
class TrainImage:
    rgb: np.ndarray  # (H,W,3) uint8
    depth: np.ndarray  # (H,W) float32 metres, 0 = missing
    K: np.ndarray  # (3,3) pixels
    masks: list[np.ndarray] = field(default_factory=list)  # (H,W) bool each
    points: list[np.ndarray] = field(default_factory=list)  # (n,2) float (u,v) per mask
    negatives: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    table: np.ndarray | None = None  # (H,W) bool
    group: int = -1
    instance_ids: list[int] = field(default_factory=list)


def table_prior_pixels(depth: np.ndarray, K: np.ndarray, camera_pose: np.ndarray, max_height: float) -> np.ndarray:
    """(H,W) bool: valid pixels whose world point is within `max_height` metres of the plane z = 0 (the
    calibrated table; the training prior, not the proposals' fitted-plane gate `proposals.cleaning.table_pixels`)."""
    h = height_above_table(depth, K, camera_pose)
    return np.abs(np.nan_to_num(h, nan=np.inf)) < max_height


def sample_points_in(mask: np.ndarray, n: int, rng: np.random.Generator, first: tuple[float, float] | None = None,
                     erode: int = 2) -> np.ndarray:
    """`n` query pixels (u, v) inside `mask` (eroded when it stays non-empty); `first` is kept as the first."""
    inner = ndimage.binary_erosion(mask, iterations=erode) if erode else mask
    if not inner.any():
        inner = mask
    vs, us = np.nonzero(inner)
    pts = []
    if first is not None:
        pts.append(first)
    if len(vs):
        idx = rng.integers(len(vs), size=max(n - len(pts), 0))
        pts += [(float(us[i]), float(vs[i])) for i in idx]
    return np.asarray(pts, np.float32).reshape(-1, 2)


class LogSource:
    """Self-supervised training images from the committed records of an interaction log."""

    def __init__(self, log_path: str | Path, table_prior_height: float = 0.004, bank_capacity: int = 512,
                 min_mask_area: int = 30, limit: int | None = None, propagation: PropagationConfig | None = None):
        self.table_prior_height = table_prior_height
        self.min_mask_area = min_mask_area
        self.rgb: list[np.ndarray] = []
        self.depth: list[np.ndarray] = []
        self.K: list[np.ndarray] = []
        self.pose: list[np.ndarray] = []
        self.pixel: list[np.ndarray] = []
        self.mask: list[np.ndarray | None] = []
        self.label: list[int] = []
        self.bank = InstanceBank(capacity=bank_capacity)
        self._table_cache: dict[int, np.ndarray] = {}
        self.skipped: dict[int, tuple[str, ...]] = {}  # record index -> arrays that cannot be decoded
        with InteractionLog.open(log_path, "r") as log:
            self.n_records = len(log) if limit is None else min(len(log), int(limit))  # the first `limit`
            for i in range(self.n_records):
                if i in self.skipped:  # named by an earlier record's error (a table chunk holds many records)
                    continue
                try:
                    r = log.read_fields(RECORD_FIELDS, i)
                except ChunkDamageError as e:
                    for array, records in e.records.items():
                        for k in (k for k in records if k < self.n_records):
                            self.skipped[k] = tuple(sorted({*self.skipped.get(k, ()), array}))
                    self.skipped.setdefault(i, tuple(sorted(e.records)))
                    continue
                self._add(i, r)
        self._report_skipped(log_path)
        # masks of the same scene that are also valid in each frame (data/label_propagation.py);
        # without propagation a frame knows only its own interaction's mask
        if propagation is not None:
            self.known = propagate_masks(self.rgb, self.depth, self.pose, self.mask, propagation)
        else:
            self.known = [[i] if m is not None else [] for i, m in enumerate(self.mask)]
        self.positives = [i for i, m in enumerate(self.mask) if m is not None]
        self.negatives = [i for i, m in enumerate(self.mask) if m is None]

    def _add(self, i: int, r: dict) -> None:
        label = int(r["label"])
        if label == Label.INVALID:
            return
        positive = label == Label.POSITIVE and int(r["mask"].sum()) >= self.min_mask_area
        if label == Label.POSITIVE and not positive:
            return
        self.rgb.append(r["rgb_before"])
        self.depth.append(r["depth_before"])
        self.K.append(np.asarray(r["K"], np.float64))
        self.pose.append(np.asarray(r["camera_pose"], np.float64))
        self.pixel.append(np.asarray(r["pixel"], np.float32))
        self.mask.append(r["mask"] if positive else None)
        self.label.append(label)
        if positive:
            self.bank.add(cutout_from_interaction(r["rgb_before"], r["depth_before"], r["mask"], r["depth_after"],
                                                  source=i))

    def _report_skipped(self, log_path: str | Path) -> None:
        """One warning naming the skipped records per damaged array; LogFormatError when nothing was readable."""
        if not self.skipped:
            return
        by_array: dict[str, list[int]] = {}
        for i, arrays in self.skipped.items():
            for a in arrays:
                by_array.setdefault(a, []).append(i)
        what = "; ".join(f"array {a!r}: {records_text(r)}" for a, r in sorted(by_array.items()))
        check = f"check the log with `python -m data.inspect {log_path} --verify`"
        if len(self.skipped) == self.n_records:
            raise LogFormatError(f"{log_path}: none of its {self.n_records} records can be read (damaged chunks, "
                                 f"{what}); {check}")  # fmt: skip
        _logger.warning("%s: skipped %d of %d records that cannot be read (damaged chunks, %s); training on the "
                        "rest; %s", log_path, len(self.skipped), self.n_records, what, check)  # fmt: skip

    def __len__(self) -> int:
        return len(self.rgb)

    def _table(self, i: int) -> np.ndarray:
        if i not in self._table_cache:
            self._table_cache[i] = table_prior_pixels(self.depth[i], self.K[i], self.pose[i], self.table_prior_height)
        return self._table_cache[i]

    def interaction_image(self, i: int, rng: np.random.Generator, points_per_mask: int) -> TrainImage:
        img = TrainImage(self.rgb[i], self.depth[i], self.K[i], table=self._table(i))
        u, v = (float(x) for x in self.pixel[i])
        if self.mask[i] is None and not self.negative_on_known_object(i):
            img.negatives = np.array([[u, v]], np.float32)
        for s in self.known[i]:
            img.masks.append(self.mask[s])
            img.points.append(sample_points_in(self.mask[s], points_per_mask, rng, first=(u, v) if s == i else None))
        return img

    def negative_on_known_object(self, i: int) -> bool:
        """True if record i moved nothing but its pixel lies inside a mask known for its frame (one
        propagated from another interaction): the robot touched an object that did not move (a failed
        grasp, a heavy object), so "nothing moved" must not teach "no object here"."""
        H, W = self.depth[i].shape
        u, v = (int(round(float(x))) for x in self.pixel[i])
        if not (0 <= u < W and 0 <= v < H):
            return False
        return any(bool(self.mask[s][v, u]) for s in self.known[i])

    @property
    def n_known_masks(self) -> int:
        """Labelled masks over all frames, propagated ones included."""
        return sum(len(k) for k in self.known)

    def pseudo_pair(self, rng: np.random.Generator, points_per_mask: int, group: int,
                    min_visible: int = 40) -> tuple[TrainImage, TrainImage] | None:
        """A RISE pseudo-sequence (x1, x2) pasted onto a random logged frame, or None without a bank."""
        if len(self.bank) < 2:
            return None
        i = int(rng.integers(len(self)))
        x1, x2, _ = make_pseudo_sequence(self.rgb[i], self.depth[i], self.bank, rng)
        out = []
        for x in (x1, x2):
            img = TrainImage(x.rgb, x.depth, self.K[i], group=group,
                             table=table_prior_pixels(x.depth, self.K[i], self.pose[i], self.table_prior_height))
            for k, iid in enumerate(x.ids):
                vis = x.visible_masks[k]
                if vis.sum() < min_visible:
                    continue
                img.masks.append(vis)
                img.points.append(sample_points_in(vis, points_per_mask, rng))
                img.instance_ids.append(int(iid))
            out.append(img)
        return out[0], out[1]


class SceneSource:
    """ORACLE ONLY: fully labelled exported scenes (simulator ground truth) as training images."""

    def __init__(self, scenes_dir: str | Path, limit: int | None = None, min_area: int = 30):
        from data.scene_io import iter_scenes

        self.scenes = list(iter_scenes(scenes_dir, limit=limit))
        self.min_area = min_area

    def __len__(self) -> int:
        return len(self.scenes)

    def image(self, i: int, rng: np.random.Generator, points_per_mask: int) -> TrainImage:
        s = self.scenes[i]
        img = TrainImage(s.rgb, s.depth, s.K, table=(s.label == 0) & (s.depth > 0))
        for iid in np.unique(s.label):
            if iid == 0:
                continue
            m = s.label == iid
            if m.sum() < self.min_area:
                continue
            img.masks.append(m)
            img.points.append(sample_points_in(m, points_per_mask, rng))
        return img
