"""Log shards (issue #19 part 1): each collector appends to its own Zarr v3 store (`data.shards
.open_shard_writer`), and `RunLog` reads a run's shards as one log: committed records only, dense global
indices that a live reader never renumbers, clear errors (nothing touched) for shards that disagree;
`data.inspect` (summary, --html, --verify) and the COCO export take a sharded run directory.

Every store here is a real Zarr v3 log written by `data.log.InteractionLog`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

import data.log
from data.bench_log import synthetic_record
from data.log import ChunkDamageError, InteractionLog, LogFormatError
from data.schema import InteractionRecord, Label
from data.shards import RunLog, ShardChunkDamageError, ShardInfo, open_shard_writer, shard_path
from tests.fs_helpers import fresh_copy, tree_hash

REPO = Path(__file__).resolve().parents[1]
H, W = 24, 32
T0 = 1.7e9
FIELDS = ("label", "label_reason", "robot_kind", "t_start", "rgb_before", "depth_before", "mask",
          "hypotheses", "hypothesis_scores", "pixel", "grasp_success")  # fmt: skip


def rec(seed: int, t: float, kind: str = "sim") -> InteractionRecord:
    """A synthetic record starting at T0 + t seconds; positive (non-empty mask) for even seeds."""
    r = synthetic_record(seed, H, W, n_hypotheses=seed % 4)
    r.t_start, r.t_end, r.robot_kind = T0 + t, T0 + t + 1.0, kind
    r.label, r.label_reason = (
        (Label.POSITIVE, "moved") if seed % 2 == 0 else (Label.NEGATIVE, "nothing_moved")
    )
    if r.label == Label.POSITIVE and not r.mask.any():
        r.mask[2:6, 2:6] = True
    return r


def cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data.inspect", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip


# worker 0 (sim) starts at t = 0, 2, 4, ...; worker 1 (franka) at t = 1, 3, 5, ...
def seed_of(worker: int, k: int) -> int:
    return 100 * worker + k


def t_of(worker: int, k: int) -> float:
    return 2.0 * k + worker


KINDS = {0: "sim", 1: "franka"}


def append(log: InteractionLog, worker: int, k: int) -> None:
    assert log.append(rec(seed_of(worker, k), t_of(worker, k), KINDS[worker])) == k


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory) -> Path:
    """A finished run: worker 0 wrote 6 records, worker 1 wrote 5, appended alternately."""
    run = tmp_path_factory.mktemp("sharded") / "run"
    w = {k: open_shard_writer(run, k, KINDS[k], H, W, chunk_records=4) for k in (0, 1)}
    for k in range(6):
        append(w[0], 0, k)
        if k < 5:
            append(w[1], 1, k)
    for log in w.values():
        log.close()
    return run


def expected_order(counts: dict[int, int]) -> list[tuple[int, int]]:
    """(worker, local) of every record by (t_start, worker, local)."""
    return sorted(
        ((wk, k) for wk, n in counts.items() for k in range(n)), key=lambda x: (t_of(*x), x[0], x[1])
    )


# ----------------------------------------------------------------------------- layout, attrs


def test_shard_stores_carry_worker_and_robot_kind(sharded_run):
    assert shard_path(sharded_run, 1) == sharded_run / "shards" / "worker_001.zarr"
    for wk in (0, 1):
        with InteractionLog.open(shard_path(sharded_run, wk)) as log:
            assert log.attrs["worker_id"] == wk and log.attrs["robot_kind"] == KINDS[wk]
            assert (log.height, log.width) == (H, W)
    with RunLog.open(sharded_run) as run:
        assert run.shards == [ShardInfo(shard_path(sharded_run, 0), 0, "sim", 6),
                              ShardInfo(shard_path(sharded_run, 1), 1, "franka", 5)]  # fmt: skip
        assert (run.height, run.width, run.schema_version, len(run)) == (H, W, data.log.SCHEMA_VERSION, 11)
        assert (
            run.sharded and run.run_dir == sharded_run and run.metrics_path == sharded_run / "metrics.jsonl"
        )
    with pytest.raises(ValueError, match="worker_id must be an int >= 0"):
        shard_path(sharded_run, -1)


def test_create_attrs_are_stored_and_checked(tmp_path):
    with InteractionLog.create(tmp_path / "a.zarr", H, W, attrs={"worker_id": 3, "note": [1, "x"]}) as log:
        log.append(rec(0, 0.0))
        assert log.attrs["note"] == [1, "x"]
    with InteractionLog.open(tmp_path / "a.zarr") as log:  # kept across commits
        assert log.attrs["worker_id"] == 3 and log.attrs["committed_count"] == 1
    with pytest.raises(ValueError, match="written by the log itself"):
        InteractionLog.create(tmp_path / "b.zarr", H, W, attrs={"height": 5})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        InteractionLog.create(tmp_path / "c.zarr", H, W, attrs={"x": object()})
    assert not (tmp_path / "b.zarr").exists() and not (tmp_path / "c.zarr").exists()


def test_shard_writer_refuses_another_worker_kind_or_size_writing_nothing(sharded_run, tmp_path):
    run = fresh_copy(sharded_run, tmp_path)
    before = tree_hash(run)
    with pytest.raises(ValueError, match=r"robot_kind 'sim', not 'franka'"):
        open_shard_writer(run, 0, "franka", H, W)
    with pytest.raises(ValueError, match=rf"{H}x{W} images, not 48x64"):
        open_shard_writer(run, 0, "sim", 48, 64)
    with pytest.raises(ValueError, match="all logs of a run must agree"):  # a new worker of another size
        open_shard_writer(run, 2, "sim", 48, 64)
    with pytest.raises(ValueError, match="robot_kind must be a non-empty str"):
        open_shard_writer(run, 2, "", H, W)
    assert tree_hash(run) == before
    with open_shard_writer(run, 1, "franka", H, W) as log:  # the right identity reopens and appends
        append(log, 1, 5)


# ----------------------------------------------------------------------------- global indices


def test_alternating_shards_read_as_one_log_with_stable_indices(tmp_path):
    run = tmp_path / "run"
    w = {k: open_shard_writer(run, k, KINDS[k], H, W, chunk_records=4) for k in (0, 1)}
    n = {0: 0, 1: 0}

    def more(worker: int, k: int) -> None:
        for _ in range(k):
            append(w[worker], worker, n[worker])
            n[worker] += 1

    more(0, 3)
    more(1, 1)
    live = RunLog.open(run)  # opened early: numbers the 4 records by start time
    assert len(live) == 4
    first = [live.locate(i) for i in range(4)]
    assert first == [(0, 0), (1, 0), (0, 1), (0, 2)]  # t = 0, 1, 2, 4
    assert live.refresh() == 0 and len(live) == 4

    more(1, 3)  # t = 3, 5, 7
    more(0, 1)  # t = 6
    assert len(live) == 4  # len() is the snapshot of the last refresh
    assert live.refresh() == 4 and len(live) == 8
    assert [live.locate(i) for i in range(4)] == first  # old numbers unchanged
    assert [live.locate(i) for i in range(4, 8)] == [(1, 1), (1, 2), (0, 3), (1, 3)]  # new: by start time

    for _ in range(3):  # alternate single appends with refreshes
        more(0, 1)
        more(1, 1)
        live.refresh()
    N = sum(n.values())
    assert len(live) == N == 14
    pairs = [live.locate(i) for i in range(N)]
    assert sorted(pairs) == sorted((s, k) for s in (0, 1) for k in range(n[s]))  # no duplicate or missing
    assert [live.global_index(*p) for p in pairs] == list(range(N))
    assert [s.count for s in live.shards] == [n[0], n[1]]

    fresh = RunLog.open(run)  # a fresh reader numbers by start time
    assert [fresh.locate(i) for i in range(N)] == expected_order(n)
    assert fresh.read_field("t_start").tolist() == sorted(fresh.read_field("t_start").tolist())

    # reads by global index equal the shard's own reads, whatever the order / repeats / negatives
    idx = [5, 0, 13, 5, -1, 2, 7]
    got = live.read_fields(FIELDS, idx)
    for j, i in enumerate(idx):
        s, local = live.locate(i)
        with InteractionLog.open(shard_path(run, s)) as log:
            one = log.read_fields(FIELDS, local)
        for name in FIELDS:
            assert np.array_equal(got[name][j], one[name]), name
            assert np.asarray(got[name][j]).dtype == np.asarray(one[name]).dtype or name in (
                "label_reason",
                "robot_kind",
            )
        assert live[i].t_start == one["t_start"] and live[i].robot_kind == KINDS[s]
    assert got["robot_kind"].tolist() == [KINDS[live.locate(i)[0]] for i in idx]
    scalar = live.read_fields(("label_reason", "t_start"), 3)
    assert isinstance(scalar["label_reason"], str) and scalar["t_start"] == live.read_field("t_start", [3])[0]
    assert len(live.read_field("hypotheses", [])) == 0 and live.read_field("mask", []).shape == (0, H, W)
    assert [r.t_start for r in live.records(0, 3)] == live.read_field("t_start", slice(0, 3)).tolist()
    with pytest.raises(IndexError, match="call refresh"):
        live.read_field("label", [N])
    with pytest.raises(IndexError):
        live.global_index(0, n[0])
    for log in w.values():
        log.close()
    live.close()
    fresh.close()


def test_shard_appearing_later_is_numbered_after_the_others(tmp_path):
    run = tmp_path / "run"
    with open_shard_writer(run, 0, "sim", H, W) as a:
        append(a, 0, 0)
        append(a, 0, 1)
    live = RunLog.open(run)
    assert len(live) == 2
    with open_shard_writer(run, 1, "franka", H, W) as b:  # t = 1: earlier than worker 0's second record
        append(b, 1, 0)
    assert live.refresh() == 1
    assert [live.locate(i) for i in range(3)] == [(0, 0), (0, 1), (1, 0)]
    assert [s.worker_id for s in live.shards] == [0, 1]
    with RunLog.open(run / "shards") as fresh:  # the shards/ directory works too, numbered by start time
        assert [fresh.locate(i) for i in range(3)] == [(0, 0), (1, 0), (0, 1)]
    live.close()


def test_single_store_runs_are_numbered_by_their_own_indices(tmp_path):
    run = tmp_path / "run"
    ts = [5.0, 1.0, 3.0, 2.0]  # not in time order: a single store keeps its own indices
    with InteractionLog.create(run / "interactions.zarr", H, W) as log:
        for k, t in enumerate(ts):
            log.append(rec(k, t, "franka"))
    for path in (run, run / "interactions.zarr"):
        with RunLog.open(path) as r:
            assert len(r) == 4 and [r.locate(i) for i in range(4)] == [(0, i) for i in range(4)]
            assert r.shards == [ShardInfo(run / "interactions.zarr", 0, "franka", 4)] and not r.sharded
            assert (r.read_field("t_start") - T0).tolist() == ts
            assert r.run_dir == run


# ----------------------------------------------------------------------------- bad input


def make_other(run: Path, worker: int, height: int = H, width: int = W) -> None:
    """A shard written directly (bypassing the writer's checks), like a copy from another run."""
    with InteractionLog.create(shard_path(run, worker), height, width,
                               attrs={"worker_id": worker, "robot_kind": "sim"}) as log:  # fmt: skip
        log.append(synthetic_record(7, height, width))


def test_shards_disagreeing_on_image_size_are_refused_untouched(sharded_run, tmp_path):
    run = fresh_copy(sharded_run, tmp_path)
    make_other(run, 2, 48, 64)
    before = tree_hash(run)
    with pytest.raises(LogFormatError) as e:
        RunLog.open(run)
    msg = str(e.value)
    assert "disagree on height" in msg and "worker_000.zarr has 24" in msg and "worker_002.zarr has 48" in msg
    assert "24x32 vs 48x64" in msg
    res = cli(run)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert (
        res.returncode == 2
        and len(lines) == 1
        and "worker_002.zarr" in lines[0]
        and "Traceback" not in res.stderr
    )
    from data.coco_export import export_positives

    with pytest.raises(LogFormatError, match="disagree"):
        export_positives(run, tmp_path / "coco")
    assert tree_hash(run) == before


def test_shards_disagreeing_on_schema_version_are_refused_untouched(sharded_run, tmp_path, monkeypatch):
    run = fresh_copy(sharded_run, tmp_path)
    monkeypatch.setattr(data.log, "SCHEMA_VERSION", 2)  # this code reads versions 1 and 2; shard 2 is v2
    make_other(run, 2)
    before = tree_hash(run)
    with pytest.raises(
        LogFormatError, match=r"disagree on schema_version: .*worker_000.zarr has 1, .*worker_002.zarr has 2"
    ):
        RunLog.open(run)
    assert tree_hash(run) == before


@pytest.mark.parametrize("junk", ["empty_dir", "file", "foreign_group"])
def test_a_shard_that_is_not_a_log_is_named(sharded_run, tmp_path, junk):
    run = fresh_copy(sharded_run, tmp_path)
    bad = run / "shards" / "worker_002.zarr"
    if junk == "empty_dir":
        bad.mkdir()
    elif junk == "file":
        bad.write_text("not a store")
    else:
        zarr.open_group(zarr.storage.LocalStore(bad), mode="w", zarr_format=3).attrs["x"] = 1
    before = tree_hash(run)
    with pytest.raises(LogFormatError, match=r"shard .*worker_002.zarr is not a usable interaction log"):
        RunLog.open(run)
    assert tree_hash(run) == before


def test_nothing_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        RunLog.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no interaction log found"):
        RunLog.open(tmp_path / "empty")
    (tmp_path / "run" / "shards").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no interaction log yet"):
        RunLog.open(tmp_path / "run")
    res = cli(tmp_path / "run")
    assert res.returncode == 2 and "no interaction log yet" in res.stderr and "Traceback" not in res.stderr


def test_two_shards_claiming_one_worker_id(sharded_run, tmp_path):
    run = fresh_copy(sharded_run, tmp_path)
    with InteractionLog.create(run / "shards" / "extra.zarr", H, W, attrs={"worker_id": 1}) as log:
        log.append(rec(1, 0.5))
    with pytest.raises(LogFormatError, match="both have worker_id 1"):
        RunLog.open(run)


# ----------------------------------------------------------------------------- crash: torn tail


def test_torn_tail_in_one_shard_is_repaired_by_its_writer_and_hidden_from_readers(sharded_run, tmp_path):
    run = fresh_copy(sharded_run, tmp_path)
    code = textwrap.dedent(f"""
        import time
        from data.shards import open_shard_writer
        from tests.test_shards import rec
        log = open_shard_writer({str(run)!r}, 1, "franka", {H}, {W}, chunk_records=4)
        def stall(*args):  # every array of the next record is written; die before the commit marker
            print("TORN", flush=True)
            time.sleep(60)
        log._write_commit = stall
        log.append(rec(999, 100.0, "franka"))
    """)  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "TORN", proc.stderr.read() if proc.poll() is not None else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    shard = shard_path(run, 1)
    g = zarr.open_group(zarr.storage.LocalStore(shard, read_only=True), mode="r")
    assert g.attrs["committed_count"] == 5 and g["rgb"].shape[0] > 5  # the torn record is on disk

    before = tree_hash(run)
    with RunLog.open(run) as reader:  # committed records only; nothing written
        assert len(reader) == 11 and [s.count for s in reader.shards] == [6, 5]
        assert (reader.read_field("t_start") - T0).max() < 100
    assert tree_hash(run) == before

    with open_shard_writer(run, 1, "franka", H, W) as log:  # reopening repairs the torn tail
        g = zarr.open_group(zarr.storage.LocalStore(shard, read_only=True), mode="r")
        assert g["rgb"].shape[0] == 5 and g["hypotheses"].shape[0] == g.attrs["committed_hypotheses"]
        append(log, 1, 5)
    with RunLog.open(run) as reader:
        assert len(reader) == 12 and [s.count for s in reader.shards] == [6, 6]
        assert reader.read_field("t_start", -1) == T0 + t_of(1, 5)


# ----------------------------------------------------------------------------- damaged chunks


def truncate_chunk(shard: Path, array: str, k: int) -> None:
    base = shard / array / "c" / str(k)
    files = [p for p in [base, *base.rglob("*")] if p.is_file()]
    assert len(files) == 1, files
    files[0].write_bytes(files[0].read_bytes()[: files[0].stat().st_size // 2])


# (array, chunk index, the shard-1 records it takes down)
DAMAGE = [("rgb", 2, [2]), ("record_f64", 1, [4])]  # 4-record table chunks: worker 1's 5th record alone


@pytest.mark.parametrize("array, k, local", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_chunk_in_one_shard_is_named_with_global_records(sharded_run, tmp_path, array, k, local):
    run = fresh_copy(sharded_run, tmp_path)
    with RunLog.open(run) as r:
        glob = [r.global_index(1, x) for x in local]
    truncate_chunk(shard_path(run, 1), array, k)
    before = tree_hash(run)

    with RunLog.open(run) as r:
        assert len(r) == 11
        if array == "rgb":  # (a damaged t_start keeps its shard's order instead: it may move)
            assert [r.global_index(1, x) for x in local] == glob
        glob = [r.global_index(1, x) for x in local]
        field = "rgb_before" if array == "rgb" else "t_start"
        with pytest.raises(ShardChunkDamageError) as e:
            r.read_field(field, [0, glob[0], 1])
        assert isinstance(e.value, ChunkDamageError) and e.value.records == {array: tuple(glob)}
        assert "worker_001.zarr (shard 1, worker 1)" in str(e.value) and f"shard record {local[0]}" in str(
            e.value
        )
        ok = [i for i in range(11) if i not in glob]
        assert len(r.read_field(field, ok)) == 10  # every other record stays readable
        v = r.verify()
        assert v.damaged_records == tuple(glob) and v.records == 11
        assert [len(s.damage) for s in v.shards] == [0, 1] and v.shards[1].result.damaged_records == tuple(
            local
        )

    res = cli(run, "--verify")
    assert res.returncode == 1, res.stdout + res.stderr
    bad = [ln for ln in res.stdout.splitlines() if ln.startswith("damaged chunk")]
    assert (
        len(bad) == 1
        and "shard worker_001.zarr (worker 1, franka)" in bad[0]
        and f"array {array!r}" in bad[0]
    )
    assert f"record {glob[0]} [shard record {local[0]}]" in bad[0]
    last = res.stdout.splitlines()[-1]
    assert last.startswith("verify: DAMAGED") and "in shard worker_001.zarr" in last
    assert f"records affected: {glob[0]} (1 of 11)" in last
    doc = json.loads(cli(run, "--verify", "--json").stdout)
    assert doc["ok"] is False and doc["damaged_records"] == glob
    assert (
        doc["damaged"][0]["shard"].endswith("worker_001.zarr") and doc["damaged"][0]["shard_records"] == local
    )
    assert tree_hash(run) == before


# ----------------------------------------------------------------------------- inspect, COCO


def test_inspect_summary_html_and_verify_of_a_sharded_run(sharded_run, tmp_path):
    before = tree_hash(sharded_run)
    res = cli(sharded_run)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "11 committed" in out and "Shards (2" in out
    rows = [ln.split() for ln in out.splitlines() if ln.strip().startswith("worker_00")]
    assert rows == [["worker_000.zarr", "0", "sim", "6"], ["worker_001.zarr", "1", "franka", "5"]]
    s = json.loads(cli(sharded_run / "shards", "--json").stdout)
    assert s["records"] == 11 and [(x["worker_id"], x["robot_kind"], x["records"]) for x in s["shards"]] == [
        (0, "sim", 6), (1, "franka", 5)]  # fmt: skip
    assert s["robot_kinds"] == {"franka": 5, "sim": 6} and s["labels"]["n"] == 11
    assert s["time"]["t_start_min"] == T0 and s["time"]["t_start_max"] == T0 + t_of(0, 5)

    html = tmp_path / "report.html"
    res = cli(sharded_run, "--html", html, "--rows", "0,1,-1")
    assert res.returncode == 0, res.stderr
    doc = html.read_text()
    assert "Shards (2" in doc and "worker_001.zarr" in doc and "#1 [worker 1 record 0]" in doc

    res = cli(sharded_run, "--verify")
    assert res.returncode == 0 and res.stdout.splitlines()[-1].startswith("verify: ok: every chunk of the 11")
    assert "shard worker_000.zarr (worker 0, sim): 6 committed records, ok" in res.stdout

    png = tmp_path / "one.png"
    res = cli(sharded_run, "--show", "-1", "--out", png)
    assert res.returncode == 0 and png.is_file() and "[worker 0 record 5]" in res.stderr
    assert tree_hash(sharded_run) == before


def test_coco_export_of_a_sharded_run(sharded_run, tmp_path):
    from pycocotools.coco import COCO

    from data.coco_export import export_positives

    before = tree_hash(sharded_run)
    summary = export_positives(sharded_run, tmp_path / "coco")
    with RunLog.open(sharded_run) as r:
        labels = r.read_field("label")
        pos = np.flatnonzero(labels == int(Label.POSITIVE)).tolist()
        where = {i: r.locate(i) for i in pos}
    assert summary["records"] == 11 and summary["annotations"] == len(pos) == 6
    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    assert sorted(coco.getImgIds()) == pos
    for i in pos:
        img = coco.imgs[i]
        assert (img["worker_id"], img["shard_record"]) == where[i]
        assert (tmp_path / "coco" / img["file_name"]).is_file()
    info = json.loads((tmp_path / "coco" / "annotations.json").read_text())["info"]
    assert [x["records"] for x in info["shards"]] == [6, 5]
    assert tree_hash(sharded_run) == before


def test_single_store_inspect_and_coco_unchanged(tmp_path):
    run = tmp_path / "run"
    with InteractionLog.create(run / "interactions.zarr", H, W) as log:
        for k in range(4):
            log.append(rec(k, 10.0 - k))  # t_start decreasing: ids stay the log's own indices
    s = json.loads(cli(run, "--json").stdout)
    assert s["records"] == 4 and "shards" not in s and s["path"] == str(run / "interactions.zarr")
    from data.coco_export import export_positives

    export_positives(run / "interactions.zarr", tmp_path / "coco")
    doc = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert [im["id"] for im in doc["images"]] == [0, 2] and "worker_id" not in doc["images"][0]
    assert "shards" not in doc["info"]
