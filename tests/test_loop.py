"""run_loop.py end to end in sim: smoke run, resume, SIGKILL + restart, bad overrides."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from data.log import InteractionLog

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "learner.model.stem_width=8", "learner.model.widths=[16,16,32]", "learner.model.depths=[1,1,1]",
    "learner.model.fpn_width=16", "learner.batch_size=2", "learner.max_queries=8", "loop.progress=false",
    "loop.eval_scenes=2", "loop.eval_interval=0", "robot.interactions_per_scene=8",
]


def run_loop(run_dir: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "run_loop.py"), "robot=sim", f"hydra.run.dir={run_dir}", *TINY, *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def interaction_indices(run_dir: Path) -> list[int]:
    return [m["index"] for m in metrics(run_dir) if m["kind"] == "interaction"]


def test_smoke_run_then_resume(tmp_path):
    run = tmp_path / "run"
    # a latent-code model (Latent-MaskRCNN) through the whole loop: training with the posterior and KL
    r = run_loop(run, "loop.interactions=14", "loop.update_interval=10", "loop.train_steps=2", "learner.model.latent_dim=4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Summary" in r.stdout and "deployable model" in r.stdout
    with InteractionLog.open(run / "interactions.zarr", "r") as log:
        assert len(log) == 14
        labels = log.read_field("label")
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 1).any()
    assert (run / "checkpoints" / "last.pt").exists()
    ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["model_version"] >= 1 and ckpt["step"] >= 2 and ckpt["model_config"]["latent_dim"] == 4
    train_rows = [m for m in metrics(run) if m["kind"] == "train"]
    assert train_rows and all(np.isfinite(m["kl_nats"]) and m["kl_nats"] >= 0 for m in train_rows)
    model = torch.load(run / "model" / "segmenter.pt", map_location="cpu", weights_only=True)
    assert "model" in model and model["interactions"] == 14
    kinds = {m["kind"] for m in metrics(run)}
    assert {"interaction", "train", "eval", "baseline"} <= kinds
    assert interaction_indices(run) == list(range(14))

    # same command, same run directory, a larger target: continues where it stopped (grasping
    # p-confidence masks of the trained model this time: exercises the agent's sampling hook)
    r = run_loop(run, "loop.interactions=20", "loop.update_interval=10", "loop.train_steps=2", "learner.model.latent_dim=4",
                 "agent.primitive=grasp", "agent.exploration=0", "agent.grasp_confidence_p=0.5",
                 "agent.grasp_confidence_samples=2")
    assert r.returncode == 0, r.stderr[-3000:]
    with InteractionLog.open(run / "interactions.zarr", "r") as log:
        assert len(log) == 20
        assert list(log.read_field("model_version"))[14:] and min(log.read_field("model_version")[14:]) >= 1
    assert interaction_indices(run) == list(range(20))  # no duplicate, no gap
    state = json.loads((run / "loop_state.json").read_text())
    assert state["interactions"] == 20 and state["model_version"] >= 2


def test_sigkill_then_restart_loses_nothing_committed(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "run_loop.py"), "robot=sim", f"hydra.run.dir={run}", *TINY,
           "loop.interactions=40", "loop.update_interval=100", "loop.train_steps=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log_path = run / "interactions.zarr"
    deadline = time.time() + 900  # a hang guard only: the loop is killed as soon as 6 records are committed
    committed = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if (log_path / "zarr.json").exists():
            try:
                with InteractionLog.open(log_path, "r") as log:
                    committed = len(log)
            except Exception:
                continue
            if committed >= 6:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert committed >= 6, "the loop did not get going"
    with InteractionLog.open(log_path, "r") as log:
        before_restart = len(log)
        first = [log[i].rgb_before.copy() for i in range(before_restart)]
    assert before_restart >= committed
    r = run_loop(run, "loop.interactions=" + str(before_restart + 3), "loop.update_interval=100", "loop.train_steps=1")
    assert r.returncode == 0, r.stderr[-3000:]
    with InteractionLog.open(log_path, "r") as log:
        assert len(log) == before_restart + 3
        for i in range(before_restart):  # every record committed before the kill is intact
            np.testing.assert_array_equal(log[i].rgb_before, first[i])
    idx = interaction_indices(run)
    assert idx[-3:] == list(range(before_restart, before_restart + 3))


@pytest.mark.parametrize(
    "override, needle",
    [
        ("robot=nonexistent", "robot"),
        ("loop.interactions=-3", "loop.interactions"),
        ("loop.interactionz=5", "interactionz"),
        ("learner.tau=1.5", "learner.tau"),
        ("learner.model.latent_dim=-1", "learner.model.latent_dim"),
        ("agent.selection=greedy", "agent.selection"),
    ],
)
def test_bad_overrides_fail_clearly(tmp_path, override, needle):
    r = run_loop(tmp_path / "run", override, timeout=120)
    assert r.returncode != 0
    assert needle in (r.stderr + r.stdout)
    assert not (tmp_path / "run" / "interactions.zarr").exists()
