"""benchmarks/vad_step_cost.py: the VAD-in-the-step cost table, with a stand-in ONNX graph of Silero VAD's signature
(input (B, 576), state (2, B, 128), sr) so that it runs without the silero-vad wheel."""

from __future__ import annotations

import json

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _standin_vad(path):
    """output = sigmoid(mean(input)) (B, 1); stateN = state + 1; sr read by nothing (as in the real model's
    16 kHz-only graph, where it only selects a branch)."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Sigmoid", ["m"], ["output"]),
        helper.make_node("Add", ["state", "one"], ["stateN"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vad_standin",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", 576]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "B", 128]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["B", 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "B", 128]),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_cost_table_with_a_standin_vad(tmp_path):
    from benchmarks.vad_step_cost import main

    vad = tmp_path / "vad.onnx"
    _standin_vad(vad)
    out = tmp_path / "out"
    argv = ["--vad", str(vad), "--batches", "1,4", "--rounds", "2", "--frames", "8", "--out", str(out), "--name", "v"]
    assert main(argv) == 0
    res = json.loads((out / "v.json").read_text())
    assert set(res["batches"]) == {"1", "4"}
    for b, row in res["batches"].items():
        assert set(row) == {"vad", "float32", "int8"}
        for cell in row.values():
            assert cell["us_per_frame"] > 0
        for name, cell in row.items():  # the VAD hears a 640-sample frame in 1.25 calls of 512 samples
            per_frame_calls = 1.25 if name == "vad" else 1.0
            assert cell["us_per_frame"] == pytest.approx(1e3 * cell["ms_per_call"] * per_frame_calls / int(b))
    md = (out / "v.md").read_text()
    assert "| 4 |" in md and "VAD ÷ int8 step" in md and "vad.onnx" in md
    assert res["command"].startswith("python -m benchmarks.vad_step_cost --vad")


def test_missing_vad_is_a_clear_exit(tmp_path, capsys, monkeypatch):
    from benchmarks.vad_step_cost import main

    assert main(["--vad", str(tmp_path / "nope.onnx"), "--out", str(tmp_path)]) == 2
    assert "nope.onnx: no such file" in capsys.readouterr().err
    monkeypatch.setattr("benchmarks.vad_step_cost.find_vad", lambda: None)
    assert main(["--out", str(tmp_path)]) == 2
    assert "pip install --no-deps silero-vad" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_bad_batches_are_a_usage_error(tmp_path):
    from benchmarks.vad_step_cost import main

    vad = tmp_path / "vad.onnx"
    _standin_vad(vad)
    with pytest.raises(SystemExit):
        main(["--vad", str(vad), "--batches", "x"])
    with pytest.raises(SystemExit):
        main(["--vad", str(vad), "--batches", "0"])
