"""Parity between backends: each runs its own autoregressive loop from the same initial state, feeding back its
own state, and the landmark frames are compared step by step (so drift is part of what is measured).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from stream_engine.runtime.base import State, StepRunner

#: Clips whose concatenation gives the parity test one minute of real speech (../shared/data/clips).
PARITY_CLIPS = ("stmux__Obama_clip2.mkv", "stmux__andrew_clip_2.mkv", "stmux__reagan_clip1.mkv")


def load_speech(
    seconds: float, data_dir: str | Path, clip_ids: tuple[str, ...] = PARITY_CLIPS, sample_rate_hz: int = 16000
) -> np.ndarray:
    """At least `seconds` of real speech: the named clips (then any others, sorted) concatenated, cut to
    `seconds`. Returns (num_samples,) float32."""
    from stream_engine.audio_io import load_audio

    clips = Path(data_dir) / "clips"
    paths = [clips / f"{c}.flac" for c in clip_ids if (clips / f"{c}.flac").is_file()]
    paths += [p for p in sorted(clips.glob("*.flac")) if p not in paths]
    need = int(round(seconds * sample_rate_hz))
    pieces, total = [], 0
    for p in paths:
        if total >= need:
            break
        a = load_audio(p, sample_rate_hz)
        pieces.append(a)
        total += a.size
    if total < need:
        raise FileNotFoundError(f"{clips}: only {total / sample_rate_hz:.1f} s of audio, {seconds} s needed")
    return np.concatenate(pieces)[:need].astype(np.float32)


@dataclasses.dataclass
class ParityReport:
    """Result of :func:`compare_runners`.

    Attributes:
        per_step_max: (T,) max |a - b| over streams, landmarks and coordinates at each step.
        state_max: final max |a - b| of every state.
        landmark_range: (min, max) of the reference run's landmarks (shows the rollout stayed bounded).
    """

    steps: int
    batch: int
    per_step_max: np.ndarray
    state_max: dict[str, float]
    landmark_range: tuple[float, float]
    seconds: dict[str, float]

    @property
    def max_abs_diff(self) -> float:
        return float(self.per_step_max.max()) if self.per_step_max.size else 0.0

    def summary(self) -> dict:
        marks = sorted({0, min(99, self.steps - 1), min(999, self.steps - 1), self.steps - 1})
        return {
            "steps": self.steps,
            "batch": self.batch,
            "max_abs_diff": self.max_abs_diff,
            "diff_at_step": {str(i + 1): float(self.per_step_max[i]) for i in marks if i >= 0},
            "final_state_max_abs_diff": self.state_max,
            "landmark_range": list(self.landmark_range),
            "seconds": self.seconds,
        }


def compare_runners(reference: StepRunner, other: StepRunner, audio: np.ndarray, state: State) -> ParityReport:
    """Run both backends over `audio` ((B, T * samples_per_frame) or 1-D) from the same `state`."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    spf = reference.contract.samples_per_frame
    steps = audio.shape[1] // spf
    sa = {k: v.copy() for k, v in state.items()}
    sb = {k: v.copy() for k, v in state.items()}
    diffs = np.zeros(steps)
    lo, hi = np.inf, -np.inf
    ta = tb = 0.0
    for t in range(steps):
        chunk = audio[:, t * spf : (t + 1) * spf]
        t0 = time.perf_counter()
        la, sa = reference.step(chunk, sa)
        t1 = time.perf_counter()
        lb, sb = other.step(chunk, sb)
        tb += time.perf_counter() - t1
        ta += t1 - t0
        diffs[t] = float(np.max(np.abs(la - lb)))
        lo, hi = min(lo, float(la.min())), max(hi, float(la.max()))
    state_max = {k: float(np.max(np.abs(sa[k] - sb[k]))) for k in sa}
    return ParityReport(
        steps, audio.shape[0], diffs, state_max, (lo, hi), {"reference": round(ta, 3), "other": round(tb, 3)}
    )
