"""Model 0.3's training pieces: non-speech sounds and mixed windows, and the rest/articulation/head terms."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import run_train, tiny_train_settings

from training.data.nonspeech import ENVELOPE_OCTAVES_HZ, LAYOUTS, RestMixConfig, mix_window, shaped_envelope, sound
from training.face_losses import articulation_terms, head_terms, lip_gap, rest_terms
from training.metrics import viewer as vm

REPO = Path(__file__).resolve().parents[1]
SPF, CTX = 640, 352


def _dbfs(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)) + 1e-12)


def test_sounds_have_their_kind_and_level():
    rng = np.random.default_rng(0)
    n = 16000 * 4
    assert not sound("silence", n, rng).any()
    for _ in range(5):
        assert -61 < _dbfs(sound("noise", n, rng)) < -35
        assert -56 < _dbfs(sound("hum", n, rng)) < -31
        assert -41 < _dbfs(sound("tones", n, rng)) < -21
        b = sound("breathing", n, rng)
        assert _dbfs(b) < -40 and (np.abs(b) < 1e-9).mean() > 0.2  # bursts with quiet between them
    hum = sound("hum", n, np.random.default_rng(3))
    spec = np.abs(np.fft.rfft(hum))
    assert np.fft.rfftfreq(n, 1 / 16000)[spec.argmax()] in (50.0, 60.0)
    with pytest.raises(ValueError, match="unknown"):
        sound("speech", n, rng)


def test_shaped_noise_follows_its_random_envelope():
    n = 16000 * 8
    for seed in range(4):
        gain = shaped_envelope(np.random.default_rng(seed))
        # the same draws in the same order as `sound`: the white noise, the colour switch, the share, the envelope
        rng = np.random.default_rng(100 + seed)
        x = sound("noise", n, rng, shaped_noise_share=1.0)
        assert -61 < _dbfs(x) < -35
        spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
        freqs = np.fft.rfftfreq(n, 1 / 16000)
        # band powers between octave points 125 Hz..4 kHz track the envelope drawn from the same generator state
        rng = np.random.default_rng(100 + seed)
        rng.standard_normal(n), rng.uniform(), rng.uniform()
        gain = shaped_envelope(rng)
        lo_hi = list(zip(ENVELOPE_OCTAVES_HZ[2:7], ENVELOPE_OCTAVES_HZ[3:8]))
        measured = np.array([10 * np.log10(spec[(freqs >= lo) & (freqs < hi)].mean()) for lo, hi in lo_hi])
        expected = np.array(
            [10 * np.log10(np.mean(gain(freqs[(freqs >= lo) & (freqs < hi)]) ** 2)) for lo, hi in lo_hi]
        )
        np.testing.assert_allclose(measured - measured.mean(), expected - expected.mean(), atol=1.0)


def test_shaped_noise_share_zero_draws_the_old_sounds():
    a = sound("noise", 16000, np.random.default_rng(5))
    b = sound("noise", 16000, np.random.default_rng(5), shaped_noise_share=0.0)
    np.testing.assert_array_equal(a, b)
    # a share of 1 changes the colour but keeps the kind's level range
    c = sound("noise", 16000, np.random.default_rng(5), shaped_noise_share=1.0)
    assert not np.allclose(a, c) and -61 < _dbfs(c) < -35


def test_fresh_start_windows_begin_a_stream_inside_the_sound():
    """A fresh-start "pure" window is silent before target frame 0 and the sampler marks its warm-up invalid;
    the other windows of the batch keep their valid warm-up."""
    from tests.test_prefetch import _segments
    from training.data.generator_batches import WindowSampler
    from training.frontend import FrontEndConfig

    t, w, la = 40, 10, 2
    audio, lm = _window(t, w, la)
    cfg = RestMixConfig(fraction=1.0, layout_weights=(0, 0, 1), kind_weights=(0, 1, 0, 0, 0), fresh_start_prob=1.0)
    m = _mix(audio, lm, w, la, cfg, seed=0)
    assert m.fresh_start and m.rest.all() and not m.speech.any()
    assert not m.audio[: CTX + SPF * w].any() and m.audio[CTX + SPF * w :].std() > 0
    fe = FrontEndConfig()
    sampler = WindowSampler(_segments(), num_frames=t, lookahead_frames=la, warmup_frames=w, frontend=fe)
    b = sampler.sample(
        4, np.random.default_rng(1), None, RestMixConfig(fraction=0.5, layout_weights=(0, 0, 1), fresh_start_prob=1.0)
    )
    assert not b.valid[2:, :w].any() and b.valid[2:, w:].all()  # the two mixed windows start a stream
    assert b.valid[:2, w:].all() and b.mixed.tolist() == [False, False, True, True]
    # off by default: the same draws as before
    old = sampler.sample(4, np.random.default_rng(1), None, RestMixConfig(fraction=0.5, layout_weights=(0, 0, 1)))
    assert old.valid[2:].all()


def test_stream_start_windows_begin_with_their_segment():
    """`stream_start_prob` = 1: every window's first target frame is its segment's first frame, so its whole
    warm-up lies before the stream (invalid, silent) and its speech starts with the stream; 0 draws the old
    windows from the same random stream; out-of-range shares are refused when the config is made."""
    from tests.test_prefetch import _segments
    from training.data.generator_batches import WindowSampler
    from training.frontend import FrontEndConfig
    from training.train_generator import TrainGeneratorConfig

    t, w, la = 40, 10, 2
    sampler = WindowSampler(_segments(), num_frames=t, lookahead_frames=la, warmup_frames=w, frontend=FrontEndConfig())
    b = sampler.sample(6, np.random.default_rng(2), stream_start_prob=1.0)
    assert (b.start_frame == 1).all()
    assert not b.valid[:, : w - 1].any() and b.valid[:, w - 1 :].all()  # start 1: one valid warm-up frame (frame 0)
    assert not b.audio[:, : CTX + SPF * (w - 1)].any()  # silence before the stream
    old = sampler.sample(6, np.random.default_rng(2))
    same = sampler.sample(6, np.random.default_rng(2), stream_start_prob=0.0)
    np.testing.assert_array_equal(old.start_frame, same.start_frame)
    np.testing.assert_array_equal(old.audio, same.audio)
    assert (old.start_frame > 1).any()
    with pytest.raises(ValueError, match="stream_start_prob"):
        TrainGeneratorConfig(stream_start_prob=1.5)


def _mix(audio, lm, w, la, cfg, seed, mean_face=None):
    return mix_window(
        audio,
        lm,
        warmup_frames=w,
        lookahead_frames=la,
        context_samples=CTX,
        samples_per_frame=SPF,
        rng=np.random.default_rng(seed),
        cfg=cfg,
        mean_face=mean_face,
    )


def _window(t=40, w=10, la=2, seed=0):
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(CTX + SPF * (w + t + la))).astype(np.float32)
    lm = np.repeat(np.arange(t + 1, dtype=np.float32)[:, None, None], 68, 1).repeat(2, 2)
    return audio, lm


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mixed_windows_keep_alignment_and_masks(layout):
    """The sound replaces exactly the masked frames; inserted pauses shift the resumed speech and its targets."""
    t, w, la = 40, 10, 2
    audio, lm = _window(t, w, la)
    weights = tuple(1.0 if x == layout else 0.0 for x in LAYOUTS)
    cfg = RestMixConfig(fraction=1.0, layout_weights=weights, kind_weights=(1, 0, 0, 0, 0), grace_frames=3)
    mean_face = np.full((68, 2), -1.0, np.float32)
    for seed in range(10):
        m = _mix(audio, lm, w, la, cfg, seed, mean_face)
        assert m.kind == "silence" and m.layout == layout and m.audio.shape == audio.shape
        assert not (m.speech & m.rest).any()
        frames = m.audio[CTX:].reshape(-1, SPF)[w : w + t]  # the target frames' own samples
        silent = ~frames.any(axis=1)
        if layout == "pure":
            assert m.rest.all() and not m.speech.any() and not m.audio.any()
            assert (m.landmarks[0] == lm[0]).all() or (m.landmarks[0] == -1).all()
            continue
        s = int(np.argmin(m.speech))  # first non-speech frame
        assert s >= cfg.min_speech_frames and silent[s:].sum() >= cfg.min_rest_frames - 0
        assert not silent[:s].any() and silent[s : s + cfg.min_rest_frames].all()
        assert not m.rest[: s + 3].any() and m.rest[s + 3]  # 3 grace frames
        np.testing.assert_array_equal(m.landmarks[: s + 1], lm[: s + 1])
        if layout == "inserted" and m.speech[s:].any():
            e = s + int(np.argmax(m.speech[s:]))
            assert silent[s:e].all() and not silent[e:].any()
            np.testing.assert_array_equal(m.landmarks[1 + e :], lm[1 + s : 1 + s + t - e])  # resumed targets
            # the resumed speech is the speech that was cut off at s
            np.testing.assert_array_equal(m.audio[CTX + SPF * (w + e) :][:SPF], audio[CTX + SPF * (w + s) :][:SPF])
            assert not m.rest[e - la : e].any()  # look-ahead already hears the speech
        else:
            assert silent[s:].all() and m.rest[s + 3 :].all()


def test_mixing_rejects_short_windows():
    audio, lm = _window(t=20)
    cfg = RestMixConfig(fraction=1.0, layout_weights=(1, 0, 0))
    with pytest.raises(ValueError, match="cannot hold"):
        mix_window(
            audio,
            lm,
            warmup_frames=10,
            lookahead_frames=2,
            context_samples=CTX,
            samples_per_frame=SPF,
            rng=np.random.default_rng(0),
            cfg=cfg,
        )
    with pytest.raises(ValueError, match="fraction"):
        RestMixConfig(fraction=1.5)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"kind_weights": (0, 0, 0, 0, 0)}, "at least one weight"),
        ({"layout_weights": (0, 0, 0)}, "at least one weight"),
        ({"grace_frames": -3}, "grace_frames"),
        ({"min_rest_frames": 0}, "min_rest_frames"),
        ({"under_speech_prob": 2.0}, "under_speech_prob"),
        ({"mean_face_prob": -1.0}, "mean_face_prob"),
        ({"shaped_noise_share": 1.5}, "shaped_noise_share"),
    ],
)
def test_bad_mixing_settings_are_refused_when_the_config_is_made(bad, match):
    with pytest.raises(ValueError, match=match):
        RestMixConfig(fraction=0.25, **bad)


def test_bad_training_settings_for_mixing_are_refused_when_the_config_is_made():
    from training.train_generator import TrainGeneratorConfig

    with pytest.raises(ValueError, match="does not fit in seq_len"):
        TrainGeneratorConfig(seq_len=40, batch_size=8, rest=RestMixConfig(fraction=0.25, min_speech_frames=500))
    with pytest.raises(ValueError, match="rest_gap_weight"):
        TrainGeneratorConfig(batch_size=8, rest_gap_weight=-5.0)


def _face(gap_iod: float, shift=(0.0, 0.0)) -> np.ndarray:
    """A toy face: eye corners 0.3 apart, inner lips opened by gap_iod * IOD."""
    x = np.zeros((68, 2))
    x[:, 0] = np.linspace(0.3, 0.7, 68)
    x[:, 1] = 0.5
    x[36], x[45] = (0.35, 0.4), (0.65, 0.4)
    for a, b in ((61, 67), (62, 66), (63, 65)):
        x[b, 0] = x[a, 0]
        x[a, 1], x[b, 1] = 0.7, 0.7 + gap_iod * 0.3
    return (x + np.asarray(shift)).astype(np.float32)


def test_lip_gap_matches_the_evaluation_measure():
    seq = np.stack([_face(g) for g in (0.0, 0.02, 0.1)])
    seq[1, 48:] += np.random.default_rng(0).normal(0, 0.01, (20, 2))
    np.testing.assert_allclose(lip_gap(torch.from_numpy(seq)).numpy(), vm.lip_gap(seq), rtol=1e-5)


def test_rest_terms_score_open_moving_or_displaced_faces():
    closed = torch.from_numpy(np.stack([_face(0.01)] * 6))[None]
    ref = closed[:, 0]
    mask = torch.ones(1, 6, dtype=torch.bool)
    zero = rest_terms(closed, mask, ref)
    assert all(float(v) == pytest.approx(0.0, abs=1e-9) for v in zero.values())
    opened = torch.from_numpy(np.stack([_face(0.08)] * 6))[None]
    assert float(rest_terms(opened, mask, ref)["rest_gap"]) == pytest.approx(0.06, abs=1e-5)
    assert float(rest_terms(opened, torch.zeros_like(mask), ref)["rest_gap"]) == 0.0  # no rest frames
    moving = torch.from_numpy(np.stack([_face(g) for g in (0.0, 0.02, 0.0, 0.02, 0.0, 0.02)]))[None]
    assert float(rest_terms(moving, mask, ref)["rest_still"]) > 0
    shifted = torch.from_numpy(np.stack([_face(0.01, (0.03, 0.0))] * 6))[None]
    assert float(rest_terms(shifted, mask, ref)["rest_pose"]) == pytest.approx((0.03 / 0.3) ** 2, rel=1e-4)
    opened.requires_grad_(True)
    rest_terms(opened, mask, ref)["rest_gap"].backward()
    assert opened.grad is not None and opened.grad[..., 61:68, 1].abs().sum() > 0


def test_articulation_terms_reward_amplitude_and_shape():
    gaps = [0.02, 0.1, 0.03, 0.12, 0.02, 0.09] * 3
    real = torch.from_numpy(np.stack([_face(g) for g in gaps]))[None]
    speech = torch.ones(1, len(gaps), dtype=torch.bool)
    same = articulation_terms(real, real, speech)
    assert all(float(v) == pytest.approx(0.0, abs=1e-6) for v in same.values())
    half = torch.from_numpy(np.stack([_face(0.5 * g) for g in gaps]))[None]
    t = articulation_terms(half, real, speech)
    assert float(t["mouth_amplitude"]) == pytest.approx(np.log(2.0), rel=1e-2)
    assert float(t["mouth_gap"]) == pytest.approx(0.5 * np.mean(gaps), rel=1e-3)
    assert float(t["mouth_shape"]) > 0
    assert float(t["mouth_corr"]) == pytest.approx(0.0, abs=1e-5)  # half the amplitude, same timing: r = 1
    assert float(t["mouth_under"]) == pytest.approx(np.log(2.0), rel=1e-2)
    double = torch.from_numpy(np.stack([_face(2 * g) for g in gaps]))[None]
    over = articulation_terms(double, real, speech)  # twice the amplitude: the one-sided term does not count it
    assert float(over["mouth_amplitude"]) == pytest.approx(np.log(2.0), rel=1e-2) and float(over["mouth_under"]) == 0
    short = torch.zeros_like(speech)
    short[0, :5] = True  # too few speech frames for an amplitude or a correlation: left out
    assert float(articulation_terms(half, real, short)["mouth_amplitude"]) == 0.0
    assert float(articulation_terms(half, real, short)["mouth_corr"]) == 0.0


def test_mouth_corr_scores_timing_at_lag_0():
    """1 - r of the inner-lip gap: 0 in time, about 1 - autocorrelation for a mouth one frame early, 2 inverted;
    its gradient moves the generated gap towards ground truth's timing."""
    rng = np.random.default_rng(0)
    gaps = 0.06 + 0.04 * np.sin(np.arange(24) * 0.9) + rng.normal(0, 0.005, 24)
    real = torch.from_numpy(np.stack([_face(g) for g in gaps]))[None]
    speech = torch.ones(1, len(gaps), dtype=torch.bool)
    early = torch.from_numpy(np.stack([_face(g) for g in np.r_[gaps[1:], gaps[-1]]]))[None]
    inverted = torch.from_numpy(np.stack([_face(0.12 - g) for g in gaps]))[None]
    r1 = np.corrcoef(gaps[1:], gaps[:-1])[0, 1]
    assert float(articulation_terms(early, real, speech)["mouth_corr"]) == pytest.approx(1 - r1, abs=0.08)
    assert float(articulation_terms(inverted, real, speech)["mouth_corr"]) == pytest.approx(2.0, abs=1e-3)
    still = torch.from_numpy(np.stack([_face(0.05)] * len(gaps)))[None]  # constant ground truth: row left out
    assert float(articulation_terms(real, still, speech)["mouth_corr"]) == 0.0
    moved = early.clone().requires_grad_(True)
    articulation_terms(moved, real, speech)["mouth_corr"].backward()
    step = moved.detach() - 1e-3 * moved.grad / moved.grad.abs().max()  # a small step down the gradient
    assert float(articulation_terms(step, real, speech)["mouth_corr"]) < float(
        articulation_terms(early, real, speech)["mouth_corr"]
    )


def test_head_terms_compare_motion_energy_and_mean_pose():
    rng = np.random.default_rng(0)
    path = np.cumsum(rng.normal(0, 0.004, (40, 2)), axis=0)
    real = torch.from_numpy(np.stack([_face(0.02, p) for p in path]))[None]
    still = torch.from_numpy(np.stack([_face(0.02, path.mean(0))] * 40))[None]
    rows = torch.ones(1, dtype=torch.bool)
    same = head_terms(real, real, rows)
    assert float(same["head_energy"]) == pytest.approx(0.0, abs=1e-5) and float(same["head_mean"]) < 1e-12
    t = head_terms(still, real, rows)
    assert float(t["head_energy"]) > 5  # |log| of a tiny energy ratio
    assert float(t["head_mean"]) < 1e-8  # same mean position
    tilted = real + torch.tensor([0.0, 0.03])
    assert float(head_terms(tilted, real, rows)["head_mean"]) == pytest.approx(2 * (0.03 / 0.3) ** 2 / 2, rel=1e-3)
    assert float(head_terms(real, real, torch.zeros(1, dtype=torch.bool))["head_energy"]) == 0.0
    assert float(same["head_pyramid"]) == pytest.approx(0.0, abs=1e-5)


def test_head_pyramid_matches_the_evaluation_energy_per_level():
    """|log| energy ratio per level of the evaluation's pyramid: a head moving at half the amplitude scores
    log 4 at every level; a head with ground truth's jitter but no slow sway scores mostly at the coarse levels."""
    rng = np.random.default_rng(1)
    path = np.cumsum(rng.normal(0, 0.004, (80, 2)), axis=0)
    real = torch.from_numpy(np.stack([_face(0.02, p) for p in path]))[None]
    rows = torch.ones(1, dtype=torch.bool)
    half = torch.from_numpy(np.stack([_face(0.02, 0.5 * p) for p in path]))[None]
    assert float(head_terms(half, real, rows)["head_pyramid"]) == pytest.approx(np.log(4.0), rel=1e-3)
    e_real = vm.head_energy(real[0].numpy())
    jitter = path - np.convolve(path[:, 0], np.ones(9) / 9, "same")[:, None] * [1, 0]
    jitter[:, 1] -= np.convolve(path[:, 1], np.ones(9) / 9, "same")
    fast = torch.from_numpy(np.stack([_face(0.02, p) for p in jitter]))[None]
    e_fast = vm.head_energy(fast[0].numpy())
    expected = np.mean([abs(np.log(a / b)) for a, b in zip(e_fast, e_real)])
    assert float(head_terms(fast, real, rows)["head_pyramid"]) == pytest.approx(expected, rel=0.05)
    assert abs(np.log(e_fast[3] / e_real[3])) > abs(np.log(e_fast[0] / e_real[0]))
    coarse = np.mean([abs(np.log(a / b)) for a, b in zip(e_fast[2:], e_real[2:])])  # first_level=2: 800, 1600 ms
    assert float(head_terms(fast, real, rows, first_level=2)["head_pyramid"]) == pytest.approx(coarse, rel=0.05)
    assert coarse > expected  # the coarse levels are where the jitter-only head falls short


def test_head_tail_asks_for_the_large_slow_movements_of_a_batch():
    """`head_tail`: 0 for ground truth itself; a batch whose heads only sway fast (no slow excursion) scores
    above 0 against windows where a few heads make a large slow turn; one-sided (a larger turn than ground
    truth's costs nothing); unpaired (the turn may come in any window of the batch); its gradient widens the
    fake's largest slow excursion."""
    t = np.arange(120)

    def window(turn: float, seed: int) -> torch.Tensor:
        jitter = np.random.default_rng(seed).normal(0, 0.002, (120, 2))
        slow = np.stack([turn * np.sin(t / 120 * np.pi), np.zeros(120)], axis=1)
        return torch.from_numpy(np.stack([_face(0.02, p) for p in jitter + slow]))

    real = torch.stack([window(0.15 if k < 2 else 0.0, k) for k in range(8)])  # two of eight windows turn
    calm = torch.stack([window(0.0, 10 + k) for k in range(8)])
    turned_elsewhere = torch.stack([window(0.15 if k in (5, 6) else 0.0, 20 + k) for k in range(8)])
    wider = torch.stack([window(0.3 if k < 2 else 0.0, 30 + k) for k in range(8)])
    rows = torch.ones(8, dtype=torch.bool)
    assert float(head_terms(real, real, rows)["head_tail"]) == 0.0
    assert float(head_terms(calm, real, rows)["head_tail"]) > 1.0
    assert float(head_terms(turned_elsewhere, real, rows)["head_tail"]) < 0.1
    assert float(head_terms(wider, real, rows)["head_tail"]) == 0.0
    moved = calm.clone().requires_grad_(True)
    head_terms(moved, real, rows)["head_tail"].backward()
    step = moved.detach() - 0.01 * moved.grad / moved.grad.abs().max()
    assert float(head_terms(step, real, rows)["head_tail"]) < float(head_terms(calm, real, rows)["head_tail"])


@pytest.mark.slow
def test_msync_train_with_non_speech_mixing_and_face_terms(shared_data, tmp_path):
    """Two iterations with mixing and every new term: the terms are logged and validation reports the rest gap."""
    sets = {**tiny_train_settings(tmp_path, seq_len=30), "augment.gain_db": 35}
    terms = ("rest_gap", "rest_still", "rest_pose", "mouth_shape", "mouth_gap", "mouth_amplitude", "mouth_under")
    for name in terms + ("mouth_corr",):
        sets[f"{name}_weight"] = 1.0
    sets.update(
        {"head_energy_weight": 1.0, "head_pyramid_weight": 1.0, "head_mean_weight": 1.0, "head_tail_weight": 1.0}
    )
    sets.update({"head_angle_weight": 1.0, "head_angle_momentum": 0.5})
    recs = run_train(sets, tmp_path / "gen")
    train = [r for r in recs if r.get("split") == "train"]
    logged = {
        "rest_gap",
        "mouth_amplitude",
        "mouth_corr",
        "head_energy",
        "head_pyramid",
        "head_mean",
        "head_angle",
        "head_tail",
    }
    assert logged <= set(train[-1])
    assert all(np.isfinite(r["loss_g"]) for r in train)
    val = json.loads((tmp_path / "gen" / "result.json").read_text())["val"]
    assert 0 <= val["rest_gap_p50"] <= val["rest_gap_p90"] and val["gap_amplitude"] > 0
    assert -1 <= val["gap_r"] <= 1 and -1 <= val["gap_r_lag1"] <= 1
    with pytest.raises(subprocess.CalledProcessError) as refused:  # 4 windows, 1 mixed: 3 unmixed for the pair critic
        run_train({**sets, "rest.fraction": 0.25}, tmp_path / "bad")
    assert "even number" in refused.value.stderr.decode()
