"""Deploy path: export (ONNX + model card), the torch-free runtime, the predict/bench CLI."""

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

from learner import deploy, preprocess
from learner.hypotheses import OBJECTNESS_THRESHOLD, propose
from learner.mask_cleaning import CONTESTED_OVERLAP, DEPTH_EDGE_M, TABLE_GATE_M, release_contested
from learner.model import PointSegmenter, SegmenterConfig
from learner.segmenter_runtime import CARD_NAME, ONNX_NAME, InputError, ModelError, Segmenter

ROOT = Path(__file__).resolve().parents[1]
TINY = SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16)


def _tiny_model(seed: int = 0) -> PointSegmenter:
    torch.manual_seed(seed)
    m = PointSegmenter(TINY)
    with torch.no_grad():  # untrained objectness starts at p = 0.1: lift it so seeds pass 0.5
        m.obj_head.bias.fill_(1.0)
    return m.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random model saved in the run-directory format and exported."""
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
    return {"root": root, "run": run, "out": out, "card": card, "model": model, "seg": Segmenter.load(out)}


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
    return r, d, preprocess.scale_intrinsics(K, W / rgb.shape[1], H / rgb.shape[0])


def _assert_same_proposals(inst, masks, scores):
    assert len(inst) == len(scores) > 0
    assert inst.masks.shape == masks.shape
    diff = (inst.masks != masks).reshape(len(inst), -1).sum(1)
    assert diff.max() <= 3, diff  # float rounding may flip a pixel exactly at the threshold
    np.testing.assert_allclose(inst.scores, scores, atol=1e-4)


# ------------------------------------------------------------------------------------------ export


def test_export_card_and_files(tiny):
    out, card = tiny["out"], tiny["card"]
    assert (out / ONNX_NAME).is_file() and (out / CARD_NAME).is_file()
    on_disk = json.loads((out / CARD_NAME).read_text())
    assert on_disk == card
    inp = card["input"]
    assert (inp["height"], inp["width"]) == (240, 320) and inp["shape"] == [1, 8, 240, 320]
    assert inp["rgb"]["mean"] == list(preprocess.RGB_MEAN) and inp["rgb"]["std"] == list(preprocess.RGB_STD)
    assert inp["xyz"]["scale_m"] == preprocess.XYZ_SCALE_M
    assert inp["channels"][-2:] == ["valid", "plane_height"] and inp["plane_height"]["scale_m"] == preprocess.HEIGHT_SCALE_M
    assert card["outputs"]["stride"] == 4 and card["outputs"]["objectness"] == [1, 1, 60, 80]
    head = card["dynamic_head"]
    assert (head["embed_dim"], head["dyn_hidden"], head["coord_scale"]) == (16, 8, 64.0)
    assert head["num_kernel_params"] == TINY.num_kernel_params
    assert card["proposals"]["max_hypotheses"] == 20 and card["proposals"]["min_area"] == 16
    assert card["proposals"]["max_seeds"] is None and card["proposals"]["objectness_threshold"] == OBJECTNESS_THRESHOLD
    assert card["proposals"]["table_gate_m"] == TABLE_GATE_M and card["proposals"]["largest_component"] is True
    assert card["proposals"]["depth_edge_m"] == DEPTH_EDGE_M
    assert card["proposals"]["contested_overlap"] == CONTESTED_OVERLAP
    assert card["proposals"]["score"] == "mask"
    tr = card["training"]
    assert (tr["interactions"], tr["train_steps"], tr["oracle"]) == (42, 0, False)
    assert tr["source"].endswith("model/segmenter.pt") and tr["source_kind"] == "run_model"
    assert card["model"]["version"] == 3 and SegmenterConfig.from_dict(card["model"]["config"]) == TINY
    assert card["metrics"]["AP50"] == 0.25
    assert isinstance(card["export"]["code_version"], str) and card["export"]["opset"] == 17
    assert max(card["export"]["onnx_vs_torch_max_abs_diff"].values()) < 1e-4


def test_onnx_alone_carries_the_card(tiny, tmp_path):
    shutil.copy(tiny["out"] / ONNX_NAME, tmp_path / "m.onnx")
    seg = Segmenter.load(tmp_path / "m.onnx")
    assert seg.input_size == (240, 320) and seg.model_version == 3


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
    x = torch.randn(1, preprocess.IN_CHANNELS, 240, 320)
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
    assert not (tmp_path / "o" / ONNX_NAME).exists()


def test_export_sets_or_disables_the_depth_edge_cut(tiny, tmp_path):
    with pytest.raises(deploy.DeployError, match="depth_edge_m"):
        deploy.export(tiny["run"], tmp_path / "far", proposals={"depth_edge_m": 0.8}, check=False, mc_dropout=False)
    assert deploy.main(["export", str(tiny["run"]), str(tmp_path / "off"), "--depth-edge", "0", "--no-mc-dropout"]) == 0
    assert Segmenter.load(tmp_path / "off").proposal_params["depth_edge_m"] is None
    card = deploy.export(tiny["run"], tmp_path / "on", proposals={"depth_edge_m": 0.03}, check=False, mc_dropout=False)
    assert card["proposals"]["depth_edge_m"] == 0.03


def test_export_sets_or_disables_the_contested_pixel_rule(tiny, tmp_path):
    with pytest.raises(deploy.DeployError, match="contested_overlap"):
        deploy.export(tiny["run"], tmp_path / "big", proposals={"contested_overlap": 1.5}, check=False,
                      mc_dropout=False)
    assert deploy.main(["export", str(tiny["run"]), str(tmp_path / "off"), "--contested", "0", "--no-mc-dropout"]) == 0
    assert Segmenter.load(tmp_path / "off").proposal_params["contested_overlap"] is None
    card = deploy.export(tiny["run"], tmp_path / "on", proposals={"contested_overlap": 0.5}, check=False,
                         mc_dropout=False)
    assert card["proposals"]["contested_overlap"] == 0.5


# ------------------------------------------------------------------------------ runtime vs torch


def test_onnx_heads_match_torch(tiny, scenes):
    sc = _scene(scenes)
    x = preprocess.make_input(sc.rgb, sc.depth, sc.K)
    with torch.no_grad():
        ref = tiny["model"](x)
    seg = tiny["seg"]
    x_np, *_ = seg.prepare(sc.rgb, sc.depth, sc.K)
    np.testing.assert_allclose(x_np, x.numpy(), atol=1e-6)  # the numpy preprocessing is the same
    got = seg.run_network(x.numpy())
    for k in ("objectness", "features", "kernels"):
        assert got[k].shape == tuple(ref[k].shape)
        assert np.abs(got[k] - ref[k].numpy()).max() < 1e-4, k


@pytest.mark.parametrize("size", [None, (480, 640), (300, 400)])
def test_runtime_proposals_match_torch(tiny, scenes, size):
    sc = _scene(scenes, 1)
    rgb, depth, K = sc.rgb, sc.depth, sc.K
    if size is not None:
        rgb, depth, K = _upscale(rgb, depth, K, *size)
    with torch.no_grad():
        masks, scores = propose(tiny["model"], rgb, depth, K, net_size=(240, 320))
    inst = tiny["seg"].predict(rgb, depth, K)
    _assert_same_proposals(inst, masks, scores)
    assert inst.masks.shape[1:] == rgb.shape[:2]


def test_runtime_clean_up_options_match_torch(tiny, scenes):
    """Each clean-up switch gives the same proposals in the runtime as in torch."""
    sc = _scene(scenes, 1)
    for kw in ({"table_gate_m": None}, {"largest_component": False}, {"score": "objectness_x_mask"},
               {"depth_edge_m": None}, {"depth_edge_m": 0.01}, {"contested_overlap": None},
               {"contested_overlap": 0.6}):
        with torch.no_grad():
            masks, scores = propose(tiny["model"], sc.rgb, sc.depth, sc.K, **kw)
        _assert_same_proposals(tiny["seg"].predict(sc.rgb, sc.depth, sc.K, **kw), masks, scores)


def test_runtime_contested_rule_on_crops_equals_the_full_mask_rule():
    """The runtime frees contested pixels on bounding-box crops; that must equal
    mask_cleaning.release_contested on the full masks (a tiny random net makes no such overlaps)."""
    from learner import segmenter_runtime as rt

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
            crops.append(rt._Crop(int(rows[0]), int(cols[0]), crop, int(crop.sum())))
        kept = rt._release_contested(crops, CONTESTED_OVERLAP, min_area=16)
        ref = release_contested(full, CONTESTED_OVERLAP)
        big = np.flatnonzero(ref.sum(axis=(1, 2)) >= 16)
        assert kept == big.tolist()
        np.testing.assert_array_equal(rt.paste_masks([crops[i] for i in kept], (40, 50), (40, 50)), ref[big])


def test_card_without_clean_up_keys_keeps_the_old_proposals(tiny, scenes, tmp_path):
    """Exports made before the clean-up existed still predict what they predicted then."""
    shutil.copytree(tiny["out"], tmp_path / "old")
    card_path = tmp_path / "old" / CARD_NAME
    card = json.loads(card_path.read_text())
    for k in ("table_gate_m", "largest_component", "score_description", "table_gate", "depth_edge_m",
              "contested_overlap", "contested"):
        card["proposals"].pop(k)
    card["proposals"]["score"] = "mean objectness probability in the mask x mean mask probability in the mask"
    card["proposals"]["objectness_threshold"] = 0.5
    card_path.write_text(json.dumps(card))
    seg = Segmenter.load(tmp_path / "old")
    assert seg.proposal_params["score"] == "objectness_x_mask" and seg.proposal_params["table_gate_m"] is None
    assert seg.proposal_params["depth_edge_m"] is None and seg.proposal_params["contested_overlap"] is None
    sc = _scene(scenes, 1)
    with torch.no_grad():
        masks, scores = propose(tiny["model"], sc.rgb, sc.depth, sc.K, objectness_threshold=0.5, table_gate_m=None,
                                largest_component=False, score="objectness_x_mask", depth_edge_m=None,
                                contested_overlap=None)
    _assert_same_proposals(seg.predict(sc.rgb, sc.depth, sc.K), masks, scores)


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
    # NaN depth is missing depth
    d_nan = depth.copy()
    d_nan[:40] = np.nan
    d_zero = depth.copy()
    d_zero[:40] = 0.0
    a, b = seg.predict(rgb, d_nan, K), seg.predict(rgb, d_zero, K)
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.scores, b.scores)
    with pytest.raises(TypeError, match="unknown proposal parameters"):
        seg.predict(rgb, depth, K, bogus=1)
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
    for stem in ("000000", "000001"):
        rec = _check_frame_outputs(out, stem, (240, 320))
        assert len(rec["instances"]) > 0
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
            "--intrinsics", str(d / "K.json"), "--out", str(out)]
    assert deploy.main(args) == 0
    ra, rb = _check_frame_outputs(out, "a", (480, 640)), _check_frame_outputs(out, "b", (480, 640))
    assert len(ra["instances"]) == len(rb["instances"]) > 0
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

    def run(out):
        return deploy.main(["predict", "--model", model, "--rgb", str(d / "rgb"), "--depth", str(d / "depth"),
                            "--intrinsics", str(d / "camera"), "--out", str(tmp_path / out)])

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
    # missing model
    assert deploy.main(["predict", "--model", str(tmp_path / "none"), "--scenes", str(scenes),
                        "--out", str(tmp_path / "o6")]) == 2
    assert "no exported model" in capsys.readouterr().err


def test_runtime_and_predict_cli_work_without_torch(tiny, scenes, tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from learner.segmenter_runtime import Segmenter\n"
        "from learner import deploy\n"
        f"rc = deploy.main(['predict', '--model', {str(tiny['out'])!r}, '--scenes', {str(scenes)!r}, "
        f"'--out', {str(tmp_path / 'o')!r}])\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "000000_label.png").is_file()


def test_bench_smoke(tiny, capsys):
    r = deploy.bench(tiny["out"], n=2, warmup=0, size_hw=(120, 160), stress=False)
    assert {"onnxruntime/configured", "torch/configured"} <= set(r)
    assert r["onnxruntime/configured"]["p50_ms"] > 0 and r["torch_weights"].endswith("segmenter.pt")
    assert deploy.main(["bench", "--model", str(tiny["out"]), "--n", "1", "--warmup", "0", "--no-torch",
                        "--no-stress", "--size", "120x160"]) == 0
    assert "onnxruntime/configured" in capsys.readouterr().out
