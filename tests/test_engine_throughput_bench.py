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
