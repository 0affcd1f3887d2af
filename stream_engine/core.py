"""The engine core: many audio streams in, landmark frames out. Synchronous and free of I/O.

One shared `StepRunner` (the exported 40 ms step) serves every stream; each stream owns its own state
dictionary. Audio is pushed per stream in chunks of any length; whenever a stream holds the samples of its
next step, that step can run, and streams that are ready together are stepped in one batched call::

    core = EngineCore(runner)
    core.open_stream("alice")
    core.push_audio("alice", samples_16k, arrival_ns=clock.now_ns())
    frames = core.process()            # take_batch -> runner.step -> commit, until nothing is ready

The asyncio shell (`engine.py`) uses the three parts separately so that the runner runs off the event loop
while pushes continue: ``batch = core.take_batch()``; ``runner.step(batch.audio, batch.state)`` in an
executor; ``core.commit(batch, ...)`` back on the loop.

Timing (DESIGN §2): step k of an epoch consumes samples [640k, 640k + 640) of that epoch and emits landmark
frame j = k - L, whose own audio is [640j, 640j + 640). The first L outputs of an epoch are the reference face
(look-ahead warm-up) and are dropped. A frame is emitted as soon as the sample 640(j + L + 1) - 1 has arrived;
its `audio_ready_ns` is the arrival time of the chunk that carried that sample. Frame presentation times
come from sample counts only (`clock.SampleClock`), so they never drift.

Epochs: `reset` (barge-in) drops pending audio and restarts the model state at once; `flush` (end of a
segment) pads the received audio with silence so every frame of it is emitted, then restarts the state.
Each restart begins a new epoch at the stream's current sample count; `seq` keeps counting across epochs.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from stream_engine.clock import SampleClock

StateDict = dict[str, np.ndarray]


class StepRunnerLike(Protocol):
    """What the core needs from a runner (the full protocol lives in `stream_engine.runtime.base`)."""

    contract: Any

    def initial_state(self, batch: int, reference_face: np.ndarray | None = None,
                      rng: np.random.Generator | None = None) -> StateDict: ...

    def step(self, audio: np.ndarray, state: StateDict) -> tuple[np.ndarray, StateDict]: ...


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


def _default_stack_states(states: list[StateDict]) -> StateDict:
    return {name: np.concatenate([s[name] for s in states], axis=0) for name in states[0]}


def _default_unstack_state(state: StateDict, batch: int) -> list[StateDict]:
    return [{name: value[i : i + 1] for name, value in state.items()} for i in range(batch)]


def _batching_functions() -> tuple[Callable, Callable]:
    """The runtime's `stack_states`/`unstack_state` when present; equivalent batch-dim-0 fallbacks otherwise."""
    try:
        from stream_engine.runtime.base import stack_states, unstack_state
    except ImportError:
        return _default_stack_states, _default_unstack_state
    return stack_states, unstack_state


@dataclasses.dataclass(frozen=True, slots=True)
class FrameTimings:
    """Engine-clock timestamps (ns, `clock.Clock.now_ns`) of one landmark frame's life.

    Attributes:
        audio_ready_ns: arrival of the chunk carrying the last audio sample this frame depends on.
        infer_start_ns, infer_end_ns: the runner call that produced it (shared by the whole batch).
        publish_ns: when the shell handed it to the outputs (0 until then). Each output adds its own send time.
    """

    audio_ready_ns: int
    infer_start_ns: int
    infer_end_ns: int
    publish_ns: int = 0


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

    @property
    def pts_ms(self) -> float:
        return self.pts_ns / 1e6


@dataclasses.dataclass(frozen=True)
class StepBatch:
    """Steps taken out of the core for one runner call (one step of each listed stream).

    Attributes:
        stream_ids, epochs, step_indices: per batch row, which stream/epoch/step it is.
        audio: (B, samples_per_frame) float32.
        state: stacked runner state, batch on dim 0.
        audio_ready_ns: per row, arrival of the last sample of that step.
    """

    stream_ids: tuple[str, ...]
    epochs: tuple[int, ...]
    step_indices: tuple[int, ...]
    audio: np.ndarray
    state: StateDict
    audio_ready_ns: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.stream_ids)


class _SampleFifo:
    """A FIFO of float32 samples stored as the chunks they arrived in (no copying on push)."""

    def __init__(self) -> None:
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._head = 0  # samples already consumed from _chunks[0]
        self.size = 0

    def push(self, samples: np.ndarray) -> None:
        if samples.size:
            self._chunks.append(samples)
            self.size += samples.size

    def take(self, num_samples: int) -> np.ndarray:
        """Remove and return the first `num_samples` (caller checks `size`)."""
        out = np.empty(num_samples, dtype=np.float32)
        filled = 0
        while filled < num_samples:
            chunk = self._chunks[0]
            n = min(num_samples - filled, chunk.size - self._head)
            out[filled : filled + n] = chunk[self._head : self._head + n]
            filled += n
            self._head += n
            if self._head == chunk.size:
                self._chunks.popleft()
                self._head = 0
        self.size -= num_samples
        return out

    def clear(self) -> None:
        self._chunks.clear()
        self._head = 0
        self.size = 0


class _Stream:
    """Everything the core remembers about one stream (its runner state included)."""

    def __init__(self, stream_id: str, reference_face: np.ndarray | None, rng: np.random.Generator) -> None:
        self.stream_id = stream_id
        self.reference_face = reference_face
        self.rng = rng
        self.state: StateDict = {}
        self.fifo = _SampleFifo()           # audio of the current epoch not yet stepped
        self.next_fifo = _SampleFifo()      # audio that arrived while a flushed epoch drains
        self.next_arrivals: list[tuple[int, int]] = []  # (end sample relative to its first sample, arrival_ns)
        self.received_samples = 0           # real samples accepted over the stream's life (the sample clock)
        self.epoch = -1
        self.epoch_start_sample = 0         # stream sample index where the epoch began
        self.epoch_samples_in = 0           # samples (real + flush padding) pushed into this epoch
        self.epoch_real_samples = 0
        self.steps_taken = 0                # steps handed to the runner in this epoch
        self.steps_committed = 0
        self.arrivals: collections.deque[tuple[int, int]] = collections.deque()  # (epoch end sample, ns)
        self.levels: collections.deque[float] = collections.deque()  # dBFS of steps not yet emitted as frames
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
    """

    def __init__(self, runner: StepRunnerLike, max_batch_streams: int = 64, max_pending_s: float = 30.0,
                 seed: int | None = None) -> None:
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
        self._stack, self._unstack = _batching_functions()
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

    def open_stream(self, stream_id: str, reference_face: np.ndarray | None = None,
                    seed: int | None = None) -> None:
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
        stream = _Stream(stream_id, reference_face, np.random.default_rng(seed))
        self._start_epoch(stream)
        self._streams[stream_id] = stream

    def close_stream(self, stream_id: str) -> None:
        """Forget a stream; a batch in flight for it is discarded on commit. Unknown ids are ignored."""
        self._streams.pop(stream_id, None)

    def reset(self, stream_id: str) -> int:
        """Barge-in: drop the stream's pending audio and restart its model state now. Returns the new epoch."""
        stream = self._get(stream_id)
        stream.next_fifo.clear()
        stream.next_arrivals.clear()
        self._start_epoch(stream)
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
    def push_audio(self, stream_id: str, samples: np.ndarray, arrival_ns: int) -> None:
        """Append mono PCM at the contract's rate to a stream.

        Args:
            samples: (num_samples,) float, nominally in [-1, 1] (values beyond are clipped). Empty is a no-op.
            arrival_ns: engine-clock time the chunk arrived (stamped on the frames that depend on it).
        Raises:
            UnknownStreamError, AudioChunkError (not 1-D, NaN/inf; the stream is unchanged), OverloadError.
        """
        stream = self._get(stream_id)
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise AudioChunkError(f"audio must be mono (num_samples,), got shape {samples.shape}")
        if samples.size == 0:
            return
        if not np.issubdtype(samples.dtype, np.floating):
            raise AudioChunkError(f"audio must be floating point PCM in [-1, 1], got dtype {samples.dtype}")
        samples = samples.astype(np.float32, copy=True)
        if not np.all(np.isfinite(samples)):
            raise AudioChunkError("audio chunk contains NaN or infinite samples")
        np.clip(samples, -1.0, 1.0, out=samples)
        if stream.fifo.size + stream.next_fifo.size + samples.size > self.max_pending_samples:
            raise OverloadError(
                f"stream {stream_id!r} would hold more than {self.max_pending_samples / self.sample_rate_hz:.1f} s "
                "of unprocessed audio (input faster than the engine)")
        stream.received_samples += samples.size
        if stream.ending_steps is not None:  # a flushed epoch is draining: this audio opens the next one
            stream.next_fifo.push(samples)
            stream.next_arrivals.append((stream.next_fifo.size, int(arrival_ns)))
            return
        stream.fifo.push(samples)
        stream.epoch_samples_in += samples.size
        stream.epoch_real_samples += samples.size
        stream.arrivals.append((stream.epoch_samples_in, int(arrival_ns)))

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
        return (stream.fifo.size == 0 and stream.next_fifo.size == 0 and not stream.in_flight
                and stream.ending_steps is None)

    def received_samples(self, stream_id: str) -> int:
        return self._get(stream_id).received_samples

    def epoch(self, stream_id: str) -> int:
        return self._get(stream_id).epoch

    # ------------------------------------------------------------------ stepping
    def has_work(self) -> bool:
        """True when some stream not already in flight holds a full step of audio."""
        spf = self.samples_per_frame
        return any(s.fifo.size >= spf and not s.in_flight for s in self._streams.values())

    def take_batch(self, max_streams: int | None = None) -> StepBatch | None:
        """Take one step's audio and state from each ready stream (at most `max_streams`), or None.

        The streams stay "in flight" until `commit` or `abort`; pushes, resets and closes may happen meanwhile.
        """
        limit = min(max_streams or self.max_batch_streams, self.max_batch_streams)
        spf = self.samples_per_frame
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
        audio = np.empty((len(picked), spf), dtype=np.float32)
        ready_ns, steps = [], []
        for row, stream in enumerate(picked):
            audio[row] = stream.fifo.take(spf)
            k = stream.steps_taken
            stream.steps_taken += 1
            steps.append(k)
            ready_ns.append(self._arrival_of(stream, spf * (k + 1) - 1))
            stream.levels.append(_level_dbfs(audio[row]))
            stream.in_flight = True
        state = self._stack([s.state for s in picked]) if len(picked) > 1 else picked[0].state
        return StepBatch(tuple(s.stream_id for s in picked), tuple(s.epoch for s in picked), tuple(steps),
                         audio, state, tuple(ready_ns))

    def commit(self, batch: StepBatch, landmarks: np.ndarray, new_state: StateDict,
               infer_start_ns: int, infer_end_ns: int) -> list[LandmarkFrame]:
        """Store the runner's outputs for `batch` and return the frames it completes (look-ahead warm-up dropped).

        Rows of streams that were closed or reset while the batch was in flight are discarded.

        Args:
            landmarks: (B, num_landmarks, landmark_dims) runner output.
            new_state: stacked next state, batch on dim 0.
        """
        landmarks = np.asarray(landmarks, dtype=np.float32)
        expect = (len(batch), self.num_landmarks, self.landmark_dims)
        if landmarks.shape != expect:
            self.abort(batch)
            raise CoreError(f"runner returned landmarks of shape {landmarks.shape}, expected {expect}")
        states = self._unstack(new_state, len(batch)) if len(batch) > 1 else [new_state]
        frames: list[LandmarkFrame] = []
        for row, stream_id in enumerate(batch.stream_ids):
            stream = self._streams.get(stream_id)
            if stream is None or stream.epoch != batch.epochs[row]:
                continue  # closed or reset meanwhile: this output belongs to nobody
            stream.in_flight = False
            stream.state = states[row]
            stream.steps_committed += 1
            k = batch.step_indices[row]
            if k >= self.lookahead_frames:
                j = k - self.lookahead_frames
                level = stream.levels.popleft()
                ahead = max(stream.levels) if stream.levels else level
                frames.append(LandmarkFrame(
                    stream_id=stream_id, seq=stream.seq, epoch=stream.epoch, index=j,
                    pts_ns=self.sample_clock.time_ns(stream.epoch_start_sample + j * self.samples_per_frame),
                    landmarks=landmarks[row].copy(), audio_level_dbfs=level, audio_ahead_dbfs=ahead,
                    timings=FrameTimings(batch.audio_ready_ns[row], int(infer_start_ns), int(infer_end_ns))))
                stream.seq += 1
            if stream.ending_steps is not None and stream.steps_committed >= stream.ending_steps:
                self._start_next_epoch(stream)
        return frames

    def abort(self, batch: StepBatch) -> list[str]:
        """The runner failed on `batch`: restart every stream in it (new epoch). Returns the affected ids."""
        affected = []
        for row, stream_id in enumerate(batch.stream_ids):
            stream = self._streams.get(stream_id)
            if stream is not None and stream.epoch == batch.epochs[row]:
                stream.in_flight = False
                self.reset(stream_id)
                affected.append(stream_id)
        return affected

    def process(self, now_ns: Callable[[], int] | None = None, max_steps: int | None = None) -> list[LandmarkFrame]:
        """Run every ready step synchronously (tests, benchmarks, offline use). Returns the frames in order.

        Args:
            now_ns: clock for the inference timestamps (0 when None).
            max_steps: stop after this many runner calls.
        """
        frames: list[LandmarkFrame] = []
        calls = 0
        while max_steps is None or calls < max_steps:
            batch = self.take_batch()
            if batch is None:
                break
            t0 = now_ns() if now_ns else 0
            try:
                out, new_state = self.runner.step(batch.audio, batch.state)
            except Exception:
                self.abort(batch)
                raise
            t1 = now_ns() if now_ns else 0
            frames.extend(self.commit(batch, out, new_state, t0, t1))
            calls += 1
        return frames

    # ------------------------------------------------------------------ internals
    def _get(self, stream_id: str) -> _Stream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise UnknownStreamError(f"no open stream {stream_id!r}") from None

    def _start_epoch(self, stream: _Stream) -> None:
        """A fresh model state and empty current-epoch buffers, beginning at the stream's sample count."""
        stream.state = self.runner.initial_state(1, reference_face=stream.reference_face, rng=stream.rng)
        stream.epoch += 1
        stream.epoch_start_sample = stream.received_samples - stream.next_fifo.size
        stream.fifo.clear()
        stream.arrivals.clear()
        stream.levels.clear()
        stream.epoch_samples_in = stream.epoch_real_samples = 0
        stream.steps_taken = stream.steps_committed = 0
        stream.in_flight = False
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

    @staticmethod
    def _arrival_of(stream: _Stream, sample_index: int) -> int:
        """Arrival time of the chunk holding epoch sample `sample_index` (older chunks are forgotten)."""
        arrivals = stream.arrivals
        while len(arrivals) > 1 and arrivals[0][0] <= sample_index:
            arrivals.popleft()
        return arrivals[0][1]


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
