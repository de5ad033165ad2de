"""`Segmenter`: RGB-D frames -> object hypotheses, over any network backend (numpy, no torch).

    seg = Segmenter(backend, ProposalConfig())      # a torch module: learner.model.backend.torch_segmenter
    inst = seg.predict(rgb, depth, K)               # exported ONNX: learner.deploy.runtime.Segmenter.load
    inst.masks, inst.scores, inst.label_image(), inst.boxes(), inst.centroids()

A backend only runs the network: `run(x) -> heads` on the (1,8,H',W') input of
`learner.proposals.frame.make_input` (and, for MC dropout, with per-channel factors on the head
trunk). Everything else -- validation, resizing, the input, the proposal pipeline
(`learner.proposals.pipeline`), the samplers and the distributional modes (`learner.proposals.mask_sets`)
-- is this one code path for every caller.

Samplers (`SamplerConfig.method`, Latent-MaskRCNN Sec. IV):
- "tta" (default): test-time augmentation (`learner.proposals.tta`: flip / roll / zoom / shift with K
  updated consistently, RGB gain, depth noise), masks mapped back to the frame;
- "mc_dropout": Bernoulli(1 - rate) / (1 - rate) channel factors on the head trunk's output
  (F.dropout2d there), drawn from numpy with the sampler's seed, so torch and ONNX draw the same;
- "latent" (latent models): one network pass, every seed decoded with its own draw from the prior;
- "tta_latent": TTA views, each decoded with its own latent draws.
Sample 0 is the plain prediction (for TTA unless tta.include_identity is off). Why TTA is the
default: docs/benchmarks.md "Distributional hypotheses on val".

Modes (`predict_distributional`): "mean" = `predict`; "confidence": p-confidence masks, contained in
masks of >= ceil(k p) of k samples, disjoint (fewer double picks); "union": Union-NMS (high recall).

Frames: rgb (H, W, 3) uint8; depth (H, W) float metres or uint16 millimetres (0 / NaN = missing);
K (3, 3) pixels for this resolution. Results are at the frame's own resolution, (u, v) = (column, row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from learner.proposals.config import ProposalConfig
from learner.proposals.frame import InputSpec, check_inputs, make_input, resize_rgbd
from learner.proposals.mask_sets import ConfidenceConfig, MaskSet, confidence_masks, union_nms
from learner.proposals.pipeline import HeadSpec, interior_points, propose
from learner.proposals.tta import TTAConfig, make_transforms, sample_with_transforms

SAMPLERS = ("tta", "mc_dropout", "latent", "tta_latent")  # default first
MODES = ("mean", "confidence", "union")
Sample = tuple[np.ndarray, np.ndarray]  # (masks (n, H, W) bool, scores (n,) float32)


class ModelError(ValueError):
    """A model that cannot do what was asked (a missing graph, no latent code, a malformed export)."""


class Backend(Protocol):
    """What the pipeline needs from a network.

    input_size: the (H', W') the network runs at (frames are resized to it), or None: the frame's own
    size. spec / head: input normalisation and dynamic-head layout. latent_weight: (Kp, Z) of a latent
    model, else None. mc_shape: the shape of the trunk factors for MC dropout, or None (no MC graph)."""

    input_size: tuple[int, int] | None
    spec: InputSpec
    head: HeadSpec
    latent_weight: np.ndarray | None
    mc_shape: tuple[int, ...] | None

    def run(self, x: np.ndarray, trunk_scale: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Heads (objectness, features, kernels[, prior_logvar]) of input x (1,8,H',W') float32."""
        ...


@dataclass
class SamplerConfig:
    """How k hypothesis samples of one frame are drawn (see the module docstring).

    method: one of SAMPLERS. samples: k >= 1. seed: the same seed gives the same samples.
    tta: the TTA perturbations. dropout_rate: MC-dropout channel-drop probability in [0, 1)."""

    method: str = "tta"
    samples: int = 10
    seed: int = 0
    tta: TTAConfig = field(default_factory=TTAConfig)
    dropout_rate: float = 0.1

    def validate(self) -> SamplerConfig:
        if self.method not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.method!r}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int | np.integer) or self.samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {self.samples!r}")
        if not (isinstance(self.dropout_rate, int | float) and math.isfinite(float(self.dropout_rate))
                and 0.0 <= float(self.dropout_rate) < 1.0):
            raise ValueError(f"dropout_rate must lie in [0, 1), got {self.dropout_rate!r}")
        self.tta.validate()
        return self


@dataclass
class Instances:
    """Object hypotheses for one frame, at the frame's own resolution.

    masks (N,H,W) bool, scores (N,) float32 (sorted, highest first), points (N,2) float32 seed pixels
    (u,v). depth (H,W) float32 metres (0 = missing) and K (3,3) are the frame's, kept for the 3D
    helpers.
    """

    masks: np.ndarray
    scores: np.ndarray
    points: np.ndarray
    depth: np.ndarray | None = None
    K: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def areas(self) -> np.ndarray:
        """(N,) int64 pixel counts."""
        return self.masks.reshape(len(self), -1).sum(axis=1).astype(np.int64)

    def boxes(self) -> np.ndarray:
        """(N,4) int64 [x0, y0, x1, y1], half-open (mask[y0:y1, x0:x1] holds the whole mask);
        all zeros for an empty mask."""
        out = np.zeros((len(self), 4), np.int64)
        for i, m in enumerate(self.masks):
            cols = np.flatnonzero(m.any(axis=0))
            rows = np.flatnonzero(m.any(axis=1))
            if cols.size:
                out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        return out

    def label_image(self) -> np.ndarray:
        """(H,W) uint16: 0 = background, i + 1 = instance i. Where masks overlap, the higher score
        (lower id) wins."""
        H, W = self.image_size
        if len(self) > 65535:
            raise ValueError("more than 65535 instances do not fit a uint16 label image")
        lab = np.zeros((H, W), np.uint16)
        for i in range(len(self) - 1, -1, -1):
            lab[self.masks[i]] = i + 1
        return lab

    def centroids(self) -> np.ndarray:
        """(N,3) float64 mean camera-frame XYZ (OpenCV axes, metres) of each mask's pixels with valid
        depth (X = (u - cx) Z / fx, Y = (v - cy) Z / fy); NaN rows where a mask has no valid depth."""
        if self.depth is None or self.K is None:
            raise ValueError("centroids need the frame's depth and K (predict() stores them)")
        out = np.full((len(self), 3), np.nan)
        d = self.depth
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        for i, m in enumerate(self.masks):
            vv, uu = np.nonzero(m & (d > 0))
            if vv.size == 0:
                continue
            z = d[vv, uu].astype(np.float64)
            out[i] = (np.mean((uu - cx) * z / fx), np.mean((vv - cy) * z / fy), np.mean(z))
        return out

    def to_records(self) -> list[dict[str, Any]]:
        """JSON-ready per-instance dicts: id (label value), score, area, visible_area (pixels in the
        label image), bbox [x0,y0,x1,y1] half-open, centroid_m [x,y,z] or None, seed_uv."""
        areas, boxes = self.areas(), self.boxes()
        lab = self.label_image()
        vis = np.bincount(lab.ravel(), minlength=len(self) + 1)
        cents = self.centroids() if self.depth is not None and self.K is not None else None
        recs = []
        for i in range(len(self)):
            c = None if cents is None or not np.all(np.isfinite(cents[i])) else [float(x) for x in cents[i]]
            recs.append({
                "id": i + 1,
                "score": float(self.scores[i]),
                "area": int(areas[i]),
                "visible_area": int(vis[i + 1]),
                "bbox": [int(x) for x in boxes[i]],
                "centroid_m": c,
                "seed_uv": [float(self.points[i, 0]), float(self.points[i, 1])],
            })
        return recs



class Segmenter:
    """A network backend plus the one proposal pipeline. proposals: the default ProposalConfig
    (keyword overrides per call); version: the model version, if known."""

    def __init__(self, backend: Backend, proposals: ProposalConfig | None = None, version: int | None = None):
        self.backend = backend
        self.proposals = (proposals or ProposalConfig()).validate()
        self.model_version = version

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self.backend.input_size

    # ------------------------------------------------------------------ one pass
    def prepare(self, rgb: Any, depth: Any, K: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Validate and resize a frame -> (network input (1,8,H',W'), rgb, depth metres, K), the last
        three the validated frame at its own resolution. Raises InputError naming the problem."""
        rgb, depth_m, Km = check_inputs(rgb, depth, K)
        r, d, k = rgb, depth_m, Km
        size = self.backend.input_size
        if size is not None and tuple(size) != rgb.shape[:2]:
            r, d, k = resize_rgbd(rgb, depth_m, Km, size)
        return make_input(r, d, k, self.backend.spec), rgb, depth_m, Km

    def _instances(self, x: np.ndarray, heads: dict[str, np.ndarray], depth_m: np.ndarray, Km: np.ndarray,
                   cfg: ProposalConfig, latent_rng: np.random.Generator | None = None) -> Instances:
        latent = None
        if latent_rng is not None:
            if self.backend.latent_weight is None:
                raise ModelError("this model has no latent code (latent_dim = 0); use sampler 'tta' or 'mc_dropout'")
            latent = (self.backend.latent_weight, latent_rng)
        p = propose(heads, x, cfg, self.backend.head, self.backend.spec, depth_m.shape, latent, depth_m, Km)
        return Instances(p.masks, p.scores, p.points, depth_m, Km, {"num_seeds": p.num_seeds})

    def config(self, **overrides: Any) -> ProposalConfig:
        """The proposal parameters of one call (TypeError / ValueError naming a bad override)."""
        return self.proposals.replace(**overrides) if overrides else self.proposals

    def predict(self, rgb: Any, depth: Any, K: Any, **overrides: Any) -> Instances:
        """Object hypotheses for one frame at any resolution (see the module docstring); keyword
        overrides of the ProposalConfig fields."""
        cfg = self.config(**overrides)
        x, _, depth_m, Km = self.prepare(rgb, depth, K)
        return self._instances(x, self.backend.run(x), depth_m, Km, cfg)

    __call__ = predict

    # ------------------------------------------------------------------ samples
    def predict_samples(self, rgb: Any, depth: Any, K: Any, sampler: SamplerConfig | None = None,
                        **overrides: Any) -> list[Sample]:
        """k samples of hypotheses for one frame: [(masks (n, H, W) bool, scores (n,) float32)] in the
        frame's own pixels. The same (frame, sampler settings) give the same samples."""
        s = (sampler or SamplerConfig()).validate()
        cfg = self.config(**overrides)
        if s.method in ("latent", "tta_latent") and self.backend.latent_weight is None:
            raise ModelError(f"sampler {s.method!r}: this model has no latent code (trained with latent_dim = 0); "
                             "use sampler 'tta' or 'mc_dropout'")
        k = int(s.samples)
        if s.method == "latent":
            x, _, depth_m, Km = self.prepare(rgb, depth, K)
            heads = self.backend.run(x)
            rng = np.random.default_rng([int(s.seed), 2])
            return [self._sample(x, heads, depth_m, Km, cfg, None if i == 0 else rng) for i in range(k)]
        if s.method == "mc_dropout":
            shape = self.backend.mc_shape
            if shape is None:
                raise ModelError("this model has no MC-dropout graph; re-export it with "
                                 "`python -m learner.deploy export`, or use sampler 'tta'")
            x, _, depth_m, Km = self.prepare(rgb, depth, K)
            rng = np.random.default_rng([int(s.seed), 1])
            rate = float(s.dropout_rate)
            out = []
            for i in range(k):
                scale = None if i == 0 else ((rng.random(shape) >= rate) / np.float32(1.0 - rate)).astype(np.float32)
                out.append(self._sample(x, self.backend.run(x, scale), depth_m, Km, cfg))
            return out
        rgb_v, depth_m, Km = check_inputs(rgb, depth, K)
        transforms = make_transforms(k, s.tta, s.seed)
        lat_rng = np.random.default_rng([int(s.seed), 2]) if s.method == "tta_latent" else None

        views = iter(range(k))

        def view(r: np.ndarray, d: np.ndarray, kk: np.ndarray) -> Sample:
            i = next(views)
            x, _, dm, km = self.prepare(r, d, kk)
            g = None if (lat_rng is None or (i == 0 and transforms[0].is_identity)) else lat_rng
            return self._sample(x, self.backend.run(x), dm, km, cfg, g)

        return sample_with_transforms(view, rgb_v, depth_m, Km, transforms)

    def _sample(self, x, heads, depth_m, Km, cfg, latent_rng=None) -> Sample:
        inst = self._instances(x, heads, depth_m, Km, cfg, latent_rng)
        return inst.masks, inst.scores

    def predict_distributional(self, rgb: Any, depth: Any, K: Any, mode: str = "confidence", p: float = 0.9,
                               sampler: SamplerConfig | None = None, min_score: float = 0.1,
                               union_iou: float | None = None, **overrides: Any) -> Instances:
        """Distributional prediction for one frame (module docstring). mode "mean" = predict;
        "confidence": p-confidence masks (p in (0, 1]; masks scoring <= min_score dropped); "union":
        Union-NMS at IoU union_iou (default the config's nms_iou). Instances.points are each mask's
        most interior pixel; info carries mode, p, samples, required_agreement, seed and sampler."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "mean":
            return self.predict(rgb, depth, K, **overrides)
        ConfidenceConfig(p=p, min_score=min_score).validate()  # clear errors before any work
        s = (sampler or SamplerConfig()).validate()
        cfg = self.config(**overrides)
        smp = self.predict_samples(rgb, depth, K, s, **overrides)
        res = distributional(smp, mode, p, cfg, min_score, union_iou)
        _, depth_m, Km = check_inputs(rgb, depth, K)
        info = {"mode": mode, "p": float(p) if mode == "confidence" else None, "samples": int(s.samples),
                "required_agreement": int(res.required) if mode == "confidence" else None, "seed": int(s.seed),
                "sampler": s.method, "dropout_rate": float(s.dropout_rate) if s.method == "mc_dropout" else None}
        return Instances(res.masks, res.scores, interior_points(res.masks), depth_m, Km, info)


def distributional(samples: Sequence[Sample], mode: str, p: float, cfg: ProposalConfig, min_score: float = 0.1,
                   union_iou: float | None = None) -> MaskSet:
    """Samples -> p-confidence masks ("confidence") or Union-NMS masks ("union"), at most
    cfg.max_hypotheses, confidence masks of at least cfg.min_area pixels."""
    if mode == "confidence":
        c = ConfidenceConfig(p=p, min_score=min_score, min_area=max(int(cfg.min_area), 1), max_masks=cfg.max_hypotheses)
        return confidence_masks(samples, config=c)
    if mode == "union":
        return union_nms(samples, float(cfg.nms_iou) if union_iou is None else float(union_iou), cfg.max_hypotheses)
    raise ValueError(f"distributional mode must be 'confidence' or 'union', got {mode!r}")


def ensemble_samples(segmenters: Sequence[Segmenter], rgb: Any, depth: Any, K: Any, k: int,
                     tta: TTAConfig | None = None, **overrides: Any) -> list[Sample]:
    """k samples from several segmenters (a deep ensemble, e.g. training seeds): the k TTA views are
    split as evenly as possible, the first ones getting one more (segmenter j: its own views drawn
    with seed j, the identity view first)."""
    if not segmenters:
        raise ValueError("an ensemble needs at least one model")
    out: list[Sample] = []
    n = len(segmenters)
    for j, seg in enumerate(segmenters):
        kj = k // n + (1 if j < k % n else 0)
        if kj:
            out += seg.predict_samples(rgb, depth, K, SamplerConfig("tta", kj, j, tta or TTAConfig()), **overrides)
    return out
