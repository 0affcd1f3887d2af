"""The msync WebSocket wire protocol (PROTOCOL.md §3–4) as per-connection state machines, free of I/O.

Each connection is a small object: the transport feeds it what arrived (`receive(message, now_ns)`) and the
passing of time (`on_timer(now_ns)` at `deadline_ns`), and executes the actions it returns, in order::

    proto = AudioProtocol(engine, ProtocolConfig(), owners, key="conn-7")
    for action in proto.receive('{"type": "hello"}', now_ns):
        ...                       # Send(text) -> write it; Close(code, reason) -> close; AwaitDrained -> wait

Nothing here touches a socket, a task or a clock: the engine methods it calls (`open_stream`, `push_audio`,
`reset`, `flush`, `close_stream`) are synchronous, so every reply can be checked in a unit test without a
network (the same split as python-websockets' sans-I/O `protocol.py` and its asyncio connection).
`outputs/websocket.py` is the transport: sockets, tasks, timers, send windows.

Errors are counted per connection; `max_client_errors` of them close the offender (1008). A stream belongs
to the /audio connection that opened it (`StreamOwners`): other clients may reset or flush it only with the
admin token.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_engine.core import MAX_STREAM_ID_BYTES, AudioChunkError, CoreError, is_stream_id
from stream_engine.inputs import PCM_DTYPES, PcmConverter, PcmFormat
from stream_engine.session import ReferenceFaceError, reference_face_from_points

if TYPE_CHECKING:
    from stream_engine.engine import Engine

PROTOCOL_VERSION = 1
# WebSocket close codes (RFC 6455 §7.4.1)
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013
FORMATS = ("json", "binary")
MAX_SUBSCRIBED_STREAMS = 256


# ------------------------------------------------------------------------------------------------ actions


@dataclasses.dataclass(frozen=True)
class Send:
    """Write this text message to the connection."""

    data: str


@dataclasses.dataclass(frozen=True)
class Close:
    """Close the connection with this code (after the actions before it); read nothing more."""

    code: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Subscribe:
    """From now on send this connection the frames of `streams` (None = all) in `format`."""

    streams: frozenset[str] | None
    format: str
    every_frame: bool = False  # never drop these streams' frames (the /audio sender is paced instead)


@dataclasses.dataclass(frozen=True)
class AwaitCapacity:
    """Back-pressure: read no further message until the stream holds at most `max_pending_s` of audio (and,
    for an `every_frame` subscriber, at most that much of its frames wait to be sent)."""

    stream_id: str
    max_pending_s: float


@dataclasses.dataclass(frozen=True)
class AwaitDrained:
    """Wait until every frame of the stream is published and written to this connection (before `end`)."""

    stream_id: str


Action = Send | Close | Subscribe | AwaitCapacity | AwaitDrained


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Per-connection limits of the protocol (set from `ServerConfig`).

    Attributes:
        max_control_bytes: longest JSON text message that is parsed (longer: `bad_json`, not parsed).
        max_client_errors: errors after which the connection is closed (1008, `too_many_errors`).
        hello_timeout_s: an /audio client must send its hello within this time (0 = no limit).
        idle_timeout_s: an /audio stream that receives no audio for this long is flushed and closed
            (0 = never).
        audio_max_pending_s: back-pressure: stop reading an /audio client while its stream holds more
            unprocessed audio than this; also the longest audio message accepted (at the declared format).
        max_message_bytes: the transport's hard cap on any message.
        resample_quality: soxr quality for ingest resampling.
    """

    max_control_bytes: int = 64 * 1024
    max_client_errors: int = 50
    hello_timeout_s: float = 10.0
    idle_timeout_s: float = 15.0
    audio_max_pending_s: float = 2.0
    max_message_bytes: int = 1 << 20
    resample_quality: str = "HQ"

    def audio_message_limit(self, fmt: PcmFormat) -> int:
        """Largest audio message (bytes) for `fmt`: `audio_max_pending_s` of audio, at least 64 KiB (whole
        sample frames), at most `max_message_bytes`. Together with the transport's small receive queue this
        bounds the memory one /audio connection can hold."""
        audio = int(self.audio_max_pending_s * fmt.sample_rate_hz) * fmt.bytes_per_frame
        return int(min(self.max_message_bytes, max(64 * 1024, audio)))


def error(code: str, message: str, fatal: bool = False, **extra: Any) -> str:
    """An error message (PROTOCOL.md §3.3/§4) as JSON text."""
    return json.dumps(
        {"type": "error", "v": PROTOCOL_VERSION, "code": code, "message": message, "fatal": fatal, **extra}
    )


def reply(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, "v": PROTOCOL_VERSION, **fields})


class ProtocolError(ValueError):
    """A message that breaks the protocol; `code` is the error code sent back."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_control(message: str, max_bytes: int) -> dict[str, Any]:
    """A control message -> dict with a string "type". Raises `ProtocolError` (`bad_json` | `bad_message`).

    Never raises anything else: oversized text is refused unparsed, and numbers with thousands of digits or
    nesting too deep for the parser are `bad_json` like any other unparseable text.
    """
    if len(message) > max_bytes:
        raise ProtocolError("bad_json", f"control messages are at most {max_bytes} bytes, got {len(message)}")
    try:
        msg = json.loads(message)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit, nesting depth
        raise ProtocolError("bad_json", f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", "expected a JSON object with a string 'type'")
    return msg


def parse_format(value: object, default: str) -> str:
    """A frame format ("json" | "binary"; None = `default`). Raises `ProtocolError` (`bad_message`)."""
    if value is None:
        return default
    if not isinstance(value, str) or value.lower() not in FORMATS:
        raise ProtocolError("bad_message", f'format must be "json" or "binary", got {value!r}')
    return value.lower()


def parse_stream_id(value: object) -> str:
    """A stream id: a non-empty string of at most 128 UTF-8 bytes. Raises `ProtocolError` (`bad_message`)."""
    if not is_stream_id(value):
        raise ProtocolError(
            "bad_message",
            f"a stream id must be a non-empty string of at most {MAX_STREAM_ID_BYTES} bytes, got "
            + ("none" if value is None else repr(value)[:40]),
        )
    return value


def parse_pcm_format(obj: dict[str, Any], base: PcmFormat | None = None) -> PcmFormat:
    """`sample_rate_hz`, `channels`, `dtype` of a hello/config over `base` (defaults 16000, 1, int16).
    Raises ValueError with the reason for any wrong value or type."""
    base = base or PcmFormat()
    rate = obj.get("sample_rate_hz", base.sample_rate_hz)
    channels = obj.get("channels", base.channels)
    dtype = obj.get("dtype", base.dtype)
    if not isinstance(dtype, str) or dtype not in PCM_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(PCM_DTYPES)}, got {str(dtype)[:40]!r}")
    return PcmFormat(sample_rate_hz=rate, channels=channels, dtype=dtype)  # checks rate and channels


class MessageRate:
    """A token bucket over one connection's control messages: `burst` at once, `per_s` sustained. I/O-free:
    `take(now_ns)` returns how long (ns) the transport should wait before reading the next message, so a
    client that floods control messages is slowed to `per_s` and costs the server a bounded share of its
    time (audio is budgeted by back-pressure instead)."""

    def __init__(self, per_s: float, burst: int) -> None:
        self.per_s = float(per_s)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last_ns: int | None = None

    def take(self, now_ns: int) -> int:
        if self.per_s <= 0:
            return 0
        if self.last_ns is not None:
            self.tokens = min(self.burst, self.tokens + (now_ns - self.last_ns) * 1e-9 * self.per_s)
        self.last_ns = now_ns
        self.tokens -= 1.0
        return 0 if self.tokens >= 0 else int(-self.tokens / self.per_s * 1e9)


class StreamOwners:
    """Which connection opened which stream (shared by the connections of one server)."""

    def __init__(self) -> None:
        self._owner: dict[str, object] = {}

    def claim(self, stream_id: str, owner: object) -> None:
        self._owner[stream_id] = owner

    def release(self, stream_id: str, owner: object) -> None:
        if self._owner.get(stream_id) is owner:
            del self._owner[stream_id]

    def owner_of(self, stream_id: str) -> object | None:
        return self._owner.get(stream_id)


def _has_stream(engine: Engine, stream_id: str) -> bool:
    return stream_id in engine.sessions


class _Connection:
    """Shared parts: the error cap, ping, and the ownership rule for reset/flush."""

    endpoint = ""

    def __init__(self, engine: Engine, cfg: ProtocolConfig, owners: StreamOwners, key: object, admin: bool) -> None:
        self.engine = engine
        self.cfg = cfg
        self.owners = owners
        self.key = key
        self.admin = admin
        self.errors = 0
        self.closed = False

    def _error(self, code: str, message: str, **extra: Any) -> list[Action]:
        """A non-fatal error; the `max_client_errors`-th one closes the connection."""
        self.errors += 1
        actions: list[Action] = [Send(error(code, message, **extra))]
        if self.errors >= self.cfg.max_client_errors:
            actions += self._fatal("too_many_errors", f"{self.errors} bad messages; closing", CLOSE_POLICY)
        return actions

    def _fatal(self, code: str, message: str, close_code: int) -> list[Action]:
        self.closed = True
        return [Send(error(code, message, fatal=True)), Close(close_code, code.replace("_", " "))]

    def _pong(self) -> list[Action]:
        return [Send(reply("pong", t_ns=self.engine.clock.now_ns()))]

    def _may_control(self, stream_id: str) -> bool:
        return self.admin or self.owners.owner_of(stream_id) is self.key

    def _control_stream(self, kind: str, stream_id: str) -> list[Action]:
        """reset / flush of a stream this connection may control."""
        if not _has_stream(self.engine, stream_id):
            return self._error("unknown_stream", f"no open stream {stream_id!r}")
        if not self._may_control(stream_id):
            return self._error(
                "forbidden",
                f"stream {stream_id!r} belongs to another client (the admin token may control any stream)",
                stream=stream_id,
            )
        if kind == "reset":
            return [Send(reply("reset_ok", stream=stream_id, epoch=self.engine.reset(stream_id)))]
        return [Send(reply("flushed", stream=stream_id, frames_left=self.engine.flush(stream_id)))]


class FramesProtocol(_Connection):
    """WS /frames: frames out, control messages in (PROTOCOL.md §3.3).

    Args:
        engine: the `Engine` (its reset/flush are called for allowed control messages).
        owners: the server's `StreamOwners`.
        key: this connection's identity in `owners` (a /frames connection opens no stream itself).
        admin: the connection presented the admin token: it may reset/flush any stream.
        fmt, streams: the subscription from the URL query.
    """

    endpoint = "frames"

    def __init__(
        self,
        engine: Engine,
        cfg: ProtocolConfig,
        owners: StreamOwners,
        key: object = None,
        admin: bool = False,
        fmt: str = "json",
        streams: frozenset[str] | None = None,
    ) -> None:
        super().__init__(engine, cfg, owners, key if key is not None else object(), admin)
        self.format = fmt
        self.streams = streams

    @staticmethod
    def parse_query(query: dict[str, str]) -> tuple[str, frozenset[str] | None]:
        """(format, streams) of the URL query. Raises `ProtocolError` (`bad_request`)."""
        try:
            fmt = parse_format(query.get("format"), "json")
        except ProtocolError as exc:
            raise ProtocolError("bad_request", str(exc)) from None
        streams = frozenset(filter(None, query.get("streams", "").split(","))) or None
        return fmt, streams

    def receive(self, message: str | bytes, now_ns: int = 0) -> list[Action]:
        """One message from the client -> actions (replies, subscription changes, close)."""
        if self.closed:
            return []
        if isinstance(message, (bytes, bytearray, memoryview)):
            return self._error("unexpected_binary", "binary messages are only accepted on /audio")
        try:
            msg = parse_control(message, self.cfg.max_control_bytes)
            kind = msg["type"]
            if kind == "ping":
                return self._pong()
            if kind == "subscribe":
                return self._subscribe(msg)
            if kind in ("reset", "flush"):
                return self._control_stream(kind, parse_stream_id(msg.get("stream")))
        except ProtocolError as exc:
            return self._error(exc.code, str(exc))
        return self._error("unknown_type", f"unknown message type {kind[:40]!r}")

    def _subscribe(self, msg: dict[str, Any]) -> list[Action]:
        streams = msg.get("streams")
        if streams is not None:
            if not isinstance(streams, list) or len(streams) > MAX_SUBSCRIBED_STREAMS:
                raise ProtocolError(
                    "bad_message", f"'streams' must be a list of at most {MAX_SUBSCRIBED_STREAMS} stream ids, or null"
                )
            streams = [parse_stream_id(s) for s in streams]
        self.format = parse_format(msg.get("format"), self.format)
        self.streams = frozenset(streams) if streams else None
        return [Subscribe(self.streams, self.format), Send(reply("subscribed", streams=streams, format=self.format))]


class AudioProtocol(_Connection):
    """WS /audio: hello, then PCM and control; one stream per connection (PROTOCOL.md §4).

    States: "hello" (waiting for the hello, deadline `hello_timeout_s`), "open" (streaming; deadline
    `idle_timeout_s` after the last audio), "ending" (after `end` or the idle timeout: the stream is
    flushed and its last frames drain), "closed". `connection_lost()` closes the stream and frees its queued
    audio at once, whatever the state.
    """

    endpoint = "audio"

    def __init__(
        self,
        engine: Engine,
        cfg: ProtocolConfig,
        owners: StreamOwners,
        key: object = None,
        admin: bool = False,
        now_ns: int = 0,
        source: str = "ws",
        info: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(engine, cfg, owners, key if key is not None else object(), admin)
        # the server's hello fields (model, latency...), repeated in `ready`: a dict, or a function that builds
        # them when the ready is sent (a connection then holds no copy of them for its life)
        self.info = info or {}
        self.state = "hello"
        self.source = source
        self.stream_id: str | None = None
        self.subscribe: str | None = None
        self.converter: PcmConverter | None = None
        self.max_message_bytes = min(cfg.max_control_bytes, cfg.max_message_bytes)
        self._hello_deadline = now_ns + int(cfg.hello_timeout_s * 1e9) if cfg.hello_timeout_s > 0 else None
        self._last_audio_ns = now_ns

    # ------------------------------------------------------------------ time
    @property
    def deadline_ns(self) -> int | None:
        """When `on_timer` must next be called (engine clock), or None."""
        if self.state == "hello":
            return self._hello_deadline
        if self.state == "open" and self.cfg.idle_timeout_s > 0:
            return self._last_audio_ns + int(self.cfg.idle_timeout_s * 1e9)
        return None

    def on_timer(self, now_ns: int) -> list[Action]:
        """The deadline passed: no hello (fatal `hello_timeout`), or no audio for `idle_timeout_s` (the stream
        is flushed so every received sample's frame goes out, then `idle_timeout` and close 1000)."""
        deadline = self.deadline_ns
        if deadline is None or now_ns < deadline:
            return []
        if self.state == "hello":
            self.state = "closed"
            return self._fatal(
                "hello_timeout", f"send a hello message within {self.cfg.hello_timeout_s:g} s", CLOSE_POLICY
            )
        return self._finish(
            Send(
                error(
                    "idle_timeout",
                    f"no audio for {self.cfg.idle_timeout_s:g} s: the stream was flushed and is closed",
                    fatal=True,
                    stream=self.stream_id,
                )
            ),
            Close(CLOSE_NORMAL, "idle timeout"),
        )

    # ------------------------------------------------------------------ messages
    def receive(self, message: str | bytes, now_ns: int = 0) -> list[Action]:
        """One message from the client -> actions."""
        if self.state == "hello":
            return self._hello(message, now_ns)
        if self.state != "open":
            return []
        if isinstance(message, (bytes, bytearray, memoryview)):
            return self._audio(message, now_ns)
        try:
            msg = parse_control(message, self.cfg.max_control_bytes)
        except ProtocolError as exc:
            return self._error(exc.code, str(exc))
        kind = msg["type"]
        sid = self._sid
        if kind == "ping":
            return self._pong()
        if kind == "config":
            return self._config(msg)
        if kind in ("reset", "flush", "end"):
            other = msg.get("stream", sid)
            if other != sid:
                return self._error(
                    "forbidden",
                    "an /audio connection controls only its own stream "
                    f"({sid!r}); use /frames with the admin token for others",
                    stream=sid,
                )
            if kind == "reset":
                self._conv.reset()
                return [Send(reply("reset_ok", stream=sid, epoch=self.engine.reset(sid)))]
            if kind == "flush":
                self._push(self._conv.finish(), now_ns)  # the resampler's delayed tail
                return [Send(reply("flushed", stream=sid, frames_left=self.engine.flush(sid)))]
            return self._finish(Send(reply("ended", stream=sid)), Close(CLOSE_NORMAL, "end of stream"))
        if kind == "hello":
            return self._error("bad_message", f"this connection's stream {sid!r} is already open: one hello each")
        return self._error("unknown_type", f"unknown message type {kind[:40]!r}")

    def connection_lost(self) -> None:
        """The connection ended (any reason): close the stream; its queued audio goes with it."""
        if self.stream_id is not None and self.state != "closed_stream":
            self.engine.close_stream(self.stream_id)
            self.owners.release(self.stream_id, self.key)
        self.state = "closed_stream"
        self.closed = True

    # ------------------------------------------------------------------ internals
    @property
    def _sid(self) -> str:
        """The stream, opened by the hello (every other message is handled only after it)."""
        if self.stream_id is None:
            raise RuntimeError("no stream before the hello")
        return self.stream_id

    @property
    def _conv(self) -> PcmConverter:
        """The input converter, made by the hello with the stream."""
        if self.converter is None:
            raise RuntimeError("no audio format before the hello")
        return self.converter

    def _hello(self, message: str | bytes | bytearray | memoryview, now_ns: int) -> list[Action]:
        try:
            if isinstance(message, (bytes, bytearray, memoryview)):
                raise ValueError("the first message must be a JSON text hello, not binary audio")
            try:
                hello = parse_control(message, self.cfg.max_control_bytes)
            except ProtocolError as exc:
                raise ValueError(str(exc)) from None
            if hello["type"] != "hello":
                raise ValueError(
                    'the first message must be a JSON hello: {"type": "hello", "sample_rate_hz": '
                    '48000, "channels": 1, "dtype": "int16"}'
                )
            v = hello.get("v", PROTOCOL_VERSION)
            if isinstance(v, bool) or v != PROTOCOL_VERSION:
                raise ValueError(f"unsupported protocol version {str(v)[:20]!r} (server speaks {PROTOCOL_VERSION})")
            fmt = parse_pcm_format(hello)
            ref = hello.get("reference_face")
            if ref is not None:
                ref = reference_face_from_points(ref, int(self.engine.contract.num_landmarks))
            subscribe = hello.get("subscribe")
            sub_fmt = None if subscribe in (None, False, "none") else parse_format(subscribe, "json")
            every_frame = hello.get("every_frame", False)
            if not isinstance(every_frame, bool) or (every_frame and sub_fmt is None):
                raise ValueError("'every_frame' must be true or false, and needs 'subscribe'")
            sid = hello.get("stream")
            if sid is not None:
                sid = parse_stream_id(sid)
                if _has_stream(self.engine, sid):
                    raise ValueError(f"stream {sid!r} is already open")
        except (ValueError, TypeError, ReferenceFaceError) as exc:  # ProtocolError is a ValueError
            self.state = "closed"
            return self._fatal("bad_hello", str(exc), CLOSE_POLICY)
        info = self.info() if callable(self.info) else self.info  # built before the stream opens, as a hello was
        try:
            session = self.engine.open_stream(sid, ref, source=self.source)
        except ValueError as exc:  # a bad id or reference face the engine refuses
            self.state = "closed"
            return self._fatal("bad_hello", str(exc), CLOSE_POLICY)
        except Exception as exc:  # EngineFullError
            self.state = "closed"
            return self._fatal("unavailable", str(exc), CLOSE_TRY_AGAIN)
        self.stream_id = sid = session.stream_id
        self.owners.claim(sid, self.key)
        self.subscribe = sub_fmt
        self.converter = PcmConverter(fmt, self.engine.sample_rate_hz, self.cfg.resample_quality, strict=True)
        self.max_message_bytes = self.cfg.audio_message_limit(fmt)
        self.state = "open"
        self._last_audio_ns = now_ns
        actions: list[Action] = []
        if sub_fmt is not None:
            actions.append(Subscribe(frozenset([sid]), sub_fmt, every_frame))
        actions.append(
            Send(
                json.dumps(
                    {
                        **info,
                        "format": sub_fmt,
                        "type": "ready",
                        "v": PROTOCOL_VERSION,
                        "stream": sid,
                        "epoch": 0,
                        "input_format": fmt.to_json(),
                        "max_message_bytes": self.max_message_bytes,
                    }
                )
            )
        )
        return actions

    def _audio(self, data: bytes | bytearray | memoryview, now_ns: int) -> list[Action]:
        sid = self._sid
        if not len(data):
            return self._error("empty_chunk", "empty audio chunk ignored")
        try:
            self._push(self._conv.convert_bytes(data), now_ns)
        except CoreError as exc:  # NaN/inf, partial sample frames, overload: restart cleanly
            self._conv.reset()
            epoch = self.engine.reset(sid)
            self.engine.note_error(sid, str(exc))
            code = "bad_audio" if isinstance(exc, AudioChunkError) else "overload"
            return self._error(code, f"{exc}; the stream was reset", stream=sid, epoch=epoch)
        self._last_audio_ns = now_ns
        return [AwaitCapacity(sid, self.cfg.audio_max_pending_s)]

    def _push(self, samples: np.ndarray, now_ns: int) -> None:
        if samples.size:
            self.engine.push_audio(self._sid, samples, now_ns or None)

    def _config(self, msg: dict[str, Any]) -> list[Action]:
        try:
            fmt = parse_pcm_format(msg, self._conv.fmt)
        except (ValueError, TypeError) as exc:
            return self._error("bad_format", f"{exc}; keeping {self._conv.fmt.to_json()}")
        self._push(self._conv.set_format(fmt), 0)
        self.max_message_bytes = self.cfg.audio_message_limit(fmt)
        return [Send(reply("config_ok", input_format=fmt.to_json(), max_message_bytes=self.max_message_bytes))]

    def _finish(self, last: Send, close: Close) -> list[Action]:
        """Flush the stream (every received sample's frame, the look-ahead tail included), let its frames
        drain to this connection, then `last` and `close`."""
        self.state = "ending"
        self.closed = True
        self._push(self._conv.finish(), 0)  # the resampler's delayed tail
        self.engine.flush(self._sid)
        return [AwaitDrained(self._sid), last, close]
