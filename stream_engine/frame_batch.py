"""The frames one step published, as columns: what the engine hands to sinks that take batches.

`Engine` publishes a step's frames as one `FrameBatch`: row i is one frame (landmarks (B, K, D), per-row
stream ids, seqs, epochs, indices, times, audio levels, stall marks, and the step's signals as `SignalBatch`
columns). A sink that declares `send_batch(batch)` (`outputs.FrameSink`) gets the batch and reads the columns
(the WebSocket server serialises its binary frames from them in one array pass,
`outputs.serializers.encode_binary_batch`); a sink without it gets `send_frames(batch.frames())`, the same
`LandmarkFrame` objects as before. Those objects are built only when something asks for them (`frames()`,
`frame(i)`: a frame subscriber, an old-style sink, a client's latest-wins queue), once per row.

    batch.stream_ids[i], batch.landmarks[i], batch.signals.mouth_open[i]   # columns, no objects
    batch.frame(i)                                                         # row i as a LandmarkFrame (cached)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from stream_engine.batch_signals import SignalBatch
from stream_engine.core import CommittedFrames, FrameTimings, LandmarkFrame, build_frames
from stream_engine.fast_init import maker
from stream_engine.signals import VISEMES, Signals

_MAKE_FRAME = maker(LandmarkFrame)
_MAKE_TIMINGS = maker(FrameTimings)


@dataclasses.dataclass(eq=False)
class FrameBatch(CommittedFrames):
    """B published frames as columns (row i = frame i; frames of one stream appear in order): the committed
    step's columns (`CommittedFrames`: stream ids, seqs, epochs, indices, times, levels, stall marks, landmarks
    (B, K, D) float32 with frame i's landmarks a view of row i, the step's infer/take times and the rows' slots)
    plus what publishing adds.

    Attributes:
        publish_ns: engine-clock ns the step was published.
        signals: the rows' signals as columns (`SignalBatch`), or None when no signals were derived.
        blendshapes: per row, what the engine's blendshape deriver returned (None: no deriver).
    """

    publish_ns: int = 0
    signals: SignalBatch | None = None
    blendshapes: list[Any] | None = None
    _frames: list[LandmarkFrame] | None = dataclasses.field(default=None, repr=False)
    _some: dict[int, LandmarkFrame] | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def published(cls, committed: CommittedFrames, publish_ns: int, signals: SignalBatch | None = None) -> FrameBatch:
        """The batch of a committed step (`EngineCore.commit_batch`), stamped with `publish_ns`."""
        c = committed
        return cls(
            c.stream_ids,
            c.seqs,
            c.epochs,
            c.indices,
            c.pts_ns,
            c.levels_dbfs,
            c.ahead_dbfs,
            c.stalled,
            c.audio_ready_ns,
            c.landmarks,
            int(c.infer_start_ns),
            int(c.infer_end_ns),
            int(c.take_ns),
            c.rows,
            int(publish_ns),
            signals,
        )

    @classmethod
    def from_frames(cls, frames: Sequence[LandmarkFrame]) -> FrameBatch:
        """A batch holding `frames` (tests, adapters). All frames must have signals or none, landmarks of one
        shape, and (as in a published step) the same infer/take times: those of the first frame are kept, and
        `frame(i)` gives back frames equal to the given ones apart from that. Raises ValueError otherwise."""
        if not frames:
            raise ValueError("a FrameBatch needs at least one frame")
        sigs = [f.signals for f in frames]
        has = [s is not None for s in sigs]
        if any(has) and not all(has):
            raise ValueError("frames of one batch have signals or none")
        t = frames[0].timings
        return cls(
            [f.stream_id for f in frames],
            np.array([f.seq for f in frames], dtype=np.int64),
            np.array([f.epoch for f in frames], dtype=np.int64),
            np.array([f.index for f in frames], dtype=np.int64),
            np.array([f.pts_ns for f in frames], dtype=np.int64),
            np.array([f.audio_level_dbfs for f in frames], dtype=np.float64),
            np.array([f.audio_ahead_dbfs for f in frames], dtype=np.float64),
            np.array([bool(f.stalled) for f in frames]),
            np.array([f.timings.audio_ready_ns for f in frames], dtype=np.int64),
            np.stack([np.asarray(f.landmarks, dtype=np.float32) for f in frames]),
            t.infer_start_ns,
            t.infer_end_ns,
            t.take_ns,
            publish_ns=t.publish_ns,
            signals=signal_columns(sigs) if all(has) else None,
            blendshapes=[f.blendshapes for f in frames] if any(f.blendshapes is not None for f in frames) else None,
        )

    def frames(self) -> list[LandmarkFrame]:
        """Every row as a `LandmarkFrame` (built on the first call, then the same objects; a row already built
        by `frame(i)` is reused)."""
        if self._frames is None:
            self._frames = self._build()
        return self._frames

    def frame(self, i: int) -> LandmarkFrame:
        """Row i as a `LandmarkFrame` (built once; the same object `frames()[i]` is)."""
        if self._frames is not None:
            return self._frames[i]
        some = self._some
        if some is None:
            some = self._some = {}
        f = some.get(i)
        if f is None:
            f = some[i] = self._build_one(i)
        return f

    def set_frames(self, frames: list[LandmarkFrame]) -> None:
        """Replace the row objects (the engine's blendshape deriver attaches `blendshapes` to each frame)."""
        if len(frames) != len(self):
            raise ValueError(f"{len(frames)} frames for a batch of {len(self)}")
        self._frames = frames
        self.blendshapes = [f.blendshapes for f in frames]

    def _timings(self, ready: int) -> FrameTimings:
        t: FrameTimings = _MAKE_TIMINGS(ready, self.infer_start_ns, self.infer_end_ns, self.publish_ns, self.take_ns)
        return t

    def _build_one(self, i: int) -> LandmarkFrame:
        sig = None if self.signals is None else self.signals.signals(i)
        blend = None if self.blendshapes is None else self.blendshapes[i]
        frame: LandmarkFrame = _MAKE_FRAME(
            self.stream_ids[i],
            int(self.seqs[i]),
            int(self.epochs[i]),
            int(self.indices[i]),
            int(self.pts_ns[i]),
            self.landmarks[i],
            float(self.levels_dbfs[i]),
            float(self.ahead_dbfs[i]),
            self._timings(int(self.audio_ready_ns[i])),
            sig,
            bool(self.stalled[i]),
            blend,
        )
        return frame

    def _build(self) -> list[LandmarkFrame]:
        sigs = None if self.signals is None else self.signals.rows()
        out = build_frames(self, self.publish_ns, sigs, self.blendshapes)
        for i, f in (self._some or {}).items():
            out[i] = f
        return out


def signal_columns(signals: Sequence[Signals]) -> SignalBatch:
    """`Signals` objects -> one `SignalBatch` (blendshapes only when every row has them)."""
    blend = [s.blendshapes for s in signals]
    return SignalBatch(
        mouth_open=np.array([s.mouth_open for s in signals], dtype=np.float64),
        visemes=np.array([[s.visemes[v] for v in VISEMES] for s in signals], dtype=np.float64).reshape(-1, 5),
        blink=np.array([s.blink for s in signals], dtype=np.float64),
        head_deg=np.array(
            [(s.head.yaw_deg, s.head.pitch_deg, s.head.roll_deg) for s in signals], dtype=np.float64
        ).reshape(-1, 3),
        audio_dbfs=np.array([s.audio_dbfs for s in signals], dtype=np.float64),
        silent=np.array([bool(s.silent) for s in signals]),
        blendshapes=None if any(b is None for b in blend) else np.stack([np.asarray(b) for b in blend]),
    )
