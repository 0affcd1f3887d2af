"""Int8 variants of an exported step model (onnxruntime.quantization), with the precision in the contract.

    python -m export.quantize --model stream_engine/models/default.onnx --out int8.onnx            # dynamic
    python -m export.quantize --model default.onnx --out int8_qdq.onnx --method static --data ../shared/data

What is quantized: only the matrix products (MatMul, Gemm) inside the learned submodules (audio stem, ConvNeXt
blocks, landmark encoder, LSTM cell, branches), found through the ``pkg.torch.onnx.name_scopes`` metadata the
dynamo exporter writes on every node (as :mod:`export.precision` does for FP16). Everything else stays float32:

- the MFCC front end (``generator.mfcc``): the power spectrum spans ~1e-10 to ~1e4 before the log, far beyond
  the 256 levels of one int8 scale, and its DFT/mel matrices feed every later layer;
- the landmark state arithmetic (x(t) = x(t-1) + v(t), the warm-up ``Where``s) and the depthwise taps: no
  matrix product there, and landmark steps of ~1e-4 would be quantised away;
- graph inputs, outputs and states: the contract's tensors stay float32, so runtimes need no change.

Methods (onnxruntime's, https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html):

- ``dynamic``: int8 weights (per output channel), activations quantised per call from their observed range
  (``MatMulInteger``/``DynamicQuantizeMatMul``; u8 x s8 products use VNNI on CPUs that have it);
- ``static``: QDQ format, int8 weights per channel and uint8 activations whose ranges are calibrated by running
  the float32 model autoregressively over real training-split speech (the states it visits in use).

The written model carries ``msync.precision`` ("int8-dynamic" or "int8-static"), ``msync.quantization`` (JSON:
method, nodes, onnxruntime version, calibration) and ``msync.source_model`` (the float32 model's version);
``msync.model_version`` gains a ``+int8`` suffix. Every other contract key is copied unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from export.precision import node_scopes

#: Module scopes whose MatMul/Gemm nodes are quantized (attribute names of `Generator`).
LEARNED_SCOPES = (
    "generator.audio_stem",
    "generator.blocks",
    "generator.landmark_encoder",
    "generator.lstm",
    "generator.branches",
)
FRONT_END_SCOPE = "generator.mfcc"
QUANTIZED_OPS = ("MatMul", "Gemm")
METHODS = ("dynamic", "static")
PRECISION_KEY = "msync.precision"


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """How a float32 step model becomes int8.

    Attributes:
        method: "dynamic" (activation ranges per call) or "static" (QDQ, calibrated activation ranges).
        per_channel: one weight scale per output channel (else one per tensor).
        reduce_range: 7-bit weights (for CPUs without VNNI, where u8 x s8 products can saturate).
        scopes: module scopes whose matrix products are quantized.
        data_dir: dataset with manifest.tsv + clips/ (static calibration speech).
        calibration_split: split the calibration speech comes from ("train": never the evaluated speakers).
        calibration_seconds: seconds of speech per calibration stream; calibration_streams: streams (batch).
        calibrate_method: "MinMax" or "Percentile" (static only).
    """

    method: str = "dynamic"
    per_channel: bool = True
    reduce_range: bool = False
    scopes: tuple[str, ...] = LEARNED_SCOPES
    data_dir: str = str(Path(__file__).resolve().parents[2] / "shared" / "data")
    calibration_split: str = "train"
    calibration_seconds: float = 30.0
    calibration_streams: int = 8
    calibrate_method: str = "MinMax"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.calibrate_method not in ("MinMax", "Percentile"):
            raise ValueError(f"calibrate_method must be MinMax or Percentile, got {self.calibrate_method!r}")
        if self.calibration_streams < 1 or self.calibration_seconds <= 0:
            raise ValueError("calibration_streams must be >= 1 and calibration_seconds > 0")


def quantizable_nodes(model, scopes: tuple[str, ...] = LEARNED_SCOPES) -> list[str]:
    """Names of the MatMul/Gemm nodes inside `scopes` whose weight (input 1) is a constant initializer.
    The front end's products are left out unless `scopes` names FRONT_END_SCOPE itself (for measuring it).

    Raises:
        ValueError: no node carries scope metadata (not a dynamo export of `Generator.step`).
    """
    if not any(node_scopes(n) for n in model.graph.node):
        raise ValueError(
            "no node carries torch.onnx name-scope metadata; export the model with export.onnx_export (dynamo) first"
        )
    inits = {t.name for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        sc = node_scopes(n)
        if (
            n.op_type in QUANTIZED_OPS
            and len(n.input) > 1
            and n.input[1] in inits
            and any(s.startswith(scopes) for s in sc)
            and (FRONT_END_SCOPE in scopes or not any(s.startswith(FRONT_END_SCOPE) for s in sc))
        ):
            out.append(n.name)
    return out


def _weight_rank(model, node_name: str) -> int:
    """Rank of the constant weight (input 1) of a node (0 when it has none)."""
    inits = {t.name: len(t.dims) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.name == node_name and len(n.input) > 1:
            return inits.get(n.input[1], 0)
    return 0


# ------------------------------------------------------------------------------------------ calibration


def split_speech(
    data_dir: str | Path, split: str, seconds: float, streams: int, sample_rate_hz: int = 16000
) -> np.ndarray:
    """`streams` rows of `seconds` of real speech from one speaker-disjoint split (clips concatenated in
    manifest order, cut into rows): (streams, samples) float32.

    Raises:
        FileNotFoundError: no dataset, or the split has too little audio.
    """
    from stream_engine.audio_io import load_audio
    from training.data.manifest import read_manifest
    from training.data.splits import assign_splits

    records = assign_splits(read_manifest(data_dir))[split]
    need = int(round(seconds * sample_rate_hz)) * streams
    pieces, total = [], 0
    for r in records:
        if total >= need:
            break
        a = load_audio(r.audio_path, sample_rate_hz)
        pieces.append(a)
        total += a.size
    if total < need:
        raise FileNotFoundError(
            f"{data_dir}: the {split} split has {total / sample_rate_hz:.0f} s of audio, "
            f"{need / sample_rate_hz:.0f} s needed"
        )
    return np.concatenate(pieces)[:need].astype(np.float32).reshape(streams, -1)


class StepCalibrationReader:
    """onnxruntime `CalibrationDataReader`: the inputs the float32 step sees when it runs autoregressively
    over real speech (audio and every state, batch = rows of `speech`), one feed dict per step.

    Args:
        model: the float32 .onnx step model; speech: (B, samples) float32 PCM at its sample rate.
    """

    def __init__(self, model: str | Path, speech: np.ndarray, seed: int = 0) -> None:
        from stream_engine.runtime.onnxrt import OnnxStepRunner

        runner = OnnxStepRunner(model)
        c = runner.contract
        steps = speech.shape[1] // c.samples_per_frame
        state = runner.initial_state(speech.shape[0], rng=np.random.default_rng(seed))
        feeds = []
        for k in range(steps):
            audio = np.ascontiguousarray(speech[:, k * c.samples_per_frame : (k + 1) * c.samples_per_frame])
            feeds.append({c.audio_input.name: audio, **state})
            _, state = runner.step(audio, state)
        self._feeds = iter(feeds)
        self.steps = steps

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self) -> None:  # part of the reader protocol in recent onnxruntime versions; one pass suffices
        pass


# ------------------------------------------------------------------------------------------- quantize


def mark_precision(model, precision: str, details: dict) -> None:
    """Write `msync.precision`, `msync.quantization` and `msync.source_model` into `model`'s metadata and
    suffix `msync.model_version` with the precision's family ("+int8")."""
    props = {p.key: p.value for p in model.metadata_props}
    source = props.get("msync.model_version", "")
    props["msync.source_model"] = source
    family = precision.split("-")[0]
    if source and f"+{family}" not in source:
        props["msync.model_version"] = f"{source}+{family}"
    props[PRECISION_KEY] = precision
    props["msync.quantization"] = json.dumps(details, sort_keys=True)
    del model.metadata_props[:]
    for k, v in props.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v


def quantize_step(src: str | Path, dst: str | Path, cfg: QuantizeConfig = QuantizeConfig()) -> dict:
    """Write an int8 variant of the float32 step model `src` to `dst`; returns what was done (JSON-able).

    Raises:
        ValueError: `src` is not a dynamo-exported msync step, or is already quantized.
        FileNotFoundError: static calibration without the dataset.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    from stream_engine.contract import read_contract

    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    contract = read_contract(src)
    if contract.extra.get(PRECISION_KEY, "fp32") != "fp32":
        raise ValueError(f"{src} is already a {contract.extra[PRECISION_KEY]} model; quantize the float32 one")
    model = onnx.load(str(src))
    nodes = quantizable_nodes(model, cfg.scopes)
    details: dict = {
        "method": cfg.method,
        "per_channel": cfg.per_channel,
        "reduce_range": cfg.reduce_range,
        "op_types": list(QUANTIZED_OPS),
        "scopes": list(cfg.scopes),
        "nodes": len(nodes),
        "weights": "int8",
        "onnxruntime": ort.__version__,
        "kept_float32": "MFCC front end, landmark state arithmetic, depthwise taps, I/O and states",
    }
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td) / "q.onnx"
        if cfg.method == "dynamic":
            # onnxruntime's dynamic quantizer first rewrites a Gemm into MatMul + Add named "<gemm>_MatMul".
            gemms = {n.name for n in model.graph.node if n.op_type == "Gemm"}
            nodes = nodes + [f"{n}_MatMul" for n in nodes if n in gemms]
            # Per-channel scales for 2-D weights only: onnxruntime's MatMulInteger kernels take a scalar or
            # per-column zero point, not one per (group, column) of a 3-D weight (the branches' grouped
            # products), so those get one scale per tensor in a first pass.
            grouped = [n for n in nodes if _weight_rank(model, n) == 3]
            tmp0 = Path(td) / "q0.onnx"
            quantize_dynamic(
                src,
                tmp0,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=False,
                reduce_range=cfg.reduce_range,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=grouped,
                extra_options={"MatMulConstBOnly": True},
            )
            quantize_dynamic(
                tmp0,
                tmp,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=cfg.per_channel,
                reduce_range=cfg.reduce_range,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=[n for n in nodes if n not in grouped],
                extra_options={"MatMulConstBOnly": True},
            )
            details["per_tensor_nodes"] = len(grouped)
            details["activations"] = "uint8, range per call"
        else:
            speech = split_speech(
                cfg.data_dir,
                cfg.calibration_split,
                cfg.calibration_seconds,
                cfg.calibration_streams,
                contract.sample_rate_hz,
            )
            reader = StepCalibrationReader(src, speech)
            quantize_static(
                src,
                tmp,
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=cfg.per_channel,
                reduce_range=cfg.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=nodes,
                calibrate_method=getattr(CalibrationMethod, cfg.calibrate_method),
                extra_options={"MatMulConstBOnly": True},
            )
            details["activations"] = f"uint8, calibrated ({cfg.calibrate_method})"
            details["calibration"] = {
                "split": cfg.calibration_split,
                "streams": cfg.calibration_streams,
                "seconds_per_stream": cfg.calibration_seconds,
                "steps": reader.steps,
                "data": "real speech, float32 model run autoregressively",
            }
        q = onnx.load(str(tmp))
    mark_precision(q, f"int8-{cfg.method}", details)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(q, str(dst))
    read_contract(dst)  # the contract survived (raises ContractError otherwise)
    details.update(
        src=str(src),
        dst=str(dst),
        seconds=time.perf_counter() - t0,
        size_mb={"fp32": src.stat().st_size / 1e6, "int8": dst.stat().st_size / 1e6},
    )
    return details


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = QuantizeConfig()
    p.add_argument("--model", required=True, help="the float32 .onnx step model")
    p.add_argument("--out", required=True, help="the int8 .onnx to write")
    p.add_argument("--method", choices=METHODS, default=d.method)
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default per channel)")
    p.add_argument("--reduce-range", action="store_true", help="7-bit weights (CPUs without VNNI)")
    p.add_argument("--data", default=d.data_dir, help="dataset directory for static calibration")
    p.add_argument("--calibration-seconds", type=float, default=d.calibration_seconds)
    p.add_argument("--calibration-streams", type=int, default=d.calibration_streams)
    p.add_argument("--calibrate-method", choices=("MinMax", "Percentile"), default=d.calibrate_method)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = QuantizeConfig(
            method=args.method,
            per_channel=not args.per_tensor,
            reduce_range=args.reduce_range,
            data_dir=args.data,
            calibration_seconds=args.calibration_seconds,
            calibration_streams=args.calibration_streams,
            calibrate_method=args.calibrate_method,
        )
        r = quantize_step(args.model, args.out, cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"msync quantize: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {r['dst']} (int8-{r['method']}, {r['nodes']} matrix products quantized, "
        f"{r['size_mb']['fp32']:.1f} -> {r['size_mb']['int8']:.1f} MB, {r['seconds']:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
