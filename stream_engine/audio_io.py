"""Reading audio files and converting any rate or channel layout to the model's mono 16 kHz.

Decoding: libsndfile (through `soundfile`) for wav/flac/ogg/mp3 and friends; PyAV (FFmpeg) for video
containers and anything libsndfile cannot read, when it is installed (the `train` extra). Resampling: soxr,
a proper band-limited resampler (never naive decimation or linear interpolation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, non-finite, or of an unsupported layout."""


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(num_samples,) or (num_samples, num_channels) -> (num_samples,) float32 by averaging channels."""
    samples = np.asarray(samples)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    elif samples.ndim != 1:
        raise AudioError(f"expected (num_samples,) or (num_samples, num_channels) audio, got shape {samples.shape}")
    return samples.astype(np.float32, copy=False)


def resample(samples: np.ndarray, from_rate_hz: int, to_rate_hz: int) -> np.ndarray:
    """Band-limited resampling of mono float audio with soxr (VHQ). Returns float32."""
    if from_rate_hz <= 0 or to_rate_hz <= 0:
        raise AudioError(f"sample rates must be positive, got {from_rate_hz} -> {to_rate_hz}")
    samples = np.asarray(samples, dtype=np.float32)
    if from_rate_hz == to_rate_hz:
        return samples
    import soxr

    out: np.ndarray = soxr.resample(samples, from_rate_hz, to_rate_hz, quality="VHQ").astype(np.float32, copy=False)
    return out


def validate_pcm(samples: np.ndarray, what: str = "audio") -> np.ndarray:
    """Check that decoded audio is usable: non-empty, finite. Returns it as float32."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.size == 0:
        raise AudioError(f"{what} is empty")
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{what} contains NaN or infinite samples")
    return samples


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return data, int(rate)


def _decode_pyav(path: Path) -> tuple[np.ndarray, int]:
    import av  # PyAV bundles FFmpeg

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise AudioError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        # Keep the channels and the rate: FFmpeg's own stereo->mono downmix scales by 1/sqrt(2) per channel
        # (peaks up to 1.41 x full scale); we average channels ourselves, as for every other format.
        resampler = av.AudioResampler(format="fltp")
        pieces = []
        rate = 0
        for packet_frame in container.decode(stream):
            for out in resampler.resample(packet_frame):
                pieces.append(out.to_ndarray())
                rate = out.sample_rate
        for out in resampler.resample(None):
            pieces.append(out.to_ndarray())
    if not pieces:
        raise AudioError(f"{path}: the audio stream decoded to nothing")
    return np.concatenate(pieces, axis=1).T.astype(np.float32), int(rate)


def load_audio(path: str | Path, sample_rate_hz: int = 16000) -> np.ndarray:
    """Decode an audio (or video) file to mono float32 PCM at `sample_rate_hz`.

    Args:
        path: wav, flac, ogg, mp3, or (with PyAV installed) any FFmpeg-readable container such as mp4/mkv.
        sample_rate_hz: output rate.
    Returns:
        (num_samples,) float32 in [-1, 1].
    Raises:
        AudioError: the file is missing, unreadable, has no audio, is empty or contains NaN/inf.
    """
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    errors = []
    data: np.ndarray | None = None
    rate = 0
    try:
        data, rate = _decode_soundfile(path)
    except Exception as exc:  # libsndfile refuses containers it does not know; try FFmpeg next
        errors.append(f"soundfile: {exc}")
        try:
            data, rate = _decode_pyav(path)
        except ImportError:
            errors.append("PyAV not installed (pip install av) for non-libsndfile formats")
        except Exception as exc2:
            errors.append(f"PyAV: {exc2}")
    if data is None:
        raise AudioError(f"{path}: cannot decode audio ({'; '.join(errors)})")
    mono = validate_pcm(to_mono(data), what=str(path))
    return validate_pcm(resample(mono, rate, sample_rate_hz), what=str(path))
