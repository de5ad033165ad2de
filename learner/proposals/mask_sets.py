"""Distributional predictions from several segmentation samples of one image (numpy only).

Latent-MaskRCNN (Liu et al., "Distributional Instance Segmentation", Sec. IV) turns k sampled
segmentations of one image into predictions with a chosen error asymmetry:

- `confidence_masks` (Sec. IV-A, IV-B, Alg. 1): *p-confidence masks*. Each is the intersection of
  masks from m = ceil(k p) different samples, so it lies inside at least k p of the k sample masks
  (the empirical version of "contained in one object with probability >= p"). Candidates are built
  from every sample mask m_h as an anchor: from every other sample take the mask with the largest
  overlap with m_h and intersect m_h with those of the m - 1 samples where that overlap is largest.
  Score = mean score-weighted IoU with the intersected masks, (1/m) sum_j s_j |c ∩ m_j| / |c ∪ m_j|
  (= (|c|/m) sum_j s_j / |m_j| since c ⊆ m_j); masks scoring <= `min_score` (0.1 in the paper) or
  smaller than `min_area` are not returned. Output masks are disjoint. Two selection rules:
  * method "greedy" (default) is Alg. 1 as published: overlaps are |m_h ∩ m_j - M| (M = pixels already
    predicted); the highest-scoring candidate is taken, its pixels join M, affected candidates are
    recomputed, until the best score is <= min_score or `max_masks` are taken. All choices depend on
    p, and the result is not monotone in p: on random synthetic samples (tests/test_mask_sets.py
    generator, 200 draws, p 0.25 -> 1) about one p step in six produced a mask lying in no mask of
    the lower p, and the number of masks sometimes grew.
  * method "nested" makes the greedy choices once, independent of p: anchors are taken as
    tracks in order of their score-weighted IoU agreement with the other samples, skipping
    duplicates (anchors mostly inside anchors already taken); each track's members are ordered by
    overlap with its anchor; p only sets how many of them are intersected, and pixels of earlier
    tracks' anchors are excluded. So as p grows every mask shrinks inside itself or drops, and none
    appears. Measured (docs/benchmarks.md) it trades worse than "greedy": ~10% less pickable area at
    the same p and fewer double picks avoided, hence not the default.
- `union_nms` (Sec. IV-C, Alg. 2): greedy mask-IoU NMS over all masks of all samples (by score);
  every kept mask is replaced by its union with the masks it suppressed (high recall).
- The prior-mean prediction (Sec. IV-D) needs no set algorithm: it is the plain single forward pass
  (`learner.hypotheses.propose`, `Segmenter.predict`).

`sample_diversity` measures how much samples differ (used to compare samplers).

Conventions: a *sample* is a pair (masks (n, H, W) bool, scores (n,) float) in the image's own pixel
frame ((u, v) = (column, row)); all samples of one call share (H, W). k = the number of samples,
empty ones included (an object seen in no mask of a sample counts as a disagreement). Areas are in
pixels. No torch (used by the torch-free deploy runtime).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from learner.proposals.blas import single_thread_blas

__all__ = [
    "ConfidenceConfig",
    "MaskSet",
    "required_agreement",
    "confidence_masks",
    "union_nms",
    "sample_diversity",
    "stack_samples",
    "prepare_samples",
    "PreparedSamples",
    "intersection_counts",
]

Sample = tuple[np.ndarray, np.ndarray]


@dataclass
class ConfidenceConfig:
    """Options of `confidence_masks`.

    p: confidence requirement in (0, 1]; a mask must lie inside masks of ceil(k p) samples.
    min_score: masks scoring <= this are dropped (Alg. 1 stops there; 0.1 in the paper).
    min_area: candidates smaller than this (pixels, after removing already predicted pixels) are dropped.
    max_masks: at most this many masks.
    method: "greedy" (default; Alg. 1 as published) or "nested" (monotone in p); see the module docstring.
    track_overlap: nested only; an anchor with more than this share of its pixels inside anchors of
        earlier tracks is a duplicate of them and starts no track.
    """

    p: float = 0.9
    min_score: float = 0.1
    min_area: int = 16
    max_masks: int = 20
    method: str = "greedy"
    track_overlap: float = 0.5

    def validate(self) -> None:
        _check_p(self.p)
        if self.method not in ("nested", "greedy"):
            raise ValueError(f"confidence method must be 'nested' or 'greedy', got {self.method!r}")
        if not 0.0 <= float(self.track_overlap) <= 1.0:
            raise ValueError(f"track_overlap must lie in [0, 1], got {self.track_overlap}")
        if not (isinstance(self.min_score, numbers.Real) and math.isfinite(self.min_score)):
            raise ValueError(f"min_score must be a finite number, got {self.min_score!r}")
        if int(self.min_area) < 1:
            raise ValueError(f"min_area must be >= 1 pixel, got {self.min_area}")
        if int(self.max_masks) < 1:
            raise ValueError(f"max_masks must be >= 1, got {self.max_masks}")


@dataclass
class MaskSet:
    """A distributional prediction for one image.

    masks (N, H, W) bool, scores (N,) float32 sorted by decreasing score, and for every mask the
    input masks it was built from: `members[i]` is an (M_i, 2) int array of (sample index, mask
    index within that sample). For confidence masks these are the intersected masks (M_i = m); for
    Union-NMS the kept mask first, then the masks it suppressed.
    """

    masks: np.ndarray
    scores: np.ndarray
    members: list[np.ndarray] = field(default_factory=list)
    k: int = 0
    required: int = 0  # ceil(k p) for confidence masks, else 0

    def __len__(self) -> int:
        return int(self.masks.shape[0])


def _check_p(p: float) -> None:
    if not isinstance(p, numbers.Real) or isinstance(p, bool) or not math.isfinite(p) or not 0.0 < p <= 1.0:
        raise ValueError(f"confidence p must lie in (0, 1], got {p!r}")


def required_agreement(k: int, p: float) -> int:
    """m = ceil(k p): the number of samples a p-confidence mask must lie in (k >= 1, p in (0, 1]).

    A relative tolerance of 1e-9 keeps k p that is an integer up to float rounding (10 x 0.9 ->
    9.000000000000002) from rounding up."""
    _check_p(p)
    if int(k) < 1:
        raise ValueError(f"need at least one sample, got k = {k}")
    return max(1, int(math.ceil(k * p * (1.0 - 1e-9))))


def stack_samples(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Validate and flatten samples -> (masks (N,H,W) bool, scores (N,) float64, sample index (N,),
    index within the sample (N,), k)."""
    if len(samples) < 1:
        raise ValueError("need at least one sample (got an empty list)")
    shape = None
    ms, ss, sid, idx = [], [], [], []
    for g, smp in enumerate(samples):
        try:
            masks, scores = smp
        except (TypeError, ValueError):
            raise ValueError(f"sample {g} must be a pair (masks (n, H, W), scores (n,))") from None
        masks = np.asarray(masks)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if masks.ndim != 3:
            raise ValueError(f"sample {g}: masks must be (n, H, W), got shape {masks.shape}")
        if shape is None:
            shape = masks.shape[1:]
        elif masks.shape[1:] != shape:
            raise ValueError(f"sample {g}: mask size {masks.shape[1:]} differs from sample 0's {shape}")
        if scores.shape[0] != masks.shape[0]:
            raise ValueError(f"sample {g}: {masks.shape[0]} masks but {scores.shape[0]} scores")
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"sample {g}: scores must be finite")
        ms.append(masks.astype(bool, copy=False))
        ss.append(scores)
        sid.append(np.full(masks.shape[0], g, np.int64))
        idx.append(np.arange(masks.shape[0], dtype=np.int64))
    return (np.concatenate(ms), np.concatenate(ss), np.concatenate(sid), np.concatenate(idx), len(samples))


def _boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) int64 half-open (y0, y1, x0, x1); (0, 0, 0, 0) for an empty mask."""
    out = np.zeros((masks.shape[0], 4), np.int64)
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    for i in range(masks.shape[0]):
        r, c = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if r.size:
            out[i] = (r[0], r[-1] + 1, c[0], c[-1] + 1)
    return out


def _union_pixels(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels covered by any mask: (N, P) float32 indicator over them and an (H, W) int64 map from
    pixel to column (-1 outside). Pairwise products of the indicator give exact pixel counts
    (float32 sums of 0/1 are exact below 2^24 pixels)."""
    cover = masks.any(axis=0)
    col = np.full(cover.shape, -1, np.int64)
    col[cover] = np.arange(int(cover.sum()))
    return masks[:, cover].astype(np.float32), col


def _pair_counts(X: np.ndarray) -> np.ndarray:
    """(N, P) 0/1 float32 -> (N, N) float64 intersection pixel counts.

    One-thread BLAS: on a busy 2-core machine a multi-threaded product of this size was ~15x slower
    (`learner.proposals.blas`)."""
    with single_thread_blas():
        return np.rint(X @ X.T).astype(np.float64)


def intersection_counts(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool masks -> (N, N) int64 pixel counts of their pairwise intersections (the
    diagonal holds the areas); exact, one-thread BLAS (`_pair_counts`)."""
    m = np.asarray(masks, bool)
    return _pair_counts(_union_pixels(m)[0]).astype(np.int64)


@dataclass
class PreparedSamples:
    """Flattened samples plus their pairwise pixel statistics, computed once and reusable for
    several calls (e.g. confidence masks at several p). Build with `prepare_samples`."""

    masks: np.ndarray  # (N, H, W) bool
    scores: np.ndarray  # (N,) float64
    sample: np.ndarray  # (N,) sample index
    index: np.ndarray  # (N,) index within the sample
    k: int
    areas: np.ndarray  # (N,) float64 pixels
    boxes: np.ndarray  # (N, 4) half-open y0, y1, x0, x1
    X: np.ndarray  # (N, P) float32 indicator over the covered pixels
    col: np.ndarray  # (H, W) pixel -> column of X (-1 = covered by no mask)
    inter: np.ndarray  # (N, N) float64 pairwise intersection counts

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def iou(self) -> np.ndarray:
        a = self.areas
        return self.inter / np.maximum(a[:, None] + a[None, :] - self.inter, 1.0)


def prepare_samples(samples: Sequence[Sample] | PreparedSamples) -> PreparedSamples:
    """Validate, flatten and pre-compute the pairwise intersections of k samples."""
    if isinstance(samples, PreparedSamples):
        return samples
    masks, scores, sid, idx, k = stack_samples(samples)
    X, col = _union_pixels(masks)
    inter = _pair_counts(X) if masks.shape[0] else np.zeros((0, 0))
    return PreparedSamples(masks, scores, sid, idx, k, np.diag(inter).copy(), _boxes(masks), X, col, inter)


def _empty(hw: tuple[int, int], k: int, required: int = 0) -> MaskSet:
    return MaskSet(np.zeros((0, *hw), bool), np.zeros(0, np.float32), [], k, required)


def _finish(masks: list[np.ndarray], scores: list[float], members: list[np.ndarray], hw, k, req) -> MaskSet:
    if not masks:
        return _empty(hw, k, req)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return MaskSet(
        np.stack([masks[i] for i in order]),
        np.asarray([scores[i] for i in order], np.float32),
        [members[i] for i in order],
        k,
        req,
    )


# ------------------------------------------------------------------------------ p-confidence masks


def confidence_masks(
    samples: Sequence[Sample] | PreparedSamples, p: float | None = None, config: ConfidenceConfig | None = None
) -> MaskSet:
    """p-confidence masks of k samples (see the module docstring).

    samples: k pairs (masks (n_g, H, W) bool, scores (n_g,)), all (H, W), or `prepare_samples` of
    them (reused across calls). p overrides config.p.
    Every returned mask is the intersection of masks from `required = ceil(k p)` distinct samples
    (minus pixels given to other masks), hence lies inside at least that many sample masks; returned
    masks are disjoint; `members` names the intersected masks. method "nested" is also monotone: for
    p < p', every mask at p' lies inside the mask of the same object at p, and no mask appears at p'
    that has no mask at p. Deterministic (ties go to the lower flattened index)."""
    cfg = config or ConfidenceConfig()
    if p is not None:
        cfg = ConfidenceConfig(**{**cfg.__dict__, "p": p})
    cfg.validate()
    if cfg.method == "nested":
        return _confidence_nested(prepare_samples(samples), cfg)
    return _confidence_greedy(prepare_samples(samples), cfg)


def _member_lists(ps: PreparedSamples) -> tuple[list[np.ndarray], np.ndarray]:
    """For every anchor mask h: h, then from every other sample the mask with the largest |h ∩ m_j|
    (samples without any overlap left out), by decreasing overlap (ties: lower sample index); and the
    anchor's score-weighted agreement with the samples, (1/k) sum_{j in list} s_j IoU(m_h, m_j)
    (-1 for an empty mask). A mask that merges objects which the other samples separate has a low
    IoU with their masks, so it ranks below the separate masks."""
    N, k = ps.masks.shape[0], ps.k
    iou = ps.iou()
    lists, agree = [], np.full(N, -1.0)
    groups = [np.flatnonzero(ps.sample == g) for g in range(k)]
    for h in range(N):
        row = ps.inter[h]
        best_j, best_v = [], []
        for g, js in enumerate(groups):
            if g == ps.sample[h] or js.size == 0:
                continue
            t = int(np.argmax(row[js]))
            if row[js[t]] > 0:
                best_j.append(int(js[t]))
                best_v.append(row[js[t]])
        order = np.argsort(-np.asarray(best_v), kind="stable")
        mem = np.asarray([h] + [best_j[i] for i in order], np.int64)
        lists.append(mem)
        if ps.areas[h] > 0:
            agree[h] = float(np.sum(ps.scores[mem] * iou[h, mem])) / k
    return lists, agree


def _confidence_nested(ps: PreparedSamples, cfg: ConfidenceConfig) -> MaskSet:
    """Nested p-confidence masks: Alg. 1 with its greedy choices made once, independent of p.

    1. Every sample mask is an anchor with an ordered member list and an agreement (`_member_lists`).
    2. Tracks, greedily: anchors by decreasing agreement; an anchor more than `track_overlap` of
       whose pixels lie in anchors already taken is a duplicate (the same object, or a merge of
       objects already taken) and starts no track; the first `max_masks` tracks are kept.
    3. For p: m = ceil(k p); a track's mask is the intersection of its first m members minus the
       anchors of earlier tracks (so masks are disjoint). It is dropped if the track has fewer than m
       members, fewer than min_area pixels remain, or its score fell to <= min_score at any l <= m
       intersected masks. Score: the paper's mean score-weighted IoU of the mask with the m masks.
    Steps 1-2 and the exclusion in 3 do not depend on p, and the intersection only gains masks as p
    grows, hence masks shrink or drop monotonically with p and never move or appear."""
    masks, scores, sid, idx, k = ps.masks, ps.scores, ps.sample, ps.index, ps.k
    hw = ps.image_size
    m = required_agreement(k, cfg.p)
    N = masks.shape[0]
    if N == 0:
        return _empty(hw, k, m)
    lists, agree = _member_lists(ps)
    taken = np.zeros(hw, bool)
    tracks: list[tuple[int, np.ndarray]] = []  # (anchor, exclusion = union of earlier anchors)
    for h in np.argsort(-agree, kind="stable"):
        if agree[h] < 0 or len(tracks) >= int(cfg.max_masks):
            break
        if np.count_nonzero(masks[h] & taken) > cfg.track_overlap * ps.areas[h]:
            continue
        tracks.append((int(h), taken.copy()))
        taken |= masks[h]
    weight = np.where(ps.areas > 0, scores / np.maximum(ps.areas, 1.0), 0.0)
    out_masks, out_scores, out_members = [], [], []
    for h, excl in tracks:
        mem = lists[h]
        if mem.size < m:
            continue
        y0, y1, x0, x1 = (int(v) for v in ps.boxes[h])
        c = masks[h, y0:y1, x0:x1] & ~excl[y0:y1, x0:x1]
        wsum = 0.0
        ok = True
        score = 0.0
        for level in range(1, m + 1):
            j = mem[level - 1]
            if level > 1:
                c &= masks[j, y0:y1, x0:x1]
            wsum += weight[j]
            area = int(np.count_nonzero(c))
            score = area * wsum / level  # mean_j s_j |c| / |m_j|, c ⊆ m_j
            if area < int(cfg.min_area) or score <= cfg.min_score:
                ok = False
                break
        if not ok:
            continue
        full = np.zeros(hw, bool)
        full[y0:y1, x0:x1] = c
        out_masks.append(full)
        out_scores.append(float(score))
        out_members.append(np.stack([sid[mem[:m]], idx[mem[:m]]], axis=1))
    return _finish(out_masks, out_scores, out_members, hw, k, m)


def _confidence_greedy(ps: PreparedSamples, cfg: ConfidenceConfig) -> MaskSet:
    """Alg. 1 of Latent-MaskRCNN as published (see the module docstring): candidates and the greedy
    choice are recomputed after every taken mask, for this p. Not monotone in p."""
    masks, scores, sid, idx, k = ps.masks, ps.scores, ps.sample, ps.index, ps.k
    hw = ps.image_size
    m = required_agreement(k, cfg.p)
    N = masks.shape[0]
    if N == 0:
        return _empty(hw, k, m)
    areas, boxes, X, col = ps.areas, ps.boxes, ps.X, ps.col
    ok = areas > 0
    inter = ps.inter.copy()  # inter[h, j] = |m_h ∩ m_j - M|, updated as M grows
    groups = [np.flatnonzero(sid == g) for g in range(k)]
    weight = np.where(ok, scores / np.maximum(areas, 1.0), 0.0)  # s_j / |m_j|
    claimed = np.zeros(hw, bool)
    min_area = int(cfg.min_area)

    # cached candidate per anchor: None or (score, box (y0,y1,x0,x1), crop mask, members (m,))
    cand: list[tuple[float, tuple[int, int, int, int], np.ndarray, np.ndarray] | None] = [None] * N
    dirty = ok.copy()

    def build(h: int):
        row = inter[h]
        if row[h] < min_area:
            return None
        # best mask of every other sample by |m_h ∩ m_j - M|, then the m - 1 samples where it is largest
        best_j = np.full(k, -1, np.int64)
        best_v = np.zeros(k)
        for g, js in enumerate(groups):
            if g == sid[h] or js.size == 0:
                continue
            t = int(np.argmax(row[js]))
            best_j[g], best_v[g] = js[t], row[js[t]]
        if m > 1:
            order = np.argsort(-best_v, kind="stable")[: m - 1]
            if best_v[order[-1]] <= 0:
                return None  # fewer than m samples overlap the anchor at all
            mem = np.concatenate([[h], best_j[order]])
        else:
            mem = np.array([h], np.int64)
        y0, y1 = int(boxes[mem, 0].max()), int(boxes[mem, 1].min())
        x0, x1 = int(boxes[mem, 2].max()), int(boxes[mem, 3].min())
        if y1 - y0 <= 0 or x1 - x0 <= 0 or (y1 - y0) * (x1 - x0) < min_area:
            return None
        crop = ~claimed[y0:y1, x0:x1]
        for j in mem:
            crop &= masks[j, y0:y1, x0:x1]
        area = int(np.count_nonzero(crop))
        if area < min_area:
            return None
        score = area * float(weight[mem].sum()) / m  # mean_j s_j |c| / |m_j|  (c ⊆ m_j)
        return score, (y0, y1, x0, x1), crop, mem

    out_masks: list[np.ndarray] = []
    out_scores: list[float] = []
    out_members: list[np.ndarray] = []
    while len(out_masks) < int(cfg.max_masks):
        for h in np.flatnonzero(dirty):
            cand[h] = build(int(h))
        dirty[:] = False
        best, best_s = -1, -math.inf
        for h, c in enumerate(cand):
            if c is not None and c[0] > best_s:
                best, best_s = h, c[0]
        if best < 0 or best_s <= cfg.min_score:
            break
        score, (y0, y1, x0, x1), crop, mem = cand[best]
        full = np.zeros(hw, bool)
        full[y0:y1, x0:x1] = crop
        out_masks.append(full)
        out_scores.append(float(score))
        out_members.append(np.stack([sid[mem], idx[mem]], axis=1))
        claimed |= full
        # update |m_h ∩ m_j - M| for the new pixels; only anchors touching them change
        cols = col[full]
        Xc = X[:, cols]
        touched = Xc.any(axis=1)
        if touched.any():
            t = np.flatnonzero(touched)
            inter[np.ix_(t, t)] -= _pair_counts(Xc[t])
        dirty |= touched & ok
    return _finish(out_masks, out_scores, out_members, hw, k, m)


# ------------------------------------------------------------------------------------ Union-NMS


def union_nms(samples: Sequence[Sample] | PreparedSamples, iou_threshold: float = 0.5, max_masks: int | None = None) -> MaskSet:
    """Union-NMS (Alg. 2 of Latent-MaskRCNN) over all masks of all samples.

    Masks are visited by decreasing score (ties: lower flattened index). A mask not yet suppressed is
    kept and suppresses every later, not yet suppressed mask with IoU > iou_threshold; the output is
    the union of the kept mask with the masks it suppressed, scored with the kept mask's score. So
    every input mask lies inside one output mask (all of them if max_masks is None)."""
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must lie in [0, 1], got {iou_threshold}")
    if max_masks is not None and int(max_masks) < 1:
        raise ValueError(f"max_masks must be >= 1 or None, got {max_masks}")
    ps = prepare_samples(samples)
    masks, scores, sid, idx, k = ps.masks, ps.scores, ps.sample, ps.index, ps.k
    hw = ps.image_size
    N = masks.shape[0]
    if N == 0:
        return _empty(hw, k)
    iou = ps.iou()
    order = np.argsort(-scores, kind="stable")
    order = order[ps.areas[order] > 0]  # an empty mask covers nothing
    suppressed = ps.areas <= 0
    out_masks, out_scores, out_members = [], [], []
    for i in order:
        if suppressed[i]:
            continue
        suppressed[i] = True
        cand = np.flatnonzero(~suppressed & (iou[i] > float(iou_threshold)))
        suppressed[cand] = True
        g = np.concatenate([[i], cand]).astype(np.int64)
        out_masks.append(masks[g].any(axis=0))
        out_scores.append(float(scores[i]))
        out_members.append(np.stack([sid[g], idx[g]], axis=1))
        if max_masks is not None and len(out_masks) >= int(max_masks):
            break
    return _finish(out_masks, out_scores, out_members, hw, k, 0)


# ------------------------------------------------------------------------------------- diversity


def _greedy_match(iou: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """One-to-one matching of rows and columns by decreasing IoU, pairs with IoU > threshold only."""
    if iou.size == 0:
        return []
    flat = np.argsort(-iou, axis=None, kind="stable")
    used_r, used_c = set(), set()
    pairs = []
    for f in flat:
        r, c = divmod(int(f), iou.shape[1])
        v = float(iou[r, c])
        if v <= threshold:
            break
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        pairs.append((r, c, v))
    return pairs


def sample_diversity(samples: Sequence[Sample] | PreparedSamples, match_iou: float = 0.5, same_iou: float = 0.9) -> dict[str, float]:
    """How different k samples of one image are (0 = identical samples).

    For every pair of samples, masks are matched one-to-one by decreasing IoU (pairs with IoU >
    match_iou). Returns
      boundary_diversity: mean over matched pairs of 1 - IoU (extent disagreement of the same object),
      unmatched_rate: share of masks without a partner in the other sample (objects split, merged,
          missed or added), averaged over sample pairs,
      distinct_segmentations: number of different segmentations among the k samples, two samples being
          "the same" if all their masks match one-to-one with IoU >= same_iou (transitive closure),
      pixel_agreement: over pixels covered by any mask of any sample, the mean share of samples that
          cover the pixel (1 = every sample covers every such pixel),
      masks_per_sample, k, n_pairs, n_matched."""
    ps = prepare_samples(samples)
    sid, k, X = ps.sample, ps.k, ps.X
    out = {"k": float(k), "masks_per_sample": ps.masks.shape[0] / k}
    if ps.masks.shape[0] == 0 or X.shape[1] == 0:
        return out | {"boundary_diversity": 0.0, "unmatched_rate": 0.0, "distinct_segmentations": 1.0,
                      "pixel_agreement": 1.0, "n_pairs": 0.0, "n_matched": 0.0}
    iou = ps.iou()
    covered = np.zeros(X.shape[1])
    for g in range(k):
        rows = np.flatnonzero(sid == g)
        if rows.size:
            covered += X[rows].max(axis=0)
    groups = [np.flatnonzero(sid == g) for g in range(k)]
    parent = list(range(k))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    one_minus, unmatched, n_pairs = [], [], 0
    for a in range(k):
        for b in range(a + 1, k):
            ra, rb = groups[a], groups[b]
            n_pairs += 1
            pairs = _greedy_match(iou[np.ix_(ra, rb)], match_iou) if ra.size and rb.size else []
            one_minus += [1.0 - v for _, _, v in pairs]
            tot = ra.size + rb.size
            unmatched.append((tot - 2 * len(pairs)) / tot if tot else 0.0)
            same = ra.size == rb.size and (ra.size == 0 or (
                len(pairs) == ra.size and all(v >= same_iou for _, _, v in pairs)))
            if same:
                parent[find(a)] = find(b)
    return out | {
        "boundary_diversity": float(np.mean(one_minus)) if one_minus else 0.0,
        "unmatched_rate": float(np.mean(unmatched)) if unmatched else 0.0,
        "distinct_segmentations": float(len({find(g) for g in range(k)})),
        "pixel_agreement": float(np.mean(covered / k)),
        "n_pairs": float(n_pairs),
        "n_matched": float(len(one_minus)),
    }
