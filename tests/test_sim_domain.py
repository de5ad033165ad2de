"""The randomised twin (sim/randomization.py) on real pybullet worlds: every knob changes the scene and
is reproducible per seed, the narrow default is bit-identical to the twin before the randomised
domains existed, training scenes load training material only, the cross-domain halves are fixed and
disjoint, and an export of cross scenes is valid with instances only on the table."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pybullet as pb
import pybullet_data
import pytest

from data.scene_io import iter_scenes, list_scenes, read_meta
from robot.base import Action, Primitive
from robot.sim_robot import SimRobot, SimRobotConfig
from sim.assets import (
    CROSS_PROCEDURAL_FAMILIES,
    CROSS_SPLITS,
    EVAL_MODELS,
    TRAIN_PROCEDURAL_FAMILIES,
    cross_models,
    family_files,
    halve_eval_models,
    split_object_ids,
)
from sim.camera import DepthNoise, Intrinsics, Lighting, render_rgbd
from sim.env import CameraConfig, InteractiveTabletopEnv, TabletopConfig
from sim.export_scenes import export_scenes
from sim.panda import _lowpoly_panda_urdf
from sim.randomization import DepthSensor, DomainConfig, ObjectRanges, RgbSensor, box_in_frustum
from sim.scene import ClutterConfig
from tests.sim_helpers import interior_pixel, most_isolated, narrow_side_yaw, world_points

W, H = 160, 120  # small captures keep the suite fast; intrinsics scale from 640x480


def wide_env(domain: str = "wide", split: str = "train", level: str = "sparse", randomization: DomainConfig | None = None,
             width: int = W, height: int = H, **kw) -> InteractiveTabletopEnv:
    return InteractiveTabletopEnv(TabletopConfig(
        domain=domain, split=split, clutter=ClutterConfig(level=level), camera=CameraConfig(width=width, height=height, **kw),
        randomization=randomization or DomainConfig()))


def _h(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------- the narrow twin

# sha256[:16] of rgb, depth, label, K, camera_pose after reset and rgb, depth, label after one poke,
# recorded with the code before the randomised domains were added (commit 44e9d9c, x86-64 Linux,
# pybullet 3.2.7 build of Jan 29 2025; Bullet and TinyRenderer are deterministic on one platform).
NARROW_REFERENCE = {
    ("cluttered", 0, 320, 240): ["1311a4a40878ba14", "b029388673a7d990", "d8565135cdeadee3", "e44ad9c2443a3eea",
                                 "4facfdf8c7f95c37", "1c00d92fb4559389", "912e26fb48e9557c", "e5696952e613a2c5"],
    ("sparse", 3, 640, 480): ["b4ff00ddcfc12e35", "60d7c8f0dc062bc3", "a40bc34cc4b5756b", "9740084c3069ced6",
                              "790cbf061ac6065f", "84399bfec425c9bc", "26d2b61a65485ba8", "7815387e8302ffa0"],
}
# The same code on another x86-64 machine (2026-12-06; the commit of NARROW_REFERENCE fails there the same
# way): identical images, labels and K, but the camera pose differs in its last bits (numpy's float kernels
# follow the CPU), so the poke lands a hair apart and the scene after it differs. Its exact hashes:
NARROW_REFERENCE_OTHER_CPU = {
    ("cluttered", 0, 320, 240): ["1311a4a40878ba14", "b029388673a7d990", "d8565135cdeadee3", "e44ad9c2443a3eea",
                                 "b3aeb2f527e803e4", "573980997388eecb", "1ba5bce4102547ae", "5e7d8bd9a378378a"],
}


@pytest.mark.parametrize("key", list(NARROW_REFERENCE))
def test_narrow_default_is_bit_identical_to_the_twin_before(key):
    from scipy import ndimage

    level, seed, w, h = key
    assert TabletopConfig().domain == "narrow" and SimRobotConfig().domain == "narrow"
    env = InteractiveTabletopEnv(TabletopConfig(clutter=ClutterConfig(level=level), camera=CameraConfig(width=w, height=h)))
    try:
        obs, info = env.reset(seed=seed)
        lab = info["instance_label"]
        ids = np.unique(lab[lab > 0])
        d = ndimage.distance_transform_edt(lab == ids[0])
        v, u = np.unravel_index(np.argmax(d), d.shape)
        o2, _, _, _, i2 = env.step({"primitive": 0, "pixel": (u, v), "angle": [0.5], "push_length": [0.1]})
        got = [_h(obs["rgb"]), _h(obs["depth"]), _h(lab), _h(obs["K"]), _h(obs["camera_pose"]),
               _h(o2["rgb"]), _h(o2["depth"]), _h(i2["instance_label"])]
    finally:
        env.close()
    assert got == NARROW_REFERENCE[key] or got == NARROW_REFERENCE_OTHER_CPU.get(key), got


# ------------------------------------------------------------------------------------ the knobs


def _frames(env, seed):
    obs, info = env.reset(seed=seed)
    return obs, info, dict(env.scene_info)


@pytest.fixture(scope="module")
def baselines():
    """Seed 11 with every group off (each falls back to the narrow twin's behaviour), and with only the
    camera on (seed 11 puts it 1.16 m away, 33 degrees up: table edges, floor and room in view)."""
    out = {}
    for name, groups in (("off", ()), ("camera", ("camera",))):
        env = wide_env(randomization=DomainConfig.only(*groups))
        try:
            out[name] = _frames(env, 11)
        finally:
            env.close()
    return out


@pytest.mark.parametrize("group", DomainConfig.GROUPS)
def test_each_knob_changes_the_scene_and_is_deterministic_per_seed(group, baselines):
    """One group on against all off, same seed (the table and the room are judged with the camera on,
    since the narrow camera sees nothing but the table top)."""
    base = ("camera",) if group in ("table", "room") else ()
    off_obs, off_info, off_meta = baselines["camera" if base else "off"]
    env = wide_env(randomization=DomainConfig.only(*base, group))
    try:
        a, a_info, a_meta = _frames(env, 11)
        b, b_info, _ = _frames(env, 11)  # the same seed again, in the same (reused) world
        c, c_info, c_meta = _frames(env, 12)
    finally:
        env.close()
    for k in a:  # deterministic per seed
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a_info["instance_label"], b_info["instance_label"])
    assert not np.array_equal(a["rgb"], c["rgb"])  # a different seed: a different scene
    # the knob changes the scene (same seed, everything else identical because each group has its own stream)
    if group == "rgb":  # camera artefacts only: the geometry and the depth are untouched
        np.testing.assert_array_equal(a["depth"], off_obs["depth"])
        assert not np.array_equal(a["rgb"], off_obs["rgb"])
    elif group == "depth":  # sensor artefacts only: the colour image is untouched
        np.testing.assert_array_equal(a["rgb"], off_obs["rgb"])
        assert not np.array_equal(a["depth"], off_obs["depth"])
        assert a_meta["depth_model"] in ("realsense", "kinect")
    elif group == "light":
        np.testing.assert_array_equal(a["depth"], off_obs["depth"])
        np.testing.assert_array_equal(a_info["instance_label"], off_info["instance_label"])
        assert not np.array_equal(a["rgb"], off_obs["rgb"])
    else:
        assert not np.array_equal(a["rgb"], off_obs["rgb"]) and not np.array_equal(a["depth"], off_obs["depth"])
    # and the knob's own values
    if group == "camera":
        assert a_meta["camera"]["distance"] > 1.0  # the baseline of the table / room knobs sees the room
        for meta in (a_meta, c_meta):
            cam = meta["camera"]
            assert 0.4 <= cam["distance"] <= 1.2 and 25 <= cam["elevation_deg"] <= 85 and abs(cam["roll_deg"]) <= 10
        assert not np.allclose(a["camera_pose"], off_obs["camera_pose"])
    if group == "intrinsics":
        for obs in (a, c):
            fx640 = obs["K"][0, 0] * 640 / W
            assert 580 <= fx640 <= 640 and not np.allclose(obs["K"], off_obs["K"])
    if group == "table":
        assert a_meta["table"] != off_meta["table"] or a_meta["table"] != c_meta["table"]
        assert 0.6 <= a_meta["table"]["height"] <= 0.95
    if group == "room":
        assert a_meta["n_room_bodies"] > off_meta["n_room_bodies"] == 1  # walls, floor plane, furniture ...
    if group == "objects":
        narrow_kinds = {"mesh", "box", "cylinder"}
        fams = set(a_meta["objects"]) | set(c_meta["objects"])
        assert fams - narrow_kinds, fams  # families the narrow twin does not have


def test_wide_is_reproducible_across_worlds_and_steps():
    a, b = wide_env(level="cluttered"), wide_env(level="cluttered")
    try:
        oa, ia = a.reset(seed=5)
        ob, ib = b.reset(seed=5)
        for k in oa:
            np.testing.assert_array_equal(oa[k], ob[k])
        lab = ia["instance_label"]
        u, v = interior_pixel(lab, int(np.unique(lab[lab > 0])[0]))
        act = {"primitive": 0, "pixel": (u, v), "angle": [0.3], "push_length": [0.1]}
        sa, *_ = a.step(act)
        sb, *_ = b.step(act)
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k])
    finally:
        a.close()
        b.close()


def test_cameras_stay_in_range_and_never_see_the_arm():
    env = wide_env(level="piled")
    arms = set()
    try:
        rng = np.random.default_rng(0)
        for seed in (6, 7, 8, 9):  # two parked, two removed
            obs, info = env.reset(seed=seed)  # _capture raises if the arm shows in any pixel
            cam = env.scene_info["camera"]
            arms.add(cam["arm"])
            eye, target = obs["camera_pose"][:3, 3], np.array(cam["target"])
            assert 0.4 - 1e-6 <= np.linalg.norm(eye - target) <= 1.2 + 1e-6
            view = obs["camera_pose"][:3, 2]
            assert 25 - 1e-3 <= np.degrees(np.arcsin(-view[2])) <= 85 + 1e-3
            lab = info["instance_label"]
            ids = np.unique(lab[lab > 0])
            u, v = interior_pixel(lab, int(rng.choice(ids)))
            assert not (env.last_segmentation == env.arm.body).any()
            env.step({"primitive": seed % 2, "pixel": (u, v), "angle": [1.0], "push_length": [0.1]})  # re-captures
            assert not (env.last_segmentation == env.arm.body).any()
            if cam["arm"] == "parked":  # parked out of view: not even a full render (no removal) sees it
                _, _, seg = render_rgbd(env.client, env.intrinsics, env._camera_pose, Lighting(shadow=False))
                assert not (seg == env.arm.body).any()
    finally:
        env.close()
    assert arms == {"parked", "removed"}


def test_frustum_test_is_conservative():
    intr = Intrinsics(600, 600, 79.5, 59.5, 160, 120)
    pose = np.eye(4)  # camera at the origin looking along +z (OpenCV axes = world axes here)
    assert box_in_frustum(np.array([-0.1, -0.1, 1.0]), np.array([0.1, 0.1, 1.2]), pose, intr)
    assert not box_in_frustum(np.array([-0.1, -0.1, -1.2]), np.array([0.1, 0.1, -1.0]), pose, intr)  # behind
    assert not box_in_frustum(np.array([2.0, -0.1, 1.0]), np.array([2.2, 0.1, 1.2]), pose, intr)  # beside
    assert box_in_frustum(np.array([0.13, -0.1, 1.0]), np.array([0.5, 0.1, 1.2]), pose, intr)  # straddles the edge


def test_wide_geometry_table_top_is_z0_and_floor_at_minus_table_height():
    """Noise off: with a moved camera, jittered intrinsics and a random table, deprojected table pixels
    lie on z = 0 (< 2 mm; its edge faces down to -thickness) and floor pixels on z = -table height."""
    env = wide_env(randomization=DomainConfig.only("camera", "intrinsics", "table", "room"), width=320, height=240,
                   noise=DepthNoise(enabled=False))
    try:
        for seed in (1, 2, 3):
            obs, _ = env.reset(seed=seed)
            _, depth, seg = render_rgbd(env.client, env.intrinsics, env._camera_pose, Lighting(shadow=False),
                                        far=env.cfg.far_plane)
            o = {"depth": depth, "K": env.intrinsics.K, "camera_pose": env._camera_pose}
            z = world_points(o, seg == env.scene.table_body)[:, 2]
            assert z.size > 500 and z.max() < 0.002 and np.percentile(np.abs(z), 95) < 0.002
            assert z.min() > -env.scene.top.thickness - 0.002  # the rest: the top's edge faces, when in view
            floor = [b for b in env.scene.room.bodies if pb.getVisualShapeData(b, physicsClientId=env.client)]
            zf = world_points(o, np.isin(seg, floor))[:, 2]
            zf = zf[np.abs(zf + env.scene.top.height) < 0.01]  # floor pixels (walls and pieces excluded)
            if zf.size:
                assert abs(np.median(zf) + env.scene.top.height) < 0.003
    finally:
        env.close()


def test_labels_mark_only_the_objects_on_the_table():
    """Room, furniture, second table and clutter are in view but are background (label 0)."""
    env = wide_env(level="cluttered", randomization=DomainConfig.only("camera", "table", "room", "objects"))
    seen_room = 0
    try:
        for seed in range(4):
            _, info = env.reset(seed=seed)
            lab = info["instance_label"]
            seg = env.last_segmentation
            objects = env.scene.body_to_instance()
            background = set(env.scene.room.bodies) | {env.scene.table_body, *env.scene.table_parts}
            room_px = np.isin(seg, list(background))
            assert (lab[room_px] == 0).all()
            seen_room += int(room_px.sum())
            for body, iid in objects.items():
                assert (lab[seg == body] == iid).all()
                assert env.scene.on_table(env.scene.poses()[iid][0])
            assert set(np.unique(lab)) - {0} <= set(objects.values())
    finally:
        env.close()
    assert seen_room > 0


# --------------------------------------------------------------------- what the scenes are made of


class LoadRecorder:
    """Records every file handed to pybullet (URDF, SDF, MJCF, meshes, textures)."""

    FUNCS = ("loadURDF", "loadSDF", "loadMJCF", "loadSoftBody", "createVisualShape", "createCollisionShape",
             "createVisualShapeArray", "createCollisionShapeArray", "loadTexture")

    def __init__(self, monkeypatch):
        self.paths: list[str] = []
        for name in self.FUNCS:
            orig = getattr(pb, name)
            monkeypatch.setattr(pb, name, self._wrap(orig))

    def _wrap(self, orig):
        def f(*args, **kw):
            for v in list(args[:1]) + [kw.get("fileName"), *(kw.get("fileNames") or [])]:
                if isinstance(v, str) and v:
                    self.paths.append(os.path.realpath(v))
            return orig(*args, **kw)
        return f

    def in_pybullet_data(self) -> set[str]:
        root = os.path.realpath(pybullet_data.getDataPath())
        return {os.path.relpath(p, root) for p in self.paths if p.startswith(root + os.sep)}


def test_training_scenes_load_only_random_urdfs_train_ids_and_procedural_shapes(monkeypatch):
    rec = LoadRecorder(monkeypatch)
    train = set(split_object_ids("train"))
    for level in ("sparse", "cluttered", "piled"):
        env = wide_env(level=level)
        try:
            for seed in range(2):
                _, info = env.reset(seed=seed)
                lab = info["instance_label"]
                u, v = interior_pixel(lab, int(np.unique(lab[lab > 0])[0]))
                env.step({"primitive": 1, "pixel": (u, v), "angle": [0.0]})
        finally:
            env.close()
    used = rec.in_pybullet_data()
    meshes = {p for p in used if p.startswith("random_urdfs" + os.sep)}
    assert meshes, "no random_urdfs mesh was loaded: the check would be vacuous"
    assert used == meshes, f"non-random_urdfs pybullet_data files loaded by training scenes: {sorted(used - meshes)}"
    for p in meshes:
        parts = p.split(os.sep)
        assert len(parts) == 3 and parts[2] == f"{parts[1]}.urdf" and int(parts[1]) in train, p
    # everything else is the Panda (a temporary low-poly URDF) or generated into the scene's temp dir
    others = {p for p in rec.paths if not p.startswith(os.path.realpath(pybullet_data.getDataPath()))}
    assert all(p == os.path.realpath(_lowpoly_panda_urdf()) or "tabletop_tex_" in p for p in others), others


@pytest.mark.parametrize("split", ["val", "test"])
def test_cross_scenes_load_only_their_half(monkeypatch, split):
    rec = LoadRecorder(monkeypatch)
    env = wide_env("cross", split, level="cluttered")
    try:
        for seed in range(2):
            env.reset(seed=seed)
    finally:
        env.close()
    used = rec.in_pybullet_data()
    allowed = set().union(*(family_files(m) for m in cross_models(split)))
    assert used and used <= allowed, sorted(used - allowed)
    other = "test" if split == "val" else "val"
    assert not used & set().union(*(family_files(m) for m in cross_models(other)))


def test_cross_halves_are_the_rule_disjoint_and_not_training_material():
    assert halve_eval_models() == CROSS_SPLITS  # the pinned lists are what the documented rule gives
    val, test = set(CROSS_SPLITS["val"]), set(CROSS_SPLITS["test"])
    assert not val & test and val | test == {m.family for m in EVAL_MODELS}
    assert abs(len(val) - len(test)) <= 1
    root = pybullet_data.getDataPath()

    def contents(split):
        files = set().union(*(family_files(m) for m in cross_models(split)))
        assert all(os.path.isfile(os.path.join(root, f)) for f in files)
        return files, {hashlib.md5(open(os.path.join(root, f), "rb").read()).hexdigest() for f in files}

    (vf, vh), (tf, th) = contents("val"), contents("test")
    assert not vf & tf and not vh & th  # disjoint by path and by content (meshes, textures)
    for f in vf | tf:
        assert not f.startswith("random_urdfs"), f  # never training material
    for m in EVAL_MODELS:
        assert all(os.path.isfile(os.path.join(root, f)) for f in m.files), m.family
    pv, pt = set(CROSS_PROCEDURAL_FAMILIES["val"]), set(CROSS_PROCEDURAL_FAMILIES["test"])
    assert not pv & pt and not (pv | pt) & set(TRAIN_PROCEDURAL_FAMILIES)
    assert set(ObjectRanges().family_weights) <= {"mesh", *TRAIN_PROCEDURAL_FAMILIES}


def test_export_of_cross_scenes_at_640x480(tmp_path):
    out = tmp_path / "cross"
    ids = export_scenes(out, "test", 3, progress=False, domain="cross")
    assert ids == list_scenes(out)
    meta = read_meta(out)
    assert meta["domain"] == "cross" and meta["width"] == 640 and meta["height"] == 480
    assert meta["models"] == list(CROSS_SPLITS["test"]) and "0 = table" in meta["label"]
    coco = json.loads((out / "instances_coco.json").read_text())
    n_inst = 0
    for s in iter_scenes(out):
        assert s.rgb.shape == (480, 640, 3) and s.depth.shape == s.label.shape == (480, 640)
        assert s.label.dtype == np.uint16 and s.depth.dtype == np.float32
        assert 560 <= s.K[0, 0] <= 660 and (s.depth == 0).any() and (s.depth > 0).mean() > 0.3
        ids_ = np.unique(s.label[s.label > 0])
        assert ids_.size >= 2
        n_inst += ids_.size
        # instance pixels are on the table: their 3D points lie over the table top, at or above z = 0
        pts = world_points({"depth": s.depth, "K": s.K, "camera_pose": s.camera_pose}, s.label > 0)
        on = (pts[:, 2] > -0.02) & (pts[:, 2] < 0.4)
        assert on.mean() > 0.9  # (flying pixels at object borders excepted)
    assert len(coco["annotations"]) == n_inst
    # reproducible
    export_scenes(tmp_path / "again", "test", 1, progress=False, domain="cross")
    np.testing.assert_array_equal(next(iter_scenes(tmp_path / "again")).rgb, next(iter_scenes(out)).rgb)
    with pytest.raises(ValueError, match="split"):
        export_scenes(tmp_path / "bad", "train", 1, progress=False, domain="cross")


# -------------------------------------------------------------------------------- sensors, robot


def test_depth_sensor_artefacts():
    z = np.full((120, 160), 1.0, np.float32)
    z[40:80, 60:100] = 0.8  # a box 20 cm in front of a wall
    rgb = np.full((120, 160, 3), 180, np.uint8)
    rgb[:, 120:] = 5  # a black surface on the right
    base = dict(model="realsense", scale=0.25, fx=150.0, noise=DepthNoise(enabled=False), edge_jump=0.01)
    # a missing band at the left border
    out = DepthSensor(**base, band_side="left", band_width_px=12).apply(z, rgb, np.zeros_like(z, bool), np.random.default_rng(0))
    assert (out[:, :8] == 0).all() and (out[:, 30:110] > 0).mean() > 0.99
    # holes on dark surfaces
    out = DepthSensor(**base, dark_threshold=30, dark_dropout=0.6).apply(z, rgb, np.zeros_like(z, bool), np.random.default_rng(0))
    assert 0.3 < (out[:, 120:] == 0).mean() < 0.9 and (out[:, :60] == 0).mean() < 0.01
    # flying pixels: depths between fore- and background at the box edges
    out = DepthSensor(**base, flying_fraction=1.0).apply(z, rgb, np.zeros_like(z, bool), np.random.default_rng(0))
    mid = (out > 0.82) & (out < 0.98)
    assert mid.sum() > 50 and not mid[:30].any()
    # shiny objects lose depth in blobs
    shiny = np.zeros_like(z, bool)
    shiny[40:80, 60:100] = True
    out = DepthSensor(**base, shiny_dropout=0.5).apply(z, rgb, shiny, np.random.default_rng(0))
    assert 0.2 < (out[shiny] == 0).mean() < 0.8
    # Kinect-like: disparity steps grow with z^2, then 1 mm quantisation; deterministic per generator
    k = DepthSensor(model="kinect", scale=0.25, fx=150.0, noise=DepthNoise(), kinect_sigma=0.002,
                    kinect_quantum_k=0.125 / (580 * 0.075))
    far = np.full((120, 160), 3.0, np.float32)
    o1, o2 = k.apply(far, rgb, np.zeros_like(z, bool), np.random.default_rng(3)), k.apply(far, rgb, np.zeros_like(z, bool), np.random.default_rng(3))
    np.testing.assert_array_equal(o1, o2)
    steps = np.unique(np.round(o1[o1 > 0], 4))
    assert len(steps) < 40 and np.min(np.diff(steps)) > 0.02  # ~26 mm disparity steps at 3 m
    # the emitter's shadow: the background just right of the box's right edge gets no pattern
    out = DepthSensor(**base, shadow_baseline=0.05).apply(z, rgb, np.zeros_like(z, bool), np.random.default_rng(0))
    assert (out[50:70, 100:104] == 0).any() and (out[50:70, 10:50] > 0).all()


def test_rgb_sensor_artefacts():
    rng = np.random.default_rng(0)
    img = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    nothing = np.zeros((60, 80), bool)
    plain = RgbSensor(noise_std=0.0).apply(img, nothing, np.random.default_rng(0))
    np.testing.assert_array_equal(plain, img)
    warm = RgbSensor(wb=(1.15, 1.0, 0.85), noise_std=0.0).apply(img, nothing, np.random.default_rng(0))
    assert warm[..., 0].mean() > img[..., 0].mean() and warm[..., 2].mean() < img[..., 2].mean()
    dark = RgbSensor(exposure=0.6, noise_std=0.0).apply(img, nothing, np.random.default_rng(0))
    assert dark.mean() < 0.7 * img.mean()
    blur = RgbSensor(blur_sigma=1.5, noise_std=0.0).apply(img, nothing, np.random.default_rng(0))
    assert np.abs(np.diff(blur.astype(float), axis=1)).mean() < 0.5 * np.abs(np.diff(img.astype(float), axis=1)).mean()
    smooth = np.repeat(np.linspace(0, 255, 80, dtype=np.uint8)[None, :, None], 60, 0).repeat(3, 2)
    noisy = RgbSensor(noise_std=5.0, jpeg_quality=70).apply(smooth, nothing, np.random.default_rng(1))
    assert 1.0 < np.abs(noisy.astype(float) - smooth).mean() < 10


def test_wide_poke_and_grasp_still_work():
    env = wide_env()
    try:
        obs, info = env.reset(seed=4)
        iid = most_isolated(env, info["instance_label"])
        u, v = interior_pixel(info["instance_label"], iid)
        _, _, _, _, out = env.step({"primitive": "poke", "pixel": (u, v), "angle": [0.4], "push_length": [0.1]})
        assert out["executed"], out["reason"]
        assert out["displacement"][iid] > 0.01
        for seed, iid in ((16, 3), (19, 1)):  # small isolated boxes / cylinders (one arm removed, one parked)
            obs, info = env.reset(seed=seed)
            lab = info["instance_label"]
            u, v = interior_pixel(lab, iid)
            yaw = narrow_side_yaw(obs, lab == iid)
            _, _, _, _, out = env.step({"primitive": "grasp", "pixel": (u, v), "angle": [yaw]})
            assert out["grasp_success"] is True and out["displacement"][iid] > 0.05
            assert env.scene.on_table(env.scene.poses()[iid][0])
    finally:
        env.close()


def test_sim_robot_passes_the_domain_through():
    with SimRobot(SimRobotConfig(domain="wide", clutter="sparse", width=W, height=H, seed=2)) as robot:
        frame = robot.get_observation()
        assert robot.env.cfg.domain == "wide" and frame.rgb.shape == (H, W, 3)
        assert robot.table_bounds == robot.env.scene.table_bounds()
        label = robot.ground_truth_label()
        u, v = interior_pixel(label, int(np.unique(label[label > 0])[0]))
        out = robot.send_action(Action(Primitive.POKE, (float(u), float(v)), angle=0.3, push_length=0.1))
        assert out.executed


def test_bad_domain_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown domain"):
        InteractiveTabletopEnv(TabletopConfig(domain="huge"))
    with pytest.raises(ValueError, match="split must be one of"):
        InteractiveTabletopEnv(TabletopConfig(domain="cross", split="train"))
    with pytest.raises(ValueError, match="unknown randomisation group"):
        DomainConfig.only("weather")
    bad = DomainConfig()
    bad.camera.distance = (1.2, 0.4)
    with pytest.raises(ValueError, match="min > max"):
        InteractiveTabletopEnv(TabletopConfig(domain="wide", randomization=bad))


def test_a_fresh_pybullet_server_gives_the_same_scenes():
    """Randomised envs reconnect every `reconnect_every` scenes (Bullet's memory); scenes stay the same."""
    a = wide_env(level="cluttered")
    b = InteractiveTabletopEnv(TabletopConfig(domain="wide", clutter=ClutterConfig(level="cluttered"),
                                              camera=CameraConfig(width=W, height=H), reconnect_every=1))
    try:
        calls = []
        reconnect = b._reconnect
        b._reconnect = lambda: (calls.append(1), reconnect())
        for seed in (3, 4):
            oa, _ = a.reset(seed=seed)
            ob, _ = b.reset(seed=seed)  # b is on a new server from its second scene on
            for k in oa:
                np.testing.assert_array_equal(oa[k], ob[k])
        assert calls == [1]
    finally:
        a.close()
        b.close()


def test_wide_env_passes_the_gymnasium_checker():
    from gymnasium.utils.env_checker import check_env

    env = wide_env()
    try:
        check_env(env, skip_render_check=False)
    finally:
        env.close()


# ------------------------------------------------------------------------------------ named cells


@pytest.mark.parametrize("cell", ["side_kinect", "close_glossy"])
def test_a_named_cell_pins_its_setup_and_stays_deterministic(cell):
    """robot.cell: the camera, table and sensor of every scene lie in the cell's narrow ranges, objects still
    change between scenes, and a seed gives the same scene twice."""
    from sim.randomization import CELLS, cell_config

    c = CELLS[cell]
    seen = []
    for _ in range(2):
        with SimRobot(SimRobotConfig(domain="wide", cell=cell, clutter="sparse", width=W, height=H,
                                     seed=4, interactions_per_scene=1)) as robot:
            frames = []
            for _scene in range(2):
                frame = robot.get_observation()
                info = robot.env.scene_info
                cam = info["camera"]
                assert c["camera"]["distance"][0] - 1e-6 <= cam["distance"] <= c["camera"]["distance"][1] + 1e-6
                assert c["camera"]["elevation_deg"][0] - 1e-6 <= cam["elevation_deg"] <= c["camera"]["elevation_deg"][1] + 1e-6
                assert info["table"]["shape"] == c["table"]["shapes"][0]
                frames.append(frame)
                robot._needs_reset = True  # next capture: a new scene of the same cell
            assert not np.array_equal(frames[0].rgb, frames[1].rgb)
            seen.append([_h(f.rgb) + _h(f.depth) for f in frames])
    assert seen[0] == seen[1]
    assert cell_config(cell).depth.model_weights == c["depth"]["model_weights"]
    with pytest.raises(ValueError, match="unknown cell 'kitchen'"):
        cell_config("kitchen")
    with pytest.raises(ValueError, match="needs robot.domain=wide"):
        SimRobot(SimRobotConfig(cell="side_kinect")).connect()


def test_export_of_a_cell(tmp_path):
    export_scenes(tmp_path / "c", "val", 2, domain="wide", cell="side_kinect", width=W, height=H, progress=False)
    assert read_meta(tmp_path / "c")["cell"] == "side_kinect"
    with pytest.raises(ValueError, match="needs domain wide or cross"):
        export_scenes(tmp_path / "n", "val", 2, cell="side_kinect", progress=False)
