"""Build an `InteractiveLoop` from a composed Hydra config, run it, and print its end-of-run summary.

`run_app` is the body of both Hydra entry points (`run_loop.py`, `python -m learner.pretrain`). A start
is checked before anything of the run directory is touched (`build_loop`: the config's ranges, then for
a resume `check_resume`: the checkpoint's architecture against `learner.model.*`, the log a writer
must open); a rejected start prints one `error: ...` line and exits with status 2, leaving every file
of the run as it was. The run's recorded config (`RUN/.hydra/`) follows the same rule: Hydra would write
it before the task function runs, i.e. on every invocation, rejected ones included, so `hydra_argv` turns
Hydra's own record off (`++hydra.output_subdir=null`) and `record_config` writes the same three files
once the start has been accepted. An explicit `hydra.output_subdir=...` on the command line is left to
Hydra (it then writes its record itself, as before).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data.frame_diff import FrameDiffConfig
from data.log import InteractionLog, LogFormatError, LogLockedError
from learner.loop.agent import AgentConfig
from learner.loop.config import to_dataclass, validate
from learner.loop.init_source import InitSource, resolve_init
from learner.loop.interactive import InteractiveLoop, LoopSettings
from learner.loop.learner_side import learner_state_path
from learner.model.checkpoint import read_checkpoint
from learner.model.network import SegmenterConfig
from learner.train.trainer import CHECKPOINT_NAME, TrainConfig
from robot.base import Robot

DEFER_RECORD = "++hydra.output_subdir=null"  # Hydra writes no RUN/.hydra/ itself; record_config does, on start
RECORD_SUBDIR = ".hydra"  # Hydra's default output_subdir


def make_robot_from_dict(d: dict[str, Any]) -> Robot:
    """`make_robot` of a plain dict (a fleet collector's robot config, learner/fleet/)."""
    return make_robot(OmegaConf.create(d))


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


def check_model(cfg: DictConfig, run_dir: str | Path, model_cfg: SegmenterConfig) -> None:
    """A resume's `learner.model.*` must be the architecture of the run's checkpoint (ValueError naming every
    differing field with the checkpoint's and the requested value); an unreadable checkpoint is refused too.
    With `learner.init` set the check is off: as for a fresh run, a checkpoint's architecture wins over
    learner.model (the run resumes from its own checkpoint, see `init_source`)."""
    path = Path(run_dir) / "checkpoints" / CHECKPOINT_NAME
    if not path.exists():
        return
    ckpt = read_checkpoint(path)  # CheckpointError (a ValueError) names the file
    if cfg.learner.get("init"):
        return
    try:
        have = SegmenterConfig.from_dict(dict(ckpt["model_config"])).to_dict()
    except (TypeError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: unreadable model_config ({type(e).__name__}: {e})") from None
    want = model_cfg.to_dict()
    differ = [k for k in want if have.get(k) != want[k]]
    if not differ:
        return
    fields = ", ".join(f"learner.model.{k} (checkpoint {have.get(k)!r}, requested {want[k]!r})" for k in differ)
    hint = "resume with the checkpoint's values, or start a new hydra.run.dir (learner.init=RUN starts one from it)"
    init = _started_from(run_dir)
    if init:
        hint = f"this run started from learner.init={init} and keeps its architecture: pass it again, or " + hint
    raise ValueError(f"{run_dir} resumes from {path}, whose architecture differs from the requested one: {fields}; "
                     f"{hint}; nothing was changed")


def _started_from(run_dir: str | Path) -> str | None:
    """The learner.init source a run started from (its learner's state file), None if none or unreadable."""
    path = learner_state_path(run_dir)
    if path is None:
        return None
    try:
        init = json.loads(path.read_text()).get("init") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return str(init["source"]) if isinstance(init, dict) and init.get("source") else None


def train_config(cfg: DictConfig, run_dir: str | Path) -> TrainConfig:
    """`learner.*` as the TrainConfig of a run. A run that starts (or, resumed, started) from `learner.init`
    fine-tunes at `learner.init_lr` (null: at `learner.lr` like a run from scratch)."""
    tc = to_dataclass(TrainConfig, cfg.learner)
    init_lr = cfg.learner.get("init_lr")
    resumed = (Path(run_dir) / "checkpoints" / CHECKPOINT_NAME).exists()
    from_init = _started_from(run_dir) if resumed else str(cfg.learner.get("init", "") or "")
    if init_lr is not None and from_init:
        tc.lr = float(init_lr)
    return tc


def check_log(loop: InteractiveLoop) -> None:
    """The run's log must open for appending (read-only check, see InteractionLog.check_appendable); its
    errors come out as ValueError / LogLockedError naming the log, before the run starts."""
    try:
        InteractionLog.check_appendable(loop.log_path, *loop._image_size())
    except (LogFormatError, FileNotFoundError) as e:
        raise ValueError(f"cannot resume: {e}") from None
    except OSError as e:  # permissions, I/O errors
        raise ValueError(f"cannot resume: {loop.log_path}: {type(e).__name__}: {e}") from None


def build_loop(cfg: DictConfig, run_dir: str) -> InteractiveLoop:
    """The loop of a composed config, checked (ValueError, ImportError or LogLockedError) before any file of
    the run directory is written: the config's ranges, a resume's architecture and its log."""
    validate(cfg)
    model_cfg = SegmenterConfig.from_dict(OmegaConf.to_container(cfg.learner.model, resolve=True))
    train_cfg = train_config(cfg, run_dir)
    if (Path(run_dir) / "shards").is_dir():
        raise ValueError(f"{run_dir} is an actor-learner run (shards/): resume it with loop.workers=N (N > 0), or start "
                         "a single-process run in a new hydra.run.dir; nothing was changed")
    check_model(cfg, run_dir, model_cfg)
    init = init_source(cfg, run_dir)
    loop = InteractiveLoop(
        run_dir, make_robot(cfg.robot), to_dataclass(LoopSettings, cfg.loop), train_cfg, model_cfg,
        to_dataclass(AgentConfig, cfg.agent), to_dataclass(FrameDiffConfig, cfg.frame_diff),
        config_snapshot=OmegaConf.to_container(cfg, resolve=True), init=init,
    )
    check_log(loop)
    return loop


def hydra_argv(argv: list[str]) -> list[str]:
    """`sys.argv` (program name first) with Hydra's own config record deferred (DEFER_RECORD, see the module
    docstring), unless the command line sets hydra.output_subdir itself."""
    if any(a.partition("=")[0].lstrip("+~") == "hydra.output_subdir" for a in argv[1:]):
        return list(argv)
    # among the other overrides: Hydra's argparse takes them as one run of positionals (`--cfg job` may follow)
    at = next((k for k, a in enumerate(argv) if k and not a.startswith("-") and ("=" in a or a.startswith("~"))),
              len(argv))  # fmt: skip
    return [*argv[:at], DEFER_RECORD, *argv[at:]]


def record_config(cfg: DictConfig) -> Path | None:
    """Write RUN/.hydra/config.yaml, hydra.yaml and overrides.yaml as Hydra would have (each file replaced
    atomically) when `hydra_argv` deferred them; call it once the start has been accepted."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    if hc.output_subdir is not None or DEFER_RECORD not in hc.overrides.hydra:
        return None  # Hydra recorded the config itself (hydra.output_subdir on the command line)
    out = Path(hc.runtime.output_dir) / RECORD_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", cfg), ("hydra.yaml", HydraConfig.instance().cfg),
                       ("overrides.yaml", hc.overrides.task)):  # fmt: skip
        tmp = out / f".{name}.tmp"
        tmp.write_text(OmegaConf.to_yaml(node), encoding="utf-8")
        os.replace(tmp, out / name)
    return out


def run_app(cfg: DictConfig) -> InteractiveLoop:
    """The task function of run_loop.py and learner.pretrain (single process, see `run_checked`)."""
    return run_checked(cfg, build_loop, lambda loop: loop.log_path, print_summary)


def run_checked(cfg: DictConfig, build: Callable[[DictConfig, str], Any], log_of: Callable[[Any], Path],
                summary: Callable[[dict[str, Any]], None]) -> Any:
    """Build and check a run (`build(cfg, run_dir)`; rejected: one `error:` line, exit status 2, the run
    directory untouched), record the config, run it, print its summary. A robot / camera failure or a store
    error during the run: `error:` lines naming where the committed interactions are (`log_of`), exit status 1."""
    from hydra.core.hydra_config import HydraConfig

    try:
        runner = build(cfg, HydraConfig.get().runtime.output_dir)
    except (ValueError, ImportError, LogLockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    record_config(cfg)
    try:
        result = runner.run()
    except (RuntimeError, LogFormatError) as e:  # e.g. robot.camera.CameraTimeoutError; a log that became unreadable
        print(f"error: {type(e).__name__}: {e}\nevery committed interaction is safe in {log_of(runner)}; "
              "run the same command again to resume", file=sys.stderr)
        sys.exit(1)
    summary(result)
    return runner


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

