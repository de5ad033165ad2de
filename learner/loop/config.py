"""Structured (typed) configuration of `run_loop.py`, registered with Hydra's ConfigStore.

The YAML files in `configs/` extend these schemas, so a misspelt key or a value of the wrong type
fails when Hydra composes the config, naming the key; `validate()` then checks ranges and names the
offending key too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from data.frame_diff import FrameDiffConfig
from learner.loop.agent import AgentConfig
from learner.loop.interactive import LoopSettings
from learner.model.network import SegmenterConfig
from learner.proposals.frame import IN_CHANNELS
from learner.train.trainer import TrainConfig
from robot.franka_robot import FrankaConfig
from robot.sim_robot import SimRobotConfig


@dataclass
class SimRobotSchema(SimRobotConfig):
    kind: str = "sim"


@dataclass
class FrankaRobotSchema(FrankaConfig):
    """A Franka Panda via franky-control and a RealSense camera (the `franka` extra).

    The fields are FrankaConfig's (robot/franka_robot.py), so names and types cannot drift apart;
    robot/franka_robot.py imports franky and pyrealsense2 only when the robot connects.
    """

    kind: str = "franka"


@dataclass
class ModelSchema(SegmenterConfig):
    """The network (learner/model/network.py SegmenterConfig: every field, names, types and defaults
    from there), with the tuples as lists for OmegaConf. `SegmenterConfig.from_dict` turns it back."""

    widths: list[int] = field(default_factory=lambda: list(SegmenterConfig.widths))
    depths: list[int] = field(default_factory=lambda: list(SegmenterConfig.depths))


@dataclass
class LearnerSchema(TrainConfig):
    """Training settings (learner/train/trainer.py TrainConfig) plus the network. The loop's training
    steps and seed are loop.train_steps and loop.seed. `init`: start a fresh run directory from a trained
    model (a run directory, a checkpoint .pt or an ONNX export's source checkpoint; its architecture wins
    over `model`); "" = from scratch; ignored when the run directory resumes from its own checkpoint.
    `init_lr`: the peak learning rate of a run started from `init` (fine-tuning; null: `lr`)."""

    model: ModelSchema = field(default_factory=ModelSchema)
    init: str = ""
    init_lr: float | None = 0.0005


@dataclass
class LoopAppConfig:
    robot: Any = MISSING
    learner: LearnerSchema = field(default_factory=LearnerSchema)
    agent: AgentConfig = field(default_factory=AgentConfig)
    loop: LoopSettings = field(default_factory=LoopSettings)
    frame_diff: FrameDiffConfig = field(default_factory=FrameDiffConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="loop_app_schema", node=LoopAppConfig)
    cs.store(group="robot", name="sim_schema", node=SimRobotSchema)
    cs.store(group="robot", name="franka_schema", node=FrankaRobotSchema)
    cs.store(group="learner", name="learner_schema", node=LearnerSchema)
    cs.store(group="agent", name="agent_schema", node=AgentConfig)


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ValueError(f"config error at '{key}': {msg}")


def validate(cfg: Any) -> None:
    """Range checks that types alone cannot express; every message names the key."""
    loop = cfg.loop
    _check(loop.interactions >= 0, "loop.interactions", f"must be >= 0, got {loop.interactions}")
    _check(loop.update_interval >= 1, "loop.update_interval", f"must be >= 1, got {loop.update_interval}")
    _check(loop.train_steps >= 0, "loop.train_steps", f"must be >= 0, got {loop.train_steps}")
    _check(loop.time_budget >= 0, "loop.time_budget", f"must be >= 0 seconds, got {loop.time_budget}")
    _check(loop.eval_interval >= 0, "loop.eval_interval", f"must be >= 0, got {loop.eval_interval}")
    _check(loop.eval_scenes >= 0, "loop.eval_scenes", f"must be >= 0, got {loop.eval_scenes}")
    _check(loop.eval_split in ("train", "val", "test"), "loop.eval_split", f"must be train/val/test, got {loop.eval_split!r}")
    _check(loop.eval_domain in ("narrow", "wide", "cross"), "loop.eval_domain",
           f"must be narrow/wide/cross, got {loop.eval_domain!r}")
    _check(not (loop.eval_domain == "cross" and loop.eval_split == "train"), "loop.eval_split",
           "the cross domain has only val and test halves (evaluation-only objects)")
    _check(loop.viz in ("none", "rerun"), "loop.viz", f"must be none or rerun, got {loop.viz!r}")
    _check(loop.retrain_points in ("merge", "every"), "loop.retrain_points",
           f"must be merge or every, got {loop.retrain_points!r}")
    _check(loop.workers >= 0, "loop.workers", f"must be >= 0 (0 = single process, N = N collector actors on Ray), "
           f"got {loop.workers}")
    if loop.workers > 0:
        _check(loop.viz == "none", "loop.viz", "the live view follows a single-process run (loop.workers=0)")
        try:
            import ray  # noqa: F401
        except ImportError as e:  # fail at start, naming the extra
            raise ImportError(f"loop.workers > 0 runs the actor-learner loop on Ray, which is not installed ({e}); "
                              "install the `ray` extra: bash scripts/setup.sh ray (or pip install -e '.[ray]'), or run "
                              "single-process with loop.workers=0") from None
    if loop.viz == "rerun":  # fail at start, not after the first interaction
        from data.rerun_view import check_live_target, require_rerun

        require_rerun()  # ImportError naming the `viz` extra
        problem = check_live_target(loop.viz_path)
        _check(problem is None, "loop.viz_path", str(problem))
    _check(cfg.robot.kind in ("sim", "franka"), "robot.kind", f"must be 'sim' or 'franka', got {cfg.robot.kind!r}")
    if cfg.robot.kind == "sim":
        _check(cfg.robot.clutter in ("sparse", "cluttered", "piled"), "robot.clutter",
               f"must be sparse/cluttered/piled, got {cfg.robot.clutter!r}")
        _check(cfg.robot.split in ("train", "val", "test"), "robot.split", f"must be train/val/test, got {cfg.robot.split!r}")
        if cfg.robot.cell:
            from sim.randomization import CELLS

            _check(cfg.robot.cell in CELLS, "robot.cell", f"must be one of {sorted(CELLS)} or empty, got {cfg.robot.cell!r}")
            _check(cfg.robot.domain != "narrow", "robot.cell", "a cell narrows the randomised ranges: it needs robot.domain=wide")
        _check(cfg.robot.width % 16 == 0 and cfg.robot.height % 16 == 0, "robot.width/height",
               "must be multiples of 16 (network strides)")
    if cfg.robot.kind == "franka":
        franka = to_dataclass(FrankaConfig, cfg.robot)
        try:
            franka.validate()  # every message starts with the key, e.g. "robot.max_contact_force: ..."
        except ValueError as e:
            key = str(e).split(":", 1)[0]
            raise ValueError(f"config error at '{key}': {str(e).split(': ', 1)[-1]}") from None
    lr = cfg.learner
    _check(lr.loss in ("robust", "bce_dice"), "learner.loss", f"must be robust or bce_dice, got {lr.loss!r}")
    _check(0 < lr.tau <= 1, "learner.tau", f"must be in (0, 1], got {lr.tau}")
    _check(lr.batch_size >= 1, "learner.batch_size", f"must be >= 1, got {lr.batch_size}")
    _check(lr.lr > 0, "learner.lr", f"must be > 0, got {lr.lr}")
    _check(lr.get("init_lr") is None or lr.init_lr > 0, "learner.init_lr", f"must be null or > 0, got {lr.get('init_lr')}")
    _check(0 <= lr.pseudo_fraction <= 1, "learner.pseudo_fraction", f"must be in [0, 1], got {lr.pseudo_fraction}")
    _check(lr.model.latent_dim >= 0, "learner.model.latent_dim", f"must be >= 0 (0 = no latent code), got {lr.model.latent_dim}")
    _check(lr.kl_weight >= 0, "learner.kl_weight", f"must be >= 0, got {lr.kl_weight}")
    _check(lr.kl_free_nats >= 0, "learner.kl_free_nats", f"must be >= 0, got {lr.kl_free_nats}")
    _check(lr.consistency_weight >= 0, "learner.consistency_weight", f"must be >= 0 (0 = off), got {lr.consistency_weight}")
    _check(lr.consistency_images >= 1, "learner.consistency_images", f"must be >= 1, got {lr.consistency_images}")
    _check(lr.consistency_queries >= 1, "learner.consistency_queries", f"must be >= 1, got {lr.consistency_queries}")
    _check(lr.model.in_channels == IN_CHANNELS, "learner.model.in_channels",
           f"is fixed by the input builder (learner/proposals/frame.py): {IN_CHANNELS}, got {lr.model.in_channels}")
    _check(len(lr.model.widths) == len(lr.model.depths), "learner.model.widths/depths",
           f"need one depth per stage, got {len(lr.model.widths)} widths and {len(lr.model.depths)} depths")
    _check(lr.model.norm in ("bn", "gn"), "learner.model.norm", f"must be bn or gn, got {lr.model.norm!r}")
    ag = cfg.agent
    _check(ag.selection in ("uniform", "uncertain"), "agent.selection", f"must be uniform or uncertain, got {ag.selection!r}")
    _check(ag.primitive in ("poke", "grasp", "alternate", "learned"), "agent.primitive",
           f"must be poke/grasp/alternate/learned, got {ag.primitive!r}")
    _check(0 <= ag.exploration <= 1, "agent.exploration", f"must be in [0, 1], got {ag.exploration}")


def to_dataclass(cls: type, node: Any) -> Any:
    """Build a plain dataclass from a config node, taking only the fields `cls` has. Nested structured
    nodes become their dataclasses (e.g. the ProposalConfig of `agent.proposals`), lists plain lists."""
    names = {f.name for f in fields(cls)}

    def plain(v: Any) -> Any:
        if isinstance(v, DictConfig):
            return OmegaConf.to_object(v)
        if isinstance(v, ListConfig):
            return OmegaConf.to_container(v, resolve=True)
        return v

    return cls(**{k: plain(v) for k, v in dict(node).items() if k in names})
