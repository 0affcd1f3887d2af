"""End-to-end latency of the streaming engine, with a real loopback WebSocket client and OSC receiver.

    python -m benchmarks.e2e_latency --out benchmarks/results [--model X.onnx] [--runners fake onnx] [--quick]

Four measurements per runner (the deterministic test fake, and an exported ONNX step when given or found):

1. Loopback latency: `msync stream --input none` runs in a subprocess; this process streams speech-like audio
   over WebSocket /audio in real time (20 ms chunks), receives binary frames on /frames and raw-landmark OSC
   bundles on UDP. Engine-added latency = frame arrival at the client - arrival at the engine of the last
   audio sample the frame depends on (both `time.monotonic_ns`, system-wide on Linux), reported beside the
   algorithmic latency ((L + 1) frames: look-ahead + the frame's own 40 ms). Also: stage breakdown, client
   round trip (chunk sent -> frame received, WS and OSC), inter-frame jitter at the client.
2. Drift: a 30-minute stream played through the engine at an accelerated sample clock (in-process, no
   sockets); frame times must stay exactly on the sample clock (pts = index * 40 ms, frame count exact) and
   the publish-vs-schedule offset must not grow.
3. Capacity: the process is pinned to one CPU core; N streams each receive 20 ms chunks in real time; the
   largest N whose frames all meet the 40 ms deadline (p99 engine latency < 40 ms, <= 0.1 % misses) is
   reported (in-process feeding and a counting sink that serialises every frame: sockets excluded).
4. Memory per stream: RSS growth while opening many streams (state + session + signal extractor).

Writes e2e_latency.json, e2e_latency.md and e2e_latency.png under --out. Timings depend on machine load; the
environment block (CPU, load average) is part of the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
FRAME_NS = 40_000_000


def _fake_runner():
    sys.path.insert(0, str(TESTS))
    from fakes import FakeRunner

    return FakeRunner(lookahead_frames=2)


def _runner(kind: str, model: str | None):
    if kind == "fake":
        return _fake_runner()
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    if model is None:
        raise ValueError("the onnx runner needs a model path")
    return OnnxStepRunner(model, threads=1)


def _speech(seconds: float, rate: int = 16000) -> np.ndarray:
    sys.path.insert(0, str(TESTS))
    from fakes import speechlike

    return speechlike(int(seconds * rate), seed=1, sample_rate_hz=rate)


def _free_port(kind=socket.SOCK_STREAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -------------------------------------------------------------------------------- 1. loopback latency


class _OscReceiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.arrivals: dict[int, int] = {}

    def datagram_received(self, data: bytes, addr) -> None:
        now = time.monotonic_ns()
        from pythonosc.osc_bundle import OscBundle

        if not data.startswith(b"#bundle"):
            return  # stream events are plain messages
        try:
            bundle = OscBundle(data)
        except Exception:
            return
        for i in range(bundle.num_contents):
            m = bundle.content(i)
            if getattr(m, "address", "").endswith("/frame"):
                self.arrivals.setdefault(int(m.params[1]), now)


async def _loopback_client(port: int, osc: _OscReceiver, seconds: float, chunk_ms: float) -> dict:
    from websockets.asyncio.client import connect

    from stream_engine.clock import RealtimeSchedule
    from stream_engine.outputs.serializers import decode_binary

    rate = 16000
    audio = _speech(seconds)
    chunk = int(rate * chunk_ms / 1000)
    frames: list[tuple[dict, int]] = []
    async with (
        connect(f"ws://127.0.0.1:{port}/frames?format=binary", compression=None) as fws,
        connect(f"ws://127.0.0.1:{port}/audio", compression=None) as aws,
    ):
        hello = json.loads(await fws.recv())

        async def receive():
            async for m in fws:
                if isinstance(m, bytes):
                    frames.append((decode_binary(m), time.monotonic_ns()))

        receiver = asyncio.create_task(receive())
        await aws.send(
            json.dumps(
                {"type": "hello", "v": 1, "sample_rate_hz": rate, "channels": 1, "dtype": "int16", "stream": "bench"}
            )
        )
        json.loads(await aws.recv())
        sched = RealtimeSchedule(rate, time.monotonic_ns())
        sends: list[tuple[int, int]] = []  # (end sample exclusive, send time)
        for start in range(0, audio.size, chunk):
            piece = audio[start : start + chunk]
            delay = sched.due_ns(start + piece.size) - time.monotonic_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            sends.append((start + piece.size, time.monotonic_ns()))
            await aws.send((piece * 32767).astype("<i2").tobytes())
        await aws.send(json.dumps({"type": "end"}))
        async for m in aws:
            if isinstance(m, str) and json.loads(m).get("type") == "ended":
                break
        await asyncio.sleep(0.3)
        receiver.cancel()
    return {"hello": hello, "frames": frames, "sends": sends}


def loopback(kind: str, model: str | None, seconds: float, chunk_ms: float = 20.0) -> dict:
    from benchmarks.common import summarise

    port, osc_port = _free_port(), _free_port(socket.SOCK_DGRAM)
    spec = "python:fakes:FakeRunner" if kind == "fake" else model
    if spec is None:
        raise ValueError("the onnx runner needs a model path")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream_engine.cli",
            "stream",
            "--model",
            spec,
            "--input",
            "none",
            "--port",
            str(port),
            "--no-vmc",
            "--osc",
            f"127.0.0.1:{osc_port}",
            "--quiet",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"engine did not start: {server.stderr.read()[-2000:] if server.stderr else ''}"
                    ) from None
                time.sleep(0.2)

        async def main():
            loop = asyncio.get_running_loop()
            osc = _OscReceiver()
            transport, _ = await loop.create_datagram_endpoint(lambda: osc, local_addr=("127.0.0.1", osc_port))
            try:
                return await _loopback_client(port, osc, seconds, chunk_ms), osc
            finally:
                transport.close()

        result, osc = asyncio.run(main())
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    frames, sends, hello = result["frames"], result["sends"], result["hello"]
    L = hello["latency"]["lookahead_frames"]
    ends = np.array([e for e, _ in sends])
    send_ns = np.array([t for _, t in sends])

    def sent_at(sample: int) -> int:  # when the chunk carrying this sample was sent
        return int(send_ns[min(int(np.searchsorted(ends, sample, side="right")), len(send_ns) - 1)])

    real = [(f, t) for f, t in frames if (f["index"] + L + 1) * 640 <= ends[-1]]  # exclude the flushed tail
    eng = [(t - f["t"]["audio_ready_ns"]) / 1e9 for f, t in real]
    stages = {
        "wait_for_step_ms": summarise([(f["t"]["infer_start_ns"] - f["t"]["audio_ready_ns"]) / 1e9 for f, _ in real]),
        "model_step_ms": summarise([(f["t"]["infer_end_ns"] - f["t"]["infer_start_ns"]) / 1e9 for f, _ in real]),
        "commit_and_signals_ms": summarise([(f["t"]["publish_ns"] - f["t"]["infer_end_ns"]) / 1e9 for f, _ in real]),
        "queue_and_encode_ms": summarise([(f["t"]["sent_ns"] - f["t"]["publish_ns"]) / 1e9 for f, _ in real]),
        "socket_to_client_ms": summarise([(t - f["t"]["sent_ns"]) / 1e9 for f, t in real]),
    }
    rtt = [(t - sent_at((f["index"] + L + 1) * 640 - 1)) / 1e9 for f, t in real]
    by_seq = {f["seq"]: f for f, _ in real}
    osc_rtt = [
        (t - sent_at((by_seq[s]["index"] + L + 1) * 640 - 1)) / 1e9 for s, t in osc.arrivals.items() if s in by_seq
    ]
    arrivals = np.array([t for _, t in real], dtype=np.float64) / 1e6
    intervals = np.diff(arrivals)
    return {
        "runner": kind,
        "seconds": seconds,
        "chunk_ms": chunk_ms,
        "frames": len(real),
        "frames_expected": int(ends[-1] // 640) - L,
        "lookahead_frames": L,
        "algorithmic_latency_ms": hello["latency"]["algorithmic_latency_ms"],
        "engine_added_ms": summarise(eng),
        "stages": stages,
        "client_round_trip_ws_ms": summarise(rtt),
        "client_round_trip_osc_ms": summarise(osc_rtt) if osc_rtt else None,
        "osc_frames_received": len(osc.arrivals),
        "inter_frame_interval_ms": {
            "mean": float(intervals.mean()),
            "std": float(intervals.std()),
            "p99_abs_dev_from_40": float(np.percentile(np.abs(intervals - 40.0), 99)),
        },
        "_eng_samples_ms": [v * 1e3 for v in eng],
        "_intervals_ms": intervals.tolist(),
    }


# ------------------------------------------------------------------------------------------- 2. drift


def _engine_cost_per_frame_ms(runner, seconds: float = 20.0) -> float:
    """Wall time per frame of one stream pushed through the whole engine (signals included) flat out."""
    from stream_engine.engine import Engine

    audio = _speech(seconds)

    async def main():
        async with Engine(runner) as engine:
            engine.open_stream("cal")
            t = time.perf_counter()
            for pos in range(0, audio.size, 640):
                engine.push_audio("cal", audio[pos : pos + 640])
                await engine.wait_capacity("cal", 0.2)
            engine.flush("cal")
            await engine.wait_drained("cal")
            return (time.perf_counter() - t) * 1e3 / engine.stats.frames

    return asyncio.run(main())


def drift(kind: str, model: str | None, stream_minutes: float, speed: float) -> dict:
    from stream_engine.clock import RealtimeSchedule
    from stream_engine.engine import Engine

    runner = _runner(kind, model)
    rate, spf = 16000, 640
    state = runner.initial_state(1)
    silence = np.zeros((1, spf), np.float32)
    t_step = []
    for _ in range(30):
        t = time.perf_counter()
        _, state = runner.step(silence, state)
        t_step.append(time.perf_counter() - t)
    step_ms = float(np.median(t_step[5:]) * 1e3)
    requested = speed
    frame_ms = _engine_cost_per_frame_ms(runner)
    speed = min(speed, 0.5 * 40.0 / frame_ms)  # keep the engine well ahead of the accelerated clock
    total = int(stream_minutes * 60 * rate)
    chunk = spf  # 40 ms pushes
    base = _speech(10.0)
    records: list[tuple[int, int, int]] = []  # (index, pts_ns, publish_ns)

    class Sink:
        def send_frames(self, frames):
            for f in frames:
                records.append((f.index, f.pts_ns, f.timings.publish_ns))

        def stream_event(self, event):
            pass

        async def aclose(self):
            pass

    async def main():
        async with Engine(runner) as engine:
            engine.add_sink(Sink())
            engine.open_stream("long")
            sched = RealtimeSchedule(rate, engine.clock.now_ns(), speed)
            start = sched.start_ns
            for pos in range(0, total, chunk):
                n = min(chunk, total - pos)
                piece = base[np.arange(pos, pos + n) % base.size]
                delay = sched.due_ns(pos + n) - time.monotonic_ns()
                if delay > 0:
                    await asyncio.sleep(delay / 1e9)
                engine.push_audio("long", piece)
            engine.flush("long")
            await engine.wait_drained("long")
            return start

    t0 = time.monotonic()
    start = asyncio.run(main())
    wall_s = time.monotonic() - t0
    L = runner.contract.lookahead_frames
    idx = np.array([r[0] for r in records])
    pts = np.array([r[1] for r in records], dtype=np.int64)
    pub = np.array([r[2] for r in records], dtype=np.float64)
    exact = bool(np.all(pts == idx.astype(np.int64) * FRAME_NS)) and bool(np.all(np.diff(idx) == 1))
    due_ms = (pts + (L + 1) * FRAME_NS) / 1e6  # stream time at which each frame's audio is complete
    # How long after its audio was complete (on the accelerated schedule) each frame was published, in wall ms:
    # the engine latency of a real-time run. Drift would show as this growing over the stream.
    lag_ms = ((pub - start) - due_ms * 1e6 / speed) / 1e6
    minute = int(60_000 / 40)
    body = lag_ms[: -L - 1] if L + 1 < lag_ms.size else lag_ms  # the flushed tail is published early
    first, last = float(np.median(body[:minute])), float(np.median(body[-minute:]))
    hours = due_ms / 3.6e6
    slope = float(np.polyfit(hours[: body.size], body, 1)[0])
    return {
        "runner": kind,
        "stream_minutes": stream_minutes,
        "speed": speed,
        "speed_requested": requested,
        "step_ms": step_ms,
        "engine_ms_per_frame": frame_ms,
        "wall_s": wall_s,
        "frames": int(idx.size),
        "frames_expected": -(-total // spf),
        "pts_exact_on_sample_clock": exact,
        "latency_first_minute_ms": first,
        "latency_last_minute_ms": last,
        "latency_p99_ms": float(np.percentile(body, 99)),
        "latency_growth_ms_per_stream_hour": slope,
        "_lag_ms": lag_ms[:: max(1, lag_ms.size // 3000)].tolist(),
        "_hours": hours[:: max(1, hours.size // 3000)].tolist(),
    }


# ----------------------------------------------------------------------------------------- 3. capacity


def _capacity_trial(kind: str, model: str | None, streams: int, seconds: float, chunk_ms: float = 20.0) -> dict:
    from stream_engine.engine import Engine, EngineConfig
    from stream_engine.outputs.serializers import encode_binary

    runner = _runner(kind, model)
    lat: list[float] = []

    class Sink:  # counts, and serialises every frame as a WebSocket client would be sent it
        def send_frames(self, frames):
            now = time.monotonic_ns()
            for f in frames:
                encode_binary(f, now)
                lat.append((now - f.timings.audio_ready_ns) / 1e6)

        def stream_event(self, event):
            pass

        async def aclose(self):
            pass

    audio = _speech(seconds + 1.0)
    chunk = int(16000 * chunk_ms / 1000)

    async def main():
        async with Engine(runner, EngineConfig(max_streams=max(64, streams))) as engine:
            engine.add_sink(Sink())
            ids = [engine.open_stream().stream_id for _ in range(streams)]
            t0 = time.monotonic_ns()
            pos, tick = 0, 0
            while pos + chunk <= seconds * 16000:
                tick += 1
                delay = t0 + tick * int(chunk_ms * 1e6) - time.monotonic_ns()
                if delay > 0:
                    await asyncio.sleep(delay / 1e9)
                piece = audio[pos : pos + chunk]
                for sid in ids:
                    engine.push_audio(sid, piece)
                pos += chunk
            await asyncio.sleep(0.3)
            return engine.stats.frames

    frames = asyncio.run(main())
    lat_a = np.array(lat[streams * 5 :]) if len(lat) > streams * 10 else np.array(lat)  # skip warm-up
    expected = streams * (int(seconds * 16000) // 640 - runner.contract.lookahead_frames)
    misses = float(np.mean(lat_a > 40.0)) if lat_a.size else 1.0
    return {
        "streams": streams,
        "frames": int(frames),
        "frames_expected": int(expected),
        "p50_ms": float(np.percentile(lat_a, 50)) if lat_a.size else None,
        "p99_ms": float(np.percentile(lat_a, 99)) if lat_a.size else None,
        "miss_rate": misses,
        "ok": bool(lat_a.size and misses <= 0.001 and np.percentile(lat_a, 99) < 40.0 and frames >= 0.98 * expected),
    }


def capacity(kind: str, model: str | None, seconds: float, max_streams: int) -> dict:
    cpu = sorted(os.sched_getaffinity(0))[-1]
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    trials = []
    try:
        n, good, bad = 1, 0, None
        while n <= max_streams:
            t = _capacity_trial(kind, model, n, seconds)
            trials.append(t)
            if not t["ok"]:
                bad = n
                break
            good = n
            n *= 2
        while bad is not None and bad - good > max(1, good // 8):
            mid = (good + bad) // 2
            t = _capacity_trial(kind, model, mid, seconds)
            trials.append(t)
            good, bad = (mid, bad) if t["ok"] else (good, mid)
    finally:
        os.sched_setaffinity(0, old)
    return {
        "runner": kind,
        "cpu_core": cpu,
        "trial_seconds": seconds,
        "max_realtime_streams_per_core": good,
        "capped_at": max_streams if bad is None else None,
        "trials": sorted(trials, key=lambda t: t["streams"]),
    }


# ------------------------------------------------------------------------------------------- 4. memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory(kind: str, model: str | None, streams: int) -> dict:
    from stream_engine.core import EngineCore
    from stream_engine.session import Session
    from stream_engine.signals import SignalConfig

    runner = _runner(kind, model)
    core = EngineCore(runner, max_batch_streams=64)
    speech = _speech(0.2)
    for i in range(64):  # warm up: the runtime's buffers for a full batch are not per-stream memory
        core.open_stream(f"warm{i}")
        core.push_audio(f"warm{i}", speech[:640], 0)
    core.process()
    ref = np.asarray(runner.contract.reference_face, np.float32)
    sessions = []
    before = _rss_bytes()
    for i in range(streams):
        sid = f"m{i}"
        core.open_stream(sid)
        sessions.append(Session(sid, None, ref, SignalConfig()))
        core.push_audio(sid, speech[:640], 0)
    core.process()  # every stream now holds a stepped state
    after = _rss_bytes()
    state_bytes = sum(v.nbytes for v in runner.initial_state(1).values())
    return {
        "runner": kind,
        "streams": streams,
        "rss_per_stream_kib": (after - before) / streams / 1024,
        "model_state_kib": state_bytes / 1024,
    }


# ---------------------------------------------------------------------------------------------- report


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0, 0]
    for r in runs:
        v = np.sort(r["loopback"]["_eng_samples_ms"])
        ax.plot(
            v,
            np.linspace(0, 1, v.size),
            label=f"{r['runner']} (algorithmic {r['loopback']['algorithmic_latency_ms']:.0f} ms not included)",
        )
    ax.set_xlabel("engine-added latency (ms): last needed sample in -> frame at client")
    ax.set_ylabel("CDF")
    ax.set_xscale("log")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    for r in runs:
        ax.hist(r["loopback"]["_intervals_ms"], bins=60, alpha=0.5, label=r["runner"])
    ax.set_xlabel("inter-frame interval at the client (ms)")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    for r in runs:
        d = r["drift"]
        ax.plot(np.array(d["_hours"]) * 60, d["_lag_ms"], ".", ms=2, label=f"{r['runner']} x{d['speed']:.1f}")
    ax.set_xlabel("stream time (min), played accelerated")
    ax.set_ylabel("publish - audio complete (wall ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    for r in runs:
        c = r["capacity"]
        ax.plot([t["streams"] for t in c["trials"]], [t["p99_ms"] for t in c["trials"]], "o-", label=r["runner"])
    ax.axhline(40.0, color="k", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("real-time streams on one core")
    ax.set_ylabel("p99 engine latency (ms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Engine end-to-end latency",
        "",
        f"Machine: {m.get('cpu')} ({m.get('logical_cpus')} logical CPUs), load avg {m.get('load_avg_1m')}, "
        f"Python {m.get('python')}, onnxruntime {m.get('onnxruntime', '-')}, {m.get('time_utc')}.",
        "",
        "Engine-added latency = frame received by a loopback WebSocket client - arrival at the engine of the "
        "last audio sample the frame needs. The algorithmic latency ((L+1) x 40 ms: look-ahead plus the frame's "
        "own window) comes on top and is listed beside it.",
        "",
        "| runner | L | algorithmic ms | engine p50 / p95 / p99 ms | model step p50 ms | WS round trip p50 / p99 ms "
        "| OSC round trip p50 / p99 ms | frames | interval std ms | latency growth ms/h | pts exact | streams/core | "
        "RSS/stream KiB |",
        "|" + "---|" * 13,
    ]
    for r in result["runs"]:
        lb, d, c, mem = r["loopback"], r["drift"], r["capacity"], r["memory"]
        e = lb["engine_added_ms"]
        osc = lb["client_round_trip_osc_ms"] or {"p50_ms": float("nan"), "p99_ms": float("nan")}
        cap = f"{c['max_realtime_streams_per_core']}" + (" (cap)" if c["capped_at"] else "")
        lines.append(
            f"| {r['runner']} | {lb['lookahead_frames']} | {lb['algorithmic_latency_ms']:.0f} | "
            f"{e['p50_ms']:.2f} / {e['p95_ms']:.2f} / {e['p99_ms']:.2f} | {lb['stages']['model_step_ms']['p50_ms']:.2f} | "
            f"{lb['client_round_trip_ws_ms']['p50_ms']:.2f} / {lb['client_round_trip_ws_ms']['p99_ms']:.2f} | "
            f"{osc['p50_ms']:.2f} / {osc['p99_ms']:.2f} | {lb['frames']}/{lb['frames_expected']} | "
            f"{lb['inter_frame_interval_ms']['std']:.2f} | {d['latency_growth_ms_per_stream_hour']:+.3f} | "
            f"{d['pts_exact_on_sample_clock']} ({d['frames']}/{d['frames_expected']}) | {cap} | "
            f"{mem['rss_per_stream_kib']:.1f} (state {mem['model_state_kib']:.1f}) |"
        )
    lines += ["", "Stage breakdown (p50 ms): wait for step / model step / commit+signals / queue+encode / socket:"]
    for r in result["runs"]:
        s = r["loopback"]["stages"]
        lines.append(
            f"- {r['runner']}: "
            + " / ".join(
                f"{s[k]['p50_ms']:.2f}"
                for k in (
                    "wait_for_step_ms",
                    "model_step_ms",
                    "commit_and_signals_ms",
                    "queue_and_encode_ms",
                    "socket_to_client_ms",
                )
            )
        )
    lines += [
        "",
        "Drift: a stream of the given length played at an accelerated sample clock (in-process); frame "
        "times must equal index x 40 ms exactly, and the engine latency (publish - audio complete, wall ms) "
        "must not grow. Capacity: one pinned core, in-process feeding (all streams' chunks arrive together, "
        "the worst case for batching latency), every frame serialised; sockets excluded; pass = p99 < 40 ms "
        "and <= 0.1 % of frames late.",
        "",
    ]
    for r in result["runs"]:
        d = r["drift"]
        lines.append(
            f"- drift {r['runner']}: {d['stream_minutes']:g} min at x{d['speed']:.1f} in {d['wall_s']:.0f} s; "
            f"engine latency first/last minute {d['latency_first_minute_ms']:.2f} / "
            f"{d['latency_last_minute_ms']:.2f} ms (p99 {d['latency_p99_ms']:.2f} ms)"
        )
        c = r["capacity"]
        lines.append(
            f"- capacity {r['runner']}: "
            + ", ".join(
                f"{t['streams']} -> p99 {t['p99_ms']:.1f} ms{'' if t['ok'] else ' (fail)'}" for t in c["trials"]
            )
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import machine_info, write_report

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--model", help="exported .onnx model (default: stream_engine/models/default.onnx if present)")
    p.add_argument("--runners", nargs="+", default=["fake", "onnx"], choices=["fake", "onnx"])
    p.add_argument("--loopback-s", type=float, default=20.0)
    p.add_argument("--drift-minutes", type=float, default=30.0)
    p.add_argument(
        "--drift-speed",
        type=float,
        nargs="+",
        default=[60.0],
        help="speed-up per runner (one value for all, or one per runner)",
    )
    p.add_argument("--capacity-s", type=float, default=4.0)
    p.add_argument("--max-streams", type=int, default=512)
    p.add_argument("--memory-streams", type=int, default=500)
    p.add_argument("--quick", action="store_true", help="short smoke run (CI)")
    a = p.parse_args(argv)
    if a.quick:
        a.loopback_s, a.drift_minutes, a.capacity_s, a.max_streams, a.memory_streams = 4.0, 2.0, 1.5, 8, 50
    model = a.model
    if model is None:
        from stream_engine.config import DEFAULT_MODEL_PATH

        model = str(DEFAULT_MODEL_PATH) if DEFAULT_MODEL_PATH.is_file() else None
    runs = []
    for i, kind in enumerate(a.runners):
        if kind == "onnx" and not model:
            print("skipping the ONNX runner: no --model and no shipped default model", file=sys.stderr)
            continue
        speed = a.drift_speed[min(i, len(a.drift_speed) - 1)]
        print(f"[{kind}] loopback {a.loopback_s:g} s ...", file=sys.stderr, flush=True)
        lb = loopback(kind, model, a.loopback_s)
        print(f"[{kind}] drift {a.drift_minutes:g} min at x{speed:g} ...", file=sys.stderr, flush=True)
        dr = drift(kind, model, a.drift_minutes, speed)
        print(f"[{kind}] capacity ...", file=sys.stderr, flush=True)
        cap = capacity(kind, model, a.capacity_s, a.max_streams)
        mem = memory(kind, model, a.memory_streams)
        runs.append(
            {
                "runner": kind,
                "model": model if kind == "onnx" else "tests/fakes.py FakeRunner(L=2)",
                "loopback": lb,
                "drift": dr,
                "capacity": cap,
                "memory": mem,
            }
        )
    result = {"machine": machine_info(), "runs": runs}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    _plot(result, out / "e2e_latency.png")
    public = json.loads(json.dumps(result))
    for r in public["runs"]:
        for part in ("loopback", "drift"):
            for k in [k for k in r[part] if k.startswith("_")]:
                del r[part][k]
    write_report(out, "e2e_latency", public, _markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
