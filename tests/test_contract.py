"""The step contract (metadata round trip, validation, clear refusals), state helpers and audio framing.

No torch here: these are the runtime's own pieces.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from stream_engine.contract import (
    COORDINATES,
    ContractError,
    ModelLoadError,
    StateSpec,
    StepContract,
    TensorSpec,
    check_session,
    read_contract,
)
from stream_engine.framing import AudioFramer, split_chunks
from stream_engine.runtime.base import check_audio, initial_state, stack_states, unstack_state

FACE = np.stack([np.linspace(0.3, 0.7, 68), np.linspace(0.25, 0.75, 68)], axis=1).astype(np.float32)


def make_contract(**changes) -> StepContract:
    fields = dict(
        sample_rate_hz=16000,
        samples_per_frame=640,
        fps=25.0,
        lookahead_frames=2,
        num_landmarks=68,
        landmark_dims=2,
        landmark_layout="ibug68",
        coordinates=COORDINATES,
        audio_input=TensorSpec("audio", ("B", 640)),
        landmarks_output=TensorSpec("landmarks", ("B", 68, 2)),
        states=(
            StateSpec("audio_carry", "audio_carry_next", ("B", 352)),
            StateSpec("h", "h_next", ("B", 8), init="uniform(0,1)"),
            StateSpec("prev_landmarks", "prev_landmarks_next", ("B", 68, 2), init="reference_face"),
            StateSpec("frames_seen", "frames_seen_next", ("B", 1)),
        ),
        reference_face=tuple(tuple(float(v) for v in r) for r in FACE),
        model_version="t1",
        training_data="none",
        generator_config={"lookahead_frames": 2},
        frontend={"sample_rate_hz": 16000},
    )
    fields.update(changes)
    return StepContract(**fields)


def test_metadata_round_trip():
    """to_metadata writes only strings under msync.*, and from_metadata reads back an equal contract."""
    c = make_contract(extra={"msync.exporter": "{}"})
    meta = c.to_metadata()
    assert all(k.startswith("msync.") and isinstance(v, str) for k, v in meta.items())
    assert meta["msync.contract_version"] == "1" and meta["msync.fps"] == "25"
    assert json.loads(meta["msync.states"])[1] == {
        "name": "h",
        "next_name": "h_next",
        "shape": ["B", 8],
        "dtype": "float32",
        "init": "uniform(0,1)",
    }
    back = StepContract.from_metadata(meta)
    assert back == c
    assert back.extra == {"msync.exporter": "{}"}
    assert back.input_names == ("audio", "audio_carry", "h", "prev_landmarks", "frames_seen")
    assert back.output_names[0] == "landmarks" and back.output_names[-1] == "frames_seen_next"
    assert back.lookahead_s == pytest.approx(0.08)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.pop("msync.contract_version"), "no msync contract"),
        (lambda m: m.update({"msync.contract_version": "2"}), "unsupported msync contract version"),
        (lambda m: m.pop("msync.states"), "msync.states"),
        (lambda m: m.update({"msync.samples_per_frame": "abc"}), "must be an integer"),
        (lambda m: m.update({"msync.states": "[{"}), "not valid JSON"),
        (lambda m: m.update({"msync.samples_per_frame": "320"}), "inconsistent timing"),
        (lambda m: m.update({"msync.audio_input": json.dumps({"name": "audio", "shape": ["B", 320]})}), "audio input"),
        (lambda m: m.update({"msync.reference_face": "[[0.5, 0.5]]"}), "reference_face"),
        (lambda m: m.update({"msync.lookahead_frames": "3"}), "generator_config lookahead_frames"),
        (
            lambda m: m.update(
                {
                    "msync.states": json.dumps(
                        [{"name": "x", "next_name": "x_next", "shape": [4, "B"], "dtype": "float32", "init": "zeros"}]
                    )
                }
            ),
            "batch dim",
        ),
        (
            lambda m: m.update(
                {
                    "msync.states": json.dumps(
                        [
                            {
                                "name": "x",
                                "next_name": "x_next",
                                "shape": ["B", 4],
                                "dtype": "float32",
                                "init": "gaussian",
                            }
                        ]
                    )
                }
            ),
            "unknown init",
        ),
        (
            lambda m: m.update(
                {
                    "msync.states": json.dumps(
                        [
                            {
                                "name": "p",
                                "next_name": "p_next",
                                "shape": ["B", 4],
                                "dtype": "float32",
                                "init": "reference_face",
                            }
                        ]
                    )
                }
            ),
            "starts from the reference face",
        ),
        (
            lambda m: m.update(
                {
                    "msync.states": json.dumps(
                        [
                            {"name": "x", "next_name": "y", "shape": ["B", 1], "dtype": "float32", "init": "zeros"},
                            {"name": "x", "next_name": "z", "shape": ["B", 1], "dtype": "float32", "init": "zeros"},
                        ]
                    )
                }
            ),
            "duplicate",
        ),
        (lambda m: m.update({"msync.states": json.dumps([{"name": "x", "shape": ["B", 1]}])}), "lacks"),
    ],
)
def test_bad_metadata_is_refused_with_a_clear_error(mutate, message):
    meta = make_contract().to_metadata()
    mutate(meta)
    with pytest.raises(ContractError, match=message):
        StepContract.from_metadata(meta)


def test_initial_state_follows_the_contract():
    c = make_contract()
    s = initial_state(c, 3, rng=np.random.default_rng(1))
    assert {k: v.shape for k, v in s.items()} == {
        "audio_carry": (3, 352),
        "h": (3, 8),
        "prev_landmarks": (3, 68, 2),
        "frames_seen": (3, 1),
    }
    assert all(v.dtype == np.float32 for v in s.values())
    assert not s["audio_carry"].any() and not s["frames_seen"].any()
    assert 0.0 <= s["h"].min() and s["h"].max() < 1.0 and s["h"].std() > 0.1
    np.testing.assert_array_equal(s["h"], initial_state(c, 3, rng=np.random.default_rng(1))["h"])
    np.testing.assert_array_equal(s["prev_landmarks"], np.broadcast_to(FACE, (3, 68, 2)))
    own = FACE + 0.1
    s1 = initial_state(c, 2, reference_face=own)
    np.testing.assert_array_equal(s1["prev_landmarks"][1], own)
    s1["prev_landmarks"][0, 0, 0] = 9.0
    assert own[0, 0] != 9.0  # never aliases the caller's array
    per_stream = np.stack([FACE, FACE + 0.2])
    np.testing.assert_array_equal(initial_state(c, 2, reference_face=per_stream)["prev_landmarks"], per_stream)
    with pytest.raises(ValueError, match="reference_face must have shape"):
        initial_state(c, 3, reference_face=per_stream)
    with pytest.raises(ValueError, match="batch"):
        initial_state(c, 0)


def test_stack_and_unstack_round_trip():
    c = make_contract()
    singles = [initial_state(c, 1, rng=np.random.default_rng(i)) for i in range(4)]
    stacked = stack_states(singles)
    assert stacked["h"].shape == (4, 8)
    back = unstack_state(stacked, 4)
    for a, b in zip(singles, back):
        assert all(np.array_equal(a[k], b[k]) and b[k].shape[0] == 1 for k in a)
    back[0]["h"][...] = -1.0
    assert stacked["h"].min() >= 0.0  # unstacked states own their memory
    with pytest.raises(ValueError, match="batch"):
        unstack_state({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))})


def test_check_audio_messages():
    c = make_contract()
    assert check_audio(c, np.zeros((2, 640), np.float64)).dtype == np.float32
    with pytest.raises(ValueError, match="add a batch axis"):
        check_audio(c, np.zeros(640, np.float32))
    with pytest.raises(ValueError, match="AudioFramer"):
        check_audio(c, np.zeros((1, 320), np.float32))
    with pytest.raises(TypeError):
        check_audio(c, np.zeros((1, 640), np.int16))


def _arg(name, shape, type_="tensor(float)"):
    return SimpleNamespace(name=name, shape=shape, type=type_)


def _session(inputs, outputs):
    return SimpleNamespace(get_inputs=lambda: inputs, get_outputs=lambda: outputs)


def test_check_session_accepts_a_matching_graph_and_lists_every_mismatch():
    c = make_contract()
    ins = [
        _arg("audio", ["B", 640]),
        _arg("audio_carry", ["B", 352]),
        _arg("h", ["B", 8]),
        _arg("prev_landmarks", ["B", 68, 2]),
        _arg("frames_seen", ["B", 1]),
    ]
    outs = [
        _arg("landmarks", ["B", 68, 2]),
        _arg("audio_carry_next", ["B", 352]),
        _arg("h_next", [None, 8]),
        _arg("prev_landmarks_next", ["B", 68, 2]),
        _arg("frames_seen_next", [1, 1]),
    ]
    check_session(c, _session(ins, outs))
    bad_ins = [
        _arg("audio", ["B", 320]),
        _arg("audio_carry", ["B", 352], "tensor(double)"),
        _arg("h", ["B", 8]),
        _arg("prev_landmarks", ["B", 68, 2]),
        _arg("extra", ["B"]),
    ]
    with pytest.raises(ContractError) as err:
        check_session(c, _session(bad_ins, outs[:-1]))
    text = str(err.value)
    for fragment in (
        "lacks inputs ['frames_seen']",
        "['extra']",
        "'audio': graph shape",
        "tensor(double)",
        "lacks outputs ['frames_seen_next']",
    ):
        assert fragment in text


def test_missing_corrupt_or_contractless_files(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    with pytest.raises(ModelLoadError, match="no such model file"):
        read_contract(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelLoadError, match="cannot load"):
        read_contract(bad)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(plain))
    with pytest.raises(ContractError, match="no msync contract"):
        read_contract(plain)


def test_contract_is_frozen():
    c = make_contract()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lookahead_frames = 3  # type: ignore[misc]


# ------------------------------------------------------------------------------------------- framing


@pytest.mark.parametrize("sizes", [[160], [320], [592], [640], [1], [7, 1500, 33, 640, 2]])
def test_framer_steps_do_not_depend_on_chunking(sizes):
    """10, 20, 37, 40 ms, single samples and irregular chunks all give the same 640-sample steps."""
    x = np.random.default_rng(0).standard_normal(640 * 9 + 123).astype(np.float32)
    framer = AudioFramer(640)
    steps = [framer.push(ch) for ch in split_chunks(x, sizes)]
    got = np.concatenate(steps)
    np.testing.assert_array_equal(got, x[: 640 * 9].reshape(9, 640))
    assert framer.pending_samples == 123 and framer.samples_in == x.size and framer.steps_out == 9
    last = framer.flush()
    np.testing.assert_array_equal(last[0, :123], x[-123:])
    assert not last[0, 123:].any() and framer.steps_out == 10 and framer.pending_samples == 0
    assert framer.flush().shape == (0, 640)


def test_framer_rejects_bad_input_and_resets():
    f = AudioFramer(640)
    with pytest.raises(ValueError, match="mono"):
        f.push(np.zeros((2, 10), np.float32))
    with pytest.raises(TypeError):
        f.push(np.zeros(10, np.int16))
    assert f.push(np.zeros(0, np.float32)).shape == (0, 640)
    f.push(np.ones(100, np.float32))
    f.reset()
    assert f.pending_samples == 0 and f.samples_in == 0
    with pytest.raises(ValueError):
        AudioFramer(0)


def test_provider_selection():
    from stream_engine.runtime.onnxrt import resolve_providers

    assert resolve_providers(None) == ["CPUExecutionProvider"]
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ModelLoadError, match=r"msync\[gpu\]"):
            resolve_providers("cuda")
    else:
        assert resolve_providers(["cuda"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_runtime_modules_do_not_import_torch():
    """stream_engine stays light: the contract, runners, framing and `msync info` never pull in torch."""
    import subprocess
    import sys

    code = (
        "import sys, stream_engine.contract, stream_engine.framing, stream_engine.info, "
        "stream_engine.runtime.onnxrt, stream_engine.runtime.tensorrt; "
        "bad = [m for m in ('torch', 'training', 'export', 'onnx') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout
