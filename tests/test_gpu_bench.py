"""benchmarks/gpu_bench.py: its CPU-side paths (arguments, the batch loop and capacity rule, report writing, the
message without a GPU, the shell wrapper). The GPU measurements themselves run only on a CUDA machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu_bench as gb

REPO = Path(__file__).resolve().parents[1]
needs_model = pytest.mark.skipif(not gb.DEFAULT_MODEL.is_file(), reason="stream_engine/models/default.onnx missing")


def test_parse_args():
    a = gb.parse_args(["--batches", "1024,64,64", "--backends", "tensorrt,torch_cuda_graph"])
    assert a.batches == [64, 1024] and a.backends == ["tensorrt", "torch_cuda_graph"]
    assert gb.parse_args([]).batches == list(gb.DEFAULT_BATCHES)
    for bad in (["--batches", "0,8"], ["--batches", "a,b"], ["--backends", "cuda_magic"], ["--steps", "2"]):
        with pytest.raises((SystemExit, ValueError)):
            gb.parse_args(bad)


def test_capacity_rule():
    assert gb.capacity(1024, 9.9) == 4 * 1024  # four groups of 1024 fit in one 40 ms frame
    assert gb.capacity(1024, 40.0) == 1024
    assert gb.capacity(1024, 40.1) == 0  # one step already misses the deadline
    assert gb.capacity(8, 0.0) == 0


class FakeBackend:
    """Step time grows with the batch (sleep), and a batch of `oom_at` or more fails like a GPU out of memory."""

    notes = "fake"

    def __init__(self, ms_per_stream: float, oom_at: int = 10**9):
        self.ms, self.oom_at = ms_per_stream, oom_at

    def prepare(self, batch: int):
        if batch >= self.oom_at:
            raise RuntimeError("CUDA error: out of memory")
        return lambda: time.sleep(self.ms * batch / 1000.0)


def test_batch_loop_stops_at_the_deadline_and_on_out_of_memory():
    r = gb.run_backend(FakeBackend(0.5), [4, 16, 128], steps=5, warmup=1, deadline_ms=40.0, budget_s=30.0)
    assert set(r["cells"]) == {"4", "16", "128"}  # 128 x 0.5 ms = 64 ms: measured, over the deadline, stop
    assert r["cells"]["16"]["within_deadline"] and not r["cells"]["128"]["within_deadline"]
    assert r["cells"]["128"]["streams"] == 0 and r["cells"]["16"]["streams"] >= 16
    assert "p99" in r["stopped"] and "B=128" in r["stopped"]
    r = gb.run_backend(FakeBackend(0.01, oom_at=64), [8, 64, 256], steps=5, warmup=0, deadline_ms=40.0, budget_s=30)
    assert set(r["cells"]) == {"8"} and r["stopped"] == "B=64: out of GPU memory"
    s = gb.summary_of({"fake": r})
    assert s["fake"]["best_batch"] == 8 and s["fake"]["streams_per_gpu"] == r["cells"]["8"]["streams"]


@needs_model
def test_report_with_measured_cells_renders(tmp_path):
    r = gb.run_backend(FakeBackend(0.01), [8, 32], steps=5, warmup=0, deadline_ms=40.0, budget_s=30.0)
    r["notes"] = "fake backend"
    report = {
        "machine": {"cpu": "x", "logical_cpus": 2, "load_avg_1m": 0.1},
        "gpu": "Fake GPU",
        "gpu_reason": None,
        "conditions": {
            "model": "m.onnx",
            "model_version": "v",
            "batches": [8, 32],
            "steps": 5,
            "warmup": 0,
            "deadline_ms": 40.0,
            "budget_s": 30.0,
            "wall_s": 1.0,
        },
        "results": {"fake": r},
        "summary": gb.summary_of({"fake": r}),
        "skipped": {"tensorrt": "no TensorRT"},
    }
    md = gb.markdown(report)
    assert "| fake | 32 |" in md and "**fake**" in md and "misses 20,000" in md and "- tensorrt: no TensorRT" in md
    assert "No GPU here" not in md


@needs_model
def test_without_a_gpu_it_writes_the_report_and_says_so(tmp_path, capsys):
    ok, _ = gb.gpu_available()
    if ok:
        pytest.skip("a CUDA GPU is present: the fallback path does not run")
    assert gb.main(["--out", str(tmp_path), "--backends", "ort_cuda,tensorrt"]) == 0
    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert report["gpu"] is None and set(report["skipped"]) == {"ort_cuda", "tensorrt"}
    assert report["results"] == {} and "no CUDA GPU" in report["gpu_reason"]
    assert "No GPU here: nothing was measured" in (tmp_path / "gpu_bench.md").read_text()
    assert "nothing to measure" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert gb.main(["--model", str(tmp_path / "none.onnx"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


@needs_model
def test_shell_wrapper(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "benchmarks" / "gpu_bench.sh"),
            "--backends",
            "torch_cuda_graph",
            "--batches",
            "64",
            "--steps",
            "5",
            "--budget-s",
            "20",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "gpu_bench.json").is_file() and (tmp_path / "gpu_bench.md").is_file()


@needs_model
def test_bf16_probe_runs_on_cpu():
    """The bf16 accuracy probe of the torch_cuda_graph_bf16 row is device-agnostic: on the CPU (torch autocast
    bf16) with the shipped checkpoint it measures a small, non-zero difference."""
    torch = pytest.importorskip("torch")
    from stream_engine.contract import read_contract

    contract = read_contract(gb.DEFAULT_MODEL)
    g, weights = gb.trained_or_random(contract)
    if weights != "trained":
        pytest.skip("training/weights/generator is not in this checkout")
    torch.manual_seed(0)
    d = gb.bf16_difference(g, contract, device="cpu", steps=20, batch=2)
    assert 0.0 < d < 0.05
