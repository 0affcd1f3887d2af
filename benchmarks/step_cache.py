"""Why the step can cost more inside the engine than alone: the slot count against the caches.

    python -m benchmarks.step_cache [--runners onnx onnx_int8] [--slots 512] [--rounds 3] [--name step_cache]

The ONNX step (`OnnxStepRunner.step_slots`, 1 intra-op thread, B = 64) alone on one pinned core, four ways:
over a store of 64 slots (the step-alone figure of `engine_throughput`), B-row batches round robin over
`--slots` slots (as the engine steps a full store: each call's state was last touched slots / 64 calls ago),
and both again with the last-level cache flushed before every call (one write per 64-byte line over 64 MB,
more than this machine's L3: the worst case of what the engine's own work between two steps (pushes into the
rings, takes, signals, serialising) can leave of the weights and the state in the caches). Each call is timed
in parts on the thread's CPU clock (`time.thread_time_ns`): the gather (audio and state rows into the bound
input buffers), the ONNX Runtime run, the scatter (next state back into the store, landmarks copied). The
configurations alternate (`--rounds` rounds of `--calls` calls each); the table gives each part's median over
the rounds, us per call and per frame. Writes step_cache.json/.md (--name).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [("64 slots", 64, False), ("N slots", 0, False), ("64 slots, caches flushed", 64, True), ("N slots, caches flushed", 0, True)]  # fmt: skip
PARTS = ("gather_us", "run_us", "scatter_us", "total_us")


def run_trial(spec: dict) -> dict:
    """One configuration in this (pinned) process: mean us per call of each part."""
    import numpy as np

    from stream_engine.config import DEFAULT_MODEL_PATH
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    model = DEFAULT_MODEL_PATH.with_name("default_int8.onnx") if spec["runner"] == "onnx_int8" else DEFAULT_MODEL_PATH
    runner = OnnxStepRunner(model, threads=1)
    b, n_slots, calls = spec["batch"], spec["slots"], spec["calls"]
    audio = (np.random.default_rng(0).standard_normal((b, runner.contract.samples_per_frame)) * 0.1).astype(np.float32)
    slots = runner.new_slots(n_slots)
    for r in range(n_slots):
        slots.alloc()
        slots.init_row(r)
    groups = [np.arange(g, g + b) for g in range(0, n_slots - b + 1, b)]
    junk = np.ones(64 << 20, np.uint8) if spec["flush"] else None
    binding, audio_buf, ins, lm, outs = runner._slot_binding(b)  # what step_slots does, in its parts
    for i in range(2 * len(groups)):
        runner.step_slots(slots, groups[i % len(groups)], audio)
    acc = np.zeros(4)
    for i in range(calls):
        rows = groups[i % len(groups)]
        if junk is not None:
            junk[::64] += 1
        t0 = time.thread_time_ns()
        np.copyto(audio_buf, audio)
        slots.gather(rows, out=ins)
        t1 = time.thread_time_ns()
        runner.session.run_with_iobinding(binding)
        t2 = time.thread_time_ns()
        slots.scatter(rows, outs)
        lm.copy()
        t3 = time.thread_time_ns()
        acc += (t1 - t0, t2 - t1, t3 - t2, t3 - t0)
    return {**spec, **{k: float(v) / calls / 1e3 for k, v in zip(PARTS, acc)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="step_cache")
    p.add_argument("--runners", nargs="+", default=["onnx", "onnx_int8"], choices=["onnx", "onnx_int8"])
    p.add_argument("--slots", type=int, default=512, help="N: the slot store of the round-robin rows")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=100, help="timed calls per trial")
    p.add_argument("--trial", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.trial:
        print(json.dumps(run_trial(json.loads(a.trial))))
        return 0
    sys.path.insert(0, str(REPO))
    from benchmarks.common import machine_info, spawn_trial, write_report

    cpu = sorted(os.sched_getaffinity(0))[-1]
    result: dict[str, Any] = {"machine": machine_info(), "cpu_core": cpu, "slots": a.slots, "rounds": a.rounds}
    result["runners"] = {}
    for runner in a.runners:
        trials: dict[str, list[dict]] = {label: [] for label, _, _ in CONFIGS}
        for _ in range(a.rounds):
            for label, n, flush in CONFIGS:
                spec = {"runner": runner, "batch": 64, "slots": n or a.slots, "flush": flush, "calls": a.calls}
                t = spawn_trial(Path(__file__).resolve(), spec, cpu)
                trials[label].append(t)
                print(f"[{runner}] {label}: {t['total_us']:.0f} us a call (run {t['run_us']:.0f})", file=sys.stderr)
        result["runners"][runner] = {
            label: {k: statistics.median(t[k] for t in ts) for k in PARTS} | {"trials": ts}
            for label, ts in trials.items()
        }
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    write_report(Path(a.out), a.name, result, _markdown(result))
    return 0


def _markdown(result: dict) -> str:
    from benchmarks.common import machine_load_line

    m = result["machine"]
    n = result["slots"]
    lines = [
        "# The step alone against the caches: 64 slots, N slots, caches flushed",
        "",
        f"Machine: {machine_load_line(m)}, {m.get('time_utc')}. One pinned core (cpu "
        f"{result['cpu_core']}), ONNX Runtime 1 thread, B = 64; N = {n}; medians of {result['rounds']} alternating "
        "rounds. Command: `python -m benchmarks.step_cache`.",
        "",
        "| runner | configuration | gather us | run us | scatter us | total us a call | us a frame | vs 64 slots |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for runner, rows in result["runners"].items():
        base = rows["64 slots"]["total_us"]
        for label, v in rows.items():
            lines.append(
                f"| {runner} | {label.replace('N slots', f'{n} slots')} | {v['gather_us']:.0f} | {v['run_us']:.0f} | "
                f"{v['scatter_us']:.0f} | {v['total_us']:.0f} | {v['total_us'] / 64:.1f} | "
                f"{v['total_us'] / base - 1:+.1%} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
