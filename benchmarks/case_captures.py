"""The model cases of `../shared/cases/` as the engine sends them: summaries of `msync_capture.py --json` runs.

    python ../shared/cases/tools/msync_capture.py ../shared/cases/silence-landmarks-open/speech_then_6s_silence.wav \
        --range 2.5 9 --every 10 --json DIR/silence.json      # and noise.json, quiet.json, normal.json, head.json
    python -m benchmarks.case_captures DIR [DIR ...]

Each DIR holds the five captures of one model (`msync stream`'s default model at the time: int8 on CPU), named
silence.json (silence-landmarks-open), noise.json (noise-floor-mouth), quiet.json and normal.json
(quiet-speech-gate, -38 dB and normal level), head.json (head-pose-bias). From the raw landmarks: the inner-lip
gap over the inter-ocular distance (as `training.metrics.viewer.lip_gap`); from the rig signals: `mouth_open` and
the head angles (yaw/pitch/roll, relative to the stream's reference face, filtered as sent). Read:

- silence: the gap from 200 ms after the speech ends (2.9 s) to the end, p50 / p90, and its last second's mean;
- noise: the gap in the noise-only pause (3.1-5.0 s stream time), p50 / p90, its `mouth_open` mean, and the gap
  p90 in the frames with sound above -40 dBFS elsewhere (speech);
- quiet: over the frames where the normal-level file is above -40 dBFS, the -38 dB gap's standard deviation as a
  share of the normal one's, the two gaps' correlation, and both files' mean `mouth_open`;
- head: mean and p5-p95 range of the rig's yaw / pitch / roll over the speech file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SPEECH_END_S = 2.9  # silence-landmarks-open: 2.9 s of speech, then digital zeros
PAUSE_S = (3.1, 5.0)  # noise-floor-mouth: the first noise-only pause (its README's range)
MOUTH, DBFS, ANGLES = 0, 10, (7, 8, 9)  # columns of the capture's `sig` (msync_capture.SIGNALS)


def load(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pts seconds (T,), inner-lip gap in IOD (T,), signals (T, 12)) of one capture file."""
    frames = json.loads(path.read_text())["frames"]
    t = np.array([f["pts"] for f in frames], np.float64)
    lm = np.array([f["lm"] for f in frames], np.float64).reshape(len(frames), 68, 2)
    iod = np.linalg.norm(lm[:, 36] - lm[:, 45], axis=1)
    gap = sum(np.linalg.norm(lm[:, a] - lm[:, b], axis=1) for a, b in ((61, 67), (62, 66), (63, 65))) / 3.0 / iod
    return t, np.asarray(gap), np.array([f["sig"] for f in frames], np.float64)


def summarise(folder: Path) -> dict[str, float]:
    """The figures of the module doc for one folder of captures."""
    out: dict[str, float] = {}
    t, g, s = load(folder / "silence.json")
    m = t >= SPEECH_END_S + 0.2
    out.update(silence_p50=np.percentile(g[m], 50), silence_p90=np.percentile(g[m], 90))
    out["silence_last_s"] = float(g[t >= t[-1] - 1.0].mean())
    t, g, s = load(folder / "noise.json")
    m = (t >= PAUSE_S[0]) & (t <= PAUSE_S[1])
    out.update(noise_p50=np.percentile(g[m], 50), noise_p90=np.percentile(g[m], 90))
    out["noise_mouth_open"] = float(s[m, MOUTH].mean())
    out["speech_p90"] = float(np.percentile(g[~m & (s[:, DBFS] > -40)], 90))
    _, gq, sq = load(folder / "quiet.json")
    _, gn, sn = load(folder / "normal.json")
    sp = sn[:, DBFS] > -40
    out["quiet_std_share"] = float(gq[sp].std() / gn[sp].std())
    out["quiet_r"] = float(np.corrcoef(gq[sp], gn[sp])[0, 1])
    out.update(quiet_mouth_open=sq[sp, MOUTH].mean(), normal_mouth_open=sn[sp, MOUTH].mean())
    _, _, s = load(folder / "head.json")
    for k, name in zip(ANGLES, ("yaw", "pitch", "roll")):
        out[f"{name}_mean"] = float(s[:, k].mean())
        out[f"{name}_range"] = float(np.percentile(s[:, k], 95) - np.percentile(s[:, k], 5))
    return {k: float(v) for k, v in out.items()}


def markdown(rows: dict[str, dict[str, float]]) -> str:
    lines = [
        "| captures | silence gap p50 / p90, last 1 s | noise pause gap p50 / p90; mouth_open | speech gap p90 "
        "| quiet: gap std share, r; mouth_open quiet / normal | head yaw / pitch / roll mean | ranges p5-p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['silence_p50']:.3f} / {r['silence_p90']:.3f}, {r['silence_last_s']:.3f} "
            f"| {r['noise_p50']:.3f} / {r['noise_p90']:.3f}; {r['noise_mouth_open']:.2f} | {r['speech_p90']:.3f} "
            f"| {r['quiet_std_share']:.2f}, {r['quiet_r']:.2f}; {r['quiet_mouth_open']:.2f} / {r['normal_mouth_open']:.2f} "
            f"| {r['yaw_mean']:+.1f}° / {r['pitch_mean']:+.1f}° / {r['roll_mean']:+.1f}° "
            f"| {r['yaw_range']:.1f}° / {r['pitch_range']:.1f}° / {r['roll_range']:.1f}° |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="folders of captures (NAME=DIR names the row)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args(argv)
    rows = {}
    for spec in a.folders:
        name, _, path = str(spec).rpartition("=")
        rows[name or Path(path).name] = summarise(Path(path))
    sys.stdout.write(markdown(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
