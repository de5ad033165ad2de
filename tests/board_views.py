"""Synthetic camera views of the ChArUco board at known poses, for the calibration tests (test_calibrate)
and the franka-sim camera that shows the board (franka_helpers)."""

from __future__ import annotations

import cv2
import numpy as np

from robot.calibrate import BoardSpec, board_image


def render_board_view(spec: BoardSpec, K: np.ndarray, width: int, height: int, cam_from_board: np.ndarray,
                      background: int = 110, px_per_m: float = 6000.0) -> np.ndarray:
    """(H,W,3) uint8 camera image of the board at pose cam_from_board (pinhole K, no distortion).

    Synthetic views with known poses, for testing the detector and the solver offline.
    """
    img = board_image(spec, px_per_m)
    img = cv2.GaussianBlur(img, (0, 0), 0.6 * px_per_m / 2000.0)  # band-limit before the perspective warp
    S = np.array([[1 / px_per_m, 0, 0.5 / px_per_m], [0, 1 / px_per_m, 0.5 / px_per_m], [0, 0, 1]])  # px -> metres
    P = K @ np.column_stack([cam_from_board[:3, 0], cam_from_board[:3, 1], cam_from_board[:3, 3]])
    H = P @ S
    # paint the board on a white sheet slightly larger than it (like a printed, mounted board)
    sheet = np.full((img.shape[0] + 2 * 200, img.shape[1] + 2 * 200), 255, np.uint8)
    sheet[200:-200, 200:-200] = img
    H_sheet = H @ np.array([[1, 0, -200], [0, 1, -200], [0, 0, 1]], float)
    out = cv2.warpPerspective(sheet, H_sheet, (width, height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=background)
    return np.repeat(out[..., None], 3, axis=2)
