"""`InteractiveTabletop-v0`: a Gymnasium twin of the robot cell (Panda + RGB-D camera + cluttered table).

Observation (dict):
- `rgb` (H,W,3) uint8; `depth` (H,W) float32 metres along the camera z axis, 0 = missing (noisy);
- `K` (3,3) float64 pixels; `camera_pose` (4,4) float64 world-from-camera (OpenCV axes).
The arm is parked out of view for every capture.

Action (dict):
- `primitive`: 0 = poke, 1 = grasp (the strings "poke"/"grasp" are accepted too);
- `pixel`: (u, v) float pixels of the latest observation;
- `angle`: (1,) radians. Poke: push direction in the world x-y plane (0 = +x). Grasp: gripper yaw;
- `push_length`: (1,) metres, poke only.
The pixel is deprojected with the latest observed (noisy) depth into a 3D target, like a real robot.

Reward: 1.0 if any object moved more than `moved_threshold` (simulator ground truth), else 0.0.
`terminated` is True when fewer than `clutter.min_objects` objects remain in the workspace; call
`reset()` to spawn a new scene. `info` carries simulator ground truth FOR EVALUATION ONLY (never a
training signal for the self-supervised learner): `instance_label` (H,W) int32 of the returned
observation (0 = background/table, >0 = object instance id), `instance_label_before`, `moved_ids`,
`displacement` (instance id -> metres), `grasp_success`, `executed`, `reason`, `target_world`.

Bad input: an unknown primitive or a pixel outside the image raises ValueError (the env is left
unchanged); a pixel without valid depth (0 or NaN) or a target outside the workspace is a documented
no-op: nothing moves, `info["executed"] = False`, `info["reason"]` says why.

Domains (`TabletopConfig.domain`): "narrow" (the default, today's cell), "wide" (randomised cells:
camera pose and intrinsics, room, table, light, sensor artefacts, object families; training material
only) and "cross" (randomised cells with evaluation-only objects, split "val" / "test"). Ranges:
sim/randomization.py `DomainConfig`. In every domain only objects on the table carry instance ids;
table, room, furniture and clutter are 0. `env.scene_info` says what a randomised scene drew.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import pybullet as pb

from sim.assets import SPLIT_RANGES, ObjectSampling, sample_cross_specs, sample_wide_specs
from sim.camera import DepthNoise, Intrinsics, Lighting, d435_intrinsics, deproject, orbit_pose, render_rgbd
from sim.panda import PARK_POSES, ArmConfig, PandaArm
from sim.randomization import (
    DOMAINS,
    DepthSensor,
    DomainConfig,
    RgbSensor,
    box_in_frustum,
    sample_camera,
    sample_depth_sensor,
    sample_intrinsics,
    sample_lighting,
    sample_rgb_sensor,
    streams,
)
from sim.scene import ClutterConfig, TableConfig, TableScene

PRIMITIVES = ("poke", "grasp")


@dataclass
class CameraConfig:
    """Camera resolution and pose (an orbit around `target`, world metres / degrees) with per-scene jitter."""

    width: int = 320
    height: int = 240
    target: tuple[float, float, float] = (0.55, 0.0, 0.0)
    distance: float = 0.58
    pitch_deg: float = 62.0
    yaw_deg: float = 0.0
    jitter_target: float = 0.02
    jitter_distance: float = 0.04
    jitter_pitch_deg: float = 3.0
    jitter_yaw_deg: float = 6.0
    rgb_noise_std: float = 2.0
    shadows: bool = False  # TinyRenderer shadows double the render time; enable for realism
    noise: DepthNoise = field(default_factory=DepthNoise)


@dataclass
class TabletopConfig:
    """Everything that defines the simulated cell."""

    split: str = "train"
    camera: CameraConfig = field(default_factory=CameraConfig)
    table: TableConfig = field(default_factory=TableConfig)
    clutter: ClutterConfig = field(default_factory=ClutterConfig)
    objects: ObjectSampling = field(default_factory=ObjectSampling)
    arm: ArmConfig = field(default_factory=ArmConfig)
    timestep: float = 1.0 / 120.0  # s; 1/240 gives the same outcomes at twice the cost (see docs/benchmarks.md)
    solver_iterations: int = 30
    cone_friction: bool = False  # pyramid friction is ~4x faster and indistinguishable here
    place: str = "table"  # where a grasped object goes: "table" (a free spot) or "bin" (off the table)
    poke_clearance: float = 0.05  # metres the pusher starts before the target point
    poke_height: tuple[float, float] = (0.012, 0.04)  # push height above the table, min/max metres
    grasp_depth: float = 0.02  # how far below the observed surface the fingertips go, metres
    lift_height: float = 0.15
    approach_clearance: float = 0.03  # kinematic approach ends this far above the observed local top, metres
    moved_threshold: float = 0.01  # metres (or 0.2 rad of rotation) to count an object as moved
    settle_max_s: float = 1.0
    # "narrow": today's twin (the default); "wide": randomised cells (training material only);
    # "cross": randomised cells with evaluation-only objects, split "val" or "test" (sim/assets.py)
    domain: str = "narrow"
    randomization: DomainConfig = field(default_factory=DomainConfig)  # ranges of wide / cross
    far_plane: float = 10.0  # wide / cross render range, metres (the narrow twin renders to 3 m)
    # wide / cross: a fresh pybullet server every this many scenes (0 = never). Bullet keeps ~0.2-0.4 MB
    # per randomised scene after resetSimulation (measured); a new server frees it. Scenes are unchanged.
    reconnect_every: int = 200


class InteractiveTabletopEnv(gym.Env):
    """Poke and grasp objects on a cluttered table; observe RGB-D."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, config: TabletopConfig | None = None, render_mode: str | None = "rgb_array", **overrides: Any):
        self.cfg = config or TabletopConfig()
        for key, value in overrides.items():
            if not hasattr(self.cfg, key):
                raise ValueError(f"unknown TabletopConfig field {key!r}")
            setattr(self.cfg, key, value)
        if self.cfg.place not in ("table", "bin"):
            raise ValueError(f"place must be 'table' or 'bin', got {self.cfg.place!r}")
        self.cfg.clutter.validate()
        if self.cfg.domain not in DOMAINS:
            raise ValueError(f"unknown domain {self.cfg.domain!r}; expected one of {DOMAINS}")
        splits = ("val", "test") if self.cfg.domain == "cross" else tuple(SPLIT_RANGES)
        if self.cfg.split not in splits:
            raise ValueError(f"split must be one of {splits} in the {self.cfg.domain} domain, got {self.cfg.split!r}")
        if self.cfg.domain == "cross" and not self.cfg.randomization.objects.enabled:
            raise ValueError("the cross domain needs randomization.objects.enabled (its objects are the point)")
        self.cfg.randomization.validate()
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"unsupported render_mode {render_mode!r}")
        self.render_mode = render_mode
        cam = self.cfg.camera
        self.base_intrinsics: Intrinsics = d435_intrinsics(cam.width, cam.height)
        self.intrinsics: Intrinsics = self.base_intrinsics  # of the current scene (randomised domains vary it)
        self._arm_removed = False  # randomised domains: the arm is moved out of the scene for renders
        self._rgb_noise_rng: np.random.Generator | None = None
        self.last_segmentation: np.ndarray | None = None
        self._depth_sensor: DepthSensor | None = None
        self._rgb_sensor: RgbSensor | None = None
        self.scene_info: dict[str, Any] = {}  # randomised domains: what was drawn (camera, table, room)
        H, W = cam.height, cam.width
        self.observation_space = gym.spaces.Dict(
            {
                "rgb": gym.spaces.Box(0, 255, (H, W, 3), np.uint8),
                "depth": gym.spaces.Box(0.0, 10.0, (H, W), np.float32),
                "K": gym.spaces.Box(-np.inf, np.inf, (3, 3), np.float64),
                "camera_pose": gym.spaces.Box(-np.inf, np.inf, (4, 4), np.float64),
            }
        )
        self.action_space = gym.spaces.Dict(
            {
                "primitive": gym.spaces.Discrete(2),
                "pixel": gym.spaces.Box(np.zeros(2, np.float32), np.array([W - 1, H - 1], np.float32)),
                "angle": gym.spaces.Box(-np.pi, np.pi, (1,), np.float32),
                "push_length": gym.spaces.Box(0.02, 0.25, (1,), np.float32),
            }
        )
        self.client = pb.connect(pb.DIRECT)
        self.scene = TableScene(self.client, self.cfg.table, self.cfg.clutter, self.cfg.objects)
        self.scene.make_textures(np.random.default_rng(0))  # one fixed pool of table textures per env
        self.arm = PandaArm(self.client, self.cfg.arm, self.cfg.timestep)
        self._obs: dict[str, np.ndarray] | None = None
        self._obs_points: np.ndarray | None = None  # world points of the latest depth (cache)
        self._label: np.ndarray | None = None
        self.timing = {"render_s": 0.0, "renders": 0, "physics_s": 0.0, "physics_steps": 0}  # for sim.bench
        self._n_resets = 0

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        if self.cfg.domain != "narrow" and self.cfg.reconnect_every and self._n_resets % self.cfg.reconnect_every == 0 \
                and self._n_resets:
            self._reconnect()
        self._n_resets += 1
        c = self.client
        pb.resetSimulation(physicsClientId=c)
        pb.setGravity(0, 0, -9.81, physicsClientId=c)
        pb.setPhysicsEngineParameter(
            fixedTimeStep=self.cfg.timestep, numSolverIterations=self.cfg.solver_iterations,
            deterministicOverlappingPairs=1,
            enableConeFriction=int(self.cfg.cone_friction), physicsClientId=c,
        )
        self.scene.objects = []
        if self.cfg.domain == "narrow":
            self.scene.build_table(rng)
            self.arm.load()
            self.scene.spawn_objects(rng, self.cfg.split)
            self._settle(max_s=2.0)
            self.scene.remove_fallen()
            self._randomise_view(rng)
        else:
            self._reset_randomised(rng)
        self._obs, self._label = self._capture()
        info = {"instance_label": self._label.copy(), "n_objects": len(self.scene.objects)}
        return self._copy_obs(), info

    def step(self, action: dict[str, Any]):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        primitive, (u, v), angle, push_length = self._parse_action(action)
        label_before = self._label
        before = self.scene.poses()
        target, reason = self._target_from_pixel(u, v)
        executed = reason == ""
        grasp_success = None
        if executed:
            if primitive == "poke":
                reason = self._poke(target, angle, push_length)
            else:
                grasp_success, reason = self._grasp(target, angle)
            executed = reason == ""
            self.arm.park()
            self._settle(self.cfg.settle_max_s)
            self.scene.remove_fallen()
            self._obs, self._label = self._capture()
        after = self.scene.poses()
        displacement = self._displacement(before, after)
        moved = sorted(i for i, d in displacement.items() if d > self.cfg.moved_threshold)
        info = {
            "instance_label": self._label.copy(),
            "instance_label_before": label_before.copy(),
            "moved_ids": moved,
            "displacement": displacement,
            "grasp_success": grasp_success,
            "executed": executed,
            "reason": reason,
            "primitive": primitive,
            "target_world": target if target is not None else np.full(3, np.nan),
            "n_objects": len(self.scene.objects),
        }
        terminated = self.scene.count_in_workspace() < self.cfg.clutter.min_objects
        return self._copy_obs(), float(bool(moved)), terminated, False, info

    def render(self):
        if self.render_mode == "rgb_array" and self._obs is not None:
            return self._obs["rgb"].copy()
        return None

    def close(self):
        if self.client >= 0:
            try:
                pb.disconnect(physicsClientId=self.client)
            except pb.error:
                pass
            self.client = -1
        self.scene.close()

    # ------------------------------------------------------------------ helpers
    def _copy_obs(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._obs.items()}

    def _parse_action(self, action: dict[str, Any]):
        if not isinstance(action, dict):
            raise ValueError(f"action must be a dict with primitive/pixel/angle/push_length, got {type(action).__name__}")
        prim = action.get("primitive")
        if isinstance(prim, np.ndarray):
            prim = prim.item()
        if isinstance(prim, str):
            if prim not in PRIMITIVES:
                raise ValueError(f"unknown primitive {prim!r}; expected one of {PRIMITIVES}")
        elif isinstance(prim, int | np.integer) and 0 <= int(prim) < len(PRIMITIVES):
            prim = PRIMITIVES[int(prim)]
        else:
            raise ValueError(f"unknown primitive {prim!r}; expected 0/1 or one of {PRIMITIVES}")
        try:
            u, v = (float(x) for x in np.asarray(action["pixel"], dtype=float).reshape(2))
        except (KeyError, ValueError, TypeError):
            raise ValueError(f"action pixel must be two numbers (u, v), got {action.get('pixel')!r}") from None
        W, H = self.cfg.camera.width, self.cfg.camera.height
        if not (np.isfinite(u) and np.isfinite(v) and -0.5 <= u <= W - 0.5 and -0.5 <= v <= H - 0.5):
            raise ValueError(f"pixel ({u}, {v}) is outside the {W}x{H} image")
        angle = float(np.asarray(action.get("angle", 0.0), dtype=float).reshape(-1)[0])
        push = float(np.asarray(action.get("push_length", 0.1), dtype=float).reshape(-1)[0])
        if not np.isfinite(angle) or not np.isfinite(push) or not 0.0 <= push <= 0.3:
            raise ValueError(f"angle must be finite and push_length in [0, 0.3] m; got {angle}, {push}")
        return prim, (u, v), angle, push

    def _target_from_pixel(self, u: float, v: float) -> tuple[np.ndarray | None, str]:
        """Deproject a pixel with the latest observed depth into the world frame."""
        depth = self._obs["depth"]
        H, W = depth.shape
        iu, iv = int(round(np.clip(u, 0, W - 1))), int(round(np.clip(v, 0, H - 1)))
        z = float(depth[iv, iu])
        if not np.isfinite(z) or z <= 0:  # a dropped pixel: use the median of valid neighbours (2 px)
            patch = depth[max(iv - 2, 0) : iv + 3, max(iu - 2, 0) : iu + 3]
            valid = patch[np.isfinite(patch) & (patch > 0)]
            if valid.size < 3:
                return None, "no_depth"
            z = float(np.median(valid))
        p_cam = deproject((u, v), z, self._obs["K"])
        p_world = (self._obs["camera_pose"] @ np.append(p_cam, 1.0))[:3]
        if not self.scene.in_workspace(p_world, margin=0.08) or p_world[2] > 0.4:
            return p_world, "outside_workspace"
        return p_world, ""

    def _step_sim(self) -> None:
        t = time.perf_counter()
        pb.stepSimulation(physicsClientId=self.client)
        self.timing["physics_s"] += time.perf_counter() - t
        self.timing["physics_steps"] += 1

    def _settle(self, max_s: float) -> None:
        n = int(max_s / self.cfg.timestep)
        for i in range(n):
            self._step_sim()
            if i % 12 == 11 and self.scene.max_speed() < 0.01:
                self.scene.sleep()
                break

    def _local_top(self, xy: np.ndarray, radius: float = 0.05) -> float:
        """Highest observed surface (world z, metres) within `radius` of `xy`, from the latest depth.

        This is what a real robot knows (its own depth image), used to choose a safe approach height.
        """
        if self._obs_points is None:
            obs = self._obs
            z = obs["depth"]
            v, u = np.nonzero(z > 0)
            zz = z[v, u]
            K = obs["K"]
            pts = np.stack([(u - K[0, 2]) * zz / K[0, 0], (v - K[1, 2]) * zz / K[1, 1], zz], 1)
            self._obs_points = pts @ obs["camera_pose"][:3, :3].T + obs["camera_pose"][:3, 3]
        world = self._obs_points
        near = np.abs(world[:, 0] - xy[0]) < radius
        near &= np.abs(world[:, 1] - xy[1]) < radius
        return float(world[near, 2].max()) if near.any() else 0.0

    def _poke(self, target: np.ndarray, angle: float, length: float) -> str:
        """Push horizontally through `target` along `angle`: start `poke_clearance` before it, end `length` past it."""
        d = np.array([np.cos(angle), np.sin(angle), 0.0])
        lo, hi = self.cfg.poke_height
        z = float(np.clip(0.5 * target[2], lo, hi))
        start = np.array([*(target[:2] - d[:2] * self.cfg.poke_clearance), z])
        end = np.array([*(target[:2] + d[:2] * length), z])
        yaw = angle + np.pi / 2  # fingers closed, their broad side facing the push
        approach_z = max(self._local_top(start[:2], 0.04) + self.cfg.approach_clearance, z + 0.02)
        if not self.arm.place_tool([start[0], start[1], approach_z], yaw, 0.0):
            return "unreachable"
        self.arm.move_linear(start, yaw, 0.0, self._step_sim)
        self.arm.move_linear(end, yaw, 0.0, self._step_sim)
        self.arm.move_linear(end + [0, 0, 0.05], yaw, 0.0, self._step_sim, speed=0.8)
        return ""

    def _grasp(self, target: np.ndarray, yaw: float) -> tuple[bool, str]:
        """Top-down grasp at `target`; lift; place the held object at a free spot or in the bin."""
        open_w = self.cfg.arm.finger_open
        z = max(float(target[2]) - self.cfg.grasp_depth, 0.008)
        approach_z = max(self._local_top(target[:2], 0.05) + self.cfg.approach_clearance, z + 0.02)
        before = self.scene.poses()
        if not self.arm.place_tool([target[0], target[1], approach_z], yaw, open_w):
            return False, "unreachable"
        self.arm.move_linear([target[0], target[1], z], yaw, open_w, self._step_sim)
        self.arm.set_fingers(0.0, self._step_sim, n_steps=int(0.25 / self.cfg.timestep))
        self.arm.move_linear([target[0], target[1], z + self.cfg.lift_height], yaw, 0.0, self._step_sim)
        held = [
            o for o in self.scene.objects
            if self.scene.poses()[o.instance_id][0][2] - before[o.instance_id][0][2] > 0.05
            and self.arm.contacts_with(o.body)
        ]
        self.arm.teleport(self.arm.joints(), open_w)  # release
        for o in held:
            if self.cfg.place == "bin":
                self.scene.remove(o.instance_id)
                continue
            spot = self.scene.free_spot(self.np_random, avoid_xy=target[:2])
            lo, hi = pb.getAABB(o.body, physicsClientId=self.client)
            pos, orn = pb.getBasePositionAndOrientation(o.body, physicsClientId=self.client)
            new_z = pos[2] - lo[2] + 0.005
            pb.resetBasePositionAndOrientation(o.body, [spot[0], spot[1], new_z], orn, physicsClientId=self.client)
            pb.resetBaseVelocity(o.body, [0, 0, 0], [0, 0, 0], physicsClientId=self.client)
        self.scene.wake()  # teleports do not wake sleeping neighbours
        return bool(held), ""

    @staticmethod
    def _displacement(before, after) -> dict[int, float]:
        """instance id -> position change in metres (rotation > 0.2 rad counts as 1 cm; removed = inf)."""
        out = {}
        for iid, (p0, q0) in before.items():
            if iid not in after:
                out[iid] = float("inf")
                continue
            p1, q1 = after[iid]
            d = float(np.linalg.norm(p1 - p0))
            dot = min(abs(float(np.dot(q0, q1))), 1.0)
            if 2 * np.arccos(dot) > 0.2:
                d = max(d, 0.0101)
            out[iid] = d
        return out

    def _randomise_view(self, rng: np.random.Generator) -> None:
        cam = self.cfg.camera
        target = np.array(cam.target) + rng.uniform(-1, 1, 3) * np.array([cam.jitter_target, cam.jitter_target, 0])
        self._camera_pose = orbit_pose(
            target,
            cam.distance + rng.uniform(-1, 1) * cam.jitter_distance,
            cam.pitch_deg + rng.uniform(-1, 1) * cam.jitter_pitch_deg,
            cam.yaw_deg + rng.uniform(-1, 1) * cam.jitter_yaw_deg,
        )
        theta, phi = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.2)
        self._lighting = Lighting(
            direction=(np.cos(theta) * np.cos(phi), np.sin(theta) * np.cos(phi), np.sin(phi)),
            color=tuple(rng.uniform(0.85, 1.0, 3)),
            ambient=float(rng.uniform(0.45, 0.7)),
            diffuse=float(rng.uniform(0.3, 0.6)),
            specular=float(rng.uniform(0.0, 0.25)),
            shadow=cam.shadows,
        )
        self._noise_rng = np.random.default_rng(rng.integers(2**63))

    # ------------------------------------------------------------------ randomised domains
    def _reset_randomised(self, rng: np.random.Generator) -> None:
        """A wide / cross scene: table, arm, camera, room, objects, light and sensors, each group
        from its own stream (sim/randomization.py), so each knob is reproducible on its own."""
        st = streams(rng, self.cfg.domain)
        self._arm_removed = False
        dom, cam = self.cfg.randomization, self.cfg.camera
        scene = self.scene
        scene.begin_scene()
        scene.build_table_wide(st["table"], dom.table)
        self.arm.load()
        self.intrinsics = (sample_intrinsics(st["intrinsics"], dom.intrinsics, cam.width, cam.height)
                           if dom.intrinsics.enabled else self.base_intrinsics)
        self._camera_pose, park, cam_info = self._sample_camera(st["camera"])
        self.arm.park_joints = park
        self.arm.park()
        scene.build_room_wide(st["room"], dom.room, self._camera_pose[:3, 3], pedestal=not self._arm_removed)
        orng = st["objects"]
        lo, hi = self.cfg.clutter.n_objects[self.cfg.clutter.level]
        n = int(orng.integers(lo, hi + 1))
        if dom.objects.enabled:
            sampler = sample_cross_specs if self.cfg.domain == "cross" else sample_wide_specs
            specs = sampler(orng, self.cfg.split, n, dom.objects)
            n_extra = int(orng.integers(dom.objects.off_workspace[0], dom.objects.off_workspace[1] + 1))
            extra = sampler(orng, self.cfg.split, n_extra, dom.objects) if n_extra else []
            deferred = scene.spawn_objects_wide(orng, specs, extra, dom.objects)
            if deferred:
                self._settle(max_s=1.0)
                scene.spawn_deferred(orng, deferred)
        else:
            scene.spawn_objects(orng, self.cfg.split)
        self._settle(max_s=2.0)
        scene.remove_fallen()
        lrng = st["light"]
        if dom.light.enabled:
            self._lighting = sample_lighting(lrng, dom.light, cam.shadows)
        else:
            self._lighting = self._narrow_lighting(lrng)
        self._depth_sensor = sample_depth_sensor(st["depth"], dom.depth, self.intrinsics) if dom.depth.enabled else None
        self._rgb_sensor = sample_rgb_sensor(st["rgb"], dom.rgb, cam.width / 640.0) if dom.rgb.enabled else None
        self._noise_rng = st["noise"]  # per-capture depth noise
        self._rgb_noise_rng = st["rgb_noise"]  # per-capture colour noise (its own stream: the knobs stay separable)
        room = scene.room
        self.scene_info = {
            "domain": self.cfg.domain, "camera": cam_info, "park_pose": list(park),
            "intrinsics": [self.intrinsics.fx, self.intrinsics.fy, self.intrinsics.cx, self.intrinsics.cy],
            "table": {"shape": scene.top.shape, "center_xy": list(scene.top.center_xy), "half_xy": list(scene.top.half_xy),
                      "height": scene.top.height},
            "furniture": list(room.furniture) if room else [], "n_room_bodies": len(room.bodies) if room else 0,
            "objects": [o.spec.family or o.spec.kind for o in scene.objects],
            "depth_model": self._depth_sensor.model if self._depth_sensor else "narrow",
            "depth_band": self._depth_sensor.band_side if self._depth_sensor else "",
        }

    def _reconnect(self) -> None:
        """Replace the pybullet server by a fresh one (frees what Bullet keeps across resetSimulation)."""
        try:
            pb.disconnect(physicsClientId=self.client)
        except pb.error:
            pass
        self.client = pb.connect(pb.DIRECT)
        self.scene.client = self.client
        self.arm.client = self.client

    def _narrow_lighting(self, rng: np.random.Generator) -> Lighting:
        theta, phi = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.2)
        return Lighting(
            direction=(np.cos(theta) * np.cos(phi), np.sin(theta) * np.cos(phi), np.sin(phi)),
            color=tuple(rng.uniform(0.85, 1.0, 3)), ambient=float(rng.uniform(0.45, 0.7)),
            diffuse=float(rng.uniform(0.3, 0.6)), specular=float(rng.uniform(0.0, 0.25)), shadow=self.cfg.camera.shadows,
        )

    def _arm_hidden(self, pose: np.ndarray, intr: Intrinsics) -> bool:
        """True if no box around a link of the (parked) arm reaches into the view: a conservative test,
        so the per-capture check in `_capture` cannot fail afterwards."""
        return not any(box_in_frustum(lo - 0.01, hi + 0.01, pose, intr) for lo, hi in self.arm.link_aabbs())

    def _sample_camera(self, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, ...], dict]:
        """An eye-to-hand camera pose with a parking pose of the arm that it does not see. Poses that
        see the arm in every parking pose are redrawn (a real camera is not mounted looking through the
        robot); after `max_tries` the narrow nominal pose is used."""
        r, cam = self.cfg.randomization.camera, self.cfg.camera
        if not r.enabled:
            target = np.array(cam.target) + rng.uniform(-1, 1, 3) * np.array([cam.jitter_target, cam.jitter_target, 0])
            pose = orbit_pose(target, cam.distance + rng.uniform(-1, 1) * cam.jitter_distance,
                              cam.pitch_deg + rng.uniform(-1, 1) * cam.jitter_pitch_deg,
                              cam.yaw_deg + rng.uniform(-1, 1) * cam.jitter_yaw_deg)
            return pose, tuple(self.cfg.arm.park_joints), {"narrow": True}
        ws = self.cfg.table.workspace_center_xy
        self.arm.teleport(PARK_POSES[0], self.cfg.arm.finger_open)
        keep_out = [(lo - r.arm_clearance, hi + r.arm_clearance) for lo, hi in self.arm.link_aabbs()]
        for attempt in range(r.max_tries):
            pose, info = sample_camera(rng, r, ws)
            eye = pose[:3, 3]
            if any(np.all(eye > lo) and np.all(eye < hi) for lo, hi in keep_out):
                continue  # the camera would sit inside the robot
            for park in PARK_POSES:
                self.arm.teleport(park, self.cfg.arm.finger_open)
                if self._arm_hidden(pose, self.intrinsics):
                    return pose, park, {**info, "attempts": attempt + 1, "arm": "parked"}
            if r.arm_out_of_view == "park_or_remove":
                self._arm_removed = True
                return pose, PARK_POSES[0], {**info, "attempts": attempt + 1, "arm": "removed"}
        pose = orbit_pose(np.array(cam.target), cam.distance, cam.pitch_deg, cam.yaw_deg)
        return pose, tuple(self.cfg.arm.park_joints), {"fallback": True, "arm": "parked"}

    def _capture(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Render the current world (arm parked) into a noisy observation and its GT instance labels."""
        intr = self.intrinsics
        t = time.perf_counter()
        if self.cfg.domain == "narrow":
            rgb, depth, seg = render_rgbd(self.client, intr, self._camera_pose, self._lighting)
        elif self._arm_removed:  # out of the scene for the render only (see CameraRanges.arm_out_of_view)
            c = self.client
            base = pb.getBasePositionAndOrientation(self.arm.body, physicsClientId=c)
            pb.resetBasePositionAndOrientation(self.arm.body, [0.0, 0.0, -100.0], base[1], physicsClientId=c)
            try:
                rgb, depth, seg = render_rgbd(c, intr, self._camera_pose, self._lighting, far=self.cfg.far_plane)
            finally:
                pb.resetBasePositionAndOrientation(self.arm.body, base[0], base[1], physicsClientId=c)
        else:
            rgb, depth, seg = render_rgbd(self.client, intr, self._camera_pose, self._lighting, far=self.cfg.far_plane)
        self.timing["render_s"] += time.perf_counter() - t
        self.timing["renders"] += 1
        if (seg == self.arm.body).any():
            raise RuntimeError("the parked arm is visible in the capture; adjust arm.park_joints or the camera")
        lut = np.zeros(max(seg.max(), 0) + 2, np.int32)  # body id -> instance id; index -1 -> 0
        for body, iid in self.scene.body_to_instance().items():
            if body < len(lut) - 1:
                lut[body] = iid
        label = lut[seg]
        self.last_segmentation = seg  # pybullet body id per pixel of the latest capture (-1 = nothing); ground truth
        noise = self._noise_rng
        if self._depth_sensor is not None:  # randomised domains: a real sensor's artefacts
            objs = self.scene.shiny_bodies - {self.scene.table_body}
            shiny = np.isin(seg, list(objs)) if objs else np.zeros(seg.shape, bool)
            glossy = seg == self.scene.table_body if self.scene.table_body in self.scene.shiny_bodies else None
            depth = self._depth_sensor.apply(depth, rgb, shiny, noise, glossy)
        rgb_noise = noise if self.cfg.domain == "narrow" else self._rgb_noise_rng
        if self._rgb_sensor is not None:
            rgb = self._rgb_sensor.apply(rgb, seg < 0, rgb_noise)
        elif self.cfg.camera.rgb_noise_std > 0:
            rgb = np.clip(rgb + rgb_noise.normal(0, self.cfg.camera.rgb_noise_std, rgb.shape), 0, 255).astype(np.uint8)
        if self._depth_sensor is None:
            depth = self.cfg.camera.noise.apply(depth, noise)
        obs = {"rgb": rgb, "depth": depth, "K": intr.K.copy(), "camera_pose": self._camera_pose.copy()}
        self._obs_points = None
        return obs, label
