"""`msync animate FILE... --out PATH`: whole recordings to animations (json, csv or npz), optionally MP4 previews.

    msync animate talk.wav --out talk.json                    # one file
    msync animate clips/ more.flac --out anims --format npz   # a folder and a file -> anims/<name>.npz
    msync animate talk.wav --out talk.csv --video             # + talk.mp4: the landmark face with the audio

One frame per 40 ms of audio, the look-ahead tail included (`stream_engine.animation.animate`). A file that cannot be
read is reported and skipped; the exit status is 1 when any file was skipped, 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: What a folder is searched for (files given by name are read whatever their suffix): libsndfile's formats and
#: the common containers FFmpeg (PyAV) reads.
AUDIO_SUFFIXES = {
    ".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".wma", ".caf",
    ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".avi", ".flv", ".wmv", ".ts", ".3gp",
}  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "\n\n".join((__doc__ or "").split("\n\n")[1:3])
    p.add_argument("inputs", nargs="+", metavar="FILE", help="audio/video files or folders of them")
    p.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="output file (one input; a .json/.csv/.npz name) or folder (one output per input, <name>.<format>; "
        "any other name is a folder)",
    )
    p.add_argument(
        "--format", choices=["json", "csv", "npz"], help="output format (default: the --out suffix, else json)"
    )
    p.add_argument("--video", action="store_true", help="also write an MP4 preview beside each output (needs PyAV)")
    p.add_argument("--model", metavar="PATH", help="exported .onnx step model (default: the shipped one)")
    p.add_argument("--reference-face", metavar="FILE", help="68-point JSON face to start from")
    p.add_argument("--seed", type=int, default=0, help="seed of the model noise and the blinks (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary table")


def collect_inputs(items: list[str]) -> tuple[list[Path], list[str]]:
    """Files as given, folders expanded (sorted) to the audio/video files directly inside them (`AUDIO_SUFFIXES`).

    Returns:
        (the inputs, one note per folder that held anything else: how many other files and subfolders it held,
        which are not read).
    """
    out: list[Path] = []
    notes: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            entries = sorted(path.iterdir())
            found = [p for p in entries if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES]
            others = [p for p in entries if p.is_file() and p not in found and not p.name.startswith(".")]
            folders = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
            if others or folders:
                kinds = sorted({p.suffix.lower() or "(no suffix)" for p in others})
                notes.append(
                    f"{path}: read {len(found)} audio/video file(s); left out {len(others)} other file(s)"
                    + (f" ({', '.join(kinds[:6])}{', ...' if len(kinds) > 6 else ''})" if others else "")
                    + (f" and {len(folders)} subfolder(s) (folders are not searched)" if folders else "")
                    + "; name a file to read it whatever its suffix"
                )
            out.extend(found)
        else:
            out.append(path)  # a missing file is reported when it is read
    return out, notes


class OutputError(ValueError):
    """`--out` / `--format` that cannot hold the inputs' animations."""


def output_paths(inputs: list[Path], out: Path, fmt: str | None) -> tuple[list[Path], str]:
    """Where each input's animation goes, and the format.

    Raises:
        OutputError: `--out` names one .json/.csv/.npz file but there are several inputs, or `--format` differs
            from its suffix.
    """
    suffix = out.suffix.lower().lstrip(".")
    if suffix in ("json", "csv", "npz") and not out.is_dir():
        if len(inputs) != 1:
            raise OutputError(
                f"--out {out} names one .{suffix} file, but there are {len(inputs)} inputs: give a folder"
            )
        if fmt and fmt != suffix:
            raise OutputError(f"--out {out} names a .{suffix} file, but --format is {fmt}")
        return [out], suffix
    fmt = fmt or "json"
    paths, taken = [], set()
    for src in inputs:
        stem, k = src.stem, 1
        while stem in taken:
            k += 1
            stem = f"{src.stem}-{k}"
        taken.add(stem)
        paths.append(out / f"{stem}.{fmt}")
    return paths, fmt


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stream_engine.animation import animate, expected_frames, load_model, prepare_audio
    from stream_engine.audio_io import AudioError
    from stream_engine.preview import PreviewError, render_video, require_pyav
    from stream_engine.session import ReferenceFaceError, load_reference_face

    inputs, notes = collect_inputs(args.inputs)
    for note in notes:
        print(f"msync animate: {note}", file=sys.stderr)
    if not inputs:
        print("msync animate: no audio files found in " + ", ".join(args.inputs), file=sys.stderr)
        return 2
    try:
        outs, fmt = output_paths(inputs, Path(args.out), args.format)
    except OutputError as exc:
        print(f"msync animate: {exc}", file=sys.stderr)
        return 2
    if args.video:
        try:
            require_pyav()
        except PreviewError as exc:
            print(f"msync animate: {exc}", file=sys.stderr)
            return 2
    try:
        runner = load_model(args.model)
        face = load_reference_face(args.reference_face, runner.contract.num_landmarks) if args.reference_face else None
    except (FileNotFoundError, ReferenceFaceError, ValueError) as exc:
        print(f"msync animate: {exc}", file=sys.stderr)
        return 2
    rows, failed = [], []
    bar = tqdm(list(zip(inputs, outs)), unit="file", disable=args.quiet, file=sys.stderr)
    for src, dst in bar:
        bar.set_postfix_str(src.name[-40:])
        try:
            audio = prepare_audio(src, None, int(runner.contract.sample_rate_hz))
            anim = animate(audio, runner.contract.sample_rate_hz, face, model=runner, seed=args.seed)
            anim.save(dst, fmt)
            if args.video:
                render_video(anim, audio, dst.with_suffix(".mp4"))
        except (AudioError, PreviewError, OSError, ValueError) as exc:
            failed.append((src, str(exc)))
            reason = str(exc).replace(f"{src}: ", "")  # the decoder's message often repeats the path
            tqdm.write(f"msync animate: skipped {src}: {reason}", file=sys.stderr)
            continue
        written = f"{dst} + {dst.with_suffix('.mp4').name}" if args.video else str(dst)
        rows.append((src, written, anim.duration_s, anim.num_frames, expected_frames(anim.duration_s, anim.fps)))
    if not args.quiet:
        print(f"{'input':40s} {'duration_s':>10s} {'frames':>7s} {'ceil(d*25)':>10s}  output", file=sys.stderr)
        for src, dst, dur, n, want in rows:
            print(f"{src.name[-40:]:40s} {dur:10.3f} {n:7d} {want:10d}  {dst}", file=sys.stderr)
        print(f"msync animate: {len(rows)} written, {len(failed)} skipped", file=sys.stderr)
    return 1 if failed else 0
