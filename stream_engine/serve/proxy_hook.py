"""A middleware for Ray Serve's HTTP proxy: a WebSocket whose replica is lost gets a close frame, 1012.

When a replica process dies (or is stopped after its drain), Ray's proxy ends the relay without closing the
client's WebSocket, and the client sees the TCP connection drop (1006, no close frame). This middleware wraps
the proxy's ASGI app; when the app returns for an accepted WebSocket that neither side closed, it sends close
1012 ("service restart": reconnect) with a reason, so clients can tell a lost replica from a network fault.

Ray loads it from the environment of the proxy's process (set before the cluster starts, `app.cluster_env`):

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=stream_engine.serve.proxy_hook:middlewares
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

CLOSE_REPLICA_LOST = 1012  # RFC 6455 / IANA registry: service restart; the client may reconnect
REASON = "replica lost; reconnect and restart the stream"

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class CloseOnReplicaLoss:
    """ASGI middleware (see the module docstring). HTTP requests pass through untouched."""

    def __init__(self, app: Callable[[Message, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope.get("type") != "websocket":
            await self.app(scope, receive, send)
            return
        accepted = ended = False

        async def tracked_send(message: Message) -> None:
            nonlocal accepted, ended
            kind = message.get("type")
            if kind == "websocket.accept":
                accepted = True
            elif kind in ("websocket.close", "websocket.http.response.start"):
                ended = True
            await send(message)

        async def tracked_receive() -> Message:
            nonlocal ended
            message = await receive()
            if message.get("type") == "websocket.disconnect":
                ended = True
            return message

        try:
            await self.app(scope, tracked_receive, tracked_send)
        finally:
            if accepted and not ended:
                with contextlib.suppress(Exception):  # the client may be gone as well
                    await send({"type": "websocket.close", "code": CLOSE_REPLICA_LOST, "reason": REASON})


def middlewares() -> list[Any]:
    """The proxy callback Ray calls (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH): Starlette middlewares."""
    from starlette.middleware import Middleware

    return [Middleware(CloseOnReplicaLoss)]
