"""Per-stream memory stays bounded and freed memory goes back: the statistics rings, the hello facts a
connection does not keep, and the heap returned when the engine goes idle (stream_engine/memory.py)."""

from __future__ import annotations

import asyncio
import json
import platform

import numpy as np
import pytest

import stream_engine.engine as engine_module
from stream_engine.config import DEFAULT_MODEL_PATH
from stream_engine.engine import Engine, EngineConfig
from stream_engine.memory import release_free_heap
from stream_engine.protocol import AudioProtocol, ProtocolConfig, Send, StreamOwners
from stream_engine.session import RecentValues

from fakes import FakeRunner, speechlike

SPF = 640


def test_recent_values_keeps_the_last_maxlen_values_in_order_in_a_fixed_buffer():
    ring = RecentValues(4)
    assert len(ring) == 0 and ring.values().size == 0 and list(ring) == []
    for v in (1.0, 2.0, 3.0):
        ring.append(v)
    assert list(ring) == [1.0, 2.0, 3.0]
    nbytes = ring.values().nbytes
    for v in range(4, 1001):
        ring.append(float(v))
    assert len(ring) == ring.maxlen == 4
    assert list(ring) == [997.0, 998.0, 999.0, 1000.0]  # oldest first, like a deque
    assert ring._buf.nbytes == 16 and ring.values().nbytes == nbytes + 4
    with pytest.raises(ValueError):
        RecentValues(0)


def test_a_streams_latency_statistics_stay_250_values_however_long_it_runs():
    async def main():
        async with Engine(FakeRunner(lookahead_frames=2)) as engine:
            session = engine.open_stream("a")
            audio = speechlike(SPF * 300)
            for i in range(0, audio.size, SPF):
                engine.push_audio("a", audio[i : i + SPF])
                await asyncio.sleep(0)
            engine.flush("a")
            await engine.wait_drained("a")
            return session, engine.latency_line(), engine.health()

    session, line, health = asyncio.run(asyncio.wait_for(main(), 30))
    stats = session.stats
    assert stats.frames == 300
    assert len(stats.engine_latency_ms) == len(stats.infer_ms) == 250  # the latest 250 frames
    lat = stats.engine_latency_ms.values()
    assert lat.dtype == np.float32 and np.all(lat >= 0)
    assert "engine p50" in line and "step" in line
    summary = health["streams"][0]  # a flushed stream stays open until it is closed
    assert summary["frames"] == 300
    assert summary["engine_latency_p50_ms"] == pytest.approx(float(np.percentile(lat, 50)))


def test_the_engine_returns_free_heap_when_its_last_stream_closes(monkeypatch):
    calls = []
    monkeypatch.setattr(engine_module, "release_free_heap", lambda: calls.append(1) or True)
    engine = Engine(FakeRunner(lookahead_frames=2), EngineConfig(max_streams=4))
    engine.open_stream("a")
    engine.open_stream("b")
    engine.close_stream("a")
    assert calls == []  # "b" is still streaming
    engine.close_stream("b")
    assert calls == [1]
    engine.close_stream("b")  # unknown now: nothing closes, nothing is trimmed
    assert calls == [1]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_free_heap_gives_freed_pages_in_the_middle_of_the_heap_back():
    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    blocks = [bytearray(3000) for _ in range(20000)]  # ~60 MiB of malloc'd blocks, touched
    keep = blocks[::8]  # one block in eight stays: the freed ones are holes glibc keeps
    del blocks
    before = rss_mib()
    assert release_free_heap() is True
    after = rss_mib()
    assert before - after > 20, (before, after)
    assert len(keep) == 2500


def test_audio_protocol_builds_the_server_facts_at_hello_and_keeps_no_copy():
    engine = Engine(FakeRunner(lookahead_frames=2), EngineConfig(max_streams=4))
    cfg, owners = ProtocolConfig(), StreamOwners()
    built = []

    def facts() -> dict:
        built.append(list(engine.sessions))
        return {"protocol": "msync-audio", "streams": list(engine.sessions)}

    engine.open_stream("first")
    proto = AudioProtocol(engine, cfg, owners, info=facts)
    assert built == []  # nothing is built for a connection that has not said hello
    actions = proto.receive(json.dumps({"type": "hello", "stream": "second"}), 0)
    ready = json.loads(next(a.data for a in actions if isinstance(a, Send)))
    assert ready["type"] == "ready" and ready["protocol"] == "msync-audio"
    assert ready["streams"] == ["first"]  # the streams open before this one, as the hello listed them
    assert built == [["first"]] and proto.info is facts  # built once, held by nobody afterwards


@pytest.mark.skipif(not DEFAULT_MODEL_PATH.is_file(), reason="the shipped default model is not in this checkout")
def test_onnx_bindings_of_every_batch_size_are_made_with_the_buffer_set_not_under_load():
    """The first step (the engine's warm-up runs the largest batch) binds every size up to the buffer set's
    rows; later steps of any of those sizes make no binding and keep the same ones."""
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    runner = OnnxStepRunner(DEFAULT_MODEL_PATH)
    n = 16
    slots = runner.new_slots(n)
    for r in range(n):
        slots.alloc()
        slots.init_row(r, rng=np.random.default_rng(r))
    audio = speechlike(SPF * n, seed=3).reshape(n, SPF)
    runner.step_slots(slots, np.arange(12), audio[:12])  # rows: the next power of two, 16
    bindings = runner._local.slot_bindings
    assert sorted(bindings) == list(range(1, 17))
    made = {size: entry[0] for size, entry in bindings.items()}
    for size in (3, 1, 16, 7, 12, 2):
        runner.step_slots(slots, np.arange(size), audio[:size])
    assert runner._local.slot_bindings is bindings
    assert all(bindings[size][0] is made[size] for size in made)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="RSS read from /proc, heap trimmed with glibc")
@pytest.mark.skipif(not DEFAULT_MODEL_PATH.is_file(), reason="the shipped default model is not in this checkout")
def test_onnx_steps_of_changing_batch_sizes_do_not_grow_the_process():
    """With ONNX Runtime's memory pattern on, 600 steps of random batch sizes 1-64 after a B=64 step grew the
    process by about 6 MiB; the runner turns it off (`memory_pattern=False`)."""
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    def rss_mib() -> float:
        release_free_heap()
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    runner = OnnxStepRunner(DEFAULT_MODEL_PATH.with_name("default_int8.onnx"))
    assert runner.session.get_session_options().enable_mem_pattern is False
    slots = runner.new_slots(128)
    for r in range(128):
        slots.alloc()
        slots.init_row(r)
    audio = np.zeros((64, SPF), np.float32)
    runner.step_slots(slots, np.arange(64), audio)
    rng = np.random.default_rng(0)
    before = rss_mib()
    for _ in range(600):
        b = int(rng.integers(1, 65))
        runner.step_slots(slots, np.sort(rng.choice(128, b, replace=False)), audio[:b])
    assert rss_mib() - before < 2.5
