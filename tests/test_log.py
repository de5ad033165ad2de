"""Interaction log (data/): round trips, crash safety, concurrent readers, format errors, COCO export.

Everything runs against real Zarr stores on disk (tmp_path); writer crashes are real SIGKILLs of
subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from data.bench_log import synthetic_record
from data.log import SCHEMA_VERSION, InteractionLog, LogFormatError, LogLockedError
from data.schema import InteractionRecord, Label, depth_to_mm, mm_to_depth
from tests.fs_helpers import tree_hash

REPO = Path(__file__).resolve().parents[1]
H, W = 35, 50  # small, and H*W is not a multiple of 8 (exercises the bit-packing tail)


def rec(seed: int, **kw) -> InteractionRecord:
    return synthetic_record(seed, H, W, **kw)


def assert_same(a: InteractionRecord, b: InteractionRecord) -> None:
    """b read back from the log equals a: depth within mm quantisation, everything else exactly."""
    for name in a.field_names():
        x, y = getattr(a, name), getattr(b, name)
        if name.startswith("depth"):
            assert y.dtype == np.float32 and y.shape == x.shape, name
            assert np.array_equal(y, mm_to_depth(depth_to_mm(x))), name
            ok = np.isfinite(x) & (x >= 0.0005) & (x <= 65.535)  # representable in uint16 mm
            assert np.abs(y[ok].astype(np.float64) - x[ok]).max() <= 0.0005 + 1e-6, name
        elif isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and y.shape == x.shape, name
            assert y.dtype == x.dtype, (name, x.dtype, y.dtype)
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
        else:
            assert type(y) is type(x) and y == x, (name, x, y)


def run_py(code: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw,
    )  # fmt: skip


def make_log(path: Path, seeds, **create_kw) -> list[InteractionRecord]:
    recs = [rec(s) for s in seeds]
    with InteractionLog.create(path, H, W, **create_kw) as log:
        for r in recs:
            log.append(r)
    return recs


# ----------------------------------------------------------------------------- round trips


def test_records_round_trip_exactly(tmp_path):
    path = tmp_path / "interactions.zarr"
    K = np.array([[40.0, 0, 24.5], [0, 40.0, 17.0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, 3] = [0.4, 0.0, 0.9]
    cfg = {"agent": {"eps": 0.1, "names": ["a", "b"]}, "seed": 3}
    recs = [
        rec(0, n_hypotheses=0),
        rec(1, n_hypotheses=1),
        rec(2, n_hypotheses=64),
        rec(3),
        rec(4, n_hypotheses=5),
    ]
    recs[1].target_robot = np.array([np.nan, np.nan, np.nan], dtype=np.float32)
    recs[2].depth_before[0, :4] = [np.nan, -1.0, 0.0002, 70.0]  # missing, missing, rounds to 0, clipped
    recs[3].angle, recs[3].push_length, recs[3].model_version = -3.0e-7, 0.123456789, 2**40
    with InteractionLog.create(path, H, W, intrinsics=K, extrinsics=T, config_snapshot=cfg,
                               code_version="abc123", chunk_records=2) as log:  # fmt: skip
        assert [log.append(r) for r in recs] == list(range(5))
        assert len(log) == 5
        assert_same(recs[4], log[-1])  # the writer can read its own records

    log = InteractionLog.open(path)
    assert len(log) == 5 and log.mode == "r"
    for r, i in zip(recs, range(5), strict=True):
        assert_same(r, log[i])
    assert_same(recs[2], log[-3])
    with pytest.raises(IndexError):
        log[5]
    with pytest.raises(IndexError):
        log[-6]
    assert log.schema_version == SCHEMA_VERSION == 1
    assert (log.height, log.width) == (H, W)
    assert np.array_equal(log.intrinsics, K) and np.array_equal(log.extrinsics, T)
    assert log.config_snapshot == cfg and log.code_version == "abc123"
    d = recs[2].depth_before[0, :4]
    assert list(log[2].depth_before[0, :4]) == [0.0, 0.0, 0.0, np.float32(65.535)], d
    assert [r.num_hypotheses for r in log.records()] == [0, 1, 64, recs[3].num_hypotheses, 5]

    # bulk reads agree with per-record reads, for every field and several index forms
    idx = [3, 0, 3, 4]
    for name in recs[0].field_names():
        many = log.read_field(name, idx)
        for k, i in enumerate(idx):
            want = getattr(recs[i], name)
            got = many[k]
            if name.startswith("depth"):
                assert np.abs(got - want).max() <= 0.0005 + 1e-6
            elif isinstance(want, np.ndarray):
                assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f"), name
            else:
                assert got == want, (name, got, want)
    assert list(log.read_field("label")) == [int(r.label) for r in recs]
    assert log.read_field("label").dtype == np.uint8
    assert list(log.read_field("primitive", slice(1, 3))) == [recs[1].primitive, recs[2].primitive]
    assert log.read_field("robot_kind", -1) == "sim"
    assert np.array_equal(log.read_field("rgb_after", 2), recs[2].rgb_after)
    assert list(log.read_field("hypothesis_count")) == [r.num_hypotheses for r in recs]
    assert log.read_field("mask", []).shape == (0, H, W)
    with pytest.raises(IndexError):
        log.read_field("label", [0, 5])
    with pytest.raises(KeyError):
        log.read_field("nope")
    with pytest.raises(ValueError):
        log.append(recs[0])  # read-only

    # on disk: typed arrays trimmed to exactly the committed rows, no object/string dtypes
    g = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r")
    assert g.attrs["committed_count"] == 5
    assert g.attrs["committed_hypotheses"] == sum(r.num_hypotheses for r in recs)
    assert g["rgb"].shape == (5, 2, H, W, 3) and g["rgb"].dtype == np.uint8
    assert g["depth_mm"].dtype == np.uint16 and g["mask"].dtype == np.bool_
    assert g["hypotheses"].shape == (g.attrs["committed_hypotheses"], (H * W + 7) // 8)
    for _, a in g.arrays():
        assert a.dtype.kind in "biuf" and a.shards is None
        assert a.shape[0] in (5, g.attrs["committed_hypotheses"])


def test_depth_quantisation_helpers():
    d = np.array(
        [0.0, 0.0004, 0.0006, 1.2344, 1.2346, 65.5354, 66.0, np.nan, -np.inf, -0.2], dtype=np.float32
    )
    mm = depth_to_mm(d)
    assert mm.dtype == np.uint16
    assert list(mm) == [0, 0, 1, 1234, 1235, 65535, 65535, 0, 0, 0]
    back = mm_to_depth(mm)
    assert back.dtype == np.float32 and back[0] == 0.0
    ok = np.isfinite(d) & (d > 0.0005) & (d < 65.5)
    assert np.abs(back[ok] - d[ok]).max() <= 0.0005 + 1e-6


def test_string_vocabularies_round_trip_and_grow(tmp_path):
    path = tmp_path / "log.zarr"
    a, b, c = rec(0), rec(1), rec(2)
    a.robot_kind, a.label_reason, a.primitive = "sim", "moved", "poke"
    b.robot_kind, b.label_reason, b.primitive = "franka", "", "grasp"
    c.robot_kind, c.label_reason = "sim", "no_depth"
    with InteractionLog.create(path, H, W) as log:
        log.append(a)
        log.append(b)
    with InteractionLog.open(path, "a") as log:
        assert log.vocab == {
            "primitive": ["poke", "grasp"],
            "label_reason": ["moved", ""],
            "robot_kind": ["sim", "franka"],
        }
        log.append(c)
    log = InteractionLog.open(path)
    assert log.attrs["vocab"]["label_reason"] == ["moved", "", "no_depth"]
    assert [(r.robot_kind, r.label_reason, r.primitive) for r in log.records()] == [
        ("sim", "moved", "poke"), ("franka", "", "grasp"), ("sim", "no_depth", c.primitive)
    ]  # fmt: skip
    assert list(log.read_field("label_reason")) == ["moved", "", "no_depth"]


def test_invalid_records_raise_naming_the_field_and_write_nothing(tmp_path):
    path = tmp_path / "log.zarr"
    log = InteractionLog.create(path, H, W)
    log.append(rec(0))
    before = tree_hash(path)

    def bad(field, value, seed=1):
        r = rec(seed)
        setattr(r, field, value)
        return r

    cases = {
        "rgb_before": bad("rgb_before", rec(1).rgb_before.astype(np.float32)),
        "rgb_after": bad("rgb_after", np.zeros((H + 1, W, 3), np.uint8)),
        "depth_after": bad("depth_after", np.zeros((H, W), np.uint16)),
        "mask": bad("mask", np.zeros((H, W), np.uint8)),
        "hypotheses": bad("hypotheses", np.zeros((65, H, W), bool)),
        "hypothesis_scores": bad("hypothesis_scores", np.zeros(99, np.float32)),
        "chosen_hypothesis": bad("chosen_hypothesis", 99),
        "K": bad("K", np.eye(4)),
        "pixel": bad("pixel", np.zeros(3)),
        "primitive": bad("primitive", "kick"),
        "robot_kind": bad("robot_kind", ""),
        "grasp_success": bad("grasp_success", 2),
        "t_end": bad("t_end", float("nan")),
    }
    for field, r in cases.items():
        with pytest.raises(ValueError, match=field):
            log.append(r)
    other_size = synthetic_record(5, H + 2, W)
    with pytest.raises(ValueError, match="rgb_before"):
        log.append(other_size)
    with pytest.raises(ValueError, match="label"):
        log.append(bad("label", 7))
    with pytest.raises(ValueError, match="label"):
        InteractionRecord(**{**vars(rec(1)), "label": 3})
    assert len(log) == 1
    assert tree_hash(path) == before
    r = rec(9)
    r.label, r.pixel = 1, (3, 4.5)  # int label and tuple pixel are accepted
    assert log.append(r) == 1
    from robot.base import Primitive

    r2 = InteractionRecord(**{**vars(rec(10)), "primitive": Primitive.GRASP})
    assert r2.primitive == "grasp" and type(r2.primitive) is str
    r2.primitive = Primitive.POKE  # enum assigned after construction works too
    assert log.append(r2) == 2
    log.close()
    back = InteractionLog.open(path)
    assert back[1].label is Label.POSITIVE and back[1].pixel.tolist() == [3.0, 4.5]
    assert back[2].primitive == "poke"


# ----------------------------------------------------------------------------- crash safety

WRITER_PRELUDE = """
    import sys, time
    from pathlib import Path
    from data.bench_log import synthetic_record
    from data.log import InteractionLog
    H, W = {H}, {W}
    path = Path({path!r})
"""


def test_sigkill_mid_append_leaves_earlier_records_and_drops_torn_one(tmp_path):
    path = tmp_path / "log.zarr"
    n_ok = 6  # with chunk_records=4 the torn record lands mid-chunk, past a chunk boundary
    code = (
        WRITER_PRELUDE.format(H=H, W=W, path=str(path))
        + f"""
    log = InteractionLog.create(path, H, W, chunk_records=4)
    for i in range({n_ok}):
        log.append(synthetic_record(i, H, W))
    def stall(*args):  # all arrays of the next record are written; die before the commit marker
        print("TORN", flush=True)
        time.sleep(60)
    log._write_commit = stall
    log.append(synthetic_record(100, H, W, n_hypotheses=12))
    """
    )
    proc = run_py(code)
    try:
        assert proc.stdout.readline().strip() == "TORN", proc.stderr.read() if proc.poll() is not None else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    torn = synthetic_record(100, H, W, n_hypotheses=12)
    g = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r")
    assert g.attrs["committed_count"] == n_ok
    assert g["rgb"].shape[0] > n_ok and np.array_equal(
        g["rgb"][n_ok, 0], torn.rgb_before
    )  # torn tail on disk
    m = g.attrs["committed_hypotheses"]
    assert np.array_equal(g["hypotheses"][m : m + 12], np.packbits(torn.hypotheses.reshape(12, -1), axis=1))

    # a reader only sees committed records and never touches the store, even with a torn tail
    before = tree_hash(path)
    reader = InteractionLog.open(path, "r")
    assert len(reader) == n_ok
    assert_same(rec(n_ok - 1), reader[n_ok - 1])
    with pytest.raises(IndexError):
        reader[n_ok]
    assert tree_hash(path) == before

    with InteractionLog.open(path, "a") as log:  # repairs
        assert len(log) == n_ok
        g = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r")
        assert g["rgb"].shape[0] == n_ok and g["hypotheses"].shape[0] == g.attrs["committed_hypotheses"]
        for i in range(n_ok):
            assert_same(rec(i), log[i])
        # no torn bytes survive in the kept partial chunk either (visible if someone grows the array)
        import shutil

        shutil.copytree(path, tmp_path / "copy.zarr")
        c = zarr.open_group(zarr.storage.LocalStore(tmp_path / "copy.zarr"), mode="r+")
        c["rgb"].resize((n_ok + 1, 2, H, W, 3))
        c["hypotheses"].resize((m + 12, c["hypotheses"].shape[1]))
        assert not c["rgb"][n_ok].any() and not c["hypotheses"][m:].any()
        new = [rec(200, n_hypotheses=3), rec(201, n_hypotheses=0), rec(202)]
        new[0].mask[:] = False  # an all-fill chunk must not resurrect the torn record's mask
        assert [log.append(r) for r in new] == [n_ok, n_ok + 1, n_ok + 2]
    log = InteractionLog.open(path)
    assert len(log) == n_ok + 3
    for i in range(n_ok):
        assert_same(rec(i), log[i])
    for k, r in enumerate(new):
        assert_same(r, log[n_ok + k])
    assert not list(path.rglob("*.partial"))


def test_sigkill_at_random_moments_never_loses_committed_records(tmp_path):
    path = tmp_path / "log.zarr"
    code = (
        WRITER_PRELUDE.format(H=H, W=W, path=str(path))
        + """
    recs = [synthetic_record(i, H, W) for i in range(8)]
    log = InteractionLog.open_or_create(path, H, W, chunk_records=3)
    i = len(log)
    print("START", i, flush=True)
    while True:
        log.append(recs[i % 8])
        i += 1
    """
    )
    expected = [rec(i) for i in range(8)]
    rng = np.random.default_rng(0)
    total = 0
    for _ in range(2):
        proc = run_py(code)
        try:
            assert proc.stdout.readline().startswith("START"), (
                proc.stderr.read() if proc.poll() is not None else ""
            )
            time.sleep(0.3 + 0.4 * rng.random())
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        with InteractionLog.open(path, "a") as log:
            n = len(log)
            assert n > total  # progress was committed
            for i in sorted({0, total, n - 2, n - 1} - {-1}):
                assert_same(expected[i % 8], log[i])
            total = n
    log = InteractionLog.open(path)
    labels = log.read_field("label")
    assert list(labels) == [int(expected[i % 8].label) for i in range(total)]
    hyp = log.read_field("hypotheses")
    assert all(np.array_equal(h, expected[i % 8].hypotheses) for i, h in enumerate(hyp))


def test_reader_sees_only_committed_records_while_writer_appends(tmp_path):
    path = tmp_path / "log.zarr"
    n_total = 24
    InteractionLog.create(path, H, W, chunk_records=4).close()
    code = (
        WRITER_PRELUDE.format(H=H, W=W, path=str(path))
        + f"""
    with InteractionLog.open(path, "a") as log:
        print("OPEN", flush=True)
        for i in range({n_total}):
            log.append(synthetic_record(i, H, W))
            time.sleep(0.03)
    """
    )
    expected = [rec(i) for i in range(n_total)]
    reader = InteractionLog.open(path, "r")
    proc = run_py(code)
    seen = []
    try:
        assert proc.stdout.readline().strip() == "OPEN", proc.stderr.read() if proc.poll() is not None else ""
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            n = len(reader)
            assert not seen or n >= seen[-1], "committed count went backwards"
            seen.append(n)
            if n:
                assert_same(expected[n - 1], reader[n - 1])  # newest visible record is complete
                assert list(reader.read_field("label", slice(0, n))) == [int(r.label) for r in expected[:n]]
            if n == n_total and proc.poll() is not None:
                break
            with pytest.raises(IndexError):
                reader.read_field("label", [n_total + 5])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == 0, proc.stderr.read()
    assert seen[-1] == n_total
    assert len(set(seen) - {0, n_total}) >= 3, f"reader never overlapped the writer: {sorted(set(seen))}"
    for i in (0, n_total // 2, n_total - 1):
        assert_same(expected[i], reader[i])


# ----------------------------------------------------------------------------- format errors


def test_newer_schema_version_is_refused_without_touching_the_store(tmp_path):
    path = tmp_path / "log.zarr"
    make_log(path, range(3))
    g = zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
    g.update_attributes({"schema_version": SCHEMA_VERSION + 1})
    g["mask"].resize((8, H, W))  # a torn tail too: would be repaired if 'a' mode got that far
    g["mask"][5] = True
    before = tree_hash(path)
    for mode in ("a", "r"):
        with pytest.raises(LogFormatError, match="newer"):
            InteractionLog.open(path, mode)
    with pytest.raises(LogFormatError, match="newer"):
        InteractionLog.open_or_create(path, H, W)
    assert tree_hash(path) == before


@pytest.mark.parametrize("damage", ["missing_array", "missing_attr", "short_array"])
def test_damaged_store_is_refused_without_touching_it(tmp_path, damage):
    import shutil

    path = tmp_path / "log.zarr"
    make_log(path, range(3))
    g = zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
    g["depth_mm"].resize((7, 2, H, W))  # torn tail that a repair would remove
    if damage == "missing_array":
        shutil.rmtree(path / "hypotheses")
        match = "hypotheses"
    elif damage == "missing_attr":
        attrs = g.attrs.asdict()
        del attrs["committed_count"]
        meta = json.loads((path / "zarr.json").read_text())
        meta["attributes"] = attrs
        (path / "zarr.json").write_text(json.dumps(meta))
        match = "committed_count"
    else:
        g["rgb"].resize((2, 2, H, W, 3))
        match = "rgb"
    before = tree_hash(path)
    for mode in ("a", "r"):
        with pytest.raises(LogFormatError, match=match):
            InteractionLog.open(path, mode)
    assert tree_hash(path) == before


def test_paths_that_are_not_logs(tmp_path):
    with pytest.raises(FileNotFoundError):
        InteractionLog.open(tmp_path / "nothing_here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogFormatError, match="not an interaction log"):
        InteractionLog.open(tmp_path / "empty", "a")
    (tmp_path / "file.zarr").write_text("hello")
    with pytest.raises(LogFormatError):
        InteractionLog.open(tmp_path / "file.zarr")
    zarr.open_group(tmp_path / "other.zarr", mode="w").create_array("x", shape=(3,), dtype="i4")
    with pytest.raises(LogFormatError, match="format"):
        InteractionLog.open(tmp_path / "other.zarr", "a")
    with pytest.raises(ValueError):
        InteractionLog.open(tmp_path / "other.zarr", "w")


def test_create_never_overwrites_and_open_or_create(tmp_path):
    path = tmp_path / "log.zarr"
    make_log(path, range(2))
    before = tree_hash(path)
    with pytest.raises(FileExistsError):
        InteractionLog.create(path, H, W)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        InteractionLog.create(tmp_path / "file", H, W)
    assert tree_hash(path) == before
    with pytest.raises(ValueError, match="images"):
        InteractionLog.open_or_create(path, H + 1, W)
    with InteractionLog.open_or_create(path, H, W) as log:
        assert len(log) == 2
        assert log.append(rec(7)) == 2
    with InteractionLog.open_or_create(tmp_path / "new" / "log.zarr", H, W, code_version="x") as log:
        assert len(log) == 0 and log.code_version == "x"


def test_single_writer_is_enforced(tmp_path):
    path = tmp_path / "log.zarr"
    log = InteractionLog.create(path, H, W)
    with pytest.raises(LogLockedError):
        InteractionLog.open(path, "a")
    reader = InteractionLog.open(path, "r")  # readers are always allowed
    log.append(rec(0))
    assert len(reader) == 1
    log.close()
    log.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        log.append(rec(1))
    with InteractionLog.open(path, "a") as log2:
        log2.append(rec(1))
    assert len(reader) == 2


# ----------------------------------------------------------------------------- COCO export


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools decode vs numpy 2 copy kw
def test_coco_export_loads_in_pycocotools(tmp_path):
    import cv2
    from pycocotools.coco import COCO

    from data.coco_export import export_positives

    path = tmp_path / "log.zarr"
    recs = [rec(i) for i in range(7)]
    labels = [1, 0, 1, 2, 1, 1, 0]
    for r, lab in zip(recs, labels, strict=True):
        r.label = Label(lab)
    recs[4].mask[:] = False  # positive with an empty mask: skipped
    with InteractionLog.create(path, H, W) as log:
        for r in recs:
            log.append(r)
    out = tmp_path / "coco"
    summary = export_positives(path, out)
    assert summary["positives"] == 4 and summary["annotations"] == 3 and summary["skipped_empty"] == 1

    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getAnnIds()) == 3 and sorted(coco.getImgIds()) == [0, 2, 5]
    assert coco.loadCats(coco.getCatIds())[0]["name"] == "object"
    for ann in coco.loadAnns(coco.getAnnIds()):
        i = ann["image_id"]
        m = recs[i].mask
        assert np.array_equal(coco.annToMask(ann).astype(bool), m)
        ys, xs = np.nonzero(m)
        assert ann["area"] == m.sum()
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        img = coco.loadImgs(i)[0]
        rgb = cv2.cvtColor(cv2.imread(str(out / img["file_name"])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(rgb, recs[i].rgb_before)
        depth = cv2.imread(str(out / img["depth_file_name"]), cv2.IMREAD_UNCHANGED)
        assert depth.dtype == np.uint16 and np.array_equal(depth, depth_to_mm(recs[i].depth_before))

    with pytest.raises(FileExistsError):
        export_positives(path, out)
    res = subprocess.run(
        [sys.executable, "-m", "data.coco_export", str(path), str(tmp_path / "cli"), "--overwrite"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert len(json.loads((tmp_path / "cli" / "annotations.json").read_text())["annotations"]) == 3


def test_bench_runs(tmp_path, capsys):
    from data.bench_log import main

    main(["--n", "5", "--height", str(H), "--width", str(W), "--out", str(tmp_path), "--distinct", "2"])
    out = capsys.readouterr().out
    assert "append ms" in out and "per interaction" in out
    assert len(InteractionLog.open(tmp_path / "interactions.zarr")) == 5
