"""Does the face keep its proportions when the speech stops?

    python -m benchmarks.silence_shape --model 0.3.6=OLD.onnx --model 0.3.7=stream_engine/models/default.onnx \
        [--clips 24] [--out benchmarks/results] [--name silence_shape]

Each test-split clip of `../shared/data` (held-out speakers; `training.data.splits`) is animated from its own first
frame (`reference_face_from_points`) with its own audio followed by 4 s of a pause: digital silence, or -48 dBFS
noise of the fan-noise case's spectrum (`benchmarks.noise_spectra`), which the 0.3.6+ input gate turns into
digital silence after its hold. Three proportions of the 68 points, each the median over clips of its mean over
frames: inter-ocular distance (36-45) over face width (0-16), eye width (36-39, 42-45) over inter-ocular, and the
brows' height above the eyes over inter-ocular. Reported for the real faces (ground truth, every frame), for the
model's frames while the clip speaks (from frame 10), and over the pause's last 2 s; and each as a ratio to the
clip's ground truth (1.00 = a real face's proportions). Found by a fresh-eye user trial of the blendshapes: model
0.3.6's face in digital silence spread its eyes (1.27x) and lowered its brows (0.74x), which held browDown at 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_info, write_report

SPF = 640
PAUSE_S = 4.0
NAMES = ("inter-ocular / face width", "eye width / inter-ocular", "brow height / inter-ocular")


def proportions(x: np.ndarray) -> np.ndarray:
    """(..., 68, 2) landmarks -> (..., 3) in `NAMES` order."""
    iod = np.linalg.norm(x[..., 36, :] - x[..., 45, :], axis=-1)
    width = np.linalg.norm(x[..., 0, :] - x[..., 16, :], axis=-1)
    eye = (
        np.linalg.norm(x[..., 36, :] - x[..., 39, :], axis=-1) + np.linalg.norm(x[..., 42, :] - x[..., 45, :], axis=-1)
    ) / 2
    eyes_y = (x[..., 36:42, 1].mean(-1) + x[..., 42:48, 1].mean(-1)) / 2
    brow = (eyes_y - x[..., 17:27, 1].mean(-1)) / iod
    return np.stack([iod / width, eye / iod, brow], -1)


def run(models: dict[str, str], clips: int, data: str) -> dict[str, Any]:
    import soundfile as sf

    from benchmarks import noise_spectra
    from stream_engine.animation import animate, load_model
    from stream_engine.session import reference_face_from_points
    from training.data.manifest import read_manifest
    from training.data.splits import assign_splits

    records = assign_splits(read_manifest(data))["test"]
    pause = int(PAUSE_S * 16000)
    fan = noise_spectra.families(pause, 1, noise_spectra.CASE)
    noise = np.asarray(fan["case spectrum"][0], np.float32)[:pause]
    noise = noise / np.sqrt(np.mean(noise.astype(np.float64) ** 2)) * 10 ** (-48 / 20)
    runners = {name: load_model(path) for name, path in models.items()}
    rows: dict[str, list[np.ndarray]] = {"ground truth": []}
    rows.update({f"{n} {part}": [] for n in models for part in ("speech", "silence", "noise")})
    used: list[str] = []
    for rec in records:
        if len(used) >= clips:
            break
        lm = np.load(rec.landmarks_path).astype(np.float64)
        audio, rate = sf.read(rec.audio_path, dtype="float32")
        ok = ~np.isnan(lm).any(axis=(1, 2))
        if rate != 16000 or ok.sum() < 50:
            continue
        used.append(rec.id)
        gt = proportions(lm[ok]).mean(0)
        rows["ground truth"].append(gt)
        ref = reference_face_from_points(lm[int(np.argmax(ok))])
        n = len(audio) // SPF
        tail = int(2.0 * 25)
        for name, runner in runners.items():
            for part, fill in (("silence", np.zeros(pause, np.float32)), ("noise", noise.astype(np.float32))):
                pcm = np.concatenate([audio, fill])
                out = animate(pcm, 16000, ref, model=runner).landmarks.astype(np.float64)
                if part == "silence":
                    rows[f"{name} speech"].append(proportions(out[10:n]).mean(0) / gt)
                rows[f"{name} {part}"].append(proportions(out[-tail:]).mean(0) / gt)
    table = {k: np.median(np.array(v), axis=0).round(3).tolist() for k, v in rows.items()}
    return {"clips": used, "pause_s": PAUSE_S, "noise_dbfs": -48.0, "proportions": list(NAMES), "median": table}


def figure(models: dict[str, str], wav: str, path: str) -> None:
    """The faces to look at: for `wav` followed by `PAUSE_S` of digital silence, each model's frame 1 s into the
    audio and its last frame, beside the reference face (one row per model). The default wav, the silence case's,
    already ends in 6 s of silence, so its last frame is 10 s into silence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf

    from stream_engine.animation import animate, load_model

    audio, rate = sf.read(wav, dtype="float32")
    pcm = np.concatenate([audio, np.zeros(int(PAUSE_S * rate), np.float32)])
    parts = ((17, 22), (22, 27), (27, 31), (31, 36), (0, 17))
    loops = ((36, 42), (42, 48), (48, 60), (60, 68))
    fig, axes = plt.subplots(len(models), 3, figsize=(9, 3.2 * len(models)), squeeze=False)
    for row, (name, model) in enumerate(models.items()):
        runner = load_model(model)
        lm = animate(pcm, rate, model=runner).landmarks
        faces = (np.asarray(runner.contract.reference_face), lm[25], lm[-1])
        titles = ("reference face", "1 s into the audio", f"last frame (+{PAUSE_S:g} s of silence)")
        for col, (face, title) in enumerate(zip(faces, titles)):
            ax = axes[row, col]
            for a, b in parts:
                ax.plot(face[a:b, 0], face[a:b, 1], "-", lw=1.2)
            for a, b in loops:
                ring = list(range(a, b)) + [a]
                ax.plot(face[ring, 0], face[ring, 1], "-", lw=1.2)
            ax.set_xlim(0.15, 0.85)
            ax.set_ylim(0.85, 0.15)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(res: dict[str, Any], argv: str) -> str:
    lines = [
        "# The face's proportions when the speech stops",
        "",
        f"`{argv}` (module docstring). {len(res['clips'])} test-split clips, each from its own first frame; a "
        f"{res['pause_s']:g} s pause after the clip's audio, measured over its last 2 s.",
        "",
        "Ground truth: the proportions themselves (median over clips). Model rows: the ratio to each clip's ground "
        "truth (median over clips; 1.00 = a real face's proportions).",
        "",
        "| row | " + " | ".join(res["proportions"]) + " |",
        "|---|" + "---:|" * len(res["proportions"]),
    ]
    for k, v in res["median"].items():
        lines.append(f"| {k} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
    m = res.get("machine", {})
    lines += ["", f"Machine: {m.get('cpu', '?')}, load {m.get('load_avg_1m', '?')}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH", help="an exported .onnx step model")
    p.add_argument("--clips", type=int, default=24, help="test-split clips (default 24)")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="silence_shape")
    p.add_argument(
        "--figure-wav",
        default="../shared/cases/silence-landmarks-open/speech_then_6s_silence.wav",
        help="speech for the faces figure, <out>/<name>.png ('' for none)",
    )
    args = p.parse_args(argv)
    models = dict(m.split("=", 1) for m in args.model)
    if args.figure_wav:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        figure(models, args.figure_wav, str(Path(args.out) / f"{args.name}.png"))
    res = run(models, args.clips, args.data)
    res["machine"] = machine_info()
    cmd = "python -m benchmarks.silence_shape " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(args.out, args.name, res, markdown(res, cmd))
    print(markdown(res, cmd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
