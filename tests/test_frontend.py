"""The causal audio front end: agreement with librosa, chunking invariance, torch == numpy, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from stream_engine.audio_io import AudioError, load_audio
from stream_engine.features import CausalMfcc, FrontEndConfig, mfcc

CFG = FrontEndConfig()


def librosa_mfcc(y: np.ndarray) -> np.ndarray:
    """librosa with the same parameters: the same causal padding, no centring, no top_db, same floor."""
    import librosa

    padded = np.concatenate([np.zeros(CFG.context_samples), y.astype(np.float64)])
    power = librosa.feature.melspectrogram(
        y=padded,
        sr=CFG.sample_rate_hz,
        n_fft=CFG.n_fft,
        win_length=CFG.win_length,
        hop_length=CFG.hop_length,
        n_mels=CFG.n_mels,
        fmin=CFG.fmin_hz,
        fmax=CFG.fmax_hz,
        center=False,
        power=2.0,
        window="hann",
    )
    db = librosa.power_to_db(power, ref=1.0, amin=CFG.log_floor, top_db=None)
    return librosa.feature.mfcc(S=db, n_mfcc=CFG.n_mfcc).T


def test_numpy_reference_matches_librosa_on_real_speech(speech):
    """The numpy reference equals librosa's MFCC (same parameters) within 1e-3 on real speech."""
    ours = mfcc(speech)
    ref = librosa_mfcc(speech)
    assert ours.shape == ref.shape == (len(speech) // CFG.hop_length, CFG.n_mfcc)
    assert np.abs(ours - ref).max() <= 1e-3


def test_torch_front_end_matches_librosa_and_numpy(speech):
    """The matrix-product torch module (the one exported in the step) agrees with librosa within 1e-3."""
    import torch

    from training.frontend import TorchMfcc, with_silence_context

    ours = TorchMfcc(CFG)(with_silence_context(torch.from_numpy(speech)[None], CFG))[0].double().numpy()
    assert np.abs(ours - librosa_mfcc(speech)).max() <= 1e-3
    assert np.abs(ours - mfcc(speech)).max() <= 1e-3


@pytest.mark.parametrize("chunk_ms", [10, 20, 37, 40])
def test_chunked_features_equal_one_shot(speech, chunk_ms):
    """Pushing audio in chunks of any size gives the one-shot features (no global operation anywhere)."""
    stream = CausalMfcc(CFG)
    step = CFG.sample_rate_hz * chunk_ms // 1000
    pieces = [stream.push(speech[i : i + step]) for i in range(0, len(speech), step)]
    chunked = np.concatenate(pieces)
    one_shot = mfcc(speech)
    assert chunked.shape == one_shot.shape
    assert np.abs(chunked - one_shot).max() <= 1e-5


def test_torch_step_chunks_equal_one_shot(speech):
    """The step form (352 carried + 640 new samples -> 4 frames) reproduces the one-shot torch features."""
    import torch

    from training.frontend import TorchMfcc, with_silence_context

    module = TorchMfcc(CFG)
    audio = torch.from_numpy(speech[: 640 * 50])
    one_shot = module(with_silence_context(audio[None], CFG))[0]
    carry = torch.zeros(1, CFG.context_samples)
    steps = []
    for k in range(50):
        buf = torch.cat([carry, audio[None, 640 * k : 640 * (k + 1)]], dim=1)
        steps.append(module(buf)[0])
        carry = buf[:, -CFG.context_samples :]
    stepped = torch.cat(steps)
    assert stepped.shape == one_shot.shape == (200, CFG.n_mfcc)
    assert torch.allclose(stepped, one_shot, atol=1e-3, rtol=1e-5)


def test_frames_are_causal(speech):
    """Changing audio after sample 160*(j+1) leaves mfcc frames 0..j unchanged."""
    j = 100
    altered = speech.copy()
    altered[CFG.hop_length * (j + 1) :] = 0.5
    a, b = mfcc(speech), mfcc(altered)
    assert np.array_equal(a[: j + 1], b[: j + 1])
    assert not np.allclose(a[j + 1], b[j + 1])


def test_silence_hits_the_fixed_floor():
    """Digital silence maps to the fixed log floor, whatever else is in the signal."""
    out = mfcc(np.zeros(1600))
    floor_db = 10 * np.log10(CFG.log_floor)
    assert np.allclose(out[:, 0], floor_db * np.sqrt(CFG.n_mels), atol=1e-6)
    assert np.allclose(out[:, 1:], 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "bad, message",
    [(np.zeros(0), "empty"), (np.array([0.0, np.nan, 0.1]), "NaN"), (np.array([0.0, np.inf]), "NaN or infinite")],
)
def test_bad_audio_is_refused(bad, message):
    """Empty or non-finite audio raises a clear error instead of producing garbage features."""
    with pytest.raises(ValueError, match=message):
        mfcc(bad)


def test_stream_refuses_nan_and_keeps_state(speech):
    """A NaN chunk raises and leaves the stream usable: the next good chunk continues where it was."""
    stream = CausalMfcc(CFG)
    first = stream.push(speech[:3200])
    with pytest.raises(ValueError):
        stream.push(np.array([np.nan] * 160))
    rest = stream.push(speech[3200:6400])
    assert np.abs(np.concatenate([first, rest]) - mfcc(speech[:6400])).max() <= 1e-5


def test_load_audio_resamples_and_downmixes(tmp_path):
    """A 44.1 kHz stereo WAV loads as 16 kHz mono with its tone at the right frequency."""
    import soundfile

    rate = 44100
    t = np.arange(rate) / rate
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)], axis=1)
    path = tmp_path / "tone.wav"
    soundfile.write(path, stereo, rate)
    y = load_audio(path, 16000)
    assert abs(len(y) - 16000) <= 1
    peak_hz = np.argmax(np.abs(np.fft.rfft(y))) * 16000 / len(y)
    assert abs(peak_hz - 440) < 2
    assert 0.45 < np.abs(y).max() < 0.55


def test_load_audio_from_video_container(shared_data):
    """Audio inside a video container (GRID .mpg) decodes through PyAV and matches the stored 16 kHz track."""
    pytest.importorskip("av")
    cid = "lipnet__evaluation__samples__GRID__bbaf2n.mpg"
    from_video = load_audio(shared_data / "raw" / cid)
    stored = load_audio(shared_data / "clips" / f"{cid}.flac")
    assert abs(len(from_video) - len(stored)) <= 640
    n = min(len(from_video), len(stored))
    corr = np.corrcoef(from_video[:n], stored[:n])[0, 1]
    assert corr > 0.9


@pytest.mark.parametrize("content", [b"", b"this is not audio at all" * 10])
def test_unreadable_audio_file_gives_clear_error(tmp_path, content):
    """Empty or corrupt files raise AudioError naming the file."""
    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match="broken.wav"):
        load_audio(path)


def test_missing_audio_file(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "nope.flac")
