"""Turn one executed interaction (before/after captures, action, outcome) into a log record.

This is where frame differencing meets the robot's own proprioception: a grasp that held its object
(gripper width) and produced a mask is "moved_held"; a grasp that did not hold but moved something is
"moved_not_held" (partial masks are common then); a poke that moved something is "moved". Actions the
robot refused or could not execute are INVALID with the robot's reason and are logged all the same.
"""

from __future__ import annotations

import time

import numpy as np

from data.frame_diff import FrameDiffConfig, frame_difference
from data.schema import InteractionRecord, Label
from robot.base import Action, Outcome, RGBDFrame


def build_record(
    before: RGBDFrame,
    after: RGBDFrame,
    action: Action,
    outcome: Outcome,
    *,
    hypotheses: np.ndarray | None = None,
    hypothesis_scores: np.ndarray | None = None,
    chosen_hypothesis: int = -1,
    model_version: int = 0,
    robot_kind: str = "sim",
    table_bounds: tuple[tuple[float, float], tuple[float, float]] | None = None,
    frame_diff: FrameDiffConfig | None = None,
    t_start: float | None = None,
) -> InteractionRecord:
    """Frame-difference the captures and pack everything into an `InteractionRecord`."""
    H, W = before.depth.shape
    if after.depth.shape != (H, W):
        raise ValueError(f"after capture is {after.depth.shape}, before capture is {(H, W)}: resolutions differ")
    if hypotheses is None:
        hypotheses = np.zeros((0, H, W), bool)
        hypothesis_scores = np.zeros(0, np.float32)
    if outcome.executed:
        res = frame_difference(before.rgb, before.depth, after.rgb, after.depth, before.K, before.camera_pose,
                               action.pixel, table_bounds, frame_diff)
        mask, label, reason = res.mask, res.label, res.reason
        if label == Label.POSITIVE and action.primitive.value == "grasp":
            reason = "moved_held" if outcome.grasp_success else "moved_not_held"
    else:
        mask, label, reason = np.zeros((H, W), bool), Label.INVALID, outcome.reason or "not_executed"
    grasp = -1 if outcome.grasp_success is None else int(bool(outcome.grasp_success))
    return InteractionRecord(
        rgb_before=before.rgb, depth_before=before.depth, rgb_after=after.rgb, depth_after=after.depth,
        K=np.asarray(before.K, np.float64), camera_pose=np.asarray(before.camera_pose, np.float64),
        primitive=action.primitive.value, pixel=np.asarray(action.pixel, np.float32), angle=float(action.angle),
        push_length=float(action.push_length), target_robot=np.asarray(outcome.target_robot, np.float32),
        hypotheses=np.asarray(hypotheses, bool), hypothesis_scores=np.asarray(hypothesis_scores, np.float32),
        chosen_hypothesis=int(chosen_hypothesis), mask=mask, label=label, label_reason=reason,
        t_start=float(t_start if t_start is not None else before.timestamp), t_end=time.time(),
        model_version=int(model_version), robot_kind=robot_kind, grasp_success=grasp,
    )
