"""Audio windows with speech-teacher targets, for distilling the teacher into the causal audio encoder.

A track is a stretch of 16 kHz speech with the teacher's features of its clean audio, one row per 40 ms frame
(`training.teacher`). Tracks come from the speech corpus (`training.data.speech_corpus`; short files are packed
end to end into tracks of at most one teacher window, 30 s, so the teacher runs once per track) and from the
audio of `../shared/data` clips (the splits the caller chooses). A window holds, like a generator window
(`training.data.generator_batches`), 352 samples of MFCC context, W warm-up frames, T target frames and L
look-ahead frames; the student reads a degraded copy (`training.data.channel_augment`), the targets are the
teacher's rows of the T target frames (computed on the clean track).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from stream_engine.features import FrontEndConfig
from training.data.channel_augment import ChannelAugmentConfig, degrade

SPF = 640  # samples per landmark frame at 16 kHz


@dataclasses.dataclass(frozen=True)
class Track:
    """audio: (T * 640,) float32 16 kHz; teacher: (T, D) float32; name: where it comes from."""

    audio: np.ndarray
    teacher: np.ndarray
    name: str

    @property
    def num_frames(self) -> int:
        return len(self.teacher)


@dataclasses.dataclass
class DistillBatch:
    """audio: (B, context + 640 (W + T + L)) degraded PCM (zeros before a track's start); valid: (B, W + T + L)
    bool, False before the track's start; teacher: (B, T, D) targets of the T target frames."""

    audio: np.ndarray
    valid: np.ndarray
    teacher: np.ndarray


def pack_clips(clips: list[np.ndarray], max_seconds: float = 29.0, gap_seconds: float = 0.2) -> list[np.ndarray]:
    """Concatenate clips in order, `gap_seconds` of zeros between them, into packs of at most `max_seconds` (a clip
    longer than that is a pack of its own, cut to it); each pack is zero-padded to whole 640-sample frames."""
    limit, gap = int(max_seconds * 16000), np.zeros(int(gap_seconds * 16000), np.float32)
    packs: list[np.ndarray] = []
    cur: list[np.ndarray] = []
    size = 0
    for clip in clips:
        clip = np.asarray(clip, np.float32)[:limit]
        add = len(clip) + (len(gap) if cur else 0)
        if cur and size + add > limit:
            packs.append(np.concatenate(cur))
            cur, size = [], 0
            add = len(clip)
        if cur:
            cur.append(gap)
        cur.append(clip)
        size += add
    if cur:
        packs.append(np.concatenate(cur))
    return [np.pad(p, (0, -len(p) % SPF)) for p in packs]


def teacher_tracks(audios: list[np.ndarray], names: list[str], cache_dir, progress: bool = True) -> list[Track]:
    """Tracks of 16 kHz clips with their teacher features (through the teacher cache; frames = len // 640)."""
    from training.teacher import features_at_mfcc_rate

    feats = features_at_mfcc_rate(audios, cache_dir=cache_dir, mfcc_per_frame=1, progress=progress)
    out = []
    for a, f, n in zip(audios, feats, names, strict=True):
        if len(f):
            out.append(Track(np.asarray(a[: len(f) * SPF], np.float32), f.astype(np.float32), n))
    return out


class DistillWindows:
    """Draws windows from tracks long enough to hold T + L + 1 frames, with probability proportional to a
    track's number of window starts (every 40 ms of audio equally likely). With `target_shift_frames` = s the
    targets of target frames t are the teacher's rows t - s (the student learns features s frames later than the
    teacher's; windows start at frame s or later)."""

    def __init__(
        self,
        tracks: list[Track],
        num_frames: int,
        lookahead_frames: int,
        warmup_frames: int,
        frontend: FrontEndConfig | None = None,
        target_shift_frames: int = 0,
    ) -> None:
        frontend = frontend or FrontEndConfig()
        if target_shift_frames < 0:
            raise ValueError(f"target_shift_frames must be >= 0, got {target_shift_frames}")
        self.shift = target_shift_frames
        if frontend.samples_per_landmark_frame != SPF or frontend.sample_rate_hz != 16000:
            raise ValueError("distillation windows assume 16 kHz audio and 640 samples per frame")
        self.frontend = frontend
        self.num_frames, self.lookahead, self.warmup = num_frames, lookahead_frames, warmup_frames
        need = num_frames + lookahead_frames + target_shift_frames
        self.tracks = [t for t in tracks if t.num_frames >= need]
        if not self.tracks:
            raise ValueError(f"no track holds {need} frames")
        starts = np.array([t.num_frames - need + 1 for t in self.tracks], dtype=np.float64)
        self.num_starts = starts.astype(int)
        self.weights = starts / starts.sum()

    def window_audio(self, track: int, start: int) -> tuple[np.ndarray, np.ndarray]:
        """Clean audio and valid mask of the window whose first target frame is `start` (>= 0)."""
        t = self.tracks[track]
        ctx = self.frontend.context_samples
        first = start - self.warmup
        a0 = first * SPF - ctx
        a1 = (start + self.num_frames + self.lookahead) * SPF
        audio = np.zeros(a1 - a0, dtype=np.float32)
        lo = max(a0, 0)
        audio[lo - a0 :] = t.audio[lo:a1]
        valid = np.arange(first, first + self.warmup + self.num_frames + self.lookahead) >= 0
        return audio, valid

    def sample(
        self, batch_size: int, rng: np.random.Generator, augment: ChannelAugmentConfig | None = None
    ) -> DistillBatch:
        """A random batch; with `augment` every window is degraded (babble: another random window)."""
        tracks = rng.choice(len(self.tracks), size=batch_size, p=self.weights)
        starts = [self.shift + int(rng.integers(0, self.num_starts[k])) for k in tracks]
        audio, valid, teacher = [], [], []
        for k, s in zip(tracks, starts):
            a, v = self.window_audio(int(k), s)
            if augment is not None:
                other = int(rng.choice(len(self.tracks), p=self.weights))
                babble, _ = self.window_audio(other, self.shift + int(rng.integers(0, self.num_starts[other])))
                a = degrade(a, rng, augment, babble)
            audio.append(a)
            valid.append(v)
            teacher.append(self.tracks[int(k)].teacher[s - self.shift : s - self.shift + self.num_frames])
        return DistillBatch(np.stack(audio), np.stack(valid), np.stack(teacher))

    def fixed(self, batch_size: int, seed: int = 1234, augment: ChannelAugmentConfig | None = None) -> DistillBatch:
        """A reproducible batch (validation)."""
        return self.sample(batch_size, np.random.default_rng(seed), augment)
