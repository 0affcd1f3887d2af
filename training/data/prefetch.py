"""Batches drawn ahead in a worker process, so the host-side work of a batch (clip windows, augmentation,
non-speech mixing: numpy on one core) overlaps the model's step instead of preceding it.

    prefetcher = Prefetcher(lambda rng: sampler.sample(8, rng, augment), rng, depth=2)
    batch = prefetcher.next()          # the same batches, in the same order, as calling draw(rng) inline
    prefetcher.close()

The worker is forked, so it shares the parent's clips without copying them and needs nothing pickled but the
batches it returns; it owns the generator `rng` from then on (the parent must not draw from it again). It must
touch only numpy: never torch, CUDA or the parent's threads. It stops on `close()`, and by itself within about
half a second once its parent is gone (killed by a signal, say), so it never outlives the training run.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np


class _Failed:
    """What the worker sends instead of a batch when drawing one raised: the formatted traceback."""

    def __init__(self, text: str) -> None:
        self.text = text


def _produce(
    draw: Callable[[np.random.Generator], Any], rng: np.random.Generator, out: Any, stop: Any, parent: int
) -> None:
    def wanted() -> bool:  # a parent killed by a signal (SIGTERM, SIGKILL, out of memory) never sets `stop`
        return not stop.is_set() and os.getppid() == parent

    while wanted():
        try:
            item = draw(rng)
        except Exception:  # noqa: BLE001 - sent to the parent, which raises it there
            item = _Failed(traceback.format_exc())
        while wanted():
            try:
                out.put(item, timeout=0.5)
                break
            except queue.Full:
                continue
        if isinstance(item, _Failed):
            return


class Prefetcher:
    """`depth` batches of `draw(rng)` kept ready by one forked worker, returned in the order drawn.

    Args:
        draw: makes one batch from the generator (numpy only).
        rng: the generator the batches come from; the worker advances its own copy, in the same order as
            calling `draw` repeatedly in this process would.
        depth: batches kept ready (>= 1).

    Raises:
        ValueError: depth < 1.
    """

    def __init__(self, draw: Callable[[np.random.Generator], Any], rng: np.random.Generator, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        ctx = multiprocessing.get_context("fork")
        self._queue = ctx.Queue(maxsize=depth)
        self._stop = ctx.Event()
        self._proc = ctx.Process(
            target=_produce,
            args=(draw, rng, self._queue, self._stop, os.getpid()),
            name="msync-batch-worker",
            daemon=True,
        )
        self._proc.start()

    def next(self) -> Any:
        """The next batch.

        Raises:
            RuntimeError: drawing a batch raised in the worker (its traceback in the message), or the worker died.
        """
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                if not self._proc.is_alive():
                    raise RuntimeError(
                        f"the batch worker exited (code {self._proc.exitcode}) without a batch"
                    ) from None
                continue
            if isinstance(item, _Failed):
                raise RuntimeError(f"drawing a training batch failed in the batch worker:\n{item.text}")
            return item

    def close(self) -> None:
        """Stop the worker and wait for it (at most a few seconds; then it is terminated)."""
        self._stop.set()
        while True:  # empty the queue so a worker blocked in put() sees the stop
            try:
                self._queue.get_nowait()
            except (queue.Empty, OSError, ValueError):
                break
        self._proc.join(timeout=5.0)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5.0)
        self._queue.close()

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()
