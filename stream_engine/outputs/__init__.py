"""Where landmark frames go: WebSocket clients (JSON/binary), raw OSC, and VMC for VTuber apps.

Every output is a `FrameSink`. The engine calls its methods on the event loop right after a batch of frames
is committed, so they must return at once: network sends are non-blocking (UDP) or go into per-client
latest-frame-wins queues drained by the client's own task (WebSocket). A slow or failing output never delays
the engine or the other outputs.

Batch sink contract: the engine publishes each step's frames as one `frame_batch.FrameBatch` (columns: stream
ids, landmarks (B, K, D), seqs, epochs, times, levels, stall marks, signals as `SignalBatch` columns). A sink
that has a method `send_batch(batch)` (`BatchFrameSink`) gets the step that way and reads the columns,
building a `LandmarkFrame` only for the rows it needs (`batch.frame(i)`, cached); a sink without it gets
`send_frames(batch.frames())`, the same frame objects as ever. A step reaches each sink through exactly one of
the two calls. The batch and its arrays belong to the engine: a sink must not change them, and may keep them
(or the frames) as long as it likes. The WebSocket server, VMC, VTube Studio, OSC and the serve replica's sink
take batches; `send_frames` stays for callers with frame lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from stream_engine.core import LandmarkFrame
from stream_engine.frame_batch import FrameBatch


@runtime_checkable
class FrameSink(Protocol):
    """An output of the engine."""

    def send_frames(self, frames: Sequence[LandmarkFrame]) -> None:
        """Deliver newly published frames (several streams may be mixed, each in order). Must not block."""
        ...

    def stream_event(self, event: dict[str, Any]) -> None:
        """A stream opened, reset, flushed or closed (`{"type": "stream", "event": ..., "stream": ...}`)."""
        ...

    async def aclose(self) -> None:
        """Release sockets and tasks."""
        ...


@runtime_checkable
class BatchFrameSink(FrameSink, Protocol):
    """A `FrameSink` that also takes a published step as columns (the batch sink contract above)."""

    def send_batch(self, batch: FrameBatch) -> None:
        """Deliver one step's frames (row i = one frame; several streams, each in order). Must not block."""
        ...


def parse_target(target: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """ "host:port", ":port" or "port" -> (host, port); raises ValueError with the offending text."""
    text = str(target).strip()
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or default_host
    try:
        port_i = int(port)
    except ValueError:
        raise ValueError(f"bad target {target!r}: expected host:port") from None
    if not 0 < port_i < 65536:
        raise ValueError(f"bad target {target!r}: port must be 1..65535")
    return host, port_i
