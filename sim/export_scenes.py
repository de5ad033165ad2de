"""Export held-out simulated scenes for evaluation and for the supervised oracle baseline.

    python -m sim.export_scenes --split test --n 200 OUT [--clutter mixed] [--seed 0] [--width 320 --height 240]

Writes, per scene, `rgb/ID.png`, `depth/ID.png` (uint16 millimetres), `label/ID.png` (uint16
instance ids, 0 = background and table) and `camera/ID.json`, plus `instances_coco.json` and
`meta.json` (format: data/scene_io.py). Scenes of a split only contain that split's objects; the
same arguments always produce the same scenes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from data.scene_io import Scene, write_coco, write_meta, write_scene
from sim.assets import SPLIT_RANGES
from sim.env import CameraConfig, InteractiveTabletopEnv, TabletopConfig
from sim.scene import CLUTTER_LEVELS, ClutterConfig

# Seeds of the exported scenes are offset per split so no two splits share a scene seed.
SPLIT_SEED_OFFSET = {"train": 0, "val": 10_000_000, "test": 20_000_000}


def export_scenes(
    out: str | Path, split: str, n: int, clutter: str = "mixed", seed: int = 0, width: int = 320, height: int = 240,
    shadows: bool = False, progress: bool = True,
) -> list[str]:
    """Render `n` scenes of `split` into `out`; returns the scene ids."""
    if split not in SPLIT_RANGES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_RANGES)}")
    if n <= 0:
        raise ValueError(f"--n must be positive, got {n}")
    levels = list(CLUTTER_LEVELS) if clutter == "mixed" else [clutter]
    for lvl in levels:
        if lvl not in CLUTTER_LEVELS:
            raise ValueError(f"unknown clutter {clutter!r}; expected 'mixed' or one of {CLUTTER_LEVELS}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory")
    envs = {
        lvl: InteractiveTabletopEnv(
            TabletopConfig(split=split, camera=CameraConfig(width=width, height=height, shadows=shadows),
                           clutter=ClutterConfig(level=lvl))
        )
        for lvl in levels
    }
    ids = []
    try:
        for i in tqdm(range(n), desc=f"export {split}", disable=not progress):
            lvl = levels[i % len(levels)]
            obs, info = envs[lvl].reset(seed=SPLIT_SEED_OFFSET[split] + seed * 100_000 + i)
            sid = f"{i:06d}"
            write_scene(out, Scene(sid, obs["rgb"], obs["depth"], info["instance_label"].astype("uint16"),
                                   obs["K"], obs["camera_pose"]))
            ids.append(sid)
        write_coco(out, ids)
        write_meta(out, {"split": split, "n": n, "clutter": clutter, "levels": levels, "seed": seed,
                         "width": width, "height": height, "shadows": shadows, "generator": "sim.export_scenes"})
    finally:
        for env in envs.values():
            env.close()
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output directory (new or empty)")
    ap.add_argument("--split", default="test", choices=sorted(SPLIT_RANGES))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--clutter", default="mixed", help="mixed (cycles sparse/cluttered/piled) or one level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--shadows", action="store_true")
    a = ap.parse_args(argv)
    try:
        ids = export_scenes(a.out, a.split, a.n, a.clutter, a.seed, a.width, a.height, a.shadows)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(ids)} {a.split} scenes to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
