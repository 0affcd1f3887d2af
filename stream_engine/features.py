"""The causal audio front end: 16 kHz mono PCM -> 26 MFCC at 100 Hz.

This module is the *definition* of msync's audio features. The torch module that runs inside training and
inside the exported step (`training.frontend.TorchMfcc`) is built from the matrices returned by
:func:`frontend_matrices`, and the tests hold both implementations to this numpy reference.

Framing convention (causal, no centring)::

    mfcc frame j covers samples [hop*j - context_samples, hop*j + hop)    with context_samples = n_fft - hop

i.e. frame j *ends* at sample hop*(j+1) and is computable as soon as that sample has arrived. The signal is
preceded by `context_samples` zeros (digital silence before the stream starts). With the defaults, landmark
frame t (samples [640t, 640t+640)) owns mfcc frames 4t .. 4t+3, and a stream step that receives 640 new
samples keeps a 352-sample carry and emits exactly 4 new mfcc frames.

Every operation is frame-local (no global normalisation, no `top_db` clipping, a fixed log floor), so the
features of a signal do not depend on how it was chunked.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np


@dataclasses.dataclass(frozen=True)
class FrontEndConfig:
    """Parameters of the causal MFCC front end.

    Attributes:
        sample_rate_hz: input sample rate; everything else is resampled to it first.
        n_fft: FFT size in samples; the analysis window is centred inside it.
        win_length: Hann window length in samples (25 ms at 16 kHz).
        hop_length: hop between mfcc frames in samples (10 ms).
        n_mels: number of mel bands (Slaney mel scale and normalisation, as librosa's default).
        n_mfcc: number of cepstral coefficients kept (DCT-II, orthonormal).
        fmin_hz, fmax_hz: mel filterbank range.
        log_floor: fixed floor on mel power before the log (no data-dependent reference).
        samples_per_landmark_frame: 640 = 40 ms at 16 kHz (25 fps landmarks).
    """

    sample_rate_hz: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 40
    n_mfcc: int = 26
    fmin_hz: float = 0.0
    fmax_hz: float = 8000.0
    log_floor: float = 1e-10
    samples_per_landmark_frame: int = 640

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        if self.samples_per_landmark_frame % self.hop_length:
            raise ValueError("samples_per_landmark_frame must be a multiple of hop_length")
        if self.n_mfcc > self.n_mels:
            raise ValueError("n_mfcc must not exceed n_mels")

    @property
    def context_samples(self) -> int:
        """Samples of left context an mfcc frame needs beyond its own hop (352 by default)."""
        return self.n_fft - self.hop_length

    @property
    def mfcc_per_landmark_frame(self) -> int:
        """MFCC frames per landmark frame (4 by default)."""
        return self.samples_per_landmark_frame // self.hop_length

    @property
    def landmark_fps(self) -> float:
        return self.sample_rate_hz / self.samples_per_landmark_frame

    @property
    def mfcc_rate_hz(self) -> float:
        return self.sample_rate_hz / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Number of complete mfcc frames in a signal of `num_samples` samples (from the stream start)."""
        return num_samples // self.hop_length


@lru_cache(maxsize=8)
def frontend_matrices(cfg: FrontEndConfig) -> dict[str, np.ndarray]:
    """Precomputed float64 matrices that define the transform.

    Returns:
        window: (n_fft,) periodic Hann of `win_length`, zero-padded to `n_fft` and centred.
        dft_cos, dft_sin: (n_fft, n_fft//2 + 1) real DFT matrices with the window folded in, so that
            frames @ dft_cos and frames @ dft_sin give the real and imaginary spectrum.
        mel: (n_fft//2 + 1, n_mels) mel filterbank (transposed, ready for a right product).
        dct: (n_mels, n_mfcc) orthonormal DCT-II (transposed).
    """
    import librosa  # the field's standard filterbank; only needed where the matrices are built
    import scipy.fft

    window = librosa.filters.get_window("hann", cfg.win_length, fftbins=True).astype(np.float64)
    window = librosa.util.pad_center(window, size=cfg.n_fft)
    n = np.arange(cfg.n_fft)[:, None]
    k = np.arange(cfg.n_fft // 2 + 1)[None, :]
    angle = 2.0 * np.pi * n * k / cfg.n_fft
    dft_cos = window[:, None] * np.cos(angle)
    dft_sin = -window[:, None] * np.sin(angle)
    mel = librosa.filters.mel(
        sr=cfg.sample_rate_hz,
        n_fft=cfg.n_fft,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin_hz,
        fmax=cfg.fmax_hz,
        dtype=np.float64,
    )
    dct = scipy.fft.dct(np.eye(cfg.n_mels), type=2, norm="ortho", axis=0)[: cfg.n_mfcc]
    return {"window": window, "dft_cos": dft_cos, "dft_sin": dft_sin, "mel": mel.T.copy(), "dct": dct.T.copy()}


def _check_audio(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"expected mono audio of shape (num_samples,), got shape {samples.shape}")
    if not np.issubdtype(samples.dtype, np.floating):
        raise TypeError(f"expected float PCM in [-1, 1], got dtype {samples.dtype}")
    if not np.all(np.isfinite(samples)):
        raise ValueError("audio contains NaN or infinite samples")
    return samples


def logmel_frames(frames: np.ndarray, cfg: FrontEndConfig = FrontEndConfig()) -> np.ndarray:
    """Log-mel energies (dB) of already cut analysis frames.

    Args:
        frames: (num_frames, n_fft) raw samples of each frame (the window is applied here).
    Returns:
        (num_frames, n_mels) float64 log-mel in dB, floored at 10*log10(log_floor).
    """
    m = frontend_matrices(cfg)
    spectrum = np.fft.rfft(frames.astype(np.float64) * m["window"], n=cfg.n_fft, axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    out: np.ndarray = 10.0 * np.log10(np.maximum(power @ m["mel"], cfg.log_floor))
    return out


def mfcc_from_logmel(logmel: np.ndarray, cfg: FrontEndConfig = FrontEndConfig()) -> np.ndarray:
    """(…, n_mels) log-mel dB -> (…, n_mfcc) MFCC."""
    out: np.ndarray = logmel @ frontend_matrices(cfg)["dct"]
    return out


def _frame(padded: np.ndarray, num_frames: int, cfg: FrontEndConfig) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)
    return windows[:: cfg.hop_length][:num_frames]


def logmel(samples: np.ndarray, cfg: FrontEndConfig = FrontEndConfig()) -> np.ndarray:
    """One-shot causal log-mel of a whole signal, starting from silence.

    Args:
        samples: (num_samples,) float PCM at `cfg.sample_rate_hz`.
    Returns:
        (num_samples // hop_length, n_mels) float64 log-mel in dB.
    """
    samples = _check_audio(samples)
    if samples.size == 0:
        raise ValueError("audio is empty")
    num_frames = cfg.num_frames(samples.size)
    padded = np.concatenate([np.zeros(cfg.context_samples), samples.astype(np.float64)])
    return logmel_frames(_frame(padded, num_frames, cfg), cfg)


def mfcc(samples: np.ndarray, cfg: FrontEndConfig = FrontEndConfig()) -> np.ndarray:
    """One-shot causal MFCC of a whole signal: (num_samples,) -> (num_samples // hop_length, n_mfcc) float64."""
    return mfcc_from_logmel(logmel(samples, cfg), cfg)


class CausalMfcc:
    """Streaming MFCC: push chunks of any length, get the mfcc frames that became complete.

    The result does not depend on the chunking: pushing a signal in pieces of 10, 20, 37 or 40 ms yields the
    same frames as :func:`mfcc` on the whole signal (float64 throughout; equal to ~1e-12).

    State is explicit and small: the last `context_samples` samples plus any incomplete hop.
    """

    def __init__(self, cfg: FrontEndConfig = FrontEndConfig()) -> None:
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        """Forget all audio: the next sample is treated as the start of a stream after silence."""
        self._buffer = np.zeros(self.cfg.context_samples, dtype=np.float64)
        self.num_frames_emitted = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Append a chunk and return the newly completed frames.

        Args:
            chunk: (num_samples,) float PCM; may be empty.
        Returns:
            (num_new_frames, n_mfcc) float64.
        """
        chunk = _check_audio(chunk)
        self._buffer = np.concatenate([self._buffer, chunk.astype(np.float64)])
        available = (self._buffer.size - self.cfg.context_samples) // self.cfg.hop_length
        if available <= 0:
            return np.zeros((0, self.cfg.n_mfcc), dtype=np.float64)
        out = mfcc_from_logmel(logmel_frames(_frame(self._buffer, available, self.cfg), self.cfg), self.cfg)
        self._buffer = self._buffer[available * self.cfg.hop_length :]
        self.num_frames_emitted += available
        return out
