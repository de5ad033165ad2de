"""The tabletop world: table with a randomised top, objects at a clutter level, fallen-object removal.

World frame = robot base frame: x forward (away from the robot), y left, z up, metres. The table top
is the plane z = 0; the workspace where objects live is an axis-aligned rectangle on it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field

import cv2
import numpy as np
import pybullet as pb

from sim.assets import ObjectSampling, ObjectSpec, random_color, random_urdf_path, sample_object_specs

CLUTTER_LEVELS = ("sparse", "cluttered", "piled")


@dataclass
class TableConfig:
    """Table and workspace geometry (world frame, metres)."""

    center_xy: tuple[float, float] = (0.55, 0.0)
    half_size_xy: tuple[float, float] = (0.45, 0.6)
    thickness: float = 0.05
    workspace_center_xy: tuple[float, float] = (0.55, 0.0)
    workspace_half_xy: tuple[float, float] = (0.17, 0.22)
    textured_fraction: float = 0.6
    n_textures: int = 16


@dataclass
class ClutterConfig:
    """How many objects and how tightly they are placed, per clutter level."""

    level: str = "cluttered"
    n_objects: dict[str, tuple[int, int]] = field(
        default_factory=lambda: {"sparse": (3, 6), "cluttered": (6, 12), "piled": (8, 15)}
    )
    min_objects: int = 3

    def validate(self) -> None:
        if self.level not in CLUTTER_LEVELS:
            raise ValueError(f"unknown clutter level {self.level!r}; expected one of {CLUTTER_LEVELS}")


@dataclass
class SceneObject:
    """A spawned object: `instance_id` >= 1 is stable for the scene's lifetime (0 = background)."""

    body: int
    instance_id: int
    spec: ObjectSpec


def _procedural_texture(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A random table-top texture (H,W,3) uint8: wood-like stripes, checker, speckle or smooth noise."""
    base = np.array(random_color(rng)[:3]) * 255
    other = np.array(random_color(rng)[:3]) * 255
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(4)
    if kind == 0:  # stripes with wobble (wood)
        f = rng.uniform(8, 30)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (f * yy + 0.3 * np.sin(2 * np.pi * rng.uniform(1, 4) * xx)))
    elif kind == 1:  # checker
        n = int(rng.integers(4, 16))
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)
    elif kind == 2:  # speckle
        t = (rng.random((size, size)) < rng.uniform(0.05, 0.3)).astype(np.float32)
    else:  # smooth blotches
        t = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), size / 16)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    contrast = rng.uniform(0.15, 0.6)
    img = base[None, None] * (1 - contrast * t[..., None]) + other[None, None] * (contrast * t[..., None])
    return np.clip(img, 0, 255).astype(np.uint8)


class TableScene:
    """Builds and maintains the table, its top appearance and the objects on it."""

    def __init__(self, client: int, table: TableConfig, clutter: ClutterConfig, sampling: ObjectSampling):
        clutter.validate()
        self.client = client
        self.table = table
        self.clutter = clutter
        self.sampling = sampling
        self.objects: list[SceneObject] = []
        self.table_body = -1
        self._texture_dir = tempfile.mkdtemp(prefix="tabletop_tex_")
        self._texture_files: list[str] = []
        # removed by close(), or when the scene is garbage-collected or the interpreter exits unclosed
        self._remove_textures = weakref.finalize(self, shutil.rmtree, self._texture_dir, ignore_errors=True)

    # ---------------------------------------------------------------- setup
    def make_textures(self, rng: np.random.Generator) -> None:
        """Write the pool of procedural table textures (once per env)."""
        for i in range(self.table.n_textures):
            path = os.path.join(self._texture_dir, f"table_{i}.png")
            cv2.imwrite(path, cv2.cvtColor(_procedural_texture(rng), cv2.COLOR_RGB2BGR))
            self._texture_files.append(path)

    def build_table(self, rng: np.random.Generator) -> None:
        """Create the table (top face at z = 0) with a random colour or texture, plus a floor."""
        c = self.client
        t = self.table
        he = [t.half_size_xy[0], t.half_size_xy[1], t.thickness / 2]
        col = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=he, physicsClientId=c)
        vis = pb.createVisualShape(pb.GEOM_BOX, halfExtents=he, rgbaColor=[1, 1, 1, 1], physicsClientId=c)
        pos = [t.center_xy[0], t.center_xy[1], -t.thickness / 2]
        self.table_body = pb.createMultiBody(0, col, vis, pos, physicsClientId=c)
        pb.changeDynamics(self.table_body, -1, lateralFriction=0.6, physicsClientId=c)
        if self._texture_files and rng.random() < t.textured_fraction:
            tex = pb.loadTexture(self._texture_files[int(rng.integers(len(self._texture_files)))], physicsClientId=c)
            tint = [*rng.uniform(0.55, 1.0, 3), 1.0]  # so a small texture pool still gives many looks
            pb.changeVisualShape(self.table_body, -1, textureUniqueId=tex, rgbaColor=tint, physicsClientId=c)
        else:
            pb.changeVisualShape(self.table_body, -1, rgbaColor=list(random_color(rng)), physicsClientId=c)
        fhe = [3, 3, 0.01]
        fcol = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=fhe, physicsClientId=c)
        fvis = pb.createVisualShape(pb.GEOM_BOX, halfExtents=fhe, rgbaColor=[*random_color(rng)[:3], 1], physicsClientId=c)
        pb.createMultiBody(0, fcol, fvis, [0, 0, -0.76], physicsClientId=c)

    def _create_body(self, spec: ObjectSpec, pos, orn) -> int:
        c = self.client
        if spec.kind == "mesh":
            body = pb.loadURDF(random_urdf_path(spec.object_id), pos, orn, globalScaling=spec.size[0], physicsClientId=c)
        elif spec.kind == "box":
            col = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=spec.size, physicsClientId=c)
            vis = pb.createVisualShape(pb.GEOM_BOX, halfExtents=spec.size, physicsClientId=c)
            body = pb.createMultiBody(spec.mass, col, vis, pos, orn, physicsClientId=c)
        elif spec.kind == "cylinder":
            r, h = spec.size[0], spec.size[1]
            col = pb.createCollisionShape(pb.GEOM_CYLINDER, radius=r, height=h, physicsClientId=c)
            vis = pb.createVisualShape(pb.GEOM_CYLINDER, radius=r, length=h, physicsClientId=c)
            body = pb.createMultiBody(spec.mass, col, vis, pos, orn, physicsClientId=c)
        else:
            raise ValueError(f"unknown object kind {spec.kind!r}")
        pb.changeVisualShape(body, -1, rgbaColor=list(spec.rgba), physicsClientId=c)
        pb.changeDynamics(
            body, -1, mass=spec.mass, lateralFriction=0.7, rollingFriction=0.001, spinningFriction=0.001,
            activationState=pb.ACTIVATION_STATE_ENABLE_SLEEPING,  # resting objects cost ~5x less per step
            physicsClientId=c,
        )
        return body

    def spawn_objects(self, rng: np.random.Generator, split: str) -> None:
        """Drop objects onto the workspace at the configured clutter level (then call `settle`)."""
        level = self.clutter.level
        lo, hi = self.clutter.n_objects[level]
        n = int(rng.integers(lo, hi + 1))
        specs = sample_object_specs(rng, split, n, self.sampling)
        cx, cy = self.table.workspace_center_xy
        hx, hy = self.table.workspace_half_xy
        if level == "sparse":
            spread, min_dist, drop_z = (hx, hy), 0.10, (0.03, 0.05)
        elif level == "cluttered":
            spread, min_dist, drop_z = (0.7 * hx, 0.7 * hy), 0.05, (0.03, 0.08)
        else:  # piled: a small area, dropped from increasing heights so objects stack and lean
            spread, min_dist, drop_z = (0.4 * hx, 0.4 * hy), 0.0, (0.05, 0.30)
        placed: list[np.ndarray] = []
        for i, spec in enumerate(specs):
            xy = None
            for _ in range(50):
                cand = np.array([cx + rng.uniform(-spread[0], spread[0]), cy + rng.uniform(-spread[1], spread[1])])
                if all(np.linalg.norm(cand - q) >= min_dist for q in placed):
                    xy = cand
                    break
            if xy is None:
                continue
            placed.append(xy)
            z = float(rng.uniform(*drop_z)) + (0.03 * i if level == "piled" else 0.0)
            orn = pb.getQuaternionFromEuler(
                [rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(-np.pi, np.pi)]
                if level != "sparse"
                else [0, 0, rng.uniform(-np.pi, np.pi)]
            )
            body = self._create_body(spec, [xy[0], xy[1], z], orn)
            self.objects.append(SceneObject(body, len(self.objects) + 1, spec))

    # ---------------------------------------------------------------- queries
    def poses(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """instance_id -> (position (3,), quaternion xyzw (4,)) in the world frame."""
        out = {}
        for o in self.objects:
            p, q = pb.getBasePositionAndOrientation(o.body, physicsClientId=self.client)
            out[o.instance_id] = (np.array(p), np.array(q))
        return out

    def body_to_instance(self) -> dict[int, int]:
        return {o.body: o.instance_id for o in self.objects}

    def in_workspace(self, xy: np.ndarray, margin: float = 0.0) -> bool:
        c, h = np.array(self.table.workspace_center_xy), np.array(self.table.workspace_half_xy)
        return bool(np.all(np.abs(np.asarray(xy)[:2] - c) <= h + margin))

    def on_table(self, pos: np.ndarray) -> bool:
        c, h = np.array(self.table.center_xy), np.array(self.table.half_size_xy)
        return bool(pos[2] > -0.03 and np.all(np.abs(pos[:2] - c) <= h))

    def max_speed(self) -> float:
        v = [np.linalg.norm(pb.getBaseVelocity(o.body, physicsClientId=self.client)[0]) for o in self.objects]
        return float(max(v, default=0.0))

    # ---------------------------------------------------------------- upkeep
    def sleep(self) -> None:
        """Put resting objects to sleep now (Bullet would wait ~2 s); contacts wake them again."""
        for o in self.objects:
            pb.changeDynamics(o.body, -1, activationState=pb.ACTIVATION_STATE_SLEEP, physicsClientId=self.client)

    def wake(self) -> None:
        for o in self.objects:
            pb.changeDynamics(o.body, -1, activationState=pb.ACTIVATION_STATE_WAKE_UP, physicsClientId=self.client)

    def remove(self, instance_id: int) -> None:
        for o in list(self.objects):
            if o.instance_id == instance_id:
                pb.removeBody(o.body, physicsClientId=self.client)
                self.objects.remove(o)

    def remove_fallen(self) -> list[int]:
        """Remove objects that left the table; returns their instance ids."""
        gone = [iid for iid, (p, _) in self.poses().items() if not self.on_table(p)]
        for iid in gone:
            self.remove(iid)
        return gone

    def count_in_workspace(self) -> int:
        return sum(self.in_workspace(p, margin=0.05) for p, _ in self.poses().values())

    def free_spot(self, rng: np.random.Generator, avoid_xy: np.ndarray, clearance: float = 0.09) -> np.ndarray | None:
        """A workspace point at least `clearance` metres from every object and from `avoid_xy`."""
        cx, cy = self.table.workspace_center_xy
        hx, hy = self.table.workspace_half_xy
        others = [p[:2] for p, _ in self.poses().values()]
        best, best_d = None, -1.0
        for _ in range(60):
            cand = np.array([cx + rng.uniform(-hx, hx), cy + rng.uniform(-hy, hy)])
            d = min([np.linalg.norm(cand - q) for q in others] + [np.linalg.norm(cand - avoid_xy[:2]) * 0.75])
            if d > best_d:
                best, best_d = cand, d
            if d >= clearance:
                return cand
        return best

    def close(self) -> None:
        self._remove_textures()
