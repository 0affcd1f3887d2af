"""Low-precision step variants: export.quantize, the shipped int8 model, variant resolution, ONNX eval rows."""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import pytest

pytest.importorskip("onnx")

from stream_engine.contract import read_contract  # noqa: E402
from stream_engine.variants import SHIPPED  # noqa: E402

FP32, INT8 = SHIPPED["fp32"], SHIPPED["int8"]
# Measured on 3 x 60 s of test-split speech (benchmarks/results/precision_variants.md): max 4.7e-3, mean 3.4e-4.
# The tolerance is the CPU-default criterion of stream_engine/variants.py, with the mean held tighter.
TOL_MAX, TOL_MEAN = 1e-2, 1e-3

needs_shipped = pytest.mark.skipif(
    not (FP32.is_file() and INT8.is_file()),
    reason="the shipped default.onnx / default_int8.onnx are not in this checkout",
)


def rollout(path, audio: np.ndarray, seed: int = 0) -> np.ndarray:
    """Landmarks of one autoregressive stream over `audio` (T steps of 640 samples): (T, 68, 2)."""
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    r = OnnxStepRunner(path)
    state = r.initial_state(1, rng=np.random.default_rng(seed))
    out = []
    for k in range(audio.size // 640):
        y, state = r.step(audio[None, k * 640 : (k + 1) * 640], state)
        out.append(y[0])
    return np.stack(out)


# ------------------------------------------------------------------------------------- the shipped variant


@needs_shipped
def test_shipped_int8_contract_matches_fp32():
    """Same contract as its float32 source except the version suffix and the precision keys."""
    import onnx

    from stream_engine.variants import precision_of

    a, b = read_contract(FP32), read_contract(INT8)
    assert precision_of(a) == "fp32" and precision_of(b) == "int8-dynamic"
    assert b.model_version == a.model_version + "+int8"
    assert b.extra["msync.source_model"] == a.model_version
    for field in (
        "sample_rate_hz",
        "samples_per_frame",
        "fps",
        "lookahead_frames",
        "num_landmarks",
        "landmark_dims",
        "audio_input",
        "landmarks_output",
        "states",
        "reference_face",
        "generator_config",
        "frontend",
        "training_data",
    ):
        assert getattr(a, field) == getattr(b, field), field
    m = onnx.load(str(INT8))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("MatMulInteger") >= 18
    # The MFCC front end's DFT / mel / DCT products stay float32 MatMuls.
    assert {"node_matmul", "node_matmul_1", "node_matmul_2"} <= {n.name for n in m.graph.node if n.op_type == "MatMul"}


@needs_shipped
def test_shipped_int8_stays_within_tolerance_of_fp32_on_real_speech(speech):
    """10 s of a real clip, autoregressive: int8 differs from fp32 (it is quantized) but within the tolerance."""
    audio = speech[: 250 * 640].astype(np.float32)
    a, b = rollout(FP32, audio), rollout(INT8, audio)
    d = np.abs(a - b)
    assert np.all(np.isfinite(b))
    assert d.max() > 1e-6  # really a different computation
    assert d.max() < TOL_MAX and d.mean() < TOL_MEAN, (d.max(), d.mean())


# ------------------------------------------------------------------------------------------- quantize


@needs_shipped
def test_quantizable_nodes_leave_out_the_front_end():
    import onnx

    from export.quantize import FRONT_END_SCOPE, LEARNED_SCOPES, node_scopes, quantizable_nodes

    m = onnx.load(str(FP32))
    names = quantizable_nodes(m)
    by_name = {n.name: n for n in m.graph.node}
    assert len(names) == 24  # the branches' input product is two: the shared [h | emb] rows and the audio rows
    for n in names:
        sc = node_scopes(by_name[n])
        assert by_name[n].op_type in ("MatMul", "Gemm")
        assert not any(s.startswith(FRONT_END_SCOPE) for s in sc) and any(s.startswith(LEARNED_SCOPES) for s in sc)
    assert len(quantizable_nodes(m, LEARNED_SCOPES + (FRONT_END_SCOPE,))) == 24 + 4  # folded DFT (2), mel, DCT


@needs_shipped
def test_quantize_refuses_an_already_quantized_model(tmp_path):
    from export.quantize import quantize_step

    with pytest.raises(ValueError, match="already a int8-dynamic model"):
        quantize_step(INT8, tmp_path / "again.onnx")


def test_quantize_config_rejects_bad_values():
    from export.quantize import QuantizeConfig

    with pytest.raises(ValueError, match="method"):
        QuantizeConfig(method="fp4")
    with pytest.raises(ValueError, match="calibrate_method"):
        QuantizeConfig(calibrate_method="Entropyish")


@pytest.mark.slow
def test_quantize_dynamic_and_static_on_an_export(tmp_path, tmp_path_factory, shared_data):
    """Both methods on a fresh export: contract kept, precision declared, the step runs and stays close."""
    from export_helpers import exported_model

    from export.quantize import QuantizeConfig, quantize_step
    from stream_engine.variants import precision_of

    model, _, contract = exported_model(tmp_path_factory)
    audio = (0.1 * np.random.default_rng(0).standard_normal(50 * 640)).astype(np.float32)
    ref = rollout(model, audio)
    for method in ("dynamic", "static"):
        out = tmp_path / f"{method}.onnx"
        r = quantize_step(
            model,
            out,
            QuantizeConfig(method=method, data_dir=str(shared_data), calibration_seconds=2.0, calibration_streams=2),
        )
        c = read_contract(out)
        assert precision_of(c) == f"int8-{method}" and r["nodes"] == 24
        assert c.states == contract.states and c.model_version.endswith("+int8")
        if method == "static":
            assert r["calibration"]["split"] == "train" and r["calibration"]["steps"] == 50
        y = rollout(out, audio)
        assert np.all(np.isfinite(y)) and np.abs(y - ref).max() < 5e-2


def test_export_cli_int8_hook(tmp_path, tmp_path_factory):
    """`msync export --int8` writes <name>_int8.onnx beside --out (hook run on an existing export)."""
    pytest.importorskip("torch")
    from export_helpers import exported_model

    from export.cli import _int8_variant

    model, _, _ = exported_model(tmp_path_factory)
    out = tmp_path / "m.onnx"
    shutil.copy(model, out)
    assert _int8_variant(argparse.Namespace(out=str(out), int8="dynamic", verify_data=str(tmp_path))) == 0
    assert read_contract(tmp_path / "m_int8.onnx").extra["msync.precision"] == "int8-dynamic"
    # static calibration needs the dataset: a clear error, not a traceback
    assert _int8_variant(argparse.Namespace(out=str(out), int8="static", verify_data=str(tmp_path / "none"))) == 1


# ---------------------------------------------------------------------------------------- variants


@needs_shipped
def test_variant_resolution():
    from stream_engine.variants import CPU_DEFAULT, VariantError, resolve

    assert resolve(FP32, "auto", "") == SHIPPED[CPU_DEFAULT]
    assert resolve(FP32, "auto", "cuda") == FP32
    assert resolve(FP32, "fp32") == FP32 and resolve(FP32, "int8", "cpu") == INT8
    assert resolve("/elsewhere/m.onnx", "auto").name == "m.onnx"  # other files are loaded as given
    with pytest.raises(VariantError, match="bfloat16"):
        resolve(FP32, "bf16")
    with pytest.raises(VariantError, match="precision must be"):
        resolve(FP32, "int4")


@needs_shipped
def test_stream_refuses_a_model_of_another_precision(tmp_path):
    from stream_engine.config import ModelConfig
    from stream_engine.stream import StreamError, load_model
    from stream_engine.variants import precision_of

    other = tmp_path / "mine.onnx"
    shutil.copy(FP32, other)
    with pytest.raises(StreamError, match="the model is fp32, not int8"):
        load_model(ModelConfig(path=str(other), precision="int8"))
    with pytest.raises(StreamError, match="no bf16 variant"):
        load_model(ModelConfig(precision="bf16"))
    assert precision_of(load_model(ModelConfig(precision="int8")).contract) == "int8-dynamic"
    assert precision_of(load_model(ModelConfig(precision="fp32")).contract) == "fp32"
    assert precision_of(load_model(ModelConfig(path=str(other))).contract) == "fp32"


def test_stream_cli_precision_flag():
    import argparse as ap

    from stream_engine.stream import add_arguments, config_from_args

    p = ap.ArgumentParser()
    add_arguments(p)
    assert config_from_args(p.parse_args(["--precision", "fp32"])).model.precision == "fp32"
    assert config_from_args(p.parse_args([])).model.precision == "auto"
    with pytest.raises(SystemExit):
        p.parse_args(["--precision", "int4"])


# ------------------------------------------------------------------------------------ eval rows


@needs_shipped
def test_onnx_eval_rows_reproduce_the_checkpoint_rows(speech):
    """`msync eval` on the fp32 export generates what the checkpoint row generates (same streams and noise)."""
    pytest.importorskip("torch")
    from pathlib import Path

    from training.eval.generation import generate, stream_rollout
    from training.eval.generation import load_model as load_generator

    ckpt = Path(__file__).resolve().parents[1] / "training" / "weights" / "generator"
    if not ckpt.with_suffix(".json").is_file():
        pytest.skip("training/weights/generator is not in this checkout")
    ck, ox = load_generator("ours", str(ckpt), "cpu"), load_generator("fp32", str(FP32), "cpu")
    assert (ck.warmup, ck.lookahead) == (ox.warmup, ox.lookahead)
    ref = np.broadcast_to(read_contract(FP32).reference_face_array, (3, 68, 2)).copy()
    pcm = speech[: 8 * 16000]
    a = generate(ck, [pcm] * 3, [0, 20, 90], ref, [1, 2, 3], 40, "cpu")
    b = generate(ox, [pcm] * 3, [0, 20, 90], ref, [1, 2, 3], 40, "cpu")
    assert np.abs(np.diff(a, axis=1)).mean() > 1e-4  # it moves
    assert np.abs(a - b).max() < 1e-5
    r1 = stream_rollout(ck, pcm, ref[0], 5, 60, "cpu")
    r2 = stream_rollout(ox, pcm, ref[0], 5, 60, "cpu")
    assert np.abs(r1 - r2).max() < 1e-5
    if ck.G.cfg.input_gate is None:
        return
    # With the input gate (model 0.3.6): sequences that start mid-stream, after a noise pause the gate closed, are
    # gated as the whole stream from its start would be (both rows carry the gate's state from frame 0).
    import torch

    rng = np.random.default_rng(3)
    noise = (rng.standard_normal(14 * 16000) * 10 ** (-48 / 20)).astype(np.float32)
    talk = np.asarray(speech[: 4 * 16000], np.float32)
    noisy = noise.copy()
    noisy[: talk.size] += talk
    noisy[10 * 16000 :] += talk[: 4 * 16000]
    gate = ck.G.input_gate()
    heard = gate.gate_pcm(torch.from_numpy(noisy)[None])[0].numpy()
    assert np.all(heard[6 * 16000 : 10 * 16000] == 0.0)  # the pause is gated
    starts = [150, 200, 255]  # in the gated pause, and at the speech after it
    a = generate(ck, [noisy] * 3, starts, ref, [1, 2, 3], 40, "cpu")
    b = generate(ox, [noisy] * 3, starts, ref, [1, 2, 3], 40, "cpu")
    assert np.abs(a - b).max() < 1e-5


# ------------------------------------------------------------------------------------ benchmark


def test_step_latency_times_precision_variants_in_one_run(tmp_path, tmp_path_factory):
    """--variants adds ort_cpu[NAME] rows in the same rounds and a ratio table against float32."""
    pytest.importorskip("matplotlib")
    import json

    from export_helpers import exported_model

    from benchmarks.step_latency import main
    from export.quantize import quantize_step

    model, _, _ = exported_model(tmp_path_factory)
    q = tmp_path / "q.onnx"
    quantize_step(model, q)
    out = tmp_path / "r"
    assert (
        main(
            [
                "--quick",
                "--model",
                str(model),
                "--out",
                str(out),
                "--backends",
                "ort_cpu",
                "--variants",
                f"int8={q}",
                "--no-profile",
            ]
        )
        == 0
    )
    report = json.loads((out / "step_latency.json").read_text())
    assert report["variants"] == [
        {"name": "int8", "backend": "ort_cpu[int8]", "path": str(q), "precision": "int8-dynamic"}
    ]
    assert set(report["results"]["ort_cpu[int8]"]) == {"1", "8"}
    md = (out / "step_latency.md").read_text()
    assert "## Precision variants" in md and "| int8 | int8-dynamic | 8 |" in md
    with pytest.raises(SystemExit, match="NAME=PATH"):
        main(["--quick", "--model", str(model), "--out", str(out), "--variants", "int8=/no/such.onnx"])


@needs_shipped
def test_precision_variants_report(tmp_path, shared_data):
    """The accuracy report on a short run: differences measured, eval columns read, verdict written."""
    import json
    from pathlib import Path

    from benchmarks.precision_variants import main

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    ev = results / "eval_precision_variants.json"
    args = ["--seconds", "4", "--streams", "2", "--no-ablations", "--data", str(shared_data), "--out", str(tmp_path)]
    if ev.is_file():
        args += ["--eval", str(ev)]
    assert main(args) == 0
    r = json.loads((tmp_path / "precision_variants.json").read_text())
    d = r["differences"]["int8"]
    assert d["frames"] == 100 and d["streams"] == 2 and 0 < d["max"] < TOL_MAX and d["finite"]
    assert 0 <= d["batch_coupling_max"] < TOL_MAX
    if ev.is_file():
        assert r["verdicts"]["int8"]["holds"] and len(r["eval"]["rows"]["int8"]["av_conf"]) == 4
    assert "## 4. Verdict" in (tmp_path / "precision_variants.md").read_text()


@needs_shipped
@pytest.mark.parametrize("precision, suffix", [(None, "+int8"), ("fp32", "")])
def test_msync_stream_runs_the_selected_variant(tmp_path, speech, capsys, precision, suffix):
    """`msync stream` on a real 3 s clip: the CPU default is the int8 variant, --precision fp32 the float32 one."""
    import soundfile as sf

    from stream_engine.cli import main

    wav = tmp_path / "clip.wav"
    sf.write(wav, speech[: 3 * 16000], 16000)
    args = ["stream", "--input", str(wav), "--fast", "--port", "0", "--no-vmc", "--quiet"]
    assert main(args + (["--precision", precision] if precision else [])) == 0
    err = capsys.readouterr().err
    version = read_contract(FP32).model_version + suffix
    assert f"model {version} (" in err
