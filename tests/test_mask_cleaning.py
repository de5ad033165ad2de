"""Mask clean-up (learner/proposals/cleaning.py) on a real sim frame, and through the one proposal pipeline.

The clean-up functions take their thresholds explicitly (the defaults live in ProposalConfig only)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from learner.model.backend import torch_segmenter
from learner.model.network import SegmenterConfig, build_model
from learner.proposals.cleaning import (
    clean_mask,
    contested_pairs,
    depth_edges,
    largest_component,
    release_contested,
    table_pixels,
)
from learner.proposals.config import ProposalConfig, add_proposal_args, from_args
from learner.proposals.frame import InputSpec, make_input
from learner.proposals.pipeline import HeadSpec, propose
from learner.proposals.plane import height_above_plane
from sim.env import InteractiveTabletopEnv, TabletopConfig
from sim.scene import ClutterConfig

DEFAULTS = ProposalConfig()
TABLE_GATE_M, DEPTH_EDGE_M, CONTESTED_OVERLAP = DEFAULTS.table_gate_m, DEFAULTS.depth_edge_m, DEFAULTS.contested_overlap


def _frame(seed: int = 3, clutter: str = "cluttered"):
    env = InteractiveTabletopEnv(TabletopConfig(split="val", clutter=ClutterConfig(level=clutter)))
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
    table = table_pixels(height_above_plane(depth, obs["K"]), valid, TABLE_GATE_M)
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
    assert table_pixels(h, np.ones_like(h, bool), TABLE_GATE_M) is None  # all-zero height: no plane was found
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


def _sprawling_segmenter():
    """A random full-size net whose every cell is a seed: its masks sprawl over the table and across
    depth edges (the torch backend of the one pipeline)."""
    torch.manual_seed(0)
    model = build_model(SegmenterConfig()).eval()
    with torch.no_grad():
        model.obj_head.bias.fill_(5.0)
    return torch_segmenter(model)


def test_propose_applies_the_gate_and_components():
    obs, _ = _frame(seed=5)
    seg = _sprawling_segmenter()
    plain = seg.predict(obs["rgb"], obs["depth"], obs["K"], table_gate_m=None, largest_component=False).masks
    clean = seg.predict(obs["rgb"], obs["depth"], obs["K"]).masks
    table = table_pixels(height_above_plane(obs["depth"], obs["K"]), obs["depth"] > 0, TABLE_GATE_M)
    assert len(plain) and (plain & table).any()
    assert not (clean & table).any()
    for m in clean:
        assert largest_component(m).sum() == m.sum()


def _two_boxes(near_cols: slice, far_cols: slice, hole_line: bool = False, noise_m: float = 0.0):
    """A synthetic depth image (metres): table at 0.70 m, a near box (top 0.62 m) touching a far box
    (top 0.66 m: 4 cm lower) along a vertical line; optionally the sensor's holes along that line."""
    rng = np.random.default_rng(0)
    depth = np.full((40, 60), 0.70, np.float32)
    near = np.zeros(depth.shape, bool)
    far = np.zeros(depth.shape, bool)
    near[8:32, near_cols] = True
    far[8:32, far_cols] = True
    depth[near], depth[far] = 0.62, 0.66
    depth += rng.normal(0, noise_m, depth.shape).astype(np.float32)
    if hole_line:  # stereo sensors lose the far side of an occlusion edge
        first_far = far_cols.start if far_cols.start > near_cols.start else far_cols.stop - 1
        depth[9:31:2, first_far] = 0.0  # (not at the corners: a hole there borders the table too)
    return depth, near, far


def test_depth_edge_cut_splits_a_mask_that_spans_a_depth_jump():
    for hole_line in (False, True):
        depth, near, far = _two_boxes(slice(10, 30), slice(30, 42), hole_line, noise_m=0.002)
        edges = depth_edges(depth, depth > 0, DEPTH_EDGE_M)
        merged = near | far
        assert largest_component(merged).sum() == merged.sum()  # one blob: the old rule kept both boxes
        cut = clean_mask(merged, None, keep_largest=True, edges=edges)
        assert (cut == near).all(), f"hole_line={hole_line}"  # the near box, whole; nothing of the far one
        # the far box is the larger one: it keeps its boundary line (and the holes on it)
        depth, near, far = _two_boxes(slice(10, 18), slice(18, 50), hole_line, noise_m=0.002)
        cut = clean_mask(near | far, None, keep_largest=True, edges=depth_edges(depth, depth > 0, DEPTH_EDGE_M))
        assert (cut == far).all(), f"hole_line={hole_line}"


def test_depth_edge_cut_keeps_smooth_and_noisy_surfaces_whole():
    rng = np.random.default_rng(1)
    # a ramp (5 mm per pixel, steeper than most object faces seen from above) with 2 mm sensor noise
    depth = (0.60 + 0.005 * np.arange(30, dtype=np.float32))[None, :].repeat(20, 0)
    depth = depth + rng.normal(0, 0.002, depth.shape).astype(np.float32)
    depth[5, 5:9] = 0.0  # holes inside a surface do not cut it either
    m = np.ones(depth.shape, bool)
    assert clean_mask(m, None, keep_largest=True, edges=depth_edges(depth, depth > 0, DEPTH_EDGE_M)).all()
    assert depth_edges(depth, depth > 0, None) is None  # off
    # a jump that does not separate the mask loses nothing: the far box is tilted, 4 cm below the near
    # one at its top row and level with it at its bottom row (1.7 mm per row)
    depth, near, far = _two_boxes(slice(10, 30), slice(30, 42))
    m = near | far
    depth[8:32, 30:42] = np.linspace(0.66, 0.62, 24, dtype=np.float32)[:, None]
    assert depth_edges(depth, depth > 0, DEPTH_EDGE_M).edge[m].any()  # there is a jump inside the mask
    assert (clean_mask(m, None, keep_largest=True, edges=depth_edges(depth, depth > 0, DEPTH_EDGE_M)) == m).all()


def test_depth_edge_cut_separates_touching_objects_in_a_real_pile():
    """Sim piles: where two touching objects differ in depth along their whole shared boundary, their
    merged mask is cut back to one object (the sim camera's noise and edge holes included)."""
    found = 0
    for seed in range(4):
        obs, label = _frame(seed=seed, clutter="piled")
        depth = obs["depth"]
        edges = depth_edges(depth, depth > 0, DEPTH_EDGE_M)
        ids = [i for i in np.unique(label) if i > 0 and (label == i).sum() >= 150]
        for a in ids:
            for b in ids:
                if a >= b:
                    continue
                A, B = label == a, label == b
                # 4-adjacent pixel pairs across the A/B boundary with depth on both sides
                pairs = []
                for sa, sb in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                               ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
                    for X, Y in ((A, B), (B, A)):
                        sel = X[sa] & Y[sb] & (depth[sa] > 0) & (depth[sb] > 0)
                        pairs += list(np.abs(depth[sa][sel] - depth[sb][sel]))
                if len(pairs) < 4 or min(pairs) < 2 * DEPTH_EDGE_M:
                    continue  # not touching, or not clearly separated in depth everywhere
                found += 1
                cut = clean_mask(A | B, None, keep_largest=True, edges=edges)
                big = A if (cut & A).sum() >= (cut & B).sum() else B
                other = B if big is A else A
                assert (cut & other).sum() <= 0.02 * other.sum(), (seed, a, b)
                assert (cut & big).sum() >= 0.9 * (largest_component(big) & (depth > 0)).sum(), (seed, a, b)
    assert found >= 2, "expected touching objects at different depths in sim piles"


def test_propose_cuts_masks_at_depth_edges():
    """Every proposal is already cut (cutting again changes nothing); without the cut some are not. (The
    cut works at the network's resolution; snapping to the frame afterwards, refine_px, may take in the
    sensor's missing pixels along an outline, which the cut counts as the far side: off here.)"""
    obs, label = _frame(seed=5, clutter="piled")
    seg = _sprawling_segmenter()  # sprawling masks of a random net cross depth edges
    uncut = seg.predict(obs["rgb"], obs["depth"], obs["K"], depth_edge_m=None, refine_px=0).masks
    cut = seg.predict(obs["rgb"], obs["depth"], obs["K"], refine_px=0).masks
    x = make_input(obs["rgb"], obs["depth"], obs["K"])[0]  # the z channel the pipeline cuts on
    edges = depth_edges(x[5] * InputSpec().xyz_scale_m, x[6] > 0.5, DEPTH_EDGE_M)

    def n_cuttable(ms):
        return sum(int((clean_mask(m, None, keep_largest=True, edges=edges) != m).any()) for m in ms)
    assert len(cut) and n_cuttable(cut) == 0
    assert n_cuttable(uncut) > 0


def _box(r: slice, c: slice, shape=(20, 30)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r, c] = True
    return m


def test_release_contested_frees_pixels_two_objects_share_but_not_nested_ones():
    a = _box(slice(0, 10), slice(0, 10))  # 100 px
    b = _box(slice(0, 10), slice(8, 18))  # 100 px, shares 20 px (20% < 25%) with a: a neighbour
    part = _box(slice(0, 10), slice(0, 5))  # inside a: an alternative, not a neighbour
    edge = _box(slice(10, 20), slice(0, 10)) | _box(slice(5, 10), slice(0, 5))  # shares exactly 25% with a
    out = release_contested(np.stack([a, b, part, edge]), CONTESTED_OVERLAP)
    shared = a & b
    assert shared.sum() == 20
    assert (out[0] == (a & ~shared)).all() and (out[1] == (b & ~shared)).all()
    assert (out[2] == part).all()  # nested: keeps every pixel, also those it shares with a
    assert (out[3] == edge).all()  # 25% is not below 25%: not contested
    # the decision is made on the input masks: order does not matter
    perm = [3, 1, 0, 2]
    assert (release_contested(np.stack([a, b, part, edge])[perm], CONTESTED_OVERLAP) == out[perm]).all()
    # a stricter rule frees more, off frees nothing
    assert not release_contested(np.stack([a, edge]), 0.3)[0][5:10, 0:5].any()
    assert (release_contested(np.stack([a, b]), None) == np.stack([a, b])).all()
    assert contested_pairs(np.array([100, 100, 50]), np.array([[100, 20, 50], [20, 100, 0], [50, 0, 50]]),
                           0.25) == [(0, 1)]
    for bad in (0.0, -0.1, 1.5):  # the share must lie in (0, 1]: off is None
        with pytest.raises(ValueError, match="contested_overlap"):
            release_contested(np.stack([a, b]), bad)


def test_contested_and_depth_edge_command_line_values():
    """The shared proposal options (add_proposal_args): 0 or negative turns a rule off, a share above 1
    is an argparse error, and from_args builds the validated ProposalConfig."""
    ap = argparse.ArgumentParser()
    add_proposal_args(ap)

    def cfg(*argv):
        return from_args(ap.parse_args(list(argv)))

    assert cfg() == DEFAULTS
    assert cfg("--contested", "0.25").contested_overlap == 0.25 and cfg("--contested", "1").contested_overlap == 1.0
    assert cfg("--contested", "0").contested_overlap is None and cfg("--contested", "-1").contested_overlap is None
    assert cfg("--depth-edge", "0").depth_edge_m is None and cfg("--depth-edge", "0.03").depth_edge_m == 0.03
    assert cfg("--table-gate", "0").table_gate_m is None and not cfg("--no-largest-component").largest_component
    for bad in ("1.5", "nan", "a quarter"):
        with pytest.raises(SystemExit):
            ap.parse_args(["--contested", bad])
    with pytest.raises(SystemExit, match="proposals.depth_edge_m"):
        cfg("--depth-edge", "0.8")  # parsed, then refused by ProposalConfig.validate
    # over a base config (a model card's): only the options given on the command line change it
    base = ProposalConfig(max_hypotheses=7, objectness_threshold=0.5, contested_overlap=None)
    assert from_args(ap.parse_args(["--nms-iou", "0.3"]), base, ap) == base.replace(nms_iou=0.3)


def _disk_heads(H: int, W: int, radius: float, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], HeadSpec]:
    """Real network heads (the pipeline's input format) whose dynamic head decodes a disc of about
    `radius` pixels around every query point: kernels that ignore the features and compute
    b2 - sum_k relu(n_k . (x - p) / s) over 16 directions n_k (a 16-gon, positive inside), the same
    kernel everywhere; objectness is noise, so every cell can be a seed."""
    head = HeadSpec(embed_dim=4, dyn_hidden=16, coord_scale=64.0)
    D, Hd, s = head.embed_dim, head.dyn_hidden, head.coord_scale
    h, w = H // 4, W // 4
    ang = np.arange(Hd) * 2 * np.pi / Hd
    w1 = np.zeros((Hd, D + 2), np.float32)
    w1[:, D], w1[:, D + 1] = np.cos(ang), np.sin(ang)
    w2 = np.full(Hd, -10.0, np.float32)
    # sum_k relu(cos(a_k - phi)) ~ Hd / pi for every phi: the logit is ~ 10 Hd / pi (radius - |x - p|) / s
    b2 = np.float32(10.0 * Hd / np.pi * radius / s)
    params = np.concatenate([w1.ravel(), np.zeros(Hd, np.float32), w2, [b2]]).astype(np.float32)
    assert params.size == head.num_kernel_params
    heads = {
        "objectness": rng.normal(0.0, 1.0, (1, 1, h, w)).astype(np.float32),
        "features": np.zeros((1, D, h, w), np.float32),
        "kernels": np.broadcast_to(params[None, :, None, None], (1, params.size, h, w)).copy(),
    }
    return heads, head


def test_propose_frees_contested_pixels_of_its_own_proposals():
    """In a real pile, the pipeline's rule is exactly release_contested on the proposals made without
    it (minus masks left too small), and it frees pixels there. The heads decode discs of 30 px
    radius around the seeds (a random net's masks are all nested) and the clean-up is off (it would
    cut the discs into disjoint object parts), so that neighbouring proposals overlap partly; seeds,
    decoding, scores, NMS and the rule are the real pipeline on the real input of a sim frame."""
    obs, _ = _frame(seed=5, clutter="piled")
    x = make_input(obs["rgb"], obs["depth"], obs["K"])
    heads, head = _disk_heads(*obs["depth"].shape, radius=30.0, rng=np.random.default_rng(0))
    cfg = DEFAULTS.replace(largest_component=False, table_gate_m=None, objectness_threshold=0.0)
    off = propose(heads, x, cfg.replace(contested_overlap=None), head)
    on = propose(heads, x, cfg, head)
    assert len(off.masks) >= 10
    areas = off.masks.sum(axis=(1, 2))
    assert areas.min() > 0.8 * np.pi * 30**2 * 0.5  # discs (some cut by the image border)
    released = release_contested(off.masks, CONTESTED_OVERLAP)
    big = released.sum(axis=(1, 2)) >= cfg.min_area
    assert (on.masks == released[big]).all() and np.allclose(on.scores, off.scores[big])
    assert np.array_equal(on.points, off.points[big])
    freed = off.masks[big] & ~on.masks
    assert freed.sum() > 100
    # every freed pixel was covered by at least two proposals
    assert (off.masks.sum(axis=0)[freed.any(axis=0)] >= 2).all()


def _far_table(z_m: float, H: int = 240, W: int = 320) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A table seen straight on at z_m metres (depth in metres, K), with a 9 mm warp of its surface (what a
    Kinect's far range does to a real table) and a 4 cm box; returns depth, K, warp mask, box mask."""
    K = np.array([[260.0, 0, (W - 1) / 2], [0, 260.0, (H - 1) / 2], [0, 0, 1]])
    depth = np.full((H, W), z_m, np.float32)
    warp = np.zeros((H, W), bool)
    warp[40:80, 40:100] = True
    box = np.zeros((H, W), bool)
    box[140:200, 200:270] = True
    depth[warp] -= 0.009
    depth[box] -= 0.04
    return depth, K, warp, box


@pytest.mark.parametrize("z_m", [0.7, 1.6])
def test_the_table_gate_grows_with_range_like_sensor_noise(z_m):
    """A 9 mm warp of a table 1.6 m away is table under the range-dependent gate (0.005 z^2 = 12.8 mm
    there) and object under the fixed 5 mm one; at 0.7 m both gates are 5 mm and it stays object. A
    4 cm box is object either way."""
    depth, K, warp, box = _far_table(z_m)
    valid = depth > 0
    h = height_above_plane(depth, K)
    assert abs(float(np.median(h[warp])) - 0.009) < 0.001  # the plane fit sees the warp
    fixed = table_pixels(h, valid, TABLE_GATE_M)
    grown = table_pixels(h, valid, TABLE_GATE_M, depth, DEFAULTS.table_gate_z2)
    assert DEFAULTS.table_gate_z2 > 0  # on by default
    assert not fixed[warp].any() and not fixed[box].any()
    assert grown[warp].all() == (z_m > 1.0) and not grown[box].any()
    assert table_pixels(h, valid, TABLE_GATE_M, depth, 0.0).tolist() == fixed.tolist()  # 0: a fixed gate


class _DiscBackend:
    """A `learner.proposals.segmenter.Backend` whose heads decode discs (see _disk_heads) everywhere."""

    input_size = None
    spec = InputSpec()
    latent_weight = None
    mc_shape = None

    def __init__(self, H: int, W: int):
        self.heads, self.head = _disk_heads(H, W, radius=12.0, rng=np.random.default_rng(1))

    def run(self, x, trunk_scale=None):
        return self.heads


def test_the_segmenter_never_proposes_the_warped_far_table():
    """Through the one pipeline (`Segmenter.predict`): with the range-dependent gate no hypothesis keeps
    a pixel of the far table's warp; with a fixed gate (table_gate_z2 = 0) hypotheses lie on it. The
    box is found either way."""
    from learner.proposals.segmenter import Segmenter

    depth, K, warp, box = _far_table(1.6)
    rgb = np.full((*depth.shape, 3), 128, np.uint8)
    seg = Segmenter(_DiscBackend(*depth.shape), DEFAULTS.replace(objectness_threshold=0.0, contested_overlap=None))
    on = seg.predict(rgb, depth, K)
    off = seg.predict(rgb, depth, K, table_gate_z2=0.0)
    assert not on.masks[:, warp].any()
    assert off.masks[:, warp].any(axis=1).sum() >= 1
    for inst in (on, off):
        assert (inst.masks[:, box].sum(axis=1) > 100).any()


def test_snap_to_frame_fits_a_blocky_mask_to_its_object_and_nothing_else():
    """A mask decoded at half resolution (2 x 2 blocks, short of or past the object's outline by a
    pixel or three) snapped to a 640 x 480 frame: it loses the table it covered, grows over the
    object's outline including the pixels the sensor lost there, and stops at the table, at a touching
    box 5 cm nearer the camera and at another hypothesis. (Snapping does not cut masks: the depth-edge
    cut at the network's resolution does.)"""
    from learner.proposals.cleaning import snap_to_frame

    H, W = 480, 640
    K = np.array([[600.0, 0, 319.5], [0, 600.0, 239.5], [0, 0, 1]])
    depth = np.full((H, W), 0.8, np.float32)  # the table, seen straight on
    obj = np.zeros((H, W), bool)
    obj[201:281, 151:251] = True  # 4 cm tall box, odd edges: the half-resolution blocks straddle them
    depth[obj] = 0.76
    near = np.zeros((H, W), bool)
    near[201:281, 251:300] = True  # a box touching it on the right, 5 cm nearer the camera
    depth[near] = 0.71
    other = np.zeros((H, W), bool)
    other[150:190, 400:480] = True  # another object, with its own hypothesis
    depth[other] = 0.75
    lost = np.zeros((H, W), bool)
    lost[280, 151:251] = True  # the sensor lost the box's bottom outline
    depth[lost] = 0.0
    coarse = np.zeros((H // 2, W // 2), bool)
    coarse[101:140, 74:125] = True  # a row short at the top and bottom and a column on the right, 3 wide on the left
    blocky = np.repeat(np.repeat(coarse, 2, 0), 2, 1)
    masks = np.stack([blocky, other])
    out = snap_to_frame(masks, depth, K, TABLE_GATE_M, DEFAULTS.table_gate_z2, grow_px=4, jump_m=DEPTH_EDGE_M)
    iou = lambda a, b: (a & b).sum() / (a | b).sum()  # noqa: E731
    assert iou(out[0], obj) > 0.99 > iou(blocky, obj) + 0.05
    assert out[0][lost].all() and not out[0][near].any() and not (out[0] & other).any()
    assert not out[0][(depth == np.float32(0.8))].any()  # no table pixel
    assert np.array_equal(out[1], other)  # its mask was exact: nothing to add, nothing to remove
    # no plane (all zero depth) or no gate: unchanged
    assert snap_to_frame(masks, depth, K, None, 0.0, 4, DEPTH_EDGE_M) is masks
