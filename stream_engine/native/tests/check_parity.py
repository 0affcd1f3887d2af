"""ctest driver: run msync_stream on the fixture audio and compare with the Python runtime's reference.

    python check_parity.py --binary build/msync_stream --data build/native_test_data --case wav_s16_seed

Cases (make_reference.py writes the data and the references):

- wav_s16_seed: 16-bit WAV, seeded uniform(0,1) states (--seed), the model's reference face, f32 output; also
  checks that the native seeded start state equals make_reference's re-implementation bit for bit;
- raw_f32_stdin_face: raw float32 PCM piped through stdin, --reference-face JSON, CSV on stdout;
- wav_f32_initial_state: float WAV, a numpy-drawn start state loaded with --initial-state, --drop-warmup;
- raw_s16_file_csv: raw int16 file, CSV to a file, --timings;
- bench_batch: --bench at batch 3 prints a well-formed JSON summary;
- tail_counts: with --drop-warmup, N samples give ceil(N / samples_per_frame) frames (floor with --no-pad),
  the look-ahead tail included, for N = 0, 1, 50 ms, one frame, 20 frames - 2 samples; the last frame's
  time_ms is (frames - 1) x the frame duration.

Every stream case also compares the final state (--dump-state). Exit 1 when anything differs by more than --tol.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def run(cmd: list[str], stdin_path: Path | None = None) -> subprocess.CompletedProcess:
    print("$ " + " ".join(cmd) + (f" < {stdin_path}" if stdin_path else ""), flush=True)
    with open(stdin_path, "rb") if stdin_path else open("/dev/null", "rb") as fin:
        proc = subprocess.run(cmd, stdin=fin, capture_output=True, timeout=240)
    sys.stderr.write(proc.stderr.decode(errors="replace"))
    if proc.returncode != 0:
        raise SystemExit(f"FAIL: exit status {proc.returncode}")
    return proc


def read_csv(text: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lines = text.strip().splitlines()
    header = lines[0].split(",")
    assert header[:3] == ["step", "time_ms", "step_us"], header[:3]
    assert len(header) == 3 + shape[0] * shape[1], len(header)
    rows = np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]], dtype=np.float64)
    return rows[:, 0].astype(int), rows[:, 2], rows[:, 3:].astype(np.float32).reshape(-1, *shape)


def compare(name: str, got: np.ndarray, want: np.ndarray, tol: float) -> float:
    if got.shape != want.shape:
        raise SystemExit(f"FAIL {name}: shape {got.shape}, reference {want.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
    print(f"{name}: max |C++ - Python| = {diff:.3g} over {got.shape} (tol {tol:g})")
    if not diff <= tol:
        raise SystemExit(f"FAIL {name}: {diff:.3g} > {tol:g}")
    return diff


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="msync_parity_") as td:
        return check(Path(td))


def check(tmp: Path) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--case", required=True)
    p.add_argument("--tol", type=float, default=1e-4)
    a = p.parse_args()
    data = Path(a.data)
    m = json.loads((data / "manifest.json").read_text())
    shape = tuple(m["landmark_shape"])
    base = [a.binary, "--model", m["model"]]

    if a.case == "bench_batch":
        proc = run(base + ["--bench", "5", "--batch", "3", "--warmup", "1"])
        s = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        assert s["batch"] == 3 and s["steps"] == 5 and s["threads"] == 1, s
        assert 0 < s["p50_us"] <= s["p99_us"] <= s["max_us"], s
        print(f"bench ok: p50 {s['p50_us']:.0f} us at batch 3")
        return 0

    if a.case == "tail_counts":
        spf = int(m["samples_per_frame"])
        frame_ms = 1000.0 * spf / int(m["sample_rate_hz"])
        for n in (0, 1, 800, spf, 20 * spf - 2):
            raw = tmp / f"n{n}.raw"
            raw.write_bytes(np.zeros(n, "<i2").tobytes())
            for extra, want in (([], -(-n // spf)), (["--no-pad"], n // spf)):
                proc = run(base + ["--raw-s16", str(raw), "--drop-warmup", "--quiet"] + extra)
                rows = proc.stdout.decode().strip().splitlines()[1:]
                if len(rows) != want:
                    raise SystemExit(f"FAIL tail_counts: {n} samples {extra}: {len(rows)} frames, want {want}")
                if rows and abs(float(rows[-1].split(",")[1]) - (want - 1) * frame_ms) > 1e-6:
                    raise SystemExit(f"FAIL tail_counts: last time_ms {rows[-1].split(',')[1]}")
            print(f"{n} samples: {-(-n // spf)} frames ({n // spf} with --no-pad)")
        print("PASS tail_counts")
        return 0

    state_file = tmp / "state.f32"
    lookahead = int(m["lookahead_frames"])
    if a.case == "wav_s16_seed":
        # The seeded start state alone: no audio -> 0 steps -> the dumped state is the initial one.
        empty = tmp / "empty.raw"
        empty.write_bytes(b"")
        run(
            base
            + [
                "--raw-f32",
                str(empty),
                "--seed",
                str(m["seed"]),
                "--dump-state",
                str(state_file),
                "--quiet",
                "--out",
                str(tmp / "none.csv"),
            ]
        )
        got0 = np.fromfile(state_file, dtype="<f4")
        want0 = np.fromfile(data / "native_seed_state.f32", dtype="<f4")
        if not np.array_equal(got0, want0):
            raise SystemExit("FAIL: the native seeded start state differs from make_reference's splitmix64")
        print(f"seeded start state: identical ({got0.size} floats)")
        out = tmp / "lm.f32"
        run(
            base
            + [
                "--wav",
                str(data / "speech_s16.wav"),
                "--seed",
                str(m["seed"]),
                "--format",
                "f32",
                "--out",
                str(out),
                "--dump-state",
                str(state_file),
            ]
        )
        got, ref = np.fromfile(out, dtype="<f4").reshape(-1, *shape), "seeded"
    elif a.case == "raw_f32_stdin_face":
        proc = run(
            base
            + [
                "--raw-f32",
                "-",
                "--seed",
                str(m["face_seed"]),
                "--reference-face",
                str(data / "face.json"),
                "--dump-state",
                str(state_file),
            ],
            stdin_path=data / "speech_f32.raw",
        )
        steps, _, got = read_csv(proc.stdout.decode(), shape)
        assert np.array_equal(steps, np.arange(len(steps))), "step column"
        ref = "face"
    elif a.case == "wav_f32_initial_state":
        out = tmp / "lm.f32"
        run(
            base
            + [
                "--wav",
                str(data / "speech_f32.wav"),
                "--initial-state",
                str(data / "initial_state.f32"),
                "--format",
                "f32",
                "--out",
                str(out),
                "--drop-warmup",
                "--dump-state",
                str(state_file),
            ]
        )
        got, ref = np.fromfile(out, dtype="<f4").reshape(-1, *shape), "initial_state"
    elif a.case == "raw_s16_file_csv":
        out, timings = tmp / "lm.csv", tmp / "t.txt"
        run(
            base
            + [
                "--raw-s16",
                str(data / "speech_s16.raw"),
                "--seed",
                str(m["seed"]),
                "--out",
                str(out),
                "--timings",
                str(timings),
                "--summary-json",
                str(tmp / "s.json"),
                "--dump-state",
                str(state_file),
            ]
        )
        steps, step_us, got = read_csv(out.read_text(), shape)
        t = np.loadtxt(timings)
        assert t.shape == (m["steps"],) and np.allclose(t, step_us, atol=1e-3), "timings file vs CSV column"
        s = json.loads((tmp / "s.json").read_text())
        assert s["steps"] == m["steps"] and abs(s["audio_s"] - m["samples"] / m["sample_rate_hz"]) < 1e-6, s
        ref = "seeded"
    else:
        raise SystemExit(f"unknown case {a.case!r}")

    want = np.load(data / f"ref_{ref}.npy")
    if a.case == "wav_f32_initial_state":
        want = want[lookahead:]
    diff = compare(f"{a.case} landmarks", got, want, a.tol)
    sdiff = compare(
        f"{a.case} final state",
        np.fromfile(state_file, dtype="<f4"),
        np.fromfile(data / f"ref_{ref}_state.f32", dtype="<f4"),
        a.tol,
    )
    print(f"PASS {a.case}: {got.shape[0]} steps of {m['audio_source']}; landmarks {diff:.3g}, state {sdiff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
