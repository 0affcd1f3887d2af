"""The public Python API: Engine / Stream / Frame, with the fake runner and the shipped model."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

import stream_engine
from stream_engine.config import DEFAULT_MODEL_PATH
from stream_engine.core import AudioChunkError

from fakes import FakeRunner, speechlike

SPF = 640


def test_push_returns_frames_once_their_lookahead_arrived_and_flush_gives_the_tail():
    engine = stream_engine.Engine(FakeRunner(lookahead_frames=2))
    stream = engine.open_stream()
    audio = speechlike(16000 + 300, seed=2)  # 1.019 s -> ceil(25.47) = 26 frames
    frames = []
    for start in range(0, audio.size, 1000):
        frames += stream.push(audio[start : start + 1000])
    assert len(frames) == audio.size // SPF - 2
    frames += stream.flush()
    assert len(frames) == math.ceil(audio.size / SPF)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(f.landmarks.shape == (68, 2) and f.landmarks.dtype == np.float32 for f in frames)
    assert frames[3].pts_s == pytest.approx(0.12)
    assert set(frames[0].signals) >= {"mouth_open", "A", "blink", "yaw_deg"}
    # the default deriver: all 52 ARKit weights from the derived signals, in [0, 1]
    assert len(frames[0].blendshapes) == 52 and all(0.0 <= v <= 1.0 for v in frames[0].blendshapes.values())
    assert "jawOpen" in frames[0].blendshapes
    # the fake's mouth follows frame j's own RMS: frame 10's audio is samples [6400, 7040)
    expect = FakeRunner.expected_open_mm(audio[10 * SPF : 11 * SPF])
    ref = FakeRunner().contract.reference_face
    gap = float(frames[10].landmarks[57, 1] - np.asarray(ref)[57, 1])
    assert (gap > 0) == (expect > 0.5)


def test_any_rate_int16_and_multichannel_give_the_same_face_as_16k_mono():
    import soxr

    audio = speechlike(16000, seed=4)
    engine = stream_engine.Engine(FakeRunner(lookahead_frames=1))
    ref = engine.open_stream()
    base = ref.push(audio) + ref.flush()
    other = engine.open_stream()
    a48 = soxr.resample(audio, 16000, 48000)
    stereo = (np.stack([a48, a48], axis=1) * 32767).astype(np.int16)
    frames = []
    for start in range(0, stereo.shape[0], 4800):
        frames += other.push(stereo[start : start + 4800], sample_rate=48000)
    frames += other.flush()
    assert len(frames) == len(base)
    diff = np.abs(np.stack([f.landmarks for f in frames]) - np.stack([f.landmarks for f in base]))
    assert np.median(diff) < 1e-3


def test_bad_input_raises_and_loses_nothing():
    engine = stream_engine.Engine(FakeRunner(lookahead_frames=0))
    stream = engine.open_stream()
    stream.push(speechlike(SPF // 2))
    with pytest.raises(AudioChunkError):
        stream.push(np.full(100, np.nan, np.float32))
    with pytest.raises(AudioChunkError):
        stream.push(np.zeros(100, np.int64))
    with pytest.raises(AudioChunkError):
        stream.push(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(AudioChunkError):
        stream.push(np.zeros(10, np.float32), sample_rate=10)
    assert len(stream.push(speechlike(SPF // 2))) == 1  # the first half-frame was kept
    with pytest.raises(ValueError):
        engine.open_stream(reference_face=np.zeros((5, 2)))
    with pytest.raises(ValueError):
        engine.open_stream(stream_id=stream.id)


def test_reset_close_and_slot_reuse():
    engine = stream_engine.Engine(FakeRunner(lookahead_frames=1))
    a = engine.open_stream(seed=1)
    b = engine.open_stream(seed=2)
    assert a.slot != b.slot
    a.push(speechlike(SPF * 3))
    a.reset()
    assert a.epoch == 1
    frames = a.push(speechlike(SPF * 2))
    assert [f.epoch for f in frames] == [1] and frames[0].index == 2  # frame numbers continue
    slot = a.slot
    a.close()
    a.close()  # idempotent
    with pytest.raises(RuntimeError):
        a.push(speechlike(SPF))
    with pytest.raises(RuntimeError, match="closed"):
        a.epoch  # noqa: B018  (a property)
    c = engine.open_stream()
    assert c.slot == slot
    engine.close()
    assert engine.streams == {}


def test_subscribers_and_async_methods():
    engine = stream_engine.Engine(FakeRunner(lookahead_frames=1))
    stream = engine.open_stream()
    seen = []
    stream.subscribe(seen.append)

    async def main():
        frames = await stream.apush(speechlike(SPF * 4))
        frames += await stream.aflush()
        await stream.areset()
        await stream.aclose()
        return frames

    frames = asyncio.run(main())
    assert len(frames) == 4 and seen == frames


def test_blendshape_deriver_is_injectable():
    def deriver(frame):
        return {"jawOpen": float(frame.signals.mouth_open)}

    engine = stream_engine.Engine(FakeRunner(lookahead_frames=0), blendshapes=deriver)
    frames = engine.open_stream().push(speechlike(SPF * 2))
    assert [set(f.blendshapes) for f in frames] == [{"jawOpen"}] * 2
    assert frames[1].blendshapes["jawOpen"] == pytest.approx(frames[1].signals["mouth_open"])


@pytest.mark.skipif(not DEFAULT_MODEL_PATH.is_file(), reason="the shipped default model is not in this checkout")
def test_default_engine_loads_the_shipped_model_and_is_reproducible_with_a_seed():
    engine = stream_engine.Engine()
    audio = speechlike(16000, seed=5)
    runs = []
    for _ in range(2):
        s = engine.open_stream(seed=7)
        runs.append(np.stack([f.landmarks for f in s.push(audio) + s.flush()]))
        s.close()
    assert runs[0].shape == (25, 68, 2) and np.all(np.isfinite(runs[0]))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_a_reference_face_in_pixels_is_normalised_as_the_websocket_hello_does():
    """`Engine.open_stream` and `animate` take a reference face in pixels too (any coordinate above 1.5), as the
    WebSocket hello and `--reference-face` do: the same stream as the normalised face."""
    from stream_engine.animation import animate
    from stream_engine.session import reference_face_from_points

    runner = FakeRunner(lookahead_frames=1)
    ref = np.asarray(runner.contract.reference_face, np.float64)
    px = ref * 480.0 + np.array([80.0, 0.0])
    want = reference_face_from_points(px)
    assert np.abs(want).max() <= 1.5
    engine = stream_engine.Engine(runner)
    a = engine.open_stream(reference_face=px, seed=1)
    b = engine.open_stream(reference_face=want, seed=1)
    audio = speechlike(SPF * 6)
    fa, fb = a.push(audio), b.push(audio)
    assert len(fa) == 5 and all(np.array_equal(x.landmarks, y.landmarks) for x, y in zip(fa, fb))
    assert np.array_equal(
        animate(audio, 16000, px, model=runner).landmarks, animate(audio, 16000, want, model=runner).landmarks
    )
    with pytest.raises(ValueError, match="68"):
        engine.open_stream(reference_face=np.zeros((5, 2)))
    for bad in ("", 5, "x" * 129):  # the protocol's stream-id rule
        with pytest.raises(ValueError, match="stream_id"):
            engine.open_stream(stream_id=bad)
