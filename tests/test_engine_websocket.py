"""The WebSocket/HTTP server on loopback: frames out (JSON, binary), audio in, control, bad input, limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stream_engine.engine import Engine, EngineConfig
from stream_engine.outputs.serializers import decode_binary
from stream_engine.outputs.websocket import ServerConfig, WebSocketServer

from fakes import FakeRunner, speechlike, tone

SPF = 640


@contextlib.asynccontextmanager
async def serving(engine_cfg: EngineConfig = EngineConfig(), **server_kwargs):
    """An engine and its WebSocket server started as `msync stream` starts them: warmed up, then listening."""
    engine = Engine(FakeRunner(lookahead_frames=1), engine_cfg)
    server = WebSocketServer(engine, ServerConfig(port=0, **server_kwargs))
    await engine.warm_up()
    await server.start()
    engine.add_sink(server)
    async with engine:
        yield engine, server


def ws_url(server, path, **query):
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return f"ws://127.0.0.1:{server.port}{path}" + (f"?{q}" if q else "")


def run(coro, timeout_s: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def recv_json(ws, timeout_s: float = 5.0) -> dict:
    msg = await asyncio.wait_for(ws.recv(), timeout_s)
    assert isinstance(msg, str), msg
    return json.loads(msg)


async def recv_until(ws, predicate, timeout_s: float = 5.0):
    """Receive messages until one satisfies predicate(parsed); returns it."""

    async def loop():
        while True:
            msg = await ws.recv()
            parsed = decode_binary(msg) if isinstance(msg, bytes) else json.loads(msg)
            if predicate(parsed):
                return parsed

    return await asyncio.wait_for(loop(), timeout_s)


async def open_audio(server, **hello):
    ws = await connect(ws_url(server, "/audio"))
    await ws.send(
        json.dumps({"type": "hello", "v": 1, "sample_rate_hz": 16000, "channels": 1, "dtype": "int16", **hello})
    )
    ready = await recv_json(ws)
    assert ready["type"] == "ready", ready
    return ws, ready


def int16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def test_audio_in_frames_out_json_and_binary_with_a_hello():
    """A 48 kHz stereo client streams audio; a JSON and a binary subscriber each get every frame, in order."""

    async def main():
        async with serving() as (engine, server):
            js = await connect(ws_url(server, "/frames"))
            bn = await connect(ws_url(server, "/frames", format="binary"))
            hello = await recv_json(js)
            assert hello["type"] == "hello" and hello["v"] == 1 and hello["latency"]["lookahead_frames"] == 1
            assert len(hello["contours"]) == 9 and len(hello["model"]["reference_face"]) == 68
            await recv_json(bn)
            got_js, got_bn = [], []

            async def read(ws, out):  # readers keep up (a client that does not read loses stale frames)
                while len(out) < 25:
                    m = await ws.recv()
                    if isinstance(m, bytes):
                        out.append(decode_binary(m))
                    elif json.loads(m)["type"] == "frame":
                        out.append(json.loads(m))

            readers = [asyncio.create_task(read(js, got_js)), asyncio.create_task(read(bn, got_bn))]
            audio_ws, ready = await open_audio(server, sample_rate_hz=48000, channels=2, stream="alice")
            assert ready["stream"] == "alice" and ready["input_format"]["channels"] == 2
            audio = speechlike(48000)  # 1 s at 48 kHz
            stereo = np.repeat(audio[:, None], 2, axis=1)
            for i in range(0, 48000, 960):
                await audio_ws.send(int16(stereo[i : i + 960]))
            await audio_ws.send(json.dumps({"type": "end"}))
            assert (await recv_json(audio_ws))["type"] == "ended"
            await asyncio.wait_for(asyncio.gather(*readers), 5)
            for ws in (js, bn, audio_ws):
                await ws.close()
            return got_js, got_bn

    got_js, got_bn = run(main())
    assert [m["seq"] for m in got_js] == list(range(25)) == [m["seq"] for m in got_bn]
    assert all(m["stream"] == "alice" for m in got_js)
    f = got_js[3]
    assert len(f["landmarks"]) == 68 and f["pts_ms"] == 120.0 and f["signals"]["head"]["yaw_deg"] is not None
    t = f["t"]
    assert t["audio_ready_ns"] <= t["infer_start_ns"] <= t["infer_end_ns"] <= t["publish_ns"] <= t["sent_ns"]
    np.testing.assert_allclose(np.array(got_js[10]["landmarks"]), got_bn[10]["landmarks"], atol=1e-5)


def test_audio_client_can_subscribe_to_its_own_frames_and_barge_in():
    async def main():
        async with serving() as (engine, server):
            ws, _ = await open_audio(server, subscribe="json", stream="bot")
            for i in range(10):
                await ws.send(int16(tone(SPF, start_sample=i * SPF)))
            first = await recv_until(ws, lambda m: m.get("type") == "frame" and m["seq"] == 5)
            await ws.send(int16(tone(SPF * 3)))  # a partial utterance, then barge-in
            await ws.send(json.dumps({"type": "reset"}))
            ack = await recv_until(ws, lambda m: m.get("type") == "reset_ok")
            for _ in range(4):
                await ws.send(int16(tone(SPF)))
            after = await recv_until(ws, lambda m: m.get("type") == "frame" and m["epoch"] == 1)
            await ws.close()
            return first, ack, after

    first, ack, after = run(main())
    assert first["stream"] == "bot" and ack["epoch"] == 1
    assert after["index"] == 0 and after["seq"] > first["seq"]


def test_changing_the_sample_rate_mid_stream():
    """A new declared format mid-stream is resampled from then on: 0.5 s at 44.1 kHz + 0.5 s at 8 kHz give
    exactly 25 frames, nothing lost or doubled; an impossible rate is refused and the stream carries on."""

    async def main():
        frames = []

        async def until(ws, predicate):
            # Keep every frame that arrives while waiting for a control reply (how early frames come depends
            # on the machine's load).
            async for m in ws:
                if isinstance(m, bytes):
                    frames.append(decode_binary(m))
                    continue
                msg = json.loads(m)
                if predicate(msg):
                    return msg
            raise AssertionError("connection closed before the expected message")

        async with serving() as (engine, server):
            ws, _ = await open_audio(server, subscribe="binary", sample_rate_hz=44100, dtype="float32")
            await ws.send(np.asarray(tone(44100 // 2, sample_rate_hz=44100), "<f4").tobytes())
            await ws.send(json.dumps({"type": "config", "sample_rate_hz": 8000, "dtype": "int16"}))
            ok = await until(ws, lambda m: m.get("type") == "config_ok")
            await ws.send(int16(tone(4000, sample_rate_hz=8000)))
            await ws.send(json.dumps({"type": "config", "sample_rate_hz": 1}))
            bad = await until(ws, lambda m: m.get("type") == "error")
            await ws.send(json.dumps({"type": "end"}))
            async for m in ws:
                if isinstance(m, bytes):
                    frames.append(decode_binary(m))
            return ok, bad, frames

    ok, bad, frames = run(main())
    assert ok["input_format"] == {"sample_rate_hz": 8000, "channels": 1, "dtype": "int16"}
    assert bad["code"] == "bad_format" and not bad["fatal"]
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(set(seqs))  # nothing doubled or out of order
    # 0.5 s at 44.1 kHz + 0.5 s at 8 kHz = 1 s = 25 frames produced (seq 0..24). The last frame always reaches
    # the client; earlier ones could be dropped by the latest-frame-wins policy on a very loaded machine.
    assert seqs[-1] == 24
    assert len(frames) >= 20


def test_bad_audio_and_malformed_messages_give_clear_errors_and_the_stream_carries_on():
    async def main():
        async with serving(max_message_bytes=64 * 1024) as (engine, server):
            other, _ = await open_audio(server, subscribe="json", stream="other")
            ws, _ = await open_audio(server, dtype="float32", stream="victim")
            replies = {}
            nan = np.asarray(tone(SPF), "<f4")
            nan[3] = np.nan
            for name, message in (
                ("nan", nan.tobytes()),
                ("inf", np.full(16, np.inf, "<f4").tobytes()),
                ("partial", b"\0\0\0\0\0\0"),
                ("empty", b""),
                ("json", "{nope"),
                ("unknown", json.dumps({"type": "dance"})),
                ("notobj", "[1, 2]"),
            ):
                await ws.send(message)
                replies[name] = await recv_json(ws)
            await ws.send(np.asarray(tone(SPF * 3), "<f4").tobytes())  # still usable
            assert engine.core.epoch("victim") >= 1
            await ws.send(b"\0" * (64 * 1024 + 4))  # over the message size limit: this connection closes
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            for _ in range(6):  # the other stream is unaffected
                await other.send(int16(tone(SPF)))
            frame = await recv_until(other, lambda m: m.get("type") == "frame")
            await asyncio.sleep(0.05)
            sessions = set(engine.sessions)
            await other.close()
            return replies, closed.value.rcvd.code, frame, sessions

    replies, close_code, frame, sessions = run(main())
    assert (
        replies["nan"]["code"] == "bad_audio"
        and "NaN" in replies["nan"]["message"]
        and "reset" in replies["nan"]["message"]
    )
    assert replies["inf"]["code"] == "bad_audio"
    assert replies["partial"]["code"] == "bad_audio" and "whole number" in replies["partial"]["message"]
    assert replies["empty"]["code"] == "empty_chunk"
    assert replies["json"]["code"] == "bad_json" and replies["unknown"]["code"] == "unknown_type"
    assert replies["notobj"]["code"] == "bad_message"
    assert not any(r["fatal"] for r in replies.values())
    assert close_code == 1009 and frame["stream"] == "other"
    assert sessions == {"other"}  # the closed connection's stream is gone


def test_bad_hellos_are_refused_with_a_reason():
    async def main():
        async with serving(hello_timeout_s=0.3) as (engine, server):
            results = []
            for hello in (
                "not json",
                json.dumps({"type": "hello", "sample_rate_hz": 100}),
                json.dumps({"type": "hello", "channels": 99}),
                json.dumps({"type": "hello", "dtype": "int8"}),
                json.dumps({"type": "hello", "v": 9}),
                json.dumps({"type": "audio"}),
                json.dumps({"type": "hello", "reference_face": [[0, 0]]}),
            ):
                async with connect(ws_url(server, "/audio")) as ws:
                    await ws.send(hello)
                    err = await recv_json(ws)
                    with pytest.raises(ConnectionClosed):
                        await asyncio.wait_for(ws.recv(), 5)
                    results.append((err, ws.close_code))
            async with connect(ws_url(server, "/audio")) as ws:  # silent client: timed out
                err = await recv_json(ws)
                results.append((err, None))
            return results, dict(engine.sessions)

    results, sessions = run(main())
    for err, code in results[:-1]:
        assert err["code"] == "bad_hello" and err["fatal"] and code == 1008
    assert "sample_rate_hz" in results[1][0]["message"] and "channels" in results[2][0]["message"]
    assert results[-1][0]["code"] == "hello_timeout"
    assert sessions == {}


def test_token_origin_and_connection_limits():
    async def main():
        async with serving(token="s3cret", max_clients=2) as (engine, server):
            statuses = []
            for url, headers in (
                (ws_url(server, "/frames"), None),
                (ws_url(server, "/frames", token="wrong"), None),
                (ws_url(server, "/frames", token="s3cret"), {"Origin": "http://evil.example"}),
                (ws_url(server, "/nope", token="s3cret"), None),
            ):
                with pytest.raises(InvalidStatus) as info:
                    async with connect(url, additional_headers=headers):
                        pass
                statuses.append(info.value.response.status_code)
            own_origin = {"Origin": f"http://127.0.0.1:{server.port}"}
            a = await connect(ws_url(server, "/frames", token="s3cret"), additional_headers=own_origin)
            b = await connect(ws_url(server, "/frames"), additional_headers={"Authorization": "Bearer s3cret"})
            with pytest.raises(InvalidStatus) as info:
                await connect(ws_url(server, "/frames", token="s3cret"))
            statuses.append(info.value.response.status_code)
            await a.close()
            await b.close()
            return statuses, dict(server.refused)

    statuses, refused = run(main())
    assert statuses == [401, 401, 403, 404, 503]
    # counted for the operator (`/health` "refused_requests"), one line each in the log at info
    assert refused == {"missing or wrong token": 2, "origin not allowed": 1, "too many clients": 1}


def test_engine_full_closes_new_audio_clients_with_try_again():
    async def main():
        async with serving(EngineConfig(max_streams=1)) as (engine, server):
            first, _ = await open_audio(server)
            async with connect(ws_url(server, "/audio")) as ws:
                await ws.send(json.dumps({"type": "hello"}))
                err = await recv_json(ws)
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                code = ws.close_code
            dup = await connect(ws_url(server, "/audio"))
            await first.close()
            await asyncio.sleep(0.05)
            await dup.send(json.dumps({"type": "hello", "stream": "x"}))
            ok = await recv_json(dup)
            await dup.close()
            return err, code, ok, dict(server.closed_by_server)

    err, code, ok, closed = run(main())
    assert err["code"] == "unavailable" and code == 1013 and ok["type"] == "ready"
    assert closed == {1013: 1}  # counted for the operator (`/health` "closed_by_server")


def test_a_slow_client_loses_stale_frames_and_never_delays_others():
    """A subscriber that never reads is bounded by its small queue; a reading subscriber gets every frame."""

    async def main():
        async with serving(client_queue_frames=3) as (engine, server):
            slow = await connect(ws_url(server, "/frames"), max_queue=1)  # never reads after the hello
            fast = await connect(ws_url(server, "/frames", format="binary"))
            await recv_json(fast)
            slow_port = slow.local_address[1]
            slow_client = next(c for c in server._clients if c.ws.remote_address[1] == slow_port)
            real_send = slow_client.ws.send

            async def crawling_send(message):  # a client on a bad link: each send takes 200 ms
                await asyncio.sleep(0.2)
                await real_send(message)

            slow_client.ws.send = crawling_send
            audio_ws, _ = await open_audio(server, stream="talk")
            frames = []

            async def read_fast():
                while len(frames) < 150:
                    m = await fast.recv()
                    if isinstance(m, bytes):
                        frames.append(decode_binary(m))

            reader = asyncio.create_task(read_fast())
            for i in range(151):
                await audio_ws.send(int16(tone(SPF, start_sample=i * SPF)))
                await asyncio.sleep(0.002)
            await asyncio.wait_for(reader, 10)
            queued = [len(c.queue) for c in server._clients]
            slow_stats = (slow_client.sent, slow_client.queue.dropped)
            slow.transport.abort()  # it cannot take part in a closing handshake: it does not read
            for ws in (fast, audio_ws):
                await ws.close()
            return frames, queued, slow_stats

    frames, queued, (slow_sent, slow_dropped) = run(main())
    assert [f["seq"] for f in frames] == list(range(150))  # the fast client misses nothing
    assert max(queued) <= 3 and slow_dropped > 100 and slow_sent < 30
    lat_ms = [(f["t"]["sent_ns"] - f["t"]["audio_ready_ns"]) / 1e6 for f in frames]
    assert np.median(lat_ms) < 40.0  # not held up by the slow client (loose bound: shared CI cores)


def test_reset_from_a_frames_client_and_stale_frames_are_dropped():
    """Only a client with the admin token may reset a stream it did not open; a plain one gets `forbidden`."""

    async def main():
        async with serving(admin_token="boss") as (engine, server):
            ctl = await connect(ws_url(server, "/frames", token="boss"))
            await recv_json(ctl)
            plain = await connect(ws_url(server, "/frames", streams="__none__"))
            await recv_json(plain)
            audio_ws, _ = await open_audio(server, stream="agent")
            await audio_ws.send(int16(tone(SPF * 4)))
            await recv_until(ctl, lambda m: m.get("type") == "frame" and m["seq"] == 2)
            await plain.send(json.dumps({"type": "reset", "stream": "agent"}))
            refused = await recv_json(plain)
            assert refused["code"] == "forbidden" and not refused["fatal"] and engine.core.epoch("agent") == 0
            await plain.close()
            await ctl.send(json.dumps({"type": "reset", "stream": "agent"}))
            ack = await recv_until(ctl, lambda m: m.get("type") == "reset_ok")
            await ctl.send(json.dumps({"type": "reset", "stream": "ghost"}))
            err = await recv_until(ctl, lambda m: m.get("type") == "error")
            await ctl.send(json.dumps({"type": "subscribe", "streams": ["other"], "format": "binary"}))
            sub = await recv_until(ctl, lambda m: m.get("type") == "subscribed")
            await ctl.send(json.dumps({"type": "ping"}))
            pong = await recv_until(ctl, lambda m: m.get("type") == "pong")
            for ws in (ctl, audio_ws):
                await ws.close()
            return ack, err, sub, pong

    ack, err, sub, pong = run(main())
    assert ack["epoch"] == 1 and err["code"] == "unknown_stream"
    assert sub["format"] == "binary" and sub["streams"] == ["other"] and pong["t_ns"] > 0


def test_http_viewer_health_and_contract_on_the_same_port():
    async def main():
        async with serving() as (engine, server):

            def get(path):
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
                    return r.status, r.headers["Content-Type"], r.read()

            results = {p: await asyncio.to_thread(get, p) for p in ("/", "/viewer.js", "/health", "/contract")}
            try:
                await asyncio.to_thread(get, "/missing")
            except urllib.error.HTTPError as exc:
                results["/missing"] = exc.code
            return results

    r = run(main())
    assert r["/"][0] == 200 and r["/"][1].startswith("text/html") and b"<canvas" in r["/"][2]
    assert r["/viewer.js"][1].startswith("text/javascript")
    health = json.loads(r["/health"][2])
    assert health["algorithmic_latency_ms"] == 80.0 and health["streams"] == []
    assert json.loads(r["/contract"][2])["lookahead_frames"] == 1
    assert r["/missing"] == 404


def test_nothing_leaks_after_many_connections():
    async def main():
        async with serving() as (engine, server):
            for i in range(20):
                ws, _ = await open_audio(server, subscribe="json")
                await ws.send(int16(tone(SPF * 2)))
                if i % 2:
                    await ws.close()
                else:  # drop the TCP connection without a closing handshake
                    ws.transport.abort()
            fr = await connect(ws_url(server, "/frames"))
            await fr.close()
            for _ in range(100):
                if not engine.sessions and not server._clients and server._connections == 0:
                    break
                await asyncio.sleep(0.02)
            return (
                dict(engine.sessions),
                set(server._clients),
                server._connections,
                server._by_stream,
                server._every_stream,
            )

    assert run(main()) == ({}, set(), 0, {}, set())


def test_a_resubscribed_client_gets_only_its_new_streams():
    """Subscriptions are indexed by stream: after `subscribe` moves a client from stream a to b it gets b's
    frames and no more of a's; a client of every stream and one of both keep getting both, each frame once."""

    async def main():
        async with serving() as (engine, server):
            mover = await connect(ws_url(server, "/frames", streams="a", format="binary"))
            both = await connect(ws_url(server, "/frames", streams="a,b", format="binary"))
            every = await connect(ws_url(server, "/frames"))
            for ws in (mover, both, every):
                await recv_json(ws)
            a, _ = await open_audio(server, stream="a")
            b, _ = await open_audio(server, stream="b")
            await a.send(int16(tone(SPF * 4)))
            first = await recv_until(mover, lambda m: m.get("type") == "frame")
            await mover.send(json.dumps({"type": "subscribe", "streams": ["b"], "format": "binary"}))
            await recv_until(mover, lambda m: m.get("type") == "subscribed")
            await a.send(int16(tone(SPF * 4)))
            await b.send(int16(tone(SPF * 4)))
            got: dict[str, list] = {"mover": [], "both": [], "every": []}
            for name, ws in (("mover", mover), ("both", both), ("every", every)):
                with contextlib.suppress(asyncio.TimeoutError):
                    while True:
                        msg = await asyncio.wait_for(ws.recv(), 0.5)
                        m = decode_binary(msg) if isinstance(msg, bytes) else json.loads(msg)
                        if m.get("type") == "frame":
                            got[name].append((m["stream"], m["seq"]))
            for ws in (mover, both, every, a, b):
                await ws.close()
            return first, got

    first, got = run(main())
    assert first["stream"] == "a"
    assert got["mover"] and {s for s, _ in got["mover"]} == {"b"}
    for name in ("both", "every"):
        assert {s for s, _ in got[name]} == {"a", "b"}
        assert len(got[name]) == len(set(got[name]))  # each frame once


def test_binding_a_public_address_needs_an_explicit_opt_in():
    with pytest.raises(ValueError, match="loopback"):
        ServerConfig(host="0.0.0.0")
    assert ServerConfig(host="0.0.0.0", allow_remote=True, token="t").host == "0.0.0.0"
