"""Planted-correlation datasets: real speech audio with synthetic landmarks whose link to the audio lives at
one known time scale per facial part, to check that the syncer pyramid is multi-scale.

Every synthetic clip is real speech (pieces of the shared data's audio, concatenated) plus a 68-point face
built from one fixed mean face, moved by two signals derived from a speech envelope (the per-40-ms log
energy, standardised per clip):

- the HEAD (all 68 points, translated vertically together) follows the *slow* part of an envelope: a
  Gaussian low-pass with sigma 0.4 s (a ~1.6 s window), i.e. content below ~0.6 Hz only. The syncers remove
  each segment's mean position, so a translation is seen only through its motion within the segment. A head
  *roll* is off by default: it is a posture readable from a single frame, and since 200 ms of audio tells
  whether the speaker is currently loud (which the slow envelope mostly is too), level 0 then detects the
  head link as well (test configuration, "sequence" centring: 0.61 forced-choice at level 0 with a 1.5 deg
  roll per unit of the slow envelope; 0.50-0.54 without);
- the MOUTH (lips and the lower jaw, as an opening) follows the *fast* part of an envelope: the envelope
  minus its centred 200 ms moving average, i.e. what a 200 ms average removes (amplitude gain 0.06 at 1 Hz,
  0.24 at 2 Hz, 0.76 at 4 Hz, ~1 from 5 Hz on). A Gaussian high-pass (sigma 0.12 s) kept 25% at 1 Hz, and a pyramid trained for
  1200 steps then found the mouth link at level 3 too (0.63 forced-choice with kernel 7);
- plus i.i.d. pixel noise on every point.

Variants choose, per part, whether its envelope is the clip's own audio ("synced") or another clip's
("driven by a donor", same statistics, no alignment):

    both        mouth synced, head synced        (the training data)
    mouth_only  mouth synced, head from a donor
    head_only   head synced,  mouth from a donor
    none        both from (two different) donors

A 200 ms syncer can only see the mouth link and a 1.6 s syncer only the head link, so level 0 should detect
`mouth_only` and not `head_only`, and level 3 the reverse. The datasets are written in the dataset-directory
layout of `training.data.manifest` (manifest.tsv, clips/<id>.flac, clips/<id>.lm68.npy in pixels) so that
the real trainer and loader are used unchanged. :func:`run_experiment` trains a pyramid on `both` and
measures per-level detection on freshly generated variants of held-out audio (tests/test_planted_multiscale.py,
benchmarks/planted_multiscale.py).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE_HZ = 16000
SAMPLES_PER_FRAME = 640  # 25 fps landmarks
FPS = 25.0

#: variant -> (mouth synced?, head synced?)
VARIANTS: dict[str, tuple[bool, bool]] = {
    "both": (True, True),
    "mouth_only": (True, False),
    "head_only": (False, True),
    "none": (False, False),
}

DEFAULT_GROUPS = ("hallo3", "talkvid", "stmux")
MEAN_FACE_CLIPS = ("stmux__Obama_clip1.mkv", "stmux__andrew_clip_1.mkv", "stmux__feifeili_clip1.mkv")


@dataclasses.dataclass(frozen=True)
class PlantedConfig:
    """How the synthetic landmarks are made from the envelopes (pixel amplitudes are standard deviations).

    Attributes:
        frame_px: side of the (virtual) square video frame; the face is centred in it.
        face_width_px: jaw width (points 0-16) of the mean face in that frame.
        head_px: vertical head translation per unit of the standardised slow envelope.
        head_roll_deg: head roll (about the face centre) per unit of the slow envelope; 0 by default (see above).
        mouth_px: extra mouth opening (lower lip, px) per unit of the standardised fast envelope.
        mouth_base_px: resting opening added to the mean face's lips.
        noise_px: i.i.d. Gaussian noise on every coordinate of every frame.
        slow_sigma_s: Gaussian low-pass of the head signal (0.4 s sigma ~ a 1.6 s window).
        fast_window_s: the mouth signal is the envelope minus its centred moving average of this width.
        envelope_range_db: log energy is floored this far below the clip's 95th percentile (silence).
    """

    frame_px: int = 256
    face_width_px: float = 110.0
    head_px: float = 4.0
    head_roll_deg: float = 0.0
    mouth_px: float = 3.0
    mouth_base_px: float = 4.0
    noise_px: float = 0.3
    slow_sigma_s: float = 0.4
    fast_window_s: float = 0.2
    envelope_range_db: float = 45.0


# ----------------------------------------------------------------------------------------------- audio


def speech_sources(data_dir: str | Path, groups: tuple[str, ...] = DEFAULT_GROUPS) -> list[Path]:
    """Audio files of the manifest's clips in `groups` (sorted by id); missing files are skipped."""
    data_dir = Path(data_dir)
    with (data_dir / "manifest.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    out = []
    for r in sorted(rows, key=lambda r: r["id"]):
        p = data_dir / "clips" / f"{r['id']}.flac"
        if r.get("group") in groups and p.is_file():
            out.append(p)
    return out


def build_clip_audio(
    sources: list[Path], num_clips: int, duration_s: float, seed: int = 0, target_rms: float = 0.05
) -> list[np.ndarray]:
    """`num_clips` clips of exactly `duration_s` (rounded to 40 ms frames) of real speech.

    Sources are shuffled (seeded), each loudness-normalised to `target_rms` and used at most once; a clip is
    the concatenation of consecutive sources, cut to length (the tail of its last source is dropped). A clip's
    first source starts at a random point, so that source boundaries (pauses, level changes) do not fall at
    the same times in every clip: many sources last exactly 5.08 s, and time-locked structure shared by all
    clips would let "donor" landmarks look synced (with the donors' circular shifts, see `write_dataset`).

    Raises:
        ValueError: not enough source audio.
    """
    from stream_engine.audio_io import load_audio

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sources))
    n_samples = int(round(duration_s * FPS)) * SAMPLES_PER_FRAME
    clips: list[np.ndarray] = []
    pieces: list[np.ndarray] = []
    have = 0
    for i in order:
        a = load_audio(sources[i], SAMPLE_RATE_HZ).astype(np.float64)
        rms = np.sqrt(np.mean(a**2)) if a.size else 0.0
        if rms < 1e-5:
            continue
        if not pieces:  # random phase of the clip's source boundaries (within the common 5.08 s period)
            a = a[rng.integers(0, max(1, min(a.size - SAMPLE_RATE_HZ, 81280))) :]
        pieces.append(a * (target_rms / rms))
        have += a.size
        if have >= n_samples:
            clips.append(np.clip(np.concatenate(pieces)[:n_samples], -1.0, 1.0).astype(np.float32))
            pieces, have = [], 0
            if len(clips) == num_clips:
                return clips
    raise ValueError(f"only {len(clips)} clips of {duration_s} s from {len(sources)} sources; wanted {num_clips}")


def envelope(audio: np.ndarray, cfg: PlantedConfig = PlantedConfig()) -> np.ndarray:
    """Log energy of each 40 ms landmark frame (dB, floored `envelope_range_db` below the 95th percentile),
    standardised over the clip: (T,) float64 with T = len(audio) // 640."""
    t = len(audio) // SAMPLES_PER_FRAME
    frames = audio[: t * SAMPLES_PER_FRAME].astype(np.float64).reshape(t, SAMPLES_PER_FRAME)
    db = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-10)
    db = np.maximum(db, np.percentile(db, 95) - cfg.envelope_range_db)
    return (db - db.mean()) / (db.std() + 1e-9)


def gaussian_lowpass(x: np.ndarray, sigma_frames: float) -> np.ndarray:
    """Centred Gaussian smoothing of a (T,) signal, reflect-padded, kernel truncated at 4 sigma."""
    half = int(np.ceil(4 * sigma_frames))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma_frames) ** 2)
    k /= k.sum()
    mode = "reflect" if len(x) > half else "edge"
    return np.convolve(np.pad(x, half, mode=mode), k, mode="valid")  # type: ignore[call-overload]


def moving_average(x: np.ndarray, width_frames: int) -> np.ndarray:
    """Centred moving average of odd width over a (T,) signal, reflect-padded."""
    if width_frames % 2 != 1:
        raise ValueError(f"moving-average width must be odd, got {width_frames}")
    half = width_frames // 2
    mode = "reflect" if len(x) > half else "edge"
    return np.convolve(  # type: ignore[call-overload]
        np.pad(x, half, mode=mode),  # type: ignore[call-overload]
        np.ones(width_frames) / width_frames,
        mode="valid",
    )


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def slow_component(env: np.ndarray, cfg: PlantedConfig = PlantedConfig()) -> np.ndarray:
    """The head signal: the envelope's content below ~0.6 Hz, standardised."""
    return _standardise(gaussian_lowpass(env, cfg.slow_sigma_s * FPS))


def fast_component(env: np.ndarray, cfg: PlantedConfig = PlantedConfig()) -> np.ndarray:
    """The mouth signal: the envelope minus its 200 ms moving average (mostly above 3 Hz), standardised."""
    width = 2 * int(round(cfg.fast_window_s * FPS / 2 - 0.5)) + 1  # 0.2 s -> 5 frames
    return _standardise(env - moving_average(env, width))


# ----------------------------------------------------------------------------------------------- face


def mean_face(data_dir: str | Path, clip_ids: tuple[str, ...] = MEAN_FACE_CLIPS) -> np.ndarray:
    """A fixed (68, 2) mean face: every valid frame of the clips centred on its mean point and scaled to unit
    jaw width (points 0 -> 16), then averaged; the result is centred with unit jaw width."""
    shapes = []
    for cid in clip_ids:
        p = Path(data_dir) / "clips" / f"{cid}.lm68.npy"
        if not p.is_file():
            continue
        lm = np.load(p).astype(np.float64)
        lm = lm[np.all(np.isfinite(lm), axis=(1, 2))]
        lm = lm - lm.mean(axis=1, keepdims=True)
        lm /= np.linalg.norm(lm[:, 16] - lm[:, 0], axis=-1)[:, None, None]
        shapes.append(lm)
    if not shapes:
        raise FileNotFoundError(f"{data_dir}: none of the mean-face clips {clip_ids} has landmarks")
    face = np.concatenate(shapes).mean(axis=0)
    face -= face.mean(axis=0)
    return face / np.linalg.norm(face[16] - face[0])


def mouth_opening_field() -> np.ndarray:
    """(68, 2) displacement per pixel of mouth opening: the lower lip moves down by 1, the jaw follows, the upper
    lip rises a little, the corners come slightly inwards (image axes: y down)."""
    d = np.zeros((68, 2))
    for i, w in {57: 1.0, 56: 0.9, 58: 0.9, 55: 0.6, 59: 0.6, 66: 1.0, 65: 0.9, 67: 0.9}.items():
        d[i, 1] = w
    for i in (48, 54, 60, 64):
        d[i, 1] = 0.35
    for i in (49, 50, 51, 52, 53, 61, 62, 63):
        d[i, 1] = -0.15
    for i, w in {8: 0.8, 7: 0.7, 9: 0.7, 6: 0.5, 10: 0.5, 5: 0.3, 11: 0.3, 4: 0.15, 12: 0.15}.items():
        d[i, 1] = w
    d[48, 0], d[60, 0], d[54, 0], d[64, 0] = 0.1, 0.1, -0.1, -0.1
    return d


def synth_landmarks(
    face: np.ndarray,
    mouth_signal: np.ndarray,
    head_signal: np.ndarray,
    rng: np.random.Generator,
    cfg: PlantedConfig = PlantedConfig(),
) -> np.ndarray:
    """(T, 68, 2) float32 pixel landmarks from a unit mean face and the (T,) standardised mouth and head signals."""
    centre = np.array([cfg.frame_px / 2.0, cfg.frame_px / 2.0])
    base = face * cfg.face_width_px  # centred at 0
    opening = cfg.mouth_base_px + cfg.mouth_px * mouth_signal  # (T,)
    pts = base[None] + opening[:, None, None] * mouth_opening_field()[None]
    roll = np.deg2rad(cfg.head_roll_deg) * head_signal
    c, s = np.cos(roll), np.sin(roll)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (T, 2, 2)
    pts = np.einsum("tij,tpj->tpi", rot, pts)
    pts[..., 1] += cfg.head_px * head_signal[:, None]
    pts = pts + centre + rng.normal(0.0, cfg.noise_px, size=pts.shape)
    return pts.astype(np.float32)


# ----------------------------------------------------------------------------------------------- datasets


def write_dataset(
    out_dir: str | Path,
    audios: list[np.ndarray],
    variant: str,
    face: np.ndarray,
    cfg: PlantedConfig = PlantedConfig(),
    seed: int = 0,
    prefix: str = "synth",
) -> Path:
    """Write one variant as a dataset directory. Clip i's donors are clips i+1 (head) and i+2 (mouth), modulo
    the count, their envelopes circularly shifted by a random 1/4 to 3/4 of the clip, so every clip's motion has
    the same statistics whatever the variant and no time-locked structure survives; needs >= 3 clips of equal
    length when a donor is used. Each clip gets its own speaker.

    Returns:
        `out_dir`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    mouth_synced, head_synced = VARIANTS[variant]
    n = len(audios)
    if (not mouth_synced or not head_synced) and (n < 3 or len({len(a) for a in audios}) != 1):
        raise ValueError("donor variants need >= 3 clips of equal length")
    out = Path(out_dir)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    import soundfile as sf

    envs = [envelope(a, cfg) for a in audios]
    rng = np.random.default_rng(seed)
    rows = []

    def donor(j: int) -> np.ndarray:
        t = len(envs[j])
        return np.roll(envs[j], int(rng.integers(t // 4, 3 * t // 4 + 1)))

    for i, a in enumerate(audios):
        head_src = i if head_synced else (i + 1) % n
        mouth_src = i if mouth_synced else (i + 2) % n
        cid = f"{prefix}_{variant}_{i:03d}"
        head_env = envs[i] if head_synced else donor(head_src)
        mouth_env = envs[i] if mouth_synced else donor(mouth_src)
        lm = synth_landmarks(face, fast_component(mouth_env, cfg), slow_component(head_env, cfg), rng, cfg)
        sf.write(out / "clips" / f"{cid}.flac", a, SAMPLE_RATE_HZ, subtype="PCM_16")
        np.save(out / "clips" / f"{cid}.lm68.npy", lm)
        rows.append(
            {
                "id": cid,
                "group": f"planted_{variant}",
                "speaker": f"{prefix}-{variant}-{i:03d}",
                "face_cluster": "",
                "duration_s": f"{len(a) / SAMPLE_RATE_HZ:.2f}",
                "frames": str(len(lm)),
                "variant": variant,
                "head_source": str(head_src),
                "mouth_source": str(mouth_src),
            }
        )
    with (out / "manifest.tsv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return out


# ----------------------------------------------------------------------------------------------- detection


def sync_detection(
    model, store, level: int, num_pairs: int = 600, min_shift_s: float = 3.2, edge_s: float = 2.0, seed: int = 0
) -> dict:
    """How well one level tells aligned audio from the same clip's audio shifted by >= `min_shift_s`.

    For `num_pairs` random landmark segments: score against the aligned audio segment and against one from
    the same clip at least `min_shift_s` away (cosine for InfoNCE syncers, minus the distance for SyncNet ones).
    Segments within `edge_s` of either end of a clip are never used: there the reflect padding of the pyramid
    (and of the planted signals' filters) mirrors landmarks and audio alike, a shared artefact that an aligned
    pair has and a shifted one lacks (without this, "none" scored 0.62 at level 3 with kernel 7 on 12 s clips).

    Returns:
        {"afc": fraction of pairs where the aligned score wins (two-alternative forced choice, chance 0.5),
         "gap": mean aligned score minus mean shifted score, "aligned", "shifted": mean scores, "pairs"}.
    """
    import torch

    from stream_engine.features import mfcc_from_logmel

    rng = np.random.default_rng(seed + 1000 * level)
    step_s = 0.04 * 2**level
    min_shift = int(np.ceil(min_shift_s / step_s))
    edge = int(np.ceil(edge_s / step_s))
    lo = np.full(len(store.segments), edge)
    hi = store.num_positions(level) - edge  # valid starts: lo <= p < hi
    npos = np.maximum(hi - lo, 0)
    ok = np.flatnonzero(npos > min_shift)
    if ok.size == 0:
        raise ValueError(f"level {level}: no segment is long enough for a {min_shift_s} s shift and {edge_s} s edges")
    seg = rng.choice(ok, size=num_pairs, p=npos[ok] / npos[ok].sum())
    pos = np.array([lo[s] + rng.integers(npos[s]) for s in seg])
    shifted_list = []
    for s, p in zip(seg, pos):
        cand = np.concatenate([np.arange(lo[s], p - min_shift + 1), np.arange(p + min_shift, hi[s])])
        shifted_list.append(int(rng.choice(cand)))
    shifted = np.array(shifted_list)
    lm, lg = store.extract(level, seg, pos)
    _, lg_shift = store.extract(level, seg, shifted)
    dev = next(model.parameters()).device

    def to_mfcc(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(mfcc_from_logmel(x.astype(np.float64), store.frontend).astype(np.float32)).to(dev)

    landmarks = torch.from_numpy(lm.astype(np.float32)).to(dev)
    model.eval()
    with torch.no_grad():
        e_a, e_x = model.embed(level, landmarks, to_mfcc(lg))
        e_s, _ = model.embed(level, landmarks, to_mfcc(lg_shift))
        if model.cfg.normalise:
            s_al = torch.nn.functional.cosine_similarity(e_a, e_x, dim=-1)
            s_sh = torch.nn.functional.cosine_similarity(e_s, e_x, dim=-1)
        else:
            s_al, s_sh = -(e_a - e_x).norm(dim=-1), -(e_s - e_x).norm(dim=-1)
    a_al, a_sh = s_al.cpu().numpy().astype(np.float64), s_sh.cpu().numpy().astype(np.float64)
    return {
        "afc": float(np.mean(a_al > a_sh) + 0.5 * np.mean(a_al == a_sh)),
        "gap": float(np.mean(a_al - a_sh)),
        "aligned": float(a_al.mean()),
        "shifted": float(a_sh.mean()),
        "pairs": int(num_pairs),
    }


# ----------------------------------------------------------------------------------------------- experiment


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One planted-correlation run: data sizes, the syncers and their training, the detection measurement."""

    data_dir: str = "../shared/data"
    groups: tuple[str, ...] = DEFAULT_GROUPS
    train_clips: int = 24
    eval_clips: int = 16
    clip_s: float = 16.0
    planted: PlantedConfig = PlantedConfig()
    pyramid_kernel: int = 7
    landmark_centering: str = ""  # "" = SyncerConfig's default
    embed_dim: int = 32
    audio_widths: tuple[int, ...] = (32, 32, 32)
    landmark_widths: tuple[int, ...] = (32, 32)
    steps: int = 500
    groups_per_level: int = 1
    lr: float = 3e-3
    warmup_steps: int = 30
    augment: str = "none"  # "none", "audio" (gain + noise only) or "all" (the trainer's defaults)
    pairs: int = 600
    min_shift_s: float = 3.2
    edge_s: float = 2.0
    seed: int = 0
    device: str = "cpu"


def _augment_config(kind: str):
    from training.data.augment import AugmentConfig

    no_landmarks = dict(yaw_deg=0, pitch_deg=0, roll_deg=0, translate=0, scale_min=1, scale_max=1, mirror_prob=0)
    if kind == "all":
        return AugmentConfig()
    if kind == "audio":
        return AugmentConfig(**no_landmarks)
    if kind == "none":
        return AugmentConfig(**no_landmarks, gain_db=0, noise_prob=0)
    raise ValueError(f"unknown augment {kind!r}")


def run_experiment(cfg: ExperimentConfig, work_dir: str | Path, progress: bool = False) -> dict:
    """Generate the data, train a pyramid on `both` with `training.train_syncers.train`, and measure detection
    at every level for every variant on held-out audio.

    Returns:
        {"detection": {variant: {level: sync_detection dict}}, "train_result", "train_s", "total_s", "config"}.
    """
    from training.data.clips import ClipLoadConfig, load_all
    from training.data.manifest import read_manifest
    from training.data.splits import SplitConfig
    from training.models.syncer import SyncerConfig
    from training.train_syncers import TrainSyncersConfig, train

    t0 = time.perf_counter()
    work = Path(work_dir)
    sources = speech_sources(cfg.data_dir, cfg.groups)
    audios = build_clip_audio(sources, cfg.train_clips + cfg.eval_clips, cfg.clip_s, seed=cfg.seed)
    face = mean_face(cfg.data_dir)
    train_dir = write_dataset(
        work / "data" / "both", audios[: cfg.train_clips], "both", face, cfg.planted, seed=cfg.seed, prefix="train"
    )
    eval_dirs = {
        v: write_dataset(
            work / "data" / f"eval_{v}",
            audios[cfg.train_clips :],
            v,
            face,
            cfg.planted,
            seed=cfg.seed + 1,
            prefix="eval",
        )
        for v in VARIANTS
    }

    extra: dict[str, Any] = {"landmark_centering": cfg.landmark_centering} if cfg.landmark_centering else {}
    sc = SyncerConfig(
        pyramid_kernel=cfg.pyramid_kernel,
        embed_dim=cfg.embed_dim,
        audio_widths=cfg.audio_widths,
        audio_depths=(1,) * len(cfg.audio_widths),
        landmark_widths=cfg.landmark_widths,
        landmark_depths=(1,) * len(cfg.landmark_widths),
        **extra,
    )
    tcfg = TrainSyncersConfig(
        data_dir=str(train_dir),
        syncer=sc,
        split=SplitConfig(test_fraction=0.0, val_fraction=0.0, exclude_ids=()),
        augment=_augment_config(cfg.augment),
        steps=cfg.steps,
        groups_per_level=cfg.groups_per_level,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        seed=cfg.seed,
        device=cfg.device,
        threads=1,
        eval_every=10**9,
        checkpoint_every=10**9,
        log_every=max(1, cfg.steps // 10),
    )
    if (work / "syncers").exists():  # a fresh run: the trainer would resume or append to old metrics
        shutil.rmtree(work / "syncers")
    t1 = time.perf_counter()
    train_result = train(tcfg, work / "syncers", resume=False, progress=progress)
    train_s = time.perf_counter() - t1

    from training.data.syncer_batches import syncer_store
    from training.models.syncer import load_pyramid

    model = load_pyramid(work / "syncers" / "syncers", cfg.device)
    detection: dict = {}
    for v, d in eval_dirs.items():
        clips = ClipLoadConfig()
        store = syncer_store(load_all(read_manifest(d), clips, progress=False), sc, clips.frontend)
        detection[v] = {
            lvl: sync_detection(model, store, lvl, cfg.pairs, cfg.min_shift_s, cfg.edge_s, cfg.seed)
            for lvl in range(sc.num_levels)
        }
    train_acc = {}
    metrics = work / "syncers" / "metrics.jsonl"
    if metrics.is_file():
        last = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()][-1]
        train_acc = {k: v for k, v in last.items() if k.startswith("acc_l")}
    return {
        "detection": detection,
        "train_result": train_result,
        "train_acc_last": train_acc,
        "syncer": dataclasses.asdict(sc),
        "train_s": train_s,
        "total_s": time.perf_counter() - t0,
        "config": dataclasses.asdict(cfg),
    }


def markdown_table(detection: dict, key: str = "afc") -> str:
    """Markdown table: one row per variant, one column per level, cells `detection[variant][level][key]`."""
    levels = sorted(next(iter(detection.values())))
    ms = [f"L{lvl} ({200 * 2**lvl} ms)" for lvl in levels]
    lines = ["| variant | " + " | ".join(ms) + " |", "|---|" + "---:|" * len(levels)]
    for v, per in detection.items():
        lines.append(f"| {v} | " + " | ".join(f"{per[lvl][key]:.3f}" for lvl in levels) + " |")
    return "\n".join(lines)
