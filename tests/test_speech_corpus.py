"""The speech corpus manifest and its materialisation from git mirrors (tiny generated audio in a throwaway git
repository: no real mirror, no corpus, no network)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from training.data import speech_corpus as sc


def _entry(**kw) -> sc.CorpusEntry:
    base = dict(source="o/n", commit="c" * 40, path="a.wav", licence="CC-BY-4.0", speaker="s1", seconds=1.5)
    base.update(kw)
    return sc.CorpusEntry(sha256=kw.get("sha256", "0" * 64), **{k: v for k, v in base.items() if k != "sha256"})


def test_manifest_round_trip_and_header_counts(tmp_path):
    entries = [_entry(), _entry(path="b.wav", speaker=""), _entry(source="p/q", speaker="s2", seconds=3.0)]
    path = tmp_path / "corpus.tsv"
    sc.write_manifest(entries, path)
    assert sc.read_manifest(path) == entries
    text = path.read_text()
    assert "2 named speakers (+ 1 files" in text and "# o/n: 2 files" in text


@pytest.mark.parametrize(
    "body, message",
    [
        ("source\tcommit\n", "header"),
        ("\t".join(sc.COLUMNS) + "\na\tb\tc\n", "3 fields"),
        ("\t".join(sc.COLUMNS) + "\no/n\tc\tp\tl\ts\tx\t" + "0" * 64 + "\n", "not a number"),
        ("\t".join(sc.COLUMNS) + "\no/n\tc\tp\tl\ts\t1.0\tzz\n", "sha256"),
    ],
)
def test_bad_manifests_are_refused_with_the_reason(tmp_path, body, message):
    path = tmp_path / "bad.tsv"
    path.write_text(body)
    with pytest.raises(sc.CorpusError, match=message):
        sc.read_manifest(path)


def test_crop_silence_shortens_long_pauses_only():
    sr = sc.SR
    rng = np.random.default_rng(0)
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(sr) / sr)).astype(np.float32)
    quiet = (1e-5 * rng.standard_normal(2 * sr)).astype(np.float32)  # -100 dBFS: silent
    short = np.zeros(sr // 10, np.float32)  # 100 ms pause: kept
    pcm = np.concatenate([quiet, tone, short, tone, quiet, tone, quiet])
    out = sc.crop_silence(pcm)
    # 3 s of tone + the short pause + 0.3 s kept per long pause between tones + 0.15 s at each end
    expected = 3 * sr + sr // 10 + int(0.3 * sr) + int(0.3 * sr)
    assert abs(len(out) - expected) <= 3 * 320
    assert len(sc.crop_silence(np.zeros(sr, np.float32))) == 0


def _git(repo, *args):
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True
    )


@pytest.fixture
def mirror(tmp_path):
    """A mirror root holding owner/name with one 8 kHz WAV (a tone with silence around it) committed."""
    import soundfile

    repo = tmp_path / "mirrors" / "owner+name" / "repo"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q")
    sr = 8000
    t = np.arange(sr) / sr
    pcm = np.concatenate([np.zeros(sr), 0.3 * np.sin(2 * np.pi * 300 * t), np.zeros(sr)]).astype(np.float32)
    soundfile.write(repo / "clip.wav", pcm, sr)
    _git(repo, "add", "clip.wav")
    _git(repo, "commit", "-q", "-m", "audio")
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    data = (repo / "clip.wav").read_bytes()
    entry = sc.CorpusEntry("owner/name", commit.strip(), "clip.wav", "CC0", "spk", 1.3, sc.sha256_hex(data))
    return tmp_path / "mirrors", entry


def test_materialise_decodes_resamples_crops_and_caches(mirror, tmp_path):
    mirrors, entry = mirror
    cache = tmp_path / "cache"
    assert sc.materialise([entry], mirrors, cache, progress=False) == []
    pcm = sc.load_clip(entry, cache)
    assert pcm.dtype == np.float32
    # 1 s of tone at 16 kHz plus at most 0.15 s of kept silence each side
    assert 16000 <= len(pcm) <= 16000 + 2 * 2400 + 640
    assert np.abs(pcm).max() == pytest.approx(0.3, abs=0.02)


def test_changed_bytes_fail_the_hash_check(mirror, tmp_path):
    mirrors, entry = mirror
    bad = sc.CorpusEntry(**{**entry.__dict__, "sha256": "f" * 64})
    errors = sc.materialise([bad], mirrors, tmp_path / "cache", progress=False)
    assert len(errors) == 1 and "sha256" in errors[0] and "differs" in errors[0]
    with pytest.raises(sc.CorpusError, match="not materialised"):
        sc.load_clip(bad, tmp_path / "cache")


def test_missing_mirror_names_the_repository(tmp_path):
    entry = _entry(source="someone/absent")
    with pytest.raises(sc.CorpusError, match="no mirror of someone/absent"):
        sc.materialise_entry(entry, tmp_path, tmp_path / "cache")
    assert sc.main(["materialise", "--manifest", str(tmp_path / "none.tsv"), "--no-progress"]) == 1


def test_the_committed_manifest_parses_and_keeps_out_non_commercial_sources():
    entries = sc.read_manifest()
    assert len(entries) > 1000
    assert not any("NC" in e.licence or "Ravdess" in e.source or "Precise" in e.source for e in entries)
    held_out = ("Talking-Face_PC-AVS", "spectre", "talkingface-codebase")
    assert not any(h in e.source for e in entries for h in held_out)
    assert sc.summary(entries)["hours"] > 1.5


def test_speech_commands_speaker_is_the_hash_in_every_folder():
    """`_unknown_/` files carry the word before the speaker hash; the speaker id is the hash either way (a word
    prefix counted one voice as several)."""
    from training.data.speech_corpus import _speech_commands_speaker

    assert _speech_commands_speaker("dataset/yes/0c540988_nohash_0.wav") == "sc:0c540988"
    assert _speech_commands_speaker("dataset/_unknown_/backward_0c540988_nohash_1.wav") == "sc:0c540988"
