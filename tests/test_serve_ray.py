"""`msync serve` on a real local Ray cluster, in a private network namespace (Ray advertises the host's
external address otherwise): 2 replicas, 8 streams at once, then 8 in real time while one replica is killed.

The scenario runs in `tests/serve_scenario.py` as PID 1 of new network + PID namespaces (`unshare -n -p -f`),
so every Ray process ends with it; the test bounds it in time and compares what it served with msync's own
engine on the same audio and seeds.
"""

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'msync[serve]')")

from serve_scenario import SEED, make_audio  # noqa: E402  (tests/ is on sys.path)

from stream_engine.config import DEFAULT_MODEL_PATH  # noqa: E402
from stream_engine.serve.config import stream_seed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 3.0
STREAMS = 8


def _namespaces_allowed() -> str:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare/ip (util-linux, iproute2) not installed"
    probe = subprocess.run(
        ["unshare", "-n", "-p", "-f", "--mount-proc", "ip", "link", "set", "lo", "up"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    if probe.returncode != 0:
        return f"private network/PID namespaces not permitted here ({probe.stderr.strip()[:120]})"
    return ""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    why = _namespaces_allowed()
    if why:
        pytest.skip(f"the Ray tests need a private network namespace: {why}")
    out = tmp_path_factory.mktemp("serve")
    cmd = (
        f"ip link set lo up && exec {sys.executable} {ROOT / 'tests' / 'serve_scenario.py'} --out {out} "
        f"--streams {STREAMS} --seconds {SECONDS} --kill"
    )
    proc = subprocess.Popen(
        ["unshare", "-n", "-p", "-f", "--mount-proc", "bash", "-c", cmd],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**__import__("os").environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    try:
        stdout, stderr = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGKILL)  # the namespace's PID 1 and all it started
        proc.communicate()
        pytest.fail("the Ray scenario did not finish within 150 s")
    assert proc.returncode == 0, stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    with np.load(out / "served.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return result, arrays


def _reference(stream_ids_audio: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """msync's own engine (fp32 default model, no network), one stream at a time (batches of 1), same seeds."""
    from stream_engine import variants
    from stream_engine.engine import Engine, EngineConfig
    from stream_engine.inputs import PcmConverter, PcmFormat
    from stream_engine.runtime import load_runner

    runner = load_runner(str(variants.resolve(DEFAULT_MODEL_PATH, "fp32")), threads=1)
    got: dict[str, list] = {}

    class Sink:
        def send_frames(self, frames):
            for f in frames:
                got.setdefault(f.stream_id, []).append(np.asarray(f.landmarks, np.float32))

        def stream_event(self, event):
            pass

        async def aclose(self):
            pass

    async def run():
        engine = Engine(runner, EngineConfig(max_streams=64))
        engine.add_sink(Sink())
        async with engine:
            for sid, pcm in stream_ids_audio.items():
                conv = PcmConverter(PcmFormat(16000, 1, "int16"), engine.sample_rate_hz, "HQ", strict=True)
                engine.open_stream(sid, seed=stream_seed(SEED, sid))
                engine.push_audio(sid, conv.convert_bytes(pcm.tobytes()))
                tail = conv.finish()
                if tail.size:
                    engine.push_audio(sid, tail)
                engine.flush(sid)
                await asyncio.wait_for(engine.wait_drained(sid), 60)
                engine.close_stream(sid)

    asyncio.run(run())
    return {sid: np.stack(v) for sid, v in got.items()}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_frames_are_bit_identical_to_msync_and_connections_stay_on_their_replica(served):
    """8 streams at once, ended with `end`: every frame, in order, closed 1000. Replicas stepping one stream per call: bit-identical to msync's engine. Batching
    replicas: onnxruntime's float32 kernels round differently per batch size (by about 1 ulp, measured
    5.96e-8 between batch 1 and 8 on the same states), so equal to within 1e-6."""
    result, arrays = served
    ids = [f"a-{i}" for i in range(STREAMS)]
    ref = _reference({sid: make_audio(i, SECONDS) for i, sid in enumerate(ids)})
    for app in ("a", "a1"):
        for sid in ids:
            info = result[app][sid]
            assert info["close"] == 1000 and info["indices_ok"], (app, info)
            assert info["frames"] == int(np.ceil(SECONDS * 25)), (app, info)
            if app == "a1":
                np.testing.assert_array_equal(arrays[f"{app}/{sid}"], ref[sid], err_msg=sid)  # bit for bit
            else:
                np.testing.assert_allclose(arrays[f"{app}/{sid}"], ref[sid], rtol=0, atol=1e-6, err_msg=sid)
    # both replicas of the batched app served streams, and batched them (more frames than runner calls)
    replicas = {result["a"][sid]["replica"] for sid in ids}
    assert replicas <= set(result["replica_actors"]) and len(result["replica_actors"]) == 2
    health = result["health"]
    assert any(h["frames"] > h["runner_calls"] > 0 for h in health.values()), health


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_killing_a_replica_closes_only_its_streams(served):
    """8 real-time streams; `ray.kill` on the replica of the first: its connections close (1012), the other
    replica's run to their end with every frame; the dropped client reconnects and starts over."""
    result, arrays = served
    killed = result["killed"]
    phase2 = result["phase2"]
    ids = [f"b-{i}" for i in range(STREAMS)]
    ref = _reference({sid: make_audio(i, SECONDS) for i, sid in enumerate(ids)})
    on_killed = [sid for sid in ids if phase2[sid]["replica"] == killed]
    others = [sid for sid in ids if phase2[sid]["replica"] != killed]
    assert "b-0" in on_killed and others, phase2  # the victim is b-0's replica; the other one held streams too
    for sid in on_killed:  # closed mid-stream by the proxy hook: 1012, "replica lost"; what came was right
        info = phase2[sid]
        assert info["close"] == 1012 and "replica lost" in info["reason"], info
        assert info["frames"] < int(np.ceil(SECONDS * 25)), info
        n = info["frames"]
        np.testing.assert_allclose(arrays[f"b/{sid}"], ref[sid][:n], rtol=0, atol=1e-6, err_msg=sid)
    for sid in others:  # the other replica's streams end normally, every frame exact
        info = phase2[sid]
        assert info["close"] == 1000, info
        np.testing.assert_allclose(arrays[f"b/{sid}"], ref[sid], rtol=0, atol=1e-6, err_msg=sid)
    # the client reconnects and restarts its stream (same id, same seed): served again from the start
    assert result["reconnect"]["close"] == 1000 and result["reconnect"]["replica"] != killed
    np.testing.assert_allclose(arrays["reconnect"], ref["b-0"], rtol=0, atol=1e-6)
    # the replica that died is no longer answering; the survivor still is (Serve starts a replacement)
    assert killed not in result["health_after_kill"], result["health_after_kill"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_full_replica_answers_try_again_later_and_a_stopped_one_drains(served):
    """A one-replica app holding its 8 streams: 2 more connections are closed with 1013 at once (the refusal
    lane), not queued. Deleting the app serves the held streams for `drain_s` (2 s), then closes them (1012)."""
    result, _ = served
    full = result["full"]
    assert len(full["refusals"]) == 2
    for r in full["refusals"]:
        assert r.get("close") == 1013 and r.get("error") == "unavailable", r
        assert r["s"] < 5.0, r
    assert full["shutdown_codes"] == [1012] * STREAMS, full
    assert 1.5 < full["shutdown_s"] < 20.0, full
