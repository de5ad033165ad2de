"""Geometric clean-up of decoded object masks (numpy + OpenCV; shared by the torch proposal path in
`learner.hypotheses` and the torch-free deploy runtime `learner.segmenter_runtime`).

Two rules, both from the robot's own depth (no simulator ground truth):

- **table gate**: a pixel whose measured point lies within `gate_m` metres of the dominant plane (the
  table, fitted by RANSAC in `learner.table_plane`; the network input carries it as channel 7) is
  table, not object, and is removed from every mask. Pixels without depth are kept: a hole in the
  depth says nothing about the table. Objects lower than the gate (a sheet of paper) cannot be seen
  by this rule; 5 mm is the plane fit's inlier distance, a few times a RealSense's depth noise at
  tabletop range (val: 3, 5 and 8 mm gave the same AP50 within 0.005, 12 mm lost 0.02).
- **largest component**: UOIS-Net's mask cleaning keeps one connected blob per object; a
  point-conditioned mask that leaks onto a second, disconnected object keeps only its largest
  4-connected component.

Chosen on the val split (docs/benchmarks.md: "Proposal post-processing").
"""

from __future__ import annotations

import cv2
import numpy as np

TABLE_GATE_M = 0.005
# how a cleaned proposal is scored (learner.hypotheses; the runtime and the model card use the same
# names): "mask" = mean mask probability inside the mask (the default), "objectness_x_mask" = that
# times the mean objectness probability inside the mask (the first exports)
PROPOSAL_SCORES = ("mask", "objectness_x_mask")


def table_pixels(height_m: np.ndarray, valid: np.ndarray, gate_m: float | None = TABLE_GATE_M) -> np.ndarray | None:
    """(H, W) bool: pixels with measured depth whose height above the plane is <= gate_m metres.

    height_m: (H, W) signed height above the dominant plane in metres (0 where there is no depth or
    no plane). valid: (H, W) bool, measured depth. Returns None when gating is off (gate_m None) or
    no plane was found (the height map is all zero): then nothing is removed.
    """
    if gate_m is None:
        return None
    h = np.asarray(height_m, np.float32)
    v = np.asarray(valid, bool)
    if not np.any(h[v] != 0):
        return None
    return v & (h <= np.float32(gate_m))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a (H, W) bool mask (the mask itself if it has <= 1)."""
    m = np.asarray(mask, bool)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=4)
    if n <= 2:
        return m
    return lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def clean_mask(mask: np.ndarray, table: np.ndarray | None, keep_largest: bool) -> np.ndarray:
    """Apply the table gate (table: same-shape bool, or None) and the largest-component rule."""
    m = np.asarray(mask, bool)
    if table is not None:
        m = m & ~table
    if keep_largest and m.any():
        m = largest_component(m)
    return m
