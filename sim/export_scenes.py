"""Export held-out simulated scenes for evaluation and for the supervised oracle baseline.

    python -m sim.export_scenes --split test --n 200 OUT [--clutter mixed] [--seed 0] [--width 320 --height 240]
    python -m sim.export_scenes --domain cross --split test --n 100 OUT   # cross-test, 640x480
    python -m sim.export_scenes --domain cross --split val --n 100 OUT    # cross-val (tune on this one)

Writes, per scene, `rgb/ID.png`, `depth/ID.png` (uint16 millimetres), `label/ID.png` (uint16
instance ids, 0 = background and table) and `camera/ID.json`, plus `instances_coco.json` and
`meta.json` (format: data/scene_io.py). Scenes of a split only contain that split's objects; the
same arguments always produce the same scenes.

`--domain` (sim/randomization.py): `narrow` (default, today's twin), `wide` (randomised cells with
training-family objects of `--split`), `cross` (randomised cells with the evaluation-only models and
procedural families of half `--split` = val or test, sim/assets.py; 640x480 unless --width/--height
say otherwise). In every domain only objects on the table are instances: the table, floor, walls,
furniture, a second table and clutter off the table are all label 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from data.scene_io import Scene, write_coco, write_meta, write_scene
from sim.assets import CROSS_PROCEDURAL_FAMILIES, CROSS_SPLITS, SPLIT_RANGES
from sim.env import CameraConfig, InteractiveTabletopEnv, TabletopConfig
from sim.randomization import DomainConfig, cell_config
from sim.scene import CLUTTER_LEVELS, ClutterConfig

# Seeds of the exported scenes are offset per split and domain so no two sets share a scene seed (the
# randomised domains also salt their streams with the domain, sim/randomization.streams).
SPLIT_SEED_OFFSET = {"train": 0, "val": 10_000_000, "test": 20_000_000}
DOMAIN_SEED_OFFSET = {"narrow": 0, "wide": 30_000_000, "cross": 60_000_000}
LABEL_RULE = "instance ids of the objects on the table; 0 = table, floor, walls, furniture, second table, off-table clutter"


def export_scenes(
    out: str | Path, split: str, n: int, clutter: str = "mixed", seed: int = 0, width: int | None = None,
    height: int | None = None, shadows: bool = False, progress: bool = True, domain: str = "narrow",
    cell: str = "",
) -> list[str]:
    """Render `n` scenes of `split` (of `domain`; `cell`: a named fixed cell of sim/randomization.py CELLS,
    wide or cross only) into `out`; returns the scene ids."""
    if domain not in DOMAIN_SEED_OFFSET:
        raise ValueError(f"unknown domain {domain!r}; expected one of {sorted(DOMAIN_SEED_OFFSET)}")
    if cell and domain == "narrow":
        raise ValueError(f"cell {cell!r} narrows the randomised ranges: it needs domain wide or cross")
    randomization = cell_config(cell) if cell else DomainConfig()
    splits = sorted(CROSS_SPLITS) if domain == "cross" else sorted(SPLIT_RANGES)
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for domain {domain!r}; expected one of {splits}")
    if width is None or height is None:
        width, height = (640, 480) if domain == "cross" else (320, 240)
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
                           clutter=ClutterConfig(level=lvl), domain=domain, randomization=randomization)
        )
        for lvl in levels
    }
    ids = []
    try:
        for i in tqdm(range(n), desc=f"export {split}", disable=not progress):
            lvl = levels[i % len(levels)]
            obs, info = envs[lvl].reset(seed=DOMAIN_SEED_OFFSET[domain] + SPLIT_SEED_OFFSET[split] + seed * 100_000 + i)
            sid = f"{i:06d}"
            write_scene(out, Scene(sid, obs["rgb"], obs["depth"], info["instance_label"].astype("uint16"),
                                   obs["K"], obs["camera_pose"]))
            ids.append(sid)
        write_coco(out, ids)
        meta = {"split": split, "n": n, "clutter": clutter, "levels": levels, "seed": seed, "width": width,
                "height": height, "shadows": shadows, "generator": "sim.export_scenes", "domain": domain,
                "label": LABEL_RULE, "cell": cell}
        if domain == "cross":
            meta["models"] = list(CROSS_SPLITS[split])
            meta["procedural_families"] = list(CROSS_PROCEDURAL_FAMILIES[split])
        write_meta(out, meta)
    finally:
        for env in envs.values():
            env.close()
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output directory (new or empty)")
    ap.add_argument("--split", default="test", choices=sorted(SPLIT_RANGES))
    ap.add_argument("--domain", default="narrow", choices=sorted(DOMAIN_SEED_OFFSET),
                    help="narrow (today's twin), wide (randomised cells), cross (evaluation-only objects; split val/test)")
    ap.add_argument("--cell", default="", help="a named fixed cell (sim/randomization.py CELLS; wide or cross)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--clutter", default="mixed", help="mixed (cycles sparse/cluttered/piled) or one level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=None, help="default 320 (narrow, wide) or 640 (cross)")
    ap.add_argument("--height", type=int, default=None, help="default 240 (narrow, wide) or 480 (cross)")
    ap.add_argument("--shadows", action="store_true")
    a = ap.parse_args(argv)
    try:
        ids = export_scenes(a.out, a.split, a.n, a.clutter, a.seed, a.width, a.height, a.shadows, domain=a.domain,
                            cell=a.cell)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(ids)} {a.domain} {a.split} scenes to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
