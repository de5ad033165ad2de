"""Helpers for tests that drive the sim twin: pick pixels and grasp angles from simulator ground truth
(tests only; the learner never sees ground truth)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def interior_pixel(label: np.ndarray, iid: int) -> tuple[int, int]:
    """The pixel (u, v) of instance `iid` deepest inside its mask."""
    dist = ndimage.distance_transform_edt(label == iid)
    v, u = np.unravel_index(np.argmax(dist), dist.shape)
    return int(u), int(v)


def world_points(obs: dict, mask: np.ndarray) -> np.ndarray:
    """(N,3) world points (metres) of the masked pixels with valid depth."""
    v, u = np.nonzero(mask & (obs["depth"] > 0))
    z = obs["depth"][v, u]
    K = obs["K"]
    pts = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], 1)
    return pts @ obs["camera_pose"][:3, :3].T + obs["camera_pose"][:3, 3]


def most_isolated(env, label: np.ndarray) -> int:
    """The visible instance farthest from every other object (world x-y distance)."""
    poses = env.scene.poses()
    visible = [i for i in np.unique(label) if i > 0 and (label == i).sum() > 60]

    def clearance(i):
        return min(np.linalg.norm(poses[i][0][:2] - poses[j][0][:2]) for j in poses if j != i)

    return max(visible, key=clearance)


def narrow_side_yaw(obs: dict, mask: np.ndarray) -> float:
    """Gripper yaw (radians) closing the fingers across the object's minor axis on the table."""
    pts = world_points(obs, mask)[:, :2]
    _, evecs = np.linalg.eigh(np.cov((pts - pts.mean(0)).T))
    minor = evecs[:, 0]
    return float(np.arctan2(minor[1], minor[0]))
