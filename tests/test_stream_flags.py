"""Every `msync stream` command-line flag reaches the resolved config (../shared/cases/vmc-names-flag-ignored).

The walk takes the flags from the parser itself, so a flag added without an entry here fails the test.
"""

from __future__ import annotations

import argparse

import pytest

from stream_engine.config import StreamConfig
from stream_engine.stream import add_arguments, config_from_args

# flag -> (argv, {dotted config path: expected value})
FLAGS: dict[str, tuple[list[str], dict[str, object]]] = {
    "--model": (["--model", "x.onnx"], {"model.path": "x.onnx"}),
    "--lookahead": (["--lookahead", "3"], {"model.lookahead_frames": 3}),
    "--threads": (["--threads", "4"], {"model.threads": 4}),
    "--providers": (["--providers", "cuda"], {"model.providers": "cuda"}),
    "--input": (["--input", "talk.wav"], {"input.kind": "file", "input.path": "talk.wav", "input.loop": False}),
    "--text": (["--text", "hello there"], {"input.text": "hello there"}),
    "--device": (["--device", "USB"], {"input.device": "USB"}),
    "--rate": (["--rate", "48000"], {"input.sample_rate_hz": 48000}),
    "--channels": (["--channels", "2"], {"input.channels": 2}),
    "--stdin-format": (["--stdin-format", "f32le:48000:2"], {"input.stdin_format": "f32le:48000:2"}),
    "--fast": (["--fast"], {"input.realtime": False}),
    "--wait-client": (["--wait-client"], {"input.wait_client": True}),
    "--speed": (["--speed", "2.5"], {"input.speed": 2.5}),
    "--loop": (["--no-loop"], {"input.loop": False}),
    "--stream-id": (["--stream-id", "alice"], {"input.stream_id": "alice"}),
    "--reference-face": (["--reference-face", "face.json"], {"input.reference_face": "face.json"}),
    "--host": (["--host", "::1"], {"server.host": "::1", "server.allow_remote": False}),
    "--port": (["--port", "9999"], {"server.port": 9999}),
    "--token": (["--token", "s3cret"], {"server.token": "s3cret"}),
    "--token-file": (["--token-file", "tok.txt"], {"server.token_file": "tok.txt"}),
    "--insecure": (["--insecure"], {"server.insecure": True}),
    "--precision": (["--precision", "fp32"], {"model.precision": "fp32"}),
    "--set": (
        ["--set", "engine.max_streams=128", "--set", 'vmc.targets=["127.0.0.1:9"]'],
        {"engine.max_streams": 128, "vmc.targets": ("127.0.0.1:9",)},
    ),
    "--vmc": (["--vmc", "10.0.0.2:39540"], {"vmc.targets": ("10.0.0.2:39540",), "vmc.enabled": True}),
    "--no-vmc": (["--no-vmc"], {"vmc.enabled": False}),
    "--vmc-names": (
        ["--vmc-names", "vrm1"],
        {"vmc.blend_names": (("A", "aa"), ("I", "ih"), ("U", "ou"), ("E", "ee"), ("O", "oh"), ("blink", "blink"))},
    ),
    "--vmc-mirror": (["--vmc-mirror"], {"vmc.mirror": True}),
    "--vmc-stream": (["--vmc-stream", "bob"], {"vmc.stream": "bob", "vts.stream": "bob"}),
    "--osc": (["--osc", "127.0.0.1:9001"], {"osc.targets": ("127.0.0.1:9001",), "osc.enabled": True}),
    "--vts": (["--vts"], {"vts.enabled": True, "vts.url": "ws://127.0.0.1:8001"}),
    "--vts-token-file": (["--vts-token-file", "t.json"], {"vts.token_file": "t.json"}),
    "--vts-log": (["--vts-log", "vts.log"], {"vts.log_file": "vts.log"}),
    "--duration": (["--duration", "12"], {"duration_s": 12.0}),
    "--seed": (["--seed", "7"], {"engine.seed": 7}),
    "--workers": (["--workers", "2"], {"workers": 2}),
    "--quiet": (["--quiet"], {"latency_line": False}),
    "--log-level": (["--log-level", "debug"], {"log_level": "debug"}),
}
# Flags that act instead of configuring.
NOT_CONFIG = {"--help", "--config", "--print-config", "--list-devices"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_every_flag_is_walked():
    flags = {opt for action in _parser()._actions for opt in action.option_strings if opt.startswith("--")}
    flags = {f for f in flags if not f.startswith("--no-") or f == "--no-vmc"}  # --no-loop is --loop's pair
    assert flags - NOT_CONFIG == set(FLAGS), "flags without a config check: " + str(
        sorted(flags - NOT_CONFIG - set(FLAGS))
    )


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_flag_reaches_the_resolved_config(flag):
    argv, expected = FLAGS[flag]
    cfg = config_from_args(_parser().parse_args(argv))
    default = StreamConfig()
    for path, value in expected.items():
        assert _get(cfg, path) == value, f"{flag}: {path} = {_get(cfg, path)!r}, expected {value!r}"
    assert any(_get(default, path) != value for path, value in expected.items()), f"{flag} changes nothing"


@pytest.mark.parametrize("preset,first", [("vrm0", "A"), ("vrm1", "aa"), ("arkit", "eyeBlinkLeft")])
def test_vmc_names_presets_reach_the_wire(preset, first):
    """`--vmc-names` changes the /VMC/Ext/Blend/Val names actually sent (parsed back with python-osc)."""
    from pythonosc.osc_bundle import OscBundle

    from stream_engine.blendshapes import ARKIT_NAMES
    from stream_engine.outputs.vmc import vmc_packets
    from stream_engine.signals import NEUTRAL_SIGNALS

    cfg = config_from_args(_parser().parse_args(["--vmc-names", preset]))
    packet = vmc_packets(NEUTRAL_SIGNALS, cfg.vmc, 0.0)[1]
    blend = OscBundle(packet.dgram)  # parse the bytes on the wire back
    names = [m.params[0] for m in blend if m.address == "/VMC/Ext/Blend/Val"]
    assert names[0] == first
    if preset == "arkit":
        assert names == list(ARKIT_NAMES)
        assert all(isinstance(m.params[1], float) for m in blend if m.address == "/VMC/Ext/Blend/Val")


@pytest.mark.timeout(60)
def _fast_wait_client_run(
    tmp_path, read_delay_s: float = 0.0, read_at_most: int | None = None, connect_after_s: float = 0.0
):
    """Run `msync stream FILE --fast --wait-client` (2 s file) with one /frames client that connects
    `connect_after_s` after the server starts, sleeps `read_delay_s` after each message and leaves after
    `read_at_most` frames (None: reads until the server closes the connection after its last frame, not until
    the server task ends, which can finish while its last frames are still on the way). Returns (frame indices,
    exit code, expected frame count, whether the server task had ended when each frame was read)."""
    import asyncio
    import dataclasses
    import json
    import math

    import soundfile
    from websockets.asyncio.client import connect

    from stream_engine.stream import run_stream

    from fakes import speechlike

    wav = tmp_path / "a.wav"
    soundfile.write(wav, speechlike(16000 * 2 + 100, seed=1), 16000)
    cfg = config_from_args(
        _parser().parse_args(
            ["--input", str(wav), "--fast", "--wait-client", "--port", "0", "--no-vmc", "--quiet", "--seed", "1"]
        )
    )
    cfg = dataclasses.replace(cfg, duration_s=30.0)

    async def main():
        ready = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(run_stream(cfg, ready))
        server = await ready
        await asyncio.sleep(connect_after_s)
        frames, ended = [], []
        # close_timeout: a client that leaves with frames unread closes without the handshake (websockets stops
        # reading when its own queue is full), which would take the client 10 s
        async with connect(f"ws://127.0.0.1:{server.port}/frames", close_timeout=0.5) as ws:
            while read_at_most is None or len(frames) < read_at_most:
                try:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 5.0))
                except (asyncio.TimeoutError, Exception):
                    break
                if msg.get("type") == "frame":
                    frames.append(msg["index"])
                    ended.append(task.done())
                await asyncio.sleep(read_delay_s)
        code = await asyncio.wait_for(task, 10.0)
        return frames, code, ended

    frames, code, ended = asyncio.run(main())
    return frames, code, math.ceil((2 * 16000 + 100) / 640), ended


def test_fast_file_with_wait_client_loses_no_frame_to_a_late_client(tmp_path):
    """`--fast --wait-client`: the file starts only once a /frames client is connected, so a client that
    connects 0.5 s after the server starts still receives every frame (ceil(duration * 25), tail included)."""
    frames, code, expected, ended = _fast_wait_client_run(tmp_path, connect_after_s=0.5)
    assert code == 0
    assert frames == list(range(expected))


def test_fast_file_with_wait_client_holds_back_for_a_slow_client(tmp_path):
    """A client slower than the engine still gets every frame of a `--fast --wait-client` file: the file is
    paced by it instead of its latest-wins queue dropping frames (on one CPU, where the engine steps on the
    event loop, 16 of 51 frames were dropped before)."""
    frames, code, expected, ended = _fast_wait_client_run(tmp_path, read_delay_s=0.01)
    assert code == 0
    assert frames == list(range(expected))


def test_fast_file_with_wait_client_waits_for_a_slow_client_to_read_the_end(tmp_path):
    """A client that reads one frame per 0.1 s takes ~5 s for the 2 s file: the server ends only once that
    client has acknowledged reading every frame it was sent (its send window's pong), not when the file is
    done. Before, the server closed ~2 s in with the rest of the file in socket buffers, and on a long file
    (120 s, a fresh-eye check) the close cut off 400-640 of 3000 frames; 51 frames still fit in the buffers, so
    the test checks the order of events, which does not depend on buffer sizes."""
    frames, code, expected, ended = _fast_wait_client_run(tmp_path, read_delay_s=0.1)
    assert code == 0
    assert frames == list(range(expected))
    # the client's library reads ahead of the application (websockets' queue of 16 messages) and answers the
    # ping there, so the server may end while the last ~16 frames wait in the client's memory (safe from the
    # close); before, it ended with 30 frames still to come
    assert not any(ended[: expected // 2]), "the server ended while its client was still reading the file"


def test_fast_file_with_wait_client_does_not_wait_for_a_client_that_left(tmp_path):
    """The client the file waits for leaves after 5 frames: the file runs to its end without it."""
    frames, code, _, _ = _fast_wait_client_run(tmp_path, read_delay_s=0.05, read_at_most=5)
    assert code == 0
    assert frames == list(range(5))


def test_a_remote_host_on_the_command_line_needs_a_token_or_insecure():
    """`--host ADDR` (non-loopback) is the opt-in to a remote bind; without a token or --insecure the server
    refuses with the token message (no server is started: the check runs on the resolved config)."""
    from stream_engine.outputs.websocket import check_exposure

    bare = config_from_args(_parser().parse_args(["--host", "0.0.0.0"]))
    assert bare.server.allow_remote
    with pytest.raises(ValueError, match="without a token"):
        check_exposure(bare.server)
    check_exposure(config_from_args(_parser().parse_args(["--host", "0.0.0.0", "--insecure"])).server)
    check_exposure(config_from_args(_parser().parse_args(["--host", "0.0.0.0", "--token", "t"])).server)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--seed", "-1"], "seed must be an integer >= 0"),
        (["--duration", "-5"], "duration_s must be a finite number"),
        (["--duration", "nan"], "duration_s must be a finite number"),
        (["--log-level", "bogus"], "log_level must be one of"),
        (["--threads", "-3"], "model.threads must be an integer >= 1"),
        (["--no-vmc", "--vmc", "127.0.0.1:1"], "contradict"),
        (["--input", "stdin", "--stdin-format", "u8:8000:1"], "s16le, s32le or f32le"),
        (["--input", "stdin", "--stdin-format", "s16le:16000:1:9"], "dtype:rate:channels"),
        (["--set", "server.max_clients=0"], "max_clients and max_client_errors must be >= 1"),
        (["--set", "server.idle_timeout_s=-1"], "idle_timeout_s must be a finite number of seconds >= 0"),
        (["--set", "shutdown_drain_s=-1"], "shutdown_drain_s must be"),
        (["--set", "server.hello_timeout_s=Infinity"], "hello_timeout_s must be a finite"),
        (["--set", "server.idle_timeout_s=NaN"], "idle_timeout_s must be a finite"),
        (["--set", "server.write_timeout_s=NaN"], "write_timeout_s must be a finite"),
        (["--set", "engine.max_pending_s=NaN"], "max_pending_s must be positive"),
    ],
)
def test_bad_values_are_refused_before_anything_starts(argv, message):
    """Values the engine would crash on later, or silently misread (found by a fresh-eye user trial), are a
    configuration error up front; `msync stream` prints it as one line with exit status 2."""
    from stream_engine.dataclass_io import ConfigError
    from stream_engine.inputs import PcmFormat

    with pytest.raises((ConfigError, ValueError), match=message):
        cfg = config_from_args(_parser().parse_args(argv))
        PcmFormat.parse(cfg.input.stdin_format)  # what the stdin source does when it starts


def test_stdin_format_names_are_case_blind_and_notes_flag_likely_mistakes():
    from stream_engine.inputs import PcmFormat
    from stream_engine.stream import config_notes

    assert PcmFormat.parse("S16LE:48000:2") == PcmFormat(48000, 2, "int16")
    notes = config_notes(config_from_args(_parser().parse_args(["--vmc-stream", "mian"])))
    assert len(notes) == 1 and "'mian'" in notes[0] and "'main'" in notes[0]
    assert config_notes(config_from_args(_parser().parse_args(["--vmc-stream", "bob", "--input", "none"]))) == []
    osc_off = config_from_args(_parser().parse_args(["--set", 'osc.targets=["127.0.0.1:9100"]']))
    assert any("osc.enabled" in n for n in config_notes(osc_off))
    assert config_notes(StreamConfig()) == []
