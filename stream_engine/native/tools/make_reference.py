"""Reference data for the native runtime's parity tests: what the Python runtime outputs for a real speech clip.

    python stream_engine/native/tools/make_reference.py --out-dir build/native_test_data [--model M.onnx]

Writes into --out-dir (the ctest fixture `native_reference` runs this):

- the model: --model if given, else $MSYNC_TEST_MODEL if set (tests/test_cpp_runtime.py passes the pytest session's
  shared export this way), else stream_engine/models/default.onnx if it exists, else an untrained generator
  exported once to `model.onnx` (velocity_scale 2e-4 keeps its rollout bounded; tests/export_helpers.py);
- the audio, ~10 s of speech ending in a partial step: `speech_s16.wav` (16-bit), `speech_f32.wav` (float),
  `speech_s16.raw` / `speech_f32.raw` (headerless little-endian mono) at the model's rate;
- `face.json` (a custom identity) and `initial_state.f32` (a numpy-drawn start state, states in contract order);
- `ref_<case>.npy` (steps, num_landmarks, landmark_dims) and `ref_<case>_state.f32` (final state) from
  :class:`stream_engine.runtime.onnxrt.OnnxStepRunner` with one intra-op thread, cutting the audio with
  :class:`stream_engine.framing.AudioFramer` (the trailing partial step padded with silence);
- `manifest.json`: the model, the audio's source, the cases and their command-line options.

The speech comes from the dataset's clips (`$MSYNC_DATA_DIR/clips/*.flac`, default ../shared/data beside the
repository), else from espeak-ng, else a synthetic voiced signal; the manifest says which.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
SECONDS = 10.0
SEED_CASE = 7
FACE_SEED = 3

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix_uniform(seed: int, start: int, n: int) -> np.ndarray:
    """The native runtime's seeded uniform(0,1) stream (msync::UniformFill in runtime.h), values start..start+n-1."""
    with np.errstate(over="ignore"):
        k = np.arange(start + 1, start + n + 1, dtype=np.uint64)
        z = np.uint64(seed) + k * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float64) / 16777216.0).astype(np.float32)


def native_initial_state(contract, seed: int, face: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Batch-1 start state exactly as msync::StepStream builds it with this seed (and face)."""
    state, counter = {}, 0
    for spec in contract.states:
        shape = spec.concrete_shape(1)
        n = int(np.prod(shape))
        if spec.init == "zeros":
            state[spec.name] = np.zeros(shape, np.float32)
        elif spec.init == "uniform(0,1)":
            state[spec.name] = splitmix_uniform(seed, counter, n).reshape(shape)
            counter += n
        else:
            f = contract.reference_face_array if face is None else np.asarray(face, np.float32)
            state[spec.name] = f.reshape(shape).copy()
    return state


def resolve_model(arg: str, out_dir: Path) -> tuple[Path, str]:
    import os

    if not arg and os.environ.get("MSYNC_TEST_MODEL"):
        arg = os.environ["MSYNC_TEST_MODEL"]
    if arg:
        p = Path(arg)
        if not p.is_file():
            sys.exit(f"make_reference: --model {p} does not exist")
        return p.resolve(), "given"
    default = REPO / "stream_engine" / "models" / "default.onnx"
    if default.is_file():
        return default, "stream_engine/models/default.onnx"
    out = out_dir / "model.onnx"
    if not out.is_file():
        from stream_engine.cli import main

        print(f"make_reference: exporting an untrained generator to {out} (once)", flush=True)
        tmp = out.with_suffix(".tmp.onnx")
        rc = main(["export", "--random-init", "--seed", "0", "--set", "velocity_scale=0.0002", "--out", str(tmp)])
        if rc != 0:
            sys.exit(f"make_reference: export failed ({rc})")
        tmp.replace(out)
    return out, "random-init export (velocity_scale 2e-4)"


def load_speech(rate: int, seconds: float) -> tuple[np.ndarray, str]:
    """(samples, description): real speech when available."""
    import os

    from stream_engine.audio_io import load_audio

    need = int(round(seconds * rate))
    data = Path(os.environ.get("MSYNC_DATA_DIR", REPO.parent / "shared" / "data"))
    clips = sorted((data / "clips").glob("*.flac"))
    pieces, total, used = [], 0, []
    for p in clips:
        if total >= need:
            break
        a = load_audio(p, rate)
        pieces.append(a)
        total += a.size
        used.append(p.name)
    if total >= need:
        return np.concatenate(pieces)[:need].astype(np.float32), f"dataset clips {used}"
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as td:
            wav = Path(td) / "s.wav"
            text = (
                "The quick brown fox jumps over the lazy dog. Speech drives the mouth, the jaw and the "
                "eyebrows of the face, frame by frame, in real time."
            )
            subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
            a = load_audio(wav, rate)
        a = np.tile(a, int(np.ceil(need / a.size)))[:need]
        return a.astype(np.float32), "espeak-ng synthetic speech"
    t = np.arange(need) / rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    voiced = np.sign(np.sin(2 * np.pi * np.cumsum(f0) / rate)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    noise = np.random.default_rng(0).standard_normal(need)
    return (0.2 * voiced + 0.02 * noise).astype(np.float32), "synthetic voiced signal (no clips, no espeak-ng)"


def write_wav_s16(path: Path, pcm16: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16.astype("<i2").tobytes())


def write_wav_f32(path: Path, x: np.ndarray, rate: int) -> None:
    data = x.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    path.write_bytes(
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


def run_reference(runner, audio: np.ndarray, state: dict) -> tuple[np.ndarray, dict]:
    from stream_engine.framing import AudioFramer

    framer = AudioFramer(runner.contract.samples_per_frame)
    lookahead = np.zeros((runner.contract.lookahead_frames, runner.contract.samples_per_frame), np.float32)
    # The look-ahead tail: L steps of silence after the padded last step, so every input frame is emitted.
    steps = np.concatenate([framer.push(audio), framer.flush(pad=True), lookahead])
    frames = []
    for row in steps:
        lm, state = runner.step(row[None], state)
        frames.append(lm[0])
    return np.stack(frames).astype(np.float32), state


def state_bytes(contract, state: dict) -> bytes:
    return b"".join(np.ascontiguousarray(state[s.name], np.float32).tobytes() for s in contract.states)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--model", default="", help="ONNX step model (default: see the module docstring)")
    p.add_argument("--seconds", type=float, default=SECONDS)
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    from stream_engine.runtime.base import initial_state
    from stream_engine.runtime.onnxrt import OnnxStepRunner

    model, model_source = resolve_model(args.model, out)
    runner = OnnxStepRunner(model, threads=1)
    c = runner.contract
    rate, spf = c.sample_rate_hz, c.samples_per_frame
    # Half a step more than whole steps: the last step is padded (by both runtimes).
    n = (int(round(args.seconds * rate)) // spf) * spf + spf // 2
    speech, source = load_speech(rate, n / rate)
    pcm16 = np.clip(np.round(speech * 32767.0), -32768, 32767).astype(np.int16)
    s16 = pcm16.astype(np.float32) / 32768.0  # what both runtimes read back from 16-bit PCM
    f32 = speech.astype(np.float32)
    write_wav_s16(out / "speech_s16.wav", pcm16, rate)
    (out / "speech_s16.raw").write_bytes(pcm16.astype("<i2").tobytes())
    write_wav_f32(out / "speech_f32.wav", f32, rate)
    (out / "speech_f32.raw").write_bytes(f32.astype("<f4").tobytes())

    face = c.reference_face_array + np.random.default_rng(FACE_SEED).uniform(-0.02, 0.02, c.reference_face_array.shape)
    face = face.astype(np.float32)
    (out / "face.json").write_text(json.dumps({"landmarks": face.tolist(), "note": "parity-test identity"}))
    start = initial_state(c, 1, rng=np.random.default_rng(5))
    (out / "initial_state.f32").write_bytes(state_bytes(c, start))

    cases = {
        "seeded": (s16, native_initial_state(c, SEED_CASE)),
        "face": (f32, native_initial_state(c, FACE_SEED, face)),
        "initial_state": (f32, start),
    }
    for name, (audio, state) in cases.items():
        frames, final = run_reference(runner, audio, state)
        np.save(out / f"ref_{name}.npy", frames)
        (out / f"ref_{name}_state.f32").write_bytes(state_bytes(c, final))
    (out / "native_seed_state.f32").write_bytes(state_bytes(c, native_initial_state(c, SEED_CASE)))

    manifest = {
        "model": str(model),
        "model_source": model_source,
        "model_version": c.model_version,
        "audio_source": source,
        "sample_rate_hz": rate,
        "samples": int(n),
        "samples_per_frame": int(spf),
        "steps": int(frames.shape[0]),
        "seed": SEED_CASE,
        "face_seed": FACE_SEED,
        "state_names": list(c.state_names),
        "lookahead_frames": c.lookahead_frames,
        "landmark_shape": [c.num_landmarks, c.landmark_dims],
        "landmark_range": [float(frames.min()), float(frames.max())],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"make_reference: {frames.shape[0]} steps of {source} through {model} ({model_source}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
