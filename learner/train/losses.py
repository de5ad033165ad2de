"""Losses for learning segmentation from the robot's own (noisy, partial) interaction labels.

- robust_set_target / robust_set_loss: Pathak et al., "Learning Instance Segmentation by
  Interaction" (CVPRW 2018), sec. 3.1 -- fit only a subset of the noisy mask, subject to
  IoU(target, noisy mask) >= tau.
- bce_dice_loss: plain ablation (fit the noisy mask exactly).
- objectness_loss / negative_point_loss: partial labels for the objectness map (unlabelled pixels are
  ignored; a pixel outside a moved-object mask is NOT known background).
- association_scores / association_loss: RISE (Eq. 3-4) instance association between two frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Robust set loss
# ----------------------------------------------------------------------------------------------


def _minimal_delta(
    lg: torch.Tensor,
    wrong_in: torch.Tensor,
    wrong_out: torch.Tensor,
    inter0: torch.Tensor,
    union0: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """Smallest candidate |logit| reaching IoU >= tau, per row of (P,N) logits.

    Only the wrongly classified pixels are candidates. They are gathered into one flat list and
    sorted by (row, |logit|) with a single int64 key (row << 32 | float bits, which is monotone for
    non-negative floats), so the cost scales with the number of wrong pixels, not P*N. Rows that
    cannot reach tau (tau > 1) get max |logit| (target = noisy mask).
    """
    P = lg.shape[0]
    dev = lg.device
    fallback = lg.abs().amax(dim=1)
    wrong = wrong_in | wrong_out
    rows, cols = torch.nonzero(wrong, as_tuple=True)
    n = rows.shape[0]
    if n == 0:
        return fallback
    vals = lg[rows, cols].abs().contiguous()
    key = (rows.to(torch.int64) << 32) | vals.view(torch.int32).to(torch.int64)
    key, order = torch.sort(key)
    rows, vals = rows[order], vals[order]
    is_in = wrong_in[rows, cols[order]].to(torch.int64)
    cum_in = is_in.cumsum(0)
    cum_out = (1 - is_in).cumsum(0)
    # per-row offsets: flips that belong to earlier rows
    cnt_in = torch.zeros(P, dtype=torch.int64, device=dev).index_add_(0, rows, is_in)
    cnt_all = torch.bincount(rows, minlength=P)
    before_in = cnt_in.cumsum(0) - cnt_in
    before_out = (cnt_all - cnt_in).cumsum(0) - (cnt_all - cnt_in)
    inter = inter0[rows] + cum_in - before_in[rows]
    union = union0[rows] - (cum_out - before_out[rows])
    iou = inter.to(lg.dtype) / union.clamp(min=1).to(lg.dtype)
    # a configuration is realisable only after the last of a group of equal candidates in a row
    last = torch.ones(n, dtype=torch.bool, device=dev)
    last[:-1] = key[1:] != key[:-1]
    ok = (iou >= tau) & last
    pos = torch.where(ok, torch.arange(n, device=dev), torch.full_like(rows, n))
    first = torch.full((P,), n, dtype=torch.int64, device=dev).scatter_reduce(0, rows, pos, "amin")
    found = first < n
    return torch.where(found, vals[first.clamp(max=n - 1)], fallback)


@torch.no_grad()
def robust_set_target(
    logits: torch.Tensor,
    noisy_mask: torch.Tensor,
    tau: float = 0.7,
    return_delta: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Closest-to-prediction target whose IoU with the noisy mask is at least `tau`.

    The foreground logit of every pixel is shifted by +delta inside the noisy mask and by -delta
    outside it; the target is the argmax of the shifted scores for the smallest delta >= 0 that
    gives IoU(target, noisy_mask) >= tau. For a shift delta the foreground set is

        {x in mask: logit(x) >= -delta}  U  {x outside: logit(x) > delta}

    (ties of the shifted score are resolved towards the noisy mask). Intersection grows and union
    shrinks monotonically with delta, so IoU is monotone and the minimal delta is one of 0 or the
    |logit| of a pixel the prediction gets wrong; all candidates are evaluated at once with a sort
    and cumulative sums. If the prediction (logit >= 0 inside / > 0 outside) already reaches tau,
    delta = 0 and the target is the prediction. An empty noisy mask gives an all-background target.

    logits: (H,W) or (P,H,W); noisy_mask: bool, same shape (or (H,W) broadcast over P).
    Returns bool target of the logits' shape (and delta (P,) or scalar if return_delta).
    """
    single = logits.dim() == 2
    lg = logits.detach().float()
    m = noisy_mask.to(torch.bool)
    if single:
        lg, m = lg.unsqueeze(0), m.unsqueeze(0)
    m = m.expand_as(lg)
    P = lg.shape[0]
    lg, m = lg.reshape(P, -1), m.reshape(P, -1)
    n_mask = m.sum(dim=1)

    wrong_in = m & (lg < 0)  # missed mask pixels: flip to fg once delta >= -logit
    wrong_out = ~m & (lg > 0)  # extra pixels: flip to bg once delta >= logit
    inter0 = n_mask - wrong_in.sum(dim=1)
    fp0 = wrong_out.sum(dim=1)
    iou_pred = inter0.to(lg.dtype) / (n_mask + fp0).clamp(min=1).to(lg.dtype)
    delta = _minimal_delta(lg, wrong_in, wrong_out, inter0, n_mask + fp0, tau)
    delta = torch.where(iou_pred >= tau, torch.zeros_like(delta), delta)
    empty = n_mask == 0
    delta = torch.where(empty, torch.full_like(delta, float("inf")), delta)

    dl = delta.unsqueeze(1)
    target = torch.where(m, lg >= -dl, lg > dl)
    target = target & ~empty.unsqueeze(1)
    target = target.reshape(logits.shape if not single else (1, *logits.shape))
    if single:
        target, delta = target[0], delta[0]
    return (target, delta) if return_delta else target


def robust_set_loss(
    logits: torch.Tensor,
    noisy_mask: torch.Tensor,
    tau: float = 0.7,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean BCE-with-logits against robust_set_target (no gradient through the target)."""
    target = robust_set_target(logits, noisy_mask, tau)
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), weight=weight)


def bce_dice_loss(
    logits: torch.Tensor, mask: torch.Tensor, dice_weight: float = 1.0, eps: float = 1.0
) -> torch.Tensor:
    """BCE + soft Dice against the (noisy) mask itself: the non-robust ablation. Shapes (P,H,W)/(H,W)."""
    t = mask.to(logits.dtype).expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, t)
    p = torch.sigmoid(logits)
    if logits.dim() == 2:
        p, t = p.unsqueeze(0), t.unsqueeze(0)
    p, t = p.flatten(1), t.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
    return bce + dice_weight * dice.mean()


# ----------------------------------------------------------------------------------------------
# Objectness (partial labels)
# ----------------------------------------------------------------------------------------------


def _to_map_res(regions: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B,H,W) bool/float regions -> (B,h,w) area fraction at the objectness resolution."""
    r = regions.float()
    if r.dim() == 4:
        r = r[:, 0]
    if r.shape[-2:] != tuple(hw):
        r = F.interpolate(r.unsqueeze(1), size=hw, mode="area")[:, 0]
    return r


def objectness_loss(
    objectness_logits: torch.Tensor,
    positive_regions: torch.Tensor,
    negative_regions: torch.Tensor | None = None,
    balance: bool = True,
    min_fraction: float = 0.5,
) -> torch.Tensor:
    """BCE on labelled pixels only; everything else is ignored.

    objectness_logits: (B,1,h,w). positive_regions / negative_regions: (B,H,W) bool at input or map
    resolution (a map cell counts when >= min_fraction of its area is labelled; positive wins ties).
    With balance=True the positive and negative means are averaged (each present class counts
    equally), otherwise one mean over all labelled cells. Returns 0 (with graph) if nothing labelled.
    """
    lg = objectness_logits[:, 0]
    hw = tuple(lg.shape[-2:])
    pos = _to_map_res(positive_regions, hw) >= min_fraction
    if negative_regions is None:
        neg = torch.zeros_like(pos)
    else:
        neg = (_to_map_res(negative_regions, hw) >= min_fraction) & ~pos
    per_px = F.binary_cross_entropy_with_logits(lg, pos.to(lg.dtype), reduction="none")
    if not balance:
        lab = (pos | neg).to(lg.dtype)
        return (per_px * lab).sum() / lab.sum().clamp(min=1.0)
    terms = []
    for sel in (pos, neg):
        if bool(sel.any()):
            terms.append(per_px[sel].mean())
    if not terms:
        return lg.sum() * 0.0
    return torch.stack(terms).mean()


def point_disks(
    batch_index: torch.Tensor,
    points_uv: torch.Tensor,
    radius: float,
    batch_size: int,
    map_hw: tuple[int, int],
    image_hw: tuple[int, int],
) -> torch.Tensor:
    """(B,h,w) bool: cells whose centre lies within `radius` input pixels of a point (the cell
    containing each point is always included)."""
    h, w = map_hw
    H, W = image_hw
    dev = points_uv.device
    u = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) * (W / w) - 0.5
    v = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) * (H / h) - 0.5
    pts = points_uv.float()
    d2 = (u.view(1, 1, w) - pts[:, 0].view(-1, 1, 1)) ** 2 + (v.view(1, h, 1) - pts[:, 1].view(-1, 1, 1)) ** 2
    # ensure the nearest cell is inside even for tiny radii
    r2 = max(float(radius), 0.5 * max(H / h, W / w) * 2**0.5) ** 2
    disks = d2 <= r2  # (P,h,w)
    out = torch.zeros((batch_size, h, w), dtype=torch.bool, device=dev)
    if pts.shape[0]:
        out.index_put_((batch_index.long(),), disks, accumulate=True)
    return out


def negative_point_loss(
    objectness_logits: torch.Tensor,
    batch_index: torch.Tensor,
    points_uv: torch.Tensor,
    radius: float = 8.0,
    image_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Negative interaction ("nothing moved at p"): objectness -> 0 near each negative point.

    BCE towards 0 on the map cells within `radius` input pixels of every point (the cell containing
    the point always counts). objectness_logits (B,1,h,w); batch_index (P,); points_uv (P,2) (u,v)
    in input pixels; image_size (H,W) defaults to 4x the map size. Returns 0 (with graph) for P = 0.
    """
    B, _, h, w = objectness_logits.shape
    if points_uv.shape[0] == 0:
        return objectness_logits.sum() * 0.0
    H, W = image_size if image_size is not None else (4 * h, 4 * w)
    disks = point_disks(batch_index, points_uv, radius, B, (h, w), (H, W))
    lg = objectness_logits[:, 0][disks]
    return F.binary_cross_entropy_with_logits(lg, torch.zeros_like(lg))


# ----------------------------------------------------------------------------------------------
# RISE association (Eq. 3-4)
# ----------------------------------------------------------------------------------------------


def association_scores(emb1: torch.Tensor, emb2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """RISE Eq. 3: f(i,j) = 1/2 [softmax_j(z_i.z_j) + softmax_i(z_i.z_j)], (N,M), dot products / T."""
    s = emb1 @ emb2.t() / temperature
    if s.numel() == 0:
        return s
    return 0.5 * (torch.softmax(s, dim=1) + torch.softmax(s, dim=0))


def associate(
    emb1: torch.Tensor, emb2: torch.Tensor, temperature: float = 0.1, min_score: float = 0.5
) -> list[tuple[int, int]]:
    """Matches (i, argmax_j f(i,j)) with f > min_score (RISE: positive if f > 0.5)."""
    f = association_scores(emb1, emb2, temperature)
    if f.numel() == 0:
        return []
    best, j = f.max(dim=1)
    return [(i, int(j[i])) for i in range(f.shape[0]) if float(best[i]) > min_score]


def association_loss(
    emb1: torch.Tensor,
    emb2: torch.Tensor,
    matches: Sequence[tuple[int, int]] | torch.Tensor,
    temperature: float = 0.1,
    symmetric: bool = False,
) -> torch.Tensor:
    """RISE Eq. 4 contrastive association between instance embeddings of frames x1 and x2.

    emb1 (N,E), emb2 (M,E) (L2-normalised, e.g. model.instance_embeddings); matches: pairs (i,j) of
    the same instance. For every match, with s = z.z' / T:
        L = -log exp(s(i,j)) / (exp(s(i,j)) + sum_{k != j} exp(s(i,k)))
    i.e. the positive is instance j of frame 2 and every other frame-2 instance is a negative.
    This is Eq. 4 exactly (default). symmetric=True averages it with the same term in the x2 -> x1
    direction (negatives = the other frame-1 instances), mirroring the two softmaxes of Eq. 3. Returns 0 (with graph) without matches.
    """
    if isinstance(matches, torch.Tensor):
        pairs = matches.to(torch.long).reshape(-1, 2)
    else:
        pairs = torch.tensor(list(matches), dtype=torch.long).reshape(-1, 2)
    if pairs.shape[0] == 0:
        return (emb1.sum() + emb2.sum()) * 0.0
    pairs = pairs.to(emb1.device)
    i, j = pairs[:, 0], pairs[:, 1]
    s = emb1 @ emb2.t() / temperature  # (N,M)
    loss = F.cross_entropy(s[i], j)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(s.t()[j], i))
    return loss
