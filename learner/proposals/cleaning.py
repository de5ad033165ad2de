"""Geometric clean-up of decoded object masks (numpy + OpenCV), steps 3 and 6 of the proposal
pipeline (`learner.proposals.pipeline`); the thresholds live in `learner.proposals.config.ProposalConfig`.

Four rules, none of them uses simulator ground truth (the first three read the robot's own depth):

- **table gate**: a pixel whose measured point lies within `gate_m` metres of the dominant plane (the
  table, fitted by RANSAC in `learner.proposals.plane`; the network input carries it as channel 7) is
  table, not object, and is removed from every mask. Pixels without depth are kept: a hole in the
  depth says nothing about the table. Objects lower than the gate (a sheet of paper) cannot be seen
  by this rule; 5 mm is the plane fit's inlier distance, a few times a RealSense's depth noise at
  tabletop range (val: 3, 5 and 8 mm gave the same AP50 within 0.005, 12 mm lost 0.02). Past 1 m
  the gate grows like the sensor noise (`table_gate_z2` * z^2): on real Kinect frames the table 1.4-1.8 m
  away lies 2-10 mm off the fitted plane and was seen as small objects.
- **off-support region** (`support_region`, ProposalConfig.support_region): masks are cut to the
  image region over the support plane's extent (`learner.proposals.plane.support_region`: points
  up to 30 cm above the plane whose foot lies in the hull of its largest inlier patch, plus enclosed
  depth holes) and seeds outside it are dropped, so walls, the floor past the table edge, the
  background and a missing-depth band at the image border never yield a hypothesis.
- **depth-edge cut**: a mask that crosses a depth discontinuity (a neighbouring pixel nearer to the
  camera by `jump_m` or more: an object in front of, or on top of, another) is cut along it before
  the largest-component rule, so it keeps one side (UOIS-Net's depth-first idea: objects are
  separated where the geometry jumps). Without it a mask that leaks onto a touching neighbour stays
  connected, and a gripper placed in it can touch two objects.
- **largest component**: UOIS-Net's mask cleaning keeps one connected blob per object; a
  point-conditioned mask that leaks onto a second, disconnected object keeps only its largest
  4-connected component.
- **contested pixels** (`release_contested`, on the final proposals of one image): where two
  proposals of *different* objects overlap (the overlap is less than `contested_overlap` of the
  smaller one), the shared pixels are removed from both: the prediction cannot tell which object
  they belong to, and a gripper placed there may touch both. Proposals that are mostly inside one
  another (a part and its whole) are alternatives, not neighbours, and keep their pixels.

Chosen on the val split (docs/benchmarks.md: "Proposal post-processing"; the cut and its 20 mm:
"Depth-edge cut of the proposals on val"; the contested-pixel share: "Contested pixels").
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from learner.proposals.config import check_contested_overlap
from learner.proposals.mask_sets import intersection_counts
from learner.proposals.plane import SupportPlane, support_plane, support_region

# depth is quantised to whole millimetres (uint16 sensors, the sim camera): a jump counts from
# jump_m - this, so that float rounding (torch vs numpy input paths) cannot flip a 20 mm step
_JUMP_TOL_M = 0.00025

def table_pixels(height_m: np.ndarray, valid: np.ndarray, gate_m: float | None,
                 z_m: np.ndarray | None = None, gate_z2: float = 0.0) -> np.ndarray | None:
    """(H, W) bool: pixels with measured depth whose height above the plane is <= the gate.

    height_m: (H, W) signed height above the support plane in metres (0 where there is no depth or
    no plane). valid: (H, W) bool, measured depth. The gate is gate_m metres, or with z_m (camera
    depth, metres) and gate_z2 > 0 max(gate_m, gate_z2 * z^2) per pixel: a depth sensor's noise grows
    with the square of the range, so the far end of a table 2 m away is not seen as objects. Returns
    None when gating is off (gate_m None) or no plane was found (the height map is all zero): then
    nothing is removed.
    """
    if gate_m is None:
        return None
    h = np.asarray(height_m, np.float32)
    v = np.asarray(valid, bool)
    if not np.any(h[v] != 0):
        return None
    gate = np.float32(gate_m)
    if z_m is not None and gate_z2 > 0:
        z = np.asarray(z_m, np.float32)
        gate = np.maximum(gate, np.float32(gate_z2) * z * z)
    return v & (h <= gate)


def off_support_pixels(height_m: np.ndarray, valid: np.ndarray, xyz_m: np.ndarray,
                       on: bool) -> np.ndarray | None:
    """(H, W) bool: pixels outside the support region (`learner.proposals.plane.support_region`;
    height_m, valid, xyz_m as there), or None when the rule is off or no plane was found."""
    if not on:
        return None
    region = support_region(height_m, valid, xyz_m)
    return None if region is None else ~region


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a (H, W) bool mask (the mask itself if it has <= 1)."""
    m = np.asarray(mask, bool)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=4)
    if n <= 2:
        return m
    return lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def contested_pairs(areas: np.ndarray, inter: np.ndarray, max_overlap: float) -> list[tuple[int, int]]:
    """Index pairs (i, j), i < j, of proposals of different objects: they share pixels, but fewer
    than max_overlap x the smaller one's area. areas (N,) and inter (N, N) are pixel counts.
    max_overlap must lie in (0, 1] (`check_contested_overlap`)."""
    share = check_contested_overlap(max_overlap)
    n = int(areas.shape[0])
    return [(i, j) for i in range(n) for j in range(i + 1, n)
            if 0 < int(inter[i, j]) < share * float(min(int(areas[i]), int(areas[j])))]


def release_contested(masks: np.ndarray, max_overlap: float | None) -> np.ndarray:
    """(N, H, W) bool proposals of one image -> the same masks without their contested pixels: every
    pixel shared by a pair of `contested_pairs` is removed from both (decided on the input masks, so
    the order does not matter). max_overlap None: the masks unchanged."""
    m = np.asarray(masks, bool)
    if max_overlap is None or m.shape[0] < 2:
        return m
    inter = intersection_counts(m)
    pairs = contested_pairs(np.diag(inter), inter, max_overlap)
    if not pairs:
        return m
    out = m.copy()
    for i, j in pairs:
        shared = m[i] & m[j]
        out[i] &= ~shared
        out[j] &= ~shared
    return out


# the 4-neighbour offsets (dv, du)
_NEIGHBOURS = ((0, 1), (0, -1), (1, 0), (-1, 0))


def _shifted(a: np.ndarray, dv: int, du: int, fill: float | bool) -> np.ndarray:
    """out[v, u] = a[v + dv, u + du] (fill outside the image)."""
    out = np.full_like(a, fill)
    H, W = a.shape
    out[max(-dv, 0):H - max(dv, 0), max(-du, 0):W - max(du, 0)] = a[max(dv, 0):H - max(-dv, 0),
                                                                    max(du, 0):W - max(-du, 0)]
    return out


@dataclass(frozen=True)
class DepthEdges:
    """The depth discontinuities of one image (see `depth_edges`).

    z_m: (H, W) float32 camera-frame depth in metres up to a constant offset, with holes filled;
    edge: (H, W) bool, pixels on the far side of a jump (a 4-neighbour nearer by jump_m or more);
    jump_m: the threshold, metres."""

    z_m: np.ndarray
    edge: np.ndarray
    jump_m: float

    def crop(self, ya: int, yb: int, xa: int, xb: int) -> DepthEdges:
        return DepthEdges(self.z_m[ya:yb, xa:xb], self.edge[ya:yb, xa:xb], self.jump_m)


def depth_edges(z_m: np.ndarray, valid: np.ndarray, jump_m: float | None,
                fill_px: int = 2) -> DepthEdges | None:
    """Depth discontinuities of one image for the depth-edge cut; None when off (jump_m None).

    z_m: (H, W) camera-frame depth (z, metres) up to a constant offset -- only differences between
    neighbouring pixels are used, so the network input's median-centred z channel works as is.
    valid: (H, W) bool, measured depth. A stereo sensor loses pixels along occlusion edges; those
    holes belong to the far surface, so missing pixels within `fill_px` pixels of measured ones first
    take the farthest measured depth around them (grey dilation), and the cut runs through them too.
    A pixel is an edge pixel when one of its 4-neighbours is nearer by jump_m or more: the edge is
    the one-pixel line on the far side of the jump, which separates the two sides 4-connectedly.
    """
    if jump_m is None:
        return None
    v = np.asarray(valid, bool)
    z = np.asarray(z_m, np.float32)
    if not v.any():
        return DepthEdges(np.zeros(z.shape, np.float32), np.zeros(z.shape, bool), float(jump_m))
    # shift to >= 1 so that 0 can mean "missing" in the dilation
    zf = np.where(v, z - np.float32(z[v].min()) + np.float32(1.0), np.float32(0.0)).astype(np.float32)
    known = v.copy()
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(int(fill_px)):
        grown = cv2.dilate(zf, kernel)
        new = ~known & (grown > 0)
        if not new.any():
            break
        zf[new] = grown[new]
        known |= new
    edge = np.zeros(z.shape, bool)
    for dv, du in _NEIGHBOURS:
        nb, nb_known = _shifted(zf, dv, du, 0.0), _shifted(known, dv, du, False)
        edge |= known & nb_known & (zf - nb >= np.float32(jump_m - _JUMP_TOL_M))
    return DepthEdges(zf, edge, float(jump_m))


def _cut_at_edges(m: np.ndarray, edges: DepthEdges) -> np.ndarray:
    """The largest 4-connected part of mask m off the depth edges, plus the edge pixels of m that
    belong to its surface (a 4-neighbour in the part that is not nearer by jump_m or more): the far
    side's boundary line comes back when the far side is kept, the near side never gains it."""
    keep = largest_component(m & ~edges.edge)
    if not keep.any():
        return keep
    cand = m & edges.edge
    same_surface = np.zeros_like(keep)
    for dv, du in _NEIGHBOURS:
        nb_keep = _shifted(keep, dv, du, False)
        nb_z = _shifted(edges.z_m, dv, du, 0.0)
        same_surface |= nb_keep & (edges.z_m - nb_z < np.float32(edges.jump_m - _JUMP_TOL_M))
    return keep | (cand & same_surface)


def clean_mask(mask: np.ndarray, table: np.ndarray | None, keep_largest: bool,
               edges: DepthEdges | None = None) -> np.ndarray:
    """Apply the table gate (table: same-shape bool, or None; the off-support pixels are merged into it), the depth-edge cut (edges of the same
    shape, or None; only together with keep_largest) and the largest-component rule."""
    m = np.asarray(mask, bool)
    if table is not None:
        m = m & ~table
    if keep_largest and m.any():
        m = _cut_at_edges(m, edges) if edges is not None else largest_component(m)
    return m


def snap_to_frame(masks: np.ndarray, depth_m: np.ndarray, K: np.ndarray, gate_m: float | None, gate_z2: float,
                  grow_px: int, jump_m: float | None, plane: SupportPlane | None = None,
                  above_m: float = 0.295) -> np.ndarray:
    """Masks decoded at the network's resolution, snapped to the frame's own depth (`refine_px`).

    masks: (N, H, W) bool at the frame's resolution, best first; depth_m: (H, W) camera depth in
    metres (0 = missing); K: (3, 3) the frame's intrinsics; plane: the support plane (camera frame;
    None: fitted on this depth). Each mask loses the table pixels of the frame (the table gate at
    full resolution: a mask pasted from a coarser grid covers blocks of table along its outline),
    then grows by up to grow_px pixels, one ring at a time, into pixels of no other mask (better
    masks first) that either have no depth (a sensor loses the pixels along an object's outline) or
    stand between the gate and above_m metres over the plane (no wall or background) and are
    depth-continuous (within jump_m metres; None: 2 cm) with the 4-neighbour of the mask they grow
    from. Returns a new (N, H, W) bool; the input when there is no plane or the gate is off."""
    if gate_m is None or len(masks) == 0:
        return masks
    d = np.asarray(depth_m, np.float32)
    valid = d > 0
    Kf = np.asarray(K, np.float64)
    h = (plane or support_plane(d, Kf)).height(d, Kf)
    table = table_pixels(h, valid, gate_m, d, gate_z2)
    if table is None:
        return masks
    free = ~valid | (~table & (h < np.float32(above_m)))
    jump = np.float32(0.02 if jump_m is None else jump_m)
    out = masks & ~table[None]
    claimed = out.any(axis=0)
    rows, cols = out.any(axis=2), out.any(axis=1)
    H, W = d.shape
    for i in range(len(out)):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if ys.size == 0:
            continue
        y0, y1 = max(int(ys[0]) - grow_px, 0), min(int(ys[-1]) + grow_px + 1, H)
        x0, x1 = max(int(xs[0]) - grow_px, 0), min(int(xs[-1]) + grow_px + 1, W)
        mc, zc = out[i, y0:y1, x0:x1].copy(), d[y0:y1, x0:x1]
        open_c = free[y0:y1, x0:x1] & ~claimed[y0:y1, x0:x1]
        for _ in range(int(grow_px)):
            ring = np.zeros_like(mc)
            for dv, du in _NEIGHBOURS:
                ring |= _shifted(mc, dv, du, False) & ((np.abs(zc - _shifted(zc, dv, du, 0.0)) < jump) | (zc <= 0))
            ring &= open_c & ~mc
            if not ring.any():
                break
            mc |= ring
            open_c &= ~ring
        out[i, y0:y1, x0:x1] = mc
        claimed[y0:y1, x0:x1] |= mc
    return out
