"""`msync info MODEL`: print the step contract of an exported model (ONNX file, or TensorRT engine + sidecar).

msync info model.onnx            human-readable
msync info model.onnx --json     the contract as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream_engine.contract import StepContract


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an .onnx step model, or a TensorRT .engine with its .engine.json sidecar")
    p.add_argument("--json", action="store_true", help="print the contract as JSON")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="do not verify the graph's inputs/outputs against the contract (ONNX only)",
    )


def load_contract(path: str | Path, check: bool = True) -> StepContract:
    from stream_engine.contract import ModelLoadError, StepContract, read_contract

    path = Path(path)
    sidecar = path.with_name(path.name + ".json")
    if path.suffix != ".onnx" and sidecar.is_file():
        try:
            return StepContract.from_metadata(json.loads(sidecar.read_text())["metadata"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{sidecar}: unreadable engine sidecar ({exc})") from exc
    return read_contract(path, check=check)


def format_contract(c: StepContract, path: str = "") -> str:
    lines = [
        f"msync step model {path}".rstrip(),
        f"  contract version  {c.contract_version}",
        f"  model version     {c.model_version}",
        f"  training data     {c.training_data}",
        f"  audio             {c.audio_input.name} {list(c.audio_input.shape)} {c.audio_input.dtype}: "
        f"{c.samples_per_frame} samples/step at {c.sample_rate_hz} Hz ({1000 * c.frame_duration_s:g} ms)",
        f"  landmarks         {c.landmarks_output.name} {list(c.landmarks_output.shape)} {c.landmarks_output.dtype}: "
        f"{c.num_landmarks} x {c.landmark_dims} ({c.landmark_layout}) at {c.fps:g} fps",
        f"  look-ahead        {c.lookahead_frames} frames ({1000 * c.lookahead_s:g} ms): drop the first "
        f"{c.lookahead_frames} outputs of a stream",
        f"  coordinates       {c.coordinates}",
        "  states:",
    ]
    wn = max((len(s.name) for s in c.states), default=0)  # columns as wide as the longest state name
    wx = max((len(s.next_name) for s in c.states), default=0)
    for s in c.states:
        lines.append(f"    {s.name:<{wn}} -> {s.next_name:<{wx}} {str(list(s.shape)):<18} {s.dtype}  init {s.init}")
    face = c.reference_face_array
    lines.append(
        f"  reference face    {c.num_landmarks} points, x [{face[:, 0].min():.3f}, {face[:, 0].max():.3f}], "
        f"y [{face[:, 1].min():.3f}, {face[:, 1].max():.3f}]"
    )
    if c.frontend:
        fe = c.frontend
        lines.append("  front end         " + ", ".join(f"{k}={fe[k]}" for k in sorted(fe)))
    if c.generator_config:
        lines.append("  generator         " + json.dumps(c.generator_config, sort_keys=True))
    for k, v in sorted(c.extra.items()):
        lines.append(f"  {k:<17} {v}")
    return "\n".join(lines)


def _looks_like_a_checkpoint(path: Path) -> bool:
    """A training checkpoint's stem, one of its two files, or a run folder holding one."""
    if path.is_dir():
        return any((path / f"{n}.json").is_file() for n in ("generator", "checkpoint"))
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    return stem.with_suffix(".json").is_file() and stem.with_suffix(".safetensors").is_file()


def run(args: argparse.Namespace) -> int:
    from stream_engine.contract import ModelLoadError

    try:
        contract = load_contract(args.model, check=not args.no_check)
    except ModelLoadError as exc:
        print(f"msync info: {exc}", file=sys.stderr)
        if _looks_like_a_checkpoint(Path(args.model)):
            print(
                f"msync info: {args.model} is a training checkpoint, not an exported step: "
                f"msync export --checkpoint {Path(args.model).with_suffix('')} --out model.onnx",
                file=sys.stderr,
            )
        return 1
    if args.json:
        print(json.dumps(contract.summary(), indent=1))
    else:
        print(format_contract(contract, str(args.model)))
    return 0
