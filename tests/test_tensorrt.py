"""TensorRT: the exported ONNX parses and FP32/FP16 engines build (TensorRT-RTX builds ahead of time without a
GPU); running an engine needs a CUDA GPU and is skipped here with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("torch")

from export_helpers import exported_model  # noqa: E402


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    return exported_model(tmp_path_factory)


def _tensorrt_or_skip():
    from export.tensorrt_build import TensorRTUnavailable, import_tensorrt

    try:
        return import_tensorrt("auto")
    except TensorRTUnavailable as exc:
        pytest.skip(f"no TensorRT builder installed ({str(exc)[:160]}...)")


@pytest.fixture(scope="module")
def engines(exported, tmp_path_factory):
    from export.tensorrt_build import build_engines

    _tensorrt_or_skip()
    out = tmp_path_factory.mktemp("trt")
    builds, log = build_engines(exported[0], out, ("fp32", "fp16"), profile=(1, 4, 16))
    return builds, log


@pytest.mark.trt
def test_onnx_parses_and_engines_build(engines, exported):
    """FP32 and FP16 engines with a batch profile; each has a sidecar carrying the contract; the log is kept."""
    from stream_engine.contract import StepContract

    builds, log = engines
    assert [b.precision for b in builds] == ["fp32", "fp16"]
    for b in builds:
        assert b.path.is_file() and b.size_bytes > 1_000_000 and b.profile == (1, 4, 16)
        side = json.loads(b.path.with_name(b.path.name + ".json").read_text())
        assert StepContract.from_metadata(side["metadata"]) == exported[2]
        assert side["tensorrt"]["precision"] == b.precision
    assert builds[1].size_bytes < builds[0].size_bytes  # FP16 weights
    text = log.read_text()
    assert "built model.fp32.engine" in text and "built model.fp16.engine" in text
    print(
        f"TensorRT ({builds[0].flavor} {builds[0].tensorrt_version}) build seconds: "
        f"fp32 {builds[0].build_seconds}, fp16 {builds[1].build_seconds}; log {log}"
    )


def test_missing_tensorrt_gives_a_clear_error(monkeypatch):
    import builtins

    from export.tensorrt_build import TensorRTUnavailable, import_tensorrt

    real_import = builtins.__import__

    def no_trt(name, *a, **k):
        if name.startswith(("tensorrt", "tensorrt_rtx_bindings")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_trt)
    with pytest.raises(TensorRTUnavailable, match="pip install"):
        import_tensorrt("auto")


def test_engine_without_contract_is_refused(tmp_path):
    from stream_engine.contract import ModelLoadError
    from stream_engine.runtime.tensorrt import TensorRTStepRunner

    with pytest.raises(ModelLoadError, match="no such engine"):
        TensorRTStepRunner(tmp_path / "none.engine")
    (tmp_path / "x.engine").write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="sidecar"):
        TensorRTStepRunner(tmp_path / "x.engine")


def _cuda_gpu_or_skip():
    try:
        from cuda.bindings import runtime as cudart
    except Exception:
        try:
            from cuda import cudart
        except Exception:
            pytest.skip("running a TensorRT engine needs cuda-python and a CUDA GPU; this machine has neither")
    err, count = cudart.cudaGetDeviceCount()
    if int(getattr(err, "value", err)) != 0 or count < 1:
        pytest.skip("no CUDA GPU on this machine: TensorRT engines can be built here but not run")


@pytest.mark.gpu
@pytest.mark.trt
def test_tensorrt_engine_matches_onnxruntime(engines, exported, speech):
    """On a GPU host: FP32 engine vs onnxruntime over 250 steps (both feeding back their own state), and the
    device-resident ping-pong path equals the numpy path."""
    _cuda_gpu_or_skip()
    from stream_engine.runtime.base import run_steps
    from stream_engine.runtime.onnxrt import OnnxStepRunner
    from stream_engine.runtime.tensorrt import TensorRTStepRunner

    builds, _ = engines
    trt_runner = TensorRTStepRunner(builds[0].path)
    ort_runner = OnnxStepRunner(exported[0])
    audio = speech[: 250 * 640]
    state = ort_runner.initial_state(1, rng=np.random.default_rng(0))
    a, _ = run_steps(ort_runner, audio, state)
    b, _ = run_steps(trt_runner, audio, state)
    assert np.max(np.abs(a - b)) <= 1e-3
    batch = trt_runner.open_batch(1, rng=np.random.default_rng(0))
    c = np.stack([batch.step(audio[None, 640 * k : 640 * (k + 1)]) for k in range(250)], axis=1)
    assert np.max(np.abs(c - b)) <= 1e-5
