"""RISE weak/strong consistency (Sec. 3.3, App. C) for frames without labels.

- `weak_strong_pairs`: a weak view (random horizontal flip + small crop resized back) and a strong
  view (another small crop of the weak view, then colour jitter, Planckian jitter, Gaussian blur,
  grayscale and pixel noise via kornia.augmentation; depth gets sensor-like noise and dropout). The
  geometry of both views is kept as 3x3 matrices in pixel coordinates, so teacher predictions on
  the weak view can be warped onto the strong view (`WeakStrongPair.weak_to_strong`).
- `CascadeFilter`: the cascade pseudo-label filter of Eq. (6): a class-score threshold that tightens
  in steps every 1000 iterations (0.5 -> 0.85), followed by a quantile whose level decays linearly,
  p_t = a0 (1 - t / T) with a0 = 0.995, so that more predictions pass as training goes on.
- `consistency_loss`: the student's (strong view) mask logits against the teacher's (weak view,
  no gradient) binarised masks for the kept instances: BCE + dice.
- `teacher_targets` (used by the trainer when `TrainConfig.consistency_weight` > 0): the point-
  conditioned version for this project's segmenter. The teacher is the current model itself, without
  gradient and in eval mode (as RISE/FixMatch: "gradients are not computed during the forward pass of
  x_w"; no EMA copy: runs are a few hundred steps, an EMA teacher would lag far behind the student).
  On each weak view: seeds = the strongest 3x3 objectness maxima (`learner.proposals.pipeline.
  find_seeds`), teacher masks decoded there at stride 4, scored like the proposals ("mask": mean
  probability inside the mask), filtered per frame by the cascade; the kept seeds are mapped into the
  strong view (the views' pixel maps), where the student decodes its masks against the teacher
  masks warped the same way.

Pixel convention (robot/base.py): integer pixel centres; the matrices here map pixel coordinates
(u, v, 1) of the original frame to pixel coordinates of a view, which is the convention of
kornia's warp functions with align_corners=True.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia.augmentation as KA
import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine

from learner.model.network import PointSegmenter
from learner.proposals.frame import make_input
from learner.proposals.pipeline import find_seeds

__all__ = [
    "CascadeConfig",
    "CascadeFilter",
    "TeacherTargets",
    "cascade_for",
    "WeakStrongConfig",
    "WeakStrongPair",
    "consistency_loss",
    "teacher_targets",
    "warp_to_view",
    "weak_strong_pairs",
]


# ----------------------------------------------------------------------------------------------
# Weak / strong views
# ----------------------------------------------------------------------------------------------


@dataclass
class WeakStrongConfig:
    """Augmentation strengths.

    Weak view: horizontal flip with probability flip_p, then a crop whose side is a fraction in
    crop_scale of the frame (aspect kept, uniform position) resized back to the input size.
    Strong view: "another round of weak augmentations" (RISE 3.3) = a further crop of the weak view
    with side fraction in strong_crop_scale, then the strong photometric ops (RISE: colour jitter,
    Planckian jitter, Gaussian blur, grayscale; applied each with its own probability rather than
    through RandAugment) plus Gaussian pixel noise. Depth of the strong view: additive Gaussian
    noise (depth_noise_std_m) on valid pixels and random dropout to 0 (missing) with
    depth_dropout_p; depth is always resampled with nearest neighbour so that missing pixels are
    never blended with valid ones.
    """

    flip_p: float = 0.5
    crop_scale: tuple[float, float] = (0.8, 1.0)
    strong_crop_scale: tuple[float, float] = (0.9, 1.0)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    color_jitter_p: float = 0.8
    planckian_p: float = 0.5
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 9
    grayscale_p: float = 0.2
    noise_p: float = 0.5
    noise_std: float = 0.03
    depth_noise_std_m: float = 0.002
    depth_dropout_p: float = 0.01


@dataclass
class WeakStrongPair:
    """Two views of the same frames.

    weak_rgb / strong_rgb: (B,3,H,W) float in [0,1]; weak_depth / strong_depth: (B,H,W) metres,
    0 = missing. M_weak / M_strong: (B,3,3) float32 maps from original pixel coordinates to view
    pixel coordinates. flipped: (B,) bool (weak view mirrored). K_weak / K_strong: (B,3,3)
    intrinsics of the views if K was given: crops scale/shift K; a flipped view is treated as an
    image of the mirrored scene (fx > 0, cx' = W - 1 - cx), so XYZ deprojected with it is mirrored
    consistently with the image.
    """

    weak_rgb: torch.Tensor
    weak_depth: torch.Tensor
    strong_rgb: torch.Tensor
    strong_depth: torch.Tensor
    M_weak: torch.Tensor
    M_strong: torch.Tensor
    flipped: torch.Tensor
    K_weak: torch.Tensor | None = None
    K_strong: torch.Tensor | None = None

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.weak_rgb.shape[-2]), int(self.weak_rgb.shape[-1]))

    def weak_to_strong(self, x: torch.Tensor, mode: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
        """Warp maps (B,C,H,W) defined on the weak view onto the strong view.

        Returns (warped, valid) with valid (B,1,H,W) bool = strong pixels that come from inside the
        weak view. Use mode="nearest" for labels/depth, "bilinear" for logits/probabilities.
        """
        return warp_to_view(x, self.M_weak, self.M_strong, self.size, mode)

    def original_to_weak(self, x: torch.Tensor, mode: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
        eye = torch.eye(3, dtype=self.M_weak.dtype, device=self.M_weak.device).expand_as(self.M_weak)
        return warp_to_view(x, eye, self.M_weak, self.size, mode)

    def original_to_strong(self, x: torch.Tensor, mode: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
        eye = torch.eye(3, dtype=self.M_strong.dtype, device=self.M_strong.device).expand_as(self.M_strong)
        return warp_to_view(x, eye, self.M_strong, self.size, mode)


def warp_to_view(
    x: torch.Tensor, M_src: torch.Tensor, M_dst: torch.Tensor, size: tuple[int, int], mode: str = "bilinear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample maps x (B,C,h,w) living in view `src` into view `dst` (both given as original->view
    pixel maps (B,3,3)); output (B,C,H,W) with H,W = size, plus the (B,1,H,W) validity mask."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B,C,H,W), got {tuple(x.shape)}")
    B = x.shape[0]
    M = (M_dst.double() @ torch.linalg.inv(M_src.double())).to(torch.float32)
    if M.shape[0] != B:
        M = M.expand(B, 3, 3)
    M = M.to(x.device)
    xf = x.float() if not x.is_floating_point() else x
    out = warp_affine(xf, M[:, :2, :], dsize=size, mode=mode, padding_mode="zeros", align_corners=True)
    ones = torch.ones(B, 1, x.shape[-2], x.shape[-1], dtype=torch.float32, device=x.device)
    valid = warp_affine(ones, M[:, :2, :], dsize=size, mode="nearest", padding_mode="zeros", align_corners=True)
    if not x.is_floating_point():
        out = out.round().to(x.dtype)
    return out, valid > 0.5


def _crop_flip_matrix(W: int, H: int, x0: float, y0: float, cw: float, ch: float, flip: bool) -> np.ndarray:
    """Pixel map of "crop [x0, x0+cw) x [y0, y0+ch) (pixel edges), resize to W x H, then flip".

    Pixel-centre convention: u' = (u - x0 + 0.5) * W / cw - 0.5; flip: u'' = W - 1 - u'.
    """
    sx, sy = W / cw, H / ch
    M = np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5], [0.0, 0.0, 1.0]])
    if flip:
        M = np.array([[-1.0, 0.0, W - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ M
    return M


def _random_crop(rng: np.random.Generator, W: int, H: int, scale: tuple[float, float]) -> tuple[float, ...]:
    s = float(rng.uniform(scale[0], scale[1]))
    cw, ch = s * W, s * H
    x0 = float(rng.uniform(0.0, W - cw))
    y0 = float(rng.uniform(0.0, H - ch))
    return x0, y0, cw, ch


def _view_K(K: torch.Tensor, M: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Intrinsics for views given by maps M (B,3,3); flips are turned into a mirrored scene."""
    K2 = M.double() @ K.double()
    fl = flipped.to(torch.bool)
    # For a flipped view M = F @ C with F: u -> W - 1 - u. M @ K then has fx' = -s fx; the image of
    # the mirrored scene (X -> -X) has fx' = +s fx and the same cx' and skew as M @ K.
    K2[fl, 0, 0] = -K2[fl, 0, 0]
    return K2.to(K.dtype)


def _to_rgb01(rgb: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(rgb)) if isinstance(rgb, np.ndarray) else rgb
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4:
        raise ValueError(f"rgb must be 3-D or 4-D, got {tuple(t.shape)}")
    if t.shape[1] != 3 and t.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2)
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    return t.float()


def _to_depth(depth: torch.Tensor | np.ndarray, B: int) -> torch.Tensor:
    d = torch.from_numpy(np.ascontiguousarray(depth)) if isinstance(depth, np.ndarray) else depth
    d = d.float()
    if d.dim() == 2:
        d = d.unsqueeze(0)
    if d.dim() == 4 and d.shape[1] == 1:
        d = d[:, 0]
    if d.dim() != 3 or d.shape[0] != B:
        raise ValueError(f"depth must be (H,W), (B,H,W) or (B,1,H,W) with B={B}, got {tuple(d.shape)}")
    return torch.where(torch.isfinite(d) & (d > 0), d, torch.zeros_like(d))


def _strong_photometric(cfg: WeakStrongConfig) -> torch.nn.Module:
    ops: list[torch.nn.Module] = []
    if cfg.color_jitter_p > 0:
        ops.append(
            KA.ColorJiggle(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, p=cfg.color_jitter_p)
        )
    if cfg.planckian_p > 0:
        ops.append(KA.RandomPlanckianJitter(mode="blackbody", p=cfg.planckian_p))
    if cfg.blur_p > 0:
        k = cfg.blur_kernel | 1
        ops.append(KA.RandomGaussianBlur((k, k), cfg.blur_sigma, p=cfg.blur_p))
    if cfg.grayscale_p > 0:
        ops.append(KA.RandomGrayscale(p=cfg.grayscale_p))
    if cfg.noise_p > 0 and cfg.noise_std > 0:
        ops.append(KA.RandomGaussianNoise(mean=0.0, std=cfg.noise_std, p=cfg.noise_p))
    return torch.nn.Sequential(*ops)


def weak_strong_pairs(
    rgb: torch.Tensor | np.ndarray,
    depth: torch.Tensor | np.ndarray,
    rng: np.random.Generator,
    config: WeakStrongConfig | None = None,
    K: torch.Tensor | np.ndarray | None = None,
) -> WeakStrongPair:
    """Build weak and strong views of a batch.

    rgb: (B,3,H,W) float [0,1] / uint8, or (H,W,3)/(B,H,W,3) uint8 numpy; depth: (B,H,W) or (H,W)
    metres (0 = missing); K: optional (3,3) or (B,3,3) intrinsics. All randomness comes from `rng`
    (kornia's sampling runs under a forked torch RNG seeded from it), so a seed gives identical views.
    """
    cfg = config or WeakStrongConfig()
    x = _to_rgb01(rgb)
    B, _, H, W = x.shape
    d = _to_depth(depth, B).to(x.device)

    Mw, Ms, flips = [], [], []
    for _ in range(B):
        flip = bool(rng.random() < cfg.flip_p)
        x0, y0, cw, ch = _random_crop(rng, W, H, cfg.crop_scale)
        mw = _crop_flip_matrix(W, H, x0, y0, cw, ch, flip)
        x1, y1, cw1, ch1 = _random_crop(rng, W, H, cfg.strong_crop_scale)
        ms = _crop_flip_matrix(W, H, x1, y1, cw1, ch1, False) @ mw
        Mw.append(mw)
        Ms.append(ms)
        flips.append(flip)
    M_weak = torch.tensor(np.stack(Mw), dtype=torch.float32, device=x.device)
    M_strong = torch.tensor(np.stack(Ms), dtype=torch.float32, device=x.device)
    flipped = torch.tensor(flips, dtype=torch.bool, device=x.device)

    size = (H, W)
    weak_rgb = warp_affine(x, M_weak[:, :2], dsize=size, mode="bilinear", padding_mode="border", align_corners=True)
    strong_geo = warp_affine(
        x, M_strong[:, :2], dsize=size, mode="bilinear", padding_mode="border", align_corners=True
    )
    d4 = d.unsqueeze(1)
    weak_depth = warp_affine(d4, M_weak[:, :2], dsize=size, mode="nearest", align_corners=True)[:, 0]
    strong_depth = warp_affine(d4, M_strong[:, :2], dsize=size, mode="nearest", align_corners=True)[:, 0]

    seed = int(rng.integers(0, 2**31 - 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        strong_rgb = _strong_photometric(cfg)(strong_geo).clamp(0.0, 1.0)
        if cfg.depth_noise_std_m > 0 or cfg.depth_dropout_p > 0:
            valid = strong_depth > 0
            noisy = strong_depth + cfg.depth_noise_std_m * torch.randn_like(strong_depth)
            drop = torch.rand_like(strong_depth) < cfg.depth_dropout_p
            strong_depth = torch.where(valid & ~drop & (noisy > 0), noisy, torch.zeros_like(noisy))

    K_weak = K_strong = None
    if K is not None:
        Kt = torch.as_tensor(np.asarray(K) if isinstance(K, np.ndarray) else K).to(torch.float64)
        Kt = Kt.expand(B, 3, 3) if Kt.dim() == 2 else Kt
        K_weak = _view_K(Kt, M_weak.cpu(), flipped.cpu()).float().to(x.device)
        K_strong = _view_K(Kt, M_strong.cpu(), flipped.cpu()).float().to(x.device)
    return WeakStrongPair(
        weak_rgb=weak_rgb.contiguous(),
        weak_depth=weak_depth.contiguous(),
        strong_rgb=strong_rgb.contiguous(),
        strong_depth=strong_depth.contiguous(),
        M_weak=M_weak,
        M_strong=M_strong,
        flipped=flipped,
        K_weak=K_weak,
        K_strong=K_strong,
    )


# ----------------------------------------------------------------------------------------------
# Cascade pseudo-label filter (RISE Eq. 6, App. C)
# ----------------------------------------------------------------------------------------------


@dataclass
class CascadeConfig:
    """Schedule of the cascade filter, paper defaults (RISE App. C).

    total_steps: T (the paper trains 12,000 iterations).
    threshold_start / threshold_peak: the class and mask thresholds start at 0.5 and peak at 0.85.
    threshold_interval: the threshold increases every 1000 training steps.
    threshold_increment: size of each increase. The paper does not give it; None spreads the rise
        evenly so the peak is reached in the last interval before T (0.35 / 11 for T = 12,000).
    quantile_base: a0 = 0.995; the quantile level is p_t = a0 (1 - t / T).
    mask_threshold_start / mask_threshold_peak: the pixel threshold gamma^mask_t (same schedule).
    """

    total_steps: int = 12_000
    threshold_start: float = 0.5
    threshold_peak: float = 0.85
    threshold_interval: int = 1000
    threshold_increment: float | None = None
    quantile_base: float = 0.995
    mask_threshold_start: float = 0.5
    mask_threshold_peak: float = 0.85


class CascadeFilter:
    """Eq. (6): y_hat = Q(c_hat > gamma_t; p_t).

    Stage 1 (threshold, tightens): drop predictions whose class score is not above gamma_t, a step
    function rising every `threshold_interval` steps from threshold_start to threshold_peak.
    Stage 2 (quantile, loosens): among the survivors keep those ranked in the top (1 - p_t)
    fraction, i.e. at or above the p_t-quantile of their scores, with p_t = a0 (1 - t/T) decaying
    linearly from 0.995 to 0. At least one survivor is kept whenever any passes stage 1 (the top
    prediction is always at the p-quantile for p < 1). App. C phrases it as "only the top p_t are
    retained"; with p_t decaying to 0 that would keep nothing at the end, contradicting Sec. 3.3
    ("the quantile allows more predictions into the model as training progresses"), so p_t is read
    as the quantile level.
    """

    def __init__(self, config: CascadeConfig | None = None):
        self.config = config or CascadeConfig()
        c = self.config
        if c.total_steps <= 0 or c.threshold_interval <= 0:
            raise ValueError("total_steps and threshold_interval must be positive")
        n_steps = max(1, math.ceil(c.total_steps / c.threshold_interval) - 1)
        self._n_steps = n_steps

    def _stepped(self, step: int, start: float, peak: float) -> float:
        c = self.config
        k = max(0, int(step)) // c.threshold_interval
        inc = c.threshold_increment if c.threshold_increment is not None else (peak - start) / self._n_steps
        return float(min(peak, start + k * inc)) if peak >= start else float(max(peak, start + k * inc))

    def threshold(self, step: int) -> float:
        """Class-score threshold gamma^cls_t (non-decreasing step function)."""
        return self._stepped(step, self.config.threshold_start, self.config.threshold_peak)

    def mask_threshold(self, step: int) -> float:
        """Pixel threshold gamma^mask_t for binarising teacher masks (Eq. 7)."""
        return self._stepped(step, self.config.mask_threshold_start, self.config.mask_threshold_peak)

    def quantile(self, step: int) -> float:
        """Quantile level p_t = a0 (1 - t/T), t clamped to [0, T]."""
        c = self.config
        t = min(max(int(step), 0), c.total_steps)
        return float(c.quantile_base * (1.0 - t / c.total_steps))

    def select(self, scores: torch.Tensor | np.ndarray, step: int) -> torch.Tensor:
        """Boolean keep-mask for class scores (..., N) (per row over the last axis)."""
        s = torch.as_tensor(np.asarray(scores) if isinstance(scores, np.ndarray) else scores)
        s = s.detach().float()
        if s.dim() == 0:
            s = s.view(1)
        gamma = self.threshold(step)
        p = self.quantile(step)
        passed = s > gamma
        n_pass = passed.sum(dim=-1, keepdim=True)  # (..., 1)
        n_keep = torch.ceil((1.0 - p) * n_pass.double() - 1e-9).clamp(min=0).to(torch.long)
        n_keep = torch.where(n_pass > 0, n_keep.clamp(min=1), n_keep)
        # Rank the survivors (descending score; ties broken by index for determinism).
        masked = torch.where(passed, s, torch.full_like(s, -math.inf))
        order = torch.argsort(masked, dim=-1, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(-1, order, torch.arange(s.shape[-1], device=s.device).expand_as(order))
        return passed & (rank < n_keep)



# ----------------------------------------------------------------------------------------------
# Consistency loss
# ----------------------------------------------------------------------------------------------


def consistency_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    keep: torch.Tensor,
    valid: torch.Tensor | None = None,
    mask_threshold: float = 0.5,
    dice_weight: float = 1.0,
) -> torch.Tensor:
    """Strong-view student vs weak-view teacher, on the same (already aligned) pixels.

    student_logits, teacher_logits: (B,N,H,W) per-instance mask logits (or (B,1,H,W) dense
    foreground logits), already in the same view (warp the teacher with
    `WeakStrongPair.weak_to_strong`) and matched instance-by-instance. keep: bool (B,N) instances
    to learn from (e.g. `CascadeFilter.select` of the teacher's scores), or (B,N,H,W) per pixel.
    valid: optional (B,1,H,W) bool pixels where the teacher is defined (from the warp).
    The teacher is detached and binarised at `mask_threshold` (use `CascadeFilter.mask_threshold`).
    Loss = mean BCE over kept valid pixels + dice_weight * mean dice over kept instances.
    Returns 0 (still attached to the student graph) when nothing is kept.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 4:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} must be equal (B,N,H,W)"
        )
    B, N, H, W = student_logits.shape
    target = (teacher_logits.detach().float().sigmoid() > mask_threshold).float()
    keep = keep.to(torch.bool).to(student_logits.device)
    if keep.dim() == 2:
        pix = keep[:, :, None, None].expand(B, N, H, W)
        inst = keep
    elif keep.shape == student_logits.shape:
        pix = keep
        inst = keep.flatten(2).any(dim=2)
    else:
        raise ValueError(f"keep must be (B,N) or (B,N,H,W), got {tuple(keep.shape)}")
    if valid is not None:
        pix = pix & valid.to(torch.bool).to(student_logits.device).expand(B, N, H, W)
    w = pix.float()
    zero = student_logits.sum() * 0.0
    if w.sum() == 0:
        return zero
    logits = student_logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = (bce * w).sum() / w.sum()
    if dice_weight > 0 and inst.any():
        p = logits.sigmoid() * w
        t = target * w
        inter = (p * t).flatten(2).sum(-1)
        den = p.flatten(2).sum(-1) + t.flatten(2).sum(-1)
        dice = 1.0 - (2.0 * inter + 1.0) / (den + 1.0)
        loss = loss + dice_weight * dice[inst].mean()
    return loss


# ----------------------------------------------------------------------------------------------
# Teacher targets for the point-conditioned segmenter (the trainer's consistency term)
# ----------------------------------------------------------------------------------------------


def cascade_for(steps: int) -> CascadeFilter:
    """The paper's cascade schedule compressed into one training run of `steps` steps: T = steps, the
    thresholds rise 0.5 -> 0.85 in 12 stages (RISE: every 1000 of 12,000 iterations), a0 = 0.995."""
    T = max(int(steps), 1)
    return CascadeFilter(CascadeConfig(total_steps=T, threshold_interval=max(1, math.ceil(T / 12))))


def _to_map(H: int, W: int, h: int, w: int) -> torch.Tensor:
    """Pixel map "input pixels (H,W) -> cells of an (h,w) map" (pixel centres: u' = (u + 0.5) w / W - 0.5)."""
    sx, sy = w / W, h / H
    return torch.tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


@dataclass
class TeacherTargets:
    """What the student learns on the strong views (only the queries the cascade kept).

    strong_input: (B,8,H,W) network input of the strong views; batch_index (P,) view of each query;
    points (P,2) query pixels (u, v) in the strong view; teacher_logits (P,1,h,w) the teacher's stride-4
    mask logits warped into the strong view; valid (P,1,h,w) cells seen by the weak view; keep (P,1);
    mask_threshold: the teacher's pixel threshold gamma^mask_t; scores (P,) the kept masks' scores.
    """

    strong_input: torch.Tensor
    batch_index: torch.Tensor
    points: torch.Tensor
    teacher_logits: torch.Tensor
    valid: torch.Tensor
    keep: torch.Tensor
    mask_threshold: float
    scores: torch.Tensor


def _view_inputs(rgb01: torch.Tensor, depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) [0,1] views + depth + intrinsics -> (B,8,H,W) network input (learner.proposals.frame)."""
    rgb8 = (rgb01 * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    d, Kn = depth.numpy().astype(np.float32), K.double().numpy()
    return torch.from_numpy(np.concatenate([make_input(rgb8[b], d[b], Kn[b]) for b in range(len(rgb8))]))


@torch.no_grad()
def teacher_targets(
    model: PointSegmenter,
    frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    cascade: CascadeFilter,
    step: int,
    queries: int,
    views: WeakStrongConfig | None = None,
    seed_threshold: float = 0.1,
    info: dict[str, float] | None = None,
) -> TeacherTargets | None:
    """Teacher pseudo-masks for unlabelled frames [(rgb uint8 (H,W,3), depth (H,W) m, K (3,3))].

    The model (in eval mode, no gradient; its train/eval mode is restored) predicts on the weak views;
    per frame up to `queries` seeds (3x3 objectness maxima with probability > seed_threshold, strongest
    first) are decoded; each mask's score is its mean probability over the pixels above 0.5 (0 for an
    empty mask); `cascade.select(scores, step)` keeps, per frame, the seeds above the threshold gamma_t and
    then the top (1 - p_t) of those (at least one). Kept seeds that fall outside the strong view are
    dropped. Returns None when nothing is kept. `info` (if given) receives the number of teacher seeds
    ("seeds"), of masks kept ("kept") and the best mask score ("best_score").
    """
    info = {} if info is None else info
    info.update(seeds=0.0, kept=0.0, best_score=0.0)
    rgb = np.stack([f[0] for f in frames])
    depth = np.stack([f[1] for f in frames]).astype(np.float32)
    K = np.stack([np.asarray(f[2], np.float64) for f in frames])
    pair = weak_strong_pairs(rgb, depth, rng, views, K=K)
    H, W = pair.size
    was_training = model.training
    model.eval()
    try:
        out = model(_view_inputs(pair.weak_rgb, pair.weak_depth, pair.K_weak))
    finally:
        model.train(was_training)
    B = len(frames)
    h, w = out["objectness"].shape[-2:]
    seeds = [find_seeds(out["objectness"][b, 0].numpy(), seed_threshold, queries, (H, W))[0] for b in range(B)]
    bidx = torch.tensor([b for b in range(B) for _ in range(len(seeds[b]))], dtype=torch.long)
    info["seeds"] = float(len(bidx))
    if len(bidx) == 0:
        return None
    pts = torch.from_numpy(np.concatenate(seeds)).float()
    logits = model.decode(out, bidx, pts, upsample=False, image_size=(H, W))  # (P,h,w) weak view
    prob = logits.sigmoid()
    fg = prob > 0.5
    score = torch.where(fg.flatten(1).any(1), (prob * fg).flatten(1).sum(1) / fg.flatten(1).sum(1).clamp(min=1), 0.0)
    table = torch.full((B, queries), -math.inf)  # per-frame rows for the cascade (padding never passes)
    slot = torch.cat([torch.arange(len(s)) for s in seeds])
    table[bidx, slot] = score
    keep = cascade.select(table, step)[bidx, slot]
    # seed points into the strong view; keep those inside it
    M = (pair.M_strong.double() @ torch.linalg.inv(pair.M_weak.double()))[bidx]  # (P,3,3) weak -> strong
    ps = (M @ torch.cat([pts.double(), torch.ones(len(pts), 1, dtype=torch.float64)], 1)[:, :, None])[:, :2, 0]
    inside = (ps[:, 0] >= 0) & (ps[:, 0] <= W - 1) & (ps[:, 1] >= 0) & (ps[:, 1] <= H - 1)
    keep = keep & inside
    info["kept"], info["best_score"] = float(keep.sum()), float(score.max())
    if not bool(keep.any()):
        return None
    S = _to_map(H, W, h, w)
    k = keep.nonzero()[:, 0]
    warped, valid = warp_to_view(logits[k, None], S @ pair.M_weak[bidx[k]], S @ pair.M_strong[bidx[k]], (h, w))
    return TeacherTargets(
        strong_input=_view_inputs(pair.strong_rgb, pair.strong_depth, pair.K_strong),
        batch_index=bidx[k],
        points=ps[k].float(),
        teacher_logits=warped,
        valid=valid,
        keep=torch.ones(len(k), 1, dtype=torch.bool),
        mask_threshold=cascade.mask_threshold(step),
        scores=score[k],
    )
