"""`msync stream` end to end (subprocess) with the fake runner, its config file, and its clear errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

from stream_engine.config import ConfigError, StreamConfig, build, load_config

from fakes import speechlike

TESTS = Path(__file__).resolve().parent
FAKE = "python:fakes:FakeRunner"


def msync(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "stream_engine.cli", "stream", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )


def msync_here(capsys, *args: str) -> tuple[int, str, str]:
    """`msync stream ...` in this process (fast): (exit code, stdout, stderr)."""
    from stream_engine.cli import main

    code = main(["stream", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def udp_receiver() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recvfrom(65536)[0])
        except (TimeoutError, BlockingIOError):
            return out


@pytest.fixture
def wav(tmp_path) -> Path:
    path = tmp_path / "talk.wav"
    soundfile.write(str(path), speechlike(16000 * 2), 16000)
    return path


def test_a_file_as_fast_as_possible_to_osc_and_vmc(wav):
    osc, vmc = udp_receiver(), udp_receiver()
    r = msync(
        "--model",
        FAKE,
        "--input",
        str(wav),
        "--fast",
        "--port",
        "0",
        "--quiet",
        "--osc",
        f"127.0.0.1:{osc.getsockname()[1]}",
        "--vmc",
        f"127.0.0.1:{vmc.getsockname()[1]}",
    )
    assert r.returncode == 0, r.stderr
    assert "algorithmic latency 120 ms" in r.stderr and "viewer http://127.0.0.1:" in r.stderr
    frames = [d for d in drain(osc) if b"/msync/frame" in d]
    assert 30 <= len(frames) <= 50  # 2 s = 50 frames; UDP on a loaded machine may drop a few
    assert any(b"/VMC/Ext/Blend/Apply" in d for d in drain(vmc))


def test_default_speech_input_runs_in_real_time_for_a_duration():
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    vmc = udp_receiver()
    r = msync("--model", FAKE, "--duration", "2.5", "--port", "0", "--vmc", f"127.0.0.1:{vmc.getsockname()[1]}")
    assert r.returncode == 0, r.stderr
    assert "input speech" in r.stderr and "engine p50" in r.stderr  # the live latency line
    bundles = drain(vmc)
    assert 20 <= len(bundles) // 2 <= 70  # about 25 fps for ~2 s once speech starts


def test_clear_errors_for_models_inputs_and_config(tmp_path, capsys, caplog):
    code, _, err = msync_here(capsys, "--model", str(tmp_path / "missing.onnx"), "--port", "0")
    assert code == 2 and "not found" in err and "msync export" in err
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a model")
    code, _, err = msync_here(capsys, "--model", str(corrupt), "--port", "0")
    assert code == 2 and "cannot use model" in err
    code, _, err = msync_here(capsys, "--model", FAKE, "--lookahead", "3", "--port", "0")
    assert code == 2 and "supports only look-ahead L=2" in err
    code, out, err = msync_here(
        capsys, "--model", FAKE, "--input", str(tmp_path / "nope.wav"), "--port", "0", "--quiet"
    )
    # A missing or undecodable file stops before the server listens: one line, no traceback, no viewer address.
    assert code == 2 and "nope.wav: no such file" in err and "Traceback" not in err and "viewer" not in out + err
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all")
    code, out, err = msync_here(capsys, "--model", FAKE, "--input", str(text), "--port", "0", "--quiet", "--no-vmc")
    assert code == 2 and "cannot decode audio" in err and "Traceback" not in err and "viewer" not in out + err
    code, _, err = msync_here(
        capsys, "--model", FAKE, "--input", "mic", "--device", "no-such-device", "--port", "0", "--quiet", "--no-vmc"
    )
    assert code == 2 and "input failed" in err and "Traceback" not in err
    assert not [r for r in caplog.records if "msync-input" in r.getMessage()]  # one line, not a logged traceback
    code, _, err = msync_here(capsys, "--model", FAKE, "--vmc", "nowhere", "--port", "0")
    assert code == 2 and "host:port" in err
    code, _, err = msync_here(capsys, "--host", "0.0.0.0", "--model", FAKE)
    assert code == 2 and "without a token" in err and "--insecure" in err
    bad_host = tmp_path / "remote.json"  # in a config file a remote host also needs server.allow_remote
    bad_host.write_text('{"server": {"host": "0.0.0.0", "token": "t"}}')
    code, _, err = msync_here(capsys, "--config", str(bad_host), "--model", FAKE)
    assert code == 2 and "allow_remote" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[vmc]\ntargetz = []\n")
    code, _, err = msync_here(capsys, "--config", str(bad))
    assert code == 2 and "vmc.targetz" in err


def test_port_in_use_is_a_clear_error(wav, capsys):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    code, _, err = msync_here(
        capsys, "--model", FAKE, "--input", str(wav), "--port", str(busy.getsockname()[1]), "--quiet", "--no-vmc"
    )
    busy.close()
    assert code == 2 and "cannot listen" in err and "--port" in err
    assert "warming up" not in err  # found before the engine's warm-up, not seconds later


def test_an_address_of_no_interface_says_check_host(capsys):
    code, _, err = msync_here(capsys, "--model", FAKE, "--host", "192.0.2.1", "--insecure", "--port", "18999")
    assert code == 2 and "check --host" in err  # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): no interface has it


def test_config_file_and_flag_overrides(tmp_path, capsys):
    cfg_path = tmp_path / "msync.toml"
    cfg_path.write_text("""
duration_s = 3.5
[model]
lookahead_frames = 2
[input]
kind = "mic"
device = "USB"
[vmc]
targets = ["127.0.0.1:39539", "127.0.0.1:39540"]
blend_names = "vrm1"
[signals]
blink_mode = "auto"
auto_blink_interval_s = [1.0, 3.0]
[signals.mouth_filter]
min_cutoff_hz = 2.0
""")
    cfg = load_config(cfg_path)
    assert (
        cfg.input.kind == "mic"
        and dict(cfg.vmc.blend_names)["A"] == "aa"
        and cfg.signals.mouth_filter.min_cutoff_hz == 2.0
    )
    assert cfg.signals.auto_blink_interval_s == (1.0, 3.0) and cfg.duration_s == 3.5
    code, out, err = msync_here(
        capsys, "--config", str(cfg_path), "--port", "9999", "--input", "none", "--print-config"
    )
    assert code == 0, err
    printed = json.loads(out)
    assert printed["server"]["port"] == 9999 and printed["input"]["kind"] == "none"
    assert printed["vmc"]["targets"] == ["127.0.0.1:39539", "127.0.0.1:39540"]
    json_path = tmp_path / "c.json"
    json_path.write_text(json.dumps({"engine": {"max_streams": 4}, "server": {"token": "t"}}))
    assert load_config(json_path).engine.max_streams == 4
    for bad, match in (
        ({"engine": {"max_streams": "many"}}, "engine.max_streams"),
        ({"input": {"kind": "radio"}}, "input.kind"),
        ({"nope": 1}, "nope"),
    ):
        with pytest.raises(ConfigError, match=match):
            build(StreamConfig, bad)


def test_list_devices_never_crashes(capsys):
    code, out, err = msync_here(capsys, "--list-devices")
    assert code == 0 or (code == 2 and ("PortAudio" in err or "sounddevice" in err))


def test_an_out_path_of_the_wrong_kind_is_one_line_in_any_command(tmp_path, capsys):
    """`--out` under a file (or onto an existing file where a folder is made): the path and the reason, exit 1."""
    import numpy as np
    import soundfile

    from stream_engine.cli import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    soundfile.write(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
    assert main(["animate", str(tmp_path / "a.wav"), "--out", str(afile / "x.json"), "--quiet"]) in (1, 2)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "afile" in err
