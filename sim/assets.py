"""Object catalogue of the simulated cell: pybullet_data `random_urdfs/` meshes and procedural primitives.

Splits (fixed, disjoint, by the three-digit object id of `random_urdfs/NNN/NNN.urdf`):
- train: ids 000-699 (700 objects)
- val:   ids 700-849 (150 objects)
- test:  ids 850-999 (150 objects)
Procedural boxes and cylinders are drawn from the same size/colour ranges in every split; each split
and scene uses its own random stream, so a test scene never repeats a training object instance.
Mesh objects are scaled by `mesh_scale` (the raw meshes are 2-16 cm; scaled they fit the Panda
gripper's 8 cm opening) and recoloured at random.
"""

from __future__ import annotations

import colorsys
import os
from dataclasses import dataclass

import numpy as np
import pybullet_data

SPLIT_RANGES: dict[str, range] = {
    "train": range(0, 700),
    "val": range(700, 850),
    "test": range(850, 1000),
}


def split_object_ids(split: str) -> list[int]:
    """The random_urdfs object ids of a split."""
    if split not in SPLIT_RANGES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_RANGES)}")
    return list(SPLIT_RANGES[split])


def random_urdf_path(object_id: int) -> str:
    return os.path.join(pybullet_data.getDataPath(), "random_urdfs", f"{object_id:03d}", f"{object_id:03d}.urdf")


@dataclass(frozen=True)
class ObjectSpec:
    """One object to spawn.

    kind: 'mesh' (a random_urdfs object), 'box' or 'cylinder'.
    size: for 'box' half extents (x, y, z) in metres; for 'cylinder' (radius, height, 0); for 'mesh'
    (global scale, 0, 0).
    rgba: colour in [0, 1]. mass: kg.
    """

    kind: str
    object_id: int
    size: tuple[float, float, float]
    rgba: tuple[float, float, float, float]
    mass: float


@dataclass
class ObjectSampling:
    """Distribution of objects in a scene."""

    primitive_fraction: float = 0.35
    mesh_scale: tuple[float, float] = (0.45, 0.7)
    box_half_extent: tuple[float, float] = (0.012, 0.035)
    cylinder_radius: tuple[float, float] = (0.015, 0.032)
    cylinder_height: tuple[float, float] = (0.03, 0.10)
    mass: tuple[float, float] = (0.05, 0.3)


def random_color(rng: np.random.Generator) -> tuple[float, float, float, float]:
    h, s, v = rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.35, 1.0)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (r, g, b, 1.0)


def sample_object_specs(rng: np.random.Generator, split: str, n: int, cfg: ObjectSampling) -> list[ObjectSpec]:
    """`n` objects of a split: meshes without repetition within the scene, plus primitives."""
    ids = split_object_ids(split)
    mesh_ids = iter(rng.permutation(ids).tolist())
    specs = []
    for _ in range(n):
        mass = float(rng.uniform(*cfg.mass))
        color = random_color(rng)
        if rng.random() < cfg.primitive_fraction:
            if rng.random() < 0.5:
                he = tuple(float(x) for x in rng.uniform(*cfg.box_half_extent, size=3))
                specs.append(ObjectSpec("box", -1, he, color, mass))
            else:
                r = float(rng.uniform(*cfg.cylinder_radius))
                h = float(rng.uniform(*cfg.cylinder_height))
                specs.append(ObjectSpec("cylinder", -1, (r, h, 0.0), color, mass))
        else:
            scale = float(rng.uniform(*cfg.mesh_scale))
            specs.append(ObjectSpec("mesh", next(mesh_ids), (scale, 0.0, 0.0), color, mass))
    return specs
