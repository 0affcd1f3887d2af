"""VTube Studio plugin output against a local stand-in of VTube Studio's public API (loopback only)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time

import pytest
from vts_standin import VtsStandIn

from stream_engine.core import FrameTimings, LandmarkFrame
from stream_engine.outputs.vts import PARAMETERS, TokenStore, VtsConfig, VtsSink, parameter_values
from stream_engine.signals import NEUTRAL_SIGNALS, SignalConfig, SignalExtractor

from fakes import NEUTRAL_FACE, project_face


def _frame(stream_id: str, mouth_mm: float, t: float) -> LandmarkFrame:
    ex = SignalExtractor(SignalConfig(blink_mode="off"), NEUTRAL_FACE)
    ex.update(project_face(0, 0, 0, 0.0), t - 0.04, -20.0)
    signals = ex.update(project_face(0, 0, 0, mouth_mm), t, -20.0)
    return LandmarkFrame(
        stream_id, 0, 0, 0, int(t * 1e9), project_face(0, 0, 0, mouth_mm), -20.0, -20.0, FrameTimings(0, 0, 0), signals
    )


async def _wait(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def _cfg(server: VtsStandIn, tmp_path, **kw) -> VtsConfig:
    return VtsConfig(
        enabled=True,
        url=server.url,
        token_file=str(tmp_path / "token.json"),
        log_file=str(tmp_path / "vts.log"),
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        **kw,
    )


def test_parameter_values_cover_the_documented_inputs():
    values = {p["id"]: p["value"] for p in parameter_values(NEUTRAL_SIGNALS)}
    assert tuple(values) == PARAMETERS
    assert values["MouthOpen"] == 0.0 and values["EyeOpenLeft"] == 1.0 and values["FaceAngleX"] == 0.0
    assert all(isinstance(v, float) for v in values.values())


def test_token_file_is_private_and_reused(tmp_path):
    store = TokenStore(tmp_path / "sub" / "t.json")
    assert store.load("ws://x") is None
    store.save("ws://x", "abc")
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert TokenStore(store.path).load("ws://x") == "abc"
    store.forget("ws://x")
    assert store.load("ws://x") is None


@pytest.mark.timeout(30)
def test_session_token_request_then_reuse_then_inject_at_rate(tmp_path):
    """First run: API state, token request (approved), token stored (0600), authentication, injection at about
    25 Hz with the driving stream's values; second run reuses the stored token (no new request)."""

    async def main():
        server = VtsStandIn()
        await server.start()
        try:
            sink = VtsSink(_cfg(server, tmp_path))
            sink.send_frames([_frame("main", 20.0, 1.0)])
            await _wait(lambda: sink.state == "streaming")
            t0 = time.monotonic()
            n0 = len(server.injects())
            await asyncio.sleep(1.0)
            rate = (len(server.injects()) - n0) / (time.monotonic() - t0)
            assert 18 <= rate <= 30, rate
            assert server.values["MouthOpen"] > 0.5 and server.values["EyeOpenLeft"] == 1.0
            await sink.aclose()
            assert server.values["MouthOpen"] == 0.0  # the rest pose on close
            kinds = [m["messageType"] for _, m in server.received]
            assert kinds[:3] == ["APIStateRequest", "AuthenticationTokenRequest", "AuthenticationRequest"]
            assert all(sent["messageType"] != "APIError" for sent in server.sent)
            token_file = tmp_path / "token.json"
            assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600

            server.received.clear()
            again = VtsSink(_cfg(server, tmp_path))
            again.start()
            await _wait(lambda: again.state == "streaming")
            await again.aclose()
            kinds = [m["messageType"] for _, m in server.received]
            assert "AuthenticationTokenRequest" not in kinds and kinds[:2] == [
                "APIStateRequest",
                "AuthenticationRequest",
            ]
            events = [json.loads(line)["event"] for line in (tmp_path / "vts.log").read_text().splitlines()]
            assert events.count("token_stored") == 1 and "rest_pose_sent" in events
            await _wait(lambda: len(server.close_codes) == 2)
            assert server.close_codes == [1000, 1000]  # a normal close on stop, not 1011 (internal error)
        finally:
            await server.aclose()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_refused_token_stops_the_output_without_pestering(tmp_path):
    async def main():
        server = VtsStandIn(refuse_token=True)
        await server.start()
        try:
            sink = VtsSink(_cfg(server, tmp_path))
            sink.start()
            await _wait(lambda: sink.state == "denied")
            await asyncio.sleep(0.3)
            requests = [m for _, m in server.received if m["messageType"] == "AuthenticationTokenRequest"]
            assert len(requests) == 1 and not server.injects()
            await sink.aclose()
            assert not (tmp_path / "token.json").exists()
            await _wait(lambda: len(server.close_codes) == 1)
            assert server.close_codes == [1000]  # the user's "deny" ends the session normally
        finally:
            await server.aclose()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_revoked_token_is_replaced_and_dropped_connections_reconnect(tmp_path):
    async def main():
        server = VtsStandIn(drop_after=5)
        await server.start()
        try:
            TokenStore(tmp_path / "token.json").save(server.url, "revoked-token")
            sink = VtsSink(_cfg(server, tmp_path))
            sink.start()
            await _wait(lambda: server.connections >= 3, 10.0)
            assert sink.stats["reconnects"] >= 2
            kinds = [m["messageType"] for _, m in server.received]
            assert kinds.count("AuthenticationTokenRequest") == 1  # the stale token was replaced once, then reused
            assert TokenStore(tmp_path / "token.json").load(server.url) in server.issued
            await sink.aclose()
        finally:
            await server.aclose()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_absent_server_never_blocks_and_backs_off(tmp_path):
    async def main():
        cfg = VtsConfig(
            enabled=True,
            url="ws://127.0.0.1:9",
            token_file=str(tmp_path / "t.json"),
            reconnect_min_s=0.05,
            reconnect_max_s=0.4,
        )
        sink = VtsSink(cfg)
        t0 = time.perf_counter()
        for i in range(200):
            sink.send_frames([_frame("main", 10.0, 0.04 * i)])
        assert time.perf_counter() - t0 < 1.0  # storing values only
        await asyncio.sleep(1.0)
        # backoff doubles: 0.05 + 0.1 + 0.2 + 0.4 + 0.4 ... -> a handful of attempts in a second, not hundreds
        assert 2 <= sink.stats["reconnects"] <= 8, sink.stats
        await sink.aclose()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_standin_answers_errors_as_documented():
    """The stand-in itself: malformed JSON, unauthenticated injection and unknown parameters get APIErrors."""

    async def main():
        from websockets.asyncio.client import connect

        server = VtsStandIn()
        await server.start()
        try:
            async with connect(server.url) as ws:

                async def ask(msg):
                    await ws.send(msg if isinstance(msg, str) else json.dumps(msg))
                    return json.loads(await ws.recv())

                base = {"apiName": "VTubeStudioPublicAPI", "apiVersion": "1.0", "requestID": "r"}
                assert (await ask("{nope"))["data"]["errorID"] == 2
                inject = {
                    **base,
                    "messageType": "InjectParameterDataRequest",
                    "data": {"parameterValues": [{"id": "MouthOpen", "value": 1.0}]},
                }
                assert (await ask(inject))["data"]["errorID"] == 8
                token = (
                    await ask(
                        {
                            **base,
                            "messageType": "AuthenticationTokenRequest",
                            "data": {"pluginName": "test", "pluginDeveloper": "dev"},
                        }
                    )
                )["data"]["authenticationToken"]
                auth = await ask(
                    {
                        **base,
                        "messageType": "AuthenticationRequest",
                        "data": {"pluginName": "test", "pluginDeveloper": "dev", "authenticationToken": token},
                    }
                )
                assert auth["data"]["authenticated"] is True
                assert (await ask(inject))["messageType"] == "InjectParameterDataResponse"
                bad = {**inject, "data": {"parameterValues": [{"id": "NoSuchParam", "value": 1.0}]}}
                assert (await ask(bad))["data"]["errorID"] == 453
                assert (await ask({**base, "messageType": "Nope"}))["data"]["errorID"] == 7
        finally:
            await server.aclose()

    asyncio.run(main())
