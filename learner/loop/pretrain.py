"""`python -m learner.pretrain`: train the wide model self-supervised in the randomised twin.

The same loop as `run_loop.py` (learner.loop.setup.build_loop, the same configs/ and typed schema), with
the twin's randomised cells (`robot.domain=wide`: cameras, rooms, tables, light, sensor artefacts;
sim/randomization.py) and a longer budget. Every Hydra override of run_loop.py works here and wins over
the recipe below, e.g.

    python -m learner.pretrain hydra.run.dir=runs/wide                       # the recipe; again = resume
    python -m learner.pretrain hydra.run.dir=runs/wide loop.interactions=500 # a shorter one

At the end it prints the command that starts a cell from the pretrained model:

    python run_loop.py robot=sim learner.init=RUN_DIR

The periodic evaluation runs on cross-domain val scenes (`loop.eval_domain=cross`: randomised cells with
evaluation-only objects, never trained on; the test half stays for reporting).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from learner.loop.config import register_configs
from learner.loop.setup import hydra_argv, run_app

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# the recipe: overrides of configs/config.yaml; any override on the command line with the same key wins
RECIPE = (
    "robot.domain=wide",        # randomised cells (sim/randomization.py), training objects only
    "loop.interactions=2000",   # 20 retrains of 300 steps (warm-started), no time limit
    "loop.update_interval=100",
    "loop.train_steps=300",
    "loop.time_budget=0",
    "loop.eval_interval=500",   # 4 held-out evaluations + the final one
    "loop.eval_domain=cross",   # ... on cross-domain val scenes (other objects, cameras, rooms)
)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def pretrain_overrides(argv: list[str]) -> list[str]:
    """The recipe's overrides, minus those whose key the command line sets, then the command line."""
    given = {_key(a) for a in argv if "=" in a and not a.startswith("-")}
    return [o for o in RECIPE if _key(o) not in given] + list(argv)


def start_command(run_dir: str | Path) -> str:
    """The command that starts a cell (a run of run_loop.py) from the model of `run_dir`."""
    p = Path(run_dir).resolve()
    try:
        shown = str(p.relative_to(Path.cwd()))
    except ValueError:
        shown = str(p)
    return f"python run_loop.py robot=sim learner.init={shown}"


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _app(cfg: DictConfig) -> None:
    loop = run_app(cfg)  # a rejected start exits 2, the run directory untouched (learner/loop/setup.py)
    print(f"\nPretrained model: {loop.model_path}\nStart a cell from it (its own run directory, learning on):\n"
          f"  {start_command(loop.run_dir)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        print("Recipe (configs/config.yaml + these overrides; the command line wins):\n  " + "\n  ".join(RECIPE))
        print("\nHydra's own help: --hydra-help; the composed config: --cfg job")
        return 0
    register_configs()
    sys.argv = hydra_argv([sys.argv[0] if sys.argv else "pretrain", *pretrain_overrides(argv)])
    _app()
    return 0
