"""What fan-out to WebSocket clients costs the server per published batch: before/after in one run.

    python -m benchmarks.ws_fanout --baseline-ref REF [--streams 100 300] [--layouts "1 per stream" "4 all"]
                                   [--seconds 8] [--out benchmarks/results]

A server process (pinned to CPU 0) runs the engine with the zero-cost runner (tests/fakes.py) and `--streams`
real-time streams fed in-process (40 ms chunks on the wall clock), and `WebSocketServer` on loopback; a client
process (pinned to CPU 1) holds the subscribers: minimal raw-socket WebSocket readers that answer the
server's pings (its send window) and count data messages, so the client side costs little. Layouts:

  "1 per stream": one client per stream, each subscribed to its own stream (the soak's shape: the old fan-out
                  visited every (frame, client) pair, 100 x 100 per batch);
  "4 all":        4 viewers, each subscribed to every stream (400 deliveries per 100-stream batch; 20 viewers
                  of 100 streams are 50,000 messages/s, more than the reader process gets of a shared core).

Measured per layout and variant ("current" = this checkout, "baseline" = `git archive REF stream_engine`),
trials interleaved: CPU time spent inside `send_frames` per published batch (thread time, mean and p99) and
per delivered frame, the server process's CPU per second, and deliveries received vs expected. Writes
ws_fanout.json/.md with the CPU model and load average.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"


# ------------------------------------------------------------------------------------------ client process


def run_clients(port: int, subscriptions: list[str], seconds: float) -> dict:
    """Connect one raw WebSocket reader per entry of `subscriptions` (a `streams=` query value, "" = every
    stream); answer pings; count data messages for `seconds` after all are connected."""
    import asyncio

    async def one(query: str, counts: list[int], i: int, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        key = base64.b64encode(os.urandom(16)).decode()
        path = "/frames?format=binary" + (f"&streams={query}" if query else "")
        req = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, req.encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += await loop.sock_recv(sock, 65536)
        head, buf = buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"handshake refused: {head[:200]!r}")
        counts[i] = -1  # the hello is the first message
        try:
            while not stop.is_set():
                pos = 0
                while True:  # parse every whole (unmasked, server-sent) frame in the buffer
                    if len(buf) - pos < 2:
                        break
                    b0, b1 = buf[pos], buf[pos + 1] & 0x7F
                    hdr = 2
                    if b1 == 126:
                        if len(buf) - pos < 4:
                            break
                        b1 = struct.unpack_from("!H", buf, pos + 2)[0]
                        hdr = 4
                    elif b1 == 127:
                        if len(buf) - pos < 10:
                            break
                        b1 = struct.unpack_from("!Q", buf, pos + 2)[0]
                        hdr = 10
                    if len(buf) - pos < hdr + b1:
                        break
                    opcode = b0 & 0x0F
                    if opcode in (1, 2):
                        counts[i] += 1
                    elif opcode == 9:  # ping -> pong with the same payload (zero mask key)
                        payload = buf[pos + hdr : pos + hdr + b1]
                        await loop.sock_sendall(sock, bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                    pos += hdr + b1
                buf = buf[pos:]
                data = await loop.sock_recv(sock, 1 << 20)
                if not data:
                    return
                buf += data
        finally:
            sock.close()

    async def main() -> dict:
        counts = [0] * len(subscriptions)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(one(q, counts, i, stop)) for i, q in enumerate(subscriptions)]
        await asyncio.sleep(seconds)
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"received": counts}

    return asyncio.run(main())


# ------------------------------------------------------------------------------------------ server process


def run_server_trial(spec: dict) -> dict:
    import asyncio

    import numpy as np

    sys.path.insert(0, str(TESTS))
    from stream_engine.engine import Engine, EngineConfig
    from stream_engine.outputs.websocket import ServerConfig, WebSocketServer

    from fakes import ZeroCostRunner, speechlike

    n, seconds, layout = spec["streams"], spec["seconds"], spec["layout"]
    ids = [f"s{i}" for i in range(n)]
    subs = ids if layout == "1 per stream" else [""] * int(layout.split()[0])
    audio = speechlike(int((seconds + 4) * 16000), seed=1)
    chunk = 640
    call_ns: list[int] = []
    delivered = [0]

    async def main() -> dict:
        cfg = EngineConfig(max_streams=max(64, n), signals=False, stall_ms=0)
        async with Engine(ZeroCostRunner(lookahead_frames=2), cfg) as engine:
            server = WebSocketServer(engine, ServerConfig(port=0, max_clients=len(subs) + 8, ping_interval_s=30))
            await server.start()

            def timed(inner: Any) -> Any:
                def call(frames_or_batch: Any) -> None:
                    t0 = time.thread_time_ns()
                    inner(frames_or_batch)
                    call_ns.append(time.thread_time_ns() - t0)
                    delivered[0] += len(frames_or_batch)

                return call

            server.send_frames = timed(server.send_frames)  # type: ignore[method-assign]
            if hasattr(server, "send_batch"):  # servers that take a published step as columns
                server.send_batch = timed(server.send_batch)  # type: ignore[method-assign]
            engine.add_sink(server)
            for sid in ids:
                engine.open_stream(sid)
            client_s = seconds + 3.0
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--clients",
                json.dumps([server.port, subs, client_s]),
            ]
            if spec.get("pin"):
                cmd = ["taskset", "-c", "1", *cmd]
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, cwd=str(REPO))
            while server.frame_clients < len(subs):
                await asyncio.sleep(0.05)
            t0 = time.monotonic_ns()
            pos, tick = 0, 0
            measured_from = None
            c0 = 0.0
            while pos + chunk <= (seconds + 1.0) * 16000:
                if tick == 25:  # 1 s warm-up
                    measured_from = (len(call_ns), delivered[0])
                    c0 = time.process_time()
                    t_meas = time.monotonic_ns()
                tick += 1
                delay = t0 + tick * 40_000_000 - time.monotonic_ns()
                if delay > 0:
                    await asyncio.sleep(delay / 1e9)
                for sid in ids:
                    engine.push_audio(sid, audio[pos : pos + chunk])
                pos += chunk
            await asyncio.sleep(0.3)
            cpu_s = time.process_time() - c0
            wall_s = (time.monotonic_ns() - t_meas) / 1e9
            assert measured_from is not None
            calls = np.array(call_ns[measured_from[0] :], dtype=np.float64) / 1e3
            frames_published = delivered[0] - measured_from[1]
            out_raw, _ = await proc.communicate()
            received = json.loads(out_raw.decode().strip().splitlines()[-1])["received"]
            expected_total = (delivered[0]) * (1 if layout == "1 per stream" else len(subs))
            await server.aclose()
            per_delivery = frames_published * (1 if layout == "1 per stream" else len(subs))
            return {
                **spec,
                "batches": int(calls.size),
                "send_us_per_batch_mean": float(calls.mean()),
                "send_us_per_batch_p99": float(np.percentile(calls, 99)),
                "send_us_per_delivery": float(calls.sum() / max(1, per_delivery)),
                "server_cpu_per_s": cpu_s / wall_s,
                "deliveries_received": int(sum(received)),
                "deliveries_expected": int(expected_total),
                "dropped_clients": server.dropped_clients,
            }

    return asyncio.run(main())


# ------------------------------------------------------------------------------------------ parent


def _trial(root: Path, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--trial", json.dumps(spec)]
    if spec.get("pin"):
        cmd = ["taskset", "-c", "0", *cmd]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=str(root))
    if r.returncode != 0:
        raise RuntimeError(f"trial {spec} failed: {r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--baseline-ref", help="git revision whose engine is measured beside this checkout's")
    p.add_argument("--streams", type=int, nargs="+", default=[100])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--layouts", nargs="+", default=["1 per stream", "4 all"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-pin", action="store_true", help="do not pin server and clients to CPUs 0 and 1")
    p.add_argument("--trial", help=argparse.SUPPRESS)
    p.add_argument("--clients", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.clients:
        port, subs, seconds = json.loads(args.clients)
        print(json.dumps(run_clients(port, subs, seconds)))
        return 0
    if args.trial:
        print(json.dumps(run_server_trial(json.loads(args.trial))))
        return 0

    sys.path.insert(0, str(REPO))
    from benchmarks.common import baseline_tree, machine_info, write_report

    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    variants = {"current": REPO}
    if args.baseline_ref:
        variants["baseline"] = baseline_tree(args.baseline_ref)
    trials = []
    for _ in range(args.repeats):
        for streams, layout in ((s, lay) for s in args.streams for lay in args.layouts):
            for name, root in variants.items():
                spec = {"variant": name, "layout": layout, "streams": streams, "seconds": args.seconds}
                spec["pin"] = not args.no_pin
                t = _trial(root, spec)
                print(json.dumps(t), flush=True)
                trials.append(t)
    result = {
        "machine": machine_info(),
        "uptime_before": uptime_before,
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "baseline_ref": args.baseline_ref,
        "command": "python -m benchmarks.ws_fanout " + " ".join(argv if argv is not None else sys.argv[1:]),
        "trials": trials,
    }
    write_report(args.out, "ws_fanout", result, _markdown(result))
    if "baseline" in variants:
        shutil.rmtree(variants["baseline"], ignore_errors=True)
    return 0


def _markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# WebSocket fan-out: server CPU per published batch, before/after in one run",
        "",
        f"`{result['command']}`  ",
        f"CPU: {m['cpu']} ({m['logical_cpus']} logical); `uptime` before: {result['uptime_before']}; "
        f"after: {result['uptime_after']}. Server pinned to CPU 0, clients to CPU 1 (shared machine: other jobs "
        "run on both).",
        "",
        "| streams | layout | variant | send_frames µs/batch mean | p99 | µs/delivery | server CPU (cores) | received/expected |",
        "|---:|---|---|---:|---:|---:|---:|---|",
    ]
    by: dict[tuple[int, str, str], list[dict]] = {}
    for t in result["trials"]:
        by.setdefault((t["streams"], t["layout"], t["variant"]), []).append(t)
        lines.append(
            f"| {t['streams']} | {t['layout']} | {t['variant']} | {t['send_us_per_batch_mean']:.0f} | {t['send_us_per_batch_p99']:.0f} "
            f"| {t['send_us_per_delivery']:.2f} | {t['server_cpu_per_s']:.2f} | "
            f"{t['deliveries_received']}/{t['deliveries_expected']} |"
        )
    lines += [
        "",
        "| streams | layout | send_frames CPU baseline ÷ current | server CPU baseline ÷ current |",
        "|---:|---|---:|---:|",
    ]
    for streams, layout in dict.fromkeys((t["streams"], t["layout"]) for t in result["trials"]):
        cur, base = by.get((streams, layout, "current")), by.get((streams, layout, "baseline"))
        if cur and base:

            def mean(ts: list[dict], k: str) -> float:
                return sum(t[k] for t in ts) / len(ts)

            lines.append(
                f"| {streams} | {layout} | ×{mean(base, 'send_us_per_batch_mean') / mean(cur, 'send_us_per_batch_mean'):.2f} "
                f"| ×{mean(base, 'server_cpu_per_s') / mean(cur, 'server_cpu_per_s'):.2f} |"
            )
    lines += [
        "",
        "received < expected means the client process (raw-socket readers on a shared core) fell behind and the "
        "server served it from its latest-wins queue (frames dropped by design), so that row measures the "
        "backlogged path.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
