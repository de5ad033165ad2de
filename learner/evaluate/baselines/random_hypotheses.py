"""The chance baseline: random elliptical hypotheses over the pixels that have depth.

Sizes are drawn in metres (2-6 cm radius at the pixel's depth) so they look like tabletop objects;
scores are uniform. Deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class RandomHypothesesConfig:
    n: int = 20
    radius_m: tuple[float, float] = (0.02, 0.06)
    seed: int = 0


class RandomHypotheses:
    def __init__(self, config: RandomHypothesesConfig | None = None, **overrides):
        self.cfg = config or RandomHypothesesConfig(**overrides)
        self.rng = np.random.default_rng(self.cfg.seed)

    def predict(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        H, W = depth.shape
        valid = np.argwhere(depth > 0)
        masks = np.zeros((self.cfg.n, H, W), bool)
        if len(valid) == 0:
            return masks[:0], np.zeros(0, np.float32)
        for i in range(self.cfg.n):
            v, u = valid[self.rng.integers(len(valid))]
            r_px = self.rng.uniform(*self.cfg.radius_m) * K[0, 0] / float(depth[v, u])
            axes = (max(int(r_px), 1), max(int(r_px * self.rng.uniform(0.5, 1.0)), 1))
            m = np.zeros((H, W), np.uint8)
            cv2.ellipse(m, (int(u), int(v)), axes, float(self.rng.uniform(0, 180)), 0, 360, 1, -1)
            masks[i] = m.astype(bool)
        return masks, self.rng.random(self.cfg.n).astype(np.float32)
