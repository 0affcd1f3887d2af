"""The asyncio shell around `EngineCore`: sessions, the inference task, and fan-out to outputs.

One task owns inference. It waits until some stream holds a full step of audio, takes a batch of every ready
stream from the core (on the loop), runs the shared runner in a single worker thread (onnxruntime and numpy
release the GIL, so the loop keeps accepting audio and serving clients meanwhile), commits the result (on the
loop), derives the batch's signals in one call (`BatchSignalExtractor`, one slot per stream; one compiled loop
over the batch, `signal_kernel`, when numba is installed), and publishes the step as columns (`FrameBatch`):
per-stream statistics are recorded for the whole step at once (`SlotStats`), a sink with `send_batch` gets
the batch, one without it `send_frames(batch.frames())`, a frame subscriber its `LandmarkFrame`; frame
objects are built only for those who ask (the batch sink contract: `stream_engine/outputs/__init__.py`). No
sink is waited on. Frames therefore leave as soon as their audio has arrived and the step has run; there is
no timer.

Every stream's model state lives in one slot of the runner's state store (`EngineCore.slots`, preallocated for
`max_streams`); a runner call steps the batch's slots: ONNX Runtime's store is double buffered, so a contiguous
range of 32 or more slots is stepped with no copy (state read from one bank, the next state written into the
other), and other calls gather the slots into buffers bound once per batch size, step and scatter back.
`open_stream` returns the stream's handle (`Session`): it owns the slot (through the core and the engine's
signal extractor), its epoch and frame subscriptions; `close()` frees the slot.

Scheduling: a runner call takes every ready stream up to `Engine.batch_cap` (as many as the measured cost per
stream fits in `EngineConfig.batch_step_ms`, min(64, M) to M = `max_batch_streams`): most of the engine's own
work is a cost per call, so under load fewer, larger calls leave more of the CPU to the step. The step runs in
one inference thread (ONNX Runtime releases the GIL), so sockets and inputs are served meanwhile; while the
loop commits and publishes one batch the next is already queued to the thread (two at most).
`EngineConfig.batch_wait_ms` lets a batch wait for streams that are about to be ready, never past
`latency_budget_ms`; it is off by default (no gain measured in the 100-stream soak on a loaded 2-core machine).
A process that may run on one CPU only steps on the loop itself (`EngineConfig.inline_on_one_cpu`): there
the thread cannot run in parallel and the hand-offs cost CPU.
`FrameTimings` records audio ready -> taken into a batch -> step start/end -> publish for every frame.
Cores: one engine uses one intra-op thread by default; more cores are for more engine processes on one port
(`msync stream --workers N`, `stream_engine/workers.py`), which also spread the Python around the step. Two
intra-op threads (the runner keeps their pool from spinning) cost about 1.1x the CPU of one for an int8 B=64
step and cut its wall time (benchmarks/results/step_cores.md; stream_engine/serve/SCALING.md §1b).

Stalls: a timer task continues every stream whose audio stopped arriving for `stall_ms` (default the
look-ahead plus 80 ms) with silence on the wall clock, so the face returns to rest; those frames carry
`stalled=True` and the outputs get "stalled"/"resumed" stream events. Frames with non-finite landmarks are
never published: the stream restarts and gets an "error" and a "reset" event.

    engine = Engine(runner)
    engine.add_sink(VmcSink(VmcConfig()))
    async with engine:
        engine.open_stream("mic")
        engine.push_audio("mic", samples_16k)        # from any input task
        engine.push_audio_many(ids, chunks)          # several streams' chunks in one call ({position: error})
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import gc
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np

from stream_engine.batch_signals import BatchSignalExtractor
from stream_engine.clock import Clock, MonotonicClock
from stream_engine.core import CommittedFrames, CoreError, EngineCore, LandmarkFrame, StepBatch, is_stream_id
from stream_engine.frame_batch import FrameBatch
from stream_engine.memory import release_free_heap
from stream_engine.outputs import FrameSink
from stream_engine.runtime.base import StepRunner
from stream_engine.session import RecentValues, Session, SlotStats
from stream_engine.signals import SignalConfig, stream_seed

log = logging.getLogger(__name__)
T = TypeVar("T")

#: `Engine.batch_cap` never goes below min(this, max_batch_streams) streams per runner call (the fixed limit
#: before calls were sized by time: a slow model's calls stay as large as they were)
_BATCH_FLOOR = 64


def usable_cpus(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its affinity (the CPU count where that is unknown), lowered to its cgroup v2
    CPU quota rounded up (`cpu.max` = "QUOTA PERIOD" in microseconds, as `docker --cpus 1` or a Kubernetes CPU
    limit of 1 write "100000 100000"; "max ..." or no file: no quota)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        with open(cpu_max) as f:
            quota, period = f.read().split()[:2]
        if quota != "max" and int(period) > 0:
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


class EngineFullError(RuntimeError):
    """No more streams can be opened (`EngineConfig.max_streams`)."""


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """The engine shell.

    Attributes:
        max_streams: most open streams (further opens fail with `EngineFullError`).
        max_batch_streams: most streams per runner call (within the runner's own `max_batch()` where it has
            one: a TensorRT engine's batch profile). Below it, `batch_step_ms` decides.
        batch_step_ms: a runner call takes at most as many streams as the measured cost per stream (an
            average over recent calls) predicts to run in this long, never fewer than min(64,
            `max_batch_streams`) (also the size of the first calls, before any is measured) nor more than
            `max_batch_streams` (`Engine.batch_cap`). Near full load a frame can wait for the call in flight,
            the one queued behind it and then its own: about three times this. Larger calls cost less per
            stream (one pinned core, 512 streams, int8: 72.0 -> 62.5 us per frame with calls of at most 64
            against at most 256 streams, benchmarks/results/engine_stages_maxbatch64.md and
            _maxbatch256.md). 0 = `max_batch_streams` always. Must be finite.
        max_pending_s: most unprocessed audio a stream may hold (beyond: `OverloadError` for that push).
        seed: base seed (an integer >= 0) of the per-stream model noise (None = random).
        id_prefix: streams opened without an id are called f"{id_prefix}{n}", n = 1, 2, ... ("s1", "s2";
            `msync stream --workers` gives worker i "w<i>-s").
        signals: derive rig signals (mouth, visemes, blink, head pose) for every frame.
        slow_step_ms: log a warning when one runner call takes longer than this.
        inline_step_ms: a runner call predicted (from measured per-stream cost) to take less than this runs
            on the event loop itself, saving two thread hand-offs; longer ones go to the inference thread.
            0 = always use the thread.
        inline_on_one_cpu: when the process may run on one CPU only (its affinity when the engine is made),
            every runner call runs on the event loop: a second thread cannot step in parallel there, and
            handing each batch to it and back cost about 9 % more CPU per frame (one pinned core, 512 streams,
            B=64: benchmarks/results/engine_stages.md). Sockets wait while a step runs (a few ms), as they
            would wait for the core anyway.
        batch_wait_ms: when only some of the streams that are receiving audio are ready, wait up to this long
            for the others so they share one runner call, but never past the earliest ready frame's budget
            (`latency_budget_ms` minus the predicted step time). 0 = step whatever is ready at once.
        latency_budget_ms: engine-added latency a frame may spend waiting for batch partners plus the step.
        stall_ms: no audio for this long on a stream that has had audio -> continue it with silence (None =
            look-ahead + 80 ms; 0 = never).
        stall_fill_s: most silence added per stall beyond `stall_ms` (enough for the face to come to rest).
        batch_signals: derive the signals of a published batch in one call of the engine's
            `BatchSignalExtractor` (per-slot state arrays) instead of one `SignalExtractor` per stream; the
            values are the same (tests/test_engine_batch_signals.py), only the cost differs
            (benchmarks/results/engine_batch_signals.md).
        freeze_gc: at the end of `warm_up`, collect garbage once and move every object then alive into the
            collector's permanent generation (`gc.freeze`), so its full passes, which stop the event loop and
            with it every stream, walk only what serving allocates. A full pass over a started `msync stream`
            process (about 30,000 objects) took 6.4 ms; over the test suite's process (840,000 objects) up to
            0.7 s, which froze a reference stream in tests/test_ws_fuzz.py. Process-wide: an application that
            embeds the engine and wants its own collector policy sets False.
    """

    max_streams: int = 64
    max_batch_streams: int = 256
    batch_step_ms: float = 12.0
    max_pending_s: float = 30.0
    seed: int | None = None
    signals: bool = True
    slow_step_ms: float = 20.0
    inline_step_ms: float = 0.3
    inline_on_one_cpu: bool = True
    batch_wait_ms: float = 0.0
    latency_budget_ms: float = 10.0
    stall_ms: float | None = None
    stall_fill_s: float = 1.0
    batch_signals: bool = True
    freeze_gc: bool = True
    id_prefix: str = "s"

    def __post_init__(self) -> None:
        if self.max_streams < 1 or self.max_batch_streams < 1:
            raise ValueError("max_streams and max_batch_streams must be >= 1")
        if not (math.isfinite(self.max_pending_s) and self.max_pending_s > 0):
            raise ValueError("max_pending_s must be positive")
        if not (self.batch_step_ms >= 0 and math.isfinite(self.batch_step_ms)):
            raise ValueError(f"batch_step_ms must be a finite number >= 0, got {self.batch_step_ms!r}")
        if self.batch_wait_ms < 0 or self.latency_budget_ms <= 0:
            raise ValueError("batch_wait_ms must be >= 0 and latency_budget_ms positive")
        if self.stall_ms is not None and self.stall_ms < 0:
            raise ValueError("stall_ms must be >= 0 (0 = never fill stalls)")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be an integer >= 0 or null (random), got {self.seed!r}")


@dataclasses.dataclass
class EngineStats:
    """Counters over the engine's life, and recent per-call timings."""

    runner_calls: int = 0
    frames: int = 0
    runner_errors: int = 0
    sink_errors: int = 0
    nonfinite_frames: int = 0
    stalls: int = 0
    batch_sizes: deque[int] = dataclasses.field(default_factory=lambda: deque(maxlen=1000))
    step_ms: RecentValues = dataclasses.field(default_factory=lambda: RecentValues(1000))


class Engine:
    """Many streams, one shared runner, batched stepping off the event loop.

    Args:
        runner: a `StepRunner` (shared by every stream).
        cfg: `EngineConfig`.
        signal_cfg: how signals are derived (`EngineConfig.signals` turns them off).
        clock: engine clock for timestamps (monotonic by default).
        blendshapes: optional deriver called per published frame (after its signals are attached) that returns
            ARKit blendshape weights (name -> [0, 1]); they are attached as `LandmarkFrame.blendshapes`.
    """

    def __init__(
        self,
        runner: StepRunner,
        cfg: EngineConfig = EngineConfig(),
        signal_cfg: SignalConfig = SignalConfig(),
        clock: Clock | None = None,
        blendshapes: Callable[[LandmarkFrame], dict[str, float]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.signal_cfg = signal_cfg
        self.runner = runner
        self.clock = clock or MonotonicClock()
        self.blendshapes = blendshapes
        # most streams per call: the config's, within what the runner can take (a TensorRT engine's batch profile)
        runner_max = getattr(runner, "max_batch", None)
        self.max_batch_streams = (
            min(cfg.max_batch_streams, int(runner_max())) if callable(runner_max) else cfg.max_batch_streams
        )
        self.core = EngineCore(runner, self.max_batch_streams, cfg.max_pending_s, cfg.seed, capacity=cfg.max_streams)
        self.batch_signals = (
            BatchSignalExtractor(signal_cfg, self.core.slots.capacity) if cfg.signals and cfg.batch_signals else None
        )
        self.slot_stats = SlotStats(self.core.slots.capacity)  # per-slot statistics of published frames
        self.contract = runner.contract
        self.sample_rate_hz = self.core.sample_rate_hz
        self.model_reference_face = np.asarray(self.contract.reference_face, dtype=np.float32)
        self.sessions: dict[str, Session] = {}
        self.sinks: list[FrameSink] = []
        self.stats = EngineStats()
        self._ids = itertools.count(1)
        self.id_prefix = cfg.id_prefix  # ids the engine gives streams opened without one: f"{id_prefix}{n}"
        # None: model noise seeded by opening order (`EngineCore`); an int: by stream id, `stream_seed(base, id)`,
        # the same whatever was opened before (serve's replicas)
        self.noise_seed_base: int | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._work: asyncio.Event | None = None
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._last_slow_warning = 0.0
        self._ms_per_row: float | None = None  # measured runner cost per stream and call (EMA)
        # runner calls predicted to take less than this run on the loop (all of them on a one-CPU process)
        self.inline_step_ms = math.inf if cfg.inline_on_one_cpu and usable_cpus() == 1 else cfg.inline_step_ms
        self._ms_per_call: float = 0.0
        stall_ms = cfg.stall_ms if cfg.stall_ms is not None else self.core.lookahead_frames * self.frame_ms + 80.0
        self.stall_ns = int(stall_ms * 1e6)

    # ------------------------------------------------------------------ timing facts
    @property
    def frame_ms(self) -> float:
        return 1000.0 * self.core.samples_per_frame / self.sample_rate_hz

    @property
    def algorithmic_latency_ms(self) -> float:
        """From a frame's first audio sample to the last sample its step needs: look-ahead + the frame's own
        40 ms window ((L + 1) frames). Compute, queuing and sending come on top (the engine-added latency)."""
        return (self.core.lookahead_frames + 1) * self.frame_ms

    def latency_facts(self) -> dict[str, Any]:
        return {
            "lookahead_frames": self.core.lookahead_frames,
            "lookahead_ms": self.core.lookahead_frames * self.frame_ms,
            "frame_window_ms": self.frame_ms,
            "algorithmic_latency_ms": self.algorithmic_latency_ms,
        }

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the inference task (idempotent). First the batched signals' loop is compiled, or loaded from
        numba's cache (`signal_kernel`: about 4 s the first time on a machine, 0.3 s after, once per process),
        so that it never happens on a live frame."""
        if self._executor is not None:
            return
        self.core.warm_up()  # the core's compiled passes (`core_kernel`), likewise
        if self.batch_signals is not None:
            self.batch_signals.warm_up()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="msync-infer")
        self._work = asyncio.Event()
        self.spawn(self._inference_loop(), name="msync-inference")
        if self.stall_ns > 0:
            self.spawn(self._stall_loop(), name="msync-stalls")

    async def warm_up(self) -> None:
        """Before serving: every row of the state store written once, and one step of the largest batch where
        steps will run (the inference thread, or the loop on one CPU), so the preallocated store and the runner's working memory for that batch (ONNX
        Runtime's arena, the bound buffers) are in memory from the start instead of being allocated under
        load (the first call of a batch size is slow, and the process would seem to grow with its streams).
        The step runs on rows that no stream holds and leaves them free (a stream's row is initialised when
        it opens). Does nothing once a stream is open. Starts the engine (`start`). Then, with
        `EngineConfig.freeze_gc`, one garbage collection and `gc.freeze()` (see there).
        `start` has compiled the batched signals' loop."""
        await self.start()
        core, slots = self.core, self.core.slots
        if slots.used or self.sessions:
            return
        for values in slots.store.values():  # every bank
            values.fill(0)
        batch = min(self.max_batch_streams, slots.capacity)
        rows = [slots.alloc() for _ in range(batch)]
        try:
            for row in rows:
                slots.init_row(row)
            audio = np.zeros((batch, core.samples_per_frame), dtype=np.float32)
            order = np.array(sorted(rows), dtype=np.intp)
            if math.isinf(self.inline_step_ms):  # steps run on the loop (one CPU): warm its buffers
                self.runner.step_slots(slots, order, audio)
            else:
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self.runner.step_slots, slots, order, audio
                )
        finally:
            for row in rows:
                slots.free(row)
        if self.cfg.freeze_gc:
            gc.collect()
            gc.freeze()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def spawn(
        self, coro: Coroutine[Any, Any, T], name: str | None = None, *, log_failure: bool = True
    ) -> asyncio.Task[T]:
        """Run a coroutine as a task owned by the engine (kept in a set; cancelled by `aclose`). A task that fails
        is logged with its traceback, unless `log_failure` is False (the caller reports the task's exception)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done if log_failure else self._tasks.discard)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed: %r", task.get_name(), task.exception(), exc_info=task.exception())

    async def aclose(self) -> None:
        """Stop inference and every owned task, close the sinks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sink in self.sinks:
            try:
                await sink.aclose()
            except Exception as exc:
                log.warning("closing output %r failed: %s", sink, exc)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def drain(self, timeout_s: float = 1.0) -> None:
        """Shutdown, before `aclose`: flush every open stream (the frames of its look-ahead tail, so every
        received sample's frame is made), wait up to `timeout_s` in all for them to be published, then close every
        stream (outputs see `closed`: viewers and OSC get the event, VMC/VTube Studio return the face to rest).
        Streams still open after the wait lose their remaining frames."""
        ids = list(self.sessions)
        for sid in ids:
            with contextlib.suppress(Exception):  # a stream closed meanwhile, or one whose runner failed
                self.flush(sid)
        if ids and timeout_s > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(self.wait_drained(sid) for sid in ids)), timeout_s)
        for sid in list(self.sessions):
            self.close_stream(sid)

    def add_sink(self, sink: FrameSink) -> None:
        self.sinks.append(sink)

    # ------------------------------------------------------------------ streams
    def open_stream(
        self,
        stream_id: str | None = None,
        reference_face: np.ndarray | None = None,
        source: str = "",
        seed: int | None = None,
    ) -> Session:
        """Open a stream. `reference_face`: (68, 2) in normalised crop coordinates or pixels (`EngineCore.open_stream`
        normalises them, as the WebSocket hello does). Raises `EngineFullError`, or ValueError for a taken id / bad
        reference face."""
        if stream_id is None:
            stream_id = f"{self.id_prefix}{next(self._ids)}"
            while stream_id in self.sessions:
                stream_id = f"{self.id_prefix}{next(self._ids)}"
        if not is_stream_id(stream_id):
            raise ValueError("stream id must be a non-empty string of at most 128 bytes")
        if stream_id in self.sessions:
            raise ValueError(f"stream {stream_id!r} is already open")
        if len(self.sessions) >= self.cfg.max_streams:
            raise EngineFullError(f"the engine already serves {len(self.sessions)} streams (max_streams)")
        if seed is None and self.noise_seed_base is not None:
            seed = stream_seed(self.noise_seed_base, stream_id)
        self.core.open_stream(stream_id, reference_face, seed)
        signal_seed = stream_seed(self.cfg.seed, stream_id) if seed is None else seed
        own_face = self.core.reference_face(stream_id)
        bx = self.batch_signals
        session = Session(
            stream_id,
            own_face,
            self.model_reference_face,
            self.signal_cfg if self.cfg.signals and bx is None else None,
            source,
            seed=signal_seed,
            engine=self,
        )
        slot = self.core.slot_of(stream_id)
        if bx is not None:  # the stream's signal state lives in its slot of the batched extractor
            if slot >= bx.capacity:  # the core's store grew (slots of closed streams held by a running step)
                bx.grow(max(self.core.slots.capacity, slot + 1))
            bx.open(slot, own_face if own_face is not None else self.model_reference_face, signal_seed, stream_id)
            session.signal_slot = slot
        store = self.slot_stats
        if slot >= store.capacity:  # as above: the store grew; the open sessions' views follow it
            store.grow(max(self.core.slots.capacity, slot + 1))
            for other in self.sessions.values():
                other.bind_stats(store, self.core.slot_of(other.stream_id))
        store.open(slot, session.epoch)
        session.bind_stats(store, slot)
        self.sessions[stream_id] = session
        self._event(stream_id, "opened", source=source)
        return session

    def close_stream(self, stream_id: str) -> None:
        """Forget a stream (a batch in flight for it is discarded). Unknown ids are ignored."""
        session = self.sessions.pop(stream_id, None)
        if session is None:
            return
        if self.batch_signals is not None and session.signal_slot is not None:
            self.batch_signals.close(session.signal_slot)
            session.signal_slot = None
        slot = self.core.slot_of(stream_id)
        session.unbind_stats()
        self.slot_stats.close(slot)
        self.core.close_stream(stream_id)
        self._event(stream_id, "closed")
        self._notify_progress()
        if not self.sessions:  # idle: the heap its streams freed goes back to the OS (a few ms; memory.py)
            release_free_heap()

    def push_audio(self, stream_id: str, samples: np.ndarray, arrival_ns: int | None = None) -> None:
        """Mono float32 PCM at the model rate for one stream (see `EngineCore.push_audio` for errors)."""
        if self.core.push_audio(stream_id, samples, self.clock.now_ns() if arrival_ns is None else arrival_ns):
            self._event(stream_id, "resumed")
        self._wake()

    def push_audio_many(
        self,
        stream_ids: Sequence[str],
        chunks: np.ndarray | Sequence[np.ndarray],
        arrival_ns: int | Sequence[int] | None = None,
    ) -> dict[int, CoreError]:
        """One chunk for each of several streams in one call (`EngineCore.push_audio_many`: the same checks as
        `push_audio`, one scatter into the streams' rings), e.g. every chunk that arrived in one event-loop turn.

        Args:
            stream_ids: K ids (one id may repeat: its chunks are appended in order).
            chunks: K mono float chunks, or one (K, n) float array.
            arrival_ns: engine-clock arrival, one for all or one per chunk (None: now).
        Returns:
            {position: error} of the refused chunks (`UnknownStreamError`, `AudioChunkError`, `OverloadError`),
            each leaving its stream unchanged; every other chunk is taken. Nothing is raised for them, so one bad
            stream never costs the others their audio.
        """
        resumed, errors = self.core.push_audio_many(
            stream_ids, chunks, self.clock.now_ns() if arrival_ns is None else arrival_ns
        )
        for sid in resumed:
            self._event(sid, "resumed")
        self._wake()
        return errors

    def reset(self, stream_id: str) -> int:
        """Barge-in: drop pending audio, restart the model state now, tell outputs (stale frames are dropped,
        VMC closes the mouth). Returns the new epoch."""
        epoch = self.core.reset(stream_id)
        session = self.sessions.get(stream_id)
        if session is not None:
            session.stats.resets += 1
        self._event(stream_id, "reset", epoch=epoch)
        self._notify_progress()
        return epoch

    def flush(self, stream_id: str) -> int:
        """End of segment: emit every frame of the received audio (padded with silence), then restart.
        Returns the number of frames still to come."""
        left = self.core.flush(stream_id, self.clock.now_ns())
        session = self.sessions.get(stream_id)
        if session is not None:
            session.stats.flushes += 1
        self._event(stream_id, "flushed", frames_left=left)
        if self._work is not None:
            self._work.set()
        self._notify_progress()
        return left

    def note_error(self, stream_id: str, message: str) -> None:
        session = self.sessions.get(stream_id)
        if session is not None:
            session.note_error(message)
        self._event(stream_id, "error", message=message)

    def has_capacity(self, stream_id: str, max_pending_s: float = 1.0) -> bool:
        """True when the stream holds at most `max_pending_s` of unprocessed audio (or is gone): what
        `wait_capacity` waits for, checked without awaiting (the common case of a real-time source)."""
        limit = int(min(max_pending_s, self.cfg.max_pending_s / 2) * self.sample_rate_hz)
        return not self.core.has_stream(stream_id) or self.core.pending_samples(stream_id) <= limit

    async def wait_capacity(self, stream_id: str, max_pending_s: float = 1.0) -> None:
        """Back-pressure for faster-than-real-time sources: wait until the stream holds at most
        `max_pending_s` of unprocessed audio (returns at once if the stream is gone)."""
        await self._wait(lambda: self.has_capacity(stream_id, max_pending_s))

    async def wait_drained(self, stream_id: str) -> None:
        """Wait until every frame the stream's audio can make has been published (use after `flush`)."""
        await self._wait(lambda: not self.core.has_stream(stream_id) or self.core.is_drained(stream_id))

    async def _wait(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds; re-checked after every commit, reset, flush and close."""
        if predicate():
            return
        future = asyncio.get_running_loop().create_future()
        waiter = (predicate, future)
        self._waiters.append(waiter)
        try:
            await future
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        """New audio: wake the inference task if it waits for work."""
        if self._work is not None and not self._work.is_set():
            self._work.set()

    def _notify_progress(self) -> None:
        for waiter in list(self._waiters):
            predicate, future = waiter
            if not future.done() and predicate():
                future.set_result(None)
                self._waiters.remove(waiter)

    def _event(self, stream_id: str, event: str, **fields: Any) -> None:
        message = {"type": "stream", "v": 1, "event": event, "stream": stream_id, **fields}
        for sink in self.sinks:
            try:
                sink.stream_event(message)
            except Exception as exc:
                self.stats.sink_errors += 1
                log.warning("output %r failed on a stream event: %s", sink, exc)

    # ------------------------------------------------------------------ inference
    def _run_batch(self, batch: StepBatch) -> tuple[np.ndarray, int, int]:
        """Worker thread: one runner call (gather, step, scatter in the slot store), timed on the engine clock."""
        t0 = self.clock.now_ns()
        landmarks = self.core.run_batch(batch)
        return landmarks, t0, self.clock.now_ns()

    async def _stall_loop(self) -> None:
        """Every 20 ms: continue streams whose audio stopped with silence (`EngineCore.fill_stalls`)."""
        period = min(0.02, self.stall_ns / 4e9)
        while True:
            await asyncio.sleep(period)
            events = self.core.fill_stalls(self.clock.now_ns(), self.stall_ns, self.cfg.stall_fill_s)
            for sid, event in events:
                self.stats.stalls += 1
                self._event(sid, event)
            if self.core.has_work() and self._work is not None:
                self._work.set()

    def batch_cap(self) -> int:
        """Most streams the next runner call takes: `EngineConfig.batch_step_ms` over the measured cost per
        stream (`_ms_per_row`, an average over recent calls), between min(64, M) and M, M being
        `max_batch_streams` within what the runner takes (`max_batch()` where it has one): min(64, M) until a
        call has been measured, M with `batch_step_ms` = 0 or a measured cost of 0."""
        top = self.max_batch_streams
        floor = min(_BATCH_FLOOR, top)
        per_row = self._ms_per_row
        if self.cfg.batch_step_ms <= 0:
            return top
        if per_row is None:
            return floor
        if per_row <= 0:
            return top
        return max(floor, min(top, int(self.cfg.batch_step_ms / per_row)))

    def _batch_wait_s(self) -> float:
        """How long to wait for more streams before stepping what is ready (0 = step now).

        Waits only while some stream that is receiving audio is not yet ready, and only until the earliest
        ready step's audio has waited `latency_budget_ms` minus the predicted step time."""
        cfg = self.cfg
        if cfg.batch_wait_ms <= 0:
            return 0.0
        ready = self.core.ready_count()
        if ready == 0 or ready >= min(len(self.sessions), self.batch_cap()):
            return 0.0
        oldest = self.core.oldest_ready_ns()
        predicted = self._ms_per_call + (self._ms_per_row or 0.0) * len(self.sessions)
        spent_ms = (self.clock.now_ns() - oldest) / 1e6 if oldest is not None else 0.0
        left_ms = min(cfg.batch_wait_ms, cfg.latency_budget_ms - predicted - spent_ms)
        return max(0.0, left_ms) / 1e3

    async def _inference_loop(self) -> None:
        """Take ready batches, keep the inference thread busy back to back (up to two batches queued: the next
        step runs while the loop commits and publishes the previous one), commit in order."""
        loop = asyncio.get_running_loop()
        assert self._work is not None
        pending: deque[tuple[StepBatch, asyncio.Future[tuple[np.ndarray, int, int]]]] = deque()
        while True:
            await self._work.wait()
            self._work.clear()
            wait_s = self._batch_wait_s()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                self._work.clear()
            while True:
                ran_inline = False
                while len(pending) < 2 and (batch := self._take()) is not None:
                    predicted_ms = None if self._ms_per_row is None else self._ms_per_row * len(batch)
                    if not pending and predicted_ms is not None and predicted_ms < self.inline_step_ms:
                        try:
                            result = self._run_batch(batch)  # cheaper than a thread hand-off
                        except Exception as exc:
                            self._runner_failed(batch, exc)
                        else:
                            self._finish_batch(batch, *result)
                        ran_inline = True
                        break
                    pending.append((batch, loop.run_in_executor(self._executor, self._run_batch, batch)))
                if ran_inline:
                    await asyncio.sleep(0)  # inline steps never await: let relays and inputs run between them
                    continue
                if not pending:
                    break
                batch, future = pending.popleft()
                try:
                    result = await future
                except asyncio.CancelledError:
                    for _, f in pending:
                        f.cancel()
                    raise
                except Exception as exc:  # a runner failure costs the batch's streams their state, nothing more
                    self._runner_failed(batch, exc)
                    continue
                self._finish_batch(batch, *result)
                await asyncio.sleep(0)  # let relays and inputs run between batches

    def _take(self) -> StepBatch | None:
        return self.core.take_batch(self.batch_cap(), now_ns=self.clock.now_ns())

    def _runner_failed(self, batch: StepBatch, exc: Exception) -> None:
        self.stats.runner_errors += 1
        affected = self.core.abort(batch)
        log.error("runner failed on a batch of %d streams: %r; those streams were reset", len(batch), exc)
        for sid in affected:
            self.note_error(sid, f"model step failed ({type(exc).__name__}: {exc}); stream reset")
            self._event(sid, "reset", epoch=self.core.epoch(sid))
        self._notify_progress()

    def _finish_batch(self, batch: StepBatch, landmarks: np.ndarray, t0: int, t1: int) -> None:
        """On the loop: commit a finished step, report non-finite rows, publish the frames."""
        try:
            committed = self.core.commit_batch(batch, landmarks, t0, t1)
        except Exception as exc:  # wrong landmark shape: the core has restarted the batch's streams
            self.stats.runner_errors += 1
            log.error("bad runner output for a batch of %d streams: %r; those streams were reset", len(batch), exc)
            for sid in batch.stream_ids:
                if self.core.has_stream(sid):
                    self.note_error(sid, f"model step gave unusable output ({exc}); stream reset")
                    self._event(sid, "reset", epoch=self.core.epoch(sid))
            self._notify_progress()
            return
        self.stats.runner_calls += 1
        self.stats.batch_sizes.append(len(batch))
        step_ms = (t1 - t0) / 1e6
        self.stats.step_ms.append(step_ms)
        per_row = step_ms / len(batch)
        self._ms_per_row = per_row if self._ms_per_row is None else 0.8 * self._ms_per_row + 0.2 * per_row
        if step_ms > self.cfg.slow_step_ms and time.monotonic() - self._last_slow_warning > 5.0:
            self._last_slow_warning = time.monotonic()
            log.warning(
                "a runner call took %.1f ms for %d streams (budget %.0f ms per frame)",
                step_ms,
                len(batch),
                self.frame_ms,
            )
        for sid, message in self.core.take_faults():
            self.stats.nonfinite_frames += 1
            log.error("stream %s: %s", sid, message)
            self.note_error(sid, message)
            self._event(sid, "reset", epoch=self.core.epoch(sid))
        self._publish(committed)
        self._notify_progress()

    def _publish(self, committed: CommittedFrames) -> None:
        """Publish one step's frames as columns (`FrameBatch`): signals of the whole step in one call, the
        per-stream statistics recorded for the whole step at once, `LandmarkFrame` objects built only for
        frame subscribers, a blendshape deriver and sinks without `send_batch`."""
        if not len(committed):
            return
        now = self.clock.now_ns()
        store = self.slot_stats
        rows = committed.rows
        if not store.live[rows].all():  # not on the loop today (close_stream drops session and core stream together)
            keep = np.flatnonzero(store.live[rows]).tolist()
            if not keep:
                return
            committed = committed.select(keep)
            rows = committed.rows
        sessions, ids = self.sessions, committed.stream_ids
        bx = self.batch_signals
        if bx is None and self.cfg.signals:  # one `SignalExtractor` per stream (EngineConfig.batch_signals off)
            live = [sessions[sid] for sid in ids]
            frames = [session.derive(frame, now) for frame, session in zip(committed.frames(), live)]
            self._hand_out(frames, None, [(session, i) for i, session in enumerate(live) if session.subscribers])
            return
        epochs = committed.epochs
        changed = epochs != store.epochs[rows]
        if changed.any():  # a new epoch (reset, flush restart, runner fault): Session.enter_epoch
            for i in np.flatnonzero(changed).tolist():
                sessions[ids[i]].epoch = int(epochs[i])
                if bx is not None:
                    bx.reset(int(rows[i]))  # the slot's filters restart, as `Session.derive` restarts its own
            store.epochs[rows] = epochs
        signals = None
        if bx is not None:  # the stream's signal slot is its core slot (`open_stream`)
            signals = bx.update(
                rows, committed.landmarks, committed.pts_ns / 1e9, committed.levels_dbfs, committed.ahead_dbfs
            )
        batch = FrameBatch.published(committed, now, signals)
        store.record(
            rows,
            (now - committed.audio_ready_ns) / 1e6,
            (committed.infer_end_ns - committed.infer_start_ns) / 1e6,
            batch,
        )
        subscribed = store.subscribed[rows]
        to_deliver = [(sessions[ids[i]], i) for i in np.flatnonzero(subscribed).tolist()] if subscribed.any() else []
        self._hand_out(None, batch, to_deliver)

    def _hand_out(
        self, frames: list[LandmarkFrame] | None, batch: FrameBatch | None, subscribed: list[tuple[Session, int]]
    ) -> None:
        """Blendshapes (the deriver, per frame), frame subscribers (`subscribed`: session and row), then every
        sink: `send_batch(batch)` where a sink has it and the step was published as a batch, else
        `send_frames(frames)`."""
        deriver = self.blendshapes
        if deriver is not None:
            if frames is None:
                assert batch is not None
                frames = list(batch.frames())
            for i, f in enumerate(frames):
                try:
                    frames[i] = dataclasses.replace(f, blendshapes=deriver(f))
                except Exception as exc:
                    self.stats.sink_errors += 1
                    log.warning("blendshape deriver failed: %s", exc)
            if batch is not None:
                batch.set_frames(frames)
        for session, i in subscribed:
            session.deliver(frames[i] if frames is not None else batch.frame(i))  # type: ignore[union-attr]
        self.stats.frames += len(frames) if frames is not None else len(batch)  # type: ignore[arg-type]
        for sink in self.sinks:
            try:
                send_batch = getattr(sink, "send_batch", None) if batch is not None else None
                if send_batch is not None:
                    send_batch(batch)
                else:
                    sink.send_frames(frames if frames is not None else batch.frames())  # type: ignore[union-attr]
            except Exception as exc:
                self.stats.sink_errors += 1
                log.warning("output %r failed: %s", sink, exc)

    # ------------------------------------------------------------------ reporting
    def health(self) -> dict[str, Any]:
        return {
            "streams": [s.summary() for s in self.sessions.values()],
            "runner_calls": self.stats.runner_calls,
            "frames": self.stats.frames,
            "runner_errors": self.stats.runner_errors,
            "nonfinite_frames": self.stats.nonfinite_frames,
            "stalls": self.stats.stalls,
            **self.latency_facts(),
            "model_version": getattr(self.contract, "model_version", ""),
        }

    def latency_line(self) -> str:
        """One line for the terminal: frames, algorithmic latency, engine-added latency, step time."""
        lat = [v for s in self.sessions.values() for v in s.stats.engine_latency_ms]
        steps = self.stats.step_ms.values()[-250:]
        parts = [
            f"streams {len(self.sessions)}",
            f"frames {self.stats.frames}",
            f"algorithmic {self.algorithmic_latency_ms:.0f} ms (L={self.core.lookahead_frames})",
        ]
        if lat:
            parts.append(f"engine p50 {np.percentile(lat, 50):.1f} / p95 {np.percentile(lat, 95):.1f} ms")
        if steps.size:
            parts.append(f"step {np.median(steps):.2f} ms")
        return " | ".join(parts)
