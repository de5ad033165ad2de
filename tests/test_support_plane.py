"""The support plane (learner/proposals/plane.py) and the off-support rule (learner/proposals/cleaning.py)
in real pybullet worlds of the randomised twin (sim TabletopConfig(domain="wide")).

The sim's table top is world z = 0; the camera pose (world-from-camera) gives the true plane in the
camera frame: n = R^T e_z, d = t_z."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from data.geometry import height_above_table
from learner.model.backend import torch_segmenter
from learner.model.network import SegmenterConfig, build_model
from learner.proposals.cleaning import off_support_pixels
from learner.proposals.frame import InputSpec, make_input
from learner.proposals.plane import (
    PlaneFitConfig,
    deproject,
    find_support_plane,
    fit_table_plane,
    height_above_plane,
    plane_height,
    support_plane_from_pose,
    use_camera_pose,
    workspace_mask,
)
from sim.env import InteractiveTabletopEnv, TabletopConfig
from sim.randomization import CameraRanges, DomainConfig, TableRanges

# a far, low camera over a small round table: the floor is the dominant plane of the view
FAR = DomainConfig(camera=replace(CameraRanges(), distance=(1.2, 1.2), elevation_deg=(25.0, 30.0)),
                   table=replace(TableRanges(), shapes=("round",), shape_weights=(1.0,), radius=(0.42, 0.42),
                                 height=(0.9, 0.95)))
FLOOR_DOMINANT_SEED = 4


def _frame(cfg: TabletopConfig, seed: int):
    env = InteractiveTabletopEnv(cfg)
    try:
        obs, info = env.reset(seed=seed)
    finally:
        env.close()
    return obs, info["instance_label"]


def _true_plane(pose: np.ndarray) -> tuple[np.ndarray, float]:
    return pose[2, :3].copy(), float(pose[2, 3])


def _dominant_plane(depth, K):
    cfg = PlaneFitConfig()
    depth = np.where((depth >= cfg.min_depth_m) & (depth <= cfg.max_depth_m), depth, 0).astype(np.float32)
    pts, _, _ = deproject(depth, K, cfg.stride)
    n, d, _ = fit_table_plane(pts, cfg.iters, cfg.inlier_dist_m, cfg.eval_points, cfg.seed)
    return n, d


@pytest.fixture(scope="module")
def floor_frame():
    return _frame(TabletopConfig(domain="wide", randomization=FAR), FLOOR_DOMINANT_SEED)


def test_with_floor_and_table_in_view_the_support_is_the_table(floor_frame):
    obs, label = floor_frame
    depth, K, pose = obs["depth"], obs["K"], obs["camera_pose"]
    n_true, d_true = _true_plane(pose)
    n_dom, d_dom = _dominant_plane(depth, K)
    assert abs(d_dom - d_true) > 0.3  # the dominant plane is the floor (the old rule's failure)
    sp = find_support_plane(depth, K)
    assert sp.source == "support"
    assert abs(sp.d - d_true) < 0.005 and float(sp.n @ n_true) > np.cos(np.deg2rad(1.0))
    # the height channel is the height above the table (within 5 mm on the table and the objects)
    h = height_above_plane(depth, K)
    true = height_above_table(depth, K, pose)
    (x0, x1), (y0, y1) = _table_bounds(TabletopConfig(domain="wide", randomization=FAR), FLOOR_DOMINANT_SEED)
    on_table = workspace_mask(depth, K, pose, ((x0, x1), (y0, y1), (-0.01, 0.3)))
    assert on_table.sum() > 500
    assert np.median(np.abs(h - true)[on_table]) < 0.005
    # with the pose: exact, and the fitted variant agrees
    exact = support_plane_from_pose(pose)
    assert np.allclose(exact.n, n_true) and abs(exact.d - d_true) < 1e-9
    fitted = support_plane_from_pose(pose, depth=depth, K=K, table_z=None)
    assert abs(fitted.d - d_true) < 0.005
    with use_camera_pose(pose):
        assert np.median(np.abs(height_above_plane(depth, K) - true)[on_table]) < 0.005


def test_the_narrow_twin_keeps_the_dominant_plane():
    obs, _ = _frame(TabletopConfig(split="val"), 3)
    depth, K = obs["depth"], obs["K"]
    n, d = _dominant_plane(depth, K)
    sp = find_support_plane(depth, K)
    assert sp.source == "dominant" and np.array_equal(sp.n, n) and sp.d == d
    cfg = PlaneFitConfig()
    d_in = np.where((depth >= cfg.min_depth_m) & (depth <= cfg.max_depth_m), depth, 0).astype(np.float32)
    assert np.array_equal(height_above_plane(depth, K), plane_height(d_in, K, n, d))


def _off_table_truth(obs, label, table_bounds):
    """Pixels the rule must never put into a hypothesis: missing depth joined to the image border
    (the band), and measured background points off the table (below its top: the floor; above the
    objects: walls, furniture; outside its extent)."""
    import cv2

    depth, K, pose = obs["depth"], obs["K"], obs["camera_pose"]
    missing = depth <= 0
    n, lab = cv2.connectedComponents(missing.astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    band = missing & np.isin(lab, border[border > 0]) if n > 1 else np.zeros_like(missing)
    (x0, x1), (y0, y1) = table_bounds
    # generous box: anything outside it, or below the table top / above 40 cm, is off the table
    inside = workspace_mask(depth, K, pose, ((x0 - 0.03, x1 + 0.03), (y0 - 0.03, y1 + 0.03), (-0.03, 0.4)))
    off = (depth > 0) & (label == 0) & ~inside
    return band, off


def _table_bounds(env_cfg, seed):
    env = InteractiveTabletopEnv(env_cfg)
    try:
        env.reset(seed=seed)
        return env.scene.table_bounds()
    finally:
        env.close()


def _sprawling_segmenter():
    """A random full-size net whose every cell is a seed: its masks sprawl everywhere."""
    torch.manual_seed(0)
    model = build_model(SegmenterConfig()).eval()
    with torch.no_grad():
        model.obj_head.bias.fill_(5.0)
    return torch_segmenter(model)


WALL_BAND_SEED = 0


def test_walls_floor_and_the_missing_depth_band_never_yield_a_hypothesis():
    cfg = TabletopConfig(domain="wide")
    obs, label = _frame(cfg, WALL_BAND_SEED)
    bounds = _table_bounds(cfg, WALL_BAND_SEED)
    band, off = _off_table_truth(obs, label, bounds)
    assert band.sum() > 200 and off.sum() > 2000  # the frame has a border band and a wall / floor in view
    seg = _sprawling_segmenter()
    loose = seg.predict(obs["rgb"], obs["depth"], obs["K"], support_region=False).masks
    assert len(loose) and (loose & (band | off)).any()  # without the rule the masks spill there
    inst = seg.predict(obs["rgb"], obs["depth"], obs["K"])
    assert len(inst)
    assert not (inst.masks & band).any()
    assert not (inst.masks & off).any()
    # the rule's region at the input: no object pixel of the table lost
    x = make_input(obs["rgb"], obs["depth"], obs["K"])
    spec = InputSpec()
    off_px = off_support_pixels(x[0, 7] * spec.height_scale_m, x[0, 6] > 0.5, x[0, 3:6] * spec.xyz_scale_m, True)
    assert off_px is not None
    objects = label > 0
    assert (off_px & objects).sum() <= 0.01 * objects.sum()


def _room_scene(wall_top_m: float):
    """Points (camera frame, metres; up = -y) of a table receding from the camera, a wall 45 cm wide rising
    behind its far edge to wall_top_m, a box on the table and a small object in front of the wall.
    Returns (height, valid, xyz, up, masks)."""
    H, W = 60, 80
    r, c = np.mgrid[0:H, 0:W].astype(np.float32)
    X, Z = (c - 40) * 0.01, 1.0 + (H - r) * 0.01
    h = np.zeros((H, W), np.float32)
    wall = np.zeros((H, W), bool)
    wall[:20, 50:] = True  # rows 0-19 over columns 50-79
    X[wall] = ((c - 40) * 0.015)[wall]
    h[wall] = np.repeat(np.linspace(wall_top_m, 0.02, 20, dtype=np.float32)[:, None], 30, axis=1).ravel()
    Z[wall] = 1.6
    box = np.zeros((H, W), bool)
    box[30:40, 10:20] = True  # an 8 cm box: its top face
    h[box], Z[box] = 0.08, Z[box] - 0.05
    front = np.zeros((H, W), bool)
    front[12:22, 52:58] = True  # a 6 cm object 15 cm in front of the wall
    h[front], Z[front] = 0.06, 1.45
    xyz = np.stack([X, 0.5 - h, Z]).astype(np.float32)
    return h, np.ones((H, W), bool), xyz, np.array([0.0, -1.0, 0.0]), {"wall": wall, "box": box, "front": front}


@pytest.mark.parametrize("wall_top_m", [1.0, 0.28])
def test_walls_at_the_table_edge_are_not_support_but_objects_before_them_are(wall_top_m):
    """room_structures: a wall rising behind the table, seen up to 1 m (tall) or only up to 28 cm (the
    sensor lost the rest: a wide vertical plane), is taken out; a box on the table and an object in front
    of the wall (a depth step between them) are kept; the table never is."""
    from learner.proposals.plane import room_structures

    h, valid, xyz, up, m = _room_scene(wall_top_m)
    out = room_structures(h, valid, xyz, up, 0.01, 0.5, 0.05)
    assert out[m["wall"] & ~m["front"] & (h >= 0.01)].mean() > 0.95
    assert not out[m["box"]].any()
    assert out[m["front"]].mean() < 0.2  # at most its rim next to the depth step
    assert not out[h < 0.01].any()
    # a narrower wall piece seen low down (20 cm wide) could be a box side: kept
    narrow = m["wall"].copy()
    narrow[:, 50:67] = False  # 13 columns of 1.5 cm left: 19.5 cm
    h2 = np.where(m["wall"] & ~narrow, 0.0, h).astype(np.float32)
    if wall_top_m < 0.5:
        assert not room_structures(h2, valid, xyz, up, 0.01, 0.5, 0.05)[narrow].any()
