"""Depth-clustering baseline, scene I/O and the evaluation harness on analytically rendered scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data import scene_io
from learner.evaluate.baselines import get_baseline
from learner.evaluate.baselines.depth_clustering import (
    DepthClusteringConfig,
    DepthClusteringSegmenter,
    deproject,
    fit_table_plane,
)
from learner.evaluate.harness import evaluate_segmenter, main, write_report
from learner.evaluate.metrics import label_to_masks

H, W = 240, 320
K = np.array([[277.0, 0.0, 159.5], [0.0, 277.0, 119.5], [0.0, 0.0, 1.0]])


# ------------------------------------------------------------------------- analytic renderer


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World-from-camera pose with OpenCV axes (x right, y down, z forward)."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], axis=1)
    pose[:3, 3] = eye
    return pose


def render(pose: np.ndarray, boxes, h: int = H, w: int = W, k: np.ndarray = K):
    """Ray-cast an infinite table (world z = 0) and axis-aligned boxes [(min_xyz, max_xyz)].

    Returns depth (float32 metres along camera z) and label (uint16, box i -> i + 1, table 0).
    """
    vv, uu = np.mgrid[0:h, 0:w].astype(np.float64)
    dc = np.stack([(uu - k[0, 2]) / k[0, 0], (vv - k[1, 2]) / k[1, 1], np.ones_like(uu)], axis=-1)
    dw = dc @ pose[:3, :3].T  # ray directions in world, parametrised so that t = camera depth
    o = pose[:3, 3]
    best = np.full((h, w), np.inf)
    label = np.zeros((h, w), dtype=np.uint16)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_table = np.where(dw[..., 2] < 0, -o[2] / dw[..., 2], np.inf)
        best = np.minimum(best, t_table)
        for i, (bmin, bmax) in enumerate(boxes):
            t1 = (np.asarray(bmin) - o) / dw
            t2 = (np.asarray(bmax) - o) / dw
            tnear = np.nanmax(np.minimum(t1, t2), axis=-1)
            tfar = np.nanmin(np.maximum(t1, t2), axis=-1)
            hit = (tnear <= tfar) & (tfar > 0) & (tnear > 0) & (tnear < best)
            best[hit] = tnear[hit]
            label[hit] = i + 1
    depth = np.where(np.isfinite(best), best, 0.0).astype(np.float32)
    return depth, label


POSE = look_at(eye=(-0.45, 0.0, 0.55), target=(0.1, 0.0, 0.0))
TWO_BOXES = [((0.0, -0.12, 0.0), (0.08, -0.04, 0.07)), ((0.05, 0.05, 0.0), (0.13, 0.12, 0.09))]
THREE_BOXES = [
    ((-0.05, -0.15, 0.0), (0.02, -0.08, 0.06)),
    ((0.05, -0.02, 0.0), (0.12, 0.05, 0.10)),
    ((0.15, 0.10, 0.0), (0.22, 0.18, 0.08)),
]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _best_ious(masks: np.ndarray, label: np.ndarray) -> list[float]:
    _, gt = label_to_masks(label)
    return [max((_iou(p, g) for p in masks), default=0.0) for g in gt]


# ------------------------------------------------------------------------------ baseline


def test_plane_fit_recovers_table():
    depth, _ = render(POSE, TWO_BOXES)
    pts, _, _ = deproject(depth, K, stride=2)
    n, d, inl = fit_table_plane(pts, rng=0)
    # table normal (world +z) expressed in the camera frame, oriented towards the camera
    n_true = POSE[:3, :3].T @ np.array([0.0, 0.0, 1.0])
    assert abs(abs(n @ n_true) - 1.0) < 1e-6
    assert d == pytest.approx(POSE[2, 3], abs=1e-4)  # camera height above the table
    assert inl.mean() > 0.7


def test_two_boxes_give_two_clusters():
    depth, label = render(POSE, TWO_BOXES)
    masks, scores = DepthClusteringSegmenter().predict(None, depth, K)
    assert masks.shape == (2, H, W) and masks.dtype == bool
    assert scores.shape == (2,) and np.all(np.diff(scores) <= 0)
    assert min(_best_ious(masks, label)) > 0.9


def test_missing_depth_is_ignored():
    depth, label = render(POSE, TWO_BOXES)
    rng = np.random.default_rng(1)
    depth[rng.random(depth.shape) < 0.1] = 0.0
    ys, xs = np.nonzero(label == 1)
    depth[ys.min() + 5 : ys.min() + 7, :] = 0.0  # a 2-row hole band across the first box
    masks, _ = get_baseline("depth_clustering")(None, depth, K)
    assert masks.shape[0] == 2
    assert not np.any(masks[:, depth == 0])
    valid_label = np.where(depth > 0, label, 0)
    assert min(_best_ious(masks, valid_label)) > 0.85


def test_empty_table_has_no_instances():
    depth, _ = render(POSE, [])
    masks, scores = DepthClusteringSegmenter().predict(None, depth, K)
    assert masks.shape == (0, H, W) and scores.shape == (0,)
    masks, scores = DepthClusteringSegmenter().predict(None, np.zeros((H, W), np.float32), K)
    assert masks.shape == (0, H, W)


def test_small_clusters_dropped_and_config_override():
    depth, _ = render(POSE, TWO_BOXES)
    seg = DepthClusteringSegmenter(DepthClusteringConfig(), min_cluster_px=10**6)
    assert seg.config.min_cluster_px == 10**6
    assert seg.predict(None, depth, K)[0].shape[0] == 0


def test_repeated_calls_give_the_same_segmentation():
    """Latency is a benchmark (docs/benchmarks.md), not a test; what a test can hold is that the seeded
    RANSAC and clustering give the same answer every time."""
    depth, _ = render(POSE, THREE_BOXES)
    seg = DepthClusteringSegmenter()
    m1, s1 = seg.predict(None, depth, K)
    m2, s2 = seg.predict(None, depth.copy(), K)
    assert m1.shape[0] == 3
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(s1, s2)


# ------------------------------------------------------------------------------ scene I/O


def _make_scenes(root, layouts) -> list[str]:
    ids = []
    for i, boxes in enumerate(layouts):
        depth, label = render(POSE, boxes)
        rgb = np.zeros((H, W, 3), np.uint8)
        rgb[..., 0] = 200
        rgb[label > 0] = (30, 120, 220)
        sid = f"{i:06d}"
        scene_io.write_scene(root, scene_io.Scene(sid, rgb, depth, label, K, POSE))
        ids.append(sid)
    scene_io.write_coco(root, ids)
    scene_io.write_meta(root, {"split": "test", "generator": "analytic"})
    return ids


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode under numpy 2
def test_scene_roundtrip(tmp_path):
    depth, label = render(POSE, TWO_BOXES)
    depth[0, 0] = 70.0  # beyond uint16 millimetres -> clipped
    depth[0, 1] = np.nan  # invalid -> missing
    rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    scene_io.write_scene(tmp_path, scene_io.Scene("000007", rgb, depth, label, K, POSE))
    s = scene_io.read_scene(tmp_path, "000007")
    assert np.array_equal(s.rgb, rgb)
    assert s.depth.dtype == np.float32 and s.label.dtype == np.uint16
    ok = (depth > 0) & (depth < 60)
    assert np.abs(s.depth[ok] - depth[ok]).max() <= 0.0005 + 1e-6
    assert s.depth[0, 0] == pytest.approx(65.535) and s.depth[0, 1] == 0
    assert np.array_equal(s.label, label)
    assert np.allclose(s.K, K) and np.allclose(s.camera_pose, POSE)
    assert scene_io.list_scenes(tmp_path) == ["000007"]

    coco = scene_io.write_coco(tmp_path)
    on_disk = json.loads((tmp_path / scene_io.COCO_FILE).read_text())
    assert on_disk == coco
    assert coco["images"][0]["file_name"] == "rgb/000007.png"
    assert coco["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert len(coco["annotations"]) == 2
    from pycocotools import mask as mask_utils

    for ann in coco["annotations"]:
        m = mask_utils.decode(ann["segmentation"]).astype(bool)
        assert np.array_equal(m, label == ann["instance_id"])
        assert ann["area"] == m.sum() and ann["iscrowd"] == 0 and ann["category_id"] == 1
    scene_io.write_meta(tmp_path, {"split": "test", "seed": 3})
    assert scene_io.read_meta(tmp_path)["seed"] == 3


def test_scene_io_errors(tmp_path):
    depth, label = render(POSE, TWO_BOXES)
    rgb = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(ValueError, match="depth shape"):
        scene_io.write_scene(tmp_path, scene_io.Scene("000000", rgb, depth[:10], label, K, POSE))
    scene_io.write_scene(tmp_path, scene_io.Scene("000000", rgb, depth, label, K, POSE))
    with pytest.raises(FileNotFoundError, match="000001"):
        scene_io.read_scene(tmp_path, "000001")
    (tmp_path / "depth" / "000000.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="depth"):
        scene_io.read_scene(tmp_path, "000000")
    scene_io.write_scene(tmp_path, scene_io.Scene("000000", rgb, depth, label, K, POSE))
    import cv2

    cv2.imwrite(str(tmp_path / "label" / "000000.png"), np.zeros((10, 10), np.uint16))
    with pytest.raises(ValueError, match="label size"):
        scene_io.read_scene(tmp_path, "000000")
    (tmp_path / "label" / "000000.png").unlink()
    with pytest.raises(FileNotFoundError, match="label"):
        scene_io.read_scene(tmp_path, "000000")
    assert scene_io.read_scene(tmp_path, "000000", require_label=False).label is None
    (tmp_path / "camera" / "000000.json").write_text("{}")
    with pytest.raises(ValueError, match="camera"):
        scene_io.read_scene(tmp_path, "000000")
    with pytest.raises(FileNotFoundError):
        scene_io.list_scenes(tmp_path / "nope")


# ------------------------------------------------------------------------------ harness


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    _make_scenes(root, [TWO_BOXES, THREE_BOXES, [TWO_BOXES[0], THREE_BOXES[2]]])
    return root


def test_harness_oracle_is_perfect(scenes_dir):
    cache = {}

    def oracle(rgb, depth, k):
        # recover the GT from the stored label (the harness only passes rgb/depth/K)
        key = depth.tobytes()
        return cache[key]

    for s in scene_io.iter_scenes(scenes_dir):
        _, masks = label_to_masks(s.label)
        cache[s.depth.tobytes()] = (masks, np.ones(len(masks)))
    res = evaluate_segmenter(oracle, scenes_dir)
    assert res["n_scenes"] == 3
    assert res["AP50"] == 1.0 and res["AP"] == 1.0 and res["AP30"] == 1.0 and res["AR100"] == 1.0
    assert res["overlap_F"] == 1.0 and res["boundary_F"] == 1.0
    assert res["obj_detected_075_percentage"] == 1.0
    assert res["double_pick_rate"] == 0.0
    assert res["pickable_area_fraction"] == pytest.approx(1.0)
    assert res["latency_mean_s"] >= 0


def test_harness_depth_clustering_and_report(scenes_dir, tmp_path):
    res = evaluate_segmenter(get_baseline("depth_clustering"), scenes_dir, limit=2)
    assert res["n_scenes"] == 2
    assert res["AP50"] >= 0.9
    assert res["overlap_F"] > 0.9
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    write_report(res, out_json, out_md)
    assert json.loads(out_json.read_text())["AP50"] == res["AP50"]
    assert "AP50" in out_md.read_text()


def test_harness_cli(scenes_dir, tmp_path, capsys):
    prefix = tmp_path / "eval_dc"
    main(
        ["--baseline", "depth_clustering", "--scenes", str(scenes_dir), "--out", str(prefix), "--limit", "1"]
    )
    res = json.loads((tmp_path / "eval_dc.json").read_text())
    assert res["n_scenes"] == 1 and res["AP50"] >= 0.9
    assert (tmp_path / "eval_dc.md").is_file()
    assert "AP50" in capsys.readouterr().out
