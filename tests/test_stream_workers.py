"""`msync stream --workers N`: N engine processes on one loopback port (SO_REUSEPORT), started and stopped here."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect

from stream_engine.config import StreamConfig
from stream_engine.outputs.serializers import decode_binary
from stream_engine.workers import WorkersError, max_workers, reserve_port, run_workers, worker_config, worker_exit_code

from fakes import tone

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT (Linux)")


def test_worker_configs_share_the_port_and_only_worker_0_has_the_local_input_and_outputs():
    cfg = StreamConfig(workers=3)
    w0, w2 = worker_config(cfg, 0, 9001), worker_config(cfg, 2, 9001)
    for w in (w0, w2):
        assert w.server.port == 9001 and w.server.reuse_port and w.workers == 1 and w.server.host == "127.0.0.1"
    assert w0.input.kind == cfg.input.kind and w0.vmc.enabled == cfg.vmc.enabled
    assert w2.input.kind == "none" and not w2.vmc.enabled and not w2.osc.enabled and not w2.vts.enabled
    assert (w0.engine.id_prefix, w2.engine.id_prefix) == ("w0-s", "w2-s")  # default ids unique across workers


def test_a_taken_port_is_a_clear_error():
    plain = socket.socket()
    plain.bind(("127.0.0.1", 0))
    plain.listen()
    try:
        with pytest.raises(WorkersError, match="cannot bind"):
            reserve_port("127.0.0.1", plain.getsockname()[1])
    finally:
        plain.close()


def test_a_port_another_reuseport_server_listens_on_is_refused_not_shared():
    """Another `--workers` server (its sockets SO_REUSEPORT, same user) listening on the port: SO_REUSEPORT alone
    would join it and split its traffic between two unrelated servers; the probe bind refuses the port."""
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen()
    try:
        with pytest.raises(WorkersError, match="cannot bind"):
            reserve_port("127.0.0.1", other.getsockname()[1])
    finally:
        other.close()
    free = reserve_port("127.0.0.1", 0)  # port 0: a fresh port, nothing to probe
    free.close()
    with pytest.raises(WorkersError, match="check --host"):
        reserve_port("no-such-host.invalid", 18000)  # does not resolve (RFC 2606)
    with pytest.raises(WorkersError, match="check --host"):
        reserve_port("192.0.2.1", 18000)  # TEST-NET-1: no interface has it


def test_exit_code_counts_a_crashed_worker_but_not_the_ones_the_supervisor_stopped(capsys):
    term, kill = -int(signal.SIGTERM), -int(signal.SIGKILL)
    TERM, KILL = int(signal.SIGTERM), int(signal.SIGKILL)
    assert worker_exit_code([0, term], {1: {TERM}}) == 0  # one ended (its duration), the other was stopped by us
    assert worker_exit_code([term, kill], {0: {TERM}, 1: {TERM, KILL}}) == 0  # stopped; killed after the grace
    assert capsys.readouterr().err == ""
    assert worker_exit_code([kill, term], {1: {TERM}}) == 1  # worker 0 was killed by someone else: a failure
    assert "worker 0 was killed by signal 9" in capsys.readouterr().err
    # killed from outside just before the supervisor's SIGTERM reached it (it still looked alive): still a failure
    assert worker_exit_code([kill, term], {0: {TERM}, 1: {TERM}}) == 1
    assert "worker 0 was killed by signal 9" in capsys.readouterr().err
    assert worker_exit_code([2, term], {1: {TERM}}) == 2  # worker 0 failed (e.g. its model did not load)
    assert "worker 0 exited with code 2" in capsys.readouterr().err


def test_too_many_workers_is_refused_before_any_starts():
    with pytest.raises(WorkersError, match="per CPU"):
        run_workers(StreamConfig(workers=max_workers() + 1))


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads worker pids from /proc (Linux)")
def test_a_worker_killed_from_outside_stops_the_rest_and_fails_the_supervisor():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "stream_engine.cli", "stream", "--model", "python:fakes:FakeRunner"]
    cmd += ["--input", "none", "--workers", "2", "--port", "0", "--quiet", "--no-vmc", "--duration", "60"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2 and proc.poll() is None:
            time.sleep(0.2)
            workers = [
                c
                for c in _children(proc.pid)
                if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()  # not the resource tracker
            ]
        assert len(workers) == 2, "workers did not start"
        time.sleep(1.0)
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert "was killed by signal 9" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _int16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def test_two_workers_share_a_port_and_each_stream_gets_its_own_frames():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "stream_engine.cli", "stream", "--model", "python:fakes:FakeRunner"]
    cmd += ["--input", "none", "--workers", "2", "--port", "0", "--quiet", "--no-vmc", "--duration", "60"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []  # the supervisor's and workers' stderr, read in a thread (never blocks the test)

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    banner = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            banner = next((m for line in list(lines) if (m := re.search(r"2 workers sharing .*:(\d+)/", line))), None)
            # both workers serving (their lines may interleave in the pipe: count in the joined text)
            if banner and "".join(lines).count("input none") == 2:
                break
            time.sleep(0.05)
        assert banner and "".join(lines).count("input none") == 2, "".join(lines)
        port = int(banner.group(1))

        async def main():
            n = 16
            conns, readies = [], []
            for i in range(n):  # the kernel hashes each connection to a worker
                ws = await connect(f"ws://127.0.0.1:{port}/audio")
                hello = {"type": "hello", "v": 1, "stream": f"w{i}", "sample_rate_hz": 16000, "dtype": "int16"}
                await ws.send(json.dumps({**hello, "subscribe": "binary"}))
                ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert ready["type"] == "ready", ready
                conns.append(ws)
                readies.append(ready)
            for ws in conns:
                await ws.send(_int16(tone(640 * 5)))
            got = []
            for ws in conns:
                while True:
                    msg = await asyncio.wait_for(ws.recv(), 10)
                    if isinstance(msg, bytes):
                        got.append(decode_binary(msg)["stream"])
                        break
            for ws in conns:
                await ws.close()
            return readies, got

        readies, got = asyncio.run(asyncio.wait_for(main(), 60))
        assert got == [f"w{i}" for i in range(16)]  # every stream got its own frames back
        # each ready lists the streams already open on the engine that took it: on one engine the i-th
        # would list all i before it; with two, some earlier stream is missing from a later ready
        assert any(set(r["streams"]) != {f"w{j}" for j in range(i)} for i, r in enumerate(readies))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "".join(lines)
        with pytest.raises(OSError):  # both workers have closed the port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
