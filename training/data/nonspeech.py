"""Non-speech sounds mixed into generator training windows, so that the model itself learns to rest its mouth.

The evaluation's non-speech set (`training.eval.rest`) uses six fixed sounds; training draws from the same kinds
with randomised parameters around them (levels, colours, frequencies, rhythm), so that the model learns the
kinds rather than six waveforms:

- "silence": digital zeros (a muted or gated microphone);
- "noise": steady noise (white over the full band, white low-passed at 1-8 kHz, or pink), -60 to -36 dBFS RMS
  (fans, preamps, microphone hiss; full-band white was added after model 0.3.0's first cut opened its mouth in it);
  with probability `RestMixConfig.shaped_noise_share`, noise of a random smooth spectrum instead
  (:func:`shaped_envelope`): model 0.3.1 held its mouth open after speech in the steady noise of
  `../shared/cases/noise-floor-mouth` and in about half of such random spectra, whose energy sits where a vowel's
  formants do, while it rested in the three colours above;
- "hum": mains hum at 50 or 60 Hz with 1-6 decaying harmonics, -55 to -32 dBFS RMS;
- "tones": music without voice: a sustained chord (2-4 notes with harmonics) or a melody of single tones,
  -40 to -22 dBFS RMS;
- "breathing": band-passed noise bursts of 0.5-1.5 s every 2-4 s, -55 to -40 dBFS RMS at the burst peak.

A mixed window (`mix_window`) lays one of these over a speech window in one of three layouts:

- "appended": speech until target frame s, then the sound until the end (speech ends mid-window);
- "inserted": speech until s, the sound for a pause, then the speech resumes where it stopped (its frames and
  landmarks shifted accordingly);
- "pure": the sound alone over the whole window, warm-up included (a stream that has not heard speech yet);
  with probability `fresh_start_prob` the window is a stream's first frames instead: silent and invalid before
  target frame 0 (as `training.eval.generation.generate` starts a stream), the sound from frame 0 on. Model 0.3.1
  opened its mouth to ~0.1 IOD for the first 5-12 frames of a stream that began in steady noise, because no
  window started a stream inside a sound.

Steady kinds (noise, hum) also run under the speech at the same level with probability `under_speech_prob`,
like a fan under a microphone. The result says, per target frame, whether it holds speech (the landmark targets
apply) and whether the mouth should be at rest (the rest loss applies), the first `grace_frames` after the
speech ends being neither.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SR = 16000
KINDS = ("silence", "noise", "hum", "tones", "breathing")
LAYOUTS = ("appended", "inserted", "pure")
STEADY = ("noise", "hum")


@dataclasses.dataclass(frozen=True)
class RestMixConfig:
    """How non-speech is mixed into generator windows (see module doc). `fraction` = 0 turns mixing off.

    Attributes:
        fraction: share of each batch's windows that get a non-speech segment (rounded to whole windows).
        kind_weights: relative draw weights of `KINDS`.
        layout_weights: relative draw weights of `LAYOUTS`.
        min_speech_frames: target frames of speech kept before the sound in "appended"/"inserted" windows.
        min_rest_frames: shortest non-speech segment inside the target frames.
        grace_frames: frames after speech ends before the rest loss applies (3 = 120 ms; the target is 200 ms).
        under_speech_prob: probability that a steady sound also runs under the speech.
        mean_face_prob: probability that a "pure" window uses the mean training face as its reference frame
            (the runtime default) instead of the window's first ground-truth frame.
        shaped_noise_share: probability that a "noise" sound has a random smooth spectrum
            (:func:`shaped_envelope`) instead of one of the three fixed colours; 0 draws exactly as before.
        fresh_start_prob: probability that a "pure" window is the start of a stream (see module doc); 0 draws
            exactly as before.
    """

    fraction: float = 0.0
    kind_weights: tuple[float, ...] = (1.0, 1.5, 1.0, 1.0, 1.0)
    layout_weights: tuple[float, ...] = (2.0, 1.0, 1.0)
    min_speech_frames: int = 12
    min_rest_frames: int = 15
    grace_frames: int = 3
    under_speech_prob: float = 0.5
    mean_face_prob: float = 0.5
    shaped_noise_share: float = 0.0
    fresh_start_prob: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {self.fraction}")
        if len(self.kind_weights) != len(KINDS) or len(self.layout_weights) != len(LAYOUTS):
            raise ValueError(f"kind_weights needs {len(KINDS)} values and layout_weights {len(LAYOUTS)}")
        if min(self.kind_weights) < 0 or min(self.layout_weights) < 0:
            raise ValueError("draw weights must be >= 0")
        if sum(self.kind_weights) <= 0 or sum(self.layout_weights) <= 0:
            raise ValueError("kind_weights and layout_weights each need at least one weight > 0")
        if self.min_speech_frames < 1 or self.min_rest_frames < 1:
            raise ValueError("min_speech_frames and min_rest_frames must be >= 1")
        if self.grace_frames < 0:
            raise ValueError(f"grace_frames must be >= 0, got {self.grace_frames}")
        for name in ("under_speech_prob", "mean_face_prob", "shaped_noise_share", "fresh_start_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def scale_to_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    """`x` scaled so that its RMS is `dbfs` dB relative to full scale (1.0); silence stays silence."""
    rms = float(np.sqrt(np.mean(x**2)))
    return x * (10.0 ** (dbfs / 20.0) / max(rms, 1e-12))


def shape_spectrum(x: np.ndarray, gain_of_hz) -> np.ndarray:
    """`x` (16 kHz) filtered in the frequency domain: each rFFT bin times `gain_of_hz(bin frequencies in Hz)`
    (a boolean mask is a brick-wall band)."""
    spec = np.fft.rfft(x)
    return np.fft.irfft(spec * gain_of_hz(np.fft.rfftfreq(len(x), 1.0 / SR)), n=len(x))


#: Octave points (Hz) of :func:`shaped_envelope`, 31 Hz to 8 kHz.
ENVELOPE_OCTAVES_HZ = (31.25, 62.5, 125.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0)


def shaped_envelope(
    rng: np.random.Generator, tilt_db_per_octave: tuple[float, float] = (-9.0, 3.0), spread_db: float = 5.0
):
    """A random smooth amplitude spectrum for steady noise (fans, rooms, preamps of unknown colour).

    Its level in dB at each of `ENVELOPE_OCTAVES_HZ` is a tilt drawn uniformly from `tilt_db_per_octave` (dB per
    octave, 0 dB at 1 kHz) plus an independent normal deviation of `spread_db`; between the octave points it is
    linear in dB over log-frequency, and flat outside them. -3 dB/octave is pink, -6 brown-like.

    Returns:
        gain_of_hz: f (Hz, array) -> amplitude gain (array), for :func:`shape_spectrum`.
    """
    tilt = rng.uniform(*tilt_db_per_octave)
    octaves = np.log2(np.asarray(ENVELOPE_OCTAVES_HZ) / 1000.0)
    db = tilt * octaves + rng.normal(0.0, spread_db, len(octaves))

    def gain_of_hz(f: np.ndarray) -> np.ndarray:
        return 10.0 ** (np.interp(np.log2(np.maximum(f, 1.0) / 1000.0), octaves, db) / 20.0)

    return gain_of_hz


def sound(kind: str, num_samples: int, rng: np.random.Generator, shaped_noise_share: float = 0.0) -> np.ndarray:
    """(num_samples,) float32 PCM at 16 kHz of one non-speech kind with random parameters (see module doc).

    Args:
        shaped_noise_share: probability that "noise" has a random smooth spectrum (:func:`shaped_envelope`);
            at 0 no extra random number is drawn, so earlier configurations draw the same sounds.
    Raises:
        ValueError: unknown kind.
    """
    t = np.arange(num_samples) / SR
    if kind == "silence":
        return np.zeros(num_samples, np.float32)
    if kind == "noise":
        white = rng.standard_normal(num_samples)
        u = rng.uniform()
        if shaped_noise_share > 0.0 and rng.uniform() < shaped_noise_share:
            x = shape_spectrum(white, shaped_envelope(rng))
        elif u < 0.25:  # full band: microphone and preamp hiss
            x = white
        elif u < 0.6:
            cutoff = rng.uniform(1000.0, 8000.0)
            x = shape_spectrum(white, lambda f: (f <= cutoff).astype(float))
        else:  # pink: power falls as 1/f
            x = shape_spectrum(white, lambda f: 1.0 / np.sqrt(np.maximum(f, 20.0)))
        x = scale_to_dbfs(x, rng.uniform(-60.0, -36.0))
    elif kind == "hum":
        f0 = 50.0 if rng.uniform() < 0.5 else 60.0
        n_harm = int(rng.integers(1, 7))
        decay = rng.uniform(0.5, 2.0)
        x = np.sum(
            [np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k**decay for k in range(1, n_harm + 1)],
            axis=0,
        )
        x = scale_to_dbfs(x, rng.uniform(-55.0, -32.0))
    elif kind == "tones":
        root = 110.0 * 2.0 ** (rng.uniform(0, 36) / 12.0)  # A2 .. A5
        if rng.uniform() < 0.6:  # a sustained chord
            steps = rng.choice([0, 3, 4, 7, 10, 12], size=int(rng.integers(2, 5)), replace=False)
            freqs = [root * 2.0 ** (s / 12.0) for s in steps]
            x = np.sum(
                [np.sin(2 * np.pi * f * k * t + rng.uniform(0, 2 * np.pi)) / k**1.5 for f in freqs for k in (1, 2, 3)],
                axis=0,
            )
        else:  # a melody of single tones, 0.2-0.6 s each, with a short fade per note
            x = np.zeros(num_samples)
            pos = 0
            while pos < num_samples:
                n = int(rng.uniform(0.2, 0.6) * SR)
                f = root * 2.0 ** (int(rng.integers(-5, 8)) / 12.0)
                seg = np.sin(2 * np.pi * f * np.arange(n) / SR) + 0.3 * np.sin(4 * np.pi * f * np.arange(n) / SR)
                fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * SR))
                x[pos : pos + n] = (seg * fade)[: num_samples - pos]
                pos += n
        x = scale_to_dbfs(x, rng.uniform(-40.0, -22.0))
    elif kind == "breathing":
        lo, hi = rng.uniform(200.0, 600.0), rng.uniform(2000.0, 5000.0)
        band = shape_spectrum(rng.standard_normal(num_samples), lambda f: ((f >= lo) & (f <= hi)).astype(float))
        period, length = rng.uniform(2.0, 4.0), rng.uniform(0.5, 1.5)
        phase = (t + rng.uniform(0, period)) % period
        env = np.where(phase < length, np.sin(np.pi * np.minimum(phase / length, 1.0)) ** 2, 0.0)
        x = scale_to_dbfs(band, rng.uniform(-55.0, -40.0)) * env
    else:
        raise ValueError(f"unknown non-speech kind {kind!r}; expected one of {KINDS}")
    return np.asarray(x, np.float32)


@dataclasses.dataclass
class MixedWindow:
    """One window after mixing.

    audio: (num_samples,) PCM of the window (same length and layout as the input).
    landmarks: (T + 1, 68, 2): the reference frame and T targets (targets of non-speech frames are left as
        they were; `speech` says which ones apply).
    speech: (T,) bool, the target frame holds speech (landmark targets apply).
    rest: (T,) bool, the mouth should be at rest (non-speech, after the grace frames).
    kind, layout: what was mixed in.
    fresh_start: the window is a stream's first frames: its `audio` is silent before target frame 0 and the
        caller must mark the warm-up frames invalid (`WindowBatch.valid`).
    """

    audio: np.ndarray
    landmarks: np.ndarray
    speech: np.ndarray
    rest: np.ndarray
    kind: str
    layout: str
    fresh_start: bool = False


def _draw(rng: np.random.Generator, names: tuple[str, ...], weights: tuple[float, ...]) -> str:
    p = np.asarray(weights, np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def mix_window(
    audio: np.ndarray,
    landmarks: np.ndarray,
    *,
    warmup_frames: int,
    lookahead_frames: int,
    context_samples: int,
    samples_per_frame: int,
    rng: np.random.Generator,
    cfg: RestMixConfig,
    mean_face: np.ndarray | None = None,
) -> MixedWindow:
    """Lay a random non-speech sound over one generator window (see module doc for the layouts).

    Args:
        audio: (context + spf * (W + T + L),) window PCM, as `WindowSampler.window` builds it: target frame t is
            window frame W + t, whose samples start at context + spf * (W + t).
        landmarks: (T + 1, 68, 2) reference frame then targets.
        mean_face: (68, 2) reference for "pure" windows with probability `cfg.mean_face_prob`.
    Returns:
        A `MixedWindow`. Frames generated just before the sound starts already hear it through the look-ahead;
        they keep their speech targets (ground truth saw the same speech).
    Raises:
        ValueError: the window has too few target frames for the configured speech and rest lengths.
    """
    spf, ctx, w = samples_per_frame, context_samples, warmup_frames
    t_frames = len(landmarks) - 1
    if len(audio) != ctx + spf * (w + t_frames + lookahead_frames):
        raise ValueError(f"audio of {len(audio)} samples does not match {t_frames} target frames")
    kind = _draw(rng, KINDS, cfg.kind_weights)
    layout = _draw(rng, LAYOUTS, cfg.layout_weights)
    need = cfg.min_speech_frames + cfg.min_rest_frames
    if layout != "pure" and t_frames < need:
        raise ValueError(f"{t_frames} target frames cannot hold {need} frames of speech and rest")
    noise = sound(kind, len(audio), rng, cfg.shaped_noise_share)
    audio = np.asarray(audio, np.float32).copy()
    lm = np.asarray(landmarks, np.float32).copy()
    speech = np.zeros(t_frames, bool)
    rest = np.zeros(t_frames, bool)
    if layout == "pure":
        audio = noise
        rest[:] = True
        if mean_face is not None and rng.uniform() < cfg.mean_face_prob:
            lm[0] = mean_face
        fresh = cfg.fresh_start_prob > 0.0 and rng.uniform() < cfg.fresh_start_prob
        if fresh:
            audio = audio.copy()
            audio[: ctx + spf * w] = 0.0
        return MixedWindow(audio, lm, speech, rest, kind, layout, fresh)

    s = int(rng.integers(cfg.min_speech_frames, t_frames - cfg.min_rest_frames + 1))  # first non-speech frame
    cut = ctx + spf * (w + s)
    if layout == "appended":
        e = t_frames + lookahead_frames  # non-speech to the end of the window (look-ahead included)
    else:
        e = int(rng.integers(s + cfg.min_rest_frames, t_frames + 1))
    stop = ctx + spf * (w + e)
    resumed = audio[cut:].copy()  # the speech that continues after the pause
    audio[cut:stop] = noise[cut:stop]
    if stop < len(audio):
        audio[stop:] = resumed[: len(audio) - stop]
        lm[1 + e :] = landmarks[1 + s : 1 + s + (t_frames - e)]
    if kind in STEADY and rng.uniform() < cfg.under_speech_prob:
        audio[:cut] += noise[:cut]
        audio[stop:] += noise[stop:]
    speech[:s] = True
    speech[e:] = True
    rest[min(s + cfg.grace_frames, e) : min(e, t_frames)] = True
    # Frames just before the speech resumes already hear it through the look-ahead: no rest target there.
    if e < t_frames:
        rest[max(s, e - lookahead_frames) : e] = False
    return MixedWindow(np.clip(audio, -1.0, 1.0), lm, speech, rest, kind, layout)
