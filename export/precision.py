"""Mixed-precision (FP16) variant of an exported step graph, for strongly typed TensorRT builds.

TensorRT-RTX (and TensorRT's strongly typed mode) computes in the types the ONNX graph states, so an FP16
engine needs an FP16 graph. Not everything may go to FP16:

- the MFCC front end: the power spectrum exceeds FP16's 65504 and its 1e-10 log floor underflows;
- the landmark state arithmetic (x(t) = x(t-1) + v(t), the warm-up `Where`s): landmarks near 0.5 have an FP16
  step of 2.4e-4, so accumulating per-frame velocities in FP16 would quantise the motion;
- graph inputs and outputs: the contract's states stay float32.

So only the nodes inside the learned submodules (audio stem, ConvNeXt blocks, landmark encoder, LSTM cell,
branches) run in FP16, found through the `pkg.torch.onnx.name_scopes` metadata the dynamo exporter writes on
every node; Cast nodes are inserted at the boundaries.
"""

from __future__ import annotations

import ast
from typing import Any

import numpy as np

#: Module scopes (as in `Generator`'s attribute names) whose nodes run in FP16.
FP16_SCOPES = (
    "generator.audio_stem",
    "generator.blocks",
    "generator.landmark_encoder",
    "generator.lstm",
    "generator.branches",
)
_SCOPE_KEY = "pkg.torch.onnx.name_scopes"


def node_scopes(node: Any) -> list[str]:
    """The torch module scopes the dynamo exporter recorded on an ONNX node ([] when absent)."""
    for p in node.metadata_props:
        if p.key == _SCOPE_KEY:
            try:
                return [str(s) for s in ast.literal_eval(p.value)]
            except (ValueError, SyntaxError):
                return []
    return []


def half_nodes(model, scopes: tuple[str, ...] = FP16_SCOPES) -> set[str]:
    """Names of the nodes that belong to the FP16 scopes."""
    return {n.name for n in model.graph.node if any(s.startswith(scopes) for s in node_scopes(n))}


def to_mixed_fp16(model, scopes: tuple[str, ...] = FP16_SCOPES):
    """A copy of `model` whose nodes in `scopes` compute in float16; I/O and all other nodes stay float32.

    Raises:
        ValueError: no node carries the scope metadata (the graph was not made by our dynamo export), or the
            graph has subgraphs (not expected from `Generator.step`).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    half = half_nodes(m, scopes)
    if not half:
        raise ValueError(
            "no node carries torch.onnx name-scope metadata for the FP16 scopes; export the model "
            "with export.onnx_export (dynamo) first"
        )
    for n in g.node:
        if any(a.HasField("g") or len(a.graphs) for a in n.attribute):
            raise ValueError(f"node {n.name} has a subgraph; mixed precision does not handle control flow")

    elem = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    inits = {t.name: t for t in g.initializer}
    for t in g.initializer:
        elem[t.name] = t.data_type
    for n in g.node:  # Constant outputs are not always in value_info
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    elem[n.output[0]] = a.t.data_type
    is_float = lambda name: elem.get(name) == TensorProto.FLOAT  # noqa: E731

    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}

    new_nodes = []
    to_half: dict[str, str] = {}  # fp32 tensor -> its fp16 cast
    fp16_produced: set[str] = set()  # tensors FP16 nodes write (already half)

    def half_name(name: str) -> str:
        if name not in to_half:
            to_half[name] = f"{name}__fp16"
            if name in inits and all(c.name in half for c in consumers.get(name, [])):
                # an initializer only FP16 nodes read: store it as FP16 (no runtime cast)
                arr = numpy_helper.to_array(inits[name]).astype(np.float16)
                m.graph.initializer.append(numpy_helper.from_array(arr, to_half[name]))
            else:
                new_nodes.append(
                    helper.make_node("Cast", [name], [to_half[name]], to=TensorProto.FLOAT16, name=f"{name}__cast_fp16")
                )
        return to_half[name]

    for n in g.node:
        if n.name in half:
            for k, name in enumerate(n.input):
                if name and is_float(name) and name not in fp16_produced:
                    n.input[k] = half_name(name)
            for a in n.attribute:  # type-carrying attributes of FP16 nodes
                if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.FLOAT16
                if (
                    n.op_type in ("Constant", "ConstantOfShape")
                    and a.name == "value"
                    and a.t.data_type == TensorProto.FLOAT
                ):
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
            new_nodes.append(n)
            for k, name in enumerate(n.output):
                produces_float = is_float(name) or (
                    n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute)
                )
                if not name or not produces_float:
                    continue
                fp16_produced.add(name)
                outside = name in graph_outputs or any(c.name not in half for c in consumers.get(name, []))
                if outside:
                    h = f"{name}__fp16out"
                    n.output[k] = h
                    new_nodes.append(
                        helper.make_node("Cast", [h], [name], to=TensorProto.FLOAT, name=f"{name}__cast_fp32")
                    )
                    # FP16 consumers read the FP16 value directly
                    for c in consumers.get(name, []):
                        if c.name in half:
                            for j, i in enumerate(c.input):
                                if i == name:
                                    c.input[j] = h
                    fp16_produced.add(h)
        else:
            new_nodes.append(n)
    # Nodes were appended in an order where every Cast precedes its readers except when a cast of an
    # FP16 output feeds an earlier-listed node; a topological sort settles it.
    del g.node[:]
    g.node.extend(_toposort(new_nodes, {i.name for i in g.input} | {t.name for t in g.initializer}))
    # Initializers replaced by FP16 copies and no longer read are dropped.
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    return m


def _toposort(nodes, available: set[str]):
    available = set(available) | {""}
    pending = list(nodes)
    out = []
    while pending:
        progress: list[Any] = []
        rest: list[Any] = []
        for n in pending:
            (progress if all(i in available for i in n.input) else rest).append(n)
        if not progress:
            missing = sorted({i for n in rest for i in n.input if i not in available})[:5]
            raise ValueError(f"graph is not a DAG after the FP16 rewrite; unresolved inputs {missing}")
        for n in progress:
            out.append(n)
            available.update(n.output)
        pending = rest
    return out
