"""One bad client cannot hurt the server (issue 11), over real loopback sockets: the ws_repro reproductions,
reaping of idle and non-draining clients, latest-wins end to end, fairness, bounded memory, ownership and
exposure."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

import numpy as np
import pytest
from test_engine_websocket import int16, open_audio, recv_json, run, serving, ws_url
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stream_engine.engine import Engine, EngineConfig
from stream_engine.outputs.serializers import decode_binary
from stream_engine.outputs.websocket import ServerConfig, WebSocketServer, check_exposure, resolve_tokens

from fakes import FakeRunner, tone

SPF = 640
HUGE = '{"type":"ping","n":' + "1" * 5000 + "}"
DEEP = "[" * 100000 + "]" * 100000


async def exchange(server, path, messages, hello=None, wait=0.5):
    """ws_repro.py's exchange: replies until close or `wait` s of silence -> "error:X+...+close:N|(open)"."""
    replies, close = [], None
    url = ws_url(server, path, **({"streams": "__none__"} if path == "/frames" else {}))
    async with connect(url, max_size=2**24, ping_interval=None) as ws:
        if path == "/frames":
            await ws.recv()
        if hello is not None:
            await ws.send(json.dumps(hello))
            assert json.loads(await ws.recv())["type"] == "ready"
        try:
            for m in messages:
                await ws.send(m)
            while True:
                r = json.loads(await asyncio.wait_for(ws.recv(), wait))
                replies.append(f"error:{r['code']}" if r["type"] == "error" else r["type"])
        except asyncio.TimeoutError:
            pass
        except ConnectionClosed as exc:
            close = exc.rcvd.code if exc.rcvd else "abnormal"
    return "+".join(replies + [f"close:{close}" if close is not None else "(open)"])


REPRO = {  # ../shared/tools/ws_repro.py, each with the reply PROTOCOL.md documents
    "hello_dtype_list": ("/audio", None, ['{"type":"hello","dtype":[]}'], "error:bad_hello+close:1008"),
    "hello_subscribe_int": ("/audio", None, ['{"type":"hello","subscribe":5}'], "error:bad_hello+close:1008"),
    "hello_stream_empty": ("/audio", None, ['{"type":"hello","stream":""}'], "error:bad_hello+close:1008"),
    "frames_deep_json": ("/frames", None, [DEEP], "error:bad_json+(open)"),
    "frames_huge_int": ("/frames", None, [HUGE], "error:bad_json+(open)"),
    "frames_subscribe_fmt": ("/frames", None, ['{"type":"subscribe","format":5}'], "error:bad_message+(open)"),
    "audio_config_dtype": ("/audio", {"type": "hello"}, ['{"type":"config","dtype":[]}'], "error:bad_format+(open)"),
    "audio_huge_int": ("/audio", {"type": "hello"}, [HUGE], "error:bad_json+(open)"),
}


@pytest.mark.parametrize("name", sorted(REPRO))
def test_ws_repro_reproduction_gets_the_documented_reply(name):
    path, hello, messages, expected = REPRO[name]

    async def main():
        async with serving() as (engine, server):
            got = await exchange(server, path, messages, hello)
            for _ in range(200):  # the closed connection's stream goes with it
                if not engine.sessions:
                    break
                await asyncio.sleep(0.01)
            return got, dict(engine.sessions)

    got, sessions = run(main())
    assert got == expected and sessions == {}


def test_ws_repro_cross_reset_is_forbidden():
    async def main():
        async with serving() as (engine, server):
            victim, _ = await open_audio(server, stream="victim")
            await victim.send(b"\0" * 1280)
            got = await exchange(
                server, "/frames", ['{"type":"reset","stream":"victim"}', '{"type":"flush","stream":"victim"}']
            )
            epoch = engine.core.epoch("victim")
            await victim.close()
            return got, epoch

    got, epoch = run(main())
    assert got == "error:forbidden+error:forbidden+(open)" and epoch == 0


def test_an_idle_audio_stream_is_flushed_to_rest_and_closed_and_its_slot_reused():
    """No audio for idle_timeout_s: every received sample's frame (the tail too) reaches the subscriber, then
    `idle_timeout` and close 1000; the same stream id opens again at once."""

    async def main():
        async with serving(idle_timeout_s=0.4) as (engine, server):
            ws, _ = await open_audio(server, stream="mic", subscribe="json")
            await ws.send(int16(tone(SPF * 7 + 5)))  # 8 frames' worth; the last 1 (L) need the flush
            t0 = time.monotonic()
            frames, last = [], None
            try:
                async for m in ws:
                    msg = json.loads(m)
                    if msg["type"] == "frame":
                        frames.append(msg)
                    elif msg["type"] == "error":
                        last = msg
            except ConnectionClosed:
                pass
            took = time.monotonic() - t0
            again, _ = await open_audio(server, stream="mic")
            await again.close()
            return frames, last, ws.close_code, took, engine.stats.frames

    frames, last, code, took, published = run(main())
    assert [f["index"] for f in frames] == list(range(8)) and published == 8
    assert last["code"] == "idle_timeout" and last["fatal"] and code == 1000 and 0.3 < took < 5


@pytest.mark.parametrize("n,yield_between", [(12582, True), (16000 * 6 + 123, False)])
def test_end_delivers_every_frame_then_ended(n, yield_between):
    """An `every_frame` subscriber sending faster than real time gets every frame of its audio, the
    look-ahead tail included, then `ended` and close 1000 (../shared/cases/cpp-cli-drops-last-frames:
    12,582 samples = 20 frames)."""

    async def main():
        async with serving() as (engine, server):
            ws, _ = await open_audio(server, subscribe="binary", every_frame=True)
            frames, tail = [], []

            async def read():
                async for m in ws:
                    if isinstance(m, bytes):
                        frames.append(decode_binary(m)["index"])
                    else:
                        tail.append(json.loads(m)["type"])

            reader = asyncio.create_task(read())
            for i in range(0, n, 320):
                await ws.send(int16(tone(min(320, n - i), start_sample=i)))
                if yield_between:
                    await asyncio.sleep(0)
                # else: the reader runs only when back-pressure (audio or unsent frames) blocks the sender
            await ws.send(json.dumps({"type": "end"}))
            await asyncio.wait_for(reader, 5)
            return frames, tail, ws.close_code

    frames, tail, code = run(main())
    assert frames == list(range(-(-n // SPF))) and tail[-1] == "ended" and code == 1000


def raw_frames_client(port: int, rcvbuf: int = 4096) -> socket.socket:
    """A WebSocket /frames client on a raw socket that never reads after the handshake (nor answers pings)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(
        (
            f"GET /frames HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0]
    return s


def test_never_reading_clients_are_dropped_and_their_slots_reused():
    """Dead readers fill max_clients; within write_timeout_s of frames flowing they are dropped and a new
    client is accepted (the lockout probe, scaled down)."""

    async def main():
        async with serving(max_clients=5, write_timeout_s=1.0) as (engine, server):
            socks = [await asyncio.to_thread(raw_frames_client, server.port) for _ in range(4)]
            ws, _ = await open_audio(server, stream="talk")  # the 5th connection
            with pytest.raises(InvalidStatus):
                await connect(ws_url(server, "/frames"))
            t0 = time.monotonic()
            k = 0
            while server._connections > 1 and time.monotonic() - t0 < 8:
                await ws.send(int16(tone(SPF, start_sample=k * SPF)))
                k += 1
                await asyncio.sleep(0.04)
            dropped_after = time.monotonic() - t0
            fresh = await connect(ws_url(server, "/frames"))
            hello = await recv_json(fresh)
            await fresh.close()
            await ws.close()
            for s in socks:
                s.close()
            return dropped_after, hello, server.dropped_clients

    dropped_after, hello, dropped = run(main())
    assert dropped == 4 and dropped_after < 4.0 and hello["type"] == "hello"


def test_a_slow_reader_gets_fresh_frames_with_seq_gaps():
    """Latest-wins end to end: a client reading 5 messages/s while a stream runs in real time gets frames
    a few frames old at most (its send window is acknowledged by ping/pong), with seq gaps."""

    async def main():
        async with serving(client_window_frames=2) as (engine, server):
            slow = await connect(ws_url(server, "/frames", format="binary"), max_queue=2)
            await recv_json(slow)
            ws, _ = await open_audio(server, stream="live")

            async def talk():
                t0 = time.monotonic()
                for k in range(100):  # 4 s in real time
                    await ws.send(int16(tone(SPF, start_sample=k * SPF)))
                    await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.04 - time.monotonic()))

            talker = asyncio.create_task(talk())
            got = []
            while not talker.done():
                m = await slow.recv()
                if isinstance(m, bytes):
                    f = decode_binary(m)
                    got.append((f["seq"], (engine.clock.now_ns() - f["t"]["publish_ns"]) / 1e6))
                await asyncio.sleep(0.2)
            await talker
            await ws.close()
            await slow.close()
            return got

    got = run(main())
    seqs = [s for s, _ in got]
    ages = [a for _, a in got[3:]]
    # Unacknowledged frames are at most the window (2), and the client library answers pings as it parses, so
    # a frame waits behind at most ~window + its own queue (2) + 1 reads of 200 ms: about 1 s here, against
    # tens of seconds when the kernel buffers could fill.
    assert len(got) >= 10 and max(np.diff(seqs)) > 1
    assert np.median(ages) < 1200 and max(ages) < 2000


def test_a_reader_that_keeps_up_is_pinged_once_per_half_window_and_gets_every_frame():
    """The send window is acknowledged by a ping once half of it (4 of 8 frames) is unread, not behind every
    frame: a client that keeps up costs a quarter of the pings, and still gets every frame, in order."""

    async def main():
        async with serving(client_window_frames=8, client_window_target_ms=0) as (engine, server):
            ws, _ = await open_audio(server, stream="s", subscribe="binary")
            seqs: list[int] = []

            async def read():
                while True:
                    m = await ws.recv()
                    if isinstance(m, bytes):
                        seqs.append(decode_binary(m)["seq"])

            reader = asyncio.create_task(read())
            for k in range(80):
                await ws.send(int16(tone(SPF, start_sample=k * SPF)))
                await asyncio.sleep(0.01)
            for _ in range(200):
                if len(seqs) >= 79:  # the fake model's look-ahead holds back the last frame
                    break
                await asyncio.sleep(0.01)
            (client,) = server._clients
            window = client.window
            reader.cancel()
            await ws.close()
            return seqs, window.sent, window.pings

    seqs, sent, pings = run(main())
    assert len(seqs) >= 79 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert sent >= 79 and sent // 4 - 2 <= pings <= sent // 4 + 1


def test_audio_handled_as_it_arrives_keeps_message_order_and_errors_reach_only_the_sender():
    """Binary audio is handled in the connection's callback (no task wake-up per message) while its handler
    waits; a burst that mixes audio, a bad message and a control message is answered in order (the error
    before the pong, the reset between the audio before and after it), and the other stream is untouched."""

    async def main():
        async with serving() as (engine, server):
            other, _ = await open_audio(server, stream="other", subscribe="binary")
            ws, _ = await open_audio(server, stream="s", subscribe="binary")
            chunk = int16(tone(SPF))
            for _ in range(30):  # a real-time-like sender: each message finds the handler waiting
                await ws.send(chunk)
                await asyncio.sleep(0.005)
            fast = server.fast_ingest_messages
            burst = [chunk] * 5 + [b"\0\0\0"] + [chunk] * 5 + ['{"type": "ping"}'] + [chunk] * 5
            for m in burst:  # sent back to back, no reply awaited
                await ws.send(m)
            texts, epochs = [], []
            while "pong" not in texts:
                m = await asyncio.wait_for(ws.recv(), 5)
                if isinstance(m, bytes):
                    epochs.append(decode_binary(m)["epoch"])
                else:
                    r = json.loads(m)
                    kind = f"event:{r['event']}" if r["type"] == "stream" else r["type"]  # engine events
                    texts.append(f"error:{r['code']}" if r["type"] == "error" else kind)
            for _ in range(5):
                await other.send(chunk)
            other_msgs = []
            while len([m for m in other_msgs if isinstance(m, bytes)]) < 3:
                other_msgs.append(await asyncio.wait_for(other.recv(), 5))
            epoch = engine.core.epoch("s")
            await ws.close()
            await other.close()
            return fast, texts, epochs, epoch, other_msgs

    fast, texts, epochs, epoch, other_msgs = run(main())
    assert fast >= 25  # most paced messages took the callback path
    # the replies in order; the engine's events to the stream's subscribers may come before or after them
    replies = [t for t in texts if not t.startswith("event:")]
    assert replies == ["error:bad_audio", "pong"] and "event:reset" in texts and epoch == 1
    assert epochs == sorted(epochs) and epochs[0] == 0  # epoch 0 frames, then only the reset's epoch 1
    assert all(isinstance(m, bytes) for m in other_msgs)  # no error reached the other client


def test_a_flooding_sender_is_still_held_to_the_audio_budget_when_audio_is_handled_as_it_arrives():
    """Back-pressure on the callback path: a client sending as fast as it can to a model that runs at half real
    time never has more than `audio_max_pending_s` (plus the message that crossed it) queued in the engine;
    the messages over the budget wait for the handler, which stops reading until there is room."""

    async def main():
        engine = Engine(FakeRunner(lookahead_frames=1, cost_us_per_call=20000), EngineConfig())
        server = WebSocketServer(engine, ServerConfig(port=0, audio_max_pending_s=0.5))
        await server.start()
        engine.add_sink(server)
        async with engine:
            ws, _ = await open_audio(server, stream="flood")
            chunk = int16(tone(SPF))
            most = 0
            stop = asyncio.Event()

            async def watch():
                nonlocal most
                while not stop.is_set():
                    if "flood" in engine.sessions:
                        most = max(most, engine.core.pending_samples("flood"))
                    await asyncio.sleep(0.002)

            watcher = asyncio.create_task(watch())
            sent = 0

            async def flood():
                nonlocal sent
                while True:  # as fast as the server lets the socket drain
                    await ws.send(chunk)
                    sent += 1

            sender = asyncio.create_task(flood())
            await asyncio.sleep(1.5)
            sender.cancel()
            stop.set()
            await asyncio.gather(watcher, sender, return_exceptions=True)
            fast = server.fast_ingest_messages
            ws.transport.abort()  # leave without draining what the socket still holds
        await server.aclose()
        return most, sent, fast

    most, sent, fast = run(main())
    assert sent > 40 and fast > 0  # 1.5 s at half real time steps ~0.75 s of audio; the rest waited
    assert most <= int(0.5 * 16000) + SPF


def test_pipelined_messages_yield_to_other_connections_and_errors_close_the_offender():
    async def main():
        async with serving(messages_per_turn=8, max_client_errors=50) as (engine, server):
            turns = 0
            stop = asyncio.Event()

            async def ticker():
                nonlocal turns
                while not stop.is_set():
                    turns += 1
                    await asyncio.sleep(0)

            t = asyncio.create_task(ticker())
            ws = await connect(ws_url(server, "/frames", streams="__none__"), max_queue=None)
            await recv_json(ws)
            n = 800
            await asyncio.gather(*(ws.send('{"type":"ping"}') for _ in range(n)))
            pongs = 0
            while pongs < n:
                pongs += json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong"
            turns_during = turns
            for _ in range(60):
                await ws.send("not json")
            replies = []
            try:
                async for m in ws:
                    replies.append(json.loads(m)["code"])
            except ConnectionClosed:
                pass
            stop.set()
            await t
            return turns_during, replies, ws.close_code

    turns, replies, code = run(main())
    assert turns >= 800 // 8 // 2  # the ticker ran between batches of 8 messages
    assert replies == ["bad_json"] * 50 + ["too_many_errors"] and code == 1008


def test_audio_messages_are_capped_by_the_audio_budget_and_a_lost_connection_frees_the_stream_at_once():
    async def main():
        engine = Engine(FakeRunner(lookahead_frames=1, cost_us_per_call=20000), EngineConfig())
        server = WebSocketServer(engine, ServerConfig(port=0, audio_max_pending_s=1.0))
        await server.start()
        engine.add_sink(server)
        async with engine:
            big, ready = await open_audio(server, sample_rate_hz=48000, stream="big")
            assert ready["max_message_bytes"] == 96000
            await big.send(b"\0" * 96002)  # over 1 s of 48 kHz int16: closed with 1009, stream gone
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(big.recv(), 5)
            code = big.close_code
            slow, _ = await open_audio(server, stream="slow")  # each 40 ms step costs 20 ms: 2x real time
            for _ in range(3):
                await slow.send(int16(tone(16000)))  # the third waits on back-pressure
            await asyncio.sleep(0.1)
            pending = engine.core.pending_samples("slow")
            slow.transport.abort()
            t0 = time.monotonic()
            while "slow" in engine.sessions and time.monotonic() - t0 < 5:
                await asyncio.sleep(0.005)
            gone_after = time.monotonic() - t0
        return code, pending, gone_after

    code, pending, gone_after = run(main())
    assert code == 1009 and pending > 16000 and gone_after < 0.3


def test_remote_binding_needs_a_token_and_tokens_come_from_env_or_file(tmp_path):
    remote = ServerConfig(host="0.0.0.0", allow_remote=True)
    with pytest.raises(ValueError, match="token"):
        check_exposure(remote)
    check_exposure(ServerConfig(host="0.0.0.0", allow_remote=True, insecure=True))
    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert resolve_tokens(ServerConfig(token_file=str(f)), {}).token == "from-file"
    assert resolve_tokens(ServerConfig(), {"MSYNC_TOKEN": "from-env"}).token == "from-env"
    check_exposure(resolve_tokens(remote, {"MSYNC_TOKEN": "t"}))
    f.write_text("")
    with pytest.raises(ValueError, match="empty"):
        resolve_tokens(ServerConfig(token_file=str(f)), {})
    with pytest.raises(ValueError):
        WebSocketServer(None, remote)


def http_get(port: int, path: str, host: str, extra: str = "Connection: close") -> int:
    """Status of a GET with this exact Host header (blocking: run it in a thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n\r\n".encode())
        return int(s.recv(64).split()[1])


def test_loopback_server_refuses_foreign_host_headers():
    async def main():
        async with serving() as (engine, server):
            out = {}
            for host in (
                f"127.0.0.1:{server.port}",
                f"localhost:{server.port}",
                f"[::1]:{server.port}",
                f"evil.example:{server.port}",
                "",
                "bad[host",
            ):
                out[host] = await asyncio.to_thread(http_get, server.port, "/health", host)
            with pytest.raises(InvalidStatus) as info:
                await connect(
                    ws_url(server, "/frames"),
                    additional_headers={"Origin": "http://evil.example", "Host": "evil.example"},
                )
            out["ws_repeated_host"] = info.value.response.status_code
            out["ws_foreign_host"] = await asyncio.to_thread(  # the upgrade of a page that rebound its name
                http_get,
                server.port,
                "/frames",
                "evil.example",
                "Origin: http://evil.example\r\nUpgrade: websocket"
                "\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            )
            return out

    out = run(main())
    assert [out[k] for k in list(out)[:3]] == [200, 200, 200]
    assert [out[k] for k in list(out)[3:]] == [403, 403, 403, 400, 403]


def test_token_flags_reach_the_server_config():
    import argparse

    from stream_engine.stream import add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--token-file", "/run/secrets/msync", "--insecure"]))
    assert cfg.server.token_file == "/run/secrets/msync" and cfg.server.insecure and cfg.server.token == ""


class _QueueSocket:
    """The receiving half of a connection: `recv` returns what was put, cancel-safe like websockets'."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    async def recv(self):
        return await self.queue.get()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="RecvDeadline needs Task.uncancel (Python 3.11+)")
def test_recv_deadline_arms_one_timer_per_deadline_and_passes_other_cancellations_on():
    """The idle deadline without a timer per message: messages that keep moving the deadline later never time
    out and schedule only the timers that fired early; a passed deadline returns None (and a later message
    is still there); a cancellation from elsewhere is not mistaken for the deadline."""
    from stream_engine.clock import MonotonicClock
    from stream_engine.outputs.websocket import RecvDeadline

    async def main():
        clock = MonotonicClock()
        last = [clock.now_ns()]
        ws = _QueueSocket()
        loop = asyncio.get_running_loop()
        scheduled = 0
        call_later = loop.call_later

        def counting_call_later(delay, callback, *args, **kwargs):
            nonlocal scheduled
            scheduled += getattr(callback, "__name__", "") == "_on_timer"  # the watchdog's, not asyncio.sleep's
            return call_later(delay, callback, *args, **kwargs)

        loop.call_later = counting_call_later  # type: ignore[method-assign]
        watchdog = RecvDeadline(lambda: last[0] + 100_000_000, clock)  # 100 ms after the last message
        got = []
        for k in range(30):  # 0.6 s of messages every 20 ms: the deadline keeps moving
            loop.call_soon(ws.queue.put_nowait, k)
            got.append(await watchdog.recv(ws))
            last[0] = clock.now_ns()
            await asyncio.sleep(0.02)
        armed = scheduled
        t0 = time.monotonic()
        timed_out = await watchdog.recv(ws)  # nothing comes: None after ~100 ms
        waited = time.monotonic() - t0
        ws.queue.put_nowait("late")
        after = await watchdog.recv(ws)  # the deadline is still past: None at once, the message stays queued
        last[0] = clock.now_ns()
        kept = await watchdog.recv(ws)
        loop.call_later = call_later  # type: ignore[method-assign]

        task = asyncio.ensure_future(watchdog.recv(ws))
        await asyncio.sleep(0.01)
        task.cancel()  # not the deadline: must propagate
        try:
            await task
            cancelled = False
        except asyncio.CancelledError:
            cancelled = True
        watchdog.close()
        return got, armed, timed_out, waited, after, kept, cancelled

    got, armed, timed_out, waited, after, kept, cancelled = run(main())
    assert got == list(range(30))
    assert 1 <= armed <= 10  # re-armed when it fired early (every ~100 ms), not once per message (30)
    assert timed_out is None and 0.05 < waited < 1.0
    assert after is None and kept == "late" and cancelled
