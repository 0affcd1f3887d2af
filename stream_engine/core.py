"""The engine core: many audio streams in, landmark frames out. Synchronous and free of I/O.

One shared `StepRunner` (the exported 40 ms step) serves every stream; each stream owns one row (slot) of
the state store the runner allocated (`runner.new_slots`, batch on dimension 0). Audio is pushed per stream in chunks of any length; whenever a stream holds the samples of its
next step, that step can run, and streams that are ready together are stepped in one batched call::

    core = EngineCore(runner)
    core.open_stream("alice")
    core.push_audio("alice", samples_16k, arrival_ns=clock.now_ns())
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
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from stream_engine import fast_init
from stream_engine.clock import SampleClock
from stream_engine.runtime.base import StepRunner


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
    """

    stream_ids: tuple[str, ...]
    epochs: tuple[int, ...]
    step_indices: tuple[int, ...]
    rows: np.ndarray
    audio: np.ndarray
    audio_ready_ns: tuple[int, ...]
    take_ns: int = 0

    def __len__(self) -> int:
        return len(self.stream_ids)


@dataclasses.dataclass(slots=True)
class CommittedFrames:
    """The frames one step completed, as columns (`EngineCore.commit_batch`); `frames()` builds the objects.

    The asyncio shell derives the signals of a whole step from these arrays and builds each published
    `LandmarkFrame` once (with its signals and publish time), instead of one frame out of the core and a second
    one with the signals attached.

    Attributes:
        stream_ids, seqs, epochs, indices, pts_ns, stalled, audio_ready_ns: per frame, as on `LandmarkFrame`
            and `FrameTimings`.
        levels_dbfs, ahead_dbfs: per frame, `audio_level_dbfs` and `audio_ahead_dbfs` (dBFS).
        landmarks: (n, num_landmarks, landmark_dims) float32, owned (frame i's landmarks are row i).
        infer_start_ns, infer_end_ns, take_ns: shared by the whole step.
    """

    stream_ids: list[str]
    seqs: list[int]
    epochs: list[int]
    indices: list[int]
    pts_ns: list[int]
    levels_dbfs: list[float]
    ahead_dbfs: list[float]
    stalled: list[bool]
    audio_ready_ns: list[int]
    landmarks: np.ndarray
    infer_start_ns: int = 0
    infer_end_ns: int = 0
    take_ns: int = 0

    def __len__(self) -> int:
        return len(self.stream_ids)

    def select(self, keep: list[int]) -> CommittedFrames:
        """The frames at positions `keep`, in that order."""
        return CommittedFrames(
            [self.stream_ids[i] for i in keep],
            [self.seqs[i] for i in keep],
            [self.epochs[i] for i in keep],
            [self.indices[i] for i in keep],
            [self.pts_ns[i] for i in keep],
            [self.levels_dbfs[i] for i in keep],
            [self.ahead_dbfs[i] for i in keep],
            [self.stalled[i] for i in keep],
            [self.audio_ready_ns[i] for i in keep],
            self.landmarks[keep],
            self.infer_start_ns,
            self.infer_end_ns,
            self.take_ns,
        )

    def frames(self, publish_ns: int = 0, signals: Iterable[Any] | None = None) -> list[LandmarkFrame]:
        """The `LandmarkFrame` objects (row i's landmarks a view of `landmarks[i]`), each stamped with
        `publish_ns` and, when given, the i-th of `signals`."""
        t0, t1, take, pub = int(self.infer_start_ns), int(self.infer_end_ns), int(self.take_ns), int(publish_ns)
        sigs = itertools.repeat(None) if signals is None else signals
        frame, timings = _MAKE_FRAME, _MAKE_TIMINGS  # the dataclasses, built without their frozen __init__
        return [
            frame(sid, seq, epoch, index, pts, lm, level, ahead, timings(ready, t0, t1, pub, take), sig, st, None)
            for sid, seq, epoch, index, pts, lm, level, ahead, ready, sig, st in zip(
                self.stream_ids,
                self.seqs,
                self.epochs,
                self.indices,
                self.pts_ns,
                self.landmarks,
                self.levels_dbfs,
                self.ahead_dbfs,
                self.audio_ready_ns,
                sigs,
                self.stalled,
            )
        ]


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


class _Stream:
    """Everything the core remembers about one stream (its runner state included)."""

    def __init__(self, stream_id: str, reference_face: np.ndarray | None, rng: np.random.Generator, row: int) -> None:
        self.stream_id = stream_id
        self.reference_face = reference_face
        self.rng = rng
        self.row = row  # the stream's slot in the core's state store
        self.needs_init = False  # restarted while in flight: initialise the slot at commit
        self.runout_ns: int | None = None  # when the real audio received so far would have played out at 1x
        self.stall_filled = 0  # silence added in the current stall (samples)
        self.stalled = False
        self.fills: collections.deque[tuple[int, int]] = collections.deque()  # silence added: epoch [start, end)
        self.fifo = _SampleFifo()  # audio of the current epoch not yet stepped
        self.next_fifo = _SampleFifo()  # audio that arrived while a flushed epoch drains
        self.next_arrivals: list[tuple[int, int]] = []  # (end sample relative to its first sample, arrival_ns)
        self.received_samples = 0  # real samples accepted over the stream's life (the sample clock)
        self.epoch = -1
        self.epoch_start_sample = 0  # stream sample index where the epoch began
        self.epoch_samples_in = 0  # samples (real + flush padding) pushed into this epoch
        self.epoch_real_samples = 0
        self.steps_taken = 0  # steps handed to the runner in this epoch
        self.steps_committed = 0
        self.arrivals: collections.deque[tuple[int, int]] = collections.deque()  # (epoch end sample, ns)
        self.levels: collections.deque[tuple[float, bool]] = (
            collections.deque()
        )  # (dBFS, stalled) of steps not yet emitted
        self.seq = 0
        self.in_flight = False
        self.ending_steps: int | None = None  # set by flush: the epoch ends after this many steps


class EngineCore:
    """Shared runner + per-stream state; audio in, landmark frames out. No I/O, no threads, no clock reads.

    Args:
        runner: a `StepRunner` (its `contract` gives rate, samples per frame, look-ahead, landmark layout).
        max_batch_streams: most streams stepped in one runner call.
        max_pending_s: most seconds of audio a stream may hold before `push_audio` raises `OverloadError`.
        seed: base seed of the per-stream noise generators (stream i gets seed + i); None = random.
        capacity: rows preallocated in the state store (it doubles when more streams open; the asyncio engine
            preallocates its `max_streams` so it never grows while a step runs).
    """

    def __init__(
        self,
        runner: StepRunner,
        max_batch_streams: int = 64,
        max_pending_s: float = 30.0,
        seed: int | None = None,
        capacity: int = 64,
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
        self.max_batch_streams = int(max_batch_streams)
        self.max_pending_samples = int(max_pending_s * self.sample_rate_hz)
        self.sample_clock = SampleClock(self.sample_rate_hz)
        self.slots = runner.new_slots(max(1, int(capacity)))
        self._orphans: set[int] = set()  # slots of streams closed while in flight: freed at commit
        self._faults: list[tuple[str, str]] = []
        self._in_flight_batches = 0
        self._streams: dict[str, _Stream] = {}
        self._seed = seed
        self._streams_opened = 0
        self._rr_offset = 0  # round-robin start, so no stream is always last in line

    # ------------------------------------------------------------------ lifecycle
    @property
    def stream_ids(self) -> list[str]:
        return list(self._streams)

    def has_stream(self, stream_id: str) -> bool:
        return stream_id in self._streams

    def open_stream(self, stream_id: str, reference_face: np.ndarray | None = None, seed: int | None = None) -> None:
        """Start a stream with a fresh runner state.

        Args:
            reference_face: (num_landmarks, landmark_dims) normalised face the stream starts from; None = the
                model's own (`contract.reference_face`).
            seed: noise seed for this stream (overrides the core's seed scheme).
        Raises:
            ValueError: the id is taken or the reference face has the wrong shape/values.
        """
        if stream_id in self._streams:
            raise ValueError(f"stream {stream_id!r} is already open")
        if reference_face is not None:
            reference_face = np.asarray(reference_face, dtype=np.float32)
            expect = (self.num_landmarks, self.landmark_dims)
            if reference_face.shape != expect:
                raise ValueError(f"reference face must have shape {expect}, got {reference_face.shape}")
            if not np.all(np.isfinite(reference_face)):
                raise ValueError("reference face contains NaN or infinite values")
        if seed is None and self._seed is not None:
            seed = self._seed + self._streams_opened
        self._streams_opened += 1
        if self._in_flight_batches and self.slots.used >= self.slots.capacity:
            raise CoreError(
                "the state store is full while a step runs; open the stream after it (or give the "
                "core a larger capacity)"
            )
        stream = _Stream(stream_id, reference_face, np.random.default_rng(seed), self.slots.alloc())
        self._start_epoch(stream)
        self._streams[stream_id] = stream

    def close_stream(self, stream_id: str) -> None:
        """Forget a stream and free its slot (at commit when a batch is in flight for it). Unknown ids are
        ignored."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        if stream.in_flight:
            self._orphans.add(stream.row)
        else:
            self.slots.free(stream.row)

    def reset(self, stream_id: str) -> int:
        """Barge-in: drop the stream's pending audio and restart its model state now. Returns the new epoch."""
        stream = self._get(stream_id)
        self._restart(stream)
        return stream.epoch

    def flush(self, stream_id: str, now_ns: int) -> int:
        """End of a segment: pad with silence so every received sample's frame is emitted, then restart.

        Audio pushed after the flush starts the next epoch once the padded steps have run. Returns the number
        of frames still to come from the flushed epoch.
        """
        stream = self._get(stream_id)
        if stream.ending_steps is not None:
            return self._frames_left(stream)  # already flushing
        if stream.epoch_real_samples == 0:
            return 0  # nothing received since the last restart
        spf = self.samples_per_frame
        frames_needed = -(-stream.epoch_real_samples // spf)  # ceil: every received sample's frame
        steps_needed = frames_needed + self.lookahead_frames if frames_needed else 0
        pad = steps_needed * spf - stream.epoch_samples_in
        if pad > 0:
            stream.fifo.push(np.zeros(pad, dtype=np.float32))
            stream.epoch_samples_in += pad
            stream.arrivals.append((stream.epoch_samples_in, int(now_ns)))
        stream.ending_steps = steps_needed
        if stream.steps_committed >= steps_needed and not stream.in_flight:
            self._start_next_epoch(stream)
        return max(0, steps_needed - max(stream.steps_committed, self.lookahead_frames))

    def _frames_left(self, stream: _Stream) -> int:
        return max(0, (stream.ending_steps or 0) - max(stream.steps_committed, self.lookahead_frames))

    # ------------------------------------------------------------------ audio in
    def push_audio(self, stream_id: str, samples: np.ndarray, arrival_ns: int) -> bool:
        """Append mono PCM at the contract's rate to a stream.

        Args:
            samples: (num_samples,) float, nominally in [-1, 1] (values beyond are clipped). Empty is a no-op.
            arrival_ns: engine-clock time the chunk arrived (stamped on the frames that depend on it).
        Returns:
            whether the stream was stalled (being fed silence) until this chunk.
        Raises:
            UnknownStreamError, AudioChunkError (not 1-D, NaN/inf; the stream is unchanged), OverloadError.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            raise UnknownStreamError(f"no open stream {stream_id!r}")
        if type(samples) is not np.ndarray:
            samples = np.asarray(samples)
        if samples.ndim != 1:
            raise AudioChunkError(f"audio must be mono (num_samples,), got shape {samples.shape}")
        n = samples.size
        if n == 0:
            return False
        dtype = samples.dtype
        if dtype != _FLOAT32:
            if dtype.kind != "f":
                raise AudioChunkError(f"audio must be floating point PCM in [-1, 1], got dtype {dtype}")
            samples = samples.astype(np.float32)  # checked as float32: values beyond its range are infinite
        if not math.isfinite(float(samples.dot(samples))):  # one pass; NaN/inf propagate into the sum
            # (finite samples whose squares overflow float32 are out of range anyway and would be clipped)
            if not np.all(np.isfinite(samples)):
                raise AudioChunkError("audio chunk contains NaN or infinite samples")
        # values beyond [-1, 1] are clipped per batch in take_batch
        fifo = stream.fifo
        if fifo.size + stream.next_fifo.size + n > self.max_pending_samples:
            raise OverloadError(
                f"stream {stream_id!r} would hold more than {self.max_pending_samples / self.sample_rate_hz:.1f} s "
                "of unprocessed audio (input faster than the engine)"
            )
        arrival_ns = int(arrival_ns)
        stream.received_samples += n
        runout = stream.runout_ns
        stream.runout_ns = (
            arrival_ns if runout is None or arrival_ns > runout else runout
        ) + n * 1_000_000_000 // self.sample_rate_hz
        was_stalled = stream.stalled
        if was_stalled:
            stream.stalled = False
            stream.stall_filled = 0
        if stream.ending_steps is not None:  # a flushed epoch is draining: this audio opens the next one
            stream.next_fifo.push(samples)  # a copy: the caller may reuse its buffer
            stream.next_arrivals.append((stream.next_fifo.size, arrival_ns))
            return was_stalled
        fifo.push(samples)  # a copy: the caller may reuse its buffer
        stream.epoch_samples_in += n
        stream.epoch_real_samples += n
        stream.arrivals.append((stream.epoch_samples_in, arrival_ns))
        return was_stalled

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
        events = []
        rate = self.sample_rate_hz
        for stream in self._streams.values():
            if stream.runout_ns is None or stream.ending_steps is not None or stream.epoch_real_samples == 0:
                continue
            idle_ns = now_ns - stream.runout_ns
            if idle_ns <= stall_ns:
                continue
            cap = int((stall_ns / 1e9 + max_fill_s) * rate)
            fill = min(cap, int(idle_ns * rate // 1_000_000_000)) - stream.stall_filled
            if fill <= 0:
                continue
            if not stream.stalled:
                stream.stalled = True
                events.append((stream.stream_id, "stalled"))
            start = stream.epoch_samples_in
            stream.fifo.push(np.zeros(fill, dtype=np.float32))
            stream.stall_filled += fill
            stream.received_samples += fill
            stream.epoch_samples_in += fill
            stream.fills.append((start, stream.epoch_samples_in))
            stream.arrivals.append((stream.epoch_samples_in, int(now_ns)))
        return events

    def slot_of(self, stream_id: str) -> int:
        """The stream's row in `slots`."""
        return self._get(stream_id).row

    def is_stalled(self, stream_id: str) -> bool:
        return self._get(stream_id).stalled

    def take_faults(self) -> list[tuple[str, str]]:
        """(stream_id, message) of streams restarted since the last call because the model gave non-finite
        landmarks for them."""
        faults, self._faults = self._faults, []
        return faults

    def pending_samples(self, stream_id: str) -> int:
        """Samples accepted but not yet stepped (including audio queued behind a flush)."""
        stream = self._get(stream_id)
        return stream.fifo.size + stream.next_fifo.size

    def reference_face(self, stream_id: str) -> np.ndarray | None:
        """The stream's own reference face, or None when it uses the model's."""
        return self._get(stream_id).reference_face

    def is_drained(self, stream_id: str) -> bool:
        """No audio pending, nothing in flight, no flush draining: every frame the stream can make is out."""
        stream = self._get(stream_id)
        return (
            stream.fifo.size == 0
            and stream.next_fifo.size == 0
            and not stream.in_flight
            and stream.ending_steps is None
        )

    def received_samples(self, stream_id: str) -> int:
        return self._get(stream_id).received_samples

    def epoch(self, stream_id: str) -> int:
        return self._get(stream_id).epoch

    # ------------------------------------------------------------------ stepping
    def has_work(self) -> bool:
        """True when some stream not already in flight holds a full step of audio."""
        spf = self.samples_per_frame
        return any(s.fifo.size >= spf and not s.in_flight for s in self._streams.values())

    def ready_count(self) -> int:
        """How many streams not in flight hold a full step of audio."""
        spf = self.samples_per_frame
        return sum(1 for s in self._streams.values() if s.fifo.size >= spf and not s.in_flight)

    def oldest_ready_ns(self) -> int | None:
        """Arrival of the audio completing the oldest ready step (None when nothing is ready)."""
        spf = self.samples_per_frame
        best = None
        for s in self._streams.values():
            if s.fifo.size >= spf and not s.in_flight:
                t = self._peek_arrival(s, spf * (s.steps_taken + 1) - 1)
                best = t if best is None or t < best else best
        return best

    @staticmethod
    def _peek_arrival(stream: _Stream, sample_index: int) -> int:
        for end, ns in stream.arrivals:
            if end > sample_index:
                return ns
        return stream.arrivals[-1][1] if stream.arrivals else 0

    def take_batch(
        self, max_streams: int | None = None, only: Iterable[str] | None = None, now_ns: int = 0
    ) -> StepBatch | None:
        """Take one step's audio from each ready stream (at most `max_streams`), or None.

        Args:
            only: consider just these stream ids (the public API steps one stream at a time).
            now_ns: stamped on the batch as `take_ns`.
        The streams stay "in flight" until `commit` or `abort`; pushes, resets and closes may happen meanwhile
        (a reset or close reaches the stream's slot at commit).
        """
        limit = min(max_streams or self.max_batch_streams, self.max_batch_streams)
        spf = self.samples_per_frame
        if only is not None:
            streams = [self._streams[sid] for sid in only if sid in self._streams]
        else:
            streams = list(self._streams.values())
        if not streams:
            return None
        start = self._rr_offset % len(streams)
        self._rr_offset += 1
        picked: list[_Stream] = []
        for stream in streams[start:] + streams[:start]:
            if stream.fifo.size >= spf and not stream.in_flight:
                picked.append(stream)
                if len(picked) == limit:
                    break
        if not picked:
            return None
        picked.sort(key=_row_of)  # ascending slots: often one contiguous range (no gather copies)
        audio = np.empty((len(picked), spf), dtype=np.float32)
        for i, stream in enumerate(picked):
            stream.fifo.take(spf, audio[i])
        np.minimum(np.maximum(audio, -1.0, out=audio), 1.0, out=audio)  # np.clip, without its wrapper's cost
        sids, epochs, steps, ready_ns = [], [], [], []
        for stream, level in zip(picked, _levels_dbfs(audio).tolist()):
            k = stream.steps_taken
            stream.steps_taken = k + 1
            sids.append(stream.stream_id)
            epochs.append(stream.epoch)
            steps.append(k)
            arrivals = stream.arrivals  # arrival of the chunk holding the step's last sample (older: forgotten)
            last = spf * (k + 1) - 1
            while len(arrivals) > 1 and arrivals[0][0] <= last:
                arrivals.popleft()
            ready_ns.append(arrivals[0][1])
            stalled = False
            fills = stream.fills
            if fills:
                lo, hi = spf * k, spf * (k + 1)
                while fills and fills[0][1] <= lo:
                    fills.popleft()
                stalled = bool(fills) and fills[0][0] < hi
            stream.levels.append((level, stalled))
            stream.in_flight = True
        self._in_flight_batches += 1
        return StepBatch(
            tuple(sids),
            tuple(epochs),
            tuple(steps),
            np.array([s.row for s in picked], dtype=np.intp),
            audio,
            tuple(ready_ns),
            int(now_ns),
        )

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
        expect = (len(batch), self.num_landmarks, self.landmark_dims)
        if landmarks.shape != expect:
            self._in_flight_batches += 1
            self.abort(batch)
            raise CoreError(f"runner returned landmarks of shape {landmarks.shape}, expected {expect}")
        finite = np.isfinite(landmarks).reshape(len(batch), -1).all(axis=1).tolist()
        L = self.lookahead_frames
        spf = self.samples_per_frame
        time_ns = self.sample_clock.time_ns
        streams = self._streams
        keep: list[int] = []  # batch rows that became frames
        sids: list[str] = []
        seqs: list[int] = []
        epochs: list[int] = []
        indices: list[int] = []
        pts: list[int] = []
        levels: list[float] = []
        aheads: list[float] = []
        stalls: list[bool] = []
        ready: list[int] = []
        rows = batch.rows.tolist()
        for i, stream_id in enumerate(batch.stream_ids):
            row = rows[i]
            stream = streams.get(stream_id)
            if stream is None or stream.row != row:
                if row in self._orphans:  # closed while in flight
                    self._orphans.discard(row)
                    self.slots.free(row)
                continue
            stream.in_flight = False
            if stream.needs_init or stream.epoch != batch.epochs[i]:
                self._init_slot(stream)  # reset meanwhile: this output belongs to nobody
                continue
            if not finite[i]:
                self._faults.append((stream_id, "the model gave non-finite landmarks; the stream was restarted"))
                self._restart(stream)
                continue
            stream.steps_committed += 1
            k = batch.step_indices[i]
            if k >= L:
                j = k - L
                level, stalled = stream.levels.popleft()
                ahead = max(stream.levels)[0] if stream.levels else level  # the loudest (dBFS, stalled)
                keep.append(i)
                sids.append(stream_id)
                seqs.append(stream.seq)
                epochs.append(stream.epoch)
                indices.append(j)
                pts.append(time_ns(stream.epoch_start_sample + j * spf))
                levels.append(level)
                aheads.append(ahead)
                stalls.append(stalled)
                ready.append(batch.audio_ready_ns[i])
                stream.seq += 1
            if stream.ending_steps is not None and stream.steps_committed >= stream.ending_steps:
                self._start_next_epoch(stream)
        # one copy of the kept rows (the runner may reuse its output buffer); frames hold views of its rows
        kept = landmarks[keep] if len(keep) < len(batch) else landmarks.copy()
        return CommittedFrames(
            sids,
            seqs,
            epochs,
            indices,
            pts,
            levels,
            aheads,
            stalls,
            ready,
            kept,
            int(infer_start_ns),
            int(infer_end_ns),
            int(batch.take_ns),
        )

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
                    self.slots.free(row)
                continue
            stream.in_flight = False
            if stream.epoch == batch.epochs[i] and not stream.needs_init:
                self.reset(stream_id)
                affected.append(stream_id)
            else:
                self._init_slot(stream)
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

    def _init_slot(self, stream: _Stream) -> None:
        self.slots.init_row(stream.row, stream.reference_face, stream.rng)
        stream.needs_init = False

    def _restart(self, stream: _Stream) -> None:
        """A new epoch now, dropping pending audio (as `reset`)."""
        stream.next_fifo.clear()
        stream.next_arrivals.clear()
        self._start_epoch(stream)

    def _start_epoch(self, stream: _Stream) -> None:
        """A fresh model state and empty current-epoch buffers, beginning at the stream's sample count."""
        if stream.in_flight:
            stream.needs_init = True  # the slot belongs to the running step; initialised at commit
        else:
            self._init_slot(stream)
        stream.epoch += 1
        stream.epoch_start_sample = stream.received_samples - stream.next_fifo.size
        stream.fifo.clear()
        stream.arrivals.clear()
        stream.levels.clear()
        stream.fills.clear()
        stream.stalled = False
        stream.runout_ns = None
        stream.stall_filled = 0
        stream.epoch_samples_in = stream.epoch_real_samples = 0
        stream.steps_taken = stream.steps_committed = 0
        stream.ending_steps = None

    def _start_next_epoch(self, stream: _Stream) -> None:
        """After a flush has drained: start the next epoch with the audio that queued behind it."""
        queued, arrivals = stream.next_fifo, stream.next_arrivals
        stream.next_fifo, stream.next_arrivals = _SampleFifo(), []
        self._start_epoch(stream)
        stream.epoch_start_sample = stream.received_samples - queued.size
        stream.fifo = queued
        stream.epoch_samples_in = stream.epoch_real_samples = queued.size
        stream.arrivals.extend(arrivals)


_FLOAT32 = np.dtype(np.float32)


def _row_of(stream: _Stream) -> int:
    return stream.row


def _levels_dbfs(audio: np.ndarray) -> np.ndarray:
    """RMS level of each row of (B, n) PCM in dB re full scale, floored at -120 dBFS -> (B,) float64."""
    mean_square = np.einsum("ij,ij->i", audio, audio, dtype=np.float64) / max(1, audio.shape[1])
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
