"""The report's side-by-side: ground truth and every row on the same clip and audio, through a pause and a noise
segment (an MP4 with the audio, via PyAV, and a PNG frame strip for the Markdown).

Timeline (two streams of the non-speech set of one held-out clip, `training.eval.rest`, "inserted" layout):
speech, 3 s of digital silence, speech; then speech with -42 dBFS noise under it, 3 s of that noise alone,
speech. Ground truth exists for the speech parts only (the clip's own frames); in the synthetic segments its
panel shows nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.eval.sequences import GT, SHUFFLED

PARTS = (("silence", "inserted"), ("noise -42 dBFS", "inserted"))


def _panel(points, title: str, size: int, note: str = "") -> np.ndarray:
    from PIL import Image, ImageDraw

    from training.render import draw_frame

    img = draw_frame(points, size) if points is not None else np.full((size, size, 3), 16, np.uint8)
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    d.text((6, 4), title, fill=(240, 240, 240))
    if note:
        d.text((6, size - 16), note, fill=(250, 200, 80))
    return np.asarray(im)


def timeline(stimuli, outputs: dict, segs_by_clip: dict) -> tuple[dict, np.ndarray, list[str]] | None:
    """({row: (T, 68, 2) or None per frame as an object list}, pcm, per-frame segment labels) of the side-by-side,
    or None when the non-speech set lacks the parts."""
    picked = []
    for kind, layout in PARTS:
        idx = [i for i, st in enumerate(stimuli) if st.kind == kind and st.layout == layout]
        if not idx:
            return None
        picked.append(idx[0])
    rows: dict[str, list] = {GT: []}
    labels: list[str] = []
    pcm = []
    for i in picked:
        st = stimuli[i]
        gt = segs_by_clip[st.clip_id][0].landmarks
        n = st.num_frames
        speech_frames = [t for t in range(n) if t < st.rest_start] + [
            t - (st.rest_end - st.rest_start) for t in range(st.rest_end, n)
        ]
        k = 0
        for t in range(n):
            if st.rest_start <= t < st.rest_end:
                rows[GT].append(None)
                labels.append(st.kind)
            else:
                f = speech_frames[k]
                k += 1
                rows[GT].append(gt[f] if f < len(gt) else None)
                labels.append("speech" + (" + noise" if st.kind.startswith("noise") else ""))
        for name, ys in outputs.items():
            rows.setdefault(name, []).extend(list(ys[i]))
        pcm.append(st.pcm)
    return rows, np.concatenate(pcm), labels


def render_side_by_side(out_dir: Path, rows_eval: dict, inputs, stimuli, outputs: dict, what: str, size: int = 200):
    """Write OUT/side_by_side.png (frame strip) and, when `what` has "mp4", OUT/videos/side_by_side.mp4.
    Returns {"png": path, "mp4": path or None, "clip_id", "seconds"} or None."""
    import av
    from PIL import Image

    tl = timeline(stimuli, outputs, inputs.segs_by_clip)
    if tl is None:
        return None
    rows, pcm, labels = tl
    names = [GT] + [n for n in outputs if n != SHUFFLED]
    T = len(labels)

    def frame(t: int) -> np.ndarray:
        return np.concatenate([_panel(rows[n][t], n, size, labels[t] if n == GT else "") for n in names], axis=1)

    # strip: 8 instants spread over speech, pause, speech, noise
    picks = np.linspace(5, T - 6, 8).astype(int)
    strip = np.concatenate(
        [
            np.concatenate([_panel(rows[n][t], f"{n} @{t * 0.04:.1f}s", size, labels[t]) for t in picks], axis=1)
            for n in names
        ],
        axis=0,
    )
    png = out_dir / "side_by_side.png"
    Image.fromarray(strip).resize((strip.shape[1] // 2, strip.shape[0] // 2)).save(png)
    mp4 = None
    if "mp4" in what:
        mp4 = out_dir / "videos" / "side_by_side.mp4"
        mp4.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(mp4), mode="w") as c:
            vs = c.add_stream("libx264", rate=25)
            vs.width, vs.height = size * len(names), size
            vs.pix_fmt = "yuv420p"
            aus = c.add_stream("aac", rate=16000)
            aus.layout = "mono"
            for t in range(T):
                for p in vs.encode(av.VideoFrame.from_ndarray(frame(t), format="rgb24")):
                    c.mux(p)
            for p in vs.encode():
                c.mux(p)
            a = np.clip(pcm, -1, 1).astype(np.float32)
            for i in range(0, len(a), 1024):
                af = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(a[i : i + 1024][None]), format="fltp", layout="mono"
                )
                af.sample_rate, af.pts = 16000, i
                for p in aus.encode(af):
                    c.mux(p)
            for p in aus.encode():
                c.mux(p)
    return {
        "png": png.name,
        "mp4": f"videos/{mp4.name}" if mp4 else None,
        "clip_id": stimuli[0].clip_id,
        "seconds": T * 0.04,
        "rows": names,
    }
