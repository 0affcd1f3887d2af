"""`msync serve`: the engine on a Ray Serve cluster; each replica runs an engine core for its streams.

    msync serve --local --replicas 2 --streams-per-replica 16      # one-machine cluster, for a try
    msync serve --address auto --max-replicas 40                    # on a running cluster (`ray start`)

Clients speak `msync stream`'s WS /audio protocol to http://HOST:PORT/audio (own frames back); GET /health
answers for one replica. PROTOCOL.md §8 says what differs from `msync stream`. Needs the `serve` extra.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from stream_engine.dataclass_io import ConfigError, load_config, replace_path
from stream_engine.serve.config import ServeConfig

HELP = "Serve streams from a Ray Serve cluster (replicas each run the engine); `--local` for one machine."

# flag -> ServeConfig key
_FLAGS = {
    "model": "model",
    "precision": "precision",
    "threads": "threads",
    "replicas": "replicas",
    "min_replicas": "min_replicas",
    "max_replicas": "max_replicas",
    "streams_per_replica": "streams_per_replica",
    "cpus_per_replica": "cpus_per_replica",
    "seed": "seed",
    "host": "server.host",
    "port": "server.port",
    "token_file": "server.token_file",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n")[1]
    p.add_argument("--config", metavar="FILE", help="JSON or TOML ServeConfig (flags override it)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set server.idle_timeout_s=30",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="start a one-machine Ray cluster in this process")
    where.add_argument("--address", default="auto", help="Ray cluster to join (default auto: `ray start`ed here)")
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="PATH", help="exported .onnx step model (default: the shipped one)")
    g.add_argument("--precision", choices=["auto", "fp32", "int8"], help="shipped variant (auto: int8 on CPU)")
    g.add_argument("--threads", type=int, help="onnxruntime intra-op threads per replica (default 1)")
    g.add_argument("--seed", type=int, help="base noise seed (stream S gets seed + crc32(S))")
    g = p.add_argument_group("replicas")
    g.add_argument("--replicas", type=int, help="replicas (the start when autoscaling; default 1)")
    g.add_argument("--min-replicas", type=int, metavar="N", help="autoscaling floor")
    g.add_argument(
        "--max-replicas", type=int, metavar="N", help="autoscaling ceiling (autoscaling on when above --replicas)"
    )
    g.add_argument("--streams-per-replica", type=int, metavar="N", help="streams one replica holds (default 16)")
    g.add_argument("--cpus-per-replica", type=float, metavar="C", help="Ray CPUs per replica (default 1)")
    g = p.add_argument_group("server")
    g.add_argument("--host", help="bind address of the HTTP proxy (default 127.0.0.1)")
    g.add_argument("--port", type=int, help="HTTP proxy port (default 8000)")
    g.add_argument("--token-file", metavar="FILE", help="token (first line); or MSYNC_TOKEN")
    g.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")


def resolve_config(args: argparse.Namespace) -> ServeConfig:
    """The config from --config, --set and the flags (flags win). Raises ConfigError/ValueError."""
    cfg = load_config(ServeConfig, args.config, args.set)
    for flag, key in _FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            cfg = replace_path(cfg, key, value)
    if args.host and args.host not in ("127.0.0.1", "localhost", "::1"):
        cfg = replace_path(cfg, "server.allow_remote", True)
    return cfg


def run(args: argparse.Namespace) -> int:
    import json

    from stream_engine.dataclass_io import to_dict

    try:
        cfg = resolve_config(args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"msync serve: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        print("msync serve: Ray Serve is not installed: pip install 'msync[serve]'", file=sys.stderr)
        return 2
    from stream_engine.serve.app import with_resolved_tokens

    try:
        cfg = with_resolved_tokens(cfg, os.environ)
    except ValueError as exc:
        print(f"msync serve: {exc}", file=sys.stderr)
        return 2
    return serve_until_stopped(cfg, local=args.local, address=args.address, duration_s=args.duration)


def start(cfg: ServeConfig, local: bool, address: str = "auto") -> str:
    """Connect to (or, `local`, start) a Ray cluster, deploy the app, and return its /audio URL."""
    import ray
    from ray import serve

    from stream_engine.serve.app import build_app, cluster_env

    if local:
        os.environ.update(cluster_env())  # inherited by the cluster's processes
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    else:
        ray.init(address=address, configure_logging=False, log_to_driver=False)
    serve.start(http_options={"host": cfg.server.host, "port": cfg.server.port, "location": "EveryNode"})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/", blocking=False)
    return f"ws://{cfg.server.host}:{cfg.server.port}/audio"


def serve_until_stopped(cfg: ServeConfig, local: bool, address: str, duration_s: float | None) -> int:
    import ray
    from ray import serve

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        url = start(cfg, local, address)
        scale = (
            f"{cfg.min_replicas}-{cfg.max_replicas} replicas (autoscaling)"
            if cfg.autoscaling
            else f"{cfg.replicas} replicas"
        )
        print(
            f"msync serve: {url} | {scale} x {cfg.streams_per_replica} streams | health "
            f"http://{cfg.server.host}:{cfg.server.port}/health",
            file=sys.stderr,
            flush=True,
        )
        t_end = time.monotonic() + duration_s if duration_s else None
        while not stop and (t_end is None or time.monotonic() < t_end):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        print(f"msync serve: {exc}", file=sys.stderr)
        return 1
    finally:
        try:
            serve.delete(cfg.app_name)
        except Exception:
            pass
        if local:
            ray.shutdown()
    return 0
