"""Temporal label propagation: reuse an interaction mask in the other frames of the same scene.

An interaction gives one object mask in its before-frame. The robot keeps looking at the same table
for many interactions, and most objects do not move between two captures. A mask found at capture s
is therefore also a correct mask in capture t whenever the pixels it covers show the same surface in
both captures: same camera pose, depth unchanged within noise on nearly all of the mask, colour
unchanged. Checking the two captures directly (not the chain of interactions between them) makes the
rule safe against anything that happened in between, a human re-arranging the table included.

Propagated masks are still self-supervised labels: they come from the robot's own interactions and
its own depth camera, never from simulator ground truth.

`propagate_masks` works on a whole sequence at once; `WindowPropagation` gives the same result for a
sequence that grows at its end (a log being written), comparing only new captures with those within
`window` of them and holding a bounded tail of the sequence in memory.

Units: depth in metres (0 = missing), colours 0-255, masks (H,W) bool in pixels of the capture.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class PropagationConfig:
    """When a mask from one capture counts as valid in another capture of the same camera pose."""

    window: int = 40  # compare captures at most this many records apart
    depth_abs: float = 0.004  # metres of depth change tolerated per pixel
    depth_rel: float = 0.006  # plus this fraction of the depth
    min_unchanged: float = 0.97  # share of the mask's measured pixels that must be unchanged in depth
    max_color_change: float = 20.0  # mean absolute colour difference (0-255) allowed over the mask
    min_valid: float = 0.6  # share of mask pixels with depth in both captures
    pose_tol: float = 1e-4  # camera poses equal within this (metres / rotation-matrix entries)
    max_duplicate_iou: float = 0.3  # a propagated mask overlapping a kept one more than this is skipped
    max_masks: int = 12  # per frame, the frame's own mask included


def same_view(pose_a: np.ndarray, pose_b: np.ndarray, tol: float) -> bool:
    """True when two 4x4 world-from-camera poses are equal within `tol`."""
    return bool(np.max(np.abs(np.asarray(pose_a) - np.asarray(pose_b))) <= tol)


def depth_scale(depth_ref: np.ndarray, depth: np.ndarray) -> float:
    """Median ratio depth_ref / depth over pixels measured in both (undoes a global scale drift)."""
    a, b = depth_ref[::4, ::4], depth[::4, ::4]  # a sub-grid is plenty for one global factor
    both = (a > 0) & (b > 0)
    if both.sum() < 100:
        return 1.0
    return float(np.median(a[both] / b[both]))


def mask_unchanged(mask: np.ndarray, rgb_a: np.ndarray, depth_a: np.ndarray, rgb_b: np.ndarray, depth_b: np.ndarray,
                   cfg: PropagationConfig, scale_b: float = 1.0) -> bool:
    """True when the surface under `mask` looks the same in captures a and b (depth b rescaled by scale_b)."""
    m = mask
    da, db = depth_a[m], depth_b[m] * scale_b
    valid = (da > 0) & (db > 0)
    n = int(m.sum())
    if n == 0 or valid.sum() < cfg.min_valid * n:
        return False
    dz = np.abs(da[valid] - db[valid])
    ok = dz <= cfg.depth_abs + cfg.depth_rel * da[valid]
    if ok.mean() < cfg.min_unchanged:
        return False
    dc = np.abs(rgb_a[m].astype(np.int16) - rgb_b[m].astype(np.int16)).mean()
    return bool(dc <= cfg.max_color_change)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    return float(inter) / max(float(np.logical_or(a, b).sum()), 1.0)


def propagate_masks(rgb: Sequence[np.ndarray], depth: Sequence[np.ndarray], poses: Sequence[np.ndarray],
                    masks: Sequence[np.ndarray | None], cfg: PropagationConfig | None = None) -> list[list[int]]:
    """For every capture t, the indices s of captures whose mask is also valid in capture t.

    rgb/depth/poses/masks: per capture (in log order); masks[s] is None when capture s has no object
    mask (a negative). The result for t lists t itself first when it has a mask, then other sources
    nearest in time first; masks overlapping an already listed one by more than `max_duplicate_iou`
    (the same object found twice, or a mask spanning two objects) are left out.
    """
    cfg = cfg or PropagationConfig()
    n = len(depth)
    out: list[list[int]] = []
    for t in range(n):
        kept: list[int] = [t] if masks[t] is not None else []
        cands = sorted((s for s in range(max(0, t - cfg.window), min(n, t + cfg.window + 1))
                        if s != t and masks[s] is not None), key=lambda s: abs(s - t))
        for s in cands:
            if len(kept) >= cfg.max_masks:
                break
            if not same_view(poses[t], poses[s], cfg.pose_tol):
                continue
            scale = depth_scale(depth[s], depth[t])
            if not mask_unchanged(masks[s], rgb[s], depth[s], rgb[t], depth[t], cfg, scale):
                continue
            if any(_iou(masks[s], masks[k]) > cfg.max_duplicate_iou for k in kept):
                continue
            kept.append(s)
        out.append(kept)
    return out


@dataclass(frozen=True)
class Capture:
    """One capture as propagation sees it.

    key: the caller's id of the capture (returned in `WindowPropagation.extend`'s result);
    rgb (H,W,3) uint8; depth (H,W) float32 metres (0 = missing); pose 4x4 world-from-camera (m);
    mask (H,W) bool, or None when the capture has no object mask (a negative).
    """

    key: int
    rgb: np.ndarray
    depth: np.ndarray
    pose: np.ndarray
    mask: np.ndarray | None


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """(rows, columns) slices of the smallest box holding every pixel of `mask`; None if it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


class WindowPropagation:
    """`propagate_masks` over a sequence that grows at its end, one batch of captures at a time.

    After every `extend`, the known lists of all captures so far equal `propagate_masks` over the whole
    sequence (same order, same duplicates left out). Each new capture is compared only with the
    captures within `window` positions of it, and only the captures whose window holds a new one get
    a new known list. Every ordered pair (source, target) is tested once (`mask_unchanged`), and the
    result is kept while the target's window is still open.

    Memory is bounded, whatever the length: the images of the last `window` captures, the masks of
    the last 2 * `window` captures and per open capture a list of positions (about window x (H*W*8
    bytes + a mask) in all; 40 x 0.6 MB = 24 MB at 320x240).
    """

    def __init__(self, cfg: PropagationConfig | None = None):
        self.cfg = cfg or PropagationConfig()
        if self.cfg.window < 0:
            raise ValueError(f"window must be >= 0, got {self.cfg.window}")
        self.n = 0  # captures seen
        self._frames: dict[int, Capture] = {}  # position -> capture, for positions >= n - window
        self._masks: dict[int, np.ndarray] = {}  # position -> mask, positions >= n - 2 window with a mask
        self._boxes: dict[int, tuple[slice, slice] | None] = {}  # position -> its mask's bounding box (None: empty)
        self._keys: dict[int, tuple[int, bool]] = {}  # position -> (key, has a mask), same positions
        self._passed: dict[int, list[int]] = {}  # open target position -> source positions whose mask holds
        self._dup: dict[tuple[int, int], bool] = {}  # (a, b), a < b: IoU of their masks > max_duplicate_iou

    def extend(self, captures: Iterable[Capture]) -> dict[int, list[int]]:
        """Append captures (in sequence order); return key -> known keys for every capture whose known
        list may have changed (those within `window` of a new one, the new ones included)."""
        w = self.cfg.window
        out: dict[int, list[int]] = {}
        for c in captures:
            t = self.n
            self.n += 1
            self._frames[t] = c
            self._keys[t] = (int(c.key), c.mask is not None)
            if c.mask is not None:
                self._masks[t] = c.mask
                self._boxes[t] = _bounding_box(c.mask)
            self._passed[t] = []
            for s in range(max(0, t - w), t):
                if s in self._masks and self._holds(s, t):
                    self._passed[t].append(s)
                if c.mask is not None and self._holds(t, s):
                    self._passed[s].append(t)
            p = t - w  # its window just closed: its known list is final
            if p >= 0:
                out[self._keys[p][0]] = self._select(p)
                del self._passed[p]
                del self._frames[p]
                self._boxes.pop(p, None)
                for q in (p - w,):  # the next final position needs masks from p + 1 - w on
                    self._masks.pop(q, None)
                    self._keys.pop(q, None)
        for p in sorted(self._passed):  # still open
            out[self._keys[p][0]] = self._select(p)
        lo = self.n - 2 * w - 1
        if self._dup and min(self._dup)[0] < lo:
            self._dup = {k: v for k, v in self._dup.items() if k[0] >= lo}
        return out

    def _holds(self, s: int, t: int) -> bool:
        """True when source s's mask is also valid in target t (the test of `propagate_masks`)."""
        a, b = self._frames[s], self._frames[t]
        if not same_view(b.pose, a.pose, self.cfg.pose_tol):
            return False
        box = self._boxes[s]
        if box is None:  # an empty mask is never unchanged
            return False
        scale = depth_scale(a.depth, b.depth)
        # the same test on the mask's bounding box: the same pixels in the same order, a fraction of the work
        return mask_unchanged(a.mask[box], a.rgb[box], a.depth[box], b.rgb[box], b.depth[box], self.cfg, scale)

    def _duplicate(self, a: int, b: int) -> bool:
        key = (a, b) if a < b else (b, a)
        if key not in self._dup:
            self._dup[key] = _iou(self._masks[a], self._masks[b]) > self.cfg.max_duplicate_iou
        return self._dup[key]

    def _select(self, t: int) -> list[int]:
        """Known keys of position t: its own mask, then passing sources nearest first, duplicates left out."""
        kept = [t] if self._keys[t][1] else []
        for s in sorted(self._passed[t], key=lambda s: (abs(s - t), s)):
            if len(kept) >= self.cfg.max_masks:
                break
            if any(self._duplicate(s, k) for k in kept):
                continue
            kept.append(s)
        return [self._keys[k][0] for k in kept]
