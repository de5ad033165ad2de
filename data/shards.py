"""A run's interaction logs as one: per-collector shard stores and the reader that joins them.

Layout of a run directory RUN:

    RUN/interactions.zarr           a single-process run: one log (data/log.py), one writer
    RUN/shards/worker_000.zarr      a sharded run: one log per collector process (worker id 0, 1, ...)
    RUN/shards/worker_001.zarr
    RUN/metrics.jsonl, ...          the learner's files, next to the logs

Each collector appends to its own shard with `open_shard_writer(RUN, worker_id, robot_kind, H, W)`: an
ordinary `InteractionLog` (one writer, flock, crash-safe commit marker, torn-tail repair on reopen) whose
group attributes also carry `worker_id` (int) and `robot_kind` (str). All shards of a run share the
schema version and the image size (H x W pixels); a writer refuses to create or reopen a shard that
disagrees with the shards already there, and the reader refuses a run whose shards disagree.

`RunLog.open(path)` reads a run directory (`interactions.zarr` and/or `shards/`), a `shards/` directory,
or one `.zarr` log, read-only (it never opens anything for writing and never writes), as one log:

Global indices. The reader numbers the committed records of all shards densely 0..N-1 (no index
missing or repeated) and never renumbers a record it has numbered:
- opening numbers every record committed by then in the order (t_start, worker_id, shard number,
  local index), so a fresh reader of a finished run numbers records by start time;
- `refresh()` re-reads each shard's commit marker (and looks for shards that appeared since); the records
  committed since the last refresh get the next indices N, N+1, ..., ordered among themselves the same
  way. A live reader's numbers therefore never change while the shards grow (two readers opened at
  different times may number the same record differently; a fresh reader of the finished run numbers it
  by start time again).
The t_start used for ordering is the shard's running maximum (normally t_start itself: a collector
appends in time order), so a shard's records always keep their own order: a clock stepping back cannot
reorder them, and a single store is numbered exactly by its own indices 0..n-1. A record whose t_start
cannot be read (a damaged `record_f64` chunk) takes its predecessor's in the shard.
Only committed records are visible (each shard's marker, see data/log.py), so a reader can read while
the collectors append. `len()` is the count as of the last `open` / `refresh()` (it does not re-read the
shards: a snapshot every read below stays inside).

Shard numbers (`locate`, `shards`) follow the directory: `interactions.zarr` first, then `shards/*.zarr`
by worker number; a shard that appears later gets the next number. A single store is shard 0 with
worker_id 0 (or its `worker_id` attribute) and its `robot_kind` attribute, else the one robot kind of
its records, else "".

Errors (nothing is written, no shard is touched): FileNotFoundError when no log is found; LogFormatError
naming the shards and values when shards disagree on schema_version, height or width, when two shards
claim one worker id, or when a shard is not a log. Damaged chunks raise `ShardChunkDamageError` (a
`ChunkDamageError`) naming the shard, with GLOBAL record indices in `.records`; `verify()` returns the
damage per shard with global indices too (`python -m data.inspect RUN --verify`).

Not thread-safe: use one RunLog per thread or process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.log import (
    SCHEMA_VERSION,
    ChunkDamage,
    ChunkDamageError,
    InteractionLog,
    LogFormatError,
    VerifyResult,
    records_text,
)
from data.schema import InteractionRecord

LOG_NAME = "interactions.zarr"  # the log of a single-process run
SHARDS_DIR = "shards"  # the shard stores of a sharded run
METRICS_NAME = "metrics.jsonl"
_WORKER_RE = re.compile(r"^worker_(\d+)\.zarr$")


def shard_path(run_dir: str | os.PathLike, worker_id: int) -> Path:
    """RUN/shards/worker_{worker_id:03d}.zarr: the shard store of collector `worker_id` (an int >= 0)."""
    _check_worker_id(worker_id)
    return Path(run_dir) / SHARDS_DIR / f"worker_{int(worker_id):03d}.zarr"


def _check_worker_id(worker_id: Any) -> None:
    if not isinstance(worker_id, (int, np.integer)) or isinstance(worker_id, bool) or int(worker_id) < 0:
        raise ValueError(f"worker_id must be an int >= 0, got {worker_id!r}")


# ----------------------------------------------------------------------------- writer


def open_shard_writer(
    run_dir: str | os.PathLike, worker_id: int, robot_kind: str, height: int, width: int, **create_kwargs: Any
) -> InteractionLog:
    """The single writer (mode 'a') of collector `worker_id`'s shard in `run_dir`, created if absent.

    A new shard is created with `InteractionLog.create(..., **create_kwargs)` and the group attributes
    `worker_id` and `robot_kind`; an existing one is reopened (which repairs a torn tail left by a crashed
    writer, data/log.py) after checking, read-only, that its worker_id, robot_kind and image size
    (height x width pixels) are the requested ones. Raises ValueError naming the mismatch (nothing is
    written then), also when another log of the run has another image size or schema version;
    LogLockedError when another writer has the shard open.
    """
    _check_worker_id(worker_id)
    worker_id = int(worker_id)
    if not isinstance(robot_kind, str) or not robot_kind:
        raise ValueError(f"robot_kind must be a non-empty str, got {robot_kind!r}")
    path = shard_path(run_dir, worker_id)
    exists = path.exists() and (not path.is_dir() or any(path.iterdir()))
    if exists:
        with InteractionLog.open(path, "r") as log:  # read-only: refuse before the repair writes anything
            _check_shard_identity(log, path, worker_id, robot_kind, int(height), int(width))
    _check_siblings(Path(run_dir), path, int(height), int(width))
    if exists:
        log = InteractionLog.open(path, "a")
        try:
            _check_shard_identity(log, path, worker_id, robot_kind, int(height), int(width))
        except BaseException:
            log.close()
            raise
        return log
    extra = dict(create_kwargs.pop("attrs", None) or {})
    extra.update(worker_id=worker_id, robot_kind=robot_kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    return InteractionLog.create(path, int(height), int(width), attrs=extra, **create_kwargs)


def _check_shard_identity(log: InteractionLog, path: Path, worker_id: int, robot_kind: str, height: int,
                          width: int) -> None:  # fmt: skip
    attrs = log.attrs
    problems = []
    if attrs.get("worker_id") != worker_id:
        problems.append(f"worker_id {attrs.get('worker_id')!r}, not {worker_id}")
    if attrs.get("robot_kind") != robot_kind:
        problems.append(f"robot_kind {attrs.get('robot_kind')!r}, not {robot_kind!r}")
    if (log.height, log.width) != (height, width):
        problems.append(f"{log.height}x{log.width} images, not {height}x{width}")
    if problems:
        raise ValueError(f"{path}: this shard has {'; '.join(problems)} (nothing was written; "
                         "use another worker id or run directory)")  # fmt: skip


def _check_siblings(run_dir: Path, own: Path, height: int, width: int) -> None:
    """ValueError if another log of the run (read-only) has another image size or schema version."""
    for p in _run_logs(run_dir):
        if p == own:
            continue
        try:
            with InteractionLog.open(p, "r") as other:
                size, version = (other.height, other.width), other.schema_version
        except (FileNotFoundError, LogFormatError):  # being created, or broken: the reader names it
            continue
        if size != (height, width) or version != SCHEMA_VERSION:
            raise ValueError(
                f"{own}: the run's log {p} has {size[0]}x{size[1]} images and schema_version {version}, "
                f"this shard would have {height}x{width} and schema_version {SCHEMA_VERSION}: all logs of a "
                "run must agree (nothing was written)"
            )


# ----------------------------------------------------------------------------- finding a run's logs


def _shard_sort_key(p: Path) -> tuple[int, int, str]:
    m = _WORKER_RE.match(p.name)
    return (0, int(m.group(1)), p.name) if m else (1, 0, p.name)


def _shard_stores(shards_dir: Path) -> list[Path]:
    if not shards_dir.is_dir():
        return []
    return sorted((p for p in shards_dir.iterdir() if p.name.endswith(".zarr")), key=_shard_sort_key)


def _run_logs(run_dir: Path) -> list[Path]:
    """The logs of a run directory: interactions.zarr (if present), then shards/*.zarr by worker number."""
    main = [run_dir / LOG_NAME] if (run_dir / LOG_NAME).exists() else []
    return main + _shard_stores(run_dir / SHARDS_DIR)


def _is_shards_dir(p: Path) -> bool:
    return p.name == SHARDS_DIR or any(_WORKER_RE.match(c.name) for c in p.iterdir())


@dataclass(frozen=True)
class RunLayout:
    """What `find_logs` found: the run directory and its logs, in shard-number order."""

    run_dir: Path  # where metrics.jsonl and the loop's other files live
    logs: tuple[Path, ...]
    sharded: bool  # False: one log given as a .zarr path, or a run directory with interactions.zarr only
    shards_dir: Path | None  # where `refresh` looks for shards that appear later (None: a .zarr path given)


def find_logs(path: str | os.PathLike) -> RunLayout:
    """The logs at `path`: a .zarr log, a run directory (interactions.zarr and/or shards/), or a shards/
    directory. FileNotFoundError (naming what was expected) when there is none; nothing is opened."""
    p = Path(path)
    expected = ("expected a run directory with interactions.zarr and/or shards/worker_NNN.zarr, "
                "a shards/ directory, or an interaction log .zarr")  # fmt: skip
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory ({expected})")
    if (p / "zarr.json").exists() or not p.is_dir():  # one log (InteractionLog.open names what is wrong)
        run_dir = p.parent.parent if p.parent.name == SHARDS_DIR else p.parent
        return RunLayout(run_dir, (p,), False, None)
    if (p / LOG_NAME).exists() or (p / SHARDS_DIR).exists():
        logs = _run_logs(p)
        if not logs:
            raise FileNotFoundError(f"{p}: no interaction log yet ({p / SHARDS_DIR} holds no .zarr store)")
        return RunLayout(p, tuple(logs), bool(_shard_stores(p / SHARDS_DIR)), p / SHARDS_DIR)
    if _is_shards_dir(p):
        logs = _shard_stores(p)
        if not logs:
            raise FileNotFoundError(f"{p}: no shard store (*.zarr) in this shards directory")
        return RunLayout(p.parent, tuple(logs), True, p)
    raise FileNotFoundError(f"{p}: no interaction log found ({expected})")


# ----------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class ShardInfo:
    """One log of a run as of the reader's last open / refresh: its store, collector and committed records."""

    path: Path
    worker_id: int
    robot_kind: str  # "" when the log does not say (a single store with several or no robot kinds)
    count: int  # committed records the reader has numbered


class ShardChunkDamageError(ChunkDamageError):
    """A read met a damaged chunk of one shard. `damage` / `records` use GLOBAL record indices (rows are
    the shard's own array rows); `local_damage` is the shard's own error detail, `shard` names the shard."""

    def __init__(self, run_path: Path, shard_no: int, shard: ShardInfo, damage: Sequence[ChunkDamage],
                 local_damage: Sequence[ChunkDamage]) -> None:  # fmt: skip
        super().__init__(shard.path, damage)
        self.run_path = Path(run_path)
        self.shard_no = shard_no
        self.shard = shard
        self.local_damage = tuple(local_damage)
        what = "; ".join(f"array {d.array!r}, {d.where()} [shard {records_text(loc.records) or 'records unknown'}]"
                         f": {d.error}" for d, loc in zip(self.damage, self.local_damage, strict=True))  # fmt: skip
        self.args = (f"{shard.path} (shard {shard_no}, worker {shard.worker_id}): damaged chunk, cannot decode "
                     f"{what} (`python -m data.inspect {run_path} --verify` lists every damaged chunk)",)  # fmt: skip

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (e.g. raised inside a Ray actor)
        return (type(self), (self.run_path, self.shard_no, self.shard, self.damage, self.local_damage))


@dataclass(frozen=True)
class ShardVerifyResult:
    """`InteractionLog.verify` of one shard, with its damage also in global record indices."""

    shard_no: int
    shard: ShardInfo
    result: VerifyResult  # the shard's own result (local rows and records)
    damage: tuple[ChunkDamage, ...]  # result.damage with records as global indices (rows stay local)


@dataclass(frozen=True)
class RunVerifyResult:
    """`RunLog.verify`: every shard's result; the totals and damage over all of them (global records)."""

    shards: tuple[ShardVerifyResult, ...]

    @property
    def records(self) -> int:
        return sum(s.result.records for s in self.shards)

    @property
    def hypothesis_rows(self) -> int:
        return sum(s.result.hypothesis_rows for s in self.shards)

    @property
    def chunks(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.shards:
            for a, c in s.result.chunks.items():
                out[a] = out.get(a, 0) + c
        return out

    @property
    def damage(self) -> tuple[ChunkDamage, ...]:
        return tuple(d for s in self.shards for d in s.damage)

    @property
    def damaged_records(self) -> tuple[int, ...]:
        return tuple(sorted({r for d in self.damage for r in d.records}))


@dataclass
class _Shard:
    path: Path
    log: InteractionLog
    worker_id: int
    known: int  # committed records numbered so far
    global_of: np.ndarray  # (known,) int64: local index -> global index
    last_t: float  # order key (running maximum of t_start [unix s]) of the last numbered record


class RunLog:
    """Read-only view of a run's logs as one log with stable global indices (see the module docstring)."""

    def __init__(self, path: Path, layout: RunLayout) -> None:
        self._path = path
        self._layout = layout
        self._shards: list[_Shard] = []
        self._shard_of = np.zeros(0, dtype=np.int32)  # global index -> shard number
        self._local_of = np.zeros(0, dtype=np.int64)  # global index -> local index
        self._closed = False

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunLog:
        """Open the logs at `path` (run directory, shards/ directory or .zarr log) read-only and number
        their committed records. FileNotFoundError / LogFormatError as in the module docstring."""
        p = Path(path)
        layout = find_logs(p)
        obj = cls(p, layout)
        try:
            for store in layout.logs:
                obj._add_shard(store, strict=True)
            obj._number_new()
        except BaseException:
            obj.close()
            raise
        return obj

    # ------------------------------------------------------------------ properties
    @property
    def path(self) -> Path:
        """The path this reader was opened with."""
        return self._path

    @property
    def run_dir(self) -> Path:
        """The run directory (where the loop's metrics.jsonl lives)."""
        return self._layout.run_dir

    @property
    def sharded(self) -> bool:
        """True when the logs include shards/ stores (False: one log)."""
        return self._layout.sharded or len(self._shards) > 1

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_NAME

    @property
    def _first(self) -> InteractionLog:
        self._check_open()
        return self._shards[0].log

    @property
    def height(self) -> int:
        """Image height in pixels (the same in every shard)."""
        return self._first.height

    @property
    def width(self) -> int:
        """Image width in pixels (the same in every shard)."""
        return self._first.width

    @property
    def schema_version(self) -> int:
        return self._first.schema_version

    @property
    def intrinsics(self) -> np.ndarray | None:
        """Nominal 3x3 intrinsics [px] of the first shard (each record stores its own K)."""
        return self._first.intrinsics

    @property
    def extrinsics(self) -> np.ndarray | None:
        """Nominal 4x4 world-from-camera [m] of the first shard (each record stores its own camera_pose)."""
        return self._first.extrinsics

    @property
    def config_snapshot(self) -> dict:
        """The first shard's config snapshot."""
        return self._first.config_snapshot

    @property
    def code_version(self) -> str:
        """The first shard's code version."""
        return self._first.code_version

    @property
    def attrs(self) -> dict[str, Any]:
        """The first shard's group attributes as of its last refresh (a copy)."""
        return self._first.attrs

    @property
    def shards(self) -> list[ShardInfo]:
        """Every log of the run in shard-number order, with the records numbered as of the last refresh."""
        self._check_open()
        return [self._info(s) for s in self._shards]

    def _info(self, s: _Shard) -> ShardInfo:
        attrs = s.log.attrs
        kind = attrs.get("robot_kind")
        if not isinstance(kind, str):
            kinds = s.log.vocab["robot_kind"]
            kind = kinds[0] if len(kinds) == 1 else ""
        return ShardInfo(s.path, s.worker_id, kind, s.known)

    def shard_counts(self, n: int | None = None) -> list[int]:
        """Records of each shard (shard-number order) among global indices [0, n) (default: all numbered)."""
        self._check_open()
        shard = self._shard_of if n is None else self._shard_of[: max(0, int(n))]
        return np.bincount(shard, minlength=len(self._shards)).astype(int).tolist()

    def __len__(self) -> int:
        """Records numbered as of the last open / refresh (does not re-read the shards)."""
        self._check_open()
        return len(self._shard_of)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._shard_of)} records in {len(self._shards)} shards"
        return f"RunLog({str(self._path)!r}, {state})"

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close every shard's reader. Idempotent."""
        self._closed = True
        for s in self._shards:
            s.log.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self!r} is closed")

    # ------------------------------------------------------------------ shards and numbering
    def _add_shard(self, store: Path, *, strict: bool) -> bool:
        """Open `store` read-only and append it as the next shard after checking it agrees with the others.
        strict=False (a shard that appeared after open): a store that is not (yet) a log is skipped (False),
        it may be being created; a log that disagrees raises all the same."""
        try:
            log = InteractionLog.open(store, "r")
        except (FileNotFoundError, LogFormatError) as e:
            if not strict:
                return False
            if isinstance(e, FileNotFoundError):
                raise
            raise LogFormatError(f"{self._path}: shard {store} is not a usable interaction log ({e})") from e
        try:
            self._check_agrees(store, log)
            worker_id = self._worker_id(store, log)
        except BaseException:
            log.close()
            raise
        self._shards.append(_Shard(store, log, worker_id, 0, np.zeros(0, dtype=np.int64), -np.inf))
        return True

    def _check_agrees(self, store: Path, log: InteractionLog) -> None:
        if not self._shards:
            return
        ref = self._shards[0]
        for what, a, b in (("schema_version", ref.log.schema_version, log.schema_version),
                           ("height", ref.log.height, log.height), ("width", ref.log.width, log.width)):  # fmt: skip
            if a != b:
                raise LogFormatError(
                    f"{self._path}: shards disagree on {what}: {ref.path} has {a}, {store} has {b} "
                    f"(images {ref.log.height}x{ref.log.width} vs {log.height}x{log.width}, schema_version "
                    f"{ref.log.schema_version} vs {log.schema_version}); a run's shards must share the schema "
                    "and image size (nothing was changed)"
                )

    def _worker_id(self, store: Path, log: InteractionLog) -> int:
        wid = log.attrs.get("worker_id")
        m = _WORKER_RE.match(store.name)
        if wid is None:  # a log not written by open_shard_writer: its name's number, else 0
            wid = int(m.group(1)) if m else 0
        if not isinstance(wid, int) or isinstance(wid, bool) or wid < 0:
            raise LogFormatError(f"{store}: attribute 'worker_id' is invalid ({wid!r})")
        if m and int(m.group(1)) != wid:
            raise LogFormatError(f"{store}: attribute worker_id is {wid} but the store is named {store.name}")
        if store.name != LOG_NAME:
            for s in self._shards:
                if s.worker_id == wid and s.path.name != LOG_NAME:
                    raise LogFormatError(
                        f"{self._path}: shards {s.path} and {store} both have worker_id {wid}"
                    )
        return wid

    def refresh(self) -> int:
        """Re-read every shard's commit marker (and add shards that appeared); number the records committed
        since, after all earlier ones (module docstring). Returns how many records are new."""
        self._check_open()
        if self._layout.shards_dir is not None:
            known = {s.path for s in self._shards}
            for store in _shard_stores(self._layout.shards_dir):
                if store not in known:
                    self._add_shard(store, strict=False)
        return self._number_new()

    def _number_new(self) -> int:
        parts = []
        for k, s in enumerate(self._shards):
            count = s.log.refresh()
            if count > s.known:
                t = self._t_start(s, s.known, count)
                parts.append((k, count, t))
        if not parts:
            return 0
        new = [(self._shards[k], k, count) for k, count, _ in parts]
        t = np.concatenate([ts for _, _, ts in parts])
        worker = np.concatenate(
            [np.full(count - s.known, s.worker_id, dtype=np.int64) for s, _, count in new]
        )
        shard = np.concatenate([np.full(count - s.known, k, dtype=np.int32) for s, k, count in new])
        local = np.concatenate([np.arange(s.known, count, dtype=np.int64) for s, _, count in new])
        order = np.lexsort((local, shard, worker, t))  # the last key sorts first
        n0, total = len(self._shard_of), len(t)
        rank = np.empty(total, dtype=np.int64)
        rank[order] = np.arange(n0, n0 + total, dtype=np.int64)
        self._shard_of = np.concatenate([self._shard_of, shard[order]])
        self._local_of = np.concatenate([self._local_of, local[order]])
        start = 0
        for k, count, ts in parts:
            s = self._shards[k]
            m = count - s.known
            s.global_of = np.concatenate([s.global_of, rank[start : start + m]])
            s.known, s.last_t = count, float(ts[-1])
            start += m
        return total

    def _t_start(self, s: _Shard, lo: int, hi: int) -> np.ndarray:
        """Order keys of local records [lo, hi): t_start [unix s] as the shard's running maximum (module
        doc); a value that cannot be read (damaged chunk: error or NaN) takes its predecessor's, or the
        next readable one's at the start of the shard."""
        try:
            t = np.asarray(s.log.read_field("t_start", np.arange(lo, hi)), dtype=np.float64)
        except ChunkDamageError:
            c = int(s.log.attrs.get("chunk_records", 16))
            t = np.full(hi - lo, np.nan)
            for a in range(lo - lo % c, hi, c):
                a0, a1 = max(a, lo), min(a + c, hi)
                try:
                    t[a0 - lo : a1 - lo] = s.log.read_field("t_start", np.arange(a0, a1))
                except ChunkDamageError:
                    pass
        t = np.where(np.isfinite(t), t, np.nan)
        key = np.fmax.accumulate(np.concatenate([[s.last_t], t]))[1:]  # fmax skips NaN
        if np.isneginf(key[0]):  # no readable value before: take the first readable one after
            first = np.flatnonzero(np.isfinite(key))
            key[: first[0] if len(first) else len(key)] = key[first[0]] if len(first) else -np.inf
        return key

    def locate(self, i: int) -> tuple[int, int]:
        """Global index i (negative: from the end) -> (shard number, local index in that shard's log)."""
        g = self._resolve_one(i)
        return int(self._shard_of[g]), int(self._local_of[g])

    def global_index(self, shard_no: int, local: int) -> int:
        """(shard number, local index) -> the global index of that numbered record."""
        self._check_open()
        if not 0 <= int(shard_no) < len(self._shards):
            raise IndexError(f"shard number {shard_no} out of range for {len(self._shards)} shards")
        s = self._shards[int(shard_no)]
        if not 0 <= int(local) < s.known:
            raise IndexError(
                f"local index {local} out of range for the {s.known} numbered records of {s.path}"
            )
        return int(s.global_of[int(local)])

    # ------------------------------------------------------------------ reading
    def _resolve_one(self, i: Any) -> int:
        self._check_open()
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"record index must be an int, got {type(i).__name__}")
        n = len(self._shard_of)
        if not -n <= int(i) < n:
            raise IndexError(
                f"record index {int(i)} out of range for {n} records (call refresh() for new ones)"
            )
        return int(i) % n

    def _resolve(self, indices: Any) -> np.ndarray:
        n = len(self._shard_of)
        if indices is None:
            return np.arange(n, dtype=np.int64)
        if isinstance(indices, slice):
            return np.arange(n, dtype=np.int64)[indices]
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError("indices must be None, an int, a slice or a 1-D sequence of ints")
        idx = idx.astype(np.int64)
        bad = (idx >= n) | (idx < -n)
        if bad.any():
            raise IndexError(f"record index {int(idx[bad][0])} out of range for {n} records "
                             "(call refresh() for new ones)")  # fmt: skip
        return np.where(idx < 0, idx + n, idx)

    def _damage_error(self, k: int, e: ChunkDamageError) -> ShardChunkDamageError:
        s = self._shards[k]
        return ShardChunkDamageError(self._path, k, self._info(s), self._global_damage(s, e.damage), e.damage)

    def _global_damage(self, s: _Shard, damage: Sequence[ChunkDamage]) -> tuple[ChunkDamage, ...]:
        out = []
        for d in damage:
            recs = tuple(sorted(int(s.global_of[r]) for r in d.records if r < s.known))
            out.append(ChunkDamage(d.array, d.rows, recs, d.error, d.owners_known))
        return tuple(out)

    def read_field(self, name: str, indices: Any = None) -> Any:
        """Bulk-read one field for many records (see `read_fields`)."""
        return self.read_fields((name,), indices)[name]

    def read_fields(self, names: Sequence[str], indices: Any = None) -> dict[str, Any]:
        """Bulk-read fields of numbered records by global index, one `InteractionLog.read_fields` per shard.

        indices: None (all numbered records), an int (drops the record axis), a slice, or a 1-D sequence of
        ints (any order, repeats and negatives allowed; past len() -> IndexError). Shapes, dtypes and units as
        `InteractionLog.read_fields`. ShardChunkDamageError (global records) if a chunk cannot be decoded.
        """
        self._check_open()
        if isinstance(names, str):
            raise TypeError("names must be a sequence of field names (use read_field for one)")
        if isinstance(indices, (int, np.integer)) and not isinstance(indices, bool):
            k, local = self.locate(indices)
            return self._shard_read(k, names, local)
        idx = self._resolve(indices)
        shard, local = self._shard_of[idx], self._local_of[idx]
        used = np.unique(shard)
        if len(used) <= 1:  # one shard (or none): its own result, in the caller's order
            return self._shard_read(int(used[0]) if len(used) else 0, names, local)
        got = [(np.flatnonzero(shard == k), self._shard_read(int(k), names, local[shard == k])) for k in used]
        out: dict[str, Any] = {}
        for name in names:
            parts = [(pos, r[name]) for pos, r in got]
            if isinstance(parts[0][1], list):
                merged: list[Any] = [None] * len(idx)
                for pos, v in parts:
                    for p, x in zip(pos.tolist(), v, strict=True):
                        merged[p] = x
                out[name] = merged
            else:
                dtype = np.result_type(*(v.dtype for _, v in parts))
                arr = np.empty((len(idx), *parts[0][1].shape[1:]), dtype=dtype)
                for pos, v in parts:
                    arr[pos] = v
                out[name] = arr
        return out

    def _shard_read(self, k: int, names: Sequence[str], local: Any) -> dict[str, Any]:
        try:
            return self._shards[k].log.read_fields(names, local)
        except ChunkDamageError as e:
            raise self._damage_error(k, e) from e

    def __getitem__(self, i: int) -> InteractionRecord:
        k, local = self.locate(i)
        try:
            return self._shards[k].log[local]
        except ChunkDamageError as e:
            raise self._damage_error(k, e) from e

    def records(self, start: int = 0, stop: int | None = None) -> Iterator[InteractionRecord]:
        """Iterate over numbered records [start, stop) in global order (stop defaults to len())."""
        n = len(self)
        stop = n if stop is None else min(int(stop), n)
        for i in range(int(start), stop):
            yield self[i]

    def verify(self) -> RunVerifyResult:
        """Decode every chunk of every shard's committed rows (`InteractionLog.verify`); read-only. Refreshes
        first and after (records verified are numbered), so the damage is named in global indices."""
        self.refresh()
        results = [s.log.verify() for s in self._shards]
        self.refresh()
        return RunVerifyResult(tuple(
            ShardVerifyResult(k, self._info(s), r, self._global_damage(s, r.damage))
            for k, (s, r) in enumerate(zip(self._shards, results, strict=True))
        ))  # fmt: skip


__all__ = [
    "LOG_NAME",
    "SHARDS_DIR",
    "RunLayout",
    "RunLog",
    "RunVerifyResult",
    "ShardChunkDamageError",
    "ShardInfo",
    "ShardVerifyResult",
    "find_logs",
    "open_shard_writer",
    "shard_path",
]
