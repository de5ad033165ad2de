"""Depth-image geometry shared by frame differencing, the agent and the trainer.

Units: depth in metres along the camera z axis (0 = missing); K in pixels; camera_pose is the 4x4
world(robot base)-from-camera transform with OpenCV camera axes; world points in metres. The table
top is the plane z = 0 of the robot frame.
"""

from __future__ import annotations

import numpy as np


def world_points(depth: np.ndarray, K: np.ndarray, camera_pose: np.ndarray) -> np.ndarray:
    """(H,W,3) robot-frame points (metres) of a depth image; NaN where depth is missing."""
    H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    z = np.where(depth > 0, depth, np.nan).astype(np.float32)
    pts = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], -1)
    return pts @ camera_pose[:3, :3].T.astype(np.float32) + camera_pose[:3, 3].astype(np.float32)


def height_above_table(depth: np.ndarray, K: np.ndarray, camera_pose: np.ndarray) -> np.ndarray:
    """(H,W) height of each observed point above the table plane z = 0, metres (NaN = no depth)."""
    return world_points(depth, K, camera_pose)[..., 2]
