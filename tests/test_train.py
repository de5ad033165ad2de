"""The trainer on a tiny real log recorded in the sim twin: loss goes down, checkpoints round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.log import InteractionLog
from data.schema import Label
from learner.loop.agent import Agent, AgentConfig
from learner.loop.record import build_record
from learner.model.network import SegmenterConfig
from learner.proposals.frame import IN_CHANNELS
from learner.train.data import LogSource
from learner.train.trainer import TrainConfig, Trainer
from robot.sim_robot import SimRobot, SimRobotConfig

TINY = SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16)


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "interactions.zarr"
    agent = Agent(AgentConfig(exploration=1.0), np.random.default_rng(0))
    with InteractionLog.create(path, 240, 320) as log, SimRobot(SimRobotConfig(clutter="sparse", seed=3)) as robot:
        for _ in range(12):
            before = robot.get_observation()
            action, chosen, _ = agent.choose(before, np.zeros((0, 240, 320), bool), np.zeros(0))
            outcome = robot.send_action(action)
            log.append(build_record(before, robot.get_observation(), action, outcome, chosen_hypothesis=chosen,
                                    table_bounds=robot.table_bounds))
    return path


def test_log_source_reads_committed_records(tiny_log):
    src = LogSource(tiny_log)
    with InteractionLog.open(tiny_log, "r") as log:
        labels = log.read_field("label")
    assert len(src.positives) == int((labels == Label.POSITIVE).sum())
    assert len(src.negatives) == int((labels == Label.NEGATIVE).sum())
    assert len(src.positives) >= 6, "cold-start targets should mostly hit objects"
    assert len(src.bank) >= 2


def test_log_source_propagates_masks_within_a_scene(tiny_log):
    from data.label_propagation import PropagationConfig

    plain, prop = LogSource(tiny_log), LogSource(tiny_log, propagation=PropagationConfig())
    assert plain.n_known_masks == len(plain.positives)
    # 12 interactions on one sparse table: resting objects' masks carry over to other frames
    assert prop.n_known_masks > plain.n_known_masks
    rng = np.random.default_rng(0)
    for i in range(len(prop)):
        assert (i in prop.known[i]) == (prop.mask[i] is not None)
        img = prop.interaction_image(i, rng, points_per_mask=2)
        assert len(img.masks) == len(prop.known[i]) == len(img.points)
        assert (len(img.negatives) == 1) == (prop.mask[i] is None and not prop.negative_on_known_object(i))


def test_nothing_moved_on_a_known_object_is_not_a_negative(tiny_log):
    """A failed grasp on an object whose mask is known in that frame must not teach 'no object here'."""
    src = LogSource(tiny_log)
    i, s = src.positives[:2]
    src.mask[i], src.known[i] = None, []  # record i becomes a "nothing moved" record
    rng = np.random.default_rng(0)
    assert len(src.interaction_image(i, rng, 2).negatives) == 1
    vs, us = np.nonzero(src.mask[s])
    src.known[i] = [s]  # as if propagation had carried record s's mask into frame i
    src.pixel[i] = np.array([us[0], vs[0]], np.float32)  # ... and the robot touched that object
    img = src.interaction_image(i, rng, 2)
    assert len(img.negatives) == 0 and len(img.masks) == 1
    src.pixel[i] = np.array([0, 0], np.float32) if not src.mask[s][0, 0] else np.array([319, 239], np.float32)
    assert len(src.interaction_image(i, rng, 2).negatives) == 1


@pytest.mark.parametrize("loss", ["robust", "bce_dice"])
def test_a_few_steps_lower_the_loss(tiny_log, loss):
    cfg = TrainConfig(batch_size=3, lr=3e-3, loss=loss, max_queries=24, warmup_steps=2)
    tr = Trainer(cfg, TINY, seed=1)
    src = LogSource(tiny_log)
    fixed = tr.sample_batch(src)
    tr.model.train()
    with torch.no_grad():
        before, _ = tr.loss_on(fixed)
    tr.cfg.color_jitter = 0.0
    tr.train(src, 20, progress=False)
    tr.model.train()
    with torch.no_grad():
        after, parts = tr.loss_on(fixed)
    assert float(after) < 0.8 * float(before), (float(before), float(after), parts)


def test_checkpoint_round_trip_and_resume(tiny_log, tmp_path):
    cfg = TrainConfig(batch_size=2, max_queries=8)
    a = Trainer(cfg, TINY, seed=2)
    src = LogSource(tiny_log)
    a.train(src, 3, progress=False)
    path = a.save(tmp_path / "ckpt" / "last.pt")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and primitives only
    assert ckpt["step"] == 3 and ckpt["model_version"] == 1
    b = Trainer(TrainConfig(batch_size=2, max_queries=8), TINY, seed=99)
    b.load(path)
    x = torch.randn(1, IN_CHANNELS, 64, 96)
    a.model.eval()
    b.model.eval()
    with torch.no_grad():
        oa, ob = a.model(x), b.model(x)
    for k in oa:
        torch.testing.assert_close(oa[k], ob[k])
    assert b.step == 3 and b.rng.bit_generator.state == a.rng.bit_generator.state  # RNG state resumes too
    assert b.seed == 2 and ckpt["seed"] == 2
    # both continue identically (the torch RNG is process-global: each run starts from the checkpoint's)
    torch.set_rng_state(ckpt["torch_rng"])
    a.train(src, steps=2, progress=False)
    b.load(path)
    b.train(src, steps=2, progress=False)
    for (ka, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        if va.dtype.is_floating_point:
            torch.testing.assert_close(va, vb, msg=ka)


def test_bad_train_config_is_rejected():
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="mse").validate()
    with pytest.raises(ValueError, match="tau"):
        TrainConfig(tau=0.0).validate()


def test_train_cli_trains_and_resumes(tiny_log, tmp_path, capsys):
    from learner.train.trainer import main

    out = tmp_path / "ck"
    args = ["--log", str(tiny_log), "--out", str(out), "--steps", "2", "--seed", "3", "--batch-size", "2", "--threads", "1"]
    assert main(args) == 0
    first = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert first["step"] == 2 and first["seed"] == 3 and "steps" not in first["train_config"]
    assert main(args) == 0
    assert "resumed from" in capsys.readouterr().out
    assert torch.load(out / "last.pt", map_location="cpu", weights_only=True)["step"] == 4
    assert (out / "metrics.jsonl").read_text().count('"kind": "train"') >= 2


def test_latent_model_trains_with_a_posterior_and_a_kl_term(tiny_log, tmp_path):
    cfg = TrainConfig(batch_size=3, lr=3e-3, max_queries=24, warmup_steps=2, kl_warmup_steps=5)
    latent = SegmenterConfig(**{**TINY.to_dict(), "widths": TINY.widths, "depths": TINY.depths, "latent_dim": 4})
    tr = Trainer(cfg, latent, seed=1)
    src = LogSource(tiny_log)
    fixed = tr.sample_batch(src)
    tr.model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        before, parts0 = tr.loss_on(fixed)
    assert "kl" in parts0 and parts0["kl"] >= 0.0
    tr.cfg.color_jitter = 0.0
    tr.train(src, 20, progress=False)
    tr.model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        after, parts = tr.loss_on(fixed)
    assert float(after) < 0.8 * float(before), (float(before), float(after), parts)
    assert np.isfinite(parts["kl"]) and parts["kl"] >= 0.0
    # the posterior got gradients: it is no longer the all-zero initialisation
    assert float(tr.model.posterior[-1].weight.detach().abs().sum()) > 0
    tr.save(tmp_path / "last.pt")
    tr2 = Trainer(cfg, TINY)
    tr2.load(tmp_path / "last.pt")
    assert tr2.model.config.latent_dim == 4
    with pytest.raises(ValueError, match="kl_weight"):
        TrainConfig(kl_weight=-1.0).validate()


def _weights(tr: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tr.model.state_dict().items()}


def test_consistency_on_changes_the_loss_and_the_weights_off_changes_nothing(tiny_log, tmp_path):
    """RISE weak/strong consistency (TrainConfig.consistency_weight): off, its other settings are inert (same
    weights and RNG state); on, the teacher's kept masks add a loss term whose gradient moves the weights."""
    src = LogSource(tiny_log)
    base = dict(batch_size=2, max_queries=8, warmup_steps=1, lr=3e-3, log_every=1)
    off = Trainer(TrainConfig(**base), TINY, seed=4)
    off_other = Trainer(TrainConfig(**base, consistency_images=3, consistency_queries=7), TINY, seed=4)
    on = Trainer(TrainConfig(**base), TINY, seed=4)
    for tr in (off, off_other, on):  # identical warm-up without consistency: a teacher with some objectness
        torch.manual_seed(5)  # the colour jitter draws from the process-global torch RNG
        tr.train(src, 6, progress=False)
    w_off = _weights(off)
    for k, v in _weights(on).items():
        torch.testing.assert_close(v, w_off[k], rtol=0, atol=0, msg=k)
    for k, v in _weights(off_other).items():
        torch.testing.assert_close(v, w_off[k], rtol=0, atol=0, msg=k)
    assert off_other.rng.bit_generator.state == off.rng.bit_generator.state

    # a few real steps with it on, from the same state: the term is in the step records, the weights differ
    import json

    on.cfg.consistency_weight = 1.0
    torch.manual_seed(6)
    on.train(src, 4, progress=False, metrics_path=tmp_path / "on.jsonl")
    torch.manual_seed(6)
    off.train(src, 4, progress=False)
    w_on, w_off = _weights(on), _weights(off)
    assert any(not torch.equal(w_on[k], w_off[k]) for k in w_on if w_on[k].dtype.is_floating_point)
    recs = [json.loads(line) for line in (tmp_path / "on.jsonl").read_text().splitlines()]
    assert all(r["teacher_seeds"] > 0 for r in recs) and any(r.get("consistency", 0) > 0 for r in recs), recs

    # one batch and the teacher's targets on it: the consistency term is the whole difference of the loss,
    # and its gradient reaches the weights
    from learner.train.consistency import cascade_for

    cascade = cascade_for(10)
    targets, info = None, {}
    for _ in range(10):  # the cascade keeps each frame's best mask at step 0 if it is non-empty
        targets = on.consistency_targets(src, 0, cascade, info)
        if targets is not None:
            break
    assert targets is not None, info
    assert info["seeds"] >= info["kept"] == len(targets.points) >= 1
    batch = on.sample_batch(src)
    on.model.train()
    torch.manual_seed(0)
    plain, parts0 = on.loss_on(batch)
    torch.manual_seed(0)
    with_c, parts = on.loss_on(batch, targets)
    assert "consistency" not in parts0 and parts["consistency"] > 0
    assert float(with_c.detach()) == pytest.approx(float(plain.detach()) + parts["consistency"], rel=1e-4)
    on.model.zero_grad()
    with_c.backward()
    assert float(on.model.kernel_head.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="consistency_weight"):
        TrainConfig(consistency_weight=-1.0).validate()


def test_train_cli_consistency_flag(tiny_log, tmp_path):
    import json

    from learner.train.trainer import main

    out = tmp_path / "ck"
    assert main(["--log", str(tiny_log), "--out", str(out), "--steps", "2", "--batch-size", "2", "--threads", "1",
                 "--consistency-weight", "0.5", "--consistency-queries", "2"]) == 0
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["train_config"]["consistency_weight"] == 0.5 and ckpt["train_config"]["consistency_queries"] == 2
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs and all("teacher_seeds" in r for r in recs)


def test_zoom_crop_keeps_the_scene_consistent(tiny_log):
    """A zoom crop is the same scene seen closer: every mask pixel's deprojected point is unchanged, points
    stay inside their masks, and a zoomed batch trains (finite loss)."""
    from learner.train.trainer import zoom_crop

    def ray(u: float, v: float, K: np.ndarray) -> np.ndarray:  # camera-frame direction of a pixel (z = 1)
        return np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0])

    src = LogSource(tiny_log, 0.004)
    img = src.interaction_image(int(src.positives[0]), np.random.default_rng(0), 3)
    H, W = img.rgb.shape[:2]
    box = (W // 4, H // 4, W // 2, H // 2)
    z = zoom_crop(img, box)
    assert z.rgb.shape == img.rgb.shape and z.depth.shape == img.depth.shape
    assert z.K[0, 0] == pytest.approx(2 * img.K[0, 0]) and z.K[1, 1] == pytest.approx(2 * img.K[1, 1])
    # pixel (u, v) of the zoomed image shows what pixel ((u + 0.5) / 2 - 0.5 + x0, ...) showed
    vv, uu = np.nonzero(z.depth > 0)
    pick = np.random.default_rng(1).choice(len(vv), 50, replace=False)
    for u, v in zip(uu[pick], vv[pick], strict=True):
        u0, v0 = (u + 0.5) / 2 - 0.5 + box[0], (v + 0.5) / 2 - 0.5 + box[1]
        assert np.allclose(ray(u, v, z.K), ray(u0, v0, img.K), atol=1e-9)
    for m, p in zip(z.masks, z.points, strict=True):
        assert len(p) and m[np.rint(p[:, 1]).astype(int), np.rint(p[:, 0]).astype(int)].all()
    tr = Trainer(TrainConfig(zoom_prob=1.0, pseudo_sequences=False), TINY, seed=0)
    batch = tr.sample_batch(src)
    assert all(b.K[0, 0] > img.K[0, 0] for b in batch)  # every image of the batch zoomed in
    loss, _ = tr.loss_on(batch)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="zoom_prob"):
        Trainer(TrainConfig(zoom_prob=1.5), TINY)
