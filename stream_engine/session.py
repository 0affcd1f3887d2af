"""One stream's handle in the asyncio engine: identity, slot, epoch, signals, subscriptions and counters.

The model state of a stream lives in its slot of the core's state store (`EngineCore.slots`); its audio FIFO
and epoch live in the core too; its signal state in its slot of the engine's `BatchSignalExtractor` (or, with
`EngineConfig.batch_signals` off or for a free-standing session, in the session's own `SignalExtractor`). A
`Session` is what `Engine.open_stream` returns: it adds where its audio comes from, the callbacks
subscribed to its frames, and statistics for the live latency line and `/health`. Its methods (`push`,
`reset`, `flush`, `close`, `subscribe`) act on this one stream.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from stream_engine.core import FrameTimings, LandmarkFrame
from stream_engine.landmarks import crop_coordinates
from stream_engine.signals import SignalConfig, SignalExtractor, Signals

if TYPE_CHECKING:
    from stream_engine.engine import Engine

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class ReferenceFaceError(ValueError):
    """A reference face that cannot be used (unreadable, wrong shape, no face in the image)."""


def reference_face_from_points(points: npt.ArrayLike, num_landmarks: int = 68) -> np.ndarray:
    """(num_landmarks, 2) normalised crop coordinates from a point list.

    Points with any coordinate above 1.5 are taken as pixels and normalised with the same fixed-crop rule as
    the training data (`landmarks.fixed_crop`).
    """
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise ReferenceFaceError("reference face must be a list of [x, y] points") from None
    if pts.shape != (num_landmarks, 2):
        raise ReferenceFaceError(f"reference face must have {num_landmarks} [x, y] points, got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ReferenceFaceError("reference face contains NaN or infinite coordinates")
    try:
        return crop_coordinates(pts)  # pixels normalised
    except ValueError as exc:
        raise ReferenceFaceError(f"reference face: {exc}") from None


#: Entry-point group of the image -> 68-point extractors (`path -> (68, 2) pixels`); the runtime finds dlib's
#: (in the training package, a training dependency) through it instead of importing training.
FACE_LANDMARKS_GROUP = "msync.face_landmarks"


def image_landmarker() -> Callable[[Path], np.ndarray]:
    """The registered image -> landmarks extractor (`path -> (68, 2)` float pixels of the largest face).

    Raises:
        ImportError: none is registered (msync not installed) or it cannot be imported (dlib/PyAV missing).
    """
    from importlib.metadata import entry_points

    found = sorted(entry_points(group=FACE_LANDMARKS_GROUP), key=lambda ep: ep.name)
    if not found:
        raise ImportError(f"no {FACE_LANDMARKS_GROUP!r} entry point is installed (pip install -e .)")
    extractor: Callable[[Path], np.ndarray] = found[0].load()
    return extractor


def load_reference_face(path: str | Path, num_landmarks: int = 68) -> np.ndarray:
    """A per-stream reference face from a 68-point JSON file or a still image.

    JSON: ``[[x, y], ...]`` or ``{"landmarks": [[x, y], ...]}``, normalised crop coordinates or pixels.
    Image: the 68-point extractor registered under the "msync.face_landmarks" entry point (`image_landmarker`;
    msync registers dlib's, `training.data.face:landmarks_from_image`, which needs the `train` extra).

    Returns:
        (num_landmarks, 2) float32 normalised coordinates.
    Raises:
        ReferenceFaceError: with what went wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise ReferenceFaceError(f"{path}: no such reference face file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        try:
            landmarks_from_image = image_landmarker()
        except ImportError as exc:
            raise ReferenceFaceError(
                f"{path}: reference faces from images need the dlib face extractor (pip install 'msync[train]'): {exc}"
            ) from None
        try:
            return reference_face_from_points(landmarks_from_image(path), num_landmarks)
        except ReferenceFaceError:
            raise
        except Exception as exc:  # FaceError (no face, unreadable image) and decoder errors
            raise ReferenceFaceError(f"{path}: {exc}") from None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReferenceFaceError(f"{path}: not a readable JSON landmark file ({exc})") from None
    if isinstance(data, dict):
        data = data.get("landmarks", data.get("reference_face"))
    return reference_face_from_points(data, num_landmarks)


class SlotRecentValues:
    """The last `maxlen` values of a per-frame statistic of one slot of a (slots, maxlen) float32 ring store
    (`SlotStats`; the engine appends a whole step's values with `SlotStats.record`): `append`, `len`,
    `values`, iteration (oldest first, Python floats), `maxlen`, `total` (values appended over its life)."""

    __slots__ = ("_buf", "_counts", "_slot")

    def __init__(self, buf: np.ndarray, counts: np.ndarray, slot: int) -> None:
        self._buf, self._counts, self._slot = buf, counts, slot

    @property
    def maxlen(self) -> int:
        return int(self._buf.shape[1])

    @property
    def total(self) -> int:
        return int(self._counts[self._slot])

    def append(self, value: float) -> None:
        n = int(self._counts[self._slot])
        self._buf[self._slot, n % self._buf.shape[1]] = value
        self._counts[self._slot] = n + 1

    def __len__(self) -> int:
        return min(self.total, self.maxlen)

    def values(self) -> np.ndarray:
        """(len,) float32 copy, oldest first."""
        row, n, m = self._buf[self._slot], self.total, self.maxlen
        i = n % m
        ordered: np.ndarray = row[:n].copy() if n <= m else np.concatenate((row[i:], row[:i]))
        return ordered

    def __iter__(self) -> Iterator[float]:
        return iter(self.values().tolist())

    def detached(self) -> RecentValues:
        """A free-standing copy, ring and count (the slot may go to another stream after this one closes)."""
        out = RecentValues(self.maxlen)
        out._buf[0] = self._buf[self._slot]
        out._counts[0] = self._counts[self._slot]
        return out


class RecentValues(SlotRecentValues):
    """The last `maxlen` values of a per-frame statistic, in one float32 ring preallocated with the stream (a
    `SlotRecentValues` over its own one-slot store).

    A `collections.deque(maxlen=...)` of Python floats costs about 32 bytes a value (a float object and its
    slot) and allocates a new float object every frame; this ring costs 4 bytes a value and allocates nothing
    after construction, so a stream's statistics stay a fixed, small size (1 KB for 250 values).
    Iterating yields the values oldest first, as Python floats (what a deque gave).
    """

    __slots__ = ()

    def __init__(self, maxlen: int = 250) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        super().__init__(np.zeros((1, maxlen), dtype=np.float32), np.zeros(1, dtype=np.int64), 0)


class SlotStats:
    """Per-frame statistics of every slot in arrays, so the engine records a whole step at once (one
    scatter per statistic, not a Python call per frame): the latest `maxlen` engine-added latencies and step
    times (ms) in (capacity, maxlen) float32 rings, frames published, and where the slot's newest frame is
    (its `FrameBatch` and row; the frame object is built only when `last_frame` is asked for).

    Args:
        capacity: slots 0 .. capacity - 1 (`grow` adds more).
        maxlen: values kept per slot and statistic.
    """

    def __init__(self, capacity: int, maxlen: int = 250) -> None:
        if capacity < 1 or maxlen < 1:
            raise ValueError("capacity and maxlen must be >= 1")
        self.capacity, self.maxlen = int(capacity), int(maxlen)
        self.latency_ms = np.zeros((capacity, maxlen), dtype=np.float32)
        self.infer_ms = np.zeros((capacity, maxlen), dtype=np.float32)
        self.counts = np.zeros(capacity, dtype=np.int64)  # latencies recorded per slot since `open` (= frames)
        self.counts_infer = np.zeros(capacity, dtype=np.int64)  # step times recorded (the same, kept apart)
        self.last: np.ndarray = np.full(capacity, None, dtype=object)  # FrameBatch or LandmarkFrame
        self.last_row = np.zeros(capacity, dtype=np.int64)  # the newest frame's row in `last` (-1: a frame)
        self.epochs = np.zeros(capacity, dtype=np.int64)  # the epoch of the slot's newest published frame
        self.live = np.zeros(capacity, dtype=bool)  # the slot's stream is open in the engine
        self.subscribed = np.zeros(capacity, dtype=bool)  # ... and has frame subscribers (`Session.subscribe`)

    def open(self, slot: int, epoch: int = 0) -> None:
        """A new stream in `slot`: no frames yet."""
        if slot >= self.capacity:
            self.grow(slot + 1)
        self.counts[slot] = self.counts_infer[slot] = 0
        self.last[slot] = None
        self.epochs[slot] = epoch
        self.live[slot], self.subscribed[slot] = True, False

    def close(self, slot: int) -> None:
        self.last[slot] = None  # the slot's newest batch is not kept alive by a closed stream
        self.live[slot] = self.subscribed[slot] = False

    def grow(self, capacity: int) -> None:
        """Room for slots up to `capacity - 1`, keeping every slot's values (the arrays are replaced: views
        made before see the old arrays; `Engine` re-binds its sessions)."""
        if capacity <= self.capacity:
            return
        n = self.capacity
        for name, old in list(vars(self).items()):
            if not isinstance(old, np.ndarray):
                continue
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            if old.dtype == object:
                new[:] = None
            new[:n] = old
            setattr(self, name, new)
        self.capacity = int(capacity)

    def record(self, slots: np.ndarray, latency_ms: np.ndarray, infer_ms: float, batch: object) -> None:
        """One published step: frame i of `batch` belongs to `slots[i]` (distinct slots)."""
        if slots.size <= 4:  # a few rows: scalar writes cost less than the fancy-indexed ones below
            m = self.maxlen
            for i, (slot, lat) in enumerate(zip(slots.tolist(), latency_ms.tolist())):
                n = self.counts.item(slot)
                self.latency_ms[slot, n % m] = lat
                self.infer_ms[slot, n % m] = infer_ms
                self.counts[slot] = n + 1
                self.counts_infer[slot] += 1
                self.last[slot] = batch
                self.last_row[slot] = i
            return
        counts = self.counts[slots]
        col = counts % self.maxlen
        self.latency_ms[slots, col] = latency_ms
        self.infer_ms[slots, col] = infer_ms
        self.counts[slots] = counts + 1
        self.counts_infer[slots] += 1
        self.last[slots] = batch
        self.last_row[slots] = np.arange(slots.size)

    def last_frame(self, slot: int) -> LandmarkFrame | None:
        """The slot's newest published frame (None before the first)."""
        holder = self.last[slot]
        if holder is None or isinstance(holder, LandmarkFrame):
            return holder
        frame: LandmarkFrame = holder.frame(int(self.last_row[slot]))
        return frame

    def set_last(self, slot: int, frame: LandmarkFrame) -> None:
        self.last[slot] = frame
        self.last_row[slot] = -1


@dataclasses.dataclass
class SessionStats:
    """Counters of one stream; the latest 250 engine-added latencies and step times (ms) per frame.

    `frames` (published frames) is how many latencies were recorded: one per frame."""

    resets: int = 0
    flushes: int = 0
    errors: int = 0
    last_error: str = ""
    engine_latency_ms: RecentValues | SlotRecentValues = dataclasses.field(default_factory=RecentValues)
    infer_ms: RecentValues | SlotRecentValues = dataclasses.field(default_factory=RecentValues)

    @property
    def frames(self) -> int:
        return self.engine_latency_ms.total


class Session:
    """Shell state of one stream.

    Args:
        stream_id: unique id.
        reference_face: (68, 2) normalised face the stream starts from (None = the model's).
        model_reference_face: the model's default face (the head-pose neutral when no reference is given).
        signal_cfg: how signals are derived; None disables signals for this stream.
        source: human-readable description of the input ("mic: USB", "ws 127.0.0.1:5555", ...).
        seed: per-stream randomness for procedural blinks.
        engine: the `Engine` that owns the stream (None for a free-standing session: the handle methods then
            raise RuntimeError).
    """

    def __init__(
        self,
        stream_id: str,
        reference_face: np.ndarray | None,
        model_reference_face: np.ndarray,
        signal_cfg: SignalConfig | None = SignalConfig(),
        source: str = "",
        seed: int | None = 0,
        engine: Engine | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.engine = engine
        self._subscribers: list[Callable[[LandmarkFrame], None]] = []
        self.reference_face = reference_face
        self.source = source
        neutral = reference_face if reference_face is not None else model_reference_face
        self.signals = SignalExtractor(signal_cfg, neutral, seed, stream_id) if signal_cfg is not None else None
        self.signal_slot: int | None = None  # slot in the engine's `BatchSignalExtractor` (None = own extractor)
        self.stats = SessionStats()
        self.epoch = 0
        self._last_frame: LandmarkFrame | None = None
        self._slot_stats: SlotStats | None = None  # the engine's store, when this session's statistics live there
        self._stats_slot = -1

    @property
    def subscribers(self) -> tuple[Callable[[LandmarkFrame], None], ...]:
        """The frame callbacks, read-only: change them with `subscribe` (and the function it returns), which
        also marks the stream for the engine (it builds frame objects only for subscribed streams)."""
        return tuple(self._subscribers)

    @property
    def last_frame(self) -> LandmarkFrame | None:
        """The newest frame published for this stream (None before the first)."""
        if self._slot_stats is not None:
            return self._slot_stats.last_frame(self._stats_slot)
        return self._last_frame

    def bind_stats(self, store: SlotStats, slot: int) -> None:
        """Keep this session's statistics in `slot` of the engine's `store` (the engine records whole steps
        there); called again after the store grows."""
        self._slot_stats, self._stats_slot = store, slot
        self._note_subscribers()
        self.stats.engine_latency_ms = SlotRecentValues(store.latency_ms, store.counts, slot)
        self.stats.infer_ms = SlotRecentValues(store.infer_ms, store.counts_infer, slot)

    def unbind_stats(self) -> None:
        """The stream closed: keep copies of its statistics (its slot may serve another stream next)."""
        store = self._slot_stats
        if store is None:
            return
        last = store.last_frame(self._stats_slot)
        lat, inf = self.stats.engine_latency_ms, self.stats.infer_ms
        if isinstance(lat, SlotRecentValues) and isinstance(inf, SlotRecentValues):
            self.stats.engine_latency_ms, self.stats.infer_ms = lat.detached(), inf.detached()
        self._slot_stats, self._stats_slot, self._last_frame = None, -1, last

    def derive(self, frame: LandmarkFrame, publish_ns: int) -> LandmarkFrame:
        """Attach signals (from this session's own `SignalExtractor`) and the publish time to a frame fresh out
        of the core."""
        if self.enter_epoch(frame) and self.signals is not None:
            self.signals.reset()
        signals = None
        if self.signals is not None:
            signals = self.signals.update(
                frame.landmarks, frame.pts_ns / 1e9, frame.audio_level_dbfs, frame.audio_ahead_dbfs
            )
        return self.attach(frame, publish_ns, signals)

    def enter_epoch(self, frame: LandmarkFrame) -> bool:
        """Follow the frame's epoch; True when it starts a new one (the stream's signal state must restart)."""
        if frame.epoch == self.epoch:
            return False
        self.epoch = frame.epoch
        return True

    def attach(self, frame: LandmarkFrame, publish_ns: int, signals: Signals | None) -> LandmarkFrame:
        """The published frame: `signals` (derived by the caller, e.g. the engine's `BatchSignalExtractor`) and
        the publish time attached; counts it in the stream's statistics."""
        t = frame.timings
        t = FrameTimings(t.audio_ready_ns, t.infer_start_ns, t.infer_end_ns, int(publish_ns), t.take_ns)
        out = LandmarkFrame(
            frame.stream_id,
            frame.seq,
            frame.epoch,
            frame.index,
            frame.pts_ns,
            frame.landmarks,
            frame.audio_level_dbfs,
            frame.audio_ahead_dbfs,
            t,
            signals,
            frame.stalled,
            frame.blendshapes,
        )
        self.published(out)
        return out

    def published(self, frame: LandmarkFrame) -> None:
        """Count a frame built for publishing (publish time and signals already on it) in the statistics."""
        t = frame.timings
        self.stats.infer_ms.append((t.infer_end_ns - t.infer_start_ns) / 1e6)
        self.stats.engine_latency_ms.append((t.publish_ns - t.audio_ready_ns) / 1e6)
        if self._slot_stats is not None:
            self._slot_stats.set_last(self._stats_slot, frame)
        else:
            self._last_frame = frame

    # ------------------------------------------------------------------ handle
    def _engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError(f"session {self.stream_id!r} has no engine")
        return self.engine

    @property
    def is_open(self) -> bool:
        return self.engine is not None and self.engine.sessions.get(self.stream_id) is self

    @property
    def slot(self) -> int:
        """The stream's row in the engine's state store."""
        return self._engine().core.slot_of(self.stream_id)

    def push(self, samples: np.ndarray, arrival_ns: int | None = None) -> None:
        """Mono float32 PCM at the model rate (`Engine.push_audio`; same errors)."""
        self._engine().push_audio(self.stream_id, samples, arrival_ns)

    def reset(self) -> int:
        """Barge-in (`Engine.reset`). Returns the new epoch."""
        return self._engine().reset(self.stream_id)

    def flush(self) -> int:
        """End of segment (`Engine.flush`). Returns the number of frames still to come."""
        return self._engine().flush(self.stream_id)

    def close(self) -> None:
        """Close the stream and free its slot (idempotent)."""
        if self.is_open:
            self._engine().close_stream(self.stream_id)

    def subscribe(self, callback: Callable[[LandmarkFrame], None]) -> Callable[[], None]:
        """Call `callback(frame)` on the event loop for every frame of this stream (after signals). Returns a
        function that unsubscribes. A callback that raises is logged and kept."""
        self._subscribers.append(callback)
        self._note_subscribers()

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)
                self._note_subscribers()

        return unsubscribe

    def _note_subscribers(self) -> None:
        if self._slot_stats is not None:
            self._slot_stats.subscribed[self._stats_slot] = bool(self._subscribers)

    def deliver(self, frame: LandmarkFrame) -> None:
        for callback in tuple(self._subscribers):
            try:
                callback(frame)
            except Exception as exc:
                log.warning("stream %s: a frame subscriber failed: %s", self.stream_id, exc)

    def note_error(self, message: str) -> None:
        self.stats.errors += 1
        self.stats.last_error = message

    def summary(self) -> dict[str, Any]:
        lat = self.stats.engine_latency_ms.values()
        return {
            "stream": self.stream_id,
            "source": self.source,
            "frames": self.stats.frames,
            "epoch": self.epoch,
            "resets": self.stats.resets,
            "errors": self.stats.errors,
            "last_error": self.stats.last_error,
            "engine_latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        }
