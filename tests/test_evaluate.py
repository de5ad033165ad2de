"""learner.evaluate on exported sim scenes, and the random-hypotheses baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data.log import InteractionLog
from learner.evaluate.baselines import get_baseline
from learner.evaluate.cli import main
from learner.model.checkpoint import load_model
from learner.model.network import SegmenterConfig
from learner.train.trainer import TrainConfig, Trainer
from sim.export_scenes import export_scenes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    d = tmp_path_factory.mktemp("scenes") / "test"
    export_scenes(d, "test", 2, progress=False)
    return d


def test_evaluate_checkpoint_writes_report(scenes, tmp_path):
    tr = Trainer(TrainConfig(), SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16))
    ckpt = tr.save(tmp_path / "run" / "checkpoints" / "last.pt")
    model, meta = load_model(tmp_path / "run")  # a run directory resolves to its checkpoint
    assert meta["step"] == 0 and not model.training
    assert main(["--model", str(ckpt), "--scenes", str(scenes), "--out", str(tmp_path / "rep"), "--no-double-pick"]) == 0
    rep = json.loads((tmp_path / "rep.json").read_text())
    for k in ("AP", "AP50", "AP75", "AP30", "AR100", "overlap_F", "boundary_F", "obj_detected_075_percentage"):
        assert 0.0 <= rep[k] <= 1.0
    assert rep["n_scenes"] == 2


def test_evaluate_an_onnx_export_gives_the_checkpoints_figures(scenes, tmp_path):
    """The torch checkpoint and its ONNX export go through the one proposal pipeline: same report;
    a proposal option given on the command line overrides the card's value."""
    import torch

    from learner.deploy.export import export

    torch.manual_seed(0)
    tr = Trainer(TrainConfig(), SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16))
    with torch.no_grad():
        tr.model.obj_head.bias.fill_(1.0)  # a random net that proposes something
    ckpt = tr.save(tmp_path / "run" / "checkpoints" / "last.pt")
    export(ckpt, tmp_path / "export", mc_dropout=False)
    keys = ("AP", "AP50", "overlap_F", "boundary_F", "double_pick_rate", "n_pred")
    reps = {}
    for name, model in (("torch", ckpt), ("onnx", tmp_path / "export")):
        assert main(["--model", str(model), "--scenes", str(scenes), "--out", str(tmp_path / name)]) == 0
        reps[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reps["torch"]["n_pred"] > 0
    for k in keys:
        assert reps["onnx"][k] == pytest.approx(reps["torch"][k], abs=1e-6), k
    assert main(["--model", str(tmp_path / "export"), "--scenes", str(scenes), "--out", str(tmp_path / "few"),
                 "--max-hypotheses", "1", "--no-double-pick"]) == 0
    assert json.loads((tmp_path / "few.json").read_text())["n_pred"] <= 2


def test_evaluate_refuses_bad_models(tmp_path, capsys, scenes):
    assert main(["--model", str(tmp_path / "missing.pt"), "--scenes", str(scenes)]) == 2
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["--model", str(bad), "--scenes", str(scenes)]) == 2
    assert "not a segmenter checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a share above 1 is refused before anything is loaded
        main(["--model", str(bad), "--scenes", str(scenes), "--contested", "2"])
    assert "contested_overlap must lie in (0, 1]" in capsys.readouterr().err


def test_random_baseline_is_deterministic_and_sized(scenes):
    from data.scene_io import iter_scenes

    s = next(iter_scenes(scenes))
    m1, s1 = get_baseline("random", seed=3)(s.rgb, s.depth, s.K)
    m2, s2 = get_baseline("random", seed=3)(s.rgb, s.depth, s.K)
    assert m1.shape == (20, *s.depth.shape) and m1.any(axis=(1, 2)).all()
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(s1, s2)
    with pytest.raises(ValueError, match="unknown baseline"):
        get_baseline("oracle")


def test_bench_curve_tiny_end_to_end(tmp_path):
    """Every variant trains and is evaluated; outputs are written. (A smoke run, not the benchmark.)"""
    from learner.bench.curve import VARIANTS, run

    tiny = SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16)
    rows = run(tmp_path / "curve", [4, 6], steps=1, n_test=2, variants=list(VARIANTS), model_cfg=tiny)
    assert {r["variant"] for r in rows} == {"depth_clustering", *VARIANTS}
    assert len([r for r in rows if r["variant"] == "ours"]) == 2
    for r in rows:
        assert 0.0 <= r["AP50"] <= 1.0
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 1000
    assert "| ours | 6 |" in (tmp_path / "curve" / "curve.md").read_text()
    with InteractionLog.open(tmp_path / "curve" / "interactions.zarr", "r") as log:
        assert len(log) == 6


def test_bench_curve_wide_log_with_cross_columns_and_scaled_effort(tmp_path):
    """A wide-domain log, the cross-domain test columns next to the in-domain ones, the steps of each model
    from TrainingEffort (more records, more steps), and every model run at its training resolution."""
    from learner.bench.curve import run
    from learner.train.effort import TrainingEffort

    tiny = SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16)
    cross = tmp_path / "cross"
    export_scenes(cross, "test", 2, domain="cross", width=320, height=240, progress=False)
    effort = TrainingEffort(passes=1.0, min_steps=1, max_steps=3)
    rows = run(tmp_path / "curve", [6, 18], steps=None, n_test=2, variants=["ours"], model_cfg=tiny, domain="wide",
               cross_dir=cross, effort=effort)
    ours = sorted((r for r in rows if r["variant"] == "ours"), key=lambda r: r["interactions"])
    assert [r["steps"] for r in ours] == [1, 3]  # round(1 x 6 / 6) = 1, round(1 x 18 / 6) = 3
    for r in rows:
        assert 0.0 <= r["AP50"] <= 1.0 and 0.0 <= r["cross_AP50"] <= 1.0 and "cross_boundary_F" in r
    md = (tmp_path / "curve" / "curve.md").read_text()
    assert "cross AP50" in md and "| ours | 18 | 3 |" in md
    ckpt = load_model(tmp_path / "curve" / "models" / "ours_18.pt")[1]
    assert list(ckpt["input_size"]) == [240, 320]


def test_training_effort_scales_with_the_log_and_rejects_bad_values():
    from learner.train.effort import TrainingEffort

    e = TrainingEffort()
    assert e.steps(500, 6) == e.min_steps  # a small log still gets the full schedule
    assert e.steps(2000, 6) == min(round(e.passes * 2000 / 6), e.max_steps) > e.steps(500, 6)
    assert e.steps(10**6, 6) == e.max_steps
    with pytest.raises(ValueError, match="passes must be > 0"):
        TrainingEffort(passes=0).steps(10, 6)
    with pytest.raises(ValueError, match="min_steps <= max_steps"):
        TrainingEffort(min_steps=10, max_steps=5).steps(10, 6)


def test_adaptation_curves_plot_and_table(tmp_path, capsys):
    """learner.bench.adaptation: the evaluation rows of each run, in interaction order, next to the baseline."""
    from learner.bench.adaptation import main as adaptation

    for name, pts in (("a", [(100, 0.2), (50, 0.1)]), ("b", [(0, 0.3), (50, 0.4)])):
        (tmp_path / name).mkdir()
        rows = [{"kind": "baseline", "AP50": 0.33, "boundary_F": 0.5}, {"kind": "interaction", "index": 0}]
        rows += [{"kind": "eval", "interactions": n, "AP50": v, "boundary_F": v / 2} for n, v in pts]
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "curves.png"
    assert adaptation([str(tmp_path / "a"), str(tmp_path / "b"), "--names", "scratch,pre", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.stat().st_size > 1000
    assert text.index("| scratch | 50 | 0.100") < text.index("| scratch | 100 | 0.200")
    assert "| pre | 0 | 0.300 | 0.150 |" in text and "| depth clustering | - | 0.330 | 0.500 |" in text
    with pytest.raises(SystemExit):
        adaptation([str(tmp_path / "a"), "--names", "x,y", "--out", str(out)])
