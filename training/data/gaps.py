"""Missed face detections: interpolate short gaps, split sequences at long ones."""

from __future__ import annotations

import numpy as np


def valid_frames(points: np.ndarray) -> np.ndarray:
    """(T, 68, 2) -> (T,) bool: True where every coordinate of the frame is finite."""
    return np.all(np.isfinite(points), axis=(1, 2))


def split_at_gaps(
    points: np.ndarray, max_gap_frames: int = 5, min_length_frames: int = 25
) -> list[tuple[int, int, np.ndarray]]:
    """Fill gaps of at most `max_gap_frames` missing frames by linear interpolation and cut at longer ones.

    Args:
        points: (T, 68, 2) landmarks with NaN rows where no face was found.
        max_gap_frames: longest run of missing frames that is interpolated.
        min_length_frames: pieces shorter than this are dropped.
    Returns:
        [(start, end, filled)] with filled = (end - start, 68, 2) finite float32, for frames [start, end).
        Leading and trailing missing frames are dropped.
    """
    ok = valid_frames(points)
    pieces: list[tuple[int, int]] = []
    t, num_frames = 0, len(points)
    while t < num_frames:
        if not ok[t]:
            t += 1
            continue
        start = end = t
        while end < num_frames:
            if ok[end]:
                end += 1
                continue
            gap_end = end
            while gap_end < num_frames and not ok[gap_end]:
                gap_end += 1
            if gap_end - end <= max_gap_frames and gap_end < num_frames:
                end = gap_end
            else:
                break
        pieces.append((start, end))
        t = end
    out = []
    for start, end in pieces:
        if end - start < min_length_frames:
            continue
        seg = points[start:end].astype(np.float32).copy()
        good = ok[start:end]
        if not good.all():
            idx = np.arange(end - start)
            flat = seg.reshape(len(seg), -1)
            for c in range(flat.shape[1]):
                flat[~good, c] = np.interp(idx[~good], idx[good], flat[good, c])
            seg = flat.reshape(seg.shape)
        out.append((start, end, seg))
    return out
