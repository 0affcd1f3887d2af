"""Audio sources for the engine: microphone, files (real time or as fast as possible), synthesised speech,
raw PCM on stdin; and the PCM decoding + streaming resampling shared with the WebSocket audio ingest.

Everything reaches the engine as mono float32 at the model's rate (16 kHz): channels are averaged, and rate
conversion is soxr's band-limited resampler (`soxr.ResampleStream` for streams, `audio_io.resample` for whole
files). A source is an object with ``async run(engine, stream_id)``; it pushes audio with
``engine.push_audio`` and, when its input ends, calls ``engine.flush`` and waits until the last frame is out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from stream_engine.audio_io import AudioError, load_audio
from stream_engine.clock import RealtimeSchedule
from stream_engine.core import AudioChunkError, CoreError

log = logging.getLogger(__name__)

PCM_DTYPES = {"int16": ("<i2", 32768.0), "int32": ("<i4", 2147483648.0), "float32": ("<f4", 1.0)}
MIN_RATE_HZ, MAX_RATE_HZ = 8000, 384000
MAX_CHANNELS = 32
DEFAULT_SENTENCE = (
    "Hello! This is msync. It turns live speech into facial landmarks, in real time, and sends them to your avatar."
)


class InputError(RuntimeError):
    """An input that cannot be opened: missing library, unknown device, unreadable file, bad format."""


class EngineLike(Protocol):
    sample_rate_hz: int

    def push_audio(self, stream_id: str, samples: np.ndarray, arrival_ns: int | None = None) -> None: ...
    def reset(self, stream_id: str) -> int: ...
    def flush(self, stream_id: str) -> int: ...
    async def wait_capacity(self, stream_id: str, max_pending_s: float = 1.0) -> None: ...
    async def wait_drained(self, stream_id: str) -> None: ...


class AudioSource(Protocol):
    """An input that feeds one stream of an engine until it ends (`MicrophoneSource`, `FileSource`, `StdinSource`)."""

    async def run(self, engine: EngineLike, stream_id: str) -> None: ...


def restart_stream(engine: EngineLike, stream_id: str, reason: Exception) -> None:
    """A source hit bad audio: restart the stream (new epoch) and record why, instead of failing the source."""
    engine.reset(stream_id)
    note = getattr(engine, "note_error", None)
    if note is not None:
        note(stream_id, f"{reason}; the stream was reset")
    now = time.monotonic()
    if now - _last_warning_s.get(stream_id, -1e9) > 5.0:  # a broken device would flood the log otherwise
        _last_warning_s[stream_id] = now
        log.warning("stream %s: %s; the stream was reset", stream_id, reason)


_last_warning_s: dict[str, float] = {}


def push_or_reset(engine: EngineLike, stream_id: str, samples: np.ndarray, arrival_ns: int | None = None) -> bool:
    """Push a chunk; if the core rejects it (NaN/inf, overload), restart the stream rather than failing the
    source, so a glitching device or pipe costs a reset, not the session. Returns whether it was accepted."""
    try:
        engine.push_audio(stream_id, samples, arrival_ns)
        return True
    except CoreError as exc:
        if isinstance(exc, KeyError):  # the stream is gone: nothing to restart
            raise
        restart_stream(engine, stream_id, exc)
        return False


# ----------------------------------------------------------------------------------------------- PCM


@dataclasses.dataclass(frozen=True)
class PcmFormat:
    """Interleaved little-endian PCM as declared by a client or a flag.

    Attributes:
        sample_rate_hz: 8000..384000.
        channels: 1..32 (interleaved; averaged to mono).
        dtype: "int16", "int32" or "float32" (floats nominally in [-1, 1]).
    """

    sample_rate_hz: int = 16000
    channels: int = 1
    dtype: str = "int16"

    def __post_init__(self) -> None:
        if (
            isinstance(self.sample_rate_hz, bool)
            or not isinstance(self.sample_rate_hz, int)
            or not MIN_RATE_HZ <= self.sample_rate_hz <= MAX_RATE_HZ
        ):
            raise ValueError(
                f"sample_rate_hz must be an integer in {MIN_RATE_HZ}..{MAX_RATE_HZ}, got {self.sample_rate_hz!r}"
            )
        if (
            isinstance(self.channels, bool)
            or not isinstance(self.channels, int)
            or not 1 <= self.channels <= MAX_CHANNELS
        ):
            raise ValueError(f"channels must be an integer in 1..{MAX_CHANNELS}, got {self.channels!r}")
        if self.dtype not in PCM_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(PCM_DTYPES)}, got {self.dtype!r}")

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one sample frame (all channels)."""
        return np.dtype(PCM_DTYPES[self.dtype][0]).itemsize * self.channels

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PcmFormat:
        """From a hello/config message (`sample_rate_hz`, `channels`, `dtype`; defaults 16000, 1, int16)."""
        return cls(
            sample_rate_hz=obj.get("sample_rate_hz", 16000),
            channels=obj.get("channels", 1),
            dtype=obj.get("dtype", "int16"),
        )

    @classmethod
    def parse(cls, text: str) -> PcmFormat:
        """ "s16le:48000:2"-style spec: dtype (s16le|s32le|f32le|int16|int32|float32), rate, channels."""
        aliases = {"s16le": "int16", "s32le": "int32", "f32le": "float32"}
        usage = "expected dtype:rate:channels with dtype s16le, s32le or f32le (or int16, int32, float32), e.g. s16le:16000:1"
        parts = text.strip().split(":")
        if len(parts) > 3:
            raise ValueError(f"bad PCM format {text!r}: {usage}")
        try:
            dtype = aliases.get(parts[0].lower(), parts[0].lower())
            rate = int(parts[1]) if len(parts) > 1 else 16000
            channels = int(parts[2]) if len(parts) > 2 else 1
        except ValueError:
            raise ValueError(f"bad PCM format {text!r}: {usage}") from None
        if dtype not in PCM_DTYPES:
            raise ValueError(f"bad PCM format {text!r}: {usage}")
        return cls(rate, channels, dtype)

    def to_json(self) -> dict[str, Any]:
        return {"sample_rate_hz": self.sample_rate_hz, "channels": self.channels, "dtype": self.dtype}


class PcmConverter:
    """Interleaved PCM of any rate/channels -> mono float32 at `out_rate_hz`, chunk by chunk.

    Uses one `soxr.ResampleStream` per format; changing format (`set_format`) drains the old resampler first,
    so no audio is lost or duplicated. Non-finite samples are rejected *before* the resampler (a NaN would
    poison its filter state).

    Args:
        fmt: input format.
        out_rate_hz: the model's rate.
        quality: soxr quality ("HQ" default; "VHQ" adds latency, "QQ" none but aliases).
        strict: require whole sample frames per chunk (WebSocket); otherwise carry a partial frame (stdin).
    """

    def __init__(self, fmt: PcmFormat, out_rate_hz: int, quality: str = "HQ", strict: bool = True) -> None:
        self.out_rate_hz = int(out_rate_hz)
        self.quality = quality
        self.strict = strict
        self._carry = b""
        self.fmt = fmt
        self._resampler = self._make_resampler(fmt)

    def _make_resampler(self, fmt: PcmFormat) -> Any:  # soxr.ResampleStream | None (soxr is untyped)
        if fmt.sample_rate_hz == self.out_rate_hz:
            return None
        import soxr

        return soxr.ResampleStream(fmt.sample_rate_hz, self.out_rate_hz, 1, dtype="float32", quality=self.quality)

    def convert_bytes(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """Raw PCM bytes -> (num_samples,) float32 at the output rate (possibly empty).

        Raises:
            AudioChunkError: a partial sample frame (strict mode) or non-finite samples.
        """
        data = bytes(data)
        bpf = self.fmt.bytes_per_frame
        if self.strict:
            if len(data) % bpf:
                raise AudioChunkError(
                    f"chunk of {len(data)} bytes is not a whole number of {bpf}-byte sample frames "
                    f"({self.fmt.channels} x {self.fmt.dtype})"
                )
        else:
            data = self._carry + data
            cut = len(data) - len(data) % bpf
            data, self._carry = data[:cut], data[cut:]
        if not data:
            return np.zeros(0, np.float32)
        code, scale = PCM_DTYPES[self.fmt.dtype]
        samples = np.frombuffer(data, dtype=code).reshape(-1, self.fmt.channels)
        integer = samples.dtype.kind in "iu"  # integer PCM converts to finite floats: no need to check them
        samples = samples.astype(np.float32) / np.float32(scale) if scale != 1.0 else samples.astype(np.float32)
        return self.convert(samples, finite=integer)

    def convert(self, samples: np.ndarray, finite: bool = False) -> np.ndarray:
        """(num_samples,) or (num_samples, channels) float PCM at the input rate -> mono float32 at the output
        rate. `finite`: the caller knows every sample is finite (converted from integers), so it is not checked."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim == 2 and samples.shape[1] == 1:
            mono = samples[:, 0]
        else:
            mono = samples.mean(axis=1, dtype=np.float32) if samples.ndim == 2 else samples
        if mono.ndim != 1:
            raise AudioChunkError(f"expected (num_samples,) or (num_samples, channels) audio, got {samples.shape}")
        if not finite and mono.size:
            if not np.all(np.isfinite(mono)):
                raise AudioChunkError("audio chunk contains NaN or infinite samples")
            # float PCM beyond [-1, 1] is clipped here, as the engine would (a 1e30 sample also overflowed the
            # engine's energy check, which put a numpy RuntimeWarning in the server's log)
            mono = np.clip(mono, -1.0, 1.0, dtype=np.float32)
        if self._resampler is None or mono.size == 0:
            return mono.astype(np.float32, copy=False)
        result: np.ndarray = self._resampler.resample_chunk(mono).astype(np.float32, copy=False)
        return result

    def finish(self) -> np.ndarray:
        """Drain the resampler's tail (end of input or format change)."""
        self._carry = b""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        self._resampler = self._make_resampler(self.fmt)
        result: np.ndarray = tail.astype(np.float32, copy=False)
        return result

    def set_format(self, fmt: PcmFormat) -> np.ndarray:
        """Switch to a new input format; returns the old resampler's tail (to push before new audio)."""
        tail = self.finish()
        self.fmt = fmt
        self._resampler = self._make_resampler(fmt)
        return tail

    def reset(self) -> None:
        """Forget buffered input (barge-in)."""
        self._carry = b""
        if self._resampler is not None:
            self._resampler.clear()


# ---------------------------------------------------------------------------------------- microphone


def _sounddevice() -> Any:  # the sounddevice module (untyped)
    """Import sounddevice with a clear error when it or PortAudio is missing."""
    try:
        import sounddevice
    except ImportError:
        raise InputError("microphone input needs the sounddevice package: pip install 'msync[audio]'") from None
    except OSError as exc:  # sounddevice raises OSError when libportaudio is absent
        raise InputError(
            f"PortAudio library not found ({exc}); install it: apt-get install libportaudio2 "
            "(Debian/Ubuntu), brew install portaudio (macOS)"
        ) from None
    return sounddevice


def list_input_devices() -> list[dict[str, Any]]:
    """Input-capable audio devices: index, name, max_input_channels, default_samplerate, hostapi."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except Exception as exc:
        raise InputError(f"cannot list audio devices: {exc}") from exc
    out = []
    for d in devices:
        if d.get("max_input_channels", 0) > 0:
            out.append(
                {
                    "index": int(d["index"]),
                    "name": str(d["name"]),
                    "max_input_channels": int(d["max_input_channels"]),
                    "default_samplerate": float(d["default_samplerate"]),
                    "hostapi": str(hostapis[d["hostapi"]]["name"]) if hostapis else "",
                }
            )
    return out


def resolve_input_device(spec: str | int | None) -> dict[str, Any]:
    """Pick an input device by index, exact name or case-insensitive substring (None = the default input).

    Raises:
        InputError: no devices, no match, or an ambiguous name; the message lists what exists.
    """
    devices = list_input_devices()
    listing = "; ".join(f"{d['index']}: {d['name']!r}" for d in devices) or "none"
    if not devices:
        raise InputError("no audio input devices found (is a microphone connected, and can PortAudio see it?)")
    if spec is None or spec == "":
        sd = _sounddevice()
        default = sd.default.device[0] if isinstance(sd.default.device, (list, tuple)) else sd.default.device
        for d in devices:
            if d["index"] == default:
                return d
        return devices[0]
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        for d in devices:
            if d["index"] == int(text):
                return d
        raise InputError(f"no input device with index {text}; input devices: {listing}")
    exact = [d for d in devices if d["name"] == text]
    if exact:
        return exact[0]
    matches = [d for d in devices if text.lower() in d["name"].lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise InputError(f"no input device matches {text!r}; input devices: {listing}")
    raise InputError(
        f"{text!r} matches several input devices: "
        + "; ".join(f"{d['index']}: {d['name']!r}" for d in matches)
        + " (use the index)"
    )


@dataclasses.dataclass
class MicrophoneSource:
    """Live audio from a sound card through PortAudio (any rate/channels; resampled with soxr).

    Attributes:
        device: index, name or substring (None = default input).
        sample_rate_hz: capture rate (None = the device's default).
        channels: capture channels (None = min(2, what the device has)); averaged to mono.
        block_ms: PortAudio block size.
        quality: soxr quality.
    """

    device: str | int | None = None
    sample_rate_hz: int | None = None
    channels: int | None = None
    block_ms: float = 20.0
    quality: str = "HQ"

    async def run(self, engine: EngineLike, stream_id: str) -> None:
        sd = _sounddevice()
        dev = resolve_input_device(self.device)
        rate = int(self.sample_rate_hz or round(dev["default_samplerate"]))
        channels = int(self.channels or min(2, dev["max_input_channels"]))
        converter = PcmConverter(PcmFormat(rate, channels, "float32"), engine.sample_rate_hz, self.quality)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[np.ndarray, int]] = asyncio.Queue()

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:  # PortAudio thread
            loop.call_soon_threadsafe(queue.put_nowait, (indata.copy(), time.monotonic_ns()))

        try:
            stream = sd.InputStream(
                device=dev["index"],
                samplerate=rate,
                channels=channels,
                dtype="float32",
                blocksize=max(1, int(rate * self.block_ms / 1000)),
                callback=callback,
            )
        except Exception as exc:
            raise InputError(
                f"cannot open input device {dev['index']} {dev['name']!r} at {rate} Hz x {channels}: {exc}"
            ) from exc
        with stream:
            while True:
                block, arrival_ns = await queue.get()
                try:
                    samples = converter.convert(block)
                except AudioChunkError as exc:  # a device delivering NaN: restart cleanly, keep listening
                    converter.reset()
                    restart_stream(engine, stream_id, exc)
                    continue
                push_or_reset(engine, stream_id, samples, arrival_ns)


# --------------------------------------------------------------------------------------------- files


@dataclasses.dataclass
class FileSource:
    """An audio file played into a stream, in real time (paced by the sample clock) or as fast as possible.

    Attributes:
        path: any file `audio_io.load_audio` decodes.
        realtime: pace by the sample clock; False = as fast as the engine goes (bounded by back-pressure).
        speed: real-time multiplier (e.g. 30 for accelerated drift runs).
        loop: start again at the end (seamlessly, no flush in between).
        chunk_ms: size of the pushed chunks.
        gap_s: silence appended after each pass (looping).
        pace: awaited before each chunk when not `realtime`, after the engine has room: a consumer that must
            see every frame holds the file back (`msync stream --fast --wait-client`: the WebSocket clients
            that keep every frame). None: only the engine's back-pressure.
    """

    path: str | Path
    realtime: bool = True
    speed: float = 1.0
    loop: bool = False
    chunk_ms: float = 20.0
    gap_s: float = 0.0
    pace: Callable[[], Awaitable[None]] | None = dataclasses.field(default=None, repr=False)
    _loaded: tuple[int, np.ndarray] | None = dataclasses.field(default=None, init=False, repr=False)

    def load(self, sample_rate_hz: int) -> np.ndarray:
        """The whole file as mono float32 PCM at `sample_rate_hz` (plus `gap_s` of silence), decoded once.

        Raises:
            InputError: missing file, or not audio `audio_io.load_audio` can decode.
        """
        if self._loaded is not None and self._loaded[0] == sample_rate_hz:
            return self._loaded[1]
        try:
            audio = load_audio(self.path, sample_rate_hz)
        except AudioError as exc:
            raise InputError(str(exc)) from exc
        if self.gap_s > 0:
            audio = np.concatenate([audio, np.zeros(int(self.gap_s * sample_rate_hz), np.float32)])
        self._loaded = (sample_rate_hz, audio)
        return audio

    async def run(self, engine: EngineLike, stream_id: str) -> None:
        rate = engine.sample_rate_hz
        audio = self.load(rate)
        chunk = max(1, int(rate * self.chunk_ms / 1000))
        clock = getattr(engine, "clock", None)
        now = clock.now_ns if clock is not None else time.monotonic_ns
        schedule = RealtimeSchedule(rate, now(), self.speed)
        sent = 0  # samples pushed over all passes: the source's sample clock
        while True:
            for start in range(0, audio.size, chunk):
                piece = audio[start : start + chunk]
                if self.realtime:
                    await schedule.wait_for(sent + piece.size, clock or _Mono())
                else:
                    await engine.wait_capacity(stream_id)
                    if self.pace is not None:
                        await self.pace()
                push_or_reset(engine, stream_id, piece, now())
                sent += piece.size
            if not self.loop:
                break
        engine.flush(stream_id)
        await engine.wait_drained(stream_id)


class _Mono:
    def now_ns(self) -> int:
        return time.monotonic_ns()


def synthesize_speech(
    text: str = DEFAULT_SENTENCE,
    out_path: str | Path | None = None,
    voice: str | None = None,
    words_per_minute: int = 150,
) -> Path:
    """Speak `text` with espeak-ng into a WAV file (22.05 kHz mono) and return its path.

    Raises:
        InputError: espeak-ng is not installed or fails.
    """
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        raise InputError(
            "espeak-ng not found, so no speech can be synthesised: install it (apt-get install "
            "espeak-ng) or give an audio file (--input speech.wav)"
        )
    if out_path is None:
        fd, name = tempfile.mkstemp(prefix="msync_speech_", suffix=".wav")
        os.close(fd)
        out_path = name
    cmd = [exe, "-w", str(out_path), "-s", str(int(words_per_minute))]
    if voice:
        cmd += ["-v", voice]
    try:
        subprocess.run(cmd + [text], check=True, capture_output=True, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        raise InputError(f"espeak-ng failed: {exc} {err.decode(errors='replace').strip()}") from exc
    return Path(out_path)


# --------------------------------------------------------------------------------------------- stdin


@dataclasses.dataclass
class StdinSource:
    """Raw interleaved PCM read from stdin (e.g. `arecord -f S16_LE -r 48000 -c 2 | msync stream --input stdin
    --stdin-format s16le:48000:2`). Assumed live: no pacing; a piped file runs as fast as the engine allows.

    Attributes:
        fmt: the PCM layout.
        read_bytes: bytes per read.
        quality: soxr quality.
    """

    fmt: PcmFormat = PcmFormat()
    read_bytes: int = 4096
    quality: str = "HQ"
    stream: Any = None  # a binary file object; None = sys.stdin.buffer

    async def run(self, engine: EngineLike, stream_id: str) -> None:
        converter = PcmConverter(self.fmt, engine.sample_rate_hz, self.quality, strict=False)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue(maxsize=64)
        src = self.stream or sys.stdin.buffer
        fd = src.fileno() if hasattr(src, "fileno") else None

        def reader() -> None:  # a daemon thread: a blocked read never holds up shutdown
            while True:
                try:
                    data = os.read(fd, self.read_bytes) if fd is not None else src.read(self.read_bytes)
                except (OSError, ValueError):
                    data = b""
                fut = asyncio.run_coroutine_threadsafe(queue.put((data, time.monotonic_ns())), loop)
                try:
                    fut.result()
                except Exception:
                    return
                if not data:
                    return

        threading.Thread(target=reader, name="msync-stdin", daemon=True).start()
        while True:
            data, arrival_ns = await queue.get()
            if not data:
                break
            try:
                samples = converter.convert_bytes(data)
            except AudioChunkError as exc:
                converter.reset()
                restart_stream(engine, stream_id, exc)
                continue
            push_or_reset(engine, stream_id, samples, arrival_ns)
            await engine.wait_capacity(stream_id)
        push_or_reset(engine, stream_id, converter.finish(), time.monotonic_ns())
        engine.flush(stream_id)
        await engine.wait_drained(stream_id)
