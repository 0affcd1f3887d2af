"""The batched signal extractor equals the per-stream one, slot by slot (arrays in, arrays out)."""

from __future__ import annotations

import numpy as np
import pytest

from stream_engine.batch_signals import BatchSignalExtractor
from stream_engine.signals import VISEMES, SignalConfig, SignalExtractor, stream_seed

from fakes import NEUTRAL_FACE, project_face


def _streams(n_streams: int, n_frames: int, seed: int = 0):
    """Per stream: landmarks (T, 68, 2) with head motion, mouth motion and jitter; audio levels with pauses."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_streams):
        lm, lv = [], []
        for t in range(n_frames):
            mouth = max(0.0, 12 * np.sin(0.3 * t + s) + rng.normal(0, 2))
            face = project_face(8 * np.sin(0.05 * t + s), 4 * np.cos(0.07 * t), 2 * np.sin(0.03 * t), mouth)
            face = face + rng.normal(0, 0.001, face.shape)
            face[[48, 54], 0] += np.array([-1, 1]) * 0.01 * np.sin(0.2 * t + s)  # spread / round
            lm.append(face)
            lv.append(-20.0 if (t // 30 + s) % 3 else -90.0)
        out.append((np.array(lm), np.array(lv)))
    return out


@pytest.mark.parametrize("mode", ["auto", "both", "landmarks", "off"])
def test_batch_equals_per_stream(mode):
    cfg = SignalConfig(blink_mode=mode, auto_blink_interval_s=(0.5, 2.0))
    streams = _streams(5, 150)
    faces = [None, NEUTRAL_FACE, project_face(10, 0, 0), None, NEUTRAL_FACE]
    seeds = [stream_seed(3, f"s{i}") for i in range(5)]
    singles = [SignalExtractor(cfg, faces[i], seeds[i]) for i in range(5)]
    bx = BatchSignalExtractor(cfg, capacity=8)
    slots = [6, 0, 3, 1, 7]
    for i, slot in enumerate(slots):
        bx.open(slot, faces[i], seeds[i])
    for t in range(150):
        active = [i for i in range(5) if (t + i) % 7]  # streams skip steps, like a real batch
        if t == 90:  # a barge-in on one stream
            singles[2].reset()
            bx.reset(slots[2])
        lm = np.stack([streams[i][0][t] for i in active])
        level = np.array([streams[i][1][t] for i in active])
        ahead = np.roll(level, 1)
        ts = np.array([0.04 * t + (0.001 if i == 4 else 0.0) for i in active])
        got = bx.update([slots[i] for i in active], lm, ts, level, ahead)
        rows = got.rows()  # the engine's bulk conversion: the same objects as row-by-row
        assert len(rows) == len(active)
        for row, i in enumerate(active):
            want = singles[i].update(lm[row], ts[row], level[row], ahead[row])
            np.testing.assert_allclose(got.mouth_open[row], want.mouth_open, atol=1e-9)
            np.testing.assert_allclose(got.visemes[row], [want.visemes[v] for v in VISEMES], atol=1e-9)
            np.testing.assert_allclose(
                got.head_deg[row], [want.head.yaw_deg, want.head.pitch_deg, want.head.roll_deg], atol=1e-7
            )
            assert got.blink[row] == pytest.approx(want.blink, abs=1e-9) and bool(got.silent[row]) == want.silent
            np.testing.assert_allclose(got.blendshapes[row], want.blendshapes, atol=1e-6)
            assert got.signals(row).to_json() == want.to_json()
            assert rows[row].to_json() == want.to_json() and rows[row].as_vector() == got.signals(row).as_vector()
            np.testing.assert_array_equal(rows[row].blendshapes, got.signals(row).blendshapes)


def test_bad_calls_are_clear_errors():
    bx = BatchSignalExtractor(capacity=2)
    with pytest.raises(IndexError):
        bx.open(2)
    bx.open(0)
    with pytest.raises(ValueError, match="open slots"):
        bx.update([1], np.zeros((1, 68, 2)), [0.0], [-20.0])
    with pytest.raises(ValueError, match="landmarks"):
        bx.update([0], np.zeros((2, 68, 2)), [0.0], [-20.0])
