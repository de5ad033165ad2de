"""Tests for learner/train/pseudo_sequences.py (real arrays, no mocks); consistency: tests/test_consistency.py."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy import ndimage, stats

from learner.train.pseudo_sequences import (
    CutoutConfig,
    InstanceBank,
    InstanceCutout,
    PasteConfig,
    cutout_from_interaction,
    make_pseudo_sequence,
)

H, W = 160, 200
FX = 180.0


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


def make_cuts() -> list[InstanceCutout]:
    return [box_cutout(18 + 3 * i, 22 + 2 * i, 0.02 + 0.01 * i, (40 + 20 * i, 180, 60), i) if i % 2
            else disc_cutout(9 + 2 * i, 0.03 + 0.008 * i, i) for i in range(10)]


def make_bank() -> InstanceBank:
    bank = InstanceBank(capacity=32)
    for c in make_cuts():
        bank.add(c)
    return bank


def paste(bg, bg_d, cuts, rng, **kw):
    """The first frame x1 of a pseudo-sequence pasting exactly `cuts` (in a random order)."""
    bank = InstanceBank(capacity=len(cuts))
    for c in cuts:
        bank.add(c)
    return make_pseudo_sequence(bg, bg_d, bank, rng, k_range=(len(cuts), len(cuts)), **kw)[0]


# ----------------------------------------------------------------------------------------------
# Pasting
# ----------------------------------------------------------------------------------------------


def test_overlap_bound_over_many_seeds():
    bg_d = plane_depth()
    cuts = make_cuts()
    n_overlapping_pairs = 0
    for seed in range(25):
        rng = np.random.default_rng(seed)
        bg = textured_rgb(rng)
        # A small region forces many candidate overlaps.
        region = np.zeros((H, W), bool)
        region[40:120, 50:150] = True
        f = paste(bg, bg_d, cuts, rng, region_mask=region)
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
        f = paste(textured_rgb(rng), bg_d, cuts[:5], rng, max_overlap=0.0)
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
    f = paste(textured_rgb(rng), bg_d, cuts, rng, max_overlap=1.0, region_mask=region, scale_range=(1, 1), config=cfg)
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
        f = paste(textured_rgb(rng), bg_d, [cut], rng, region_mask=region)
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
    cuts = make_cuts()
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        f = paste(textured_rgb(rng), bg_d, cuts, rng)
        assert f.labels.dtype == np.uint16
        assert f.visible_masks.shape == f.full_masks.shape == (len(f), H, W)
        assert len(set(f.ids.tolist())) == len(f)
        for i, iid in enumerate(f.ids):
            assert np.array_equal(f.labels == iid, f.visible_masks[i])
            assert not (f.visible_masks[i] & ~f.full_masks[i]).any()
        assert np.array_equal(f.labels > 0, f.visible_masks.any(0))
        assert f.visible_masks.sum(0).max() <= 1
        assert set(np.unique(f.labels).tolist()) <= {0, *f.ids.tolist()}


def test_beta_placement_is_u_shaped():
    bg_d = plane_depth(tilt=0.0)
    bg = np.full((H, W, 3), 100, np.uint8)
    cut = box_cutout(10, 10, 0.03, (200, 0, 0), 0)
    cfg = PasteConfig(rotation_deg=0.0, color_jitter=0.0)
    ts = {"beta": [], "uniform": []}
    for mode in ts:
        for seed in range(400):
            rng = np.random.default_rng(seed)
            f = paste(bg, bg_d, [cut], rng, placement=mode, scale_range=(1, 1), flip=False, config=cfg)
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


def test_bank_fifo_and_sampling_determinism():
    cuts = [box_cutout(10, 10, 0.02, (i, 0, 0), i) for i in range(20)]
    fifo = InstanceBank(capacity=5)
    assert fifo.add(None) is False and len(fifo) == 0
    for c in cuts:
        assert fifo.add(c)
    assert len(fifo) == 5 and sorted(c.source for c in fifo.sample(5, np.random.default_rng(0))) == [15, 16, 17, 18, 19]
    s1 = [c.source for c in fifo.sample(3, np.random.default_rng(9))]
    s2 = [c.source for c in fifo.sample(3, np.random.default_rng(9))]
    assert s1 == s2 and len(set(s1)) == 3
    assert len(fifo.sample(10, np.random.default_rng(0))) == 5 and fifo.sample(0, np.random.default_rng(0)) == []
    with pytest.raises(ValueError):
        InstanceBank(capacity=0)
