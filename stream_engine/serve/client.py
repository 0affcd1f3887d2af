"""A small /audio client (`msync serve` and `msync stream` speak the same protocol): one stream's audio in,
its binary frames back, with the close code and per-frame lateness. Used by the tests and the benchmark.

    result = asyncio.run(stream_audio("ws://127.0.0.1:8000/audio", "talk-1", pcm_int16_16k, realtime=True))
    result.ready["replica"], result.landmarks.shape, result.close_code, result.lateness_ms
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from stream_engine.outputs.serializers import decode_binary


@dataclasses.dataclass
class StreamResult:
    """What one /audio connection got.

    Attributes:
        ready: the server's `ready` message ({} if none came: refused before it).
        landmarks: (frames, num_landmarks, landmark_dims) float32, in arrival order.
        indices: (frames,) frame index of each.
        close_code, close_reason: how the connection ended (None: the client closed it).
        lateness_ms: per frame whose audio was all sent in real time: receive time minus the send time of the
            chunk holding the last sample the frame needs (frame index + look-ahead).
        errors: error messages received.
    """

    ready: dict[str, Any]
    landmarks: np.ndarray
    indices: np.ndarray
    close_code: int | None
    close_reason: str
    lateness_ms: np.ndarray
    errors: list[dict[str, Any]]


async def stream_audio(
    url: str,
    stream_id: str | None,
    pcm: np.ndarray,
    chunk_frames: int = 1,
    realtime: bool = False,
    token: str = "",
    open_timeout_s: float = 30.0,
    after_ready: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> StreamResult:
    """Stream `pcm` (int16 mono 16 kHz) as one stream, then `end`; collect every frame (`every_frame`).

    Args:
        chunk_frames: 40 ms frames of audio per message.
        realtime: pace the chunks at the audio's own rate (else as fast as back-pressure allows).
        after_ready: awaited once the stream is open (e.g. to synchronise several clients).
        stop: when set, the client stops sending (the stream stays open until the server closes it).
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    pcm = np.ascontiguousarray(pcm, dtype="<i2")
    step = 640 * chunk_frames
    headers = {"Authorization": f"Bearer {token}"} if token else None
    hello = {
        "type": "hello",
        "v": 1,
        "sample_rate_hz": 16000,
        "channels": 1,
        "dtype": "int16",
        "subscribe": "binary",
        "every_frame": True,
    }
    if stream_id is not None:
        hello["stream"] = stream_id
    ready: dict[str, Any] = {}
    frames: list[tuple[int, np.ndarray, float]] = []
    errors: list[dict[str, Any]] = []
    sent_at: list[float] = []  # per 40 ms frame of audio: when the chunk holding it was sent
    code, reason = None, ""
    async with connect(
        url, additional_headers=headers, open_timeout=open_timeout_s, max_size=1 << 22, compression=None
    ) as ws:
        await ws.send(json.dumps(hello))

        async def read() -> None:
            nonlocal ready
            async for message in ws:
                now = time.perf_counter()
                if isinstance(message, bytes):
                    f = decode_binary(message)
                    if not f.get("stalled", False):  # engines that mark frames sent while audio is missing
                        frames.append((f["index"], f["landmarks"], now))
                    continue
                msg = json.loads(message)
                if msg.get("type") == "ready":
                    ready = msg
                    got_ready.set()
                elif msg.get("type") == "error":
                    errors.append(msg)

        got_ready = asyncio.Event()
        reader = asyncio.create_task(read())
        try:
            done, _ = await asyncio.wait(
                {reader, asyncio.ensure_future(got_ready.wait())},
                timeout=open_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if got_ready.is_set():
                if after_ready is not None:
                    await after_ready(ready)
                t0 = time.perf_counter()
                for k, start in enumerate(range(0, len(pcm), step)):
                    if stop is not None and stop.is_set():
                        break
                    if realtime:
                        await asyncio.sleep(max(0.0, t0 + k * step / 16000 - time.perf_counter()))
                    await ws.send(pcm[start : start + step].tobytes())
                    sent_at.extend([time.perf_counter()] * chunk_frames)
                else:
                    await ws.send(json.dumps({"type": "end"}))
            await reader
        except ConnectionClosed:
            pass
        finally:
            if not reader.done():
                await asyncio.wait({reader}, timeout=5.0)
                reader.cancel()
        code, reason = ws.close_code, ws.close_reason or ""
    L = int(ready.get("model", {}).get("lookahead_frames", 0))
    lateness = [1000.0 * (t - sent_at[i + L]) for i, _, t in frames if i + L < len(sent_at)]
    lm = np.stack([f[1] for f in frames]) if frames else np.zeros((0, 68, 2), np.float32)
    return StreamResult(
        ready,
        lm,
        np.array([f[0] for f in frames], dtype=np.int64),
        code,
        reason,
        np.array(lateness, dtype=np.float64),
        errors,
    )
