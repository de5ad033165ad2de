"""Losses: robust set target (exactness, minimality), partial-label objectness, association, and a
short real optimisation run of the segmenter on a synthetic RGB-D scene."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.model.network import PointSegmenter, SegmenterConfig, instance_embeddings
from learner.proposals.frame import make_input
from learner.train.losses import (
    associate,
    association_loss,
    association_scores,
    bce_dice_loss,
    negative_point_loss,
    objectness_loss,
    robust_set_loss,
    robust_set_target,
)


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(-2), b.flatten(-2)
    return (a & b).sum(-1).float() / (a | b).sum(-1).clamp(min=1).float()


def _fg_at(logits: torch.Tensor, mask: torch.Tensor, delta: float) -> torch.Tensor:
    return torch.where(mask, logits >= -delta, logits > delta)


def _random_case(seed: int, P: int = 3, H: int = 20, W: int = 24):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(P, H, W, generator=g) * 3 + torch.randn(P, 1, 1, generator=g)
    # blob-like noisy masks of random size
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    cy = torch.randint(0, H, (P, 1, 1), generator=g)
    cx = torch.randint(0, W, (P, 1, 1), generator=g)
    r = torch.randint(2, 9, (P, 1, 1), generator=g)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    return logits, mask


@pytest.mark.parametrize("tau", [0.3, 0.5, 0.7, 0.9, 1.0])
def test_robust_target_meets_tau_and_delta_is_minimal(tau):
    for seed in range(40):
        logits, mask = _random_case(seed)
        target, delta = robust_set_target(logits, mask, tau, return_delta=True)
        assert target.dtype == torch.bool and target.shape == logits.shape
        for p in range(logits.shape[0]):
            d = float(delta[p])
            assert d >= 0
            # the target is exactly the shifted argmax at delta, and meets the constraint
            assert torch.equal(target[p], _fg_at(logits[p], mask[p], d))
            assert float(_iou(target[p], mask[p])) >= tau - 1e-6
            if d > 0:
                # any smaller shift violates tau (IoU is piecewise constant: test just below delta)
                smaller = _fg_at(logits[p], mask[p], float(np.nextafter(np.float32(d), np.float32(0))))
                assert float(_iou(smaller, mask[p])) < tau
                # delta is |logit| of a pixel that was classified wrongly
                wrong = torch.where(mask[p], logits[p] < 0, logits[p] > 0)
                assert torch.isclose(logits[p][wrong].abs(), torch.tensor(d)).any()


@pytest.mark.parametrize("quantised", [False, True])
def test_robust_target_matches_brute_force(quantised):
    for seed in range(20):
        logits, mask = _random_case(seed, P=2, H=8, W=9)
        if quantised:  # many exactly tied |logits|: tied pixels can only flip together
            logits = logits.round()
        tau = 0.6
        _, delta = robust_set_target(logits, mask, tau, return_delta=True)
        for p in range(2):
            cands = sorted({0.0, *logits[p].abs().flatten().tolist()})
            best = next(c for c in cands if float(_iou(_fg_at(logits[p], mask[p], c), mask[p])) >= tau)
            assert float(delta[p]) == pytest.approx(best)


def test_robust_target_is_prediction_when_good_enough():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(32, 40, generator=g)
        pred = logits > 0
        noisy = pred.clone()
        flip = torch.rand(32, 40, generator=g) < 0.05  # ~5% label noise keeps IoU high
        noisy ^= flip
        tau = float(_iou(pred, noisy)) - 0.01
        target, delta = robust_set_target(logits, noisy, tau, return_delta=True)
        assert float(delta) == 0.0
        assert torch.equal(target, pred)
    # tau = 0 always keeps the prediction
    logits = torch.randn(2, 10, 10, generator=g)
    assert torch.equal(robust_set_target(logits, torch.rand(2, 10, 10) > 0.5, 0.0), logits > 0)


def test_robust_target_empty_mask_and_broadcast():
    logits = torch.randn(3, 12, 12)
    target, delta = robust_set_target(
        logits, torch.zeros(3, 12, 12, dtype=torch.bool), 0.7, return_delta=True
    )
    assert not target.any() and torch.isinf(delta).all()
    m = torch.zeros(12, 12, dtype=torch.bool)
    m[2:8, 3:9] = True
    t = robust_set_target(logits, m, 0.7)  # (H,W) mask broadcast over P
    assert t.shape == (3, 12, 12)
    assert (_iou(t, m.expand(3, 12, 12)) >= 0.7).all()
    t2 = robust_set_target(logits[0], m, 0.7)  # single (H,W)
    assert torch.equal(t2, t[0])


def test_robust_loss_has_no_gradient_through_target_and_tau1_is_plain_bce():
    logits = torch.randn(2, 16, 16, requires_grad=True)
    m = torch.rand(2, 16, 16) > 0.6
    loss = robust_set_loss(logits, m, 1.0)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, m.float())
    assert torch.allclose(loss, ref)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_bce_dice_prefers_correct_logits():
    m = torch.zeros(1, 16, 16, dtype=torch.bool)
    m[0, 4:10, 4:12] = True
    good = torch.where(m, 4.0, -4.0)
    assert bce_dice_loss(good, m) < bce_dice_loss(-good, m)
    assert bce_dice_loss(good[0], m[0]) < 0.1


def test_objectness_loss_ignores_unlabelled_pixels():
    logits = torch.zeros(2, 1, 10, 12, requires_grad=True)
    pos = torch.zeros(2, 40, 48, dtype=torch.bool)
    neg = torch.zeros(2, 40, 48, dtype=torch.bool)
    pos[0, 0:8, 0:8] = True  # input resolution (4x the map)
    neg[1, 20:40, 24:48] = True
    loss = objectness_loss(logits, pos, neg)
    assert float(loss.detach()) == pytest.approx(np.log(2), rel=1e-5)
    loss.backward()
    gmap = logits.grad[:, 0] != 0
    assert gmap[0, 0:2, 0:2].all() and gmap[1, 5:10, 6:12].all()
    assert int(gmap.sum()) == 4 + 30  # nothing outside the labelled cells
    assert (logits.grad[0, 0, 0:2, 0:2] < 0).all() and (logits.grad[1, 0, 5:, 6:] > 0).all()
    # nothing labelled: zero but differentiable
    z = objectness_loss(logits, torch.zeros_like(pos), None)
    assert float(z.detach()) == 0.0 and z.requires_grad


def test_negative_point_loss_only_near_points():
    logits = torch.zeros(2, 1, 30, 40, requires_grad=True)
    loss = negative_point_loss(logits, torch.tensor([1]), torch.tensor([[80.0, 60.0]]), radius=8.0)
    loss.backward()
    g = logits.grad[:, 0]
    assert (g[0] == 0).all()
    near = g[1] != 0
    assert near[15, 20] and near.sum() <= 25 and (g[1][near] > 0).all()
    empty = negative_point_loss(logits, torch.zeros(0, dtype=torch.long), torch.zeros(0, 2))
    assert float(empty.detach()) == 0.0


def test_association_loss_prefers_correct_matches():
    g = torch.Generator().manual_seed(0)
    z1 = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1)
    perm = torch.randperm(6, generator=g)
    z2 = torch.nn.functional.normalize(z1[perm] + 0.1 * torch.randn(6, 16, generator=g), dim=1)
    inv = torch.argsort(perm)  # z1[i] ~ z2[inv[i]]
    matches = [(i, int(inv[i])) for i in range(6)]
    shuffled = [(i, int(inv[(i + 1) % 6])) for i in range(6)]
    for sym in (False, True):
        good = association_loss(z1, z2, matches, temperature=0.1, symmetric=sym)
        bad = association_loss(z1, z2, shuffled, temperature=0.1, symmetric=sym)
        assert float(good.detach()) < 0.1 < float(bad.detach())
    # Eq. 3 scores and argmax matching recover the permutation
    f = association_scores(z1, z2, 0.1)
    assert f.shape == (6, 6) and ((f >= 0) & (f <= 1)).all()
    assert sorted(associate(z1, z2, 0.1)) == matches
    # unmatched instances (added/removed objects) are fine; no matches -> 0 with graph
    assert torch.isfinite(association_loss(z1, z2[:4], [m for m in matches if m[1] < 4]))
    zero = association_loss(z1.requires_grad_(), z2, [])
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def _scene(H=96, W=128, seed=0):
    """Table plane with three raised coloured boxes; returns rgb, depth, K, instance labels."""
    rng = np.random.default_rng(seed)
    K = np.array([[0.9 * W, 0, (W - 1) / 2], [0, 0.9 * W, (H - 1) / 2], [0, 0, 1.0]])
    depth = np.full((H, W), 0.8, np.float32) + np.linspace(-0.05, 0.05, H, dtype=np.float32)[:, None]
    rgb = np.clip(np.array([150, 140, 120]) + rng.normal(0, 6, (H, W, 3)), 0, 255).astype(np.uint8)
    labels = np.zeros((H, W), np.int64)
    boxes = [(10, 15, 30, 40), (50, 60, 25, 30), (20, 80, 40, 25)]  # y, x, h, w
    for k, (y, x, h, w) in enumerate(boxes):
        labels[y : y + h, x : x + w] = k + 1
        depth[y : y + h, x : x + w] -= 0.03 + 0.02 * k
        rgb[y : y + h, x : x + w] = rng.integers(0, 255, 3)
    depth[rng.random((H, W)) < 0.02] = 0.0
    return rgb, depth, K, labels


def test_few_adam_steps_fit_one_interaction():
    torch.manual_seed(0)
    rgb, depth, K, labels = _scene()
    x = torch.from_numpy(make_input(rgb, depth, K))
    model = PointSegmenter(SegmenterConfig())
    mask = torch.from_numpy(labels == 1)
    point = torch.tensor([[35.0, 25.0]])  # (u,v) inside box 1
    bi = torch.zeros(1, dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def step():
        out = model(x)
        logits = model.decode(out, bi, point)[0]
        loss = robust_set_loss(logits, mask, tau=0.7) + objectness_loss(
            out["objectness"], mask[None], torch.from_numpy(labels == 0)[None]
        )
        iou = float(_iou(logits.detach() > 0, mask))
        return loss, iou, out

    loss0, iou0, _ = step()
    for _ in range(12):
        loss, _, _ = step()
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss1, iou1, out = step()
    assert float(loss1.detach()) < 0.5 * float(loss0.detach())
    assert iou1 > iou0 + 0.3 and iou1 > 0.5
    # instance embeddings of the labelled objects: unit norm, differentiable
    masks = torch.stack([torch.from_numpy(labels == k) for k in (1, 2, 3)])
    emb = instance_embeddings(out, masks)
    assert emb.shape == (3, model.config.embed_dim)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-4)
    association_loss(emb, emb, [(0, 0), (1, 1), (2, 2)]).backward()
    assert model.feat_head.weight.grad is not None
