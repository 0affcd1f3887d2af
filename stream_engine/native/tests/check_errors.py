"""ctest driver: msync_stream refuses bad models and bad audio with a clear message and a distinct exit status.

    python check_errors.py --binary build/msync_stream --data build/native_test_data

Models: missing, a directory, random bytes, a truncated file (3 = model error); no contract, an unsupported
contract version, a contract the graph does not honour (audio of 320 samples declared for a 640-sample graph; a
renamed state) (4 = contract error). The same bad models are also given to the Python runtime, which must refuse
them too. Audio: a WAV at the wrong rate, a file that is not WAV, raw PCM at a stated wrong rate, a torn int16
sample (5 = audio error). Inputs: a wrong-size reference face, one in pixels, or a wrong-size initial state (1), bad
options (2); samples beyond [-1, 1] clipped as the Python engine clips them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

EXIT_FAILURE, EXIT_USAGE, EXIT_MODEL, EXIT_CONTRACT, EXIT_AUDIO = 1, 2, 3, 4, 5


def with_metadata(src: Path, dst: Path, edit) -> Path:
    """A copy of the model whose msync.* metadata went through edit(dict) (None values delete a key)."""
    import onnx

    m = onnx.load(str(src))
    meta = {p.key: p.value for p in m.metadata_props}
    edit(meta)
    del m.metadata_props[:]
    for k, v in meta.items():
        if v is not None:
            m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(dst))
    return dst


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="msync_errors_") as td:
        return check(Path(td))


def check(tmp: Path) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True)
    p.add_argument("--data", required=True)
    a = p.parse_args()
    data = Path(a.data)
    man = json.loads((data / "manifest.json").read_text())
    model = Path(man["model"])
    failures: list[str] = []

    def expect(label: str, args: list[str], status: int, needle: str, stdin: bytes = b"") -> None:
        proc = subprocess.run([a.binary, *args], input=stdin, capture_output=True, timeout=120)
        err = proc.stderr.decode(errors="replace").strip()
        first = err.splitlines()[0] if err else ""
        ok = proc.returncode == status and needle in err
        print(f"{'ok  ' if ok else 'FAIL'} {label}: exit {proc.returncode} (want {status}): {first[:300]}")
        if not ok:
            failures.append(f"{label}: exit {proc.returncode}, stderr {err[:500]!r}; wanted {status} and {needle!r}")

    wav = ["--wav", str(data / "speech_s16.wav"), "--quiet", "--out", str(tmp / "x.csv")]

    # ---------------------------------------------------------------------------------------------- models
    corrupt = tmp / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    truncated = tmp / "truncated.onnx"
    raw = model.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])

    def no_contract(meta):
        for k in list(meta):
            if k.startswith("msync."):
                meta[k] = None

    def version2(meta):
        meta["msync.contract_version"] = "2"

    def half_step(meta):  # internally consistent (320 samples at 50 fps) but the graph takes 640
        spf = int(meta["msync.samples_per_frame"]) // 2
        meta["msync.samples_per_frame"] = str(spf)
        meta["msync.fps"] = str(int(meta["msync.sample_rate_hz"]) // spf)
        audio = json.loads(meta["msync.audio_input"])
        audio["shape"] = ["B", spf]
        meta["msync.audio_input"] = json.dumps(audio)
        fe = json.loads(meta["msync.frontend"])
        fe["samples_per_landmark_frame"] = spf
        meta["msync.frontend"] = json.dumps(fe)

    def renamed_state(meta):
        states = json.loads(meta["msync.states"])
        states[-1]["name"] = states[-1]["name"] + "_renamed"
        meta["msync.states"] = json.dumps(states)

    bad_models = {
        "no_contract": (with_metadata(model, tmp / "no_contract.onnx", no_contract), "no msync contract"),
        "version2": (with_metadata(model, tmp / "v2.onnx", version2), "unsupported msync contract version '2'"),
        "half_step": (
            with_metadata(model, tmp / "half.onnx", half_step),
            "the graph does not match its contract: input",
        ),
        "renamed_state": (with_metadata(model, tmp / "renamed.onnx", renamed_state), "graph lacks inputs"),
    }
    expect("missing model", ["--model", str(tmp / "nope.onnx"), *wav], EXIT_MODEL, "no such model file")
    expect("directory as model", ["--model", str(tmp), *wav], EXIT_MODEL, "not a regular file")
    expect("corrupt model", ["--model", str(corrupt), *wav], EXIT_MODEL, "cannot load as an ONNX model")
    expect("truncated model", ["--model", str(truncated), *wav], EXIT_MODEL, "cannot load as an ONNX model")
    for label, (path, needle) in bad_models.items():
        expect(f"contract: {label}", ["--model", str(path), *wav], EXIT_CONTRACT, needle)

    # The Python runtime refuses the same files (same error classes as the native exit statuses).
    from stream_engine.contract import ContractError, ModelLoadError
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    for label, path, cls in [
        ("corrupt", corrupt, ModelLoadError),
        ("truncated", truncated, ModelLoadError),
        *[(k, v[0], ContractError) for k, v in bad_models.items()],
    ]:
        try:
            OnnxStepRunner(path)
            failures.append(f"python runtime accepted the {label} model")
            print(f"FAIL python runtime accepted the {label} model")
        except cls as exc:
            print(f"ok   python runtime refuses {label}: {type(exc).__name__}")

    # ---------------------------------------------------------------------------------------------- audio
    rate = int(man["sample_rate_hz"])
    low = tmp / "low.wav"
    with wave.open(str(low), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate // 2)
        w.writeframes(np.zeros(rate, "<i2").tobytes())
    good = ["--model", str(model), "--quiet", "--out", str(tmp / "x.csv")]
    expect("wav at half rate", [*good, "--wav", str(low)], EXIT_AUDIO, f"the model needs {rate} Hz audio; resample")
    expect("not a wav", [*good, "--wav", str(data / "speech_s16.raw")], EXIT_AUDIO, "not a WAV file")
    expect("missing wav", [*good, "--wav", str(tmp / "nope.wav")], EXIT_AUDIO, "cannot open")
    expect(
        "raw at a stated wrong rate",
        [*good, "--raw-f32", "-", "--rate", str(rate * 2)],
        EXIT_AUDIO,
        f"the model needs {rate} Hz",
    )
    expect("torn int16 sample", [*good, "--raw-s16", "-"], EXIT_AUDIO, "middle of a sample", stdin=b"\x00" * 1281)

    # ---------------------------------------------------------------------------------------------- inputs
    face = tmp / "face.json"
    face.write_text(json.dumps([[0.5, 0.5]] * 3))
    expect(
        "wrong-size face",
        [*good, "--wav", str(data / "speech_s16.wav"), "--reference-face", str(face)],
        EXIT_FAILURE,
        "the reference face must be a finite",
    )
    px = tmp / "px_face.json"
    px.write_text(json.dumps([[0.5 * 512, 0.5 * 512]] * 68))  # pixels: refused, not taken as crop coordinates
    expect(
        "reference face in pixels",
        [*good, "--wav", str(data / "speech_s16.wav"), "--reference-face", str(px)],
        EXIT_FAILURE,
        "normalised crop coordinates",
    )
    # finite samples beyond [-1, 1] are clipped inside StepStream::Step, as the Python engine clips them
    outs = []
    for level in (1.0, 5.0):
        out = tmp / f"clip_{level:g}.f32"
        proc = subprocess.run(
            [a.binary, "--model", str(model), "--quiet", "--raw-f32", "-", "--format", "f32", "--out", str(out)],
            input=np.full(16000, level, "<f4").tobytes(),
            capture_output=True,
            timeout=120,
        )
        outs.append(out.read_bytes() if proc.returncode == 0 else b"")
    ok = outs[0] == outs[1] and len(outs[0]) > 0
    print(f"{'ok  ' if ok else 'FAIL'} samples beyond [-1, 1] are clipped: 5.0 gives 1.0's frames")
    if not ok:
        failures.append("samples of 5.0 did not give the frames of 1.0 (or the run failed)")
    st = tmp / "state.f32"
    st.write_bytes(b"\x00" * 12)
    expect(
        "wrong-size initial state",
        [*good, "--wav", str(data / "speech_s16.wav"), "--initial-state", str(st)],
        EXIT_FAILURE,
        "12 bytes; the model's states take",
    )
    expect("no input", ["--model", str(model)], EXIT_USAGE, "give exactly one of")
    expect("unknown option", ["--model", str(model), "--frobnicate"], EXIT_USAGE, "unknown option '--frobnicate'")
    expect("bad format", [*good, "--wav", "x.wav", "--format", "json"], EXIT_USAGE, "--format is csv or f32")

    if failures:
        print(f"\n{len(failures)} failure(s):\n" + "\n".join(failures))
        return 1
    print("PASS errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
