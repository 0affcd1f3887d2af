"""A speech corpus for distilling the speech teacher into the causal audio encoder: public speech audio from many
voices, read from bare git mirrors of public repositories, listed file by file in a committed manifest.

    python -m training.data.speech_corpus build        # scan the mirrors, write training/data/speech_corpus.tsv
    python -m training.data.speech_corpus materialise  # manifest -> 16 kHz mono float32 .npy files in the cache

The manifest (`speech_corpus.tsv`) names, per file: the source repository, the commit read, the path in it, the
licence of the audio, the speaker where the source says it, the seconds kept after silence cropping and the
sha256 of the file's bytes; `#` header lines count hours and speakers. Materialising reads each blob with
`git cat-file` from `<mirrors>/<owner>+<name>/repo` (the layout of `/work/.mirror`), refuses bytes whose sha256
differs from the manifest, decodes them (`stream_engine.audio_io.load_audio`: libsndfile or PyAV, soxr
resampling) and crops long silences (`crop_silence`). Nothing is downloaded: a missing mirror is an error that
says which repository to mirror. No audio is committed; the cache lives in `~/.cache/msync/speech_corpus`.

Sources and licences: `../shared/docs/reference/speech-audio-sources.md`. Non-commercial sets (RAVDESS,
Mycroft's heysavant) and repositories of unclear rights are left out so the corpus can train a shipped model.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

SR = 16_000
MANIFEST = Path(__file__).with_name("speech_corpus.tsv")
COLUMNS = ("source", "commit", "path", "licence", "speaker", "seconds", "sha256")
CROP_VERSION = 1  # part of the cache key: bump when crop_silence changes


class CorpusError(RuntimeError):
    """The corpus cannot be materialised as the manifest says (missing mirror, changed bytes, bad manifest)."""


@dataclasses.dataclass(frozen=True)
class CorpusEntry:
    """One audio file of the corpus (one manifest row). `speaker` is "" where the source does not say;
    `seconds` is the audio kept after silence cropping, at 16 kHz."""

    source: str
    commit: str
    path: str
    licence: str
    speaker: str
    seconds: float
    sha256: str


@dataclasses.dataclass(frozen=True)
class CropConfig:
    """Energy-threshold silence cropping (`crop_silence`).

    Attributes:
        frame_ms: RMS frame length.
        below_peak_db: a frame is silent when its RMS lies this far below the clip's loudest frame ...
        floor_dbfs: ... or below this absolute level.
        keep_silence_s: silent runs longer than this are shortened to it (half kept on each side); leading and
            trailing silence is cut to half of it.
    """

    frame_ms: float = 20.0
    below_peak_db: float = 40.0
    floor_dbfs: float = -60.0
    keep_silence_s: float = 0.3


def crop_silence(pcm: np.ndarray, cfg: CropConfig = CropConfig(), sr: int = SR) -> np.ndarray:
    """Shorten long silences of a mono clip.

    (N,) float32 -> (M,) float32, M <= N. Frames of `cfg.frame_ms` whose RMS lies more than `below_peak_db` below
    the loudest frame, or under `floor_dbfs`, are silent; silent runs longer than `keep_silence_s` keep only
    `keep_silence_s / 2` at each side (a speaker's pause stays a pause). A clip with no loud frame returns empty.
    """
    pcm = np.asarray(pcm, dtype=np.float32)
    hop = max(1, int(round(sr * cfg.frame_ms / 1000.0)))
    n = len(pcm) // hop
    if n == 0:
        return pcm[:0]
    rms = np.sqrt(np.mean(pcm[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1) + 1e-20)
    db = 20.0 * np.log10(rms)
    loud = (db > db.max() - cfg.below_peak_db) & (db > cfg.floor_dbfs)
    if not loud.any():
        return pcm[:0]
    half = int(round(cfg.keep_silence_s / 2.0 * sr / hop))
    keep = np.zeros(n, bool)
    idx = np.flatnonzero(loud)
    for a, b in zip(np.r_[idx[0], idx[1:][np.diff(idx) > 1]], np.r_[idx[:-1][np.diff(idx) > 1], idx[-1]]):
        keep[max(0, a - half) : min(n, b + 1 + half)] = True  # each loud run with `half` frames around it
    frames = pcm[: n * hop].reshape(n, hop)[keep]
    return frames.reshape(-1)


# ----------------------------------------------------------------------------------------------- sources
@dataclasses.dataclass(frozen=True)
class Source:
    """A mirrored repository and the files taken from it.

    Attributes:
        repo: "owner/name" on GitHub (mirrored at `<mirrors>/<owner>+<name>/repo`).
        licence: licence of the audio (not of the code).
        select: (sorted list of blob paths) -> the paths taken, in order.
        speaker: path -> speaker id ("" when the source does not name one).
    """

    repo: str
    licence: str
    select: Callable[[list[str]], list[str]]
    speaker: Callable[[str], str]


AUDIO_EXT = (".wav", ".flac", ".ogg", ".mp3", ".opus")


def _under(
    prefix: str, ext: tuple[str, ...] = AUDIO_EXT, skip: tuple[str, ...] = ()
) -> Callable[[list[str]], list[str]]:
    return lambda paths: [
        p for p in paths if p.startswith(prefix) and p.lower().endswith(ext) and not any(s in p for s in skip)
    ]


def _per_speaker(
    base: Callable[[list[str]], list[str]], speaker: Callable[[str], str], per: int, total: int
) -> Callable[[list[str]], list[str]]:
    """At most `per` files per speaker (round robin over speakers, so every voice is in), `total` in all."""

    def pick(paths: list[str]) -> list[str]:
        by: dict[str, list[str]] = {}
        for p in base(paths):
            by.setdefault(speaker(p), []).append(p)
        out: list[str] = []
        for round_ in range(per):
            for spk in sorted(by):
                if round_ < len(by[spk]) and len(out) < total:
                    out.append(by[spk][round_])
        return sorted(out)

    return pick


def _every(base: Callable[[list[str]], list[str]], step: int) -> Callable[[list[str]], list[str]]:
    return lambda paths: base(paths)[::step]


def _speech_commands_speaker(p: str) -> str:
    """Speech Commands names files `<speaker hash>_nohash_<n>.wav`, and `<word>_<speaker hash>_nohash_<n>.wav` in
    `_unknown_/`: the speaker is the hash either way."""
    return "sc:" + Path(p).name.split("_nohash_")[0].split("_")[-1]


def _speech_commands_group(p: str) -> str:
    """The grouping the corpus's Speech Commands selection was built with: the file name before `_nohash_`, which
    in `_unknown_/` is word + speaker, so there a speaker can have more than 6 files. Kept as it is so that `build`
    reproduces the corpus the distilled encoder was trained on; speaker ids use `_speech_commands_speaker`."""
    return "sc:" + Path(p).name.split("_nohash_")[0]


def _librispeech_speaker(p: str) -> str:
    return "libri:" + Path(p).name.split("-")[0]


SOURCES: tuple[Source, ...] = (
    Source(
        "resemble-ai/Resemblyzer",
        "CC-BY-4.0 (LibriSpeech)",
        _under("audio_data/librispeech_"),
        _librispeech_speaker,
    ),
    Source(
        "sebastian-software/cuttledoc",
        "CC-BY-4.0 (FLEURS)",
        _under("packages/cuttledoc/fixtures/fleurs-"),
        lambda p: "",
    ),
    Source("coqui-ai/TTS", "public-domain (LJSpeech)", _under("tests/data/ljspeech/wavs/"), lambda p: "ljspeech"),
    Source(
        "pyannote/pyannote-audio",
        "CC-BY-4.0 (AMI)",
        lambda paths: (
            [p for p in _under("tests/data/")(paths) if "empty" not in p] + _under("src/pyannote/audio/sample/")(paths)
        ),
        lambda p: "",
    ),
    Source("auspicious3000/autovc", "CC-BY-4.0 (VCTK)", _under("wavs/p"), lambda p: "vctk:" + p.split("/")[1]),
    Source(
        "thegtagamer/PICO-tinyML-benchmark",
        "CC-BY-4.0 (Speech Commands v0.02)",
        _per_speaker(_under("MLTK_keyworkSpotting/dataset/", skip=("/_silence_/",)), _speech_commands_group, 6, 1200),
        _speech_commands_speaker,
    ),
    Source(
        "vinsis/speech-commands-recognition",
        "CC-BY-4.0 (Speech Commands v0.01)",
        _under("speech_commands_v0.01/"),
        _speech_commands_speaker,
    ),
    Source(
        "Jakobovski/free-spoken-digit-dataset",
        "CC-BY-SA-4.0 (FSDD)",
        _every(_under("recordings/"), 6),
        lambda p: "fsdd:" + Path(p).stem.split("_")[1],
    ),
    Source("Picovoice/wake-word-benchmark", "Apache-2.0", _every(_under("audio/"), 5), lambda p: ""),
)


# ----------------------------------------------------------------------------------------------- mirrors
def default_mirrors_dir() -> Path:
    """$MSYNC_MIRRORS, else /work/.mirror."""
    return Path(os.environ.get("MSYNC_MIRRORS", "/work/.mirror"))


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/msync/speech_corpus (or ~/.cache/msync/speech_corpus)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "msync" / "speech_corpus"


def mirror_path(mirrors_dir: str | Path, repo: str) -> Path:
    """The bare git directory of `repo` ("owner/name") under `mirrors_dir`.

    Raises:
        CorpusError: no such mirror (says which repository to mirror).
    """
    path = Path(mirrors_dir) / repo.replace("/", "+") / "repo"
    if not (path / "HEAD").is_file() and not (path / ".git").exists():
        raise CorpusError(
            f"no mirror of {repo} at {path}: mirror github.com/{repo} there (a bare clone) or set MSYNC_MIRRORS"
        )
    return path


def _git(repo_dir: Path, *args: str) -> bytes:
    proc = subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, check=False)
    if proc.returncode:
        raise CorpusError(f"git {' '.join(args)} in {repo_dir}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def read_blob(mirrors_dir: str | Path, entry: CorpusEntry) -> bytes:
    """The bytes of `entry.path` at `entry.commit` in its mirror. Raises CorpusError (missing mirror/commit/path)."""
    return _git(mirror_path(mirrors_dir, entry.source), "cat-file", "blob", f"{entry.commit}:{entry.path}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_bytes(data: bytes, name: str) -> np.ndarray:
    """Audio file bytes -> (N,) float32 mono at 16 kHz (`stream_engine.audio_io.load_audio`; `name` gives the
    suffix the decoder sees). Raises stream_engine.audio_io.AudioError when undecodable."""
    from stream_engine.audio_io import load_audio

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("clip" + Path(name).suffix.lower())
        path.write_bytes(data)
        return load_audio(path, SR)


# ----------------------------------------------------------------------------------------------- manifest
def read_manifest(path: str | Path = MANIFEST) -> list[CorpusEntry]:
    """Rows of a corpus manifest (tab-separated, `#` comment lines, one header row naming `COLUMNS`).

    Raises:
        CorpusError: missing file, wrong header, a row with the wrong number of fields or a bad number/hash.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"no corpus manifest at {path}")
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    if not rows or tuple(rows[0].split("\t")) != COLUMNS:
        raise CorpusError(f"{path}: the first row must be the header {' '.join(COLUMNS)}")
    out = []
    for i, line in enumerate(rows[1:], start=2):
        f = line.split("\t")
        if len(f) != len(COLUMNS):
            raise CorpusError(f"{path}: row {i} has {len(f)} fields, expected {len(COLUMNS)}")
        try:
            seconds = float(f[5])
        except ValueError:
            raise CorpusError(f"{path}: row {i}: seconds {f[5]!r} is not a number") from None
        if len(f[6]) != 64 or any(c not in "0123456789abcdef" for c in f[6]):
            raise CorpusError(f"{path}: row {i}: {f[6]!r} is not a sha256 hex digest")
        out.append(CorpusEntry(f[0], f[1], f[2], f[3], f[4], seconds, f[6]))
    return out


def summary(entries: list[CorpusEntry]) -> dict:
    """Hours, files, named speakers and files without a speaker id, overall and per source."""
    per: dict[str, dict] = {}
    for e in entries:
        s = per.setdefault(e.source, {"files": 0, "seconds": 0.0, "speakers": set(), "unnamed_files": 0})
        s["files"] += 1
        s["seconds"] += e.seconds
        if e.speaker:
            s["speakers"].add(e.speaker)
        else:
            s["unnamed_files"] += 1
    speakers = {e.speaker for e in entries if e.speaker}
    return {
        "files": len(entries),
        "hours": sum(e.seconds for e in entries) / 3600.0,
        "named_speakers": len(speakers),
        "unnamed_files": sum(1 for e in entries if not e.speaker),
        "sources": {
            k: {**v, "speakers": len(v["speakers"]), "minutes": round(v["seconds"] / 60.0, 1)} for k, v in per.items()
        },
    }


def write_manifest(entries: list[CorpusEntry], path: str | Path = MANIFEST) -> None:
    """The manifest with a header counting hours and speakers per source."""
    s = summary(entries)
    lines = [
        "# msync speech corpus for teacher distillation (training/data/speech_corpus.py). Audio is not committed:",
        "# `python -m training.data.speech_corpus materialise` rebuilds it from the mirrors and checks every sha256.",
        f"# total: {s['files']} files, {s['hours']:.2f} h after silence cropping, {s['named_speakers']} named "
        f"speakers (+ {s['unnamed_files']} files from sources without speaker ids)",
    ]
    for k, v in s["sources"].items():
        lines.append(f"# {k}: {v['files']} files, {v['minutes']} min, {v['speakers']} named speakers")
    lines.append("\t".join(COLUMNS))
    for e in entries:
        lines.append("\t".join([e.source, e.commit, e.path, e.licence, e.speaker, f"{e.seconds:.3f}", e.sha256]))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------- cache
def cache_path(cache_dir: str | Path, entry: CorpusEntry) -> Path:
    return Path(cache_dir) / entry.sha256[:2] / f"{entry.sha256}.c{CROP_VERSION}.npy"


def load_clip(entry: CorpusEntry, cache_dir: str | Path | None = None) -> np.ndarray:
    """A materialised clip: (N,) float32 16 kHz mono, silence-cropped. Raises CorpusError when not materialised."""
    path = cache_path(cache_dir or default_cache_dir(), entry)
    if not path.is_file():
        raise CorpusError(
            f"{entry.source}:{entry.path} is not materialised ({path}); run "
            "`python -m training.data.speech_corpus materialise`"
        )
    return np.load(path)


def materialise_entry(entry: CorpusEntry, mirrors_dir: str | Path, cache_dir: str | Path) -> np.ndarray:
    """Read, hash-check, decode, crop and cache one entry (cached entries are read back). Returns its PCM.

    Raises:
        CorpusError: missing mirror or path, or bytes whose sha256 is not the manifest's.
    """
    path = cache_path(cache_dir, entry)
    if path.is_file():
        return np.load(path)
    data = read_blob(mirrors_dir, entry)
    got = sha256_hex(data)
    if got != entry.sha256:
        raise CorpusError(
            f"{entry.source}@{entry.commit[:12]}:{entry.path}: sha256 {got[:16]}… differs from the manifest's "
            f"{entry.sha256[:16]}… (the mirror holds other bytes than the manifest was built from)"
        )
    pcm = crop_silence(decode_bytes(data, entry.path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, pcm.astype(np.float32))
    os.replace(tmp, path)
    return pcm


def materialise(
    entries: list[CorpusEntry], mirrors_dir: str | Path, cache_dir: str | Path, progress: bool = True
) -> list[str]:
    """Materialise every entry; returns the errors (one line per failed file; the others are all cached)."""
    from tqdm import tqdm

    errors = []
    for e in tqdm(entries, desc="speech corpus", unit="file", disable=not progress):
        try:
            materialise_entry(e, mirrors_dir, cache_dir)
        except CorpusError as exc:
            errors.append(str(exc))
    return errors


def build(mirrors_dir: str | Path, cache_dir: str | Path, progress: bool = True) -> tuple[list[CorpusEntry], list[str]]:
    """Scan every source's mirror at its HEAD commit, take the selected files, decode and crop them (filling the
    cache) and return the manifest rows plus the files skipped (undecodable or silent) with the reason."""
    from tqdm import tqdm

    from stream_engine.audio_io import AudioError

    entries, skipped = [], []
    for src in SOURCES:
        repo_dir = mirror_path(mirrors_dir, src.repo)
        commit = _git(repo_dir, "rev-parse", "HEAD").decode().strip()
        listing = _git(repo_dir, "ls-tree", "-r", "-z", "--name-only", commit).decode("utf-8").split("\0")
        paths = src.select(sorted(p for p in listing if p))
        for p in tqdm(paths, desc=src.repo, unit="file", disable=not progress):
            data = _git(repo_dir, "cat-file", "blob", f"{commit}:{p}")
            e = CorpusEntry(src.repo, commit, p, src.licence, src.speaker(p), 0.0, sha256_hex(data))
            try:
                pcm = crop_silence(decode_bytes(data, p))
            except AudioError as exc:
                skipped.append(f"{src.repo}:{p}: {exc}")
                continue
            if len(pcm) < SR // 4:
                skipped.append(f"{src.repo}:{p}: under 0.25 s of sound after cropping")
                continue
            e = dataclasses.replace(e, seconds=len(pcm) / SR)
            path = cache_path(cache_dir, e)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, pcm.astype(np.float32))
            entries.append(e)
    return entries, skipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("action", choices=("build", "materialise", "summary"))
    p.add_argument("--manifest", default=str(MANIFEST))
    p.add_argument("--mirrors", default=None, help="mirror root (default $MSYNC_MIRRORS or /work/.mirror)")
    p.add_argument("--cache", default=None, help="cache (default ~/.cache/msync/speech_corpus)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    mirrors = args.mirrors or default_mirrors_dir()
    cache = args.cache or default_cache_dir()
    try:
        if args.action == "build":
            entries, skipped = build(mirrors, cache, progress=not args.no_progress)
            write_manifest(entries, args.manifest)
            for line in skipped:
                print(f"skipped {line}", file=sys.stderr)
        else:
            entries = read_manifest(args.manifest)
            if args.action == "materialise":
                errors = materialise(entries, mirrors, cache, progress=not args.no_progress)
                counts: dict[str, int] = {}
                for line in errors:  # a missing mirror fails every file of its source: say it once
                    counts[line] = counts.get(line, 0) + 1
                for line, n in counts.items():
                    print(f"error: {line}" + (f" ({n} files)" if n > 1 else ""), file=sys.stderr)
                if errors:
                    print(f"{len(errors)} of {len(entries)} files failed", file=sys.stderr)
                    return 1
    except CorpusError as exc:
        print(f"speech corpus: {exc}", file=sys.stderr)
        return 1
    s = summary(entries)
    print(f"{s['files']} files, {s['hours']:.2f} h, {s['named_speakers']} named speakers, in {cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
