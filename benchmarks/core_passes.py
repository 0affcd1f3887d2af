"""The engine core's per-batch passes alone, numpy against compiled (`core_kernel`), on hot data, one process.

    python -m benchmarks.core_passes [--streams 512] [--rounds 5] [--name core_passes]

An `EngineCore` per path (compiled=False / True; zero-cost runner) with N streams, fed as the throughput trial of
`engine_throughput` feeds the engine (one `push_audio_many` of N 320-sample float32 chunks per 20 ms round) and
drained every second round (take_batch, run_batch, commit_batch until nothing is ready, B = 64), so each stream
holds at most two steps and the rings stay in cache: what the passes cost without the memory traffic of the
engine trials. Timed on the thread's CPU clock; the paths alternate `--rounds` times (400 feeding rounds each);
the table gives medians, us per frame. Writes core_passes.json/.md (--name). Pin it (`taskset -c 1`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("push_audio_many", "take_batch", "commit_batch")


def _trial(core, ids: list[str], chunks: list, rounds: int, t0_round: int) -> dict[str, float]:
    acc = dict.fromkeys(STAGES, 0)
    frames = 0
    clock = time.thread_time_ns
    for r in range(t0_round, t0_round + rounds):
        t = clock()
        core.push_audio_many(ids, chunks, 1000 * r)
        acc["push_audio_many"] += clock() - t
        if r % 2:
            while True:
                t = clock()
                batch = core.take_batch()
                acc["take_batch"] += clock() - t
                if batch is None:
                    break
                out = core.run_batch(batch)
                t = clock()
                frames += len(core.commit_batch(batch, out, 0, 0))
                acc["commit_batch"] += clock() - t
    return {k: v / 1e3 / max(1, frames) for k, v in acc.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="core_passes")
    p.add_argument("--streams", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--feed-rounds", type=int, default=400)
    a = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    import numpy as np

    from benchmarks.common import machine_info, write_report
    from stream_engine import core_kernel
    from stream_engine.core import EngineCore

    from fakes import ZeroCostRunner

    if core_kernel.load() is None:  # this benchmark compares the two paths: nothing to compare without numba
        print(
            "core_passes compares numpy with the compiled passes; numba is not installed or MSYNC_NO_NUMBA is set",
            file=sys.stderr,
        )
        return 2
    paths = {}
    for name, compiled in (("numpy", False), ("compiled", True)):
        core = EngineCore(ZeroCostRunner(lookahead_frames=2), capacity=a.streams, compiled=compiled)
        core.warm_up()
        ids = [f"s{i}" for i in range(a.streams)]
        for sid in ids:
            core.open_stream(sid)
        paths[name] = (core, ids)
    piece = (np.random.default_rng(0).standard_normal(320) * 0.1).astype(np.float32)
    chunks = [piece.copy() for _ in range(a.streams)]
    for core, ids in paths.values():  # warm: past the look-ahead, buffers touched
        _trial(core, ids, chunks, 50, 0)
    trials: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    start = 50
    for _ in range(a.rounds):
        for name, (core, ids) in paths.items():
            trials[name].append(_trial(core, ids, chunks, a.feed_rounds, start))
        start += a.feed_rounds
    result = {
        "machine": machine_info(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "streams": a.streams,
        "rounds": a.rounds,
        "command": "python -m benchmarks.core_passes " + " ".join(sys.argv[1:] if argv is None else argv),
        "paths": {
            name: {k: statistics.median(t[k] for t in ts) for k in STAGES} | {"trials": ts}
            for name, ts in trials.items()
        },
    }
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    write_report(Path(a.out), a.name, result, _markdown(result))
    return 0


def _markdown(result: dict) -> str:
    from benchmarks.common import machine_load_line

    m = result["machine"]
    rows = result["paths"]
    lines = [
        "# The core's passes alone: numpy against compiled (hot data)",
        "",
        f"Machine: {machine_load_line(m)}, {m.get('time_utc')}; CPUs "
        f"{result['cpu_affinity']}; {result['streams']} streams, 320-sample chunks, B = 64; medians of "
        f"{result['rounds']} alternating rounds. Command: `{result['command'].strip()}`.",
        "",
        "| us per frame | numpy | compiled | compiled / numpy |",
        "|---|---:|---:|---:|",
    ]
    for k in STAGES:
        n, c = rows["numpy"][k], rows["compiled"][k]
        lines.append(f"| {k} | {n:.2f} | {c:.2f} | {c / n:.2f} |")
    n, c = (sum(rows[p][k] for k in STAGES) for p in ("numpy", "compiled"))
    lines.append(f"| all three | {n:.2f} | {c:.2f} | {c / n:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
