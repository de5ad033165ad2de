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

Periodic checkpoints (`TrainConfig.checkpoint_every_s`, `--checkpoint-every`): while a retrain runs with a
`checkpoint_path`, the trainer checkpoint is saved atomically when the retrain starts and every that many
seconds, with the in-progress retrain (`"retrain"`: its start step, total steps, seconds so far and time
budget) and the RNG states; `model_version` is bumped only when a retrain completes. A killed retrain
resumes from its last checkpoint (`Trainer.load`, then `Trainer.resume_pending`, or `train` which finishes
it first) with its original schedule; metrics.jsonl "train" rows are buffered and written only after a
checkpoint covering them is saved, so resumed work never repeats rows.

Multi-process (torch DDP, learner/train/distributed.py):

    torchrun --standalone --nproc_per_node 2 -m learner.train -- --log RUN --out DIR --steps N

(the `--` keeps torchrun >= 2.3 from taking `--log` for an abbreviation of its own --log-dir/--logs-specs,
pytorch/pytorch#120601; without torchrun the arguments are as always). Each rank draws
`batch_size / world_size` images of every global batch from its own RNG stream (seed + rank), the whole
loss of a step is one DDP-wrapped forward (gradients averaged), rank 0 alone writes checkpoints (the plain
module's state dict, the same format) and metrics.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
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
from learner.train import distributed
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
    # seconds between periodic checkpoints while a retrain runs with a checkpoint path (0 = only at its
    # end); a killed retrain resumes from the last one (Trainer.resume_pending)
    checkpoint_every_s: float = 30.0

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
        if not (math.isfinite(self.checkpoint_every_s) and self.checkpoint_every_s >= 0):
            raise ValueError(f"checkpoint_every_s must be finite and >= 0, got {self.checkpoint_every_s}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")


@dataclass
class RetrainProgress:
    """An unfinished `Trainer.train` call (a retrain), as checkpointed under "retrain"."""

    start_step: int  # Trainer.step when the retrain began (its step k is Trainer.step - start_step)
    steps: int  # its total optimiser steps: the length of its LR and cascade schedules
    seconds: float = 0.0  # training seconds spent on it so far (counted against its time budget)
    time_budget_s: float = 0.0  # its time budget in seconds (0 = none)

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RetrainProgress:
        return cls(start_step=int(d["start_step"]), steps=int(d["steps"]), seconds=float(d.get("seconds", 0.0)),
                   time_budget_s=float(d.get("time_budget_s", 0.0)))


class _LossForward(torch.nn.Module):
    """The whole loss of a batch as one module call, for DDP: every use of the model in a step (its forward,
    `decode`, the latent posterior, the strong view's second forward) happens inside the one wrapped
    forward, so DDP's reducer sees the complete autograd graph of the loss."""

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.model = trainer.model
        self._loss_on = trainer.loss_on  # a bound method, not a submodule

    def forward(self, images: list[TrainImage], targets: TeacherTargets | None) -> tuple[torch.Tensor, dict[str, float]]:
        return self._loss_on(images, targets)


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
    """Owns the model, optimiser, RNGs and step counter; trains from a source; saves/resumes.

    Under torch DDP (a process group is up, learner/train/distributed.py) every rank builds the same initial
    weights (the same seed; DDP also broadcasts rank 0's at the start of each retrain) and then draws from
    its own streams: numpy `default_rng(seed + rank)`, torch reseeded with seed + rank."""

    def __init__(self, cfg: TrainConfig, model_cfg: SegmenterConfig | None = None, oracle: bool = False,
                 seed: int = 0):
        cfg.validate()
        self.cfg = cfg
        self.oracle = oracle
        self.seed = int(seed)
        self.dist = distributed.context()
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} (the global batch) must be divisible by the "
                             f"{self.dist.world_size} DDP processes")
        torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(self.seed)
        self.model: PointSegmenter = build_model(model_cfg or SegmenterConfig())
        if self.dist.enabled:
            torch.manual_seed(self.seed + self.dist.rank)  # per-rank jitter/latent noise; the weights above agree
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(self.seed + self.dist.rank)
        self.step = 0
        self.model_version = 0  # bumped by every completed retrain (train() / resume_pending())
        self.train_seconds = 0.0
        self.input_size: tuple[int, int] | None = None  # (H, W) pixels of the training images (checkpoint "input_size")
        self.pending: RetrainProgress | None = None  # the unfinished retrain (checkpoint "retrain"), None if none
        self._clock: float | None = None  # perf_counter() up to which train_seconds is counted, while training

    @property
    def pending_steps(self) -> int:
        """Optimiser steps left of an unfinished retrain (0 if none; a pending retrain may also have 0 left
        when killed after its last step: `pending` is not None then, and `resume_pending` completes it)."""
        if self.pending is None:
            return 0
        return max(self.pending.steps - (self.step - self.pending.start_step), 0)

    @property
    def local_batch_size(self) -> int:
        """Images this process draws per step: batch_size / world_size (the global batch is batch_size)."""
        return self.cfg.batch_size // self.dist.world_size

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
            # only while a retrain is unfinished (a completed one leaves the format as it was)
            **({"retrain": self.pending.to_dict()} if self.pending is not None else {}),
        }

    def save(self, path: str | Path) -> Path:
        """Atomic save (write then rename) so a crash never leaves a torn checkpoint. Under DDP this is a
        collective (every rank must call it): the ranks' RNG states are gathered into "rank_rng" (so each
        rank resumes its own stream) and rank 0 alone writes; every rank returns once the file is written."""
        path = Path(path)
        if self._clock is not None:
            self._account_time()
        state = self.state_dict()
        if self.dist.enabled:
            with torch.no_grad():  # the replicas' parameters must agree bit for bit (DDP's averaged gradients)
                fingerprint = float(sum(p.double().sum() for p in self.model.parameters()))
            states = distributed.all_gather_objects(
                (json.dumps(self.rng.bit_generator.state), torch.get_rng_state(), fingerprint))
            if len({f for _, _, f in states}) != 1:
                raise RuntimeError(f"DDP replicas out of sync at step {self.step}: parameter sums "
                                   f"{[f for _, _, f in states]} differ across ranks")
            state["rank_rng"] = {"numpy": json.dumps([s for s, _, _ in states]), "torch": [t for _, t, _ in states]}
        if self.dist.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            torch.save(state, tmp)
            os.replace(tmp, path)
        distributed.barrier()
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
            self._load_rank_rng(ckpt)
            self.pending = RetrainProgress.from_dict(ckpt["retrain"]) if ckpt.get("retrain") else None
        else:
            self.pending = None

    def _load_rank_rng(self, ckpt: dict[str, Any]) -> None:
        """Under DDP, this rank's own RNG streams: from the checkpoint's "rank_rng" when it was saved by as
        many ranks, else (a checkpoint of another world size) rank 0 keeps the saved stream and rank r > 0
        starts a fresh one seeded by (seed + r, step)."""
        if not self.dist.enabled:
            return
        r = self.dist.rank
        saved = ckpt.get("rank_rng")
        if saved is not None and len(saved["torch"]) == self.dist.world_size:
            self.rng.bit_generator.state = json.loads(json.loads(saved["numpy"])[r])
            torch.set_rng_state(saved["torch"][r])
        elif r > 0:
            self.rng = np.random.default_rng([self.seed + r, self.step])
            torch.manual_seed(self.seed + r + 7919 * self.step)

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
        self.pending = None
        self.model.eval()

    # ---------------------------------------------------------------- batches
    def _augment(self, img: TrainImage) -> TrainImage:
        if self.cfg.flip and self.rng.random() < 0.5:
            img = _flip(img)
        return img

    def sample_batch(self, source: LogSource | SceneSource) -> list[TrainImage]:
        """This process's `local_batch_size` images of a step (all of `batch_size` without DDP)."""
        cfg, rng = self.cfg, self.rng
        batch_size = self.local_batch_size
        images: list[TrainImage] = []
        if isinstance(source, SceneSource):
            for i in rng.integers(len(source), size=batch_size):
                images.append(source.image(int(i), rng, cfg.points_per_mask))
            return self._zoom([self._augment(im) for im in images])
        n_pseudo = int(round(batch_size * cfg.pseudo_fraction)) if cfg.pseudo_sequences else 0
        group = 0
        while len(images) < n_pseudo - 1:
            pair = source.pseudo_pair(rng, cfg.points_per_mask, group)
            if pair is None:
                break
            images += list(pair)
            group += 1
        while len(images) < batch_size:
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
        frames = [source.frame(int(i)) for i in idx]  # (rgb, depth, K), read lazily through the source's cache
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
        max_queries = math.ceil(cfg.max_queries / self.dist.world_size)  # this rank's share of the global cap
        if len(pts) > max_queries:
            keep = self.rng.choice(len(pts), max_queries, replace=False)
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
              progress: bool = True, time_budget_s: float | None = None, checkpoint_path: str | Path | None = None,
              checkpoint_every_s: float | None = None) -> dict[str, float]:
        """Run a retrain of `steps` optimiser steps, or until its time budget (`time_budget_s` seconds, default
        TrainConfig.time_budget_s, 0 = none) is spent. The learning-rate schedule (warm-up, cosine) and the
        consistency cascade's schedule run over these `steps`; `model_version` is bumped when it completes.

        checkpoint_path: the trainer checkpoint is saved there atomically when the retrain starts, every
        `checkpoint_every_s` seconds (default TrainConfig.checkpoint_every_s; 0 = neither of these two) and
        when it completes; a process killed in between resumes from the last one (`load`, then
        `resume_pending`). None: nothing is saved here (the caller saves after the call).

        An unfinished retrain restored by `load` (`pending`) is finished first, with its own schedule and
        budget (`resume_pending`: one version bump), then this call's `steps` run as a new retrain (another
        bump). Returns the new retrain's stats: "steps" run, "seconds", the last step's loss terms, plus
        "resumed_steps" when a pending retrain was finished first.

        metrics_path: "train" rows (every `log_every` steps and the last step) are buffered and appended
        after the checkpoint that covers them is saved (without `checkpoint_path`: at the end), so the rows of
        work a kill throws away are never written and resumed work never repeats them (a kill in the
        microseconds between a checkpoint's rename and its rows' append loses those rows instead). Under DDP
        a row's "loss" is the mean over the ranks ("rank0_loss" and the other terms are rank 0's, plus
        "world_size"); rank 0 alone writes rows. Under DDP every rank must call this (a collective)."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self._check_source(source)
        resumed = self.resume_pending(source, metrics_path, progress, checkpoint_path, checkpoint_every_s)
        budget = self.cfg.time_budget_s if time_budget_s is None else time_budget_s
        self.pending = RetrainProgress(start_step=self.step, steps=int(steps), time_budget_s=float(budget))
        stats = self._run_pending(source, metrics_path, progress, checkpoint_path, checkpoint_every_s)
        if resumed is not None:
            stats["resumed_steps"] = resumed["steps"]
        return stats

    def resume_pending(self, source: LogSource | SceneSource, metrics_path: str | Path | None = None,
                       progress: bool = True, checkpoint_path: str | Path | None = None,
                       checkpoint_every_s: float | None = None) -> dict[str, float] | None:
        """Finish the unfinished retrain a checkpoint held (`pending`, restored by `load`): its remaining
        `pending_steps` steps on the LR and cascade schedules of its original length, within what is left of
        its time budget, then bump `model_version` (also when 0 steps were left). Arguments as for `train`.
        Returns its stats ("steps" run now, "seconds", last losses), or None when nothing is pending."""
        if self.pending is None:
            return None
        self._check_source(source)
        return self._run_pending(source, metrics_path, progress, checkpoint_path, checkpoint_every_s)

    @staticmethod
    def _check_source(source: LogSource | SceneSource) -> None:
        if isinstance(source, LogSource) and not source.positives and not source.negatives:
            raise ValueError("the log has no usable records (no positives or negatives) to train on")

    def _account_time(self) -> None:
        """Add the training seconds since the last call to train_seconds and to the pending retrain."""
        now = time.perf_counter()
        if self._clock is not None:
            self.train_seconds += now - self._clock
            if self.pending is not None:
                self.pending.seconds += now - self._clock
        self._clock = now

    def _loss_forward(self) -> Any:
        """`loss_on`, or under DDP the DDP-wrapped `_LossForward` (built per retrain, so it wraps the current
        model; building it broadcasts rank 0's weights and buffers). find_unused_parameters=True: some
        parameters get no gradient in some steps (the mask decoder and latent posterior when a rank's batch
        holds no query, e.g. a zoom crop without a labelled mask), and the ranks' batches differ."""
        if not self.dist.enabled:
            return self.loss_on
        return torch.nn.parallel.DistributedDataParallel(_LossForward(self), find_unused_parameters=True)

    def _flush_rows(self, metrics_path: str | Path | None, rows: list[str]) -> None:
        if rows and metrics_path is not None and self.dist.is_main:
            with open(metrics_path, "a") as f:
                f.write("".join(r + "\n" for r in rows))
        rows.clear()

    def _run_pending(self, source: LogSource | SceneSource, metrics_path: str | Path | None, progress: bool,
                     checkpoint_path: str | Path | None, checkpoint_every_s: float | None) -> dict[str, float]:
        """Run `self.pending` from its current step to its end (see `train`)."""
        p = self.pending
        assert p is not None
        every = self.cfg.checkpoint_every_s if checkpoint_every_s is None else float(checkpoint_every_s)
        if not (math.isfinite(every) and every >= 0):
            raise ValueError(f"checkpoint_every_s must be finite and >= 0, got {every}")
        periodic = checkpoint_path is not None and every > 0
        rows: list[str] = []

        def checkpoint() -> None:
            self.save(checkpoint_path)  # type: ignore[arg-type]
            self._flush_rows(metrics_path, rows)

        forward = self._loss_forward()
        self.model.train()
        start = self.step
        done = self.step - p.start_step
        t0 = last_save = time.perf_counter()
        self._clock = t0
        last: dict[str, float] = {}
        bar = tqdm(total=p.steps, initial=min(done, p.steps), desc="train",
                   disable=not progress or not self.dist.is_main, leave=False)
        cascade = cascade_for(p.steps)
        try:
            if periodic and done == 0:
                checkpoint()  # on record from its start: a kill before the first periodic save does not skip it
            for k in range(done, p.steps):
                now = time.perf_counter()
                over = bool(p.time_budget_s) and p.seconds + now - self._clock > p.time_budget_s
                due = periodic and k > done and now - last_save >= every
                over, due = distributed.broadcast_flags([over, due])  # rank 0's clock decides for all
                if over:
                    break
                if due:
                    checkpoint()
                    last_save = time.perf_counter()
                for g in self.opt.param_groups:
                    g["lr"] = self._lr(k, p.steps)
                batch = self.sample_batch(source)
                teacher: dict[str, float] = {}
                targets = self.consistency_targets(source, k, cascade, teacher)
                loss, parts = forward(batch, targets)
                parts.update({f"teacher_{key}": v for key, v in teacher.items()})
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
                self.opt.step()
                self.step += 1
                last = {"loss": float(loss.detach()), **parts}
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}")
                if self.step % self.cfg.log_every == 0 or k == p.steps - 1:
                    rec = {"kind": "train", "step": self.step, "model_version": self.model_version,
                           "lr": self.opt.param_groups[0]["lr"],
                           "elapsed_s": p.seconds + time.perf_counter() - self._clock, **last,
                           "loss": distributed.mean_scalar(last["loss"])}  # every rank takes part
                    if self.dist.enabled:
                        rec.update(world_size=self.dist.world_size, rank0_loss=last["loss"])
                    rows.append(json.dumps(rec))
        finally:
            bar.close()
            self._account_time()
            self._clock = None
        self.model_version += 1
        self.pending = None
        self.model.eval()
        if checkpoint_path is not None:
            self.save(checkpoint_path)
        self._flush_rows(metrics_path, rows)
        return {"steps": self.step - start, "seconds": time.perf_counter() - t0, **last}


def log_source(path: str | Path, cfg: TrainConfig, limit: int | None = None,
               cache_mb: float | None = None) -> LogSource:
    """The self-supervised training source of a log (a .zarr, a run directory or its shards; its first `limit`
    records), as `cfg` asks for it. cache_mb: megabytes of decoded images it caches (None = LogSource's
    default). A learner that retrains repeatedly keeps the returned source and calls `source.update()`
    before each `Trainer.train`: only the records added since are read."""
    kw = {} if cache_mb is None else {"cache_mb": cache_mb}
    return LogSource(path, cfg.table_prior_height, limit=limit,
                     propagation=PropagationConfig() if cfg.propagate_labels else None, **kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--log", help="interaction log: a .zarr, a run directory (interactions.zarr and/or shards/) or a shards/ directory")
    src.add_argument("--oracle-scenes", help="ORACLE baseline: exported scenes with ground-truth labels")
    ap.add_argument("--out", required=True, help="checkpoint directory (resumes from its last.pt: an unfinished "
                    "run is finished with its original --steps schedule, a finished one trains --steps more)")
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
    ap.add_argument("--checkpoint-every", type=float, default=TrainConfig.checkpoint_every_s,
                    help="seconds between periodic checkpoints of a running retrain (0 = only at its end)")
    ap.add_argument("--log-every", type=int, default=TrainConfig.log_every, help="steps between metrics rows")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m learner.train -- --log RUN` (see the module docstring)
        argv = argv[1:]
    a = ap.parse_args(argv)
    cfg = TrainConfig(time_budget_s=a.time_budget, batch_size=a.batch_size, loss=a.loss, tau=a.tau,
                      pseudo_sequences=not a.no_pseudo, table_prior=not a.no_table_prior,
                      propagate_labels=not a.no_propagation,
                      mask_loss_stride=a.mask_loss_stride, num_threads=a.threads, kl_weight=a.kl_weight,
                      kl_free_nats=a.kl_free_nats, kl_balance=not a.no_kl_balance,
                      consistency_weight=a.consistency_weight, consistency_images=a.consistency_images,
                      consistency_queries=a.consistency_queries, zoom_prob=a.zoom_prob, zoom_max=a.zoom_max,
                      checkpoint_every_s=a.checkpoint_every, log_every=a.log_every)
    ctx = distributed.init_from_env()  # a no-op without torchrun
    try:
        return _train_cli(a, cfg, ctx)
    finally:
        distributed.teardown()


def _train_cli(a: argparse.Namespace, cfg: TrainConfig, ctx: distributed.DistContext) -> int:
    """The body of `main` (every rank runs it under torchrun; rank 0 alone prints and writes)."""
    def say(msg: str) -> None:
        if ctx.is_main:
            print(msg, flush=True)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, SegmenterConfig(latent_dim=a.latent_dim), oracle=a.oracle_scenes is not None, seed=a.seed)
    if ctx.enabled:
        say(f"DDP: {ctx.world_size} processes ({ctx.backend}), {trainer.local_batch_size} of the global batch of "
            f"{cfg.batch_size} images each")
    if (out / CHECKPOINT_NAME).exists():
        trainer.load(out / CHECKPOINT_NAME)
        say(f"resumed from {out / CHECKPOINT_NAME} at step {trainer.step}")
    if a.log:
        path = Path(a.log)  # a .zarr log, a run directory (its interactions.zarr and/or shards/) or a shards/ directory
        source = log_source(path, cfg, limit=a.limit)
        say(f"log {path}: {len(source.positives)} positives, {len(source.negatives)} negatives, "
              f"{source.n_known_masks} masks after propagation, {len(source.bank)} cut-outs in the instance bank")
    else:
        source = SceneSource(a.oracle_scenes)
        say(f"ORACLE baseline: {len(source)} ground-truth scenes from {a.oracle_scenes}")
    ckpt = out / CHECKPOINT_NAME
    run = {"metrics_path": out / "metrics.jsonl", "checkpoint_path": ckpt}  # train() saves the final checkpoint
    if trainer.pending is not None:
        p = trainer.pending
        say(f"finishing the interrupted run: {trainer.pending_steps} of its {p.steps} steps left "
            f"(its schedule; --steps {a.steps} is not used)")
        stats = trainer.resume_pending(source, **run)
        assert stats is not None
    else:
        stats = trainer.train(source, a.steps, **run)
    say(f"trained {stats['steps']} steps in {stats['seconds']:.0f} s (loss {stats.get('loss', float('nan')):.3f}); "
        f"checkpoint {ckpt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
