"""Per-step latency of the generator step on every available backend, at several batch sizes.

    python -m benchmarks.step_latency                       # default model, all backends, B = 1..1024 (< ~5 min)
    python -m benchmarks.step_latency --quick --out /tmp/r  # seconds: tiny counts, B = 1, 8 (tests)
    python -m benchmarks.step_latency --backends ort_cpu,cpp --batches 1,64

Backends (each skipped with its reason when unavailable):

- ``torch_eager``: ``Generator.step`` in PyTorch, CPU, ``inference_mode``, ``torch.set_num_threads(1)``;
- ``torch_compile``: the same through ``torch.compile`` (inductor, dynamic shapes: one compile for B >= 2 and
  one for B = 1; ``--compile-static`` compiles each size; compile time reported separately);
- ``ort_cpu``: :class:`stream_engine.runtime.onnxrt.OnnxStepRunner` (onnxruntime, 1 intra-op thread, I/O binding,
  numpy state in and out: what the Python engine runs);
- ``cpp``: the native runtime, ``msync_stream --bench`` (ONNX Runtime C++ API, 1 thread, ping-pong state
  buffers bound once, nothing copied per step); needs ``build/msync_stream`` (stream_engine/native/README.md);
- ``torch_cuda`` / ``torch_cuda_graph``: PyTorch on a CUDA GPU, eager and replayed as a CUDA graph
  (state kept on the device; each step synchronises, so the time is the step's latency);
- ``tensorrt``: a TensorRT engine built from the ONNX file, device-resident state (stream_engine.runtime.tensorrt).
- ``ort_cpu[NAME]``: the ``ort_cpu`` backend on a precision variant of the model (``--variants NAME=PATH,...``;
  default: the shipped ``int8`` variant when the default model is timed), in the same alternating rounds, so
  the report's variant table gives each variant's streams per core as a ratio to float32 measured in one run.

What is timed: one call of the step for B streams with the state fed back (audio input prepared beforehand), by
``time.perf_counter_ns`` around the call (the C++ runtime times itself with ``steady_clock``). Per stream =
per step / B. Real-time streams per core = frame duration (40 ms) / per-stream p50 time at the best batch, one
thread. Warm-up steps are not timed; states restart every 250 steps outside the timed region (an untrained
model drifts). Backends alternate in ``--rounds`` rounds so that background load hits all of them alike; the
load average is recorded before and after every cell. The profile section shows what dominates a step
(ONNX Runtime's per-node profile and torch.profiler, at B=1 and B=64).

Writes ``step_latency.json``, ``step_latency.md`` and ``step_latency.png`` into ``--out``
(default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, summarise, write_report

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "stream_engine" / "models" / "default.onnx"
DEFAULT_CPP = REPO / "build" / "msync_stream"
ALL_BACKENDS = ("torch_eager", "torch_compile", "ort_cpu", "cpp", "torch_cuda", "torch_cuda_graph", "tensorrt")
DEFAULT_BATCHES = (1, 8, 64, 256, 1024)
RESET_EVERY = 250
TARGET_P50_MS, TARGET_P99_MS, TARGET_STREAMS = 1.0, 2.0, 500
TARGET_LOW_PRECISION_STREAMS = 800  # issue 14: the low-precision step, streams per core
PROFILE_WARMUP = 3  # profiled runs not counted


class Skip(Exception):
    """A backend (or one batch size of it) cannot run here; the message says why."""


# --------------------------------------------------------------------------------------------------- model


def resolve_model(arg: str | None, workdir: Path) -> tuple[Path, str]:
    """(onnx path, how it was obtained)."""
    if arg:
        p = Path(arg)
        if not p.is_file():
            raise SystemExit(f"step_latency: --model {p} does not exist")
        return p, "given"
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL, "stream_engine/models/default.onnx"
    from stream_engine.cli import main

    out = workdir / "random_init.onnx"
    print(
        f"step_latency: {DEFAULT_MODEL} does not exist; exporting a random-init generator (GeneratorConfig "
        f"defaults) to {out}",
        flush=True,
    )
    with open(os.devnull, "w") as devnull:
        stdout, sys.stdout = sys.stdout, devnull
        try:
            rc = main(["export", "--random-init", "--seed", "0", "--out", str(out)])
        finally:
            sys.stdout = stdout
    if rc != 0:
        raise SystemExit("step_latency: export failed")
    return out, "random-init export (GeneratorConfig defaults; no default.onnx)"


def parse_variants(arg: str | None, model: Path) -> dict[str, Path]:
    """--variants "NAME=PATH,..." -> {name: path}; None = the shipped int8 variant when `model` is the shipped
    default (else none); "" = none."""
    if arg is None:
        from stream_engine.variants import SHIPPED

        same = model.resolve() == SHIPPED["fp32"].resolve()
        return {"int8": SHIPPED["int8"]} if same and SHIPPED["int8"].is_file() else {}
    out: dict[str, Path] = {}
    for item in filter(None, (x.strip() for x in arg.split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_file():
            raise SystemExit(f"step_latency: --variants {item!r}: expected NAME=PATH of an existing .onnx")
        out[name] = Path(path)
    return out


def torch_generator(contract):
    """A Generator with the model's architecture (random weights: latency does not depend on their values)."""
    import dataclasses

    import torch

    from stream_engine.dataclass_io import from_dict
    from stream_engine.features import FrontEndConfig
    from training.models.generator import Generator, GeneratorConfig

    cfg = from_dict(GeneratorConfig, dict(contract.generator_config))
    try:
        fe = from_dict(FrontEndConfig, dict(contract.frontend))
    except Exception:
        fe = FrontEndConfig()
    torch.manual_seed(0)
    return Generator(dataclasses.replace(cfg, frontend=fe)).eval()


def audio_for(batch: int, spf: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((batch, spf))).astype(np.float32)


# ------------------------------------------------------------------------------------------------ backends


class Backend:
    """prepare(batch) -> a zero-argument step function (state kept inside), plus reset(batch)."""

    name = ""
    threads = 1
    notes = ""

    def prepare(self, batch: int):
        raise NotImplementedError

    def reset(self, batch: int) -> None:
        pass


class TorchBackend(Backend):
    def __init__(
        self,
        generator,
        contract,
        device: str = "cpu",
        compiled: bool = False,
        graph: bool = False,
        compile_dynamic: bool = True,
    ):
        import torch

        self.torch, self.contract, self.device = torch, contract, device
        self.g = generator.to(device)
        self.compiled, self.graph = compiled, graph
        self.name = (
            "torch_compile"
            if compiled
            else ("torch_cuda_graph" if graph else ("torch_cuda" if device != "cpu" else "torch_eager"))
        )
        self.threads = torch.get_num_threads()
        self.compile_s: dict[int, float] = {}
        if compiled:
            # dynamic=True: one compile serves every B >= 2 (B = 1 is specialised and compiled on its own), so
            # five batch sizes cost two compiles instead of five; --compile-static compiles each size apart.
            # Raise dynamo's recompile limit: when it is hit, dynamo silently falls back to eager.
            import torch._dynamo

            for knob in (
                "recompile_limit",
                "cache_size_limit",
                "accumulated_recompile_limit",
                "accumulated_cache_size_limit",
            ):
                if hasattr(torch._dynamo.config, knob):
                    setattr(torch._dynamo.config, knob, max(256, getattr(torch._dynamo.config, knob)))
            self._fn = torch.compile(self.g.step, dynamic=compile_dynamic)
        else:
            self._fn = self.g.step
        self._cells: dict[int, dict] = {}

    def _fresh_state(self, batch: int):
        st = self.g.initial_state(
            self.torch.as_tensor(
                np.broadcast_to(
                    self.contract.reference_face_array,
                    (batch, self.contract.num_landmarks, self.contract.landmark_dims),
                ).copy(),
                device=self.device,
            )
        )
        gen = self.torch.Generator(device="cpu").manual_seed(0)
        h = self.torch.rand(st.h.shape, generator=gen).to(self.device)
        c = self.torch.rand(st.c.shape, generator=gen).to(self.device)
        return st._replace(h=h, c=c)

    def reset(self, batch: int) -> None:
        cell = self._cells[batch]
        fresh = self._fresh_state(batch)
        if self.graph:
            for dst, src in zip(cell["state"], fresh):
                dst.copy_(src)
        else:
            cell["state"] = fresh

    def prepare(self, batch: int):
        torch = self.torch
        if batch in self._cells:
            return self._cells[batch]["fn"]
        audio = torch.as_tensor(audio_for(batch, self.contract.samples_per_frame), device=self.device)
        cell = {"state": self._fresh_state(batch)}
        cuda = self.device != "cpu"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        if self.graph:
            static_state = cell["state"]
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.inference_mode(), torch.cuda.stream(s):
                for _ in range(3):  # warm up on a side stream before capture (cuDNN/cuBLAS handles, allocator)
                    self.g.step(audio, static_state)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                lm, nxt = self.g.step(audio, static_state)
                for dst, src in zip(static_state, nxt):
                    dst.copy_(src)  # state fed back inside the graph: one replay = one step
            cell["graph"] = graph

            def step():
                graph.replay()
                sync()
        else:
            t0 = time.perf_counter()
            with torch.inference_mode():
                lm, cell["state"] = self._fn(audio, cell["state"])  # first call (compiles when compiled)
                sync()
            if self.compiled:
                self.compile_s[batch] = time.perf_counter() - t0

            def step():
                with torch.inference_mode():
                    lm, cell["state"] = self._fn(audio, cell["state"])
                    sync()

        cell["fn"] = step
        self._cells[batch] = cell
        return step


class OrtBackend(Backend):
    name = "ort_cpu"

    def __init__(self, model: Path, name: str = "ort_cpu"):
        from stream_engine.runtime.onnxrt import OnnxStepRunner

        self.name = name
        self.runner = OnnxStepRunner(model, threads=1)
        self.threads = 1
        self.notes = f"{model.name}, precision {self.runner.contract.extra.get('msync.precision', 'fp32')}"
        self._cells: dict[int, dict] = {}

    def reset(self, batch: int) -> None:
        self._cells[batch]["state"] = self.runner.initial_state(batch, rng=np.random.default_rng(0))

    def prepare(self, batch: int):
        if batch not in self._cells:
            audio = audio_for(batch, self.runner.contract.samples_per_frame)
            cell = self._cells[batch] = {"state": self.runner.initial_state(batch, rng=np.random.default_rng(0))}

            def step():
                _, cell["state"] = self.runner.step(audio, cell["state"])

            cell["fn"] = step
        return self._cells[batch]["fn"]


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, model: Path, contract, workdir: Path, max_batch: int):
        from export.tensorrt_build import build_engines
        from stream_engine.runtime.tensorrt import TensorRTStepRunner

        t0 = time.perf_counter()
        builds, _ = build_engines(model, workdir / "trt", ("fp32",), (1, min(64, max_batch), max_batch))
        self.build_s = time.perf_counter() - t0
        self.runner = TensorRTStepRunner(builds[0].path, model)
        self.contract = contract
        self.notes = f"fp32 engine, profile 1/{min(64, max_batch)}/{max_batch}, built in {self.build_s:.1f} s"
        self._cells: dict[int, dict] = {}

    def reset(self, batch: int) -> None:
        cell = self._cells[batch]
        cell["db"].write_state(self.runner.initial_state(batch, rng=np.random.default_rng(0)))

    def prepare(self, batch: int):
        if batch not in self._cells:
            db = self.runner.open_batch(batch, rng=np.random.default_rng(0))
            audio = audio_for(batch, self.contract.samples_per_frame)
            self._cells[batch] = {"db": db, "fn": lambda: db.step(audio)}
        return self._cells[batch]["fn"]


def time_cell(backend: Backend, batch: int, warmup: int, n_min: int, n_max: int, budget_s: float) -> dict:
    """Warm up, then time steps until n_max or the time budget (at least n_min)."""
    step = backend.prepare(batch)
    for _ in range(warmup):
        step()
    samples: list[float] = []
    cpu: list[float] = []
    since_reset = 0
    t_end = time.perf_counter() + budget_s
    while len(samples) < n_max and (len(samples) < n_min or time.perf_counter() < t_end):
        if since_reset >= RESET_EVERY:
            backend.reset(batch)
            since_reset = 0
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        step()
        samples.append((time.perf_counter_ns() - t0) * 1e-9)
        cpu.append((time.thread_time_ns() - c0) * 1e-9)
        since_reset += 1
    # CPU time of this thread: what a step costs a core, without the slices other processes took (a one-thread
    # ORT session runs its kernels on the calling thread; meaningful for the CPU backends only).
    return {"samples_s": samples, "cpu_s": cpu, "warmup": warmup}


def time_cpp(binary: Path, model: Path, batch: int, warmup: int, n: int, timeout_s: float) -> dict:
    cmd = [
        str(binary),
        "--model",
        str(model),
        "--bench",
        str(n),
        "--batch",
        str(batch),
        "--warmup",
        str(warmup),
        "--threads",
        "1",
    ]
    with tempfile.NamedTemporaryFile(suffix=".txt") as tf:
        proc = subprocess.run(cmd + ["--timings", tf.name], capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise Skip(f"msync_stream failed ({proc.returncode}): {proc.stderr.strip()[:300]}")
        us = np.loadtxt(tf.name, ndmin=1)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"samples_s": list(us * 1e-6), "warmup": warmup, "ort_version": summary["ort_version"]}


# ------------------------------------------------------------------------------------------------ profiles


def _module_of_nodes(model: Path) -> dict[str, str]:
    """ONNX node name -> the generator sub-module it came from (the dynamo exporter's name scopes)."""
    import ast

    import onnx

    out = {}
    for node in onnx.load(str(model), load_external_data=False).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            scopes = []
        mod = next((sc for sc in scopes if sc.startswith("generator.")), "")
        out[node.name] = ".".join(mod.split(".")[:2]) if mod else "Generator.step functional ops (cat/slice/gelu/where)"
    return out


def profile_ort(model: Path, batch: int, steps: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Share of kernel time by ONNX op type and by generator module (onnxruntime's profiler, 1 thread)."""
    import onnxruntime as ort

    from stream_engine.runtime.base import initial_state
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    contract = OnnxStepRunner(model).contract
    try:
        modules = _module_of_nodes(model)
    except Exception:
        modules = {}
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as td:
        so.profile_file_prefix = str(Path(td) / "ort")
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        state = initial_state(contract, batch, rng=np.random.default_rng(0))
        audio = audio_for(batch, contract.samples_per_frame)
        names = [s.name for s in contract.states]
        for _ in range(steps):
            outs = sess.run(None, {contract.audio_input.name: audio, **state})
            state = dict(zip(names, outs[1:]))
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    by_mod: dict[str, float] = defaultdict(float)
    # The first runs are warm-up (allocations, first-touch): count nodes only after the WARM-th run ended.
    runs = sorted(
        float(e["ts"]) + float(e.get("dur", 0))
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    warm = min(PROFILE_WARMUP, max(0, len(runs) - 1))
    cutoff = runs[warm - 1] if warm and runs else float("-inf")
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") == "Node" and name.endswith("_kernel_time") and float(e.get("ts", 0)) >= cutoff:
            dur = float(e.get("dur", 0))
            by_op[e.get("args", {}).get("op_name", "?")] += dur
            # Fused nodes are named "<first original node>/<FusionName>/...".
            by_mod[modules.get(name[: -len("_kernel_time")].split("/")[0], "other (made by ORT's fusions)")] += dur

    def shares(d):
        total = sum(d.values()) or 1.0
        return sorted(((k, 100.0 * v / total) for k, v in d.items()), key=lambda kv: -kv[1])

    return shares(by_op), shares(by_mod)


def profile_torch(generator, contract, batch: int, steps: int) -> list[tuple[str, float]]:
    """Share of self CPU time by aten op (torch.profiler), eager, 1 thread."""
    import torch

    be = TorchBackend(generator, contract)
    step = be.prepare(batch)
    for _ in range(3):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    rows = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(v for _, v in rows) or 1.0
    return sorted(((k, 100.0 * v / total) for k, v in rows), key=lambda kv: -kv[1])


# -------------------------------------------------------------------------------------------------- report


def plot(results: dict, path: Path, frame_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, cells in results.items():
        bs = sorted(int(b) for b, c in cells.items() if "p50_ms" in c)
        if not bs:
            continue
        ax1.plot(bs, [cells[str(b)]["p50_ms"] for b in bs], marker="o", label=name)
        ax2.plot(bs, [cells[str(b)]["per_stream_p50_us"] for b in bs], marker="o", label=name)
    ax1.axhline(TARGET_P50_MS, color="grey", ls="--", lw=0.8, label=f"B=1 target p50 {TARGET_P50_MS:g} ms")
    ax2.axhline(
        1000.0 * frame_ms / TARGET_STREAMS, color="grey", ls="--", lw=0.8, label=f"{TARGET_STREAMS} streams/core"
    )
    for ax, title, unit in ((ax1, "per step (p50)", "ms"), (ax2, "per stream (p50 / B)", "µs")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch (streams per step)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.suptitle("msync generator step latency, one thread", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    m, cond = report["machine"], report["conditions"]
    lines = [
        "# Generator step latency",
        "",
        f"Model: `{cond['model']}` ({cond['model_source']}; {cond['parameters']:,} parameters, "
        f"{cond['onnx_mb']:.1f} MB ONNX, version `{cond['model_version']}`).  ",
        f"Machine: {m.get('cpu')} ({m.get('logical_cpus')} logical CPUs), {m.get('platform')}; Python "
        f"{m.get('python')}, torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
        + ".  ",
        f"Conditions: one thread per backend (torch.set_num_threads(1), ORT intra/inter-op 1); load average "
        f"{cond['load_avg_start']:.2f} at start, {cond['load_avg_end']:.2f} at end (range over cells "
        f"{cond['load_avg_min']:.2f}–{cond['load_avg_max']:.2f}); {cond['rounds']} alternating round(s); warm-up "
        f"{cond['warmup']} steps (fewer at large B); time budget {cond['budget_s']:g} s per cell and round; "
        f"{'--quick; ' if cond['quick'] else ''}run took {cond['wall_s']:.0f} s.",
        "",
        f"Targets (CPU, one thread): B=1 p50 <= {TARGET_P50_MS:g} ms and p99 <= {TARGET_P99_MS:g} ms; "
        f">= {TARGET_STREAMS} real-time streams per core batched (<= {1000 * cond['frame_ms'] / TARGET_STREAMS:.0f} "
        "µs per stream-step).",
        "",
        "| backend | B | N | p50 ms | p95 ms | p99 ms | per stream p50 µs | per stream p99 µs | streams/core (p50) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, cells in report["results"].items():
        for b in sorted(cells, key=int):
            c = cells[b]
            if "p50_ms" not in c:
                continue
            lines.append(
                f"| {name} | {b} | {c['n']} | {c['p50_ms']:.3f} | {c['p95_ms']:.3f} | {c['p99_ms']:.3f} | "
                f"{c['per_stream_p50_us']:.1f} | {c['per_stream_p99_us']:.1f} | "
                f"{c['streams_per_core_p50']:.0f} |"
            )
    if report.get("variants"):
        lines += [
            "",
            "## Precision variants (ort_cpu, one thread, same rounds)",
            "",
            f"Streams per core (p50) of each variant and its ratio to float32 `ort_cpu` at the same batch; "
            f"target for the low-precision step: >= {TARGET_LOW_PRECISION_STREAMS} streams per core. The CPU-time "
            "columns use the step thread's CPU time (time.thread_time), which leaves out the time slices other "
            "processes took: on a loaded machine they are the closer estimate of an idle core.",
            "",
            "| variant | precision | B | p50 ms | p99 ms | streams/core (p50) | ratio to fp32 | CPU ms (p50) | "
            "streams/core (CPU time) | ratio (CPU time) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        base = report["results"].get("ort_cpu", {})
        for v in [{"name": "fp32", "backend": "ort_cpu", "precision": "fp32"}] + report["variants"]:
            cells = report["results"].get(v["backend"], {})
            for b in sorted(cells, key=int):
                c = cells[b]
                if "p50_ms" not in c:
                    continue
                ratio = (
                    f"{c['streams_per_core_p50'] / base[b]['streams_per_core_p50']:.2f}"
                    if "p50_ms" in base.get(b, {})
                    else "–"
                )
                cpu = f"{c['cpu_p50_ms']:.3f} | {c['streams_per_core_cpu_p50']:.0f}" if "cpu_p50_ms" in c else "– | –"
                cratio = (
                    f"{c['streams_per_core_cpu_p50'] / base[b]['streams_per_core_cpu_p50']:.2f}"
                    if "cpu_p50_ms" in c and "cpu_p50_ms" in base.get(b, {})
                    else "–"
                )
                lines.append(
                    f"| {v['name']} | {v['precision']} | {b} | {c['p50_ms']:.3f} | {c['p99_ms']:.3f} | "
                    f"{c['streams_per_core_p50']:.0f} | {ratio} | {cpu} | {cratio} |"
                )
    lines += ["", "Summary against the targets:", ""]
    for name, s in report["summary"].items():
        b1 = s.get("b1")
        txt = f"- **{name}**: "
        if b1:
            ok = b1["p50_ms"] <= TARGET_P50_MS and b1["p99_ms"] <= TARGET_P99_MS
            txt += (
                f"B=1 p50 {b1['p50_ms']:.3f} ms / p99 {b1['p99_ms']:.3f} ms "
                f"({'meets' if ok else 'misses'} the B=1 target); "
            )
        target = TARGET_LOW_PRECISION_STREAMS if name.startswith("ort_cpu[") else TARGET_STREAMS
        txt += (
            f"best batch {s['best_batch']}: {s['streams_per_core_p50']:.0f} real-time streams per core "
            f"({'meets' if s['streams_per_core_p50'] >= target else 'misses'} {target})"
        )
        if name in report.get("compile_s", {}):
            mode = "dynamic shapes" if cond.get("torch_compile_dynamic") else "static shapes"
            txt += f"; first call incl. compile ({mode}; inductor's on-disk cache shortens repeat runs) " + ", ".join(
                f"B={b}: {t:.1f} s" for b, t in report["compile_s"][name].items()
            )
        lines.append(txt)
    if report["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {k}: {v}" for k, v in report["skipped"].items()]
    if report.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
    if report.get("profiles"):
        lines += ["", "## What dominates a step", ""]
        for key, rows in report["profiles"].items():
            if isinstance(rows, str):
                lines.append(f"- {key}: {rows}")
                continue
            top = ", ".join(f"{k} {v:.0f}%" for k, v in rows[:7])
            lines.append(f"- {key}: {top}")
        if report.get("profile_note"):
            lines += ["", report["profile_note"]]
    lines += ["", "Reproduce: `python -m benchmarks.step_latency` (see benchmarks/README.md).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", help="ONNX step model (default: stream_engine/models/default.onnx, else a random-init export)"
    )
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--backends", default=",".join(ALL_BACKENDS))
    p.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)))
    p.add_argument("--budget-s", type=float, default=1.0, help="timing budget per cell and round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds over the backends")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--cpp-binary", default=str(DEFAULT_CPP))
    p.add_argument("--no-profile", action="store_true")
    p.add_argument(
        "--compile-static",
        action="store_true",
        help="torch.compile each batch size separately (dynamic=False; ~30-40 s per size on 2 cores) "
        "instead of one dynamic-shape compile for B >= 2",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: B=1,8, tiny counts, one round, no torch.compile, short profiles",
    )
    p.add_argument(
        "--variants",
        default=None,
        metavar="NAME=PATH,...",
        help="precision variants timed as ort_cpu[NAME] (default: int8=the shipped "
        "default_int8.onnx when the default model is timed; '' for none)",
    )
    a = p.parse_args(argv)

    t_start = time.perf_counter()
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    unknown = set(backends) - set(ALL_BACKENDS)
    if unknown:
        raise SystemExit(f"step_latency: unknown backends {sorted(unknown)} (known: {', '.join(ALL_BACKENDS)})")
    batches = [int(b) for b in a.batches.split(",")]
    if a.quick:
        batches = [b for b in batches if b <= 8] or [1]
        a.budget_s, a.rounds, a.warmup = min(a.budget_s, 0.2), 1, 2
    load_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="msync_step_latency_"))
    model, model_source = resolve_model(a.model, workdir)
    variants = parse_variants(a.variants, model)

    import torch

    torch.set_num_threads(1)
    from stream_engine.contract import read_contract

    contract = read_contract(model)
    frame_ms = 1000.0 * contract.frame_duration_s
    generator = torch_generator(contract)
    skipped: dict[str, str] = {}
    notes: list[str] = []
    cuda = torch.cuda.is_available()

    live: dict[str, Backend | None] = {}  # None: the C++ binary, driven through a subprocess
    if "ort_cpu" in backends:  # each variant right after float32, in the same rounds
        at = backends.index("ort_cpu") + 1
        backends[at:at] = [f"ort_cpu[{n}]" for n in variants]
    for name in backends:
        try:
            if name == "torch_eager":
                live[name] = TorchBackend(generator, contract)
            elif name == "torch_compile":
                if a.quick:
                    raise Skip("--quick (a compile takes a minute or more)")
                live[name] = TorchBackend(
                    torch_generator(contract), contract, compiled=True, compile_dynamic=not a.compile_static
                )
            elif name == "ort_cpu":
                live[name] = OrtBackend(model)
            elif name.startswith("ort_cpu["):
                live[name] = OrtBackend(variants[name[len("ort_cpu[") : -1]], name)
            elif name == "cpp":
                binary = Path(a.cpp_binary)
                if not binary.is_file():
                    raise Skip(
                        f"{binary} not built (bash .ci/fetch_ort_headers && cmake -S . -B build && "
                        "cmake --build build -j2)"
                    )
                live[name] = None  # driven through subprocess
            elif name in ("torch_cuda", "torch_cuda_graph"):
                if not cuda:
                    raise Skip("no CUDA GPU (torch.cuda.is_available() is False)")
                live[name] = TorchBackend(
                    torch_generator(contract), contract, device="cuda", graph=name == "torch_cuda_graph"
                )
            elif name == "tensorrt":
                if not cuda:
                    raise Skip("no CUDA GPU")
                try:
                    import tensorrt  # noqa: F401
                except Exception as exc:
                    raise Skip(f"TensorRT is not installed ({type(exc).__name__}: {exc})") from exc
                live[name] = TensorRTBackend(model, contract, workdir, max(batches))
        except Skip as exc:
            skipped[name] = str(exc)
        except Exception as exc:  # a backend that cannot even start is reported, not fatal
            skipped[name] = f"failed to start: {type(exc).__name__}: {exc}"

    samples: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    cell_meta: dict[str, dict[int, dict]] = defaultdict(dict)
    loads: list[float] = [load_start]
    for rnd in range(a.rounds):
        order = list(live) if rnd % 2 == 0 else list(reversed(list(live)))
        for batch in batches:
            # Fewer steps at large batches: each one is long, and the percentiles need less resolution there.
            warmup = max(2, a.warmup // (1 if batch <= 8 else 4 if batch <= 256 else 10))
            n_min = 3 if a.quick else (20 if batch <= 256 else 8)
            n_max = 30 if a.quick else 3000
            for name in order:
                if name in skipped or (batch in cell_meta[name] and cell_meta[name][batch].get("skip")):
                    continue
                load0 = os.getloadavg()[0]
                try:
                    if name == "cpp":
                        est = None
                        if samples["ort_cpu"].get(batch):
                            est = float(np.median(samples["ort_cpu"][batch]))
                        n = n_max if est is None else int(np.clip(a.budget_s / max(est, 1e-5), n_min, n_max))
                        if a.quick:
                            n = min(n, 10)
                        r = time_cpp(Path(a.cpp_binary), model, batch, warmup, n, timeout_s=600)
                    else:
                        backend = live[name]
                        assert backend is not None  # only "cpp" has no Backend object
                        r = time_cell(backend, batch, warmup, n_min, n_max, a.budget_s)
                except Skip as exc:
                    cell_meta[name][batch] = {"skip": str(exc)}
                    continue
                except Exception as exc:
                    cell_meta[name][batch] = {"skip": f"{type(exc).__name__}: {exc}"}
                    if name == "torch_compile":
                        notes.append(f"torch.compile failed at B={batch}: {type(exc).__name__}: {exc}"[:300])
                    continue
                samples[name][batch].extend(r["samples_s"])
                meta = cell_meta[name].setdefault(batch, {"warmup": 0, "load_avg": []})
                if r.get("cpu_s") and name.startswith("ort_cpu"):
                    meta.setdefault("cpu_s", []).extend(r["cpu_s"])
                meta["warmup"] = r["warmup"]
                meta["load_avg"] += [load0, os.getloadavg()[0]]
                if "ort_version" in r:
                    meta["ort_version"] = r["ort_version"]
                loads += meta["load_avg"]
                print(
                    f"  round {rnd + 1} {name:>16} B={batch:<5} n={len(r['samples_s']):<5} "
                    f"p50 {1e3 * float(np.median(r['samples_s'])):8.3f} ms  load {load0:.2f}",
                    flush=True,
                )

    results: dict[str, dict[str, dict]] = {}
    summary: dict[str, dict] = {}
    for name in list(live):
        cells = {}
        for batch in batches:
            meta = cell_meta[name].get(batch, {})
            if samples[name].get(batch):
                s = summarise(samples[name][batch])
                s.update(
                    {
                        "per_stream_p50_us": 1e3 * s["p50_ms"] / batch,
                        "per_stream_p99_us": 1e3 * s["p99_ms"] / batch,
                        "streams_per_core_p50": frame_ms / (s["p50_ms"] / batch),
                        "streams_per_core_p99": frame_ms / (s["p99_ms"] / batch),
                        "warmup": meta.get("warmup"),
                        "load_avg": meta.get("load_avg"),
                    }
                )
                if "ort_version" in meta:
                    s["ort_version"] = meta["ort_version"]
                if meta.get("cpu_s"):
                    s["cpu_p50_ms"] = 1e3 * float(np.median(meta["cpu_s"]))
                    s["streams_per_core_cpu_p50"] = frame_ms / (s["cpu_p50_ms"] / batch)
                cells[str(batch)] = s
            elif meta.get("skip"):
                cells[str(batch)] = {"skip": meta["skip"]}
        results[name] = cells
        timed = {b: c for b, c in cells.items() if "p50_ms" in c}
        if timed:
            best = max(timed, key=lambda b: timed[b]["streams_per_core_p50"])
            summary[name] = {
                "best_batch": int(best),
                "streams_per_core_p50": timed[best]["streams_per_core_p50"],
                "b1": ({"p50_ms": timed["1"]["p50_ms"], "p99_ms": timed["1"]["p99_ms"]} if "1" in timed else None),
            }
        else:
            skipped.setdefault(
                name, "; ".join(f"B={b}: {c['skip']}" for b, c in cells.items() if "skip" in c) or "no cell ran"
            )
    compile_s = {
        n: {str(b): t for b, t in be.compile_s.items()}
        for n, be in live.items()
        if isinstance(be, TorchBackend) and be.compile_s
    }

    profiles: dict[str, str | list[tuple[str, float]]] = {}
    profile_note = ""
    if not a.no_profile:
        steps = PROFILE_WARMUP + (5 if a.quick else 40)
        for b in (1, 64):
            try:
                by_op, by_mod = profile_ort(model, b, steps)
                profiles[f"onnxruntime, B={b}, by op"] = by_op
                profiles[f"onnxruntime, B={b}, by module"] = by_mod
            except Exception as exc:
                profiles[f"onnxruntime, B={b}"] = f"failed: {type(exc).__name__}: {exc}"
            try:
                profiles[f"torch eager self-CPU, B={b}"] = profile_torch(generator, contract, b, max(3, steps // 4))
            except Exception as exc:
                profiles[f"torch eager self-CPU, B={b}"] = f"failed: {type(exc).__name__}: {exc}"
        profile_note = (
            "Shares of profiled time: ORT per-node kernel time (profiler on, 1 thread) by op type and "
            "by the generator module each node was exported from; torch: self CPU time by aten op. "
            "FusedMatMul/FusedConv are ORT's fusions of MatMul/Conv with a transpose or activation."
        )

    n_params = sum(int(p.numel()) for p in generator.parameters())
    if "ort_cpu" in summary and "cpp" in summary and "1" in results.get("cpp", {}) and "1" in results["ort_cpu"]:
        d = results["ort_cpu"]["1"]["p50_ms"] - results["cpp"]["1"]["p50_ms"]
        notes.append(
            f"Python runtime overhead over the C++ runtime at B=1 (p50): {1e3 * d:.0f} µs per step "
            "(numpy state in/out, input checks, binding)."
        )
    cpus = os.cpu_count() or 1
    if max(loads) > cpus:
        notes.append(
            f"The load average ({min(loads):.1f}-{max(loads):.1f}) exceeded the {cpus} logical CPUs: other "
            "processes were runnable, so p95/p99 include time slices lost to them (several ms each); "
            "p50 is the figure to compare, and the tail targets need a quiet machine."
        )
    notes.append(
        "PyTorch backends run a random-init Generator with the model's generator_config (same "
        "architecture and cost as the ONNX file; latency does not depend on the weights' values)."
    )
    report = {
        "machine": machine_info(),
        "conditions": {
            "model": str(model),
            "model_source": model_source,
            "model_version": contract.model_version,
            "parameters": n_params,
            "onnx_mb": model.stat().st_size / 1e6,
            "frame_ms": frame_ms,
            "threads": {"torch": torch.get_num_threads(), "onnxruntime": 1, "cpp": 1},
            "batches": batches,
            "rounds": a.rounds,
            "warmup": a.warmup,
            "budget_s": a.budget_s,
            "quick": a.quick,
            "reset_every_steps": RESET_EVERY,
            "torch_compile_dynamic": not a.compile_static,
            "load_avg_start": load_start,
            "load_avg_end": os.getloadavg()[0],
            "load_avg_min": float(min(loads)),
            "load_avg_max": float(max(loads)),
            "wall_s": time.perf_counter() - t_start,
        },
        "targets": {"b1_p50_ms": TARGET_P50_MS, "b1_p99_ms": TARGET_P99_MS, "streams_per_core": TARGET_STREAMS},
        "variants": [
            {
                "name": n,
                "backend": f"ort_cpu[{n}]",
                "path": str(pth),
                "precision": backend.runner.contract.extra.get("msync.precision", "fp32"),
            }
            for n, pth in variants.items()
            if isinstance(backend := live.get(f"ort_cpu[{n}]"), OrtBackend)
        ],
        "results": results,
        "summary": summary,
        "compile_s": compile_s,
        "skipped": skipped,
        "notes": notes,
        "profiles": {
            k: (v if isinstance(v, str) else [[n, round(s, 2)] for n, s in v[:15]]) for k, v in profiles.items()
        },
        "profile_note": profile_note,
    }
    out = Path(a.out)
    write_report(out, "step_latency", report, markdown(report))
    plot(results, out / "step_latency.png", frame_ms)
    print(f"wrote {out / 'step_latency.json'}, .md, .png")
    shutil.rmtree(workdir, ignore_errors=True)  # the temporary export and TensorRT engines
    return 0


if __name__ == "__main__":
    sys.exit(main())
