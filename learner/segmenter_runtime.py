"""Torch-free runtime for an exported segmenter (numpy + onnxruntime + opencv only).

    from learner.segmenter_runtime import Segmenter
    seg = Segmenter.load("export_dir")           # or "export_dir/segmenter.onnx"
    inst = seg.predict(rgb, depth, K)            # any resolution, e.g. a 640x480 RealSense frame
    inst.masks, inst.scores                      # (N,H,W) bool at the input resolution, (N,)
    inst.label_image(), inst.boxes(), inst.areas(), inst.centroids()

`export_dir` is written by `python -m learner.deploy export` (segmenter.onnx + model_card.json). The
card carries everything this module needs (input size, normalisation, dynamic-head layout,
proposal parameters), so nothing here imports torch or any torch-using project module.

The pipeline reproduces the torch path (`learner.preprocess.resize_rgbd` + `make_input`, the
network, `learner.hypotheses.propose_from_output`, the final nearest-exact resize in
`hypotheses.propose`) in numpy with the same conventions:

- resize to the model size: RGB by area averaging when shrinking (adaptive average pooling bins),
  bilinear (pixel-centre convention) when enlarging, rounded half-to-even; depth by nearest-exact;
  K by fx' = sx fx, cx' = (cx + 0.5) sx - 0.5;
- input: RGB/255 normalised with mean/std, camera-frame XYZ centred on the per-image lower median of
  the valid points and divided by the card's scale, valid flag, height above the dominant plane
  (the same numpy code as training: learner/table_plane.py);
- seeds: 3x3 local maxima of the objectness logits with sigmoid > threshold, strongest first;
- masks: the dynamic MLP on [F(x), (x - p)/coord_scale] at stride 4, logits upsampled bilinearly to
  the model input size, sigmoid > mask_threshold; only the crop that can exceed the threshold is
  upsampled (exact: a bilinear value is a convex combination of its 4 source cells);
- clean-up (learner/mask_cleaning.py, the same code as the torch path): pixels with depth within
  table_gate_m of the plane are removed, the mask is cut along depth steps of at least depth_edge_m
  (from the input's z channel), then the largest 4-connected component is kept;
- score = mean mask probability inside the mask ("mask"), or that times the mean objectness
  probability ("objectness_x_mask", what cards without a "score" key used); masks smaller than
  min_area dropped; greedy mask-IoU NMS; at most max_hypotheses;
- masks resized to the input resolution with nearest-exact.

Distributional predictions (`Segmenter.predict_distributional`, Latent-MaskRCNN Sec. IV): k samples
of hypotheses, turned into p-confidence masks (contained in masks of >= ceil(k p) samples, disjoint;
high precision, fewer double picks) or Union-NMS masks (high recall) by `learner.mask_sets`. mode
"mean" is `predict` (the prior mean). Samplers: "mc_dropout" runs the exported MC graph
(`segmenter_mc.onnx`: the network with its head-trunk output multiplied by a per-channel input) with
Bernoulli(1 - rate) / (1 - rate) channel factors, i.e. `F.dropout2d` as `learner.sampling` applies
it in torch; "tta" (the default) perturbs the frame (`learner.tta`: flip / roll / zoom / shift with K updated
consistently, RGB gain, depth noise) and maps the masks back; "latent" (latent exports, card key
"latent") runs the network once and decodes every seed with its own draw from the learned prior
(kernel parameters + weight @ (sigma(p) * eps)); "tta_latent" does both.

Agreement with torch: the preprocessing is bit-identical when shrinking (the usual case, e.g.
640x480 -> 320x240); when enlarging, bilinear values can differ by 1 ulp, which flips a uint8
rounding only at exact .5 ties. Network heads agree to ~1e-6. Masks agree except for pixels whose
logit is within float rounding of the threshold; scores agree to ~1e-7.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from learner.mask_cleaning import (
    PROPOSAL_SCORES,
    DepthEdges,
    clean_mask,
    contested_pairs,
    depth_edges,
    table_pixels,
)
from learner.mask_sets import ConfidenceConfig, MaskSet, confidence_masks, union_nms
from learner.table_plane import height_above_plane
from learner.tta import TTAConfig, make_transforms, sample_with_transforms

CARD_NAME = "model_card.json"
ONNX_NAME = "segmenter.onnx"
CARD_METADATA_KEY = "model_card"  # the card is also embedded in the ONNX metadata
INPUT_NAME = "input"
OUTPUT_NAMES = ("objectness", "features", "kernels")
MC_ONNX_NAME = "segmenter_mc.onnx"  # the same network with a per-channel factor on the head trunk (MC dropout)
MC_INPUT_NAME = "trunk_scale"
LATENT_OUTPUT = "prior_logvar"  # extra graph output of latent models (card "latent")
SAMPLERS = ("tta", "mc_dropout", "latent", "tta_latent")  # predict_samples / predict_distributional samplers, default first
DEFAULT_DROPOUT_RATE = 0.1

# plausibility limits for the depth unit check
MAX_DEPTH_M = 20.0  # float depth whose median is above this is almost surely millimetres

__all__ = ["Segmenter", "Instances", "InputError", "ModelError", "check_inputs", "interior_points", "CARD_NAME",
           "ONNX_NAME", "MC_ONNX_NAME", "MODES", "SAMPLERS", "LATENT_OUTPUT"]

MODES = ("mean", "confidence", "union")  # predict_distributional modes


class InputError(ValueError):
    """An RGB-D frame or intrinsics that cannot be used (the message names the problem)."""


class ModelError(ValueError):
    """A missing or malformed exported model."""


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass
class Instances:
    """Object hypotheses for one frame, at the frame's own resolution.

    masks (N,H,W) bool, scores (N,) float32 (sorted, highest first), points (N,2) float32 seed pixels
    (u,v). depth (H,W) float32 metres (0 = missing) and K (3,3) are the frame's, kept for the 3D
    helpers.
    """

    masks: np.ndarray
    scores: np.ndarray
    points: np.ndarray
    depth: np.ndarray | None = None
    K: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def areas(self) -> np.ndarray:
        """(N,) int64 pixel counts."""
        return self.masks.reshape(len(self), -1).sum(axis=1).astype(np.int64)

    def boxes(self) -> np.ndarray:
        """(N,4) int64 [x0, y0, x1, y1], half-open (mask[y0:y1, x0:x1] holds the whole mask);
        all zeros for an empty mask."""
        out = np.zeros((len(self), 4), np.int64)
        for i, m in enumerate(self.masks):
            cols = np.flatnonzero(m.any(axis=0))
            rows = np.flatnonzero(m.any(axis=1))
            if cols.size:
                out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        return out

    def label_image(self) -> np.ndarray:
        """(H,W) uint16: 0 = background, i + 1 = instance i. Where masks overlap, the higher score
        (lower id) wins."""
        H, W = self.image_size
        if len(self) > 65535:
            raise ValueError("more than 65535 instances do not fit a uint16 label image")
        lab = np.zeros((H, W), np.uint16)
        for i in range(len(self) - 1, -1, -1):
            lab[self.masks[i]] = i + 1
        return lab

    def centroids(self) -> np.ndarray:
        """(N,3) float64 mean camera-frame XYZ (OpenCV axes, metres) of each mask's pixels with valid
        depth (X = (u - cx) Z / fx, Y = (v - cy) Z / fy); NaN rows where a mask has no valid depth."""
        if self.depth is None or self.K is None:
            raise ValueError("centroids need the frame's depth and K (predict() stores them)")
        out = np.full((len(self), 3), np.nan)
        d = self.depth
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        for i, m in enumerate(self.masks):
            vv, uu = np.nonzero(m & (d > 0))
            if vv.size == 0:
                continue
            z = d[vv, uu].astype(np.float64)
            out[i] = (np.mean((uu - cx) * z / fx), np.mean((vv - cy) * z / fy), np.mean(z))
        return out

    def to_records(self) -> list[dict[str, Any]]:
        """JSON-ready per-instance dicts: id (label value), score, area, visible_area (pixels in the
        label image), bbox [x0,y0,x1,y1] half-open, centroid_m [x,y,z] or None, seed_uv."""
        areas, boxes = self.areas(), self.boxes()
        lab = self.label_image()
        vis = np.bincount(lab.ravel(), minlength=len(self) + 1)
        cents = self.centroids() if self.depth is not None and self.K is not None else None
        recs = []
        for i in range(len(self)):
            c = None if cents is None or not np.all(np.isfinite(cents[i])) else [float(x) for x in cents[i]]
            recs.append({
                "id": i + 1,
                "score": float(self.scores[i]),
                "area": int(areas[i]),
                "visible_area": int(vis[i + 1]),
                "bbox": [int(x) for x in boxes[i]],
                "centroid_m": c,
                "seed_uv": [float(self.points[i, 0]), float(self.points[i, 1])],
            })
        return recs


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------


def check_inputs(rgb: Any, depth: Any, K: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate one RGB-D frame; returns (rgb uint8 (H,W,3), depth float32 metres (0 = missing), K
    float64 (3,3)). Depth may be float metres or uint16 millimetres; NaN/inf/negative -> missing.
    Raises InputError naming the problem."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"rgb must be an (H, W, 3) image, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise InputError(f"rgb must be uint8 (0..255), got dtype {rgb.dtype}")
    H, W = rgb.shape[:2]
    if H < 1 or W < 1:
        raise InputError(f"rgb is empty: shape {rgb.shape}")

    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2:
        raise InputError(f"depth must be an (H, W) array, got shape {depth.shape}")
    if depth.shape != (H, W):
        raise InputError(f"rgb {W}x{H} and depth {depth.shape[1]}x{depth.shape[0]} (WxH) differ in size")
    if depth.dtype == np.uint16:
        mx = int(depth.max()) if depth.size else 0
        if 0 < mx <= MAX_DEPTH_M:
            raise InputError(
                f"uint16 depth is read as millimetres, but its maximum is {mx}: this looks like metres "
                "stored as integers; pass float32 metres or uint16 millimetres"
            )
        depth_m = depth.astype(np.float32) / np.float32(1000.0)
    elif np.issubdtype(depth.dtype, np.floating):
        d = depth.astype(np.float32)
        ok = np.isfinite(d) & (d > 0)
        depth_m = np.where(ok, d, np.float32(0.0)).astype(np.float32)
        sub = depth_m[::4, ::4]  # a plausibility check: a subsample is enough
        sub = sub[sub > 0] if (sub > 0).any() else depth_m[ok]
        if sub.size:
            med = float(np.median(sub))
            if med > MAX_DEPTH_M:
                raise InputError(
                    f"float depth is read as metres, but its median is {med:.1f}: this looks like "
                    "millimetres; divide by 1000 or pass uint16 millimetres"
                )
    else:
        raise InputError(f"depth must be float (metres) or uint16 (millimetres), got dtype {depth.dtype}")

    try:
        Km = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"K must be a 3x3 numeric matrix, got {K!r}") from None
    if Km.shape != (3, 3):
        raise InputError(f"K must be 3x3, got shape {Km.shape}")
    if not np.all(np.isfinite(Km)):
        raise InputError("K contains NaN or inf")
    fx, fy, cx, cy = Km[0, 0], Km[1, 1], Km[0, 2], Km[1, 2]
    if fx <= 0 or fy <= 0:
        raise InputError(f"K focal lengths must be positive, got fx={fx:g}, fy={fy:g}")
    if not (-0.5 <= cx <= W - 0.5 and -0.5 <= cy <= H - 0.5):
        raise InputError(
            f"K principal point (cx={cx:g}, cy={cy:g}) lies outside the {W}x{H} image; are the "
            "intrinsics for another resolution?"
        )
    if not np.allclose(Km[2], (0.0, 0.0, 1.0)) or Km[1, 0] != 0.0:
        raise InputError(f"K must be a pinhole matrix [[fx,s,cx],[0,fy,cy],[0,0,1]], got {Km.tolist()}")
    return np.ascontiguousarray(rgb), depth_m, Km


# ----------------------------------------------------------------------------------------------
# Resizing (same conventions as learner.preprocess.resize_rgbd / torch F.interpolate)
# ----------------------------------------------------------------------------------------------


def _linear_coeffs(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear (align_corners=False) source indices and weights, as torch computes them."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    l1 = (src - i0.astype(np.float32)).astype(np.float32)
    l0 = (np.float32(1.0) - l1).astype(np.float32)
    return i0, i1, l0, l1


def _nearest_exact_index(n_in: int, n_out: int) -> np.ndarray:
    scale = float(np.float32(n_in) / np.float32(n_out))
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * scale).astype(np.int64), n_in - 1)


def _area_resize(x: np.ndarray, H2: int, W2: int) -> np.ndarray:
    """(H,W,C) -> (H2,W2,C) float32 adaptive average pooling (torch 'area'), H2 <= H, W2 <= W."""
    H, W = x.shape[:2]
    if H % H2 == 0 and W % W2 == 0:  # integer factors: sum strided views (exact for uint8 input)
        fh, fw = H // H2, W // W2
        if fh & (fh - 1) == 0 and fw & (fw - 1) == 0 and x.shape[2] <= 4:
            # power-of-two factors: opencv's integer-factor area path sums the block and multiplies
            # by 1/(fh*fw), exact here (integer sums, power-of-two divisor)
            r = cv2.resize(x.astype(np.float32), (W2, H2), interpolation=cv2.INTER_AREA)
            return r.reshape(H2, W2, -1)
        xf = x.astype(np.float32)
        s = np.zeros((H2, W2, x.shape[2]), np.float32)
        for i in range(fh):
            for j in range(fw):
                s += xf[i::fh, j::fw]
        return s / np.float32(fh) / np.float32(fw)
    acc = np.int64 if x.dtype == np.uint8 else np.float64
    S = np.zeros((H + 1, W + 1, x.shape[2]), acc)
    S[1:, 1:] = x.astype(acc).cumsum(0).cumsum(1)
    i, j = np.arange(H2), np.arange(W2)
    y0, y1 = (i * H) // H2, -((-(i + 1) * H) // H2)
    x0, x1 = (j * W) // W2, -((-(j + 1) * W) // W2)
    s = S[y1][:, x1] - S[y0][:, x1] - S[y1][:, x0] + S[y0][:, x0]
    kh = (y1 - y0).astype(np.float32)[:, None, None]
    kw = (x1 - x0).astype(np.float32)[None, :, None]
    return s.astype(np.float32) / kh / kw


def _bilinear(x: np.ndarray, H2: int, W2: int) -> np.ndarray:
    """(..., H, W) float32 -> (..., H2, W2) bilinear, align_corners=False. Same indices and weights
    as torch; the result can differ from torch's vectorised kernel by 1 ulp (rounding order)."""
    H, W = x.shape[-2:]
    y0, y1, a0, a1 = _linear_coeffs(H, H2)
    x0, x1, b0, b1 = _linear_coeffs(W, W2)
    top, bot = x[..., y0, :], x[..., y1, :]
    top = top[..., x0] * b0 + top[..., x1] * b1
    bot = bot[..., x0] * b0 + bot[..., x1] * b1
    return top * a0[:, None] + bot * a1[:, None]


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K for an image resized by (sx, sy) = (W'/W, H'/H), pixel-centre convention."""
    K2 = np.array(K, dtype=np.float64, copy=True)
    K2[0, 0] *= sx
    K2[0, 1] *= sx
    K2[0, 2] = (K2[0, 2] + 0.5) * sx - 0.5
    K2[1, 1] *= sy
    K2[1, 2] = (K2[1, 2] + 0.5) * sy - 0.5
    return K2


def resize_rgbd(rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, size_hw: tuple[int, int]):
    """numpy twin of learner.preprocess.resize_rgbd for one frame (rgb uint8, depth float32)."""
    H, W = rgb.shape[:2]
    H2, W2 = int(size_hw[0]), int(size_hw[1])
    if (H2, W2) == (H, W):
        return rgb, depth, np.asarray(K, np.float64)
    if H2 <= H and W2 <= W:
        r = _area_resize(rgb, H2, W2)
    else:
        r = np.moveaxis(_bilinear(np.moveaxis(rgb.astype(np.float32), 2, 0), H2, W2), 0, 2)
    r2 = np.clip(np.rint(r), 0, 255).astype(np.uint8)
    d2 = depth[_nearest_exact_index(H, H2)][:, _nearest_exact_index(W, W2)]
    return r2, np.ascontiguousarray(d2), scale_intrinsics(K, W2 / W, H2 / H)


# ----------------------------------------------------------------------------------------------
# Network input (numpy twin of learner.preprocess.make_input)
# ----------------------------------------------------------------------------------------------


def make_input(
    rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, mean: np.ndarray, std: np.ndarray, xyz_scale: float,
    height: tuple[float, float, float],
) -> np.ndarray:
    """(1,8,H,W) float32: normalised RGB, median-centred scaled XYZ, valid flag, height above the
    dominant plane (height = (scale_m, min_m, max_m) from the card; learner/table_plane.py)."""
    H, W = depth.shape
    x = np.empty((1, 8, H, W), np.float32)
    # uint8 -> (v/255 - mean)/std through a 256-entry table per channel (the same float32 values)
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    for c in range(3):
        lut = (levels - np.float32(mean[c])) / np.float32(std[c])
        x[0, c] = lut[rgb[:, :, c]]
    d = np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0.0)).astype(np.float32)
    valid = d > 0
    Kf = np.asarray(K, np.float32)
    fx, fy, cx, cy = Kf[0, 0], Kf[1, 1], Kf[0, 2], Kf[1, 2]
    u = np.arange(W, dtype=np.float32)[None, :]
    v = np.arange(H, dtype=np.float32)[:, None]
    xyz = ((u - cx) * d / fx, (v - cy) * d / fy, d)
    n = int(np.count_nonzero(valid))
    validf = valid.astype(np.float32)
    scale = np.float32(xyz_scale)
    for c in range(3):
        centre = np.float32(0.0)
        if n > 0:  # lower median of the valid points, as preprocess.masked_median
            k = (n - 1) // 2
            centre = np.partition(xyz[c][valid], k)[k]
        x[0, 3 + c] = (xyz[c] - centre) / scale * validf
    x[0, 6] = validf
    h_scale, h_min, h_max = height
    h = height_above_plane(d, np.asarray(K, np.float64))
    x[0, 7] = np.clip(h, h_min, h_max) / np.float32(h_scale)
    return x


class _BlasThreads:
    """Scoped OpenBLAS thread limit (numpy's matmul). Multi-threaded OpenBLAS next to onnxruntime's
    threads on a busy 2-core machine was 4-8x slower than one thread for these small products.
    Best effort: a no-op where the library cannot be found (non-Linux, other BLAS)."""

    _fns: Any = False  # False = not looked up yet, None = not found, else (get, set)

    @classmethod
    def _find(cls) -> Any:
        if cls._fns is not False:
            return cls._fns
        cls._fns = None
        try:
            import ctypes

            with open("/proc/self/maps") as f:
                libs = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ln.split()[-1].startswith("/")})
            for path in libs:
                lib = ctypes.CDLL(path)
                for pre, suf in (("scipy_", "64_"), ("", "64_"), ("", ""), ("scipy_", "")):
                    get = getattr(lib, f"{pre}openblas_get_num_threads{suf}", None)
                    put = getattr(lib, f"{pre}openblas_set_num_threads{suf}", None)
                    if get is not None and put is not None:
                        put.argtypes = [ctypes.c_int]
                        cls._fns = (get, put)
                        return cls._fns
        except (OSError, AttributeError, ValueError):
            pass
        return None

    def __enter__(self) -> None:
        fns = self._find()
        self._old = None
        if fns is not None:
            self._old = int(fns[0]())
            if self._old != 1:
                fns[1](1)

    def __exit__(self, *exc: Any) -> None:
        fns = self._find()
        if fns is not None and self._old is not None and self._old != 1:
            fns[1](self._old)


def _single_thread_blas() -> _BlasThreads:
    return _BlasThreads()


# ----------------------------------------------------------------------------------------------
# Proposals (numpy twin of learner.hypotheses.find_seeds / decode_masks / propose_from_output)
# ----------------------------------------------------------------------------------------------


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
    with _single_thread_blas():
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
        self.yi0, self.yi1, self.ya0, self.ya1 = _linear_coeffs(h, H)
        self.xi0, self.xi1, self.xb0, self.xb1 = _linear_coeffs(w, W)
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
    """Greedy mask NMS (same result as hypotheses.mask_nms followed by [:max_keep])."""
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
    """Crops at the network resolution -> (N, H, W) bool at out_size (nearest-exact resize, the
    same as hypotheses.propose's F.interpolate(mode="nearest-exact") of the full masks)."""
    Hn, Wn = net_size
    H, W = out_size
    out = np.zeros((len(crops), H, W), bool)
    if (H, W) == (Hn, Wn):
        for n, c in enumerate(crops):
            out[n, c.y0 : c.y1, c.x0 : c.x1] = c.mask
        return out
    ri, ci = _nearest_exact_index(Hn, H), _nearest_exact_index(Wn, W)
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
    dyn_hidden: int,
    coord_scale: float,
    max_hypotheses: int = 20,
    objectness_threshold: float = 0.1,  # hypotheses.OBJECTNESS_THRESHOLD (the card carries the value)
    nms_iou: float = 0.5,
    mask_threshold: float = 0.5,
    max_seeds: int | None = None,
    min_area: int = 16,
    output_size: tuple[int, int] | None = None,
    table: np.ndarray | None = None,
    largest_component: bool = True,
    score: str = "mask",
    latent: tuple[np.ndarray, np.ndarray, np.random.Generator] | None = None,
    edges: DepthEdges | None = None,
    contested_overlap: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Proposals for one image from the network heads ((1,)1,h,w / (1,)D,h,w / (1,)Kp,h,w).

    image_size: the network input size (H,W). Same algorithm as hypotheses.propose_from_output;
    masks are returned at output_size (default image_size; nearest-exact resize like
    hypotheses.propose). table: (H,W) bool table pixels at the network input size
    (`mask_cleaning.table_pixels`), removed from every mask; None = no gate. edges: the depth
    discontinuities at the network input size (`mask_cleaning.depth_edges`), masks are cut along them
    with largest_component; None = no cut. contested_overlap: the kept masks lose the pixels they share
    with a mask of a different object (`mask_cleaning.release_contested`); None = off. Returns masks (N,H',W')
    bool, scores (N,) float32, seed points (N,2) in network-input pixels, and the number of seeds.
    latent: (prior log-variance map ((1,)Z,h,w), weight (Kp,Z), rng) of a latent model: every seed
    decodes with its own prior sample, eps ~ N(0, I) float32 drawn from rng for the seeds strongest
    first (as `learner.hypotheses.propose_from_output`); None = the prior mean."""
    if score not in PROPOSAL_SCORES:
        raise ValueError(f"score must be one of {PROPOSAL_SCORES}, got {score!r}")
    obj = np.asarray(objectness, np.float32).reshape(objectness.shape[-2:])
    feats = np.asarray(features, np.float32).reshape(features.shape[-3:])
    kern = np.asarray(kernels, np.float32).reshape(kernels.shape[-3:])
    H, W = int(image_size[0]), int(image_size[1])
    out_size = (H, W) if output_size is None else (int(output_size[0]), int(output_size[1]))
    n_seeds = max_seeds if max_seeds is not None else 3 * max_hypotheses
    pts, _ = find_seeds(obj, objectness_threshold, n_seeds, (H, W))
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
    obj_up = _sigmoid(_bilinear(obj, H, W))
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


# ----------------------------------------------------------------------------------------------
# The runtime
# ----------------------------------------------------------------------------------------------

_PROPOSAL_KEYS = ("max_hypotheses", "objectness_threshold", "nms_iou", "mask_threshold", "max_seeds", "min_area",
                  "table_gate_m", "largest_component", "score", "depth_edge_m", "contested_overlap")
# what a card without the clean-up keys did (exports before the mask clean-up / the depth-edge cut / the
# contested-pixel rule existed)
_LEGACY_PROPOSALS = {"table_gate_m": None, "largest_component": False, "score": "objectness_x_mask",
                     "depth_edge_m": None, "contested_overlap": None}


def _read_card(onnx_path: Path, card_path: Path | None) -> dict[str, Any]:
    if card_path is not None and card_path.is_file():
        try:
            return json.loads(card_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"corrupt model card {card_path}: {e}") from None
    import onnx  # only when the card is not next to the model

    try:
        meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt file
        raise ModelError(f"cannot read ONNX model {onnx_path}: {e}") from None
    if CARD_METADATA_KEY not in meta:
        raise ModelError(f"no {CARD_NAME} next to {onnx_path} and none embedded in it")
    return json.loads(meta[CARD_METADATA_KEY])


def _card_get(card: dict, *keys: str) -> Any:
    d: Any = card
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            raise ModelError(f"model card lacks {'.'.join(keys)}")
        d = d[k]
    return d


def _session(onnx_path: Path, threads: int, allow_spinning: bool) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelError(f"cannot load ONNX model {onnx_path}: {e}") from None


class Segmenter:
    """An exported segmenter run with onnxruntime. Create with `Segmenter.load(path)`."""

    def __init__(self, session: Any, card: dict[str, Any], path: Path | None = None,
                 mc_path: Path | None = None, session_options: dict[str, Any] | None = None):
        self.session = session
        self.card = card
        self.path = path
        self.mc_path = mc_path  # the MC-dropout graph, loaded on first use
        self._mc_session: Any = None
        self._session_options = dict(session_options or {})
        if int(card.get("format_version", 0)) < 2:
            raise ModelError("this export predates the plane_height input channel (card format_version < 2); "
                             "re-export the checkpoint with `python -m learner.deploy export`")
        inp = _card_get(card, "input")
        self.input_size: tuple[int, int] = (int(_card_get(inp, "height")), int(_card_get(inp, "width")))
        self.rgb_mean = np.asarray(_card_get(inp, "rgb", "mean"), np.float32)
        self.rgb_std = np.asarray(_card_get(inp, "rgb", "std"), np.float32)
        self.xyz_scale = float(_card_get(inp, "xyz", "scale_m"))
        self.height = (float(_card_get(inp, "plane_height", "scale_m")), float(_card_get(inp, "plane_height", "min_m")),
                       float(_card_get(inp, "plane_height", "max_m")))
        head = _card_get(card, "dynamic_head")
        self.embed_dim = int(head["embed_dim"])
        self.dyn_hidden = int(head["dyn_hidden"])
        self.coord_scale = float(head["coord_scale"])
        card_pp = dict(_card_get(card, "proposals"))
        if card_pp.get("score") not in PROPOSAL_SCORES:  # older cards: a description string
            card_pp["score"] = _LEGACY_PROPOSALS["score"]
        self.proposal_params: dict[str, Any] = {**_LEGACY_PROPOSALS,
                                                **{k: v for k, v in card_pp.items() if k in _PROPOSAL_KEYS}}
        self.model_version = card.get("model", {}).get("version")
        lat = card.get("latent")
        self.latent_weight = None if not lat else np.asarray(_card_get(card, "latent", "weight"), np.float32)  # (Kp, Z)
        if self.latent_weight is not None:
            kp = int(head.get("num_kernel_params", (self.embed_dim + 2) * self.dyn_hidden + 2 * self.dyn_hidden + 1))
            if self.latent_weight.shape != (kp, int(_card_get(card, "latent", "dim"))):
                raise ModelError(f"model card latent.weight has shape {self.latent_weight.shape}, expected "
                                 f"({kp}, latent.dim); re-export the checkpoint")

    @classmethod
    def load(cls, path: str | Path, threads: int = 2, allow_spinning: bool = False) -> Segmenter:
        """path: an export directory (segmenter.onnx + model_card.json) or the .onnx file itself.

        threads: onnxruntime intra-op threads. allow_spinning: let idle onnxruntime worker threads
        busy-wait for work (onnxruntime's own default). Off by default: after a run the spinning
        worker competes with the numpy post-processing and with other processes, which on a busy
        2-core machine made a frame about 1.7x slower."""
        p = Path(path)
        if p.is_dir():
            onnx_path, card_path = p / ONNX_NAME, p / CARD_NAME
        else:
            onnx_path, card_path = p, p.parent / CARD_NAME
        if not onnx_path.is_file():
            raise ModelError(f"no exported model at {onnx_path} (run `python -m learner.deploy export` first)")
        card = _read_card(onnx_path, card_path)
        sess = _session(onnx_path, threads, allow_spinning)
        mc_name = (card.get("files") or {}).get("onnx_mc_dropout")
        mc_path = onnx_path.parent / mc_name if mc_name and (onnx_path.parent / mc_name).is_file() else None
        return cls(sess, card, onnx_path, mc_path, {"threads": threads, "allow_spinning": allow_spinning})

    # -------------------------------------------------------------------------------------
    def prepare(self, rgb: Any, depth: Any, K: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Validate and resize a frame -> (network input (1,7,H',W'), rgb, depth metres, K) where the
        last three are the validated frame at its own resolution."""
        rgb, depth_m, Km = check_inputs(rgb, depth, K)
        r, d, k = resize_rgbd(rgb, depth_m, Km, self.input_size)
        return make_input(r, d, k, self.rgb_mean, self.rgb_std, self.xyz_scale, self.height), rgb, depth_m, Km

    def run_network(self, x: np.ndarray, trunk_scale: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Network heads for input x; with trunk_scale (per-channel factors, shape of the card's
        mc_dropout.shape) the MC graph runs instead."""
        if trunk_scale is None:
            names = OUTPUT_NAMES + ((LATENT_OUTPUT,) if self.latent_weight is not None else ())
            outs = self.session.run(list(names), {INPUT_NAME: np.ascontiguousarray(x, np.float32)})
            return dict(zip(names, outs, strict=True))
        else:
            outs = self._mc().run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(x, np.float32),
                                                       MC_INPUT_NAME: np.ascontiguousarray(trunk_scale, np.float32)})
        return dict(zip(OUTPUT_NAMES, outs, strict=True))

    @property
    def has_mc_dropout(self) -> bool:
        return self.mc_path is not None

    def _mc(self) -> Any:
        if self._mc_session is None:
            if self.mc_path is None:
                raise ModelError(
                    f"this export has no MC-dropout graph ({MC_ONNX_NAME}); re-export it with "
                    "`python -m learner.deploy export`, or use sampler='tta'"
                )
            o = self._session_options
            self._mc_session = _session(self.mc_path, o.get("threads", 2), o.get("allow_spinning", False))
        return self._mc_session

    def _instances(self, x: np.ndarray, out: dict[str, np.ndarray], rgb: np.ndarray, depth_m: np.ndarray,
                   Km: np.ndarray, params: dict[str, Any], latent_rng: np.random.Generator | None = None) -> Instances:
        """Proposals from the heads `out` of network input x (its valid and height channels give the
        table gate). latent_rng: decode every seed with its own prior sample (latent exports)."""
        pp = {**self.proposal_params, **params}
        Hn, Wn = self.input_size
        H, W = rgb.shape[:2]
        gate = pp.pop("table_gate_m")
        table = table_pixels(x[0, 7] * self.height[0], x[0, 6] > 0.5, None if gate is None else float(gate))
        jump = pp.pop("depth_edge_m")
        edges = depth_edges(x[0, 5] * self.xyz_scale, x[0, 6] > 0.5, None if jump is None else float(jump)) \
            if pp["largest_component"] else None
        masks, scores, pts, n_seeds = propose_from_heads(
            out["objectness"], out["features"], out["kernels"], (Hn, Wn), self.dyn_hidden, self.coord_scale,
            output_size=(H, W), table=table, edges=edges,
            latent=None if latent_rng is None else (out[LATENT_OUTPUT], self.latent_weight, latent_rng), **pp,
        )
        if (H, W) != (Hn, Wn):
            pts = pts.copy()
            pts[:, 0] = (pts[:, 0] + 0.5) * (W / Wn) - 0.5
            pts[:, 1] = (pts[:, 1] + 0.5) * (H / Hn) - 0.5
        return Instances(
            masks, scores, pts.astype(np.float32), depth_m, Km, {"num_seeds": n_seeds}
        )

    def predict(self, rgb: Any, depth: Any, K: Any, **params: Any) -> Instances:
        """Object hypotheses for one frame at any resolution.

        rgb (H,W,3) uint8; depth (H,W) float metres or uint16 millimetres (0/NaN = missing); K (3,3)
        for this resolution. Keyword overrides of the card's proposal parameters: max_hypotheses,
        objectness_threshold, nms_iou, mask_threshold, max_seeds, min_area."""
        bad = set(params) - set(_PROPOSAL_KEYS)
        if bad:
            raise TypeError(f"unknown proposal parameters {sorted(bad)}; expected some of {_PROPOSAL_KEYS}")
        x, rgb, depth_m, Km = self.prepare(rgb, depth, K)
        return self._instances(x, self.run_network(x), rgb, depth_m, Km, params)

    __call__ = predict

    # -------------------------------------------------------------------------------------
    def predict_samples(
        self, rgb: Any, depth: Any, K: Any, samples: int = 10, seed: int = 0, sampler: str = "tta",
        dropout_rate: float = DEFAULT_DROPOUT_RATE, tta: TTAConfig | None = None, **params: Any,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """k samples of hypotheses for one frame, masks in the frame's own pixels:
        [(masks (n, H, W) bool, scores (n,) float32)]. Sample 0 is `predict` itself (for "tta" unless
        tta.include_identity is off). The same (frame, samples, seed, sampler settings) give the same
        samples. sampler: "mc_dropout" (channel dropout with `dropout_rate` on the head trunk; needs
        the MC graph of the export), "tta" (settings `tta`), "latent" (one network pass, every seed
        decoded with its own draw from the latent prior; latent exports only) or "tta_latent" (both:
        every TTA view with its own latent draws). params: proposal overrides as for `predict`."""
        bad = set(params) - set(_PROPOSAL_KEYS)
        if bad:
            raise TypeError(f"unknown proposal parameters {sorted(bad)}; expected some of {_PROPOSAL_KEYS}")
        if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if sampler in ("latent", "tta_latent") and self.latent_weight is None:
            raise ModelError(f"sampler {sampler!r}: this export has no latent code (trained with latent_dim = 0); "
                             "use sampler='tta' or 'mc_dropout'")
        if sampler == "latent":
            x, rgb_v, depth_m, Km = self.prepare(rgb, depth, K)
            heads = self.run_network(x)
            rng = np.random.default_rng([int(seed), 2])  # learner.hypotheses.propose_latent_samples draws the same
            out = []
            for i in range(int(samples)):
                inst = self._instances(x, heads, rgb_v, depth_m, Km, params, latent_rng=None if i == 0 else rng)
                out.append((inst.masks, inst.scores))
            return out
        if sampler == "mc_dropout":
            if not (isinstance(dropout_rate, int | float) and 0.0 <= dropout_rate < 1.0):
                raise ValueError(f"dropout_rate must lie in [0, 1), got {dropout_rate!r}")
            self._mc()  # a clear error now if the export has no MC graph
            shape = tuple(int(v) for v in (self.card.get("mc_dropout") or {}).get("shape") or ())
            if len(shape) != 4:
                raise ModelError("model card lacks mc_dropout.shape; re-export with `python -m learner.deploy export`")
            x, rgb_v, depth_m, Km = self.prepare(rgb, depth, K)
            rng = np.random.default_rng([int(seed), 1])
            out = []
            for i in range(int(samples)):
                if i == 0:
                    heads = self.run_network(x)
                else:
                    keep = rng.random(shape) >= dropout_rate
                    heads = self.run_network(x, (keep / np.float32(1.0 - dropout_rate)).astype(np.float32))
                inst = self._instances(x, heads, rgb_v, depth_m, Km, params)
                out.append((inst.masks, inst.scores))
            return out
        rgb, depth_m, Km = check_inputs(rgb, depth, K)
        transforms = make_transforms(int(samples), tta, seed)
        lat_rng, calls = np.random.default_rng([int(seed), 2]), [0]

        def fn(r: np.ndarray, d: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if sampler == "tta":
                inst = self.predict(r, d, k, **params)
            else:  # tta_latent: every view decoded with its own latent draw, the identity view with the mean
                first = calls[0] == 0 and transforms[0].is_identity
                calls[0] += 1
                x, rv, dm, kv = self.prepare(r, d, k)
                inst = self._instances(x, self.run_network(x), rv, dm, kv, params, None if first else lat_rng)
            return inst.masks, inst.scores

        return sample_with_transforms(fn, rgb, depth_m, Km, transforms)

    def predict_distributional(
        self,
        rgb: Any,
        depth: Any,
        K: Any,
        mode: str = "confidence",
        p: float = 0.9,
        samples: int = 10,
        seed: int = 0,
        sampler: str = "tta",
        dropout_rate: float = DEFAULT_DROPOUT_RATE,
        tta: TTAConfig | None = None,
        min_score: float = 0.1,
        union_iou: float | None = None,
        **params: Any,
    ) -> Instances:
        """Distributional prediction for one frame (see the module docstring).

        mode: "mean" (= predict), "confidence" (p-confidence masks: each lies inside masks of at least
        ceil(samples p) of the samples; disjoint) or "union" (Union-NMS, IoU threshold union_iou,
        default the card's nms_iou). p in (0, 1]; samples >= 1; seed fixes the random draws;
        sampler / dropout_rate / tta as in `predict_samples`. min_score: confidence masks scoring <=
        this are not returned. Instances.points are each mask's most interior pixel; info carries
        mode, p, samples, required_agreement, seed and sampler."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "mean":
            return self.predict(rgb, depth, K, **params)
        ConfidenceConfig(p=p, min_score=min_score).validate()  # clear errors before any work
        smp = self.predict_samples(rgb, depth, K, samples=samples, seed=seed, sampler=sampler,
                                   dropout_rate=dropout_rate, tta=tta, **params)
        pp = {**self.proposal_params, **params}
        max_masks = int(pp["max_hypotheses"])
        if mode == "confidence":
            cfg = ConfidenceConfig(p=p, min_score=min_score, min_area=max(int(pp["min_area"]), 1), max_masks=max_masks)
            res: MaskSet = confidence_masks(smp, config=cfg)
        else:
            res = union_nms(smp, float(pp["nms_iou"]) if union_iou is None else float(union_iou), max_masks)
        _, depth_m, Km = check_inputs(rgb, depth, K)
        info = {"mode": mode, "p": float(p) if mode == "confidence" else None, "samples": int(samples),
                "required_agreement": int(res.required) if mode == "confidence" else None, "seed": int(seed),
                "sampler": sampler, "dropout_rate": float(dropout_rate) if sampler == "mc_dropout" else None}
        return Instances(res.masks, res.scores, interior_points(res.masks), depth_m, Km, info)
