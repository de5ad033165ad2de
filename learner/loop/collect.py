"""One interaction of the loop: capture, propose, act, capture, frame-difference, append.

`Collector` is the robot side of the loop and knows nothing of training: it holds the robot, the agent
and the model it currently acts on (`set_model`), and `interact(log)` appends one record and returns its
metrics row. The single-process loop (learner/loop/interactive.py) hands it the trainer's model after
every retrain; a fleet collector (learner/fleet/) hot-swaps the newest published model between
interactions. Model version 0 is the cold start: no proposals, the agent explores.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from data.frame_diff import FrameDiffConfig
from data.log import InteractionLog
from data.schema import Label
from learner.loop.agent import Agent
from learner.loop.record import build_record
from learner.model.backend import torch_segmenter
from robot.base import Robot


def robot_image_size(robot: Robot) -> tuple[int, int]:
    """(H, W) pixels of the robot's camera images, from its config (240x320 when it names none)."""
    cfg = getattr(robot, "cfg", None)
    return int(getattr(cfg, "height", 240)), int(getattr(cfg, "width", 320))


class Collector:
    """The robot, the agent and the model it acts on; one `interact` per interaction."""

    def __init__(self, robot: Robot, agent: Agent, frame_diff: FrameDiffConfig):
        self.robot = robot
        self.agent = agent
        self.frame_diff = frame_diff
        self.model = None  # a PointSegmenter, None until the first trained model arrives
        self.model_version = 0
        self.input_size: tuple[int, int] | None = None  # (H, W) pixels the model was trained at
        self.viz = None  # an optional live view with record(index, rec) -> seconds (data/rerun_view.py)

    def set_model(self, model: Any, version: int, input_size: tuple[int, int] | None) -> None:
        """Act on `model` (trained at `input_size`, (H, W) pixels) from the next interaction on."""
        self.model, self.model_version, self.input_size = model, int(version), input_size

    def _segmenter(self):
        """The current model with the proposals the agent acts on."""
        return torch_segmenter(self.model, self.agent.cfg.proposals, net_size=self.input_size,
                               version=self.model_version)

    def _confidence_fn(self):
        """p-confidence masks for grasp targets (Latent-MaskRCNN), when `agent.grasp_confidence_p` is set."""
        cfg = self.agent.cfg
        if cfg.grasp_confidence_p is None or self.model_version == 0 or self.model is None:
            return None
        from learner.proposals.segmenter import SamplerConfig

        sampler = SamplerConfig(samples=cfg.grasp_confidence_samples)

        def fn(frame, p: float):
            inst = self._segmenter().predict_distributional(frame.rgb, frame.depth, frame.K, mode="confidence", p=p,
                                                            sampler=sampler)
            return inst.masks, inst.scores

        return fn

    def interact(self, log: InteractionLog) -> dict[str, Any]:
        """One interaction appended to `log`; returns its metrics row ("kind": "interaction")."""
        t0 = time.time()
        before = self.robot.get_observation()
        H, W = before.depth.shape
        masks, scores = np.zeros((0, H, W), bool), np.zeros(0, np.float32)
        if self.model_version > 0 and self.model is not None:  # an untrained model proposes nothing useful
            inst = self._segmenter().predict(before.rgb, before.depth, before.K)
            masks, scores = inst.masks, inst.scores
        action, chosen, _ = self.agent.choose(before, masks, scores, confidence_fn=self._confidence_fn())
        outcome = self.robot.send_action(action)
        after = self.robot.get_observation()
        rec = build_record(before, after, action, outcome, hypotheses=masks, hypothesis_scores=scores,
                           chosen_hypothesis=chosen, model_version=self.model_version,
                           robot_kind=getattr(self.robot, "kind", "unknown"), table_bounds=self.robot.table_bounds,
                           frame_diff=self.frame_diff, t_start=t0)
        index = log.append(rec)
        viz_seconds = self.viz.record(index, rec) if self.viz is not None else None
        if rec.label != Label.INVALID:
            self.agent.update(action.primitive, rec.label == Label.POSITIVE)
        row = {"kind": "interaction", "index": index, "primitive": action.primitive.value, "label": rec.label.name.lower(),
               "reason": rec.label_reason, "chosen_hypothesis": chosen, "n_hypotheses": int(len(masks)),
               "model_version": self.model_version, "seconds": time.time() - t0, "unix": time.time()}
        if viz_seconds is not None:  # the live view's share of `seconds` (data/rerun_view.py)
            row["viz_seconds"] = viz_seconds
        gt = outcome.info.get("ground_truth") if outcome.info else None
        if gt is not None:  # sim only: did the chosen pixel land on an object? (evaluation, never training)
            u, v = (int(round(x)) for x in action.pixel)
            row["hit_object_gt"] = bool(gt["instance_label_before"][v, u] > 0)
        return row

    # ---------------------------------------------------------------- resumable state
    def state_dict(self) -> dict[str, Any]:
        """The agent's state and RNG and the robot's state (JSON-able), for resuming."""
        out = {"agent": self.agent.state_dict(), "agent_rng": self.agent.rng.bit_generator.state}
        if hasattr(self.robot, "state_dict"):
            out["robot"] = self.robot.state_dict()
        return out

    def load_state_dict(self, s: dict[str, Any]) -> None:
        if s.get("agent"):
            self.agent.load_state_dict(s["agent"])
        if s.get("agent_rng"):
            self.agent.rng.bit_generator.state = s["agent_rng"]
        if s.get("robot") and hasattr(self.robot, "load_state_dict"):
            self.robot.load_state_dict(s["robot"])
