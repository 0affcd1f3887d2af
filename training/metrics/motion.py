"""Landmark distance (LMD) and motion statistics of 68-point sequences (numpy only).

Units: landmarks are in the clip's fixed-crop normalised coordinates (the crop side is 1; with the default
`CropConfig.scale = 2` the face spans about half of it). LMD is reported both in those units and multiplied by
256, i.e. "pixels of a 256 × 256 crop" (our crop, not the paper's VoxCeleb "(II)" crop, whose exact
convention is unknown). Motion statistics are in normalised units per frame (25 fps) unless stated.
"""

from __future__ import annotations

import numpy as np

from stream_engine.landmarks import JAW, MOUTH, NOSE, mouth_opening
from training import pyramid

#: Crop side in pixels used to express LMD in pixels (LMD_px = LMD_normalised × 256).
CROP_PIXELS = 256.0
#: Points taken as rigid for the head trajectory: jaw contour 0-16 and nose 27-35.
HEAD_POINTS = np.array(list(JAW) + list(NOSE))
MOUTH_POINTS = np.array(list(MOUTH))


def _check(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != (68, 2):
        raise ValueError(f"expected (T, 68, 2) landmarks, got {x.shape}")
    return x


def lmd(pred: np.ndarray, gt: np.ndarray, points: np.ndarray | None = None) -> float:
    """Landmark distance: mean over frames and points of ‖pred − gt‖ (normalised crop units).

    Args:
        pred, gt: (T, 68, 2); the first min(T_pred, T_gt) frames are compared.
        points: indices to use (default all 68: F-LMD; MOUTH_POINTS gives M-LMD).
    """
    pred, gt = _check(pred), _check(gt)
    t = min(len(pred), len(gt))
    if t == 0:
        return float("nan")
    idx = np.arange(68) if points is None else np.asarray(points)
    return float(np.linalg.norm(pred[:t, idx] - gt[:t, idx], axis=-1).mean())


def lmd_stats(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """M-LMD (mouth 48-67) and F-LMD (all 68), normalised units and ×256 pixels."""
    m, f = lmd(pred, gt, MOUTH_POINTS), lmd(pred, gt)
    return {"m_lmd": m, "f_lmd": f, "m_lmd_px": m * CROP_PIXELS, "f_lmd_px": f * CROP_PIXELS}


def velocity_acceleration(x: np.ndarray) -> dict[str, float]:
    """Mean per-point speed ‖x_{t+1} − x_t‖ and acceleration ‖x_{t+1} − 2x_t + x_{t-1}‖ (normalised units per
    frame and per frame²), averaged over frames and all 68 points. NaN where the sequence is too short."""
    x = _check(x)
    vel = np.linalg.norm(np.diff(x, axis=0), axis=-1) if len(x) > 1 else np.full((0, 68), np.nan)
    acc = np.linalg.norm(np.diff(x, n=2, axis=0), axis=-1) if len(x) > 2 else np.full((0, 68), np.nan)
    return {
        "velocity": float(vel.mean()) if vel.size else float("nan"),
        "acceleration": float(acc.mean()) if acc.size else float("nan"),
    }


def head_trajectory(x: np.ndarray) -> np.ndarray:
    """(T, 68, 2) -> (T, 2) centroid of the rigid points (jaw + nose): head translation, mostly free of speech
    articulation (the chin moves with the jaw, but its share of the 26-point centroid is small)."""
    return _check(x)[:, HEAD_POINTS].mean(axis=1)


def head_motion_energy(x: np.ndarray, num_levels: int = 4, kernel: int = 7) -> list[float]:
    """Head-motion energy per pyramid scale.

    The head trajectory (T, 2) is taken through the same pyramid as the syncers' inputs
    (:func:`training.pyramid.level`, centred box of `kernel` then ×2 decimation). Energy at level l is the mean
    squared velocity of the level-l trajectory, in normalised units² per level-l sample (one sample = 2^l
    frames = 40·2^l ms), so coarse levels measure slow head sway and level 0 includes jitter.

    Returns:
        [energy_l for l in 0..num_levels-1]; NaN where the level has fewer than 2 samples.
    """
    traj = head_trajectory(x)
    out = []
    for lvl in range(num_levels):
        t_l = pyramid.level(traj, lvl, kernel)
        v = np.diff(t_l, axis=0)
        out.append(float((v**2).sum(axis=-1).mean()) if len(v) else float("nan"))
    return out


def mouth_stats(x: np.ndarray) -> dict[str, float]:
    """Inner-lip opening ‖p62 − p66‖ (normalised units): mean, std over time, and mean |frame-to-frame change|."""
    m = mouth_opening(_check(x))
    return {
        "mouth_open_mean": float(m.mean()),
        "mouth_open_std": float(m.std()),
        "mouth_open_speed": float(np.abs(np.diff(m)).mean()) if len(m) > 1 else float("nan"),
    }


def motion_stats(x: np.ndarray, num_levels: int = 4, kernel: int = 7) -> dict[str, float]:
    """All motion statistics of one (T, 68, 2) sequence as a flat dict (keys `velocity`, `acceleration`,
    `head_energy_l{l}`, `mouth_open_mean`, `mouth_open_std`, `mouth_open_speed`)."""
    out = velocity_acceleration(x)
    for lvl, e in enumerate(head_motion_energy(x, num_levels, kernel)):
        out[f"head_energy_l{lvl}"] = e
    out.update(mouth_stats(x))
    return out
