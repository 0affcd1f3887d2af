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
