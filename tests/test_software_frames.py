"""`python -m robot.software_frames` on real exported sim scenes (pybullet) through the real pyrealsense2
software device: what it writes is the scene as a RealSense delivers it, in the layout
`python -m learner.deploy predict --rgb/--depth/--intrinsics` reads, and bad input fails with one error line.

No skip: pyrealsense2 not installed, or installed without Debian's libusb-1.0-0, fails the capture test
naming what to install (tests/franka_helpers.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data.scene_io import depth_m_to_mm, list_scenes, read_scene
from learner.deploy.predict import collect_frames, read_depth, read_intrinsics, read_rgb
from robot import software_frames
from robot.software_camera import SoftwareRealSense
from robot.software_frames import main
from tests import franka_helpers
from tests.fs_helpers import tree_hash

W, H = 320, 240


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from sim.export_scenes import export_scenes

    root = tmp_path_factory.mktemp("cross") / "scenes"
    export_scenes(root, "test", 2, domain="cross", width=W, height=H, progress=False)
    return root


@pytest.fixture
def pyrealsense2_loads():
    """pyrealsense2 imports: missing, or missing a system library, fails the test (no skip)."""
    if not franka_helpers.is_installed("pyrealsense2"):
        pytest.fail(f"pyrealsense2 is not installed ({franka_helpers.EXTRA_HINT})", pytrace=False)
    franka_helpers.require("pyrealsense2")


def _run(capsys, *args) -> tuple[int, list[str], list[str]]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err.splitlines()


def _near_a_neighbour(got_mm: np.ndarray, ref_mm: np.ndarray) -> np.ndarray:
    """Pixels whose depth is within 1 mm of the reference at the same pixel or one of its 8 neighbours."""
    h, w = ref_mm.shape
    pad = np.pad(ref_mm.astype(np.int32), 1)
    ok = np.zeros((h, w), bool)
    for dv in range(3):
        for du in range(3):
            ok |= np.abs(pad[dv:dv + h, du:du + w] - got_mm.astype(np.int32)) <= 1
    return ok


def test_frames_are_the_scenes_through_the_realsense_path(scenes, tmp_path, capsys, pyrealsense2_loads):
    out = tmp_path / "sw"
    rc, lines, err = _run(capsys, "--scenes", scenes, "--out", out, "--n", 4)
    ids = list_scenes(scenes)
    assert rc == 0 and err == [], err
    assert len(lines) == len(ids) + 1  # one line a frame (only 2 scenes exist), then the summary
    assert [ln.split(":")[0] for ln in lines[:-1]] == [f"sw_{i}" for i in ids]
    assert lines[-1].startswith(f"{len(ids)} software-camera frame(s)")

    frames = collect_frames(out / "rgb", out / "depth", out / "intrinsics")  # predict pairs them by stem
    assert [f[0] for f in frames] == [f"sw_{i}" for i in ids]
    for (_, rgb_path, depth_path, intr_path), sid in zip(frames, ids, strict=True):
        scene = read_scene(scenes, sid)
        np.testing.assert_array_equal(read_rgb(rgb_path), scene.rgb)  # colour order survives cv2's BGR

        depth_mm, ref_mm = read_depth(depth_path), depth_m_to_mm(scene.depth)
        assert depth_mm.dtype == np.uint16 and depth_mm.shape == (H, W)
        valid = ref_mm > 0
        same = valid & (np.abs(depth_mm.astype(np.int32) - ref_mm) <= 1)
        # millimetres in and out (depth units 0.001); rs.align maps footprints without interpolation, so with
        # identical cameras a value moves at most one pixel and a few per cent of the pixels come back empty
        assert same.sum() / valid.sum() > 0.9, same.sum() / valid.sum()
        assert (valid & (depth_mm == 0)).mean() < 0.08
        assert _near_a_neighbour(depth_mm, ref_mm)[depth_mm > 0].all()

        assert set(json.loads(intr_path.read_text())) == {"fx", "fy", "cx", "cy", "width", "height"}
        K, size = read_intrinsics(intr_path)
        np.testing.assert_allclose(K, scene.K, rtol=1e-6, atol=1e-4)  # the device holds K as float32
        assert size == (W, H)

    # --first picks from the sorted ids
    rc, lines, _ = _run(capsys, "--scenes", scenes, "--out", tmp_path / "second", "--first", 1, "--n", 1)
    assert rc == 0 and lines[0].startswith(f"sw_{ids[1]}:")
    assert sorted(p.name for p in (tmp_path / "second" / "rgb").iterdir()) == [f"sw_{ids[1]}.png"]


def test_a_camera_that_never_shows_the_scene_is_an_error(scenes, tmp_path, capsys, monkeypatch, pyrealsense2_loads):
    """The device streams another image: no frame is written from it; one error line after the wait."""
    inject = SoftwareRealSense.set_frames
    monkeypatch.setattr(SoftwareRealSense, "set_frames", lambda self, rgb, depth: inject(self, 255 - rgb, depth))
    monkeypatch.setattr(software_frames, "WAIT_S", 0.3)
    rc, lines, err = _run(capsys, "--scenes", scenes, "--out", tmp_path / "out")
    assert rc == 2 and lines == [] and len(err) == 1, err
    assert err[0].startswith("error: sw_") and "no frame showing the injected image within 0.3 s" in err[0]
    assert not (tmp_path / "out" / "rgb").exists()


def test_bad_input_fails_with_one_error_line_and_writes_nothing(scenes, tmp_path, capsys):
    out = tmp_path / "out"
    for args, message in [
        (("--scenes", tmp_path / "missing", "--out", out), "no such scenes directory"),
        (("--scenes", scenes, "--out", out, "--n", 0), "--n must be at least 1"),
        (("--scenes", scenes, "--out", out, "--first", 2), "selects none"),
    ]:
        rc, lines, err = _run(capsys, *args)
        assert rc == 2 and lines == [] and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert not out.exists()

    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    before = tree_hash(out)
    rc, lines, err = _run(capsys, "--scenes", scenes, "--out", out)
    assert rc == 2 and lines == [] and len(err) == 1 and "not an empty directory" in err[0], err
    assert tree_hash(out) == before
