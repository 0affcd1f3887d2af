"""The `msync serve` scenario the Ray tests run in a private network namespace (tests/test_serve_ray.py).

    unshare -n -p -f --mount-proc bash -c 'ip link set lo up && exec python tests/serve_scenario.py --out DIR'

Starts a local Ray cluster and the serve app (2 replicas, fp32, seed 7), then:
  1. `streams` streams at once, audio as fast as back-pressure allows, each ended with `end`;
  2. `streams` more in real time; once all are open, the replica holding the first one is killed;
  3. the first killed stream reconnects (same id) and streams its audio again.
Writes DIR/served.npz (landmarks per phase and stream) and DIR/result.json (replica, close code, frames).
The test compares the frames with msync's own engine. Everything stops when this process ends (it is PID 1
of its namespace).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

SEED = 7


def make_audio(i: int, seconds: float) -> np.ndarray:
    """Deterministic speech-like int16 PCM at 16 kHz for stream `i`: noise through a syllable-rate envelope."""
    rng = np.random.default_rng(1000 + i)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * (3.0 + 0.3 * i) * t) ** 2
    tone = np.sin(2 * np.pi * (140 + 10 * i) * t)
    x = 0.3 * env * (0.6 * tone + 0.4 * rng.standard_normal(n))
    return np.clip(x * 32767, -32768, 32767).astype(np.int16)


def stream_ids(phase: str, n: int) -> list[str]:
    return [f"{phase}-{i}" for i in range(n)]


async def health_by_replica(url: str, tries: int = 12) -> dict:
    """GET /health a few times (each lands on some replica): {replica: its last report}."""
    import urllib.request

    base = url.replace("ws://", "http://").rsplit("/", 1)[0]
    seen: dict = {}
    for _ in range(tries):
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(base + "/health", timeout=10).read())
        h = json.loads(body)
        seen[h["replica"]] = {k: h[k] for k in ("runner_calls", "frames", "connections", "capacity")}
    return seen


async def run_phases(url: str, url_b1: str, n: int, seconds: float, kill: bool) -> dict:
    import ray

    from stream_engine.serve.client import stream_audio

    out: dict = {"phase1": {}, "phase2": {}, "reconnect": {}}
    arrays = {}
    for app, app_url in (("a", url), ("a1", url_b1)):  # batched replicas, then replicas stepping one at a time
        t = time.monotonic()
        results = await asyncio.gather(
            *(stream_audio(app_url, sid, make_audio(i, seconds)) for i, sid in enumerate(stream_ids("a", n)))
        )
        out[f"{app}_s"] = time.monotonic() - t
        out[app] = {}
        for sid, r in zip(stream_ids("a", n), results):
            out[app][sid] = {
                "replica": r.ready.get("replica"),
                "close": r.close_code,
                "frames": len(r.indices),
                "indices_ok": bool(np.array_equal(r.indices, np.arange(len(r.indices)))),
            }
            arrays[f"{app}/{sid}"] = r.landmarks
    out["phase1"] = out["a"]
    out["health"] = await health_by_replica(url)
    if kill:
        opened = 0
        all_open = asyncio.Event()

        async def after_ready(ready: dict) -> None:
            nonlocal opened
            opened += 1
            if opened == n:
                all_open.set()
            await all_open.wait()  # every stream is open before any sends audio

        ids = stream_ids("b", n)

        async def staggered(i: int, sid: str):
            await asyncio.sleep(0.1 * i)  # one upgrade at a time: the router sees each replica's count
            return await stream_audio(url, sid, make_audio(i, seconds), realtime=True, after_ready=after_ready)

        tasks = [asyncio.create_task(staggered(i, sid)) for i, sid in enumerate(ids)]
        await asyncio.wait_for(all_open.wait(), 60)
        await asyncio.sleep(1.0)
        out["replica_actors"] = sorted(
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and "SERVE_REPLICA::msync#" in a["name"]
        )
        victim = await _victim(ids)  # the replica of the first stream (its ready named it)
        out["killed"] = victim
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        t_kill = time.monotonic()
        out["health_after_kill"] = await health_by_replica(url, tries=4)
        results = await asyncio.gather(*tasks)
        for sid, r in zip(ids, results):
            out["phase2"][sid] = {
                "replica": r.ready.get("replica"),
                "close": r.close_code,
                "reason": r.close_reason,
                "frames": len(r.indices),
                "errors": r.errors[:3],
            }
            arrays[f"b/{sid}"] = r.landmarks
        out["phase2_end_after_kill_s"] = time.monotonic() - t_kill
        # a client of the killed replica reconnects and restarts its stream (same id: same seed)
        r = await stream_audio(url, ids[0], make_audio(0, seconds), open_timeout_s=60)
        out["reconnect"] = {"replica": r.ready.get("replica"), "close": r.close_code, "frames": len(r.indices)}
        arrays["reconnect"] = r.landmarks
    out["full"] = await fill_up(url_b1, n)
    out["arrays"] = arrays
    return out


async def fill_up(url: str, capacity: int) -> dict:
    """Hold `capacity` streams open on a one-replica app, then try 2 more: each must be answered at once
    (close 1013, or HTTP 503 from the proxy), never left waiting. Then delete the app: the held streams
    are served until the drain time, then closed (1012, by the proxy hook)."""
    from ray import serve
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    hello = json.dumps({"type": "hello", "v": 1, "sample_rate_hz": 16000})
    held = []
    for _ in range(capacity):
        ws = await connect(url, open_timeout=20)
        await ws.send(hello)
        ready = json.loads(await asyncio.wait_for(ws.recv(), 20))
        assert ready["type"] == "ready", ready
        held.append(ws)
    refusals = []
    for _ in range(2):
        t = time.monotonic()
        try:
            async with connect(url, open_timeout=20) as ws:
                await ws.send(hello)
                try:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 20))
                    await asyncio.wait_for(ws.recv(), 20)
                except ConnectionClosed:
                    pass
                refusals.append(
                    {
                        "close": ws.close_code,
                        "reason": ws.close_reason,
                        "error": msg.get("code"),
                        "s": time.monotonic() - t,
                    }
                )
        except InvalidStatus as exc:
            refusals.append({"http": exc.response.status_code, "s": time.monotonic() - t})
    t = time.monotonic()
    deleting = asyncio.create_task(asyncio.to_thread(serve.delete, "msync_b1"))
    codes = []
    for ws in held:
        with contextlib.suppress(ConnectionClosed, asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), 30)
            await asyncio.wait_for(ws.recv(), 30)
        codes.append(ws.close_code)
    shutdown_s = time.monotonic() - t
    await deleting
    return {"refusals": refusals, "shutdown_codes": codes, "shutdown_s": shutdown_s}


_READY: dict[str, str] = {}


async def _victim(ids) -> str:
    """The replica actor holding the first stream (its `ready` message names it; see `_record_ready`)."""
    for _ in range(100):
        if ids[0] in _READY:
            return _READY[ids[0]]
        await asyncio.sleep(0.05)
    raise RuntimeError("the first stream's ready message never came")


def _record_ready() -> None:
    """Wrap the client so every `ready` is recorded by stream id as it arrives."""
    from stream_engine.serve import client

    orig = client.stream_audio

    async def wrapped(url, stream_id, pcm, *args, after_ready=None, **kwargs):
        async def hook(ready: dict) -> None:
            _READY[ready["stream"]] = ready["replica"]
            if after_ready is not None:
                await after_ready(ready)

        return await orig(url, stream_id, pcm, *args, after_ready=hook, **kwargs)

    client.stream_audio = wrapped


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--kill", action="store_true")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ray
    from ray import serve

    from stream_engine.serve.app import build_app
    from stream_engine.serve.cli import start
    from stream_engine.serve.config import ServeConfig

    _record_ready()
    cfg = ServeConfig(
        precision="fp32",
        replicas=args.replicas,
        streams_per_replica=args.streams,
        cpus_per_replica=0.5,
        seed=SEED,
        drain_s=2.0,
    )
    t0 = time.monotonic()
    url = start(cfg, local=True)
    # the same replicas stepping one stream per runner call: onnxruntime's float32 output depends on the
    # batch size by about 1 ulp, so only these can be compared bit for bit with a one-stream reference
    cfg_b1 = dataclasses.replace(cfg, batch_streams=1, app_name="msync_b1", replicas=1)
    serve.run(build_app(cfg_b1), name=cfg_b1.app_name, route_prefix="/b1", blocking=False)
    url_b1 = url.replace("/audio", "/b1/audio")
    started = time.monotonic() - t0
    try:
        out = asyncio.run(run_phases(url, url_b1, args.streams, args.seconds, args.kill))
    finally:
        serve.shutdown()
        ray.shutdown()
    out["start_s"] = started
    arrays = out.pop("arrays")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    np.savez(Path(args.out) / "served.npz", **arrays)
    (Path(args.out) / "result.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k.endswith("_s")}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
