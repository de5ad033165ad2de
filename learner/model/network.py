"""Point-conditioned class-agnostic segmenter (CondInst-style dynamic mask head).

One network pass gives, at stride 4:
  objectness  (B,1,h,w)  logit that the pixel belongs to *some* object,
  features    (B,D,h,w)  mask features F shared by all queries (also the instance embedding space),
  kernels     (B,K,h,w)  per-pixel parameters of a tiny MLP  (D+2) -> hidden -> 1.
The mask for a query pixel p is obtained by sampling the kernel at p and running that MLP on
[F(x), (x - p) / coord_scale] for every location x (batched over many points with einsum).
See docs/design.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from learner.proposals.frame import IN_CHANNELS


@dataclass
class SegmenterConfig:
    in_channels: int = IN_CHANNELS
    stem_width: int = 24  # stride 2
    widths: tuple[int, ...] = (32, 64, 128)  # strides 4, 8, 16
    depths: tuple[int, ...] = (1, 2, 2)  # residual blocks per stage (first one strided)
    fpn_width: int = 64
    head_width: int = 64
    head_convs: int = 1  # shared 3x3 convs on the stride-4 map before the 1x1 heads
    embed_dim: int = 16  # D, mask-feature / instance-embedding channels
    dyn_hidden: int = 8  # hidden units of the dynamic mask MLP
    coord_scale: float = 64.0  # relative coordinates are divided by this (input pixels)
    norm: str = "bn"  # "bn" (BatchNorm, fuses away at deploy) or "gn" (GroupNorm)
    objectness_prior: float = 0.1  # initial sigmoid(objectness)
    # Z of the per-query latent code (Latent-MaskRCNN; 0 = none, the plain network). See PointSegmenter and
    # docs/design.md "Latent code". Off by default: on val it gave no gain beyond seed-to-seed noise
    # (docs/benchmarks.md "Latent code on val")
    latent_dim: int = 0
    posterior_hidden: int = 32  # hidden units of the posterior encoder q(z | image, query, mask)
    extra: dict = field(default_factory=dict)  # free-form, stored with checkpoints

    @property
    def num_kernel_params(self) -> int:
        D, Hd = self.embed_dim, self.dyn_hidden
        return (D + 2) * Hd + Hd + Hd + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"], d["depths"] = list(self.widths), list(self.depths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SegmenterConfig:
        d = dict(d)
        d.setdefault("latent_dim", 0)  # checkpoints from before the latent code
        d.setdefault("posterior_hidden", 32)
        d["widths"], d["depths"] = tuple(d["widths"]), tuple(d["depths"])
        return cls(**d)


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(ch)
    if kind == "gn":
        groups = 8 if ch % 8 == 0 else (4 if ch % 4 == 0 else 1)
        return nn.GroupNorm(groups, ch)
    raise ValueError(f"unknown norm {kind!r}")


class ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, norm: str = "bn", act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
            _norm(norm, cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1, norm: str = "bn"):
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, 3, stride, norm)
        self.conv2 = ConvNormAct(cout, cout, 3, 1, norm, act=False)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = ConvNormAct(cin, cout, 1, stride, norm, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.short is None else self.short(x)
        return self.act(self.conv2(self.conv1(x)) + s)


def _upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class PointSegmenter(nn.Module):
    def __init__(self, config: SegmenterConfig | None = None):
        super().__init__()
        cfg = config or SegmenterConfig()
        self.config = cfg
        n = cfg.norm
        self.stem = ConvNormAct(cfg.in_channels, cfg.stem_width, 3, 2, n)
        stages = []
        cin = cfg.stem_width
        for w, dpt in zip(cfg.widths, cfg.depths, strict=True):
            blocks = [BasicBlock(cin, w, 2, n)] + [BasicBlock(w, w, 1, n) for _ in range(dpt - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.ModuleList(stages)
        fw = cfg.fpn_width
        self.lateral = nn.ModuleList([nn.Conv2d(w, fw, 1) for w in cfg.widths])
        # smoothing convs for every level except the coarsest
        self.smooth = nn.ModuleList([ConvNormAct(fw, fw, 3, 1, n) for _ in cfg.widths[:-1]])
        trunk: list[nn.Module] = []
        c = fw
        for _ in range(cfg.head_convs):
            trunk.append(ConvNormAct(c, cfg.head_width, 3, 1, n))
            c = cfg.head_width
        self.trunk = nn.Sequential(*trunk)
        self.obj_head = nn.Conv2d(c, 1, 1)
        self.feat_head = nn.Conv2d(c, cfg.embed_dim, 1)
        self.kernel_head = nn.Conv2d(c, cfg.num_kernel_params, 1)
        if cfg.latent_dim > 0:
            Z, D = cfg.latent_dim, cfg.embed_dim
            self.prior_head = nn.Conv2d(c, 2 * Z, 1)  # prior p(z | image, query): mean, log-variance
            self.latent_proj = nn.Linear(Z, cfg.num_kernel_params, bias=False)  # z -> dynamic-MLP offset
            # posterior q(z | image, query, mask): [mask-mean features, features at the query, prior mean,
            # mask geometry (log area, centroid offset, spread)] -> mean, log-variance
            self.posterior = nn.Sequential(
                nn.Linear(2 * D + Z + 5, cfg.posterior_hidden), nn.ReLU(), nn.Linear(cfg.posterior_hidden, 2 * Z))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # zero-init the last BN of every residual branch: blocks start as identity (stable, small data)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.conv2[1].weight)
        prior = float(self.config.objectness_prior)
        nn.init.normal_(self.obj_head.weight, std=0.01)
        nn.init.constant_(self.obj_head.bias, -torch.log(torch.tensor((1 - prior) / prior)).item())
        nn.init.normal_(self.feat_head.weight, std=0.05)
        # dynamic MLP: small point-dependent part on top of a random (bias) default MLP, so that
        # gradients reach both layers from the first step (all-zero kernels would be a saddle)
        nn.init.normal_(self.kernel_head.weight, std=0.01)
        D, Hd = self.config.embed_dim, self.config.dyn_hidden
        n1 = (D + 2) * Hd
        with torch.no_grad():
            b = self.kernel_head.bias
            b.zero_()
            b[:n1].normal_(0.0, (2.0 / (D + 2)) ** 0.5)
            b[n1 + Hd : n1 + 2 * Hd].normal_(0.0, (1.0 / Hd) ** 0.5)
        if self.config.latent_dim > 0:
            nn.init.normal_(self.prior_head.weight, std=0.01)
            nn.init.zeros_(self.prior_head.bias)  # N(0, 1) everywhere at the start
            nn.init.normal_(self.latent_proj.weight, std=0.1)  # large enough that codes matter from the start
            nn.init.zeros_(self.posterior[-1].weight)
            nn.init.zeros_(self.posterior[-1].bias)  # q = N(0, 1) = the initial prior: KL starts at 0

    # ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B,C,H,W) from learner.proposals.frame.make_input -> dict of stride-4 maps (see module doc)."""
        y = self.stem(x)
        feats = []
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        p = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            p = self.smooth[i](self.lateral[i](feats[i]) + _upsample_to(p, feats[i]))
        t = self.trunk(p)
        out = {
            "objectness": self.obj_head(t),
            "features": self.feat_head(t),
            "kernels": self.kernel_head(t),
        }
        if self.config.latent_dim > 0:
            Z = self.config.latent_dim
            prior = self.prior_head(t)
            mu = prior[:, :Z]
            # "kernels" are the prior-mean kernels (Latent-MaskRCNN Sec. IV-D): everything that decodes
            # without a latent (proposals, the deploy graph) gets the prior-mean prediction; the dynamic MLP
            # is linear in its parameters' inputs, so the offset W mu folds into the kernel map exactly
            out["kernels"] = out["kernels"] + F.conv2d(mu, self.latent_proj.weight[:, :, None, None])
            out["prior_mu"] = mu
            out["prior_logvar"] = prior[:, Z:].clamp(-8.0, 4.0)
            out["latent_weight"] = self.latent_proj.weight  # (Kp, Z)
        return out

    def posterior_params(
        self,
        out: dict[str, torch.Tensor],
        batch_index: torch.Tensor,
        points_uv: torch.Tensor,
        masks: torch.Tensor,
        image_size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z | image, query, target mask) for training: (mean (P,Z), log-variance (P,Z)).

        masks: (P,H,W) or (P,h,w) target masks (bool/float; area-downsampled to the stride-4 map);
        points_uv (P,2) query pixels (u,v) of the network input."""
        if self.config.latent_dim <= 0:
            raise ValueError("this model has no latent code (latent_dim = 0)")
        feats = out["features"]
        H, W = _input_size(out, image_size)
        h, w = feats.shape[-2:]
        m = masks.to(feats.dtype)
        if m.shape[-2:] != (h, w):
            m = F.interpolate(m.unsqueeze(1), size=(h, w), mode="area")[:, 0]
        area = m.sum(dim=(1, 2)).clamp(min=1e-3)
        b = batch_index.long()
        mean_f = torch.einsum("phw,pdhw->pd", m, feats[b]) / area[:, None]
        at_p = sample_at_points(feats, b, points_uv, (H, W))
        mu_p = sample_at_points(out["prior_mu"], b, points_uv, (H, W))
        u, v = grid_centres(h, w, H, W, device=feats.device, dtype=feats.dtype)
        s = float(self.config.coord_scale)
        cu = (m.sum(1) * u).sum(1) / area
        cv = (m.sum(2) * v).sum(1) / area
        su = ((m.sum(1) * (u - cu[:, None]) ** 2).sum(1) / area).sqrt()
        sv = ((m.sum(2) * (v - cv[:, None]) ** 2).sum(1) / area).sqrt()
        geom = torch.stack([torch.log(area * (H * W) / (h * w)) / 8.0, (cu - points_uv[:, 0]) / s,
                            (cv - points_uv[:, 1]) / s, su / s, sv / s], dim=1)
        q = self.posterior(torch.cat([mean_f, at_p, mu_p, geom.to(feats.dtype)], dim=1))
        Z = self.config.latent_dim
        return q[:, :Z], q[:, Z:].clamp(-8.0, 4.0)

    # ------------------------------------------------------------------------------------------
    def decode(
        self,
        out: dict[str, torch.Tensor],
        batch_index: torch.Tensor,
        points_uv: torch.Tensor,
        upsample: bool = True,
        image_size: tuple[int, int] | None = None,
        latent_z: torch.Tensor | None = None,
        latent_eps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mask logits for query points.

        out: forward() output; batch_index (P,) long; points_uv (P,2) (u,v) in input pixels.
        image_size: (H,W) of the network input; default 4x the stride-4 map (exact when H, W are
        multiples of 16, e.g. 240x320). Returns (P,H,W) logits if upsample else (P,h,w).
        latent_z / latent_eps: see `decode_masks` (default: the prior mean).
        """
        return decode_masks(out, batch_index, points_uv, self.config, upsample, image_size, latent_z, latent_eps)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ----------------------------------------------------------------------------------------------
# Dynamic mask decoding (pure functions: shared by training, proposals and deploy)
# ----------------------------------------------------------------------------------------------


def _input_size(out: dict[str, torch.Tensor], image_size: tuple[int, int] | None) -> tuple[int, int]:
    if image_size is not None:
        return int(image_size[0]), int(image_size[1])
    h, w = out["objectness"].shape[-2:]
    return 4 * h, 4 * w


def grid_centres(h: int, w: int, H: int, W: int, device=None, dtype=torch.float32):
    """Input-pixel coordinates (u (w,), v (h,)) of the centres of an (h,w) map covering (H,W)."""
    u = (torch.arange(w, device=device, dtype=dtype) + 0.5) * (W / w) - 0.5
    v = (torch.arange(h, device=device, dtype=dtype) + 0.5) * (H / h) - 0.5
    return u, v


def sample_at_points(
    maps: torch.Tensor, batch_index: torch.Tensor, points_uv: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """Bilinearly sample (B,C,h,w) maps at input-pixel points -> (P,C).

    Same convention as grid_sample(align_corners=False, padding_mode="border"), but gathers only the
    4 neighbours of each point (no (P,C,h,w) copy).
    """
    B, C, h, w = maps.shape
    H, W = image_size
    pu = ((points_uv[:, 0].to(maps.dtype) + 0.5) * (w / W) - 0.5).clamp(0, w - 1)
    pv = ((points_uv[:, 1].to(maps.dtype) + 0.5) * (h / H) - 0.5).clamp(0, h - 1)
    u0 = pu.floor().clamp(max=w - 1)
    v0 = pv.floor().clamp(max=h - 1)
    fu, fv = pu - u0, pv - v0
    u0l, v0l = u0.long(), v0.long()
    u1l, v1l = (u0l + 1).clamp(max=w - 1), (v0l + 1).clamp(max=h - 1)
    flat = maps.reshape(B, C, h * w)
    b = batch_index.long()

    def g(vv: torch.Tensor, uu: torch.Tensor) -> torch.Tensor:
        return flat[b, :, vv * w + uu]  # (P,C)

    fu, fv = fu.unsqueeze(1), fv.unsqueeze(1)
    return (
        g(v0l, u0l) * (1 - fu) * (1 - fv)
        + g(v0l, u1l) * fu * (1 - fv)
        + g(v1l, u0l) * (1 - fu) * fv
        + g(v1l, u1l) * fu * fv
    )


def decode_masks(
    out: dict[str, torch.Tensor],
    batch_index: torch.Tensor,
    points_uv: torch.Tensor,
    config: SegmenterConfig,
    upsample: bool = True,
    image_size: tuple[int, int] | None = None,
    latent_z: torch.Tensor | None = None,
    latent_eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask logits (P,H,W) (or (P,h,w) without upsample) for query points (P,2) (u,v) input pixels.

    Latent models (out has "prior_mu"): by default the prior-mean mask; latent_z (P,Z) decodes with
    that code (training: a posterior sample), latent_eps (P,Z) with the prior sample
    mu + sigma * eps at each query (test-time sampling)."""
    feats = out["features"]
    kernels = out["kernels"]
    B, D, h, w = feats.shape
    H, W = _input_size(out, image_size)
    P = points_uv.shape[0]
    Hd = config.dyn_hidden
    if P == 0:
        size = (H, W) if upsample else (h, w)
        return feats.new_zeros((0, *size))
    points_uv = points_uv.to(feats.dtype)
    params = sample_at_points(kernels, batch_index, points_uv, (H, W))  # (P,K), prior-mean kernels
    if "prior_mu" in out and (latent_z is not None or latent_eps is not None):
        mu = sample_at_points(out["prior_mu"], batch_index, points_uv, (H, W))
        if latent_z is None:
            logvar = sample_at_points(out["prior_logvar"], batch_index, points_uv, (H, W))
            latent_z = mu + torch.exp(0.5 * logvar) * latent_eps.to(mu.dtype)
        params = params + (latent_z.to(mu.dtype) - mu) @ out["latent_weight"].t()
    n1 = (D + 2) * Hd
    w1 = params[:, :n1].reshape(P, Hd, D + 2)
    b1 = params[:, n1 : n1 + Hd]
    w2 = params[:, n1 + Hd : n1 + 2 * Hd]
    b2 = params[:, n1 + 2 * Hd]

    u, v = grid_centres(h, w, H, W, device=feats.device, dtype=feats.dtype)
    s = float(config.coord_scale)
    du = (u.view(1, 1, w) - points_uv[:, 0].view(P, 1, 1)) / s  # (P,1,w)
    dv = (v.view(1, h, 1) - points_uv[:, 1].view(P, 1, 1)) / s  # (P,h,1)

    fb = feats[batch_index.long()] if B > 1 else feats.expand(P, D, h, w)
    hid = torch.einsum("pkd,pdhw->pkhw", w1[:, :, :D], fb)
    hid = (
        hid
        + w1[:, :, D].view(P, Hd, 1, 1) * du.unsqueeze(1)
        + w1[:, :, D + 1].view(P, Hd, 1, 1) * dv.unsqueeze(1)
        + b1.view(P, Hd, 1, 1)
    )
    hid = F.relu(hid)
    logits = torch.einsum("pk,pkhw->phw", w2, hid) + b2.view(P, 1, 1)
    if upsample and (h, w) != (H, W):
        logits = F.interpolate(logits.unsqueeze(1), size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    return logits


def instance_embeddings(
    out: dict[str, torch.Tensor],
    masks: torch.Tensor,
    batch_index: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Mask-averaged mask features, L2-normalised: (N,D).

    masks: (N,H,W) bool/float at input resolution or at the feature resolution (area-downsampled
    to the feature map as soft weights). batch_index (N,) defaults to image 0.
    """
    feats = out["features"]
    B, D, h, w = feats.shape
    N = masks.shape[0]
    if batch_index is None:
        batch_index = torch.zeros(N, dtype=torch.long, device=feats.device)
    m = masks.to(feats.dtype)
    if m.shape[-2:] != (h, w):
        m = F.interpolate(m.unsqueeze(1), size=(h, w), mode="area")[:, 0]
    fb = feats[batch_index.long()]  # (N,D,h,w)
    s = torch.einsum("nhw,ndhw->nd", m, fb) / (m.sum(dim=(1, 2)).unsqueeze(1) + eps)
    return F.normalize(s, dim=1, eps=eps)


def build_model(config: SegmenterConfig | dict | None = None) -> PointSegmenter:
    if isinstance(config, dict):
        config = SegmenterConfig.from_dict(config)
    return PointSegmenter(config)


def benchmark(
    config: SegmenterConfig | None = None,
    size_hw: tuple[int, int] = (240, 320),
    batch: int = 8,
    points_per_image: int = 8,
    threads: int = 2,
    repeats: int = 5,
) -> dict[str, float]:
    """CPU throughput (images/s) of forward (batch 1 and `batch`, eval) and of a training step
    (forward + decode `points_per_image` masks at input resolution + backward + Adam, train mode).
    Reports the best of `repeats` timings (robust against other processes on a shared machine)."""
    import time

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = PointSegmenter(config)
    H, W = size_hw
    x1 = torch.randn(1, model.config.in_channels, H, W)
    xb = torch.randn(batch, model.config.in_channels, H, W)
    P = batch * points_per_image
    bi = torch.arange(batch).repeat_interleave(points_per_image)
    pts = torch.rand(P, 2) * torch.tensor([W - 1.0, H - 1.0])

    def best(fn, n: int) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            times.append((time.perf_counter() - t) / n)
        return min(times)

    model.eval()
    with torch.inference_mode():
        t1 = best(lambda: model(x1), 10)
        tb = best(lambda: model(xb), 2)
    model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def step() -> None:
        out = model(xb)
        loss = model.decode(out, bi, pts).mean() + out["objectness"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    tt = best(step, 1)
    return {
        "params": float(model.num_parameters()),
        "fwd_b1_img_s": 1 / t1,
        f"fwd_b{batch}_img_s": batch / tb,
        f"train_b{batch}_img_s": batch / tt,
    }
