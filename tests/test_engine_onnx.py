"""The engine with a real exported ONNX step (random-init weights): contract, batching, chunking, end to end.

The model comes from $MSYNC_TEST_ONNX, else the shipped default model, else a fresh
`msync export --random-init` (needs the `export` extra: torch + onnx); skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stream_engine.config import DEFAULT_MODEL_PATH
from stream_engine.core import EngineCore

from fakes import speechlike

SPF = 640


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory) -> Path:
    env = os.environ.get("MSYNC_TEST_ONNX")
    if env:
        return Path(env)
    if DEFAULT_MODEL_PATH.is_file():
        return DEFAULT_MODEL_PATH
    try:
        import torch  # noqa: F401

        import training.models.generator  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"no ONNX model to test: set MSYNC_TEST_ONNX or install the export extra ({exc})")
    out = tmp_path_factory.mktemp("onnx") / "random_init.onnx"
    r = subprocess.run(
        [sys.executable, "-m", "stream_engine.cli", "export", "--random-init", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0 or not out.is_file():
        pytest.skip(f"`msync export --random-init` is not available here: {r.stderr.strip()[-300:]}")
    return out


@pytest.fixture(scope="session")
def runner(onnx_model):
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    return OnnxStepRunner(onnx_model)


def run_core(runner, audio: dict[str, np.ndarray], chunk: int, max_batch: int = 64) -> dict[str, np.ndarray]:
    core = EngineCore(runner, max_batch_streams=max_batch)
    for sid in audio:
        core.open_stream(sid, seed=sum(sid.encode()))  # the noise (initial LSTM state) is per stream
    frames: dict[str, list] = {sid: [] for sid in audio}
    n = max(a.size for a in audio.values())
    for start in range(0, n, chunk):
        for sid, a in audio.items():
            core.push_audio(sid, a[start : start + chunk], arrival_ns=0)
        for f in core.process():
            frames[f.stream_id].append(f)
    for sid in audio:
        core.flush(sid, 0)
    for f in core.process():
        frames[f.stream_id].append(f)
    return {sid: np.stack([f.landmarks for f in fs]) for sid, fs in frames.items()}


@pytest.mark.slow
def test_onnx_contract_drives_the_engine(runner):
    c = runner.contract
    assert c.samples_per_frame == SPF and c.sample_rate_hz == 16000
    audio = speechlike(SPF * 12 + 100)
    out = run_core(runner, {"a": audio}, chunk=SPF * 20)["a"]
    assert out.shape == (13, c.num_landmarks, c.landmark_dims)  # every received sample's frame, warm-up dropped
    assert np.all(np.isfinite(out))


@pytest.mark.slow
def test_onnx_output_does_not_depend_on_chunking_or_batching(runner):
    audio = {f"s{i}": speechlike(SPF * 15, seed=i) for i in range(3)}
    solo = {sid: run_core(runner, {sid: a}, chunk=160)[sid] for sid, a in audio.items()}
    batched = run_core(runner, audio, chunk=997)
    for sid in audio:
        np.testing.assert_allclose(batched[sid], solo[sid], atol=2e-4)


@pytest.mark.slow
def test_onnx_end_to_end_over_websocket(runner):
    from websockets.asyncio.client import connect

    from stream_engine.engine import Engine
    from stream_engine.outputs.serializers import decode_binary
    from stream_engine.outputs.websocket import ServerConfig, WebSocketServer

    async def main():
        engine = Engine(runner)
        server = WebSocketServer(engine, ServerConfig(port=0))
        await server.start()
        engine.add_sink(server)
        async with engine:
            async with connect(f"ws://127.0.0.1:{server.port}/audio") as ws:
                await ws.send(
                    json.dumps(
                        {
                            "type": "hello",
                            "sample_rate_hz": 22050,
                            "channels": 1,
                            "dtype": "int16",
                            "subscribe": "binary",
                        }
                    )
                )
                ready = json.loads(await ws.recv())
                audio = speechlike(22050, sample_rate_hz=22050)
                for i in range(0, audio.size, 441):
                    await ws.send((audio[i : i + 441] * 32767).astype("<i2").tobytes())
                await ws.send(json.dumps({"type": "end"}))
                frames = [decode_binary(m) async for m in ws if isinstance(m, bytes)]
        return ready, frames

    ready, frames = asyncio.run(asyncio.wait_for(main(), 60))
    assert ready["latency"]["lookahead_frames"] == runner.contract.lookahead_frames
    assert [f["index"] for f in frames] == list(range(25))
    assert all(np.all(np.isfinite(f["landmarks"])) for f in frames)


@pytest.mark.slow
def test_msync_stream_runs_the_onnx_model(onnx_model, tmp_path):
    import soundfile

    wav = tmp_path / "a.wav"
    soundfile.write(str(wav), speechlike(16000), 16000)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream_engine.cli",
            "stream",
            "--model",
            str(onnx_model),
            "--input",
            str(wav),
            "--fast",
            "--port",
            "0",
            "--no-vmc",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "frames 25" in r.stderr


def test_intra_op_pool_threads_do_not_spin_unless_asked():
    """Two intra-op threads that spin cost about twice the CPU of one (benchmarks/results/step_cores.md): the
    runner turns spinning off when it uses more than one thread, and leaves ONNX Runtime's default otherwise."""
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    two = OnnxStepRunner(DEFAULT_MODEL_PATH, threads=2).session.get_session_options()
    assert two.intra_op_num_threads == 2
    assert two.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = OnnxStepRunner(DEFAULT_MODEL_PATH, threads=2, spin=True).session.get_session_options()
    with pytest.raises(RuntimeError):  # not set: ONNX Runtime's default (spin)
        spinning.get_session_config_entry("session.intra_op.allow_spinning")
