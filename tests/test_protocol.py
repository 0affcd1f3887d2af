"""The WebSocket wire protocol as state machines (stream_engine/protocol.py): message in, actions out, no sockets.

The engine is a real `Engine` on the fake runner, never started: its stream methods are synchronous, and
`core.process()` runs the steps so that frame counts can be checked.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from stream_engine.engine import Engine, EngineConfig
from stream_engine.inputs import PcmFormat
from stream_engine.outputs.websocket import SendWindow
from stream_engine.protocol import (
    AudioProtocol,
    AwaitCapacity,
    AwaitDrained,
    Close,
    FramesProtocol,
    ProtocolConfig,
    ProtocolError,
    Send,
    StreamOwners,
    Subscribe,
    parse_control,
)

from fakes import FakeRunner, tone

SPF = 640
S = 1_000_000_000  # ns


def make(max_streams: int = 8, lookahead: int = 2, **cfg):
    engine = Engine(FakeRunner(lookahead_frames=lookahead), EngineConfig(max_streams=max_streams))
    return engine, ProtocolConfig(**cfg), StreamOwners()


def sent(actions) -> list[dict]:
    return [json.loads(a.data) for a in actions if isinstance(a, Send)]


def codes(actions) -> list[str]:
    return [m.get("code") or m["type"] for m in sent(actions)]


def closes(actions) -> list[int]:
    return [a.code for a in actions if isinstance(a, Close)]


def int16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def open_audio(engine, cfg, owners, now_ns: int = 0, **hello) -> AudioProtocol:
    proto = AudioProtocol(engine, cfg, owners, now_ns=now_ns)
    actions = proto.receive(json.dumps({"type": "hello", **hello}), now_ns)
    assert proto.state == "open" and codes(actions)[-1] == "ready", actions
    return proto


HUGE_INT = '{"type":"ping","n":' + "1" * 5000 + "}"
DEEP = "[" * 100000 + "]" * 100000


@pytest.mark.parametrize(
    "hello",
    [
        '{"type":"hello","dtype":[]}',
        '{"type":"hello","dtype":{}}',
        '{"type":"hello","subscribe":5}',
        '{"type":"hello","subscribe":"xml"}',
        '{"type":"hello","stream":""}',
        '{"type":"hello","stream":7}',
        '{"type":"hello","stream":"' + "x" * 200 + '"}',
        '{"type":"hello","v":9}',
        '{"type":"hello","v":true}',
        '{"type":"hello","sample_rate_hz":"48000"}',
        '{"type":"hello","channels":[2]}',
        '{"type":"hello","reference_face":[[0,0]]}',
        '{"type":"hello","reference_face":"face"}',
        '{"type":"audio"}',
        "not json",
        "[1,2]",
        HUGE_INT,
        DEEP,
        b"\0\0",
    ],
)
def test_every_bad_hello_is_bad_hello_and_close_1008(hello):
    engine, cfg, owners = make()
    proto = AudioProtocol(engine, cfg, owners)
    actions = proto.receive(hello, 0)
    msgs = sent(actions)
    assert [m["code"] for m in msgs] == ["bad_hello"] and msgs[0]["fatal"] and closes(actions) == [1008]
    assert dict(engine.sessions) == {} and proto.receive('{"type":"hello"}', 0) == []


def test_a_good_hello_opens_the_stream_and_claims_it():
    engine, cfg, owners = make()
    proto = AudioProtocol(engine, cfg, owners, info={"protocol": "msync-audio", "type": "hello"})
    actions = proto.receive(
        json.dumps({"type": "hello", "stream": "alice", "sample_rate_hz": 48000, "channels": 2, "subscribe": "binary"}),
        0,
    )
    assert actions[0] == Subscribe(frozenset({"alice"}), "binary")
    ready = sent(actions)[0]
    assert ready["type"] == "ready" and ready["stream"] == "alice" and ready["protocol"] == "msync-audio"
    assert ready["input_format"] == {"sample_rate_hz": 48000, "channels": 2, "dtype": "int16"}
    assert owners.owner_of("alice") is proto.key and "alice" in engine.sessions
    # 2 s of 48 kHz stereo int16 is the largest audio message (bounded memory per connection)
    assert proto.max_message_bytes == ready["max_message_bytes"] == 2 * 48000 * 4
    dup = AudioProtocol(engine, cfg, owners)
    assert codes(dup.receive(json.dumps({"type": "hello", "stream": "alice"}), 0)) == ["bad_hello"]


def test_a_full_engine_answers_unavailable_1013():
    engine, cfg, owners = make(max_streams=1)
    open_audio(engine, cfg, owners)
    proto = AudioProtocol(engine, cfg, owners)
    actions = proto.receive('{"type":"hello"}', 0)
    assert codes(actions) == ["unavailable"] and closes(actions) == [1013]


def test_hello_timeout_is_a_deadline_not_a_sleep():
    engine, cfg, owners = make(hello_timeout_s=2.0)
    proto = AudioProtocol(engine, cfg, owners, now_ns=5 * S)
    assert proto.deadline_ns == 7 * S and proto.on_timer(6 * S) == []
    actions = proto.on_timer(7 * S)
    assert codes(actions) == ["hello_timeout"] and closes(actions) == [1008] and proto.deadline_ns is None


def test_audio_chunks_apply_back_pressure_and_bad_chunks_reset_the_stream():
    engine, cfg, owners = make(audio_max_pending_s=1.5)
    proto = open_audio(engine, cfg, owners, dtype="float32", stream="s")
    assert proto.receive(np.asarray(tone(SPF), "<f4").tobytes(), 1) == [AwaitCapacity("s", 1.5)]
    assert codes(proto.receive(b"", 2)) == ["empty_chunk"]
    nan = np.asarray(tone(SPF), "<f4")
    nan[5] = np.nan
    bad = sent(proto.receive(nan.tobytes(), 3))[0]
    assert bad["code"] == "bad_audio" and bad["epoch"] == 1 and not bad["fatal"]
    assert codes(proto.receive(b"\0\0\0", 4)) == ["bad_audio"]  # not a whole float32 sample
    # finite float PCM far beyond [-1, 1] is clipped (before: a numpy overflow warning in the server's log)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert proto.receive(np.full(SPF, 1e30, "<f4").tobytes(), 5) == [AwaitCapacity("s", 1.5)]
    # a second hello on an open /audio connection says what is wrong (not fatal)
    again = sent(proto.receive('{"type":"hello"}', 6))[0]
    assert again["code"] == "bad_message" and "already open" in again["message"] and not again["fatal"]


def test_config_is_validated_and_moves_the_message_cap():
    engine, cfg, owners = make()
    proto = open_audio(engine, cfg, owners)
    for bad in (
        '{"type":"config","dtype":[]}',
        '{"type":"config","sample_rate_hz":1}',
        '{"type":"config","channels":"2"}',
    ):
        reply = sent(proto.receive(bad, 0))[0]
        assert reply["code"] == "bad_format" and not reply["fatal"] and "keeping" in reply["message"]
    ok = sent(proto.receive('{"type":"config","sample_rate_hz":96000,"channels":4,"dtype":"float32"}', 0))[0]
    assert ok["type"] == "config_ok" and proto.max_message_bytes == min(1 << 20, 2 * 96000 * 16)
    assert ProtocolConfig().audio_message_limit(PcmFormat(8000, 1, "int16")) == 64 * 1024  # the floor


@pytest.mark.parametrize("num_samples", [1, SPF, 12582, 16000 + 17])
def test_end_emits_every_received_samples_frame_with_the_lookahead_tail(num_samples):
    """WS /audio `end`: ceil(N / 640) frames, the last L included (../shared/cases/cpp-cli-drops-last-frames)."""
    engine, cfg, owners = make(lookahead=2)
    proto = open_audio(engine, cfg, owners, stream="e")
    assert isinstance(proto.receive(int16(tone(num_samples)), 1)[0], AwaitCapacity)
    actions = proto.receive('{"type":"end"}', 2)
    assert actions[0] == AwaitDrained("e") and codes(actions) == ["ended"] and closes(actions) == [1000]
    frames = engine.core.process()
    assert len(frames) == -(-num_samples // SPF) and [f.index for f in frames] == list(range(len(frames)))
    assert proto.receive("{}", 3) == []  # nothing more is read


def test_idle_stream_is_flushed_then_closed_and_its_id_is_free_at_once():
    """No audio for `idle_timeout_s`: the tail frames go out, `idle_timeout`, close 1000; `connection_lost`
    closes the stream so the id can be opened again right away."""
    engine, cfg, owners = make(idle_timeout_s=3.0)
    proto = open_audio(engine, cfg, owners, now_ns=0, stream="mic")
    proto.receive(int16(tone(SPF * 5 + 100)), 1 * S)
    proto.receive('{"type":"ping"}', 2 * S)  # control messages are not audio: they do not keep it alive
    assert proto.deadline_ns == 4 * S and proto.on_timer(int(3.9 * S)) == []
    actions = proto.on_timer(4 * S)
    assert actions[0] == AwaitDrained("mic") and codes(actions) == ["idle_timeout"] and closes(actions) == [1000]
    assert len(engine.core.process()) == 6
    proto.connection_lost()
    assert "mic" not in engine.sessions and owners.owner_of("mic") is None
    open_audio(engine, cfg, owners, stream="mic")


def test_connection_lost_drops_the_stream_and_its_queued_audio():
    engine, cfg, owners = make()
    proto = open_audio(engine, cfg, owners, stream="gone")
    proto.receive(int16(tone(16000)), 1)
    assert engine.core.pending_samples("gone") == 16000
    proto.connection_lost()
    assert not engine.core.has_stream("gone") and engine.core.process() == []


def test_only_the_owner_or_the_admin_controls_a_stream():
    engine, cfg, owners = make()
    audio = open_audio(engine, cfg, owners, stream="victim")
    engine.open_stream("main")  # the local input: nobody's over WebSocket
    viewer = FramesProtocol(engine, cfg, owners)
    admin = FramesProtocol(engine, cfg, owners, admin=True)
    for target in ("victim", "main"):
        for kind in ("reset", "flush"):
            reply = sent(viewer.receive(json.dumps({"type": kind, "stream": target}), 0))[0]
            assert reply["code"] == "forbidden" and not reply["fatal"]
    assert engine.core.epoch("victim") == 0
    assert codes(viewer.receive('{"type":"reset","stream":"ghost"}', 0)) == ["unknown_stream"]
    assert sent(admin.receive('{"type":"reset","stream":"victim"}', 0))[0] == {
        "type": "reset_ok",
        "v": 1,
        "stream": "victim",
        "epoch": 1,
    }
    assert codes(audio.receive('{"type":"reset","stream":"main"}', 0)) == ["forbidden"]
    assert sent(audio.receive('{"type":"reset"}', 0))[0]["epoch"] == 2  # its own stream


@pytest.mark.parametrize(
    "message,code",
    [
        ("{nope", "bad_json"),
        (HUGE_INT, "bad_json"),
        (DEEP, "bad_json"),
        ("x" * 70000, "bad_json"),
        ("[1, 2]", "bad_message"),
        ('{"type": 5}', "bad_message"),
        ('{"type":"dance"}', "unknown_type"),
        ('{"type":"subscribe","format":5}', "bad_message"),
        ('{"type":"subscribe","streams":"a"}', "bad_message"),
        ('{"type":"subscribe","streams":[1]}', "bad_message"),
        ('{"type":"reset","stream":[]}', "bad_message"),
        ('{"type":"reset"}', "bad_message"),
        (b"\x00", "unexpected_binary"),
    ],
)
def test_frames_errors_are_documented_codes_and_not_fatal(message, code):
    engine, cfg, owners = make()
    proto = FramesProtocol(engine, cfg, owners)
    actions = proto.receive(message, 0)
    assert codes(actions) == [code] and not sent(actions)[0]["fatal"] and closes(actions) == []


def test_frames_subscribe_ping_and_the_error_cap():
    engine, cfg, owners = make(max_client_errors=5)
    proto = FramesProtocol(engine, cfg, owners)
    actions = proto.receive('{"type":"subscribe","streams":["a","b"],"format":"BINARY"}', 0)
    assert actions[0] == Subscribe(frozenset({"a", "b"}), "binary") and codes(actions) == ["subscribed"]
    assert codes(proto.receive('{"type":"ping"}', 0)) == ["pong"]
    for _ in range(4):
        assert codes(proto.receive("nope", 0)) == ["bad_json"]
    last = proto.receive("nope", 0)
    assert codes(last) == ["bad_json", "too_many_errors"] and closes(last) == [1008]
    assert proto.receive('{"type":"ping"}', 0) == []


def test_parse_control_never_raises_anything_but_protocol_error():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        text = "".join(chr(c) for c in rng.integers(0, 0x2FF, rng.integers(0, 40)))
        try:
            parse_control(text, 1024)
        except ProtocolError as exc:
            assert exc.code in ("bad_json", "bad_message")


def test_send_window_acknowledges_up_to_the_ping():
    w = SendWindow(3)  # pings once 2 frames (half the window, rounded up) are unacknowledged
    assert w.can_send() and not w.needs_ping()
    w.on_sent()
    assert not w.needs_ping()
    w.on_sent()
    assert w.needs_ping()
    w.on_ping_sent()
    w.on_sent()
    assert not w.can_send() and not w.needs_ping()  # 3 in flight, one ping outstanding
    w.on_pong()  # the first two frames were read
    assert w.can_send() and not w.needs_ping() and w.sent - w.acked == 1


def test_send_window_pings_every_half_window_and_on_request():
    w = SendWindow(8)
    pings = 0
    for _ in range(40):  # a reader that keeps up: its pong is back before the next frame
        assert w.can_send()
        w.on_sent()
        if w.needs_ping():
            w.on_ping_sent()
            w.on_pong(0.001)
            pings += 1
    assert pings == 10  # one per 4 frames, not one per frame
    w.on_sent()  # one frame unacknowledged: below half the window, no ping...
    assert not w.needs_ping()
    w.want_ack()  # ...until someone must know it was read
    assert w.needs_ping()
    w.on_ping_sent()
    assert not w.needs_ping() and not w.ack_wanted
    w.on_pong(0.001)
    assert w.sent == w.acked and not w.needs_ping()
    one = SendWindow(8, target_s=0.2)
    for _ in range(3):
        one.on_sent()
        one.on_ping_sent()
        one.on_pong(1.0)  # late pongs: 8 -> 4 -> 2 -> 1
    one.on_sent()
    assert one.limit == 1 and one.ack_at == 1 and one.needs_ping()  # a window of one pings behind every frame


def test_message_rate_paces_a_flood_after_its_burst():
    from stream_engine.protocol import MessageRate

    rate = MessageRate(per_s=100.0, burst=3)
    assert [rate.take(0) for _ in range(3)] == [0, 0, 0]
    assert rate.take(0) == 10_000_000  # one message over: wait 10 ms
    assert rate.take(10_000_000) == 10_000_000  # still in debt at the sustained rate
    assert rate.take(10 * S) == 0  # refilled (capped at the burst)
    assert MessageRate(per_s=0, burst=1).take(0) == 0  # 0 = unpaced


def test_send_window_shrinks_for_a_late_reader_and_grows_back():
    w = SendWindow(8, target_s=0.2)
    for delay, expect in ((1.0, 4), (1.0, 2), (1.0, 1), (1.0, 1), (0.01, 2), (0.01, 3)):
        w.on_sent()
        w.on_ping_sent()
        w.on_pong(delay)
        assert w.limit == expect
    fixed = SendWindow(8)  # target 0: the window never moves
    fixed.on_pong(5.0)
    assert fixed.limit == 8
