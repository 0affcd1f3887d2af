"""benchmarks.head_bias_clips reads planted head tracks the way its docstring says."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import head_bias_clips as hb


def test_clip_stats_read_planted_tracks():
    t = np.arange(150)
    angles = np.zeros((3, 150, 3))
    angles[0, :, 0] = -3.0  # held to one side: never crosses zero, mean beyond 2 degrees
    angles[1, :, 0] = 2.0 * np.sin(t / 10.0)  # swings around zero
    angles[2, :, 2] = 1.0  # a small steady roll
    angles[:, 100:, :] = 0.5  # the tail after 100 speech frames (50 frames, shorter than 4 s: all of it)
    s = hb.clip_stats(angles, [100, 100, 100], tail=50)
    assert s["median_of_clip_means"][2] == pytest.approx(0.0)
    assert s["share_over_2deg"] == pytest.approx([1 / 3, 0.0, 0.0])
    assert s["share_yaw_crossing_zero"] == pytest.approx(1 / 3)
    assert s["after_mean"] == pytest.approx([0.5, 0.5, 0.5])
    assert np.asarray(s["clip_means"]).shape == (3, 3)


def test_slopes_recover_a_planted_pull_toward_frontal():
    rng = np.random.default_rng(0)
    pose = rng.uniform(-20, 20, (30, 3))
    means = 0.5 - np.array([0.25, 0.1, 0.0]) * pose
    assert hb.slopes(means, pose) == pytest.approx([-0.25, -0.1, 0.0], abs=1e-9)


def test_markdown_has_a_row_per_model_and_reference_and_a_tail_table():
    stats = {"median_of_clip_means": [0.0, 1.0, -1.0], "share_over_2deg": [0.1, 0.0, 0.0],
             "share_yaw_crossing_zero": 0.9, "after_mean": [0.2, 0.0, 0.0]}  # fmt: skip
    own = dict(stats, slope_on_reference_pose=[-0.25, 0.0, 0.0], reference_pose_mean=[-9.0, 0.5, 0.0])
    run = {"clips": 4, "tails": ["silence", "noise"], "default_face": stats, "own_first_frame": own,
           "after_by_tail": {"silence": [0.2, 0.0, 0.0], "noise": [3.0, -1.0, 0.5]}}  # fmt: skip
    md = hb.markdown({"m": run}, "test")
    assert "| m | default face | 4 | +0.0 / +1.0 / -1.0° | 10% / 0% / 0% | 90% | – | – |" in md
    assert "| -9.0 / +0.5 / +0.0° | -0.25 / +0.00 / +0.00 |" in md
    assert "| model | silence | noise |" in md and "| m | +0.2 / +0.0 / +0.0° | +3.0 / -1.0 / +0.5° |" in md


def test_with_tail_keeps_whole_frames_and_sets_the_level():
    rng = np.random.default_rng(0)
    out = hb.with_tail(np.ones(1000, np.float32), "noise", rng)
    assert len(out) == 640 + int(hb.TAIL_SECONDS * 16000) and out.dtype == np.float32
    tail = out[640:]
    assert 20 * np.log10(np.sqrt(np.mean(tail.astype(np.float64) ** 2))) == pytest.approx(hb.TAIL_DBFS, abs=0.5)
    assert not hb.with_tail(np.ones(640, np.float32), "silence", rng)[640:].any()
