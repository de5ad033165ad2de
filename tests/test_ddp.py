"""Multi-process training under torch DDP (learner/train/distributed.py): a 2-process gloo run launched by
torchrun trains the real model and its loss falls like a 1-process run with the same global batch; its
checkpoint is the plain format; rank 0 alone writes metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.bench_log import synthetic_record
from data.log import InteractionLog
from learner.model.network import SegmenterConfig, build_model
from learner.train import distributed
from learner.train.trainer import CHECKPOINT_NAME, TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
H, W = 96, 128  # small images: the default (real) network at a fraction of the log's usual 240x320
STEPS, BATCH = 8, 8  # global batch 8 = 4 images per rank
# zoom off: a zoom crop can leave one rank's half-batch without a labelled mask, and the mean of the ranks'
# losses then weighs the mask term by 1/2 for that step (DDP's per-rank means, expected, but noisy to compare)
COMMON = ["--steps", str(STEPS), "--batch-size", str(BATCH), "--threads", "1", "--log-every", "1",
          "--seed", "0", "--zoom-prob", "0"]


@pytest.fixture(scope="module")
def small_log(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "interactions.zarr"
    with InteractionLog.create(path, H, W) as log:
        for i in range(12):
            log.append(synthetic_record(i, H, W, n_hypotheses=2))
    return path


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(out: Path) -> np.ndarray:
    return np.array([r["loss"] for r in _rows(out)])


def test_launch_env_is_read_and_checked():
    assert distributed.launch_env({}) is None
    env = distributed.launch_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert env is not None and (env.rank, env.world_size, env.local_rank) == (1, 2, 1)
    with pytest.raises(ValueError, match="incomplete"):
        distributed.launch_env({"RANK": "0"})
    with pytest.raises(ValueError, match="invalid"):
        distributed.launch_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})
    assert distributed.backend_for("cpu") == "gloo" and distributed.backend_for("cuda:0") == "nccl"
    ctx = distributed.context()  # no process group in this process: a single process
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    assert distributed.broadcast_flags([True, False]) == [True, False] and distributed.mean_scalar(2.5) == 2.5


def test_two_process_gloo_run_trains_like_one_process(small_log, tmp_path):
    ddp_out, one_out = tmp_path / "ddp", tmp_path / "one"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # `--` keeps torchrun from reading --log as an abbreviation of its own --log-dir (pytorch#120601)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "learner.train", "--", "--log", str(small_log), "--out", str(ddp_out), *COMMON]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "DDP: 2 processes (gloo), 4 of the global batch of 8" in run.stdout
    assert run.stdout.count("checkpoint ") == 1  # rank 0 alone reports

    from learner.train.trainer import main

    assert main(["--log", str(small_log), "--out", str(one_out), *COMMON]) == 0

    # one metrics writer: each step's row exactly once (two writers would double them), marked with the world size
    rows = _rows(ddp_out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["world_size"] == 2 and r["kind"] == "train" for r in rows)
    assert sorted(p.name for p in ddp_out.iterdir()) == [CHECKPOINT_NAME, "metrics.jsonl"]  # no rank-1 files, no .tmp

    # both losses fall, and the DDP curve follows the 1-process one. The two runs start from identical weights
    # (seed 0) but see different images (rank r draws from seed + r), so they agree only up to batch-sampling
    # noise: on this log, 3-step window means of DDP and 1-process runs differed by <= 0.06 (2% of the
    # initial loss) and their fall ratios by <= 0.01 over seeds 0-2, while the loss falls by 0.3-0.5 in 8
    # steps. A 10% band on the window means and 0.06 on the fall ratio leave ~5x room for that noise but
    # not for a run that does not learn. That the ranks train one model (averaged gradients) is checked
    # exactly by every DDP save, which refuses replicas whose parameters differ.
    one, ddp = _losses(one_out), _losses(ddp_out)
    assert len(one) == len(ddp) == STEPS
    win = 3
    for curve in (one, ddp):
        assert curve[-win:].mean() < 0.93 * curve[:win].mean(), curve
    scale = one[:win].mean()
    assert abs(ddp[:win].mean() - one[:win].mean()) < 0.10 * scale, (one, ddp)
    assert abs(ddp[-win:].mean() - one[-win:].mean()) < 0.10 * scale, (one, ddp)
    fall_one, fall_ddp = one[-win:].mean() / one[:win].mean(), ddp[-win:].mean() / ddp[:win].mean()
    assert abs(fall_ddp - fall_one) < 0.06, (fall_one, fall_ddp, one, ddp)

    # the checkpoint is the plain format: the module's own state dict, loadable by a plain (1-process) Trainer
    ckpt = torch.load(ddp_out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    plain_keys = set(build_model(SegmenterConfig()).state_dict())
    assert set(ckpt["model"]) == plain_keys  # no DDP "module." prefix
    assert ckpt["step"] == STEPS and ckpt["model_version"] == 1 and "retrain" not in ckpt
    assert len(ckpt["rank_rng"]["torch"]) == 2  # each rank's stream, for a DDP resume
    tr = Trainer(TrainConfig(batch_size=BATCH), SegmenterConfig(), seed=5)
    init = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.load(ddp_out / CHECKPOINT_NAME)
    assert tr.step == STEPS and tr.model_version == 1 and tr.pending is None
    assert any(not torch.equal(init[k], v) for k, v in tr.model.state_dict().items() if v.dtype.is_floating_point)
    tr.model.eval()
    with torch.no_grad():
        out = tr.model(torch.randn(1, tr.model.config.in_channels, H, W))
    assert all(torch.isfinite(v).all() for v in out.values())


def test_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setattr(distributed, "context", lambda: distributed.DistContext(rank=1, world_size=2, backend="gloo"))
    with pytest.raises(ValueError, match="divisible"):
        Trainer(TrainConfig(batch_size=3), SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1),
                                                           fpn_width=16))
    tr = Trainer(TrainConfig(batch_size=6), SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1),
                                                            fpn_width=16), seed=3)
    assert tr.local_batch_size == 3
    assert tr.rng.bit_generator.state == np.random.default_rng(3 + 1).bit_generator.state  # rank 1's own stream
