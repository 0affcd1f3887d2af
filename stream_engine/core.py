"""The engine core: many audio streams in, landmark frames out. Synchronous and free of I/O.

One shared `StepRunner` (the exported 40 ms step) serves every stream; each stream owns one row (slot) of
the state store the runner allocated (`runner.new_slots`, batch on dimension 0), and the same row of the core's
own per-slot arrays (its audio ring, arrival times, levels and counters: `EngineCore`, "Slot arrays"), so taking
a batch and committing it are array operations over the batch's rows, not a loop over streams. Audio is pushed
per stream in chunks of any length (or several streams' chunks in one `push_audio_many` call); whenever a stream
holds the samples of its next step, that step can run, and streams that are ready together are stepped in one
batched call::

    core = EngineCore(runner)
    core.open_stream("alice")
    core.push_audio("alice", samples_16k, arrival_ns=clock.now_ns())
    core.push_audio_many(["alice", "bob"], [chunk_a, chunk_b], arrival_ns=clock.now_ns())  # errors by position
    frames = core.process()            # take_batch -> run_batch -> commit, until nothing is ready

The asyncio shell (`engine.py`) uses the three parts separately so that the runner runs off the event loop
while pushes continue: ``batch = core.take_batch()``; ``core.run_batch(batch)`` in the inference thread
(the runner gathers the batch's slots, steps, and scatters the next state back in place); ``core.commit(batch,
...)`` afterwards. A slot in flight is touched only by `run_batch`: resets and closes of a stream in flight
take effect on its slot at commit.

Timing (DESIGN §2): step k of an epoch consumes samples [640k, 640k + 640) of that epoch and emits landmark
frame j = k - L, whose own audio is [640j, 640j + 640). The first L outputs of an epoch are the reference face
(look-ahead warm-up) and are dropped. A frame is emitted as soon as the sample 640(j + L + 1) - 1 has arrived;
its `audio_ready_ns` is the arrival time of the chunk that carried that sample. Frame presentation times
come from sample counts only (`clock.SampleClock`), so they never drift.

Epochs: `reset` (barge-in) drops pending audio and restarts the model state at once; `flush` (end of a
segment) pads the received audio with silence so every frame of it is emitted, then restarts the state.
Each restart begins a new epoch at the stream's current sample count; `seq` keeps counting across epochs.

Stalls (`fill_stalls`): a stream whose audio stops arriving for longer than the look-ahead plus a margin is
continued with silence on the wall clock, so its face returns to rest; such frames carry `stalled=True`.
Non-finite outputs: a row whose landmarks are not all finite is never turned into a frame; its stream is
restarted (new epoch) and the fault is reported by `take_faults`.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import mmap
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeGuard

import numpy as np

from stream_engine import core_kernel, fast_init
from stream_engine.clock import SampleClock
from stream_engine.landmarks import crop_coordinates
from stream_engine.runtime.base import StepRunner

log = logging.getLogger(__name__)


class CoreError(ValueError):
    """Base class of errors the core reports for one stream; other streams are unaffected."""


class AudioChunkError(CoreError):
    """A chunk that cannot be used (wrong shape, NaN or infinite samples). The stream is left unchanged."""


class OverloadError(CoreError):
    """A stream's pending audio would exceed `max_pending_samples` (input faster than the engine)."""


class UnknownStreamError(CoreError, KeyError):
    """No open stream has this id."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "unknown stream"


@dataclasses.dataclass(frozen=True, slots=True)
class FrameTimings:
    """Engine-clock timestamps (ns, `clock.Clock.now_ns`) of one landmark frame's life.

    Stages: audio_ready -> take (waiting for batch partners) -> infer_start (queued for the inference thread)
    -> infer_end (the step) -> publish (commit, signals, hand-off to the outputs).

    Attributes:
        audio_ready_ns: arrival of the chunk carrying the last audio sample this frame depends on.
        infer_start_ns, infer_end_ns: the runner call that produced it (shared by the whole batch).
        publish_ns: when the shell handed it to the outputs (0 until then). Each output adds its own send time.
        take_ns: when its step was taken into a batch (0 when the core was given no clock).
    """

    audio_ready_ns: int
    infer_start_ns: int
    infer_end_ns: int
    publish_ns: int = 0
    take_ns: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class LandmarkFrame:
    """One 40 ms landmark frame of one stream.

    Attributes:
        stream_id: the stream it belongs to.
        seq: per-stream sequence number, 0, 1, 2, ... across epochs (gaps never occur in the core).
        epoch: how many resets/flushes came before it in this stream.
        index: frame index within the epoch (j); its audio is samples [640j, 640j + 640) of the epoch.
        pts_ns: stream time of the frame's first audio sample: (epoch_start_sample + 640j) / rate.
        landmarks: (num_landmarks, landmark_dims) float32, normalised crop coordinates.
        audio_level_dbfs: RMS level of the frame's own 640 samples, dB re full scale (-120 for digital silence).
        audio_ahead_dbfs: loudest step level over the frame's look-ahead (the L frames after it); lets the
            mouth open before a sound within the look-ahead window.
        timings: engine-clock timestamps.
        signals: derived signals (`signals.Signals`), attached by the shell; None straight out of the core.
        stalled: the frame's own audio includes silence the engine added because the stream's audio stopped
            arriving (`EngineCore.fill_stalls`).
        blendshapes: name -> weight in [0, 1], attached by the shell's blendshape deriver; None otherwise.
    """

    stream_id: str
    seq: int
    epoch: int
    index: int
    pts_ns: int
    landmarks: np.ndarray
    audio_level_dbfs: float
    audio_ahead_dbfs: float
    timings: FrameTimings
    signals: Any = None
    stalled: bool = False
    blendshapes: Any = None

    @property
    def pts_ms(self) -> float:
        return self.pts_ns / 1e6


@dataclasses.dataclass(frozen=True)
class StepBatch:
    """Steps taken out of the core for one runner call (one step of each listed stream).

    Attributes:
        stream_ids, epochs, step_indices: per batch row, which stream/epoch/step it is.
        rows: (B,) the streams' slots in the core's state store (`EngineCore.slots`).
        audio: (B, samples_per_frame) float32.
        audio_ready_ns: per row, arrival of the last sample of that step.
        take_ns: when the batch was taken (engine clock, 0 when the core was given no clock).
        int_columns: (3, B) int64, the epochs, step indices and audio-ready times as one array (the core's
            compiled commit reads them from here instead of converting the tuples); None: from the tuples.
    """

    stream_ids: tuple[str, ...]
    epochs: tuple[int, ...]
    step_indices: tuple[int, ...]
    rows: np.ndarray
    audio: np.ndarray
    audio_ready_ns: tuple[int, ...]
    take_ns: int = 0
    int_columns: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.stream_ids)


@dataclasses.dataclass(slots=True)
class CommittedFrames:
    """The frames one step completed, as columns (`EngineCore.commit_batch`); `frames()` builds the objects.

    The asyncio shell derives the signals of a whole step from these arrays and publishes them as columns
    (`frame_batch.FrameBatch`); `LandmarkFrame` objects are built only for whoever asks for them.

    Attributes:
        stream_ids: per frame, as on `LandmarkFrame` (a list of str).
        seqs, epochs, indices, pts_ns, audio_ready_ns: (n,) int64, per frame, as on `LandmarkFrame` and
            `FrameTimings`.
        levels_dbfs, ahead_dbfs: (n,) float64, `audio_level_dbfs` and `audio_ahead_dbfs` (dBFS).
        stalled: (n,) bool.
        landmarks: (n, num_landmarks, landmark_dims) float32, owned (frame i's landmarks are row i).
        infer_start_ns, infer_end_ns, take_ns: shared by the whole step.
        rows: (n,) int64, each frame's slot in the core's state store (`EngineCore.slot_of` of its stream).
    """

    stream_ids: list[str]
    seqs: np.ndarray
    epochs: np.ndarray
    indices: np.ndarray
    pts_ns: np.ndarray
    levels_dbfs: np.ndarray
    ahead_dbfs: np.ndarray
    stalled: np.ndarray
    audio_ready_ns: np.ndarray
    landmarks: np.ndarray
    infer_start_ns: int = 0
    infer_end_ns: int = 0
    take_ns: int = 0
    rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.stream_ids)

    def select(self, keep: list[int]) -> CommittedFrames:
        """The frames at positions `keep`, in that order."""
        return CommittedFrames(
            [self.stream_ids[i] for i in keep],
            self.seqs[keep],
            self.epochs[keep],
            self.indices[keep],
            self.pts_ns[keep],
            self.levels_dbfs[keep],
            self.ahead_dbfs[keep],
            self.stalled[keep],
            self.audio_ready_ns[keep],
            self.landmarks[keep],
            self.infer_start_ns,
            self.infer_end_ns,
            self.take_ns,
            self.rows[keep] if self.rows.size else self.rows,
        )

    def frames(self) -> list[LandmarkFrame]:
        """The `LandmarkFrame` objects (row i's landmarks a view of `landmarks[i]`; publish time 0, no signals)."""
        return build_frames(self, 0)


def build_frames(
    columns: Any, publish_ns: int, signals: Iterable[Any] | None = None, blendshapes: Iterable[Any] | None = None
) -> list[LandmarkFrame]:
    """`LandmarkFrame` objects from frame columns (`CommittedFrames`, `frame_batch.FrameBatch`: the attributes
    stream_ids, seqs, epochs, indices, pts_ns, landmarks, levels_dbfs, ahead_dbfs, audio_ready_ns, stalled and
    the step's infer_start_ns, infer_end_ns, take_ns), each stamped with `publish_ns` and, when given, the i-th
    of `signals` and of `blendshapes`. Row i's landmarks are a view of `columns.landmarks[i]`."""
    c = columns
    t0, t1, take, pub = int(c.infer_start_ns), int(c.infer_end_ns), int(c.take_ns), int(publish_ns)
    sigs = itertools.repeat(None) if signals is None else signals
    blends = itertools.repeat(None) if blendshapes is None else blendshapes
    frame, timings = _MAKE_FRAME, _MAKE_TIMINGS  # the dataclasses, built without their frozen __init__
    return [
        frame(sid, seq, epoch, index, pts, lm, level, ahead, timings(ready, t0, t1, pub, take), sig, st, bs)
        for sid, seq, epoch, index, pts, lm, level, ahead, ready, sig, st, bs in zip(
            c.stream_ids,
            c.seqs.tolist(),
            c.epochs.tolist(),
            c.indices.tolist(),
            c.pts_ns.tolist(),
            c.landmarks,
            c.levels_dbfs.tolist(),
            c.ahead_dbfs.tolist(),
            c.audio_ready_ns.tolist(),
            sigs,
            c.stalled.tolist(),
            blends,
        )
    ]


def _sample_time_ns(samples: np.ndarray, rate: int) -> np.ndarray:
    """`SampleClock.time_ns` of int64 sample indices, exact: samples * 1e9 // rate, split as
    (samples // rate) * 1e9 + (samples % rate) * 1e9 // rate so that no product overflows int64 (the plain
    product would past 9.2e9 samples, 6.6 days at 16 kHz)."""
    whole, part = np.divmod(samples, rate)
    out: np.ndarray = whole * 1_000_000_000 + part * 1_000_000_000 // rate
    return out


_MAKE_FRAME = fast_init.maker(LandmarkFrame)
_MAKE_TIMINGS = fast_init.maker(FrameTimings)


class _SampleFifo:
    """A FIFO of float32 samples in one buffer: `push` copies a chunk in (the caller may reuse its array),
    `take` copies one step out with a single slice. The buffer holds the pending samples plus at most as many
    again (it grows by powers of two, moves the pending samples to its front when the end is reached, and
    shrinks when a backlog has drained), so a stream costs about its pending audio, as a list of chunks would."""

    __slots__ = ("_buf", "_head", "_tail", "size")

    _MIN = 2048  # samples (8 KB): a real-time stream's pending audio never needs more

    def __init__(self) -> None:
        self._buf = _NO_SAMPLES  # allocated on the first push (a stream's second FIFO is seldom used)
        self._head = 0  # first unconsumed sample
        self._tail = 0  # end of the pushed samples
        self.size = 0

    def push(self, samples: np.ndarray) -> None:
        n = samples.size
        if not n:
            return
        tail = self._tail
        if tail + n > self._buf.size:
            self._make_room(n)
            tail = self._tail
        self._buf[tail : tail + n] = samples
        self._tail = tail + n
        self.size += n

    def _make_room(self, n: int) -> None:
        """Move the pending samples to the front (of a buffer of the next power of two >= pending + n, when
        they and `n` more do not fit in this one)."""
        buf, head, size = self._buf, self._head, self.size
        if size + n > buf.size:
            self._resize(max(self._MIN, 1 << (size + n - 1).bit_length()))
        else:
            buf[:size] = buf[head : head + size]
            self._head, self._tail = 0, size

    def _resize(self, capacity: int) -> None:
        new = np.empty(capacity, dtype=np.float32)
        size = self.size
        new[:size] = self._buf[self._head : self._head + size]
        self._buf, self._head, self._tail = new, 0, size

    def take(self, num_samples: int, out: np.ndarray | None = None) -> np.ndarray:
        """Remove and return the first `num_samples` (caller checks `size`), into `out` when given."""
        head = self._head
        if out is None:
            out = self._buf[head : head + num_samples].copy()
        else:
            out[:] = self._buf[head : head + num_samples]
        size = self.size = self.size - num_samples
        if size:
            self._head = head + num_samples
            if size * 4 < self._buf.size > self._MIN:  # a backlog drained: give most of its buffer back
                self._resize(max(self._MIN, 1 << (2 * size - 1).bit_length()))
        else:
            self._head = self._tail = 0
            if self._buf.size > self._MIN:
                self._buf = _NO_SAMPLES
        return out

    def clear(self) -> None:
        self._head = self._tail = self.size = 0
        if self._buf.size > self._MIN:
            self._buf = _NO_SAMPLES


_NO_SAMPLES = np.zeros(0, dtype=np.float32)


#: The longest stream id, in UTF-8 bytes (the WebSocket protocol's limit, and every Python entry point's).
MAX_STREAM_ID_BYTES = 128


def is_stream_id(value: object) -> TypeGuard[str]:
    """A usable stream id: a non-empty string of at most `MAX_STREAM_ID_BYTES` UTF-8 bytes."""
    return isinstance(value, str) and bool(value) and len(value.encode("utf-8", "surrogatepass")) <= MAX_STREAM_ID_BYTES


class _Stream:
    """What the core keeps per stream in Python: identity, the slot, and the seldom-used queues. Everything the
    per-frame path reads or writes lives in the core's per-slot arrays (`EngineCore`, "Slot arrays")."""

    __slots__ = (
        "stream_id",
        "reference_face",
        "rng",
        "row",
        "overflow",
        "next_fifo",
        "next_arrivals",
        "next_flushes",
    )

    def __init__(self, stream_id: str, reference_face: np.ndarray | None, rng: np.random.Generator, row: int) -> None:
        self.stream_id = stream_id
        self.reference_face = reference_face
        self.rng = rng
        self.row = row  # the stream's slot in the core's state store and per-slot arrays
        # audio of the current epoch that did not fit in the slot's ring yet: (samples, arrival_ns, stall fill)
        self.overflow: collections.deque[tuple[np.ndarray, int, bool]] = collections.deque()
        self.next_fifo = _SampleFifo()  # audio that arrived while a flushed epoch drains
        self.next_arrivals: list[tuple[int, int]] = []  # (end sample relative to its first sample, arrival_ns)
        # flushes of that queued audio, oldest first: (end of the flushed segment in next_fifo, flush time ns);
        # each segment becomes an epoch of its own once the one before it has drained
        self.next_flushes: list[tuple[int, int]] = []


#: `EngineCore.push_audio_many`'s chunks: one (K, n) array, or K 1-D arrays
Chunks = np.ndarray | Sequence[np.ndarray]

_NO_RUNOUT = -(1 << 62)  # `_runout` of a stream that has received no real audio in this epoch


class EngineCore:
    """Shared runner + per-stream state; audio in, landmark frames out. No I/O, no threads, no clock reads.

    Slot arrays: a stream's row (`slot_of`) indexes the runner's state store and the core's own per-slot
    arrays, preallocated with the store and grown with it: the audio ring (slots, ring_steps, samples_per_frame)
    float32, where step k of the current epoch is ring row (k - base) mod ring_steps, so each step is one
    contiguous row; per ring row its arrival time (of the chunk carrying the step's last sample) and whether
    stall silence went into it; `base` moves to the next step whenever a take leaves less than a step in the
    ring (the partial step, if any, is copied to row 0), so a real-time stream keeps using the first rows and
    only a backlog reaches further (the ring's pages are touched as they are first used); per taken step (look-ahead + 1 of them) its level;
    and per slot the counters (epoch, samples written, steps taken and committed, sequence number, sample
    clock, stall state, flush end). `take_batch` and `commit` are a fixed number of numpy operations over the
    batch's rows whatever its size (batches of at most `small_batch` rows, 16, go row by row instead: there the
    ~70 array calls cost more than the rows); `push_audio_many` updates several streams in one pass. Audio beyond the
    ring (a backlog of more than `ring_steps` steps) waits in the stream's overflow queue and moves into the
    ring as steps are taken, and audio that arrives while a flushed epoch drains waits in its next-epoch queue.

    Args:
        runner: a `StepRunner` (its `contract` gives rate, samples per frame, look-ahead, landmark layout).
        max_batch_streams: most streams stepped in one runner call.
        max_pending_s: most seconds of audio a stream may hold before `push_audio` raises `OverloadError`.
        seed: base seed of the per-stream noise generators (stream i gets seed + i); None = random.
        capacity: rows preallocated in the state store (it doubles when more streams open; the asyncio engine
            preallocates its `max_streams` so it never grows while a step runs).
        ring_steps: steps of audio each slot's ring holds (>= 2; 128 = 5.12 s at 16 kHz, 320 KB of address space
            per slot, of which a real-time stream touches a few KB: see "Slot arrays").
        compiled: run push_audio_many's common case, take_batch and commit_batch as compiled loops
            (`core_kernel`, numba; the same state, batches and frames bit for bit); None (default): when numba is
            available; False: numpy; True: numba or RuntimeError. `warm_up` compiles them ahead.
    """

    def __init__(
        self,
        runner: StepRunner,
        max_batch_streams: int = 64,
        max_pending_s: float = 30.0,
        seed: int | None = None,
        capacity: int = 64,
        ring_steps: int = 128,
        compiled: bool | None = None,
    ) -> None:
        contract = runner.contract
        self.runner = runner
        self.contract = contract
        self.sample_rate_hz = int(contract.sample_rate_hz)
        self.samples_per_frame = int(contract.samples_per_frame)
        self.lookahead_frames = int(contract.lookahead_frames)
        self.num_landmarks = int(contract.num_landmarks)
        self.landmark_dims = int(contract.landmark_dims)
        if max_batch_streams < 1:
            raise ValueError("max_batch_streams must be >= 1")
        if ring_steps < 2:
            raise ValueError("ring_steps must be >= 2")
        self.max_batch_streams = int(max_batch_streams)
        self.max_pending_samples = int(max_pending_s * self.sample_rate_hz)
        self.sample_clock = SampleClock(self.sample_rate_hz)
        self.slots = runner.new_slots(max(1, int(capacity)))
        self.ring_steps = int(ring_steps)
        self.ring_samples = self.ring_steps * self.samples_per_frame
        self._orphans: set[int] = set()  # slots of streams closed while in flight: freed at commit
        self._faults: list[tuple[str, str]] = []
        self._in_flight_batches = 0
        self._streams: dict[str, _Stream] = {}
        self._seed = seed
        self._streams_opened = 0
        self._rr_row = 0  # round robin: the next batch starts at the first ready slot from here
        self.small_batch = 16  # batches of at most this many rows are taken and committed row by row
        self._row_of: dict[str, int] = {}  # open stream id -> its slot
        self._kernels = core_kernel.load() if compiled is not False else None
        self._require_compiled = bool(compiled)
        if compiled and self._kernels is None:
            raise RuntimeError("compiled core passes need numba (not installed, or MSYNC_NO_NUMBA=1)")
        self._alloc_arrays(self.slots.capacity)

    # ------------------------------------------------------------------ slot arrays
    # per-slot arrays, made by `_alloc_arrays` (rows = slots)
    _epoch: np.ndarray
    _ring_w: np.ndarray
    _taken: np.ndarray
    _committed: np.ndarray
    _epoch_start: np.ndarray
    _seq: np.ndarray
    _ending: np.ndarray
    _base: np.ndarray
    _runout: np.ndarray
    _over_n: np.ndarray
    _received: np.ndarray
    _epoch_in: np.ndarray
    _epoch_real: np.ndarray
    _stall_filled: np.ndarray
    _open: np.ndarray
    _in_flight: np.ndarray
    _needs_init: np.ndarray
    _stalled: np.ndarray
    _ints: np.ndarray
    _bools: np.ndarray
    _ring: np.ndarray
    _ready_ns: np.ndarray
    _fill_mark: np.ndarray
    _lvl: np.ndarray
    _lvl_stalled: np.ndarray
    _ring_flat: np.ndarray
    _capacity: int
    _row_ids: list[str | None]

    #: per-slot int64 arrays: `_<field>` is row i of `_ints` (`core_kernel.INT_FIELDS` says what each holds)
    _INT_ARRAYS = tuple("_" + name for name in core_kernel.INT_FIELDS)
    #: per-slot bool arrays: `_<field>` is row i of `_bools` (`core_kernel.BOOL_FIELDS`)
    _BOOL_ARRAYS = tuple("_" + name for name in core_kernel.BOOL_FIELDS)

    def _alloc_arrays(self, capacity: int) -> None:
        """Allocate (or grow to `capacity` rows, keeping the values) every per-slot array."""
        S, spf, A = self.ring_steps, self.samples_per_frame, self.lookahead_frames + 1
        shapes: dict[str, tuple[tuple[int, ...], Any]] = {
            "_ints": ((len(self._INT_ARRAYS), capacity), np.int64),  # one row per counter (the compiled passes
            "_bools": ((len(self._BOOL_ARRAYS), capacity), np.bool_),  # take two arrays, not fourteen)
        }
        shapes["_ring"] = ((capacity, S, spf), np.float32)  # audio: step k of the epoch in [:, k % S]
        shapes["_ready_ns"] = ((capacity, S), np.int64)  # arrival of step k's last sample, in [:, k % S]
        shapes["_fill_mark"] = ((capacity, S), np.bool_)  # stall silence went into step k
        shapes["_lvl"] = ((capacity, A), np.float64)  # taken step k's level (dBFS) in [:, k % (L + 1)]
        shapes["_lvl_stalled"] = ((capacity, A), np.bool_)
        old = self._capacity if hasattr(self, "_capacity") else 0
        for name, (shape, dtype) in shapes.items():
            grown = _lazy_zeros(shape, dtype) if name == "_ring" else np.zeros(shape, dtype)
            if old and name in ("_ints", "_bools"):
                grown[:, :old] = getattr(self, name)
            elif old and name != "_ring":
                grown[:old] = getattr(self, name)
            elif old:  # only the steps still held: a row's untouched pages stay untouched
                for row in np.flatnonzero(self._open).tolist():
                    taken = self._taken.item(row)
                    held = np.arange(taken, -(-self._ring_w.item(row) // spf))
                    idx = (held - self._base.item(row)) % S
                    grown[row, idx] = self._ring[row, idx]
            setattr(self, name, grown)
        for i, name in enumerate(self._INT_ARRAYS):
            setattr(self, name, self._ints[i])
        for i, name in enumerate(self._BOOL_ARRAYS):
            setattr(self, name, self._bools[i])
        if not old:
            self._row_ids = []
        self._row_ids += [None] * (capacity - old)
        self._capacity = capacity
        self._ring_flat = self._ring.reshape(capacity, S * spf)

    def _fit_arrays(self) -> None:
        if self.slots.capacity > self._capacity:
            self._alloc_arrays(self.slots.capacity)

    def _ring_write(self, row: int, samples: np.ndarray, arrival_ns: int, fill: bool) -> None:
        """Append float32 `samples` that fit (the caller checked) to the slot's ring, with their arrival time
        (for the steps whose last sample they carry) and whether they are stall silence."""
        n = samples.size
        w = self._ring_w.item(row)
        R, spf, S = self.ring_samples, self.samples_per_frame, self.ring_steps
        base = self._base.item(row)
        pos = (w - base * spf) % R
        if pos + n <= R:
            self._ring_flat[row, pos : pos + n] = samples
        else:
            head = R - pos
            flat = self._ring_flat[row]
            flat[pos:] = samples[:head]
            flat[: n - head] = samples[head:]
        k0, k1 = w // spf, (w + n) // spf  # steps whose last sample is in this piece: [k0, k1)
        if k1 - k0 == 1:
            self._ready_ns[row, (k0 - base) % S] = arrival_ns
        elif k1 > k0:
            self._ready_ns[row, (np.arange(k0, k1) - base) % S] = arrival_ns
        if fill:  # every step the silence touches: [w // spf, ceil((w + n) / spf))
            self._fill_mark[row, (np.arange(k0, -(-(w + n) // spf)) - base) % S] = True
        self._ring_w[row] = w + n

    def _ring_room(self, row: int) -> int:
        """Samples the slot's ring can still take before it holds `ring_steps` steps not yet taken."""
        room: int = self.ring_samples - (self._ring_w.item(row) - self._taken.item(row) * self.samples_per_frame)
        return room

    def _append(self, stream: _Stream, samples: np.ndarray, arrival_ns: int, fill: bool = False) -> None:
        """Append to the current epoch's audio: into the ring as far as it fits, the rest (and everything while
        older audio waits there) into the overflow queue. Copies: the caller may reuse its buffer."""
        row = stream.row
        n = samples.size
        if not n:
            return
        if not stream.overflow:
            room = self._ring_room(row)
            if n <= room:
                self._ring_write(row, samples, arrival_ns, fill)
                return
            if room > 0:
                self._ring_write(row, samples[:room], arrival_ns, fill)
                samples = samples[room:]
        stream.overflow.append((np.array(samples, dtype=np.float32), arrival_ns, fill))
        self._over_n[row] += samples.size

    def _refill(self, stream: _Stream) -> None:
        """Move overflow audio into the ring while it has room (after steps were taken)."""
        row, overflow = stream.row, stream.overflow
        room = self._ring_room(row)
        while overflow and room > 0:
            samples, arrival_ns, fill = overflow[0]
            if samples.size <= room:
                overflow.popleft()
            else:
                overflow[0] = (samples[room:], arrival_ns, fill)
                samples = samples[:room]
            self._ring_write(row, samples, arrival_ns, fill)
            self._over_n[row] -= samples.size
            room -= samples.size

    def _buffered(self, row: int) -> int:
        """Samples of the current epoch pushed but not yet taken (ring + overflow)."""
        n: int = self._ring_w.item(row) - self._taken.item(row) * self.samples_per_frame + self._over_n.item(row)
        return n

    # ------------------------------------------------------------------ lifecycle
    @property
    def stream_ids(self) -> list[str]:
        return list(self._streams)

    def has_stream(self, stream_id: str) -> bool:
        return stream_id in self._streams

    def open_stream(self, stream_id: str, reference_face: np.ndarray | None = None, seed: int | None = None) -> None:
        """Start a stream with a fresh runner state.

        Args:
            reference_face: (num_landmarks, landmark_dims) face the stream starts from, normalised crop
                coordinates (68 x 2 pixels are normalised: `landmarks.crop_coordinates`); None = the model's own
                (`contract.reference_face`).
            seed: noise seed for this stream (overrides the core's seed scheme).
        Raises:
            ValueError: the id is taken or the reference face has the wrong shape/values.
        """
        if stream_id in self._streams:
            raise ValueError(f"stream {stream_id!r} is already open")
        if reference_face is not None:
            face = np.asarray(reference_face, dtype=np.float64)
            expect = (self.num_landmarks, self.landmark_dims)
            if face.shape != expect:
                raise ValueError(f"reference face must have shape {expect}, got {face.shape}")
            if not np.all(np.isfinite(face)):
                raise ValueError("reference face contains NaN or infinite values")
            # pixels normalised, as the WebSocket hello and --reference-face do
            reference_face = crop_coordinates(face) if expect == (68, 2) else face.astype(np.float32)
        if seed is None and self._seed is not None:
            seed = self._seed + self._streams_opened
        self._streams_opened += 1
        if self._in_flight_batches and self.slots.used >= self.slots.capacity:
            raise CoreError(
                "the state store is full while a step runs; open the stream after it (or give the "
                "core a larger capacity)"
            )
        row = self.slots.alloc()
        self._fit_arrays()
        stream = _Stream(stream_id, reference_face, np.random.default_rng(seed), row)
        for name in self._INT_ARRAYS:
            getattr(self, name)[row] = 0
        for name in self._BOOL_ARRAYS:
            getattr(self, name)[row] = False
        self._epoch[row] = -1
        self._start_epoch(stream)
        self._open[row] = True
        self._row_ids[row] = stream_id
        self._row_of[stream_id] = row
        self._streams[stream_id] = stream

    def close_stream(self, stream_id: str) -> None:
        """Forget a stream and free its slot (at commit when a batch is in flight for it). Unknown ids are
        ignored."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        del self._row_of[stream_id]
        row = stream.row
        self._open[row] = False
        self._row_ids[row] = None
        if self._in_flight[row]:
            self._orphans.add(row)
        else:
            self._free_slot(row)

    def reset(self, stream_id: str) -> int:
        """Barge-in: drop the stream's pending audio and restart its model state now. Returns the new epoch."""
        stream = self._get(stream_id)
        self._restart(stream)
        return int(self._epoch[stream.row])

    def flush(self, stream_id: str, now_ns: int) -> int:
        """End of a segment: pad with silence so every received sample's frame is emitted, then restart.

        Audio pushed after the flush starts the next epoch once the padded steps have run. Returns the number
        of frames still to come from the flushed epoch.
        """
        stream = self._get(stream_id)
        row = stream.row
        if self._ending[row] >= 0:  # a flushed epoch is still draining
            queued, marks = stream.next_fifo.size, stream.next_flushes
            done = marks[-1][0] if marks else 0
            if queued > done:  # audio came after that flush: it is a segment of its own, flushed when it starts
                marks.append((queued, int(now_ns)))
                return -(-(queued - done) // self.samples_per_frame)
            if marks:  # nothing new since the last queued flush: its segment's frames are all still to come
                start = marks[-2][0] if len(marks) > 1 else 0
                return -(-(done - start) // self.samples_per_frame)
            return self._frames_left(row)  # nothing new since this flush
        real = self._epoch_real.item(row)
        if real == 0:
            return 0  # nothing received since the last restart
        spf = self.samples_per_frame
        frames_needed = -(-real // spf)  # ceil: every received sample's frame
        steps_needed = frames_needed + self.lookahead_frames if frames_needed else 0
        pad = steps_needed * spf - self._epoch_in.item(row)
        if pad > 0:
            self._epoch_in[row] += pad
            self._append(stream, np.zeros(pad, dtype=np.float32), int(now_ns))
        self._ending[row] = steps_needed
        if self._committed[row] >= steps_needed and not self._in_flight[row]:
            self._start_next_epoch(stream)
        return max(0, steps_needed - max(int(self._committed[row]), self.lookahead_frames))

    def _frames_left(self, row: int) -> int:
        return max(0, max(0, int(self._ending[row])) - max(int(self._committed[row]), self.lookahead_frames))

    # ------------------------------------------------------------------ audio in
    def _checked(self, stream_id: str, samples: Any) -> tuple[_Stream, np.ndarray]:
        """The stream and the chunk as float32 (n,), or the error that refuses it (nothing changed)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            raise UnknownStreamError(f"no open stream {stream_id!r}")
        if type(samples) is not np.ndarray:
            samples = np.asarray(samples)
        if samples.ndim != 1:
            raise AudioChunkError(f"audio must be mono (num_samples,), got shape {samples.shape}")
        dtype = samples.dtype
        if dtype != _FLOAT32 and samples.size:
            if dtype.kind != "f":
                raise AudioChunkError(f"audio must be floating point PCM in [-1, 1], got dtype {dtype}")
            samples = samples.astype(np.float32)  # checked as float32: values beyond its range are infinite
        if samples.size and not math.isfinite(float(samples.dot(samples))):  # one pass; NaN/inf propagate
            # (finite samples whose squares overflow float32 are out of range anyway and would be clipped)
            if not np.all(np.isfinite(samples)):
                raise AudioChunkError("audio chunk contains NaN or infinite samples")
        # values beyond [-1, 1] are clipped per batch in take_batch
        return stream, samples

    def _overload(self, stream: _Stream, n: int) -> OverloadError:
        return OverloadError(
            f"stream {stream.stream_id!r} would hold more than "
            f"{self.max_pending_samples / self.sample_rate_hz:.1f} s of unprocessed audio (input faster than "
            "the engine)"
        )

    def _accept(self, stream: _Stream, samples: np.ndarray, arrival_ns: int) -> bool:
        """Take a checked chunk (its room checked): the sample clock, run-out, stall state, then the audio.
        Returns whether the stream was stalled until this chunk."""
        row, n = stream.row, samples.size
        self._received[row] += n
        runout = self._runout.item(row)
        self._runout[row] = (arrival_ns if arrival_ns > runout else runout) + n * 1_000_000_000 // self.sample_rate_hz
        was_stalled = bool(self._stalled[row])
        if was_stalled:
            self._stalled[row] = False
            self._stall_filled[row] = 0
        if self._ending.item(row) >= 0:  # a flushed epoch is draining: this audio opens the next one
            stream.next_fifo.push(samples)  # a copy: the caller may reuse its buffer
            stream.next_arrivals.append((stream.next_fifo.size, arrival_ns))
            return was_stalled
        self._epoch_in[row] += n
        self._epoch_real[row] += n
        self._append(stream, samples, arrival_ns)
        return was_stalled

    def push_audio(self, stream_id: str, samples: np.ndarray, arrival_ns: int) -> bool:
        """Append mono PCM at the contract's rate to a stream (`push_audio_many` with one chunk).

        Args:
            samples: (num_samples,) float, nominally in [-1, 1] (values beyond are clipped). Empty is a no-op.
            arrival_ns: engine-clock time the chunk arrived (stamped on the frames that depend on it).
        Returns:
            whether the stream was stalled (being fed silence) until this chunk.
        Raises:
            UnknownStreamError, AudioChunkError (not 1-D, NaN/inf; the stream is unchanged), OverloadError.
        """
        stream, samples = self._checked(stream_id, samples)
        n = samples.size
        if n == 0:
            return False
        row, spf, R = stream.row, self.samples_per_frame, self.ring_samples
        w = self._ring_w.item(row)
        pending = w - self._taken.item(row) * spf + self._over_n.item(row) + stream.next_fifo.size
        if pending + n > self.max_pending_samples:
            raise self._overload(stream, n)
        arrival_ns = int(arrival_ns)
        base = self._base.item(row)
        pos = (w - base * spf) % R
        if pending + n > R or pos + n > R or self._stalled.item(row) or stream.overflow or self._ending.item(row) >= 0:
            return self._accept(stream, samples, arrival_ns)
        # the common case (`_accept` and `_ring_write` in one): room in the ring without wrapping, no overflow,
        # not stalled, not flushing. Written out rather than calling `_ring_write`: the call and its re-reads
        # cost ~0.35 us a push (20 % of it; measured when merging issue-14h), and this runs twice a frame per stream
        self._received[row] += n
        self._epoch_in[row] += n
        self._epoch_real[row] += n
        runout = self._runout.item(row)
        self._runout[row] = (arrival_ns if arrival_ns > runout else runout) + n * 1_000_000_000 // self.sample_rate_hz
        self._ring_flat[row, pos : pos + n] = samples
        k0, k1 = w // spf, (w + n) // spf  # steps whose last sample is in this chunk: [k0, k1)
        if k1 - k0 == 1:
            self._ready_ns[row, (k0 - base) % self.ring_steps] = arrival_ns
        elif k1 > k0:
            self._ready_ns[row, (np.arange(k0, k1) - base) % self.ring_steps] = arrival_ns
        self._ring_w[row] = w + n
        return False

    def push_audio_many(
        self, stream_ids: Sequence[str], chunks: Chunks, arrival_ns: int | Sequence[int]
    ) -> tuple[list[str], dict[int, CoreError]]:
        """Append one chunk to each of several streams in one call: the checks of `push_audio` for every chunk,
        then the accepted chunks scattered into the streams' rings together.

        Args:
            stream_ids: K ids; one id may appear more than once (its chunks are appended in order).
            chunks: K mono chunks (1-D arrays, any lengths), or one (K, n) float array (row i for stream i).
            arrival_ns: engine-clock arrival, one for all chunks or one per chunk.
        Returns:
            (ids of streams that were stalled until their chunk, {position: error} of the refused chunks).
            A refused chunk (unknown stream, not mono, not floating point, NaN/inf: `AudioChunkError`; more
            pending audio than `max_pending_s`: `OverloadError`) leaves its stream unchanged; the other chunks
            are taken. Empty chunks are no-ops.
        Raises:
            ValueError: lengths of `stream_ids`, `chunks` and `arrival_ns` differ (nothing changed).
        """
        k = len(stream_ids)
        if len(chunks) != k or (not isinstance(arrival_ns, int) and len(arrival_ns) != k):
            raise ValueError("push_audio_many needs one chunk (and one arrival time, when a list) per stream id")
        if self._kernels is not None:
            pushed = self._push_compiled(stream_ids, chunks, arrival_ns)
            if pushed is not None:
                return pushed
        times = [int(arrival_ns)] * k if isinstance(arrival_ns, int) else [int(t) for t in arrival_ns]
        errors: dict[int, CoreError] = {}
        resumed: list[str] = []
        block = None
        if isinstance(chunks, np.ndarray) and chunks.ndim == 2:
            block = _checked_block(chunks, errors)  # (K, n) float32, its bad rows already in `errors`
            if block.shape[1] == 0:
                return resumed, errors
        streams: list[_Stream] = []
        samples: list[np.ndarray] = []
        keep: list[int] = []
        for i, sid in enumerate(stream_ids):
            if i in errors:
                continue
            try:
                if block is not None:
                    stream = self._streams.get(sid)
                    if stream is None:
                        raise UnknownStreamError(f"no open stream {sid!r}")
                    s = block[i]
                else:
                    stream, s = self._checked(sid, chunks[i])
                    if not s.size:
                        continue
            except CoreError as exc:
                errors[i] = exc
                continue
            streams.append(stream)
            samples.append(s)
            keep.append(i)
        if not keep:
            return resumed, errors
        rows = np.fromiter((s.row for s in streams), dtype=np.intp, count=len(streams))
        sizes = np.fromiter((s.size for s in samples), dtype=np.int64, count=len(samples))
        spf, R = self.samples_per_frame, self.ring_samples
        # the common case, done for all at once: room in the ring (no overflow waiting, so nothing queued behind
        # a flush either), not flushing, not stalled
        pending = self._ring_w[rows] - self._taken[rows] * spf + self._over_n[rows]
        fast = (pending + sizes <= min(R, self.max_pending_samples)) & (self._ending[rows] < 0)
        fast &= self._over_n[rows] == 0
        fast &= ~self._stalled[rows]
        if np.unique(rows).size != rows.size:  # one stream twice: in order, one at a time
            fast[:] = False
        for j in np.flatnonzero(~fast).tolist():  # the cases with more to do, as `push_audio` does them
            stream, s, i = streams[j], samples[j], keep[j]
            if self._buffered(stream.row) + stream.next_fifo.size + s.size > self.max_pending_samples:
                errors[i] = self._overload(stream, s.size)
            elif self._accept(stream, s, times[i]):
                resumed.append(stream.stream_id)
        f = np.flatnonzero(fast)
        if not f.size:
            return resumed, errors
        r, n = rows[f], sizes[f]
        t = np.array([times[keep[j]] for j in f.tolist()], dtype=np.int64)
        self._runout[r] = np.maximum(t, self._runout[r]) + n * 1_000_000_000 // self.sample_rate_hz
        self._received[r] += n
        self._epoch_in[r] += n
        self._epoch_real[r] += n
        w = self._ring_w[r]
        base = self._base[r]
        pos = (w - base * spf) % R
        flat = self._ring_flat  # the copy of `_ring_write`, inline for the same reason as in `push_audio`
        for j, row, p, m in zip(f.tolist(), r.tolist(), pos.tolist(), n.tolist()):
            if p + m <= R:
                flat[row, p : p + m] = samples[j]
            else:
                head = R - p
                flat[row, p:] = samples[j][:head]
                flat[row, : m - head] = samples[j][head:]
        k0, k1 = w // spf, (w + n) // spf  # steps completed by each chunk: [k0, k1)
        one = k1 - k0 == 1
        self._ready_ns[r[one], (k0[one] - base[one]) % self.ring_steps] = t[one]
        for j in np.flatnonzero(k1 - k0 > 1).tolist():  # a chunk of several steps
            self._ready_ns[r[j], (np.arange(k0[j], k1[j]) - base[j]) % self.ring_steps] = t[j]
        self._ring_w[r] = w + n
        return resumed, errors

    def _push_compiled(
        self, stream_ids: Sequence[str], chunks: Chunks, arrival_ns: int | Sequence[int]
    ) -> tuple[list[str], dict[int, CoreError]] | None:
        """`push_audio_many` through `core_kernel.push_pass`: the chunks as one float32 buffer (a (K, n) block as
        it is; 1-D float32 arrays concatenated), the common case in the loop, the rest here in position order
        as the numpy code does it. None (nothing changed) for chunks the loop does not take: a list holding
        anything but 1-D float32 arrays (the numpy code converts or refuses them one by one)."""
        k = len(stream_ids)
        errors: dict[int, CoreError] = {}
        if isinstance(chunks, np.ndarray) and chunks.ndim == 2:
            block = _checked_block(chunks, errors)  # (K, n) float32, its bad rows already in `errors`
            n = block.shape[1]
            if n == 0:
                return [], errors
            flat = np.ascontiguousarray(block).reshape(-1)
            if not flat.flags.writeable:  # one array type for the loop (numba types read-only arrays apart)
                flat = flat.copy()
            sizes = np.full(k, n, dtype=np.int64)
            offsets = np.arange(0, k * n, n, dtype=np.int64)
        else:
            try:  # float32 only (casting="no"): the numpy code converts or refuses anything else chunk by chunk
                flat = np.concatenate(chunks, dtype=_FLOAT32, casting="no")
            except (TypeError, ValueError):  # another dtype, a Python list, 0-d, 1-D mixed with 2-D
                return None
            if flat.ndim != 1:
                return None
            sizes = np.fromiter(map(len, chunks), dtype=np.int64, count=k)
            offsets = np.zeros(k, dtype=np.int64)
            np.cumsum(sizes[:-1], out=offsets[1:])
        rows = np.fromiter(map(self._row_of.get, stream_ids, itertools.repeat(-1, k)), dtype=np.int64, count=k)
        if not errors and not math.isfinite(float(flat.dot(flat))):  # one pass over all; NaN/inf propagate
            for i in np.flatnonzero(rows >= 0).tolist():  # (an unknown stream's error comes first)
                o = offsets.item(i)
                if not np.all(np.isfinite(flat[o : o + sizes.item(i)])):
                    errors[i] = AudioChunkError("audio chunk contains NaN or infinite samples")
        if errors:
            rows[list(errors)] = -2
        if isinstance(arrival_ns, int):
            times = np.full(k, int(arrival_ns), dtype=np.int64)
        else:
            times = np.array([int(t) for t in arrival_ns], dtype=np.int64)
        codes = np.empty(k, dtype=np.int8)
        self._push_pass(rows, flat, offsets, sizes, times, codes)
        resumed: list[str] = []
        for i in np.flatnonzero(codes).tolist():  # all but PUSH_DONE, in position order
            code = codes[i]
            if code == core_kernel.PUSH_SLOW:  # the cases with more to do, as `push_audio` does them
                stream = self._streams[stream_ids[i]]
                o, m = offsets.item(i), sizes.item(i)
                if self._buffered(stream.row) + stream.next_fifo.size + m > self.max_pending_samples:
                    errors[i] = self._overload(stream, m)
                elif self._accept(stream, flat[o : o + m], times.item(i)):
                    resumed.append(stream.stream_id)
            elif code == core_kernel.PUSH_UNKNOWN:
                errors[i] = UnknownStreamError(f"no open stream {stream_ids[i]!r}")
        return resumed, errors

    def fill_stalls(self, now_ns: int, stall_ns: int, max_fill_s: float = 1.0) -> list[tuple[str, str]]:
        """Continue streams whose audio stopped arriving with silence, paced by the wall clock.

        A stream that received real audio in its current epoch stalls when the wall clock passes the moment its
        audio would have finished playing at 1x (the last arrival plus the audio's duration, for a real-time
        source) by `stall_ns`; it is then fed silence up to (now - that moment) x rate samples, at most
        `stall_ns` + `max_fill_s` of it per stall; frames made from that silence are `stalled`. A source
        sending faster than real time therefore never stalls while it is ahead. Real audio resumes the stream
        where the silence left it (the sample clock counts the silence).

        Returns:
            (stream_id, "stalled") for each stream whose stall began now.
        """
        events: list[tuple[str, str]] = []
        rate = self.sample_rate_hz
        idle = now_ns - self._runout
        # a run-out time outside a flush means real audio in this epoch (`_start_epoch` clears it)
        due = self._open & (self._runout != _NO_RUNOUT) & (self._ending < 0) & (idle > stall_ns)
        for row in np.flatnonzero(due).tolist():
            stream = self._stream_at(row)
            cap = int((stall_ns / 1e9 + max_fill_s) * rate)
            fill = min(cap, int(idle[row]) * rate // 1_000_000_000) - self._stall_filled.item(row)
            if fill <= 0:
                continue
            if not self._stalled[row]:
                self._stalled[row] = True
                events.append((stream.stream_id, "stalled"))
            self._stall_filled[row] += fill
            self._received[row] += fill
            self._epoch_in[row] += fill
            self._append(stream, np.zeros(fill, dtype=np.float32), int(now_ns), fill=True)
        return events

    def slot_of(self, stream_id: str) -> int:
        """The stream's row in `slots`."""
        return self._get(stream_id).row

    def is_stalled(self, stream_id: str) -> bool:
        return bool(self._stalled[self._get(stream_id).row])

    def take_faults(self) -> list[tuple[str, str]]:
        """(stream_id, message) of streams restarted since the last call because the model gave non-finite
        landmarks for them."""
        faults, self._faults = self._faults, []
        return faults

    def pending_samples(self, stream_id: str) -> int:
        """Samples accepted but not yet stepped (including audio queued behind a flush)."""
        stream = self._get(stream_id)
        return self._buffered(stream.row) + stream.next_fifo.size

    def reference_face(self, stream_id: str) -> np.ndarray | None:
        """The stream's own reference face, or None when it uses the model's."""
        return self._get(stream_id).reference_face

    def is_drained(self, stream_id: str) -> bool:
        """No audio pending, nothing in flight, no flush draining: every frame the stream can make is out."""
        stream = self._get(stream_id)
        row = stream.row
        return (
            self._buffered(row) == 0
            and stream.next_fifo.size == 0
            and not self._in_flight[row]
            and self._ending[row] < 0
        )

    def received_samples(self, stream_id: str) -> int:
        return int(self._received[self._get(stream_id).row])

    def epoch(self, stream_id: str) -> int:
        return int(self._epoch[self._get(stream_id).row])

    # ------------------------------------------------------------------ stepping
    def _ready_mask(self) -> np.ndarray:
        """Per slot: an open stream, not in flight, whose ring holds a full step."""
        mask: np.ndarray = (
            self._open
            & ~self._in_flight
            & (self._ring_w - self._taken * self.samples_per_frame >= self.samples_per_frame)
        )
        return mask

    def has_work(self) -> bool:
        """True when some stream not already in flight holds a full step of audio."""
        return bool(self._ready_mask().any())

    def ready_count(self) -> int:
        """How many streams not in flight hold a full step of audio."""
        return int(np.count_nonzero(self._ready_mask()))

    def oldest_ready_ns(self) -> int | None:
        """Arrival of the audio completing the oldest ready step (None when nothing is ready)."""
        rows = np.flatnonzero(self._ready_mask())
        if not rows.size:
            return None
        return int(self._ready_ns[rows, (self._taken[rows] - self._base[rows]) % self.ring_steps].min())

    def take_batch(
        self, max_streams: int | None = None, only: Iterable[str] | None = None, now_ns: int = 0
    ) -> StepBatch | None:
        """Take one step's audio from each ready stream (at most `max_streams`), or None.

        Args:
            only: consider just these stream ids (the public API steps one stream at a time).
            now_ns: stamped on the batch as `take_ns`.
        The streams stay "in flight" until `commit` or `abort`; pushes, resets and closes may happen meanwhile
        (a reset or close reaches the stream's slot at commit). Streams are taken round robin by slot when
        more are ready than fit, so none is always left for the next call.
        """
        limit = min(max_streams or self.max_batch_streams, self.max_batch_streams)
        spf, S = self.samples_per_frame, self.ring_steps
        if only is not None:
            cand = np.array(sorted({self._streams[sid].row for sid in only if sid in self._streams}), dtype=np.intp)
            if not cand.size:
                return None
            ready = cand[~self._in_flight[cand] & (self._ring_w[cand] - self._taken[cand] * spf >= spf)]
        elif self._kernels is not None:  # the same choice, round robin included, in one compiled pass
            ready, self._rr_row = self._kernels.select(
                self._ints, self._bools, spf, self._rr_row, limit, self.slots.banks == 2
            )
        else:
            ready = np.flatnonzero(self._ready_mask())
        if not ready.size:
            return None
        if ready.size > limit:  # round robin from the first ready slot after the last one taken (as select_pass):
            # with a double-buffered store, no wrap when half a call or more remains before the last slot (one
            # ascending run, often a contiguous range the runner steps with no copy), else wrapping to the first
            start = int(np.searchsorted(ready, self._rr_row))
            start = 0 if start == ready.size else start
            tail = ready.size - start
            if tail >= limit or (2 * tail >= limit and self.slots.banks == 2):
                ready = ready[start : start + limit]
                self._rr_row = int(ready[-1]) + 1
            else:
                self._rr_row = int(ready[limit - tail - 1]) + 1
                ready = np.concatenate([ready[: limit - tail], ready[start:]])
        if self._kernels is not None:
            return self._take_compiled(ready, now_ns)
        if ready.size <= self.small_batch:
            return self._take_rows(ready, now_ns)
        rows = ready
        k = self._taken[rows]
        ks = (k - self._base[rows]) % S
        audio = self._ring[rows, ks]  # (B, spf), a copy
        np.minimum(np.maximum(audio, -1.0, out=audio), 1.0, out=audio)  # np.clip, without its wrapper's cost
        levels = _levels_dbfs(audio)
        stalled = self._fill_mark[rows, ks]
        self._fill_mark[rows, ks] = False
        ready_ns = self._ready_ns[rows, ks]
        A = self.lookahead_frames + 1
        self._lvl[rows, k % A] = levels
        self._lvl_stalled[rows, k % A] = stalled
        taken = k + 1
        self._taken[rows] = taken
        self._in_flight[rows] = True
        over = self._over_n[rows]
        if over.any():
            for row in rows[over > 0].tolist():
                self._refill(self._stream_at(row))
        # less than a step left (so no overflow): the partial step to ring row 0, base to the next step
        nxt = (ks + 1) % S
        move = (self._ring_w[rows] - taken * spf < spf) & (nxt != 0)
        if move.any():
            r, i = rows[move], nxt[move]
            self._ring[r, 0] = self._ring[r, i]
            self._fill_mark[r, 0] = self._fill_mark[r, i]
            self._fill_mark[r, i] = False
            span = taken[move] - self._base[r]  # ring rows written since the last move
            self._base[r] = taken[move]
            if span.max() > _RELEASE_AFTER_STEPS:  # a backlog drained: give the pages it touched back
                big = span > _RELEASE_AFTER_STEPS
                for row, used in zip(r[big].tolist(), span[big].tolist()):
                    _release(self._ring, self._ring[row, 1 : min(used + 1, S)])
        self._in_flight_batches += 1
        ids = self._row_ids
        return StepBatch(
            tuple([ids[r] or "" for r in rows.tolist()]),  # taken rows are open: they have ids
            tuple(self._epoch[rows].tolist()),
            tuple(k.tolist()),
            rows,
            audio,
            tuple(ready_ns.tolist()),
            int(now_ns),
        )

    def _take_rows(self, rows: np.ndarray, now_ns: int) -> StepBatch:
        """`take_batch` for a few rows, one row at a time: below `small_batch` rows the ~40 array operations of
        the vectorised pass cost more than the rows themselves (a 1-stream batch: 44 against 11 us)."""
        spf, S, A = self.samples_per_frame, self.ring_steps, self.lookahead_frames + 1
        ring, taken_a, base_a, fill, ready_a = self._ring, self._taken, self._base, self._fill_mark, self._ready_ns
        row_list = rows.tolist()
        audio = np.empty((len(row_list), spf), dtype=np.float32)
        ks_list = []
        for i, row in enumerate(row_list):
            ks = (taken_a.item(row) - base_a.item(row)) % S
            audio[i] = ring[row, ks]
            ks_list.append(ks)
        np.minimum(np.maximum(audio, -1.0, out=audio), 1.0, out=audio)
        levels = _levels_dbfs(audio).tolist()
        ids, epochs, steps, ready_ns = [], [], [], []
        for row, ks, level in zip(row_list, ks_list, levels):
            k = taken_a.item(row)
            stalled = fill.item(row, ks)
            fill[row, ks] = False
            ready_ns.append(ready_a.item(row, ks))
            self._lvl[row, k % A] = level
            self._lvl_stalled[row, k % A] = stalled
            taken_a[row] = k + 1
            self._in_flight[row] = True
            if self._over_n.item(row):
                self._refill(self._stream_at(row))
            self._move_base(row, k, ks)
            ids.append(self._row_ids[row] or "")
            epochs.append(self._epoch.item(row))
            steps.append(k)
        self._in_flight_batches += 1
        return StepBatch(tuple(ids), tuple(epochs), tuple(steps), rows, audio, tuple(ready_ns), int(now_ns))

    def _move_base(self, row: int, k: int, ks: int) -> None:
        """After slot `row` handed step k (ring row ks) to a batch: when less than a step is left, the partial
        step to ring row 0 and the base to the next step (as in take_batch)."""
        S, spf, ring, fill = self.ring_steps, self.samples_per_frame, self._ring, self._fill_mark
        nxt = (ks + 1) % S
        if nxt and self._ring_w.item(row) - (k + 1) * spf < spf:
            ring[row, 0] = ring[row, nxt]
            fill[row, 0] = fill.item(row, nxt)
            fill[row, nxt] = False
            span = k + 1 - self._base.item(row)
            self._base[row] = k + 1
            if span > _RELEASE_AFTER_STEPS:
                _release(ring, ring[row, 1 : min(span + 1, S)])

    def _take_compiled(self, rows: np.ndarray, now_ns: int) -> StepBatch:
        """`take_batch` through `core_kernel.take_pass` (rows ascending); the levels in numpy (`_levels_dbfs`, the
        same sums), overflow refills and page releases here."""
        spf, S, A = self.samples_per_frame, self.ring_steps, self.lookahead_frames + 1
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        B = rows.size
        audio = np.empty((B, spf), dtype=np.float32)
        cols = np.empty((3, B), dtype=np.int64)
        flags = np.empty(B, dtype=np.int64)
        self._take_pass(rows, audio, cols, flags)
        self._lvl[rows, cols[1] % A] = _levels_dbfs(audio)
        for i in np.flatnonzero(flags).tolist():
            row, flag = rows.item(i), flags.item(i)
            if flag < 0:  # overflow waiting: refill the ring, then move the base as the loop would have
                k = cols.item(1, i)
                self._refill(self._stream_at(row))
                self._move_base(row, k, (k - self._base.item(row)) % S)
            else:
                _release(self._ring, self._ring[row, 1 : min(flag + 1, S)])
        self._in_flight_batches += 1
        ids = self._row_ids
        epochs, steps, ready = cols.tolist()
        return StepBatch(
            tuple([ids[r] or "" for r in rows.tolist()]),  # taken rows are open: they have ids
            tuple(epochs),
            tuple(steps),
            rows,
            audio,
            tuple(ready),
            int(now_ns),
            cols,
        )

    def _commit_rows(
        self, batch: StepBatch, landmarks: np.ndarray, infer_start_ns: int, infer_end_ns: int
    ) -> CommittedFrames:
        """`commit_batch` for a few rows, one row at a time (see `_take_rows`); the same steps in the same order."""
        n = len(batch)
        L, spf, A, rate = self.lookahead_frames, self.samples_per_frame, self.lookahead_frames + 1, self.sample_rate_hz
        finite = np.isfinite(landmarks).reshape(n, -1).all(axis=1).tolist()
        lvl, lvl_st = self._lvl, self._lvl_stalled
        keep: list[int] = []
        sids: list[str] = []
        seqs: list[int] = []
        epochs: list[int] = []
        indices: list[int] = []
        pts: list[int] = []
        levels: list[float] = []
        aheads: list[float] = []
        stalls: list[bool] = []
        ready: list[int] = []
        ending_rows: list[int] = []
        for i, row in enumerate(batch.rows.tolist()):
            if not self._open.item(row):  # closed while in flight
                if row in self._orphans:
                    self._orphans.discard(row)
                    self._free_slot(row)
                continue
            self._in_flight[row] = False
            if self._needs_init.item(row) or self._epoch.item(row) != batch.epochs[i]:
                self._init_slot(row)  # reset meanwhile: this output belongs to nobody
                continue
            if not finite[i]:
                stream = self._stream_at(row)
                self._faults.append((stream.stream_id, "the model gave non-finite landmarks; the stream was restarted"))
                self._restart(stream)
                continue
            committed = self._committed.item(row) + 1
            self._committed[row] = committed
            k = batch.step_indices[i]
            if k >= L:
                j = k - L
                level = lvl.item(row, j % A)
                keep.append(i)
                sids.append(batch.stream_ids[i])
                seq = self._seq.item(row)
                self._seq[row] = seq + 1
                seqs.append(seq)
                epochs.append(self._epoch.item(row))
                indices.append(j)
                pts.append((self._epoch_start.item(row) + j * spf) * 1_000_000_000 // rate)
                levels.append(level)
                aheads.append(max(lvl.item(row, (j + m) % A) for m in range(1, A)) if L else level)
                stalls.append(lvl_st.item(row, j % A))
                ready.append(batch.audio_ready_ns[i])
            ending = self._ending.item(row)
            if ending >= 0 and committed >= ending:
                ending_rows.append(row)
        kept = landmarks[keep] if len(keep) < n else landmarks.copy()
        ints = np.array((seqs, epochs, indices, pts, ready), dtype=np.int64).reshape(5, -1)  # one conversion
        floats = np.array((levels, aheads), dtype=np.float64).reshape(2, -1)
        out = CommittedFrames(
            sids,
            ints[0],
            ints[1],
            ints[2],
            ints[3],
            floats[0],
            floats[1],
            np.array(stalls, dtype=bool),
            ints[4],
            kept,
            int(infer_start_ns),
            int(infer_end_ns),
            int(batch.take_ns),
            batch.rows[keep].astype(np.int64, copy=False),
        )
        for row in ending_rows:
            self._start_next_epoch(self._stream_at(row))
        return out

    def run_batch(self, batch: StepBatch) -> np.ndarray:
        """The runner call for `batch` (safe off the owning thread): its slots are gathered, stepped and the
        next state scattered back in place. Returns landmarks (B, num_landmarks, landmark_dims)."""
        return self.runner.step_slots(self.slots, batch.rows, batch.audio)

    def commit(
        self, batch: StepBatch, landmarks: np.ndarray, infer_start_ns: int = 0, infer_end_ns: int = 0
    ) -> list[LandmarkFrame]:
        """Take the runner's landmarks for `batch` and return the frames it completes (look-ahead warm-up
        dropped). The next state is already in the store (`run_batch`).

        Rows of streams that were closed or reset while the batch was in flight are discarded (their slots are
        freed or re-initialised now). A row with non-finite landmarks restarts its stream and is reported by
        `take_faults`; it never becomes a frame.

        Args:
            landmarks: (B, num_landmarks, landmark_dims) runner output.
        Raises:
            CoreError: landmarks of the wrong shape (every stream of the batch is restarted).
        """
        return self.commit_batch(batch, landmarks, infer_start_ns, infer_end_ns).frames()

    def commit_batch(
        self, batch: StepBatch, landmarks: np.ndarray, infer_start_ns: int = 0, infer_end_ns: int = 0
    ) -> CommittedFrames:
        """`commit`, with the completed frames as columns (`CommittedFrames.frames()` gives `commit`'s list).

        Raises:
            CoreError: landmarks of the wrong shape (every stream of the batch is restarted).
        """
        self._in_flight_batches = max(0, self._in_flight_batches - 1)
        landmarks = np.asarray(landmarks, dtype=np.float32)
        n = len(batch)
        expect = (n, self.num_landmarks, self.landmark_dims)
        if landmarks.shape != expect:
            self._in_flight_batches += 1
            self.abort(batch)
            raise CoreError(f"runner returned landmarks of shape {landmarks.shape}, expected {expect}")
        if self._kernels is not None:
            return self._commit_compiled(batch, landmarks, infer_start_ns, infer_end_ns)
        if n <= self.small_batch:
            return self._commit_rows(batch, landmarks, infer_start_ns, infer_end_ns)
        rows = batch.rows
        live = self._open[rows]  # a closed stream's slot stays reserved (not open) until this commit
        if not live.all():
            for row in rows[~live].tolist():
                if row in self._orphans:  # closed while in flight
                    self._orphans.discard(row)
                    self._free_slot(row)
        self._in_flight[rows[live]] = False
        stale = live & (self._needs_init[rows] | (self._epoch[rows] != np.array(batch.epochs, dtype=np.int64)))
        if stale.any():
            for row in rows[stale].tolist():
                self._init_slot(row)  # reset meanwhile: this output belongs to nobody
            live &= ~stale
        finite = np.isfinite(landmarks).reshape(n, -1).all(axis=1)
        if not finite[live].all():
            for i in np.flatnonzero(live & ~finite).tolist():
                stream = self._streams[batch.stream_ids[i]]
                self._faults.append((stream.stream_id, "the model gave non-finite landmarks; the stream was restarted"))
                self._restart(stream)
            live &= finite
        good = np.flatnonzero(live)
        g = rows[good]
        self._committed[g] += 1
        L, spf = self.lookahead_frames, self.samples_per_frame
        k = np.array(batch.step_indices, dtype=np.int64)[good]
        emit = k >= L
        keep = good[emit]  # batch rows that became frames
        e, j = g[emit], k[emit] - L
        A = L + 1
        window = self._lvl[e[:, None], (j[:, None] + np.arange(A)) % A]  # levels of steps j .. j + L
        level = window[:, 0]
        ahead = window[:, 1:].max(axis=1) if L else level  # the loudest step of the look-ahead
        stalled = self._lvl_stalled[e, j % A]
        seqs = self._seq[e]
        self._seq[e] = seqs + 1
        rate = self.sample_rate_hz
        starts = self._epoch_start[e] + j * spf
        ids = batch.stream_ids
        keep_list = keep.tolist()
        # one copy of the kept rows (the runner may reuse its output buffer); frames hold views of its rows
        kept = landmarks[keep] if len(keep_list) < n else landmarks.copy()
        committed = CommittedFrames(
            [ids[i] for i in keep_list],
            seqs,
            self._epoch[e],
            j,
            _sample_time_ns(starts, rate),
            level.astype(np.float64, copy=False),
            ahead.astype(np.float64, copy=False),
            stalled,
            np.array(batch.audio_ready_ns, dtype=np.int64)[keep],
            kept,
            int(infer_start_ns),
            int(infer_end_ns),
            int(batch.take_ns),
            e.astype(np.int64, copy=False),
        )
        ending = self._ending[g]
        done = (ending >= 0) & (self._committed[g] >= ending)
        if done.any():
            for row in g[done].tolist():
                self._start_next_epoch(self._stream_at(row))
        return committed

    def _commit_compiled(
        self, batch: StepBatch, landmarks: np.ndarray, infer_start_ns: int, infer_end_ns: int
    ) -> CommittedFrames:
        """`commit_batch` through `core_kernel.commit_pass`; closed, reset and non-finite rows and finished
        flushes here, as the numpy code handles them."""
        n = len(batch)
        rows = np.ascontiguousarray(batch.rows, dtype=np.int64)
        cols = batch.int_columns
        if cols is None:
            cols = np.array((batch.epochs, batch.step_indices, batch.audio_ready_ns), dtype=np.int64).reshape(3, n)
        codes = np.empty(n, dtype=np.int8)
        done = np.empty(n, dtype=np.bool_)
        keep = np.empty(n, dtype=np.int64)
        ints = np.empty((5, n), dtype=np.int64)  # seq, epoch, index, pts, audio ready
        floats = np.empty((2, n), dtype=np.float64)  # level, look-ahead level
        stalled = np.empty(n, dtype=np.bool_)
        m = self._commit_pass(rows, cols, np.ascontiguousarray(landmarks), codes, done, keep, ints, floats, stalled)
        for i in np.flatnonzero(codes).tolist():  # rows that made no frame for a reason, in batch order
            row, code = rows.item(i), codes[i]
            if code == core_kernel.COMMIT_CLOSED:
                if row in self._orphans:  # closed while in flight
                    self._orphans.discard(row)
                    self._free_slot(row)
            elif code == core_kernel.COMMIT_STALE:
                self._init_slot(row)  # reset meanwhile: this output belongs to nobody
            elif code == core_kernel.COMMIT_NOT_FINITE:
                stream = self._stream_at(row)
                self._faults.append((stream.stream_id, "the model gave non-finite landmarks; the stream was restarted"))
                self._restart(stream)
        keep = keep[:m]
        ids = batch.stream_ids
        keep_list = keep.tolist()
        committed = CommittedFrames(
            [ids[i] for i in keep_list],
            ints[0, :m],
            ints[1, :m],
            ints[2, :m],
            ints[3, :m],
            floats[0, :m],
            floats[1, :m],
            stalled[:m],
            ints[4, :m],
            landmarks[keep] if m < n else landmarks.copy(),
            int(infer_start_ns),
            int(infer_end_ns),
            int(batch.take_ns),
            rows[keep],
        )
        if done.any():
            for row in rows[done].tolist():
                self._start_next_epoch(self._stream_at(row))
        return committed

    # The compiled passes called with this core's own per-slot arrays: one place that knows their arguments,
    # for the live calls and `warm_up` alike (`core_kernel` documents each).
    def _push_pass(
        self,
        rows: np.ndarray,
        flat: np.ndarray,
        offsets: np.ndarray,
        sizes: np.ndarray,
        times: np.ndarray,
        codes: np.ndarray,
    ) -> None:
        self._kernels.push(  # type: ignore[union-attr]
            rows,
            flat,
            offsets,
            sizes,
            times,
            self._ints,
            self._bools,
            self._ring_flat,
            self._ready_ns,
            self.samples_per_frame,
            self.ring_steps,
            self.max_pending_samples,
            self.sample_rate_hz,
            codes,
        )

    def _take_pass(self, rows: np.ndarray, audio: np.ndarray, cols: np.ndarray, flags: np.ndarray) -> None:
        self._kernels.take(  # type: ignore[union-attr]
            rows,
            self._ints,
            self._bools,
            self._ring,
            self._ready_ns,
            self._fill_mark,
            self._lvl_stalled,
            self.samples_per_frame,
            _RELEASE_AFTER_STEPS,
            audio,
            cols,
            flags,
        )

    def _commit_pass(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        landmarks: np.ndarray,
        codes: np.ndarray,
        done: np.ndarray,
        keep: np.ndarray,
        ints: np.ndarray,
        floats: np.ndarray,
        stalled: np.ndarray,
    ) -> int:
        kept: int = self._kernels.commit(  # type: ignore[union-attr]
            rows,
            cols,
            landmarks,
            self._ints,
            self._bools,
            self._lvl,
            self._lvl_stalled,
            self.lookahead_frames,
            self.samples_per_frame,
            self.sample_rate_hz,
            codes,
            done,
            keep,
            ints,
            floats,
            stalled,
        )
        return kept

    def warm_up(self) -> None:
        """Compile the core's passes now (or load them from numba's cache) instead of at the first push, take
        and commit: one call of each over nothing, with the argument types of every later call. Does nothing
        on the numpy path. If compiling fails (a broken numba or LLVM), logs a warning and uses numpy, unless
        the core was made with compiled=True (then the error propagates)."""
        kernels = self._kernels
        if kernels is None:
            return
        i64, spf, none = np.zeros(0, dtype=np.int64), self.samples_per_frame, np.zeros(0, dtype=np.bool_)
        try:
            self._push_pass(i64, np.zeros(0, np.float32), i64, i64, i64, np.zeros(0, np.int8))
            cut = self.slots.banks == 2
            kernels.select(self._ints, self._bools, spf, self._rr_row, self.max_batch_streams, cut)  # reads only
            self._take_pass(i64, np.zeros((0, spf), np.float32), np.zeros((3, 0), np.int64), i64)
            landmarks = np.zeros((0, self.num_landmarks, self.landmark_dims), np.float32)
            outputs = (np.zeros(0, np.int8), none, i64, np.zeros((5, 0), np.int64), np.zeros((2, 0)), none)
            self._commit_pass(i64, np.zeros((3, 0), np.int64), landmarks, *outputs)
        except Exception as exc:
            if self._require_compiled:
                raise
            log.warning("the core's compiled passes are unavailable (%s: %s); using numpy", type(exc).__name__, exc)
            self._kernels = None

    def abort(self, batch: StepBatch) -> list[str]:
        """The runner failed on `batch`: restart every stream in it (new epoch). Returns the affected ids."""
        self._in_flight_batches = max(0, self._in_flight_batches - 1)
        affected = []
        for i, stream_id in enumerate(batch.stream_ids):
            row = int(batch.rows[i])
            stream = self._streams.get(stream_id)
            if stream is None or stream.row != row:
                if row in self._orphans:
                    self._orphans.discard(row)
                    self._free_slot(row)
                continue
            self._in_flight[row] = False
            if self._epoch[row] == batch.epochs[i] and not self._needs_init[row]:
                self.reset(stream_id)
                affected.append(stream_id)
            else:
                self._init_slot(row)
        return affected

    def process(
        self, now_ns: Callable[[], int] | None = None, max_steps: int | None = None, only: Iterable[str] | None = None
    ) -> list[LandmarkFrame]:
        """Run every ready step synchronously (tests, benchmarks, offline use). Returns the frames in order.

        Args:
            now_ns: clock for the inference timestamps (0 when None).
            max_steps: stop after this many runner calls.
            only: step just these stream ids.
        """
        if only is not None:
            only = list(only)
        frames: list[LandmarkFrame] = []
        calls = 0
        while max_steps is None or calls < max_steps:
            batch = self.take_batch(only=only)
            if batch is None:
                break
            t0 = now_ns() if now_ns else 0
            try:
                out = self.run_batch(batch)
            except Exception:
                self.abort(batch)
                raise
            t1 = now_ns() if now_ns else 0
            frames.extend(self.commit(batch, out, t0, t1))
            calls += 1
        return frames

    # ------------------------------------------------------------------ internals
    def _get(self, stream_id: str) -> _Stream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise UnknownStreamError(f"no open stream {stream_id!r}") from None

    def _free_slot(self, row: int) -> None:
        """Give a closed stream's slot back to the store, and its ring's written pages back to the OS."""
        self.slots.free(row)
        _release(self._ring, self._ring[row])

    def _stream_at(self, row: int) -> _Stream:
        """The stream that holds an open row."""
        return self._streams[self._row_ids[row] or ""]

    def _init_slot(self, row: int) -> None:
        stream = self._streams.get(self._row_ids[row] or "")
        face, rng = (stream.reference_face, stream.rng) if stream is not None else (None, None)
        self.slots.init_row(row, face, rng)
        self._needs_init[row] = False

    def _restart(self, stream: _Stream) -> None:
        """A new epoch now, dropping pending audio (as `reset`)."""
        stream.next_fifo.clear()
        stream.next_arrivals.clear()
        stream.next_flushes.clear()
        self._start_epoch(stream)

    def _start_epoch(self, stream: _Stream) -> None:
        """A fresh model state and empty current-epoch buffers, beginning at the stream's sample count."""
        row = stream.row
        if self._in_flight[row]:
            self._needs_init[row] = True  # the slot belongs to the running step; initialised at commit
        else:
            self.slots.init_row(row, stream.reference_face, stream.rng)
            self._needs_init[row] = False
        self._epoch[row] += 1
        self._epoch_start[row] = self._received[row] - stream.next_fifo.size
        stream.overflow.clear()
        self._fill_mark[row] = False
        for name in ("_ring_w", "_taken", "_committed", "_over_n", "_base"):
            getattr(self, name)[row] = 0
        self._epoch_in[row] = self._epoch_real[row] = self._stall_filled[row] = 0
        self._stalled[row] = False
        self._runout[row] = _NO_RUNOUT
        self._ending[row] = -1

    def _start_next_epoch(self, stream: _Stream) -> None:
        """After a flush has drained: start the next epoch with the audio that queued behind it. When that audio was
        flushed too (`flush` while draining), the epoch takes its first segment only and is flushed at once; the
        rest queues behind it again, with its own flushes."""
        queued, arrivals, marks = stream.next_fifo, stream.next_arrivals, stream.next_flushes
        stream.next_fifo, stream.next_arrivals, stream.next_flushes = _SampleFifo(), [], []
        row = stream.row
        self._start_epoch(stream)
        size = queued.size
        cut = marks[0][0] if marks else size
        self._epoch_start[row] = self._received[row] - size
        samples = queued.take(size) if size else _NO_SAMPLES
        self._epoch_in[row] = self._epoch_real[row] = cut
        start, rest = 0, []
        for end, arrival_ns in arrivals:
            if start < cut:
                self._append(stream, samples[start : min(end, cut)], arrival_ns)
            if end > cut:
                rest.append((end - cut, arrival_ns))
            start = end
        if not marks:
            return
        self.flush(stream.stream_id, marks[0][1])  # this epoch is the flushed segment: pad it, end it
        if size > cut:  # what came after that flush waits for this epoch to drain (flush set it ending)
            stream.next_fifo.push(samples[cut:])
            stream.next_arrivals = rest
            stream.next_flushes = [(m - cut, ns) for m, ns in marks[1:]]


_FLOAT32 = np.dtype(np.float32)
_RELEASE_AFTER_STEPS = 8  # a drained backlog that used more ring rows than this gives their pages back


def _lazy_zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Zeros in an anonymous memory map in small pages: a page costs memory once written, not before (numpy
    asks for transparent huge pages for large arrays, so writing one sample of each row would make a
    2 MB page resident per few rows of the audio ring)."""
    size = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    try:
        region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (AttributeError, TypeError, OSError):  # no anonymous private maps here (Windows): plain zeros
        return np.zeros(shape, dtype)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        region.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(region, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def _release(array: np.ndarray, part: np.ndarray) -> None:
    """Give the whole pages of `part` (a C-contiguous view of the `_lazy_zeros` array `array`) back to the OS:
    they read as zeros again and cost nothing until written."""
    region = array.base
    while region is not None and not isinstance(region, mmap.mmap):
        region = region.obj if isinstance(region, memoryview) else getattr(region, "base", None)
    if region is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = part.ctypes.data - array.ctypes.data
    page = mmap.PAGESIZE
    lo, hi = -(-start // page) * page, (start + part.nbytes) // page * page
    if hi > lo:
        region.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def _checked_block(chunks: np.ndarray, errors: dict[int, CoreError]) -> np.ndarray:
    """A (K, n) chunk block as float32, adding each non-finite row's `AudioChunkError` to `errors`."""
    if chunks.dtype.kind != "f":
        exc = AudioChunkError(f"audio must be floating point PCM in [-1, 1], got dtype {chunks.dtype}")
        errors.update((i, exc) for i in range(chunks.shape[0]))
        return np.zeros((chunks.shape[0], 0), np.float32)
    block = chunks if chunks.dtype == _FLOAT32 else chunks.astype(np.float32)
    if block.shape[1]:
        energy = np.einsum("ij,ij->i", block, block)
        for i in np.flatnonzero(~np.isfinite(energy)).tolist():
            if not np.all(np.isfinite(block[i])):
                errors[i] = AudioChunkError("audio chunk contains NaN or infinite samples")
    return block


def _levels_dbfs(audio: np.ndarray) -> np.ndarray:
    """RMS level of each row of (B, n) PCM in dB re full scale, floored at -120 dBFS -> (B,) float64."""
    # float32 products and sums (a float64 accumulation costs 6x: 29 against 5 us for 64 x 640); the level
    # differs from a float64 one by about 1e-5 dB
    mean_square = np.einsum("ij,ij->i", audio, audio).astype(np.float64) / max(1, audio.shape[1])
    result: np.ndarray = 10.0 * np.log10(np.maximum(mean_square, 1e-12))
    return result


def _level_dbfs(samples: np.ndarray) -> float:
    """RMS level of (n,) PCM in dB re full scale, floored at -120 dBFS."""
    mean_square = float(np.dot(samples, samples)) / max(1, samples.size)
    return 10.0 * math.log10(max(mean_square, 1e-12))


def frames_by_stream(frames: Iterable[LandmarkFrame]) -> dict[str, list[LandmarkFrame]]:
    """Group frames by stream id, keeping order."""
    out: dict[str, list[LandmarkFrame]] = {}
    for frame in frames:
        out.setdefault(frame.stream_id, []).append(frame)
    return out
