"""Outputs without WebSockets: wire formats, the latest-frame-wins queue, VMC and raw OSC over real UDP."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage

from stream_engine.clock import ManualClock
from stream_engine.core import EngineCore, FrameTimings, LandmarkFrame
from stream_engine.outputs import parse_target
from stream_engine.outputs.latest import LatestFrameQueue
from stream_engine.outputs.osc import OscConfig, OscSink
from stream_engine.outputs.serializers import decode_binary, encode_binary, encode_binary_many, encode_json
from stream_engine.outputs.vmc import VmcConfig, VmcSink
from stream_engine.signals import SIGNAL_NAMES, SignalConfig, SignalExtractor

from fakes import NEUTRAL_FACE, FakeRunner, project_face, tone


def make_frame(stream="s", seq=0, epoch=0, publish_ns=0, yaw=12.0, open_mm=15.0, with_signals=True) -> LandmarkFrame:
    lm = project_face(yaw, 0, 0, open_mm)
    signals = None
    if with_signals:
        ex = SignalExtractor(SignalConfig(blink_mode="off"), reference_face=NEUTRAL_FACE)
        ex.update(NEUTRAL_FACE, 0.0, -20.0)
        signals = ex.update(lm, 0.04, -20.0)
    return LandmarkFrame(
        stream,
        seq,
        epoch,
        seq,
        seq * 40_000_000,
        lm,
        -20.0,
        -18.0,
        FrameTimings(1_000, 2_000, 3_000, publish_ns),
        signals,
    )


def osc_tags(message: OscMessage) -> str:
    """The OSC type-tag string of a message, read from its raw bytes."""
    data = message.dgram
    start = data.index(b",", len(message.address))
    return data[start + 1 : data.index(b"\0", start)].decode()


def udp_receiver() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    return sock


def receive_messages(sock: socket.socket, datagrams: int) -> list[OscMessage]:
    out = []
    for _ in range(datagrams):
        data, _ = sock.recvfrom(65536)
        bundle = OscBundle(data)
        out += [bundle.content(i) for i in range(bundle.num_contents)]
    return out


def test_binary_and_json_formats_round_trip():
    frame = make_frame(stream="alice-é", seq=7, publish_ns=4_000)
    data = encode_binary(frame, sent_ns=5_000)
    assert data[:4] == b"MSLM" and data[4] == 1 and len(data) < 800
    back = decode_binary(data)
    assert (back["stream"], back["seq"], back["index"], back["pts_ms"]) == ("alice-é", 7, 7, 280.0)
    np.testing.assert_array_equal(back["landmarks"], frame.landmarks)
    assert back["t"] == {
        "audio_ready_ns": 1000,
        "infer_start_ns": 2000,
        "infer_end_ns": 3000,
        "publish_ns": 4000,
        "sent_ns": 5000,
    }
    assert list(back["signal_vector"]) == list(SIGNAL_NAMES)
    assert back["signal_vector"]["yaw_deg"] == pytest.approx(frame.signals.head.yaw_deg, abs=1e-4)
    js = json.loads(encode_json(frame, sent_ns=5_000))
    assert js["type"] == "frame" and js["v"] == 1 and js["seq"] == 7 and js["t"]["sent_ns"] == 5000
    assert np.allclose(js["landmarks"], frame.landmarks, atol=1e-5)
    assert set(js["signals"]) == {"mouth_open", "visemes", "blink", "head", "audio_dbfs", "silent", "blendshapes"}
    with pytest.raises(ValueError, match="magic"):
        decode_binary(b"XXXX" + data[4:])
    with pytest.raises(ValueError, match="truncated"):
        decode_binary(data[:-4])
    plain = decode_binary(encode_binary(make_frame(with_signals=False)))
    assert "signal_vector" not in plain


def test_latest_frame_queue_drops_the_oldest_frames_of_a_stream_only():
    clock = ManualClock(10_000_000_000)
    q = LatestFrameQueue(max_frames_per_stream=2, max_age_ms=100, clock=clock)
    for i in range(5):
        q.put(make_frame("a", seq=i, publish_ns=clock.now_ns(), with_signals=False))
    q.put(make_frame("b", seq=0, publish_ns=clock.now_ns(), with_signals=False))
    q.put_message({"type": "stream", "event": "reset"})
    assert q.dropped == 3
    assert q.get_nowait()["type"] == "stream"  # messages first
    assert [(f.stream_id, f.seq) for f in (q.get_nowait(), q.get_nowait(), q.get_nowait())] == [
        ("a", 3),
        ("a", 4),
        ("b", 0),
    ]
    assert q.get_nowait() is None
    q.put(make_frame("a", seq=9, publish_ns=clock.now_ns(), with_signals=False))
    clock.advance(200_000_000)  # older than max_age: stale, dropped on the way out
    assert q.get_nowait() is None and q.dropped == 4
    q.put(make_frame("a", seq=10, epoch=0, publish_ns=clock.now_ns(), with_signals=False))
    q.put(make_frame("a", seq=11, epoch=1, publish_ns=clock.now_ns(), with_signals=False))
    assert q.discard_stream("a", before_epoch=1) == 1
    assert q.get_nowait().epoch == 1


def test_vmc_sends_float_blendshapes_apply_and_a_head_quaternion():
    rx = udp_receiver()
    sink = VmcSink(VmcConfig(targets=(f"127.0.0.1:{rx.getsockname()[1]}",)))
    frame = make_frame()
    sink.send_frames([make_frame(seq=0, yaw=0.0), frame])  # only the newest frame is sent
    messages = receive_messages(rx, 2)
    addresses = [m.address for m in messages]
    assert addresses[0] == "/VMC/Ext/Bone/Pos" and addresses[-1] == "/VMC/Ext/Blend/Apply"
    bone = messages[0]
    assert bone.params[0] == "Head" and osc_tags(bone) == "sfffffff"
    q = bone.params[4:]
    assert sum(v * v for v in q) == pytest.approx(1.0, abs=1e-5) and abs(q[1]) > 0.05  # yawed head
    blends = {m.params[0]: m.params[1] for m in messages if m.address == "/VMC/Ext/Blend/Val"}
    assert set(blends) == {"A", "I", "U", "E", "O", "Blink"}
    for m in messages:
        tags = osc_tags(m)
        assert set(tags) <= {"s", "f"}, (m.address, tags)  # every value a float; never an int
        assert all(type(p) in (str, float) for p in m.params)
    assert blends["A"] == pytest.approx(frame.signals.visemes["A"], abs=1e-6) and blends["A"] > 0
    sink.stream_event({"type": "stream", "event": "reset", "stream": "s", "epoch": 1})  # barge-in: neutral now
    neutral = receive_messages(rx, 2)
    assert all(m.params[1] == 0.0 for m in neutral if m.address == "/VMC/Ext/Blend/Val")
    rx.close()


def test_vmc_names_targets_and_stream_choice_are_configurable():
    rx1, rx2 = udp_receiver(), udp_receiver()
    cfg = VmcConfig(
        targets=tuple(f"127.0.0.1:{r.getsockname()[1]}" for r in (rx1, rx2)),
        blend_names="vrm1",
        stream="bob",
        head_bone="Neck",
    )
    sink = VmcSink(cfg)
    sink.send_frames([make_frame("alice")])  # not the driving stream: nothing sent
    sink.send_frames([make_frame("bob")])
    for rx in (rx1, rx2):
        messages = receive_messages(rx, 2)
        assert messages[0].params[0] == "Neck"
        assert {m.params[0] for m in messages if m.address == "/VMC/Ext/Blend/Val"} == {
            "aa",
            "ih",
            "ou",
            "ee",
            "oh",
            "blink",
        }
        rx.close()
    assert VmcConfig().targets == ("127.0.0.1:39539",)
    with pytest.raises(ValueError, match="host:port"):
        VmcConfig(targets=("nowhere",))
    with pytest.raises(ValueError, match="unknown VMC blend"):
        VmcConfig(blend_names={"smile": "Joy"})


def test_osc_sends_raw_landmarks_and_signals():
    rx = udp_receiver()
    sink = OscSink(OscConfig(enabled=True, targets=(f"127.0.0.1:{rx.getsockname()[1]}",)))
    frame = make_frame(seq=3, publish_ns=2_500_000)
    sink.send_frames([frame])
    messages = {m.address: m for m in receive_messages(rx, 1)}
    lm = messages["/msync/frame"]
    assert lm.params[:2] == ["s", 3] and osc_tags(lm) == "sif" + "f" * 136
    np.testing.assert_allclose(lm.params[3:], frame.landmarks.reshape(-1), atol=1e-6)
    assert len(messages["/msync/signals"].params) == 1 + len(SIGNAL_NAMES)
    assert messages["/msync/latency"].params[1] == pytest.approx(2.499, abs=1e-3)
    rx.close()


def test_udp_send_to_a_closed_port_never_raises():
    sink = VmcSink(VmcConfig(targets=("127.0.0.1:9",)))  # discard port: nothing listens
    for _ in range(5):
        sink.send_frames([make_frame()])


def test_parse_target():
    assert parse_target("127.0.0.1:39539") == ("127.0.0.1", 39539)
    assert parse_target(":9000") == ("127.0.0.1", 9000)
    assert parse_target("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ValueError):
        parse_target("host:99999")


def test_frames_from_the_core_serialise():
    core = EngineCore(FakeRunner(lookahead_frames=1))
    core.open_stream("x")
    core.push_audio("x", tone(640 * 3), arrival_ns=0)
    for frame in core.process():
        assert decode_binary(encode_binary(frame))["index"] == frame.index
        assert json.loads(encode_json(frame))["index"] == frame.index


def test_binary_frames_serialised_together_are_the_bytes_of_each_alone():
    """`encode_binary_many` (one step's frames at once) gives exactly `encode_binary` of every frame: with and
    without signals, silent, stalled, any stream id (long, non-ASCII), float64 landmarks, and frames of another
    landmark shape among them."""
    import dataclasses

    frames = [make_frame(stream=f"s{i}", seq=i, epoch=i % 3, publish_ns=5_000 + i, yaw=3.0 * i) for i in range(5)]
    frames.append(make_frame(stream="bare", seq=7, with_signals=False))
    silent = dataclasses.replace(frames[0].signals, silent=True)
    frames.append(dataclasses.replace(frames[1], stream_id="stumm-äöü-🙂", signals=silent, stalled=True))
    frames.append(dataclasses.replace(frames[2], stream_id="x" * 300))  # longer than the header's 255 bytes
    frames.append(dataclasses.replace(frames[3], landmarks=frames[3].landmarks.astype(np.float64), seq=2**33))
    for sent_ns in (0, 1_234_567_890_123):
        assert encode_binary_many(frames, sent_ns) == [encode_binary(f, sent_ns) for f in frames]
        assert encode_binary_many(frames[5:6], sent_ns) == [encode_binary(frames[5], sent_ns)]
    odd = dataclasses.replace(frames[4], landmarks=np.zeros((5, 3), np.float32))
    mixed = [frames[0], odd, frames[5]]
    assert encode_binary_many(mixed, 9) == [encode_binary(f, 9) for f in mixed]
    assert encode_binary_many([]) == []
    assert decode_binary(encode_binary_many(frames)[6])["stream"] == "stumm-äöü-🙂"


def test_a_target_whose_host_does_not_resolve_is_a_clear_error_not_a_traceback():
    """`--vmc` / `--osc` with a host name that does not resolve (`.invalid` never does, RFC 2606): the sinks
    refuse it with the target in the message, which `msync stream` prints as one line (exit status 2)."""
    with pytest.raises(ValueError, match="cannot resolve 'nosuchhost.invalid'"):
        VmcSink(VmcConfig(targets=("nosuchhost.invalid:39539",)))
    with pytest.raises(ValueError, match="bad target 'nosuch.invalid:9000'"):
        OscSink(OscConfig(enabled=True, targets=("nosuch.invalid:9000",)))


def test_vmc_never_sends_a_negative_zero_weight():
    """A -0.0 from the viseme arithmetic goes out as 0.0 (a receiver may print "-0" or treat the sign)."""
    import dataclasses
    import math

    from stream_engine.outputs.vmc import vmc_packets
    from stream_engine.signals import NEUTRAL_SIGNALS

    sig = dataclasses.replace(NEUTRAL_SIGNALS, visemes={**NEUTRAL_SIGNALS.visemes, "A": -0.0}, blink=-0.0)
    blend = OscBundle(vmc_packets(sig, VmcConfig())[1].dgram)
    values = [m.params[1] for m in blend if m.address == "/VMC/Ext/Blend/Val"]
    assert values and all(math.copysign(1.0, v) == 1.0 for v in values)
