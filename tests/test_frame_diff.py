"""Frame differencing on synthetic frames and on real sim interactions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from data.frame_diff import FrameDiffConfig, frame_difference
from data.schema import Label
from sim.camera import orbit_pose
from sim.env import InteractiveTabletopEnv, TabletopConfig
from sim.scene import ClutterConfig
from tests.sim_helpers import interior_pixel, most_isolated, narrow_side_yaw

K = np.array([[308.0, 0, 159.0], [0, 308.0, 120.5], [0, 0, 1]])
TABLE_BOUNDS = ((0.10, 1.00), (-0.6, 0.6))  # the sim table (robot frame, metres)
POSE = orbit_pose(np.array([0.55, 0.0, 0.0]), 0.6, 62.0, 0.0)


def table_frame(rng=None):
    """A flat grey table seen by POSE: rgb, depth (analytic ray-plane intersection)."""
    H, W = 240, 320
    v, u = np.mgrid[0:H, 0:W]
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((H, W))], -1)
    R, t = POSE[:3, :3], POSE[:3, 3]
    dz_world = rays @ R[2]  # world z of the ray direction per unit camera z
    z = -t[2] / dz_world  # depth where the ray meets the plane z = 0
    rgb = np.full((H, W, 3), 110, np.uint8)
    if rng is not None:
        rgb = np.clip(rgb + rng.normal(0, 2, rgb.shape), 0, 255).astype(np.uint8)
    return rgb, z.astype(np.float32)


def add_box(rgb, depth, v0, v1, u0, u1, height=0.04, color=(200, 40, 40)):
    rgb, depth = rgb.copy(), depth.copy()
    rgb[v0:v1, u0:u1] = color
    depth[v0:v1, u0:u1] -= height  # close enough to "stands 4 cm toward the camera"
    return rgb, depth


def test_object_removed_gives_its_before_footprint():
    rng = np.random.default_rng(0)
    rgb, depth = table_frame(rng)
    rgb_b, depth_b = add_box(rgb, depth, 100, 130, 140, 180)
    res = frame_difference(rgb_b, depth_b, rgb, depth, K, POSE, (160, 115), TABLE_BOUNDS)
    assert res.label == Label.POSITIVE and res.reason == "moved"
    truth = np.zeros_like(res.mask)
    truth[100:130, 140:180] = True
    iou = (res.mask & truth).sum() / (res.mask | truth).sum()
    assert iou > 0.9


def test_poked_object_mask_excludes_where_it_went():
    rng = np.random.default_rng(1)
    rgb, depth = table_frame(rng)
    rgb_b, depth_b = add_box(rgb, depth, 100, 130, 140, 180)
    rgb_a, depth_a = add_box(rgb, depth, 100, 130, 165, 205)  # shifted 25 px right, overlapping
    res = frame_difference(rgb_b, depth_b, rgb_a, depth_a, K, POSE, (150, 115), TABLE_BOUNDS)
    assert res.label == Label.POSITIVE
    assert res.mask[100:130, 185:205].sum() == 0  # where it went is not part of the before mask
    truth = np.zeros_like(res.mask)
    truth[100:130, 140:180] = True
    assert (res.mask & truth).sum() / (res.mask | truth).sum() > 0.85  # overlap recovered by growth


def test_nothing_changed_is_negative_and_far_change_is_ignored():
    rng = np.random.default_rng(2)
    rgb, depth = table_frame(rng)
    res = frame_difference(rgb, depth, table_frame(rng)[0], depth.copy(), K, POSE, (160, 120), TABLE_BOUNDS)
    assert res.label == Label.NEGATIVE and res.reason == "nothing_moved" and not res.mask.any()
    rgb_b, depth_b = add_box(rgb, depth, 40, 60, 40, 70)
    res = frame_difference(rgb_b, depth_b, rgb, depth, K, POSE, (250, 200), TABLE_BOUNDS)
    assert res.label == Label.NEGATIVE  # something moved, but not at the interaction point


def test_change_reaching_the_image_border_is_invalid():
    """An arm (or anything) entering the view from the border must never leak into a mask."""
    rng = np.random.default_rng(3)
    rgb, depth = table_frame(rng)
    rgb_b, depth_b = add_box(rgb, depth, 0, 60, 120, 200, height=0.1)
    res = frame_difference(rgb_b, depth_b, rgb, depth, K, POSE, (160, 30), TABLE_BOUNDS)
    assert res.label == Label.INVALID and res.reason == "touches_border" and not res.mask.any()


def test_thresholds_come_from_config():
    rng = np.random.default_rng(4)
    rgb, depth = table_frame(rng)
    rgb_b, depth_b = add_box(rgb, depth, 100, 130, 140, 180, height=0.01, color=(112, 112, 112))
    assert frame_difference(rgb_b, depth_b, rgb, depth, K, POSE, (160, 115), TABLE_BOUNDS).label == Label.POSITIVE
    strict = FrameDiffConfig(depth_threshold=0.02, depth_relative=0.0)
    assert frame_difference(rgb_b, depth_b, rgb, depth, K, POSE, (160, 115), TABLE_BOUNDS, strict).label == Label.NEGATIVE


def test_mismatched_inputs_are_rejected():
    rgb, depth = table_frame()
    with pytest.raises(ValueError, match="rgb_after"):
        frame_difference(rgb, depth, rgb[:100], depth, K, POSE, (1, 1))
    with pytest.raises(ValueError, match="depth_after"):
        frame_difference(rgb, depth, rgb, depth[:, :100], K, POSE, (1, 1))


@pytest.fixture(scope="module")
def sparse_env():
    env = InteractiveTabletopEnv(TabletopConfig(split="val", clutter=ClutterConfig(level="sparse")))
    yield env
    env.close()


def test_grasped_object_mask_matches_ground_truth(sparse_env):
    ious, attempts = [], 0
    for seed in range(11, 19):
        if len(ious) == 3:
            break
        attempts += 1
        obs, info = sparse_env.reset(seed=seed)
        label = info["instance_label"]
        iid = most_isolated(sparse_env, label)
        u, v = interior_pixel(label, iid)
        after, _, _, _, info = sparse_env.step(
            {"primitive": "grasp", "pixel": (u, v), "angle": [narrow_side_yaw(obs, label == iid)]}
        )
        if not info["grasp_success"]:
            continue
        res = frame_difference(obs["rgb"], obs["depth"], after["rgb"], after["depth"], obs["K"], obs["camera_pose"],
                               (u, v), TABLE_BOUNDS)
        assert res.label == Label.POSITIVE
        gt = info["instance_label_before"] == iid
        ious.append((res.mask & gt).sum() / (res.mask | gt).sum())
    assert len(ious) == 3, f"only {len(ious)} of {attempts} isolated-object grasps held their object"
    assert min(ious) >= 0.8, ious


def test_poke_on_bare_table_is_negative(sparse_env):
    obs, info = sparse_env.reset(seed=21)
    free = ndimage.distance_transform_edt(info["instance_label"] == 0) > 30
    free[:40] = free[-20:] = False
    v, u = np.argwhere(free)[len(np.argwhere(free)) // 2]
    after, _, _, _, info = sparse_env.step({"primitive": "poke", "pixel": (u, v), "angle": [0.0], "push_length": [0.03]})
    assert info["executed"] and info["moved_ids"] == []
    res = frame_difference(obs["rgb"], obs["depth"], after["rgb"], after["depth"], obs["K"], obs["camera_pose"],
                           (u, v), TABLE_BOUNDS)
    assert res.label == Label.NEGATIVE and not res.mask.any()
