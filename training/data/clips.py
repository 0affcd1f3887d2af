"""Loading clips into training-ready segments: normalised landmarks, aligned audio and log-mel features."""

from __future__ import annotations

import dataclasses

import numpy as np

from stream_engine.audio_io import load_audio
from stream_engine.features import FrontEndConfig, logmel
from stream_engine.landmarks import CropConfig, fixed_crop
from training.data.gaps import split_at_gaps
from training.data.manifest import ClipRecord


@dataclasses.dataclass(frozen=True)
class Segment:
    """A contiguous, gap-free piece of a clip.

    Attributes:
        clip_id, identity: where it comes from (identity keys the speaker-disjoint splits).
        start_frame: index of its first landmark frame in the clip.
        landmarks: (T, 68, 2) float32 in the clip's fixed crop, [0, 1] for a face inside the crop.
        audio: (T * samples_per_landmark_frame,) float32 16 kHz PCM; landmark frame t covers
            audio[640 t : 640 (t + 1)].
        logmel: (4 T, n_mels) float32 causal log-mel computed on the whole clip (so its context is real
            audio, not padding); mfcc frames 4t .. 4t+3 belong to landmark frame t.
    """

    clip_id: str
    identity: str
    start_frame: int
    landmarks: np.ndarray
    audio: np.ndarray
    logmel: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.landmarks)


@dataclasses.dataclass(frozen=True)
class ClipLoadConfig:
    """How clips become segments: gap handling, the crop rule and the audio front end of the log-mel features."""

    max_gap_frames: int = 5
    min_length_frames: int = 25
    crop: CropConfig = CropConfig()
    frontend: FrontEndConfig = FrontEndConfig()


def load_segments(record: ClipRecord, cfg: ClipLoadConfig = ClipLoadConfig()) -> list[Segment]:
    """Load one clip and cut it into gap-free segments (an empty list when nothing usable remains)."""
    frontend = cfg.frontend
    points_px = np.load(record.landmarks_path)
    if points_px.ndim != 3 or points_px.shape[1:] != (68, 2):
        raise ValueError(f"{record.landmarks_path}: expected (T, 68, 2) landmarks, got {points_px.shape}")
    audio = load_audio(record.audio_path, frontend.sample_rate_hz)
    spf = frontend.samples_per_landmark_frame
    num_frames = min(len(points_px), len(audio) // spf)
    points_px = points_px[:num_frames]
    crop = fixed_crop(points_px, cfg.crop)
    feats = logmel(audio[: num_frames * spf], frontend).astype(np.float32)
    k = frontend.mfcc_per_landmark_frame
    out = []
    for start, end, filled in split_at_gaps(points_px, cfg.max_gap_frames, cfg.min_length_frames):
        out.append(
            Segment(
                clip_id=record.id,
                identity=record.identity,
                start_frame=start,
                landmarks=crop.normalise(filled),
                audio=audio[start * spf : end * spf],
                logmel=feats[start * k : end * k],
            )
        )
    return out


def load_all(records: list[ClipRecord], cfg: ClipLoadConfig = ClipLoadConfig(), progress: bool = True) -> list[Segment]:
    """Load many clips, skipping (and reporting) unreadable ones."""
    from tqdm import tqdm

    out: list[Segment] = []
    for r in tqdm(records, desc="loading clips", disable=not progress, unit="clip"):
        try:
            segs = load_segments(r, cfg)
        except Exception as exc:  # one bad clip never stops the run
            print(f"skipping {r.id}: {exc}")
            continue
        out.extend(segs)
    return out
