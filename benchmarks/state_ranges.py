"""Calls that wrap past the store's last row: copied, or each of their ranges stepped in place.

    python -m benchmarks.state_ranges [--runners onnx_int8 onnx] [--batches 96 224] [--slots 512] [--rounds 3]

When every stream is ready the engine's round robin takes B rows from where the last call stopped, so a call
at a B that does not divide the store wraps past its last row: rows [p, N) then [0, q), two ranges.
`OnnxStepRunner.step_slots` on a double-buffered store steps each range of at least `in_place_min_rows` (32)
rows in place, one ONNX Runtime run per range, and copies the other rows. Three configurations, each its own
runner and store of `--slots` rows, stepped call by call in turn inside one pinned process (the order
reversed every call), so the VM's slow and fast stretches hit all three alike:

- "one bank": `StateSlots(contract, N)`: every call gathers and scatters its rows' state (29 KB a row each way);
- "one range": `runner.new_slots(N)` with the runner told to step in place only a call that is one whole
  range (the runner before this benchmark: a wrapped call was copied);
- "ranges": `runner.new_slots(N)` as the runner is (each range of a wrapped call in place).

For each call the ratios of CPU time (`time.thread_time_ns`) one range / ranges and one bank / ranges; the
table gives, per configuration, the median CPU time a frame, and the median ratio over the wrapped calls and
over the calls that are one range (where "one range" and "ranges" do the same thing: the method's own bias,
which should read 1.00). `--rounds` fresh processes; medians over their per-call ratios pooled. The first pass
over the store is not timed (buffers, bindings, the ONNX Runtime arena). Writes state_ranges.json/.md (--name).
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
CONFIGS = ("one bank", "one range", "ranges")


def run_trial(spec: dict) -> dict:
    """One process, one runner kind and batch size: every configuration's CPU us per call, call by call."""
    import numpy as np

    from stream_engine.config import DEFAULT_MODEL_PATH
    from stream_engine.runtime.base import StateSlots
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    model = DEFAULT_MODEL_PATH.with_name("default_int8.onnx") if spec["runner"] == "onnx_int8" else DEFAULT_MODEL_PATH
    b, n, calls = spec["batch"], spec["slots"], spec["calls"]
    stores: dict[str, tuple[Any, Any]] = {}
    for name in CONFIGS:
        runner = OnnxStepRunner(model, threads=1)
        if name == "one range":
            ranges = runner._in_place_ranges
            runner._in_place_ranges = lambda s, r, ranges=ranges: [x for x in ranges(s, r) if x == (0, r.size)]
        slots = StateSlots(runner.contract, n) if name == "one bank" else runner.new_slots(n)
        for r in range(n):
            slots.alloc()
            slots.init_row(r, rng=np.random.default_rng(r))
        stores[name] = (runner, slots)
    audio = (np.random.default_rng(0).standard_normal((b, 640)) * 0.1).astype(np.float32)
    warm = -(-n // b)  # calls in the untimed first pass over the store
    groups = [np.arange(p, p + b) % n for p in range(0, b * (warm + calls), b)]
    us: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for i, rows in enumerate(groups):
        order = CONFIGS if i % 2 == 0 else CONFIGS[::-1]
        for name in order:
            runner, slots = stores[name]
            t0 = time.thread_time_ns()
            runner.step_slots(slots, rows, audio)
            us[name].append((time.thread_time_ns() - t0) / 1e3)
    wrapped = [bool(rows[-1] < rows[0]) for rows in groups[warm:]]
    return {**spec, "us_per_call": {k: v[warm:] for k, v in us.items()}, "wrapped": wrapped}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="state_ranges")
    p.add_argument("--runners", nargs="+", default=["onnx_int8", "onnx"], choices=["onnx", "onnx_int8"])
    p.add_argument("--batches", nargs="+", type=int, default=[96, 224], help="streams per call")
    p.add_argument("--slots", type=int, default=512, help="rows of the store the calls go round")
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per runner and batch size")
    p.add_argument("--calls", type=int, default=120, help="timed calls per configuration and process")
    p.add_argument("--trial", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.trial:
        print(json.dumps(run_trial(json.loads(a.trial))))
        return 0
    bad = [b for b in a.batches if not 32 <= b <= a.slots]
    if bad or a.rounds < 1 or a.calls < 1:
        p.error(f"batches must be within 32..--slots ({a.slots}), rounds and calls >= 1 (got batches {bad})")
    sys.path.insert(0, str(REPO))
    from benchmarks.common import machine_info, spawn_trial, write_report

    cpu = sorted(os.sched_getaffinity(0))[-1]
    result: dict[str, Any] = {"machine": machine_info(), "cpu_core": cpu, "slots": a.slots, "rounds": a.rounds}
    result["command"] = "python -m benchmarks.state_ranges " + " ".join(argv if argv is not None else sys.argv[1:])
    result["runners"] = {}
    for runner in a.runners:
        rows: dict[str, Any] = {}
        for b in a.batches:
            trials = []
            for _ in range(a.rounds):
                spec = {"runner": runner, "batch": b, "slots": a.slots, "calls": a.calls}
                t = spawn_trial(Path(__file__).resolve(), spec, cpu)
                trials.append(t)
                med = {k: statistics.median(v) / b for k, v in t["us_per_call"].items()}
                print(f"[{runner} B={b}] " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()) + " us a frame")
            rows[str(b)] = summarise(trials, b)
        result["runners"][runner] = rows
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    write_report(Path(a.out), a.name, result, markdown(result))
    return 0


def summarise(trials: list[dict], b: int) -> dict:
    """Pooled per-call figures of a runner and batch size's trials."""
    per_frame = {k: statistics.median(x / b for t in trials for x in t["us_per_call"][k]) for k in CONFIGS}
    out: dict[str, Any] = {"us_per_frame": per_frame, "trials": trials}
    for kind, want in (("wrapped", True), ("one range", False)):
        pairs = [
            (t["us_per_call"]["one bank"][i], t["us_per_call"]["one range"][i], t["us_per_call"]["ranges"][i])
            for t in trials
            for i, w in enumerate(t["wrapped"])
            if w == want
        ]
        out[kind] = {
            "calls": len(pairs),
            "one_range_over_ranges": statistics.median(o / r for _, o, r in pairs) if pairs else None,
            "one_bank_over_ranges": statistics.median(z / r for z, _, r in pairs) if pairs else None,
        }
    return out


def markdown(result: dict) -> str:
    """The report's table: per runner and batch size, each configuration's median and the paired ratios."""
    from benchmarks.common import machine_load_line

    m = result["machine"]
    lines = [
        "# Calls that wrap past the store's last row: copied, or each range stepped in place",
        "",
        f"Machine: {machine_load_line(m)}, {m.get('time_utc')}. One pinned core (cpu {result['cpu_core']}), "
        f"ONNX Runtime 1 thread, B-row calls round robin over {result['slots']} rows, wrapping; the three "
        f"configurations stepped in turn, call by call, in each of {result['rounds']} processes. "
        f"Command: `{result['command']}`.",
        "",
        "| runner | B | us a frame: one bank / one range / ranges | streams per core, the same | wrapped calls: "
        "one range ÷ ranges, one bank ÷ ranges | calls of one range (control): the same |",
        "|---|---:|---|---|---|---|",
    ]

    def ratios(v: dict) -> str:
        if not v["calls"]:
            return "-"
        return f"{v['one_range_over_ranges']:.3f}x, {v['one_bank_over_ranges']:.3f}x ({v['calls']} calls)"

    for runner, rows in result["runners"].items():
        for b, v in rows.items():
            pf = v["us_per_frame"]
            lines.append(
                f"| {runner} | {b} | {' / '.join(f'{pf[k]:.1f}' for k in CONFIGS)} | "
                f"{' / '.join(str(int(1e6 / pf[k] / 25)) for k in CONFIGS)} | {ratios(v['wrapped'])} | "
                f"{ratios(v['one range'])} |"
            )
    lines += [
        "",
        "Ratios: the median over calls of one configuration's CPU time for a call over the other's for the same "
        "rows (> 1: stepping each range in place is faster). A wrapped call is two ranges; the runner copies a "
        "range of fewer than 32 rows. Streams per core: 1 / (25 x CPU seconds a frame), the step alone.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
