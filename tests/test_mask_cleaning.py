"""Mask clean-up (learner/mask_cleaning.py) on a real sim frame, and through the proposal path."""

from __future__ import annotations

import numpy as np
import torch

from learner.hypotheses import propose
from learner.mask_cleaning import clean_mask, largest_component, table_pixels
from learner.model import SegmenterConfig, build_model
from learner.table_plane import height_above_plane
from sim.env import InteractiveTabletopEnv, TabletopConfig


def _frame(seed: int = 3):
    env = InteractiveTabletopEnv(TabletopConfig(split="val"))
    try:
        obs, info = env.reset(seed=seed)
    finally:
        env.close()
    return obs, info["instance_label"]


def test_table_gate_removes_table_and_keeps_objects_and_depth_holes():
    obs, label = _frame()
    depth = obs["depth"].copy()
    obj_id = int(np.bincount(label[label > 0]).argmax())
    obj = label == obj_id
    ys, xs = np.nonzero(obj)
    # punch a depth hole into the object: no depth says nothing about the table
    hole = np.zeros_like(obj)
    hole[ys[0] : ys[0] + 3, :] = True
    hole &= obj
    depth[hole] = 0
    valid = depth > 0
    table = table_pixels(height_above_plane(depth, obs["K"]), valid)
    assert table is not None
    # a sloppy mask: the object's bounding box grown by 6 px covers table around it
    box = np.zeros_like(obj)
    box[max(ys.min() - 6, 0) : ys.max() + 7, max(xs.min() - 6, 0) : xs.max() + 7] = True
    cleaned = clean_mask(box, table, keep_largest=True)
    iou = lambda a, b: (a & b).sum() / (a | b).sum()  # noqa: E731
    assert iou(cleaned, obj) > iou(box, obj) + 0.1
    assert cleaned[obj & ~valid].all()  # the depth hole stays in the mask
    assert (cleaned & obj).sum() >= 0.97 * obj.sum()  # the object itself survives the gate
    bg = (label == 0) & valid & box
    assert (cleaned & bg).sum() < 0.2 * bg.sum()


def test_no_plane_or_no_gate_removes_nothing():
    h = np.zeros((10, 12), np.float32)
    assert table_pixels(h, np.ones_like(h, bool)) is None  # all-zero height: no plane was found
    assert table_pixels(np.ones_like(h), np.ones_like(h, bool), gate_m=None) is None
    m = np.ones((10, 12), bool)
    assert clean_mask(m, None, keep_largest=False).all()


def test_largest_component_keeps_only_the_biggest_blob():
    m = np.zeros((20, 20), bool)
    m[1:4, 1:4] = True  # 9 px
    m[10:16, 10:16] = True  # 36 px
    m[5, 5] = True
    out = largest_component(m)
    assert out.sum() == 36 and out[12, 12] and not out[2, 2]
    diag = np.zeros((4, 4), bool)
    diag[0, 0] = diag[1, 1] = True  # 8-connected only: two 4-components of one pixel each
    assert largest_component(diag).sum() == 1


def test_propose_applies_the_gate_and_components():
    obs, _ = _frame(seed=5)
    torch.manual_seed(0)
    model = build_model(SegmenterConfig()).eval()
    with torch.no_grad():
        model.obj_head.bias.fill_(5.0)  # every cell is a seed: masks of a random net sprawl over the table
    plain, _ = propose(model, obs["rgb"], obs["depth"], obs["K"], table_gate_m=None, largest_component=False)
    clean, _ = propose(model, obs["rgb"], obs["depth"], obs["K"])
    table = table_pixels(height_above_plane(obs["depth"], obs["K"]), obs["depth"] > 0)
    assert len(plain) and (plain & table).any()
    assert not (clean & table).any()
    for m in clean:
        assert largest_component(m).sum() == m.sum()
