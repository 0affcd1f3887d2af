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
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_engine.core import LandmarkFrame
from stream_engine.frame_batch import FrameBatch
from stream_engine.outputs import parse_target
from stream_engine.signals import SIGNAL_NAMES

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
        """Raises ValueError: a target that is not host:port, or whose host does not resolve."""
        from pythonosc.udp_client import UDPClient

        self.clients = []
        for t in targets:
            host, port = parse_target(t)
            try:
                self.clients.append(UDPClient(host, port))
            except OSError as exc:  # socket.gaierror: the name does not resolve
                raise ValueError(f"bad target {t!r}: cannot resolve {host!r} ({exc.strerror or exc})") from None
        self.sent = 0
        self.errors = 0

    def send(self, packet: OscMessage | OscBundle) -> None:
        self.send_datagram(packet.dgram)

    def send_datagram(self, data: bytes) -> None:
        """Send a packed datagram (a message's or bundle's `dgram`, or `batch_bundles`) to every target."""
        for client in self.clients:
            try:
                client._sock.sendto(data, (client._address, client._port))
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


def _osc_string(text: str) -> bytes:
    """An OSC string: UTF-8, NUL-terminated, padded to a multiple of 4 bytes (python-osc's `write_string`)."""
    data = text.encode("utf-8")
    return data + b"\0" * (4 - len(data) % 4)


def batch_bundles(
    batch: FrameBatch, prefix: str = "/msync", send_signals: bool = True, rows: Sequence[int] | None = None
) -> list[bytes]:
    """The OSC bundle datagrams of a published step's rows, the bytes of `frame_bundle(batch.frame(i)).dgram`,
    packed from the columns (big-endian float32 arrays converted once per step) instead of one python-osc
    builder argument at a time.

    Args:
        batch: the published step.
        prefix, send_signals: as `frame_bundle`.
        rows: which rows, in that order (None: all).
    """
    sel: slice | np.ndarray = slice(None) if rows is None else np.asarray(rows, dtype=np.intp)
    ids = batch.stream_ids if rows is None else [batch.stream_ids[i] for i in rows]
    n = len(ids)
    if not n:
        return []
    coords = batch.landmarks[sel].reshape(n, -1)
    ncoord = coords.shape[1]
    frame_head = _osc_string(f"{prefix}/frame") + _osc_string(",sif" + "f" * ncoord)
    # seq, pts and the coordinates of every row as big-endian records; one row's bytes are one slice
    rec = np.empty(n, dtype=[("seq", ">i4"), ("pts", ">f4"), ("xy", ">f4", (ncoord,))])
    rec["seq"] = batch.seqs[sel] & 0x7FFFFFFF
    rec["pts"] = batch.pts_ns[sel] / 1e9
    rec["xy"] = coords
    bodies = _rows(rec.tobytes(), n)
    sg = batch.signals if send_signals else None
    signal_head = b""
    vectors: Sequence[bytes] = []
    if sg is not None:
        signal_head = _osc_string(f"{prefix}/signals") + _osc_string(",s" + "f" * len(SIGNAL_NAMES))
        vec = sg.vectors(np.arange(n) if rows is None else rows).astype(">f4")
        vectors = _rows(vec.tobytes(), n)
    latency_head = b""
    latencies: list[bytes | None] = [None] * n
    if batch.publish_ns:
        latency_head = _osc_string(f"{prefix}/latency") + _osc_string(",sf")
        ready = batch.audio_ready_ns[sel]
        values = _rows(((batch.publish_ns - ready) / 1e6).astype(">f4").tobytes(), n)
        latencies = [None if not r else v for r, v in zip(ready.tolist(), values)]
    size = _SIZE.pack
    out = []
    for i, (sid, body, latency) in enumerate(zip(ids, bodies, latencies)):
        name = _osc_string(sid)
        frame = b"".join((frame_head, name, body))
        parts = [_BUNDLE_HEAD, size(len(frame)), frame]
        if sg is not None:
            signals = b"".join((signal_head, name, vectors[i]))
            parts += [size(len(signals)), signals]
        if latency is not None:
            message = b"".join((latency_head, name, latency))
            parts += [size(len(message)), message]
        out.append(b"".join(parts))
    return out


def _rows(data: bytes, n: int) -> list[bytes]:
    """`data` cut into `n` equal slices."""
    step = len(data) // n
    return [data[j : j + step] for j in range(0, n * step, step)]


_BUNDLE_HEAD = b"#bundle\0" + b"\0\0\0\0\0\0\0\1"  # time tag "immediately"
_SIZE = struct.Struct(">i")


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
        """`send_frames` for a published step (the batch sink contract): the same datagrams, packed from the
        columns (`batch_bundles`)."""
        streams = self.cfg.streams
        rows = None if not streams else [i for i, sid in enumerate(batch.stream_ids) if sid in streams]
        for data in batch_bundles(batch, self.cfg.prefix, self.cfg.send_signals, rows):
            self.udp.send_datagram(data)

    def stream_event(self, event: dict[str, Any]) -> None:
        if event.get("event") in ("reset", "closed") and (
            not self.cfg.streams or event.get("stream") in self.cfg.streams
        ):
            self.udp.send(
                message(f"{self.cfg.prefix}/event", [(str(event.get("stream", "")), "s"), (str(event["event"]), "s")])
            )

    async def aclose(self) -> None:
        self.udp.close()
