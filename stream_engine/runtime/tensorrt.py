"""TensorRT backend: a serialized engine (`msync export --tensorrt`) with device-resident stream state.

Needs a CUDA GPU, the TensorRT runtime (`tensorrt`, or `tensorrt_rtx_bindings` for TensorRT-RTX engines) and
cuda-python (`cuda.bindings.runtime`) for device memory; all imports are guarded and a missing piece gives a
clear :class:`ModelLoadError`. The engine file has no metadata of its own: its contract comes from the sidecar
`<engine>.json` the builder writes (or from the ONNX file it was built from), and the engine's tensors are
checked against it.

Two ways to drive it:

- :meth:`TensorRTStepRunner.step` (the `StepRunner` protocol): numpy state in and out, copied to and from
  the device at every call — the same semantics as every other backend, for parity tests and mixed batches;
- :meth:`TensorRTStepRunner.open_batch` -> :class:`DeviceBatch`: B streams whose state stays on the GPU in two
  buffer sets that swap roles every step (ping-pong: step k reads set k % 2 and writes set 1 - k % 2), so a
  step moves only the new audio in (B x 640 floats) and the landmarks out (B x 68 x 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from stream_engine.contract import DTYPES, ContractError, ModelLoadError, StepContract, read_contract
from stream_engine.runtime.base import BaseStepRunner, State, check_audio, initial_state


def _import_trt() -> Any:  # the tensorrt (or tensorrt_rtx_bindings) module
    try:
        import tensorrt as trt

        return trt
    except Exception:
        pass
    try:
        import tensorrt_rtx_bindings as trt

        return trt
    except Exception as exc:
        raise ModelLoadError(
            "the TensorRT backend needs the TensorRT runtime: `pip install tensorrt` (NVIDIA index) for engines "
            "built by TensorRT, or `pip install 'msync[trt]'` for TensorRT-RTX engines; and a CUDA GPU "
            f"({exc})"
        ) from exc


def _import_cudart() -> Any:  # cuda-python's runtime module
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6

        return cudart
    except Exception:
        pass
    try:
        from cuda import cudart  # older cuda-python

        return cudart
    except Exception as exc:
        raise ModelLoadError(
            f"the TensorRT backend needs cuda-python for device memory: pip install cuda-python ({exc})"
        ) from exc


def _check(result: Any) -> Any:
    """cuda-python calls return (err, *values); raise on error, return the values."""
    parts: tuple[Any, ...] = result if isinstance(result, tuple) else (result,)
    err: Any = parts[0]
    values = list(parts[1:])
    code = int(getattr(err, "value", err))
    if code != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


def contract_for_engine(engine_path: Path, contract: StepContract | str | Path | None) -> StepContract:
    """The contract of an engine: given, read from an ONNX path, or from the builder's sidecar JSON."""
    if isinstance(contract, StepContract):
        return contract
    if contract is not None:
        return read_contract(contract)
    sidecar = engine_path.with_name(engine_path.name + ".json")
    if not sidecar.is_file():
        raise ModelLoadError(
            f"{engine_path}: no contract: the sidecar {sidecar.name} written by `msync export "
            "--tensorrt` is missing; pass contract=<the .onnx it was built from>"
        )
    try:
        meta = json.loads(sidecar.read_text())["metadata"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{sidecar}: unreadable engine sidecar ({exc})") from exc
    return StepContract.from_metadata(meta)


class TensorRTStepRunner(BaseStepRunner):
    """Runs a serialized TensorRT engine of the step.

    Args:
        engine_path: the `.engine` file.
        contract: a StepContract, the ONNX file it was built from, or None for the sidecar JSON.
        device: CUDA device ordinal.
    """

    def __init__(
        self, engine_path: str | Path, contract: StepContract | str | Path | None = None, device: int = 0
    ) -> None:
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: no such engine file")
        self.contract = contract_for_engine(self.path, contract)
        trt = self._trt = _import_trt()
        cudart = self._cudart = _import_cudart()
        _check(cudart.cudaSetDevice(device))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ModelLoadError(
                f"{self.path}: TensorRT could not deserialize the engine (built for another TensorRT version or GPU?)"
            )
        self._check_engine()
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        self._scratch: dict[int, DeviceBatch] = {}

    # ------------------------------------------------------------------ checks
    def _check_engine(self) -> None:
        trt, c = self._trt, self.contract
        want = {
            c.audio_input.name: (c.audio_input.shape, "input"),
            c.landmarks_output.name: (c.landmarks_output.shape, "output"),
        }
        for s in c.states:
            want[s.name] = (s.shape, "input")
            want[s.next_name] = (s.shape, "output")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        problems = []
        if set(names) != set(want):
            problems.append(f"engine tensors {sorted(names)} != contract {sorted(want)}")
        for name in set(names) & set(want):
            shape, mode = want[name]
            got = list(self.engine.get_tensor_shape(name))
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            if is_input != (mode == "input"):
                problems.append(f"{name}: engine has it as {'input' if is_input else 'output'}, contract {mode}")
            if len(got) != len(shape) or any(g != w for g, w in zip(got[1:], shape[1:])):
                problems.append(f"{name}: engine shape {got}, contract {list(shape)}")
            if self.engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                problems.append(f"{name}: engine dtype {self.engine.get_tensor_dtype(name)}, contract float32")
        if problems:
            raise ContractError(f"{self.path}: the engine does not match its contract: " + "; ".join(problems))

    def max_batch(self) -> int:
        return int(self.engine.get_tensor_profile_shape(self.contract.audio_input.name, 0)[2][0])

    # ------------------------------------------------------------- numpy path
    def _run(self, audio: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        b = audio.shape[0]
        batch = self._scratch.get(b)
        if batch is None:
            batch = self._scratch[b] = DeviceBatch(self, b)
        batch.write_state(state)
        landmarks = batch.step(audio)
        return landmarks, batch.read_state()

    # ------------------------------------------------------- device-resident
    def open_batch(
        self, batch: int, reference_face: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> DeviceBatch:
        """`batch` fresh streams whose state lives on the GPU (see :class:`DeviceBatch`)."""
        db = DeviceBatch(self, batch)
        db.write_state(initial_state(self.contract, batch, reference_face, rng))
        return db


class DeviceBatch:
    """B streams with device-resident state in two ping-pong buffer sets.

    Not thread-safe: one DeviceBatch per worker thread (they share the runner's engine, not its context —
    each DeviceBatch creates its own execution context).
    """

    def __init__(self, runner: TensorRTStepRunner, batch: int) -> None:
        self.runner, self.batch = runner, int(batch)
        c = runner.contract
        cudart = runner._cudart
        self._cudart = cudart
        self.context = runner.engine.create_execution_context()
        self._buffers: list[int] = []

        def alloc(shape: tuple[int, ...]) -> int:
            ptr: int = _check(cudart.cudaMalloc(int(np.prod(shape)) * 4))
            self._buffers.append(ptr)
            return ptr

        self._shapes = {s.name: s.concrete_shape(self.batch) for s in c.states}
        self._audio_shape = c.audio_input.concrete_shape(self.batch)
        self._lm_shape = c.landmarks_output.concrete_shape(self.batch)
        self._audio = alloc(self._audio_shape)
        self._landmarks = alloc(self._lm_shape)
        self._sets = [{s.name: alloc(self._shapes[s.name]) for s in c.states} for _ in range(2)]
        self._cur = 0  # the set holding the current state
        self._host_audio = np.zeros(self._audio_shape, np.float32)
        self._host_lm = np.zeros(self._lm_shape, np.float32)
        for name, shape in [(c.audio_input.name, self._audio_shape)] + [
            (s.name, self._shapes[s.name]) for s in c.states
        ]:
            self.context.set_input_shape(name, shape)

    def _copy(self, dst: int, src: int, nbytes: int, kind: Any) -> None:
        _check(self._cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self.runner.stream))

    def write_state(self, state: State) -> None:
        """Upload a numpy state (B streams) into the current set."""
        h2d = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        keep = []
        for s in self.runner.contract.states:
            arr = np.ascontiguousarray(state[s.name], dtype=DTYPES[s.dtype])
            if arr.shape != self._shapes[s.name]:
                raise ValueError(f"state {s.name!r}: shape {arr.shape}, expected {self._shapes[s.name]}")
            keep.append(arr)
            self._copy(self._sets[self._cur][s.name], arr.ctypes.data, arr.nbytes, h2d)
        _check(self._cudart.cudaStreamSynchronize(self.runner.stream))
        del keep

    def read_state(self) -> State:
        """Download the current state (B streams) as new numpy arrays."""
        d2h = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        out = {}
        for s in self.runner.contract.states:
            arr = np.empty(self._shapes[s.name], np.float32)
            self._copy(arr.ctypes.data, self._sets[self._cur][s.name], arr.nbytes, d2h)
            out[s.name] = arr
        _check(self._cudart.cudaStreamSynchronize(self.runner.stream))
        return out

    def step(self, audio: np.ndarray) -> np.ndarray:
        """One step for all B streams: audio (B, samples_per_frame) -> landmarks (B, N, D) (a new array)."""
        c = self.runner.contract
        audio = check_audio(c, audio)
        if audio.shape != self._audio_shape:
            raise ValueError(f"this batch holds {self.batch} streams; audio has shape {audio.shape}")
        cudart = self._cudart
        np.copyto(self._host_audio, audio)
        self._copy(
            self._audio,
            self._host_audio.ctypes.data,
            self._host_audio.nbytes,
            cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
        )
        src, dst = self._sets[self._cur], self._sets[1 - self._cur]
        ctx = self.context
        ctx.set_tensor_address(c.audio_input.name, self._audio)
        ctx.set_tensor_address(c.landmarks_output.name, self._landmarks)
        for s in c.states:
            ctx.set_tensor_address(s.name, src[s.name])
            ctx.set_tensor_address(s.next_name, dst[s.name])
        if not ctx.execute_async_v3(self.runner.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self._copy(
            self._host_lm.ctypes.data,
            self._landmarks,
            self._host_lm.nbytes,
            cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
        )
        _check(cudart.cudaStreamSynchronize(self.runner.stream))
        self._cur = 1 - self._cur
        result: np.ndarray = self._host_lm.copy()
        return result

    def close(self) -> None:
        for ptr in self._buffers:
            self._cudart.cudaFree(ptr)
        self._buffers.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
