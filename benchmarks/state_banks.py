"""What copying the state in and out costs the step: a one-bank store against the double-buffered one.

    python -m benchmarks.state_banks [--runners onnx_int8 onnx] [--batches 64 128 256] [--slots 512] [--rounds 3]

`OnnxStepRunner.step_slots` (1 intra-op thread) on one pinned core, B-row calls round robin over a full store of
`--slots` rows (rows [0, B), [B, 2B), ..., as the engine takes a store whose every stream is ready), two stores:

- "one bank": `StateSlots(contract, N)`, the store before double buffering: every call gathers its rows' state
  into the bound input buffers and scatters the next state back (29 KB a row each way in model 0.3.x);
- "two banks": `runner.new_slots(N)` (what the engine uses): a contiguous range is stepped in place, its state
  read from one bank and the next state written into the other, here at every B (the runner itself steps
  fewer than `in_place_min_rows` = 32 rows through the copies: this benchmark is what that floor rests on).
  A range's binding is kept (the last 64 per thread), so a store of more than 32 x B rows binds anew on
  every call.

Both stores give the same landmarks and states bit for bit (tests/test_engine_slots.py). The configurations
alternate in fresh processes (`--rounds` rounds of `--calls` timed calls each, after one warm pass over the
store); the table gives the median CPU time per call (`time.thread_time_ns`) and per frame, and the ratio of the
two stores measured in the same rounds, and what binding a range not seen before costs (the in-place path's
overhead when a range is new). Writes state_banks.json/.md (--name).
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
STORES = ("one bank", "two banks")


def run_trial(spec: dict) -> dict:
    """One store and batch size in this (pinned) process: mean CPU us per call."""
    import numpy as np

    from stream_engine.config import DEFAULT_MODEL_PATH
    from stream_engine.runtime.base import StateSlots
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    model = DEFAULT_MODEL_PATH.with_name("default_int8.onnx") if spec["runner"] == "onnx_int8" else DEFAULT_MODEL_PATH
    runner = OnnxStepRunner(model, threads=1)
    b, n_slots, calls = spec["batch"], spec["slots"], spec["calls"]
    slots = StateSlots(runner.contract, n_slots) if spec["store"] == "one bank" else runner.new_slots(n_slots)
    runner.in_place_min_rows = 1  # every contiguous call in place, whatever B (the runner's own floor is 32)
    for r in range(n_slots):
        slots.alloc()
        slots.init_row(r, rng=np.random.default_rng(r))
    audio = (np.random.default_rng(0).standard_normal((b, runner.contract.samples_per_frame)) * 0.1).astype(np.float32)
    groups = [np.arange(g, g + b) for g in range(0, n_slots - b + 1, b)]
    for rows in groups:  # one warm pass: buffers, bindings and the ONNX Runtime arena
        runner.step_slots(slots, rows, audio)
    t0 = time.thread_time_ns()
    for i in range(calls):
        runner.step_slots(slots, groups[i % len(groups)], audio)
    us = (time.thread_time_ns() - t0) / calls / 1e3
    out = {**spec, "us_per_call": us, "us_per_frame": us / b}
    if spec["store"] == "two banks":  # what binding a range not seen before costs (the in-place path's overhead)
        t0 = time.thread_time_ns()
        for _ in range(50):
            runner._local.range_bindings = {}  # forget the kept bindings: every call binds anew
            runner._range_binding(slots, 0, b, int(slots.bank[0]))
        out["bind_us"] = (time.thread_time_ns() - t0) / 50 / 1e3
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="state_banks")
    p.add_argument("--runners", nargs="+", default=["onnx_int8", "onnx"], choices=["onnx", "onnx_int8"])
    p.add_argument("--batches", nargs="+", type=int, default=[64, 128, 256], help="streams per call")
    p.add_argument("--slots", type=int, default=512, help="rows of the store the calls go round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=40, help="timed calls per trial")
    p.add_argument("--trial", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.trial:
        print(json.dumps(run_trial(json.loads(a.trial))))
        return 0
    bad = [b for b in a.batches if not 1 <= b <= a.slots]
    if bad or a.rounds < 1 or a.calls < 1:
        p.error(f"batches must be within 1..--slots ({a.slots}), rounds and calls >= 1 (got batches {bad})")
    sys.path.insert(0, str(REPO))
    from benchmarks.common import machine_info, spawn_trial, write_report

    cpu = sorted(os.sched_getaffinity(0))[-1]
    result: dict[str, Any] = {"machine": machine_info(), "cpu_core": cpu, "slots": a.slots, "rounds": a.rounds}
    result["command"] = "python -m benchmarks.state_banks " + " ".join(argv if argv is not None else sys.argv[1:])
    result["runners"] = {}
    for runner in a.runners:
        rows: dict[str, Any] = {}
        for b in a.batches:
            trials: dict[str, list[dict]] = {s: [] for s in STORES}
            for _ in range(a.rounds):
                for store in STORES:
                    spec = {"runner": runner, "batch": b, "slots": a.slots, "store": store, "calls": a.calls}
                    t = spawn_trial(Path(__file__).resolve(), spec, cpu)
                    trials[store].append(t)
                    print(f"[{runner} B={b}] {store}: {t['us_per_frame']:.1f} us a frame", file=sys.stderr)
            ratios = [o["us_per_call"] / t["us_per_call"] for o, t in zip(trials["one bank"], trials["two banks"])]
            rows[str(b)] = {
                **{s: statistics.median(t["us_per_call"] for t in ts) for s, ts in trials.items()},
                "bind_us": statistics.median(t["bind_us"] for t in trials["two banks"]),
                "speedup_by_round": ratios,
                "trials": trials,
            }
        result["runners"][runner] = rows
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    write_report(Path(a.out), a.name, result, markdown(result))
    return 0


def markdown(result: dict) -> str:
    """The report's table: per runner and batch size, each store's median and the paired speed-up."""
    from benchmarks.common import machine_load_line

    m = result["machine"]
    lines = [
        "# The step with its state copied in and out (one bank) and stepped in place (two banks)",
        "",
        f"Machine: {machine_load_line(m)}, {m.get('time_utc')}. One pinned core (cpu {result['cpu_core']}), "
        f"ONNX Runtime 1 thread, B-row calls round robin over {result['slots']} rows; medians of "
        f"{result['rounds']} alternating rounds. Command: `{result.get('command', 'python -m benchmarks.state_banks')}`.",
        "",
        "| runner | B | one bank: us a call | two banks: us a call | one bank: us a frame | two banks: us a frame "
        "| streams per core, one / two banks | speed-up, paired by round (median, range) | binding a new range, us |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for runner, rows in result["runners"].items():
        for b, v in rows.items():
            one, two, r = v["one bank"], v["two banks"], v["speedup_by_round"]
            per_core = [int(1e6 / (x / int(b)) / 25) for x in (one, two)]
            lines.append(
                f"| {runner} | {b} | {one:.0f} | {two:.0f} | {one / int(b):.1f} | {two / int(b):.1f} | "
                f"{per_core[0]} / {per_core[1]} | {statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f}) | "
                f"{v.get('bind_us', float('nan')):.0f} |"
            )
    lines += [
        "",
        "Streams per core: 1 / (25 x CPU seconds a frame), the step alone at that B. Binding a new range: one "
        "`OnnxStepRunner._range_binding` with its kept bindings forgotten (16 addresses bound; median over rounds "
        "of the mean of 50).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
