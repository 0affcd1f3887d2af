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

from stream_engine.outputs.serializers import decode_binary  # noqa: E402
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


@pytest.mark.timeout(60)
def test_hello_and_idle_timeouts():
    """The protocol's deadlines run through the ASGI transport: no hello -> 1008; no audio -> flush, 1000."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def body(url, replica):
        out = {}
        async with connect(url) as ws:  # says nothing
            err = json.loads(await asyncio.wait_for(ws.recv(), 10))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            out["hello"] = (ws.close_code, err["code"])
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "hello", "v": 1, "subscribe": "binary", "every_frame": True}))
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(make_audio(0, 0.2).tobytes())  # 5 frames of audio, then silence on the wire
            frames, last = 0, None
            try:
                while True:
                    msg = await asyncio.wait_for(ws.recv(), 10)
                    if isinstance(msg, bytes):
                        frames += not decode_binary(msg).get("stalled", False)  # stall frames: not counted
                    else:
                        last = json.loads(msg)
            except ConnectionClosed:
                pass
            out["idle"] = (ws.close_code, last and last.get("code"), frames)
        return out

    cfg = ServeConfig(
        precision="fp32", streams_per_replica=2, server=ServerConfig(hello_timeout_s=0.5, idle_timeout_s=0.5)
    )
    out = asyncio.run(_with_replica(cfg, body))
    assert out["hello"] == (1008, "hello_timeout"), out
    assert out["idle"] == (1000, "idle_timeout", 5), out  # every received sample's frame, the tail included


def test_deployment_options_follow_the_config():
    """Capacity -> max_ongoing_requests (+1 refusal lane), autoscaling on ongoing streams, the drain time."""
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
    from stream_engine.serve.app import build_app

    fixed = build_app(ServeConfig(replicas=3, streams_per_replica=8))._bound_deployment._deployment_config
    assert fixed.max_ongoing_requests == 9 and fixed.num_replicas == 3 and fixed.autoscaling_config is None
    auto = build_app(ServeConfig(replicas=2, max_replicas=6, streams_per_replica=8, drain_s=12))
    dc = auto._bound_deployment._deployment_config
    assert dc.autoscaling_config.min_replicas == 1 and dc.autoscaling_config.max_replicas == 6
    assert dc.autoscaling_config.initial_replicas == 2 and dc.autoscaling_config.target_ongoing_requests == 6.0
    assert dc.graceful_shutdown_timeout_s == 12 and dc.max_queued_requests == 64
    with pytest.raises(ValueError):
        ServeConfig(streams_per_replica=0)


def test_cli_resolves_flags_over_the_config(tmp_path, capsys, monkeypatch):
    import argparse

    monkeypatch.delenv("MSYNC_TOKEN", raising=False)

    from stream_engine.serve import cli

    (tmp_path / "serve.json").write_text(json.dumps({"replicas": 2, "server": {"idle_timeout_s": 30}}))
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(
        [
            "--config",
            str(tmp_path / "serve.json"),
            "--replicas",
            "4",
            "--streams-per-replica",
            "12",
            "--set",
            "drain_s=5",
            "--port",
            "9000",
            "--print-config",
        ]
    )
    assert cli.run(args) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["replicas"] == 4 and cfg["streams_per_replica"] == 12 and cfg["drain_s"] == 5
    assert cfg["server"]["idle_timeout_s"] == 30 and cfg["server"]["port"] == 9000
    bad = p.parse_args(["--host", "0.0.0.0"])  # a remote bind without a token is refused before Ray starts
    assert cli.run(bad) == 2


def test_proxy_hook_closes_a_websocket_its_replica_left_open():
    """The proxy middleware: an accepted WebSocket the app returns from without a close gets 1012; one that
    was closed, refused, or left by its client gets nothing more; HTTP passes through."""
    from stream_engine.serve.proxy_hook import CloseOnReplicaLoss

    def run(app_messages, client_leaves=False, kind="websocket"):
        sent = []

        async def app(scope, receive, send):
            if client_leaves:
                await receive()
            for m in app_messages:
                await send(m)

        async def receive():
            return {"type": "websocket.disconnect", "code": 1000}

        async def send(m):
            sent.append(m)

        asyncio.run(CloseOnReplicaLoss(app)({"type": kind}, receive, send))
        return [(m["type"], m.get("code")) for m in sent]

    accept = {"type": "websocket.accept"}
    assert run([accept]) == [("websocket.accept", None), ("websocket.close", 1012)]
    assert run([accept, {"type": "websocket.close", "code": 1000}]) == [
        ("websocket.accept", None),
        ("websocket.close", 1000),
    ]
    assert run([accept], client_leaves=True) == [("websocket.accept", None)]
    assert run([{"type": "websocket.http.response.start", "status": 401}]) == [("websocket.http.response.start", None)]
    assert run([{"type": "http.response.start", "status": 200}], kind="http") == [("http.response.start", None)]
