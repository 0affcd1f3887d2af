"""One stream drives the VMC avatar: others never flip it, their resets/closes send nothing; rest pose at the end."""

from __future__ import annotations

import asyncio
import socket

import pytest
from pythonosc.osc_bundle import OscBundle

from stream_engine.core import FrameTimings, LandmarkFrame
from stream_engine.outputs.vmc import VmcConfig, VmcSink
from stream_engine.signals import SignalConfig, SignalExtractor

from fakes import NEUTRAL_FACE, project_face


def _frame(stream_id: str, mouth_mm: float, t: float) -> LandmarkFrame:
    ex = SignalExtractor(SignalConfig(blink_mode="off"), NEUTRAL_FACE)
    ex.update(project_face(0, 0, 0, 0.0), t - 0.04, -20.0)
    return LandmarkFrame(
        stream_id,
        0,
        0,
        0,
        int(t * 1e9),
        project_face(0, 0, 0, mouth_mm),
        -20.0,
        -20.0,
        FrameTimings(0, 0, 0),
        ex.update(project_face(0, 0, 0, mouth_mm), t, -20.0),
    )


@pytest.fixture()
def receiver():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def _mouths(sock) -> list[tuple[float, float]]:
    """(A, stream time) of every blend bundle received so far (time from the bone bundle before it)."""
    out, t = [], None
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return out
        for m in OscBundle(data):
            if m.address == "/VMC/Ext/T":
                t = m.params[0]
            if m.address == "/VMC/Ext/Blend/Val" and m.params[0] == "A":
                out.append((m.params[1], t))


def test_local_stream_drives_and_others_send_nothing(receiver):
    sink = VmcSink(VmcConfig(targets=(f"127.0.0.1:{receiver.getsockname()[1]}",)), local_stream="main")
    sink.send_frames([_frame("viewer-mic", 20.0, 5.0)])  # another stream first: it must not take the avatar
    sink.send_frames([_frame("main", 20.0, 1.0)])
    sink.send_frames([_frame("main", 20.0, 1.04), _frame("viewer-mic", 0.0, 5.04)])
    sink.stream_event({"event": "reset", "stream": "viewer-mic"})
    sink.stream_event({"event": "closed", "stream": "viewer-mic"})
    got = _mouths(receiver)
    assert len(got) == 2 and all(a > 0.3 for a, _ in got) and [t for _, t in got] == pytest.approx([1.0, 1.04])
    sink.stream_event({"event": "stalled", "stream": "main"})
    assert _mouths(receiver) == []  # a stall sends nothing by itself: the engine's silence-fed frames follow
    sink.stream_event({"event": "reset", "stream": "main"})
    assert [a for a, _ in _mouths(receiver)] == [0.0]  # the driver resets (barge-in): rest pose at once


def test_first_stream_latches_until_it_closes_then_the_rest_pose_and_aclose(receiver):
    sink = VmcSink(VmcConfig(targets=(f"127.0.0.1:{receiver.getsockname()[1]}",)))
    for i in range(5):  # two streams interleaved: only the first one's frames go out
        sink.send_frames([_frame("a", 20.0, 0.04 * i)])
        sink.send_frames([_frame("b", 0.0, 10 + 0.04 * i)])
    got = _mouths(receiver)
    assert len(got) == 5 and all(t < 1.0 for _, t in got)
    sink.stream_event({"event": "closed", "stream": "a"})
    assert [a for a, _ in _mouths(receiver)] == [0.0]
    sink.send_frames([_frame("b", 20.0, 11.0)])  # the driver is gone: the next stream takes over
    assert [t for _, t in _mouths(receiver)] == pytest.approx([11.0])
    asyncio.run(sink.aclose())
    assert [a for a, _ in _mouths(receiver)] == [0.0]  # left neutral when msync stops


def test_configured_stream_is_the_only_driver(receiver):
    sink = VmcSink(VmcConfig(targets=(f"127.0.0.1:{receiver.getsockname()[1]}",), stream="b"), local_stream="a")
    sink.send_frames([_frame("a", 20.0, 1.0)])
    sink.stream_event({"event": "closed", "stream": "a"})
    assert _mouths(receiver) == []
    sink.send_frames([_frame("b", 20.0, 2.0)])
    assert len(_mouths(receiver)) == 1


def test_stalled_frames_of_the_driver_are_followed_in_order(receiver):
    """Frames the engine makes from silence when the audio stops arriving (`stalled`) go out like any other, after
    the utterance's last real frames, so the mouth closes over them as WebSocket clients see it (no early rest pose
    on the `stalled` event that the last real frames would then undo)."""
    import dataclasses

    sink = VmcSink(VmcConfig(targets=(f"127.0.0.1:{receiver.getsockname()[1]}",)), local_stream="main")
    sink.send_frames([_frame("main", 20.0, 1.0)])
    sink.stream_event({"event": "stalled", "stream": "main"})
    closing = dataclasses.replace(_frame("main", 0.0, 1.04), stalled=True)
    sink.send_frames([closing])
    got = _mouths(receiver)
    assert [t for _, t in got] == pytest.approx([1.0, 1.04])
    assert got[0][0] > 0.3 and got[1][0] < 0.05  # the closed-mouth stalled frame, after the open real one
