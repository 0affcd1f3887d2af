"""ONNX Runtime backend for the exported step.

Hot path: one `IOBinding` per thread with the outputs bound once (ORT allocates them per run); each call binds
the caller's input arrays, runs `run_with_iobinding(binding)` with no RunOptions object (passing one costs
~85 µs per call in ORT 1.31's Python API; stack-facts §2) and takes the outputs as new numpy arrays, so
`step` stays pure. Measured on the 2-core CI machine (B=1, interleaved rounds): on par with `session.run`
(781 vs 788 µs median), ~60 µs faster than binding freshly allocated output buffers on every call.

Execution providers: CPU by default. With onnxruntime-gpu installed (`pip install 'msync[gpu]'`), ask for
"cuda" and/or "tensorrt" (or "auto" for the best available); state still travels through host memory in this
backend (for device-resident state use `stream_engine.runtime.tensorrt`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stream_engine.contract import ModelLoadError, StepContract, contract_from_session, ort_session
from stream_engine.runtime.base import BaseStepRunner, State, StateSlots

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
_AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


IN_PLACE_MIN_ROWS = 32  # the fewest contiguous rows a call steps in place (see OnnxStepRunner.__init__)


def resolve_providers(providers: str | Sequence[Any] | None) -> list[Any]:
    """Normalise a provider request into onnxruntime's list form.

    Accepts None (CPU), "auto" (TensorRT > CUDA > CPU, whatever this onnxruntime build has), a name or alias
    ("cpu", "cuda", "tensorrt"), a comma-separated string of them, or a list mixing names and
    (name, options) pairs. CPU is appended as the fallback for nodes other providers do not take.

    Raises:
        ModelLoadError: a requested provider is not available in this onnxruntime build.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        if providers == "auto":
            return [p for p in _AUTO_ORDER if p in available]
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    out: list[Any] = []
    for p in providers:
        name, opts = (p[0], p[1]) if isinstance(p, (tuple, list)) else (p, None)
        name = PROVIDER_ALIASES.get(str(name).lower(), name)
        if name not in available:
            hint = " (install onnxruntime-gpu: pip install 'msync[gpu]')" if name != "CPUExecutionProvider" else ""
            raise ModelLoadError(
                f"execution provider {name} is not available in this onnxruntime "
                f"{ort.__version__}; available: {available}{hint}"
            )
        out.append((name, dict(opts)) if opts else name)
    names = [p[0] if isinstance(p, tuple) else p for p in out]
    if "CPUExecutionProvider" not in names:
        out.append("CPUExecutionProvider")
    return out


class OnnxStepRunner(BaseStepRunner):
    """Runs an exported msync step model with onnxruntime.

    Args:
        path: the .onnx file (self-contained, with its contract in metadata).
        threads: intra-op threads (1 is best for B=1 on a shared machine; stack-facts §2).
        providers: see :func:`resolve_providers`; None = CPU.
        inter_op_threads: inter-op threads (the graph is sequential; 1 is right).
        spin: let idle intra-op pool threads spin (ONNX Runtime's default) instead of sleeping; off, because
            spinning doubles the CPU of a 2-thread step (benchmarks/results/step_cores.md).
        memory_pattern: ONNX Runtime's memory pattern (its default: on), which plans a run's memory for the
            input shapes it has seen. The engine's batch size changes from call to call, and new sizes grew
            the process: stepping random sizes 1-64 after a B=64 step grew it by 5.8 MiB with the pattern,
            0.4 MiB without (the shipped int8 model), with the same step time within +-4 % at B = 1, 8, 32, 64
            (onnxruntime issue #11118 gives the same advice for inputs whose shape varies). Off by default.
            (The 100-stream soak's batch sizes grew nothing measurable either way.)
    Raises:
        ModelLoadError: missing/corrupt file or unavailable provider. ContractError: the model's contract is
        missing, malformed, or not honoured by its graph.
    """

    def __init__(
        self,
        path: str | Path,
        threads: int = 1,
        providers: str | Sequence[Any] | None = None,
        *,
        inter_op_threads: int = 1,
        spin: bool = False,
        memory_pattern: bool = False,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = int(inter_op_threads)
        if threads != 1 and not spin:
            # idle pool threads sleep instead of spinning: at B=64 (int8) two spinning threads cost 1.9x the CPU
            # of one and, on a loaded 2-core machine, more wall time too; not spinning: 1.1x the CPU, 0.6x the
            # wall time (benchmarks/results/step_cores.md)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.enable_mem_pattern = bool(memory_pattern)
        self.session = ort_session(self.path, so, resolve_providers(providers))
        self.contract: StepContract = contract_from_session(self.session, str(self.path))
        self.providers = self.session.get_providers()
        self._output_names = list(self.contract.output_names)  # landmarks, then the states' next values
        self._local = threading.local()
        self._float32_states = all(s.dtype == "float32" for s in self.contract.states)  # what the bindings assume
        # Fewer rows than this are copied in and out even when contiguous: binding a new range costs about
        # 70 us, which a few rows' copies do not repay (benchmarks/results/state_banks_small.md: in place was
        # 0.78x at one row with a new range every call, 1.00-1.12x at 4-32 rows, within this VM's noise;
        # state_banks.md: 1.04-1.14x at 64-256 rows, and the binding cost).
        self.in_place_min_rows = IN_PLACE_MIN_ROWS

    def _binding(self, batch: int) -> Any:
        """This thread's IOBinding for this batch size, every output bound once to CPU memory that ORT allocates
        on the first run (and reuses afterwards: the output shapes depend on the batch, hence one per size)."""
        bindings = getattr(self._local, "bindings", None)
        if bindings is None:
            bindings = self._local.bindings = {}
        b = bindings.get(batch)
        if b is None:
            if len(bindings) >= 16:  # many distinct batch sizes: keep memory bounded
                bindings.clear()
            b = bindings[batch] = self.session.io_binding()
            for name in self._output_names:
                b.bind_output(name, "cpu")
        return b

    def _run(self, audio: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        binding = self._binding(audio.shape[0])
        # Every input is bound again on every call (the arrays are the caller's), so no stale pointer from a
        # previous call is ever read.
        binding.bind_cpu_input(self.contract.audio_input.name, audio)
        for spec in self.contract.states:
            binding.bind_cpu_input(spec.name, state[spec.name])
        self.session.run_with_iobinding(binding)
        outs = binding.copy_outputs_to_cpu()  # new numpy arrays: the step stays pure
        return outs[0], {s.name: o for s, o in zip(self.contract.states, outs[1:])}

    # ------------------------------------------------------------- slot path (the engine's)
    def _slot_binding(self, batch: int) -> tuple[Any, np.ndarray, State, np.ndarray, State]:
        """This thread's binding for `batch` rows: the first `batch` rows of this thread's input and output
        buffers (one set, sized for the largest batch seen, rounded up to a power of two), bound once per batch
        size, so a call only copies rows in (gather), runs, and copies rows out (scatter).

        Every batch size shares the one set of buffers (a prefix of a C-contiguous array is contiguous): buffers
        per batch size cost 2 x 29 KB of state per row and size (about 60 MB once a server has seen most sizes
        up to 64, the RSS growth of the 100-stream soak), the shared set 2 x 29 KB x the largest batch.
        The bindings of every size up to the set's rows are made with the set (about 4-6 KB of Python objects a
        size, 16-20 ms for 64 sizes; `Engine.warm_up` makes the largest set before serving): made one by one as
        batch sizes first appear under load, they were long-lived objects scattered among each burst's
        short-lived ones and kept Python's allocator from returning its arenas after the burst."""
        local = self._local
        bufs = getattr(local, "slot_buffers", None)
        if bufs is None or bufs[0] < batch:
            c = self.contract
            rows = 1 << max(0, batch - 1).bit_length()  # the next power of two >= batch
            audio = np.zeros(c.audio_input.concrete_shape(rows), np.float32)
            ins = {s.name: np.zeros(s.concrete_shape(rows), np.float32) for s in c.states}
            lm = np.zeros(c.landmarks_output.concrete_shape(rows), np.float32)
            outs = {s.name: np.zeros(s.concrete_shape(rows), np.float32) for s in c.states}
            bufs = local.slot_buffers = (rows, audio, ins, lm, outs)
            # bound to these buffers' addresses (the old set's bindings go with it)
            local.slot_bindings = {size: self._bind_prefix(bufs, size) for size in range(1, rows + 1)}
        cache: dict[int, tuple[Any, np.ndarray, State, np.ndarray, State]] = local.slot_bindings
        return cache[batch]

    def _bind_prefix(
        self, bufs: tuple[int, np.ndarray, State, np.ndarray, State], batch: int
    ) -> tuple[Any, np.ndarray, State, np.ndarray, State]:
        """An I/O binding of the first `batch` rows of a buffer set, with those rows' views."""
        _, audio_all, ins_all, lm_all, outs_all = bufs
        audio, lm = audio_all[:batch], lm_all[:batch]
        ins = {k: v[:batch] for k, v in ins_all.items()}
        outs = {k: v[:batch] for k, v in outs_all.items()}
        return self._bind_arrays(audio, ins, lm, outs), audio, ins, lm, outs

    def _bind_arrays(self, audio: np.ndarray, ins: State, lm: np.ndarray, outs: State) -> Any:
        """A new I/O binding of the step's inputs (audio, states) and outputs (landmarks, next states) to these
        C-contiguous float32 host arrays, by address: the arrays must outlive every run of the binding."""
        c = self.contract
        b = self.session.io_binding()
        for name, arr in [(c.audio_input.name, audio)] + [(s.name, ins[s.name]) for s in c.states]:
            b.bind_input(name, "cpu", 0, np.float32, list(arr.shape), arr.ctypes.data)
        for name, arr in [(c.landmarks_output.name, lm)] + [(s.next_name, outs[s.name]) for s in c.states]:
            b.bind_output(name, "cpu", 0, np.float32, list(arr.shape), arr.ctypes.data)
        return b

    def new_slots(self, capacity: int) -> StateSlots:
        """A double-buffered store (``banks=2``): a call on a contiguous range of rows reads their state where it
        is and writes the next state into the other bank, with no copy in or out (:meth:`step_slots`)."""
        return StateSlots(self.contract, capacity, banks=2)

    def _range_binding(self, slots: StateSlots, first: int, n: int, bank: int) -> tuple[Any, np.ndarray, np.ndarray]:
        """This thread's binding for rows [first, first + n) of a double-buffered store: states read from `bank`,
        next states written to the same rows of the other bank, audio and landmarks in this thread's bound
        buffers (their first `n` rows). Returns (binding, audio rows, landmark rows).

        Binding the 16 inputs and outputs costs about 70 us (`bind_us` in `benchmarks/results/state_banks.md`),
        so bindings are kept per thread, up to 64 (range, bank) entries, all dropped at once when full: a full
        store's round robin repeats a few. An entry is used only while its store is the same live object
        at the same `StateSlots.generation` (the arrays it points at are unchanged); it holds the store weakly
        and its own buffer rows strongly, so no binding is ever run on memory that was given back."""
        local = self._local
        cache = getattr(local, "range_bindings", None)
        if cache is None:
            cache = local.range_bindings = {}
        key = (id(slots), first, n, bank)
        hit = cache.get(key)
        if hit is not None and hit[0]() is slots and hit[1] == slots.generation:
            return hit[2], hit[3], hit[4]
        _, audio_buf, _, lm_buf, _ = self._slot_binding(n)  # this thread's buffers, sized for n rows at least
        src, dst = bank * slots.capacity + first, (1 - bank) * slots.capacity + first
        ins = {k: v[src : src + n] for k, v in slots.store.items()}
        outs = {k: v[dst : dst + n] for k, v in slots.store.items()}
        b = self._bind_arrays(audio_buf, ins, lm_buf, outs)
        if len(cache) >= 64:
            cache.clear()
        cache[key] = (weakref.ref(slots), slots.generation, b, audio_buf, lm_buf)
        return b, audio_buf, lm_buf

    def step_slots(self, slots: StateSlots, rows: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """One step of the streams in `rows` of `slots`. Rows that form one contiguous ascending range of a
        double-buffered store, at least `in_place_min_rows` (32) of them, run in place: their state is read from
        its bank and the next state written to the other (:meth:`StateSlots.swap_range`); the store refuses to
        grow meanwhile (ONNX Runtime holds addresses into it). Other rows go through this thread's binding bound
        once per batch size: gather into the bound input buffers, run, scatter the bound outputs back. Returns
        landmarks (B, N, D), a new array."""
        audio = np.asarray(audio)
        if audio.ndim != 2 or audio.shape[1] != self.contract.samples_per_frame:
            from stream_engine.runtime.base import check_audio

            check_audio(self.contract, audio)  # raises with the message
        rows = np.asarray(rows, dtype=np.intp)
        if rows.shape != (audio.shape[0],):
            raise ValueError(f"rows {rows.shape} and audio {audio.shape} disagree on the batch")
        swap = slots.swap_range(rows) if self._float32_states and rows.size >= self.in_place_min_rows else None
        if swap is not None:
            first, bank = swap
            binding, audio_rows, lm_rows = self._range_binding(slots, first, rows.size, bank)
            np.copyto(audio_rows, audio, casting="same_kind")
            slots.in_place_steps += 1  # the store refuses to grow until the run is over
            try:
                self.session.run_with_iobinding(binding)
            finally:
                slots.in_place_steps -= 1
            slots.flip(first, rows.size)  # only after a successful run: a failed one leaves the state as it was
            landmarks: np.ndarray = lm_rows.copy()
            return landmarks
        binding, audio_buf, ins, lm, outs = self._slot_binding(audio.shape[0])
        np.copyto(audio_buf, audio, casting="same_kind")
        slots.gather(rows, out=ins)
        self.session.run_with_iobinding(binding)
        slots.scatter(rows, outs)
        result: np.ndarray = lm.copy()
        return result

    def __repr__(self) -> str:
        return f"OnnxStepRunner({str(self.path)!r}, providers={self.providers})"
