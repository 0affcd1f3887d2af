"""Streams per GPU at p99 < 40 ms: the step on every GPU path, state kept on the device, in a few minutes.

    bash benchmarks/gpu_bench.sh                                      # all backends, default batches, ~3-5 min
    python -m benchmarks.gpu_bench --backends torch_cuda_graph --batches 256,4096 --steps 50 --out /tmp/g

Backends (each skipped with its reason when its pieces are missing; one failing never stops the others):

- ``ort_cuda``: ONNX Runtime's CUDA execution provider (needs onnxruntime-gpu), I/O binding with every state in
  two device-resident OrtValue sets that swap roles each step (ping-pong); per step only the audio goes in
  (B x 640 floats) and the landmarks come out (B x 68 x 2);
- ``ort_cuda_graph``: the same with the provider's CUDA graphs (``enable_cuda_graph``): one graph per
  ping-pong direction (run option ``gpu_graph_id``), audio written in place into the bound input;
- ``tensorrt``: a TensorRT engine built from the ONNX file (``--trt-precision``, default fp16 mixed) run
  through :class:`stream_engine.runtime.tensorrt.DeviceBatch` (device-resident ping-pong state, audio in and
  landmarks out each step: the engine's own path);
- ``torch_cuda_graph`` / ``torch_cuda_graph_bf16``: ``Generator.step`` (the shipped checkpoint
  training/weights/generator when it matches the model, else random weights: time does not depend on them)
  captured once per batch size as a CUDA graph with the state fed back inside the graph, in float32 and under
  bfloat16 autocast (matrix products in bf16, the state and landmark arithmetic in float32); the bf16 row notes
  its landmark difference to float32 over 250 steps (trained weights only).

What is timed: one step for B streams, host to host (audio copied in, landmarks copied out, the stream
synchronised), by ``time.perf_counter_ns``; warm-up steps are not timed. A GPU serves B streams in real time
when a step of B takes at most one frame (40 ms); steps of k groups of B streams run back to back within one
frame when k x p99(B) <= 40 ms, so streams per GPU = max over B of B x floor(40 ms / p99(B)) (each frame then
waits at most one frame period). Batches grow until p99 passes 40 ms, memory runs out, or the backend's time
budget is spent.

Writes ``gpu_bench.json`` and ``gpu_bench.md`` to ``--out`` (default benchmarks/results). Without a CUDA GPU
it writes the same files with every backend skipped and says so (exit status 0).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, summarise, write_report

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "stream_engine" / "models" / "default.onnx"
ALL_BACKENDS = ("ort_cuda", "ort_cuda_graph", "tensorrt", "torch_cuda_graph", "torch_cuda_graph_bf16")
DEFAULT_BATCHES = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768)
DEADLINE_MS = 40.0
TARGET_STREAMS_PER_GPU = 20_000


class Skip(Exception):
    """A backend cannot run here; the message says why."""


# --------------------------------------------------------------------------------------------- arguments


def parse_batches(text: str) -> list[int]:
    """ "64,256,1024" -> [64, 256, 1024] (sorted, unique). Raises ValueError for anything but positive integers."""
    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--batches must be a comma list of positive integers, got {text!r}") from None
    if not out or out[0] < 1:
        raise ValueError(f"--batches must be a comma list of positive integers, got {text!r}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="float32 ONNX step model")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--backends", default=",".join(ALL_BACKENDS))
    p.add_argument(
        "--batches",
        default=",".join(map(str, DEFAULT_BATCHES)),
        help="batch sizes tried in ascending order (stops at the first whose p99 passes the deadline)",
    )
    p.add_argument("--steps", type=int, default=100, help="timed steps per batch size")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--deadline-ms", type=float, default=DEADLINE_MS)
    p.add_argument("--budget-s", type=float, default=45.0, help="time budget per backend (its build included)")
    p.add_argument("--trt-precision", default="fp16", choices=["fp16", "fp32"])
    p.add_argument("--device", type=int, default=0)
    a = p.parse_args(argv)
    a.batches = parse_batches(a.batches)
    a.backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    unknown = sorted(set(a.backends) - set(ALL_BACKENDS))
    if unknown:
        p.error(f"unknown backends {unknown} (known: {', '.join(ALL_BACKENDS)})")
    if a.steps < 5 or a.warmup < 0 or a.deadline_ms <= 0 or a.budget_s <= 0:
        p.error("--steps must be >= 5, --warmup >= 0, --deadline-ms and --budget-s > 0")
    return a


def gpu_available() -> tuple[bool, str]:
    """(whether a CUDA GPU is usable, why not / its name)."""
    try:
        import torch
    except ImportError:
        pass
    else:
        if torch.cuda.is_available():
            return True, torch.cuda.get_device_name(0)
        return False, "no CUDA GPU (torch.cuda.is_available() is False)"
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return True, "CUDAExecutionProvider (no torch to name the device)"
    except ImportError:
        pass
    return False, "no CUDA GPU (neither torch with CUDA nor onnxruntime-gpu is installed)"


# ---------------------------------------------------------------------------------------------- backends


def _audio(batch: int, spf: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal((batch, spf))).astype(np.float32)


class OrtCuda:
    """ONNX Runtime CUDA EP, device-resident ping-pong state through I/O binding (optionally CUDA graphs)."""

    def __init__(self, model: Path, device: int, cuda_graph: bool) -> None:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
        from stream_engine.contract import read_contract

        self.ort, self.contract, self.device, self.cuda_graph = ort, read_contract(model), device, cuda_graph
        self.model = model
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts = {"device_id": str(device)}
        if cuda_graph:
            opts["enable_cuda_graph"] = "1"
        self.session = ort.InferenceSession(str(model), so, providers=[("CUDAExecutionProvider", opts)])
        if self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise Skip(f"the session fell back to {self.session.get_providers()}")
        self.notes = "I/O binding, state in two device OrtValue sets (ping-pong)" + (
            ", CUDA graphs (one per direction)" if cuda_graph else ""
        )

    def prepare(self, batch: int):
        from stream_engine.runtime.base import initial_state

        ort, c = self.ort, self.contract
        if self.cuda_graph:  # a graph is captured per bound shape: a fresh session per batch size
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(
                str(self.model),
                so,
                providers=[("CUDAExecutionProvider", {"device_id": str(self.device), "enable_cuda_graph": "1"})],
            )
        else:
            session = self.session
        dev = ("cuda", self.device)
        state = initial_state(c, batch, rng=np.random.default_rng(0))
        sets = [
            {s.name: ort.OrtValue.ortvalue_from_numpy(state[s.name], *dev) for s in c.states},
            {
                s.name: ort.OrtValue.ortvalue_from_shape_and_type(s.concrete_shape(batch), np.float32, *dev)
                for s in c.states
            },
        ]
        host_audio = _audio(batch, c.samples_per_frame)
        audio = ort.OrtValue.ortvalue_from_numpy(host_audio, *dev)
        lm = ort.OrtValue.ortvalue_from_shape_and_type(c.landmarks_output.concrete_shape(batch), np.float32, *dev)
        bindings = []
        for k in range(2):  # k: the set read this step
            b = session.io_binding()
            b.bind_ortvalue_input(c.audio_input.name, audio)
            b.bind_ortvalue_output(c.landmarks_output.name, lm)
            for s in c.states:
                b.bind_ortvalue_input(s.name, sets[k][s.name])
                b.bind_ortvalue_output(s.next_name, sets[1 - k][s.name])
            bindings.append(b)
        opts = []
        for k in range(2):
            ro = ort.RunOptions()
            if self.cuda_graph:
                ro.add_run_config_entry("gpu_graph_id", str(k + 1))
            opts.append(ro)
        cur = [0]

        def step():
            audio.update_inplace(host_audio)  # the audio of this step, written into the bound buffer
            k = cur[0]
            session.run_with_iobinding(bindings[k], opts[k])
            out = lm.numpy()  # landmarks back to the host (synchronises)
            cur[0] = 1 - k
            return out

        return step


class TensorRT:
    """A TensorRT engine through stream_engine.runtime.tensorrt.DeviceBatch (device-resident state)."""

    def __init__(self, model: Path, precision: str, max_batch: int, workdir: Path) -> None:
        try:
            from export.tensorrt_build import build_engines
            from stream_engine.runtime.tensorrt import TensorRTStepRunner
        except Exception as exc:
            raise Skip(f"cannot import the TensorRT pieces ({type(exc).__name__}: {exc})") from exc
        from stream_engine.contract import ModelLoadError

        t0 = time.perf_counter()
        opt = min(4096, max_batch)
        try:
            builds, _ = build_engines(model, workdir / "trt", (precision,), (1, opt, max_batch))
            self.runner = TensorRTStepRunner(builds[0].path, model)
        except ModelLoadError as exc:
            raise Skip(str(exc)) from exc
        except Exception as exc:
            if "TensorRT" in type(exc).__name__ or "tensorrt" in str(exc).lower():
                raise Skip(f"{type(exc).__name__}: {exc}") from exc
            raise
        self.build_s = time.perf_counter() - t0
        self.notes = (
            f"{precision} engine, profile 1/{opt}/{max_batch}, built in {self.build_s:.0f} s; "
            "DeviceBatch ping-pong state"
        )

    def prepare(self, batch: int):
        db = self.runner.open_batch(batch, rng=np.random.default_rng(0))
        audio = _audio(batch, self.runner.contract.samples_per_frame)
        return lambda: db.step(audio)


class TorchGraph:
    """Generator.step captured as a CUDA graph per batch size, state fed back inside the graph."""

    def __init__(self, model: Path, bf16: bool) -> None:
        try:
            import torch
        except ImportError as exc:
            raise Skip(f"torch is not installed ({exc})") from exc
        if not torch.cuda.is_available():
            raise Skip("no CUDA GPU (torch.cuda.is_available() is False)")
        from stream_engine.contract import read_contract

        self.torch, self.bf16 = torch, bf16
        self.contract = read_contract(model)
        self.g, weights = trained_or_random(self.contract)
        self.g = self.g.cuda()
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.notes = (
            "CUDA graph, state fed back in the graph, "
            + ("bf16 autocast (matrix products bf16, state fp32)" if bf16 else "float32 (TF32 off)")
            + f", {weights} weights"
        )
        if bf16 and weights == "trained":
            self.notes += (
                f"; landmarks vs float32 over 250 steps: max |diff| {bf16_difference(self.g, self.contract):.2e}"
            )

    def prepare(self, batch: int):
        torch, c, g = self.torch, self.contract, self.g
        face = torch.as_tensor(
            np.broadcast_to(c.reference_face_array, (batch, c.num_landmarks, c.landmark_dims)).copy(), device="cuda"
        )
        st = g.initial_state(face)
        gen = torch.Generator(device="cpu").manual_seed(0)
        st = st._replace(h=torch.rand(st.h.shape, generator=gen).cuda(), c=torch.rand(st.c.shape, generator=gen).cuda())
        host_audio = torch.from_numpy(_audio(batch, c.samples_per_frame)).pin_memory()
        audio = host_audio.cuda()
        host_lm = torch.empty((batch, c.num_landmarks, c.landmark_dims), pin_memory=True)
        ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if self.bf16 else torch.no_grad
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(s), ctx():
            for _ in range(3):
                g.step(audio, st)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph), ctx():
            lm, nxt = g.step(audio, st)
            for dst, src in zip(st, nxt):
                dst.copy_(src)

        def step():
            audio.copy_(host_audio, non_blocking=True)
            graph.replay()
            host_lm.copy_(lm, non_blocking=True)
            torch.cuda.synchronize()
            return host_lm

        return step


def bf16_difference(g, contract, device: str = "cuda", steps: int = 250, batch: int = 8) -> float:
    """max |bf16 autocast - float32| of `g`'s landmarks over `steps` autoregressive steps of a fixed test signal
    (bursts of harmonics plus noise; the real speech data does not travel with the repository)."""
    import torch

    c = contract
    t = np.arange(steps * c.samples_per_frame) / c.sample_rate_hz
    env = (np.sin(2 * np.pi * 3.0 * t) > 0).astype(np.float32)
    sig = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140.0, 280.0, 420.0, 1200.0), 1))
    sig = 0.2 * env * sig + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    audio = torch.from_numpy(np.stack([np.roll(sig, 997 * i) for i in range(batch)]).astype(np.float32)).to(device)
    face = torch.as_tensor(
        np.broadcast_to(c.reference_face_array, (batch, c.num_landmarks, c.landmark_dims)).copy(), device=device
    )
    worst = 0.0
    with torch.inference_mode():
        s32 = s16 = g.initial_state(face)
        for k in range(steps):
            a = audio[:, k * c.samples_per_frame : (k + 1) * c.samples_per_frame]
            y32, s32 = g.step(a, s32)
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
                y16, s16 = g.step(a, s16)
            worst = max(worst, float((y16.float() - y32).abs().max()))
    return worst


def trained_or_random(contract):
    """(Generator, "trained" | "random"): the shipped checkpoint when it exists and matches the model's
    architecture (needed for the bf16 accuracy probe), else random weights (time does not depend on them)."""
    from benchmarks.step_latency import torch_generator

    ckpt = REPO / "training" / "weights" / "generator"
    if ckpt.with_suffix(".json").is_file():
        from training.models.generator import load_generator

        g, _ = load_generator(ckpt, "cpu")
        if g.cfg.lookahead_frames == contract.lookahead_frames and g.cfg.lstm_hidden == int(
            contract.state("h").shape[1]
        ):
            return g, "trained"
    return torch_generator(contract), "random"


def make_backend(name: str, a: argparse.Namespace, workdir: Path):
    if name in ("ort_cuda", "ort_cuda_graph"):
        return OrtCuda(Path(a.model), a.device, cuda_graph=name == "ort_cuda_graph")
    if name == "tensorrt":
        return TensorRT(Path(a.model), a.trt_precision, max(a.batches), workdir)
    return TorchGraph(Path(a.model), bf16=name.endswith("bf16"))


def _is_oom(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return "out of memory" in text or "outofmemory" in text or "cudaerrormemoryallocation" in text


def run_backend(backend, batches: list[int], steps: int, warmup: int, deadline_ms: float, budget_s: float) -> dict:
    """Time ascending batch sizes until p99 > deadline, out of memory, or the budget is spent."""
    t_end = time.perf_counter() + budget_s
    cells, stop = {}, ""
    for b in batches:
        if time.perf_counter() > t_end:
            stop = f"time budget spent before B={b}"
            break
        try:
            step = backend.prepare(b)
            for _ in range(warmup):
                step()
            samples = []
            for _ in range(steps):
                t0 = time.perf_counter_ns()
                step()
                samples.append((time.perf_counter_ns() - t0) * 1e-9)
        except Exception as exc:
            stop = f"B={b}: {'out of GPU memory' if _is_oom(exc) else f'{type(exc).__name__}: {exc}'}"[:300]
            break
        s = summarise(samples)
        s["within_deadline"] = s["p99_ms"] <= deadline_ms
        s["streams"] = capacity(b, s["p99_ms"], deadline_ms)
        cells[str(b)] = s
        print(f"  B={b:<6} p50 {s['p50_ms']:8.3f} ms  p99 {s['p99_ms']:8.3f} ms  -> {s['streams']} streams", flush=True)
        if not s["within_deadline"]:
            stop = f"p99 {s['p99_ms']:.1f} ms > {deadline_ms:g} ms at B={b}"
            break
    return {"cells": cells, "stopped": stop or "all batch sizes ran"}


def capacity(batch: int, p99_ms: float, deadline_ms: float = DEADLINE_MS) -> int:
    """Real-time streams one GPU serves with batches of `batch`: batch x floor(deadline / p99) (0 when one
    step already misses the deadline)."""
    if not (p99_ms > 0) or p99_ms > deadline_ms:
        return 0
    return int(batch * math.floor(deadline_ms / p99_ms))


# ------------------------------------------------------------------------------------------------ report


def summary_of(results: dict) -> dict:
    out = {}
    for name, r in results.items():
        cells = {b: c for b, c in r.get("cells", {}).items() if c.get("streams", 0) > 0}
        if cells:
            best = max(cells, key=lambda b: cells[b]["streams"])
            out[name] = {
                "best_batch": int(best),
                "streams_per_gpu": cells[best]["streams"],
                "p99_ms": cells[best]["p99_ms"],
            }
    return out


def _load(value) -> str:
    """A load average for the report: two decimals, or a dash when it was not read."""
    return "–" if value is None else f"{float(value):.2f}"


def markdown(report: dict) -> str:
    m, cond = report["machine"], report["conditions"]
    lines = [
        "# Streams per GPU at p99 < {:g} ms".format(cond["deadline_ms"]),
        "",
        f"Model: `{cond['model']}` (version `{cond.get('model_version', '?')}`).  ",
        f"Machine: GPU {report.get('gpu') or 'none'}; CPU {m.get('cpu')} ({m.get('logical_cpus')} logical); "
        f"torch {m.get('torch', '–')}, onnxruntime {m.get('onnxruntime', '–')}; load {_load(m.get('load_avg_1m'))}.  ",
        f"Conditions: {cond['steps']} timed steps per batch after {cond['warmup']} warm-up; batches "
        f"{', '.join(map(str, cond['batches']))} until p99 > {cond['deadline_ms']:g} ms; budget "
        f"{cond['budget_s']:g} s per backend; run took {cond['wall_s']:.0f} s.  ",
        f"Streams per GPU = B x floor({cond['deadline_ms']:g} ms / p99 step time at B); target "
        f">= {TARGET_STREAMS_PER_GPU:,}.",
        "",
    ]
    if not report.get("gpu"):
        lines += [
            f"**No GPU here: nothing was measured** ({report.get('gpu_reason', '')}). Run "
            "`bash benchmarks/gpu_bench.sh` on a machine with a CUDA GPU.",
            "",
        ]
    rows = [
        (n, b, c)
        for n, r in report["results"].items()
        for b, c in sorted(r.get("cells", {}).items(), key=lambda kv: int(kv[0]))
    ]
    if rows:
        lines += ["| backend | B | p50 ms | p99 ms | max ms | streams per GPU |", "|---|---:|---:|---:|---:|---:|"]
        lines += [
            f"| {n} | {b} | {c['p50_ms']:.3f} | {c['p99_ms']:.3f} | {c['max_ms']:.3f} | {c['streams']:,} |"
            for n, b, c in rows
        ]
        lines.append("")
    if report["summary"]:
        lines += ["Summary:", ""]
        for n, s in report["summary"].items():
            ok = "meets" if s["streams_per_gpu"] >= TARGET_STREAMS_PER_GPU else "misses"
            lines.append(
                f"- **{n}**: {s['streams_per_gpu']:,} streams per GPU (B={s['best_batch']}, p99 "
                f"{s['p99_ms']:.2f} ms; {ok} {TARGET_STREAMS_PER_GPU:,}); "
                f"{report['results'][n].get('notes', '')}; stopped: {report['results'][n]['stopped']}"
            )
        lines.append("")
    if report["skipped"]:
        lines += ["Skipped:", ""] + [f"- {k}: {v}" for k, v in report["skipped"].items()] + [""]
    lines += ["Reproduce: `bash benchmarks/gpu_bench.sh` (see benchmarks/README.md).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    from stream_engine.contract import read_contract

    model = Path(a.model)
    if not model.is_file():
        print(f"gpu_bench: model {model} not found", file=sys.stderr)
        return 2
    contract = read_contract(model)
    ok, why = gpu_available()
    results, skipped = {}, {}
    if not ok:
        print(f"gpu_bench: {why}; nothing to measure. Writing the report with every backend skipped.", file=sys.stderr)
        skipped = {n: why for n in a.backends}
    else:
        with tempfile.TemporaryDirectory(prefix="msync_gpu_bench_") as td:
            for name in a.backends:
                print(f"{name}:", flush=True)
                t0 = time.perf_counter()
                try:
                    backend = make_backend(name, a, Path(td))
                except Skip as exc:
                    skipped[name] = str(exc)
                    print(f"  skipped: {exc}", flush=True)
                    continue
                except Exception as exc:
                    skipped[name] = f"failed to start: {type(exc).__name__}: {exc}"[:400]
                    print(f"  {skipped[name]}", flush=True)
                    continue
                left = a.budget_s - (time.perf_counter() - t0)
                r = run_backend(backend, a.batches, a.steps, a.warmup, a.deadline_ms, max(left, 1.0))
                r["notes"] = getattr(backend, "notes", "")
                r["seconds"] = time.perf_counter() - t0
                results[name] = r
                del backend
    report = {
        "machine": machine_info(),
        "gpu": why if ok else None,
        "gpu_reason": None if ok else why,
        "conditions": {
            "model": str(model.resolve().relative_to(REPO)) if model.resolve().is_relative_to(REPO) else str(model),
            "model_version": contract.model_version,
            "batches": a.batches,
            "steps": a.steps,
            "warmup": a.warmup,
            "deadline_ms": a.deadline_ms,
            "budget_s": a.budget_s,
            "trt_precision": a.trt_precision,
            "backends": a.backends,
            "wall_s": time.perf_counter() - t_start,
            "load_avg_end": os.getloadavg()[0],
        },
        "target_streams_per_gpu": TARGET_STREAMS_PER_GPU,
        "results": results,
        "summary": summary_of(results),
        "skipped": skipped,
    }
    write_report(Path(a.out), "gpu_bench", report, markdown(report))
    print(f"wrote {Path(a.out) / 'gpu_bench.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
