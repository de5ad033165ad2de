"""RGB-D -> network input tensor, shared by the trainer and the deploy path.

Input layout (C = 7, float32, channels first):
  0..2  RGB, scaled to [0, 1] then normalised with ImageNet mean/std,
  3..5  camera-frame XYZ (OpenCV: x right, y down, z forward) deprojected from depth and K,
        centred on the per-image median of the valid points and divided by `xyz_scale` metres,
  6     valid-depth flag (1 = measured, 0 = missing); missing pixels have XYZ = 0,
  7     height above the dominant plane (the table, by seeded RANSAC in learner/table_plane.py: no
        camera pose needed), clipped to [HEIGHT_MIN_M, HEIGHT_MAX_M] and divided by HEIGHT_SCALE_M;
        0 where depth is missing.

Everything is plain torch (batched, no numpy in the tensor path) so the same code runs in training,
in evaluation and in front of an exported model. The median is computed with sort + gather so it
has no data-dependent Python control flow. The plane fit is numpy (per image, deterministic); the
exported ONNX graph takes the finished input, and learner/segmenter_runtime.py builds it the same way.

Pixel convention (see robot/base.py): (u, v) = (column, row), origin at the centre of the top-left
pixel. Resizing uses the matching "pixel centres" (align_corners=False) convention, so a pixel
coordinate maps as u' = (u + 0.5) * sx - 0.5 and K is updated the same way.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from learner.proposals.plane import height_above_plane

RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)
XYZ_SCALE_M = 0.25
HEIGHT_SCALE_M = 0.05
HEIGHT_MIN_M = -0.1
HEIGHT_MAX_M = 0.3
IN_CHANNELS = 8

ArrayLike = np.ndarray | torch.Tensor


def _as_tensor(x: ArrayLike, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    return t if dtype is None else t.to(dtype)


def _batched_K(K: ArrayLike, batch: int, device: torch.device) -> torch.Tensor:
    Kt = _as_tensor(K, torch.float32).to(device)
    if Kt.dim() == 2:
        Kt = Kt.unsqueeze(0).expand(batch, 3, 3)
    if Kt.shape != (batch, 3, 3):
        raise ValueError(f"K must be (3,3) or ({batch},3,3), got {tuple(Kt.shape)}")
    return Kt


def rgb_to_tensor(rgb: ArrayLike) -> torch.Tensor:
    """(H,W,3) or (B,H,W,3) uint8 (numpy or torch) -> (B,3,H,W) float32 in [0,1].

    Float input is assumed to already be in [0,1].
    """
    t = _as_tensor(rgb)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"rgb must be (H,W,3) or (B,H,W,3), got {tuple(t.shape)}")
    t = t.permute(0, 3, 1, 2)
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    return t.float()


def normalize_rgb(rgb01: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) in [0,1] -> mean/std normalised."""
    mean = rgb01.new_tensor(RGB_MEAN).view(1, 3, 1, 1)
    std = rgb01.new_tensor(RGB_STD).view(1, 3, 1, 1)
    return (rgb01 - mean) / std


def depth_to_tensor(depth: ArrayLike) -> torch.Tensor:
    """(H,W) or (B,H,W) metres -> (B,H,W) float32; NaN/inf/negative become 0 (missing)."""
    d = _as_tensor(depth, torch.float32)
    if d.dim() == 2:
        d = d.unsqueeze(0)
    if d.dim() == 4 and d.shape[1] == 1:
        d = d[:, 0]
    if d.dim() != 3:
        raise ValueError(f"depth must be (H,W) or (B,H,W), got {tuple(d.shape)}")
    return torch.where(torch.isfinite(d) & (d > 0), d, torch.zeros_like(d))


def deproject(depth: torch.Tensor, K: ArrayLike) -> torch.Tensor:
    """Depth (B,H,W) metres + K -> camera-frame XYZ (B,3,H,W); missing depth gives (0,0,0).

    X = (u - cx) Z / fx, Y = (v - cy) Z / fy, Z = depth.
    """
    B, H, W = depth.shape
    Kt = _batched_K(K, B, depth.device)
    fx, fy = Kt[:, 0, 0].view(B, 1, 1), Kt[:, 1, 1].view(B, 1, 1)
    cx, cy = Kt[:, 0, 2].view(B, 1, 1), Kt[:, 1, 2].view(B, 1, 1)
    u = torch.arange(W, dtype=depth.dtype, device=depth.device).view(1, 1, W)
    v = torch.arange(H, dtype=depth.dtype, device=depth.device).view(1, H, 1)
    X = (u - cx) * depth / fx
    Y = (v - cy) * depth / fy
    return torch.stack([X, Y, depth], dim=1)


def masked_median(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-row lower median of `values` (B,C,N) over the entries where `valid` (B,N) is true.

    Returns (B,C); rows without any valid entry give 0. Sort-based (ONNX friendly).
    """
    B, C, N = values.shape
    big = torch.finfo(values.dtype).max
    filled = torch.where(valid.unsqueeze(1), values, torch.full_like(values, big))
    srt, _ = torch.sort(filled, dim=2)
    n_valid = valid.sum(dim=1)  # (B,)
    k = ((n_valid - 1).clamp(min=0) // 2).view(B, 1, 1).expand(B, C, 1)
    med = torch.gather(srt, 2, k).squeeze(2)
    return torch.where((n_valid > 0).view(B, 1), med, torch.zeros_like(med))


def make_input(
    rgb: ArrayLike,
    depth: ArrayLike,
    K: ArrayLike,
    xyz_scale: float = XYZ_SCALE_M,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Build the (B,8,H,W) float32 network input from RGB-D.

    rgb: (H,W,3)/(B,H,W,3) uint8 (or float in [0,1]); depth: (H,W)/(B,H,W) float metres, 0 = missing;
    K: (3,3) or (B,3,3) intrinsics for this resolution. numpy or torch.
    """
    rgb01 = rgb_to_tensor(rgb)
    d = depth_to_tensor(depth)
    if device is not None:
        rgb01, d = rgb01.to(device), d.to(device)
    if rgb01.shape[0] != d.shape[0] or rgb01.shape[-2:] != d.shape[-2:]:
        raise ValueError(f"rgb {tuple(rgb01.shape)} and depth {tuple(d.shape)} do not match")
    B, _, H, W = rgb01.shape
    valid = d > 0
    xyz = deproject(d, K)
    centre = masked_median(xyz.reshape(B, 3, H * W), valid.reshape(B, H * W))
    validf = valid.unsqueeze(1).to(xyz.dtype)
    xyz = (xyz - centre.view(B, 3, 1, 1)) / xyz_scale * validf
    return torch.cat([normalize_rgb(rgb01), xyz, validf, height_channel(d, K)], dim=1).contiguous()


def height_channel(depth: torch.Tensor, K: ArrayLike) -> torch.Tensor:
    """(B,H,W) depth in metres -> (B,1,H,W) scaled, clipped height above each image's dominant plane."""
    B = depth.shape[0]
    Kn = _batched_K(K, B, torch.device("cpu")).double().numpy()
    dn = depth.detach().cpu().numpy()
    h = np.stack([height_above_plane(dn[b], Kn[b]) for b in range(B)])
    h = np.clip(h, HEIGHT_MIN_M, HEIGHT_MAX_M) / np.float32(HEIGHT_SCALE_M)
    return torch.from_numpy(h.astype(np.float32)).unsqueeze(1).to(depth.device)


# ----------------------------------------------------------------------------------------------
# Resizing with consistent intrinsics
# ----------------------------------------------------------------------------------------------


def scale_intrinsics(K: ArrayLike, sx: float, sy: float) -> ArrayLike:
    """K for an image resized by (sx, sy) = (W'/W, H'/H), pixel-centre convention.

    fx' = fx sx, cx' = (cx + 0.5) sx - 0.5 (same for y). Returns the input type (numpy/torch).
    """
    if isinstance(K, torch.Tensor):
        K2 = K.clone().to(torch.float64) if not K.is_floating_point() else K.clone()
    else:
        K2 = np.array(K, dtype=np.float64, copy=True)
    K2[..., 0, 0] = K2[..., 0, 0] * sx
    K2[..., 0, 1] = K2[..., 0, 1] * sx
    K2[..., 0, 2] = (K2[..., 0, 2] + 0.5) * sx - 0.5
    K2[..., 1, 1] = K2[..., 1, 1] * sy
    K2[..., 1, 2] = (K2[..., 1, 2] + 0.5) * sy - 0.5
    return K2


def scale_points(uv: ArrayLike, sx: float, sy: float) -> ArrayLike:
    """Pixel coordinates (...,2) = (u,v) after resizing by (sx, sy)."""
    out = uv.clone().float() if isinstance(uv, torch.Tensor) else np.array(uv, dtype=np.float64, copy=True)
    out[..., 0] = (out[..., 0] + 0.5) * sx - 0.5
    out[..., 1] = (out[..., 1] + 0.5) * sy - 0.5
    return out


def resize_rgbd(
    rgb: ArrayLike,
    depth: ArrayLike,
    K: ArrayLike,
    size_hw: tuple[int, int],
) -> tuple[ArrayLike, ArrayLike, ArrayLike]:
    """Resize an RGB-D pair to (H', W') and return matching intrinsics.

    RGB: area averaging when shrinking, bilinear when enlarging (uint8 stays uint8).
    Depth: nearest neighbour (never blends measured with missing values or across depth edges).
    Accepts unbatched (H,W,3)/(H,W) or batched arrays; returns the input types and layout.
    """
    is_np = isinstance(rgb, np.ndarray)
    r = _as_tensor(rgb)
    d = _as_tensor(depth)
    unbatched = r.dim() == 3
    if unbatched:
        r, d = r.unsqueeze(0), d.unsqueeze(0)
    H, W = r.shape[1:3]
    H2, W2 = int(size_hw[0]), int(size_hw[1])
    rf = r.permute(0, 3, 1, 2).float()
    mode = "area" if (H2 <= H and W2 <= W) else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    r2 = F.interpolate(rf, size=(H2, W2), mode=mode, **kw).permute(0, 2, 3, 1)
    if r.dtype == torch.uint8:
        r2 = r2.round().clamp(0, 255).to(torch.uint8)
    else:
        r2 = r2.to(r.dtype)
    d2 = F.interpolate(d.unsqueeze(1).float(), size=(H2, W2), mode="nearest-exact")[:, 0].to(d.dtype)
    if unbatched:
        r2, d2 = r2[0], d2[0]
    K2 = scale_intrinsics(K, W2 / W, H2 / H)
    if is_np:
        return r2.contiguous().numpy(), d2.contiguous().numpy(), K2
    return r2.contiguous(), d2.contiguous(), K2
