"""A deterministic fake `StepRunner` honouring the step contract (look-ahead included), for engine tests.

Frame j's mouth opening is a function of the RMS of frame j's own audio (samples [640j, 640j + 640)); the
head turns slowly on a fixed schedule (a known yaw/pitch per frame index); the first L outputs of a stream
are the reference face, as a real model's warm-up. So tests can check alignment, look-ahead dropping, head
pose and batching without ONNX.
"""

from __future__ import annotations

import math
import time

import numpy as np

from stream_engine.contract import COORDINATES, StateSpec, StepContract, TensorSpec
from stream_engine.runtime.base import BaseStepRunner, initial_state
from stream_engine.signals import MEAN_FACE_3D

FACE_SCALE = 1.0 / 300.0  # mm of the generic face -> normalised crop units (face about half the crop)
LOWER_LIP = (55, 56, 57, 58, 59, 65, 66, 67)
CHIN = (5, 6, 7, 8, 9, 10, 11)


def project_face(
    yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0, mouth_open_mm: float = 0.0
) -> np.ndarray:
    """The generic 3D face, mouth opened by `mouth_open_mm`, rotated (HeadPose conventions) and projected
    orthographically into the normalised crop -> (68, 2) float32."""
    pts = MEAN_FACE_3D.copy()
    pts[list(LOWER_LIP), 1] += mouth_open_mm
    pts[list(CHIN), 1] += 0.6 * mouth_open_mm
    pts[:, 2] *= -1.0  # z away from the camera (right-handed with y down)
    # yaw: nose to image right = rotation about y taking -z (front) towards +x
    ay, ap, ar = math.radians(yaw_deg), math.radians(pitch_deg), math.radians(roll_deg)
    ry = np.array([[math.cos(ay), 0, -math.sin(ay)], [0, 1, 0], [math.sin(ay), 0, math.cos(ay)]])
    rx = np.array([[1, 0, 0], [0, math.cos(ap), math.sin(ap)], [0, -math.sin(ap), math.cos(ap)]])
    rz = np.array([[math.cos(ar), math.sin(ar), 0], [-math.sin(ar), math.cos(ar), 0], [0, 0, 1]])
    rotated = pts @ (rz @ ry @ rx).T
    return (0.5 + rotated[:, :2] * FACE_SCALE).astype(np.float32)


NEUTRAL_FACE = project_face()


def fake_contract(lookahead_frames: int = 2) -> StepContract:
    """A real `StepContract` describing the fake model (so the fake honours the same contract as exports)."""
    return StepContract(
        sample_rate_hz=16000,
        samples_per_frame=640,
        fps=25.0,
        lookahead_frames=lookahead_frames,
        num_landmarks=68,
        landmark_dims=2,
        landmark_layout="ibug68",
        coordinates=COORDINATES,
        audio_input=TensorSpec("audio", ("B", 640)),
        landmarks_output=TensorSpec("landmarks", ("B", 68, 2)),
        states=(
            StateSpec("rms_hist", "rms_hist_next", ("B", lookahead_frames + 1)),
            StateSpec("reference", "reference_next", ("B", 68, 2), init="reference_face"),
            StateSpec("frames_seen", "frames_seen_next", ("B", 1)),
        ),
        reference_face=tuple(tuple(float(v) for v in row) for row in NEUTRAL_FACE),
        model_version="fake-1",
        training_data="none (deterministic test double)",
        generator_config={"lookahead_frames": lookahead_frames},
        frontend={},
    )


class FakeRunner(BaseStepRunner):
    """Deterministic runner: mouth from the frame's RMS, head on a schedule, look-ahead L.

    Args:
        lookahead_frames: L.
        mouth_gain_mm: mouth opening in mm of the generic face per unit RMS (clipped at 30 mm).
        head_amplitude_deg: yaw amplitude of the head schedule (pitch gets half); 0 keeps the head still.
        cost_us_per_call, cost_us_per_row: busy-wait to imitate a model's compute (per call and per stream).
    """

    def __init__(
        self,
        lookahead_frames: int = 2,
        mouth_gain_mm: float = 150.0,
        head_amplitude_deg: float = 0.0,
        cost_us_per_call: float = 0.0,
        cost_us_per_row: float = 0.0,
    ) -> None:
        self.contract = fake_contract(lookahead_frames)
        self.mouth_gain_mm = mouth_gain_mm
        self.head_amplitude_deg = head_amplitude_deg
        self.cost_us_per_call = cost_us_per_call
        self.cost_us_per_row = cost_us_per_row
        self.calls = 0
        self.batch_sizes: list[int] = []

    def head_schedule(self, frame_index: int) -> tuple[float, float]:
        """(yaw_deg, pitch_deg) of frame j."""
        a = self.head_amplitude_deg
        return a * math.sin(2 * math.pi * frame_index / 125.0), 0.5 * a * math.sin(2 * math.pi * frame_index / 200.0)

    def initial_state(
        self, batch: int, reference_face: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> dict[str, np.ndarray]:
        return initial_state(self.contract, batch, reference_face, rng)

    def step(self, audio: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        audio = np.asarray(audio, dtype=np.float32)
        b, n = audio.shape
        if n != self.contract.samples_per_frame:
            raise ValueError(f"expected (B, {self.contract.samples_per_frame}) audio, got {audio.shape}")
        if self.cost_us_per_call or self.cost_us_per_row:
            end = time.perf_counter() + (self.cost_us_per_call + self.cost_us_per_row * b) * 1e-6
            while time.perf_counter() < end:
                pass
        self.calls += 1
        self.batch_sizes.append(b)
        L = self.contract.lookahead_frames
        rms = np.sqrt(np.mean(audio.astype(np.float64) ** 2, axis=1)).astype(np.float32)
        hist = np.concatenate([state["rms_hist"][:, 1:], rms[:, None]], axis=1)  # hist[:, 0] = step k - L
        seen = state["frames_seen"][:, 0]
        out = np.empty((b, 68, 2), np.float32)
        for i in range(b):
            k = int(seen[i])
            ref = state["reference"][i]
            if k < L:
                out[i] = ref  # look-ahead warm-up: the reference face, dropped by the runtime
                continue
            j = k - L
            yaw, pitch = self.head_schedule(j)
            face = project_face(yaw, pitch, 0.0, min(30.0, self.mouth_gain_mm * float(hist[i, 0])))
            out[i] = face + (ref - NEUTRAL_FACE)
        return out, {
            "rms_hist": hist,
            "reference": state["reference"],
            "frames_seen": (state["frames_seen"] + 1.0).astype(np.float32),
        }

    @staticmethod
    def expected_open_mm(frame_audio: np.ndarray, gain_mm: float = 150.0) -> float:
        return min(30.0, gain_mm * float(np.sqrt(np.mean(np.asarray(frame_audio, np.float64) ** 2))))


class ZeroCostRunner(BaseStepRunner):
    """A runner that costs (almost) nothing: the reference face every step, the frame counter advanced.

    For measuring the engine around the step (`benchmarks/engine_throughput.py`): whatever the engine spends
    per frame with this runner is the engine's own cost.
    """

    def __init__(self, lookahead_frames: int = 2) -> None:
        self.contract = fake_contract(lookahead_frames)

    def step(self, audio, state):
        audio = np.asarray(audio, dtype=np.float32)
        return (
            np.array(state["reference"], dtype=np.float32),
            {"rms_hist": state["rms_hist"], "reference": state["reference"], "frames_seen": state["frames_seen"] + 1.0},
        )

    def step_slots(self, slots, rows, audio):
        return slots.gather(rows)["reference"].copy()


class NonFiniteRunner(FakeRunner):
    """Gives NaN landmarks for streams whose step audio has a sample exactly equal to `poison` (and from call
    `nan_from_call` on for everyone, when set)."""

    def __init__(self, poison: float = 0.123, nan_from_call: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.poison = poison
        self.nan_from_call = nan_from_call

    def step(self, audio, state):
        out, new_state = super().step(audio, state)
        bad = np.any(np.asarray(audio) == np.float32(self.poison), axis=1)
        if self.nan_from_call is not None and self.calls >= self.nan_from_call:
            bad[:] = True
        out[bad] = np.nan
        return out, new_state


class FailingRunner(FakeRunner):
    """Raises on the n-th call (runner failure handling)."""

    def __init__(self, fail_on_call: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fail_on_call = fail_on_call

    def step(self, audio, state):
        if self.calls + 1 == self.fail_on_call:
            self.calls += 1
            raise RuntimeError("injected runner failure")
        return super().step(audio, state)


def tone(
    num_samples: int, amplitude: float = 0.3, freq_hz: float = 220.0, sample_rate_hz: int = 16000, start_sample: int = 0
) -> np.ndarray:
    """A sine test signal -> (num_samples,) float32."""
    t = (np.arange(num_samples) + start_sample) / sample_rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def speechlike(num_samples: int, seed: int = 0, sample_rate_hz: int = 16000) -> np.ndarray:
    """Bursts of noisy tone with silences (syllables at ~4 Hz) -> (num_samples,) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sample_rate_hz
    envelope = np.clip(np.sin(2 * np.pi * 2.0 * t), 0.0, None) ** 2
    carrier = 0.5 * np.sin(2 * np.pi * 180.0 * t) + 0.2 * rng.standard_normal(num_samples)
    return (0.5 * envelope * carrier).astype(np.float32)


class CollectingSink:
    """An old-style `FrameSink` (`send_frames` only, no `send_batch`) that records the frames and events it is
    given."""

    def __init__(self) -> None:
        self.frames: list = []
        self.events: list = []

    def send_frames(self, frames):
        self.frames.extend(frames)

    def stream_event(self, event):
        self.events.append(event)

    async def aclose(self):
        pass
