"""The latent-code segmenter (Latent-MaskRCNN): prior-mean decoding, posterior training, and prior sampling
through the one proposal pipeline (torch and ONNX backends)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from learner.deploy import cli as deploy
from learner.deploy.export import synthetic_frame
from learner.deploy.runtime import ModelError, Segmenter
from learner.model.backend import TorchBackend, torch_segmenter
from learner.model.network import PointSegmenter, SegmenterConfig, build_model
from learner.proposals.config import ProposalConfig
from learner.proposals.mask_sets import confidence_masks
from learner.proposals.pipeline import decode_lowres, find_seeds, propose, sample_at_points
from learner.proposals.segmenter import SamplerConfig

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
    return synthetic_frame(128, 160, seed=3)


def test_kernels_are_the_prior_mean_and_codes_change_the_masks(latent_model):
    torch.manual_seed(1)
    x = torch.randn(1, LATENT.in_channels, 64, 96)
    with torch.no_grad():
        out = latent_model(x)
        b = torch.zeros(5, dtype=torch.long)
        pts = torch.rand(5, 2) * torch.tensor([95.0, 63.0])
        plain = latent_model.decode(out, b, pts)
        from learner.model.network import sample_at_points

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


def _same_samples(a, b, flips: int = 3, atol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for (ma, sa), (mb, sb) in zip(a, b, strict=True):
        assert ma.shape == mb.shape
        assert (ma != mb).reshape(len(ma), -1).sum(1).max(initial=0) <= flips
        np.testing.assert_allclose(sa, sb, atol=atol)


def test_pipeline_latent_decoding_is_the_network_prior_sample(latent_model, frame):
    """The numpy pipeline decodes a prior sample exactly as the network's decode(latent_eps=...):
    kernel offset weight @ (exp(0.5 logvar(p)) * eps), both maps sampled at the seed."""
    rgb, depth, K = frame
    seg = torch_segmenter(latent_model)
    x, *_ = seg.prepare(rgb, depth, K)
    heads = seg.backend.run(x)
    assert set(heads) == {"objectness", "features", "kernels", "prior_logvar"}
    W = seg.backend.latent_weight
    assert W.shape == (LATENT.num_kernel_params, LATENT.latent_dim)
    np.testing.assert_array_equal(W, latent_model.latent_proj.weight.detach().numpy())
    H, Wd = x.shape[-2:]
    pts, _ = find_seeds(heads["objectness"][0, 0], 0.1, 12, (H, Wd))
    assert len(pts) == 12
    eps = np.random.default_rng(0).standard_normal((len(pts), LATENT.latent_dim), np.float32)
    sigma = np.exp(np.float32(0.5) * sample_at_points(heads["prior_logvar"][0], pts, (H, Wd)))
    got = decode_lowres(heads["features"][0], heads["kernels"][0], pts, (H, Wd), LATENT.dyn_hidden,
                        LATENT.coord_scale, (sigma * eps) @ W.T)
    mean = decode_lowres(heads["features"][0], heads["kernels"][0], pts, (H, Wd), LATENT.dyn_hidden,
                         LATENT.coord_scale)
    with torch.no_grad():
        out = latent_model(torch.from_numpy(x))
        b = torch.zeros(len(pts), dtype=torch.long)
        ref = latent_model.decode(out, b, torch.from_numpy(pts), upsample=False, image_size=(H, Wd),
                                  latent_eps=torch.from_numpy(eps)).numpy()
        ref_mean = latent_model.decode(out, b, torch.from_numpy(pts), upsample=False, image_size=(H, Wd)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-4, atol=1e-4)
    assert np.abs(got - mean).max() > 0.1  # the codes matter
    # propose: no latent = the prior mean; a zero weight = the prior mean too (the offset vanishes)
    cfg, hs = ProposalConfig(), seg.backend.head
    plain = propose(heads, x, cfg, hs, seg.backend.spec)
    zero = propose(heads, x, cfg, hs, seg.backend.spec, latent=(np.zeros_like(W), np.random.default_rng(0)))
    assert np.array_equal(plain.masks, zero.masks) and np.array_equal(plain.scores, zero.scores)
    drawn = propose(heads, x, cfg, hs, seg.backend.spec, latent=(W, np.random.default_rng(0)))
    assert len(drawn.masks) != len(plain.masks) or not np.array_equal(drawn.masks, plain.masks)
    no_logvar = {k: v for k, v in heads.items() if k != "prior_logvar"}
    with pytest.raises(ValueError, match="prior_logvar"):
        propose(no_logvar, x, cfg, hs, seg.backend.spec, latent=(W, np.random.default_rng(0)))


def test_latent_sampler_prior_mean_first_seeded_and_different(latent_model, frame):
    rgb, depth, K = frame
    seg = torch_segmenter(latent_model)
    ref = seg.predict(rgb, depth, K)
    assert len(ref) > 0
    cfg = SamplerConfig(method="latent", samples=4, seed=5)
    state = torch.get_rng_state()
    smp = seg.predict_samples(rgb, depth, K, cfg)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched
    assert len(smp) == 4 and np.array_equal(smp[0][0], ref.masks) and np.array_equal(smp[0][1], ref.scores)
    assert any(len(m) != len(ref) or not np.array_equal(m, ref.masks) for m, _ in smp[1:])
    again = seg.predict_samples(rgb, depth, K, cfg)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(smp, again, strict=True))
    other = seg.predict_samples(rgb, depth, K, SamplerConfig(method="latent", samples=4, seed=6))
    assert any(len(a[0]) != len(b[0]) or not np.array_equal(a[0], b[0]) for a, b in zip(smp[1:], other[1:], strict=True))
    mean = seg.predict_distributional(rgb, depth, K, mode="mean", sampler=cfg)
    assert np.array_equal(mean.masks, ref.masks) and np.array_equal(mean.scores, ref.scores)
    # p-confidence masks of latent samples lie inside masks of >= ceil(k p) samples
    res = confidence_masks(smp, p=0.75)
    assert len(res) > 0
    for cm in res.masks:
        inside = sum(any((cm & ~sm).sum() == 0 for sm in ms) for ms, _ in smp)
        assert inside >= 3
    # tta_latent: TTA views, each decoded with its own draws; view 0 is the plain prediction
    tl = seg.predict_samples(rgb, depth, K, SamplerConfig(method="tta_latent", samples=3, seed=5))
    tta = seg.predict_samples(rgb, depth, K, SamplerConfig(method="tta", samples=3, seed=5))
    assert np.array_equal(tl[0][0], ref.masks) and np.array_equal(tta[0][0], ref.masks)
    assert any(len(a[0]) != len(b[0]) or not np.array_equal(a[0], b[0]) for a, b in zip(tl[1:], tta[1:], strict=True))
    # a model without a latent code has no latent sampler
    plain = PointSegmenter(SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16,
                                           latent_dim=0)).eval()
    assert TorchBackend(plain).latent_weight is None
    with pytest.raises(ModelError, match="no latent code"):
        torch_segmenter(plain).predict_samples(rgb, depth, K, SamplerConfig(method="latent", samples=2))


def test_exported_latent_model_samples_like_torch(latent_model, frame, tmp_path):
    torch.save({"model": latent_model.state_dict(), "model_config": latent_model.config.to_dict(), "step": 0},
               tmp_path / "last.pt")
    card = deploy.export(tmp_path / "last.pt", tmp_path / "export", size_hw=(128, 160))
    assert card["latent"]["dim"] == LATENT.latent_dim and card["latent"]["output_shape"] == [1, 4, 32, 40]
    seg = Segmenter.load(tmp_path / "export", threads=1)
    np.testing.assert_array_equal(seg.backend.latent_weight, TorchBackend(latent_model).latent_weight)
    ts = torch_segmenter(latent_model, seg.proposals)
    rgb, depth, K = frame
    x, *_ = seg.prepare(rgb, depth, K)
    np.testing.assert_allclose(seg.backend.run(x)["prior_logvar"], ts.backend.run(x)["prior_logvar"], atol=1e-5)
    # the same draws through the same pipeline: the same samples
    cfg = SamplerConfig(method="latent", samples=3, seed=7)
    got = seg.predict_samples(rgb, depth, K, cfg)
    assert any(len(got[0][0]) != len(g[0]) or not np.array_equal(got[0][0], g[0]) for g in got[1:])  # they differ
    _same_samples(got, ts.predict_samples(rgb, depth, K, cfg))
    cfg_tl = SamplerConfig(method="tta_latent", samples=3, seed=7)
    _same_samples(seg.predict_samples(rgb, depth, K, cfg_tl), ts.predict_samples(rgb, depth, K, cfg_tl))
    # the plain (mean) prediction is unchanged by the latent outputs
    mean = seg.predict(rgb, depth, K)
    assert np.array_equal(mean.masks, got[0][0])
    inst = seg.predict_distributional(rgb, depth, K, mode="confidence", p=0.9, sampler=SamplerConfig("latent", 4))
    assert inst.info["sampler"] == "latent"
    # a card whose latent weight does not fit the dynamic head is refused when loading
    bad = json.loads((tmp_path / "export" / "model_card.json").read_text())
    bad["latent"]["weight"] = bad["latent"]["weight"][:-1]
    (tmp_path / "export" / "model_card.json").write_text(json.dumps(bad))
    with pytest.raises(ModelError, match="latent.weight"):
        Segmenter.load(tmp_path / "export", threads=1)
