"""Watching the robot learn: the Rerun recording of a log (`python -m data.inspect RUN --rerun`), the loop's
live view (`loop.viz=rerun`), the HTML report's learning plots and the code version of a run.

One real sim run of the loop (10 interactions, retrained and evaluated on held-out scenes after 5 and 10,
with the live view on) feeds every test; recordings are read back with the Rerun SDK itself
(rerun.chunk.RrdReader). Needs the `viz` extra (rerun-sdk); without it the Rerun tests skip, which fails
the run under CI (tests/conftest.py).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.bench_log import synthetic_record
from data.inspect import main, parse_range
from data.log import InteractionLog
from data.schema import depth_to_mm
from tests.report_helpers import chromium_screenshot
from tests.test_loop import TINY, metrics, run_loop

ROOT = Path(__file__).resolve().parents[1]
N = 10

try:
    import rerun  # noqa: F401

    HAVE_RERUN = True
except ImportError:
    HAVE_RERUN = False


def need_rerun() -> None:
    if not HAVE_RERUN:
        pytest.skip("rerun-sdk not installed (the `viz` extra: `bash scripts/setup.sh dev franka viz`)")


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory) -> Path:
    """A real loop run: 10 sim interactions, retrain + held-out evaluation after 5 and 10, live view on."""
    run = tmp_path_factory.mktemp("viz") / "run"
    tiny = [o for o in TINY if not o.startswith("loop.eval_interval=")]
    cmd = [sys.executable, str(ROOT / "run_loop.py"), "robot=sim", f"hydra.run.dir={run}", *tiny,
           f"loop.interactions={N}", "loop.update_interval=5", "loop.eval_interval=5", "loop.train_steps=2",
           *(["loop.viz=rerun"] if HAVE_RERUN else [])]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def chunks(path: Path) -> list:
    from rerun.chunk import RrdReader

    return list(RrdReader(str(path)).stream())


def entity_rows(cs: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cs:
        if not c.is_static:
            out[c.entity_path] = out.get(c.entity_path, 0) + c.num_rows
    return out


def column(cs: list, entity: str, name: str) -> list:
    """(interaction, value) of a component column of `entity` (rows without it left out), by interaction."""
    out = []
    for c in cs:
        if c.entity_path == entity and not c.is_static:
            rb = c.to_record_batch()
            if name in rb.schema.names:
                pairs = zip(rb.column("interaction").to_pylist(), rb.column(name).to_pylist(), strict=True)
                out += [(t, v) for t, v in pairs if v is not None]
    return sorted(out, key=lambda x: x[0])


def at(cs: list, entity: str, name: str, i: int) -> object:
    """The value of a component of `entity` logged at interaction i."""
    vals = [v for t, v in column(cs, entity, name) if t == i]
    assert len(vals) == 1, (entity, name, i, len(vals))
    return vals[0]


EXPECTED = {
    "/world/camera", "/world/camera/before/rgb", "/world/camera/after/rgb", "/world/camera/before/depth",
    "/world/camera/after/depth", "/world/camera/hypotheses", "/world/camera/chosen", "/world/camera/mask",
    "/world/camera/pixel", "/world/action/target", "/interaction/summary", "/interaction/log",
    "/interaction/positive_rate", "/interaction/model_version", "/interaction/seconds", "/interaction/hit_rate",
    "/metrics/train/loss", "/metrics/heldout/AP50/model", "/metrics/heldout/AP50/depth_clustering",
    "/metrics/heldout/AP/model", "/metrics/heldout/overlap_F/model", "/metrics/heldout/model_version",
}  # fmt: skip


def check_recording(path: Path, run: Path, indices: range) -> list:
    cs = chunks(path)
    ents = entity_rows(cs)
    assert EXPECTED - {"/metrics/train/loss", "/metrics/heldout/AP50/model", "/metrics/heldout/AP50/depth_clustering",
                       "/metrics/heldout/AP/model", "/metrics/heldout/overlap_F/model",
                       "/metrics/heldout/model_version"} <= set(ents), sorted(ents)  # fmt: skip
    # the interaction timeline: one step per record
    steps = {t for c in cs if "interaction" in c.timeline_names for t in c.to_record_batch().column("interaction").to_pylist()}
    assert steps == set(indices)
    assert ents["/world/camera/before/depth"] == len(indices) == ents["/world/camera/before/rgb"]
    with InteractionLog.open(run / "interactions.zarr", "r") as log:
        i = indices[0]
        rec = log[i]
        # one depth image: uint16 millimetres of the log's shape, meter = 1000
        buf = at(cs, "/world/camera/before/depth", "DepthImage:buffer", i)
        fmt = at(cs, "/world/camera/before/depth", "DepthImage:format", i)
        assert (fmt[0]["width"], fmt[0]["height"]) == (log.width, log.height) == (320, 240)
        depth = np.frombuffer(bytes(buf[0]), dtype=np.uint16).reshape(fmt[0]["height"], fmt[0]["width"])
        diff = np.abs(depth.astype(int) - depth_to_mm(rec.depth_before))  # the log's mm; the view rounds in float32
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
        assert at(cs, "/world/camera/before/depth", "DepthImage:meter", i) == [1000.0]
        # the intrinsics it carries (Rerun: pixel centres at +0.5) and the camera pose in the world frame
        k = at(cs, "/world/camera", "Pinhole:image_from_camera", i)
        K = np.asarray(k[0], dtype=np.float64).reshape(3, 3).T  # stored column-major
        assert np.allclose(K, rec.K + np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]]), atol=1e-4)
        assert at(cs, "/world/camera", "Pinhole:resolution", i) == [[320.0, 240.0]]
        assert np.allclose(at(cs, "/world/camera", "Transform3D:translation", i)[0], rec.camera_pose[:3, 3])
        R = np.asarray(at(cs, "/world/camera", "Transform3D:mat3x3", i)[0]).reshape(3, 3).T
        assert np.allclose(R, rec.camera_pose[:3, :3], atol=1e-6)
        # the action pixel (+0.5 too) and the 3D target in the robot frame (cleared when there is none)
        assert np.allclose(at(cs, "/world/camera/pixel", "Points2D:positions", i)[0], np.asarray(rec.pixel) + 0.5)
        if np.all(np.isfinite(rec.target_robot)):
            assert np.allclose(at(cs, "/world/action/target", "Points3D:positions", i)[0], rec.target_robot)
        labels = log.read_field("label", slice(indices.start, indices.stop))
    text = [v[0] for _, v in column(cs, "/interaction/log", "TextLog:text")]
    assert len(text) == len(indices) and text[0].startswith(f"#{i} {rec.primitive} -> ")
    assert [("positive" in s.split("->")[1].split(";")[0]) for s in text] == list(labels == 1)
    return cs


def test_recording_of_a_sim_log_reads_back(sim_run, tmp_path):
    need_rerun()
    out = tmp_path / "log.rrd"
    assert main([str(sim_run), "--rerun", str(out)]) == 0
    cs = check_recording(out, sim_run, range(N))
    assert EXPECTED <= set(entity_rows(cs))
    # the learning curves: both evaluations at the last interaction they include, next to the baseline
    rows = metrics(sim_run)
    evals = [r for r in rows if r["kind"] == "eval"]
    base = next(r for r in rows if r["kind"] == "baseline")
    assert [e["interactions"] for e in evals] == [5, 10]
    ap50 = column(cs, "/metrics/heldout/AP50/model", "Scalars:scalars")
    assert [(t, v[0]) for t, v in ap50] == [(4, pytest.approx(evals[0]["AP50"])), (9, pytest.approx(evals[1]["AP50"]))]
    assert [v[0] for _, v in column(cs, "/metrics/heldout/AP50/depth_clustering", "Scalars:scalars")] == \
        [pytest.approx(base["AP50"])] * 2
    loss = [v[0] for _, v in column(cs, "/metrics/train/loss", "Scalars:scalars")]
    assert loss == pytest.approx([r["loss"] for r in rows if r["kind"] == "train"])
    assert out.stat().st_size < 2_000_000 * N

    # a range of a large log
    part = tmp_path / "part.rrd"
    assert main([str(sim_run), "--rerun", str(part), "--range", "3:7"]) == 0
    check_recording(part, sim_run, range(3, 7))
    assert main([str(sim_run), "--rerun", str(tmp_path / "end.rrd"), "--range", "-2:"]) == 0
    check_recording(tmp_path / "end.rrd", sim_run, range(8, 10))


def test_live_view_streams_the_same_entities_during_the_run(sim_run, tmp_path):
    need_rerun()
    live = sim_run / "rerun.rrd"
    assert live.is_file()
    cs = check_recording(live, sim_run, range(N))
    assert main([str(sim_run), "--rerun", str(tmp_path / "offline.rrd")]) == 0
    assert set(entity_rows(cs)) == set(entity_rows(chunks(tmp_path / "offline.rrd")))  # one conversion
    assert len(column(cs, "/metrics/heldout/AP50/model", "Scalars:scalars")) == 2
    # its cost, measured in the loop's thread, next to the interaction's time
    inter = [r for r in metrics(sim_run) if r["kind"] == "interaction"]
    assert all(0 < r["viz_seconds"] < r["seconds"] for r in inter)
    assert sum(r["viz_seconds"] for r in inter) < 0.25 * sum(r["seconds"] for r in inter)  # a loose bound; see benchmarks


def test_report_has_learning_plots_and_the_code_version(sim_run, tmp_path):
    report = tmp_path / "report.html"
    assert main([str(sim_run), "--html", str(report), "--max-rows", "2"]) == 0
    doc = report.read_text()
    alts = re.findall(r'<img class="plot" alt="([^"]+)"', doc)
    assert alts == ["Positive rate vs interaction index", "Mask area of positives",
                    "Held-out AP50, AP and overlap F per model version",
                    "Positive rate and object-hit rate per model version", "Training loss",
                    "Latest model on held-out scenes"]  # fmt: skip
    rows = metrics(sim_run)
    evals = [r for r in rows if r["kind"] == "eval"]
    for e in evals:  # the table next to the plots: one row per evaluated model version
        assert (f"<td>v{e['model_version']}</td><td>{e['interactions']}</td><td>{e['AP50']:.3f}</td>"
                f"<td>{e['AP']:.3f}</td><td>{e['overlap_F']:.3f}</td>") in doc
    assert "<td>depth clustering (baseline)</td>" in doc
    assert "Positive and object-hit rate per model version" in doc and "<td>v0</td><td>5</td>" in doc

    # the code version: the commit of this clone, recorded when the run started
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", sha), "the tests run inside a git clone"
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())  # fmt: skip
    with InteractionLog.open(sim_run / "interactions.zarr", "r") as log:
        version = log.code_version
    assert version == sha + ("+dirty" if dirty else "")
    assert f"<td>code version</td><td>{sha}{' (uncommitted changes)' if dirty else ''}</td>" in doc
    assert [r["code_version"] for r in rows if r["kind"] == "run_start"] == [version]

    # rendered: each learning plot and the preview is found, pixel for pixel, in the browser's screenshot
    png = chromium_screenshot(report, tmp_path / "shot.png", tmp_path, height=5000)
    imgs = dict(re.findall(r'<img class="plot" alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', doc))
    half = [cv2.resize(png[dy:, dx:], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
            for dy in (0, 1) for dx in (0, 1)]  # both pixel phases of the 2x downscale  # fmt: skip
    for alt in alts[2:]:
        plot = cv2.imdecode(np.frombuffer(base64.b64decode(imgs[alt]), np.uint8), cv2.IMREAD_COLOR)
        tpl = cv2.resize(plot, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        score = max(cv2.matchTemplate(h, tpl, cv2.TM_CCOEFF_NORMED).max() for h in half)
        assert score > 0.95, f"{alt!r} not found in the rendered page (best match {score:.2f})"


def test_summary_json_has_learning(sim_run, capsys):
    assert main([str(sim_run), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    ls = s["learning"]
    assert [e["model_version"] for e in ls["evaluations"]] == [1, 2]
    assert ls["baseline"]["name"] == "depth_clustering" and 0 <= ls["baseline"]["AP50"] <= 1
    assert [b["model_version"] for b in ls["by_model_version"]] == [0, 1]
    assert all(b["n"] == 5 and b["hit_known"] == 5 for b in ls["by_model_version"])
    assert len(ls["train"]) >= 2 and len(ls["sessions"]) == 1


def test_git_state_of_a_clone(tmp_path):
    from learner.loop.provenance import code_version, git_state

    assert git_state(tmp_path) == {"commit": "", "dirty": False} and code_version(tmp_path) == ""
    repo = tmp_path / "repo"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a"], cwd=repo, check=True)
    clone = tmp_path / "clone"
    subprocess.run([*git, "clone", "-q", str(repo), str(clone)], check=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert code_version(clone) == sha
    (clone / "new.txt").write_text("untracked files do not count\n")
    assert code_version(clone) == sha
    (clone / "a.py").write_text("x = 2\n")
    assert code_version(clone) == sha + "+dirty" and git_state(clone)["dirty"] is True


def test_without_rerun_the_cli_names_the_extra(tmp_path, monkeypatch, capsys):
    with InteractionLog.create(tmp_path / "interactions.zarr", 36, 48) as log:
        log.append(synthetic_record(0, 36, 48))
    monkeypatch.setitem(sys.modules, "rerun", None)  # import rerun -> ImportError
    out = tmp_path / "x.rrd"
    assert main([str(tmp_path), "--rerun", str(out)]) == 2
    err = capsys.readouterr().err
    assert "rerun-sdk" in err and "pip install -e '.[viz]'" in err and "scripts/setup.sh viz" in err
    assert not out.exists()


def test_range_parsing():
    assert parse_range(None, 5) == range(5) and parse_range("1:3", 5) == range(1, 3)
    assert parse_range("-2:", 5) == range(3, 5) and parse_range(":2", 5) == range(0, 2)
    assert parse_range("2:100", 5) == range(2, 5)
    for bad in ("3", "a:b", "4:2"):
        with pytest.raises(Exception, match="--range"):
            parse_range(bad, 5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rerun_without_a_file_serves_the_web_viewer(sim_run):
    """Serves until Ctrl-C, also when started with SIGINT ignored (a background job of a shell without job
    control, as a CI runner may start it: Python then never raises KeyboardInterrupt by itself)."""
    need_rerun()
    grpc, web = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.Popen([sys.executable, "-m", "data.inspect", str(sim_run), "--rerun", "--range", "0:3",
                             "--grpc-port", str(grpc), "--web-port", str(web)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "serving until Ctrl-C" not in "".join(lines):
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
        text = "".join(lines)
        assert "serving until Ctrl-C" in text, text
        assert f"http://127.0.0.1:{web}/?url=rerun+http://127.0.0.1:{grpc}/proxy" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=30) as r:
            assert r.status == 200 and "Rerun" in r.read().decode("utf-8", "replace")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_eval_preview_sheet(sim_run):
    """RUN/eval_preview.png: one row per held-out scene (RGB | ground truth | predictions), also when the
    model predicts nothing above the threshold."""
    from data import scene_io
    from learner.evaluate.preview import PREVIEW_SCENES, preview_image

    png = cv2.imread(str(sim_run / "eval_preview.png"))
    n = min(PREVIEW_SCENES, len(scene_io.list_scenes(sim_run / "eval_scenes")))
    assert png is not None and png.shape == (24 + n * (18 + 240), 3 * 320, 3)
    s = scene_io.read_scene(sim_run / "eval_scenes", scene_io.list_scenes(sim_run / "eval_scenes")[0])
    empty = preview_image([("000000", s.rgb, s.label, np.zeros((0, 240, 320), bool), np.zeros(0))], "t")
    some = preview_image([("000000", s.rgb, s.label, (s.label == 1)[None], np.array([0.9]))], "t")
    assert empty.shape == some.shape == (24 + 18 + 240, 960, 3)
    assert np.array_equal(empty[42:, :640], some[42:, :640]) and not np.array_equal(empty[42:, 640:], some[42:, 640:])


@pytest.mark.parametrize("overrides, needle", [
    (["loop.viz=bogus"], "loop.viz"),
    (["loop.viz=rerun", "loop.viz_path=view.txt"], "loop.viz_path"),
])  # fmt: skip
def test_bad_viz_settings_fail_at_start(tmp_path, overrides, needle):
    if "loop.viz=rerun" in overrides:
        need_rerun()
    r = run_loop(tmp_path / "run", *overrides, timeout=120)
    assert r.returncode == 2 and needle in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "run" / "interactions.zarr").exists()


def test_stop_serving_gives_up_on_a_server_that_does_not_stop():
    """Rerun's servers can wait on a viewer connection that stays open (rerun-io/rerun#1843): the serve mode's
    shutdown is bounded, and says it did not finish (data.inspect then exits without it)."""
    need_rerun()
    import threading

    from data.rerun_view import stop_serving

    never = threading.Event()

    class StuckView:
        def close(self):
            never.wait()  # a daemon thread blocked for good: rerun's own shutdown is never reached

    t0 = time.monotonic()
    assert stop_serving(StuckView(), timeout_s=0.3) is False
    assert time.monotonic() - t0 < 3.0
