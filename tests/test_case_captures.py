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


def test_stream_start_inputs_and_their_summary(tmp_path):
    """`--make-start-inputs` builds both inputs from the cases' audio (speech where the doc says); the summary
    reads a planted open mouth before the speech."""
    from pathlib import Path

    import soundfile as sf

    cases = Path(__file__).resolve().parents[2] / "shared" / "cases"
    if not (cases / "noise-floor-mouth").is_dir():
        pytest.skip("../shared/cases is not beside this checkout")
    assert cc.main(["--make-start-inputs", str(tmp_path), "--cases", str(cases)]) == 0
    noise, sr = sf.read(tmp_path / "start_noise.wav", dtype="float32")
    zeros, _ = sf.read(tmp_path / "start_silence.wav", dtype="float32")
    assert sr == 16000 and len(noise) == int((3.4 + 2.9 + 2.0) * sr) and len(zeros) == int((3.0 + 2.9 + 2.0) * sr)

    def dbfs(x):
        return 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-12)

    assert -52 < dbfs(noise[: 3 * sr]) < -44 and dbfs(noise[int(3.5 * sr) : int(6 * sr)]) > -35
    assert not zeros[: 3 * sr].any() and dbfs(zeros[int(3.1 * sr) : int(5.5 * sr)]) > -35

    t = np.arange(200) * 0.04
    _write(tmp_path / "start_noise.json", np.where(t < 1.0, 0.10, 0.01), np.full(200, -48.0))
    r = cc.summarise_starts(tmp_path)
    assert "start_silence_open_share" not in r
    assert r["start_noise_max_0_0.5"] == pytest.approx(0.10, abs=1e-6)
    assert r["start_noise_open_share"] == pytest.approx(20 / 78, abs=0.02)  # frames 0.2-1.0 s of 0.2-3.3 s


def test_missing_case_captures_are_named_and_start_captures_stand_alone(tmp_path, capsys):
    t = np.arange(100) * 0.04
    starts = tmp_path / "starts"
    starts.mkdir()
    _write(starts / "start_silence.json", np.full(100, 0.01), np.full(100, -120.0))
    assert cc.main([f"m={starts}"]) == 0
    out = capsys.readouterr().out
    assert "| m | start_silence | 0.010 / 0.010 | 0.010 / 0.010 | 0 % |" in out
    partial = tmp_path / "partial"
    partial.mkdir()
    _write(partial / "silence.json", np.where(t < 2.9, 0.1, 0.02), np.full(100, -20.0))
    with pytest.raises(SystemExit) as exc:
        cc.main([str(partial)])
    assert exc.value.code == 2
    assert "missing noise.json, quiet.json, normal.json, head.json" in capsys.readouterr().err
