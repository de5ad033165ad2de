"""`SimRobot`: the `Robot` interface over the pybullet twin (`InteractiveTabletop-v0`).

A scene is re-spawned when the env reports too few objects left or after
`interactions_per_scene` interactions, so long runs see many tables. The first `get_observation()`
after `send_action()` always returns the after-capture of that action (never a new scene); a due
re-spawn happens at the observation after that, i.e. the next interaction's before-capture.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot.base import Action, Outcome, Primitive, RGBDFrame, Robot


@dataclass
class SimRobotConfig:
    """Options of the simulated cell (see sim.env.TabletopConfig for the full set)."""

    split: str = "train"  # object split: train / val / test
    clutter: str = "cluttered"  # sparse / cluttered / piled
    width: int = 320
    height: int = 240
    place: str = "table"  # grasped objects go to a free spot on the "table" or into a "bin"
    shadows: bool = False
    seed: int = 0
    interactions_per_scene: int = 20
    # the twin: "narrow" (today's cell, the default), "wide" (randomised cells: camera, room, table,
    # light, sensor artefacts, object families; sim/randomization.py) or "cross" (randomised cells with
    # evaluation-only objects; split val/test). From run_loop: robot.domain=wide
    domain: str = "narrow"
    # a named fixed cell (sim/randomization.py CELLS: the wide ranges narrowed to one set-up; needs domain
    # wide or cross), "" = the domain's full ranges. From run_loop: robot.domain=wide robot.cell=side_kinect
    cell: str = ""


class SimRobot(Robot):
    """Drives `sim.env.InteractiveTabletopEnv` through the Robot interface."""

    kind = "sim"

    def __init__(self, cfg: SimRobotConfig | None = None):
        self.cfg = cfg or SimRobotConfig()
        self.env = None
        self._frame: RGBDFrame | None = None
        self._label: np.ndarray | None = None
        self._needs_reset = True
        self._scene_count = 0
        self._steps_in_scene = 0
        self._just_acted = False

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        if self.env is not None:
            return
        from sim.env import CameraConfig, InteractiveTabletopEnv, TabletopConfig
        from sim.randomization import DomainConfig, cell_config
        from sim.scene import ClutterConfig

        c = self.cfg
        if c.cell and c.domain == "narrow":
            raise ValueError(f"robot.cell={c.cell} narrows the randomised ranges: it needs robot.domain=wide or cross")
        env_cfg = TabletopConfig(
            split=c.split,
            camera=CameraConfig(width=c.width, height=c.height, shadows=c.shadows),
            clutter=ClutterConfig(level=c.clutter),
            place=c.place,
            domain=c.domain,
            randomization=cell_config(c.cell) if c.cell else DomainConfig(),
        )
        self.env = InteractiveTabletopEnv(env_cfg)
        self._needs_reset = True

    def disconnect(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def home(self) -> None:
        self._require()
        self.env.arm.park()

    # ------------------------------------------------------------------ Robot API
    def get_observation(self) -> RGBDFrame:
        self._require()
        if self._just_acted:
            self._just_acted = False
            return self._frame
        if self._needs_reset or self._steps_in_scene >= self.cfg.interactions_per_scene:
            obs, info = self.env.reset(seed=self.cfg.seed * 100_003 + self._scene_count)
            self._scene_count += 1
            self._steps_in_scene = 0
            self._needs_reset = False
            self._set_frame(obs, info["instance_label"])
        return self._frame

    def send_action(self, action: Action) -> Outcome:
        self._require()
        if self._frame is None:
            raise RuntimeError("call get_observation() before send_action()")
        prim = Primitive.parse(action.primitive)
        t0 = time.perf_counter()
        obs, _, terminated, truncated, info = self.env.step(
            {
                "primitive": prim.value,
                "pixel": np.asarray(action.pixel, dtype=float),
                "angle": np.array([action.angle]),
                "push_length": np.array([action.push_length]),
            }
        )
        self._steps_in_scene += 1
        self._just_acted = True
        self._needs_reset = bool(terminated or truncated)
        self._set_frame(obs, info["instance_label"])
        gt = {
            k: info[k]
            for k in ("instance_label_before", "instance_label", "moved_ids", "displacement", "n_objects")
        }
        return Outcome(
            executed=bool(info["executed"]),
            reason=info["reason"],
            target_robot=np.asarray(info["target_world"], dtype=float),
            grasp_success=info["grasp_success"],
            duration_s=time.perf_counter() - t0,
            info={"ground_truth": gt},
        )

    @property
    def table_bounds(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """((x_min, x_max), (y_min, y_max)) of the table top in the robot frame, metres."""
        from sim.scene import TableConfig

        if self.env is not None:  # the current scene's table (randomised domains vary it)
            return self.env.scene.table_bounds()
        t = TableConfig()
        (cx, cy), (hx, hy) = t.center_xy, t.half_size_xy
        return ((cx - hx, cx + hx), (cy - hy, cy + hy))

    # ------------------------------------------------------------------ sim-only extras
    def ground_truth_label(self) -> np.ndarray:
        """Instance labels (H,W) int32 of the latest observation. Evaluation only, never training."""
        if self._label is None:
            raise RuntimeError("no observation yet")
        return self._label

    def state_dict(self) -> dict[str, Any]:
        """Counters needed to resume a run with fresh, non-repeating scenes."""
        return {"scene_count": self._scene_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._scene_count = int(state.get("scene_count", 0))
        self._needs_reset = True

    # ------------------------------------------------------------------ helpers
    def _require(self) -> None:
        if self.env is None:
            raise RuntimeError("SimRobot is not connected; call connect() or use it as a context manager")

    def _set_frame(self, obs: dict[str, np.ndarray], label: np.ndarray) -> None:
        self._frame = RGBDFrame(obs["rgb"], obs["depth"], obs["K"], obs["camera_pose"], time.time())
        self._label = label
