"""Network heads -> object hypotheses: the one proposal pipeline (numpy + OpenCV, no torch).

Every caller goes through `propose`: the agent, evaluation, the benchmarks, the torch model
(`learner.model.backend`) and the exported ONNX graph (`learner.deploy.runtime`). Parameters:
`learner.proposals.config.ProposalConfig`. Steps, for one frame:

1. seeds: 3x3 local maxima of the objectness logits with sigmoid > objectness_threshold, the
   `cfg.seeds` strongest, strongest first;
2. masks: the dynamic MLP on [F(x), (x - p)/coord_scale] at stride 4 (`decode_lowres`), logits
   upsampled bilinearly to the network input size, sigmoid > mask_threshold; only the crop that can
   exceed the threshold is upsampled (exact: a bilinear value is a convex combination of its 4
   source cells). Latent models can decode every seed with its own prior sample;
3. clean-up (`learner.proposals.cleaning`): pixels within the table gate of the support plane (input
   channel 7; table_gate_m, growing as table_gate_z2 * z^2 with range) and, with support_region, pixels
   off the support plane's extent (walls, floor, the background, missing depth joined to the image
   border; seeds there were dropped in step 1) are removed, the mask is cut along depth steps of at
   least depth_edge_m (from the input's z channel), then only the largest 4-connected component is
   kept;
4. score = mean mask probability inside the mask ("mask"), or that times the mean objectness
   probability ("objectness_x_mask"); masks smaller than min_area dropped;
5. greedy mask-IoU NMS, at most max_hypotheses;
6. contested pixels: two kept masks that share fewer than contested_overlap of the smaller one's
   pixels both lose the shared strip; masks left under min_area are dropped; scores unchanged;
7. masks resized to the frame's resolution with nearest-exact, seed points mapped to frame pixels;
8. with the frame's depth and refine_px: masks snapped to the frame's own depth (table gate at full
   resolution, growth by up to refine_px pixels into depth-continuous pixels of no other mask).

Heads (numpy, batch 1): objectness (1,1,h,w) logits, features (1,D,h,w), kernels (1,Kp,h,w) with
Kp = (D+2)*Hd + Hd + Hd + 1 laid out as w1 (Hd, D+2) row-major | b1 (Hd) | w2 (Hd) | b2 (1); latent
models add prior_logvar (1,Z,h,w).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from learner.proposals.blas import single_thread_blas
from learner.proposals.cleaning import (
    DepthEdges,
    clean_mask,
    contested_pairs,
    depth_edges,
    off_support_pixels,
    snap_to_frame,
    table_pixels,
)
from learner.proposals.config import ProposalConfig
from learner.proposals.frame import (
    InputSpec,
    bilinear,
    linear_coeffs,
    nearest_exact_index,
    resize_depth,
    scale_intrinsics,
)
from learner.proposals.plane import support_plane


@dataclass(frozen=True)
class HeadSpec:
    """The dynamic mask head's layout (the model card's "dynamic_head")."""

    embed_dim: int = 16
    dyn_hidden: int = 8
    coord_scale: float = 64.0  # relative coordinates are divided by this (input pixels)

    @property
    def num_kernel_params(self) -> int:
        D, Hd = self.embed_dim, self.dyn_hidden
        return (D + 2) * Hd + Hd + Hd + 1


@dataclass
class Proposals:
    """Hypotheses of one frame at the frame's resolution: masks (N,H,W) bool, scores (N,) float32
    (highest first), points (N,2) float32 seed pixels (u,v), and how many seeds were decoded."""

    masks: np.ndarray
    scores: np.ndarray
    points: np.ndarray
    num_seeds: int


def propose(
    heads: dict[str, np.ndarray],
    x: np.ndarray,
    cfg: ProposalConfig,
    head: HeadSpec,
    spec: InputSpec | None = None,
    output_size: tuple[int, int] | None = None,
    latent: tuple[np.ndarray, np.random.Generator] | None = None,
    frame_depth_m: np.ndarray | None = None,
    frame_K: np.ndarray | None = None,
) -> Proposals:
    """Proposals from the heads of network input x ((1,8,H,W), `learner.proposals.frame.make_input`;
    its valid, z and plane-height channels drive the clean-up). output_size: the frame's (H,W)
    (default the input size). latent: (weight (Kp,Z), rng) of a latent model: every seed decodes
    with its own prior sample, eps ~ N(0, I) float32 drawn from rng for the seeds strongest first;
    None = the prior mean. frame_depth_m / frame_K: the frame's own depth (metres, 0 = missing) and
    intrinsics, at output_size: the range-dependent table gate (cfg.table_gate_z2) reads the depth,
    and the masks are snapped to it (cfg.refine_px, `cleaning.snap_to_frame`); None: a fixed gate and
    no snapping."""
    spec = spec or InputSpec()
    H, W = int(x.shape[-2]), int(x.shape[-1])
    valid = x[0, 6] > 0.5
    height = x[0, 7] * np.float32(spec.height_scale_m)
    z_in = None if frame_depth_m is None else resize_depth(frame_depth_m, (H, W))  # the depth x was made from
    table = table_pixels(height, valid, cfg.table_gate_m, z_in, cfg.table_gate_z2)
    off = off_support_pixels(height, valid, x[0, 3:6] * np.float32(spec.xyz_scale_m), cfg.support_region)
    if off is not None:
        table = off if table is None else (table | off)
    edges = depth_edges(x[0, 5] * np.float32(spec.xyz_scale_m), valid, cfg.depth_edge_m) \
        if cfg.largest_component else None
    lat = None
    if latent is not None:
        if "prior_logvar" not in heads:
            raise ValueError("latent sampling needs a latent model's prior_logvar head")
        lat = (heads["prior_logvar"], latent[0], latent[1])
    out_hw = (H, W) if output_size is None else (int(output_size[0]), int(output_size[1]))
    masks, scores, pts, n_seeds = propose_from_heads(
        heads["objectness"], heads["features"], heads["kernels"], (H, W), head, cfg, out_hw, table, edges, lat, off)
    if cfg.refine_px > 0 and frame_depth_m is not None and frame_K is not None and len(masks):
        K_in = scale_intrinsics(np.asarray(frame_K, np.float64), W / out_hw[1], H / out_hw[0])
        plane = support_plane(z_in, K_in)  # the plane of the input's height channel (one fit per frame size)
        masks = snap_to_frame(masks, frame_depth_m, frame_K, cfg.table_gate_m, cfg.table_gate_z2, cfg.refine_px,
                              cfg.depth_edge_m, plane)
        keep = masks.reshape(len(masks), -1).any(axis=1)
        masks, scores, pts = masks[keep], scores[keep], pts[keep]
    if out_hw != (H, W):
        pts = pts.copy()
        pts[:, 0] = (pts[:, 0] + 0.5) * (out_hw[1] / W) - 0.5
        pts[:, 1] = (pts[:, 1] + 0.5) * (out_hw[0] / H) - 0.5
    return Proposals(masks, scores, pts.astype(np.float32), n_seeds)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore"):
        return (np.float32(1.0) / (np.float32(1.0) + np.exp(-x))).astype(np.float32)


def grid_centres(h: int, w: int, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    u = (np.arange(w, dtype=np.float32) + np.float32(0.5)) * np.float32(W / w) - np.float32(0.5)
    v = (np.arange(h, dtype=np.float32) + np.float32(0.5)) * np.float32(H / h) - np.float32(0.5)
    return u, v


def find_seeds(
    obj_logits: np.ndarray, threshold: float, max_seeds: int, image_size: tuple[int, int], nms_kernel: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """(h,w) objectness logits -> seed points (S,2) (u,v) in input pixels, seed probabilities (S,);
    local maxima (nms_kernel max-pool) with sigmoid > threshold, strongest first."""
    h, w = obj_logits.shape
    H, W = image_size
    r = nms_kernel // 2
    lg = obj_logits.astype(np.float32)
    pad = np.pad(lg, r, mode="constant", constant_values=-np.inf)
    pooled = np.full_like(lg, -np.inf)
    for dy in range(nms_kernel):
        for dx in range(nms_kernel):
            np.maximum(pooled, pad[dy : dy + h, dx : dx + w], out=pooled)
    keep = (lg >= pooled) & (_sigmoid(lg) > np.float32(threshold))
    score = np.where(keep, lg, -np.inf).ravel()
    k = min(int(max_seeds), h * w)
    idx = np.argsort(-score, kind="stable")[:k]
    idx = idx[np.isfinite(score[idx])]
    u, v = grid_centres(h, w, H, W)
    pts = np.stack([u[idx % w], v[idx // w]], axis=1).astype(np.float32)
    return pts.reshape(-1, 2), _sigmoid(score[idx])


def sample_at_points(maps: np.ndarray, points_uv: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Bilinearly sample (C,h,w) maps at input-pixel points -> (P,C) (border padding)."""
    C, h, w = maps.shape
    H, W = image_size
    pu = np.clip((points_uv[:, 0].astype(np.float32) + np.float32(0.5)) * np.float32(w / W) - np.float32(0.5), 0, w - 1)
    pv = np.clip((points_uv[:, 1].astype(np.float32) + np.float32(0.5)) * np.float32(h / H) - np.float32(0.5), 0, h - 1)
    u0 = np.minimum(np.floor(pu), w - 1)
    v0 = np.minimum(np.floor(pv), h - 1)
    fu, fv = (pu - u0)[:, None], (pv - v0)[:, None]
    u0i, v0i = u0.astype(np.int64), v0.astype(np.int64)
    u1i, v1i = np.minimum(u0i + 1, w - 1), np.minimum(v0i + 1, h - 1)
    flat = maps.reshape(C, h * w)

    def g(vv, uu):
        return flat[:, vv * w + uu].T

    return (
        g(v0i, u0i) * (1 - fu) * (1 - fv)
        + g(v0i, u1i) * fu * (1 - fv)
        + g(v1i, u0i) * (1 - fu) * fv
        + g(v1i, u1i) * fu * fv
    ).astype(np.float32)


def decode_lowres(
    features: np.ndarray,
    kernels: np.ndarray,
    points_uv: np.ndarray,
    image_size: tuple[int, int],
    dyn_hidden: int,
    coord_scale: float,
    param_offset: np.ndarray | None = None,
) -> np.ndarray:
    """Dynamic-head mask logits at the feature resolution: (P,h,w) float32.

    features (D,h,w), kernels (Kp,h,w) with Kp = (D+2)*Hd + Hd + Hd + 1, laid out as
    w1 (Hd, D+2) row-major | b1 (Hd) | w2 (Hd) | b2 (1). param_offset (P,Kp): added to each query's
    sampled kernel parameters (a latent model's prior sample)."""
    D, h, w = features.shape
    P = points_uv.shape[0]
    Hd = int(dyn_hidden)
    if P == 0:
        return np.zeros((0, h, w), np.float32)
    params = sample_at_points(kernels, points_uv, image_size)
    if param_offset is not None:
        params = (params + np.asarray(param_offset, np.float32)).astype(np.float32)
    n1 = (D + 2) * Hd
    w1 = params[:, :n1].reshape(P, Hd, D + 2)
    b1 = params[:, n1 : n1 + Hd]
    w2 = params[:, n1 + Hd : n1 + 2 * Hd]
    b2 = params[:, n1 + 2 * Hd]
    # w_u (x_u - p_u)/s + w_v (x_v - p_v)/s + b1 = [w_u, w_v, b1 - (w_u p_u + w_v p_v)/s] . [x_u/s, x_v/s, 1]:
    # one matmul over [F; u/s; v/s; 1] (equal to the torch einsum up to float rounding)
    u, v = grid_centres(h, w, *image_size)
    s = np.float32(coord_scale)
    grid = np.empty((3, h, w), np.float32)
    grid[0] = (u / s)[None, :]
    grid[1] = (v / s)[:, None]
    grid[2] = 1.0
    faug = np.concatenate([features.reshape(D, h * w), grid.reshape(3, h * w)], axis=0)
    pu = points_uv[:, 0:1].astype(np.float32) / s
    pv = points_uv[:, 1:2].astype(np.float32) / s
    waug = np.empty((P, Hd, D + 3), np.float32)
    waug[:, :, : D + 2] = w1
    waug[:, :, D + 2] = b1 - w1[:, :, D] * pu - w1[:, :, D + 1] * pv
    with single_thread_blas():
        hid = waug.reshape(P * Hd, D + 3) @ faug  # (P*Hd, h*w)
        np.maximum(hid, 0, out=hid)
        logits = np.matmul(w2[:, None, :], hid.reshape(P, Hd, h * w))[:, 0].reshape(P, h, w)
    logits += b2[:, None, None]
    return logits


@dataclass
class _Crop:
    """A mask stored as its bounding crop at the network input resolution."""

    y0: int
    x0: int
    mask: np.ndarray  # (hc, wc) bool
    area: int

    @property
    def y1(self) -> int:
        return self.y0 + self.mask.shape[0]

    @property
    def x1(self) -> int:
        return self.x0 + self.mask.shape[1]


def _crop_overlap(a: _Crop, b: _Crop) -> tuple[int, int, int, int, np.ndarray] | None:
    """Where two crops share pixels: the window (y0, y1, x0, x1) in network-input pixels and the
    shared pixels inside it (bool); None if their boxes do not meet."""
    y0, y1 = max(a.y0, b.y0), min(a.y1, b.y1)
    x0, x1 = max(a.x0, b.x0), min(a.x1, b.x1)
    if y0 >= y1 or x0 >= x1:
        return None
    shared = a.mask[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0] & b.mask[y0 - b.y0 : y1 - b.y0, x0 - b.x0 : x1 - b.x0]
    return y0, y1, x0, x1, shared


def _crop_iou(a: _Crop, b: _Crop) -> float:
    ov = _crop_overlap(a, b)
    inter = 0 if ov is None else int(np.count_nonzero(ov[4]))
    union = a.area + b.area - inter
    return float(np.float32(inter) / np.float32(max(union, 1)))


def _logit(p: float) -> float:
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p / (1.0 - p))


class _Upsampler:
    """Bilinear (h,w) -> (H,W) upsampling evaluated on crops (exactly the crop of the full result)."""

    def __init__(self, h: int, w: int, H: int, W: int):
        self.yi0, self.yi1, self.ya0, self.ya1 = linear_coeffs(h, H)
        self.xi0, self.xi1, self.xb0, self.xb1 = linear_coeffs(w, W)
        # output rows influenced by source rows >= r / <= r (indices are monotonic)
        self.y_first = np.searchsorted(self.yi1, np.arange(h), side="left")
        self.y_end = np.searchsorted(self.yi0, np.arange(h), side="right")
        self.x_first = np.searchsorted(self.xi1, np.arange(w), side="left")
        self.x_end = np.searchsorted(self.xi0, np.arange(w), side="right")

    def span(self, r0: int, r1: int, c0: int, c1: int) -> tuple[int, int, int, int]:
        """Output window [ya, yb) x [xa, xb) of the pixels that read any source cell in [r0,r1]x[c0,c1]."""
        return int(self.y_first[r0]), int(self.y_end[r1]), int(self.x_first[c0]), int(self.x_end[c1])

    def crop(self, L: np.ndarray, ya: int, yb: int, xa: int, xb: int) -> np.ndarray:
        # horizontal pass on the few source rows the window reads, then the vertical pass: the
        # same float operations, in the same order, as interpolating every output row
        ra, rb = int(self.yi0[ya]), int(self.yi1[yb - 1]) + 1
        rows = L[ra:rb]
        hor = rows[:, self.xi0[xa:xb]] * self.xb0[xa:xb] + rows[:, self.xi1[xa:xb]] * self.xb1[xa:xb]
        top, bot = hor[self.yi0[ya:yb] - ra], hor[self.yi1[ya:yb] - ra]
        return top * self.ya0[ya:yb, None] + bot * self.ya1[ya:yb, None]


def _nms(crops: list[_Crop], scores: list[float], iou_threshold: float, max_keep: int) -> list[int]:
    """Greedy mask NMS (sorted by score, ties in input order; at most max_keep)."""
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    kept: list[int] = []
    for i in order:
        ci = crops[i]
        ok = True
        for j in kept:
            cj = crops[j]
            # IoU <= min(area)/max(area): skip the pixel count when that bound already passes
            if min(ci.area, cj.area) <= iou_threshold * max(ci.area, cj.area):
                continue
            if _crop_iou(ci, cj) > iou_threshold:
                ok = False
                break
        if ok:
            kept.append(int(i))
            if len(kept) >= max_keep:
                break
    return kept


def _release_contested(crops: list[_Crop], max_overlap: float, min_area: int) -> list[int]:
    """`mask_cleaning.release_contested` on crops (in place; the same pairs and pixels as on the full
    masks), then the indices of the crops still holding at least min_area pixels."""
    n = len(crops)
    inter = np.zeros((n, n), np.int64)
    shared: dict[tuple[int, int], tuple[int, int, int, int, np.ndarray]] = {}
    for i in range(n):
        for j in range(i + 1, n):
            ov = _crop_overlap(crops[i], crops[j])
            if ov is not None:
                inter[i, j] = int(np.count_nonzero(ov[4]))
                shared[i, j] = ov
    areas = np.asarray([c.area for c in crops], np.int64)
    for i, j in contested_pairs(areas, inter, max_overlap):  # every window was taken from the input masks
        y0, y1, x0, x1, sh = shared[i, j]
        for c in (crops[i], crops[j]):
            c.mask[y0 - c.y0 : y1 - c.y0, x0 - c.x0 : x1 - c.x0] &= ~sh
    for c in crops:
        c.area = int(np.count_nonzero(c.mask))
    return [i for i, c in enumerate(crops) if c.area >= max(int(min_area), 1)]


def paste_masks(crops: list[_Crop], net_size: tuple[int, int], out_size: tuple[int, int]) -> np.ndarray:
    """Crops at the network resolution -> (N, H, W) bool at out_size (nearest-exact resize of the
    full masks, done on the crops)."""
    Hn, Wn = net_size
    H, W = out_size
    out = np.zeros((len(crops), H, W), bool)
    if (H, W) == (Hn, Wn):
        for n, c in enumerate(crops):
            out[n, c.y0 : c.y1, c.x0 : c.x1] = c.mask
        return out
    ri, ci = nearest_exact_index(Hn, H), nearest_exact_index(Wn, W)
    for n, c in enumerate(crops):
        Ya, Yb = np.searchsorted(ri, c.y0, "left"), np.searchsorted(ri, c.y1 - 1, "right")
        Xa, Xb = np.searchsorted(ci, c.x0, "left"), np.searchsorted(ci, c.x1 - 1, "right")
        out[n, Ya:Yb, Xa:Xb] = c.mask[ri[Ya:Yb] - c.y0][:, ci[Xa:Xb] - c.x0]
    return out


def propose_from_heads(
    objectness: np.ndarray,
    features: np.ndarray,
    kernels: np.ndarray,
    image_size: tuple[int, int],
    head: HeadSpec,
    cfg: ProposalConfig,
    output_size: tuple[int, int],
    table: np.ndarray | None,
    edges: DepthEdges | None,
    latent: tuple[np.ndarray, np.ndarray, np.random.Generator] | None = None,
    off_support: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Steps 1-7 of the module docstring on the heads ((1,)1,h,w / (1,)D,h,w / (1,)Kp,h,w) of one
    image. image_size: the network input size (H,W). table / edges: the table pixels and depth
    discontinuities at that size (None: no gate / no cut). Returns masks (N,H',W') bool at
    output_size, scores (N,) float32, seed points (N,2) in network-input pixels and the number of
    seeds. latent: (prior log-variance map ((1,)Z,h,w), weight (Kp,Z), rng) or None (prior mean).
    off_support: (H, W) bool pixels off the support region (None: none); seeds there are dropped
    (the masks lose them through `table`)."""
    dyn_hidden, coord_scale = head.dyn_hidden, head.coord_scale
    max_hypotheses, objectness_threshold, nms_iou = cfg.max_hypotheses, cfg.objectness_threshold, cfg.nms_iou
    mask_threshold, min_area, largest_component = cfg.mask_threshold, cfg.min_area, cfg.largest_component
    score, contested_overlap = cfg.score, cfg.contested_overlap
    obj = np.asarray(objectness, np.float32).reshape(objectness.shape[-2:])
    feats = np.asarray(features, np.float32).reshape(features.shape[-3:])
    kern = np.asarray(kernels, np.float32).reshape(kernels.shape[-3:])
    H, W = int(image_size[0]), int(image_size[1])
    out_size = (int(output_size[0]), int(output_size[1]))
    n_seeds = cfg.seeds
    pts, _ = find_seeds(obj, objectness_threshold, n_seeds, (H, W))
    if off_support is not None and pts.shape[0]:
        pu = np.clip(np.rint(pts[:, 0]).astype(np.int64), 0, W - 1)
        pv = np.clip(np.rint(pts[:, 1]).astype(np.int64), 0, H - 1)
        pts = pts[~off_support[pv, pu]]
    empty = (np.zeros((0, *out_size), bool), np.zeros(0, np.float32), np.zeros((0, 2), np.float32))
    if pts.shape[0] == 0:
        return (*empty, 0)
    offset = None
    if latent is not None:
        logvar, weight, rng = latent
        logvar = np.asarray(logvar, np.float32).reshape(logvar.shape[-3:])
        eps = rng.standard_normal((pts.shape[0], logvar.shape[0]), np.float32)
        sigma = np.exp(np.float32(0.5) * sample_at_points(logvar, pts, (H, W)))
        offset = (sigma * eps) @ np.asarray(weight, np.float32).T
    logits = decode_lowres(feats, kern, pts, (H, W), dyn_hidden, coord_scale, offset)
    h, w = obj.shape
    up = _Upsampler(h, w, H, W)
    obj_up = _sigmoid(bilinear(obj, H, W))
    tl = _logit(mask_threshold)
    t_logit = np.float32(tl) if math.isfinite(tl) else (np.float32(-np.inf) if tl < 0 else None)
    mthr = np.float32(mask_threshold)
    need = max(int(min_area), 1)
    if t_logit is None:  # mask_threshold >= 1: no pixel can pass
        return (*empty, int(pts.shape[0]))
    hot_all = logits > t_logit  # cells that can lift an upsampled value over the threshold
    any_rows = hot_all.any(axis=2)
    any_cols = hot_all.any(axis=1)
    crops: list[_Crop] = []
    scores: list[float] = []
    seeds: list[np.ndarray] = []
    for p in range(pts.shape[0]):
        rows, cols = np.flatnonzero(any_rows[p]), np.flatnonzero(any_cols[p])
        if rows.size == 0:
            continue
        ya, yb, xa, xb = up.span(rows[0], rows[-1], cols[0], cols[-1])
        if (yb - ya) * (xb - xa) < need:
            continue
        prob = _sigmoid(up.crop(logits[p], ya, yb, xa, xb))
        m = prob > mthr
        if table is not None or largest_component:  # the crop holds the whole mask: same components
            m = clean_mask(m, None if table is None else table[ya:yb, xa:xb], largest_component,
                           None if edges is None else edges.crop(ya, yb, xa, xb))
        area = int(np.count_nonzero(m))
        if area < need:
            continue
        sc = np.float32(np.sum(prob, where=m, dtype=np.float32)) / np.float32(area)
        if score == "objectness_x_mask":
            sc = np.float32(np.sum(obj_up[ya:yb, xa:xb], where=m, dtype=np.float32)) / np.float32(area) * sc
        crops.append(_Crop(ya, xa, m, area))
        scores.append(float(np.float32(sc)))
        seeds.append(pts[p])
    n_seed = int(pts.shape[0])
    if not crops:
        return (*empty, n_seed)
    kept = _nms(crops, scores, nms_iou, max_hypotheses)
    if contested_overlap is not None and len(kept) > 1:
        kept_crops = [crops[i] for i in kept]
        kept = [kept[i] for i in _release_contested(kept_crops, float(contested_overlap), need)]
    masks = paste_masks([crops[i] for i in kept], (H, W), out_size)
    return masks, np.asarray([scores[i] for i in kept], np.float32), np.stack([seeds[i] for i in kept]), n_seed


def interior_points(masks: np.ndarray) -> np.ndarray:
    """(N, 2) float32 (u, v) of each mask's most interior pixel (peak of the Euclidean distance to
    the nearest pixel outside the mask; the image border counts as outside; first in row-major order
    on ties); (-1, -1) for an empty mask. A natural grasp point."""
    masks = np.asarray(masks, bool)
    out = np.full((masks.shape[0], 2), -1.0, np.float32)
    for i, m in enumerate(masks):
        if not m.any():
            continue
        d = cv2.distanceTransform(np.pad(m.astype(np.uint8), 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        v, u = np.unravel_index(int(np.argmax(d)), d.shape)
        out[i] = (u, v)
    return out

