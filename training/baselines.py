"""Non-learned baselines for `msync eval`.

"Loudness mouth": what VTuber apps do today without a face camera. The reference face stays still (no head
motion, no blinks) and the jaw drops in proportion to the microphone level: per 40 ms frame the RMS of the
audio is measured, normalised per clip (the app's input-gain calibration: the clip's quiet floor maps to
0, its loud peak to 1), smoothed with a fast-attack / slow-release follower, and the lower lip and jaw move
down the face's vertical axis by `gain` × face height × openness.

Causality: the level of frame t uses only audio up to the end of frame t (no look-ahead); the per-clip
normalisation looks at the whole clip, like an app calibrated once for a speaker.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: How much each point follows the jaw drop (1 = the full displacement). Jaw contour around the chin, the
#: outer lower lip 55-59, the inner lower lip 65-67 and, at half weight, the inner mouth corners 60 and 64.
MOUTH_WEIGHTS: dict[int, float] = {
    5: 0.3,
    6: 0.6,
    7: 0.9,
    8: 1.0,
    9: 0.9,
    10: 0.6,
    11: 0.3,
    55: 0.7,
    56: 0.95,
    57: 1.0,
    58: 0.95,
    59: 0.7,
    60: 0.5,
    64: 0.5,
    65: 0.9,
    66: 1.0,
    67: 0.9,
}


@dataclasses.dataclass(frozen=True)
class LoudnessMouthConfig:
    """Parameters of the loudness-driven mouth.

    Attributes:
        gain: jaw drop at full loudness, as a fraction of the face height ‖p8 − p27‖ (nose bridge to chin).
            0.08 ≈ the 95th percentile of the inner-lip gap / face height over the training split.
        floor_percentile, peak_percentile: per-clip RMS percentiles mapped to openness 0 and 1.
        attack, release: one-pole smoothing coefficients (share of the new value taken per frame) when the
            level rises and when it falls.
        samples_per_frame: PCM samples per landmark frame (640 = 40 ms at 16 kHz).
    """

    gain: float = 0.08
    floor_percentile: float = 20.0
    peak_percentile: float = 95.0
    attack: float = 0.7
    release: float = 0.3
    samples_per_frame: int = 640


def frame_rms(pcm: np.ndarray, samples_per_frame: int = 640) -> np.ndarray:
    """(num_samples,) PCM -> (num_samples // samples_per_frame,) RMS of each frame's own samples."""
    pcm = np.asarray(pcm, dtype=np.float64)
    n = len(pcm) // samples_per_frame
    return np.sqrt((pcm[: n * samples_per_frame].reshape(n, samples_per_frame) ** 2).mean(axis=1))


def loudness_envelope(pcm: np.ndarray, cfg: LoudnessMouthConfig = LoudnessMouthConfig()) -> np.ndarray:
    """Mouth openness in [0, 1] for every landmark frame of a clip: (num_samples,) -> (num_samples // 640,)."""
    rms = frame_rms(pcm, cfg.samples_per_frame)
    if not rms.size:
        return rms
    lo, hi = np.percentile(rms, cfg.floor_percentile), np.percentile(rms, cfg.peak_percentile)
    level = np.clip((rms - lo) / max(hi - lo, 1e-8), 0.0, 1.0)
    out = np.empty_like(level)
    y = 0.0
    for t, v in enumerate(level):
        k = cfg.attack if v > y else cfg.release
        y += k * (v - y)
        out[t] = y
    return out


def face_axis(face: np.ndarray) -> tuple[np.ndarray, float]:
    """(68, 2) -> (unit vector from the nose bridge p27 towards the chin p8, face height ‖p8 − p27‖)."""
    d = np.asarray(face[8], np.float64) - np.asarray(face[27], np.float64)
    h = float(np.linalg.norm(d))
    if not h > 0:
        return np.array([0.0, 1.0]), 0.0
    return d / h, h


def loudness_mouth(
    reference: np.ndarray, openness: np.ndarray, cfg: LoudnessMouthConfig = LoudnessMouthConfig()
) -> np.ndarray:
    """The reference face with the jaw dropped by `openness`.

    Args:
        reference: (68, 2) face (normalised crop coordinates, y down).
        openness: (T,) values in [0, 1] (see :func:`loudness_envelope`).
    Returns:
        (T, 68, 2) float32; the head never moves.
    """
    reference = np.asarray(reference, dtype=np.float64)
    down, height = face_axis(reference)
    weights = np.zeros(68)
    for i, w in MOUTH_WEIGHTS.items():
        weights[i] = w
    drop = cfg.gain * height * np.asarray(openness, dtype=np.float64)  # (T,)
    out = reference[None] + drop[:, None, None] * weights[None, :, None] * down[None, None, :]
    return out.astype(np.float32)
