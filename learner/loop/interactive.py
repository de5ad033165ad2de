"""The interactive learning loop (Pathak et al., Algorithm 1), resumable.

capture -> hypotheses from the current segmenter -> the agent picks one and a primitive -> execute ->
capture -> frame difference -> append to the log -> every `update_interval` interactions retrain
(warm start, in this process) and hot-swap the model -> every `eval_interval` interactions evaluate on
held-out scenes.

Run directory (Hydra's output directory):
    interactions.zarr      the interaction log (source of truth for what was done)
    checkpoints/last.pt    trainer checkpoint (model, optimiser, RNG, step); atomic writes
    model/segmenter.pt     the latest deployable model (state dict + config + metrics)
    metrics.jsonl          one JSON object per interaction / training chunk / evaluation
    loop_state.json        counters, agent and robot state for resuming (and the `learner.init` source); atomic
    eval_scenes/           held-out scenes used by the periodic evaluation (sim only)
Running again on the same directory resumes: the log decides how many interactions are done (a
record is either fully committed or not there), the rest comes from loop_state.json and the checkpoint.

A fresh run directory may start from a trained model (`init`, `learner.loop.init_source.resolve_init`: a run directory, a .pt or an
ONNX export's source checkpoint): its weights and architecture, a fresh optimiser, model version 1 (the
agent acts on its proposals from the first interaction). The run writes its own checkpoint at once, so
resuming never needs the source again, and a run directory that has a checkpoint ignores `init`.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data.frame_diff import FrameDiffConfig
from data.log import InteractionLog
from learner.loop.agent import Agent, AgentConfig
from learner.loop.collect import Collector, robot_image_size
from learner.loop.init_source import InitSource
from learner.loop.learner_side import LOOP_STATE, EvalTarget, LearnerState, LoopLearner, atomic_json
from learner.loop.provenance import code_version
from learner.model.network import SegmenterConfig
from learner.proposals.config import ProposalConfig
from learner.train.trainer import TrainConfig, Trainer
from robot.base import Robot


@dataclass
class LoopSettings:
    """The outer loop. time_budget in seconds (0 = none); intervals in interactions."""

    interactions: int = 300
    update_interval: int = 50
    train_steps: int = 100  # optimiser steps per retrain (warm-started)
    time_budget: float = 600.0
    eval_interval: int = 100  # 0 = evaluate only at the end
    eval_scenes: int = 30
    eval_split: str = "val"
    # the twin the held-out scenes come from: narrow (the default cell), wide (randomised cells) or cross
    # (randomised cells with evaluation-only objects; sim/assets.py CROSS_SPLITS)
    eval_domain: str = "narrow"
    seed: int = 0
    progress: bool = True
    # the proposals evaluated on the held-out scenes (the agent acts on AgentConfig.proposals)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    # live view (data/rerun_view.py, the `viz` extra): none | rerun. viz_path: "" = RUN/rerun.rrd (a resumed
    # run writes rerun.1.rrd, ...), another .rrd path, "spawn" (native viewer), "serve" (web viewer on
    # port 9090, gRPC 9876) or the rerun+http:// URL of a running viewer
    viz: str = "none"
    viz_path: str = ""
    # actor-learner on Ray (learner/fleet/, the `ray` extra): N collector actors, each with its own robot and
    # log shard, and one learner actor that retrains in the background; 0 = this single process, no Ray.
    # ray_address: "" = a local Ray instance; "auto" or "ray://host:10001" = a running cluster (docs/scale.md)
    workers: int = 0
    ray_address: str = ""
    # a learner that fell behind by several retrain points (loop.workers > 0): "merge" = one retrain on the
    # newest log for all of them; "every" = each point its own retrain, in order (a reproducible number of
    # retrains, N // update_interval, at the cost of a learner that lags further behind)
    retrain_points: str = "merge"


@dataclass
class LoopState(LearnerState):
    """loop_state.json of a single-process run: the learner's state plus the robot side's."""

    elapsed_s: float = 0.0
    agent: dict[str, Any] = field(default_factory=dict)
    agent_rng: dict[str, Any] = field(default_factory=dict)
    robot: dict[str, Any] = field(default_factory=dict)


class InteractiveLoop:
    def __init__(self, run_dir: str | Path, robot: Robot, loop: LoopSettings, train_cfg: TrainConfig,
                 model_cfg: SegmenterConfig, agent_cfg: AgentConfig, frame_diff: FrameDiffConfig,
                 config_snapshot: dict | None = None, init: InitSource | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.robot = robot
        self.loop = loop
        self.frame_diff = frame_diff
        self.config_snapshot = config_snapshot or {}
        self.log_path = self.run_dir / "interactions.zarr"
        self.state_path = self.run_dir / LOOP_STATE
        self.init = init  # used only when the run directory has no checkpoint of its own (see _load)
        self.trainer = Trainer(train_cfg, model_cfg, seed=loop.seed)
        self.agent = Agent(agent_cfg, np.random.default_rng(loop.seed))
        self.collector = Collector(robot, self.agent, frame_diff)
        self.state = LoopState()
        cell = getattr(getattr(robot, "cfg", None), "cell", "") or ""
        self.learner = LoopLearner(self.run_dir, loop, self.trainer, self.state, self._save_state,
                                   EvalTarget(getattr(robot, "kind", ""), cell), self.log_path)
        self.ckpt_path, self.model_path = self.learner.ckpt_path, self.learner.model_path
        self.metrics_path = self.learner.metrics_path
        self._stop = False
        self.session: dict[str, Any] = {"interactions": 0, "positives": 0, "hits_model": [], "hits_explore": [],
                                        "by_version": {}}

    # ---------------------------------------------------------------- persistence
    def _load(self, log: InteractionLog) -> None:
        if self.state_path.exists():
            self.state = LoopState.from_json(json.loads(self.state_path.read_text()))
            self.learner.state = self.state
            self.collector.load_state_dict({"agent": self.state.agent, "agent_rng": self.state.agent_rng,
                                            "robot": self.state.robot})
        # the log is the source of truth for the count (a crash may have cut the state file)
        self.init = self.learner.load(len(log), self.init)

    def _save_state(self) -> None:
        c = self.collector.state_dict()
        self.state.agent, self.state.agent_rng, self.state.robot = c["agent"], c["agent_rng"], c.get("robot", {})
        atomic_json(self.state_path, self.state.__dict__)
        self.learner.mark_saved()

    def _metric(self, rec: dict[str, Any]) -> None:
        self.learner.metric(rec)

    def evaluate(self) -> dict[str, float]:
        return self.learner.evaluate()

    # ---------------------------------------------------------------- one interaction
    def interact(self, log: InteractionLog) -> dict[str, Any]:
        """One interaction with the trainer's current model (learner/loop/collect.py)."""
        self.collector.set_model(self.trainer.model, self.trainer.model_version, self.trainer.input_size)
        return self.collector.interact(log)

    # ---------------------------------------------------------------- main
    def _on_sigint(self, signum, frame) -> None:
        if self._stop:
            raise KeyboardInterrupt
        self._stop = True
        tqdm.write("Ctrl-C: stopping after the current interaction (press again to abort at once)")

    def run(self) -> dict[str, Any]:
        lp = self.loop
        snapshot = {"config": self.config_snapshot}
        version = code_version()  # git commit (+dirty) of the running code: the log keeps its creator's
        with InteractionLog.open_or_create(self.log_path, *self._image_size(), config_snapshot=snapshot,
                                           code_version=version) as log:
            self._load(log)
            start_n = self.state.interactions
            self._metric({"kind": "run_start", "interactions": start_n, "code_version": version, "unix": time.time()})
            if self.init is not None:  # a fresh run directory (no checkpoint of its own): start from the given model
                self.learner.start_from(self.init)
                if lp.eval_interval:  # where the given model starts in this cell: the first point of its curve
                    self.evaluate()
            self._viz = None
            if lp.viz == "rerun":
                from data.rerun_view import LiveRerun

                self._viz = LiveRerun.for_run(lp.viz_path, self.run_dir, self.metrics_path)
                tqdm.write(f"live view: {self._viz.where}")
            self.collector.viz = self._viz
            old = signal.signal(signal.SIGINT, self._on_sigint)
            self.learner.catch_up(self.state.interactions)  # a retrain or evaluation a killed run left undone
            t_start = time.time()
            bar = tqdm(total=lp.interactions, initial=min(start_n, lp.interactions), desc="interactions",
                       disable=not lp.progress, dynamic_ncols=True)
            try:
                with self.robot:
                    while self.state.interactions < lp.interactions and not self._stop:
                        if lp.time_budget and time.time() - t_start > lp.time_budget:
                            tqdm.write(f"time budget of {lp.time_budget:.0f} s reached")
                            break
                        row = self.interact(log)
                        self.state.interactions = row["index"] + 1
                        self._metric(row)
                        self._session_update(row)
                        self.learner.catch_up(self.state.interactions)
                        if self._viz is not None:
                            self._viz.poll()  # the metrics rows written since (interaction, training, evaluation)
                        self._save_state()
                        bar.update(1)
                        bar.set_postfix(self._postfix())
                    self.learner.finish(self.state.interactions)
            finally:
                bar.close()
                signal.signal(signal.SIGINT, old)
                if self._viz is not None:
                    self._viz.close()
                self.state.elapsed_s += time.time() - t_start
                self._save_state()
        return self.summary(start_n)

    # ---------------------------------------------------------------- reporting
    def _image_size(self) -> tuple[int, int]:
        return robot_image_size(self.robot)

    def _session_update(self, row: dict[str, Any]) -> None:
        s = self.session
        s["interactions"] += 1
        s["positives"] += row["label"] == "positive"
        if "hit_object_gt" in row:
            (s["hits_model"] if row["chosen_hypothesis"] >= 0 else s["hits_explore"]).append(row["hit_object_gt"])
        if row["chosen_hypothesis"] >= 0:  # what the model proposed, per model version (did it get better?)
            v = s["by_version"].setdefault(str(row["model_version"]), {"n": 0, "positive": 0, "hit_gt": []})
            v["n"] += 1
            v["positive"] += row["label"] == "positive"
            if "hit_object_gt" in row:
                v["hit_gt"].append(bool(row["hit_object_gt"]))

    def _postfix(self) -> dict[str, str]:
        s = self.session
        out = {"pos": f"{s['positives'] / max(s['interactions'], 1):.2f}", "model": f"v{self.trainer.model_version}"}
        if s["hits_model"]:
            out["hit(model)"] = f"{np.mean(s['hits_model'][-50:]):.2f}"
        if "AP50" in self.state.last_eval:
            out["AP50"] = f"{self.state.last_eval['AP50']:.3f}"
        return out

    def summary(self, start_n: int) -> dict[str, Any]:
        s = self.session
        ev, base = self.state.last_eval, self.state.baseline
        return {
            "interactions_total": self.state.interactions,
            "interactions_this_run": s["interactions"],
            "resumed_from": start_n,
            "positive_rate_this_run": s["positives"] / max(s["interactions"], 1),
            "hit_rate_model_proposals_gt": float(np.mean(s["hits_model"])) if s["hits_model"] else None,
            "hit_rate_exploration_gt": float(np.mean(s["hits_explore"])) if s["hits_explore"] else None,
            "model_proposals_by_version": {
                k: {"n": v["n"], "positive_rate": v["positive"] / v["n"],
                    "hit_rate_gt": float(np.mean(v["hit_gt"])) if v["hit_gt"] else None}
                for k, v in s["by_version"].items()},
            "model_version": self.trainer.model_version,
            "init": self.state.init.get("source"),
            "train_steps": self.trainer.step,
            "train_seconds": self.trainer.train_seconds,
            "eval": {k: ev.get(k) for k in ("AP50", "AP", "overlap_F", "boundary_F") if k in ev},
            "baseline_depth_clustering": {k: base.get(k) for k in ("AP50", "AP", "overlap_F", "boundary_F") if k in base},
            "run_dir": str(self.run_dir),
            "log": str(self.log_path),
            "model": str(self.model_path),
            "metrics": str(self.metrics_path),
        }
