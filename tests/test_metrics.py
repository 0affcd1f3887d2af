"""Metrics: SyncNet-style multi-scale AV offset/confidence (offset recovery with a known answer, sign, scaling
across levels, short inputs), LMD and motion statistics."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from training.metrics.motion import CROP_PIXELS, head_motion_energy, lmd, lmd_stats, motion_stats, velocity_acceleration
from training.metrics.sync import av_sync, offset_confidence, shift_distances
from training.models.syncer import SyncerConfig, SyncerPyramid

torch.set_num_threads(1)

TINY = SyncerConfig(
    embed_dim=16, audio_widths=(16,), audio_depths=(1,), landmark_widths=(16,), landmark_depths=(1,), loss="syncnet"
)


def _zscore(v: torch.Tensor) -> torch.Tensor:
    v = v - v.mean(dim=-1, keepdim=True)
    return v / (v.std(dim=-1, keepdim=True) + 1e-6)


class EnvelopePyramid:
    """A hand-built 'syncer pyramid' whose embeddings are deterministic feature maps with a known alignment:
    landmarks -> z-scored mouth opening (p66.y − p62.y) of the 5 samples; audio -> z-scored mean of MFCC
    coefficient 0 over each group of 4 audio samples (one per landmark sample). When the opening equals the
    audio envelope, aligned windows embed identically."""

    cfg = types.SimpleNamespace(num_levels=4, pyramid_kernel=7, landmark_frames=5, audio_frames=20)

    def embed(self, lvl, landmarks, mfcc):
        opening = landmarks[..., 66, 1] - landmarks[..., 62, 1]  # (N, 5)
        energy = mfcc[..., 0].reshape(len(mfcc), 5, 4).mean(-1)  # (N, 5)
        return _zscore(energy), _zscore(opening)


def _smoothed_noise(rng: np.random.Generator, num_frames: int, sigma: float) -> np.ndarray:
    half = int(4 * sigma)
    g = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    x = np.convolve(rng.standard_normal(num_frames + 2 * half), g / g.sum(), mode="valid")
    return x / x.std()


def _envelope(num_frames: int, seed: int = 0) -> np.ndarray:
    """A positive random envelope (num_frames,) with structure at every pyramid scale: Gaussian-smoothed white
    noise of sigma 1.5 frames (syllables) plus sigma 12 frames (phrases)."""
    rng = np.random.default_rng(seed)
    return 4.0 + _smoothed_noise(rng, num_frames, 1.5) + _smoothed_noise(rng, num_frames, 12.0)


def _pair(shift: int, num_frames: int = 320, pad: int = 20):
    """Landmarks whose mouth opening is e[t], and MFCC whose coefficient 0 is e[t + shift] (4 samples per frame),
    i.e. the audio track is *advanced* by `shift` frames: the sound of frame t arrives at t − shift."""
    e = _envelope(num_frames + 2 * pad)
    lm = np.full((num_frames, 68, 2), 0.5, dtype=np.float32)
    lm[:, 66, 1] = 0.5 + 0.02 * e[pad : pad + num_frames]
    mf = np.zeros((4 * num_frames, 26), dtype=np.float32)
    mf[:, 0] = np.repeat(e[pad + shift : pad + shift + num_frames], 4)
    return lm, mf


def test_shift_distances_matches_brute_force():
    rng = np.random.default_rng(1)
    e_x, e_a = rng.standard_normal((9, 4)), rng.standard_normal((9, 4))
    vshift = 3
    mdist = shift_distances(e_x, e_a, vshift)
    for j in range(2 * vshift + 1):
        d = [np.linalg.norm(e_x[i] - (e_a[i + j - vshift] if 0 <= i + j - vshift < 9 else 0.0)) for i in range(9)]
        assert mdist[j] == pytest.approx(np.mean(d))
    off, conf, lo = offset_confidence(np.array([3.0, 1.0, 2.0, 2.5, 4.0]), 2)
    assert (off, conf, lo) == (1, 1.5, 1.0)


@pytest.mark.parametrize("shift", [0, 4, -4, 8])
def test_offset_recovered_with_sign_and_scaled_per_level(shift):
    """Audio advanced by k frames (audio leads) -> AV-Off = +k at level 0, k / 2^l at level l; delayed -> −k."""
    pyr = EnvelopePyramid()
    res = av_sync(pyr, *_pair(shift), levels=[0, 1, 2, 3], vshift=15)
    for r in res:
        expected = shift / 2 ** r["level"]
        if expected == int(expected):
            assert r["offset_frames"] == int(expected), (r["level"], r["offset_frames"], r["mdist"])
        assert r["reason"] is None and r["confidence"] > 0
    assert res[0]["min_dist"] < 0.5  # aligned windows embed (nearly) identically


def test_static_face_and_shuffled_audio_get_lower_confidence():
    pyr = EnvelopePyramid()
    lm, mf = _pair(0)
    aligned = av_sync(pyr, lm, mf, levels=[0, 1])
    static = av_sync(pyr, np.repeat(lm[:1], len(lm), axis=0), mf, levels=[0, 1])
    other = _pair(0, pad=60)[1]  # another stretch of the same random process: unrelated audio
    shuffled = av_sync(pyr, lm, other, levels=[0, 1])
    for a, s, o in zip(aligned, static, shuffled):
        assert s["confidence"] < a["confidence"] and o["confidence"] < a["confidence"]


def test_real_pyramid_shapes_and_short_sequences():
    """A randomly initialised small SyncerPyramid runs at every level; levels too coarse for a short sequence
    are reported with a reason instead of crashing."""
    torch.manual_seed(0)
    pyr = SyncerPyramid(TINY).eval()
    rng = np.random.default_rng(0)
    lm = (0.5 + 0.01 * rng.standard_normal((30, 68, 2))).astype(np.float32)
    mf = rng.standard_normal((120, 26)).astype(np.float32)
    res = av_sync(pyr, lm, mf, vshift=5)
    assert [r["level"] for r in res] == [0, 1, 2, 3]
    # 30 frames / 120 mfcc -> 30/120, 15/60, 8/30, 4/15 samples: windows 26, 11, 3 (audio-limited), none.
    assert [r["num_windows"] for r in res] == [26, 11, 3, 0]
    for r in res[:3]:
        assert r["mdist"].shape == (11,) and -5 <= r["offset_frames"] <= 5 and r["confidence"] >= 0
    assert res[3]["offset_frames"] is None and np.isnan(res[3]["confidence"]) and "too short" in res[3]["reason"]
    # Shorter audio than landmarks limits the windows instead of failing.
    assert av_sync(pyr, lm, mf[:40], levels=[0])[0]["num_windows"] == 6
    assert av_sync(pyr, lm[:3], mf[:12], levels=[0])[0]["reason"] is not None


def test_lmd_identity_and_shift():
    rng = np.random.default_rng(0)
    gt = rng.random((20, 68, 2)).astype(np.float32)
    assert lmd(gt, gt) == 0.0
    moved = gt + np.array([0.03, -0.04], dtype=np.float32)  # a 0.05 rigid translation
    s = lmd_stats(moved, gt)
    assert s["f_lmd"] == pytest.approx(0.05, abs=1e-6) and s["m_lmd"] == pytest.approx(0.05, abs=1e-6)
    assert s["f_lmd_px"] == pytest.approx(0.05 * CROP_PIXELS, abs=1e-4)
    mouth_only = gt.copy()
    mouth_only[:, 48:68, 0] += 0.1
    s = lmd_stats(mouth_only, gt)
    assert s["m_lmd"] == pytest.approx(0.1, abs=1e-6) and s["f_lmd"] == pytest.approx(0.1 * 20 / 68, abs=1e-6)


def test_motion_statistics():
    t = np.arange(40, dtype=np.float64)
    base = np.random.default_rng(0).random((68, 2))
    still = np.repeat(base[None], 40, axis=0)
    assert velocity_acceleration(still) == {"velocity": 0.0, "acceleration": 0.0}
    assert head_motion_energy(still) == pytest.approx([0.0] * 4, abs=1e-20)
    moving = still + 0.01 * t[:, None, None] * np.array([1.0, 0.0])  # uniform drift, 0.01 per frame
    va = velocity_acceleration(moving)
    assert va["velocity"] == pytest.approx(0.01) and va["acceleration"] == pytest.approx(0.0, abs=1e-12)
    energy = head_motion_energy(moving, num_levels=3, kernel=7)
    assert energy[0] == pytest.approx(1e-4)
    assert energy[2] > energy[1] > energy[0]  # per level-l sample the drift covers 2^l frames
    stats = motion_stats(moving)
    assert stats["mouth_open_std"] == pytest.approx(0.0) and "head_energy_l3" in stats


def test_valid_padding_ignores_norms_and_short_overlaps():
    """'valid' averages real pairs only: scaling both embeddings' norms far from their mutual distances moves the
    zero-padded minimum to shift 0 but leaves the valid one where the true alignment is."""
    rng = np.random.default_rng(3)
    e = rng.standard_normal((40, 8))
    e_x, e_a = e[3:33] + 50.0, e[0:30] + 50.0  # large common offset: big norms; landmark i matches audio i + 3
    zero = shift_distances(e_x, e_a, 10, "zero")
    valid = shift_distances(e_x, e_a, 10, "valid")
    assert np.argmin(zero) == 10  # the padding artifact: V-shape around shift 0
    assert offset_confidence(valid, 10)[0] == -3 and valid[10 + 3] == pytest.approx(0.0)
    short = shift_distances(e_x[:6], e_a[:6], 10, "valid")
    assert np.isfinite(short).sum() == 7  # |k| <= 3: at least half of the 6 windows overlap
    with pytest.raises(ValueError):
        shift_distances(e_x, e_a, 3, "reflect")
