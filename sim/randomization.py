"""Domain randomisation of the twin: every range of the `wide` and `cross` domains, in typed dataclasses.

`TabletopConfig.domain` selects the twin: `narrow` (the default: today's twin, bit for bit), `wide`
(training in randomised cells: random_urdfs train ids plus procedural shapes) or `cross` (evaluation
in randomised cells with evaluation-only pybullet_data models and unseen procedural families,
`split` = `val` or `test`, see sim/assets.py). Every range below is used by both randomised domains.

Determinism: `reset(seed)` draws one integer from the env's generator and spawns one child stream
per group (`STREAMS`, fixed order), so a seed fixes the scene, and switching one group off or
changing its ranges leaves the draws of every other group unchanged. A group with `enabled=False`
falls back to the narrow twin's behaviour for that aspect (camera: the narrow orbit with jitter;
intrinsics: the nominal D435 model; table: the narrow table and floor; room: no walls, furniture or
clutter; light: the narrow light ranges; depth: the narrow `DepthNoise`; rgb: the narrow Gaussian
noise; objects: the narrow object mix).

Units: metres, degrees, pixels at 640x480 (scaled to the capture resolution).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import cv2
import numpy as np

from sim.camera import DepthNoise, Intrinsics, Lighting, look_at_pose

DOMAINS = ("narrow", "wide", "cross")
STREAMS = ("camera", "intrinsics", "table", "room", "light", "depth", "rgb", "objects", "noise", "rgb_noise")


def streams(rng: np.random.Generator, domain: str = "wide") -> dict[str, np.random.Generator]:
    """One independent generator per randomisation group, from a single draw of `rng` (salted with the
    domain, so a wide and a cross scene of one seed share nothing)."""
    root = np.random.SeedSequence([int(rng.integers(2**63)), DOMAINS.index(domain)])
    return {name: np.random.default_rng(s) for name, s in zip(STREAMS, root.spawn(len(STREAMS)), strict=True)}


def _u(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def _log_u(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(r[0]), np.log(r[1]))))


# ---------------------------------------------------------------------------------------- the ranges


@dataclass
class CameraRanges:
    """Eye-to-hand camera pose: on a sphere around the workspace centre (plus `target_jitter_xy`)."""

    enabled: bool = True
    distance: tuple[float, float] = (0.4, 1.2)  # metres from the look-at point
    elevation_deg: tuple[float, float] = (25.0, 85.0)  # above the table plane
    yaw_deg: tuple[float, float] = (-180.0, 180.0)  # azimuth of the camera about world z (0 = far side, +x)
    roll_deg: tuple[float, float] = (-10.0, 10.0)  # about the optical axis
    target_jitter_xy: float = 0.06  # look-at point: workspace centre +- this (metres)
    target_z: tuple[float, float] = (0.0, 0.04)
    # How the arm stays out of view. "park_or_remove": the first of panda.PARK_POSES that the camera
    # cannot see; if it sees the arm in all of them (most cameras beyond ~0.8 m see the robot's base),
    # the arm is moved out of the scene for every render (and back for every action), so the camera
    # distribution stays as configured. "park": camera poses that see the arm in every parking pose are
    # redrawn (up to `max_tries`), which biases the camera toward the workspace (measured: 83% of
    # poses kept at 0.4 m, 24% at 0.8 m, 3% at 1.1 m).
    arm_out_of_view: str = "park_or_remove"
    max_tries: int = 200
    arm_clearance: float = 0.15  # the camera never sits within this of the parked arm's boxes (metres)


@dataclass
class IntrinsicsRanges:
    """Pinhole intrinsics at 640x480, scaled to the capture resolution."""

    enabled: bool = True
    fx: tuple[float, float] = (580.0, 640.0)
    fy_over_fx: tuple[float, float] = (0.995, 1.005)
    cx_offset: tuple[float, float] = (-12.0, 12.0)  # pixels from the image centre (319.5)
    cy_offset: tuple[float, float] = (-10.0, 10.0)  # pixels from the image centre (239.5)


@dataclass
class TableRanges:
    """Table geometry. The top face is always z = 0 (robot base height); the floor is at z = -height."""

    enabled: bool = True
    shapes: tuple[str, ...] = ("rect", "round")
    shape_weights: tuple[float, ...] = (0.7, 0.3)
    near_edge_x: tuple[float, float] = (0.1, 0.2)  # robot-side edge; the robot base is at x = 0
    half_x: tuple[float, float] = (0.36, 0.7)  # rect: half depth (x); keeps the workspace + 5 cm on the table
    half_y: tuple[float, float] = (0.32, 0.9)  # rect: half width (y)
    radius: tuple[float, float] = (0.42, 0.75)  # round
    center_y: tuple[float, float] = (-0.08, 0.08)  # rect: lateral offset (clipped so the workspace fits)
    height: tuple[float, float] = (0.6, 0.95)  # top above the floor
    thickness: tuple[float, float] = (0.02, 0.06)
    leg_width: tuple[float, float] = (0.03, 0.08)
    apron_prob: float = 0.4  # a frame under the top's edge
    textured_fraction: float = 0.6  # table top: procedural texture (else a plain colour)
    shiny_prob: float = 0.1  # a glossy top: depth holes in blobs on it


@dataclass
class RoomRanges:
    """Floor, walls, furniture and clutter off the table (all static, all background: label 0)."""

    enabled: bool = True
    wall_gap: tuple[float, float] = (0.3, 2.5)  # metres beyond the table / camera / robot on each side
    wall_height: tuple[float, float] = (2.0, 3.0)
    textured_floor_prob: float = 0.75
    textured_wall_prob: float = 0.4
    n_furniture: tuple[int, int] = (0, 5)  # cabinets, shelves, chairs, bins, box stacks
    second_table_prob: float = 0.35  # another table nearby, at its own height, with clutter on it
    n_clutter: tuple[int, int] = (0, 10)  # small procedural things on the floor and on furniture
    pedestal_prob: float = 0.6  # a column under the robot base
    clearance_camera: float = 0.35  # furniture keeps this far (x-y) from the camera
    clearance_robot: float = 0.45  # and from the robot base


@dataclass
class LightRanges:
    enabled: bool = True
    elevation_deg: tuple[float, float] = (20.0, 90.0)
    ambient: tuple[float, float] = (0.3, 0.75)
    diffuse: tuple[float, float] = (0.2, 0.8)
    specular: tuple[float, float] = (0.0, 0.5)
    warmth: tuple[float, float] = (-1.0, 1.0)  # -1 cool (bluish) ... +1 warm (orange) light colour
    shadow_prob: float = 0.0  # TinyRenderer shadows double the render time


@dataclass
class DepthArtefacts:
    """Artefacts of real RGB-D sensors, applied to the noiseless render. Per scene a sensor is drawn
    (its model, band side and width, thresholds); per capture the per-pixel noise."""

    enabled: bool = True
    model_weights: tuple[float, float] = (0.5, 0.5)  # ("realsense", "kinect")
    # realsense-like: the narrow DepthNoise with per-scene parameters
    gain_std: tuple[float, float] = (0.0005, 0.006)
    pixel_std_at_1m: tuple[float, float] = (0.001, 0.004)
    # kinect-like: sigma = k z^2, disparity quantisation (1/8 px subpixel, 7.5 cm baseline), lateral smoothing
    kinect_sigma_at_1m: tuple[float, float] = (0.0012, 0.003)
    kinect_baseline: float = 0.075
    kinect_subpixel: float = 0.125
    # both
    band_prob: float = 0.85  # a missing-depth band at one image border
    band_sides: tuple[str, ...] = ("left", "right", "top", "bottom")
    band_side_weights: tuple[float, ...] = (0.55, 0.25, 0.1, 0.1)
    band_width: tuple[float, float] = (0.015, 0.09)  # fraction of the image width / height
    band_ragged_px: float = 6.0  # the band's inner edge wanders by this much (at 640)
    shadow_baseline: tuple[float, float] = (0.0, 0.06)  # emitter-camera baseline: missing depth beside edges
    edge_jump: float = 0.01
    edge_dropout: tuple[float, float] = (0.1, 0.6)
    flying_fraction: tuple[float, float] = (0.1, 0.7)  # edge pixels given a depth between fore- and background
    dark_threshold: tuple[float, float] = (10.0, 35.0)  # rendered luminance (0-255) of dark surfaces
    dark_dropout: tuple[float, float] = (0.1, 0.7)  # share of their pixels lost, in blobs
    shiny_dropout: tuple[float, float] = (0.3, 0.9)  # on shiny objects and a glossy table (in blobs)
    glossy_spot: tuple[float, float] = (0.08, 0.3)  # a glossy table loses depth in a spot this big (x image width)
    n_hole_blobs: tuple[int, int] = (0, 8)
    hole_radius_px: tuple[float, float] = (2.0, 12.0)
    random_dropout: tuple[float, float] = (0.0, 0.01)
    min_range: tuple[float, float] = (0.15, 0.3)
    max_range: tuple[float, float] = (3.0, 5.0)
    quantum: float = 0.001


@dataclass
class RgbArtefacts:
    enabled: bool = True
    white_balance: tuple[float, float] = (0.85, 1.15)  # per-channel gain
    exposure: tuple[float, float] = (0.65, 1.45)  # global gain (log-uniform)
    gamma: tuple[float, float] = (0.8, 1.25)
    saturation: tuple[float, float] = (0.7, 1.3)
    vignetting: tuple[float, float] = (0.0, 0.35)
    blur_prob: float = 0.5
    blur_sigma_px: tuple[float, float] = (0.3, 1.5)
    motion_blur_prob: float = 0.15
    motion_blur_px: tuple[float, float] = (2.0, 6.0)
    noise_std: tuple[float, float] = (1.0, 6.0)
    shot_noise: tuple[float, float] = (0.0, 0.6)  # std = shot * sqrt(intensity)
    jpeg_prob: float = 0.3
    jpeg_quality: tuple[int, int] = (60, 95)
    background: tuple[float, float] = (0.4, 0.95)  # grey level where nothing was rendered (beyond the room)


@dataclass
class ObjectRanges:
    """Objects on the table (instances). Sizes are the longest extent, metres."""

    enabled: bool = True
    size: tuple[float, float] = (0.02, 0.25)
    # training families (wide): random_urdfs train meshes and procedural shapes (sim/assets.py)
    family_weights: dict[str, float] = field(default_factory=lambda: {
        "mesh": 0.34, "box": 0.11, "cylinder": 0.09, "sphere": 0.04, "book": 0.08, "plate": 0.06,
        "bowl": 0.07, "cup": 0.07, "long_box": 0.07, "rod": 0.07,
    })
    mesh_extent: tuple[float, float] = (0.025, 0.22)
    cross_model_fraction: float = 0.65  # cross: share of evaluation-only models (rest: unseen procedural families)
    textured_fraction: float = 0.45  # of boxes, books, long boxes, cylinders (stripes, print-like, ...)
    shiny_prob: float = 0.12  # depth holes on the object (metal, glass, glossy plastic)
    dark_prob: float = 0.1  # a near-black colour
    stack_prob: float = 0.15  # dropped onto an object that already rests on the table
    lean_prob: float = 0.15  # long / flat objects placed tilted against a neighbour
    off_workspace: tuple[int, int] = (0, 2)  # extra objects on the table outside the workspace
    mass: tuple[float, float] = (0.04, 0.5)


@dataclass
class DomainConfig:
    """All ranges of the randomised twin (`TabletopConfig.randomization`)."""

    camera: CameraRanges = field(default_factory=CameraRanges)
    intrinsics: IntrinsicsRanges = field(default_factory=IntrinsicsRanges)
    table: TableRanges = field(default_factory=TableRanges)
    room: RoomRanges = field(default_factory=RoomRanges)
    light: LightRanges = field(default_factory=LightRanges)
    depth: DepthArtefacts = field(default_factory=DepthArtefacts)
    rgb: RgbArtefacts = field(default_factory=RgbArtefacts)
    objects: ObjectRanges = field(default_factory=ObjectRanges)

    GROUPS = ("camera", "intrinsics", "table", "room", "light", "depth", "rgb", "objects")

    @classmethod
    def only(cls, *groups: str) -> DomainConfig:
        """Every group off except `groups` (tests: one knob at a time)."""
        for g in groups:
            if g not in cls.GROUPS:
                raise ValueError(f"unknown randomisation group {g!r}; expected one of {cls.GROUPS}")
        cfg = cls()
        for g in cls.GROUPS:
            getattr(cfg, g).enabled = g in groups
        return cfg

    def validate(self) -> None:
        for g in self.GROUPS:
            for f in fields(getattr(self, g)):
                v = getattr(getattr(self, g), f.name)
                if f.name.endswith("weights") or not (isinstance(v, tuple) and len(v) == 2):
                    continue
                if all(isinstance(x, int | float) for x in v) and v[0] > v[1]:
                    raise ValueError(f"randomization.{g}.{f.name}: range {v} has min > max")
        c = self.camera
        if c.arm_out_of_view not in ("park_or_remove", "park"):
            raise ValueError(f"randomization.camera.arm_out_of_view: 'park_or_remove' or 'park', got {c.arm_out_of_view!r}")
        if c.distance[0] <= 0.1 or not 0 < c.elevation_deg[0] <= c.elevation_deg[1] < 90:
            raise ValueError("randomization.camera: distance must exceed 0.1 m and elevation lie in (0, 90) degrees")


# ------------------------------------------------------------------------------------------ cells
# A cell: one user's fixed set-up, i.e. the wide ranges narrowed to a corner of themselves (the camera,
# table, light and sensor stay put; objects, clutter and per-capture noise still vary from scene to scene).
# Used to show adaptation in a cell the pretraining did not centre on (`SimRobotConfig.cell`,
# `sim.export_scenes --cell`). Names and values are documented in the README (sim twin section).


def cell_config(name: str) -> DomainConfig:
    """The DomainConfig of a named cell (`CELLS`); ValueError naming the known cells otherwise."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; expected one of {sorted(CELLS)}")
    cfg = DomainConfig()
    for group, values in CELLS[name].items():
        for key, value in values.items():
            if not hasattr(getattr(cfg, group), key):
                raise ValueError(f"cell {name!r}: {group}.{key} is no field of the randomisation ranges")
            setattr(getattr(cfg, group), key, value)
    cfg.validate()
    return cfg


CELLS: dict[str, dict[str, dict]] = {
    # a low side view from 1.05-1.1 m (wide: 0.4-1.2 m, 25-85 degrees, any yaw), a large round table,
    # dim warm light, a Kinect-like sensor with its missing band on the left, room and furniture in view
    "side_kinect": {
        "camera": {"distance": (1.05, 1.1), "elevation_deg": (30.0, 34.0), "yaw_deg": (95.0, 100.0),
                   "roll_deg": (-4.0, -2.0), "target_jitter_xy": 0.02},
        "table": {"shapes": ("round",), "shape_weights": (1.0,), "radius": (0.7, 0.75)},
        "light": {"ambient": (0.4, 0.45), "diffuse": (0.4, 0.5), "warmth": (0.8, 1.0)},
        "depth": {"model_weights": (0.0, 1.0), "band_prob": 1.0, "band_sides": ("left",), "band_side_weights": (1.0,)},
    },
    # a close, steep view from the far side (wide: 0.4-1.2 m, 25-85 degrees, any yaw) over a glossy
    # rectangular table that loses depth in a spot, bright cool light, a RealSense-like sensor with its
    # band on the right
    "close_glossy": {
        "camera": {"distance": (0.55, 0.6), "elevation_deg": (70.0, 75.0), "yaw_deg": (-10.0, 10.0),
                   "roll_deg": (4.0, 6.0), "target_jitter_xy": 0.02},
        "table": {"shapes": ("rect",), "shape_weights": (1.0,), "shiny_prob": 1.0},
        "light": {"ambient": (0.65, 0.75), "diffuse": (0.6, 0.8), "warmth": (-1.0, -0.8)},
        "depth": {"model_weights": (1.0, 0.0), "band_prob": 1.0, "band_sides": ("right",), "band_side_weights": (1.0,)},
    },
}


# ------------------------------------------------------------------------------------ camera, light


def sample_intrinsics(rng: np.random.Generator, r: IntrinsicsRanges, width: int, height: int) -> Intrinsics:
    fx = _u(rng, r.fx)
    fy = fx * _u(rng, r.fy_over_fx)
    cx, cy = 319.5 + _u(rng, r.cx_offset), 239.5 + _u(rng, r.cy_offset)
    return Intrinsics(fx, fy, cx, cy, 640, 480).scaled_to(width, height)


def camera_pose(target: np.ndarray, distance: float, elevation_deg: float, yaw_deg: float, roll_deg: float) -> np.ndarray:
    """world_from_camera (OpenCV axes): on a sphere around `target`, rolled about the optical axis."""
    el, yaw = np.deg2rad(elevation_deg), np.deg2rad(yaw_deg)
    eye = np.asarray(target, float) + distance * np.array([np.cos(el) * np.cos(yaw), np.cos(el) * np.sin(yaw), np.sin(el)])
    T = look_at_pose(eye, target)
    a = np.deg2rad(roll_deg)
    R = np.eye(4)
    R[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return T @ R


def sample_camera(rng: np.random.Generator, r: CameraRanges, workspace_center: tuple[float, float]) -> tuple[np.ndarray, dict]:
    """One candidate pose (the env redraws poses that see the parked arm)."""
    target = np.array([workspace_center[0], workspace_center[1], 0.0])
    target[:2] += rng.uniform(-r.target_jitter_xy, r.target_jitter_xy, 2)
    target[2] = _u(rng, r.target_z)
    p = {"distance": _u(rng, r.distance), "elevation_deg": _u(rng, r.elevation_deg), "yaw_deg": _u(rng, r.yaw_deg),
         "roll_deg": _u(rng, r.roll_deg)}
    return camera_pose(target, **p), {**p, "target": target.tolist()}


def box_in_frustum(lo: np.ndarray, hi: np.ndarray, world_from_camera: np.ndarray, intr: Intrinsics,
                   near: float = 0.02, margin_px: float = 2.0) -> bool:
    """Conservative: False only if the axis-aligned box (world) is certainly outside the view frustum."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    cam = (corners - world_from_camera[:3, 3]) @ world_from_camera[:3, :3]  # camera-frame corners
    x, y, z = cam[:, 0], cam[:, 1], cam[:, 2]
    W, H = intr.width, intr.height
    u_lo, u_hi = -0.5 - margin_px, W - 0.5 + margin_px
    v_lo, v_hi = -0.5 - margin_px, H - 0.5 + margin_px
    # the four side planes through the optical centre: u = fx x / z + cx  ->  fx x + (cx - u) z = 0
    outside = [
        np.all(z < near),
        np.all(intr.fx * x + (intr.cx - u_lo) * z < 0),
        np.all(intr.fx * x + (intr.cx - u_hi) * z > 0),
        np.all(intr.fy * y + (intr.cy - v_lo) * z < 0),
        np.all(intr.fy * y + (intr.cy - v_hi) * z > 0),
    ]
    return not any(outside)


def sample_lighting(rng: np.random.Generator, r: LightRanges, shadows: bool) -> Lighting:
    theta, el = rng.uniform(0, 2 * np.pi), np.deg2rad(_u(rng, r.elevation_deg))
    w = _u(rng, r.warmth)
    color = np.clip(np.array([1.0 + 0.12 * w, 1.0, 1.0 - 0.2 * w]) * rng.uniform(0.9, 1.0), 0, 1)
    color = color / color.max()
    return Lighting(
        direction=(np.cos(theta) * np.cos(el), np.sin(theta) * np.cos(el), np.sin(el)),
        color=tuple(float(c) for c in color),
        ambient=_u(rng, r.ambient), diffuse=_u(rng, r.diffuse), specular=_u(rng, r.specular),
        shadow=bool(shadows or rng.random() < r.shadow_prob),
    )


# -------------------------------------------------------------------------------------- the sensors


def blob_mask(rng: np.random.Generator, shape: tuple[int, int], fraction: float, scale_px: float) -> np.ndarray:
    """A random mask covering about `fraction` of the image in blobs of about `scale_px` pixels."""
    H, W = shape
    if fraction <= 0:
        return np.zeros(shape, bool)
    h, w = max(int(H / scale_px), 2), max(int(W / scale_px), 2)
    field_ = cv2.resize(rng.random((h, w)).astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    return field_ < np.quantile(field_, min(fraction, 1.0))


@dataclass
class DepthSensor:
    """One scene's depth sensor (drawn by `sample_depth_sensor`); `apply` adds one capture's artefacts."""

    model: str
    scale: float  # image width / 640
    fx: float
    noise: DepthNoise
    kinect_sigma: float = 0.0
    kinect_quantum_k: float = 0.0  # dz = k z^2
    band_side: str = ""
    band_width_px: int = 0
    band_ragged_px: float = 0.0
    shadow_baseline: float = 0.0
    edge_jump: float = 0.01
    edge_dropout: float = 0.0
    flying_fraction: float = 0.0
    dark_threshold: float = 0.0
    dark_dropout: float = 0.0
    shiny_dropout: float = 0.0
    glossy_spot: tuple[float, float, float] = (0.5, 0.5, 0.0)  # (u, v) as image fractions, radius / width
    n_hole_blobs: int = 0
    hole_radius_px: tuple[float, float] = (2.0, 12.0)
    random_dropout: float = 0.0
    min_range: float = 0.0
    max_range: float = np.inf
    quantum: float = 0.001

    def apply(self, depth: np.ndarray, rgb: np.ndarray, shiny: np.ndarray, rng: np.random.Generator,
              glossy: np.ndarray | None = None) -> np.ndarray:
        """depth: noiseless (H,W) metres, 0 = nothing; rgb: the rendered colours (before camera
        artefacts; dark surfaces are judged on them); shiny: (H,W) bool pixels of shiny objects;
        glossy: (H,W) bool pixels of a glossy table (they lose depth in one reflection spot)."""
        H, W = depth.shape
        z = depth.astype(np.float32)
        valid = z > 0
        zf = np.where(valid, z, np.float32(1e3))  # nothing hit: far away
        # depth edges, and flying pixels between fore- and background
        zmin = cv2.erode(zf, np.ones((3, 3), np.uint8))
        zmax = cv2.dilate(zf, np.ones((3, 3), np.uint8))
        edge = valid & ((zmax - zmin) > self.edge_jump)
        zmax_valid = cv2.dilate(np.where(valid, z, 0), np.ones((3, 3), np.uint8))
        fly = edge & (rng.random(z.shape) < self.flying_fraction) & (zmax_valid > 0)
        t = rng.uniform(0.15, 0.85, z.shape).astype(np.float32)
        z = np.where(fly, zmin + t * (np.minimum(zmax_valid, zmin + 1.0) - zmin), z)
        # the noise model
        if self.model == "kinect":
            g = rng.standard_normal(((H + 7) // 8, (W + 7) // 8)).astype(np.float32)
            lateral = cv2.resize(g, (W, H), interpolation=cv2.INTER_CUBIC)  # structured-light blobs
            noisy = z + (0.7 * rng.standard_normal(z.shape).astype(np.float32) + 0.7 * lateral) * (self.kinect_sigma * z * z)
            if self.kinect_quantum_k > 0:  # disparity steps: dz = k z^2
                q = np.maximum(self.kinect_quantum_k * z * z, 1e-5)
                noisy = np.round(noisy / q) * q
            drop = rng.random(z.shape) < self.random_dropout
            drop |= edge & (rng.random(z.shape) < self.edge_dropout)
            if self.quantum > 0:
                noisy = np.round(noisy / self.quantum) * self.quantum
            noisy[drop] = 0.0
        else:
            noisy = self.noise.apply(z * valid, rng)
        out = noisy.astype(np.float32)
        # emitter shadow: background just beside a foreground edge sees no pattern
        if self.shadow_baseline > 0:
            fb = self.fx * self.shadow_baseline
            disp = np.where(valid, fb / np.maximum(zf, 1e-3), 0.0).astype(np.float32)
            shadow = np.zeros_like(valid)
            for k in range(1, min(int(np.ceil(fb * 0.5)) + 1, 24)):
                shifted = np.zeros_like(disp)
                shifted[:, k:] = disp[:, :-k]  # the pixel k columns to the left
                shadow |= (shifted - disp) > k
            out[shadow] = 0.0
        # holes: dark surfaces, shiny objects (and a glossy table), random blobs
        lum = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        dark = (lum < self.dark_threshold) & blob_mask(rng, (H, W), self.dark_dropout, 8 * self.scale)
        holes = dark | (shiny & blob_mask(rng, (H, W), self.shiny_dropout, 10 * self.scale))
        if glossy is not None and self.glossy_spot[2] > 0:
            yy, xx = np.ogrid[0:H, 0:W]
            su, sv, sr = self.glossy_spot
            spot = ((xx - su * W) ** 2 + (yy - sv * H) ** 2) < (sr * W) ** 2
            holes |= glossy & spot & blob_mask(rng, (H, W), self.shiny_dropout, 10 * self.scale)
        for _ in range(self.n_hole_blobs):
            cu, cv = rng.uniform(0, W), rng.uniform(0, H)
            r = rng.uniform(*self.hole_radius_px) * self.scale
            cv2.ellipse(out, (int(cu), int(cv)), (max(int(r), 1), max(int(r * rng.uniform(0.4, 1.0)), 1)),
                        float(rng.uniform(0, 180)), 0, 360, 0.0, -1)
        out[holes] = 0.0
        # the missing band at one border
        if self.band_side and self.band_width_px > 0:
            n = H if self.band_side in ("left", "right") else W
            wobble = np.cumsum(rng.normal(0, 0.6, n)) * self.scale
            wobble = np.clip(wobble - wobble.mean(), -self.band_ragged_px, self.band_ragged_px)
            width = np.clip(np.round(self.band_width_px + wobble), 1, None).astype(int)
            idx = np.arange(W if self.band_side in ("left", "right") else H)
            if self.band_side == "left":
                out[idx[None, :] < width[:, None]] = 0.0
            elif self.band_side == "right":
                out[idx[None, :] >= W - width[:, None]] = 0.0
            elif self.band_side == "top":
                out[(idx[:, None] < width[None, :])] = 0.0
            else:
                out[(idx[:, None] >= H - width[None, :])] = 0.0
        out[(out < self.min_range) | (out > self.max_range) | ~np.isfinite(out)] = 0.0
        return np.clip(out, 0.0, None).astype(np.float32)


def sample_depth_sensor(rng: np.random.Generator, r: DepthArtefacts, intr: Intrinsics) -> DepthSensor:
    s = intr.width / 640.0
    model = ("realsense", "kinect")[int(rng.choice(2, p=np.array(r.model_weights) / sum(r.model_weights)))]
    edge_drop = _u(rng, r.edge_dropout)
    noise = DepthNoise(enabled=True, gain_std=_u(rng, r.gain_std), pixel_std_at_1m=_u(rng, r.pixel_std_at_1m),
                       edge_jump=r.edge_jump, edge_dropout=edge_drop, random_dropout=_u(rng, r.random_dropout),
                       quantum=r.quantum)
    band = rng.random() < r.band_prob
    side = r.band_sides[int(rng.choice(len(r.band_sides), p=np.array(r.band_side_weights) / sum(r.band_side_weights)))]
    extent = intr.width if side in ("left", "right") else intr.height
    fx640 = intr.fx / s
    return DepthSensor(
        model=model, scale=s, fx=intr.fx, noise=noise,
        kinect_sigma=_u(rng, r.kinect_sigma_at_1m),
        kinect_quantum_k=r.kinect_subpixel / (fx640 * r.kinect_baseline),
        band_side=side if band else "", band_width_px=int(round(_u(rng, r.band_width) * extent)) if band else 0,
        band_ragged_px=r.band_ragged_px * s,
        shadow_baseline=_u(rng, r.shadow_baseline), edge_jump=r.edge_jump, edge_dropout=edge_drop,
        flying_fraction=_u(rng, r.flying_fraction), dark_threshold=_u(rng, r.dark_threshold),
        dark_dropout=_u(rng, r.dark_dropout), shiny_dropout=_u(rng, r.shiny_dropout),
        glossy_spot=(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8)), _u(rng, r.glossy_spot)),
        n_hole_blobs=int(rng.integers(r.n_hole_blobs[0], r.n_hole_blobs[1] + 1)),
        hole_radius_px=r.hole_radius_px, random_dropout=noise.random_dropout,
        min_range=_u(rng, r.min_range), max_range=_u(rng, r.max_range), quantum=r.quantum,
    )


@dataclass
class RgbSensor:
    """One scene's colour camera (drawn by `sample_rgb_sensor`); `apply` adds one capture's artefacts."""

    wb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    exposure: float = 1.0
    gamma: float = 1.0
    saturation: float = 1.0
    vignetting: float = 0.0
    blur_sigma: float = 0.0
    motion_px: float = 0.0
    motion_angle: float = 0.0
    noise_std: float = 2.0
    shot: float = 0.0
    jpeg_quality: int = 0
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def apply(self, rgb: np.ndarray, nothing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        H, W = rgb.shape[:2]
        img = rgb.astype(np.float32) / 255.0
        img[nothing] = np.array(self.background, np.float32)
        if self.saturation != 1.0:
            grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
            img = grey[..., None] + self.saturation * (img - grey[..., None])
        img = img * np.array(self.wb, np.float32) * self.exposure
        if self.vignetting > 0:
            yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
            r2 = ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2
            img *= (1 - self.vignetting * r2 / 2)[..., None]
        img = np.clip(img, 0, 1) ** self.gamma
        if self.blur_sigma > 0:
            img = cv2.GaussianBlur(img, (0, 0), self.blur_sigma)
        if self.motion_px >= 1.5:
            k = int(np.ceil(self.motion_px)) | 1
            kern = np.zeros((k, k), np.float32)
            c = k // 2
            dx, dy = np.cos(self.motion_angle) * c, np.sin(self.motion_angle) * c
            cv2.line(kern, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, 1)
            img = cv2.filter2D(img, -1, kern / max(float(kern.sum()), 1e-6))
        img = img * 255.0
        std = np.sqrt(self.noise_std**2 + (self.shot**2) * np.clip(img, 0, None))
        img = img + rng.standard_normal(img.shape).astype(np.float32) * std
        out = np.clip(np.round(img), 0, 255).astype(np.uint8)
        if self.jpeg_quality > 0:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return out


def sample_rgb_sensor(rng: np.random.Generator, r: RgbArtefacts, scale: float) -> RgbSensor:
    wb = rng.uniform(*r.white_balance, 3)
    wb = wb / wb.mean()
    bg = _u(rng, r.background)
    return RgbSensor(
        wb=tuple(float(x) for x in wb), exposure=_log_u(rng, r.exposure), gamma=_u(rng, r.gamma),
        saturation=_u(rng, r.saturation), vignetting=_u(rng, r.vignetting),
        blur_sigma=_u(rng, r.blur_sigma_px) * scale if rng.random() < r.blur_prob else 0.0,
        motion_px=_u(rng, r.motion_blur_px) * scale if rng.random() < r.motion_blur_prob else 0.0,
        motion_angle=float(rng.uniform(0, np.pi)), noise_std=_u(rng, r.noise_std), shot=_u(rng, r.shot_noise),
        jpeg_quality=int(rng.integers(r.jpeg_quality[0], r.jpeg_quality[1] + 1)) if rng.random() < r.jpeg_prob else 0,
        background=tuple(float(np.clip(bg + rng.normal(0, 0.04), 0, 1)) for _ in range(3)),
    )
