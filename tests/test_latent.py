"""The latent-code segmenter (Latent-MaskRCNN): prior-mean decoding, posterior training, prior sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from learner import deploy, sampling
from learner.hypotheses import propose, propose_latent_samples
from learner.mask_sets import confidence_masks
from learner.model import PointSegmenter, SegmenterConfig, build_model

LATENT = SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16, latent_dim=4)


@pytest.fixture(scope="module")
def latent_model() -> PointSegmenter:
    """A tiny latent model whose codes visibly change the masks (trained ones learn this)."""
    torch.manual_seed(0)
    m = PointSegmenter(LATENT)
    with torch.no_grad():
        m.obj_head.bias.fill_(1.0)  # seeds pass the objectness threshold
        m.latent_proj.weight.normal_(0.0, 1.0)
        m.prior_head.weight.normal_(0.0, 0.3)
    return m.eval()


@pytest.fixture(scope="module")
def frame():
    return deploy._synthetic_frame(128, 160, seed=3)


def test_kernels_are_the_prior_mean_and_codes_change_the_masks(latent_model):
    torch.manual_seed(1)
    x = torch.randn(1, LATENT.in_channels, 64, 96)
    with torch.no_grad():
        out = latent_model(x)
        b = torch.zeros(5, dtype=torch.long)
        pts = torch.rand(5, 2) * torch.tensor([95.0, 63.0])
        plain = latent_model.decode(out, b, pts)
        from learner.model import sample_at_points

        mu = sample_at_points(out["prior_mu"], b, pts, (64, 96))
        at_mu = latent_model.decode(out, b, pts, latent_z=mu)
        zero_eps = latent_model.decode(out, b, pts, latent_eps=torch.zeros(5, LATENT.latent_dim))
        sampled = latent_model.decode(out, b, pts, latent_eps=torch.randn(5, LATENT.latent_dim))
    assert set(out) >= {"objectness", "features", "kernels", "prior_mu", "prior_logvar", "latent_weight"}
    assert torch.allclose(plain, at_mu, atol=1e-4) and torch.allclose(plain, zero_eps, atol=1e-4)
    assert (plain - sampled).abs().max() > 0.1


def test_posterior_sees_the_mask_and_old_configs_load(latent_model):
    x = torch.randn(2, LATENT.in_channels, 64, 64)
    out = latent_model(x)
    masks = torch.zeros(3, 64, 64)
    masks[0, 10:30, 10:30] = 1
    masks[1, 10:30, 10:50] = 1  # same query, bigger mask
    masks[2, 40:60, 40:60] = 1
    b = torch.tensor([0, 0, 1])
    pts = torch.tensor([[20.0, 20.0], [20.0, 20.0], [50.0, 50.0]])
    with torch.no_grad():
        latent_model.posterior[-1].weight.normal_(0.0, 0.5)  # an untrained posterior ignores its input
        mu, logvar = latent_model.posterior_params(out, b, pts, masks, (64, 64))
    assert mu.shape == (3, LATENT.latent_dim) and logvar.shape == (3, LATENT.latent_dim)
    assert not torch.allclose(mu[0], mu[1])  # a different mask for the same query -> a different code
    # a checkpoint from before the latent code (no latent keys) is the plain network
    plain = SegmenterConfig.from_dict({k: v for k, v in LATENT.to_dict().items() if k not in ("latent_dim", "posterior_hidden")})
    assert plain.latent_dim == 0 and not hasattr(build_model(plain), "posterior")
    with pytest.raises(ValueError, match="no latent code"):
        build_model(plain).posterior_params(out, b, pts, masks)


def test_latent_sampler_prior_mean_first_seeded_and_different(latent_model, frame):
    rgb, depth, K = frame
    ref_m, ref_s = propose(latent_model, rgb, depth, K)
    assert len(ref_m) > 0
    cfg = sampling.SamplerConfig(method="latent", samples=4, seed=5)
    state = torch.get_rng_state()
    smp = sampling.sample_hypotheses(latent_model, rgb, depth, K, cfg)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched
    assert len(smp) == 4 and np.array_equal(smp[0][0], ref_m) and np.array_equal(smp[0][1], ref_s)
    assert any(len(m) != len(ref_m) or not np.array_equal(m, ref_m) for m, _ in smp[1:])
    again = sampling.sample_hypotheses(latent_model, rgb, depth, K, cfg)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(smp, again, strict=True))
    m, s = sampling.predict(latent_model, rgb, depth, K, mode="mean")
    assert np.array_equal(m, ref_m) and np.array_equal(s, ref_s)
    # p-confidence masks of latent samples lie inside masks of >= ceil(k p) samples
    res = confidence_masks(smp, p=0.75)
    for cm in res.masks:
        inside = sum(any((cm & ~sm).sum() == 0 for sm in ms) for ms, _ in smp)
        assert inside >= 3
    # a model without a latent code gives k copies of its plain prediction
    plain = PointSegmenter(SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16,
                                           latent_dim=0)).eval()
    copies = propose_latent_samples(plain, rgb, depth, K, samples=2)
    assert np.array_equal(copies[0][0], copies[1][0])


def test_exported_latent_model_samples_like_torch(latent_model, frame, tmp_path):
    from learner.segmenter_runtime import Segmenter

    torch.save({"model": latent_model.state_dict(), "model_config": latent_model.config.to_dict(), "step": 0},
               tmp_path / "last.pt")
    card = deploy.export(tmp_path / "last.pt", tmp_path / "export", size_hw=(128, 160))
    assert card["latent"]["dim"] == LATENT.latent_dim
    seg = Segmenter.load(tmp_path / "export", threads=1)
    rgb, depth, K = frame
    ref = sampling.sample_hypotheses(latent_model, rgb, depth, K, sampling.SamplerConfig(method="latent", samples=3, seed=7))
    got = seg.predict_samples(rgb, depth, K, samples=3, seed=7, sampler="latent")
    assert any(not np.array_equal(got[0][0], g[0]) for g in got[1:])  # the samples differ
    for (rm, rs), (gm, gs) in zip(ref, got, strict=True):
        assert rm.shape == gm.shape
        assert (rm != gm).sum() <= 0.001 * rm.size  # pixels within float rounding of the threshold
        np.testing.assert_allclose(rs, gs, atol=1e-4)
    ref_c = sampling.sample_hypotheses(latent_model, rgb, depth, K,
                                       sampling.SamplerConfig(method="tta_latent", samples=3, seed=7))
    got_c = seg.predict_samples(rgb, depth, K, samples=3, seed=7, sampler="tta_latent")
    for (rm, rs), (gm, gs) in zip(ref_c, got_c, strict=True):
        assert rm.shape == gm.shape and (rm != gm).sum() <= 0.002 * rm.size
        np.testing.assert_allclose(rs, gs, atol=1e-3)
    # the plain (mean) prediction is unchanged by the latent outputs
    mean = seg.predict(rgb, depth, K)
    assert np.array_equal(mean.masks, got[0][0])
    inst = seg.predict_distributional(rgb, depth, K, mode="confidence", p=0.9, samples=4, sampler="latent")
    assert inst.info["sampler"] == "latent"
    # a card whose latent weight does not fit the dynamic head is refused when loading
    from learner.segmenter_runtime import ModelError

    bad = json.loads((tmp_path / "export" / "model_card.json").read_text())
    bad["latent"]["weight"] = bad["latent"]["weight"][:-1]
    (tmp_path / "export" / "model_card.json").write_text(json.dumps(bad))
    with pytest.raises(ModelError, match="latent.weight"):
        Segmenter.load(tmp_path / "export", threads=1)
