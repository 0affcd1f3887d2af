"""The Triton model repository: config.pbtxt is a valid ModelConfig whose sequence-batcher states match the
contract and the ONNX file, and the served graph behaves like the step under Triton's state semantics."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from export_helpers import exported_model  # noqa: E402


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    return exported_model(tmp_path_factory)


@pytest.fixture(scope="module")
def repo(exported, tmp_path_factory):
    from export.triton import write_triton_repository

    out = tmp_path_factory.mktemp("triton")
    model_dir = write_triton_repository(exported[0], out, "msync", max_batch_size=32, max_sequence_idle_us=3_000_000)
    return model_dir


def _parse_config(model_dir):
    text_format = pytest.importorskip("google.protobuf.text_format")
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        pytest.skip(
            "tritonclient[grpc] is not installed (pip install 'msync[triton]'); it ships Triton's ModelConfig protobuf"
        )
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()), model_config_pb2


def test_config_is_a_valid_model_config_matching_the_contract_and_the_onnx(repo, exported):
    cfg, pb = _parse_config(repo)
    contract = exported[2]
    assert cfg.name == "msync" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 32
    assert [(i.name, list(i.dims), i.data_type) for i in cfg.input] == [
        ("audio", [640], pb.TYPE_FP32),
        ("reference_face", [68, 2], pb.TYPE_FP32),
    ]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("landmarks", [68, 2])]
    sb = cfg.sequence_batching
    assert sb.max_sequence_idle_microseconds == 3_000_000
    assert sb.WhichOneof("strategy_choice") == "oldest"
    [ctrl] = sb.control_input
    assert ctrl.name == "START"
    assert ctrl.control[0].kind == pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START
    assert list(ctrl.control[0].bool_false_true) == [False, True]
    # states: names and shapes from the contract, zero initial state
    states = {s.input_name: s for s in sb.state}
    assert list(states) == list(contract.state_names)
    for spec in contract.states:
        st = states[spec.name]
        assert st.output_name == spec.next_name and list(st.dims) == list(spec.shape[1:])
        assert st.data_type == pb.TYPE_FP32
        [init] = st.initial_state
        assert init.zero_data and list(init.dims) == list(spec.shape[1:])
    # ... and they match the served ONNX graph (batch dim excluded, as Triton's dims are)
    model = onnx.load(str(repo / "1" / "model.onnx"))

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    ins = {v.name: v for v in model.graph.input}
    outs = {v.name: v for v in model.graph.output}
    for st in sb.state:
        assert dims(ins[st.input_name]) == ["B", *st.dims] and dims(outs[st.output_name]) == ["B", *st.dims]
    for io in cfg.input:
        assert dims(ins[io.name]) == ["B", *io.dims]
    assert dims(ins["START"]) == ["B", 1] and ins["START"].type.tensor_type.elem_type == onnx.TensorProto.BOOL
    # Triton's onnxruntime backend counts model inputs = config inputs + controls + states
    assert len(model.graph.input) == len(cfg.input) + len(sb.control_input) + len(sb.state)
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["msync.lookahead_frames"] == "2" and params["msync.contract_version"] == "1"
    assert (repo / "README.md").read_text().count("Drop the first 2 outputs") == 1


def _triton_like_run(session, audio_steps, faces, contract, zero_state=True):
    """Drive the served graph as Triton does: zero state at START, then the outputs fed back."""
    b = faces.shape[0]
    state = {s.name: np.zeros(s.concrete_shape(b), np.float32) for s in contract.states}
    frames = []
    for k, audio in enumerate(audio_steps):
        feed = {"audio": audio, "reference_face": faces, "START": np.full((b, 1), k == 0), **state}
        out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        frames.append(out["landmarks"])
        state = {s.name: out[s.next_name] for s in contract.states}
    return np.stack(frames, axis=1), state


def test_served_graph_equals_the_step_under_triton_state_semantics(exported, tmp_path, speech):
    """With zero initial state and START on the first request, the wrapper gives the step's frames for the
    reference face sent with START (noise disabled here: h, c start at zeros on both sides)."""
    import onnxruntime as ort

    from export.triton import build_triton_model, reference_inputs
    from stream_engine.runtime.base import run_steps
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    path, _, contract = exported
    wrapped = build_triton_model(onnx.load(str(path)), contract, noise="zeros")
    wpath = tmp_path / "served.onnx"
    onnx.save(wrapped, str(wpath))
    sess = ort.InferenceSession(str(wpath), providers=["CPUExecutionProvider"])
    steps = 30
    audio = np.stack([speech[: 640 * steps], speech[640 * steps : 1280 * steps]])
    faces = np.stack([contract.reference_face_array, contract.reference_face_array + 0.05])
    got, _ = _triton_like_run(sess, [audio[:, 640 * k : 640 * (k + 1)] for k in range(steps)], faces, contract)
    runner = OnnxStepRunner(path)
    state = runner.initial_state(2, reference_face=faces)
    state["h"][...] = 0.0
    state["c"][...] = 0.0
    want, _ = run_steps(runner, audio, state)
    assert np.max(np.abs(got - want)) <= 1e-6
    assert reference_inputs(contract, 3).shape == (3, 68, 2)


def test_served_graph_draws_lstm_noise_on_start(repo, exported, speech):
    """The repository's graph draws h, c ~ U(0,1) on START, so two sequences with the same audio differ."""
    import onnxruntime as ort

    contract = exported[2]
    sess = ort.InferenceSession(str(repo / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    faces = contract.reference_face_array[None]
    steps = [speech[None, 640 * k : 640 * (k + 1)] for k in range(6)]
    a, sa = _triton_like_run(sess, steps, faces, contract)
    b, sb = _triton_like_run(sess, steps, faces, contract)
    L = contract.lookahead_frames
    np.testing.assert_array_equal(a[0, :L], np.broadcast_to(faces[0], (L, 68, 2)))  # warm-up = the face
    assert not np.array_equal(a[0, L:], b[0, L:])
    assert not np.array_equal(sa["h"], sb["h"])
