"""p-confidence masks, Union-NMS and sample diversity (learner.proposals.mask_sets) on small synthetic samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from learner.proposals.mask_sets import (
    ConfidenceConfig,
    confidence_masks,
    prepare_samples,
    required_agreement,
    sample_diversity,
    union_nms,
)

H, W = 64, 96
PS = (0.2, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)


def _disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _samples(seed: int, k: int = 8, jitter: float = 2.0, merge_prob: float = 0.25, miss_prob: float = 0.1,
             spurious_prob: float = 0.2) -> list[tuple[np.ndarray, np.ndarray]]:
    """k noisy segmentations of 4 touching-ish discs: jittered extents, sometimes the first two objects
    merged into one mask, objects missed, a spurious blob."""
    rng = np.random.default_rng(seed)
    objs = [(16 + 32 * (i % 2) + rng.uniform(-2, 2), 16 + 22 * i + rng.uniform(-2, 2), rng.uniform(7, 10))
            for i in range(4)]
    out = []
    for _ in range(k):
        ms, ss = [], []
        merged = rng.random() < merge_prob
        for cy, cx, r in objs:
            if rng.random() < miss_prob:
                continue
            ms.append(_disc(cy + rng.normal(0, jitter / 2), cx + rng.normal(0, jitter / 2), r + rng.normal(0, jitter)))
            ss.append(rng.uniform(0.5, 1.0))
        if merged and len(ms) >= 2:
            ms[0] = ms[0] | ms[1]
        if rng.random() < spurious_prob:
            ms.append(_disc(rng.uniform(0, H), rng.uniform(0, W), rng.uniform(3, 6)))
            ss.append(rng.uniform(0.2, 0.6))
        out.append((np.array(ms, bool).reshape(-1, H, W), np.array(ss, np.float32)))
    return out


def _n_containing(samples, c: np.ndarray) -> int:
    """Number of samples with some mask that contains c entirely (computed from scratch)."""
    return sum(any(not (c & ~m).any() for m in masks) for masks, _ in samples)


def test_required_agreement_and_bad_input():
    assert required_agreement(10, 0.9) == 9 and required_agreement(10, 0.95) == 10
    assert required_agreement(8, 0.5) == 4 and required_agreement(3, 1.0) == 3 and required_agreement(5, 0.01) == 1
    assert required_agreement(10, 0.7) == 7  # 10 * 0.7 = 7.000000000000001 must not round up
    for bad in (0.0, -0.1, 1.01, float("nan"), True):
        with pytest.raises(ValueError, match="p must lie in"):
            required_agreement(5, bad)
        with pytest.raises(ValueError, match="p must lie in"):
            confidence_masks(_samples(0), p=bad)
    with pytest.raises(ValueError, match="at least one sample"):
        confidence_masks([], p=0.5)
    with pytest.raises(ValueError, match="differs from sample 0"):
        confidence_masks([(np.zeros((1, 4, 4), bool), [1.0]), (np.zeros((1, 5, 4), bool), [1.0])], p=0.5)
    with pytest.raises(ValueError, match="1 masks but 2 scores"):
        union_nms([(np.zeros((1, 4, 4), bool), [1.0, 0.5])])
    with pytest.raises(ValueError, match="method"):
        confidence_masks(_samples(0), config=ConfidenceConfig(method="vote"))


@pytest.mark.parametrize("method", ["nested", "greedy"])
def test_confidence_mask_lies_in_ceil_kp_samples(method):
    n_out = 0
    for seed in range(12):
        smp = _samples(seed)
        k = len(smp)
        prep = prepare_samples(smp)
        for p in PS:
            res = confidence_masks(prep, p, ConfidenceConfig(method=method))
            m = math.ceil(k * p - 1e-9)
            assert res.required == m and res.k == k
            assert res.masks.shape[1:] == (H, W) and res.masks.dtype == bool
            assert np.all(np.diff(res.scores) <= 0)
            if len(res) > 1:  # disjoint
                assert res.masks.sum(0).max() <= 1
            for c, mem, s in zip(res.masks, res.members, res.scores, strict=True):
                assert c.sum() >= 16 and s > 0.1
                # the property itself, counted independently of the algorithm's bookkeeping
                assert _n_containing(smp, c) >= m
                # and the bookkeeping: m intersected masks from m distinct samples, each containing c
                assert len(mem) == m and len(set(mem[:, 0].tolist())) == m
                for g, j in mem:
                    assert not (c & ~smp[g][0][j]).any()
            n_out += len(res)
    assert n_out > 50  # the property was exercised, not satisfied by returning nothing


def test_single_sample_p1_and_agreeing_samples():
    """k identical samples: every object comes back whole at every p (nothing to disagree on)."""
    objs = np.stack([_disc(20, 20, 8), _disc(40, 60, 9)])
    smp = [(objs, np.array([0.9, 0.8], np.float32))] * 5
    for p in PS:
        res = confidence_masks(smp, p)
        assert len(res) == 2 and res.required == math.ceil(5 * p - 1e-9)
        assert np.array_equal(res.masks[0], objs[0]) and np.array_equal(res.masks[1], objs[1])
        np.testing.assert_allclose(res.scores, [0.9, 0.8], rtol=1e-6)  # IoU 1 with every member


def test_nested_masks_shrink_or_drop_monotonically_as_p_grows():
    nested = ConfidenceConfig(method="nested")
    steps = 0
    for seed in range(40):
        prep = prepare_samples(_samples(seed))
        res = [confidence_masks(prep, p, nested) for p in PS]
        for lo, hi in zip(res, res[1:], strict=False):
            assert len(hi) <= len(lo)
            assert hi.masks.sum() <= lo.masks.sum()
            for c in hi.masks:  # inside one mask of the lower p (the same object, shrunk)
                assert any(not (c & ~d).any() for d in lo.masks)
            steps += 1
    # the property is not vacuous: masks really shrink and drop along the way
    sizes = [[confidence_masks(prepare_samples(_samples(s)), p, nested).masks.sum() for p in (0.2, 1.0)]
             for s in range(5)]
    assert all(a > b for a, b in sizes)


def test_greedy_alg1_shrinks_in_total_but_not_per_mask():
    """Alg. 1 as published (the default) recomputes its greedy choices for every p: the total area
    falls as p grows on these draws, but single masks can move to pixels no lower-p mask had (that
    is why the nested method exists). Regression check on fixed draws, not a theorem."""
    moved = 0
    for seed in range(40):
        prep = prepare_samples(_samples(seed))
        res = [confidence_masks(prep, p) for p in PS]
        areas = [r.masks.sum() for r in res]
        assert all(a >= b for a, b in zip(areas, areas[1:], strict=False))
        for lo, hi in zip(res, res[1:], strict=False):
            moved += sum(not any(not (c & ~d).any() for d in lo.masks) for c in hi.masks)
    assert moved > 0


def test_uncertain_merge_is_split_and_uncertain_object_dropped():
    """3 of 10 samples merge objects A and B, object C is seen by 4 of 10 samples only."""
    A, B, C = _disc(20, 20, 8), _disc(20, 37, 8), _disc(45, 70, 8)
    smp = []
    for g in range(10):
        ms = [A | B] if g < 3 else [A, B]
        if g < 4:
            ms.append(C)
        smp.append((np.stack(ms), np.full(len(ms), 0.9, np.float32)))
    nested = ConfidenceConfig(method="nested")
    for p in (0.2, 0.4):  # majority of samples: A and B apart, C still present
        res = confidence_masks(smp, p, nested)
        assert not any((r & A).any() and (r & B).any() for r in res.masks)
        assert any((r & C).any() for r in res.masks)
    for method in ("nested", "greedy"):
        res = confidence_masks(smp, 0.9, ConfidenceConfig(method=method))
        assert len(res) == 2 and not any((r & C).any() for r in res.masks)  # C: 4 of 10 samples < 9
        for r in res.masks:  # A+B together: 3 of 10 samples < 9
            assert not ((r & A).any() and (r & B).any())
    # Alg. 1 as published takes the merge at p = 0.2 (3 of 10 samples agree on it), but not at p = 0.9
    greedy = [confidence_masks(smp, p, ConfidenceConfig(method="greedy")) for p in (0.2, 0.9)]
    assert any((r & A).any() and (r & B).any() for r in greedy[0].masks)
    assert not any((r & A).any() and (r & B).any() for r in greedy[1].masks)


def test_union_nms_covers_every_suppressed_mask():
    total = 0
    for seed in range(10):
        smp = _samples(seed)
        res = union_nms(smp, iou_threshold=0.5)
        flat = [(g, j) for g, (masks, _) in enumerate(smp) for j in range(len(masks)) if masks[j].any()]
        seen = sorted((int(g), int(j)) for mem in res.members for g, j in mem)
        assert seen == sorted(flat)  # every input mask is in exactly one group
        for u, mem, s in zip(res.masks, res.members, res.scores, strict=True):
            g0, j0 = mem[0]
            assert s == pytest.approx(float(smp[g0][1][j0]))  # the kept mask's score
            assert np.array_equal(u, np.any([smp[g][0][j] for g, j in mem], axis=0))
            for g, j in mem[1:]:
                m = smp[g][0][j]
                assert not (m & ~u).any()  # a suppressed mask lies inside its union
                assert smp[g][1][j] <= s
                kept = smp[g0][0][j0]
                assert (kept & m).sum() / (kept | m).sum() > 0.5
            total += len(mem) - 1
        # kept masks do not suppress each other
        for a in range(len(res)):
            for b in range(a + 1, len(res)):
                ka = smp[res.members[a][0][0]][0][res.members[a][0][1]]
                kb = smp[res.members[b][0][0]][0][res.members[b][0][1]]
                assert (ka & kb).sum() / (ka | kb).sum() <= 0.5
    assert total > 20
    capped = union_nms(_samples(0), max_masks=2)
    assert len(capped) == 2


def test_diversity_zero_for_identical_samples_and_grows_with_noise():
    objs = np.stack([_disc(20, 20, 8), _disc(40, 60, 9)])
    same = sample_diversity([(objs, np.array([0.9, 0.8]))] * 4)
    assert same["boundary_diversity"] == 0 and same["unmatched_rate"] == 0
    assert same["distinct_segmentations"] == 1 and same["pixel_agreement"] == 1
    calm = sample_diversity(_samples(3, jitter=0.5, merge_prob=0, miss_prob=0, spurious_prob=0))
    wild = sample_diversity(_samples(3, jitter=3.0, merge_prob=0.5, miss_prob=0.3, spurious_prob=0.5))
    assert wild["boundary_diversity"] > calm["boundary_diversity"]
    assert wild["unmatched_rate"] > calm["unmatched_rate"] and wild["pixel_agreement"] < calm["pixel_agreement"]


def test_empty_samples():
    empty = [(np.zeros((0, H, W), bool), np.zeros(0))] * 3
    assert len(confidence_masks(empty, 0.5)) == 0 and len(union_nms(empty)) == 0
    r = confidence_masks(empty + [(_disc(20, 20, 8)[None], np.array([0.9]))], 0.5)
    assert len(r) == 0  # seen by 1 of 4 samples < ceil(4 * 0.5)
    assert len(confidence_masks(empty + [(_disc(20, 20, 8)[None], np.array([0.9]))], 0.25)) == 1
