"""Test-time augmentation (TTA) of RGB-D frames: a sampler of segmentation hypotheses (numpy + opencv).

One sample = one randomly perturbed copy of the frame, segmented by any `predict_fn(rgb, depth, K) ->
(masks, scores)`, with its masks mapped back to the original frame. It works the same in front of the
torch model and the exported ONNX graph (`learner.proposals.segmenter`).

A `FrameTransform` is, in this order:
- an optional horizontal flip (u -> W - 1 - u); the flipped image is a valid pinhole image of the
  mirrored scene (X -> -X), so K keeps a positive focal length;
- an in-plane rotation by `roll_deg` about the image centre (a camera roll; K keeps its focal
  lengths, exact for fx = fy; up to +-15 degrees by default);
- a zoom by `scale` about the image centre ((W - 1)/2, (H - 1)/2) and a shift by
  (shift_u W, shift_v H) pixels. K is updated consistently: fx' = s fx, fy' = s fy,
  cx' = a cx + b_u, cy' = s cy + b_v (a = -s with a flip, else s; with a roll the principal point
  moves like any pixel, (cx', cy') = A (cx, cy, 1)), so the camera-frame XYZ the network sees for a
  surface point do not change (up to the mirror and the roll) -- only its image-space sampling does;
- photometric/depth noise: RGB gain, additive Gaussian depth noise (metres, valid pixels only) and
  random depth dropout (pixels set to 0 = missing).
Pixels that come from outside the original image get missing depth and replicated RGB. Geometry is in
pixels (u, v) = (column, row) with the origin at the top-left pixel centre (the project convention);
depth is float metres, 0 = missing. Masks go back with nearest-neighbour sampling of the inverse map
(an original pixel that falls outside the transformed view is outside every mask of that sample).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["TTAConfig", "FrameTransform", "make_transforms", "sample_with_transforms"]

PredictFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class TTAConfig:
    """How TTA samples are drawn (see the module docstring).

    flip: every second sample is mirrored horizontally.
    scale_range: zoom factors drawn uniformly from [lo, hi] (1 = none).
    max_shift: shifts drawn uniformly from [-max_shift, max_shift] x image width / height.
    rgb_gain: RGB multiplied by a gain from [1 - rgb_gain, 1 + rgb_gain].
    depth_noise_m: std of additive Gaussian depth noise, metres.
    depth_dropout: share of valid depth pixels set to missing.
    include_identity: sample 0 is the unperturbed frame (its hypotheses are the prior-mean prediction).
    max_roll_deg: in-plane rotations drawn uniformly from [-max_roll_deg, max_roll_deg] degrees
    (0 = none: then no rotation is drawn and the other draws are those of the code before rotations
    existed). The default 15 was chosen on val (docs/benchmarks.md "Rolled TTA views with contested pixels").
    """

    flip: bool = True
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_shift: float = 0.03
    rgb_gain: float = 0.1
    depth_noise_m: float = 0.002
    depth_dropout: float = 0.01
    include_identity: bool = True
    max_roll_deg: float = 15.0

    def validate(self) -> None:
        lo, hi = (float(x) for x in self.scale_range)
        if not (0.25 <= lo <= hi <= 4.0):
            raise ValueError(f"tta scale_range must satisfy 0.25 <= lo <= hi <= 4, got {self.scale_range}")
        for name, v, top in (("max_shift", self.max_shift, 0.5), ("rgb_gain", self.rgb_gain, 1.0),
                             ("depth_dropout", self.depth_dropout, 1.0)):
            if not (math.isfinite(float(v)) and 0.0 <= float(v) <= top):
                raise ValueError(f"tta {name} must lie in [0, {top}], got {v}")
        if not (math.isfinite(float(self.max_roll_deg)) and 0.0 <= float(self.max_roll_deg) <= 180.0):
            raise ValueError(f"tta max_roll_deg must lie in [0, 180] degrees, got {self.max_roll_deg}")
        if not (math.isfinite(float(self.depth_noise_m)) and self.depth_noise_m >= 0):
            raise ValueError(f"tta depth_noise_m must be >= 0 metres, got {self.depth_noise_m}")


@dataclass(frozen=True)
class FrameTransform:
    """One TTA perturbation (resolution independent: shifts are fractions of the image size)."""

    flip: bool = False
    scale: float = 1.0
    shift_u: float = 0.0  # fraction of the image width
    shift_v: float = 0.0  # fraction of the image height
    rgb_gain: float = 1.0
    depth_noise_m: float = 0.0
    depth_dropout: float = 0.0
    noise_seed: int = 0
    roll_deg: float = 0.0  # in-plane rotation about the image centre, degrees (applied after the flip)

    @property
    def is_identity(self) -> bool:
        return (self.is_geometric_identity and self.rgb_gain == 1.0 and self.depth_noise_m == 0.0
                and self.depth_dropout == 0.0)

    @property
    def is_geometric_identity(self) -> bool:
        return not self.flip and self._no_warp

    @property
    def _no_warp(self) -> bool:
        """No zoom, shift or rotation (at most a flip)."""
        return self.scale == 1.0 and self.shift_u == 0.0 and self.shift_v == 0.0 and self.roll_deg == 0.0

    def affine(self, height: int, width: int) -> np.ndarray:
        """(2, 3) float64 A with [u', v'] = A [u, v, 1]: original pixel -> transformed pixel."""
        s = float(self.scale)
        cu, cv = (width - 1) / 2.0, (height - 1) / 2.0
        tu, tv = self.shift_u * width, self.shift_v * height
        # p' = s R(roll) (F p - c) + c + t, with F the flip u -> 2 cu - u (F c = c)
        th = math.radians(float(self.roll_deg))
        R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        F = np.diag([-1.0, 1.0]) if self.flip else np.eye(2)
        L = s * R @ F
        c = np.array([cu, cv])
        b = -L @ c + c + np.array([tu, tv])
        return np.hstack([L, b[:, None]]).astype(np.float64)

    def intrinsics(self, K: np.ndarray, height: int, width: int) -> np.ndarray:
        """K of the transformed image (positive focal lengths; see the module docstring)."""
        A = self.affine(height, width)
        s = float(self.scale)
        K = np.asarray(K, np.float64)
        K2 = K.copy()
        K2[0, 0] = s * K[0, 0]
        K2[0, 1] = (-s if self.flip else s) * K[0, 1]
        K2[1, 1] = s * K[1, 1]
        K2[:2, 2] = A[:, :2] @ K[:2, 2] + A[:, 2]  # the principal point moves with the pixels
        return K2

    def _source_index(self, height: int, width: int, inverse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest-neighbour gather indices. inverse=False: for every transformed pixel, the original
        pixel it shows; inverse=True: for every original pixel, the transformed pixel it went to.
        Returns (rows (H, W), cols (H, W), inside (H, W) bool)."""
        A = self.affine(height, width)
        if not inverse:
            M = np.vstack([A, [0.0, 0.0, 1.0]])
            A = np.linalg.inv(M)[:2]
        u = np.arange(width, dtype=np.float64)[None, :]
        v = np.arange(height, dtype=np.float64)[:, None]
        su = A[0, 0] * u + A[0, 1] * v + A[0, 2]
        sv = A[1, 0] * u + A[1, 1] * v + A[1, 2]
        iu = np.floor(su + 0.5 + 1e-9).astype(np.int64)
        iv = np.floor(sv + 0.5 + 1e-9).astype(np.int64)
        inside = (iu >= 0) & (iu < width) & (iv >= 0) & (iv < height)
        return np.clip(iv, 0, height - 1), np.clip(iu, 0, width - 1), inside

    def apply(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Perturb one frame: rgb (H, W, 3) uint8, depth (H, W) float metres (0 = missing), K (3, 3)
        -> the same at the same size, with K for the transformed image."""
        rgb = np.asarray(rgb)
        depth = np.asarray(depth, np.float32)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        H, W = rgb.shape[:2]
        if depth.shape != (H, W):
            raise ValueError(f"depth {depth.shape} does not match rgb {(H, W)}")
        if self.is_identity:
            return rgb, depth, np.asarray(K, np.float64)
        if self.is_geometric_identity:
            r, d = rgb, depth
        elif self._no_warp:  # flip only: exact
            r, d = rgb[:, ::-1], depth[:, ::-1]
        else:
            A = self.affine(H, W)
            r = cv2.warpAffine(np.ascontiguousarray(rgb), A, (W, H), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
            rows, cols, inside = self._source_index(H, W, inverse=False)
            d = np.where(inside, depth[rows, cols], np.float32(0.0))
        r = np.ascontiguousarray(r)
        d = np.ascontiguousarray(d, np.float32)
        if self.rgb_gain != 1.0:
            r = np.clip(np.rint(r.astype(np.float32) * np.float32(self.rgb_gain)), 0, 255).astype(np.uint8)
        if self.depth_noise_m > 0 or self.depth_dropout > 0:
            rng = np.random.default_rng(self.noise_seed)
            valid = np.isfinite(d) & (d > 0)
            d = np.where(valid, d, np.float32(0.0)).astype(np.float32)
            if self.depth_noise_m > 0:
                noise = rng.normal(0.0, self.depth_noise_m, d.shape).astype(np.float32)
                d = np.where(valid, np.maximum(d + noise, np.float32(1e-4)), np.float32(0.0)).astype(np.float32)
            if self.depth_dropout > 0:
                d[valid & (rng.random(d.shape) < self.depth_dropout)] = 0.0
        return r, d, self.intrinsics(K, H, W)

    def masks_to_frame(self, masks: np.ndarray) -> np.ndarray:
        """(N, H, W) bool masks of the transformed image -> (N, H, W) bool in the original frame."""
        masks = np.asarray(masks, bool)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got {masks.shape}")
        if self.is_geometric_identity or masks.shape[0] == 0:
            return masks
        H, W = masks.shape[1:]
        if self._no_warp:
            return np.ascontiguousarray(masks[:, :, ::-1])
        rows, cols, inside = self._source_index(H, W, inverse=True)
        return masks[:, rows, cols] & inside[None]


def make_transforms(n: int, config: TTAConfig | None = None, seed: int = 0) -> list[FrameTransform]:
    """n transforms drawn from `config` with `seed` (the same arguments give the same transforms).
    With include_identity, transform 0 is the identity; flips alternate (odd indices are flipped)."""
    cfg = config or TTAConfig()
    cfg.validate()
    if int(n) < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    rng = np.random.default_rng([int(seed), 7411])
    lo, hi = (float(x) for x in cfg.scale_range)
    out = []
    for i in range(int(n)):
        if i == 0 and cfg.include_identity:
            out.append(FrameTransform())
            continue
        out.append(FrameTransform(
            flip=bool(cfg.flip and i % 2 == 1),
            scale=float(rng.uniform(lo, hi)) if hi > lo else lo,
            shift_u=float(rng.uniform(-cfg.max_shift, cfg.max_shift)),
            shift_v=float(rng.uniform(-cfg.max_shift, cfg.max_shift)),
            rgb_gain=float(rng.uniform(1.0 - cfg.rgb_gain, 1.0 + cfg.rgb_gain)),
            depth_noise_m=float(cfg.depth_noise_m),
            depth_dropout=float(cfg.depth_dropout),
            noise_seed=int(rng.integers(2**31)),
            roll_deg=float(rng.uniform(-cfg.max_roll_deg, cfg.max_roll_deg)) if cfg.max_roll_deg > 0 else 0.0,
        ))
    return out


def sample_with_transforms(
    predict_fn: PredictFn,
    rgb: np.ndarray,
    depth: np.ndarray,
    K: np.ndarray,
    transforms: Sequence[FrameTransform],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One sample per transform: predict_fn on the perturbed frame, masks mapped back to this frame.

    rgb (H, W, 3) uint8, depth (H, W) float metres (0 = missing), K (3, 3). predict_fn returns
    (masks (n, H, W) bool, scores (n,)) for the frame it is given. Returns k pairs (masks, scores)."""
    out = []
    for t in transforms:
        r, d, k = t.apply(rgb, depth, K)
        masks, scores = predict_fn(r, d, k)
        masks = np.asarray(masks, bool)
        if masks.size == 0:
            masks = np.zeros((0, *np.asarray(depth).shape), bool)
        out.append((t.masks_to_frame(masks), np.asarray(scores, np.float32).reshape(-1)))
    return out
