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
                dynamic_shapes=({0: batch}, tuple({0: batch} for _ in inputs[1:])),  # (audio, *states)
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
    fold_constant_weights(model.graph)
    reorder_gelu(model.graph)
    del model.metadata_props[:]
    for key, value in contract.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "msync"
    model.doc_string = (
        "msync step model: audio (B, samples_per_frame) + state -> landmarks (B, 68, 2) + "
        "state_next. Contract in metadata_props (msync.*)."
    )
    onnx.checker.check_model(model, full_check=True)


def _scalar(graph, name: str) -> float | None:
    """The value of a scalar initializer or Constant output `name`, else None."""
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            value = numpy_helper.to_array(init)
            return float(value) if value.size == 1 else None
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute:
            value = numpy_helper.to_array(node.attribute[0].t)
            return float(value) if value.size == 1 else None
    return None


#: Operators `fold_constant_weights` evaluates when every input is a constant (weight re-layouts).
FOLDABLE_OPS = frozenset({"Slice", "Transpose", "Gather", "GatherND", "Reshape", "Unsqueeze", "Squeeze", "Concat"})


def fold_constant_weights(graph) -> int:
    """Replace re-layout nodes of constants (a weight's slice, a column permutation) by initializers (in place).

    The step takes some weights in another layout than they are trained in (`Branches.forward` slices the input
    weight into its shared and per-branch rows and permutes the velocity's columns). The exporter leaves those
    as nodes over the initializers: ONNX Runtime folds them when a session starts, but int8 quantization
    (`export.quantize`) only quantizes products whose weight is an initializer. Evaluated with onnx's reference
    implementation; initializers left unused are dropped. Returns the number of nodes folded.
    """
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    constants = {init.name: init for init in graph.initializer}
    folded = []
    for node in graph.node:
        if node.op_type not in FOLDABLE_OPS or not all(name in constants for name in node.input if name):
            continue
        inputs = [constants[name] for name in node.input if name]
        single = helper.make_model(
            helper.make_graph(
                [node],
                "fold",
                [],
                [helper.make_tensor_value_info(out, onnx.TensorProto.UNDEFINED, None) for out in node.output],
                initializer=inputs,
            ),
            opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)],
        )
        values = ReferenceEvaluator(single).run(None, {})
        for out, value in zip(node.output, values):
            constants[out] = numpy_helper.from_array(value, out)
        folded.append(node)
    if not folded:
        return 0
    names = {out for node in folded for out in node.output}
    for node in folded:
        graph.node.remove(node)
    graph.initializer.extend(constants[name] for name in sorted(names))
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    _subgraph_inputs(graph, used)
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len(folded)


def _subgraph_inputs(graph, used: set[str]) -> None:
    """Add to `used` every name read inside the graph's subgraphs (If/Loop bodies)."""
    for node in graph.node:
        for attr in node.attribute:
            for sub in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
                used.update(name for n in sub.node for name in n.input)
                _subgraph_inputs(sub, used)


def reorder_gelu(graph) -> int:
    """Reorder the exact GELU's last two products so ONNX Runtime fuses the pattern into one Gelu node.

    The dynamo exporter writes gelu(x) = x * (0.5 * (1 + erf(x / sqrt 2))):
    Div(x, sqrt 2) -> Erf -> Add(1) -> Mul(0.5, .) -> Mul(x, .). ONNX Runtime's GeluFusion matches
    (x * (1 + erf(x / sqrt 2))) * 0.5 instead, and otherwise runs five element-wise nodes per GELU (about 7 % of a
    batched int8 step). The same value up to float rounding (one product reassociated); the graph stays standard
    opset-18 operators, so TensorRT and other runtimes parse it as before. Returns the number of GELUs reordered.
    """
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name: str, op: str):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    count = 0
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or abs((_scalar(graph, div.input[1]) or 0.0) - 2**0.5) > 1e-6:
            continue
        x = div.input[0]
        add = only_consumer(erf.output[0], "Add")
        if add is None:
            continue
        half = only_consumer(add.output[0], "Mul")
        if half is None or len(half.input) != 2:
            continue
        half_name = half.input[0] if half.input[1] == add.output[0] else half.input[1]
        if _scalar(graph, half_name) != 0.5:
            continue
        outer = only_consumer(half.output[0], "Mul")
        if outer is None or x not in outer.input:
            continue
        half.input[:] = [x, add.output[0]]  # x * (1 + erf(x / sqrt 2))
        outer.input[:] = [half.output[0], half_name]  # ... * 0.5
        count += 1
    return count


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
