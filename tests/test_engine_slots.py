"""Slot-based state: the runner's StateSlots store, gather/step/scatter parity with the pure step, slot reuse,
resets and closes while a batch is in flight, non-finite rows, stalls filled with silence."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import pytest

from stream_engine.config import DEFAULT_MODEL_PATH
from stream_engine.core import EngineCore
from stream_engine.engine import Engine, EngineConfig
from stream_engine.runtime.base import StateSlots, check_finite_output, initial_state
from stream_engine.signals import SignalConfig

from fakes import NEUTRAL_FACE, CollectingSink, FakeRunner, NonFiniteRunner, ZeroCostRunner, speechlike, tone

SPF = 640


def test_slots_alloc_lowest_free_grow_and_gather_scatter_round_trip():
    runner = FakeRunner(lookahead_frames=1)
    slots = runner.new_slots(2)
    rows = [slots.alloc() for _ in range(3)]  # the third grows the store
    assert rows == [0, 1, 2] and slots.capacity == 4 and slots.used == 3
    for r in rows:
        slots.init_row(r, rng=np.random.default_rng(r))
    slots.free(1)
    assert slots.alloc() == 1  # lowest free row first
    gathered = slots.gather(np.array([2, 0]))
    assert gathered["reference"].shape == (2, 68, 2)
    changed = {k: v + 1.0 for k, v in gathered.items()}
    slots.scatter(np.array([2, 0]), changed)
    np.testing.assert_array_equal(slots.arrays["frames_seen"][[2, 0]], changed["frames_seen"])
    out = {k: np.empty((3, *v.shape[1:]), v.dtype) for k, v in gathered.items()}
    again = slots.gather(np.array([0, 1, 2]), out=out)  # contiguous range, copied into `out`
    assert again is out and np.array_equal(out["frames_seen"][0], changed["frames_seen"][1])


def test_step_slots_equals_the_pure_step_for_any_row_order():
    runner = FakeRunner(lookahead_frames=2, head_amplitude_deg=5)
    slots = runner.new_slots(8)
    for r in range(8):
        slots.alloc()
        slots.init_row(r, rng=np.random.default_rng(r))
    rows = np.array([5, 1, 6])
    audio = np.stack([tone(SPF, amplitude=a) for a in (0.1, 0.2, 0.3)])
    before = slots.gather(rows)
    before = {k: v.copy() for k, v in before.items()}
    expect_lm, expect_state = runner.step(audio, before)
    lm = runner.step_slots(slots, rows, audio)
    np.testing.assert_array_equal(lm, expect_lm)
    for k, v in expect_state.items():
        np.testing.assert_array_equal(slots.arrays[k][rows], v)


@pytest.mark.skipif(not DEFAULT_MODEL_PATH.is_file(), reason="the shipped default model is not in this checkout")
def test_onnx_step_slots_matches_step_with_io_binding():
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    runner = OnnxStepRunner(DEFAULT_MODEL_PATH)
    slots = runner.new_slots(6)
    for r in range(6):
        slots.alloc()
        slots.init_row(r, rng=np.random.default_rng(r))
    audio = speechlike(SPF * 6, seed=3).reshape(6, SPF)
    for rows in (np.arange(6), np.array([4, 0, 2])):  # a contiguous range, then a gather
        sub = audio[: rows.size]
        state = {k: v.copy() for k, v in slots.gather(rows).items()}
        expect_lm, expect_state = runner.step(sub, state)
        lm = runner.step_slots(slots, rows, sub)
        np.testing.assert_allclose(lm, expect_lm, atol=1e-6)
        for k, v in expect_state.items():
            np.testing.assert_allclose(slots.arrays[k][rows], v, atol=1e-6)
    check_finite_output(runner)  # the shipped model passes the load-time check


@pytest.mark.skipif(not DEFAULT_MODEL_PATH.is_file(), reason="the shipped default model is not in this checkout")
def test_onnx_step_slots_every_batch_size_shares_one_buffer_set():
    """Batch sizes in any order (growing past the buffers, then smaller again) give the pure step's results, and
    the buffers bound for them are one set sized for the largest batch, not one set per size (the soak's RSS)."""
    import tracemalloc

    from stream_engine.runtime.onnxrt import OnnxStepRunner

    runner = OnnxStepRunner(DEFAULT_MODEL_PATH)
    n = 24
    slots = runner.new_slots(n)
    for r in range(n):
        slots.alloc()
        slots.init_row(r, rng=np.random.default_rng(r))
    audio = speechlike(SPF * n, seed=5).reshape(n, SPF)
    row_bytes = sum(int(v[0].nbytes) for v in slots.arrays.values())
    sizes = (3, 1, 5, 2, 16, 4, 9, 7, 12, 24, 6, 11, 10, 8, 13, 15, 14, 3)
    batches = [np.sort(np.random.default_rng(i).choice(n, size, replace=False)) for i, size in enumerate(sizes)]
    ref = {k: v.copy() for k, v in slots.arrays.items()}  # the pure step on a copy of the store
    expected = []
    for rows in batches:
        lm, nxt = runner.step(audio[: rows.size], {k: v[rows] for k, v in ref.items()})
        for k, v in nxt.items():
            ref[k][rows] = v
        expected.append(lm)
    got = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for rows in batches:
            got.append(runner.step_slots(slots, rows, audio[: rows.size]))
        grown = tracemalloc.get_traced_memory()[0] - before - sum(lm.nbytes for lm in got)
    finally:
        tracemalloc.stop()
    for lm, expect in zip(got, expected):
        np.testing.assert_allclose(lm, expect, atol=1e-6)
    for k, v in ref.items():
        np.testing.assert_allclose(slots.arrays[k], v, atol=1e-5)
    # one set (inputs and outputs) for 32 rows is 2 x 32 rows; one set per size would be 2 x 160 rows
    assert grown < 2 * 32 * row_bytes * 1.25, grown


def test_core_frames_do_not_depend_on_batch_composition_or_slot_reuse():
    """Streams that open and close around others (slots reused, batches mixed) give the same frames as alone."""
    audio = {sid: speechlike(SPF * 12, seed=i) for i, sid in enumerate("abc")}
    alone = {}
    for sid, a in audio.items():
        core = EngineCore(FakeRunner(lookahead_frames=2), capacity=1)
        core.open_stream(sid)
        core.push_audio(sid, a, 0)
        alone[sid] = np.stack([f.landmarks for f in core.process()])
    core = EngineCore(FakeRunner(lookahead_frames=2), capacity=2)
    core.open_stream("tmp")
    core.push_audio("tmp", tone(SPF * 3), 0)
    core.process()
    core.open_stream("a")
    core.close_stream("tmp")  # frees row 0 ...
    core.open_stream("b")  # ... which "b" gets, with a fresh state
    core.open_stream("c")  # grows the store
    got = {sid: [] for sid in audio}
    for start in range(0, SPF * 12, 320):
        for sid, a in audio.items():
            core.push_audio(sid, a[start : start + 320], 0)
        for f in core.process():
            got[f.stream_id].append(f.landmarks)
    for sid in audio:
        np.testing.assert_array_equal(np.stack(got[sid]), alone[sid])


def test_reset_and_close_while_in_flight_reach_the_slot_at_commit():
    runner = FakeRunner(lookahead_frames=0)
    core = EngineCore(runner, capacity=4)
    for sid in ("a", "b"):
        core.open_stream(sid)
        core.push_audio(sid, tone(SPF * 2), 0)
    batch = core.take_batch()
    landmarks = core.run_batch(batch)  # the "worker" has scattered the next state into both slots
    core.reset("a")
    row_b = core._get("b").row
    core.close_stream("b")
    core.open_stream("b2")  # must not get b's row while b's step is in flight
    assert core._get("b2").row != row_b
    frames = core.commit(batch, landmarks)
    assert frames == []  # a was reset, b closed: nobody owns these outputs
    assert core.slots.arrays["frames_seen"][core._get("a").row, 0] == 0.0  # fresh state written at commit
    assert row_b in core.slots._free  # b's slot came back
    core.push_audio("a", tone(SPF), 0)
    assert [f.index for f in core.process()] == [0]


def test_non_finite_landmarks_never_become_frames_and_restart_only_that_stream():
    runner = NonFiniteRunner(poison=0.123, lookahead_frames=1)
    core = EngineCore(runner)
    core.open_stream("bad")
    core.open_stream("good")
    for sid in ("bad", "good"):
        core.push_audio(sid, tone(SPF * 3), 0)
    core.process()
    poisoned = tone(SPF)
    poisoned[10] = 0.123
    core.push_audio("bad", poisoned, 0)
    core.push_audio("good", tone(SPF), 0)
    frames = core.process()
    assert [f.stream_id for f in frames] == ["good"]
    assert all(np.all(np.isfinite(f.landmarks)) for f in frames)
    faults = core.take_faults()
    assert [sid for sid, _ in faults] == ["bad"] and "non-finite" in faults[0][1]
    assert core.epoch("bad") == 1 and core.epoch("good") == 0
    core.push_audio("bad", tone(SPF * 2), 0)
    assert [f.index for f in core.process()] == [0]  # a fresh epoch, finite again
    assert core.take_faults() == []


def test_engine_sends_no_nan_and_reports_an_error_and_reset():
    async def main():
        sink = CollectingSink()
        async with Engine(NonFiniteRunner(nan_from_call=3, lookahead_frames=0), EngineConfig(stall_ms=0)) as engine:
            engine.add_sink(sink)
            engine.open_stream("s")
            engine.push_audio("s", tone(SPF * 6))
            await asyncio.sleep(0.3)
            return sink, engine.health()

    sink, health = asyncio.run(asyncio.wait_for(main(), 10))
    assert sink.frames and all(np.all(np.isfinite(f.landmarks)) for f in sink.frames)
    kinds = [e["event"] for e in sink.events]
    assert "error" in kinds and kinds[kinds.index("error") + 1] == "reset"
    assert health["nonfinite_frames"] >= 1


def test_nan_model_is_refused_at_load():
    from stream_engine.runtime.base import NonFiniteModelError

    with pytest.raises(NonFiniteModelError, match="non-finite"):
        check_finite_output(NonFiniteRunner(nan_from_call=0, lookahead_frames=1))
    check_finite_output(FakeRunner(lookahead_frames=1))


def test_a_stalled_stream_continues_with_silence_and_resumes_cleanly():
    """No audio for look-ahead + 80 ms: silence on the wall clock, frames flagged, the face returns to rest
    (the fake's mouth follows the frame's RMS); real audio then continues on the same sample clock."""

    async def main():
        sink = CollectingSink()
        # the steady tone would be a hum to the speech gate's steady start (`noise_floor`), which would then keep
        # the rig's mouth shut; this test is about the stall, so that is off
        cfg = EngineConfig(stall_fill_s=0.4)
        async with Engine(FakeRunner(lookahead_frames=2), cfg, SignalConfig(noise_start_steady_frames=0)) as engine:
            engine.add_sink(sink)
            assert engine.stall_ns == int((2 * 40 + 80) * 1e6)
            engine.open_stream("s")
            engine.push_audio("s", tone(SPF * 10, amplitude=0.5))
            await asyncio.sleep(1.0)  # 160 ms stall threshold + 400 ms fill cap, paced by the wall clock
            n_stalled = len(sink.frames)
            engine.push_audio("s", tone(SPF * 4, amplitude=0.5))
            await asyncio.sleep(0.1)  # less than the stall threshold: no second stall
            return sink, n_stalled

    sink, n_stalled = asyncio.run(asyncio.wait_for(main(), 10))
    frames = sink.frames
    real = [f for f in frames[:8]]
    assert not any(f.stalled for f in real)
    stalled = [f for f in frames if f.stalled]
    # all 10 frames of real audio, then (160 + 400) ms of silence = 14 frames (the first partly real)
    assert 12 <= len(stalled) <= 16, len(stalled)
    np.testing.assert_allclose(stalled[-1].landmarks, NEUTRAL_FACE, atol=1e-6)  # the face is at rest
    assert stalled[-1].signals.mouth_open < 0.05 and stalled[-1].audio_level_dbfs == -120.0
    assert [f.index for f in frames] == list(range(len(frames)))  # one epoch, no gaps: a clean resume
    resumed = frames[n_stalled:]
    assert resumed and not resumed[-1].stalled and resumed[-1].signals.mouth_open > 0
    events = [e["event"] for e in sink.events]
    assert events.count("stalled") == 1 and events.count("resumed") == 1
    assert all(b.pts_ns - a.pts_ns == 40_000_000 for a, b in zip(frames, frames[1:]))


def test_zero_cost_runner_gives_reference_faces():
    core = EngineCore(ZeroCostRunner(lookahead_frames=1))
    core.open_stream("s")
    core.push_audio("s", tone(SPF * 3), 0)
    frames = core.process()
    assert len(frames) == 2
    np.testing.assert_array_equal(frames[0].landmarks, np.asarray(core.contract.reference_face, np.float32))
    assert initial_state(core.contract, 1)["frames_seen"].shape == (1, 1)
    assert isinstance(core.slots, StateSlots)


def test_stage_timestamps_are_ordered_and_batches_pipeline_through_the_thread():
    """Per-stage timestamps say where each frame waited; with more streams than one batch holds, the next batch
    is queued to the inference thread while the previous one is published, and every frame still comes out."""

    async def main():
        sink = CollectingSink()
        runner = FakeRunner(lookahead_frames=1, cost_us_per_call=2000)  # slow enough for the thread path
        cfg = EngineConfig(max_streams=8, max_batch_streams=3, inline_step_ms=0, stall_ms=0)
        async with Engine(runner, cfg) as engine:
            engine.add_sink(sink)
            for i in range(8):
                engine.open_stream(f"s{i}")
            for _ in range(4):
                for i in range(8):
                    engine.push_audio(f"s{i}", tone(SPF))
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            return sink, runner

    sink, runner = asyncio.run(asyncio.wait_for(main(), 10))
    assert len(sink.frames) == 8 * 3 and max(runner.batch_sizes) == 3
    for f in sink.frames:
        t = f.timings
        assert t.audio_ready_ns <= t.take_ns <= t.infer_start_ns <= t.infer_end_ns <= t.publish_ns
    by_stream = {}
    for f in sink.frames:
        by_stream.setdefault(f.stream_id, []).append(f.index)
    assert all(v == [0, 1, 2] for v in by_stream.values())


class _CostPerRow(ZeroCostRunner):
    """The zero-cost runner with a busy wait of `us_per_row` per stream, recording each call's rows."""

    def __init__(self, us_per_row: float) -> None:
        super().__init__(lookahead_frames=1)
        self.us_per_row = us_per_row
        self.calls: list[int] = []

    def step_slots(self, slots, rows, audio):
        self.calls.append(len(rows))
        end = time.perf_counter() + self.us_per_row * 1e-6 * len(rows)
        while time.perf_counter() < end:
            pass
        return super().step_slots(slots, rows, audio)


def _run_ready_streams(runner, cfg: EngineConfig, streams: int, rounds: int) -> int:
    """`streams` streams, each given a step of audio `rounds` times (all of them ready together); frames out."""

    async def main():
        sink = CollectingSink()
        async with Engine(runner, cfg) as engine:
            engine.add_sink(sink)
            ids = [engine.open_stream().stream_id for _ in range(streams)]
            for _ in range(rounds):
                assert not engine.push_audio_many(ids, [tone(SPF)] * streams)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
        return len(sink.frames)

    return asyncio.run(asyncio.wait_for(main(), 20))


def test_runner_calls_hold_as_many_streams_as_batch_step_ms_allows():
    """The first call takes 64 streams (nothing measured yet); later ones as many as the measured cost per
    stream fits in `batch_step_ms` (40 us a stream, 6 ms: at most 150, the measured cost being no less than
    the busy wait), below `max_batch_streams`. (The cap stays at 64 only if a call measures 2.3x its busy
    wait, call after call.)"""
    runner = _CostPerRow(40.0)
    cfg = EngineConfig(max_streams=190, max_batch_streams=190, batch_step_ms=6.0, stall_ms=0)
    frames = _run_ready_streams(runner, cfg, 190, 6)
    assert frames == 190 * 5  # L = 1: six steps, five frames each
    assert runner.calls[0] == 64
    assert 64 < max(runner.calls) <= 150


def test_batch_step_ms_zero_gives_max_batch_streams_calls_and_bad_values_are_refused():
    runner = _CostPerRow(0.0)
    cfg = EngineConfig(max_streams=100, max_batch_streams=100, batch_step_ms=0, stall_ms=0)
    assert _run_ready_streams(runner, cfg, 100, 2) == 100
    assert runner.calls[0] == 100
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="batch_step_ms must be a finite number >= 0"):
            EngineConfig(batch_step_ms=bad)


def test_calls_stay_within_max_batch_streams_below_64_and_the_runners_own_limit():
    """The floor of 64 never lifts a call above `max_batch_streams`, nor above a runner's `max_batch()` (a
    TensorRT engine's profile): not in the calls, not in `warm_up`'s call."""
    runner = _CostPerRow(0.0)
    assert _run_ready_streams(runner, EngineConfig(max_streams=50, max_batch_streams=16, stall_ms=0), 50, 3) == 100
    assert max(runner.calls) == 16

    class Limited(_CostPerRow):
        def max_batch(self) -> int:
            return 24

    async def warm(engine_runner):
        async with Engine(engine_runner, EngineConfig(max_streams=100, stall_ms=0)) as engine:
            await engine.warm_up()
            return engine.batch_cap()

    limited = Limited(0.0)
    assert asyncio.run(warm(limited)) == 24 and limited.calls == [24]
    assert _run_ready_streams(limited, EngineConfig(max_streams=100, stall_ms=0), 100, 3) == 200
    assert max(limited.calls) == 24


def test_runner_output_of_the_wrong_shape_resets_the_streams_with_an_error():
    class BadShape(FakeRunner):
        def step(self, audio, state):
            out, new_state = super().step(audio, state)
            return out[:, :10], new_state

    async def main():
        sink = CollectingSink()
        async with Engine(BadShape(lookahead_frames=0), EngineConfig(stall_ms=0)) as engine:
            engine.add_sink(sink)
            engine.open_stream("s")
            engine.push_audio("s", tone(SPF * 2))
            await asyncio.sleep(0.3)
            return sink, engine.stats.runner_errors

    sink, errors = asyncio.run(asyncio.wait_for(main(), 10))
    assert sink.frames == [] and errors >= 1
    kinds = [e["event"] for e in sink.events]
    assert "error" in kinds and "reset" in kinds


def test_double_buffered_slots_hold_each_rows_state_in_its_bank():
    """banks=2: init_row, gather, scatter, row_state and growth follow each row's bank; swap_range gives a
    contiguous range's bank after moving the minority's rows there, and None for anything else."""
    runner = FakeRunner(lookahead_frames=1)
    contract = runner.contract
    with pytest.raises(ValueError, match="banks"):
        StateSlots(contract, 4, banks=3)
    one, two = StateSlots(contract, 4), StateSlots(contract, 4, banks=2)
    assert one.swap_range(np.arange(4)) is None  # one bank: never in place
    for r in range(4):
        for slots in (one, two):
            slots.alloc()
            slots.init_row(r, rng=np.random.default_rng(r))
    two.bank[[1, 2]] = 1  # rows 1 and 2 live in bank 1 from now on
    for r in (1, 2):
        two.init_row(r, rng=np.random.default_rng(r))
    for k in one.arrays:
        np.testing.assert_array_equal(two.arrays[k], one.arrays[k])
        assert two.arrays[k] is not two.arrays[k]  # a copy with two banks
    changed = {k: v + 1.0 for k, v in one.gather(np.array([3, 1])).items()}
    one.scatter(np.array([3, 1]), changed)
    two.scatter(np.array([3, 1]), changed)
    for k in one.arrays:
        np.testing.assert_array_equal(two.gather(np.array([0, 1, 2, 3]))[k], one.arrays[k])
        np.testing.assert_array_equal(two.row_state(1)[k], one.row_state(1)[k])
    assert two.swap_range(np.array([0, 2])) is None and two.swap_range(np.array([1, 0])) is None
    assert two.swap_range(np.array([3, 4])) is None  # past the store: the gather path raises IndexError
    before = two.arrays
    assert two.swap_range(np.arange(1, 4)) == (1, 1)  # rows 1-2 in bank 1, row 3 moved there
    assert two.bank.tolist() == [0, 1, 1, 1]
    for k in before:
        np.testing.assert_array_equal(two.arrays[k], before[k])
    for k, v in two.store.items():  # what a runner does: the next state into the other bank's rows, then flip
        v[1:4] = before[k][1:4] + 2.0  # bank 0's rows 1-3 (store rows 1-3)
    two.flip(1, 3)
    assert two.bank.tolist() == [0, 0, 0, 0]
    after = two.arrays
    for k in before:
        np.testing.assert_array_equal(after[k][1:], before[k][1:] + 2.0)
        np.testing.assert_array_equal(after[k][0], before[k][0])
    two.bank[3] = 1
    two.scatter(np.array([3]), {k: v[3:4] for k, v in after.items()})  # row 3 now held in bank 1
    two.in_place_steps = 1  # a run writing into the store through raw addresses: growing is refused
    with pytest.raises(RuntimeError, match="cannot grow"):
        two.alloc()
    assert two.capacity == 4 and two.used == 4
    two.in_place_steps = 0
    two.alloc()  # grows to 8 rows: each row's state kept in its bank
    assert two.capacity == 8 and two.generation == 1 and two.bank.tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
    for k in after:
        np.testing.assert_array_equal(two.gather(np.arange(4))[k], after[k])


@pytest.mark.skipif(not DEFAULT_MODEL_PATH.is_file(), reason="the shipped default model is not in this checkout")
def test_onnx_double_buffered_steps_equal_the_single_bank_store_bit_for_bit():
    """The ONNX runner's store is double buffered: a contiguous range runs in place (no gather/scatter copies),
    anything else through the bound buffers. Over ranges, ranges with mixed banks, scattered and unordered rows,
    and a store that grows between steps, every landmark and state equals a one-bank store's exactly, and a
    failed run leaves the state and the banks as they were."""
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    runner = OnnxStepRunner(DEFAULT_MODEL_PATH)
    assert runner.in_place_min_rows == 32  # the default; this store is smaller, so every range may run in place
    runner.in_place_min_rows = 1
    two, one = runner.new_slots(10), StateSlots(runner.contract, 10)
    assert two.banks == 2
    rng = np.random.default_rng(0)

    def open_rows(count):
        for _ in range(count):
            r = two.alloc()
            assert one.alloc() == r
            for slots in (two, one):
                slots.init_row(r, rng=np.random.default_rng(r))

    open_rows(10)
    in_place = 0
    for t in range(48):
        n = two.capacity
        rows = [
            np.arange(n),
            np.arange(a := int(rng.integers(0, n - 2)), a + int(rng.integers(1, n - a + 1))),
            np.sort(rng.choice(n, 5, replace=False)),
            rng.permutation(n)[:4],
        ][t % 4]
        if t == 24:
            open_rows(1)  # grows both stores to 20 rows
            open_rows(9)
            continue
        audio = speechlike(SPF * rows.size, seed=t).reshape(rows.size, SPF)
        swap = two.swap_range(rows) is not None
        in_place += swap
        np.testing.assert_array_equal(runner.step_slots(two, rows, audio), runner.step_slots(one, rows, audio))
        for k, v in one.arrays.items():
            np.testing.assert_array_equal(two.arrays[k], v)
    assert in_place >= 20 and 47 - in_place >= 20 and two.bank.any() and not two.bank.all()  # both paths, mixed banks

    # a range's binding is kept and used again while the store is unchanged, never after the store grows
    first = runner._range_binding(two, 0, 4, 0)[0]
    assert runner._range_binding(two, 0, 4, 0)[0] is first
    open_rows(two.capacity - two.used + 1)  # grows both stores again
    assert runner._range_binding(two, 0, 4, 0)[0] is not first
    rows = np.arange(two.capacity)
    audio = speechlike(SPF * rows.size, seed=99).reshape(rows.size, SPF)
    np.testing.assert_array_equal(runner.step_slots(two, rows, audio), runner.step_slots(one, rows, audio))
    for k, v in one.arrays.items():
        np.testing.assert_array_equal(two.arrays[k], v)

    before, banks = two.arrays, two.bank.copy()

    def fail(binding):
        raise RuntimeError("the run failed")

    runner.session.run_with_iobinding = fail  # an instance attribute: only this runner's session
    with pytest.raises(RuntimeError):
        runner.step_slots(two, np.arange(4), speechlike(SPF * 4, seed=1).reshape(4, SPF))
    np.testing.assert_array_equal(two.bank, banks)
    for k, v in before.items():
        np.testing.assert_array_equal(two.arrays[k], v)
    assert two.in_place_steps == 0  # the store may grow again after the failed run


@pytest.mark.parametrize("cpus", [1, 2])
def test_warm_up_steps_the_largest_batch_once_and_leaves_no_trace_in_the_streams(cpus, monkeypatch):
    """`Engine.warm_up` (what `msync stream` does before serving) runs one step of the largest batch on free rows
    (on the loop's thread when the process has one CPU, else on the inference thread), leaves every row free, and
    the streams opened afterwards give the frames of an engine that was not warmed."""
    import threading

    import stream_engine.engine as engine_module

    monkeypatch.setattr(engine_module, "usable_cpus", lambda: cpus)
    on_loop = []

    class Recording(FakeRunner):
        def step_slots(self, slots, rows, audio):
            on_loop.append(threading.current_thread() is threading.main_thread())
            return super().step_slots(slots, rows, audio)

    async def run(warm: bool):
        runner = Recording(lookahead_frames=2, head_amplitude_deg=8.0)
        on_loop.clear()
        sink = CollectingSink()
        async with Engine(runner, EngineConfig(max_streams=6, max_batch_streams=4, seed=3, stall_ms=0)) as engine:
            if warm:
                await engine.warm_up()
                assert runner.batch_sizes == [4] and engine.core.slots.used == 0
                assert on_loop == [cpus == 1]
                await engine.warm_up()  # again: the same, harmless
            engine.add_sink(sink)
            for sid in "abc":
                engine.open_stream(sid)
            calls_before = len(runner.batch_sizes)
            for i, sid in enumerate("abc"):
                engine.push_audio(sid, speechlike(SPF * 12, seed=i))
            for sid in "abc":
                engine.flush(sid)
                await engine.wait_drained(sid)
            assert len(runner.batch_sizes) > calls_before
            calls = len(runner.batch_sizes)
            await engine.warm_up()  # streams are open: does nothing
            assert len(runner.batch_sizes) == calls
            return {(f.stream_id, f.seq): f.landmarks for f in sink.frames}

    cold = asyncio.run(run(False))
    warm = asyncio.run(run(True))
    assert cold.keys() == warm.keys() and len(cold) > 30
    for key, landmarks in cold.items():
        np.testing.assert_array_equal(landmarks, warm[key])


def test_on_one_cpu_every_step_runs_on_the_loop_and_frames_are_the_same(monkeypatch):
    """`EngineConfig.inline_on_one_cpu`: a process limited to one CPU steps on the event loop's thread (no
    hand-off to the inference thread); the frames equal those of the threaded engine, and with the option off
    the steps go to the inference thread again."""
    import threading

    import stream_engine.engine as engine_module

    class ThreadRecordingRunner(FakeRunner):
        def __init__(self) -> None:
            super().__init__(lookahead_frames=2, head_amplitude_deg=8.0)
            self.threads: list[str] = []

        def step_slots(self, slots, rows, audio):
            self.threads.append(threading.current_thread().name)
            return super().step_slots(slots, rows, audio)

    async def run(cfg: EngineConfig):
        runner = ThreadRecordingRunner()
        sink = CollectingSink()
        async with Engine(runner, cfg) as engine:
            engine.add_sink(sink)
            for sid in "abcd":
                engine.open_stream(sid)
            for k in range(0, 16, 2):
                for i, sid in enumerate("abcd"):
                    engine.push_audio(sid, speechlike(SPF * 16, seed=i)[k * SPF : (k + 2) * SPF])
                await asyncio.sleep(0.01)
            for sid in "abcd":
                engine.flush(sid)
                await engine.wait_drained(sid)
        return runner.threads, {(f.stream_id, f.seq): f.landmarks for f in sink.frames}

    cfg = EngineConfig(max_streams=8, seed=3, stall_ms=0, inline_step_ms=0.0)  # else: always the thread
    monkeypatch.setattr(engine_module, "usable_cpus", lambda: 1)
    threads_one, frames_one = asyncio.run(run(cfg))
    threads_off, frames_off = asyncio.run(run(dataclasses.replace(cfg, inline_on_one_cpu=False)))
    main = threading.main_thread().name
    assert threads_one[0] != main  # the first call (no measured cost yet) still goes to the thread
    assert len(threads_one) > 4 and all(t == main for t in threads_one[1:])
    assert all(t != main for t in threads_off)
    assert frames_one.keys() == frames_off.keys() and len(frames_one) > 40
    for key, landmarks in frames_one.items():
        np.testing.assert_array_equal(landmarks, frames_off[key])


@pytest.mark.parametrize(
    "text, cap", [("100000 100000\n", 1), ("150000 100000\n", 2), ("max 100000\n", None), ("garbage", None)]
)
def test_usable_cpus_follows_a_cgroup_cpu_quota(tmp_path, text, cap):
    """`docker --cpus 1` and Kubernetes CPU limits show up as cgroup v2 `cpu.max`, not as affinity: a one-CPU
    quota makes the engine step on the event loop like a process pinned to one CPU."""
    import stream_engine.engine as engine_module

    path = tmp_path / "cpu.max"
    path.write_text(text)
    affinity = engine_module.usable_cpus(str(tmp_path / "missing"))
    assert engine_module.usable_cpus(str(path)) == (affinity if cap is None else min(cap, affinity))


@pytest.mark.parametrize("freeze", [True, False])
def test_warm_up_moves_what_startup_allocated_out_of_the_collectors_full_passes(freeze):
    """With `EngineConfig.freeze_gc` (the default) `warm_up` ends with a collection and `gc.freeze()`: an object
    alive at warm-up (here a model-sized list of tracked objects) is no longer walked by the collector, so its
    full passes, which stop every stream, cost only what serving allocated afterwards. Without it nothing is
    frozen."""
    import gc

    gc.unfreeze()
    held = [[i] for i in range(50_000)]  # stands in for what a process holds before it serves

    async def run():
        async with Engine(FakeRunner(lookahead_frames=1), EngineConfig(max_streams=4, freeze_gc=freeze)) as engine:
            await engine.warm_up()
            return gc.get_freeze_count()

    try:
        frozen = asyncio.run(run())
        walked = {id(o) for o in gc.get_objects()}
        if freeze:
            assert frozen >= len(held)
            assert id(held) not in walked and id(held[123]) not in walked
        else:
            assert frozen == 0 and id(held) in walked
    finally:
        gc.unfreeze()
