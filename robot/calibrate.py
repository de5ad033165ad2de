"""Eye-to-hand calibration of the RealSense against the Panda: `python -m robot.calibrate`.

A ChArUco board is fixed to the hand; the camera is fixed in the cell. For every view i the robot
reports base_from_gripper_i (franky, end-effector pose) and the camera sees cam_from_board_i
(ChArUco detection + solvePnP). Both chains give the same board pose in the gripper:

    gripper_from_base_i @ base_from_camera @ cam_from_board_i = gripper_from_board   (constant)

which is OpenCV's hand-eye problem with the robot poses inverted; `cv2.calibrateHandEye`
(Tsai / Park / Horaud / Andreff / Daniilidis) then returns base_from_camera, and
`cv2.calibrateRobotWorldHandEye` (Shah / Li) returns it together with gripper_from_board.
opencv-python 5.0.0.93 lacks both bindings (opencv issue #29565, fixed upstream after that
release); there, method "auto" uses this module's own least-squares solve of the same equation
(`solve_ax_xb`: Park & Martin's rotation fit, then linear least squares for the translation).
Translations go to OpenCV as 3x1 columns, its documented shape: OpenCV 5.1's
calibrateRobotWorldHandEye fails an assertion in gemm when given flat (3,) vectors
(4.x accepted both).

Subcommands (all poses in metres, frames as in robot.base):
    board    write a printable PNG of the board (print at 100 %, measure a square, pass --square)
    collect  move (or hand-guide) the arm through views; save images, K and robot poses to a directory
    solve    detect the board in every view, solve, report residuals, write the calibration YAML
Example (docs/franka.md):
    python -m robot.calibrate board --out board.png
    python -m robot.calibrate collect --ip 172.16.0.2 --out runs/calib --manual --views 15
    python -m robot.calibrate solve runs/calib --out configs/robot/franka_calibration.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from robot.calibration import Calibration

log = logging.getLogger(__name__)

HAND_EYE_METHODS = {"tsai": "CALIB_HAND_EYE_TSAI", "park": "CALIB_HAND_EYE_PARK", "horaud": "CALIB_HAND_EYE_HORAUD",
                    "andreff": "CALIB_HAND_EYE_ANDREFF", "daniilidis": "CALIB_HAND_EYE_DANIILIDIS"}
ROBOT_WORLD_METHODS = {"shah": "CALIB_ROBOT_WORLD_HAND_EYE_SHAH", "li": "CALIB_ROBOT_WORLD_HAND_EYE_LI"}


# ---------------------------------------------------------------------------------------------- board
@dataclass
class BoardSpec:
    """ChArUco board: squares along x / y, square and marker side in metres, aruco dictionary name."""

    squares_x: int = 7
    squares_y: int = 5
    square_length: float = 0.035
    marker_length: float = 0.026
    dictionary: str = "DICT_5X5_100"
    legacy_pattern: bool = False  # boards printed with OpenCV < 4.6 and an even number of rows

    def board(self) -> Any:
        aruco = cv2.aruco
        if not hasattr(aruco, self.dictionary):
            raise ValueError(f"unknown aruco dictionary {self.dictionary!r} (e.g. DICT_5X5_100, DICT_4X4_50)")
        b = aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_length, self.marker_length,
                               aruco.getPredefinedDictionary(getattr(aruco, self.dictionary)))
        b.setLegacyPattern(self.legacy_pattern)
        return b

    @property
    def size_m(self) -> tuple[float, float]:
        return self.squares_x * self.square_length, self.squares_y * self.square_length


def board_image(spec: BoardSpec, px_per_m: float = 4000.0, margin_px: int = 0) -> np.ndarray:
    """Grey uint8 image of the board, `px_per_m` pixels per metre (board origin = top-left corner)."""
    w, h = spec.size_m
    size = (int(round(w * px_per_m)) + 2 * margin_px, int(round(h * px_per_m)) + 2 * margin_px)
    return spec.board().generateImage(size, marginSize=margin_px, borderBits=1)


@dataclass
class BoardDetection:
    """Board pose in the camera (cam_from_board, 4x4, metres) and the corners it was fitted to."""

    cam_from_board: np.ndarray
    object_points: np.ndarray  # (N,3) board frame, metres
    image_points: np.ndarray  # (N,2) pixels
    rms_px: float


def detect_board(image: np.ndarray, K: np.ndarray, dist: np.ndarray | None, spec: BoardSpec,
                 min_corners: int = 6) -> BoardDetection | None:
    """ChArUco corners -> solvePnP. None when fewer than `min_corners` corners are found."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    board = spec.board()
    corners, ids, _, _ = cv2.aruco.CharucoDetector(board).detectBoard(grey)
    if ids is None or len(ids) < min_corners:
        return None
    obj, imgp = board.matchImagePoints(corners, ids)
    obj, imgp = obj.reshape(-1, 3).astype(np.float64), imgp.reshape(-1, 2).astype(np.float64)
    dist = np.zeros(5) if dist is None else np.asarray(dist, np.float64)
    ok, rvec, tvec = cv2.solvePnP(obj, imgp, K, dist, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return None
    proj, _ = cv2.projectPoints(obj, rvec, tvec, K, dist)
    rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - imgp) ** 2, 1))))
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = cv2.Rodrigues(rvec)[0], tvec.ravel()
    return BoardDetection(T, obj, imgp, rms)


# ---------------------------------------------------------------------------------------------- solver
def _inv(T: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


def _rot_angle_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))


def _project_to_rotation(M: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(M)
    return U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt


def solve_ax_xb(H: list[np.ndarray], C: list[np.ndarray]) -> np.ndarray:
    """X with H_i X C_i = const for all i (4x4 poses): OpenCV's hand-eye equation, own solver.

    Every pair (i, j) gives A X = X B with A = H_j^-1 H_i and B = C_j C_i^-1. The rotation is the
    least-squares fit of the rotation vectors log(R_B) onto log(R_A) (Park & Martin, via SVD);
    the translation solves the stacked (R_A - I) t_X = R_X t_B - t_A in the least-squares sense.
    """
    n = len(H)
    alphas, betas, rows, rhs = [], [], [], []
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    AB = []
    for i, j in pairs:
        A = _inv(H[j]) @ H[i]
        B = C[j] @ _inv(C[i])
        a, b = cv2.Rodrigues(A[:3, :3])[0].ravel(), cv2.Rodrigues(B[:3, :3])[0].ravel()
        if np.linalg.norm(a) < 1e-3:  # (nearly) pure translation pairs say nothing about the rotation
            continue
        alphas.append(a)
        betas.append(b)
        AB.append((A, B))
    if len(alphas) < 2:
        raise ValueError("the views differ too little in rotation to solve the hand-eye problem; vary the tool "
                         "orientation between views (tilts of 15-30 degrees about different axes)")
    M = sum(np.outer(a, b) for a, b in zip(alphas, betas, strict=True))
    Rx = _project_to_rotation(M)
    for A, B in AB:
        rows.append(A[:3, :3] - np.eye(3))
        rhs.append(Rx @ B[:3, 3] - A[:3, 3])
    tx = np.linalg.lstsq(np.vstack(rows), np.concatenate(rhs), rcond=None)[0]
    X = np.eye(4)
    X[:3, :3], X[:3, 3] = Rx, tx
    return X


def available_methods() -> list[str]:
    """Solver names usable with this OpenCV build (plus 'numpy', always available)."""
    out = []
    if hasattr(cv2, "calibrateHandEye"):
        out += list(HAND_EYE_METHODS)
    if hasattr(cv2, "calibrateRobotWorldHandEye"):
        out += list(ROBOT_WORLD_METHODS)
    return out + ["numpy"]


@dataclass
class HandEyeResult:
    base_from_camera: np.ndarray
    gripper_from_board: np.ndarray
    method: str
    translation_mm: np.ndarray  # per view: |predicted - measured| board position in the camera
    rotation_deg: np.ndarray  # per view: angle between predicted and measured board orientation
    reprojection_px: np.ndarray  # per view: RMS pixel error of the board corners under the solution

    def summary(self) -> dict[str, dict[str, float]]:
        def s(x):
            return {"mean": round(float(np.mean(x)), 4), "max": round(float(np.max(x)), 4)}

        return {"residual_translation_mm": s(self.translation_mm), "residual_rotation_deg": s(self.rotation_deg),
                "reprojection_px": s(self.reprojection_px)}


def solve_eye_to_hand(base_from_gripper: list[np.ndarray], detections: list[BoardDetection], K: np.ndarray,
                      dist: np.ndarray | None = None, method: str = "auto") -> HandEyeResult:
    """base_from_camera from robot poses and board detections of the same views (at least 3)."""
    if len(base_from_gripper) != len(detections):
        raise ValueError("one robot pose per board detection is needed")
    if len(detections) < 3:
        raise ValueError(f"at least 3 views are needed, got {len(detections)} (15-25 recommended)")
    if method == "auto":
        method = "park" if hasattr(cv2, "calibrateHandEye") else "numpy"
    if method not in available_methods():
        raise ValueError(f"hand-eye method {method!r} is not available here; choose from {available_methods()}")
    gripper_from_base = [_inv(T) for T in base_from_gripper]
    cam_from_board = [d.cam_from_board for d in detections]

    def rotations(Ts):
        return [T[:3, :3] for T in Ts]

    def translations(Ts):  # 3x1 columns: OpenCV 5.1's calibrateRobotWorldHandEye rejects flat (3,) vectors
        return [T[:3, 3].reshape(3, 1) for T in Ts]

    if method in HAND_EYE_METHODS:
        R, t = cv2.calibrateHandEye(
            rotations(gripper_from_base), translations(gripper_from_base),
            rotations(cam_from_board), translations(cam_from_board),
            method=getattr(cv2, HAND_EYE_METHODS[method]))
        X = np.eye(4)
        X[:3, :3], X[:3, 3] = R, np.ravel(t)
    elif method in ROBOT_WORLD_METHODS:
        # A_i X = Z B_i with A_i = cam_from_board_i, B_i = base_from_gripper_i: X = board_from_gripper,
        # Z = cam_from_base (OpenCV's "base2world" and "gripper2cam" outputs).
        _, _, R_z, t_z = cv2.calibrateRobotWorldHandEye(
            rotations(cam_from_board), translations(cam_from_board),
            rotations(base_from_gripper), translations(base_from_gripper),
            method=getattr(cv2, ROBOT_WORLD_METHODS[method]))
        Z = np.eye(4)
        Z[:3, :3], Z[:3, 3] = R_z, np.ravel(t_z)
        X = _inv(Z)
    else:
        X = solve_ax_xb(gripper_from_base, cam_from_board)
    # the constant board pose on the hand implied by every view, averaged (chordal mean of rotations)
    g_from_b = [gb @ X @ cb for gb, cb in zip(gripper_from_base, cam_from_board, strict=True)]
    G = np.eye(4)
    G[:3, :3] = _project_to_rotation(sum(T[:3, :3] for T in g_from_b))
    G[:3, 3] = np.mean([T[:3, 3] for T in g_from_b], axis=0)
    dist = np.zeros(5) if dist is None else np.asarray(dist, np.float64)
    t_err, r_err, px = [], [], []
    for bg, det in zip(base_from_gripper, detections, strict=True):
        pred = _inv(X) @ bg @ G  # cam_from_board predicted from the robot pose
        t_err.append(1000.0 * np.linalg.norm(pred[:3, 3] - det.cam_from_board[:3, 3]))
        r_err.append(_rot_angle_deg(pred[:3, :3].T @ det.cam_from_board[:3, :3]))
        proj, _ = cv2.projectPoints(det.object_points, cv2.Rodrigues(pred[:3, :3])[0], pred[:3, 3], K, dist)
        px.append(float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - det.image_points) ** 2, 1)))))
    return HandEyeResult(X, G, method, np.array(t_err), np.array(r_err), np.array(px))


# ---------------------------------------------------------------------------------------------- views on disk
def save_view(out_dir: Path, index: int, rgb: np.ndarray, base_from_gripper: np.ndarray) -> dict[str, Any]:
    name = f"view_{index:03d}.png"
    cv2.imwrite(str(out_dir / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return {"image": name, "base_from_gripper": np.asarray(base_from_gripper).tolist()}


def write_views(out_dir: Path, views: list[dict[str, Any]], K: np.ndarray, dist: list[float], spec: BoardSpec,
                camera_serial: str = "") -> Path:
    path = out_dir / "views.json"
    path.write_text(json.dumps({"K": np.asarray(K).tolist(), "dist": list(dist), "board": asdict(spec),
                                "camera_serial": camera_serial, "views": views}, indent=1))
    return path


def solve_directory(view_dir: str | Path, method: str = "auto", min_corners: int = 6) -> tuple[HandEyeResult, dict]:
    """Detect the board in every saved view of `view_dir` and solve. Views without a board are skipped."""
    view_dir = Path(view_dir)
    meta = json.loads((view_dir / "views.json").read_text())
    K, dist, spec = np.array(meta["K"], float), np.array(meta.get("dist") or [0] * 5, float), BoardSpec(**meta["board"])
    poses, dets = [], []
    for v in meta["views"]:
        img = cv2.imread(str(view_dir / v["image"]), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise FileNotFoundError(f"{view_dir / v['image']} is missing or unreadable")
        det = detect_board(img, K, dist, spec, min_corners)
        if det is None:
            log.warning("%s: board not found (fewer than %d corners); view skipped", v["image"], min_corners)
            continue
        poses.append(np.array(v["base_from_gripper"], float))
        dets.append(det)
    log.info("board found in %d of %d views", len(dets), len(meta["views"]))
    return solve_eye_to_hand(poses, dets, K, dist, method), meta


# ---------------------------------------------------------------------------------------------- CLI
def _cmd_board(a: argparse.Namespace) -> int:
    spec = BoardSpec(a.squares_x, a.squares_y, a.square, a.marker, a.dictionary)
    img = board_image(spec, px_per_m=a.dpi / 0.0254, margin_px=int(0.01 * a.dpi / 0.0254))
    cv2.imwrite(a.out, img)
    print(f"wrote {a.out}: {spec.squares_x}x{spec.squares_y} squares of {1000 * spec.square_length:.1f} mm "
          f"(print at 100 % / {a.dpi} dpi and measure a square; pass the measured size to collect)")
    return 0


def _still_pose(robot: Any, timeout_s: float = 3.0, step_s: float = 0.1, tol_m: float = 3e-4) -> np.ndarray:
    """The hand pose (from the measured joint angles, franky's kinematic model) once it moves less than
    `tol_m` in `step_s` (the arm has come to rest after a motion or after being hand-guided)."""
    import franky

    def pose() -> np.ndarray:
        s = robot.state
        return np.asarray(robot.model.pose(franky.Frame.EndEffector, s.q, s.F_T_EE, s.EE_T_K).matrix, float)

    prev, deadline = pose(), time.monotonic() + timeout_s
    while True:
        time.sleep(step_s)
        cur = pose()
        if np.linalg.norm(cur[:3, 3] - prev[:3, 3]) < tol_m or time.monotonic() > deadline:
            return cur
        prev = cur


def collect_views(robot: Any, camera: Any, out_dir: str | Path, spec: BoardSpec, *,
                  stations: list[list[float]] | None = None, n_manual: int = 0,
                  prompt: Any = input, settle_s: float = 3.0) -> Path:
    """Capture one colour image and one measured hand pose per view; write the views directory.

    robot: a connected `franky.Robot`; camera: a connected `robot.camera.Camera`. Either the arm visits
    `stations` (joint angles, rad, with franky JointMotions at the robot's dynamics factor) or the
    operator hand-guides it to `n_manual` views, confirming each with Enter (`prompt`).
    """
    import franky

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(stations) if stations else n_manual
    views: list[dict[str, Any]] = []
    for i in range(n):
        if stations:
            robot.move(franky.JointMotion(list(stations[i])))
        else:
            prompt(f"[{i + 1}/{n}] hand-guide the arm (board visible, vary the tilt), release it, press Enter ")
        pose = _still_pose(robot, timeout_s=settle_s)
        frame = camera.read()
        det = detect_board(frame.rgb, camera.K, None, spec)
        log.info("view %d: %s", i, f"board found, {len(det.image_points)} corners" if det else "board NOT found")
        views.append(save_view(out, i, frame.rgb, pose))
    dist = camera.distortion[1] if getattr(camera, "distortion", None) else [0.0] * 5
    return write_views(out, views, camera.K, dist, spec, getattr(getattr(camera, "cfg", None), "serial", ""))


def _cmd_collect(a: argparse.Namespace) -> int:
    from robot.realsense_camera import RealSenseCamera, RealSenseConfig

    try:
        import franky
    except ImportError:
        print("error: collecting views needs franky-control; run `bash scripts/setup.sh franka`", file=sys.stderr)
        return 2
    spec = BoardSpec(a.squares_x, a.squares_y, a.square, a.marker, a.dictionary)
    stations = None
    if not a.manual:
        stations = json.loads(Path(a.poses).read_text()) if a.poses else []
        if not stations:
            print("error: give --manual (hand-guide the arm) or --poses FILE (JSON list of 7 joint angles)",
                  file=sys.stderr)
            return 2
        if input(f"The arm will move through {len(stations)} joint poses. Type 'yes' to continue: ").strip() != "yes":
            print("aborted; nothing moved")
            return 1
    realtime = franky.RealtimeConfig.Ignore if a.no_realtime else franky.RealtimeConfig.Enforce
    robot = franky.Robot(a.ip, realtime_config=realtime)
    robot.relative_dynamics_factor = a.dynamics
    with RealSenseCamera(RealSenseConfig(serial=a.serial, width=a.width, height=a.height)) as cam:
        path = collect_views(robot, cam, a.out, spec, stations=stations, n_manual=a.views)
    print(f"saved views to {path.parent}; next: python -m robot.calibrate solve {a.out} --out FILE.yaml")
    return 0


def _cmd_solve(a: argparse.Namespace) -> int:
    try:
        res, meta = solve_directory(a.views_dir, a.method, a.min_corners)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = res.summary()
    n_views = len(res.translation_mm)
    print(f"solved with {res.method} from {n_views} views")
    for k, v in s.items():
        print(f"  {k:<24} mean {v['mean']:.3f}  max {v['max']:.3f}")
    print("base_from_camera =\n" + np.array2string(res.base_from_camera, precision=4, suppress_small=True))
    if s["residual_translation_mm"]["max"] > a.max_residual_mm:
        print(f"warning: a view disagrees by more than {a.max_residual_mm} mm; check the board mount, the square "
              "size, or remove blurred views", file=sys.stderr)
    cal = Calibration(base_from_camera=res.base_from_camera, gripper_from_board=res.gripper_from_board,
                      method=res.method, n_views=n_views, camera_serial=str(meta.get("camera_serial", "")),
                      created=time.strftime("%Y-%m-%dT%H:%M:%S"), **s)
    cal.save(a.out, header=f"Eye-to-hand calibration written by `python -m robot.calibrate solve {a.views_dir}`.\n"
                           "base_from_camera: robot base from camera (OpenCV axes), metres.")
    print(f"wrote {a.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m robot.calibrate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def board_args(q):
        q.add_argument("--squares-x", type=int, default=7)
        q.add_argument("--squares-y", type=int, default=5)
        q.add_argument("--square", type=float, default=0.035, help="square side, metres (measure the print)")
        q.add_argument("--marker", type=float, default=0.026, help="marker side, metres")
        q.add_argument("--dictionary", default="DICT_5X5_100")

    q = sub.add_parser("board", help="write a printable board PNG")
    board_args(q)
    q.add_argument("--out", default="charuco_board.png")
    q.add_argument("--dpi", type=int, default=300)
    q = sub.add_parser("collect", help="capture views and robot poses")
    board_args(q)
    q.add_argument("--ip", required=True, help="robot (FCI) address")
    q.add_argument("--out", required=True, help="directory for the views")
    q.add_argument("--manual", action="store_true", help="hand-guide the arm to each view")
    q.add_argument("--views", type=int, default=15, help="number of views with --manual")
    q.add_argument("--poses", default="", help="JSON list of joint poses (7 angles, rad) to visit instead")
    q.add_argument("--dynamics", type=float, default=0.1, help="relative dynamics factor for --poses moves")
    q.add_argument("--serial", default="", help="RealSense serial (default: first found)")
    q.add_argument("--width", type=int, default=640)
    q.add_argument("--height", type=int, default=480)
    q.add_argument("--no-realtime", action="store_true", help="franky RealtimeConfig.Ignore (no RT kernel / franky-sim)")
    q = sub.add_parser("solve", help="solve and write the calibration YAML")
    q.add_argument("views_dir")
    q.add_argument("--out", required=True, help="calibration YAML to write (configs/robot/franka.yaml points to it)")
    q.add_argument("--method", default="auto", help=f"auto | {' | '.join(list(HAND_EYE_METHODS) + list(ROBOT_WORLD_METHODS))} | numpy")
    q.add_argument("--min-corners", type=int, default=6)
    q.add_argument("--max-residual-mm", type=float, default=5.0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return {"board": _cmd_board, "collect": _cmd_collect, "solve": _cmd_solve}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
