"""The engine's network face: one port serving the viewer over HTTP, frames over WebSocket, and audio ingest.

    GET  /            the live viewer page (static HTML/JS from stream_engine/viewer/)
    GET  /health      JSON: streams, counters, latency facts
    GET  /contract    JSON: the model's step contract
    WS   /frames      landmark frames out (JSON or binary, see PROTOCOL.md), control messages in
    WS   /audio       one audio stream in (JSON hello, then binary PCM chunks), optionally its frames back

This module is transport only: what a message means and what is replied lives in `stream_engine.protocol`
(per-connection state machines); here are the sockets, tasks, timers and send windows around them.

Every client that receives frames gets its own `LatestFrameQueue`, relay task and send window: at most
`client_window_frames` frames are on their way to a client before it has acknowledged them (a WebSocket ping
sent behind half a window of them is answered), so neither kernel buffer can hold stale frames and a slow
reader gets the newest frame with seq gaps. A client whose socket does not drain within `write_timeout_s` (a
write, or the acknowledgement of its window) is dropped and its slot is free at once. An /audio connection's
binary audio is handled as it arrives, in the connection's `data_received` callback (`IngestConnection`,
`_FastIngest`), while its handler task waits: no task wake-up per message; anything that needs waiting or a
reply goes to the handler, in order. Binds 127.0.0.1 by default; a
remote bind needs a token (or `insecure`); loopback servers refuse foreign Host headers (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import http
import inspect
import json
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from stream_engine.core import LandmarkFrame
from stream_engine.frame_batch import FrameBatch
from stream_engine.landmarks import CONTOURS
from stream_engine.outputs.latest import LatestFrameQueue
from stream_engine.outputs.serializers import (
    FORMAT_VERSION,
    encode_binary,
    encode_binary_batch,
    encode_binary_many,
    encode_json,
    encode_json_batch,
)
from stream_engine.protocol import (
    CLOSE_POLICY,
    PROTOCOL_VERSION,
    Action,
    AudioProtocol,
    AwaitCapacity,
    AwaitDrained,
    Close,
    FramesProtocol,
    MessageRate,
    ProtocolConfig,
    ProtocolError,
    Send,
    StreamOwners,
    Subscribe,
    error,
)
from stream_engine.signals import SIGNAL_NAMES

log = logging.getLogger(__name__)
T = TypeVar("T")

if TYPE_CHECKING:
    from websockets.asyncio.server import Server, ServerConnection
    from websockets.http11 import Request, Response

    from stream_engine.engine import Engine


async def within(aw: Awaitable[T], timeout_s: float) -> T:
    """Await `aw`, cancelling it after `timeout_s` (raises `asyncio.TimeoutError`, which on Python 3.11+ is
    `TimeoutError`). `asyncio.timeout` is 3.11+; msync supports 3.10, where this falls back to `wait_for`."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout_s):
            return await aw
    return await asyncio.wait_for(aw, timeout_s)


VIEWER_DIR = Path(__file__).resolve().parents[1] / "viewer"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/viewer.js": ("viewer.js", "text/javascript; charset=utf-8"),
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
TOKEN_ENV = "MSYNC_TOKEN"
ADMIN_TOKEN_ENV = "MSYNC_ADMIN_TOKEN"


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """HTTP + WebSocket server.

    Attributes:
        host: bind address; anything but loopback needs `allow_remote` and a token (or `insecure`).
        port: TCP port (0 = pick a free one).
        token: if set, every request must carry it (``?token=...`` or ``Authorization: Bearer ...``). Prefer
            `token_file` or the MSYNC_TOKEN environment variable: a command-line token is visible to every
            local user in the process list.
        token_file: read the token from this file (first line).
        admin_token: a client that carries it (instead of `token`) may also reset/flush streams it did not
            open (also from MSYNC_ADMIN_TOKEN).
        allowed_origins: browser Origins allowed besides this server's own page ("*" = any).
        allowed_hosts: Host header names accepted besides loopback ones (loopback binds only).
        allow_remote: permit binding a non-loopback address.
        insecure: permit a remote bind without a token.
        max_message_bytes: largest incoming WebSocket message (1009 beyond); /audio messages are capped
            further at `audio_max_pending_s` of audio in the declared format.
        max_control_bytes: longest JSON control message that is parsed (longer: `bad_json`).
        max_clients: most simultaneous WebSocket connections (further ones get HTTP 503).
        receive_queue: incoming messages buffered per connection before reading from its socket stops.
        client_queue_frames: per client and stream, frames kept before the oldest is dropped.
        client_window_frames: frames sent to a client and not yet acknowledged (ping/pong) before further
            frames wait in its latest-wins queue (the most; see `client_window_target_ms`).
        client_window_target_ms: a pong later than this halves the client's window (down to 1 frame), a
            timely one widens it by one frame (0 = fixed window).
        max_frame_age_ms: queued frames older than this (since publish) are dropped instead of sent.
        write_timeout_s: a client whose socket does not take a write, or does not acknowledge its window,
            within this time is dropped.
        hello_timeout_s: an audio client must send its hello within this time (0 = no limit).
        idle_timeout_s: an audio stream without audio for this long is flushed and closed (0 = never; audio now
            and then keeps a stream open: serving untrusted clients, cap their streams in front of the server).
        max_client_errors: a client is disconnected after this many bad messages.
        messages_per_turn: messages one connection handles before it yields to the others.
        control_messages_per_s, control_burst: a connection's text (and /frames binary) messages are paced to
            this rate after a burst (0 = unpaced): a flood costs its sender time, not the others.
        audio_max_pending_s: back-pressure: stop reading an audio client while its stream holds more
            unprocessed audio than this.
        resample_quality: soxr quality for ingest resampling.
        direct_write_limit_bytes: a frame is written straight to a client's socket (no queue, no task hop) only
            while less than this is waiting in its user-space write buffer.
        ping_interval_s, ping_timeout_s: keepalive (dead clients are dropped).
        serve_viewer: serve the viewer page.
        reuse_port: bind with SO_REUSEPORT, so several processes share the port (`msync stream --workers`).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str = ""
    token_file: str = ""
    admin_token: str = ""
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    allow_remote: bool = False
    insecure: bool = False
    max_message_bytes: int = 1 << 20
    max_control_bytes: int = 64 * 1024
    max_clients: int = 32
    receive_queue: int = 4
    client_queue_frames: int = 4
    client_window_frames: int = 8
    client_window_target_ms: float = 200.0
    max_frame_age_ms: float = 500.0
    write_timeout_s: float = 10.0
    hello_timeout_s: float = 10.0
    idle_timeout_s: float = 15.0
    max_client_errors: int = 50
    messages_per_turn: int = 16
    control_messages_per_s: float = 500.0
    control_burst: int = 100
    audio_max_pending_s: float = 2.0
    resample_quality: str = "HQ"
    direct_write_limit_bytes: int = 16 * 1024
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 10.0
    serve_viewer: bool = True
    reuse_port: bool = False

    def __post_init__(self) -> None:
        if self.host not in LOOPBACK_HOSTS and not self.allow_remote:
            raise ValueError(
                f"refusing to bind {self.host!r}: the engine binds loopback only unless allow_remote is "
                "set (and then use a token)"
            )
        if not 0 <= self.port < 65536:
            raise ValueError("port must be 0..65535")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        if self.client_window_frames < 1 or self.receive_queue < 1 or self.messages_per_turn < 1:
            raise ValueError("client_window_frames, receive_queue and messages_per_turn must be >= 1")
        if not (math.isfinite(self.write_timeout_s) and self.write_timeout_s > 0):
            raise ValueError(f"write_timeout_s must be a finite number of seconds > 0, got {self.write_timeout_s}")
        if self.max_clients < 1 or self.max_client_errors < 1:
            raise ValueError("max_clients and max_client_errors must be >= 1")
        for name in ("hello_timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0 (0 = no limit), got {value}")

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    def protocol(self) -> ProtocolConfig:
        return ProtocolConfig(
            max_control_bytes=self.max_control_bytes,
            max_client_errors=self.max_client_errors,
            hello_timeout_s=self.hello_timeout_s,
            idle_timeout_s=self.idle_timeout_s,
            audio_max_pending_s=self.audio_max_pending_s,
            max_message_bytes=self.max_message_bytes,
            resample_quality=self.resample_quality,
        )


def resolve_tokens(cfg: ServerConfig, environ: Mapping[str, str]) -> ServerConfig:
    """`cfg` with `token` filled from `token_file` or MSYNC_TOKEN (and `admin_token` from MSYNC_ADMIN_TOKEN)
    when not set directly. Raises ValueError if the token file cannot be read or is empty."""
    token, admin = cfg.token, cfg.admin_token
    if not token and cfg.token_file:
        try:
            lines = Path(cfg.token_file).read_text().strip().splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read the token file {cfg.token_file}: {exc.strerror or exc}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ValueError(f"the token file {cfg.token_file} is empty")
    token = token or environ.get(TOKEN_ENV, "")
    admin = admin or environ.get(ADMIN_TOKEN_ENV, "")
    return dataclasses.replace(cfg, token=token, admin_token=admin)


def model_facts(engine: Any) -> dict[str, Any]:
    """The hello's description of the served model: `model` (rates, look-ahead, layout, reference face),
    `latency` (the engine's latency facts) and `contours` (landmark index runs for drawing). PROTOCOL.md §3."""
    c = engine.contract
    return {
        "model": {
            "model_version": getattr(c, "model_version", ""),
            "sample_rate_hz": c.sample_rate_hz,
            "samples_per_frame": c.samples_per_frame,
            "fps": c.fps,
            "lookahead_frames": c.lookahead_frames,
            "num_landmarks": c.num_landmarks,
            "landmark_dims": c.landmark_dims,
            "reference_face": engine.model_reference_face.round(5).tolist(),
        },
        "latency": engine.latency_facts(),
        "contours": [list(c) for c in CONTOURS],
    }


def check_exposure(cfg: ServerConfig) -> None:
    """Raise ValueError for a remote bind without a token unless `insecure` says so explicitly."""
    if not cfg.is_loopback and not cfg.token and not cfg.insecure:
        raise ValueError(
            f"refusing to serve {cfg.host!r} without a token: set MSYNC_TOKEN or --token-file "
            "(or --insecure, server.insecure = true, to expose the engine to anyone who can reach it)"
        )


class SendWindow:
    """Frames written to a client but not yet known to have been read: a ping goes out behind them and its
    pong acknowledges everything before it. The window adapts to the reader (AIMD on the pong delay): a pong
    later than `target_s` halves it (down to `min_size`), a timely one widens it by one (up to `size`), so a
    client that reads slowly has few frames in flight and reads fresh ones, while a fast or distant one keeps
    the full window. I/O-free; the relay does the writing.

    A ping goes out once half the window (`ack_at`, rounded up) is unacknowledged, not behind every frame: a
    client that keeps up costs one ping and one pong per `ack_at` frames instead of per frame (on loopback
    the pong comes back before the next frame, so acknowledging every frame meant a ping per frame sent).
    The window still bounds what is in flight; a window of one pings behind every frame. `want_ack()` asks
    for a ping behind whatever is unacknowledged now (waiting until a client has read everything sent).
    """

    def __init__(self, size: int, target_s: float = 0.0, min_size: int = 1) -> None:
        self.size = size
        self.limit = size
        self.target_s = target_s
        self.min_size = min(min_size, size)
        self.sent = 0
        self.acked = 0
        self.ping_at: int | None = None  # frames sent when the outstanding ping went out
        self.ack_wanted = False  # `want_ack`: ping behind any unacknowledged frame
        self.pings = 0  # pings sent (statistics)

    @property
    def ack_at(self) -> int:
        """Unacknowledged frames that call for a ping: half the current window, rounded up."""
        return (self.limit + 1) // 2

    def can_send(self) -> bool:
        return self.sent - self.acked < self.limit

    def on_sent(self) -> None:
        self.sent += 1

    def needs_ping(self) -> bool:
        if self.ping_at is not None:
            return False
        unacked = self.sent - self.acked
        return unacked >= self.ack_at or (self.ack_wanted and unacked > 0)

    def want_ack(self) -> None:
        """Ping behind the frames sent so far even if fewer than `ack_at` are unacknowledged."""
        self.ack_wanted = True

    def on_ping_sent(self) -> None:
        self.ping_at = self.sent
        self.ack_wanted = False
        self.pings += 1

    def on_pong(self, delay_s: float | None = None) -> None:
        if self.ping_at is not None:
            self.acked = self.ping_at
            self.ping_at = None
        if delay_s is not None and self.target_s > 0:
            self.limit = (
                max(self.min_size, self.limit // 2) if delay_s > self.target_s else min(self.size, self.limit + 1)
            )


class _Client:
    """One WebSocket connection that receives frames."""

    def __init__(
        self,
        ws: ServerConnection,
        fmt: str,
        streams: frozenset[str] | None,
        queue: LatestFrameQueue,
        window: SendWindow,
    ) -> None:
        self.ws = ws
        self.format = fmt
        self.streams = streams  # None = every stream
        self.queue = queue
        self.window = window
        self.sent = 0
        self.busy = False  # the relay task is in the middle of a send
        self.idle = asyncio.Event()  # set whenever the relay has nothing it may send
        self.pong_timer: asyncio.TimerHandle | None = None
        self.paced_reader = False  # keeps every frame of some streams and still has a send window

    def wants(self, stream_id: str | None) -> bool:
        return self.streams is None or stream_id in self.streams

    @property
    def windowed(self) -> bool:
        """Latest-wins clients have a send window; an `every_frame` /audio subscriber has none: its frames
        are paced by its own audio (a pong stuck behind its unread audio must not stall or drop it). A
        `paced_reader` (`WebSocketServer.keep_every_frame`) keeps its window: what it has read is what paces
        the producer."""
        return not self.queue.keep_all or self.paced_reader

    def may_send_frame(self) -> bool:
        return not self.windowed or self.window.can_send()

    def can_write_now(self, limit_bytes: int) -> bool:
        """True when a frame can be written straight to the socket without reordering or piling up: nothing
        queued, no send in progress, room in the send window, and the kernel is taking data."""
        if self.busy or len(self.queue) or not self.may_send_frame():
            return False
        transport = getattr(self.ws, "transport", None)
        return transport is not None and not transport.is_closing() and transport.get_write_buffer_size() <= limit_bytes


@dataclasses.dataclass
class _Subscription:
    """A connection's frames client and its relay task (an /audio connection has them once it subscribes)."""

    client: _Client | None = None
    relay: asyncio.Task[None] | None = None


class _Dropped(Exception):
    """The connection was dropped by the server (write timeout)."""


class RecvDeadline:
    """`ws.recv()` that gives up at a protocol's deadline (`AudioProtocol.deadline_ns`: the hello or the idle
    timeout) with one timer per deadline, not one per message.

    A per-message `asyncio.timeout` schedules and cancels a timer for every audio message (~5 % of the server's
    samples in a 100-stream profile, though alone this class measured no significant gain:
    benchmarks/results/ws_ingest_14k.md); the callback ingest path needs its `interrupt`. Here a single timer
    waits for the deadline armed when the connection started receiving; the deadlines of an /audio connection
    only move later while audio flows (`_last_audio_ns`), so when the timer fires early it is re-armed at the
    new deadline (once per `idle_timeout_s`), and only a deadline that has really passed interrupts the receive:
    the receiving task is cancelled while it waits in `ws.recv()` (cancel-safe in websockets: no message is
    lost) and `recv` returns None. A cancellation from elsewhere is re-raised (Python 3.11's `Task.uncancel`,
    the way `asyncio.timeout` tells them apart).

    Args:
        deadline_ns: returns the current deadline on `clock` (ns), or None for none.
        clock: the engine's clock (`now_ns()`).
    """

    def __init__(self, deadline_ns: Callable[[], int | None], clock: Any) -> None:
        self._deadline_ns = deadline_ns
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_ns: int | None = None
        self._waiting = False
        self._fired = False

    def _arm(self) -> None:
        """Arm the timer for the protocol's deadline if none is armed for it or an earlier one."""
        deadline = self._deadline_ns()
        if deadline is None or (self._armed_ns is not None and self._armed_ns <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed_ns = deadline
        self._timer = self._loop.call_later(max(0.0, (deadline - self._clock.now_ns()) / 1e9), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._armed_ns = None
        deadline = self._deadline_ns()
        if deadline is None:
            return
        if self._clock.now_ns() < deadline:  # audio came since it was armed: wait for the new deadline
            self._arm()
        elif self._waiting:
            self.interrupt()
        # else: the task is busy with a message; its next `recv` sees the passed deadline at once

    @property
    def waiting(self) -> bool:
        """The task is waiting in `recv` (and has not been told to stop)."""
        return self._waiting

    def interrupt(self) -> None:
        """Make the waiting `recv` return None now (no-op when the task is not waiting in it)."""
        if self._waiting and self._task is not None:
            self._waiting = False
            self._fired = True
            self._task.cancel()

    async def recv(self, ws: ServerConnection) -> str | bytes | None:
        """The next message, or None once the deadline has passed (then call the protocol's `on_timer`)."""
        deadline = self._deadline_ns()
        if deadline is not None and self._clock.now_ns() >= deadline:
            return None
        self._arm()
        self._waiting = True
        try:
            return await ws.recv()
        except asyncio.CancelledError:
            if not self._fired:
                raise
            self._fired = False
            if sys.version_info >= (3, 11) and self._task is not None and self._task.uncancel() > 0:
                raise  # cancelled from elsewhere too
            return None
        finally:
            self._waiting = False

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@functools.cache
def ingest_connection_class() -> type[ServerConnection]:
    """websockets' `ServerConnection` with a synchronous hook for binary messages (`IngestConnection`), made on
    first use (websockets is imported lazily)."""
    from websockets.asyncio.server import ServerConnection
    from websockets.frames import Frame, Opcode

    class IngestConnection(ServerConnection):
        """Hands a complete binary message to `on_binary` in the connection's `data_received` callback, before
        it is queued for `recv()`; `on_binary` returns False to have it queued as usual.

        An /audio stream's PCM then costs no queue, future or task wake-up per message: the handler task stays
        in `recv()` and runs only for control messages and for what cannot be done at once (an error reply,
        back-pressure). Order is kept: once a message is queued for `recv()` (`queued` > 0, or a fragmented
        message in progress), later ones are queued too until the handler has taken them.
        """

        on_binary: Callable[[bytes], bool] | None = None
        queued = 0  # complete data messages queued for recv() and not yet taken (`took_one`)
        fragmented = False

        def process_event(self, event: Any) -> None:
            if self.request is not None and isinstance(event, Frame):
                op = event.opcode
                if op is Opcode.BINARY or op is Opcode.TEXT or op is Opcode.CONT:
                    if (
                        op is Opcode.BINARY
                        and event.fin
                        and not self.queued
                        and not self.fragmented
                        and self.on_binary is not None
                        and self.on_binary(bytes(event.data))  # the same object when it is bytes already
                    ):
                        return
                    self.fragmented = not event.fin
                    if event.fin:
                        self.queued += 1
            super().process_event(event)

        def took_one(self) -> None:
            """The handler took a queued message from `recv()`."""
            self.queued = max(0, self.queued - 1)

    return IngestConnection


class _FastIngest:
    """An /audio connection's binary messages handled in `IngestConnection.on_binary` while its handler waits in
    `RecvDeadline.recv`: the protocol gets the message at once (`AudioProtocol.receive`, the same state
    machine); when its only action is `AwaitCapacity` and the stream has room, nothing is left to do. A
    connection with an `every_frame` subscription keeps the handler's path (its reader paces it). Any other
    outcome (an error reply, back-pressure, an exception) is handed to the handler: the actions go to
    `pending`, the handler's `recv` is interrupted, and until it has run them every message is queued for
    `recv()` as usual.
    """

    def __init__(
        self,
        server: WebSocketServer,
        proto: AudioProtocol,
        client_box: _Subscription,
        watchdog: RecvDeadline,
    ) -> None:
        self.server = server
        self.proto = proto
        self.client_box = client_box
        self.watchdog = watchdog
        self.pending: list[Action] = []
        self.error: Exception | None = None

    def __call__(self, data: bytes) -> bool:
        proto = self.proto
        if self.pending or self.error is not None or proto.state != "open" or not self.watchdog.waiting:
            return False
        client = self.client_box.client
        if client is not None and client.queue.keep_all:
            return False  # an every_frame subscriber paces this sender: the handler's path waits for it
        engine = self.server.engine
        try:
            actions = proto.receive(data, engine.clock.now_ns())
            if len(actions) == 1 and type(action := actions[0]) is AwaitCapacity:
                if engine.has_capacity(action.stream_id, action.max_pending_s):
                    self.server.fast_ingest_messages += 1
                    return True
            self.pending.extend(actions)
        except Exception as exc:  # the handler raises it: this connection ends, as if its handler had failed
            self.error = exc
        self.watchdog.interrupt()
        return True

    def take(self) -> list[Action]:
        """The actions handed over (raises the exception a message caused)."""
        if self.error is not None:
            raise self.error
        actions, self.pending = self.pending, []
        return actions


class WebSocketServer:
    """`FrameSink` + audio ingest on one port. Create, `await start()`, add to the engine's sinks.

    Raises ValueError when `cfg` would expose the engine remotely without a token (`check_exposure`); pass a
    config whose tokens are resolved (`resolve_tokens`).
    """

    def __init__(self, engine: Engine, cfg: ServerConfig = ServerConfig()) -> None:
        check_exposure(cfg)
        self.engine = engine
        self.cfg = cfg
        self.protocol_cfg = cfg.protocol()
        self.owners = StreamOwners()
        self._server: Server | None = None
        self._clients: set[_Client] = set()
        self._every_stream: set[_Client] = set()  # clients subscribed to every stream
        self._by_stream: dict[str, set[_Client]] = {}  # stream id -> its other subscribers
        self._connections = 0
        self._facts: dict[str, Any] | None = None  # `model_facts`, built by `start` (or the first hello)
        self.dropped_clients = 0
        self.refused: dict[str, int] = {}  # HTTP refusals by reason (`/health` "refused_requests")
        self.closed_by_server: dict[int, int] = {}  # connections the server closed, by close code (not 1000)
        self.fast_ingest_messages = 0  # /audio messages handled in the connection's callback (`_FastIngest`)
        self.port: int | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        from websockets.asyncio.server import serve

        extra: dict[str, Any] = {"reuse_port": True} if self.cfg.reuse_port else {}  # passed to create_server
        if "create_connection" in inspect.signature(serve).parameters:  # websockets that lack it: no callback path
            extra["create_connection"] = ingest_connection_class()
        self._model_facts()  # shared by every hello: built before serving, not in the middle of a burst
        self._server = server = await serve(
            self._handler,
            self.cfg.host,
            self.cfg.port,
            process_request=self._process_request,
            max_size=self.cfg.max_message_bytes,
            max_queue=self.cfg.receive_queue,
            compression=None,
            ping_interval=self.cfg.ping_interval_s,
            ping_timeout=self.cfg.ping_timeout_s,
            close_timeout=2,
            **extra,
        )
        self.port = server.sockets[0].getsockname()[1]
        log.info("serving on %s", self.url)

    @property
    def frame_clients(self) -> int:
        """How many clients are subscribed to frames right now (/frames clients and /audio clients' own frames)."""
        return len(self._clients)

    def keep_every_frame(self, stream_id: str) -> int:
        """Every client connected now that receives `stream_id` gets all of its frames: no latest-wins drops.
        It keeps its send window, so at most a window of frames is in flight beyond what it has acknowledged
        reading; the producer of the stream must be paced by `wait_every_frame_clients`, or the queues grow.
        Returns how many clients."""
        clients = [c for c in self._clients if c.wants(stream_id)]
        for client in clients:
            client.queue.keep_all = client.queue.keep_all | {stream_id}
            client.paced_reader = True
        return len(clients)

    async def wait_every_frame_clients(self, stream_id: str, max_frames: int, until_read: bool = False) -> None:
        """Until every connected client that keeps every frame of `stream_id` (`keep_every_frame`) holds at
        most `max_frames` of them unsent, and with `until_read` has also acknowledged reading every frame sent
        (its send window's ping answered: the end of a file, before the connection closes). A client that
        leaves stops counting at once; one that stops reading is dropped after `write_timeout_s` (its pong or
        its socket overdue, as any client), so no client holds the stream longer."""
        for client in [c for c in self._clients if stream_id in c.queue.keep_all]:
            await self._client_drained(client, stream_id, max_frames)
            while until_read and not client.queue.closed and client.window.sent > client.window.acked:
                if client.window.ping_at is None:  # fewer than half a window unacknowledged: ask for the ping
                    client.window.want_ack()
                    client.queue.wake()
                client.idle.clear()  # set again by the relay once the pong has come and nothing is left to send
                await client.idle.wait()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.cfg.host in ("0.0.0.0", "") else self.cfg.host
        return f"http://{host}:{self.port}/"

    async def aclose(self, drain_s: float = 1.0) -> None:
        """Stop serving. Frames already queued for a connected client are sent first, for up to `drain_s` in
        all (a slow client would otherwise lose the last frames of a file when the engine shuts down)."""
        clients = list(self._clients)
        if clients and drain_s > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(self._client_drained(c) for c in clients)), drain_s)
        for client in list(self._clients):
            client.queue.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # ------------------------------------------------------------------ FrameSink
    def send_batch(self, batch: FrameBatch) -> None:
        """`send_frames` for a published step as columns (the batch sink contract, `outputs.FrameSink`): the
        same clients get the same messages, byte for byte (the same routing and send-window bookkeeping,
        `_route` and `_wrote`); the frames written straight to clients are serialised from the batch's columns
        (`encode_binary_batch`, `encode_json_batch`), and a `LandmarkFrame` is built only for a row that goes
        into a client's queue."""
        if not self._clients:
            return
        from websockets.asyncio.server import broadcast

        now_ns = self.engine.clock.now_ns()
        direct = self._route(batch.stream_ids, batch.frame)
        if not direct:
            return
        encoded = iter(encode_binary_batch(batch, now_ns, [i for i, binary, _ in direct if binary]))
        texts = iter(encode_json_batch(batch, now_ns, [i for i, _, text in direct if text]))
        for _, binary, text in direct:
            if binary:
                broadcast([c.ws for c in binary], next(encoded))
            if text:
                broadcast([c.ws for c in text], next(texts).encode(), text=True)
            self._wrote(binary, text)

    def send_frames(self, frames: Sequence[LandmarkFrame]) -> None:
        """Fast path: a client that is keeping up (window open, socket taking data) gets the frame written to
        its socket right here (websockets' synchronous `broadcast`, no task hop); otherwise it goes into the
        client's latest-wins queue. Only a frame's subscribers are visited (the subscriptions are indexed by
        stream), and a frame is serialised once per format for all the clients written to directly: the cost
        is one step per delivery, not per (frame, client) pair."""
        if not self._clients:
            return
        from websockets.asyncio.server import broadcast

        now_ns = self.engine.clock.now_ns()
        direct = self._route([f.stream_id for f in frames], frames.__getitem__)
        if not direct:
            return
        # the frames written directly to binary clients are serialised together (`encode_binary_many`)
        encoded = iter(encode_binary_many([frames[i] for i, binary, _ in direct if binary], now_ns))
        for i, binary, text in direct:
            if binary:
                broadcast([c.ws for c in binary], next(encoded))
            if text:
                broadcast([c.ws for c in text], encode_json(frames[i], now_ns).encode(), text=True)
            self._wrote(binary, text)

    def _route(
        self, stream_ids: Sequence[str], frame: Callable[[int], LandmarkFrame]
    ) -> list[tuple[int, list[_Client], list[_Client]]]:
        """Per frame (position i, stream `stream_ids[i]`): the subscribed clients that can take it on their socket
        now, binary and text (`_Client.can_write_now`); every other subscriber gets `frame(i)` in its
        latest-wins queue. Returns (i, binary, text) for the frames written directly to some client."""
        limit = self.cfg.direct_write_limit_bytes
        every = self._every_stream
        by_stream = self._by_stream
        direct: list[tuple[int, list[_Client], list[_Client]]] = []
        for i, sid in enumerate(stream_ids):
            subs = by_stream.get(sid)
            if not every and not subs:
                continue
            binary: list[_Client] = []
            text: list[_Client] = []
            for group in (every, subs) if subs else (every,):
                for client in group:
                    if client.can_write_now(limit):
                        (binary if client.format == "binary" else text).append(client)
                    else:
                        client.queue.put(frame(i))
            if binary or text:
                direct.append((i, binary, text))
        return direct

    @staticmethod
    def _wrote(binary: list[_Client], text: list[_Client]) -> None:
        """A frame went straight to these clients' sockets: count it in their send windows."""
        for client in (*binary, *text):
            client.sent += 1
            client.window.on_sent()
            if client.windowed and client.window.needs_ping():
                client.queue.wake()  # the relay sends the acknowledging ping

    def stream_event(self, event: dict[str, Any]) -> None:
        sid: str | None = event.get("stream")
        if sid is None:  # engine events always name their stream; one that does not goes to every client
            for client in self._clients:
                client.queue.put_message(event)
            return
        for client in (*self._every_stream, *self._by_stream.get(sid, ())):
            if event.get("event") == "reset":
                client.queue.discard_stream(sid, before_epoch=event.get("epoch"))
            elif event.get("event") == "closed":
                client.queue.discard_stream(sid)
            client.queue.put_message(event)

    def _subscribe(self, client: _Client, streams: frozenset[str] | None) -> None:
        """Set the streams a client receives (None: every stream) and keep the by-stream index in step."""
        self._unindex(client)
        client.streams = streams
        if streams is None:
            self._every_stream.add(client)
            return
        for sid in streams:
            self._by_stream.setdefault(sid, set()).add(client)

    def _unindex(self, client: _Client) -> None:
        self._every_stream.discard(client)
        for sid in client.streams or ():
            subs = self._by_stream.get(sid)
            if subs is not None:
                subs.discard(client)
                if not subs:
                    del self._by_stream[sid]

    # ------------------------------------------------------------------ HTTP
    def _offered_tokens(self, request: Request, query: dict[str, list[str]]) -> str:
        offered = query.get("token", [""])[0]
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            offered = offered or auth[7:].strip()
        return offered

    def _is_admin(self, request: Request, query: dict[str, list[str]]) -> bool:
        offered = self._offered_tokens(request, query)
        return bool(self.cfg.admin_token) and hmac.compare_digest(offered.encode(), self.cfg.admin_token.encode())

    def _authorised(self, request: Request, query: dict[str, list[str]]) -> bool:
        if not self.cfg.token or self._is_admin(request, query):
            return True
        return hmac.compare_digest(self._offered_tokens(request, query).encode(), self.cfg.token.encode())

    def _origin_ok(self, request: Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None or "*" in self.cfg.allowed_origins or origin in self.cfg.allowed_origins:
            return True  # non-browser clients send no Origin
        try:
            parts = urlsplit(origin)
            port = parts.port
        except ValueError:
            return False
        own_hosts = set(LOOPBACK_HOSTS) | {self.cfg.host}
        return parts.hostname in own_hosts and port == self.port

    def _host_ok(self, request: Request) -> bool:
        """A loopback server answers only requests addressed to a loopback name (or `allowed_hosts`): a page
        that rebinds its own DNS name to 127.0.0.1 still sends its own name as Host."""
        if not self.cfg.is_loopback:
            return True
        host = request.headers.get("Host", "")
        try:
            name = urlsplit("//" + host).hostname
        except ValueError:
            return False
        return name in LOOPBACK_HOSTS or host in self.cfg.allowed_hosts or name in self.cfg.allowed_hosts

    @staticmethod
    def _response(connection: ServerConnection, status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
        response = connection.respond(status, "")
        response.body = body
        del response.headers["Content-Length"]
        del response.headers["Content-Type"]
        response.headers["Content-Length"] = str(len(body))
        response.headers["Content-Type"] = content_type
        response.headers["Cache-Control"] = "no-store"
        return response

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        query = parse_qs(parts.query)
        path = parts.path
        if any(len(request.headers.get_all(name)) > 1 for name in ("Host", "Origin", "Authorization", "Upgrade")):
            return connection.respond(http.HTTPStatus.BAD_REQUEST, "repeated header\n")
        is_upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if (not is_upgrade or "Origin" in request.headers) and not self._host_ok(request):
            return connection.respond(http.HTTPStatus.FORBIDDEN, "host not allowed\n")
        if self.cfg.serve_viewer and path in STATIC_FILES and not is_upgrade:
            name, ctype = STATIC_FILES[path]  # the page holds no data: it needs the token to connect
            try:
                body = (VIEWER_DIR / name).read_bytes()
            except OSError:
                return connection.respond(http.HTTPStatus.NOT_FOUND, f"viewer file {name} is missing\n")
            return self._response(connection, http.HTTPStatus.OK, body, ctype)
        if path == "/favicon.ico" and not is_upgrade:
            return self._response(connection, http.HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        if not self._authorised(request, query):
            return self._refuse(connection, http.HTTPStatus.UNAUTHORIZED, "missing or wrong token")
        if is_upgrade:
            if path not in ("/frames", "/audio"):
                return connection.respond(http.HTTPStatus.NOT_FOUND, "WebSocket endpoints: /frames, /audio\n")
            if not self._origin_ok(request):
                return self._refuse(connection, http.HTTPStatus.FORBIDDEN, "origin not allowed")
            if self._connections >= self.cfg.max_clients:
                return self._refuse(connection, http.HTTPStatus.SERVICE_UNAVAILABLE, "too many clients")
            return None
        if path == "/health":
            body = json.dumps(
                {
                    **self.engine.health(),
                    "clients": len(self._clients),
                    "connections": self._connections,
                    "dropped_clients": self.dropped_clients,
                    "refused_requests": dict(self.refused),
                    "closed_by_server": {str(k): v for k, v in sorted(self.closed_by_server.items())},
                }
            ).encode()
            return self._response(connection, http.HTTPStatus.OK, body, "application/json")
        if path == "/contract":
            return self._response(
                connection, http.HTTPStatus.OK, json.dumps(self._contract_json()).encode(), "application/json"
            )
        return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")

    def _note_close(self, ws: ServerConnection, code: int, why: str) -> None:
        """A connection the server closes: counted (`/health` "closed_by_server") and one log line at info."""
        self.closed_by_server[code] = self.closed_by_server.get(code, 0) + 1
        log.info("closing client %s (%d): %s", ws.remote_address, code, why)

    def _refuse(self, connection: ServerConnection, status: http.HTTPStatus, why: str) -> Response:
        """An HTTP refusal of a request, counted (`/health` "refused_requests") and logged at info."""
        self.refused[why] = self.refused.get(why, 0) + 1
        log.info("refused %s (HTTP %d): %s", connection.remote_address, int(status), why)
        return connection.respond(status, why + "\n")

    def _contract_json(self) -> dict[str, Any]:
        c = self.engine.contract
        summary = c.summary() if hasattr(c, "summary") else {}
        return summary or {
            "sample_rate_hz": c.sample_rate_hz,
            "samples_per_frame": c.samples_per_frame,
            "fps": c.fps,
            "lookahead_frames": c.lookahead_frames,
            "num_landmarks": c.num_landmarks,
            "landmark_dims": c.landmark_dims,
        }

    def _hello(self, kind: str, fmt: str | None = None) -> dict[str, Any]:
        return {
            "type": "hello",
            "v": PROTOCOL_VERSION,
            "protocol": f"msync-{kind}",
            "format": fmt,
            "binary_format_version": FORMAT_VERSION,
            "signal_names": list(SIGNAL_NAMES),
            **self._model_facts(),
            "streams": list(self.engine.sessions),
        }

    def _model_facts(self) -> dict[str, Any]:
        """`model_facts` of the engine, built once: every hello and ready repeats them (a reference face and
        the contours, about 10 KB of Python lists), so connections share one copy instead of each holding its
        own for its life."""
        if self._facts is None:
            self._facts = model_facts(self.engine)
        return self._facts

    # ------------------------------------------------------------------ WebSocket
    async def _handler(self, ws: ServerConnection) -> None:
        from websockets.exceptions import ConnectionClosed

        self._connections += 1
        try:
            request = ws.request
            assert request is not None  # the handler runs after the opening handshake
            parts = urlsplit(request.path)
            raw_query = parse_qs(parts.query)
            query = {k: v[0] for k, v in raw_query.items()}
            admin = self._is_admin(request, raw_query)
            if parts.path == "/frames":
                await self._serve_frames(ws, query, admin)
            elif parts.path == "/audio":
                await self._serve_audio(ws, admin)
        except (ConnectionClosed, _Dropped):
            pass
        except Exception as exc:  # connection errors end this client only
            log.warning("client %s failed: %r", ws.remote_address, exc)
        finally:
            self._connections -= 1

    def _drop(self, ws: ServerConnection, why: str) -> None:
        """Drop a client that does not drain: abort its TCP connection, which frees its slot at once."""
        transport = getattr(ws, "transport", None)
        if transport is not None and not transport.is_closing():
            self.dropped_clients += 1
            log.warning("dropping client %s: %s", ws.remote_address, why)
            transport.abort()

    async def _write(self, ws: ServerConnection, coro: Awaitable[T]) -> T:
        """Await a send (or ping) on `ws`; a socket that does not take it within `write_timeout_s` is dropped."""
        try:
            return await within(coro, self.cfg.write_timeout_s)
        except asyncio.TimeoutError:
            self._drop(ws, f"a write did not complete within {self.cfg.write_timeout_s:g} s")
            raise _Dropped from None

    def _add_client(
        self, ws: ServerConnection, fmt: str, streams: frozenset[str] | None
    ) -> tuple[_Client, asyncio.Task[None]]:
        client = _Client(
            ws,
            fmt,
            streams,
            LatestFrameQueue(self.cfg.client_queue_frames, self.cfg.max_frame_age_ms, clock=self.engine.clock),
            SendWindow(self.cfg.client_window_frames, self.cfg.client_window_target_ms / 1000),
        )
        self._clients.add(client)
        self._subscribe(client, streams)
        return client, asyncio.create_task(self._relay(client), name="msync-relay")

    async def _remove_client(self, client: _Client | None, relay: asyncio.Task[None] | None) -> None:
        if client is not None:
            self._clients.discard(client)
            self._unindex(client)
            client.queue.close()
            if client.pong_timer is not None:
                client.pong_timer.cancel()
        if relay is not None:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
        if client is not None:
            client.idle.set()  # nothing queued or in flight now: whoever waits for it to drain stops waiting

    def _on_pong(self, client: _Client, pong: asyncio.Future[float]) -> None:
        if pong.cancelled() or pong.exception() is not None:
            return  # the connection closed
        if client.pong_timer is not None:
            client.pong_timer.cancel()
            client.pong_timer = None
        client.window.on_pong(pong.result())  # websockets resolves it with the ping's round trip (s)
        client.queue.wake()

    async def _relay(self, client: _Client) -> None:
        """Send a client its queue, newest-wins, within its send window; one slow client only waits on itself."""
        clock = self.engine.clock
        loop = asyncio.get_running_loop()
        try:
            while not client.queue.closed:
                if client.windowed and client.window.needs_ping():
                    client.window.on_ping_sent()  # before the await: frames written meanwhile come after it
                    pong = asyncio.ensure_future(await self._write(client.ws, client.ws.ping()))  # a Future already
                    client.pong_timer = loop.call_later(
                        self.cfg.write_timeout_s, self._drop, client.ws, "its send window was not acknowledged in time"
                    )
                    pong.add_done_callback(functools.partial(self._on_pong, client))
                item = client.queue.get_nowait(frames=client.may_send_frame())
                if item is None:
                    client.idle.set()
                    await client.queue.wait()
                    continue
                client.idle.clear()
                client.busy = True
                try:
                    if isinstance(item, dict):
                        await self._write(client.ws, client.ws.send(json.dumps(item)))
                        continue
                    data = (
                        encode_binary(item, clock.now_ns())
                        if client.format == "binary"
                        else encode_json(item, clock.now_ns())
                    )
                    await self._write(client.ws, client.ws.send(data))
                finally:
                    client.busy = False
                client.sent += 1
                client.window.on_sent()
        except Exception:  # ConnectionClosed, _Dropped: the handler sees the connection end too
            client.idle.set()

    async def _receive_loop(
        self,
        ws: ServerConnection,
        proto: FramesProtocol | AudioProtocol,
        client_box: _Subscription,
        closed: asyncio.Future[None],
    ) -> None:
        """Feed the protocol what arrives (and its deadlines), execute its actions; yield to the other
        connections every `messages_per_turn` messages."""
        clock = self.engine.clock
        handled = 0
        rate = MessageRate(self.cfg.control_messages_per_s, self.cfg.control_burst)
        audio = isinstance(proto, AudioProtocol)
        # one timer per deadline instead of one per message (needs Task.uncancel, Python 3.11+)
        watchdog = (
            RecvDeadline(lambda: proto.deadline_ns, clock)
            if isinstance(proto, AudioProtocol) and sys.version_info >= (3, 11)
            else None
        )
        fast = None
        if watchdog is not None and isinstance(proto, AudioProtocol) and hasattr(ws, "on_binary"):
            fast = _FastIngest(self, proto, client_box, watchdog)
            ws.on_binary = fast  # binary audio is handled as it arrives while this task waits for a message
        try:
            while True:
                message = None
                if watchdog is not None and isinstance(proto, AudioProtocol):
                    message = await watchdog.recv(ws)
                    now_ns = clock.now_ns()
                    if message is not None:
                        if fast is not None:
                            ws.took_one()  # type: ignore[attr-defined]
                        actions = proto.receive(message, now_ns)
                    elif fast is not None and (fast.pending or fast.error is not None):
                        actions = fast.take()  # what a message handled in the callback left to do
                    else:
                        actions = proto.on_timer(now_ns)
                elif isinstance(proto, AudioProtocol) and (deadline := proto.deadline_ns) is not None:
                    try:
                        message = await within(ws.recv(), max(0.0, (deadline - clock.now_ns()) / 1e9))
                    except asyncio.TimeoutError:
                        actions = proto.on_timer(clock.now_ns())
                    else:
                        actions = proto.receive(message, clock.now_ns())
                else:
                    message = await ws.recv()
                    actions = proto.receive(message, clock.now_ns())
                if await self._execute(ws, proto, actions, client_box, closed):
                    return
                if message is not None and not (audio and isinstance(message, bytes)):
                    wait_ns = rate.take(clock.now_ns())
                    if wait_ns:
                        await asyncio.sleep(wait_ns / 1e9)  # pacing this connection only (a timer, not a poll)
                        handled = 0
                        continue
                handled += 1
                if handled >= self.cfg.messages_per_turn:
                    handled = 0
                    await asyncio.sleep(0)  # fairness: a pipelining client does not starve the others
        finally:
            if fast is not None:
                ws.on_binary = None  # type: ignore[attr-defined]
            if watchdog is not None:
                watchdog.close()

    async def _execute(
        self,
        ws: ServerConnection,
        proto: FramesProtocol | AudioProtocol,
        actions: Sequence[Action],
        client_box: _Subscription,
        closed: asyncio.Future[None],
    ) -> bool:
        """Run the protocol's actions in order. Returns True once the connection is closed."""
        for action in actions:
            if isinstance(action, Send):
                await self._write(ws, ws.send(action.data))
            elif isinstance(action, Close):
                if isinstance(proto, AudioProtocol):
                    proto.connection_lost()  # the stream goes now, not after a peer's closing handshake
                if action.code != 1000:  # the server ends a client's connection
                    self._note_close(ws, action.code, action.reason)
                await ws.close(action.code, action.reason)
                return True
            elif isinstance(action, Subscribe):
                client = client_box.client
                if client is None:
                    client, relay = self._add_client(ws, action.format, action.streams)
                    client_box.client, client_box.relay = client, relay
                else:
                    client.format = action.format
                    self._subscribe(client, action.streams)
                client.queue.keep_all = set(action.streams or ()) if action.every_frame else set()
            elif isinstance(action, AwaitCapacity):
                # checked first without a task: a real-time source almost always has room
                if not self.engine.has_capacity(action.stream_id, action.max_pending_s):
                    await self._until(self.engine.wait_capacity(action.stream_id, action.max_pending_s), closed)
                client = client_box.client
                if client is not None and action.stream_id in client.queue.keep_all:
                    limit = int(action.max_pending_s * self.engine.contract.fps)
                    if client.queue.frames_of(action.stream_id) > limit:
                        await self._until(self._client_drained(client, action.stream_id, limit), closed)
            elif isinstance(action, AwaitDrained):
                await self._until(self.engine.wait_drained(action.stream_id), closed)
                client = client_box.client
                if client is not None:
                    await self._until(
                        self._client_drained(client, action.stream_id), closed, timeout_s=self.cfg.write_timeout_s
                    )
        if isinstance(proto, AudioProtocol):  # /audio: the cap follows the declared format (bounded memory)
            ws.protocol.max_message_size = proto.max_message_bytes
        return False

    @staticmethod
    async def _client_drained(client: _Client, stream_id: str | None = None, limit: int = 0) -> None:
        """Until at most `limit` frames of the stream (None: of every stream, messages included) wait in the
        client's queue (0: none, nothing in flight)."""
        while (client.queue.frames_of(stream_id) if stream_id is not None else len(client.queue)) > limit or (
            limit == 0 and client.busy
        ):
            client.idle.clear()
            await client.idle.wait()

    @staticmethod
    async def _until(
        coro: Coroutine[Any, Any, object], closed: asyncio.Future[None], timeout_s: float | None = None
    ) -> None:
        """Await `coro` unless the connection closes first (then raise its ConnectionClosed at once: the
        stream and its queued audio go without waiting for the engine)."""
        from websockets.exceptions import ConnectionClosedError

        task = asyncio.ensure_future(coro)
        try:
            waiting: set[asyncio.Future[Any]] = {task, closed}
            done, _ = await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
        if task not in done and closed in done:
            raise ConnectionClosedError(None, None)

    async def _serve_frames(self, ws: ServerConnection, query: dict[str, str], admin: bool) -> None:
        try:
            fmt, streams = FramesProtocol.parse_query(query)
        except ProtocolError as exc:
            await ws.send(error(exc.code, str(exc), fatal=True))
            self._note_close(ws, CLOSE_POLICY, f"bad request: {exc}")
            await ws.close(CLOSE_POLICY, "bad request")
            return
        proto = FramesProtocol(
            self.engine, self.protocol_cfg, self.owners, key=ws, admin=admin, fmt=fmt, streams=streams
        )
        await self._write(ws, ws.send(json.dumps(self._hello("frames", fmt))))
        box = _Subscription(*self._add_client(ws, fmt, streams))
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            await self._receive_loop(ws, proto, box, closed)
        finally:
            closed.cancel()
            await self._remove_client(box.client, box.relay)

    async def _serve_audio(self, ws: ServerConnection, admin: bool) -> None:
        host, port = ws.remote_address[:2]
        proto = AudioProtocol(
            self.engine,
            self.protocol_cfg,
            self.owners,
            key=ws,
            admin=admin,
            now_ns=self.engine.clock.now_ns(),
            source=f"ws {host}:{port}",
            info=functools.partial(self._hello, "audio"),  # built when the ready is sent, not kept
        )
        ws.protocol.max_message_size = proto.max_message_bytes
        box = _Subscription()  # a client only once the connection subscribes to its frames
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            await self._receive_loop(ws, proto, box, closed)
        finally:
            closed.cancel()
            proto.connection_lost()
            await self._remove_client(box.client, box.relay)
