"""Export to ONNX: one self-contained file with its contract, onnxruntime == PyTorch over a minute of speech,
chunking and batching invariance, refusal of mismatching models, the FP16 variant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from export_helpers import PARITY_VELOCITY_SCALE, exported_model, step_parity  # noqa: E402

from stream_engine.contract import REQUIRED_KEYS, ContractError, StepContract  # noqa: E402
from stream_engine.framing import AudioFramer, split_chunks  # noqa: E402
from stream_engine.runtime.base import run_steps, stack_states, unstack_state  # noqa: E402
from stream_engine.runtime.onnxrt import OnnxStepRunner  # noqa: E402


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    return exported_model(tmp_path_factory)


@pytest.fixture(scope="session")
def ort_runner(exported):
    return OnnxStepRunner(exported[0])


def test_export_writes_one_checked_file_with_the_contract(exported):
    """One .onnx (no external data), checker passes, opset 18, no STFT/DFT, the contract in metadata_props."""
    path, g, contract = exported
    assert [p.name for p in path.parent.iterdir() if p.name.startswith("model")] == ["model.onnx"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert {(o.domain, o.version) for o in model.opset_import} >= {("", 18)}
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"STFT", "DFT"} and "MatMul" in ops
    # The DFT products read only the Hann window's rows (the others are zero), folded about the window's middle
    # (200 paired rows) and again by the parity of the row (two groups of 100 rows give bins k and 256 - k), and
    # the four frames of a step are sliced, not gathered element-wise from the audio (the costliest node of the
    # step before).
    dft = {i.name.rsplit(".", 1)[-1]: tuple(i.dims) for i in model.graph.initializer if ".mfcc.dft_" in i.name}
    assert dft == {"dft_cos": (2, 100, 129), "dft_sin": (2, 100, 129)}, dft
    # Every matrix product's weight is an initializer (int8 quantization needs that), and ONNX Runtime fuses
    # every exact GELU into one node.
    initializers = {i.name for i in model.graph.initializer}
    products = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert all(n.input[1] in initializers for n in products), [n.name for n in products]
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    shapes.update(
        {n.output[0]: tuple(a.t.dims) for n in model.graph.node if n.op_type == "Constant" for a in n.attribute}
    )
    gathers = [shapes.get(n.input[1]) for n in model.graph.node if n.op_type == "Gather"]
    assert all(s is not None and len(s) <= 1 for s in gathers), gathers  # no (frames, samples) index table
    meta = {p.key: p.value for p in model.metadata_props}
    for key in REQUIRED_KEYS:
        assert isinstance(meta[f"msync.{key}"], str)
    assert meta["msync.contract_version"] == "1" and meta["msync.landmark_layout"] == "ibug68"
    assert contract.lookahead_frames == g.cfg.lookahead_frames == 2
    assert contract.model_version.startswith("run/checkpoint@step123")
    assert json.loads(contract.training_data)["note"].startswith("test fixture")
    assert contract.generator_config["velocity_scale"] == PARITY_VELOCITY_SCALE
    assert contract.frontend["samples_per_landmark_frame"] == 640
    states = {s.name: (s.shape, s.init, s.next_name) for s in contract.states}
    assert states == {
        "audio_carry": (("B", 352), "zeros", "audio_carry_next"),
        "conv_cache": (("B", g.cfg.conv_cache_frames, g.cfg.audio_channels), "zeros", "conv_cache_next"),
        "h": (("B", 256), "uniform(0,1)", "h_next"),
        "c": (("B", 256), "uniform(0,1)", "c_next"),
        "prev_landmarks": (("B", 68, 2), "reference_face", "prev_landmarks_next"),
        "frames_seen": (("B", 1), "zeros", "frames_seen_next"),
        "reference_landmarks": (("B", 68, 2), "reference_face", "reference_landmarks_next"),
    }
    from export.reference_face import neutral_face

    np.testing.assert_allclose(contract.reference_face_array, neutral_face() + 0.01, atol=1e-6)  # checkpoint's face
    for v in list(model.graph.input) + list(model.graph.output):  # batch is dynamic everywhere
        assert v.type.tensor_type.shape.dim[0].dim_param == "B"


def test_info_command(exported, capsys):
    from stream_engine.cli import main

    path = exported[0]
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "look-ahead        2 frames" in text and "conv_cache" in text and "uniform(0,1)" in text
    assert main(["info", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in data["states"]] == list(exported[2].state_names)
    assert main(["info", str(path.parent / "missing.onnx")]) == 1
    assert "no such model file" in capsys.readouterr().err
    ckpt = Path(__file__).resolve().parents[1] / "training" / "weights" / "generator.json"
    assert main(["info", str(ckpt)]) == 1
    assert "is a training checkpoint, not an exported step: msync export --checkpoint" in capsys.readouterr().err


def _with_metadata(src, dst, **changes):
    model = onnx.load(str(src))
    meta = {p.key: p.value for p in model.metadata_props}
    for k, v in changes.items():
        key = f"msync.{k}"
        if v is None:
            meta.pop(key, None)
        else:
            meta[key] = v
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(dst))
    return dst


def test_runner_refuses_models_that_do_not_match_their_contract(exported, tmp_path):
    path, _, contract = exported
    states = json.loads(contract.to_metadata()["msync.states"])
    states[1]["shape"] = ["B", 48, 64]  # conv_cache channel count the graph does not have
    with pytest.raises(ContractError, match="conv_cache"):
        OnnxStepRunner(_with_metadata(path, tmp_path / "a.onnx", states=json.dumps(states)))
    with pytest.raises(ContractError, match="version"):
        OnnxStepRunner(_with_metadata(path, tmp_path / "b.onnx", contract_version="2"))
    with pytest.raises(ContractError, match="no msync contract"):
        OnnxStepRunner(_with_metadata(path, tmp_path / "c.onnx", contract_version=None))
    renamed = json.loads(contract.to_metadata()["msync.states"])
    renamed[2]["name"] = "hidden"
    with pytest.raises(ContractError, match="hidden"):
        OnnxStepRunner(_with_metadata(path, tmp_path / "d.onnx", states=json.dumps(renamed)))


@pytest.mark.slow
def test_onnxruntime_matches_pytorch_over_a_minute_of_speech(exported, ort_runner, shared_data):
    """1,500 autoregressive steps (60 s of real speech), each backend feeding back its own state: max landmark
    difference <= 1e-4, with the rollout staying bounded."""
    from export.torch_runner import TorchStepRunner
    from export.verify import compare_runners, load_speech

    _, g, contract = exported
    audio = load_speech(60.0, shared_data)
    ref = TorchStepRunner(g, contract)
    report = compare_runners(ref, ort_runner, audio, ref.initial_state(1, rng=np.random.default_rng(0)))
    print("parity", json.dumps(report.summary()))
    assert report.steps == 1500
    assert report.max_abs_diff <= 1e-4
    assert -10.0 < report.landmark_range[0] and report.landmark_range[1] < 10.0
    assert report.state_max["h"] <= 1e-4 and report.state_max["audio_carry"] == 0.0


@pytest.fixture(scope="module")
def speech_8s(shared_data):
    from export.verify import load_speech

    return load_speech(8.0, shared_data)


def test_any_chunking_gives_the_same_frames(ort_runner, speech_8s):
    """10, 20, 37, 40 ms and random chunkings, cut into steps by the AudioFramer, give identical frames."""
    state0 = ort_runner.initial_state(1, rng=np.random.default_rng(3))
    direct, _ = run_steps(ort_runner, speech_8s[None], state0)
    rng = np.random.default_rng(0)
    chunkings = {
        "10ms": [160],
        "20ms": [320],
        "37ms": [592],
        "40ms": [640],
        "random": list(rng.integers(1, 2000, size=64)),
    }
    for name, sizes in chunkings.items():
        framer = AudioFramer(ort_runner.contract.samples_per_frame)
        state, frames = state0, []
        for chunk in split_chunks(speech_8s, sizes):
            for step in framer.push(chunk):
                lm, state = ort_runner.step(step[None], state)
                frames.append(lm[0])
        assert np.array_equal(np.stack(frames), direct[0]), name


def test_a_batch_equals_single_streams(ort_runner, speech_8s):
    """B streams in one call give each stream's single-stream frames (different audio, faces and noise)."""
    c = ort_runner.contract
    steps = 50
    n = steps * c.samples_per_frame
    audio = np.stack([speech_8s[:n], speech_8s[n : 2 * n] * 0.5, speech_8s[2 * n : 3 * n]])
    singles = [
        ort_runner.initial_state(1, reference_face=c.reference_face_array + 0.02 * i, rng=np.random.default_rng(i))
        for i in range(3)
    ]
    batched, final = run_steps(ort_runner, audio, stack_states(singles))
    for i in range(3):
        alone, final_i = run_steps(ort_runner, audio[i : i + 1], singles[i])
        assert np.max(np.abs(batched[i] - alone[0])) <= 1e-5
        for k, v in unstack_state(final, 3)[i].items():
            assert np.max(np.abs(v - final_i[k])) <= 1e-4, k
    # the warm-up: the first L frames are the reference face, then the face moves
    L = c.lookahead_frames
    np.testing.assert_array_equal(batched[1, :L], np.broadcast_to(singles[1]["prev_landmarks"][0], (L, 68, 2)))
    assert not np.array_equal(batched[1, L], singles[1]["prev_landmarks"][0])


def test_step_is_pure(ort_runner):
    state = ort_runner.initial_state(2, rng=np.random.default_rng(0))
    before = {k: v.copy() for k, v in state.items()}
    audio = np.random.default_rng(1).uniform(-0.3, 0.3, (2, 640)).astype(np.float32)
    lm1, s1 = ort_runner.step(audio, state)
    lm2, _ = ort_runner.step(audio, state)
    assert all(np.array_equal(before[k], state[k]) for k in state)
    assert np.array_equal(lm1, lm2) and s1["frames_seen"][0, 0] == 1.0
    with pytest.raises(KeyError, match="lacks"):
        ort_runner.step(audio, {k: v for k, v in state.items() if k != "h"})
    with pytest.raises(ValueError, match="for a batch of 1"):
        ort_runner.step(audio[:1], state)


def test_torch_runner_honours_the_same_contract(exported):
    from export.torch_runner import TorchStepRunner

    _, g, contract = exported
    r = TorchStepRunner(g, contract)
    s = r.initial_state(2, rng=np.random.default_rng(0))
    lm, nxt = r.step(np.zeros((2, 640), np.float32), s)
    assert lm.shape == (2, 68, 2) and set(nxt) == set(contract.state_names)


def test_random_init_and_checkpoint_loading(tmp_path):
    from export.cli import random_generator
    from training.checkpoint import save_module
    from training.models.generator import load_generator

    g = random_generator(seed=1, overrides=["velocity_scale=0.001", 'init_noise="zeros"'], lookahead=0)
    assert g.cfg.lookahead_frames == 0 and g.cfg.velocity_scale == 0.001 and g.cfg.init_noise == "zeros"
    from export.step_module import state_specs

    assert {s.name: s.init for s in state_specs(g)}["h"] == "zeros"
    with pytest.raises(ValueError, match="unknown setting"):
        random_generator(overrides=["no_such_field=1"])
    save_module(tmp_path / "syn", g, {"kind": "syncer_pyramid"})
    with pytest.raises(ValueError, match="expected 'generator'"):
        load_generator(tmp_path / "syn")
    save_module(tmp_path / "gen", g, {"kind": "generator", "generator": g.cfg})
    loaded, meta = load_generator(tmp_path / "gen.json")
    assert loaded.cfg == g.cfg and meta["kind"] == "generator"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), g.state_dict().values()))


def test_export_of_a_bad_checkpoint_is_one_line_not_a_traceback(tmp_path, capsys):
    """Missing, truncated (weights or JSON) and wrong-kind checkpoints: `msync export` says which and exits 1."""
    from export.cli import random_generator
    from stream_engine.cli import main
    from training.checkpoint import save_module

    g = random_generator(seed=1, overrides=["velocity_scale=0.001"])
    save_module(tmp_path / "syn", g, {"kind": "syncer_pyramid"})
    save_module(tmp_path / "cut", g, {"kind": "generator", "generator": g.cfg})
    weights = tmp_path / "cut.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    save_module(tmp_path / "badjson", g, {"kind": "generator", "generator": g.cfg})
    (tmp_path / "badjson.json").write_text('{"kind": "gen')
    for ckpt, needle in (
        (tmp_path / "nope", "not found"),
        (tmp_path / "cut", "cut"),
        (tmp_path / "badjson", "badjson"),
        (tmp_path / "syn", "expected 'generator'"),
    ):
        assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x.onnx")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("msync export: cannot load checkpoint") and needle in err and "Traceback" not in err


def test_fp16_variant_keeps_the_contract_and_stays_close(exported, ort_runner, speech_8s, tmp_path):
    """The mixed-precision graph (for TensorRT FP16) keeps float32 I/O and the front end in FP32; onnxruntime
    runs it within 2e-3 of FP32 over 100 steps."""
    from export.precision import to_mixed_fp16

    model = to_mixed_fp16(onnx.load(str(exported[0])))
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "fp16.onnx"
    onnx.save(model, str(path))
    half = OnnxStepRunner(path)
    assert half.contract == ort_runner.contract
    fp16_inits = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert sum(int(np.prod(t.dims)) for t in fp16_inits) > 0.9 * exported[1].num_parameters()
    n = 100 * 640
    state = ort_runner.initial_state(1, rng=np.random.default_rng(0))
    a, _ = run_steps(ort_runner, speech_8s[:n], state)
    b, _ = run_steps(half, speech_8s[:n], state)
    assert np.max(np.abs(a - b)) <= 2e-3


def test_contract_built_from_the_generator_matches_the_file(exported):
    from export.step_module import build_contract

    _, g, contract = exported
    rebuilt = build_contract(g, contract.reference_face_array, contract.model_version, contract.training_data)
    assert StepContract.from_metadata(rebuilt.to_metadata()) == contract


def test_silence_history_exports_as_constants_and_starts_every_runtime_from_silence(tmp_path, speech_8s):
    """A generator with `silence_history` exports with the silence folded into constants (a handful of nodes
    more than the zero history, not a front end and a block stack per call); onnxruntime matches PyTorch from a
    fresh stream, and a fresh stream's zero `conv_cache` is what 2 s of digital silence leaves in it."""
    import onnx

    from export.cli import random_generator
    from stream_engine.cli import main

    nodes = {}
    for flag in ("false", "true"):
        out = tmp_path / f"silence_{flag}.onnx"
        rc = main(
            ["export", "--random-init", "--seed", "3", "--set", "velocity_scale=0.0002", "--set"]
            + [f"silence_history={flag}", "--out", str(out)]
        )
        assert rc == 0
        nodes[flag] = len(onnx.load(str(out)).graph.node)
    assert nodes["true"] <= nodes["false"] + 12
    runner = OnnxStepRunner(tmp_path / "silence_true.onnx")
    assert runner.contract.generator_config["silence_history"] is True
    g = random_generator(seed=3, overrides=["velocity_scale=0.0002", "silence_history=true"])
    step_parity(runner, g, np.asarray(speech_8s[: 640 * 30], np.float32))
    state = runner.initial_state(1, rng=np.random.default_rng(0))
    for _ in range(50):
        _, state = runner.step(np.zeros((1, 640), np.float32), state)
    assert np.abs(state["conv_cache"]).max() < 1e-4


def test_export_flag_silence_history_turns_it_on_for_a_checkpoint(exported, tmp_path):
    """`msync export --checkpoint CKPT --silence-history`: the same weights with the silence history, said in the
    contract's generator config and the derived model version; a fresh stream's zero conv_cache is a silent past."""
    from stream_engine.cli import main

    onnx_path, _, contract = exported
    out = tmp_path / "sil.onnx"
    ckpt = onnx_path.parent / "run" / "checkpoint"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--silence-history"]) == 0
    runner = OnnxStepRunner(out)
    assert runner.contract.generator_config["silence_history"] is True
    assert contract.generator_config.get("silence_history") is False
    assert "+silence-history" in runner.contract.model_version
    state = runner.initial_state(1, rng=np.random.default_rng(0))
    for _ in range(50):
        _, state = runner.step(np.zeros((1, 640), np.float32), state)
    assert np.abs(state["conv_cache"]).max() < 1e-4


def test_no_silence_history_gives_the_zero_history_back(tmp_path):
    """The shipped checkpoint carries the silence history (0.3.2); `--no-silence-history` exports the same weights
    with 0.3.1's zero history, said in the contract and the derived version: after 50 silent steps the stored
    caches hold what silence gives the blocks (far from 0), where the silence-history export holds ~0."""
    from pathlib import Path

    from stream_engine.cli import main
    from training.checkpoint import load_meta

    ckpt = Path(__file__).resolve().parents[1] / "training" / "weights" / "generator"
    if not ckpt.with_suffix(".json").is_file():
        pytest.skip("training/weights/generator is not in this checkout")
    assert load_meta(ckpt)["generator"]["silence_history"] is True
    caches = {}
    for flag in ("--no-silence-history", "--silence-history"):
        out = tmp_path / f"{flag}.onnx"
        assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), flag]) == 0
        runner = OnnxStepRunner(out)
        assert runner.contract.generator_config["silence_history"] is (flag == "--silence-history")
        assert ("+zero-history" in runner.contract.model_version) is (flag == "--no-silence-history")
        state = runner.initial_state(1, rng=np.random.default_rng(0))
        for _ in range(50):
            _, state = runner.step(np.zeros((1, 640), np.float32), state)
        caches[flag] = float(np.abs(state["conv_cache"]).max())
    assert caches["--silence-history"] < 1e-3 < 1.0 < caches["--no-silence-history"]


def test_gelu_is_reordered_so_onnxruntime_fuses_it_and_keeps_its_value():
    """The exporter's x * (0.5 * (1 + erf(x / sqrt 2))) becomes (x * (1 + erf(x / sqrt 2))) * 0.5: the same values,
    and ONNX Runtime's optimizer then leaves no Erf (one Gelu node each); a look-alike with another constant is
    left alone."""
    import math
    import tempfile
    from pathlib import Path

    import onnxruntime as ort
    from onnx import TensorProto, helper

    from export.onnx_export import reorder_gelu

    def gelu_graph(half: float):
        nodes = [
            helper.make_node("Div", ["x", "sqrt2"], ["d"]),
            helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["a"]),
            helper.make_node("Mul", ["half", "a"], ["h"]),
            helper.make_node("Mul", ["x", "h"], ["y"]),
        ]
        consts = [
            helper.make_tensor("sqrt2", TensorProto.FLOAT, [], [2**0.5]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("half", TensorProto.FLOAT, [], [half]),
        ]
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", 8]) for n in ("x", "y")]
        graph = helper.make_graph(nodes, "g", [io[0]], [io[1]], initializer=consts)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    x = np.linspace(-4, 4, 32, dtype=np.float32).reshape(4, 8)

    def run(model, tmp):
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp)
        session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0], {n.op_type for n in onnx.load(str(tmp)).graph.node}

    with tempfile.TemporaryDirectory() as td:
        before, ops_before = run(gelu_graph(0.5), Path(td) / "a.onnx")
        model = gelu_graph(0.5)
        assert reorder_gelu(model.graph) == 1
        onnx.checker.check_model(model, full_check=True)
        after, ops_after = run(model, Path(td) / "b.onnx")
        assert "Erf" in ops_before and "Erf" not in ops_after and "Gelu" in ops_after
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
        exact = x * 0.5 * (1 + np.vectorize(math.erf)(x / 2**0.5))
        np.testing.assert_allclose(after, exact, rtol=1e-5, atol=1e-6)
        other = gelu_graph(0.25)
        assert reorder_gelu(other.graph) == 0


def test_the_shipped_graph_fuses_every_gelu(exported):
    """No Erf is left once ONNX Runtime has optimized the exported step (each GELU runs as one node)."""
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    path = exported[0]
    with tempfile.TemporaryDirectory() as td:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(Path(td) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(str(Path(td) / "opt.onnx")).graph.node]
    erf_before = sum(n.op_type == "Erf" for n in onnx.load(str(path)).graph.node)
    assert erf_before > 0 and ops.count("Erf") == 0 and ops.count("Gelu") == erf_before
