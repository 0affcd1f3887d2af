"""Frames published as columns (`FrameBatch`, the batch sink contract): old-style sinks get the same frames,
batch sinks the same bytes, statistics are recorded per step, and frame objects are built only on demand."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
from websockets.asyncio.client import connect

from stream_engine.clock import ManualClock
from stream_engine.engine import Engine, EngineConfig
from stream_engine.frame_batch import FrameBatch
from stream_engine.outputs.osc import OscConfig, OscSink, batch_bundles, frame_bundle
from stream_engine.outputs.serializers import encode_binary, encode_binary_batch, encode_json, encode_json_batch
from stream_engine.outputs.vmc import VmcConfig, VmcSink
from stream_engine.outputs.vts import VtsConfig, VtsSink
from stream_engine.outputs.websocket import ServerConfig, WebSocketServer
from stream_engine.signals import SignalConfig

from fakes import CollectingSink, FakeRunner, speechlike

SPF = 640
SIGNAL_CFG = SignalConfig(blink_mode="both", auto_blink_interval_s=(0.3, 1.0))
FRAME_FIELDS = ("stream_id", "seq", "epoch", "index", "pts_ns", "audio_level_dbfs", "audio_ahead_dbfs", "stalled")


class BatchSink(CollectingSink):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[FrameBatch] = []

    def send_batch(self, batch):
        self.batches.append(batch)


def _run(batch_signals: bool = True, signals: bool = True):
    """One engine run with an old-style sink, a batch sink and a subscriber per stream: several streams
    stepping in batches of varying membership, a reset, a flush, a close and a reopen into the freed slot."""

    async def main():
        old, new = CollectingSink(), BatchSink()
        delivered: dict[str, list] = {}
        cfg = EngineConfig(seed=5, stall_ms=0, batch_signals=batch_signals, signals=signals, max_streams=8)
        clock = ManualClock(10**9)
        async with Engine(FakeRunner(lookahead_frames=2, head_amplitude_deg=12.0), cfg, SIGNAL_CFG, clock) as engine:
            engine.add_sink(old)
            engine.add_sink(new)

            def open_stream(sid):
                engine.open_stream(sid).subscribe(lambda f, sid=sid: delivered.setdefault(sid, []).append(f))

            for sid in "abc":
                open_stream(sid)
            audio = {sid: speechlike(SPF * 48, seed=i) for i, sid in enumerate("abcd")}
            for k in range(0, 48, 4):
                clock.advance(80_000_000)
                for j, sid in enumerate(engine.sessions):
                    if (k // 4 + j) % 3:
                        engine.push_audio(sid, audio[sid][k * SPF : (k + 4) * SPF])
                if k == 16:
                    await engine.wait_drained("a")
                    engine.reset("a")
                if k == 20:
                    engine.flush("c")
                if k == 24:
                    await engine.wait_drained("b")
                    sessions["b"] = engine.sessions["b"]
                    engine.close_stream("b")
                    open_stream("d")  # takes b's freed slot
                await asyncio.sleep(0.005)
            for sid in list(engine.sessions):
                engine.flush(sid)
                await engine.wait_drained(sid)
            sessions.update(engine.sessions)
            return old.frames, new.batches, delivered

    sessions: dict = {}
    old, batches, delivered = asyncio.run(asyncio.wait_for(main(), 30))
    return old, batches, delivered, sessions


def _same_frame(a, b, exact_signals: bool = True, timings: bool = True) -> None:
    for name in FRAME_FIELDS:
        assert getattr(a, name) == getattr(b, name), name
    assert np.array_equal(a.landmarks, b.landmarks)
    if timings:
        assert a.timings == b.timings
    if a.signals is None or b.signals is None:
        assert a.signals is None and b.signals is None
        return
    if exact_signals:
        sa, sb = a.signals, b.signals
        assert (sa.mouth_open, sa.visemes, sa.blink, sa.head, sa.audio_dbfs, sa.silent) == (
            sb.mouth_open,
            sb.visemes,
            sb.blink,
            sb.head,
            sb.audio_dbfs,
            sb.silent,
        )
    else:
        assert a.signals.as_vector() == pytest.approx(b.signals.as_vector(), abs=1e-9)


@pytest.mark.parametrize("signals", [True, False])
def test_an_old_style_sink_gets_the_frames_a_batch_sink_gets_and_subscribers_too(signals):
    old, batches, delivered, _ = _run(signals=signals)
    rows = [f for b in batches for f in b.frames()]
    assert len(old) == len(rows) > 80
    assert {len(b) for b in batches} != {1}  # batches of several streams
    for a, b in zip(old, rows):
        assert a is b  # the batch builds each frame object once, whoever asks
    by_stream: dict[str, list] = {}
    for f in old:
        by_stream.setdefault(f.stream_id, []).append(f)
    assert set(by_stream) == set(delivered) == set("abcd")
    for sid, frames in by_stream.items():
        assert [f.seq for f in frames] == list(range(len(frames)))
        assert all(x is y for x, y in zip(frames, delivered[sid]))
    assert {f.epoch for f in by_stream["a"]} == {0, 1}  # the reset
    if signals:
        assert all(f.signals is not None for f in old)
    else:
        assert all(f.signals is None and b.signals is None for f in old for b in batches)


def test_published_batches_equal_the_per_frame_path():
    """The columns path gives the frames the per-frame path (`EngineConfig.batch_signals` off: one
    `SignalExtractor` per stream, each frame built and stamped on its own) gives for the same feed: every field
    exactly, the signals to float64 rounding (timestamps depend on when the steps ran), and a frame's publish
    time is its step's."""
    batched, batches, _, _ = _run(batch_signals=True)
    per_frame, _, _, _ = _run(batch_signals=False)
    key = lambda f: (f.stream_id, f.seq)  # noqa: E731  (batch membership may differ between the runs)
    assert sorted(map(key, batched)) == sorted(map(key, per_frame))
    other = {key(f): f for f in per_frame}
    for a in batched:
        _same_frame(a, other[key(a)], exact_signals=False, timings=False)
    for batch in batches:
        assert {f.timings.publish_ns for f in batch.frames()} == {batch.publish_ns}


def test_binary_messages_from_columns_are_the_bytes_of_each_frame():
    _, batches, _, _ = _run()
    for batch in batches:
        frames = batch.frames()
        for sent in (0, 1_234_567_890_123):
            assert encode_binary_batch(batch, sent) == [encode_binary(f, sent) for f in frames]
        back = list(range(len(batch)))[::-2]
        assert encode_binary_batch(batch, 5, back) == [encode_binary(frames[i], 5) for i in back]
        assert encode_binary_batch(batch, 5, []) == []


def test_binary_messages_from_columns_for_odd_frames():
    """Stream ids of every header size in one batch (non-ASCII, longer than the header's 255 bytes), silent
    and stalled rows, sequence numbers past 32 bits, and a batch without signals."""
    _, batches, _, _ = _run()
    frames = [f for b in batches for f in b.frames()][:12]
    t = frames[0].timings
    ids = ["s", "ab", "abc", "abcd", "stumm-äöü-🙂", "x" * 300, "y" * 255, "", "é", "12345", "z" * 7, "q"]
    odd = []
    for i, (f, sid) in enumerate(zip(frames, ids)):
        sig = dataclasses.replace(f.signals, silent=bool(i % 2))
        odd.append(
            dataclasses.replace(
                f, stream_id=sid, signals=sig, stalled=bool(i % 3 == 0), seq=f.seq + (2**33 if i == 4 else 0), timings=t
            )
        )
    batch = FrameBatch.from_frames(odd)
    expect = [encode_binary(f, 42) for f in odd]
    assert encode_binary_batch(batch, 42) == expect  # the array pass (more than SMALL_BATCH rows)
    for rows in ([4], [11, 0], [5, 6, 7], [3, 1, 9, 2], [0, 2, 4, 6, 8]):  # row by row up to SMALL_BATCH
        assert encode_binary_batch(batch, 42, rows) == [expect[i] for i in rows]
    assert [encode_binary(batch.frame(i), 42) for i in range(len(odd))] == expect
    bare = [dataclasses.replace(f, signals=None) for f in odd]
    assert encode_binary_batch(FrameBatch.from_frames(bare), 1) == [encode_binary(f, 1) for f in bare]
    with pytest.raises(ValueError):
        FrameBatch.from_frames([odd[0], bare[1]])


def test_json_messages_from_columns_are_the_text_of_each_frame():
    """`encode_json_batch` gives `encode_json` of every row: signals with blendshapes, stalled and silent rows,
    any stream id, a subset of rows in another order, and a batch without signals."""
    _, batches, _, _ = _run()
    for batch in batches:
        frames = batch.frames()
        assert frames[0].signals.blendshapes is not None
        assert encode_json_batch(batch, 77) == [encode_json(f, 77) for f in frames]
        back = list(range(len(batch)))[::-2]
        assert encode_json_batch(batch, 5, back) == [encode_json(frames[i], 5) for i in back]
    rows = [f for b in batches for f in b.frames()][:6]
    odd = [
        dataclasses.replace(
            f,
            stream_id=sid,
            stalled=i % 2 == 0,
            signals=dataclasses.replace(f.signals, silent=i % 3 == 0),
            timings=rows[0].timings,
        )
        for i, (f, sid) in enumerate(zip(rows, ["é", "x" * 300, "a", 'q"uote', "", "🙂"]))
    ]
    batch = FrameBatch.from_frames(odd)
    assert encode_json_batch(batch, 3) == [encode_json(f, 3) for f in odd]
    bare = FrameBatch.from_frames([dataclasses.replace(f, signals=None) for f in odd])
    assert encode_json_batch(bare, 3) == [encode_json(f, 3) for f in bare.frames()]
    assert encode_json_batch(bare, 3, []) == []


def test_osc_bundles_from_columns_are_the_bytes_python_osc_builds():
    """`batch_bundles` gives `frame_bundle(frame).dgram` for every row: with and without signals, a row whose
    audio-ready time is 0 (no latency message), any stream id, a subset of rows; `OscSink.send_batch` sends
    what `send_frames` sends."""
    _, batches, _, _ = _run()
    for batch in batches[:20]:
        frames = batch.frames()
        for signals in (True, False):
            expect = [frame_bundle(f, "/m", signals).dgram for f in frames]
            assert batch_bundles(batch, "/m", signals) == expect
        assert batch_bundles(batch, rows=[len(batch) - 1]) == [frame_bundle(frames[-1]).dgram]
    rows = [f for b in batches for f in b.frames()][:5]
    odd = [
        dataclasses.replace(f, stream_id=sid, seq=f.seq + 2**31 * (i == 2), timings=rows[0].timings)
        for i, (f, sid) in enumerate(zip(rows, ["é", "abc", "abcd", "", "🙂-x" * 9]))
    ]
    odd[1] = dataclasses.replace(odd[1], timings=dataclasses.replace(odd[1].timings, audio_ready_ns=0))
    batch = FrameBatch.from_frames(odd)
    assert batch_bundles(batch) == [frame_bundle(f).dgram for f in batch.frames()]
    bare = FrameBatch.from_frames([dataclasses.replace(f, signals=None) for f in odd])
    assert batch_bundles(bare, "/x") == [frame_bundle(f, "/x").dgram for f in bare.frames()]
    unpublished = FrameBatch.from_frames(
        [dataclasses.replace(f, timings=dataclasses.replace(f.timings, publish_ns=0)) for f in odd]
    )
    assert batch_bundles(unpublished) == [frame_bundle(f).dgram for f in unpublished.frames()]

    class Sent:
        def __init__(self) -> None:
            self.data: list[bytes] = []

        def send(self, packet) -> None:
            self.data.append(packet.dgram)

        def send_datagram(self, data: bytes) -> None:
            self.data.append(data)

    cfg = OscConfig(enabled=True, streams=("a", "c"))
    by_frames, by_batch = OscSink(cfg), OscSink(cfg)
    by_frames.udp.close()
    by_batch.udp.close()
    by_frames.udp, by_batch.udp = Sent(), Sent()  # type: ignore[assignment]
    for b in batches:
        by_frames.send_frames(b.frames())
        by_batch.send_batch(b)
    assert by_batch.udp.data == by_frames.udp.data and by_batch.udp.data


def test_frames_are_built_only_when_asked_for():
    _, batches, _, _ = _run()
    batch = max(batches, key=len)
    assert len(batch) >= 2
    fresh = FrameBatch(**{f.name: getattr(batch, f.name) for f in dataclasses.fields(FrameBatch) if f.init})
    fresh._frames = fresh._some = None
    assert fresh._frames is None
    one = fresh.frame(1)
    assert fresh._frames is None and fresh.frame(1) is one  # one row built, once
    rows = fresh.frames()
    assert rows[1] is one and len(rows) == len(batch)
    for a, b in zip(rows, batch.frames()):
        _same_frame(a, b)


def test_per_stream_statistics_are_recorded_per_step():
    old, _, _, sessions = _run()
    by_stream: dict[str, list] = {}
    for f in old:
        by_stream.setdefault(f.stream_id, []).append(f)
    for sid, frames in by_stream.items():
        stats = sessions[sid].stats
        assert stats.frames == len(frames)
        lat = [(f.timings.publish_ns - f.timings.audio_ready_ns) / 1e6 for f in frames[-250:]]
        inf = [(f.timings.infer_end_ns - f.timings.infer_start_ns) / 1e6 for f in frames[-250:]]
        assert np.array_equal(stats.engine_latency_ms.values(), np.array(lat, dtype=np.float32))
        assert np.array_equal(stats.infer_ms.values(), np.array(inf, dtype=np.float32))
        assert sessions[sid].last_frame is frames[-1]
    # "b" closed and "d" took its slot: b's statistics were kept, d's started from nothing
    assert sessions["b"].stats.frames == len(by_stream["b"]) and sessions["b"].last_frame is by_stream["b"][-1]
    assert sessions["d"].stats.frames == len(by_stream["d"]) < len(by_stream["a"])


def test_a_closed_streams_statistics_keep_their_count_past_the_ring():
    """Detaching a slot's rings (the stream closed) keeps the values and the count of everything recorded, also
    past the ring's length (frames = latencies recorded), and a free-standing ring behaves like the slot's."""
    from stream_engine.session import RecentValues, SlotRecentValues, SlotStats

    store = SlotStats(capacity=2, maxlen=4)
    store.open(1)
    for k in range(6):
        store.record(np.array([1]), np.array([float(k)]), 0.5, object())
    lat = SlotRecentValues(store.latency_ms, store.counts, 1)
    copy = lat.detached()
    assert copy.total == lat.total == 6 and len(copy) == 4
    assert copy.values().tolist() == lat.values().tolist() == [2.0, 3.0, 4.0, 5.0]
    ring = RecentValues(4)
    for k in range(6):
        ring.append(float(k))
    assert ring.total == 6 and list(ring) == [2.0, 3.0, 4.0, 5.0]


def test_statistics_follow_the_store_when_it_grows():
    async def main():
        async with Engine(FakeRunner(lookahead_frames=1), EngineConfig(max_streams=4, stall_ms=0)) as engine:
            first = engine.open_stream("first")
            engine.slot_stats.grow(engine.slot_stats.capacity + 8)  # as open_stream does when the core's grew
            for s in engine.sessions.values():
                s.bind_stats(engine.slot_stats, engine.core.slot_of(s.stream_id))
            first.push(speechlike(SPF * 6))
            engine.flush("first")
            await engine.wait_drained("first")
            return first.stats.frames, len(first.stats.engine_latency_ms)

    frames, n = asyncio.run(asyncio.wait_for(main(), 10))
    assert frames == n == 6


class _Recorder:
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def send(self, packet) -> None:
        self.packets.append(packet.dgram)

    def close(self) -> None:
        pass


def test_vmc_and_vts_take_a_batch_as_they_take_its_frames(tmp_path):
    _, batches, _, _ = _run()
    for make in (lambda: VmcSink(VmcConfig(stream="c")), lambda: VmcSink(VmcConfig())):
        by_frames, by_batch = make(), make()
        by_frames.udp, by_batch.udp = _Recorder(), _Recorder()
        for batch in batches:
            by_frames.send_frames(batch.frames())
            by_batch.send_batch(batch)
        assert by_batch.udp.packets == by_frames.udp.packets and by_batch.udp.packets
    cfg = VtsConfig(stream="a", token_file=str(tmp_path / "token.json"))
    a, b = VtsSink(cfg), VtsSink(cfg)
    for batch in batches:
        a.send_frames(batch.frames())
        b.send_batch(batch)
        assert a._values == b._values
    assert a.stats["frames"] == b.stats["frames"] > 0


def test_websocket_messages_are_byte_identical_from_frames_and_from_a_batch():
    """The same step sent to a binary and a JSON client once through `send_frames` and once through
    `send_batch`: the same messages, byte for byte (a manual clock stamps the same send time)."""
    _, batches, _, _ = _run()
    batch = FrameBatch.from_frames([f for b in batches for f in b.frames()][:6])  # several streams

    async def main():
        clock = ManualClock(5 * 10**9)
        engine = Engine(FakeRunner(lookahead_frames=1), EngineConfig(stall_ms=0), clock=clock)
        server = WebSocketServer(engine, ServerConfig(port=0, client_window_frames=64))
        await server.start()
        url = f"ws://127.0.0.1:{server.port}/frames"
        async with engine:
            got = {}
            clients = {fmt: await connect(f"{url}?format={fmt}") for fmt in ("binary", "json")}
            for ws in clients.values():
                await ws.recv()  # hello
            while server.frame_clients < 2:
                await asyncio.sleep(0.01)
            server.send_frames(batch.frames())
            windows = sorted(c.window.sent for c in server._clients)
            server.send_batch(batch)
            # both paths count what they wrote in each client's send window (which paces a slow reader)
            got["windows"] = (windows, sorted(c.window.sent for c in server._clients))
            for fmt, ws in clients.items():
                got[fmt] = [await asyncio.wait_for(ws.recv(), 5) for _ in range(2 * len(batch))]
                await ws.close()
            await server.aclose()
        return got

    got = asyncio.run(asyncio.wait_for(main(), 20))
    n = len(batch)
    assert got["windows"] == ([n, n], [2 * n, 2 * n])
    assert got["binary"][:n] == got["binary"][n:] == [encode_binary(f, 5 * 10**9) for f in batch.frames()]
    assert got["json"][:n] == got["json"][n:] == [encode_json(f, 5 * 10**9) for f in batch.frames()]


def test_a_subscriber_gets_its_streams_frames_until_it_unsubscribes():
    async def main():
        async with Engine(FakeRunner(lookahead_frames=1), EngineConfig(max_streams=4, stall_ms=0)) as engine:
            a, b = engine.open_stream("a"), engine.open_stream("b")
            got: list = []
            stop = a.subscribe(got.append)
            assert engine.slot_stats.subscribed[engine.core.slot_of("a")]
            assert a.subscribers == (got.append,)
            with pytest.raises(AttributeError):  # read-only: a callback appended here would never be called
                a.subscribers.append(print)  # type: ignore[attr-defined]
            for s in (a, b):
                s.push(speechlike(SPF * 5))
            await engine.wait_drained("a")
            await engine.wait_drained("b")
            first = len(got)
            stop()
            assert not engine.slot_stats.subscribed[engine.core.slot_of("a")]
            a.push(speechlike(SPF * 5))
            await engine.wait_drained("a")
            return got, first, a.stats.frames

    got, first, total = asyncio.run(asyncio.wait_for(main(), 10))
    assert first == len(got) == 4 and {f.stream_id for f in got} == {"a"} and total == 9


def test_the_serialiser_benchmark_runs_and_writes_its_files(tmp_path):
    import json

    from benchmarks import serialise_batch

    assert serialise_batch.main(["--streams", "8", "--rounds", "1", "--out", str(tmp_path), "--name", "s"]) == 0
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["frames_per_batch"] >= 2 and all(v > 0 for v in result["us_per_frame"].values())
    assert "| osc: batch_bundles (columns) |" in (tmp_path / "s.md").read_text()


def test_a_blendshape_deriver_sees_every_frame_and_batch_sinks_get_its_weights():
    async def main():
        old, new = CollectingSink(), BatchSink()
        seen: list = []

        def deriver(frame):
            seen.append(frame)
            return {"jawOpen": float(frame.signals.mouth_open)}

        engine = Engine(FakeRunner(lookahead_frames=1), EngineConfig(max_streams=4, stall_ms=0), blendshapes=deriver)
        async with engine:
            engine.add_sink(old)
            engine.add_sink(new)
            for sid in "ab":
                engine.open_stream(sid).push(speechlike(SPF * 6, seed=len(sid)))
            for sid in "ab":
                engine.flush(sid)
                await engine.wait_drained(sid)
        return old.frames, new.batches, seen

    old, batches, seen = asyncio.run(asyncio.wait_for(main(), 10))
    rows = [f for b in batches for f in b.frames()]
    assert len(seen) == len(old) == len(rows) == 12
    for a, b in zip(old, rows):
        assert a is b and a.blendshapes == {"jawOpen": float(a.signals.mouth_open)}
    assert all(b.blendshapes == [f.blendshapes for f in b.frames()] for b in batches)


def test_slot_statistics_record_the_same_row_by_row_and_as_arrays():
    from stream_engine.session import SlotStats

    rng = np.random.default_rng(0)
    many, few = SlotStats(16, maxlen=5), SlotStats(16, maxlen=5)
    for step in range(13):  # past the ring's length
        slots = np.sort(rng.choice(16, size=6, replace=False)).astype(np.int64)
        lat = rng.uniform(0, 50, size=6)
        many.record(slots, lat, 1.5 + step, batch=step)  # one array pass (more than 4 rows)
        for j in range(0, 6, 3):
            few.record(slots[j : j + 3], lat[j : j + 3], 1.5 + step, batch=step)  # row by row
    for name in ("latency_ms", "infer_ms", "counts", "counts_infer", "last"):
        assert np.array_equal(getattr(many, name), getattr(few, name)), name
