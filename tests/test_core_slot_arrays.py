"""The core's slot arrays: the per-slot audio ring and its overflow, round robin, and the batched push
(`EngineCore.push_audio_many` / `Engine.push_audio_many`) against one `push_audio` per chunk."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from stream_engine.core import AudioChunkError, EngineCore, OverloadError, UnknownStreamError
from stream_engine.engine import Engine, EngineConfig
from stream_engine.runtime.base import StateSlots

from fakes import FakeRunner, speechlike, tone

SPF = 640


def _key(f):
    t = f.timings
    return (f.stream_id, f.seq, f.epoch, f.index, f.pts_ns, f.audio_level_dbfs, f.audio_ahead_dbfs, f.stalled,
            t.audio_ready_ns, f.landmarks.tobytes())  # fmt: skip


def _by_stream(frames):
    out: dict[str, list] = {}
    for f in frames:
        out.setdefault(f.stream_id, []).append(_key(f))
    return out


def _feed(core: EngineCore, schedule, many: bool):
    """Push `schedule` (a list of rounds: [(stream_id, chunk, arrival_ns), ...]) one call per chunk or one
    `push_audio_many` per round, stepping after every round."""
    frames, errors = [], []
    for chunks in schedule:
        if many:
            _, errs = core.push_audio_many([c[0] for c in chunks], [c[1] for c in chunks], [c[2] for c in chunks])
            errors.append(sorted((i, type(e).__name__) for i, e in errs.items()))
        else:
            errs_one = []
            for i, (sid, chunk, ns) in enumerate(chunks):
                try:
                    core.push_audio(sid, chunk, ns)
                except Exception as exc:
                    errs_one.append((i, type(exc).__name__))
            errors.append(errs_one)
        frames += core.process()
    return _by_stream(frames), errors


def _schedule(seed: int, streams: list[str], rounds: int):
    rng = np.random.default_rng(seed)
    audio = {sid: speechlike(SPF * 400, seed=i) for i, sid in enumerate(streams)}
    pos = dict.fromkeys(streams, 0)
    out = []
    for r in range(rounds):
        chunks = []
        for _ in range(int(rng.integers(1, 2 * len(streams) + 1))):  # ids repeat within a round
            sid = streams[int(rng.integers(len(streams)))]
            n = int(rng.choice([0, 160, 320, 320, 640, 1000, 4000]))
            chunk = audio[sid][pos[sid] : pos[sid] + n]
            pos[sid] += n
            chunks.append((sid, chunk, 1_000 * r + len(chunks)))
        out.append(chunks)
    return out


@pytest.mark.parametrize("ring_steps", [2, 16])
def test_push_audio_many_gives_the_frames_of_one_push_per_chunk(ring_steps):
    """Rounds of chunks of mixed lengths (ids repeating, some empty, some beyond a 2-step ring) pushed in one
    call per round make exactly the frames one `push_audio` per chunk makes, arrival times included."""
    streams = ["a", "b", "c", "d"]
    schedule = _schedule(3, streams, 60)
    got = {}
    for many in (False, True):
        core = EngineCore(FakeRunner(lookahead_frames=2), max_batch_streams=3, seed=1, ring_steps=ring_steps)
        for sid in streams:
            core.open_stream(sid)
        got[many], errors = _feed(core, schedule, many)
        assert not any(errors)
    assert sum(len(v) for v in got[False].values()) > 200
    assert got[True] == got[False]


def test_a_small_ring_with_overflow_gives_the_frames_of_a_large_one():
    """Audio beyond the ring (seconds pushed at once, flush padding, stall silence) waits in the overflow queue
    and comes out exactly as from a ring that holds it all."""
    results = []
    for ring_steps in (2, 3, 64):
        core = EngineCore(FakeRunner(lookahead_frames=3), seed=2, ring_steps=ring_steps)
        frames = []
        for sid in ("x", "y"):
            core.open_stream(sid)
        core.push_audio("x", speechlike(SPF * 30 + 17, seed=1), 5)  # 30 steps: far beyond a 2-step ring
        core.push_audio("y", speechlike(SPF * 3, seed=2), 6)
        frames += core.process(max_steps=2)
        assert core.pending_samples("x") == SPF * 28 + 17
        core.flush("x", 7)  # padding queued behind the overflow
        core.push_audio("x", speechlike(SPF * 9, seed=3), 8)  # behind the flush: the next epoch
        frames += core.process()
        assert core.fill_stalls(10**9, 100_000_000, 0.5) == [("y", "stalled")]  # 0.6 s of silence for y
        frames += core.process()
        results.append(_by_stream(frames))
        assert core.is_drained("y") or core.pending_samples("y") < SPF
    assert results[0] == results[1] == results[2]
    x = results[0]["x"]
    assert [(k[2], k[3]) for k in x][:31] == [(0, j) for j in range(31)]  # epoch 0: every received sample's frame
    assert any(k[7] for k in results[0]["y"])  # stalled frames came out of the silence


def test_push_audio_many_refuses_bad_chunks_alone():
    """Each bad chunk gets its own error and leaves its stream unchanged; the others are taken."""
    core = EngineCore(FakeRunner(lookahead_frames=0), max_pending_s=1.0)
    for sid in ("a", "b", "c"):
        core.open_stream(sid)
    nan = tone(SPF)
    nan[3] = np.nan
    chunks = [tone(SPF), nan, np.zeros((4, 2), np.float32), np.zeros(SPF, np.int16), tone(SPF), tone(20000)]
    resumed, errors = core.push_audio_many(["a", "b", "c", "a", "zz", "c"], chunks, 0)
    assert resumed == []
    assert {i: type(e) for i, e in errors.items()} == {
        1: AudioChunkError,
        2: AudioChunkError,
        3: AudioChunkError,
        4: UnknownStreamError,
        5: OverloadError,
    }
    assert "NaN" in str(errors[1]) and "mono" in str(errors[2]) and "floating" in str(errors[3])
    assert [core.pending_samples(s) for s in ("a", "b", "c")] == [SPF, 0, 0]
    block = np.stack([tone(SPF), nan, tone(SPF)])  # one (K, n) array: its NaN row refused alone
    _, errors = core.push_audio_many(["a", "b", "c"], block, [1, 2, 3])
    assert list(errors) == [1] and [core.pending_samples(s) for s in ("a", "b", "c")] == [2 * SPF, 0, SPF]
    assert sorted(f.stream_id for f in core.process()) == ["a", "a", "c"]
    with pytest.raises(ValueError, match="one chunk"):
        core.push_audio_many(["a", "b"], [tone(SPF)], 0)


@pytest.mark.parametrize(
    "banks, cycle",
    [
        (1, [[0, 1, 2], [3, 4, 5], [0, 1, 6], [2, 3, 4], [0, 5, 6], [1, 2, 3], [4, 5, 6]]),
        (2, [[0, 1, 2], [3, 4, 5], [0, 1, 6], [2, 3, 4], [5, 6]]),
    ],
)
def test_round_robin_gives_every_stream_its_turn(banks, cycle):
    """More ready streams than a batch holds: every call starts after the last stream taken, in slot order round
    the store, wrapping to the first slots. With a double-buffered store a call instead stops at the last slot
    when half a call or more remains there (one contiguous range when all are ready; a shorter tail still
    wraps, so no call is small). After any number of calls no stream has stepped more than once more than
    another."""

    class Runner(FakeRunner):
        def new_slots(self, capacity):
            return StateSlots(self.contract, capacity, banks=banks)

    for compiled in (False, None):
        core = EngineCore(Runner(lookahead_frames=0), max_batch_streams=3, compiled=compiled)
        ids = [f"s{i}" for i in range(7)]
        for sid in ids:
            core.open_stream(sid)
            core.push_audio(sid, tone(SPF * 30), 0)
        counts = dict.fromkeys(ids, 0)
        for call in range(2 * len(cycle)):
            batch = core.take_batch()
            assert batch is not None
            assert list(batch.rows) == cycle[call % len(cycle)]
            for sid in batch.stream_ids:
                counts[sid] += 1
            core.commit(batch, core.run_batch(batch))
            assert max(counts.values()) - min(counts.values()) <= 1


def test_engine_push_audio_many_resumes_stalled_streams_and_reports_errors():
    async def main():
        events = []

        class Sink:
            frames: list = []

            def send_frames(self, frames):
                Sink.frames += frames

            def stream_event(self, message):
                events.append((message["stream"], message["event"]))

            async def aclose(self):
                pass

        cfg = EngineConfig(max_streams=4, stall_ms=60.0, seed=1)
        async with Engine(FakeRunner(lookahead_frames=1), cfg) as engine:
            engine.add_sink(Sink())
            for sid in ("a", "b"):
                engine.open_stream(sid)
            assert engine.push_audio_many(["a", "b"], [tone(SPF * 3), tone(SPF * 3)]) == {}
            await asyncio.sleep(0.5)  # both run out and stall (filled with silence)
            assert ("a", "stalled") in events and ("b", "stalled") in events
            errors = engine.push_audio_many(["a", "b", "nope"], [tone(320), np.full(320, np.inf, np.float32), tone(1)])
            assert sorted(errors) == [1, 2]
            assert ("a", "resumed") in events and ("b", "resumed") not in events
            for _ in range(100):
                if any(f.stream_id == "a" and not f.stalled and f.epoch == 0 for f in Sink.frames):
                    break
                await asyncio.sleep(0.01)
            assert {f.stream_id for f in Sink.frames} == {"a", "b"}

    asyncio.run(main())


def test_a_real_time_stream_keeps_to_the_first_rows_of_its_ring():
    """A stream stepped as its audio arrives (here 20 ms chunks, stepped after every third) only ever writes
    the first rows of its ring, so the ring's further pages are never touched; a backlog uses them."""
    core = EngineCore(FakeRunner(lookahead_frames=2), ring_steps=64)
    core.open_stream("a")
    core.open_stream("b")
    audio = tone(320 * 600) + np.float32(0.5)  # no sample is 0: every written row shows
    frames = 0
    for i in range(600):
        core.push_audio("a", audio[320 * i : 320 * (i + 1)], i)
        if i % 3 == 2:
            frames += len(core.process())
    assert frames > 250
    row = core.slot_of("a")
    assert core._ring[row, :2].any() and not core._ring[row, 3:].any()
    row_b = core.slot_of("b")
    core.push_audio("b", audio[: 640 * 40], 0)  # a 1.6 s backlog reaches row 39
    assert core._ring[row_b, 39].any()
    core.close_stream("b")  # its ring's pages go back to the OS: they read as zeros again
    assert not core._ring[row_b, 1:].any()


@pytest.mark.parametrize("small_batch", [0, 1000])
def test_row_by_row_and_vectorised_take_and_commit_agree(small_batch):
    """Batches of up to `small_batch` rows are taken and committed row by row, larger ones by array
    operations: either way every frame (landmarks, levels, arrival, stall marks) is the same."""
    streams = [f"s{i}" for i in range(6)]
    schedule = _schedule(5, streams, 50)
    got = []
    for small in (small_batch, 16):
        core = EngineCore(FakeRunner(lookahead_frames=2), max_batch_streams=4, seed=3, ring_steps=3)
        core.small_batch = small
        for sid in streams:
            core.open_stream(sid)
        frames, _ = _feed(core, schedule, many=True)
        core.flush("s1", 10**9)
        core.reset("s2")
        assert core.fill_stalls(10**12, 100_000_000, 0.3)
        frames2 = _by_stream(core.process())
        got.append((frames, frames2))
    assert got[0] == got[1]
    assert sum(len(v) for v in got[0][0].values()) > 150
