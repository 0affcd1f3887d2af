"""The speech gate at a stream's start: does the rig's mouth stay shut when a stream starts inside steady noise,
and does it still move when a stream starts with speech?

    python -m benchmarks.gate_start [--data ../shared/data] [--clips 120] [--draws 16] [--out benchmarks/results]

The gate (`signals.SignalExtractor`) calls a frame speech when its level stands `noise_margin_db` above the
stream's noise floor (`noise_floor.NoiseFloor`). Until the floor's first window (2 s) has been measured, the
floor assumes -90 dBFS, so that a stream starting with speech is not taken for a loud background; a stream that
starts inside a fan's noise then passed for speech for up to 2 s and the rig's mouth opened with whatever the
model did in that noise. The steady start (`SignalConfig.noise_start_steady_frames`) adopts the level early when
its first frames are steady. Both are run here in one process, on the same inputs:

- "steady start off": `SignalConfig(noise_start_steady_frames=0)` (the gate before the steady start);
- "default": `SignalConfig()`.

Streams that start in noise: the noise families of `benchmarks.noise_spectra` (held-out shaped spectra, an
untrained resonant family, the case's fan spectrum, pink, white < 2 kHz) at -60, -48 and -30 dBFS, 3 s each,
through the shipped model (`animation.landmark_frames`, tail flushed) from its reference face. Reported per
level over every family's streams: the share of frames called speech and the mean `mouth_open` over 0.2-2 s,
the largest `mouth_open` after 1 s, and the time after which `mouth_open` stays 0 (median over streams).

Streams that start with speech: the dlib landmarks of `--clips` real clips with their own audio (as
`benchmarks.speech_gate`), started at the clip's first frame and 1 s into it (mid-speech, the hardest case for
an early floor); `mouth_open` over the first 2 s kept against "steady start off" on the frames where that is
> 0.3.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_info, write_report
from benchmarks.speech_gate import derive_signals, frame_levels
from stream_engine.signals import SignalConfig

SPF = 640
GATES = {"steady start off": SignalConfig(noise_start_steady_frames=0), "default": SignalConfig()}
OFF, NEW = tuple(GATES)
LEVELS_DBFS = (-60.0, -48.0, -30.0)
NOISE_FRAMES = 75


def _shut_after_s(mouth: np.ndarray) -> float:
    """Seconds after which `mouth` stays 0 to its end (its length when its last frame is open)."""
    open_at = np.flatnonzero(mouth > 0.0)
    return 0.0 if open_at.size == 0 else 0.04 * (open_at[-1] + 1)


def noise_starts(draws: int) -> dict[str, Any]:
    """Per noise level and gate: the statistics of streams that start inside steady noise (module doc)."""
    from benchmarks import noise_spectra
    from stream_engine.animation import landmark_frames
    from stream_engine.config import DEFAULT_MODEL_PATH
    from stream_engine.runtime import load_runner

    runner = load_runner(DEFAULT_MODEL_PATH, threads=1)
    ref = np.asarray(runner.contract.reference_face, dtype=np.float64)
    fams = noise_spectra.families(NOISE_FRAMES * SPF, draws, noise_spectra.CASE)
    out: dict[str, Any] = {"families": {f: len(x) for f, x in fams.items()}}
    for level in LEVELS_DBFS:
        acc: dict[str, dict[str, list[float]]] = {g: {"speech": [], "mouth": [], "late": [], "shut": []} for g in GATES}
        for xs in fams.values():
            for x in xs:
                pcm = (x * 10 ** ((level - noise_spectra.LEVEL_DBFS) / 20)).astype(np.float32)
                frames = landmark_frames(runner, pcm)[:NOISE_FRAMES]
                lm = np.stack([f.landmarks for f in frames]).astype(np.float64)
                lv = np.array([f.audio_level_dbfs for f in frames])
                ah = np.array([f.audio_ahead_dbfs for f in frames])
                for g, cfg in GATES.items():
                    o = derive_signals(cfg, lm, lv, ah, ref)
                    acc[g]["speech"].append(float(1.0 - o[5:50, 1].mean()))
                    acc[g]["mouth"].append(float(o[5:50, 0].mean()))
                    acc[g]["late"].append(float(o[25:, 0].max()))
                    acc[g]["shut"].append(_shut_after_s(o[:, 0]))
        out[f"{level:g}"] = {
            g: {
                "speech_share_0.2_2s": float(np.mean(d["speech"])),
                "mouth_open_mean_0.2_2s": float(np.mean(d["mouth"])),
                "mouth_open_max_after_1s": float(np.max(d["late"])),
                "shut_after_s_median": float(np.median(d["shut"])),
                "shut_after_s_p90": float(np.percentile(d["shut"], 90)),
                "streams": len(d["shut"]),
            }
            for g, d in acc.items()
        }
    return out


def speech_starts(data: Path, clips: int) -> dict[str, Any]:
    """Per start offset: `mouth_open` of the default gate kept against the steady start off (module doc)."""
    import soundfile

    rows = [r for r in csv.DictReader(open(data / "manifest.tsv"), delimiter="\t") if int(r["nan_frames"]) == 0]
    pick = [rows[i] for i in np.linspace(0, len(rows) - 1, min(clips, len(rows))).astype(int)]
    out: dict[str, Any] = {}
    for k in (0, 25):
        kept_new, kept_off, n_streams = [], [], 0
        for row in pick:
            clip = data / "clips" / row["id"]
            lm = np.load(f"{clip}.lm68.npy").astype(np.float64)
            if len(lm) < k + 50:
                continue
            audio, _ = soundfile.read(f"{clip}.flac", dtype="float64")
            lv, ah = frame_levels(audio, len(lm))
            sl = slice(k, k + 50)
            o = {g: derive_signals(cfg, lm[sl], lv[sl], ah[sl], lm[0])[:, 0] for g, cfg in GATES.items()}
            sel = o[OFF] > 0.3
            kept_new.append(o[NEW][sel])
            kept_off.append(o[OFF][sel])
            n_streams += 1
        new, off = np.concatenate(kept_new), np.concatenate(kept_off)
        out[f"{0.04 * k:g}"] = {
            "kept": float(new.mean() / max(off.mean(), 1e-9)),
            "frames_shut": float(np.mean(new == 0.0)),
            "frames": int(off.size),
            "streams": n_streams,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = Path(__file__).resolve().parents[2] / "shared"
    p.add_argument("--data", default=str(root / "data"))
    p.add_argument("--clips", type=int, default=120, help="real clips for the speech starts")
    p.add_argument("--draws", type=int, default=16, help="shaped-noise spectra (the other families scale with it)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    if not (Path(a.data) / "manifest.tsv").exists():
        p.error(f"no manifest.tsv under {a.data} (give --data, the folder of ../shared/data)")
    result: dict[str, Any] = {"machine": machine_info(), "gates": list(GATES)}
    result["noise_starts"] = noise_starts(a.draws)
    result["speech_starts"] = speech_starts(Path(a.data), a.clips)
    ns = result["noise_starts"]
    fams = ", ".join(f"{f} {n}" for f, n in ns["families"].items())
    md = [
        "# The speech gate at a stream's start: steady noise, and speech",
        "",
        "`python -m benchmarks.gate_start` (module docstring). Shipped model; `mouth_open` and `silent` of "
        "`SignalExtractor`; both gates on the same frames in one run.",
        "",
        f"Streams that start inside steady noise ({fams} streams per level), 3 s:",
        "",
        "| noise | gate | frames called speech, 0.2-2 s | mouth_open mean, 0.2-2 s | mouth_open max after 1 s "
        "| mouth shut for good after (median / p90) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for level in LEVELS_DBFS:
        for g in GATES:
            r = ns[f"{level:g}"][g]
            md.append(
                f"| {level:g} dBFS | {g} | {100 * r['speech_share_0.2_2s']:.0f} % | {r['mouth_open_mean_0.2_2s']:.2f} "
                f"| {r['mouth_open_max_after_1s']:.2f} | {r['shut_after_s_median']:.2f} / {r['shut_after_s_p90']:.2f} s |"
            )
    md += [
        "",
        "Streams that start with speech (real landmarks with their own audio), first 2 s: the default gate's "
        "`mouth_open` kept against the steady start off, on the frames where that is > 0.3, and the share of "
        "those frames it shuts:",
        "",
        "| start | streams | frames | kept | shut |",
        "|---|---:|---:|---:|---:|",
    ]
    for start, r in result["speech_starts"].items():
        md.append(
            f"| {start} s into the clip | {r['streams']} | {r['frames']} | {r['kept']:.3f} "
            f"| {100 * r['frames_shut']:.1f} % |"
        )
    m = result["machine"]
    md += ["", f"Machine: {m['cpu']}, load {m['load_avg_1m']:.2f}, {m['time_utc']}."]
    write_report(a.out, "gate_start", result, "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
