"""Does the head move around its reference pose on many speech inputs? Per-clip head angles of one or more
generators, from the default face and from each clip's own first frame.

    python -m benchmarks.head_bias_clips --model 0.3.4=<checkpoint> --model 0.3.5=training/weights/generator \
        --split test --out benchmarks/results/head_bias_clips_035

The head-pose case of `../shared/cases` is one file; this runs the same question over a split of
`../shared/data`. Each clip's first gap-free segment (up to `--max-seconds` of its speech, then 6 s of a tail:
digital silence, or -48 dBFS noise, hum or breathing of `training.data.nonspeech`, `--tails`) is one fresh
stream, batched, through `Generator.step` (what the exported step computes), with LSTM noise seed 0, as
`training.pose_bias.rollout` rolls out. The segments are drawn as `training.pose_bias.load_rows` draws
them: up to two per speaker. Angles are relative to the stream's reference face (`training.head_pose.head_angles`,
degrees). Per model and reference (the checkpoint's `reference_face`, which `msync stream` uses without
`--reference-face`, or each clip's first frame):
- the median over clips of each clip's mean yaw / pitch / roll over its speech;
- the share of clips whose mean is more than 2° from zero;
- the share of clips whose yaw crosses zero during the speech (after its first second);
- the mean over clips of each tail after the speech (its last 4 s; own first frames: the silence tail only);
- for own first frames, the mean of their own angles relative to the default face, and the least-squares slope
  of each clip's mean against that angle (0 = the reference's pose does not matter; -0.25 = a quarter of it
  pulled back).
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.pose_bias import slopes  # re-exported: the benchmark's slope is the calibration's


def clip_stats(angles: np.ndarray, lengths: list[int], tail: int) -> dict:
    """(N, T, 3) angles of N streams, each `lengths[i]` speech frames then `tail` frames of a tail -> the speech
    fields of the module docstring (speech means per clip included) and "after_mean" (the tail's last 4 s, or all
    of it when shorter)."""
    speech = np.stack([angles[i, :m].mean(axis=0) for i, m in enumerate(lengths)])
    last = min(tail, 100)
    after = np.stack([angles[i, m + tail - last : m + tail].mean(axis=0) for i, m in enumerate(lengths)])
    crosses = []
    for i, m in enumerate(lengths):
        yaw = angles[i, 25:m, 0]
        crosses.append(bool(len(yaw) and yaw.min() < 0.0 < yaw.max()))
    return {
        "clip_means": speech.tolist(),
        "median_of_clip_means": np.median(speech, axis=0).tolist(),
        "share_over_2deg": (np.abs(speech) > 2.0).mean(axis=0).tolist(),
        "share_yaw_crossing_zero": float(np.mean(crosses)),
        "after_mean": after.mean(axis=0).tolist(),
    }


TAIL_SECONDS = 6.0
TAIL_DBFS = -48.0


def with_tail(audio: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`audio` (whole 640-sample frames kept) followed by TAIL_SECONDS of `kind`: "silence" (zeros) or a
    `training.data.nonspeech` sound at TAIL_DBFS."""
    from training.data.nonspeech import scale_to_dbfs, sound

    n = int(TAIL_SECONDS * 16000)
    tail = np.zeros(n) if kind == "silence" else scale_to_dbfs(sound(kind, n, rng), TAIL_DBFS)
    return np.concatenate([audio[: len(audio) // 640 * 640], tail]).astype(np.float32)


def run_model(path: str, split: str, max_seconds: float, data_dir: str, tails: tuple[str, ...]) -> dict:
    from training import pose_bias as pb
    from training.models.generator import load_generator

    gen, meta = load_generator(path)
    face = np.asarray(meta["reference_face"], dtype=np.float32)
    cfg = pb.PoseBiasConfig(data_dir=data_dir, split=split, identities=10_000, max_seconds=max_seconds)
    rows = pb.load_rows(cfg, face)
    n, tail = len(rows.audios), int(TAIL_SECONDS * 25)
    out: dict = {"clips": n, "speakers": rows.speakers, "tails": list(tails)}
    default = np.ascontiguousarray(np.broadcast_to(face, (n, 68, 2)))
    for kind in tails:
        rng = np.random.default_rng(0)  # the same tail sounds for every model
        audios = [with_tail(a, kind, rng) for a in rows.audios]
        angles, lengths = pb.rollout(gen, audios, default, 0, cfg.seed)
        lengths = [m - tail for m in lengths]
        stats = clip_stats(angles, lengths, tail)
        if kind == tails[0]:
            out["default_face"] = stats
        out.setdefault("after_by_tail", {})[kind] = stats["after_mean"]
    audios = [with_tail(a, "silence", np.random.default_rng(0)) for a in rows.audios]
    angles, lengths = pb.rollout(gen, audios, rows.own_refs, 0, cfg.seed)
    out["own_first_frame"] = clip_stats(angles, [m - tail for m in lengths], tail)
    pose = pb.reference_poses(rows)
    own = out["own_first_frame"]
    own["reference_pose_mean"] = pose.mean(axis=0).tolist()
    own["slope_on_reference_pose"] = slopes(np.asarray(own["clip_means"]), pose).tolist()
    return out


def _triple(v, fmt: str = "{:+.1f}") -> str:
    return " / ".join(fmt.format(x) for x in v)


def markdown(results: dict, split: str) -> str:
    tails = next(iter(results.values()))["tails"]
    lines = [
        f"Per-clip head angles (`python -m benchmarks.head_bias_clips`, split `{split}`); yaw / pitch / roll, degrees, "
        "relative to each stream's reference face. Speech rows: the default face with the first tail "
        f"({tails[0]}), and each clip's own first frame with a silence tail.",
        "",
        "| model | reference | clips | median of clip means | clips with \\|mean\\| > 2° | yaw crosses zero | "
        "own first frames' pose vs the default face (mean) | slope on the reference's own pose |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, r in results.items():
        for ref in ("default_face", "own_first_frame"):
            s = r[ref]
            pose = _triple(s["reference_pose_mean"]) + "°" if "reference_pose_mean" in s else "–"
            slope = _triple(s["slope_on_reference_pose"], "{:+.2f}") if "slope_on_reference_pose" in s else "–"
            lines.append(
                f"| {model} | {ref.replace('_', ' ')} | {r['clips']} | {_triple(s['median_of_clip_means'])}° | "
                f"{_triple(s['share_over_2deg'], '{:.0%}')} | {s['share_yaw_crossing_zero']:.0%} | {pose} | {slope} |"
            )
    lines += [
        "",
        f"After the speech, from the default face: mean over clips of the tail's last 4 s ({TAIL_DBFS:.0f} dBFS for "
        "the sounds).",
        "",
        "| model | " + " | ".join(tails) + " |",
        "|---|" + "---|" * len(tails),
    ]
    for model, r in results.items():
        lines.append(f"| {model} | " + " | ".join(_triple(r["after_by_tail"][k]) + "°" for k in tails) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--max-seconds", type=float, default=12.0, help="speech per clip (default %(default)s)")
    p.add_argument("--data", default="../shared/data", help="clips directory (default %(default)s)")
    p.add_argument(
        "--tails",
        nargs="+",
        default=["silence", "noise", "hum", "breathing"],
        choices=["silence", "noise", "hum", "breathing", "tones"],
        help="what follows the speech; the first one also goes with the speech rows (default: %(default)s)",
    )
    p.add_argument("--out", required=True, help="output stem: OUT.json and OUT.md")
    args = p.parse_args(argv)
    results = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            p.error(f"--model wants NAME=CHECKPOINT, got {spec!r}")
        results[name] = run_model(path, args.split, args.max_seconds, args.data, tuple(args.tails))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"split": args.split, "models": results}, indent=2) + "\n")
    md = markdown(results, args.split)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
