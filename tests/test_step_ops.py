"""benchmarks.step_ops: the profiler report of an exported step (a tiny random-init export)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")


def test_step_ops_reports_operators_of_the_shipped_step(tmp_path):
    from benchmarks.step_ops import main
    from stream_engine.variants import SHIPPED

    rc = main(
        ["--model", f"fp32={SHIPPED['fp32']}", "--batch", "2", "--calls", "3", "--rounds", "1", "--out", str(tmp_path)]
    )
    assert rc == 0
    result = json.loads((tmp_path / "step_ops.json").read_text())
    row = result["models"]["fp32"]
    assert row["kernel_us_per_call"] > 0
    # The step's heavy products are there, and the frames are sliced, not gathered element-wise.
    assert "MatMul" in row["by_op_us"]
    assert "| fp32 |" in (tmp_path / "step_ops.md").read_text()


def test_step_ops_refuses_a_missing_model(tmp_path):
    from benchmarks.step_ops import main

    with pytest.raises(SystemExit, match="expected NAME=PATH"):
        main(["--model", f"x={tmp_path / 'none.onnx'}", "--out", str(tmp_path)])
