"""A per-client frame queue where the newest frames win: a slow client loses stale frames, never delays others.

Each stream may hold at most `max_frames_per_stream` frames in a client's queue; a new frame beyond that pushes
out the oldest one of the same stream (counted in `dropped`). Frames older than `max_age_ms` (engine clock,
from their publish time) are skipped when taken. Control messages (stream events) have their own small queue
and go first.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from stream_engine.clock import Clock, MonotonicClock
from stream_engine.core import LandmarkFrame

Item = LandmarkFrame | dict[str, Any]


class LatestFrameQueue:
    """Bounded per-stream FIFO with drop-oldest, plus a message lane. Single consumer; loop-thread only."""

    def __init__(
        self,
        max_frames_per_stream: int = 4,
        max_age_ms: float = 500.0,
        max_messages: int = 64,
        clock: Clock | None = None,
    ) -> None:
        if max_frames_per_stream < 1:
            raise ValueError("max_frames_per_stream must be >= 1")
        self.max_frames_per_stream = int(max_frames_per_stream)
        self.max_age_ns = int(max_age_ms * 1e6)
        self._clock = clock or MonotonicClock()
        self._frames: collections.deque[LandmarkFrame] = collections.deque()
        self._count: collections.Counter[str] = collections.Counter()
        self._messages: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_messages)
        self._ready = asyncio.Event()
        self.dropped = 0
        self.closed = False
        self.keep_all: set[str] = set()  # streams whose frames are never dropped (their producer is paced)

    def __len__(self) -> int:
        return len(self._frames) + len(self._messages)

    def put(self, frame: LandmarkFrame) -> None:
        if self.closed:
            return
        sid = frame.stream_id
        if self._count[sid] >= self.max_frames_per_stream and sid not in self.keep_all:
            for i, old in enumerate(self._frames):  # the oldest frame of this stream
                if old.stream_id == sid:
                    del self._frames[i]
                    self._count[sid] -= 1
                    self.dropped += 1
                    break
        self._frames.append(frame)
        self._count[sid] += 1
        self._ready.set()

    def put_message(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        self._messages.append(message)
        self._ready.set()

    def discard_stream(self, stream_id: str, before_epoch: int | None = None) -> int:
        """Drop queued frames of a stream (only those of epochs < `before_epoch` when given)."""
        keep: collections.deque[LandmarkFrame] = collections.deque()
        removed = 0
        for f in self._frames:
            if f.stream_id == stream_id and (before_epoch is None or f.epoch < before_epoch):
                removed += 1
            else:
                keep.append(f)
        self._frames = keep
        self._count[stream_id] -= removed
        return removed

    def get_nowait(self, frames: bool = True) -> Item | None:
        """Next message, else (if `frames`) next fresh frame, else None (stale frames are dropped on the way)."""
        if self._messages:
            return self._messages.popleft()
        if not frames:
            return None
        now = self._clock.now_ns()
        while self._frames:
            frame = self._frames.popleft()
            self._count[frame.stream_id] -= 1
            published = frame.timings.publish_ns
            if (
                self.max_age_ns
                and published
                and now - published > self.max_age_ns
                and frame.stream_id not in self.keep_all
            ):
                self.dropped += 1
                continue
            return frame
        return None

    async def get(self) -> Item | None:
        """Wait for the next item. Raises `asyncio.CancelledError` when cancelled; returns None once closed."""
        while True:
            item = self.get_nowait()
            if item is not None or self.closed:
                return item
            self._ready.clear()
            await self._ready.wait()

    def frames_of(self, stream_id: str) -> int:
        """Frames of a stream waiting in the queue."""
        return self._count[stream_id]

    def wake(self) -> None:
        """Wake the consumer waiting in `wait` (e.g. its send window opened)."""
        self._ready.set()

    async def wait(self) -> None:
        """Wait for the next `put`, `put_message`, `wake` or `close` (the caller then polls `get_nowait`)."""
        self._ready.clear()
        await self._ready.wait()

    def close(self) -> None:
        self.closed = True
        self._frames.clear()
        self._count.clear()
        self._messages.clear()
        self._ready.set()
