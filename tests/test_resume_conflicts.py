"""Resuming a run with a config it cannot honour (issue #19): `run_loop.py` refuses with one `error:` line
and exit status 2 before it touches any file of the run (log, metrics, checkpoint, loop state, and the
recorded Hydra config `RUN/.hydra/`); a resume it can honour goes ahead and only then records its config.

Real runs: run_loop.py as a subprocess on a tiny sim run, as tests/test_loop.py does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data.log import InteractionLog
from tests.fs_helpers import fresh_copy, tree_hash
from tests.test_loop import metrics, run_loop

QUICK = ["loop.eval_scenes=0", "loop.update_interval=2", "loop.train_steps=1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """Two interactions and one retrain of one step: a run with a checkpoint (stem_width 8, from TINY)."""
    run = tmp_path_factory.mktemp("resume") / "A"
    r = run_loop(run, *QUICK, "loop.interactions=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "checkpoints" / "last.pt").exists() and (run / ".hydra" / "config.yaml").exists()
    return run


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    return fresh_copy(tiny_run, tmp_path)


def model_config(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model_config"]


def refused(r, run: Path, before: str) -> str:
    """The invocation was refused the agreed way; returns its error line."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    assert tree_hash(run) == before  # no shard, no metrics row, no checkpoint, no state, no recorded config
    return lines[0]


def test_contradicting_model_is_refused_then_the_same_config_resumes(run):
    config = (run / ".hydra" / "config.yaml").read_bytes()
    hydra_files = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}
    rows = (run / "metrics.jsonl").read_bytes()
    ckpt = (run / "checkpoints" / "last.pt").read_bytes()
    before = tree_hash(run)

    line = refused(run_loop(run, *QUICK, "loop.interactions=4", "learner.model.stem_width=32"), run, before)
    assert "learner.model.stem_width (checkpoint 8, requested 32)" in line and str(run) in line
    assert (run / ".hydra" / "config.yaml").read_bytes() == config  # the recorded config is as it was
    assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()} == hydra_files
    assert (run / "metrics.jsonl").read_bytes() == rows and (run / "checkpoints" / "last.pt").read_bytes() == ckpt

    # several fields, list-valued ones included: each named with both values
    line = refused(run_loop(run, *QUICK, "loop.interactions=4", "learner.model.widths=[16,16,48]",
                            "learner.model.latent_dim=4"), run, before)  # fmt: skip
    assert "learner.model.widths (checkpoint [16, 16, 32], requested [16, 16, 48])" in line
    assert "learner.model.latent_dim (checkpoint 0, requested 4)" in line and "stem_width" not in line

    # the same model config: resumes, and only now is the new config recorded
    r = run_loop(run, *QUICK, "loop.interactions=4")
    assert r.returncode == 0, r.stderr[-3000:]
    with InteractionLog.open(run / "interactions.zarr", "r") as log:
        assert len(log) == 4
    assert [m["index"] for m in metrics(run) if m["kind"] == "interaction"] == [0, 1, 2, 3]
    assert model_config(run)["stem_width"] == 8
    recorded = (run / ".hydra" / "config.yaml").read_text()
    assert "interactions: 4\n" in recorded and "stem_width: 8\n" in recorded
    assert "loop.interactions=4" in (run / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.parametrize("what", ["damaged_tail_chunk", "image_size", "not_a_log", "locked", "checkpoint"])
def test_store_errors_on_resume_are_refused_the_same_way(run, what):
    log_path = run / "interactions.zarr"
    extra = []
    holder = None
    if what == "damaged_tail_chunk":  # the partial record_i64 chunk the writer would read back
        f = log_path / "record_i64" / "c" / "0" / "0"
        f.write_bytes(f.read_bytes()[:10])
    elif what == "image_size":
        extra = ["robot.width=336"]
    elif what == "not_a_log":
        (log_path / "zarr.json").write_text("{ torn")
    elif what == "checkpoint":
        (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    before = tree_hash(run)
    if what == "locked":  # another writer has the log open
        holder = InteractionLog.open(log_path, "a")
    try:
        line = refused(run_loop(run, *QUICK, "loop.interactions=4", *extra, timeout=120), run, before)
    finally:
        if holder is not None:
            holder.close()
    assert str(run) in line
    needle = {"damaged_tail_chunk": "'record_i64'", "image_size": "240x320 images, not the requested 240x336",
              "not_a_log": "not an interaction log", "locked": "already open for writing",
              "checkpoint": "last.pt is not a segmenter checkpoint"}[what]  # fmt: skip
    assert needle in line


def test_a_refused_fresh_start_records_no_config(tmp_path):
    run = tmp_path / "fresh"
    r = run_loop(run, "loop.interactions=-3", timeout=120)
    assert r.returncode == 2 and "loop.interactions" in r.stderr
    assert not (run / ".hydra").exists() and not (run / "interactions.zarr").exists()


def test_learner_init_on_resume_keeps_the_checkpoint_architecture(run, tiny_run):
    """learner.init means "a checkpoint's architecture wins over learner.model": on a resume the run's own
    checkpoint is that checkpoint (learner.init is ignored, as before), so a differing learner.model is no
    contradiction there."""
    r = run_loop(run, *QUICK, "loop.interactions=3", f"learner.init={tiny_run}", "learner.model.stem_width=32")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ignored" in r.stdout + r.stderr
    assert model_config(run)["stem_width"] == 8
    with InteractionLog.open(run / "interactions.zarr", "r") as log:
        assert len(log) == 3
