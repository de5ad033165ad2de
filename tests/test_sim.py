"""The pybullet twin on a real pybullet world: determinism, primitives, camera geometry, bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pybullet as pb
import pytest
from gymnasium.utils.env_checker import check_env
from scipy import ndimage

import sim
from sim.assets import SPLIT_RANGES, split_object_ids
from sim.camera import DepthNoise, Lighting, render_rgbd
from sim.env import CameraConfig, InteractiveTabletopEnv, TabletopConfig
from sim.scene import ClutterConfig
from tests.sim_helpers import interior_pixel, most_isolated, narrow_side_yaw, world_points


def make_env(level: str = "cluttered", **kw) -> InteractiveTabletopEnv:
    return InteractiveTabletopEnv(TabletopConfig(clutter=ClutterConfig(level=level), **kw))


@pytest.fixture
def sparse_env():
    env = make_env("sparse")
    yield env
    env.close()


def test_registered_and_check_env():
    env = gym.make(sim.ENV_ID)
    try:
        check_env(env.unwrapped, skip_render_check=False)
    finally:
        env.close()


def test_same_seed_same_frames():
    a, b = make_env(), make_env()
    try:
        oa, _ = a.reset(seed=123)
        ob, _ = b.reset(seed=123)
        for k in oa:
            np.testing.assert_array_equal(oa[k], ob[k])
        act = {"primitive": 0, "pixel": (160.0, 120.0), "angle": [0.7], "push_length": [0.1]}
        sa, *_ = a.step(act)
        sb, *_ = b.step(act)
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k])
        oc, _ = a.reset(seed=124)
        assert not np.array_equal(oc["rgb"], oa["rgb"])
    finally:
        a.close()
        b.close()


def test_poke_on_object_moves_it(sparse_env):
    obs, info = sparse_env.reset(seed=3)
    iid = most_isolated(sparse_env, info["instance_label"])
    u, v = interior_pixel(info["instance_label"], iid)
    _, _, _, _, info = sparse_env.step({"primitive": "poke", "pixel": (u, v), "angle": [0.4], "push_length": [0.1]})
    assert info["executed"], info["reason"]
    assert info["displacement"][iid] > 0.01


def test_poke_on_bare_table_moves_nothing(sparse_env):
    obs, info = sparse_env.reset(seed=4)
    label = info["instance_label"]
    poses = sparse_env.scene.poses()
    # a table pixel whose 3D point is > 15 cm from every object, pushed 3 cm
    dist = ndimage.distance_transform_edt(label == 0)
    candidates = np.argwhere(dist > 15)
    rng = np.random.default_rng(0)
    for v, u in candidates[rng.permutation(len(candidates))]:
        p = world_points(obs, np.pad(np.ones((1, 1), bool), ((v, obs["depth"].shape[0] - v - 1), (u, obs["depth"].shape[1] - u - 1))))
        if len(p) and sparse_env.scene.in_workspace(p[0]) and all(
            np.linalg.norm(p[0][:2] - q[:2]) > 0.15 for q, _ in poses.values()
        ):
            break
    else:
        pytest.fail("no free table pixel found")
    _, reward, _, _, info = sparse_env.step({"primitive": 0, "pixel": (u, v), "angle": [0.0], "push_length": [0.03]})
    assert info["executed"], info["reason"]
    assert info["moved_ids"] == []
    assert reward == 0.0


def test_grasp_isolated_object_takes_it_off_its_spot(sparse_env):
    obs, info = sparse_env.reset(seed=5)
    iid = most_isolated(sparse_env, info["instance_label"])
    u, v = interior_pixel(info["instance_label"], iid)
    yaw = narrow_side_yaw(obs, info["instance_label"] == iid)
    before = sparse_env.scene.poses()[iid][0]
    _, _, _, _, info = sparse_env.step({"primitive": "grasp", "pixel": (u, v), "angle": [yaw]})
    assert info["grasp_success"] is True
    after = sparse_env.scene.poses()[iid][0]
    assert np.linalg.norm(after[:2] - before[:2]) > 0.05
    assert info["displacement"][iid] > 0.05
    # the object landed on the table (place="table") and is visible at its new spot
    assert sparse_env.scene.on_table(after)
    assert (info["instance_label"] == iid).sum() > 0


def test_arm_never_visible_in_captures():
    env = make_env("piled")
    try:
        rng = np.random.default_rng(0)
        for seed in range(6):
            obs, info = env.reset(seed=seed)  # _capture raises if the arm shows in any pixel
            label = info["instance_label"]
            for k in range(2):
                ids = np.unique(label[label > 0])
                u, v = interior_pixel(label, int(rng.choice(ids)))
                obs, _, term, _, info = env.step({"primitive": k, "pixel": (u, v), "angle": [1.0], "push_length": [0.1]})
                label = info["instance_label"]
            _, _, seg = render_rgbd(env.client, env.base_intrinsics, env._camera_pose, Lighting(shadow=False))
            assert not (seg == env.arm.body).any()
    finally:
        env.close()


def test_object_splits_disjoint_and_used():
    sets = {k: set(split_object_ids(k)) for k in SPLIT_RANGES}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert len(sets["train"] | sets["val"] | sets["test"]) == 1000
    env = make_env(split="test")
    try:
        env.reset(seed=0)
        meshes = [o.spec.object_id for o in env.scene.objects if o.spec.kind == "mesh"]
        assert meshes and all(m in sets["test"] for m in meshes)
    finally:
        env.close()
    with pytest.raises(ValueError, match="unknown split"):
        split_object_ids("holdout")


@pytest.mark.parametrize("roll_deg", [0.0, 90.0, 33.0])
def test_depth_of_known_plane_within_2mm(roll_deg):
    """Deproject every pixel of the table plane z = 0 (noise off): the TinyRenderer pixel grid must sit on K."""
    env = InteractiveTabletopEnv(TabletopConfig(camera=CameraConfig(noise=DepthNoise(enabled=False))))
    try:
        env.reset(seed=0)
        a = np.deg2rad(roll_deg)
        R = np.eye(4)
        R[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
        pose = env._camera_pose @ R
        rgb, depth, seg = render_rgbd(env.client, env.base_intrinsics, pose, Lighting(shadow=False))
        obs = {"depth": depth, "K": env.base_intrinsics.K, "camera_pose": pose}
        z = world_points(obs, seg == env.scene.table_body)[:, 2]
        assert z.size > 1000
        assert np.abs(z).max() < 0.002
        assert abs(np.mean(z)) < 0.0005
    finally:
        env.close()


def test_depth_noise_model():
    rng = np.random.default_rng(0)
    depth = np.full((60, 80), 0.8, np.float32)
    depth[20:40, 30:50] = 0.7  # a box: 10 cm jump at its edges
    noisy = DepthNoise().apply(depth, rng)
    assert noisy.dtype == np.float32
    valid = noisy > 0
    assert 0.9 < valid.mean() < 1.0
    edge = np.zeros_like(valid)
    edge[19:21, 30:50] = edge[39:41, 30:50] = True
    assert (~valid[edge]).mean() > 0.2  # edges lose pixels
    assert np.abs(noisy[valid] - depth[valid]).max() < 0.02
    assert np.allclose(np.round(noisy[valid] * 1000), noisy[valid] * 1000, atol=1e-3)  # 1 mm quantum


def test_bad_input_is_rejected_without_corrupting_env(sparse_env):
    obs, info = sparse_env.reset(seed=1)
    poses = sparse_env.scene.poses()
    with pytest.raises(ValueError, match="outside the 320x240 image"):
        sparse_env.step({"primitive": 0, "pixel": (400.0, 10.0), "angle": [0.0], "push_length": [0.1]})
    with pytest.raises(ValueError, match="outside"):
        sparse_env.step({"primitive": 0, "pixel": (np.nan, 10.0), "angle": [0.0], "push_length": [0.1]})
    with pytest.raises(ValueError, match="unknown primitive"):
        sparse_env.step({"primitive": "shake", "pixel": (10.0, 10.0)})
    with pytest.raises(ValueError, match="unknown primitive"):
        sparse_env.step({"primitive": 7, "pixel": (10.0, 10.0)})
    # zero depth under (and around) the pixel: a documented no-op
    sparse_env._obs["depth"][100:110, 100:110] = 0.0
    obs2, reward, term, trunc, info = sparse_env.step({"primitive": 1, "pixel": (105.0, 105.0), "angle": [0.0]})
    assert not info["executed"] and info["reason"] == "no_depth"
    assert info["moved_ids"] == [] and reward == 0.0
    for iid, (p, _q) in sparse_env.scene.poses().items():
        np.testing.assert_allclose(p, poses[iid][0], atol=1e-6)
    # the env still works afterwards
    sparse_env._obs["depth"][100:110, 100:110] = np.nan
    _, _, _, _, info = sparse_env.step({"primitive": 1, "pixel": (105.0, 105.0), "angle": [0.0]})
    assert info["reason"] == "no_depth"
    label = sparse_env._label
    u, v = interior_pixel(label, int(np.unique(label[label > 0])[0]))
    _, _, _, _, info = sparse_env.step({"primitive": 0, "pixel": (u, v), "angle": [0.0], "push_length": [0.1]})
    assert info["executed"]


def test_fallen_objects_are_removed_and_scene_terminates():
    env = make_env("sparse", place="bin")
    try:
        env.reset(seed=2)
        iid = env.scene.objects[0].instance_id
        body = env.scene.objects[0].body
        pb.resetBasePositionAndOrientation(body, [0.55, 1.5, -0.5], [0, 0, 0, 1], physicsClientId=env.client)
        assert iid in env.scene.remove_fallen()
        assert iid not in env.scene.poses()
        # remove all but one: the next step reports terminated so the caller re-spawns
        for o in list(env.scene.objects)[1:]:
            env.scene.remove(o.instance_id)
        _, _, terminated, _, _ = env.step({"primitive": 0, "pixel": (5.0, 5.0), "angle": [0.0], "push_length": [0.02]})
        assert terminated
    finally:
        env.close()


def test_table_textures_are_removed_with_or_without_close():
    """The scene's temporary texture folder goes with env.close(), and with an env that is dropped unclosed."""
    import gc
    import os

    closed, dropped = make_env("sparse"), make_env("sparse")
    closed.reset(seed=0)
    dropped.reset(seed=0)
    paths = [closed.scene._texture_dir, dropped.scene._texture_dir]
    assert all(os.path.isdir(p) and os.listdir(p) for p in paths)
    closed.close()
    assert not os.path.exists(paths[0])
    pb.disconnect(physicsClientId=dropped.client)
    del dropped
    gc.collect()
    assert not os.path.exists(paths[1])
