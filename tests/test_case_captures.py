"""benchmarks.case_captures reads msync_capture JSON the way its doc says (planted gaps and signals)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import case_captures as cc
from stream_engine.signals import MEAN_FACE_3D


def _face(gap_iod: float) -> np.ndarray:
    """(68, 2) generic face whose inner-lip gap is `gap_iod` inter-ocular distances."""
    p = MEAN_FACE_3D[:, :2].copy()
    iod = float(np.linalg.norm(p[36] - p[45]))
    for top, bottom in ((61, 67), (62, 66), (63, 65)):
        p[bottom] = p[top] + [0.0, gap_iod * iod]
    return p


def _write(path, gaps, dbfs, mouth=0.0, angles=(0.0, 0.0, 0.0)):
    frames = []
    for t, (g, d) in enumerate(zip(gaps, dbfs)):
        sig = [mouth, 0, 0, 0, 0, 0, 0, *angles, d, 0]
        frames.append({"seq": t, "pts": t * 0.04, "lm": _face(g).ravel().tolist(), "sig": sig})
    path.write_text(json.dumps({"rc": 0, "stderr": "", "frames": frames, "vmc": []}))


def test_summaries_read_the_planted_gaps_and_signals(tmp_path):
    t = np.arange(250) * 0.04
    speech = np.where(t < 2.9, 0.10 + 0.05 * np.sin(t * 20), 0.02)  # then 0.02 IOD in the silence
    _write(tmp_path / "silence.json", speech, np.where(t < 2.9, -20.0, -120.0))
    pause = (t >= 3.1) & (t <= 5.0)
    _write(tmp_path / "noise.json", np.where(pause, 0.03, 0.12), np.where(pause, -48.0, -20.0))
    wave = 0.08 + 0.04 * np.sin(t * 7)
    _write(tmp_path / "normal.json", wave, np.full(250, -20.0), mouth=0.5)
    _write(tmp_path / "quiet.json", 0.08 + 0.02 * np.sin(t * 7), np.full(250, -58.0), mouth=0.25)
    _write(tmp_path / "head.json", wave, np.full(250, -20.0), angles=(1.0, -2.0, 3.0))
    r = cc.summarise(tmp_path)
    assert r["silence_p50"] == pytest.approx(0.02, abs=1e-6) and r["silence_last_s"] == pytest.approx(0.02, abs=1e-6)
    assert r["noise_p90"] == pytest.approx(0.03, abs=1e-6) and r["speech_p90"] == pytest.approx(0.12, abs=1e-6)
    assert r["quiet_std_share"] == pytest.approx(0.5, rel=1e-3) and r["quiet_r"] == pytest.approx(1.0, abs=1e-6)
    assert (r["quiet_mouth_open"], r["normal_mouth_open"]) == (0.25, 0.5)
    assert (r["yaw_mean"], r["pitch_mean"], r["roll_mean"], r["roll_range"]) == (1.0, -2.0, 3.0, 0.0)
    assert "| m | 0.020 / 0.020, 0.020 |" in cc.markdown({"m": r})
