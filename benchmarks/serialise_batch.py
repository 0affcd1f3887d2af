"""Serialising one published step per frame (from `LandmarkFrame` objects) against per batch (from the
`FrameBatch` columns), for every wire format: binary v1, JSON v1, OSC bundles.

    python -m benchmarks.serialise_batch [--streams 64] [--out benchmarks/results] [--name serialise_batch]

One engine (tests/fakes.py FakeRunner, signals on, the shipped `SignalConfig`: blendshapes in the signals) steps
`--streams` streams together; its largest published batch is serialised over and over, the two ways
interleaved, CPU time of this thread (`time.thread_time_ns`), with hot caches (the engine's own figures,
cache-cold, are in engine_stages). Per frame: `encode_binary` / `encode_binary_many`, `encode_json`,
`osc.frame_bundle` (python-osc's builders), each frame object built beforehand (not counted); per batch:
`encode_binary_batch`, `encode_json_batch` (`encode_json` of each row's frame), `osc.batch_bundles`. Both give the same bytes (tests/test_frame_batch.py).
Writes NAME.json/.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _published_batch(streams: int) -> Any:
    sys.path.insert(0, str(REPO / "tests"))
    from stream_engine.engine import Engine, EngineConfig

    from fakes import FakeRunner, speechlike

    batches: list[Any] = []

    class Keep:
        def send_frames(self, frames: Any) -> None:
            pass

        def send_batch(self, batch: Any) -> None:
            batches.append(batch)

        def stream_event(self, event: Any) -> None:
            pass

        async def aclose(self) -> None:
            pass

    async def main() -> None:
        async with Engine(FakeRunner(lookahead_frames=2), EngineConfig(max_streams=streams, stall_ms=0)) as engine:
            engine.add_sink(Keep())
            ids = [engine.open_stream().stream_id for _ in range(streams)]
            engine.push_audio_many(ids, [speechlike(640 * 12, seed=1)] * streams)
            for sid in ids:
                engine.flush(sid)
                await engine.wait_drained(sid)

    asyncio.run(main())
    return max(batches, key=len)


def _cpu_us(f: Callable[[], object], reps: int) -> float:
    t0 = time.thread_time_ns()
    for _ in range(reps):
        f()
    return (time.thread_time_ns() - t0) / reps / 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="serialise_batch")
    a = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from benchmarks.common import machine_info, write_report
    from stream_engine.outputs.osc import batch_bundles, frame_bundle
    from stream_engine.outputs.serializers import (
        encode_binary,
        encode_binary_batch,
        encode_binary_many,
        encode_json,
        encode_json_batch,
    )

    batch = _published_batch(a.streams)
    frames = batch.frames()
    n = len(batch)
    cases: dict[str, tuple[Callable[[], object], int]] = {
        "binary: encode_binary per frame": (lambda: [encode_binary(f, 1) for f in frames], 50),
        "binary: encode_binary_many (frame objects)": (lambda: encode_binary_many(frames, 1), 200),
        "binary: encode_binary_batch (columns)": (lambda: encode_binary_batch(batch, 1), 500),
        "json: encode_json per frame": (lambda: [encode_json(f, 1) for f in frames], 20),
        "json: encode_json_batch (row frames of the batch)": (lambda: encode_json_batch(batch, 1), 20),
        "osc: frame_bundle per frame (python-osc)": (lambda: [frame_bundle(f) for f in frames], 5),
        "osc: batch_bundles (columns)": (lambda: batch_bundles(batch), 200),
    }
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for f, _ in cases.values():
        f()
    for _ in range(a.rounds):  # interleaved rounds
        for k, (f, reps) in cases.items():
            samples[k].append(_cpu_us(f, reps) / n)
    med = {k: statistics.median(v) for k, v in samples.items()}
    result = {"machine": machine_info(), "frames_per_batch": n, "rounds": a.rounds, "us_per_frame": med}
    result["samples_us_per_frame"] = samples
    m = result["machine"]
    lines = [
        "# Serialising a published step: per frame against per batch (columns)",
        "",
        f"Machine: {m.get('cpu')} ({m.get('logical_cpus')} logical CPUs), load avg {m.get('load_avg_1m'):.2f}, "
        f"Python {m.get('python')}, {m.get('time_utc')}. One batch of {n} frames (FakeRunner, signals and "
        f"blendshapes on), hot caches, CPU time of one thread, median of {a.rounds} interleaved rounds. Command: "
        f"`python -m benchmarks.serialise_batch --streams {a.streams}`.",
        "",
        "| serialiser | us per frame | x faster than per frame |",
        "|---|---:|---:|",
    ]
    per_frame = {
        "binary": med["binary: encode_binary per frame"],
        "json": med["json: encode_json per frame"],
        "osc": med["osc: frame_bundle per frame (python-osc)"],
    }
    for k, v in med.items():
        lines.append(f"| {k} | {v:.2f} | {per_frame[k.split(':')[0]] / v:.2f} |")
    write_report(Path(a.out), a.name, result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
