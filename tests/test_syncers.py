"""Syncer pyramid: input pyramid, encoders, losses, and the `msync train-syncers` trainer (single process,
resume, and two-process DDP on gloo)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training import pyramid
from training.models.syncer import SyncerConfig, SyncerPyramid, infonce_loss, load_pyramid, syncnet_loss

TINY = SyncerConfig(
    embed_dim=16, audio_widths=(16, 16), audio_depths=(1, 1), landmark_widths=(16,), landmark_depths=(1,)
)
REPO = Path(__file__).resolve().parents[1]


def test_pyramid_halves_rate_and_blurs():
    """Each level is a centred moving average then [::2]; a constant stays constant, lengths halve (ceil)."""
    x = np.ones((75, 3), dtype=np.float32)
    levels = pyramid.build(x, 4, 7)
    assert [len(l) for l in levels] == [75, 38, 19, 10]
    assert all(np.allclose(l, 1.0) for l in levels)
    ramp = np.arange(20, dtype=np.float64)[:, None]
    down = pyramid.downsample(ramp, 3)
    assert np.allclose(down[1:-1, 0], ramp[2:-2:2, 0])  # centred: the average of a ramp is its middle value


def test_pyramid_removes_fast_oscillation():
    """A +-1 alternation at the frame rate leaves no variation after one level (an odd box keeps 1/k of it,
    which decimation folds into a constant that segment centring removes)."""
    x = np.tile([1.0, -1.0], 64)[:, None]
    for lvl in (1, 3):
        inner = pyramid.level(x, lvl, 7)[3:-3]
        assert np.ptp(inner) < 1e-9 and np.abs(inner).max() <= 1 / 7 + 1e-9


def test_pyramid_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        pyramid.downsample(np.zeros((10, 2)), 4)


def test_embeddings_shapes_and_normalisation():
    """Every level maps (N,5,68,2) landmarks and (N,20,26) MFCC to unit vectors (InfoNCE) of embed_dim."""
    model = SyncerPyramid(TINY)
    lm = torch.rand(7, 5, 68, 2)
    mf = torch.randn(7, 20, 26)
    for lvl in range(4):
        e_a, e_x = model.embed(lvl, lm, mf)
        assert e_a.shape == e_x.shape == (7, 16)
        assert torch.allclose(e_a.norm(dim=-1), torch.ones(7), atol=1e-5)
    metric = SyncerPyramid(
        SyncerConfig(
            loss="syncnet",
            embed_dim=16,
            audio_widths=(16,),
            audio_depths=(1,),
            landmark_widths=(16,),
            landmark_depths=(1,),
        )
    )
    e_a, _ = metric.embed(0, lm, mf)
    assert not torch.allclose(e_a.norm(dim=-1), torch.ones(7))


def test_landmark_features_ignore_absolute_position():
    """Moving a whole segment in the crop does not change its features (only motion within it counts)."""
    lm = torch.rand(3, 5, 68, 2)
    for centering in ("sequence", "shape", "position"):
        model = SyncerPyramid(dataclasses.replace(TINY, landmark_centering=centering))
        assert torch.allclose(model.landmark_features(0, lm), model.landmark_features(0, lm + 0.2), atol=1e-5)


def test_sequence_centring_hides_face_shape_but_keeps_mouth_opening():
    """With "sequence" centring a speaker's static face shape is invisible, while how far the mouth is from
    its own average opening stays visible; "position" centring sees the face shape."""
    seq = torch.rand(1, 40, 68, 2) * 0.01 + 0.4
    other_face = seq + torch.rand(1, 1, 68, 2) * 0.05  # same motion, another face shape
    model = SyncerPyramid(TINY)
    a = model.landmark_features(0, model.prepare_sequence(seq)[:, :5])
    b = model.landmark_features(0, model.prepare_sequence(other_face)[:, :5])
    assert torch.allclose(a, b, atol=1e-4)
    opened = seq.clone()
    opened[:, :5, 57:60, 1] += 0.02  # the lower lip lower than on average during these 5 frames
    c = model.landmark_features(0, model.prepare_sequence(opened)[:, :5])
    assert not torch.allclose(a, c, atol=1e-3)
    pos = SyncerPyramid(dataclasses.replace(TINY, landmark_centering="position"))
    assert not torch.allclose(
        pos.landmark_features(0, seq[:, :5]), pos.landmark_features(0, other_face[:, :5]), atol=1e-3
    )


def test_losses_reward_aligned_embeddings():
    """Perfectly matched pairs give top-1 accuracy 1 and a lower loss than random pairs."""
    e = torch.nn.functional.normalize(torch.randn(2, 49, 32), dim=-1)
    loss_good, acc_good = infonce_loss(e, e, 0.1)
    loss_bad, _ = infonce_loss(e, torch.nn.functional.normalize(torch.randn(2, 49, 32), dim=-1), 0.1)
    assert acc_good == 1.0 and loss_good < loss_bad
    loss_good, acc_good = syncnet_loss(e * 3, e * 3, 2.0)
    assert acc_good == 1.0


def _train_cmd(out: Path, steps: int, extra=()):
    return [
        sys.executable,
        "-m",
        "training.train_syncers",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"steps={steps}",
        "--set",
        "max_clips=24",
        "--set",
        "log_every=2",
        "--set",
        "eval_every=4",
        "--set",
        "checkpoint_every=4",
        "--set",
        "eval_groups=1",
        "--set",
        "groups_per_level=1",
        "--set",
        "syncer.embed_dim=16",
        "--set",
        "syncer.audio_widths=[16,16]",
        "--set",
        "syncer.audio_depths=[1,1]",
        "--set",
        "syncer.landmark_widths=[16]",
        "--set",
        "syncer.landmark_depths=[1]",
        "--set",
        "threads=1",
        *extra,
    ]


@pytest.mark.slow
def test_train_checkpoint_and_resume(shared_data, tmp_path):
    """A short run writes safetensors+JSON checkpoints, metrics and curves; a second call resumes at its step."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "run"
    subprocess.run(_train_cmd(out, 4), check=True, cwd=REPO, env=env, timeout=300, capture_output=True)
    for name in (
        "checkpoint.safetensors",
        "checkpoint.json",
        "checkpoint.optim.safetensors",
        "syncers.safetensors",
        "syncers.json",
        "metrics.jsonl",
        "curves.png",
        "config.json",
        "result.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.pt")) and not list(out.glob("*.pkl"))
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 4
    proc = subprocess.run(
        _train_cmd(out, 6), check=True, cwd=REPO, env=env, timeout=300, capture_output=True, text=True
    )
    assert "resuming from" in proc.stdout and "at step 4" in proc.stdout
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 6
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and max(steps) == 6
    model = load_pyramid(out / "syncers")
    assert model.cfg.embed_dim == 16
    assert json.loads((out / "result.json").read_text())["weights"] == "best validation per level"


def test_per_level_best_false_keeps_the_final_weights(shared_data, tmp_path):
    """`per_level_best=false` (metric v3): OUT/syncers holds the final weights, the checkpoint's, whatever the
    validation losses did."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "run"
    cmd = _train_cmd(out, 8, ("--set", "per_level_best=false"))
    subprocess.run(cmd, check=True, cwd=REPO, env=env, timeout=300, capture_output=True)
    result = json.loads((out / "result.json").read_text())
    assert result["weights"] == "final" and result["best_val_step_per_level"]
    final, ckpt = load_pyramid(out / "syncers").state_dict(), load_pyramid(out / "checkpoint").state_dict()
    assert all(torch.equal(final[k], ckpt[k]) for k in final)


def test_load_pyramid_refuses_corrupt_files(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"kind": "syncer_pyramid", "syncer": {"embed_dim": 16}}))
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        load_pyramid(tmp_path / "x")
    (tmp_path / "y.json").write_text(json.dumps({"kind": "generator"}))
    with pytest.raises(ValueError, match="not a syncer"):
        load_pyramid(tmp_path / "y")


@pytest.mark.slow
def test_ddp_two_cpu_processes(shared_data, tmp_path):
    """torchrun with two processes on gloo trains the same model: world size 2 in the metrics, a loadable result."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29517",
        "-m",
        "training.train_syncers",
        "--set",
        "device=cpu",
    ] + _train_cmd(out, 4)[3:]
    proc = subprocess.run(cmd, cwd=REPO, env=env, timeout=400, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("world_size") == 2 for r in records)
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 4
    load_pyramid(out / "syncers")


def test_window_normalisation_ignores_face_size_and_place():
    """ "window" centring: a face moved and scaled inside the crop gives the same features (mouth copy too)."""
    from training.models.syncer import window_normalise

    lm = torch.rand(3, 5, 68, 2)
    moved = lm * 1.7 + torch.tensor([0.2, -0.1])
    a, b = window_normalise(lm, True), window_normalise(moved, True)
    assert a.shape == (3, 5, 2 * (68 + 20))
    assert torch.allclose(a, b, atol=1e-4)
    cfg = dataclasses.replace(TINY, landmark_centering="window", mouth_emphasis=True)
    model = SyncerPyramid(cfg)
    e_a, e_x = model.embed(0, lm, torch.randn(3, 20, 26))
    assert e_x.shape == (3, 16) and model.position_mean.shape == (4, 176)


def test_shift_loss_prefers_the_aligned_audio():
    """The hard-negative term is low when the aligned candidate is nearest and high when a shifted one is."""
    from training.models.syncer import shift_loss

    e_x = torch.zeros(4, 8)
    near = torch.zeros(4, 5, 8)
    near[:, 1:] += 3.0
    far = torch.zeros(4, 5, 8)
    far[:, 0] += 3.0
    good, acc_good = shift_loss(near, e_x, 2.0)
    bad, acc_bad = shift_loss(far, e_x, 2.0)
    assert acc_good == 1.0 and acc_bad == 0.0 and good < 0.1 < bad


def test_shift_groups_take_the_same_clip_at_other_times():
    """`sample_shift_group`: candidate 0 is the aligned audio, the others the same segment shifted by 1..max_shift
    samples (read back from a log-mel whose every row holds its own time index)."""
    from stream_engine.features import FrontEndConfig, mfcc_from_logmel
    from training.data.clips import Segment
    from training.data.syncer_batches import syncer_store

    fe = FrontEndConfig()
    n = 200
    logmel = np.repeat(np.arange(4 * n, dtype=np.float64)[:, None], fe.n_mels, axis=1)
    seg = Segment(
        "c",
        "id",
        0,
        np.random.rand(n, 68, 2).astype(np.float32),
        np.zeros(640 * n, np.float32),
        logmel.astype(np.float32),
    )
    store = syncer_store([seg], dataclasses.replace(TINY, landmark_centering="window"), fe)
    lm, mf = store.sample_shift_group(0, np.random.default_rng(0), 6, 3, 4)
    assert lm.shape == (6, 5, 68, 2) and mf.shape == (6, 5, 20, 26)
    c0 = mfcc_from_logmel(logmel[:2], fe)[:, 0]
    per_row = c0[1] - c0[0]  # c0 grows linearly with the row's value
    shifts = (mf[:, 1:, 0, 0] - mf[:, :1, 0, 0]) / per_row / 4.0  # in landmark samples
    assert np.allclose(shifts, np.round(shifts), atol=1e-2)
    assert np.all(np.abs(np.round(shifts)) >= 1) and np.all(np.abs(np.round(shifts)) <= 3)


def test_sequence_centring_with_iod_scale_ignores_face_size():
    """`iod_scale`: the same motion on a face twice as large gives the same prepared sequence (numpy and torch),
    and the mouth copy adds 2 x 20 channels in sequence mode."""
    rng = np.random.default_rng(0)
    x = rng.random((40, 68, 2)).astype(np.float32)
    cfg = dataclasses.replace(TINY, iod_scale=True, mouth_emphasis=True)
    model = SyncerPyramid(cfg)
    a, b = model.prepare_sequence(x), model.prepare_sequence(2.0 * x + 0.3)
    assert np.allclose(a, b, atol=1e-5)
    assert torch.allclose(model.prepare_sequence(torch.from_numpy(x)), torch.from_numpy(a), atol=1e-5)
    assert not np.allclose(SyncerPyramid(TINY).prepare_sequence(2.0 * x), a, atol=1e-3)
    pos, vel = model.raw_landmark_features(torch.from_numpy(a[None, :5]))
    assert pos.shape == vel.shape == (1, 5, 2 * (68 + 20))


def test_given_audio_features_replace_mfcc_unchanged():
    """`PyramidStore(audio_features=...)` (the teacher-input syncers): groups and shift groups carry the given
    features at the MFCC rate (4 rows per landmark frame), not transformed and not augmented; the stats are theirs."""
    from stream_engine.features import FrontEndConfig
    from training.data.augment import AugmentConfig
    from training.data.clips import Segment
    from training.data.syncer_batches import PyramidStore

    fe = FrontEndConfig()
    n, d = 120, 7
    feats = np.repeat(np.arange(4 * n, dtype=np.float32)[:, None], d, axis=1)  # every row holds its time index
    seg = Segment(
        "c",
        "id",
        0,
        np.random.rand(n, 68, 2).astype(np.float32),
        np.zeros(640 * n, np.float32),
        np.zeros((4 * n, fe.n_mels), np.float32),
    )
    store = PyramidStore([seg], 4, 7, fe, audio_features=[feats])
    rng = np.random.default_rng(0)
    g = store.sample_group(0, rng, 6, 6, AugmentConfig(gain_db=10.0, noise_prob=1.0))
    assert g.mfcc.shape == (6, 20, d)
    np.testing.assert_array_equal(g.mfcc[:, :, 0], 4 * g.position[:, None] + np.arange(20)[None])
    lm, mf = store.sample_shift_group(0, rng, 3, 2, 2, AugmentConfig(gain_db=10.0, noise_prob=1.0))
    assert mf.shape == (3, 3, 20, d) and np.all(np.abs(mf[:, 1:, 0, 0] - mf[:, :1, 0, 0]) % 4 == 0)
    mean, std = store.mfcc_stats()
    assert mean.shape == (d,) and np.isclose(mean[0], feats[:, 0].mean())
