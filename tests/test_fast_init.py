"""`fast_init.maker` builds the same frozen objects as the dataclasses' own constructors, and refuses classes it
cannot build faithfully."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stream_engine.core import FrameTimings, LandmarkFrame
from stream_engine.fast_init import maker
from stream_engine.signals import HeadPose, SignalConfig, Signals


def test_made_objects_equal_constructed_ones_and_stay_frozen():
    lm = np.arange(136, dtype=np.float32).reshape(68, 2)
    timings = maker(FrameTimings)(1, 2, 3, 4, 5)
    assert timings == FrameTimings(1, 2, 3, 4, 5) and type(timings) is FrameTimings
    head = maker(HeadPose)(1.5, -2.0, 0.25)
    assert head == HeadPose(1.5, -2.0, 0.25)
    blend = np.zeros(52, dtype=np.float32)
    sig = maker(Signals)(0.3, dict.fromkeys("AIUEO", 0.06), 0.0, head, -20.0, False, blend)
    want = Signals(0.3, dict.fromkeys("AIUEO", 0.06), 0.0, head, -20.0, False, blend)
    assert sig.as_vector() == want.as_vector() and sig.blendshapes is blend and sig.visemes == want.visemes
    frame = maker(LandmarkFrame)("s1", 7, 1, 3, 120, lm, -20.0, -18.0, timings, sig, True, None)
    ref = LandmarkFrame("s1", 7, 1, 3, 120, lm, -20.0, -18.0, timings, sig, True)
    for f in dataclasses.fields(LandmarkFrame):
        assert getattr(frame, f.name) is getattr(ref, f.name)
    for obj, name in ((timings, "publish_ns"), (head, "yaw_deg"), (sig, "blink"), (frame, "seq")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, 0)
    with pytest.raises(TypeError):
        maker(FrameTimings)(1, 2, 3)  # every field, positionally


def test_refuses_what_it_cannot_build():
    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Hidden:
        a: int
        b: int = dataclasses.field(default=0, init=False)

    for cls in (Mutable, NoSlots, Hidden, SignalConfig):  # SignalConfig: not slotted, validates in __post_init__
        with pytest.raises(ValueError):
            maker(cls)
