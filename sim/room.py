"""The randomised cell around the objects: a table of random size, height and shape with legs, and a
room (floor, walls, furniture, a second table, off-table clutter, a robot pedestal).

World frame = robot base frame (x forward, y left, z up, metres). The table top is always the plane
z = 0 (the robot base height); the floor lies at z = -table height. Everything built here is static
(mass 0) and is background: it is never an instance in the ground-truth labels (label 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pybullet as pb

from sim.procedural import Part, create_compound, hsv_color, room_color
from sim.randomization import RoomRanges, TableRanges

# texture maker: (image (H,W,3) uint8) -> pybullet texture id; quad maker: (half x, half y, repeats x, y) -> obj path
TextureFn = Callable[[np.ndarray], int]
QuadFn = Callable[[float, float, float, float], str]


@dataclass
class TableTop:
    """The table top (world frame): a rectangle or a disc whose top face is z = 0."""

    shape: str = "rect"
    center_xy: tuple[float, float] = (0.55, 0.0)
    half_xy: tuple[float, float] = (0.45, 0.6)  # round: (radius, radius)
    height: float = 0.76  # top above the floor
    thickness: float = 0.05
    shiny: bool = False

    def contains(self, xy, margin: float = 0.0) -> bool:
        d = np.asarray(xy, float)[:2] - np.asarray(self.center_xy)
        if self.shape == "round":
            return bool(np.hypot(*d) <= self.half_xy[0] + margin)
        return bool(np.all(np.abs(d) <= np.asarray(self.half_xy) + margin))

    def bounds(self) -> tuple[tuple[float, float], tuple[float, float]]:
        (cx, cy), (hx, hy) = self.center_xy, self.half_xy
        return ((cx - hx, cx + hx), (cy - hy, cy + hy))


def sample_table(rng: np.random.Generator, r: TableRanges, ws_center, ws_half, margin: float = 0.05) -> TableTop:
    """A table that covers the workspace (+ `margin`) with its robot-side edge near the robot."""
    shape = r.shapes[int(rng.choice(len(r.shapes), p=np.array(r.shape_weights) / sum(r.shape_weights)))]
    x0 = float(rng.uniform(*r.near_edge_x))
    (wx, wy), (hx_w, hy_w) = ws_center, ws_half
    height, thick = float(rng.uniform(*r.height)), float(rng.uniform(*r.thickness))
    shiny = bool(rng.random() < r.shiny_prob)
    if shape == "round":
        rad = float(rng.uniform(*r.radius))
        while True:  # grow until every workspace corner is `margin` inside the disc
            c = x0 + rad
            far = max(abs(wx - hx_w - c), abs(wx + hx_w - c)) ** 2 + (abs(wy) + hy_w) ** 2
            if far <= (rad - margin) ** 2:
                break
            rad += 0.01
        return TableTop("round", (x0 + rad, 0.0), (rad, rad), height, thick, shiny)
    hx = max(float(rng.uniform(*r.half_x)), (wx + hx_w + margin - x0) / 2)
    hy = float(rng.uniform(*r.half_y))
    hy = max(hy, hy_w + margin + abs(wy))
    cy = float(np.clip(rng.uniform(*r.center_y), wy + hy_w + margin - hy, wy - hy_w - margin + hy))
    return TableTop("rect", (x0 + hx, cy), (hx, hy), height, thick, shiny)


def _legs_parts(top: TableTop, rng: np.random.Generator, r: TableRanges, color) -> list[Part]:
    """Legs (and an apron) under the top, from the floor to the top's underside (body frame = world)."""
    z_under, z_floor = -top.thickness, -top.height
    leg_h = z_under - z_floor
    w = float(rng.uniform(*r.leg_width))
    (cx, cy), (hx, hy) = top.center_xy, top.half_xy
    parts: list[Part] = []
    round_legs = rng.random() < 0.4
    if top.shape == "round" and rng.random() < 0.6:  # a pedestal: column + foot
        col_r = max(w, 0.035)
        parts.append(Part("cylinder", (col_r, leg_h), (cx, cy, z_floor + leg_h / 2), rgba=color))
        parts.append(Part("cylinder", (top.half_xy[0] * rng.uniform(0.35, 0.6), 0.02), (cx, cy, z_floor + 0.01), rgba=color))
        return parts
    inset = float(rng.uniform(0.02, 0.12))
    if top.shape == "round":
        n = int(rng.integers(3, 5))
        rad = top.half_xy[0] - inset - w
        corners = [(cx + rad * np.cos(a), cy + rad * np.sin(a)) for a in np.arange(n) * 2 * np.pi / n + rng.uniform(0, np.pi)]
    else:
        corners = [(cx + sx * (hx - inset - w / 2), cy + sy * (hy - inset - w / 2)) for sx in (-1, 1) for sy in (-1, 1)]
    for x, y in corners:
        if round_legs:
            parts.append(Part("cylinder", (w / 2, leg_h), (x, y, z_floor + leg_h / 2), rgba=color))
        else:
            parts.append(Part("box", (w / 2, w / 2, leg_h / 2), (x, y, z_floor + leg_h / 2), rgba=color))
    if top.shape == "rect" and rng.random() < r.apron_prob:
        ah = float(rng.uniform(0.04, 0.1)) / 2
        ax, ay = hx - inset, hy - inset
        z = z_under - ah
        parts += [
            Part("box", (0.01, ay, ah), (cx + ax, cy, z), rgba=color), Part("box", (0.01, ay, ah), (cx - ax, cy, z), rgba=color),
            Part("box", (ax, 0.01, ah), (cx, cy + ay, z), rgba=color), Part("box", (ax, 0.01, ah), (cx, cy - ay, z), rgba=color),
        ]
    return parts


def build_table(client: int, top: TableTop, rng: np.random.Generator, r: TableRanges, top_texture: np.ndarray | None,
                texture: TextureFn) -> tuple[int, list[int]]:
    """The top (one body, collision, its own look) and its legs (a second static body)."""
    c = client
    (cx, cy), (hx, hy) = top.center_xy, top.half_xy
    pos = [cx, cy, -top.thickness / 2]
    if top.shape == "round":
        col = pb.createCollisionShape(pb.GEOM_CYLINDER, radius=hx, height=top.thickness, physicsClientId=c)
        vis = pb.createVisualShape(pb.GEOM_CYLINDER, radius=hx, length=top.thickness, rgbaColor=[1, 1, 1, 1], physicsClientId=c)
    else:
        he = [hx, hy, top.thickness / 2]
        col = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=he, physicsClientId=c)
        vis = pb.createVisualShape(pb.GEOM_BOX, halfExtents=he, rgbaColor=[1, 1, 1, 1], physicsClientId=c)
    body = pb.createMultiBody(0, col, vis, pos, physicsClientId=c)
    pb.changeDynamics(body, -1, lateralFriction=float(rng.uniform(0.45, 0.8)), physicsClientId=c)
    if top_texture is not None:
        tint = [*rng.uniform(0.55, 1.0, 3), 1.0]
        pb.changeVisualShape(body, -1, textureUniqueId=texture(top_texture), rgbaColor=tint, physicsClientId=c)
    else:
        pb.changeVisualShape(body, -1, rgbaColor=[*hsv_color(rng, (0.0, 0.9), (0.08, 1.0)), 1.0], physicsClientId=c)
    leg_color = (*room_color(rng), 1.0)
    legs = create_compound(c, _legs_parts(top, rng, r, leg_color), (0, 0, 0), collide=False)
    return body, [legs]


# ------------------------------------------------------------------------------------------- room


@dataclass
class Room:
    """What `build_room` made: every body id (all background) and the surfaces clutter can stand on."""

    bodies: list[int] = field(default_factory=list)
    floor_z: float = -0.76
    surfaces: list[tuple[tuple[float, float], tuple[float, float], float]] = field(default_factory=list)
    walls: dict[str, float] = field(default_factory=dict)  # side -> coordinate of the wall plane
    furniture: list[str] = field(default_factory=list)


def _plane(client, quad: QuadFn, texture: TextureFn, tex: tuple[np.ndarray, float] | None, color, half_a: float,
           half_b: float, pos, orn) -> int:
    """A visual-only textured (tiled) or plain rectangle; local normal +z."""
    if tex is not None:
        img, metres = tex
        path = quad(half_a, half_b, 2 * half_a / metres, 2 * half_b / metres)
        vis = pb.createVisualShape(pb.GEOM_MESH, fileName=path, rgbaColor=[1, 1, 1, 1], physicsClientId=client)
        body = pb.createMultiBody(0, -1, vis, list(pos), list(orn), physicsClientId=client)
        tint = [*np.clip(color * 0.5 + 0.6, 0, 1), 1.0]
        pb.changeVisualShape(body, -1, textureUniqueId=texture(img), rgbaColor=tint, physicsClientId=client)
        return body
    vis = pb.createVisualShape(pb.GEOM_BOX, halfExtents=[half_a, half_b, 0.001], rgbaColor=[*color, 1.0], physicsClientId=client)
    return pb.createMultiBody(0, -1, vis, list(pos), list(orn), physicsClientId=client)


def _furniture_parts(kind: str, rng: np.random.Generator, color) -> tuple[list[Part], float, float, list]:
    """(parts in a frame whose origin is the floor point under the piece, footprint radius, height,
    local support surfaces [(centre xy, half xy, z)])."""
    col = (*color, 1.0)
    if kind == "cabinet":
        hx, hy, h = rng.uniform(0.18, 0.3), rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.2)
        parts = [Part("box", (hx, hy, h / 2), (0, 0, h / 2), rgba=col)]
        dark = (*np.clip(np.array(color) * 0.6, 0, 1), 1.0)
        parts.append(Part("box", (0.005, hy * 0.9, 0.01), (hx + 0.004, 0, h * rng.uniform(0.6, 0.9)), rgba=dark))
        return parts, float(np.hypot(hx, hy)), h, [((0, 0), (hx * 0.9, hy * 0.9), h)]
    if kind == "shelf":
        hx, hy, h = rng.uniform(0.15, 0.25), rng.uniform(0.3, 0.6), rng.uniform(0.8, 1.8)
        t = 0.015
        n = int(rng.integers(2, 5))
        parts = [Part("box", (hx, t, h / 2), (0, hy - t, h / 2), rgba=col), Part("box", (hx, t, h / 2), (0, -hy + t, h / 2), rgba=col),
                 Part("box", (t, hy, h / 2), (-hx + t, 0, h / 2), rgba=col)]
        surfaces = []
        for k in range(n + 1):
            z = 0.05 + k * (h - 0.07) / n
            parts.append(Part("box", (hx, hy, t), (0, 0, z), rgba=col))
            surfaces.append(((0.0, 0.0), (hx * 0.8, hy * 0.85), z + t))
        return parts, float(np.hypot(hx, hy)), h, surfaces
    if kind == "chair":
        s, hs = rng.uniform(0.18, 0.24), rng.uniform(0.42, 0.5)
        lw = 0.015
        parts = [Part("box", (s, s, 0.02), (0, 0, hs), rgba=col)]
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(Part("box", (lw, lw, hs / 2), (sx * (s - lw), sy * (s - lw), hs / 2), rgba=col))
        back_h = rng.uniform(0.3, 0.45)
        parts.append(Part("box", (0.015, s, back_h / 2), (-s + 0.015, 0, hs + back_h / 2), rgba=col))
        return parts, float(np.sqrt(2) * s), hs + back_h, [((0.0, 0.0), (s * 0.7, s * 0.7), hs + 0.02)]
    if kind == "bin":
        rad, h = rng.uniform(0.1, 0.2), rng.uniform(0.25, 0.5)
        return [Part("cylinder", (rad, h), (0, 0, h / 2), rgba=col)], rad, h, []
    # a stack of cardboard boxes
    parts, z, surfaces = [], 0.0, []
    hx, hy = rng.uniform(0.12, 0.3), rng.uniform(0.12, 0.3)
    for _ in range(int(rng.integers(1, 4))):
        hz = rng.uniform(0.08, 0.2)
        parts.append(Part("box", (hx, hy, hz), (rng.normal(0, 0.02), rng.normal(0, 0.02), z + hz),
                          rgba=(*np.clip(np.array([0.62, 0.47, 0.3]) * rng.uniform(0.7, 1.2), 0, 1), 1.0)))
        z += 2 * hz
        hx, hy = hx * rng.uniform(0.7, 1.0), hy * rng.uniform(0.7, 1.0)
    surfaces.append(((0.0, 0.0), (hx * 0.8, hy * 0.8), z))
    return parts, float(np.hypot(hx, hy)) * 1.3, z, surfaces


FURNITURE_KINDS = ("cabinet", "shelf", "chair", "bin", "boxes")


def build_room(client: int, rng: np.random.Generator, r: RoomRanges, top: TableTop, eye: np.ndarray,
               ws_center, texture: TextureFn, quad: QuadFn, room_texture: Callable, clutter_texture: Callable,
               pedestal: bool = True) -> Room:
    """Floor, four walls beyond the table, camera and robot, furniture, a second table, clutter."""
    c = client
    zf = -top.height
    room = Room(floor_z=zf)
    (x0, x1), (y0, y1) = top.bounds()
    wcx, wcy = ws_center
    # walls: beyond the table, the camera and the robot (x = -0.35) on each side
    need = {"+x": max(x1, eye[0]) - wcx, "-x": wcx - min(x0, eye[0], -0.35), "+y": max(y1, eye[1]) - wcy,
            "-y": wcy - min(y0, eye[1])}
    for side in ("+x", "-x", "+y", "-y"):
        room.walls[side] = float(need[side] + 0.3 + rng.uniform(*r.wall_gap))
    X0, X1 = wcx - room.walls["-x"], wcx + room.walls["+x"]
    Y0, Y1 = wcy - room.walls["-y"], wcy + room.walls["+y"]
    # floor: collision box (top face at zf) + a tiled textured plane
    fx, fy = (X1 - X0) / 2, (Y1 - Y0) / 2
    fcol = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=[fx, fy, 0.01], physicsClientId=c)
    room.bodies.append(pb.createMultiBody(0, fcol, -1, [(X0 + X1) / 2, (Y0 + Y1) / 2, zf - 0.01], physicsClientId=c))
    ftex = room_texture(rng) if rng.random() < r.textured_floor_prob else None
    room.bodies.append(_plane(c, quad, texture, ftex, room_color(rng), fx, fy, ((X0 + X1) / 2, (Y0 + Y1) / 2, zf), (0, 0, 0, 1)))
    wall_color = room_color(rng)
    wtex = room_texture(rng) if rng.random() < r.textured_wall_prob else None
    h = float(rng.uniform(*r.wall_height))
    zc = zf + h / 2
    q = pb.getQuaternionFromEuler
    room.bodies.append(_plane(c, quad, texture, wtex, wall_color, h / 2, fy, (X1, (Y0 + Y1) / 2, zc), q([0, -np.pi / 2, 0])))
    room.bodies.append(_plane(c, quad, texture, wtex, wall_color, h / 2, fy, (X0, (Y0 + Y1) / 2, zc), q([0, np.pi / 2, 0])))
    room.bodies.append(_plane(c, quad, texture, wtex, wall_color, fx, h / 2, ((X0 + X1) / 2, Y1, zc), q([np.pi / 2, 0, 0])))
    room.bodies.append(_plane(c, quad, texture, wtex, wall_color, fx, h / 2, ((X0 + X1) / 2, Y0, zc), q([-np.pi / 2, 0, 0])))
    # a pedestal under the robot
    if rng.random() < r.pedestal_prob and pedestal:
        hz = (-zf - 0.002) / 2
        room.bodies.append(create_compound(c, [Part("box", (0.13, 0.13, hz), (0, 0, 0))], (-0.03, 0.0, zf + hz),
                                           rgba=(*room_color(rng), 1.0)))

    def free(xy, rad) -> bool:
        if not (X0 + rad + 0.05 < xy[0] < X1 - rad - 0.05 and Y0 + rad + 0.05 < xy[1] < Y1 - rad - 0.05):
            return False
        if top.contains(xy, margin=rad + 0.08):
            return False
        if np.hypot(xy[0], xy[1]) < r.clearance_robot + rad or np.hypot(xy[0] - eye[0], xy[1] - eye[1]) < r.clearance_camera + rad:
            return False
        return True

    placed: list[tuple[np.ndarray, float]] = []
    # a second table beside the first (not on the robot's side)
    if rng.random() < r.second_table_prob:
        sh = float(rng.uniform(0.45, 1.05))
        hx, hy = float(rng.uniform(0.25, 0.5)), float(rng.uniform(0.25, 0.6))
        for _ in range(20):
            side = int(rng.integers(3))
            gap = float(rng.uniform(0.05, 0.6))
            if side == 0:
                xy = np.array([x1 + gap + hx, rng.uniform(y0, y1)])
            elif side == 1:
                xy = np.array([rng.uniform(x0 + hx, x1), y1 + gap + hy])
            else:
                xy = np.array([rng.uniform(x0 + hx, x1), y0 - gap - hy])
            rad = float(np.hypot(hx, hy))
            if free(xy, 0.0) and np.hypot(xy[0] - eye[0], xy[1] - eye[1]) > r.clearance_camera + rad:
                t2 = TableTop("rect", (float(xy[0]), float(xy[1])), (hx, hy), sh, float(rng.uniform(0.02, 0.05)))
                zt = zf + sh
                col = (*room_color(rng), 1.0)
                legs = _legs_parts(TableTop("rect", t2.center_xy, (hx, hy), sh, t2.thickness), rng, TableRanges(), col)
                parts = [Part("box", (hx, hy, t2.thickness / 2), (xy[0], xy[1], -t2.thickness / 2),
                              rgba=(*hsv_color(rng, (0, 0.6), (0.2, 1.0)), 1.0))] + legs
                for p in parts:  # the legs were built for a top at z = 0; shift the piece to its height
                    p.pos = (p.pos[0], p.pos[1], p.pos[2] + zt)
                room.bodies.append(create_compound(c, parts, (0, 0, 0)))
                room.surfaces.append(((float(xy[0]), float(xy[1])), (hx * 0.9, hy * 0.9), zt))
                placed.append((xy, rad))
                room.furniture.append("second_table")
                break
    # furniture on the floor
    for _ in range(int(rng.integers(r.n_furniture[0], r.n_furniture[1] + 1))):
        kind = FURNITURE_KINDS[int(rng.integers(len(FURNITURE_KINDS)))]
        parts, rad, height, surfaces = _furniture_parts(kind, rng, room_color(rng))
        yaw = float(rng.uniform(-np.pi, np.pi))
        for _ in range(20):
            xy = np.array([rng.uniform(X0, X1), rng.uniform(Y0, Y1)])
            if free(xy, rad) and all(np.linalg.norm(xy - p) > rad + pr + 0.05 for p, pr in placed):
                room.bodies.append(create_compound(c, parts, (xy[0], xy[1], zf), q([0, 0, yaw])))
                placed.append((xy, rad))
                room.furniture.append(kind)
                R = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
                for (sx, sy), (shx, shy), sz in surfaces:
                    cxy = xy + R @ np.array([sx, sy])
                    m = min(shx, shy)  # conservative (axis-aligned) extent of the rotated surface
                    room.surfaces.append(((float(cxy[0]), float(cxy[1])), (m, m), zf + sz))
                break
    # clutter: small static things on the floor and on the surfaces
    for _ in range(int(rng.integers(r.n_clutter[0], r.n_clutter[1] + 1))):
        size = float(np.exp(rng.uniform(np.log(0.03), np.log(0.25))))
        kind = int(rng.integers(4))
        col = (*hsv_color(rng), 1.0)
        if kind == 0:
            he = (size / 2, size / 2 * rng.uniform(0.3, 1), size / 2 * rng.uniform(0.2, 1))
            part, hz = Part("box", he), he[2]
        elif kind == 1:
            rad, hh = size / 2 * rng.uniform(0.3, 1), size * rng.uniform(0.3, 1)
            part, hz = Part("cylinder", (rad, hh)), hh / 2
        elif kind == 2:
            part, hz = Part("sphere", (size / 2 * rng.uniform(0.4, 1),)), 0.0
            hz = part.size[0]
        else:  # a book / magazine
            he = (size / 2, size / 2 * rng.uniform(0.6, 0.9), rng.uniform(0.004, 0.02))
            part, hz = Part("box", he), he[2]
        if room.surfaces and rng.random() < 0.6:
            (sx, sy), (shx, shy), sz = room.surfaces[int(rng.integers(len(room.surfaces)))]
            xy = np.array([sx + rng.uniform(-shx, shx), sy + rng.uniform(-shy, shy)])
            z = sz
        else:
            xy = np.array([rng.uniform(X0, X1), rng.uniform(Y0, Y1)])
            z = zf
            if not free(xy, size / 2) or any(np.linalg.norm(xy - p) < pr + size / 2 for p, pr in placed):
                continue
        body = create_compound(c, [part], (xy[0], xy[1], z + hz), q([0, 0, rng.uniform(-np.pi, np.pi)]), rgba=col)
        if kind in (0, 3) and rng.random() < 0.5:
            pb.changeVisualShape(body, -1, textureUniqueId=texture(clutter_texture(rng)), rgbaColor=[1, 1, 1, 1],
                                 physicsClientId=c)
        room.bodies.append(body)
    return room


def remove_occluders(client: int, room: Room, eye: np.ndarray, ws_center, ws_half, n: int = 5) -> list[int]:
    """Remove room bodies that block the camera's view of the workspace (rays to an n x n grid)."""
    (cx, cy), (hx, hy) = ws_center, ws_half
    pts = [[cx + a * hx, cy + b * hy, 0.01] for a in np.linspace(-1, 1, n) for b in np.linspace(-1, 1, n)]
    hits = pb.rayTestBatch([list(eye)] * len(pts), pts, physicsClientId=client)
    blocked = {h[0] for h in hits if h[0] >= 0} & set(room.bodies)
    for b in blocked:
        pb.removeBody(b, physicsClientId=client)
    room.bodies = [b for b in room.bodies if b not in blocked]
    return sorted(blocked)
