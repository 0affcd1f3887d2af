"""Step runners: one object per loaded model, shared by many streams; each stream owns its state dict.

`base` defines the :class:`StepRunner` protocol and the state helpers every backend shares; `onnxrt` runs the
exported ONNX step with onnxruntime (CPU, or CUDA / TensorRT execution providers with onnxruntime-gpu);
`tensorrt` runs a serialized TensorRT engine with device-resident state. Backends are imported lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream_engine.runtime.base import (
    BaseStepRunner,
    NonFiniteModelError,
    StateSlots,
    StepRunner,
    check_audio,
    check_finite_output,
    initial_state,
    run_steps,
    stack_states,
    unstack_state,
)

__all__ = [
    "BaseStepRunner",
    "NonFiniteModelError",
    "StateSlots",
    "StepRunner",
    "check_audio",
    "check_finite_output",
    "initial_state",
    "run_steps",
    "stack_states",
    "unstack_state",
    "load_runner",
]


def load_runner(path: str | Path, backend: str = "auto", check_finite: bool = True, **kwargs: Any) -> StepRunner:
    """Open a model with the named backend: "onnxruntime" (an .onnx file), "tensorrt" (an engine file), or
    "auto" (by suffix: .engine/.plan -> tensorrt, anything else -> onnxruntime).

    With `check_finite` (default) the model is run on a canned input first and refused with
    :class:`NonFiniteModelError` (a `ModelLoadError`) if any output is NaN or infinite."""
    runner = _open(path, backend, **kwargs)
    if check_finite:
        check_finite_output(runner)
    return runner


def _open(path: str | Path, backend: str, **kwargs: Any) -> StepRunner:
    if backend == "auto":
        backend = "tensorrt" if str(path).endswith((".engine", ".plan")) else "onnxruntime"
    if backend in ("onnxruntime", "ort", "onnx"):
        from stream_engine.runtime.onnxrt import OnnxStepRunner

        return OnnxStepRunner(path, **kwargs)
    if backend in ("tensorrt", "trt"):
        from stream_engine.runtime.tensorrt import TensorRTStepRunner

        kwargs.pop("threads", None)  # CPU-thread settings do not apply to an engine
        kwargs.pop("providers", None)
        return TensorRTStepRunner(path, **kwargs)
    raise ValueError(f"unknown backend {backend!r} (onnxruntime | tensorrt)")
