"""One `msync serve` replica: an engine of its own, and WS /audio + GET /health over an ASGI WebSocket.

The replica is `msync stream`'s server without the viewer and /frames: `stream_engine.protocol.AudioProtocol`
decides every reply, this module only moves messages between it and a Starlette `WebSocket` (what Ray Serve's
FastAPI ingress hands a replica) and routes the engine's frames to the connection that owns the stream. No
Ray here, so the transport is tested without a cluster (tests/test_serve_replica.py).

    engine = ReplicaEngine(runner, EngineConfig(max_streams=16), seed_base=0, id_prefix="r1")
    server = ReplicaServer(engine, ServerConfig(), info={"replica": "r1"})
    await engine.start()
    await server.serve_audio(websocket)            # one connection, until it ends
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from stream_engine.core import LandmarkFrame
from stream_engine.engine import Engine
from stream_engine.frame_batch import FrameBatch
from stream_engine.outputs.latest import LatestFrameQueue
from stream_engine.outputs.serializers import FORMAT_VERSION, encode_binary, encode_json
from stream_engine.outputs.websocket import LOOPBACK_HOSTS, ServerConfig, model_facts
from stream_engine.protocol import (
    CLOSE_TOO_BIG,
    PROTOCOL_VERSION,
    AudioProtocol,
    AwaitCapacity,
    AwaitDrained,
    Close,
    MessageRate,
    Send,
    StreamOwners,
    Subscribe,
)
from stream_engine.signals import SIGNAL_NAMES

log = logging.getLogger(__name__)


class ReplicaEngine(Engine):
    """The engine of one replica. Differs from `Engine` only in how a stream is opened: its noise seed is
    `stream_seed(seed_base, stream_id)` (the same on any replica, whatever was opened before), and an id the
    client leaves out is `"{id_prefix}-{n}"`, unique across replicas when `id_prefix` is the replica's."""

    def __init__(self, runner: Any, cfg: Any, seed_base: int | None, id_prefix: str, **kwargs: Any) -> None:
        super().__init__(runner, cfg, **kwargs)
        self.noise_seed_base = seed_base
        self.id_prefix = f"{id_prefix}-"


class _Connection:
    """One /audio WebSocket: its frame queue and sender task."""

    def __init__(self, ws: Any, queue: LatestFrameQueue) -> None:
        self.ws = ws
        self.queue = queue
        self.format = "json"
        self.stream_id: str | None = None
        self.busy = False
        self.progress = asyncio.Event()  # set after every send and when the queue empties
        self.sender: asyncio.Task[None] | None = None


def _header(headers: Mapping[str, str], name: str) -> str:
    return headers.get(name) or ""


class ReplicaServer:
    """WS /audio and /health of one replica; the engine's `FrameSink` for its connections' own frames.

    Args:
        engine: the replica's `Engine` (started by the caller).
        cfg: limits, tokens, Origin/Host rules (`ServerConfig`; tokens already resolved).
        info: extra fields for the `ready` message and /health (e.g. {"replica": id}).
    """

    def __init__(self, engine: Engine, cfg: ServerConfig, info: dict[str, Any] | None = None) -> None:
        self.engine = engine
        self.cfg = cfg
        self.protocol_cfg = cfg.protocol()
        self.owners = StreamOwners()
        self.info = dict(info or {})
        self._by_stream: dict[str, _Connection] = {}
        self._open: set[_Connection] = set()
        self.refused = 0
        engine.add_sink(self)

    # ------------------------------------------------------------------ FrameSink
    def send_frames(self, frames: Sequence[LandmarkFrame]) -> None:
        for frame in frames:
            conn = self._by_stream.get(frame.stream_id)
            if conn is not None:
                conn.queue.put(frame)

    def send_batch(self, batch: FrameBatch) -> None:
        """`send_frames` for a published step (the batch sink contract): frames built only for rows whose
        stream has a connection here."""
        for i, sid in enumerate(batch.stream_ids):
            conn = self._by_stream.get(sid)
            if conn is not None:
                conn.queue.put(batch.frame(i))

    def stream_event(self, event: dict[str, Any]) -> None:
        sid = event.get("stream")
        if not isinstance(sid, str) or (conn := self._by_stream.get(sid)) is None:
            return
        if event.get("event") == "reset":
            conn.queue.discard_stream(sid, before_epoch=event.get("epoch"))
        elif event.get("event") == "closed":
            conn.queue.discard_stream(sid)
        conn.queue.put_message(event)

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.queue.close()

    # ------------------------------------------------------------------ admission (PROTOCOL.md §1)
    def _offered_token(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str:
        offered = query.get("token") or ""
        auth = _header(headers, "authorization")
        if auth.lower().startswith("bearer "):
            offered = offered or auth[7:].strip()
        return offered

    def is_admin(self, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        offered = self._offered_token(headers, query)
        return bool(self.cfg.admin_token) and hmac.compare_digest(offered.encode(), self.cfg.admin_token.encode())

    def refusal(self, headers: Mapping[str, str], query: Mapping[str, str], upgrade: bool) -> tuple[int, str] | None:
        """(HTTP status, reason) when a request must be refused before it is served, else None: a foreign
        Host on a loopback bind (403), a missing or wrong token (401), a browser Origin not allowed (403)."""
        origin = headers.get("origin")
        if (not upgrade or origin is not None) and not self._host_ok(_header(headers, "host")):
            return 403, "host not allowed"
        if self.cfg.token and not self.is_admin(headers, query):
            if not hmac.compare_digest(self._offered_token(headers, query).encode(), self.cfg.token.encode()):
                return 401, "missing or wrong token"
        if (
            upgrade
            and origin is not None
            and "*" not in self.cfg.allowed_origins
            and origin not in self.cfg.allowed_origins
        ):
            return 403, "origin not allowed"  # serve has no page of its own: only listed origins
        return None

    def _host_ok(self, host: str) -> bool:
        if not self.cfg.is_loopback:
            return True
        try:
            name = urlsplit("//" + host).hostname
        except ValueError:
            return False
        return name in LOOPBACK_HOSTS or host in self.cfg.allowed_hosts or name in self.cfg.allowed_hosts

    # ------------------------------------------------------------------ reporting
    def hello_fields(self) -> dict[str, Any]:
        """The server facts repeated in every `ready` (as `msync stream`'s /audio hello) plus `self.info`."""
        return {
            "protocol": "msync-audio",
            "binary_format_version": FORMAT_VERSION,
            "signal_names": list(SIGNAL_NAMES),
            **model_facts(self.engine),
            **self.info,
        }

    def health(self) -> dict[str, Any]:
        return {
            **self.info,
            **self.engine.health(),
            "connections": len(self._open),
            "capacity": self.engine.cfg.max_streams,
            "refused": self.refused,
        }

    # ------------------------------------------------------------------ WS /audio
    async def serve_audio(self, ws: Any) -> None:
        """Serve one Starlette `WebSocket` on /audio until it ends (any reason). Never raises."""
        headers = {k.lower(): v for k, v in ws.headers.items()}
        query = dict(ws.query_params)
        refused = self.refusal(headers, query, upgrade=True)
        if refused is not None:
            self.refused += 1
            log.info(
                "refused a connection (%s %s; host %r, origin %r)", *refused, headers.get("host"), headers.get("origin")
            )
            await _deny(ws, *refused)
            return
        admin = self.is_admin(headers, query)
        await ws.accept()
        conn = _Connection(
            ws, LatestFrameQueue(self.cfg.client_queue_frames, self.cfg.max_frame_age_ms, clock=self.engine.clock)
        )
        client = ws.client
        source = f"ws {client.host}:{client.port}" if client else "ws"
        proto = AudioProtocol(
            self.engine,
            self.protocol_cfg,
            self.owners,
            key=conn,
            admin=admin,
            now_ns=self.engine.clock.now_ns(),
            source=source,
            info=self.hello_fields(),
        )
        self._open.add(conn)
        try:
            await self._receive_loop(conn, proto)
        except Exception as exc:  # the client went away, or a write timed out: this connection only
            log.debug("connection ended: %r", exc)
        finally:
            proto.connection_lost()
            self._open.discard(conn)
            if conn.stream_id is not None and self._by_stream.get(conn.stream_id) is conn:
                del self._by_stream[conn.stream_id]
            conn.queue.close()
            if conn.sender is not None:
                conn.sender.cancel()
                await asyncio.gather(conn.sender, return_exceptions=True)

    async def _receive_loop(self, conn: _Connection, proto: AudioProtocol) -> None:
        clock = self.engine.clock
        rate = MessageRate(self.cfg.control_messages_per_s, self.cfg.control_burst)
        ws = conn.ws
        while True:
            deadline = proto.deadline_ns
            data: str | bytes | None = None
            try:
                timeout = None if deadline is None else max(0.0, (deadline - clock.now_ns()) / 1e9)
                message = await asyncio.wait_for(ws.receive(), timeout)
            except asyncio.TimeoutError:  # (TimeoutError from 3.11; the project supports 3.10)
                actions = proto.on_timer(clock.now_ns())
            else:
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is None:
                    data = message.get("text") or ""
                size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
                if size > proto.max_message_bytes:
                    proto.connection_lost()
                    await ws.close(CLOSE_TOO_BIG, f"message of {size} bytes; the limit is {proto.max_message_bytes}")
                    return
                actions = proto.receive(data, clock.now_ns())
            if await self._execute(conn, proto, actions):
                return
            if isinstance(data, str):
                wait_ns = rate.take(clock.now_ns())
                if wait_ns:
                    await asyncio.sleep(wait_ns / 1e9)

    async def _send(self, ws: Any, data: str | bytes) -> None:
        """One write; raises asyncio.TimeoutError when the socket does not take it in `write_timeout_s`."""
        send = ws.send_bytes(data) if isinstance(data, bytes) else ws.send_text(data)
        await asyncio.wait_for(send, self.cfg.write_timeout_s)

    async def _execute(self, conn: _Connection, proto: AudioProtocol, actions: Any) -> bool:
        """Run the protocol's actions in order. Returns True once the connection is closed."""
        for action in actions:
            if isinstance(action, Send):
                await self._send(conn.ws, action.data)
            elif isinstance(action, Close):
                proto.connection_lost()  # the stream goes now
                await conn.ws.close(action.code, action.reason)
                return True
            elif isinstance(action, Subscribe):
                (sid,) = tuple(action.streams or ())
                conn.stream_id, conn.format = sid, action.format
                conn.queue.keep_all = {sid} if action.every_frame else set()
                self._by_stream[sid] = conn
                if conn.sender is None:
                    conn.sender = asyncio.create_task(self._sender(conn), name="msync-serve-sender")
            elif isinstance(action, AwaitCapacity):
                await self.engine.wait_capacity(action.stream_id, action.max_pending_s)  # returns at once with room
                if action.stream_id in conn.queue.keep_all:
                    limit = int(action.max_pending_s * self.engine.contract.fps)
                    await self._queue_below(conn, action.stream_id, limit)
            elif isinstance(action, AwaitDrained):
                await self.engine.wait_drained(action.stream_id)
                if conn.sender is not None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._queue_below(conn, action.stream_id, 0), self.cfg.write_timeout_s)
        return False

    @staticmethod
    async def _queue_below(conn: _Connection, stream_id: str, limit: int) -> None:
        """Until at most `limit` frames of the stream wait for this connection (0: none, none being sent)."""
        while (conn.queue.frames_of(stream_id) > limit or (limit == 0 and conn.busy)) and not conn.queue.closed:
            conn.progress.clear()
            await conn.progress.wait()

    async def _sender(self, conn: _Connection) -> None:
        """Send the connection its frames and stream events in order (latest-wins unless `every_frame`)."""
        clock = self.engine.clock
        try:
            while True:
                item = conn.queue.get_nowait()
                if item is None:
                    conn.progress.set()
                    if conn.queue.closed:
                        return
                    await conn.queue.wait()
                    continue
                conn.busy = True
                try:
                    if isinstance(item, dict):
                        await self._send(conn.ws, json.dumps(item))
                    elif conn.format == "binary":
                        await self._send(conn.ws, encode_binary(item, clock.now_ns()))
                    else:
                        await self._send(conn.ws, encode_json(item, clock.now_ns()))
                finally:
                    conn.busy = False
                    conn.progress.set()
        except Exception as exc:  # the socket closed or a write timed out: end this connection
            log.debug("sender ended: %r", exc)
            conn.queue.close()
            conn.progress.set()
            with contextlib.suppress(Exception):
                await conn.ws.close(1011, "write failed")


async def _deny(ws: Any, status: int, reason: str) -> None:
    """Refuse a WebSocket upgrade with an HTTP status (the ASGI denial-response extension), or, where the
    server lacks it, by closing before accept (the server answers HTTP 403)."""
    if "websocket.http.response" in (ws.scope.get("extensions") or {}):
        from starlette.responses import PlainTextResponse

        await ws.send_denial_response(PlainTextResponse(reason + "\n", status_code=status))
    else:
        await ws.close(1008, reason)


__all__ = ["PROTOCOL_VERSION", "ReplicaEngine", "ReplicaServer"]
