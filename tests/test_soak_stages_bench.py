"""benchmarks/soak_stages.py: the stage arithmetic on planted frame records, the batch grouping, the variant
syntax, and one short run against a real `msync stream` on loopback (the tests' zero-cost model)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks import soak_stages as ss
from benchmarks.common import listening_sockets, process_cpu_s, process_tree

from fakes import ZeroCostRunner


def _records(rows: list[tuple[int, ...]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.int64)


def test_stage_stats_reads_each_stage_from_its_two_stamps() -> None:
    ms = 1_000_000
    # ready, step start, step end, publish, sent, arrival
    rec = _records([(0, 2 * ms, 5 * ms, 6 * ms, 7 * ms, 9 * ms)] * 3)
    s = ss.stage_stats(rec)
    assert s["wait"]["p50"] == 2.0
    assert s["step"]["p99"] == 3.0
    assert s["publish"]["max"] == 1.0
    assert s["send"]["p50"] == 1.0
    assert s["socket"]["p50"] == 2.0
    assert s["engine"]["p50"] == 7.0
    assert s["total"]["max"] == 9.0
    assert s["total"]["min"] == 9.0


def test_stage_stats_percentiles_follow_the_slow_frames() -> None:
    ms = 1_000_000
    fast = [(0, ms, 2 * ms, 2 * ms, 2 * ms, 3 * ms)] * 98
    slow = [(0, 40 * ms, 41 * ms, 41 * ms, 41 * ms, 42 * ms)] * 2
    s = ss.stage_stats(_records(fast + slow))
    assert s["wait"]["p50"] == 1.0
    assert s["wait"]["max"] == 40.0
    assert s["wait"]["p99"] > 1.0  # the two slow frames reach the 99th percentile


def test_stage_stats_refuses_empty_or_misshapen_records() -> None:
    with pytest.raises(ValueError, match="frame records"):
        ss.stage_stats(np.zeros((0, 6), np.int64))
    with pytest.raises(ValueError, match="frame records"):
        ss.stage_stats(np.zeros((4, 5), np.int64))


def test_batch_stats_groups_frames_by_their_step_start() -> None:
    ms = 1_000_000
    one_call = [(0, 10 * ms, 12 * ms, 0, 0, 0)] * 3  # three streams in one runner call, 2 ms
    other = [(0, 20 * ms, 21 * ms, 0, 0, 0)]  # one stream alone, 1 ms
    b = ss.batch_stats(_records(one_call + other))
    assert b["calls"] == 2
    assert b["mean_batch"] == 2.0
    assert b["by_batch"] == [{"batch": "1-4", "calls": 2, "step_ms_p50": 1.5}]


def test_split_frames_puts_what_comes_after_the_last_chunk_apart() -> None:
    ms = 1_000_000
    warm, last_send = 100 * ms, 1000 * ms
    rows = [
        (50 * ms, 0, 0, 0, 0, 0),  # before the warm-up's end: dropped
        (500 * ms, 0, 0, 0, 0, 0),  # real audio
        (1060 * ms, 0, 0, 0, 0, 0),  # completed by the last chunk, read late (60 ms after the send): real audio
        (1210 * ms, 0, 0, 0, 0, 0),  # a look-ahead frame completed by the fill: ready with the first fill frame
        (1210 * ms, 0, 0, 0, 0, 0),  # the first stall-filled frame
        (1250 * ms, 0, 0, 0, 0, 0),  # a later one
    ]
    stream = ss._Stream(frames=rows, stalled=[False, False, False, False, True, True], seqs=list(range(6)))
    stream.last_send_ns = last_send
    real, after, filled = ss.split_frames(stream, warm)
    assert real[:, 0].tolist() == [500 * ms, 1060 * ms]
    assert after[:, 0].tolist() == [1210 * ms, 1210 * ms, 1250 * ms]
    assert filled == 2


def test_split_frames_without_a_fill_keeps_every_frame_as_real_audio() -> None:
    ms = 1_000_000
    stream = ss._Stream(frames=[(200 * ms, 0, 0, 0, 0, 0), (300 * ms, 0, 0, 0, 0, 0)], stalled=[False, False])
    stream.last_send_ns = 250 * ms
    real, after, filled = ss.split_frames(stream, 0)
    assert len(real) == 2 and len(after) == 0 and filled == 0


def test_lost_frames_counts_seq_gaps() -> None:
    assert ss.lost_frames([]) == 0
    assert ss.lost_frames([3, 4, 5, 6]) == 0
    assert ss.lost_frames([3, 4, 7, 8, 8]) == 2


def test_workers_of_reads_the_variant_arguments() -> None:
    assert ss.workers_of([]) == 1
    assert ss.workers_of(["--threads", "2"]) == 1
    assert ss.workers_of(["--workers", "3"]) == 3
    assert ss.workers_of(["--workers=2"]) == 2
    with pytest.raises(ValueError, match="whole number"):
        ss.workers_of(["--workers", "two"])


def test_listening_sockets_counts_listeners_on_a_port() -> None:
    with socket.socket() as a:
        a.bind(("127.0.0.1", 0))
        port = a.getsockname()[1]
        assert listening_sockets(port) == 0  # bound, not listening
        a.listen()
        assert listening_sockets(port) == 1


def test_process_cpu_counts_a_busy_child() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\ntime.sleep(30)",
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while process_cpu_s(child.pid) < 0.4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (process_cpu_s(child.pid) or 0.0) >= 0.4
        assert child.pid in process_tree(os.getpid())  # found among this process's descendants
    finally:
        child.kill()
        child.wait()
    assert process_cpu_s(child.pid) is None  # gone: nothing to read


def test_parse_variant() -> None:
    assert ss.parse_variant("default=") == ("default", [])
    assert ss.parse_variant("wait8=--set engine.batch_wait_ms=8 --threads 2") == (
        "wait8",
        ["--set", "engine.batch_wait_ms=8", "--threads", "2"],
    )
    assert ss.parse_variant("plain") == ("plain", [])
    with pytest.raises(ValueError, match="label"):
        ss.parse_variant("=--threads 2")


@pytest.mark.parametrize(
    "args",
    [
        ["--duration", "3"],  # not past the 5 s warm-up
        ["--duration", "nan"],
        ["--duration", "inf"],
        ["--streams", "0"],
        ["--phases", "0"],
        ["--variant", "=--threads 1"],
        ["--variant", "w=--workers two"],
        ["--tail-s", "nan"],
        ["--tail-s", "-1"],
        ["--tail-s", "61"],
    ],
)
def test_arguments_are_checked(args: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        ss.main(args)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_a_short_run_against_a_real_server(tmp_path) -> None:
    """Two streams for 6.5 s against the zero-cost model: every frame's timestamps are in order, so no stage of
    any frame is negative; the stall fill after the clients stop is received and reported apart."""
    args = ["--streams", "2", "--duration", "6.5", "--phases", "2", "--out", str(tmp_path), "--name", "t"]
    args += ["--variant", "zero=--model python:fakes:ZeroCostRunner"]
    assert ss.main(args) == 0
    report = json.loads((tmp_path / "t.json").read_text())
    (v,) = report["variants"]
    assert v["stream_errors"] == []
    assert v["frames"] >= 2 * 25  # 1.5 s after the warm-up, two streams
    stages = v["stages_ms"]
    for name in ss.STAGES:
        assert stages[name]["min"] >= 0.0, name
    assert v["model_version"] == "fake-1"  # read from the server's /health: the tests' zero-cost model
    assert stages["engine"]["max"] <= 40.0 * 5  # a zero-cost step on loopback: no frame waits seconds
    # once the audio stops, each stream's last look-ahead frames and the whole stall fill come: (stall delay
    # + 1 s of fill) / 40 ms frames per stream, all received and kept apart from the real-audio frames
    L = ZeroCostRunner().contract.lookahead_frames
    per_stream = (L * 40 + 80 + 1000) // 40
    assert v["after_stop_frames"] == 2 * per_stream
    assert v["stall_filled_frames"] == 2 * (per_stream - L)
    assert v["lost_frames"] == 0
    assert v["server_cpu_cores"] > 0
    md = (tmp_path / "t.md").read_text()
    assert "| zero | engine |" in md and "frames after the audio stopped" in md
