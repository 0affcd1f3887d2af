"""Full-rate syncer levels (`SyncerConfig.full_rate_levels`, metric syncers v4): shapes, what a level's window
reads, config errors, the store's windows and foreign negatives, partial training from a checkpoint, and that
the older pyramids still load unchanged."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.models.syncer import SyncerConfig, SyncerPyramid, load_pyramid

REPO = Path(__file__).resolve().parents[1]
TINY = SyncerConfig(
    loss="syncnet",
    embed_dim=16,
    audio_widths=(16, 16),
    audio_depths=(1, 1),
    landmark_widths=(16,),
    landmark_depths=(1,),
    frame_proj=8,
    full_rate_levels=(2, 3),
)


def test_window_and_embedding_shapes_per_level():
    """A pyramid level reads 5/20 samples; a full-rate level l reads 5·2^l frames and 20·2^l MFCC rows of the
    same span, stepping one level-l sample; every level gives (N, embed_dim)."""
    assert [TINY.window(l) for l in range(4)] == [(5, 20, 1), (5, 20, 1), (20, 80, 4), (40, 160, 8)]
    assert [TINY.input_level(l) for l in range(4)] == [0, 1, 0, 0]
    model = SyncerPyramid(TINY).eval()
    for lvl in range(4):
        nl, na, _ = TINY.window(lvl)
        e_a, e_x = model.embed(lvl, torch.rand(3, nl, 68, 2), torch.randn(3, na, 26))
        assert e_a.shape == e_x.shape == (3, 16)


def test_wrong_window_length_is_refused():
    model = SyncerPyramid(TINY)
    with pytest.raises(ValueError, match="level 3 reads windows of 40 landmark samples and 160 audio rows"):
        model.embed(3, torch.rand(2, 5, 68, 2), torch.randn(2, 20, 26))


def test_config_validation_errors():
    with pytest.raises(ValueError, match="full_rate_levels"):
        SyncerConfig(full_rate_levels=(4,))
    with pytest.raises(ValueError, match="full_rate_levels"):
        SyncerConfig(full_rate_levels=(2, 2))
    with pytest.raises(ValueError, match="frame_proj"):
        SyncerConfig(frame_proj=0)
    from training.train_syncers import TrainSyncersConfig

    with pytest.raises(ValueError, match="init_from"):
        TrainSyncersConfig(syncer=TINY, train_levels=(2, 3))
    with pytest.raises(ValueError, match="train_levels"):
        TrainSyncersConfig(syncer=TINY, train_levels=(5,), init_from="x")
    with pytest.raises(ValueError, match="foreign_negatives"):
        TrainSyncersConfig(syncer=TINY, foreign_negatives=(0, 8))
    assert TrainSyncersConfig(syncer=TINY, train_levels=(3, 2), init_from="x").levels == [2, 3]


def test_a_full_rate_level_sees_only_its_span():
    """Window i of full-rate level 3 covers frames [8i, 8i+40) and MFCC rows [32i, 32i+160): changing anything
    outside leaves its embedding as it was, changing one frame inside moves it. A pooled level-3 window reaches
    further (the 7-tap pooling at each level spreads it), which is what the full-rate levels avoid."""
    from training.metrics.sync import embed_level, level_window

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    lm = (0.5 + 0.02 * rng.standard_normal((80, 68, 2))).astype(np.float32)
    mf = rng.standard_normal((320, 26)).astype(np.float32)
    model = SyncerPyramid(TINY).eval()
    assert level_window(TINY, 3) == (0, 40, 160, 8)
    ex, ea = embed_level(model, 3, lm, mf)
    assert ex.shape == ea.shape == (6, 16)  # (80 - 40) // 8 + 1
    lm2, mf2 = lm.copy(), mf.copy()
    lm2[48:] += 0.05
    mf2[192:] += 1.0  # after window 1's span (frames 8..47, rows 32..191)
    ex2, ea2 = embed_level(model, 3, lm2, mf2)
    np.testing.assert_allclose(ex2[:2], ex[:2], atol=1e-6)
    np.testing.assert_allclose(ea2[:2], ea[:2], atol=1e-6)
    assert np.abs(ex2[2:] - ex[2:]).max() > 1e-4 and np.abs(ea2[2:] - ea[2:]).max() > 1e-4
    lm3 = lm.copy()
    lm3[47, 60] += 0.05  # the last frame of window 1
    assert np.abs(embed_level(model, 3, lm3, mf)[0][1] - ex[1]).max() > 1e-5

    from training import pyramid

    pooled = SyncerPyramid(dataclasses.replace(TINY, full_rate_levels=())).eval()
    a = embed_level(pooled, 3, pyramid.level(lm, 3, 7), pyramid.level(mf, 3, 7))[0]
    b = embed_level(pooled, 3, pyramid.level(lm2, 3, 7), pyramid.level(mf2, 3, 7))[0]
    assert np.abs(a[1] - b[1]).max() > 1e-5  # the pooled window 1 (nominally frames 8..47) feels frames >= 48


def test_av_sync_full_rate_windows_and_reason():
    from training.metrics.sync import av_sync

    model = SyncerPyramid(TINY).eval()
    rng = np.random.default_rng(1)
    lm = (0.5 + 0.02 * rng.standard_normal((80, 68, 2))).astype(np.float32)
    mf = rng.standard_normal((320, 26)).astype(np.float32)
    res = av_sync(model, lm, mf, vshift=15, padding="valid")
    assert [r["num_windows"] for r in res] == [76, 36, 16, 6]
    assert [r["segment_ms"] for r in res] == [200.0, 400.0, 800.0, 1600.0]
    short = av_sync(model, lm[:39], mf[:156], levels=[3])[0]
    assert short["offset_frames"] is None and "level-3 40/160-sample window" in short["reason"]


def _segment(name: str, ident: str, n: int, offset: float, d: int = 5):
    from stream_engine.features import FrontEndConfig
    from training.data.clips import Segment

    fe = FrontEndConfig()
    feats = np.repeat((offset + np.arange(4 * n, dtype=np.float32))[:, None], d, axis=1)  # row = its time index
    lm = np.random.default_rng(0).random((n, 68, 2)).astype(np.float32)
    return Segment(name, ident, 0, lm, np.zeros(640 * n, np.float32), np.zeros((4 * n, fe.n_mels), np.float32)), feats


def test_store_reads_full_rate_windows_of_the_level_span():
    from stream_engine.features import FrontEndConfig
    from training.data.syncer_batches import PyramidStore

    seg, feats = _segment("c", "id", 200, 0.0)
    store = PyramidStore([seg], 4, 7, FrontEndConfig(), audio_features=[feats], full_rate_levels=(2, 3))
    assert store.num_positions(3)[0] == (200 - 40) // 8 + 1
    assert store.num_positions(1)[0] == 100 - 4  # pooled level: ceil(200 / 2) samples
    g = store.sample_group(3, np.random.default_rng(0), 6, 6)
    assert g.landmarks.shape == (6, 40, 68, 2) and g.mfcc.shape == (6, 160, 5)
    np.testing.assert_array_equal(g.mfcc[:, :, 0], 32 * g.position[:, None] + np.arange(160)[None])
    lm, mf = store.sample_shift_group(2, np.random.default_rng(1), 4, 3, 3)
    assert lm.shape == (4, 20, 68, 2) and mf.shape == (4, 4, 80, 5)
    shifts = (mf[:, 1:, 0, 0] - mf[:, :1, 0, 0]) / 16.0  # in level-2 samples (4 frames = 16 rows)
    assert np.all(shifts == np.round(shifts)) and np.all((np.abs(shifts) >= 1) & (np.abs(shifts) <= 3))


def test_foreign_negatives_come_from_other_speakers():
    from stream_engine.features import FrontEndConfig
    from training.data.syncer_batches import PyramidStore

    (a, fa), (b, fb), (c, fc) = (
        _segment("a", "x", 120, 0.0),
        _segment("b", "x", 120, 1e4),
        _segment("c", "y", 120, 2e4),
    )
    store = PyramidStore([a, b, c], 4, 7, FrontEndConfig(), audio_features=[fa, fb, fc], full_rate_levels=(3,))
    lm, mf = store.sample_shift_group(3, np.random.default_rng(0), 12, 3, 2, num_foreign=3)
    assert mf.shape == (12, 6, 160, 5)
    own = mf[:, :3, 0, 0] // 1e4  # aligned + shifted: the anchor's own segment
    foreign = mf[:, 3:, 0, 0] // 1e4
    assert np.all(own == own[:, :1])
    # Speaker "x" anchors (segments a, b) only get segment c's audio; speaker "y" anchors get a's or b's.
    assert np.all(np.where(own[:, :1] == 2, foreign < 2, foreign == 2))


def test_old_checkpoints_load_as_pooled_pyramids():
    """v1-v3 checkpoints (no full_rate_levels in their JSON) load, read pooled 5/20-sample windows at every level,
    and give the same embedding as their own weights applied by hand."""
    for name in ("metric_syncers", "metric_syncers_v2", "metric_syncers_v3"):
        path = REPO / "training" / "weights" / name
        pyr = load_pyramid(path)
        assert pyr.cfg.full_rate_levels == () and all(pyr.cfg.window(l) == (5, 20, 1) for l in range(4))
        lm, mf = torch.rand(2, 5, 68, 2), torch.randn(2, 20, pyr.cfg.n_mfcc)
        e_a, e_x = pyr.embed(3, lm, mf)
        level = pyr.levels[3]
        assert torch.allclose(e_a, level.audio_encoder(pyr.normalise_mfcc(mf)))
        assert torch.allclose(e_x, level.landmark_encoder(pyr.landmark_features(3, lm)))


def test_partial_training_copies_and_freezes_the_other_levels(shared_data, tmp_path):
    """train_levels=[2,3] with init_from: levels 0-1 and the MFCC statistics are the source's bit for bit after
    training, and only levels 2-3 (new full-rate encoders, with foreign negatives) are trained."""
    from training.checkpoint import save_module

    src_cfg = dataclasses.replace(TINY, full_rate_levels=())
    torch.manual_seed(3)
    src = SyncerPyramid(src_cfg)
    src.mfcc_mean.fill_(0.25)
    src.position_std[0].fill_(2.0)
    save_module(tmp_path / "src", src, {"kind": "syncer_pyramid", "syncer": src_cfg})
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "training.train_syncers", "--out", str(out), "--no-progress"]
    sets = {
        "data_dir": str(shared_data),
        "steps": 3,
        "max_clips": 24,
        "eval_every": 3,
        "checkpoint_every": 3,
        "eval_groups": 1,
        "groups_per_level": 1,
        "threads": 1,
        "shift_negatives": 2,
        "shift_anchors": 4,
        "foreign_negatives": "[0,0,2,2]",
        "train_levels": "[2,3]",
        "init_from": str(tmp_path / "src"),
        "syncer.loss": "syncnet",
        "syncer.embed_dim": 16,
        "syncer.audio_widths": "[16,16]",
        "syncer.audio_depths": "[1,1]",
        "syncer.landmark_widths": "[16]",
        "syncer.landmark_depths": "[1]",
        "syncer.frame_proj": 8,
        "syncer.full_rate_levels": "[2,3]",
    }
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, check=True, cwd=REPO, env=env, timeout=300, capture_output=True)
    got = load_pyramid(out / "syncers")
    assert got.cfg.full_rate_levels == (2, 3)
    for lvl in (0, 1):
        a, b = got.levels[lvl].state_dict(), src.levels[lvl].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(got.position_std[lvl], src.position_std[lvl])
    assert torch.equal(got.mfcc_mean, src.mfcc_mean)
    import json

    train = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    keys = {k for r in train if r.get("split") == "train" for k in r if k.startswith(("loss_l", "shift_loss_l"))}
    assert keys == {"loss_l2", "loss_l3", "shift_loss_l2", "shift_loss_l3"}


def test_composite_level_is_level_zero_over_the_tiled_span():
    """A composite level-3 window is level 0's embeddings of its 8 consecutive 200 ms sub-windows, so the distance
    of two windows is the RMS of level 0's sub-window distances; it has no weights of its own."""
    from training.models.syncer import with_composite_levels

    torch.manual_seed(0)
    base = SyncerPyramid(dataclasses.replace(TINY, full_rate_levels=())).eval()
    comp = with_composite_levels(base, (2, 3))
    assert comp.cfg.composite_levels == (2, 3) and comp.cfg.window(3) == (40, 160, 8)
    assert not list(comp.levels[3].parameters()) and not list(comp.levels[2].parameters())
    assert all(torch.equal(comp.state_dict()[k], v) for k, v in base.state_dict().items() if k.startswith("levels.1."))
    lm, mf = torch.rand(3, 40, 68, 2), torch.randn(3, 160, 26)
    with torch.no_grad():
        e_a, e_x = comp.embed(3, lm, mf)
        a0, x0 = base.embed(0, lm.reshape(24, 5, 68, 2), mf.reshape(24, 20, 26))
    assert e_a.shape == e_x.shape == (3, 8 * 16)
    d_sub = (a0 - x0[torch.arange(24).roll(8)]).norm(dim=-1).reshape(3, 8)  # window i's audio vs window i-1's lips
    d = (e_a - e_x.roll(1, 0)).norm(dim=-1)
    assert torch.allclose(d, d_sub.pow(2).mean(-1).sqrt(), atol=1e-5)


def test_composite_level_embeds_more_audio_candidates_than_landmark_windows():
    """Offset checks embed several audio candidates per landmark window (`syncer_check`, 9 per anchor): a
    composite level must embed each audio window on its own, as a pooled level does (it once folded the
    candidates into the feature axis and failed)."""
    from training.models.syncer import with_composite_levels

    torch.manual_seed(0)
    comp = with_composite_levels(SyncerPyramid(dataclasses.replace(TINY, full_rate_levels=())).eval(), (2, 3))
    lm, mf = torch.rand(2, 40, 68, 2), torch.randn(6, 160, 26)
    with torch.no_grad():
        e_a, e_x = comp.embed(3, lm, mf)
        one_a, one_x = comp.embed(3, lm[1:2], mf[4:5])
    assert e_a.shape == (6, 8 * 16) and e_x.shape == (2, 8 * 16)
    assert torch.allclose(e_a[4], one_a[0], atol=1e-6) and torch.allclose(e_x[1], one_x[0], atol=1e-6)


def test_a_full_rate_level_made_composite_drops_its_encoders():
    from training.models.syncer import with_composite_levels

    full = SyncerPyramid(TINY)
    mixed = with_composite_levels(full, (3,))
    assert mixed.cfg.full_rate_levels == (2,) and mixed.cfg.composite_levels == (3,)
    assert not any(k.startswith("levels.3.") for k in mixed.state_dict())
    a, b = mixed.levels[2].state_dict(), full.levels[2].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_composite_config_errors():
    with pytest.raises(ValueError, match="level 0"):
        SyncerConfig(composite_levels=(0, 3))
    with pytest.raises(ValueError, match="either full-rate or composite"):
        SyncerConfig(full_rate_levels=(3,), composite_levels=(3,))
    with pytest.raises(ValueError, match="composite_levels"):
        SyncerConfig(composite_levels=(4,))


def test_motion_features_at_full_rate_and_composite_levels():
    """FD-motion's features: one row per level-l sample (6 windows of 40 frames at level 3 of 80 frames); a composite
    level's rows are 2^l · embed_dim wide, and a sequence too short for a level adds no row of the wrong width."""
    from training.metrics.dynamics import feature_sets
    from training.models.syncer import with_composite_levels

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    seqs = [(0.5 + 0.02 * rng.standard_normal((t, 68, 2))).astype(np.float32) for t in (80, 30)]
    full = SyncerPyramid(TINY).eval()
    comp = with_composite_levels(SyncerPyramid(dataclasses.replace(TINY, full_rate_levels=())), (2, 3))
    assert [f.shape for f in feature_sets(full, seqs)] == [(76 + 26, 16), (36 + 11, 16), (16 + 3, 16), (6, 16)]
    assert [f.shape for f in feature_sets(comp, seqs)] == [(102, 16), (47, 16), (19, 64), (6, 128)]


def test_shipped_v4_is_v3_composed_and_the_default(tmp_path):
    """`python -m training.compose_syncers` rebuilds the shipped v4 from v3 bit for bit (half precision), and the
    evaluation default resolves to it."""
    from safetensors.torch import load_file

    from training.compose_syncers import compose
    from training.eval.metric_syncers import resolve_syncers

    weights = REPO / "training" / "weights"
    meta = compose(weights / "metric_syncers_v3", (2, 3), tmp_path / "v4")
    assert meta["syncer"]["composite_levels"] == [2, 3] and meta["composed_from"]["source_step"] == 1800
    built, shipped = (
        load_file(str(tmp_path / "v4.safetensors")),
        load_file(str(weights / "metric_syncers_v4.safetensors")),
    )
    assert built.keys() == shipped.keys() and all(torch.equal(built[k], shipped[k]) for k in built)
    assert all(t.dtype == torch.float16 for k, t in shipped.items() if t.is_floating_point())
    assert not any(k.startswith(("levels.2.", "levels.3.")) for k in shipped)
    v3 = load_file(str(weights / "metric_syncers_v3.safetensors"))
    assert all(torch.equal(v3[k], shipped[k]) for k in shipped)
    assert resolve_syncers("").name == "metric_syncers_v4"  # relative to the checkout, where pytest runs


def test_reports_say_what_each_level_reads():
    """eval and eval-sync reports name composite levels (they reuse the 200 ms encoders and cannot see slow
    structure), so a reader does not take them for trained 800 / 1600 ms syncers."""
    from training.models.syncer import SyncerConfig, describe_levels

    words = describe_levels(SyncerConfig(composite_levels=(2, 3), full_rate_levels=(1,)))
    assert words[0] == "200 ms: pooled, trained" and words[1] == "400 ms: full-rate, trained"
    assert words[2].startswith("800 ms: composite of 4 × 200 ms") and "no slow structure" in words[3]
