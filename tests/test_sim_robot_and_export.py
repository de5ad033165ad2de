"""SimRobot through the Robot interface, and the held-out scene export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from scipy import ndimage

from data.scene_io import iter_scenes, list_scenes
from robot.base import Action, Primitive, Robot
from robot.sim_robot import SimRobot, SimRobotConfig
from sim.export_scenes import export_scenes
from sim.export_scenes import main as export_main


def test_sim_robot_interface_roundtrip():
    with SimRobot(SimRobotConfig(clutter="sparse", seed=1)) as robot:
        assert isinstance(robot, Robot) and robot.kind == "sim"
        frame = robot.get_observation()
        assert frame.rgb.shape == (240, 320, 3) and frame.rgb.dtype == np.uint8
        assert frame.depth.dtype == np.float32 and frame.K.shape == (3, 3) and frame.camera_pose.shape == (4, 4)
        label = robot.ground_truth_label()
        iid = int(np.unique(label[label > 0])[0])
        dist = ndimage.distance_transform_edt(label == iid)
        v, u = np.unravel_index(np.argmax(dist), dist.shape)
        out = robot.send_action(Action(Primitive.POKE, (float(u), float(v)), angle=0.3, push_length=0.1))
        assert out.executed and np.all(np.isfinite(out.target_robot))
        assert out.grasp_success is None
        assert iid in out.info["ground_truth"]["moved_ids"]
        after = robot.get_observation()
        assert not np.array_equal(after.rgb, frame.rgb)
        robot.home()
        with pytest.raises(ValueError, match="unknown primitive"):
            robot.send_action(Action("wiggle", (10.0, 10.0)))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="outside"):
            robot.send_action(Action(Primitive.GRASP, (-40.0, 10.0)))
    assert robot.env is None  # disconnected by the context manager
    with pytest.raises(RuntimeError, match="not connected"):
        robot.get_observation()


def test_export_scenes_writes_coco_and_labels(tmp_path):
    out = tmp_path / "test_scenes"
    ids = export_scenes(out, "test", 3, progress=False)
    assert ids == list_scenes(out)
    scenes = list(iter_scenes(out))
    assert len(scenes) == 3
    for s in scenes:
        assert s.label.dtype == np.uint16 and s.label.shape == s.depth.shape == (240, 320)
        assert len(np.unique(s.label)) > 2
        assert 0.3 < np.median(s.depth[s.depth > 0]) < 1.5
    coco = COCO(str(out / "instances_coco.json"))
    n_inst = sum(len(np.unique(s.label)) - 1 for s in scenes)
    assert len(coco.getAnnIds()) == n_inst
    meta = json.loads((out / "meta.json").read_text())
    assert meta["split"] == "test" and meta["n"] == 3
    # the same arguments reproduce the same scenes
    ids2 = export_scenes(tmp_path / "again", "test", 1, progress=False)
    again = next(iter_scenes(tmp_path / "again"))
    np.testing.assert_array_equal(again.rgb, scenes[0].rgb)
    assert ids2 == ["000000"]


def test_export_cli_refuses_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        export_main(["--split", "holdout", str(tmp_path / "x")])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("data")
    assert export_main(["--n", "1", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "data"
    assert export_main(["--n", "0", str(tmp_path / "new")]) == 2
