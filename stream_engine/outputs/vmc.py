"""The VMC protocol (OSC over UDP) for VTuber apps: visemes and blink as blendshapes, head as the Head bone.

Per frame, two datagrams to each target (the reference sender's layout, reference §1.1)::

    bundle: /VMC/Ext/Bone/Pos (s "Head") (f px py pz) (f qx qy qz qw)     [+ /VMC/Ext/T (f time_s)]
    bundle: /VMC/Ext/Blend/Val (s name) (f value)  x N  then  /VMC/Ext/Blend/Apply

Every value is a Python float with an explicit `f` tag: VMC receivers must ignore arguments of another type,
so an int 0 or a numpy scalar would silently do nothing. Names default to the VRM0 presets A I U E O Blink;
presets "vrm1" (aa ih ou ee oh blink) and "arkit" (the 52 ARKit blendshapes of `blendshapes.ARKIT_NAMES`, for
"perfect sync" avatars) or a map (engine key -> wire name; keys: A I U E O blink and ARKit names) choose others.
Head angles are converted to a Unity quaternion (`signals.euler_to_unity_quaternion`; signs: verify per app,
`mirror` flips yaw and roll).

VMC drives one avatar, so one stream drives it: `stream` if configured; otherwise the local input's stream
(`VmcSink(local_stream=...)`), else the first stream that produces a frame. The driver holds the avatar until
it closes; other streams' frames, resets and closes send nothing. On reset, stall or close of the driver, and
when the sink closes (end of a file, Ctrl-C), the rest pose (mouth closed, head centred) is sent.
Default target 127.0.0.1:39539 (a Marionette: VSeeFace, VNyan, Warudo, EVMC4U...).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stream_engine.blendshapes import ARKIT_INDEX, ARKIT_NAMES
from stream_engine.core import LandmarkFrame
from stream_engine.frame_batch import FrameBatch
from stream_engine.outputs import parse_target
from stream_engine.outputs.osc import UdpTargets, bundle, message
from stream_engine.signals import NEUTRAL_SIGNALS, VISEMES, Signals, euler_to_unity_quaternion

if TYPE_CHECKING:
    from pythonosc.osc_bundle import OscBundle

DEFAULT_BLEND_NAMES = {"A": "A", "I": "I", "U": "U", "E": "E", "O": "O", "blink": "Blink"}
VRM1_BLEND_NAMES = {"A": "aa", "I": "ih", "U": "ou", "E": "ee", "O": "oh", "blink": "blink"}
ARKIT_BLEND_NAMES = {name: name for name in ARKIT_NAMES}
BLEND_PRESETS = {"vrm0": DEFAULT_BLEND_NAMES, "vrm1": VRM1_BLEND_NAMES, "arkit": ARKIT_BLEND_NAMES}
#: Stream events after which the driving stream's avatar is put in the rest pose.
REST_EVENTS = ("reset", "closed")


#: (engine signal, wire name) pairs, in sending order.
BlendNames = tuple[tuple[str, str], ...]


def blend_pairs(names: str | Mapping[str, str] | Sequence[Sequence[str]]) -> BlendNames:
    """`VmcConfig.blend_names` from a preset name, a map engine signal -> wire name, or (signal, name) pairs.

    Raises:
        ValueError: an unknown preset, or a pair that is not two strings.
    """
    if isinstance(names, str):
        if names not in BLEND_PRESETS:
            raise ValueError(f"blend_names preset must be one of {sorted(BLEND_PRESETS)}, got {names!r}")
        return tuple(BLEND_PRESETS[names].items())
    items = names.items() if isinstance(names, Mapping) else names
    pairs = tuple(tuple(pair) for pair in items)
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(v, str) for v in pair):
            raise ValueError(f"blend_names entries must be (engine signal, wire name) string pairs, got {pair!r}")
    return tuple((key, name) for key, name in pairs)


@dataclasses.dataclass(frozen=True)
class VmcConfig:
    """VMC output.

    Attributes:
        enabled: send at all.
        targets: "host:port" receivers (39539 = Marionette, 39540 = Performer by convention).
        blend_names: (engine signal, blendshape name on the wire) pairs, in sending order; engine signals are
            A I U E O blink and the ARKit blendshape names. Also accepted (and stored as pairs, so the config
            stays hashable): a map engine signal -> wire name (a JSON/TOML table) and the presets "vrm0", "vrm1"
            and "arkit" (`--vmc-names`).
        head_bone: bone name (Unity HumanBodyBones) carrying the head rotation.
        head_position_m: local position sent with the bone (relative to its parent; receivers that apply bone
            positions need your model's value).
        mirror: flip yaw and roll (selfie view).
        stream: the stream that drives the avatar; "" = the local input's stream, else the first stream to
            produce a frame (held until it closes).
        send_time: add /VMC/Ext/T with stream time in seconds.
    """

    enabled: bool = True
    targets: tuple[str, ...] = ("127.0.0.1:39539",)
    blend_names: BlendNames = tuple(DEFAULT_BLEND_NAMES.items())
    head_bone: str = "Head"
    head_position_m: tuple[float, float, float] = (0.0, 0.1, 0.0)
    mirror: bool = False
    stream: str = ""
    send_time: bool = True

    def __post_init__(self) -> None:
        for t in self.targets:
            parse_target(t)
        object.__setattr__(self, "blend_names", blend_pairs(self.blend_names))
        unknown = {key for key, _ in self.blend_names} - set(DEFAULT_BLEND_NAMES) - set(ARKIT_NAMES)
        if unknown:
            raise ValueError(
                f"unknown VMC blend keys {sorted(unknown)}; known: {sorted(DEFAULT_BLEND_NAMES)} and the ARKit names"
            )
        if len(self.head_position_m) != 3:
            raise ValueError("head_position_m must have 3 values")


def vmc_packets(signals: Signals, cfg: VmcConfig, time_s: float | None = None) -> list[OscBundle]:
    """The datagrams of one frame: [bone bundle, blend bundle]."""
    qx, qy, qz, qw = euler_to_unity_quaternion(signals.head, mirror=cfg.mirror)
    px, py, pz = (float(v) for v in cfg.head_position_m)
    bone = [
        message(
            "/VMC/Ext/Bone/Pos",
            [(cfg.head_bone, "s"), (px, "f"), (py, "f"), (pz, "f"), (qx, "f"), (qy, "f"), (qz, "f"), (qw, "f")],
        )
    ]
    if cfg.send_time and time_s is not None:
        bone.append(message("/VMC/Ext/T", [(float(time_s), "f")]))
    # weights in [0, 1]; `+ 0.0` turns a -0.0 from the viseme arithmetic into 0.0 (some receivers print "-0")
    values = {v: float(signals.visemes[v]) + 0.0 for v in VISEMES}
    values["blink"] = float(signals.blink) + 0.0
    shapes = signals.blendshapes
    blend = [
        message(
            "/VMC/Ext/Blend/Val",
            [
                (name, "s"),
                (
                    values[key] if key in values else 0.0 if shapes is None else float(shapes[ARKIT_INDEX[key]]) + 0.0,
                    "f",
                ),
            ],
        )
        for key, name in cfg.blend_names
    ]
    blend.append(message("/VMC/Ext/Blend/Apply", []))
    return [bundle(bone), bundle(blend)]


class DriverChoice:
    """Which stream drives a single avatar (shared by the VMC and VTube Studio outputs).

    Args:
        fixed: always this stream ("" = automatic).
        local_stream: the local input's stream, preferred while it is open (None = none).
    Automatic choice: the local stream when it produces frames, else the first stream to produce a frame; the
    driver is held until it closes.
    """

    def __init__(self, fixed: str = "", local_stream: str | None = None) -> None:
        self.fixed = fixed
        self.local_stream = local_stream
        self.driver: str | None = fixed or None

    def drives(self, stream_id: str) -> bool:
        """Whether a frame of `stream_id` drives the avatar (latching the first one when none does)."""
        if self.driver is None and (self.local_stream is None or stream_id == self.local_stream):
            self.driver = stream_id
        return stream_id == self.driver

    def rows(self, batch: FrameBatch) -> list[int]:
        """The rows of `batch` whose stream drives the avatar, in order (`drives` for each row with signals;
        none when the batch has no signals)."""
        if batch.signals is None:
            return []
        drives = self.drives
        return [i for i, sid in enumerate(batch.stream_ids) if drives(sid)]

    def on_event(self, event: dict[str, Any]) -> bool:
        """True when the event puts the avatar in the rest pose (a reset or close of the driver; a stall is
        followed by the engine's silence-fed frames, which bring the face to rest themselves)."""
        sid, kind = event.get("stream"), event.get("event")
        if sid is None or sid != self.driver:
            return False
        if kind == "closed" and not self.fixed:
            self.driver = None
            if sid == self.local_stream:
                self.local_stream = None  # the local input has ended: any stream may drive now
        return kind in REST_EVENTS


class VmcSink:
    """`FrameSink` driving one avatar over VMC (which stream drives it: `DriverChoice`).

    Args:
        cfg: `VmcConfig`.
        local_stream: the local input's stream id, preferred as the driver unless `cfg.stream` is set.
    """

    def __init__(self, cfg: VmcConfig, local_stream: str | None = None) -> None:
        self.cfg = cfg
        self.udp = UdpTargets(cfg.targets)
        self.choice = DriverChoice(cfg.stream, local_stream)
        self._t0 = time.monotonic()
        self._posed = False  # a non-rest pose was sent since the last rest pose
        self._last_time_s = 0.0

    def send_frames(self, frames: Sequence[LandmarkFrame]) -> None:
        chosen = None
        for frame in frames:  # VMC carries a pose, not a history: only the newest frame matters
            if frame.signals is not None and self.choice.drives(frame.stream_id):
                chosen = frame
        if chosen is not None:
            self._last_time_s = chosen.pts_ns / 1e9
            # Frames the engine made from silence because the audio stopped arriving (`stalled`) are sent like
            # any other: the face closes its mouth over them, after the utterance's last real frames, exactly as
            # the WebSocket clients see it (a rest pose on the `stalled` event would arrive before those frames).
            for packet in vmc_packets(chosen.signals, self.cfg, self._last_time_s):
                self.udp.send(packet)
            self._posed = True

    def send_batch(self, batch: FrameBatch) -> None:
        """`send_frames` for a published step (the batch sink contract): only the driving stream's newest row
        becomes a frame."""
        rows = self.choice.rows(batch)
        if rows:
            self.send_frames([batch.frame(rows[-1])])

    def rest(self) -> None:
        """Send the rest pose (mouth closed, eyes open, head centred); /VMC/Ext/T never steps backwards."""
        self._last_time_s = max(self._last_time_s + 0.04, time.monotonic() - self._t0)
        for packet in vmc_packets(NEUTRAL_SIGNALS, self.cfg, self._last_time_s):
            self.udp.send(packet)
        self._posed = False

    def stream_event(self, event: dict[str, Any]) -> None:
        """On reset/stall/close of the driving stream, the rest pose at once (barge-in); others send nothing."""
        if self.choice.on_event(event):
            self.rest()

    async def aclose(self) -> None:
        """Leave the avatar in the rest pose (end of a file, Ctrl-C), then close the socket."""
        if self._posed:
            self.rest()
        self.udp.close()
