"""`python -m data.inspect`: summary numbers, JSON, --show PNG, HTML report (rendered in headless
Chromium when installed), errors, and reading while a writer subprocess appends.

Real Zarr stores in tmp_path; the hand-made log below has known labels / reasons / primitives /
mask areas, and the expected numbers are written out literally.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.bench_log import synthetic_record
from data.inspect import main, open_log, summarize
from data.log import InteractionLog
from data.schema import InteractionRecord, Label
from tests.fs_helpers import tree_hash
from tests.report_helpers import chromium_screenshot

REPO = Path(__file__).resolve().parents[1]
H, W = 36, 48
P, N, INV = Label.POSITIVE, Label.NEGATIVE, Label.INVALID
T0 = 1.7e9

# label, label_reason, primitive, model_version, grasp_success, mask area [px]
SPEC = [
    (P, "moved", "poke", 0, -1, 100),
    (N, "nothing_moved", "poke", 0, -1, 0),
    (P, "moved", "grasp", 0, 1, 200),
    (INV, "arm_leak", "poke", 1, -1, 50),
    (P, "lifted", "grasp", 1, 0, 300),
    (N, "nothing_moved", "grasp", 1, 0, 0),
    (P, "moved", "poke", 1, -1, 400),
    (N, "too_small", "poke", 2, -1, 10),
    (INV, "no_depth", "grasp", 2, -1, 0),
    (P, "moved", "poke", 2, -1, 500),
    (N, "nothing_moved", "poke", 2, -1, 0),
    (P, "moved", "poke", 2, -1, 600),
]


def hand_record(i: int) -> InteractionRecord:
    label, reason, primitive, model, grasp, area = SPEC[i]
    r = synthetic_record(i, H, W, n_hypotheses=i % 4)  # 0..3 hypotheses: mean 1.5
    r.label, r.label_reason, r.primitive, r.model_version, r.grasp_success = (
        label, reason, primitive, model, grasp,
    )  # fmt: skip
    r.mask = np.zeros((H, W), dtype=bool)
    r.mask.flat[:area] = True
    r.chosen_hypothesis = 0 if i % 4 else -1
    r.t_start, r.t_end = T0 + 60.0 * i, T0 + 60.0 * i + 5.0  # one every minute: 60 / hour
    return r


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    with InteractionLog.create(run / "interactions.zarr", H, W, code_version="test") as log:
        for i in range(len(SPEC)):
            log.append(hand_record(i))
    return run


def cli(*args: str, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data.inspect", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip


# ----------------------------------------------------------------------------- summary


def test_summary_numbers_match_hand_computed_values(run_dir):
    with open_log(run_dir) as log:
        s = summarize(log)
    assert s["records"] == 12 and (s["height"], s["width"]) == (H, W) and s["code_version"] == "test"
    assert s["labels"] == {"n": 12, "positive": 6, "negative": 4, "invalid": 2,
                           "positive_rate": 0.5, "positive_rate_valid": 0.6}  # fmt: skip
    assert s["label_reasons"] == {"moved": 5, "nothing_moved": 3, "arm_leak": 1, "lifted": 1,
                                  "no_depth": 1, "too_small": 1}  # fmt: skip
    assert list(s["label_reasons"]) == [
        "moved",
        "nothing_moved",
        "arm_leak",
        "lifted",
        "no_depth",
        "too_small",
    ]
    poke, grasp = s["by_primitive"]["poke"], s["by_primitive"]["grasp"]
    assert (poke["n"], poke["positive"], poke["negative"], poke["invalid"]) == (8, 4, 3, 1)
    assert poke["positive_rate"] == 0.5 and poke["positive_rate_valid"] == pytest.approx(4 / 7)
    assert (grasp["n"], grasp["positive"], grasp["negative"], grasp["invalid"]) == (4, 2, 1, 1)
    assert grasp["positive_rate"] == 0.5 and grasp["positive_rate_valid"] == pytest.approx(2 / 3)

    # 12 records in 10 consecutive bins: np.array_split sizes 2, 2, 1, ..., 1
    bins = s["over_time"]
    assert [(b["start"], b["stop"]) for b in bins] == [(0, 2), (2, 4), *((k, k + 1) for k in range(4, 12))]
    assert [b["positive"] for b in bins] == [1, 1, 1, 0, 1, 0, 0, 1, 0, 1]
    assert [b["positive_rate"] for b in bins] == [0.5, 0.5, 1, 0, 1, 0, 0, 1, 0, 1]
    assert bins[1]["positive_rate_valid"] == 1.0  # record 3 is invalid

    mv = {b["model_version"]: b for b in s["by_model_version"]}
    assert sorted(mv) == [0, 1, 2]
    assert [(mv[v]["n"], mv[v]["positive"]) for v in (0, 1, 2)] == [(3, 2), (4, 2), (5, 2)]
    assert mv[2]["positive_rate"] == pytest.approx(0.4) and mv[2]["positive_rate_valid"] == pytest.approx(0.5)

    m = s["mask_area_positive"]  # positives have areas 100..600
    assert (m["positives"], m["measured"], m["sampled"], m["empty"]) == (6, 6, False, 0)
    assert m["image_pixels"] == H * W
    assert m["mean"]["pixels"] == 350 and m["median"]["pixels"] == 350
    assert m["p10"]["pixels"] == pytest.approx(150) and m["p90"]["pixels"] == pytest.approx(550)
    assert m["mean"]["percent"] == pytest.approx(100 * 350 / (H * W))

    assert s["hypotheses"] == {"mean_per_record": 1.5, "max_per_record": 3, "records_with_chosen": 9}
    assert s["grasp"] == {"grasps": 4, "known_outcome": 3, "success": 1, "success_rate": pytest.approx(1 / 3)}
    t = s["time"]
    assert (t["t_start_min"], t["t_start_max"]) == (T0, T0 + 660.0)
    assert t["span_hours"] == pytest.approx(660 / 3600) and t["interactions_per_hour"] == pytest.approx(60.0)
    assert t["start"].startswith("2023-11-14 22:13:20")
    store = run_dir / "interactions.zarr"
    size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    assert s["disk"]["bytes"] == size and s["disk"]["bytes_per_interaction"] == pytest.approx(size / 12)
    assert s["robot_kinds"] == {"sim": 12}

    # a (seeded, deterministic) sample of the positives' masks when asked for fewer
    with open_log(run_dir / "interactions.zarr") as log:
        m3 = summarize(log, mask_sample=3)["mask_area_positive"]
        assert (m3["positives"], m3["measured"], m3["sampled"]) == (6, 3, True)
        mean3 = 3 * m3["mean"]["pixels"]  # sum of 3 distinct areas out of 100, 200, ..., 600
        assert 600 <= mean3 <= 1500 and mean3 % 100 == 0
        assert summarize(log, mask_sample=3)["mask_area_positive"] == m3
        assert summarize(log, mask_sample=0)["mask_area_positive"] == m
        assert summarize(log, 4)["labels"]["n"] == 4  # the first n records only


def test_text_and_json_output(run_dir, capsys):
    assert main([str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "12 committed" in text
    assert re.search(r"^\s+positive\s+6\s+50\.0%$", text, re.M)
    assert re.search(r"^\s+poke\s+8\s+4\s+3\s+1\s+50\.0%\s+57\.1%$", text, re.M)
    assert re.search(r"^\s+median\s+350\.0\s+", text, re.M)
    assert "60.0" in text and "1/3 = 33.3%" in text

    res = cli(str(run_dir / "interactions.zarr"), "--json")  # the real command line, on the .zarr itself
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["records"] == 12 and s["labels"]["positive"] == 6 and s["by_primitive"]["grasp"]["n"] == 4
    with open_log(run_dir) as log:
        assert s == json.loads(json.dumps(summarize(log)))


def test_empty_log(tmp_path, capsys):
    InteractionLog.create(tmp_path / "interactions.zarr", H, W).close()
    assert main([str(tmp_path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["records"] == 0 and s["labels"]["positive_rate"] is None and s["over_time"] == []
    assert main([str(tmp_path)]) == 0 and "0 committed" in capsys.readouterr().out
    assert main([str(tmp_path), "--html", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64,") == 2  # the two plots


# ----------------------------------------------------------------------------- --show


def test_show_writes_full_resolution_png(run_dir, tmp_path, monkeypatch, capsys):
    before = tree_hash(run_dir)
    out = tmp_path / "sub" / "last.png"
    assert main([str(run_dir), "--show", "-1", "--out", str(out)]) == 0
    img = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert img.shape == (H, 4 * W, 3)
    r = hand_record(11)
    assert np.array_equal(img[:, :W], r.rgb_before) and np.array_equal(img[:, W : 2 * W], r.rgb_after)
    assert not np.array_equal(img[:, 2 * W : 3 * W], r.rgb_before)  # mask overlay drawn
    assert "#11 poke - positive (moved)" in capsys.readouterr().err

    monkeypatch.chdir(tmp_path)
    assert main([str(run_dir), "--show", "3"]) == 0
    assert cv2.imread(str(tmp_path / "interaction_000003.png")).shape == (H, 4 * W, 3)
    assert tree_hash(run_dir) == before  # read-only


def test_errors_exit_2_and_write_nothing(run_dir, tmp_path, capsys):
    report = tmp_path / "report.html"
    for bad in (tmp_path / "nothing_here", tmp_path):  # missing; a directory that is no log
        assert main([str(bad), "--html", str(report)]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and "interactions.zarr" in err
    (tmp_path / "file.zarr").write_text("x")
    assert main([str(tmp_path / "file.zarr")]) == 2
    assert "file.zarr" in capsys.readouterr().err

    for index in ("12", "-13"):
        assert main([str(run_dir), "--show", index, "--out", str(tmp_path / "x.png")]) == 2
        assert "out of range for 12 committed records" in capsys.readouterr().err
    assert main([str(run_dir), "--html", str(report), "--rows", "0,12"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert not report.exists() and not (tmp_path / "x.png").exists()

    res = cli(str(tmp_path / "nope"))
    assert res.returncode == 2 and str(tmp_path / "nope") in res.stderr and res.stdout == ""
    res = cli(str(run_dir), "--show", "99")
    assert res.returncode == 2 and "out of range" in res.stderr


# ----------------------------------------------------------------------------- HTML report


def test_html_report_is_self_contained_and_renders(run_dir, tmp_path):
    before = tree_hash(run_dir)
    report = tmp_path / "report.html"
    assert main([str(run_dir), "--html", str(report)]) == 0
    doc = report.read_text()
    imgs = re.findall(r"<img [^>]*>", doc)
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', doc)
    assert len(imgs) == len(uris) == 2 + 4 * 12  # two plots, four panels for each of the 12 records
    assert not re.search(r'(src|href)="(?!data:)', doc)  # no external assets
    thumb = cv2.imdecode(np.frombuffer(base64.b64decode(uris[2]), np.uint8), cv2.IMREAD_COLOR)
    assert thumb.shape == (round(H * 160 / W), 160, 3)
    for text in ("Positive rate by primitive", "#4 grasp - positive (lifted), grasp failed - model 1",
                 'alt="#0 chosen hypothesis: none"', 'alt="#1 chosen hypothesis: 0"'):  # fmt: skip
        assert text in doc
    assert tree_hash(run_dir) == before

    # chosen rows, thumbnail width; evenly spaced rows when capped
    small = tmp_path / "small.html"
    assert main([str(run_dir), "--html", str(small), "--rows", "-1,0", "--thumb-width", "64"]) == 0
    doc2 = small.read_text()
    assert doc2.count('src="data:image/png;base64,') == 2 + 8 and "#11 poke" in doc2
    assert main([str(run_dir), "--html", str(small), "--max-rows", "3"]) == 0
    assert re.findall(r"#(\d+) (?:poke|grasp) - ", small.read_text()) == ["0", "6", "11"]

    png = chromium_screenshot(report, tmp_path / "shot.png", tmp_path)
    colourful = (png.max(axis=2).astype(int) - png.min(axis=2)) > 40  # the thumbnails, plots
    assert colourful.sum() > 20_000, f"only {colourful.sum()} coloured pixels: images not rendered?"


# ----------------------------------------------------------------------------- concurrent writer


def test_inspect_while_a_writer_appends(tmp_path, capsys):
    path = tmp_path / "interactions.zarr"
    InteractionLog.create(path, H, W, chunk_records=4).close()
    code = f"""
        import time
        from data.bench_log import synthetic_record
        from data.log import InteractionLog
        recs = [synthetic_record(i, {H}, {W}) for i in range(10)]
        with InteractionLog.open({str(path)!r}, "a") as log:
            for i in range(100000):
                log.append(recs[i % 10])
                if i == 5:
                    print("GO", flush=True)
                time.sleep(0.01)
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = []
    try:
        assert proc.stdout.readline().strip() == "GO", proc.stderr.read() if proc.poll() is not None else ""
        reader = InteractionLog.open(path, "r")
        # until 6 summaries that saw the log grow; the deadline only stops a hang (it is not a speed check)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (len(seen) < 6 or len(set(seen)) < 2):
            assert main([str(tmp_path), "--json"]) == 0
            s = json.loads(capsys.readouterr().out)
            committed = len(reader)
            assert 6 <= s["records"] <= committed
            lab = s["labels"]
            assert lab["positive"] + lab["negative"] + lab["invalid"] == s["records"]
            assert sum(b["n"] for b in s["over_time"]) == s["records"]
            seen.append(s["records"])
        report = tmp_path / "live.html"
        assert main([str(tmp_path), "--html", str(report), "--max-rows", "4"]) == 0
        assert main([str(tmp_path), "--show", "-1", "--out", str(tmp_path / "live.png")]) == 0
        assert report.read_text().count('src="data:image/png;base64,') == 2 + 16
        assert proc.poll() is None, proc.stderr.read()  # the writer was appending all along
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert seen == sorted(seen) and len(set(seen)) >= 2, f"inspect never overlapped the writer: {seen}"
