"""Training augmentation for landmark sequences and audio (paper §5.1 of the implementation notes, fixed).

Landmarks: scale about the crop centre, translation, a small 3-D-like rotation (points lifted onto a sphere
fitted to the face, rotated in yaw/pitch/roll, projected back), and a mirror that swaps left/right indices.
Audio: gain (±20 dB) and additive white noise, either on the waveform or, for cached features, in the
mel-power domain (exact for gain, expected power for noise).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from stream_engine.features import FrontEndConfig, frontend_matrices
from stream_engine.landmarks import mirror


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms; a zero range (or probability) disables that transform."""

    scale_min: float = 0.9
    scale_max: float = 1.1
    translate: float = 0.05
    yaw_deg: float = 15.0
    pitch_deg: float = 10.0
    roll_deg: float = 8.0
    mirror_prob: float = 0.5
    gain_db: float = 20.0
    noise_prob: float = 0.5
    snr_db_min: float = 10.0
    snr_db_max: float = 40.0


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    r_roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return r_roll @ r_pitch @ r_yaw


def rotate_3d_like(points: np.ndarray, yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotate (T, 68, 2) landmarks as if they lay on a sphere fitted to the face, about the sequence's mean point.

    Depth comes from a sphere of radius 0.75 x face width centred behind the nose; orthographic projection.
    """
    centre = points.reshape(-1, 2).mean(axis=0)
    rel = points - centre
    width = np.median(np.ptp(rel[..., 0], axis=-1)) + 1e-6
    radius = 0.75 * width
    z = np.sqrt(np.maximum(radius**2 - (rel**2).sum(-1), 0.0))  # (T, 68), towards the camera
    xyz = np.concatenate([rel, z[..., None]], axis=-1)
    rotated = xyz @ _rotation(yaw, pitch, roll).T
    return (rotated[..., :2] + centre).astype(points.dtype)


def augment_landmarks(points: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One random transform applied to a whole (T, 68, 2) sequence (the same for every frame)."""
    out = points.astype(np.float64)
    if cfg.yaw_deg or cfg.pitch_deg or cfg.roll_deg:
        angles = np.deg2rad(
            [
                rng.uniform(-cfg.yaw_deg, cfg.yaw_deg),
                rng.uniform(-cfg.pitch_deg, cfg.pitch_deg),
                rng.uniform(-cfg.roll_deg, cfg.roll_deg),
            ]
        )
        out = rotate_3d_like(out, *angles)
    s = rng.uniform(cfg.scale_min, cfg.scale_max)
    out = (out - 0.5) * s + 0.5
    if cfg.translate:
        out = out + rng.uniform(-cfg.translate, cfg.translate, size=2)
    if rng.uniform() < cfg.mirror_prob:
        out = mirror(out)
    return out.astype(np.float32)


def _noise_mel_power(cfg: FrontEndConfig) -> np.ndarray:
    """Expected mel power of unit-variance white noise: (n_mels,)."""
    m = frontend_matrices(cfg)
    window_energy = float(np.sum(m["window"] ** 2))
    return window_energy * m["mel"].sum(axis=0)


def augment_logmel(
    logmel: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, frontend: FrontEndConfig
) -> np.ndarray:
    """Gain and noise applied to (..., n_mels) log-mel dB features of one clip."""
    floor_db = 10.0 * np.log10(frontend.log_floor)
    out = logmel.astype(np.float64)
    if cfg.gain_db:
        out = np.maximum(out + rng.uniform(-cfg.gain_db, cfg.gain_db), floor_db)
    if cfg.noise_prob and rng.uniform() < cfg.noise_prob:
        power = 10.0 ** (out / 10.0)
        signal_power = float(np.mean(power))  # mel-domain proxy of the clip's loudness
        snr_db = rng.uniform(cfg.snr_db_min, cfg.snr_db_max)
        noise = _noise_mel_power(frontend)
        noise = noise * (signal_power / (np.mean(noise) * 10.0 ** (snr_db / 10.0)))
        out = 10.0 * np.log10(np.maximum(power + noise, frontend.log_floor))
    return out.astype(np.float32)


def augment_waveform(audio: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Gain and white noise on (num_samples,) PCM."""
    out = audio.astype(np.float64)
    if cfg.gain_db:
        out = out * 10.0 ** (rng.uniform(-cfg.gain_db, cfg.gain_db) / 20.0)
    if cfg.noise_prob and rng.uniform() < cfg.noise_prob:
        snr_db = rng.uniform(cfg.snr_db_min, cfg.snr_db_max)
        rms = np.sqrt(np.mean(out**2) + 1e-12)
        out = out + rng.standard_normal(out.shape) * rms / 10.0 ** (snr_db / 20.0)
    return np.clip(out, -1.0, 1.0).astype(np.float32)
