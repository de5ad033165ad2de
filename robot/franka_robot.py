"""`FrankaRobot`: the `Robot` interface on a Franka Panda (franky-control) with a RealSense camera.

Frames and units (as in robot.base): the robot base frame is the world frame (x forward, z up,
metres; the table top is the plane z = 0, i.e. the Panda stands on the table); angles in radians;
forces in newtons, torques in newton-metres; speeds in m/s. Camera frames come from
`robot.camera.Camera` (depth aligned to colour, float32 metres) and carry the calibrated pose
base_from_camera (`robot.calibration`, written by `python -m robot.calibrate`).

An action pixel is deprojected with the latest frame's depth, K and camera pose into a 3D target in
the base frame (a dropped depth pixel falls back to the median of its valid 5x5 neighbours). The
primitives follow the sim twin (sim/env.py):
- poke(angle, push_length): close the fingers, approach above a pre-contact point `poke_clearance`
  behind the target (opposite to the push direction), descend to the push height (half the target
  height, clipped to `poke_height`), push horizontally `push_length` past the target, retreat up,
  home. The fingers' broad side faces the push (hand yaw = push angle + 90 degrees).
- grasp(yaw): open, approach above the target, descend to `grasp_depth` below the observed surface,
  close (franky Gripper.grasp), lift `lift_height`, read the finger width: wider than
  `grasp_min_width` = holding something; put it back down, release, retreat, home. `yaw` is the
  direction along which the fingers close (0 = along the base x axis), as in sim.

Safety:
- every Cartesian waypoint of a primitive must lie in the workspace box (`workspace_min/max`); the
  whole plan is checked before any motion, and a target outside is refused
  (`Outcome(executed=False, reason="outside_workspace")`); so is a pixel without depth ("no_depth");
- free-space motions run at `dynamics_factor`, contact motions (descend, push) at
  `contact_dynamics_factor` (franky relative dynamics factors, velocity/acceleration/jerk scaled);
  `max_translation_speed` caps the Cartesian speed; the robot's collision reflexes are set from
  `collision_torque_threshold` / `collision_force_threshold`;
- descents and pushes carry a franky reaction: when the estimated external force exceeds
  `max_contact_force` the motion is replaced by a stop motion, the push ends there and the arm
  retreats (Outcome.info["contact_stop"] = True);
- every motion is wrapped: a franky `ControlException` (a reflex, a rejected motion) leads to
  `recover_from_errors()`, a slow vertical retreat, and `Outcome(executed=False,
  reason="control_exception")`; the loop goes on and the next observation homes the arm first.
  franky's motion planner (Ruckig) can also fail mid-motion ("Motion planner failed with error code
  -111"); franky raises that as a plain RuntimeError, and it is handled the same way with
  reason="motion_planner_failed";
- `dry_run=True` (the default) never connects to the arm: every planned motion is logged and the
  outcome is `executed=False, reason="dry_run"`; `confirm=True` asks the operator before the first
  motion of a session.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot.base import Action, Outcome, Primitive, RGBDFrame, Robot
from robot.camera import Camera

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SETUP_HINT = "run `bash scripts/setup.sh franka` (installs franky-control, pyrealsense2 and franky-sim)"


@dataclass
class FrankaConfig:
    """Options of the real cell. Robot base frame, metres, radians, newtons, seconds (see module doc)."""

    ip: str = "172.16.0.2"  # robot (FCI) address; franky-sim prints its loopback address
    dry_run: bool = True  # log planned motions, never connect to or move the arm
    confirm: bool = True  # ask the operator before the first motion
    calibration: str = "configs/robot/franka_calibration.yaml"  # eye-to-hand extrinsics (robot.calibration)
    realtime: bool = True  # franky RealtimeConfig.Enforce; false = Ignore (no RT kernel, franky-sim)
    # camera
    camera: str = "realsense"  # realsense | software (a pyrealsense2 software device with a synthetic table)
    camera_serial: str = ""  # "" = first RealSense found
    width: int = 640  # colour resolution = frame size (multiples of 16)
    height: int = 480
    fps: int = 30
    camera_timeout_s: float = 2.0
    camera_warmup_frames: int = 15
    # speed and force limits
    dynamics_factor: float = 0.1  # relative dynamics (0, 1] of free-space motions
    contact_dynamics_factor: float = 0.05  # relative dynamics of descents, pushes and retreats
    max_translation_speed: float = 0.25  # m/s, franky's Cartesian translation velocity limit
    max_contact_force: float = 15.0  # N: a descent/push stops when the external force exceeds this
    collision_torque_threshold: float = 25.0  # Nm: robot reflex (libfranka collision behaviour)
    collision_force_threshold: float = 40.0  # N: robot reflex; must exceed max_contact_force
    # geometry
    workspace_min: list[float] = field(default_factory=lambda: [0.30, -0.30, 0.005])  # x, y, z
    workspace_max: list[float] = field(default_factory=lambda: [0.75, 0.30, 0.35])
    table_xy: list[float] = field(default_factory=lambda: [0.20, 0.90, -0.45, 0.45])  # x_min x_max y_min y_max
    home_joints: list[float] = field(default_factory=lambda: [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
    approach_clearance: float = 0.05  # approach this far above the highest observed point near the target
    poke_clearance: float = 0.05  # the push starts this far before the target
    poke_height: list[float] = field(default_factory=lambda: [0.012, 0.04])  # min/max push height above the table
    max_push_length: float = 0.15
    retreat_height: float = 0.08  # vertical retreat after a push, a contact stop or an error
    grasp_depth: float = 0.02  # fingertips this far below the observed surface
    lift_height: float = 0.10
    gripper_speed: float = 0.05  # m/s
    grasp_force: float = 20.0  # N
    gripper_open_width: float = 0.08
    grasp_min_width: float = 0.004  # finger width after lifting above which the grasp holds something

    def validate(self) -> None:
        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise ValueError(f"robot.{key}: {msg}")

        need(self.camera in ("realsense", "software"), "camera", f"must be realsense or software, got {self.camera!r}")
        for key in ("dynamics_factor", "contact_dynamics_factor"):
            need(0 < getattr(self, key) <= 1, key, f"must be in (0, 1], got {getattr(self, key)}")
        for key in ("max_translation_speed", "max_contact_force", "collision_torque_threshold",
                    "collision_force_threshold", "gripper_speed", "grasp_force", "camera_timeout_s"):
            need(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        need(self.max_contact_force < self.collision_force_threshold, "max_contact_force",
             f"must be below collision_force_threshold ({self.collision_force_threshold} N) so that a push stops "
             "before the robot's reflex triggers")
        need(len(self.workspace_min) == 3 and len(self.workspace_max) == 3, "workspace_min/max", "need 3 values (x, y, z)")
        need(all(a < b for a, b in zip(self.workspace_min, self.workspace_max, strict=True)), "workspace_min/max",
             f"min {self.workspace_min} must be below max {self.workspace_max} on every axis")
        need(self.workspace_min[2] > 0, "workspace_min", "z must be above the table (> 0)")
        need(len(self.table_xy) == 4 and self.table_xy[0] < self.table_xy[1] and self.table_xy[2] < self.table_xy[3],
             "table_xy", f"must be [x_min, x_max, y_min, y_max], got {self.table_xy}")
        need(len(self.home_joints) == 7, "home_joints", f"need 7 joint angles, got {len(self.home_joints)}")
        need(len(self.poke_height) == 2 and 0 < self.poke_height[0] <= self.poke_height[1], "poke_height",
             f"must be [min, max] with 0 < min <= max, got {self.poke_height}")
        need(0 < self.max_push_length <= 0.3, "max_push_length", f"must be in (0, 0.3] m, got {self.max_push_length}")
        need(0 < self.grasp_min_width < self.gripper_open_width <= 0.08, "grasp_min_width/gripper_open_width",
             "need 0 < grasp_min_width < gripper_open_width <= 0.08 m")
        need(self.width % 16 == 0 and self.height % 16 == 0, "width/height", "must be multiples of 16 (network strides)")


@dataclass
class Step:
    """One planned motion. pose: (4,4) target in the base frame (Cartesian steps)."""

    name: str
    kind: str  # cartesian | retreat | home | gripper_move | gripper_grasp | check_hold
    pose: np.ndarray | None = None
    dynamics: float = 1.0
    guarded: bool = False  # carries the contact-force reaction
    width: float = 0.0
    on_contact: str = "retreat"  # after a contact stop: "retreat" (skip to the retreat step) or "continue"

    def describe(self) -> str:
        if self.pose is not None:
            x, y, z = self.pose[:3, 3]
            yaw = math.degrees(math.atan2(self.pose[1, 0], self.pose[0, 0]))
            guard = ", force-guarded" if self.guarded else ""
            return f"{self.name}: {self.kind} to ({x:.3f}, {y:.3f}, {z:.3f}) m, hand yaw {yaw:.0f} deg, dynamics {self.dynamics:g}{guard}"
        if self.kind == "gripper_move":
            return f"{self.name}: gripper to {1000 * self.width:.0f} mm"
        return f"{self.name}: {self.kind}"


def tool_pose(xyz: np.ndarray, finger_yaw: float) -> np.ndarray:
    """Top-down hand pose at `xyz` whose fingers close along `finger_yaw` (rad about base z).

    The Panda hand's fingers move along its y axis; R = Rz(finger_yaw + pi/2) Rx(pi) points the hand
    down and turns the finger axis to (cos yaw, sin yaw, 0). The hand is symmetric under a half turn,
    so the yaw is folded into (-pi/2, pi/2] around the home orientation to spare the wrist joint.
    """
    theta = (finger_yaw + math.pi / 2 + math.pi / 2) % math.pi - math.pi / 2
    c, s = math.cos(theta), math.sin(theta)
    T = np.eye(4)
    T[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.0, -1.0, -1.0])
    T[:3, 3] = xyz
    return T


def _rot_error_deg(A: np.ndarray, B: np.ndarray) -> float:
    R = A[:3, :3].T @ B[:3, :3]
    return math.degrees(math.acos(float(np.clip((np.trace(R) - 1) / 2, -1, 1))))


class FrankaRobot(Robot):
    """A Panda through franky-control plus a calibrated RealSense (or a software camera)."""

    kind = "franka"

    def __init__(self, cfg: FrankaConfig | None = None, camera: Camera | None = None,
                 prompt: Callable[[str], str] | None = None):
        self.cfg = cfg or FrankaConfig()
        self.cfg.validate()
        self.camera = camera
        self._own_camera = camera is None
        self._software = None  # SoftwareRealSense feeding a software camera
        self._prompt = prompt
        self.calibration = None
        self._franky = None
        self._robot = None
        self._gripper = None
        self._frame: RGBDFrame | None = None
        self._frame_points: np.ndarray | None = None
        self._connected = False
        self._confirmed = not self.cfg.confirm
        self._parked = False
        self.recoveries = 0  # ControlExceptions recovered from in this session

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        if self._connected:
            return
        from robot.calibration import Calibration

        c = self.cfg
        self.calibration = Calibration.load(self._resolve(c.calibration))
        if self.calibration.placeholder:
            if c.camera == "realsense" and not c.dry_run:
                raise ValueError(
                    f"{c.calibration} is the placeholder calibration; the arm would aim at wrong places. Run "
                    "`python -m robot.calibrate` (docs/franka.md) and point robot.calibration at the result, "
                    "or use robot.dry_run=true"
                )
            log.warning("using the PLACEHOLDER calibration %s (fine for dry runs and the software camera only)",
                        c.calibration)
        try:
            if self.camera is None:
                self.camera = self._make_camera()
            self.camera.camera_pose = self.calibration.base_from_camera.copy()
            self.camera.connect()
            if not c.dry_run:
                self._connect_arm()
        except BaseException:
            self.disconnect()
            raise
        self._connected = True
        self._parked = False
        log.info("franka cell connected (%s, camera %s)", "DRY RUN, arm not connected" if c.dry_run else c.ip, c.camera)

    def disconnect(self) -> None:
        if self.camera is not None:
            self.camera.disconnect()
            if self._own_camera:
                self.camera = None
        if self._software is not None:
            self._software.stop()
            self._software = None
        self._gripper = None
        self._robot = None  # franky closes the connection when the object goes
        self._connected = False

    def _connect_arm(self) -> None:
        try:
            import franky
        except ImportError as e:
            raise ImportError(f"robot=franka needs franky-control: {SETUP_HINT}") from e
        c = self.cfg
        self._franky = franky
        rt = franky.RealtimeConfig.Enforce if c.realtime else franky.RealtimeConfig.Ignore
        try:
            robot = franky.Robot(c.ip, relative_dynamics_factor=c.dynamics_factor, realtime_config=rt)
        except franky.RealtimeException as e:
            raise ConnectionError(f"franky needs a realtime kernel ({e}); robot.realtime=false is for franky-sim "
                                  "and tests only") from e
        except (franky.NetworkException, franky.IncompatibleVersionException) as e:
            raise ConnectionError(f"cannot connect to the Panda at {c.ip}: {e}. Is FCI active in Desk, are the "
                                  "brakes open, and is robot.ip right?") from e
        robot.set_collision_behavior(c.collision_torque_threshold, c.collision_force_threshold)
        robot.translation_velocity_limit.set(min(c.max_translation_speed, robot.translation_velocity_limit.max))
        if robot.has_errors:
            log.warning("the robot reports errors at connect; running automatic error recovery")
            robot.recover_from_errors()
        self._robot = robot
        self._gripper = franky.Gripper(c.ip)

    def _make_camera(self) -> Camera:
        from robot.realsense_camera import RealSenseCamera, RealSenseConfig

        c = self.cfg
        rs_cfg = RealSenseConfig(serial=c.camera_serial, width=c.width, height=c.height, fps=c.fps,
                                 warmup_frames=c.camera_warmup_frames, timeout_s=c.camera_timeout_s)
        try:
            import pyrealsense2  # noqa: F401
        except ImportError as e:
            raise ImportError(f"robot=franka needs pyrealsense2 (and Debian's libusb-1.0-0): {SETUP_HINT}") from e
        if c.camera == "realsense":
            return RealSenseCamera(rs_cfg, self.calibration.base_from_camera)
        from robot.software_camera import SoftwareRealSense, d435_like_K, render_table_scene

        K = d435_like_K(c.width, c.height)
        rgb, depth = render_table_scene(K, c.width, c.height, self.calibration.base_from_camera)
        self._software = SoftwareRealSense(c.width, c.height, K, c.fps)
        self._software.set_frames(rgb, depth)
        self._software.start()
        rs_cfg.warmup_frames = min(rs_cfg.warmup_frames, 2)
        return RealSenseCamera(rs_cfg, self.calibration.base_from_camera, device=self._software.device)

    @staticmethod
    def _resolve(path: str) -> Path:
        p = Path(path)
        if not p.is_absolute() and not p.exists() and (PROJECT_ROOT / p).exists():
            return PROJECT_ROOT / p
        return p

    @property
    def table_bounds(self) -> tuple[tuple[float, float], tuple[float, float]]:
        x0, x1, y0, y1 = self.cfg.table_xy
        return ((x0, x1), (y0, y1))

    # ------------------------------------------------------------------ Robot API
    def home(self) -> None:
        """Joint motion to `home_joints`. A ControlException is recovered from (recover_from_errors, retreat)
        and homing retried once; a second failure raises RuntimeError (the cell needs an operator)."""
        self._require()
        if self.cfg.dry_run:
            log.info("DRY RUN: home (joints %s)", self.cfg.home_joints)
            return
        self._confirm_first_motion()
        for attempt in range(2):
            try:
                self._run_step(Step("home", "home", dynamics=self.cfg.dynamics_factor), {})
                self._parked = True
                return
            except (self._franky.ControlException, RuntimeError) as e:
                if isinstance(e, RuntimeError) and not self._planner_failure(e):
                    raise
                self._recover(e, "home")
                if attempt == 1:
                    raise RuntimeError(f"the arm cannot reach its home pose ({e}); check the cell, then restart") from e

    def get_observation(self) -> RGBDFrame:
        self._require()
        if not self.cfg.dry_run and not self._parked:
            self.home()
        self._frame = self.camera.read()
        self._frame_points = None
        return self._frame

    def send_action(self, action: Action) -> Outcome:
        self._require()
        if self._frame is None:
            raise RuntimeError("call get_observation() before send_action()")
        t0 = time.perf_counter()
        prim = Primitive.parse(action.primitive)
        u, v = (float(x) for x in np.asarray(action.pixel, dtype=float).reshape(2))
        H, W = self._frame.depth.shape
        if not (np.isfinite(u) and np.isfinite(v) and -0.5 <= u <= W - 0.5 and -0.5 <= v <= H - 0.5):
            raise ValueError(f"pixel ({u}, {v}) is outside the {W}x{H} image")
        angle, push = float(action.angle), float(action.push_length)
        if not (np.isfinite(angle) and np.isfinite(push)) or push < 0:
            raise ValueError(f"angle must be finite and push_length >= 0 m; got {angle}, {push}")

        target, reason = self.deproject(u, v)
        if reason:
            return Outcome(False, reason, duration_s=time.perf_counter() - t0)
        if prim == Primitive.POKE and push > self.cfg.max_push_length:
            return Outcome(False, "push_too_long", target_robot=target, duration_s=time.perf_counter() - t0,
                           info={"limit_m": self.cfg.max_push_length})
        steps = self.plan_poke(target, angle, push) if prim == Primitive.POKE else self.plan_grasp(target, angle)
        violations = self.workspace_violations(target, steps)
        if violations:
            log.warning("%s at (%.3f, %.3f, %.3f) refused before any motion: %s", prim.value, *target, "; ".join(violations))
            return Outcome(False, "outside_workspace", target_robot=target, duration_s=time.perf_counter() - t0,
                           info={"violations": violations})
        plan = [s.describe() for s in steps]
        if self.cfg.dry_run:
            log.info("DRY RUN %s at (%.3f, %.3f, %.3f): %s", prim.value, *target, " | ".join(plan))
            return Outcome(False, "dry_run", target_robot=target, duration_s=time.perf_counter() - t0,
                           info={"plan": plan})
        self._confirm_first_motion()
        state: dict[str, Any] = {"trace": [], "contact_stop": False, "grasp_success": None}
        self._parked = False
        try:
            self._execute(steps, state)
        except (self._franky.ControlException, RuntimeError) as e:
            if isinstance(e, RuntimeError) and not self._planner_failure(e):
                raise
            reason = "control_exception" if isinstance(e, self._franky.ControlException) else "motion_planner_failed"
            return self._failed_interaction(reason, e, state, target, t0, plan)
        except (self._franky.CommandException, self._franky.GripperException) as e:
            log.error("%s failed at %s: %s", prim.value, state.get("step", "?"), e)
            return self._failed_interaction("command_exception", e, state, target, t0, plan)
        return Outcome(True, "", target_robot=target,
                       grasp_success=state["grasp_success"] if prim == Primitive.GRASP else None,
                       duration_s=time.perf_counter() - t0,
                       info={"motions": state["trace"], "contact_stop": state["contact_stop"], "plan": plan})

    # ------------------------------------------------------------------ geometry and planning
    def deproject(self, u: float, v: float) -> tuple[np.ndarray, str]:
        """3D point (base frame, metres) under pixel (u, v) of the latest frame, and "" or "no_depth"."""
        f = self._frame
        H, W = f.depth.shape
        iu, iv = int(round(np.clip(u, 0, W - 1))), int(round(np.clip(v, 0, H - 1)))
        z = float(f.depth[iv, iu])
        if not np.isfinite(z) or z <= 0:
            patch = f.depth[max(iv - 2, 0): iv + 3, max(iu - 2, 0): iu + 3]
            valid = patch[np.isfinite(patch) & (patch > 0)]
            if valid.size < 3:
                return np.full(3, np.nan), "no_depth"
            z = float(np.median(valid))
        K = f.K
        p_cam = np.array([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z, 1.0])
        return (f.camera_pose @ p_cam)[:3], ""

    def _local_top(self, xy: np.ndarray, radius: float) -> float:
        """Highest observed surface (base z, metres) within `radius` of `xy` in the latest frame (0 = table)."""
        if self._frame_points is None:
            from data.geometry import world_points

            f = self._frame
            pts = world_points(f.depth, f.K, f.camera_pose).reshape(-1, 3)
            self._frame_points = pts[np.isfinite(pts[:, 2])]
        p = self._frame_points
        near = (np.abs(p[:, 0] - xy[0]) < radius) & (np.abs(p[:, 1] - xy[1]) < radius)
        return max(float(p[near, 2].max()), 0.0) if near.any() else 0.0

    def plan_poke(self, target: np.ndarray, angle: float, length: float) -> list[Step]:
        c = self.cfg
        d = np.array([math.cos(angle), math.sin(angle)])
        z = float(np.clip(0.5 * target[2], *c.poke_height))
        start = np.array([*(target[:2] - d * c.poke_clearance), z])
        end = np.array([*(target[:2] + d * length), z])
        approach_z = max(self._local_top(start[:2], 0.04) + c.approach_clearance, z + 0.02)
        yaw = angle + math.pi / 2  # fingers closed, broad side facing the push
        return [
            Step("close_fingers", "gripper_move", width=0.0),
            Step("approach", "cartesian", tool_pose([start[0], start[1], approach_z], yaw), c.dynamics_factor),
            Step("descend", "cartesian", tool_pose(start, yaw), c.contact_dynamics_factor, guarded=True),
            Step("push", "cartesian", tool_pose(end, yaw), c.contact_dynamics_factor, guarded=True),
            Step("retreat", "retreat", tool_pose([end[0], end[1], z + c.retreat_height], yaw), c.contact_dynamics_factor),
            Step("home", "home", dynamics=c.dynamics_factor),
        ]

    def plan_grasp(self, target: np.ndarray, yaw: float) -> list[Step]:
        c = self.cfg
        z = max(float(target[2]) - c.grasp_depth, c.workspace_min[2])
        approach_z = max(self._local_top(target[:2], 0.05) + c.approach_clearance, z + 0.02)
        x, y = float(target[0]), float(target[1])
        return [
            Step("open", "gripper_move", width=c.gripper_open_width),
            Step("approach", "cartesian", tool_pose([x, y, approach_z], yaw), c.dynamics_factor),
            Step("descend", "cartesian", tool_pose([x, y, z], yaw), c.contact_dynamics_factor, guarded=True,
                 on_contact="continue"),  # touching the object or the table: close the fingers there
            Step("close", "gripper_grasp"),
            Step("lift", "cartesian", tool_pose([x, y, z + c.lift_height], yaw), c.contact_dynamics_factor),
            Step("check_hold", "check_hold"),
            Step("place", "cartesian", tool_pose([x, y, z + 0.01], yaw), c.contact_dynamics_factor, guarded=True,
                 on_contact="continue"),  # put down where it touches
            Step("release", "gripper_move", width=c.gripper_open_width),
            Step("retreat", "retreat", tool_pose([x, y, approach_z], yaw), c.contact_dynamics_factor),
            Step("home", "home", dynamics=c.dynamics_factor),
        ]

    def workspace_violations(self, target: np.ndarray, steps: list[Step]) -> list[str]:
        """Every waypoint (and the target's x-y) outside the workspace box, as messages."""
        lo, hi = np.array(self.cfg.workspace_min), np.array(self.cfg.workspace_max)
        out = []
        if not (np.all(target[:2] >= lo[:2]) and np.all(target[:2] <= hi[:2])):
            out.append(f"target x-y ({target[0]:.3f}, {target[1]:.3f}) outside x {lo[0]}..{hi[0]}, y {lo[1]}..{hi[1]}")
        for s in steps:
            if s.pose is None:
                continue
            p = s.pose[:3, 3]
            if not (np.all(p >= lo - 1e-9) and np.all(p <= hi + 1e-9)):
                out.append(f"{s.name} waypoint ({p[0]:.3f}, {p[1]:.3f}, {p[2]:.3f}) outside the box {lo.tolist()}..{hi.tolist()}")
        return out

    # ------------------------------------------------------------------ execution
    def _execute(self, steps: list[Step], state: dict[str, Any]) -> None:
        i = 0
        while i < len(steps):
            step = steps[i]
            state["step"] = step.name
            stopped = self._run_step(step, state)
            state["contact_stop"] |= stopped
            if stopped and step.on_contact == "retreat":
                log.warning("%s stopped by the contact-force reaction; retreating", step.name)
                i = next((j for j in range(i + 1, len(steps)) if steps[j].kind == "retreat"), i + 1)
                continue
            i += 1
        self._parked = True

    def _run_step(self, step: Step, state: dict[str, Any]) -> bool:
        """Execute one step on the arm/gripper; True if a contact reaction stopped it."""
        franky, c = self._franky, self.cfg
        log.info("move %s", step.describe())
        if step.kind == "home":
            self._robot.move(franky.JointMotion(list(c.home_joints), relative_dynamics_factor=step.dynamics))
            self._wait_settled()  # the next capture must not see a swaying arm
            return False
        if step.kind == "gripper_move":
            if not self._gripper.move(step.width, c.gripper_speed):
                log.warning("gripper did not reach %.0f mm", 1000 * step.width)
            return False
        if step.kind == "gripper_grasp":
            self._gripper.grasp(0.0, c.gripper_speed, c.grasp_force, epsilon_inner=0.005, epsilon_outer=c.gripper_open_width)
            return False
        if step.kind == "check_hold":
            width = float(self._gripper.width)
            state["grasp_success"] = width > c.grasp_min_width
            state["finger_width_m"] = width
            log.info("finger width after lift %.1f mm -> %s", 1000 * width,
                     "holding" if state["grasp_success"] else "empty")
            return False
        target = step.pose
        if step.kind == "retreat":  # straight up from wherever the hand is (or stopped)
            current = self.desired_pose()
            target = current.copy()
            target[2, 3] = max(current[2, 3], step.pose[2, 3])
        motion = franky.CartesianMotion(franky.Affine(target), franky.ReferenceType.Absolute,
                                        relative_dynamics_factor=step.dynamics)
        fired: list[float] = []
        if step.guarded:
            m = franky.Measure
            force = (m.FORCE_X ** 2 + m.FORCE_Y ** 2 + m.FORCE_Z ** 2) ** 0.5
            reaction = franky.Reaction(force > c.max_contact_force, franky.CartesianStopMotion())
            reaction.register_callback(lambda robot_state, rel_time, abs_time: fired.append(
                float(np.linalg.norm(np.asarray(robot_state.O_F_ext_hat_K)[:3]))))
            motion.add_reaction(reaction)
        self._robot.move(motion)
        self._wait_settled()
        reached = self.measured_pose()
        err_mm = 1000.0 * float(np.linalg.norm(reached[:3, 3] - target[:3, 3]))
        state.setdefault("trace", []).append({
            "step": step.name, "target": target[:3, 3].tolist(), "reached": reached[:3, 3].tolist(),
            "error_mm": err_mm, "rot_error_deg": _rot_error_deg(target, reached), "contact_stop": bool(fired),
        })
        if fired:
            log.warning("%s: contact force %.1f N > %.1f N, motion stopped %.1f mm short", step.name, fired[0],
                        c.max_contact_force, err_mm)
        return bool(fired)

    def measured_pose(self) -> np.ndarray:
        """(4,4) end-effector pose in the base frame from the measured joint angles (franky's kinematic model).

        Computed from `RobotState.q` rather than read from `O_T_EE`, which franky-sim fills with the
        desired pose; on a real Panda both agree.
        """
        s = self._robot.state
        pose = self._robot.model.pose(self._franky.Frame.EndEffector, s.q, s.F_T_EE, s.EE_T_K)
        return np.asarray(pose.matrix, float)

    def desired_pose(self) -> np.ndarray:
        """(4,4) last desired end-effector pose of franky's motion generator (where the hand is meant to be;
        after a contact stop, where it stopped), base frame."""
        return np.asarray(self._robot.state.O_T_EE_d.matrix, float)

    def _wait_settled(self, tol_m: float = 0.001, timeout_s: float = 1.5) -> None:
        """Wait until the measured hand position is within `tol_m` of the desired one (at most `timeout_s`).

        A franky motion returns when its trajectory ends; the arm follows (on franky-sim a few hundred
        milliseconds later, on a Panda almost at once). Captures and pose readings should see it at rest.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            err = float(np.linalg.norm(self.measured_pose()[:3, 3] - self.desired_pose()[:3, 3]))
            if err < tol_m:
                return
            if time.monotonic() > deadline:
                log.debug("hand still %.1f mm from its desired pose %.1f s after the motion", 1000 * err, timeout_s)
                return
            time.sleep(0.02)

    def _failed_interaction(self, reason: str, error: Exception, state: dict[str, Any], target: np.ndarray, t0: float,
                            plan: list[str]) -> Outcome:
        """Recover after `error` stopped an interaction's motions (`_recover`); its Outcome, with the step
        that failed and the motions run until then. t0: perf_counter() at the start of send_action."""
        failed = state.get("step", "?")
        self._recover(error, failed)
        return Outcome(False, reason, target_robot=target, duration_s=time.perf_counter() - t0,
                       info={"error": str(error), "failed_step": failed, "motions": state["trace"], "plan": plan})

    @staticmethod
    def _planner_failure(error: BaseException) -> bool:
        """franky's MotionPlannerException (a Ruckig failure during a motion) reaches Python as a RuntimeError."""
        return isinstance(error, RuntimeError) and str(error).startswith("Motion planner failed")

    def _recover(self, error: Exception, failed_step: str) -> None:
        """After a reflex / rejected motion: automatic error recovery, then a slow vertical retreat."""
        self.recoveries += 1
        self._parked = False
        log.error("motion '%s' failed (%s: %s); recovering", failed_step, type(error).__name__, error)
        franky, c = self._franky, self.cfg
        for attempt in range(2):
            try:
                ok = self._robot.recover_from_errors()
                log.info("recover_from_errors() -> %s", ok)
                current = self.desired_pose()
                up = current.copy()  # straight up, never down, and not above the box (unless already there)
                up[2, 3] = min(current[2, 3] + c.retreat_height, max(c.workspace_max[2], current[2, 3]))
                if up[2, 3] - current[2, 3] > 1e-3:
                    self._robot.move(franky.CartesianMotion(franky.Affine(up), franky.ReferenceType.Absolute,
                                                            relative_dynamics_factor=c.contact_dynamics_factor))
                    self._wait_settled()
                log.info("retreated to z = %.3f m", up[2, 3])
                return
            except (franky.ControlException, RuntimeError) as e:
                if isinstance(e, RuntimeError) and not self._planner_failure(e):
                    raise
                log.error("retreat attempt %d failed: %s", attempt + 1, e)
        log.error("could not retreat after the error; the next observation will try to home the arm")

    def _confirm_first_motion(self) -> None:
        if self._confirmed:
            return
        c = self.cfg
        text = (f"\nThe Panda at {c.ip} is about to move (workspace x {c.workspace_min[0]}..{c.workspace_max[0]}, "
                f"y {c.workspace_min[1]}..{c.workspace_max[1]}, z {c.workspace_min[2]}..{c.workspace_max[2]} m; "
                f"dynamics {c.dynamics_factor}/{c.contact_dynamics_factor}; contact stop at {c.max_contact_force} N).\n"
                "Keep the external activation device (stop button) in hand. Type 'yes' to allow motion: ")
        prompt = self._prompt
        if prompt is None:
            if not sys.stdin or not sys.stdin.isatty():
                raise RuntimeError("robot.confirm=true needs an interactive terminal to ask before the first motion; "
                                   "run it in a terminal, or pass robot.confirm=false for unattended runs")
            prompt = input
        if prompt(text).strip().lower() != "yes":
            raise RuntimeError("motion not confirmed by the operator; nothing moved")
        self._confirmed = True

    def _require(self) -> None:
        if not self._connected:
            raise RuntimeError("FrankaRobot is not connected; call connect() or use it as a context manager")
