"""Typed in-memory form of one robot interaction, as appended to / read from the interaction log.

Units and frames follow `robot/base.py`: pixels are (u, v) = (column, row); depth is float32 metres
along the camera z axis with 0.0 = missing; `camera_pose` is world(robot base)-from-camera with
OpenCV camera axes; `target_robot` is metres in the robot base frame.

`InteractionRecord` fields (H, W = image height, width; N = number of hypotheses, 0..64):

| field              | type / shape           | meaning                                                  |
| ------------------ | ---------------------- | -------------------------------------------------------- |
| rgb_before         | (H, W, 3) uint8        | RGB capture before the action                            |
| depth_before       | (H, W) float32 metres  | depth before the action, 0 = missing                     |
| rgb_after          | (H, W, 3) uint8        | RGB capture after the action (arm parked again)          |
| depth_after        | (H, W) float32 metres  | depth after the action, 0 = missing                      |
| K                  | (3, 3) float64         | pinhole intrinsics in pixels                             |
| camera_pose        | (4, 4) float64         | world(robot base)-from-camera                            |
| primitive          | str                    | 'poke' or 'grasp'                                        |
| pixel              | (2,) float32           | (u, v) target pixel in the before frame                  |
| angle              | float                  | radians (push direction / gripper yaw, see robot/base.py)|
| push_length        | float                  | metres (poke only; 0 for grasps is fine)                 |
| target_robot       | (3,) float32           | deprojected target, robot base frame, metres (NaN = none)|
| hypotheses         | (N, H, W) bool         | candidate object masks shown to the agent                |
| hypothesis_scores  | (N,) float32           | the agent's score of each hypothesis                     |
| chosen_hypothesis  | int                    | index into `hypotheses`, -1 = none                       |
| mask               | (H, W) bool            | extracted (noisy) object mask, before frame              |
| label              | Label                  | NEGATIVE / POSITIVE / INVALID                            |
| label_reason       | str                    | short reason, e.g. 'moved', 'nothing_moved', 'arm_leak'  |
| t_start, t_end     | float                  | unix seconds                                             |
| model_version      | int                    | version of the model that chose the action               |
| robot_kind         | str                    | 'sim', 'franka', ...                                     |
| grasp_success      | int (-1, 0, 1)         | -1 = unknown / not a grasp                               |

On disk depth is stored as uint16 millimetres (`depth_to_mm` / `mm_to_depth`), so a round trip
is exact up to 0.5 mm; depths beyond 65.535 m are clipped, non-finite or negative depths become
0 (missing), and depths below 0.5 mm round to 0 (missing). Every other field round-trips exactly
(given the documented dtypes; e.g. a float64 `pixel` comes back as float32).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from enum import Enum, IntEnum

import numpy as np

MAX_HYPOTHESES = 64
"""Most hypotheses one record may carry."""

MAX_STRING_LENGTH = 64
"""Longest allowed `primitive` / `label_reason` / `robot_kind` string (they are short codes)."""

PRIMITIVES = ("poke", "grasp")
"""Allowed `primitive` values (the values of `robot.base.Primitive`)."""

DEPTH_MM_MAX = 65535


class Label(IntEnum):
    """Self-supervised outcome label of one interaction."""

    NEGATIVE = 0
    POSITIVE = 1
    INVALID = 2


def depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """float metres -> uint16 millimetres (round half to even, clip to 65535; 0/NaN/neg -> 0)."""
    d = np.asarray(depth_m, dtype=np.float64) * 1000.0
    d = np.where(np.isfinite(d) & (d > 0.0), d, 0.0)
    return np.clip(np.rint(d), 0, DEPTH_MM_MAX).astype(np.uint16)


def mm_to_depth(depth_mm: np.ndarray) -> np.ndarray:
    """uint16 millimetres -> float32 metres (0 stays 0 = missing)."""
    return (np.asarray(depth_mm).astype(np.float32) * np.float32(0.001)).astype(np.float32)


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass(kw_only=True, eq=False)
class InteractionRecord:
    """One robot interaction (see the module docstring for every field's shape, dtype and unit).

    Construct with keywords. `label` may be given as an int and `primitive` as a
    `robot.base.Primitive`; both are normalised on construction. Call `validate()` to check
    shapes/dtypes (the log does this on append); it raises ValueError naming the bad field.
    """

    rgb_before: np.ndarray
    depth_before: np.ndarray
    rgb_after: np.ndarray
    depth_after: np.ndarray
    K: np.ndarray
    camera_pose: np.ndarray
    primitive: str
    pixel: np.ndarray
    angle: float
    push_length: float
    target_robot: np.ndarray
    hypotheses: np.ndarray
    hypothesis_scores: np.ndarray
    mask: np.ndarray
    label: Label
    t_start: float
    t_end: float
    robot_kind: str
    chosen_hypothesis: int = -1
    label_reason: str = ""
    model_version: int = 0
    grasp_success: int = -1

    def __post_init__(self) -> None:
        if isinstance(self.primitive, Enum):
            self.primitive = self.primitive.value
        if isinstance(self.label, numbers.Integral) and not isinstance(self.label, bool):
            try:
                self.label = Label(int(self.label))
            except ValueError:
                raise ValueError(
                    f"label: {self.label!r} is not a Label ({', '.join(f'{m.name}={m.value}' for m in Label)})"
                ) from None

    @property
    def height(self) -> int:
        return int(np.shape(self.rgb_before)[0])

    @property
    def width(self) -> int:
        return int(np.shape(self.rgb_before)[1])

    @property
    def num_hypotheses(self) -> int:
        return int(np.shape(self.hypotheses)[0])

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def validate(self, height: int | None = None, width: int | None = None) -> None:
        """Check shapes, dtypes and value ranges; raise ValueError naming the first bad field.

        height/width: expected image size (e.g. the log's); default: taken from `rgb_before`.
        """
        if not isinstance(self.rgb_before, np.ndarray) or self.rgb_before.ndim != 3:
            raise ValueError(
                f"rgb_before: expected a (H, W, 3) uint8 array, got {_describe(self.rgb_before)}"
            )
        H = self.rgb_before.shape[0] if height is None else int(height)
        W = self.rgb_before.shape[1] if width is None else int(width)

        _check_array("rgb_before", self.rgb_before, (H, W, 3), "uint8")
        _check_array("rgb_after", self.rgb_after, (H, W, 3), "uint8")
        _check_array("depth_before", self.depth_before, (H, W), "float")
        _check_array("depth_after", self.depth_after, (H, W), "float")
        _check_array("K", self.K, (3, 3), "float")
        _check_array("camera_pose", self.camera_pose, (4, 4), "float")
        _check_array("pixel", self.pixel, (2,), "real")
        _check_array("target_robot", self.target_robot, (3,), "float")
        _check_array("mask", self.mask, (H, W), "bool")

        hyp = self.hypotheses
        if not isinstance(hyp, np.ndarray) or hyp.ndim != 3:
            raise ValueError(f"hypotheses: expected a (N, {H}, {W}) bool array, got {_describe(hyp)}")
        n = hyp.shape[0]
        if n > MAX_HYPOTHESES:
            raise ValueError(f"hypotheses: {n} masks, at most {MAX_HYPOTHESES} allowed")
        _check_array("hypotheses", hyp, (n, H, W), "bool")
        _check_array("hypothesis_scores", self.hypothesis_scores, (n,), "float")

        if not _is_int(self.chosen_hypothesis) or not -1 <= int(self.chosen_hypothesis) < n:
            raise ValueError(
                f"chosen_hypothesis: expected an int in [-1, {n}) for {n} hypotheses, got {self.chosen_hypothesis!r}"
            )
        if not _is_int(self.label) or int(self.label) not in {m.value for m in Label}:
            raise ValueError(f"label: expected a Label, got {self.label!r}")
        if primitive_name(self.primitive) not in PRIMITIVES:
            raise ValueError(f"primitive: expected one of {PRIMITIVES}, got {self.primitive!r}")
        _check_str("label_reason", self.label_reason, allow_empty=True)
        _check_str("robot_kind", self.robot_kind, allow_empty=False)
        for name in ("angle", "push_length", "t_start", "t_end"):
            v = getattr(self, name)
            if not _is_real(v):
                raise ValueError(f"{name}: expected a float, got {v!r}")
        for name in ("t_start", "t_end"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"{name}: expected finite unix seconds, got {getattr(self, name)!r}")
        if not _is_int(self.model_version) or not -(2**63) <= int(self.model_version) < 2**63:
            raise ValueError(f"model_version: expected an int64, got {self.model_version!r}")
        if not _is_int(self.grasp_success) or int(self.grasp_success) not in (-1, 0, 1):
            raise ValueError(f"grasp_success: expected -1 (unknown), 0 or 1, got {self.grasp_success!r}")


def primitive_name(p: object) -> object:
    """'poke' for 'poke' or Primitive.POKE (any str Enum); other values are returned unchanged."""
    return p.value if isinstance(p, Enum) else p


def _describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:120]


def _check_array(name: str, x: object, shape: tuple[int, ...], kind: str) -> None:
    """kind: 'uint8' | 'bool' | 'float' (any float dtype) | 'real' (int or float, or a sequence of them)."""
    if kind == "real" and not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception:  # anything unconvertible is just the wrong type
            raise ValueError(f"{name}: expected numbers of shape {shape}, got {_describe(x)}") from None
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array of shape {shape}, got {_describe(x)}")
    if x.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {x.shape}")
    dt = x.dtype
    ok = {
        "uint8": dt == np.uint8,
        "bool": dt == np.bool_,
        "float": np.issubdtype(dt, np.floating),
        "real": (np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer)) and dt != np.bool_,
    }[kind]
    if not ok:
        want = {"uint8": "uint8", "bool": "bool", "float": "a float dtype", "real": "a numeric dtype"}[kind]
        raise ValueError(f"{name}: expected dtype {want}, got {dt}")


def _check_str(name: str, s: object, *, allow_empty: bool) -> None:
    if not isinstance(s, str):
        raise ValueError(f"{name}: expected a str, got {s!r}")
    if not s and not allow_empty:
        raise ValueError(f"{name}: must not be empty")
    if len(s) > MAX_STRING_LENGTH:
        raise ValueError(f"{name}: longer than {MAX_STRING_LENGTH} characters ({len(s)}); use a short code")
