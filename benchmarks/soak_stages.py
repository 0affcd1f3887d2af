"""Where a served frame waits: N real-time streams over loopback WebSockets, every frame's life read from the
timestamps in its binary header.

    python -m benchmarks.soak_stages [--streams 100] [--duration 20] [--phases 8] [--tail-s 1.8]
                                     [--variant LABEL=ARGS ...] [--out benchmarks/results] [--name soak_stages]

For each variant (default: one, "default", the server as shipped) it starts `msync stream --input none` with
benchmarks/configs/soak100.json (room for 128 streams) plus the variant's arguments, waits for /health, and
opens N /audio clients, each subscribed to its own binary frames. They send speech-like int16 audio in real
time in 40 ms chunks; their start times are spread over `--phases` offsets within one chunk period, so the
engine sees N / phases streams become ready together (`../shared/tools/ws_soak.py` spreads them the same
way). Every frame after a 5 s warm-up gives, from its header (stream_engine/PROTOCOL.md, binary v1), on
the host's monotonic clock:

- wait: audio ready -> step start (waiting for batch partners and for the inference thread),
- step: the runner call (shared by the frame's whole batch),
- publish: step end -> publish (commit, signals, hand-off to the outputs),
- send: publish -> the server's send stamp,
- socket: the send stamp -> arrival at the client (kernel, client loop),
- engine: audio ready -> send stamp (the engine-added latency of issue 14), and total (-> arrival).

Frames made after a client's audio stopped are reported apart: its last look-ahead frames and the frames of
the silence the server continues a stalled stream with (`stalled` in the header). The look-ahead frames and
the first stall delay's worth of silence become ready at once when the stall begins (for every stream at
the end of the run, when the clients stop together), so they wait behind each other; the rest of the fill
follows in real time. The clients keep listening for `--tail-s` (default `TAIL_S`)
after their last chunk, long enough for the whole fill (the stall delay plus at most 1 s of silence,
`EngineConfig.stall_fill_s`). `../shared/tools/ws_soak.py` counts those frames with the rest. Frames with the
same step start came from one runner call (both kinds), which gives the batch sizes and the step time per
batch size. Lost frames are gaps in each stream's seq.

With `--workers N` among a variant's arguments, the clients connect only once N sockets listen on the port
(each worker loads its model first). Server CPU: every process of the server, each apart, from /proc,
between the end of the warm-up and the last chunk. Writes NAME.json and NAME.md with the CPU model, the
served model's version (from /health) and the load before and after each variant; after each variant but
the last the files hold what is done so far. SIGTERM (or Ctrl-C) stops the server it started.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    free_port,
    machine_info,
    process_cpu_s,
    process_tree,
    stop_server,
    wait_health,
    workers_of,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "benchmarks" / "configs" / "soak100.json"
RATE = 16000
WARM_UP_S = 5.0
#: seconds a client keeps receiving after its last chunk: the stall delay (look-ahead + 80 ms) and the engine's
#: default 1 s of stall fill, with a margin
TAIL_S = 1.8
#: seconds a client waits for the server's reply to its hello
HELLO_TIMEOUT_S = 30.0
#: stage name -> (from column, to column) of a frame record: ready, step start, step end, publish, sent, arrival
STAGES = {
    "wait": (0, 1),
    "step": (1, 2),
    "publish": (2, 3),
    "send": (3, 4),
    "socket": (4, 5),
    "engine": (0, 4),
    "total": (0, 5),
}
BATCH_BINS = ((1, 4), (5, 9), (10, 16), (17, 32), (33, 64), (65, 1 << 30))


def stage_stats(records: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-stage percentiles of frame records (F, 6) int64 ns (ready, step start, step end, publish, sent,
    arrival) -> {stage: {min, p50, p90, p99, max}} in ms. Raises ValueError for an empty or misshapen array."""
    if records.ndim != 2 or records.shape[1] != 6 or not len(records):
        raise ValueError(f"expected (F, 6) frame records with F >= 1, got {records.shape}")
    out = {}
    for name, (i, j) in STAGES.items():
        ms = (records[:, j] - records[:, i]) / 1e6
        out[name] = {q: round(float(np.percentile(ms, p)), 2) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))}
        out[name]["min"] = round(float(ms.min()), 2)
        out[name]["max"] = round(float(ms.max()), 2)
    return out


def batch_stats(records: np.ndarray) -> dict[str, Any]:
    """Runner calls seen in frame records (F, 6): frames sharing a step start came from one call. Returns the
    number of calls, batch-size percentiles and, per batch-size bin, the calls and their median step ms.
    (A batch's frames of streams outside the records, or before the warm-up, are not counted: sizes are
    those of the measured streams.)"""
    starts, index, sizes = np.unique(records[:, 1], return_index=True, return_counts=True)
    step_ms = (records[index, 2] - records[index, 1]) / 1e6
    bins = []
    for lo, hi in BATCH_BINS:
        m = (sizes >= lo) & (sizes <= hi)
        if m.any():
            label = f"{lo}-{hi}" if hi < 1 << 30 else f">={lo}"
            bins.append({"batch": label, "calls": int(m.sum()), "step_ms_p50": round(float(np.median(step_ms[m])), 2)})
    return {
        "calls": int(starts.size),
        "batch_p10_p50_p90": [float(x) for x in np.percentile(sizes, [10, 50, 90])],
        "mean_batch": round(float(sizes.mean()), 2),
        "by_batch": bins,
    }


@dataclasses.dataclass
class _Stream:
    """What one client saw: per binary frame its stamps (ready, step start, step end, publish, sent, arrival),
    its `stalled` flag and seq; when it sent its last chunk; the server's text error messages; its own
    failure, if any."""

    frames: list[tuple[int, int, int, int, int, int]] = dataclasses.field(default_factory=list)
    stalled: list[bool] = dataclasses.field(default_factory=list)
    seqs: list[int] = dataclasses.field(default_factory=list)
    last_send_ns: int = 0
    server_errors: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None


async def _client(port: int, i: int, pcm: np.ndarray, t_start: float, t_stop: float, tail_s: float) -> _Stream:
    """One real-time /audio stream subscribed to its own binary frames; listens `tail_s` after its last chunk.
    Never raises: a refused or late hello, a broken connection or an undecodable frame is `_Stream.error`."""
    from websockets.asyncio.client import connect

    from stream_engine.outputs.serializers import decode_binary

    out = _Stream()
    chunk = RATE * 40 // 1000
    try:
        async with connect(f"ws://127.0.0.1:{port}/audio", compression=None, max_size=1 << 22) as ws:
            hello = {"type": "hello", "v": 1, "stream": f"stages-{i}", "subscribe": "binary", "dtype": "int16"}
            await ws.send(json.dumps(hello))
            try:
                reply = json.loads(await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT_S))
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                out.error = f"stream {i}: no reply to its hello within {HELLO_TIMEOUT_S:g} s"
                return out
            if reply.get("type") != "ready":
                out.error = f"stream {i} refused: {reply}"[:200]
                return out
            if time.monotonic() > t_start:
                out.error = f"stream {i}: ready {time.monotonic() - t_start:.2f} s after its start time"
                return out

            async def receive() -> None:
                async for m in ws:
                    now = time.monotonic_ns()
                    if isinstance(m, bytes):
                        f = decode_binary(m)
                        t = f["t"]
                        row = (
                            t["audio_ready_ns"],
                            t["infer_start_ns"],
                            t["infer_end_ns"],
                            t["publish_ns"],
                            t["sent_ns"],
                        )
                        out.frames.append((*row, now))
                        out.stalled.append(bool(f["stalled"]))
                        out.seqs.append(int(f["seq"]))
                    elif json.loads(m).get("type") == "error":
                        out.server_errors.append(str(m)[:200])

            rx = asyncio.create_task(receive())
            rx.add_done_callback(lambda task: None if task.cancelled() else task.exception())
            await asyncio.sleep(max(0.0, t_start - time.monotonic()))
            pos, k, t0 = (i * 7919) % len(pcm), 0, time.monotonic()
            while time.monotonic() < t_stop and not rx.done():
                idx = np.arange(pos, pos + chunk) % len(pcm)
                await ws.send(pcm[idx].tobytes())
                out.last_send_ns = time.monotonic_ns()
                pos, k = pos + chunk, k + 1
                delay = t0 + k * 0.04 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if rx.done():  # the server closed the connection (or receiving failed) while the client was sending
                exc = rx.exception()
                out.error = f"stream {i}: " + (
                    f"receiving: {exc!r}"[:200] if exc else "the server closed the connection"
                )
                return out
            await asyncio.sleep(tail_s)  # the last frames, then the stall fill
            if rx.done() and rx.exception() is not None:
                out.error = f"stream {i} receiving: {rx.exception()!r}"[:200]
            rx.cancel()
    except Exception as exc:  # one stream's failure is reported, the others go on
        out.error = f"stream {i}: {exc!r}"[:200]
    return out


async def _drive(
    port: int, streams: int, duration: float, phases: int, tail_s: float, server_pid: int
) -> tuple[list[_Stream], int, dict[int, float]]:
    """Run the clients. Returns their records, the warm-up's end (monotonic ns) and each server process's CPU
    cores between the warm-up's end and the last chunk."""
    sys.path.insert(0, str(REPO / "tests"))
    from fakes import speechlike

    pcm = (speechlike(60 * RATE, seed=1, sample_rate_hz=RATE) * 32767).astype("<i2")
    t_base = time.monotonic() + 3.0  # time for every client to connect
    t_stop = t_base + duration
    cpu: list[tuple[float, dict[int, float | None]]] = []

    async def sample_cpu() -> None:
        for at in (t_base + WARM_UP_S, t_stop):
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            cpu.append((time.monotonic(), {p: process_cpu_s(p) for p in process_tree(server_pid)}))

    tasks = [_client(port, i, pcm, t_base + (i % phases) * 0.04 / phases, t_stop, tail_s) for i in range(streams)]
    sampler = asyncio.create_task(sample_cpu())
    limit = 3.0 + duration + tail_s + HELLO_TIMEOUT_S + 60.0
    try:  # bounded: a client that never finishes must not hold the benchmark forever
        clients = await asyncio.wait_for(asyncio.gather(*tasks), limit)
    except asyncio.TimeoutError:
        raise RuntimeError(f"the clients did not finish within {limit:.0f} s") from None
    await sampler
    (w0, c0), (w1, c1) = cpu
    # a process born inside the window counts from 0; one that cannot be read at either end (exited) is left out
    by_process = {
        p: round(max(0.0, (c1[p] or 0.0) - (c0.get(p) or 0.0)) / (w1 - w0), 3) for p in c1 if c1[p] is not None
    }
    return clients, int((t_base + WARM_UP_S) * 1e9), by_process


def split_frames(stream: _Stream, warm_ns: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One client's frames after the warm-up -> (frames whose audio was ready while it was still sending,
    frames made after its audio stopped, the stall-filled count among the latter). Arrays (F, 6) int64.

    After the last chunk the server fills silence once the stall delay has passed: the first stalled frame
    and the stream's last look-ahead frames (completed by that silence) share one ready time, so every frame
    ready at or after the first stalled frame that came after the last send is "after the audio stopped"
    (and any stalled frame is); no timing margin decides it."""
    rec = np.asarray(stream.frames, dtype=np.int64).reshape(-1, 6)
    stalled = np.asarray(stream.stalled, dtype=bool)
    keep = rec[:, 0] >= warm_ns
    fills = rec[stalled & (rec[:, 0] > stream.last_send_ns), 0]
    after = stalled.copy()
    if fills.size:
        after |= rec[:, 0] >= fills.min()
    after &= keep
    return rec[keep & ~after], rec[after], int((after & stalled).sum())


def lost_frames(seqs: list[int]) -> int:
    """Gaps in one stream's frame seq numbers (the server may drop frames for a slow client)."""
    if not seqs:
        return 0
    u = np.unique(np.asarray(seqs))
    return int(u[-1] - u[0] + 1 - u.size)


def run_variant(
    label: str, args: list[str], streams: int, duration: float, phases: int, tail_s: float = TAIL_S
) -> dict[str, Any]:
    """Start a server with `args`, wait until every worker listens, drive it, stop it; the variant's result.
    Raises RuntimeError when the server does not come up, dies, or no frame arrives."""
    if duration <= WARM_UP_S:
        raise ValueError(f"duration must exceed the {WARM_UP_S:g} s warm-up, got {duration}")
    port = free_port()
    cmd = [sys.executable, "-m", "stream_engine.cli", "stream", "--input", "none", "--no-vmc", "--quiet"]
    cmd += ["--config", str(CONFIG), "--port", str(port), *args]
    paths = [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    load_before = os.getloadavg()[0]
    log = tempfile.NamedTemporaryFile("w+", prefix="msync-stages-", suffix=".log")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env)

    def log_tail() -> str:
        log.seek(0)
        return log.read()[-2000:]

    try:
        try:
            health = wait_health(server, port, workers=workers_of(args))
        except RuntimeError as exc:
            raise RuntimeError(
                f"variant {label}: the server did not come up ({exc}); its log ends:\n{log_tail()}"
            ) from None
        model_version = health.get("model_version", "?")
        try:
            clients, warm_ns, cpu_by_process = asyncio.run(_drive(port, streams, duration, phases, tail_s, server.pid))
        except RuntimeError as exc:
            raise RuntimeError(f"variant {label}: {exc}") from None
        if server.poll() is not None:
            raise RuntimeError(f"variant {label}: the server exited ({server.returncode}); its log ends:\n{log_tail()}")
    finally:
        stop_server(server)
        log.close()
    parts = [split_frames(c, warm_ns) for c in clients]
    real = np.concatenate([p[0] for p in parts])
    after = np.concatenate([p[1] for p in parts])
    errors = [c.error for c in clients if c.error]
    if not len(real):
        raise RuntimeError(f"variant {label}: no frames after the warm-up ({len(errors)} stream errors: {errors[:3]})")
    return {
        "label": label,
        "args": args,
        "model_version": model_version,
        "frames": int(len(real)),
        "stream_errors": errors,
        "server_error_messages": sum(len(c.server_errors) for c in clients),
        "lost_frames": sum(lost_frames(c.seqs) for c in clients),
        "stages_ms": stage_stats(real),
        "batches": batch_stats(np.concatenate([real, after])),
        "after_stop_frames": int(len(after)),
        "stall_filled_frames": sum(p[2] for p in parts),
        "after_stop_stages_ms": stage_stats(after) if len(after) else None,
        "server_cpu_cores": round(sum(cpu_by_process.values()), 2),
        "server_cpu_cores_by_process": sorted(cpu_by_process.values(), reverse=True),
        "load_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    c = result["conditions"]
    lines = [
        "# Where a served frame waits: stage latencies from the frames' own timestamps",
        "",
        *(
            [f"**Incomplete**: still to run when this was written: {', '.join(result['pending'])}.", ""]
            if result.get("complete") is False
            else []
        ),
        f"`{result['command']}`  ",
        f"CPU: {m['cpu']} ({m['logical_cpus']} logical); {c['streams']} real-time /audio streams, 40 ms int16 chunks, "
        f"starts spread over {c['phases']} phases of a chunk period; {c['duration_s']:g} s each, the first "
        f"{WARM_UP_S:g} s left out; server `msync stream --input none --config benchmarks/configs/soak100.json`.",
        "",
        "| variant | stage | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for v in result["variants"]:
        for name, s in v["stages_ms"].items():
            lines.append(f"| {v['label']} | {name} | {s['p50']} | {s['p90']} | {s['p99']} | {s['max']} |")
        if v.get("after_stop_stages_ms"):
            s = v["after_stop_stages_ms"]["engine"]
            lines.append(
                f"| {v['label']} | engine, frames after the audio stopped ({v['after_stop_frames']}, "
                f"{v['stall_filled_frames']} stall-filled) | {s['p50']} | {s['p90']} | {s['p99']} | {s['max']} |"
            )
    lines += [
        "",
        "| variant | model | frames | lost | stream errors | server errors | runner calls | batch p10 / p50 / p90 | "
        "server CPU (cores; per process) | load before / after |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for v in result["variants"]:
        b = v["batches"]
        p = " / ".join(f"{x:g}" for x in b["batch_p10_p50_p90"])
        lb = " / ".join(f"{x:.2f}" for x in v["load_1m_before_after"])
        per = " + ".join(f"{x:.2f}" for x in v["server_cpu_cores_by_process"] if x >= 0.005)
        lines.append(
            f"| {v['label']} | `{v['model_version']}` | {v['frames']} | {v['lost_frames']} | {len(v['stream_errors'])} | "
            f"{v['server_error_messages']} | {b['calls']} | {p} | {v['server_cpu_cores']} ({per}) | {lb} |"
        )
    lines += ["", "Step time by batch size (median over the runner calls of that size):", ""]
    lines += ["| variant | batch | calls | step ms p50 |", "|---|---|---:|---:|"]
    for v in result["variants"]:
        for row in v["batches"]["by_batch"]:
            lines.append(f"| {v['label']} | {row['batch']} | {row['calls']} | {row['step_ms_p50']} |")
    lines += [
        "",
        "Stages: wait = audio ready -> step start; step = the runner call; publish = step end -> publish; send = "
        "publish -> the server's send stamp; socket = send stamp -> arrival at the client; engine = audio ready -> "
        "send stamp (issue 14's engine-added latency); total = audio ready -> arrival. The stage rows are the "
        "frames whose audio was ready while the clients were sending; frames after the audio stopped (each "
        "stream's last look-ahead frames and the stall fill: the look-ahead frames and the first stall delay's "
        "silence become ready at once, the rest of the fill follows in real time) are the extra row. "
        "Batch sizes count the measured streams' frames per runner call, both kinds. Lost: gaps in the frames' "
        "seq. Server CPU: all its processes, from the end of the warm-up to the last chunk.",
    ]
    return "\n".join(lines) + "\n"


def parse_variant(text: str) -> tuple[str, list[str]]:
    """ "LABEL=ARGS" -> (LABEL, shell-split ARGS); "LABEL" alone has no arguments. Raises ValueError."""
    label, _, args = text.partition("=")
    if not label.strip():
        raise ValueError(f"--variant needs a label (LABEL=ARGS), got {text!r}")
    return label.strip(), shlex.split(args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of audio per stream (the first 5 are warm-up)")
    p.add_argument("--phases", type=int, default=8, help="start offsets within a 40 ms chunk period")
    p.add_argument(
        "--variant",
        action="append",
        default=None,
        help="LABEL=ARGS: a server variant (its extra `msync stream` arguments); repeatable (default: default=)",
    )
    p.add_argument(
        "--tail-s",
        type=float,
        default=TAIL_S,
        help="seconds each client listens after its last chunk (the stall fill; raise it with stall_fill_s)",
    )
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--name", default="soak_stages")
    a = p.parse_args(argv)
    if a.streams < 1 or a.phases < 1 or not math.isfinite(a.duration) or a.duration <= WARM_UP_S:
        p.error(f"--streams and --phases must be >= 1 and --duration a number of seconds > {WARM_UP_S:g}")
    if not math.isfinite(a.tail_s) or not 0 <= a.tail_s <= 60:
        p.error("--tail-s must be a number of seconds in 0..60")
    try:
        variants = [parse_variant(v) for v in (a.variant or ["default="])]
        for _, args in variants:
            workers_of(args)
    except ValueError as exc:
        p.error(str(exc))
    result: dict[str, Any] = {
        "command": "python -m benchmarks.soak_stages "
        + " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv)),
        "machine": machine_info(),
        "conditions": {"streams": a.streams, "duration_s": a.duration, "phases": a.phases},
        "variants": [],
    }

    def stop(signum: int, frame: Any) -> None:  # SIGTERM: unwind, so the server is stopped
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    out = Path(a.out)
    try:
        for label, args in variants:
            result["variants"].append(_run_and_say(label, args, a))
            if len(result["variants"]) < len(variants):  # what is done survives a later variant's failure
                pending = [label for label, _ in variants[len(result["variants"]) :]]
                _write_partial(out, a.name, {**result, "complete": False, "pending": pending})
    finally:
        signal.signal(signal.SIGTERM, previous)
    write_report(a.out, a.name, result, markdown(result))
    return 0


def _write_partial(out: Path, name: str, result: dict[str, Any]) -> None:
    """The report so far (marked incomplete), each file replaced whole (written beside it, then renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(result, indent=2)), (".md", markdown(result))):
        tmp = out / f".{name}{suffix}.part"
        tmp.write_text(text)
        os.replace(tmp, out / f"{name}{suffix}")


def _run_and_say(label: str, args: list[str], a: argparse.Namespace) -> dict[str, Any]:
    """One variant, with a progress line on stderr."""
    v = run_variant(label, args, a.streams, a.duration, a.phases, a.tail_s)
    s = v["stages_ms"]
    print(
        f"[{label}] engine p50/p99 {s['engine']['p50']}/{s['engine']['p99']} ms, wait p99 {s['wait']['p99']}, "
        f"step p99 {s['step']['p99']}, median batch {v['batches']['batch_p10_p50_p90'][1]:g}",
        file=sys.stderr,
    )
    return v


if __name__ == "__main__":
    raise SystemExit(main())
