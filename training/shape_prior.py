"""A differentiable face-shape prior: the evaluation's PCA plausibility distance as a hinge loss.

`msync eval` calls a frame plausible when its probabilistic-PCA distance to a face-shape space (Procrustes-
aligned, fitted on the training split; `training.metrics.dynamics.ShapeSpace`) is within the 99th percentile
of ground truth's. A GAN that moves lips and head freely can leave that space (a jaw that stretches, lips that
cross), and nothing in the paper's losses stops it over long rollouts. This module computes the same distance in
torch, so the generator can be trained with

    L_shape = mean over frames of max(0, d(x) / tau - 1)

where tau is the distance of the `quantile`-th percentile of training frames: frames inside the space cost
nothing, so ordinary expressions and head motion are untouched. It is fitted on the training split only (the
test split never enters training).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.metrics.dynamics import ShapeSpace


class ShapePrior(nn.Module):
    """Hinge loss on the PPCA distance to a fitted `ShapeSpace` (see the module docstring).

    Buffers: mean (68, 2) unit-norm centred Procrustes mean; components (k, 136); variances (k,);
    residual_variance and threshold (scalars).
    """

    mean: torch.Tensor
    components: torch.Tensor
    variances: torch.Tensor
    residual_variance: torch.Tensor
    threshold: torch.Tensor

    def __init__(self, space: ShapeSpace) -> None:
        super().__init__()
        if space.threshold is None:
            raise ValueError("ShapePrior needs a calibrated ShapeSpace (call calibrate() first)")
        self.register_buffer("mean", torch.tensor(space.mean, dtype=torch.float32))
        self.register_buffer("components", torch.tensor(space.components, dtype=torch.float32))
        self.register_buffer("variances", torch.tensor(space.variances, dtype=torch.float32))
        self.register_buffer("residual_variance", torch.tensor(float(space.residual_variance)))
        self.register_buffer("threshold", torch.tensor(float(space.threshold)))

    @classmethod
    def fit(
        cls, shapes: np.ndarray, quantile: float = 99.0, variance: float = 0.95, max_frames: int = 20000, seed: int = 0
    ) -> ShapePrior:
        """Fit on (N, 68, 2) training frames (a random subset of `max_frames`) and set tau at `quantile`."""
        s = np.asarray(shapes, dtype=np.float64)
        if len(s) > max_frames:
            s = s[np.random.default_rng(seed).choice(len(s), max_frames, replace=False)]
        space = ShapeSpace.fit(s, variance=variance)
        space.calibrate(s, quantile)
        return cls(space)

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 68, 2) landmarks -> (...,) PPCA distance, as `ShapeSpace.distance` (float32, differentiable)."""
        c = x - x.mean(dim=-2, keepdim=True)
        s = c / c.flatten(-2).norm(dim=-1).clamp_min(1e-8)[..., None, None]
        m = self.mean
        # Rotate onto the mean: the 2-D closed form (cos, sin) ∝ (Σ s·m, Σ s×m), no reflection.
        dot = (s * m).sum(dim=(-1, -2))
        cross = (s[..., 0] * m[:, 1] - s[..., 1] * m[:, 0]).sum(dim=-1)
        r = torch.sqrt(dot**2 + cross**2).clamp_min(1e-12)
        cos, sin = (dot / r)[..., None], (cross / r)[..., None]
        sx, sy = s[..., 0], s[..., 1]
        aligned = torch.stack([cos * sx - sin * sy, sin * sx + cos * sy], dim=-1)
        d = aligned.flatten(-2) - m.flatten()
        coef = d @ self.components.T
        resid = d - coef @ self.components
        sq = (coef**2 / self.variances).sum(-1) + (resid**2).sum(-1) / self.residual_variance
        return torch.sqrt(sq + 1e-12)

    def plausible(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 68, 2) -> (...,) bool: distance within tau."""
        return self.distance(x) <= self.threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean hinge max(0, d / tau - 1) over all frames of (..., 68, 2)."""
        return torch.relu(self.distance(x) / self.threshold - 1.0).mean()
