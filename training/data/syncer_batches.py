"""Pyramids of the clips and groups of aligned (landmark, audio) segments for syncer training and scoring."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from stream_engine.features import FrontEndConfig, mfcc_from_logmel
from training import pyramid
from training.data.augment import AugmentConfig, augment_landmarks, augment_logmel
from training.data.clips import Segment

if TYPE_CHECKING:
    from training.models.syncer import SyncerConfig


@dataclasses.dataclass
class Group:
    """Aligned segments at one level: landmarks (N, L, 68, 2), mfcc (N, A, n_mfcc) float32, and sources; (L, A) =
    (5, 20) pyramid samples, or (5 · 2^l, 20 · 2^l) full-rate samples at a full-rate level."""

    level: int
    landmarks: np.ndarray
    mfcc: np.ndarray
    segment_index: np.ndarray
    position: np.ndarray


class PyramidStore:
    """Every segment's landmark and log-mel pyramids, computed once on the clean data.

    Augmentation is applied to the extracted segments afterwards: affine landmark maps and gain commute with
    average pooling, and the 3-D-like rotation and the noise are close enough for a training signal.
    """

    def __init__(
        self,
        segments: list[Segment],
        num_levels: int,
        kernel: int,
        frontend: FrontEndConfig,
        landmark_frames: int = 5,
        audio_frames: int = 20,
        sequence_centring: bool = True,
        iod_scale: bool = False,
        audio_features: list[np.ndarray] | None = None,
        full_rate_levels: tuple[int, ...] = (),
    ) -> None:
        from training.models.syncer import sequence_centre

        self.segments = segments
        self.full_rate_levels = tuple(full_rate_levels)
        self.num_levels, self.kernel = num_levels, kernel
        self.landmark_frames, self.audio_frames = landmark_frames, audio_frames
        self.ratio = frontend.mfcc_per_landmark_frame
        self.frontend = frontend

        # Sequence centring (SyncerConfig.landmark_centering == "sequence"): each point relative to its mean over
        # the whole segment, plus the crop centre so that augmentation (scale/rotation about the centre) applies.
        def prep(x: np.ndarray) -> np.ndarray:
            return sequence_centre(x, iod_scale) + 0.5 if sequence_centring else x

        self.landmarks = [pyramid.build(prep(s.landmarks), num_levels, kernel) for s in segments]
        # `audio_features` (per segment (4 T, D), e.g. the speech teacher's) replace the log-mel pyramids; they are
        # used as they are (no MFCC transform, no audio augmentation).
        self.features_given = audio_features is not None
        audio = [s.logmel for s in segments] if audio_features is None else audio_features
        self.logmel = [pyramid.build(a, num_levels, kernel) for a in audio]
        self.identity = np.array([s.identity for s in segments])

    def window(self, level: int) -> tuple[int, int, int, int]:
        """(input pyramid level, landmark samples, audio rows, hop) of a level-`level` window, as
        `SyncerConfig.window`: a full-rate level reads level 0 over 2^l times as many samples."""
        if level in self.full_rate_levels:
            return 0, self.landmark_frames << level, self.audio_frames << level, 1 << level
        return level, self.landmark_frames, self.audio_frames, 1

    def num_positions(self, level: int) -> np.ndarray:
        """(num_segments,) count of valid segment starts at `level` (in level-`level` samples)."""
        src, nl, na, hop = self.window(level)
        out = []
        for lm, lg in zip(self.landmarks, self.logmel):
            n_lm = (len(lm[src]) - nl) // hop + 1
            n_au = (len(lg[src]) - na) // (hop * self.ratio) + 1
            out.append(max(0, min(n_lm, n_au)))
        return np.array(out)

    def sampling_weights(self, level: int) -> np.ndarray:
        """Per-segment probabilities: an identity's share grows with the square root of its data, so the
        one-speaker corpora (GRID s1, one TV interview) do not drown everyone else."""
        pos = self.num_positions(level).astype(np.float64)
        totals: dict[str, float] = {}
        for ident, p in zip(self.identity, pos):
            totals[ident] = totals.get(ident, 0.0) + p
        w = np.array([p / np.sqrt(max(totals[i], 1.0)) for i, p in zip(self.identity, pos)])
        return w / w.sum()

    def extract(self, level: int, seg: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw segments starting at level-`level` samples `pos`: landmarks (N, L, 68, 2) and log-mel (N, A, n_mels)
        (see `window`)."""
        src, nl, na, hop = self.window(level)
        l0 = np.asarray(pos) * hop
        lm = np.stack([self.landmarks[s][src][p : p + nl] for s, p in zip(seg, l0)])
        a0 = l0 * self.ratio
        lg = np.stack([self.logmel[s][src][a : a + na] for s, a in zip(seg, a0)])
        return lm, lg

    def sample_group(
        self,
        level: int,
        rng: np.random.Generator,
        group_size: int = 49,
        per_clip: int = 7,
        augment: AugmentConfig | None = None,
        weights: np.ndarray | None = None,
    ) -> Group:
        """A group of `group_size` aligned pairs: up to `per_clip` non-overlapping positions from each sampled
        segment, so negatives mix other speakers with the same speaker at other times."""
        npos = self.num_positions(level)
        weights = self.sampling_weights(level) if weights is None else weights
        segs: list[int] = []
        poss: list[int] = []
        while len(segs) < group_size:
            s = int(rng.choice(len(npos), p=weights))
            # Positions of one clip are spaced by at least 200 ms of real time: one segment at level 0 (no
            # near-duplicate negatives), one sample at level >= 2. Coarse levels must keep several positions
            # per clip, or most negatives come from other clips and a syncer can win by recognising the clip.
            spacing = max(1, self.landmark_frames >> level)
            candidates = np.arange(int(rng.integers(0, min(spacing, int(npos[s])))), int(npos[s]), spacing)
            k = min(per_clip, len(candidates), group_size - len(segs))
            for p in rng.choice(candidates, size=k, replace=False):
                segs.append(s)
                poss.append(int(p))
        seg, pos = np.array(segs), np.array(poss)
        lm, lg = self.extract(level, seg, pos)
        if augment is not None:
            for s in np.unique(seg):  # one transform per source clip within the group
                rows = seg == s
                lm[rows] = augment_landmarks(lm[rows].reshape(-1, 68, 2), rng, augment).reshape(lm[rows].shape)
                if not self.features_given:
                    lg[rows] = augment_logmel(lg[rows], rng, augment, self.frontend)
        return Group(level, lm.astype(np.float32), self._audio_out(lg), seg, pos)

    def _audio_out(self, lg: np.ndarray) -> np.ndarray:
        """Log-mel rows -> MFCC, or given features as they are (float32)."""
        if self.features_given:
            return lg.astype(np.float32)
        return mfcc_from_logmel(lg.astype(np.float64), self.frontend).astype(np.float32)

    def sample_shift_group(
        self,
        level: int,
        rng: np.random.Generator,
        num_anchors: int,
        max_shift: int,
        num_shifts: int,
        augment: AugmentConfig | None = None,
        weights: np.ndarray | None = None,
        num_foreign: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hard negatives in SyncNet's way: landmark segments with their own clip's audio shifted in time.

        Each anchor is a random (segment, position); its candidates are the aligned audio window and
        `num_shifts` windows of the same segment shifted by 1..`max_shift` samples at the level's rate (either
        sign, distinct where the segment has enough of them, drawn with replacement otherwise), then
        `num_foreign` windows of other speakers' segments at random positions (what the shuffled-audio control
        of `msync eval-sync` pairs the face with; other segments when there is a single identity). One
        augmentation per anchor is shared by its candidates, so only the timing tells them apart.

        Returns:
            landmarks (num_anchors, L, 68, 2) and mfcc (num_anchors, 1 + num_shifts + num_foreign, A, n_mfcc),
            float32; candidate 0 is the aligned one ((L, A) as in `window`).
        """
        npos = self.num_positions(level)
        weights = self.sampling_weights(level) if weights is None else weights
        ok = npos >= 2
        w = np.where(ok, weights, 0.0)
        w = w / w.sum()
        lms, lgs = [], []
        for _ in range(num_anchors):
            s = int(rng.choice(len(npos), p=w))
            p = int(rng.integers(0, npos[s]))
            ks = np.arange(-max_shift, max_shift + 1)
            ks = ks[(ks != 0) & (p + ks >= 0) & (p + ks < npos[s])]
            shifts = rng.choice(ks, size=num_shifts, replace=len(ks) < num_shifts)
            starts = np.concatenate([[p], p + shifts])
            lm, lg = self.extract(level, np.full(len(starts), s), starts)
            lm = lm[:1]
            if num_foreign:
                others = (self.identity != self.identity[s]) & ok
                if not others.any():
                    others = (np.arange(len(npos)) != s) & (npos >= 1)
                wf = np.where(others, weights, 0.0)
                fseg = rng.choice(len(npos), size=num_foreign, p=wf / wf.sum())
                fpos = np.array([int(rng.integers(0, npos[f])) for f in fseg])
                lg = np.concatenate([lg, self.extract(level, fseg, fpos)[1]])
            if augment is not None:
                lm = augment_landmarks(lm.reshape(-1, 68, 2), rng, augment).reshape(lm.shape)
                if not self.features_given:
                    lg = augment_logmel(lg, rng, augment, self.frontend)
            lms.append(lm[0])
            lgs.append(lg)
        return np.stack(lms).astype(np.float32), self._audio_out(np.stack(lgs))

    def mfcc_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-coefficient mean and std of level-0 MFCC (or given features) over all segments: (n_mfcc,), (n_mfcc,)."""
        allm = np.concatenate([self._audio_out(lg[0]).astype(np.float64) for lg in self.logmel])
        return allm.mean(axis=0).astype(np.float32), (allm.std(axis=0) + 1e-3).astype(np.float32)


def syncer_store(
    segments: list[Segment], sc: SyncerConfig, frontend: FrontEndConfig, teacher_cache: str | None = None
) -> PyramidStore:
    """The store a syncer pyramid with config `sc` trains and is scored on (its levels, kernel, segment sizes,
    landmark centring and audio input). With `sc.audio_input == "teacher"` the speech teacher's features of every
    segment's audio are computed (or read from `teacher_cache`, default `training.teacher.default_cache_dir()`)."""
    return PyramidStore(
        segments,
        sc.num_levels,
        sc.pyramid_kernel,
        frontend,
        sc.landmark_frames,
        sc.audio_frames,
        sequence_centring=sc.landmark_centering == "sequence",
        iod_scale=sc.iod_scale,
        audio_features=syncer_audio_features(segments, sc, frontend, teacher_cache),
        full_rate_levels=tuple(sc.full_rate_levels) + tuple(sc.composite_levels),
    )


def syncer_audio_features(
    segments: list[Segment], sc: SyncerConfig, frontend: FrontEndConfig, teacher_cache: str | None = None
) -> list[np.ndarray] | None:
    """Per segment (4 T, 384) teacher features when `sc.audio_input == "teacher"`; None for MFCC syncers."""
    if sc.audio_input != "teacher":
        return None
    from training.teacher import default_cache_dir, features_at_mfcc_rate

    cache = teacher_cache or default_cache_dir()
    return features_at_mfcc_rate(
        [s.audio for s in segments], cache_dir=cache, mfcc_per_frame=frontend.mfcc_per_landmark_frame
    )
