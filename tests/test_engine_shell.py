"""The asyncio engine shell and the inputs, without sockets: sources, back-pressure, failures, resampling."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from stream_engine.core import AudioChunkError, OverloadError
from stream_engine.engine import Engine, EngineConfig, EngineFullError
from stream_engine.inputs import (
    FileSource,
    InputError,
    PcmConverter,
    PcmFormat,
    StdinSource,
    resolve_input_device,
    synthesize_speech,
)

from fakes import CollectingSink, FailingRunner, FakeRunner, speechlike, tone

SPF = 640


def run(coro, timeout_s: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def write_wav(path, audio, rate=16000, channels=1):
    data = np.repeat(audio[:, None], channels, axis=1) if channels > 1 else audio
    soundfile.write(str(path), data, rate)
    return path


def test_engine_publishes_frames_with_signals_and_stage_timestamps():
    async def main():
        sink = CollectingSink()
        async with Engine(FakeRunner(lookahead_frames=2, head_amplitude_deg=10)) as engine:
            engine.add_sink(sink)
            engine.open_stream("a")
            audio = speechlike(SPF * 20)
            for i in range(0, audio.size, 320):
                engine.push_audio("a", audio[i : i + 320])
                await asyncio.sleep(0)
            engine.flush("a")
            await engine.wait_drained("a")
        return sink

    sink = run(main())
    assert [f.index for f in sink.frames] == list(range(20))
    for f in sink.frames:
        t = f.timings
        assert 0 < t.audio_ready_ns <= t.infer_start_ns <= t.infer_end_ns <= t.publish_ns
        assert f.signals is not None and 0.0 <= f.signals.mouth_open <= 1.0
    assert [e["event"] for e in sink.events] == ["opened", "flushed"]


def test_drain_at_shutdown_sends_every_streams_tail_then_closes_them():
    """Stopping the server (`Engine.drain`, run by `msync stream` on Ctrl-C/SIGTERM): each open stream's
    look-ahead tail is flushed out, so every received sample's frame is published, then every stream is closed
    (outputs see `closed`). Before, the last L frames of each stream were lost and no `closed` event went out."""

    async def main():
        sink = CollectingSink()
        async with Engine(FakeRunner(lookahead_frames=2)) as engine:
            engine.add_sink(sink)
            for sid, n in (("a", SPF * 10), ("b", SPF * 7 + 100)):
                engine.open_stream(sid)
                engine.push_audio(sid, speechlike(n))
            await asyncio.sleep(0.2)
            await engine.drain(timeout_s=5.0)
            assert engine.sessions == {}
        return sink

    sink = run(main())
    got = {sid: [f.index for f in sink.frames if f.stream_id == sid] for sid in "ab"}
    assert got == {"a": list(range(10)), "b": list(range(8))}
    closed = [e["stream"] for e in sink.events if e["event"] == "closed"]
    assert sorted(closed) == ["a", "b"]


def test_a_reference_face_in_pixels_is_normalised_as_the_hello_does():
    from stream_engine.session import reference_face_from_points

    async def main():
        runner = FakeRunner()
        async with Engine(runner) as engine:
            px = np.asarray(runner.contract.reference_face, np.float64) * 480.0 + 80.0
            engine.open_stream("a", px)
            return engine.core.reference_face("a"), reference_face_from_points(px)

    got, want = run(main())
    np.testing.assert_array_equal(got, want)
    assert np.abs(got).max() <= 1.5


def test_many_streams_are_batched_by_the_engine():
    async def main():
        runner = FakeRunner(lookahead_frames=1, cost_us_per_call=2000)
        sink = CollectingSink()
        async with Engine(runner) as engine:
            engine.add_sink(sink)
            ids = [engine.open_stream().stream_id for _ in range(8)]
            for _ in range(10):  # 8 streams receive 40 ms each, together
                for sid in ids:
                    engine.push_audio(sid, tone(SPF))
                await asyncio.sleep(0.005)
            for sid in ids:
                engine.flush(sid)
            for sid in ids:
                await engine.wait_drained(sid)
        return runner, sink, ids

    runner, sink, ids = run(main())
    assert max(runner.batch_sizes) > 1
    for sid in ids:
        assert [f.index for f in sink.frames if f.stream_id == sid] == list(range(10))


def test_runner_failure_resets_only_the_batch_streams_and_the_engine_keeps_running():
    async def main():
        sink = CollectingSink()
        async with Engine(FailingRunner(fail_on_call=3, lookahead_frames=0)) as engine:
            engine.add_sink(sink)
            engine.open_stream("a")
            for _ in range(6):
                engine.push_audio("a", tone(SPF))
                await asyncio.sleep(0.01)
            await engine.wait_capacity("a", 0.0)
            engine.open_stream("b")
            engine.push_audio("b", tone(SPF))
            await engine.wait_capacity("b", 0.0)
            await asyncio.sleep(0.01)
            return sink, engine.stats.runner_errors, engine.sessions["a"].stats.errors

    sink, runner_errors, a_errors = run(main())
    assert runner_errors == 1 and a_errors == 1
    assert any(e["event"] == "error" and "injected" in e["message"] for e in sink.events)
    assert any(e["event"] == "reset" for e in sink.events)
    assert any(f.stream_id == "b" for f in sink.frames)
    assert len([f for f in sink.frames if f.stream_id == "a"]) == 5


def test_engine_limits_streams_and_rejects_bad_ids():
    async def main():
        async with Engine(FakeRunner(), EngineConfig(max_streams=2)) as engine:
            engine.open_stream("a")
            engine.open_stream()
            with pytest.raises(EngineFullError):
                engine.open_stream("c")
            engine.close_stream("a")
            with pytest.raises(ValueError, match="128 bytes"):
                engine.open_stream("x" * 200)
            engine.open_stream("c")
            with pytest.raises(ValueError, match="already open"):
                engine.open_stream("c")

    run(main())


def test_file_source_as_fast_as_possible_emits_every_frame(tmp_path):
    audio = speechlike(16000 * 3 + 123)
    path = write_wav(tmp_path / "a.wav", audio)

    async def main():
        sink = CollectingSink()
        async with Engine(FakeRunner(lookahead_frames=2), EngineConfig(max_pending_s=0.5)) as engine:
            engine.add_sink(sink)
            engine.open_stream("f")
            await FileSource(path, realtime=False).run(engine, "f")
        return sink

    sink = run(main())
    assert len(sink.frames) == -(-audio.size // SPF)  # every sample's frame, the tail flushed out


def test_file_source_in_real_time_follows_the_sample_clock(tmp_path):
    """At 10x speed, the frame whose audio ends at t arrives near t/10 after the start, without drift."""
    path = write_wav(tmp_path / "b.wav", tone(16000 * 4, amplitude=0.2))

    async def main():
        sink = CollectingSink()
        async with Engine(FakeRunner(lookahead_frames=1)) as engine:
            engine.add_sink(sink)
            engine.open_stream("r")
            start = engine.clock.now_ns()
            await FileSource(path, realtime=True, speed=10.0, chunk_ms=20).run(engine, "r")
        return sink, start

    sink, start = run(main())
    assert len(sink.frames) == 100
    lags_ms = [((f.timings.audio_ready_ns - start) * 10 - (f.pts_ns + 2 * 40_000_000)) / 1e6 for f in sink.frames[:-1]]
    # audio for frame j (+1 look-ahead frame) is fully due at (j + 2) * 40 ms of stream time
    assert np.median(lags_ms) < 60.0 and abs(lags_ms[-1] - lags_ms[len(lags_ms) // 2]) < 100.0


def test_stdin_source_reads_raw_pcm_of_any_format():
    audio = tone(48000 * 1, amplitude=0.25, sample_rate_hz=48000)
    stereo = np.repeat((audio * 32767).astype("<i2")[:, None], 2, axis=1).tobytes()
    r, w = os.pipe()

    async def main():
        sink = CollectingSink()
        async with Engine(FakeRunner(lookahead_frames=0)) as engine:
            engine.add_sink(sink)
            engine.open_stream("in")
            task = asyncio.create_task(
                StdinSource(PcmFormat(48000, 2, "int16"), stream=os.fdopen(r, "rb")).run(engine, "in")
            )

            def writer():  # another process in real life: never block the loop on the pipe
                with os.fdopen(w, "wb") as pipe:
                    for i in range(0, len(stereo), 1001):  # odd sizes: partial sample frames are carried over
                        pipe.write(stereo[i : i + 1001])

            await asyncio.gather(task, asyncio.to_thread(writer))
        return sink

    sink = run(main())
    assert len(sink.frames) == 25
    levels = [f.audio_level_dbfs for f in sink.frames[2:-2]]
    assert np.allclose(levels, 20 * np.log10(0.25 / np.sqrt(2)), atol=0.5)


def test_pcm_converter_resamples_downmixes_and_switches_format():
    conv = PcmConverter(PcmFormat(48000, 2, "float32"), 16000)
    stereo = np.stack([tone(48000, 0.5, sample_rate_hz=48000), np.zeros(48000, np.float32)], axis=1)
    out = [conv.convert_bytes(stereo[i : i + 960].astype("<f4").tobytes()) for i in range(0, 48000, 960)]
    out.append(conv.set_format(PcmFormat(16000, 1, "int16")))
    total = np.concatenate(out)
    assert abs(total.size - 16000) <= 2
    assert np.sqrt(np.mean(total[2000:14000] ** 2)) == pytest.approx(0.25 / np.sqrt(2), rel=0.02)  # downmixed
    same = conv.convert_bytes((tone(160) * 32767).astype("<i2").tobytes())
    assert same.size == 160  # 16 kHz mono: no resampler
    with pytest.raises(AudioChunkError, match="whole number"):
        conv.convert_bytes(b"\0\0\0")
    bad = PcmConverter(PcmFormat(44100, 1, "float32"), 16000)
    with pytest.raises(AudioChunkError, match="NaN"):
        bad.convert_bytes(np.array([0.1, np.nan], "<f4").tobytes())
    assert bad.convert_bytes(np.zeros(4410, "<f4").tobytes()).size >= 0  # still usable after the rejection
    for kwargs in ({"sample_rate_hz": 100}, {"channels": 0}, {"dtype": "int8"}, {"sample_rate_hz": 44100.5}):
        with pytest.raises(ValueError):
            PcmFormat(**{**{"sample_rate_hz": 16000, "channels": 1, "dtype": "int16"}, **kwargs})
    assert PcmFormat.parse("s16le:48000:2") == PcmFormat(48000, 2, "int16")


def test_microphone_errors_are_clear():
    """Without usable devices (CI), picking a microphone fails with a message naming the problem."""
    with pytest.raises(InputError) as info:
        resolve_input_device("no such microphone")
    assert any(
        s in str(info.value) for s in ("no audio input devices", "no input device matches", "PortAudio", "sounddevice")
    )


def test_overload_is_reported_per_stream():
    async def main():
        async with Engine(FakeRunner(), EngineConfig(max_pending_s=0.1)) as engine:
            engine.open_stream("a")
            with pytest.raises(OverloadError):
                engine.push_audio("a", tone(16000))
            engine.push_audio("a", tone(640))

    run(main())


def test_speech_synthesis_or_a_clear_error(tmp_path):
    try:
        path = synthesize_speech("testing one two", tmp_path / "s.wav")
    except InputError as exc:
        assert "espeak-ng" in str(exc)
        pytest.skip(f"espeak-ng not installed: {exc}")
    info = soundfile.info(str(path))
    assert info.duration > 0.5


def test_reference_faces_from_json_and_pixels(tmp_path):
    from stream_engine.session import ReferenceFaceError, load_reference_face

    from fakes import NEUTRAL_FACE

    norm = tmp_path / "norm.json"
    norm.write_text(json.dumps(NEUTRAL_FACE.tolist()))
    np.testing.assert_allclose(load_reference_face(norm), NEUTRAL_FACE, atol=1e-6)
    pixels = tmp_path / "px.json"
    pixels.write_text(json.dumps({"landmarks": (NEUTRAL_FACE * 640 + 100).tolist()}))
    face = load_reference_face(pixels)  # normalised with the training data's fixed-crop rule
    assert face.shape == (68, 2) and 0.0 < face.min() and face.max() < 1.0
    for name, content, match in (
        ("short.json", json.dumps([[0, 0]] * 5), "68"),
        ("bad.json", "{", "JSON"),
        ("nan.json", json.dumps([[float("nan"), 0]] * 68), "NaN"),
    ):
        (tmp_path / name).write_text(content)
        with pytest.raises(ReferenceFaceError, match=match):
            load_reference_face(tmp_path / name)
    with pytest.raises(ReferenceFaceError, match="no such"):
        load_reference_face(tmp_path / "missing.json")


def test_reference_face_from_a_still_image_through_dlib(tmp_path, shared_data):
    """A frame of a real clip -> 68 normalised points, or a clear error when the dlib extractor is unavailable."""
    av = pytest.importorskip("av", reason="PyAV (train extra) decodes the test video")
    from stream_engine.session import ReferenceFaceError, load_reference_face

    video = next((shared_data / "raw").glob("*.mpg"))
    with av.open(str(video)) as container:
        frame = next(container.decode(video=0))
    image = tmp_path / "face.png"
    pytest.importorskip("PIL", reason="Pillow writes the test image")
    frame.to_image().save(image)
    try:
        face = load_reference_face(image)
    except ReferenceFaceError as exc:
        assert str(image) in str(exc)
        pytest.skip(f"dlib extractor unavailable here: {exc}")
    assert face.shape == (68, 2) and 0.0 < face.min() and face.max() < 1.0
    blank = tmp_path / "blank.png"
    frame.to_image().point(lambda _: 0).save(blank)
    with pytest.raises(ReferenceFaceError, match="no face"):
        load_reference_face(blank)


def test_microphone_source_opens_a_device_and_survives_garbage(tmp_path):
    """With ALSA's null device (CI has no sound card), the microphone path opens a named device at a chosen
    rate/channel count; the null device delivers non-finite garbage, which costs resets, never a crash."""
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError) as exc:
        pytest.skip(f"sounddevice/PortAudio unavailable: {exc}")
    (tmp_path / ".asoundrc").write_text("pcm.!default { type null }\nctl.!default { type hw card 0 }\n")
    script = tmp_path / "mic.py"
    script.write_text(
        "import asyncio, logging, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "logging.disable(logging.WARNING)\n"
        "from fakes import FakeRunner\n"
        "from stream_engine.engine import Engine\n"
        "from stream_engine.inputs import MicrophoneSource\n"
        "async def main():\n"
        "    async with Engine(FakeRunner(lookahead_frames=0)) as engine:\n"
        "        engine.open_stream('mic')\n"
        "        task = engine.spawn(MicrophoneSource(device='default', sample_rate_hz=48000, channels=2).run(engine, 'mic'))\n"
        "        await asyncio.sleep(0.3)\n"
        "        assert not task.done(), task\n"
        "        task.cancel()\n"
        "        s = engine.sessions['mic'].stats\n"
        "        print('ok', engine.stats.frames + s.resets)\n"
        "asyncio.run(main())\n"
    )
    r = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    if "no audio input devices" in r.stderr:
        pytest.skip("ALSA null device not available")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("ok") and int(r.stdout.split()[1]) > 0
