"""The sans-I/O engine core: timing, look-ahead, batching, epochs (reset/flush) and bad input, without sockets."""

from __future__ import annotations

import numpy as np
import pytest

from stream_engine.clock import ManualClock, RealtimeSchedule, SampleClock
from stream_engine.core import AudioChunkError, EngineCore, OverloadError, UnknownStreamError
from stream_engine.signals import mouth_features

from fakes import FailingRunner, FakeRunner, speechlike, tone

SPF = 640


def run_all(core: EngineCore, stream_id: str, audio: np.ndarray, chunk: int, clock: ManualClock | None = None):
    frames = []
    for start in range(0, audio.size, chunk):
        core.push_audio(stream_id, audio[start : start + chunk], arrival_ns=clock.now_ns() if clock else 0)
        frames += core.process()
    return frames


def test_frame_emitted_as_soon_as_its_last_needed_sample_arrives():
    """Frame 0 needs audio up to sample 640*(L+1); it appears exactly when that sample arrives."""
    for L in (0, 1, 3):
        core = EngineCore(FakeRunner(lookahead_frames=L))
        core.open_stream("s")
        core.push_audio("s", tone(SPF * (L + 1) - 1), arrival_ns=1)
        assert core.process() == []
        core.push_audio("s", tone(1, start_sample=SPF * (L + 1) - 1), arrival_ns=2)
        frames = core.process()
        assert [f.index for f in frames] == [0]
        assert frames[0].timings.audio_ready_ns == 2


def test_lookahead_warmup_is_dropped_and_pts_follow_the_sample_clock():
    """L padding outputs are dropped; frame j has pts j*40 ms and seq j."""
    core = EngineCore(FakeRunner(lookahead_frames=2))
    core.open_stream("s")
    frames = run_all(core, "s", tone(SPF * 10), chunk=SPF * 10)
    assert [f.index for f in frames] == list(range(8))
    assert [f.seq for f in frames] == list(range(8))
    assert [f.pts_ns for f in frames] == [j * 40_000_000 for j in range(8)]
    assert frames[0].landmarks.shape == (68, 2) and frames[0].landmarks.dtype == np.float32


def test_frame_j_is_driven_by_its_own_audio():
    """With look-ahead, output j reflects the RMS of samples [640j, 640j+640), not of the newest step."""
    amps = [0.0, 0.05, 0.3, 0.0, 0.15, 0.0, 0.0, 0.0]
    audio = np.concatenate([tone(SPF, amplitude=a, start_sample=i * SPF) for i, a in enumerate(amps)])
    core = EngineCore(FakeRunner(lookahead_frames=2))
    core.open_stream("s")
    frames = run_all(core, "s", audio, chunk=333)
    gaps = [mouth_features(f.landmarks)[0] for f in frames]
    assert len(frames) == len(amps) - 2
    order = np.argsort(gaps)
    assert order[-1] == 2 and order[-2] == 4  # the loudest frames open the mouth most
    levels = [f.audio_level_dbfs for f in frames]
    assert levels[0] == pytest.approx(-120.0) and levels[2] == pytest.approx(20 * np.log10(0.3 / np.sqrt(2)), abs=0.2)
    assert frames[1].audio_ahead_dbfs == pytest.approx(levels[2], abs=1e-6)  # look-ahead sees frame 2 coming


def test_output_does_not_depend_on_chunking():
    """Pushing the same audio in 10 ms, 37-sample, 20 ms and irregular chunks gives identical frames."""
    audio = speechlike(SPF * 30, seed=1)
    results = []
    for chunk in (160, 37, 320, 4999):
        core = EngineCore(FakeRunner(lookahead_frames=2, head_amplitude_deg=10))
        core.open_stream("s")
        results.append(np.stack([f.landmarks for f in run_all(core, "s", audio, chunk)]))
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)


def test_output_does_not_depend_on_bursts_buffer_reuse_or_input_dtype():
    """A 5 s burst (the stream's audio buffer grows, then is released once drained), chunks from one buffer the
    caller overwrites after every push, and float64/float16 chunks give the frames of steady float32 chunks; a
    float64 value beyond float32's range is refused like inf."""
    audio = speechlike(SPF * 200, seed=4)

    def frames_of(pushes):
        core = EngineCore(FakeRunner(lookahead_frames=2, head_amplitude_deg=10))
        core.open_stream("s")
        out = []
        for chunk in pushes:
            core.push_audio("s", chunk, arrival_ns=0)
            out += core.process(max_steps=3)  # behind the input: pending audio accumulates, then drains
        out += core.process()
        return np.stack([f.landmarks for f in out])

    steady = frames_of([audio[i : i + 320] for i in range(0, audio.size, 320)])
    burst = frames_of([audio[:80_000]] + [audio[i : i + 320] for i in range(80_000, audio.size, 320)])
    np.testing.assert_array_equal(steady, burst)

    def reused():
        buf = np.empty(320, np.float32)
        for i in range(0, audio.size, 320):
            buf[:] = audio[i : i + 320]
            yield buf

    np.testing.assert_array_equal(steady, frames_of(reused()))
    as64 = frames_of([audio[i : i + 320].astype(np.float64) for i in range(0, audio.size, 320)])
    np.testing.assert_array_equal(steady, as64)
    core = EngineCore(FakeRunner(lookahead_frames=0))
    core.open_stream("s")
    with pytest.raises(AudioChunkError, match="NaN or infinite"), np.errstate(over="ignore"):
        core.push_audio("s", np.full(10, 1e300), arrival_ns=0)
    assert core.pending_samples("s") == 0


def test_ready_streams_are_stepped_in_one_batched_call():
    """Five streams with a frame of audio each make one runner call of batch 5, with per-stream results."""
    runner = FakeRunner(lookahead_frames=1)
    core = EngineCore(runner)
    for i in range(5):
        core.open_stream(f"s{i}")
    audio = {f"s{i}": tone(SPF * 6, amplitude=0.05 * (i + 1)) for i in range(5)}
    for sid, a in audio.items():
        core.push_audio(sid, a, arrival_ns=0)
    frames = core.process()
    assert runner.batch_sizes == [5] * 6
    solo = {}
    for sid, a in audio.items():
        c = EngineCore(FakeRunner(lookahead_frames=1))
        c.open_stream(sid)
        c.push_audio(sid, a, arrival_ns=0)
        solo[sid] = np.stack([f.landmarks for f in c.process()])
    for sid in audio:
        got = np.stack([f.landmarks for f in frames if f.stream_id == sid])
        np.testing.assert_allclose(got, solo[sid], atol=1e-6)


def test_max_batch_limits_the_batch_and_round_robin_is_fair():
    runner = FakeRunner(lookahead_frames=0)
    core = EngineCore(runner, max_batch_streams=2)
    for i in range(3):
        core.open_stream(f"s{i}")
        core.push_audio(f"s{i}", tone(SPF), arrival_ns=0)
    first = core.take_batch()
    assert len(first) == 2
    core.commit(first, core.run_batch(first), 0, 0)
    second = core.take_batch()
    assert len(second) == 1 and second.stream_ids[0] not in first.stream_ids


def test_audio_ready_is_the_arrival_of_the_chunk_with_the_last_needed_sample():
    clock = ManualClock(1000)
    core = EngineCore(FakeRunner(lookahead_frames=1))
    core.open_stream("s")
    arrivals = []
    for i in range(10):  # 20 ms chunks
        clock.advance(20_000_000)
        arrivals.append(clock.now_ns())
        core.push_audio("s", tone(320, start_sample=320 * i), arrival_ns=clock.now_ns())
    frames = core.process()
    # frame j needs samples up to 640*(j+2): the end of 20 ms chunk 2j+3
    assert [f.timings.audio_ready_ns for f in frames] == [arrivals[2 * j + 3] for j in range(len(frames))]


def test_reset_drops_pending_audio_restarts_the_state_and_keeps_counting():
    """Barge-in: after reset the next frames come from a fresh state; seq continues; pts stays on the sample clock."""
    core = EngineCore(FakeRunner(lookahead_frames=2))
    core.open_stream("s")
    core.push_audio("s", tone(SPF * 5 + 100), arrival_ns=0)
    before = core.process()
    assert [f.seq for f in before] == [0, 1, 2]
    assert core.reset("s") == 1
    assert core.pending_samples("s") == 0
    core.push_audio("s", tone(SPF * 3), arrival_ns=0)
    after = core.process()
    assert [(f.epoch, f.index, f.seq) for f in after] == [(1, 0, 3)]
    assert after[0].pts_ns == (SPF * 5 + 100) * 62_500  # stream time of the first sample after the reset


def test_batch_in_flight_for_a_reset_or_closed_stream_is_discarded():
    runner = FakeRunner(lookahead_frames=0)
    core = EngineCore(runner)
    for sid in ("a", "b", "c"):
        core.open_stream(sid)
        core.push_audio(sid, tone(SPF), arrival_ns=0)
    batch = core.take_batch()
    core.reset("a")
    core.close_stream("b")
    frames = core.commit(batch, core.run_batch(batch), 0, 0)
    assert [f.stream_id for f in frames] == ["c"]


def test_flush_emits_every_received_sample_then_starts_a_new_epoch():
    """1000 samples span 2 frames; flush pads so both come out; later audio opens epoch 1 at sample 1000."""
    core = EngineCore(FakeRunner(lookahead_frames=2))
    core.open_stream("s")
    core.push_audio("s", tone(1000), arrival_ns=5)
    assert core.process() == []
    assert core.flush("s", now_ns=7) == 2
    core.push_audio("s", tone(SPF * 3), arrival_ns=9)  # queued behind the flush
    frames = core.process()
    assert [(f.epoch, f.index) for f in frames] == [(0, 0), (0, 1), (1, 0)]
    assert frames[1].timings.audio_ready_ns == 7  # padding "arrived" with the flush
    assert frames[2].pts_ns == 1000 * 62_500
    assert core.flush("s", now_ns=10) == 2  # epoch 1 holds 3 frames of audio: frame 0 out, frames 1-2 to come
    assert [f.index for f in core.process()] == [1, 2]


@pytest.mark.parametrize("compiled", [False, None])
def test_segments_flushed_back_to_back_each_get_their_own_epoch_and_every_frame(compiled):
    """Three segments pushed and flushed before any step runs (a client sending faster than the engine runs):
    each is an epoch of its own with every frame of its audio (ceil(n / 640), the look-ahead tail included),
    starting at its own first sample; each flush answers its own segment's frames; a flush with nothing new
    after it changes nothing. (A flush while the last one drained used to be ignored: the later segments merged
    into one epoch and the last lost its look-ahead tail.)"""
    core = EngineCore(FakeRunner(lookahead_frames=2), compiled=compiled)
    core.open_stream("s")
    sizes, start = [3200, 1000, 2000], 0
    for i, n in enumerate(sizes):
        core.push_audio("s", tone(n, start_sample=start), arrival_ns=i)
        start += n
        assert core.flush("s", now_ns=10 + i) == -(-n // SPF)
    assert core.flush("s", now_ns=20) == 4  # nothing new: the last segment's 4 frames are still to come
    frames = []
    for _ in range(30):
        frames += core.process()
    want = [(e, j) for e, n in enumerate(sizes) for j in range(-(-n // SPF))]
    assert [(f.epoch, f.index) for f in frames] == want
    firsts = {f.epoch: f.pts_ns for f in frames if f.index == 0}
    assert firsts == {0: 0, 1: 3200 * 62_500, 2: 4200 * 62_500}
    assert core.is_drained("s") and core.epoch("s") == 3
    # a segment queued behind a draining flush and not flushed itself joins the next epoch unflushed, as before
    core.push_audio("s", tone(SPF * 3), arrival_ns=30)
    assert core.flush("s", now_ns=31) == 3
    core.push_audio("s", tone(SPF * 4), arrival_ns=32)
    frames = []
    for _ in range(30):
        frames += core.process()
    assert [(f.epoch, f.index) for f in frames] == [(3, 0), (3, 1), (3, 2), (4, 0), (4, 1)]


def test_bad_chunks_raise_clear_errors_and_leave_the_stream_unchanged():
    core = EngineCore(FakeRunner(lookahead_frames=0), max_pending_s=1.0)
    core.open_stream("s")
    core.push_audio("s", tone(100), arrival_ns=0)
    bad = tone(100)
    bad[5] = np.nan
    with pytest.raises(AudioChunkError, match="NaN"):
        core.push_audio("s", bad, arrival_ns=0)
    with pytest.raises(AudioChunkError, match="NaN or infinite"):
        core.push_audio("s", np.full(10, np.inf, np.float32), arrival_ns=0)
    with pytest.raises(AudioChunkError, match="mono"):
        core.push_audio("s", np.zeros((10, 2), np.float32), arrival_ns=0)
    with pytest.raises(AudioChunkError, match="floating"):
        core.push_audio("s", np.zeros(10, np.int16), arrival_ns=0)
    core.push_audio("s", np.zeros(0, np.float32), arrival_ns=0)  # empty: a no-op
    assert core.pending_samples("s") == 100
    with pytest.raises(OverloadError):
        core.push_audio("s", tone(16000), arrival_ns=0)
    assert core.pending_samples("s") == 100
    with pytest.raises(UnknownStreamError):
        core.push_audio("nope", tone(10), arrival_ns=0)
    core.push_audio("s", np.full(SPF, 5.0, np.float32), arrival_ns=0)  # out of range: clipped
    assert len(core.process()) == 1


def test_runner_failure_restarts_the_batch_streams_and_others_carry_on():
    core = EngineCore(FailingRunner(fail_on_call=2, lookahead_frames=0))
    core.open_stream("a")
    core.push_audio("a", tone(SPF * 3), arrival_ns=0)
    assert len(core.process(max_steps=1)) == 1
    with pytest.raises(RuntimeError, match="injected"):
        core.process()
    assert core.epoch("a") == 1 and core.pending_samples("a") == 0
    core.open_stream("b")
    core.push_audio("b", tone(SPF), arrival_ns=0)
    assert [f.stream_id for f in core.process()] == ["b"]


def test_reference_face_is_per_stream_and_validated():
    runner = FakeRunner(lookahead_frames=0)
    core = EngineCore(runner)
    shifted = runner.contract.reference_face_array + np.float32(0.05)
    core.open_stream("shifted", reference_face=shifted)
    core.open_stream("default")
    for sid in ("shifted", "default"):
        core.push_audio(sid, np.zeros(SPF, np.float32), arrival_ns=0)
    frames = {f.stream_id: f for f in core.process()}
    np.testing.assert_allclose(frames["shifted"].landmarks - frames["default"].landmarks, 0.05, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        core.open_stream("bad", reference_face=np.zeros((5, 2)))
    with pytest.raises(ValueError, match="already open"):
        core.open_stream("default")


def test_stream_time_has_no_drift_over_hours():
    """Presentation times are integer sample arithmetic: exact after 10 hours at 16 kHz."""
    clock = SampleClock(16000)
    ten_hours = 16000 * 3600 * 10
    assert clock.time_ns(ten_hours) == 36_000 * 10**9
    assert clock.time_ns(640 * 900_000) == 900_000 * 40_000_000
    schedule = RealtimeSchedule(16000, start_ns=0, speed=1.0)
    assert schedule.due_ns(ten_hours) == 36_000 * 10**9


def test_sample_fifo_keeps_order_and_costs_about_its_pending_audio():
    """The per-stream FIFO returns the samples in order whatever the push/take sizes, and its buffer stays within
    4x the pending samples (at least 8 KB) through bursts and drains, so a stream costs about its pending audio."""
    from stream_engine.core import _SampleFifo

    rng = np.random.default_rng(0)
    sizes = [int(rng.integers(30_000, 90_000)) if i % 500 == 7 else int(rng.integers(0, 700)) for i in range(3000)]
    chunks = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    takes = np.random.default_rng(1)
    fifo, taken = _SampleFifo(), []
    buffer = np.empty(90_000, np.float32)
    for chunk in chunks:
        buffer[: chunk.size] = chunk
        fifo.push(buffer[: chunk.size])
        buffer[:] = 0.0  # the caller reuses its buffer: the FIFO kept a copy
        while fifo.size >= 640 and takes.random() < 0.8:
            taken.append(fifo.take(640))
        assert fifo._buf.size <= max(_SampleFifo._MIN, 4 * fifo.size)
    taken.append(fifo.take(fifo.size))
    assert fifo.size == 0 and fifo._buf.size <= _SampleFifo._MIN
    np.testing.assert_array_equal(np.concatenate(taken), np.concatenate(chunks))
