"""`run_loop.py ... loop.workers=N`: build the actor-learner run from a composed config, check it, run it.

The same contract as the single-process `learner.loop.setup.run_app`: a start that cannot go ahead prints
one `error:` line and exits with status 2, touching nothing of the run directory; the config is recorded
once the start is accepted; a failure during the run exits with status 1 and keeps every committed record.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from data.frame_diff import FrameDiffConfig
from data.log import InteractionLog, LogFormatError
from data.shards import RunLog
from learner.fleet.driver import FleetRun, plain, print_fleet_summary
from learner.fleet.workers import CollectorSpec, LearnerSpec, quota
from learner.loop.agent import AgentConfig
from learner.loop.config import to_dataclass, validate
from learner.loop.interactive import LoopSettings
from learner.loop.learner_side import EvalTarget
from learner.loop.setup import check_model, init_source, run_checked, train_config
from learner.model.network import SegmenterConfig


def build_fleet(cfg: DictConfig, run_dir: str):
    """The actor-learner run (`loop.workers` > 0, learner/fleet/) of a composed config, checked like
    `build_loop` before anything of the run directory is written (and the run's layout: a single-process
    run directory is not resumed as a fleet, nor the reverse; shards that disagree are refused)."""
    validate(cfg)
    model_cfg = SegmenterConfig.from_dict(OmegaConf.to_container(cfg.learner.model, resolve=True))
    train_cfg = train_config(cfg, run_dir)
    check_model(cfg, run_dir, model_cfg)
    run = Path(run_dir)
    if (run / "interactions.zarr").exists():
        raise ValueError(f"{run} is a single-process run (interactions.zarr): resume it with loop.workers=0, or start "
                         "the actor-learner loop in a new hydra.run.dir; nothing was changed")
    if (run / "shards").is_dir():
        check_shards(run, (int(cfg.robot.height), int(cfg.robot.width)) if cfg.robot.kind == "sim" else None)
    init = init_source(cfg, run_dir)  # checked now (a bad path fails at start); the learner actor resolves it again
    loop_settings = to_dataclass(LoopSettings, cfg.loop)
    workers = int(cfg.loop.workers)
    robot = plain(cfg.robot)
    specs = [CollectorSpec(str(run), w, quota(int(cfg.loop.interactions), workers, w), robot,
                           to_dataclass(AgentConfig, cfg.agent), to_dataclass(FrameDiffConfig, cfg.frame_diff),
                           seed=int(cfg.loop.seed)) for w in range(workers)]
    learner = LearnerSpec(str(run), loop_settings, train_cfg, model_cfg,
                          EvalTarget(str(cfg.robot.kind), str(cfg.robot.get("cell", "") or "")),
                          str(cfg.learner.init) if init is not None else "")
    return FleetRun(cfg, run, specs, learner)


def check_shards(run: Path, want: tuple[int, int] | None) -> None:
    """A resumed fleet's shards must agree with each other and with the robot's image size (`want`, (H, W)
    pixels; None: any), and each must open for appending (a damaged chunk its writer reads back, another
    writer): ValueError / LogLockedError naming the shard, nothing written."""
    try:
        with RunLog.open(run) as log:
            have = (log.height, log.width)
            paths = [s.path for s in log.shards]
    except (LogFormatError, FileNotFoundError) as e:
        raise ValueError(f"cannot resume: {e}") from None
    if want is not None and have != want:
        raise ValueError(f"cannot resume: the shards in {run / 'shards'} hold {have[0]}x{have[1]} images, "
                         f"robot.height/width ask for {want[0]}x{want[1]}; nothing was changed")
    for path in paths:
        try:
            InteractionLog.check_appendable(path, *have)
        except (LogFormatError, FileNotFoundError) as e:
            raise ValueError(f"cannot resume shard {path.name}: {e}") from None


def run_fleet_app(cfg: DictConfig) -> FleetRun:
    """`run_loop.py ... loop.workers=N`: the same start checks and exit statuses as the single process."""
    return run_checked(cfg, build_fleet, lambda fleet: fleet.run_dir / "shards", print_fleet_summary)
