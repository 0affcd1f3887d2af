"""The audio front end as a torch module: the same transform as `stream_engine.features`, built from matrix
products only (no STFT/DFT operator), so it trains on batches, exports to ONNX inside the step graph and
parses under TensorRT.
"""

from __future__ import annotations

import numpy as np
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
        # The Hann window of `win_length` samples sits centred in the `n_fft` frame, so the DFT rows outside it
        # are zero: keep only the window's rows (and read only the window's samples), which gives the same
        # spectrum for (win_length / n_fft) of the multiply-adds. One (win_length, 2 * bins) product gives real
        # and imaginary parts together.
        self.window_offset = (cfg.n_fft - cfg.win_length) // 2
        rows = slice(self.window_offset, self.window_offset + cfg.win_length)
        dft = np.concatenate([m["dft_cos"][rows], m["dft_sin"][rows]], axis=1)
        assert not np.any(m["window"][: self.window_offset]) and not np.any(m["window"][rows.stop :])
        self.register_buffer("dft", torch.tensor(dft, dtype=torch.float32), persistent=False)
        self.register_buffer("mel", torch.tensor(m["mel"], dtype=torch.float32), persistent=False)
        self.register_buffer("dct", torch.tensor(m["dct"], dtype=torch.float32), persistent=False)
        self.num_bins = cfg.n_fft // 2 + 1
        self.log_floor = cfg.log_floor

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, context + hop*F) PCM -> (B, F, win_length): the samples under each frame's window.

        A stream step has F = 4 frames: there they are taken as F slices (an ONNX Slice + Concat, plain copies),
        not `unfold`, which exports as an element-wise Gather that cost more than the DFT product itself at
        B = 64 (benchmarks/results/step_frontend.md). Both forms give the same frames.
        """
        cfg, off = self.cfg, self.window_offset
        num = (audio.shape[-1] - cfg.n_fft) // cfg.hop_length + 1
        if num <= 8:
            starts = [off + j * cfg.hop_length for j in range(num)]
            return torch.stack([audio[..., s : s + cfg.win_length] for s in starts], dim=-2)
        return audio[..., off : off + (num - 1) * cfg.hop_length + cfg.win_length].unfold(
            -1, cfg.win_length, cfg.hop_length
        )

    def logmel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, context + hop*F) PCM -> (B, F, n_mels) log-mel dB."""
        spec = self.frames(audio) @ self.dft  # (B, F, 2*bins)
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
