"""The two jobs of the actor-learner loop as plain objects (no Ray here: learner/fleet/actors.py wraps them).

`CollectorWorker`: one robot, its agent and its own log shard (`RUN/shards/worker_NNN.zarr`, data/shards.py);
`interact()` runs one interaction with the newest model it was given and returns the metrics row. Its
agent/robot state is `RUN/workers/worker_NNN.json`; its quota of the run's `loop.interactions` is fixed by its
id, so a restarted or resumed worker continues where its shard ends.

`LearnerWorker`: the run's `LoopLearner` (learner/loop/learner_side.py) over all shards: `tick()` looks at
the log and runs the retrain / evaluation the log's size has made due, exactly the schedule of the
single-process loop; its state is `RUN/learner_state.json` with the checkpoint `RUN/checkpoints/last.pt`.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.frame_diff import FrameDiffConfig
from data.log import LogFormatError
from data.shards import RunLog, open_shard_writer, shard_path
from learner.loop.agent import Agent, AgentConfig
from learner.loop.collect import Collector, robot_image_size
from learner.loop.init_source import resolve_init
from learner.loop.learner_side import FLEET_LEARNER_STATE, EvalTarget, LearnerState, LoopLearner, atomic_json
from learner.loop.provenance import code_version
from learner.model.checkpoint import model_from_checkpoint, trained_size
from learner.model.network import SegmenterConfig
from learner.train.trainer import TrainConfig, Trainer

WORKERS_DIR = "workers"


def quota(total: int, workers: int, worker_id: int) -> int:
    """Worker `worker_id`'s share of `total` interactions (the first `total % workers` do one more)."""
    return total // workers + (1 if worker_id < total % workers else 0)


def model_payload(deployable: dict[str, Any]) -> bytes:
    """A deployable model dict (LoopLearner.deployable) as bytes, for the model board."""
    buf = io.BytesIO()
    torch.save(deployable, buf)
    return buf.getvalue()


def model_from_payload(payload: bytes):
    """(model, version, input_size) from `model_payload` bytes."""
    ckpt = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    model = model_from_checkpoint(ckpt, "published model")
    model.eval()
    return model, int(ckpt["model_version"]), trained_size(ckpt)


@dataclass
class CollectorSpec:
    """What a collector needs to (re)start: picklable, sent to its actor."""

    run_dir: str
    worker_id: int
    quota: int  # interactions this worker does in the whole run
    robot: dict[str, Any]  # the robot config node as a plain dict (kind, ... ; seed is offset by worker_id)
    agent: AgentConfig
    frame_diff: FrameDiffConfig
    seed: int = 0
    torch_threads: int = 1


class CollectorWorker:
    """One robot acting on its own shard (module docstring)."""

    def __init__(self, spec: CollectorSpec):
        from learner.loop.setup import make_robot_from_dict

        torch.set_num_threads(spec.torch_threads)
        self.spec = spec
        self.run_dir = Path(spec.run_dir)
        robot_cfg = dict(spec.robot)
        if "seed" in robot_cfg:  # every worker its own scenes
            robot_cfg["seed"] = int(robot_cfg["seed"]) + 1000 * spec.worker_id
        self.robot = make_robot_from_dict(robot_cfg)
        self.log = open_shard_writer(self.run_dir, spec.worker_id, getattr(self.robot, "kind", "unknown"),
                                     *robot_image_size(self.robot), code_version=code_version())  # repairs a torn tail
        agent = Agent(spec.agent, np.random.default_rng(spec.seed + 7919 * (spec.worker_id + 1)))
        self.collector = Collector(self.robot, agent, spec.frame_diff)
        self.state_path = self.run_dir / WORKERS_DIR / f"worker_{spec.worker_id:03d}.json"
        if self.state_path.exists():
            self.collector.load_state_dict(json.loads(self.state_path.read_text()))
        self.robot.connect()

    @property
    def done(self) -> int:
        return len(self.log)

    def set_model(self, payload: bytes) -> None:
        self.collector.set_model(*model_from_payload(payload))

    def interact(self) -> dict[str, Any] | None:
        """One interaction (None when this worker's quota is done)."""
        if self.done >= self.spec.quota:
            return None
        row = self.collector.interact(self.log)
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_json(self.state_path, self.collector.state_dict())
        return {**row, "worker": self.spec.worker_id, "shard_records": self.done}

    def close(self) -> None:
        try:
            self.robot.disconnect()
        finally:
            self.log.close()


@dataclass
class LearnerSpec:
    run_dir: str
    loop: Any  # LoopSettings
    train: TrainConfig
    model: SegmenterConfig
    eval_target: EvalTarget
    init: str = ""  # learner.init (resolved in the actor: a model is not shipped through Ray's object store)


class LearnerWorker:
    """The run's learner over all shards (module docstring)."""

    def __init__(self, spec: LearnerSpec):
        self.run_dir = Path(spec.run_dir)
        self.state_path = self.run_dir / FLEET_LEARNER_STATE
        state = LearnerState.from_json(json.loads(self.state_path.read_text())) if self.state_path.exists() else LearnerState()
        self.trainer = Trainer(spec.train, spec.model, seed=spec.loop.seed)
        self.learner = LoopLearner(self.run_dir, spec.loop, self.trainer, state, self._save_state, spec.eval_target,
                                   self.run_dir)
        self.log: RunLog | None = None  # opened by `count` once a shard exists
        init = self.learner.load(self.count(), resolve_init(spec.init) if spec.init else None)
        if init is not None:
            self.learner.start_from(init)

    def _save_state(self) -> None:
        atomic_json(self.state_path, self.learner.state.__dict__)
        self.learner.mark_saved()

    def count(self) -> int:
        """Committed records over all shards now (the last count while a collector is still creating its shard:
        a half-created store is not a log yet)."""
        if self.log is None:
            if not _has_log(self.run_dir):
                return 0
            try:
                self.log = RunLog.open(self.run_dir)
            except LogFormatError:
                return 0
        self.log.refresh()
        return len(self.log)

    @property
    def version(self) -> int:
        return self.trainer.model_version

    def published(self) -> bytes | None:
        """The current model as board payload (None before the first trained model)."""
        return model_payload(self.learner.deployable()) if self.trainer.model_version > 0 else None

    def tick(self, idle_sleep_s: float = 0.5) -> dict[str, Any]:
        """Run what the log's size has made due; sleep a little when nothing was."""
        before = self.trainer.model_version
        n = self.count()
        changed = self.learner.catch_up(n)
        if not changed:
            time.sleep(idle_sleep_s)
        return {"records": n, "model_version": self.trainer.model_version, "changed": self.trainer.model_version != before}

    def finish(self) -> dict[str, Any]:
        """After the collectors stopped: every retrain still due, a usable model, a final evaluation, the model
        file."""
        n = self.count()
        self.learner.finish(n)
        self._save_state()
        st = self.learner.state
        return {"records": n, "model_version": self.trainer.model_version, "train_steps": self.trainer.step,
                "train_seconds": self.trainer.train_seconds, "last_eval": dict(st.last_eval),
                "baseline": dict(st.baseline), "init": st.init.get("source")}


def _has_log(run_dir: Path) -> bool:
    return (run_dir / "shards").is_dir() and any((run_dir / "shards").glob("*.zarr"))


__all__ = ["CollectorSpec", "CollectorWorker", "LearnerSpec", "LearnerWorker", "quota", "shard_path"]
