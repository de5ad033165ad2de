"""Eye-to-hand calibration offline: ChArUco views rendered at known poses -> detection -> hand-eye solve -> YAML."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml

from robot.calibrate import (
    BoardSpec,
    _inv,
    available_methods,
    detect_board,
    main,
    save_view,
    solve_eye_to_hand,
    write_views,
)
from robot.calibration import Calibration
from robot.franka_robot import PROJECT_ROOT, FrankaConfig, FrankaRobot
from tests.board_views import render_board_view

W, H = 640, 480
K = np.array([[616.0, 0.0, 318.5], [0.0, 616.0, 241.5], [0.0, 0.0, 1.0]])
SPEC = BoardSpec()


def _rot(axis, angle) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(axis, float) * angle)[0]


def _look_at(eye, target) -> np.ndarray:
    z = np.asarray(target, float) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, np.cross(z, x), z, eye
    return T


BASE_FROM_CAMERA = _look_at(np.array([1.25, 0.25, 0.65]), [0.5, 0.0, 0.25])  # the unknown to recover
GRIPPER_FROM_BOARD = np.eye(4)
GRIPPER_FROM_BOARD[:3, :3] = _rot([0, 1, 0], np.pi / 2) @ _rot([0, 0, 1], 0.3)
GRIPPER_FROM_BOARD[:3, 3] = [0.0, -0.1, 0.06]


def _views(n: int, seed: int = 0, pose_noise_m: float = 3e-4, pose_noise_rad: float = 1e-3):
    """Robot poses (with encoder-like noise) and rendered camera images of the board on the hand."""
    rng = np.random.default_rng(seed)
    poses, images = [], []
    while len(images) < n:
        cam_from_board = np.eye(4)
        cam_from_board[:3, :3] = (_rot([1, 0, 0], rng.uniform(-0.5, 0.5)) @ _rot([0, 1, 0], rng.uniform(-0.5, 0.5))
                                  @ _rot([0, 0, 1], rng.uniform(-0.6, 0.6)))
        cam_from_board[:3, 3] = [rng.uniform(-0.12, 0.05), rng.uniform(-0.1, 0.05), rng.uniform(0.55, 0.85)]
        base_from_gripper = BASE_FROM_CAMERA @ cam_from_board @ _inv(GRIPPER_FROM_BOARD)
        noisy = base_from_gripper.copy()
        noisy[:3, :3] = noisy[:3, :3] @ _rot(rng.normal(size=3), pose_noise_rad)
        noisy[:3, 3] += rng.normal(scale=pose_noise_m, size=3)
        poses.append(noisy)
        images.append(render_board_view(SPEC, K, W, H, cam_from_board))
    return poses, images


def _errors(T: np.ndarray) -> tuple[float, float]:
    t_mm = 1000 * np.linalg.norm(T[:3, 3] - BASE_FROM_CAMERA[:3, 3])
    R = T[:3, :3].T @ BASE_FROM_CAMERA[:3, :3]
    return t_mm, float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


@pytest.mark.parametrize("method", available_methods())
def test_solver_recovers_known_extrinsics_from_rendered_board_views(method):
    poses, images = _views(14)
    dets = [detect_board(img, K, None, SPEC) for img in images]
    assert all(d is not None and len(d.image_points) >= 12 for d in dets)
    res = solve_eye_to_hand(poses, dets, K, method=method)
    t_mm, r_deg = _errors(res.base_from_camera)
    s = res.summary()
    print(f"\n{method}: base_from_camera error {t_mm:.2f} mm / {r_deg:.3f} deg; residuals {s}")
    assert t_mm < 3.0 and r_deg < 0.3
    assert s["residual_translation_mm"]["mean"] < 2.0 and s["reprojection_px"]["mean"] < 1.0
    g = res.gripper_from_board
    assert np.linalg.norm(g[:3, 3] - GRIPPER_FROM_BOARD[:3, 3]) < 0.005


def test_cli_solve_writes_a_calibration_the_franka_config_loads(tmp_path, capsys):
    views_dir = tmp_path / "calib"
    views_dir.mkdir()
    poses, images = _views(10, seed=1)
    images[3] = np.full_like(images[3], 110)  # a view where the board is not visible: skipped, not fatal
    views = [save_view(views_dir, i, img, pose) for i, (img, pose) in enumerate(zip(images, poses, strict=True))]
    write_views(views_dir, views, K, [0.0] * 5, SPEC, camera_serial="SIM-1")
    out = tmp_path / "cal.yaml"
    assert main(["solve", str(views_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "from 9 views" in printed and "residual_translation_mm" in printed
    cal = Calibration.load(out)
    assert not cal.placeholder and cal.n_views == 9 and cal.camera_serial == "SIM-1"
    t_mm, r_deg = _errors(cal.base_from_camera)
    assert t_mm < 3.0 and r_deg < 0.3
    assert set(cal.residual_translation_mm) == {"mean", "max"}
    assert out.read_text().startswith("# Eye-to-hand calibration")
    # round trip
    cal.save(tmp_path / "again.yaml")
    np.testing.assert_allclose(Calibration.load(tmp_path / "again.yaml").base_from_camera, cal.base_from_camera, atol=1e-8)


def test_board_command_writes_a_printable_board(tmp_path):
    out = tmp_path / "board.png"
    assert main(["board", "--out", str(out), "--dpi", "150"]) == 0
    img = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    assert img is not None and img.shape[1] > img.shape[0] > 100
    assert detect_board(img, np.array([[500.0, 0, img.shape[1] / 2], [0, 500.0, img.shape[0] / 2], [0, 0, 1]]),
                        None, SPEC) is not None


def test_degenerate_inputs_fail_clearly():
    poses, images = _views(4, seed=2)
    dets = [detect_board(img, K, None, SPEC) for img in images]
    with pytest.raises(ValueError, match="at least 3 views"):
        solve_eye_to_hand(poses[:2], dets[:2], K)
    with pytest.raises(ValueError, match="one robot pose per"):
        solve_eye_to_hand(poses[:3], dets, K)
    with pytest.raises(ValueError, match="not available"):
        solve_eye_to_hand(poses, dets, K, method="magic")
    # the same orientation in every view: the rotation is unobservable
    same = [d for d in dets]
    for d in same:
        d.cam_from_board = d.cam_from_board.copy()
        d.cam_from_board[:3, :3] = dets[0].cam_from_board[:3, :3]
    flat = [p.copy() for p in poses]
    for p in flat:
        p[:3, :3] = poses[0][:3, :3]
    with pytest.raises(ValueError, match="vary the tool orientation"):
        solve_eye_to_hand(flat, same, K, method="numpy")


def test_calibration_file_errors_and_the_shipped_placeholder(tmp_path):
    shipped = Calibration.load(PROJECT_ROOT / FrankaConfig().calibration)
    assert shipped.placeholder
    R = shipped.base_from_camera[:3, :3]
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-5) and R[2, 2] < -0.5  # looking down at the table
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base_from_camera": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]}))
    with pytest.raises(ValueError, match="base_from_camera.*4x4"):
        Calibration.load(bad)
    scaled = np.eye(4)
    scaled[:3, :3] *= 2
    bad.write_text(yaml.safe_dump({"base_from_camera": scaled.tolist()}))
    with pytest.raises(ValueError, match="rotation"):
        Calibration.load(bad)
    with pytest.raises(FileNotFoundError, match="robot.calibrate"):
        Calibration.load(tmp_path / "none.yaml")


def test_real_camera_and_arm_refuse_the_placeholder_calibration():
    robot = FrankaRobot(FrankaConfig(dry_run=False, camera="realsense"))
    with pytest.raises(ValueError, match="placeholder"):
        robot.connect()
