"""benchmarks.gap_lag: the lag profile finds a late or early mouth with the evaluation's sign convention."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.gap_lag import lag_profile
from training.metrics.viewer import lagged_correlation


def test_lag_profile_peaks_where_the_prediction_is_shifted():
    rng = np.random.default_rng(0)
    ref = np.convolve(rng.standard_normal((6, 130)).ravel(), np.ones(3) / 3, "same").reshape(6, 130)[:, 5:125]
    late = np.concatenate([ref[:, :2], ref[:, :-2]], axis=1)  # pred[t + 2] = ref[t]: the mouth is 2 frames late
    prof = lag_profile(late, ref)
    assert max(prof, key=prof.get) == 2 and prof[2] > 0.99 and prof[-2] < prof[0]
    early = np.concatenate([ref[:, 1:], ref[:, -1:]], axis=1)  # pred[t - 1] = ref[t]: one frame early
    prof = lag_profile(early, ref)
    assert max(prof, key=prof.get) == -1
    # the same convention as the evaluation's per-clip measure
    assert lagged_correlation(early[0], ref[0], 3)[2] == -1


def test_lag_profile_skips_constant_rows():
    ref = np.tile(np.sin(np.arange(40) * 0.7), (3, 1))
    pred = ref.copy()
    pred[1] = 0.5  # a mouth that never moves has no correlation: left out, not counted as 0
    assert lag_profile(pred, ref)[0] == pytest.approx(1.0)
    assert np.isnan(lag_profile(np.zeros_like(ref), ref)[0])
