"""benchmarks/gate_start.py: its helpers say what its doc says, and on the shipped model the default gate shuts
the mouth of a stream that starts in noise well before the gate without the steady start does."""

from __future__ import annotations

import numpy as np

from benchmarks import gate_start as gs


def test_shut_after_is_the_end_of_the_last_open_frame():
    assert gs._shut_after_s(np.zeros(10)) == 0.0
    assert gs._shut_after_s(np.array([0.0, 0.4, 0.0, 0.2, 0.0, 0.0])) == 0.04 * 4
    assert gs._shut_after_s(np.array([0.0, 0.0, 0.1])) == 0.04 * 3  # open at its end


def test_streams_starting_in_noise_shut_earlier_with_the_steady_start():
    out = gs.noise_starts(draws=1)
    assert set(out["families"]) >= {"shaped (held-out draws)", "resonant (not trained)", "pink", "white < 2 kHz"}
    for level in gs.LEVELS_DBFS:
        off, new = out[f"{level:g}"][gs.OFF], out[f"{level:g}"][gs.NEW]
        assert off["speech_share_0.2_2s"] > 0.7  # noise passes for speech until the first window is measured
        assert new["speech_share_0.2_2s"] < 0.3
        assert new["shut_after_s_median"] < 1.0 < off["shut_after_s_median"]
