"""Does the derived mouth (sum of visemes, ARKit jawOpen) carry the face's inner-lip gap? Do visemes separate shapes?

    python -m benchmarks.mouth_signals [--data ../shared/data] [--clips 120] [--out benchmarks/results]

Two sources of landmarks, both turned into signals by `signals.SignalExtractor` with the default config:
- real: the dlib landmarks of real speakers (../shared/data clips), each clip's audio level driving the silence
  gate, the clip's closed-mouth frame as its neutral face;
- model: the shipped model's landmarks for the same clips' audio (`stream_engine.animation.landmark_frames`: one engine-core stream, the tail flushed).
Per clip, on speech frames (not `silent`), the Pearson r of the inner-lip gap / inter-ocular distance with
mouth_open, with the sum of the visemes A I U E O, and with jawOpen; the table gives the median over clips
(clips with at least 25 speech frames). "model vs real lips" correlates the model's signals with the real
speaker's gap on the same frames (the same audio), against the model's own landmark gap.
Viseme separation: on the real landmarks, frames are grouped by their dominant viseme (weight > 0.15); the
table gives each group's share and its mean mouth width change and gap (inter-ocular units).

Runs on the code it is imported from, so the same command under another checkout measures that version.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_info, write_report
from stream_engine.signals import VISEMES, SignalConfig, SignalExtractor, mouth_features


def _levels(audio: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -120.0)
    for t in range(n):
        seg = audio[640 * t : 640 * t + 640]
        if seg.size:
            out[t] = 10 * math.log10(max(float(np.mean(seg.astype(np.float64) ** 2)), 1e-12))
    return out


def _signals(lm: np.ndarray, levels: np.ndarray, neutral: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    ex = SignalExtractor(SignalConfig(), neutral, seed)
    L = 2
    rows: dict[str, list[float]] = {
        "mouth_open": [],
        "visemes": [],
        "jawOpen": [],
        "silent": [],
        "A": [],
        "I": [],
        "U": [],
        "E": [],
        "O": [],
    }
    for t in range(len(lm)):
        ahead = float(levels[t + 1 : t + 1 + L].max()) if t + 1 < len(levels) else float(levels[t])
        s = ex.update(lm[t], 0.04 * t, float(levels[t]), ahead)
        rows["mouth_open"].append(s.mouth_open)
        rows["visemes"].append(sum(s.visemes.values()))
        for v in VISEMES:
            rows[v].append(s.visemes[v])
        bs = getattr(s, "blendshapes", None)
        rows["jawOpen"].append(np.nan if bs is None else s.blendshape("jawOpen"))
        rows["silent"].append(s.silent)
    return {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}


def _r(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3 or np.std(a) < 1e-9 or np.std(b) < 1e-9 or np.any(np.isnan(a)) or np.any(np.isnan(b)):
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _gap(lm: np.ndarray) -> np.ndarray:
    return np.array([mouth_features(p)[0] for p in lm])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--clips", type=int, default=120, help="clips used (spread evenly over the manifest)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--name", default="mouth_signals")
    a = p.parse_args(argv)
    import soundfile

    from stream_engine.animation import landmark_frames
    from stream_engine.config import DEFAULT_MODEL_PATH
    from stream_engine.runtime import load_runner

    rows = list(csv.DictReader(open(Path(a.data) / "manifest.tsv"), delimiter="\t"))
    rows = [r for r in rows if int(r["nan_frames"]) == 0]
    pick = [rows[i] for i in np.linspace(0, len(rows) - 1, min(a.clips, len(rows))).astype(int)]
    runner = load_runner(DEFAULT_MODEL_PATH, threads=1)
    model_ref = np.asarray(runner.contract.reference_face, dtype=np.float32)
    stats: dict[str, list[float]] = {}
    groups: dict[str, list[tuple[float, float]]] = {v: [] for v in VISEMES}
    frames_used = 0

    def add(key: str, value: float) -> None:
        if not math.isnan(value):
            stats.setdefault(key, []).append(value)

    for row in pick:
        clip = Path(a.data) / "clips" / row["id"]
        lm = np.load(f"{clip}.lm68.npy").astype(np.float64)
        audio, rate = soundfile.read(f"{clip}.flac", dtype="float32")
        levels = _levels(audio, len(lm))
        gap_real = _gap(lm)
        width_real = np.array([mouth_features(q)[1] for q in lm])
        neutral = lm[int(np.argmin(gap_real))]
        s = _signals(lm, levels, neutral)
        speech = ~s["silent"].astype(bool)
        if speech.sum() >= 25:
            frames_used += int(speech.sum())
            for key in ("mouth_open", "visemes", "jawOpen"):
                add(f"real/{key}", _r(s[key][speech], gap_real[speech]))
            vis = np.stack([s[v] for v in VISEMES], axis=1)
            dom = np.argmax(vis, axis=1)
            w_neutral = (
                float(np.median(width_real[speech & (s["mouth_open"] < 0.2)]))
                if np.any(speech & (s["mouth_open"] < 0.2))
                else float(np.median(width_real))
            )
            for t in np.flatnonzero(speech & (vis.max(axis=1) > 0.15)):
                groups[VISEMES[dom[t]]].append((width_real[t] - w_neutral, gap_real[t] - gap_real.min()))
        # the model on the same audio
        frames = landmark_frames(runner, audio.astype(np.float32))
        mlm = np.stack([f.landmarks for f in frames]).astype(np.float64)
        mlevels = np.array([f.audio_level_dbfs for f in frames])
        ms = _signals(mlm, mlevels, model_ref)
        gap_model = _gap(mlm)
        mspeech = ~ms["silent"].astype(bool)
        n = min(len(lm), len(mlm))
        both = mspeech[:n] & speech[:n]
        if mspeech.sum() >= 25:
            for key in ("mouth_open", "visemes", "jawOpen"):
                add(f"model/{key}", _r(ms[key][mspeech], gap_model[mspeech]))
        if both.sum() >= 25:
            add("model_vs_real/landmark_gap", _r(gap_model[:n][both], gap_real[:n][both]))
            for key in ("mouth_open", "visemes", "jawOpen"):
                add(f"model_vs_real/{key}", _r(ms[key][:n][both], gap_real[:n][both]))

    med = {k: float(np.median(v)) for k, v in stats.items()}
    sep = {
        v: {
            "share": len(g) / max(1, sum(len(x) for x in groups.values())),
            "width_change": float(np.mean([x for x, _ in g])) if g else float("nan"),
            "gap": float(np.mean([y for _, y in g])) if g else float("nan"),
        }
        for v, g in groups.items()
    }
    result: dict[str, Any] = {
        "clips": len(pick),
        "speech_frames_real": frames_used,
        "median_r": med,
        "clips_per_stat": {k: len(v) for k, v in stats.items()},
        "viseme_groups_real": sep,
        "machine": machine_info(),
    }
    lines = [
        f"# Mouth signals against the inner-lip gap ({a.name})",
        "",
        f"{len(pick)} clips of `{a.data}` (evenly spread over the manifest), {frames_used} real speech frames; "
        "median over clips of the per-clip Pearson r on speech frames.",
        "",
        "| landmarks | signal | median r with the gap | clips |",
        "|---|---|---|---|",
    ]
    for k, v in med.items():
        src, sig = k.split("/")
        lines.append(f"| {src} | {sig} | {v:.3f} | {len(stats[k])} |")
    lines += [
        "",
        "Viseme separation on the real landmarks (frames grouped by the dominant viseme):",
        "",
        "| viseme | share of frames | mean width change (IOD) | mean gap above the clip's min (IOD) |",
        "|---|---|---|---|",
    ]
    for viseme, d in sep.items():
        lines.append(f"| {viseme} | {d['share']:.3f} | {d['width_change']:+.4f} | {d['gap']:.4f} |")
    m = result["machine"]
    lines += ["", f"Machine: {m['cpu']}, load {m['load_avg_1m']:.2f}, {m['time_utc']}."]
    write_report(a.out, a.name, result, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
