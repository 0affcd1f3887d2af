"""benchmarks/lip_r_by_start.py splits lip r by a sequence's start and by time into it, from saved predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks import lip_r_by_start as lr

from fakes import project_face


def _faces(gaps_mm: np.ndarray) -> np.ndarray:
    return np.stack([project_face(0, 0, 0, float(g)) for g in gaps_mm]).astype(np.float32)


def test_split_reads_clip_start_and_later_sequences(tmp_path: Path):
    rng = np.random.default_rng(0)
    gap = 10 + 8 * np.abs(np.sin(np.arange(200) / 3.0)) + rng.normal(0, 0.5, 200)
    (tmp_path / "data" / "clips").mkdir(parents=True)
    np.save(tmp_path / "data" / "clips" / "c1.lm68.npy", _faces(gap))
    good = tmp_path / "pred" / "good"
    bad = tmp_path / "pred" / "late_starter"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    for start in (0, 80):
        seq = gap[start : start + 80]
        np.savez(good / f"c1@{start}.npz", landmarks=_faces(seq), clip_id="c1", start_frame=start, method="good")
        late = seq.copy()
        if start == 0:  # this method is wrong only in the first 1.2 s of a clip-start sequence
            late[:30] = 10 + 8 * rng.random(30)
        np.savez(bad / f"c1@{start}.npz", landmarks=_faces(late), clip_id="c1", start_frame=start, method="late")
    out = lr.split_r(tmp_path / "pred", tmp_path / "data")
    assert set(out) == {"good", "late_starter"}
    for where in ("clip start", "later"):
        for part in ("first 1.2 s", "after"):
            assert out["good"][where][part]["mean"] > 0.99 and out["good"][where][part]["sequences"] == 1
    assert out["late_starter"]["clip start"]["first 1.2 s"]["mean"] < 0.5
    assert out["late_starter"]["clip start"]["after"]["mean"] > 0.99
    assert out["late_starter"]["later"]["first 1.2 s"]["mean"] > 0.99
