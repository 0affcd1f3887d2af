"""benchmarks/engine_throughput.py runs (quick mode: zero-cost runner, this checkout only) and writes its files."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import engine_throughput


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is needed to pin trials")
def test_quick_run_writes_json_and_markdown(tmp_path):
    assert engine_throughput.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "engine_throughput.json").read_text())
    zero = result["runners"]["zero"]
    for key in ("signals", "no_signals"):
        current = zero[key]["throughput"]["current"]
        assert current["cpu_us_per_frame"] > 0 and current["streams_per_core_by_cpu"] > 0
    assert "| zero | off |" in (tmp_path / "engine_throughput.md").read_text()


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is needed to pin trials")
def test_stage_breakdown_runs_and_its_stages_add_up(tmp_path):
    """benchmarks/engine_stages.py (zero-cost runner, one trial, this checkout only): every stage is timed, and the
    stages plus the step and the rest make the process's CPU per frame."""
    from benchmarks import engine_stages

    args = ["--runner", "zero", "--streams", "64", "--seconds", "1", "--rounds", "1", "--out", str(tmp_path)]
    assert engine_stages.main(args) == 0
    result = json.loads((tmp_path / "engine_stages.json").read_text())
    trial = result["trials"]["current"][0]
    stages = trial["stages_us_per_frame"]
    for label in ("push_audio", "take_batch", "commit", "publish (all below)", "publish: signals update"):
        assert stages[label] > 0, label
    parts = sum(stages[k] for k in ("push_audio", "take_batch", "commit", "publish (all below)"))
    rest = stages["other (event loop, thread hand-offs, feeding)"]
    assert trial["cpu_us_per_frame"] == pytest.approx(trial["step_us_per_frame"] + parts + rest)
    assert "| push_audio |" in (tmp_path / "engine_stages.md").read_text()


def test_step_alone_over_more_slots_than_the_batch():
    """The step-alone trial as the engine calls it: B-row batches round robin over a larger slot store, timed
    through `step_slots` only; and the report names both denominators."""
    out = engine_throughput.run_step_trial(
        {"kind": "step", "runner": "onnx_int8", "batch": 8, "threads": 1, "slots": 24, "reps": 6}
    )
    assert out["slots"] == 24 and "step_ms_p50" not in out
    assert out["step_slots_ms_p50"] > 0 and out["streams_per_core"] == 8 / (25.0 * out["step_slots_ms_p50"] / 1e3)
    step = {"threads": 1, "step_ms_p50": 4.0, "step_slots_ms_p50": 4.2, "streams_per_core": 640.0}
    tp = {"throughput": {"current": {"streams_per_core_by_cpu": 500.0}}}
    onnx = {
        "step": [step],
        "step_n_slots": {**out, "slots": 512, "batch": 64, "step_slots_ms_p50": 5.0, "streams_per_core": 512.0},
        "signals": {
            **tp,
            "engine_over_step": {"current": 500 / 640},
            "engine_over_step_n_slots": {"current": 500 / 512},
            "engine_over_step_paired": {"median": 0.8, "rounds": [0.75, 0.8, 0.85]},
        },
        "no_signals": {**tp, "engine_over_step": {"current": 500 / 640}},
        "engine_latency": {},
    }
    text = "\n".join(engine_throughput._step_lines("onnx", onnx, ["current"]))
    assert "round robin over 512 slots" in text and "98%" in text and "78%" in text
    assert "paired by round (signals on" in text and "median 80% over 3 round(s), 75%-85%" in text
    assert "paired by round (signals off" not in text  # no pairs measured there: no line


def test_trial_reports_the_engines_call_size_and_the_report_pairs_the_step_at_it():
    """A throughput trial records the engine's call sizes: with a runner that costs nothing the calls grow
    past the first 64 streams (`EngineConfig.batch_step_ms`), up to --max-batch (with two calls in flight on
    the inference thread, the ready streams split unevenly between them, so the median can stay at 64); the
    report's own-call-size ratio and repeated latency rounds read as they were measured."""
    spec = {"runner": "zero", "streams": 300, "seconds": 0.5, "realtime": False, "signals": False}
    out = engine_throughput.run_trial(spec)
    assert out["frames"] == out["frames_expected"] and out["batch_max"] > 64 and out["batch_median"] <= 256
    out = engine_throughput.run_trial({**spec, "max_batch": 100})
    assert out["frames"] == out["frames_expected"] and out["batch_max"] == 100
    own = {
        "median": 0.81,
        "rounds": [0.8, 0.81, 0.83],
        "batches": [190, 185, 170],
        "step_trials": [{"step_slots_ms_p50": 11.0, "streams_per_core": 690.0}],
    }
    slow = {"p50_ms": 30.0, "p99_ms": 55.0, "frames": 10, "frames_expected": 10, "ok": False}
    fast = {"p50_ms": 3.0, "p99_ms": 9.0, "frames": 10, "frames_expected": 10, "ok": True}
    onnx = {
        "step": [],
        "signals": {"engine_over_step_own_batch_paired": own},
        "no_signals": {},
        "engine_latency": {"300": {"current": {**fast, "rounds": [fast, slow]}}},
    }
    for key in ("signals", "no_signals"):
        onnx[key]["engine_over_step"] = {"current": 0.7}
    text = "\n".join(engine_throughput._step_lines("onnx", onnx, ["current"]))
    assert "own batch size (signals on; the engine's median call 190/185/170" in text
    assert "median 81% over 3 round(s), 80%-83%" in text and "11.00 ms (690/core)" in text
    assert "- 300 stream(s): current p50 3.00 / p99 9.00 ms (10/10 frames), p50 30.00 / p99 55.00 ms" in text
    assert text.count("missed") == 1


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is needed to pin trials")
def test_state_banks_compares_both_stores_in_one_run(tmp_path):
    """benchmarks/state_banks.py (int8, a store of 8 rows, one round): both stores timed, a paired ratio per
    round, the table written; bad batch sizes refused before any trial."""
    from benchmarks import state_banks
    from stream_engine.config import DEFAULT_MODEL_PATH

    if not DEFAULT_MODEL_PATH.with_name("default_int8.onnx").is_file():
        pytest.skip("the shipped int8 model is not in this checkout")
    with pytest.raises(SystemExit):
        state_banks.main(["--slots", "8", "--batches", "16", "--out", str(tmp_path)])
    args = ["--runners", "onnx_int8", "--slots", "8", "--batches", "4", "--rounds", "1", "--calls", "4"]
    assert state_banks.main([*args, "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "state_banks.json").read_text())["runners"]["onnx_int8"]["4"]
    assert row["one bank"] > 0 and row["two banks"] > 0 and row["bind_us"] > 0 and len(row["speedup_by_round"]) == 1
    assert [t["store"] for t in row["trials"]["two banks"]] == ["two banks"]
    assert "| onnx_int8 | 4 |" in (tmp_path / "state_banks.md").read_text()
