"""The VMC protocol (OSC over UDP) for VTuber apps: visemes and blink as blendshapes, head as the Head bone.

Per frame, two datagrams to each target (the reference sender's layout, reference §1.1)::

    bundle: /VMC/Ext/Bone/Pos (s "Head") (f px py pz) (f qx qy qz qw)     [+ /VMC/Ext/T (f time_s)]
    bundle: /VMC/Ext/Blend/Val (s name) (f value)  x N  then  /VMC/Ext/Blend/Apply

Every value is a Python float with an explicit `f` tag: VMC receivers must ignore arguments of another type,
so an int 0 or a numpy scalar would silently do nothing. Names default to the VRM0 presets A I U E O Blink
(a map renames them, e.g. to VRM1's aa ih ou ee oh blink). Head angles are converted to a Unity quaternion
(`signals.euler_to_unity_quaternion`; signs: verify per app, `mirror` flips yaw and roll). VMC drives one
avatar: with several streams, `stream` picks the one that drives it (default: whichever produced the newest
frame). Default target 127.0.0.1:39539 (a Marionette: VSeeFace, VNyan, Warudo, EVMC4U...).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

from stream_engine.core import LandmarkFrame
from stream_engine.outputs import parse_target
from stream_engine.outputs.osc import UdpTargets, _bundle, _message
from stream_engine.signals import NEUTRAL_SIGNALS, VISEMES, Signals, euler_to_unity_quaternion

DEFAULT_BLEND_NAMES = {"A": "A", "I": "I", "U": "U", "E": "E", "O": "O", "blink": "Blink"}
VRM1_BLEND_NAMES = {"A": "aa", "I": "ih", "U": "ou", "E": "ee", "O": "oh", "blink": "blink"}


@dataclasses.dataclass(frozen=True)
class VmcConfig:
    """VMC output.

    Attributes:
        enabled: send at all.
        targets: "host:port" receivers (39539 = Marionette, 39540 = Performer by convention).
        blend_names: engine signal (A I U E O blink) -> blendshape name on the wire; "vrm1" or "vrm0" presets
            are accepted in config files.
        head_bone: bone name (Unity HumanBodyBones) carrying the head rotation.
        head_position_m: local position sent with the bone (relative to its parent; receivers that apply bone
            positions need your model's value).
        mirror: flip yaw and roll (selfie view).
        stream: the stream that drives the avatar; "" = the one with the newest frame.
        send_time: add /VMC/Ext/T with stream time in seconds.
    """

    enabled: bool = True
    targets: tuple[str, ...] = ("127.0.0.1:39539",)
    blend_names: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_BLEND_NAMES))
    head_bone: str = "Head"
    head_position_m: tuple[float, float, float] = (0.0, 0.1, 0.0)
    mirror: bool = False
    stream: str = ""
    send_time: bool = True

    def __post_init__(self) -> None:
        for t in self.targets:
            parse_target(t)
        if isinstance(self.blend_names, str):
            presets = {"vrm0": DEFAULT_BLEND_NAMES, "vrm1": VRM1_BLEND_NAMES}
            if self.blend_names not in presets:
                raise ValueError(f"blend_names preset must be vrm0 or vrm1, got {self.blend_names!r}")
            object.__setattr__(self, "blend_names", dict(presets[self.blend_names]))
        unknown = set(self.blend_names) - set(DEFAULT_BLEND_NAMES)
        if unknown:
            raise ValueError(f"unknown VMC blend keys {sorted(unknown)}; known: {sorted(DEFAULT_BLEND_NAMES)}")
        if len(self.head_position_m) != 3:
            raise ValueError("head_position_m must have 3 values")


def vmc_packets(signals: Signals, cfg: VmcConfig, time_s: float | None = None) -> list[bytes]:
    """The datagrams of one frame: [bone bundle, blend bundle]."""
    qx, qy, qz, qw = euler_to_unity_quaternion(signals.head, mirror=cfg.mirror)
    px, py, pz = (float(v) for v in cfg.head_position_m)
    bone = [_message("/VMC/Ext/Bone/Pos", [(cfg.head_bone, "s"), (px, "f"), (py, "f"), (pz, "f"),
                                            (qx, "f"), (qy, "f"), (qz, "f"), (qw, "f")])]
    if cfg.send_time and time_s is not None:
        bone.append(_message("/VMC/Ext/T", [(float(time_s), "f")]))
    values = {v: float(signals.visemes[v]) for v in VISEMES}
    values["blink"] = float(signals.blink)
    blend = [_message("/VMC/Ext/Blend/Val", [(name, "s"), (values[key], "f")])
             for key, name in cfg.blend_names.items()]
    blend.append(_message("/VMC/Ext/Blend/Apply", []))
    return [_bundle(bone), _bundle(blend)]


class VmcSink:
    """`FrameSink` driving one avatar over VMC."""

    def __init__(self, cfg: VmcConfig) -> None:
        self.cfg = cfg
        self.udp = UdpTargets(cfg.targets)
        self._t0 = time.monotonic()

    def send_frames(self, frames: Sequence[LandmarkFrame]) -> None:
        chosen = None
        for frame in frames:  # VMC carries a pose, not a history: only the newest frame matters
            if frame.signals is not None and (not self.cfg.stream or frame.stream_id == self.cfg.stream):
                chosen = frame
        if chosen is not None:
            for packet in vmc_packets(chosen.signals, self.cfg, chosen.pts_ns / 1e9):
                self.udp.send(packet)

    def stream_event(self, event: dict) -> None:
        """On reset/close of the driving stream, close the mouth and centre the head at once (barge-in)."""
        if event.get("event") in ("reset", "closed") and (not self.cfg.stream or event.get("stream") == self.cfg.stream):
            for packet in vmc_packets(NEUTRAL_SIGNALS, self.cfg, time.monotonic() - self._t0):
                self.udp.send(packet)

    async def aclose(self) -> None:
        self.udp.close()
