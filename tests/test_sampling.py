"""Sampling hypotheses (TTA, MC dropout) and the distributional modes, through the one pipeline
(`learner.proposals.segmenter`) over the torch backend and the exported ONNX backend."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from learner.deploy import cli as deploy
from learner.deploy.export import synthetic_frame
from learner.deploy.runtime import ModelError, Segmenter
from learner.loop.agent import Agent, AgentConfig
from learner.model.backend import TorchBackend, torch_segmenter
from learner.model.network import PointSegmenter, SegmenterConfig
from learner.proposals.config import ProposalConfig
from learner.proposals.mask_sets import ConfidenceConfig, confidence_masks
from learner.proposals.pipeline import interior_points
from learner.proposals.segmenter import SamplerConfig, distributional, ensemble_samples
from learner.proposals.segmenter import Segmenter as PipelineSegmenter
from learner.proposals.tta import FrameTransform, TTAConfig, make_transforms, sample_with_transforms

# the plain network (no latent code): the latent samplers are tested in tests/test_latent.py
TINY = SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16, latent_dim=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: tiny models on a shared 2-core machine are faster so (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(seed: int = 0) -> PointSegmenter:
    torch.manual_seed(seed)
    m = PointSegmenter(TINY)
    with torch.no_grad():  # untrained objectness starts at p = 0.1: lift it so seeds pass 0.5
        m.obj_head.bias.fill_(1.0)
    return m.eval()


@pytest.fixture(scope="module")
def tiny() -> PointSegmenter:
    return _tiny()


@pytest.fixture(scope="module")
def frame():
    """A small frame for the model tests (the model runs at any multiple of 16)."""
    return synthetic_frame(128, 160, seed=3)


@pytest.fixture(scope="module")
def big_frame():
    return synthetic_frame(240, 320, seed=3)


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
    from learner.proposals.plane import height_above_plane

    raised = height_above_plane(depth, K) > 0.02
    n, lab = cv2.connectedComponents(raised.astype(np.uint8))
    masks = np.stack([lab == i for i in range(1, n)]) if n > 1 else np.zeros((0, *depth.shape), bool)
    keep = masks.reshape(len(masks), -1).sum(1) >= 50
    return masks[keep], np.ones(int(keep.sum()), np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _same_samples(a, b, flips: int = 3, atol: float = 1e-5) -> None:
    """Two backends' samples of one frame: the same masks up to float rounding at the threshold."""
    assert len(a) == len(b)
    for (ma, sa), (mb, sb) in zip(a, b, strict=True):
        assert ma.shape == mb.shape
        assert (ma != mb).reshape(len(ma), -1).sum(1).max(initial=0) <= flips
        np.testing.assert_allclose(sa, sb, atol=atol)


def _contained_in(c: np.ndarray, samples) -> int:
    """The number of samples with a mask that contains mask c entirely."""
    return sum(any(not (c & ~m).any() for m in ms) for ms, _ in samples)


class Recording:
    """A backend that runs the real network of another backend and records the MC-dropout trunk
    factors it is given (to compare the draws of two backends)."""

    def __init__(self, inner):
        self.inner, self.scales = inner, []
        for k in ("input_size", "spec", "head", "latent_weight", "mc_shape"):
            setattr(self, k, getattr(inner, k))

    def run(self, x, trunk_scale=None):
        self.scales.append(None if trunk_scale is None else np.array(trunk_scale, copy=True))
        return self.inner.run(x, trunk_scale)


# ------------------------------------------------------------------------------------ prior mean


@pytest.mark.parametrize("method", ["tta", "mc_dropout"])
def test_sample_zero_is_the_plain_prediction(tiny, frame, method):
    rgb, depth, K = frame
    seg = torch_segmenter(tiny)
    ref = seg.predict(rgb, depth, K)
    assert len(ref) > 0
    cfg = SamplerConfig(method=method, samples=3)
    smp = seg.predict_samples(rgb, depth, K, cfg)
    assert len(smp) == 3 and np.array_equal(smp[0][0], ref.masks) and np.array_equal(smp[0][1], ref.scores)
    assert all(m.shape[1:] == depth.shape and m.dtype == bool and len(m) == len(s) for m, s in smp)
    assert any(len(m) != len(ref) or not np.array_equal(m, ref.masks) for m, _ in smp[1:])  # samples differ
    # sampling left the model and the global RNG untouched, and is seeded
    state = torch.get_rng_state()
    again = seg.predict_samples(rgb, depth, K, cfg)
    assert torch.equal(state, torch.get_rng_state())
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(smp, again, strict=True))
    other = seg.predict_samples(rgb, depth, K, SamplerConfig(method=method, samples=3, seed=1))
    assert np.array_equal(other[0][0], ref.masks)  # another seed: other draws, the same sample 0
    assert any(len(a[0]) != len(b[0]) or not np.array_equal(a[0], b[0]) for a, b in zip(smp[1:], other[1:], strict=True))
    after = seg.predict(rgb, depth, K)
    assert np.array_equal(after.masks, ref.masks) and np.array_equal(after.scores, ref.scores)
    assert not tiny.trunk._forward_hooks and not tiny.training


def test_trunk_factors_change_the_heads_only_for_that_run(tiny):
    """The torch backend's MC-dropout factors (a forward hook on the head trunk) act on that run only,
    also when the forward fails; factors of one are the plain network."""
    backend = TorchBackend(tiny)
    C = backend.mc_shape[1]
    assert backend.mc_shape == (1, TINY.head_width, 1, 1)
    x = np.random.default_rng(0).standard_normal((1, TINY.in_channels, 64, 64)).astype(np.float32)
    ref = backend.run(x)
    scale = ((np.random.default_rng(1).random((1, C, 1, 1)) >= 0.5) / np.float32(0.5)).astype(np.float32)
    drop = backend.run(x, scale)
    after = backend.run(x)
    assert not np.array_equal(ref["objectness"], drop["objectness"])
    assert all(np.array_equal(ref[k], after[k]) for k in ref)
    ones = backend.run(x, np.ones((1, C, 1, 1), np.float32))
    assert all(np.allclose(ones[k], ref[k], atol=1e-6) for k in ref)
    with pytest.raises(RuntimeError):
        backend.run(x, np.ones((1, C + 1, 1, 1), np.float32))  # factors that do not fit the trunk
    assert not tiny.trunk._forward_hooks
    assert all(np.array_equal(ref[k], backend.run(x)[k]) for k in ref)


def test_bad_sampler_settings(tiny, frame):
    rgb, depth, K = frame
    seg = torch_segmenter(tiny)
    for bad, msg in ((dict(samples=0), "samples must be an integer >= 1"), (dict(samples=True), "samples"),
                     (dict(method="ensemble"), "sampler must be one of"), (dict(dropout_rate=1.0), "dropout_rate"),
                     (dict(tta=TTAConfig(scale_range=(1.2, 1.1))), "scale_range")):
        with pytest.raises(ValueError, match=msg):
            seg.predict_samples(rgb, depth, K, SamplerConfig(**bad))
    for method in ("latent", "tta_latent"):  # a model without a latent code
        with pytest.raises(ModelError, match="no latent code"):
            seg.predict_samples(rgb, depth, K, SamplerConfig(method=method, samples=2))
    with pytest.raises(ValueError, match="mode must be one of"):
        seg.predict_distributional(rgb, depth, K, mode="median")
    with pytest.raises(ValueError, match=r"p must lie in \(0, 1\]"):
        seg.predict_distributional(rgb, depth, K, mode="confidence", p=1.5, sampler=SamplerConfig(samples=2))
    with pytest.raises(TypeError, match="unknown proposal parameters"):
        seg.predict_samples(rgb, depth, K, SamplerConfig(samples=2), nms=0.3)


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
        # a mask around the transformed pixel of (u, v) = (10, 20) maps back onto that pixel
        u2, v2 = (int(round(c)) for c in A @ [10.0, 20.0, 1.0])
        m = np.zeros((1, H, W), bool)
        m[0, v2 - 1 : v2 + 2, u2 - 1 : u2 + 2] = True
        back = t.masks_to_frame(m)[0]
        assert back[20, 10] and back.sum() <= 16


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
    seg = torch_segmenter(tiny, net_size=(128, 160))
    smp = seg.predict_samples(*big, K2, SamplerConfig(method="tta", samples=2))
    assert all(m.shape[1:] == (256, 320) for m, _ in smp)
    ref = seg.predict(*big, K2)
    assert np.array_equal(smp[0][0], ref.masks)


# ------------------------------------------------------------------------ the exported ONNX backend


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    torch.save({"model": tiny.state_dict(), "model_config": TINY.to_dict()}, root / "m.pt")
    deploy.export(root / "m.pt", root / "export", size_hw=(128, 160))
    return root / "export"


@pytest.fixture(scope="module")
def onnx_seg(exported) -> Segmenter:
    return Segmenter.load(exported, threads=1)


def test_latent_sampler_needs_a_latent_export(onnx_seg, frame):
    assert onnx_seg.backend.latent_weight is None
    for method in ("latent", "tta_latent"):
        with pytest.raises(ModelError, match="no latent code"):
            onnx_seg.predict_samples(*frame, SamplerConfig(method=method, samples=2))


def test_deploy_confidence_mode_runs_and_stays_inside_the_samples(exported, onnx_seg, frame, tmp_path, capsys):
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
    dist = rec["distributional"]
    assert dist["mode"] == "confidence" and dist["required_agreement"] == 2 and dist["sampler"] == "tta"
    assert (dist["samples"], dist["seed"], dist["p"], dist["dropout_rate"]) == (4, 0, 0.5, None)
    lab = cv2.imread(str(tmp_path / "c" / "f_label.png"), cv2.IMREAD_UNCHANGED)
    assert lab.shape == (128, 160) and lab.max() >= 1 and len(rec["instances"]) == lab.max()

    seg = onnx_seg
    tta4 = SamplerConfig(method="tta", samples=4, seed=0)
    samples = seg.predict_samples(rgb, depth_mm, K, tta4)
    union = np.any([m.any(0) for m, _ in samples if len(m)], axis=0)
    assert not ((lab > 0) & ~union).any()  # every confident pixel was in some sample's mask
    for i in range(1, int(lab.max()) + 1):  # and each mask lies inside masks of >= 2 of the 4 samples
        c = lab == i
        assert _contained_in(c, samples) >= 2
        u, v = rec["instances"][i - 1]["seed_uv"]
        assert c[int(v), int(u)]  # the reported point (most interior pixel) lies in the mask
    same = seg.predict_distributional(rgb, depth_mm, K, mode="confidence", p=0.5, sampler=tta4)
    assert np.array_equal(same.label_image(), lab)
    assert np.array_equal(same.points, interior_points(same.masks))

    # mode mean = the plain prediction; union covers the samples' masks
    assert deploy.main([*base, "--out", str(tmp_path / "m")]) == 0
    plain = json.loads((tmp_path / "m" / "f.json").read_text())
    assert "distributional" not in plain
    assert [r["area"] for r in plain["instances"]] == [int(a) for a in seg.predict(rgb, depth_mm, K).areas()]
    u = seg.predict_distributional(rgb, depth_mm, K, mode="union", sampler=tta4)
    assert not (union & ~u.masks.any(0)).any()

    # the MC-dropout sampler (through segmenter_mc.onnx) from the CLI
    assert deploy.main([*base, "--out", str(tmp_path / "mc"), "--mode", "confidence", "--p", "0.5",
                        "--samples", "4", "--sampler", "mc_dropout"]) == 0
    rec = json.loads((tmp_path / "mc" / "f.json").read_text())
    assert rec["distributional"]["sampler"] == "mc_dropout" and rec["distributional"]["dropout_rate"] == 0.1
    lab = cv2.imread(str(tmp_path / "mc" / "f_label.png"), cv2.IMREAD_UNCHANGED)
    samples = seg.predict_samples(rgb, depth_mm, K, SamplerConfig(method="mc_dropout", samples=4, seed=0))
    for i in range(1, int(lab.max()) + 1):
        assert _contained_in(lab == i, samples) >= 2

    # bad options: exit code 2 and a clear message
    capsys.readouterr()
    assert deploy.main([*base, "--out", str(tmp_path / "x"), "--mode", "confidence", "--p", "1.5"]) == 2
    assert "--p must lie in (0, 1]" in capsys.readouterr().err
    assert deploy.main([*base, "--out", str(tmp_path / "x"), "--mode", "union", "--samples", "0"]) == 2
    assert "--samples must be >= 1" in capsys.readouterr().err
    assert deploy.main([*base, "--out", str(tmp_path / "x"), "--mode", "union", "--dropout-rate", "1"]) == 2
    assert "--dropout-rate must lie in [0, 1)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="mode must be one of"):
        seg.predict_distributional(rgb, depth_mm, K, mode="vote")


def test_onnx_and_torch_tta_samples_agree(tiny, onnx_seg, frame):
    rgb, depth, K = frame
    cfg = SamplerConfig(method="tta", samples=3, seed=5)
    ort = onnx_seg.predict_samples(rgb, depth, K, cfg)
    pt = torch_segmenter(tiny, onnx_seg.proposals).predict_samples(rgb, depth, K, cfg)
    _same_samples(ort, pt)
    assert any(len(m) != len(ort[0][0]) or not np.array_equal(m, ort[0][0]) for m, _ in ort[1:])


def test_onnx_mc_dropout_graph_is_the_torch_trunk_hook(tiny, exported, onnx_seg, frame):
    rgb, depth, K = frame
    seg = onnx_seg
    card = json.loads((exported / "model_card.json").read_text())
    assert card["files"]["onnx_mc_dropout"] == "segmenter_mc.onnx" and seg.backend.mc_path is not None
    C = card["mc_dropout"]["shape"][1]
    assert C == TINY.head_width and seg.backend.mc_shape == TorchBackend(tiny).mc_shape == (1, C, 1, 1)
    x, *_ = seg.prepare(rgb, depth, K)
    scale = ((np.random.default_rng(0).random((1, C, 1, 1)) >= 0.3) / np.float32(0.7)).astype(np.float32)
    got, ref = seg.backend.run(x, scale), TorchBackend(tiny).run(x, scale)
    for k in ("objectness", "features", "kernels"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
    ones = seg.backend.run(x, np.ones((1, C, 1, 1), np.float32))
    plain = seg.backend.run(x)
    assert all(np.abs(ones[k] - plain[k]).max() < 1e-5 for k in ones)
    mc4 = SamplerConfig(method="mc_dropout", samples=4, seed=2)
    smp = seg.predict_samples(rgb, depth, K, mc4)
    inst = seg.predict(rgb, depth, K)
    assert np.array_equal(smp[0][0], inst.masks) and np.array_equal(smp[0][1], inst.scores)
    assert any(not np.array_equal(m, inst.masks) for m, _ in smp[1:])
    again = seg.predict_samples(rgb, depth, K, mc4)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(smp, again, strict=True))
    with pytest.raises(ValueError, match="dropout_rate"):
        seg.predict_samples(rgb, depth, K, SamplerConfig(method="mc_dropout", samples=2, dropout_rate=1.0))


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_mc_dropout_draws_are_identical_between_torch_and_onnx(tiny, onnx_seg, frame, rate):
    """One seed, one rate: the torch and the ONNX backend are given the very same trunk factors
    (drawn by the pipeline with numpy), so their samples are the same up to float rounding."""
    rgb, depth, K = frame
    ort = Recording(onnx_seg.backend)
    pt = Recording(TorchBackend(tiny))
    cfg = SamplerConfig(method="mc_dropout", samples=5, seed=11, dropout_rate=rate)
    a = PipelineSegmenter(ort, onnx_seg.proposals).predict_samples(rgb, depth, K, cfg)
    b = PipelineSegmenter(pt, onnx_seg.proposals).predict_samples(rgb, depth, K, cfg)
    assert len(ort.scales) == len(pt.scales) == 5 and ort.scales[0] is None and pt.scales[0] is None
    for sa, sb in zip(ort.scales[1:], pt.scales[1:], strict=True):
        assert sa.shape == (1, TINY.head_width, 1, 1) and sa.dtype == np.float32
        assert np.array_equal(sa, sb)
        assert set(np.unique(sa).tolist()) <= {0.0, np.float32(1.0 / (1.0 - rate))}
    assert len({s.tobytes() for s in ort.scales[1:]}) == 4  # every sample its own draw
    _same_samples(a, b)
    # through the Segmenters the callers use, too
    _same_samples(onnx_seg.predict_samples(rgb, depth, K, cfg),
                  torch_segmenter(tiny, onnx_seg.proposals).predict_samples(rgb, depth, K, cfg))


# ---------------------------------------------------------------------------- distributional modes


def test_distributional_modes_on_torch_and_onnx(tiny, onnx_seg, frame):
    rgb, depth, K = frame
    ts = torch_segmenter(tiny, onnx_seg.proposals)
    cfg = SamplerConfig(method="tta", samples=4, seed=3)
    for seg in (onnx_seg, ts):
        mean = seg.predict_distributional(rgb, depth, K, mode="mean", sampler=cfg)
        plain = seg.predict(rgb, depth, K)
        assert np.array_equal(mean.masks, plain.masks) and np.array_equal(mean.scores, plain.scores)
        smp = seg.predict_samples(rgb, depth, K, cfg)
        conf = seg.predict_distributional(rgb, depth, K, mode="confidence", p=0.75, sampler=cfg)
        ref = distributional(smp, "confidence", 0.75, seg.proposals)
        assert np.array_equal(conf.masks, ref.masks) and np.array_equal(conf.scores, ref.scores)
        assert conf.info["required_agreement"] == ref.required == 3 and conf.info["samples"] == 4
        assert conf.info["sampler"] == "tta" and conf.info["seed"] == 3 and conf.info["p"] == 0.75
        assert len(conf) > 0 and conf.masks.sum(0).max() <= 1  # disjoint
        for c in conf.masks:
            assert _contained_in(c, smp) >= 3 and c.sum() >= seg.proposals.min_area
        uni = seg.predict_distributional(rgb, depth, K, mode="union", sampler=cfg, union_iou=0.3)
        ref_u = distributional(smp, "union", 0.9, seg.proposals, union_iou=0.3)
        assert np.array_equal(uni.masks, ref_u.masks) and uni.info["p"] is None
        assert np.array_equal(uni.points, interior_points(uni.masks))
        capped = seg.predict_distributional(rgb, depth, K, mode="union", sampler=cfg, max_hypotheses=2)
        assert len(capped) == 2  # the proposal overrides hold for the samples and the result
    with pytest.raises(ValueError, match="'confidence' or 'union'"):
        distributional([], "mean", 0.9, ProposalConfig())


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

    def run(cfg, fn=conf_fn, masks=A[None], scores=None):
        ag = Agent(cfg, np.random.default_rng(0))
        return ag.choose(f, masks, np.array([0.9], np.float32) if scores is None else scores, confidence_fn=fn)

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
    # confidence masks of a model (the loop's confidence function: the pipeline's confidence mode)
    seg = torch_segmenter(_tiny(1))
    sampler = SamplerConfig(samples=3)

    def model_fn(frame, p):
        inst = seg.predict_distributional(frame.rgb, frame.depth, frame.K, mode="confidence", p=p, sampler=sampler)
        return inst.masks, inst.scores

    m, s = model_fn(f, 0.5)
    assert m.shape[1:] == (128, 160) and len(m) == len(s) > 0
    smp = seg.predict_samples(rgb, depth, K, sampler)
    assert all(_contained_in(c, smp) >= 2 for c in m)
    plain = seg.predict(rgb, depth, K)
    _, _, target3 = run(AgentConfig(**base, grasp_confidence_p=0.5), model_fn, plain.masks, plain.scores)
    assert target3.any() and any(not (target3 & ~c).any() for c in m)  # the grasp target is a confidence mask


def test_confidence_of_torch_samples_is_contained(tiny, frame):
    rgb, depth, K = frame
    smp = torch_segmenter(tiny).predict_samples(rgb, depth, K, SamplerConfig(method="mc_dropout", samples=4))
    res = confidence_masks(smp, 0.5, ConfidenceConfig())
    assert len(res) > 0
    for c in res.masks:
        assert _contained_in(c, smp) >= 2


def test_ensemble_samples_split_the_views_over_the_models(tiny, frame):
    rgb, depth, K = frame
    members = [torch_segmenter(tiny), torch_segmenter(_tiny(5))]
    smp = ensemble_samples(members, rgb, depth, K, 5)
    assert len(smp) == 5
    for i, seg in ((0, members[0]), (3, members[1])):  # each member's identity view opens its share (3 + 2)
        ref = seg.predict(rgb, depth, K)
        assert np.array_equal(smp[i][0], ref.masks) and np.array_equal(smp[i][1], ref.scores)
    assert not np.array_equal(smp[0][0], smp[3][0])
    # member j draws its views with seed j
    assert all(np.array_equal(a[0], b[0]) for a, b in
               zip(smp[3:], members[1].predict_samples(rgb, depth, K, SamplerConfig("tta", 2, 1)), strict=True))
    with pytest.raises(ValueError, match="at least one model"):
        ensemble_samples([], rgb, depth, K, 2)
