"""File mode: a whole recording in, a whole animation out (what Rhubarb Lip Sync users do), on the engine core.

    from stream_engine.animation import animate
    anim = animate("speech.wav")                 # the shipped model
    anim.landmarks.shape                          # (T, 68, 2), T = ceil(duration_s * 25)
    anim.signals["mouth_open"], anim.blendshapes["jawOpen"]   # (T,) each
    anim.save("speech.json")                      # or .csv / .npz

Every frame of the input is emitted, the look-ahead tail included: the audio is pushed into an `EngineCore`
stream and flushed (the last partial frame and the look-ahead are padded with silence), so N samples at 16 kHz
give ceil(N / 640) frames, frame t covering samples [640 t, 640 t + 640). Signals and ARKit blendshapes are
derived per frame exactly as `msync stream` derives them (`signals.SignalExtractor`), with a fixed seed, so the
same input gives the same animation.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_engine.audio_io import AudioError, load_audio, resample, to_mono
from stream_engine.blendshapes import ARKIT_NAMES
from stream_engine.inputs import MAX_CHANNELS, PcmFormat
from stream_engine.signals import SIGNAL_NAMES, SignalConfig, SignalExtractor

if TYPE_CHECKING:
    from stream_engine.core import LandmarkFrame

FORMATS = ("json", "csv", "npz")


@dataclasses.dataclass(frozen=True)
class Animation:
    """A whole recording's animation at `fps` frames per second.

    Attributes:
        landmarks: (T, 68, 2) float32, normalised crop coordinates (see README "Landmark coordinates").
        signals: name -> (T,) float32, the names of `signals.SIGNAL_NAMES` (mouth_open, A I U E O, blink,
            yaw/pitch/roll in degrees, audio_dbfs, silent as 0/1).
        blendshapes: ARKit name -> (T,) float32 in [0, 1], all 52 names of `blendshapes.ARKIT_NAMES`.
        fps: frames per second (25).
        duration_s: length of the input audio; T = ceil(duration_s * fps).
        sample_rate_hz: the model's audio rate the input was converted to.
    """

    landmarks: np.ndarray
    signals: dict[str, np.ndarray]
    blendshapes: dict[str, np.ndarray]
    fps: float
    duration_s: float
    sample_rate_hz: int

    @property
    def num_frames(self) -> int:
        return int(self.landmarks.shape[0])

    @property
    def times_s(self) -> np.ndarray:
        """(T,) start time of each frame in seconds."""
        return np.arange(self.num_frames, dtype=np.float64) / self.fps

    def blendshape_array(self) -> np.ndarray:
        """(T, 52) float32 in `ARKIT_NAMES` order."""
        return (
            np.stack([self.blendshapes[n] for n in ARKIT_NAMES], axis=1)
            if self.num_frames
            else np.zeros((0, len(ARKIT_NAMES)), np.float32)
        )

    def to_json(self, decimals: int = 5) -> dict[str, Any]:
        return {
            "fps": self.fps,
            "duration_s": self.duration_s,
            "num_frames": self.num_frames,
            "sample_rate_hz": self.sample_rate_hz,
            "landmark_layout": "ibug68",
            "landmarks": np.round(self.landmarks.astype(np.float64), decimals).tolist(),
            "signals": {k: np.round(v.astype(np.float64), decimals).tolist() for k, v in self.signals.items()},
            "blendshapes": {k: np.round(v.astype(np.float64), decimals).tolist() for k, v in self.blendshapes.items()},
        }

    def save(self, path: str | Path, format: str | None = None) -> Path:
        """Write the animation as json, csv (one row per frame) or npz; the format defaults to the suffix.

        CSV columns: frame, time_s, x0, y0, ..., x67, y67, the signals, the 52 blendshapes.
        Raises:
            ValueError: unknown format.
        """
        path = Path(path)
        fmt = (format or path.suffix.lstrip(".") or "json").lower()
        if fmt not in FORMATS:
            raise ValueError(f"unknown animation format {fmt!r}; use one of {FORMATS}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "json":
            path.write_text(json.dumps(self.to_json(), separators=(",", ":")))
        elif fmt == "npz":
            arrays: dict[str, np.ndarray] = {
                "landmarks": self.landmarks,
                "blendshapes": self.blendshape_array(),
                "blendshape_names": np.array(ARKIT_NAMES),
                "fps": np.asarray(np.float64(self.fps)),
                "duration_s": np.asarray(np.float64(self.duration_s)),
                "num_frames": np.asarray(np.int64(self.num_frames)),
                "sample_rate_hz": np.asarray(np.int64(self.sample_rate_hz)),
                "landmark_layout": np.asarray("ibug68"),
                **{f"signal_{k}": v for k, v in self.signals.items()},
            }
            # numpy's stub declares `allow_pickle: bool` beside `**kwds`, so mypy checks a str-keyed dict's values
            # against bool too; every value here is an array.
            np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
        else:
            with path.open("w", newline="") as f:
                w = csv.writer(f)
                n = self.landmarks.shape[1]
                w.writerow(
                    ["frame", "time_s"]
                    + [f"{a}{i}" for i in range(n) for a in ("x", "y")]
                    + list(self.signals)
                    + list(ARKIT_NAMES)
                )
                flat = self.landmarks.reshape(self.num_frames, n * self.landmarks.shape[2])
                sig = np.stack(list(self.signals.values()), axis=1) if self.num_frames else np.zeros((0, 0))
                bs = self.blendshape_array()
                for t in range(self.num_frames):
                    w.writerow(
                        [t, f"{t / self.fps:.3f}"]
                        + [f"{v:.6g}" for v in flat[t]]
                        + [f"{v:.5g}" for v in sig[t]]
                        + [f"{v:.4g}" for v in bs[t]]
                    )
        return path


def prepare_audio(path_or_array: Any, sample_rate: int | None, target_rate_hz: int) -> np.ndarray:
    """A file path or a PCM array -> mono float32 at `target_rate_hz`.

    Arrays: float in [-1, 1] or int16/int32 PCM; (N,) mono or (N, C) interleaved channels (averaged, C <= 32);
    `sample_rate` is required, an integer in 8000..384000 Hz (as a live stream's). The output has
    ceil(N * target / sample_rate) samples, so the frame count is ceil(duration * fps).
    Raises:
        AudioError: unreadable file, wrong shape or dtype (a channels-first (C, N) array reads as N channels and
            is refused), non-finite samples, a missing or unsupported sample_rate.
    """
    if isinstance(path_or_array, (str, Path)):
        if sample_rate is not None:
            raise AudioError("sample_rate applies to arrays only (a file states its own rate)")
        audio = load_audio(path_or_array, target_rate_hz)
        return audio
    samples = np.asarray(path_or_array)
    if sample_rate is None:
        raise AudioError("give sample_rate with a PCM array (e.g. animate(pcm, sample_rate=48000))")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise AudioError(f"sample_rate must be an integer in Hz, got {sample_rate!r}")
    if samples.ndim not in (1, 2):
        raise AudioError(f"PCM must be (num_samples,) or (num_samples, channels), got shape {samples.shape}")
    if samples.ndim == 2 and not 1 <= samples.shape[1] <= MAX_CHANNELS:
        raise AudioError(
            f"PCM of shape {samples.shape} would have {samples.shape[1]} channels (at most {MAX_CHANNELS}): arrays "
            "are (num_samples, channels); transpose a channels-first one"
        )
    try:  # the rates a live stream takes (`Stream.push`, the WebSocket `config`)
        PcmFormat(int(sample_rate), 1, "float32")
    except ValueError as exc:
        raise AudioError(str(exc)) from None
    if samples.dtype == np.int16:
        samples = samples.astype(np.float32) / 32768.0
    elif samples.dtype == np.int32:
        samples = samples.astype(np.float32) / 2147483648.0
    elif not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(f"PCM must be float, int16 or int32, got {samples.dtype}")
    mono = to_mono(samples)
    if not np.all(np.isfinite(mono)):
        raise AudioError("audio contains NaN or infinite samples")
    want = -(-mono.size * target_rate_hz // int(sample_rate))  # ceil: the duration never shrinks
    out = resample(mono, int(sample_rate), target_rate_hz)
    if out.size < want:
        out = np.concatenate([out, np.zeros(want - out.size, np.float32)])
    result: np.ndarray = np.clip(out[:want], -1.0, 1.0).astype(np.float32, copy=False)
    return result


def load_model(model: Any = None) -> Any:
    """A runner: None = the shipped default model; a path to an exported .onnx; or a runner object as is.

    Raises:
        FileNotFoundError: the model file does not exist.
    """
    if model is None or isinstance(model, (str, Path)):
        from stream_engine.config import DEFAULT_MODEL_PATH
        from stream_engine.runtime import load_runner

        path = Path(model) if model is not None else DEFAULT_MODEL_PATH
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} not found")
        return load_runner(path, threads=1)
    return model


def animate(
    path_or_array: Any,
    sample_rate: int | None = None,
    reference_face: np.ndarray | None = None,
    *,
    model: Any = None,
    seed: int = 0,
    signal_cfg: SignalConfig = SignalConfig(),
    chunk_s: float = 10.0,
) -> Animation:
    """Animate a whole recording (see the module docstring).

    Args:
        path_or_array: an audio/video file path, or PCM (N,) / (N, C) float or int16/int32.
        sample_rate: the array's rate in Hz (required for arrays, refused for paths).
        reference_face: (68, 2) face to start from and measure against, normalised crop coordinates or pixels
            (any coordinate above 1.5: normalised with the training data's fixed crop, as `--reference-face`
            does); None = the model's.
        model: None (shipped model), a .onnx path, or a loaded runner (reuse one for many files).
        seed: the model's noise and the procedural blinks (same seed, same animation).
        signal_cfg: how signals and blendshapes are derived.
        chunk_s: audio pushed per round (bounds memory for long files).
    Returns:
        `Animation` with T = ceil(duration_s * fps) frames.
    Raises:
        AudioError (bad audio), ValueError (bad reference face: `ReferenceFaceError`), FileNotFoundError (no such
        model file), `ModelLoadError` (a model file ONNX Runtime cannot load).
    """
    runner = load_model(model)
    c = runner.contract
    rate, spf = int(c.sample_rate_hz), int(c.samples_per_frame)
    if reference_face is not None:
        from stream_engine.session import reference_face_from_points

        reference_face = reference_face_from_points(reference_face, int(c.num_landmarks))
    audio = prepare_audio(path_or_array, sample_rate, rate)
    frames = landmark_frames(runner, audio, reference_face, seed=seed, chunk_s=chunk_s)
    expected = len(frames)
    neutral = reference_face if reference_face is not None else np.asarray(c.reference_face, dtype=np.float32)
    extractor = SignalExtractor(signal_cfg, neutral, seed)  # as `Engine.open_stream(seed=seed)` seeds its blinks
    n_lm, dims = int(c.num_landmarks), int(c.landmark_dims)
    landmarks = np.zeros((expected, n_lm, dims), np.float32)
    sig = np.zeros((expected, len(SIGNAL_NAMES)), np.float32)
    shapes = np.zeros((expected, len(ARKIT_NAMES)), np.float32)
    for t, frame in enumerate(frames):
        landmarks[t] = frame.landmarks
        s = extractor.update(frame.landmarks, frame.pts_ns / 1e9, frame.audio_level_dbfs, frame.audio_ahead_dbfs)
        sig[t] = s.as_vector()
        if s.blendshapes is not None:
            shapes[t] = s.blendshapes
    fps = float(getattr(c, "fps", rate / spf))
    return Animation(
        landmarks=landmarks,
        signals={n: sig[:, i].copy() for i, n in enumerate(SIGNAL_NAMES)},
        blendshapes={n: shapes[:, i].copy() for i, n in enumerate(ARKIT_NAMES)},
        fps=fps,
        duration_s=audio.size / rate,
        sample_rate_hz=rate,
    )


def landmark_frames(
    runner: Any, audio: np.ndarray, reference_face: np.ndarray | None = None, *, seed: int = 0, chunk_s: float = 10.0
) -> list[LandmarkFrame]:
    """Run a whole recording through one stream of the engine core, look-ahead tail included.

    Args:
        runner: a loaded step runner (`load_model`).
        audio: (N,) float32 mono PCM at the runner's contract rate.
        reference_face: (68, 2) face to start from (None = the model's).
        seed: the model's noise.
        chunk_s: audio pushed per round (bounds memory for long files).
    Returns:
        ceil(N / samples_per_frame) `LandmarkFrame`s in order (landmarks, audio levels of the frame and its
        look-ahead, ...).
    Raises:
        RuntimeError: the core returned another number of frames (its flush contract broken).
    """
    from stream_engine.core import EngineCore

    c = runner.contract
    rate, spf = int(c.sample_rate_hz), int(c.samples_per_frame)
    chunk = max(spf, int(chunk_s * rate) // spf * spf)
    # one stream: numpy (the compiled passes would gain little and cost numba's import)
    core = EngineCore(runner, max_batch_streams=1, max_pending_s=2.0 * chunk / rate + 1.0, seed=seed, compiled=False)
    core.open_stream("animate", reference_face, seed=seed)
    frames = []
    for start in range(0, audio.size, chunk):
        core.push_audio("animate", audio[start : start + chunk], 0)
        frames.extend(core.process())
    if audio.size:
        core.flush("animate", 0)
        frames.extend(core.process())
    frames = [f for f in frames if f.epoch == 0]
    expected = -(-audio.size // spf)
    if len(frames) != expected:  # the core's flush contract; never silently short
        raise RuntimeError(f"engine produced {len(frames)} frames for {audio.size} samples, expected {expected}")
    return frames


def expected_frames(duration_s: float, fps: float = 25.0) -> int:
    """ceil(duration_s * fps) with a tolerance for float rounding (the frame count of a duration)."""
    return int(math.ceil(duration_s * fps - 1e-9))
