"""Where an ONNX step's time goes, by operator: ONNX Runtime's own profiler over a batched step.

    python -m benchmarks.step_ops --model before=OLD.onnx --model after=stream_engine/models/default.onnx \\
        --batch 64 --out benchmarks/results

Each model runs `--calls` steps of batch `--batch` (one intra-op thread, the same random speech-level audio and
the contract's initial states) with ONNX Runtime's profiling on; the kernel times of every node are summed by
operator type and by node. Models are profiled in alternating rounds, so machine load hits them alike, and
each model reports its fastest round (the one other processes disturbed least); the
figures are kernel time (wall clock inside each node), so compare models as ratios of one run.

Writes step_ops.json and step_ops.md (per model: total kernel time per call, the top operator types and nodes).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, write_report


def profile_model(path: Path, batch: int, calls: int, seed: int = 0) -> dict:
    """Kernel time per call of each operator type and node of the step `path` at batch `batch` (microseconds)."""
    import onnxruntime as ort

    from stream_engine.runtime.onnxrt import OnnxStepRunner

    runner = OnnxStepRunner(path, threads=1)
    state = runner.initial_state(batch, rng=np.random.default_rng(seed))
    audio = (np.random.default_rng(seed).standard_normal((batch, runner.contract.samples_per_frame)) * 0.1).astype(
        np.float32
    )
    with tempfile.TemporaryDirectory() as td:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(td) / "prof")
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feeds = {
            i.name: (audio if i.name == runner.contract.audio_input.name else state[i.name])
            for i in session.get_inputs()
        }
        for _ in range(10):  # warm-up, also profiled: dropped below by call count
            session.run(None, feeds)
        for _ in range(calls):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_node: collections.Counter[str] = collections.Counter()
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        by_node[name] += e["dur"]
        op_of[name] = e.get("args", {}).get("op_name", "?")
    n = calls + 10
    by_op: collections.Counter[str] = collections.Counter()
    for name, us in by_node.items():
        by_op[op_of[name]] += us
    total = sum(by_op.values()) / n
    return {
        "model": str(path),
        "batch": batch,
        "calls": calls,
        "kernel_us_per_call": total,
        "kernel_us_per_stream": total / batch,
        "by_op_us": {k: v / n for k, v in by_op.most_common()},
        "top_nodes_us": [{"node": k, "op": op_of[k], "us": v / n} for k, v in by_node.most_common(12)],
    }


def markdown(result: dict) -> str:
    rows = result["models"]
    names = list(rows)
    lines = [
        "# Where the step's time goes, by operator (ONNX Runtime profiler)",
        "",
        f"Machine: {result['machine']}, load {result['load'][0]:.2f} → {result['load'][1]:.2f}. One intra-op "
        f"thread, batch {result['batch']}, {result['calls']} profiled calls per model and round, "
        f"{result['rounds']} alternating rounds (kernel times summed inside each node).",
        "",
        "| model | kernel µs per call | µs per stream | streams per core (kernel time) | ratio to first |",
        "|---|---:|---:|---:|---:|",
    ]
    first = rows[names[0]]["kernel_us_per_call"]
    for name in names:
        r = rows[name]
        per = r["kernel_us_per_stream"]
        lines.append(
            f"| {name} | {r['kernel_us_per_call']:.0f} | {per:.1f} | {1e6 / (25 * per):.0f} | "
            f"{first / r['kernel_us_per_call']:.2f}× |"
        )
    ops: list[str] = []
    for name in names:
        for op in list(rows[name]["by_op_us"])[:10]:
            if op not in ops:
                ops.append(op)
    lines += ["", "Kernel µs per call by operator type:", "", "| operator | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---:|" * len(names))
    for op in ops:
        cells = [f"{rows[n]['by_op_us'].get(op, 0.0):.0f}" for n in names]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    for name in names:
        lines += ["", f"Top nodes of `{name}`:", "", "| node | op | µs per call |", "|---|---|---:|"]
        lines += [f"| {t['node']} | {t['op']} | {t['us']:.0f} |" for t in rows[name]["top_nodes_us"]]
    lines += ["", "Reproduce: `python -m benchmarks.step_ops --model NAME=PATH ... --batch B --out DIR`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH", help="a step model (repeat)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--calls", type=int, default=100, help="profiled calls per model and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args(argv)
    models = {}
    for item in a.model:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"step_ops: --model {item!r}: expected NAME=PATH of an existing .onnx file")
        models[name] = Path(path)
    if a.batch < 1 or a.calls < 1 or a.rounds < 1:
        raise SystemExit("step_ops: --batch, --calls and --rounds must be >= 1")
    load0 = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {n: [] for n in models}
    for _ in range(a.rounds):
        for name, path in models.items():
            runs[name].append(profile_model(path, a.batch, a.calls))
    merged = {}
    for name, rs in runs.items():
        best = min(rs, key=lambda r: r["kernel_us_per_call"])  # the round least disturbed by other processes
        merged[name] = {**best, "kernel_us_per_call_rounds": [r["kernel_us_per_call"] for r in rs]}
    mi = machine_info()
    result = {
        "machine": f"{mi.get('cpu', '?')} ({mi.get('logical_cpus', '?')} logical CPUs)",
        "machine_info": mi,
        "load": [load0, os.getloadavg()[0]],
        "batch": a.batch,
        "calls": a.calls,
        "rounds": a.rounds,
        "models": merged,
    }
    write_report(a.out, "step_ops", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
