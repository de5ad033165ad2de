"""Deploy path: export (ONNX + model card), the torch-free runtime, the predict/bench CLI, and the one
proposal pipeline that the ONNX and the torch backends share."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from learner.deploy import cli as deploy
from learner.deploy.runtime import CARD_NAME, ONNX_NAME, InputError, ModelError, Segmenter
from learner.model.backend import TorchBackend, torch_segmenter
from learner.model.network import PointSegmenter, SegmenterConfig
from learner.proposals import pipeline
from learner.proposals.cleaning import release_contested
from learner.proposals.config import LEGACY_CARD_DEFAULTS, ProposalConfig
from learner.proposals.frame import IN_CHANNELS, InputSpec, make_input, scale_intrinsics
from learner.proposals.pipeline import propose

ROOT = Path(__file__).resolve().parents[1]
TINY = SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16)
NET = (240, 320)


def _tiny_model(seed: int = 0) -> PointSegmenter:
    torch.manual_seed(seed)
    m = PointSegmenter(TINY)
    with torch.no_grad():  # untrained objectness starts at p = 0.1: lift it so seeds pass 0.5
        m.obj_head.bias.fill_(1.0)
    return m.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random model saved in the run-directory format and exported; the torch segmenter of the
    same model with the card's proposal parameters at the card's input size."""
    root = tmp_path_factory.mktemp("deploy")
    model = _tiny_model()
    run = root / "run"
    (run / "model").mkdir(parents=True)
    torch.save(
        {
            "model": model.state_dict(),
            "model_config": TINY.to_dict(),
            "model_version": 3,
            "interactions": 42,
            "train_steps": 0,
            "metrics": json.dumps({"interactions": 42, "model_version": 3, "AP50": 0.25}),
            "oracle": False,
        },
        run / "model" / "segmenter.pt",
    )
    out = root / "export"
    card = deploy.export(run, out)
    seg = Segmenter.load(out)
    return {"root": root, "run": run, "out": out, "card": card, "model": model, "seg": seg,
            "torch": torch_segmenter(model, seg.proposals, net_size=NET)}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from sim.export_scenes import export_scenes

    d = tmp_path_factory.mktemp("scenes") / "test"
    export_scenes(d, "test", 2, progress=False)
    return d


def _scene(scenes, i=0):
    from data.scene_io import read_scene

    return read_scene(scenes, f"{i:06d}")


def _upscale(rgb, depth, K, H, W):
    """The same scene seen by a (H,W) camera (nearest upscaling, K scaled consistently)."""
    r = cv2.resize(rgb, (W, H), interpolation=cv2.INTER_NEAREST)
    d = cv2.resize(depth, (W, H), interpolation=cv2.INTER_NEAREST)
    return r, d, scale_intrinsics(K, W / rgb.shape[1], H / rgb.shape[0])


def _assert_same_instances(a, b):
    """Two backends' instances of one frame: the same masks up to float rounding at the threshold."""
    assert len(a) == len(b) > 0
    assert a.masks.shape == b.masks.shape
    diff = (a.masks != b.masks).reshape(len(a), -1).sum(1)
    assert diff.max() <= 3, diff  # heads differ by ~1e-6: a pixel exactly at the threshold may flip
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_array_equal(a.points, b.points)


# ------------------------------------------------------------------------------------------ export


def test_export_card_and_files(tiny):
    out, card = tiny["out"], tiny["card"]
    assert (out / ONNX_NAME).is_file() and (out / CARD_NAME).is_file()
    on_disk = json.loads((out / CARD_NAME).read_text())
    assert on_disk == card
    inp, spec = card["input"], InputSpec()
    assert (inp["height"], inp["width"]) == (240, 320) and inp["shape"] == [1, IN_CHANNELS, 240, 320]
    assert inp["rgb"]["mean"] == list(spec.rgb_mean) and inp["rgb"]["std"] == list(spec.rgb_std)
    assert inp["xyz"]["scale_m"] == spec.xyz_scale_m
    assert inp["channels"][-2:] == ["valid", "plane_height"]
    ph = inp["plane_height"]
    assert (ph["scale_m"], ph["min_m"], ph["max_m"]) == (spec.height_scale_m, spec.height_min_m, spec.height_max_m)
    assert tiny["seg"].backend.spec == spec  # the runtime reads the same numbers back
    assert card["outputs"]["stride"] == 4 and card["outputs"]["objectness"] == [1, 1, 60, 80]
    head = card["dynamic_head"]
    assert (head["embed_dim"], head["dyn_hidden"], head["coord_scale"]) == (16, 8, 64.0)
    assert head["num_kernel_params"] == TINY.num_kernel_params
    # the proposal parameters are ProposalConfig's defaults, plus what they mean
    pc = card["proposals"]
    assert {k: pc[k] for k in ProposalConfig().to_card()} == ProposalConfig().to_card()
    assert pc["max_hypotheses"] == 20 and pc["min_area"] == 64 and pc["max_seeds"] is None
    assert pc["objectness_threshold"] == 0.1 and pc["table_gate_m"] == 0.005 and pc["largest_component"] is True
    assert pc["table_gate_z2"] == 0.005 and pc["refine_px"] == 4
    assert pc["depth_edge_m"] == 0.02 and pc["contested_overlap"] == 0.25 and pc["score"] == "mask"
    assert {"table_gate", "contested", "score_description", "max_seeds_default", "seed_nms_kernel"} <= set(pc)
    assert ProposalConfig.from_card(pc) == ProposalConfig() == tiny["seg"].proposals
    tr = card["training"]
    assert (tr["interactions"], tr["train_steps"], tr["oracle"]) == (42, 0, False)
    assert tr["source"].endswith("model/segmenter.pt") and tr["source_kind"] == "run_model"
    assert card["model"]["version"] == 3 and SegmenterConfig.from_dict(card["model"]["config"]) == TINY
    assert card["metrics"]["AP50"] == 0.25
    assert isinstance(card["export"]["code_version"], str) and card["export"]["opset"] == 17
    assert max(card["export"]["onnx_vs_torch_max_abs_diff"].values()) < 1e-4
    assert card["mc_dropout"]["default_rate"] == 0.1 and card["latent"] is None


def test_onnx_alone_carries_the_card(tiny, tmp_path):
    shutil.copy(tiny["out"] / ONNX_NAME, tmp_path / "m.onnx")
    seg = Segmenter.load(tmp_path / "m.onnx")
    assert seg.input_size == (240, 320) and seg.model_version == 3 and seg.proposals == tiny["seg"].proposals


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
def test_export_from_trainer_checkpoint_and_file(tiny, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = {"model": tiny["model"].state_dict(), "model_config": TINY.to_dict(), "step": 7, "model_version": 1,
            "oracle": True, "torch_rng": torch.get_rng_state()}
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    card = deploy.export(run, tmp_path / "a", size_hw=(128, 160))
    assert card["training"]["train_steps"] == 7 and card["training"]["oracle"] is True
    assert card["training"]["source_kind"] == "trainer_checkpoint" and card["metrics"] == {}
    assert (card["input"]["height"], card["input"]["width"]) == (128, 160)
    card2 = deploy.export(run / "checkpoints" / "last.pt", tmp_path / "b", torchscript=True)
    assert card2["training"]["source_kind"] == "file" and card2["files"]["torchscript"] == "segmenter.ts"
    ts = torch.jit.load(str(tmp_path / "b" / "segmenter.ts"))
    x = torch.randn(1, IN_CHANNELS, 240, 320)
    with torch.no_grad():
        got, ref = ts(x), tiny["model"](x)
    assert all(torch.allclose(got[k], ref[k], atol=1e-5) for k in ref)


def test_export_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(deploy.DeployError, match="no model in"):
        deploy.export(tmp_path / "empty", tmp_path / "o")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(deploy.DeployError, match="not a segmenter checkpoint"):
        deploy.export(tmp_path / "x.pt", tmp_path / "o")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert deploy.main(["export", str(tmp_path / "bad.pt"), str(tmp_path / "o")]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert deploy.main(["export", str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    # weights that do not fit the config
    torch.save({"model": _tiny_model().state_dict(), "model_config": {**TINY.to_dict(), "fpn_width": 24}},
               tmp_path / "misfit.pt")
    with pytest.raises(deploy.DeployError, match="misfit.pt.*do not fit"):
        deploy.export(tmp_path / "misfit.pt", tmp_path / "o")
    assert not (tmp_path / "o" / ONNX_NAME).exists()


def test_export_sets_or_disables_the_depth_edge_cut(tiny, tmp_path):
    with pytest.raises(deploy.DeployError, match="depth_edge_m"):
        deploy.export(tiny["run"], tmp_path / "far", proposals={"depth_edge_m": 0.8}, check=False, mc_dropout=False)
    assert deploy.main(["export", str(tiny["run"]), str(tmp_path / "off"), "--depth-edge", "0", "--no-mc-dropout"]) == 0
    assert Segmenter.load(tmp_path / "off").proposals.depth_edge_m is None
    card = deploy.export(tiny["run"], tmp_path / "on", proposals={"depth_edge_m": 0.03}, check=False, mc_dropout=False)
    assert card["proposals"]["depth_edge_m"] == 0.03


def test_export_sets_or_disables_the_contested_pixel_rule(tiny, tmp_path):
    with pytest.raises(deploy.DeployError, match="contested_overlap"):
        deploy.export(tiny["run"], tmp_path / "big", proposals={"contested_overlap": 1.5}, check=False,
                      mc_dropout=False)
    assert deploy.main(["export", str(tiny["run"]), str(tmp_path / "off"), "--contested", "0", "--no-mc-dropout"]) == 0
    assert Segmenter.load(tmp_path / "off").proposals.contested_overlap is None
    card = deploy.export(tiny["run"], tmp_path / "on", proposals={"contested_overlap": 0.5}, check=False,
                         mc_dropout=False)
    assert card["proposals"]["contested_overlap"] == 0.5


def test_export_proposal_options_and_config(tiny, tmp_path, capsys):
    """Command-line overrides land in the card (the rest stay ProposalConfig's defaults); a
    ProposalConfig is written as it is; bad or unknown parameters are clear errors before any file."""
    assert deploy.main(["export", str(tiny["run"]), str(tmp_path / "cli"), "--no-mc-dropout", "--max-hypotheses", "7",
                        "--max-seeds", "30", "--objectness-threshold", "0.3", "--min-area", "4"]) == 0
    want = ProposalConfig(max_hypotheses=7, max_seeds=30, objectness_threshold=0.3, min_area=4)
    assert Segmenter.load(tmp_path / "cli").proposals == want
    cfg = ProposalConfig(nms_iou=0.4, table_gate_m=None, largest_component=False, score="objectness_x_mask",
                         depth_edge_m=None, contested_overlap=None)
    card = deploy.export(tiny["run"], tmp_path / "cfg", proposals=cfg, check=False, mc_dropout=False)
    assert ProposalConfig.from_card(card["proposals"]) == cfg == Segmenter.load(tmp_path / "cfg").proposals
    with pytest.raises(deploy.DeployError, match="unknown proposal parameter.*'nms'"):
        deploy.export(tiny["run"], tmp_path / "x", proposals={"nms": 0.3})
    with pytest.raises(deploy.DeployError, match="max_hypotheses"):
        deploy.export(tiny["run"], tmp_path / "x", proposals={"max_hypotheses": 0})
    capsys.readouterr()
    assert deploy.main(["export", str(tiny["run"]), str(tmp_path / "x"), "--nms-iou", "2"]) == 2
    assert "proposals.nms_iou must lie in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------- proposal parameters and the card


def test_proposal_config_validate_replace_and_card_round_trip():
    d = ProposalConfig()
    assert d.validate() is d and d.seeds == 3 * d.max_hypotheses and d.replace(max_seeds=7).seeds == 7
    r = d.replace(nms_iou=0.3, contested_overlap=None)
    assert (r.nms_iou, r.contested_overlap) == (0.3, None) and d.nms_iou == 0.5  # a copy; d is unchanged
    with pytest.raises(TypeError, match=r"unknown proposal parameters \['bogus'\]"):
        d.replace(bogus=1)
    bad = {"nms_iou": 1.5, "objectness_threshold": -0.1, "mask_threshold": "0.5", "max_hypotheses": 0,
           "min_area": -1, "max_seeds": 0, "table_gate_m": 0.2, "depth_edge_m": 0.0, "contested_overlap": 1.5,
           "score": "area"}
    for k, v in bad.items():
        with pytest.raises(ValueError, match=f"proposals.{k}"):
            d.replace(**{k: v})
    with pytest.raises(ValueError, match="proposals.max_hypotheses"):
        ProposalConfig(max_hypotheses=True).validate()  # a bool is not a count
    # the card holds JSON values and reads back to the same config; description keys are ignored
    for cfg in (d, d.replace(max_seeds=9, table_gate_m=None, score="objectness_x_mask", depth_edge_m=None)):
        card = json.loads(json.dumps(cfg.to_card()))
        assert ProposalConfig.from_card(card) == cfg
        assert ProposalConfig.from_card({**card, "table_gate": "a description", "seed_nms_kernel": 3}) == cfg
    # legacy cards: the keys they lack take what those exports did
    old = {k: v for k, v in d.to_card().items() if k not in LEGACY_CARD_DEFAULTS}
    assert ProposalConfig.from_card(old) == d.replace(**LEGACY_CARD_DEFAULTS)
    assert ProposalConfig.from_card(old).score == "objectness_x_mask" and not ProposalConfig.from_card(old).largest_component
    described = {**d.to_card(), "score": "mean objectness probability in the mask x mean mask probability"}
    assert ProposalConfig.from_card(described).score == "objectness_x_mask"
    with pytest.raises(ValueError, match="proposals.nms_iou"):
        ProposalConfig.from_card({**d.to_card(), "nms_iou": 2.0})


def test_card_with_bad_proposals_is_refused(tiny, tmp_path):
    shutil.copytree(tiny["out"], tmp_path / "bad")
    card = json.loads((tmp_path / "bad" / CARD_NAME).read_text())
    card["proposals"]["mask_threshold"] = 1.5
    (tmp_path / "bad" / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="proposals are invalid.*mask_threshold"):
        Segmenter.load(tmp_path / "bad")


# ------------------------------------------------------------------ one pipeline: ONNX vs torch


def test_onnx_and_torch_backends_give_the_same_heads(tiny, scenes):
    sc = _scene(scenes)
    seg, tb = tiny["seg"], tiny["torch"].backend
    assert isinstance(tb, TorchBackend)
    assert (tb.input_size, tb.head, tb.spec, tb.mc_shape) == (seg.input_size, seg.backend.head, seg.backend.spec,
                                                             seg.backend.mc_shape)
    assert tb.latent_weight is None and seg.backend.latent_weight is None
    x, *_ = seg.prepare(sc.rgb, sc.depth, sc.K)
    assert np.array_equal(x, make_input(sc.rgb, sc.depth, sc.K, InputSpec()))  # 320x240: no resize
    x_t, *_ = tiny["torch"].prepare(sc.rgb, sc.depth, sc.K)
    assert np.array_equal(x, x_t)  # one input builder
    got, ref = seg.backend.run(x), tb.run(x)
    assert set(got) == set(ref) == {"objectness", "features", "kernels"}
    for k in ref:
        assert got[k].shape == ref[k].shape and got[k].dtype == ref[k].dtype == np.float32
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
    with torch.no_grad():  # the torch backend is the model's forward
        direct = tiny["model"](torch.from_numpy(x))
    assert all(np.array_equal(ref[k], direct[k].numpy()) for k in ref)


@pytest.mark.parametrize("size", [None, (480, 640), (300, 400)])
def test_onnx_and_torch_give_the_same_instances(tiny, scenes, size):
    sc = _scene(scenes, 1)
    rgb, depth, K = sc.rgb, sc.depth, sc.K
    if size is not None:
        rgb, depth, K = _upscale(rgb, depth, K, *size)
    seg, ts = tiny["seg"], tiny["torch"]
    inst = seg.predict(rgb, depth, K)
    assert inst.masks.shape[1:] == rgb.shape[:2]
    _assert_same_instances(inst, ts.predict(rgb, depth, K))
    # predict is the pipeline over the backend's heads and the frame's depth, nothing else
    x, _, depth_m, Km = seg.prepare(rgb, depth, K)
    for s, mine in ((seg, inst), (ts, None)):
        p = propose(s.backend.run(x), x, s.proposals, s.backend.head, s.backend.spec, depth_m.shape, None, depth_m, Km)
        mine = mine if mine is not None else s.predict(rgb, depth, K)
        assert np.array_equal(p.masks, mine.masks) and np.array_equal(p.scores, mine.scores)
        assert np.array_equal(p.points, mine.points) and p.num_seeds == mine.info["num_seeds"]


def test_clean_up_options_give_the_same_instances_on_both_backends(tiny, scenes):
    """Each clean-up switch gives the same proposals from the ONNX and the torch backend, and they
    do switch something on this scene."""
    sc = _scene(scenes, 1)
    base = tiny["seg"].predict(sc.rgb, sc.depth, sc.K)
    changed = 0
    for kw in ({"table_gate_m": None}, {"largest_component": False}, {"score": "objectness_x_mask"},
               {"depth_edge_m": None}, {"depth_edge_m": 0.01}, {"contested_overlap": None},
               {"contested_overlap": 0.6}):
        a = tiny["seg"].predict(sc.rgb, sc.depth, sc.K, **kw)
        _assert_same_instances(a, tiny["torch"].predict(sc.rgb, sc.depth, sc.K, **kw))
        changed += int(a.masks.shape != base.masks.shape or not np.array_equal(a.masks, base.masks)
                       or not np.array_equal(a.scores, base.scores))
    assert changed >= 4


def test_contested_rule_on_crops_equals_the_full_mask_rule():
    """The pipeline frees contested pixels on bounding-box crops; that must equal
    cleaning.release_contested on the full masks (a tiny random net makes no such overlaps)."""
    share = ProposalConfig().contested_overlap
    rng = np.random.default_rng(0)
    for _ in range(20):
        full = np.zeros((8, 40, 50), bool)
        for m in full:  # random rectangles, some with a hole: partial, nested and no overlaps
            y0, x0 = rng.integers(0, 30), rng.integers(0, 40)
            m[y0 : y0 + rng.integers(4, 15), x0 : x0 + rng.integers(4, 15)] = True
            m[y0 + 1, x0 + 1] = False
        crops = []
        for m in full:
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            crop = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
            crops.append(pipeline._Crop(int(rows[0]), int(cols[0]), crop, int(crop.sum())))
        kept = pipeline._release_contested(crops, share, min_area=16)
        ref = release_contested(full, share)
        big = np.flatnonzero(ref.sum(axis=(1, 2)) >= 16)
        assert kept == big.tolist()
        np.testing.assert_array_equal(pipeline.paste_masks([crops[i] for i in kept], (40, 50), (40, 50)), ref[big])


def test_card_without_clean_up_keys_keeps_the_old_proposals(tiny, scenes, tmp_path):
    """Exports made before the clean-up existed still predict what they predicted then."""
    shutil.copytree(tiny["out"], tmp_path / "old")
    card_path = tmp_path / "old" / CARD_NAME
    card = json.loads(card_path.read_text())
    for k in ("table_gate_m", "largest_component", "score_description", "table_gate", "depth_edge_m",
              "contested_overlap", "contested", "parameters", "support_region", "table_gate_z2", "refine_px"):
        card["proposals"].pop(k)
    card["proposals"]["score"] = "mean objectness probability in the mask x mean mask probability in the mask"
    card["proposals"]["objectness_threshold"] = 0.5
    card_path.write_text(json.dumps(card))
    seg = Segmenter.load(tmp_path / "old")
    old = ProposalConfig(objectness_threshold=0.5, **LEGACY_CARD_DEFAULTS)
    assert seg.proposals == old
    assert old.score == "objectness_x_mask" and old.table_gate_m is None and not old.largest_component
    assert old.depth_edge_m is None and old.contested_overlap is None and not old.support_region
    sc = _scene(scenes, 1)
    ts = torch_segmenter(tiny["model"], old, net_size=NET)
    _assert_same_instances(seg.predict(sc.rgb, sc.depth, sc.K), ts.predict(sc.rgb, sc.depth, sc.K))
    # the same parameters as call overrides of the current export
    over = {k: getattr(old, k) for k in ("objectness_threshold", *LEGACY_CARD_DEFAULTS)}
    _assert_same_instances(seg.predict(sc.rgb, sc.depth, sc.K), tiny["seg"].predict(sc.rgb, sc.depth, sc.K, **over))


# ----------------------------------------------------------------------------------------- runtime


def test_instances_helpers_640x480(tiny, scenes):
    sc = _scene(scenes)
    rgb, depth, K = _upscale(sc.rgb, sc.depth, sc.K, 480, 640)
    depth_mm = np.rint(depth * 1000).astype(np.uint16)  # RealSense convention: uint16 millimetres
    inst = tiny["seg"].predict(rgb, depth_mm, K)
    n = len(inst)
    assert n > 0 and inst.masks.shape == (n, 480, 640) and inst.masks.dtype == bool
    assert inst.scores.shape == (n,) and np.all(np.diff(inst.scores) <= 0)
    lab = inst.label_image()
    assert lab.shape == (480, 640) and lab.dtype == np.uint16 and lab.max() <= n
    assert np.array_equal(lab > 0, inst.masks.any(0))
    boxes, areas = inst.boxes(), inst.areas()
    for m, (x0, y0, x1, y1), a in zip(inst.masks, boxes, areas, strict=True):
        assert m.sum() == a == m[y0:y1, x0:x1].sum() and x1 <= 640 and y1 <= 480
    c = inst.centroids()
    i = int(np.argmax(areas))
    vv, uu = np.nonzero(inst.masks[i] & (depth > 0))
    z = depth_mm[vv, uu] / 1000.0
    np.testing.assert_allclose(c[i], [np.mean((uu - K[0, 2]) * z / K[0, 0]), np.mean((vv - K[1, 2]) * z / K[1, 1]),
                                      z.mean()], rtol=1e-5)
    recs = inst.to_records()
    assert [r["id"] for r in recs] == list(range(1, n + 1)) and recs[i]["area"] == areas[i]
    json.dumps(recs)


def test_bad_inputs_give_clear_errors(tiny, scenes):
    seg = tiny["seg"]
    sc = _scene(scenes)
    rgb, depth, K = sc.rgb, sc.depth, sc.K
    cases = [
        ((rgb, depth[:-1], K), "differ in size"),
        ((rgb, np.rint(depth).astype(np.uint16), K), "looks like metres"),
        ((rgb, depth * 1000.0, K), "looks like millimetres"),
        ((rgb.astype(np.float32) / 255, depth, K), "uint8"),
        ((rgb[..., :2], depth, K), r"\(H, W, 3\)"),
        ((rgb, depth.astype(np.int32), K), "float .*or uint16"),
        ((rgb, depth, K[:2]), "3x3"),
        ((rgb, depth, np.diag([-300.0, 300.0, 1.0])), "focal lengths must be positive"),
        ((rgb, depth, np.array([[300.0, 0, 900.0], [0, 300.0, 120.0], [0, 0, 1]])), "principal point"),
    ]
    for args, msg in cases:
        with pytest.raises(InputError, match=msg):
            seg.predict(*args)
        with pytest.raises(InputError, match=msg):  # the torch backend checks the same way
            tiny["torch"].predict(*args)
    # NaN depth is missing depth
    d_nan = depth.copy()
    d_nan[:40] = np.nan
    d_zero = depth.copy()
    d_zero[:40] = 0.0
    a, b = seg.predict(rgb, d_nan, K), seg.predict(rgb, d_zero, K)
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.scores, b.scores)
    for s in (seg, tiny["torch"]):  # overrides: unknown names and bad values are refused by both
        with pytest.raises(TypeError, match="unknown proposal parameters"):
            s.predict(rgb, depth, K, bogus=1)
        with pytest.raises(ValueError, match="proposals.nms_iou"):
            s.predict(rgb, depth, K, nms_iou=1.5)
    with pytest.raises(ModelError, match="no exported model"):
        Segmenter.load(tiny["root"] / "nowhere")


# ------------------------------------------------------------------------------------------- CLI


def _check_frame_outputs(out: Path, stem: str, hw: tuple[int, int]):
    lab = cv2.imread(str(out / f"{stem}_label.png"), cv2.IMREAD_UNCHANGED)
    assert lab is not None and lab.dtype == np.uint16 and lab.shape == hw
    ov = cv2.imread(str(out / f"{stem}_overlay.png"))
    assert ov is not None and ov.shape == (*hw, 3)
    rec = json.loads((out / f"{stem}.json").read_text())
    assert (rec["height"], rec["width"]) == hw
    ids = {r["id"] for r in rec["instances"]}
    assert set(np.unique(lab).tolist()) - {0} <= ids
    for r in rec["instances"]:
        assert set(r) >= {"id", "score", "area", "bbox", "centroid_m"} and len(r["bbox"]) == 4
        assert r["centroid_m"] is None or len(r["centroid_m"]) == 3
    return rec


def test_cli_predict_scenes_dir(tiny, scenes, tmp_path):
    out = tmp_path / "pred"
    assert deploy.main(["predict", "--model", str(tiny["out"]), "--scenes", str(scenes), "--out", str(out)]) == 0
    for i, stem in enumerate(("000000", "000001")):
        rec = _check_frame_outputs(out, stem, (240, 320))
        assert len(rec["instances"]) > 0 and "distributional" not in rec
        sc = _scene(scenes, i)
        inst = tiny["seg"].predict(sc.rgb, sc.depth, sc.K)
        assert [r["area"] for r in rec["instances"]] == inst.areas().tolist()
    assert not list(out.glob("*.tmp"))


def test_cli_predict_files_640x480_npy_and_single_intrinsics(tiny, scenes, tmp_path):
    sc = _scene(scenes)
    rgb, depth, K = _upscale(sc.rgb, sc.depth, sc.K, 480, 640)
    d = tmp_path / "in"
    (d / "rgb").mkdir(parents=True)
    (d / "depth").mkdir()
    cv2.imwrite(str(d / "rgb" / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(d / "depth" / "a.png"), np.rint(depth * 1000).astype(np.uint16))
    cv2.imwrite(str(d / "rgb" / "b.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.save(d / "depth" / "b.npy", depth.astype(np.float32))
    (d / "K.json").write_text(json.dumps({"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2]}))
    out = tmp_path / "pred"
    args = ["predict", "--model", str(tiny["out"] / ONNX_NAME), "--rgb", str(d / "rgb"), "--depth", str(d / "depth"),
            "--intrinsics", str(d / "K.json"), "--out", str(out), "--sheet", str(tmp_path / "sheet.png")]
    assert deploy.main(args) == 0
    ra, rb = _check_frame_outputs(out, "a", (480, 640)), _check_frame_outputs(out, "b", (480, 640))
    assert len(ra["instances"]) == len(rb["instances"]) > 0
    sheet = cv2.imread(str(tmp_path / "sheet.png"))  # a row per frame: its RGB beside its overlay, 480 px each
    assert sheet.shape == (2 * 360, 2 * 480, 3)
    # single files
    out2 = tmp_path / "pred2"
    assert deploy.main(["predict", "--model", str(tiny["out"]), "--rgb", str(d / "rgb" / "a.png"),
                        "--depth", str(d / "depth" / "a.png"), "--intrinsics", str(d / "K.json"),
                        "--out", str(out2)]) == 0
    _check_frame_outputs(out2, "a", (480, 640))


def test_cli_predict_errors(tiny, scenes, tmp_path, capsys):
    d = tmp_path / "in"
    shutil.copytree(scenes / "rgb", d / "rgb")
    shutil.copytree(scenes / "depth", d / "depth")
    shutil.copytree(scenes / "camera", d / "camera")
    model = str(tiny["out"])

    def run(out, *extra):
        return deploy.main(["predict", "--model", model, "--rgb", str(d / "rgb"), "--depth", str(d / "depth"),
                            "--intrinsics", str(d / "camera"), "--out", str(tmp_path / out), *extra])

    # unpaired stems: nothing is processed
    cv2.imwrite(str(d / "rgb" / "extra.png"), np.zeros((8, 8, 3), np.uint8))
    assert run("o1") == 2
    err = capsys.readouterr().err
    assert "unpaired" in err and "extra.png" in err and not (tmp_path / "o1").exists()
    (d / "rgb" / "extra.png").unlink()

    # malformed intrinsics for frame 0, corrupt depth PNG for frame 1: both named, nothing written for them
    (d / "camera" / "000000.json").write_text("{not json")
    (d / "depth" / "000001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert run("o2") == 2
    err = capsys.readouterr().err
    assert "000000.json" in err and "000001.png" in err
    assert not list((tmp_path / "o2").iterdir())

    # missing intrinsics keys and missing intrinsics file
    (d / "camera" / "000000.json").write_text(json.dumps({"fx": 300.0, "fy": 300.0}))
    (d / "camera" / "000001.json").unlink()
    shutil.copy(scenes / "depth" / "000001.png", d / "depth" / "000001.png")
    assert run("o3") == 2
    err = capsys.readouterr().err
    assert "lack cx, cy" in err and "missing intrinsics file" in err and "000001.json" in err
    assert not list((tmp_path / "o3").iterdir())

    # intrinsics for another resolution
    cam = json.loads((scenes / "camera" / "000001.json").read_text())
    (d / "camera" / "000001.json").write_text(json.dumps({**cam, "width": 640, "height": 480}))
    assert run("o4") == 2
    assert "are for 640x480" in capsys.readouterr().err

    # a good frame next to a bad one is still written
    shutil.copy(scenes / "camera" / "000001.json", d / "camera" / "000001.json")
    assert run("o5") == 2
    assert sorted(p.name for p in (tmp_path / "o5").iterdir()) == ["000001.json", "000001_label.png",
                                                                    "000001_overlay.png"]
    capsys.readouterr()
    # a sampler the export cannot run fails before any frame
    assert run("o6", "--mode", "confidence", "--sampler", "latent") == 2
    assert "needs a model with a latent code" in capsys.readouterr().err and not (tmp_path / "o6").exists()
    # missing model
    assert deploy.main(["predict", "--model", str(tmp_path / "none"), "--scenes", str(scenes),
                        "--out", str(tmp_path / "o7")]) == 2
    assert "no exported model" in capsys.readouterr().err


def test_runtime_and_predict_cli_work_without_torch(tiny, scenes, tmp_path):
    """With torch unimportable: the runtime, the proposals package and `python -m learner.deploy
    predict` (mean and MC-dropout confidence modes) work, and nothing imports torch."""
    code = (
        "import runpy, sys; sys.modules['torch'] = None\n"
        "import learner.deploy, learner.deploy.cli, learner.deploy.export, learner.deploy.bench\n"
        "from learner.deploy.runtime import Segmenter\n"
        "from learner.proposals import cleaning, config, frame, mask_sets, pipeline, plane, segmenter, tta\n"
        "rcs = []\n"
        f"for extra in ([], ['--mode', 'confidence', '--samples', '3', '--sampler', 'mc_dropout']):\n"
        f"    sys.argv = ['learner.deploy', 'predict', '--model', {str(tiny['out'])!r}, '--scenes', {str(scenes)!r},"
        f" '--out', {str(tmp_path)!r} + '/o' + str(len(rcs)), *extra]\n"
        "    try:\n"
        "        runpy.run_module('learner.deploy', run_name='__main__', alter_sys=True)\n"
        "    except SystemExit as e:\n"
        "        rcs.append(e.code)\n"
        "assert sys.modules['torch'] is None\n"
        "assert not [m for m in sys.modules if m.startswith('learner.model')], 'learner.model imported'\n"
        "sys.exit(max(rcs))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o0" / "000000_label.png").is_file()
    rec = json.loads((tmp_path / "o1" / "000001.json").read_text())
    assert rec["distributional"]["sampler"] == "mc_dropout" and rec["distributional"]["samples"] == 3


def test_bench_smoke(tiny, capsys):
    r = deploy.bench(tiny["out"], n=2, warmup=0, size_hw=(120, 160), stress=False)
    assert {"onnxruntime/configured", "torch/configured"} <= set(r) and r["torch_weights"].endswith("segmenter.pt")
    for k in ("onnxruntime/configured", "torch/configured"):
        assert set(r[k]) == {"p50_ms", "p95_ms", "mean_ms", "instances"}
        assert all(np.isfinite(v) for v in r[k].values())
    # the same weights through the same pipeline: the same number of instances
    assert r["onnxruntime/configured"]["instances"] == r["torch/configured"]["instances"] > 0
    assert deploy.main(["bench", "--model", str(tiny["out"]), "--n", "1", "--warmup", "0", "--no-torch",
                        "--no-stress", "--size", "120x160"]) == 0
    assert "onnxruntime/configured" in capsys.readouterr().out
    assert deploy.main(["bench", "--model", str(tiny["out"]), "--n", "1", "--checkpoint", "/nonexistent.pt"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
