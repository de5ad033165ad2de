"""Whole-image, class-agnostic object hypotheses from a PointSegmenter.

1. seeds: local maxima of the objectness logits (3x3 max-pool NMS) above the threshold
   (`OBJECTNESS_THRESHOLD`), the `max_seeds` strongest per image;
2. every seed is decoded into a mask in one batch (mask = sigmoid(logit) > mask_threshold);
3. clean-up (`learner.mask_cleaning`): pixels on the table plane (height <= `table_gate_m`, read
   from the input's height channel) are removed, the mask is cut along depth steps of at least
   `depth_edge_m` (read from the input's z channel) and only the largest 4-connected component
   is kept;
4. score (`score="mask"`, the default) = mean mask probability inside the cleaned mask: how sure the
   decoder is about the region. `score="objectness_x_mask"` (the first exports) multiplies it by
   the mean objectness probability; on val the plain mask confidence ranked masks better
   (docs/benchmarks.md, "Proposal post-processing");
5. greedy mask-IoU NMS, sorted by score, at most `max_hypotheses`;
6. contested pixels (`mask_cleaning.release_contested`): pixels shared by two kept proposals of
   different objects (overlap below `contested_overlap` of the smaller one) are removed from both;
   proposals left smaller than `min_area` are dropped. Scores stay those of step 4.

`propose_from_output` works on a forward() output (torch in, torch out) and is what the trainer and
the deploy code share; `propose` wraps preprocessing + forward for one numpy/torch RGB-D frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from learner.proposals.cleaning import (
    CONTESTED_OVERLAP,
    DEPTH_EDGE_M,
    PROPOSAL_SCORES,
    TABLE_GATE_M,
    clean_mask,
    depth_edges,
    release_contested,
    table_pixels,
)
from learner.model.network import PointSegmenter, SegmenterConfig, decode_masks, grid_centres
from learner.model.preprocess import HEIGHT_SCALE_M, XYZ_SCALE_M, make_input, resize_rgbd

SCORES = PROPOSAL_SCORES
# Seed threshold on the objectness probability. Low on purpose: a seed costs one decoded mask, the
# table gate and the mask score reject the junk, and models trained on sparse labels are timid in
# objectness on small objects (val: 0.5 -> 0.1 raised AP50 by 0.04-0.08 on 2000-interaction models,
# docs/benchmarks.md "Loss on val").
OBJECTNESS_THRESHOLD = 0.1


@dataclass
class Hypotheses:
    """Proposals for one image: masks (N,H,W) bool, scores (N,) float, points (N,2) (u,v) seeds."""

    masks: torch.Tensor
    scores: torch.Tensor
    points: torch.Tensor


def find_seeds(
    objectness_logits: torch.Tensor,
    threshold: float = 0.5,
    max_seeds: int = 60,
    image_size: tuple[int, int] | None = None,
    nms_kernel: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local maxima of (B,1,h,w) objectness logits with sigmoid > threshold.

    Returns batch_index (S,), points_uv (S,2) in input pixels (cell centres), seed probabilities (S,),
    at most max_seeds per image, strongest first within each image.
    """
    B, _, h, w = objectness_logits.shape
    H, W = image_size if image_size is not None else (4 * h, 4 * w)
    lg = objectness_logits.detach()
    pooled = F.max_pool2d(lg, nms_kernel, stride=1, padding=nms_kernel // 2)
    prob = torch.sigmoid(lg)
    keep = (lg >= pooled) & (prob > threshold)
    score = torch.where(keep, lg, torch.full_like(lg, -float("inf"))).reshape(B, h * w)
    k = min(max_seeds, h * w)
    top, idx = torch.topk(score, k, dim=1)
    valid = torch.isfinite(top)
    b = torch.arange(B, device=lg.device).view(B, 1).expand(B, k)[valid]
    idx = idx[valid]
    u, v = grid_centres(h, w, H, W, device=lg.device, dtype=torch.float32)
    pts = torch.stack([u[idx % w], v[idx // w]], dim=1)
    return b, pts, torch.sigmoid(top[valid])


def mask_iou_matrix(masks: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (N,H,W) bool masks -> (N,N)."""
    m = masks.reshape(masks.shape[0], -1).float()
    inter = m @ m.t()
    area = m.sum(1)
    union = area.view(-1, 1) + area.view(1, -1) - inter
    return inter / union.clamp(min=1.0)


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5) -> torch.Tensor:
    """Greedy NMS on masks; returns kept indices sorted by decreasing score."""
    if masks.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=masks.device)
    order = torch.argsort(scores, descending=True)
    iou = mask_iou_matrix(masks[order])
    n = order.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool)
    iou_c = iou.cpu()
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou_c[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


@torch.no_grad()
def propose_from_output(
    model_or_config: PointSegmenter | SegmenterConfig,
    out: dict[str, torch.Tensor],
    image_size: tuple[int, int] | None = None,
    max_hypotheses: int = 20,
    objectness_threshold: float = OBJECTNESS_THRESHOLD,
    nms_iou: float = 0.5,
    mask_threshold: float = 0.5,
    max_seeds: int | None = None,
    min_area: int = 16,
    inputs: torch.Tensor | None = None,
    table_gate_m: float | None = TABLE_GATE_M,
    largest_component: bool = True,
    score: str = "mask",
    latent_rng: np.random.Generator | None = None,
    depth_edge_m: float | None = DEPTH_EDGE_M,
    contested_overlap: float | None = CONTESTED_OVERLAP,
) -> list[Hypotheses]:
    """Proposals for every image of a forward() output (masks at image_size = network input size).

    inputs: the (B,8,H,W) network input the output came from; its valid-depth and plane-height
    channels drive the table gate (no gate without it). table_gate_m: metres above the plane still
    counted as table (None: off). largest_component: keep each mask's largest 4-connected part.
    depth_edge_m: with largest_component, cut masks along depth steps of at least this many metres
    first (`mask_cleaning.depth_edges`, from the input's z channel; None: off; needs inputs).
    score: "mask" or "objectness_x_mask" (see the module docstring).
    contested_overlap: step 6's overlap share (None: off).
    latent_rng: latent models only: every seed decodes with its own sample of the prior
    p(z | image, seed), eps ~ N(0, I) drawn from this generator (float32, seeds strongest first, as the
    deploy runtime draws them); None = the prior mean.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    cfg = model_or_config.config if isinstance(model_or_config, PointSegmenter) else model_or_config
    obj = out["objectness"]
    B, _, h, w = obj.shape
    H, W = image_size if image_size is not None else (4 * h, 4 * w)
    n_seeds = max_seeds if max_seeds is not None else 3 * max_hypotheses
    b, pts, _ = find_seeds(obj, objectness_threshold, n_seeds, (H, W))
    results = []
    obj_up = F.interpolate(obj.float(), size=(H, W), mode="bilinear", align_corners=False)
    obj_up = torch.sigmoid(obj_up[:, 0])
    for i in range(B):
        sel = b == i
        p_i = pts[sel]
        if p_i.shape[0] == 0:
            results.append(
                Hypotheses(
                    torch.zeros((0, H, W), dtype=torch.bool, device=obj.device),
                    torch.zeros(0, device=obj.device),
                    torch.zeros((0, 2), device=obj.device),
                )
            )
            continue
        eps = None
        if latent_rng is not None and "prior_mu" in out:
            eps = torch.from_numpy(latent_rng.standard_normal((p_i.shape[0], out["prior_mu"].shape[1]), np.float32))
        prob = torch.sigmoid(decode_masks(out, b[sel], p_i, cfg, upsample=True, image_size=(H, W), latent_eps=eps))
        masks = prob > mask_threshold
        table = edges = None
        if inputs is not None and inputs.shape[-2:] == (H, W):
            xi = inputs[i].detach().cpu().numpy()
            table = table_pixels(xi[7] * HEIGHT_SCALE_M, xi[6] > 0.5, table_gate_m)
            if largest_component:
                edges = depth_edges(xi[5] * XYZ_SCALE_M, xi[6] > 0.5, depth_edge_m)
        if table is not None or largest_component:
            mn = masks.cpu().numpy()
            masks = torch.from_numpy(np.stack([clean_mask(m, table, largest_component, edges) for m in mn])
                                     ).to(masks.device)
        area = masks.sum(dim=(1, 2)).float()
        mf = masks.float()
        scores = (mf * prob).sum(dim=(1, 2)) / area.clamp(min=1)
        if score == "objectness_x_mask":
            scores = scores * (mf * obj_up[i]).sum(dim=(1, 2)) / area.clamp(min=1)
        ok = area >= max(min_area, 1)
        masks, scores, p_i = masks[ok], scores[ok], p_i[ok]
        keep = mask_nms(masks, scores, nms_iou)[:max_hypotheses]
        masks, scores, p_i = masks[keep], scores[keep], p_i[keep]
        if contested_overlap is not None and masks.shape[0] > 1:
            masks = torch.from_numpy(release_contested(masks.cpu().numpy(), contested_overlap)).to(masks.device)
            ok = masks.sum(dim=(1, 2)) >= max(min_area, 1)
            masks, scores, p_i = masks[ok], scores[ok], p_i[ok]
        results.append(Hypotheses(masks, scores, p_i))
    return results


def _network_input(model: PointSegmenter, rgb, depth, K, net_size: tuple[int, int] | None) -> torch.Tensor:
    """The (1,8,H',W') network input of one frame (resized to net_size if given)."""
    r, d, k = rgb, depth, K
    if net_size is not None and tuple(net_size) != (int(rgb.shape[0]), int(rgb.shape[1])):
        r, d, k = resize_rgbd(rgb, depth, K, net_size)
    return make_input(r, d, k, device=next(model.parameters()).device)


def _to_frame(hyp: Hypotheses, x: torch.Tensor, frame_hw: tuple[int, int], is_np: bool, return_points: bool):
    """Masks (nearest-exact) and seed points from the network input size back to the frame's pixels."""
    H, W = frame_hw
    masks, scores, pts = hyp.masks, hyp.scores, hyp.points
    if tuple(x.shape[-2:]) != (H, W):
        Hn, Wn = x.shape[-2:]
        masks = F.interpolate(masks.unsqueeze(1).float(), size=(H, W), mode="nearest-exact")[:, 0] > 0.5
        pts = torch.stack([(pts[:, 0] + 0.5) * (W / Wn) - 0.5, (pts[:, 1] + 0.5) * (H / Hn) - 0.5], dim=1)
    if is_np:
        masks, scores, pts = masks.cpu().numpy(), scores.float().cpu().numpy(), pts.cpu().numpy()
    return (masks, scores, pts) if return_points else (masks, scores)


@torch.no_grad()
def propose(
    model: PointSegmenter,
    rgb: np.ndarray | torch.Tensor,
    depth: np.ndarray | torch.Tensor,
    K: np.ndarray | torch.Tensor,
    max_hypotheses: int = 20,
    objectness_threshold: float = OBJECTNESS_THRESHOLD,
    nms_iou: float = 0.5,
    mask_threshold: float = 0.5,
    net_size: tuple[int, int] | None = None,
    return_points: bool = False,
    table_gate_m: float | None = TABLE_GATE_M,
    largest_component: bool = True,
    score: str = "mask",
    depth_edge_m: float | None = DEPTH_EDGE_M,
    contested_overlap: float | None = CONTESTED_OVERLAP,
):
    """Hypotheses for ONE RGB-D frame (rgb (H,W,3) uint8, depth (H,W) metres, K (3,3)).

    net_size: optional (H', W') the network runs at (RGB-D and K resized consistently); masks are
    always returned at the frame's own resolution. Puts the model in eval mode. A latent model gives
    its prior-mean prediction (Latent-MaskRCNN Sec. IV-D).
    Returns (masks (N,H,W) bool, scores (N,) float32) sorted by decreasing score -- numpy arrays if
    rgb is a numpy array, torch tensors otherwise -- plus seed points (N,2) (u,v) in frame pixels
    if return_points.
    """
    return propose_latent_samples(
        model, rgb, depth, K, samples=1, include_mean=True, max_hypotheses=max_hypotheses,
        objectness_threshold=objectness_threshold, nms_iou=nms_iou, mask_threshold=mask_threshold,
        net_size=net_size, return_points=return_points, table_gate_m=table_gate_m,
        largest_component=largest_component, score=score, depth_edge_m=depth_edge_m,
        contested_overlap=contested_overlap)[0]


@torch.no_grad()
def propose_latent_samples(
    model: PointSegmenter,
    rgb: np.ndarray | torch.Tensor,
    depth: np.ndarray | torch.Tensor,
    K: np.ndarray | torch.Tensor,
    samples: int,
    seed: int = 0,
    include_mean: bool = True,
    net_size: tuple[int, int] | None = None,
    return_points: bool = False,
    rng: np.random.Generator | None = None,
    **proposal_kwargs,
) -> list:
    """`samples` hypothesis sets of ONE frame from one network pass: each decodes every seed with its
    own draw from the latent prior (sample 0 is the prior mean if include_mean). For a model without a
    latent code every sample is the plain prediction. Same conventions and returns (per sample) as
    `propose`; proposal_kwargs are `propose`'s proposal parameters. rng: draw from this generator
    instead of one seeded with `seed`."""
    is_np = isinstance(rgb, np.ndarray)
    x = _network_input(model, rgb, depth, K, net_size)
    model.eval()
    out = model(x)
    if rng is None and int(samples) > int(include_mean):  # no generator for the prior mean alone (propose)
        rng = np.random.default_rng([int(seed), 2])
    res = []
    for i in range(int(samples)):
        g = None if (i == 0 and include_mean) else rng
        hyp = propose_from_output(model, out, tuple(x.shape[-2:]), inputs=x, latent_rng=g, **proposal_kwargs)[0]
        res.append(_to_frame(hyp, x, (int(rgb.shape[0]), int(rgb.shape[1])), is_np, return_points))
    return res
