"""The Python API: speech in, landmark frames out, without servers or event loops.

    from stream_engine import Engine

    engine = Engine()                          # the shipped default model, CPU
    stream = engine.open_stream()              # one speaker / one face
    frames = stream.push(pcm, sample_rate=48000)   # any rate, float or int16, mono or (n, channels)
    frames += stream.flush()                   # end of speech: the look-ahead tail
    for f in frames:
        f.landmarks        # (68, 2) float32, normalised crop coordinates (x right, y down, [0, 1])
        f.signals["mouth_open"], f.pts_s, f.index

A `Stream` is the per-stream handle of the engine (the shape of sherpa-onnx's `OnlineStream`): it owns one
slot of the engine's state store, its audio FIFO and epoch (inside the engine's `EngineCore`), its resampler,
signal state and frame subscriptions; `close()` frees the slot. `push` runs every step the pushed audio
completes, synchronously, and returns their frames; a frame comes out once the look-ahead after it has
arrived (`Engine.lookahead_frames` x 40 ms), so `flush()` returns the last few. Several streams of one
engine share the model (and its loaded weights); the asyncio server (`stream_engine.engine.Engine`) adds
batching across streams, deadlines and network outputs on the same core.

The async methods (`apush`, `aflush`, `areset`, `aclose`) run the same work in a worker thread, so an event
loop stays responsive; calls on one stream are serialised.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from stream_engine.core import AudioChunkError, EngineCore, LandmarkFrame, is_stream_id
from stream_engine.runtime.base import StepRunner
from stream_engine.signals import SIGNAL_NAMES, SignalConfig

if TYPE_CHECKING:
    from stream_engine.inputs import PcmConverter

T = TypeVar("T")

__all__ = ["Engine", "Stream", "Frame"]

BlendshapeDeriver = Callable[[LandmarkFrame], Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class Frame:
    """One 40 ms landmark frame of one stream.

    Attributes:
        landmarks: (68, 2) float32 iBUG-68 landmarks in normalised crop coordinates (x right, y down, the
            face about half the crop; `contract.coordinates`).
        signals: rig signals by name (`stream_engine.signals.SIGNAL_NAMES`: mouth_open, A, I, U, E, O, blink
            in [0, 1]; yaw_deg, pitch_deg, roll_deg in degrees; audio_dbfs in dB re full scale; silent 0/1);
            empty when the engine was made with ``signals=False``.
        blendshapes: ARKit blendshape weights by name in [0, 1] from the engine's deriver; empty without one.
        pts_s: presentation time in seconds of stream time: the frame covers audio [pts_s, pts_s + 0.04) of
            everything pushed to the stream (the sample clock; resets and stalls do not shift it).
        index: frame number within the stream, 0, 1, 2, ... (continues across `reset`/`flush`: the wire
            protocol's `seq`; the protocol's `index` restarts at 0 in each epoch).
        epoch: +1 each time the stream's model restarted before it (a `reset`, or a flushed segment's end).
        stalled: the frame was made from silence the engine added (asyncio engine only; see `EngineConfig`).
    """

    landmarks: np.ndarray
    signals: dict[str, float]
    blendshapes: dict[str, float]
    pts_s: float
    index: int
    epoch: int = 0
    stalled: bool = False


def frame_from_core(frame: LandmarkFrame) -> Frame:
    """A `Frame` from an engine `LandmarkFrame` (with its signals and blendshapes attached or not)."""
    sig = frame.signals
    signals = dict(zip(SIGNAL_NAMES, sig.as_vector())) if sig is not None else {}
    return Frame(
        landmarks=frame.landmarks,
        signals=signals,
        blendshapes=dict(frame.blendshapes or {}),
        pts_s=frame.pts_ns / 1e9,
        index=frame.seq,
        epoch=frame.epoch,
        stalled=frame.stalled,
    )


class Engine:
    """A loaded model serving any number of streams in this process.

    Args:
        model: path of an exported step model (.onnx; .engine/.plan for TensorRT), an already built runner
            (anything with the `stream_engine.runtime.StepRunner` methods), or None for the shipped default
            model (`stream_engine/models/default.onnx`).
        backend: "auto" (by suffix), "onnxruntime" or "tensorrt".
        threads: intra-op threads of ONNX Runtime (1 suits one stream; more help large batches).
        signals: derive rig signals per frame (`Frame.signals`).
        signal_config: how (`SignalConfig`).
        blendshapes: a deriver `f(LandmarkFrame) -> {name: weight}` filling `Frame.blendshapes` (the frame
            has its `signals` attached); None = the ARKit-52 weights of the derived signals
            (`blendshapes.from_signals`; empty when `signals` is False).
        max_pending_s: most audio one `push` may carry, in seconds.
        seed: base seed of the per-stream model noise (stream i gets seed + i); None = random.
    Raises:
        ModelLoadError: missing/corrupt model, or one that gives non-finite output on a canned input.
    """

    def __init__(
        self,
        model: str | Path | StepRunner | None = None,
        *,
        backend: str = "auto",
        threads: int = 1,
        signals: bool = True,
        signal_config: SignalConfig | None = None,
        blendshapes: BlendshapeDeriver | None = None,
        max_pending_s: float = 600.0,
        seed: int | None = None,
    ) -> None:
        if model is None or isinstance(model, (str, Path)):
            from stream_engine.config import DEFAULT_MODEL_PATH
            from stream_engine.runtime import load_runner

            runner = load_runner(model if model is not None else DEFAULT_MODEL_PATH, backend=backend, threads=threads)
        else:
            runner = model
        self.runner = runner
        self.contract = runner.contract
        # one stream per step: the core's compiled passes (numba) would gain little here and add numba's import
        # and ~150 MiB of RSS to a desktop process
        self.core = EngineCore(
            runner, max_batch_streams=1, max_pending_s=max_pending_s, seed=seed, capacity=4, compiled=False
        )
        self.signal_config = (signal_config or SignalConfig()) if signals else None
        if blendshapes is None and signals:
            from stream_engine.blendshapes import from_signals

            blendshapes = from_signals
        self.blendshapes = blendshapes
        self.model_reference_face = np.asarray(self.contract.reference_face, dtype=np.float32)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # the core is not thread-safe; streams may be driven from threads
        self.streams: dict[str, Stream] = {}

    @property
    def sample_rate_hz(self) -> int:
        """The model's audio rate (16000)."""
        return self.core.sample_rate_hz

    @property
    def fps(self) -> float:
        return float(self.contract.fps)

    @property
    def lookahead_frames(self) -> int:
        """L: a frame needs the audio of the L frames after it (L x 40 ms of algorithmic delay)."""
        return self.core.lookahead_frames

    def open_stream(
        self, reference_face: np.ndarray | None = None, seed: int | None = None, stream_id: str | None = None
    ) -> Stream:
        """A new stream with a fresh model state.

        Args:
            reference_face: (68, 2) landmarks of the face to animate, normalised crop coordinates or pixels (any
                coordinate above 1.5: normalised with the training data's fixed crop, as the WebSocket hello and
                `--reference-face` do); None = the model's.
            seed: the stream's model-noise and blink seed (reproducible output).
            stream_id: a name, a non-empty string of at most 128 UTF-8 bytes (default "s1", "s2", ...).
        Raises:
            ValueError: a bad or taken id, or a reference face of the wrong shape or with NaN.
        """
        if stream_id is not None and not is_stream_id(stream_id):  # the WebSocket protocol's rule
            raise ValueError(f"stream_id must be a non-empty string of at most 128 bytes, got {stream_id!r}")
        with self._lock:
            if stream_id is None:
                stream_id = f"s{next(self._ids)}"
                while stream_id in self.streams:
                    stream_id = f"s{next(self._ids)}"
            self.core.open_stream(stream_id, reference_face, seed)
            stream = Stream(self, stream_id, self.core.reference_face(stream_id), seed)
            self.streams[stream_id] = stream
        return stream

    def close(self) -> None:
        """Close every stream."""
        for stream in list(self.streams.values()):
            stream.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Engine({getattr(self.runner, 'path', self.runner)!s}, streams={len(self.streams)})"


class Stream:
    """One stream of an `Engine` (made by `Engine.open_stream`): push audio, get frames.

    Not meant to be built directly. Methods on one stream must not run concurrently (the async ones serialise
    themselves); different streams may be driven from different threads.
    """

    def __init__(self, engine: Engine, stream_id: str, reference_face: np.ndarray | None, seed: int | None) -> None:
        from stream_engine.session import Session

        self.engine = engine
        self.id = stream_id
        self._session = Session(
            stream_id,
            reference_face,
            engine.model_reference_face,
            engine.signal_config,
            "api",
            seed=seed if seed is not None else 0,
        )
        self._converters: dict[tuple[int, int], PcmConverter] = {}
        self._converter_key: tuple[int, int] | None = None
        self._subscribers: list[Callable[[Frame], None]] = []
        self._alock: asyncio.Lock | None = None
        self.closed = False

    # ------------------------------------------------------------------ facts
    @property
    def epoch(self) -> int:
        """The current epoch (`Frame.epoch`). Raises RuntimeError once the stream is closed."""
        self._check_open()
        return self.engine.core.epoch(self.id)

    @property
    def slot(self) -> int:
        """The stream's row in the engine's state store. Raises RuntimeError once the stream is closed."""
        self._check_open()
        return self.engine.core.slot_of(self.id)

    # ------------------------------------------------------------------ audio in, frames out
    def push(self, pcm: np.ndarray, sample_rate: int = 16000) -> list[Frame]:
        """Add audio; returns the frames it completes (in order).

        Args:
            pcm: (n,) mono, or (n, channels) / interleaved with ``pcm.ndim == 2`` multichannel (averaged to
                mono); float in [-1, 1] (beyond is clipped) or int16 (scaled by 1/32768). Empty is a no-op.
            sample_rate: Hz of `pcm` (8000..384000); resampled to the model's 16 kHz with soxr (streaming:
                the resampler's few ms of delay come out at `flush`).
        Returns:
            frames, possibly none (a frame needs its 40 ms plus the look-ahead).
        Raises:
            AudioChunkError: bad shape, dtype, NaN/inf samples (the stream is unchanged).
            OverloadError: more than `max_pending_s` of audio in one push.
            RuntimeError: the stream is closed.
        """
        samples = self._convert(pcm, sample_rate)
        return self._push_model_rate(samples)

    def flush(self) -> list[Frame]:
        """End of speech: returns the remaining frames of everything pushed (the audio is padded with silence
        through the look-ahead), then the stream starts a fresh epoch (new model state, same stream)."""
        self._check_open()
        tail = np.zeros(0, np.float32)
        if self._converter_key is not None:
            tail = self._converters[self._converter_key].finish()
        frames = self._push_model_rate(tail) if tail.size else []
        core = self.engine.core
        with self.engine._lock:
            core.flush(self.id, 0)
            raw = core.process(only=[self.id])
        return frames + self._finish(raw)

    def reset(self) -> None:
        """Barge-in: drop audio not yet turned into frames and restart the model state (frame numbers and the
        sample clock continue)."""
        self._check_open()
        for conv in self._converters.values():
            conv.reset()
        with self.engine._lock:
            self.engine.core.reset(self.id)

    def close(self) -> None:
        """Free the stream's slot (idempotent); further calls raise RuntimeError."""
        if self.closed:
            return
        self.closed = True
        with self.engine._lock:
            self.engine.core.close_stream(self.id)
            self.engine.streams.pop(self.id, None)

    def subscribe(self, callback: Callable[[Frame], None]) -> Callable[[], None]:
        """Also hand every frame to `callback` as it is made. Returns an unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    # ------------------------------------------------------------------ async equivalents
    async def apush(self, pcm: np.ndarray, sample_rate: int = 16000) -> list[Frame]:
        """`push` in a worker thread."""
        return await self._in_thread(self.push, pcm, sample_rate)

    async def aflush(self) -> list[Frame]:
        return await self._in_thread(self.flush)

    async def areset(self) -> None:
        await self._in_thread(self.reset)

    async def aclose(self) -> None:
        await self._in_thread(self.close)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._alock is None:
            self._alock = asyncio.Lock()
        async with self._alock:
            return await asyncio.to_thread(fn, *args)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"stream {self.id!r} is closed")

    def _convert(self, pcm: np.ndarray, sample_rate: int) -> np.ndarray:
        from stream_engine.inputs import PcmConverter, PcmFormat

        self._check_open()
        arr = np.asarray(pcm)
        if arr.ndim not in (1, 2):
            raise AudioChunkError(f"audio must be (num_samples,) or (num_samples, channels), got shape {arr.shape}")
        if arr.dtype == np.int16:
            arr = arr.astype(np.float32) / np.float32(32768.0)
        elif np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32, copy=False)
        else:
            raise AudioChunkError(f"audio must be float PCM in [-1, 1] or int16, got dtype {arr.dtype}")
        channels = 1 if arr.ndim == 1 else arr.shape[1]
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
            raise AudioChunkError(f"sample_rate must be an integer in Hz, got {sample_rate!r}")
        key = (int(sample_rate), channels)
        conv = self._converters.get(key)
        if conv is None:
            try:
                fmt = PcmFormat(int(sample_rate), channels, "float32")
            except ValueError as exc:
                raise AudioChunkError(str(exc)) from None
            conv = self._converters[key] = PcmConverter(fmt, self.engine.sample_rate_hz, strict=False)
        tail = np.zeros(0, np.float32)
        if self._converter_key is not None and self._converter_key != key:
            tail = self._converters[self._converter_key].finish()  # a rate change: drain the old resampler
        self._converter_key = key
        mono = conv.convert(arr)
        return np.concatenate([tail, mono]) if tail.size else mono

    def _push_model_rate(self, samples: np.ndarray) -> list[Frame]:
        core = self.engine.core
        with self.engine._lock:
            core.push_audio(self.id, samples, 0)
            raw = core.process(only=[self.id])
        return self._finish(raw)

    def _finish(self, raw: list[LandmarkFrame]) -> list[Frame]:
        out = []
        deriver = self.engine.blendshapes
        for f in raw:
            f = self._session.derive(f, 0)
            if deriver is not None:
                f = dataclasses.replace(f, blendshapes=dict(deriver(f)))
            frame = frame_from_core(f)
            out.append(frame)
            for cb in list(self._subscribers):
                cb(frame)
        return out

    def __repr__(self) -> str:
        return f"Stream({self.id!r}, epoch={self.epoch if not self.closed else 'closed'})"
