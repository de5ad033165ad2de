"""The actor-learner loop on real Ray (local, num_cpus=2): shards that read as one log, a collector killed
with SIGKILL, the whole run killed and resumed, and the bad inputs of `loop.workers`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data.log import InteractionLog
from data.shards import RunLog, open_shard_writer, shard_path
from tests.fs_helpers import fresh_copy, tree_hash
from tests.test_loop import ROOT, TINY

FLEET = [*TINY, "loop.workers=2", "loop.eval_scenes=0"]


def run_loop(run_dir: Path, *overrides: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "run_loop.py"), "robot=sim", f"hydra.run.dir={run_dir}", *FLEET, *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def shard_keys(run_dir: Path) -> list[tuple[int, int]]:
    """(worker id, local index) of every record, in global-index order."""
    with RunLog.open(run_dir) as log:
        out = []
        for i in range(len(log)):
            k, local = log.locate(i)
            out.append((log.shards[k].worker_id, local))
        return out


@pytest.fixture(scope="module")
def fleet_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Two collectors and the learner: 10 interactions, retrains at 4 and 8 records."""
    run = tmp_path_factory.mktemp("fleet") / "run"
    r = run_loop(run, "loop.interactions=10", "loop.update_interval=4", "loop.train_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    return run, r


def test_two_collectors_and_a_learner_give_two_shards_that_read_as_one_log(fleet_run):
    run, r = fleet_run
    assert not (run / "interactions.zarr").exists()
    assert shard_path(run, 0).is_dir() and shard_path(run, 1).is_dir()
    with RunLog.open(run) as log:
        assert len(log) == 10
        assert sorted(s.worker_id for s in log.shards) == [0, 1] and [s.count for s in log.shards] == [5, 5]
        assert {s.robot_kind for s in log.shards} == {"sim"}
    keys = shard_keys(run)
    assert len(set(keys)) == 10 and sorted(keys) == [(w, i) for w in (0, 1) for i in range(5)]  # no duplicate/missing
    rows = metrics(run)
    inter = [m for m in rows if m["kind"] == "interaction"]
    assert sorted((m["worker"], m["index"]) for m in inter) == sorted(keys)
    # the learner retrained in its own process at the retrain points 4 and 8 (one retrain for both when the
    # collectors were faster), the last point always met
    trains = sorted({m["model_version"] for m in rows if m["kind"] == "train"})
    end = [m for m in rows if m["kind"] == "run_end"][-1]
    assert end["model_version"] in (1, 2) and trains == list(range(end["model_version"]))
    assert end["interactions_total"] == 10
    assert json.loads((run / "learner_state.json").read_text())["retrain_checked"] >= 8
    assert "Summary (actor-learner)" in r.stdout and "worker 1" in r.stdout
    assert (run / "model" / "segmenter.pt").exists() and (run / "checkpoints" / "last.pt").exists()
    # the trainer's CLI reads the shards of a run directory as one log
    t = subprocess.run([sys.executable, "-m", "learner.train", "--log", str(run), "--out", str(run.parent / "cli"),
                        "--steps", "1", "--batch-size", "2", "--threads", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert t.returncode == 0 and "positives" in t.stdout, t.stderr[-2000:]
    n_pos, n_neg = (int(x) for x in re.search(r"(\d+) positives, (\d+) negatives", t.stdout).groups())
    labels = [m["label"] for m in inter]
    assert 0 < n_pos + n_neg <= sum(lab in ("positive", "negative") for lab in labels)  # tiny masks are dropped


def test_a_collector_killed_with_sigkill_is_restarted_and_loses_nothing_committed(tmp_path):
    ray = pytest.importorskip("ray")
    from data.frame_diff import FrameDiffConfig
    from learner.fleet.actors import CollectorActor, ModelBoard
    from learner.fleet.workers import CollectorSpec
    from learner.loop.agent import AgentConfig

    run = tmp_path / "run"
    robot = {"kind": "sim", "domain": "narrow", "interactions_per_scene": 8, "seed": 0, "width": 320, "height": 240}
    spec = CollectorSpec(str(run), 0, 12, robot, AgentConfig(), FrameDiffConfig())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        board = ModelBoard.remote()
        actor = CollectorActor.remote(spec, board)
        rows = [ray.get(actor.interact.remote()) for _ in range(3)]
        assert [r["shard_records"] for r in rows] == [1, 2, 3]
        with InteractionLog.open(shard_path(run, 0), "r") as log:
            committed = [log[i].rgb_before for i in range(len(log))]
        pid = ray.get(actor.pid.remote())
        ref = actor.interact.remote()
        time.sleep(0.05)  # mid-interaction (rendering, acting or appending), as far as timing allows
        os.kill(pid, signal.SIGKILL)
        try:
            ray.get(ref)  # the interaction in flight may have committed before the kill, or not
        except ray.exceptions.RayError:
            pass
        for _ in range(60):  # Ray restarts it: __init__ reopens (and repairs) the shard
            try:
                row = ray.get(actor.interact.remote())
                break
            except ray.exceptions.RayError:
                time.sleep(0.5)
        assert ray.get(actor.pid.remote()) != pid
        assert row["shard_records"] >= 4
        ray.get(actor.close.remote())
    finally:
        ray.shutdown()
    with InteractionLog.open(shard_path(run, 0), "r") as log:
        assert len(log) == row["shard_records"]
        for i, rgb in enumerate(committed):  # every record committed before the kill is intact
            np.testing.assert_array_equal(log[i].rgb_before, rgb)
        assert log.verify().damage == ()


def test_workers_2_resumes_after_the_whole_run_is_killed(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "run_loop.py"), "robot=sim", f"hydra.run.dir={run}", *FLEET,
           "loop.interactions=14", "loop.update_interval=4", "loop.train_steps=2"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        seen = 0
        while time.time() < deadline and p.poll() is None:
            time.sleep(1.0)
            try:
                with RunLog.open(run) as log:
                    seen = len(log)
            except (FileNotFoundError, ValueError):
                continue
            if seen >= 5:
                break
        assert p.poll() is None and seen >= 5, "the run ended or stalled before it could be killed"
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the driver, the Ray processes and the actors
        p.wait()
    time.sleep(2.0)
    with RunLog.open(run) as log:
        before = {(log.shards[log.locate(i)[0]].worker_id, log.locate(i)[1]): log[i].rgb_before for i in range(len(log))}
    r = run_loop(run, "loop.interactions=14", "loop.update_interval=4", "loop.train_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    with RunLog.open(run) as log:
        assert len(log) == 14 and [s.count for s in log.shards] == [7, 7]
        for i in range(len(log)):
            k, local = log.locate(i)
            key = (log.shards[k].worker_id, local)
            if key in before:  # nothing committed before the kill was lost or changed
                np.testing.assert_array_equal(log[i].rgb_before, before[key])
    assert len(set(shard_keys(run))) == 14
    ends = [m for m in metrics(run) if m["kind"] == "run_end"]
    assert 1 <= ends[-1]["model_version"] <= 3  # retrain points 4, 8, 12 (several at once when the learner lags)
    assert json.loads((run / "learner_state.json").read_text())["retrain_checked"] >= 12  # the last one met


def test_bad_worker_counts_and_layouts_fail_clearly_touching_nothing(tmp_path):
    r = run_loop(tmp_path / "neg", "loop.workers=-1", timeout=120)
    assert r.returncode == 2 and "loop.workers" in r.stderr and not (tmp_path / "neg" / "shards").exists()

    # Ray missing: a `ray` package that cannot be imported shadows the installed one
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray (test stand-in)')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    r = run_loop(tmp_path / "noray_run", timeout=120, env=env)
    assert r.returncode == 2 and "`ray` extra" in r.stderr
    assert not any(p.name in ("shards", ".hydra") for p in (tmp_path / "noray_run").glob("*"))

    # shards that disagree on image size: refused, naming the shards; nothing touched
    run = tmp_path / "disagree"
    open_shard_writer(run, 0, "sim", 240, 320).close()
    _raw_shard(run, 1, 120, 160)
    before = tree_hash(run / "shards")
    r = run_loop(run, timeout=120)
    assert r.returncode == 2 and "error:" in r.stderr and "120" in r.stderr, r.stderr[-2000:]
    assert tree_hash(run / "shards") == before and not (run / ".hydra").exists()

    # a single-process run directory is not resumed as a fleet
    single = tmp_path / "single"
    InteractionLog.create(single / "interactions.zarr", 240, 320).close()
    before = tree_hash(single / "interactions.zarr")
    r = run_loop(single, timeout=120)
    assert r.returncode == 2 and "single-process" in r.stderr and tree_hash(single / "interactions.zarr") == before
    assert not (single / "shards").exists()
    # nor a fleet's run directory as a single process
    sharded = tmp_path / "sharded"
    open_shard_writer(sharded, 0, "sim", 240, 320).close()
    before = tree_hash(sharded / "shards")
    r = run_loop(sharded, "loop.workers=0", timeout=120)
    assert r.returncode == 2 and "actor-learner run" in r.stderr and tree_hash(sharded / "shards") == before
    assert not (sharded / "interactions.zarr").exists()


def _raw_shard(run: Path, worker_id: int, height: int, width: int) -> None:
    """A shard of another image size, written past the writer's own check (as a copied-in store would be)."""
    InteractionLog.create(shard_path(run, worker_id), height, width,
                          attrs={"worker_id": worker_id, "robot_kind": "sim"}).close()


def test_a_damaged_shard_or_a_contradicting_model_stops_the_resume_touching_nothing(fleet_run, tmp_path):
    run = fresh_copy(fleet_run[0], tmp_path)
    before = tree_hash(run / "shards")
    r = run_loop(run, "loop.interactions=12", "loop.update_interval=4", "loop.train_steps=2", "learner.model.stem_width=16",
                 timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "learner.model.stem_width" in lines[0], r.stderr[-2000:]
    assert tree_hash(run / "shards") == before

    # the last, partial chunk of worker 1's record table: the chunk its writer reads back on the next append
    chunk = next(p for p in (shard_path(run, 1) / "record_i64" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    before = tree_hash(run / "shards")
    r = run_loop(run, "loop.interactions=12", "loop.update_interval=4", "loop.train_steps=2", timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "worker_001.zarr" in lines[0] and "record_i64" in lines[0], \
        r.stderr[-2000:]
    assert tree_hash(run / "shards") == before


def test_a_collector_whose_robot_raises_is_logged_restarted_and_the_learner_keeps_going(tmp_path):
    """The driver on real Ray actors whose robot fails: restarted after each failure, stopped after MAX_FAILURES
    in a row, while another collector and the learner go on."""
    ray = pytest.importorskip("ray")
    from omegaconf import OmegaConf

    from learner.fleet.driver import MAX_FAILURES, FleetRun
    from learner.fleet.workers import CollectorSpec

    @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
    class FlakyCollector:
        """Fails on its first interaction after every (re)start when `fails` is set; counts in a file."""

        def __init__(self, counter: str, fails: bool, quota: int):
            self.counter, self.fails, self.quota = Path(counter), fails, quota
            self.first = True

        def records(self) -> int:
            return int(self.counter.read_text()) if self.counter.exists() else 0

        def interact(self):
            if self.fails:
                raise RuntimeError("gripper fault (test)")
            n = self.records()
            if n >= self.quota:
                return None
            self.counter.write_text(str(n + 1))
            return {"kind": "interaction", "index": n, "seconds": 0.01, "unix": time.time(), "model_version": 0,
                    "shard_records": n + 1}

        def close(self) -> None:
            pass

    @ray.remote(num_cpus=0)
    class Learner:
        def __init__(self):
            self.ticks = 0

        def tick(self):
            self.ticks += 1
            time.sleep(0.05)
            return {"model_version": self.ticks, "records": 0, "changed": False}

        def finish(self):
            return {"records": 6, "model_version": self.ticks, "train_steps": 0, "train_seconds": 0.0,
                    "last_eval": {}, "baseline": {}, "init": None}

    cfg = OmegaConf.create({"loop": {"interactions": 6, "time_budget": 0, "progress": False}})
    specs = [CollectorSpec(str(tmp_path), w, 3, {}, None, None) for w in (0, 1)]
    fleet = FleetRun(cfg, tmp_path, specs, None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        collectors = {0: FlakyCollector.remote(str(tmp_path / "c0"), False, 3),
                      1: FlakyCollector.remote(str(tmp_path / "c1"), True, 3)}
        learner = Learner.remote()
        summary = fleet._drive(ray, learner, collectors, 0, time.time())
        ticks = ray.get(learner.finish.remote())["model_version"]
    finally:
        ray.shutdown()
    rows = metrics(tmp_path)
    errors = [m for m in rows if m["kind"] == "worker_error"]
    assert [m["worker"] for m in errors] == [1] * MAX_FAILURES and "gripper fault" in errors[0]["error"]
    assert summary["workers"][1]["restarts"] == MAX_FAILURES - 1 and summary["workers"][0]["records"] == 3
    assert summary["interactions_this_run"] == 3 and ticks >= 1  # the healthy collector finished; the learner ticked
