"""Signals derived from 68 landmarks for avatar rigs: mouth openness, visemes, blink, head yaw/pitch/roll.

Everything here is per stream, synchronous and deterministic (time comes from frame presentation times, never
the wall clock). Recipe (reference/ecosystem-and-protocols.md §1.6):

- Scale: every distance is divided by the inter-ocular distance |p36 - p45| (rigid).
- Mouth openness: mean inner-lip gap (|61-67| + |62-66| + |63-65|) / 3, mapped to [0, 1] through a per-stream
  adaptive range (generated landmarks have model- and speaker-specific ranges, so no constants).
- Visemes A/I/U/E/O: the mouth openness split by the mouth's shape, so that their sum *is* the openness (a VMC
  avatar's mouth, which opens by the sum of its viseme blendshapes, carries the face's inner-lip gap): the
  width relative to the stream's running neutral width gives spread s and rounding r (at most one non-zero);
  A = o(1 - s - r), I = o s (1 - o), E = o s o, U = o r (1 - o), O = o r o. Spread with a small opening is I,
  spread and open is E, rounded and nearly closed is U, rounded and open is O, open with a neutral width is A.
- Blink: procedural blinks with human statistics by default (`blink_mode` "auto": intervals log-normal around
  the geometric mean of `auto_blink_interval_s` (about 15 a minute), durations log-normal around
  `auto_blink_duration_ms`, clipped to 100-400 ms; Bentivoglio et al. 1997 report 10-26 blinks a minute in
  conversation), seeded per stream (`stream_seed`); "landmarks" measures the eye aspect ratio against the
  stream's running open-eye level (a speech model's eye jitter makes that blink too often, see
  ../shared/cases/blink-rate-high).
- Blendshapes: ARKit-52 weights of the frame against the stream's neutral face (`blendshapes`), with
  eyeBlinkLeft/Right = blink and the mouth shapes closed by the silence gate.
- Head pose: a scaled-orthographic fit of a generic 3D face (rigid points only: upper jaw contour, nose, eye
  corners; no mouth, no chin, so speech does not leak into pitch), relative to the stream's reference face.
- Smoothing: a One-Euro filter per channel; mouth closing in silence: a gate driven by the audio level of the
  frame and of its look-ahead, with an instant attack and a short release. A frame counts as speech when that
  level is `noise_margin_db` above the stream's noise floor (`noise_floor.NoiseFloor`, minimum statistics)
  and above the absolute `silence_dbfs`, so the gate follows the input's level: quiet speech opens the mouth,
  steady background noise and digital silence do not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from stream_engine.blendshapes import (
    ARKIT_INDEX,
    ARKIT_NAMES,
    FEATURES,
    SUPPORTED,
    blendshapes_from_features,
    face_features,
)
from stream_engine.noise_floor import NoiseFloor, NoiseFloorConfig

log = logging.getLogger(__name__)

#: Frames at or below this level (dBFS) are digital silence: no sign of an input, so no sign of a quiet one.
DIGITAL_SILENCE_DBFS = -110.0
QUIET_INPUT_MESSAGE = (
    "audio input%s is very quiet: for %.0f s its speech stayed below signals.silence_dbfs (%.0f dBFS) while the "
    "face articulated, so the rig mouth stayed closed; raise the microphone gain or lower signals.silence_dbfs"
)

# Generic 3D mean face in iBUG 68-point order (the OpenFace / dlib "wild face" model used by common head-pose
# estimators), units ~mm, x to image right, y down, z towards the camera. Rounded to 0.1 mm.
MEAN_FACE_3D = np.array(
    [
        [-73.4, -29.8, -47.7],
        [-72.8, -10.9, -45.9],
        [-70.5, 7.9, -44.8],
        [-66.9, 26.1, -43.1],
        [-59.8, 42.6, -38.6],
        [-48.4, 56.5, -30.8],
        [-34.1, 67.2, -18.5],
        [-17.9, 75.1, -3.6],
        [0.1, 77.1, 0.9],
        [17.5, 74.8, -5.2],
        [32.6, 66.9, -19.2],
        [46.4, 56.3, -30.8],
        [57.3, 42.4, -37.6],
        [64.4, 25.5, -40.9],
        [68.2, 7.0, -42.3],
        [70.5, -11.7, -44.1],
        [71.4, -30.4, -47.1],
        [-61.1, -49.4, -14.3],
        [-51.3, -58.8, -7.3],
        [-37.8, -62.0, -0.4],
        [-24.0, -61.0, 6.6],
        [-11.6, -56.7, 12.0],
        [12.1, -57.4, 12.1],
        [25.1, -61.9, 7.3],
        [38.3, -62.8, 1.0],
        [51.2, -59.3, -5.3],
        [60.1, -50.2, -11.6],
        [0.7, -42.2, 13.4],
        [0.8, -31.0, 21.2],
        [1.0, -19.9, 29.3],
        [1.2, -8.4, 36.9],
        [-14.8, 2.6, 20.1],
        [-7.2, 4.8, 23.5],
        [0.6, 6.6, 25.9],
        [8.3, 4.7, 23.7],
        [15.2, 2.6, 20.9],
        [-46.0, -37.5, -7.0],
        [-37.7, -42.7, -3.0],
        [-27.9, -42.7, -1.4],
        [-19.6, -36.8, 0.1],
        [-28.3, -35.1, 0.1],
        [-38.1, -34.9, -1.5],
        [19.3, -37.0, 0.7],
        [27.9, -43.3, -0.2],
        [37.4, -43.1, -1.7],
        [45.2, -38.1, -4.9],
        [38.2, -35.5, -0.3],
        [28.8, -35.5, 1.2],
        [-28.9, 28.6, 2.2],
        [-17.5, 22.2, 15.9],
        [-6.7, 19.0, 22.6],
        [0.4, 20.7, 23.7],
        [8.4, 19.0, 22.7],
        [18.9, 22.4, 15.6],
        [28.8, 28.1, 3.2],
        [19.1, 36.3, 15.0],
        [9.0, 39.6, 22.6],
        [0.4, 40.4, 23.6],
        [-7.4, 39.8, 22.4],
        [-18.2, 36.7, 15.1],
        [-24.4, 28.7, 4.8],
        [-6.9, 25.5, 20.9],
        [0.3, 26.0, 22.2],
        [8.4, 25.3, 21.0],
        [24.5, 28.3, 5.7],
        [8.4, 30.6, 20.7],
        [0.2, 31.4, 21.9],
        [-7.2, 30.8, 20.3],
    ],
    dtype=np.float64,
)

#: Points that do not move with speech: upper jaw contour, nose bridge and base, eye corners.
RIGID_POINTS = (0, 1, 2, 14, 15, 16, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)
#: The rigid points without the jaw line's (nose 27-35, eye corners 36, 39, 42, 45): a head fit that the jaw's
#: speech-driven motion does not reach (`benchmarks.head_speech`; its fit is `NO_JAW_FIT`).
NO_JAW_POINTS = (27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)

VISEMES = ("A", "I", "U", "E", "O")
#: Order of the signal vector in the binary frame format and OSC messages (PROTOCOL.md).
SIGNAL_NAMES = (
    "mouth_open",
    "A",
    "I",
    "U",
    "E",
    "O",
    "blink",
    "yaw_deg",
    "pitch_deg",
    "roll_deg",
    "audio_dbfs",
    "silent",
)


@dataclasses.dataclass(frozen=True, slots=True)
class HeadPose:
    """Head rotation in degrees, in image terms (a camera looking at the face, not mirrored).

    yaw_deg > 0: the nose turns towards image right; pitch_deg > 0: chin up; roll_deg > 0: the face rotates
    counter-clockwise in the image.
    """

    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    roll_deg: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Signals:
    """Rig-ready values of one landmark frame. Weights are in [0, 1].

    `blendshapes` is (52,) float32 in `blendshapes.ARKIT_NAMES` order (None when not derived).
    """

    mouth_open: float
    visemes: dict[str, float]
    blink: float
    head: HeadPose
    audio_dbfs: float
    silent: bool
    blendshapes: np.ndarray | None = None

    def blendshape(self, name: str) -> float:
        """One ARKit weight by name (0.0 when blendshapes were not derived)."""
        return 0.0 if self.blendshapes is None else float(self.blendshapes[ARKIT_INDEX[name]])

    def as_vector(self) -> list[float]:
        """Python floats in `SIGNAL_NAMES` order."""
        return [
            float(self.mouth_open),
            *(float(self.visemes[v]) for v in VISEMES),
            float(self.blink),
            float(self.head.yaw_deg),
            float(self.head.pitch_deg),
            float(self.head.roll_deg),
            float(self.audio_dbfs),
            1.0 if self.silent else 0.0,
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "mouth_open": round(float(self.mouth_open), 4),
            "visemes": {k: round(float(v), 4) for k, v in self.visemes.items()},
            "blink": round(float(self.blink), 4),
            "head": {
                "yaw_deg": round(float(self.head.yaw_deg), 3),
                "pitch_deg": round(float(self.head.pitch_deg), 3),
                "roll_deg": round(float(self.head.roll_deg), 3),
            },
            "audio_dbfs": round(float(self.audio_dbfs), 2),
            "silent": bool(self.silent),
            **(
                {"blendshapes": {n: round(float(self.blendshapes[ARKIT_INDEX[n]]), 4) for n in SUPPORTED}}
                if self.blendshapes is not None
                else {}
            ),
        }


NEUTRAL_SIGNALS = Signals(
    0.0, {v: 0.0 for v in VISEMES}, 0.0, HeadPose(), -120.0, True, np.zeros(len(ARKIT_NAMES), dtype=np.float32)
)

#: Blendshape features that opening the mouth moves (their neutral adapts only while the mouth is nearly closed).
OPENING_FEATURES = np.isin(
    FEATURES,
    (
        "gap",
        "chin_drop",
        "lower_lip_down_l",
        "lower_lip_down_r",
        "width",
        "lip_thick_l",
        "lip_thick_r",
        "upper_thick",
        "lower_thick",
    ),
)

#: ARKit shapes closed by the silence gate together with the mouth.
GATED_SHAPES = np.array([ARKIT_INDEX[n] for n in ARKIT_NAMES if n.startswith(("jaw", "mouth", "brow"))])


def stream_seed(base_seed: int | None, stream_id: str) -> int | None:
    """A per-stream seed that is the same in every process (Python's `hash` of a string is not): blake2b of
    "base:stream_id", 63 bits. None when `base_seed` is None (fresh randomness)."""
    if base_seed is None:
        return None
    digest = hashlib.blake2b(f"{int(base_seed)}:{stream_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclasses.dataclass(frozen=True)
class OneEuroConfig:
    """One-Euro filter parameters (Casiez et al. 2012): cutoff rises with speed, so slow motion is smoothed
    hard and fast motion passes with little lag."""

    min_cutoff_hz: float = 1.0
    beta: float = 0.0
    d_cutoff_hz: float = 1.0


@dataclasses.dataclass(frozen=True)
class SignalConfig:
    """How landmarks become rig signals.

    Attributes:
        mouth_filter, viseme_filter, head_filter: One-Euro settings (fast beta for the mouth so plosives stay
            crisp; low cutoff for the head).
        mouth_min_span: smallest openness range (inner-lip gap / inter-ocular) mapped to 0..1, so a nearly still
            mouth is not amplified into full opening.
        width_min_span: smallest width deviation (/ inter-ocular) mapped to full spread/rounding.
        range_decay_s: time constant with which learnt extremes relax towards recent values.
        silence_dbfs: absolute speech floor, dBFS: frames whose audio (own and look-ahead) stays below this level
            always count as silent (digital silence, dither, a disconnected microphone), whatever the noise floor.
        noise_margin_db: a frame counts as speech when its level (own or look-ahead) is at least this many dB
            above the stream's noise floor (and above `silence_dbfs`).
        noise_window_s: length in seconds of the minimum-statistics window of the noise floor
            (`noise_floor.NoiseFloor`): a louder background is adopted after at most this long, a quieter one
            at once; it should exceed the longest stretch of speech without a pause.
        noise_subwindows: sub-windows of that window, >= 2 (the floor rises in steps of window / sub-windows).
        noise_floor_init_dbfs: the noise floor assumed, dBFS, until the first window of a stream is measured.
        noise_start_steady_frames: unless this many frames of steady level (within `noise_start_steady_db`) come
            first: then the floor takes their level at once, so a stream that starts inside a fan's noise does not
            open the mouth for a whole window (`noise_floor` module docstring; 0 = off).
        noise_start_steady_db: the largest spread of those frames' smoothed levels, dB.
        noise_smoothing: the noise floor is the minimum of levels smoothed with this weight of the previous value
            per frame, in [0, 1) (0.8: ~180 ms; `noise_floor` module docstring), so one partly silent frame or a
            short fade does not pull the floor down.
        quiet_warning_s: after this many seconds (net) of frames whose audio lies between digital silence
            (`DIGITAL_SILENCE_DBFS`) and `silence_dbfs` while the face's mouth opens (openness > 0.3), less the
            frames the gate takes as speech, the stream's input counts as too quiet: one warning is logged and
            `quiet_input` turns true (0 = never).
        silence_hold_ms: silence must last this long before the mouth is closed.
        silence_release_ms: time constant of the closing (speech reopens at once).
        blink_mode: "auto" (procedural, human statistics), "landmarks" (eye aspect ratio), "both" (max of the
            two) or "off".
        auto_blink_interval_s: (low, high) of the interval between procedural blinks; intervals are
            log-normal (sigma 0.5) around the geometric mean of the two, clipped to them.
        auto_blink_duration_ms: median length of one procedural blink (log-normal, sigma 0.25, clipped to
            100-400 ms).
        blendshapes: derive the ARKit-52 weights (`Signals.blendshapes`).
        blendshape_gain: > 1 reaches full weight with smaller movements (generated faces move less than the
            real speakers the spans were calibrated on).
        blendshape_neutral_s: time constant with which the blendshapes' neutral face (starting at the reference
            face) follows the face while speech is heard (the mouth gate open; the mouth-opening features only
            while the mouth is nearly closed). Not in silence, where the mouth, jaw and brow shapes are 0.
        head_relative_to_reference: report head angles relative to the stream's reference face.
        max_head_deg: clamp of every head angle.
    """

    mouth_filter: OneEuroConfig = OneEuroConfig(min_cutoff_hz=3.0, beta=20.0, d_cutoff_hz=1.0)
    viseme_filter: OneEuroConfig = OneEuroConfig(min_cutoff_hz=2.0, beta=10.0, d_cutoff_hz=1.0)
    head_filter: OneEuroConfig = OneEuroConfig(min_cutoff_hz=0.8, beta=0.05, d_cutoff_hz=1.0)
    mouth_min_span: float = 0.12
    width_min_span: float = 0.06
    range_decay_s: float = 30.0
    silence_dbfs: float = -75.0
    noise_margin_db: float = 8.0
    noise_window_s: float = 2.0
    noise_subwindows: int = 4
    noise_floor_init_dbfs: float = -90.0
    noise_start_steady_frames: int = 8
    noise_start_steady_db: float = 2.0
    noise_smoothing: float = 0.8
    quiet_warning_s: float = 5.0
    silence_hold_ms: float = 120.0
    silence_release_ms: float = 60.0
    blink_mode: str = "auto"
    auto_blink_interval_s: tuple[float, float] = (2.0, 8.0)
    auto_blink_duration_ms: float = 180.0
    blendshapes: bool = True
    blendshape_gain: float = 1.0
    blendshape_neutral_s: float = 3.0
    head_relative_to_reference: bool = True
    max_head_deg: float = 45.0

    def __post_init__(self) -> None:
        if self.blink_mode not in ("landmarks", "auto", "both", "off"):
            raise ValueError(f"blink_mode must be landmarks, auto, both or off, got {self.blink_mode!r}")
        lo, hi = self.auto_blink_interval_s
        if not 0 < lo <= hi:
            raise ValueError("auto_blink_interval_s must be (low, high) with 0 < low <= high")
        if self.blendshape_gain <= 0 or self.blendshape_neutral_s <= 0:
            raise ValueError("blendshape_gain and blendshape_neutral_s must be positive")
        if self.noise_margin_db < 0:
            raise ValueError("noise_margin_db must be >= 0")
        noise_floor_config(self)  # noise_window_s > 0, noise_subwindows >= 2, noise_smoothing in [0, 1)


class OneEuroFilter:
    """One-Euro low-pass over a vector; timestamps in seconds (stream time).

    Args:
        cfg: one config for every channel, or one per channel (channels filtered together in one pass).
    """

    def __init__(self, cfg: OneEuroConfig | Sequence[OneEuroConfig]) -> None:
        cfgs = [cfg] if isinstance(cfg, OneEuroConfig) else list(cfg)
        self.cfg = cfgs[0] if len(cfgs) == 1 else cfgs
        self._min_cutoff = np.array([c.min_cutoff_hz for c in cfgs])
        self._beta = np.array([c.beta for c in cfgs])
        self._d_tau = np.array([1.0 / (2.0 * math.pi * c.d_cutoff_hz) for c in cfgs])
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t_s = 0.0

    def __call__(self, x: np.ndarray, t_s: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._dx is None:  # set together: the first sample
            self._x, self._dx, self._t_s = x.copy(), np.zeros_like(x), t_s
            first: np.ndarray = x.copy()
            return first
        dt_s = t_s - self._t_s
        if dt_s <= 0:  # repeated or out-of-order time: hold
            held: np.ndarray = self._x.copy()
            return held
        a_d = 1.0 / (1.0 + self._d_tau / dt_s)
        self._dx = a_d * (x - self._x) / dt_s + (1.0 - a_d) * self._dx
        cutoff = self._min_cutoff + self._beta * np.abs(self._dx)
        a = 1.0 / (1.0 + 1.0 / (2.0 * math.pi * cutoff * dt_s))
        self._x = a * x + (1.0 - a) * self._x
        self._t_s = t_s
        out: np.ndarray = self._x.copy()
        return out


class AdaptiveRange:
    """Per-stream [low, high] of a raw feature, learnt online; maps values to [0, 1].

    New extremes are taken at once; both ends relax towards the current value with time constant `decay_s`,
    so a range learnt from one loud burst does not hold forever. The span never drops below `min_span`.
    """

    def __init__(self, min_span: float, decay_s: float) -> None:
        self.min_span = float(min_span)
        self.decay_s = float(decay_s)
        self.low: float | None = None
        self.high: float | None = None

    def update(self, x: float, dt_s: float) -> float:
        if self.low is None or self.high is None:
            self.low = self.high = float(x)
        else:
            k = min(1.0, dt_s / self.decay_s) if self.decay_s > 0 else 0.0
            self.low += (x - self.low) * k
            self.high += (x - self.high) * k
            self.low, self.high = min(self.low, x), max(self.high, x)
        return min(1.0, max(0.0, (x - self.low) / max(self.high - self.low, self.min_span)))


def _dist(points: np.ndarray, a: int, b: int) -> float:
    return float(math.hypot(*(points[a] - points[b])))


# Point pairs measured for every frame, in one vectorised norm: inter-ocular, inner-lip gaps, mouth width, eyes.
MEASURED_PAIRS = np.array(
    [(36, 45), (61, 67), (62, 66), (63, 65), (48, 54), (37, 41), (38, 40), (36, 39), (43, 47), (44, 46), (42, 45)]
)


def _pair_distances(points: np.ndarray) -> np.ndarray:
    d = points[MEASURED_PAIRS[:, 0]] - points[MEASURED_PAIRS[:, 1]]
    result: np.ndarray = np.sqrt((d * d).sum(axis=1))
    return result


def mouth_features(points: np.ndarray) -> tuple[float, float]:
    """(68, 2) landmarks -> (inner-lip gap, mouth width), both over the inter-ocular distance."""
    d = _pair_distances(np.asarray(points, dtype=np.float64))
    iod = max(float(d[0]), 1e-6)
    return float(d[1] + d[2] + d[3]) / 3.0 / iod, float(d[4]) / iod


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Mean eye aspect ratio of both eyes (about 0.25-0.35 open, near 0 closed)."""
    return _ear_from_distances(_pair_distances(np.asarray(points, dtype=np.float64)))


def _ear_from_distances(d: np.ndarray) -> float:
    right = (d[5] + d[6]) / (2.0 * max(float(d[7]), 1e-6))
    left = (d[8] + d[9]) / (2.0 * max(float(d[10]), 1e-6))
    return float(0.5 * (right + left))


#: A head fit: (point index, (3, n) pseudo-inverse of the centred model points), from `rigid_fit`.
RigidFit = tuple[list[int], np.ndarray]


def rigid_fit(index: Sequence[int]) -> RigidFit:
    """The head fit on the points `index` of `MEAN_FACE_3D`: (index, (3, n) pseudo-inverse of the centred model
    points, z away from the camera), for `head_rotation(points, fit)`."""
    idx = [int(i) for i in index]
    model = MEAN_FACE_3D[idx] * np.array([1.0, 1.0, -1.0])  # z away from the camera: right-handed, y down
    return idx, np.linalg.pinv(model - model.mean(axis=0))  # the least-squares fit is one matrix product


RIGID_INDEX, MODEL_RIGID_PINV = rigid_fit(RIGID_POINTS)
NO_JAW_FIT = rigid_fit(NO_JAW_POINTS)  # the nose-and-eye-corners fit, computed once


def head_rotation(points: np.ndarray, fit: RigidFit | None = None) -> np.ndarray:
    """Scaled-orthographic fit of `MEAN_FACE_3D` (rigid points) to (68, 2) landmarks -> 3x3 rotation.

    The rotation maps model axes (x right, y down, z away from the camera) to image axes (same convention);
    identity = a frontal face. `fit` (`rigid_fit`) fits other points than `RIGID_POINTS`.
    """
    index, pinv = (RIGID_INDEX, MODEL_RIGID_PINV) if fit is None else fit
    image = np.asarray(points, dtype=np.float64)[index]
    affine = pinv @ (image - image.mean(axis=0))  # image ~= model @ affine, affine (3, 2)
    r1, r2 = affine[:, 0], affine[:, 1]
    r1 = r1 / max(math.sqrt(float(r1 @ r1)), 1e-12)
    r2 = r2 - r1 * float(r1 @ r2)
    r2 = r2 / max(math.sqrt(float(r2 @ r2)), 1e-12)
    r3 = np.array([r1[1] * r2[2] - r1[2] * r2[1], r1[2] * r2[0] - r1[0] * r2[2], r1[0] * r2[1] - r1[1] * r2[0]])
    return np.array([r1, r2, r3])


def rotation_to_pose(rotation: np.ndarray) -> HeadPose:
    """3x3 rotation (from `head_rotation`) -> yaw/pitch/roll in degrees (`HeadPose` conventions).

    Decomposes R = Rz(roll) @ Ry(yaw) @ Rx(pitch) (pitch applied first, roll last, in image axes).
    """
    r = rotation
    yaw = math.degrees(math.asin(float(np.clip(r[2, 0], -1.0, 1.0))))
    pitch = math.degrees(math.atan2(-r[2, 1], r[2, 2]))
    roll = math.degrees(math.atan2(-r[1, 0], r[0, 0]))
    return HeadPose(yaw, pitch, roll)


def head_pose(points: np.ndarray) -> HeadPose:
    """Absolute head pose of (68, 2) landmarks (against the generic face; see `SignalExtractor` for relative)."""
    return rotation_to_pose(head_rotation(points))


def euler_to_unity_quaternion(pose: HeadPose, mirror: bool = False) -> tuple[float, float, float, float]:
    """Head pose -> (qx, qy, qz, qw) for a Unity (left-handed, Y up, avatar facing +Z) `Head` bone.

    Image conventions are those of a camera facing the avatar: the nose turning to image right is the avatar
    turning to its own left (negative Unity Y rotation). `mirror` flips yaw and roll (selfie view). Composed
    like Unity's `Quaternion.Euler(x, y, z)` (Z, then X, then Y). Signs: verify per app.
    """
    sign = -1.0 if mirror else 1.0
    x = math.radians(-pose.pitch_deg)
    y = math.radians(-pose.yaw_deg * sign)
    z = math.radians(-pose.roll_deg * sign)
    qx = (math.sin(x / 2), 0.0, 0.0, math.cos(x / 2))
    qy = (0.0, math.sin(y / 2), 0.0, math.cos(y / 2))
    qz = (0.0, 0.0, math.sin(z / 2), math.cos(z / 2))
    q = _qmul(_qmul(qy, qx), qz)
    return (float(q[0]), float(q[1]), float(q[2]), float(q[3]))


#: (x, y, z, w)
Quaternion = tuple[float, float, float, float]


def _qmul(a: Quaternion, b: Quaternion) -> Quaternion:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    )


def noise_floor_config(cfg: SignalConfig) -> NoiseFloorConfig:
    """The speech gate's noise-floor tracker as `cfg` sets it (frames under the absolute floor are skipped)."""
    return NoiseFloorConfig(
        cfg.noise_window_s,
        cfg.noise_subwindows,
        cfg.noise_floor_init_dbfs,
        cfg.silence_dbfs,
        cfg.noise_smoothing,
        cfg.noise_start_steady_frames,
        cfg.noise_start_steady_db,
    )


class SignalExtractor:
    """Per-stream state that turns landmark frames into `Signals`.

    Args:
        cfg: `SignalConfig`.
        reference_face: (68, 2) the stream's neutral face (head angles are reported relative to it).
        seed: procedural-blink randomness (deterministic per stream; derive it with `stream_seed`).
        name: the stream's name in log messages.
    """

    def __init__(
        self,
        cfg: SignalConfig = SignalConfig(),
        reference_face: np.ndarray | None = None,
        seed: int | None = 0,
        name: str = "",
    ) -> None:
        self.cfg = cfg
        self.name = name
        #: True once the input has been too quiet for `cfg.quiet_warning_s` (see `SignalConfig`); stays true.
        self.quiet_input = False
        self._quiet_s = 0.0
        self._rng = np.random.default_rng(seed)
        self._neutral_rotation = np.eye(3)
        self._neutral_face = None if reference_face is None else np.asarray(reference_face, dtype=np.float64)
        self._neutral_feats: np.ndarray | None = None
        if reference_face is not None and cfg.head_relative_to_reference:
            self._neutral_rotation = head_rotation(np.asarray(reference_face, dtype=np.float64))
        self._open_range = AdaptiveRange(cfg.mouth_min_span, cfg.range_decay_s)
        self._width_neutral: float | None = None
        self._width_dev = cfg.width_min_span
        self._eye_open: float | None = None
        # mouth, spread, rounding, yaw pitch roll: one filter pass, each group with its own settings
        self._filter = OneEuroFilter([cfg.mouth_filter] + [cfg.viseme_filter] * 2 + [cfg.head_filter] * 3)
        self._feature_filter = OneEuroFilter(cfg.mouth_filter)  # blendshape features (jitter of generated faces)
        self._next_blink_s: float | None = None
        self._blink_duration_s = cfg.auto_blink_duration_ms / 1e3
        self._noise = NoiseFloor(noise_floor_config(cfg))
        self.reset()

    def reset(self) -> None:
        """A new epoch (reset/flush): restart filters and the silence gate; learnt ranges and the noise floor
        are kept."""
        self._filter.reset()
        self._feature_filter.reset()
        self._last_t_s: float | None = None
        self._silent_since_s: float | None = None
        self._gate = 1.0

    def update(
        self, landmarks: np.ndarray, t_s: float, audio_dbfs: float, audio_ahead_dbfs: float | None = None
    ) -> Signals:
        """Signals of one frame.

        Args:
            landmarks: (68, 2) normalised landmarks.
            t_s: frame presentation time in seconds of stream time.
            audio_dbfs: level of the frame's own audio; audio_ahead_dbfs: loudest level of its look-ahead.
        """
        cfg = self.cfg
        pts = np.asarray(landmarks, dtype=np.float64)
        dt_s = 0.04 if self._last_t_s is None else max(1e-3, t_s - self._last_t_s)
        self._last_t_s = t_s

        d = _pair_distances(pts)
        iod = max(float(d[0]), 1e-6)
        gap, width = float(d[1] + d[2] + d[3]) / 3.0 / iod, float(d[4]) / iod
        openness = self._open_range.update(gap, dt_s)
        if self._width_neutral is None:
            self._width_neutral = width
        else:  # the neutral width follows the closed-ish mouth slowly
            k = min(1.0, dt_s / 5.0) * (1.0 - openness)
            self._width_neutral += (width - self._width_neutral) * k
        dev = width - self._width_neutral
        self._width_dev = max(
            cfg.width_min_span,
            self._width_dev + (abs(dev) - self._width_dev) * min(1.0, dt_s / cfg.range_decay_s),
            abs(dev),
        )
        spread = min(1.0, max(0.0, dev / self._width_dev))
        rounding = min(1.0, max(0.0, -dev / self._width_dev))
        r = head_rotation(pts) @ self._neutral_rotation.T
        pose = rotation_to_pose(r)

        out = self._filter(np.array([openness, spread, rounding, pose.yaw_deg, pose.pitch_deg, pose.roll_deg]), t_s)
        level = max(audio_dbfs, audio_ahead_dbfs if audio_ahead_dbfs is not None else -200.0)
        floor = self._noise.update(float(audio_dbfs), dt_s)
        speech = level >= max(cfg.silence_dbfs, floor + cfg.noise_margin_db)
        silent = self._silence(t_s, dt_s, speech)
        gate = self._gate
        opening = min(1.0, max(0.0, float(out[0])))
        if not self.quiet_input and cfg.quiet_warning_s > 0:
            self._watch_quiet(speech, DIGITAL_SILENCE_DBFS < level < cfg.silence_dbfs and opening > 0.3, dt_s)
        mouth = opening * gate
        visemes = dict(zip(VISEMES, viseme_weights(mouth, float(out[1]), float(out[2]))))
        lim = cfg.max_head_deg
        head = HeadPose(*(min(lim, max(-lim, float(a))) for a in out[3:6]))
        blink = self._blink(d, t_s, dt_s)
        shapes = None
        if cfg.blendshapes:
            feats = self._feature_filter(face_features(pts), t_s)
            if self._neutral_feats is None:
                self._neutral_feats = face_features(self._neutral_face) if self._neutral_face is not None else feats
            else:  # the rest face while talking: follow it (opening-driven features only while the mouth is nearly
                # closed), not in silence, where the gated shapes are 0 (`GATED_SHAPES`)
                rate = (
                    min(1.0, dt_s / cfg.blendshape_neutral_s) * gate * np.where(OPENING_FEATURES, openness < 0.3, 1.0)
                )
                self._neutral_feats = self._neutral_feats + (feats - self._neutral_feats) * rate
            shapes = blendshapes_from_features(feats, self._neutral_feats, blink, cfg.blendshape_gain)
            shapes[GATED_SHAPES] *= gate
        return Signals(
            mouth_open=mouth,
            visemes=visemes,
            blink=blink,
            head=head,
            audio_dbfs=float(audio_dbfs),
            silent=silent,
            blendshapes=shapes,
        )

    def _watch_quiet(self, speech: bool, quiet_articulation: bool, dt_s: float) -> None:
        """Count quiet articulation up and speech down; warn once when the count reaches `quiet_warning_s`."""
        if quiet_articulation:
            self._quiet_s += dt_s
        elif speech:
            self._quiet_s = max(0.0, self._quiet_s - dt_s)
        if self._quiet_s >= self.cfg.quiet_warning_s:
            self.quiet_input = True
            where = f" of stream {self.name}" if self.name else ""
            log.warning(QUIET_INPUT_MESSAGE, where, self.cfg.quiet_warning_s, self.cfg.silence_dbfs)

    @property
    def noise_floor_dbfs(self) -> float:
        """The stream's noise floor now (`noise_floor.NoiseFloor`), dBFS."""
        return self._noise.floor_dbfs

    def _silence(self, t_s: float, dt_s: float, speech: bool) -> bool:
        """Update the mouth gate: 1 while speech is present, decaying to 0 after `silence_hold_ms` of silence."""
        cfg = self.cfg
        if speech:
            self._silent_since_s = None
            self._gate = 1.0
            return False
        if self._silent_since_s is None:
            self._silent_since_s = t_s
        if (t_s - self._silent_since_s) * 1e3 >= cfg.silence_hold_ms:
            self._gate *= math.exp(-dt_s * 1e3 / max(cfg.silence_release_ms, 1e-3))
            if self._gate < 0.02:
                self._gate = 0.0
            return True
        return False

    def _blink(self, d: np.ndarray, t_s: float, dt_s: float) -> float:
        """Blink weight from the pair distances `d` (see `MEASURED_PAIRS`) and/or the procedural schedule."""
        mode = self.cfg.blink_mode
        if mode == "off":
            return 0.0
        value = 0.0
        if mode in ("landmarks", "both"):
            ear = _ear_from_distances(d)
            if self._eye_open is None:
                self._eye_open = ear
            else:  # the open level follows upwards at once and relaxes down slowly (10 s)
                self._eye_open = max(ear, self._eye_open + (ear - self._eye_open) * min(1.0, dt_s / 10.0))
            closure = (self._eye_open - ear) / max(0.5 * self._eye_open, 1e-6)
            value = min(1.0, max(0.0, (closure - 0.2) / 0.8))  # ignore small eyelid jitter
        if mode in ("auto", "both"):
            value = max(value, self._auto_blink(t_s))
        return value

    def _draw_interval_s(self) -> float:
        lo, hi = self.cfg.auto_blink_interval_s
        return float(np.clip(math.sqrt(lo * hi) * math.exp(0.5 * float(self._rng.standard_normal())), lo, hi))

    def _auto_blink(self, t_s: float) -> float:
        hi = self.cfg.auto_blink_interval_s[1]
        if self._next_blink_s is None or t_s < self._next_blink_s - hi:  # first call, or time went backwards
            self._next_blink_s = t_s + self._draw_interval_s()
        phase = (t_s - self._next_blink_s) / self._blink_duration_s
        if phase < 0:
            return 0.0
        if phase >= 1.0:
            self._next_blink_s = t_s + self._draw_interval_s()
            median_s = self.cfg.auto_blink_duration_ms / 1e3
            self._blink_duration_s = float(
                np.clip(median_s * math.exp(0.25 * float(self._rng.standard_normal())), 0.1, 0.4)
            )
            return 0.0
        # closing takes the first 40 % of the blink, opening the rest (the lid reopens more slowly)
        return float(phase / 0.4 if phase < 0.4 else (1.0 - phase) / 0.6)


def viseme_weights(openness: float, spread: float, rounding: float) -> tuple[float, float, float, float, float]:
    """(A, I, U, E, O) that split `openness` by the mouth's shape; their sum is `openness` (module docstring).

    Args:
        openness: mouth openness in [0, 1]; spread, rounding: width above / below the neutral width, in [0, 1]
            (at most one is non-zero; if both are given, they are scaled so that s + r <= 1).
    """
    o = min(1.0, max(0.0, openness))
    s = min(1.0, max(0.0, spread))
    r = min(1.0, max(0.0, rounding))
    if s + r > 1.0:
        s, r = s / (s + r), r / (s + r)
    return (o * (1.0 - s - r), o * s * (1.0 - o), o * r * (1.0 - o), o * s * o, o * r * o)
