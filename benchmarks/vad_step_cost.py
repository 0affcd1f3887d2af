"""What a voice-activity detector inside the exported step would cost: Silero VAD beside the shipped step.

    pip install --no-deps silero-vad            # the ONNX files are inside the wheel; torch is not needed
    python -m benchmarks.vad_step_cost --out benchmarks/results

Issue 15 (deliverable 3) suggests a causal voice-activity input inside the exported step, so that the mouth rests in
non-speech in every runtime alike; Silero VAD is the candidate its reference names (MIT, causal, ~0.14 ms per call).
A VAD in the step runs once per stream per 40 ms step, batched with the step. This benchmark times, on one core
(one intra-op thread, CPU time per call), the VAD's 16 kHz ONNX model (`silero_vad_16k_op15.onnx`: exactly 512 new
samples plus 64 of context per call) and the shipped step models (float32 and int8) at the same batch sizes,
interleaved in rounds so that both see the same machine. A step brings 640 new samples, so hearing all of a stream's
audio takes 640 / 512 = 1.25 VAD calls per stream-frame (in a step graph: a sample buffer in the state, one or two
calls per step); the table gives the VAD at that rate and each step as microseconds per stream-frame, and the
VAD's cost as a share of each step's. The VAD's recurrent state is fed back as a stream would; its audio is random
(cost does not depend on the samples).

Without the `silero-vad` package (or `--vad PATH`) it exits with status 2 and says how to install it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_info, machine_load_line, write_report

VAD_FILE = "silero_vad_16k_op15.onnx"
VAD_SAMPLES = 576  # 512 new samples + 64 of context at 16 kHz (the model's own convention)
VAD_CALLS_PER_FRAME = 640 / 512  # calls per 40 ms stream-frame to hear every sample


def find_vad() -> Path | None:
    """The 16 kHz Silero VAD ONNX file inside an installed `silero_vad` package, or None."""
    import importlib.util

    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / VAD_FILE
    return path if path.is_file() else None


def _session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _cpu_per_call(fn, calls: int) -> float:
    t0 = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - t0) / calls


def measure(vad_path: Path, models: dict[str, Path], batches: list[int], rounds: int, frames: int) -> dict:
    """CPU seconds per call of the VAD and of every step model at each batch size; median over `rounds`
    interleaved rounds of about `frames` stream-frames each."""
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    rng = np.random.default_rng(0)
    vad = _session(vad_path)
    runners = {name: OnnxStepRunner(path, threads=1) for name, path in models.items()}
    out: dict[str, Any] = {"batches": {}}
    for b in batches:
        calls = max(10, frames // b)
        x = (rng.standard_normal((b, VAD_SAMPLES)) * 0.05).astype(np.float32)
        vad_state = {"s": np.zeros((2, b, 128), np.float32)}
        sr = np.array(16000, np.int64)

        def vad_call(x=x, vad_state=vad_state, sr=sr) -> None:
            _, vad_state["s"] = vad.run(None, {"input": x, "state": vad_state["s"], "sr": sr})

        step_calls = {}
        for name, r in runners.items():
            audio = (rng.standard_normal((b, r.contract.samples_per_frame)) * 0.05).astype(np.float32)
            holder = {"state": r.initial_state(b, rng=rng)}

            def step_call(r=r, audio=audio, holder=holder) -> None:
                _, holder["state"] = r.step(audio, holder["state"])

            step_calls[name] = step_call
        for fn in [vad_call, *step_calls.values()]:  # warm-up
            _cpu_per_call(fn, 5)
        samples: dict[str, list[float]] = {"vad": [], **{n: [] for n in step_calls}}
        for _ in range(rounds):
            samples["vad"].append(_cpu_per_call(vad_call, calls))
            for name, fn in step_calls.items():
                samples[name].append(_cpu_per_call(fn, calls))
        out["batches"][str(b)] = {
            name: {
                "ms_per_call": 1e3 * float(np.median(v)),
                "us_per_frame": 1e6 * float(np.median(v)) / b * (VAD_CALLS_PER_FRAME if name == "vad" else 1.0),
            }
            for name, v in samples.items()
        }
    return out


def markdown(res: dict) -> str:
    names = [n for n in next(iter(res["batches"].values())) if n != "vad"]
    lines = [
        "# A voice-activity detector in the step: what it would cost",
        "",
        f"`{res['command']}`",
        "",
        f"Machine: {machine_load_line(res['machine'])}, {res['machine']['time_utc']}. One core, one intra-op thread, "
        f"CPU time per call, median of {res['rounds']} interleaved rounds. VAD: `{res['vad']}` (512 new samples a call, "
        f"{VAD_CALLS_PER_FRAME:g} calls per 640-sample stream-frame to hear all of it); steps: the shipped models.",
        "",
        "| batch | VAD µs / stream-frame | "
        + " | ".join(f"{n} step µs / stream-frame | VAD ÷ {n} step" for n in names)
        + " |",
        "|---|---|" + "---|---|" * len(names),
    ]
    for b, row in res["batches"].items():
        v = row["vad"]["us_per_frame"]
        cells = " | ".join(f"{row[n]['us_per_frame']:.1f} | {v / row[n]['us_per_frame']:.2f}" for n in names)
        lines.append(f"| {b} | {v:.1f} | {cells} |")
    lines += [
        "",
        "A VAD inside the step adds its cost to every stream-frame: streams per core fall by the factor "
        "1 / (1 + VAD ÷ step).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import os
    import shlex
    import sys

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--vad", default="", help=f"the Silero VAD ONNX file (default: {VAD_FILE} of silero_vad)")
    p.add_argument("--batches", default="1,64", help="comma list of batch sizes (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--frames", type=int, default=3000, help="stream-frames per round and model (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results", help="output directory")
    p.add_argument("--name", default="vad_step_cost", help="stem of the files written (default: %(default)s)")
    args = p.parse_args(argv)
    vad_path = Path(args.vad) if args.vad else find_vad()
    if args.vad and not vad_path.is_file():  # type: ignore[union-attr]
        print(f"vad_step_cost: --vad {args.vad}: no such file", file=sys.stderr)
        return 2
    if vad_path is None or not vad_path.is_file():
        print(
            f"vad_step_cost: no Silero VAD model ({args.vad or VAD_FILE}); install it with "
            "`pip install --no-deps silero-vad` or pass --vad PATH",
            file=sys.stderr,
        )
        return 2
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batches: expected a comma list of integers, got {args.batches!r}")
    if not batches or min(batches) < 1 or args.rounds < 1 or args.frames < 1:
        p.error("--batches, --rounds and --frames must be positive")
    models_dir = Path(__file__).resolve().parents[1] / "stream_engine" / "models"
    models = {"float32": models_dir / "default.onnx", "int8": models_dir / "default_int8.onnx"}
    machine = machine_info()
    res = measure(vad_path, models, batches, args.rounds, args.frames)
    machine["load_avg_1m_end"] = os.getloadavg()[0]
    res.update(
        machine=machine,
        rounds=args.rounds,
        vad=vad_path.name,
        command="python -m benchmarks.vad_step_cost " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
    )
    write_report(args.out, args.name, res, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
