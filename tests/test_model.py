"""Model, preprocessing and proposals on real tensors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from learner.model.hypotheses import find_seeds, mask_iou_matrix, propose, propose_from_output
from learner.model.network import (
    PointSegmenter,
    SegmenterConfig,
    build_model,
    instance_embeddings,
    sample_at_points,
)
from learner.model.preprocess import (
    IN_CHANNELS,
    deproject,
    make_input,
    resize_rgbd,
    scale_intrinsics,
    scale_points,
)


def _frame(H=96, W=128, seed=0, batch=None):
    rng = np.random.default_rng(seed)
    K = np.array([[0.9 * W, 0, W / 2 - 3.0], [0, 0.9 * W, H / 2 + 2.0], [0, 0, 1.0]])
    shape = (H, W) if batch is None else (batch, H, W)
    depth = (0.7 + 0.2 * rng.random(shape)).astype(np.float32)
    depth[rng.random(shape) < 0.1] = 0.0
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    return rgb, depth, K


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PointSegmenter(SegmenterConfig()).eval()


# ----------------------------------------------------------------------------------------------
# preprocessing
# ----------------------------------------------------------------------------------------------


def test_make_input_channels_and_deprojection():
    rgb, depth, K = _frame()
    x = make_input(rgb, depth, K, xyz_scale=0.25)
    assert x.shape == (1, IN_CHANNELS, 96, 128) and x.dtype == torch.float32
    valid = torch.from_numpy(depth > 0)
    assert torch.equal(x[0, 6] > 0.5, valid)
    assert (x[0, 3:6][:, ~valid] == 0).all()
    # XYZ = deprojection minus the median of valid points, / 0.25
    xyz = deproject(torch.from_numpy(depth)[None], K)[0]
    v, u = 40, 70
    Z = float(depth[v, u])
    assert Z > 0
    assert float(xyz[0, v, u]) == pytest.approx((u - K[0, 2]) * Z / K[0, 0], rel=1e-5)
    assert float(xyz[1, v, u]) == pytest.approx((v - K[1, 2]) * Z / K[1, 1], rel=1e-5)
    med = xyz[:, valid].median(dim=1).values  # torch.median is the lower median too
    assert torch.allclose(x[0, 3:6, v, u], (xyz[:, v, u] - med) / 0.25, atol=1e-5)
    # RGB normalisation
    r = (rgb[v, u, 0] / 255.0 - 0.485) / 0.229
    assert float(x[0, 0, v, u]) == pytest.approx(r, abs=1e-5)


def test_make_input_batched_matches_single_and_no_depth():
    rgb, depth, K = _frame(batch=2)
    xb = make_input(torch.from_numpy(rgb), torch.from_numpy(depth), K)
    for b in range(2):
        assert torch.allclose(xb[b], make_input(rgb[b], depth[b], K)[0], atol=1e-6)
    x0 = make_input(rgb[0], np.zeros_like(depth[0]), K)
    assert (x0[0, 3:] == 0).all() and torch.isfinite(x0).all()


def test_resize_keeps_intrinsics_consistent():
    H, W = 96, 128
    rgb, _, K = _frame(H, W)
    # a tilted plane: the 3D point seen at a pixel must be the same before and after resizing
    n, d0 = np.array([0.1, -0.3, 1.0]), 0.8
    Kinv = np.linalg.inv(K)
    uu, vv = np.meshgrid(np.arange(W), np.arange(H))
    rays = np.stack([uu, vv, np.ones_like(uu)], -1) @ Kinv.T
    depth = (d0 / (rays @ n)).astype(np.float32)  # z of the ray/plane intersection (ray z = 1)
    for size in [(48, 64), (192, 256), (60, 100)]:
        rgb2, depth2, K2 = resize_rgbd(rgb, depth, K, size)
        assert rgb2.shape == (*size, 3) and rgb2.dtype == np.uint8 and depth2.shape == size
        sx, sy = size[1] / W, size[0] / H
        np.testing.assert_allclose(K2, scale_intrinsics(K, sx, sy))
        # pixel centre convention: the plane seen through K2 at a mapped pixel is the same 3D point
        u, v = 37.0, 51.0
        u2, v2 = scale_points(np.array([u, v]), sx, sy)
        ray1 = Kinv @ np.array([u, v, 1.0])
        ray2 = np.linalg.inv(K2) @ np.array([u2, v2, 1.0])
        np.testing.assert_allclose(ray1, ray2, atol=1e-12)
        # nearest-neighbour depth: every output value is an input value (no blending)
        assert np.isin(depth2, depth).all()
        # the actual resampling follows the same convention: a blob's centroid lands at scale_points
        blob = np.exp(-((uu - 61.3) ** 2 + (vv - 40.7) ** 2) / (2 * 6.0**2))
        img = np.repeat((255 * blob)[..., None], 3, -1).astype(np.uint8)
        small = resize_rgbd(img.astype(np.float32), depth, K, size)[0][..., 0]
        yy2, xx2 = np.mgrid[: size[0], : size[1]]
        c2 = np.array([(small * xx2).sum(), (small * yy2).sum()]) / small.sum()
        c1 = np.array([(img[..., 0] * uu).sum(), (img[..., 0] * vv).sum()]) / img[..., 0].sum()
        np.testing.assert_allclose(c2, scale_points(c1, sx, sy), atol=0.05)
    # torch in -> torch out, batched
    r, dd, k = resize_rgbd(torch.from_numpy(rgb)[None], torch.from_numpy(depth)[None], K, (48, 64))
    assert isinstance(r, torch.Tensor) and r.shape == (1, 48, 64, 3) and dd.shape == (1, 48, 64)


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------


def test_forward_shapes_and_param_count(model):
    n = model.num_parameters()
    assert 3e5 < n < 3e6
    x = make_input(*_frame(240, 320))
    with torch.no_grad():
        out = model(x)
    cfg = model.config
    assert out["objectness"].shape == (1, 1, 60, 80)
    assert out["features"].shape == (1, cfg.embed_dim, 60, 80)
    assert out["kernels"].shape == (1, (cfg.embed_dim + 2) * cfg.dyn_hidden + 2 * cfg.dyn_hidden + 1, 60, 80)
    # odd sizes work too (interpolation to lateral sizes)
    with torch.no_grad():
        out = model(torch.randn(2, IN_CHANNELS, 100, 130))
    assert out["objectness"].shape == (2, 1, 25, 33)


def test_decode_many_points_shapes_and_batch_consistency(model):
    rgb, depth, K = _frame(batch=3)
    x = make_input(rgb, depth, K)
    with torch.no_grad():
        out = model(x)
        P = 50
        g = torch.Generator().manual_seed(0)
        bi = torch.randint(0, 3, (P,), generator=g)
        pts = torch.rand(P, 2, generator=g) * torch.tensor([127.0, 95.0])
        full = model.decode(out, bi, pts)
        low = model.decode(out, bi, pts, upsample=False)
        assert full.shape == (P, 96, 128) and low.shape == (P, 24, 32)
        assert torch.isfinite(full).all()
        # a point decoded in a batch equals the same point decoded from that image alone (eval mode)
        single = model(x[2:3])
        sel = bi == 2
        alone = model.decode(single, torch.zeros(int(sel.sum()), dtype=torch.long), pts[sel])
        assert torch.allclose(full[sel], alone, atol=1e-4)
        # the mask depends on the query point
        assert not torch.allclose(full[0], model.decode(out, bi[:1], pts[:1] + 30.0)[0])
        assert model.decode(out, bi[:0], pts[:0]).shape == (0, 96, 128)


def test_sample_at_points_matches_grid_sample():
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(2, 5, 6, 8, generator=g)
    H, W = 24, 32
    pts = torch.rand(7, 2, generator=g) * torch.tensor([W + 4.0, H + 4.0]) - 2.0  # incl. border
    bi = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    got = sample_at_points(maps, bi, pts, (H, W))
    grid = torch.stack([(pts[:, 0] + 0.5) / W * 2 - 1, (pts[:, 1] + 0.5) / H * 2 - 1], -1)
    ref = F.grid_sample(
        maps[bi], grid.view(7, 1, 1, 2), mode="bilinear", padding_mode="border", align_corners=False
    )[:, :, 0, 0]
    assert torch.allclose(got, ref, atol=1e-5)


def test_gradients_reach_all_heads():
    torch.manual_seed(0)
    m = PointSegmenter(SegmenterConfig(norm="gn"))
    x = make_input(*_frame(64, 64))
    out = m(x)
    lg = m.decode(out, torch.zeros(2, dtype=torch.long), torch.tensor([[10.0, 20.0], [40.0, 30.0]]))
    (lg.mean() + out["objectness"].mean()).backward()
    for name in ("stem.0.weight", "kernel_head.weight", "feat_head.weight", "obj_head.weight"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_instance_embeddings_unit_norm_both_resolutions(model):
    x = make_input(*_frame(batch=2))
    with torch.no_grad():
        out = model(x)
    masks = torch.zeros(3, 96, 128, dtype=torch.bool)
    masks[0, :40, :40] = True
    masks[1, 50:, 60:] = True
    masks[2, 10:30, 90:120] = True
    e = instance_embeddings(out, masks, torch.tensor([0, 1, 1]))
    assert e.shape == (3, model.config.embed_dim)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-4)
    small = F.interpolate(masks[:, None].float(), size=(24, 32), mode="area")[:, 0]
    assert torch.allclose(instance_embeddings(out, small, torch.tensor([0, 1, 1])), e, atol=1e-5)


def test_checkpoint_round_trip(model, tmp_path):
    path = tmp_path / "seg.pt"
    torch.save(model.state_dict(), path)
    m2 = build_model(SegmenterConfig.from_dict(model.config.to_dict()))
    m2.load_state_dict(torch.load(path, weights_only=True))
    m2.eval()
    x = make_input(*_frame())
    pts = torch.tensor([[10.0, 10.0], [60.0, 50.0]])
    bi = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        a, b = model(x), m2(x)
        for k in a:
            assert torch.equal(a[k], b[k])
        assert torch.equal(model.decode(a, bi, pts), m2.decode(b, bi, pts))
    # config survives a plain-dict round trip (e.g. stored next to the weights)
    buf = io.BytesIO()
    torch.save({"config": model.config.to_dict()}, buf)
    buf.seek(0)
    assert SegmenterConfig.from_dict(torch.load(buf, weights_only=True)["config"]) == model.config


# ----------------------------------------------------------------------------------------------
# proposals
# ----------------------------------------------------------------------------------------------


def test_find_seeds_are_local_maxima_above_threshold():
    lg = torch.full((1, 1, 10, 10), -5.0)
    lg[0, 0, 2, 3] = 3.0
    lg[0, 0, 7, 7] = 1.0
    lg[0, 0, 7, 8] = 0.5  # neighbour of a stronger cell: not a maximum
    lg[0, 0, 0, 9] = -1.0  # below threshold
    b, pts, s = find_seeds(lg, threshold=0.5, max_seeds=10, image_size=(40, 40))
    assert b.tolist() == [0, 0]
    # cell (row 2, col 3) centre in input pixels: (3 + 0.5) * 4 - 0.5
    assert pts.tolist() == [[13.5, 9.5], [29.5, 29.5]]
    assert s[0] > s[1]


def test_propose_resolution_sorting_and_nms(model):
    rgb, depth, K = _frame(96, 128, seed=3)
    # untrained model: objectness ~0.1 everywhere, so use a low seed threshold to get proposals; the
    # frame's depth is per-pixel noise of 20 cm, which the depth-edge cut would shatter: off here
    masks, scores = propose(model, rgb, depth, K, max_hypotheses=10, objectness_threshold=0.05, nms_iou=0.5,
                            depth_edge_m=None)
    assert isinstance(masks, np.ndarray) and masks.dtype == bool
    assert masks.shape[1:] == (96, 128) and masks.shape[0] == scores.shape[0] <= 10
    assert masks.shape[0] >= 1
    assert np.all(np.diff(scores) <= 0)
    assert np.all((scores >= 0) & (scores <= 1))
    iou = mask_iou_matrix(torch.from_numpy(masks)).numpy()
    np.fill_diagonal(iou, 0)
    assert iou.max(initial=0) <= 0.5
    # network at another resolution: masks and points still in frame pixels
    m2, s2, p2 = propose(
        model,
        torch.from_numpy(rgb),
        torch.from_numpy(depth),
        K,
        objectness_threshold=0.05,
        net_size=(48, 64),
        return_points=True,
    )
    assert isinstance(m2, torch.Tensor) and m2.shape[1:] == (96, 128) and p2.shape == (m2.shape[0], 2)
    # nothing above threshold -> empty, correctly shaped
    m3, s3 = propose(model, rgb, depth, K, objectness_threshold=0.99)
    assert m3.shape == (0, 96, 128) and s3.shape == (0,)


def test_propose_from_output_batched(model):
    x = make_input(*_frame(batch=2))
    with torch.no_grad():
        out = model(x)
    hyps = propose_from_output(model, out, (96, 128), max_hypotheses=5, objectness_threshold=0.05)
    assert len(hyps) == 2
    for h in hyps:
        assert h.masks.shape[1:] == (96, 128) and h.masks.shape[0] <= 5
        assert torch.all(h.scores[:-1] >= h.scores[1:])
