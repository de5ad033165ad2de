"""Procedural geometry and textures of the randomised twin: no model file from pybullet_data.

Everything here is built from pybullet primitives (boxes, cylinders, spheres, capsules) or from OBJ
meshes generated into a scene's temporary folder. Units: metres; a body's origin is the centre of
its bottom face unless a builder says otherwise (so it can be placed on a surface at z = its origin).

- Textures (H,W,3 uint8 RGB): `object_texture` (stripes, checker, dots, print-like packaging and
  book covers, blotches), `room_texture` (floor tiles, planks, carpet, paint, concrete).
- Meshes: `write_quad_obj` (a textured plane with tiled UVs, normal +z; TinyRenderer culls back
  faces), `write_prism_obj` (n-gon and star prisms, cones, frustums; flat normals).
- Compound shapes: `Part` lists turned into one multibody by `create_compound` (bowls, cups, open
  boxes, brackets, shelves, chairs and tables are all lists of parts).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np
import pybullet as pb

# ------------------------------------------------------------------------------------------ colours


def hsv_color(rng: np.random.Generator, s: tuple[float, float] = (0.3, 1.0), v: tuple[float, float] = (0.35, 1.0)):
    h = rng.random()
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(*s), rng.uniform(*v))
    return np.array([r, g, b])


def room_color(rng: np.random.Generator) -> np.ndarray:
    """Muted colours of walls, floors and furniture (paint, wood, grey metal, white)."""
    k = rng.integers(4)
    if k == 0:  # near-white / grey
        g = rng.uniform(0.55, 0.95)
        return np.clip(g + rng.normal(0, 0.03, 3), 0, 1)
    if k == 1:  # wood
        return np.array(colorsys.hsv_to_rgb(rng.uniform(0.05, 0.11), rng.uniform(0.35, 0.75), rng.uniform(0.3, 0.8)))
    if k == 2:  # dark (black furniture, dark floors: these lose depth on real sensors)
        return np.full(3, rng.uniform(0.05, 0.25)) + rng.normal(0, 0.02, 3)
    return hsv_color(rng, (0.1, 0.45), (0.4, 0.9))  # pastel paint


# ----------------------------------------------------------------------------------------- textures


def _blend(base: np.ndarray, other: np.ndarray, t: np.ndarray) -> np.ndarray:
    img = base[None, None] * (1 - t[..., None]) + other[None, None] * t[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def object_texture(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A texture for object faces: stripes, checker, dots, print-like (text lines, boxes, barcode), blotches."""
    a, b = hsv_color(rng) * 255, hsv_color(rng) * 255
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = int(rng.integers(5))
    if kind == 0:  # stripes at any angle
        ang = rng.uniform(0, np.pi)
        f = rng.uniform(3, 20)
        t = (np.sin(2 * np.pi * f * (np.cos(ang) * xx + np.sin(ang) * yy)) > rng.uniform(-0.5, 0.5)).astype(np.float32)
        return _blend(a, b, t)
    if kind == 1:  # checker
        n = int(rng.integers(2, 12))
        return _blend(a, b, ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32))
    if kind == 2:  # polka dots
        n = int(rng.integers(3, 10))
        r = rng.uniform(0.15, 0.4) / n
        dx, dy = (xx * n) % 1 - 0.5, (yy * n) % 1 - 0.5
        return _blend(a, b, ((dx * dx + dy * dy) < (r * n) ** 2).astype(np.float32))
    if kind == 3:  # print-like: a cover / package with blocks of text, a title, a barcode
        img = np.empty((size, size, 3), np.uint8)
        img[:] = a
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = rng.integers(0, size - 40, 2)
            x1, y1 = x0 + rng.integers(30, size - x0), y0 + rng.integers(20, size - y0)
            cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), [int(c) for c in hsv_color(rng) * 255], -1)
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz0123456789"
        y = int(rng.integers(20, 60))
        while y < size - 8:
            scale = float(rng.uniform(0.3, 1.4))
            text = "".join(letters[int(i)] for i in rng.integers(0, len(letters), int(rng.integers(4, 18))))
            col = [int(c) for c in (b if rng.random() < 0.7 else 255 - a)]
            cv2.putText(img, text, (int(rng.integers(2, 40)), y), int(rng.integers(0, 8)), scale, col,
                        int(rng.integers(1, 3)), cv2.LINE_AA)
            y += int(18 + 30 * scale)
        if rng.random() < 0.4:  # a barcode
            x, y0 = int(rng.integers(10, size // 2)), int(rng.integers(size // 2, size - 40))
            for w in rng.integers(1, 5, 30):
                if x + w >= size:
                    break
                if rng.random() < 0.55:
                    img[y0 : y0 + 30, x : x + int(w)] = 0
                x += int(w)
        return img
    t = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), size / rng.uniform(8, 30))  # blotches
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return _blend(a, b, t)


def room_texture(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, float]:
    """A floor / wall texture and the size in metres one texture repeat covers."""
    base = room_color(rng) * 255
    other = np.clip(base * rng.uniform(0.6, 1.3) + rng.normal(0, 20, 3), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = int(rng.integers(5))
    if kind == 0:  # tiles with grout; one texture = n x n tiles
        n = int(rng.integers(1, 4))
        tile = rng.uniform(0.2, 0.6)
        g = 0.02 * n
        grout = ((xx * n) % 1 < g) | ((yy * n) % 1 < g)
        jitter = rng.normal(0, 8, (n, n, 3))
        img = base[None, None] + jitter[(yy * n).astype(int).clip(0, n - 1), (xx * n).astype(int).clip(0, n - 1)]
        img[grout] = other * 0.7
        return np.clip(img, 0, 255).astype(np.uint8), tile * n
    if kind == 1:  # planks
        n = int(rng.integers(3, 8))
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (rng.uniform(10, 40) * xx + 0.5 * np.sin(2 * np.pi * 3 * yy)))
        t = 0.3 * grain + 0.4 * (((yy * n) % 1) < 0.03)
        t += 0.15 * ((np.floor(yy * n) % 2) == 1)
        return _blend(base, other, np.clip(t, 0, 1).astype(np.float32)), rng.uniform(0.8, 2.0)
    if kind == 2:  # carpet speckle
        t = (rng.random((size, size)) < rng.uniform(0.2, 0.5)).astype(np.float32)
        return _blend(base, other, 0.5 * t), rng.uniform(0.3, 0.8)
    if kind == 3:  # concrete / paint: smooth noise
        t = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), size / 20)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return _blend(base, other, 0.4 * t), rng.uniform(0.8, 3.0)
    return _blend(base, other, ((np.floor(xx * 2) + np.floor(yy * 2)) % 2).astype(np.float32) * 0.6), rng.uniform(0.4, 1.2)


def write_texture(path: str, img: np.ndarray) -> str:
    cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return path


# ------------------------------------------------------------------------------------------- meshes


def write_quad_obj(path: str, half_x: float, half_y: float, repeats_x: float, repeats_y: float) -> str:
    """A rectangle in the local x-y plane (normal +z, counter-clockwise), UVs tiled `repeats` times."""
    hx, hy, rx, ry = half_x, half_y, repeats_x, repeats_y
    with open(path, "w") as f:
        f.write(f"v {-hx} {-hy} 0\nv {hx} {-hy} 0\nv {hx} {hy} 0\nv {-hx} {hy} 0\n")
        f.write(f"vt 0 0\nvt {rx} 0\nvt {rx} {ry}\nvt 0 {ry}\nvn 0 0 1\n")
        f.write("f 1/1/1 2/2/1 3/3/1\nf 1/1/1 3/3/1 4/4/1\n")
    return path


def prism_outline(kind: str, n: int, r: float, inner: float = 0.45) -> np.ndarray:
    """(m, 2) counter-clockwise outline of an n-gon or an n-pointed star of outer radius r."""
    if kind == "star":
        ang = np.arange(2 * n) * np.pi / n
        rad = np.where(np.arange(2 * n) % 2 == 0, r, r * inner)
        return np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
    ang = np.arange(n) * 2 * np.pi / n
    return np.stack([r * np.cos(ang), r * np.sin(ang)], 1)


def write_prism_obj(path: str, outline: np.ndarray, height: float, top_scale: float = 1.0) -> str:
    """An extruded outline from z = 0 to z = height with flat normals; `top_scale` < 1 tapers it
    (0 gives a cone / pyramid). Side UVs run around the outline, caps are planar-mapped."""
    m = len(outline)
    bot = np.c_[outline, np.zeros(m)]
    top = np.c_[outline * top_scale, np.full(m, height)]
    ext = max(float(np.abs(outline).max()), 1e-6)
    verts, uvs, norms, faces = [], [], [], []

    def tri(a, b, c, ua, ub, uc):
        n = np.cross(b - a, c - a)
        nn = np.linalg.norm(n)
        if nn < 1e-12:
            return
        base = len(verts)
        verts.extend([a, b, c])
        uvs.extend([ua, ub, uc])
        norms.append(n / nn)
        faces.append((base, base + 1, base + 2, len(norms) - 1))

    centre_b, centre_t = np.zeros(3), np.array([0.0, 0.0, height])
    for i in range(m):
        j = (i + 1) % m
        u0, u1 = i / m, (i + 1) / m
        tri(bot[i], bot[j], top[j], (u0, 0), (u1, 0), (u1, 1))
        if top_scale > 0:
            tri(bot[i], top[j], top[i], (u0, 0), (u1, 1), (u0, 1))
            tri(centre_t, top[i], top[j], (0.5, 0.5), (*(0.5 + 0.5 * top[i, :2] / ext),), (*(0.5 + 0.5 * top[j, :2] / ext),))
        tri(centre_b, bot[j], bot[i], (0.5, 0.5), (*(0.5 + 0.5 * bot[j, :2] / ext),), (*(0.5 + 0.5 * bot[i, :2] / ext),))
    with open(path, "w") as f:
        for v in verts:
            f.write(f"v {v[0]:.6f} {v[1]:.6f} {v[2]:.6f}\n")
        for uv in uvs:
            f.write(f"vt {uv[0]:.5f} {uv[1]:.5f}\n")
        for n in norms:
            f.write(f"vn {n[0]:.5f} {n[1]:.5f} {n[2]:.5f}\n")
        for a, b, c, n in faces:
            f.write(f"f {a + 1}/{a + 1}/{n + 1} {b + 1}/{b + 1}/{n + 1} {c + 1}/{c + 1}/{n + 1}\n")
    return path


# ----------------------------------------------------------------------------------------- compounds


@dataclass
class Part:
    """One primitive of a compound body, in the body frame (metres).

    shape: 'box' (size = half extents), 'cylinder' (radius, length), 'sphere' (radius,),
    'capsule' (radius, length) or 'mesh' (file, scale xyz).
    """

    shape: str
    size: tuple
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orn: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    rgba: tuple[float, float, float, float] | None = None


MAX_PARTS = 16  # pybullet's MAX_COMPOUND_COLLISION_SHAPES: more crashes the server

_GEOM = {"box": pb.GEOM_BOX, "cylinder": pb.GEOM_CYLINDER, "sphere": pb.GEOM_SPHERE, "capsule": pb.GEOM_CAPSULE,
         "mesh": pb.GEOM_MESH}


def _shape_kwargs(p: Part) -> dict:
    if p.shape == "box":
        return {"halfExtents": list(p.size)}
    if p.shape in ("cylinder", "capsule"):
        return {"radius": float(p.size[0]), "length": float(p.size[1])}
    if p.shape == "sphere":
        return {"radius": float(p.size[0])}
    if p.shape == "mesh":
        return {"fileName": p.size[0], "meshScale": list(p.size[1])}
    raise ValueError(f"unknown part shape {p.shape!r}")


def create_compound(
    client: int, parts: list[Part], pos, orn=(0, 0, 0, 1), mass: float = 0.0, rgba=(1, 1, 1, 1), collide: bool = True,
) -> int:
    """One multibody from a list of parts (mass 0 = static). A single part uses the plain calls."""
    c = client
    if len(parts) == 1:
        p = parts[0]
        kw = _shape_kwargs(p)
        vkw = dict(kw)
        if p.shape in ("cylinder", "capsule"):
            ckw = {"radius": kw["radius"], "height": kw["length"]}
        else:
            ckw = dict(kw)
        vis = pb.createVisualShape(_GEOM[p.shape], rgbaColor=list(p.rgba or rgba), visualFramePosition=list(p.pos),
                                   visualFrameOrientation=list(p.orn), physicsClientId=c, **vkw)
        col = (pb.createCollisionShape(_GEOM[p.shape], collisionFramePosition=list(p.pos),
                                       collisionFrameOrientation=list(p.orn), physicsClientId=c, **ckw)
               if collide else -1)
        return pb.createMultiBody(mass, col, vis, list(pos), list(orn), physicsClientId=c)
    if len(parts) > MAX_PARTS:
        raise ValueError(f"a compound body takes at most {MAX_PARTS} parts (pybullet's limit), got {len(parts)}")
    types = [_GEOM[p.shape] for p in parts]
    half = [list(p.size) if p.shape == "box" else [0, 0, 0] for p in parts]
    radii = [float(p.size[0]) if p.shape in ("cylinder", "capsule", "sphere") else 0.0 for p in parts]
    lengths = [float(p.size[1]) if p.shape in ("cylinder", "capsule") else 0.0 for p in parts]
    files = [p.size[0] if p.shape == "mesh" else "" for p in parts]
    scales = [list(p.size[1]) if p.shape == "mesh" else [1, 1, 1] for p in parts]
    poss = [list(p.pos) for p in parts]
    orns = [list(p.orn) for p in parts]
    colors = [list(p.rgba or rgba) for p in parts]
    vis = pb.createVisualShapeArray(types, halfExtents=half, radii=radii, lengths=lengths, fileNames=files,
                                    meshScales=scales, rgbaColors=colors, visualFramePositions=poss,
                                    visualFrameOrientations=orns, physicsClientId=c)
    col = -1
    if collide:
        col = pb.createCollisionShapeArray(types, halfExtents=half, radii=radii, lengths=lengths, fileNames=files,
                                           meshScales=scales, collisionFramePositions=poss,
                                           collisionFrameOrientations=orns, physicsClientId=c)
    return pb.createMultiBody(mass, col, vis, list(pos), list(orn), physicsClientId=c)


def ring_of_boxes(r_bottom: float, r_top: float, z0: float, z1: float, thickness: float, n: int, rgba=None) -> list[Part]:
    """`n` thin boxes forming a (possibly flared) wall of revolution from radius r_bottom at z0 to r_top at z1."""
    parts = []
    dr, dz = r_top - r_bottom, z1 - z0
    length = float(np.hypot(dr, dz))
    tilt = float(np.arctan2(dr, dz))
    r_mid = 0.5 * (r_top + r_bottom)
    width = 2 * np.pi * max(r_top, r_bottom) / n * 0.58  # half width, overlapping a little
    for i in range(n):
        th = 2 * np.pi * i / n
        pos = (r_mid * np.cos(th), r_mid * np.sin(th), z0 + 0.5 * dz)
        orn = pb.getQuaternionFromEuler([0.0, tilt, th])
        parts.append(Part("box", (thickness / 2, width, length / 2), pos, orn, rgba))
    return parts


def bowl_parts(radius: float, depth: float, bottom_ratio: float, thickness: float, n: int = 14) -> list[Part]:
    rb = radius * bottom_ratio
    return [Part("cylinder", (rb + thickness, thickness), (0, 0, thickness / 2))] + ring_of_boxes(
        rb, radius, thickness, depth, thickness, n
    )


def cup_parts(radius: float, height: float, thickness: float, taper: float, handle: bool, n: int = 12) -> list[Part]:
    parts = [Part("cylinder", (radius, thickness), (0, 0, thickness / 2))]
    parts += ring_of_boxes(radius, radius * (1 + taper), thickness, height, thickness, n)
    if handle:
        x = radius * (1 + taper / 2) + 0.012
        h = 0.3 * height
        parts += [
            Part("box", (0.004, 0.005, h), (x, 0, height / 2)),
            Part("box", (0.007, 0.005, 0.004), (x - 0.006, 0, height / 2 + h)),
            Part("box", (0.007, 0.005, 0.004), (x - 0.006, 0, height / 2 - h)),
        ]
    return parts


def open_box_parts(hx: float, hy: float, hz: float, t: float) -> list[Part]:
    """A crate / tray: bottom and four walls, height 2 hz."""
    return [
        Part("box", (hx, hy, t / 2), (0, 0, t / 2)),
        Part("box", (t / 2, hy, hz), (hx - t / 2, 0, hz)),
        Part("box", (t / 2, hy, hz), (-hx + t / 2, 0, hz)),
        Part("box", (hx, t / 2, hz), (0, hy - t / 2, hz)),
        Part("box", (hx, t / 2, hz), (0, -hy + t / 2, hz)),
    ]


def bracket_parts(l1: float, l2: float, w: float, t: float, upright: bool) -> list[Part]:
    """An L: two bars sharing a corner, either both lying flat or one standing (an angle bracket)."""
    if upright:
        return [Part("box", (l1 / 2, w / 2, t / 2), (l1 / 2, 0, t / 2)), Part("box", (t / 2, w / 2, l2 / 2), (t / 2, 0, l2 / 2))]
    return [Part("box", (l1 / 2, w / 2, t / 2), (l1 / 2 - w / 2, 0, t / 2)),
            Part("box", (w / 2, l2 / 2, t / 2), (0, l2 / 2 - w / 2, t / 2))]
