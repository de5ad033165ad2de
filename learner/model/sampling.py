"""Several segmentation hypotheses of one frame from the torch segmenter, and distributional
predictions built from them (Latent-MaskRCNN, Sec. IV; algorithms in `learner.mask_sets`).

Samplers (`SamplerConfig.method`):
- "tta" (default): test-time augmentation -- flip, roll, zoom, shift with K updated consistently, RGB gain,
  depth noise and dropout (`learner.tta`); every sample's masks are mapped back to the original frame.
- "mc_dropout": channel dropout (`F.dropout2d`, kept active in eval mode) on the output of
  `model.<dropout_module>` (default the shared head trunk, right before the three heads), applied
  with a forward hook, so the model code is untouched. The model was not trained with dropout. The
  deploy runtime does the same with an exported graph that takes the channel factors as an input.
- "latent" (latent models only, `SegmenterConfig.latent_dim > 0`; Latent-MaskRCNN Sec. III): one
  network pass; in each sample every seed is decoded with its own draw z ~ p(z | image, seed) of the
  learned prior (`learner.hypotheses.propose_latent_samples`). Cheap (k decodes, not k passes), but
  the trained codes carry under one nat, so its samples differ little (docs/benchmarks.md).
- "tta_latent": TTA views, each decoded with its own latent draws.
Why TTA is the default (val, docs/benchmarks.md "Distributional hypotheses on val"): with the cleaned
proposals of the BCE-trained model, channel-dropout samples agree even on merged masks (pixel
agreement 0.90), so their intersection shrinks good masks and keeps the merges: the double-pick
rate went up. TTA samples disagree where two objects touch, and p = 0.9 masks halved the double-pick
rate at 0.82x the pickable area. (With the first, robust-loss model and uncleaned masks it was the
other way round: TTA samples disagreed almost everywhere.) On latent models TTA also beat the latent
sampler and tta_latent on val (docs/benchmarks.md "Latent code on val").

Modes of `predict`:
- "mean": the prior-mean prediction (Sec. IV-D) = the plain single forward pass, exactly
  `learner.hypotheses.propose`;
- "confidence": p-confidence masks (Sec. IV-A/B), contained in masks of >= ceil(k p) of k samples;
- "union": Union-NMS (Sec. IV-C).

Frames: rgb (H, W, 3) uint8, depth (H, W) float metres (0 = missing), K (3, 3) pixels; masks are
returned at the frame's resolution, (u, v) = (column, row).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from learner.model.hypotheses import propose, propose_latent_samples
from learner.proposals.mask_sets import ConfidenceConfig, MaskSet, confidence_masks, union_nms
from learner.proposals.tta import TTAConfig, make_transforms, sample_with_transforms

MODES = ("mean", "confidence", "union")
METHODS = ("mc_dropout", "tta", "latent", "tta_latent")
PROPOSAL_KEYS = ("max_hypotheses", "objectness_threshold", "nms_iou", "mask_threshold", "depth_edge_m",
                 "contested_overlap")


@dataclass
class SamplerConfig:
    """How hypotheses are sampled.

    method: "mc_dropout" or "tta". samples: k >= 1. seed: the same seed gives the same samples.
    include_mean: sample 0 is the unperturbed prediction (TTA identity / no dropout).
    tta: the TTA perturbations. dropout_rate: channel-drop probability for MC dropout, in [0, 1).
    dropout_module: attribute of the model whose output is dropped (MC dropout).
    """

    method: str = "tta"
    samples: int = 10
    seed: int = 0
    include_mean: bool = True
    tta: TTAConfig = field(default_factory=TTAConfig)
    dropout_rate: float = 0.1
    dropout_module: str = "trunk"

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"sampler method must be one of {METHODS}, got {self.method!r}")
        if isinstance(self.samples, bool) or int(self.samples) != self.samples or int(self.samples) < 1:
            raise ValueError(f"samples must be an integer >= 1, got {self.samples!r}")
        if not (math.isfinite(float(self.dropout_rate)) and 0.0 <= float(self.dropout_rate) < 1.0):
            raise ValueError(f"dropout_rate must lie in [0, 1), got {self.dropout_rate}")
        self.tta.validate()


@contextlib.contextmanager
def mc_dropout(model: torch.nn.Module, rate: float, module: str = "trunk") -> Iterator[None]:
    """Within the context, `model.<module>`'s output goes through F.dropout2d(rate, training=True)
    on every forward (also in eval mode). The hook is removed on exit."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must lie in [0, 1), got {rate}")
    target = getattr(model, module, None)
    if not isinstance(target, torch.nn.Module):
        raise ValueError(f"model has no submodule {module!r} to apply MC dropout to")

    def hook(_mod: torch.nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        return F.dropout2d(out, p=rate, training=True)

    handle = target.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _proposal_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    bad = set(kw) - set(PROPOSAL_KEYS)
    if bad:
        raise TypeError(f"unknown proposal parameters {sorted(bad)}; expected some of {PROPOSAL_KEYS}")
    return kw


@torch.no_grad()
def sample_hypotheses(
    model: torch.nn.Module,
    rgb: np.ndarray,
    depth: np.ndarray,
    K: np.ndarray,
    sampler: SamplerConfig | None = None,
    net_size: tuple[int, int] | None = None,
    **proposal_kwargs: Any,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k samples of hypotheses for one frame: [(masks (n, H, W) bool, scores (n,) float32)], all in
    the frame's own pixels. proposal_kwargs go to `learner.hypotheses.propose`. The global torch RNG
    is left as it was (MC dropout draws from a forked, seeded RNG)."""
    cfg = sampler or SamplerConfig()
    cfg.validate()
    kw = _proposal_kwargs(proposal_kwargs)
    depth = np.asarray(depth, np.float32)

    def predict_fn(r: np.ndarray, d: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return propose(model, r, d, k, net_size=net_size, **kw)

    if cfg.method in ("latent", "tta_latent") and getattr(getattr(model, "config", None), "latent_dim", 0) <= 0:
        raise ValueError(f"sampler {cfg.method!r} needs a model trained with a latent code (latent_dim > 0); "
                         "use 'tta' or 'mc_dropout' for this one")
    if cfg.method == "latent":
        out = propose_latent_samples(model, rgb, depth, K, cfg.samples, cfg.seed, cfg.include_mean, net_size, **kw)
        return [(np.asarray(m, bool), np.asarray(s, np.float32)) for m, s in out]
    if cfg.method in ("tta", "tta_latent"):
        rng, calls = np.random.default_rng([int(cfg.seed), 2]), [0]

        def latent_fn(r: np.ndarray, d: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """tta_latent: every view decoded with its own latent draws (the identity view: the mean)."""
            first = calls[0] == 0 and cfg.include_mean
            calls[0] += 1
            return propose_latent_samples(model, r, d, k, 1, include_mean=first, net_size=net_size, rng=rng, **kw)[0]

        tcfg = TTAConfig(**{**cfg.tta.__dict__, "include_identity": cfg.include_mean})
        return sample_with_transforms(predict_fn if cfg.method == "tta" else latent_fn, rgb, depth, K,
                                      make_transforms(cfg.samples, tcfg, cfg.seed))
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        for i in range(int(cfg.samples)):
            if i == 0 and cfg.include_mean:
                out.append(predict_fn(rgb, depth, K))
                continue
            with mc_dropout(model, float(cfg.dropout_rate), cfg.dropout_module):
                out.append(predict_fn(rgb, depth, K))
    return [(np.asarray(m, bool), np.asarray(s, np.float32)) for m, s in out]


def ensemble_samples(models: Sequence[torch.nn.Module], rgb: np.ndarray, depth: np.ndarray, K: np.ndarray,
                     k: int, tta: TTAConfig | None = None, **proposal_kwargs: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """k samples from several models (a deep ensemble, e.g. training seeds): the k TTA views are split
    as evenly as possible over the models, the first ones getting one more (model j: its own views
    drawn with seed j, the identity view first). Same frame conventions as `sample_hypotheses`."""
    if not models:
        raise ValueError("an ensemble needs at least one model")
    out: list[tuple[np.ndarray, np.ndarray]] = []
    n = len(models)
    for j, m in enumerate(models):
        kj = k // n + (1 if j < k % n else 0)
        if kj:
            cfg = SamplerConfig(method="tta", samples=kj, seed=j, tta=tta or TTAConfig())
            out += sample_hypotheses(m, rgb, depth, K, cfg, **proposal_kwargs)
    return out


def distributional(
    samples: list[tuple[np.ndarray, np.ndarray]],
    mode: str,
    p: float = 0.9,
    confidence: ConfidenceConfig | None = None,
    union_iou: float = 0.5,
    max_masks: int = 20,
) -> MaskSet:
    """Samples -> p-confidence masks ("confidence") or Union-NMS masks ("union")."""
    if mode == "confidence":
        c = confidence or ConfidenceConfig(max_masks=max_masks)
        return confidence_masks(samples, p=p, config=c)
    if mode == "union":
        return union_nms(samples, iou_threshold=union_iou, max_masks=max_masks)
    raise ValueError(f"distributional mode must be 'confidence' or 'union', got {mode!r}")


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    rgb: np.ndarray,
    depth: np.ndarray,
    K: np.ndarray,
    mode: str = "mean",
    p: float = 0.9,
    sampler: SamplerConfig | None = None,
    confidence: ConfidenceConfig | None = None,
    union_iou: float = 0.5,
    net_size: tuple[int, int] | None = None,
    **proposal_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """(masks (N, H, W) bool, scores (N,) float32) of one frame in the given mode (see the module
    docstring). mode "mean" is exactly `propose(model, rgb, depth, K, net_size=..., **proposal_kwargs)`."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    kw = _proposal_kwargs(proposal_kwargs)
    if mode == "mean":
        return propose(model, rgb, depth, K, net_size=net_size, **kw)
    samples = sample_hypotheses(model, rgb, depth, K, sampler, net_size=net_size, **kw)
    res = distributional(samples, mode, p, confidence, union_iou, kw.get("max_hypotheses", 20))
    return res.masks, res.scores


ConfidenceFn = Callable[[Any, float], tuple[np.ndarray, np.ndarray]]


def make_confidence_fn(
    model: torch.nn.Module | Callable[[], torch.nn.Module],
    sampler: SamplerConfig | None = None,
    confidence: ConfidenceConfig | None = None,
    net_size: tuple[int, int] | None = None,
    **proposal_kwargs: Any,
) -> ConfidenceFn:
    """A callable (frame, p) -> (masks, scores) of p-confidence masks for `Agent.choose(...,
    confidence_fn=...)`. frame: anything with .rgb, .depth (metres), .K (robot.base.RGBDFrame).
    `model` may be a zero-argument callable returning the current model (hot-swapped models)."""
    sampler = sampler or SamplerConfig()
    sampler.validate()
    kw = _proposal_kwargs(proposal_kwargs)

    def fn(frame: Any, p: float) -> tuple[np.ndarray, np.ndarray]:
        m = model() if not isinstance(model, torch.nn.Module) else model
        return predict(m, frame.rgb, frame.depth, frame.K, mode="confidence", p=p, sampler=sampler,
                       confidence=confidence, net_size=net_size, **kw)

    return fn
