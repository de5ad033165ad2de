"""The tabletop world: table with a randomised top, objects at a clutter level, fallen-object removal.

World frame = robot base frame: x forward (away from the robot), y left, z up, metres. The table top
is the plane z = 0; the workspace where objects live is an axis-aligned rectangle on it.

The narrow twin uses `build_table` + `spawn_objects`; the randomised domains (sim/randomization.py)
use `build_table_wide`, `build_room_wide` and `spawn_objects_wide` (tables of random size, height and
shape with legs, a room around them, objects of many families, stacked and leaning). Only the
objects in `self.objects` are instances; the table, room, furniture and clutter are background.
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

from sim import procedural as proc
from sim.assets import (
    LEANABLE,
    ObjectSampling,
    ObjectSpec,
    data_path,
    random_color,
    random_urdf_path,
    sample_object_specs,
)
from sim.randomization import ObjectRanges, RoomRanges, TableRanges
from sim.room import Room, TableTop, build_room, build_table, remove_occluders, sample_table

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
        self.top = TableTop("rect", table.center_xy, table.half_size_xy, 0.76, table.thickness)
        self.room: Room | None = None  # randomised domains: the background bodies
        self.shiny_bodies: set[int] = set()  # bodies the depth sensor loses in blobs
        self._scene_files: list[str] = []
        self._n_files = 0
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
        return bool(pos[2] > -0.03 and self.top.contains(pos))

    def table_bounds(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """((x_min, x_max), (y_min, y_max)) of the current table top (a round top: its bounding square)."""
        return self.top.bounds()

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

    # ---------------------------------------------------------------- randomised domains
    def begin_scene(self) -> None:
        """Forget the previous randomised scene's generated files (textures, meshes)."""
        for f in self._scene_files:
            try:
                os.remove(f)
            except OSError:
                pass
        self._scene_files = []
        self.room = None
        self.shiny_bodies = set()

    def _new_file(self, suffix: str) -> str:
        self._n_files += 1
        path = os.path.join(self._texture_dir, f"s{self._n_files}{suffix}")
        self._scene_files.append(path)
        return path

    def new_texture(self, img: np.ndarray) -> int:
        path = proc.write_texture(self._new_file(".png"), img)
        return pb.loadTexture(path, physicsClientId=self.client)

    def new_quad(self, hx: float, hy: float, rx: float, ry: float) -> str:
        return proc.write_quad_obj(self._new_file(".obj"), hx, hy, rx, ry)

    def build_table_wide(self, rng: np.random.Generator, r: TableRanges) -> None:
        """A table of random size, height and shape with legs (top face z = 0). With r.enabled False:
        the narrow table's geometry and look (no floor: the room or `build_room_wide` makes it)."""
        c = self.client
        t = self.table
        if not r.enabled:
            self.top = TableTop("rect", t.center_xy, t.half_size_xy, 0.76, t.thickness)
            tex = _procedural_texture(rng) if rng.random() < t.textured_fraction else None
        else:
            self.top = sample_table(rng, r, t.workspace_center_xy, t.workspace_half_xy)
            tex = _procedural_texture(rng) if rng.random() < r.textured_fraction else None
        if not r.enabled:  # the narrow slab
            he = [t.half_size_xy[0], t.half_size_xy[1], t.thickness / 2]
            col = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=he, physicsClientId=c)
            vis = pb.createVisualShape(pb.GEOM_BOX, halfExtents=he, rgbaColor=[1, 1, 1, 1], physicsClientId=c)
            self.table_body = pb.createMultiBody(0, col, vis, [t.center_xy[0], t.center_xy[1], -t.thickness / 2],
                                                 physicsClientId=c)
            pb.changeDynamics(self.table_body, -1, lateralFriction=0.6, physicsClientId=c)
            if tex is not None:
                tint = [*rng.uniform(0.55, 1.0, 3), 1.0]
                pb.changeVisualShape(self.table_body, -1, textureUniqueId=self.new_texture(tex), rgbaColor=tint,
                                     physicsClientId=c)
            else:
                pb.changeVisualShape(self.table_body, -1, rgbaColor=list(random_color(rng)), physicsClientId=c)
            self.table_parts = []
        else:
            self.table_body, self.table_parts = build_table(c, self.top, rng, r, tex, self.new_texture)
        if self.top.shiny:
            self.shiny_bodies.add(self.table_body)

    def build_room_wide(self, rng: np.random.Generator, r: RoomRanges, eye: np.ndarray, pedestal: bool = True) -> None:
        """The room around the table (sim/room.py); with r.enabled False only a plain floor."""
        c = self.client
        if not r.enabled:
            fhe = [3, 3, 0.01]
            fcol = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=fhe, physicsClientId=c)
            fvis = pb.createVisualShape(pb.GEOM_BOX, halfExtents=fhe, rgbaColor=[*random_color(rng)[:3], 1],
                                        physicsClientId=c)
            floor = pb.createMultiBody(0, fcol, fvis, [0, 0, -self.top.height - 0.01], physicsClientId=c)
            self.room = Room(bodies=[floor], floor_z=-self.top.height)
            return
        t = self.table
        self.room = build_room(c, rng, r, self.top, eye, t.workspace_center_xy, self.new_texture, self.new_quad,
                               proc.room_texture, proc.object_texture, pedestal=pedestal)
        remove_occluders(c, self.room, eye, t.workspace_center_xy, t.workspace_half_xy)

    @staticmethod
    def _half_height(spec: ObjectSpec) -> float:
        """Height of a spawned object's origin above its lowest point (upper bound for tilted ones)."""
        k, (a, b, cc) = spec.kind, spec.size
        if k == "box":
            return float(max(a, b, cc) if spec.rest == "any" else cc)
        if k == "cylinder":
            return float(a if spec.rest == "lying" else b / 2)
        if k in ("sphere", "capsule"):
            return float(a)
        if k in ("mesh", "model"):
            return spec.radius
        if k == "prism" and spec.rest == "lying":
            return float(a)
        return 0.0  # compounds and upright prisms: the origin is the bottom

    @staticmethod
    def _spawn_orn(rng: np.random.Generator, spec: ObjectSpec) -> list[float]:
        yaw = rng.uniform(-np.pi, np.pi)
        if spec.rest == "lying":
            return list(pb.getQuaternionFromEuler([np.pi / 2, 0, yaw]))
        if spec.rest == "upright":
            return list(pb.getQuaternionFromEuler([rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), yaw]))
        return list(pb.getQuaternionFromEuler([rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), yaw]))

    def _create_wide_body(self, spec: ObjectSpec, pos, orn, rng: np.random.Generator) -> int:
        c = self.client
        k = spec.kind
        if k in ("mesh", "box", "cylinder"):
            body = self._create_body(spec, pos, orn)  # the narrow builders (recoloured, dynamics set)
        else:
            if k == "sphere":
                parts = [proc.Part("sphere", (spec.size[0],))]
            elif k == "capsule":
                parts = [proc.Part("capsule", (spec.size[0], spec.size[1]))]
            elif k == "compound":
                fam, p = spec.family, spec.params
                if fam == "bowl":
                    parts = proc.bowl_parts(p[0], p[1], p[2], p[3])
                elif fam == "cup":
                    parts = proc.cup_parts(p[0], p[1], p[2], p[3], bool(p[4]))
                elif fam == "open_box":
                    parts = proc.open_box_parts(*p)
                elif fam == "bracket":
                    parts = proc.bracket_parts(p[0], p[1], p[2], p[3], bool(p[4]))
                else:
                    raise ValueError(f"unknown compound family {fam!r}")
            elif k == "prism":
                outline, n, rad, h, top, inner = spec.params
                path = proc.write_prism_obj(self._new_file(".obj"), proc.prism_outline(outline, int(n), rad, inner), h, top)
                parts = [proc.Part("mesh", (path, (1.0, 1.0, 1.0)))]
            elif k == "model":
                loader, cx, cy, cz = spec.params
                s = spec.size[0]
                if loader == "urdf":
                    R = np.array(pb.getMatrixFromQuaternion(orn)).reshape(3, 3)
                    p0 = np.asarray(pos, float) - R @ np.array([cx, cy, cz])
                    parts = None
                    body = pb.loadURDF(data_path(spec.path), p0.tolist(), orn, globalScaling=s, physicsClientId=c)
                else:
                    path = data_path(spec.path)
                    parts = [proc.Part("mesh", (path, (s, s, s)), (-cx, -cy, -cz))]
            else:
                raise ValueError(f"unknown object kind {k!r}")
            if parts is not None:
                body = proc.create_compound(c, parts, pos, orn, mass=spec.mass, rgba=spec.rgba)
            if spec.rgba != (1.0, 1.0, 1.0, 1.0) or k != "model":
                for j in range(-1, pb.getNumJoints(body, physicsClientId=c)):
                    pb.changeVisualShape(body, j, rgbaColor=list(spec.rgba), physicsClientId=c)
            rolling = 0.004 if k in ("sphere", "capsule") or spec.rest == "lying" else 0.001
            pb.changeDynamics(
                body, -1, mass=spec.mass, lateralFriction=0.7, rollingFriction=rolling, spinningFriction=0.001,
                activationState=pb.ACTIVATION_STATE_ENABLE_SLEEPING, physicsClientId=c,
            )
        if spec.textured:
            tint = [*np.clip(np.array(spec.rgba[:3]) * 0.4 + 0.6, 0, 1), 1.0]
            pb.changeVisualShape(body, -1, textureUniqueId=self.new_texture(proc.object_texture(rng)), rgbaColor=tint,
                                 physicsClientId=c)
        if spec.shiny:
            self.shiny_bodies.add(body)
        return body

    def spawn_objects_wide(self, rng: np.random.Generator, specs: list[ObjectSpec], extra: list[ObjectSpec],
                           r: ObjectRanges) -> list[tuple[ObjectSpec, str]]:
        """Drop `specs` onto the workspace (size-aware spacing per clutter level) and `extra` onto the
        table outside it. Returns the objects deferred to `spawn_deferred` (stacked / leaning), which
        need their neighbours to have settled first."""
        level = self.clutter.level
        cx, cy = self.table.workspace_center_xy
        hx, hy = self.table.workspace_half_xy
        if level == "sparse":
            spread, gap, factor, drop_z = (hx, hy), 0.01, 1.0, (0.01, 0.03)
        elif level == "cluttered":
            spread, gap, factor, drop_z = (0.85 * hx, 0.85 * hy), 0.0, 0.55, (0.01, 0.05)
        else:
            spread, gap, factor, drop_z = (0.45 * hx, 0.45 * hy), 0.0, 0.0, (0.03, 0.2)
        placed: list[tuple[np.ndarray, float]] = []
        deferred: list[tuple[ObjectSpec, str]] = []
        for i, spec in enumerate(specs):
            mode = ""
            if i > 0 and rng.random() < r.stack_prob:
                mode = "stack"
            elif i > 0 and spec.family in LEANABLE and rng.random() < r.lean_prob:
                mode = "lean"
            if mode:
                deferred.append((spec, mode))
                continue
            xy = None
            for _ in range(50):
                cand = np.array([cx + rng.uniform(-spread[0], spread[0]), cy + rng.uniform(-spread[1], spread[1])])
                if all(np.linalg.norm(cand - q) >= factor * (spec.radius + qr) + gap for q, qr in placed):
                    xy = cand
                    break
            if xy is None:
                continue
            placed.append((xy, spec.radius))
            z = float(rng.uniform(*drop_z)) + (0.04 * len(placed) if level == "piled" else 0.0) + self._half_height(spec)
            body = self._create_wide_body(spec, [xy[0], xy[1], z], self._spawn_orn(rng, spec), rng)
            self.objects.append(SceneObject(body, len(self.objects) + 1, spec))
        (tx0, tx1), (ty0, ty1) = self.top.bounds()
        for spec in extra:  # on the table but outside the workspace
            for _ in range(30):
                cand = np.array([rng.uniform(tx0, tx1), rng.uniform(ty0, ty1)])
                if not self.top.contains(cand, margin=-(spec.radius + 0.04)) or self.in_workspace(cand, margin=spec.radius + 0.03):
                    continue
                z = 0.01 + self._half_height(spec)
                body = self._create_wide_body(spec, [cand[0], cand[1], z], self._spawn_orn(rng, spec), rng)
                self.objects.append(SceneObject(body, len(self.objects) + 1, spec))
                break
        return deferred

    def spawn_deferred(self, rng: np.random.Generator, deferred: list[tuple[ObjectSpec, str]]) -> None:
        """Stack objects onto, or lean them against, objects that rest on the table (then settle)."""
        c = self.client
        for spec, mode in deferred:
            bases = [o for o in self.objects if self.in_workspace(self.poses()[o.instance_id][0], margin=0.02)]
            if not bases:
                continue
            base = bases[int(rng.integers(len(bases)))]
            lo, hi = (np.array(v) for v in pb.getAABB(base.body, physicsClientId=c))
            centre = (lo + hi) / 2
            if mode == "stack":
                xy = centre[:2] + rng.normal(0, 0.01, 2)
                z = hi[2] + 0.01 + self._half_height(spec)
                orn = self._spawn_orn(rng, spec)
            else:
                length = 2 * spec.radius
                tilt = rng.uniform(np.deg2rad(25), np.deg2rad(60))
                ang = rng.uniform(-np.pi, np.pi)
                toward = -np.array([np.cos(ang), np.sin(ang)])  # from the new object to its support
                nb_r = 0.5 * float(np.max(hi[:2] - lo[:2]))
                xy = centre[:2] - toward * (nb_r + 0.5 * length * np.cos(tilt) + 0.005)
                axis = np.array([*(toward * np.cos(tilt)), np.sin(tilt)])
                z = 0.5 * length * np.sin(tilt) + 0.012
                local = np.array([0.0, 0.0, 1.0]) if spec.kind in ("cylinder", "capsule") else np.array([1.0, 0.0, 0.0])
                orn = _quat_between(local, axis)
            if not self.top.contains(xy, margin=-0.03):
                continue
            body = self._create_wide_body(spec, [float(xy[0]), float(xy[1]), float(z)], orn, rng)
            self.objects.append(SceneObject(body, len(self.objects) + 1, spec))

    def close(self) -> None:
        self._remove_textures()


def _quat_between(a: np.ndarray, b: np.ndarray) -> list[float]:
    """The shortest rotation (xyzw) taking unit vector a to unit vector b."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    v, w = np.cross(a, b), 1.0 + float(np.dot(a, b))
    if w < 1e-8:  # opposite: any perpendicular axis
        v = np.cross(a, [1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.cross(a, [0.0, 1.0, 0.0])
        w = 0.0
    q = np.array([*v, w])
    return (q / np.linalg.norm(q)).tolist()
