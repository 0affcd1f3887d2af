"""The resting-pose correction (`training.pose_bias`): its patterns turn the head about one axis each, it moves the
merged velocity by exactly the pattern, and its fit cancels a planted constant push."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.reference_face import neutral_face
from stream_engine.signals import RIGID_POINTS
from training import pose_bias as pb
from training.head_pose import head_angles
from training.models.generator import Generator, GeneratorConfig

SHARED = Path(__file__).resolve().parents[2] / "shared"
CHECKPOINT = Path(__file__).resolve().parents[1] / "training" / "weights" / "generator"


def _angles(face: np.ndarray, ref: np.ndarray) -> np.ndarray:
    x = torch.tensor(face, dtype=torch.float32)[None, None]
    return head_angles(x, torch.tensor(ref, dtype=torch.float32)[None]).numpy()[0, 0]


def test_each_pattern_turns_the_head_about_its_own_axis_and_does_not_slide_it():
    face = np.asarray(neutral_face(), np.float32)
    patterns = pb.pose_patterns(face)
    assert patterns.shape == (3, 68, 2)
    np.testing.assert_allclose(patterns[:, list(RIGID_POINTS)].mean(axis=1), 0.0, atol=1e-6)
    for k, (name, sign) in enumerate(zip(pb.ANGLES, (1.0, -1.0, -1.0))):  # the signs the docstring gives
        moved = _angles(face + 0.02 * patterns[k], face)
        assert sign * moved[k] > 0.5, (name, moved)
        others = np.delete(moved, k)
        assert np.abs(others).max() < 0.1 * abs(moved[k]), (name, moved)


def test_pose_patterns_refuse_a_bad_face():
    with pytest.raises(ValueError, match="68, 2"):
        pb.pose_patterns(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="finite"):
        pb.pose_patterns(np.full((68, 2), np.nan))


def test_the_correction_moves_the_merged_velocity_by_exactly_the_pattern():
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig()).eval()
    with torch.no_grad():  # uneven branch mixes, so that an exact shift is not a coincidence of equal weights
        gen.branches.mask.weight.normal_(0.0, 0.5)
    cfg = gen.cfg
    h = torch.randn(3, cfg.lstm_hidden)
    emb = torch.randn(3, cfg.landmark_embed)
    audio = torch.randn(3, len(cfg.branch_levels), cfg.audio_channels)
    face = np.asarray(neutral_face(), np.float32)
    c = np.array([2e-3, -1e-3, 1.5e-3])
    with torch.no_grad():
        before = gen.branches(h, emb, audio) * cfg.velocity_scale
        pb.apply_pose_correction(gen, c, face)
        after = gen.branches(h, emb, audio) * cfg.velocity_scale
    expected = np.tensordot(c, pb.pose_patterns(face), axes=1)
    np.testing.assert_allclose((after - before).numpy(), np.broadcast_to(expected, (3, 68, 2)), atol=2e-7)
    with pytest.raises(ValueError, match="3 finite"):
        pb.apply_pose_correction(gen, [1.0, np.inf, 0.0], face)


def _constant_push_generator(push, reference_gain=None) -> Generator:
    """A generator whose velocity is its bias alone (every product weight zero): a constant push, which the anchor
    turns into a steady pose away from the reference; with `reference_gain`, also a push by the reference's pose."""
    small = GeneratorConfig(
        audio_channels=16, landmark_embed=32, lstm_hidden=32, branch_hidden=32, anchor_rate=0.05,
        pose_anchor_rate=0.02, reference_input=True, reference_pose_gain=reference_gain,
    )  # fmt: skip
    gen = Generator(small).eval()
    with torch.no_grad():
        gen.branches.velocity.weight.zero_()
        gen.branches.velocity.bias.zero_()
    pb.apply_pose_correction(gen, push, np.asarray(neutral_face(), np.float32))
    return gen


def _rows(face: np.ndarray) -> pb.Rows:
    """Two noise segments; own references turned by a few degrees of yaw and of roll (so slopes are defined)."""
    rng = np.random.default_rng(0)
    patterns = pb.pose_patterns(face)
    refs = [face + 0.03 * patterns[0] - 0.02 * patterns[1], face - 0.03 * patterns[0] + 0.05 * patterns[2]]
    return pb.Rows(
        audios=[rng.normal(0.0, 0.1, 640 * 40).astype(np.float32) for _ in range(2)],
        own_refs=np.stack(refs).astype(np.float32),
        default_face=face,
        speakers=2,
    )


def test_the_fit_cancels_a_planted_push_and_a_planted_pull_toward_frontal():
    """A constant push and a push against the reference's own pose (what the shipped network does: a turned
    reference face settles part-way back to frontal) are both recovered, so every row ends near zero."""
    face = np.asarray(neutral_face(), np.float32)
    gen = _constant_push_generator([-1.5e-3, 1e-3, -8e-4], reference_gain=(-0.006, -0.01, -0.012))
    rows = _rows(face)
    cfg = pb.PoseBiasConfig(tail_seconds=6.0, silence_seconds=8.0, iterations=2)
    before = pb.measure(gen, rows, cfg)
    assert np.abs(before.rows()).max() > 1.0  # the planted push holds the head turned
    assert np.abs(before.own_after - before.default_after).max() > 1.0  # and the turned references pull back
    params, history = pb.fit(gen, rows, cfg, log=lambda s: None, reference_gain=True)
    np.testing.assert_allclose(params[3:], [0.006, 0.01, 0.012], rtol=0.1, atol=5e-4)
    after = pb.measure(pb.corrected(gen, params, face), rows, cfg)
    assert np.abs(after.residual()).max() < 0.1 * np.abs(before.residual()).max()
    assert len(history) == 2 and np.allclose(history[0]["rows"], before.rows())
    assert pb.corrected(gen, params, face).cfg.reference_pose_gain is not None


def test_by_default_the_fit_leaves_the_gain_untouched():
    face = np.asarray(neutral_face(), np.float32)
    gen = _constant_push_generator([-1.5e-3, 1e-3, -8e-4])
    cfg = pb.PoseBiasConfig(tail_seconds=6.0, silence_seconds=8.0, iterations=2)
    params, _ = pb.fit(gen, _rows(face), cfg, log=lambda s: None)  # the default: the velocity bias alone
    np.testing.assert_allclose(params[:3], [1.5e-3, -1e-3, 8e-4], rtol=0.05, atol=3e-5)
    assert (params[3:] == 0.0).all() and pb.corrected(gen, params, face).cfg.reference_pose_gain is None
    with pytest.raises(ValueError, match="6 finite"):
        pb.corrected(gen, params[:3], face)


def test_rollout_drops_the_look_ahead_frames_and_counts_speech_in_its_time_base():
    face = np.asarray(neutral_face(), np.float32)
    gen = _constant_push_generator([2e-3, 0.0, 0.0])
    audios = [np.zeros(640 * 40, np.float32), np.zeros(640 * 30, np.float32)]
    angles, lengths = pb.rollout(gen, audios, np.stack([face, face]), tail_frames=10, seed=0)
    lookahead = gen.cfg.lookahead_frames
    assert angles.shape == (2, 50 - lookahead, 3) and lengths == [40 - lookahead, 30 - lookahead]
    assert angles[0, 0, 0] > 0.0  # the first emitted frame has already moved: the unchanged reference is dropped
    assert np.all(np.diff(angles[0, :, 0]) > 0.0)  # a constant push turns the head steadily toward its rest


def test_reference_slopes_read_a_planted_pull_toward_frontal():
    """A first frame turned by a degrees (relative to the default face) that settles -0.25 a from it: slope -0.25
    on yaw, and 0 on the angles that do not depend on it."""
    face = np.asarray(neutral_face(), np.float32)
    refs = np.stack([face + c * pb.pose_patterns(face)[0] for c in (-0.1, -0.03, 0.05, 0.12)]).astype(np.float32)
    rows = pb.Rows(audios=[np.zeros(640, np.float32)] * 4, own_refs=refs, default_face=face, speakers=4)
    pose = np.stack([_angles(r, face) for r in refs])
    speech = np.stack([-0.25 * pose[:, 0], np.full(4, 0.3), np.zeros(4)], axis=1)
    m = pb.Measurement(np.zeros(3), np.zeros(3), speech, np.zeros((4, 3)), np.zeros(3))
    np.testing.assert_allclose(pb.reference_slopes(m, rows), [-0.25, 0.0, 0.0], atol=1e-6)


@pytest.mark.skipif(
    not (SHARED / "data" / "manifest.tsv").is_file(), reason="../shared/data is not beside this checkout"
)
def test_load_rows_draws_distinct_speakers_and_caps_their_segments():
    face = np.asarray(neutral_face(), np.float32)
    one = pb.load_rows(pb.PoseBiasConfig(data_dir=str(SHARED / "data"), identities=3, segments_per_identity=1), face)
    assert one.speakers == 3 and len(one.audios) == 3
    two = pb.load_rows(
        pb.PoseBiasConfig(data_dir=str(SHARED / "data"), identities=3, segments_per_identity=2, max_seconds=2.0), face
    )
    assert two.speakers == 3 and 3 <= len(two.audios) <= 6 and two.own_refs.shape == (len(two.audios), 68, 2)
    assert all(len(a) <= 2 * 16000 and len(a) % 640 == 0 for a in two.audios)


def test_config_refuses_what_cannot_be_measured():
    with pytest.raises(ValueError, match="split"):
        pb.PoseBiasConfig(split="dev")
    with pytest.raises(ValueError, match="2.5 s"):
        pb.PoseBiasConfig(tail_seconds=2.02)  # 50 frames of settling would leave nothing to average
    with pytest.raises(ValueError, match="finite"):
        pb.PoseBiasConfig(tail_seconds=float("inf"))
    with pytest.raises(ValueError, match="at least 1 s"):
        pb.PoseBiasConfig(max_seconds=0.04)
    with pytest.raises(ValueError, match="probe"):
        pb.PoseBiasConfig(probe=0.0)


@pytest.mark.skipif(
    not (SHARED / "data" / "manifest.tsv").is_file(), reason="../shared/data is not beside this checkout"
)
def test_command_writes_a_loadable_corrected_checkpoint_and_its_report(tmp_path, capsys):
    from training.models.generator import load_generator

    out = tmp_path / "corrected"
    argv = ["--checkpoint", str(CHECKPOINT), "--out", str(out), "--data", str(SHARED / "data"),
            "--identities", "2", "--segments-per-identity", "1", "--max-seconds", "2", "--tail-seconds", "2.5",
            "--silence-seconds", "3", "--iterations", "1", "--model-version", "test-0", "--reference-gain"]  # fmt: skip
    assert pb.main(argv) == 0
    gen, meta = load_generator(out)
    report = json.loads((tmp_path / "corrected.pose_bias.json").read_text())
    assert meta["model_version"] == "test-0"
    assert meta["pose_bias_correction"]["parameters"] == report["parameters"]
    assert list(report["parameters"]) == list(pb.PARAMETERS)
    source, source_meta = load_generator(CHECKPOINT)
    old = np.zeros(3) if source.cfg.reference_pose_gain is None else np.asarray(source.cfg.reference_pose_gain)
    fitted = [report["parameters"][k] for k in ("g_yaw", "g_pitch", "g_roll")]
    assert gen.cfg.reference_pose_gain == pytest.approx(old + fitted)  # the gains add to the checkpoint's own
    assert len(report["after"]["rows"]) == len(pb.ROW_NAMES) and report["speakers"] == 2
    moved = (gen.branches.velocity.bias - source.branches.velocity.bias).abs().max().item()
    assert moved > 0.0
    untouched = [k for k, v in source.state_dict().items() if k != "branches.velocity.bias"]
    assert all(torch.equal(source.state_dict()[k], gen.state_dict()[k]) for k in untouched)
    assert "before -> after" in capsys.readouterr().out
    assert "calibrated by `python -m training.pose_bias`" in meta["note"]
    assert meta["pose_bias_correction"]["source_note"] == source_meta.get("note", "")
    for bad in (["--tail-seconds", "1"], ["--max-seconds", "0"], ["--tail-seconds", "inf"]):
        with pytest.raises(SystemExit):
            pb.main(argv[:4] + bad)
    with pytest.raises(SystemExit):  # a missing checkpoint is a usage error, not a traceback
        pb.main(["--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
