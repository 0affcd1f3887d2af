"""Drift: the evaluation metrics on the last frames of longer rollouts (the 80-frame sequences, one rollout per
clip, one long stream over the split's speech), and the long stream's curves over time."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from training.eval.generation import (
    FPS,
    SPF,
    generate,
    loop_to,
    noise_seed,
    render_rollout,
    step_rollout,
    stream_rollout,
    syncer_audio_of,
)
from training.eval.scoring import fd_levels, score_pieces, summarise


def face_scale(x: np.ndarray) -> np.ndarray:
    """(T, 68, 2) -> (T,) RMS distance of the points to their centroid (the Procrustes scale)."""
    c = x - x.mean(axis=1, keepdims=True)
    return np.sqrt((c**2).sum(-1).mean(-1))


def drift_curves(x: np.ndarray, space, reference: np.ndarray, bins: int = 20) -> dict:
    """Plausible share, mean velocity and face-size ratio (vs `reference`) in `bins` equal time bins."""
    n = len(x)
    edges = np.linspace(0, n, min(bins, max(n // 2, 1)) + 1).astype(int)
    plaus = space.plausible(x)
    speed = np.concatenate([[np.nan], np.linalg.norm(np.diff(x, axis=0), axis=-1).mean(-1)])
    scale = face_scale(x) / face_scale(reference[None])[0]
    out: dict[str, list[float]] = {"t_min": [], "plausible": [], "velocity": [], "scale_ratio": []}
    for a, b in zip(edges[:-1], edges[1:]):
        if b <= a:
            continue
        out["t_min"].append(float((a + b) / 2 / FPS / 60))
        out["plausible"].append(float(plaus[a:b].mean()))
        out["velocity"].append(float(np.nanmean(speed[a:b])) if np.isfinite(speed[a:b]).any() else float("nan"))
        out["scale_ratio"].append(float(np.nanmean(scale[a:b])) if np.isfinite(scale[a:b]).any() else float("nan"))
    return out


class DriftRows:
    """Collects drift rows: each scores (landmarks, mfcc) pieces like a method row, without ground truth (no LMD),
    with FD-motion against the GT features `gt_feats` and plausibility in `space`."""

    def __init__(self, pyr, vshift: int, padding: str, gt_feats: list[np.ndarray], space, progress: bool) -> None:
        self.pyr, self.vshift, self.padding, self.progress = pyr, vshift, padding, progress
        self.gt_feats, self.space = gt_feats, space
        self.rows: dict[str, dict] = {}

    def add(self, name: str, pieces: list[tuple[np.ndarray, np.ndarray]], what: str) -> None:
        from training.metrics.dynamics import feature_sets

        finite = [p for p in pieces if np.all(np.isfinite(p[0]))]
        recs = score_pieces(self.pyr, finite, self.vshift, self.padding, name, self.progress)
        s = summarise(recs, self.pyr.cfg.num_levels)
        s.update(
            what=what,
            non_finite_sequences=len(pieces) - len(finite),
            fd_motion=fd_levels(self.gt_feats, feature_sets(self.pyr, [p[0] for p in finite])),
            plausible=float(self.space.plausible(np.concatenate([p[0] for p in pieces])).mean())
            if pieces
            else math.nan,
        )
        self.rows[name] = s


def tails(items, tail: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The last `tail` frames (and their 4·tail MFCC rows) of (index, landmarks, mfcc) method items."""
    return [(lm[-tail:], mf[-4 * tail :]) for _, lm, mf in items]


def clip_rollout_pieces(
    m, firsts: list, pcm: dict, frames: int, tail: int, seed: int, device, batch_size: int, syncer_cfg=None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One `frames`-frame rollout per clip from its first frame (its speech looped), cut to the last `tail`.

    `firsts`: (clip_id, first segment frame, first landmark frame) per clip; `pcm`: clip_id -> 16 kHz PCM.
    """
    loops = [loop_to(pcm[cid][s0 * SPF :], (frames + m.lookahead) * SPF) for cid, s0, _ in firsts]
    y = generate(
        m,
        loops,
        [0] * len(loops),
        np.stack([f[2] for f in firsts]),
        [noise_seed(seed, f"{cid}@rollout") for cid, _, _ in firsts],
        frames,
        device,
        batch_size,
    )
    return [
        (lm[-tail:], syncer_audio_of(p, m.G.frontend, syncer_cfg, frames - tail, frames)) for lm, p in zip(y, loops)
    ]


def long_rollout(m, source: np.ndarray, x_ref: np.ndarray, frames: int, cfg, device, progress: bool):
    """The long stream of model `m` over `source` (looped): (landmarks (frames, 68, 2), audio, wall seconds,
    largest difference to `Generator.step` on the first 50 frames, frames checked)."""
    audio = loop_to(source, (frames + m.lookahead) * SPF)
    seed = noise_seed(cfg.seed, "long")
    t0 = time.perf_counter()
    x = stream_rollout(m, audio, x_ref, seed, frames, device, cfg.chunk_frames, progress, f"{m.name} long rollout")
    wall = time.perf_counter() - t0
    k = min(50, frames)
    equiv = float(np.abs(step_rollout(m, audio, x_ref, seed, k, device) - x[:k]).max())
    return x, audio, wall, equiv, k


def add_long_rows(
    drift: DriftRows, name: str, x: np.ndarray, audio: np.ndarray, tail: int, label: str, frontend, syncer_cfg=None
) -> int:
    """Drift rows of a long rollout: its last `tail` frames, and its last minute in `tail`-frame pieces.
    Returns the window (frames) the first/last statistics use."""
    n = len(x)
    minute = min(60 * FPS, n // 2)
    a = n - max(minute // tail, 1) * tail
    mf = syncer_audio_of(audio, frontend, syncer_cfg, a, n)  # rows 4 (t − a) belong to frame t
    last = "last minute" if minute == 60 * FPS else f"last {minute / FPS:g} s"
    drift.add(f"{name}: last {tail} of {label}", [(x[-tail:], mf[-4 * tail :])], f"{label} rollout")
    pieces = [(x[b : b + tail], mf[4 * (b - a) : 4 * (b - a + tail)]) for b in range(a, n, tail)]
    if minute >= tail:
        drift.add(f"{name}: {last} of {label}, {tail}-frame pieces", pieces, f"{label} rollout")
    return minute


def long_summary(x: np.ndarray, x_ref: np.ndarray, space, minute: int, wall: float, chunk_frames: int) -> dict:
    """NaN frames, plausibility, velocity of the first and last window, face size and centre shift of a long
    rollout (`minute`: the window, frames), and its curves over time."""
    n = len(x)
    finite = np.all(np.isfinite(x), axis=(1, 2))
    speed = np.linalg.norm(np.diff(x, axis=0), axis=-1).mean(-1)
    v_first, v_last = float(np.nanmean(speed[: max(minute - 1, 1)])), float(np.nanmean(speed[-minute:]))
    scale = face_scale(x) / face_scale(x_ref[None])[0]
    return {
        "frames": n,
        "minutes": n / FPS / 60,
        "wall_s": wall,
        "frames_per_s": n / wall,
        "realtime_factor": (n / FPS) / wall,
        "chunk_frames": chunk_frames,
        "non_finite_frames": int((~finite).sum()),
        "first_non_finite_frame": int(np.argmin(finite)) if not finite.all() else None,
        "plausible": float(space.plausible(x).mean()),
        "plausible_last_minute": float(space.plausible(x[-minute:]).mean()),
        "window_frames": minute,
        "velocity_first": v_first,
        "velocity_last": v_last,
        "velocity_ratio": v_last / v_first if v_first > 0 else float("nan"),
        "scale_ratio_last": float(np.nanmean(scale[-minute:])),
        "centre_shift_last": float(np.nanmean(np.linalg.norm(x[-minute:].mean(1) - x_ref.mean(0), axis=-1))),
    }


def model_drift(drift: DriftRows, m, rows: dict, inputs, cfg, device, out_dir: Path, progress: bool):
    """Every drift row of model `m` (sequences, per-clip rollouts, long rollout); returns its long-rollout entry
    or None. `inputs`: the `EvalInputs` of the run."""
    T, tail = inputs.seq_frames, inputs.tail
    drift.add(f"{m.name}: last {tail} of {T or 'whole'}", tails(rows[m.name], tail), f"{T}-frame sequences")
    R = cfg.rollout_frames
    if R > 0:
        pieces = clip_rollout_pieces(
            m, inputs.firsts, inputs.pcm, R, tail, cfg.seed, device, cfg.batch_size, drift.pyr.cfg
        )
        drift.add(f"{m.name}: last {tail} of {R}", pieces, f"{R}-frame rollouts, one per clip")
    frames = int(round(cfg.long_rollout_minutes * 60 * FPS))
    if frames <= 0:
        return None
    source = np.concatenate([inputs.pcm[cid][s0 * SPF :] for cid, s0, _ in inputs.firsts])
    x_ref = inputs.firsts[0][2]
    x, audio, wall, equiv, k = long_rollout(m, source, x_ref, frames, cfg, device, progress)
    minute = add_long_rows(
        drift, m.name, x, audio, tail, f"{cfg.long_rollout_minutes:g} min", m.G.frontend, drift.pyr.cfg
    )
    out = long_summary(x, x_ref, drift.space, minute, wall, cfg.chunk_frames)
    out.update(
        step_equivalence_max_abs=equiv,
        step_equivalence_frames=k,
        curves=drift_curves(x, drift.space, x_ref),
        videos=render_rollout(out_dir / "videos", m.name, x, audio, cfg.render_seconds),
    )
    return out
