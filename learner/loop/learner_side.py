"""The learner side of the loop: retrain on the log, publish the model, evaluate on held-out scenes.

`LoopLearner` owns the trainer, the run's checkpoint (`checkpoints/last.pt`), the deployable model
(`model/segmenter.pt`), the held-out evaluation and the learner's rows of `metrics.jsonl`. It never
touches the robot. The single-process loop (learner/loop/interactive.py) calls it between interactions;
the fleet's learner actor (learner/fleet/) calls it while the collectors keep acting.

Schedule, the same in both: a retrain is due at every multiple of `update_interval` records in the log
(warm start, `train_steps` steps), an evaluation at every multiple of `eval_interval`. `catch_up(n)`
runs what is due for a log of n records (several retrain points passed at once: one retrain on the whole
log), and never skips one: a retrain killed midway
resumes from its periodic checkpoint (learner/train/trainer.py), and one that finished after the last
state save (its checkpoint holds a newer model version than the state knew of) counts as done.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from learner.loop.init_source import InitSource
from learner.model.backend import torch_segmenter
from learner.proposals.config import ProposalConfig
from learner.train.trainer import CHECKPOINT_NAME, Trainer, log_source

MODEL_NAME = "segmenter.pt"


@dataclass
class LearnerState:
    """What the learner side must remember across restarts (JSON, with the checkpoint)."""

    interactions: int = 0  # records in the log at the last look
    model_version: int = 0
    last_eval: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    init: dict[str, Any] = field(default_factory=dict)  # the `learner.init` source this run started from, if any
    # the log size at the last scheduled retrain point handled (done, or passed with train_steps 0);
    # -1 = a state file from before this field: taken as up to date on resume (`from_json`)
    retrain_checked: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any]):
        return cls(**{"retrain_checked": -1, **d})


@dataclass
class EvalTarget:
    """Where the held-out scenes come from: the robot kind ("sim" only is evaluated) and its named cell."""

    robot_kind: str = "sim"
    cell: str = ""


def append_metric(path: Path, rec: dict[str, Any]) -> None:
    """Append one row to a run's metrics.jsonl (one write per line)."""
    with open(path, "a") as f:
        f.write(json.dumps(rec, default=float) + "\n")


# where a run keeps its learner's state: a single-process run (with the robot side's) or an actor-learner run
LOOP_STATE, FLEET_LEARNER_STATE = "loop_state.json", "learner_state.json"


def learner_state_path(run_dir: str | Path) -> Path | None:
    """The state file of a run's learner (a run directory holds one of the two layouts), None if none yet."""
    for name in (LOOP_STATE, FLEET_LEARNER_STATE):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


class LoopLearner:
    """Trainer + checkpoint + deployable model + evaluation of one run directory."""

    def __init__(self, run_dir: str | Path, loop: Any, trainer: Trainer, state: LearnerState,
                 save_state: Callable[[], None], eval_target: EvalTarget, log_path: Path):
        self.run_dir = Path(run_dir)
        self.loop = loop  # LoopSettings (learner/loop/interactive.py)
        self.trainer = trainer
        self.state = state
        self.save_state = save_state  # persists `state` (and whatever its owner keeps with it)
        self.eval_target = eval_target
        self.log_path = log_path  # the run's log: interactions.zarr or the run directory of a sharded run
        self.ckpt_path = self.run_dir / "checkpoints" / CHECKPOINT_NAME
        self.model_path = self.run_dir / "model" / MODEL_NAME
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._saved_version = 0
        self._source = None  # the training source, kept across retrains (read incrementally when it can)

    # ---------------------------------------------------------------- persistence
    def metric(self, rec: dict[str, Any]) -> None:
        append_metric(self.metrics_path, rec)

    def load(self, n: int, init: InitSource | None) -> InitSource | None:
        """After the state was read: resume the checkpoint (then `init` is ignored and None is returned)."""
        self.state.interactions = n
        self._saved_version = self.state.model_version
        if self.state.retrain_checked < 0:
            self.state.retrain_checked = n
        if self.ckpt_path.exists():
            if init is not None:
                tqdm.write(f"learner.init={init.given} ignored: resuming {self.run_dir} from its own checkpoint "
                           f"{self.ckpt_path}")
            self.trainer.load(self.ckpt_path)
            self.state.model_version = self.trainer.model_version
            return None
        return init

    def mark_saved(self) -> None:
        """The owner has just saved the state: the model version it holds is on disk."""
        self._saved_version = self.trainer.model_version

    def start_from(self, init: InitSource) -> None:
        """A fresh run from a trained model: its weights and architecture (over the configured
        learner.model), a fresh optimiser, model version 1; the run's own checkpoint is written at once."""
        wanted = self.trainer.model.config.to_dict()
        got = init.model.config.to_dict()
        differ = {k: {"config": wanted.get(k), "checkpoint": v} for k, v in got.items() if wanted.get(k) != v}
        self.trainer.start_from(init.model, model_version=1, input_size=init.input_size)
        self.state.model_version = self.trainer.model_version
        self.state.init = {"source": init.given, "checkpoint": str(init.checkpoint), "kind": init.kind,
                           "source_meta": init.meta, "at_interaction": self.state.interactions}
        self.metric({"kind": "init", "source": init.given, "checkpoint": str(init.checkpoint), "source_kind": init.kind,
                     "model_version": self.trainer.model_version, "interactions": self.state.interactions,
                     "source_meta": init.meta, "model_config_from_checkpoint": sorted(differ)})
        self.trainer.save(self.ckpt_path)  # from now on this run resumes from its own checkpoint
        tqdm.write(f"learner.init: starting from {init.checkpoint} as model v{self.trainer.model_version} "
                   f"({self.trainer.model.num_parameters()} parameters, fresh optimiser)")
        if differ:
            tqdm.write("learner.init: the checkpoint's architecture wins over learner.model.* for "
                       + ", ".join(f"{k} (config {v['config']}, checkpoint {v['checkpoint']})" for k, v in differ.items()))
        self.save_state()

    def export_model(self) -> Path:
        """Write the latest deployable model (state dict + config + provenance + last metrics)."""
        self.model_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.model_path.with_suffix(".tmp")
        torch.save(self.deployable(), tmp)
        os.replace(tmp, self.model_path)
        return self.model_path

    def deployable(self) -> dict[str, Any]:
        """The model file's content (what `export_model` writes and the fleet publishes)."""
        return {
            "model": self.trainer.model.state_dict(),
            "model_config": self.trainer.model.config.to_dict(),
            "model_version": self.trainer.model_version,
            "interactions": self.state.interactions,
            "train_steps": self.trainer.step,
            "input_size": list(self.trainer.input_size) if self.trainer.input_size else None,
            "metrics": json.dumps(self.state.last_eval),
            "oracle": False,
        }

    # ---------------------------------------------------------------- schedule
    def retrain_due(self, n: int) -> bool:
        """A scheduled retrain point (a multiple of `update_interval`) lies in (retrain_checked, n], or a
        retrain was cut midway."""
        ui = self.loop.update_interval
        return n // ui > self.state.retrain_checked // ui or self.trainer.pending is not None

    def catch_up(self, n: int) -> bool:
        """Run the retrain and the evaluation due for a log of `n` records (module docstring); True if the
        model changed. A learner that fell behind by several retrain points (the fleet's, while collectors
        keep adding records faster than it trains) does one retrain on the whole log for all of them
        (`loop.retrain_points=merge`: the newest data, not a queue of stale retrains; the number of retrains
        then depends on how fast the learner is), or one per point in order (`every`: N // update_interval
        retrains whatever the timing, as the single-process loop, which meets every point either way)."""
        lp, st = self.loop, self.state
        st.interactions = n
        changed = False
        if self.retrain_due(n):
            pending = self.trainer.pending is not None
            if pending or (lp.train_steps > 0 and self.trainer.model_version <= self._saved_version):
                changed = self.retrain()
            ui = lp.update_interval
            if lp.retrain_points == "every" and n // ui > st.retrain_checked // ui:
                st.retrain_checked = (st.retrain_checked // ui + 1) * ui  # the next point: later ones stay due
            else:
                st.retrain_checked = n
            self.save_state()
        due_eval = (n // lp.eval_interval) * lp.eval_interval if lp.eval_interval else 0
        if due_eval and st.last_eval.get("interactions", -1) < due_eval:
            self.evaluate()
            self.save_state()
        return changed

    def finish(self, n: int) -> None:
        """The end of a run of `n` records: every retrain still due (one per point with `retrain_points=every`),
        a trained model even if no retrain point was reached, an evaluation of the final model, the model file."""
        self.catch_up(n)
        while self.retrain_due(n):
            self.catch_up(n)
        if self.trainer.model_version == 0 and self.loop.train_steps > 0 and n > 0:
            self.retrain()  # always leave a trained, usable model
        if self.state.last_eval.get("model_version") != self.trainer.model_version:
            self.evaluate()
        self.export_model()

    def retrain(self) -> bool:
        """One warm-started retrain of `loop.train_steps` steps on the whole log, or the rest of one a kill cut
        (checkpointed every `learner.checkpoint_every_s` seconds meanwhile); then checkpoint and export. False
        when the log holds nothing to train on yet."""
        source = self._training_source()
        if not source.positives and not source.negatives:
            return False
        kw = {"metrics_path": self.metrics_path, "progress": False, "checkpoint_path": self.ckpt_path}
        if self.trainer.pending is not None:
            stats = self.trainer.resume_pending(source, **kw)
            tqdm.write(f"resumed the retrain a kill cut: {stats['steps']} steps left")
        else:
            stats = self.trainer.train(source, steps=self.loop.train_steps, **kw)
        self.trainer.save(self.ckpt_path)
        self.state.model_version = self.trainer.model_version
        self.export_model()
        tqdm.write(f"retrained -> model v{self.trainer.model_version}: {stats['steps']} steps in {stats['seconds']:.0f} s, "
                   f"loss {stats.get('loss', float('nan')):.3f} ({len(source.positives)} positives, "
                   f"{len(source.negatives)} negatives, {len(source.bank)} cut-outs)")
        return True

    def _training_source(self):
        """The log's training source, built once and then updated with the new records only."""
        if self._source is None:
            self._source = log_source(self.log_path, self.trainer.cfg)
        else:
            self._source.update()
        return self._source

    # ---------------------------------------------------------------- evaluation
    def _eval_dir(self) -> Path | None:
        if self.loop.eval_scenes <= 0 or self.eval_target.robot_kind != "sim":
            return None
        domain = self.loop.eval_domain
        # a robot in a named cell (robot.cell) is evaluated in that cell's randomised scenes (with held-out objects)
        cell = self.eval_target.cell if domain != "narrow" else ""
        d = self.run_dir / ("eval_scenes" if domain == "narrow" else f"eval_scenes_{domain}{'_' + cell if cell else ''}")
        if not (d / "instances_coco.json").exists():
            from sim.export_scenes import export_scenes

            if d.exists():  # a torn earlier export: start it again
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
            self.metric({"kind": "baseline", "name": "depth_clustering", **self.state.baseline})
        proposals: ProposalConfig = self.loop.proposals
        seg = torch_segmenter(self.trainer.model, proposals, net_size=self.trainer.input_size)
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
        self.state.last_eval = {"interactions": self.state.interactions, "model_version": self.trainer.model_version,
                                **res}
        write_preview(self.run_dir / PREVIEW_NAME, d, shown,
                      f"model v{self.trainer.model_version} after {self.state.interactions} interactions, held-out "
                      f"{self.loop.eval_split} scenes: AP50 {res.get('AP50', float('nan')):.3f}")
        self.metric({"kind": "eval", **self.state.last_eval})
        return res
