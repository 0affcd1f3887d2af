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

    dft_cos: torch.Tensor
    dft_sin: torch.Tensor
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
        assert not np.any(m["window"][: self.window_offset]) and not np.any(m["window"][rows.stop :])
        # The centred periodic Hann window is symmetric about the frame's middle sample n = n_fft / 2, where also
        # cos(2 pi k (N - n) / N) = cos(2 pi k n / N) and sin(...) = -sin(...). So with window index i = n - offset
        # (the window's i = 0 sample is 0), samples i and W - i (W = win_length) share one DFT row: the real part
        # is (x_i + x_{W-i}) @ cos rows and the imaginary part (x_i - x_{W-i}) @ sin rows, i = 1..W/2 (the middle
        # sample i = W/2 pairs with itself: its cos row is halved, its sin row is 0). Two (W/2, bins) products
        # give the spectrum for half the multiply-adds of one (W, 2 * bins) product (benchmarks/results/step_fold.md).
        half = cfg.win_length // 2
        if cfg.win_length % 2 or cfg.n_fft % 2 or 2 * self.window_offset + cfg.win_length != cfg.n_fft:
            raise ValueError("the folded DFT needs an even win_length centred in an even n_fft")
        paired = np.arange(1, half + 1) + self.window_offset  # n of i = 1..W/2
        dft_cos = m["dft_cos"][paired].copy()
        dft_cos[-1] *= 0.5
        dft_sin = m["dft_sin"][paired].copy()
        self.register_buffer("dft_cos", torch.tensor(dft_cos, dtype=torch.float32), persistent=False)
        self.register_buffer("dft_sin", torch.tensor(dft_sin, dtype=torch.float32), persistent=False)
        self.half_window = half
        self.register_buffer("mel", torch.tensor(m["mel"], dtype=torch.float32), persistent=False)
        self.register_buffer("dct", torch.tensor(m["dct"], dtype=torch.float32), persistent=False)
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

    def folded_frames(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, context + hop*F) PCM -> the two halves the folded DFT pairs, each (B, F, win_length // 2):
        x_1 .. x_{W/2} and x_{W-1} .. x_{W/2} of every frame's window (see `__init__`).

        In a stream step (F <= 8) both are F slices: the second from the audio reversed once (one ONNX Slice with
        step -1 over the buffer; reversing each frame instead costs half as much again at B = 64).
        """
        cfg, off, half = self.cfg, self.window_offset, self.half_window
        num = (audio.shape[-1] - cfg.n_fft) // cfg.hop_length + 1
        if num > 8:
            frames = self.frames(audio)
            return frames[..., 1 : half + 1], frames.flip(-1)[..., :half]
        length = audio.shape[-1]
        reverse = audio.flip(-1)  # reverse[q] = audio[length - 1 - q]
        starts = [off + j * cfg.hop_length for j in range(num)]
        first = torch.stack([audio[..., s + 1 : s + 1 + half] for s in starts], dim=-2)
        ends = [length - s - cfg.win_length for s in starts]  # x_{W-1} of the frame at s is reverse[end]
        mirrored = torch.stack([reverse[..., e : e + half] for e in ends], dim=-2)
        return first, mirrored

    def logmel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, context + hop*F) PCM -> (B, F, n_mels) log-mel dB."""
        first, mirrored = self.folded_frames(audio)
        re = (first + mirrored) @ self.dft_cos  # (B, F, bins)
        im = (first - mirrored) @ self.dft_sin
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
