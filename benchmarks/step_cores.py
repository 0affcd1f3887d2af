"""The step alone under the settings that decide how a CPU engine uses cores: intra-op threads 1 vs 2 (wall and
CPU time per call), batch size, and ONNX Runtime session options, for the shipped fp32 and int8 models.

    python -m benchmarks.step_cores [--batches 64 256] [--rounds 6] [--out benchmarks/results]

Each configuration is its own ONNX Runtime session (same model, same inputs: speech-like audio and the state
after 25 steps of it); a pause separates timings, because a 2-thread session's pool keeps spinning for a
while after its calls and, timed right after it, a 1-thread session looked up to 1.7x slower (an earlier version
of this benchmark took that for a gain from flushing denormals to zero); rounds of 10 calls are interleaved over all configurations so machine load hits them alike; the median
round gives wall ms and CPU ms (process time, every thread) per call, and streams per core = B / (25 x CPU s
per call), streams per wall-second of the process = B / (25 x wall s per call). Writes step_cores.json/.md with
the CPU model and `uptime`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WARM_STEPS = 25  # the timed calls start from the state after this many steps of speech
OPTIONS: dict[str, dict[str, str]] = {
    "default": {},
    "denormal_as_zero": {"session.set_denormal_as_zero": "1"},
    "no_spinning": {"session.intra_op.allow_spinning": "0"},
}


def _session(path: Path, threads: int, options: dict[str, str]) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    for key, value in options.items():
        so.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    from benchmarks.common import machine_info, write_report
    from stream_engine.config import DEFAULT_MODEL_PATH
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    from fakes import speechlike

    uptime = [subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()]
    models = {"fp32": DEFAULT_MODEL_PATH, "int8": DEFAULT_MODEL_PATH.with_name("default_int8.onnx")}
    configs = [("fp32", 1, "default"), ("fp32", 2, "default"), ("int8", 1, "default"), ("int8", 2, "default")]
    configs += [("int8", 2, "no_spinning"), ("int8", 1, "denormal_as_zero")]
    rows = []
    for batch in args.batches:
        sessions, feeds = {}, {}
        for model, threads, opt in configs:
            if model not in feeds:  # a mid-rollout state: the initial state alone is not representative
                runner = OnnxStepRunner(models[model], threads=1)
                c = runner.contract
                steps = WARM_STEPS + 1
                audio = speechlike(batch * steps * c.samples_per_frame, seed=batch).reshape(batch, steps, -1)
                state = runner.initial_state(batch)
                for t in range(WARM_STEPS):
                    _, state = runner.step(audio[:, t], state)
                feeds[model] = {c.audio_input.name: audio[:, -1], **{s.name: state[s.name] for s in c.states}}
            sessions[(model, threads, opt)] = _session(models[model], threads, OPTIONS[opt])
        for key, sess in sessions.items():
            for _ in range(5):
                sess.run(None, feeds[key[0]])
        wall: dict[tuple[str, int, str], list[float]] = {k: [] for k in sessions}
        cpu: dict[tuple[str, int, str], list[float]] = {k: [] for k in sessions}
        for _ in range(args.rounds):
            for key, sess in sessions.items():
                time.sleep(0.1)  # a 2-thread session's pool spins on after its calls: not into the next timing
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(10):
                    sess.run(None, feeds[key[0]])
                wall[key].append((time.perf_counter() - t0) / 10)
                cpu[key].append((time.process_time() - c0) / 10)
        for key in sessions:
            w, c_ = 1e3 * float(np.median(wall[key])), 1e3 * float(np.median(cpu[key]))
            rows.append(
                {
                    "model": key[0],
                    "threads": key[1],
                    "options": key[2],
                    "batch": batch,
                    "wall_ms": w,
                    "cpu_ms": c_,
                    "streams_per_core": batch / (25 * c_ / 1e3),
                    "streams_per_process": batch / (25 * w / 1e3),
                }
            )
            print(rows[-1], flush=True)
    uptime.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    result = {
        "machine": machine_info(),
        "uptime_start_end": uptime,
        "command": "python -m benchmarks.step_cores " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": rows,
    }
    write_report(args.out, "step_cores", result, _markdown(result))
    return 0


def _markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# The step alone: intra-op threads, batch size, session options (one run, interleaved)",
        "",
        f"`{result['command']}`  ",
        f"CPU: {m['cpu']} ({m['logical_cpus']} logical), onnxruntime {m.get('onnxruntime')}; `uptime` at start: "
        f"{result['uptime_start_end'][0]}; at end: {result['uptime_start_end'][1]} (read the load averages: other jobs may share the machine).",
        "",
        "| model | B | intra-op threads | options | wall ms/call | CPU ms/call | streams per core (CPU) | "
        "streams per process (wall) |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['threads']} | {r['options']} | {r['wall_ms']:.2f} | "
            f"{r['cpu_ms']:.2f} | {r['streams_per_core']:.0f} | {r['streams_per_process']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
