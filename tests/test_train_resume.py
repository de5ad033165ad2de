"""Training checkpoints periodically and resumes mid-way: a retrain killed with SIGKILL resumes from its last
periodic checkpoint to the same step count, bumps model_version once, writes no train row twice, and ends
with exactly the weights of an uninterrupted run (same seed, 1 thread, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data.bench_log import synthetic_record
from data.log import InteractionLog
from learner.model.network import SegmenterConfig
from learner.train.data import LogSource
from learner.train.trainer import CHECKPOINT_NAME, RetrainProgress, TrainConfig, Trainer, main

REPO = Path(__file__).resolve().parents[1]
H, W = 96, 128
STEPS = 16
TINY = SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16)


@pytest.fixture(scope="module")
def small_log(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resume") / "interactions.zarr"
    with InteractionLog.create(path, H, W) as log:
        for i in range(12):
            log.append(synthetic_record(i, H, W, n_hypotheses=2))
    return path


def _args(log: Path, out: Path) -> list[str]:
    return ["--log", str(log), "--out", str(out), "--steps", str(STEPS), "--batch-size", "4", "--threads", "1",
            "--log-every", "1", "--checkpoint-every", "1.0", "--seed", "0"]


def _train_steps(out: Path) -> list[int]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["kind"] == "train"]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _kill_after_first_periodic_checkpoint(log: Path, out: Path, timeout_s: float = 120.0) -> dict:
    """Run `python -m learner.train` (the real model), SIGKILL it once a periodic checkpoint of the running
    retrain (one with steps done) is on disk; return that checkpoint."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "learner.train", *_args(log, out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        while True:
            assert proc.poll() is None, f"training ended before a periodic checkpoint: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() - t0 < timeout_s, "no periodic checkpoint in time"
            time.sleep(0.05)
            try:
                ck = _load(out / CHECKPOINT_NAME)  # replaced atomically: never torn
            except FileNotFoundError:
                continue
            if ck.get("retrain") and ck["step"] > ck["retrain"]["start_step"]:
                break
        time.sleep(0.05)  # let the process append the rows this checkpoint covers (microseconds after its rename)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return _load(out / CHECKPOINT_NAME)


def test_sigkilled_retrain_resumes_midway_to_the_uninterrupted_result(small_log, tmp_path, capsys):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    ck = _kill_after_first_periodic_checkpoint(small_log, killed)
    done = ck["step"]
    assert 0 < done < STEPS, done  # killed mid-retrain, after a periodic checkpoint
    assert ck["retrain"]["start_step"] == 0 and ck["retrain"]["steps"] == STEPS and ck["retrain"]["seconds"] > 0
    assert ck["model_version"] == 0  # not bumped by unfinished work
    assert _train_steps(killed) == list(range(1, done + 1))  # rows only up to the saved checkpoint

    # the same command resumes and finishes the interrupted retrain with its own schedule
    assert main(_args(small_log, killed)) == 0
    assert f"{STEPS - done} of its {STEPS} steps left" in capsys.readouterr().out
    end = _load(killed / CHECKPOINT_NAME)
    assert end["step"] == STEPS and end["model_version"] == 1 and "retrain" not in end
    steps = _train_steps(killed)
    assert steps == list(range(1, STEPS + 1)), steps  # no duplicate rows, none missing

    # an uninterrupted run from the same seed ends with exactly the same state (1 thread, CPU: deterministic)
    assert main(_args(small_log, whole)) == 0
    ref = _load(whole / CHECKPOINT_NAME)
    for k, v in ref["model"].items():
        assert torch.equal(end["model"][k], v), k
    for i, st in ref["optimizer"]["state"].items():
        for name, v in st.items():
            assert torch.equal(end["optimizer"]["state"][i][name], v), (i, name)
    assert end["numpy_rng"] == ref["numpy_rng"] and torch.equal(end["torch_rng"], ref["torch_rng"])
    assert _train_steps(whole) == steps


def test_train_after_an_interrupted_retrain_finishes_it_first(small_log, tmp_path):
    """In-process: a retrain that dies (an exception at its 5th batch) leaves its periodic checkpoint with
    the pending retrain; a new Trainer loads it, reports the steps left, and `train(source, 3)` first
    finishes the pending retrain on its 8-step schedule (one version bump), then runs the new 3 steps."""
    src = LogSource(small_log)
    ckpt, metrics = tmp_path / CHECKPOINT_NAME, tmp_path / "metrics.jsonl"
    cfg = TrainConfig(batch_size=2, max_queries=8, warmup_steps=2, log_every=1)
    a = Trainer(cfg, TINY, seed=1)
    calls = {"n": 0}
    real = a.sample_batch

    def dying(source):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")
        return real(source)

    a.sample_batch = dying  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="killed"):
        a.train(src, 8, metrics_path=metrics, progress=False, checkpoint_path=ckpt, checkpoint_every_s=1e-9)
    assert a.pending is not None and a.model_version == 0
    assert _load(ckpt)["step"] == 4  # saved before the 5th step began (the check precedes each step)
    assert _train_steps(tmp_path) == [1, 2, 3, 4]

    b = Trainer(cfg, TINY, seed=99)
    b.load(ckpt)
    assert b.pending == RetrainProgress(start_step=0, steps=8, seconds=b.pending.seconds, time_budget_s=0.0)
    assert b.step == 4 and b.pending_steps == 4
    lrs = []
    real_lr = b._lr
    b._lr = lambda k, total: lrs.append((k, total)) or real_lr(k, total)  # type: ignore[method-assign]
    stats = b.train(src, 3, metrics_path=metrics, progress=False, checkpoint_path=ckpt, checkpoint_every_s=0)
    assert stats["resumed_steps"] == 4 and stats["steps"] == 3
    assert lrs == [(k, 8) for k in range(4, 8)] + [(k, 3) for k in range(3)]  # the original schedule, then the new
    assert b.step == 11 and b.model_version == 2 and b.pending is None and b.pending_steps == 0
    assert _train_steps(tmp_path) == list(range(1, 12))
    assert "retrain" not in _load(ckpt) and _load(ckpt)["model_version"] == 2
    assert b.resume_pending(src) is None  # nothing left
    with pytest.raises(ValueError, match="checkpoint_every_s"):
        TrainConfig(checkpoint_every_s=-1.0).validate()
