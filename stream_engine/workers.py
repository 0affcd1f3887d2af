"""`msync stream --workers N`: N engine processes share one port, so one machine's cores all serve streams.

Each worker is a whole `msync stream` (its own engine, model session, state slots and WebSocket server) whose
listening socket is bound with SO_REUSEPORT to the same address; the kernel spreads new connections over the
workers (by a hash of the connection's addresses), so a stream lands on a worker by its connection and stays
there. Chosen over intra-op threads by measurement (stream_engine/serve/SCALING.md, "One machine"): on the
2-core EPYC a second ONNX Runtime thread made a B=64 step only a little faster in wall time while costing
about twice the CPU, whereas a second process adds a whole core of step and Python work.

What a worker sees is its own streams: a /audio client gets its own frames (the same connection), /health
and /frames viewers see the streams of the worker they reached. Only worker 0 runs the local input (speech,
mic, file, stdin) and the VMC/OSC/VTube Studio outputs and prints the latency line; `engine.max_streams` and
`server.max_clients` are per worker. Linux (and other systems with SO_REUSEPORT load balancing) only.

    msync stream --input none --workers 2 --set engine.max_streams=64
"""

from __future__ import annotations

import dataclasses
import errno
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
from typing import Any

from stream_engine.config import StreamConfig, to_dict
from stream_engine.dataclass_io import from_dict

#: What stops `msync stream` cleanly, one process or its workers (the rest pose sent, connections closed): Ctrl-C,
#: `kill`, and a closed terminal (SIGHUP, where the platform has it).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class WorkersError(RuntimeError):
    """The workers cannot be started (no SO_REUSEPORT, the port is taken, a bad worker count)."""


def worker_config(cfg: StreamConfig, index: int, port: int) -> StreamConfig:
    """The config of worker `index`: the shared port with SO_REUSEPORT; the ids it gives streams opened without
    one are "w<index>-s<n>" (unique across the workers; a client-chosen id is checked on its worker only);
    workers other than 0 take streams only over WebSocket (no local input, no VMC/OSC/VTube Studio, no latency
    line)."""
    server = dataclasses.replace(cfg.server, port=port, reuse_port=True)
    engine = dataclasses.replace(cfg.engine, id_prefix=f"w{index}-s")  # ids unique across the workers
    out = dataclasses.replace(cfg, server=server, engine=engine, workers=1)
    if index > 0:
        out = dataclasses.replace(
            out,
            input=dataclasses.replace(cfg.input, kind="none"),
            vmc=dataclasses.replace(cfg.vmc, enabled=False),
            osc=dataclasses.replace(cfg.osc, enabled=False),
            vts=dataclasses.replace(cfg.vts, enabled=False),
            latency_line=False,
        )
    return out


def bind_error(host: str, port: int, exc: OSError) -> str:
    """'host:port: why (what to do)' for a failed bind or getaddrinfo of (host, port)."""
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        hint = (
            "check --host"
            if isinstance(exc, socket.gaierror)
            else "no interface of this machine has that address: check --host"
        )
    else:
        hint = "use --port to pick another"
    return f"{host}:{port}: {exc.strerror or exc} ({hint})"


def bind_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on (host, port) now (`bind_error`'s text), or None: the host resolves and a
    plain bind (SO_REUSEADDR, as asyncio's) of each of its addresses succeeds, then is let go. A plain bind fails
    while anything listens there, also a server whose sockets have SO_REUSEPORT."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:  # a host name that does not resolve
        return bind_error(host, port, exc)
    for family, _, _, _, addr in infos:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(addr)
            except OSError as exc:
                return bind_error(host, port, exc)
    return None


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to (host, port) with SO_REUSEPORT: it fixes the port when `port` is 0 and
    holds it while the workers bind theirs. Raises WorkersError."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise WorkersError("--workers needs SO_REUSEPORT, which this platform lacks")
    # SO_REUSEPORT would share the port with any server of this user already on it (another msync --workers)
    problem = bind_problem(host, port) if port else None
    if problem is not None:
        raise WorkersError(f"cannot bind {problem}")
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise WorkersError(f"cannot bind {bind_error(host, port, exc)}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise WorkersError(f"cannot bind {bind_error(host, port, exc)}") from None
    return sock


def _worker_main(data: dict[str, Any], index: int) -> None:
    """Entry of one worker process: run `msync stream` with its config; exit with its exit code."""
    import asyncio

    from stream_engine.stream import StreamError, run_stream

    cfg = from_dict(StreamConfig, data)
    try:
        code = asyncio.run(run_stream(cfg))
    except StreamError as exc:
        print(f"msync stream worker {index}: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


MAX_WORKERS_PER_CPU = 4


def max_workers() -> int:
    """The most workers `run_workers` starts: MAX_WORKERS_PER_CPU per CPU this process may run on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return MAX_WORKERS_PER_CPU * max(1, cpus)


def run_workers(cfg: StreamConfig) -> int:
    """Start `cfg.workers` worker processes on one port and wait for them. When one ends (its input ended,
    `duration_s`, an error) or SIGINT/SIGTERM arrives, the others are asked to stop (SIGTERM) and awaited.
    Returns the largest worker exit code (see worker_exit_code). Raises WorkersError when workers < 1 or
    > max_workers(), or when the port cannot be bound."""
    n = int(cfg.workers)
    if n < 1:
        raise WorkersError("workers must be >= 1")
    limit = max_workers()
    if n > limit:
        raise WorkersError(
            f"workers = {n} is more than {limit} ({MAX_WORKERS_PER_CPU} per CPU of this machine): every worker loads "
            "its own model and engine; use one worker per core (see SCALING.md)"
        )
    reserved = reserve_port(cfg.server.host, cfg.server.port)
    port = reserved.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    procs = [
        ctx.Process(
            target=_worker_main, args=(to_dict(worker_config(cfg, i, port)), i), name=f"msync-worker-{i}", daemon=False
        )
        for i in range(n)
    ]
    # the signals this supervisor sent, per worker: SIGTERM to ask it to stop, SIGKILL after the grace. A worker
    # that has just died may still look alive (its sentinel closes before it can be reaped), so a SIGTERM sent
    # to it changes nothing and its own cause of death (say SIGKILL from outside) is still told apart
    signalled: dict[int, set[int]] = {}

    def stop(*_: object) -> None:
        for i, p in enumerate(procs):
            if p.is_alive():
                signalled.setdefault(i, set()).add(signal.SIGTERM)
                p.terminate()  # SIGTERM: the worker closes its streams and exits

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        for p in procs:
            p.start()
        host = "127.0.0.1" if cfg.server.host in ("0.0.0.0", "") else cfg.server.host
        print(f"msync stream: {n} workers sharing http://{host}:{port}/ (SO_REUSEPORT)", file=sys.stderr, flush=True)
        multiprocessing.connection.wait([p.sentinel for p in procs])
        stop()
        for i, p in enumerate(procs):
            p.join(timeout=15)
            if p.is_alive():
                signalled.setdefault(i, set()).add(signal.SIGKILL)
                p.kill()
                p.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reserved.close()
    return worker_exit_code([p.exitcode or 0 for p in procs], signalled)


def worker_exit_code(codes: list[int], signalled: dict[int, set[int]]) -> int:
    """The supervisor's exit code from its workers' exit codes (negative = ended by that signal) and the signals
    it sent each worker (index -> signal numbers). A worker ended by a signal the supervisor sent it is a clean
    stop; a worker killed by any other signal (a crash, the OOM killer, `kill -9`) counts as 1 and is reported on
    stderr, as is a nonzero exit code. Returns the largest code."""
    worst = 0
    for i, c in enumerate(codes):
        if c < 0 and -c in signalled.get(i, set()):
            continue
        if c < 0:
            print(f"msync stream: worker {i} was killed by signal {-c}; the others were stopped", file=sys.stderr)
            c = 1
        elif c != 0:
            print(f"msync stream: worker {i} exited with code {c}; the others were stopped", file=sys.stderr)
        worst = max(worst, c)
    return worst
