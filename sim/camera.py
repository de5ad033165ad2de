"""Simulated RGB-D camera: intrinsics, pose, pybullet rendering and a depth-sensor noise model.

Conventions
- Intrinsics K are pinhole, in pixels, with integer pixel centres: pixel (u, v) = (column, row)
  covers [u - 0.5, u + 0.5] x [v - 0.5, v + 0.5].
- `world_from_camera` is a 4x4 transform from the OpenCV camera frame (x right, y down, z forward)
  to the world frame (= robot base frame), metres.
- Depth is metres along the camera z axis (like a RealSense depth image), 0.0 = missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pybullet as pb

# A RealSense-D435-like colour camera at 640x480 (the depth is aligned to it).
D435_640x480 = dict(fx=616.0, fy=616.0, cx=318.5, cy=241.5, width=640, height=480)


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels for an image of `width` x `height` pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled_to(self, width: int, height: int) -> Intrinsics:
        """The same optics resampled to another resolution (pixel-centre convention kept)."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            width=width,
            height=height,
        )


def d435_intrinsics(width: int = 320, height: int = 240) -> Intrinsics:
    """The D435-like 640x480 model scaled to `width` x `height`."""
    return Intrinsics(**D435_640x480).scaled_to(width, height)


def look_at_pose(eye: np.ndarray, target: np.ndarray, up: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """world_from_camera (OpenCV axes) for a camera at `eye` looking at `target` (world metres)."""
    z = np.asarray(target, float) - np.asarray(eye, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, float))
    if np.linalg.norm(x) < 1e-6:  # looking straight down: pick any horizontal x
        x = np.array([0.0, -1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


def orbit_pose(target: np.ndarray, distance: float, pitch_deg: float, yaw_deg: float) -> np.ndarray:
    """Camera on a sphere around `target`: `pitch_deg` below the horizon, `yaw_deg` the azimuth of the
    camera position about world z (0 = camera on the +x side of the target, looking toward -x)."""
    pitch, yaw = np.deg2rad(pitch_deg), np.deg2rad(yaw_deg)
    offset = distance * np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    return look_at_pose(np.asarray(target, float) + offset, target)


def gl_projection(intr: Intrinsics, near: float, far: float) -> list[float]:
    """OpenGL projection (column-major, 16 floats) reproducing the pinhole K exactly.

    NDC x spans the left edge of pixel 0 (-1) to the right edge of pixel W-1 (+1); NDC y is +1 at the
    top edge of row 0. Derived from u = fx X/Z + cx with OpenGL camera axes (x right, y up, z back).
    """
    W, H = intr.width, intr.height
    p00 = 2.0 * intr.fx / W
    p11 = 2.0 * intr.fy / H
    p02 = 1.0 - 2.0 * (intr.cx + 0.5) / W
    p12 = 2.0 * (intr.cy + 0.5) / H - 1.0
    p22 = -(far + near) / (far - near)
    p23 = -2.0 * far * near / (far - near)
    P = np.array([[p00, 0, p02, 0], [0, p11, p12, 0], [0, 0, p22, p23], [0, 0, -1, 0]], dtype=float)
    return P.T.flatten().tolist()


def gl_view(world_from_camera: np.ndarray) -> list[float]:
    """OpenGL view matrix (column-major) for an OpenCV-axes world_from_camera pose."""
    cv_to_gl = np.diag([1.0, -1.0, -1.0, 1.0])
    view = np.linalg.inv(world_from_camera @ cv_to_gl)
    return view.T.flatten().tolist()


@dataclass
class Lighting:
    """TinyRenderer light parameters (direction is a world-frame vector toward the light)."""

    direction: tuple[float, float, float] = (0.3, 0.2, 1.0)
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.6
    diffuse: float = 0.5
    specular: float = 0.1
    shadow: bool = True


# Measured: pybullet's TinyRenderer samples pixel (u, v) at the ideal pinhole position (u - 0.5, v + 0.5)
# of the projection matrix it is given (tests/test_sim_camera.py checks this against known planes). The
# renderer is therefore handed a principal point shifted by this offset so that its pixels sit exactly on K.
TINYRENDERER_PIXEL_OFFSET = (-0.5, 0.5)


def render_rgbd(
    client: int,
    intr: Intrinsics,
    world_from_camera: np.ndarray,
    lighting: Lighting,
    near: float = 0.05,
    far: float = 3.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render with pybullet's CPU TinyRenderer.

    Returns rgb (H,W,3) uint8, noiseless depth (H,W) float32 metres along camera z, and the body-id
    segmentation (H,W) int32 (-1 = nothing).
    """
    _, _, rgba, zbuf, seg = pb.getCameraImage(
        intr.width,
        intr.height,
        viewMatrix=gl_view(world_from_camera),
        projectionMatrix=gl_projection(_renderer_intrinsics(intr), near, far),
        lightDirection=list(lighting.direction),
        lightColor=list(lighting.color),
        lightAmbientCoeff=lighting.ambient,
        lightDiffuseCoeff=lighting.diffuse,
        lightSpecularCoeff=lighting.specular,
        shadow=int(lighting.shadow),
        renderer=pb.ER_TINY_RENDERER,
        physicsClientId=client,
    )
    rgba = np.asarray(rgba, dtype=np.uint8).reshape(intr.height, intr.width, 4)
    zbuf = np.asarray(zbuf, dtype=np.float64).reshape(intr.height, intr.width)
    depth = (far * near / (far - (far - near) * zbuf)).astype(np.float32)
    depth[zbuf >= 1.0] = 0.0  # nothing hit within the far plane
    seg = np.asarray(seg, dtype=np.int32).reshape(intr.height, intr.width)
    return np.ascontiguousarray(rgba[..., :3]), depth, seg


def _renderer_intrinsics(intr: Intrinsics) -> Intrinsics:
    du, dv = TINYRENDERER_PIXEL_OFFSET
    return Intrinsics(intr.fx, intr.fy, intr.cx + du, intr.cy + dv, intr.width, intr.height)


@dataclass
class DepthNoise:
    """A RealSense-like depth noise model (applied to the noiseless render).

    - multiplicative per-frame gain ~ Gamma with mean 1 and std `gain_std` (scale error);
    - per-pixel Gaussian noise with std `pixel_std_at_1m` * z^2 metres (stereo error grows with z^2);
    - missing pixels: at depth edges (a neighbour differs by more than `edge_jump` metres) a pixel is
      dropped with probability `edge_dropout`, elsewhere with probability `random_dropout`;
    - quantisation to `quantum` metres (1 mm like a uint16 depth image).
    """

    enabled: bool = True
    gain_std: float = 0.002
    pixel_std_at_1m: float = 0.0015
    edge_jump: float = 0.01
    edge_dropout: float = 0.5
    random_dropout: float = 0.002
    quantum: float = 0.001

    def apply(self, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not self.enabled:
            return depth.copy()
        z = depth.astype(np.float32)
        valid = z > 0
        shape = 1.0 / max(self.gain_std, 1e-6) ** 2
        gain = rng.gamma(shape, 1.0 / shape) if self.gain_std > 0 else 1.0
        noisy = z * np.float32(gain) + rng.standard_normal(z.shape).astype(np.float32) * (
            self.pixel_std_at_1m * z * z
        )
        jump = np.zeros_like(valid)
        dz_x = np.abs(np.diff(z, axis=1)) > self.edge_jump
        dz_y = np.abs(np.diff(z, axis=0)) > self.edge_jump
        jump[:, 1:] |= dz_x
        jump[:, :-1] |= dz_x
        jump[1:, :] |= dz_y
        jump[:-1, :] |= dz_y
        drop_p = np.where(jump, self.edge_dropout, self.random_dropout)
        drop = rng.random(z.shape) < drop_p
        if self.quantum > 0:
            noisy = np.round(noisy / self.quantum) * self.quantum
        noisy[drop | ~valid] = 0.0
        return np.clip(noisy, 0.0, None).astype(np.float32)


def deproject(pixel_uv: tuple[float, float], depth_m: float, K: np.ndarray) -> np.ndarray:
    """Pixel (u, v) with depth z (metres) -> 3D point in the camera frame (metres)."""
    u, v = pixel_uv
    return np.array([(u - K[0, 2]) * depth_m / K[0, 0], (v - K[1, 2]) * depth_m / K[1, 1], depth_m])


def project(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(N,3) camera-frame points (metres) -> (N,2) pixels (u, v)."""
    pts = np.atleast_2d(points_cam)
    return np.stack([K[0, 0] * pts[:, 0] / pts[:, 2] + K[0, 2], K[1, 1] * pts[:, 1] / pts[:, 2] + K[1, 2]], axis=1)
