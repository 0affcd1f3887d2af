"""The configuration of `msync serve`: the model, the replicas and their capacity, and the server limits."""

from __future__ import annotations

import dataclasses
from typing import Any

from stream_engine.outputs.websocket import ServerConfig
from stream_engine.signals import stream_seed as stream_seed  # one per-stream seed for engine and serve

DEFAULT_PORT = 8000


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """One Ray Serve application of msync replicas.

    Attributes:
        model: exported .onnx step model ("" = the shipped default, resolved by `precision`).
        precision: "auto" | "fp32" | "int8" (as `msync stream --precision`); the int8 variant's output
            depends on how streams are batched together, fp32's does not.
        threads: onnxruntime intra-op threads per replica.
        providers: onnxruntime providers ("" = CPU).
        streams_per_replica: streams one replica holds (its engine's `max_streams`). The deployment's
            `max_ongoing_requests` is this plus one: the extra request is the refusal lane, so a connection
            routed to a full replica is answered at once with close 1013 instead of waiting in a queue.
        replicas: replicas when autoscaling is off (`max_replicas` <= `replicas`).
        min_replicas, max_replicas: autoscaling range on ongoing streams (on when `max_replicas` > `replicas`;
            starts at `replicas`).
        target_streams: autoscaling target of ongoing streams per replica (0 = 3/4 of `streams_per_replica`):
            replicas are added before the existing ones fill up.
        cpus_per_replica: Ray CPUs each replica reserves (with `threads` = 1, 1 CPU is one core's work).
        max_queued_requests: connections the proxy holds while every replica's lanes are busy; beyond that
            it answers the WebSocket upgrade with HTTP 503 (Retry-After).
        drain_s: a replica told to stop (scale-down, redeploy, `serve delete`) keeps serving its open streams
            this long, then is stopped; the streams still open are closed with 1012 by the proxy hook
            (`proxy_hook`; Ray Serve calls no replica code before the drain ends).
        seed: base seed of the model noise: stream S gets `stream_seed(seed, S)`, whichever replica holds it
            (None = random per stream).
        batch_streams: most streams per runner call in a replica.
        app_name: the Ray Serve application name.
        server: the limits, tokens, Origin/Host rules and bind address (`ServerConfig`; `port` default 8000;
            the viewer, /frames and the send-window fields do not apply).
    """

    model: str = ""
    precision: str = "auto"
    threads: int = 1
    providers: str = ""
    streams_per_replica: int = 16
    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int = 1
    target_streams: float = 0.0
    cpus_per_replica: float = 1.0
    max_queued_requests: int = 64
    drain_s: float = 30.0
    seed: int | None = None
    batch_streams: int = 64
    app_name: str = "msync"
    server: ServerConfig = ServerConfig(port=DEFAULT_PORT)

    def __post_init__(self) -> None:
        if self.streams_per_replica < 1 or self.replicas < 1 or self.threads < 1:
            raise ValueError("streams_per_replica, replicas and threads must be >= 1")
        if not 1 <= self.min_replicas <= max(self.replicas, self.max_replicas):
            raise ValueError("need 1 <= min_replicas <= max(replicas, max_replicas)")
        if self.cpus_per_replica < 0 or self.max_queued_requests < 1:
            raise ValueError("cpus_per_replica must be >= 0 and max_queued_requests >= 1")

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas > self.replicas

    @property
    def max_ongoing_requests(self) -> int:
        """Per replica: its streams plus the refusal lane (see `streams_per_replica`)."""
        return self.streams_per_replica + 1

    def autoscaling_config(self) -> dict[str, Any]:
        """Ray Serve's `autoscaling_config` (target: ongoing requests per replica = open streams)."""
        target = self.target_streams or max(1.0, 0.75 * self.streams_per_replica)
        return {
            "min_replicas": self.min_replicas,
            "initial_replicas": self.replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": target,
            "upscale_delay_s": 5.0,
            "downscale_delay_s": 60.0,
        }
