"""Append-only interaction log: one writer, many readers, one Zarr v3 group on local disk.

Typical use::

    with InteractionLog.open_or_create("runs/x/interactions.zarr", 240, 320, code_version=sha) as log:
        log.append(record)                      # -> index of the new record
    log = InteractionLog.open(path)             # read-only; len(log) re-reads the commit marker
    labels = log.read_field("label")            # fast bulk read of one field

On-disk schema, version 1 (n = committed records, m = committed hypothesis masks, H x W image):

| array        | shape            | dtype   | rows/chunk    | content                                              |
| ------------ | ---------------- | ------- | ------------- | ---------------------------------------------------- |
| `rgb`        | (n, 2, H, W, 3)  | uint8   | 1             | [:, 0] = rgb_before, [:, 1] = rgb_after              |
| `depth_mm`   | (n, 2, H, W)     | uint16  | 1             | depth along camera z in mm, 0 = missing; [:, 0] before, [:, 1] after |
| `mask`       | (n, H, W)        | bool    | 1             | extracted noisy mask, before frame                   |
| `record_f64` | (n, 98)          | float64 | chunk_records | 0-8 K [px] row-major; 9-24 camera_pose (world-from-camera) row-major [m]; 25 angle [rad]; 26 push_length [m]; 27 t_start, 28 t_end [unix s]; 29-30 pixel (u, v) [px]; 31-33 target_robot x, y, z [m, robot base frame, NaN = none]; 34-97 hypothesis scores 0..63 (NaN past the record's count) |
| `record_i64` | (n, 9)           | int64   | chunk_records | hypothesis_offset, hypothesis_count, chosen_hypothesis (-1 = none), label (Label), primitive, label_reason, robot_kind (codes into the `vocab` attribute), model_version, grasp_success (-1/0/1) |
| `hypotheses` | (m, ceil(H*W/8)) | uint8   | 32            | one hypothesis mask per row: np.packbits of the C-order flattened (H, W) bool mask (big bit order) |

Record i owns hypothesis rows [hypothesis_offset, hypothesis_offset + hypothesis_count): a ragged
layout, so the 0..64 masks per record cost no padding (a packed 320x240 mask is 9.6 kB raw and a
few hundred bytes compressed). The scores live in 64 fixed float64 columns of `record_f64`
(NaN-padded; ~0.5 kB raw, a few bytes compressed) instead of a second ragged array: it saves one
zarr write per append, and float32 scores round-trip exactly through float64. Likewise pixel and
target_robot (float32) are exact in float64 columns. Each table lists its column names in its
`columns` attribute; every array has `dimension_names`, `description` and `unit` attributes.

Codecs (zarr 3 codec objects): `ZstdCodec(level=3)`, except `rgb` (`ZstdCodec(level=rgb_zstd_level)`,
default 1) and `depth_mm` (`BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=2)`,
smaller for smooth uint16 depth). No sharding, no object / string / variable-length dtypes, nothing
pickled.

Group attributes: `format` ("interactive-seg/interaction-log"), `schema_version` (int), `height`,
`width`, `intrinsics` (3x3 list or null, pixels), `extrinsics` (4x4 world-from-camera list or null),
`config` (JSON config snapshot), `code_version`, `created_unix`, `chunk_records`, `vocab`
({"primitive": [...], "label_reason": [...], "robot_kind": [...]}, code = list index, grows as
new strings appear), `committed_count` (= n) and `committed_hypotheses` (= m), plus any extra
attributes passed to `create(attrs=...)` (a shard's `worker_id` and `robot_kind`: data/shards.py).

Why this layout (measured on the 2-core dev machine with zarr 3.1.6): each zarr array write costs
~1.5 ms of CPU (event-loop and thread hand-offs) however small the chunk, so one array per scalar
field (~20 arrays) would alone cost ~30 ms per append. Scalars therefore live in two typed tables,
before/after images share one array (one write; zstd also finds the unchanged part of the after
image in the before image, ~2x smaller for noise-free sim renders), and image-sized arrays hold one
record per chunk (re-compressing a growing 16-record image chunk on every append cost ~90 ms).
Small arrays are chunked by `chunk_records` (default 16) along the record axis; the writer keeps
the committed rows of each array's last, partial chunk in memory and always writes whole chunks,
so an append never reads a chunk back. The six data writes of an append are issued together
through zarr's async API. zstd level 1 for RGB (vs 3) saves ~5 ms per append at ~15% more disk on
noisy camera images; pass `rgb_zstd_level=3` to `create` to trade the other way.
`python -m data.bench_log` measures append time and bytes per interaction.

Crash safety (the commit-marker idea of Diffusion Policy's `episode_ends`):
1. `append` grows arrays when needed (capacity beyond the committed rows is allowed and grows in
   steps of 64 records / 1024 hypothesis rows, so the metadata rewrites of a resize are rare),
   writes every array's rows for the new record, and only then
2. rewrites the group attributes with the new `committed_count` / `committed_hypotheses` and any
   new vocabulary strings: one atomic file replace (zarr's LocalStore writes a temporary file and
   renames it), so the vocabulary is on disk no later than the marker that needs it.
A record is therefore committed completely or not at all; rows at or past the marker mean nothing.
`close()` trims every array to exactly the committed rows, so in a cleanly closed log the array
lengths equal the marker, and longer arrays mean the writer died mid-session. Opening such a log
with mode 'a' repairs it: rows past the marker in the last kept chunk are reset to the fill value,
the arrays are truncated to the marker (whole chunks beyond are deleted) and leftover `*.partial`
temp files are removed. Readers (mode 'r') never write; they re-read the marker on `refresh()` /
`len()` and only expose committed records, so they can read while the writer appends. A single
writer is enforced with an advisory `flock` on the log directory (released by the OS if the writer
dies). Durability against power loss is not attempted (no fsync); process crashes are covered.

A store whose `schema_version` is newer than `SCHEMA_VERSION`, or that lacks arrays / attributes,
raises `LogFormatError` before anything is written (no repair is attempted).

Damaged chunks (a chunk file truncated, emptied or garbled on disk, so its codec cannot decode it): a
read that meets one raises `ChunkDamageError` (a `LogFormatError`) naming each undecodable array, its
rows and the committed records they belong to, instead of the codec's anonymous error; every other
record stays readable. `verify()` decodes every chunk of every committed row and returns the damage
(`python -m data.inspect RUN --verify`); it only reads. Opening a damaged log for appending fails with
ChunkDamageError only when the writer needs the damaged chunk (the last, partial chunk of an array it
appends to). Damaged data is never repaired or rewritten: the store cannot know the lost values. A
chunk file that is missing reads as the fill value (zarr does not store all-fill chunks), and a
corruption that still decodes (the codecs carry no checksum) is not detected.

Not thread-safe: use one `InteractionLog` object per thread or process.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from data.schema import (
    MAX_HYPOTHESES,
    InteractionRecord,
    Label,
    depth_to_mm,
    mm_to_depth,
    primitive_name,
)

try:  # zarr's own event-loop runner: lets one append issue all its array writes concurrently.
    from zarr.core.sync import sync as _zarr_sync
except ImportError:  # pragma: no cover - fall back to sequential writes if zarr moves it
    _zarr_sync = None

_logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FORMAT_NAME = "interactive-seg/interaction-log"
STRING_FIELDS = ("primitive", "label_reason", "robot_kind")
MAX_VOCAB = 65535

HYPOTHESIS_CHUNK_ROWS = 32
VERIFY_BATCH_BYTES = 32 << 20  # verify() decodes this many raw bytes per read (a damaged read is re-done per chunk)
GROW_RECORDS = 64
GROW_HYPOTHESIS_ROWS = 1024

F64_COLUMNS: tuple[str, ...] = (
    *(f"K_{r}{c}" for r in range(3) for c in range(3)),
    *(f"camera_pose_{r}{c}" for r in range(4) for c in range(4)),
    "angle",
    "push_length",
    "t_start",
    "t_end",
    "pixel_u",
    "pixel_v",
    "target_robot_x",
    "target_robot_y",
    "target_robot_z",
    *(f"hypothesis_score_{k:02d}" for k in range(MAX_HYPOTHESES)),
)
_F64 = {name: i for i, name in enumerate(F64_COLUMNS)}
_SCORE_COL = _F64["hypothesis_score_00"]
I64_COLUMNS: tuple[str, ...] = (
    "hypothesis_offset",
    "hypothesis_count",
    "chosen_hypothesis",
    "label",
    "primitive",
    "label_reason",
    "robot_kind",
    "model_version",
    "grasp_success",
)
_I64 = {name: i for i, name in enumerate(I64_COLUMNS)}

# field -> (table array, first column, shape of the field, dtype returned by read_field)
_TABLE_FIELDS: dict[str, tuple[str, int, tuple[int, ...], Any]] = {
    "K": ("record_f64", _F64["K_00"], (3, 3), np.float64),
    "camera_pose": ("record_f64", _F64["camera_pose_00"], (4, 4), np.float64),
    "angle": ("record_f64", _F64["angle"], (), np.float64),
    "push_length": ("record_f64", _F64["push_length"], (), np.float64),
    "t_start": ("record_f64", _F64["t_start"], (), np.float64),
    "t_end": ("record_f64", _F64["t_end"], (), np.float64),
    "pixel": ("record_f64", _F64["pixel_u"], (2,), np.float32),  # float32 values, exact in float64
    "target_robot": ("record_f64", _F64["target_robot_x"], (3,), np.float32),
    "hypothesis_count": ("record_i64", _I64["hypothesis_count"], (), np.int64),
    "chosen_hypothesis": ("record_i64", _I64["chosen_hypothesis"], (), np.int64),
    "label": ("record_i64", _I64["label"], (), np.uint8),
    "model_version": ("record_i64", _I64["model_version"], (), np.int64),
    "grasp_success": ("record_i64", _I64["grasp_success"], (), np.int8),
}


def _get(rows: np.ndarray, field: str) -> np.ndarray:
    """Field values from table rows (k, columns) -> (k, *shape) in the field's dtype."""
    _, col, shape, dtype = _TABLE_FIELDS[field]
    width = int(np.prod(shape)) if shape else 1
    return rows[:, col : col + width].reshape(len(rows), *shape).astype(dtype)


def _put(row: np.ndarray, field: str, value: Any) -> None:
    """Store one record's field in its table row (through the field's dtype, so it round-trips)."""
    _, col, shape, dtype = _TABLE_FIELDS[field]
    width = int(np.prod(shape)) if shape else 1
    row[col : col + width] = np.asarray(value, dtype=dtype).reshape(width)


# field -> (image array, view index or None)
_IMAGE_FIELDS: dict[str, tuple[str, int | None]] = {
    "rgb_before": ("rgb", 0),
    "rgb_after": ("rgb", 1),
    "depth_before": ("depth_mm", 0),
    "depth_after": ("depth_mm", 1),
    "mask": ("mask", None),
}
_RAGGED_FIELDS = ("hypotheses", "hypothesis_scores")
FIELD_NAMES: tuple[str, ...] = (*_IMAGE_FIELDS, *_TABLE_FIELDS, *STRING_FIELDS, *_RAGGED_FIELDS)
_REQUIRED_ATTRS = (
    "format",
    "schema_version",
    "height",
    "width",
    "intrinsics",
    "extrinsics",
    "config",
    "code_version",
    "vocab",
    "committed_count",
    "committed_hypotheses",
)


_CREATE_ATTRS = ("created_unix", "chunk_records")  # written by `create` besides _REQUIRED_ATTRS


class LogFormatError(ValueError):
    """The path is not an interaction log this code can use (not a log, damaged, or too new)."""


class LogLockedError(RuntimeError):
    """Another process (or another InteractionLog object) holds the log open for writing."""


def format_indices(indices: Any) -> str:
    """Sorted, distinct indices as compact ranges: [0, 1, 2, 3, 7, 9, 10] -> '0-3, 7, 9-10'."""
    values = sorted({int(i) for i in indices})
    parts: list[str] = []
    start = prev = None
    for v in [*values, None]:
        if prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = v
    return ", ".join(parts)


def records_text(indices: Any) -> str:
    """'record 3' / 'records 0-15, 18'."""
    n = len({int(i) for i in indices})
    return f"record{'s' if n > 1 else ''} {format_indices(indices)}"


def _error_text(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


@dataclass(frozen=True)
class ChunkDamage:
    """One chunk of an array that cannot be decoded (its file truncated, emptied or garbled on disk)."""

    array: str
    rows: tuple[int, int]  # [start, stop): the committed rows of the array in that chunk
    records: tuple[int, ...]  # the committed records owning those rows (hypotheses: those record_i64 names)
    error: str  # the decoder's message
    owners_known: bool = True  # False: some rows' owners are in record_i64 chunks that cannot be read either

    def where(self) -> str:
        recs = records_text(self.records) if self.records else ""
        if not self.owners_known:
            recs = f"{recs} and records unknown (record_i64 damaged)" if recs else "records unknown (record_i64 damaged)"
        if self.array == "hypotheses":
            return f"hypothesis rows {self.rows[0]}-{self.rows[1] - 1} ({recs})"
        return recs


class ChunkDamageError(LogFormatError):
    """A read met chunks that cannot be decoded; `damage` says which arrays, rows and records."""

    def __init__(self, path: str | os.PathLike, damage: Sequence[ChunkDamage]) -> None:
        self.path = Path(path)
        self.damage = tuple(damage)
        what = "; ".join(f"array {d.array!r}, {d.where()}: {d.error}" for d in self.damage)
        super().__init__(f"{path}: damaged chunk, cannot decode {what} "
                         f"(`python -m data.inspect {path} --verify` lists every damaged chunk)")  # fmt: skip

    @property
    def records(self) -> dict[str, tuple[int, ...]]:
        """array -> the committed records whose rows in it cannot be decoded."""
        out: dict[str, set[int]] = {}
        for d in self.damage:
            out.setdefault(d.array, set()).update(d.records)
        return {a: tuple(sorted(r)) for a, r in out.items()}


@dataclass(frozen=True)
class VerifyResult:
    """What `InteractionLog.verify` decoded: committed records and hypothesis rows, chunks per array, damage."""

    records: int
    hypothesis_rows: int
    chunks: dict[str, int]
    damage: tuple[ChunkDamage, ...]

    @property
    def damaged_records(self) -> tuple[int, ...]:
        return tuple(sorted({r for d in self.damage for r in d.records}))


@dataclass(frozen=True)
class _ArraySpec:
    name: str
    row_shape: tuple[int, ...]
    dtype: np.dtype
    chunk_rows: int
    fill: Any
    ragged: bool  # rows are hypotheses (count = committed_hypotheses), not records
    dims: tuple[str, ...]
    unit: str
    description: str
    columns: tuple[str, ...] | None = None
    level: int = 3  # zstd level

    def compressors(self) -> list:
        if self.name == "depth_mm":  # bit-shuffle makes smooth uint16 depth compress better
            return [BloscCodec(cname="zstd", clevel=self.level, shuffle="bitshuffle", typesize=2)]
        return [ZstdCodec(level=self.level)]


def _array_specs(height: int, width: int, chunk_records: int, rgb_level: int = 1) -> dict[str, _ArraySpec]:
    H, W = height, width
    packed = (H * W + 7) // 8
    specs = [
        _ArraySpec("rgb", (2, H, W, 3), np.dtype(np.uint8), 1, 0, False,
                   ("record", "view", "v", "u", "channel"), "8-bit RGB",
                   "view 0 = before the action, view 1 = after", level=rgb_level),
        _ArraySpec("depth_mm", (2, H, W), np.dtype(np.uint16), 1, 0, False,
                   ("record", "view", "v", "u"), "mm",
                   "depth along camera z in millimetres, 0 = missing; view 0 = before, 1 = after"),
        _ArraySpec("mask", (H, W), np.dtype(np.bool_), 1, False, False,
                   ("record", "v", "u"), "", "extracted noisy object mask in the before frame"),
        _ArraySpec("record_f64", (len(F64_COLUMNS),), np.dtype(np.float64), chunk_records, float("nan"), False,
                   ("record", "column"), "see columns",
                   "K [px], camera_pose (world-from-camera, m), angle [rad], push_length [m], t_start/t_end "
                   "[unix s], pixel (u, v) [px], target_robot [m, robot base frame, NaN = none], hypothesis "
                   "scores (NaN past hypothesis_count)", F64_COLUMNS),
        _ArraySpec("record_i64", (len(I64_COLUMNS),), np.dtype(np.int64), chunk_records, 0, False,
                   ("record", "column"), "see columns",
                   "hypothesis row range, chosen hypothesis, label, vocabulary codes (see group attr vocab), "
                   "model_version, grasp_success", I64_COLUMNS),
        _ArraySpec("hypotheses", (packed,), np.dtype(np.uint8), HYPOTHESIS_CHUNK_ROWS, 0, True,
                   ("hypothesis", "packed_bits"), "bits",
                   f"np.packbits of the C-order flattened ({H}, {W}) bool mask"),
    ]  # fmt: skip
    return {s.name: s for s in specs}


@dataclass
class _Meta:
    height: int
    width: int
    count: int
    hyp_rows: int
    vocab: dict[str, list[str]]
    attrs: dict[str, Any]


class _TailAppender:
    """Appends rows to one array in whole chunks, so zarr never reads a chunk back.

    Keeps the committed rows of the array's last (partial) chunk in memory; a write re-emits those
    rows plus the new ones, padded with the fill value up to the chunk boundary.
    """

    def __init__(self, array: zarr.Array, spec: _ArraySpec, end: int) -> None:
        self.array = array
        self.spec = spec
        self.chunk = int(array.chunks[0])
        self.end = end
        start = end - end % self.chunk
        if end > start:
            self.tail = np.asarray(array[start:end])
        else:
            self.tail = np.empty((0, *spec.row_shape), dtype=spec.dtype)

    def plan(self, rows: np.ndarray) -> tuple[slice, np.ndarray, np.ndarray]:
        """-> (selection to write, block of whole chunks, tail to keep once committed)."""
        start = self.end - self.end % self.chunk
        data = np.concatenate([self.tail, rows]) if len(self.tail) else rows
        total = len(data)
        padded = -(-total // self.chunk) * self.chunk
        if padded > total:
            pad = np.full((padded - total, *self.spec.row_shape), self.spec.fill, dtype=self.spec.dtype)
            data = np.concatenate([data, pad])
        new_end = self.end + len(rows)
        tail_start = new_end - new_end % self.chunk
        new_tail = data[tail_start - start : new_end - start].copy()
        return slice(start, start + padded), data, new_tail


async def _gather(aws: Sequence[Any]) -> list[Any]:
    return await asyncio.gather(*aws)


def _run_writes(writes: list[tuple[zarr.Array, Any, np.ndarray]]) -> None:
    if _zarr_sync is not None and len(writes) > 1:
        _zarr_sync(_gather([a.async_array.setitem(sel, v) for a, sel, v in writes]))
    else:
        for a, sel, v in writes:
            a[sel] = v


def _run_reads(reads: list[tuple[zarr.Array, Any]]) -> list[np.ndarray]:
    if _zarr_sync is not None and len(reads) > 1:
        return [np.asarray(x) for x in _zarr_sync(_gather([a.async_array.getitem(sel) for a, sel in reads]))]
    return [np.asarray(a[sel]) for a, sel in reads]


def _round_up(x: int, k: int) -> int:
    return -(-x // k) * k


def _matrix_attr(name: str, value: Any, shape: tuple[int, int]) -> list[list[float]] | None:
    if value is None:
        return None
    m = np.asarray(value, dtype=np.float64)
    if m.shape != shape or not np.all(np.isfinite(m)):
        raise ValueError(f"{name}: expected a finite {shape} matrix, got shape {m.shape}")
    return m.tolist()


def _lock_dir(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LogLockedError(f"{path} is already open for writing by another process or object") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _release_lock(obj: InteractionLog | None, fd: int) -> None:
    """Release the write lock of a construction that failed, exactly once.

    Once the object exists its finalizer owns the descriptor: closing it here as well would let the
    finalizer later close whatever file reused the number (a stray EBADF in unrelated code).
    """
    if obj is not None and obj._finalizer is not None:
        obj._closed = True
        obj._finalizer()
    else:
        _unlock(fd)


def _unlock(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)  # closing the descriptor releases the flock
        except OSError:
            pass


def _size_mismatch(path: Path, have: tuple[int, int], want: tuple[int, int]) -> str:
    return f"{path} holds {have[0]}x{have[1]} images, not the requested {int(want[0])}x{int(want[1])}"


def _open_group_readonly(path: Path) -> zarr.Group:
    if not path.exists():
        raise FileNotFoundError(f"no interaction log at {path}")
    if not path.is_dir() or not (path / "zarr.json").is_file():
        raise LogFormatError(f"{path} is not an interaction log (not a Zarr v3 group directory)")
    store = zarr.storage.LocalStore(path, read_only=True)
    try:
        group = zarr.open_group(store=store, mode="r", zarr_format=3, use_consolidated=False)
    except Exception as e:  # zarr raises various types for malformed metadata
        raise LogFormatError(
            f"{path} is not an interaction log: cannot open it as a Zarr v3 group ({e})"
        ) from e
    return group


def _validate(group: zarr.Group, path: Path) -> tuple[_Meta, dict[str, zarr.Array]]:
    """Check attributes and arrays without writing anything; raise LogFormatError on problems."""
    attrs = group.attrs.asdict()
    if attrs.get("format") != FORMAT_NAME:
        raise LogFormatError(
            f"{path} is a Zarr group but not an interaction log "
            f"(attribute 'format' is {attrs.get('format')!r}, expected {FORMAT_NAME!r})"
        )
    version = attrs.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise LogFormatError(f"{path}: attribute 'schema_version' is missing or invalid ({version!r})")
    if version > SCHEMA_VERSION:
        raise LogFormatError(
            f"{path}: schema_version {version} is newer than this code supports ({SCHEMA_VERSION}); "
            "update the code to read it (the store was not modified)"
        )
    missing = [k for k in _REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise LogFormatError(f"{path}: missing group attribute(s) {missing}")

    def pos_int(key: str, allow_zero: bool) -> int:
        v = attrs[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
            raise LogFormatError(f"{path}: attribute {key!r} is invalid ({v!r})")
        return v

    H, W = pos_int("height", False), pos_int("width", False)
    count, hyp_rows = pos_int("committed_count", True), pos_int("committed_hypotheses", True)
    vocab = attrs["vocab"]
    if not isinstance(vocab, dict) or any(
        not isinstance(vocab.get(f), list) or not all(isinstance(s, str) for s in vocab[f])
        for f in STRING_FIELDS
    ):
        raise LogFormatError(f"{path}: attribute 'vocab' must map {STRING_FIELDS} to lists of strings")

    chunk_records = attrs.get("chunk_records", 16)
    arrays: dict[str, zarr.Array] = {}
    for name, spec in _array_specs(H, W, chunk_records).items():
        try:
            arr = group[name]
        except KeyError:
            raise LogFormatError(f"{path}: array {name!r} is missing") from None
        except Exception as e:  # zarr raises various types for malformed array metadata
            raise LogFormatError(f"{path}: array {name!r} cannot be opened ({_error_text(e)})") from None
        if not isinstance(arr, zarr.Array):
            raise LogFormatError(f"{path}: {name!r} is not an array")
        if arr.dtype != spec.dtype or tuple(arr.shape[1:]) != spec.row_shape:
            raise LogFormatError(
                f"{path}: array {name!r} has dtype {arr.dtype} and row shape {tuple(arr.shape[1:])}, "
                f"expected {spec.dtype} and {spec.row_shape}"
            )
        need = hyp_rows if spec.ragged else count
        if arr.shape[0] < need:
            raise LogFormatError(
                f"{path}: array {name!r} has {arr.shape[0]} rows but the commit marker says {need}: store damaged"
            )
        if spec.columns is not None and tuple(arr.attrs.get("columns", ())) != spec.columns:
            raise LogFormatError(f"{path}: array {name!r} has unexpected columns attribute")
        arrays[name] = arr
    try:
        last = np.asarray(arrays["record_i64"][count - 1]) if count else None
    except Exception:  # an undecodable chunk: reads name it (ChunkDamageError), a writer cannot open the log
        last = None
    if last is not None:
        if int(last[_I64["hypothesis_offset"]]) + int(last[_I64["hypothesis_count"]]) != hyp_rows:
            raise LogFormatError(
                f"{path}: last record's hypothesis rows do not end at committed_hypotheses={hyp_rows}: store damaged"
            )
    elif hyp_rows and not count:
        raise LogFormatError(
            f"{path}: committed_hypotheses={hyp_rows} with no committed records: store damaged"
        )
    meta = _Meta(H, W, count, hyp_rows, {f: list(vocab[f]) for f in STRING_FIELDS}, attrs)
    return meta, arrays


class InteractionLog:
    """Append-only log of `InteractionRecord`s in a Zarr v3 group (see the module docstring).

    Create with `create`, open with `open` (mode 'r' = read-only reader, 'a' = the single writer),
    or `open_or_create`. Use as a context manager or call `close()`.
    """

    def __init__(self, path: Path, mode: str, group: zarr.Group, arrays: dict[str, zarr.Array],
                 meta: _Meta, store: zarr.storage.LocalStore, lock_fd: int | None) -> None:  # fmt: skip
        self._path = path
        self._mode = mode
        self._group = group
        self._arrays = arrays
        self._store = store
        self._meta = meta
        self._specs = _array_specs(meta.height, meta.width, int(meta.attrs.get("chunk_records", 16)))
        self._lock_fd = lock_fd
        self._closed = False
        self._vocab_index = {f: {s: i for i, s in enumerate(meta.vocab[f])} for f in STRING_FIELDS}
        self._appenders: dict[str, _TailAppender] = {}
        self._finalizer = weakref.finalize(self, _unlock, lock_fd) if lock_fd is not None else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        height: int,
        width: int,
        *,
        intrinsics: Any = None,
        extrinsics: Any = None,
        config_snapshot: dict | None = None,
        code_version: str = "",
        chunk_records: int = 16,
        rgb_zstd_level: int = 1,
        attrs: dict | None = None,
    ) -> InteractionLog:
        """Create a new, empty log at `path` and return it open for appending (mode 'a').

        Raises FileExistsError if `path` exists (anything other than an empty directory): an existing
        log is never overwritten. `intrinsics` (3x3, pixels) and `extrinsics` (4x4 world-from-camera)
        are the nominal camera; each record still stores its own K and camera_pose.
        `config_snapshot` must be JSON-serialisable (convert an OmegaConf config with
        `OmegaConf.to_container(cfg, resolve=True)` first). `rgb_zstd_level`: zstd level of the
        RGB array; 1 keeps appends fast, 3 saves ~15% disk on noisy real-camera images at ~5 ms more
        per append (noise-free sim renders compress the same at either level).
        `attrs`: extra JSON-serialisable group attributes stored once at creation (e.g. a shard's
        `worker_id` and `robot_kind`, see data/shards.py); they may not reuse a name the log itself
        writes (ValueError).
        """
        path = Path(path)
        if int(height) <= 0 or int(width) <= 0:
            raise ValueError(f"height/width must be positive, got {height}x{width}")
        if int(chunk_records) <= 0:
            raise ValueError(f"chunk_records must be positive, got {chunk_records}")
        if not 1 <= int(rgb_zstd_level) <= 22:
            raise ValueError(f"rgb_zstd_level must be in 1..22, got {rgb_zstd_level}")
        if not isinstance(code_version, str):
            raise ValueError(f"code_version must be a str, got {code_version!r}")
        config = {} if config_snapshot is None else config_snapshot
        try:
            config = json.loads(json.dumps(config, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise ValueError(f"config_snapshot is not JSON-serialisable: {e}") from e
        K = _matrix_attr("intrinsics", intrinsics, (3, 3))
        T = _matrix_attr("extrinsics", extrinsics, (4, 4))
        extra = {} if attrs is None else attrs
        if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
            raise ValueError(f"attrs must be a dict with str keys, got {attrs!r}")
        reserved = sorted(set(extra) & {*_REQUIRED_ATTRS, *_CREATE_ATTRS})
        if reserved:
            raise ValueError(f"attrs: {reserved} are written by the log itself; choose other names")
        try:
            extra = json.loads(json.dumps(extra, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise ValueError(f"attrs is not JSON-serialisable: {e}") from e

        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FileExistsError(
                f"{path} already exists; refusing to overwrite (open it with mode 'a' instead)"
            )
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock_dir(path)
        obj = None
        try:
            if any(path.iterdir()):  # raced with another creator
                raise FileExistsError(f"{path} already exists; refusing to overwrite")
            store = zarr.storage.LocalStore(path)
            group = zarr.open_group(store=store, mode="w-", zarr_format=3)
            specs = _array_specs(int(height), int(width), int(chunk_records), int(rgb_zstd_level))
            arrays = {}
            for spec in specs.values():
                array_attrs: dict[str, Any] = {"description": spec.description, "unit": spec.unit}
                if spec.columns is not None:
                    array_attrs["columns"] = list(spec.columns)
                arrays[spec.name] = group.create_array(
                    spec.name,
                    shape=(0, *spec.row_shape),
                    dtype=spec.dtype,
                    chunks=(spec.chunk_rows, *spec.row_shape),
                    compressors=spec.compressors(),
                    fill_value=spec.fill,
                    dimension_names=spec.dims,
                    attributes=array_attrs,
                )
            group_attrs = {
                **extra,
                "schema_version": SCHEMA_VERSION,
                "height": int(height),
                "width": int(width),
                "intrinsics": K,
                "extrinsics": T,
                "config": config,
                "code_version": code_version,
                "created_unix": time.time(),
                "chunk_records": int(chunk_records),
                "vocab": {f: [] for f in STRING_FIELDS},
                "committed_count": 0,
                "committed_hypotheses": 0,
            }
            group.update_attributes(group_attrs)
            group.update_attributes({"format": FORMAT_NAME})  # last: a half-created dir is "not a log"
            meta = _Meta(int(height), int(width), 0, 0, {f: [] for f in STRING_FIELDS}, group.attrs.asdict())
            obj = cls(path, "a", group, arrays, meta, store, lock_fd)
            obj._init_appenders()
            return obj
        except BaseException:
            _release_lock(obj, lock_fd)
            raise

    @classmethod
    def open(cls, path: str | os.PathLike, mode: Literal["r", "a"] = "r") -> InteractionLog:
        """Open an existing log. 'r': read-only reader (never writes). 'a': the single writer.

        Raises FileNotFoundError if nothing is at `path`, LogFormatError if it is not a usable log
        (nothing is modified then), LogLockedError if mode 'a' and another writer has it open.
        In mode 'a' a torn tail left by a crashed writer is repaired (see the module docstring).
        """
        path = Path(path)
        if mode == "r":
            group = _open_group_readonly(path)
            meta, arrays = _validate(group, path)
            return cls(path, "r", group, arrays, meta, group.store, None)
        if mode != "a":
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        _open_group_readonly(path)  # clear errors for missing / non-group paths before locking
        lock_fd = _lock_dir(path)
        obj = None
        try:
            meta, _ = _validate(_open_group_readonly(path), path)  # read-only: nothing written if invalid
            store = zarr.storage.LocalStore(path)
            group = zarr.open_group(store=store, mode="r+", zarr_format=3, use_consolidated=False)
            arrays = {name: group[name] for name in _array_specs(meta.height, meta.width, 1)}
            obj = cls(path, "a", group, arrays, meta, store, lock_fd)
            obj._repair()
            obj._init_appenders()
            return obj
        except BaseException:
            _release_lock(obj, lock_fd)
            raise

    @classmethod
    def open_or_create(
        cls, path: str | os.PathLike, height: int, width: int, **create_kwargs: Any
    ) -> InteractionLog:
        """Open the log at `path` for appending, or create it if nothing is there.

        An existing log must have the same image size (else ValueError); other create arguments
        are ignored for an existing log.
        """
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            obj = cls.open(path, mode="a")
            if (obj.height, obj.width) != (int(height), int(width)):
                obj.close()
                raise ValueError(_size_mismatch(path, (obj.height, obj.width), (height, width)))
            return obj
        return cls.create(path, height, width, **create_kwargs)

    @classmethod
    def check_appendable(cls, path: str | os.PathLike, height: int, width: int) -> None:
        """Raise now what `open_or_create(path, height, width)` would raise for the log at `path`, writing nothing:
        LogFormatError (not a usable log; ChunkDamageError: a chunk the writer reads back, an array's last
        partial chunk, cannot be decoded), ValueError (other image size), LogLockedError (another writer).
        Nothing at `path` (a log to be created) passes. The lock is taken and released at once, so a writer
        starting in between is still refused by `open` itself."""
        path = Path(path)
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            return
        with cls.open(path, "r") as log:
            if (log.height, log.width) != (int(height), int(width)):
                raise ValueError(_size_mismatch(path, (log.height, log.width), (height, width)))
            damage = []
            for name in log._specs:
                end = log._committed_rows(name)
                if end % int(log._arrays[name].chunks[0]):  # a partial last chunk: the writer reads it back
                    damage += log._damage_in(name, [end - 1])
            if damage:
                raise ChunkDamageError(path, damage)
        _unlock(_lock_dir(path))

    # ------------------------------------------------------------------ properties
    @property
    def path(self) -> Path:
        return self._path

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def height(self) -> int:
        return self._meta.height

    @property
    def width(self) -> int:
        return self._meta.width

    @property
    def schema_version(self) -> int:
        return int(self._meta.attrs["schema_version"])

    @property
    def intrinsics(self) -> np.ndarray | None:
        K = self._meta.attrs.get("intrinsics")
        return None if K is None else np.asarray(K, dtype=np.float64)

    @property
    def extrinsics(self) -> np.ndarray | None:
        T = self._meta.attrs.get("extrinsics")
        return None if T is None else np.asarray(T, dtype=np.float64)

    @property
    def config_snapshot(self) -> dict:
        return dict(self._meta.attrs.get("config") or {})

    @property
    def code_version(self) -> str:
        return str(self._meta.attrs.get("code_version", ""))

    @property
    def vocab(self) -> dict[str, list[str]]:
        return {f: list(v) for f, v in self._meta.vocab.items()}

    @property
    def attrs(self) -> dict[str, Any]:
        """Group attributes as of the last open/refresh/append (a copy)."""
        return json.loads(json.dumps(self._meta.attrs))

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._meta.count} records"
        return (
            f"InteractionLog({str(self._path)!r}, mode={self._mode!r}, {state}, {self.height}x{self.width})"
        )

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Writer: trim arrays to the committed rows and release the write lock. Idempotent."""
        if self._closed:
            return
        try:
            if self._mode == "a":
                self._trim()
        finally:
            self._closed = True
            if self._finalizer is not None:
                self._finalizer()  # releases the lock exactly once

    def __enter__(self) -> InteractionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self!r} is closed")

    # ------------------------------------------------------------------ reading
    def refresh(self) -> int:
        """Re-read the commit marker (and vocabulary); return the committed count.

        Readers call this to see records appended since they opened; `len()` calls it in mode 'r'.
        """
        self._check_open()
        if self._mode != "r":
            return self._meta.count
        group = zarr.open_group(store=self._store, mode="r", zarr_format=3, use_consolidated=False)
        attrs = group.attrs.asdict()
        if (
            attrs.get("format") != FORMAT_NAME
            or attrs.get("schema_version") != self._meta.attrs["schema_version"]
        ):
            raise LogFormatError(f"{self._path}: the log was replaced or its schema changed while open")
        count, hyp_rows = int(attrs["committed_count"]), int(attrs["committed_hypotheses"])
        if count < self._meta.count:
            raise LogFormatError(
                f"{self._path}: committed count went backwards ({self._meta.count} -> {count})"
            )
        self._meta = _Meta(self.height, self.width, count, hyp_rows,
                           {f: list(attrs["vocab"][f]) for f in STRING_FIELDS}, attrs)  # fmt: skip
        return count

    def __len__(self) -> int:
        self._check_open()
        return self.refresh() if self._mode == "r" else self._meta.count

    def _array(self, name: str, rows_needed: int) -> zarr.Array:
        """The array, re-opened if a reader's cached metadata is older than the rows it needs."""
        arr = self._arrays[name]
        if arr.shape[0] < rows_needed and self._mode == "r":
            arr = zarr.open_array(store=self._store, path=name, mode="r", zarr_format=3)
            self._arrays[name] = arr
        if arr.shape[0] < rows_needed:
            raise LogFormatError(
                f"{self._path}: array {name!r} is shorter than the committed rows: store damaged"
            )
        return arr

    def _index(self, i: Any) -> int:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"record index must be an int, got {type(i).__name__}")
        i = int(i)
        n = self._meta.count
        if (i >= n or i < -n) and self._mode == "r":
            n = self.refresh()
        if i < -n or i >= n:
            raise IndexError(f"record index {i} out of range for {n} committed records")
        return i + n if i < 0 else i

    def __getitem__(self, i: int) -> InteractionRecord:
        self._check_open()
        i = self._index(i)
        names = ["record_f64", "record_i64", "rgb", "depth_mm", "mask"]
        rows = self._read_rows(names, np.array([i], dtype=np.int64))
        f64, i64 = rows["record_f64"], rows["record_i64"]
        rgb, depth, mask = rows["rgb"][0], rows["depth_mm"][0], rows["mask"][0]
        cnt = int(i64[0, _I64["hypothesis_count"]])
        return InteractionRecord(
            rgb_before=rgb[0],
            rgb_after=rgb[1],
            depth_before=mm_to_depth(depth[0]),
            depth_after=mm_to_depth(depth[1]),
            K=_get(f64, "K")[0],
            camera_pose=_get(f64, "camera_pose")[0],
            primitive=self._decode("primitive", i64[0, _I64["primitive"]]),
            pixel=_get(f64, "pixel")[0],
            angle=float(_get(f64, "angle")[0]),
            push_length=float(_get(f64, "push_length")[0]),
            target_robot=_get(f64, "target_robot")[0],
            hypotheses=self._read_hypotheses(i64)[0],
            hypothesis_scores=f64[0, _SCORE_COL : _SCORE_COL + cnt].astype(np.float32),
            chosen_hypothesis=int(_get(i64, "chosen_hypothesis")[0]),
            mask=mask.astype(bool, copy=False),
            label=Label(int(_get(i64, "label")[0])),
            label_reason=self._decode("label_reason", i64[0, _I64["label_reason"]]),
            t_start=float(_get(f64, "t_start")[0]),
            t_end=float(_get(f64, "t_end")[0]),
            model_version=int(_get(i64, "model_version")[0]),
            robot_kind=self._decode("robot_kind", i64[0, _I64["robot_kind"]]),
            grasp_success=int(_get(i64, "grasp_success")[0]),
        )

    def records(self, start: int = 0, stop: int | None = None) -> Iterator[InteractionRecord]:
        """Iterate over committed records [start, stop) (stop defaults to the count at call time)."""
        n = len(self)
        stop = n if stop is None else min(int(stop), n)
        for i in range(int(start), stop):
            yield self[i]

    def _decode(self, field: str, code: Any) -> str:
        vocab = self._meta.vocab[field]
        c = int(code)
        if not 0 <= c < len(vocab):
            raise LogFormatError(
                f"{self._path}: {field} code {c} is not in the vocabulary ({len(vocab)} entries)"
            )
        return vocab[c]

    def _unpack(self, bits: np.ndarray, n: int) -> np.ndarray:
        H, W = self.height, self.width
        return np.unpackbits(bits, axis=1, count=H * W).reshape(n, H, W).view(np.bool_)

    def _resolve(self, indices: Any) -> tuple[np.ndarray, bool]:
        n = self._meta.count
        if indices is None:
            return np.arange(n, dtype=np.int64), False
        if isinstance(indices, (int, np.integer)) and not isinstance(indices, bool):
            return np.array([self._index(indices)], dtype=np.int64), True
        if isinstance(indices, slice):
            return np.arange(n, dtype=np.int64)[indices], False
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64), False
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError("indices must be None, an int, a slice or a 1-D sequence of ints")
        idx = idx.astype(np.int64)
        if ((idx >= n) | (idx < -n)).any() and self._mode == "r":
            n = self.refresh()
        bad = (idx >= n) | (idx < -n)
        if bad.any():
            raise IndexError(f"record index {int(idx[bad][0])} out of range for {n} committed records")
        return np.where(idx < 0, idx + n, idx), False

    def read_field(self, name: str, indices: Any = None) -> Any:
        """Bulk-read one field for many committed records (see `read_fields`)."""
        return self.read_fields((name,), indices)[name]

    def read_fields(self, names: Sequence[str], indices: Any = None) -> dict[str, Any]:
        """Bulk-read several fields for many committed records, each underlying array read once.

        indices: None (all committed records), an int, a slice, or a 1-D sequence of ints
        (any order, repeats and negative values allowed; past the committed count -> IndexError).
        Values are stacked along a first axis (an int index drops that axis): images as in
        `InteractionRecord` (depth as float32 metres), table fields with their natural dtype
        (label uint8, grasp_success int8, other ints int64, pixel/target_robot float32), string
        fields (primitive, label_reason, robot_kind) as numpy str arrays, and the ragged fields
        (hypotheses, hypothesis_scores) as lists of per-record arrays. 'hypothesis_count' is also
        accepted.
        """
        self._check_open()
        if isinstance(names, str):
            raise TypeError("names must be a sequence of field names (use read_field for one)")
        for name in names:
            if name not in FIELD_NAMES:
                raise KeyError(f"unknown field {name!r}; known: {', '.join(FIELD_NAMES)}")
        if self._mode == "r" and indices is None:
            self.refresh()
        idx, scalar = self._resolve(indices)

        need_i64 = any(n in STRING_FIELDS or n in _RAGGED_FIELDS or _TABLE_FIELDS.get(n, ("",))[0] == "record_i64"
                       for n in names)  # fmt: skip
        need_f64 = any(
            n == "hypothesis_scores" or _TABLE_FIELDS.get(n, ("",))[0] == "record_f64" for n in names
        )
        image_arrays = sorted({_IMAGE_FIELDS[n][0] for n in names if n in _IMAGE_FIELDS})
        sources = [
            *(["record_f64"] if need_f64 else []),
            *(["record_i64"] if need_i64 else []),
            *image_arrays,
        ]
        raw = self._read_rows(sources, idx)

        out: dict[str, Any] = {}
        for name in names:
            if name in _IMAGE_FIELDS:
                arr_name, view = _IMAGE_FIELDS[name]
                data = raw[arr_name] if view is None else raw[arr_name][:, view]
                out[name] = mm_to_depth(data) if arr_name == "depth_mm" else data
            elif name in STRING_FIELDS:
                out[name] = self._decode_many(name, raw["record_i64"][:, _I64[name]])
            elif name == "hypothesis_scores":
                cnts = raw["record_i64"][:, _I64["hypothesis_count"]]
                f64 = raw["record_f64"]
                out[name] = [
                    f64[k, _SCORE_COL : _SCORE_COL + int(c)].astype(np.float32) for k, c in enumerate(cnts)
                ]
            elif name == "hypotheses":
                out[name] = self._read_hypotheses(raw["record_i64"])
            else:
                out[name] = _get(raw[_TABLE_FIELDS[name][0]], name)
        if scalar:
            out = {k: (v[0] if not isinstance(v[0], np.str_) else str(v[0])) for k, v in out.items()}
        return out

    def _read_rows(self, names: list[str], idx: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `idx` of each named per-record array, one read per array (concurrent when contiguous).
        ChunkDamageError if a chunk holding them cannot be decoded."""
        try:
            return self._read_rows_raw(names, idx)
        except Exception as e:
            self._raise_damage(e, [(n, idx) for n in names])

    def _read_rows_raw(self, names: list[str], idx: np.ndarray) -> dict[str, np.ndarray]:
        if len(idx) == 0:
            return {n: np.zeros((0, *self._specs[n].row_shape), dtype=self._specs[n].dtype) for n in names}
        lo, hi = int(idx.min()), int(idx.max()) + 1
        arrays = [self._array(n, hi) for n in names]
        if hi - lo == len(idx):  # contiguous (maybe permuted): one slice per array
            got = _run_reads([(a, slice(lo, hi)) for a in arrays])
            return {n: g[idx - lo] if not np.array_equal(idx, np.arange(lo, hi)) else g
                    for n, g in zip(names, got, strict=True)}  # fmt: skip
        uniq, inv = np.unique(idx, return_inverse=True)
        out = {}
        for n, a in zip(names, arrays, strict=True):
            if self._specs[n].chunk_rows > 1 and hi - lo <= 4 * len(uniq) + 64:
                out[n] = np.asarray(a[lo:hi])[idx - lo]  # small table, dense enough: one slice
            else:
                out[n] = np.asarray(a.oindex[uniq])[inv]
        return out

    def _decode_many(self, field: str, codes: np.ndarray) -> np.ndarray:
        vocab = self._meta.vocab[field]
        if len(codes) == 0:
            return np.zeros(0, dtype=str)
        if codes.min() < 0 or codes.max() >= len(vocab):
            raise LogFormatError(f"{self._path}: {field} code outside the vocabulary: store damaged")
        return np.array(vocab, dtype=str)[codes]

    def _read_hypotheses(self, i64: np.ndarray) -> list[np.ndarray]:
        try:
            return self._read_hypotheses_raw(i64)
        except Exception as e:
            offs, cnts = i64[:, _I64["hypothesis_offset"]], i64[:, _I64["hypothesis_count"]]
            rows = np.concatenate([np.arange(o, o + c) for o, c in zip(offs, cnts, strict=True)] + [np.zeros(0, int)])
            self._raise_damage(e, [("hypotheses", rows)])

    def _read_hypotheses_raw(self, i64: np.ndarray) -> list[np.ndarray]:
        offs = i64[:, _I64["hypothesis_offset"]]
        cnts = i64[:, _I64["hypothesis_count"]]
        empty = np.zeros((0, self.height, self.width), dtype=bool)
        total = int(cnts.sum())
        if total == 0:
            return [empty for _ in cnts]
        nonempty = cnts > 0
        lo, end = int(offs[nonempty].min()), int((offs + cnts).max())
        arr = self._array("hypotheses", end)
        if end - lo <= 2 * total + 64:  # dense: one contiguous read
            data = np.asarray(arr[lo:end])
            pieces = [data[o - lo : o - lo + c] for o, c in zip(offs, cnts, strict=True)]
        else:
            got = iter(
                _run_reads([(arr, slice(int(o), int(o + c))) for o, c in zip(offs, cnts, strict=True) if c])
            )
            pieces = [next(got) if c else None for c in cnts]
        return [self._unpack(p, int(c)) if c else empty for p, c in zip(pieces, cnts, strict=True)]

    # ------------------------------------------------------------------ damaged chunks
    def verify(self) -> VerifyResult:
        """Decode every chunk that holds committed rows of every array; return what could not be decoded.

        Read-only (safe while a writer appends: the committed count is taken once, at the start).
        Reads up to VERIFY_BATCH_BYTES at a time and decodes the chunks of a failed read one by one.
        """
        self._check_open()
        if self._mode == "r":
            self.refresh()
        damage: list[ChunkDamage] = []
        chunks: dict[str, int] = {}
        for name, spec in self._specs.items():
            rows = self._committed_rows(name)
            arr = self._array(name, rows)
            c = int(arr.chunks[0])
            chunks[name] = -(-rows // c)
            row_bytes = spec.dtype.itemsize * int(np.prod(spec.row_shape))
            step = c * max(1, VERIFY_BATCH_BYTES // (c * row_bytes))
            for lo in range(0, rows, step):
                try:
                    np.asarray(arr[lo : min(lo + step, rows)])
                except Exception:
                    damage += self._damage_in(name, range(lo, min(lo + step, rows), c))
        return VerifyResult(self._meta.count, self._meta.hyp_rows, chunks, tuple(damage))

    def _committed_rows(self, name: str) -> int:
        return self._meta.hyp_rows if self._specs[name].ragged else self._meta.count

    def _damage_in(self, name: str, rows: Any) -> list[ChunkDamage]:
        """The chunks of array `name` holding any of the committed `rows` that fail to decode (each read alone)."""
        arr = self._arrays[name]
        c = int(arr.chunks[0])
        limit = min(self._committed_rows(name), arr.shape[0])
        out = []
        for k in np.unique(np.asarray(rows, dtype=np.int64) // c):
            lo, hi = int(k) * c, min(int(k) * c + c, limit)
            if hi <= lo:
                continue
            try:
                np.asarray(arr[lo:hi])
            except Exception as e:
                owners, known = self._hypothesis_owners(lo, hi) if name == "hypotheses" else (tuple(range(lo, hi)), True)
                out.append(ChunkDamage(name, (lo, hi), owners, _error_text(e), known))
        return out

    def _hypothesis_owners(self, lo: int, hi: int) -> tuple[tuple[int, ...], bool]:
        """Committed records whose hypothesis rows meet [lo, hi), and whether all their record_i64 rows decoded."""
        i64 = self._arrays["record_i64"]
        c, n = int(i64.chunks[0]), min(self._meta.count, i64.shape[0])
        owners: list[int] = []
        known = True
        for start in range(0, n, c):
            try:
                rows = np.asarray(i64[start : min(start + c, n)])
            except Exception:
                known = False
                continue
            off, cnt = rows[:, _I64["hypothesis_offset"]], rows[:, _I64["hypothesis_count"]]
            owners += (start + np.flatnonzero((cnt > 0) & (off < hi) & (off + cnt > lo))).tolist()
        return tuple(owners), known

    def _raise_damage(self, error: Exception, reads: Sequence[tuple[str, Any]]) -> NoReturn:
        """Turn a failed read of (array, rows) pairs into ChunkDamageError naming the chunks that do not
        decode; re-raise `error` itself when every chunk decodes alone (then it was not damage)."""
        damage = [d for name, rows in reads for d in self._damage_in(name, rows)]
        if not damage:
            raise error
        raise ChunkDamageError(self._path, damage) from error

    # ------------------------------------------------------------------ writing
    def _init_appenders(self) -> None:
        m = self._meta
        for name, spec in self._specs.items():
            end = m.hyp_rows if spec.ragged else m.count
            try:
                self._appenders[name] = _TailAppender(self._arrays[name], spec, end)
            except Exception as e:  # the last, partial chunk the writer rewrites cannot be decoded
                self._raise_damage(e, [(name, [end - 1])])

    def _ensure_capacity(self, name: str, rows: int) -> None:
        arr = self._arrays[name]
        cap = arr.shape[0]
        if cap >= rows:
            return
        spec = self._specs[name]
        step = GROW_HYPOTHESIS_ROWS if spec.ragged else GROW_RECORDS
        new_cap = _round_up(max(rows, cap + step), int(arr.chunks[0]))
        arr.resize((new_cap, *spec.row_shape))

    def append(self, record: InteractionRecord) -> int:
        """Validate and durably append one record; return its index.

        Raises ValueError (naming the field) for an invalid record; nothing is written then.
        """
        self._check_open()
        if self._mode != "a":
            raise ValueError("log is open read-only (mode 'r'); open it with mode 'a' to append")
        record.validate(self.height, self.width)
        meta = self._meta
        i, off, n = meta.count, meta.hyp_rows, record.num_hypotheses
        if n > MAX_HYPOTHESES:  # validate() checks too; keep the invariant local
            raise ValueError(f"hypotheses: at most {MAX_HYPOTHESES}")

        vocab = {f: list(v) for f, v in meta.vocab.items()}
        codes = {}
        for f in STRING_FIELDS:
            s = primitive_name(record.primitive) if f == "primitive" else getattr(record, f)
            code = self._vocab_index[f].get(s)
            if code is None:
                if len(vocab[f]) >= MAX_VOCAB:
                    raise ValueError(f"{f}: vocabulary full ({MAX_VOCAB} distinct strings); use short codes")
                code = len(vocab[f])
                vocab[f].append(s)
            codes[f] = code

        f64 = np.full(len(F64_COLUMNS), np.nan)
        for name in ("K", "camera_pose", "angle", "push_length", "t_start", "t_end", "pixel", "target_robot"):
            _put(f64, name, getattr(record, name))
        f64[_SCORE_COL : _SCORE_COL + n] = np.asarray(record.hypothesis_scores, dtype=np.float32)
        i64 = np.zeros(len(I64_COLUMNS), dtype=np.int64)
        for name in ("chosen_hypothesis", "label", "model_version", "grasp_success"):
            _put(i64, name, int(getattr(record, name)))
        i64[_I64["hypothesis_offset"]] = off
        i64[_I64["hypothesis_count"]] = n
        for f in STRING_FIELDS:
            i64[_I64[f]] = codes[f]

        rows: dict[str, np.ndarray] = {
            "rgb": np.stack([record.rgb_before, record.rgb_after])[None],
            "depth_mm": np.stack([depth_to_mm(record.depth_before), depth_to_mm(record.depth_after)])[None],
            "mask": np.asarray(record.mask, dtype=np.bool_)[None],
            "record_f64": f64[None],
            "record_i64": i64[None],
        }
        if n:
            H, W = self.height, self.width
            flat = np.ascontiguousarray(record.hypotheses, dtype=np.bool_).reshape(n, H * W)
            rows["hypotheses"] = np.packbits(flat, axis=1)

        # 1. data: grow arrays if needed, then write every array's rows for record i.
        writes = []
        pending = {}
        for name, data in rows.items():
            app = self._appenders[name]
            sel, block, new_tail = app.plan(data)
            self._ensure_capacity(name, sel.stop)
            writes.append((self._arrays[name], sel, block))
            pending[name] = (app.end + len(data), new_tail)
        _run_writes(writes)

        # 2. commit marker (one atomic metadata write, vocabulary included), strictly last.
        self._write_commit(i + 1, off + n, vocab)

        # 3. in-memory state follows the committed state.
        for name, (end, tail) in pending.items():
            self._appenders[name].end = end
            self._appenders[name].tail = tail
        for f in STRING_FIELDS:
            if len(vocab[f]) != len(meta.vocab[f]):
                self._vocab_index[f] = {s: k for k, s in enumerate(vocab[f])}
        attrs = dict(meta.attrs, committed_count=i + 1, committed_hypotheses=off + n, vocab=vocab)
        self._meta = _Meta(meta.height, meta.width, i + 1, off + n, vocab, attrs)
        return i

    def _write_commit(self, count: int, hyp_rows: int, vocab: dict[str, list[str]]) -> None:
        self._group.update_attributes(
            {"committed_count": count, "committed_hypotheses": hyp_rows, "vocab": vocab}
        )

    def _shrink(self, name: str, rows: int) -> bool:
        """Reset rows >= `rows` in the last kept chunk to the fill value, then truncate to `rows`."""
        arr = self._arrays[name]
        spec = self._specs[name]
        shape0 = arr.shape[0]
        if shape0 <= rows:
            return False
        chunk = int(arr.chunks[0])
        start = rows - rows % chunk
        if rows > start:
            stop = min(start + chunk, shape0)
            try:
                block = np.asarray(arr[start:stop])
            except Exception as e:
                self._raise_damage(e, [(name, [start])])
            block[rows - start :] = spec.fill
            arr[start:stop] = block
        arr.resize((rows, *spec.row_shape))
        return True

    def _repair(self) -> None:
        """Drop a torn tail: data written past the commit marker by a writer that died."""
        m = self._meta
        changed = [name for name, spec in self._specs.items()
                   if self._shrink(name, m.hyp_rows if spec.ragged else m.count)]  # fmt: skip
        partial = [p for p in self._path.rglob("*.partial") if p.is_file()] if changed else []
        for p in partial:
            p.unlink(missing_ok=True)
        if changed or partial:
            _logger.warning(
                "%s: repaired torn tail past committed record %d (arrays %s; %d temp files removed)",
                self._path, m.count, changed, len(partial),
            )  # fmt: skip

    def _trim(self) -> None:
        m = self._meta
        for name, spec in self._specs.items():
            self._shrink(name, m.hyp_rows if spec.ragged else m.count)


__all__ = [
    "FIELD_NAMES",
    "ChunkDamage",
    "ChunkDamageError",
    "VerifyResult",
    "format_indices",
    "records_text",
    "FORMAT_NAME",
    "SCHEMA_VERSION",
    "InteractionLog",
    "LogFormatError",
    "LogLockedError",
]
