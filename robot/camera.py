"""The small camera interface behind a real robot cell, and the errors it raises.

A `Camera` delivers `RGBDFrame`s in the units and frames of `robot.base`: rgb (H,W,3) uint8, depth
(H,W) float32 metres along the camera z axis with 0 = missing (aligned to the colour image), K (3,3)
pinhole intrinsics of the colour image in pixels, camera_pose (4,4) world(robot base)-from-camera
with OpenCV camera axes (from the eye-to-hand calibration, `robot.calibration`).

`robot.realsense_camera.RealSenseCamera` implements it over pyrealsense2 (a real device, a
recording, or a pyrealsense2 software device); the sim twin renders its frames inside
`sim.env` and needs no separate camera object.
"""

from __future__ import annotations

import abc

import numpy as np

from robot.base import RGBDFrame


class CameraError(RuntimeError):
    """The camera could not be opened or configured."""


class CameraTimeoutError(CameraError):
    """No complete RGB-D frame arrived within the configured timeout (after the reconnect attempts)."""


class Camera(abc.ABC):
    """An RGB-D camera with a known pose in the robot base frame."""

    #: (4, 4) world(robot base)-from-camera, OpenCV axes, metres.
    camera_pose: np.ndarray

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the device and start streaming (warm-up frames are discarded). Idempotent."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Stop streaming and release the device. Idempotent."""

    @abc.abstractmethod
    def read(self) -> RGBDFrame:
        """A fresh, aligned RGB-D frame captured after this call started.

        Raises CameraTimeoutError if none arrives in time (never blocks indefinitely).
        """

    @property
    @abc.abstractmethod
    def K(self) -> np.ndarray:
        """(3, 3) intrinsics of the delivered (colour) image, pixels. Valid after connect()."""

    def __enter__(self) -> Camera:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
