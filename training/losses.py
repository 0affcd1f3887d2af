"""The multi-scale audio-visual synchrony loss (paper §3.1, eq. 4 averaged over levels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.pyramid import level_torch


def level_windows(
    landmarks: torch.Tensor,
    mfcc: torch.Tensor,
    lvl: int,
    kernel: int,
    landmark_frames: int = 5,
    audio_frames: int = 20,
    ratio: int = 4,
):
    """All stride-1 aligned segment pairs of a sequence at pyramid level `lvl`.

    Args:
        landmarks: (B, T, 68, 2); mfcc: (B, ratio * T, n_mfcc).
    Returns:
        (windows_landmarks (B, n, 5, 68, 2), windows_mfcc (B, n, 20, n_mfcc)), or None if the sequence is too
        short for one segment at this level.
    """
    b, t = landmarks.shape[:2]
    lm = level_torch(landmarks.flatten(2), lvl, kernel)  # (B, T_l, 136)
    mf = level_torch(mfcc, lvl, kernel)  # (B, A_l, n_mfcc)
    n = min(lm.shape[1] - landmark_frames + 1, (mf.shape[1] - audio_frames) // ratio + 1)
    if n <= 0:
        return None
    lw = lm.unfold(1, landmark_frames, 1)[:, :n]  # (B, n, 136, 5)
    lw = lw.permute(0, 1, 3, 2).unflatten(-1, (-1, 2))
    aw = mf.unfold(1, audio_frames, ratio)[:, :n].permute(0, 1, 3, 2)  # (B, n, 20, n_mfcc)
    return lw, aw


def multiscale_sync_loss(syncers, landmarks: torch.Tensor, mfcc: torch.Tensor, levels=(0, 1, 2, 3)):
    """Minus the mean cosine score of the frozen syncers, averaged over `levels`.

    Args:
        syncers: a frozen `SyncerPyramid` (gradients flow to the landmarks only).
        landmarks: (B, T, 68, 2) generated sequence (with its conditioning frame).
        mfcc: (B, 4T, n_mfcc) the audio of those frames.
    Returns:
        (loss scalar, {level: mean cosine}).
    """
    cfg = syncers.cfg
    landmarks = syncers.prepare_sequence(landmarks)
    losses, cosines = [], {}
    for lvl in levels:
        w = level_windows(landmarks, mfcc, lvl, cfg.pyramid_kernel, cfg.landmark_frames, cfg.audio_frames)
        if w is None:
            continue
        lw, aw = w
        e_a, e_x = syncers.embed(lvl, lw.flatten(0, 1), aw.flatten(0, 1))
        cos = F.cosine_similarity(e_a, e_x, dim=-1).mean()
        losses.append(-cos)
        cosines[lvl] = float(cos.detach())
    if not losses:
        raise ValueError("sequence too short for any syncer level")
    return torch.stack(losses).mean(), cosines
