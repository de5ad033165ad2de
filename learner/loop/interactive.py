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
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data.frame_diff import FrameDiffConfig
from data.log import InteractionLog
from data.schema import Label
from learner.loop.agent import Agent, AgentConfig
from learner.loop.init_source import InitSource
from learner.loop.provenance import code_version
from learner.loop.record import build_record
from learner.model.backend import torch_segmenter
from learner.model.network import SegmenterConfig
from learner.proposals.config import ProposalConfig
from learner.train.trainer import CHECKPOINT_NAME, TrainConfig, Trainer, log_source
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


@dataclass
class LoopState:
    interactions: int = 0
    model_version: int = 0
    elapsed_s: float = 0.0
    last_eval: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    agent: dict[str, Any] = field(default_factory=dict)
    agent_rng: dict[str, Any] = field(default_factory=dict)
    robot: dict[str, Any] = field(default_factory=dict)
    init: dict[str, Any] = field(default_factory=dict)  # the `learner.init` source this run started from, if any


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


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
        self.ckpt_path = self.run_dir / "checkpoints" / CHECKPOINT_NAME
        self.model_path = self.run_dir / "model" / "segmenter.pt"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.state_path = self.run_dir / "loop_state.json"
        self.init = init  # used only when the run directory has no checkpoint of its own (see _load)
        self.trainer = Trainer(train_cfg, model_cfg, seed=loop.seed)
        self.agent = Agent(agent_cfg, np.random.default_rng(loop.seed))
        self.state = LoopState()
        self._stop = False
        self.session: dict[str, Any] = {"interactions": 0, "positives": 0, "hits_model": [], "hits_explore": [],
                                        "by_version": {}}

    # ---------------------------------------------------------------- persistence
    def _load(self, log: InteractionLog) -> None:
        if self.state_path.exists():
            s = json.loads(self.state_path.read_text())
            self.state = LoopState(**s)
            self.agent.load_state_dict(self.state.agent)
            if self.state.agent_rng:
                self.agent.rng.bit_generator.state = self.state.agent_rng
            if hasattr(self.robot, "load_state_dict"):
                self.robot.load_state_dict(self.state.robot)
        self.state.interactions = len(log)  # the log is the source of truth (a crash may have cut the state file)
        if self.ckpt_path.exists():
            if self.init is not None:
                tqdm.write(f"learner.init={self.init.given} ignored: resuming {self.run_dir} from its own checkpoint "
                           f"{self.ckpt_path}")
            self.trainer.load(self.ckpt_path)
            self.state.model_version = self.trainer.model_version
            self.init = None

    def _start_from(self, init: InitSource) -> None:
        """A fresh run from a trained model: its weights and architecture (over the configured
        learner.model), a fresh optimiser, model version 1; the run's own checkpoint is written at once."""
        wanted = self.trainer.model.config.to_dict()
        got = init.model.config.to_dict()
        differ = {k: {"config": wanted.get(k), "checkpoint": v} for k, v in got.items() if wanted.get(k) != v}
        self.trainer.start_from(init.model, model_version=1, input_size=init.input_size)
        self.state.model_version = self.trainer.model_version
        self.state.init = {"source": init.given, "checkpoint": str(init.checkpoint), "kind": init.kind,
                           "source_meta": init.meta, "at_interaction": self.state.interactions}
        self._metric({"kind": "init", "source": init.given, "checkpoint": str(init.checkpoint), "source_kind": init.kind,
                      "model_version": self.trainer.model_version, "interactions": self.state.interactions,
                      "source_meta": init.meta, "model_config_from_checkpoint": sorted(differ)})
        self.trainer.save(self.ckpt_path)  # from now on this run resumes from its own checkpoint
        tqdm.write(f"learner.init: starting from {init.checkpoint} as model v{self.trainer.model_version} "
                   f"({self.trainer.model.num_parameters()} parameters, fresh optimiser)")
        if differ:
            tqdm.write("learner.init: the checkpoint's architecture wins over learner.model.* for "
                       + ", ".join(f"{k} (config {v['config']}, checkpoint {v['checkpoint']})" for k, v in differ.items()))
        self._save_state()

    def _save_state(self) -> None:
        self.state.agent = self.agent.state_dict()
        self.state.agent_rng = self.agent.rng.bit_generator.state
        if hasattr(self.robot, "state_dict"):
            self.state.robot = self.robot.state_dict()
        _atomic_json(self.state_path, self.state.__dict__)

    def _metric(self, rec: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(rec, default=float) + "\n")

    def export_model(self) -> Path:
        """Write the latest deployable model (state dict + config + provenance + last metrics)."""
        self.model_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.model_path.with_suffix(".tmp")
        torch.save({
            "model": self.trainer.model.state_dict(),
            "model_config": self.trainer.model.config.to_dict(),
            "model_version": self.trainer.model_version,
            "interactions": self.state.interactions,
            "train_steps": self.trainer.step,
            "input_size": list(self.trainer.input_size) if self.trainer.input_size else None,
            "metrics": json.dumps(self.state.last_eval),
            "oracle": False,
        }, tmp)
        os.replace(tmp, self.model_path)
        return self.model_path

    # ---------------------------------------------------------------- evaluation
    def _eval_dir(self) -> Path | None:
        if self.loop.eval_scenes <= 0 or getattr(self.robot, "kind", "") != "sim":
            return None
        domain = self.loop.eval_domain
        # a robot in a named cell (robot.cell) is evaluated in that cell's randomised scenes (with held-out objects)
        cell = getattr(getattr(self.robot, "cfg", None), "cell", "") if domain != "narrow" else ""
        d = self.run_dir / ("eval_scenes" if domain == "narrow" else f"eval_scenes_{domain}{'_' + cell if cell else ''}")
        if not (d / "instances_coco.json").exists():
            from sim.export_scenes import export_scenes

            if d.exists():  # a torn earlier export: start it again
                import shutil

                shutil.rmtree(d)
            export_scenes(d, self.loop.eval_split, self.loop.eval_scenes, seed=1000 + self.loop.seed, progress=False,
                          domain=domain, cell=cell)
        return d

    def evaluate(self) -> dict[str, float]:
        from learner.evaluate.harness import evaluate_segmenter

        d = self._eval_dir()
        if d is None:
            return {}
        if not self.state.baseline:
            from learner.evaluate.baselines.depth_clustering import DepthClusteringSegmenter

            b = evaluate_segmenter(DepthClusteringSegmenter().predict, d, double_pick=False, per_scene=False)
            self.state.baseline = {k: v for k, v in b.items() if isinstance(v, float)}
            self._metric({"kind": "baseline", "name": "depth_clustering", **self.state.baseline})
        seg = torch_segmenter(self.trainer.model, self.loop.proposals, net_size=self.trainer.input_size)
        from data.scene_io import list_scenes
        from learner.evaluate.preview import PREVIEW_NAME, PREVIEW_SCENES, write_preview

        ids, shown = list_scenes(d)[:PREVIEW_SCENES], []

        def predict(rgb, depth, K):  # the first scenes' predictions also go into RUN/eval_preview.png
            out = seg.predict(rgb, depth, K)
            if len(shown) < len(ids):
                shown.append((ids[len(shown)], out))
            return out

        r = evaluate_segmenter(predict, d, double_pick=False, per_scene=False)
        res = {k: v for k, v in r.items() if isinstance(v, float)}
        self.state.last_eval = {"interactions": self.state.interactions, "model_version": self.trainer.model_version, **res}
        write_preview(self.run_dir / PREVIEW_NAME, d, shown,
                      f"model v{self.trainer.model_version} after {self.state.interactions} interactions, held-out "
                      f"{self.loop.eval_split} scenes: AP50 {res.get('AP50', float('nan')):.3f}")
        self._metric({"kind": "eval", **self.state.last_eval})
        return res

    # ---------------------------------------------------------------- one interaction
    def interact(self, log: InteractionLog) -> dict[str, Any]:
        t0 = time.time()
        before = self.robot.get_observation()
        H, W = before.depth.shape
        masks, scores = np.zeros((0, H, W), bool), np.zeros(0, np.float32)
        if self.trainer.model_version > 0:  # an untrained model proposes nothing useful: cold start
            inst = self._segmenter().predict(before.rgb, before.depth, before.K)
            masks, scores = inst.masks, inst.scores
        action, chosen, _ = self.agent.choose(before, masks, scores, confidence_fn=self._confidence_fn())
        outcome = self.robot.send_action(action)
        after = self.robot.get_observation()
        rec = build_record(before, after, action, outcome, hypotheses=masks, hypothesis_scores=scores,
                           chosen_hypothesis=chosen, model_version=self.trainer.model_version,
                           robot_kind=getattr(self.robot, "kind", "unknown"), table_bounds=self.robot.table_bounds,
                           frame_diff=self.frame_diff, t_start=t0)
        index = log.append(rec)
        viz = getattr(self, "_viz", None)
        viz_seconds = viz.record(index, rec) if viz is not None else None
        if rec.label != Label.INVALID:
            self.agent.update(action.primitive, rec.label == Label.POSITIVE)
        row = {"kind": "interaction", "index": index, "primitive": action.primitive.value, "label": rec.label.name.lower(),
               "reason": rec.label_reason, "chosen_hypothesis": chosen, "n_hypotheses": int(len(masks)),
               "model_version": self.trainer.model_version, "seconds": time.time() - t0}
        if viz_seconds is not None:  # the live view's share of `seconds` (data/rerun_view.py)
            row["viz_seconds"] = viz_seconds
        gt = outcome.info.get("ground_truth") if outcome.info else None
        if gt is not None:  # sim only: did the chosen pixel land on an object? (evaluation, never training)
            u, v = (int(round(x)) for x in action.pixel)
            row["hit_object_gt"] = bool(gt["instance_label_before"][v, u] > 0)
        return row

    def _segmenter(self):
        """The current model (retrained in place) with the proposals the agent acts on."""
        return torch_segmenter(self.trainer.model, self.agent.cfg.proposals, net_size=self.trainer.input_size,
                               version=self.trainer.model_version)

    def _confidence_fn(self):
        """p-confidence masks for grasp targets (Latent-MaskRCNN), when `agent.grasp_confidence_p` is set."""
        cfg = self.agent.cfg
        if cfg.grasp_confidence_p is None or self.trainer.model_version == 0:
            return None
        from learner.proposals.segmenter import SamplerConfig

        sampler = SamplerConfig(samples=cfg.grasp_confidence_samples)

        def fn(frame, p: float):
            inst = self._segmenter().predict_distributional(frame.rgb, frame.depth, frame.K, mode="confidence", p=p,
                                                            sampler=sampler)
            return inst.masks, inst.scores

        return fn

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
                self._start_from(self.init)
                if lp.eval_interval:  # where the given model starts in this cell: the first point of its curve
                    self.evaluate()
            self._viz = None
            if lp.viz == "rerun":
                from data.rerun_view import LiveRerun

                self._viz = LiveRerun.for_run(lp.viz_path, self.run_dir, self.metrics_path)
                tqdm.write(f"live view: {self._viz.where}")
            old = signal.signal(signal.SIGINT, self._on_sigint)
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
                        n = self.state.interactions
                        if n % lp.update_interval == 0 and lp.train_steps > 0:
                            self.retrain()
                        if lp.eval_interval and n % lp.eval_interval == 0:
                            self.evaluate()
                        if self._viz is not None:
                            self._viz.poll()  # the metrics rows written since (interaction, training, evaluation)
                        self._save_state()
                        bar.update(1)
                        bar.set_postfix(self._postfix())
                    if self.trainer.model_version == 0 and lp.train_steps > 0 and self.state.interactions > 0:
                        self.retrain()  # always leave a trained, usable model
                    if self.state.last_eval.get("model_version") != self.trainer.model_version:
                        self.evaluate()
                    self.export_model()
            finally:
                bar.close()
                signal.signal(signal.SIGINT, old)
                if self._viz is not None:
                    self._viz.close()
                self.state.elapsed_s += time.time() - t_start
                self._save_state()
        return self.summary(start_n)

    def retrain(self) -> None:
        source = log_source(self.log_path, self.trainer.cfg)
        if not source.positives and not source.negatives:
            return
        stats = self.trainer.train(source, steps=self.loop.train_steps, metrics_path=self.metrics_path, progress=False)
        self.trainer.save(self.ckpt_path)
        self.state.model_version = self.trainer.model_version
        self.export_model()
        tqdm.write(f"retrained -> model v{self.trainer.model_version}: {stats['steps']} steps in {stats['seconds']:.0f} s, "
                   f"loss {stats.get('loss', float('nan')):.3f} ({len(source.positives)} positives, "
                   f"{len(source.negatives)} negatives, {len(source.bank)} cut-outs)")

    # ---------------------------------------------------------------- reporting
    def _image_size(self) -> tuple[int, int]:
        cfg = getattr(self.robot, "cfg", None)
        return (int(getattr(cfg, "height", 240)), int(getattr(cfg, "width", 320)))

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
