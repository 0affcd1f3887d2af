"""The torch head angles (`training.head_pose`) against the evaluation's numpy ones, and the head-angle term."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stream_engine.signals import MEAN_FACE_3D
from training.face_losses import head_angle_terms
from training.head_pose import head_angles
from training.metrics import viewer as vm


def _rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) @ Ry(yaw) @ Rx(pitch), degrees, in the sign conventions of `rotation_to_pose` (whose
    elementary rotations turn the other way from the textbook's, hence the minus signs)."""
    y, p, r = (-math.radians(v) for v in (yaw, pitch, roll))
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _project(yaw: float, pitch: float, roll: float, scale=2.0, shift=(128.0, 128.0)) -> np.ndarray:
    """The generic face turned by (yaw, pitch, roll) and projected orthographically: (68, 2) image points."""
    model = MEAN_FACE_3D * np.array([1.0, 1.0, -1.0])  # z away from the camera, as `head_rotation` fits it
    return (model @ _rot(yaw, pitch, roll).T)[:, :2] * scale + np.asarray(shift)


def _random_faces(rng, b: int, t: int, spread: float = 20.0, noise: float = 0.8) -> np.ndarray:
    out = np.empty((b, t, 68, 2))
    for i in range(b):
        for j in range(t):
            angles = rng.uniform(-spread, spread, 3)
            out[i, j] = _project(*angles, scale=rng.uniform(1, 3), shift=rng.uniform(50, 200, 2))
    return out + rng.normal(0.0, noise, out.shape)


def _numpy_angles(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.stack([vm.head_angles(x[i], ref[i]) for i in range(len(x))])


def test_port_matches_the_evaluation_angles_on_random_faces():
    rng = np.random.default_rng(0)
    x, ref = _random_faces(rng, 4, 12), _random_faces(rng, 4, 1)[:, 0]
    got = head_angles(torch.from_numpy(x), torch.from_numpy(ref)).numpy()
    np.testing.assert_allclose(got, _numpy_angles(x, ref), atol=1e-6)
    assert np.abs(got).max() > 20  # relative angles of faces up to 20 degrees apart: not a trivial comparison


def test_port_recovers_planted_angles_against_a_frontal_reference():
    planted = np.array([[10.0, -5.0, 3.0], [-15.0, 8.0, -6.0], [0.0, 0.0, 12.0]])
    x = np.stack([_project(*a) for a in planted])[None]
    ref = _project(0.0, 0.0, 0.0)[None]
    got = head_angles(torch.from_numpy(x), torch.from_numpy(ref))[0].numpy()
    np.testing.assert_allclose(got, planted, atol=1e-6)


def test_port_matches_the_evaluation_angles_on_real_faces(shared_data):
    files = sorted((shared_data / "clips").glob("*.lm68.npy"))[::150][:6]
    assert files
    seqs = [np.load(f).astype(np.float64) for f in files]
    t = min(len(s) for s in seqs) - 1
    x = np.stack([s[1 : t + 1] for s in seqs])
    ref = np.stack([s[0] for s in seqs])
    got = head_angles(torch.from_numpy(x), torch.from_numpy(ref)).numpy()
    np.testing.assert_allclose(got, _numpy_angles(x, ref), atol=1e-6)
    # float32, as in training: within a thousandth of a degree
    got32 = head_angles(torch.from_numpy(x).float(), torch.from_numpy(ref).float()).numpy()
    np.testing.assert_allclose(got32, got, atol=2e-3)


def test_head_angles_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="want"):
        head_angles(torch.zeros(2, 5, 68, 2), torch.zeros(3, 68, 2))


def test_head_angle_term_is_zero_for_identical_sequences_and_scores_a_planted_bias():
    rng = np.random.default_rng(1)
    real = torch.from_numpy(_random_faces(rng, 3, 10, spread=5.0, noise=0.2))
    ref = torch.from_numpy(_random_faces(rng, 3, 1, spread=5.0, noise=0.2)[:, 0])
    rows = torch.ones(3, dtype=torch.bool)
    assert float(head_angle_terms(real, real, ref, rows)[0]["head_angle"]) == 0.0
    # every fake frame pitched 2 degrees more than its real frame (about the face's own centre): bias (0, 2, 0)
    pitched = np.empty_like(real.numpy())
    for i in range(3):
        for j in range(10):
            a = vm.head_angles(real[i, j : j + 1].numpy(), ref[i].numpy())[0]
            pitched[i, j] = _project(a[0], a[1] + 2.0, a[2])
    # the projections lose the real faces' noise: compare them with the same projections without the extra pitch
    base = np.stack(
        [
            [_project(*vm.head_angles(real[i, j : j + 1].numpy(), ref[i].numpy())[0]) for j in range(10)]
            for i in range(3)
        ]
    )
    ref_f = torch.from_numpy(np.stack([_project(0.0, 0.0, 0.0)] * 3))
    term = head_angle_terms(torch.from_numpy(pitched), torch.from_numpy(base), ref_f, rows)[0]["head_angle"]
    assert float(term) == pytest.approx(4.0, rel=0.05)
    assert float(head_angle_terms(real, real, ref, torch.zeros(3, dtype=torch.bool))[0]["head_angle"]) == 0.0


def test_head_angle_term_gradient_moves_the_angles_towards_ground_truth():
    real = torch.from_numpy(np.stack([_project(0.0, 0.0, 0.0)] * 6))[None]
    fake = torch.from_numpy(np.stack([_project(0.0, 0.0, -3.0)] * 6))[None].requires_grad_(True)
    ref = real[:, 0]
    rows = torch.ones(1, dtype=torch.bool)
    term = head_angle_terms(fake, real, ref, rows)[0]["head_angle"]
    assert float(term.detach()) == pytest.approx(9.0, rel=1e-4)
    term.backward()
    assert torch.isfinite(fake.grad).all()
    moved = (fake - 0.5 * fake.grad).detach()
    after = float(head_angle_terms(moved, real, ref, rows)[0]["head_angle"].detach())
    assert after < float(term.detach())


def test_running_bias_averages_batches_and_keeps_the_slope_of_the_squared_bias():
    real = torch.from_numpy(np.stack([_project(0.0, 0.0, 0.0)] * 4))[None]
    ref = real[:, 0]
    rows = torch.ones(1, dtype=torch.bool)
    fake = torch.from_numpy(np.stack([_project(0.0, 2.0, 0.0)] * 4))[None].requires_grad_(True)
    plain, d = head_angle_terms(fake, real, ref, rows)
    np.testing.assert_allclose(d.numpy(), [0.0, 2.0, 0.0], atol=1e-6)
    running = torch.tensor([0.0, 4.0, 0.0], dtype=torch.float64)
    terms, est = head_angle_terms(fake, real, ref, rows, running, momentum=0.75)
    np.testing.assert_allclose(est.numpy(), [0.0, 3.5, 0.0], atol=1e-6)  # 0.75 * running + 0.25 * d
    assert float(terms["head_angle"].detach()) == pytest.approx(3.5**2, rel=1e-5)
    # gradient 2 b . dd/dx: the plain term's (2 d . dd/dx) scaled by 3.5 / 2 (pitch alone is off in both)
    (g_plain,) = torch.autograd.grad(plain["head_angle"], fake)
    (g_run,) = torch.autograd.grad(terms["head_angle"], fake)
    np.testing.assert_allclose(g_run.numpy(), g_plain.numpy() * 3.5 / 2.0, atol=1e-8)
    none, kept = head_angle_terms(fake, real, ref, torch.zeros(1, dtype=torch.bool), running, momentum=0.75)
    assert kept is running and float(none["head_angle"].detach()) == 0.0
    with pytest.raises(ValueError, match="momentum"):
        head_angle_terms(fake, real, ref, rows, running, momentum=1.0)


def _nodding(rng, loud: np.ndarray, follow: float) -> np.ndarray:
    """(T, 68, 2) the generic face yawing back and forth; its angular speed is `follow` x the loudness's 200 ms
    band plus an unrelated jitter of the same band."""
    from training.face_losses import octave_band

    e = octave_band(torch.from_numpy(loud)[None], 200.0)[0].numpy()
    jitter = octave_band(torch.from_numpy(rng.normal(size=len(loud)))[None], 200.0)[0].numpy()
    speed = 0.6 + follow * e / np.abs(e).max() * 0.4 + (1 - follow) * jitter / np.abs(jitter).max() * 0.4
    yaw = np.cumsum(speed * np.where((np.arange(len(loud)) // 12) % 2, -1.0, 1.0))  # turns back every 12 frames
    return np.stack([_project(float(a), 0.0, 0.0) for a in yaw])


def test_head_speech_term_is_zero_on_ground_truth_and_scores_a_head_that_bobs_with_loudness():
    from training.face_losses import head_speech_terms

    rng = np.random.default_rng(3)
    loud = -30.0 + 10.0 * rng.normal(size=100)
    real = torch.from_numpy(_nodding(rng, loud, follow=0.0))[None]
    bob = torch.from_numpy(_nodding(rng, loud, follow=1.0))[None].requires_grad_(True)
    ref = real[:, 0]
    rows = torch.ones(1, dtype=torch.bool)
    lt = torch.from_numpy(loud)[None]
    assert float(head_speech_terms(real, real, ref, lt, rows)["head_speech"]) == pytest.approx(0.0, abs=1e-9)
    term = head_speech_terms(bob, real, ref, lt, rows, scales_ms=(200.0,))["head_speech"]
    assert float(term.detach()) > 0.3  # r near 1 against near 0
    term.backward()
    assert torch.isfinite(bob.grad).all() and float(bob.grad.abs().sum()) > 0
    none = head_speech_terms(bob, real, ref, lt, torch.zeros(1, dtype=torch.bool))["head_speech"]
    assert float(none.detach()) == 0.0


def test_head_pose_speech_term_scores_a_head_that_turns_with_loudness():
    """The signed form: zero on ground truth, large for a head whose yaw follows the loudness's 200 ms band (a turn
    toward one side whenever the voice is loud), with a gradient; zero when no row is used."""
    from training.face_losses import head_speech_terms, octave_band

    rng = np.random.default_rng(4)
    loud = -30.0 + 10.0 * rng.normal(size=100)
    t = np.arange(100) - 49.5
    flat = loud - loud.mean() - t * ((loud - loud.mean()) @ t) / (t @ t)  # the term detrends each series first
    e = octave_band(torch.from_numpy(flat)[None], 200.0)[0].numpy()
    real = torch.from_numpy(np.stack([_project(0.0, 0.0, 0.0)] * 100))  # a real head held still: r 0
    lean = np.stack([_project(float(a), 0.0, 0.0) for a in 3.0 * e / np.abs(e).max()])
    lean_t = torch.from_numpy(lean)[None].requires_grad_(True)
    real, ref, rows, lt = real[None], real[None, 0], torch.ones(1, dtype=torch.bool), torch.from_numpy(loud)[None]
    assert float(head_speech_terms(real, real, ref, lt, rows)["head_pose_speech"]) == pytest.approx(0.0, abs=1e-9)
    term = head_speech_terms(lean_t, real, ref, lt, rows, scales_ms=(200.0,))["head_pose_speech"]
    # yaw: r 1 against 0, squared; pitch and roll stay still in both (r 0): the mean over the three 1/3
    assert float(term.detach()) == pytest.approx(1.0 / 3.0, abs=0.02)
    term.backward()
    assert torch.isfinite(lean_t.grad).all() and float(lean_t.grad.abs().sum()) > 0
    none = head_speech_terms(lean_t, real, ref, lt, torch.zeros(1, dtype=torch.bool))["head_pose_speech"]
    assert float(none.detach()) == 0.0
    # A head that drifts with the loudness's trend across the window, and with nothing in the octaves, scores ~0:
    # the series are detrended before the (circular) FFT band-pass, which would otherwise wrap the drift into a jump.
    trend = np.linspace(-20.0, 20.0, 100)
    drift = torch.from_numpy(np.stack([_project(float(a), 0.0, 0.0) for a in np.linspace(0.0, 6.0, 100)]))[None]
    lt_trend = torch.from_numpy(-30.0 + trend + 0.5 * rng.normal(size=100))[None]
    ramp = head_speech_terms(drift, real, ref, lt_trend, rows, scales_ms=(200.0, 400.0, 800.0))["head_pose_speech"]
    assert float(ramp.detach()) < 0.02


def test_window_loudness_reads_the_frame_that_holds_a_click():
    from training.face_losses import window_loudness_db

    spf, start = 640, 1000
    audio = np.full((2, start + 10 * spf + 7), 1e-4, np.float32)
    audio[0, start + 6 * spf + 100] = 0.9  # a click inside frame 6 of row 0
    db = window_loudness_db(audio, start, 10, spf)
    assert db.shape == (2, 10) and int(np.argmax(db[0])) == 6
    assert db[1] == pytest.approx(-80.0, abs=0.01)  # a constant row: every frame at its level
    assert db[0].min() == pytest.approx(db[0].max() - 50.0)  # floored 50 dB below the loudest frame
    with pytest.raises(ValueError, match="need"):
        window_loudness_db(audio, start, 11, spf)


@pytest.mark.slow
def test_head_speech_term_trains_and_logs(shared_data, tmp_path):
    """Two iterations of a tiny generator with the term on: it is logged, finite, and its loudness windows fit the
    batch (a wrong start offset into the batch audio raises)."""
    from train_helpers import run_train, tiny_train_settings

    sets = {**tiny_train_settings(tmp_path), "head_speech_weight": 1.0, "head_speech_scales_ms": [200.0, 400.0]}
    train = [r for r in run_train(sets, tmp_path / "on") if r.get("split") == "train"]
    assert train and all(np.isfinite(r["head_speech"]) for r in train)


def test_port_matches_the_evaluation_angles_with_another_point_set():
    """`fit` (the no-jaw point set of `benchmarks.head_speech` and the head-speech term) gives the numpy angles too,
    and differs from the default fit where the jaw line moves."""
    from stream_engine.signals import NO_JAW_POINTS, rigid_fit

    rng = np.random.default_rng(5)
    x = _random_faces(rng, 2, 6)
    ref = x[:, 0]
    fit = rigid_fit(NO_JAW_POINTS)
    got = head_angles(torch.from_numpy(x), torch.from_numpy(ref), fit).numpy()
    want = np.stack([vm.head_angles(x[i], ref[i], fit) for i in range(2)])
    assert np.abs(got - want).max() < 1e-9
    jaw = x.copy()
    jaw[:, :, [0, 1, 2, 14, 15, 16], 1] += 5.0  # the jaw line's upper points move; nose and eye corners do not
    moved = head_angles(torch.from_numpy(jaw), torch.from_numpy(ref), fit).numpy()
    assert np.abs(moved - got).max() < 1e-9
    assert np.abs(head_angles(torch.from_numpy(jaw), torch.from_numpy(ref)).numpy() - _numpy_angles(x, ref)).max() > 0.1
