"""The rig signals' speech gate: the old fixed -50 dBFS gate against the adaptive one (`noise_floor.NoiseFloor`).

    python -m benchmarks.speech_gate [--data ../shared/data] [--clips 8] [--out benchmarks/results]

Both gates are run on the same landmarks in one process (the old gate is `SignalConfig(silence_dbfs=-50,
noise_margin_db=0, noise_smoothing=0)`, which decides exactly as the fixed gate did; the new one is the default `SignalConfig()`):

- quiet speech: `../shared/cases/quiet-speech-gate/speech_normal_level.wav` scaled by 0 ... -55 dB through the
  shipped model (`animation.landmark_frames`, tail flushed); mean `mouth_open` on the frames where the normal level's is > 0.3,
  over the normal level's (the case's measure), and with no gate at all (what the model itself gives);
- non-speech: each kind of the evaluation's non-speech set (`training.eval.rest.sound`: silence, noise -48 and
  -42 dBFS, hum, chord, breathing) appended after 4 s of a real clip's speech, or inserted in its middle (steady
  kinds also under the speech), for `--clips` clips of at least 4.2 s spread over the manifest, through the
  shipped model: `mouth_open` p50 / p90 / mean in the non-speech segment after its first 200 ms, and the speech
  frames' `mouth_open` kept (mean over the frames where the old gate's is > 0.3, new over old);
- real landmarks: the dlib landmarks of 120 real clips with their own audio (as `benchmarks.mouth_signals`):
  `mouth_open` kept on the frames where the old gate's is > 0.3, and the share of frames the gate calls speech.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_info, write_report
from stream_engine.signals import SignalConfig, SignalExtractor

SPF = 640
GATES = {
    "old (fixed -50 dBFS)": SignalConfig(silence_dbfs=-50.0, noise_margin_db=0.0, noise_smoothing=0.0),
    "adaptive": SignalConfig(),
}
NO_GATE = SignalConfig(silence_dbfs=-500.0, noise_margin_db=0.0, noise_smoothing=0.0)
OLD, NEW = tuple(GATES)


def derive_signals(cfg: SignalConfig, lm: np.ndarray, lv: np.ndarray, ahead: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(T,) mouth_open and (T,) silent of one stream."""
    ex = SignalExtractor(cfg, ref, 0)
    rows = [ex.update(lm[t], 0.04 * t, float(lv[t]), float(ahead[t])) for t in range(len(lm))]
    return np.array([[s.mouth_open, s.silent] for s in rows])


def frame_levels(pcm: np.ndarray, n: int, lookahead: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame RMS level (dBFS, floor -120; `training.eval.viewer.frame_dbfs`) and the loudest of the next
    `lookahead` frames."""
    from training.eval.viewer import frame_dbfs

    lv = frame_dbfs(pcm, 0, n)
    padded = np.concatenate([lv, np.full(lookahead, -120.0)])
    return lv, np.array([padded[t + 1 : t + 1 + lookahead].max() for t in range(n)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = Path(__file__).resolve().parents[2] / "shared"
    p.add_argument("--data", default=str(root / "data"))
    p.add_argument("--cases", default=str(root / "cases"))
    p.add_argument("--clips", type=int, default=8, help="real clips for the non-speech set")
    p.add_argument("--real-clips", type=int, default=120, help="real clips for the real-landmark check")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    import soundfile

    from stream_engine.animation import landmark_frames
    from stream_engine.config import DEFAULT_MODEL_PATH
    from stream_engine.runtime import load_runner
    from training.eval.rest import KINDS, STEADY, sound

    runner = load_runner(DEFAULT_MODEL_PATH, threads=1)
    ref = np.asarray(runner.contract.reference_face, dtype=np.float64)

    def model(pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        frames = landmark_frames(runner, pcm.astype(np.float32))
        lm = np.stack([f.landmarks for f in frames]).astype(np.float64)
        return lm, np.array([f.audio_level_dbfs for f in frames]), np.array([f.audio_ahead_dbfs for f in frames])

    result: dict[str, Any] = {"machine": machine_info()}
    # quiet speech
    normal, _ = soundfile.read(Path(a.cases) / "quiet-speech-gate" / "speech_normal_level.wav", dtype="float64")
    base = None
    quiet = []
    for gain_db in (0.0, -30.0, -38.0, -45.0, -55.0):
        lm, lv, ah = model(normal * 10 ** (gain_db / 20))
        mo = {name: derive_signals(cfg, lm, lv, ah, ref)[:, 0] for name, cfg in {**GATES, "no gate": NO_GATE}.items()}
        if base is None:
            base = mo
        row: dict[str, Any] = {"gain_db": gain_db}
        for name, m in mo.items():
            sel = base[name] > 0.3
            row[name] = float(m[sel].mean() / base[name][sel].mean())
        quiet.append(row)
    result["quiet_speech"] = quiet

    rows = [r for r in csv.DictReader(open(Path(a.data) / "manifest.tsv"), delimiter="\t") if int(r["nan_frames"]) == 0]
    long = [r for r in rows if float(r["duration_s"]) >= 4.2]
    clips = [long[i] for i in np.linspace(0, len(long) - 1, a.clips).astype(int)]
    rng = np.random.default_rng(0)
    acc: dict[tuple[str, str, str], dict[str, list[np.ndarray]]] = {}
    for row in clips:
        speech, _ = soundfile.read(Path(a.data) / "clips" / f"{row['id']}.flac", dtype="float32")
        speech = speech[: 100 * SPF]
        for kind in KINDS:
            x = sound(kind, 175 * SPF, rng)
            under = x[75 * SPF :] if kind in STEADY else np.zeros(100 * SPF, np.float32)
            layouts = {
                "appended": (np.concatenate([speech, x[: 75 * SPF]]), 100, 175),
                "inserted": (
                    np.concatenate(
                        [speech[: 50 * SPF] + under[: 50 * SPF], x[: 75 * SPF], speech[50 * SPF :] + under[50 * SPF :]]
                    ),
                    50,
                    125,
                ),
            }
            for layout, (pcm, r0, r1) in layouts.items():
                lm, lv, ah = model(pcm)
                mo = {name: derive_signals(cfg, lm, lv, ah, ref)[:, 0] for name, cfg in GATES.items()}
                sel = np.concatenate([mo[OLD][:r0], mo[OLD][r1:]]) > 0.3
                for name, m in mo.items():
                    d = acc.setdefault((kind, layout, name), {"rest": [], "speech": []})
                    d["rest"].append(m[r0 + 5 : r1])
                    d["speech"].append(np.concatenate([m[:r0], m[r1:]])[sel])
    nonspeech = []
    for kind in KINDS:
        for layout in ("appended", "inserted"):
            entry: dict[str, Any] = {"kind": kind, "layout": layout}
            old_speech = np.concatenate(acc[(kind, layout, OLD)]["speech"])
            for name in GATES:
                rest = np.concatenate(acc[(kind, layout, name)]["rest"])
                kept = np.concatenate(acc[(kind, layout, name)]["speech"]).mean() / max(old_speech.mean(), 1e-9)
                entry[name] = {
                    "p50": float(np.percentile(rest, 50)),
                    "p90": float(np.percentile(rest, 90)),
                    "mean": float(rest.mean()),
                    "speech_kept": float(kept),
                }
            nonspeech.append(entry)
    result["nonspeech"] = {"clips": [r["id"] for r in clips], "rows": nonspeech}

    pick = [rows[i] for i in np.linspace(0, len(rows) - 1, min(a.real_clips, len(rows))).astype(int)]
    kept_by: dict[str, list[np.ndarray]] = {name: [] for name in GATES}
    speech_by: dict[str, int] = {name: 0 for name in GATES}
    sel_all, total = [], 0
    for row in pick:
        clip = Path(a.data) / "clips" / row["id"]
        lm = np.load(f"{clip}.lm68.npy").astype(np.float64)
        audio, _ = soundfile.read(f"{clip}.flac", dtype="float64")
        lv, ah = frame_levels(audio, len(lm))
        out = {name: derive_signals(cfg, lm, lv, ah, lm[0]) for name, cfg in GATES.items()}
        sel = out[OLD][:, 0] > 0.3
        total += len(lm)
        for name, o in out.items():
            kept_by[name].append(o[sel, 0])
            speech_by[name] += int((o[:, 1] == 0).sum())
        sel_all.append(out[OLD][sel, 0])
    old_mean = np.concatenate(sel_all).mean()
    result["real"] = {
        name: {
            "kept": float(np.concatenate(kept_by[name]).mean() / old_mean),
            "speech_share": speech_by[name] / max(total, 1),
        }
        for name in GATES
    }
    result["real"]["frames"] = total

    md = [
        "# The speech gate of the rig signals: fixed -50 dBFS vs adaptive (noise floor + margin)",
        "",
        "`python -m benchmarks.speech_gate` (module docstring). Shipped model, `mouth_open` of `SignalExtractor`.",
        "",
        "Quiet speech (`quiet-speech-gate`): mean mouth_open on the frames where the normal level's is > 0.3, "
        "over the normal level's:",
        "",
        "| gain | " + " | ".join([*GATES, "no gate"]) + " |",
        "|---|---|---|---|",
    ]
    md += [
        f"| {r['gain_db']:+.0f} dB | " + " | ".join(f"{r[n]:.2f}" for n in [*GATES, "no gate"]) + " |" for r in quiet
    ]
    md += [
        "",
        f"Non-speech after / inside real speech ({len(clips)} clips): mouth_open in the non-speech segment after "
        "200 ms (p50 / p90 / mean), and the speech frames' mouth_open kept (over the old gate's, frames where "
        "that is > 0.3):",
        "",
        "| kind | layout | " + " | ".join(f"{n}: non-speech" for n in GATES) + " | adaptive: speech kept |",
        "|---|---|---|---|---|",
    ]
    for e in nonspeech:
        cells = [f"{e[n]['p50']:.2f} / {e[n]['p90']:.2f} / {e[n]['mean']:.3f}" for n in GATES]
        md.append(f"| {e['kind']} | {e['layout']} | " + " | ".join(cells) + f" | {e[NEW]['speech_kept']:.2f} |")
    r = result["real"]
    md += [
        "",
        f"Real landmarks with their own audio ({len(pick)} clips, {total} frames): adaptive keeps "
        f"{r[NEW]['kept']:.3f} of the old gate's mouth_open on its frames > 0.3; frames called speech "
        f"{100 * r[OLD]['speech_share']:.1f} % (old) vs {100 * r[NEW]['speech_share']:.1f} % (adaptive).",
        "",
    ]
    m = result["machine"]
    md.append(f"Machine: {m['cpu']}, load {m['load_avg_1m']:.2f}, {m['time_utc']}.")
    write_report(a.out, "speech_gate", result, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
