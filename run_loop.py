"""The interactive learning loop: `python run_loop.py robot=sim` (or `robot=franka`).

Hydra composes configs/config.yaml (groups robot/, learner/, agent/) over typed schemas
(learner/loop_config.py); the run directory is Hydra's output directory, and running again with the
same `hydra.run.dir=...` resumes. See README.md.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from learner.loop.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from learner.loop.setup import build_loop, print_summary

    try:
        loop = build_loop(cfg, HydraConfig.get().runtime.output_dir)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        summary = loop.run()
    except RuntimeError as e:  # a robot or camera failure (e.g. robot.camera.CameraTimeoutError)
        print(f"error: {type(e).__name__}: {e}\nevery committed interaction is safe in {loop.log_path}; "
              "run the same command again to resume", file=sys.stderr)
        sys.exit(1)
    print_summary(summary)


if __name__ == "__main__":
    main()
