"""The pose-free table-plane height (learner/proposals/plane.py) against the sim camera's true geometry."""

from __future__ import annotations

import numpy as np

from data.geometry import height_above_table
from learner.proposals.frame import InputSpec, make_input
from learner.proposals.plane import height_above_plane
from sim.env import InteractiveTabletopEnv, TabletopConfig


def test_height_above_plane_matches_the_true_table_height():
    env = InteractiveTabletopEnv(TabletopConfig(split="val"))
    try:
        obs, info = env.reset(seed=3)
    finally:
        env.close()
    h = height_above_plane(obs["depth"], obs["K"])
    true = height_above_table(obs["depth"], obs["K"], obs["camera_pose"])  # uses the known camera pose
    valid = obs["depth"] > 0
    objects = (info["instance_label"] > 0) & valid
    table_px = (info["instance_label"] == 0) & valid & (np.abs(true) < 0.05)
    assert np.median(np.abs(h[table_px] - true[table_px])) < 0.002  # metres
    assert np.median(np.abs(h[objects] - true[objects])) < 0.004
    assert np.all(h[~valid] == 0)
    # the network's 8th input channel is this height, scaled
    spec = InputSpec()
    x = make_input(obs["rgb"], obs["depth"], obs["K"], spec)[0, 7]
    clipped = np.clip(h[objects], spec.height_min_m, spec.height_max_m)
    assert np.allclose(x[objects], clipped / spec.height_scale_m, atol=1e-5)
    assert np.all(x[~valid] == 0)


def test_no_depth_gives_zero_height():
    assert not height_above_plane(np.zeros((20, 30), np.float32), np.eye(3)).any()
