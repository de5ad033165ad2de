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

    kind: 'mesh' (a random_urdfs object), 'box' or 'cylinder'; randomised domains add 'sphere'
    (radius, 0, 0), 'capsule' (radius, length, 0), 'compound' and 'prism' (procedural, built from
    `params` by sim/procedural.py) and 'model' (an evaluation-only pybullet_data model at `path`).
    size: for 'box' half extents (x, y, z) in metres; for 'cylinder' (radius, height, 0); for 'mesh'
    and 'model' (global scale, 0, 0); for 'compound' / 'prism' half extents of the bounding box.
    rgba: colour in [0, 1]. mass: kg.
    """

    kind: str
    object_id: int
    size: tuple[float, float, float]
    rgba: tuple[float, float, float, float]
    mass: float
    # randomised domains only (sim/randomization.py); the narrow twin leaves the defaults
    family: str = ""  # box, book, bowl, ..., or an EvalModel family
    params: tuple = ()  # construction parameters of compound / prism / model kinds
    path: str = ""  # 'model': the pybullet_data file (relative)
    textured: bool = False  # a fresh procedural texture (stripes, print-like, ...) on its faces
    shiny: bool = False  # the depth sensor loses it in blobs
    rest: str = "any"  # spawn orientation: 'any' (tilted), 'upright', 'lying' (axis horizontal)
    radius: float = 0.0  # footprint radius for spacing, metres


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


# ============================================================================ randomised domains
# Training material of the `wide` domain: random_urdfs *train* ids (above) plus these procedural
# families (sim/procedural.py). Nothing else from pybullet_data is ever loaded by a training scene
# (the Panda itself, franka_panda/, is the robot, not scene content).
TRAIN_PROCEDURAL_FAMILIES = ("box", "cylinder", "sphere", "book", "plate", "bowl", "cup", "long_box", "rod")

# Evaluation-only procedural families of the `cross` domain, one fixed half each (never in training).
CROSS_PROCEDURAL_FAMILIES: dict[str, tuple[str, ...]] = {
    "val": ("cone", "ngon_prism", "bracket"),
    "test": ("capsule", "open_box", "star_prism"),
}


@dataclass(frozen=True)
class EvalModel:
    """An evaluation-only model shipped in pybullet_data.

    files: the pybullet_data files of the family (paths relative to pybullet_data; the first is
    loaded; the others are variants or duplicates that belong to the same family and half).
    loader: 'urdf' (loadURDF with globalScaling) or 'obj' (a mesh with a convex-hull collision).
    extent: its longest extent on the table, metres (scaled uniformly to a value in this range).
    kind: the group used by the halving rule.
    """

    family: str
    kind: str
    files: tuple[str, ...]
    loader: str
    extent: tuple[float, float]
    textured: bool = False


KIND_ORDER = ("animal", "ball", "container", "block", "toy", "other")

EVAL_MODELS: tuple[EvalModel, ...] = (
    EvalModel("bunny", "animal", ("bunny.obj",), "obj", (0.06, 0.2)),
    EvalModel("duck", "animal", ("duck_vhacd.urdf", "duck.obj", "duck_vhacd.obj"), "urdf", (0.05, 0.15), True),
    EvalModel("teddy", "animal", ("teddy_vhacd.urdf", "teddy_large.urdf", "teddy2_VHACD_CHs.obj"), "urdf", (0.06, 0.2)),
    EvalModel("soccerball", "ball", ("soccerball.urdf",), "urdf", (0.05, 0.2), True),
    EvalModel("sphere", "ball", ("sphere2red.urdf", "sphere2red_nocol.urdf", "sphere_1cm.urdf"), "urdf", (0.03, 0.12)),
    EvalModel("textured_sphere", "ball", ("sphere_small.urdf", "sphere2.urdf", "sphere_transparent.urdf",
                                          "sphere_with_restitution.urdf"), "urdf", (0.03, 0.12), True),
    EvalModel("concave_box", "container", ("toys/concave_box.obj", "toys/concave_box.urdf"), "obj", (0.12, 0.25), True),
    EvalModel("mug", "container", ("objects/mug.urdf", "urdf/mug.urdf"), "urdf", (0.07, 0.14)),
    EvalModel("shape_sorter", "container", ("toys/shape_sorter.obj",), "obj", (0.08, 0.2)),
    EvalModel("tray", "container", ("tray/traybox.urdf", "tray/tray.urdf", "tray/tray_textured2.urdf"), "urdf",
              (0.15, 0.25), True),
    EvalModel("block", "block", ("block.urdf",), "urdf", (0.04, 0.12)),
    EvalModel("cube", "block", ("cube_small.urdf", "cube.urdf", "cube_collisionfilter.urdf", "cube_no_rotation.urdf",
                                "cube_rotate.urdf", "sphere8cube.urdf"), "urdf", (0.02, 0.08)),
    EvalModel("domino", "block", ("domino/domino.urdf",), "urdf", (0.04, 0.08), True),
    EvalModel("jenga", "block", ("jenga/jenga.urdf",), "urdf", (0.08, 0.2), True),
    EvalModel("lego", "block", ("lego/lego.urdf", "lego/lego_vhacd.obj"), "urdf", (0.02, 0.08)),
    EvalModel("toy_cube", "toy", ("toys/cube.obj",), "obj", (0.03, 0.1)),
    EvalModel("toy_cylinder", "toy", ("toys/cylinder.obj",), "obj", (0.03, 0.1)),
    EvalModel("toy_prism", "toy", ("toys/prism.obj",), "obj", (0.03, 0.1)),
    EvalModel("stone", "other", ("stone.obj",), "obj", (0.05, 0.15)),
    EvalModel("torus", "other", ("torus/torus_textured.obj", "torus_deform.urdf"), "obj", (0.05, 0.15), True),
)


def referenced_files(relpath: str) -> set[str]:
    """`relpath` and every existing file it references, recursively (URDF mesh/texture filenames, OBJ
    mtllib, MTL map_Kd), as paths relative to pybullet_data."""
    import re

    root = pybullet_data.getDataPath()
    seen: set[str] = set()
    todo = [os.path.normpath(relpath)]
    while todo:
        rel = todo.pop()
        full = os.path.join(root, rel)
        if rel in seen or not os.path.isfile(full):
            continue
        seen.add(rel)
        base = os.path.dirname(rel)
        if rel.endswith((".urdf", ".sdf")):
            names = re.findall(r'filename="([^"]+)"', open(full, errors="ignore").read())
        elif rel.endswith(".obj"):
            names = [ln.split(None, 1)[1].strip() for ln in open(full, errors="ignore") if ln.startswith("mtllib ")]
        elif rel.endswith(".mtl"):
            names = [ln.split(None, 1)[1].strip() for ln in open(full, errors="ignore") if ln.strip().startswith("map_")]
        else:
            names = []
        for n in names:
            if "\\" in n or os.path.isabs(n):  # e.g. a Windows path in toys/shape_sorter.mtl: not loadable
                continue
            todo.append(os.path.normpath(os.path.join(base, n.replace("package://", ""))))
    return seen


def family_files(model: EvalModel) -> set[str]:
    out: set[str] = set()
    for f in model.files:
        out |= referenced_files(f)
    return out


def halve_eval_models(models: tuple[EvalModel, ...] = EVAL_MODELS) -> dict[str, tuple[str, ...]]:
    """The rule that defines the cross-domain halves (the result is pinned in CROSS_SPLITS).

    1. Families that share any file (mesh, texture; by content) form one group, so nothing a
       test-half model is made of appears in the val half (today no two families share one).
    2. Groups are ordered by kind (KIND_ORDER), then by the alphabetically first family name.
    3. They are assigned alternately to val and test (val first), one alternation across all kinds.
    """
    import hashlib

    root = pybullet_data.getDataPath()
    digest: dict[str, str] = {}

    def h(rel):
        if rel not in digest:
            digest[rel] = hashlib.md5(open(os.path.join(root, rel), "rb").read()).hexdigest()
        return digest[rel]

    parent = {m.family: m.family for m in models}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owner: dict[str, str] = {}
    for m in models:
        for rel in family_files(m):
            d = h(rel)
            if d in owner:
                parent[find(m.family)] = find(owner[d])
            else:
                owner[d] = m.family
    groups: dict[str, list[EvalModel]] = {}
    for m in models:
        groups.setdefault(find(m.family), []).append(m)
    ordered = sorted(groups.values(), key=lambda g: (min(KIND_ORDER.index(m.kind) for m in g), min(m.family for m in g)))
    halves: dict[str, list[str]] = {"val": [], "test": []}
    for i, g in enumerate(ordered):
        halves["val" if i % 2 == 0 else "test"].extend(sorted(m.family for m in g))
    return {k: tuple(sorted(v)) for k, v in halves.items()}


# The halves (pinned: tests/test_sim_domain.py checks that halve_eval_models() still gives them).
CROSS_SPLITS: dict[str, tuple[str, ...]] = {
    "val": ("block", "bunny", "concave_box", "domino", "lego", "shape_sorter", "sphere", "stone", "teddy",
            "toy_cylinder"),
    "test": ("cube", "duck", "jenga", "mug", "soccerball", "textured_sphere", "torus", "toy_cube", "toy_prism",
             "tray"),
}


def cross_models(split: str) -> list[EvalModel]:
    """The evaluation-only models of a cross-domain half."""
    if split not in CROSS_SPLITS:
        raise ValueError(f"unknown cross split {split!r}; expected one of {sorted(CROSS_SPLITS)}")
    names = set(CROSS_SPLITS[split])
    return [m for m in EVAL_MODELS if m.family in names]


def data_path(relpath: str) -> str:
    return os.path.join(pybullet_data.getDataPath(), relpath)


# ------------------------------------------------------------------------- sampling (wide / cross)
_GEOMETRY: dict[str, tuple[np.ndarray, np.ndarray]] = {}
_HELPER_CLIENT: list[int] = []


def model_geometry(path: str, loader: str) -> tuple[np.ndarray, np.ndarray]:
    """(extent (3,), centre (3,)) in metres of a model file at scale 1 (cached per process).

    URDFs are loaded in a private pybullet client (so the scene's own client, and thus its body
    ids and physics, never depend on what is cached); OBJ vertices are read directly.
    """
    if path in _GEOMETRY:
        return _GEOMETRY[path]
    if loader == "obj":
        v = np.array([[float(x) for x in ln.split()[1:4]] for ln in open(path, errors="ignore") if ln.startswith("v ")])
        lo, hi = v.min(0), v.max(0)
    else:
        import atexit

        import pybullet as pb

        if not _HELPER_CLIENT:
            _HELPER_CLIENT.append(pb.connect(pb.DIRECT))
            atexit.register(lambda: pb.disconnect(physicsClientId=_HELPER_CLIENT[0]))
        c = _HELPER_CLIENT[0]
        body = pb.loadURDF(path, physicsClientId=c)
        boxes = [pb.getAABB(body, j, physicsClientId=c) for j in range(-1, pb.getNumJoints(body, physicsClientId=c))]
        lo = np.min([b[0] for b in boxes], 0)
        hi = np.max([b[1] for b in boxes], 0)
        pb.removeBody(body, physicsClientId=c)
    _GEOMETRY[path] = (np.asarray(hi - lo, float), np.asarray((hi + lo) / 2, float))
    return _GEOMETRY[path]


LEANABLE = frozenset({"long_box", "rod", "book", "plate", "jenga", "domino", "block", "capsule", "bracket"})


def _color(rng: np.random.Generator, dark_prob: float) -> tuple[float, float, float, float]:
    if rng.random() < dark_prob:
        g = rng.uniform(0.02, 0.12)
        return (g, g, g * rng.uniform(0.9, 1.1), 1.0)
    return random_color(rng)


def _u(rng, r):
    return float(rng.uniform(r[0], r[1]))


def _procedural_spec(rng: np.random.Generator, fam: str, r, color, mass: float) -> ObjectSpec:
    """One object of a procedural family (training or cross); sizes in metres, clipped to r.size."""
    lo, hi = r.size
    tex = rng.random() < r.textured_fraction
    shiny = bool(rng.random() < r.shiny_prob)
    cl = lambda x: float(np.clip(x, lo / 2, hi / 2))  # noqa: E731  (a half extent)
    if fam in ("box", "book", "long_box"):
        if fam == "box":
            he = rng.uniform(0.01, 0.06, 3)
        elif fam == "book":
            he = np.array([_u(rng, (0.05, 0.125)), _u(rng, (0.035, 0.1)), _u(rng, (0.004, 0.025))])
        else:
            he = np.array([_u(rng, (0.075, 0.125)), _u(rng, (0.008, 0.025)), _u(rng, (0.008, 0.025))])
        he = tuple(cl(x) for x in he)
        return ObjectSpec("box", -1, he, color, mass, fam, textured=tex, shiny=shiny,
                          rest="upright" if fam != "box" else "any", radius=float(np.hypot(he[0], he[1])))
    if fam in ("cylinder", "plate", "rod"):
        if fam == "cylinder":
            rad, h = _u(rng, (0.012, 0.05)), _u(rng, (0.02, 0.16))
        elif fam == "plate":
            rad, h = _u(rng, (0.05, 0.12)), _u(rng, (0.006, 0.02))
        else:
            rad, h = _u(rng, (0.006, 0.02)), _u(rng, (0.12, 0.25))
        rad, h = cl(rad), float(np.clip(h, lo, hi))
        return ObjectSpec("cylinder", -1, (rad, h, 0.0), color, mass, fam, textured=tex and fam != "rod", shiny=shiny,
                          rest="lying" if fam == "rod" else "upright", radius=max(rad, h / 2 if fam == "rod" else rad))
    if fam == "sphere":
        rad = cl(_u(rng, (0.01, 0.045)))
        return ObjectSpec("sphere", -1, (rad, 0.0, 0.0), color, mass, fam, shiny=shiny, radius=rad)
    if fam == "capsule":
        rad, length = _u(rng, (0.01, 0.035)), _u(rng, (0.03, 0.16))
        return ObjectSpec("capsule", -1, (rad, length, 0.0), color, mass, fam, shiny=shiny, rest="lying",
                          radius=length / 2 + rad)
    if fam == "bowl":
        R, ratio = _u(rng, (0.045, 0.12)), _u(rng, (0.45, 0.7))
        depth = min(_u(rng, (0.03, 0.07)), R)
        t = _u(rng, (0.003, 0.006))
        return ObjectSpec("compound", -1, (R, R, depth / 2), color, mass, fam, params=(R, depth, ratio, t),
                          shiny=shiny, rest="upright", radius=R)
    if fam == "cup":
        rad, h, taper = _u(rng, (0.028, 0.05)), _u(rng, (0.06, 0.13)), _u(rng, (0.0, 0.25))
        t, handle = _u(rng, (0.003, 0.006)), bool(rng.random() < 0.5)
        return ObjectSpec("compound", -1, (rad * 1.2, rad * 1.2, h / 2), color, mass, fam, params=(rad, h, t, taper, handle),
                          shiny=shiny, rest="upright", radius=rad * (1 + taper) + (0.02 if handle else 0.0))
    if fam == "open_box":
        hx, hy, hz, t = _u(rng, (0.035, 0.11)), _u(rng, (0.03, 0.09)), _u(rng, (0.015, 0.05)), _u(rng, (0.003, 0.008))
        return ObjectSpec("compound", -1, (hx, hy, hz), color, mass, fam, params=(hx, hy, hz, t), shiny=shiny,
                          rest="upright", radius=float(np.hypot(hx, hy)))
    if fam == "bracket":
        l1, l2, w, t = _u(rng, (0.05, 0.18)), _u(rng, (0.04, 0.15)), _u(rng, (0.015, 0.04)), _u(rng, (0.004, 0.015))
        upright = bool(rng.random() < 0.5)
        return ObjectSpec("compound", -1, (l1 / 2, max(w, l2) / 2, t), color, mass, fam, params=(l1, l2, w, t, upright),
                          shiny=shiny, rest="upright", radius=max(l1, l2) * 0.7)
    if fam in ("cone", "ngon_prism", "star_prism"):
        if fam == "cone":
            outline, n, rad, h, top = "ngon", 24, _u(rng, (0.02, 0.06)), _u(rng, (0.04, 0.15)), _u(rng, (0.0, 0.5))
        elif fam == "ngon_prism":
            outline, n, rad, h, top = "ngon", int(rng.choice([3, 5, 6, 8])), _u(rng, (0.02, 0.07)), _u(rng, (0.015, 0.12)), 1.0
        else:
            outline, n, rad, h, top = "star", int(rng.integers(4, 7)), _u(rng, (0.03, 0.09)), _u(rng, (0.01, 0.05)), 1.0
        inner = _u(rng, (0.35, 0.6))
        return ObjectSpec("prism", -1, (rad, rad, h / 2), color, mass, fam, params=(outline, n, rad, h, top, inner),
                          textured=tex and fam != "cone", shiny=shiny, rest="upright" if rng.random() < 0.6 else "lying",
                          radius=max(rad, h / 2))
    raise ValueError(f"unknown procedural family {fam!r}")


def sample_wide_specs(rng: np.random.Generator, split: str, n: int, r) -> list[ObjectSpec]:
    """`n` training-domain objects (r: randomization.ObjectRanges): random_urdfs meshes of `split`
    (never repeated within the scene) and the procedural TRAIN_PROCEDURAL_FAMILIES."""
    ids = split_object_ids(split)
    mesh_ids = iter(rng.permutation(ids).tolist())
    names = list(r.family_weights)
    unknown = set(names) - {"mesh", *TRAIN_PROCEDURAL_FAMILIES}
    if unknown:
        raise ValueError(f"randomization.objects.family_weights: not training families: {sorted(unknown)}")
    p = np.array([r.family_weights[k] for k in names], float)
    specs = []
    for _ in range(n):
        fam = names[int(rng.choice(len(names), p=p / p.sum()))]
        mass = _u(rng, r.mass)
        color = _color(rng, r.dark_prob)
        if fam == "mesh":
            oid = next(mesh_ids)
            ext, _ = model_geometry(random_urdf_path(oid), "urdf")
            target = float(np.exp(rng.uniform(np.log(r.mesh_extent[0]), np.log(r.mesh_extent[1]))))
            scale = target / max(float(ext.max()), 1e-4)
            specs.append(ObjectSpec("mesh", oid, (scale, 0.0, 0.0), color, mass, "mesh",
                                    shiny=bool(rng.random() < r.shiny_prob), radius=0.5 * target))
        else:
            specs.append(_procedural_spec(rng, fam, r, color, mass))
    return specs


def sample_cross_specs(rng: np.random.Generator, split: str, n: int, r) -> list[ObjectSpec]:
    """`n` cross-domain objects of half `split` (val / test): its evaluation-only models (share
    r.cross_model_fraction) and its unseen procedural families."""
    models = cross_models(split)
    fams = CROSS_PROCEDURAL_FAMILIES[split]
    specs = []
    for _ in range(n):
        mass = _u(rng, r.mass)
        color = _color(rng, r.dark_prob)
        if rng.random() < r.cross_model_fraction:
            m = models[int(rng.integers(len(models)))]
            path = data_path(m.files[0])
            ext, centre = model_geometry(path, m.loader)
            target = float(np.clip(_u(rng, m.extent), *r.size))
            scale = target / max(float(ext.max()), 1e-4)
            keep = m.textured and rng.random() < 0.6  # the model's own texture, else recoloured
            specs.append(ObjectSpec("model", -1, (scale, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0) if keep else color, mass,
                                    m.family, params=(m.loader, *(centre * scale)), path=m.files[0],
                                    shiny=bool(rng.random() < r.shiny_prob), radius=0.5 * target))
        else:
            specs.append(_procedural_spec(rng, fams[int(rng.integers(len(fams)))], r, color, mass))
    return specs
