"""The engine's network face: one port serving the viewer over HTTP, frames over WebSocket, and audio ingest.

    GET  /            the live viewer page (static HTML/JS from stream_engine/viewer/)
    GET  /health      JSON: streams, counters, latency facts
    GET  /contract    JSON: the model's step contract
    WS   /frames      landmark frames out (JSON or binary, see PROTOCOL.md), control messages in
    WS   /audio       one audio stream in (JSON hello, then binary PCM chunks), optionally its frames back

Every client gets its own `LatestFrameQueue` and relay task: the engine only appends to queues, so a slow
client loses stale frames and never delays the engine or other clients. Binds 127.0.0.1 by default; an
optional token is required on every request but the viewer's static files (``?token=`` or ``Authorization:
Bearer``; the page passes its own ``?token=`` on to its WebSocket); browser Origins other
than this server's own are refused unless listed; message sizes are capped (websockets closes with 1009).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import http
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from stream_engine.core import AudioChunkError, CoreError, LandmarkFrame
from stream_engine.inputs import PcmConverter, PcmFormat
from stream_engine.landmarks import CONTOURS
from stream_engine.outputs.latest import LatestFrameQueue
from stream_engine.outputs.serializers import FORMAT_VERSION, encode_binary, encode_json
from stream_engine.session import ReferenceFaceError, reference_face_from_points
from stream_engine.signals import SIGNAL_NAMES

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
VIEWER_DIR = Path(__file__).resolve().parents[1] / "viewer"
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/index.html": ("index.html", "text/html; charset=utf-8"),
                "/viewer.js": ("viewer.js", "text/javascript; charset=utf-8")}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# WebSocket close codes (RFC 6455 §7.4.1)
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """HTTP + WebSocket server.

    Attributes:
        host: bind address; anything but loopback needs `allow_remote` (and should have a token).
        port: TCP port (0 = pick a free one).
        token: if set, every request must carry it (``?token=...`` or ``Authorization: Bearer ...``).
        allowed_origins: browser Origins allowed besides this server's own page ("*" = any).
        allow_remote: permit binding a non-loopback address.
        max_message_bytes: largest incoming WebSocket message (audio chunk or control).
        max_clients: most simultaneous WebSocket connections (further ones get HTTP 503).
        client_queue_frames: per client and stream, frames kept before the oldest is dropped.
        max_frame_age_ms: frames older than this (since publish) are dropped instead of sent.
        hello_timeout_s: an audio client must send its hello within this time.
        max_client_errors: an audio client is disconnected after this many bad messages.
        audio_max_pending_s: back-pressure: stop reading an audio client while its stream holds more
            unprocessed audio than this.
        resample_quality: soxr quality for ingest resampling.
        direct_write_limit_bytes: a frame is written straight to a client's socket (no queue, no task hop) only
            while less than this is waiting in its user-space write buffer.
        ping_interval_s, ping_timeout_s: keepalive (dead clients are dropped).
        serve_viewer: serve the viewer page.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str = ""
    allowed_origins: tuple[str, ...] = ()
    allow_remote: bool = False
    max_message_bytes: int = 1 << 20
    max_clients: int = 32
    client_queue_frames: int = 4
    max_frame_age_ms: float = 500.0
    hello_timeout_s: float = 10.0
    max_client_errors: int = 50
    audio_max_pending_s: float = 2.0
    resample_quality: str = "HQ"
    direct_write_limit_bytes: int = 16 * 1024
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    serve_viewer: bool = True

    def __post_init__(self) -> None:
        if self.host not in LOOPBACK_HOSTS and not self.allow_remote:
            raise ValueError(f"refusing to bind {self.host!r}: the engine binds loopback only unless allow_remote is "
                             "set (and then use a token)")
        if not 0 <= self.port < 65536:
            raise ValueError("port must be 0..65535")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")


class _Client:
    """One WebSocket connection that receives frames."""

    def __init__(self, ws, fmt: str, streams: set[str] | None, queue: LatestFrameQueue) -> None:
        self.ws = ws
        self.format = fmt
        self.streams = streams  # None = every stream
        self.queue = queue
        self.sent = 0
        self.busy = False  # the relay task is in the middle of a send

    def wants(self, stream_id: str) -> bool:
        return self.streams is None or stream_id in self.streams

    def can_write_now(self, limit_bytes: int) -> bool:
        """True when a frame can be written straight to the socket without reordering or piling up: nothing
        queued, no send in progress, and the kernel is taking data (little buffered in user space)."""
        if self.busy or len(self.queue):
            return False
        transport = getattr(self.ws, "transport", None)
        return transport is not None and not transport.is_closing() and transport.get_write_buffer_size() <= limit_bytes


def _error(code: str, message: str, fatal: bool = False, **extra) -> str:
    return json.dumps({"type": "error", "v": PROTOCOL_VERSION, "code": code, "message": message, "fatal": fatal,
                       **extra})


class WebSocketServer:
    """`FrameSink` + audio ingest on one port. Create, `await start()`, add to the engine's sinks."""

    def __init__(self, engine, cfg: ServerConfig = ServerConfig()) -> None:
        self.engine = engine
        self.cfg = cfg
        self._server = None
        self._clients: set[_Client] = set()
        self._connections = 0
        self.port: int | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        from websockets.asyncio.server import serve

        self._server = await serve(
            self._handler, self.cfg.host, self.cfg.port, process_request=self._process_request,
            max_size=self.cfg.max_message_bytes, max_queue=16, compression=None,
            ping_interval=self.cfg.ping_interval_s, ping_timeout=self.cfg.ping_timeout_s, close_timeout=2)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving on %s", self.url)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.cfg.host in ("0.0.0.0", "") else self.cfg.host
        return f"http://{host}:{self.port}/"

    async def aclose(self) -> None:
        for client in list(self._clients):
            client.queue.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # ------------------------------------------------------------------ FrameSink
    def send_frames(self, frames: Sequence[LandmarkFrame]) -> None:
        """Fast path: a client that is keeping up gets the frame written to its socket right here (websockets'
        synchronous `broadcast`, no task hop); otherwise it goes into the client's latest-wins queue."""
        from websockets.asyncio.server import broadcast

        now_ns = self.engine.clock.now_ns()
        encoded: dict[tuple[int, str], bytes | str] = {}
        for client in self._clients:
            for frame in frames:
                if not client.wants(frame.stream_id):
                    continue
                if client.can_write_now(self.cfg.direct_write_limit_bytes):
                    key = (id(frame), client.format)
                    if key not in encoded:
                        encoded[key] = (encode_binary(frame, now_ns) if client.format == "binary"
                                        else encode_json(frame, now_ns))
                    broadcast([client.ws], encoded[key])
                    client.sent += 1
                else:
                    client.queue.put(frame)

    def stream_event(self, event: dict) -> None:
        sid = event.get("stream")
        for client in self._clients:
            if not client.wants(sid):
                continue
            if event.get("event") == "reset":
                client.queue.discard_stream(sid, before_epoch=event.get("epoch"))
            elif event.get("event") == "closed":
                client.queue.discard_stream(sid)
            client.queue.put_message(event)

    # ------------------------------------------------------------------ HTTP
    def _authorised(self, request, query: dict[str, list[str]]) -> bool:
        if not self.cfg.token:
            return True
        offered = query.get("token", [""])[0]
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            offered = offered or auth[7:].strip()
        return hmac.compare_digest(offered.encode(), self.cfg.token.encode())

    def _origin_ok(self, request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None or "*" in self.cfg.allowed_origins or origin in self.cfg.allowed_origins:
            return True  # non-browser clients send no Origin
        parts = urlsplit(origin)
        own_hosts = set(LOOPBACK_HOSTS) | {self.cfg.host}
        return parts.hostname in own_hosts and parts.port == self.port

    @staticmethod
    def _response(connection, status: http.HTTPStatus, body: bytes, content_type: str):
        response = connection.respond(status, "")
        response.body = body
        del response.headers["Content-Length"]
        del response.headers["Content-Type"]
        response.headers["Content-Length"] = str(len(body))
        response.headers["Content-Type"] = content_type
        response.headers["Cache-Control"] = "no-store"
        return response

    def _process_request(self, connection, request):
        parts = urlsplit(request.path)
        query = parse_qs(parts.query)
        path = parts.path
        is_upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
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
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        if is_upgrade:
            if path not in ("/frames", "/audio"):
                return connection.respond(http.HTTPStatus.NOT_FOUND, "WebSocket endpoints: /frames, /audio\n")
            if not self._origin_ok(request):
                return connection.respond(http.HTTPStatus.FORBIDDEN, "origin not allowed\n")
            if self._connections >= self.cfg.max_clients:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many clients\n")
            return None
        if path == "/health":
            body = json.dumps({**self.engine.health(), "clients": len(self._clients)}).encode()
            return self._response(connection, http.HTTPStatus.OK, body, "application/json")
        if path == "/contract":
            return self._response(connection, http.HTTPStatus.OK, json.dumps(self._contract_json()).encode(),
                                  "application/json")
        return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")

    def _contract_json(self) -> dict:
        c = self.engine.contract
        summary = c.summary() if hasattr(c, "summary") else {}
        return summary or {"sample_rate_hz": c.sample_rate_hz, "samples_per_frame": c.samples_per_frame,
                           "fps": c.fps, "lookahead_frames": c.lookahead_frames,
                           "num_landmarks": c.num_landmarks, "landmark_dims": c.landmark_dims}

    def _hello(self, kind: str, fmt: str | None = None) -> dict:
        c = self.engine.contract
        return {"type": "hello", "v": PROTOCOL_VERSION, "protocol": f"msync-{kind}", "format": fmt,
                "binary_format_version": FORMAT_VERSION, "signal_names": list(SIGNAL_NAMES),
                "model": {"model_version": getattr(c, "model_version", ""), "sample_rate_hz": c.sample_rate_hz,
                          "samples_per_frame": c.samples_per_frame, "fps": c.fps,
                          "lookahead_frames": c.lookahead_frames, "num_landmarks": c.num_landmarks,
                          "landmark_dims": c.landmark_dims,
                          "reference_face": self.engine.model_reference_face.round(5).tolist()},
                "latency": self.engine.latency_facts(), "contours": [list(c) for c in CONTOURS],
                "streams": list(self.engine.sessions)}

    # ------------------------------------------------------------------ WebSocket
    async def _handler(self, ws) -> None:
        self._connections += 1
        try:
            parts = urlsplit(ws.request.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if parts.path == "/frames":
                await self._serve_frames(ws, query)
            elif parts.path == "/audio":
                await self._serve_audio(ws, query)
        except Exception as exc:  # connection errors end this client only
            from websockets.exceptions import ConnectionClosed

            if not isinstance(exc, ConnectionClosed):
                log.warning("client %s failed: %r", ws.remote_address, exc)
        finally:
            self._connections -= 1

    def _add_client(self, ws, fmt: str, streams: set[str] | None) -> _Client:
        client = _Client(ws, fmt, streams, LatestFrameQueue(self.cfg.client_queue_frames, self.cfg.max_frame_age_ms,
                                                             clock=self.engine.clock))
        self._clients.add(client)
        return client

    async def _relay(self, client: _Client) -> None:
        """Send a client its queue, newest-wins; one slow client only ever waits on itself."""
        clock = self.engine.clock
        while True:
            item = await client.queue.get()
            if item is None:
                return
            client.busy = True
            try:
                if isinstance(item, dict):
                    await client.ws.send(json.dumps(item))
                elif client.format == "binary":
                    await client.ws.send(encode_binary(item, clock.now_ns()))
                else:
                    await client.ws.send(encode_json(item, clock.now_ns()))
            finally:
                client.busy = False
            client.sent += 1

    @staticmethod
    def _parse_format(value: str | None, default: str = "json") -> str:
        value = (value or default).lower()
        if value not in ("json", "binary"):
            raise ValueError(f"format must be json or binary, got {value!r}")
        return value

    async def _serve_frames(self, ws, query: dict[str, str]) -> None:
        try:
            fmt = self._parse_format(query.get("format"))
        except ValueError as exc:
            await ws.send(_error("bad_request", str(exc), fatal=True))
            await ws.close(CLOSE_POLICY, "bad format")
            return
        streams = set(filter(None, query.get("streams", "").split(","))) or None
        await ws.send(json.dumps(self._hello("frames", fmt)))
        client = self._add_client(ws, fmt, streams)
        relay = asyncio.create_task(self._relay(client), name="msync-relay")
        try:
            async for message in ws:
                reply = self._control(client, message)
                if reply is not None:
                    await ws.send(reply)
        finally:
            self._clients.discard(client)
            client.queue.close()
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)

    def _control(self, client: _Client | None, message, own_stream: str | None = None) -> str | None:
        """Handle a control message on /frames (or a shared one on /audio). Returns the reply text."""
        if isinstance(message, bytes):
            return _error("unexpected_binary", "binary messages are only accepted on /audio")
        try:
            msg = json.loads(message)
        except json.JSONDecodeError as exc:
            return _error("bad_json", f"not JSON: {exc}")
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            return _error("bad_message", "expected a JSON object with a string 'type'")
        kind = msg["type"]
        if kind == "ping":
            return json.dumps({"type": "pong", "v": PROTOCOL_VERSION, "t_ns": self.engine.clock.now_ns()})
        if kind == "subscribe" and client is not None:
            streams = msg.get("streams")
            if streams is not None and not (isinstance(streams, list) and all(isinstance(s, str) for s in streams)):
                return _error("bad_message", "'streams' must be a list of stream ids or null")
            try:
                client.format = self._parse_format(msg.get("format"), client.format)
            except ValueError as exc:
                return _error("bad_message", str(exc))
            client.streams = set(streams) if streams else None
            return json.dumps({"type": "subscribed", "v": PROTOCOL_VERSION, "streams": streams,
                               "format": client.format})
        if kind in ("reset", "flush"):
            sid = msg.get("stream", own_stream)
            if not isinstance(sid, str) or sid not in self.engine.sessions:
                return _error("unknown_stream", f"no open stream {sid!r}")
            if kind == "reset":
                return json.dumps({"type": "reset_ok", "v": PROTOCOL_VERSION, "stream": sid,
                                   "epoch": self.engine.reset(sid)})
            return json.dumps({"type": "flushed", "v": PROTOCOL_VERSION, "stream": sid,
                               "frames_left": self.engine.flush(sid)})
        return _error("unknown_type", f"unknown message type {kind!r}")

    async def _serve_audio(self, ws, query: dict[str, str]) -> None:
        from websockets.exceptions import ConnectionClosed

        engine = self.engine
        try:
            first = await asyncio.wait_for(ws.recv(), timeout=self.cfg.hello_timeout_s)
        except asyncio.TimeoutError:
            await ws.send(_error("hello_timeout", f"send a hello message within {self.cfg.hello_timeout_s:g} s",
                                 fatal=True))
            await ws.close(CLOSE_POLICY, "no hello")
            return
        try:
            hello = json.loads(first) if isinstance(first, str) else None
            if not isinstance(hello, dict) or hello.get("type") != "hello":
                raise ValueError("the first message must be a JSON hello: "
                                 '{"type": "hello", "sample_rate_hz": 48000, "channels": 1, "dtype": "int16"}')
            if hello.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
                raise ValueError(f"unsupported protocol version {hello.get('v')!r} (server speaks {PROTOCOL_VERSION})")
            fmt = PcmFormat.from_json(hello)
            ref = hello.get("reference_face")
            ref = reference_face_from_points(ref, engine.core.num_landmarks) if ref is not None else None
            subscribe = hello.get("subscribe")
            sub_fmt = self._parse_format(subscribe) if subscribe not in (None, False, "none") else None
            sid = hello.get("stream")
            if sid is not None and not isinstance(sid, str):
                raise ValueError("'stream' must be a string")
            if sid is not None and sid in engine.sessions:
                raise ValueError(f"stream {sid!r} is already open")
        except (ValueError, ReferenceFaceError, json.JSONDecodeError) as exc:
            await ws.send(_error("bad_hello", str(exc), fatal=True))
            await ws.close(CLOSE_POLICY, "bad hello")
            return
        try:
            session = engine.open_stream(sid, ref, source=f"ws {ws.remote_address[0]}:{ws.remote_address[1]}")
        except Exception as exc:  # EngineFullError, bad id
            await ws.send(_error("unavailable", str(exc), fatal=True))
            await ws.close(CLOSE_TRY_AGAIN, "engine full")
            return
        sid = session.stream_id
        converter = PcmConverter(fmt, engine.sample_rate_hz, self.cfg.resample_quality, strict=True)
        client, relay = None, None
        errors = 0
        try:
            await ws.send(json.dumps({**self._hello("audio", sub_fmt), "type": "ready", "stream": sid,
                                      "epoch": engine.core.epoch(sid), "input_format": fmt.to_json()}))
            if sub_fmt is not None:
                client = self._add_client(ws, sub_fmt, {sid})
                relay = asyncio.create_task(self._relay(client), name="msync-relay")
            async for message in ws:
                reply, ended = await self._audio_message(sid, converter, message)
                if ended and client is not None:  # let the relay send this stream's last frames first
                    for _ in range(200):
                        if not len(client.queue):
                            break
                        await asyncio.sleep(0.005)
                if reply is not None:
                    errors += reply.startswith('{"type": "error"')
                    await ws.send(reply)
                if ended:
                    await ws.close(1000, "end of stream")
                    break
                if errors >= self.cfg.max_client_errors:
                    await ws.send(_error("too_many_errors", f"{errors} bad messages; closing", fatal=True))
                    await ws.close(CLOSE_POLICY, "too many errors")
                    break
        except ConnectionClosed:
            pass
        finally:
            if client is not None:
                self._clients.discard(client)
                client.queue.close()
            if relay is not None:
                relay.cancel()
                await asyncio.gather(relay, return_exceptions=True)
            engine.close_stream(sid)

    async def _audio_message(self, sid: str, converter: PcmConverter, message) -> tuple[str | None, bool]:
        """One message on /audio -> (reply or None, end_of_stream)."""
        engine = self.engine
        if isinstance(message, bytes):
            arrival_ns = engine.clock.now_ns()
            if not message:
                return _error("empty_chunk", "empty audio chunk ignored"), False
            try:
                samples = converter.convert_bytes(message)
                engine.push_audio(sid, samples, arrival_ns)
            except CoreError as exc:  # NaN/inf, partial sample frames, overload: restart cleanly
                converter.reset()
                epoch = engine.reset(sid)
                engine.note_error(sid, str(exc))
                code = "bad_audio" if isinstance(exc, AudioChunkError) else "overload"
                return _error(code, f"{exc}; the stream was reset", stream=sid, epoch=epoch), False
            await engine.wait_capacity(sid, self.cfg.audio_max_pending_s)  # back-pressure on fast senders
            return None, False
        try:
            msg = json.loads(message)
        except json.JSONDecodeError as exc:
            return _error("bad_json", f"not JSON: {exc}"), False
        if not isinstance(msg, dict):
            return _error("bad_message", "expected a JSON object"), False
        kind = msg.get("type")
        if kind == "config":
            try:
                fmt = PcmFormat.from_json({**converter.fmt.to_json(), **msg})
            except ValueError as exc:
                return _error("bad_format", f"{exc}; keeping {converter.fmt.to_json()}"), False
            tail = converter.set_format(fmt)
            engine.push_audio(sid, tail)
            return json.dumps({"type": "config_ok", "v": PROTOCOL_VERSION, "input_format": fmt.to_json()}), False
        if kind == "reset":
            converter.reset()
        elif kind in ("flush", "end"):
            engine.push_audio(sid, converter.finish())
        if kind == "end":
            engine.flush(sid)
            await engine.wait_drained(sid)
            return json.dumps({"type": "ended", "v": PROTOCOL_VERSION, "stream": sid}), True
        if kind in ("reset", "flush"):
            msg = {**msg, "stream": sid}  # an audio connection controls its own stream
            return self._control(None, json.dumps(msg), own_stream=sid), False
        return self._control(None, message, own_stream=sid), False

