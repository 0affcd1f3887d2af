"""Training windows for the generator: audio with warm-up context and look-ahead, and the landmark targets."""

from __future__ import annotations

import dataclasses

import numpy as np

from stream_engine.features import FrontEndConfig
from training.data.augment import AugmentConfig, augment_landmarks, augment_waveform
from training.data.clips import Segment
from training.data.nonspeech import RestMixConfig, mix_window


@dataclasses.dataclass
class WindowBatch:
    """A batch of generator windows (numpy, float32).

    audio: (B, context + 640 * (W + T + L)) PCM: 352 samples of context, then warm-up, target and look-ahead
        frames (zeros before a segment's start).
    valid: (B, W + T + L) bool, False for frames before the segment's start (the stream had not begun).
    landmarks: (B, T + 1, 68, 2): the reference frame (index 0) followed by the T target frames.
    segment_index, start_frame: where each window comes from.
    speech: (B, T) bool, the target frame holds speech, so its landmark targets apply (all True without mixing).
    rest: (B, T) bool, non-speech frames where the mouth should be at rest (`training.data.nonspeech`).
    mixed: (B,) bool, the window had non-speech mixed in.
    """

    audio: np.ndarray
    valid: np.ndarray
    landmarks: np.ndarray
    segment_index: np.ndarray
    start_frame: np.ndarray
    speech: np.ndarray | None = None
    rest: np.ndarray | None = None
    mixed: np.ndarray | None = None

    def __post_init__(self) -> None:
        b, t = self.landmarks.shape[0], self.landmarks.shape[1] - 1
        if self.speech is None:
            self.speech = np.ones((b, t), bool)
        if self.rest is None:
            self.rest = np.zeros((b, t), bool)
        if self.mixed is None:
            self.mixed = np.zeros(b, bool)


class WindowSampler:
    """Draws windows of `num_frames` target frames from segments long enough to hold them.

    Sampling balances identities like the syncer batches (an identity's share grows with the square root of
    its data), so GRID s1 does not drown the in-the-wild speakers.
    """

    def __init__(
        self,
        segments: list[Segment],
        num_frames: int,
        lookahead_frames: int,
        warmup_frames: int,
        frontend: FrontEndConfig,
    ) -> None:
        self.frontend = frontend
        self.num_frames, self.lookahead, self.warmup = num_frames, lookahead_frames, warmup_frames
        need = num_frames + lookahead_frames + 1
        self.segments = [s for s in segments if s.num_frames >= need]
        if not self.segments:
            raise ValueError(f"no segment holds {need} frames")
        starts = np.array([s.num_frames - need + 1 for s in self.segments], dtype=np.float64)
        totals: dict[str, float] = {}
        for s, n in zip(self.segments, starts):
            totals[s.identity] = totals.get(s.identity, 0.0) + n
        w = np.array([n / np.sqrt(totals[s.identity]) for s, n in zip(self.segments, starts)])
        self.weights = w / w.sum()
        self.num_starts = starts.astype(int)

    def window(
        self, seg_index: int, start: int, rng: np.random.Generator | None = None, augment: AugmentConfig | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One window whose first target frame is `start` (>= 1): (audio, valid, landmarks)."""
        seg = self.segments[seg_index]
        spf, ctx = self.frontend.samples_per_landmark_frame, self.frontend.context_samples
        first = start - self.warmup
        total_frames = self.warmup + self.num_frames + self.lookahead
        a0 = first * spf - ctx
        a1 = (start + self.num_frames + self.lookahead) * spf
        audio = np.zeros(a1 - a0, dtype=np.float32)
        lo = max(a0, 0)
        audio[lo - a0 :] = seg.audio[lo:a1]
        valid = np.arange(first, first + total_frames) >= 0
        lm = seg.landmarks[start - 1 : start + self.num_frames]
        if augment is not None and rng is not None:
            lm = augment_landmarks(lm, rng, augment)
            audio = augment_waveform(audio, rng, augment)
        return audio, valid, lm.astype(np.float32)

    def sample(
        self,
        batch_size: int,
        rng: np.random.Generator,
        augment: AugmentConfig | None = None,
        rest: RestMixConfig | None = None,
        mean_face: np.ndarray | None = None,
        stream_start_prob: float = 0.0,
    ) -> WindowBatch:
        """A random batch; with `rest.fraction` > 0 the last round(fraction * B) windows get non-speech mixed in
        (after augmentation, so speech gain does not scale the sound; `mean_face` is the reference for some
        all-non-speech windows); with `stream_start_prob` > 0 that share of windows starts at its segment's first
        frame (`TrainGeneratorConfig.stream_start_prob`)."""
        segs = rng.choice(len(self.segments), size=batch_size, p=self.weights)
        starts = np.array([1 + rng.integers(0, self.num_starts[s]) for s in segs])
        if stream_start_prob > 0.0:  # a stream's first frames: the whole warm-up before the segment's start
            starts = np.where(rng.uniform(size=batch_size) < stream_start_prob, 1, starts)
        parts = [self.window(int(s), int(t), rng, augment) for s, t in zip(segs, starts)]
        audio = np.stack([p[0] for p in parts])
        landmarks = np.stack([p[2] for p in parts])
        speech = np.ones((batch_size, self.num_frames), bool)
        rest_mask = np.zeros((batch_size, self.num_frames), bool)
        mixed = np.zeros(batch_size, bool)
        valid = np.stack([p[1] for p in parts])
        n_mix = int(round(rest.fraction * batch_size)) if rest is not None else 0
        for i in range(batch_size - n_mix, batch_size):
            assert rest is not None
            m = mix_window(
                audio[i],
                landmarks[i],
                warmup_frames=self.warmup,
                lookahead_frames=self.lookahead,
                context_samples=self.frontend.context_samples,
                samples_per_frame=self.frontend.samples_per_landmark_frame,
                rng=rng,
                cfg=rest,
                mean_face=mean_face,
            )
            audio[i], landmarks[i], speech[i], rest_mask[i], mixed[i] = m.audio, m.landmarks, m.speech, m.rest, True
            if m.fresh_start:
                valid[i, : self.warmup] = False
        return WindowBatch(audio, valid, landmarks, segs, starts, speech, rest_mask, mixed)

    def fixed(self, batch_size: int, seed: int = 1234) -> WindowBatch:
        """A reproducible, unaugmented batch (validation)."""
        return self.sample(batch_size, np.random.default_rng(seed), augment=None)
