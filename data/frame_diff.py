"""Frame differencing: before/after RGB-D captures of one interaction -> a noisy object mask.

The mask is in the BEFORE frame: the pixels where the object that the robot touched was before it
moved. Pathak et al.'s Algorithm 1, line 8, with the cues of an RGB-D camera:

1. A global depth-scale drift between the two captures (a stereo camera's calibration wanders) is
   removed with the median depth ratio. Change cues, restricted to the table region (pixels whose before-frame 3D point lies on the
   table, from the camera pose; table plane z = 0 in the robot frame):
   - depth grew by more than `depth_threshold` (+ a relative term for noise growing with range):
     something that stood there has left ("vacated");
   - depth shrank by as much: something arrived ("arrived"); these pixels showed the table, or an
     object further away, before — they are never part of the before-frame mask;
   - colour changed by more than `color_threshold` (max over channels, after a small blur), counted
     only where the before-frame point stands above the table (`min_height`), so the place an object
     came to rest on bare table is not mistaken for where it came from.
2. Cleaning (UOIS section V): opening, closing, removal of blobs smaller than `min_area`, hole filling.
3. The connected change that contains the interaction pixel, or comes within `touch_radius` pixels of
   it, is the mask. Nothing there -> NEGATIVE ("nothing_moved"); only a thin crescent of change (the
   object was nudged by millimetres) -> NEGATIVE ("nudged_only"). When an object only shifted, the
   part still overlapping its old place shows no change: the mask is grown into the rest of the
   object (before-frame pixels above the table, of similar colour, not across a depth jump). For a poke, the part of the changed
   region where the object went (arrived pixels) is excluded, which separates the before-footprint from
   where it went.
4. Sanity: a change that covers more than `max_area_fraction` of the table, or touches the image
   border along more than `max_border_px` pixels (for example an arm in view), gives INVALID.

Thresholds are in `FrameDiffConfig` (the loop's config exposes them). Units: depth metres, pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from data.geometry import world_points
from data.schema import Label


@dataclass
class FrameDiffConfig:
    """Thresholds of frame differencing (metres, 0-255 colour levels, pixels at 320x240; pixel sizes
    scale with the image width)."""

    depth_threshold: float = 0.004  # metres of depth change that counts
    depth_relative: float = 0.004  # plus this fraction of the depth (noise grows with range)
    color_threshold: float = 30.0  # max channel difference (0-255) after a 3x3 blur
    min_height: float = 0.006  # metres above the table for colour change to count (before frame)
    table_margin: float = 0.02  # metres beyond the table edge that still count as table region
    open_px: int = 3
    close_px: int = 5
    min_area: int = 40  # pixels; smaller blobs are noise
    touch_radius: int = 6  # pixels from the interaction point to a change that counts
    min_thickness_px: float = 3.0  # a change thinner than this (max inscribed radius) is a nudge
    max_area_fraction: float = 0.35  # of the table region
    max_border_px: int = 40
    reference_width: int = 320  # the pixel sizes above are for this image width
    grow_px: int = 12  # grow the mask at most this far into the rest of the object (partial moves)
    grow_color: float = 18.0  # max Lab distance to the mask's mean colour for growth
    grow_depth_step: float = 0.008  # metres: a larger depth jump between neighbours stops growth


@dataclass
class FrameDiffResult:
    """mask: (H,W) bool in the before frame; label: POSITIVE / NEGATIVE / INVALID; reason: why."""

    mask: np.ndarray
    label: Label
    reason: str
    vacated: np.ndarray
    arrived: np.ndarray
    changed: np.ndarray


def _disk(radius: int) -> np.ndarray:
    """An odd-sized (2r+1) elliptical structuring element: odd sizes keep the mask from shifting."""
    r = max(int(radius), 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _grow_into_object(mask, rgb, depth, height, arrived, cfg: FrameDiffConfig, px) -> np.ndarray:
    """Complete a partial footprint: when an object only shifted, the part of it that still overlaps
    its old place shows no change. Grow the mask (geodesically, <= `grow_px`) into before-frame pixels
    that stand above the table, look like the masked part (Lab distance to its mean colour) and are not
    cut off by a depth jump (an object boundary)."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    mean = lab[mask].mean(0)
    similar = np.linalg.norm(lab - mean, axis=-1) < cfg.grow_color
    raised = np.nan_to_num(height, nan=-1.0) > cfg.min_height
    z = np.where(depth > 0, depth, np.nan)
    jump = np.zeros(mask.shape, bool)
    for dz in (np.abs(np.diff(z, axis=0)), np.abs(np.diff(z, axis=1))):
        j = np.nan_to_num(dz, nan=0.0) > cfg.grow_depth_step
        if dz.shape[0] < mask.shape[0]:
            jump[1:] |= j
            jump[:-1] |= j
        else:
            jump[:, 1:] |= j
            jump[:, :-1] |= j
    allowed = similar & raised & ~jump & ~arrived
    out = mask.copy()
    cross = ndimage.generate_binary_structure(2, 1)
    for _ in range(px(cfg.grow_px)):
        grown = ndimage.binary_dilation(out, cross) & allowed
        if not (grown & ~out).any():
            break
        out |= grown
    return ndimage.binary_fill_holes(out)


def frame_difference(
    rgb_before: np.ndarray,
    depth_before: np.ndarray,
    rgb_after: np.ndarray,
    depth_after: np.ndarray,
    K: np.ndarray,
    camera_pose: np.ndarray,
    pixel: tuple[float, float],
    table_bounds: tuple[tuple[float, float], tuple[float, float]] | None = None,
    cfg: FrameDiffConfig | None = None,
) -> FrameDiffResult:
    """Extract the before-frame mask of what moved at `pixel` (u, v).

    table_bounds: ((x_min, x_max), (y_min, y_max)) of the table in the robot frame (metres); None =
    no restriction. Inputs must share one resolution; depth in metres with 0 = missing.
    """
    cfg = cfg or FrameDiffConfig()
    H, W = depth_before.shape
    for name, arr in (("rgb_before", rgb_before), ("rgb_after", rgb_after)):
        if arr.shape != (H, W, 3):
            raise ValueError(f"{name} has shape {arr.shape}, expected {(H, W, 3)} to match depth_before")
    if depth_after.shape != (H, W):
        raise ValueError(f"depth_after has shape {depth_after.shape}, expected {(H, W)}")
    s = W / cfg.reference_width
    px = lambda n: max(int(round(n * s)), 1)  # noqa: E731
    area = lambda n: max(int(round(n * s * s)), 1)  # noqa: E731

    pts = world_points(depth_before, K, camera_pose)
    height = pts[..., 2]
    table = np.ones((H, W), bool)
    if table_bounds is not None:
        (x0, x1), (y0, y1) = table_bounds
        m = cfg.table_margin
        x, y = pts[..., 0], pts[..., 1]
        table = (x > x0 - m) & (x < x1 + m) & (y > y0 - m) & (y < y1 + m)
        # pixels without depth keep the verdict of their neighbourhood
        table = np.where(np.isnan(x), ndimage.binary_dilation(table, iterations=px(3)), table)

    both = (depth_before > 0) & (depth_after > 0)
    if both.sum() > 100:  # undo a global depth-scale drift between captures (most pixels did not change)
        depth_after = depth_after * np.float32(np.median(depth_before[both] / depth_after[both]))
    thr = cfg.depth_threshold + cfg.depth_relative * np.maximum(depth_before, depth_after)
    dz = depth_after - depth_before
    vacated = both & (dz > thr)
    arrived = both & (dz < -thr)
    blur_b = cv2.blur(rgb_before, (3, 3)).astype(np.int16)
    blur_a = cv2.blur(rgb_after, (3, 3)).astype(np.int16)
    color = np.abs(blur_a - blur_b).max(-1) > cfg.color_threshold
    raised = np.nan_to_num(height, nan=1.0) > cfg.min_height  # missing depth: do not veto colour
    changed_any = (vacated | arrived | color) & table

    left = (vacated | (color & raised)) & ~arrived & table
    mask = cv2.morphologyEx(left.astype(np.uint8), cv2.MORPH_OPEN, _disk(px(cfg.open_px) // 2))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _disk(px(cfg.close_px) // 2)).astype(bool)
    mask &= ~cv2.morphologyEx(arrived.astype(np.uint8), cv2.MORPH_OPEN, _disk(1)).astype(bool)
    comps, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum(np.ones_like(mask), comps, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= area(cfg.min_area)
        comps = np.where(keep[comps], comps, 0)

    u, v = pixel
    iu, iv = int(round(np.clip(u, 0, W - 1))), int(round(np.clip(v, 0, H - 1)))
    r = px(cfg.touch_radius)
    window = comps[max(iv - r, 0) : iv + r + 1, max(iu - r, 0) : iu + r + 1]
    empty = np.zeros((H, W), bool)
    if comps[iv, iu] > 0:
        chosen = comps[iv, iu]
    elif (window > 0).any():
        wv, wu = np.nonzero(window > 0)
        d = (wv + max(iv - r, 0) - iv) ** 2 + (wu + max(iu - r, 0) - iu) ** 2
        chosen = window[wv[np.argmin(d)], wu[np.argmin(d)]]
    else:
        return FrameDiffResult(empty, Label.NEGATIVE, "nothing_moved", vacated, arrived, changed_any)
    out = ndimage.binary_fill_holes(comps == chosen)
    if ndimage.distance_transform_edt(out).max() < cfg.min_thickness_px * s:
        # a thin crescent: the object was nudged by a few millimetres, not moved
        return FrameDiffResult(empty, Label.NEGATIVE, "nudged_only", vacated, arrived, changed_any)
    if cfg.grow_px > 0:
        out = _grow_into_object(out, rgb_before, depth_before, height, arrived, cfg, px)

    if changed_any.sum() > cfg.max_area_fraction * max(int(table.sum()), 1):
        return FrameDiffResult(empty, Label.INVALID, "too_much_change", vacated, arrived, changed_any)
    border = np.concatenate([out[0], out[-1], out[:, 0], out[:, -1]]).sum()
    if border > px(cfg.max_border_px):
        return FrameDiffResult(empty, Label.INVALID, "touches_border", vacated, arrived, changed_any)
    return FrameDiffResult(out, Label.POSITIVE, "moved", vacated, arrived, changed_any)
