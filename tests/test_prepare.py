"""`msync data prepare` against the stored dataset (../shared/data), plus its batch behaviour.

The stored clips were made from ../shared/data/raw by FFmpeg (25 fps), dlib's detector + 68-point predictor
on every frame, and FFmpeg's mono 16 kHz audio. Measured differences of this pipeline to them (px, mean
over the 68 points, then over frames; see the report printed by the tests):

- 25 fps GRID clips, detector on every frame: 0.000 on all 10 clips (bit-identical points). Tracking with
  the default --detect-every 5: 0.03-0.25 mean, median 0, p95 <= 0.93.
- 30 fps (stmux) and 23.976 fps (hallo3) clips: 0.63-1.07 mean whatever the detection mode. The stored
  frames are not bit-identical to any decoded source frame (the best-matching source frame is still
  0.6-1.0 px off, for every colour-conversion variant tried), so this is a floor, not an error of ours.
  Picking the frame one output frame off raises it to 1.4-2.3 px; picking by t/25 instead of the
  interval's centre (FFmpeg's rule) raises it by 0.1-0.4 px.

Thresholds: 0.01 px for detect-every-frame on GRID (exact), 0.4 px for tracking on GRID, 1.2 px mean and
2.0 px p95 for the resampled clips (above the 1.07 floor, below a one-frame slip), and lag 0 must fit best.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("dlib")
soundfile = pytest.importorskip("soundfile")

from training.data import prepare as prep  # noqa: E402
from training.data.face import FaceTracker, TrackConfig, landmarks_from_image  # noqa: E402
from training.data.video import DecodeStats, VideoError, frames_at_fps, probe_video  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RAW = DATA / "raw"
GRID = "lipnet__evaluation__samples__GRID__bbaf2n.mpg"
MKV_30FPS = "stmux__feifeili_clip1.mkv"
MP4_24FPS = "tfcodebase__example-data__hallo3-test-100__videos__0002fdeb89b4a9e38bcecf9f220882d4.mp4"

pytestmark = pytest.mark.skipif(not RAW.is_dir(), reason=f"{RAW} not present (the shared dataset)")


# ----------------------------------------------------------------------------------------------- helpers


def _landmark_error(out_dir: Path, clip_id: str) -> np.ndarray:
    """(T,) mean point distance in px between our clip and the stored one (over the common frames)."""
    ours = np.load(out_dir / "clips" / f"{clip_id}.lm68.npy")
    ref = np.load(DATA / "clips" / f"{clip_id}.lm68.npy")
    n = min(len(ours), len(ref))
    return np.linalg.norm(ours[:n] - ref[:n], axis=2).mean(axis=1)


def _lag_errors(out_dir: Path, clip_id: str, lags=(-1, 0, 1)) -> dict[int, float]:
    ours = np.load(out_dir / "clips" / f"{clip_id}.lm68.npy")
    ref = np.load(DATA / "clips" / f"{clip_id}.lm68.npy")
    out = {}
    for lag in lags:
        lo, hi = max(0, lag), min(len(ours), len(ref) + lag)
        out[lag] = float(np.linalg.norm(ours[lo:hi] - ref[lo - lag : hi - lag], axis=2).mean())
    return out


def _audio_check(out_dir: Path, clip_id: str) -> tuple[int, int, float, int]:
    """(our length, stored length, correlation at lag 0, best lag in samples within +-10 ms)."""
    ours, rate = soundfile.read(out_dir / "clips" / f"{clip_id}.flac", dtype="float32")
    ref, _ = soundfile.read(DATA / "clips" / f"{clip_id}.flac", dtype="float32")
    assert rate == 16000 and ours.ndim == 1
    n = min(len(ours), len(ref), 3 * 16000)
    a, b = ours[:n], ref[:n]
    lags = range(-160, 161)
    corr = [float(np.dot(a[max(0, k) : n + min(0, k)], b[max(0, -k) : n - max(0, k)])) for k in lags]
    best = list(lags)[int(np.argmax(corr))]
    return len(ours), len(ref), float(np.corrcoef(a, b)[0, 1]), best


def _manifest(out_dir: Path) -> list[dict]:
    with (out_dir / "manifest.tsv").open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _write_video(path: Path, frames: list[np.ndarray], fps: float, audio: np.ndarray | None = None) -> Path:
    """Lossless test video (FFV1 in Matroska), optional 16 kHz mono PCM audio."""
    with av.open(str(path), "w") as c:
        vs = c.add_stream("ffv1", rate=Fraction(fps).limit_denominator(1001))
        vs.width, vs.height = frames[0].shape[1], frames[0].shape[0]
        vs.pix_fmt = "bgr0"
        ast = c.add_stream("pcm_s16le", rate=16000, layout="mono") if audio is not None else None
        for img in frames:
            for pkt in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        if ast is not None:
            pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
            for i in range(0, len(pcm), 1024):
                fr = av.AudioFrame.from_ndarray(pcm[None, i : i + 1024], format="s16", layout="mono")
                fr.sample_rate, fr.pts = 16000, i
                for pkt in ast.encode(fr):
                    c.mux(pkt)
            for pkt in ast.encode():
                c.mux(pkt)
    return path


def _remux_video_only(src: Path, dst: Path) -> Path:
    """Copy the video stream of `src` (no re-encoding) into a container without audio."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream_from_template(vin)
        for pkt in inp.demux(vin):
            if pkt.dts is None:
                continue
            pkt.stream = vout
            out.mux(pkt)
    return dst


def _cli(argv: list[str]) -> int:
    from stream_engine.cli import main

    return main(argv)


# ------------------------------------------------------------------------------------- reference runs


@pytest.fixture(scope="module")
def prepared_default(tmp_path_factory) -> Path:
    """GRID (25 fps .mpg), a 30 fps .mkv and a 23.976 fps .mp4 through the CLI with default tracking."""
    out = tmp_path_factory.mktemp("prep_default")
    rc = _cli(
        [
            "data",
            "prepare",
            str(RAW / GRID),
            str(RAW / MKV_30FPS),
            str(RAW / MP4_24FPS),
            "--out",
            str(out),
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


def test_frame_counts_match_reference():
    """Every raw video decodes to the stored number of 25 fps frames (30, 25 and 23.976 fps sources)."""
    rows = {r["id"]: r for r in csv.DictReader((DATA / "manifest.tsv").open(newline=""), delimiter="\t")}
    for path in sorted(RAW.iterdir()):
        stats = DecodeStats()
        num_frames = sum(1 for _ in frames_at_fps(path, stats=stats))
        assert num_frames == int(rows[path.name]["frames"]), path.name
        assert abs(stats.fps_src - float(rows[path.name]["fps_src"])) < 0.05, path.name


def test_grid_detect_every_frame_is_exact(tmp_path):
    """The reference rule (detector on every frame) reproduces the stored GRID landmarks to the pixel."""
    assert (
        _cli(
            [
                "data",
                "prepare",
                str(RAW / GRID),
                "--out",
                str(tmp_path),
                "--detect-every",
                "1",
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    err = _landmark_error(tmp_path, GRID)
    print(f"\n{GRID} detect-every 1: mean {err.mean():.3f} px, p95 {np.percentile(err, 95):.3f} px")
    assert len(err) == 75
    assert err.mean() < 0.01
    assert np.load(tmp_path / "clips" / f"{GRID}.det.npy").all()


@pytest.mark.parametrize("clip_id, max_mean_px", [(GRID, 0.4), (MKV_30FPS, 1.2), (MP4_24FPS, 1.2)])
def test_landmarks_close_to_reference(prepared_default, clip_id, max_mean_px):
    out = prepared_default
    ours = np.load(out / "clips" / f"{clip_id}.lm68.npy")
    ref = np.load(DATA / "clips" / f"{clip_id}.lm68.npy")
    assert ours.dtype == np.float32 and ours.shape[1:] == (68, 2) and np.isfinite(ours).all()
    assert abs(len(ours) - len(ref)) <= 1
    err = _landmark_error(out, clip_id)
    lag = _lag_errors(out, clip_id)
    print(
        f"\n{clip_id} detect-every 5: mean {err.mean():.3f} median {np.median(err):.3f} "
        f"p95 {np.percentile(err, 95):.3f} px; by lag {lag}"
    )
    assert err.mean() < max_mean_px
    assert np.percentile(err, 95) < 2.0
    assert min(lag, key=lag.get) == 0, "landmarks fit the stored ones best one frame off: frame grid slipped"
    det = np.load(out / "clips" / f"{clip_id}.det.npy")
    assert det.dtype == bool and det.shape == (len(ours),) and det.all()


@pytest.mark.parametrize("clip_id", [GRID, MKV_30FPS, MP4_24FPS])
def test_audio_aligned_with_reference(prepared_default, clip_id):
    n_ours, n_ref, corr, best_lag = _audio_check(prepared_default, clip_id)
    print(f"\n{clip_id} audio: {n_ours} vs {n_ref} samples, r={corr:.5f}, best lag {best_lag} samples")
    assert abs(n_ours - n_ref) <= 640
    assert corr > 0.99
    assert best_lag == 0
    frames = len(np.load(prepared_default / "clips" / f"{clip_id}.lm68.npy"))
    assert n_ours <= frames * 640  # never more audio than frames


def test_manifest_rows(prepared_default):
    rows = {r["id"]: r for r in _manifest(prepared_default)}
    assert set(rows) == {GRID, MKV_30FPS, MP4_24FPS}
    for col in (
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
        "source_path",
        "notes",
    ):
        assert col in rows[GRID]
    assert rows[GRID]["frames"] == "75" and rows[GRID]["duration_s"] == "3.00" and rows[GRID]["det_rate"] == "1.0"
    assert rows[MKV_30FPS]["fps_src"] == "30.0" and rows[MP4_24FPS]["fps_src"] == "23.976"
    from training.data.manifest import read_manifest

    records = read_manifest(prepared_default)
    assert all(r.detected_path is not None and r.audio_path.is_file() for r in records)


# -------------------------------------------------------------------------------- decoding and faces


def test_grid_picks_frame_on_screen_at_interval_centre(tmp_path):
    """30 fps -> 25 fps: output t shows the last source frame starting strictly before (t + 0.5) / 25 s."""
    frames = [np.full((32, 48, 3), 4 * k, np.uint8) for k in range(60)]  # brightness encodes the index
    path = _write_video(tmp_path / "index30.mkv", frames, 30.0)
    got = [int(round(f.mean() / 4)) for f in frames_at_fps(path)]
    want = [math.ceil((t + 0.5) * 30 / 25) - 1 for t in range(50)]
    assert got == want
    assert len(list(frames_at_fps(path, max_seconds=0.5))) == 12


def test_tracker_flags_lost_face_and_recovers():
    from training.data.prepare import _landmarker

    frames = list(frames_at_fps(RAW / GRID, max_seconds=2.0))
    blank = np.full_like(frames[0], 128)
    seq = frames[:20] + [blank] * 3 + frames[23:]
    tracker = FaceTracker(_landmarker(0), TrackConfig(detect_every=5))
    flags = [tracker.step(img)[1] for img in seq]
    assert flags[:20] == [True] * 20 and flags[20:23] == [False] * 3 and all(flags[23:])
    assert tracker.num_tracked_frames > 2 * tracker.num_detector_calls / 3  # it did track


def test_landmarks_from_image_matches_video_frame(tmp_path):
    frame = next(iter(frames_at_fps(RAW / GRID)))
    png = tmp_path / "face.png"
    with av.open(str(png), "w", format="image2") as c:
        s = c.add_stream("png")
        s.width, s.height, s.pix_fmt = frame.shape[1], frame.shape[0], "rgb24"
        for pkt in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    points = landmarks_from_image(png)
    ref = np.load(DATA / "clips" / f"{GRID}.lm68.npy")[0]
    assert points.shape == (68, 2) and np.abs(points - ref).max() < 1e-3
    from training.data.face import FaceError

    with pytest.raises(FaceError, match="no such file"):
        landmarks_from_image(tmp_path / "missing.png")


def test_cut_pieces_interpolates_short_gaps_and_splits_long_ones():
    cfg = prep.PrepareConfig(out_dir=Path("unused"), max_gap_frames=5, min_length_frames=25)
    num_frames = 100
    base = np.random.default_rng(0).uniform(50, 150, (68, 2)).astype(np.float32)
    points = np.repeat(base[None], num_frames, axis=0) + np.arange(num_frames, dtype=np.float32)[:, None, None]
    detected = np.ones(num_frames, bool)
    points[:4] = np.nan  # leading: no face yet -> dropped
    detected[:4] = False
    points[10:13] = np.nan  # short gap, no box -> interpolated
    detected[10:13] = False
    detected[20:22] = False  # short stale-box run -> kept as fitted
    detected[50:60] = False  # long stale-box run -> cut
    audio = np.arange(num_frames * 640, dtype=np.float32)
    pieces = prep.cut_pieces("v.mp4", points, detected, audio, cfg)
    assert [(p.clip_id, p.start_frame, p.num_frames) for p in pieces] == [
        ("v.mp4__part1", 4, 46),
        ("v.mp4__part2", 60, 40),
    ]
    first = pieces[0]
    # The points move linearly in time, so interpolation over the gap recovers them exactly.
    assert np.allclose(first.landmarks[10 - 4 : 13 - 4], base + np.arange(10, 13, dtype=np.float32)[:, None, None])
    assert first.interpolated.sum() == 3 and not first.detected[6:9].any() and not first.detected[16:18].any()
    assert np.array_equal(first.landmarks[16:18], points[20:22])
    assert np.array_equal(first.audio, audio[4 * 640 : 50 * 640])  # audio follows the frames
    assert np.array_equal(pieces[1].audio, audio[60 * 640 :])
    interp_cfg = prep.PrepareConfig(out_dir=Path("unused"), interpolate_missed=True)
    p = prep.cut_pieces("v.mp4", points, detected, audio, interp_cfg)[0]
    assert p.interpolated.sum() == 5


# ------------------------------------------------------------------------------------ batch behaviour


def test_batch_failures_resume_pairs_and_splits(tmp_path):
    """Bad inputs are reported and skipped, reruns skip finished videos, audio can come from elsewhere."""
    work = tmp_path / "in"
    work.mkdir()
    good = shutil.copy(RAW / GRID, work / "good.mpg")
    (work / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    silent = _remux_video_only(RAW / GRID, work / "silent.mkv")
    out = tmp_path / "out"
    common = ["--out", str(out), "--max-seconds", "1.2", "--no-progress"]
    rc = _cli(
        [
            "data",
            "prepare",
            str(good),
            str(work / "corrupt.mp4"),
            str(work / "missing.mp4"),
            str(silent),
            "--workers",
            "2",
            *common,
        ]
    )
    assert rc == 1
    failed = (out / "failed.tsv").read_text()
    assert "missing.mp4\t" in failed and "no such file" in failed
    assert "corrupt.mp4\t" in failed
    assert "silent.mkv\t" in failed and "no audio stream" in failed
    assert [r["id"] for r in _manifest(out)] == ["good.mpg"]
    assert _manifest(out)[0]["frames"] == "30"

    # Rerun: the finished video is skipped (its files untouched); the silent one gets its audio from a file.
    lm_path = out / "clips" / "good.mpg.lm68.npy"
    mtime = lm_path.stat().st_mtime_ns
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    shutil.copy(DATA / "clips" / f"{GRID}.flac", audio_dir / "silent.flac")
    rc = _cli(
        [
            "data",
            "prepare",
            str(good),
            str(silent),
            "--audio-dir",
            str(audio_dir),
            "--workers",
            "1",
            "--splits",
            *common,
        ]
    )
    assert rc == 0
    assert lm_path.stat().st_mtime_ns == mtime
    rows = {r["id"]: r for r in _manifest(out)}
    assert set(rows) == {"good.mpg", "silent.mkv"}
    assert rows["silent.mkv"]["audio_path"].endswith("silent.flac")
    assert np.array_equal(np.load(out / "clips" / "silent.mkv.lm68.npy"), np.load(lm_path))
    a, _ = soundfile.read(out / "clips" / "silent.mkv.flac")
    b, _ = soundfile.read(out / "clips" / "good.mpg.flac")
    assert len(a) == 30 * 640 and np.corrcoef(a, b[: len(a)])[0, 1] > 0.99
    assert (out / "failed.tsv").read_text().splitlines() == ["source_path\terror"]  # this run's failures only
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == ["good.mpg", "silent.mkv"]
    assert not list((out / "clips").glob("*.tmp-*"))

    # VIDEO=AUDIO pairs work too.
    rc = _cli(["data", "prepare", f"{silent}={audio_dir / 'silent.flac'}", "--overwrite", "--workers", "1", *common])
    assert rc == 0 and (out / "records" / "silent.mkv.json").is_file()


def test_face_loss_splits_clip_and_no_face_is_an_error(tmp_path):
    frames = list(frames_at_fps(RAW / GRID))
    blank = np.full_like(frames[0], 128)
    audio = 0.1 * np.sin(np.arange(75 * 640) * 2 * np.pi * 220 / 16000).astype(np.float32)
    cut = _write_video(tmp_path / "cut.mkv", frames[:30] + [blank] * 10 + frames[40:75], 25.0, audio)
    faceless = _write_video(tmp_path / "faceless.mkv", [blank] * 30, 25.0, audio[: 30 * 640])
    cfg = prep.PrepareConfig(out_dir=tmp_path / "out", progress=False)
    summary = prep.prepare([str(cut), str(faceless)], cfg)
    assert summary["failed"] == [(str(faceless), f"{faceless}: no face found in the whole clip (30 frames)")]
    rows = {r["id"]: r for r in _manifest(tmp_path / "out")}
    assert set(rows) == {"cut.mkv__part1", "cut.mkv__part2"}
    assert (rows["cut.mkv__part1"]["start_frame"], rows["cut.mkv__part1"]["frames"]) == ("0", "30")
    assert (rows["cut.mkv__part2"]["start_frame"], rows["cut.mkv__part2"]["frames"]) == ("40", "35")
    tail, _ = soundfile.read(tmp_path / "out" / "clips" / "cut.mkv__part2.flac", dtype="float32")
    assert len(tail) == 35 * 640 and np.corrcoef(tail, audio[40 * 640 :])[0, 1] > 0.999


def test_clear_errors(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        probe_video(tmp_path / "nope.mp4")
    audio_only = tmp_path / "a.flac"
    soundfile.write(audio_only, np.zeros(16000, np.float32), 16000)
    with pytest.raises(VideoError, match="no video stream"):
        probe_video(audio_only)
    (tmp_path / "junk.mkv").write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoError, match="cannot open"):
        probe_video(tmp_path / "junk.mkv")
