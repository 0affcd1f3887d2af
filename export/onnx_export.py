"""Export the generator's step to one self-contained ONNX file that carries its contract.

The graph is produced by the dynamo exporter (`torch.onnx.export(dynamo=True)`, opset 18) with the batch
dimension dynamic on every input and output, weights inside the file (`external_data=False`), the MFCC front
end inside the graph as matrix products (no STFT/DFT operator, which TensorRT cannot parse), and the contract
in `metadata_props`. `onnx.checker` (full check) must pass before the file is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from export.reference_face import resolve_reference_face
from export.step_module import StepModule, build_contract, example_inputs
from stream_engine.contract import BATCH, StepContract
from training.models.generator import Generator

DEFAULT_OPSET = 18
MAX_BATCH = 4096
#: Operators the graph must not contain: TensorRT's ONNX parser has no STFT/DFT (stack-facts §3).
FORBIDDEN_OPS = frozenset({"STFT", "DFT", "MelWeightMatrix"})
# Node metadata the dynamo exporter adds that only bloats a shipped file (and leaks local paths).
_DROP_NODE_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The exported graph is not what the contract promises."""


def export_onnx(
    generator: Generator,
    path: str | Path,
    *,
    model_version: str = "",
    training_data: str | dict = "",
    reference_face: np.ndarray | None = None,
    meta: dict | None = None,
    opset: int = DEFAULT_OPSET,
    extra_metadata: dict[str, str] | None = None,
    quiet: bool = True,
) -> StepContract:
    """Export `generator.step` to `path` (a single .onnx file) and return its contract.

    Args:
        generator: the model; exported in eval mode on CPU (a copy is not made; its mode is restored).
        model_version: free text written to `msync.model_version` (e.g. run name + step + git sha).
        training_data: summary of the training data (string or JSON-able dict).
        reference_face: (68, 2) default identity; None takes the checkpoint's (`meta`) or the shipped
            neutral face (see `export.reference_face`).
        meta: the checkpoint's JSON meta, if any (for the reference face).
        extra_metadata: more `msync.*` keys to write (exporter details...).
    Raises:
        ExportError: forbidden operators, I/O names or shapes that disagree with the contract.
    """
    import onnx

    path = Path(path)
    face, face_source = resolve_reference_face(reference_face, meta, generator)
    extra = {
        "msync.exporter": json.dumps(
            {
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "opset": opset,
                "dynamo": True,
                "reference_face_source": face_source,
            }
        ),
    }
    extra.update(extra_metadata or {})
    contract = build_contract(generator, face, model_version, training_data, extra)
    model = torch_to_onnx(generator, contract, opset=opset, quiet=quiet)
    finalize(model, contract)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, str(tmp), save_as_external_data=False)
    os.replace(tmp, path)
    return contract


def torch_to_onnx(generator: Generator, contract: StepContract, opset: int = DEFAULT_OPSET, quiet: bool = True):
    """Trace `generator.step` with the dynamo exporter; returns the ModelProto (no contract metadata yet)."""
    was_training = generator.training
    generator.eval()
    if generator.cfg.silence_history:
        generator.freeze_silence()  # the step's silence history as constants, not a subgraph per call
    module = StepModule(generator).eval()
    inputs = example_inputs(generator, batch=2)
    batch = torch.export.Dim(BATCH, min=1, max=MAX_BATCH)
    t0 = time.perf_counter()
    sink = io.StringIO()
    torch_onnx_log = logging.getLogger("torch.onnx")
    old_level = torch_onnx_log.level
    if quiet:  # "torchvision is not installed. Skipping torchvision::nms" and similar harmless notes
        torch_onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
            if quiet:
                warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                inputs,
                None,
                dynamo=True,
                opset_version=opset,
                external_data=False,
                input_names=list(contract.input_names),
                output_names=list(contract.output_names),
                dynamic_shapes=tuple({0: batch} for _ in inputs),
                verbose=False,
                optimize=True,
            )
    finally:
        generator.train(was_training)
        torch_onnx_log.setLevel(old_level)
    log.info("dynamo export took %.1f s", time.perf_counter() - t0)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model_proto


def finalize(model, contract: StepContract) -> None:
    """Write the contract into `model.metadata_props`, name the batch dim, check the graph (in place)."""
    import onnx

    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key not in _DROP_NODE_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    ops = {n.op_type for n in model.graph.node} | _subgraph_ops(model.graph)
    bad = sorted(ops & FORBIDDEN_OPS)
    if bad:
        raise ExportError(
            f"the exported graph contains {bad}: TensorRT cannot parse these; the front end must stay matrix products"
        )
    check_graph_io(model, contract)
    del model.metadata_props[:]
    for key, value in contract.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "msync"
    model.doc_string = (
        "msync step model: audio (B, samples_per_frame) + state -> landmarks (B, 68, 2) + "
        "state_next. Contract in metadata_props (msync.*)."
    )
    onnx.checker.check_model(model, full_check=True)


def _subgraph_ops(graph) -> set[str]:
    ops: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                ops |= {n.op_type for n in g.node} | _subgraph_ops(g)
    return ops


def graph_io(model) -> tuple[dict, dict]:
    """({input name: [dims]}, {output name: [dims]}) with symbolic dims as their names."""

    def dims(v):
        return [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]

    inits = {i.name for i in model.graph.initializer}
    ins = {v.name: dims(v) for v in model.graph.input if v.name not in inits}
    outs = {v.name: dims(v) for v in model.graph.output}
    return ins, outs


def check_graph_io(model, contract: StepContract) -> None:
    """Graph I/O names must be exactly the contract's, with the same shapes and a symbolic batch dim named
    "B" (renamed here if the exporter chose another symbol)."""
    for v in list(model.graph.input) + list(model.graph.output):
        d0 = v.type.tensor_type.shape.dim[0] if v.type.tensor_type.shape.dim else None
        if d0 is not None and d0.dim_param and d0.dim_param != BATCH:
            d0.dim_param = BATCH
    ins, outs = graph_io(model)
    want_in = {contract.audio_input.name: list(contract.audio_input.shape)}
    want_in.update({s.name: list(s.shape) for s in contract.states})
    want_out = {contract.landmarks_output.name: list(contract.landmarks_output.shape)}
    want_out.update({s.next_name: list(s.shape) for s in contract.states})
    problems = []
    for kind, got, want in (("inputs", ins, want_in), ("outputs", outs, want_out)):
        if list(got) != list(want):
            problems.append(f"{kind} {list(got)} != contract {list(want)}")
            continue
        for name, shape in want.items():
            if got[name] != shape:
                problems.append(f"{name}: graph shape {got[name]} != contract {shape}")
    if problems:
        raise ExportError("exported graph does not match the contract: " + "; ".join(problems))
