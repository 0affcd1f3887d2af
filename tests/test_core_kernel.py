"""The core's compiled passes (`core_kernel`, numba) against the numpy code: two cores, one compiled and one not,
driven by the same random sequences of pushes (odd sizes, ring wraps, overflow, the pending limit, duplicates and
unknown ids in one call, NaN chunks, float64 and (K, n) blocks), takes (round robin, `only`), commits with
non-finite rows, aborts, stalls, flushes, resets and closes while batches are in flight. After every operation
every slot array, the state store, the queues and what the calls returned must be equal, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stream_engine import core_kernel
from stream_engine.core import CommittedFrames, CoreError, EngineCore, StepBatch

from fakes import FakeRunner, speechlike

needs_numba = pytest.mark.skipif(core_kernel.load() is None, reason="numba is not installed (or MSYNC_NO_NUMBA=1)")

SIZES = [0, 1, 37, 319, 320, 640, 700, 1500, 2600]


def _state(core: EngineCore) -> dict:
    """Everything the core holds that a pass could change."""
    streams = {}
    for sid, s in core._streams.items():
        fifo = s.next_fifo
        streams[sid] = (
            s.row,
            [(a.tobytes(), t, f) for a, t, f in s.overflow],
            fifo._buf[fifo._head : fifo._head + fifo.size].tobytes(),
            list(s.next_arrivals),
        )
    return {
        "ints": core._ints.copy(),
        "bools": core._bools.copy(),
        "ring": np.array(core._ring),
        "ready_ns": core._ready_ns.copy(),
        "fill_mark": core._fill_mark.copy(),
        "lvl": core._lvl.copy(),
        "lvl_stalled": core._lvl_stalled.copy(),
        "store": {k: v.copy() for k, v in core.slots.arrays.items()},
        "free": list(core.slots._free),
        "streams": streams,
        "rr": core._rr_row,
        "orphans": sorted(core._orphans),
        "in_flight_batches": core._in_flight_batches,
        "row_ids": list(core._row_ids),
    }


def _assert_equal(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b and type(a) is type(b), f"{where}: {a!r} != {b!r}"


def _batch(b: StepBatch | None) -> dict | None:
    if b is None:
        return None
    return {
        "ids": b.stream_ids,
        "epochs": b.epochs,
        "steps": b.step_indices,
        "rows": np.asarray(b.rows, dtype=np.int64),
        "audio": b.audio,
        "ready": b.audio_ready_ns,
        "take_ns": b.take_ns,
    }


def _frames(c: CommittedFrames) -> dict:
    out = {k: getattr(c, k) for k in ("seqs", "epochs", "indices", "pts_ns", "audio_ready_ns", "rows")}
    out.update(
        ids=c.stream_ids,
        levels=np.asarray(c.levels_dbfs, np.float64),
        ahead=np.asarray(c.ahead_dbfs, np.float64),
        stalled=np.asarray(c.stalled, bool),
        landmarks=c.landmarks,
        times=(c.infer_start_ns, c.infer_end_ns, c.take_ns),
    )
    out["rows"] = np.asarray(out["rows"], np.int64)
    return out


def _errors(errs: dict) -> dict:
    return {i: (type(e).__name__, str(e)) for i, e in errs.items()}


def _chunk(rng: np.random.Generator, audio: np.ndarray) -> np.ndarray:
    n = SIZES[int(rng.integers(len(SIZES)))]
    start = int(rng.integers(0, audio.size - n))
    x = audio[start : start + n].copy()
    if n and rng.random() < 0.05:
        x *= 5.0  # beyond [-1, 1]: clipped at take
    if n and rng.random() < 0.04:
        x[int(rng.integers(n))] = np.nan
    return x


def _drive(seed: int, ops: int, ring_steps: int, max_pending_s: float) -> None:
    rng = np.random.default_rng(seed)
    cores = [
        EngineCore(FakeRunner(), capacity=4, ring_steps=ring_steps, max_pending_s=max_pending_s, seed=7, compiled=c)
        for c in (False, True)
    ]
    cores[1].warm_up()
    audio = speechlike(16000 * 4, seed=seed)
    now = 1_000_000_000
    opened = 0
    ids: list[str] = []
    flight: list[tuple[StepBatch, StepBatch]] = []

    def both(method: str, *args, **kwargs):
        out = []
        for core in cores:
            try:
                out.append(("ok", getattr(core, method)(*args, **kwargs)))
            except (CoreError, ValueError) as exc:
                out.append(("error", (type(exc).__name__, str(exc))))
        return out

    for op_i in range(ops):
        now += int(rng.integers(0, 30_000_000))
        op = rng.choice(
            [
                "open",
                "close",
                "push_many",
                "push_many",
                "push_many",
                "push",
                "take",
                "take",
                "commit",
                "commit",
                "abort",
                "reset",
                "flush",
                "stalls",
            ],  # fmt: skip
        )
        if op == "open" or not ids:
            sid = f"s{opened}"
            opened += 1
            face = None if rng.random() < 0.7 else (np.random.default_rng(opened).random((68, 2)) * 0.1 + 0.45)
            r = both("open_stream", sid, reference_face=face)
            if r[0][0] == "ok":
                ids.append(sid)
        elif op == "close":
            sid = ids.pop(int(rng.integers(len(ids))))
            r = both("close_stream", sid)
        elif op == "push_many":
            k = int(rng.integers(1, 9))
            if rng.random() < 0.5:  # distinct streams (the loop's case), else repeats and unknown ids
                sids = [str(x) for x in rng.choice(ids, size=min(k, len(ids)), replace=False)]
                k = len(sids)
            else:
                sids = [ids[int(rng.integers(len(ids)))] if rng.random() > 0.05 else "nobody" for _ in range(k)]
            form = rng.random()
            if form < 0.2:  # one (K, n) block, sometimes float64 or with a NaN row
                n = SIZES[int(rng.integers(len(SIZES)))]
                start = int(rng.integers(0, audio.size - n * k))
                block = (
                    audio[start : start + n * k].reshape(k, n).astype(np.float64 if rng.random() < 0.3 else np.float32)
                )
                if n and rng.random() < 0.2:
                    block[int(rng.integers(k)), 0] = np.inf
                chunks = block
            else:
                chunks = [_chunk(rng, audio) for _ in range(k)]
                if rng.random() < 0.1:
                    chunks[0] = chunks[0].astype(np.float64)  # the numpy code converts it: the loop is not used
                if rng.random() < 0.05:
                    chunks[-1] = (np.nan_to_num(chunks[-1]) * 1000).astype(
                        np.int16
                    )  # refused (not floating point), the rest taken
            arrival = now if rng.random() < 0.5 else [now + int(rng.integers(0, 1000)) for _ in range(k)]
            r = both("push_audio_many", sids, chunks, arrival)
            r = [(kind, (v[0], _errors(v[1])) if kind == "ok" else v) for kind, v in r]
        elif op == "push":
            sid, x = ids[int(rng.integers(len(ids)))], _chunk(rng, audio)
            r = both("push_audio", sid, x, now)
        elif op == "take":
            only = None if rng.random() < 0.8 else list(rng.choice(ids, size=min(len(ids), 2), replace=False))
            if len(flight) >= 2:
                continue
            limit = int(rng.integers(1, 7))
            r = []
            got = []
            for core in cores:
                b = core.take_batch(max_streams=limit, only=only, now_ns=now)
                got.append(b)
                r.append(_batch(b))
            if got[0] is not None:
                flight.append((got[0], got[1]))
        elif op in ("commit", "abort") and flight:
            pair = flight.pop(0)
            if op == "abort":
                r = [core.abort(b) for core, b in zip(cores, pair)]
            else:
                outs = [core.run_batch(b) for core, b in zip(cores, pair)]
                _assert_equal(outs[0], outs[1], f"op {op_i} run_batch")
                if rng.random() < 0.3:
                    bad = rng.random(len(pair[0])) < 0.3
                    for o in outs:
                        o[bad, int(rng.integers(68)), 0] = np.nan
                r = [_frames(core.commit_batch(b, o, now, now + 5)) for core, b, o in zip(cores, pair, outs)]
                r.append(cores[0].take_faults())
                r.append(cores[1].take_faults())
                _assert_equal(r[2], r[3], f"op {op_i} faults")
                r = r[:2]
        elif op == "reset":
            sid = ids[int(rng.integers(len(ids)))]
            r = both("reset", sid)
        elif op == "flush":
            sid = ids[int(rng.integers(len(ids)))]
            r = both("flush", sid, now)
        elif op == "stalls":
            r = both("fill_stalls", now, 50_000_000, 0.05)
        else:
            continue
        _assert_equal(r[0], r[1], f"op {op_i} {op} result")
        _assert_equal(_state(cores[0]), _state(cores[1]), f"op {op_i} {op} state")


@needs_numba
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("ring_steps", "max_pending_s"), [(3, 0.4), (16, 0.4), (16, 3.0)])
def test_compiled_passes_match_numpy_bit_for_bit(seed, ring_steps, max_pending_s):
    _drive(seed, 500, ring_steps, max_pending_s)


@needs_numba
def test_large_batches_and_round_robin_match():
    """64 streams, batches of 24 (the vectorised numpy pass, not the row-by-row one) with round robin."""
    cores = [EngineCore(FakeRunner(), capacity=64, seed=3, compiled=c) for c in (False, True)]
    ids = [f"s{i}" for i in range(64)]
    for core in cores:
        for sid in ids:
            core.open_stream(sid)
    audio = speechlike(16000 * 3, seed=1)
    for r in range(60):
        block = [audio[(r * 320 + 7 * i) % 30000 :][:320] for i in range(64)]
        outs = [core.push_audio_many(ids, block, 1000 * r) for core in cores]
        _assert_equal(_errors(outs[0][1]), _errors(outs[1][1]), "errors")
        if r % 3 == 2:
            for _ in range(3):
                bs = [core.take_batch(max_streams=24, now_ns=r) for core in cores]
                _assert_equal(_batch(bs[0]), _batch(bs[1]), f"round {r} batch")
                if bs[0] is None:
                    break
                got = [_frames(core.commit_batch(b, core.run_batch(b), 1, 2)) for core, b in zip(cores, bs)]
                _assert_equal(got[0], got[1], f"round {r} frames")
        _assert_equal(_state(cores[0]), _state(cores[1]), f"round {r} state")


@needs_numba
def test_warm_up_compiles_every_type_the_passes_see():
    """After `warm_up`, pushes (lists, float64 blocks, read-only blocks), takes (with `only`) and commits add no
    new compiled signature: nothing compiles on a live frame."""
    core = EngineCore(FakeRunner(), capacity=8, seed=1, compiled=True)
    core.warm_up()
    kernels = core_kernel.load()
    before = {name: len(getattr(kernels, name).signatures) for name in ("push", "select", "take", "commit")}
    assert all(n >= 1 for n in before.values()), before
    for i in range(4):
        core.open_stream(f"s{i}")
    ids = [f"s{i}" for i in range(4)]
    x = speechlike(2000, seed=2)
    core.push_audio_many(ids, [x[:700]] * 4, 5)
    block = np.frombuffer(np.tile(x[:640], 4).astype(np.float64).tobytes()).reshape(4, 640)  # read-only
    core.push_audio_many(ids, block, [6, 7, 8, 9])
    core.process()
    core.push_audio_many(ids, [x[:640]] * 4, 10)
    core.process(only=["s1"])
    after = {name: len(getattr(kernels, name).signatures) for name in ("push", "select", "take", "commit")}
    assert after == before


def test_numpy_path_when_not_compiled():
    core = EngineCore(FakeRunner(), compiled=False)
    assert core._kernels is None
    core.warm_up()  # nothing to do


def test_without_numba_the_core_runs_numpy(tmp_path):
    """MSYNC_NO_NUMBA=1: `core_kernel.load()` is None, the core runs and makes frames; compiled=True refuses."""
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "import numpy as np\n"
        "from stream_engine import core_kernel\n"
        "from stream_engine.core import EngineCore\n"
        "from fakes import FakeRunner\n"
        "assert core_kernel.load() is None\n"
        "core = EngineCore(FakeRunner())\n"
        "core.open_stream('a'); core.push_audio_many(['a'], [np.zeros(6400, np.float32)], 0)\n"
        "assert len(core.process()) == 8\n"
        "try:\n"
        "    EngineCore(FakeRunner(), compiled=True)\n"
        "except RuntimeError as e:\n"
        "    print('refused:', e)\n"
    )
    env = {**os.environ, "MSYNC_NO_NUMBA": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                       cwd=str(Path(__file__).resolve().parents[1]))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "refused: compiled core passes need numba" in r.stdout


@needs_numba
def test_backlog_drain_with_overflow_and_page_release_matches():
    """A backlog beyond the ring (overflow refills at take) drained to less than a step: the base moves after
    more than `_RELEASE_AFTER_STEPS` ring rows, whose pages go back to the OS; then real-time pushes again."""
    cores = [EngineCore(FakeRunner(), capacity=4, ring_steps=16, seed=5, compiled=c) for c in (False, True)]
    audio = speechlike(16000 * 3, seed=4)
    for core in cores:
        core.open_stream("a")
        core.open_stream("b")
    pos = 0
    for r in range(80):
        n = 640 * 24 + 100 if r == 0 else 333
        outs = [
            core.push_audio_many(["a", "b"], [audio[pos : pos + n], audio[pos + 1 : pos + 1 + n]], r) for core in cores
        ]
        pos += n
        _assert_equal(_errors(outs[0][1]), _errors(outs[1][1]), "errors")
        bs = [core.take_batch(now_ns=r) for core in cores]
        _assert_equal(_batch(bs[0]), _batch(bs[1]), f"round {r} batch")
        if bs[0] is not None:
            got = [_frames(core.commit_batch(b, core.run_batch(b), 1, 2)) for core, b in zip(cores, bs)]
            _assert_equal(got[0], got[1], f"round {r} frames")
        _assert_equal(_state(cores[0]), _state(cores[1]), f"round {r} state")
    assert cores[1]._base[cores[1].slot_of("a")] > 16  # the base moved past a drained backlog
