"""Train the point-conditioned segmenter.

    python -m learner.train --log RUN/interactions.zarr --out CKPT_DIR [--steps 400] [--seed 0] [--time-budget 600]
    python -m learner.train --oracle-scenes SCENES_DIR --out CKPT_DIR   # supervised ORACLE baseline

Self-supervised training (the method): every batch mixes
- interaction images: the logged before frame with its (pixel, noisy mask) and the masks propagated
  into it from other frames of the same table — BCE + Dice (`loss="bce_dice"`, the default chosen
  on val) or Pathak et al.'s robust set loss (`loss="robust"`, `tau`) on masks decoded at the
  interaction pixel and at a few more pixels inside each mask — or its (pixel, nothing moved) negative;
- RISE pseudo-sequences: cut-outs of good interaction masks pasted into logged frames (x1) and
  re-arranged (x2), supervised per pasted instance, plus the association loss between the instance
  embeddings of x1 and x2 (weight `association_weight`, RISE's lambda_3 = 0.05);
- objectness: positive inside labelled masks, negative at negative points and on the table plane
  (geometry from the robot's own depth and calibration, `table_prior`); everything else ignored;
- optionally (`consistency_weight` > 0, off by default) RISE weak/strong consistency on logged frames
  whose objects are mostly unlabelled: the model's own confident masks on a weak view supervise its
  masks on a strong view (learner/train/consistency.py `teacher_targets`).

Network inputs come from `learner.proposals.frame.make_input` (per image, numpy), the one input builder
that evaluation and deployment use too.

The ORACLE (`--oracle-scenes`) trains the same model on simulator ground-truth masks; it exists only
as an upper-bound baseline and is labelled as such in its checkpoint.

Checkpoints are plain dicts of tensors/ints/strings (state dicts, step, RNG states, configs), saved
with torch.save and loaded with `weights_only=True`. Training resumes from the checkpoint in `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.label_propagation import PropagationConfig
from learner.model.checkpoint import trained_size
from learner.model.network import (
    PointSegmenter,
    SegmenterConfig,
    build_model,
    instance_embeddings,
    sample_at_points,
)
from learner.proposals.frame import make_input, nearest_exact_index, resize_rgbd
from learner.train.consistency import (
    CascadeFilter,
    TeacherTargets,
    cascade_for,
    consistency_loss,
    teacher_targets,
)
from learner.train.data import LogSource, SceneSource, TrainImage
from learner.train.losses import (
    association_loss,
    bce_dice_loss,
    negative_point_loss,
    objectness_loss,
    robust_set_target,
)

CHECKPOINT_NAME = "last.pt"
DEFAULT_STEPS = 400  # the CLI's --steps (the interactive loop passes loop.train_steps)


@dataclass
class TrainConfig:
    """Optimisation and loss settings. The number of optimiser steps (of `batch_size` images) and the seed
    are not settings here: `Trainer(..., seed=)` and `Trainer.train(source, steps)` take them (the loop
    passes loop.seed and loop.train_steps, the CLI --seed and --steps)."""

    time_budget_s: float = 0.0  # stop early after this many seconds of training (0 = no limit)
    batch_size: int = 6
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    # "bce_dice" (the default: chosen on val, docs/benchmarks.md "Loss on val") or "robust" (Pathak's
    # robust set loss; with label-propagated masks of ~0.83 IoU it kept masks loose and lost AP50 and AP)
    loss: str = "bce_dice"
    tau: float = 0.9  # IoU the robust target must reach with the noisy mask (loss="robust"; 0.9 beat 0.7 on val)
    points_per_mask: int = 3
    pseudo_sequences: bool = True
    pseudo_fraction: float = 0.5  # share of each batch made of pseudo-sequence frames
    association_weight: float = 0.05
    objectness_weight: float = 1.0
    negative_radius_px: float = 8.0
    table_prior: bool = True
    propagate_labels: bool = True  # reuse masks in other frames of the same scene (data/label_propagation.py)
    table_prior_height: float = 0.004  # metres above the table plane still counted as table
    flip: bool = True
    # zoom: with probability zoom_prob a batch is a random crop of 1/s of every image (s uniform in
    # [1, zoom_max]) resized back, K updated (the same camera looking closer): objects appear up to
    # zoom_max times larger than the log shows them, as near cameras and large objects do in other cells
    zoom_prob: float = 0.5  # chosen on cross-domain val (docs/benchmarks.md "Training in the randomised twin, on cross-domain val")
    zoom_max: float = 2.0
    color_jitter: float = 0.15
    max_queries: int = 96  # decoded masks per batch (memory/time bound)
    mask_loss_stride: int = 4  # 4: mask loss at the mask head's resolution; 1: at full input resolution
    # latent models (SegmenterConfig.latent_dim > 0; Latent-MaskRCNN): masks are decoded with a sample of the
    # posterior q(z | image, query, mask), plus kl_weight * KL(q || prior) per query, the weight ramped up
    # linearly over the first kl_warmup_steps (KL warm-up); the posterior's KL is free below kl_free_nats
    # while the prior is always trained towards the posterior (see Trainer._posterior_sample)
    kl_weight: float = 0.1
    kl_warmup_steps: int = 200
    kl_free_nats: float = 1.0  # "free bits": the batch-mean KL is not penalised below this (against posterior collapse)
    kl_balance: bool = True  # also train the prior towards the posterior inside the free nats (else it learns only above)
    # RISE weak/strong consistency (learner/train/consistency.py; 0 = off): every step `consistency_images`
    # logged frames get a weak and a strong view; the current model without gradient (eval mode) is the
    # teacher on the weak view: seeds at its `consistency_queries` strongest objectness maxima, masks decoded
    # there, kept by the cascade filter (score threshold 0.5 -> 0.85 rising over each train() call, then the
    # quantile p_t = 0.995 (1 - t/T)); the student's masks decoded at the same points mapped into the strong
    # view learn the kept teacher masks (BCE + Dice, times consistency_weight)
    consistency_weight: float = 0.0
    consistency_images: int = 2
    consistency_queries: int = 4
    num_threads: int = 2
    log_every: int = 10

    def validate(self) -> None:
        if self.loss not in ("robust", "bce_dice"):
            raise ValueError(f"loss must be 'robust' or 'bce_dice', got {self.loss!r}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.mask_loss_stride not in (1, 4):
            raise ValueError(f"mask_loss_stride must be 1 or 4, got {self.mask_loss_stride}")
        if not 0.0 <= self.zoom_prob <= 1.0 or not self.zoom_max >= 1.0:
            raise ValueError(f"zoom_prob must be in [0, 1] and zoom_max >= 1, got {self.zoom_prob}, {self.zoom_max}")
        if not 0.0 <= self.pseudo_fraction <= 1.0:
            raise ValueError(f"pseudo_fraction must be in [0, 1], got {self.pseudo_fraction}")
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0) or self.kl_warmup_steps < 0:
            raise ValueError("kl_weight must be finite and >= 0 and kl_warmup_steps >= 0")
        if not (math.isfinite(self.kl_free_nats) and self.kl_free_nats >= 0):
            raise ValueError(f"kl_free_nats must be finite and >= 0, got {self.kl_free_nats}")
        if not (math.isfinite(self.consistency_weight) and self.consistency_weight >= 0):
            raise ValueError(f"consistency_weight must be finite and >= 0, got {self.consistency_weight}")
        if self.consistency_images < 1 or self.consistency_queries < 1:
            raise ValueError("consistency_images and consistency_queries must be >= 1")


@contextmanager
def frozen_batchnorm_stats(model: torch.nn.Module) -> Iterator[None]:
    """Forward passes inside keep every BatchNorm's running mean/variance unchanged (momentum 0); in
    train mode they still normalise with the batch's own statistics."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom


def _flip(img: TrainImage) -> TrainImage:
    """Horizontal mirror of an image and its labels (K mirrored too: a consistent mirrored scene)."""
    W = img.rgb.shape[1]
    K = img.K.copy()
    K[0, 2] = W - 1 - K[0, 2]

    def fu(p: np.ndarray) -> np.ndarray:
        q = p.copy()
        if len(q):
            q[:, 0] = W - 1 - q[:, 0]
        return q

    return TrainImage(
        img.rgb[:, ::-1].copy(), img.depth[:, ::-1].copy(), K,
        [m[:, ::-1].copy() for m in img.masks], [fu(p) for p in img.points], fu(img.negatives),
        None if img.table is None else img.table[:, ::-1].copy(), img.group, list(img.instance_ids),
    )


def zoom_crop(img: TrainImage, box: tuple[int, int, int, int]) -> TrainImage:
    """The crop box = (x0, y0, w, h) pixels of an image resized back to its own size (a closer camera:
    K in the pixel-centre convention, `learner.proposals.frame.resize_rgbd`); masks and the table nearest-
    exact like depth; points and negatives mapped, those leaving the image or their mask dropped, masks
    left without a point dropped (with their instance ids)."""
    H, W = img.rgb.shape[:2]
    x0, y0, w, h = box
    K = np.asarray(img.K, np.float64).copy()
    K[0, 2] -= x0
    K[1, 2] -= y0
    rgb, depth, K2 = resize_rgbd(img.rgb[y0:y0 + h, x0:x0 + w], img.depth[y0:y0 + h, x0:x0 + w], K, (H, W))
    rows, cols = nearest_exact_index(h, H), nearest_exact_index(w, W)

    def crop(m: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(m[y0:y0 + h, x0:x0 + w][rows][:, cols])

    sx, sy = W / w, H / h

    def move(p: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        if not len(p):
            return p
        q = np.stack([(p[:, 0] - x0 + 0.5) * sx - 0.5, (p[:, 1] - y0 + 0.5) * sy - 0.5], axis=1).astype(p.dtype)
        u, v = np.rint(q[:, 0]).astype(int), np.rint(q[:, 1]).astype(int)
        keep = (u >= 0) & (u < W) & (v >= 0) & (v < H)
        if mask is not None:
            keep[keep] = mask[v[keep], u[keep]]
        return q[keep]

    masks, points, ids = [], [], []
    for k, (m, p) in enumerate(zip(img.masks, img.points, strict=True)):
        m2 = crop(m)
        p2 = move(p, m2)
        if len(p2) and m2.any():
            masks.append(m2)
            points.append(p2)
            if k < len(img.instance_ids):
                ids.append(img.instance_ids[k])
    return TrainImage(rgb, depth, K2, masks, points, move(img.negatives, None),
                      None if img.table is None else crop(img.table), img.group,
                      ids if len(img.instance_ids) == len(img.masks) else list(img.instance_ids))


class Trainer:
    """Owns the model, optimiser, RNGs and step counter; trains from a source; saves/resumes."""

    def __init__(self, cfg: TrainConfig, model_cfg: SegmenterConfig | None = None, oracle: bool = False,
                 seed: int = 0):
        cfg.validate()
        self.cfg = cfg
        self.oracle = oracle
        self.seed = int(seed)
        torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(self.seed)
        self.model: PointSegmenter = build_model(model_cfg or SegmenterConfig())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(self.seed)
        self.step = 0
        self.model_version = 0  # bumped by every completed train() call
        self.train_seconds = 0.0
        self.input_size: tuple[int, int] | None = None  # (H, W) pixels of the training images (checkpoint "input_size")

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "model_config": self.model.config.to_dict(),
            "train_config": asdict(self.cfg),
            "seed": self.seed,
            "step": self.step,
            "model_version": self.model_version,
            "train_seconds": self.train_seconds,
            "input_size": list(self.input_size) if self.input_size else None,
            "oracle": self.oracle,
            "numpy_rng": json.dumps(self.rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
        }

    def save(self, path: str | Path) -> Path:
        """Atomic save (write then rename) so a crash never leaves a torn checkpoint."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    def load(self, path: str | Path, optimizer: bool = True) -> None:
        """Resume (or warm-start with optimizer=False) from a checkpoint saved by `save`."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if SegmenterConfig.from_dict(ckpt["model_config"]) != self.model.config:
            self.model = build_model(SegmenterConfig.from_dict(ckpt["model_config"]))
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.model.load_state_dict(ckpt["model"])
        self.input_size = trained_size(ckpt)
        if optimizer:
            self.opt.load_state_dict(ckpt["optimizer"])
            self.step = int(ckpt["step"])
            self.model_version = int(ckpt["model_version"])
            self.train_seconds = float(ckpt.get("train_seconds", 0.0))
            self.seed = int(ckpt.get("seed", self.seed))
            self.rng.bit_generator.state = json.loads(ckpt["numpy_rng"])
            torch.set_rng_state(ckpt["torch_rng"])

    def start_from(self, model: PointSegmenter, model_version: int = 1,
                   input_size: tuple[int, int] | None = None) -> None:
        """Initialise from a trained model (the loop's `learner.init`): its weights and architecture, a fresh
        optimiser, step 0, and `model_version` (1: a trained model, so the loop acts on its proposals);
        input_size: the (H, W) it was trained at."""
        self.model = model
        self.input_size = input_size
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.step = 0
        self.model_version = int(model_version)
        self.model.eval()

    # ---------------------------------------------------------------- batches
    def _augment(self, img: TrainImage) -> TrainImage:
        if self.cfg.flip and self.rng.random() < 0.5:
            img = _flip(img)
        return img

    def sample_batch(self, source: LogSource | SceneSource) -> list[TrainImage]:
        cfg, rng = self.cfg, self.rng
        images: list[TrainImage] = []
        if isinstance(source, SceneSource):
            for i in rng.integers(len(source), size=cfg.batch_size):
                images.append(source.image(int(i), rng, cfg.points_per_mask))
            return self._zoom([self._augment(im) for im in images])
        n_pseudo = int(round(cfg.batch_size * cfg.pseudo_fraction)) if cfg.pseudo_sequences else 0
        group = 0
        while len(images) < n_pseudo - 1:
            pair = source.pseudo_pair(rng, cfg.points_per_mask, group)
            if pair is None:
                break
            images += list(pair)
            group += 1
        while len(images) < cfg.batch_size:
            # half positives, half negatives when both exist (negatives are rarer in a healthy loop)
            pool = source.positives if (not source.negatives or rng.random() < 0.7) else source.negatives
            pool = pool or source.negatives
            images.append(source.interaction_image(int(rng.choice(pool)), rng, cfg.points_per_mask))
        if self.cfg.flip and self.rng.random() < 0.5:  # flip whole groups together (x1/x2 stay consistent)
            images = [_flip(im) for im in images]
        return self._zoom(images)

    def _zoom(self, images: list[TrainImage]) -> list[TrainImage]:
        """One random zoom crop for the whole batch (TrainConfig.zoom_prob / zoom_max; groups stay consistent).
        Draws from the trainer's RNG only when zoom is on."""
        cfg = self.cfg
        if cfg.zoom_prob <= 0 or cfg.zoom_max <= 1.0 or self.rng.random() >= cfg.zoom_prob:
            return images
        H, W = images[0].rgb.shape[:2]
        s = self.rng.uniform(1.0, cfg.zoom_max)
        w, h = max(int(round(W / s)), 8), max(int(round(H / s)), 8)
        x0, y0 = int(self.rng.integers(0, W - w + 1)), int(self.rng.integers(0, H - h + 1))
        return [zoom_crop(im, (x0, y0, w, h)) for im in images]

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness/contrast jitter of the normalised RGB channels (first 3)."""
        if self.cfg.color_jitter <= 0:
            return x
        B = x.shape[0]
        j = self.cfg.color_jitter
        gain = 1 + (torch.rand(B, 1, 1, 1) * 2 - 1) * j
        bias = (torch.rand(B, 3, 1, 1) * 2 - 1) * j
        x = x.clone()
        x[:, :3] = x[:, :3] * gain + bias
        return x

    def consistency_targets(self, source: LogSource | SceneSource, t: int, cascade: CascadeFilter,
                            info: dict[str, float] | None = None) -> TeacherTargets | None:
        """Teacher targets on `consistency_images` random logged frames (None when consistency is off, for
        the oracle's scenes, or when the teacher keeps nothing). Draws from the trainer's RNG only when on.
        `info` receives the teacher's seed and kept-mask counts (see `teacher_targets`)."""
        cfg = self.cfg
        if cfg.consistency_weight <= 0 or not isinstance(source, LogSource) or len(source) == 0:
            return None
        idx = self.rng.integers(len(source), size=cfg.consistency_images)
        frames = [(source.rgb[i], source.depth[i], source.K[i]) for i in idx]
        return teacher_targets(self.model, frames, self.rng, cascade, t, cfg.consistency_queries, info=info)

    # ---------------------------------------------------------------- one step
    def loss_on(self, images: list[TrainImage], targets: TeacherTargets | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one batch (and, with `targets`, the consistency term on their strong views)."""
        cfg = self.cfg
        H, W = images[0].rgb.shape[:2]
        self.input_size = (int(H), int(W))
        x = torch.from_numpy(np.concatenate([make_input(im.rgb, im.depth, im.K) for im in images]))
        out = self.model(self._jitter(x))
        terms: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}  # logged, not part of the loss

        # decoded masks
        bidx, pts, tgt = [], [], []
        for b, im in enumerate(images):
            for m, p in zip(im.masks, im.points, strict=True):
                for q in p:
                    bidx.append(b)
                    pts.append(q)
                    tgt.append(m)
        if len(pts) > cfg.max_queries:
            keep = self.rng.choice(len(pts), cfg.max_queries, replace=False)
            bidx, pts, tgt = [bidx[i] for i in keep], [pts[i] for i in keep], [tgt[i] for i in keep]
        if not pts and self.model.config.latent_dim > 0:
            stats["kl_nats"] = 0.0  # no query in this batch (e.g. a zoom crop without a labelled mask): no KL term
        if pts:
            full_res = cfg.mask_loss_stride == 1
            bt, pt = torch.tensor(bidx), torch.tensor(np.stack(pts))
            target = torch.from_numpy(np.stack(tgt))
            if not full_res:  # labels at the head's own stride-4 resolution: 16x cheaper, same information
                target = F.interpolate(target[:, None].float(), size=out["objectness"].shape[-2:], mode="area")[:, 0] >= 0.5
            z = None
            if self.model.config.latent_dim > 0:
                z, terms["kl"], stats["kl_nats"] = self._posterior_sample(out, bt, pt, target, (H, W))
            logits = self.model.decode(out, bt, pt, upsample=full_res, image_size=(H, W), latent_z=z)
            if cfg.loss == "robust":
                # Pathak's robust target (the closest set to the prediction with IoU >= tau), trained with
                # BCE plus Dice: objects cover < 1% of a 320x240 frame, and a per-pixel mean alone would
                # let an all-background mask look nearly perfect.
                target = robust_set_target(logits, target, cfg.tau)
            terms["mask"] = bce_dice_loss(logits, target)

        # objectness: positives inside masks, negatives at negative points and on the table plane
        pos = torch.from_numpy(np.stack([np.any(im.masks, axis=0) if im.masks else np.zeros((H, W), bool) for im in images]))
        neg = None
        if cfg.table_prior:
            neg = torch.from_numpy(np.stack([im.table if im.table is not None else np.zeros((H, W), bool) for im in images]))
            neg = neg & ~pos
        terms["objectness"] = cfg.objectness_weight * objectness_loss(out["objectness"], pos, neg)
        nb = [b for b, im in enumerate(images) for _ in range(len(im.negatives))]
        if nb:
            npts = torch.from_numpy(np.concatenate([im.negatives for im in images]).astype(np.float32))
            terms["negative"] = cfg.objectness_weight * negative_point_loss(
                out["objectness"], torch.tensor(nb), npts, cfg.negative_radius_px, (H, W))

        # RISE association between x1 and x2 instance embeddings
        if cfg.association_weight > 0:
            assoc = []
            groups = sorted({im.group for im in images if im.group >= 0})
            for g in groups:
                pair = [(b, im) for b, im in enumerate(images) if im.group == g]
                if len(pair) != 2 or not pair[0][1].masks or not pair[1][1].masks:
                    continue
                (b1, i1), (b2, i2) = pair
                e1 = instance_embeddings(out, torch.from_numpy(np.stack(i1.masks)), torch.full((len(i1.masks),), b1))
                e2 = instance_embeddings(out, torch.from_numpy(np.stack(i2.masks)), torch.full((len(i2.masks),), b2))
                matches = [(a, i2.instance_ids.index(iid)) for a, iid in enumerate(i1.instance_ids) if iid in i2.instance_ids]
                if matches:
                    assoc.append(association_loss(e1, e2, matches))
            if assoc:
                terms["association"] = cfg.association_weight * torch.stack(assoc).mean()

        if targets is not None:
            # the strong views are normalised with their own batch statistics but do not move BatchNorm's
            # running statistics: those serve inference (and the teacher) on clean frames
            with frozen_batchnorm_stats(self.model):
                strong = self.model(targets.strong_input)
            student = self.model.decode(strong, targets.batch_index, targets.points, upsample=False, image_size=(H, W))
            terms["consistency"] = cfg.consistency_weight * consistency_loss(
                student[:, None], targets.teacher_logits, targets.keep, targets.valid, targets.mask_threshold)

        total = sum(terms.values())
        return total, {**{k: float(v.detach()) for k, v in terms.items()}, **stats}

    def _posterior_sample(self, out: dict[str, torch.Tensor], bidx: torch.Tensor, pts: torch.Tensor,
                          target: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, float]:
        """z ~ q(z | image, query, target mask) (reparameterised), the KL loss term and the KL(q || prior) in
        nats (mean over queries, summed over the Z dimensions)."""
        mu_q, lv_q = self.model.posterior_params(out, bidx, pts, target, image_size)
        mu_p = sample_at_points(out["prior_mu"], bidx, pts, image_size)
        lv_p = sample_at_points(out["prior_logvar"], bidx, pts, image_size)
        z = mu_q + torch.exp(0.5 * lv_q) * torch.randn_like(mu_q)
        def kl(mq: torch.Tensor, lq: torch.Tensor, mp: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
            return 0.5 * (lp - lq + (torch.exp(lq) + (mq - mp) ** 2) * torch.exp(-lp) - 1.0).sum(1).mean()

        # KL balancing: the posterior pays only above the free nats; the prior always learns to cover the
        # posterior codes (otherwise free bits would also freeze the prior that test-time samples come from)
        ramp = min(1.0, (self.step + 1) / self.cfg.kl_warmup_steps) if self.cfg.kl_warmup_steps else 1.0
        if not self.cfg.kl_balance:  # plain free bits: below the free nats neither side gets a KL gradient
            kl_qp = kl(mu_q, lv_q, mu_p, lv_p)
            return z, self.cfg.kl_weight * ramp * torch.clamp(kl_qp, min=self.cfg.kl_free_nats), float(kl_qp.detach())
        kl_post = kl(mu_q, lv_q, mu_p.detach(), lv_p.detach())
        kl_prior = kl(mu_q.detach(), lv_q.detach(), mu_p, lv_p)
        term = self.cfg.kl_weight * ramp * (torch.clamp(kl_post, min=self.cfg.kl_free_nats) + kl_prior)
        return z, term, float(kl_post.detach())

    def _lr(self, step: int, total: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = min((step - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1), 1.0)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def train(self, source: LogSource | SceneSource, steps: int, metrics_path: str | Path | None = None,
              progress: bool = True, time_budget_s: float | None = None) -> dict[str, float]:
        """Run `steps` optimiser steps or until the time budget is spent. The learning-rate schedule (warm-up,
        cosine) and the consistency cascade's schedule run over these `steps`."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        budget = self.cfg.time_budget_s if time_budget_s is None else time_budget_s
        if isinstance(source, LogSource) and not source.positives and not source.negatives:
            raise ValueError("the log has no usable records (no positives or negatives) to train on")
        self.model.train()
        t0 = time.perf_counter()
        start = self.step
        last: dict[str, float] = {}
        bar = tqdm(total=steps, desc="train", disable=not progress, leave=False)
        mf = open(metrics_path, "a") if metrics_path else None
        cascade = cascade_for(steps)
        try:
            for k in range(steps):
                if budget and time.perf_counter() - t0 > budget:
                    break
                for g in self.opt.param_groups:
                    g["lr"] = self._lr(k, steps)
                batch = self.sample_batch(source)
                teacher: dict[str, float] = {}
                targets = self.consistency_targets(source, k, cascade, teacher)
                loss, parts = self.loss_on(batch, targets)
                parts.update({f"teacher_{key}": v for key, v in teacher.items()})
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
                self.opt.step()
                self.step += 1
                last = {"loss": float(loss.detach()), **parts}
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}")
                if mf and (self.step % self.cfg.log_every == 0 or k == steps - 1):
                    rec = {"kind": "train", "step": self.step, "model_version": self.model_version,
                           "lr": self.opt.param_groups[0]["lr"], "elapsed_s": time.perf_counter() - t0, **last}
                    mf.write(json.dumps(rec) + "\n")
                    mf.flush()
        finally:
            bar.close()
            if mf:
                mf.close()
        elapsed = time.perf_counter() - t0
        self.train_seconds += elapsed
        self.model_version += 1
        self.model.eval()
        return {"steps": self.step - start, "seconds": elapsed, **last}


def log_source(path: str | Path, cfg: TrainConfig, limit: int | None = None) -> LogSource:
    """The self-supervised training source of a log (its first `limit` records), as `cfg` asks for it."""
    return LogSource(path, cfg.table_prior_height, limit=limit,
                     propagation=PropagationConfig() if cfg.propagate_labels else None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--log", help="interaction log (a .zarr or a run directory holding interactions.zarr)")
    src.add_argument("--oracle-scenes", help="ORACLE baseline: exported scenes with ground-truth labels")
    ap.add_argument("--out", required=True, help="checkpoint directory (resumes from its last.pt)")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--limit", type=int, default=None, help="train on the log's first N records only")
    ap.add_argument("--time-budget", type=float, default=0.0, help="seconds (0 = none)")
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--loss", default=TrainConfig.loss, choices=["robust", "bce_dice"])
    ap.add_argument("--tau", type=float, default=TrainConfig.tau)
    ap.add_argument("--no-pseudo", action="store_true", help="ablation: no RISE pseudo-sequences")
    ap.add_argument("--no-table-prior", action="store_true")
    ap.add_argument("--no-propagation", action="store_true", help="ablation: each frame keeps only its own mask")
    ap.add_argument("--mask-loss-stride", type=int, default=TrainConfig.mask_loss_stride, choices=[1, 4])
    ap.add_argument("--threads", type=int, default=TrainConfig.num_threads)
    ap.add_argument("--zoom-prob", type=float, default=TrainConfig.zoom_prob,
                    help="share of batches that are a random zoom crop (objects up to --zoom-max times larger)")
    ap.add_argument("--zoom-max", type=float, default=TrainConfig.zoom_max)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latent-dim", type=int, default=SegmenterConfig.latent_dim,
                    help="Z of the per-query latent code (Latent-MaskRCNN; 0 = the plain network)")
    ap.add_argument("--kl-weight", type=float, default=TrainConfig.kl_weight)
    ap.add_argument("--kl-free-nats", type=float, default=TrainConfig.kl_free_nats)
    ap.add_argument("--no-kl-balance", action="store_true", help="plain free bits: no prior training inside the free nats")
    ap.add_argument("--consistency-weight", type=float, default=TrainConfig.consistency_weight,
                    help="RISE weak/strong consistency on logged frames (0 = off)")
    ap.add_argument("--consistency-images", type=int, default=TrainConfig.consistency_images)
    ap.add_argument("--consistency-queries", type=int, default=TrainConfig.consistency_queries)
    a = ap.parse_args(argv)
    cfg = TrainConfig(time_budget_s=a.time_budget, batch_size=a.batch_size, loss=a.loss, tau=a.tau,
                      pseudo_sequences=not a.no_pseudo, table_prior=not a.no_table_prior,
                      propagate_labels=not a.no_propagation,
                      mask_loss_stride=a.mask_loss_stride, num_threads=a.threads, kl_weight=a.kl_weight,
                      kl_free_nats=a.kl_free_nats, kl_balance=not a.no_kl_balance,
                      consistency_weight=a.consistency_weight, consistency_images=a.consistency_images,
                      consistency_queries=a.consistency_queries, zoom_prob=a.zoom_prob, zoom_max=a.zoom_max)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, SegmenterConfig(latent_dim=a.latent_dim), oracle=a.oracle_scenes is not None, seed=a.seed)
    if (out / CHECKPOINT_NAME).exists():
        trainer.load(out / CHECKPOINT_NAME)
        print(f"resumed from {out / CHECKPOINT_NAME} at step {trainer.step}")
    if a.log:
        path = Path(a.log)
        if (path / "interactions.zarr").exists():
            path = path / "interactions.zarr"
        source = log_source(path, cfg, limit=a.limit)
        print(f"log {path}: {len(source.positives)} positives, {len(source.negatives)} negatives, "
              f"{source.n_known_masks} masks after propagation, {len(source.bank)} cut-outs in the instance bank")
    else:
        source = SceneSource(a.oracle_scenes)
        print(f"ORACLE baseline: {len(source)} ground-truth scenes from {a.oracle_scenes}")
    stats = trainer.train(source, a.steps, metrics_path=out / "metrics.jsonl")
    ckpt = trainer.save(out / CHECKPOINT_NAME)
    print(f"trained {stats['steps']} steps in {stats['seconds']:.0f} s (loss {stats.get('loss', float('nan')):.3f}); "
          f"checkpoint {ckpt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
