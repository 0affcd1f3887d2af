"""The configuration of `msync stream`: component dataclasses composed into one `StreamConfig`, and a config
file (JSON, or TOML on Python >= 3.11) that sets any of them; command-line flags override the file.

Each component owns its config (`EngineConfig` in engine.py, `ServerConfig` in outputs/websocket.py, ...);
this module only composes them, converts file values (lists -> tuples, nested tables -> dataclasses) and
rejects unknown keys with the path of the offending key. Example (TOML)::

    duration_s = 60
    [model]
    path = "models/my_model.onnx"
    [input]
    kind = "mic"
    device = "USB"
    [vmc]
    targets = ["127.0.0.1:39539", "192.168.1.20:39540"]
    blend_names = "vrm1"
    [signals]
    blink_mode = "auto"
    [signals.mouth_filter]
    min_cutoff_hz = 2.0
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from stream_engine.dataclass_io import ConfigError, from_dict, read_data, replace_path, to_dict
from stream_engine.engine import EngineConfig
from stream_engine.inputs import DEFAULT_SENTENCE
from stream_engine.outputs.osc import OscConfig
from stream_engine.outputs.vmc import VmcConfig
from stream_engine.outputs.vts import VtsConfig
from stream_engine.outputs.websocket import ServerConfig
from stream_engine.signals import SignalConfig

__all__ = [
    "ConfigError",
    "DEFAULT_MODEL_PATH",
    "InputConfig",
    "ModelConfig",
    "StreamConfig",
    "build",
    "load_config",
    "replace_path",
    "to_dict",
]

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "models" / "default.onnx"
INPUT_KINDS = ("speech", "file", "mic", "stdin", "none")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model runs, and how.

    Attributes:
        path: an exported .onnx step model, or "python:module:factory" for a custom runner object.
        threads: onnxruntime intra-op threads.
        providers: onnxruntime execution providers ("" = CPU; "cuda", "tensorrt", "auto").
        lookahead_frames: the look-ahead L you expect; a model exported with another L is refused (the
            look-ahead is fixed at export time).
        precision: "auto", "fp32", "int8" or "bf16" (refused): picks a shipped variant of the default model
            and is checked against any model's `msync.precision` (stream_engine/variants.py).
    """

    path: str = str(DEFAULT_MODEL_PATH)
    threads: int = 1
    providers: str = ""
    lookahead_frames: int | None = None
    precision: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError(f"model.threads must be an integer >= 1, got {self.threads!r}")


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Where the local stream's audio comes from (WebSocket clients can always add streams).

    Attributes:
        kind: "speech" (a sentence synthesised with espeak-ng), "file", "mic", "stdin" or "none".
        path: audio file for kind "file".
        text: sentence for kind "speech".
        device: microphone index or name (substring); "" = default input.
        sample_rate_hz, channels: microphone capture format (0 = device default).
        realtime: play files at the speed of their sample clock (False = as fast as possible).
        speed: real-time multiplier for files.
        loop: repeat files/speech.
        stdin_format: "dtype:rate:channels" of raw PCM on stdin, e.g. "s16le:48000:2".
        stream_id: id of the local stream.
        reference_face: 68-point JSON or image for the local stream ("" = the model's face).
        resample_quality: soxr quality for live inputs.
        wait_client: with a file played faster than real time, start only once a WebSocket /frames client is
            connected; the clients connected then get every frame and pace the file (a slow one holds it back;
            one that stops reading is dropped after the server's write timeout). `msync animate` writes a file's
            whole animation instead.
    """

    kind: str = "speech"
    path: str = ""
    text: str = DEFAULT_SENTENCE
    device: str = ""
    sample_rate_hz: int = 0
    channels: int = 0
    realtime: bool = True
    speed: float = 1.0
    loop: bool = True
    stdin_format: str = "s16le:16000:1"
    stream_id: str = "main"
    reference_face: str = ""
    resample_quality: str = "HQ"
    wait_client: bool = False

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ConfigError(f"input.kind must be one of {INPUT_KINDS}, got {self.kind!r}")
        if self.kind == "file" and not self.path:
            raise ConfigError("input.kind 'file' needs input.path")
        if self.speed <= 0:
            raise ConfigError("input.speed must be positive")
        if self.kind == "stdin":
            from stream_engine.inputs import PcmFormat

            try:
                PcmFormat.parse(self.stdin_format)
            except ValueError as exc:
                raise ConfigError(f"input.stdin_format: {exc}") from None


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """Everything `msync stream` runs with.

    Attributes:
        duration_s: stop after this many seconds (0 = when the input ends, or on Ctrl-C for live inputs).
        latency_line: print a live latency line to stderr.
        log_level: Python logging level name.
        workers: engine processes sharing the server's port (SO_REUSEPORT; `stream_engine.workers`); 1 = this
            process only.
        shutdown_drain_s: on stop (Ctrl-C, SIGTERM, the duration, the input's end), every open stream is
            flushed and its last frames are sent for up to this long, then every stream is closed (outputs see
            `closed`) before the connections close (1001).
    """

    model: ModelConfig = ModelConfig()
    input: InputConfig = InputConfig()
    engine: EngineConfig = EngineConfig()
    signals: SignalConfig = SignalConfig()
    server: ServerConfig = ServerConfig()
    vmc: VmcConfig = VmcConfig()
    osc: OscConfig = OscConfig()
    vts: VtsConfig = VtsConfig()
    duration_s: float = 0.0
    latency_line: bool = True
    log_level: str = "warning"
    workers: int = 1
    shutdown_drain_s: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.shutdown_drain_s) and self.shutdown_drain_s >= 0):
            raise ConfigError(f"shutdown_drain_s must be a finite number of seconds >= 0, got {self.shutdown_drain_s}")
        if not (math.isfinite(self.duration_s) and self.duration_s >= 0):
            raise ConfigError(
                f"duration_s must be a finite number of seconds >= 0 (0 = no limit), got {self.duration_s}"
            )
        if str(self.log_level).lower() not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")


# The converter lives in stream_engine.dataclass_io (shared with training, checkpoints and the contract);
# these names stay importable from here for the stream shell and its tests.
build = from_dict


def load_config(path: str | Path) -> StreamConfig:
    """Read a JSON (.json) or TOML (.toml) config file into a `StreamConfig`."""
    return from_dict(StreamConfig, read_data(path))
