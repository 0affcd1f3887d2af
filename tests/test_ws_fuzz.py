"""Seeded fuzz of the WebSocket protocol over real loopback sockets (issue 11 item 10).

Four fuzzing connections (two /frames, two /audio, plus a stream of fresh /audio connections with bad hellos)
send at least 10,000 messages drawn from the message classes of PROTOCOL.md, each waiting for the documented
reply of its class (messages that have no reply are followed by a ping whose pong must come next). The 50th
error of a connection must be followed by `too_many_errors` and close 1008, after which the fuzzer
reconnects. Meanwhile a well-behaved reference stream sends real-time audio and must keep receiving its
frames at 25 fps without a seq gap.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from test_engine_websocket import int16, run, serving, ws_url
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from stream_engine.outputs.serializers import decode_binary

from fakes import tone

SEED = 20261129
TOTAL_MESSAGES = 10_000
MAX_ERRORS = 50
DTYPES = {"int16": "<i2", "int32": "<i4", "float32": "<f4"}


class Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.by_class: dict[str, int] = {}
        self.mismatches: list[str] = []

    def note(self, cls: str, expected: str, got: str) -> None:
        self.sent += 1
        self.by_class[cls] = self.by_class.get(cls, 0) + 1
        if got != expected and len(self.mismatches) < 20:
            self.mismatches.append(f"{cls}: expected {expected}, got {got}")


def garbage(rng) -> str:
    """Text that is never JSON: random characters and a NUL (invalid anywhere in JSON)."""
    n = int(rng.integers(0, 60))
    return "".join(chr(int(c)) for c in rng.integers(32, 0x3000, n)) + "\x00" + "{" * int(rng.integers(0, 3))


def random_value(rng, depth: int = 0):
    k = int(rng.integers(0, 7 if depth < 3 else 4))
    if k == 0:
        return int(rng.integers(-(10**6), 10**6))
    if k == 1:
        return float(rng.normal())
    if k == 2:
        return "".join(chr(int(c)) for c in rng.integers(32, 0x500, int(rng.integers(0, 12))))
    if k == 3:
        return [None, True, False][int(rng.integers(0, 3))]
    if k in (4, 5):
        return [random_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    return {f"k{i}": random_value(rng, depth + 1) for i in range(int(rng.integers(0, 4)))}


def not_an_object(rng) -> str:
    choice = int(rng.integers(0, 4))
    if choice == 0:
        return json.dumps([random_value(rng) for _ in range(int(rng.integers(0, 4)))])
    if choice == 1:
        return json.dumps(random_value(rng) if rng.random() < 0.5 else 7)  # a scalar or list, never a dict
    if choice == 2:
        return json.dumps({"type": [5, None, [], {}, 1.5, True][int(rng.integers(0, 6))], "x": 1})
    return json.dumps({"no_type": random_value(rng)})


class Fuzzer:
    def __init__(self, server, tally: Tally, seed: int, budget: int) -> None:
        self.server = server
        self.tally = tally
        self.rng = np.random.default_rng(seed)
        self.budget = budget
        self.ws = None
        self.errors = 0

    async def reply(self) -> str:
        """The next reply's class ("pong", "error:bad_json", ..., "close:1008"), skipping frames and events."""
        while True:
            try:
                m = await asyncio.wait_for(self.ws.recv(), 10)
            except ConnectionClosed as exc:
                return f"close:{exc.rcvd.code if exc.rcvd else 'abnormal'}"
            except asyncio.TimeoutError:
                return "no reply within 10 s"
            if isinstance(m, bytes):
                continue
            msg = json.loads(m)
            if msg["type"] in ("frame", "stream"):
                continue
            return f"error:{msg['code']}" if msg["type"] == "error" else msg["type"]

    async def exchange(self, cls: str, message, expected: str | None) -> None:
        """Send, then check the reply (None: no reply, verified with a ping). Handles the error cap."""
        await self.ws.send(message)
        if expected is None:
            await self.ws.send('{"type": "ping"}')
            expected = "pong"
        got = await self.reply()
        self.tally.note(cls, expected, got)
        if expected.startswith("error:"):
            self.errors += 1
            if self.errors >= MAX_ERRORS:
                fatal = await self.reply()
                close = await self.reply()
                self.tally.note("error_cap", "error:too_many_errors+close:1008", f"{fatal}+{close}")
                await self.connect()

    async def run(self) -> None:
        await self.connect()
        while self.tally.sent < self.budget:
            await self.step()
        await self.ws.close()


class FramesFuzzer(Fuzzer):
    async def connect(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        self.ws = await connect(ws_url(self.server, "/frames", streams="__none__"), max_size=2**22)
        await self.ws.recv()  # hello
        self.errors = 0

    async def step(self) -> None:
        rng = self.rng
        k = int(rng.integers(0, 100))
        if k < 15:
            await self.exchange("ping", json.dumps({"type": "ping", "x": random_value(rng)}), "pong")
        elif k < 25:
            fmt = ["json", "binary", "JSON", None][int(rng.integers(0, 4))]
            msg = {"type": "subscribe", "streams": [f"none{int(rng.integers(0, 9))}"]}
            if fmt:
                msg["format"] = fmt
            await self.exchange("subscribe", json.dumps(msg), "subscribed")
        elif k < 32:
            bad = [5, [], {}, 1.5, True, "xml", ""][int(rng.integers(0, 7))]
            await self.exchange("subscribe_bad", json.dumps({"type": "subscribe", "format": bad}), "error:bad_message")
        elif k < 44:
            await self.exchange("bad_json", garbage(rng), "error:bad_json")
        elif k < 46:
            huge = '{"type":"ping","n":' + "9" * int(rng.integers(4400, 20000)) + "}"
            await self.exchange("huge_int", huge, "error:bad_json")
        elif k < 47:
            d = int(rng.integers(1000, 100000))
            await self.exchange("deep_json", "[" * d + "]" * d, "error:bad_json")
        elif k < 55:
            await self.exchange("not_object", not_an_object(rng), "error:bad_message")
        elif k < 65:
            kind = "".join(chr(int(c)) for c in rng.integers(97, 123, int(rng.integers(1, 10))))
            if kind in ("ping", "subscribe", "reset", "flush"):
                kind += "x"
            await self.exchange("unknown_type", json.dumps({"type": kind}), "error:unknown_type")
        elif k < 75:
            kind = ["reset", "flush"][int(rng.integers(0, 2))]
            await self.exchange("control_foreign", json.dumps({"type": kind, "stream": "ref"}), "error:forbidden")
        elif k < 85:
            ghost = f"ghost{int(rng.integers(0, 99))}"
            await self.exchange(
                "control_unknown", json.dumps({"type": "reset", "stream": ghost}), "error:unknown_stream"
            )
        else:
            await self.exchange("binary", rng.bytes(int(rng.integers(0, 3000))), "error:unexpected_binary")


class AudioFuzzer(Fuzzer):
    async def connect(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        self.ws = await connect(ws_url(self.server, "/audio"), max_size=2**22)
        self.fmt = {"sample_rate_hz": 16000, "channels": 1, "dtype": "int16"}
        await self.ws.send(json.dumps({"type": "hello", **self.fmt}))
        assert json.loads(await self.ws.recv())["type"] == "ready"
        self.errors = 0

    def audio(self, frames: int) -> bytes:
        x = tone(frames * self.fmt["channels"], amplitude=float(self.rng.uniform(0, 0.9)))
        if self.fmt["dtype"] == "float32":
            return np.asarray(x, "<f4").tobytes()
        scale = 32767 if self.fmt["dtype"] == "int16" else 2**31 - 1
        return (x * scale).astype(DTYPES[self.fmt["dtype"]]).tobytes()

    async def step(self) -> None:
        rng = self.rng
        k = int(rng.integers(0, 100))
        width = np.dtype(DTYPES[self.fmt["dtype"]]).itemsize * self.fmt["channels"]
        if k < 30:
            await self.exchange("audio", self.audio(int(rng.integers(1, 800))), None)
        elif k < 36:
            data = self.audio(int(rng.integers(1, 50)))
            await self.exchange("audio_partial", data[: len(data) - int(rng.integers(1, width))], "error:bad_audio")
        elif k < 40:
            await self.exchange("audio_empty", b"", "error:empty_chunk")
        elif k < 47:
            fmt = {
                "sample_rate_hz": int(rng.choice([8000, 16000, 22050, 44100, 48000])),
                "channels": int(rng.integers(1, 3)),
                "dtype": str(rng.choice(list(DTYPES))),
            }
            await self.exchange("config", json.dumps({"type": "config", **fmt}), "config_ok")
            self.fmt = fmt
        elif k < 53:
            bad = [
                {"sample_rate_hz": int(rng.integers(-5, 7999))},
                {"channels": int(rng.integers(33, 99))},
                {"dtype": random_value(rng, 3)},
                {"sample_rate_hz": str(rng.integers(0, 9))},
            ][int(rng.integers(0, 4))]
            await self.exchange("config_bad", json.dumps({"type": "config", **bad}), "error:bad_format")
        elif k < 60:
            await self.exchange("ping", '{"type": "ping"}', "pong")
        elif k < 67:
            await self.exchange("reset", '{"type": "reset"}', "reset_ok")
        elif k < 72:
            await self.exchange("flush", '{"type": "flush"}', "flushed")
        elif k < 78:
            await self.exchange("control_foreign", '{"type": "reset", "stream": "ref"}', "error:forbidden")
        elif k < 88:
            await self.exchange("bad_json", garbage(rng), "error:bad_json")
        elif k < 94:
            await self.exchange("not_object", not_an_object(rng), "error:bad_message")
        else:
            await self.exchange(
                "unknown_type", json.dumps({"type": "dance" + str(int(rng.integers(0, 9)))}), "error:unknown_type"
            )


def valid_hello_value(field: str, v) -> bool:
    """PROTOCOL.md §4's rule for one hello field (written from the document, not from the server code)."""
    is_int = isinstance(v, int) and not isinstance(v, bool)
    if field == "dtype":
        return v in ("int16", "int32", "float32")
    if field == "subscribe":
        return v in (None, False, "none") or (isinstance(v, str) and v.lower() in ("json", "binary"))
    if field == "stream":
        return v is None or (isinstance(v, str) and 0 < len(v.encode("utf-8", "surrogatepass")) <= 128)
    if field == "sample_rate_hz":
        return is_int and 8000 <= v <= 384000
    if field == "channels":
        return is_int and 1 <= v <= 32
    if field == "v":
        return v == 1 and not isinstance(v, bool)
    return v is None  # reference_face: random values are never 68 [x, y] points


async def bad_hellos(server, tally: Tally, seed: int, budget: int) -> None:
    rng = np.random.default_rng(seed)
    fields = ["dtype", "subscribe", "stream", "sample_rate_hz", "channels", "v", "reference_face"]
    while tally.sent < budget:
        field = fields[int(rng.integers(0, len(fields)))]
        value = random_value(rng, 2)
        while valid_hello_value(field, value):
            value = random_value(rng, 2)
        hello = {"type": "hello", field: value}
        async with connect(ws_url(server, "/audio")) as ws:
            await ws.send(json.dumps(hello))
            try:
                r = json.loads(await asyncio.wait_for(ws.recv(), 10))
                got = f"error:{r.get('code')}" if r["type"] == "error" else r["type"]
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                got += f"+close:{exc.rcvd.code if exc.rcvd else 'abnormal'}"
            tally.note("bad_hello", "error:bad_hello+close:1008", got)


@pytest.mark.slow
def test_fuzzed_messages_get_their_documented_replies_while_a_reference_stream_keeps_25_fps():
    async def main():
        async with serving() as (engine, server):
            ref = await connect(ws_url(server, "/audio"))
            await ref.send(json.dumps({"type": "hello", "stream": "ref", "subscribe": "binary"}))
            assert json.loads(await ref.recv())["type"] == "ready"
            arrivals, seqs = [], []
            stop = asyncio.Event()

            async def ref_send():
                t0, k = time.monotonic(), 0
                while not stop.is_set():
                    await ref.send(int16(tone(SPF, start_sample=k * SPF)))
                    k += 1
                    await asyncio.sleep(max(0.0, t0 + k * 0.04 - time.monotonic()))

            async def ref_recv():
                async for m in ref:
                    if isinstance(m, bytes):
                        arrivals.append(time.monotonic())
                        seqs.append(decode_binary(m)["seq"])

            sender, receiver = asyncio.create_task(ref_send()), asyncio.create_task(ref_recv())
            await asyncio.sleep(0.5)
            tally = Tally()
            t0 = time.monotonic()
            fuzzers = [FramesFuzzer(server, tally, SEED + i, TOTAL_MESSAGES) for i in range(2)] + [
                AudioFuzzer(server, tally, SEED + 10 + i, TOTAL_MESSAGES) for i in range(2)
            ]
            await asyncio.gather(*(f.run() for f in fuzzers), bad_hellos(server, tally, SEED + 20, TOTAL_MESSAGES))
            t1 = time.monotonic()
            stop.set()
            await sender
            await asyncio.sleep(0.2)
            await ref.close()
            await receiver
            window = [(a, s) for a, s in zip(arrivals, seqs) if t0 <= a <= t1]
            return tally, t1 - t0, window, seqs

    tally, secs, window, seqs = run(main(), timeout_s=240)
    print(f"fuzz: {tally.sent} messages in {secs:.1f} s; classes {sorted(tally.by_class.items())}")
    assert tally.sent >= TOTAL_MESSAGES and not tally.mismatches, tally.mismatches
    assert tally.by_class.get("error_cap", 0) >= 10 and tally.by_class["bad_hello"] >= 100
    assert np.all(np.diff(seqs) == 1)  # the reference stream lost no frame
    fps = len(window) / secs
    gaps = np.diff([a for a, _ in window])
    print(f"reference: {fps:.1f} fps, max gap {1000 * gaps.max():.0f} ms")
    assert fps > 22.5 and gaps.max() < 0.5


SPF = 640
