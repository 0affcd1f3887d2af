"""`msync eval-sync`: multi-scale AV synchrony (paper Table 3), LMD and motion statistics of landmark sequences.

    msync eval-sync --data ../shared/data --split test --metric-syncers training/weights/metric_syncers --out runs/eval
    msync eval-sync ... --predictions runs/gen/test_predictions        # add a generator's output as a row

Protocol (paper §4.3): the speaker-disjoint split's clips are loaded as gap-free segments and cut into
non-overlapping sequences of `--seq-frames` frames (80, as in the paper; 0 keeps whole segments). Every method
row is scored on the same sequences with the *metric* syncer pyramid (SyncNet loss, never used to train a
generator) by :func:`training.metrics.sync.av_sync` at every level: |AV-Off_l| in samples at level l's rate
(1 = 40·2^l ms) and AV-Conf_l, reported as mean ± std over sequences.

Control rows, always present:
- "ground truth": the GT landmarks with their own audio;
- "static face": the first GT frame of the sequence repeated, with the sequence's audio;
- "shuffled audio": the GT landmarks with another sequence's audio (a deterministic derangement that avoids
  pairing two pieces of the same clip where possible; the donor audio is looped or cropped to length).

Predictions (`--predictions DIR`, repeatable): every `DIR/*.npz` holds
- `landmarks`: (T, 68, 2) float, 25 fps, in the clip's fixed-crop normalised coordinates (the frame of
  `Segment.landmarks`: `stream_engine.landmarks.fixed_crop` with the default `CropConfig` over the clip);
- `clip_id`: str, the manifest id;
- `start_frame` (optional, int, default 0): clip frame index of `landmarks[0]` (the lm68.npy row numbering);
- `method` (optional, str): row name; default the directory name.
A predicted file may cover a whole clip, a segment or one evaluation sequence; each evaluation sequence that
it covers entirely is scored with the sequence's own audio and compared with its GT (LMD). Sequences that no
prediction covers are left out of that row (its `n` says how many were scored). The evaluated sequences are
listed in `eval_sync.json` ("sequences": clip_id, start_frame, num_frames) so a generator can produce exactly
those.

Outputs: `OUT/eval_sync.md` (two tables + checks) and `OUT/eval_sync.json` (config, sequences, summaries,
per-sequence results with the `mdist` curves).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np

from training.data.clips import ClipLoadConfig
from training.data.splits import SplitConfig

GT, STATIC, SHUFFLED = "ground truth", "static face", "shuffled audio"
MOTION_KEYS_DOC = {
    "velocity": "mean per-point speed, normalised units/frame",
    "acceleration": "mean per-point acceleration, normalised units/frame²",
    "head_energy_l{l}": "mean squared velocity of the level-l head (jaw+nose centroid) trajectory, units²/level-l sample",
    "mouth_open_mean/std": "inner-lip gap ‖p62−p66‖, normalised units",
}


# Where the metric syncers are looked for when no path is given: the shipped pyramid, then a local run.
DEFAULT_SYNCERS = ("training/weights/metric_syncers", "runs/metric_syncers/syncers")


@dataclasses.dataclass(frozen=True)
class EvalSyncConfig:
    """What is evaluated and how.

    Attributes:
        data_dir, split: dataset directory and split name ("train", "val" or "test" of `splits`).
        metric_syncers: checkpoint path without suffix (kind "syncer_pyramid").
        seq_frames: evaluation sequence length in frames (paper: 80); 0 = whole gap-free segments.
        vshift: largest shift tried by the offset search, in samples at each level's rate.
        padding: "zero" (SyncNet's zero-padded audio embeddings) or "valid" (real pairs only); see
            :func:`training.metrics.sync.shift_distances`.
        max_clips: evaluate only the first N clips of the split (0 = all; for smoke tests).
        predictions: directories of predicted sequences (see module doc).
        device: "auto", "cpu" or "cuda".
        threads: torch intra-op threads (0 = torch default).
    """

    data_dir: str = "../shared/data"
    split: str = "test"
    metric_syncers: str = ""  # "" = the first of DEFAULT_SYNCERS that exists
    seq_frames: int = 80
    vshift: int = 15
    padding: str = "zero"
    max_clips: int = 0
    predictions: tuple[str, ...] = ()
    device: str = "auto"
    threads: int = 0
    splits: SplitConfig = SplitConfig()
    clips: ClipLoadConfig = ClipLoadConfig()


@dataclasses.dataclass(frozen=True)
class EvalSequence:
    """One evaluation sequence: landmarks (T, 68, 2) normalised, mfcc (4T, 26) raw MFCC at 100 Hz."""

    clip_id: str
    identity: str
    start_frame: int
    landmarks: np.ndarray
    mfcc: np.ndarray

    @property
    def key(self) -> str:
        return f"{self.clip_id}@{self.start_frame}"

    @property
    def num_frames(self) -> int:
        return len(self.landmarks)


# ----------------------------------------------------------------------------------------------- inputs


def build_sequences(segments, seq_frames: int) -> tuple[list[EvalSequence], int]:
    """Cut segments into non-overlapping `seq_frames`-frame sequences (0: whole segments).

    Returns:
        (sequences, number of segments too short to give one sequence).
    """
    from stream_engine.features import mfcc_from_logmel

    out, skipped = [], 0
    for seg in segments:
        mfcc = mfcc_from_logmel(seg.logmel.astype(np.float64)).astype(np.float32)
        k = len(mfcc) // max(seg.num_frames, 1)  # mfcc frames per landmark frame (4)
        if seq_frames <= 0:
            pieces = [(0, seg.num_frames)]
        else:
            pieces = [(p * seq_frames, seq_frames) for p in range(seg.num_frames // seq_frames)]
            skipped += not pieces
        for start, length in pieces:
            out.append(EvalSequence(seg.clip_id, seg.identity, seg.start_frame + start,
                                    seg.landmarks[start : start + length], mfcc[k * start : k * (start + length)]))
    return out, skipped


def derangement(clip_ids: list[str]) -> list[int]:
    """A deterministic permutation p with p[i] != i: a cyclic shift, the one closest to n/2 that never pairs two
    sequences of the same clip (plain shift by n//2 when none exists). Needs n >= 2."""
    n = len(clip_ids)
    if n < 2:
        raise ValueError("the shuffled-audio control needs at least 2 sequences")
    order = list(range(n // 2, n)) + list(range(n // 2 - 1, 0, -1))
    for s in order:
        perm = [(i + s) % n for i in range(n)]
        if all(clip_ids[i] != clip_ids[p] for i, p in enumerate(perm)):
            return perm
    return [(i + n // 2) % n for i in range(n)]


def fit_length(mfcc: np.ndarray, length: int) -> np.ndarray:
    """Loop or crop (A, n_mfcc) features to exactly `length` rows."""
    return mfcc[np.arange(length) % len(mfcc)]


@dataclasses.dataclass(frozen=True)
class Prediction:
    method: str
    clip_id: str
    start_frame: int
    landmarks: np.ndarray
    path: str


def load_predictions(directory: str | Path) -> list[Prediction]:
    """Read every `*.npz` of a predictions directory (format in the module doc).

    Raises:
        FileNotFoundError: not a directory or no npz inside; ValueError: a malformed file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: predictions directory not found")
    files = sorted(directory.glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"{directory}: no .npz prediction files")
    out = []
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            if "landmarks" not in z or "clip_id" not in z:
                raise ValueError(f"{f}: needs arrays 'landmarks' (T, 68, 2) and 'clip_id'")
            lm = np.asarray(z["landmarks"], dtype=np.float32)
            if lm.ndim != 3 or lm.shape[1:] != (68, 2):
                raise ValueError(f"{f}: landmarks must be (T, 68, 2), got {lm.shape}")
            method = str(z["method"]) if "method" in z else directory.name
            start = int(z["start_frame"]) if "start_frame" in z else 0
            out.append(Prediction(method, str(z["clip_id"]), start, lm, str(f)))
    return out


def match_prediction(preds: list[Prediction], seq: EvalSequence) -> np.ndarray | None:
    """The (T, 68, 2) piece of the first prediction that covers `seq` entirely, else None."""
    for p in preds:
        if p.clip_id != seq.clip_id:
            continue
        off = seq.start_frame - p.start_frame
        if off >= 0 and off + seq.num_frames <= len(p.landmarks):
            return p.landmarks[off : off + seq.num_frames]
    return None


def method_inputs(sequences: list[EvalSequence], predictions: list[Prediction]) -> dict[str, list[tuple[int, np.ndarray, np.ndarray]]]:
    """{method: [(sequence index, landmarks (T, 68, 2), mfcc (4T, 26))]} for controls and predictions."""
    perm = derangement([s.clip_id for s in sequences])
    rows: dict[str, list] = {GT: [], STATIC: [], SHUFFLED: []}
    for i, s in enumerate(sequences):
        rows[GT].append((i, s.landmarks, s.mfcc))
        rows[STATIC].append((i, np.repeat(s.landmarks[:1], s.num_frames, axis=0), s.mfcc))
        rows[SHUFFLED].append((i, s.landmarks, fit_length(sequences[perm[i]].mfcc, len(s.mfcc))))
    by_method: dict[str, list[Prediction]] = {}
    for p in predictions:
        by_method.setdefault(p.method, []).append(p)
    for method, preds in by_method.items():
        if method in rows:
            raise ValueError(f"prediction method name {method!r} clashes with a control row")
        rows[method] = []
        for i, s in enumerate(sequences):
            lm = match_prediction(preds, s)
            if lm is not None:
                rows[method].append((i, lm, s.mfcc))
    return rows


# ----------------------------------------------------------------------------------------------- scoring


def score_method(pyr, items, sequences: list[EvalSequence], vshift: int, desc: str, progress: bool = True,
                 padding: str = "zero") -> list[dict]:
    """Per-sequence results: `key`, `levels` (av_sync output, mdist as list), `lmd`, `motion`."""
    from tqdm import tqdm

    from training.metrics.motion import lmd_stats, motion_stats
    from training.metrics.sync import av_sync

    cfg = pyr.cfg
    out = []
    for i, lm, mf in tqdm(items, desc=desc, disable=not progress, unit="seq"):
        levels = av_sync(pyr, lm, mf, vshift=vshift, padding=padding)
        for e in levels:
            e["mdist"] = None if e["mdist"] is None else [round(float(v), 5) if np.isfinite(v) else None
                                                          for v in e["mdist"]]
        out.append({"key": sequences[i].key, "levels": levels, "lmd": lmd_stats(lm, sequences[i].landmarks),
                    "motion": motion_stats(lm, cfg.num_levels, cfg.pyramid_kernel)})
    return out


def _mean_std(values) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not v.size:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)), "n": int(v.size)}


def summarise(records: list[dict], num_levels: int) -> dict:
    """Aggregate per-sequence records of one method: per level |AV-Off|, signed AV-Off, AV-Conf, LSE-D; LMD; motion."""
    levels = []
    for lvl in range(num_levels):
        ents = [r["levels"][lvl] for r in records if r["levels"][lvl]["offset_frames"] is not None]
        levels.append({
            "level": lvl, "segment_ms": 200.0 * 2**lvl, "n": len(ents),
            "abs_offset": _mean_std([abs(e["offset_frames"]) for e in ents]),
            "offset": _mean_std([e["offset_frames"] for e in ents]),
            "confidence": _mean_std([e["confidence"] for e in ents]),
            "min_dist": _mean_std([e["min_dist"] for e in ents]),
        })
    lmd = {k: _mean_std([r["lmd"][k] for r in records]) for k in (records[0]["lmd"] if records else {})}
    motion = {k: _mean_std([r["motion"][k] for r in records]) for k in (records[0]["motion"] if records else {})}
    return {"n": len(records), "levels": levels, "lmd": lmd, "motion": motion}


def checks(summaries: dict) -> dict:
    """The sanity conditions the metric must meet on real data: GT beats both controls on AV-Conf at every level,
    and the GT median |AV-Off| at the finest level is at most 1 frame."""
    gt = summaries[GT]["levels"]
    out = {}
    for name in (STATIC, SHUFFLED):
        other = summaries[name]["levels"]
        out[f"gt_conf_above_{name.replace(' ', '_')}"] = [
            bool(g["confidence"]["mean"] > o["confidence"]["mean"]) for g, o in zip(gt, other)]
    out["gt_median_abs_offset_l0"] = gt[0]["abs_offset"]["median"]
    out["gt_median_abs_offset_l0_le_1"] = bool(gt[0]["abs_offset"]["median"] <= 1)
    out["all_pass"] = bool(all(all(v) for k, v in out.items() if k.startswith("gt_conf_above"))
                           and out["gt_median_abs_offset_l0_le_1"])
    return out


# ----------------------------------------------------------------------------------------------- reporting


def _pm(s: dict, fmt: str = "{:.2f}") -> str:
    if not s["n"]:
        return "–"
    return f"{fmt.format(s['mean'])}±{fmt.format(s['std'])}"


def render_markdown(result: dict) -> str:
    """The two tables and the checks as Markdown."""
    meta, methods = result["meta"], result["methods"]
    num_levels = len(next(iter(methods.values()))["levels"])
    lines = [
        "# Multi-scale AV synchrony (paper Table 3 layout)", "",
        f"Metric syncers: `{meta['metric_syncers']}` (loss {meta['syncer_loss']}, step {meta.get('syncer_step')}). "
        f"Split `{meta['split']}` of `{meta['data_dir']}`: {meta['num_clips']} clips, {meta['num_sequences']} sequences "
        f"of {meta['seq_frames'] or 'whole-segment'} frames; vshift {meta['vshift']}, padding {meta['padding']!r}.",
        "|AV-Off_l| is in samples at level l's rate (1 = 40·2^l ms); AV-Conf = median − min of the mean "
        "embedding distance over shifts. Mean ± std over sequences.", "",
    ]
    head = ["Method", "n"]
    for lvl in range(num_levels):
        ms = int(200 * 2**lvl)
        head += [f"\\|AV-Off{lvl + 1}\\| ↓ ({ms} ms)", f"AV-Conf{lvl + 1} ↑"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in methods.items():
        row = [name, str(s["n"])]
        for lv in s["levels"]:
            row += [_pm(lv["abs_offset"]), _pm(lv["confidence"])]
        lines.append("| " + " | ".join(row) + " |")
    gt = methods[GT]["levels"]
    lines += ["", "Ground truth median |AV-Off| per level: " + ", ".join(
        f"{int(lv['segment_ms'])} ms: {lv['abs_offset']['median']:g}" for lv in gt),
        "Ground truth mean signed AV-Off (positive = audio leads the lips): " + ", ".join(
        f"{int(lv['segment_ms'])} ms: {lv['offset']['mean']:+.2f}" for lv in gt), ""]

    lines += ["# Landmark distance and motion", "",
              "LMD: mean point distance to GT, in pixels of a 256 crop (normalised × 256); M = mouth 48-67, F = all 68. "
              "Velocity/acceleration: mean per-point magnitude, ×10⁻³ normalised units per frame (per frame²). "
              "Head energy E_l: mean squared velocity of the level-l jaw+nose centroid trajectory, ×10⁻⁶ units² per "
              "level-l sample. Mouth: inner-lip gap ‖p62−p66‖, ×10⁻² units (mean±std over sequences of the per-sequence mean "
              "and std).", ""]
    head = ["Method", "M-LMD (px)", "F-LMD (px)", "velocity", "accel."] + [f"E_{l}" for l in range(num_levels)] + \
           ["mouth open", "mouth open std", "LSE-D (200 ms)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in methods.items():
        m, mo = s["lmd"], s["motion"]

        def sc(d, k):
            return {**d, "mean": d["mean"] * k, "std": d["std"] * k}

        row = [name, _pm(m["m_lmd_px"]), _pm(m["f_lmd_px"]), _pm(sc(mo["velocity"], 1e3)),
               _pm(sc(mo["acceleration"], 1e3))]
        row += [_pm(sc(mo[f"head_energy_l{l}"], 1e6)) for l in range(num_levels)]
        row += [_pm(sc(mo["mouth_open_mean"], 1e2)), _pm(sc(mo["mouth_open_std"], 1e2)),
                _pm(s["levels"][0]["min_dist"])]
        lines.append("| " + " | ".join(row) + " |")
    c = result["checks"]
    lines += ["", "# Checks", "",
              f"- GT AV-Conf > static face, per level: {c['gt_conf_above_static_face']}",
              f"- GT AV-Conf > shuffled audio, per level: {c['gt_conf_above_shuffled_audio']}",
              f"- GT median |AV-Off| at 200 ms = {c['gt_median_abs_offset_l0']:g} (≤ 1: "
              f"{c['gt_median_abs_offset_l0_le_1']})",
              f"- all pass: {c['all_pass']}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- command


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = EvalSyncConfig()
    p.add_argument("--data", default=d.data_dir, help="dataset directory (manifest.tsv + clips/)")
    p.add_argument("--split", default=d.split, choices=("train", "val", "test"), help="speaker-disjoint split")
    p.add_argument("--metric-syncers", default=d.metric_syncers,
                   help=f"metric syncer pyramid checkpoint, path without suffix (default {DEFAULT_SYNCERS[0]}, else {DEFAULT_SYNCERS[1]})")
    p.add_argument("--out", required=True, help="output directory for eval_sync.md and eval_sync.json")
    p.add_argument("--predictions", action="append", default=[], metavar="DIR",
                   help="directory of predicted sequences (*.npz: landmarks, clip_id[, start_frame, method]); repeatable")
    p.add_argument("--seq-frames", type=int, default=d.seq_frames, help="sequence length in frames; 0 = whole segments")
    p.add_argument("--vshift", type=int, default=d.vshift, help="largest shift tried, samples at each level's rate")
    p.add_argument("--padding", default=d.padding, choices=("zero", "valid"),
                   help="offset search: 'zero' = SyncNet (zero-padded audio embeddings), 'valid' = real pairs only")
    p.add_argument("--max-clips", type=int, default=d.max_clips, help="only the first N clips of the split (0 = all)")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0 = torch default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = EvalSyncConfig(data_dir=args.data, split=args.split, metric_syncers=args.metric_syncers,
                         seq_frames=args.seq_frames, vshift=args.vshift, padding=args.padding, max_clips=args.max_clips,
                         predictions=tuple(args.predictions), device=args.device, threads=args.threads)
    try:
        result = evaluate(cfg, Path(args.out), progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"msync eval-sync: {exc}", file=sys.stderr)
        return 1
    print(result["markdown"])
    return 0


def resolve_syncers(path: str) -> Path:
    """The metric syncer checkpoint (path without suffix): `path`, or the first default that exists.

    Raises:
        FileNotFoundError: with how to train or point to one.
    """
    candidates = [path] if path else list(DEFAULT_SYNCERS)
    stripped = [Path(c).with_suffix("") if Path(c).suffix in (".safetensors", ".json") else Path(c) for c in candidates]
    for p in stripped:
        if p.with_suffix(".json").is_file() and p.with_suffix(".safetensors").is_file():
            return p
    raise FileNotFoundError(
        f"metric syncers not found (tried {', '.join(str(p) + '.{json,safetensors}' for p in stripped)}). Train them "
        "with `msync train-syncers --config training/configs/metric_syncers.json --out runs/metric_syncers`, or pass "
        "--metric-syncers PATH (without suffix; runs/metric_syncers/checkpoint for an intermediate one).")


def finite_json(obj):
    """JSON-safe copy: NaN/inf become null (strict JSON has no NaN), numpy scalars become Python ones."""
    if isinstance(obj, dict):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def evaluate(cfg: EvalSyncConfig, out_dir: Path, progress: bool = True) -> dict:
    """Run the whole evaluation and write `out_dir/eval_sync.{md,json}`. Returns the result dict (+ "markdown")."""
    import torch

    from training.checkpoint import _to_jsonable, load_meta
    from training.data.clips import load_all
    from training.data.manifest import read_manifest
    from training.data.splits import assign_splits
    from training.models.syncer import load_pyramid

    syncer_path = resolve_syncers(cfg.metric_syncers)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    pyr = load_pyramid(syncer_path, device)
    meta = load_meta(syncer_path)
    if pyr.cfg.loss != "syncnet":
        print(f"note: {syncer_path} was trained with loss {pyr.cfg.loss!r}, not the metric 'syncnet' loss; "
              "a generator trained against this pyramid would be scored by its own critic", file=sys.stderr)
    trained_split = meta.get("split") or (meta.get("config") or {}).get("split")
    if trained_split is not None and trained_split != _to_jsonable(cfg.splits):
        print("warning: the syncers were trained with another split configuration; the evaluation split may "
              "overlap their training data", file=sys.stderr)

    records = read_manifest(cfg.data_dir)
    clips = assign_splits(records, cfg.splits)[cfg.split]
    if cfg.max_clips:
        clips = clips[: cfg.max_clips]
    segments = load_all(clips, cfg.clips, progress=progress)
    sequences, skipped = build_sequences(segments, cfg.seq_frames)
    if len(sequences) < 2:
        raise ValueError(f"split {cfg.split!r} gives {len(sequences)} sequence(s) of {cfg.seq_frames} frames; "
                         "need at least 2 (try --seq-frames 0 or more clips)")
    predictions = [p for d in cfg.predictions for p in load_predictions(d)]
    rows = method_inputs(sequences, predictions)

    per_sequence, summaries = {}, {}
    for method, items in rows.items():
        per_sequence[method] = score_method(pyr, items, sequences, cfg.vshift, method, progress, cfg.padding)
        summaries[method] = summarise(per_sequence[method], pyr.cfg.num_levels)
    result = {
        "meta": {"metric_syncers": str(syncer_path), "syncer_loss": pyr.cfg.loss, "syncer_step": meta.get("step"),
                 "split": cfg.split, "data_dir": cfg.data_dir, "num_clips": len({s.clip_id for s in sequences}),
                 "num_sequences": len(sequences), "segments_too_short": skipped, "seq_frames": cfg.seq_frames,
                 "vshift": cfg.vshift, "padding": cfg.padding, "offset_sign": "positive = audio leads the lips (video lags)",
                 "lmd_units": "m_lmd/f_lmd: normalised crop units; *_px: x256 (pixels of a 256 crop)",
                 "motion_units": MOTION_KEYS_DOC},
        "config": _to_jsonable(cfg),
        "sequences": [{"key": s.key, "clip_id": s.clip_id, "start_frame": s.start_frame, "num_frames": s.num_frames}
                      for s in sequences],
        "methods": summaries,
    }
    result["checks"] = checks(summaries)
    result["per_sequence"] = per_sequence
    markdown = render_markdown(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval_sync.md").write_text(markdown)
    (out_dir / "eval_sync.json").write_text(json.dumps(finite_json(result), indent=1, allow_nan=False))
    result["markdown"] = markdown
    return result
