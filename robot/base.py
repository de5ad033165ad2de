"""The one small interface the learning loop uses for the simulated and the real robot cell.

Method names follow LeRobot (`connect`, `disconnect`, `get_observation`, `send_action`); `home` is
added because both the Panda and its twin need an explicit safe pose.

Frames and units used everywhere in this project:
- Pixels: (u, v) = (column, row), origin at the top-left pixel centre, floats allowed.
- Camera frame: OpenCV convention (x right, y down, z forward), metres.
- Robot/world frame: the robot base frame, x forward, z up, metres. In sim the world frame is the
  robot base frame.
- Depth: float32 metres along the camera z axis (not ray length); 0.0 marks a missing measurement.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np


class Primitive(StrEnum):
    """Interaction primitives every robot implements."""

    POKE = "poke"
    GRASP = "grasp"

    @classmethod
    def parse(cls, value: str | Primitive) -> Primitive:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown primitive {value!r}; expected one of: {names}") from None


@dataclass
class RGBDFrame:
    """One aligned RGB-D capture.

    rgb: (H, W, 3) uint8. depth: (H, W) float32 metres, 0 = missing.
    K: (3, 3) float64 pinhole intrinsics in pixels for this resolution.
    camera_pose: (4, 4) float64 world(robot base)-from-camera transform, OpenCV camera axes.
    timestamp: seconds since the epoch.
    """

    rgb: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    camera_pose: np.ndarray
    timestamp: float = 0.0

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


@dataclass
class Action:
    """A primitive aimed at an image pixel of the latest capture.

    pixel: (u, v) in pixels. angle: radians; for a poke the push direction in the robot frame's
    x-y plane (0 = +x), for a grasp the gripper yaw about the robot z axis.
    push_length: metres (poke only).
    """

    primitive: Primitive
    pixel: tuple[float, float]
    angle: float = 0.0
    push_length: float = 0.06


@dataclass
class Outcome:
    """What the robot reports after executing an Action.

    executed: False when the action was refused or aborted (see `reason`); nothing was moved then
    unless `reason` says otherwise.
    target_robot: (3,) metres, the deprojected 3D target in the robot base frame (NaN if none).
    grasp_success: gripper held something after lifting (grasp only; None for pokes).
    info: extra robot-specific data. In sim it carries ground truth that is for evaluation and mask
    quality measurements only (never a training signal for the self-supervised segmenter).
    """

    executed: bool
    reason: str = ""
    target_robot: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    grasp_success: bool | None = None
    duration_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class Robot(abc.ABC):
    """A robot cell: an arm that pokes and grasps plus one calibrated RGB-D camera."""

    kind: str = "abstract"
    #: ((x_min, x_max), (y_min, y_max)) of the table top in the robot frame (metres); None = unknown.
    table_bounds: tuple[tuple[float, float], tuple[float, float]] | None = None

    @abc.abstractmethod
    def connect(self) -> None:
        """Open connections (simulator, arm, camera). Idempotent."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Release everything. Idempotent."""

    @abc.abstractmethod
    def home(self) -> None:
        """Move the arm to its parking pose, out of the camera's view."""

    @abc.abstractmethod
    def get_observation(self) -> RGBDFrame:
        """Capture one RGB-D frame with the arm parked out of view."""

    @abc.abstractmethod
    def send_action(self, action: Action) -> Outcome:
        """Execute a primitive at a pixel of the latest observation and report what happened.

        Raises ValueError for malformed actions (unknown primitive, pixel outside the image);
        unreachable or unmeasurable targets (no depth under the pixel) are reported as
        `Outcome(executed=False, reason=...)` and leave the cell unchanged.
        """

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
