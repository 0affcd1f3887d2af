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
    angles[:, 100:, :] = 0.5  # the silence after 100 speech frames (tail 50)
    s = hb.clip_stats(angles, [100, 100, 100], tail=50)
    assert s["median_of_clip_means"][2] == pytest.approx(0.0)
    assert s["share_over_2deg"] == pytest.approx([1 / 3, 0.0, 0.0])
    assert s["share_yaw_crossing_zero"] == pytest.approx(1 / 3)
    assert s["silence_after_mean"] == pytest.approx([0.5, 0.5, 0.5])
    assert np.asarray(s["clip_means"]).shape == (3, 3)


def test_slopes_recover_a_planted_pull_toward_frontal():
    rng = np.random.default_rng(0)
    pose = rng.uniform(-20, 20, (30, 3))
    means = 0.5 - np.array([0.25, 0.1, 0.0]) * pose
    assert hb.slopes(means, pose) == pytest.approx([-0.25, -0.1, 0.0], abs=1e-9)


def test_markdown_has_a_row_per_model_and_reference():
    stats = {"median_of_clip_means": [0.0, 1.0, -1.0], "share_over_2deg": [0.1, 0.0, 0.0],
             "share_yaw_crossing_zero": 0.9, "silence_after_mean": [0.2, 0.0, 0.0]}  # fmt: skip
    own = dict(stats, slope_on_reference_pose=[-0.25, 0.0, 0.0])
    md = hb.markdown({"m": {"clips": 4, "default_face": stats, "own_first_frame": own}}, "test")
    assert "| m | default face | 4 | +0.0 / +1.0 / -1.0° | 10% / 0% / 0% | 90% |" in md
    assert "-0.25 / +0.00 / +0.00 |" in md
