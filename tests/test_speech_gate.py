"""The rig signals' speech gate follows the input's level: quiet speech opens the mouth, digital silence and
steady background noise keep it closed, the noise floor falls at once and rises slowly, batched == per stream."""

from __future__ import annotations

import numpy as np
import pytest

from stream_engine.batch_signals import BatchSignalExtractor
from stream_engine.noise_floor import BatchNoiseFloor, NoiseFloor, NoiseFloorConfig
from stream_engine.signals import VISEMES, OneEuroConfig, SignalConfig, SignalExtractor

from fakes import NEUTRAL_FACE, project_face, speechlike

SR, SPF, L = 16000, 640, 2
CFG = SignalConfig(blink_mode="off")


def _levels(pcm: np.ndarray) -> np.ndarray:
    """Per 40 ms frame RMS level in dBFS, floored at -120 (as the engine core computes it)."""
    frames = pcm[: pcm.size // SPF * SPF].reshape(-1, SPF).astype(np.float64)
    return 10.0 * np.log10(np.maximum((frames * frames).mean(1), 1e-12))


def _noise(seconds: float, dbfs: float, seed: int = 1, colour: str = "fan") -> np.ndarray:
    """Steady noise at `dbfs` RMS: "fan" (white, low-passed by an 8-tap average), "white", or "pink" (power
    1/f from 80 Hz, a microphone's usual high-pass)."""
    x = np.random.default_rng(seed).standard_normal(int(seconds * SR))
    if colour == "fan":
        x = np.convolve(x, np.ones(8) / 8, mode="same")
    elif colour == "pink":
        f = np.fft.rfftfreq(x.size, 1 / SR)
        x = np.fft.irfft(np.fft.rfft(x) * np.where(f >= 80.0, 1 / np.sqrt(np.maximum(f, 1.0)), 0.0), x.size)
    return x / np.sqrt(np.mean(x * x)) * 10 ** (dbfs / 20)


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like audio at about -23 dBFS RMS in its syllables (`fakes.speechlike`)."""
    return speechlike(int(seconds * SR), seed=seed).astype(np.float64)


def _mouth_mm(speech_pcm: np.ndarray) -> np.ndarray:
    """What a model that articulates regardless of level does: the mouth follows the speech envelope."""
    lv = _levels(speech_pcm)
    return np.clip((lv + 60.0) / 40.0, 0.0, 1.0) * 20.0


def _run(levels: np.ndarray, mouth_mm: np.ndarray, cfg: SignalConfig = CFG) -> tuple[np.ndarray, np.ndarray]:
    """Feed one stream's frames to a `SignalExtractor` as the engine does (look-ahead level = loudest of the
    next L frames) -> (mouth_open (T,), silent (T,))."""
    ex = SignalExtractor(cfg, reference_face=NEUTRAL_FACE)
    padded = np.concatenate([levels, np.full(L, -120.0)])
    mouth, silent = [], []
    for j, (lv, mm) in enumerate(zip(levels, mouth_mm)):
        s = ex.update(project_face(0, 0, 0, float(mm)), 0.04 * j, float(lv), float(padded[j + 1 : j + 1 + L].max()))
        mouth.append(s.mouth_open)
        silent.append(s.silent)
    return np.array(mouth), np.array(silent)


def test_quiet_speech_opens_the_mouth_like_normal_speech():
    """Speech 38 and 50 dB below normal (syllables near -61 and -73 dBFS) moves the mouth at >= 70 % of the
    normal level's mouth_open where that is > 0.3; the old fixed -50 dBFS gate gave 0 (the case
    quiet-speech-gate)."""
    speech = np.concatenate([np.zeros(SR // 2), _speech(6.0), np.zeros(SR)])
    mm = _mouth_mm(speech)  # the raw landmarks move the same at every level
    normal, _ = _run(_levels(speech), mm)
    open_frames = normal > 0.3
    assert open_frames.sum() > 30
    for gain_db in (-38.0, -50.0):
        quiet, silent = _run(_levels(speech * 10 ** (gain_db / 20)), mm)
        assert quiet[open_frames].mean() >= 0.7 * normal[open_frames].mean(), gain_db
        assert quiet[-10:].max() == 0.0 and silent[-10:].all()  # and it still closes after the speech
    fixed, _ = _run(_levels(speech * 10 ** (-38.0 / 20)), mm, SignalConfig(blink_mode="off", silence_dbfs=-50.0))
    assert fixed.max() == 0.0  # what the fixed gate did


@pytest.mark.parametrize("colour", ["fan", "white", "pink"])
def test_mouth_stays_closed_in_silence_dither_and_steady_noise(colour):
    """Non-speech input closes the mouth although the landmarks keep moving: digital silence, 16-bit dither,
    and steady -48 dBFS noise (once the floor has seen it); speech over that noise still opens it."""
    moving = 15.0 * (0.5 + 0.5 * np.sin(np.arange(100) * 0.7))  # a model that opens the mouth on anything
    mouth, silent = _run(np.full(100, -120.0), moving)
    assert mouth[10:].max() == 0.0 and silent[5:].all()  # hold 120 ms, then a 60 ms release
    dither = np.random.default_rng(3).triangular(-1, 0, 1, 100 * SPF) / 32768.0
    mouth, _ = _run(_levels(dither), moving)
    assert mouth[10:].max() == 0.0

    fan = _noise(10.0, -48.0, colour=colour)
    pcm = fan.copy()
    pcm[: 3 * SR] += _speech(3.0)  # speech 0-3 s, noise alone 3-6 s, speech 6-8.5 s, noise alone to 10 s
    pcm[6 * SR : int(8.5 * SR)] += _speech(2.5, seed=1)
    levels = _levels(pcm)
    mm = np.maximum(_mouth_mm(pcm), 12.0 * (0.5 + 0.5 * np.sin(0.9 * np.arange(levels.size))))  # moves in noise
    mouth, silent = _run(levels, mm)
    t = np.arange(levels.size) * 0.04
    pause = (t >= 3.4) & (t < 5.9)
    tail = t >= 8.9
    assert mouth[pause].max() == 0.0 and silent[pause].all()
    assert mouth[tail].max() == 0.0 and silent[tail].all()
    speaking = (t >= 6.0) & (t < 8.5)
    assert (mouth[speaking] > 0.3).mean() > 0.3 and (~silent[speaking]).mean() > 0.8
    old, _ = _run(
        levels, mm, SignalConfig(blink_mode="off", silence_dbfs=-50.0, noise_margin_db=0.0, noise_smoothing=0.0)
    )
    assert old[pause].mean() > 0.1  # a fixed gate below the noise lets the pause "talk"


def test_mouth_closes_soon_after_speech_stops_in_noise():
    """From the last speech frame, the gate closes within hold + release (+ look-ahead), in noise as in silence."""
    for bed in (np.zeros(6 * SR), _noise(6.0, -48.0)):
        pcm = bed.copy()
        pcm[: 4 * SR] += _speech(4.0)[: 4 * SR] * (np.arange(4 * SR) < 3.2 * SR)
        levels = _levels(pcm)
        mouth, _ = _run(levels, np.full(levels.size, 15.0))
        assert mouth[int(3.2 / 0.04) + 10 :].max() == 0.0  # 400 ms after the speech


def test_noise_floor_falls_at_once_and_rises_after_the_window():
    nf = NoiseFloor(NoiseFloorConfig(window_s=2.0, subwindows=4, init_dbfs=-90.0))
    floors = [nf.update(-40.0, 0.04) for _ in range(25)]  # 1 s of -40 dBFS: the prior still holds
    assert max(floors) == -90.0
    floors = [nf.update(-40.0, 0.04) for _ in range(40)]  # by 2.6 s every sub-window has seen -40 (13 frames each)
    assert floors[-1] == -40.0
    assert nf.update(-70.0, 0.04) == -70.0  # falls in the same frame
    rising = [nf.update(-40.0, 0.04) for _ in range(75)]
    first_up = next(i for i, f in enumerate(rising) if f > -70.0)
    assert 1.4 <= 0.04 * first_up <= 2.1  # rises only once the quiet frame has left the window
    assert rising[-1] == -40.0 and nf.floor_dbfs == -40.0
    with pytest.raises(ValueError):
        NoiseFloorConfig(0.0, 4, -90.0)
    with pytest.raises(ValueError):
        SignalConfig(noise_subwindows=1)


def test_gate_follows_a_rising_background_within_the_window():
    """Noise that appears in the middle of a stream (after its first window was measured in a quieter
    background) is adopted as the floor after at most the window, so a fan switched on keeps the mouth closed
    after ~2 s (it opens before: the rising side is slow by design)."""
    pcm = np.concatenate([_noise(2.5, -70.0, seed=4), _noise(6.0, -45.0)])
    levels = _levels(pcm)
    mouth, silent = _run(levels, np.full(levels.size, 15.0))
    t = np.arange(levels.size) * 0.04
    assert silent[
        (t > 1.0) & (t < 2.4)
    ].all()  # the quiet background, learnt (2.4: before the look-ahead hears the fan)
    assert not silent[(t > 2.7) & (t < 3.5)].any()  # the louder one not yet
    later = t >= 2.5 + CFG.noise_window_s + 0.5
    assert mouth[later].max() == 0.0 and silent[later].all()


@pytest.mark.parametrize("colour", ["fan", "white", "pink"])
@pytest.mark.parametrize("dbfs", [-60.0, -45.0, -30.0])
def test_a_stream_that_starts_in_steady_noise_closes_the_mouth_within_a_second(colour, dbfs):
    """A microphone's stream usually starts in its room's noise, where a model may still move the mouth. Eight
    steady frames make the floor adopt the noise (`noise_floor` module docstring), so the mouth is shut from
    ~0.6 s instead of after the whole window, at any level; with the steady start off, the noise passes for
    speech until the window has gone by."""
    levels = _levels(_noise(4.0, dbfs, colour=colour))
    t = np.arange(levels.size) * 0.04
    moving = 10.0 + 8.0 * np.sin(2 * np.pi * 3.0 * t)  # the raw mouth opening and closing, mm
    mouth, silent = _run(levels, moving)
    assert mouth[t >= 0.7].max() == 0.0 and silent[t >= 0.7].all()
    old, old_silent = _run(levels, moving, SignalConfig(blink_mode="off", noise_start_steady_frames=0))
    assert not old_silent[(t > 0.2) & (t < 1.5)].any() and old[(t > 0.5) & (t < 1.5)].max() > 0.5


def test_a_stream_that_starts_with_speech_keeps_its_mouth_moving():
    """Speech from the first sample (or after digital silence) is not steady, so the floor keeps its low prior
    and the mouth moves as with the steady start off."""
    for lead in (0, SR // 2):
        speech = np.concatenate([np.zeros(lead), _speech(3.0, seed=5)])
        levels, mm = _levels(speech), _mouth_mm(speech)
        mouth, _ = _run(levels, mm)
        old, _ = _run(levels, mm, SignalConfig(blink_mode="off", noise_start_steady_frames=0))
        assert (old > 0.3).sum() > 10
        np.testing.assert_array_equal(mouth, old)


def test_a_steady_start_needs_consecutive_frames_above_the_skip_level():
    """Frames below the skip level break a steady run: the syllables of quiet speech whose pauses fall below it
    are not heard as a steady background (8 steady frames with one skipped among them adopt nothing)."""
    nfc = NoiseFloorConfig(2.0, 4, -90.0, skip_below_dbfs=-75.0, start_steady_frames=8, start_steady_db=2.0)
    broken = NoiseFloor(nfc)
    for k in range(16):
        floor = broken.update(-120.0 if k % 5 == 4 else -50.0, 0.04)
    assert floor == -90.0
    steady = NoiseFloor(nfc)
    floors = [steady.update(-50.0, 0.04) for _ in range(8)]
    assert floors[6] == -90.0 and floors[7] == -50.0
    with pytest.raises(ValueError):
        NoiseFloorConfig(2.0, 4, -90.0, start_steady_frames=-1)


def test_digital_silence_does_not_make_the_background_pass_for_speech():
    """Noise, then 1.5 s of digital silence (push-to-talk released, a stalled stream filled with silence), then
    the same noise: the floor skips the silence, so the returning noise keeps the mouth closed at once instead
    of passing for speech until a whole window has gone by."""
    pcm = np.concatenate([_noise(4.0, -60.0, seed=2), np.zeros(int(1.5 * SR)), _noise(3.0, -60.0, seed=3)])
    levels = _levels(pcm)
    nf = NoiseFloor(NoiseFloorConfig(2.0, 4, -90.0, skip_below_dbfs=CFG.silence_dbfs))
    floors = np.array([nf.update(float(lv), 0.04) for lv in levels])
    t = np.arange(levels.size) * 0.04
    assert np.all(np.abs(floors[t >= 3.0] - floors[int(3.0 / 0.04)]) < 3.0)  # the floor holds through the silence
    mouth, silent = _run(levels, np.full(levels.size, 15.0))
    back = t >= 5.5 + 0.12  # the returning noise, after the look-ahead
    assert mouth[back].max() == 0.0 and silent[back].all()
    nothing_skipped = NoiseFloor(NoiseFloorConfig(2.0, 4, -90.0))
    assert min(nothing_skipped.update(float(lv), 0.04) for lv in levels) < -100.0  # what the silence did before


@pytest.mark.parametrize("edge", ["cut mid-frame", "fade 250 ms"])
def test_a_partly_silent_frame_or_a_fade_does_not_pull_the_floor_down(edge):
    """The background stopping or coming back inside a frame gives one frame between the noise and digital
    silence (-66 dBFS here), and a noise gate's release fades it over a few frames. On raw levels either lowered
    the floor, so the returning noise passed for speech for up to 2 s (a fresh-eye finding); the smoothed levels
    of `noise_smoothing` keep the floor at the background."""
    noise_a, noise_b = _noise(4.0, -55.0, seed=2), _noise(3.0, -55.0, seed=3)
    if edge == "cut mid-frame":
        noise_a, noise_b = noise_a[: noise_a.size - SPF + 50], np.concatenate([np.zeros(SPF - 50), noise_b])
    else:
        n = int(0.25 * SR)
        noise_a[-n:] *= np.linspace(1.0, 0.0, n)
    pcm = np.concatenate([noise_a, np.zeros(int(1.5 * SR)), noise_b])
    levels = _levels(pcm)
    t = np.arange(levels.size) * 0.04
    back = t >= 5.5 + 0.16
    mouth, silent = _run(levels, np.full(levels.size, 15.0))
    assert mouth[back].max() == 0.0 and silent[back].all()
    raw, raw_silent = _run(levels, np.full(levels.size, 15.0), SignalConfig(blink_mode="off", noise_smoothing=0.0))
    assert not raw_silent[back].all()  # what the raw minimum did
    with pytest.raises(ValueError):
        SignalConfig(noise_smoothing=1.0)


@pytest.mark.parametrize("steady_frames", [0, 1, 4])
def test_noise_floor_batched_equals_per_stream(steady_frames):
    rng = np.random.default_rng(0)
    nfc = NoiseFloorConfig(1.0, 3, -90.0, skip_below_dbfs=-75.0, smoothing=0.8, start_steady_frames=steady_frames)
    singles = [NoiseFloor(nfc) for _ in range(4)]
    batch = BatchNoiseFloor(nfc, capacity=6)
    slots = np.array([5, 0, 2, 3])
    for s in slots:
        batch.open(int(s))
    adopted = 0
    for k in range(200):
        if k == 100:  # a fresh start for two slots: the steady start runs again
            for i in (0, 2):
                batch.open(int(slots[i]))
                singles[i] = NoiseFloor(nfc)
        active = np.flatnonzero(rng.random(4) < 0.8)
        steady_now = (k // 7) % 2 == 0  # stretches of a steady background (with skipped frames) and of speech
        level = np.where(steady_now, rng.normal(-50.0, 0.3, active.size), rng.normal(-50.0, 15.0, active.size))
        adopted += int(steady_frames > 0 and batch.minima[slots].max() > -90.0 and k < 20)
        dt = rng.choice([0.04, 0.04, 0.08, 0.001], active.size)
        got = batch.update(slots[active], level, dt)
        for row, i in enumerate(active):
            assert got[row] == singles[i].update(float(level[row]), float(dt[row]))
    assert (adopted > 0) == (steady_frames > 0)  # the steady start did run


def test_batch_extractor_gate_equals_per_stream_with_adaptive_levels():
    """Quiet speech, noise that comes and goes, silence: the batched gate decides exactly as the per-stream
    one, across a reset and a capacity growth (a short window so the floor moves within the test)."""
    cfg = SignalConfig(
        blink_mode="off", noise_window_s=0.6, noise_subwindows=3, mouth_filter=OneEuroConfig(min_cutoff_hz=2.0)
    )
    T = 200
    rng = np.random.default_rng(1)
    speech = _levels(_speech(T * 0.04 + 0.1))[:T]
    patterns = [
        speech - 38.0,  # quiet speech
        np.where(np.arange(T) % 80 < 40, np.maximum(speech, rng.normal(-48, 1, T)), rng.normal(-48, 1, T)),
        np.where(np.arange(T) < 100, -120.0, rng.normal(-40, 1, T)),  # a fan switched on
        np.where(np.arange(T) < 100, rng.normal(-40, 1, T), -120.0),  # and off
    ]
    mm = _mouth_mm(_speech(T * 0.04 + 0.1))[:T]
    singles = [SignalExtractor(cfg, NEUTRAL_FACE) for _ in patterns]
    bx = BatchSignalExtractor(cfg, capacity=2)
    slots = [1, 0, 2, 3]
    gated = 0
    for t in range(T):
        if t == 60:
            bx.grow(4)
        for slot in slots:
            if t == (0 if slot < 2 else 60):
                bx.open(slot, NEUTRAL_FACE)
        if t == 130:
            singles[1].reset()
            bx.reset(slots[1])
        active = [i for i in range(4) if slots[i] < 2 or t >= 60]
        lm = np.stack([project_face(0, 0, 0, float(mm[t])) for _ in active])
        level = np.array([patterns[i][t] for i in active])
        ahead = np.array([patterns[i][min(T - 1, t + 1)] for i in active])
        got = bx.update([slots[i] for i in active], lm, np.full(len(active), 0.04 * t), level, ahead)
        for row, i in enumerate(active):
            want = singles[i].update(lm[row], 0.04 * t, float(level[row]), float(ahead[row]))
            assert bool(got.silent[row]) == want.silent
            np.testing.assert_allclose(got.mouth_open[row], want.mouth_open, atol=1e-9)
            np.testing.assert_allclose(got.visemes[row], [want.visemes[v] for v in VISEMES], atol=1e-9)
            assert bx.noise_floor_dbfs(slots[i]) == singles[i].noise_floor_dbfs
            gated += want.silent
    assert gated > 50  # the gate did close in these streams


def test_input_too_quiet_for_the_gate_is_reported_once(caplog):
    """Speech 66 dB below normal (peaks near -80 dBFS, under `silence_dbfs`) with an articulating face: after
    `quiet_warning_s` of it, one warning and `quiet_input`, in both extractors at the same frame; speech the gate
    takes, digital silence and a still face never warn."""
    speech = np.concatenate([np.zeros(SR // 2), _speech(14.0)])
    mm = _mouth_mm(speech)
    levels = _levels(speech * 10 ** (-66.0 / 20))
    ex = SignalExtractor(CFG, NEUTRAL_FACE, name="mic")
    bx = BatchSignalExtractor(CFG, capacity=3)
    bx.open(2, NEUTRAL_FACE, name="mic")
    first = {}
    with caplog.at_level("WARNING"):
        for j, lv in enumerate(levels):
            face = project_face(0, 0, 0, float(mm[j]))
            ex.update(face, 0.04 * j, float(lv), float(lv))
            bx.update([2], face[None], [0.04 * j], [lv], [lv])
            if ex.quiet_input:
                first.setdefault("single", j)
            if bx.quiet_input[2]:
                first.setdefault("batch", j)
    assert first["single"] == first["batch"] and 0.04 * first["single"] >= CFG.quiet_warning_s
    messages = [r.getMessage() for r in caplog.records if "very quiet" in r.getMessage()]
    assert len(messages) == 2 and all("stream mic" in m for m in messages)

    caplog.clear()
    with caplog.at_level("WARNING"):
        for gain_db in (0.0, -38.0):
            _run(_levels(speech * 10 ** (gain_db / 20)), mm)
        _run(np.full(400, -120.0), np.tile([0.0, 15.0], 200))  # digital silence, a face that moves
        _run(levels, np.zeros(levels.size))  # quiet input, a still face
    assert not [r for r in caplog.records if "very quiet" in r.getMessage()]
