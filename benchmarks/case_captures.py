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

Stream starts (optional, when the folder holds them): `--make-start-inputs DIR` writes two inputs built from the
cases' own audio, `start_noise.wav` (3.4 s of noise-floor-mouth's -48 dBFS fan noise, then silence-landmarks-open's
2.9 s of speech over the same noise, then 2 s more noise) and `start_silence.wav` (3 s of digital zeros, the speech,
2 s of zeros); capture them as start_noise.json and start_silence.json. Read from the raw gap before the speech: its
largest value and mean over 0-0.5 s and 0.5-2 s, and the share of frames from 0.2 s to the speech above 0.03 IOD.
A folder may hold the start captures alone. `--strip PNG` draws each folder's start_noise capture as frames.

Any model: `msync_capture.py FILE --json OUT -- --model M` passes `--model M` on to `msync stream`.
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
START_SPEECH_S = {"start_noise": 3.4, "start_silence": 3.0}  # where the speech begins in the start inputs


def make_start_inputs(cases: Path, out: Path) -> list[Path]:
    """Write start_noise.wav and start_silence.wav (module doc) from the cases' audio to `out`."""
    import soundfile as sf

    noise_file = cases / "noise-floor-mouth" / "speech_pause_fan_noise_-48dBFS.wav"
    speech_file = cases / "silence-landmarks-open" / "speech_then_6s_silence.wav"
    mixed, sr = sf.read(noise_file, dtype="float32")
    speech, sr_s = sf.read(speech_file, dtype="float32")
    if sr != 16000 or sr_s != 16000:
        raise ValueError(f"expected 16 kHz case audio, got {sr} and {sr_s} Hz")
    noise = mixed[int(3.2 * sr) : int(4.9 * sr)]  # inside the case's first noise-only pause
    speech = speech[: int(SPEECH_END_S * sr)]
    lead = int(START_SPEECH_S["start_noise"] * sr)
    with_noise = np.concatenate(
        [np.resize(noise, lead), speech + np.resize(noise, len(speech)), np.resize(noise, 2 * sr)]
    )
    zeros = np.zeros(int(START_SPEECH_S["start_silence"] * sr), np.float32)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "start_noise.wav", out / "start_silence.wav"]
    sf.write(paths[0], with_noise.astype(np.float32), sr)
    sf.write(paths[1], np.concatenate([zeros, speech, np.zeros(2 * sr, np.float32)]), sr)
    return paths


def summarise_starts(folder: Path) -> dict[str, float]:
    """The stream-start figures (module doc) of the start captures present in `folder`."""
    out: dict[str, float] = {}
    for name, speech_at in START_SPEECH_S.items():
        if not (folder / f"{name}.json").is_file():
            continue
        t, g, _ = load(folder / f"{name}.json")
        for a, b in ((0.0, 0.5), (0.5, 2.0)):
            m = (t >= a) & (t < b)
            out[f"{name}_max_{a:g}_{b:g}"] = float(g[m].max())
            out[f"{name}_mean_{a:g}_{b:g}"] = float(g[m].mean())
        out[f"{name}_open_share"] = float((g[(t >= 0.2) & (t < speech_at - 0.1)] > 0.03).mean())
    return out


def load(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pts seconds (T,), inner-lip gap in IOD (T,), signals (T, 12)) of one capture file."""
    frames = json.loads(path.read_text())["frames"]
    t = np.array([f["pts"] for f in frames], np.float64)
    lm = np.array([f["lm"] for f in frames], np.float64).reshape(len(frames), 68, 2)
    iod = np.linalg.norm(lm[:, 36] - lm[:, 45], axis=1)
    gap = sum(np.linalg.norm(lm[:, a] - lm[:, b], axis=1) for a, b in ((61, 67), (62, 66), (63, 65))) / 3.0 / iod
    return t, np.asarray(gap), np.array([f["sig"] for f in frames], np.float64)


CASE_FILES = ("silence.json", "noise.json", "quiet.json", "normal.json", "head.json")


def summarise(folder: Path) -> dict[str, float]:
    """The figures of the module doc for one folder of captures.

    Raises:
        FileNotFoundError: one of the five case captures (`CASE_FILES`) is missing, named in the message.
    """
    missing = [f for f in CASE_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder}: missing {', '.join(missing)} (the five case captures are {', '.join(CASE_FILES)}; "
            "see `python -m benchmarks.case_captures --help`)"
        )
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
        if "silence_p50" not in r:  # a folder of start captures only
            continue
        lines.append(
            f"| {name} | {r['silence_p50']:.3f} / {r['silence_p90']:.3f}, {r['silence_last_s']:.3f} "
            f"| {r['noise_p50']:.3f} / {r['noise_p90']:.3f}; {r['noise_mouth_open']:.2f} | {r['speech_p90']:.3f} "
            f"| {r['quiet_std_share']:.2f}, {r['quiet_r']:.2f}; {r['quiet_mouth_open']:.2f} / {r['normal_mouth_open']:.2f} "
            f"| {r['yaw_mean']:+.1f}° / {r['pitch_mean']:+.1f}° / {r['roll_mean']:+.1f}° "
            f"| {r['yaw_range']:.1f}° / {r['pitch_range']:.1f}° / {r['roll_range']:.1f}° |"
        )
    starts = [(n, r) for n, r in rows.items() if "start_noise_open_share" in r or "start_silence_open_share" in r]
    if starts:
        lines += [
            "",
            "Stream starts (raw gap in IOD before the speech; max / mean):",
            "",
            "| captures | input | 0-0.5 s | 0.5-2 s | frames > 0.03 from 0.2 s to the speech |",
            "|---|---|---|---|---|",
        ]
        for name, r in starts:
            for k in START_SPEECH_S:
                if f"{k}_open_share" in r:
                    lines.append(
                        f"| {name} | {k} | {r[f'{k}_max_0_0.5']:.3f} / {r[f'{k}_mean_0_0.5']:.3f} "
                        f"| {r[f'{k}_max_0.5_2']:.3f} / {r[f'{k}_mean_0.5_2']:.3f} | {100 * r[f'{k}_open_share']:.0f} % |"
                    )
    return "\n".join(lines) + "\n"


STRIP_TIMES_S = (0.0, 0.12, 0.24, 0.36, 0.48, 0.6, 0.8, 1.2, 2.0, 3.0, 3.8, 4.4)


def start_strip(rows: dict[str, Path], path: Path, name: str = "start_noise") -> None:
    """One row per folder: the raw landmarks of its `name` capture at `STRIP_TIMES_S`, written as a PNG."""
    from PIL import Image, ImageDraw

    from training.render import draw_frame

    strips = []
    for label, folder in rows.items():
        frames = json.loads((folder / f"{name}.json").read_text())["frames"]
        t = np.array([f["pts"] for f in frames])
        tiles = []
        for ts in STRIP_TIMES_S:
            lm = np.asarray(frames[int(np.argmin(np.abs(t - ts)))]["lm"], np.float64).reshape(68, 2)
            tile = Image.fromarray(draw_frame(lm, 160))
            ImageDraw.Draw(tile).text((4, 4), f"{label} {ts:.2f} s", fill=(255, 255, 0))
            tiles.append(np.asarray(tile))
        strips.append(np.concatenate(tiles, axis=1))
    Image.fromarray(np.concatenate(strips, axis=0)).save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="*", type=Path, help="folders of captures (NAME=DIR names the row)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument(
        "--make-start-inputs", type=Path, metavar="DIR", help="write the stream-start inputs to DIR and exit"
    )
    p.add_argument(
        "--strip", type=Path, metavar="PNG", help="also draw each folder's start_noise capture as a frame strip"
    )
    p.add_argument("--cases", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "cases")
    a = p.parse_args(argv)
    if a.make_start_inputs:
        for written in make_start_inputs(a.cases, a.make_start_inputs):
            print(f"wrote {written}")
        return 0
    if not a.folders:
        p.error("give at least one folder of captures (or --make-start-inputs DIR)")
    rows, folders = {}, {}
    for spec in a.folders:
        name, _, path = str(spec).rpartition("=")
        folders[name or Path(path).name] = Path(path)
        folder = Path(path)
        if not folder.is_dir():
            p.error(f"{folder} is not a folder of captures")
        starts = summarise_starts(folder)
        only_starts = starts and not any((folder / f).is_file() for f in CASE_FILES)
        try:
            rows[name or folder.name] = starts if only_starts else summarise(folder) | starts
        except FileNotFoundError as exc:
            p.error(str(exc))
    if a.strip:
        start_strip(folders, a.strip)
    sys.stdout.write(markdown(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
