"""Landmark videos with their audio track (sample renders during training, demos, reports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stream_engine.landmarks import CONTOURS


def draw_frame(
    points: np.ndarray,
    size_px: int = 256,
    colour=(30, 220, 120),
    others: list[np.ndarray] | None = None,
    other_colours=((200, 200, 200),),
) -> np.ndarray:
    """Rasterise one (68, 2) frame in normalised crop coordinates to an (H, W, 3) uint8 image."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size_px, size_px), (16, 16, 24))
    draw = ImageDraw.Draw(img)
    layers = [(o, other_colours[i % len(other_colours)]) for i, o in enumerate(others or [])] + [(points, colour)]
    for pts, col in layers:
        px = np.asarray(pts, dtype=np.float64) * size_px
        if not np.all(np.isfinite(px)):
            continue
        for contour in CONTOURS:
            draw.line([tuple(px[i]) for i in contour], fill=col, width=2)
    return np.asarray(img)


def render_video(
    path: str | Path,
    landmarks: np.ndarray,
    audio: np.ndarray | None = None,
    sample_rate_hz: int = 16000,
    fps: int = 25,
    size_px: int = 256,
    reference: np.ndarray | None = None,
) -> Path:
    """Write an MP4 (H.264 + AAC) of a landmark sequence, optionally over a grey reference sequence.

    Args:
        landmarks: (T, 68, 2) normalised coordinates.
        audio: (num_samples,) float PCM aligned with frame 0, or None for a silent video.
        reference: optional (T, 68, 2) drawn underneath in grey (e.g. the ground truth).
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.width = vstream.height = size_px
        vstream.pix_fmt = "yuv420p"
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate_hz)
            astream.layout = "mono"
        for t in range(len(landmarks)):
            others = [reference[t]] if reference is not None and t < len(reference) else None
            frame = av.VideoFrame.from_ndarray(draw_frame(landmarks[t], size_px, others=others), format="rgb24")
            for packet in vstream.encode(frame):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None:
            pcm = np.clip(np.asarray(audio, dtype=np.float32), -1, 1)[: int(len(landmarks) * sample_rate_hz / fps)]
            block = 1024
            for i in range(0, len(pcm), block):
                chunk = pcm[i : i + block][None, :]
                aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
                aframe.sample_rate = sample_rate_hz
                aframe.pts = i
                for packet in astream.encode(aframe):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return path
