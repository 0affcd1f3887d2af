"""Where the engine's CPU per frame goes, stage by stage, before/after in one run.

    python -m benchmarks.engine_stages --baseline-ref 5309b4e --out benchmarks/results [--runner onnx] [--rounds 3]

The throughput trial of `benchmarks.engine_throughput` (N streams fed in 20 ms chunks as fast as the engine takes
them, every frame serialised, one pinned core, a fresh subprocess per trial) with the engine's stage functions
wrapped by a timer of the calling thread's CPU time (`time.thread_time_ns`): the step (`run_batch`, on the
inference thread or the loop), push_audio, take_batch, commit, publish (signals + frame building + sinks), the
signals update and its per-frame objects, serialisation. push_audio is `Engine.push_audio_many` where the
engine has it (the feeder then pushes each 20 ms round of chunks in one call; older engines: one
`Engine.push_audio` per chunk). The engine around the step is the process's CPU less the step; what the stages
leave of it is the event loop, the hand-offs to the inference thread and the feeding loop. Variants ("baseline":
`git archive REF stream_engine`; "current": this checkout) alternate, `--rounds` trials each; the table gives the
median. The wrappers cost about 0.3 us per call (about 1 us per frame in all with one push per chunk; less with
one push per round).
Trials run `Engine.warm_up` first, as `msync stream` does (--no-warm-up: not; see `benchmarks.engine_throughput`).
Writes engine_stages.json/.md (--name).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: (label, alternatives): the first (module, attribute path) that exists is wrapped
STAGES = [
    ("step (run_batch, on whichever thread runs it)", [("stream_engine.core", "EngineCore.run_batch")]),
    ("push_audio", [("stream_engine.engine", "Engine.push_audio_many"), ("stream_engine.engine", "Engine.push_audio")]),
    ("take_batch", [("stream_engine.core", "EngineCore.take_batch")]),
    ("commit", [("stream_engine.core", "EngineCore.commit_batch"), ("stream_engine.core", "EngineCore.commit")]),
    ("publish (all below)", [("stream_engine.engine", "Engine._publish")]),
    ("publish: signals update", [("stream_engine.batch_signals", "BatchSignalExtractor.update")]),
    (
        "publish: signals update: compiled loop",
        [("stream_engine.batch_signals", "BatchSignalExtractor._run_kernel")],
    ),
    ("publish: signal objects (rows)", [("stream_engine.batch_signals", "SignalBatch.rows")]),
    (
        "publish: frame objects (with their signal objects)",
        [("stream_engine.frame_batch", "FrameBatch.frames"), ("stream_engine.core", "CommittedFrames.frames")],
    ),
    (
        "publish: serialise (sink)",
        [
            ("stream_engine.outputs.serializers", "encode_binary_batch"),
            ("stream_engine.outputs.serializers", "encode_binary_many"),
            ("stream_engine.outputs.serializers", "encode_binary"),
        ],
    ),
]


def _trial(spec: dict) -> dict:
    """In the child: wrap the stages, run one throughput trial, return CPU us per frame by stage."""
    import importlib

    acc: dict[str, int] = {}

    def wrap(owner: Any, name: str, label: str) -> None:
        f = getattr(owner, name)

        @functools.wraps(f)
        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.thread_time_ns()
            try:
                return f(*a, **k)
            finally:
                acc[label] = acc.get(label, 0) + time.thread_time_ns() - t0

        setattr(owner, name, timed)

    package = Path(str(importlib.import_module("stream_engine").__file__)).resolve().parent  # the variant's
    for label, alternatives in STAGES:
        if spec.get("one_push") and label == "push_audio":
            alternatives = [("stream_engine.engine", "Engine.push_audio")]
        if spec.get("frames_sink") and label == "publish: serialise (sink)":
            alternatives = alternatives[1:]
        for module, path in alternatives:
            try:
                owner: Any = importlib.import_module(module)
            except ImportError:  # a module the variant does not have
                continue
            if not Path(owner.__file__).resolve().is_relative_to(package):
                continue  # found elsewhere (the editable install's finder): not the variant's own module
            *owner_path, name = path.split(".")
            for part in owner_path:
                owner = getattr(owner, part, None)
            if owner is not None and hasattr(owner, name):
                wrap(owner, name, label)
                break
    sys.path.append(str(REPO))  # after the variant's stream_engine (already imported above)
    from benchmarks.engine_throughput import run_trial

    out = run_trial(spec)
    frames = max(1, out["frames"])
    stages = {label: acc.get(label, 0) / 1e3 / frames for label, _ in STAGES}
    step = stages["step (run_batch, on whichever thread runs it)"]
    around = out["cpu_us_per_frame"] - step
    stages["other (event loop, thread hand-offs, feeding)"] = around - sum(
        stages[k] for k in ("push_audio", "take_batch", "commit", "publish (all below)")
    )
    return {
        "frames": out["frames"],
        "cpu_us_per_frame": out["cpu_us_per_frame"],
        "step_us_per_frame": step,
        "around_step_us_per_frame": around,
        "stages_us_per_frame": stages,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--baseline-ref", help="git revision whose engine is measured beside this checkout's")
    p.add_argument("--runner", default="onnx", choices=["zero", "fake", "onnx", "onnx_int8"])
    p.add_argument("--streams", type=int, default=512)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-signals", action="store_true")
    p.add_argument(
        "--no-warm-up", dest="warm_up", action="store_false", help="trials without Engine.warm_up (older protocol)"
    )
    p.add_argument("--name", default="engine_stages", help="report file name (without .json/.md)")
    p.add_argument("--backlog-ms", type=float, default=0.0, help="most pending audio per stream (0 = no bound)")
    p.add_argument("--one-push", action="store_true", help="feed one push_audio per chunk (not push_audio_many)")
    p.add_argument(
        "--frames-sink", action="store_true", help="an old-style sink (send_frames) even where the engine has batches"
    )
    p.add_argument("--max-batch", type=int, default=0, help="most streams per runner call (0: the engine's default)")
    p.add_argument("--trial", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.trial:
        print(json.dumps(_trial(json.loads(a.trial))))
        return 0
    sys.path.insert(0, str(REPO))
    from benchmarks.common import baseline_tree, machine_info, spawn_trial, write_report

    cpu = sorted(os.sched_getaffinity(0))[-1]
    variants = {"current": REPO}
    if a.baseline_ref:
        variants = {"baseline": baseline_tree(a.baseline_ref), "current": REPO}
    spec = {"runner": a.runner, "streams": a.streams, "seconds": a.seconds, "realtime": False}
    spec["signals"] = not a.no_signals
    spec["warm_up"] = a.warm_up
    spec["max_backlog_samples"] = int(a.backlog_ms * 16)
    spec["one_push"] = a.one_push
    spec["frames_sink"] = a.frames_sink
    spec["max_batch"] = a.max_batch
    result: dict[str, Any] = {"machine": machine_info(), "cpu_core": cpu, "baseline_ref": a.baseline_ref, **spec}
    trials: dict[str, list[dict]] = {name: [] for name in variants}
    try:
        for _ in range(a.rounds):
            for name, root in variants.items():
                t = spawn_trial(Path(__file__).resolve(), spec, cpu, root)
                trials[name].append(t)
                print(f"{name}: {t['cpu_us_per_frame']:.1f} us/frame", file=sys.stderr, flush=True)
    finally:
        if "baseline" in variants:
            import shutil

            shutil.rmtree(variants["baseline"], ignore_errors=True)
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    result["trials"] = trials
    median: dict[str, dict[str, float]] = {}
    for name, ts in trials.items():
        m = {k: statistics.median(t[k] for t in ts) for k in ts[0] if isinstance(ts[0][k], float)}
        m.update({k: statistics.median(t["stages_us_per_frame"][k] for t in ts) for k in ts[0]["stages_us_per_frame"]})
        median[name] = m
    result["median"] = median
    write_report(Path(a.out), a.name, result, _markdown(result))
    return 0


def _markdown(result: dict) -> str:
    from benchmarks.common import machine_load_line

    m, med = result["machine"], result["median"]
    names = list(med)
    rows = ["cpu_us_per_frame", "step_us_per_frame", "around_step_us_per_frame"]
    labels = {
        "cpu_us_per_frame": "**process CPU per frame**",
        "step_us_per_frame": "the step (runner call)",
        "around_step_us_per_frame": "**the engine around the step** (all below)",
    }
    skip = set(rows) | {"step (run_batch, on whichever thread runs it)"}
    stage_keys = [k for k in med[names[0]] if k not in skip]
    lines = [
        "# Engine CPU per frame by stage",
        "",
        f"Machine: {machine_load_line(m)}, Python {m.get('python')}, "
        f"{m.get('time_utc')}. One pinned core (cpu {result['cpu_core']}), runner {result['runner']}, "
        f"{result['streams']} streams, signals {'on' if result['signals'] else 'off'}, "
        f"Engine.warm_up before the streams open: {'yes' if result.get('warm_up') else 'no'}, "
        f"median of {len(result['trials'][names[0]])} interleaved trials per variant.",
        f"Baseline: `{result.get('baseline_ref') or '-'}`. Command: `python -m benchmarks.engine_stages "
        f"--baseline-ref {result.get('baseline_ref') or 'REF'} --runner {result['runner']} --streams "
        f"{result['streams']}{'' if result['signals'] else ' --no-signals'}"
        f"{'' if result.get('warm_up') else ' --no-warm-up'}"
        f"{' --backlog-ms %g' % (result['max_backlog_samples'] / 16) if result.get('max_backlog_samples') else ''}"
        f"{' --one-push' if result.get('one_push') else ''}"
        f"{' --frames-sink' if result.get('frames_sink') else ''}"
        + (f" --max-batch {result['max_batch']}" if result.get("max_batch") else "")
        + "`.",
        "",
        "| us per frame | " + " | ".join(names) + (" | change |" if len(names) == 2 else ""),
        "|---|" + "---|" * (len(names) + (1 if len(names) == 2 else 0)),
    ]
    for k in rows + stage_keys:
        vals = [med[n][k] for n in names]
        change = f" | {vals[1] - vals[0]:+.1f}" if len(names) == 2 else ""
        lines.append(f"| {labels.get(k, k)} | " + " | ".join(f"{v:.1f}" for v in vals) + change + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
