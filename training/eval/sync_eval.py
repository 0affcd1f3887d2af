"""`msync eval-sync`: multi-scale AV synchrony (paper Table 3), LMD and motion statistics of landmark sequences.

    msync eval-sync --data ../shared/data --split test --metric-syncers training/weights/metric_syncers --out runs/eval
    msync eval-sync ... --predictions runs/gen/test_predictions        # add a generator's output as a row

Protocol (paper §4.3): the speaker-disjoint split's clips are loaded as gap-free segments and cut into
non-overlapping sequences of `--seq-frames` frames (80, as in the paper; 0 keeps whole segments). Every method
row is scored on the same sequences with the *metric* syncer pyramid (SyncNet loss, never used to train a
generator) by :func:`training.metrics.sync.av_sync` at every level: |AV-Off_l| in samples at level l's rate
(1 = 40·2^l ms, l = 0…3) and AV-Conf_l, reported as mean ± std over sequences.

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
import sys
from pathlib import Path

from stream_engine.dataclass_io import to_dict
from training.config_io import Flag, add_config_arguments, add_flags, config_from_args, flag_overrides
from training.data.clips import ClipLoadConfig
from training.data.splits import SplitConfig
from training.eval.metric_syncers import DEFAULT_SYNCERS

HELP = "Multi-scale AV offset/confidence, LMD and motion statistics (paper Table 3)."


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


def evaluate(cfg: EvalSyncConfig, out_dir: Path, progress: bool = True) -> dict:
    """Run the whole evaluation and write `out_dir/eval_sync.{md,json}`. Returns the result dict (+ "markdown")."""
    from training.eval.metric_syncers import eval_device, load_metric_syncers, trained_split
    from training.eval.report import render_sync_markdown, write_json
    from training.eval.scoring import MOTION_KEYS_DOC, checks, score_method, summarise, valid_padding_checks
    from training.eval.sequences import (
        clip_counts,
        load_predictions,
        load_split_segments,
        method_inputs,
        sequence_list,
        sequences_or_error,
    )
    from training.models.syncer import describe_levels

    device = eval_device(cfg.device, cfg.threads)
    pyr, syncer_path, meta = load_metric_syncers(cfg.metric_syncers, device)
    if pyr.cfg.loss != "syncnet":
        print(
            f"note: {syncer_path} was trained with loss {pyr.cfg.loss!r}, not the metric 'syncnet' loss; "
            "a generator trained against this pyramid would be scored by its own critic",
            file=sys.stderr,
        )
    split_trained = trained_split(meta)
    if split_trained is not None and split_trained != to_dict(cfg.splits):
        print(
            "warning: the syncers were trained with another split configuration; the evaluation split may "
            "overlap their training data",
            file=sys.stderr,
        )
    _, records, segments = load_split_segments(cfg.data_dir, cfg.splits, cfg.split, cfg.clips, cfg.max_clips, progress)
    sequences, skipped = sequences_or_error(segments, cfg.seq_frames, cfg.split, cfg.clips.frontend, pyr.cfg)
    rows = method_inputs(sequences, [p for d in cfg.predictions for p in load_predictions(d)])
    per_sequence, summaries = {}, {}
    for method, items in rows.items():
        per_sequence[method] = score_method(pyr, items, sequences, cfg.vshift, method, progress, cfg.padding)
        summaries[method] = summarise(per_sequence[method], pyr.cfg.num_levels)
    result = {
        "meta": {
            "metric_syncers": str(syncer_path),
            "syncer_loss": pyr.cfg.loss,
            "syncer_step": meta.get("step"),
            "syncer_levels": describe_levels(pyr.cfg),
            "split": cfg.split,
            "data_dir": cfg.data_dir,
            **clip_counts(records, segments, sequences),
            "num_sequences": len(sequences),
            "segments_too_short": skipped,
            "seq_frames": cfg.seq_frames,
            "vshift": cfg.vshift,
            "padding": cfg.padding,
            "offset_sign": "positive = audio leads the lips (video lags)",
            "lmd_units": "m_lmd/f_lmd: normalised crop units; *_px: x256 (pixels of a 256 crop)",
            "motion_units": MOTION_KEYS_DOC,
        },
        "config": to_dict(cfg),
        "sequences": sequence_list(sequences),
        "methods": summaries,
        "checks": checks(summaries, cfg.padding),
        "checks_valid": None
        if cfg.padding == "valid"
        else valid_padding_checks(pyr, rows, sequences, cfg.vshift, progress),
        "per_sequence": per_sequence,
    }
    markdown = render_sync_markdown(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval_sync.md").write_text(markdown)
    write_json(out_dir / "eval_sync.json", result)
    result["markdown"] = markdown
    return result


# ----------------------------------------------------------------------------------------------- command

FLAGS = (
    Flag("--data", "data_dir", str, "dataset directory (manifest.tsv + clips/)"),
    Flag("--split", "split", str, "speaker-disjoint split", ("train", "val", "test")),
    Flag(
        "--metric-syncers",
        "metric_syncers",
        str,
        "metric syncer pyramid checkpoint, path without suffix "
        f"(default {DEFAULT_SYNCERS[0]}, else {DEFAULT_SYNCERS[1]})",
    ),
    Flag("--seq-frames", "seq_frames", int, "sequence length in frames; 0 = whole segments"),
    Flag("--vshift", "vshift", int, "largest shift tried, samples at each level's rate"),
    Flag(
        "--padding",
        "padding",
        str,
        "offset search: 'zero' = SyncNet (zero-padded audio embeddings), 'valid' = real pairs only",
        ("zero", "valid"),
    ),
    Flag("--max-clips", "max_clips", int, "only the first N clips of the split (0 = all)"),
    Flag("--device", "device", str, "auto, cpu or cuda"),
    Flag("--threads", "threads", int, "torch threads (0 = torch default)"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(
        p, "--set seq_frames=0 --set clips.min_length_frames=50", "JSON/TOML file of EvalSyncConfig settings"
    )
    p.add_argument("--out", required=True, help="output directory for eval_sync.md and eval_sync.json")
    p.add_argument(
        "--predictions",
        action="append",
        default=[],
        metavar="DIR",
        help="directory of predicted sequences (*.npz: landmarks, clip_id[, start_frame, method]); repeatable",
    )
    add_flags(p, FLAGS)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(EvalSyncConfig, args, extra=flag_overrides(args, FLAGS))
        cfg = dataclasses.replace(cfg, predictions=cfg.predictions + tuple(args.predictions))
        result = evaluate(cfg, Path(args.out), progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"msync eval-sync: {exc}", file=sys.stderr)
        return 1
    print(result["markdown"])
    return 0
