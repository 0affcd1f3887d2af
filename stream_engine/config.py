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
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stream_engine.engine import EngineConfig
from stream_engine.inputs import DEFAULT_SENTENCE
from stream_engine.outputs.osc import OscConfig
from stream_engine.outputs.vmc import VmcConfig
from stream_engine.outputs.vts import VtsConfig
from stream_engine.outputs.websocket import ServerConfig
from stream_engine.signals import SignalConfig

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "models" / "default.onnx"
INPUT_KINDS = ("speech", "file", "mic", "stdin", "none")


class ConfigError(ValueError):
    """A config file or value that cannot be used (the message names the key)."""


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
            connected (so it misses no frame; `msync animate` writes a file's whole animation instead).
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


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """Everything `msync stream` runs with.

    Attributes:
        duration_s: stop after this many seconds (0 = when the input ends, or on Ctrl-C for live inputs).
        latency_line: print a live latency line to stderr.
        log_level: Python logging level name.
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


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert a file value to the annotated type `tp` (dataclasses, tuples, optionals, scalars)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table/object, got {value!r}")
        return build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(non_none[0], value, where)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if isinstance(value, str):  # presets such as vmc.blend_names = "vrm1"
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table/object, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Instantiate dataclass `cls` from a mapping, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]}; known: {sorted(fields)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def load_config(path: str | Path) -> StreamConfig:
    """Read a JSON (.json) or TOML (.toml) config file into a `StreamConfig`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'} ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table/object")
    return build(StreamConfig, data)


def to_dict(cfg: Any) -> Any:
    """A config as plain JSON-able data (tuples -> lists), e.g. for --print-config."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def replace_path(cfg: Any, dotted: str, value: Any) -> Any:
    """Return `cfg` with the field at "a.b.c" replaced (flag overrides on top of a file)."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: replace_path(getattr(cfg, head), rest, value)})
