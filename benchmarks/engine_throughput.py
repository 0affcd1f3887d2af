"""How much of a core the engine around the step costs: before/after in one run, zero-cost and real model.

    python -m benchmarks.engine_throughput --out benchmarks/results [--baseline-ref REF] [--quick]

Every figure is measured on one pinned CPU core, in-process (audio pushed in 20 ms chunks, every frame
serialised by a sink as that engine's WebSocket server serialises it for binary clients: a step's frames together
where the engine has `encode_binary_many`, else one by one; sockets excluded), in a fresh subprocess per
trial. Variants: "current" (this checkout) and, with --baseline-ref, the engine of that git revision
(`git archive REF stream_engine` into a temporary folder; the same runners from this checkout's tests/fakes.py),
trials interleaved so machine load hits both alike.

Feeding: each 20 ms round of every stream's chunks goes in one `Engine.push_audio_many` call where the engine has
it (one `push_audio` per chunk in older engines, e.g. a baseline, and with --one-push).

Sink: where the engine publishes `FrameBatch`es, the sink takes them (`send_batch`) and serialises from the
columns (`encode_binary_batch`), as the WebSocket server does for binary clients; --frames-sink gives every
engine an old-style `send_frames` sink (the engine then builds every frame object).

1. Throughput: N streams fed as fast as the engine takes them; CPU time per frame -> the streams per core the
   engine could hold if nothing else ran (1 / (25 x CPU s per frame)). The feeder pushes a round to every
   stream between the engine's batches, so it runs ahead: by the end each stream holds seconds of audio (p50
   2.4 s at 512 streams), and pushes and takes work on large FIFO buffers far out of cache. --backlog-ms M
   holds each stream to about M ms of pending audio instead (the feeder waits while the last stream holds
   more), as a real-time or back-pressured source (`Engine.wait_capacity`) would.
2. Real-time capacity: N streams fed on the wall clock (all streams' chunks arrive together every 20 ms, the
   worst case for batching latency); the largest N whose frames meet the deadline (p99 engine-added latency
   < 40 ms, <= 0.1 % late, >= 98 % of frames out): 95 % of the CPU estimate, else bisected in up to 4
   trials from 25 % of it (it depends on what else runs on that core: read it with the load average).
3. The step alone (real model): ONNX Runtime B=64, CPU time per call (mean of 200) through `step` (state
   dicts) and `step_slots` (I/O binding, slot store), 1 and 2 intra-op threads -> the step's batched streams
   per core, the denominator of the issue's ratio (both sides in CPU time, so machine load cancels). Two
   denominators, 1 thread: over a store of 64 slots (the best of `step` / `step_slots`; the figure before
   engine_throughput_14j) and as the engine calls it, `step_slots` with B = 64 round robin over as many slots
   as the throughput trials serve. Each is measured once per round between the engine trials and the best
   trial counts, as the engine's best does (a single step trial after them read 10-15 % apart from run to run).
   A third figure pairs neighbours instead of bests: each round's engine trial over the step trial (as the
   engine calls it) run right after it, the median over rounds; the bests of the two sides can come from
   different stretches of this shared VM's speed, neighbours mostly do not. Where the engine's calls are not
   64 streams (`EngineConfig.batch_step_ms` sizes them by time), a fourth figure pairs each engine trial with
   `step_slots` at the engine's own median call size, run right after it: the ratio at equal batches.
4. Engine-added latency p50/p99 (publish - arrival of the last needed sample) at 1 and 100 real-time streams
   (--latency-streams, --latency-rounds: other counts, repeated; a trial "misses" as a capacity probe does).

By default each trial's engine runs `Engine.warm_up` before its streams open, as `msync stream` does: the state store and the step's buffers touched, the signals' compiled loop ready, and the objects then
alive moved out of the garbage collector's reach (`gc.freeze`; without it, full collections over the
benchmark process cost about 3 us per frame that a served engine does not pay). --no-warm-up gives the
protocol of the results before engine_throughput_14g.

--max-batch B sets the engine's `max_batch_streams` in the throughput trials (0: the engine's default).

Runners: "zero" (tests/fakes.py ZeroCostRunner: the reference face, no compute), "fake" (FakeRunner: a face
computed per stream in Python, the runner of the earlier 128-streams figure), "onnx" (the shipped model, float32)
and "onnx_int8" (its shipped int8 variant, `default_int8.onnx`, the CPU default of `msync stream`).
Signals on (the shipped default) and off (the engine alone). Writes engine_throughput.json/.md (--name).
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
TESTS = REPO / "tests"


# ------------------------------------------------------------------------------------------ trial (child)


def _make_runner(kind: str):
    sys.path.insert(0, str(TESTS))
    if kind == "zero":
        from fakes import ZeroCostRunner

        return ZeroCostRunner(lookahead_frames=2)
    if kind == "fake":
        from fakes import FakeRunner

        return FakeRunner(lookahead_frames=2)
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    return OnnxStepRunner(_model_path(kind), threads=1)


ONNX_RUNNERS = ("onnx", "onnx_int8")
RUNNERS = ["zero", "fake", *ONNX_RUNNERS]


def _model_path(kind: str):
    """The shipped model of an ONNX runner kind (the variant's own stream_engine/models)."""
    from stream_engine.config import DEFAULT_MODEL_PATH

    return DEFAULT_MODEL_PATH.with_name("default_int8.onnx") if kind == "onnx_int8" else DEFAULT_MODEL_PATH


def run_trial(spec: dict) -> dict:
    """One trial in this process (already pinned by the parent)."""
    import asyncio

    import numpy as np

    sys.path.insert(0, str(TESTS))
    from stream_engine.engine import Engine, EngineConfig
    from stream_engine.outputs.serializers import encode_binary

    from fakes import speechlike

    encode_binary_many: Any = None  # a step's frames serialised together, as this engine's WebSocket server does
    try:  # (older engines, measured as a baseline: one frame at a time)
        from stream_engine.outputs.serializers import encode_binary_many
    except ImportError:
        pass
    encode_binary_batch: Any = None  # a published step serialised from its columns (engines that publish batches)
    if not spec.get("frames_sink"):
        try:
            from stream_engine.outputs.serializers import encode_binary_batch
        except ImportError:
            pass

    runner = _make_runner(spec["runner"])
    n, seconds, realtime = spec["streams"], spec["seconds"], spec["realtime"]
    lat: list[float] = []
    counted = [0]

    class Sink:
        def send_frames(self, frames):
            now = time.monotonic_ns()
            if encode_binary_many is not None:
                encode_binary_many(frames, now)
            else:
                for f in frames:
                    encode_binary(f, now)
            lat.extend([(now - f.timings.audio_ready_ns) / 1e6 for f in frames])
            counted[0] += len(frames)

        def stream_event(self, event):
            pass

        async def aclose(self):
            pass

    class BatchSink(Sink):
        """The batch sink contract (engines that publish `FrameBatch`es): serialised from the columns."""

        def send_batch(self, batch):
            now = time.monotonic_ns()
            encode_binary_batch(batch, now)
            lat.extend(((now - batch.audio_ready_ns) / 1e6).tolist())
            counted[0] += len(batch)

    audio = speechlike(int((seconds + 1) * 16000), seed=1)
    chunk = 320
    # no silence after the end
    extra: dict[str, Any] = {"stall_ms": 0} if "stall_ms" in EngineConfig.__dataclass_fields__ else {}
    if spec.get("max_batch"):  # --max-batch: most streams per runner call (EngineConfig.max_batch_streams)
        extra["max_batch_streams"] = int(spec["max_batch"])
    cfg = EngineConfig(max_streams=max(64, n), signals=spec["signals"], **extra)

    async def main():
        async with Engine(runner, cfg) as engine:
            engine.add_sink(Sink() if encode_binary_batch is None else BatchSink())
            if spec.get("warm_up"):  # as `msync stream` serves: Engine.warm_up before any stream (gc.freeze too)
                await engine.warm_up()
            ids = [engine.open_stream().stream_id for _ in range(n)]
            many = getattr(engine, "push_audio_many", None)  # older engines, measured as a baseline: one by one
            if spec.get("one_push"):  # --one-push: one push_audio per chunk whatever the engine has
                many = None

            def push_round(piece):
                if many is not None:
                    errors = many(ids, [piece] * n)
                    assert not errors, errors
                else:
                    for sid in ids:
                        engine.push_audio(sid, piece)

            warm = 0
            if spec["runner"] in ONNX_RUNNERS:  # warm the runtime's buffers for every batch size used
                warm = 640
                push_round(audio[:640])
                await asyncio.sleep(0.5)
                lat.clear()
                counted[0] = 0
            t0_ns = time.monotonic_ns()
            c0 = time.process_time()
            pos, tick = 0, 0
            while pos + chunk <= seconds * 16000:
                tick += 1
                if realtime:
                    delay = t0_ns + tick * 20_000_000 - time.monotonic_ns()
                    if delay > 0:
                        await asyncio.sleep(delay / 1e9)
                push_round(audio[pos : pos + chunk])
                pos += chunk
                if not realtime:
                    await asyncio.sleep(0)
                    backlog = spec.get("max_backlog_samples", 0)  # 0: the feeder runs ahead without bound
                    while backlog and engine.core.pending_samples(ids[-1]) > backlog:
                        await asyncio.sleep(0)  # the engine steps while the feeder waits (back-pressure)
            expected = n * ((warm + pos) // 640 - 2)  # the warm-up step made no frame (L = 2)
            if not realtime:
                while counted[0] < expected and time.monotonic_ns() - t0_ns < 300e9:
                    await asyncio.sleep(0.001)
            else:
                await asyncio.sleep(0.3)
            batch_sizes[:] = getattr(engine.stats, "batch_sizes", ())  # the last 1000 runner calls
            return time.process_time() - c0, expected

    batch_sizes: list[int] = []
    cpu_s, expected = asyncio.run(main())
    frames = counted[0]
    lat_a = np.array(lat[n * 5 :] if len(lat) > n * 10 else lat)
    out = {
        **spec,
        "frames": frames,
        "frames_expected": int(expected),
        "cpu_s": cpu_s,
        "cpu_us_per_frame": 1e6 * cpu_s / max(1, frames),
        "streams_per_core_by_cpu": frames / max(cpu_s, 1e-9) / 25.0,
    }
    if batch_sizes:  # the streams per runner call the engine chose (its last 1000 calls)
        out["batch_median"] = int(np.median(batch_sizes))
        out["batch_max"] = int(max(batch_sizes))
    if lat_a.size:
        out.update(
            p50_ms=float(np.percentile(lat_a, 50)),
            p99_ms=float(np.percentile(lat_a, 99)),
            late_fraction=float(np.mean(lat_a > 40.0)),
        )
        out["ok"] = bool(out["late_fraction"] <= 0.001 and out["p99_ms"] < 40.0 and frames >= 0.98 * expected)
    return out


def run_step_trial(spec: dict) -> dict:
    """The ONNX step alone, B rows, `threads` intra-op threads: ms per call via `step` and `step_slots`.

    spec["slots"] (default B): the slot store's rows. With more than B, `step_slots` steps B-row batches
    round robin over all of them (rows [0, B), [B, 2B), ..., as the engine's round robin takes a fully ready
    store), so each call's state is the one stepped slots / B calls ago, as in the engine; then only
    `step_slots` is timed (the engine's call)."""
    import numpy as np

    from stream_engine.runtime.onnxrt import OnnxStepRunner

    b, threads, reps = spec["batch"], spec["threads"], spec["reps"]
    n_slots = int(spec.get("slots") or b)
    runner = OnnxStepRunner(_model_path(spec.get("runner", "onnx")), threads=threads)
    audio = (np.random.default_rng(0).standard_normal((b, runner.contract.samples_per_frame)) * 0.1).astype(np.float32)
    out = {**spec}
    if n_slots > b:
        slots = runner.new_slots(n_slots)
        for r in range(n_slots):
            slots.alloc()
            slots.init_row(r)
        groups = [np.arange(g, min(g + b, n_slots)) for g in range(0, n_slots - b + 1, b)]
        for i in range(2 * len(groups)):
            runner.step_slots(slots, groups[i % len(groups)], audio)
        t = []
        for i in range(reps):
            rows = groups[i % len(groups)]
            t0 = time.process_time()
            runner.step_slots(slots, rows, audio)
            t.append(time.process_time() - t0)
        out["step_slots_ms_p50"] = 1e3 * float(np.mean(t))
        out["streams_per_core"] = b / (25.0 * out["step_slots_ms_p50"] / 1e3)
        return out
    state = runner.initial_state(b)
    for _ in range(5):
        _, state = runner.step(audio, state)
    t = []
    for _ in range(reps):  # CPU time (all threads of the process), comparable with the engine's CPU per frame
        t0 = time.process_time()
        _, state = runner.step(audio, state)
        t.append(time.process_time() - t0)
    out["step_ms_p50"] = 1e3 * float(np.mean(t))  # mean: process_time ticks are coarse
    if hasattr(runner, "step_slots"):
        slots = runner.new_slots(b)
        for r in range(b):
            slots.alloc()
            slots.init_row(r)
        rows = np.arange(b)
        for _ in range(5):
            runner.step_slots(slots, rows, audio)
        t = []
        for _ in range(reps):
            t0 = time.process_time()
            runner.step_slots(slots, rows, audio)
            t.append(time.process_time() - t0)
        out["step_slots_ms_p50"] = 1e3 * float(np.mean(t))
    best = min(out["step_ms_p50"], out.get("step_slots_ms_p50", float("inf")))
    out["streams_per_core"] = b / (25.0 * best / 1e3)  # CPU time already sums every thread
    return out


# ------------------------------------------------------------------------------------------ parent


def _child(variant_root: Path, spec: dict, cpu: int | None, timeout_s: float = 600) -> dict:
    """One trial of this benchmark in a fresh process running `variant_root`'s engine (`common.spawn_trial`)."""
    from benchmarks.common import spawn_trial

    return spawn_trial(Path(__file__).resolve(), spec, cpu, variant_root, timeout_s)


def capacity(
    variants: dict[str, Path],
    runner: str,
    signals: bool,
    cpu: int,
    seconds: float,
    estimate: dict[str, float],
    log,
    probes: int = 4,
    warm_up: bool = True,
) -> dict:
    """Largest real-time N per variant: 95 % of the CPU estimate, else bisection from a quarter of it
    (`probes` trials at most; the answer is the largest N that passed, 0 when even the lowest failed)."""
    out = {}
    for name, root in variants.items():
        lo, hi = max(1, int(estimate[name] * 0.25)), max(1, int(estimate[name] * 0.95))
        trials: list[dict[str, Any]] = []
        good = 0

        def probe(n: int, name: str = name, root: Path = root, trials: list[dict[str, Any]] = trials) -> bool:
            t = _child(
                root,
                {
                    "runner": runner,
                    "streams": n,
                    "seconds": seconds,
                    "realtime": True,
                    "signals": signals,
                    "warm_up": warm_up,
                },
                cpu,
            )
            trials.append(
                {
                    k: t.get(k)
                    for k in ("streams", "p50_ms", "p99_ms", "late_fraction", "frames", "frames_expected", "ok")
                }
            )
            log(
                f"  {name} {runner} signals={signals} N={n}: p99 {t.get('p99_ms', float('nan')):.1f} ms "
                f"{'ok' if t.get('ok') else 'FAIL'}"
            )
            return bool(t.get("ok"))

        if probe(hi):
            good = hi
        elif probe(lo):
            good = lo
            for _ in range(probes - 2):
                mid = (lo + hi) // 2
                if mid in (lo, hi):
                    break
                if probe(mid):
                    good = lo = mid
                else:
                    hi = mid
        out[name] = {"max_realtime_streams": good, "trials": sorted(trials, key=lambda x: x["streams"])}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--baseline-ref", help="git revision whose engine is measured beside this checkout's")
    p.add_argument("--runners", nargs="+", default=["zero", "fake", "onnx"], choices=RUNNERS)
    p.add_argument("--throughput-streams", type=int, default=512)
    p.add_argument("--seconds", type=float, default=4.0, help="audio per throughput / real-time trial")
    p.add_argument("--no-capacity", action="store_true", help="skip the real-time capacity search")
    p.add_argument("--capacity-runners", nargs="+", default=["zero", "onnx"], choices=RUNNERS)
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--no-warm-up", dest="warm_up", action="store_false", help="trials without Engine.warm_up (older protocol)"
    )
    p.add_argument("--name", default="engine_throughput", help="report file name (without .json/.md)")
    p.add_argument("--rounds", type=int, default=2, help="throughput trials per variant (the best counts)")
    p.add_argument("--backlog-ms", type=float, default=0.0, help="throughput feeding: most pending audio (0 = none)")
    p.add_argument("--one-push", action="store_true", help="feed one push_audio per chunk (not push_audio_many)")
    p.add_argument(
        "--frames-sink", action="store_true", help="an old-style sink (send_frames) even where the engine has batches"
    )
    p.add_argument(
        "--latency-streams",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 100],
        help="stream counts of the real-time latency trials, comma-separated (default 1,100)",
    )
    p.add_argument("--latency-rounds", type=int, default=1, help="real-time latency trials per count and variant")
    p.add_argument(
        "--max-batch", type=int, default=0, help="throughput trials: most streams per runner call (0: the default)"
    )
    p.add_argument("--trial", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.trial:
        spec = json.loads(a.trial)
        print(json.dumps(run_step_trial(spec) if spec.get("kind") == "step" else run_trial(spec)))
        return 0
    sys.path.insert(0, str(REPO))
    from benchmarks.common import baseline_tree, machine_info, write_report

    if a.quick:
        a.throughput_streams, a.seconds, a.runners = 64, 1.0, ["zero"]
    cpu = sorted(os.sched_getaffinity(0))[-1]
    variants = {"current": REPO}
    if a.baseline_ref:
        variants = {"baseline": baseline_tree(a.baseline_ref), "current": REPO}

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "machine": machine_info(),
        "cpu_core": cpu,
        "baseline_ref": a.baseline_ref,
        "runners": {},
    }
    for runner in a.runners:
        r: dict[str, Any] = {}
        result["runners"][runner] = r
        # the step alone, 1 thread, measured between the engine trials (one of each kind per round), so that the
        # engine's best and the step's best come from the same stretch of machine load
        step_trials: dict[str, list[dict[str, Any]]] = {"64": [], "n": [], "own": []}
        reps = 200 if not a.quick else 20
        for signals in (True, False):
            key = "signals" if signals else "no_signals"
            tp: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
            # each round's current engine trial over the step-alone trial (as the engine calls it) run right after
            # it: a ratio of two neighbours, which this shared VM's drift between rounds leaves alone
            paired: list[float] = []
            # the same over the step alone at the batch size the engine chose (its median call): the
            # denominator at equal batches, where the engine's calls are not 64 streams
            paired_own: list[float] = []
            own_batches: list[int] = []
            for _ in range(a.rounds):  # interleaved: baseline, current, baseline, current, ...
                for name, root in variants.items():
                    t = _child(
                        root,
                        {
                            "runner": runner,
                            "streams": a.throughput_streams,
                            "seconds": a.seconds,
                            "realtime": False,
                            "signals": signals,
                            "warm_up": a.warm_up,
                            "max_backlog_samples": int(a.backlog_ms * 16),
                            "one_push": a.one_push,
                            "frames_sink": a.frames_sink,
                            "max_batch": a.max_batch,
                        },
                        cpu,
                    )
                    tp[name].append(t)
                    log(
                        f"[{runner} {key}] throughput {name}: {t['cpu_us_per_frame']:.1f} us/frame -> "
                        f"{t['streams_per_core_by_cpu']:.0f} streams/core"
                    )
                if runner in ONNX_RUNNERS:
                    for kind, slots in (("64", 64), ("n", a.throughput_streams)):
                        spec_s = {"kind": "step", "runner": runner, "batch": 64, "threads": 1, "slots": slots}
                        step_trials[kind].append(_child(REPO, {**spec_s, "reps": reps}, cpu))
                    paired.append(
                        tp["current"][-1]["streams_per_core_by_cpu"] / step_trials["n"][-1]["streams_per_core"]
                    )
                    own_b = tp["current"][-1].get("batch_median", 64)
                    if own_b != 64:
                        spec_o = {"kind": "step", "runner": runner, "batch": own_b, "threads": 1}
                        spec_o.update(slots=max(own_b, a.throughput_streams), reps=max(10, reps * 64 // own_b))
                        step_trials["own"].append(_child(REPO, spec_o, cpu))
                        paired_own.append(
                            tp["current"][-1]["streams_per_core_by_cpu"] / step_trials["own"][-1]["streams_per_core"]
                        )
                        own_batches.append(own_b)
            best = {name: max(x["streams_per_core_by_cpu"] for x in ts) for name, ts in tp.items()}
            entry: dict[str, Any] = {
                "throughput": {
                    name: {
                        "streams_per_core_by_cpu": best[name],
                        "cpu_us_per_frame": min(x["cpu_us_per_frame"] for x in ts),
                    }
                    for name, ts in tp.items()
                }
            }
            if paired:
                entry["engine_over_step_paired"] = {"median": statistics.median(paired), "rounds": paired}
            if paired_own:
                entry["engine_over_step_own_batch_paired"] = {
                    "median": statistics.median(paired_own),
                    "rounds": paired_own,
                    "batches": own_batches,
                    "step_trials": step_trials["own"][-len(paired_own) :],
                }
            if not a.no_capacity and not a.quick and runner in a.capacity_runners:
                entry["capacity"] = capacity(variants, runner, signals, cpu, a.seconds, best, log, warm_up=a.warm_up)
            if "baseline" in variants:
                entry["throughput_ratio_current_over_baseline"] = best["current"] / best["baseline"]
                if "capacity" in entry and entry["capacity"]["baseline"]["max_realtime_streams"]:
                    entry["capacity_ratio_current_over_baseline"] = (
                        entry["capacity"]["current"]["max_realtime_streams"]
                        / entry["capacity"]["baseline"]["max_realtime_streams"]
                    )
            r[key] = entry
        if runner in ONNX_RUNNERS:
            steps = []
            for threads in (1, 2):
                if threads == 1:  # the best of the interleaved trials (the fastest call path of each trial)
                    st = max(step_trials["64"], key=lambda x: x["streams_per_core"])
                    st = {**st, "trials_ms": [min(x["step_ms_p50"], x["step_slots_ms_p50"]) for x in step_trials["64"]]}
                else:
                    step_spec = {"kind": "step", "runner": runner, "batch": 64, "threads": threads}
                    st = _child(REPO, {**step_spec, "reps": reps}, None)
                steps.append(st)
                log(
                    f"[{runner}] step B=64 threads={threads}: step {st['step_ms_p50']:.2f} ms, step_slots "
                    f"{st.get('step_slots_ms_p50', float('nan')):.2f} ms -> {st['streams_per_core']:.0f} streams/core"
                )
            r["step"] = steps
            # the step as the engine calls it: B = 64 round robin over as many slots as the engine trial serves
            st_n = max(step_trials["n"], key=lambda x: x["streams_per_core"])
            st_n = {**st_n, "trials_ms": [x["step_slots_ms_p50"] for x in step_trials["n"]]}
            r["step_n_slots"] = st_n
            log(
                f"[{runner}] step B=64 over {a.throughput_streams} slots: step_slots {st_n['step_slots_ms_p50']:.2f}"
                f" ms -> {st_n['streams_per_core']:.0f} streams/core"
            )
            step_per_core = steps[0]["streams_per_core"]
            for key in ("signals", "no_signals"):
                e = r[key]
                e["engine_over_step"] = {
                    name: v["streams_per_core_by_cpu"] / step_per_core for name, v in e["throughput"].items()
                }
                e["engine_over_step_n_slots"] = {
                    name: v["streams_per_core_by_cpu"] / st_n["streams_per_core"] for name, v in e["throughput"].items()
                }
                if "capacity" in e:
                    e["engine_capacity_over_step"] = {
                        name: v["max_realtime_streams"] / step_per_core for name, v in e["capacity"].items()
                    }
            lat: dict[str, Any] = {}
            for n in a.latency_streams:
                rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
                for _ in range(a.latency_rounds):  # interleaved: baseline, current, baseline, current, ...
                    for name, root in variants.items():
                        t = _child(
                            root,
                            {
                                "runner": runner,
                                "streams": n,
                                "seconds": max(a.seconds, 6.0),
                                "realtime": True,
                                "signals": True,
                                "warm_up": a.warm_up,
                            },
                            cpu,
                        )
                        rounds[name].append(
                            {
                                k: t.get(k)
                                for k in ("p50_ms", "p99_ms", "late_fraction", "frames", "frames_expected", "ok")
                            }
                        )
                        log(
                            f"[{runner}] latency {n} streams {name}: p50 {t.get('p50_ms', 0):.2f} / p99 "
                            f"{t.get('p99_ms', 0):.2f} ms"
                        )
                # the first round's figures at the top (the fields before --latency-rounds), every round below
                lat[str(n)] = {name: {**rs[0], "rounds": rs} for name, rs in rounds.items()}
            r["engine_latency"] = lat
    if "baseline" in variants:
        import shutil

        shutil.rmtree(variants["baseline"], ignore_errors=True)
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    result["warm_up"] = a.warm_up
    result["backlog_ms"] = a.backlog_ms
    result["one_push"] = a.one_push
    result["frames_sink"] = a.frames_sink
    result["max_batch"] = a.max_batch
    result["rounds"] = a.rounds
    write_report(Path(a.out), a.name, result, _markdown(result))
    return 0


def _markdown(result: dict) -> str:
    from benchmarks.common import machine_load_line

    m = result["machine"]
    names = ["baseline", "current"] if result.get("baseline_ref") else ["current"]
    lines = [
        "# Engine throughput: what the engine around the step costs",
        "",
        f"Machine: {machine_load_line(m)}, Python {m.get('python')}, "
        f"onnxruntime {m.get('onnxruntime', '-')}, {m.get('time_utc')}. One pinned core (cpu "
        f"{result['cpu_core']}), in-process feeding, every frame serialised, sockets excluded.",
        f"Baseline: `{result.get('baseline_ref') or '-'}` (its engine, same runners), trials interleaved, the best of "
        f"{result.get('rounds', 2)} per variant.",
        "",
        "| runner | signals | "
        + " | ".join(f"{n}: CPU us/frame" for n in names)
        + " | "
        + " | ".join(f"{n}: streams/core (CPU)" for n in names)
        + " | "
        + " | ".join(f"{n}: real-time streams/core" for n in names)
        + " | ratio (current/baseline) |",
        "|" + "---|" * (3 + 3 * len(names)),
    ]
    for runner, r in result["runners"].items():
        for key in ("signals", "no_signals"):
            if key not in r:
                continue
            e = r[key]
            us = " | ".join(f"{e['throughput'][n]['cpu_us_per_frame']:.1f}" for n in names)
            spc = " | ".join(f"{e['throughput'][n]['streams_per_core_by_cpu']:.0f}" for n in names)
            cap = " | ".join(str(e["capacity"][n]["max_realtime_streams"]) if "capacity" in e else "-" for n in names)
            ratio = e.get("throughput_ratio_current_over_baseline")
            cr = e.get("capacity_ratio_current_over_baseline")
            rtxt = "-" if ratio is None else f"CPU x{ratio:.2f}" + ("" if cr is None else f", real-time x{cr:.2f}")
            lines.append(f"| {runner} | {'on' if key == 'signals' else 'off'} | {us} | {spc} | {cap} | {rtxt} |")
    lines.append("")
    lines.append(
        "Each trial's engine ran `Engine.warm_up` before its streams opened (as `msync stream` serves)."
        if result.get("warm_up")
        else "Trials without `Engine.warm_up` (the protocol of the results before engine_throughput_14g)."
    )
    if result.get("one_push"):
        lines.append("Feeding: one `push_audio` per chunk (--one-push), not `push_audio_many`.")
    lines.append(
        "Sink: `send_frames` with frame objects in both variants (--frames-sink)."
        if result.get("frames_sink")
        else "Sink: `send_batch` (a published step's columns, `encode_binary_batch`) where the engine publishes "
        "batches, else `send_frames` (`encode_binary_many`)."
    )
    if result.get("max_batch"):
        lines.append(f"Throughput trials ran with `max_batch_streams` = {result['max_batch']} (--max-batch).")
    if result.get("backlog_ms"):
        lines.append(f"Throughput feeding held each stream to about {result['backlog_ms']:g} ms of pending audio.")
    for runner_name, onnx in result["runners"].items():
        if "step" in onnx:
            lines += _step_lines(runner_name, onnx, names)
    return "\n".join(lines) + "\n"


def _step_lines(runner: str, onnx: dict, names: list[str]) -> list[str]:
    """The step alone, engine ÷ step and the engine-added latency of one ONNX runner."""
    lines: list[str] = []
    lines += ["", f"The step alone ({runner}: ONNX Runtime, B=64, CPU time per call, mean of 200 calls):", ""]
    for st in onnx["step"]:
        spread = st.get("trials_ms")
        lines.append(
            f"- {st['threads']} intra-op thread(s): `step` {st['step_ms_p50']:.2f} ms, `step_slots` "
            f"(I/O binding) {st.get('step_slots_ms_p50', float('nan')):.2f} ms -> "
            f"{st['streams_per_core']:.0f} streams per core"
            + (
                f" (64 slots; the best of {len(spread)} trials interleaved with the engine trials, "
                f"{min(spread):.2f}-{max(spread):.2f} ms)"
                if spread
                else ""
            )
        )
    st_n = onnx.get("step_n_slots")
    if st_n:
        lines.append(
            f"- as the engine calls it, 1 thread: `step_slots`, B=64 round robin over {st_n['slots']} slots (each "
            f"call's state last touched {st_n['slots'] // st_n['batch']} calls ago) "
            f"{st_n['step_slots_ms_p50']:.2f} ms -> {st_n['streams_per_core']:.0f} streams per core"
            + (
                f" (the best of {len(st_n['trials_ms'])} interleaved trials, "
                f"{min(st_n['trials_ms']):.2f}-{max(st_n['trials_ms']):.2f} ms)"
                if st_n.get("trials_ms")
                else ""
            )
        )
    for key in ("signals", "no_signals"):
        e = onnx[key]
        sig = "signals on" if key == "signals" else "signals off"
        if st_n and "engine_over_step_n_slots" in e:
            lines.append(
                f"- engine ÷ step over {st_n['slots']} slots ({sig}):"
                " by CPU " + ", ".join(f"{n} {e['engine_over_step_n_slots'][n]:.0%}" for n in names)
            )
        if "engine_over_step_own_batch_paired" in e:
            po = e["engine_over_step_own_batch_paired"]
            lines.append(
                f"- engine ÷ step at the engine's own batch size ({sig};"
                f" the engine's median call {'/'.join(str(b) for b in po['batches'])} streams per round; each round's "
                "engine trial over `step_slots` at that B round robin over as many slots, run right after it): "
                + _paired_text(po)
                + "; the step alone at that B: "
                + ", ".join(
                    f"{t['step_slots_ms_p50']:.2f} ms ({t['streams_per_core']:.0f}/core)" for t in po["step_trials"]
                )
            )
        if "engine_over_step_paired" in e:
            lines.append(
                f"- engine ÷ step paired by round ({sig}; each round's engine trial over the step trial right after "
                "it, as the engine calls it): " + _paired_text(e["engine_over_step_paired"])
            )
        lines.append(
            f"- engine ÷ step over 64 slots, the best of `step`/`step_slots` (the figure so far; {sig}): by CPU "
            + ", ".join(f"{n} {e['engine_over_step'][n]:.0%}" for n in names)
            + (
                ""
                if "engine_capacity_over_step" not in e
                else "; real-time " + ", ".join(f"{n} {e['engine_capacity_over_step'][n]:.0%}" for n in names)
            )
        )
    lines += [
        "",
        f"Engine-added latency ({runner}; publish - arrival of the last needed sample), signals on, "
        "all streams' chunks arriving together:",
        "",
    ]
    for n, per in onnx["engine_latency"].items():
        lines.append(
            f"- {n} stream(s): "
            + "; ".join(
                f"{name} "
                + ", ".join(
                    f"p50 {x['p50_ms']:.2f} / p99 {x['p99_ms']:.2f} ms ({x['frames']}/{x['frames_expected']} frames"
                    + ("" if x.get("ok", True) else ", missed: p99 >= 40 ms, > 0.1 % late or < 98 % out")
                    + ")"
                    for x in v.get("rounds", [v])
                    if x.get("p50_ms") is not None
                )
                for name, v in per.items()
                if any(x.get("p50_ms") is not None for x in v.get("rounds", [v]))
            )
        )
    return lines


def _paired_text(pr: dict) -> str:
    """'median M over N round(s), lo-hi' of a paired engine ÷ step figure ({"median", "rounds"})."""
    rounds = pr["rounds"]
    spread = f", {min(rounds):.0%}-{max(rounds):.0%}" if len(rounds) > 1 else ""
    return f"median {pr['median']:.0%} over {len(rounds)} round(s){spread}"


if __name__ == "__main__":
    sys.exit(main())
