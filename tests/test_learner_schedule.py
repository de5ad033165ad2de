"""The learner side's schedule (learner/loop/learner_side.py): which retrains a log of n records makes due,
never skipping one, never repeating one a kill left finished, and merging or not the points a lagging learner
missed. The retrain itself is replaced by a counter here; tests/test_loop.py and tests/test_fleet.py run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from learner.loop.interactive import LoopSettings
from learner.loop.learner_side import EvalTarget, LearnerState, LoopLearner


class _Trainer:
    model_version = 0
    pending = None


def _learner(tmp_path: Path, points: str = "merge", state: LearnerState | None = None) -> tuple[LoopLearner, list[int]]:
    lp = LoopSettings(update_interval=10, train_steps=5, eval_interval=0, retrain_points=points)
    learner = LoopLearner(tmp_path, lp, _Trainer(), state or LearnerState(), lambda: learner.mark_saved(),
                          EvalTarget(), tmp_path)
    done: list[int] = []

    def retrain() -> bool:
        learner.trainer.model_version += 1
        learner.trainer.pending = None
        done.append(learner.state.interactions)
        return True

    learner.retrain = retrain
    return learner, done


def test_one_record_at_a_time_meets_every_point(tmp_path):
    learner, done = _learner(tmp_path)
    learner.load(0, None)
    for n in range(1, 36):
        learner.catch_up(n)
    assert done == [10, 20, 30]


@pytest.mark.parametrize("points, expected", [("merge", [35]), ("every", [35, 35, 35])])
def test_a_learner_that_fell_behind_merges_or_replays_the_points(tmp_path, points, expected):
    learner, done = _learner(tmp_path, points)
    learner.load(0, None)
    learner.catch_up(35)
    while learner.retrain_due(35):
        learner.catch_up(35)
    assert done == expected and learner.state.retrain_checked >= 30


def test_a_retrain_finished_after_the_last_state_save_is_not_repeated(tmp_path):
    # the state file says v1 and points up to 10 handled; the checkpoint already holds v2 (the retrain at 20
    # finished, then the process died before the state was saved)
    learner, done = _learner(tmp_path, state=LearnerState(model_version=1, retrain_checked=10))
    learner.trainer.model_version = 1
    learner.load(21, None)
    learner.trainer.model_version = 2  # what trainer.load found in the checkpoint
    learner.catch_up(21)
    assert done == [] and learner.state.retrain_checked == 21
    learner.catch_up(30)
    assert done == [30]


def test_a_retrain_cut_midway_is_finished_first(tmp_path):
    learner, done = _learner(tmp_path, state=LearnerState(retrain_checked=10))
    learner.load(15, None)
    learner.trainer.pending = object()  # the checkpoint held an unfinished retrain
    assert learner.retrain_due(15)
    learner.catch_up(15)
    assert done == [15] and not learner.retrain_due(15)


def test_a_state_file_from_before_the_schedule_field_counts_as_up_to_date(tmp_path):
    learner, done = _learner(tmp_path, state=LearnerState.from_json({"model_version": 3, "interactions": 30}))
    learner.load(34, None)
    learner.catch_up(34)
    assert done == [] and learner.state.retrain_checked == 34
