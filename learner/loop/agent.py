"""The agent: turn the current segmenter's hypotheses into the next experiment (Pathak et al., Alg. 1).

- Hypotheses come from the segmenter (`learner.hypotheses.propose`).
- Selection: `uniform` picks uniformly among hypotheses (Pathak); `uncertain` favours hypotheses the
  model is unsure of (score near 0.5) and regions not tried recently.
- Exploration / cold start: with probability `exploration`, or when the model has no hypotheses (an
  untrained model), the target is a region that stands above the table plane in the robot's own depth
  ("something is here"), chosen uniformly among its connected regions. These interactions have
  `chosen_hypothesis = -1` in the log, so what bootstraps the loop is reported apart from what the
  model proposed.
- Primitive: `poke`, `grasp`, `alternate`, or `learned` (Thompson sampling on each primitive's
  positive rate so far).
- Where to act inside a mask: its most interior pixel; grasps close across the mask's minor axis on
  the table (from the deprojected depth), pokes push in a random direction.
- Safer grasps (optional, `grasp_confidence_p`): a grasp on a model hypothesis is aimed at the
  p-confidence mask (Latent-MaskRCNN; `learner.sampling.make_confidence_fn`) that overlaps the chosen
  hypothesis most, so the gripper closes only where k p of k sampled segmentations agree on one
  object; if none overlaps it, at the best-scoring confidence mask; if there is none, at the
  hypothesis as before. The caller passes `confidence_fn` to `choose`; it is called only then.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from data.geometry import height_above_table, world_points
from learner.proposals.config import ProposalConfig
from robot.base import Action, Primitive, RGBDFrame


@dataclass
class AgentConfig:
    selection: str = "uniform"  # "uniform" | "uncertain"
    primitive: str = "alternate"  # "poke" | "grasp" | "alternate" | "learned"
    exploration: float = 0.15  # probability of a depth-driven exploration target
    # the proposals the robot acts on: the evaluation defaults but a stricter seed threshold (0.5, as in
    # every measured loop run): a target should be an object the model is sure of, while evaluation
    # (learner.loop.interactive.LoopSettings.proposals, 0.1) wants recall
    proposals: ProposalConfig = field(default_factory=lambda: ProposalConfig(objectness_threshold=0.5))
    min_hypothesis_area: int = 40  # pixels
    cold_start_height: float = 0.012  # metres above the table that count as "something is here"
    push_length: float = 0.06  # metres
    recent_memory: int = 20  # interactions remembered by the "uncertain" selection
    grasp_confidence_p: float | None = None  # grasp p-confidence masks (None = off, the hypothesis itself)
    grasp_confidence_samples: int = 10  # k samples behind a confidence mask (used by the caller's sampler)

    def validate(self) -> None:
        if self.selection not in ("uniform", "uncertain"):
            raise ValueError(f"agent.selection must be 'uniform' or 'uncertain', got {self.selection!r}")
        if self.primitive not in ("poke", "grasp", "alternate", "learned"):
            raise ValueError(f"agent.primitive must be poke/grasp/alternate/learned, got {self.primitive!r}")
        if not 0.0 <= self.exploration <= 1.0:
            raise ValueError(f"agent.exploration must be in [0, 1], got {self.exploration}")
        p = self.grasp_confidence_p
        if p is not None and not 0.0 < p <= 1.0:
            raise ValueError(f"agent.grasp_confidence_p must be in (0, 1] or None, got {p}")
        if self.grasp_confidence_samples < 1:
            raise ValueError(f"agent.grasp_confidence_samples must be >= 1, got {self.grasp_confidence_samples}")
        try:
            self.proposals.validate()
        except ValueError as e:
            raise ValueError(f"agent.{e}") from None


def interior_pixel(mask: np.ndarray) -> tuple[float, float]:
    """The pixel (u, v) deepest inside a mask."""
    dist = ndimage.distance_transform_edt(mask)
    v, u = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(u), float(v)


def minor_axis_yaw(points_xy: np.ndarray) -> float:
    """Yaw (radians, robot frame) of the minor axis of a set of table-plane points."""
    if len(points_xy) < 3:
        return 0.0
    _, evecs = np.linalg.eigh(np.cov((points_xy - points_xy.mean(0)).T))
    return float(np.arctan2(evecs[1, 0], evecs[0, 0]))


class Agent:
    """Chooses (hypothesis, primitive, pixel, angle) for the next interaction."""

    def __init__(self, cfg: AgentConfig, rng: np.random.Generator):
        cfg.validate()
        self.cfg = cfg
        self.rng = rng
        self.count = 0
        self.prim_stats = {p: [1.0, 1.0] for p in ("poke", "grasp")}  # Beta(a, b) of positive outcomes
        self.recent: deque[tuple[float, float]] = deque(maxlen=cfg.recent_memory)

    # ---------------------------------------------------------------- state for resuming
    def state_dict(self) -> dict:
        return {"count": self.count, "prim_stats": self.prim_stats, "recent": list(self.recent)}

    def load_state_dict(self, s: dict) -> None:
        self.count = int(s.get("count", 0))
        self.prim_stats = {k: list(v) for k, v in s.get("prim_stats", self.prim_stats).items()}
        self.recent = deque([tuple(x) for x in s.get("recent", [])], maxlen=self.cfg.recent_memory)

    # ---------------------------------------------------------------- choices
    def raised_regions(self, frame: RGBDFrame) -> list[np.ndarray]:
        """Connected regions standing above the table plane (cold-start / exploration targets)."""
        h = np.nan_to_num(height_above_table(frame.depth, frame.K, frame.camera_pose), nan=-1.0)
        raised = ndimage.binary_opening(h > self.cfg.cold_start_height, iterations=1)
        lab, n = ndimage.label(raised)
        return [lab == i for i in range(1, n + 1) if (lab == i).sum() >= self.cfg.min_hypothesis_area]

    def _primitive(self) -> Primitive:
        p = self.cfg.primitive
        if p in ("poke", "grasp"):
            return Primitive(p)
        if p == "alternate":
            return Primitive.POKE if self.count % 2 == 0 else Primitive.GRASP
        draws = {k: self.rng.beta(a, b) for k, (a, b) in self.prim_stats.items()}
        return Primitive(max(draws, key=draws.get))

    def _pick_hypothesis(self, masks: np.ndarray, scores: np.ndarray) -> int:
        n = len(masks)
        if self.cfg.selection == "uniform":
            return int(self.rng.integers(n))
        w = 1.0 - np.abs(2.0 * np.clip(scores, 0, 1) - 1.0) + 0.05  # uncertainty
        for i, m in enumerate(masks):  # down-weight regions tried recently
            u, v = interior_pixel(m)
            if any(np.hypot(u - a, v - b) < 10 for a, b in self.recent):
                w[i] *= 0.2
        return int(self.rng.choice(n, p=w / w.sum()))

    def _confident_target(self, target: np.ndarray, cmasks: np.ndarray, cscores: np.ndarray) -> np.ndarray | None:
        """The confidence mask to grasp instead of hypothesis `target` (None: keep the hypothesis)."""
        big = [i for i, m in enumerate(cmasks) if m.sum() >= self.cfg.min_hypothesis_area]
        if not big:
            return None
        overlap = np.array([np.count_nonzero(cmasks[i] & target) for i in big])
        if overlap.max() > 0:
            best = max(range(len(big)), key=lambda j: (overlap[j], cscores[big[j]]))
        else:
            best = int(np.argmax([cscores[i] for i in big]))
        return np.asarray(cmasks[big[best]], bool)

    def choose(
        self,
        frame: RGBDFrame,
        masks: np.ndarray,
        scores: np.ndarray,
        confidence_fn: Callable[[RGBDFrame, float], tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> tuple[Action, int, np.ndarray]:
        """-> (action, chosen hypothesis index or -1 for exploration/cold start, the target mask).

        confidence_fn(frame, p) -> (masks, scores) of p-confidence masks; used only when
        cfg.grasp_confidence_p is set and a model hypothesis is grasped (see the module docstring).
        The returned target is then the confidence mask actually grasped, and the index is that of
        the shown hypothesis it overlaps (the chosen one unless the fallback applied)."""
        keep = [i for i, m in enumerate(masks) if m.sum() >= self.cfg.min_hypothesis_area]
        masks, scores = masks[keep], scores[keep]
        chosen = -1
        if len(masks) and self.rng.random() >= self.cfg.exploration:
            chosen = self._pick_hypothesis(masks, scores)
            target = masks[chosen]
            chosen = keep[chosen]
        else:
            regions = self.raised_regions(frame)
            if regions:
                target = regions[int(self.rng.integers(len(regions)))]
            else:  # nothing stands out: a random table pixel (a likely negative, still informative)
                target = np.zeros(frame.depth.shape, bool)
                v, u = self.rng.integers(frame.depth.shape[0]), self.rng.integers(frame.depth.shape[1])
                target[v, u] = True
        prim = self._primitive()
        if (prim == Primitive.GRASP and chosen >= 0 and self.cfg.grasp_confidence_p is not None
                and confidence_fn is not None):
            conf = self._confident_target(target, *confidence_fn(frame, self.cfg.grasp_confidence_p))
            if conf is not None:
                if not (conf & target).any():  # report the shown hypothesis the grasped mask lies in
                    ov = [np.count_nonzero(conf & m) for m in masks]
                    if max(ov) > 0:
                        chosen = keep[int(np.argmax(ov))]
                target = conf
        u, v = interior_pixel(target)
        if prim == Primitive.GRASP:
            pts = world_points(frame.depth, frame.K, frame.camera_pose)[target]
            pts = pts[np.isfinite(pts).all(1)]
            angle = minor_axis_yaw(pts[:, :2]) if len(pts) else 0.0
        else:
            angle = float(self.rng.uniform(-np.pi, np.pi))
        self.count += 1
        self.recent.append((u, v))
        return Action(prim, (u, v), angle=angle, push_length=self.cfg.push_length), chosen, target

    def update(self, primitive: Primitive, positive: bool) -> None:
        """Feedback for the `learned` primitive choice."""
        a, b = self.prim_stats[primitive.value]
        self.prim_stats[primitive.value] = [a + float(positive), b + float(not positive)]
