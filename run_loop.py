"""The interactive learning loop: `python run_loop.py robot=sim` (or `robot=franka`).

Hydra composes configs/config.yaml (groups robot/, learner/, agent/) over typed schemas
(learner/loop/config.py); the run directory is Hydra's output directory, and running again with the
same `hydra.run.dir=...` resumes. A start that cannot go ahead (a bad value, a resume whose
`learner.model.*` contradicts the run's checkpoint, a log that cannot be opened) prints one `error:`
line and exits with status 2, changing no file of the run, its recorded config `RUN/.hydra/` included
(learner/loop/setup.py). See README.md.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from learner.loop.config import register_configs
from learner.loop.setup import hydra_argv, run_app

register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    if cfg.loop.workers != 0:  # the actor-learner loop on Ray (learner/fleet/)
        from learner.fleet.app import run_fleet_app

        run_fleet_app(cfg)
    else:
        run_app(cfg)


if __name__ == "__main__":
    sys.argv = hydra_argv(sys.argv)  # RUN/.hydra/ is written once the start is accepted, not by Hydra before
    main()
