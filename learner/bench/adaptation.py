"""Adaptation curves: held-out quality against interactions for loop runs in one cell (e.g. from scratch and
from a pretrained model), read from their metrics.jsonl, next to the depth-clustering baseline.

    python -m learner.bench.adaptation RUN_A RUN_B ... --out docs/adaptation.png [--names scratch,pretrained]

The runs are `run_loop.py` run directories evaluated in the same held-out scenes (e.g. `robot.cell=side_kinect
loop.eval_domain=wide`, which evaluates in that cell); a run started from a model (`learner.init`) has its first
point at 0 interactions. Writes the PNG and prints a markdown table (AP50 / boundary F per evaluation).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = ("AP50", "boundary_F")


def curves(run: Path) -> tuple[list[dict], dict]:
    """(evaluation rows sorted by interactions, the depth-clustering baseline row) of a run directory."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = sorted((r for r in rows if r.get("kind") == "eval"), key=lambda r: r["interactions"])
    base = next((r for r in rows if r.get("kind") == "baseline"), {})
    return evals, base


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories with metrics.jsonl")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--names", help="comma-separated labels (default: the directory names)")
    a = ap.parse_args(argv)
    names = a.names.split(",") if a.names else [Path(r).name for r in a.runs]
    if len(names) != len(a.runs):
        ap.error(f"--names has {len(names)} labels for {len(a.runs)} runs")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(KEYS), figsize=(5 * len(KEYS), 4))
    lines = ["| run | interactions | " + " | ".join(KEYS) + " |", "|---|---|" + "---|" * len(KEYS)]
    base: dict = {}
    for run, name in zip(a.runs, names, strict=True):
        evals, b = curves(Path(run))
        base = base or b
        for ax, key in zip(axes, KEYS, strict=True):
            ax.plot([e["interactions"] for e in evals], [e[key] for e in evals], marker="o", label=name)
        lines += [f"| {name} | {e['interactions']} | " + " | ".join(f"{e[k]:.3f}" for k in KEYS) + " |" for e in evals]
    for ax, key in zip(axes, KEYS, strict=True):
        if key in base:
            ax.axhline(base[key], color="k", linestyle="--", label="depth clustering")
        ax.set_xlabel("interactions in the cell")
        ax.set_ylabel(f"held-out {key}")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=100)
    plt.close(fig)
    if base:
        lines.append("| depth clustering | - | " + " | ".join(f"{base[k]:.3f}" for k in KEYS) + " |")
    print("\n".join(lines))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
