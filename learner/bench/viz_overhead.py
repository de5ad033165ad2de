"""What does the live Rerun view (`loop.viz=rerun`) cost the loop? Measured on real sim interactions.

    python -m learner.bench.viz_overhead [--n 60] [--checkpoint RUN/checkpoints/last.pt] [--append]

Runs the loop's own `InteractiveLoop.interact` (capture, hypotheses, agent, action, capture, frame
difference, log append) on the default sim robot (320x240, cluttered), `--n` interactions without and
`--n` with the live view writing an .rrd file, in pairs of one each in a seeded random order (so drift
in machine load and the position of an interaction in its scene hit both arms alike). Without `--checkpoint` the model is untrained
(cold start: no hypotheses, the shortest interactions, hence the largest relative cost); with one, the
trained model proposes hypotheses as in a running loop. Reports per arm: mean / median wall seconds per
interaction and process CPU seconds per interaction (Rerun encodes and writes in its own threads, so CPU
counts those too), the live view's own time in the loop's thread (`viz_seconds`), and the difference of
the means with its standard error: the two arms run different interactions, so this end-to-end number
is noisy (a trained model's interactions vary by 0.3 s). Hence also the isolated cost, on identical
work: after every interaction of the arm without the view, its record is logged to the view and
flushed to the file synchronously, timed (wall) and CPU-counted (all threads of the process, Rerun's
encoder and writer included): the view's whole cost per interaction, as a share of that interaction's
own time. Plus the .rrd size per interaction. `--append` adds the table to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from data.frame_diff import FrameDiffConfig
from data.log import InteractionLog
from data.rerun_view import LiveRerun, require_rerun
from learner.loop.agent import AgentConfig
from learner.loop.interactive import InteractiveLoop, LoopSettings
from learner.model.network import SegmenterConfig
from learner.train.trainer import TrainConfig
from robot.sim_robot import SimRobot, SimRobotConfig

BENCH_FILE = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def run(n: int, checkpoint: str | None, seed: int = 0) -> dict:
    rr = require_rerun()
    tmp = Path(tempfile.mkdtemp(prefix="viz_overhead_"))
    robot = SimRobot(SimRobotConfig(seed=seed))
    loop = InteractiveLoop(tmp, robot, LoopSettings(seed=seed, progress=False), TrainConfig(), SegmenterConfig(),
                           AgentConfig(), FrameDiffConfig())  # fmt: skip
    if checkpoint:
        loop.trainer.load(checkpoint, optimizer=False)
        loop.trainer.model_version = 1  # trained: the agent acts on the model's hypotheses
    arms: dict[str, dict[str, list[float]]] = {a: {"wall": [], "cpu": [], "viz": []} for a in ("none", "rerun")}
    iso: dict[str, list[float]] = {"wall": [], "cpu": [], "share": []}
    viz = LiveRerun(tmp / "bench.rrd", tmp, tmp / "metrics.jsonl")
    with InteractionLog.open_or_create(tmp / "interactions.zarr", 240, 320) as log, robot:
        loop.interact(log)  # warm-up (first render, model, lazy imports), not counted
        rng = np.random.default_rng(seed)
        order = [arm for _ in range(n) for arm in rng.permutation(["none", "rerun"])]
        for arm in order:
            loop._viz = viz if arm == "rerun" else None
            c0, t0 = time.process_time(), time.perf_counter()
            row = loop.interact(log)
            if arm == "rerun":
                viz.poll()
            arms[arm]["wall"].append(time.perf_counter() - t0)
            arms[arm]["cpu"].append(time.process_time() - c0)
            arms[arm]["viz"].append(row.get("viz_seconds", 0.0))
            if arm == "none":  # the same record through the view, synchronously: its whole cost
                rec = log[row["index"]]
                c0, t0 = time.process_time(), time.perf_counter()
                viz.record(row["index"], rec)
                viz.poll()
                viz.stream.flush()
                iso["wall"].append(time.perf_counter() - t0)
                iso["cpu"].append(time.process_time() - c0)
                iso["share"].append(iso["cpu"][-1] / arms[arm]["wall"][-1])
        loop._viz = None
        t0 = time.perf_counter()
        viz.close()
        close_s = time.perf_counter() - t0
    rrd = (tmp / "bench.rrd").stat().st_size / 2  # both arms' records are in the file
    out = {"n": n, "checkpoint": checkpoint or "", "rerun_version": rr.__version__, "close_s": close_s,
           "rrd_bytes_per_interaction": rrd / n, "cores": os.cpu_count(),
           "load_average": os.getloadavg()[0]}  # fmt: skip
    for a, v in arms.items():
        w, c = np.array(v["wall"]), np.array(v["cpu"])
        out[a] = {"wall_mean": float(w.mean()), "wall_median": float(np.median(w)), "cpu_mean": float(c.mean()),
                  "viz_mean": float(np.mean(v["viz"]))}  # fmt: skip
    base, live = out["none"], out["rerun"]
    se = float(np.hypot(np.std(arms["none"]["wall"], ddof=1), np.std(arms["rerun"]["wall"], ddof=1)) / np.sqrt(n))
    out["overhead_wall_pct"] = 100 * (live["wall_mean"] - base["wall_mean"]) / base["wall_mean"]
    out["overhead_wall_se_pct"] = 100 * se / base["wall_mean"]
    out["overhead_cpu_pct"] = 100 * (live["cpu_mean"] - base["cpu_mean"]) / base["wall_mean"]
    out["viz_thread_pct"] = 100 * live["viz_mean"] / live["wall_mean"]
    out["isolated"] = {"wall_ms": 1000 * float(np.mean(iso["wall"])), "cpu_ms": 1000 * float(np.mean(iso["cpu"])),
                       "share_pct": 100 * float(np.mean(iso["share"])),
                       "share_p95_pct": 100 * float(np.percentile(iso["share"], 95)),
                       "pct_of_mean": 100 * float(np.mean(iso["cpu"])) / base["wall_mean"]}  # fmt: skip
    return out


def table(r: dict) -> str:
    b, v = r["none"], r["rerun"]
    return "\n".join([
        "| arm | wall s / interaction (mean) | median | process CPU s / interaction | live view in the loop's thread |",
        "|---|---|---|---|---|",
        f"| loop.viz=none | {b['wall_mean']:.3f} | {b['wall_median']:.3f} | {b['cpu_mean']:.3f} | - |",
        f"| loop.viz=rerun | {v['wall_mean']:.3f} | {v['wall_median']:.3f} | {v['cpu_mean']:.3f} | "
        f"{1000 * v['viz_mean']:.1f} ms ({r['viz_thread_pct']:.1f}%) |",
        "",
        f"Isolated cost (the same records logged and flushed synchronously after each interaction without the "
        f"view): {r['isolated']['wall_ms']:.1f} ms wall, {r['isolated']['cpu_ms']:.1f} ms CPU of all threads per "
        f"interaction = {r['isolated']['pct_of_mean']:.1f}% of the mean interaction time (per interaction: mean "
        f"{r['isolated']['share_pct']:.1f}%, p95 {r['isolated']['share_p95_pct']:.1f}%).",
        "",
        f"End to end (different interactions in the two arms): {r['overhead_wall_pct']:+.1f}% "
        f"(standard error {r['overhead_wall_se_pct']:.1f}%) wall time per interaction, "
        f"{r['overhead_cpu_pct']:+.1f}% CPU (of the interaction's wall time, Rerun's threads included); "
        f".rrd {r['rrd_bytes_per_interaction'] / 1024:.0f} KiB per interaction; closing the file "
        f"{1000 * r['close_s']:.0f} ms. rerun-sdk {r['rerun_version']}, {r['n']} interactions per arm in pairs "
        f"of random order, {r['cores']} cores, load average {r['load_average']:.1f} at the end.",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m learner.bench.viz_overhead", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60, help="interactions per arm")
    ap.add_argument("--checkpoint", help="a trainer checkpoint (RUN/checkpoints/last.pt): a trained model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--append", action="store_true", help=f"append the result to {BENCH_FILE}")
    a = ap.parse_args(argv)
    r = run(a.n, a.checkpoint, a.seed)
    cmd = "python -m learner.bench.viz_overhead " + " ".join(
        f"--{k} {v}" for k, v in (("n", a.n), ("checkpoint", a.checkpoint)) if v)
    what = "trained model" if a.checkpoint else "cold start (no hypotheses: the shortest interactions)"
    text = (f"\n### learner.bench.viz_overhead: the live Rerun view — {dt.date.today()} ({what})\n\n"
            f"Command: `{cmd}`\n\n{table(r)}\n")
    print(text)
    if a.append:
        with open(BENCH_FILE, "a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
