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
    "robot.domain=narrow", "loop.eval_domain=narrow",  # the fixed cell: fast and stable for the loop's mechanics
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
        ("learner.init_lr=-1", "learner.init_lr"),
        ("learner.model.latent_dim=-1", "learner.model.latent_dim"),
        ("agent.selection=greedy", "agent.selection"),
        ("loop.eval_domain=mars", "loop.eval_domain"),
    ],
)
def test_bad_overrides_fail_clearly(tmp_path, override, needle):
    r = run_loop(tmp_path / "run", override, timeout=120)
    assert r.returncode != 0
    assert needle in (r.stderr + r.stdout)
    assert not (tmp_path / "run" / "interactions.zarr").exists()


# ------------------------------------------------------------------ learner.init: start from a trained model
QUICK = ["loop.eval_scenes=0"]  # the init tests need no held-out evaluation


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Run A: a few interactions and one retrain of 2 steps (the model the init tests start from)."""
    run = tmp_path_factory.mktemp("init") / "A"
    r = run_loop(run, *QUICK, "loop.interactions=4", "loop.update_interval=4", "loop.train_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert checkpoint(run / "model" / "segmenter.pt")["model_version"] == 1
    return run


def test_init_from_a_run_then_resume(trained_run, tmp_path):
    a = checkpoint(trained_run / "model" / "segmenter.pt")
    run = tmp_path / "B"
    # no training in B's first part: its checkpoint is then exactly the model it started from; seeds at any
    # objectness so that the barely trained model proposes something from the first interaction on
    args = [*QUICK, f"learner.init={trained_run}", "agent.proposals.objectness_threshold=0.0", "agent.exploration=0"]
    r = run_loop(run, *args, "loop.interactions=2", "loop.update_interval=2", "loop.train_steps=0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "learner.init: starting from" in r.stdout + r.stderr
    b = checkpoint(run / "checkpoints" / "last.pt")
    assert b["model_version"] == 1 and b["step"] == 0 and b["model_config"] == a["model_config"]
    assert set(b["model"]) == set(a["model"]) and all(torch.equal(b["model"][k], a["model"][k]) for k in a["model"])
    inits = [m for m in metrics(run) if m["kind"] == "init"]
    assert len(inits) == 1 and inits[0]["model_version"] == 1 and inits[0]["source"] == str(trained_run)
    assert inits[0]["checkpoint"] == str((trained_run / "model" / "segmenter.pt").resolve())
    first = [m for m in metrics(run) if m["kind"] == "interaction"][0]
    assert first["model_version"] == 1 and first["n_hypotheses"] > 0 and first["chosen_hypothesis"] >= 0  # no cold start
    state = json.loads((run / "loop_state.json").read_text())
    assert state["init"]["source"] == str(trained_run) and state["model_version"] == 1

    # the same command again, a larger target and training on: resumes from B's own checkpoint, no second init
    r = run_loop(run, *args, "loop.interactions=4", "loop.update_interval=2", "loop.train_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ignored" in r.stdout + r.stderr
    assert [m["kind"] for m in metrics(run)].count("init") == 1
    b2 = checkpoint(run / "checkpoints" / "last.pt")
    assert b2["step"] == 2 and b2["model_version"] == 2  # retrained at 4 on top of v1
    # once more: the step count of B's own checkpoint continues (a fresh start from A would be back at 2)
    r = run_loop(run, *args, "loop.interactions=6", "loop.update_interval=2", "loop.train_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    b3 = checkpoint(run / "checkpoints" / "last.pt")
    assert b3["step"] == 4 and b3["model_version"] == 3
    assert [m["kind"] for m in metrics(run)].count("init") == 1
    assert interaction_indices(run) == list(range(6))
    assert json.loads((run / "loop_state.json").read_text())["init"]["source"] == str(trained_run)


def test_a_run_from_learner_init_fine_tunes_at_init_lr(tmp_path):
    """learner.init_lr is the learning rate of a run that starts, or resumed once started, from learner.init
    (single process: loop_state.json; actor-learner: learner_state.json); a run from scratch keeps learner.lr,
    also when resumed with learner.init given again; null turns it off."""
    from omegaconf import OmegaConf

    from learner.loop.config import LearnerSchema
    from learner.loop.setup import train_config

    def lr(run: Path, **learner) -> float:
        return train_config(OmegaConf.create({"learner": OmegaConf.structured(LearnerSchema(**learner))}), run).lr

    base, fine = LearnerSchema().lr, LearnerSchema().init_lr
    assert fine is not None and fine < base
    fresh = tmp_path / "fresh"
    assert lr(fresh) == base and lr(fresh, init="runs/wide") == fine and lr(fresh, init="runs/wide", init_lr=None) == base
    for state_name in ("loop_state.json", "learner_state.json"):
        run = tmp_path / state_name
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.pt").write_bytes(b"")
        (run / state_name).write_text(json.dumps({"init": {"source": "runs/wide"}}))
        assert lr(run) == fine  # resumed: the run's own record decides, not the command line
    scratch = tmp_path / "scratch"
    (scratch / "checkpoints").mkdir(parents=True)
    (scratch / "checkpoints" / "last.pt").write_bytes(b"")
    (scratch / "loop_state.json").write_text(json.dumps({"init": {}}))
    assert lr(scratch, init="runs/wide") == base


def test_init_from_an_onnx_export_uses_its_source(trained_run, tmp_path):
    out = tmp_path / "export"
    r = subprocess.run([sys.executable, "-m", "learner.deploy", "export", str(trained_run), str(out), "--no-mc-dropout"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "B"
    # a learner.model.* that differs from the checkpoint's: the checkpoint's architecture wins, and the run says so
    r = run_loop(run, *QUICK, f"learner.init={out}", "loop.interactions=1", "loop.train_steps=0", "learner.model.fpn_width=24")
    assert r.returncode == 0, r.stderr[-3000:]
    (init,) = [m for m in metrics(run) if m["kind"] == "init"]
    assert init["checkpoint"] == str((trained_run / "model" / "segmenter.pt").resolve())
    assert init["source_kind"] == "onnx_export_source" and init["model_config_from_checkpoint"] == ["fpn_width"]
    assert "architecture wins" in r.stdout + r.stderr
    assert checkpoint(run / "model" / "segmenter.pt")["model_config"]["fpn_width"] == 16

    # an ONNX graph without its model card: nothing names the checkpoint, and the graph cannot be fine-tuned
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "segmenter.onnx").write_bytes((out / "segmenter.onnx").read_bytes())
    r = run_loop(tmp_path / "C", *QUICK, f"learner.init={bare}", "loop.interactions=1", timeout=120)
    assert r.returncode == 2
    assert "cannot be fine-tuned" in r.stderr and "model_card.json" in r.stderr and str(bare) in r.stderr


@pytest.mark.parametrize("what", ["missing", "not_a_checkpoint", "empty_dir"])
def test_bad_init_fails_at_start_naming_the_path(tmp_path, what):
    path = {"missing": tmp_path / "nonexistent", "not_a_checkpoint": tmp_path / "notes.pt",
            "empty_dir": tmp_path / "empty"}[what]
    if what == "not_a_checkpoint":
        path.write_text("not a checkpoint")
    if what == "empty_dir":
        path.mkdir()
    r = run_loop(tmp_path / "run", f"learner.init={path}", timeout=120)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "learner.init" in r.stderr and str(path) in r.stderr
    assert not (tmp_path / "run" / "interactions.zarr").exists()


def test_pretrain_recipe(tmp_path):
    r = subprocess.run([sys.executable, "-m", "learner.pretrain", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "robot.domain=wide" in r.stdout and "learner.init=" in r.stdout
    run = tmp_path / "wide"
    # a tiny pretraining: the recipe's domain, the command line's budget (it wins over the recipe)
    tiny = [o for o in TINY if "domain=" not in o]  # the recipe sets the domains
    cmd = [sys.executable, "-m", "learner.pretrain", f"hydra.run.dir={run}", *tiny, *QUICK, "loop.interactions=2",
           "loop.update_interval=2", "loop.train_steps=1"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"python run_loop.py robot=sim learner.init={run}" in r.stdout
    cfg = (run / ".hydra" / "config.yaml").read_text()
    assert "domain: wide" in cfg and "interactions: 2\n" in cfg and "train_steps: 1\n" in cfg
    assert "eval_domain: cross" in cfg  # the held-out scenes: evaluation-only objects in randomised cells
    assert checkpoint(run / "model" / "segmenter.pt")["model_version"] == 1


def test_held_out_evaluation_on_cross_domain_scenes(tmp_path):
    """loop.eval_domain=cross: the held-out scenes are randomised cells with evaluation-only objects,
    exported next to (not over) the default cell's, and the evaluation row reports on them."""
    run = tmp_path / "run"
    r = run_loop(run, "loop.interactions=2", "loop.update_interval=2", "loop.train_steps=1", "loop.eval_domain=cross")
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((run / "eval_scenes_cross" / "meta.json").read_text())
    assert meta["domain"] == "cross" and meta["split"] == "val"
    assert not (run / "eval_scenes").exists()
    ev = [m for m in metrics(run) if m["kind"] == "eval"]
    assert len(ev) == 1 and 0.0 <= ev[0]["AP50"] <= 1.0


def test_a_run_from_a_trained_model_is_evaluated_before_its_first_interaction(trained_run, tmp_path):
    """learner.init with periodic evaluation: the first evaluation row is the given model in this cell, at
    0 interactions (the first point of an adaptation curve), then the periodic ones."""
    run = tmp_path / "C"
    r = run_loop(run, f"learner.init={trained_run}", "loop.interactions=2", "loop.update_interval=2",
                 "loop.train_steps=1", "loop.eval_interval=2")
    assert r.returncode == 0, r.stderr[-3000:]
    ev = [m for m in metrics(run) if m["kind"] == "eval"]
    assert [(e["interactions"], e["model_version"]) for e in ev] == [(0, 1), (2, 2)]


def test_the_main_job_runs_in_the_randomised_twin_and_evaluates_across_domains():
    """The README's main job (`run_loop.py robot=sim`, no overrides): randomised cells, training objects, held-out
    cross-domain val cells, a 15-minute budget, zoom augmentation on."""
    r = subprocess.run([sys.executable, str(ROOT / "run_loop.py"), "robot=sim", "--cfg", "job"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    import yaml

    cfg = yaml.safe_load(r.stdout)
    assert cfg["robot"]["domain"] == "wide" and cfg["robot"]["split"] == "train" and cfg["robot"]["cell"] == ""
    assert cfg["loop"]["eval_domain"] == "cross" and cfg["loop"]["eval_split"] == "val"
    assert cfg["loop"]["time_budget"] == 900 and cfg["learner"]["zoom_prob"] == 0.5
