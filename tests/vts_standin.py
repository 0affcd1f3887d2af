"""A stand-in for VTube Studio's public API server (loopback only), for testing `stream_engine.outputs.vts`.

It implements the messages the plugin uses, as VTube Studio documents them: APIStateRequest,
AuthenticationTokenRequest (approved, or refused with APIError 50 when `refuse_token`), AuthenticationRequest
(only tokens it issued, unless `revoked`), InjectParameterDataRequest (APIError 8 before authentication, 453
for an unknown parameter id, the documented value range), and APIError for malformed JSON (2), a wrong
apiName (3), a missing requestID (5) and unknown message types (7). Every message in and out is recorded.

    python tests/vts_standin.py --port 8001 [--refuse-token] [--log FILE]     # run it by hand
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time

DEFAULT_PARAMETERS = {
    "MouthOpen",
    "MouthSmile",
    "FaceAngleX",
    "FaceAngleY",
    "FaceAngleZ",
    "EyeOpenLeft",
    "EyeOpenRight",
    "FacePositionX",
    "FacePositionY",
    "Brows",
}


class VtsStandIn:
    """One server; `received` holds (time, message) of every request, `sent` the answers."""

    def __init__(self, refuse_token: bool = False, drop_after: int | None = None) -> None:
        self.refuse_token = refuse_token
        self.drop_after = drop_after  # close each connection after this many inject requests (reconnect tests)
        self.issued: set[str] = set()
        self.revoked: set[str] = set()
        self.received: list[tuple[float, dict]] = []
        self.sent: list[dict] = []
        self.connections = 0
        self.close_codes: list[int | None] = []  # the close code each connection ended with (msync's, or ours)
        self.values: dict[str, float] = {}
        self.port: int | None = None
        self._server = None

    async def start(self, port: int = 0) -> None:
        from websockets.asyncio.server import serve

        self._server = await serve(self._handler, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def injects(self) -> list[dict]:
        return [m for _, m in self.received if m.get("messageType") == "InjectParameterDataRequest"]

    async def _handler(self, ws) -> None:
        try:
            await self._serve(ws)
        finally:
            self.close_codes.append(ws.close_code)

    async def _serve(self, ws) -> None:
        self.connections += 1
        authenticated = False
        injects = 0
        async for raw in ws:
            now = time.monotonic()
            try:
                msg = json.loads(raw)
                if not isinstance(msg, dict):
                    raise ValueError
            except ValueError:
                await self._reply(ws, None, "APIError", {"errorID": 2, "message": "JSON invalid"})
                continue
            self.received.append((now, msg))
            rid = msg.get("requestID")
            if msg.get("apiName") != "VTubeStudioPublicAPI":
                await self._reply(ws, rid, "APIError", {"errorID": 3, "message": "apiName invalid"})
                continue
            if not isinstance(rid, str) or not rid:
                await self._reply(ws, None, "APIError", {"errorID": 5, "message": "requestID invalid"})
                continue
            kind, data = msg.get("messageType"), msg.get("data") or {}
            if kind == "APIStateRequest":
                await self._reply(
                    ws,
                    rid,
                    "APIStateResponse",
                    {"active": True, "vTubeStudioVersion": "stand-in", "currentSessionAuthenticated": authenticated},
                )
            elif kind == "AuthenticationTokenRequest":
                name, dev = data.get("pluginName", ""), data.get("pluginDeveloper", "")
                if not 3 <= len(name) <= 32:
                    await self._reply(ws, rid, "APIError", {"errorID": 52, "message": "plugin name invalid"})
                elif not 3 <= len(dev) <= 32:
                    await self._reply(ws, rid, "APIError", {"errorID": 53, "message": "developer name invalid"})
                elif self.refuse_token:
                    await self._reply(ws, rid, "APIError", {"errorID": 50, "message": "User has denied API access"})
                else:
                    token = secrets.token_hex(32)
                    self.issued.add(token)
                    await self._reply(ws, rid, "AuthenticationTokenResponse", {"authenticationToken": token})
            elif kind == "AuthenticationRequest":
                token = data.get("authenticationToken")
                if not token:
                    await self._reply(ws, rid, "APIError", {"errorID": 100, "message": "token missing"})
                    continue
                authenticated = token in self.issued and token not in self.revoked
                await self._reply(
                    ws,
                    rid,
                    "AuthenticationResponse",
                    {
                        "authenticated": authenticated,
                        "reason": "Token valid." if authenticated else "Token invalid or revoked.",
                    },
                )
            elif kind == "InjectParameterDataRequest":
                if not authenticated:
                    await self._reply(ws, rid, "APIError", {"errorID": 8, "message": "requires authentication"})
                    continue
                bad = [p for p in data.get("parameterValues", []) if p.get("id") not in DEFAULT_PARAMETERS]
                out_of_range = [
                    p
                    for p in data.get("parameterValues", [])
                    if not isinstance(p.get("value"), (int, float)) or abs(p["value"]) > 1_000_000
                ]
                if bad:
                    await self._reply(ws, rid, "APIError", {"errorID": 453, "message": f"unknown {bad[0].get('id')}"})
                elif out_of_range or data.get("mode", "set") not in ("set", "add"):
                    await self._reply(ws, rid, "APIError", {"errorID": 454, "message": "bad value or mode"})
                else:
                    for p in data.get("parameterValues", []):
                        self.values[p["id"]] = float(p["value"])
                    await self._reply(ws, rid, "InjectParameterDataResponse", {})
                injects += 1
                if self.drop_after is not None and injects >= self.drop_after:
                    await ws.close()
                    return
            else:
                await self._reply(ws, rid, "APIError", {"errorID": 7, "message": f"unknown request {kind!r}"})

    async def _reply(self, ws, rid, kind: str, data: dict) -> None:
        msg = {
            "apiName": "VTubeStudioPublicAPI",
            "apiVersion": "1.0",
            "timestamp": int(time.time() * 1000),
            "messageType": kind,
            "requestID": rid or "",
            "data": data,
        }
        self.sent.append(msg)
        await ws.send(json.dumps(msg))


async def _main(args) -> None:
    server = VtsStandIn(refuse_token=args.refuse_token)
    await server.start(args.port)
    print(f"VTube Studio stand-in on {server.url}", flush=True)
    try:
        while True:
            await asyncio.sleep(1.0)
            if args.log:
                with open(args.log, "w") as f:
                    json.dump(
                        {
                            "received": [m for _, m in server.received][-50:],
                            "values": server.values,
                            "connections": server.connections,
                        },
                        f,
                        indent=1,
                    )
    finally:
        await server.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--refuse-token", action="store_true")
    p.add_argument("--log")
    asyncio.run(_main(p.parse_args()))
