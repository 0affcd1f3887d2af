"""`msync data prepare`: talking-face videos -> a dataset in the `../shared/data` layout.

    msync data prepare VIDEO[=AUDIO] [VIDEO ...] --out DIR [--audio-dir DIR] [--detect-every N] [--workers N]

For each video: decode onto the 25 fps grid (:mod:`training.data.video`), find and track the largest face
and fit dlib's 68 points (:mod:`training.data.face`), load its audio as 16 kHz mono aligned to the first video
frame, interpolate short detection gaps and cut at long ones (:func:`training.data.gaps.split_at_gaps`), and
write, per resulting piece,

    DIR/clips/<id>.flac       16 kHz mono PCM-16; landmark frame t covers samples [640 t, 640 (t + 1))
    DIR/clips/<id>.lm68.npy   (T, 68, 2) float32 pixels of the source frame (display-rotated)
    DIR/clips/<id>.det.npy    (T,) bool, True where the face was confirmed in that very frame

then DIR/manifest.tsv (one row per piece) and, with `--splits`, DIR/splits.json. `<id>` is the video's path
relative to the inputs' common folder with `/` written as `__` (a single folder's files keep their file
names, as in `../shared/data`), plus `__part<k>` when a long gap cut the video.

Robust batch behaviour: every file is written under a temporary name and renamed; a per-video JSON record
(DIR/records/<id>.json) is written last and is what marks a video done, so a rerun skips finished videos and
a crash loses at most the videos in flight; manifest.tsv is rebuilt from the records. A file that cannot be
used (missing, corrupt, no video or audio stream, no face) is reported on stderr and in DIR/failed.tsv and
the batch goes on.

Top-level imports stay light (no dlib/av/torch) so `msync --help` is fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HELP = "Prepare a dataset: `msync data prepare VIDEOS... --out DIR`."

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".mpg", ".mpeg", ".webm", ".m4v", ".flv", ".wmv", ".ts", ".3gp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus")

# Same columns as ../shared/data/manifest.tsv where they apply, then what only prepared data has.
MANIFEST_COLUMNS = (
    "id",
    "group",
    "speaker",
    "face_cluster",
    "duration_s",
    "frames",
    "fps_src",
    "det_rate",
    "lost_frames",
    "nan_frames",
    "interpolated_frames",
    "start_frame",
    "source_path",
    "audio_path",
    "notes",
)

# Below this share of detected frames a clip is marked as in ../shared/data ("partial detection").
PARTIAL_DETECTION_RATE = 0.9


class PrepareError(ValueError):
    """A video that cannot become a clip (the message says why); the batch reports it and goes on."""


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """Everything that decides what `prepare` writes.

    Attributes:
        out_dir: dataset directory (created).
        fps: landmark frame rate, frames/s.
        sample_rate_hz: audio rate; with `fps` it fixes samples per landmark frame (640).
        detect_every: run the face detector at least every N frames and track in between (1 = every frame,
            the rule of the stored data). 5 measured on the raw GRID clips: +0.15 px mean landmark difference
            to detecting every frame, about 4x faster; on the 24/30 fps clips no measurable difference.
        upsample: detector upsampling (0 reproduces the stored landmarks; 1 finds faces half as large).
        max_gap_frames: runs of frames without a confirmed face up to this long are filled (see
            :func:`cut_pieces`); longer ones cut the clip.
        interpolate_missed: also interpolate frames fitted in a stale box, instead of keeping that fit.
        min_length_frames: pieces shorter than this are dropped.
        max_seconds: only prepare the first this many seconds of each video (None: all).
        speaker, group: manifest labels.
        workers: parallel processes (1: in this process).
        overwrite: redo videos that already have a complete record.
        progress: show a tqdm bar on stderr.
    """

    out_dir: Path
    fps: float = 25.0
    sample_rate_hz: int = 16000
    detect_every: int = 5
    upsample: int = 0
    max_gap_frames: int = 5
    interpolate_missed: bool = False
    min_length_frames: int = 25
    max_seconds: float | None = None
    speaker: str = "unknown"
    group: str = "prepared"
    workers: int = 1
    overwrite: bool = False
    progress: bool = True

    @property
    def samples_per_frame(self) -> int:
        spf = self.sample_rate_hz / self.fps
        if abs(spf - round(spf)) > 1e-9:
            raise ValueError(f"sample_rate_hz / fps must be a whole number, got {spf}")
        return int(round(spf))

    @property
    def clips_dir(self) -> Path:
        return Path(self.out_dir) / "clips"

    @property
    def records_dir(self) -> Path:
        return Path(self.out_dir) / "records"


@dataclasses.dataclass(frozen=True)
class Job:
    """One input video: where its audio comes from (None: the video's own audio stream) and its clip id."""

    video_path: Path
    audio_path: Path | None
    source_id: str


@dataclasses.dataclass(frozen=True)
class Piece:
    """A gap-free stretch of one video, written as one clip.

    Attributes:
        clip_id: its id in the dataset.
        start_frame: index of its first frame on the video's 25 fps grid.
        landmarks: (T, 68, 2) float32 pixels, finite.
        detected: (T,) bool, True where the face was confirmed in that frame.
        interpolated: (T,) bool, True where the points were interpolated over a short gap.
        audio: (<= T * samples_per_frame,) float32; shorter only where the recording ends early.
    """

    clip_id: str
    start_frame: int
    landmarks: np.ndarray
    detected: np.ndarray
    interpolated: np.ndarray
    audio: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.landmarks)


# ----------------------------------------------------------------------------------------------- inputs


def collect_jobs(
    inputs: list[str], audio_dir: str | Path | None = None, id_root: str | Path | None = None
) -> list[Job]:
    """Turn command-line inputs into jobs.

    Args:
        inputs: video files, `VIDEO=AUDIO` pairs, or folders (searched recursively for video files).
        audio_dir: where to look for `<video stem>.<wav|flac|...>` when no `=AUDIO` is given; videos without
            a match there use their own audio stream.
        id_root: ids are video paths relative to this folder (default: the videos' common folder). Give it
            when a batch is prepared in several runs with different inputs, so that ids stay the same.
    Returns:
        Jobs in input order, duplicates removed. Missing files are kept (they fail, with a clear message,
        when processed) so one typo does not stop a batch.
    """
    pairs: list[tuple[Path, Path | None]] = []
    for arg in inputs:
        video, audio = _split_pair(arg)
        if video.is_dir():
            found = sorted(p for p in video.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
            pairs.extend((p, None) for p in found)
        else:
            pairs.append((video, audio))
    if audio_dir is not None:
        audio_dir = Path(audio_dir)
        pairs = [(v, a if a is not None else _find_audio(audio_dir, v.stem)) for v, a in pairs]
    seen: set[Path] = set()
    unique = []
    for v, a in pairs:
        key = v.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((v, a))
    if not unique:
        return []
    # Ids: path relative to the common folder, so videos with the same file name in different folders
    # (VoxCeleb's id*/<yt>/00001.mp4) stay distinct, and a single folder's files keep their names.
    if id_root is not None:
        root = Path(id_root).resolve()
    else:
        root = Path(os.path.commonpath([str(v.resolve().parent) for v, _ in unique]))
    return [Job(v, a, _safe_id(os.path.relpath(v.resolve(), root).replace(os.sep, "__"))) for v, a in unique]


def _split_pair(arg: str) -> tuple[Path, Path | None]:
    # An existing path wins, so file names containing "=" still work.
    if "=" not in arg or Path(arg).exists():
        return Path(arg), None
    video, audio = arg.rsplit("=", 1)
    return Path(video), Path(audio)


def _find_audio(audio_dir: Path, stem: str) -> Path | None:
    for ext in AUDIO_EXTENSIONS:
        for candidate in (audio_dir / f"{stem}{ext}", audio_dir / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _safe_id(text: str) -> str:
    # Tabs and newlines would break the TSV; path separators the flat clips/ folder.
    return re.sub(r"[\t\n\r/\\]", "_", text)


# ----------------------------------------------------------------------------------------- one video


def extract_landmarks(video_path: Path, cfg: PrepareConfig, landmarker=None):
    """Decode a video onto the 25 fps grid and track the largest face.

    Returns:
        (points, detected, info, stats): points (T, 68, 2) float32 pixels with NaN rows where no face was
        found; detected (T,) bool; the :class:`~training.data.video.VideoInfo` and
        :class:`~training.data.video.DecodeStats`.
    Raises:
        VideoError: missing/unreadable file or no video stream.
    """
    from training.data.face import FaceTracker, TrackConfig
    from training.data.video import DecodeStats, frames_at_fps, probe_video

    info = probe_video(video_path)
    tracker = FaceTracker(landmarker or _landmarker(cfg.upsample), TrackConfig(detect_every=cfg.detect_every))
    stats = DecodeStats()
    rows, detected = [], []
    for image in frames_at_fps(video_path, cfg.fps, cfg.max_seconds, stats):
        pts, det = tracker.step(image)
        rows.append(pts if pts is not None else np.full((68, 2), np.nan, np.float32))
        detected.append(det)
    points = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 68, 2), np.float32)
    return points, np.asarray(detected, dtype=bool), info, stats


def align_audio(audio: np.ndarray, offset_s: float, num_frames: int, cfg: PrepareConfig) -> tuple[np.ndarray, int, int]:
    """Put audio on the video's clock: sample 0 at the first video frame.

    Args:
        audio: (N,) float32 at cfg.sample_rate_hz, starting at its stream's start.
        offset_s: audio start minus first video frame time, seconds (positive: audio starts later).
        num_frames: video frames on the grid.
    Returns:
        (aligned, first_frame, end_frame): aligned audio (at most num_frames * 640 samples; zeros where the
        audio had not started yet) and the frame range [first_frame, end_frame) that has any real audio.
    """
    spf = cfg.samples_per_frame
    shift = int(round(offset_s * cfg.sample_rate_hz))
    if shift > 0:
        aligned = np.concatenate([np.zeros(shift, np.float32), audio])
    else:
        aligned = audio[-shift:]
    aligned = aligned[: num_frames * spf].astype(np.float32, copy=False)
    real_start = max(shift, 0)
    first_frame = real_start // spf
    end_frame = min(num_frames, -(-len(aligned) // spf))  # frames that overlap at least one real sample
    return aligned, first_frame, max(end_frame, first_frame)


def cut_pieces(
    source_id: str,
    points: np.ndarray,
    detected: np.ndarray,
    audio: np.ndarray,
    cfg: PrepareConfig,
    usable: tuple[int, int] | None = None,
) -> list[Piece]:
    """Fill short gaps, cut at long ones, drop leading/trailing frames without a face.

    A gap is a run of frames where the detector did not confirm the face. Frames with no box at all (NaN)
    in a short gap are interpolated. Frames fitted in the previous frame's box (detected False, finite) are
    kept as measured in a short gap, as in the stored data: one or two frames after a detection the stale
    box still frames the face and the fit still follows the mouth, which interpolation would not; with
    `cfg.interpolate_missed` they are interpolated too. A gap longer than `cfg.max_gap_frames` cuts the
    clip whatever it holds: a box that old no longer frames the face.

    Args:
        source_id: the video's id; pieces are `<id>` (one piece) or `<id>__part<k>` (k = 1, 2, ...).
        points: (T, 68, 2) pixels, NaN rows where no face was found.
        detected: (T,) bool.
        audio: (<= T * 640,) aligned audio; each piece gets the samples of its frames.
        usable: frame range [a, b) that has audio; frames outside are treated as missing.
    Returns:
        Pieces of at least `cfg.min_length_frames` frames, in time order.
    """
    from training.data.gaps import split_at_gaps, valid_frames

    spf = cfg.samples_per_frame
    points = np.array(points, dtype=np.float32)  # a copy: gaps are written into it
    detected = np.asarray(detected, dtype=bool) & valid_frames(points)
    if usable is not None:
        points[: usable[0]] = np.nan
        points[usable[1] :] = np.nan
    for start, end in _runs(~detected):
        if cfg.interpolate_missed or end - start > cfg.max_gap_frames:
            points[start:end] = np.nan
    found = valid_frames(points)
    spans = split_at_gaps(points, cfg.max_gap_frames, cfg.min_length_frames)
    pieces = []
    for k, (start, end, filled) in enumerate(spans, start=1):
        pieces.append(
            Piece(
                clip_id=source_id if len(spans) == 1 else f"{source_id}__part{k}",
                start_frame=start,
                landmarks=filled.astype(np.float32),
                detected=detected[start:end] & found[start:end],  # interpolated frames were not detected
                interpolated=~found[start:end],
                audio=audio[start * spf : end * spf],
            )
        )
    return pieces


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[(start, end)] of the runs of True in a (T,) bool array."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def prepare_video(job: Job, cfg: PrepareConfig, landmarker=None) -> list[dict]:
    """Prepare one video: landmarks, audio, pieces; write the clips and the record. Returns manifest rows.

    Raises:
        PrepareError (or VideoError / AudioError, both ValueError): the video cannot become a clip.
    """
    from stream_engine.audio_io import AudioError, load_audio
    from training.data.video import VideoError, probe_video

    t0 = time.monotonic()
    if not job.video_path.is_file():
        raise PrepareError(f"{job.video_path}: no such file")
    info = probe_video(job.video_path)  # fails early on a corrupt file or one without video
    if job.audio_path is None and not info.has_audio:
        raise PrepareError(f"{job.video_path}: no audio stream (give VIDEO=AUDIO or --audio-dir)")
    if job.audio_path is not None and not job.audio_path.is_file():
        raise PrepareError(f"{job.audio_path}: no such audio file (for {job.video_path})")
    audio_source = job.audio_path or job.video_path
    try:
        audio = load_audio(audio_source, cfg.sample_rate_hz)
    except AudioError as exc:
        raise PrepareError(str(exc)) from exc

    points, detected, info, stats = extract_landmarks(job.video_path, cfg, landmarker)
    num_frames = len(points)
    if num_frames == 0:
        raise VideoError(f"{job.video_path}: no video frames")
    if not np.isfinite(points).all(axis=(1, 2)).any():
        raise PrepareError(f"{job.video_path}: no face found in the whole clip ({num_frames} frames)")

    # A separate audio file is taken to start with the video; a container's audio stream may start earlier
    # or later than its first video frame (encoder delay, edited files).
    offset_s = 0.0 if job.audio_path is not None else (info.audio_start_s or 0.0) - stats.first_pts_s
    aligned, first, end = align_audio(audio, offset_s, num_frames, cfg)
    # Resampling can ring above full scale on near-full-scale audio (and some files are mastered above
    # 0 dBFS in float). Scale the clip down rather than let PCM-16 clip it.
    peak = float(np.max(np.abs(aligned))) if len(aligned) else 0.0
    gain = 1.0 / peak if peak > 1.0 else 1.0
    aligned = aligned * np.float32(gain) if gain != 1.0 else aligned
    pieces = cut_pieces(job.source_id, points, detected, aligned, cfg, usable=(first, end))
    if not pieces:
        raise PrepareError(
            f"{job.video_path}: no run of at least {cfg.min_length_frames} frames whose gaps in the face detection "
            f"are at most {cfg.max_gap_frames} frames long (the detector confirmed the face in "
            f"{int(np.asarray(detected).sum())} of {num_frames} frames; landmarks fitted in {int(np.isfinite(points).all(axis=(1, 2)).sum())}); "
            "longer gaps are allowed with --max-gap-frames, fewer are left with --detect-every 1 or --upsample 1"
        )

    notes_common = []
    if abs(offset_s) * 1000 >= 1:
        notes_common.append(f"audio offset {offset_s * 1000:+.0f} ms")
    if gain != 1.0:
        notes_common.append(f"audio scaled by {gain:.3f} to fit full scale")
    missing_audio_s = (num_frames - end) / cfg.fps
    if missing_audio_s >= 1.0:
        notes_common.append(f"audio ends {missing_audio_s:.1f} s before the video")
    rows = []
    for p in pieces:
        _write_piece(p, cfg)
        det_rate = float(p.detected.mean())
        notes = list(notes_common)
        if det_rate < PARTIAL_DETECTION_RATE:
            notes.append("partial detection")
        # (A 30 fps video's last grid frame often has no audio and is dropped: not worth a note.)
        if len(pieces) > 1 or num_frames - p.num_frames > 2:
            notes.append(f"frames {p.start_frame}-{p.start_frame + p.num_frames} of {num_frames}")
        rows.append(
            {
                "id": p.clip_id,
                "group": cfg.group,
                "speaker": cfg.speaker,
                # Without a face clustering step, pieces of one video at least share an identity, so they never
                # straddle splits (training.data.manifest.assign_identities joins on face_cluster).
                "face_cluster": f"video:{job.source_id}",
                "duration_s": f"{p.num_frames / cfg.fps:.2f}",
                "frames": p.num_frames,
                # Same number style as ../shared/data: 25.0, 23.976; 1.0, 0.6279.
                "fps_src": round(info.fps_src or stats.fps_src, 3),
                "det_rate": round(det_rate, 4),
                "lost_frames": int((~p.detected).sum()),
                "nan_frames": 0,
                "interpolated_frames": int(p.interpolated.sum()),
                "start_frame": p.start_frame,
                "source_path": str(job.video_path.resolve()),
                "audio_path": str(audio_source.resolve()),
                "notes": "; ".join(notes),
            }
        )
    record = {
        "source_id": job.source_id,
        "source_path": str(job.video_path.resolve()),
        "frames_total": num_frames,
        "seconds": round(time.monotonic() - t0, 3),
        "prepared_with": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in dataclasses.asdict(cfg).items()
            if k not in ("out_dir", "workers", "progress", "overwrite")
        },
        "clips": rows,
    }
    _remove_stale_pieces(job.source_id, {r["id"] for r in rows}, cfg)
    _atomic_write_bytes(cfg.records_dir / f"{job.source_id}.json", json.dumps(record, indent=1).encode())
    return rows


@functools.lru_cache(maxsize=2)
def _landmarker(upsample: int):
    """The dlib models, loaded once per process (the predictor is 100 MB and takes about a second to read);
    each worker process holds its own."""
    from training.data.face import FaceLandmarker

    return FaceLandmarker(upsample=upsample)


# ------------------------------------------------------------------------------------------- writing


def _clip_paths(clip_id: str, cfg: PrepareConfig) -> dict[str, Path]:
    d = cfg.clips_dir
    return {"flac": d / f"{clip_id}.flac", "lm68": d / f"{clip_id}.lm68.npy", "det": d / f"{clip_id}.det.npy"}


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    with tmp.open("wb") as f:  # a file object, so numpy does not append ".npy" to the temporary name
        np.save(f, array)
    os.replace(tmp, path)


def _write_piece(p: Piece, cfg: PrepareConfig) -> None:
    import soundfile

    paths = _clip_paths(p.clip_id, cfg)
    paths["flac"].parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(paths["flac"])
    # PCM-16 like the stored clips; clip so that a loud float sample does not wrap around.
    soundfile.write(str(tmp), np.clip(p.audio, -1.0, 1.0), cfg.sample_rate_hz, format="FLAC", subtype="PCM_16")
    os.replace(tmp, paths["flac"])
    _atomic_save_npy(paths["lm68"], p.landmarks.astype(np.float32))
    _atomic_save_npy(paths["det"], p.detected.astype(bool))


def _read_record(source_id: str, cfg: PrepareConfig) -> dict | None:
    path = cfg.records_dir / f"{source_id}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _remove_stale_pieces(source_id: str, keep: set[str], cfg: PrepareConfig) -> None:
    # A redo (--overwrite, other options) may cut a video differently: drop the old pieces it no longer has.
    old = _read_record(source_id, cfg)
    for row in (old or {}).get("clips", []):
        if row.get("id") not in keep:
            for path in _clip_paths(row["id"], cfg).values():
                path.unlink(missing_ok=True)


def is_complete(job: Job, cfg: PrepareConfig) -> bool:
    """True when the video has a record and every clip it lists has its three files."""
    record = _read_record(job.source_id, cfg)
    if not record or not record.get("clips"):
        return False
    return all(
        p.is_file() and p.stat().st_size > 0 for row in record["clips"] for p in _clip_paths(row["id"], cfg).values()
    )


def write_manifest(cfg: PrepareConfig) -> list[dict]:
    """Rebuild OUT/manifest.tsv from every record in OUT/records (this run's and earlier runs'). Returns rows."""
    rows = []
    for path in sorted(cfg.records_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except ValueError:
            print(f"warning: {path}: unreadable record, ignored", file=sys.stderr)
            continue
        for row in record.get("clips", []):
            if all(p.is_file() for p in _clip_paths(row["id"], cfg).values()):
                rows.append(row)
    rows.sort(key=lambda r: r["id"])
    lines = ["\t".join(MANIFEST_COLUMNS)]
    lines += ["\t".join(_tsv_cell(row.get(c, "")) for c in MANIFEST_COLUMNS) for row in rows]
    _atomic_write_bytes(Path(cfg.out_dir) / "manifest.tsv", ("\n".join(lines) + "\n").encode())
    return rows


def _tsv_cell(value) -> str:
    return re.sub(r"[\t\n\r]", " ", str(value))


def write_failures(failures: list[tuple[Job, str]], cfg: PrepareConfig) -> Path:
    """OUT/failed.tsv: the videos of this run that could not be prepared, and why (rewritten every run)."""
    path = Path(cfg.out_dir) / "failed.tsv"
    lines = ["source_path\terror"] + [f"{_tsv_cell(j.video_path)}\t{_tsv_cell(msg)}" for j, msg in failures]
    _atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def write_splits(cfg: PrepareConfig) -> Path:
    """OUT/splits.json: speaker-disjoint train/val/test clip ids (training.data.splits.assign_splits)."""
    from training.data.manifest import read_manifest
    from training.data.splits import SplitConfig, assign_splits

    split_cfg = SplitConfig()
    splits = assign_splits(read_manifest(cfg.out_dir), split_cfg)
    out: dict[str, Any] = {name: [r.id for r in records] for name, records in splits.items()}
    out["config"] = dataclasses.asdict(split_cfg)
    path = Path(cfg.out_dir) / "splits.json"
    _atomic_write_bytes(path, json.dumps(out, indent=1).encode())
    return path


# ----------------------------------------------------------------------------------------------- batch


def _work(job: Job, cfg: PrepareConfig) -> tuple[Job, list[dict] | None, str | None]:
    """Run one job, turning any failure into a message (a bad file must never stop the batch)."""
    try:
        return job, prepare_video(job, cfg), None
    except Exception as exc:  # corrupt media raise all kinds of FFmpeg/dlib errors: report them all
        msg = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        return job, None, msg


def _run_pool(jobs: list[Job], cfg: PrepareConfig, workers: int):
    """Yield _work results from a process pool; returns (StopIteration value) the jobs whose worker died."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # spawn: workers import dlib/av themselves instead of inheriting a forked copy of this process's threads.
    ctx = multiprocessing.get_context("spawn")
    pending = list(reversed(jobs))
    crashed: list[Job] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        in_flight: dict[Any, Job] = {}
        while pending or in_flight:
            # Keep the queue short so a crash implicates few jobs and progress is smooth.
            while pending and len(in_flight) < 2 * workers:
                job = pending.pop()
                in_flight[pool.submit(_work, job, cfg)] = job
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for fut in done:
                job = in_flight.pop(fut)
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    crashed.append(job)
            if crashed:  # the pool is unusable: everything in flight is a suspect, the rest starts over
                crashed.extend(in_flight.values())
                break
    if crashed:
        rest = list(reversed(pending))
        if rest:
            crashed += yield from _run_pool(rest, cfg, workers)
    return crashed


def _results(jobs: list[Job], cfg: PrepareConfig, workers: int):
    if workers <= 1:
        for job in jobs:
            yield _work(job, cfg)
        return
    suspects = yield from _run_pool(jobs, cfg, workers)
    for job in suspects:  # rerun each alone to tell the crashing file from its innocent neighbours
        again = yield from _run_pool([job], cfg, 1)
        for j in again:
            yield j, None, "the worker process crashed on this file (corrupt media?)"


def prepare(
    inputs: list[str],
    cfg: PrepareConfig,
    audio_dir: str | Path | None = None,
    splits: bool = False,
    id_root: str | Path | None = None,
) -> dict:
    """Prepare a batch of videos (the library entry point behind the CLI).

    Returns:
        {"prepared": [ids of videos done this run], "skipped": [already complete], "failed": [(path, error)],
        "clips": number of manifest rows after the run}
    """
    from tqdm import tqdm

    out = Path(cfg.out_dir)
    cfg.clips_dir.mkdir(parents=True, exist_ok=True)
    cfg.records_dir.mkdir(parents=True, exist_ok=True)
    for leftover in list(cfg.clips_dir.glob("*.tmp-*")) + list(cfg.records_dir.glob("*.tmp-*")):
        leftover.unlink(missing_ok=True)  # from an interrupted run; never a finished file

    jobs = collect_jobs(inputs, audio_dir, id_root)
    todo = [j for j in jobs if cfg.overwrite or not is_complete(j, cfg)]
    skipped = [j.source_id for j in jobs if j not in todo]
    prepared: list[str] = []
    failures: list[tuple[Job, str]] = []
    workers = max(1, min(cfg.workers, len(todo)))
    bar = tqdm(total=len(todo), unit="video", desc="preparing", disable=not cfg.progress or not todo, file=sys.stderr)
    try:
        for job, _rows, error in _results(todo, cfg, workers):
            if error is None:
                prepared.append(job.source_id)
            else:
                failures.append((job, error))
                said = error if error.startswith(str(job.video_path)) else f"{job.video_path}: {error}"
                bar.write(f"failed: {said}", file=sys.stderr)
            bar.update(1)
            bar.set_postfix(failed=len(failures), refresh=False)
    finally:
        bar.close()
        # Also on Ctrl-C: everything recorded so far becomes visible in the manifest.
        rows = write_manifest(cfg)
        write_failures(failures, cfg)
    if splits and rows:
        write_splits(cfg)
    return {
        "prepared": prepared,
        "skipped": skipped,
        "failed": [(str(j.video_path), e) for j, e in failures],
        "clips": len(rows),
        "out_dir": str(out),
    }


# ------------------------------------------------------------------------------------------------- CLI


def _default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`msync data ACTION ...`; the only action so far is `prepare`."""
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = sub.add_parser(
        "prepare",
        help="videos -> clips/<id>.{flac,lm68.npy,det.npy} + manifest.tsv",
        description="Turn talking-face videos into a dataset in the ../shared/data layout: 16 kHz mono audio, "
        "25 fps dlib 68-point landmarks in source pixels, detection flags, manifest.tsv. "
        "Reruns skip finished videos; unusable files are listed in OUT/failed.tsv.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="VIDEO",
        help="video file, VIDEO=AUDIO pair (audio from a separate file), or a folder of videos",
    )
    p.add_argument("--out", required=True, type=Path, help="dataset directory to create or extend")
    p.add_argument(
        "--audio-dir",
        type=Path,
        default=None,
        help="take audio from DIR/<video stem>.<wav|flac|mp3|m4a|...> where present",
    )
    p.add_argument(
        "--id-root",
        type=Path,
        default=None,
        help="clip ids are video paths relative to this folder, '/' written as '__' (default: the "
        "inputs' common folder; set it when one dataset is built over several runs)",
    )
    p.add_argument("--speaker", default="unknown", help="speaker label for every clip (default: unknown)")
    p.add_argument("--group", default="prepared", help="group (source collection) label (default: prepared)")
    p.add_argument(
        "--detect-every",
        type=int,
        default=PrepareConfig.detect_every,
        metavar="N",
        help="run the face detector every N frames and track in between; 1 = every frame, "
        "as the stored data (default: %(default)s)",
    )
    p.add_argument(
        "--upsample",
        type=int,
        choices=(0, 1),
        default=0,
        help="detector upsampling: 1 finds faces down to ~40 px at ~4x the cost (default: 0)",
    )
    p.add_argument(
        "--max-gap-frames",
        type=int,
        default=PrepareConfig.max_gap_frames,
        help="fill runs of missed frames up to this long, cut the clip at longer ones (default: %(default)s)",
    )
    p.add_argument(
        "--interpolate-missed",
        action="store_true",
        help="in short gaps, interpolate frames the detector missed instead of keeping their fit "
        "in the previous frame's box (the stored data keeps it)",
    )
    p.add_argument(
        "--min-length-frames",
        type=int,
        default=PrepareConfig.min_length_frames,
        help="drop pieces shorter than this (default: %(default)s)",
    )
    p.add_argument(
        "--max-seconds", type=float, default=None, help="only prepare the first S seconds of each video (quick tests)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=_default_workers(),
        help="parallel processes (default: min(4, CPUs) = %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo videos that are already complete")
    p.add_argument("--splits", action="store_true", help="also write OUT/splits.json (speaker-disjoint)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    if args.detect_every < 1:
        raise ValueError("--detect-every must be at least 1")
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    return PrepareConfig(
        out_dir=Path(args.out),
        detect_every=args.detect_every,
        upsample=args.upsample,
        max_gap_frames=args.max_gap_frames,
        interpolate_missed=args.interpolate_missed,
        min_length_frames=args.min_length_frames,
        max_seconds=args.max_seconds,
        speaker=args.speaker,
        group=args.group,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    """0 when every input was prepared (or already was), 1 when some failed (see OUT/failed.tsv), 2 on usage errors."""
    if args.data_command != "prepare":
        print(f"msync data: unknown action {args.data_command!r}", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"msync data prepare: {exc}", file=sys.stderr)
        return 2
    summary = prepare(args.inputs, cfg, audio_dir=args.audio_dir, splits=args.splits, id_root=args.id_root)
    print(
        f"{len(summary['prepared'])} prepared, {len(summary['skipped'])} already done, "
        f"{len(summary['failed'])} failed; {summary['clips']} clips in {cfg.out_dir / 'manifest.tsv'}"
    )
    if summary["failed"]:
        print(f"failures listed in {cfg.out_dir / 'failed.tsv'}", file=sys.stderr)
        return 1
    return 0
