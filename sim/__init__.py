"""The pybullet twin of the robot cell. Importing `sim` registers `InteractiveTabletop-v0` with Gymnasium.

This package knows pybullet and nothing of learning.
"""

import gymnasium as gym

ENV_ID = "InteractiveTabletop-v0"

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="sim.env:InteractiveTabletopEnv", max_episode_steps=200)
