"""The level of a stream's background sound, tracked by minimum statistics (per stream and per slot).

The speech gate of the rig signals (`signals.SignalExtractor`, `batch_signals.BatchSignalExtractor`) counts a
frame as speech when its level stands a margin above the stream's noise floor, instead of above one fixed
level: speech 40 dB quieter than usual still opens the mouth, and a fan 25 dB below the voice does not.

Method: minimum statistics (R. Martin, "Noise power spectral density estimation based on optimal smoothing
and minimum statistics", IEEE Trans. Speech and Audio Processing 9(5), 2001, and his earlier "Spectral
subtraction based on minimum statistics", EUSIPCO 1994): in speech, the level drops to the background
between syllables and words many times a second, so the minimum of the frame levels over a window of a
second or two follows the background and ignores the speech. Martin's memory-saving form is used: the window
is split into `subwindows` sub-windows: the one in progress and the minima of the `subwindows - 1` completed
before it, kept in a ring; the floor is the minimum of all of them. A sub-window closes at the first frame at
which `window_s / subwindows` of stream time have passed in it (at 40 ms frames and the defaults, 13 frames:
0.52 s). The floor therefore

- falls as fast as the smoother follows (at 0.8, a drop of 30 dB is within 3 dB of the new level after 11 frames), and
- rises slowly: a louder background is adopted only once every sub-window that saw the older, quieter one has
  left the ring, between `(subwindows - 1) / subwindows` of the window and the whole window later.

Here the levels are whole-band frame RMS levels in dBFS (one per 40 ms frame), not spectral bins, and there is
no bias compensation: the minimum of a steady noise's frame levels lies a dB or two below their mean, which
the gate's margin absorbs. Before the first `window_s` of a stream, the sub-windows not yet measured hold
`init_dbfs`, so a stream that starts with speech is not taken for a loud background.

A stream that starts inside steady noise (a fan, a hiss, a hum: what a microphone hears before its user speaks)
would then pass for speech until that first window had gone by, and the rig's mouth would open for up to two
seconds. So, until the first window is measured, a steady start is adopted early: once the last
`start_steady_frames` heard smoothed levels lie within `start_steady_db` of each other, every sub-window not yet
measured takes the lowest of them instead of `init_dbfs` (again at every such frame). The frames must be
consecutive: a skipped frame (below `skip_below_dbfs`) starts the count again, or quiet speech whose pauses
fall below it would be heard as its syllables alone, which can be steady. Speech is rarely that
steady (its level moves by 10 dB or more between syllables), so a stream that starts with speech keeps
`init_dbfs`; where a sustained vowel is taken for a background, the floor falls back at the next quieter frame,
since it falls at once. Measured in `benchmarks/gate_start.py` (results in `benchmarks/results/gate_start.md`):
8 frames within 2 dB closes the rig's mouth ~0.6 s into a stream that starts in noise instead of ~2 s, and
keeps ~98 % of the mouth opening in the first 2 s of streams that start with real speech. A background whose
level itself wanders by more than that from frame to frame is not taken early (2 of the benchmark's 16 random
spectra, heavy in low rumble, swing 10-14 dB over their first 16 frames: those streams still open until the
window is measured).

As in Martin's method the minimum is taken over smoothed levels, not raw ones: each heard frame's level enters
a first-order smoother, `smoothed = smoothing * smoothed + (1 - smoothing) * level` (in dB; the signals use 0.8
per 40 ms frame, a time constant of about 180 ms; Martin's alpha is about 0.85 at 32 ms hops). A single frame
that is partly silence (a background cut off, or back, in the middle of a frame) or a fade of up to about 250 ms
(a noise gate's release; 0.7 let a linear 250 ms fade through, tests/test_speech_gate.py) then no longer drags the floor down, which a raw minimum did: the returning background
passed for speech until the window had gone by. The price: in running speech the floor sits higher than the
background (short pauses are smoothed), so more of the weakest speech frames count as silence
(benchmarks/results/speech_gate.md).

Frames below `skip_below_dbfs` (the gate's absolute floor: digital silence, dither, a muted microphone, the
silence a stalled stream is continued with) are skipped: neither their level nor their time enters the
tracker, so the floor still holds the background heard before them. Otherwise a second of digital silence
(push-to-talk released, a network stall) would pull the floor down to it, and the background coming back
would pass for speech until a whole window had gone by.

State is explicit: `NoiseFloor` holds one stream's ring, `BatchNoiseFloor` the same for `capacity` slots as
arrays; fed the same levels and frame intervals, the two give identical floors (same operations, same order).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class NoiseFloorConfig:
    """How a noise floor is tracked (module docstring).

    Attributes:
        window_s: length of the minimum-statistics window in seconds (stream time).
        subwindows: number of sub-windows it is split into (the floor rises in steps of `window_s / subwindows`).
        init_dbfs: the floor assumed until the first window has been measured, dBFS.
        skip_below_dbfs: frames quieter than this are skipped, dBFS.
        smoothing: weight of the previous smoothed level per heard frame, in [0, 1) (0 = raw levels).
        start_steady_frames: before the first window is measured, this many heard frames whose smoothed levels
            lie within `start_steady_db` make the unmeasured sub-windows take their lowest level (module
            docstring); 0 = off (the sub-windows hold `init_dbfs` until measured).
        start_steady_db: the largest spread, dB, of those levels that counts as steady.
    Raises:
        ValueError: window_s <= 0, subwindows < 2, smoothing outside [0, 1), start_steady_frames < 0 or
            start_steady_db < 0.
    """

    window_s: float = 2.0
    subwindows: int = 4
    init_dbfs: float = -90.0
    skip_below_dbfs: float = -math.inf
    smoothing: float = 0.0
    start_steady_frames: int = 0
    start_steady_db: float = 2.0

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.subwindows < 2:
            raise ValueError("the noise-floor window must be positive and have at least two sub-windows")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError("the noise-floor smoothing must be in [0, 1)")
        if self.start_steady_frames < 0 or self.start_steady_db < 0:
            raise ValueError("the noise floor's steady-start frames and spread must be >= 0")

    @property
    def sub_s(self) -> float:
        """Length of one sub-window, seconds."""
        return float(self.window_s) / int(self.subwindows)


class NoiseFloor:
    """One stream's noise floor (module docstring), tracked as `cfg` says."""

    def __init__(self, cfg: NoiseFloorConfig) -> None:
        self.cfg, self.sub_s = cfg, cfg.sub_s
        self._smoothed: float | None = None  # smoothed level of the heard frames (None: none heard yet)
        self._minima = [float(cfg.init_dbfs)] * (int(cfg.subwindows) - 1)  # completed sub-windows (ring)
        self._next = 0  # ring position the next completed sub-window replaces
        self._current = math.inf  # minimum of the sub-window in progress
        self._elapsed_s = 0.0  # stream time in the sub-window in progress
        self._measured = 0  # completed sub-windows, up to len(_minima) (then the steady start is over)
        self._recent: list[float] = []  # the last start_steady_frames smoothed levels, while not all measured

    def update(self, level_dbfs: float, dt_s: float) -> float:
        """Add one frame of level `level_dbfs` (dBFS) lasting `dt_s` seconds; returns the floor in dBFS,
        this frame included (a skipped frame returns the floor unchanged)."""
        if level_dbfs < self.cfg.skip_below_dbfs:
            self._recent = []  # a steady start needs consecutive heard frames
            return self.floor_dbfs
        a, prev = self.cfg.smoothing, self._smoothed
        level = float(level_dbfs) if prev is None else a * prev + (1.0 - a) * float(level_dbfs)
        self._smoothed = level
        self._current = min(self._current, level)
        n = int(self.cfg.start_steady_frames)
        if n > 0 and self._measured < len(self._minima):  # a steady start (module docstring)
            self._recent = [*self._recent[-(n - 1) :], level] if n > 1 else [level]
            if len(self._recent) == n and max(self._recent) - min(self._recent) <= self.cfg.start_steady_db:
                low = min(self._recent)
                for j in range(self._measured, len(self._minima)):  # the ring fills 0, 1, ... before it wraps
                    self._minima[j] = low
        floor = min(self._current, min(self._minima))
        self._elapsed_s += dt_s
        if self._elapsed_s >= self.sub_s:
            self._minima[self._next] = self._current
            self._next = (self._next + 1) % len(self._minima)
            self._current = math.inf
            self._elapsed_s = 0.0
            self._measured = min(self._measured + 1, len(self._minima))
        return floor

    @property
    def floor_dbfs(self) -> float:
        """The floor now, dBFS (without a new frame)."""
        return min(self._current, min(self._minima))


class BatchNoiseFloor:
    """`NoiseFloor` for `capacity` slots, as arrays (the batched twin; identical values slot by slot)."""

    def __init__(self, cfg: NoiseFloorConfig, capacity: int) -> None:
        self.cfg, self.sub_s = cfg, cfg.sub_s
        self.smoothed = np.full(capacity, np.nan)  # NaN: no frame heard yet
        self.minima = np.full((capacity, int(cfg.subwindows) - 1), float(cfg.init_dbfs))
        self.next = np.zeros(capacity, dtype=np.int64)
        self.current = np.full(capacity, np.inf)
        self.elapsed = np.zeros(capacity)
        self.measured = np.zeros(capacity, dtype=np.int64)  # completed sub-windows, up to subwindows - 1
        self.recent = np.full((capacity, max(1, int(cfg.start_steady_frames))), np.nan)  # ring of smoothed levels
        self.heard = np.zeros(capacity, dtype=np.int64)  # consecutive heard frames in `recent` (next row: heard % n)

    def open(self, slot: int) -> None:
        """Start the slot afresh (as a new `NoiseFloor`)."""
        self.minima[slot] = float(self.cfg.init_dbfs)
        self.next[slot] = 0
        self.current[slot] = np.inf
        self.elapsed[slot] = 0.0
        self.smoothed[slot] = np.nan
        self.measured[slot] = 0
        self.recent[slot] = np.nan
        self.heard[slot] = 0

    def floor_dbfs(self, slot: int) -> float:
        """The slot's floor now, dBFS (without a new frame; `NoiseFloor.floor_dbfs`)."""
        return float(min(self.current[slot], self.minima[slot].min()))

    def update(self, slots: np.ndarray, level_dbfs: np.ndarray, dt_s: np.ndarray) -> np.ndarray:
        """One frame of each listed slot: slots (B,) distinct, level_dbfs (B,) dBFS, dt_s (B,) seconds ->
        floors (B,) dBFS, each frame included (skipped frames: the floor unchanged)."""
        level_dbfs = np.asarray(level_dbfs, dtype=np.float64)  # float32 levels would smooth in float32
        heard = level_dbfs >= self.cfg.skip_below_dbfs
        a, prev = self.cfg.smoothing, self.smoothed[slots]
        level = np.where(np.isnan(prev), level_dbfs, a * prev + (1.0 - a) * level_dbfs)
        self.smoothed[slots] = np.where(heard, level, prev)
        current = np.where(heard, np.minimum(self.current[slots], level), self.current[slots])
        n, width = int(self.cfg.start_steady_frames), self.minima.shape[1]
        if n > 0:  # a steady start (module docstring), for the heard frames of slots not yet all measured
            self.heard[slots[~heard]] = 0  # a steady start needs consecutive heard frames
            starting = heard & (self.measured[slots] < width)
            if starting.any():
                rows = slots[starting]
                self.recent[rows, self.heard[rows] % n] = level[starting]
                self.heard[rows] += 1
                recent = self.recent[rows]
                steady = (self.heard[rows] >= n) & (recent.max(axis=1) - recent.min(axis=1) <= self.cfg.start_steady_db)
                if steady.any():
                    rows, low = rows[steady], recent[steady].min(axis=1)
                    unmeasured = np.arange(width)[None, :] >= self.measured[rows][:, None]
                    self.minima[rows] = np.where(unmeasured, low[:, None], self.minima[rows])
        floor: np.ndarray = np.minimum(current, self.minima[slots].min(axis=1))
        elapsed = self.elapsed[slots] + np.where(heard, dt_s, 0.0)
        done = elapsed >= self.sub_s
        if done.any():
            rows = slots[done]
            self.minima[rows, self.next[rows]] = current[done]
            self.next[rows] = (self.next[rows] + 1) % width
            self.measured[rows] = np.minimum(self.measured[rows] + 1, width)
            current = np.where(done, np.inf, current)
            elapsed = np.where(done, 0.0, elapsed)
        self.current[slots] = current
        self.elapsed[slots] = elapsed
        return floor
