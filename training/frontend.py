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
        # spectrum for (win_length / n_fft) of the multiply-adds. Two folds below halve them twice more.
        self.window_offset = (cfg.n_fft - cfg.win_length) // 2
        rows = slice(self.window_offset, self.window_offset + cfg.win_length)
        assert not np.any(m["window"][: self.window_offset]) and not np.any(m["window"][rows.stop :])
        # The centred periodic Hann window is symmetric about the frame's middle sample n = n_fft / 2, where also
        # cos(2 pi k (N - n) / N) = cos(2 pi k n / N) and sin(...) = -sin(...). So with window index i = n - offset
        # (the window's i = 0 sample is 0), samples i and W - i (W = win_length) share one DFT row: the real part
        # is (x_i + x_{W-i}) @ cos rows and the imaginary part (x_i - x_{W-i}) @ sin rows, i = 1..W/2 (the middle
        # sample i = W/2 pairs with itself: its cos row is halved, its sin row is 0): half the multiply-adds of
        # one (W, 2 * bins) product (model card, *0.3.4 against 0.3.3*).
        half = cfg.win_length // 2
        self.half_window = half
        if (
            cfg.win_length % 4
            or cfg.n_fft % 4
            or 2 * self.window_offset + cfg.win_length != cfg.n_fft
            or self.window_offset % 2
            or cfg.hop_length % 2
        ):
            raise ValueError(
                "the folded DFT needs win_length and n_fft multiples of 4, the window centred at an even offset "
                "and an even hop_length"
            )
        paired = np.arange(1, half + 1) + self.window_offset  # n of i = 1..W/2
        dft_cos = m["dft_cos"][paired].copy()
        dft_cos[-1] *= 0.5
        dft_sin = m["dft_sin"][paired].copy()
        # A second fold: cos(2 pi (N/2 - k) n / N) = (-1)^n cos(2 pi k n / N) and sin(...) = -(-1)^n sin(...), so with
        # the paired rows split by the parity of i (the window offset is even, so that is the parity of n) into
        # groups G_odd (i = 1, 3, ...) and G_even (i = 2, 4, ...), bin k and bin N/2 - k come from the same two
        # partial sums: X(k) = G_odd(k) + G_even(k) and X(N/2 - k) = +-(G_odd(k) - G_even(k)), k = 0 .. N/4.
        # Four (W/4, N/4 + 1) products replace two (W/2, N/2 + 1): half the multiply-adds again.
        quarter = cfg.n_fft // 4 + 1  # bins 0 .. N/4
        groups = [np.arange(0, half, 2), np.arange(1, half, 2)]  # row r = i - 1: i odd, i even
        self.register_buffer(
            "dft_cos", torch.tensor(np.stack([dft_cos[g, :quarter] for g in groups]), dtype=torch.float32), False
        )  # (2, W/4, N/4 + 1)
        self.register_buffer(
            "dft_sin", torch.tensor(np.stack([dft_sin[g, :quarter] for g in groups]), dtype=torch.float32), False
        )
        # The mel product takes [power of bins 0 .. N/4 | power of bins N/2 - k, k = 0 .. N/4]; bin N/4 is in both
        # halves, so its second row is zero.
        mel = m["mel"]  # (N/2 + 1, n_mels)
        high = mel[cfg.n_fft // 2 - np.arange(quarter)].copy()
        high[-1] = 0.0
        self.register_buffer("mel", torch.tensor(np.concatenate([mel[:quarter], high]), dtype=torch.float32), False)
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
        """(B, context + hop*F) PCM -> the samples the folded DFT pairs, each (2, B, F, win_length // 4): for
        i = 1 .. W/2 of every frame's window, x_i (first) and x_{W-i} (mirrored), split by the parity of i
        (group 0: i = 1, 3, ..., group 1: i = 2, 4, ...; see `__init__`).

        In a stream step (F <= 8) both come from the audio deinterleaved once into its odd and even samples (a
        Reshape and a Transpose) and reversed once (one ONNX Slice with negative steps): then each frame's group
        pair is one slice, and nothing is copied element by element per frame.
        """
        cfg, off, half = self.cfg, self.window_offset, self.half_window
        num = (audio.shape[-1] - cfg.n_fft) // cfg.hop_length + 1
        length = audio.shape[-1]
        if num > 8 or length % 2:
            frames = self.frames(audio)
            first, mirrored = frames[..., 1 : half + 1], frames.flip(-1)[..., :half]
            return (
                torch.stack([first[..., 0::2], first[..., 1::2]]),
                torch.stack([mirrored[..., 0::2], mirrored[..., 1::2]]),
            )
        # shifted[g][t] = audio[2t + 1 + g] (group 0 odd samples, group 1 the even ones after them)
        shifted = audio[..., 1 : length - 1].unflatten(-1, (-1, 2)).movedim(-1, 0)  # (2, ..., L/2 - 1)
        # pairs[g][t] = audio[2t + 1 - g]; reversed along both axes: rev[g][u] = audio[length - 1 - 2u - g]
        rev = audio.unflatten(-1, (-1, 2)).movedim(-1, 0).flip(0, -1)  # (2, ..., L/2)
        quarter, starts = half // 2, [off + j * cfg.hop_length for j in range(num)]
        # first, frame at s: group g, m -> x_{2m+1+g} = audio[s + 2m + 1 + g] = shifted[g][s/2 + m]
        first = torch.stack([shifted[..., s // 2 : s // 2 + quarter] for s in starts], dim=-2)
        # mirrored: x_{W-2m-1-g} = audio[s + W - 2m - 1 - g] = rev[g][u] with u = (length - s - W) / 2 + m
        ends = [(length - s - cfg.win_length) // 2 for s in starts]
        mirrored = torch.stack([rev[..., e : e + quarter] for e in ends], dim=-2)
        return first, mirrored

    def logmel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, context + hop*F) PCM -> (B, F, n_mels) log-mel dB."""
        first, mirrored = self.folded_frames(audio)  # (2, B, F, W/4)
        re = torch.matmul((first + mirrored).flatten(1, -2), self.dft_cos)  # (2, B*F, N/4 + 1)
        im = torch.matmul((first - mirrored).flatten(1, -2), self.dft_sin)
        re_low, im_low, re_high, im_high = re[0] + re[1], im[0] + im[1], re[0] - re[1], im[0] - im[1]
        power_low = re_low * re_low + im_low * im_low  # bins 0 .. N/4 (products: cheaper than Pow in ONNX Runtime)
        power_high = re_high * re_high + im_high * im_high  # bins N/2 - k, k = 0 .. N/4
        power = torch.cat([power_low, power_high], dim=-1).unflatten(0, first.shape[1:-1])
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
