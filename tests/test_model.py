"""Model, input building and proposals on real tensors: the torch network (`learner.model.network`), the
numpy input builder (`learner.proposals.frame`) and the proposal pipeline over the torch backend."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from learner.model.backend import TorchBackend, torch_segmenter
from learner.model.checkpoint import CheckpointError, load_model, resolve_checkpoint
from learner.model.network import (
    PointSegmenter,
    SegmenterConfig,
    build_model,
    instance_embeddings,
    sample_at_points,
)
from learner.proposals import pipeline
from learner.proposals.frame import IN_CHANNELS, InputSpec, make_input, resize_rgbd, scale_intrinsics
from learner.proposals.mask_sets import intersection_counts
from learner.proposals.plane import height_above_plane


def _frame(H=96, W=128, seed=0, batch=None):
    rng = np.random.default_rng(seed)
    K = np.array([[0.9 * W, 0, W / 2 - 3.0], [0, 0.9 * W, H / 2 + 2.0], [0, 0, 1.0]])
    shape = (H, W) if batch is None else (batch, H, W)
    depth = (0.7 + 0.2 * rng.random(shape)).astype(np.float32)
    depth[rng.random(shape) < 0.1] = 0.0
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    return rgb, depth, K


def _x(rgb, depth, K) -> torch.Tensor:
    """The network input of one frame, or of a batch of frames with one K (stacked)."""
    if depth.ndim == 2:
        return torch.from_numpy(make_input(rgb, depth, K))
    return torch.from_numpy(np.concatenate([make_input(r, d, K) for r, d in zip(rgb, depth, strict=True)]))


def _pixel_map(uv, sx: float, sy: float) -> np.ndarray:
    """Pixel-centre convention: u' = (u + 0.5) sx - 0.5 (same for v)."""
    uv = np.asarray(uv, np.float64)
    return np.stack([(uv[..., 0] + 0.5) * sx - 0.5, (uv[..., 1] + 0.5) * sy - 0.5], -1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PointSegmenter(SegmenterConfig()).eval()


# ----------------------------------------------------------------------------------------------
# the network input (learner.proposals.frame)
# ----------------------------------------------------------------------------------------------


def test_make_input_channels_and_deprojection():
    rgb, depth, K = _frame()
    x = make_input(rgb, depth, K, InputSpec())
    assert x.shape == (1, IN_CHANNELS, 96, 128) and x.dtype == np.float32
    valid = depth > 0
    assert np.array_equal(x[0, 6] > 0.5, valid)
    assert (x[0, 3:6][:, ~valid] == 0).all()
    # XYZ = deprojection minus the lower median of the valid points, / 0.25
    vv, uu = np.mgrid[:96, :128]
    xyz = np.stack([(uu - K[0, 2]) * depth / K[0, 0], (vv - K[1, 2]) * depth / K[1, 1], depth])
    med = [np.sort(c[valid])[(int(valid.sum()) - 1) // 2] for c in xyz]
    v, u = 40, 70
    assert depth[v, u] > 0
    np.testing.assert_allclose(x[0, 3:6, v, u], (xyz[:, v, u] - med) / 0.25, atol=1e-5)
    np.testing.assert_allclose(x[0, 3:6][:, valid], ((xyz - np.reshape(med, (3, 1, 1))) / 0.25)[:, valid], atol=1e-4)
    # RGB normalisation
    r = (rgb[v, u, 0] / 255.0 - 0.485) / 0.229
    assert float(x[0, 0, v, u]) == pytest.approx(r, abs=1e-5)
    # channel 7: height above the fitted plane, clipped and scaled
    h = height_above_plane(depth, K)
    np.testing.assert_allclose(x[0, 7], np.clip(h, -0.1, 0.3) / 0.05, atol=1e-5)
    # the InputSpec numbers are the ones used
    spec = InputSpec(rgb_mean=(0.5, 0.5, 0.5), rgb_std=(0.5, 0.5, 0.5), xyz_scale_m=0.5, height_scale_m=0.1)
    y = make_input(rgb, depth, K, spec)
    np.testing.assert_allclose(y[0, 3:6], x[0, 3:6] / 2, atol=1e-6)
    np.testing.assert_allclose(y[0, 7], x[0, 7] / 2, atol=1e-6)
    assert float(y[0, 0, v, u]) == pytest.approx(rgb[v, u, 0] / 255.0 * 2 - 1, abs=1e-6)


def test_make_input_without_depth():
    rgb, depth, K = _frame()
    x0 = make_input(rgb, np.zeros_like(depth), K)
    assert (x0[0, 3:] == 0).all() and np.isfinite(x0).all()


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
        u2, v2 = _pixel_map([u, v], sx, sy)
        ray1 = Kinv @ np.array([u, v, 1.0])
        ray2 = np.linalg.inv(K2) @ np.array([u2, v2, 1.0])
        np.testing.assert_allclose(ray1, ray2, atol=1e-12)
        # nearest-neighbour depth: every output value is an input value (no blending)
        assert np.isin(depth2, depth).all()
        # the actual resampling follows the same convention: a blob's centroid lands at the mapped pixel
        blob = np.exp(-((uu - 61.3) ** 2 + (vv - 40.7) ** 2) / (2 * 6.0**2))
        img = np.repeat(np.rint(255 * blob)[..., None], 3, -1).astype(np.uint8)
        small = resize_rgbd(img, depth, K, size)[0][..., 0].astype(np.float64)
        yy2, xx2 = np.mgrid[: size[0], : size[1]]
        c2 = np.array([(small * xx2).sum(), (small * yy2).sum()]) / small.sum()
        c1 = np.array([(img[..., 0] * uu).sum(), (img[..., 0] * vv).sum()]) / img[..., 0].sum()
        np.testing.assert_allclose(c2, _pixel_map(c1, sx, sy), atol=0.05)
    # the frame's own size: nothing changes
    r, d, k = resize_rgbd(rgb, depth, K, (H, W))
    assert r is rgb and d is depth and np.array_equal(k, K)


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------


def test_forward_shapes_and_param_count(model):
    n = model.num_parameters()
    assert 3e5 < n < 3e6
    x = _x(*_frame(240, 320))
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
    x = _x(*_frame(batch=3))
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
    x = _x(*_frame(64, 64))
    out = m(x)
    lg = m.decode(out, torch.zeros(2, dtype=torch.long), torch.tensor([[10.0, 20.0], [40.0, 30.0]]))
    (lg.mean() + out["objectness"].mean()).backward()
    for name in ("stem.0.weight", "kernel_head.weight", "feat_head.weight", "obj_head.weight"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_instance_embeddings_unit_norm_both_resolutions(model):
    x = _x(*_frame(batch=2))
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
    x = _x(*_frame())
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
# proposals: the one pipeline over the torch backend
# ----------------------------------------------------------------------------------------------


def test_find_seeds_are_local_maxima_above_threshold():
    lg = np.full((10, 10), -5.0, np.float32)
    lg[2, 3] = 3.0
    lg[7, 7] = 1.0
    lg[7, 8] = 0.5  # neighbour of a stronger cell: not a maximum
    lg[0, 9] = -1.0  # below threshold
    pts, s = pipeline.find_seeds(lg, threshold=0.5, max_seeds=10, image_size=(40, 40))
    # cell (row 2, col 3) centre in input pixels: (3 + 0.5) * 4 - 0.5
    assert pts.tolist() == [[13.5, 9.5], [29.5, 29.5]]
    assert s[0] > s[1] and s.dtype == np.float32
    assert pipeline.find_seeds(lg, 0.5, 1, (40, 40))[0].tolist() == [[13.5, 9.5]]  # strongest first
    assert pipeline.find_seeds(lg, 0.99, 10, (40, 40))[0].shape == (0, 2)


def test_pipeline_decoding_is_the_network_decode(model):
    """The numpy dynamic head (`pipeline.decode_lowres`, `pipeline.sample_at_points`) on the torch
    backend's heads equals the network's own decode (training uses that one)."""
    backend = TorchBackend(model)
    assert backend.head == pipeline.HeadSpec(model.config.embed_dim, model.config.dyn_hidden, model.config.coord_scale)
    assert backend.head.num_kernel_params == model.config.num_kernel_params
    x = _x(*_frame(96, 128, seed=2))
    heads = backend.run(x.numpy())
    g = np.random.default_rng(0)
    pts = (g.random((9, 2)) * [127.0, 95.0]).astype(np.float32)
    got = pipeline.decode_lowres(heads["features"][0], heads["kernels"][0], pts, (96, 128),
                                 backend.head.dyn_hidden, backend.head.coord_scale)
    with torch.no_grad():
        out = model(x)
        b = torch.zeros(9, dtype=torch.long)
        ref = model.decode(out, b, torch.from_numpy(pts), upsample=False).numpy()
        ref_k = sample_at_points(out["kernels"], b, torch.from_numpy(pts), (96, 128)).numpy()
    assert got.shape == ref.shape == (9, 24, 32)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pipeline.sample_at_points(heads["kernels"][0], pts, (96, 128)), ref_k, atol=1e-5)
    assert pipeline.decode_lowres(heads["features"][0], heads["kernels"][0], pts[:0], (96, 128), 8, 64.0).shape == (
        0, 24, 32)


def test_propose_resolution_sorting_and_nms(model):
    rgb, depth, K = _frame(96, 128, seed=3)
    seg = torch_segmenter(model)
    # untrained model: objectness ~0.1 everywhere, so use a low seed threshold to get proposals; the
    # frame's depth is per-pixel noise of 20 cm, which the depth-edge cut would shatter and in which
    # there is no support plane to stand on: both off here
    inst = seg.predict(rgb, depth, K, max_hypotheses=10, objectness_threshold=0.05, nms_iou=0.5, depth_edge_m=None,
                       support_region=False)
    masks, scores = inst.masks, inst.scores
    assert isinstance(masks, np.ndarray) and masks.dtype == bool
    assert masks.shape[1:] == (96, 128) and masks.shape[0] == scores.shape[0] <= 10
    assert masks.shape[0] >= 1
    assert np.all(np.diff(scores) <= 0)
    assert np.all((scores >= 0) & (scores <= 1))
    inter = intersection_counts(masks).astype(np.float64)
    area = np.diag(inter)
    iou = inter / (area[:, None] + area[None, :] - inter)
    np.fill_diagonal(iou, 0)
    assert iou.max(initial=0) <= 0.5
    # network at another resolution: masks and points still in frame pixels
    small = torch_segmenter(model, net_size=(48, 64))
    i2 = small.predict(rgb, depth, K, objectness_threshold=0.05, depth_edge_m=None, support_region=False)
    assert i2.masks.shape[1:] == (96, 128) and i2.points.shape == (len(i2), 2) and len(i2) > 0
    assert (i2.points >= -0.5).all() and (i2.points[:, 0] <= 127.5).all() and (i2.points[:, 1] <= 95.5).all()
    # nothing above threshold -> empty, correctly shaped
    i3 = seg.predict(rgb, depth, K, objectness_threshold=0.99)
    assert i3.masks.shape == (0, 96, 128) and i3.scores.shape == (0,) and i3.points.shape == (0, 2)


def test_load_model_from_a_run_directory(model, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": model.state_dict(), "model_config": model.config.to_dict(), "step": 3},
               run / "checkpoints" / "last.pt")
    assert resolve_checkpoint(run) == (run / "checkpoints" / "last.pt", "trainer_checkpoint")
    loaded, ckpt = load_model(run)
    assert ckpt["step"] == 3 and not loaded.training
    x = _x(*_frame())
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x).values(), loaded(x).values(), strict=True))
    with pytest.raises(CheckpointError, match="no model in"):
        load_model(tmp_path)
