"""Sampling hypotheses (TTA, MC dropout), prior-mean mode, and the deploy runtime's distributional modes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from learner import deploy, sampling
from learner.agent import Agent, AgentConfig
from learner.hypotheses import propose
from learner.mask_sets import ConfidenceConfig, confidence_masks
from learner.model import PointSegmenter, SegmenterConfig
from learner.segmenter_runtime import Segmenter, interior_points
from learner.tta import FrameTransform, TTAConfig, make_transforms, sample_with_transforms

# the plain network (no latent code): the latent sampler is tested in tests/test_latent.py
TINY = SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16, latent_dim=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: tiny models on a shared 2-core machine are faster so (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny() -> PointSegmenter:
    torch.manual_seed(0)
    m = PointSegmenter(TINY)
    with torch.no_grad():  # untrained objectness starts at p = 0.1: lift it so seeds pass 0.5
        m.obj_head.bias.fill_(1.0)
    return m.eval()


@pytest.fixture(scope="module")
def frame():
    """A small frame for the model tests (the model runs at any multiple of 16)."""
    return deploy._synthetic_frame(128, 160, seed=3)


@pytest.fixture(scope="module")
def big_frame():
    return deploy._synthetic_frame(240, 320, seed=3)


def _raised_objects(rgb: np.ndarray, depth: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A model-free segmenter: connected regions at least 2 cm nearer than the table row median."""
    d = np.where(depth > 0, depth, np.inf)
    table = np.median(np.where(depth > 0, depth, np.median(depth[depth > 0])), axis=1, keepdims=True)
    raised = (table - d) > 0.02
    n, lab = cv2.connectedComponents(raised.astype(np.uint8))
    masks = np.stack([lab == i for i in range(1, n)]) if n > 1 else np.zeros((0, *depth.shape), bool)
    keep = masks.reshape(len(masks), -1).sum(1) >= 50
    return masks[keep], np.ones(int(keep.sum()), np.float32)


def _above_plane(rgb: np.ndarray, depth: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A model-free segmenter that works in any view (it needs a correct K): connected regions more
    than 2 cm above the fitted table plane."""
    from learner.table_plane import height_above_plane

    raised = height_above_plane(depth, K) > 0.02
    n, lab = cv2.connectedComponents(raised.astype(np.uint8))
    masks = np.stack([lab == i for i in range(1, n)]) if n > 1 else np.zeros((0, *depth.shape), bool)
    keep = masks.reshape(len(masks), -1).sum(1) >= 50
    return masks[keep], np.ones(int(keep.sum()), np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ------------------------------------------------------------------------------------ prior mean


@pytest.mark.parametrize("method", ["tta", "mc_dropout"])
def test_prior_mean_equals_plain_model(tiny, frame, method):
    rgb, depth, K = frame
    ref_m, ref_s = propose(tiny, rgb, depth, K)
    assert len(ref_m) > 0
    m, s = sampling.predict(tiny, rgb, depth, K, mode="mean")
    assert np.array_equal(m, ref_m) and np.array_equal(s, ref_s)
    cfg = sampling.SamplerConfig(method=method, samples=3)
    smp = sampling.sample_hypotheses(tiny, rgb, depth, K, cfg)
    assert len(smp) == 3 and np.array_equal(smp[0][0], ref_m) and np.array_equal(smp[0][1], ref_s)
    assert any(len(x[0]) != len(ref_m) or not np.array_equal(x[0], ref_m) for x in smp[1:])  # samples differ
    # sampling left the model and the global RNG untouched
    state = torch.get_rng_state()
    again = sampling.sample_hypotheses(tiny, rgb, depth, K, cfg)
    assert torch.equal(state, torch.get_rng_state())
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(smp, again, strict=True))  # seeded
    m2, s2 = propose(tiny, rgb, depth, K)
    assert np.array_equal(m2, ref_m) and np.array_equal(s2, ref_s)
    assert not tiny.trunk._forward_hooks


def test_mc_dropout_changes_the_output_only_inside_the_context(tiny, frame):
    x = torch.randn(1, TINY.in_channels, 64, 64)
    with torch.no_grad():
        ref = tiny(x)["objectness"]
        with sampling.mc_dropout(tiny, 0.5):
            drop = tiny(x)["objectness"]
        after = tiny(x)["objectness"]
    assert not torch.equal(ref, drop) and torch.equal(ref, after)
    with pytest.raises(ValueError, match="no submodule"):
        with sampling.mc_dropout(tiny, 0.1, "nope"):
            pass


def test_bad_sampler_settings(tiny, frame):
    rgb, depth, K = frame
    for bad, msg in ((dict(samples=0), "samples"), (dict(method="ensemble"), "method"),
                     (dict(method="latent"), "needs a model trained with a latent code"), (dict(dropout_rate=1.0), "dropout"),
                     (dict(tta=TTAConfig(scale_range=(1.2, 1.1))), "scale_range")):
        with pytest.raises(ValueError, match=msg):
            sampling.sample_hypotheses(tiny, rgb, depth, K, sampling.SamplerConfig(**bad))
    with pytest.raises(ValueError, match="mode"):
        sampling.predict(tiny, rgb, depth, K, mode="median")
    with pytest.raises(ValueError, match=r"p must lie in \(0, 1\]"):
        sampling.predict(tiny, rgb, depth, K, mode="confidence", p=1.5, sampler=sampling.SamplerConfig(samples=2))


# ---------------------------------------------------------------------------- TTA geometry


def test_tta_keeps_3d_geometry_consistent(big_frame):
    rgb, depth, K = big_frame
    H, W = depth.shape
    for t in (FrameTransform(flip=True), FrameTransform(scale=1.08, shift_u=0.02, shift_v=-0.03),
              FrameTransform(flip=True, scale=0.92, shift_u=-0.025, shift_v=0.01)):
        r, d, k = t.apply(rgb, depth, K)
        assert r.shape == rgb.shape and d.shape == depth.shape and k[0, 0] > 0 and k[1, 1] > 0
        A = t.affine(H, W)
        for u, v in ((60, 90), (250, 200), (160, 120)):
            z = depth[v, u]
            u2, v2 = A @ [u, v, 1.0]
            assert d[int(round(v2)), int(round(u2))] == z  # nearest-neighbour depth, no blending
            X, Y = (u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1]
            X2, Y2 = (u2 - k[0, 2]) * z / k[0, 0], (v2 - k[1, 2]) * z / k[1, 1]
            assert X2 == pytest.approx(-X if t.flip else X, abs=1e-9) and Y2 == pytest.approx(Y, abs=1e-9)
        back = t.points_to_frame(np.array([A @ [10.0, 20.0, 1.0]]), H, W)
        np.testing.assert_allclose(back, [[10.0, 20.0]], atol=1e-9)


def test_tta_roll_is_a_camera_roll(big_frame):
    """A rotated view shows camera-frame points rotated about the optical axis (a rolled camera)."""
    rgb, depth, K = big_frame
    K = K.copy()
    K[1, 1] = K[0, 0]  # exact for square pixels
    H, W = depth.shape
    for t in (FrameTransform(roll_deg=12.0, scale=1.05, shift_u=0.01),
              FrameTransform(flip=True, roll_deg=-20.0, scale=0.95, shift_v=-0.02)):
        r, d, k = t.apply(rgb, depth, K)
        assert k[0, 0] == pytest.approx(t.scale * K[0, 0]) and k[0, 1] == 0.0
        A = t.affine(H, W)
        th = np.radians(t.roll_deg)
        R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @ np.diag([-1.0 if t.flip else 1.0, 1.0])
        for u, v in ((60, 90), (250, 200), (160, 120)):
            z = depth[v, u]
            u2, v2 = A @ [u, v, 1.0]
            assert d[int(round(v2)), int(round(u2))] == z
            XY = np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]]) * z
            XY2 = np.array([(u2 - k[0, 2]) / k[0, 0], (v2 - k[1, 2]) / k[1, 1]]) * z
            np.testing.assert_allclose(XY2, R @ XY, atol=1e-9)
        masks, _ = _above_plane(rgb, depth, K)
        back, _ = sample_with_transforms(_above_plane, rgb, depth, K, [t])[0]
        inner = [m for m in masks if np.argwhere(m).min() > 30 and (np.argwhere(m).max(0) < [H - 30, W - 30]).all()]
        assert len(inner) >= 3
        for obj in inner:  # objects come back where they are, up to resampling at their borders
            assert max(_iou(obj, m) for m in back) > 0.95
    rolled = make_transforms(5, TTAConfig(), seed=0)
    assert rolled[0].roll_deg == 0 and all(0 < abs(t.roll_deg) <= 15 for t in rolled[1:])  # default +-15 degrees
    assert all(t.roll_deg == 0 for t in make_transforms(5, TTAConfig(max_roll_deg=0), seed=0))
    with pytest.raises(ValueError, match="max_roll_deg"):
        TTAConfig(max_roll_deg=-1).validate()


def test_tta_masks_map_back_to_the_original_frame(big_frame):
    rgb, depth, K = big_frame
    H, W = depth.shape
    ref, _ = _raised_objects(rgb, depth, K)
    inner = [m for m in ref if np.argwhere(m).min(0).min() > 30 and (np.argwhere(m).max(0) < [H - 30, W - 30]).all()]
    assert len(inner) >= 2
    # no roll: _raised_objects compares depth with its image row's median, which holds for level views only
    # (rolled views are mapped back in test_tta_roll_is_a_camera_roll)
    cfg = TTAConfig(depth_noise_m=0.0, depth_dropout=0.0, scale_range=(0.9, 1.1), max_shift=0.04, max_roll_deg=0.0)
    transforms = make_transforms(6, cfg, seed=1)
    assert transforms[0].is_identity and transforms[1].flip and not transforms[2].flip
    transforms += [FrameTransform(flip=True), FrameTransform(shift_u=-0.05, shift_v=0.04)]  # exact-copy paths
    samples = sample_with_transforms(_raised_objects, rgb, depth, K, transforms)
    for t, (masks, scores) in zip(transforms, samples, strict=True):
        assert masks.shape[1:] == (H, W) and len(scores) == len(masks)
        for obj in inner:  # every object is found again where it is in the original frame
            assert max(_iou(obj, m) for m in masks) > 0.85, t
    # without the mapping a flipped sample would not line up
    flipped = _raised_objects(*transforms[1].apply(rgb, depth, K))[0]
    assert max(_iou(inner[0], m) for m in flipped) < 0.5


def test_torch_tta_samples_any_resolution(tiny, frame):
    rgb, depth, K = frame
    big = (cv2.resize(rgb, (320, 256), interpolation=cv2.INTER_NEAREST),
           cv2.resize(depth, (320, 256), interpolation=cv2.INTER_NEAREST))
    K2 = K.copy()
    K2[:2] *= 2.0
    K2[0, 2], K2[1, 2] = (K[0, 2] + 0.5) * 2 - 0.5, (K[1, 2] + 0.5) * 2 - 0.5
    smp = sampling.sample_hypotheses(tiny, *big, K2, sampling.SamplerConfig(method="tta", samples=2),
                                     net_size=(128, 160))
    assert all(m.shape[1:] == (256, 320) for m, _ in smp)
    ref, _ = propose(tiny, *big, K2, net_size=(128, 160))
    assert np.array_equal(smp[0][0], ref)


# ---------------------------------------------------------------------------- deploy runtime


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    torch.save({"model": tiny.state_dict(), "model_config": TINY.to_dict()}, root / "m.pt")
    deploy.export(root / "m.pt", root / "export", size_hw=(128, 160))
    return root / "export"


def test_latent_sampler_needs_a_latent_export(exported, frame):
    from learner.segmenter_runtime import ModelError

    seg = Segmenter.load(exported, threads=1)
    assert seg.latent_weight is None
    with pytest.raises(ModelError, match="no latent code"):
        seg.predict_samples(*frame, samples=2, sampler="latent")


def test_deploy_confidence_mode_runs_and_stays_inside_the_samples(exported, frame, tmp_path, capsys):
    rgb, depth, K = frame
    d = tmp_path / "in"
    d.mkdir()
    cv2.imwrite(str(d / "f.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    depth_mm = np.rint(depth * 1000).astype(np.uint16)
    cv2.imwrite(str(d / "f_depth.png"), depth_mm)
    (d / "K.json").write_text(json.dumps({"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2]}))
    base = ["predict", "--model", str(exported), "--rgb", str(d / "f.png"), "--depth", str(d / "f_depth.png"),
            "--intrinsics", str(d / "K.json")]
    assert deploy.main([*base, "--out", str(tmp_path / "c"), "--mode", "confidence", "--p", "0.5",
                        "--samples", "4"]) == 0  # the default sampler: test-time augmentation
    rec = json.loads((tmp_path / "c" / "f.json").read_text())
    assert rec["distributional"]["mode"] == "confidence" and rec["distributional"]["required_agreement"] == 2
    assert rec["distributional"]["sampler"] == "tta"
    lab = cv2.imread(str(tmp_path / "c" / "f_label.png"), cv2.IMREAD_UNCHANGED)
    assert lab.shape == (128, 160) and lab.max() >= 1 and len(rec["instances"]) == lab.max()

    seg = Segmenter.load(exported)
    samples = seg.predict_samples(rgb, depth_mm, K, samples=4, seed=0, sampler="tta")
    union = np.any([m.any(0) for m, _ in samples if len(m)], axis=0)
    assert not ((lab > 0) & ~union).any()  # every confident pixel was in some sample's mask
    for i in range(1, int(lab.max()) + 1):  # and each mask lies inside masks of >= 2 of the 4 samples
        c = lab == i
        assert sum(any(not (c & ~m).any() for m in ms) for ms, _ in samples) >= 2
        u, v = rec["instances"][i - 1]["seed_uv"]
        assert c[int(v), int(u)]  # the reported point (most interior pixel) lies in the mask
    same = seg.predict_distributional(rgb, depth_mm, K, mode="confidence", p=0.5, samples=4, sampler="tta")
    assert np.array_equal(same.label_image(), lab)
    assert np.array_equal(same.points, interior_points(same.masks))

    # mode mean = the plain prediction; union covers the samples' masks
    assert deploy.main([*base, "--out", str(tmp_path / "m")]) == 0
    plain = json.loads((tmp_path / "m" / "f.json").read_text())
    assert "distributional" not in plain
    assert [r["area"] for r in plain["instances"]] == [int(a) for a in seg.predict(rgb, depth_mm, K).areas()]
    u = seg.predict_distributional(rgb, depth_mm, K, mode="union", samples=4, sampler="tta")
    assert not (np.any([m.any(0) for m, _ in samples if len(m)], axis=0) & ~u.masks.any(0)).any()

    # the MC-dropout sampler (through segmenter_mc.onnx) from the CLI
    assert deploy.main([*base, "--out", str(tmp_path / "mc"), "--mode", "confidence", "--p", "0.5",
                        "--samples", "4", "--sampler", "mc_dropout"]) == 0
    rec = json.loads((tmp_path / "mc" / "f.json").read_text())
    assert rec["distributional"]["sampler"] == "mc_dropout" and rec["distributional"]["dropout_rate"] == 0.1
    lab = cv2.imread(str(tmp_path / "mc" / "f_label.png"), cv2.IMREAD_UNCHANGED)
    samples = seg.predict_samples(rgb, depth_mm, K, samples=4, seed=0, sampler="mc_dropout")
    for i in range(1, int(lab.max()) + 1):
        c = lab == i
        assert sum(any(not (c & ~m).any() for m in ms) for ms, _ in samples) >= 2

    # bad options: exit code 2 and a clear message
    capsys.readouterr()
    assert deploy.main([*base, "--out", str(tmp_path / "x"), "--mode", "confidence", "--p", "1.5"]) == 2
    assert "--p must lie in (0, 1]" in capsys.readouterr().err
    assert deploy.main([*base, "--out", str(tmp_path / "x"), "--mode", "union", "--samples", "0"]) == 2
    assert "--samples must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="mode must be one of"):
        seg.predict_distributional(rgb, depth_mm, K, mode="vote")


def test_runtime_and_torch_tta_samples_agree(tiny, exported, frame):
    rgb, depth, K = frame
    seg = Segmenter.load(exported)
    ort = seg.predict_samples(rgb, depth, K, samples=3, seed=5, sampler="tta")
    pt = sampling.sample_hypotheses(tiny, rgb, depth, K, sampling.SamplerConfig(method="tta", samples=3, seed=5))
    for (ma, sa), (mb, sb) in zip(ort, pt, strict=True):
        assert ma.shape == mb.shape
        assert (ma != mb).reshape(len(ma), -1).sum(1).max(initial=0) <= 3  # float rounding at the threshold
        np.testing.assert_allclose(sa, sb, atol=1e-4)


def test_runtime_mc_dropout_graph_is_torch_dropout_on_the_trunk(tiny, exported, frame):
    rgb, depth, K = frame
    seg = Segmenter.load(exported)
    card = json.loads((exported / "model_card.json").read_text())
    assert card["files"]["onnx_mc_dropout"] == "segmenter_mc.onnx" and seg.has_mc_dropout
    C = card["mc_dropout"]["shape"][1]
    assert C == TINY.head_width
    x, *_ = seg.prepare(rgb, depth, K)
    scale = (np.random.default_rng(0).random((1, C, 1, 1)) >= 0.3).astype(np.float32) / np.float32(0.7)
    got = seg.run_network(x, scale)
    h = tiny.trunk.register_forward_hook(lambda _m, _i, o: o * torch.from_numpy(scale))
    try:
        with torch.no_grad():
            ref = tiny(torch.from_numpy(x))
    finally:
        h.remove()
    for k in ("objectness", "features", "kernels"):
        assert np.abs(got[k] - ref[k].numpy()).max() < 1e-4
    ones = seg.run_network(x, np.ones((1, C, 1, 1), np.float32))
    plain = seg.run_network(x)
    assert all(np.abs(ones[k] - plain[k]).max() < 1e-5 for k in ones)
    smp = seg.predict_samples(rgb, depth, K, samples=4, seed=2, sampler="mc_dropout")
    inst = seg.predict(rgb, depth, K)
    assert np.array_equal(smp[0][0], inst.masks) and np.array_equal(smp[0][1], inst.scores)
    assert any(not np.array_equal(m, inst.masks) for m, _ in smp[1:])
    again = seg.predict_samples(rgb, depth, K, samples=4, seed=2, sampler="mc_dropout")
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(smp, again, strict=True))
    with pytest.raises(ValueError, match="dropout_rate"):
        seg.predict_samples(rgb, depth, K, samples=2, dropout_rate=1.0, sampler="mc_dropout")


# ------------------------------------------------------------------------------------------ agent


def test_agent_grasps_confidence_masks_only_when_enabled(frame):
    from robot.base import Primitive, RGBDFrame

    rgb, depth, K = frame
    pose = np.eye(4)
    f = RGBDFrame(rgb, depth, K, pose, 0.0)
    A = np.zeros((128, 160), bool)
    A[50:90, 40:120] = True
    inner = np.zeros_like(A)
    inner[55:85, 45:80] = True
    calls = []

    def conf_fn(frame, p):
        calls.append(p)
        return inner[None], np.array([0.7], np.float32)

    def run(cfg):
        ag = Agent(cfg, np.random.default_rng(0))
        return ag.choose(f, A[None], np.array([0.9], np.float32), confidence_fn=conf_fn)

    base = dict(primitive="grasp", exploration=0.0)
    action, chosen, target = run(AgentConfig(**base))
    assert action.primitive == Primitive.GRASP and chosen == 0 and np.array_equal(target, A) and not calls
    action2, chosen2, target2 = run(AgentConfig(**base, grasp_confidence_p=0.9))
    assert calls == [0.9] and chosen2 == 0 and np.array_equal(target2, inner)
    u, v = action2.pixel
    assert inner[int(v), int(u)]
    calls.clear()
    run(AgentConfig(primitive="poke", exploration=0.0, grasp_confidence_p=0.9))
    assert not calls  # pokes never ask for confidence masks
    with pytest.raises(ValueError, match="grasp_confidence_p"):
        AgentConfig(grasp_confidence_p=0.0).validate()
    # the confidence function built from a model returns masks that pass the containment property
    fn = sampling.make_confidence_fn(lambda: _tiny_for_agent(), sampling.SamplerConfig(samples=3))
    m, s = fn(f, 0.5)
    assert m.shape[1:] == (128, 160) and len(m) == len(s)


def _tiny_for_agent() -> PointSegmenter:
    torch.manual_seed(1)
    m = PointSegmenter(TINY)
    with torch.no_grad():
        m.obj_head.bias.fill_(1.0)
    return m.eval()


def test_confidence_of_torch_samples_is_contained(tiny, frame):
    rgb, depth, K = frame
    smp = sampling.sample_hypotheses(tiny, rgb, depth, K, sampling.SamplerConfig(method="mc_dropout", samples=4))
    res = confidence_masks(smp, 0.5, ConfidenceConfig())
    assert len(res) > 0
    for c in res.masks:
        assert sum(any(not (c & ~m).any() for m in ms) for ms, _ in smp) >= 2


def test_ensemble_samples_split_the_views_over_the_models(tiny, frame):
    from learner.sampling import ensemble_samples

    rgb, depth, K = frame
    torch.manual_seed(5)
    other = PointSegmenter(TINY).eval()
    with torch.no_grad():
        other.obj_head.bias.fill_(1.0)
    smp = ensemble_samples([tiny, other], rgb, depth, K, 5)
    assert len(smp) == 5
    for i, m in ((0, tiny), (3, other)):  # each member's identity view opens its share (3 + 2)
        ref_m, ref_s = propose(m, rgb, depth, K)
        assert np.array_equal(smp[i][0], ref_m) and np.array_equal(smp[i][1], ref_s)
    assert not np.array_equal(smp[0][0], smp[3][0])
