"""A contact sheet of randomised twin scenes: wide-domain training scenes above cross-domain ones.

    python -m sim.contact_sheet --out docs/twin_wide.png [--n 8] [--cross-split test] [--seed 0]

Each column is one 640x480 capture shown as RGB over depth (turbo colour map, 0.2-3 m; black =
missing) with the instance labels outlined in white. The scenes use export seeds (sim.export_scenes)
offset by 90 000 000 so that none is part of an exported set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from sim.env import CameraConfig, InteractiveTabletopEnv, TabletopConfig
from sim.scene import CLUTTER_LEVELS, ClutterConfig

SHEET_SEED_OFFSET = 90_000_000


def _tile(obs: dict, label: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    rgb = cv2.resize(obs["rgb"], (w, h), interpolation=cv2.INTER_AREA)
    lab = cv2.resize(label.astype(np.int32).astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int32)
    edge = np.zeros(lab.shape, bool)
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    rgb = rgb.copy()
    rgb[edge] = 255
    d = cv2.resize(obs["depth"], (w, h), interpolation=cv2.INTER_NEAREST)
    v = np.clip((d - 0.2) / 2.8 * 255, 0, 255).astype(np.uint8)
    depth = cv2.cvtColor(cv2.applyColorMap(v, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    depth[d <= 0] = 0
    return rgb, depth


def _scenes(domain: str, split: str, n: int, seed: int) -> list[tuple[dict, np.ndarray, str]]:
    out = []
    envs = {lvl: InteractiveTabletopEnv(TabletopConfig(domain=domain, split=split, clutter=ClutterConfig(level=lvl),
                                                       camera=CameraConfig(width=640, height=480)))
            for lvl in CLUTTER_LEVELS}
    try:
        for i in range(n):
            lvl = CLUTTER_LEVELS[i % len(CLUTTER_LEVELS)]
            env = envs[lvl]
            obs, info = env.reset(seed=SHEET_SEED_OFFSET + seed * 1000 + i)
            c = env.scene_info["camera"]
            cap = f"{lvl} {env.scene_info['table']['shape']} d={c.get('distance', 0):.2f} el={c.get('elevation_deg', 0):.0f}"
            out.append((obs, info["instance_label"], cap))
    finally:
        for env in envs.values():
            env.close()
    return out


def contact_sheet(out: str | Path, n: int = 8, cross_split: str = "test", seed: int = 0, tile_w: int = 240) -> Path:
    tile_h = tile_w * 3 // 4
    rows = []
    for title, domain, split in (("wide (training: random_urdfs train + procedural)", "wide", "train"),
                                 (f"cross-{cross_split} (evaluation-only models, unseen families)", "cross", cross_split)):
        tiles = [_tile(o, lab, tile_w, tile_h) + (cap,) for o, lab, cap in _scenes(domain, split, n, seed)]
        head = np.full((22, tile_w * n, 3), 30, np.uint8)
        cv2.putText(head, title, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        rgb_row = np.concatenate([t[0] for t in tiles], 1)
        for k, t in enumerate(tiles):
            cv2.putText(rgb_row, t[2], (k * tile_w + 4, tile_h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1,
                        cv2.LINE_AA)
        rows += [head, rgb_row, np.concatenate([t[1] for t in tiles], 1)]
    sheet = np.concatenate(rows, 0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:  # a palette PNG keeps the sheet well under 1 MB
        from PIL import Image

        Image.fromarray(sheet).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            out, optimize=True)
    except ImportError:
        cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/twin_wide.png")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--cross-split", default="test", choices=("val", "test"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tile-width", type=int, default=240)
    a = ap.parse_args(argv)
    path = contact_sheet(a.out, a.n, a.cross_split, a.seed, a.tile_width)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
