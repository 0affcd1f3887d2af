"""1-D ConvNeXt building blocks shared by the syncers, the generator and the discriminators."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, T) tensor."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class ConvNeXtBlock1d(nn.Module):
    """Depthwise conv (kernel k, dilation d) -> LayerNorm -> pointwise MLP (expansion e, GELU) -> residual.

    (B, C, T) -> (B, C, T). With `causal=True` the depthwise conv sees only the present and the past
    (left padding (k-1)*d), which is what the streaming generator needs; otherwise it is centred.
    """

    def __init__(
        self, channels: int, kernel: int = 3, dilation: int = 1, expansion: int = 4, causal: bool = False
    ) -> None:
        super().__init__()
        self.kernel, self.dilation, self.causal = kernel, dilation, causal
        self.dwconv = nn.Conv1d(channels, channels, kernel, dilation=dilation, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pw1 = nn.Linear(channels, expansion * channels)
        self.pw2 = nn.Linear(expansion * channels, channels)

    @property
    def receptive_pad(self) -> int:
        """Samples of context the depthwise conv needs: (k - 1) * dilation."""
        return (self.kernel - 1) * self.dilation

    def mix(self, conv_out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Everything after the depthwise conv: (B, C, T) conv output + (B, C, T) input -> (B, C, T)."""
        y = self.norm(conv_out.transpose(1, 2))
        y = self.pw2(F.gelu(self.pw1(y)))
        return residual + y.transpose(1, 2)

    def mix_frame(self, conv_out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """`mix` for a single frame without a time axis: (B, C) conv output + (B, C) input -> (B, C)."""
        return residual + self.pw2(F.gelu(self.pw1(self.norm(conv_out))))

    def forward(self, x: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, T) -> (B, C, T). `history` (C,), causal blocks only: the input assumed before the first frame
        (default zeros), e.g. what digital silence gives this block (`Generator.silence_inputs`)."""
        pad = self.receptive_pad
        if not self.causal:
            padded = F.pad(x, (pad // 2, pad - pad // 2), mode="replicate")
        elif history is None:
            padded = F.pad(x, (pad, 0))
        else:
            padded = torch.cat([history[None, :, None].expand(x.shape[0], -1, pad), x], dim=2)
        return self.mix(self.dwconv(padded), x)


class Encoder1d(nn.Module):
    """Small ConvNeXt-1D encoder: (B, T, in_dim) -> (B, out_dim).

    A pointwise stem, then stages of ConvNeXt blocks separated by stride-2 downsampling convs, then mean
    pooling over time and a linear head (as the syncer encoders of paper §3.1, narrower for CPU training).
    """

    def __init__(
        self, in_dim: int, widths: tuple[int, ...], depths: tuple[int, ...], out_dim: int, kernel: int = 3
    ) -> None:
        super().__init__()
        if len(widths) != len(depths):
            raise ValueError("widths and depths must have the same length")
        self.stem = nn.Sequential(nn.Linear(in_dim, widths[0]), nn.GELU(), nn.Linear(widths[0], widths[0]))
        stages = []
        prev = widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [ChannelLayerNorm(prev), nn.Conv1d(prev, w, kernel_size=3, stride=2, padding=1)]
            layers += [ConvNeXtBlock1d(w, kernel=kernel) for _ in range(d)]
            stages.append(nn.Sequential(*layers))
            prev = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.LayerNorm(prev), nn.Linear(prev, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x).transpose(1, 2)  # (B, C, T)
        h = self.stages(h)
        return self.head(h.mean(dim=-1))
