"""Generator training: losses, discriminators, and a short `msync train` run with checkpoints and resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoint import save_module
from training.losses import level_windows, multiscale_sync_loss
from training.models.discriminators import DiscriminatorConfig, Discriminators, hinge_d, hinge_g
from training.models.syncer import SyncerConfig, SyncerPyramid

REPO = Path(__file__).resolve().parents[1]
TINY_SYNC = SyncerConfig(
    embed_dim=16, audio_widths=(16, 16), audio_depths=(1, 1), landmark_widths=(16,), landmark_depths=(1,)
)


def test_level_windows_pair_the_same_time_span():
    """At every level, window i of the landmarks and of the audio start at the same instant."""
    t = 41
    lm = torch.arange(t, dtype=torch.float32)[None, :, None, None].expand(1, t, 68, 2)
    mf = (torch.arange(4 * t, dtype=torch.float32) / 4)[None, :, None].expand(1, 4 * t, 26)
    for lvl in range(4):
        lw, aw = level_windows(lm, mf, lvl, kernel=1)
        assert torch.allclose(lw[0, :, 0, 0, 0], aw[0, :, 0, 0])  # kernel 1: pure decimation, times compare
        assert lw.shape[2] == 5 and aw.shape[2] == 20


def test_sync_loss_gradients_reach_landmarks_not_syncers():
    """The frozen syncers pass gradients to the generated landmarks and take none themselves."""
    syncers = SyncerPyramid(TINY_SYNC).eval()
    for p in syncers.parameters():
        p.requires_grad_(False)
    lm = torch.rand(2, 41, 68, 2, requires_grad=True)
    loss, cos = multiscale_sync_loss(syncers, lm, torch.randn(2, 164, 26))
    loss.backward()
    assert lm.grad is not None and lm.grad.abs().sum() > 0
    assert set(cos) == {0, 1, 2, 3}
    assert all(p.grad is None for p in syncers.parameters())


def test_discriminators_and_hinge():
    """Scores have the right shapes (pairs halve the batch) and the hinge losses behave."""
    d = Discriminators(DiscriminatorConfig(embed_dim=32, lstm_hidden=32, projection_hidden=32))
    out = d(torch.rand(4, 1, 68, 2), torch.rand(4, 40, 68, 2))
    assert out["frame"].shape == (4, 40) and out["sequence"].shape == (4,) and out["pair"].shape == (2,)
    assert hinge_d(torch.full((3,), 2.0), torch.full((3,), -2.0)) == 0
    assert hinge_g(torch.ones(3)) == -1
    with pytest.raises(ValueError, match="even"):
        d(torch.rand(3, 1, 68, 2), torch.rand(3, 40, 68, 2))


@pytest.mark.slow
def test_msync_train_smoke_and_resume(shared_data, tmp_path):
    """A few iterations write generator/discriminator checkpoints, metrics, curves and a sample video; a second
    call resumes."""
    save_module(tmp_path / "sync", SyncerPyramid(TINY_SYNC), {"kind": "syncer_pyramid", "syncer": TINY_SYNC})
    out = tmp_path / "gen"
    base = [
        sys.executable,
        "-m",
        "training.train_generator",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"syncers={tmp_path / 'sync'}",
        "--set",
        "max_clips=30",
        "--set",
        "batch_size=2",
        "--set",
        "seq_len=12",
        "--set",
        "log_every=1",
        "--set",
        "eval_every=2",
        "--set",
        "checkpoint_every=2",
        "--set",
        "sample_every=2",
        "--set",
        "threads=1",
        "--set",
        "generator.audio_channels=16",
        "--set",
        "generator.landmark_embed=16",
        "--set",
        "generator.lstm_hidden=16",
        "--set",
        "generator.branch_hidden=16",
        "--set",
        "discriminator.embed_dim=16",
        "--set",
        "discriminator.lstm_hidden=16",
        "--set",
        "discriminator.projection_hidden=16",
        "--set",
        "discriminator.windows=[5,10]",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(base + ["--set", "steps=2"], check=True, cwd=REPO, env=env, timeout=600, capture_output=True)
    for name in (
        "generator.safetensors",
        "generator.json",
        "checkpoint.safetensors",
        "discriminators.safetensors",
        "checkpoint.optim.safetensors",
        "metrics.jsonl",
        "curves.png",
        "result.json",
    ):
        assert (out / name).is_file(), name
    assert list((out / "samples").glob("*.mp4"))
    meta = json.loads((out / "generator.json").read_text())
    assert meta["kind"] == "generator" and len(meta["reference_face"]) == 68
    assert meta["training_data"]["clips"] > 0
    proc = subprocess.run(
        base + ["--set", "steps=3"], check=True, cwd=REPO, env=env, timeout=600, capture_output=True, text=True
    )
    assert "resuming" in proc.stdout and "at step 2" in proc.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 3 and result["val"]["finite"]
    # A warm start: a new run (anchored, with the reference input) from this run's checkpoint and discriminators.
    warm = tmp_path / "warm"
    argv = [a if a != str(out) else str(warm) for a in base]
    proc = subprocess.run(
        argv
        + [
            "--set",
            "steps=1",
            "--set",
            f"init_from={out / 'checkpoint'}",
            "--set",
            "generator.anchor_rate=0.05",
            "--set",
            "generator.reference_input=true",
        ],
        check=True,
        cwd=REPO,
        env=env,
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert "warm start from" in proc.stdout and "its discriminators" in proc.stdout
    assert "adapted landmark_encoder.0.weight" in proc.stdout
    warm_meta = json.loads((warm / "generator.json").read_text())
    assert warm_meta["generator"]["anchor_rate"] == 0.05 and warm_meta["generator"]["reference_input"] is True
    bad = subprocess.run(
        argv + ["--no-resume", "--set", "steps=1", "--set", f"init_from={tmp_path / 'nope'}"],
        cwd=REPO,
        env=env,
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "init_from: no checkpoint" in bad.stderr and "Traceback" not in bad.stderr


def test_validation_plausibility_with_the_eval_threshold():
    """`eval_plausibility_tau`: the prior's tau (here the 95th percentile of training frames) leaves about 5 % of
    held-out ground truth implausible, the eval's tau (99th percentile of held-out ground truth) about 1 %, the
    way `msync eval` calibrates its plausibility column."""
    import types

    import numpy as np
    from test_evaluate import _shapes

    from training.shape_prior import ShapePrior
    from training.train_generator import eval_plausibility_tau

    prior = ShapePrior.fit(_shapes(600, seed=1), quantile=95.0)
    held = _shapes(1000, seed=2)
    segs = [types.SimpleNamespace(landmarks=held[:500]), types.SimpleNamespace(landmarks=held[500:])]
    tau = eval_plausibility_tau(prior, segs)
    d = prior.distance(torch.tensor(held, dtype=torch.float32)).numpy()
    assert tau is not None and tau > float(prior.threshold)
    assert np.mean(d <= tau) == pytest.approx(0.99, abs=0.002)
    assert 0.9 < np.mean(d <= float(prior.threshold)) < 0.98
    assert eval_plausibility_tau(prior, []) is None


@pytest.mark.slow
def test_discriminator_warmup_steps_leave_the_generator_unchanged(shared_data, tmp_path):
    """`d_warmup_steps`: the first steps update the discriminators only (the generator's weights stay bit-equal and
    no generator loss is logged); the step after them updates the generator. Out of range is refused."""
    from train_helpers import tiny_train_settings

    from training.config_io import load_config
    from training.train_generator import GeneratorTrainer, TrainGeneratorConfig

    sets = {**tiny_train_settings(tmp_path), "steps": 3, "d_warmup_steps": 2, "eval_every": 100,
            "head_angle_weight": 1.0, "head_angle_momentum": 0.5}  # fmt: skip
    cfg = load_config(TrainGeneratorConfig, None, [f"{k}={json.dumps(v)}" for k, v in sets.items()])
    trainer = GeneratorTrainer(cfg, tmp_path / "run")
    snaps: list[tuple[dict, dict]] = []
    running: list[object] = []  # the head-angle running bias after each step: untouched by warm-up steps

    def snapshot(t: GeneratorTrainer) -> None:
        snaps.append(tuple({k: v.detach().clone() for k, v in m.state_dict().items()} for m in (t.G, t.D)))

    first_step = trainer.train_step

    def train_step(rng):  # the weights before the first step, then the step itself
        if not snaps:
            snapshot(trainer)
        return first_step(rng)

    trainer.train_step = train_step  # type: ignore[method-assign]
    trainer.add_callback("on_step_end", snapshot)
    trainer.add_callback("on_step_end", lambda t: running.append(t.head_angle_bias))
    trainer.run(resume=False, progress=True)  # the progress bar's postfix reads warm-up records too

    def same(a: dict, b: dict) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    (g0, d0), (g1, d1), (g2, d2), (g3, _) = snaps
    assert same(g0, g1) and same(g1, g2)  # warm-up: the generator waits
    assert not same(d0, d1) and not same(d1, d2)  # while the critics learn
    assert not same(g2, g3)  # step 3: the generator's first update
    assert running[0] is None and running[1] is None and running[2] is not None
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if r.get("split") == "train"}
    assert "loss_g" not in train[1] and "loss_g" not in train[2] and "loss_d" in train[2]
    assert math.isfinite(train[3]["loss_g"])
    with pytest.raises(ValueError, match="d_warmup_steps"):
        TrainGeneratorConfig(steps=3, d_warmup_steps=3)
    assert TrainGeneratorConfig(steps=0).steps == 0  # a warm start that trains nothing stays allowed


@pytest.mark.slow
def test_freeze_audio_encoder_keeps_the_warm_start_encoder(shared_data, tmp_path, capsys):
    """`freeze_audio_encoder`: after a step from a warm start the audio stem and blocks equal the source checkpoint's
    bit for bit while the rest of the generator trained; without a warm start it is refused. A source without
    discriminators (as the shipped weights) gets a note pointing at `d_warmup_steps`."""
    from train_helpers import tiny_train_settings

    from training.checkpoint import load_state
    from training.config_io import load_config
    from training.train_generator import GeneratorTrainer, TrainGeneratorConfig

    def trainer(out: str, **extra) -> GeneratorTrainer:
        sets = {**tiny_train_settings(tmp_path), "eval_every": 100, **extra}
        cfg = load_config(TrainGeneratorConfig, None, [f"{k}={json.dumps(v)}" for k, v in sets.items()])
        return GeneratorTrainer(cfg, tmp_path / out)

    trainer("source").run(resume=False, progress=False)
    source = load_state(tmp_path / "source" / "checkpoint", "cpu")
    for f in (tmp_path / "source").glob("discriminators.*"):
        f.unlink()
    capsys.readouterr()
    frozen = trainer("frozen", init_from=str(tmp_path / "source" / "checkpoint"), freeze_audio_encoder=True, steps=1)
    frozen.run(resume=False, progress=False)
    out = capsys.readouterr().out
    assert "has no discriminators" in out and "audio encoder frozen" in out
    after = frozen.G.state_dict()
    encoder = [k for k in after if k.startswith(("audio_stem.", "blocks."))]
    assert encoder and all(torch.equal(after[k], source[k].float()) for k in encoder)
    assert any(not torch.equal(after[k], source[k].float()) for k in after if k.startswith("branches."))
    resumed = trainer("frozen", init_from=str(tmp_path / "source" / "checkpoint"), freeze_audio_encoder=True, steps=2)
    resumed.run(resume=True, progress=False)  # one more step from the frozen run's own checkpoint
    assert all(not p.requires_grad for p in [*resumed.G.audio_stem.parameters(), *resumed.G.blocks.parameters()])
    assert all(torch.equal(resumed.G.state_dict()[k], source[k].float()) for k in encoder)
    with pytest.raises(ValueError, match="freeze_audio_encoder"):
        TrainGeneratorConfig(freeze_audio_encoder=True)
    with pytest.raises(ValueError, match="distill_weight"):
        TrainGeneratorConfig(freeze_audio_encoder=True, init_from="x", distill_weight=1.0, distill_head="y")
