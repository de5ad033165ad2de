"""Inspect an interaction log: summary statistics, a self-contained HTML report, single interactions.

    python -m data.inspect PATH                       # text summary on stdout
    python -m data.inspect PATH --json                # the same summary as JSON
    python -m data.inspect PATH --html report.html [--max-rows 40 | --rows 3,17,-1] [--thumb-width 160]
    python -m data.inspect PATH --show -1 [--out last.png]
    python -m data.inspect PATH --rerun out.rrd [--range 100:200]   # a Rerun recording (the `viz` extra)
    python -m data.inspect PATH --rerun [--range -50:]               # spawn / serve the viewer instead
    python -m data.inspect PATH --verify [--json]     # decode every chunk: exit 1 if any is damaged

PATH is a run directory containing `interactions.zarr`, or the `.zarr` log itself, or a sharded run:
a run directory with `shards/worker_NNN.zarr` (one log per collector; `data/shards.py` `RunLog` reads them
as one log, records numbered by start time) or that `shards/` directory. Anything else is
an error (exit code 2, nothing written). No mode ends in a traceback: a store or array that cannot be
read prints one `inspect: error: ...` line naming the path (a damaged chunk: the array and records, see
`--verify`), exit code 2.

Summary: committed records; counts per label and per label_reason; positive rate by primitive, over
time (~10 bins of consecutive records) and by model_version; mask area of positives (mean, median,
p10, p90, in pixels and % of the image); hypotheses per record; grasp success rate (records with
grasp_success 0/1); time span of t_start and interactions per hour ((n - 1) start-to-start intervals
over the t_start span); size of the store on disk and bytes per interaction. Rates are positives /
all records of the group (`positive_rate`) and positives / (positives + negatives)
(`positive_rate_valid`, i.e. ignoring INVALID). Scalars come from bulk `read_fields`; the only
image-sized data read are the masks of positives (for the mask areas), and at most `--mask-sample`
of them (default 1000, a seeded random sample of the positives, so the output is deterministic and
a periodic pattern in the log cannot alias it; 0 = all): reading one mask costs ~1 ms, so
a 10k-record log stays at a few seconds. The summary says when the areas come from a sample.
A sharded run's summary also lists each shard (worker id, robot kind, records) and its disk size is
that of the shard stores.

HTML report (`--html`): one file, no external assets (images are base64 PNG data URIs): the summary
as tables, matplotlib plots (rolling positive rate vs interaction index, mask-area histogram) and a
contact sheet of up to `--max-rows` interactions (evenly spaced over the log, or `--rows`): before
RGB | after RGB | extracted mask over the before image (with the interaction pixel marked) | the
chosen hypothesis over the before image (or "none"), each with a caption. Thumbnails are
`--thumb-width` px wide (default 160) with the 2 low bits per channel dropped (invisible; halves the
PNGs of noisy camera images): ~70 kB per row, ~3 MB for 40 rows of 320x240 camera images.

Learning (when the run directory, the folder holding the log, has the loop's `metrics.jsonl`): the
summary gains `learning` (held-out AP50 / AP / overlap F / boundary F of every evaluation and the
depth-clustering baseline, positive and object-hit rate per model version, the training rows, the
code version of every session), the report its tables and three plots (held-out metrics per model
version next to the baseline, positive / object-hit rate per model version, training loss) and
`RUN/eval_preview.png`, the latest model's predictions on held-out scenes that the loop writes at
each evaluation (the report runs no model). Rows after the snapshot's last record are left out.

`--show I`: interaction I (negative counts from the end) as one PNG of the same four panels at full
resolution, side by side: (H, 4 W) pixels, to `--out` (default `interaction_{I:06d}.png`).

`--rerun OUT.rrd`: the committed records (or `--range A:B`, Python slice bounds, negative from the
end) with their metrics.jsonl rows as a Rerun recording (`data/rerun_view.py`, which also drives the
loop's live view). `--rerun` alone spawns the native viewer when there is a display, else serves the
web viewer (`--web-port`, `--grpc-port`) and prints its address until Ctrl-C. Without rerun-sdk
it says which extra installs it (exit code 2).

`--verify`: decodes every chunk holding committed rows of every array (`InteractionLog.verify`) and
prints one line per chunk that cannot be decoded (array, records, the decoder's error), then a summary
line: `verify: ok ...` (exit code 0) or `verify: DAMAGED ...` naming the damaged arrays and the records
affected (exit code 1); for a sharded run each line names the shard, and records are the run's global
indices (the shard's own in brackets). `--json`: the same as one JSON object. It only reads: damaged data is reported,
never repaired or rewritten (training skips such records: learner/train/data.py LogSource).

Safe while the loop is appending: the log is opened read-only, the committed count is taken once at
the start and every read stays below it (records appended meanwhile are not in the report), and
the store is never modified.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from data.log import InteractionLog, LogFormatError, VerifyResult, format_indices, records_text
from data.rerun_view import metrics_by_interaction, read_metrics
from data.schema import Label
from data.shards import RunLog, RunVerifyResult, find_logs

AnyLog = InteractionLog | RunLog  # one store, or a sharded run read as one log

LABEL_NAMES = tuple(m.name.lower() for m in Label)  # index = Label value
TIME_BINS = 10
DEFAULT_MASK_SAMPLE = 1000
MASK_BATCH = 256  # masks read per call (bounds memory: 256 x 320 x 240 bool = 20 MB)

# RGB colours for overlays
MASK_COLOUR = (0, 230, 60)
HYPOTHESIS_COLOUR = (255, 40, 220)
MARKER_COLOUR = (255, 30, 30)
LABEL_CSS = {"positive": "#1a7f37", "negative": "#b42318", "invalid": "#6e7781"}
EVAL_KEYS = ("AP50", "AP", "overlap_F", "boundary_F")  # held-out metrics shown per model version
METRICS_NAME = "metrics.jsonl"  # the loop's metrics, next to the log in the run directory
PREVIEW_NAME = "eval_preview.png"  # the loop's latest held-out predictions (learner/evaluate/preview.py)

SCALAR_FIELDS = (
    "label",
    "label_reason",
    "primitive",
    "model_version",
    "grasp_success",
    "hypothesis_count",
    "chosen_hypothesis",
    "t_start",
    "robot_kind",
)
ROW_FIELDS = (
    "rgb_before",
    "rgb_after",
    "mask",
    "hypotheses",
    "chosen_hypothesis",
    "pixel",
    "primitive",
    "label",
    "label_reason",
    "model_version",
    "grasp_success",
)


class InspectError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


# ----------------------------------------------------------------------------- opening


def resolve_log_path(path: str | os.PathLike) -> Path:
    """A run directory -> its `interactions.zarr`; anything else is returned unchanged."""
    p = Path(path)
    return p / "interactions.zarr" if (p / "interactions.zarr").is_dir() else p


def open_log(path: str | os.PathLike) -> AnyLog:
    """Open the log at `path` read-only: a run directory or .zarr log -> InteractionLog; a sharded run
    (shards/ in the run directory, or the shards/ directory) -> RunLog. InspectError if it is none."""
    try:
        layout = find_logs(path)
    except OSError:
        layout = None
    if (layout is not None and layout.sharded) or (layout is None and (Path(path) / "shards").is_dir()):
        try:
            return RunLog.open(path)
        except (OSError, LogFormatError) as e:  # nothing found, shards that disagree, a shard not a log
            raise InspectError(f"cannot read the sharded run: {e}") from None
    p = resolve_log_path(path)
    try:
        return InteractionLog.open(p, "r")
    except FileNotFoundError:
        raise InspectError(
            f"{path}: no such file or directory (expected a run directory containing "
            "interactions.zarr, or an interaction log .zarr)"
        ) from None
    except LogFormatError as e:
        raise InspectError(
            f"{path}: neither a run directory containing interactions.zarr nor a usable interaction log ({e})"
        ) from None
    except OSError as e:  # permissions, I/O errors
        raise InspectError(f"{path}: cannot read it ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- verify


def verify_json(v: VerifyResult, path: Path) -> dict[str, Any]:
    return {
        "path": str(path),
        "ok": not v.damage,
        "records": v.records,
        "hypothesis_rows": v.hypothesis_rows,
        "chunks": v.chunks,
        "damaged_records": list(v.damaged_records),
        "damaged": [{"array": d.array, "rows": list(d.rows), "records": list(d.records),
                     "owners_known": d.owners_known, "error": d.error} for d in v.damage],  # fmt: skip
    }


def verify_text(v: VerifyResult, path: Path) -> str:
    """One line per damaged chunk, then the summary line."""
    lines = [f"damaged chunk: array {d.array!r}, {d.where()}: {d.error}" for d in v.damage]
    chunks = f"{sum(v.chunks.values())} chunks in {len(v.chunks)} arrays"
    if not v.damage:
        lines.append(f"verify: ok: every chunk of the {v.records} committed records decodes ({chunks}); {path}")
    else:
        arrays = ", ".join(dict.fromkeys(d.array for d in v.damage))
        recs = v.damaged_records
        lines.append(f"verify: DAMAGED: {len(v.damage)} of {chunks} cannot be decoded, in {arrays}; records affected: "
                     f"{format_indices(recs) or 'unknown'} ({len(recs)} of {v.records}); {path} (nothing was changed)")
    return "\n".join(lines) + "\n"


def shard_verify_json(v: RunVerifyResult, path: Path) -> dict[str, Any]:
    """A sharded run's verify result (`verify_json`'s keys): records are global indices; per shard and per
    damaged chunk also the shard and `shard_records`, the shard's own indices."""
    return {
        **verify_json(v, path),
        "shards": [{"shard": str(r.shard.path), "worker_id": r.shard.worker_id, "robot_kind": r.shard.robot_kind,
                    "records": r.result.records, "damaged_records": sorted({x for d in r.damage for x in d.records})}
                   for r in v.shards],
        "damaged": [{"shard": str(r.shard.path), "worker_id": r.shard.worker_id, "array": d.array,
                     "rows": list(d.rows), "records": list(d.records), "shard_records": list(loc.records),
                     "owners_known": d.owners_known, "error": d.error}
                    for r in v.shards for d, loc in zip(r.damage, r.result.damage, strict=True)],
    }  # fmt: skip


def shard_verify_text(v: RunVerifyResult, path: Path) -> str:
    """One line per shard, one per damaged chunk (naming its shard), then the summary line."""
    lines = []
    for r in v.shards:
        kind = f", {r.shard.robot_kind}" if r.shard.robot_kind else ""
        sh = f"shard {r.shard.path.name} (worker {r.shard.worker_id}{kind})"
        bad = sorted({x for d in r.damage for x in d.records})
        state = f"DAMAGED: records {format_indices(bad) or 'unknown'}" if r.damage else "ok"
        lines.append(f"{sh}: {r.result.records} committed records, {state}")
        for d, loc in zip(r.damage, r.result.damage, strict=True):
            local = records_text(loc.records) or "records unknown"
            lines.append(f"damaged chunk: {sh}, array {d.array!r}, {d.where()} [shard {local}]: {d.error}")
    chunks = f"{sum(v.chunks.values())} chunks in {len(v.chunks)} arrays of {len(v.shards)} shards"
    if not v.damage:
        lines.append(f"verify: ok: every chunk of the {v.records} committed records decodes ({chunks}); {path}")
    else:
        shards = ", ".join(r.shard.path.name for r in v.shards if r.damage)
        arrays = ", ".join(dict.fromkeys(d.array for d in v.damage))
        recs = v.damaged_records
        lines.append(f"verify: DAMAGED: {len(v.damage)} of {chunks} cannot be decoded, in shard {shards} ({arrays}); "
                     f"records affected: {format_indices(recs) or 'unknown'} ({len(recs)} of {v.records}); {path} "
                     "(nothing was changed)")
    return "\n".join(lines) + "\n"  # fmt: skip


def run_verify(log: AnyLog, as_json: bool) -> int:
    v = log.verify()
    if isinstance(v, RunVerifyResult):
        sys.stdout.write(to_json(shard_verify_json(v, log.path)) + "\n" if as_json else shard_verify_text(v, log.path))
        sys.stdout.flush()
        return 1 if v.damage else 0
    sys.stdout.write(to_json(verify_json(v, log.path)) + "\n" if as_json else verify_text(v, log.path))
    sys.stdout.flush()
    return 1 if v.damage else 0


# ----------------------------------------------------------------------------- summary


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _label_counts(labels: np.ndarray) -> dict[str, Any]:
    c = np.bincount(labels.astype(np.int64), minlength=len(LABEL_NAMES))
    pos, neg, inv = (int(c[int(m)]) for m in (Label.POSITIVE, Label.NEGATIVE, Label.INVALID))
    n = int(len(labels))
    return {
        "n": n,
        "positive": pos,
        "negative": neg,
        "invalid": inv,
        "positive_rate": _rate(pos, n),
        "positive_rate_valid": _rate(pos, pos + neg),
    }


def _dir_bytes(path: Path) -> int:
    """Total size of the files under `path`; files vanishing meanwhile (a writer's temp files) are skipped."""
    total, stack = 0, [str(path)]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    pass
    return total


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def snapshot(log: AnyLog) -> int:
    """Re-read the commit marker(s); return the committed records now (the snapshot every read stays in)."""
    if isinstance(log, RunLog):
        log.refresh()
        return len(log)
    return log.refresh()


def run_dir(log: AnyLog) -> Path:
    """The run directory: the folder holding the log (for a sharded run, the one holding shards/)."""
    return log.run_dir if isinstance(log, RunLog) else Path(log.path).parent


def store_bytes(log: AnyLog) -> int:
    """Bytes on disk of the log's store(s)."""
    if isinstance(log, RunLog):
        return sum(_dir_bytes(s.path) for s in log.shards)
    return _dir_bytes(log.path)


def mask_areas(log: AnyLog, indices: np.ndarray) -> np.ndarray:
    """Pixel area of the extracted mask of each record in `indices` (read in batches)."""
    out = np.zeros(len(indices), dtype=np.int64)
    for k in range(0, len(indices), MASK_BATCH):
        m = log.read_field("mask", indices[k : k + MASK_BATCH])
        out[k : k + len(m)] = m.reshape(len(m), -1).sum(axis=1)
    return out


def summarize(
    log: AnyLog, n: int | None = None, *, mask_sample: int = DEFAULT_MASK_SAMPLE
) -> dict[str, Any]:
    """Summary statistics of the first `n` committed records (default: the committed count now).

    Returns a JSON-serialisable dict (None where a rate or statistic is undefined). `mask_sample`
    bounds how many positive masks are read for the area statistics (0 = all).
    """
    return _summarize(log, n, mask_sample)[0]


def _summarize(log: AnyLog, n: int | None, mask_sample: int) -> tuple[dict[str, Any], np.ndarray]:
    """-> (summary, measured mask areas of positives in pixels)."""
    if n is None:
        n = snapshot(log)
    H, W = log.height, log.width
    f = log.read_fields(SCALAR_FIELDS, slice(0, n)) if n else None

    s: dict[str, Any] = {
        "path": str(log.path),
        "records": int(n),
        "height": H,
        "width": W,
        "schema_version": log.schema_version,
        "code_version": log.code_version,
        "created_unix": log.attrs.get("created_unix"),
    }
    if isinstance(log, RunLog):  # records of each shard among the first n
        s["shards"] = [{"path": str(sh.path), "worker_id": sh.worker_id, "robot_kind": sh.robot_kind, "records": c}
                       for sh, c in zip(log.shards, log.shard_counts(n), strict=True)]  # fmt: skip
    if f is None:  # empty log: same keys, nothing to count
        f = {
            name: np.zeros(0, dtype=str if name in ("label_reason", "primitive", "robot_kind") else np.int64)
            for name in SCALAR_FIELDS
        }
    labels = f["label"].astype(np.int64)
    s["labels"] = _label_counts(labels)

    reasons, counts = np.unique(f["label_reason"], return_counts=True)
    order = sorted(range(len(reasons)), key=lambda k: (-counts[k], str(reasons[k])))
    s["label_reasons"] = {str(reasons[k]): int(counts[k]) for k in order}
    kinds, kcounts = np.unique(f["robot_kind"], return_counts=True)
    s["robot_kinds"] = {str(k): int(c) for k, c in zip(kinds, kcounts, strict=True)}

    s["by_primitive"] = {
        str(p): _label_counts(labels[f["primitive"] == p]) for p in np.unique(f["primitive"])
    }
    bins = np.array_split(np.arange(n), min(TIME_BINS, n)) if n else []
    s["over_time"] = [{"start": int(b[0]), "stop": int(b[-1]) + 1, **_label_counts(labels[b])} for b in bins]
    s["by_model_version"] = [
        {"model_version": int(v), **_label_counts(labels[f["model_version"] == v])}
        for v in np.unique(f["model_version"])
    ]

    # mask areas of positives (the only image-sized reads), a seeded random sample if there are many
    pos = np.flatnonzero(labels == int(Label.POSITIVE))
    chosen = pos
    if mask_sample and len(pos) > mask_sample:
        chosen = np.sort(np.random.default_rng(0).choice(pos, mask_sample, replace=False))
    areas = mask_areas(log, chosen).astype(np.float64)
    npx = H * W

    def stat(v: float | None) -> dict[str, float | None]:
        return {"pixels": v, "percent": None if v is None else 100.0 * v / npx}

    have = len(areas) > 0
    s["mask_area_positive"] = {
        "positives": int(len(pos)),
        "measured": int(len(chosen)),
        "sampled": bool(len(chosen) < len(pos)),
        "empty": int((areas == 0).sum()),
        "image_pixels": npx,
        **{
            k: stat(float(fn(areas)) if have else None)
            for k, fn in (
                ("mean", np.mean),
                ("median", np.median),
                ("p10", lambda a: np.percentile(a, 10)),
                ("p90", lambda a: np.percentile(a, 90)),
            )
        },
    }

    hc = f["hypothesis_count"]
    s["hypotheses"] = {
        "mean_per_record": float(hc.mean()) if n else None,
        "max_per_record": int(hc.max()) if n else None,
        "records_with_chosen": int((f["chosen_hypothesis"] >= 0).sum()),
    }
    gs = f["grasp_success"].astype(np.int64)
    known = (gs == 0) | (gs == 1)
    s["grasp"] = {
        "grasps": int((f["primitive"] == "grasp").sum()),
        "known_outcome": int(known.sum()),
        "success": int((gs == 1).sum()),
        "success_rate": _rate(int((gs == 1).sum()), int(known.sum())),
    }

    ts = f["t_start"].astype(np.float64)
    if n:
        lo, hi = float(ts.min()), float(ts.max())
        span = hi - lo
        s["time"] = {
            "t_start_min": lo,
            "t_start_max": hi,
            "start": _iso(lo),
            "end": _iso(hi),
            "span_hours": span / 3600.0,
            "interactions_per_hour": (n - 1) / span * 3600.0 if span > 0 else None,
        }
    else:
        s["time"] = dict.fromkeys(
            ("t_start_min", "t_start_max", "start", "end", "span_hours", "interactions_per_hour")
        )

    size = store_bytes(log)
    s["disk"] = {"bytes": size, "human": human_bytes(size), "bytes_per_interaction": _rate(size, n)}
    s["learning"] = learning_summary(read_metrics(metrics_path(log)), n, labels, f["model_version"],
                                     f["chosen_hypothesis"])  # fmt: skip
    return s, areas


def metrics_path(log: AnyLog) -> Path:
    """The loop's metrics.jsonl of a log: in the folder holding the log (the run directory)."""
    return run_dir(log) / METRICS_NAME


def _split_code_version(cv: str) -> tuple[str, bool]:
    return cv.removesuffix("+dirty"), cv.endswith("+dirty")


def code_version_text(cv: str | None) -> str:
    """'<commit>' / '<commit> (uncommitted changes)' / '- (not recorded)'."""
    if not cv:
        return "- (not recorded)"
    sha, dirty = _split_code_version(cv)
    return sha + (" (uncommitted changes)" if dirty else "")


def learning_summary(rows: list[dict[str, Any]], n: int, labels: np.ndarray, model_version: np.ndarray,
                     chosen: np.ndarray) -> dict[str, Any] | None:
    """What the run's metrics.jsonl says about learning, up to the first `n` records (None: no rows).

    evaluations: every held-out evaluation (model version, interactions, EVAL_KEYS); baseline: the
    depth-clustering row; by_model_version: records, positive rate (the log) and object-hit rate of all
    and of model-proposed interactions (sim ground truth of the interaction rows); train: the training
    rows (step, model_version, loss and its terms); sessions: each start of the loop with its code version.
    """
    if not rows:
        return None
    kept = [r for k, group in sorted(metrics_by_interaction(rows).items()) if k < n for r in group]
    base = next((r for r in reversed(rows) if r.get("kind") == "baseline"), None)
    inter = {int(r["index"]): r for r in kept if r.get("kind") == "interaction" and "index" in r}

    def num(x: Any) -> float | None:
        return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None

    evals = [{"model_version": r.get("model_version"), "interactions": r.get("interactions"),
              **{k: num(r.get(k)) for k in EVAL_KEYS}} for r in kept if r.get("kind") == "eval"]  # fmt: skip
    train = [{k: v for k, v in r.items() if k != "kind"} for r in kept if r.get("kind") == "train"]
    by_version = []
    labels = np.asarray(labels, dtype=np.int64)
    for v in np.unique(np.asarray(model_version)):
        idx = np.flatnonzero(np.asarray(model_version) == v)
        proposed = [int(i) for i in idx if chosen[i] >= 0]
        hits = [bool(inter[i]["hit_object_gt"]) for i in map(int, idx) if "hit_object_gt" in inter.get(i, {})]
        hits_p = [bool(inter[i]["hit_object_gt"]) for i in proposed if "hit_object_gt" in inter.get(i, {})]
        by_version.append({
            "model_version": int(v),
            "n": int(len(idx)),
            "positive_rate": _rate(int((labels[idx] == int(Label.POSITIVE)).sum()), len(idx)),
            "hit_known": len(hits),
            "hit_rate_gt": float(np.mean(hits)) if hits else None,
            "model_proposed": len(proposed),
            "hit_rate_model_proposals_gt": float(np.mean(hits_p)) if hits_p else None,
        })  # fmt: skip
    sessions = [{"interactions": r.get("interactions"), "code_version": r.get("code_version", ""),
                 "start": _iso(r["unix"]) if isinstance(r.get("unix"), int | float) else None}
                for r in rows if r.get("kind") == "run_start"]  # fmt: skip
    return {
        "evaluations": evals,
        "baseline": None if base is None else {"name": base.get("name", "baseline"),
                                               **{k: num(base.get(k)) for k in EVAL_KEYS}},
        "by_model_version": by_version,
        "train": train,
        "sessions": sessions,
    }  # fmt: skip


# ----------------------------------------------------------------------------- text / tables


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _rate_cells(c: dict[str, Any]) -> list[str]:
    return [
        str(c["n"]),
        str(c["positive"]),
        str(c["negative"]),
        str(c["invalid"]),
        _pct(c["positive_rate"]),
        _pct(c["positive_rate_valid"]),
    ]


RATE_HEADERS = ["n", "positive", "negative", "invalid", "positive rate", "of valid"]


def sections(s: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The summary as (title, column headers, rows of strings) tables: shared by text and HTML."""
    n = s["records"]
    t, d, h, g, m = s["time"], s["disk"], s["hypotheses"], s["grasp"], s["mask_area_positive"]
    kinds = ", ".join(f"{k} {v}" for k, v in s["robot_kinds"].items()) or "-"
    overview = [
        ["records", f"{n} committed"],
        ["images", f"{s['width']} x {s['height']} px"],
        ["robot", kinds],
        ["code version", code_version_text(s["code_version"])],
        *_session_rows(s),
        [
            "time span (t_start)",
            "-" if t["start"] is None else f"{t['start']} .. {t['end']} ({t['span_hours']:.2f} h)",
        ],
        ["interactions / hour", _num(t["interactions_per_hour"])],
        ["disk", f"{d['human']} ({d['bytes']:,} bytes)"],
        [
            "per interaction",
            "-" if d["bytes_per_interaction"] is None else human_bytes(d["bytes_per_interaction"]),
        ],
        [
            "hypotheses / record",
            "-"
            if h["mean_per_record"] is None
            else f"{h['mean_per_record']:.2f} mean, {h['max_per_record']} max; "
            f"{h['records_with_chosen']} records with a chosen hypothesis",
        ],  # fmt: skip
        [
            "grasp success",
            f"{g['success']}/{g['known_outcome']} = {_pct(g['success_rate'])} "
            f"(records with grasp_success 0/1; {g['grasps']} grasps)",
        ],
    ]
    lab = s["labels"]
    labels = [
        [name, str(lab[name]), _pct(_rate(lab[name], n))] for name in ("positive", "negative", "invalid")
    ]
    reasons = [[r or "(none)", str(c), _pct(_rate(c, n))] for r, c in s["label_reasons"].items()]
    prim = [[p, *_rate_cells(c)] for p, c in s["by_primitive"].items()]
    prim.append(["all", *_rate_cells(lab)])
    over_time = [
        [str(b["start"]) if b["stop"] - b["start"] == 1 else f"{b['start']}-{b['stop'] - 1}", *_rate_cells(b)]
        for b in s["over_time"]
    ]
    models = [[str(b["model_version"]), *_rate_cells(b)] for b in s["by_model_version"]]
    area_title = f"Mask area of positives (pixels; % of the {m['image_pixels']}-pixel image)"
    if m["sampled"]:
        area_title += f" - from a random sample of {m['measured']} of {m['positives']} positives"
    areas = [
        [k, _num(m[k]["pixels"]), _num(m[k]["percent"], "{:.2f}%")] for k in ("mean", "median", "p10", "p90")
    ]
    areas.append(["empty masks", str(m["empty"]), _pct(_rate(m["empty"], m["measured"]))])
    shards = [[Path(x["path"]).name, str(x["worker_id"]), x["robot_kind"] or "-", str(x["records"])]
              for x in s.get("shards", [])]  # fmt: skip
    return [
        ("Overview", ["", ""], overview),
        *([(f"Shards ({len(shards)}; records numbered by start time)",
            ["shard", "worker", "robot kind", "records"], shards)] if "shards" in s else []),  # fmt: skip
        ("Labels", ["label", "n", "%"], labels),
        ("Label reasons", ["reason", "n", "%"], reasons),
        ("Positive rate by primitive", ["primitive", *RATE_HEADERS], prim),
        (f"Positive rate over time ({len(over_time)} bins of consecutive records)",
         ["records", *RATE_HEADERS], over_time),
        ("Positive rate by model version", ["model", *RATE_HEADERS], models),
        (area_title, ["statistic", "pixels", "% of image"], areas),
        *_learning_sections(s.get("learning")),
    ]  # fmt: skip


def _session_rows(s: dict[str, Any]) -> list[list[str]]:
    """Overview rows for sessions of the loop that ran other code than the one that created the log."""
    ls = s.get("learning") or {}
    other = [x for x in ls.get("sessions", []) if x["code_version"] != s["code_version"]]
    return [[f"code version from interaction {x['interactions']}", code_version_text(x["code_version"])]
            for x in other]  # fmt: skip


def _f3(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _learning_sections(ls: dict[str, Any] | None) -> list[tuple[str, list[str], list[list[str]]]]:
    if not ls:
        return []
    evals = [[f"v{e['model_version']}", str(e["interactions"]), *(_f3(e[k]) for k in EVAL_KEYS)]
             for e in ls["evaluations"]]  # fmt: skip
    if ls["baseline"] is not None:
        evals.append([ls["baseline"]["name"].replace("_", " ") + " (baseline)", "-",
                      *(_f3(ls["baseline"][k]) for k in EVAL_KEYS)])  # fmt: skip
    hits = [[f"v{b['model_version']}", str(b["n"]), _pct(b["positive_rate"]),
             _pct(b["hit_rate_gt"]) + (f" of {b['hit_known']}" if b["hit_known"] else ""),
             str(b["model_proposed"]), _pct(b["hit_rate_model_proposals_gt"])]
            for b in ls["by_model_version"]]  # fmt: skip
    return [
        ("Held-out evaluation per model version (metrics.jsonl)",
         ["model", "after interactions", "AP50", "AP", "overlap F", "boundary F"], evals),
        ("Positive and object-hit rate per model version (hit: sim ground truth)",
         ["model", "n", "positive rate", "object-hit rate", "model-proposed", "hit rate of proposals"], hits),
    ]  # fmt: skip


def format_text(s: dict[str, Any]) -> str:
    out = [f"Interaction log {s['path']}"]
    for title, headers, rows in sections(s):
        out.append("")
        out.append(title)
        if title == "Overview":
            width = max(len(r[0]) for r in rows)
            out.extend(f"  {k:<{width}}  {v}" for k, v in rows)
            continue
        if not rows:
            out.append("  (no records)")
            continue
        cols = list(zip(headers, *rows, strict=True))
        widths = [max(len(c) for c in col) for col in cols]

        def line(cells: list[str], widths: list[int] = widths) -> str:
            first = f"{cells[0]:<{widths[0]}}"
            rest = [f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True)]
            return "  " + "  ".join([first, *rest]).rstrip()

        out.append(line(headers))
        out.extend(line(r) for r in rows)
    return "\n".join(out) + "\n"


def to_json(s: dict[str, Any]) -> str:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(s), indent=2, allow_nan=False)


# ----------------------------------------------------------------------------- images


def _fit(n_px: int, scale: float) -> int:
    return max(1, round(n_px * scale))


def panels(f: dict[str, Any], width: int | None = None) -> list[np.ndarray]:
    """The four (h, w, 3) uint8 RGB panels of one record's fields: before | after | mask | hypothesis.

    `f` holds ROW_FIELDS of one record. `width`: panel width in pixels (None = full resolution).
    """
    import cv2

    before, after = np.ascontiguousarray(f["rgb_before"]), np.ascontiguousarray(f["rgb_after"])
    H, W = before.shape[:2]
    scale = 1.0 if width is None else width / W
    size = (_fit(W, scale), _fit(H, scale))
    full = size == (W, H)

    def img(x: np.ndarray) -> np.ndarray:
        return x.copy() if full else cv2.resize(x, size, interpolation=cv2.INTER_AREA)

    def msk(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=bool)
        if full:
            return m
        return cv2.resize(m.astype(np.uint8) * 255, size, interpolation=cv2.INTER_AREA) >= 128

    thick = max(1, round(min(size) / 160))

    def overlay(base: np.ndarray, m: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
        out = base.astype(np.float32)
        out[m] = 0.5 * out[m] + 0.5 * np.array(colour, np.float32)
        out = np.ascontiguousarray(out.round().clip(0, 255).astype(np.uint8))
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, thick)
        return out

    def marker(out: np.ndarray) -> np.ndarray:
        u, v = (float(c) for c in np.asarray(f["pixel"], dtype=np.float64))
        if math.isfinite(u) and math.isfinite(v):
            x, y = round((u + 0.5) * scale - 0.5), round((v + 0.5) * scale - 0.5)
            r = max(3, round(min(size) / 20))
            cv2.drawMarker(out, (x, y), (255, 255, 255), cv2.MARKER_CROSS, 2 * r + 2, thick + 2)
            cv2.drawMarker(out, (x, y), MARKER_COLOUR, cv2.MARKER_CROSS, 2 * r, thick)
        return out

    b = img(before)
    mask_panel = marker(overlay(b, msk(f["mask"]), MASK_COLOUR))
    k = int(f["chosen_hypothesis"])
    hyps = f["hypotheses"]
    if 0 <= k < len(hyps):
        hyp_panel = marker(overlay(b, msk(hyps[k]), HYPOTHESIS_COLOUR))
    else:
        hyp_panel = np.ascontiguousarray((b.astype(np.float32) * 0.35).astype(np.uint8))
        fs = max(0.3, size[0] / 320)
        (tw, th), _ = cv2.getTextSize("none", cv2.FONT_HERSHEY_SIMPLEX, fs, thick)
        org = ((size[0] - tw) // 2, (size[1] + th) // 2)
        cv2.putText(hyp_panel, "none", org, cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), thick, cv2.LINE_AA)
    return [b, img(after), mask_panel, hyp_panel]


def png_bytes(rgb: np.ndarray, *, drop_bits: int = 0, level: int = 6) -> bytes:
    """PNG of an RGB uint8 image. `drop_bits` zeroes that many low bits per channel (for thumbnails:
    2 bits are invisible and halve the PNG of a noisy camera image)."""
    import cv2

    if drop_bits:
        rgb = rgb & np.uint8((0xFF << drop_bits) & 0xFF)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def record_where(log: AnyLog, i: int) -> str:
    """' [worker 1 record 3]' for record i of a sharded run ('' for one store)."""
    if not isinstance(log, RunLog) or not log.sharded:
        return ""
    k, local = log.locate(i)
    return f" [worker {log.shards[k].worker_id} record {local}]"


def caption(i: int, f: dict[str, Any], npx: int, where: str = "") -> str:
    label = LABEL_NAMES[int(f["label"])]
    reason = f" ({f['label_reason']})" if f["label_reason"] else ""
    area = int(np.count_nonzero(f["mask"]))
    grasp = {1: ", grasp succeeded", 0: ", grasp failed"}.get(int(f["grasp_success"]), "")
    return (
        f"#{i}{where} {f['primitive']} - {label}{reason}{grasp} - model {int(f['model_version'])} - "
        f"mask {area} px ({100 * area / npx:.2f}%)"
    )


# ----------------------------------------------------------------------------- HTML report


def _plots(log: AnyLog, n: int, s: dict[str, Any], areas_px: np.ndarray) -> list[tuple[str, bytes]]:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    f = log.read_fields(("label", "model_version"), slice(0, n)) if n else None

    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    if f is not None:
        pos = (f["label"] == int(Label.POSITIVE)).astype(np.float64)
        w = int(min(200, max(1, n // 10)))
        roll = np.convolve(pos, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(len(roll)) + (w - 1) / 2, 100 * roll, lw=1.5, label=f"rolling mean, window {w}")
        for b in s["over_time"]:
            ax.hlines(100 * b["positive_rate"], b["start"] - 0.5, b["stop"] - 0.5, colors="tab:orange", lw=2)
        ax.plot([], [], color="tab:orange", lw=2, label="per bin")
        changes = np.flatnonzero(np.diff(f["model_version"])) + 1
        if 0 < len(changes) <= 30:
            for c in changes:
                ax.axvline(c, color="grey", ls=":", lw=0.8)
            ax.plot([], [], color="grey", ls=":", lw=0.8, label="model version change")
        ax.set_xlim(-0.5, n - 0.5)
        ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_xlabel("interaction index")
    ax.set_ylabel("positive rate [%]")
    ax.set_title("Positive rate vs interaction index")
    ax.grid(alpha=0.3)
    out.append(("Positive rate vs interaction index", _fig_png(fig, plt, io)))

    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    m = s["mask_area_positive"]
    areas = 100.0 * np.asarray(areas_px, dtype=np.float64) / m["image_pixels"]
    if len(areas):
        ax.hist(areas, bins=min(40, max(5, len(areas) // 5)), color="tab:green", alpha=0.8)
        for k, ls in (("median", "-"), ("p10", "--"), ("p90", "--")):
            ax.axvline(m[k]["percent"], color="k", ls=ls, lw=1)
    else:
        ax.text(0.5, 0.5, "no positives", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("mask area [% of image]   (lines: median, p10, p90)")
    ax.set_ylabel("positives")
    title = "Mask area of positives"
    if m["sampled"]:
        title += f" (random sample of {m['measured']} of {m['positives']})"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    out.append(("Mask area of positives", _fig_png(fig, plt, io)))
    return out


def _learning_plots(ls: dict[str, Any]) -> list[tuple[str, bytes]]:
    """Held-out metrics per model version next to the baseline; positive / object-hit rate per model
    version; training loss over optimiser steps."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    fig, ax = plt.subplots(figsize=(9, 3.4), dpi=100)
    evals, base = ls["evaluations"], ls["baseline"]
    colours = dict(zip(EVAL_KEYS[:3], ("tab:blue", "tab:orange", "tab:green"), strict=True))
    names = {"AP50": "AP50", "AP": "AP", "overlap_F": "overlap F"}
    if evals:
        x = np.arange(len(evals))
        for k, c in colours.items():
            y = [np.nan if e[k] is None else e[k] for e in evals]
            ax.plot(x, y, "o-", color=c, lw=1.8, label=f"{names[k]} (model)")
            if base is not None and base[k] is not None:
                ax.axhline(base[k], color=c, ls="--", lw=1.2, label=f"{names[k]} ({base['name'].replace('_', ' ')})")
        ax.set_xticks(x, [f"v{e['model_version']}\n{e['interactions']}" for e in evals])
        ax.set_xlim(-0.5, len(evals) - 0.5)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    else:
        ax.text(0.5, 0.5, "no held-out evaluation yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 1)
    ax.set_xlabel("model version / after interactions")
    ax.set_ylabel("held-out score")
    ax.set_title("Held-out AP50, AP and overlap F per model version (dashed: depth-clustering baseline)")
    ax.grid(alpha=0.3)
    out.append(("Held-out AP50, AP and overlap F per model version", _fig_png(fig, plt, io)))

    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    bv = ls["by_model_version"]
    if bv:
        x = np.arange(len(bv))
        series = (("positive_rate", "positive rate", "tab:green"), ("hit_rate_gt", "object-hit rate", "tab:blue"),
                  ("hit_rate_model_proposals_gt", "object-hit rate, model proposals", "tab:purple"))
        w = 0.8 / len(series)
        for j, (k, name, c) in enumerate(series):
            y = [np.nan if b[k] is None else 100 * b[k] for b in bv]
            ax.bar(x + (j - 1) * w, y, w, color=c, label=name)
        ax.set_xticks(x, [f"v{b['model_version']}\n{b['n']} int." for b in bv])
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_xlabel("model version that chose the action / interactions")
    ax.set_ylabel("rate [%]")
    ax.set_title("Positive rate and object-hit rate per model version (hit: sim ground truth)")
    ax.grid(alpha=0.3, axis="y")
    out.append(("Positive rate and object-hit rate per model version", _fig_png(fig, plt, io)))

    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    tr = [r for r in ls["train"] if isinstance(r.get("loss"), int | float)]
    if tr:
        steps = [r.get("step", k) for k, r in enumerate(tr)]
        ax.plot(steps, [r["loss"] for r in tr], "o-", ms=3, lw=1.8, color="k", label="loss")
        terms = sorted({k for r in tr for k, v in r.items() if isinstance(v, int | float)}
                       - {"loss", "step", "model_version", "lr", "elapsed_s"})  # fmt: skip
        for k in terms:
            ax.plot(steps, [r.get(k, np.nan) for r in tr], lw=0.9, alpha=0.8, label=k)
        mv = [r.get("model_version") for r in tr]
        for a in range(1, len(tr)):
            if mv[a] != mv[a - 1]:
                ax.axvline((steps[a - 1] + steps[a]) / 2, color="grey", ls=":", lw=0.8)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    else:
        ax.text(0.5, 0.5, "no training rows yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimiser step   (dotted: a new model version starts training)")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    out.append(("Training loss", _fig_png(fig, plt, io)))
    return out


def _fig_png(fig: Any, plt: Any, io: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #1f2328; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px; }
.meta { color: #57606a; font-size: 13px; }
.tables { display: flex; flex-wrap: wrap; gap: 12px 28px; align-items: flex-start; }
table.stats { border-collapse: collapse; font-size: 13px; }
table.stats caption { text-align: left; font-weight: 600; padding: 4px 0; }
table.stats th, table.stats td { border-bottom: 1px solid #d0d7de; padding: 3px 8px; text-align: right; }
table.stats th:first-child, table.stats td:first-child { text-align: left; }
table.kv td, table.kv td:first-child { text-align: left; }
table.sheet { border-collapse: collapse; }
table.sheet th { font-size: 13px; text-align: left; padding: 2px 4px; }
table.sheet td { padding: 2px; vertical-align: top; }
table.sheet td.cap { font-size: 12px; padding: 8px 4px 2px; font-family: ui-monospace, monospace; }
table.sheet img { display: block; image-rendering: auto; }
.positive { color: #1a7f37; } .negative { color: #b42318; } .invalid { color: #6e7781; }
img.plot { max-width: 100%; }
pre { font-size: 12px; background: #f6f8fa; padding: 8px; overflow-x: auto; }
"""


def _table_html(title: str, headers: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "" if not any(headers) else "<tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}">(no records)</td></tr>'
    cls = "stats" if any(headers) else "stats kv"
    return f'<table class="{cls}"><caption>{e(title)}</caption>{head}{body}</table>'


def contact_rows(n: int, max_rows: int, rows: list[int] | None) -> list[int]:
    """Record indices for the contact sheet: `rows` resolved (negative from the end), else evenly spaced."""
    if rows is not None:
        out = []
        for i in rows:
            if not -n <= i < n:
                raise InspectError(f"--rows: interaction index {i} out of range for {n} committed records")
            out.append(i % n)
        return out
    if n == 0 or max_rows <= 0:
        return []
    if n <= max_rows:
        return list(range(n))
    return sorted({int(x) for x in np.linspace(0, n - 1, max_rows).round()})


def build_html(
    log: AnyLog,
    n: int,
    rows: list[int],
    *,
    thumb_width: int = 160,
    mask_sample: int = DEFAULT_MASK_SAMPLE,
) -> tuple[str, dict[str, Any]]:
    """-> (the HTML document, the summary it shows) for the first `n` records; `rows`: contact sheet."""
    s, areas = _summarize(log, n, mask_sample)
    e = html.escape
    npx = log.height * log.width
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Interaction log report - {e(s['path'])}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Interaction log report</h1>",
        f'<p class="meta">{e(s["path"])}<br>{n} committed records (snapshot taken {e(_iso(time.time()))}; '
        "records appended later are not included)</p>",
        "<h2>Summary</h2>",
        '<div class="tables">',
        *(_table_html(*sec) for sec in sections(s)),
        "</div>",
        "<h2>Plots</h2>",
    ]
    for title, png in _plots(log, n, s, areas):
        parts.append(f'<p><img class="plot" alt="{e(title)}" src="{data_uri(png)}"></p>')
    ls = s.get("learning")
    if ls:
        parts.append("<h2>Learning</h2>")
        parts.append(f'<p class="meta">from {e(str(metrics_path(log)))}: {len(ls["evaluations"])} held-out '
                     f'evaluations, {len(ls["train"])} training rows</p>')  # fmt: skip
        for title, png in _learning_plots(ls):
            parts.append(f'<p><img class="plot" alt="{e(title)}" src="{data_uri(png)}"></p>')
    preview = run_dir(log) / PREVIEW_NAME
    if preview.is_file():
        png = preview.read_bytes()
        latest = ls["evaluations"][-1] if ls and ls["evaluations"] else None
        what = "" if latest is None else f" (latest evaluation: model v{latest['model_version']} after " \
            f"{latest['interactions']} interactions)"
        parts.append("<h2>Latest model on held-out scenes</h2>")
        parts.append(f'<p class="meta">{e(str(preview))}, written by the loop at its last evaluation{e(what)}: '
                     "RGB | ground truth | predictions</p>")  # fmt: skip
        parts.append(f'<p><img class="plot" alt="Latest model on held-out scenes" src="{data_uri(png)}"></p>')

    parts.append(f"<h2>Interactions ({len(rows)} of {n})</h2>")
    if rows:
        parts.append(
            '<table class="sheet"><tr><th>before</th><th>after</th>'
            "<th>mask + pixel</th><th>chosen hypothesis</th></tr>"
        )
        for i in rows:
            f = log.read_fields(ROW_FIELDS, i)
            label = LABEL_NAMES[int(f["label"])]
            parts.append(f'<tr><td class="cap {label}" colspan="4">{e(caption(i, f, npx, record_where(log, i)))}</td></tr><tr>')
            k = int(f["chosen_hypothesis"])
            names = ("before", "after", "mask", "chosen hypothesis: " + ("none" if k < 0 else str(k)))
            for name, p in zip(names, panels(f, thumb_width), strict=True):
                parts.append(
                    f'<td><img alt="#{i} {name}" width="{p.shape[1]}" height="{p.shape[0]}" '
                    f'src="{data_uri(png_bytes(p, drop_bits=2, level=3))}"></td>'
                )
            parts.append("</tr>")
        parts.append("</table>")
    else:
        parts.append("<p>(no interactions selected)</p>")

    cfg = json.dumps(log.config_snapshot, indent=2, sort_keys=True)
    parts += [
        "<h2>Details</h2>",
        f"<details><summary>summary as JSON</summary><pre>{e(to_json(s))}</pre></details>",
        f"<details><summary>config snapshot</summary><pre>{e(cfg)}</pre></details>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n", s


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- CLI


def _parse_rows(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise InspectError(f"--rows: expected comma-separated integers like 3,17,-1, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    rows_arg = _parse_rows(args.rows) if args.rows is not None else None
    if args.max_rows < 0:
        raise InspectError(f"--max-rows must be >= 0, got {args.max_rows}")
    if args.thumb_width < 16:
        raise InspectError(f"--thumb-width must be >= 16, got {args.thumb_width}")
    if args.mask_sample < 0:
        raise InspectError(f"--mask-sample must be >= 0, got {args.mask_sample}")
    if args.out is not None and args.show is None:
        raise InspectError("--out is only used with --show")
    if args.range is not None and args.rerun is None:
        raise InspectError("--range is only used with --rerun")
    if args.verify and (args.html is not None or args.show is not None or args.rerun is not None):
        raise InspectError("--verify runs alone (with --json at most), not with --html, --show or --rerun")
    if args.rerun is not None:
        from data.rerun_view import RerunUnavailable, require_rerun

        try:
            require_rerun()  # before anything is written
        except RerunUnavailable as e:
            raise InspectError(f"--rerun: {e}") from None

    with open_log(args.path) as log:
        if args.verify:
            return run_verify(log, args.json)
        n = snapshot(log)  # every read below stays under this count
        show_index = None
        if args.show is not None:
            if not -n <= args.show < n:
                raise InspectError(
                    f"--show: interaction index {args.show} out of range for {n} committed records"
                    + (f" (valid: 0..{n - 1} or -{n}..-1)" if n else "")
                )
            show_index = args.show % n
        sheet = contact_rows(n, args.max_rows, rows_arg) if args.html is not None else []

        s = None
        if args.html is not None:
            doc, s = build_html(log, n, sheet, thumb_width=args.thumb_width, mask_sample=args.mask_sample)
            data = doc.encode("utf-8")
            _write_atomic(args.html, data)
            print(f"wrote {args.html} ({human_bytes(len(data))}, {n} records, {len(sheet)} interaction rows)",
                  file=sys.stderr)  # fmt: skip
        if args.json or (args.html is None and args.show is None and args.rerun is None):
            if s is None:
                s = summarize(log, n, mask_sample=args.mask_sample)
            sys.stdout.write(to_json(s) + "\n" if args.json else format_text(s))
            sys.stdout.flush()

        if show_index is not None:
            f = log.read_fields(ROW_FIELDS, show_index)
            out = args.out if args.out is not None else Path(f"interaction_{show_index:06d}.png")
            _write_atomic(out, png_bytes(np.concatenate(panels(f), axis=1)))
            print(f"wrote {out}: {caption(show_index, f, log.height * log.width, record_where(log, show_index))}", file=sys.stderr)
        if args.rerun is not None:
            return rerun_export(log, n, args)
    return 0


def parse_range(text: str | None, n: int) -> range:
    """`A:B` (Python slice bounds, negative from the end, either may be empty) -> record indices < n."""
    if text is None:
        return range(n)
    a, sep, b = text.partition(":")
    try:
        if not sep:
            raise ValueError
        lo, hi = (int(x) if x.strip() else None for x in (a, b))
    except ValueError:
        raise InspectError(f"--range: expected A:B like 100:200, -50: or :10, got {text!r}") from None
    r = range(n)[slice(lo, hi)]
    if n and not len(r):
        raise InspectError(f"--range {text} selects no record of the {n} committed records")
    return r


SERVE_SHUTDOWN_S = 10.0  # after Ctrl-C, how long `--rerun` (serve) waits for Rerun's servers to stop


def rerun_export(log: AnyLog, n: int, args: argparse.Namespace) -> int:
    """`--rerun [OUT.rrd]`: the records of `--range` and their metrics rows as a Rerun recording."""
    from data.rerun_view import (
        RerunView,
        has_display,
        open_stream,
        recording_id_for,
        stop_serving,
        viewer_executable,
        write_log,
    )

    indices = parse_range(args.range, n)
    rows = read_metrics(metrics_path(log))
    folder = run_dir(log)
    target = args.rerun or ("spawn" if has_display() and viewer_executable() else "serve")
    t0 = time.time()
    try:
        stream, where = open_stream(target, recording_id=recording_id_for(folder), name=folder.name,
                                    grpc_port=args.grpc_port, web_port=args.web_port)  # fmt: skip
    except Exception as e:  # a viewer that cannot start, a port in use: say how to get the data anyway
        raise InspectError(f"--rerun: cannot open a viewer ({type(e).__name__}: {e}); write a file instead: "
                           f"--rerun OUT.rrd, then open it with `.venv/bin/rerun OUT.rrd` (native) or "
                           f"drop it on the web viewer") from None  # fmt: skip
    view = RerunView(stream)
    done = write_log(log, view, indices, rows)
    print(f"{where}\nlogged {done} records ({indices.start}..{indices.stop - 1 if done else '-'}) and the "
          f"metrics rows that follow them in {time.time() - t0:.1f} s", file=sys.stderr)  # fmt: skip
    if target != "serve":
        view.close()
        if args.rerun:
            print(f"wrote {args.rerun} ({human_bytes(Path(args.rerun).stat().st_size)})", file=sys.stderr)
        return 0
    view.flush()
    # a process started in the background of a shell without job control inherits SIGINT ignored (and Python
    # then never raises KeyboardInterrupt): "until Ctrl-C" must hold wherever it runs
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("serving until Ctrl-C", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped serving", file=sys.stderr, flush=True)
    if not stop_serving(view, SERVE_SHUTDOWN_S):
        print(f"the Rerun server did not shut down within {SERVE_SHUTDOWN_S:g} s (a viewer still connected): "
              "leaving without it", file=sys.stderr, flush=True)  # fmt: skip
        sys.stdout.flush()
        os._exit(0)  # its threads would keep the interpreter from exiting; nothing of the log is open for writing
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m data.inspect",
        description="Summarise an interaction log, write an HTML report, render one interaction, or view it in Rerun.",
        epilog="Exit codes: 0 ok, 1 --verify found damaged chunks, 2 bad arguments / not a log / unreadable "
               "store / index out of range.",
    )
    ap.add_argument("path", help="run directory containing interactions.zarr and/or shards/, a shards/ "
                    "directory, or the .zarr log itself")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--html", type=Path, metavar="REPORT", help="write a self-contained HTML report")
    ap.add_argument("--max-rows", type=int, default=40,
                    help="interactions in the report's contact sheet, evenly spaced (default 40)")  # fmt: skip
    ap.add_argument("--rows", metavar="I,J,K", help="contact-sheet interactions (overrides --max-rows)")
    ap.add_argument("--thumb-width", type=int, default=160, help="contact-sheet panel width in px")
    ap.add_argument(
        "--show", type=int, metavar="I", help="write interaction I (negative: from the end) as PNG"
    )
    ap.add_argument("--out", type=Path, help="PNG path for --show (default interaction_{I:06d}.png)")
    ap.add_argument("--rerun", nargs="?", const="", metavar="OUT.rrd",
                    help="write a Rerun recording (the `viz` extra); without OUT.rrd spawn the viewer (with a "
                         "display) or serve the web viewer")  # fmt: skip
    ap.add_argument("--range", metavar="A:B", help="records for --rerun (slice bounds, e.g. 100:200 or -50:)")
    ap.add_argument("--grpc-port", type=int, default=9876, help="--rerun without a file: viewer gRPC port")
    ap.add_argument("--web-port", type=int, default=9090, help="--rerun without a file: web viewer port")
    ap.add_argument("--verify", action="store_true",
                    help="decode every chunk of every committed record; name damaged arrays and records (exit 1)")
    ap.add_argument("--mask-sample", type=int, default=DEFAULT_MASK_SAMPLE,
                    help="at most this many positive masks are read for the area statistics (0 = all)")  # fmt: skip
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    k = 0
    while k < len(argv) - 1:  # let `--rows -1,3` / `--range -50:` through (argparse takes "-1,3" for an option)
        if argv[k] in ("--rows", "--range") and argv[k + 1][:1] == "-" and argv[k + 1][1:2].isdigit():
            argv[k : k + 2] = [f"{argv[k]}={argv[k + 1]}"]
        k += 1
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (InspectError, LogFormatError) as e:  # LogFormatError: e.g. ChunkDamageError, naming array and records
        print(f"inspect: error: {e}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - anything else the store throws: one line, never a traceback
        print(f"inspect: error: {args.path}: cannot read it ({type(e).__name__}: {e})".splitlines()[0],
              file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
