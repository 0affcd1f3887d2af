"""The model-quality cases of `../shared/cases/` read from the raw landmarks, for one or more generators.

    python -m benchmarks.model_cases --model 0.2.0=training/weights/generator --model 0.3=runs/generator_v03 \
        --out benchmarks/results/model_cases_v03

Each model runs every case file as one fresh stream (`training.eval.generation.stream_rollout`, the same result
as the exported step) from its default reference face (the checkpoint's `reference_face`, what `msync stream`
uses without `--reference-face`), LSTM noise seed 7. Measured (inner-lip gap in IOD as
`training.metrics.viewer.lip_gap`, angles relative to the reference face as `head_angles`):

- silence-landmarks-open: the gap in the 6 s of digital silence after 200 ms (p50, p90, the last second's
  mean) and the time from the end of speech until the gap stays <= 0.03 IOD;
- noise-floor-mouth: the gap in the noise-only pauses (-48 dBFS fan noise; frames quieter than -40 dBFS for at
  least 10 frames, after 200 ms) against the gap p90 in speech;
- quiet-speech-gate: the gap's standard deviation over speech frames of the -38 dB file as a share of the
  normal-level file's, and the correlation of the two gap tracks;
- head-pose-bias: median yaw/pitch/roll over the speech file, and over the last 3 s of the silence file.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

CASES = Path("../shared/cases")
SPF = 640


def frame_dbfs(pcm: np.ndarray, n: int) -> np.ndarray:
    x = np.zeros(n * SPF)
    m = min(len(pcm), n * SPF)
    x[:m] = pcm[:m]
    return 20 * np.log10(np.sqrt((x.reshape(n, SPF) ** 2).mean(1)) + 1e-9)


def quiet_runs(level: np.ndarray, below: float, min_frames: int) -> np.ndarray:
    """(T,) bool: frames inside runs of at least `min_frames` frames quieter than `below` dBFS."""
    q = level < below
    out = np.zeros_like(q)
    edges = np.diff(np.concatenate([[0], q.astype(int), [0]]))
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        if b - a >= min_frames:
            out[a:b] = True
    return out


def run_model(name: str, path: str, seed: int = 7) -> dict:
    from stream_engine.audio_io import load_audio
    from training.eval.generation import load_model, stream_rollout
    from training.metrics import viewer as vm

    m = load_model(name, path, "cpu")
    ref = np.asarray(m.meta["reference_face"], np.float32)

    def roll(rel: str) -> tuple[np.ndarray, np.ndarray]:
        pcm = load_audio(CASES / rel)
        n = len(pcm) // SPF
        return stream_rollout(m, pcm, ref, seed, n, "cpu"), pcm

    out: dict = {"reference_gap": float(vm.lip_gap(ref[None])[0])}
    lm, pcm = roll("silence-landmarks-open/speech_then_6s_silence.wav")
    gap = vm.lip_gap(lm)
    s0 = int(round(2.9 * 25))
    out["silence"] = {
        "gap_p50": float(np.percentile(gap[s0 + 5 :], 50)),
        "gap_p90": float(np.percentile(gap[s0 + 5 :], 90)),
        "gap_last_s": float(gap[-25:].mean()),
        "time_to_rest_ms": vm.time_to_rest(gap[s0:]),
    }
    ang = vm.head_angles(lm[-75:], ref)
    out["silence_head_median_deg"] = [float(v) for v in np.median(ang, axis=0)]

    lm, pcm = roll("noise-floor-mouth/speech_pause_fan_noise_-48dBFS.wav")
    gap = vm.lip_gap(lm)
    level = frame_dbfs(pcm, len(lm))
    pause = quiet_runs(level, -40.0, 10)
    settled = pause & np.roll(pause, 5) & (np.arange(len(pause)) >= 5)  # 200 ms into each pause
    speech = level > -35.0
    out["noise"] = {
        "pause_frames": int(settled.sum()),
        "gap_pause_p50": float(np.percentile(gap[settled], 50)) if settled.any() else math.nan,
        "gap_pause_p90": float(np.percentile(gap[settled], 90)) if settled.any() else math.nan,
        "gap_speech_p90": float(np.percentile(gap[speech], 90)),
    }

    lm_n, pcm_n = roll("quiet-speech-gate/speech_normal_level.wav")
    lm_q, _ = roll("quiet-speech-gate/speech_-38dB.wav")
    g_n, g_q = vm.lip_gap(lm_n), vm.lip_gap(lm_q)
    sp = frame_dbfs(pcm_n, len(lm_n)) > -40.0
    out["quiet"] = {
        "gap_std_normal": float(g_n[sp].std()),
        "gap_std_quiet": float(g_q[sp].std()),
        "amplitude_share": float(g_q[sp].std() / max(g_n[sp].std(), 1e-9)),
        "r_quiet_vs_normal": float(np.corrcoef(g_q[sp], g_n[sp])[0, 1]),
        "gap_p90_quiet": float(np.percentile(g_q[sp], 90)),
    }

    lm, _ = roll("head-pose-bias/speech_10s.wav")
    ang = vm.head_angles(lm, ref)
    stats = vm.head_pose_stats(ang)
    out["head_speech"] = {k: float(v) for k, v in stats.items()}
    return out


def markdown(results: dict) -> str:
    rows = [
        "| model | silence gap p50 / p90 | silence last 1 s | time to rest | noise pause gap p50 / p90 "
        "| speech gap p90 | quiet amplitude share | r(quiet, normal) | head bias yaw/pitch/roll (speech) "
        "| head ranges yaw/pitch/roll | head median after 3 s of silence |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        s, n, q, h = r["silence"], r["noise"], r["quiet"], r["head_speech"]
        ttr = s["time_to_rest_ms"]
        rows.append(
            f"| {name} | {s['gap_p50']:.3f} / {s['gap_p90']:.3f} | {s['gap_last_s']:.3f} | "
            f"{'∞' if not math.isfinite(ttr) else f'{ttr:.0f} ms'} | "
            f"{n['gap_pause_p50']:.3f} / {n['gap_pause_p90']:.3f} | {n['gap_speech_p90']:.3f} | "
            f"{q['amplitude_share']:.2f} | {q['r_quiet_vs_normal']:.2f} | "
            f"{h['yaw_bias']:+.1f}° / {h['pitch_bias']:+.1f}° / {h['roll_bias']:+.1f}° | "
            f"{h['yaw_range']:.1f}° / {h['pitch_range']:.1f}° / {h['roll_range']:.1f}° | "
            + " / ".join(f"{v:+.1f}°" for v in r["silence_head_median_deg"])
            + " |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT")
    p.add_argument("--out", required=True, help="output stem: OUT.json and OUT.md")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    results = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        results[name] = run_model(name, path, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    md = markdown(results)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
