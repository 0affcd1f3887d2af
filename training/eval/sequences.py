"""The evaluation sequences and the method rows scored on them: ground truth, the two controls (static face,
shuffled audio) and predicted landmarks read from files.

Predictions (`DIR/*.npz`, one directory per method) hold
- `landmarks`: (T, 68, 2) float, 25 fps, in the clip's fixed-crop normalised coordinates (the frame of
  `Segment.landmarks`);
- `clip_id`: str, the manifest id;
- `start_frame` (optional, int, default 0): clip frame index of `landmarks[0]`;
- `method` (optional, str): row name; default the directory name.
A predicted file may cover a whole clip, a segment or one evaluation sequence; each evaluation sequence that it
covers entirely is scored with the sequence's own audio and compared with its GT.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from stream_engine.features import FrontEndConfig

GT, STATIC, SHUFFLED = "ground truth", "static face", "shuffled audio"


@dataclasses.dataclass(frozen=True)
class EvalSequence:
    """One evaluation sequence: landmarks (T, 68, 2) normalised, mfcc (4T, 26) raw MFCC at 100 Hz (or (4T, 384)
    speech-teacher features for syncers that read them)."""

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


def build_sequences(
    segments, seq_frames: int, frontend: FrontEndConfig, audio_features: list[np.ndarray] | None = None
) -> tuple[list[EvalSequence], int]:
    """Cut segments into non-overlapping `seq_frames`-frame sequences (0: whole segments), with the MFCC of
    `frontend` (the one the segments' log-mel features were computed with), or with `audio_features` (per segment
    (4 T, D) rows at the MFCC rate, e.g. the speech teacher's for syncers that read them) in the `mfcc` field.

    Returns:
        (sequences, number of segments too short to give one sequence).
    """
    from stream_engine.features import mfcc_from_logmel

    out, skipped = [], 0
    for j, seg in enumerate(segments):
        if audio_features is not None:
            mfcc = audio_features[j]
        else:
            mfcc = mfcc_from_logmel(seg.logmel.astype(np.float64), frontend).astype(np.float32)
        k = len(mfcc) // max(seg.num_frames, 1)  # mfcc frames per landmark frame (4)
        if seq_frames <= 0:
            pieces = [(0, seg.num_frames)]
        else:
            pieces = [(p * seq_frames, seq_frames) for p in range(seg.num_frames // seq_frames)]
            skipped += not pieces
        for start, length in pieces:
            out.append(
                EvalSequence(
                    seg.clip_id,
                    seg.identity,
                    seg.start_frame + start,
                    seg.landmarks[start : start + length],
                    mfcc[k * start : k * (start + length)],
                )
            )
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


def method_inputs(
    sequences: list[EvalSequence], predictions: list[Prediction]
) -> dict[str, list[tuple[int, np.ndarray, np.ndarray]]]:
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


def load_split_segments(data_dir: str, splits, split: str, clips, max_clips: int = 0, progress: bool = True):
    """(records of every split, the evaluated split's records, its gap-free segments) of a dataset directory.

    `splits` is a `SplitConfig`, `clips` a `ClipLoadConfig`; `max_clips` keeps the split's first N clips (0 = all).
    """
    from training.data.clips import load_all
    from training.data.manifest import read_manifest
    from training.data.splits import assign_splits

    by_split = assign_splits(read_manifest(data_dir), splits)
    if split not in by_split:  # `--set split=...` skips the CLI's choices
        raise ValueError(f"unknown split {split!r}: expected one of {sorted(by_split)}")
    records = by_split[split][:max_clips] if max_clips else by_split[split]
    return by_split, records, load_all(records, clips, progress=progress)


def clip_counts(records, segments, sequences) -> dict:
    """How many clips an evaluation used, counted the same way by `msync eval` and `msync eval-sync`:
    `clips_selected` (the split's records after `--max-clips`, manifest order), `clips_with_segments` (those with a
    gap-free segment of at least `clips.min_length_frames`) and `num_clips` (those that give at least one scored
    sequence; the figure both reports print)."""
    return {
        "num_clips": len({s.clip_id for s in sequences}),
        "clips_selected": len(records),
        "clips_with_segments": len({s.clip_id for s in segments}),
    }


def sequences_or_error(
    segments, seq_frames: int, split: str, frontend: FrontEndConfig, syncer_cfg=None
) -> tuple[list[EvalSequence], int]:
    """`build_sequences`, refusing fewer than 2 sequences (the shuffled-audio control needs two); the audio rows
    are what the metric syncers of `syncer_cfg` read (MFCC unless it asks for the speech teacher).

    Raises:
        ValueError: with the split and length, and what to try.
    """
    from training.data.syncer_batches import syncer_audio_features

    feats = None if syncer_cfg is None else syncer_audio_features(segments, syncer_cfg, frontend)
    sequences, skipped = build_sequences(segments, seq_frames, frontend, feats)
    if len(sequences) < 2:
        raise ValueError(
            f"split {split!r} gives {len(sequences)} sequence(s) of {seq_frames} frames; "
            "need at least 2 (try a shorter --seq-frames, e.g. 48 for 2-4 s clips, or more clips; a set of your own "
            "is split by speaker like ../shared, so evaluate all of it with --set splits.test_fraction=1 --set "
            "splits.val_fraction=0 --set splits.max_heldout_minutes=1e9 --set shape_data_dir=../shared/data)"
        )
    return sequences, skipped


def sequence_list(sequences: list[EvalSequence]) -> list[dict]:
    """The evaluated sequences as JSON (key, clip_id, start_frame, num_frames)."""
    return [
        {"key": s.key, "clip_id": s.clip_id, "start_frame": s.start_frame, "num_frames": s.num_frames}
        for s in sequences
    ]
