"""Audio-visual syncers (paper §3.1): one pair of encoders per pyramid level, scoring 5 landmark samples
against 20 audio-feature samples of the same time span. A level may instead read its span at the full rate,
through its own strided encoders (`SyncerConfig.full_rate_levels`) or through level 0's encoders over the 200 ms
sub-windows that tile it (`SyncerConfig.composite_levels`, metric syncers v4 at 800 and 1600 ms).

Two kinds are trained from the same classes:
- the *loss* pyramid (InfoNCE on cosine scores, embeddings L2-normalised), frozen inside generator training;
- the *metric* pyramid (SyncNet's contrastive loss on Euclidean distances, embeddings not normalised), used
  only by evaluation, so that the model is never scored by the network it was trained against.
"""

from __future__ import annotations

import dataclasses
import math
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.models.convnext1d import Encoder1d

MOUTH_POINTS = 20  # iBUG points 48-67


@dataclasses.dataclass(frozen=True)
class SyncerConfig:
    """Architecture and loss of a syncer pyramid.

    Attributes:
        num_levels: pyramid levels (4: 200, 400, 800, 1600 ms segments).
        landmark_frames, audio_frames: samples per segment at every level (5 and 20).
        pyramid_kernel: width of the centred average pooling between levels (paper: 3; authors' code: 7).
        loss: "infonce" (cosine, normalised embeddings) or "syncnet" (Euclidean contrastive, raw embeddings).
        temperature: InfoNCE softmax temperature on cosine scores.
        syncnet_margin: hinge margin of the SyncNet contrastive loss.
        landmark_centering: what is removed from landmarks before encoding. "sequence" (default) subtracts
            every point's mean over the whole sequence the segment comes from (`prepare_sequence`), then the
            segment's mean 2-D position: the absolute mouth opening relative to the speaker's own average stays
            visible, the speaker's face shape does not, so a syncer cannot match voices to face shapes (an
            identity shortcut that does not generalise, and a loss a generator could satisfy by morphing the
            face). "shape" removes every point's mean over the 5-sample segment (motion only); "position"
            removes only the segment's mean 2-D position. "window" normalises each segment on its own: the
            segment's mean 2-D position is removed and everything is divided by the segment's mean
            inter-ocular distance (eye centres, points 36-41 and 42-47), so the size of a face in the crop and
            its place do not matter (used with hard time-shift negatives, which take away the identity
            shortcut: the negatives share the face).
        mouth_emphasis: also feed a copy of the mouth (points 48-67) centred on the mouth's own mean and scaled
            by the same inter-ocular distance, so the lips get as many input channels as the rest of the face.
        iod_scale: with "sequence" centring, also divide by the sequence's mean inter-ocular distance (outer
            eye corners p36-p45), so every face has the same size whatever its size in the crop.
        audio_input: what the audio encoder reads in place of MFCCs. "mfcc" (default): msync's 26 MFCCs at
            100 Hz. "teacher": the Whisper tiny.en encoder features of `training/teacher.py` (384-d, one per
            25 fps frame, each repeated over that frame's 4 MFCC rows; set n_mfcc = 384). Not causal and too
            costly for the step, so for evaluation syncers only.
        full_rate_levels: levels whose encoders read the full-rate inputs over their span instead of the
            pyramid's pooled samples: 5 · 2^l landmark frames at 25 fps and 20 · 2^l audio rows at 100 Hz (1600
            ms = 40 frames at level 3), windows and offsets still stepping by one level-l sample (2^l frames).
            Each encoder projects every frame on its own (`frame_proj` channels, GELU), concatenates each run of
            2^l frames into one sample (a convolution of kernel and stride 2^l) and runs the level's usual
            encoder over the 5 (20) samples. Pooling the input over 7 samples per level removes the lips'
            movement at the coarse levels (level 3 is smoothed to about 3 Hz); these levels keep it. Level 0 is
            the same either way. Empty (default) = every level reads its pyramid level (paper §3.1).
        frame_proj: per-frame projection width of the full-rate levels' encoders.
        composite_levels: levels without encoders of their own: a window of level l reads the full-rate span
            (as `full_rate_levels`), cuts it into the 2^l consecutive 200 ms sub-windows (5 frames, 20 audio rows)
            that tile it, embeds each with level 0's encoders and concatenates the 2^l embeddings, divided by
            sqrt(2^l). The distance of two such windows is the root-mean-square of level 0's distances of their
            sub-windows: how well lips and audio agree, 200 ms at a time, over the whole span, with offsets in
            the level's unit (40 · 2^l ms). It says nothing about slow motion that level 0 does not see.
    """

    num_levels: int = 4
    landmark_frames: int = 5
    audio_frames: int = 20
    num_landmarks: int = 68
    n_mfcc: int = 26
    pyramid_kernel: int = 7
    embed_dim: int = 128
    audio_widths: tuple[int, ...] = (64, 128, 128)
    audio_depths: tuple[int, ...] = (1, 1, 1)
    landmark_widths: tuple[int, ...] = (128, 128)
    landmark_depths: tuple[int, ...] = (1, 1)
    loss: str = "infonce"
    temperature: float = 0.1
    syncnet_margin: float = 2.0
    landmark_centering: str = "sequence"
    mouth_emphasis: bool = False
    iod_scale: bool = False
    audio_input: str = "mfcc"
    full_rate_levels: tuple[int, ...] = ()
    frame_proj: int = 64
    composite_levels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("full_rate_levels", "composite_levels"):
            levels = tuple(getattr(self, name))
            if any(not 0 <= lvl < self.num_levels for lvl in levels) or len(set(levels)) != len(levels):
                raise ValueError(f"{name} must be distinct levels in 0..{self.num_levels - 1}, got {list(levels)}")
        if 0 in self.composite_levels:
            raise ValueError("composite_levels cannot hold level 0 (its encoders are the ones they reuse)")
        if set(self.composite_levels) & set(self.full_rate_levels):
            raise ValueError(
                f"a level is either full-rate or composite, got {sorted(set(self.composite_levels) & set(self.full_rate_levels))}"
            )
        if self.frame_proj < 1:
            raise ValueError(f"frame_proj must be >= 1, got {self.frame_proj}")
        if self.audio_input not in ("mfcc", "teacher"):
            raise ValueError(f"unknown audio_input {self.audio_input!r}")
        if self.landmark_centering not in ("sequence", "shape", "position", "window"):
            raise ValueError(f"unknown landmark_centering {self.landmark_centering!r}")
        if self.loss not in ("infonce", "syncnet"):
            raise ValueError(f"unknown syncer loss {self.loss!r}")

    @property
    def normalise(self) -> bool:
        return self.loss == "infonce"

    @property
    def landmark_point_dim(self) -> int:
        """Position features per sample: 2 x 68, plus 2 x 20 for the mouth copy."""
        return 2 * (self.num_landmarks + (MOUTH_POINTS if self.mouth_emphasis else 0))

    @property
    def segment_ms(self) -> list[float]:
        return [self.landmark_frames * 40.0 * 2**lvl for lvl in range(self.num_levels)]

    def reads_full_rate(self, lvl: int) -> bool:
        """Whether level `lvl` reads the unpooled span (a full-rate or composite level)."""
        return lvl in self.full_rate_levels or lvl in self.composite_levels

    def input_level(self, lvl: int) -> int:
        """The pyramid level level `lvl` reads its windows from: 0 for a full-rate or composite level, else `lvl`."""
        return 0 if self.reads_full_rate(lvl) else lvl

    def embedding_width(self, lvl: int) -> int:
        """Width of level `lvl`'s embeddings: `embed_dim`, or 2^l · embed_dim at a composite level."""
        return self.embed_dim << lvl if lvl in self.composite_levels else self.embed_dim

    def window(self, lvl: int) -> tuple[int, int, int]:
        """(landmark samples, audio rows, hop in input samples) of one level-`lvl` window, on the sequences of
        pyramid level `input_level(lvl)`: (5, 20, 1) on a pyramid level, (5 · 2^l, 20 · 2^l, 2^l) at full rate.
        Consecutive windows start `hop` landmark samples (4 · hop audio rows) apart: one level-l sample."""
        if self.reads_full_rate(lvl):
            return self.landmark_frames << lvl, self.audio_frames << lvl, 1 << lvl
        return self.landmark_frames, self.audio_frames, 1


def describe_levels(cfg: SyncerConfig) -> list[str]:
    """What each level of a pyramid with config `cfg` reads, in words for reports, e.g. for metric syncers v4:
    ["200 ms: pooled", "400 ms: pooled", "800 ms: composite of 4 × 200 ms", "1600 ms: composite of 8 × 200 ms"]."""
    out = []
    for level in range(cfg.num_levels):
        span = 200 * 2**level
        if level in cfg.composite_levels:
            out.append(f"{span} ms: composite of {2**level} × 200 ms (level 0's encoders; no slow structure)")
        elif level in cfg.full_rate_levels:
            out.append(f"{span} ms: full-rate, trained")
        else:
            out.append(f"{span} ms: pooled, trained")
    return out


class StridedEncoder(nn.Module):
    """The encoder of a full-rate level (see `SyncerConfig.full_rate_levels`): (N, stride · T, in_dim) -> (N, out_dim).

    Every input row is projected on its own (Linear + GELU to `proj` channels), each run of `stride` rows is
    concatenated into one sample (a convolution of kernel and stride `stride` after the projection), and an
    :class:`Encoder1d` reads the T samples.
    """

    def __init__(
        self, in_dim: int, stride: int, proj: int, widths: tuple[int, ...], depths: tuple[int, ...], out_dim: int
    ) -> None:
        super().__init__()
        self.stride = stride
        self.proj = nn.Sequential(nn.Linear(in_dim, proj), nn.GELU())
        self.encoder = Encoder1d(stride * proj, widths, depths, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        if t % self.stride:
            raise ValueError(f"expected a multiple of {self.stride} rows, got {t}")
        h = self.proj(x)
        return self.encoder(h.reshape(n, t // self.stride, self.stride * h.shape[-1]))


class Syncer(nn.Module):
    """One level: `embed_audio` (N, A, n_mfcc) and `embed_landmarks` (N, L, 2 · landmark_point_dim) -> (N, embed_dim),
    with (L, A) = (5, 20) for a pyramid level and (5 · 2^l, 20 · 2^l) for a full-rate level (`SyncerConfig.window`)."""

    def __init__(self, cfg: SyncerConfig, lvl: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        # Per frame: standardised segment-centred positions and velocities (2 x 136 features, + 2 x 40 with the
        # mouth copy).
        lm_dim = 2 * cfg.landmark_point_dim
        if lvl in cfg.composite_levels:  # no encoders: SyncerPyramid.embed uses level 0's
            return
        if lvl in cfg.full_rate_levels:
            stride = 1 << lvl
            self.audio_encoder: nn.Module = StridedEncoder(
                cfg.n_mfcc, stride, cfg.frame_proj, cfg.audio_widths, cfg.audio_depths, cfg.embed_dim
            )
            self.landmark_encoder: nn.Module = StridedEncoder(
                lm_dim, stride, cfg.frame_proj, cfg.landmark_widths, cfg.landmark_depths, cfg.embed_dim
            )
        else:
            self.audio_encoder = Encoder1d(cfg.n_mfcc, cfg.audio_widths, cfg.audio_depths, cfg.embed_dim)
            self.landmark_encoder = Encoder1d(lm_dim, cfg.landmark_widths, cfg.landmark_depths, cfg.embed_dim)

    def embed_audio(self, mfcc_norm: torch.Tensor) -> torch.Tensor:
        """(N, A, n_mfcc) normalised MFCC (or teacher features) -> (N, E)."""
        e = self.audio_encoder(mfcc_norm)
        return F.normalize(e, dim=-1) if self.cfg.normalise else e

    def embed_landmarks(self, features: torch.Tensor) -> torch.Tensor:
        """(N, L, 2 * landmark_point_dim) landmark features (see `SyncerPyramid.landmark_features`) -> (N, E)."""
        e = self.landmark_encoder(features)
        return F.normalize(e, dim=-1) if self.cfg.normalise else e


class SyncerPyramid(nn.Module):
    """All levels plus the fixed MFCC normalisation computed on the training data."""

    mfcc_mean: torch.Tensor
    mfcc_std: torch.Tensor
    position_mean: torch.Tensor
    position_std: torch.Tensor
    velocity_std: torch.Tensor

    def __init__(self, cfg: SyncerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.levels = nn.ModuleList([Syncer(cfg, lvl) for lvl in range(cfg.num_levels)])
        self.register_buffer("mfcc_mean", torch.zeros(cfg.n_mfcc))
        self.register_buffer("mfcc_std", torch.ones(cfg.n_mfcc))
        d = cfg.landmark_point_dim
        self.register_buffer("position_mean", torch.zeros(cfg.num_levels, d))
        self.register_buffer("position_std", torch.ones(cfg.num_levels, d))
        self.register_buffer("velocity_std", torch.ones(cfg.num_levels, d))

    def normalise_mfcc(self, mfcc: torch.Tensor) -> torch.Tensor:
        return (mfcc - self.mfcc_mean) / self.mfcc_std

    def prepare_sequence(self, landmarks):
        """Apply the sequence-level centring to whole sequences before the pyramid and windowing.

        (…, T, 68, 2) numpy array or tensor -> same shape. A no-op unless `landmark_centering == "sequence"`.
        """
        if self.cfg.landmark_centering != "sequence":
            return landmarks
        return sequence_centre(landmarks, self.cfg.iod_scale)

    def raw_landmark_features(self, landmarks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T, 68, 2) -> segment-centred positions and velocities, each (N, T, 136).

        Motion within the segment, head translation included, always stays visible; what is removed depends
        on `cfg.landmark_centering` (see SyncerConfig).
        """
        if self.cfg.landmark_centering == "window":
            centred = window_normalise(landmarks, self.cfg.mouth_emphasis)
        else:
            dims = (1,) if self.cfg.landmark_centering == "shape" else (1, 2)
            points = landmarks - landmarks.mean(dim=dims, keepdim=True)
            centred = points.flatten(2)
            if self.cfg.mouth_emphasis:
                mouth = points[:, :, 48:68]
                centred = torch.cat([centred, (mouth - mouth.mean(dim=(1, 2), keepdim=True)).flatten(2)], dim=-1)
        velocity = torch.diff(centred, dim=1, prepend=centred[:, :1])
        return centred, velocity

    def landmark_features(self, lvl: int, landmarks: torch.Tensor) -> torch.Tensor:
        """(N, T, 68, 2) normalised landmarks -> (N, T, 2 * landmark_point_dim) standardised with the training-data statistics."""
        pos, vel = self.raw_landmark_features(landmarks)
        pos = (pos - self.position_mean[lvl]) / self.position_std[lvl]
        vel = vel / self.velocity_std[lvl]
        return torch.cat([pos, vel], dim=-1)

    def embed(self, lvl: int, landmarks: torch.Tensor, mfcc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of paired segments at level `lvl`.

        Args:
            landmarks: (N, L, 68, 2); mfcc: (N, A, n_mfcc) raw MFCC (normalised here); (L, A) = (5, 20) for a
                pyramid level, (5 · 2^l, 20 · 2^l) full-rate samples for a level in `cfg.full_rate_levels`.
        Returns:
            (audio_embeddings (N, E), landmark_embeddings (N, E)).
        Raises:
            ValueError: windows of another length than the level's (`cfg.window(lvl)`).
        """
        nl, na, _ = self.cfg.window(lvl)
        if landmarks.shape[1] != nl or mfcc.shape[1] != na:
            raise ValueError(
                f"level {lvl} reads windows of {nl} landmark samples and {na} audio rows, got "
                f"{landmarks.shape[1]} and {mfcc.shape[1]}"
            )
        if lvl in self.cfg.composite_levels:
            return self._embed_composite(lvl, landmarks, mfcc)
        syncer = cast(Syncer, self.levels[lvl])
        return syncer.embed_audio(self.normalise_mfcc(mfcc)), syncer.embed_landmarks(
            self.landmark_features(lvl, landmarks)
        )

    def embed_landmarks(self, lvl: int, landmarks: torch.Tensor) -> torch.Tensor:
        """Landmark embeddings alone (FD-motion's features): (N, L, 68, 2) windows of level `lvl` -> (N, E), or
        (N, 2^l · E) at a composite level (its sub-windows' level-0 embeddings, concatenated, ÷ sqrt(2^l))."""
        if lvl in self.cfg.composite_levels:
            k, n = 1 << lvl, len(landmarks)
            e = self.embed_landmarks(0, landmarks.reshape(n * k, self.cfg.landmark_frames, *landmarks.shape[2:]))
            return e.reshape(n, -1) / math.sqrt(k)
        return cast(Syncer, self.levels[lvl]).embed_landmarks(self.landmark_features(lvl, landmarks))

    def _embed_composite(
        self, lvl: int, landmarks: torch.Tensor, mfcc: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A composite level (see `SyncerConfig.composite_levels`): level 0's embeddings of the 2^l sub-windows
        that tile each window, concatenated and divided by sqrt(2^l): (N_audio, 2^l · E) and (N_landmarks, 2^l · E)
        (the two counts may differ, e.g. several audio candidates per landmark window)."""
        k, n_x, n_a = 1 << lvl, len(landmarks), len(mfcc)
        nl, na = self.cfg.landmark_frames, self.cfg.audio_frames
        e_a, e_x = self.embed(
            0, landmarks.reshape(n_x * k, nl, *landmarks.shape[2:]), mfcc.reshape(n_a * k, na, mfcc.shape[-1])
        )
        scale = 1.0 / math.sqrt(k)
        return e_a.reshape(n_a, -1) * scale, e_x.reshape(n_x, -1) * scale

    def score(self, lvl: int, landmarks: torch.Tensor, mfcc: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of paired segments: (N,)."""
        e_a, e_x = self.embed(lvl, landmarks, mfcc)
        return F.cosine_similarity(e_a, e_x, dim=-1)

    def forward(self, batches: list[tuple[int, torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Embed several (level, landmarks, mfcc) groups in one call (one forward per step keeps DDP happy)."""
        return [self.embed(lvl, lm, mf) for lvl, lm, mf in batches]


def sequence_centre(landmarks, iod_scale: bool = False):
    """Every point relative to its mean over the sequence: (…, T, 68, 2) numpy array or tensor -> same shape.
    With `iod_scale`, divided by the sequence's mean inter-ocular distance ‖p36 − p45‖."""
    if torch.is_tensor(landmarks):
        out = landmarks - landmarks.mean(dim=-3, keepdim=True)
        if iod_scale:
            iod = (landmarks[..., 36, :] - landmarks[..., 45, :]).norm(dim=-1).mean(dim=-1)
            out = out / iod.clamp_min(1e-6)[..., None, None, None]
        return out
    out = landmarks - landmarks.mean(axis=-3, keepdims=True)
    if iod_scale:
        iod = np.linalg.norm(landmarks[..., 36, :] - landmarks[..., 45, :], axis=-1).mean(axis=-1)
        out = out / np.maximum(iod, 1e-6)[..., None, None, None]
    return out


def window_normalise(landmarks: torch.Tensor, mouth_emphasis: bool) -> torch.Tensor:
    """Per-segment normalisation: (N, T, 68, 2) -> (N, T, 136 [+ 40]).

    x' = (x - c) / d, with c the segment's mean 2-D position over all points and samples and d its mean
    inter-ocular distance (between the centres of points 36-41 and 42-47, the usual face-size unit of
    landmark metrics). With `mouth_emphasis`, points 48-67 are appended again, centred on their own mean.
    """
    eyes = landmarks[:, :, 42:48].mean(dim=2) - landmarks[:, :, 36:42].mean(dim=2)  # (N, T, 2)
    iod = eyes.norm(dim=-1).mean(dim=1).clamp_min(1e-4)[:, None, None, None]  # (N, 1, 1, 1)
    parts = [((landmarks - landmarks.mean(dim=(1, 2), keepdim=True)) / iod).flatten(2)]
    if mouth_emphasis:
        mouth = landmarks[:, :, 48:68]
        parts.append(((mouth - mouth.mean(dim=(1, 2), keepdim=True)) / iod).flatten(2))
    return torch.cat(parts, dim=-1)


def shift_loss(e_a: torch.Tensor, e_x: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SyncNet-style hard negatives: each landmark segment against the audio of the same clip at other times.

    Args:
        e_a: (N, S + 1, E) audio embeddings; candidate 0 is the aligned audio, 1..S the same clip shifted by
            a few samples at the level's rate. e_x: (N, E) landmark embeddings.
    Returns:
        (loss, accuracy): cross-entropy of the softmax over negative distances with the aligned candidate as
        the target (distances are scaled by 4 / margin, so a margin apart is a 4-nat logit gap), and how often
        the aligned audio is the nearest.
    """
    dist = (e_a - e_x[:, None]).norm(dim=-1)  # (N, S + 1)
    target = torch.zeros(len(dist), dtype=torch.long, device=dist.device)
    loss = F.cross_entropy(-dist * (4.0 / margin), target)
    return loss, (dist.argmin(-1) == 0).float().mean()


def infonce_loss(e_a: torch.Tensor, e_x: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over a group of N pairs: each positive against the N-1 other pairs as negatives.

    Args:
        e_a, e_x: (G, N, E) L2-normalised embeddings of G independent groups.
    Returns:
        (loss scalar, top-1 retrieval accuracy scalar).
    """
    logits = e_a @ e_x.transpose(1, 2) / temperature  # (G, N, N)
    target = torch.arange(logits.shape[-1], device=logits.device).expand(logits.shape[0], -1)
    loss = 0.5 * (
        F.cross_entropy(logits.flatten(0, 1), target.flatten())
        + F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), target.flatten())
    )
    acc = (logits.argmax(-1) == target).float().mean()
    return loss, acc


def syncnet_loss(e_a: torch.Tensor, e_x: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SyncNet's contrastive loss on Euclidean distances within groups: pull positives together, push every
    other pair of the group beyond `margin`.

    Args:
        e_a, e_x: (G, N, E) raw embeddings.
    Returns:
        (loss scalar, top-1 retrieval accuracy by smallest distance).
    """
    dist = torch.cdist(e_a, e_x)  # (G, N, N)
    n = dist.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=dist.device)
    pos = dist.diagonal(dim1=1, dim2=2).pow(2).mean()
    neg = F.relu(margin - dist[:, ~eye]).pow(2).mean()
    target = torch.arange(n, device=dist.device)
    acc = (dist.argmin(-1) == target).float().mean()
    return pos + neg, acc


def group_loss(cfg: SyncerConfig, e_a: torch.Tensor, e_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.loss == "infonce":
        return infonce_loss(e_a, e_x, cfg.temperature)
    return syncnet_loss(e_a, e_x, cfg.syncnet_margin)


def with_composite_levels(pyr: SyncerPyramid, levels) -> SyncerPyramid:
    """A copy of `pyr` in which `levels` are composite (`SyncerConfig.composite_levels`): every other level's
    weights and all input statistics unchanged, the composite levels' own encoders (pooled or full-rate) dropped
    (metric syncers v4 are v3 with levels 2 and 3 composite).

    Raises:
        ValueError: a level that cannot be composite (level 0, a full-rate level, out of range).
    """
    levels = tuple(sorted(set(pyr.cfg.composite_levels) | set(levels)))
    full = tuple(lvl for lvl in pyr.cfg.full_rate_levels if lvl not in levels)
    cfg = dataclasses.replace(pyr.cfg, composite_levels=levels, full_rate_levels=full)
    out = SyncerPyramid(cfg)
    state = {k: v for k, v in pyr.state_dict().items() if not any(k.startswith(f"levels.{lvl}.") for lvl in levels)}
    out.load_state_dict(state)
    return out.to(next(iter(state.values())).device).eval()


def load_pyramid(path, device: str = "cpu") -> SyncerPyramid:
    """Load a pyramid saved by `msync train-syncers` (`path` without suffix, e.g. runs/syncers/syncers).

    Raises:
        FileNotFoundError / ValueError: missing or corrupt files, or not a syncer checkpoint.
    """
    from stream_engine.dataclass_io import from_dict
    from training.checkpoint import load_meta, load_state

    meta = load_meta(path)
    if meta.get("kind") != "syncer_pyramid":
        raise ValueError(f"{path}: not a syncer pyramid checkpoint (kind={meta.get('kind')!r})")
    model = SyncerPyramid(from_dict(SyncerConfig, meta["syncer"]))
    model.load_state_dict(load_state(path, device))
    return model.to(device).eval()
