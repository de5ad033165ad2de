"""Damaged chunks (issue #19): a chunk file of a real log truncated on disk is named by `data.inspect
--verify` (array, records; exit 1), every inspect mode ends in one error line instead of a traceback,
training skips the unreadable records and goes on, and nothing reads-and-rewrites the damaged data.

Every log here is written by `data.log.InteractionLog` itself and damaged by truncating one of its chunk
files (zarr v3 keeps array A's chunk k at A/c/k/0/...), exactly what a full disk or a torn copy leaves.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.bench_log import synthetic_record
from data.log import ChunkDamageError, InteractionLog, LogFormatError
from data.schema import Label
from learner.model.network import SegmenterConfig
from learner.train.data import LogSource
from learner.train.trainer import TrainConfig, Trainer
from tests.fs_helpers import fresh_copy, tree_hash

REPO = Path(__file__).resolve().parents[1]
H, W = 48, 64  # multiples of 16: the network can train on them
N = 10
CHUNK_RECORDS = 4  # table chunks: records 0-3, 4-7, 8-9 (the last one partial)
TINY = SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16)


def record(i: int):
    """Record i: positive (a real moved-object mask) for even i, negative for odd i; 0..3 hypotheses."""
    r = synthetic_record(i, H, W, n_hypotheses=i % 4)
    r.label, r.label_reason = (Label.POSITIVE, "moved") if i % 2 == 0 else (Label.NEGATIVE, "nothing_moved")
    if r.label == Label.NEGATIVE:
        r.mask = np.zeros((H, W), bool)
    return r


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("clean") / "run"
    with InteractionLog.create(run / "interactions.zarr", H, W, chunk_records=CHUNK_RECORDS) as log:
        for i in range(N):
            log.append(record(i))
    return run


@pytest.fixture
def run(clean_run, tmp_path) -> Path:
    return fresh_copy(clean_run, tmp_path)  # to damage


def chunk_file(run: Path, array: str, k: int) -> Path:
    """The file of chunk k (along the record / hypothesis-row axis) of `array`."""
    base = run / "interactions.zarr" / array / "c" / str(k)
    files = [p for p in [base, *base.rglob("*")] if p.is_file()]
    assert len(files) == 1, files
    return files[0]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data.inspect", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip


def one_error_line(res: subprocess.CompletedProcess) -> str:
    """stderr is exactly one `... error: ...` line (no traceback); returns it."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error: " in lines[0] and "Traceback" not in res.stderr, res.stderr
    return lines[0]


# ----------------------------------------------------------------------------- inspect --verify


def test_clean_log_verifies(clean_run):
    before = tree_hash(clean_run)
    res = cli(clean_run, "--verify")
    assert res.returncode == 0, res.stderr
    last = res.stdout.splitlines()[-1]
    assert last.startswith("verify: ok") and f"{N} committed records" in last
    assert "damaged" not in res.stdout.lower()
    res = cli(clean_run / "interactions.zarr", "--verify", "--json")
    doc = json.loads(res.stdout)
    assert res.returncode == 0 and doc["ok"] is True and doc["damaged"] == [] and doc["records"] == N
    assert doc["chunks"]["rgb"] == N and doc["chunks"]["record_f64"] == 3  # ceil(10 / 4)
    assert tree_hash(clean_run) == before


# (array, chunk index, the records it takes down, how --verify names them)
DAMAGE = [
    ("rgb", 3, [3], "record 3"),
    ("depth_mm", 5, [5], "record 5"),  # blosc, not zstd: another decoder's error
    ("mask", 0, [0], "record 0"),
    ("record_f64", 1, [4, 5, 6, 7], "records 4-7"),
    ("record_i64", 2, [8, 9], "records 8-9"),  # the last, partial chunk: the one a writer reads back
    # 32-row chunks: all 13 rows (records with i % 4 = 1..3 hypotheses) are in chunk 0
    ("hypotheses", 0, [1, 2, 3, 5, 6, 7, 9], "hypothesis rows 0-12 (records 1-3, 5-7, 9)"),
]


@pytest.mark.parametrize("array, k, records, named", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_verify_names_the_damaged_array_and_records(run, array, k, records, named):
    truncate(chunk_file(run, array, k))
    before = tree_hash(run)
    res = cli(run, "--verify")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    damaged = [ln for ln in res.stdout.splitlines() if ln.startswith("damaged chunk:")]
    assert len(damaged) == 1 and f"array {array!r}" in damaged[0] and named in damaged[0], res.stdout
    last = res.stdout.splitlines()[-1]
    assert last.startswith("verify: DAMAGED") and array in last and "records affected" in last
    doc = json.loads(cli(run, "--verify", "--json").stdout)
    assert doc["ok"] is False and [d["array"] for d in doc["damaged"]] == [array]
    assert doc["damaged_records"] == records
    assert tree_hash(run) == before  # verify only reads


def test_every_inspect_mode_ends_in_one_error_line(run):
    truncate(chunk_file(run, "rgb", 3))
    truncate(chunk_file(run, "record_f64", 0))
    before = tree_hash(run)
    # the summary reads the scalar tables: the damaged record_f64 chunk, named with its records
    line = one_error_line(res := cli(run))
    assert res.returncode == 2 and "'record_f64'" in line and "records 0-3" in line and "--verify" in line
    line = one_error_line(res := cli(run, "--show", "3", "--out", run.parent / "x.png"))
    assert res.returncode == 2 and "'rgb'" in line and "record 3" in line
    line = one_error_line(res := cli(run, "--html", run.parent / "r.html", "--rows", "3"))
    assert res.returncode == 2 and ("'rgb'" in line or "'record_f64'" in line)
    assert not (run.parent / "x.png").exists() and not (run.parent / "r.html").exists()
    assert tree_hash(run) == before


@pytest.mark.parametrize("what", ["plain_dir", "missing", "file", "array_metadata"])
def test_not_a_log_or_unreadable_store_is_one_error_line(run, tmp_path, what):
    path = {"plain_dir": tmp_path / "plain", "missing": tmp_path / "nothing_here", "file": tmp_path / "x.zarr",
            "array_metadata": run}[what]  # fmt: skip
    if what == "plain_dir":
        path.mkdir()
        (path / "notes.txt").write_text("not a log")
    if what == "file":
        path.write_text("not a log")
    if what == "array_metadata":  # the rgb array's own zarr.json torn: the store cannot be opened
        truncate(run / "interactions.zarr" / "rgb" / "zarr.json")
    for args in ([path], [path, "--verify"]):
        res = cli(*args)
        line = one_error_line(res)
        assert res.returncode == 2 and str(path) in line and res.stdout == ""
        if what == "array_metadata":
            assert "'rgb'" in line


# ----------------------------------------------------------------------------- training skips, never dies


def test_log_source_skips_a_damaged_record_and_reports_it(clean_run, run, caplog):
    clean = LogSource(clean_run / "interactions.zarr")
    assert len(clean) == N and not clean.skipped
    truncate(chunk_file(run, "rgb", 3))
    before = tree_hash(run)
    with caplog.at_level(logging.WARNING, logger="learner.train.data"):
        src = LogSource(run / "interactions.zarr")
    assert src.skipped == {3: ("rgb",)} and src.n_records == N
    keep = [i for i in range(N) if i != 3]
    assert len(src) == N - 1
    for k, i in enumerate(keep):  # every other record is there, unchanged
        np.testing.assert_array_equal(src.rgb[k], clean.rgb[i])
        np.testing.assert_array_equal(src.depth[k], clean.depth[i])
        assert src.label[k] == clean.label[i]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "record 3" in warning and "'rgb'" in warning and str(run / "interactions.zarr") in warning
    assert "--verify" in warning
    # training goes on with the rest
    tr = Trainer(TrainConfig(batch_size=2, max_queries=8), TINY, seed=0)
    stats = tr.train(src, 2, progress=False)
    assert stats["steps"] == 2 and np.isfinite(stats["loss"])
    assert tree_hash(run) == before  # reading never rewrites the log


def test_log_source_skips_a_whole_table_chunk_and_ignores_hypothesis_damage(run, caplog):
    truncate(chunk_file(run, "record_f64", 1))
    truncate(chunk_file(run, "hypotheses", 0))  # training does not need the hypotheses
    with caplog.at_level(logging.WARNING, logger="learner.train.data"):
        src = LogSource(run / "interactions.zarr")
    assert src.skipped == {i: ("record_f64",) for i in (4, 5, 6, 7)}
    assert len(src) == N - 4
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "records 4-7" in warning and "'record_f64'" in warning and "skipped 4 of 10" in warning


def test_log_source_with_nothing_readable_raises_naming_the_log(run):
    for k in range(3):
        truncate(chunk_file(run, "record_f64", k))
    with pytest.raises(ValueError, match="none of its 10 records can be read") as e:
        LogSource(run / "interactions.zarr")
    assert str(run / "interactions.zarr") in str(e.value) and "'record_f64'" in str(e.value)


def test_train_cli_retrains_on_a_damaged_log(run, tmp_path):
    """The issue's symptom: every retrain on the log died with an anonymous Zstd error. Now it trains."""
    truncate(chunk_file(run, "rgb", 3))
    res = subprocess.run([sys.executable, "-m", "learner.train", "--log", str(run), "--out", str(tmp_path / "ckpt"),
                          "--steps", "1", "--batch-size", "2", "--threads", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "skipped 1 of 10 records" in res.stderr and "record 3" in res.stderr
    assert (tmp_path / "ckpt" / "last.pt").exists()


# ----------------------------------------------------------------------------- the writer


def test_writer_appends_past_a_damaged_record_and_keeps_it_as_it_was(run):
    f = chunk_file(run, "rgb", 3)
    truncate(f)
    torn = f.read_bytes()
    path = run / "interactions.zarr"
    InteractionLog.check_appendable(path, H, W)  # a damaged middle chunk: the writer never reads it
    with InteractionLog.open(path, "a") as log:
        log.append(record(N))
    assert f.read_bytes() == torn  # the damaged chunk is not rewritten (nor "repaired" to zeros)
    with InteractionLog.open(path, "r") as log:
        assert len(log) == N + 1
        result = log.verify()
        assert [(d.array, d.records) for d in result.damage] == [("rgb", (3,))]
        np.testing.assert_array_equal(log[N].rgb_before, record(N).rgb_before)
        with pytest.raises(ChunkDamageError) as e:
            log[3]
    assert e.value.records == {"rgb": (3,)} and "record 3" in str(e.value)


def test_writer_refuses_a_damaged_chunk_it_must_read_back(run):
    truncate(chunk_file(run, "record_i64", 2))  # records 8-9: the partial chunk the next append rewrites
    path = run / "interactions.zarr"
    before = tree_hash(run)
    for attempt in (lambda: InteractionLog.check_appendable(path, H, W), lambda: InteractionLog.open(path, "a")):
        with pytest.raises(LogFormatError, match="'record_i64'.*records 8-9"):
            attempt()
    assert tree_hash(run) == before
    with InteractionLog.open(path, "r") as log:  # readers still get every other record
        assert len(log) == N
        np.testing.assert_array_equal(log[7].rgb_before, record(7).rgb_before)


def test_a_refused_writer_releases_its_lock_once(run):
    """A writer refused after it was built must not close its lock descriptor twice: the second
    close would hit whatever file reused the number later (a torch.load failed with EBADF so)."""
    truncate(chunk_file(run, "record_i64", 2))
    path = run / "interactions.zarr"
    with pytest.raises(LogFormatError) as refused:  # the refused writer lives on in the traceback
        InteractionLog.open(path, "a")
    with open(path / "zarr.json", "rb") as f:  # takes the lowest free descriptor: the lock's old number
        del refused
        gc.collect()  # the refused writer is collected now, with its finalizer
        assert f.read()  # OSError EBADF if that finalizer closed this file's descriptor
