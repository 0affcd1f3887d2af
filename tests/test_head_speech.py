"""benchmarks.head_speech: the head-speech coupling measure reads planted couplings at the scale they live on,
its control reads chance, and a smoke run on ../shared writes the report its docstring describes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import head_speech as hs
from stream_engine.signals import MEAN_FACE_3D


def _slow_and_fast(t: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two independent random envelopes, band-limited by the measure's own band-pass: one varying over ~1.6 s,
    one over ~0.2 s (a moving average of white noise alone would keep all the slower scales too)."""
    rng = np.random.default_rng(seed)
    return hs.band(rng.normal(size=t), 1600) * 30, hs.band(rng.normal(size=t), 200) * 10


def test_a_head_that_follows_slow_loudness_couples_at_the_slow_scales_only():
    slow, fast = _slow_and_fast(3000)
    envelope = slow + fast  # loudness varies on both scales
    speed = slow  # the head moves with the slow part only
    r = {ms: hs.coupling(envelope, speed, ms) for ms in hs.SCALES_MS}
    assert r[1600] > 0.6 and r[800] > 0.4
    assert abs(r[200]) < 0.25  # the fast loudness is not in the head
    assert abs(hs.shifted_coupling(envelope, speed, 1600)) < 0.15  # unaligned: chance


def test_a_head_that_follows_fast_loudness_couples_at_the_fast_scale():
    slow, fast = _slow_and_fast(3000, seed=1)
    r200 = hs.coupling(slow + fast, fast, 200)
    r1600 = hs.coupling(slow + fast, fast, 1600)
    assert r200 > 0.5 and abs(r1600) < 0.25


def test_a_still_head_scores_zero_and_bad_lengths_are_refused():
    env = np.linspace(-40, -10, 200)
    assert hs.coupling(env, np.zeros(200), 800) == 0.0
    with pytest.raises(ValueError, match="need equal"):
        hs.coupling(env, np.zeros(199), 800)
    with pytest.raises(ValueError, match=">= 160"):
        hs.coupling(env[:100], np.zeros(100), 1600)


def test_loudness_is_floored_below_the_loudest_frame_and_needs_its_samples():
    pcm = np.zeros(hs.SPF * 4, np.float32)
    pcm[: hs.SPF] = 0.5  # one loud frame, then digital silence
    db = hs.loudness_db(pcm, 4)
    assert db[0] == pytest.approx(20 * np.log10(0.5), abs=1e-3)
    assert db[1:] == pytest.approx([db[0] - hs.FLOOR_DB] * 3)
    with pytest.raises(ValueError, match="samples for 5 frames"):
        hs.loudness_db(pcm, 5)


def _face(roll_deg: float) -> np.ndarray:
    """The generic face seen from the front, rolled in the image plane, as (68, 2) points around (0.5, 0.5)."""
    a = np.radians(roll_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    xy = MEAN_FACE_3D[:, :2] * np.array([1.0, -1.0])  # y down, as images have it
    xy = xy / np.ptp(xy[:, 0]) * 0.4
    return (xy @ rot.T + 0.5).astype(np.float64)


def test_head_speed_reads_a_steady_roll_in_degrees_per_frame():
    frames = np.stack([_face(0.5 * t) for t in range(30)])
    speed = hs.head_speed(frames)
    assert speed[0] == 0.0
    assert speed[1:] == pytest.approx(0.5, abs=0.02)
    still = hs.rig_speed(hs.rig_angles(np.repeat(frames[:1], 20, axis=0), np.full(20, -20.0)))
    assert np.abs(still).max() < 1e-6


def test_the_no_jaw_fit_leaves_out_a_jaw_that_opens():
    """The evaluation's rigid points include six of the jaw line's: a jaw that opens reads as head motion there,
    not in the nose-and-eye-corners fit."""
    face = _face(0.0)
    frames = np.stack([face] * 12)
    for t in range(12):
        frames[t, [0, 1, 2, 14, 15, 16], 1] += 0.01 * (t % 2)  # the jaw line's upper points bob down and up
    assert hs.head_speed(frames, "no-jaw").max() < 1e-6
    assert hs.head_speed(frames, "evaluation")[1:].min() > 0.05
    with pytest.raises(ValueError, match="head_fit"):
        hs.head_speed(frames, "nose")


def test_columns_name_the_octaves():
    assert [hs.column(ms) for ms in hs.SCALES_MS] == ["0.2-0.4 s", "0.4-0.8 s", "0.8-1.6 s", "1.6-3.2 s"]


def test_a_head_that_leans_with_loudness_reads_in_its_own_angle_and_octave():
    """The signed table: roll that follows the loudness's 0.4-0.8 s octave reads r ~1 for roll at that octave, not
    for yaw or pitch (held still) and not at 1.6-3.2 s; a roll against the loudness reads negative."""
    slow, fast = _slow_and_fast(3000, seed=2)
    mid = hs.band(np.random.default_rng(9).normal(size=3000), 400) * 10
    envelope = slow + mid
    pose = np.zeros((3000, 3))
    pose[:, 2] = mid  # roll in degrees follows the 400 ms part of the loudness
    r = np.array(hs.signed_coupling(envelope, pose))  # [angle][scale]
    assert r.shape == (3, len(hs.SCALES_MS))
    assert r[2, hs.SCALES_MS.index(400)] > 0.8 and abs(r[2, hs.SCALES_MS.index(1600)]) < 0.25
    assert np.abs(r[:2]).max() == 0.0  # a still yaw and pitch: 0, not noise
    assert np.array(hs.signed_coupling(envelope, -pose))[2, hs.SCALES_MS.index(400)] < -0.8


def test_smoke_run_on_shared_writes_rows_controls_and_pairs(shared_data, tmp_path):
    model = "stream_engine/models/default_int8.onnx"
    code = hs.main(["--model", f"m={model}", "--model", f"n={model}", "--paired-reference", "m", "--seeds", "1",
                    "--max-segments", "2", "--data", str(shared_data), "--out", str(tmp_path), "--name", "hs",
                    "--no-figure"])  # fmt: skip
    assert code == 0
    res = json.loads((tmp_path / "hs.json").read_text())
    for row in ("ground truth", "ground truth, shifted audio", "ground truth, rig signals", "m", "m, shifted audio",
                "m, rig signals", "ground truth, training split"):  # fmt: skip
        cells = res["table"][row]
        assert len(cells) == len(hs.SCALES_MS)
        assert all(-1.0 <= c["lo"] <= c["mean"] <= c["hi"] <= 1.0 for c in cells)
    assert set(res["paired"]) >= {"m − ground truth", "m − its shifted audio", "ground truth − its shifted audio"}
    assert all(c["mean"] == 0.0 for c in res["paired"]["n − m"])  # the same file: paired differences of exactly 0
    assert res["head_fit"] == "no-jaw"
    assert len(res["held_out_segments"]) == 2 and all(s["frames"] >= hs.MIN_FRAMES for s in res["held_out_segments"])
    for row in ("ground truth", "ground truth, training split", "m"):
        assert set(res["signed"][row]) == {"yaw", "pitch", "roll"}
        assert all(-1.0 <= c["lo"] <= c["mean"] <= c["hi"] <= 1.0 for c in res["signed"][row]["roll"])
    md = (tmp_path / "hs.md").read_text()
    assert "| m, shifted audio |" in md and "Paired differences" in md and "| 1.6-3.2 s |" in md
    assert "| m | roll |" in md and "Signed angles" in md


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "m=nope.onnx"], "no such file"),
        (["--model", "m"], "NAME=PATH"),
        (["--model", "m=README.md"], "--model m:"),  # not an ONNX file: one line, before the data loads
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--max-segments", "-1"], "--max-segments must be 0"),
        (["--paired-reference", "x"], "is not one of the --model names"),
        (["--data", "no/such/dir"], "no manifest.tsv"),
    ],
)
def test_cli_refuses_bad_input_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        hs.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
