"""Non-learned segmentation baselines, all exposing ``predict(rgb, depth, K) -> (masks, scores)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

PredictFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

BASELINES = ("depth_clustering", "random")


def get_baseline(name: str, **config: Any) -> PredictFn:
    """Return the predict function of a named baseline; ``config`` overrides its dataclass fields."""
    if name == "depth_clustering":
        from learner.evaluate.baselines.depth_clustering import DepthClusteringSegmenter

        return DepthClusteringSegmenter(**config).predict
    if name == "random":
        from learner.evaluate.baselines.random_hypotheses import RandomHypotheses

        return RandomHypotheses(**config).predict
    raise ValueError(f"unknown baseline {name!r}; expected one of: {', '.join(BASELINES)}")
