"""The `msync serve` replica without Ray: its transport over a real ASGI server (uvicorn + FastAPI, as Ray
Serve's ingress hands it), on loopback. Admission (token, Origin), limits (size, capacity), stream ids and
seeds; the protocol itself is tested in test_protocol.py."""

import asyncio
import json
import socket

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'msync[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install 'msync[serve]')")

from serve_scenario import make_audio  # noqa: E402

from stream_engine.outputs.websocket import ServerConfig  # noqa: E402
from stream_engine.serve.config import ServeConfig, stream_seed  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _with_replica(cfg: ServeConfig, body):
    import uvicorn
    from fastapi import FastAPI, WebSocket

    from stream_engine.serve.app import MsyncReplica

    replica = MsyncReplica(cfg, "test#r7")
    api = FastAPI()

    async def audio(ws: WebSocket) -> None:
        await replica.ensure_started()
        await replica.server.serve_audio(ws)

    api.add_api_websocket_route("/audio", audio)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        return await body(f"ws://127.0.0.1:{port}/audio", replica)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        await replica.engine.aclose()


def _cfg(**server) -> ServeConfig:
    return ServeConfig(precision="fp32", seed=3, streams_per_replica=2, server=ServerConfig(**server))


@pytest.mark.timeout(60)
def test_stream_frames_ids_and_seeds():
    from stream_engine.serve.client import stream_audio

    async def body(url, replica):
        r = await stream_audio(url, "talk", make_audio(1, 1.0))
        auto = await stream_audio(url, None, make_audio(1, 0.4))
        return r, auto, replica.engine.core

    r, auto, core = asyncio.run(_with_replica(_cfg(), body))
    assert r.close_code == 1000 and r.ready["replica"] == "test#r7" and r.ready["stream"] == "talk"
    assert r.landmarks.shape == (25, 68, 2) and np.isfinite(r.landmarks).all()
    assert np.array_equal(r.indices, np.arange(25))
    assert auto.ready["stream"] == "r7-1"  # ids the client leaves out carry the replica's id
    assert stream_seed(3, "talk") == stream_seed(3, "talk") != stream_seed(3, "talk2")


@pytest.mark.timeout(60)
def test_token_origin_size_and_capacity():
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    async def status(url, **kw):
        try:
            async with connect(url, open_timeout=10, **kw):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    async def body(url, replica):
        out = {
            "no_token": await status(url),
            "bad_token": await status(url + "?token=nope"),
            "token": await status(url + "?token=s3cret"),
            "bearer": await status(url, additional_headers={"Authorization": "Bearer s3cret"}),
            "origin": await status(url + "?token=s3cret", origin="http://evil.example"),
        }
        hello = json.dumps({"type": "hello", "v": 1})
        held = []
        for _ in range(2):  # capacity 2
            ws = await connect(url + "?token=s3cret")
            await ws.send(hello)
            assert json.loads(await ws.recv())["type"] == "ready"
            held.append(ws)
        async with connect(url + "?token=s3cret") as ws:  # full: 1013 at once
            await ws.send(hello)
            err = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            out["full"] = (ws.close_code, err["code"])
        ws = held[0]  # an audio message beyond the limit (2 s at 16 kHz int16 = 64000 B -> 64 KiB): 1009
        await ws.send(b"\0" * 200_000)
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        out["too_big"] = ws.close_code
        await held[1].close()
        out["refused"] = replica.server.refused
        return out

    out = asyncio.run(_with_replica(_cfg(token="s3cret"), body))
    assert out["no_token"] == 401 and out["bad_token"] == 401, out
    assert out["token"] == 101 and out["bearer"] == 101, out
    assert out["origin"] == 403, out
    assert out["full"] == (1013, "unavailable"), out
    assert out["too_big"] == 1009, out
    assert out["refused"] == 3, out
