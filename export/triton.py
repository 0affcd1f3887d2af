"""A Triton Inference Server model repository for the step: onnxruntime backend, sequence batcher, implicit state.

Triton keeps each sequence's state (`sequence_batching.state`, names and shapes from the contract) between
requests and resets it to zeros when a sequence starts. The contract wants more than zeros for some states
(the reference face; U(0,1) LSTM noise), so the repository serves a thin wrapper of the step graph with two
more inputs:

- `START` (bool, [1]): Triton's CONTROL_SEQUENCE_START control, true on a sequence's first request;
- `reference_face` (float32, [68, 2]): the identity. Read only on the START request, where it replaces the
  (zero) `prev_landmarks` state; ignored afterwards. Triton's onnxruntime backend does not allow optional
  inputs on batching models, so every request carries it: send the stream's face (or the contract default,
  in the config's `msync.reference_face` parameter) with the first request and anything, e.g. the same array,
  later.

States whose contract init is "uniform(0,1)" (the LSTM's h, c) are drawn in the graph on START
(`RandomUniformLike`), so every Triton stream gets its own noise as the contract says; states initialised to
"zeros" use Triton's zero initial state. Clients drop the first `msync.lookahead_frames` outputs of each
sequence, as every runtime does.

Layout written::

    DIR/<model_name>/config.pbtxt
    DIR/<model_name>/1/model.onnx      (the wrapper; its metadata is the step's contract plus msync.triton)
    DIR/<model_name>/README.md
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stream_engine.contract import StepContract

START_INPUT = "START"
REFERENCE_FACE_INPUT = "reference_face"
_DTYPES = {"float32": "TYPE_FP32"}


def build_triton_model(step_model, contract: StepContract, noise: str = "contract"):
    """Wrap the step ModelProto with START and reference_face inputs (see the module docstring).

    Args:
        noise: "contract" draws U(0,1) for "uniform(0,1)" states on START; "zeros" leaves them at Triton's zero
            initial state (deterministic; for tests).
    """
    import onnx
    from onnx import TensorProto, helper

    if noise not in ("contract", "zeros"):
        raise ValueError(f"noise must be 'contract' or 'zeros', got {noise!r}")
    m = onnx.ModelProto()
    m.CopyFrom(step_model)
    g = m.graph
    overrides: dict[str, str] = {}
    new_nodes = []
    start_shape = {}
    n_dims = {s.name: len(s.shape) for s in contract.states}

    def start_mask(rank: int) -> str:
        """START (B, 1) reshaped to broadcast over a tensor of `rank` dims."""
        if rank == 2:
            return START_INPUT
        if rank not in start_shape:
            shape_name = f"__start_shape_{rank}"
            new_nodes.append(
                helper.make_node(
                    "Constant",
                    [],
                    [shape_name],
                    name=f"{shape_name}_const",
                    value=helper.make_tensor(shape_name, TensorProto.INT64, [rank], [-1] + [1] * (rank - 1)),
                )
            )
            out = f"__start_mask_{rank}"
            new_nodes.append(helper.make_node("Reshape", [START_INPUT, shape_name], [out], name=f"{out}_reshape"))
            start_shape[rank] = out
        return start_shape[rank]

    for s in contract.states:
        eff = f"{s.name}__effective"
        if s.init == "reference_face":
            new_nodes.append(
                helper.make_node(
                    "Where",
                    [start_mask(n_dims[s.name]), REFERENCE_FACE_INPUT, s.name],
                    [eff],
                    name=f"{s.name}__start_select",
                )
            )
        elif s.init == "uniform(0,1)" and noise == "contract":
            rnd = f"{s.name}__noise"
            new_nodes.append(
                helper.make_node(
                    "RandomUniformLike",
                    [s.name],
                    [rnd],
                    name=f"{s.name}__draw",
                    low=0.0,
                    high=1.0,
                    dtype=TensorProto.FLOAT,
                )
            )
            new_nodes.append(
                helper.make_node(
                    "Where", [start_mask(n_dims[s.name]), rnd, s.name], [eff], name=f"{s.name}__start_select"
                )
            )
        else:
            continue
        overrides[s.name] = eff
    for node in g.node:
        for k, name in enumerate(node.input):
            if name in overrides:
                node.input[k] = overrides[name]
    for o in g.output:  # a state passed straight through would bypass the override
        if o.name in overrides:
            raise ValueError(f"state {o.name} is also a graph output; cannot wrap")
    existing = list(g.node)
    del g.node[:]
    g.node.extend(new_nodes + existing)
    batch = contract.audio_input.shape[0]
    g.input.append(helper.make_tensor_value_info(START_INPUT, TensorProto.BOOL, [batch, 1]))
    g.input.append(
        helper.make_tensor_value_info(
            REFERENCE_FACE_INPUT, TensorProto.FLOAT, [batch, contract.num_landmarks, contract.landmark_dims]
        )
    )
    info = {
        "start_input": START_INPUT,
        "reference_face_input": REFERENCE_FACE_INPUT,
        "noise": "drawn in graph on START" if noise == "contract" else "zeros",
        "states_set_on_start": sorted(overrides),
    }
    m.metadata_props.add(key="msync.triton", value=json.dumps(info))
    onnx.checker.check_model(m, full_check=True)
    return m


def _pb_string(text: str) -> str:
    """A protobuf text-format string literal (C escapes; non-ASCII as octal UTF-8 bytes)."""
    out = []
    for b in str(text).encode("utf-8"):
        ch = chr(b)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif 32 <= b < 127:
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _dims(shape) -> str:
    return "[ " + ", ".join(str(int(d)) for d in shape[1:]) + " ]"


def config_pbtxt(
    contract: StepContract,
    model_name: str = "msync",
    max_batch_size: int = 64,
    max_sequence_idle_us: int = 5_000_000,
    max_queue_delay_us: int = 2_000,
    max_candidate_sequences: int | None = None,
    instance_kind: str | None = None,
    instance_count: int = 1,
    tensorrt_accelerator: bool = False,
) -> str:
    """The model configuration (protobuf text format of Triton's ModelConfig)."""
    lines = [
        f'name: "{model_name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {int(max_batch_size)}",
        "input [",
        f'  {{ name: "{contract.audio_input.name}" data_type: {_DTYPES[contract.audio_input.dtype]} '
        f"dims: {_dims(contract.audio_input.shape)} }},",
        f'  {{ name: "{REFERENCE_FACE_INPUT}" data_type: TYPE_FP32 '
        f"dims: [ {contract.num_landmarks}, {contract.landmark_dims} ] }}",
        "]",
        "output [",
        f'  {{ name: "{contract.landmarks_output.name}" data_type: {_DTYPES[contract.landmarks_output.dtype]} '
        f"dims: {_dims(contract.landmarks_output.shape)} }}",
        "]",
        "sequence_batching {",
        f"  max_sequence_idle_microseconds: {int(max_sequence_idle_us)}",
        "  control_input [",
        f'    {{ name: "{START_INPUT}" control [ {{ kind: CONTROL_SEQUENCE_START '
        "bool_false_true: [ false, true ] } ] }",
        "  ]",
        "  state [",
    ]
    states = []
    for s in contract.states:
        states.append(
            f'    {{ input_name: "{s.name}" output_name: "{s.next_name}" data_type: {_DTYPES[s.dtype]} '
            f"dims: {_dims(s.shape)}\n"
            f'      initial_state: {{ name: "{s.name}_zeros" data_type: {_DTYPES[s.dtype]} dims: {_dims(s.shape)} '
            "zero_data: true } }"
        )
    lines.append(",\n".join(states))
    lines += [
        "  ]",
        "  oldest {",
        f"    max_candidate_sequences: {int(max_candidate_sequences or 4 * max_batch_size)}",
        f"    max_queue_delay_microseconds: {int(max_queue_delay_us)}",
        "  }",
        "}",
    ]
    if instance_kind:
        lines.append(f"instance_group [ {{ kind: {instance_kind} count: {int(instance_count)} }} ]")
    if tensorrt_accelerator:
        lines += [
            "optimization { execution_accelerators { gpu_execution_accelerator [",
            '  { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } }',
            "] } }",
        ]
    params = {k: v for k, v in contract.to_metadata().items()}
    params["msync.triton.start_input"] = START_INPUT
    params["msync.triton.reference_face_input"] = REFERENCE_FACE_INPUT
    for key in sorted(params):
        lines.append(f"parameters {{ key: {_pb_string(key)} value: {{ string_value: {_pb_string(params[key])} }} }}")
    return "\n".join(lines) + "\n"


_README = """# {name}: msync step model for Triton (onnxruntime backend, sequence batcher, implicit state)

Each client stream is a Triton *sequence* (its own correlation id). Per 40 ms send one request with

- `{audio}`: float32 [{spf}] — the next {spf} samples of 16 kHz mono PCM in [-1, 1];
- `{ref}`: float32 [{n}, {d}] — the stream's identity (fixed-crop landmarks in [0, 1]). Only the request that
  starts the sequence (`sequence_start=True`) uses it; later requests may send any values of that shape.
  The model's default face is the config parameter `msync.reference_face` (JSON).

and read `{lm}` float32 [{n}, {d}]. **Drop the first {L} outputs of every sequence** (look-ahead warm-up:
they are the reference face). Triton keeps all other state ({states}) between requests and resets it when a
sequence starts; the LSTM noise (h, c ~ U(0,1)) is drawn inside the graph on the start request.
Sequences idle for more than {idle_s} s are released. See `export/triton.py` in the msync repository.
"""


def write_triton_repository(
    onnx_path: str | Path, out_dir: str | Path, model_name: str = "msync", noise: str = "contract", **config_kwargs
) -> Path:
    """Write `out_dir/<model_name>/{config.pbtxt, 1/model.onnx, README.md}`; returns the model directory."""
    import onnx

    from stream_engine.contract import read_contract

    onnx_path = Path(onnx_path)
    contract = read_contract(onnx_path)
    model = build_triton_model(onnx.load(str(onnx_path)), contract, noise=noise)
    model_dir = Path(out_dir) / model_name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(model_dir / "1" / "model.onnx"), save_as_external_data=False)
    text = config_pbtxt(contract, model_name, **config_kwargs)
    (model_dir / "config.pbtxt").write_text(text)
    idle = config_kwargs.get("max_sequence_idle_us", 5_000_000) / 1e6
    (model_dir / "README.md").write_text(
        _README.format(
            name=model_name,
            audio=contract.audio_input.name,
            spf=contract.samples_per_frame,
            ref=REFERENCE_FACE_INPUT,
            n=contract.num_landmarks,
            d=contract.landmark_dims,
            lm=contract.landmarks_output.name,
            L=contract.lookahead_frames,
            states=", ".join(contract.state_names),
            idle_s=idle,
        )
    )
    return model_dir


def reference_inputs(contract: StepContract, batch: int, reference_face: np.ndarray | None = None) -> np.ndarray:
    """(B, N, D) float32 reference faces for a batch of Triton requests (the contract default if None)."""
    face = contract.reference_face_array if reference_face is None else np.asarray(reference_face, np.float32)
    return np.ascontiguousarray(
        np.broadcast_to(face, (batch, contract.num_landmarks, contract.landmark_dims)), dtype=np.float32
    )
