"""RISE weak/strong consistency (learner/train/consistency.py): the cascade schedule and selection, the
view geometry, the loss and the teacher targets the trainer uses (real arrays and a real model, no mocks).
Training with the option on and off: tests/test_train.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner.model.network import PointSegmenter, SegmenterConfig
from learner.train.consistency import (
    CascadeConfig,
    CascadeFilter,
    WeakStrongConfig,
    _to_map,
    cascade_for,
    consistency_loss,
    teacher_targets,
    warp_to_view,
    weak_strong_pairs,
)

TINY = SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_cascade_schedule_rises_then_quantile_falls():
    cf = CascadeFilter(CascadeConfig())  # paper defaults: T=12000, 0.5 -> 0.85 every 1000, a0=0.995
    T = cf.config.total_steps
    steps = np.arange(0, T + 1, 250)
    thr = np.array([cf.threshold(int(t)) for t in steps])
    q = np.array([cf.quantile(int(t)) for t in steps])
    assert thr[0] == pytest.approx(0.5) and thr.max() == pytest.approx(0.85)
    assert np.all(np.diff(thr) >= -1e-12) and thr[-1] == pytest.approx(0.85)
    for t in range(0, T, 1000):  # changes only at multiples of 1000 steps
        assert cf.threshold(t) == cf.threshold(t + 999)
        assert cf.threshold(t + 1000) > cf.threshold(t) or cf.threshold(t) == pytest.approx(0.85)
    assert cf.threshold(T - 1000) == pytest.approx(0.85) and cf.threshold(T - 1001) < 0.85
    assert cf.threshold(10 * T) == pytest.approx(0.85)
    assert q[0] == pytest.approx(0.995) and q[-1] == pytest.approx(0.0)
    assert np.all(np.diff(q) < 0)
    assert cf.quantile(T // 2) == pytest.approx(0.995 * 0.5)
    assert cf.mask_threshold(0) == pytest.approx(0.5) and cf.mask_threshold(T) == pytest.approx(0.85)

    scores = torch.from_numpy(np.random.default_rng(0).random(300)).float()
    for t in (0, 3000, 6000, 11999, T):
        keep = cf.select(scores, t)
        passed = scores > cf.threshold(t)
        assert not (keep & ~passed).any()
        n_expected = max(1, math.ceil((1 - cf.quantile(t)) * int(passed.sum()) - 1e-9))
        assert int(keep.sum()) == n_expected
        assert scores[keep].min() >= scores[passed & ~keep].max() if (passed & ~keep).any() else True
    assert int(cf.select(scores, 0).sum()) == 1  # top 0.5 % of ~150 survivors
    assert torch.equal(cf.select(scores, T), scores > 0.85)  # quantile fully relaxed at the end
    assert cf.select(torch.full((4,), 0.3), 0).sum() == 0
    batched = cf.select(torch.stack([scores, scores.flip(0)]), 6000)
    assert torch.equal(batched[0], cf.select(scores, 6000))


def test_weak_strong_geometry_maps_predictions_between_views():
    v, u = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    rgb = torch.stack([u / 64, v / 48, (u + v) / 112])[None].repeat(3, 1, 1, 1)
    depth = (0.7 + 0.001 * u)[None].repeat(3, 1, 1)
    geo_only = WeakStrongConfig(
        color_jitter_p=0, planckian_p=0, blur_p=0, grayscale_p=0, noise_p=0, depth_noise_std_m=0, depth_dropout_p=0
    )
    pair = weak_strong_pairs(rgb, depth, np.random.default_rng(5), geo_only)
    warped, valid = pair.weak_to_strong(pair.weak_rgb)
    assert valid.float().mean() > 0.99
    assert (warped - pair.strong_rgb).abs()[valid.expand_as(warped)].max() < 1e-4
    if pair.flipped.any():  # the flip is in the matrix: left-right gradient reversed
        b = int(pair.flipped.nonzero()[0])
        assert pair.weak_rgb[b, 0, 10, 0] > pair.weak_rgb[b, 0, 10, -1]

    full = WeakStrongConfig()
    p1 = weak_strong_pairs(rgb, depth, np.random.default_rng(11), full)
    p2 = weak_strong_pairs(rgb, depth, np.random.default_rng(11), full)
    assert torch.equal(p1.strong_rgb, p2.strong_rgb) and torch.equal(p1.strong_depth, p2.strong_depth)
    assert p1.strong_rgb.shape == (3, 3, 48, 64) and p1.strong_depth.shape == (3, 48, 64)
    assert not torch.allclose(p1.strong_rgb, pair.original_to_strong(rgb)[0], atol=1e-3)


def test_consistency_loss_uses_only_kept_teacher_predictions():
    torch.manual_seed(0)
    teacher = torch.randn(2, 4, 16, 16) * 5
    student = teacher.clone().requires_grad_(True)
    keep = torch.tensor([[True, False, True, False], [False, False, True, True]])
    same = consistency_loss(student * 10, teacher, keep)
    other = consistency_loss(-student, teacher, keep)
    assert other.item() > same.item() + 1.0
    other.backward()
    g = student.grad.abs().flatten(2).sum(-1)
    assert (g[~keep] == 0).all() and (g[keep] > 0).all()
    none = consistency_loss(student, teacher, torch.zeros_like(keep))
    assert none.item() == 0.0


def test_cascade_for_a_run_and_per_frame_selection():
    """The trainer's schedule: the paper's cascade compressed into one run of T steps, selected per frame."""
    T = 300
    cf = cascade_for(T)
    assert cf.config.total_steps == T and cf.config.threshold_interval == 25  # 12 stages as 12,000 / 1000
    assert cf.threshold(0) == pytest.approx(0.5) and cf.threshold(T - 1) == pytest.approx(0.85)
    assert cf.threshold(24) == cf.threshold(0) < cf.threshold(25) < cf.threshold(150) < cf.threshold(275)
    assert cf.mask_threshold(0) == pytest.approx(0.5) and cf.mask_threshold(T) == pytest.approx(0.85)
    assert cf.quantile(0) == pytest.approx(0.995) and cf.quantile(T // 2) == pytest.approx(0.4975)
    # frames are rows; -inf pads frames with fewer seeds and never passes
    scores = torch.tensor([[0.95, 0.9, 0.7, 0.55], [0.6, 0.52, -math.inf, -math.inf], [0.4, 0.3, 0.2, 0.1]])
    # start: everything above 0.5 passes the threshold, the quantile keeps only each frame's best
    assert cf.select(scores, 0).tolist() == [[True, False, False, False], [True, False, False, False], [False] * 4]
    # half-way: threshold 0.5 + 6 * 0.35 / 11 = 0.69; the top ceil(0.5025 n) of the survivors
    assert cf.threshold(150) == pytest.approx(0.5 + 6 * 0.35 / 11)
    assert cf.select(scores, 150).tolist() == [[True, True, False, False], [False] * 4, [False] * 4]
    # end: threshold 0.85, quantile fully relaxed: every score above 0.85
    assert cf.select(scores, T).tolist() == [[True, True, False, False], [False] * 4, [False] * 4]
    assert torch.equal(cf.select(scores, T), scores > 0.85)
    assert cascade_for(5).config.threshold_interval == 1 and cascade_for(0).config.total_steps == 1


def test_view_maps_carry_points_and_stride4_maps_between_views():
    """A blob at a weak-view point lands, after warping at stride 4, where the point maps in the strong view."""
    H, W = 96, 128
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (4, H, W, 3), dtype=np.uint8)
    depth = np.full((4, H, W), 0.7, np.float32)
    views = WeakStrongConfig(flip_p=0.5, crop_scale=(0.7, 0.9), strong_crop_scale=(0.7, 0.9))
    pair = weak_strong_pairs(rgb, depth, rng, views)
    h, w = H // 4, W // 4
    S = _to_map(H, W, h, w)
    assert torch.allclose(S @ torch.tensor([1.5, 1.5, 1.0]), torch.tensor([0.0, 0.0, 1.0]))  # 4x4 block centre -> cell 0
    p = torch.tensor([[60.0, 40.0], [30.0, 50.0], [90.0, 30.0], [64.0, 48.0]])
    M = pair.M_strong.double() @ torch.linalg.inv(pair.M_weak.double())
    ps = (M @ torch.cat([p.double(), torch.ones(4, 1, dtype=torch.float64)], 1)[:, :, None])[:, :2, 0]
    # a Gaussian blob at each weak-view point, on the stride-4 map
    u4 = (torch.arange(w) + 0.5) * 4 - 0.5
    v4 = (torch.arange(h) + 0.5) * 4 - 0.5
    d2 = (u4[None, None, :] - p[:, 0, None, None]) ** 2 + (v4[None, :, None] - p[:, 1, None, None]) ** 2
    blob = torch.exp(-d2 / (2 * 6.0**2))[:, None]
    warped, valid = warp_to_view(blob, S @ pair.M_weak, S @ pair.M_strong, (h, w))
    for b in range(4):
        m = warped[b, 0]
        vv, uu = divmod(int(m.argmax()), w)
        # sub-cell centroid of the warped blob, back in input pixels
        wts = m / m.sum()
        cu = float((wts.sum(0) * u4).sum())
        cv = float((wts.sum(1) * v4).sum())
        assert abs(cu - float(ps[b, 0])) < 1.5 and abs(cv - float(ps[b, 1])) < 1.5, (b, cu, cv, ps[b])
        assert valid[b, 0, vv, uu]
    # the strong view is a further crop of the weak one (no second flip); a flipped weak view mirrors u
    assert (M[:, 0, 0] > 0).all() and (M[:, 1, 1] > 0).all()
    assert torch.equal(pair.M_weak[:, 0, 0] < 0, pair.flipped)


def test_teacher_targets_keep_per_frame_and_follow_the_schedule():
    """A real (tiny, untrained) model as teacher: at most `queries` seeds per frame, the cascade keeps one per
    frame at the start, the targets live in the strong view, the model's mode and weights are untouched."""
    torch.manual_seed(0)
    model = PointSegmenter(TINY)
    with torch.no_grad():
        model.obj_head.bias.fill_(2.0)  # every objectness maximum is a seed candidate
    model.train()
    H, W = 96, 128
    rng = np.random.default_rng(0)
    K = np.array([[110.0, 0, (W - 1) / 2], [0, 110.0, (H - 1) / 2], [0, 0, 1]])
    frames = []
    for _ in range(3):
        rgb = rng.integers(60, 200, (H, W, 3), dtype=np.uint8)
        depth = np.full((H, W), 0.7, np.float32)
        depth[30:60, 40:80] = 0.65
        frames.append((rgb, depth, K))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cf = cascade_for(100)
    info: dict = {}
    t0 = teacher_targets(model, frames, np.random.default_rng(1), cf, 0, queries=4, info=info)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert info["seeds"] == 12 and t0 is not None
    assert info["kept"] == len(t0.points) <= 3  # the top one of each frame (unless it left the strong view)
    assert len(set(t0.batch_index.tolist())) == len(t0.batch_index)
    assert t0.strong_input.shape == (3, 8, H, W)
    assert t0.teacher_logits.shape == t0.valid.shape == (len(t0.points), 1, H // 4, W // 4)
    assert ((t0.points >= 0) & (t0.points <= torch.tensor([W - 1.0, H - 1.0]))).all()
    assert t0.mask_threshold == pytest.approx(0.5) and (t0.scores > 0.5).all()
    # the same generator state gives the same views and targets
    t0b = teacher_targets(model, frames, np.random.default_rng(1), cf, 0, queries=4)
    assert torch.equal(t0.strong_input, t0b.strong_input) and torch.equal(t0.points, t0b.points)
    # late in the run more of each frame's seeds pass (quantile relaxed) if their scores clear 0.85
    info_late: dict = {}
    late = teacher_targets(model, frames, np.random.default_rng(1), cf, 99, queries=4, info=info_late)
    n_late = 0 if late is None else len(late.points)
    assert late is None or (late.scores > 0.85).all()
    assert late is None or late.mask_threshold == pytest.approx(0.85)
    assert n_late == info_late["kept"]
