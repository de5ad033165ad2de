"""learner.bench_confidence end to end on two exported sim scenes with a tiny random model."""

from __future__ import annotations

import json

import pytest
import torch

from learner.bench import confidence as bench_confidence
from learner.model.network import PointSegmenter, SegmenterConfig

TINY = SegmenterConfig(stem_width=8, widths=(16, 16, 32), depths=(1, 1, 1), fpn_width=16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from sim.export_scenes import export_scenes

    root = tmp_path_factory.mktemp("bench")
    export_scenes(root / "scenes", "val", 2, progress=False)
    torch.manual_seed(0)
    model = PointSegmenter(TINY)
    with torch.no_grad():
        model.obj_head.bias.fill_(1.0)  # seeds everywhere: masks that sprawl over depth steps
    torch.save({"model": model.state_dict(), "model_config": TINY.to_dict()}, root / "tiny.pt")
    return root


def _run(setup, edge: str) -> tuple[dict, str]:
    out = setup / f"out{edge}"
    rc = bench_confidence.main(["--model", str(setup / "tiny.pt"), "--scenes", str(setup / "scenes"), "--out",
                                str(out), "--samples", "3", "--ps", "0.5,0.9", "--samplers", "tta",
                                "--sim-scenes", "0", "--no-onnx", "--depth-edge", edge, "--tta-roll", "10"])
    assert rc == 0 and (out / "confidence.png").is_file()
    return json.loads((out / "confidence.json").read_text()), (out / "confidence.md").read_text()


def test_bench_writes_a_report_and_applies_the_depth_edge_setting(setup):
    on, md_on = _run(setup, "0.02")
    off, md_off = _run(setup, "-1")
    assert on["config"]["proposals"]["depth_edge_m"] == 0.02 and off["config"]["proposals"]["depth_edge_m"] is None
    assert "depth-edge cut of the proposals: 0.02 m" in md_on and "depth-edge cut of the proposals: off" in md_off
    assert on["config"]["samplers"]["tta"]["tta"]["max_roll_deg"] == 10
    for res in (on, off):
        assert res["eval"]["n_scenes"] == 2
        for key in ("single@0.5", "confidence/tta/p=0.9", "union/tta"):
            m = res["eval"]["methods"][key]
            assert 0.0 <= m["double_pick_rate"] <= 1.0 and m["pickable_area_fraction"] >= 0.0
    # a random net's masks sprawl across depth steps: the cut takes area off them
    area = {name: r["eval"]["methods"]["single@0.5"]["pickable_area_fraction"] for name, r in (("on", on), ("off", off))}
    assert area["on"] < area["off"]
    assert "Goal (p = 0.9" in md_on
