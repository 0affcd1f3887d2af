"""The audio front end as a torch module: the same transform as `stream_engine.features`, built from matrix
products only (no STFT/DFT operator), so it trains on batches, exports to ONNX inside the step graph and
parses under TensorRT.
"""

from __future__ import annotations

import torch
from torch import nn

from stream_engine.features import FrontEndConfig, frontend_matrices


class TorchMfcc(nn.Module):
    """Causal MFCC of raw PCM that already carries its left context.

    Input `audio` is (B, num_samples) with num_samples = context_samples + hop_length * F; the output is the
    F mfcc frames whose windows end at context_samples + hop_length * (j + 1). At stream start the context is
    zeros (see :func:`with_silence_context`).
    """

    dft: torch.Tensor
    mel: torch.Tensor
    dct: torch.Tensor

    def __init__(self, cfg: FrontEndConfig) -> None:
        super().__init__()
        self.cfg = cfg
        m = frontend_matrices(cfg)
        # One (n_fft, 2 * bins) product gives real and imaginary parts together.
        dft = torch.tensor(__import__("numpy").concatenate([m["dft_cos"], m["dft_sin"]], axis=1), dtype=torch.float32)
        self.register_buffer("dft", dft, persistent=False)
        self.register_buffer("mel", torch.tensor(m["mel"], dtype=torch.float32), persistent=False)
        self.register_buffer("dct", torch.tensor(m["dct"], dtype=torch.float32), persistent=False)
        self.num_bins = cfg.n_fft // 2 + 1
        self.log_floor = cfg.log_floor

    def logmel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, context + hop*F) PCM -> (B, F, n_mels) log-mel dB."""
        frames = audio.unfold(-1, self.cfg.n_fft, self.cfg.hop_length)  # (B, F, n_fft)
        spec = frames @ self.dft  # (B, F, 2*bins)
        re, im = spec[..., : self.num_bins], spec[..., self.num_bins :]
        power = re * re + im * im
        mel = torch.clamp(power @ self.mel, min=self.log_floor)
        return torch.log10(mel) * 10.0

    def mfcc_from_logmel(self, logmel: torch.Tensor) -> torch.Tensor:
        """(…, n_mels) -> (…, n_mfcc)."""
        return logmel @ self.dct

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, context + hop*F) PCM -> (B, F, n_mfcc)."""
        return self.mfcc_from_logmel(self.logmel(audio))


def with_silence_context(audio: torch.Tensor, cfg: FrontEndConfig) -> torch.Tensor:
    """Prepend the `context_samples` zeros a stream starts with, and drop an incomplete trailing hop.

    (B, num_samples) -> (B, context + hop * (num_samples // hop)).
    """
    usable = (audio.shape[-1] // cfg.hop_length) * cfg.hop_length
    pad = audio.new_zeros(audio.shape[:-1] + (cfg.context_samples,))
    return torch.cat([pad, audio[..., :usable]], dim=-1)
