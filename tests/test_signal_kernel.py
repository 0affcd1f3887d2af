"""The compiled per-frame pass of the batched signals (`signal_kernel`, numba) gives the numpy reference's values,
keeps its cache out of the package, and the extractor falls back to numpy without numba."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stream_engine import signal_kernel
from stream_engine.batch_signals import BatchSignalExtractor
from stream_engine.signals import SignalConfig

from fakes import NEUTRAL_FACE, project_face

REPO = Path(__file__).resolve().parents[1]

needs_numba = pytest.mark.skipif(signal_kernel.load() is None, reason="numba is not installed (or MSYNC_NO_NUMBA=1)")


def _frames(rng: np.random.Generator, n_slots: int, t: int) -> np.ndarray:
    """Faces with head turns, an opening/closing mouth, spread and rounding, closing eyes and jitter."""
    out = []
    for s in range(n_slots):
        mouth = max(0.0, 12 * np.sin(0.3 * t + s) + rng.normal(0, 2))
        face = project_face(15 * np.sin(0.05 * t + s), 8 * np.cos(0.07 * t), 5 * np.sin(0.03 * t + s), mouth)
        face = face + rng.normal(0, 0.002, face.shape)
        face[[48, 54], 0] += np.array([-1, 1]) * 0.02 * np.sin(0.2 * t + s)
        if (t + 3 * s) % 37 < 3:  # eyelids together: landmark blinks
            face[[37, 38, 43, 44], 1] = face[[41, 40, 47, 46], 1]
        out.append(face)
    return np.array(out, dtype=np.float32)


def _run(cfg: SignalConfig, compiled: bool, frames: int = 160, seed: int = 0):
    """Per frame: the SignalBatch of a batch whose membership changes, with resets, reopened slots, time that
    stands still or goes back, speech, pauses, digital silence and a quiet stretch."""
    rng = np.random.default_rng(seed)
    bx = BatchSignalExtractor(cfg, capacity=9, compiled=compiled)
    faces = [None, NEUTRAL_FACE, project_face(10, 0, 0), None, NEUTRAL_FACE, None]
    slots = np.array([6, 0, 3, 1, 8, 4])
    for i, slot in enumerate(slots):
        bx.open(int(slot), faces[i], seed=100 + i, name=f"s{i}")
    outs = []
    for t in range(frames):
        lm = _frames(rng, len(slots), t)
        active = [i for i in range(len(slots)) if (t + i) % 5]
        if t == 70:
            bx.reset(int(slots[2]))
        if t == 100:
            bx.close(int(slots[5]))
            bx.open(int(slots[5]), project_face(-5, 3, 0), seed=7)
        ts = np.array([0.04 * t + 0.001 * i for i in active])
        if t == 50:
            ts[0] -= 0.04  # time standing still for one stream (the filters hold)
        if t == 120:
            ts[1] -= 10.0  # time going back (a new blink is scheduled)
        level = np.array([(-20.0 if (t // 25 + i) % 3 else -90.0) for i in active])
        level[[k for k, i in enumerate(active) if i == 3 and 30 < t < 140]] = -80.0  # quiet but articulating
        if t % 40 == 5:
            level[:] = -120.0  # digital silence
        ahead = np.where(level == -80.0, -80.0, np.roll(level, 1))
        outs.append((np.array(active), bx.update(slots[active], lm[active], ts, level, ahead)))
    return outs, bx


CONFIGS = {
    "default": SignalConfig(),
    "both_fast_blinks": SignalConfig(blink_mode="both", auto_blink_interval_s=(0.3, 1.0)),
    "landmark_blinks": SignalConfig(blink_mode="landmarks"),
    "off_no_shapes": SignalConfig(blink_mode="off", blendshapes=False, head_relative_to_reference=False),
    "quiet_warning": SignalConfig(quiet_warning_s=1.0, noise_smoothing=0.0, blendshape_gain=2.0),
    "no_range_decay": SignalConfig(range_decay_s=0.0, silence_release_ms=0.0, max_head_deg=5.0),
}


@needs_numba
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # the numpy reference at range_decay_s=0
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_compiled_pass_equals_numpy(name, caplog):
    cfg = CONFIGS[name]
    with caplog.at_level(logging.WARNING, logger="stream_engine.batch_signals"):
        ref, ref_bx = _run(cfg, compiled=False)
        numpy_warnings = [r.getMessage() for r in caplog.records]
        caplog.clear()
        got, got_bx = _run(cfg, compiled=True)
        compiled_warnings = [r.getMessage() for r in caplog.records]
    assert got_bx.compiled and not ref_bx.compiled
    assert compiled_warnings == numpy_warnings
    if name == "quiet_warning":
        assert compiled_warnings and ref_bx.quiet_input.any()
    for (_, want), (_, have) in zip(ref, got):
        np.testing.assert_allclose(have.mouth_open, want.mouth_open, rtol=0, atol=1e-9)
        np.testing.assert_allclose(have.visemes, want.visemes, rtol=0, atol=1e-9)
        np.testing.assert_allclose(have.blink, want.blink, rtol=0, atol=1e-9)
        np.testing.assert_allclose(have.head_deg, want.head_deg, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(have.silent, want.silent)
        np.testing.assert_array_equal(have.audio_dbfs, want.audio_dbfs)
        if cfg.blendshapes:
            assert have.blendshapes.dtype == want.blendshapes.dtype == np.float32
            np.testing.assert_allclose(have.blendshapes, want.blendshapes, rtol=0, atol=1e-6)
        else:
            assert have.blendshapes is None and want.blendshapes is None
        rows_have, rows_want = ([r.as_vector() for r in b.rows()] for b in (have, want))
        np.testing.assert_allclose(np.array(rows_have), np.array(rows_want), rtol=0, atol=1e-7)
    # the state the two leave behind is the same too (the next frame would agree)
    for attr in ("_low", "_high", "_width_neutral", "_width_dev", "_gate", "_quiet_s", "_eye_open", "_neutral_feats"):
        np.testing.assert_allclose(getattr(got_bx, attr), getattr(ref_bx, attr), rtol=0, atol=1e-9, err_msg=attr)
    np.testing.assert_allclose(got_bx._filter.x, ref_bx._filter.x, rtol=0, atol=1e-7)
    np.testing.assert_allclose(got_bx._noise.minima, ref_bx._noise.minima, rtol=0, atol=1e-9)
    for name in ("measured", "heard"):  # the steady start (`noise_floor`) ran alike
        np.testing.assert_array_equal(getattr(got_bx._noise, name), getattr(ref_bx._noise, name), err_msg=name)
    np.testing.assert_array_equal(got_bx._next_blink, ref_bx._next_blink)
    blinks = np.concatenate([o.blink for _, o in got])
    mouths = np.concatenate([o.mouth_open for _, o in got])
    if cfg.blink_mode != "off":
        assert blinks.max() > 0.5
    assert mouths.max() > 0.5 and np.concatenate([o.silent for _, o in got]).any()


@needs_numba
def test_compiled_pass_keeps_errors_and_empty_batches():
    bx = BatchSignalExtractor(SignalConfig(), capacity=4, compiled=True)
    bx.open(1)
    bx.warm_up()
    empty = bx.update(np.zeros(0, dtype=np.int64), np.zeros((0, 68, 2)), [], [])
    assert empty.mouth_open.shape == (0,) and empty.blendshapes.shape == (0, 52)
    bx.open(3)
    two = np.stack([NEUTRAL_FACE, NEUTRAL_FACE])
    before = bx._last_t.copy()
    for bad in ([2], [5], [-1], [1, 2], [3, 1, 3], [1, 1]):  # closed, outside, repeated: refused, nothing changed
        with pytest.raises(ValueError, match="open slots"):
            bx.update(bad, np.resize(two, (len(bad), 68, 2)), np.zeros(len(bad)), np.full(len(bad), -20.0))
    np.testing.assert_array_equal(bx._last_t, before)
    assert bx.update([3, 1], two, [0.0, 0.0], [-20.0, -20.0]).mouth_open.shape == (2,)  # distinct, descending
    with pytest.raises(ValueError, match=r"\(1, 68, 2\)"):
        bx.update([1], NEUTRAL_FACE[None, :60], [0.0], [-20.0])
    # a grown extractor keeps its compiled loop and its slots' state
    bx.grow(16)
    bx.open(12)
    assert bx.compiled and bx.update([1, 12], two, [0.04, 0.0], [-20.0] * 2).mouth_open.shape == (2,)


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)


def test_without_numba_the_numpy_path_runs():
    code = (
        "from stream_engine import signal_kernel\n"
        "from stream_engine.batch_signals import BatchSignalExtractor\n"
        "assert signal_kernel.load() is None\n"
        "bx = BatchSignalExtractor()\n"
        "assert not bx.compiled\n"
        "bx.warm_up()\n"
        "try:\n"
        "    BatchSignalExtractor(compiled=True)\n"
        "except RuntimeError as e:\n"
        "    print('refused:', e)\n"
    )
    r = _python(code, {"MSYNC_NO_NUMBA": "1"})
    assert r.returncode == 0, r.stderr
    assert "refused: compiled signals need numba" in r.stdout


def _fresh_process(code: str, cache_dir) -> subprocess.CompletedProcess:
    """`code` in a new Python process with MSYNC_CACHE_DIR=cache_dir (and no NUMBA_CACHE_DIR of ours)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(MSYNC_CACHE_DIR=str(cache_dir), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@needs_numba
@pytest.mark.slow
def test_compiled_loop_is_cached_in_the_user_cache_dir(tmp_path):
    """The first process compiles and writes numba's cache under MSYNC_CACHE_DIR, nothing beside the package's
    source; a second process loads it instead of compiling."""
    code = (
        "import time\n"
        "from stream_engine.batch_signals import BatchSignalExtractor\n"
        "bx = BatchSignalExtractor()\n"
        "t0 = time.perf_counter(); bx.warm_up(); print(round(time.perf_counter() - t0, 3))\n"
        "k = bx._kernel; print(sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values()))\n"
    )
    before = set((REPO / "stream_engine").rglob("*.nb[ic]"))
    runs = [_fresh_process(code, tmp_path) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr
    assert list((tmp_path / "numba").rglob("*.nbi")), "no numba cache index in MSYNC_CACHE_DIR/numba"
    assert set((REPO / "stream_engine").rglob("*.nb[ic]")) == before  # nothing written beside the source
    hits, misses = (int(x) for x in runs[1].stdout.split()[1:3])
    assert hits >= 1 and misses == 0


@needs_numba
def test_a_loop_that_fails_to_compile_falls_back_to_numpy(caplog):
    def broken(*args):
        raise RuntimeError("LLVM says no")

    bx = BatchSignalExtractor(SignalConfig(), capacity=2)
    assert bx.compiled
    bx._kernel = broken
    with caplog.at_level(logging.WARNING, logger="stream_engine.batch_signals"):
        bx.warm_up()
    assert not bx.compiled and "deriving signals with numpy" in caplog.text
    bx.open(0)
    assert bx.update([0], NEUTRAL_FACE[None], [0.0], [-20.0]).mouth_open.shape == (1,)
    strict = BatchSignalExtractor(SignalConfig(), capacity=2, compiled=True)
    strict._kernel = broken
    with pytest.raises(RuntimeError, match="LLVM says no"):
        strict.warm_up()


@needs_numba
@pytest.mark.slow
def test_an_unwritable_cache_dir_means_no_cache_not_the_package_dir(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache directory would go")
    code = (
        "from stream_engine.batch_signals import BatchSignalExtractor\n"
        "bx = BatchSignalExtractor(); bx.warm_up(); assert bx.compiled\n"
        "print(bx._kernel.stats.cache_path)\n"
    )
    before = set((REPO / "stream_engine").rglob("*.nb[ic]"))
    r = _fresh_process(code, blocker)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "None"  # compiled, not cached
    assert set((REPO / "stream_engine").rglob("*.nb[ic]")) == before


@pytest.mark.parametrize(
    "stub, message",
    [
        ("raise OSError('libllvmlite.so: cannot open shared object file')", "numba is installed but cannot be used"),
        ("def njit(*a, **k):\n    raise RuntimeError('LLVM says no')\n", "numba is installed but cannot be used"),
        ("import numba_helper_that_is_not_there\n", "numba cannot be imported"),
    ],
    ids=["import-fails", "decorator-fails", "dependency-missing"],
)
def test_a_broken_numba_falls_back_to_numpy_with_a_warning(tmp_path, stub, message):
    """A numba that is installed but fails when imported or when it wraps the loop (a broken llvmlite, say)
    must not stop the engine: `load()` warns and the numpy code runs (found by a fresh-eye check: both crashed
    `msync stream` with a traceback)."""
    (tmp_path / "numba").mkdir()
    (tmp_path / "numba" / "__init__.py").write_text(stub)
    code = (
        "import logging; logging.basicConfig(level=logging.WARNING)\n"
        "from stream_engine import signal_kernel\n"
        "from stream_engine.batch_signals import BatchSignalExtractor\n"
        "assert signal_kernel.load() is None\n"
        "bx = BatchSignalExtractor(); bx.warm_up(); assert not bx.compiled\n"
        "print('numpy path')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "MSYNC_NO_NUMBA")}
    env.update(PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}", MSYNC_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "numpy path" in r.stdout
    assert message in r.stderr and "deriving signals with numpy" in r.stderr
