"""Derived-signal cost per frame: B per-stream `SignalExtractor.update` calls vs one `BatchSignalExtractor.update`.

    python -m benchmarks.signals_batch [--batches 1 8 64 256] [--steps 200] [--out benchmarks/results]

Both variants run in the same process on the same frames (the shipped model's reference face with mouth, head
and jitter changes), with and without ARKit blendshapes; the batched extractor is warmed up first, so its
compiled loop is built before the timing. Reports microseconds per frame and the ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, write_report
from stream_engine.batch_signals import BatchSignalExtractor
from stream_engine.signals import SignalConfig, SignalExtractor


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    from stream_engine.animation import load_model

    face = np.asarray(load_model().contract.reference_face, dtype=np.float64)
    rng = np.random.default_rng(0)
    rows = []
    for blend in (False, True):
        cfg = SignalConfig(blendshapes=blend)
        for B in a.batches:
            frames = face[None, None] + rng.normal(0, 0.003, (a.steps, B, 68, 2))
            level = np.where(rng.uniform(size=(a.steps, B)) < 0.8, -20.0, -80.0)
            singles = [SignalExtractor(cfg, face, i) for i in range(B)]
            t0 = time.perf_counter()
            for k in range(a.steps):
                for i in range(B):
                    singles[i].update(frames[k, i], 0.04 * k, level[k, i], level[k, i])
            per_stream = (time.perf_counter() - t0) / (a.steps * B)
            bx = BatchSignalExtractor(cfg, capacity=B)
            for i in range(B):
                bx.open(i, face, i)
            bx.warm_up()  # compile (or load) the signals loop first, as the engine does before serving: without
            # it the first timed configuration carried numba's compile time (tens of us a frame against ~1)
            slots = np.arange(B)
            t0 = time.perf_counter()
            for k in range(a.steps):
                bx.update(slots, frames[k], np.full(B, 0.04 * k), level[k], level[k])
            batched = (time.perf_counter() - t0) / (a.steps * B)
            rows.append(
                {
                    "blendshapes": blend,
                    "batch": B,
                    "per_stream_us": per_stream * 1e6,
                    "batched_us": batched * 1e6,
                    "speedup": per_stream / batched,
                }
            )
    m = machine_info()
    md = [
        "# Derived signals per frame: per-stream calls vs one batched call",
        "",
        "| blendshapes | B | per-stream us/frame | batched us/frame | speed-up |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {r['blendshapes']} | {r['batch']} | {r['per_stream_us']:.1f} | {r['batched_us']:.1f} | "
        f"{r['speedup']:.1f}x |"
        for r in rows
    ]
    md += [
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, load {m['load_avg_1m']:.2f}, "
        f"{m['time_utc']}; both variants measured in the same run.",
    ]
    write_report(a.out, "signals_batch", {"rows": rows, "steps": a.steps, "machine": m}, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
