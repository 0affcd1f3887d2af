"""Build serialized TensorRT engines from the exported step ONNX, FP32 and FP16, with the TensorRT Python API.

Two flavours of the API are supported, chosen by :func:`import_tensorrt`:

- `tensorrt` (TensorRT 10/11, the full builder): builds for the GPU of the building machine;
- `tensorrt_rtx_bindings` (TensorRT-RTX, `pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings`):
  builds ahead of time without a GPU for the compute capabilities asked for (SM75...SM121; no SM90/H100 in
  RTX 1.7), which is how CI checks that the ONNX parses and an engine builds.

Networks are built strongly typed when the API has the flag (always with RTX): the FP16 engine is built from
the mixed-precision graph of `export.precision` (front end and landmark arithmetic stay FP32), the FP32 engine
from the plain graph with TF32 disabled. One optimisation profile covers the batch range (min, opt, max).

Each engine `<stem>.<precision>.engine` gets a sidecar `<engine>.json` with the model's contract
(`metadata`, the ONNX metadata_props) and the build details, which the TensorRT runner reads; the builder's
log goes to `<stem>.tensorrt_build.log`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

PRECISIONS = ("fp32", "fp16")
DEFAULT_BATCH_PROFILE = (1, 8, 64)
#: Compute capability for TensorRT-RTX builds when none is given (the machine may have no GPU).
DEFAULT_RTX_COMPUTE_CAPABILITIES = ("SM89",)


class TensorRTUnavailable(ImportError):
    """Neither `tensorrt` nor TensorRT-RTX is importable."""


def import_tensorrt(flavor: str = "auto"):
    """Return (module, flavor) for "tensorrt", "rtx" or "auto" (full TensorRT first, then RTX).

    Raises:
        TensorRTUnavailable: with install instructions.
    """
    errors = []
    if flavor in ("auto", "tensorrt"):
        try:
            import tensorrt  # noqa: F401

            return tensorrt, "tensorrt"
        except Exception as exc:  # ImportError, or OSError from missing libnvinfer
            errors.append(f"tensorrt: {exc}")
    if flavor in ("auto", "rtx"):
        try:
            import tensorrt_rtx_bindings

            return tensorrt_rtx_bindings, "rtx"
        except Exception as exc:
            errors.append(f"tensorrt_rtx_bindings: {exc}")
    if flavor not in ("auto", "tensorrt", "rtx"):
        raise ValueError(f"unknown TensorRT flavour {flavor!r} (auto | tensorrt | rtx)")
    raise TensorRTUnavailable(
        "TensorRT is not installed (" + "; ".join(errors) + "). Install the full builder on a GPU host "
        "(pip install tensorrt, from NVIDIA's index) or TensorRT-RTX, which also builds without a GPU: "
        "pip install 'msync[trt]' (tensorrt-rtx-cu13-libs + tensorrt-rtx-cu13-bindings)"
    )


@dataclasses.dataclass
class EngineBuild:
    """One built engine."""

    precision: str
    path: Path
    size_bytes: int
    build_seconds: float
    flavor: str
    tensorrt_version: str
    profile: tuple[int, int, int]
    compute_capabilities: tuple[str, ...]


class _LogSink:
    """Collects the builder's log lines (a `trt.ILogger` subclass is made per module at run time)."""

    @staticmethod
    def make(trt, min_severity: str = "INFO"):
        order = ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"]
        limit = order.index(min_severity)

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.lines: list[str] = []

            def log(self, severity, msg) -> None:
                name = getattr(severity, "name", str(severity)).split(".")[-1]
                if name in order and order.index(name) <= limit:
                    self.lines.append(f"[{time.strftime('%H:%M:%S')}] [{name}] {msg}")

        return Logger()


def _parse_profile(profile) -> tuple[int, int, int]:
    if isinstance(profile, str):
        profile = [int(x) for x in profile.split(",")]
    lo, opt, hi = (int(x) for x in profile)
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got {(lo, opt, hi)}")
    return lo, opt, hi


def build_engine_bytes(
    onnx_bytes: bytes,
    precision: str,
    profile=DEFAULT_BATCH_PROFILE,
    flavor: str = "auto",
    compute_capabilities: tuple[str, ...] | None = None,
    log_lines: list[str] | None = None,
):
    """Parse an ONNX graph and build one serialized engine. Returns (engine bytes, flavor, version, ccs).

    Args:
        onnx_bytes: the graph (FP32 graph for "fp32", mixed graph for "fp16" when strongly typed).
        profile: (min, opt, max) batch sizes; every input gets [b, *dims] for these b.
        compute_capabilities: RTX only, e.g. ("SM89", "SM120"); default DEFAULT_RTX_COMPUTE_CAPABILITIES.
        log_lines: receives the builder log.
    Raises:
        TensorRTUnavailable, RuntimeError (parse/build failures, with the parser's errors).
    """
    trt, flavor = import_tensorrt(flavor)
    lo, opt, hi = _parse_profile(profile)
    logger = _LogSink.make(trt)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    try:
        if not parser.parse(onnx_bytes):
            errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError("TensorRT's ONNX parser rejected the model:\n  " + "\n  ".join(errs))
        config = builder.create_builder_config()
        if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # exact FP32 for parity with onnxruntime
        if precision == "fp16" and not strongly_typed:
            config.set_flag(trt.BuilderFlag.FP16)  # weakly typed TensorRT (< 9): let the builder choose
        ccs: tuple[str, ...] = ()
        if flavor == "rtx":
            ccs = tuple(compute_capabilities or DEFAULT_RTX_COMPUTE_CAPABILITIES)
            config.num_compute_capabilities = len(ccs)
            for i, cc in enumerate(ccs):
                if not hasattr(trt.ComputeCapability, cc):
                    raise ValueError(
                        f"unknown compute capability {cc!r}; TensorRT-RTX {trt.__version__} knows "
                        f"{[n for n in dir(trt.ComputeCapability) if n.startswith('SM')]}"
                    )
                config.set_compute_capability(getattr(trt.ComputeCapability, cc), i)
        prof = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            dims = list(t.shape)
            if not dims or dims[0] != -1 or any(d < 0 for d in dims[1:]):
                raise RuntimeError(f"input {t.name} has shape {dims}; expected a dynamic batch dim only")
            prof.set_shape(t.name, [lo] + dims[1:], [opt] + dims[1:], [hi] + dims[1:])
        config.add_optimization_profile(prof)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            tail = "\n".join(logger.lines[-20:])
            raise RuntimeError(f"TensorRT failed to build the {precision} engine; log tail:\n{tail}")
        return bytes(serialized), flavor, str(trt.__version__), ccs
    finally:
        if log_lines is not None:
            log_lines.extend(logger.lines)
        del parser, network, builder


def build_engines(
    onnx_path: str | Path,
    out_dir: str | Path | None = None,
    precisions=PRECISIONS,
    profile=DEFAULT_BATCH_PROFILE,
    flavor: str = "auto",
    compute_capabilities: tuple[str, ...] | None = None,
) -> tuple[list[EngineBuild], Path]:
    """Build one engine per precision next to (or under `out_dir`) the ONNX file.

    Returns:
        (the builds, path of the build log).
    """
    import onnx

    from export.precision import to_mixed_fp16

    onnx_path = Path(onnx_path)
    out_dir = Path(out_dir) if out_dir else onnx_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(onnx_path))
    log_path = out_dir / f"{onnx_path.stem}.tensorrt_build.log"
    log: list[str] = [f"# msync TensorRT build of {onnx_path.name} ({time.strftime('%Y-%m-%d %H:%M:%S')})"]
    profile = _parse_profile(profile)
    builds = []
    try:
        for precision in precisions:
            if precision not in PRECISIONS:
                raise ValueError(f"unknown precision {precision!r} ({' | '.join(PRECISIONS)})")
            graph = model
            if precision == "fp16":
                graph = to_mixed_fp16(model)
                _set_meta(graph, "msync.precision", "fp16-mixed")
                fp16_path = out_dir / f"{onnx_path.stem}.fp16.onnx"
                onnx.save_model(graph, str(fp16_path), save_as_external_data=False)
                log.append(f"# wrote the mixed-precision graph {fp16_path.name}")
            log.append(f"# --- {precision}: batch profile min/opt/max = {profile}")
            t0 = time.perf_counter()
            blob, used_flavor, version, ccs = build_engine_bytes(
                graph.SerializeToString(), precision, profile, flavor, compute_capabilities, log
            )
            seconds = time.perf_counter() - t0
            engine_path = out_dir / f"{onnx_path.stem}.{precision}.engine"
            tmp = engine_path.with_name(engine_path.name + ".tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, engine_path)
            build = EngineBuild(
                precision, engine_path, len(blob), round(seconds, 3), used_flavor, version, profile, ccs
            )
            sidecar = {
                "metadata": {p.key: p.value for p in graph.metadata_props},
                "tensorrt": {
                    "flavor": used_flavor,
                    "version": version,
                    "precision": precision,
                    "batch_profile": list(profile),
                    "compute_capabilities": list(ccs),
                    "build_seconds": build.build_seconds,
                    "onnx": onnx_path.name,
                    "strongly_typed": True if used_flavor == "rtx" else None,
                },
            }
            engine_path.with_name(engine_path.name + ".json").write_text(json.dumps(sidecar, indent=1))
            log.append(
                f"# built {engine_path.name}: {len(blob)} bytes in {seconds:.2f} s "
                f"({used_flavor} {version}{', ' + ','.join(ccs) if ccs else ''})"
            )
            builds.append(build)
    finally:
        log_path.write_text("\n".join(log) + "\n")
    return builds, log_path


def _set_meta(model, key: str, value: str) -> None:
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    model.metadata_props.add(key=key, value=value)
