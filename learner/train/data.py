"""Training images and their partial labels, built from an interaction log or from labelled scenes.

A `TrainImage` is one RGB-D frame with whatever is known about it:
- `masks` + `points`: instance masks (noisy for interactions and pasted cut-outs, exact for the
  oracle) and the query pixels (u, v) whose decoded mask should equal each of them;
- `negatives`: pixels (u, v) where an interaction moved nothing ("no object here");
- `table`: pixels whose observed 3D point lies on the table plane (z ~ 0 in the robot frame). This
  is geometry the robot measures itself (its calibrated camera and table), not a label; it tells the
  objectness head where the bare table is. Switched off with `TrainConfig.table_prior = False`.
- `group`/`instance_ids`: pseudo-sequence frames x1 and x2 share a group; instance ids tie the same
  pasted object across the two frames (RISE association).

Sources:
- `LogSource`: committed records of a run's interaction logs (`data.shards.RunLog`: one .zarr log, or
  a run's shards), self-supervised: positives, negatives and RISE pseudo-sequences pasted from an
  instance bank of good interaction masks. It reads the log incrementally and holds a bounded amount:
  `update()` reads only the records committed since its last call (each record's images are read and
  decoded once, to derive its metadata, its propagated masks and its cut-out); in memory it keeps per
  record only small metadata (label, pixel, K, camera pose, shard, mask area, propagated mask list,
  ~0.5 kB), the instance bank (capped at `bank_capacity` cut-outs), the propagation tail of each shard
  (`data.label_propagation.WindowPropagation`: the last `window` frames) and an LRU cache of decoded
  images (`cache_mb` megabytes); training reads RGB, depth and masks lazily from Zarr through it. A
  learner that keeps one LogSource across retrains (`source.update()` before each `Trainer.train`)
  therefore reads each record once in its life, and a retrain's start-up cost and memory do not grow
  with the log. Records with a chunk that cannot be decoded (a damaged chunk file,
  `data.log.ChunkDamageError`) are skipped and reported in one warning per update naming their indices
  and arrays (`skipped`); training goes on with the rest. If no record of a non-empty log can be read,
  it raises `data.log.LogFormatError` (a ValueError) naming the log.
- `SceneSource`: exported scenes with ground-truth labels — ONLY for the supervised oracle baseline.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from data.geometry import height_above_table
from data.label_propagation import Capture, PropagationConfig, WindowPropagation
from data.log import ChunkDamageError, LogFormatError, records_text
from data.schema import Label
from learner.train.pseudo_sequences import InstanceBank, cutout_from_interaction, make_pseudo_sequence

_logger = logging.getLogger(__name__)

# what a training image needs of a record (not the hypotheses: a damaged hypothesis chunk costs training nothing)
RECORD_FIELDS = ("rgb_before", "depth_before", "depth_after", "K", "camera_pose", "pixel", "mask", "label")
FRAME_FIELDS = ("rgb_before", "depth_before")  # read lazily while training
DEFAULT_CACHE_MB = 256.0  # LogSource's image cache (megabytes of decoded arrays)
READ_BATCH = 16  # records per read while `LogSource.update` ingests new records


@dataclass
class TrainImage:
    rgb: np.ndarray  # (H,W,3) uint8
    depth: np.ndarray  # (H,W) float32 metres, 0 = missing
    K: np.ndarray  # (3,3) pixels
    masks: list[np.ndarray] = field(default_factory=list)  # (H,W) bool each
    points: list[np.ndarray] = field(default_factory=list)  # (n,2) float (u,v) per mask
    negatives: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    table: np.ndarray | None = None  # (H,W) bool
    group: int = -1
    instance_ids: list[int] = field(default_factory=list)


def table_prior_pixels(depth: np.ndarray, K: np.ndarray, camera_pose: np.ndarray, max_height: float) -> np.ndarray:
    """(H,W) bool: valid pixels whose world point is within `max_height` metres of the plane z = 0 (the
    calibrated table; the training prior, not the proposals' fitted-plane gate `proposals.cleaning.table_pixels`)."""
    h = height_above_table(depth, K, camera_pose)
    return np.abs(np.nan_to_num(h, nan=np.inf)) < max_height


def sample_points_in(mask: np.ndarray, n: int, rng: np.random.Generator, first: tuple[float, float] | None = None,
                     erode: int = 2) -> np.ndarray:
    """`n` query pixels (u, v) inside `mask` (eroded when it stays non-empty); `first` is kept as the first."""
    inner = ndimage.binary_erosion(mask, iterations=erode) if erode else mask
    if not inner.any():
        inner = mask
    vs, us = np.nonzero(inner)
    pts = []
    if first is not None:
        pts.append(first)
    if len(vs):
        idx = rng.integers(len(vs), size=max(n - len(pts), 0))
        pts += [(float(us[i]), float(vs[i])) for i in idx]
    return np.asarray(pts, np.float32).reshape(-1, 2)


class ArrayCache:
    """Least-recently-used cache of decoded arrays, bounded in bytes.

    Keys are any hashable (`LogSource` uses (kind, i)); values are tuples of numpy arrays, stored
    read-only (one cached array is shared by every image built from it). The sum of the cached arrays'
    `nbytes` never exceeds `capacity_bytes`: the least recently used entries are dropped first, and a
    value larger than the whole capacity is returned without being kept (capacity 0 = no caching).
    """

    def __init__(self, capacity_bytes: int):
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = int(capacity_bytes)
        self.nbytes = 0  # bytes held now
        self.peak_nbytes = 0  # most bytes ever held
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, tuple[tuple[np.ndarray, ...], int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable, load: Callable[[], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
        """The cached value of `key`, or `load()`'s (then cached)."""
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]
        self.misses += 1
        return self.put(key, load())

    def put(self, key: Hashable, value: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """Cache `value` under `key` (replacing an older value) unless it alone exceeds the capacity."""
        value = tuple(value)
        for a in value:
            a.flags.writeable = False
        size = sum(int(a.nbytes) for a in value)
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= old[1]
        if size > self.capacity_bytes:
            return value
        while self._items and self.nbytes + size > self.capacity_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.nbytes -= dropped
        self._items[key] = (value, size)
        self.nbytes += size
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes)
        return value

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


class _LazyView:
    """A read-only sequence whose items are computed on access (`LogSource.rgb`, `.depth`)."""

    def __init__(self, size: Callable[[], int], item: Callable[[int], Any]):
        self._size, self._item = size, item

    def __len__(self) -> int:
        return self._size()

    def __getitem__(self, i: int) -> Any:
        n = self._size()
        if not -n <= int(i) < n:
            raise IndexError(f"index {i} out of range for {n} records")
        return self._item(int(i) % n)

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self)))


class _MaskView(_LazyView):
    """`LogSource.mask`: record i's own mask (None for a negative), read lazily; assigning replaces it in
    this source only (in memory, never in the log), e.g. to relabel a record in an experiment."""

    def __init__(self, source: LogSource):
        super().__init__(source.__len__, source._mask)
        self._source = source

    def __setitem__(self, i: int, mask: np.ndarray | None) -> None:
        self._source._mask_override[int(i) % len(self._source)] = None if mask is None else np.asarray(mask, bool)


@dataclass
class ReadStats:
    """What a LogSource read from its log: records decoded by `update` (each once), lazy reads while training."""

    records_ingested: int = 0  # records (their images included) read by update(), skipped ones excluded
    lazy_reads: int = 0  # single-record reads of images or masks (cache misses)


class LogSource:
    """Self-supervised training images from the committed records of a run's interaction logs, read
    incrementally with bounded memory (see the module docstring).

    log_path: a .zarr log, a run directory (interactions.zarr and/or shards/) or a shards/ directory
        (`data.shards.RunLog.open`); the log stays open (read-only) until `close()`.
    limit: use only the first `limit` records (global numbering of `RunLog`).
    propagation: label propagation settings (None = each frame knows only its own mask); masks are
        propagated only between records of the same shard (one collector's table), in the order read.
    cache_mb: megabytes of decoded images, masks and table priors kept for training (LRU; 0 = none).
    read_batch: records per log read while ingesting.

    Index i = 0..len-1 counts the usable records (not invalid, positive masks of at least
    `min_mask_area` pixels, readable) in the order read; `record[i]` is its global record index.
    Keep one LogSource across retrains and call `update()` before each to read only the new records.
    """

    def __init__(self, log_path: str | Path, table_prior_height: float = 0.004, bank_capacity: int = 512,
                 min_mask_area: int = 30, limit: int | None = None, propagation: PropagationConfig | None = None,
                 cache_mb: float = DEFAULT_CACHE_MB, read_batch: int = READ_BATCH):
        from data.shards import RunLog

        if not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        if read_batch < 1:
            raise ValueError(f"read_batch must be >= 1, got {read_batch}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        self.log_path = Path(log_path)
        self.table_prior_height = table_prior_height
        self.min_mask_area = min_mask_area
        self.limit = None if limit is None else int(limit)
        self.propagation = propagation
        self.read_batch = int(read_batch)
        # small metadata per usable record i
        self.record: list[int] = []  # global record index (data.shards.RunLog numbering)
        self.shard: list[int] = []  # shard number of the record
        self.label: list[int] = []
        self.pixel: list[np.ndarray] = []  # (2,) float32 (u, v) pixels
        self.K: list[np.ndarray] = []  # (3,3) float64 pixels
        self.pose: list[np.ndarray] = []  # (4,4) float64 world-from-camera, metres
        self.mask_area: list[int] = []  # pixels of the record's own mask (0: a negative)
        self.known: list[list[int]] = []  # records whose mask is valid in frame i (its own first)
        self.positives: list[int] = []
        self.negatives: list[int] = []
        self.bank = InstanceBank(capacity=bank_capacity)
        self.cache = ArrayCache(int(cache_mb * 2**20))
        self.skipped: dict[int, tuple[str, ...]] = {}  # global record index -> arrays that cannot be decoded
        self.n_records = 0  # records of the log read so far (usable, unusable and skipped)
        self.stats = ReadStats()
        self._propagators: dict[int, WindowPropagation] = {}  # shard number -> its propagation tail
        self._mask_override: dict[int, np.ndarray | None] = {}
        self.mask = _MaskView(self)
        self._log = RunLog.open(log_path)
        try:
            self.update()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ the log
    def update(self) -> int:
        """Read the records committed since the last call (up to `limit`), each decoded once: metadata,
        propagated masks (within each record's window in its shard), cut-outs for the bank. Records read
        before are not read again. Returns the number of usable records added. One warning names new
        records that cannot be read; LogFormatError if no record of the log can be read at all."""
        self._log.refresh()
        total = len(self._log) if self.limit is None else min(len(self._log), self.limit)
        start = self.n_records
        if total <= start:
            return 0
        before = len(self)
        for lo in range(start, total, self.read_batch):
            self._ingest(self._read_new(range(lo, min(lo + self.read_batch, total)), start, total))
        self.n_records = total
        self._report_skipped({k: v for k, v in self.skipped.items() if start <= k < total}, start, total)
        return len(self) - before

    def close(self) -> None:
        """Close the log (the source can no longer read images). Idempotent."""
        self._log.close()
        self.cache.clear()

    def __enter__(self) -> LogSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_new(self, batch: range, start: int, total: int) -> list[tuple[int, dict[str, Any]]]:
        """(global index, fields) of the readable records in `batch`; damaged ones go to `skipped`."""
        idx = [g for g in batch if g not in self.skipped]  # named by an earlier error (a table chunk holds many)
        if not idx:
            return []
        try:
            got = self._log.read_fields(RECORD_FIELDS, idx)
            return [(g, {k: v[j] for k, v in got.items()}) for j, g in enumerate(idx)]
        except ChunkDamageError:
            pass  # read record by record: each error names exactly what cannot be read
        out = []
        for g in idx:
            if g in self.skipped:
                continue
            try:
                out.append((g, self._log.read_fields(RECORD_FIELDS, g)))
            except ChunkDamageError as e:
                for array, records in e.records.items():
                    for k in (k for k in records if start <= k < total):
                        self.skipped[k] = tuple(sorted({*self.skipped.get(k, ()), array}))
                self.skipped.setdefault(g, tuple(sorted(e.records)))
        return out

    def _ingest(self, rows: list[tuple[int, dict[str, Any]]]) -> None:
        captures: dict[int, list[Capture]] = {}
        for g, r in rows:
            self.stats.records_ingested += 1
            i = self._add(g, r)
            if i is not None and self.propagation is not None:
                mask = np.array(r["mask"], bool) if self.mask_area[i] else None
                captures.setdefault(self.shard[i], []).append(
                    Capture(i, np.array(r["rgb_before"]), np.array(r["depth_before"]), self.pose[i], mask))
        for shard, caps in captures.items():  # never across shards: two collectors are two tables
            prop = self._propagators.setdefault(shard, WindowPropagation(self.propagation))
            for i, known in prop.extend(caps).items():
                self.known[i] = known

    def _add(self, g: int, r: dict[str, Any]) -> int | None:
        """Keep record g's metadata and offer its cut-out to the bank; its index i, or None if unusable."""
        label = int(r["label"])
        if label == Label.INVALID:
            return None
        area = int(r["mask"].sum()) if label == Label.POSITIVE else 0
        positive = label == Label.POSITIVE and area >= self.min_mask_area
        if label == Label.POSITIVE and not positive:
            return None
        i = len(self.label)
        self.record.append(int(g))
        self.shard.append(self._log.locate(int(g))[0])
        self.label.append(label)
        self.K.append(np.array(r["K"], np.float64))
        self.pose.append(np.array(r["camera_pose"], np.float64))
        self.pixel.append(np.array(r["pixel"], np.float32))
        self.mask_area.append(area if positive else 0)
        self.known.append([i] if positive else [])
        (self.positives if positive else self.negatives).append(i)
        if positive:
            self.bank.add(cutout_from_interaction(r["rgb_before"], r["depth_before"], r["mask"], r["depth_after"],
                                                  source=int(g)))
        return i

    def _report_skipped(self, new: dict[int, tuple[str, ...]], start: int, total: int) -> None:
        """One warning naming the newly skipped records per damaged array; LogFormatError when nothing was readable."""
        if not new:
            return
        by_array: dict[str, list[int]] = {}
        for i, arrays in new.items():
            for a in arrays:
                by_array.setdefault(a, []).append(i)
        what = "; ".join(f"array {a!r}: {records_text(r)}" for a, r in sorted(by_array.items()))
        check = f"check the log with `python -m data.inspect {self.log_path} --verify`"
        if len(self.skipped) == total:
            raise LogFormatError(f"{self.log_path}: none of its {total} records can be read (damaged chunks, "
                                 f"{what}); {check}")  # fmt: skip
        read = f"{total} records" if start == 0 else f"{total - start} new records ({len(self.skipped)} of {total} in all)"
        _logger.warning("%s: skipped %d of %s that cannot be read (damaged chunks, %s); training on the rest; %s",
                        self.log_path, len(new), read, what, check)  # fmt: skip

    # ------------------------------------------------------------------ lazy images
    def _read(self, names: tuple[str, ...], i: int) -> tuple[np.ndarray, ...]:
        """Fields of record i read from the log (own copies: a view would pin the whole read)."""
        self.stats.lazy_reads += 1
        r = self._log.read_fields(names, self.record[i])
        return tuple(np.array(r[n]) for n in names)

    def frame(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Record i's before frame: rgb (H,W,3) uint8, depth (H,W) float32 metres (0 = missing), K (3,3)
        pixels. Read-only arrays shared through the cache."""
        rgb, depth = self.cache.get(("frame", i), lambda: self._read(FRAME_FIELDS, i))
        return rgb, depth, self.K[i]

    def _mask(self, i: int) -> np.ndarray | None:
        if i in self._mask_override:
            return self._mask_override[i]
        if not self.mask_area[i]:
            return None
        return self.cache.get(("mask", i), lambda: self._read(("mask",), i))[0]

    @property
    def rgb(self) -> _LazyView:
        """rgb[i]: record i's before image, read lazily (see `frame`)."""
        return _LazyView(self.__len__, lambda i: self.frame(i)[0])

    @property
    def depth(self) -> _LazyView:
        """depth[i]: record i's before depth (metres), read lazily (see `frame`)."""
        return _LazyView(self.__len__, lambda i: self.frame(i)[1])

    def __len__(self) -> int:
        return len(self.label)

    def _table(self, i: int) -> np.ndarray:
        def table() -> tuple[np.ndarray]:
            _, depth, K = self.frame(i)
            return (table_prior_pixels(depth, K, self.pose[i], self.table_prior_height),)

        return self.cache.get(("table", i), table)[0]

    # ------------------------------------------------------------------ training images
    def interaction_image(self, i: int, rng: np.random.Generator, points_per_mask: int) -> TrainImage:
        rgb, depth, K = self.frame(i)
        img = TrainImage(rgb, depth, K, table=self._table(i))
        u, v = (float(x) for x in self.pixel[i])
        if self.mask[i] is None and not self.negative_on_known_object(i):
            img.negatives = np.array([[u, v]], np.float32)
        for s in self.known[i]:
            m = self.mask[s]
            img.masks.append(m)
            img.points.append(sample_points_in(m, points_per_mask, rng, first=(u, v) if s == i else None))
        return img

    def negative_on_known_object(self, i: int) -> bool:
        """True if record i moved nothing but its pixel lies inside a mask known for its frame (one
        propagated from another interaction): the robot touched an object that did not move (a failed
        grasp, a heavy object), so "nothing moved" must not teach "no object here"."""
        if not self.known[i]:
            return False
        H, W = self.mask[self.known[i][0]].shape
        u, v = (int(round(float(x))) for x in self.pixel[i])
        if not (0 <= u < W and 0 <= v < H):
            return False
        return any(bool(self.mask[s][v, u]) for s in self.known[i])

    @property
    def n_known_masks(self) -> int:
        """Labelled masks over all frames, propagated ones included."""
        return sum(len(k) for k in self.known)

    def pseudo_pair(self, rng: np.random.Generator, points_per_mask: int, group: int,
                    min_visible: int = 40) -> tuple[TrainImage, TrainImage] | None:
        """A RISE pseudo-sequence (x1, x2) pasted onto a random logged frame, or None without a bank."""
        if len(self.bank) < 2:
            return None
        i = int(rng.integers(len(self)))
        rgb, depth, K = self.frame(i)
        x1, x2, _ = make_pseudo_sequence(rgb, depth, self.bank, rng)
        out = []
        for x in (x1, x2):
            img = TrainImage(x.rgb, x.depth, K, group=group,
                             table=table_prior_pixels(x.depth, K, self.pose[i], self.table_prior_height))
            for k, iid in enumerate(x.ids):
                vis = x.visible_masks[k]
                if vis.sum() < min_visible:
                    continue
                img.masks.append(vis)
                img.points.append(sample_points_in(vis, points_per_mask, rng))
                img.instance_ids.append(int(iid))
            out.append(img)
        return out[0], out[1]


class SceneSource:
    """ORACLE ONLY: fully labelled exported scenes (simulator ground truth) as training images."""

    def __init__(self, scenes_dir: str | Path, limit: int | None = None, min_area: int = 30):
        from data.scene_io import iter_scenes

        self.scenes = list(iter_scenes(scenes_dir, limit=limit))
        self.min_area = min_area

    def __len__(self) -> int:
        return len(self.scenes)

    def image(self, i: int, rng: np.random.Generator, points_per_mask: int) -> TrainImage:
        s = self.scenes[i]
        img = TrainImage(s.rgb, s.depth, s.K, table=(s.label == 0) & (s.depth > 0))
        for iid in np.unique(s.label):
            if iid == 0:
                continue
            m = s.label == iid
            if m.sum() < self.min_area:
                continue
            img.masks.append(m)
            img.points.append(sample_points_in(m, points_per_mask, rng))
        return img
