"""Build an `InteractiveLoop` from a composed Hydra config, and print its end-of-run summary."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data.frame_diff import FrameDiffConfig
from learner.loop.agent import AgentConfig
from learner.loop.config import to_dataclass, validate
from learner.loop.init_source import InitSource, resolve_init
from learner.loop.interactive import InteractiveLoop, LoopSettings
from learner.model.network import SegmenterConfig
from learner.train.trainer import CHECKPOINT_NAME, TrainConfig
from robot.base import Robot


def make_robot(node: Any) -> Robot:
    if node.kind == "sim":
        from robot.sim_robot import SimRobot, SimRobotConfig

        return SimRobot(to_dataclass(SimRobotConfig, node))
    if node.kind == "franka":
        from robot.franka_robot import SETUP_HINT, FrankaConfig, FrankaRobot

        cfg = to_dataclass(FrankaConfig, node)
        needed = {"pyrealsense2": "pyrealsense2"} | ({} if cfg.dry_run else {"franky": "franky-control"})
        missing = []
        for module, package in needed.items():
            try:
                importlib.import_module(module)
            except ImportError as e:  # not installed, or pyrealsense2 without Debian's libusb-1.0-0
                missing.append(f"{package} ({e})")
        if missing:
            raise ImportError(f"robot=franka needs {' and '.join(missing)}: {SETUP_HINT}")
        return FrankaRobot(cfg)
    raise ValueError(f"unknown robot.kind {node.kind!r}; expected sim or franka")


def init_source(cfg: DictConfig, run_dir: str | Path) -> InitSource | None:
    """`learner.init` of a fresh run directory, read and checked now (a bad path fails at start, naming it);
    None when it is unset or when the run directory already has its own checkpoint (a resume: the run's
    checkpoint wins, the loop prints that `learner.init` is ignored)."""
    path = str(cfg.learner.get("init", "") or "")
    if not path:
        return None
    if (Path(run_dir) / "checkpoints" / CHECKPOINT_NAME).exists():
        print(f"learner.init={path} ignored: {run_dir} has its own checkpoint, resuming from it")
        return None
    return resolve_init(path)


def build_loop(cfg: DictConfig, run_dir: str) -> InteractiveLoop:
    validate(cfg)
    model_cfg = SegmenterConfig.from_dict(OmegaConf.to_container(cfg.learner.model, resolve=True))
    train_cfg = to_dataclass(TrainConfig, cfg.learner)
    init = init_source(cfg, run_dir)
    return InteractiveLoop(
        run_dir, make_robot(cfg.robot), to_dataclass(LoopSettings, cfg.loop), train_cfg, model_cfg,
        to_dataclass(AgentConfig, cfg.agent), to_dataclass(FrameDiffConfig, cfg.frame_diff),
        config_snapshot=OmegaConf.to_container(cfg, resolve=True), init=init,
    )


def print_summary(s: dict[str, Any]) -> None:
    def f(x: Any) -> str:
        return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    rows = [
        ("interactions (total / this run)", f"{s['interactions_total']} / {s['interactions_this_run']}"),
        ("positive rate this run", f(s["positive_rate_this_run"])),
        ("object-hit rate, model proposals (sim GT)", f(s["hit_rate_model_proposals_gt"])),
        ("object-hit rate, exploration / cold start (sim GT)", f(s["hit_rate_exploration_gt"])),
        ("started from (learner.init)", s.get("init") or "-"),
        ("model version / train steps / train s", f"v{s['model_version']} / {s['train_steps']} / {s['train_seconds']:.0f}"),
    ]
    for k, v in s["eval"].items():
        rows.append((f"held-out {k}", f"{f(v)} (depth clustering {f(s['baseline_depth_clustering'].get(k))})"))
    rows += [("run directory", s["run_dir"]), ("interaction log", s["log"]), ("deployable model", s["model"]),
             ("metrics", s["metrics"])]
    for ver, v in s.get("model_proposals_by_version", {}).items():
        rows.append((f"model v{ver} proposals: n / positive / hit (GT)",
                     f"{v['n']} / {v['positive_rate']:.2f} / {f(v['hit_rate_gt'])}"))
    w = max(len(k) for k, _ in rows)
    print("\nSummary")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
