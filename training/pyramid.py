"""The multi-scale input pyramid of paper §3.1 (eq. 5): centred average pooling that blurs, then halves the rate.

Applied identically to landmark sequences (25 fps at level 0) and to audio features (100 Hz at level 0), so
that at every level a segment of 5 landmark samples pairs with 20 audio samples over the same time span
(200 ms at level 0, 1.6 s at level 3). Syncers are training/evaluation tools, so this may look ahead.
Works on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import numpy as np


def _smooth_np(x: np.ndarray, kernel: int) -> np.ndarray:
    half = kernel // 2
    num_steps = x.shape[0]
    mode = "reflect" if num_steps > half else "edge"
    pad = [(half, half)] + [(0, 0)] * (x.ndim - 1)
    padded = np.pad(x, pad, mode=mode)  # type: ignore[call-overload]  # numpy stubs: mode is a str variable
    csum = np.cumsum(padded, axis=0, dtype=np.float64)
    csum = np.concatenate([np.zeros((1,) + x.shape[1:]), csum], axis=0)
    return ((csum[kernel:] - csum[:-kernel]) / kernel).astype(x.dtype)


def downsample(x: np.ndarray, kernel: int) -> np.ndarray:
    """One pyramid step along axis 0: centred moving average of odd width `kernel` (reflect padding), then [::2].

    (T, ...) -> (ceil(T / 2), ...).
    """
    if kernel % 2 != 1:
        raise ValueError(f"pyramid kernel must be odd, got {kernel}")
    return _smooth_np(x, kernel)[::2]


def level(x: np.ndarray, lvl: int, kernel: int) -> np.ndarray:
    """Apply `lvl` pyramid steps: (T, ...) -> (ceil(T / 2**lvl), ...)."""
    for _ in range(lvl):
        x = downsample(x, kernel)
    return x


def build(x: np.ndarray, num_levels: int, kernel: int) -> list[np.ndarray]:
    """[level 0 (= x), level 1, ..., level num_levels-1]."""
    out = [x]
    for _ in range(num_levels - 1):
        out.append(downsample(out[-1], kernel))
    return out


def downsample_torch(x, kernel: int):
    """Differentiable pyramid step on (B, T, D) tensors, identical to :func:`downsample` along T."""
    import torch.nn.functional as F

    if kernel % 2 != 1:
        raise ValueError(f"pyramid kernel must be odd, got {kernel}")
    half = kernel // 2
    xt = x.transpose(1, 2)  # (B, D, T)
    mode = "reflect" if x.shape[1] > half else "replicate"
    padded = F.pad(xt, (half, half), mode=mode)
    return F.avg_pool1d(padded, kernel, stride=1)[..., ::2].transpose(1, 2)


def level_torch(x, lvl: int, kernel: int):
    """`lvl` differentiable pyramid steps on (B, T, D)."""
    for _ in range(lvl):
        x = downsample_torch(x, kernel)
    return x
