"""Multi-scale audio-visual offset and confidence (paper §4.3, Table 3), SyncNet's procedure per pyramid level.

For every level l of a syncer pyramid (segments of 200 · 2^l ms):

1. Build the level-l sequences with :func:`training.pyramid.level` for the landmarks (25 / 2^l Hz) and the
   MFCC (100 / 2^l Hz), with the pyramid's own kernel.
2. Embed every landmark window [i, i+5) and every audio window [4i, 4i+20) at that level (stride 1, start
   aligned exactly as in syncer training), i = 0 .. N-1. A level in the pyramid's `full_rate_levels` reads
   the full-rate sequences instead: window i covers frames [2^l i, 2^l (i+5)) and MFCC rows [4 · 2^l i,
   4 · 2^l (i+5)) (the same span, unpooled); offsets keep the level's unit.
3. Zero-pad the *audio embedding* sequence by `vshift` on both sides. For shift index j = 0 .. 2·vshift,
   d[i, j] = ‖e_x[i] − e_a_pad[i + j]‖, i.e. landmark window i against audio window i + (j − vshift);
   `mdist[j]` = mean over i of d[i, j]. Windows that fall into the padding are compared with the zero vector,
   exactly as SyncNet does (it makes the ends of `mdist` depend on the embedding norms; see the caveat below).
4. AV-Off = vshift − argmin(mdist), AV-Conf = median(mdist) − min(mdist), LSE-D = min(mdist).

Sign of AV-Off: the best shift pairs landmark window i with audio window i − AV-Off, so
**AV-Off = (landmark index) − (index of the audio that matches it)**. A positive offset means the matching
sound comes *earlier* in the audio track than the mouth movement: **audio leads (the video lags)**. A negative
offset means the audio lags the video (e.g. a soundtrack delayed by k frames gives AV-Off = −k). One unit is
one sample at that level's rate: 40 · 2^l ms.

Distances are Euclidean on the raw embeddings. Metric pyramids (loss "syncnet") are trained on exactly that;
InfoNCE pyramids return L2-normalised embeddings, for which Euclidean distance is a monotone function of the
cosine score, so the same procedure applies.

Caveat (inherited from SyncNet): with zero padding, the |k| windows that fall outside the sequence at shift k
contribute ‖e_x[i]‖ instead of a real distance. On SyncNet's long videos that is a small share; on 80-frame
sequences (N = 76 windows at level 0, 6 at level 3, vshift = 15) it dominates when the embedding norms differ
from the typical pair distance: large unnormalised norms make mdist V-shaped with its minimum at 0 whatever
the input (every row, static face included, gets AV-Off = 0), while unit-norm embeddings (InfoNCE) make the
padded ends *cheaper* than real mismatches and pull the minimum to ±vshift. `padding="valid"` averages only
real pairs over shifts with at least half of the windows overlapping; it is not SyncNet's number, so report
which one was used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from training import pyramid as input_pyramid


class PyramidLike(Protocol):
    """What :func:`av_sync` needs from a syncer pyramid (a :class:`training.models.syncer.SyncerPyramid`, or a
    hand-built stand-in in tests): `cfg` with `num_levels`, `pyramid_kernel`, `landmark_frames`,
    `audio_frames`, and `embed(lvl, landmarks (N, 5, 68, 2), mfcc (N, 20, n_mfcc)) -> (e_audio, e_landmarks)`."""

    cfg: Any

    def embed(self, lvl: int, landmarks: torch.Tensor, mfcc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


PADDINGS = ("zero", "valid")


def shift_distances(e_x: np.ndarray, e_a: np.ndarray, vshift: int, padding: str = "zero") -> np.ndarray:
    """Mean embedding distance per shift.

    Args:
        e_x: (N, E) landmark-window embeddings; e_a: (N, E) audio-window embeddings (window i of each spans the
            same time when aligned).
        vshift: largest shift, in windows (samples at the level's rate).
        padding: "zero" — SyncNet's `calc_pdist`: the audio embeddings are zero-padded by `vshift` and every
            landmark window counts at every shift (windows beyond the ends are compared with the zero vector).
            "valid" — only windows whose shifted audio partner exists are averaged, and shifts where fewer than
            half of the N windows overlap are left out (NaN), so the result does not depend on embedding norms.
    Returns:
        mdist: (2·vshift + 1,) float64; entry j is the mean over i of ‖e_x[i] − e_a[i + j − vshift]‖ (NaN for
        shifts left out by "valid").
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    e_x = np.asarray(e_x, dtype=np.float64)
    e_a = np.asarray(e_a, dtype=np.float64)
    if e_x.shape != e_a.shape or e_x.ndim != 2:
        raise ValueError(f"expected two (N, E) arrays of the same shape, got {e_x.shape} and {e_a.shape}")
    n = len(e_x)
    if padding == "zero":
        pad = np.zeros((vshift, e_a.shape[1]))
        padded = np.concatenate([pad, e_a, pad])
        return np.array([np.linalg.norm(e_x - padded[j : j + n], axis=1).mean() for j in range(2 * vshift + 1)])
    min_overlap = math.ceil(n / 2)
    out = np.full(2 * vshift + 1, np.nan)
    for j in range(2 * vshift + 1):
        k = j - vshift  # landmark window i pairs with audio window i + k
        lo, hi = max(0, -k), min(n, n - k)
        if hi - lo >= min_overlap:
            out[j] = np.linalg.norm(e_x[lo:hi] - e_a[lo + k : hi + k], axis=1).mean()
    return out


def offset_confidence(mdist: np.ndarray, vshift: int) -> tuple[int, float, float]:
    """(AV-Off in samples at the level's rate, AV-Conf = median − min, LSE-D = min) from `mdist` (2·vshift+1,);
    NaN entries (shifts left out) are ignored."""
    j = int(np.nanargmin(mdist))
    lo = float(mdist[j])
    return vshift - j, float(np.nanmedian(mdist)) - lo, lo


def _windows(x: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """(L, ...) -> (len(starts), length, ...) windows x[s : s + length]."""
    idx = starts[:, None] + np.arange(length)[None, :]
    return x[idx]


def _device(pyr) -> torch.device:
    try:
        return next(pyr.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def level_window(cfg, lvl: int) -> tuple[int, int, int, int]:
    """(input pyramid level, landmark samples, audio rows, hop) of one level-`lvl` window of a pyramid config:
    `cfg.window(lvl)` where the config has it (full-rate levels read level 0 over 5 · 2^l frames, hop 2^l), else
    (lvl, landmark_frames, audio_frames, 1)."""
    if hasattr(cfg, "window"):
        nl, na, hop = cfg.window(lvl)
        return cfg.input_level(lvl), nl, na, hop
    return lvl, cfg.landmark_frames, cfg.audio_frames, 1


def embed_level(
    pyr: PyramidLike, lvl: int, landmarks_l: np.ndarray, mfcc_l: np.ndarray, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Embed all windows of level `lvl`, one per level-`lvl` sample.

    Args:
        landmarks_l: (T_l, 68, 2) landmarks and mfcc_l: (A_l, n_mfcc) MFCC of the pyramid level the level reads
            (`level_window`: level `lvl` itself, or level 0 for a full-rate level); A_l ≈ 4 T_l.
    Returns:
        (e_x (N, E), e_a (N, E)) float64 with N = min((T_l − L) // h + 1, (A_l − A) // (4 h) + 1) for windows of L
        landmark samples and A audio rows with hop h (5, 20, 1 on a pyramid level); window i covers landmark
        samples [h i, h i + L) and MFCC samples [4 h i, 4 h i + A). N may be ≤ 0 (nothing to embed: empty arrays).
    """
    _, nl, na, hop = level_window(pyr.cfg, lvl)
    ratio = na // nl
    n = min((len(landmarks_l) - nl) // hop + 1, (len(mfcc_l) - na) // (ratio * hop) + 1)
    if n <= 0:
        return np.zeros((0, 0)), np.zeros((0, 0))
    starts = np.arange(n) * hop
    dev = _device(pyr)
    ex, ea = [], []
    with torch.no_grad():
        for b in range(0, n, batch_size):
            s = starts[b : b + batch_size]
            lm = torch.from_numpy(_windows(landmarks_l, s, nl).astype(np.float32)).to(dev)
            mf = torch.from_numpy(_windows(mfcc_l, s * ratio, na).astype(np.float32)).to(dev)
            e_a, e_x = pyr.embed(lvl, lm, mf)
            ea.append(e_a.detach().cpu().double().numpy())
            ex.append(e_x.detach().cpu().double().numpy())
    return np.concatenate(ex), np.concatenate(ea)


def av_sync(
    pyr: PyramidLike,
    landmarks: np.ndarray,
    mfcc: np.ndarray,
    levels: Sequence[int] | None = None,
    vshift: int = 15,
    batch_size: int = 512,
    padding: str = "zero",
) -> list[dict]:
    """SyncNet AV offset and confidence at each pyramid level.

    Args:
        pyr: a syncer pyramid (see :class:`PyramidLike`), in eval mode.
        landmarks: (T, 68, 2) float32 normalised landmarks at 25 fps.
        mfcc: (4T, n_mfcc) raw MFCC at 100 Hz (the pyramid normalises them); frames 4t .. 4t+3 belong to
            landmark frame t. A longer or shorter array is fine: only aligned windows are used.
        levels: levels to evaluate (default all of `pyr.cfg.num_levels`).
        vshift: largest shift tried, in samples at each level's rate (SyncNet's run_syncnet default 15).
        padding: "zero" (SyncNet) or "valid" (see :func:`shift_distances`).
    Returns:
        One dict per level: `level`, `segment_ms` (200 · 2^l), `frame_ms` (40 · 2^l, one offset unit),
        `num_windows` N, `offset_frames` (int, at that level's rate; positive = audio leads, see module doc),
        `confidence` (AV-Conf), `min_dist` (LSE-D), `mdist` ((2·vshift+1,) float64), `reason` (None when valid).
        When the sequence is too short for a level (N < 1), `offset_frames` and `mdist` are None,
        `confidence`/`min_dist` NaN, and `reason` says why.
    """
    landmarks = np.asarray(landmarks, dtype=np.float32)
    mfcc = np.asarray(mfcc, dtype=np.float32)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2):
        raise ValueError(f"expected (T, 68, 2) landmarks, got {landmarks.shape}")
    if mfcc.ndim != 2:
        raise ValueError(f"expected (4T, n_mfcc) mfcc, got {mfcc.shape}")
    cfg = pyr.cfg
    if hasattr(pyr, "prepare_sequence"):  # the syncer's own sequence-level centring, as in its training
        landmarks = np.asarray(pyr.prepare_sequence(landmarks), dtype=np.float32)
    levels = list(range(cfg.num_levels)) if levels is None else list(levels)
    out = []
    for lvl in levels:
        entry = {
            "level": lvl,
            "segment_ms": cfg.landmark_frames * 40.0 * 2**lvl,
            "frame_ms": 40.0 * 2**lvl,
            "num_windows": 0,
            "offset_frames": None,
            "confidence": math.nan,
            "min_dist": math.nan,
            "mdist": None,
            "reason": None,
        }
        if not 0 <= lvl < cfg.num_levels:
            entry["reason"] = f"level {lvl} not in the pyramid (0..{cfg.num_levels - 1})"
            out.append(entry)
            continue
        src, nl, na, _ = level_window(cfg, lvl)
        lm_l = input_pyramid.level(landmarks, src, cfg.pyramid_kernel)
        mf_l = input_pyramid.level(mfcc, src, cfg.pyramid_kernel)
        e_x, e_a = embed_level(pyr, lvl, lm_l, mf_l, batch_size)
        if len(e_x) < 1:
            entry["reason"] = (
                f"too short: {len(landmarks)} frames / {len(mfcc)} mfcc give {len(lm_l)} landmark and "
                f"{len(mf_l)} audio samples at pyramid level {src}, fewer than one level-{lvl} "
                f"{nl}/{na}-sample window"
            )
            out.append(entry)
            continue
        mdist = shift_distances(e_x, e_a, vshift, padding)
        off, conf, lo = offset_confidence(mdist, vshift)
        entry.update(num_windows=len(e_x), offset_frames=off, confidence=conf, min_dist=lo, mdist=mdist)
        out.append(entry)
    return out
