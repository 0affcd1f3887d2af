"""Each viewer column of `msync eval` can fail: planted rows made from real ground truth, scored by the report's code.

    python -m benchmarks.planted_viewer --out benchmarks/results

Ground truth of the test split (held-out speakers) is changed in one way per row, and the row goes through the
same functions `msync eval` uses (`training.eval.viewer.viewer_columns`, `training.eval.rest.score`):

- halved mouth: every mouth point (48-67) moves half as far from its mean over the sequence;
- late mouth: the mouth points are those of 3 frames earlier (the mouth lags the audio by 120 ms);
- roll +6°: the whole face rotated by 6° about the rigid points' centroid in every frame (a constant tilt);
- half head motion: the rigid points' centroid displacement from its sequence mean halved (all points moved);
- eyes never close: the eye points (36-47) of the sequence's most open frame, carried with the head.

The non-speech set uses the first seconds of real speech (ground truth's own landmarks for them) followed by
the non-speech sound, and after speech a 200 ms glide from the speaking face's 90th-percentile opening to its most
closed frame (comes to rest), or from the last spoken frame to that opening (stays open), then held; or the
reference face throughout (static).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

MOUTH = list(range(48, 68))
GLIDE_FRAMES = 5


def _by_sequence(fn, items):
    return [(i, fn(np.asarray(lm, np.float64)).astype(np.float32), mf) for i, lm, mf in items]


def halved_mouth(x: np.ndarray) -> np.ndarray:
    y = x.copy()
    m = x[:, MOUTH].mean(axis=0, keepdims=True)
    y[:, MOUTH] = m + 0.5 * (x[:, MOUTH] - m)
    return y


def late_mouth(x: np.ndarray, frames: int = 3) -> np.ndarray:
    """Mouth points of frame t - `frames` carried to frame t's head position (the first frames repeat frame 0)."""
    from stream_engine.signals import RIGID_POINTS

    rigid = list(RIGID_POINTS)
    idx = np.maximum(np.arange(len(x)) - frames, 0)
    y = x.copy()
    shift = x[:, rigid].mean(axis=1) - x[idx][:, rigid].mean(axis=1)
    y[:, MOUTH] = x[idx][:, MOUTH] + shift[:, None]
    return y


def rolled(x: np.ndarray, degrees: float = 6.0) -> np.ndarray:
    from stream_engine.signals import RIGID_POINTS

    c = x[:, list(RIGID_POINTS)].mean(axis=1, keepdims=True)
    a = math.radians(degrees)
    # image y points down: a positive roll turns the face clockwise on screen, as `head_rotation` measures it
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    return c + (x - c) @ rot.T


def half_head_motion(x: np.ndarray) -> np.ndarray:
    from stream_engine.signals import RIGID_POINTS

    c = x[:, list(RIGID_POINTS)].mean(axis=1)
    return x - 0.5 * (c - c.mean(axis=0))[:, None]


def open_eyes(x: np.ndarray) -> np.ndarray:
    """Every frame's eyelids (37-38, 40-41, 43-44, 46-47) as in the frame where the eyes are widest, placed
    relative to each eye's own corners in that frame; the corners (36, 39, 42, 45) are rigid head points and stay
    as they are, so only the blink columns may change."""
    from stream_engine.signals import eye_aspect_ratio

    k = int(np.argmax([eye_aspect_ratio(f) for f in x]))
    y = x.copy()
    for corners, lids in (((36, 39), (37, 38, 40, 41)), ((42, 45), (43, 44, 46, 47))):
        c, lid = list(corners), list(lids)
        centre = x[:, c].mean(axis=1)  # (T, 2)
        y[:, lid] = (x[k, lid] - x[k, c].mean(axis=0))[None] + centre[:, None]
    return y


PLANTED = {
    "halved mouth": (halved_mouth, "amplitude ratio 0.5×"),
    "late mouth (+3 frames)": (late_mouth, "best lag +3, r at lag 0 below GT's"),
    "roll +6°": (rolled, "roll bias +6° vs GT"),
    "half head motion": (half_head_motion, "head energy 0.25× at every scale"),
    "eyes never close": (open_eyes, "blinks 0 / min"),
}


def rest_rows(inputs, rest_cfg) -> tuple[dict, int]:
    """Planted outputs on the non-speech set: (rows {name: rest.score(...)}, streams)."""
    from training.eval import rest
    from training.eval.sequences import STATIC
    from training.metrics import viewer as vm

    stimuli = rest.build(rest_cfg, inputs.segs_by_clip, inputs.pcm)
    n_speech = int(round(rest_cfg.speech_s * 25))
    kept: list = []
    outs: dict[str, list] = {"comes to rest": [], "stays open": [], STATIC: []}
    for st in stimuli:
        seg = inputs.segs_by_clip[st.clip_id][0]
        if seg.num_frames < n_speech:
            continue  # no ground truth for all of the speech
        speech = seg.landmarks[:n_speech]
        gap = vm.lip_gap(speech)
        closed = speech[int(np.argmin(gap))]
        wide = speech[int(np.argsort(gap)[int(0.9 * (len(gap) - 1))])]
        hold = st.rest_end - st.rest_start
        a, b = st.rest_start, n_speech - st.rest_start  # speech frames before and after the pause
        for name, start, face in (("comes to rest", wide, closed), ("stays open", speech[a - 1], wide)):
            # a 200 ms glide, then the face held
            w = np.clip(np.arange(hold) / GLIDE_FRAMES, 0.0, 1.0)[:, None, None]
            held = (1.0 - w) * start[None] + w * face[None]
            outs[name].append(np.concatenate([speech[:a], held, speech[a : a + b]]).astype(np.float32))
        outs[STATIC].append(np.repeat(st.reference[None], st.num_frames, axis=0))
        kept.append(st)
    return {name: rest.score(kept, ys, rest_cfg) for name, ys in outs.items()}, len(kept)


def run(out_dir: Path, max_clips: int = 0) -> dict:
    from training.eval.quality import EvalConfig, load_inputs
    from training.eval.rest import gt_pauses
    from training.eval.sequences import GT, STATIC, method_inputs
    from training.eval.viewer import viewer_columns
    from training.run.machine import machine_info

    cfg = EvalConfig(max_clips=max_clips)
    inputs = load_inputs(cfg, progress=False)
    rows = method_inputs(inputs.sequences, [])
    rows = {GT: rows[GT], STATIC: rows[STATIC]}
    for name, (fn, _) in PLANTED.items():
        rows[name] = _by_sequence(fn, rows[GT])
    cols = viewer_columns(rows, inputs, use_phones=False)["methods"]
    rest_planted, streams = rest_rows(inputs, cfg.rest)
    mach = machine_info()
    return {
        "split": cfg.split,
        "sequences": len(inputs.sequences),
        "machine": f"{mach.get('cpu')}, load {mach.get('load_avg_1m')}",
        "expect": {k: v[1] for k, v in PLANTED.items()},
        "columns": cols,
        "rest": {"streams": streams, "rows": rest_planted, "gt_pauses": gt_pauses(inputs.segments, inputs.pcm)},
    }


def _f(v, fmt: str) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def markdown(r: dict) -> str:
    from training.eval.report import rest_ms_text
    from training.eval.sequences import GT

    cols = r["columns"]
    lines = [
        "# Planted cases: each viewer column of `msync eval` can fail",
        "",
        f"Ground truth of split `{r['split']}` ({r['sequences']} sequences of 80 frames, held-out speakers) changed "
        "in one way per row, scored by `training.eval.viewer.viewer_columns` (the report's code); machine "
        f"{r['machine']}. `python -m benchmarks.planted_viewer --out benchmarks/results`.",
        "",
        "| Row | expected | r lag 0 | r best | best lag | amplitude | "
        + " | ".join(f"energy {200 * 2**lvl} ms" for lvl in range(4))
        + " | roll bias | blinks / min |",
        "|" + "---|" * 12,
    ]
    for name, c in cols.items():
        lines.append(
            f"| {name} | {r['expect'].get(name, '(reference)' if name == GT else 'no articulation, no motion')} | "
            f"{_f(c['r_lag0'], '{:.2f}')} | {_f(c['r_best'], '{:.2f}')} | {_f(c['best_lag_frames'], '{:+.0f}')} | "
            f"{_f(c['amplitude_ratio'], '{:.2f}')} | "
            + " | ".join(_f(v, "{:.2f}×") for v in c["head_energy_ratio"])
            + f" | {_f(c['roll_bias'], '{:+.1f}°')} | {_f(c['blinks_per_min'], '{:.1f}')} |"
        )
    rest = r["rest"]
    gp = rest["gt_pauses"]
    kinds = list(next(iter(rest["rows"].values())))
    lines += [
        "",
        f"## Rest ({rest['streams']} non-speech streams with ground truth's own landmarks for the speech)",
        "",
        "Time to rest (median, share never at rest) and the median gap above the row's own closed mouth, per "
        f"sound. Ground truth's own pauses for reference: at rest after {rest_ms_text(gp)}, "
        f"{_f(gp.get('excess_p50'), '{:+.3f}')} above closed ({gp.get('n', 0)} pauses).",
        "",
        "| Row | " + " | ".join(kinds) + " |",
        "|" + "---|" * (len(kinds) + 1),
    ]
    for name, rows in rest["rows"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{rest_ms_text(rows[k])}, {_f(rows[k]['excess_p50'], '{:+.3f}')}" for k in kinds)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from training.eval.report import write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        required=True,
        help="output folder for planted_viewer.json/.md (the committed ones: benchmarks/results)",
    )
    ap.add_argument("--max-clips", type=int, default=0, help="only the first N test clips (0 = all)")
    args = ap.parse_args(argv)
    result = run(Path(args.out), args.max_clips)
    md = markdown(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "planted_viewer.md").write_text(md)
    write_json(out / "planted_viewer.json", result)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
