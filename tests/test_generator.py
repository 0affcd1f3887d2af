"""The causal generator: stepping equals the sequence form, causality with bounded look-ahead, size budget."""

from __future__ import annotations

import pytest
import torch

from training.frontend import with_silence_context
from training.models.generator import Generator, GeneratorConfig

N_FRAMES = 40


def _speech(speech_np) -> torch.Tensor:
    return torch.from_numpy(speech_np[: 640 * N_FRAMES].copy())[None]


def _run_both(g: Generator, audio: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    b = audio.shape[0]
    x_ref = torch.rand(b, 68, 2) * 0.4 + 0.3
    h0, c0 = g.initial_lstm_state(b)
    L = g.cfg.lookahead_frames
    n = audio.shape[1] // 640
    with torch.no_grad():
        seq = g(g.mfcc(with_silence_context(audio, g.frontend)), x_ref, h0, c0, num_frames=n - L)
        state = g.initial_state(x_ref, h0, c0)
        outs = []
        for k in range(n):
            out, state = g.step(audio[:, 640 * k : 640 * (k + 1)], state)
            outs.append(out)
    return seq, torch.stack(outs, dim=1), x_ref


@pytest.mark.parametrize("silence_history", [False, True])
@pytest.mark.parametrize("lookahead", [0, 1, 4])
def test_step_reproduces_sequence_form(speech, lookahead, silence_history):
    """Stepping 40 ms at a time gives the sequence model's frames within 1e-5, for every look-ahead, with the
    zero history or the silence history before the stream."""
    g = Generator(GeneratorConfig(lookahead_frames=lookahead, silence_history=silence_history)).eval()
    audio = _speech(speech).repeat(2, 1)
    audio[1] *= 0.25
    seq, stepped, x_ref = _run_both(g, audio)
    assert stepped.shape[1] == N_FRAMES and seq.shape[1] == N_FRAMES - lookahead
    assert torch.all(stepped[:, :lookahead] == x_ref[:, None])  # warm-up: nothing emitted yet
    assert (seq - stepped[:, lookahead:]).abs().max() <= 1e-5


@pytest.mark.parametrize("lookahead", [0, 2])
def test_frame_depends_on_no_audio_beyond_lookahead(speech, lookahead):
    """Frame t does not change when audio after the end of frame t + L changes (bounded look-ahead)."""
    g = Generator(GeneratorConfig(lookahead_frames=lookahead)).eval()
    audio = _speech(speech)
    changed = audio.clone()
    cut_frame = 20
    changed[:, 640 * (cut_frame + lookahead + 1) :] = (
        torch.randn_like(changed[:, 640 * (cut_frame + lookahead + 1) :]) * 0.3
    )
    a, _, _ = _run_both(g, audio)
    b, _, _ = _run_both(g, changed)
    assert torch.equal(a[:, : cut_frame + 1], b[:, : cut_frame + 1])
    assert not torch.allclose(a[:, cut_frame + 1 :], b[:, cut_frame + 1 :])


@pytest.mark.parametrize("silence_history", [False, True])
def test_warmup_mask_equals_fresh_stream(speech, silence_history):
    """Frames before a stream's start, masked as invalid, behave exactly like the zero caches of a new stream
    (with `silence_history`: like the silence a new stream's zero caches then stand for)."""
    g = Generator(GeneratorConfig(lookahead_frames=1, silence_history=silence_history)).eval()
    audio = _speech(speech)
    pad_frames = 10
    padded = torch.cat([torch.randn(1, 640 * pad_frames) * 0.2, audio], dim=1)
    torch.manual_seed(3)
    x_ref = torch.rand(1, 68, 2)
    h0, c0 = g.initial_lstm_state(1)
    n = N_FRAMES - 1
    with torch.no_grad():
        fresh = g(g.mfcc(with_silence_context(audio, g.frontend)), x_ref, h0, c0, num_frames=n)
        mf = g.mfcc(with_silence_context(padded, g.frontend))
        # The padded run's MFCC of real frames must start from silence too: recompute them as a fresh stream would.
        mf[:, 4 * pad_frames :] = g.mfcc(with_silence_context(audio, g.frontend))
        valid = torch.arange(pad_frames + n + 1)[None] >= pad_frames
        masked = g(mf, x_ref, h0, c0, num_frames=n, warmup_frames=pad_frames, valid=valid)
    assert (fresh - masked).abs().max() <= 1e-6


def test_silence_history_is_what_a_silent_past_leaves_in_the_caches(speech):
    """With `silence_history`, the caches a stream holds after 2 s of digital silence are the zero caches of a
    fresh stream (to float error), so a fresh stream's audio levels are those of a stream that heard silence
    first; with the zero history they are far apart (the transient 0.3.1 showed at stream starts)."""
    audio = _speech(speech)
    for silence_history in (True, False):
        g = Generator(GeneratorConfig(lookahead_frames=2, silence_history=silence_history)).eval()
        x_ref = torch.rand(1, 68, 2) * 0.4 + 0.3
        h0, c0 = g.initial_lstm_state(1)
        with torch.no_grad():
            state = g.initial_state(x_ref, h0, c0)
            for _ in range(50):
                _, state = g.step(torch.zeros(1, 640), state)
            gap = state.conv_cache.abs().max().item()
            fresh = g.audio_levels(g.mfcc(with_silence_context(audio, g.frontend)))
            after = g.audio_levels(
                g.mfcc(with_silence_context(torch.cat([torch.zeros(1, 640 * 50), audio], 1), g.frontend))
            )
        diff = max((a[..., 50:] - f).abs().max().item() for a, f in zip(after, fresh))
        if silence_history:
            assert gap < 1e-4 and diff < 1e-4
        else:
            assert gap > 1.0 and diff > 0.1


def test_default_model_fits_the_budget():
    """The shipped configuration stays under 20 MB of float32 weights."""
    g = Generator(GeneratorConfig())
    assert g.num_parameters() * 4 <= 20e6
    assert GeneratorConfig().receptive_field_frames[-1] >= 40  # the coarsest level spans >= 1.6 s


def test_single_scale_generator_and_bad_configs():
    g = Generator(GeneratorConfig(branch_levels=(0,)))
    assert g.branches.mask.weight.shape[0] == 1
    with pytest.raises(ValueError):
        GeneratorConfig(branch_levels=(5,))
    with pytest.raises(ValueError):
        GeneratorConfig(lookahead_frames=-1)


def test_wrong_window_length_is_refused():
    g = Generator(GeneratorConfig(lookahead_frames=2))
    with pytest.raises(ValueError, match="expected"):
        g(torch.zeros(1, 4 * 10, 26), torch.zeros(1, 68, 2), torch.zeros(1, 256), torch.zeros(1, 256), num_frames=10)


def test_anchored_step_reproduces_sequence_form(speech):
    """With the anchor and the reference input on, stepping still equals the sequence form."""
    g = Generator(GeneratorConfig(lookahead_frames=2, anchor_rate=0.05, reference_input=True)).eval()
    audio = _speech(speech).repeat(2, 1)
    seq, stepped, _ = _run_both(g, audio)
    assert (seq - stepped[:, 2:]).abs().max() <= 1e-5


def test_anchor_bounds_drift_from_a_constant_velocity_bias(speech):
    """A velocity bias b integrates without bound in the paper's update; the anchor holds it near b / a."""
    torch.manual_seed(0)
    bias = 1e-3
    outs = {}
    for rate in (0.0, 0.05):
        g = Generator(GeneratorConfig(lookahead_frames=0, anchor_rate=rate)).eval()
        with torch.no_grad():
            for p in g.branches.velocity.parameters():
                p.zero_()
            g.branches.velocity.bias.fill_(bias / g.cfg.velocity_scale)  # every landmark moves +b per frame
        x_ref = torch.full((1, 68, 2), 0.5)
        h0, c0 = g.initial_lstm_state(1)
        audio = _speech(speech)[:, : 640 * 200] if speech.shape[0] >= 640 * 200 else _speech(speech)
        n = audio.shape[1] // 640
        with torch.no_grad():
            outs[rate] = g(g.mfcc(with_silence_context(audio, g.frontend)), x_ref, h0, c0, num_frames=n)
        last_offset = (outs[rate][0, -1] - x_ref[0]).mean().item()
        if rate == 0.0:
            assert last_offset == pytest.approx(bias * n, rel=1e-3)
        else:
            assert last_offset <= bias / rate * 1.001
            assert last_offset == pytest.approx(bias / rate * (1 - (1 - rate) ** n), rel=1e-3)


def _pose_offsets():
    """Offsets of the generic face: a head move released at the pose rate (translation, shear, a turn: depth
    parallax in x), a roll (small-angle rotation about the rigid points' centroid) and a change of size."""
    from stream_engine.signals import MEAN_FACE_3D, RIGID_POINTS

    m = torch.tensor(MEAN_FACE_3D, dtype=torch.float32)
    g, z = m[None, :, :2] / 100.0, m[None, :, 2:] / 100.0
    # Translation, a shear (symmetric, traceless: no change of size, no roll) and a turn (depth parallax in x).
    shear = torch.tensor([[0.02, 0.01], [0.01, -0.02]])
    head = torch.tensor([0.01, -0.02]) + g @ shear + z * torch.tensor([0.02, 0.0])
    r = g - g[:, list(RIGID_POINTS)].mean(dim=1, keepdim=True)
    roll = 0.02 * torch.stack([-r[..., 1], r[..., 0]], dim=-1)  # 0.02 rad, linearised
    size = 0.05 * r  # 5 % larger about the rigid points' centroid
    return head.expand(2, 68, 2), roll.expand(2, 68, 2), size.expand(2, 68, 2)


def _generator(**anchor) -> Generator:
    return Generator(GeneratorConfig(lookahead_frames=0, reference_input=True, **anchor)).eval()


def test_split_anchor_pulls_the_head_the_roll_and_the_face_at_their_own_rates():
    """pose / roll / pitch_anchor_rate: a head move (fitted on the rigid points) relaxes at the pose rate, a roll
    at the roll rate, a nod at the pitch rate, a mouth opening (no rigid point moves) and a change of the face's
    size at anchor_rate; None is the single anchor, and the split is a constant of the model (no matrix when the
    rates do not split)."""
    torch.manual_seed(0)
    head, roll, size = _pose_offsets()
    mouth = torch.zeros(2, 68, 2)
    mouth[:, 57, 1] = 0.03  # the lower lip down
    single = _generator(anchor_rate=0.05)
    assert single.anchor_split is None and _generator(anchor_rate=0.05, pose_anchor_rate=0.05).anchor_split is None
    pose = _generator(anchor_rate=0.05, pose_anchor_rate=0.02)
    both = _generator(anchor_rate=0.05, pose_anchor_rate=0.02, roll_anchor_rate=0.04)
    for d in (head, roll, mouth):
        torch.testing.assert_close(single.anchor_pull(d), 0.05 * d)
        torch.testing.assert_close(_generator(anchor_rate=0.05, pose_anchor_rate=0.05).anchor_pull(d), 0.05 * d)
    torch.testing.assert_close(pose.anchor_pull(head), 0.02 * head)
    torch.testing.assert_close(pose.anchor_pull(roll), 0.02 * roll)
    torch.testing.assert_close(pose.anchor_pull(mouth), 0.05 * mouth)
    torch.testing.assert_close(pose.anchor_pull(size), 0.05 * size)
    torch.testing.assert_close(both.anchor_pull(size), 0.05 * size)
    # Pitch (the depth parallax of the y coordinate) at its own rate; yaw (that of x) stays at the pose rate.
    from stream_engine.signals import MEAN_FACE_3D

    z = torch.tensor(MEAN_FACE_3D[:, 2], dtype=torch.float32)[None, :, None] / 100.0
    nod, turn = z * torch.tensor([0.0, 0.05]), z * torch.tensor([0.05, 0.0])
    tilted = _generator(anchor_rate=0.05, pose_anchor_rate=0.02, pitch_anchor_rate=0.05)
    torch.testing.assert_close(tilted.anchor_pull(nod), 0.05 * nod)
    torch.testing.assert_close(tilted.anchor_pull(turn), 0.02 * turn)
    torch.testing.assert_close(tilted.anchor_pull(roll), 0.02 * roll)
    # Four distinct rates at once, and the shipped ones on every kind of offset together.
    four = _generator(anchor_rate=0.05, pose_anchor_rate=0.02, roll_anchor_rate=0.04, pitch_anchor_rate=0.03)
    torch.testing.assert_close(four.anchor_pull(nod), 0.03 * nod)
    torch.testing.assert_close(four.anchor_pull(roll + nod), 0.04 * roll + 0.03 * nod)
    torch.testing.assert_close(
        four.anchor_pull(head + roll + nod + size + mouth),
        0.02 * head + 0.04 * roll + 0.03 * nod + 0.05 * (size + mouth),
    )
    shipped = _generator(anchor_rate=0.05, pose_anchor_rate=0.02, roll_anchor_rate=0.05, pitch_anchor_rate=0.05)
    torch.testing.assert_close(
        shipped.anchor_pull(head + turn + roll + nod + size + mouth),
        0.02 * (head + turn) + 0.05 * (roll + nod + size + mouth),
    )
    torch.testing.assert_close(both.anchor_pull(roll), 0.04 * roll)
    torch.testing.assert_close(pose.anchor_pull(mouth + head), 0.05 * mouth + 0.02 * head)
    # Whatever the rigid points do not do is held at anchor_rate: noise on every other point (lips, jaw, brows).
    from stream_engine.signals import RIGID_POINTS

    noise = torch.randn(2, 68, 2) * 0.01
    noise[:, list(RIGID_POINTS)] = 0.0
    torch.testing.assert_close(both.anchor_pull(noise), 0.05 * noise)


def test_split_anchor_config_is_checked():
    for bad in ({"pose_anchor_rate": 1.0}, {"roll_anchor_rate": -0.1}, {"pitch_anchor_rate": 2.0}):
        with pytest.raises(ValueError, match="anchor_rate must be in"):
            GeneratorConfig(anchor_rate=0.05, **bad)
    with pytest.raises(ValueError, match="68-point"):
        GeneratorConfig(num_landmarks=20, anchor_rate=0.05, pose_anchor_rate=0.02)


def test_reference_pose_gain_pushes_by_the_reference_faces_own_turn_nod_and_roll():
    """reference_pose_gain (yaw, pitch, roll): the velocity gains g times the yaw, pitch or roll part of the
    reference face's own fitted pose; a frontal face (whatever its size or place) and a mouth get no push; the
    push is in `advance` (the step and the sequence form: `test_split_anchor_step_reproduces_sequence_form`)."""
    from stream_engine.signals import MEAN_FACE_3D

    m = torch.tensor(MEAN_FACE_3D, dtype=torch.float32)
    frontal = (m[None, :, :2] / 200.0 + 0.5).expand(2, 68, 2)
    z = (m[None, :, 2:] / 200.0).expand(2, 68, 1)
    turn, nod = z * torch.tensor([0.05, 0.0]), z * torch.tensor([0.0, 0.05])
    _, roll, _ = _pose_offsets()
    mouth = torch.zeros(2, 68, 2)
    mouth[:, 57, 1] = 0.03
    gen = _generator(anchor_rate=0.05, pose_anchor_rate=0.02, reference_pose_gain=(0.01, 0.02, 0.03))
    assert _generator(anchor_rate=0.05).reference_pose_fit is None
    assert gen.reference_pose_fit is not None and gen.reference_pose_fit.shape == (136, 3)
    push = gen.reference_push

    torch.testing.assert_close(push(frontal), torch.zeros(2, 68, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(push(1.3 * frontal - 0.1), torch.zeros(2, 68, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(push(frontal + mouth), torch.zeros(2, 68, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(push(frontal + turn), 0.01 * turn, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(push(frontal + nod), 0.02 * nod, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(push(frontal + roll), 0.03 * roll, atol=1e-6, rtol=1e-4)
    # In the update: x(t) = x(t-1) + v - pull(x(t-1) - x_ref) + push(x_ref).
    plain = _generator(anchor_rate=0.05, pose_anchor_rate=0.02)
    plain.load_state_dict(gen.state_dict())
    x_ref = frontal + turn + roll
    h = torch.zeros(2, 256)
    audio = torch.randn(2, 4, 128)
    with torch.no_grad():
        x_gain, *_ = gen.advance(x_ref, x_ref, h, h, audio)
        x_plain, *_ = plain.advance(x_ref, x_ref, h, h, audio)
    torch.testing.assert_close(x_gain - x_plain, 0.01 * turn + 0.03 * roll, atol=1e-5, rtol=1e-3)
    for bad in ((0.1, 0.2), (0.0, float("nan"), 0.0)):
        with pytest.raises(ValueError, match="reference_pose_gain"):
            GeneratorConfig(reference_pose_gain=bad)


@pytest.mark.parametrize("gain", [None, (0.015, 0.02, 0.015)])
def test_split_anchor_step_reproduces_sequence_form(speech, gain):
    """The split anchor, and the reference-pose push with it, carried alike by the step and the sequence form."""
    cfg = GeneratorConfig(
        lookahead_frames=2,
        anchor_rate=0.05,
        pose_anchor_rate=0.02,
        roll_anchor_rate=0.05,
        reference_input=True,
        reference_pose_gain=gain,
    )
    seq, stepped, _ = _run_both(Generator(cfg).eval(), _speech(speech).repeat(2, 1))
    assert (seq - stepped[:, 2:]).abs().max() <= 1e-5


def test_warm_start_from_a_generator_without_reference_input():
    """load_compatible: the old network's outputs are unchanged after gaining (zero) reference columns."""
    old = Generator(GeneratorConfig(lookahead_frames=0)).eval()
    new = Generator(GeneratorConfig(lookahead_frames=0, reference_input=True)).eval()
    assert new.load_compatible(old.state_dict()) == ["landmark_encoder.0.weight"]
    x, ref = torch.rand(3, 68, 2), torch.rand(3, 68, 2)
    torch.testing.assert_close(new._embed(x, ref), old._embed(x, ref), rtol=0, atol=1e-6)


def test_shape_prior_matches_the_eval_distance_and_pulls_shapes_back():
    """ShapePrior.distance equals ShapeSpace.distance (the eval's plausibility test); its hinge is 0 for faces
    inside the space and its gradient moves a scrambled face toward the space."""
    import numpy as np
    from test_evaluate import _shapes

    from training.shape_prior import ShapePrior

    train = _shapes(400, seed=1)
    prior = ShapePrior.fit(train, quantile=99.0)
    from training.metrics.dynamics import ShapeSpace

    space = ShapeSpace.fit(train)
    space.calibrate(train, 99.0)
    test = _shapes(20, seed=2)
    np.testing.assert_allclose(
        prior.distance(torch.tensor(test, dtype=torch.float32)).numpy(), space.distance(test), rtol=1e-3
    )
    assert float(prior(torch.tensor(_shapes(50, seed=3), dtype=torch.float32))) < 0.05
    bad = torch.tensor(
        test[:4] + np.random.default_rng(0).normal(scale=0.05, size=(4, 68, 2)) * test[:4].std(),
        dtype=torch.float32,
        requires_grad=True,
    )
    loss = prior(bad)
    assert float(loss.detach()) > 0
    loss.backward()
    moved = (bad - 0.05 * bad.grad / bad.grad.norm()).detach()
    assert float(prior(moved)) < float(loss.detach())


def test_branch_mix_is_a_softmax_over_branches_per_landmark():
    """`Branches.forward` (branches leading, folded softmax) equals the plain formula: per branch g,
    z_g = gelu([h | emb | audio_g] W_g + b_g), z_g += mlp2(gelu(mlp1(norm(z_g)))), and the velocities mix with
    softmax over g of the mask logits, per landmark."""
    import torch.nn.functional as F

    from training.models.generator import Branches

    torch.manual_seed(0)
    cfg = GeneratorConfig()
    br = Branches(cfg)
    torch.nn.init.normal_(br.mask.weight, std=0.5)  # zero at init: make the mix uneven
    torch.nn.init.normal_(br.mask.bias, std=1.0)
    b, g = 5, len(cfg.branch_levels)
    h, emb = torch.randn(b, cfg.lstm_hidden), torch.randn(b, cfg.landmark_embed)
    audio = torch.randn(b, g, cfg.audio_channels)
    shared = torch.cat([h, emb], -1)[:, None, :].expand(-1, g, -1)
    z = F.gelu(br.inp(torch.cat([shared, audio], -1)))
    z = z + br.mlp2(F.gelu(br.mlp1(br.norm(z))))
    vel = br.velocity(z).unflatten(-1, (-1, 2))  # (B, G, 68, 2)
    weights = torch.softmax(br.mask(z), dim=1)  # (B, G, 68)
    expected = (weights.unsqueeze(-1) * vel).sum(dim=1)
    with torch.no_grad():
        got = br(h, emb, audio)
    assert got.shape == (b, cfg.num_landmarks, 2)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=2e-5)  # float32 rounding of 640-term sums
