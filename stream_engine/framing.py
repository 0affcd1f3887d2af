"""Cutting audio that arrives in arbitrary chunks into the model's fixed steps.

Network packets, sound-card callbacks and file readers deliver 10, 20, 37 ms... at a time; the step model
takes exactly `samples_per_frame` samples (640 = 40 ms at 16 kHz, read it from the contract). An
:class:`AudioFramer` buffers the remainder, so the steps, and therefore the landmark frames, do not depend on
how the audio was chunked. Sample positions are absolute and only grow (sherpa-onnx's circular-buffer idea):
step k covers samples [k * samples_per_frame, (k + 1) * samples_per_frame) of the stream.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class AudioFramer:
    """Mono float32 chunks in, whole steps out.

    Args:
        samples_per_frame: samples per step (`contract.samples_per_frame`).
    """

    def __init__(self, samples_per_frame: int) -> None:
        if int(samples_per_frame) <= 0:
            raise ValueError(f"samples_per_frame must be positive, got {samples_per_frame}")
        self.samples_per_frame = int(samples_per_frame)
        self.reset()

    def reset(self) -> None:
        """Forget buffered audio and restart the sample count (a new stream)."""
        self._pending = np.zeros(0, dtype=np.float32)
        self.samples_in = 0
        self.steps_out = 0

    @property
    def pending_samples(self) -> int:
        """Samples buffered that do not yet make a whole step."""
        return int(self._pending.size)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Append a chunk; return the steps it completed.

        Args:
            chunk: (n,) float PCM in [-1, 1] at the model's rate; n may be 0.
        Returns:
            (k, samples_per_frame) float32, k >= 0; row i is step `steps_out - k + i` of the stream.
        """
        chunk = np.asarray(chunk)
        if chunk.ndim != 1:
            raise ValueError(f"expected mono audio of shape (n,), got {chunk.shape}")
        if chunk.size and not np.issubdtype(chunk.dtype, np.floating):
            raise TypeError(f"expected float PCM in [-1, 1], got dtype {chunk.dtype}")
        self.samples_in += int(chunk.size)
        buf = (
            np.concatenate([self._pending, chunk.astype(np.float32, copy=False)])
            if self._pending.size
            else chunk.astype(np.float32, copy=True)
        )
        k = buf.size // self.samples_per_frame
        used = k * self.samples_per_frame
        self._pending = buf[used:].copy()
        self.steps_out += k
        return buf[:used].reshape(k, self.samples_per_frame)

    def flush(self, pad: bool = True) -> np.ndarray:
        """End of stream: the buffered remainder as a last step padded with silence (or nothing if
        `pad` is False or nothing is buffered). Returns (0 or 1, samples_per_frame)."""
        if not self._pending.size or not pad:
            self._pending = np.zeros(0, dtype=np.float32)
            return np.zeros((0, self.samples_per_frame), dtype=np.float32)
        step = np.zeros((1, self.samples_per_frame), dtype=np.float32)
        step[0, : self._pending.size] = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        self.steps_out += 1
        return step


def split_chunks(samples: np.ndarray, sizes: Iterable[int]) -> list[np.ndarray]:
    """Cut a signal into consecutive chunks of the given sizes (cycled); the last chunk may be shorter."""
    sizes = list(sizes)
    if not sizes or any(int(s) <= 0 for s in sizes):
        raise ValueError("chunk sizes must be positive")
    out, pos, i = [], 0, 0
    while pos < len(samples):
        n = int(sizes[i % len(sizes)])
        out.append(samples[pos : pos + n])
        pos += n
        i += 1
    return out
