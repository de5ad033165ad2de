"""SIGKILL soak of run_loop.py: kill the whole run at random moments, resume with the same command, repeat.

    python -m learner.bench.soak --workers 0 --kills 20 --out runs/soak_w0
    python -m learner.bench.soak --workers 2 --kills 20 --out runs/soak_w2

Each round starts `run_loop.py robot=sim` on RUN (`--out`/run) in its own process group, waits a random
time (uniform in [--min-s, --max-s] seconds after the first record of the round, so most kills land while
the loop is retraining or acting, not while Python starts), then SIGKILLs the group: the driver, the Ray
processes and actors, the learner in the middle of a retrain. After every kill it checks that the
committed record count never fell and whether the kill cut a retrain (the checkpoint holds an unfinished
one). After the kills the same command runs to the end; a reference run without kills (RUN_ref) gives
the model version (number of retrains) a single-process soaked run must end at (a fleet's learner merges
retrain points it missed, so there the last point must be met). Writes OUT/soak.json and prints a
summary. Simulator only; the small network of the loop's tests keeps one round short.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from learner.loop.learner_side import learner_state_path

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "learner.model.stem_width=8", "learner.model.widths=[16,16,32]", "learner.model.depths=[1,1,1]",
    "learner.model.fpn_width=16", "learner.batch_size=2", "learner.max_queries=8", "loop.progress=false",
    "loop.eval_scenes=0", "robot.interactions_per_scene=8", "robot.domain=narrow", "loop.eval_domain=narrow",
]


def records(run: Path) -> int:
    """Committed records of the run (0 when nothing is there yet)."""
    from data.shards import RunLog

    try:
        with RunLog.open(run) as log:
            return len(log)
    except (FileNotFoundError, ValueError):
        return 0


def checkpoint_state(run: Path) -> dict[str, Any]:
    path = run / "checkpoints" / "last.pt"
    if not path.exists():
        return {"model_version": 0, "step": 0, "mid_retrain": False}
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unreadable checkpoint is a soak failure to report
        return {"error": f"{type(e).__name__}: {e}"}
    return {"model_version": int(ck["model_version"]), "step": int(ck["step"]), "mid_retrain": bool(ck.get("retrain"))}


def command(run: Path, workers: int, overrides: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "run_loop.py"), "robot=sim", f"hydra.run.dir={run}", *SMALL,
            f"loop.workers={workers}", *overrides]


def final_version(run: Path) -> int:
    return checkpoint_state(run).get("model_version", -1)


def last_retrain_point(run: Path) -> int:
    """The log size at the learner's last handled retrain point (from its state file), -1 before one."""
    path = learner_state_path(run)
    return int(json.loads(path.read_text()).get("retrain_checked", -1)) if path else -1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--out", required=True)
    ap.add_argument("--min-s", type=float, default=2.0)
    ap.add_argument("--max-s", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--interactions", type=int, default=60)
    ap.add_argument("--update-interval", type=int, default=10)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--checkpoint-every", type=float, default=3.0, help="learner.checkpoint_every_s")
    ap.add_argument("--no-reference", action="store_true", help="skip the run without kills")
    ap.add_argument("--retrain-points", default="merge", choices=["merge", "every"], help="loop.retrain_points")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    run = out / "run"
    overrides = [f"loop.interactions={a.interactions}", f"loop.update_interval={a.update_interval}",
                 f"loop.train_steps={a.train_steps}", f"learner.checkpoint_every_s={a.checkpoint_every}",
                 "loop.time_budget=0", f"loop.retrain_points={a.retrain_points}"]
    cmd = command(run, a.workers, overrides)
    rng = random.Random(a.seed)
    kills: list[dict[str, Any]] = []
    t0 = time.time()
    last = 0
    while len(kills) < a.kills:
        start_records = records(run)
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        delay = rng.uniform(a.min_s, a.max_s)
        t_round = time.time()
        while p.poll() is None and records(run) == start_records and time.time() - t_round < 120:
            time.sleep(0.2)  # wait for the round's first record (start-up is not what the soak tests)
        time.sleep(delay)
        if p.poll() is not None:
            print(f"round {len(kills) + 1}: the run finished before its kill (rc {p.returncode}); soak complete early")
            break
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        time.sleep(1.0)
        n = records(run)
        ck = checkpoint_state(run)
        kills.append({"kill": len(kills) + 1, "delay_s": delay, "records": n, "fell": n < last, **ck})
        print(f"kill {len(kills):2d}: {n} records (before {last}), checkpoint v{ck.get('model_version')} step "
              f"{ck.get('step')}{' MID-RETRAIN' if ck.get('mid_retrain') else ''}", flush=True)
        last = max(last, n)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    soaked = {"rc": r.returncode, "records": records(run), "model_version": final_version(run),
              "last_retrain_point": last_retrain_point(run), "stderr_tail": r.stderr[-1500:] if r.returncode else ""}
    ref: dict[str, Any] = {}
    if not a.no_reference:
        ref_run = out / "run_ref"
        rr = subprocess.run(command(ref_run, a.workers, overrides), cwd=ROOT, capture_output=True, text=True)
        ref = {"rc": rr.returncode, "records": records(ref_run), "model_version": final_version(ref_run),
               "last_retrain_point": last_retrain_point(ref_run)}
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
    train_rows = [(m["model_version"], m["step"]) for m in metrics if m["kind"] == "train"]
    result = {
        "workers": a.workers, "kills": len(kills), "mid_retrain_kills": sum(k.get("mid_retrain", False) for k in kills),
        "count_fell": any(k["fell"] for k in kills), "soaked": soaked, "reference": ref,
        "same_retrains_as_reference": bool(ref) and soaked["model_version"] == ref.get("model_version"),
        "duplicate_train_rows": len(train_rows) - len(set(train_rows)),
        "wall_s": time.time() - t0, "command": " ".join(cmd), "per_kill": kills,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "per_kill"}, indent=1))
    # single process: every retrain point is met, so the soaked run must end at the reference's model version;
    # the fleet's learner merges the points it missed (learner/loop/learner_side.py): the last point must be met
    last_point = (a.interactions // a.update_interval) * a.update_interval
    deterministic = a.workers == 0 or a.retrain_points == "every"
    retrains_ok = result["same_retrains_as_reference"] if deterministic and ref else soaked["last_retrain_point"] >= last_point
    ok = (not result["count_fell"] and soaked["rc"] == 0 and soaked["records"] == a.interactions and retrains_ok
          and result["duplicate_train_rows"] == 0)
    result["ok"] = ok
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
