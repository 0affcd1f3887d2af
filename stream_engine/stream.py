"""`msync stream`: run the engine live. Flags and a config file choose inputs, outputs, model and look-ahead.

Default: the shipped model speaks a synthesised sentence (espeak-ng, looped) in real time, the viewer is
served on http://127.0.0.1:8765/ and VMC goes to 127.0.0.1:39539, with a live latency line on stderr::

    msync stream                                   # demo, no microphone needed
    msync stream --input talk.wav --duration 30    # a file in real time (--fast: as fast as possible)
    msync stream --input mic --device USB          # a microphone (--list-devices to see them)
    arecord -f S16_LE -r 48000 -c 2 | msync stream --input stdin --stdin-format s16le:48000:2
    MSYNC_TOKEN=s3cret msync stream --input none   # only streams sent over WebSocket /audio

Environment: MSYNC_NO_NUMBA=1 runs the engine's numpy code instead of its numba-compiled loops (the same
values; ~150 MiB less memory, more CPU per frame with many streams); numba's compiled code is cached in
$MSYNC_CACHE_DIR/numba (default ~/.cache/msync/numba).

`add_arguments`/`run` only parse and call `run_stream(StreamConfig)`, which wires model, engine, outputs and
the input together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream_engine.config import (
    DEFAULT_MODEL_PATH,
    ConfigError,
    InputConfig,
    StreamConfig,
    load_config,
    replace_path,
    to_dict,
)
from stream_engine.dataclass_io import apply_overrides, from_dict
from stream_engine.outputs.websocket import LOOPBACK_HOSTS
from stream_engine.workers import STOP_SIGNALS, bind_error, bind_problem

if TYPE_CHECKING:
    from stream_engine.config import ModelConfig
    from stream_engine.engine import Engine
    from stream_engine.inputs import AudioSource
    from stream_engine.outputs.websocket import WebSocketServer
    from stream_engine.runtime.base import StepRunner

log = logging.getLogger("msync.stream")


class StreamError(RuntimeError):
    """A setup problem that stops `msync stream` with a clear message (model, input, port...)."""


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "\n\n".join((__doc__ or "").split("\n\n")[1:4]).replace("::", ":")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", metavar="FILE", help="JSON or TOML config file (flags override it)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="set any config key, e.g. --set engine.max_streams=128 (repeatable; applied after the flags; "
        "VALUE is read as JSON when it parses; --print-config shows every key)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        metavar="PATH",
        help="exported .onnx step model (default: the model shipped in stream_engine/models/, its variant chosen by "
        f"--precision: {DEFAULT_MODEL_PATH.stem}_int8.onnx on CPU, {DEFAULT_MODEL_PATH.name} on a GPU), or "
        "python:module:factory for a custom runner",
    )
    g.add_argument(
        "--lookahead",
        type=int,
        metavar="L",
        help="required look-ahead in frames (the model's is fixed at export; a different one is refused)",
    )
    g.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default 1)")
    g.add_argument("--providers", help="onnxruntime providers: cpu, cuda, tensorrt, auto")
    g.add_argument(
        "--precision",
        choices=["auto", "fp32", "int8", "bf16"],
        help="shipped variant of the default "
        "model (auto: int8 on CPU, fp32 on GPU); with --model, the precision the file must declare. bf16 is "
        "refused with the reason (onnxruntime's CPU provider has no bfloat16 MatMul kernel; stream_engine/variants.py)",
    )
    g = p.add_argument_group("input")
    g.add_argument(
        "--input",
        metavar="SRC",
        help="speech (default: an espeak-ng sentence), mic, stdin, none (WebSocket only), or an audio file path",
    )
    g.add_argument("--text", help="sentence for --input speech")
    g.add_argument("--device", help="microphone index or name (substring)")
    g.add_argument("--list-devices", action="store_true", help="list audio input devices and exit")
    g.add_argument("--rate", type=int, help="microphone capture rate in Hz (default: the device's)")
    g.add_argument("--channels", type=int, help="microphone capture channels (default: up to 2, downmixed)")
    g.add_argument(
        "--stdin-format",
        metavar="FMT",
        help="raw PCM on stdin as dtype:rate:channels (s16le|s32le|f32le), default s16le:16000:1",
    )
    g.add_argument(
        "--fast",
        action="store_true",
        help="play files as fast as possible instead of in real time "
        "(for a file's whole animation use `msync animate`)",
    )
    g.add_argument(
        "--wait-client",
        action="store_true",
        help="start the file only once a WebSocket /frames client is connected; with --fast the file then goes no "
        "faster than the clients connected at its start read it, so they miss no frame",
    )
    g.add_argument("--speed", type=float, help="real-time multiplier for files")
    g.add_argument("--loop", action=argparse.BooleanOptionalAction, default=None, help="repeat the file/sentence")
    g.add_argument("--stream-id", help="id of the local stream (default main)")
    g.add_argument("--reference-face", metavar="FILE", help="68-point JSON or a face image (needs dlib)")
    g = p.add_argument_group("outputs")
    g.add_argument("--host", help="bind address (default 127.0.0.1)")
    g.add_argument("--port", type=int, help="HTTP/WebSocket port (default 8765; 0 = any free port)")
    g.add_argument(
        "--token",
        help="require this token on every HTTP/WebSocket request (visible in the process "
        "list: prefer --token-file or the MSYNC_TOKEN environment variable)",
    )
    g.add_argument("--token-file", metavar="FILE", help="read the token from FILE (first line)")
    g.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a token")
    g.add_argument(
        "--vmc", action="append", metavar="HOST:PORT", help="VMC target (repeatable; default 127.0.0.1:39539)"
    )
    g.add_argument("--no-vmc", action="store_true", help="do not send VMC")
    g.add_argument(
        "--vmc-names",
        choices=["vrm0", "vrm1", "arkit"],
        help="blendshape names on the wire: VRM0 "
        "presets (A I U E O Blink), VRM1 (aa ih ou ee oh blink) or the 52 ARKit blendshapes (perfect sync)",
    )
    g.add_argument(
        "--vmc-stream",
        metavar="ID",
        help="the stream that drives the VMC/VTube Studio avatar "
        "(default: the local input's, else the first stream with a frame)",
    )
    g.add_argument("--vmc-mirror", action="store_true", help="mirror head yaw/roll for VMC")
    g.add_argument("--osc", action="append", metavar="HOST:PORT", help="raw-landmark OSC target (repeatable)")
    g.add_argument(
        "--vts",
        nargs="?",
        const="ws://127.0.0.1:8001",
        metavar="URL",
        help="drive a VTube Studio "
        "model as a plugin (default URL ws://127.0.0.1:8001; allow the plugin in VTube Studio once)",
    )
    g.add_argument(
        "--vts-token-file",
        metavar="FILE",
        help="where the VTube Studio token is kept (default ~/.config/msync/vts_token.json, mode 0600)",
    )
    g.add_argument("--vts-log", metavar="FILE", help="append the VTube Studio session log (JSON lines) to FILE")
    g = p.add_argument_group("run")
    g.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="stop after S seconds, counted from when the engine is ready (0 or unset: when the input ends; a looped "
        "sentence, the microphone and --input none run until Ctrl-C)",
    )
    g.add_argument("--seed", type=int, help="seed (>= 0) of the model's per-stream noise (default: random)")
    g.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="N engine processes sharing the port (SO_REUSEPORT; a stream lands on a worker by its "
        "connection; worker 0 alone runs the local input and VMC/OSC/VTS; default 1)",
    )
    g.add_argument("--quiet", action="store_true", help="no live latency line")
    g.add_argument("--log-level", help="debug, info, warning (default), error")


def config_from_args(args: argparse.Namespace) -> StreamConfig:
    """A config file (if any) with the flags applied on top."""
    cfg = load_config(args.config) if args.config else StreamConfig()
    overrides: dict[str, object] = {}
    if args.model:
        overrides["model.path"] = args.model
    if args.lookahead is not None:
        overrides["model.lookahead_frames"] = args.lookahead
    if args.threads is not None:
        overrides["model.threads"] = args.threads
    if args.providers is not None:
        overrides["model.providers"] = args.providers
    if getattr(args, "precision", None) is not None:
        overrides["model.precision"] = args.precision
    if args.host is not None and args.host not in LOOPBACK_HOSTS:
        # an explicit non-loopback --host is the opt-in to remote binding; it still needs a token or --insecure
        overrides["server.allow_remote"] = True
    for flag, key in (
        ("text", "input.text"),
        ("device", "input.device"),
        ("rate", "input.sample_rate_hz"),
        ("channels", "input.channels"),
        ("stdin_format", "input.stdin_format"),
        ("speed", "input.speed"),
        ("loop", "input.loop"),
        ("stream_id", "input.stream_id"),
        ("reference_face", "input.reference_face"),
        ("host", "server.host"),
        ("port", "server.port"),
        ("token", "server.token"),
        ("token_file", "server.token_file"),
        ("duration", "duration_s"),
        ("seed", "engine.seed"),
        ("log_level", "log_level"),
        ("workers", "workers"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.fast:
        overrides["input.realtime"] = False
    if args.quiet:
        overrides["latency_line"] = False
    if args.insecure:
        overrides["server.insecure"] = True
    if args.no_vmc and args.vmc:
        raise ConfigError("--no-vmc and --vmc contradict each other: give one")
    if args.no_vmc:
        overrides["vmc.enabled"] = False
    if args.vmc:
        overrides["vmc.targets"] = tuple(args.vmc)
        overrides["vmc.enabled"] = True
    if args.vmc_mirror:
        overrides["vmc.mirror"] = True
    if args.vmc_names:
        overrides["vmc.blend_names"] = args.vmc_names
    if args.vmc_stream:
        overrides["vmc.stream"] = args.vmc_stream
        overrides["vts.stream"] = args.vmc_stream
    if args.vts:
        overrides["vts.enabled"] = True
        overrides["vts.url"] = args.vts
    if args.vts_token_file:
        overrides["vts.token_file"] = args.vts_token_file
    if args.vts_log:
        overrides["vts.log_file"] = args.vts_log
    if args.wait_client:
        overrides["input.wait_client"] = True
    if args.osc:
        overrides["osc.targets"] = tuple(args.osc)
        overrides["osc.enabled"] = True
    input_fields = {}
    if args.input:
        src = args.input
        if src in ("speech", "mic", "stdin", "none"):
            input_fields["kind"] = src
        elif src.startswith("mic:"):
            input_fields.update(kind="mic", device=src[4:])
        else:
            input_fields.update(kind="file", path=src)
            if args.loop is None:
                overrides["input.loop"] = False
    try:
        if input_fields:
            current = to_dict(cfg.input)
            current.update(input_fields)
            cfg = replace_path(cfg, "input", InputConfig(**current))
        for key, value in overrides.items():
            cfg = replace_path(cfg, key, value)
        if getattr(args, "overrides", None):
            data = to_dict(cfg)
            apply_overrides(data, args.overrides)
            cfg = from_dict(StreamConfig, data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return cfg


def config_notes(cfg: StreamConfig) -> list[str]:
    """Settings that are valid but probably not what was meant, one line each (printed before the engine starts)."""
    from stream_engine.outputs.osc import OscConfig

    notes = []
    local = cfg.input.stream_id if cfg.input.kind != "none" else None
    for name, chosen, on in (
        ("VMC", cfg.vmc.stream, cfg.vmc.enabled),
        ("VTube Studio", cfg.vts.stream, cfg.vts.enabled),
    ):
        if on and chosen and local is not None and chosen != local:
            notes.append(
                f"{name} follows stream {chosen!r}, not the local input's {local!r}: it stays at rest until a "
                f"WebSocket client opens a stream called {chosen!r}"
            )
    if not cfg.osc.enabled and cfg.osc.targets != OscConfig().targets:
        notes.append("osc.targets is set but osc.enabled is false: no OSC is sent (set osc.enabled, or use --osc)")
    return notes


def run(args: argparse.Namespace) -> int:
    if args.list_devices:
        from stream_engine.inputs import InputError, list_input_devices

        try:
            devices = list_input_devices()
        except InputError as exc:
            print(f"msync stream: {exc}", file=sys.stderr)
            return 2
        for d in devices:
            print(
                f"{d['index']:3d}  {d['name']}  ({d['max_input_channels']} ch, {d['default_samplerate']:.0f} Hz, "
                f"{d['hostapi']})"
            )
        if not devices:
            print("no audio input devices found", file=sys.stderr)
        return 0
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        print(f"msync stream: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    for note in config_notes(cfg):
        print(f"msync stream: note: {note}", file=sys.stderr)
    if args.token:
        print(
            "msync stream: warning: --token is visible to every local user in the process list; use "
            "--token-file or the MSYNC_TOKEN environment variable",
            file=sys.stderr,
        )
    if cfg.workers != 1:
        from stream_engine.workers import WorkersError, run_workers

        try:
            return run_workers(cfg)
        except WorkersError as exc:
            print(f"msync stream: {exc}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(run_stream(cfg))
    except StreamError as exc:
        print(f"msync stream: {exc}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------------- wiring


def load_model(cfg: ModelConfig) -> StepRunner:
    """The runner named by `ModelConfig`. Raises `StreamError` with a clear reason."""
    from stream_engine.contract import ModelLoadError

    path = cfg.path
    if path.startswith("python:"):
        module, _, factory = path[len("python:") :].partition(":")
        try:
            runner: StepRunner = getattr(importlib.import_module(module), factory)()
        except Exception as exc:
            raise StreamError(f"cannot build the runner {path!r}: {exc}") from exc
    else:
        # Model variants (stream_engine/variants.py): the shipped default resolves to its precision variant.
        from stream_engine import variants

        try:
            path = str(variants.resolve(path, cfg.precision, cfg.providers))
        except variants.VariantError as exc:
            raise StreamError(str(exc)) from None
        if not Path(path).is_file():
            hint = "the shipped default model is not in this checkout yet; " if Path(path) == DEFAULT_MODEL_PATH else ""
            raise StreamError(
                f"model file {path} not found: {hint}pass --model X.onnx (export one with "
                "`msync export`, e.g. `msync export --random-init --out X.onnx`)"
            )
        from stream_engine.runtime import load_runner

        try:
            runner = load_runner(path, threads=cfg.threads, providers=cfg.providers or None)
        except ModelLoadError as exc:  # ContractError is a ModelLoadError
            raise StreamError(f"cannot use model: {exc}") from None
        try:
            variants.check(runner.contract, cfg.precision)
        except variants.VariantError as exc:
            raise StreamError(f"cannot use model {path}: {exc}") from None
    L = runner.contract.lookahead_frames
    if cfg.lookahead_frames is not None and cfg.lookahead_frames != L:
        raise StreamError(
            f"this model supports only look-ahead L={L} (it is fixed at export); you asked for "
            f"L={cfg.lookahead_frames}: export a model with that look-ahead"
        )
    return runner


def make_source(icfg: InputConfig) -> AudioSource | None:
    """The input source object for `InputConfig` (None for "none")."""
    from stream_engine import inputs

    if icfg.kind == "none":
        return None
    if icfg.kind == "mic":
        return inputs.MicrophoneSource(
            device=icfg.device or None,
            sample_rate_hz=icfg.sample_rate_hz or None,
            channels=icfg.channels or None,
            quality=icfg.resample_quality,
        )
    if icfg.kind == "stdin":
        try:
            fmt = inputs.PcmFormat.parse(icfg.stdin_format)
        except ValueError as exc:
            raise StreamError(str(exc)) from None
        return inputs.StdinSource(fmt=fmt, quality=icfg.resample_quality)
    if icfg.kind == "speech":
        try:
            path = inputs.synthesize_speech(icfg.text)
        except inputs.InputError as exc:
            raise StreamError(str(exc)) from None
        return inputs.FileSource(path, realtime=icfg.realtime, speed=icfg.speed, loop=icfg.loop, gap_s=0.8)
    return inputs.FileSource(icfg.path, realtime=icfg.realtime, speed=icfg.speed, loop=icfg.loop)


async def run_stream(cfg: StreamConfig, ready: asyncio.Future[WebSocketServer] | None = None) -> int:
    """Run the engine until the input ends, `duration_s` passes, or SIGINT/SIGTERM. Returns an exit code.

    Args:
        ready: resolved with the `WebSocketServer` once serving (tests, embedding).
    """
    from stream_engine.engine import Engine
    from stream_engine.inputs import FileSource, InputError
    from stream_engine.outputs.osc import OscSink
    from stream_engine.outputs.vmc import VmcSink
    from stream_engine.outputs.vts import VtsSink
    from stream_engine.outputs.websocket import WebSocketServer, resolve_tokens
    from stream_engine.session import ReferenceFaceError, load_reference_face

    level = getattr(logging, cfg.log_level.upper(), logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level > logging.DEBUG:  # the websockets library logs two lines per HTTP request at info (health polls)
        logging.getLogger("websockets").setLevel(max(level, logging.WARNING))
    runner = load_model(cfg.model)
    reference = None
    if cfg.input.reference_face:
        try:
            reference = load_reference_face(cfg.input.reference_face, runner.contract.num_landmarks)
        except ReferenceFaceError as exc:
            raise StreamError(str(exc)) from None
    source = make_source(cfg.input)
    if isinstance(source, FileSource):  # a missing or undecodable file stops here, before anything listens
        try:
            source.load(runner.contract.sample_rate_hz)
        except InputError as exc:
            raise StreamError(f"input {exc}") from None
    engine = Engine(runner, cfg.engine, cfg.signals)
    try:
        server = WebSocketServer(engine, resolve_tokens(cfg.server, os.environ))
    except ValueError as exc:  # a remote bind without a token, an unreadable token file
        raise StreamError(str(exc)) from None
    local = cfg.input.stream_id if source is not None else None
    sinks: list[Any] = []
    try:  # before the warm-up, so that a target whose host does not resolve stops here at once
        if cfg.vmc.enabled:
            sinks.append(VmcSink(cfg.vmc, local_stream=local))
        if cfg.vts.enabled:
            sinks.append(VtsSink(cfg.vts, local_stream=local))
        if cfg.osc.enabled:
            sinks.append(OscSink(cfg.osc))
    except (ValueError, OSError) as exc:  # OSError: an unwritable --vts-log
        raise StreamError(f"output {exc}") from None
    # a taken port or a foreign address: said now, not after the warm-up's seconds
    problem = bind_problem(cfg.server.host, cfg.server.port) if cfg.server.port and not cfg.server.reuse_port else None
    if problem is not None:
        raise StreamError(f"cannot listen on {problem}")
    compiles = engine.batch_signals is not None and engine.batch_signals.compiled
    print(
        "msync stream: warming up the engine"
        + (" (the first start on a machine also compiles the signals loop, ~4 s)" if compiles else ""),
        file=sys.stderr,
    )
    try:
        await engine.warm_up()  # the state store and the runner's memory for the largest batch, before any stream
    except Exception as exc:  # a runner that fails here fails on streams too; they report it per stream
        log.warning("warming the engine up failed: %r", exc)
    try:
        await server.start()
    except OSError as exc:
        await engine.aclose()
        raise StreamError(f"cannot listen on {bind_error(cfg.server.host, cfg.server.port, exc)}") from None
    engine.add_sink(server)
    for sink in sinks:
        engine.add_sink(sink)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    deadline = loop.call_later(cfg.duration_s, stop.set) if cfg.duration_s else None  # counts --wait-client too
    outputs = [f"viewer {server.url}"]
    if cfg.vmc.enabled:
        outputs.append("VMC " + ", ".join(cfg.vmc.targets))
    if cfg.osc.enabled:
        outputs.append("OSC " + ", ".join(cfg.osc.targets))
    if cfg.vts.enabled:
        outputs.append(f"VTube Studio {cfg.vts.url}")
    if cfg.input.kind == "file" and not cfg.input.realtime and not cfg.input.wait_client:
        print(
            "msync stream: --fast plays the file as fast as the engine goes: WebSocket clients that connect "
            "later miss its first frames (add --wait-client, or use `msync animate FILE` for the whole "
            "animation)",
            file=sys.stderr,
        )
    print(
        f"msync stream: model {getattr(runner.contract, 'model_version', '?')} (L={engine.core.lookahead_frames}, "
        f"algorithmic latency {engine.algorithmic_latency_ms:.0f} ms); input {cfg.input.kind}"
        f"{' ' + cfg.input.path if cfg.input.kind == 'file' else ''}; " + "; ".join(outputs),
        file=sys.stderr,
    )
    exit_code = 0
    async with engine:
        if ready is not None and not ready.done():
            ready.set_result(server)
        input_task = None
        read_to_the_end: Callable[[], Awaitable[None]] | None = None
        if source is not None and cfg.input.wait_client:
            print(f"msync stream: waiting for a WebSocket /frames client on {server.url} ...", file=sys.stderr)
            await _wait_for_client(server, stop)
        if source is not None and not stop.is_set():
            engine.open_stream(cfg.input.stream_id, reference, source=cfg.input.kind)
            if cfg.input.wait_client and isinstance(source, FileSource) and not source.realtime:
                # the clients waited for get every frame: the file goes no faster than they read it
                server.keep_every_frame(cfg.input.stream_id)
                source.pace = functools.partial(
                    server.wait_every_frame_clients, cfg.input.stream_id, int(engine.contract.fps)
                )
                read_to_the_end = functools.partial(
                    server.wait_every_frame_clients, cfg.input.stream_id, 0, until_read=True
                )
            # its failure is reported below, once, as a line (an InputError) or with the exception
            input_task = engine.spawn(source.run(engine, cfg.input.stream_id), name="msync-input", log_failure=False)
            input_task.add_done_callback(lambda t: stop.set())
        if cfg.latency_line:
            engine.spawn(_latency_line(engine), name="msync-latency-line")
        await stop.wait()
        if deadline is not None:
            deadline.cancel()
        if (
            read_to_the_end is not None
            and input_task is not None
            and input_task.done()
            and not input_task.cancelled()
            and input_task.exception() is None
        ):  # the file is done: its waited-for clients read the last frames before the connections close
            await read_to_the_end()
        # every stream's look-ahead tail out, then `closed` to every output, before the connections close
        await engine.drain(cfg.shutdown_drain_s)
        if input_task is not None and input_task.done() and not input_task.cancelled():
            failure = input_task.exception()
            if isinstance(failure, InputError):
                print(f"{_after_line()}msync stream: input failed: {failure}", file=sys.stderr)
                exit_code = 2
            elif failure is not None:
                print(f"{_after_line()}msync stream: input failed: {failure!r}", file=sys.stderr)
                exit_code = 1
        if cfg.latency_line:
            print(_after_line() + engine.latency_line(), file=sys.stderr)
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
    return exit_code


async def _wait_for_client(server: WebSocketServer, stop: asyncio.Event, poll_s: float = 0.02) -> None:
    """Until the WebSocket server has a frames client (or `stop` is set)."""
    while not stop.is_set() and not _frame_clients(server):
        await asyncio.sleep(poll_s)


def _frame_clients(server: WebSocketServer) -> int:
    """Connected frame subscribers of the WebSocket server."""
    return int(server.frame_clients)


def _after_line() -> str:
    """A newline to end the live latency line first, on a terminal only (in a log it would be a blank line)."""
    return "\n" if sys.stderr.isatty() else ""


async def _latency_line(engine: Engine, period_s: float = 1.0) -> None:
    tty = sys.stderr.isatty()
    last = 0.0
    while True:
        await asyncio.sleep(period_s)
        line = engine.latency_line()
        if tty:
            print("\r" + line.ljust(110), end="", file=sys.stderr, flush=True)
        elif time.monotonic() - last >= 5.0:  # logs: one line every 5 s
            last = time.monotonic()
            print(line, file=sys.stderr, flush=True)
