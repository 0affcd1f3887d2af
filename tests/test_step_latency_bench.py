"""benchmarks/step_latency.py --quick: runs in seconds and writes its JSON, Markdown and PNG reports."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("matplotlib")

from export_helpers import exported_model  # noqa: E402


def test_step_latency_quick_writes_reports(tmp_path, tmp_path_factory):
    """--quick times every available backend at B=1 and 8 and writes step_latency.{json,md,png}."""
    from benchmarks.step_latency import main

    model, _, _ = exported_model(tmp_path_factory)
    out = tmp_path / "results"
    assert main(["--quick", "--model", str(model), "--out", str(out), "--batches", "1,8,64"]) == 0

    report = json.loads((out / "step_latency.json").read_text())
    assert report["conditions"]["quick"] is True and report["conditions"]["batches"] == [1, 8]
    assert report["conditions"]["model"] == str(model)
    assert "load_avg_1m" in report["machine"] and report["conditions"]["threads"]["onnxruntime"] == 1
    for backend in ("torch_eager", "ort_cpu"):
        cells = report["results"][backend]
        assert set(cells) == {"1", "8"}
        for b, cell in cells.items():
            assert 0 < cell["p50_ms"] <= cell["p95_ms"] <= cell["p99_ms"]
            assert cell["per_stream_p50_us"] == pytest.approx(1e3 * cell["p50_ms"] / int(b))
            assert cell["streams_per_core_p50"] == pytest.approx(40.0 / (cell["p50_ms"] / int(b)))
        assert report["summary"][backend]["b1"]["p50_ms"] == cells["1"]["p50_ms"]
    # Every backend is either measured or skipped with a reason.
    for backend in ("torch_eager", "torch_compile", "ort_cpu", "cpp", "torch_cuda", "torch_cuda_graph", "tensorrt"):
        assert backend in report["results"] or report["skipped"].get(backend), backend
    assert "--quick" in report["skipped"]["torch_compile"]
    assert any(k.startswith("onnxruntime, B=1") for k in report["profiles"])

    md = (out / "step_latency.md").read_text()
    assert "| backend | B | N | p50 ms |" in md and "| ort_cpu | 1 |" in md and "What dominates a step" in md
    assert (out / "step_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
