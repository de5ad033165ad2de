"""The simulated Franka Panda (pybullet_data `franka_panda/panda.urdf`), driven by inverse kinematics.

World frame = robot base frame (x forward, y left, z up, metres). The tool point is the
`panda_grasptarget` link, between the fingertips. Gripper yaw (radians, about world z) is the
direction along which the fingers close: at yaw 0 they close along the world x axis.

Free-space transfers (park -> above the target, and back) are kinematic (joint positions set
directly): they touch nothing and would only cost simulation time. Every motion that can touch an
object — descending, pushing, closing, lifting — is simulated with position-controlled joints.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import pybullet as pb
import pybullet_data

ARM_JOINTS = list(range(7))
FINGER_JOINTS = [9, 10]
TOOL_LINK = 11
LOWER = [-2.9671, -1.8326, -2.9671, -3.1416, -2.9671, -0.0873, -2.9671]
UPPER = [2.9671, 1.8326, 2.9671, 0.0, 2.9671, 3.8223, 2.9671]
REST = [0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.785]
# Parking poses of the randomised domains, tried in order until one is out of the camera's view: the
# default (folded back toward -x) and the same folded to either side (joint 1 at +-90 degrees).
PARK_POSES = (
    (0.0, -1.75, 0.0, -3.0, 0.0, 1.4, 0.785),
    (1.5708, -1.75, 0.0, -3.0, 0.0, 1.4, 0.785),
    (-1.5708, -1.75, 0.0, -3.0, 0.0, 1.4, 0.785),
)


_LOWPOLY_URDF: str | None = None


def _lowpoly_panda_urdf() -> str:
    """pybullet_data's panda.urdf with its collision meshes used as visuals too.

    The arm is parked out of view for every capture, yet TinyRenderer still pays for every triangle
    (and the shadow pass sees it): the low-poly visuals halve the render time. Written once per process
    to a temporary file with absolute mesh paths.
    """
    global _LOWPOLY_URDF
    if _LOWPOLY_URDF is None or not os.path.exists(_LOWPOLY_URDF):
        root = os.path.join(pybullet_data.getDataPath(), "franka_panda")
        with open(os.path.join(root, "panda.urdf")) as f:
            text = f.read()
        text = text.replace("package://meshes/visual/", "package://meshes/collision/")
        text = text.replace("package://meshes/", os.path.join(root, "meshes") + "/")
        fd, path = tempfile.mkstemp(prefix="panda_lowpoly_", suffix=".urdf")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        atexit.register(lambda: os.path.exists(path) and os.remove(path))
        _LOWPOLY_URDF = path
    return _LOWPOLY_URDF


@dataclass
class ArmConfig:
    """Arm motion parameters (metres, seconds, newtons)."""

    park_joints: tuple[float, ...] = (0.0, -1.75, 0.0, -3.0, 0.0, 1.4, 0.785)
    speed: float = 0.5  # Cartesian speed of simulated moves, m/s
    control_every: int = 2  # IK re-solved every N physics steps
    joint_force: float = 87.0
    finger_force: float = 40.0
    finger_open: float = 0.04  # per finger, metres


class PandaArm:
    """A Panda with a parallel gripper in one pybullet client."""

    def __init__(self, client: int, cfg: ArmConfig, timestep: float):
        self.client = client
        self.cfg = cfg
        self.dt = timestep
        self.body = -1
        self.park_joints: tuple[float, ...] | None = None  # None: cfg.park_joints; the randomised domains pick one of PARK_POSES

    def load(self) -> None:
        self.body = pb.loadURDF(_lowpoly_panda_urdf(), [0, 0, 0], useFixedBase=True, physicsClientId=self.client)
        for j in FINGER_JOINTS:
            pb.changeDynamics(self.body, j, lateralFriction=1.5, spinningFriction=0.01, physicsClientId=self.client)
        self.park()

    # ------------------------------------------------------------------ kinematic helpers
    def _hold(self, joints, fingers: float) -> None:
        c = self.client
        pb.setJointMotorControlArray(
            self.body, ARM_JOINTS, pb.POSITION_CONTROL, targetPositions=list(joints),
            forces=[self.cfg.joint_force] * 7, physicsClientId=c,
        )
        pb.setJointMotorControlArray(
            self.body, FINGER_JOINTS, pb.POSITION_CONTROL, targetPositions=[fingers, fingers],
            forces=[self.cfg.finger_force] * 2, physicsClientId=c,
        )

    def teleport(self, joints, fingers: float) -> None:
        """Set joint positions directly (no dynamics) and hold them."""
        for j, q in zip(ARM_JOINTS, joints, strict=True):
            pb.resetJointState(self.body, j, q, 0.0, physicsClientId=self.client)
        for j in FINGER_JOINTS:
            pb.resetJointState(self.body, j, fingers, 0.0, physicsClientId=self.client)
        self._hold(joints, fingers)

    def park(self) -> None:
        """Kinematic move to the parking pose, out of the camera's view."""
        self.teleport(self.park_joints or self.cfg.park_joints, self.cfg.finger_open)

    def joints(self) -> list[float]:
        return [pb.getJointState(self.body, j, physicsClientId=self.client)[0] for j in ARM_JOINTS]

    def tool_position(self) -> np.ndarray:
        return np.array(pb.getLinkState(self.body, TOOL_LINK, computeForwardKinematics=True, physicsClientId=self.client)[4])

    def ik(self, pos, yaw: float) -> list[float]:
        """Joint positions putting the tool point at `pos` pointing down with hand yaw `yaw` (rad)."""
        orn = pb.getQuaternionFromEuler([np.pi, 0.0, yaw + np.pi / 2])
        ranges = [u - lo for lo, u in zip(LOWER, UPPER, strict=True)]
        sol = pb.calculateInverseKinematics(
            self.body, TOOL_LINK, list(pos), orn, lowerLimits=LOWER, upperLimits=UPPER, jointRanges=ranges,
            restPoses=REST, maxNumIterations=60, residualThreshold=1e-4, physicsClientId=self.client,
        )
        return list(sol[:7])

    def place_tool(self, pos, yaw: float, fingers: float, tolerance: float = 0.003) -> bool:
        """Kinematic (teleport) move of the tool point to `pos`. IK is seeded from the ready pose (not
        from the folded parking pose, where it converges poorly) and iterated until the tool is within
        `tolerance` metres. Returns False if the pose is unreachable."""
        self.teleport(REST, fingers)
        for _ in range(8):
            self.teleport(self.ik(pos, yaw), fingers)
            if np.linalg.norm(self.tool_position() - np.asarray(pos)) < tolerance:
                return True
        return False

    # ------------------------------------------------------------------ simulated motion
    def move_linear(self, goal, yaw: float, fingers: float, step, speed: float | None = None) -> None:
        """Straight-line tool motion from the current tool point to `goal`, simulated.

        `step()` advances the physics by one timestep. Joint targets follow IK along the line.
        """
        start = self.tool_position()
        goal = np.asarray(goal, float)
        dist = float(np.linalg.norm(goal - start))
        v = speed or self.cfg.speed
        n_steps = max(int(np.ceil(dist / v / self.dt)), 1)
        k = self.cfg.control_every
        for i in range(0, n_steps, k):
            frac = min((i + k) / n_steps, 1.0)
            self._hold(self.ik(start + frac * (goal - start), yaw), fingers)
            for _ in range(min(k, n_steps - i)):
                step()
        # short settle so the tool reaches the end of the line
        self._hold(self.ik(goal, yaw), fingers)
        for _ in range(2 * k):
            step()

    def set_fingers(self, width_each: float, step, n_steps: int) -> None:
        """Drive both fingers to `width_each` metres (force-limited), keeping the arm where it is."""
        joints = self.joints()
        self._hold(joints, width_each)
        for _ in range(n_steps):
            step()

    def link_aabbs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """World axis-aligned boxes of the base and every link (metres)."""
        c = self.client
        return [tuple(np.array(v) for v in pb.getAABB(self.body, j, physicsClientId=c))
                for j in range(-1, pb.getNumJoints(self.body, physicsClientId=c))]

    def contacts_with(self, body: int) -> bool:
        return any(
            pb.getContactPoints(self.body, body, linkIndexA=j, physicsClientId=self.client) for j in FINGER_JOINTS
        )
