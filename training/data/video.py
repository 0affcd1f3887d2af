"""Decoding videos to RGB frames on a fixed 25 fps grid (PyAV), and probing their streams.

The output grid follows FFmpeg's `fps` filter (what made `../shared/data`): output frame t stands for the
interval [t / fps, (t + 1) / fps) and shows the source frame that is on screen at the *centre* of that
interval, i.e. the last source frame whose timestamp is strictly before (t + 0.5) / fps. Landmark frame t
therefore pairs with audio samples [640 t, 640 (t + 1)) at 16 kHz. A 25 fps source maps one to one; a 30 fps
source drops one frame in six; 23.976 fps repeats one in about 25. Time zero is the first video frame.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np


class VideoError(ValueError):
    """A video that cannot be used: missing, unreadable, without a video stream or without frames."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video, before decoding it.

    Attributes:
        path: the file.
        width_px, height_px: coded frame size (before any display rotation).
        fps_src: the source's average frame rate in frames/s (0.0 when the container does not say).
        duration_s: the container's duration in seconds (0.0 when unknown); the decoded length may differ.
        video_start_s: timestamp of the video stream's start in container time, seconds.
        audio_start_s: the first audio stream's start in container time, seconds; None without audio.
        audio_rate_hz: its sample rate (0 without audio).
    """

    path: Path
    width_px: int
    height_px: int
    fps_src: float
    duration_s: float
    video_start_s: float
    audio_start_s: float | None
    audio_rate_hz: int

    @property
    def has_audio(self) -> bool:
        return self.audio_start_s is not None


def _open(path: Path):
    import av

    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    try:
        return av.open(str(path))
    except Exception as exc:  # av.error.InvalidDataError and friends: not a media file
        raise VideoError(f"{path}: cannot open as a media file ({exc})") from exc


def _stream_start_s(stream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def probe_video(path: str | Path) -> VideoInfo:
    """Read the container header (no decoding).

    Raises:
        VideoError: missing file, not a media file, or no video stream.
    """
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream")
        vs = container.streams.video[0]
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        audio = container.streams.audio[0] if container.streams.audio else None
        return VideoInfo(
            path=path,
            width_px=int(vs.codec_context.width),
            height_px=int(vs.codec_context.height),
            fps_src=float(rate) if rate else 0.0,
            # container.duration is in AV_TIME_BASE (microseconds).
            duration_s=float(container.duration) / 1e6 if container.duration else 0.0,
            video_start_s=_stream_start_s(vs),
            audio_start_s=_stream_start_s(audio) if audio is not None else None,
            audio_rate_hz=int(audio.rate or 0) if audio is not None else 0,
        )


@dataclasses.dataclass
class DecodeStats:
    """Filled while :func:`frames_at_fps` runs (read it after the iterator is exhausted).

    Attributes:
        num_source_frames: source frames decoded.
        num_frames: frames emitted on the output grid.
        first_pts_s: container timestamp of the first decoded video frame, seconds (the grid's time zero).
        end_s: end of the last decoded source frame relative to the first, seconds.
        fps_src: measured source rate, (num_source_frames) / end_s.
    """

    num_source_frames: int = 0
    num_frames: int = 0
    first_pts_s: float = 0.0
    end_s: float = 0.0

    @property
    def fps_src(self) -> float:
        return self.num_source_frames / self.end_s if self.end_s > 0 else 0.0


def _to_rgb(frame) -> np.ndarray:
    """av.VideoFrame -> (H, W, 3) uint8 RGB, C-contiguous and display-rotated.

    C-contiguity matters: PyAV returns views with padded rows (the codec's line size), and dlib silently
    computes garbage (or finds no face) on such strided arrays.
    """
    img = frame.to_ndarray(format="rgb24")
    # Phone videos carry a display rotation; FFmpeg applies it by default, so do we. PyAV reports the
    # counter-clockwise angle, np.rot90 turns counter-clockwise for positive k.
    rotation = int(round(getattr(frame, "rotation", 0) or 0))
    if rotation % 360:
        img = np.rot90(img, k=(rotation // 90) % 4)
    return np.ascontiguousarray(img)


def frames_at_fps(
    path: str | Path, fps: float = 25.0, max_seconds: float | None = None, stats: DecodeStats | None = None
) -> Iterator[np.ndarray]:
    """Decode a video onto a constant-rate grid.

    Args:
        path: any FFmpeg-readable video.
        fps: output frame rate in frames/s.
        max_seconds: stop after this much output (None: the whole video).
        stats: optional, filled with counts and timing as decoding proceeds.
    Yields:
        (H, W, 3) uint8 RGB frames, one per output frame t = 0, 1, ... (see the module docstring for which
        source frame each one is). The same array object is yielded again when a source frame repeats; do
        not modify it in place.
    Raises:
        VideoError: missing or unreadable file, no video stream, or no decodable frame.
    """
    path = Path(path)
    stats = stats if stats is not None else DecodeStats()
    rate = Fraction(fps).limit_denominator(1001 * 1000)
    limit = math.inf if max_seconds is None else math.floor(max_seconds * rate)
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        nominal = stream.average_rate or stream.guessed_rate or Fraction(25)
        t = 0  # next output frame index
        first = None  # pts of the first frame (Fraction seconds): the grid's zero
        current = None  # (av frame, cached RGB array or None) on screen before the next decoded one
        last_start = last_dur = Fraction(0)
        try:
            for frame in container.decode(stream):
                if frame.pts is None:  # no timestamp: assume constant rate after the previous frame
                    start = (last_start + last_dur) if current is not None else Fraction(0)
                else:
                    start = Fraction(frame.pts) * frame.time_base
                    if first is None:
                        first = start
                        stats.first_pts_s = float(first)
                    start -= first
                if current is not None and start <= last_start:
                    continue  # out-of-order or duplicate timestamp: keep the grid monotonic
                # Output frame t shows the last source frame that starts strictly before its centre
                # (t + 1/2) / fps, so the previous frame stays on for every t whose centre is at or before this
                # frame's start. (FFmpeg's fps filter rounds start * fps half up to pick the slot: a frame
                # starting exactly on a centre belongs to the next slot. Exact ties are common: 30 fps in a
                # 1/1000 time base puts every sixth frame on a centre.)
                while current is not None and (t + Fraction(1, 2)) / rate <= start and t < limit:
                    yield _cached_rgb(current)
                    t += 1
                    stats.num_frames = t
                if t >= limit:
                    return
                if frame.duration:
                    last_dur = Fraction(frame.duration) * frame.time_base
                else:
                    last_dur = 1 / Fraction(nominal)
                current = [frame, None]
                last_start = start
                stats.num_source_frames += 1
                stats.end_s = float(start + last_dur)
        except VideoError:
            raise
        except Exception as exc:  # corrupt packets: FFmpeg errors surface here
            if current is None:
                raise VideoError(f"{path}: cannot decode video ({exc})") from exc
            # A truncated file: keep what decoded (the caller sees the shorter length).
        if current is None:
            raise VideoError(f"{path}: the video stream decoded to no frames")
        # The last frame stays on screen until its end; the grid has round(end * fps) frames (half up).
        num_frames = math.floor((last_start + last_dur) * rate + Fraction(1, 2))
        while t < min(num_frames, limit):
            yield _cached_rgb(current)
            t += 1
            stats.num_frames = t


def _cached_rgb(current: list) -> np.ndarray:
    # Convert a source frame once, however many output frames show it, and only if one does (a 30 fps
    # source never converts the frames the grid drops).
    if current[1] is None:
        current[1] = _to_rgb(current[0])
    return current[1]
