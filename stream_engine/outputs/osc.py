"""Raw landmarks over OSC/UDP (python-osc), for renderers that want every point rather than rig weights.

Per frame, one OSC bundle (about 750 bytes, under a LAN MTU) holding::

    {prefix}/frame    (s stream) (i seq) (f pts_s) (f x0) (f y0) ... (f x67) (f y67)
    {prefix}/signals  (s stream) (f value) ...           in `signals.SIGNAL_NAMES` order
    {prefix}/latency  (s stream) (f engine_ms)           publish - audio ready, engine clock

Floats are sent as Python floats with explicit `f` tags (numpy scalars would be rejected by python-osc). UDP
is fire-and-forget: python-osc's client socket is non-blocking, so a missing receiver never blocks the engine
(datagrams to a closed port are simply lost).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stream_engine.core import LandmarkFrame
from stream_engine.frame_batch import FrameBatch
from stream_engine.outputs import parse_target

if TYPE_CHECKING:
    from pythonosc.osc_bundle import OscBundle
    from pythonosc.osc_message import OscMessage

#: One OSC argument: (value, type tag), e.g. (0.5, "f"), ("Head", "s").
OscArg = tuple[Any, str]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OscConfig:
    """Raw-landmark OSC output.

    Attributes:
        enabled: send at all.
        targets: "host:port" receivers.
        prefix: OSC address prefix.
        streams: only these stream ids (empty = all).
        send_signals: also send the derived signals.
    """

    enabled: bool = False
    targets: tuple[str, ...] = ("127.0.0.1:9000",)
    prefix: str = "/msync"
    streams: tuple[str, ...] = ()
    send_signals: bool = True

    def __post_init__(self) -> None:
        for t in self.targets:
            parse_target(t)
        if not self.prefix.startswith("/"):
            raise ValueError(f"OSC prefix must start with '/', got {self.prefix!r}")


def message(address: str, args: Sequence[OscArg]) -> OscMessage:
    """One OSC message; every argument carries its explicit type tag (receivers drop mistyped arguments)."""
    from pythonosc.osc_message_builder import OscMessageBuilder

    builder = OscMessageBuilder(address=address)
    for value, tag in args:
        builder.add_arg(value, arg_type=tag)
    return builder.build()


def bundle(messages: Sequence[OscMessage | OscBundle]) -> OscBundle:
    """An OSC bundle of `messages`, time tag "immediately"."""
    from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder

    builder = OscBundleBuilder(IMMEDIATELY)
    for m in messages:
        builder.add_content(m)
    return builder.build()


class UdpTargets:
    """Non-blocking UDP clients, one per "host:port"; send failures are counted, never raised."""

    def __init__(self, targets: Sequence[str]) -> None:
        from pythonosc.udp_client import UDPClient

        self.clients = [UDPClient(*parse_target(t)) for t in targets]
        self.sent = 0
        self.errors = 0

    def send(self, packet: OscMessage | OscBundle) -> None:
        for client in self.clients:
            try:
                client.send(packet)
                self.sent += 1
            except OSError as exc:  # unreachable host, buffer full: drop this datagram, keep going
                self.errors += 1
                if self.errors <= 3:
                    log.warning("OSC send to %s:%s failed: %s", client._address, client._port, exc)

    def close(self) -> None:
        for client in self.clients:
            try:
                client._sock.close()
            except Exception:
                pass


def frame_bundle(frame: LandmarkFrame, prefix: str = "/msync", send_signals: bool = True) -> OscBundle:
    """The OSC bundle of one frame (see the module docstring)."""
    sid = (frame.stream_id, "s")
    coords = [(float(v), "f") for v in frame.landmarks.reshape(-1).tolist()]
    messages = [
        message(f"{prefix}/frame", [sid, (int(frame.seq) & 0x7FFFFFFF, "i"), (frame.pts_ns / 1e9, "f"), *coords])
    ]
    if send_signals and frame.signals is not None:
        messages.append(message(f"{prefix}/signals", [sid, *((v, "f") for v in frame.signals.as_vector())]))
    t = frame.timings
    if t.publish_ns and t.audio_ready_ns:
        messages.append(message(f"{prefix}/latency", [sid, ((t.publish_ns - t.audio_ready_ns) / 1e6, "f")]))
    return bundle(messages)


class OscSink:
    """`FrameSink` sending every frame's raw landmarks (and signals) to the configured OSC targets."""

    def __init__(self, cfg: OscConfig) -> None:
        self.cfg = cfg
        self.udp = UdpTargets(cfg.targets)

    def send_frames(self, frames: Sequence[LandmarkFrame]) -> None:
        for frame in frames:
            if self.cfg.streams and frame.stream_id not in self.cfg.streams:
                continue
            self.udp.send(frame_bundle(frame, self.cfg.prefix, self.cfg.send_signals))

    def send_batch(self, batch: FrameBatch) -> None:
        """`send_frames` for a published step (the batch sink contract): frames built only for the selected
        streams' rows."""
        streams = self.cfg.streams
        for i, sid in enumerate(batch.stream_ids):
            if not streams or sid in streams:
                self.udp.send(frame_bundle(batch.frame(i), self.cfg.prefix, self.cfg.send_signals))

    def stream_event(self, event: dict[str, Any]) -> None:
        if event.get("event") in ("reset", "closed") and (
            not self.cfg.streams or event.get("stream") in self.cfg.streams
        ):
            self.udp.send(
                message(f"{self.cfg.prefix}/event", [(str(event.get("stream", "")), "s"), (str(event["event"]), "s")])
            )

    async def aclose(self) -> None:
        self.udp.close()
