"""Shared benchmark helpers: the machine/conditions block and percentile summaries."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from training.run.machine import machine_info

__all__ = [
    "baseline_tree",
    "free_port",
    "listening_sockets",
    "machine_info",
    "machine_load_line",
    "process_cpu_s",
    "process_tree",
    "spawn_trial",
    "stop_server",
    "summarise",
    "wait_health",
    "workers_of",
    "write_report",
]

REPO = Path(__file__).resolve().parents[1]


def baseline_tree(ref: str) -> Path:
    """`git archive REF stream_engine` unpacked into a new temporary folder (a baseline's engine, to measure
    beside this checkout's in one run). The caller removes it."""
    root = Path(tempfile.mkdtemp(prefix="msync-baseline-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "stream_engine"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root


def spawn_trial(
    script: str | Path, spec: dict, cpu: int | None, root: Path | None = None, timeout_s: float = 600
) -> dict:
    """One trial in a fresh process: `python SCRIPT --trial JSON(spec)` pinned to `cpu` (taskset; None = not
    pinned), one OpenMP thread, its result the JSON of its last stdout line. `root`: a tree put first on
    PYTHONPATH and used as the working directory (a baseline's engine from `baseline_tree`); None = this checkout.

    Raises:
        RuntimeError: the trial exited non-zero (with the end of its stderr).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(script), "--trial", json.dumps(spec)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, cwd=str(root or REPO))
    if r.returncode != 0:
        where = f" in {root}" if root is not None else ""
        raise RuntimeError(f"trial {spec} failed{where}: {r.stderr[-2000:]}")
    result: dict = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def machine_load_line(m: dict) -> str:
    """ "CPU (N logical CPUs), load avg A at start / B at end" from a result's `machine` block (`machine_info()`,
    plus `load_avg_1m_end` set when the run ends)."""
    return (
        f"{m.get('cpu')} ({m.get('logical_cpus')} logical CPUs), load avg {m.get('load_avg_1m'):.2f} at start / "
        f"{m.get('load_avg_1m_end', float('nan')):.2f} at end"
    )


def summarise(samples_s: list[float] | np.ndarray) -> dict:
    """Seconds -> {n, mean, p50, p90, p95, p99, max} in milliseconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {
        "n": int(a.size),
        "mean_ms": float(a.mean()),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


def write_report(out_dir: str | Path, name: str, result: dict, markdown: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text(markdown)
    print(markdown)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a server a benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_health(server: subprocess.Popen[Any], port: int, timeout_s: float = 120.0, workers: int = 1) -> dict:
    """Wait until the server on 127.0.0.1:`port` answers /health with 200 and `workers` sockets listen on the
    port (`msync stream --workers N`: each worker loads its model, then binds its own), and return that
    /health answer. Raises RuntimeError when the server exits or is not ready within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    health = None
    while time.monotonic() < deadline and server.poll() is None:
        if health is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        health = json.load(r)
            except OSError:
                pass
        if health is not None and listening_sockets(port) >= workers:
            return health
        time.sleep(0.2 if health is not None else 0.5)
    if health is not None:
        raise RuntimeError(f"{listening_sockets(port)} of {workers} workers listen on port {port}")
    raise RuntimeError(f"the server on port {port} did not come up")


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on `port` (/proc/net/tcp, tcp6): one per `msync stream --workers` process,
    since each binds its own (SO_REUSEPORT)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


def workers_of(args: list[str]) -> int:
    """The `--workers N` among `msync stream` arguments (1 when absent). Raises ValueError for a non-integer N."""
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--workers" and i + 1 < len(args) else arg.partition("=")[2]
        if arg == "--workers" or arg.startswith("--workers="):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"--workers needs a whole number, got {value!r}") from None
    return 1


def stop_server(server: subprocess.Popen[Any]) -> None:
    """SIGTERM, as a user stops `msync stream`; killed if it has not exited within 30 s. Its child processes
    (`--workers N`) that outlive it are killed too."""
    family = [p for p in process_tree(server.pid) if p != server.pid]
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # already gone, as it should be
            pass


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc), e.g. `msync stream --workers N`'s supervisor and workers."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(stat[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one process (/proc/PID/stat); None when it cannot be read (it has exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
