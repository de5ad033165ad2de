"""`ProposalConfig`: every parameter of the proposal pipeline (`learner.proposals.pipeline`) and its
default, written once. The agent, evaluation, the benchmarks, the torch path, the deploy card and the
torch-free runtime all read it from here (CLIs build it with `add_proposal_args` / `from_args`).

Units: pixels for areas (at the network input resolution), metres for the table gate and the depth
step, probabilities for thresholds and shares in [0, 1].
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# how a cleaned proposal is scored: "mask" = mean mask probability inside the mask (the default),
# "objectness_x_mask" = that times the mean objectness probability inside it (the first exports)
PROPOSAL_SCORES = ("mask", "objectness_x_mask")

# what a model card without the clean-up keys did (exports from before the mask clean-up, the
# depth-edge cut and the contested-pixel rule existed)
LEGACY_CARD_DEFAULTS: dict[str, Any] = {"table_gate_m": None, "largest_component": False,
                                        "score": "objectness_x_mask", "depth_edge_m": None,
                                        "contested_overlap": None, "support_region": False,
                                        "table_gate_z2": 0.0, "refine_px": 0}


@dataclass
class ProposalConfig:
    """How network heads become object hypotheses (see `learner.proposals.pipeline` for the steps).

    max_hypotheses: at most this many proposals per frame.
    objectness_threshold: seeds are 3x3 maxima of the objectness map with probability above this. Low
      on purpose: a seed costs one decoded mask, and the gate and score reject the junk (val: 0.5 ->
      0.1 raised AP50 by 0.04-0.08 on 2000-interaction models, docs/benchmarks.md "Loss on val").
    nms_iou: greedy mask-IoU NMS threshold.
    mask_threshold: a decoded pixel is in the mask when its probability is above this.
    max_seeds: seeds decoded per frame; None = 3 x max_hypotheses.
    min_area: masks with fewer pixels (network input resolution) are dropped. 64 (8 x 8 at 320 x 240)
      drops the fragments a wide-twin model leaves in unseen cells: cross-domain val AP50 +0.014-0.018
      against 16, the narrow val unchanged (docs/benchmarks.md "Proposal parameters on cross-domain val").
    table_gate_m: pixels within this many metres above the support plane are table (None: no gate).
    table_gate_z2: the gate grows with range like a depth sensor's noise: a pixel at camera depth z
      metres is table within max(table_gate_m, table_gate_z2 * z^2) metres of the plane (0: a fixed
      gate). 0.005 is about 3 sigma of a Kinect-like sensor (sigma ~ 1.5 mm at 1 m, 5 mm at 1.8 m) and
      stays under the fixed 5 mm up to 1 m, the tabletop range of the twin.
    largest_component: keep each mask's largest 4-connected part (after the depth-edge cut).
    score: one of PROPOSAL_SCORES.
    depth_edge_m: cut masks along depth steps of at least this many metres (None: no cut; needs
      largest_component).
    contested_overlap: two kept masks sharing fewer than this share of the smaller one's pixels both
      lose the shared strip (None: off). Chosen on val (docs/benchmarks.md "Contested pixels").
    refine_px: snap the masks to the frame's own depth (`learner.proposals.cleaning.snap_to_frame`): the
      table gate at the frame's resolution, then growth by up to this many frame pixels into
      depth-continuous pixels of no other mask (0: off). The network sees a quarter of a 640 x 480
      frame's pixels and decodes masks on a stride-4 grid: they come back blobby and in 2 x 2 blocks.
      Val (docs/benchmarks.md "Proposal parameters on cross-domain val"): 0 -> 4 raised cross-domain
      boundary F 0.483 -> 0.551 and AP 0.262 -> 0.305, narrow boundary F 0.849 -> 0.894; 6 adds 0.005.
    support_region: cut masks to the image region over the support plane's extent and drop seeds
      outside it (`learner.proposals.plane.support_region`): walls, the floor past the table edge,
      the background and missing depth joined to the image border never yield a hypothesis.
    """

    max_hypotheses: int = 20
    objectness_threshold: float = 0.1
    nms_iou: float = 0.5
    mask_threshold: float = 0.5
    max_seeds: int | None = None
    min_area: int = 64
    table_gate_m: float | None = 0.005
    table_gate_z2: float = 0.005
    largest_component: bool = True
    score: str = "mask"
    depth_edge_m: float | None = 0.02
    contested_overlap: float | None = 0.25
    support_region: bool = True
    refine_px: int = 4

    @property
    def seeds(self) -> int:
        """The number of seeds decoded per frame."""
        return int(self.max_seeds) if self.max_seeds is not None else 3 * int(self.max_hypotheses)

    def validate(self) -> ProposalConfig:
        """Raises ValueError naming the first bad field; returns self."""
        for k in ("objectness_threshold", "nms_iou", "mask_threshold"):
            v = getattr(self, k)
            if not (isinstance(v, int | float) and 0.0 <= float(v) <= 1.0):
                raise ValueError(f"proposals.{k} must lie in [0, 1], got {v!r}")
        if not isinstance(self.max_hypotheses, int) or isinstance(self.max_hypotheses, bool) or self.max_hypotheses < 1:
            raise ValueError(f"proposals.max_hypotheses must be an integer >= 1, got {self.max_hypotheses!r}")
        if not isinstance(self.min_area, int) or self.min_area < 0:
            raise ValueError(f"proposals.min_area must be an integer >= 0, got {self.min_area!r}")
        if not isinstance(self.refine_px, int) or isinstance(self.refine_px, bool) or not 0 <= self.refine_px <= 16:
            raise ValueError(f"proposals.refine_px must be an integer in [0, 16], got {self.refine_px!r}")
        if self.max_seeds is not None and (not isinstance(self.max_seeds, int) or self.max_seeds < 1):
            raise ValueError(f"proposals.max_seeds must be null or an integer >= 1, got {self.max_seeds!r}")
        if self.table_gate_m is not None and not 0.0 <= float(self.table_gate_m) <= 0.1:
            raise ValueError(f"proposals.table_gate_m must be null or in [0, 0.1] metres, got {self.table_gate_m}")
        if not (isinstance(self.table_gate_z2, int | float) and 0.0 <= float(self.table_gate_z2) <= 0.05):
            raise ValueError("proposals.table_gate_z2 must lie in [0, 0.05] metres per square metre, "
                             f"got {self.table_gate_z2!r}")
        if self.depth_edge_m is not None and not 0.0 < float(self.depth_edge_m) <= 0.5:
            raise ValueError(f"proposals.depth_edge_m must be null or in (0, 0.5] metres, got {self.depth_edge_m}")
        if self.contested_overlap is not None:
            check_contested_overlap(self.contested_overlap)
        if not isinstance(self.support_region, bool):
            raise ValueError(f"proposals.support_region must be true or false, got {self.support_region!r}")
        if self.score not in PROPOSAL_SCORES:
            raise ValueError(f"proposals.score must be one of {PROPOSAL_SCORES}, got {self.score!r}")
        return self

    def replace(self, **overrides: Any) -> ProposalConfig:
        """A validated copy with some fields changed; an unknown name is a TypeError naming it."""
        bad = set(overrides) - set(field_names())
        if bad:
            raise TypeError(f"unknown proposal parameters {sorted(bad)}; expected some of {field_names()}")
        return replace(self, **overrides).validate()

    # ------------------------------------------------------------------ the model card
    def to_card(self) -> dict[str, Any]:
        """The card's "proposals" values (JSON types)."""
        return asdict(self)

    @classmethod
    def from_card(cls, card_proposals: dict[str, Any]) -> ProposalConfig:
        """From a card's "proposals" entry. Keys this config does not know (descriptions) are
        ignored; keys older cards lack take what those exports did (LEGACY_CARD_DEFAULTS)."""
        d = {k: v for k, v in dict(card_proposals).items() if k in field_names()}
        if d.get("score") not in PROPOSAL_SCORES:  # older cards: a description string
            d.pop("score", None)
        return cls(**{**LEGACY_CARD_DEFAULTS, **d}).validate()


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(ProposalConfig))


def check_contested_overlap(value: float) -> float:
    """The contested-overlap share as a float in (0, 1]; ValueError otherwise."""
    v = float(value)
    if not (math.isfinite(v) and 0.0 < v <= 1.0):
        raise ValueError(f"proposals.contested_overlap must lie in (0, 1], got {value!r}")
    return v


# ---------------------------------------------------------------------- command lines
def _off_or_float(text: str) -> float | None:
    """A metres / share option: 0 or negative means off (None)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return None if v <= 0 else v


def _share_or_off(text: str) -> float | None:
    v = _off_or_float(text)
    if v is not None:
        try:
            check_contested_overlap(v)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return v


def add_proposal_args(parser: argparse.ArgumentParser, defaults: ProposalConfig | None = None) -> None:
    """The proposal options every CLI shares (defaults: `defaults`, else ProposalConfig())."""
    d = defaults or ProposalConfig()
    g = parser.add_argument_group("proposals (learner/proposals/config.py)")
    g.add_argument("--max-hypotheses", type=int, default=d.max_hypotheses)
    g.add_argument("--objectness-threshold", type=float, default=d.objectness_threshold,
                   help="seed threshold on the objectness probability")
    g.add_argument("--nms-iou", type=float, default=d.nms_iou)
    g.add_argument("--mask-threshold", type=float, default=d.mask_threshold)
    g.add_argument("--min-area", type=int, default=d.min_area)
    g.add_argument("--table-gate", type=_off_or_float, default=d.table_gate_m, metavar="M",
                   help="metres above the plane still counted as table (0: off)")
    g.add_argument("--table-gate-z2", type=float, default=d.table_gate_z2, metavar="C",
                   help="the gate grows to C * z^2 metres at camera depth z (0: a fixed gate)")
    g.add_argument("--no-largest-component", action="store_true", default=not d.largest_component,
                   help="keep every connected part of a mask")
    g.add_argument("--score", choices=PROPOSAL_SCORES, default=d.score)
    g.add_argument("--depth-edge", type=_off_or_float, default=d.depth_edge_m, metavar="M",
                   help="cut masks along depth steps of at least M metres (0 or negative: off)")
    g.add_argument("--contested", type=_share_or_off, default=d.contested_overlap, metavar="SHARE",
                   help="contested-pixel overlap share in (0, 1] (0 or negative: off)")
    g.add_argument("--refine-px", type=int, default=d.refine_px, metavar="PX",
                   help="snap masks to the frame's depth, growing up to PX frame pixels (0: off)")
    g.add_argument("--no-support-region", action="store_true", default=not d.support_region,
                   help="let masks and seeds lie off the support plane's extent (walls, floor, border band)")


# ProposalConfig field -> (argparse dest, dest value -> field value)
_ARGS: dict[str, tuple[str, Any]] = {
    "max_hypotheses": ("max_hypotheses", None), "objectness_threshold": ("objectness_threshold", None),
    "nms_iou": ("nms_iou", None), "mask_threshold": ("mask_threshold", None), "min_area": ("min_area", None),
    "table_gate_m": ("table_gate", None), "table_gate_z2": ("table_gate_z2", None),
    "largest_component": ("no_largest_component", lambda v: not v),
    "score": ("score", None), "depth_edge_m": ("depth_edge", None), "contested_overlap": ("contested", None),
    "support_region": ("no_support_region", lambda v: not v), "refine_px": ("refine_px", None),
}


def _field_values(args: argparse.Namespace) -> dict[str, Any]:
    return {f: (conv(getattr(args, dest)) if conv else getattr(args, dest)) for f, (dest, conv) in _ARGS.items()}


def from_args(args: argparse.Namespace, base: ProposalConfig | None = None,
              parser: argparse.ArgumentParser | None = None) -> ProposalConfig:
    """The ProposalConfig of a namespace parsed with `add_proposal_args`. With base and parser: base
    with only the options given on the command line (those that differ from the parser's defaults)
    changed, e.g. a model card's parameters with the user's overrides. Exits with a clear message on
    a bad value."""
    vals = _field_values(args)
    try:
        if base is None:
            return ProposalConfig(**vals).validate()
        if parser is None:
            raise TypeError("from_args with a base needs the parser (to tell given options from defaults)")
        defaults = _field_values(argparse.Namespace(**{d: parser.get_default(d) for d, _ in _ARGS.values()}))
        return base.replace(**{k: v for k, v in vals.items() if v != defaults[k]})
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
