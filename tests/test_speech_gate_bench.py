"""benchmarks.speech_gate runs on a small set and writes its report; the adaptive gate beats the fixed one on
quiet speech there and keeps steady noise at least as closed."""

from __future__ import annotations

import json

import pytest

from benchmarks import speech_gate


def test_speech_gate_benchmark_runs_and_writes(shared_data, tmp_path):
    cases = shared_data.parent / "cases"
    if not (cases / "quiet-speech-gate" / "speech_normal_level.wav").is_file():
        pytest.skip(f"cases not found at {cases}")
    argv = ["--data", str(shared_data), "--cases", str(cases), "--clips", "1", "--real-clips", "3"]
    assert speech_gate.main([*argv, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "speech_gate.json").read_text())
    assert (tmp_path / "speech_gate.md").is_file()
    quiet = {r["gain_db"]: r for r in result["quiet_speech"]}
    # the fixed gate passes nothing of -38 dB speech (a few thousandths from the filters' release at the stream's
    # first frames); the adaptive gate keeps at least 70 % of the normal level's mouth_open
    assert quiet[-38.0][speech_gate.OLD] < 0.01 and quiet[-38.0][speech_gate.NEW] >= 0.7
    noise = next(e for e in result["nonspeech"]["rows"] if e["kind"] == "noise -48 dBFS" and e["layout"] == "inserted")
    assert noise[speech_gate.NEW]["mean"] <= noise[speech_gate.OLD]["mean"]
