"""The engine's batched signals (one `BatchSignalExtractor`, a slot per stream) equal a per-stream
`SignalExtractor` fed the same frames: several streams, resets, a flush, a close and a reopen into a freed slot."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from stream_engine.batch_signals import BatchSignalExtractor
from stream_engine.engine import Engine, EngineConfig
from stream_engine.signals import VISEMES, SignalConfig, SignalExtractor, stream_seed

from fakes import NEUTRAL_FACE, CollectingSink, FakeRunner, project_face, speechlike

SPF = 640
SIGNAL_CFG = SignalConfig(blink_mode="both", auto_blink_interval_s=(0.3, 1.0))


def _run(batch_signals: bool):
    """Frames of one engine run (published order) and each stream's (reference face, seed) as opened."""
    faces = {"a": None, "b": project_face(10, 4, 0), "c": None, "d": NEUTRAL_FACE}
    seeds = {"a": None, "b": None, "c": 77, "d": None}

    async def main():
        sink = CollectingSink()
        cfg = EngineConfig(seed=5, stall_ms=0, batch_signals=batch_signals)
        async with Engine(FakeRunner(lookahead_frames=2, head_amplitude_deg=12.0), cfg, SIGNAL_CFG) as engine:
            engine.add_sink(sink)
            for sid in "abc":
                engine.open_stream(sid, faces[sid], seed=seeds[sid])
            audio = {sid: speechlike(SPF * 60, seed=i) for i, sid in enumerate("abcd")}
            for k in range(0, 60, 4):
                for j, sid in enumerate(engine.sessions):
                    if (k // 4 + j) % 3:  # streams skip chunks: batches of varying size and membership
                        engine.push_audio(sid, audio[sid][k * SPF : (k + 4) * SPF])
                # a reset drops audio not yet stepped: drain first, so that both runs reset at the same frame
                # whatever the machine's load (a loaded run had stepped less of "a" and made fewer frames)
                if k == 16:
                    await engine.wait_drained("a")
                    engine.reset("a")
                if k == 24:
                    engine.flush("c")
                if k == 28:
                    await engine.wait_drained("b")
                    engine.close_stream("b")
                    engine.open_stream("d", faces["d"])  # takes b's freed slot
                if k == 40:
                    await engine.wait_drained("d")
                    engine.reset("d")
                await asyncio.sleep(0.005)
            for sid in list(engine.sessions):
                engine.flush(sid)
                await engine.wait_drained(sid)
            return sink.frames

    frames = asyncio.run(asyncio.wait_for(main(), 30))
    return frames, faces, seeds


@pytest.mark.parametrize("batch_signals", [True, False])
def test_engine_signals_equal_a_per_stream_extractor(batch_signals):
    frames, faces, seeds = _run(batch_signals)
    per_stream: dict[str, list] = {}
    for f in frames:
        per_stream.setdefault(f.stream_id, []).append(f)
    assert set(per_stream) == {"a", "b", "c", "d"}
    assert {f.epoch for f in per_stream["a"]} >= {0, 1} and {f.epoch for f in per_stream["d"]} >= {0, 1}
    model_face = np.asarray(FakeRunner().contract.reference_face, dtype=np.float32)
    for sid, fs in per_stream.items():
        assert len(fs) > 10
        face = faces[sid] if faces[sid] is not None else model_face
        seed = stream_seed(5, sid) if seeds[sid] is None else seeds[sid]
        ex = SignalExtractor(SIGNAL_CFG, np.asarray(face, dtype=np.float32), seed)
        epoch = 0
        for f in fs:
            if f.epoch != epoch:
                epoch = f.epoch
                ex.reset()
            want = ex.update(f.landmarks, f.pts_ns / 1e9, f.audio_level_dbfs, f.audio_ahead_dbfs)
            got = f.signals
            assert got is not None
            assert got.mouth_open == pytest.approx(want.mouth_open, abs=1e-9)
            np.testing.assert_allclose([got.visemes[v] for v in VISEMES], [want.visemes[v] for v in VISEMES], atol=1e-9)
            head = [got.head.yaw_deg, got.head.pitch_deg, got.head.roll_deg]
            np.testing.assert_allclose(head, [want.head.yaw_deg, want.head.pitch_deg, want.head.roll_deg], atol=1e-7)
            assert got.blink == pytest.approx(want.blink, abs=1e-9) and got.silent == want.silent
            assert got.audio_dbfs == want.audio_dbfs
            np.testing.assert_allclose(got.blendshapes, want.blendshapes, atol=1e-6)
    blinks = [f.signals.blink for f in frames]
    assert max(blinks) > 0.5  # the procedural blinks (seeded per stream) are part of what is compared
    assert any(f.signals.mouth_open > 0.5 for f in frames) and any(abs(f.signals.head.yaw_deg) > 3 for f in frames)


def test_batch_extractor_grows_keeping_open_slots():
    """`grow` keeps every open slot's state: the grown extractor continues exactly as the original would."""
    cfg = SignalConfig(blink_mode="both", auto_blink_interval_s=(0.3, 1.0))
    a, b = BatchSignalExtractor(cfg, capacity=2), BatchSignalExtractor(cfg, capacity=2)
    for bx in (a, b):
        bx.open(0, NEUTRAL_FACE, 1)
        bx.open(1, None, 2)
    rng = np.random.default_rng(0)
    for t in range(40):
        lm = np.stack([project_face(5 * np.sin(0.1 * t), 0, 0, 10 * abs(np.sin(0.3 * t + s))) for s in range(2)])
        lm = lm + rng.normal(0, 1e-3, lm.shape)
        if t == 20:
            b.grow(9)
            assert b.capacity == 9 and not b.open_slots[2:].any()
            b.open(8, None, 3)
        x, y = a.update([0, 1], lm, [0.04 * t] * 2, [-20.0, -20.0]), b.update([0, 1], lm, [0.04 * t] * 2, [-20.0] * 2)
        np.testing.assert_array_equal(x.mouth_open, y.mouth_open)
        np.testing.assert_array_equal(x.blink, y.blink)
        np.testing.assert_array_equal(x.blendshapes, y.blendshapes)
    assert b.update([8], lm[:1], [2.0], [-20.0]).mouth_open.shape == (1,)


def test_frames_built_per_step_equal_frames_built_per_stream():
    """The per-step publish path (`EngineCore.commit_batch` columns, signals of the whole step, each frame built
    once) gives the same frames as the per-stream path (`Session.derive` on each frame from `commit`): every
    field but the wall-clock timings, which are only ordered."""
    batched, _, _ = _run(True)
    single, _, _ = _run(False)

    def key(f):
        return (f.stream_id, f.seq, f.epoch, f.index, f.pts_ns, f.audio_level_dbfs, f.audio_ahead_dbfs, f.stalled)

    by_key = {key(f): f for f in single}
    assert sorted(by_key) == sorted(key(f) for f in batched)
    for f in batched:
        g = by_key[key(f)]
        np.testing.assert_array_equal(f.landmarks, g.landmarks)
        assert f.landmarks.dtype == np.float32 and f.landmarks.shape == (68, 2)
        assert f.signals.as_vector() == pytest.approx(g.signals.as_vector(), abs=1e-6)
        t = f.timings
        assert 0 < t.audio_ready_ns <= t.take_ns <= t.infer_start_ns <= t.infer_end_ns <= t.publish_ns
