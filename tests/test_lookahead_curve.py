"""benchmarks/lookahead_curve.py: from an `msync eval` report over models with different look-aheads to the
latency/quality table (real export + ONNX Runtime timing of each model, tiny random models, three test clips)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

from test_evaluate import TINY_G, TINY_S, _face  # noqa: E402

from training.models.generator import Generator  # noqa: E402
from training.models.syncer import SyncerPyramid  # noqa: E402


def test_curve_from_an_eval_report(shared_data, tmp_path, capsys):
    from benchmarks.lookahead_curve import main
    from stream_engine.cli import main as msync
    from training.checkpoint import save_module

    torch.manual_seed(0)
    sync = tmp_path / "metric" / "syncers"
    save_module(sync, SyncerPyramid(TINY_S), {"kind": "syncer_pyramid", "syncer": TINY_S})
    argv = [
        "eval",
        "--metric-syncers",
        str(sync),
        "--data",
        str(shared_data),
        "--split",
        "test",
        "--out",
        str(tmp_path / "eval"),
        "--max-clips",
        "2",
        "--seq-frames",
        "40",
        "--rollout-frames",
        "0",
        "--long-rollout-minutes",
        "0",
        "--threads",
        "1",
        "--no-progress",
    ]
    for L in (2, 0):  # deliberately out of order: the table sorts by L
        cfg = dataclasses.replace(TINY_G, lookahead_frames=L)
        gen = tmp_path / f"L{L}" / "generator"
        save_module(
            gen, Generator(cfg), {"kind": "generator", "step": 0, "generator": cfg, "reference_face": _face().tolist()}
        )
        argv += ["--model", f"L{L}={gen}"]
    assert msync(argv) == 0

    out = tmp_path / "results"
    assert main(["--eval", str(tmp_path / "eval" / "eval.json"), "--out", str(out), "--steps", "20"]) == 0
    res = json.loads((out / "lookahead_curve.json").read_text())
    rows = res["rows"]
    assert [r["lookahead_frames"] for r in rows] == [0, 2]
    assert [r["algorithmic_latency_ms"] for r in rows] == [40.0, 120.0]
    for r in rows:
        assert len(r["av_conf"]) == 4 and all(c == c for c in r["av_conf"])  # finite, from the report
        assert r["step"]["n"] == 20 and 0 < r["step"]["p50_ms"] <= r["step"]["p99_ms"]
        viewer = json.loads((tmp_path / "eval" / "eval.json").read_text())["viewer"]["methods"][r["model"]]
        assert r["amplitude_ratio"] == pytest.approx(viewer["amplitude_ratio"])  # the report's own articulation
        assert r["lip_r_history"] is None or r["lip_r_history"] == pytest.approx(viewer["r_lag0_history"])
    named = tmp_path / "named"
    assert (
        main(["--eval", str(tmp_path / "eval" / "eval.json"), "--out", str(named), "--steps", "5", "--name", "x"]) == 0
    )
    assert sorted(f.name for f in named.iterdir()) == ["x.json", "x.md", "x.png"]
    only = tmp_path / "only"
    assert (
        main(["--eval", str(tmp_path / "eval" / "eval.json"), "--out", str(only), "--steps", "5", "--models", "L2"])
        == 0
    )
    assert [r["model"] for r in json.loads((only / "lookahead_curve.json").read_text())["rows"]] == ["L2"]
    with pytest.raises(SystemExit):
        main(["--eval", str(tmp_path / "eval" / "eval.json"), "--models", "L7"])
    md = (out / "lookahead_curve.md").read_text()
    assert "| 0 | 40 |" in md and "| 2 | 120 |" in md
    assert (out / "lookahead_curve.png").stat().st_size > 0
    (tmp_path / "L0" / "generator.json").unlink()  # a report read where its runs are not
    with pytest.raises(SystemExit):
        main(["--eval", str(tmp_path / "eval" / "eval.json"), "--out", str(out), "--steps", "5"])
    assert "run this from there" in capsys.readouterr().err


def test_missing_report_is_a_clear_error(tmp_path, capsys):
    from benchmarks.lookahead_curve import main

    with pytest.raises(SystemExit):
        main(["--eval", str(tmp_path / "nope.json")])
    assert "no such eval report" in capsys.readouterr().err
