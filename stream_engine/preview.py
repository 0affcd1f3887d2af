"""An MP4 preview of an animation: the landmark face drawn per frame, with the audio track (PyAV).

    render_video(animation, audio_16k, "preview.mp4")

The face is drawn in the fixed crop (x right, y down, [0, 1] mapped to the picture) as the 68 points joined
along the iBUG contours (jaw, brows, nose, eyes, outer and inner lips). Video: H.264 (libx264, yuv420p) at the
animation's fps, or MPEG-4 part 2 where this FFmpeg build has no libx264; audio: AAC at the audio's rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from stream_engine.animation import Animation

# iBUG 68 contours as (first, last, closed).
CONTOURS = (
    (0, 16, False),
    (17, 21, False),
    (22, 26, False),
    (27, 30, False),
    (31, 35, False),
    (36, 41, True),
    (42, 47, True),
    (48, 59, True),
    (60, 67, True),
)


class PreviewError(RuntimeError):
    """The preview cannot be written (PyAV missing, no usable encoder, unwritable path)."""


def require_pyav() -> None:
    """Raise `PreviewError` with the install hint when PyAV is not installed."""
    try:
        import av  # noqa: F401
    except ImportError:
        raise PreviewError(
            "--video needs PyAV (FFmpeg bindings): pip install av  (or pip install 'msync[video]')"
        ) from None


def draw_face(points: np.ndarray, size: int = 256) -> np.ndarray:
    """(68, 2) normalised landmarks -> (size, size, 3) uint8 picture of the face."""
    img = np.full((size, size, 3), 24, np.uint8)
    p = np.asarray(points, dtype=np.float64) * (size - 1)
    segs: list[tuple[int, int]] = []
    for a, b, closed in CONTOURS:
        idx = list(range(a, b + 1)) + ([a] if closed else [])
        segs.extend(zip(idx[:-1], idx[1:]))
    for i, j in segs:
        n = int(max(abs(p[j] - p[i]).max(), 1)) + 1
        t = np.linspace(0.0, 1.0, n)[:, None]
        xy = np.rint(p[i] + (p[j] - p[i]) * t).astype(int)
        ok = (xy[:, 0] >= 0) & (xy[:, 0] < size) & (xy[:, 1] >= 0) & (xy[:, 1] < size)
        img[xy[ok, 1], xy[ok, 0]] = (120, 200, 255)
    q = np.rint(p).astype(int)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            x, y = q[:, 0] + dx, q[:, 1] + dy
            ok = (x >= 0) & (x < size) & (y >= 0) & (y < size)
            img[y[ok], x[ok]] = (255, 255, 255)
    return img


def render_video(animation: Animation, audio: np.ndarray, path: str | Path, size: int = 256) -> Path:
    """Write `animation` (an `animate.Animation`) with `audio` ((N,) float32 at `animation.sample_rate_hz`) to an MP4.

    Raises:
        PreviewError: PyAV missing or no encoder.
    """
    require_pyav()
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = int(animation.sample_rate_hz)
    with av.open(str(path), "w") as out:
        try:
            video = out.add_stream("libx264", rate=int(round(animation.fps)))
        except Exception:
            video = out.add_stream("mpeg4", rate=int(round(animation.fps)))
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        try:
            sound = out.add_stream("aac", rate=rate)
            sound.layout = "mono"
        except Exception as exc:
            raise PreviewError(f"this FFmpeg build has no AAC encoder: {exc}") from None
        for t in range(animation.num_frames):
            frame = av.VideoFrame.from_ndarray(draw_face(animation.landmarks[t], size), format="rgb24")
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        pcm = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)
        chunk = 1024
        for start in range(0, pcm.size, chunk):
            piece = pcm[start : start + chunk]
            af = av.AudioFrame.from_ndarray(piece[None, :], format="fltp", layout="mono")
            af.sample_rate = rate
            af.pts = start
            for packet in sound.encode(af):
                out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)
    return path
