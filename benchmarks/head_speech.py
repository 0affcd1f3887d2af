"""Does the head move with the speech, and on which time scale, as a real speaker's does?

    python -m benchmarks.head_speech --model 0.3.7=stream_engine/models/default.onnx [--model NAME=PATH ...] \
        [--seeds 3] [--paired-reference NAME] [--head-fit no-jaw|evaluation] [--out benchmarks/results] \
        [--name head_speech]

Issue 15 asks for head "movement that follows speech emphasis at 0.8-1.6 s (the paper's point)", and the
evaluation's syncers cannot see it: their 800 / 1600 ms levels are composites of 200 ms lip encoders (model card,
*single-branch ablation*). This measure looks at the head directly, on whole gap-free segments of at least 6.4 s
(`MIN_FRAMES`) of held-out speakers (test and validation splits of `../shared/data`, `training.data.splits`):

- the speech's loudness envelope e(t): the RMS level of each frame's 640 samples in dBFS, floored 50 dB below the
  segment's loudest frame (so pauses count as quiet, not as -inf);
- the head's angular speed s(t) = |(yaw, pitch, roll)(t) - (yaw, pitch, roll)(t-1)| in degrees per frame, from the
  evaluation's scaled-orthographic head fit (`training.metrics.viewer.head_angles`) on the nose and eye corners
  (`NO_JAW_POINTS`, the default `--head-fit no-jaw`): the evaluation's own rigid points include six of the jaw
  line's, which move with the mouth, and put part of the jaw's motion, itself driven by the speech, into a real
  face's "head" (`--head-fit evaluation` keeps them);
- at each scale s (200, 400, 800, 1600 ms) both are band-passed to the octave of periods s .. 2 s (`band`: what
  varies on that scale, without the slower trend or the faster jitter), and the coupling is Pearson r between the
  two band-passed series over the segment (lag 0). The table's columns name the octaves (0.2-0.4 s ... 1.6-3.2 s).
  On segments of 6.4-19 s the filter's edges count: cutting one period off each end moved r by up to 0.06.

r > 0 means the head moves faster where the speech is louder than its surroundings on that time scale. The control
row pairs the same head with the same segment's envelope circularly shifted by 8 offsets spread over the middle
half of the segment (mean r over the shifts): what the measure gives when head and speech are unrelated. Ground
truth gives the level a real speaker reaches; a model should come near it and above its own control. More is not
better: a head that moves only with loudness would reach r near 1.

Each model animates each segment from the segment's first real frame as its reference face, through the product
path (`stream_engine.animation.animate`: the exported step, its input gate, a fresh stream with silence before it),
with `--seeds` noise seeds; a segment's r is the mean over seeds. Table rows: mean r over segments with a 95 %
bootstrap interval over segments; paired rows: model minus ground truth, model minus its control, and with
`--paired-reference NAME` every other model minus that one. The training split's ground truth is reported too, as a
check of the measure on more speakers (the models saw those faces).

A second table takes the signed yaw, pitch and roll in place of the speed (`signed_coupling`): r far from 0 there
means the head turns, nods or leans one way whenever the voice is louder on that scale. The held-out speakers' real
heads stay within 0.07 of 0 at 0.2-1.6 s; 0.3.7's roll reads -0.34 and its yaw -0.33 at 0.4-0.8 s
(`benchmarks/results/head_speech_038d.md`). The two tables measure different things: a fine-tune that brought the
signed couplings near ground truth's left the speed's coupling where it was (model card, *Does the head move with the
speech?*). It has no control rows; read it against ground truth's.

The traces figure (`<out>/<name>.png`) shows the longest held-out segment: the raw head speed of ground truth and
every model on one shared scale (degrees per frame), and each one's 400 ms and 1.6 s octaves beside the loudness's.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_info, machine_load_line, write_report
from stream_engine.signals import NO_JAW_POINTS

SPF = 640
FPS = 25
SCALES_MS = (200, 400, 800, 1600)
MIN_FRAMES = 160  # 4 x the 1.6 s scale's 40 frames: two of its longest periods
FLOOR_DB = 50.0
SHIFTS = 8
ANGLES = ("yaw", "pitch", "roll")
BOOTSTRAP = 2000
RIG = ", rig signals"  # the row suffix of the engine's filtered yaw / pitch / roll
HEAD_FITS = ("no-jaw", "evaluation")


def column(scale_ms: int) -> str:
    """The octave of `scale_ms` as a column name: 200 -> "0.2-0.4 s"."""
    return f"{scale_ms / 1000:g}-{2 * scale_ms / 1000:g} s"


def loudness_db(pcm: np.ndarray, frames: int) -> np.ndarray:
    """(frames,) RMS level in dBFS of each frame's `SPF` samples of `pcm` (16 kHz), floored `FLOOR_DB` below the
    loudest frame. Raises ValueError when `pcm` holds fewer than frames * SPF samples."""
    from training.face_losses import window_loudness_db  # the training term's loudness, so the two agree

    if len(pcm) < frames * SPF:
        raise ValueError(f"loudness_db: {len(pcm)} samples for {frames} frames of {SPF}")
    return window_loudness_db(np.asarray(pcm)[None], 0, frames, SPF, FLOOR_DB)[0].astype(np.float64)


def head_pose(landmarks: np.ndarray, head_fit: str = "no-jaw") -> np.ndarray:
    """(T, 68, 2) landmarks -> (T, 3) yaw, pitch, roll in degrees from the first frame; `head_fit` one of
    `HEAD_FITS` (module docstring). Raises ValueError for another head fit."""
    from stream_engine.signals import NO_JAW_FIT
    from training.metrics.viewer import head_angles

    if head_fit not in HEAD_FITS:
        raise ValueError(f"head_fit must be one of {HEAD_FITS}, got {head_fit!r}")
    fit = NO_JAW_FIT if head_fit == "no-jaw" else None
    return head_angles(np.asarray(landmarks, np.float64), np.asarray(landmarks[0], np.float64), fit)


def head_speed(landmarks: np.ndarray, head_fit: str = "no-jaw") -> np.ndarray:
    """(T, 68, 2) landmarks -> (T,) head angular speed, degrees per frame (0 at frame 0) (`head_pose`)."""
    return rig_speed(head_pose(landmarks, head_fit))


def signed_coupling(envelope: np.ndarray, pose: np.ndarray) -> list[list[float]]:
    """(T,) envelope and (T, 3) yaw / pitch / roll -> [angle][scale] Pearson r of the band-passed envelope and the
    band-passed signed angle: whether the head turns, nods or leans one way when the voice is louder on that time
    scale (`band` pads by reflection, so a drift over the segment does not wrap into the octaves)."""
    return [[coupling(envelope, pose[:, k], ms) for ms in SCALES_MS] for k in range(3)]


def rig_speed(yaw_pitch_roll: np.ndarray) -> np.ndarray:
    """(T, 3) head angles in degrees (the rig signals yaw, pitch, roll, or `head_speed`'s fit) -> (T,) angular
    speed, degrees per frame (0 at frame 0)."""
    a = np.asarray(yaw_pitch_roll, np.float64)
    return np.linalg.norm(np.diff(a, axis=0, prepend=a[:1]), axis=1)


def rig_angles(landmarks: np.ndarray, levels_db: np.ndarray) -> np.ndarray:
    """(T, 68, 2) landmarks and (T,) frame levels (dBFS) -> (T, 3) the engine's yaw, pitch, roll signals: what a
    VMC / VTube Studio rig receives, One-Euro filtered (`stream_engine.signals.SignalExtractor`, default config,
    the first frame as the neutral face; each frame's look-ahead level taken as its own)."""
    from stream_engine.signals import SignalConfig, SignalExtractor

    ex = SignalExtractor(SignalConfig(), np.asarray(landmarks[0], np.float32), 0)
    out = np.empty((len(landmarks), 3))
    for t, (x, db) in enumerate(zip(landmarks, levels_db)):
        sig = ex.update(x, t / FPS, float(db), float(db))
        out[t] = (sig.head.yaw_deg, sig.head.pitch_deg, sig.head.roll_deg)
    return out


def band(x: np.ndarray, scale_ms: int) -> np.ndarray:
    """The octave of `scale_ms`: periods between `scale_ms` and twice it (frequencies 1 / (2 s) .. 1 / s), a
    6th-order Butterworth band-pass run forward and backward (zero phase; `scipy.signal.sosfiltfilt`, edges padded
    by reflection). (T,) at `FPS` -> (T,)."""
    from scipy.signal import butter, sosfiltfilt

    s = scale_ms / 1000.0
    sos = butter(3, [1.0 / (2.0 * s), min(1.0 / s, 0.49 * FPS)], btype="bandpass", fs=FPS, output="sos")
    return sosfiltfilt(sos, np.asarray(x, np.float64), padtype="even")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; 0 when either series is constant (a static head moves with nothing)."""
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


def _check_lengths(envelope: np.ndarray, speed: np.ndarray, scale_ms: int) -> None:
    w = int(round(scale_ms / 1000 * FPS))
    if len(envelope) != len(speed) or len(speed) < 4 * w:
        raise ValueError(f"coupling: {len(envelope)} and {len(speed)} frames at {scale_ms} ms (need equal, >= {4 * w})")


def coupling(envelope: np.ndarray, speed: np.ndarray, scale_ms: int) -> float:
    """r between the band-passed loudness envelope and head speed at `scale_ms` (lag 0). Raises ValueError for
    series of different lengths or shorter than 4 windows of the scale."""
    _check_lengths(envelope, speed, scale_ms)
    return pearson(band(envelope, scale_ms), band(speed, scale_ms))


def shifted_coupling(envelope: np.ndarray, speed: np.ndarray, scale_ms: int) -> float:
    """The control: mean r of `speed` against `envelope` circularly shifted by `SHIFTS` offsets spread evenly over
    [T/4, 3T/4] (the same speech and head, no longer aligned). The head's band is the same for every shift."""
    _check_lengths(envelope, speed, scale_ms)
    t = len(envelope)
    offsets = np.linspace(t // 4, 3 * t // 4, SHIFTS).round().astype(int)
    head = band(speed, scale_ms)
    return float(np.mean([pearson(band(np.roll(envelope, int(s)), scale_ms), head) for s in offsets]))


def mean_ci(values: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Mean and 95 % bootstrap interval over the entries (segments)."""
    v = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    boots = v[rng.integers(0, len(v), (BOOTSTRAP, len(v)))].mean(axis=1)
    return {"mean": float(v.mean()), "lo": float(np.percentile(boots, 2.5)), "hi": float(np.percentile(boots, 97.5))}


def segments_of(split: str, data: str) -> list[Any]:
    """The split's gap-free segments of at least `MIN_FRAMES` frames (`training.eval.sequences`)."""
    from training.data.clips import ClipLoadConfig
    from training.data.splits import SplitConfig
    from training.eval.sequences import load_split_segments

    _, _, segs = load_split_segments(data, SplitConfig(), split, ClipLoadConfig(), progress=False)
    return [s for s in segs if s.num_frames >= MIN_FRAMES]


def scores(envelope: np.ndarray, speed: np.ndarray) -> tuple[list[float], list[float]]:
    """(r at each scale, the control's r at each scale)."""
    return (
        [coupling(envelope, speed, ms) for ms in SCALES_MS],
        [shifted_coupling(envelope, speed, ms) for ms in SCALES_MS],
    )


def held_out_and_train(data: str, max_segments: int = 0) -> tuple[list[Any], list[Any]]:
    """(held-out segments: test then validation split, training-split segments), each cut to its first
    `max_segments` when that is > 0. Raises ValueError with fewer than 2 held-out segments, FileNotFoundError for a
    data directory without a manifest."""
    if not (Path(data) / "manifest.tsv").is_file():
        raise FileNotFoundError(f"{data}: no manifest.tsv (give --data the dataset directory, e.g. ../shared/data)")
    held_out = [s for split in ("test", "val") for s in segments_of(split, data)]
    train = segments_of("train", data)
    if max_segments:
        held_out, train = held_out[:max_segments], train[:max_segments]
    if len(held_out) < 2:
        raise ValueError(f"{data}: {len(held_out)} held-out segments of >= {MIN_FRAMES} frames; need 2")
    return held_out, train


def run(
    runners: dict[str, Any],
    seeds: int,
    held_out: list[Any],
    train: list[Any],
    head_fit: str = "no-jaw",
    paired_reference: str | None = None,
) -> dict[str, Any]:
    """Score ground truth and every loaded runner (`stream_engine.animation.load_model`) on the segments."""
    from tqdm import tqdm

    from stream_engine.animation import animate
    from training.face_losses import window_loudness_db

    rows: dict[str, list[list[float]]] = {}

    def add(name: str, r: list[float]) -> None:
        rows.setdefault(name, []).append(r)

    signed: dict[str, list[list[list[float]]]] = {}  # row -> per segment [angle][scale]
    for s in train:
        env = loudness_db(s.audio, s.num_frames)
        pose = head_pose(s.landmarks, head_fit)
        r, ctl = scores(env, rig_speed(pose))
        add("ground truth, training split", r)
        add("ground truth, training split, shifted audio", ctl)
        signed.setdefault("ground truth, training split", []).append(signed_coupling(env, pose))
    for s in tqdm(held_out, desc="segments", unit="segment", mininterval=2.0):
        env = loudness_db(s.audio, s.num_frames)
        pose = head_pose(s.landmarks, head_fit)
        r, ctl = scores(env, rig_speed(pose))
        add("ground truth", r)
        add("ground truth, shifted audio", ctl)
        signed.setdefault("ground truth", []).append(signed_coupling(env, pose))
        levels = window_loudness_db(np.asarray(s.audio)[None], 0, s.num_frames, SPF, np.inf)[0]  # not floored
        add(f"ground truth{RIG}", scores(env, rig_speed(rig_angles(s.landmarks, levels)))[0])
        for name, runner in runners.items():
            per_seed, per_seed_signed = [], []
            for seed in range(seeds):
                anim = animate(s.audio, 16000, s.landmarks[0], model=runner, seed=seed)
                lm = anim.landmarks[: s.num_frames]
                rig = np.stack([anim.signals[k][: s.num_frames] for k in ("yaw_deg", "pitch_deg", "roll_deg")], axis=1)
                pose = head_pose(lm, head_fit)
                per_seed.append((*scores(env, rig_speed(pose)), scores(env, rig_speed(rig))[0]))
                per_seed_signed.append(signed_coupling(env, pose))
            signed.setdefault(name, []).append(np.mean(per_seed_signed, axis=0).tolist())
            add(name, np.mean([p[0] for p in per_seed], axis=0).tolist())
            add(f"{name}, shifted audio", np.mean([p[1] for p in per_seed], axis=0).tolist())
            add(f"{name}{RIG}", np.mean([p[2] for p in per_seed], axis=0).tolist())
    arrays = {k: np.array(v) for k, v in rows.items()}
    table = {k: [mean_ci(a[:, j]) for j in range(len(SCALES_MS))] for k, a in arrays.items()}

    def diff(a: str, b: str) -> list[dict[str, float]]:  # per segment, paired
        return [mean_ci(arrays[a][:, j] - arrays[b][:, j]) for j in range(len(SCALES_MS))]

    paired = {}
    for name in runners:
        paired[f"{name} − ground truth"] = diff(name, "ground truth")
        paired[f"{name} − its shifted audio"] = diff(name, f"{name}, shifted audio")
        paired[f"{name}{RIG} − ground truth{RIG}"] = diff(f"{name}{RIG}", f"ground truth{RIG}")
    if paired_reference is not None:
        for name in runners:
            if name != paired_reference:
                paired[f"{name} − {paired_reference}"] = diff(name, paired_reference)
    paired["ground truth − its shifted audio"] = diff("ground truth", "ground truth, shifted audio")
    return {
        "scales_ms": list(SCALES_MS),
        "head_fit": head_fit,
        "head_points": list(NO_JAW_POINTS) if head_fit == "no-jaw" else "stream_engine.signals.RIGID_POINTS",
        "seeds": seeds,
        "min_frames": MIN_FRAMES,
        "held_out_segments": [
            {"clip_id": s.clip_id, "identity": s.identity, "start_frame": s.start_frame, "frames": s.num_frames}
            for s in held_out
        ],
        "held_out_speakers": len({s.identity for s in held_out}),
        "train_segments": len(train),
        "train_speakers": len({s.identity for s in train}),
        "per_segment": {k: v for k, v in rows.items() if not k.startswith("ground truth, training")},
        "table": table,
        "paired": paired,
        "signed": {
            row: {
                angle: [mean_ci(np.array(v)[:, k, j]) for j in range(len(SCALES_MS))] for k, angle in enumerate(ANGLES)
            }
            for row, v in signed.items()
        },
    }


def figure(runners: dict[str, Any], held_out: list[Any], path: str, head_fit: str = "no-jaw", seed: int = 0) -> None:
    """The traces to look at: the longest held-out segment's head speed for ground truth and each runner, raw on one
    shared scale (degrees per frame), and its 400 ms and 1.6 s octaves beside the loudness's (each band scaled to
    its own peak), so that a head that bobs with every syllable and one that moves with the phrase look
    different."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stream_engine.animation import animate

    seg = max(held_out, key=lambda s: s.num_frames)
    env = loudness_db(seg.audio, seg.num_frames)
    heads = {"ground truth": seg.landmarks}
    for name, runner in runners.items():
        heads[name] = animate(seg.audio, 16000, seg.landmarks[0], model=runner, seed=seed).landmarks[: seg.num_frames]
    speeds = {name: head_speed(lm, head_fit) for name, lm in heads.items()}
    top = max(float(np.percentile(sp, 99.5)) for sp in speeds.values())
    t = np.arange(seg.num_frames) / FPS
    fig, axes = plt.subplots(len(heads), 2, figsize=(13, 2.4 * len(heads)), sharex=True, squeeze=False)
    for row, (name, sp) in enumerate(speeds.items()):
        ax = axes[row, 0]
        ax.plot(t, sp, color="0.3", lw=0.8)
        ax.set_ylim(0, top)
        ax.set_ylabel("°/frame", fontsize=8)
        ax.set_title(f"{name}: raw head speed (shared scale, {head_fit} fit), mean {sp.mean():.2f}°/frame", fontsize=9)
        ax = axes[row, 1]
        for k, (ms, color) in enumerate(((400, "tab:red"), (1600, "tab:blue"))):
            e, h = band(env, ms), band(sp, ms)
            off = -2.4 * k
            ax.plot(t, h / max(np.abs(h).max(), 1e-9) + off, color=color, lw=1.2, label=f"head {column(ms)}")
            ax.plot(
                t, e / max(np.abs(e).max(), 1e-9) + off, color=color, lw=0.8, ls=":", label=f"loudness {column(ms)}"
            )
            ax.text(t[-1], off + 0.8, f"r {pearson(e, h):+.2f}", fontsize=8, ha="right", color=color)
        ax.set_yticks([])
        ax.set_title(f"{name}: octaves, each scaled to its own peak", fontsize=9)
        ax.legend(fontsize=7, loc="lower left", ncol=4)
    for ax in axes[-1]:
        ax.set_xlabel(f"seconds ({seg.clip_id[:60]})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _cell(c: dict[str, float]) -> str:
    return f"{c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"


def markdown(res: dict[str, Any], command: str) -> str:
    frames = sum(s["frames"] for s in res["held_out_segments"])
    head = " | ".join(column(ms) for ms in res["scales_ms"])
    fit = (
        "nose and eye corners (`NO_JAW_POINTS`)"
        if res["head_fit"] == "no-jaw"
        else "the engine's rigid points, jaw line included"
    )
    lines = [
        "# Head motion and speech loudness, by time scale",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_load_line(res['machine'])}.",
        "",
        f"Held out (test + validation splits): {len(res['held_out_segments'])} gap-free segments of "
        f"≥ {res['min_frames']} frames from {res['held_out_speakers']} speakers, {frames / FPS / 60:.1f} min; "
        f"each model animated with {res['seeds']} seed(s) from the segment's first frame. Training split (ground "
        f"truth only): {res['train_segments']} segments, {res['train_speakers']} speakers. Head fit: {fit}. r: "
        "Pearson correlation of the loudness envelope (dBFS) and the head's angular speed, both band-passed to "
        "the column's octave of periods, lag 0; mean over segments [95 % bootstrap interval]. Shifted audio: the "
        "same head against the segment's envelope shifted circularly (chance). Rig signals: the engine's "
        "One-Euro-filtered yaw / pitch / roll (its own head fit). Method: the module docstring of "
        "`benchmarks/head_speech.py`.",
        "",
        f"| row | {head} |",
        "|---|" + "---:|" * len(res["scales_ms"]),
    ]
    for name, cells in res["table"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "Paired differences per segment (mean [95 % bootstrap interval]):", ""]
    lines += [f"| difference | {head} |", "|---|" + "---:|" * len(res["scales_ms"])]
    for name, cells in res["paired"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(c) for c in cells) + " |")
    lines += [
        "",
        "Signed angles: r of the band-passed loudness and the band-passed yaw / pitch / roll themselves (not their "
        "speed): a head that turns, nods or leans one way whenever the voice is louder on that scale reads far "
        "from 0. Mean over segments [95 % bootstrap interval]:",
        "",
        f"| row | angle | {head} |",
        "|---|---|" + "---:|" * len(res["scales_ms"]),
    ]
    for name, per_angle in res.get("signed", {}).items():
        for angle, cells in per_angle.items():
            lines.append(f"| {name} | {angle} | " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import sys

    from stream_engine.animation import load_model

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an exported .onnx step model to score; repeat for more (none: ground truth and its controls only)",
    )
    p.add_argument("--seeds", type=int, default=3, help="noise seeds per segment and model")
    p.add_argument(
        "--paired-reference", default=None, metavar="NAME", help="also pair every other model against this one"
    )
    p.add_argument(
        "--head-fit",
        choices=HEAD_FITS,
        default="no-jaw",
        help="the head's fit: the nose and eye corners, or the evaluation's rigid points (jaw line included)",
    )
    p.add_argument("--data", default="../shared/data", help="the dataset directory (manifest.tsv, clips/)")
    p.add_argument("--max-segments", type=int, default=0, help="use only the first N segments of each set (0: all)")
    p.add_argument("--no-figure", action="store_true", help="skip the traces figure (<out>/<name>.png)")
    p.add_argument("--out", default="benchmarks/results", help="where <name>.json, .md and .png go")
    p.add_argument("--name", default="head_speech", help="the report's file name")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.max_segments < 0:
        p.error("--max-segments must be 0 (all) or more")
    models = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            p.error(f"--model wants NAME=PATH, got {spec!r}")
        if not Path(path).is_file():
            p.error(f"--model {name}: no such file {path}")
        models[name] = path
    if args.paired_reference is not None and args.paired_reference not in models:
        p.error(f"--paired-reference {args.paired_reference!r} is not one of the --model names {sorted(models)}")
    runners = {}
    for name, path in models.items():  # before the data: a bad model file fails at once
        try:
            runners[name] = load_model(path)
        except Exception as e:  # ModelLoadError and friends: one line, not a traceback
            p.error(f"--model {name}: {e}")
    try:
        held_out, train = held_out_and_train(args.data, args.max_segments)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    m = machine_info()
    res = run(runners, args.seeds, held_out, train, args.head_fit, args.paired_reference)
    m["load_avg_1m_end"] = os.getloadavg()[0]
    res["machine"] = m
    res["models"] = models
    command = "python -m benchmarks.head_speech " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(args.out, args.name, res, markdown(res, command))  # prints the table too
    if not args.no_figure:
        figure(runners, held_out, str(Path(args.out) / f"{args.name}.png"), args.head_fit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
