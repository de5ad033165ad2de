"""The camera extrinsics of the real cell (eye-to-hand): load and save the calibration YAML.

`base_from_camera` is the 4x4 world(robot base)-from-camera transform, OpenCV camera axes
(x right, y down, z forward), metres: a point p_cam in the camera frame is
`base_from_camera @ [p_cam, 1]` in the robot base frame. It becomes `RGBDFrame.camera_pose`.

The file is written by `python -m robot.calibrate solve` (see docs/franka.md); the one shipped in
configs/robot/franka_calibration.yaml is a placeholder (`placeholder: true`) that a real cell must
replace. Layout:

    placeholder: false
    base_from_camera: [[r11, r12, r13, tx], [...], [...], [0, 0, 0, 1]]
    gripper_from_board: [[...]]     # where the ChArUco board sat on the hand (informative)
    method: park                    # hand-eye solver
    n_views: 18
    residual_translation_mm: {mean: 1.2, max: 3.1}
    residual_rotation_deg: {mean: 0.2, max: 0.5}
    reprojection_px: {mean: 0.4, max: 1.1}
    camera_serial: "123456789"
    created: "2025-01-01T12:00:00"
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def _as_pose(value: Any, key: str, path: Path) -> np.ndarray:
    T = np.asarray(value, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"{path}: '{key}' must be a 4x4 matrix, got shape {T.shape}")
    if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-9):
        raise ValueError(f"{path}: '{key}' last row must be [0, 0, 0, 1], got {T[3].tolist()}")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0.999:
        raise ValueError(f"{path}: '{key}' rotation part is not a proper rotation (R R^T != I or det != 1)")
    return T


@dataclass
class Calibration:
    """Eye-to-hand extrinsics plus how they were obtained (residuals in mm / degrees / pixels)."""

    base_from_camera: np.ndarray
    placeholder: bool = False
    gripper_from_board: np.ndarray | None = None
    method: str = ""
    n_views: int = 0
    residual_translation_mm: dict[str, float] = field(default_factory=dict)
    residual_rotation_deg: dict[str, float] = field(default_factory=dict)
    reprojection_px: dict[str, float] = field(default_factory=dict)
    camera_serial: str = ""
    created: str = ""

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"calibration file {path} not found; run `python -m robot.calibrate` (docs/franka.md) "
                "or point robot.calibration at an existing file"
            )
        data = yaml.safe_load(path.read_text()) or {}
        if "base_from_camera" not in data:
            raise ValueError(f"{path}: missing 'base_from_camera' (4x4 robot-base-from-camera matrix)")
        g = data.get("gripper_from_board")
        return cls(
            base_from_camera=_as_pose(data["base_from_camera"], "base_from_camera", path),
            placeholder=bool(data.get("placeholder", False)),
            gripper_from_board=None if g is None else _as_pose(g, "gripper_from_board", path),
            method=str(data.get("method", "")),
            n_views=int(data.get("n_views", 0)),
            residual_translation_mm=dict(data.get("residual_translation_mm") or {}),
            residual_rotation_deg=dict(data.get("residual_rotation_deg") or {}),
            reprojection_px=dict(data.get("reprojection_px") or {}),
            camera_serial=str(data.get("camera_serial", "")),
            created=str(data.get("created", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        def mat(T):
            return None if T is None else [[round(float(x), 9) for x in row] for row in np.asarray(T)]

        out: dict[str, Any] = {
            "placeholder": self.placeholder,
            "base_from_camera": mat(self.base_from_camera),
            "gripper_from_board": mat(self.gripper_from_board),
            "method": self.method,
            "n_views": self.n_views,
            "residual_translation_mm": {k: float(v) for k, v in self.residual_translation_mm.items()},
            "residual_rotation_deg": {k: float(v) for k, v in self.residual_rotation_deg.items()},
            "reprojection_px": {k: float(v) for k, v in self.reprojection_px.items()},
            "camera_serial": self.camera_serial,
            "created": self.created,
        }
        return {k: v for k, v in out.items() if v is not None}

    def save(self, path: str | os.PathLike, header: str = "") -> Path:
        """Write atomically; `header` lines are prefixed with '# '."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(f"# {line}\n" for line in header.splitlines())
        text += yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return path
