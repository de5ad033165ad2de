"""One RGB-D frame -> the network input: validation, resizing with consistent intrinsics, and the
8-channel input builder. numpy only; the one implementation used by training, the agent, evaluation,
the benchmarks, the ONNX export check and the torch-free runtime.

Input layout (C = 8, float32, channels first, `make_input`):
  0..2  RGB scaled to [0, 1], then (x - mean) / std (ImageNet statistics by default),
  3..5  camera-frame XYZ (OpenCV: x right, y down, z forward; metres) deprojected from depth and K
        (X = (u - cx) Z / fx, Y = (v - cy) Z / fy), centred on the per-image lower median of the valid
        points and divided by `xyz_scale_m`; 0 where depth is missing,
  6     valid-depth flag (1 = measured, 0 = missing),
  7     height above the support plane (`learner.proposals.plane.height_above_plane`, no camera pose
        needed), clipped to [height_min_m, height_max_m] and divided by height_scale_m.

Pixel convention: (u, v) = (column, row), origin at the centre of the top-left pixel. Resizing uses
the matching pixel-centre convention: u' = (u + 0.5) sx - 0.5, and K is updated the same way.
RGB is area-averaged when shrinking (adaptive average pooling bins, as torch's "area"), bilinear
when enlarging; depth is resampled nearest-exact (never blends measured with missing values or
across depth edges).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from learner.proposals.plane import height_above_plane

IN_CHANNELS = 8
CHANNELS = ("r", "g", "b", "x", "y", "z", "valid", "plane_height")
MAX_DEPTH_M = 20.0  # float depth whose median is above this is almost surely millimetres


@dataclass(frozen=True)
class InputSpec:
    """How a frame is normalised into the network input (the model card's "input" values).

    rgb_mean / rgb_std: per channel, applied to RGB in [0, 1]. xyz_scale_m: metres per unit of the
    centred XYZ channels. height_*_m: the plane-height channel's scale and clip range, metres."""

    rgb_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    rgb_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    xyz_scale_m: float = 0.25
    height_scale_m: float = 0.05
    height_min_m: float = -0.1
    height_max_m: float = 0.3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rgb_mean"], d["rgb_std"] = list(self.rgb_mean), list(self.rgb_std)
        return d


class InputError(ValueError):
    """An RGB-D frame or intrinsics that cannot be used (the message names the problem)."""




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




def linear_coeffs(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear (align_corners=False) source indices and weights, as torch computes them."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    l1 = (src - i0.astype(np.float32)).astype(np.float32)
    l0 = (np.float32(1.0) - l1).astype(np.float32)
    return i0, i1, l0, l1


def nearest_exact_index(n_in: int, n_out: int) -> np.ndarray:
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


def bilinear(x: np.ndarray, H2: int, W2: int) -> np.ndarray:
    """(..., H, W) float32 -> (..., H2, W2) bilinear, align_corners=False. Same indices and weights
    as torch; the result can differ from torch's vectorised kernel by 1 ulp (rounding order)."""
    H, W = x.shape[-2:]
    y0, y1, a0, a1 = linear_coeffs(H, H2)
    x0, x1, b0, b1 = linear_coeffs(W, W2)
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
    """Resize one frame to size_hw = (H', W'): rgb uint8 (area when shrinking, bilinear when enlarging,
    rounded half-to-even), depth float32 metres nearest-exact, K in the pixel-centre convention."""
    H, W = rgb.shape[:2]
    H2, W2 = int(size_hw[0]), int(size_hw[1])
    if (H2, W2) == (H, W):
        return rgb, depth, np.asarray(K, np.float64)
    if H2 <= H and W2 <= W:
        r = _area_resize(rgb, H2, W2)
    else:
        r = np.moveaxis(bilinear(np.moveaxis(rgb.astype(np.float32), 2, 0), H2, W2), 0, 2)
    r2 = np.clip(np.rint(r), 0, 255).astype(np.uint8)
    return r2, resize_depth(depth, (H2, W2)), scale_intrinsics(K, W2 / W, H2 / H)


def resize_depth(depth: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) depth in metres -> (H', W') nearest-exact (no value is invented between surfaces); the
    depth `resize_rgbd` hands to `make_input`."""
    H, W = depth.shape[:2]
    H2, W2 = int(size_hw[0]), int(size_hw[1])
    if (H2, W2) == (H, W):
        return depth
    return np.ascontiguousarray(depth[nearest_exact_index(H, H2)][:, nearest_exact_index(W, W2)])



def make_input(rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, spec: InputSpec | None = None) -> np.ndarray:
    """(1,8,H,W) float32 network input of one frame (layout in the module docstring).

    rgb (H,W,3) uint8, depth (H,W) float32 metres (0 = missing), K (3,3) for this resolution."""
    spec = spec or InputSpec()
    mean, std = spec.rgb_mean, spec.rgb_std
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
    scale = np.float32(spec.xyz_scale_m)
    for c in range(3):
        centre = np.float32(0.0)
        if n > 0:  # lower median of the valid points, as preprocess.masked_median
            k = (n - 1) // 2
            centre = np.partition(xyz[c][valid], k)[k]
        x[0, 3 + c] = (xyz[c] - centre) / scale * validf
    x[0, 6] = validf
    h_scale, h_min, h_max = spec.height_scale_m, spec.height_min_m, spec.height_max_m
    h = height_above_plane(d, np.asarray(K, np.float64))
    x[0, 7] = np.clip(h, h_min, h_max) / np.float32(h_scale)
    return x

