"""Discriminators (paper §3.3, after SUHMo): a frame discriminator D_f, a multi-window sequence projection
discriminator D_s, and a pair discriminator D_s^j that scores two sequences at once (max-pooled) to fight
mode collapse. None of them sees audio: synchrony comes from the frozen syncer pyramid.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """Sizes of the three discriminators.

    Attributes:
        windows: window lengths (frames) of the sequence discriminators; stride is half the window.
        pair: enable the pair discriminator D_s^j (batch must then be even).
    """

    num_landmarks: int = 68
    embed_dim: int = 256
    lstm_hidden: int = 256
    projection_hidden: int = 512
    windows: tuple[int, ...] = (5, 10, 20, 40)
    pair: bool = True
    distance_beta: float = 5.0


class FrameEmbed(nn.Module):
    """(B, T, 68, 2) -> (B, T, E): a per-frame MLP on absolute coordinates (head position included)."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        d, e = 2 * cfg.num_landmarks, cfg.embed_dim
        self.net = nn.Sequential(nn.Linear(d, e), nn.LayerNorm(e), nn.Linear(e, 2 * e), nn.GELU(), nn.Linear(2 * e, e))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(((x - 0.5) * 4.0).flatten(2))


class FrameDiscriminator(nn.Module):
    """D_f: realism of single frames. (B, T, 68, 2) -> (B, T) scores."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        e = cfg.embed_dim
        self.embed = FrameEmbed(cfg)
        self.head = nn.Sequential(
            nn.LayerNorm(e), nn.Linear(e, 2 * e), nn.GELU(), nn.Linear(2 * e, e), nn.GELU(), nn.Linear(e, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x)).squeeze(-1)


class Projection(nn.Module):
    """Projection head: score = A(c(d) <y, V phi(h)> + psi(phi(h))), all linear layers spectrally normalised.

    c(d) = d^(-1/beta) down-weights the conditioning for chunks far from the conditioning frames.
    """

    def __init__(self, hidden: int, proj: int, beta: float) -> None:
        super().__init__()
        self.phi = spectral_norm(nn.Linear(hidden, proj))
        self.v = spectral_norm(nn.Linear(proj, hidden))
        self.psi = spectral_norm(nn.Linear(proj, proj))
        self.a = spectral_norm(nn.Linear(proj, 1))
        self.log_beta = nn.Parameter(torch.tensor(float(beta)).log())

    def forward(self, h: torch.Tensor, y: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        """h (N, H) chunk states, y (N, H) conditioning, distance (N,) frames from the conditioning -> (N,)."""
        phi = F.relu(self.phi(h))
        coef = distance.clamp(min=1.0).pow(-1.0 / self.log_beta.exp())
        proj = (y * self.v(phi)).sum(-1, keepdim=True) * coef[:, None]
        return self.a(proj + F.relu(self.psi(phi))).squeeze(-1)


class SequenceDiscriminator(nn.Module):
    """D_s (multi-window) or, with `pair=True`, D_s^j: LSTM states of every window chunk, conditioned on the
    LSTM state of the conditioning frames, scored by a projection head and averaged over chunks then windows."""

    def __init__(self, cfg: DiscriminatorConfig, pair: bool = False) -> None:
        super().__init__()
        self.cfg, self.pair = cfg, pair
        self.embed = FrameEmbed(cfg)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.lstm_hidden, batch_first=True)
        self.proj = Projection(cfg.lstm_hidden, cfg.projection_hidden, cfg.distance_beta)

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        """Pairs (2k, 2k+1) of the batch -> element-wise max (the 'pooler' of the pair discriminator)."""
        return h.view(h.shape[0] // 2, 2, *h.shape[1:]).amax(dim=1) if self.pair else h

    def forward(self, cond: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """cond (B, Tc, 68, 2) conditioning frames, x (B, T, 68, 2) scored frames -> (B,) or (B/2,) scores."""
        b, t = x.shape[:2]
        if self.pair and b % 2:
            raise ValueError("the pair discriminator needs an even batch")
        _, (y, _) = self.lstm(self.embed(cond))
        y = self._pool(y[0])
        e = self.embed(x)
        scores = []
        for w in self.cfg.windows:
            if w > t:
                continue
            stride = max(1, w // 2)
            chunks = e.unfold(1, w, stride).permute(0, 1, 3, 2)  # (B, n, w, E)
            n = chunks.shape[1]
            _, (h, _) = self.lstm(chunks.reshape(b * n, w, -1))
            h = self._pool(h[0].view(b, n, -1))  # (B', n, H)
            starts = torch.arange(n, device=x.device, dtype=x.dtype) * stride + 1.0
            bp = h.shape[0]
            s = self.proj(h.reshape(bp * n, -1), y[:, None].expand(-1, n, -1).reshape(bp * n, -1), starts.repeat(bp))
            scores.append(s.view(bp, n).mean(dim=1))
        return torch.stack(scores, dim=0).mean(dim=0)


class Discriminators(nn.Module):
    """The three discriminators together; `forward` returns their scores for one batch of sequences."""

    def __init__(self, cfg: DiscriminatorConfig = DiscriminatorConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.frame = FrameDiscriminator(cfg)
        self.sequence = SequenceDiscriminator(cfg)
        self.pair = SequenceDiscriminator(cfg, pair=True) if cfg.pair else None

    def forward(self, cond: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"frame": self.frame(x), "sequence": self.sequence(cond, x)}
        if self.pair is not None:
            out["pair"] = self.pair(cond, x)
        return out


def hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss (paper eq. 12)."""
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def hinge_g(fake: torch.Tensor) -> torch.Tensor:
    """Generator adversarial loss (paper eqs. 9-11)."""
    return -fake.mean()
