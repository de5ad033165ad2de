"""Single process vs actor-learner on this machine: rate, robot idle time, AP50 after the same wall time.

    python -m learner.bench.fleet --out runs/bench_fleet --budget 600 --workers 0 1 2

Runs `run_loop.py robot=sim` (the main job's recipe: randomised twin, retrain every `--update-interval`,
evaluation on cross-domain val cells at the end) once per `--workers` value, each with the same
`loop.time_budget` of acting (`--budget` seconds) and more interactions than fit in it. From each run's
metrics.jsonl: interactions, the rate (interactions per second over the acting window, all workers),
the robots' idle fraction (share of the acting window outside an interaction: retraining and evaluating
in place for the single process), the retrains done, the wall time until the final model was written,
and the final held-out AP50. Prints a markdown table and writes OUT/fleet.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def acting_figures(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Rate and idle fraction from the interaction rows ("seconds", "unix" end time, "worker")."""
    inter = [m for m in rows if m["kind"] == "interaction" and "unix" in m]
    if not inter:
        return {"interactions": 0}
    by_worker: dict[int, list[dict]] = {}
    for m in inter:
        by_worker.setdefault(int(m.get("worker", 0)), []).append(m)
    start = min(m["unix"] - m["seconds"] for m in inter)
    end = max(m["unix"] for m in inter)
    busy = sum(m["seconds"] for m in inter)
    windows = sum(max(x["unix"] for x in ms) - min(x["unix"] - x["seconds"] for x in ms) for ms in by_worker.values())
    return {"interactions": len(inter), "acting_window_s": end - start, "rate_per_s": len(inter) / max(end - start, 1e-9),
            "idle_fraction": 1.0 - busy / max(windows, 1e-9), "acting_workers": len(by_worker)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=600.0, help="seconds of acting (loop.time_budget)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--update-interval", type=int, default=100)
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--eval-scenes", type=int, default=30)
    ap.add_argument("extra", nargs="*", help="more run_loop.py overrides")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for w in a.workers:
        run = out / f"workers_{w}"
        cmd = [sys.executable, str(ROOT / "run_loop.py"), "robot=sim", f"hydra.run.dir={run}", f"loop.workers={w}",
               "loop.interactions=100000", f"loop.time_budget={a.budget}", f"loop.update_interval={a.update_interval}",
               f"loop.train_steps={a.train_steps}", "loop.eval_interval=0", f"loop.eval_scenes={a.eval_scenes}",
               "loop.progress=false", *a.extra]
        t0 = time.time()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.time() - t0
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
        evals = [m for m in rows if m["kind"] == "eval"]
        base = [m for m in rows if m["kind"] == "baseline"]
        res = {"workers": w, "rc": r.returncode, "wall_s": wall, **acting_figures(rows),
               "retrains": max([m["model_version"] for m in rows if m["kind"] == "train"], default=-1) + 1,
               "AP50": evals[-1]["AP50"] if evals else None, "eval_model_version": evals[-1]["model_version"] if evals else None,
               "dc_AP50": base[-1]["AP50"] if base else None, "command": " ".join(cmd)}
        if r.returncode:
            res["stderr_tail"] = r.stderr[-1500:]
        results.append(res)
        print(json.dumps(res), flush=True)
    (out / "fleet.json").write_text(json.dumps(results, indent=1))
    one = next((x for x in results if x["workers"] == 1), None)
    print("\n| loop | interactions | rate (1/s) | rate vs 1 collector | robot idle | retrains | wall to final model (s) | AP50 (cross val) |")
    print("|---|---|---|---|---|---|---|---|")
    for x in results:
        ratio = x.get("rate_per_s", 0) / one["rate_per_s"] if one and one.get("rate_per_s") else float("nan")
        name = "single process" if x["workers"] == 0 else f"actor-learner, {x['workers']} collector(s)"
        ap50 = "-" if x["AP50"] is None else f"{x['AP50']:.3f}"
        print(f"| {name} | {x.get('interactions', 0)} | {x.get('rate_per_s', 0):.3f} | {ratio:.2f} | "
              f"{x.get('idle_fraction', float('nan')):.3f} | {x['retrains']} | {x['wall_s']:.0f} | {ap50} |")
    return 0 if all(x["rc"] == 0 for x in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
