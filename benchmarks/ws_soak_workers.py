"""Real-time streams over real loopback WebSockets against `msync stream --input none`: one process, one
process with two intra-op threads, and `--workers 2` (SO_REUSEPORT), measured in one run.

    python -m benchmarks.ws_soak_workers [--streams 20 100] [--duration 20] [--variants workers1 threads2 workers2]
                                         [--soak ../shared/tools/ws_soak.py] [--out benchmarks/results]
                                         [--baseline-ref REF [REF ...]] [--rounds N] [--chunk-ms 40]
                                         [--server-cpu C --probe-cpu C] [--name ws_soak_workers]

For each stream count and variant: start the server (the shipped default model, benchmarks/configs/soak100.json:
room for 128 streams and 160 clients per process), wait for /health, run the independent probe
`ws_soak.py --streams N --duration D` (its own process: N /audio clients sending speech in real time, each
receiving its own binary frames; it reports p99 lateness = arrival at the client - arrival of the last audio
sample the frame needs, lost/duplicated frames, and its own CPU), sample RSS and CPU of every server process
(the supervisor and its workers) before and after, then stop the server with SIGTERM. Writes
NAME.json/.md (default ws_soak_workers) with the CPU model and `uptime` before and after every trial.

`--model zero` serves the tests' zero-cost runner instead of the shipped model: the server's CPU per frame is
then its own (ingest, engine around the step, sending), which the step's cost would otherwise hide.
`--baseline-ref` soaks earlier revisions' engines (one process each) in the same run; `--rounds N` repeats every
(streams, variant) trial N times, interleaved round by round, so a change in the machine's load hits every
variant alike. `--server-cpu` / `--probe-cpu` pin the server and the probe to one CPU each (sched_setaffinity;
a server on one CPU steps on its event loop, `EngineConfig.inline_on_one_cpu`), so the other jobs of a shared
machine move less of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import free_port, process_tree, stop_server, wait_health, workers_of

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "workers1": ["--workers", "1", "--threads", "1"],
    "threads2": ["--workers", "1", "--threads", "2"],
    "workers2": ["--workers", "2", "--threads", "1"],
    "workers1-wait8": ["--workers", "1", "--threads", "1", "--set", "engine.batch_wait_ms=8"],
}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _usage(pids: list[int]) -> dict[str, float]:
    """Summed RSS (MiB), CPU seconds and of them kernel (system) seconds of `pids`."""
    rss, cpu, sys_s = 0.0, 0.0, 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        rss += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024
        cpu += (int(stat[11]) + int(stat[12])) / ticks
        sys_s += int(stat[12]) / ticks
    return {"rss_mib": round(rss, 1), "cpu_s": round(cpu, 2), "sys_s": round(sys_s, 2)}


def _mean_batch(port: int) -> float | None:
    """Frames per runner call since the server started (its /health; with --workers, one worker's)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            h = json.loads(r.read())
        return round(h["frames"] / max(1, h["runner_calls"]), 2)
    except (OSError, ValueError, KeyError):
        return None


def _pinned(cpu: int | None) -> Any:
    """A `preexec_fn` that pins the child to `cpu` (None: no pinning)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _warm_up(root: Path, port: int) -> None:
    """Start and stop a server from the source tree `root` once, so numba compiles the signal kernel for that
    tree into its cache before the trials. A server whose kernel compiles in its own process (a fresh baseline
    tree) holds the compiler's objects for its life: more RSS and longer garbage-collector passes, ~10 % more
    CPU per frame measured for identical code, which would be charged to the baseline."""
    cmd = [sys.executable, "-m", "stream_engine.cli", "stream", "--input", "none", "--no-vmc", "--quiet"]
    cmd += ["--port", str(port), "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(root), env=env)
    try:
        wait_health(server, port)
    finally:
        stop_server(server)


def trial(
    variant: str,
    streams: int,
    duration: float,
    soak: Path,
    port: int,
    root: Path = REPO,
    chunk_ms: int = 40,
    server_cpu: int | None = None,
    probe_cpu: int | None = None,
    model: str = "default",
) -> dict[str, Any]:
    """One soak of `variant` served from the source tree `root` (this checkout, or a baseline's)."""
    config = REPO / "benchmarks" / "configs" / "soak100.json"
    cmd = [sys.executable, "-m", "stream_engine.cli", "stream", "--input", "none", "--no-vmc", "--quiet"]
    flags = ["--threads", "1"] if variant.startswith("baseline") else VARIANTS[variant]  # no --workers before it
    cmd += ["--config", str(config), "--port", str(port), *flags]
    pythonpath = str(root)
    if model == "zero":  # the tests' ZeroCostRunner: what remains is the server's own CPU (ingest, engine, sending)
        cmd += ["--model", "python:fakes:ZeroCostRunner"]
        pythonpath += os.pathsep + str(REPO / "tests")
    log = tempfile.NamedTemporaryFile("w+", prefix="msync-soak-", suffix=".log", delete=False)
    env = {**os.environ, "PYTHONPATH": pythonpath}
    server = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(root), env=env, preexec_fn=_pinned(server_cpu)
    )
    try:
        wait_health(server, port, workers=workers_of(flags))  # each worker listens once its model is loaded
        time.sleep(0.5)
        pids = process_tree(server.pid)
        u0 = _usage(pids)
        up0 = _uptime()
        t0 = time.monotonic()
        out = Path(tempfile.mkstemp(prefix="soak-", suffix=".json")[1])
        probe = subprocess.run(
            [sys.executable, str(soak), "--port", str(port), "--streams", str(streams)]
            + ["--duration", str(duration), "--chunk-ms", str(chunk_ms), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=duration + 120,
            preexec_fn=_pinned(probe_cpu),
        )
        wall = time.monotonic() - t0
        pids = process_tree(server.pid)
        u1 = _usage(pids)
        batch = _mean_batch(port)
        if probe.returncode != 0:
            raise RuntimeError(f"ws_soak failed: {probe.stderr[-2000:]}")
        res = json.loads(out.read_text())
        out.unlink()
    finally:
        stop_server(server)
    log.seek(0)
    errors = [line for line in log.read().splitlines() if re.search(r"ERROR|Traceback", line)][:5]
    return {
        "variant": variant,
        "streams": streams,
        "duration_s": duration,
        "chunk_ms": chunk_ms,
        "model": model,
        "server_cpu": server_cpu,
        "probe_cpu": probe_cpu,
        "server_processes": len(pids),
        "uptime_before": up0,
        "uptime_after": _uptime(),
        "lateness_ms": res["lateness_ms"],
        "engine_latency_ms": res["engine_latency_ms"],
        "lateness_p99_first_vs_last_third_ms": res["lateness_p99_first_vs_last_third_ms"],
        "frames_received": res["frames_received"],
        "frames_expected": res["frames_expected"],
        "seq_missing_total": res["seq_missing_total"],
        "seq_dup_total": res["seq_dup_total"],
        "streams_with_errors": len(res["streams_with_errors"]),
        "server_rss_mib_start_end": [u0["rss_mib"], u1["rss_mib"]],
        "server_rss_growth": round(u1["rss_mib"] / max(u0["rss_mib"], 1e-9) - 1, 4),
        "server_cpu_cores": round((u1["cpu_s"] - u0["cpu_s"]) / wall, 2),
        "server_cpu_us_per_frame": round(1e6 * (u1["cpu_s"] - u0["cpu_s"]) / max(1, res["frames_received"]), 1),
        "mean_batch_streams": batch,
        "server_sys_us_per_frame": round(1e6 * (u1["sys_s"] - u0["sys_s"]) / max(1, res["frames_received"]), 1),
        "probe_cpu_cores": res["probe_cpu_cores"],
        "loadavg_start_end": res["loadavg_start_end"],
        "realtime_pass": res["realtime_pass"],
        "server_log_errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, nargs="+", default=[20, 100])
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS)[:3], choices=list(VARIANTS))
    p.add_argument("--soak", default=str(REPO.parent / "shared" / "tools" / "ws_soak.py"))
    p.add_argument("--port", type=int, default=0, help="server port (0: a free one per trial)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="ws_soak_workers", help="report file name (NAME.json, NAME.md)")
    p.add_argument(
        "--baseline-ref", nargs="+", default=[], help="also soak these git revisions' engines (one process each)"
    )
    p.add_argument("--rounds", type=int, default=1, help="trials per (streams, variant), interleaved")
    p.add_argument("--chunk-ms", type=int, default=40, help="audio per client message (the probe's --chunk-ms)")
    p.add_argument("--server-cpu", type=int, help="pin the server to this CPU")
    p.add_argument("--probe-cpu", type=int, help="pin the probe to this CPU")
    p.add_argument(
        "--model",
        choices=["default", "zero"],
        default="default",
        help="the shipped default model, or a zero-cost one (tests/fakes.py ZeroCostRunner: the server's own CPU)",
    )
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from benchmarks.common import machine_info, write_report

    result: dict[str, Any] = {
        "machine": machine_info(),
        "uptime_start": _uptime(),
        "command": "python -m benchmarks.ws_soak_workers " + " ".join(argv if argv is not None else sys.argv[1:]),
        "trials": [],
    }
    variants = [(v, REPO) for v in args.variants]
    if args.baseline_ref:
        from benchmarks.common import baseline_tree

        one = len(args.baseline_ref) == 1
        for i, ref in enumerate(args.baseline_ref):
            variants.insert(i, ("baseline-workers1" if one else f"baseline-{ref}", baseline_tree(ref)))
        result["baseline_ref"] = args.baseline_ref[0] if one else args.baseline_ref
    for _, root in variants:
        if root != REPO:
            _warm_up(root, args.port or free_port())
    for streams in args.streams:
        for r in range(args.rounds):
            for variant, root in variants:
                t = trial(
                    variant,
                    streams,
                    args.duration,
                    Path(args.soak),
                    args.port or free_port(),
                    root,
                    args.chunk_ms,
                    args.server_cpu,
                    args.probe_cpu,
                    args.model,
                )
                t["round"] = r
                print(json.dumps(t), flush=True)
                result["trials"].append(t)
    result["uptime_end"] = _uptime()
    write_report(args.out, args.name, result, _markdown(result))
    for _, root in variants:
        if root != REPO:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _markdown(result: dict) -> str:
    m = result["machine"]
    variants = ", ".join(dict.fromkeys(t["variant"] for t in result["trials"]))
    t0 = result["trials"][0] if result["trials"] else {}
    pins = f"server pinned to CPU {t0.get('server_cpu')}, probe to CPU {t0.get('probe_cpu')}"
    lines = [
        f"# Loopback WebSocket soak: {variants} (one run)",
        "",
        f"`{result['command']}`  ",
        f"CPU: {m['cpu']} ({m['logical_cpus']} logical). Other jobs may share the machine: read the load averages "
        f"(`uptime` at start: {result['uptime_start']}; at end: {result['uptime_end']}). "
        f"Model: {t0.get('model', 'default')}; {t0.get('chunk_ms', 40)} ms of audio per client message; "
        f"{pins if t0.get('server_cpu') is not None else 'not pinned'}.",
        "",
        "| streams | variant | lateness p50 / p99 ms | engine p99 ms | received / expected | lost | dup | "
        "RSS MiB start → end | server CPU (cores) | server CPU µs/frame | probe CPU | load 1 min start/end | real time |",
        "|---:|---|---|---:|---|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for t in result["trials"]:
        lat = t["lateness_ms"]
        rss = t["server_rss_mib_start_end"]
        lines.append(
            f"| {t['streams']} | {t['variant']} | {lat['p50']} / {lat['p99']} | {t['engine_latency_ms']['p99']} | "
            f"{t['frames_received']} / {t['frames_expected']} | {t['seq_missing_total']} | {t['seq_dup_total']} | "
            f"{rss[0]} → {rss[1]} ({100 * t['server_rss_growth']:+.0f} %) | {t['server_cpu_cores']} | "
            f"{t['server_cpu_us_per_frame']} | "
            f"{t['probe_cpu_cores']} | {t['loadavg_start_end'][0]} / {t['loadavg_start_end'][1]} | "
            f"{'yes' if t['realtime_pass'] else 'no'} |"
        )
    lines += _summary(result["trials"])
    lines += [
        "",
        "Lateness: client arrival - arrival of the last audio sample the frame needs (same host clock), after a "
        "5 s warm-up; the algorithmic look-ahead is not included. Target (issue 14): p99 < 40 ms, 0 lost, RSS < +10 %. "
        "Server CPU per frame = CPU of every server process over the soak ÷ frames the probe received (audio "
        "ingest, engine, signals and sending all included); lost = seq gaps the probe saw. Received can exceed "
        "expected: the probe expects one frame per 40 ms of audio it sent, and the server also sends the frames "
        "of the silence it continues a stream with when its audio stops (the stall fill at the end of the run).",
    ]
    return "\n".join(lines) + "\n"


def _median_or_dash(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{float(np.median(known)):.1f}" if known else "-"


def _summary(trials: list[dict]) -> list[str]:
    """Medians over the rounds per (streams, variant), and server CPU per frame as a ratio to the first variant
    of the run (the baseline when there is one)."""
    rounds = max((t.get("round", 0) for t in trials), default=0) + 1
    groups: dict[tuple[int, str], list[dict]] = {}
    for t in trials:
        groups.setdefault((t["streams"], t["variant"]), []).append(t)
    lines = [
        "",
        f"Medians over {rounds} interleaved round(s); the ratio is server CPU per frame ÷ that of the first variant "
        "at the same stream count.",
        "",
        "| streams | variant | server CPU µs/frame (median) | of it kernel | ratio | lateness p99 ms (median) | "
        "lost | dup | streams per step (median) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    first: dict[int, float] = {}
    for (streams, variant), ts in groups.items():
        us = float(np.median([t["server_cpu_us_per_frame"] for t in ts]))
        p99 = float(np.median([t["lateness_ms"]["p99"] for t in ts]))
        kernel = float(np.median([t.get("server_sys_us_per_frame", float("nan")) for t in ts]))
        base = first.setdefault(streams, us)
        lines.append(
            f"| {streams} | {variant} | {us:.1f} | {kernel:.1f} | {us / base:.2f} | {p99:.2f} | "
            f"{sum(t['seq_missing_total'] for t in ts)} | {sum(t['seq_dup_total'] for t in ts)} | "
            f"{_median_or_dash([t.get('mean_batch_streams') for t in ts])} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
