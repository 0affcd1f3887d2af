"""benchmarks/step_cache.py: a trial times the step's parts, and the table names every configuration."""

from __future__ import annotations

from benchmarks import step_cache


def test_trial_times_gather_run_scatter_and_the_table_compares_with_64_slots():
    t = step_cache.run_trial({"runner": "onnx_int8", "batch": 64, "slots": 128, "flush": True, "calls": 2})
    assert t["run_us"] > 0 and t["gather_us"] > 0 and t["scatter_us"] > 0
    assert abs(t["total_us"] - (t["gather_us"] + t["run_us"] + t["scatter_us"])) < 1e-6 * t["total_us"] + 1e-9
    parts = {k: t[k] for k in step_cache.PARTS}
    rows = {label: dict(parts) for label, _, _ in step_cache.CONFIGS}
    rows["N slots"]["total_us"] = 1.1 * parts["total_us"]
    result = {"machine": {"load_avg_1m": 1.0}, "cpu_core": 1, "slots": 128, "rounds": 1, "runners": {"onnx_int8": rows}}
    md = step_cache._markdown(result)
    assert "| onnx_int8 | 128 slots |" in md and "+10.0%" in md and "| onnx_int8 | 64 slots, caches flushed |" in md
