"""Where landmark frames go: WebSocket clients (JSON/binary), raw OSC, and VMC for VTuber apps.

Every output is a `FrameSink`. The engine calls its methods on the event loop right after a batch of frames
is committed, so they must return at once: network sends are non-blocking (UDP) or go into per-client
latest-frame-wins queues drained by the client's own task (WebSocket). A slow or failing output never delays
the engine or the other outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from stream_engine.core import LandmarkFrame


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
