"""Dynamics metrics for `msync eval`: a Fréchet distance on motion-encoder features and face-shape plausibility.

FD-motion (ours; a stand-in for FVD). FVD compares I3D video features; I3D weights are not available offline
and our output is landmarks, not video. The motion encoder is the landmark encoder of the *metric* syncer
pyramid at each level (trained by us with the SyncNet loss, never used to train a generator): every stride-1
window of 5 level-l samples (200·2^l ms) is embedded, and the Fréchet distance between the Gaussian fits of
the ground-truth and generated feature sets is reported per level. The encoder was trained to recognise
speech-related motion, so FD-motion measures realism of motion as that encoder sees it; it is not comparable
with published FVD numbers, and it is biased upwards for small sample sets (report the ground-truth
split-half floor next to it).

Plausibility: a point-distribution model of face shape. Training-split frames are aligned by generalised
Procrustes analysis (translation, scale and in-plane rotation removed); a PCA keeps the components that
explain `variance` of the aligned shapes. A frame's distance to that shape space is the probabilistic-PCA
Mahalanobis distance (coefficients scaled by their variances, plus the residual outside the subspace scaled
by the mean discarded variance), so both an impossible shape (off the subspace) and an extreme one (far along
a component, e.g. a jaw dropped beyond anything seen) count. The threshold is a percentile (99th) of the
distances of held-out ground-truth frames; a frame is plausible when its distance is at most the threshold.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from training import pyramid

FD_NAME = "FD-motion (ours; stand-in for FVD, I3D weights unavailable offline)"


# ------------------------------------------------------------------------------------------- Fréchet distance


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, E) features -> (mean (E,), covariance (E, E)); N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need (N >= 2, E) features, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (the FID/FVD formula).

    d² = ‖μx − μy‖² + Tr(Σx) + Tr(Σy) − 2 Tr((Σx Σy)^½). Tr((Σx Σy)^½) is computed as the sum of the
    square roots of the eigenvalues of the symmetric PSD matrix Σx^½ Σy Σx^½ (the same trace as FID's
    `scipy.linalg.sqrtm(Σx Σy)`, without its complex round-off). Returns d² (as FID does); values within
    1e-7 × (Tr Σx + Tr Σy) of 0 are round-off and returned as 0; NaN when either set has fewer than 2 rows.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    mx, sx = gaussian_stats(x)
    my, sy = gaussian_stats(y)
    sx_half = _psd_sqrt(sx)
    middle = sx_half @ sy @ sx_half
    tr = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2.0), 0.0, None)).sum())
    total = float(np.trace(sx) + np.trace(sy))
    d = float(((mx - my) ** 2).sum() + total - 2.0 * tr)
    if np.array_equal(x, y) or d <= 1e-7 * total:  # round-off (~sqrt(eps) on near-null eigenvalues) is 0
        return 0.0
    return d


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _width(cfg, lvl: int) -> int:
    return cfg.embedding_width(lvl) if hasattr(cfg, "embedding_width") else cfg.embed_dim


def motion_features(pyr, landmarks: np.ndarray, lvl: int, batch_size: int = 1024) -> np.ndarray:
    """Motion-encoder features of one sequence: every stride-1 window of 5 level-`lvl` samples (at a full-rate
    level of the pyramid: the 5 · 2^l frames of the same span, one window per level-`lvl` sample).

    Args:
        pyr: a `training.models.syncer.SyncerPyramid` (the metric syncers), in eval mode.
        landmarks: (T, 68, 2) normalised landmarks at 25 fps.
    Returns:
        (N, E) float64, N = T_l − 4 windows (0 rows when the sequence is too short for the level).
    """
    import torch

    from training.metrics.sync import level_window

    cfg = pyr.cfg
    x = np.asarray(landmarks, dtype=np.float32)
    if hasattr(pyr, "prepare_sequence"):  # the same sequence-level centring as in av_sync / training
        x = np.asarray(pyr.prepare_sequence(x), dtype=np.float32)
    src, nl, _, hop = level_window(cfg, lvl)  # a full-rate level reads level 0 over 5 · 2^l frames
    x_l = pyramid.level(x, src, cfg.pyramid_kernel)
    n = (len(x_l) - nl) // hop + 1
    if n <= 0:
        return np.zeros((0, _width(cfg, lvl)))
    idx = hop * np.arange(n)[:, None] + np.arange(nl)[None, :]
    windows = x_l[idx]  # (N, 5, 68, 2)
    try:
        dev = next(pyr.parameters()).device
    except StopIteration:
        dev = torch.device("cpu")
    out = []
    with torch.no_grad():
        for b in range(0, n, batch_size):
            w = torch.from_numpy(np.ascontiguousarray(windows[b : b + batch_size])).to(dev)
            e = pyr.embed_landmarks(lvl, w)
            out.append(e.detach().cpu().double().numpy())
    return np.concatenate(out)


def feature_sets(pyr, sequences, levels=None) -> list[np.ndarray]:
    """Motion features of many (T, 68, 2) sequences, pooled per level: [(N_l, E) for each level]."""
    levels = range(pyr.cfg.num_levels) if levels is None else levels
    out = []
    for lvl in levels:
        parts = [motion_features(pyr, s, lvl) for s in sequences]
        parts = [p for p in parts if len(p)]
        out.append(np.concatenate(parts) if parts else np.zeros((0, _width(pyr.cfg, lvl))))
    return out


# ------------------------------------------------------------------------------------------- shape plausibility


def _as_shapes(shapes: np.ndarray) -> np.ndarray:
    s = np.asarray(shapes, dtype=np.float64)
    if s.ndim == 2:
        s = s[None]
    if s.ndim != 3 or s.shape[1:] != (68, 2):
        raise ValueError(f"expected (N, 68, 2) shapes, got {s.shape}")
    return s


def normalise_shapes(shapes: np.ndarray) -> np.ndarray:
    """Remove translation and scale: centred, unit Frobenius norm. (N, 68, 2) -> (N, 68, 2)."""
    s = _as_shapes(shapes)
    c = s - s.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(c, axis=(1, 2), keepdims=True)
    return c / np.where(norm > 0, norm, 1.0)


def align_shapes(shapes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Procrustes: normalise every shape, then rotate it (no reflection) onto the normalised `reference`."""
    s = normalise_shapes(shapes)
    ref = normalise_shapes(reference)[0]
    # 2-D closed form: the rotation angle that best maps s onto ref is atan2(Σ s × ref, Σ s · ref).
    dot = (s * ref[None]).sum(axis=(1, 2))
    cross = (s[..., 0] * ref[None, :, 1] - s[..., 1] * ref[None, :, 0]).sum(axis=1)
    theta = np.arctan2(cross, dot)
    c, si = np.cos(theta)[:, None], np.sin(theta)[:, None]
    x, y = s[..., 0], s[..., 1]
    return np.stack([c * x - si * y, si * x + c * y], axis=-1)


@dataclasses.dataclass
class ShapeSpace:
    """A PCA face-shape model with a plausibility threshold. Build with :meth:`fit`, then :meth:`calibrate`.

    Attributes:
        mean: (68, 2) Procrustes mean shape (centred, unit norm).
        components: (k, 136) orthonormal principal directions.
        variances: (k,) their variances.
        residual_variance: mean variance of the discarded directions (per dimension).
        threshold: plausibility threshold on :meth:`distance` (None until calibrated).
        quantile: the percentile of held-out ground truth the threshold was set at.
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float
    threshold: float | None = None
    quantile: float | None = None
    num_train_frames: int = 0

    @classmethod
    def fit(cls, shapes: np.ndarray, variance: float = 0.95, iterations: int = 4) -> ShapeSpace:
        """Generalised Procrustes alignment of (N, 68, 2) shapes (non-finite rows dropped), then PCA."""
        s = _as_shapes(shapes)
        s = s[np.all(np.isfinite(s), axis=(1, 2))]
        if len(s) < 10:
            raise ValueError(f"need at least 10 finite shapes to fit a shape space, got {len(s)}")
        mean = normalise_shapes(s[0])[0]
        for _ in range(iterations):
            aligned = align_shapes(s, mean)
            mean = normalise_shapes(aligned.mean(axis=0))[0]
        aligned = align_shapes(s, mean)
        d = aligned.reshape(len(s), -1) - mean.reshape(1, -1)
        w, v = np.linalg.eigh(d.T @ d / max(len(s) - 1, 1))
        order = np.argsort(w)[::-1]
        ev, vt = np.clip(w[order], 0.0, None), v[:, order].T
        cum = np.cumsum(ev) / ev.sum()
        k = int(np.searchsorted(cum, variance) + 1)
        k = min(k, len(ev) - 1)
        # 4 of the 136 dimensions are removed by the alignment (2 translation, scale, rotation).
        rest = max(136 - 4 - k, 1)
        resid = float(ev[k:].sum() / rest)
        return cls(
            mean=mean, components=vt[:k], variances=ev[:k], residual_variance=max(resid, 1e-12), num_train_frames=len(s)
        )

    @property
    def num_components(self) -> int:
        return len(self.variances)

    def distance(self, shapes: np.ndarray) -> np.ndarray:
        """Probabilistic-PCA distance of each (68, 2) shape to the shape space: (N,); inf for non-finite rows."""
        s = _as_shapes(shapes)
        ok = np.all(np.isfinite(s), axis=(1, 2))
        out = np.full(len(s), np.inf)
        if ok.any():
            d = align_shapes(s[ok], self.mean).reshape(int(ok.sum()), -1) - self.mean.reshape(1, -1)
            c = d @ self.components.T
            r = d - c @ self.components
            out[ok] = np.sqrt((c**2 / self.variances).sum(axis=1) + (r**2).sum(axis=1) / self.residual_variance)
        return out

    def calibrate(self, heldout_shapes: np.ndarray, quantile: float = 99.0) -> float:
        """Set the threshold to the `quantile` percentile of held-out ground-truth distances; returns it."""
        dist = self.distance(heldout_shapes)
        dist = dist[np.isfinite(dist)]
        if not dist.size:
            raise ValueError("no finite held-out shapes to calibrate the plausibility threshold")
        self.threshold, self.quantile = float(np.percentile(dist, quantile)), float(quantile)
        return self.threshold

    def plausible(self, shapes: np.ndarray) -> np.ndarray:
        """(N,) bool: distance within the calibrated threshold (non-finite frames are never plausible)."""
        if self.threshold is None:
            raise ValueError("ShapeSpace.calibrate() must run before plausible()")
        return self.distance(shapes) <= self.threshold

    def plausible_share(self, shapes: np.ndarray) -> float:
        s = _as_shapes(shapes)
        return float(self.plausible(s).mean()) if len(s) else float("nan")

    def summary(self) -> dict:
        return {
            "num_components": self.num_components,
            "num_train_frames": self.num_train_frames,
            "explained_variance_top": [float(v) for v in self.variances[:5]],
            "residual_variance": self.residual_variance,
            "threshold": self.threshold,
            "quantile": self.quantile,
        }
