"""The training-only distillation head: reads the generator's causal audio levels and predicts the speech
teacher's features, so that a loss can pull the causal audio encoder (MFCC stem + ConvNeXt blocks) toward the
teacher. It is never part of the exported step: `Generator` does not own it and checkpoints store it apart.

Alignment: the generator produces landmark frame t from level column t + L (L = look-ahead), so the head reads
column t + L of every level to predict the teacher's frame t (`training.teacher`, centred on frame t).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class DistillHead(nn.Module):
    """Linear map from the concatenated audio levels at one column to standardised teacher features.

    (B, num_levels * channels, T) -> (B, T, teacher_dim). `teacher_mean`/`teacher_std` (buffers, (teacher_dim,))
    standardise the teacher's features; the head predicts (teacher - mean) / std.
    """

    teacher_mean: torch.Tensor
    teacher_std: torch.Tensor

    def __init__(self, in_dim: int, teacher_dim: int = 384) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, teacher_dim)
        self.register_buffer("teacher_mean", torch.zeros(teacher_dim))
        self.register_buffer("teacher_std", torch.ones(teacher_dim))

    def forward(self, columns: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(columns.transpose(1, 2)))

    def set_teacher_statistics(self, teacher) -> None:
        """Standardise by these teacher features: (frames, teacher_dim) numpy array -> their per-feature mean and
        std (+ 1e-3, so a constant feature does not divide by zero)."""
        self.teacher_mean.copy_(torch.from_numpy(teacher.mean(0)))
        self.teacher_std.copy_(torch.from_numpy(teacher.std(0) + 1e-3))

    def standardise(self, teacher: torch.Tensor) -> torch.Tensor:
        """(..., teacher_dim) raw teacher features -> standardised."""
        return (teacher - self.teacher_mean) / self.teacher_std


def level_columns(levels: list[torch.Tensor], first: int, num_frames: int) -> torch.Tensor:
    """Concatenate every level's columns first .. first + num_frames - 1: list of (B, C, W) -> (B, G C, T)."""
    return torch.cat([lvl[:, :, first : first + num_frames] for lvl in levels], dim=1)


def distill_loss(pred: torch.Tensor, target: torch.Tensor, cosine_weight: float = 0.5) -> tuple[torch.Tensor, dict]:
    """MSE on standardised features plus `cosine_weight` x (1 - cosine) per frame. pred, target (B, T, D);
    returns (loss, {"distill_mse", "distill_cos"})."""
    mse = ((pred - target) ** 2).mean()
    cos = nn.functional.cosine_similarity(pred, target, dim=-1).mean()
    loss = mse + cosine_weight * (1.0 - cos)
    return loss, {"distill_mse": float(mse.detach()), "distill_cos": float(cos.detach())}


def load_distill_head(path: str | Path, device: str = "cpu"):
    """A `DistillHead` from `OUT/distill_head` (stem or run directory)."""
    from training.checkpoint import load_meta, load_state

    p = Path(path)
    p = p / "distill_head" if p.is_dir() else p.with_suffix("")
    meta = load_meta(p)
    if meta.get("kind") != "distill_head":
        raise ValueError(f"{p}: checkpoint kind is {meta.get('kind')!r}, expected 'distill_head'")
    head = DistillHead(int(meta["in_dim"]), int(meta["teacher_dim"]))
    head.load_state_dict(load_state(p, device))
    return head.to(device)
