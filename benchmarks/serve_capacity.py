"""Real-time streams `msync serve` holds against its replica count, on this machine.

For each replica count R, streams N go up a ladder; each run opens N /audio streams, sends each its audio in
real time (40 ms chunks, random phase), and measures every frame's lateness: its arrival minus the send time
of the chunk that completes its audio (frame index + look-ahead). N is held when the p99 lateness over all
frames is below 40 ms (one frame period) and every frame came; the first second of each stream is left out of the lateness. The CPU time of the Ray proxy, the replicas
and the load generator (this process) is read from /proc for each run, so the figures for a fleet plan
(proxy CPU per stream, replica CPU per stream) come from the same runs.

Run inside a private network namespace (Ray advertises the host's external address otherwise):

    unshare -n -p -f --mount-proc bash -c 'ip link set lo up && exec python -m benchmarks.serve_capacity'

Writes benchmarks/results/serve_capacity.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP_FRAMES = 25


def make_audio(i: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(1000 + i)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * (3.0 + 0.3 * (i % 7)) * t) ** 2
    x = 0.3 * env * (0.6 * np.sin(2 * np.pi * (140 + 10 * (i % 9)) * t) + 0.4 * rng.standard_normal(n))
    return np.clip(x * 32767, -32768, 32767).astype(np.int16)


def cpu_by_role() -> dict[str, float]:
    """CPU seconds so far of the Ray proxy, the replicas, and everything else Ray runs (from /proc)."""
    out = {"proxy": 0.0, "replicas": 0.0, "ray_other": 0.0}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        if "--baseline-server" in cmd:
            out["replicas"] += cpu  # the no-Ray row: the same replica code in one uvicorn process
        elif "ProxyActor" in cmd:
            out["proxy"] += cpu
        elif "ServeReplica" in cmd:
            out["replicas"] += cpu
        elif "ray" in cmd and int(pid) != os.getpid():
            out["ray_other"] += cpu
    return out


async def run_streams(url: str, n: int, seconds: float) -> dict:
    from stream_engine.serve.client import stream_audio

    opened = 0
    all_open = asyncio.Event()
    rng = random.Random(n)

    async def after_ready(ready: dict) -> None:
        nonlocal opened
        opened += 1
        if opened == n:
            all_open.set()
        await all_open.wait()
        await asyncio.sleep(rng.random() * 0.04)  # random phase within a frame

    async def one(i: int):
        await asyncio.sleep(0.02 * i)  # one upgrade at a time, so the router sees the replicas' counts
        return await stream_audio(
            url, f"bench-{n}-{i}", make_audio(i, seconds), realtime=True, after_ready=after_ready, open_timeout_s=60
        )

    cpu0, t0, self0 = cpu_by_role(), time.monotonic(), time.process_time()
    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    wall = time.monotonic() - t0
    cpu1, self1 = cpu_by_role(), time.process_time()
    ok = [r for r in results if not isinstance(r, BaseException)]
    # frames of the first second of each stream are left out (opening and first steps of a new stream)
    late = np.concatenate([r.lateness_ms[WARMUP_FRAMES:] for r in ok]) if ok else np.zeros(0)
    expected = int(np.ceil(seconds * 25))
    complete = len(ok) == n and all(len(r.indices) == expected and r.close_code == 1000 for r in ok)
    per_replica: dict[str, int] = {}
    for r in ok:
        per_replica[r.ready.get("replica", "?")] = per_replica.get(r.ready.get("replica", "?"), 0) + 1
    p99 = float(np.percentile(late, 99)) if late.size else float("inf")
    return {
        "streams": n,
        "complete": complete,
        "failed_connections": n - len(ok),
        "lateness_p50_ms": float(np.percentile(late, 50)) if late.size else None,
        "lateness_p99_ms": p99,
        "lateness_max_ms": float(late.max()) if late.size else None,
        "held": bool(complete and p99 < 40.0),
        "wall_s": wall,
        "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu0} | {"load_generator": self1 - self0},
        "streams_per_replica": sorted(per_replica.values()),
    }


def baseline_server(port: int, precision: str, capacity: int) -> None:
    """One replica's code in one process behind uvicorn, no Ray (the baseline row)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    from stream_engine.serve.app import MsyncReplica
    from stream_engine.serve.config import ServeConfig

    replica = MsyncReplica(ServeConfig(precision=precision, streams_per_replica=capacity, seed=1), "baseline#b")

    async def audio(ws) -> None:
        await replica.ensure_started()
        await replica.server.serve_audio(ws)

    api = Starlette(routes=[WebSocketRoute("/audio", audio)])
    uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


def run_baseline(ladder: list[int], seconds: float, precision: str) -> list[dict]:
    import subprocess
    import sys

    port = 8123
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.serve_capacity",
            "--baseline-server",
            str(port),
            "--precision",
            precision,
            "--ladder",
            ",".join(map(str, ladder)),
        ]
    )
    rows = []
    try:
        import socket

        for _ in range(300):  # until it listens (model load under load can take a while)
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        for n in ladder:
            row = {
                "replicas": "no Ray (uvicorn, 1 process)",
                **asyncio.run(run_streams(f"ws://127.0.0.1:{port}/audio", n, seconds)),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not row["held"]:
                break
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--no-baseline", action="store_true", help="skip the no-Ray baseline row")
    p.add_argument("--replicas", default="1,2,3")
    p.add_argument("--ladder", default="4,8,16,24,32,48,64,96")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--precision", default="auto")
    p.add_argument("--out", default=str(RESULTS / "serve_capacity"))
    args = p.parse_args()
    ladder = [int(x) for x in args.ladder.split(",")]
    if args.baseline_server:
        baseline_server(args.baseline_server, args.precision, max(ladder))
        return 0
    import ray
    from ray import serve

    from stream_engine.serve.app import build_app
    from stream_engine.serve.cli import start
    from stream_engine.serve.config import ServeConfig

    load_before = os.getloadavg()
    rows = [] if args.no_baseline else run_baseline(ladder, args.seconds, args.precision)
    base = ServeConfig(precision=args.precision, streams_per_replica=max(ladder), cpus_per_replica=0.1, seed=1)
    url = None
    try:
        for R in (int(x) for x in args.replicas.split(",")):
            cfg = dataclasses.replace(base, replicas=R)
            if url is None:
                url = start(cfg, local=True)
            else:
                serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/", blocking=False)
            time.sleep(3.0)
            for n in ladder:
                row = {"replicas": R, **asyncio.run(run_streams(url, n, args.seconds))}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if not row["held"]:
                    break
    finally:
        serve.shutdown()
        ray.shutdown()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    meta = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "python": platform.python_version(),
        "precision": args.precision,
        "seconds_per_stream": args.seconds,
        "criterion": "p99 lateness < 40 ms and every frame delivered",
    }
    best: dict[str, int] = {}
    for r in rows:
        if r["held"]:
            best[str(r["replicas"])] = max(best.get(str(r["replicas"]), 0), r["streams"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "held": best, "rows": rows}, indent=1))
    lines = [
        f"# msync serve: real-time streams held against replicas ({cpu}, {os.cpu_count()} cores)",
        "",
        f"Load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (a shared machine). "
        f"Precision {args.precision}; {args.seconds:g} s of audio per stream in real time; held = "
        "p99 lateness < 40 ms (after each stream's first second) and every frame delivered. CPU seconds per run "
        "from /proc. The load generator, the proxy and the replicas share the machine's cores.",
        "",
        "| replicas | streams | held | p50 ms | p99 ms | max ms | proxy CPU s | replicas CPU s | "
        "load generator CPU s | streams per replica |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["cpu_s"]
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        lines.append(
            f"| {r['replicas']} | {r['streams']} | {'yes' if r['held'] else 'no'} | "
            f"{fmt(r['lateness_p50_ms'])} | {fmt(r['lateness_p99_ms'])} | {fmt(r['lateness_max_ms'])} | "
            f"{c['proxy']:.1f} | {c['replicas']:.1f} | {c['load_generator']:.1f} | "
            f"{r['streams_per_replica']} |"
        )
    lines += ["", "Held: " + ", ".join(f"{R}: {n} streams" for R, n in best.items())]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    raise SystemExit(main())
