"""Training data that scales (issue #19): `LogSource` reads a growing log incrementally with bounded memory.

Real Zarr logs written by `data.log.InteractionLog` / `data.shards.open_shard_writer`, read through
`data.shards.RunLog`; real label propagation and real training steps (a tiny network).
"""

from __future__ import annotations

import numpy as np
import pytest

from data.label_propagation import Capture, PropagationConfig, WindowPropagation, propagate_masks
from data.log import InteractionLog
from data.schema import Label
from data.shards import open_shard_writer
from learner.bench.train_data_scale import replicated, scene_records
from learner.model.network import SegmenterConfig
from learner.train.data import ArrayCache, LogSource
from learner.train.trainer import TrainConfig, Trainer, log_source

H, W = 96, 128
TINY = SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16)
PROP = PropagationConfig(window=6)  # a short window: several update batches span it


@pytest.fixture(scope="module")
def records():
    return scene_records(48, H, W, seed=1, episode=20)


def write(path, recs, start=0, stop=None):
    with InteractionLog.open_or_create(path, H, W) as log:
        for k in range(start, len(recs) if stop is None else stop):
            log.append(recs[k])


def count_reads(src: LogSource, monkeypatch) -> list[list[int]]:
    """Record every global index each read of the source's log asks for."""
    calls: list[list[int]] = []
    real = src._log.read_fields

    def spy(names, indices=None):
        calls.append([int(indices)] if np.isscalar(indices) else [int(i) for i in indices])
        return real(names, indices)

    monkeypatch.setattr(src._log, "read_fields", spy)
    return calls


def batch_reference(path, cfg: PropagationConfig) -> list[list[int]]:
    """Today's batch result: `propagate_masks` over every usable record of a single-store log."""
    with InteractionLog.open(path) as log:
        r = log.read_fields(("rgb_before", "depth_before", "camera_pose", "mask", "label"))
    label = r["label"]
    keep = [k for k in range(len(label))
            if label[k] == Label.NEGATIVE or (label[k] == Label.POSITIVE and r["mask"][k].sum() >= 30)]
    masks = [r["mask"][k] if label[k] == Label.POSITIVE else None for k in keep]
    return propagate_masks([r["rgb_before"][k] for k in keep], [r["depth_before"][k] for k in keep],
                           [r["camera_pose"][k] for k in keep], masks, cfg)


def test_update_reads_only_new_records_and_equals_the_batch_propagation(tmp_path, records, monkeypatch):
    path = tmp_path / "interactions.zarr"
    write(path, records, 0, 20)
    src = LogSource(path, propagation=PROP, read_batch=4)
    calls = count_reads(src, monkeypatch)
    assert src.update() == 0 and calls == []  # nothing new: nothing read
    for stop in (23, 37, 48):  # the writer appends, the learner updates
        write(path, records, src.n_records, stop)
        before = src.n_records
        src.update()
        read = sorted({i for c in calls for i in c})
        assert read == list(range(before, stop)), read  # exactly the new records, each in one read
        assert sum(len(c) for c in calls) == stop - before
        calls.clear()
        assert src.known == batch_reference(path, PROP)  # incremental == batch, after every update
    assert src.n_known_masks > len(src.positives)  # propagation really carried masks
    cold = LogSource(path, propagation=PROP)
    assert cold.known == src.known and cold.positives == src.positives and cold.negatives == src.negatives
    assert src.stats.records_ingested == 48


def test_window_propagation_equals_propagate_masks_for_any_batching():
    rng = np.random.default_rng(0)
    h, w = 24, 32
    for trial in range(25):
        n = int(rng.integers(1, 30))
        cfg = PropagationConfig(window=int(rng.integers(0, 6)), max_masks=int(rng.integers(1, 5)))
        base = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
        rgb, depth, poses, masks = [], [], [], []
        for _ in range(n):
            r = base.copy()
            if rng.random() < 0.3:  # something changed below some row
                r[int(rng.integers(0, h)):] = int(rng.integers(0, 255))
            pose = np.eye(4)
            pose[0, 3] = float(rng.random() < 0.1)  # another view now and then
            m = None
            if rng.random() < 0.7:
                m = np.zeros((h, w), bool)
                y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
                m[y : y + int(rng.integers(2, 8)), x : x + int(rng.integers(2, 8))] = True
            rgb.append(r)
            depth.append(np.full((h, w), 0.6, np.float32))
            poses.append(pose)
            masks.append(m)
        prop, known, i = WindowPropagation(cfg), {}, 0
        while i < n:
            b = int(rng.integers(1, 7))
            known.update(prop.extend(Capture(k, rgb[k], depth[k], poses[k], masks[k]) for k in range(i, min(n, i + b))))
            i += b
            assert len(prop._frames) <= cfg.window and len(prop._masks) <= 2 * cfg.window + 1  # bounded tail
        assert [known[k] for k in range(n)] == propagate_masks(rgb, depth, poses, masks, cfg), trial


def test_no_propagation_across_shards(tmp_path, records):
    """Two collectors looking at identical tables: masks propagate inside each shard, never between them."""
    run = tmp_path / "run"
    for worker in (0, 1):
        with open_shard_writer(run, worker, "sim", H, W) as log:
            for k in range(12):
                log.append(replicated(records, k))  # the same 12 interactions, interleaved in time
    one = tmp_path / "one.zarr"
    write(one, records, 0, 12)
    single = LogSource(one, propagation=PROP)
    both = LogSource(run, propagation=PROP)
    assert len(both) == 2 * len(single) and set(both.shard) == {0, 1}
    for i, known in enumerate(both.known):
        assert all(both.shard[s] == both.shard[i] for s in known), (i, known)
    for shard in (0, 1):  # each shard on its own is the single log
        mine = [i for i in range(len(both)) if both.shard[i] == shard]
        local = {i: k for k, i in enumerate(mine)}
        assert [[local[s] for s in both.known[i]] for i in mine] == single.known
    assert single.n_known_masks > len(single.positives)


def test_the_cache_never_holds_more_than_its_cap(tmp_path, records):
    path = tmp_path / "interactions.zarr"
    write(path, records)
    frame_bytes = H * W * 3 + H * W * 4
    cap_mb = 3.5 * frame_bytes / 2**20  # room for about three frames
    src = LogSource(path, propagation=PROP, cache_mb=cap_mb)
    rng = np.random.default_rng(0)
    for _ in range(40):
        src.interaction_image(int(rng.integers(len(src))), rng, 2)
        src.pseudo_pair(rng, 2, 0)
        assert src.cache.nbytes <= src.cache.capacity_bytes
    assert 0 < src.cache.peak_nbytes <= src.cache.capacity_bytes and src.cache.misses > 3
    # a cached frame is the log's frame, read-only (shared by every image built from it)
    rgb, depth, K = src.frame(0)
    with InteractionLog.open(path) as log:
        np.testing.assert_array_equal(rgb, log.read_field("rgb_before", src.record[0]))
        np.testing.assert_array_equal(depth, log.read_field("depth_before", src.record[0]))
    assert not rgb.flags.writeable
    cache = ArrayCache(100)
    cache.put("a", (np.zeros(60, np.uint8),))
    cache.put("b", (np.zeros(60, np.uint8),))  # evicts a
    cache.put("c", (np.zeros(200, np.uint8),))  # larger than the cap: not kept
    assert "a" not in cache and "b" in cache and "c" not in cache and cache.nbytes == 60
    assert LogSource(path, cache_mb=0).frame(1)[0].shape == (H, W, 3)  # no cache: still reads


def test_training_steps_from_an_updated_source(tmp_path, records):
    """The loop's way: one source kept across retrains, `update()` before each `train`."""
    path = tmp_path / "interactions.zarr"
    write(path, records, 0, 24)
    cfg = TrainConfig(batch_size=2, max_queries=8, num_threads=1, consistency_weight=0.5, consistency_images=1)
    src = log_source(path, cfg, cache_mb=8)
    tr = Trainer(cfg, TINY, seed=0)
    assert tr.train(src, 2, progress=False)["steps"] == 2
    write(path, records, 24, 48)
    assert src.update() > 0 and src.n_records == 48
    stats = tr.train(src, 2, progress=False)
    assert stats["steps"] == 2 and np.isfinite(stats["loss"])
    assert len(src.bank) >= 2 and src.bank.capacity == 512
    src.close()


def test_limit_reads_the_first_records_only(tmp_path, records):
    path = tmp_path / "interactions.zarr"
    write(path, records)
    src = LogSource(path, limit=10)
    assert src.n_records == 10 and max(src.record) < 10 and src.update() == 0
    with pytest.raises(ValueError, match="cache_mb"):
        LogSource(path, cache_mb=-1)
