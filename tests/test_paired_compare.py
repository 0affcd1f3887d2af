"""benchmarks/paired_compare.py: paired per-sequence statistics from an eval report (synthetic report)."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _report(conf: dict[str, np.ndarray]) -> dict:
    return {
        "per_sequence": {
            m: [
                {"levels": [{"level": l, "confidence": float(c[i, l])} for l in range(c.shape[1])]}
                for i in range(c.shape[0])
            ]
            for m, c in conf.items()
        }
    }


def test_paired_statistics_and_report(tmp_path):
    from benchmarks.paired_compare import main

    rng = np.random.default_rng(0)
    base = rng.normal(1.0, 0.5, size=(40, 4))  # big between-sequence spread, shared by both models
    better = base + np.array([0.0, 0.0, 0.1, 0.2]) + rng.normal(0, 0.01, size=(40, 4))
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(_report({"A": better, "B": base})))
    assert main(["--eval", str(path), "--reference", "A", "--against", "B", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "paired_compare.json").read_text())["comparisons"]["B"]
    assert [r["level"] for r in res] == [0, 1, 2, 3]
    for r, true in zip(res, (0.0, 0.0, 0.1, 0.2)):
        assert r["mean_diff"] == pytest.approx(true, abs=0.01)
    assert res[3]["ci95"][0] > 0.15 and res[3]["win_share"] == 1.0  # the pairing removes the shared spread
    assert res[0]["ci95"][0] < 0 < res[0]["ci95"][1]
    assert "## A vs B" in (tmp_path / "paired_compare.md").read_text()


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    from benchmarks.paired_compare import main

    path = tmp_path / "eval.json"
    path.write_text(json.dumps(_report({"A": np.ones((3, 4))})))
    with pytest.raises(SystemExit):
        main(["--eval", str(path), "--reference", "A", "--against", "Z"])
    assert "no model 'Z'" in capsys.readouterr().err


def test_seeds_joined_with_plus_are_averaged_per_sequence(tmp_path):
    from benchmarks.paired_compare import main

    rng = np.random.default_rng(1)
    base = rng.normal(1.0, 0.5, size=(30, 4))
    # two seeds of A, each off by its own seed noise of +-0.1 per sequence: their mean is base + 0.05
    a0 = base + 0.05 + rng.normal(0, 0.1, size=(30, 4))
    a1 = 2 * (base + 0.05) - a0
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(_report({"A": a0, "A_s1": a1, "B": base, "B_s1": base})))
    argv = ["--eval", str(path), "--reference", "A+A_s1", "--against", "B+B_s1", "--out", str(tmp_path)]
    assert main(argv) == 0
    res = json.loads((tmp_path / "paired_compare.json").read_text())["comparisons"]["B+B_s1"]
    for r in res:
        assert r["mean_diff"] == pytest.approx(0.05, abs=1e-9) and r["se"] < 1e-9  # the seed noise cancels
    assert "## A+A_s1 vs B+B_s1" in (tmp_path / "paired_compare.md").read_text()
    for bad in ("A+Z", "A+", "A+A"):  # unknown, empty or repeated rows are refused, not read as one row
        with pytest.raises(SystemExit):
            main(["--eval", str(path), "--reference", bad, "--against", "B"])
