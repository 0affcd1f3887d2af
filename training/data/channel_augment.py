"""Channel degradations for the distillation student's input: the student hears a degraded copy of the audio
whose clean version the teacher heard, so that the causal encoder learns features that survive noise, level,
band and room.

- additive noise at a drawn SNR (procedural non-speech of `training.data.nonspeech`, or other speech as babble);
- gain (the whole window scaled by a drawn dB value);
- telephone band: resampled to 8 kHz and back (soxr; nothing above 4 kHz survives) with a 300 Hz high-pass;
- reverberation: convolution with a synthetic room impulse response, exponentially decaying Gaussian noise
  (Polack's statistical model of late reverberation: energy decay 60 dB over RT60) after a unit direct path.

All functions take and return (N,) float32 PCM at 16 kHz and draw from an explicit numpy Generator.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SR = 16_000


@dataclasses.dataclass(frozen=True)
class ChannelAugmentConfig:
    """Probabilities and ranges of the degradations (each applied independently, in the order reverberation,
    band, noise, gain). A probability of 0 turns that degradation off.

    Attributes:
        noise_prob: probability of additive noise; snr_db_min/max its SNR range (dB, uniform).
        babble_prob: share of the noisy windows whose noise is other speech (the rest: non-speech kinds).
        gain_db: gain drawn uniformly in [-gain_db, +gain_db] (then clipped to [-1, 1]).
        telephone_prob: probability of the 8 kHz telephone band.
        reverb_prob: probability of reverberation; rt60_min_s/max_s its RT60 range.
    """

    noise_prob: float = 0.7
    snr_db_min: float = 5.0
    snr_db_max: float = 40.0
    babble_prob: float = 0.3
    gain_db: float = 30.0
    telephone_prob: float = 0.2
    reverb_prob: float = 0.3
    rt60_min_s: float = 0.15
    rt60_max_s: float = 0.8

    def __post_init__(self) -> None:
        for name in ("noise_prob", "babble_prob", "telephone_prob", "reverb_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.snr_db_min > self.snr_db_max or self.rt60_min_s > self.rt60_max_s or self.rt60_min_s <= 0:
            raise ValueError("snr_db_min <= snr_db_max and 0 < rt60_min_s <= rt60_max_s are required")
        if self.gain_db < 0:
            raise ValueError(f"gain_db must be >= 0, got {self.gain_db}")


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, np.float64) ** 2))


def add_noise(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so that 10 log10(P_speech / P_noise) = snr_db (powers = mean squares over the whole
    window). Same-length (N,) arrays. Silent speech or silent noise returns the speech unchanged."""
    if speech.shape != noise.shape:
        raise ValueError(f"speech {speech.shape} and noise {noise.shape} differ in shape")
    ps, pn = _power(speech), _power(noise)
    if ps <= 0.0 or pn <= 0.0:
        return speech.astype(np.float32)
    scale = np.sqrt(ps / (pn * 10.0 ** (snr_db / 10.0)))
    return (speech + scale * noise).astype(np.float32)


def telephone_band(pcm: np.ndarray) -> np.ndarray:
    """The 8 kHz telephone channel: 300 Hz high-pass (2nd-order Butterworth), down to 8 kHz and back up (soxr HQ,
    whose anti-alias filter removes everything above about 3.6-4 kHz). Same length out."""
    import soxr
    from scipy.signal import butter, sosfilt

    sos = butter(2, 300.0, btype="highpass", fs=SR, output="sos")
    x = sosfilt(sos, np.asarray(pcm, np.float64)).astype(np.float32)
    low = soxr.resample(x, SR, 8000, quality="HQ")
    back = soxr.resample(low, 8000, SR, quality="HQ").astype(np.float32)
    out = np.zeros_like(x)
    n = min(len(out), len(back))
    out[:n] = back[:n]
    return out


def synthetic_rir(rt60_s: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """A room impulse response: a unit direct path, then Gaussian noise under exp(-6.91 t / RT60) (60 dB of
    energy decay over RT60; Polack's model), starting 2-10 ms later, RT60 long. Normalised to unit energy."""
    n = max(1, int(rt60_s * sr))
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.91 * t / rt60_s)
    delay = int(rng.uniform(0.002, 0.010) * sr)
    rir = np.zeros(n + delay)
    rir[0] = 1.0
    rir[delay:] += 0.3 * tail
    return (rir / np.sqrt(np.sum(rir**2))).astype(np.float32)


def reverberate(pcm: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Causal convolution with `rir` (FFT), cut to the input length and rescaled to the input's RMS."""
    from scipy.signal import fftconvolve

    wet = fftconvolve(np.asarray(pcm, np.float32), np.asarray(rir, np.float32))[: len(pcm)].astype(np.float64)
    p_in, p_out = _power(pcm), float(np.mean(wet**2))
    if p_out > 0:
        wet *= np.sqrt(p_in / p_out)
    return wet.astype(np.float32)


def degrade(
    pcm: np.ndarray, rng: np.random.Generator, cfg: ChannelAugmentConfig, babble: np.ndarray | None = None
) -> np.ndarray:
    """One random degradation of a window (module docstring). `babble`: other speech of the same length to use as
    babble noise (None: only non-speech noise)."""
    from scipy.fft import next_fast_len

    from training.data.nonspeech import sound

    x = np.asarray(pcm, np.float32)
    if rng.random() < cfg.reverb_prob:
        x = reverberate(x, synthetic_rir(rng.uniform(cfg.rt60_min_s, cfg.rt60_max_s), rng))
    if rng.random() < cfg.telephone_prob:
        x = telephone_band(x)
    if rng.random() < cfg.noise_prob:
        if babble is not None and rng.random() < cfg.babble_prob:
            noise = np.asarray(babble, np.float32)
        else:
            # drawn at an FFT-friendly length and cut: the generators filter in the frequency domain, and window
            # lengths such as 352 + 640 k often have a large prime factor
            kind = str(rng.choice(["noise", "hum", "tones", "breathing", "noise"]))
            noise = sound(kind, next_fast_len(len(x), real=True), rng)[: len(x)]
        x = add_noise(x, noise, rng.uniform(cfg.snr_db_min, cfg.snr_db_max))
    if cfg.gain_db > 0:
        x = x * np.float32(10.0 ** (rng.uniform(-cfg.gain_db, cfg.gain_db) / 20.0))
    return np.clip(x, -1.0, 1.0).astype(np.float32)
