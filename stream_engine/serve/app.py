"""The Ray Serve application of `msync serve`: replicas that each run an engine, behind Serve's HTTP proxy.

    app = build_app(ServeConfig(streams_per_replica=16, replicas=2, precision="fp32"))
    serve.run(app, name="msync", route_prefix="/")

Routing facts this relies on (Ray Serve 2.60; PROTOCOL.md §8):

- A WebSocket is one request for its whole life: the proxy picks a replica at the upgrade and relays every
  message to it, so a stream's state can live in that replica.
- Every open WebSocket (and every /health in flight) counts against the replica's `max_ongoing_requests`:
  set to the replica's streams plus one refusal lane (`ServeConfig.max_ongoing_requests`). A connection that
  finds its replica's engine full is closed at once with 1013; when every lane is busy the proxy holds at most
  `max_queued_requests` upgrades and answers the rest with HTTP 503.
- The proxy prefers replicas on its own node unless RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING=0 (and the AZ
  variant) is set in the environment of the Ray processes: `cluster_env()`, set by `msync serve --local`
  before it starts the cluster, and needed on every node of a cluster started by hand (with the proxy hook
  that closes a lost replica's WebSockets with 1012).
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations (WebSocket, Request)
# at run time, and those names are imported inside `build_app`.
import asyncio
import dataclasses
import os
from typing import Any

from stream_engine.serve.config import ServeConfig

ROUTING_ENV = {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0", "RAY_SERVE_PROXY_PREFER_LOCAL_AZ_ROUTING": "0"}
PROXY_HOOK_ENV = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "stream_engine.serve.proxy_hook:middlewares"}


def cluster_env() -> dict[str, str]:
    """Environment for the Ray processes (set before the cluster starts; every node): spread connections over
    every node, not the proxy's own first, and close a lost replica's WebSockets with 1012 (`proxy_hook`)."""
    return {**ROUTING_ENV, **PROXY_HOOK_ENV}


def load_runner(cfg: ServeConfig) -> Any:
    """The replica's runner (as `msync stream --model/--precision/--threads`). Raises `StreamError`."""
    from stream_engine.config import DEFAULT_MODEL_PATH, ModelConfig
    from stream_engine.stream import load_model

    mcfg = ModelConfig(
        path=cfg.model or str(DEFAULT_MODEL_PATH), precision=cfg.precision, threads=cfg.threads, providers=cfg.providers
    )
    return load_model(mcfg)


class MsyncReplica:
    """The body of one replica (wrapped into a Serve deployment by `build_app`)."""

    def __init__(self, cfg: ServeConfig, replica_id: str, node_id: str = "") -> None:
        from stream_engine.engine import EngineConfig
        from stream_engine.serve.replica import ReplicaEngine, ReplicaServer

        self.cfg = cfg
        self.replica_id = replica_id
        runner = load_runner(cfg)
        ecfg = EngineConfig(max_streams=cfg.streams_per_replica, max_batch_streams=cfg.batch_streams, seed=cfg.seed)
        self.engine = ReplicaEngine(runner, ecfg, seed_base=cfg.seed, id_prefix=replica_id.rsplit("#", 1)[-1])
        self.server = ReplicaServer(
            self.engine, cfg.server, info={"replica": replica_id, "node": node_id, "pid": os.getpid()}
        )
        self._started: asyncio.Lock | None = None

    async def ensure_started(self) -> None:
        """Start the engine's inference task on the replica's event loop (first request)."""
        if self._started is None:
            self._started = asyncio.Lock()
        async with self._started:
            await self.engine.start()  # idempotent


def build_app(cfg: ServeConfig) -> Any:
    """The bound Serve application: a FastAPI ingress with WS /audio and GET /health on every replica."""
    import ray
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from ray import serve

    api = FastAPI(title="msync", docs_url=None, redoc_url=None, openapi_url=None)

    options: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "ray_actor_options": {"num_cpus": cfg.cpus_per_replica},
        "graceful_shutdown_timeout_s": cfg.drain_s,
    }
    if cfg.autoscaling:
        options["autoscaling_config"] = cfg.autoscaling_config()
    else:
        options["num_replicas"] = cfg.replicas

    @serve.deployment(name="MsyncReplica", **options)
    @serve.ingress(api)
    class Deployment:
        def __init__(self, cfg: ServeConfig) -> None:
            ctx = serve.get_replica_context()
            node = ray.get_runtime_context().get_node_id()
            self.body = MsyncReplica(cfg, ctx.replica_id.to_full_id_str(), node)

        @api.websocket("/audio")
        async def audio(self, ws: WebSocket) -> None:
            await self.body.ensure_started()
            await self.body.server.serve_audio(ws)

        @api.get("/health")
        async def health(self, request: Request) -> Response:
            server = self.body.server
            headers = {k.lower(): v for k, v in request.headers.items()}
            refused = server.refusal(headers, dict(request.query_params), upgrade=False)
            if refused is not None:
                return PlainTextResponse(refused[1] + "\n", status_code=refused[0])
            await self.body.ensure_started()
            return JSONResponse(server.health(), headers={"Cache-Control": "no-store"})

    return Deployment.bind(cfg)  # type: ignore[attr-defined]  # added by @serve.deployment


def with_resolved_tokens(cfg: ServeConfig, environ: Any) -> ServeConfig:
    """`cfg` with the server token read from its file / MSYNC_TOKEN, checked for exposure (raises ValueError):
    resolved once by the driver, so replicas on other hosts need neither the file nor the variable."""
    from stream_engine.outputs.websocket import check_exposure, resolve_tokens

    server = resolve_tokens(cfg.server, environ)
    check_exposure(server)
    return dataclasses.replace(cfg, server=server)
