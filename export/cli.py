"""`msync export`: generator checkpoint (or a random initialisation) -> ONNX step model [+ TensorRT engines,
Triton model repository, parity check].

    msync export --checkpoint runs/generator/checkpoint --out model.onnx
    msync export --random-init --seed 0 --set velocity_scale=0.0002 --lookahead 2 --out model.onnx
    msync export --checkpoint CKPT --out model.onnx --tensorrt --triton triton_repo --verify-steps 250

Top-level imports stay light: torch is imported when the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

HELP = (
    "Export the generator step to ONNX (+ TensorRT engines, Triton repository): `msync export "
    "--checkpoint CKPT --out model.onnx`."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint",
        help="generator checkpoint written by training.checkpoint.save_module "
        "(path with or without .json/.safetensors)",
    )
    src.add_argument(
        "--random-init",
        action="store_true",
        help="export an untrained generator (for tests and plumbing; its motion is meaningless)",
    )
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-init weights")
    p.add_argument("--config", help="GeneratorConfig JSON for --random-init")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="GeneratorConfig override for --random-init, e.g. --set velocity_scale=0.0002",
    )
    p.add_argument(
        "--lookahead",
        type=int,
        help="look-ahead L in frames (random init); with a checkpoint it must equal the trained value",
    )
    p.add_argument("--model-version", default="", help="text for msync.model_version (default: derived)")
    p.add_argument("--training-data", default="", help="text for msync.training_data (default: from checkpoint)")
    p.add_argument("--reference-face", help="JSON file with a 68x2 list (or {'landmarks': ...}): default identity")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument(
        "--verify-steps",
        type=int,
        default=0,
        help="after export, compare onnxruntime with PyTorch over N autoregressive steps (fail > --tol)",
    )
    p.add_argument(
        "--verify-data",
        default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
        help="dataset dir with clips/*.flac for --verify-steps (noise is used when missing)",
    )
    p.add_argument("--tol", type=float, default=1e-4, help="max landmark difference allowed by --verify-steps")
    p.add_argument(
        "--silence-history",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start every stream as if digital silence came before it (GeneratorConfig.silence_history; default: "
        "the checkpoint's own setting, on for the shipped 0.3.2 to 0.3.6): the raw mouth stays near rest when a stream starts "
        "inside noise; --no-silence-history gives the zero history of 0.3.1 and before, whose mouth opens for "
        "~0.5 s at a stream's start and fits a file cut mid-word better (model card); the same weights, only the "
        "step's initial history changes",
    )
    p.add_argument(
        "--input-gate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="put the input gate in the step (GeneratorConfig.input_gate, training.models.input_gate; default: the "
        "checkpoint's own setting, on for the shipped 0.3.6): where a stream's level stays near its own background "
        "for 0.48 s the network hears digital silence, so the raw mouth rests in steady noise of any spectrum; "
        "adds the state input_gate; --no-input-gate exports the step without it (0.3.5's function)",
    )
    p.add_argument(
        "--silent-face-rate",
        type=float,
        metavar="R",
        help="in digital silence (the input's, or the input gate's once closed), pull the upper face's own shape "
        "(brows, nose, eyes) back toward the reference face's at R more per frame (GeneratorConfig.silent_face_rate; "
        "default: the checkpoint's own, 0.05 for the shipped 0.3.7; 0 = off, 0.3.6's function): the network's face "
        "in silence spreads its eyes and lowers its brows",
    )
    p.add_argument(
        "--int8",
        nargs="?",
        const="dynamic",
        choices=["dynamic", "static"],
        metavar="METHOD",
        help="also write an int8 variant beside --out as <name>_int8.onnx (export.quantize; "
        "dynamic by default, static = QDQ calibrated on --verify-data speech)",
    )
    trt = p.add_argument_group("TensorRT")
    trt.add_argument("--tensorrt", action="store_true", help="also build serialized TensorRT engines")
    trt.add_argument("--trt-precision", default="fp32,fp16", help="comma list of fp32, fp16")
    trt.add_argument("--trt-batch", default="1,8,64", help="optimisation profile batch sizes min,opt,max")
    trt.add_argument("--trt-flavor", default="auto", choices=["auto", "tensorrt", "rtx"])
    trt.add_argument(
        "--trt-compute-capability", default="", help="TensorRT-RTX only: comma list such as SM89,SM120 (default SM89)"
    )
    trt.add_argument("--trt-dir", help="where engines go (default: beside --out)")
    tri = p.add_argument_group("Triton")
    tri.add_argument("--triton", metavar="DIR", help="also write a Triton model repository to DIR")
    tri.add_argument("--triton-model-name", default="msync")
    tri.add_argument("--triton-max-batch", type=int, default=64)
    tri.add_argument("--triton-idle-ms", type=int, default=5000, help="max sequence idle time before release")
    tri.add_argument("--triton-instance", choices=["auto", "gpu", "cpu"], default="auto")
    tri.add_argument(
        "--triton-trt-accelerator",
        action="store_true",
        help="ask the onnxruntime backend for its TensorRT execution provider (FP16)",
    )


def random_generator(
    seed: int = 0, config: str | None = None, overrides: list[str] | None = None, lookahead: int | None = None
):
    """An untrained generator from defaults + JSON + overrides (`stream_engine.dataclass_io.load_config`)."""
    import torch

    from stream_engine.dataclass_io import load_config
    from training.models.generator import Generator, GeneratorConfig

    overrides = list(overrides or [])
    if lookahead is not None:
        overrides.append(f"lookahead_frames={int(lookahead)}")
    cfg = load_config(GeneratorConfig, config, overrides)
    torch.manual_seed(seed)
    return Generator(cfg).eval()


def _git_sha() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except Exception:
        return ""


def _source(args: argparse.Namespace):
    """(generator, checkpoint meta or None, model version, training-data text), or an exit code for bad flags."""
    if args.checkpoint:
        if args.set or args.config:
            print(
                "msync export: --set/--config apply to --random-init only (a checkpoint has its config)",
                file=sys.stderr,
            )
            return 2
        from training.models.generator import load_generator

        try:
            generator, meta = load_generator(args.checkpoint)
        except Exception as exc:  # missing, truncated (JSON, safetensors), another kind of checkpoint
            print(
                f"msync export: cannot load checkpoint {args.checkpoint}: {type(exc).__name__}: {exc}", file=sys.stderr
            )
            return 1
        if args.lookahead is not None and args.lookahead != generator.cfg.lookahead_frames:
            print(
                f"msync export: the checkpoint was trained with look-ahead {generator.cfg.lookahead_frames}, "
                f"not {args.lookahead}",
                file=sys.stderr,
            )
            return 2
        if args.silence_history is not None and args.silence_history != generator.cfg.silence_history:
            generator.cfg = dataclasses.replace(generator.cfg, silence_history=args.silence_history)  # read per call
        gated_before = generator.cfg.input_gate is not None
        if args.input_gate is not None and args.input_gate != gated_before:
            from training.models.input_gate import InputGateConfig

            gate = InputGateConfig() if args.input_gate else None
            generator.cfg = dataclasses.replace(generator.cfg, input_gate=gate)  # read per call
        face_before = generator.cfg.silent_face_rate
        if args.silent_face_rate is not None:
            rate = args.silent_face_rate or None  # 0 = off
            try:
                generator.cfg = dataclasses.replace(generator.cfg, silent_face_rate=rate)  # read per call
            except ValueError as exc:
                print(f"msync export: {exc}", file=sys.stderr)
                return 2
        ckpt = Path(args.checkpoint).with_suffix("")
        version = (
            args.model_version
            or meta.get("model_version")
            or f"{ckpt.parent.name}/{ckpt.name}" + (f"@step{meta['step']}" if "step" in meta else "")
        )
        made_with = bool(meta.get("generator", {}).get("silence_history"))
        if not args.model_version and generator.cfg.silence_history and "silence" not in version:
            version += "+silence-history"  # the checkpoint's name may predate the option (a copy with it set)
        if not args.model_version and args.silence_history is False and made_with:
            version += "+zero-history"  # a checkpoint made with the silence history, exported without it
        if not args.model_version and args.input_gate is not None and args.input_gate != gated_before:
            version += "+input-gate" if args.input_gate else "+no-input-gate"
        if not args.model_version and generator.cfg.silent_face_rate != face_before:
            rate = generator.cfg.silent_face_rate
            version += f"+silent-face-{rate:g}" if rate else "+no-silent-face"
        training_data = args.training_data or meta.get("training_data") or "not recorded in the checkpoint"
    else:
        generator = random_generator(
            args.seed,
            args.config,
            args.set
            + (["silence_history=true"] if args.silence_history else [])
            + (["input_gate={}"] if args.input_gate else [])
            + ([f"silent_face_rate={args.silent_face_rate}"] if args.silent_face_rate else []),
            args.lookahead,
        )
        meta = None
        version = args.model_version or f"random-init-seed{args.seed}"
        training_data = args.training_data or "none (random initialisation, untrained)"
    return generator, meta, version, training_data


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from export.onnx_export import export_onnx

    torch.set_num_threads(1)
    if Path(args.out).suffix.lower() != ".onnx":
        print(
            f"msync export: note: {args.out} does not end in .onnx (runtimes and `msync info` expect it)",
            file=sys.stderr,
        )
    t0 = time.perf_counter()
    sha = _git_sha()
    source = _source(args)
    if isinstance(source, int):
        return source
    generator, meta, version, training_data = source
    if sha and "+git" not in version:
        version = f"{version}+git{sha}"
    face = None
    if args.reference_face:
        data = json.loads(Path(args.reference_face).read_text())
        face = np.asarray(data["landmarks"] if isinstance(data, dict) else data, dtype=np.float32)
    contract = export_onnx(
        generator,
        args.out,
        model_version=version,
        training_data=training_data,
        reference_face=face,
        meta=meta,
        opset=args.opset,
    )
    size_mb = Path(args.out).stat().st_size / 1e6
    print(
        f"wrote {args.out} ({size_mb:.1f} MB, {generator.num_parameters():,} parameters) in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    print(
        f"  contract v{contract.contract_version}: {contract.sample_rate_hz} Hz, {contract.samples_per_frame} "
        f"samples/step, {contract.fps:g} fps, look-ahead {contract.lookahead_frames} frames, model "
        f"{contract.model_version}"
    )
    print("  states: " + ", ".join(f"{s.name}{list(s.shape)}={s.init}" for s in contract.states))
    rc = 0
    if args.verify_steps > 0:
        rc = max(rc, _verify(generator, contract, args))
    if args.int8:
        rc = max(rc, _int8_variant(args))
    if args.tensorrt and _tensorrt(args):
        return 1
    if args.triton:
        _triton(args)
    return rc


def _int8_variant(args) -> int:
    """The --int8 hook: export.quantize on the file just written."""
    from export.quantize import QuantizeConfig, quantize_step

    out = Path(args.out).with_name(Path(args.out).stem + "_int8.onnx")
    try:
        r = quantize_step(args.out, out, QuantizeConfig(method=args.int8, data_dir=args.verify_data))
    except (ValueError, FileNotFoundError) as exc:
        print(f"msync export --int8: {exc}", file=sys.stderr)
        return 1
    print(f"  int8 variant {out} (int8-{r['method']}, {r['nodes']} matrix products, {r['size_mb']['int8']:.1f} MB)")
    return 0


def _tensorrt(args: argparse.Namespace) -> int:
    """Build the TensorRT engines beside the model; 1 when TensorRT is unavailable."""
    from export.tensorrt_build import TensorRTUnavailable, build_engines

    ccs = tuple(c.strip() for c in args.trt_compute_capability.split(",") if c.strip()) or None
    try:
        builds, log_path = build_engines(
            args.out, args.trt_dir, tuple(args.trt_precision.split(",")), args.trt_batch, args.trt_flavor, ccs
        )
    except TensorRTUnavailable as exc:
        print(f"msync export --tensorrt: {exc}", file=sys.stderr)
        return 1
    for b in builds:
        target = f" {','.join(b.compute_capabilities)}" if b.compute_capabilities else ""
        print(
            f"  engine {b.path} ({b.precision}, {b.size_bytes / 1e6:.1f} MB, {b.build_seconds:.1f} s, "
            f"{b.flavor} {b.tensorrt_version}{target}, batch {b.profile})"
        )
    print(f"  build log {log_path}")
    return 0


def _triton(args: argparse.Namespace) -> None:
    from export.triton import write_triton_repository

    kind = {"auto": None, "gpu": "KIND_GPU", "cpu": "KIND_CPU"}[args.triton_instance]
    model_dir = write_triton_repository(
        args.out,
        args.triton,
        args.triton_model_name,
        max_batch_size=args.triton_max_batch,
        max_sequence_idle_us=args.triton_idle_ms * 1000,
        instance_kind=kind,
        tensorrt_accelerator=args.triton_trt_accelerator,
    )
    print(f"  triton model repository {model_dir}")


def _verify(generator, contract, args) -> int:
    import numpy as np

    from export.torch_runner import TorchStepRunner
    from export.verify import compare_runners, load_speech
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    seconds = args.verify_steps * contract.frame_duration_s
    try:
        audio = load_speech(seconds, args.verify_data, sample_rate_hz=contract.sample_rate_hz)
        source = "speech"
    except FileNotFoundError:
        audio = np.random.default_rng(0).standard_normal(int(seconds * contract.sample_rate_hz)) * 0.1
        audio = audio.astype(np.float32)
        source = "noise"
    ref = TorchStepRunner(generator, contract)
    ort_runner = OnnxStepRunner(args.out)
    report = compare_runners(ref, ort_runner, audio, ref.initial_state(1, rng=np.random.default_rng(0)))
    ok = report.max_abs_diff <= args.tol
    print(
        f"  parity onnxruntime vs PyTorch over {report.steps} steps of {source}: max |diff| "
        f"{report.max_abs_diff:.3g} ({'ok' if ok else 'FAIL'}, tol {args.tol:g}); landmark range "
        f"[{report.landmark_range[0]:.3g}, {report.landmark_range[1]:.3g}]"
    )
    return 0 if ok else 1
