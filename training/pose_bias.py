"""The generator's resting head pose: calibrating its velocity bias and its pull toward frontal on training audio.

Why: the generator's update is x(t) = x(t-1) + v(t) - pull(x(t-1) - x_ref) (`training.models.generator`). A
constant part p of the network's velocity v settles at p / rate away from the reference face, so a push the
network learnt under one anchor rate becomes a steady turn or tilt when the rate is lowered (model 0.3.3 lowered
the yaw rate from 0.05 to 0.02 per frame without training: a push that held 1° now holds 2.5°). Measured on
0.3.4 with the default reference face: yaw -2.0°, pitch -1.1°, roll +1.5° over the second half of 20 s of silence,
yaw -4.0° on average over `../shared/cases/head-pose-bias`. And the network pulls every face toward the frontal
pose it mostly saw: with a clip's own first frame as reference, the head settled about a quarter of that frame's
own yaw, pitch or roll (relative to the default face) back toward frontal (least-squares slope -0.18 / -0.24 /
-0.15 on the training split, -0.25 / -0.28 / -0.17 on the test split).

What this does, in two parts (`PARAMETERS`):
- c: one constant velocity c_yaw u_yaw + c_pitch u_pitch + c_roll u_roll (landmark units per frame) added to every
  branch's velocity bias. The branches mix with weights that sum to one per landmark, so the merged velocity moves
  by exactly that vector, whatever the mix. The patterns u are small rotations of the generic face `MEAN_FACE_3D`
  laid on the default reference face (`pose_patterns`): yaw and pitch as the parallax of each point's depth on x
  and y, roll as a turn in the image plane, each centred on the rigid points so that it moves no point of the head
  on average (no slide in the image).
- g: `GeneratorConfig.reference_pose_gain`, a push by g_k times the yaw, pitch and roll parts of the reference
  face's own fitted pose (two thin constant products in the step; `reference_pose_matrix`), which cancels the
  part of the pull toward frontal that is linear in the reference's pose. Fitted only with `--reference-gain`:
  model 0.3.5 ships c alone, because g, measured, cut the yaw range on speakers outside ../shared from 0.59 to
  0.49x ground truth's while c alone raised it to 0.69x (model card).
The numbers are fitted by Gauss-Newton so that the mean head angles, relative to each stream's reference face,
are as near zero as they allow over five kinds of rows on the training split (`PoseBiasConfig`, `ROW_NAMES`):
speech with the default reference face, the silence after it, speech with each clip's own first frame as
reference and the silence after that (each segment a row of its own, so that the reference's pose counts), and
pure silence from a fresh stream. The response of the rows to each number is measured with one finite-difference
probe, and the fit repeats (`iterations`).

What it does not do: the network's speech-driven turns (the head turning one way in loud speech) are a function
of the audio, not a constant; the correction only moves their mean. Training is what changes them.

With c alone the exported step is the same graph with other bias values; g adds two thin constant products.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from stream_engine.signals import MEAN_FACE_3D, RIGID_POINTS
from training.head_pose import head_angles
from training.models.generator import Generator

ANGLES = ("yaw", "pitch", "roll")


@dataclasses.dataclass(frozen=True)
class PoseBiasConfig:
    """What the correction is fitted on.

    Attributes:
        data_dir: the clips (`../shared/data` layout: manifest.tsv and clips/).
        split: the split whose audio and first frames are used ("train": the test split stays held out).
        identities: how many speakers; segments_per_identity: up to this many clips each (the first gap-free
            segment of each, at least `min_frames` long).
        min_frames, max_seconds: segment length bounds (frames at 25 fps; seconds of speech used per segment).
        tail_seconds: silence appended after each segment; the "after speech" rows average its last
            (tail_seconds - 2) seconds, once the head has had 2 s to settle.
        silence_seconds: a fresh stream fed only silence; the row averages its second half.
        probe: size of the finite-difference probe of every parameter (a coefficient in landmark units per frame:
            at model 0.3.4's pull rates 1e-3 settles at about 2.9° of yaw, 1.0° of pitch or 1.3° of roll; a gain
            per frame).
        iterations: fit, apply, measure again this many times.
        seed: the order the clips are drawn in, and the generator's noise.
    """

    data_dir: str = "../shared/data"
    split: str = "train"
    identities: int = 60
    segments_per_identity: int = 2
    min_frames: int = 50
    max_seconds: float = 8.0
    tail_seconds: float = 4.0
    silence_seconds: float = 20.0
    probe: float = 1e-3
    iterations: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {self.split!r}")
        if self.identities < 1 or self.segments_per_identity < 1 or self.iterations < 1:
            raise ValueError("identities, segments_per_identity and iterations must be at least 1")
        times = {n: getattr(self, n) for n in ("max_seconds", "tail_seconds", "silence_seconds")}
        if not all(math.isfinite(v) for v in times.values()):
            raise ValueError(f"max_seconds, tail_seconds and silence_seconds must be finite, got {times}")
        if self.max_seconds < 1.0 or self.min_frames < 25:
            raise ValueError("max_seconds must be at least 1 s and min_frames at least 25 (a second of speech)")
        if self.tail_seconds < 2.5 or self.silence_seconds < 2.5:
            raise ValueError(
                "tail_seconds and silence_seconds must be at least 2.5 s (2 s of settling, then at least 0.5 s to average)"
            )
        if not (math.isfinite(self.probe) and self.probe > 0.0):
            raise ValueError(f"probe must be a positive number, got {self.probe}")


def pose_patterns(face: np.ndarray) -> np.ndarray:
    """(68, 2) reference face in crop units -> (3, 68, 2) velocity patterns for yaw, pitch and roll.

    Yaw and pitch: the depth z_i of `MEAN_FACE_3D` (scaled by the face's width over the generic face's) on x and on
    y, the first-order image motion of a small turn about the vertical and the horizontal axis under a
    scaled-orthographic camera. Roll: the 90-degree turn of each point about the rigid points' centroid. Each
    pattern has zero mean over `RIGID_POINTS`. Units: landmark units per unit coefficient.

    Signs, as `training.head_pose.head_angles` measures them: a positive yaw coefficient turns yaw positive (about
    57° per unit on the default face); positive pitch and roll coefficients turn pitch and roll negative (about
    -51° and -65° per unit: image y points down, and the measured roll turns the other way from this pattern).

    Raises:
        ValueError: a face that is not (68, 2) finite numbers.
    """
    face = np.asarray(face, dtype=np.float64)
    if face.shape != (68, 2) or not np.isfinite(face).all():
        raise ValueError(f"pose_patterns: want a finite (68, 2) face, got shape {face.shape}")
    generic = np.asarray(MEAN_FACE_3D, dtype=np.float64)
    rigid = list(RIGID_POINTS)
    scale = np.ptp(face[:, 0]) / np.ptp(generic[:, 0])
    z = (generic[:, 2] - generic[rigid, 2].mean()) * scale
    centred = face - face[rigid].mean(axis=0)
    yaw = np.stack([z, np.zeros(68)], axis=1)
    pitch = np.stack([np.zeros(68), z], axis=1)
    roll = np.stack([-centred[:, 1], centred[:, 0]], axis=1)
    return np.stack([yaw, pitch, roll]).astype(np.float32)


def apply_pose_correction(gen: Generator, coefficients, face: np.ndarray) -> None:
    """Add sum_k coefficients[k] * pose_patterns(face)[k] (landmark units per frame) to the merged velocity of
    `gen`, in place, by adding it to every branch's velocity bias (in branch units, / velocity_scale)."""
    c = np.asarray(coefficients, dtype=np.float64)
    if c.shape != (3,) or not np.isfinite(c).all():
        raise ValueError(f"apply_pose_correction: want 3 finite coefficients, got {c!r}")
    delta = np.tensordot(c, pose_patterns(face).astype(np.float64), axes=1)  # (68, 2)
    bias = gen.branches.velocity.bias  # (G, 136), columns x0, y0, x1, y1, ...
    with torch.no_grad():
        bias.add_(torch.tensor(delta.reshape(-1) / gen.cfg.velocity_scale, dtype=bias.dtype)[None])


@dataclasses.dataclass
class Rows:
    """The calibration inputs: per segment its audio (16 kHz) and first frame, and the default reference face."""

    audios: list[np.ndarray]
    own_refs: np.ndarray  # (N, 68, 2)
    default_face: np.ndarray  # (68, 2)
    speakers: int


def load_rows(cfg: PoseBiasConfig, default_face: np.ndarray) -> Rows:
    """Draw `cfg.identities` speakers of `cfg.split` and up to `segments_per_identity` segments of each."""
    from training.data.clips import load_segments
    from training.data.manifest import read_manifest
    from training.data.splits import SplitConfig, assign_splits

    records = assign_splits(read_manifest(cfg.data_dir), SplitConfig())[cfg.split]
    random.Random(cfg.seed).shuffle(records)
    by_id: dict[str, list] = {}
    for r in records:
        have = by_id.get(r.identity, [])
        if len(have) >= cfg.segments_per_identity or (r.identity not in by_id and len(by_id) >= cfg.identities):
            continue
        seg = next((s for s in load_segments(r) if s.num_frames >= cfg.min_frames), None)
        if seg is not None:
            by_id.setdefault(r.identity, []).append(seg)
    segs = [s for v in by_id.values() for s in v]
    if not segs:
        raise ValueError(f"no usable {cfg.split} segments in {cfg.data_dir}")
    n = int(cfg.max_seconds * 16000) // 640 * 640
    return Rows(
        audios=[s.audio[:n].astype(np.float32) for s in segs],
        own_refs=np.stack([s.landmarks[0] for s in segs]).astype(np.float32),
        default_face=np.asarray(default_face, dtype=np.float32),
        speakers=len(by_id),
    )


def rollout(gen: Generator, audios: list[np.ndarray], refs: np.ndarray, tail_frames: int, seed: int):
    """Step N streams, batched, through `Generator.step`: each over its audio (16 kHz, whole 640-sample frames)
    then `tail_frames` of digital silence, from reference faces `refs` (N, 68, 2), LSTM noise seeded by `seed`.
    Returns (angles (N, T, 3): yaw, pitch, roll in degrees relative to each stream's reference, from the first
    emitted frame (the first L steps emit the reference, and are dropped); lengths: each stream's speech frames
    in that time base)."""
    lengths = [len(a) // 640 for a in audios]
    total = max(lengths) + tail_frames
    pcm = np.zeros((len(audios), total * 640), np.float32)
    for i, a in enumerate(audios):
        pcm[i, : lengths[i] * 640] = a[: lengths[i] * 640]
    chunks = torch.from_numpy(pcm).view(len(audios), total, 640)
    ref = torch.from_numpy(np.ascontiguousarray(refs, dtype=np.float32))
    h0, c0 = gen.initial_lstm_state(len(audios), torch.Generator().manual_seed(seed))
    state = gen.initial_state(ref, h0, c0)
    frames = []
    with torch.no_grad():
        for t in range(total):
            x, state = gen.step(chunks[:, t], state)
            frames.append(x)
    lookahead = gen.cfg.lookahead_frames  # the first L outputs are the unchanged reference
    angles = head_angles(torch.stack(frames, dim=1)[:, lookahead:], ref).numpy()
    return angles, [n - lookahead for n in lengths]


ROW_NAMES = (
    "speech, default face",
    "after speech, default face",
    "speech, own first frame",
    "after speech, own first frame",
    "silence, default face",
)
PARAMETERS = ("c_yaw", "c_pitch", "c_roll", "g_yaw", "g_pitch", "g_roll")


@dataclasses.dataclass
class Measurement:
    """Mean head angles (yaw, pitch, roll; degrees, relative to each stream's reference face).

    default_speech, default_after, silence: (3,) means over segments (the rows of `ROW_NAMES` 0, 1 and 4).
    own_speech, own_after: (N, 3), one row per segment (its own first frame as reference).
    """

    default_speech: np.ndarray
    default_after: np.ndarray
    own_speech: np.ndarray
    own_after: np.ndarray
    silence: np.ndarray

    def rows(self) -> np.ndarray:
        """(5, 3): the rows of `ROW_NAMES` (own-reference rows averaged over segments)."""
        return np.stack(
            [self.default_speech, self.default_after, self.own_speech.mean(0), self.own_after.mean(0), self.silence]
        )

    def residual(self) -> np.ndarray:
        """What the fit drives to zero: the three default-face rows, and every segment's own-reference rows
        weighted 1 / sqrt(N) (together as much as one row, but each segment's reference pose counts)."""
        w = 1.0 / np.sqrt(len(self.own_speech))
        parts = [self.default_speech, self.default_after, self.silence, w * self.own_speech, w * self.own_after]
        return np.concatenate([np.ravel(p) for p in parts])


def measure(gen: Generator, rows: Rows, cfg: PoseBiasConfig) -> Measurement:
    """Run the three rollouts (default face, own first frames, pure silence) and average their angles: speech rows
    over each segment's frames, after-speech rows over the silence tail after 2 s, the silence row over the second
    half of `silence_seconds`."""
    tail = int(round(cfg.tail_seconds * 25))
    settle = 50
    n = len(rows.audios)
    out = []
    for refs in (np.broadcast_to(rows.default_face, (n, 68, 2)), rows.own_refs):
        angles, lengths = rollout(gen, rows.audios, refs, tail, cfg.seed)
        out.append(np.stack([angles[i, :m].mean(axis=0) for i, m in enumerate(lengths)]))
        out.append(np.stack([angles[i, m + settle : m + tail].mean(axis=0) for i, m in enumerate(lengths)]))
    silence_frames = int(round(cfg.silence_seconds * 25))
    angles, _ = rollout(gen, [np.zeros(0, np.float32)], rows.default_face[None], silence_frames, cfg.seed)
    return Measurement(out[0].mean(0), out[1].mean(0), out[2], out[3], angles[0, silence_frames // 2 :].mean(axis=0))


def corrected(gen: Generator, params, face: np.ndarray) -> Generator:
    """A copy of `gen` with `params` (`PARAMETERS`: 3 velocity-bias coefficients, `apply_pose_correction`, then
    3 reference-pose gains added to `GeneratorConfig.reference_pose_gain`) applied. `gen` is not changed."""
    p = np.asarray(params, dtype=np.float64)
    if p.shape != (6,) or not np.isfinite(p).all():
        raise ValueError(f"corrected: want 6 finite parameters {PARAMETERS}, got {params!r}")
    old = np.zeros(3) if gen.cfg.reference_pose_gain is None else np.asarray(gen.cfg.reference_pose_gain, float)
    gain = old + p[3:]
    new_cfg = dataclasses.replace(
        gen.cfg, reference_pose_gain=None if not gain.any() else (float(gain[0]), float(gain[1]), float(gain[2]))
    )
    out = Generator(new_cfg).eval()
    out.load_state_dict(gen.state_dict())
    apply_pose_correction(out, p[:3], face)
    return out


def reference_poses(rows: Rows) -> np.ndarray:
    """(N, 3) yaw, pitch, roll (degrees) of each segment's own first frame relative to the default face."""
    n = len(rows.own_refs)
    refs = torch.from_numpy(rows.own_refs)[:, None]
    face = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(rows.default_face, (n, 68, 2))))
    return head_angles(refs, face).numpy()[:, 0]


def slopes(values: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(3,) least-squares slope of each angle's values (N, 3) on the matching column of `pose` (N, 3)."""
    out = np.zeros(3)
    for k in range(3):
        a = np.stack([np.ones(len(pose)), pose[:, k]], axis=1)
        out[k] = np.linalg.lstsq(a, values[:, k], rcond=None)[0][1]
    return out


def reference_slopes(m: Measurement, rows: Rows) -> np.ndarray:
    """(3,) least-squares slope of each own-reference speech row's angle on its reference face's own angle
    (relative to the default face): how far a turned reference is pulled back (0 = not at all, -1 = fully)."""
    return slopes(m.own_speech, reference_poses(rows))


def fit(
    gen: Generator, rows: Rows, cfg: PoseBiasConfig, log=print, reference_gain: bool = False
) -> tuple[np.ndarray, list[dict]]:
    """Fit the parameters (`PARAMETERS`; module docstring): Gauss-Newton on `Measurement.residual`, the response
    measured by one finite-difference probe (`cfg.probe`) per parameter. `reference_gain=True` fits the three gains too; by default they stay 0. Returns (parameters (6,),
    history: per iteration the rows, the slopes and the response it measured). `gen` is not changed."""
    free = list(range(6 if reference_gain else 3))
    steps = np.full(6, cfg.probe)
    total = np.zeros(6)
    history = []
    for it in range(cfg.iterations):
        base = measure(corrected(gen, total, rows.default_face), rows, cfg)
        r0 = base.residual()
        jac = np.zeros((len(r0), len(free)))
        for j, k in enumerate(free):
            probe = total.copy()
            probe[k] += steps[k]
            jac[:, j] = (measure(corrected(gen, probe, rows.default_face), rows, cfg).residual() - r0) / steps[k]
        delta, *_ = np.linalg.lstsq(jac, -r0, rcond=None)
        slopes = reference_slopes(base, rows)
        history.append(
            {
                "iteration": it,
                "parameters": total.tolist(),
                "rows": base.rows().tolist(),
                "reference_slopes": slopes.tolist(),
                "residual_rms": float(np.sqrt(np.mean(r0**2))),
            }
        )
        log(f"iteration {it}: parameters {np.array2string(total, precision=6)}; rows' mean angles (deg):")
        for name, ang in zip(ROW_NAMES, base.rows()):
            log(f"  {name:32s} " + " ".join(f"{n} {v:+.2f}" for n, v in zip(ANGLES, ang)))
        log("  own-reference bias per degree of the reference's own pose: " + " ".join(
            f"{n} {v:+.2f}" for n, v in zip(ANGLES, slopes)))  # fmt: skip
        total[free] += delta
    return total, history


def main(argv: list[str] | None = None) -> int:
    """`python -m training.pose_bias --checkpoint STEM --out STEM [--model-version V]`: fit and write a
    corrected checkpoint, a JSON report beside it, and the rows before and after on stdout."""
    from stream_engine.dataclass_io import to_dict
    from training.checkpoint import load_state, save_module
    from training.models.generator import load_generator, resolve_checkpoint

    p = argparse.ArgumentParser(prog="python -m training.pose_bias", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="generator checkpoint stem to correct")
    p.add_argument("--out", required=True, help="stem of the corrected checkpoint (.json + .safetensors)")
    p.add_argument("--model-version", default=None, help="model_version to record in the new checkpoint")
    p.add_argument("--data", default=PoseBiasConfig.data_dir, help="clips directory (default %(default)s)")
    p.add_argument("--identities", type=int, default=PoseBiasConfig.identities)
    p.add_argument("--segments-per-identity", type=int, default=PoseBiasConfig.segments_per_identity)
    p.add_argument("--max-seconds", type=float, default=PoseBiasConfig.max_seconds, help="speech per segment")
    p.add_argument("--tail-seconds", type=float, default=PoseBiasConfig.tail_seconds, help="silence after it")
    p.add_argument("--silence-seconds", type=float, default=PoseBiasConfig.silence_seconds, help="silence row")
    p.add_argument("--iterations", type=int, default=PoseBiasConfig.iterations)
    p.add_argument(
        "--reference-gain",
        action="store_true",
        help="also fit GeneratorConfig.reference_pose_gain (measured for 0.3.5, not shipped: model card)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        cfg = PoseBiasConfig(
            data_dir=args.data,
            identities=args.identities,
            segments_per_identity=args.segments_per_identity,
            max_seconds=args.max_seconds,
            tail_seconds=args.tail_seconds,
            silence_seconds=args.silence_seconds,
            iterations=args.iterations,
        )
    except ValueError as exc:
        p.error(str(exc))
    try:
        gen, meta = load_generator(args.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        p.error(str(exc))
    if meta.get("reference_face") is None:  # what `msync export` makes the model's default face
        p.error(f"{args.checkpoint}: the checkpoint's meta has no reference_face (written by msync train)")
    face = np.asarray(meta["reference_face"], dtype=np.float32)
    t0 = time.monotonic()
    rows = load_rows(cfg, face)
    print(f"{len(rows.audios)} segments of {rows.speakers} {cfg.split} speakers", file=sys.stderr)
    params, history = fit(gen, rows, cfg, log=lambda s: print(s, file=sys.stderr), reference_gain=args.reference_gain)
    out_gen = corrected(gen, params, face)
    new_meta = dict(meta)
    new_meta["generator"] = to_dict(out_gen.cfg)
    source = meta.get("model_version", str(args.checkpoint))
    new_meta["pose_bias_correction"] = {
        "source": f"{args.checkpoint} ({source})",
        "source_note": meta.get("note", ""),
        "parameters": dict(zip(PARAMETERS, params)),
    }
    if args.model_version:
        new_meta["model_version"] = args.model_version
    new_meta["note"] = (
        f"{new_meta.get('model_version', 'this checkpoint')}: the weights of {source} with their resting head pose "
        "calibrated by `python -m training.pose_bias` (pose_bias_correction: a constant added to every branch's "
        "velocity bias" + (", and GeneratorConfig.reference_pose_gain" if args.reference_gain else "") + "); "
        "no other weight changed; no training"
    )
    # Released weights are float16 (`training/weights`); keep the source's precision and measure what was written.
    half = any(v.dtype == torch.float16 for v in load_state(resolve_checkpoint(args.checkpoint)).values())
    save_module(args.out, out_gen, new_meta, dtype=torch.float16 if half else None)
    after = measure(load_generator(args.out)[0], rows, cfg)
    slopes = reference_slopes(after, rows)
    print("rows' mean angles (deg), before -> after:")
    for name, b, a in zip(ROW_NAMES, history[0]["rows"], after.rows()):
        print(f"  {name:32s} " + "  ".join(f"{n} {x:+.2f} -> {y:+.2f}" for n, x, y in zip(ANGLES, b, a)))
    print(
        "own-reference bias per degree of the reference's own pose, before -> after: "
        + "  ".join(f"{n} {x:+.2f} -> {y:+.2f}" for n, x, y in zip(ANGLES, history[0]["reference_slopes"], slopes))
    )
    print("parameters: " + ", ".join(f"{n} {v:+.6f}" for n, v in zip(PARAMETERS, params)))
    report = {
        "config": dataclasses.asdict(cfg),
        "segments": len(rows.audios),
        "speakers": rows.speakers,
        "parameters": dict(zip(PARAMETERS, params.tolist())),
        "rows": list(ROW_NAMES),
        "history": history,
        "after": {"rows": after.rows().tolist(), "reference_slopes": slopes.tolist()},
        "seconds": time.monotonic() - t0,
    }
    Path(str(args.out) + ".pose_bias.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}.json/.safetensors and {args.out}.pose_bias.json ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
