"""Tests for learner/pseudo_sequences.py and learner/consistency.py (real arrays, no mocks)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from learner.consistency import (
    CascadeConfig,
    CascadeFilter,
    WeakStrongConfig,
    consistency_loss,
    weak_strong_pairs,
)
from learner.pseudo_sequences import (
    CutoutConfig,
    InstanceBank,
    InstanceCutout,
    PasteConfig,
    box_projection_loss,
    cutout_from_interaction,
    make_pseudo_sequence,
    mask_to_box,
    masks_to_boxes,
    paste_instances,
)

H, W = 160, 200
FX = 180.0


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny tensors on a shared 2-core box: intra-op threading only adds contention.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def plane_depth(z0: float = 0.7, tilt: float = 0.25, h: int = H, w: int = W) -> np.ndarray:
    """Depth of a real 3D plane (table tilted about the camera x axis) seen by a pinhole camera."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    # Plane n.X = d with n = (0, -sin t, cos t): 1/z = (n . K^-1 [u v 1]) / d, affine in (u, v).
    cy = (h - 1) / 2
    inv = (-math.sin(tilt) * (v - cy) / FX + math.cos(tilt)) / (z0 * math.cos(tilt))
    return (1.0 / inv).astype(np.float32)


def textured_rgb(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    return rng.integers(80, 120, size=(h, w, 3)).astype(np.uint8)


def box_cutout(h: int, w: int, height_m: float, colour: tuple[int, int, int], source: int, z: float = 0.7):
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:] = colour
    return InstanceCutout(
        rgb=rgb,
        height=np.full((h, w), height_m, np.float32),
        mask=np.ones((h, w), bool),
        source=source,
        quality=1.0,
        support_depth=z,
    )


def disc_cutout(r: int, height_m: float, source: int) -> InstanceCutout:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    m = xx**2 + yy**2 <= r * r
    rgb = np.zeros((2 * r + 1, 2 * r + 1, 3), np.uint8)
    rgb[..., 0] = 50 + 10 * source
    rgb[..., 1] = np.uint8(200 - 5 * source)
    return InstanceCutout(rgb, np.where(m, height_m, 0).astype(np.float32), m, source, 1.0, 0.7)


def make_bank(seed: int = 0) -> InstanceBank:
    bank = InstanceBank(capacity=32, seed=seed)
    for i in range(10):
        if i % 2:
            bank.add(box_cutout(18 + 3 * i, 22 + 2 * i, 0.02 + 0.01 * i, (40 + 20 * i, 180, 60), i))
        else:
            bank.add(disc_cutout(9 + 2 * i, 0.03 + 0.008 * i, i))
    return bank


# ----------------------------------------------------------------------------------------------
# Pasting
# ----------------------------------------------------------------------------------------------


def test_overlap_bound_over_many_seeds():
    bg_d = plane_depth()
    bank = make_bank()
    cuts = list(bank)
    n_overlapping_pairs = 0
    for seed in range(25):
        rng = np.random.default_rng(seed)
        bg = textured_rgb(rng)
        # A small region forces many candidate overlaps.
        region = np.zeros((H, W), bool)
        region[40:120, 50:150] = True
        f = paste_instances(bg, bg_d, cuts, rng, region_mask=region)
        assert len(f) >= 2
        areas = f.full_masks.reshape(len(f), -1).sum(1)
        for i in range(len(f)):
            for j in range(i + 1, len(f)):
                inter = int((f.full_masks[i] & f.full_masks[j]).sum())
                n_overlapping_pairs += inter > 0
                assert inter <= 0.85 * min(areas[i], areas[j]) + 1e-9
        for p in f.placements:  # centres inside the region
            assert region[int(round(p.cy)), int(round(p.cx))]
    assert n_overlapping_pairs > 0  # the bound was exercised, not trivially met

    # With max_overlap=0 the same draws may not overlap at all.
    for seed in range(5):
        rng = np.random.default_rng(seed)
        f = paste_instances(textured_rgb(rng), bg_d, cuts[:5], rng, max_overlap=0.0)
        total = f.full_masks.sum(0)
        assert total.max() <= 1


def _two_stacked(seed: int, tall: float = 0.09, short: float = 0.03):
    """Two same-size boxes forced to overlap heavily on a tilted table; returns frame + heights."""
    bg_d = plane_depth()
    rng = np.random.default_rng(seed)
    cuts = [box_cutout(30, 30, short, (200, 30, 30), 0), box_cutout(30, 30, tall, (30, 30, 200), 1)]
    region = np.zeros((H, W), bool)
    region[70:90, 90:110] = True
    cfg = PasteConfig(rotation_deg=0.0, color_jitter=0.0)
    f = paste_instances(
        textured_rgb(rng), bg_d, cuts, rng, max_overlap=1.0, region_mask=region, scale_range=(1, 1), config=cfg
    )
    return f, bg_d


def test_depth_order_between_pasted_instances_and_background():
    for seed in range(6):
        f, bg_d = _two_stacked(seed)
        assert len(f) == 2
        # Visible pasted pixels are strictly in front of the background.
        pasted = f.labels > 0
        valid = f.depth > 0
        assert pasted.any()
        assert np.all(f.depth[pasted & valid] < bg_d[pasted & valid])
        # Sensor-like dropout only on the rim (depth edges) of pasted instances, never inside.
        lab = f.labels.astype(np.int32)
        same = ndimage.maximum_filter(lab, size=3) == ndimage.minimum_filter(lab, size=3)
        inner = pasted & same  # not on any instance's outline
        near = cv2.dilate(pasted.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert valid[inner].all() and valid[~near].all()
        assert 0 < (~valid & near).sum() < 0.3 * pasted.sum()
        # Where the two footprints overlap, the taller (closer) box is the visible one.
        both = f.full_masks[0] & f.full_masks[1]
        assert both.sum() > 100
        tall_id = f.ids[[c.source for c in f.cutouts].index(1)]
        assert np.all(f.labels[both] == tall_id)
        # ... and the composited depth there is the tall box's top (~ table - 9 cm).
        both &= valid
        assert np.allclose(bg_d[both] - f.depth[both], 0.09, atol=0.004)
        # Outside any pasted instance the background depth is untouched (or dropped at the rim).
        assert np.array_equal(f.depth[~pasted & valid], bg_d[~pasted & valid])

    # The order does not depend on the paste order: swap which cut-out comes first.
    f2, _ = _two_stacked(0, tall=0.03, short=0.09)
    both = f2.full_masks[0] & f2.full_masks[1]
    tall_id = f2.ids[[c.source for c in f2.cutouts].index(0)]
    assert np.all(f2.labels[both] == tall_id)


def test_real_background_object_occludes_pasted_instance():
    bg_d = plane_depth(tilt=0.0)
    block = np.zeros((H, W), bool)
    block[74:86, 94:106] = True
    bg_d = bg_d.copy()
    bg_d[block] -= 0.15  # an unlabelled real object, taller than anything pasted
    hidden_any = False
    for seed in range(8):
        rng = np.random.default_rng(seed)
        region = np.zeros((H, W), bool)
        region[72:88, 92:108] = True
        cut = disc_cutout(15, 0.05, 0)
        f = paste_instances(textured_rgb(rng), bg_d, [cut], rng, region_mask=region)
        assert len(f) == 1
        under = f.full_masks[0] & block
        assert under.any()
        assert not f.visible_masks[0][under].any()  # hidden behind the closer real object
        ok = block & (f.depth > 0)
        assert ok.sum() > 0.5 * block.sum() and np.array_equal(f.depth[ok], bg_d[ok])
        vis = f.visible_masks[0]
        assert vis.sum() > 0.5 * f.full_masks[0].sum() - block.sum()
        hidden_any |= bool(under.any())
    assert hidden_any


def test_label_image_consistent_with_visible_masks():
    bg_d = plane_depth()
    cuts = list(make_bank())
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        f = paste_instances(textured_rgb(rng), bg_d, cuts, rng)
        assert f.labels.dtype == np.uint16
        assert f.visible_masks.shape == f.full_masks.shape == (len(f), H, W)
        assert len(set(f.ids.tolist())) == len(f)
        for i, iid in enumerate(f.ids):
            assert np.array_equal(f.labels == iid, f.visible_masks[i])
            assert not (f.visible_masks[i] & ~f.full_masks[i]).any()
        assert np.array_equal(f.labels > 0, f.visible_masks.any(0))
        assert f.visible_masks.sum(0).max() <= 1
        assert set(np.unique(f.labels).tolist()) <= {0, *f.ids.tolist()}
        # boxes of the visible masks
        b = f.boxes()
        for i in range(len(f)):
            if f.visible_masks[i].any():
                assert tuple(b[i]) == mask_to_box(f.visible_masks[i])


def test_beta_placement_is_u_shaped():
    bg_d = plane_depth(tilt=0.0)
    bg = np.full((H, W, 3), 100, np.uint8)
    cut = box_cutout(10, 10, 0.03, (200, 0, 0), 0)
    cfg = PasteConfig(rotation_deg=0.0, color_jitter=0.0)
    ts = {"beta": [], "uniform": []}
    for mode in ts:
        for seed in range(400):
            rng = np.random.default_rng(seed)
            f = paste_instances(bg, bg_d, [cut], rng, placement=mode, scale_range=(1, 1), flip=False, config=cfg)
            p = f.placements[0]
            ph, pw = f.cutouts[0].mask.shape
            assert f.full_masks[0].sum() == 100
            ts[mode].append((p.cx - (pw - 1) / 2) / (W - pw))
            ts[mode].append((p.cy - (ph - 1) / 2) / (H - ph))
    t = np.asarray(ts["beta"])
    hist, _ = np.histogram(t, bins=10, range=(0, 1))
    assert hist[0] > 2 * hist[4] and hist[0] > 2 * hist[5]
    assert hist[-1] > 2 * hist[4] and hist[-1] > 2 * hist[5]
    assert stats.kstest(t, "beta", args=(0.5, 0.5)).pvalue > 1e-3
    u = np.asarray(ts["uniform"])
    assert stats.kstest(u, "beta", args=(0.5, 0.5)).pvalue < 1e-3  # the test can tell them apart


# ----------------------------------------------------------------------------------------------
# Pseudo-sequences
# ----------------------------------------------------------------------------------------------


def test_pseudo_sequence_matches_refer_to_same_cutout():
    bg_d = plane_depth()
    bank = make_bank()
    n_moved = n_kept = n_matches = 0
    for seed in range(15):
        rng = np.random.default_rng(seed)
        bg = textured_rgb(rng)
        x1, x2, matches = make_pseudo_sequence(bg, bg_d, bank, rng, p_add=0.5, p_remove=0.3, p_move=0.3)
        ev = x2.meta["events"]
        assert 1 <= len(x1) <= 6
        assert set(x1.ids.tolist()) == set(ev["kept"]) | set(ev["moved"]) | set(ev["removed"])
        assert set(x2.ids.tolist()) == set(ev["kept"]) | set(ev["moved"]) | set(ev["added"])
        assert not set(ev["added"]) & set(x1.ids.tolist())
        assert ev["moved"] or ev["removed"] or ev["added"]  # something changed
        for i1, i2 in matches:
            a, b = x1.index_of(i1), x2.index_of(i2)
            assert x1.cutouts[a] is x2.cutouts[b]
            assert x1.visible_masks[a].sum() >= 16 and x2.visible_masks[b].sum() >= 16
            assert x1.placements[a].scale == x2.placements[b].scale
            if i1 in ev["kept"]:
                assert np.array_equal(x1.full_masks[a], x2.full_masks[b])
                n_kept += 1
            else:
                assert i1 in ev["moved"]
                n_moved += 1
            n_matches += 1
        matched = {m[0] for m in matches}
        assert not matched & set(ev["removed"])
    assert n_moved > 0 and n_kept > 0 and n_matches > 10


def test_same_seed_identical_output():
    bg_d = plane_depth()
    bg = textured_rgb(np.random.default_rng(7))
    outs = []
    for _ in range(2):
        bank = make_bank()
        outs.append(make_pseudo_sequence(bg, bg_d, bank, np.random.default_rng(1234)))
    (a1, a2, am), (b1, b2, bm) = outs
    assert am == bm
    for fa, fb in ((a1, b1), (a2, b2)):
        for k in ("rgb", "depth", "labels", "ids", "full_masks", "visible_masks"):
            assert np.array_equal(getattr(fa, k), getattr(fb, k)), k
        assert fa.placements == fb.placements
    c1, _, _ = make_pseudo_sequence(bg, bg_d, make_bank(), np.random.default_rng(4321))
    assert not (np.array_equal(c1.rgb, a1.rgb) and np.array_equal(c1.labels, a1.labels))


# ----------------------------------------------------------------------------------------------
# Cut-outs and the bank
# ----------------------------------------------------------------------------------------------


def _scene_with_box(rng: np.random.Generator, box_h: float = 0.04, noise: float = 0.0):
    table = plane_depth(z0=0.65, tilt=0.35)
    mask = np.zeros((H, W), bool)
    mask[60:100, 80:130] = True
    before = table.copy()
    before[mask] -= box_h
    # clutter: another object touching part of the ring
    other = np.zeros((H, W), bool)
    other[62:80, 131:140] = True
    before[other] -= 0.06
    if noise:
        before = before + rng.normal(0, noise, before.shape).astype(np.float32)
        table_after = table + rng.normal(0, noise, table.shape).astype(np.float32)
    else:
        table_after = table.copy()
    holes = rng.random((H, W)) < 0.05
    before[holes] = 0.0
    rgb = textured_rgb(rng)
    rgb[mask] = (30, 160, 220)
    after = table_after.copy()
    after[other] -= 0.06
    return rgb, before.astype(np.float32), mask, after.astype(np.float32)


def test_cutout_height_profile_from_plane_and_box():
    rng = np.random.default_rng(0)
    for noise in (0.0, 0.001):
        rgb, before, mask, after = _scene_with_box(rng, 0.04, noise)
        for da, expect in ((None, "ring"), (after, "after")):
            rep: dict = {}
            c = cutout_from_interaction(rgb, before, mask, depth_after=da, source=3, report=rep)
            assert c is not None, rep
            assert rep["support"] == expect
            assert c.mask.shape == (40, 50) and c.mask.all()
            assert c.source == 3 and 0.5 < c.quality <= 1.0
            assert c.height.dtype == np.float32 and (c.height >= 0).all()
            assert abs(float(np.median(c.height[c.mask])) - 0.04) < 0.002
            assert np.abs(c.height[c.mask] - 0.04).max() < 0.006  # holes were filled, not zero
            assert np.array_equal(c.rgb[c.mask], np.broadcast_to(np.uint8([30, 160, 220]), (2000, 3)))
            assert 0.6 < c.support_depth < 0.75


def test_cutout_rejections():
    rng = np.random.default_rng(1)
    rgb, before, mask, after = _scene_with_box(rng)
    cfg = CutoutConfig()
    cases = {}
    small = np.zeros_like(mask)
    small[10:15, 10:15] = True
    cases["too_small"] = small
    border = np.zeros_like(mask)
    border[0:30, 50:80] = True
    cases["touches_border"] = border
    c_shape = np.zeros_like(mask)  # an open "C": thin arms, mostly empty convex hull
    c_shape[40:100, 60:120] = True
    c_shape[45:95, 65:120] = False
    cases["not_compact"] = c_shape
    flat = np.zeros_like(mask)
    flat[110:140, 20:60] = True  # bare table: no height
    cases["flat"] = flat
    for reason, m in cases.items():
        rep: dict = {}
        assert cutout_from_interaction(rgb, before, m, config=cfg, report=rep) is None
        assert rep["reason"] == reason
    big = np.zeros_like(mask)
    big[20:140, 20:180] = True
    rep = {}
    assert cutout_from_interaction(rgb, before, big, report=rep) is None and rep["reason"] == "too_large"
    nodepth = before.copy()
    nodepth[mask] = 0.0
    rep = {}
    assert cutout_from_interaction(rgb, nodepth, mask, report=rep) is None and rep["reason"] == "missing_depth"


def test_bank_fifo_reservoir_and_sampling_determinism(tmp_path):
    cuts = [box_cutout(10, 10, 0.02, (i, 0, 0), i) for i in range(20)]
    fifo = InstanceBank(capacity=5, mode="fifo")
    fifo.extend(cuts)
    assert len(fifo) == 5 and [c.source for c in fifo] == [15, 16, 17, 18, 19]
    res_a, res_b = InstanceBank(5, "reservoir", seed=3), InstanceBank(5, "reservoir", seed=3)
    res_a.extend(cuts)
    res_b.extend(cuts)
    assert len(res_a) == 5 and [c.source for c in res_a] == [c.source for c in res_b]
    assert [c.source for c in res_a] != [0, 1, 2, 3, 4]  # replacement happened
    s1 = [c.source for c in fifo.sample(3, np.random.default_rng(9))]
    s2 = [c.source for c in fifo.sample(3, np.random.default_rng(9))]
    assert s1 == s2 and len(set(s1)) == 3
    assert len(fifo.sample(10, np.random.default_rng(0))) == 5
    assert InstanceBank(4, min_quality=0.5).add(InstanceCutout(cuts[0].rgb, cuts[0].height, cuts[0].mask, 0, 0.1)) is False
    fifo.save(tmp_path / "bank.npz")
    loaded = InstanceBank.load(tmp_path / "bank.npz")
    assert len(loaded) == 5 and loaded.capacity == 5 and loaded.mode == "fifo"
    for a, b in zip(fifo, loaded, strict=True):
        assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.height, b.height) and a.source == b.source


# ----------------------------------------------------------------------------------------------
# Mask-to-box and the projection loss
# ----------------------------------------------------------------------------------------------


def test_mask_to_box_known_mask():
    m = np.zeros((20, 30), bool)
    m[5:9, 12:20] = True
    m[11, 3] = True
    assert mask_to_box(m) == (3, 5, 19, 11)
    b = masks_to_boxes(np.stack([m, np.zeros_like(m)]))
    assert b.tolist() == [[3, 5, 19, 11], [-1, -1, -1, -1]]
    with pytest.raises(ValueError):
        mask_to_box(np.zeros((4, 4), bool))


def test_box_projection_loss():
    Hh, Ww = 24, 32
    box = (5, 4, 20, 15)
    full = torch.zeros(Hh, Ww)
    full[4:16, 5:21] = 1
    cross = torch.zeros(Hh, Ww)  # different mask, same projections -> also perfect for the box
    cross[9, 5:21] = 1
    cross[4:16, 12] = 1

    def logits(m):
        return (m * 2 - 1) * 30.0

    boxes = torch.tensor([box, box], dtype=torch.float32)
    perfect = box_projection_loss(torch.stack([logits(full), logits(cross)]), boxes)
    assert perfect.item() < 1e-5
    shifted = torch.roll(full, shifts=4, dims=1)
    bad = box_projection_loss(logits(shifted)[None], boxes[:1])
    assert bad.item() > 0.05
    uncertain = torch.zeros(1, Hh, Ww, requires_grad=True)
    loss = box_projection_loss(uncertain, boxes[:1])
    loss.backward()
    assert loss.item() > 0 and uncertain.grad is not None and uncertain.grad.abs().sum() > 0
    # the box from mask_to_box makes the loss of that mask vanish
    b = torch.tensor([mask_to_box(shifted.numpy() > 0)], dtype=torch.float32)
    assert box_projection_loss(logits(shifted)[None], b).item() < 1e-5


# ----------------------------------------------------------------------------------------------
# Consistency: cascade schedule, weak/strong views, loss
# ----------------------------------------------------------------------------------------------


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
