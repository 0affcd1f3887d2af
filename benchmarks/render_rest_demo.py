"""A 20 s demonstration stream (speech, a pause, fan noise, quiet speech), rendered for two generators.

    python -m benchmarks.render_rest_demo --model 0.2.0=training/weights/generator \
        --model 0.3=runs/generator_v03 --out benchmarks/results/rest_demo

The audio is built from `../shared/cases/` files: 0-6 s speech (`head-pose-bias/speech_10s.wav`), 6-9 s
digital silence, 9-13 s low-passed white noise at -48 dBFS RMS, 13-20 s the -38 dB quiet speech of
`quiet-speech-gate/speech_-38dB.wav` (about -60 dBFS in its speech frames; no noise under it, which at
-48 dBFS would bury it). Each model runs it as one fresh stream from
its default reference face (seed 7). Writes OUT.mp4 (the last model in green over the first in grey, with the
audio; not for committing: it holds `../shared` audio), OUT.png (one row per model, a frame every second, each
titled with its time and inner-lip gap in IOD), OUT_trace.png (the audio level per 40 ms frame above every
model's inner-lip gap, to read the opening against the sound) and OUT.json (the gap per frame for each model and
r(gap, audio level) over the speech segment at lags -1, 0, +1 frames, over all frames and over the frames with
sound only; and per segment the head: median |yaw| / |pitch| / |roll| relative to the reference face, degrees, by
`stream_engine.signals.head_pose`, and the face's size, median inter-ocular distance over the reference's).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

CASES = Path("../shared/cases")
SR, SPF = 16000, 640
SEGMENTS = ((0.0, 6.0, "speech"), (6.0, 9.0, "silence"), (9.0, 13.0, "noise -48 dBFS"), (13.0, 20.0, "quiet speech"))


def build_audio(seed: int = 0) -> np.ndarray:
    """(20 s * 16 kHz,) float32 PCM of the layout in the module doc."""
    from stream_engine.audio_io import load_audio

    speech = load_audio(CASES / "head-pose-bias/speech_10s.wav")
    quiet = load_audio(CASES / "quiet-speech-gate/speech_-38dB.wav")
    out = np.zeros(20 * SR, np.float32)
    out[: 6 * SR] = speech[: 6 * SR]
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(4 * SR))
    spec[np.fft.rfftfreq(4 * SR, 1.0 / SR) > 2000.0] = 0.0
    noise = np.fft.irfft(spec, n=4 * SR)
    noise *= 10 ** (-48 / 20) / np.sqrt(np.mean(noise**2))
    out[9 * SR : 13 * SR] = noise.astype(np.float32)
    q = quiet[: 7 * SR]
    out[13 * SR : 13 * SR + len(q)] += q
    return out


def level_correlation(gap: np.ndarray, level: np.ndarray, start_s: float, end_s: float) -> dict[str, float]:
    """Pearson r between the inner-lip gap and the audio level over [start_s, end_s), with the gap shifted by
    -1, 0 and +1 frames (+1: the mouth follows the sound one frame later). A coarse check that the mouth opens
    with the sound, not a sync metric (that is `msync eval`'s AV offset). "sound only" keeps the frames above
    -100 dBFS: over all frames, closing in the digital silence between phrases alone gives a high r."""
    a, b = int(start_s * 25) + 1, int(end_s * 25) - 1
    sound = level[a:b] > -100.0
    out = {}
    for k in (-1, 0, 1):
        g = gap[a + k : b + k]
        out[f"lag{k:+d}"] = float(np.corrcoef(g, level[a:b])[0, 1])
        out[f"lag{k:+d} sound only"] = float(np.corrcoef(g[sound], level[a:b][sound])[0, 1])
    return out


def head_by_segment(x: np.ndarray, ref: np.ndarray) -> dict[str, dict[str, float]]:
    """Per segment of (frames, 68, 2) landmarks: median |yaw|, |pitch|, |roll| (degrees) relative to the (68, 2)
    reference face's pose (`stream_engine.signals.head_pose`), and the median face size (inter-ocular distance
    over the reference's)."""
    from stream_engine.signals import head_pose

    base = head_pose(ref)
    angles = np.array(
        [
            [p.yaw_deg - base.yaw_deg, p.pitch_deg - base.pitch_deg, p.roll_deg - base.roll_deg]
            for p in map(head_pose, x)
        ]
    )
    iod = np.linalg.norm(x[:, 36] - x[:, 45], axis=-1) / float(np.linalg.norm(ref[36] - ref[45]))
    out = {}
    for a, b, label in SEGMENTS:
        sl = slice(int(a * 25) + 5, int(b * 25))
        yaw, pitch, roll = np.median(np.abs(angles[sl]), axis=0)
        out[label] = {"yaw": float(yaw), "pitch": float(pitch), "roll": float(roll), "size": float(np.median(iod[sl]))}
    return out


def write_trace(path: Path, level: np.ndarray, gaps: dict[str, np.ndarray]) -> None:
    """The audio level per frame above each model's inner-lip gap per frame, with the segments shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(14, 5.5), sharex=True)
    t = np.arange(len(level)) / 25.0
    top.plot(t, np.maximum(level, -100.0), color="0.3", lw=1)
    top.set_ylabel("audio level (dBFS)")
    for name, g in gaps.items():
        bottom.plot(np.arange(len(g)) / 25.0, g, lw=1.2, label=name)
    bottom.set_ylabel("inner-lip gap (IOD)")
    bottom.set_xlabel("time (s)")
    bottom.legend(loc="upper left")
    for ax in (top, bottom):
        for i, (a, b, label) in enumerate(SEGMENTS):
            ax.axvspan(a, b, color=("0.95" if i % 2 else "white"), zorder=0)
            if ax is top:
                ax.text(a + 0.1, -95, label, fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from PIL import Image, ImageDraw

    from training.eval.generation import load_model, stream_rollout
    from training.eval.viewer import frame_dbfs
    from training.metrics import viewer as vm
    from training.render import draw_frame, render_video

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT")
    p.add_argument("--out", required=True, help="output stem")
    p.add_argument("--every-s", type=float, default=1.0)
    args = p.parse_args(argv)
    pcm = build_audio()
    n = len(pcm) // SPF
    rows, refs = {}, {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        m = load_model(name, path, "cpu")
        ref = np.asarray(m.meta["reference_face"], np.float32)
        rows[name], refs[name] = stream_rollout(m, pcm, ref, 7, n, "cpu"), ref
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(rows)
    render_video(out.with_suffix(".mp4"), rows[names[-1]], pcm, reference=rows[names[0]] if len(names) > 1 else None)
    size, per_row = 150, 10
    times = np.arange(0.5, 20.0, args.every_s)
    lines = -(-len(times) // per_row)
    strip = Image.new("RGB", (per_row * size + 60, len(names) * lines * (size + 16) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    gaps = {k: vm.lip_gap(v) for k, v in rows.items()}
    labels = {t: next(lab for a, b, lab in SEGMENTS if a <= t < b) for t in times}
    for r, name in enumerate(names):
        for c, t in enumerate(times):
            line = r * lines + c // per_row
            x, y = 60 + (c % per_row) * size, 16 + line * (size + 16)
            if c % per_row == 0:
                draw.text((4, y + size // 2), name, fill=(0, 0, 0))
            f = int(t * 25)
            # A tighter crop around the face (normalised coordinates 0.15-0.85) so the mouth is visible.
            pts = (rows[name][f] - 0.15) / 0.7
            strip.paste(Image.fromarray(draw_frame(pts, size)), (x, y))
            draw.text((x + 2, y - 13), f"{t:.1f}s {labels[t]} g={gaps[name][f]:.3f}", fill=(0, 0, 0))
    strip.save(out.with_suffix(".png"))
    seg_stats = {
        name: {
            label: {
                "gap_p50": float(np.percentile(g[int(a * 25) + 5 : int(b * 25)], 50)),
                "gap_p90": float(np.percentile(g[int(a * 25) + 5 : int(b * 25)], 90)),
                "gap_std": float(g[int(a * 25) + 5 : int(b * 25)].std()),
            }
            for a, b, label in SEGMENTS
        }
        for name, g in gaps.items()
    }
    head = {name: head_by_segment(x, refs[name]) for name, x in rows.items()}
    level = frame_dbfs(pcm, 0, n)  # the evaluation's per-frame level (training.eval.viewer)
    follow = {name: level_correlation(g, level, 0.0, 6.0) for name, g in gaps.items()}
    write_trace(out.with_name(out.name + "_trace.png"), level, gaps)
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "segments": seg_stats,
                "r_gap_level_speech": follow,
                "head": head,
                "gap": {k: [round(float(x), 4) for x in g] for k, g in gaps.items()},
            }
        )
        + "\n"
    )
    print(json.dumps({"r_gap_level_speech": follow}, indent=1))
    print(json.dumps(seg_stats, indent=1))
    print(json.dumps({"head": head}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
