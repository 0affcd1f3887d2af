"""Clocks: the engine's monotonic clock, a manual clock for tests, and the audio sample clock.

Two kinds of time run through the engine and are never mixed up:

- *stream time* comes from the audio sample clock: a landmark frame's presentation time is
  ``first_sample * 1e9 / sample_rate_hz`` nanoseconds, computed with integers from sample counts, so it
  cannot drift however long a stream runs;
- *engine time* (``Clock.now_ns``, ``time.monotonic_ns`` by default) stamps when things happened on this
  host (audio arrival, inference start/end, send). Latency is a difference of engine times.

Sources that play audio "in real time" (files, synthesised speech) are paced by :class:`RealtimeSchedule`,
which computes every due time from the start time and the sample count (never by adding sleeps), so a late
wake-up is caught up at once and never accumulates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Protocol

NS_PER_S = 1_000_000_000


class Clock(Protocol):
    """Anything with a monotonic nanosecond clock."""

    def now_ns(self) -> int: ...


class MonotonicClock:
    """The host's monotonic clock (``time.monotonic_ns``); system-wide on Linux, so comparable across processes."""

    def now_ns(self) -> int:
        return time.monotonic_ns()


class ManualClock:
    """A clock that only moves when told to (tests)."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now_ns = int(start_ns)

    def now_ns(self) -> int:
        return self._now_ns

    def advance(self, delta_ns: int) -> None:
        self._now_ns += int(delta_ns)


@dataclasses.dataclass(frozen=True)
class SampleClock:
    """Stream time from sample counts: exact integer arithmetic, no accumulation."""

    sample_rate_hz: int

    def time_ns(self, sample_index: int) -> int:
        """Time of `sample_index` (the start of that sample) in ns of stream time."""
        return int(sample_index) * NS_PER_S // self.sample_rate_hz

    def samples_at(self, time_ns: int) -> int:
        """How many whole samples lie before `time_ns` of stream time."""
        return int(time_ns) * self.sample_rate_hz // NS_PER_S


class RealtimeSchedule:
    """When sample n of a paced source is due on the engine clock: ``start + n / (rate * speed)``.

    Args:
        sample_rate_hz: the source's rate.
        start_ns: engine time of sample 0.
        speed: 1.0 = real time; 30.0 plays 30x faster (accelerated drift runs).
    """

    def __init__(self, sample_rate_hz: int, start_ns: int, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.sample_rate_hz = int(sample_rate_hz)
        self.start_ns = int(start_ns)
        self.speed = float(speed)

    def due_ns(self, sample_index: int) -> int:
        return self.start_ns + round(sample_index * NS_PER_S / (self.sample_rate_hz * self.speed))

    async def wait_for(self, sample_index: int, clock: Clock) -> None:
        """Sleep until `sample_index` is due (returns at once when already late)."""
        delay_ns = self.due_ns(sample_index) - clock.now_ns()
        if delay_ns > 0:
            await asyncio.sleep(delay_ns / NS_PER_S)
