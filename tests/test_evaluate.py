"""`msync eval`: the loudness-mouth baseline, face-shape plausibility, the Fréchet distance, streaming-equivalent
rollouts, and a CLI smoke test on three real test clips with a tiny random generator and metric pyramid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.baselines import LoudnessMouthConfig, loudness_envelope, loudness_mouth
from training.metrics.dynamics import FD_NAME, ShapeSpace, align_shapes, frechet_distance, normalise_shapes
from training.models.generator import Generator, GeneratorConfig
from training.models.syncer import SyncerConfig, SyncerPyramid

torch.set_num_threads(1)

TINY_G = GeneratorConfig(audio_channels=16, landmark_embed=16, lstm_hidden=16, branch_hidden=16, branch_expansion=1)
TINY_S = SyncerConfig(
    embed_dim=16, audio_widths=(16,), audio_depths=(1,), landmark_widths=(16,), landmark_depths=(1,), loss="syncnet"
)


def _face(seed: int = 0) -> np.ndarray:
    """A face-like (68, 2) layout: points on an ellipse-ish jaw, eyes, nose and mouth (enough for the tests)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(np.pi * 0.05, np.pi * 0.95, 17)
    jaw = np.stack([0.5 - 0.2 * np.cos(t), 0.45 + 0.25 * np.sin(t)], -1)
    rest = np.stack([np.linspace(0.35, 0.65, 51), 0.35 + 0.25 * rng.random(51)], -1)
    face = np.concatenate([jaw, rest]).astype(np.float64)
    face[27], face[8] = [0.5, 0.35], [0.5, 0.7]
    face[60:68] = [
        [0.45, 0.56],
        [0.48, 0.55],
        [0.5, 0.55],
        [0.52, 0.55],
        [0.55, 0.56],
        [0.52, 0.57],
        [0.5, 0.57],
        [0.48, 0.57],
    ]  # inner lips, mouth closed-ish, y down
    return face


def _shapes(n: int, seed: int) -> np.ndarray:
    """Faces varying along 3 smooth modes, plus a random similarity transform and small noise."""
    rng = np.random.default_rng(seed)
    base = _face()
    modes = np.random.default_rng(99).normal(size=(3, 68, 2)) * np.array([0.02, 0.01, 0.005])[:, None, None]
    out = base[None] + np.einsum("nk,kpd->npd", rng.normal(size=(n, 3)), modes)
    out += rng.normal(scale=0.0005, size=out.shape)
    theta = rng.uniform(-0.3, 0.3, n)
    rot = np.stack([np.stack([np.cos(theta), -np.sin(theta)], -1), np.stack([np.sin(theta), np.cos(theta)], -1)], -2)
    return np.einsum("npd,ned->npe", out, rot) * rng.uniform(0.5, 2.0, (n, 1, 1)) + rng.normal(size=(n, 1, 2))


# ------------------------------------------------------------------------------------------- baseline


def test_loudness_mouth_opens_more_for_louder_audio():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(640 * 60).astype(np.float32)
    amp = np.repeat([0.0, 0.05, 0.2, 0.5, 0.05, 0.0], 10 * 640).astype(np.float32)
    env = loudness_envelope(noise * amp)
    assert env.shape == (60,) and env.min() >= 0 and env.max() <= 1
    quiet, mid, loud = env[5:10].mean(), env[15:20].mean(), env[35:40].mean()
    assert quiet < mid < loud
    face = _face()
    lm = loudness_mouth(face, env)
    gap = np.linalg.norm(lm[:, 62] - lm[:, 66], axis=-1)
    assert gap[35:40].mean() > gap[15:20].mean() > gap[5:10].mean() - 1e-9
    moving = np.abs(lm - face[None]).max(axis=(0, 2)) > 1e-6
    assert moving[[8, 57, 66]].all() and not moving[:5].any() and not moving[17:48].any()  # head static
    assert np.all(lm[:, 66, 1] >= face[66, 1] - 1e-7)  # the lower lip goes down (image y grows downwards)
    # Per-clip normalisation: the same speech at a tenth of the volume opens the mouth the same way.
    assert np.allclose(loudness_envelope(0.1 * noise * amp), env, atol=1e-6)
    assert np.allclose(loudness_mouth(face, env, LoudnessMouthConfig(gain=0.0)), face[None])


# ------------------------------------------------------------------------------------------- dynamics metrics


def test_procrustes_removes_similarity_transforms():
    face = _face()
    th = 0.4
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    moved = face @ rot.T * 3.0 + np.array([5.0, -2.0])
    assert np.allclose(align_shapes(moved[None], face)[0], normalise_shapes(face)[0], atol=1e-12)


def test_plausibility_accepts_faces_and_rejects_scrambles():
    space = ShapeSpace.fit(_shapes(600, seed=1), variance=0.95)
    assert 1 <= space.num_components <= 10
    heldout = _shapes(400, seed=2)
    space.calibrate(heldout, 99.0)
    assert space.plausible_share(_shapes(400, seed=3)) > 0.95
    rng = np.random.default_rng(4)
    scrambled = _shapes(100, seed=5)
    for x in scrambled:
        rng.shuffle(x)
    assert space.plausible_share(scrambled) < 0.05
    bad = _shapes(5, seed=6)
    bad[0, 0] = np.nan
    assert not space.plausible(bad)[0]


def test_frechet_distance_zero_for_identical_and_grows_with_mean_shift():
    x = np.random.default_rng(0).normal(size=(2000, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    shifts = [0.1, 0.5, 1.0, 2.0]
    fds = [frechet_distance(x, x + s) for s in shifts]
    assert all(a < b for a, b in zip(fds, fds[1:]))
    assert fds[2] == pytest.approx(16.0, rel=1e-6)  # a pure shift of 1 in 16 dims: ‖Δμ‖² = 16
    assert np.isnan(frechet_distance(x[:1], x))
    assert "stand-in for FVD" in FD_NAME


# ------------------------------------------------------------------------------------------- generation


def _loaded(seed: int = 0):
    from training.eval.generation import LoadedModel

    torch.manual_seed(seed)
    G = Generator(TINY_G).eval()
    return LoadedModel("tiny", "mem", G, {}, TINY_G.receptive_field_frames[-1] - 1, TINY_G.lookahead_frames)


def test_chunked_rollout_equals_forward_and_step():
    from training.eval.generation import generate, step_rollout, stream_rollout

    m = _loaded()
    pcm = (0.1 * np.random.default_rng(0).standard_normal(640 * 40)).astype(np.float32)
    ref = _face().astype(np.float32)
    fwd = generate(m, [pcm], [0], ref[None], [7], 30, "cpu")[0]
    chunked = stream_rollout(m, pcm, ref, 7, 30, "cpu", chunk=7)
    stepped = step_rollout(m, pcm, ref, 7, 30, "cpu")
    assert np.allclose(chunked, fwd, atol=1e-5) and np.allclose(stepped, fwd, atol=1e-4)


def test_mfcc_of_a_frame_range_equals_the_whole_stream():
    from stream_engine.features import FrontEndConfig
    from training.eval.generation import mfcc_of

    pcm = (0.1 * np.random.default_rng(1).standard_normal(640 * 30)).astype(np.float32)
    fe = FrontEndConfig()
    whole = mfcc_of(pcm, fe)
    assert whole.shape == (120, 26)
    assert np.allclose(mfcc_of(pcm, fe, 11, 25), whole[44:100], atol=1e-4)
    assert np.allclose(mfcc_of(pcm, fe, 0, 5), whole[:20], atol=1e-4)


def test_parse_model_specs(tmp_path):
    from training.eval.generation import parse_model_specs

    assert parse_model_specs(["a=x/y", "b=z"]) == (("a", "x/y"), ("b", "z"))
    assert parse_model_specs(["runs/abl/generator"]) == (("abl", "runs/abl/generator"),)
    with pytest.raises(ValueError):
        parse_model_specs(["a=x", "a=y"])


# ------------------------------------------------------------------------------------------- command


def test_cli_smoke(shared_data, tmp_path, capsys):
    from stream_engine.cli import main
    from training.checkpoint import save_module
    from training.eval.sequences import GT, SHUFFLED, STATIC, load_predictions

    torch.manual_seed(0)
    sync = tmp_path / "metric" / "syncers"
    save_module(sync, SyncerPyramid(TINY_S), {"kind": "syncer_pyramid", "syncer": TINY_S})
    gen = tmp_path / "gen" / "generator"
    save_module(
        gen,
        Generator(TINY_G),
        {"kind": "generator", "step": 0, "generator": TINY_G, "reference_face": _face().tolist()},
    )
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--model",
        f"tiny={gen}",
        "--metric-syncers",
        str(sync),
        "--data",
        str(shared_data),
        "--split",
        "test",
        "--out",
        str(out),
        "--max-clips",
        "3",
        "--seq-frames",
        "40",
        "--rollout-frames",
        "60",
        "--long-rollout-minutes",
        "0.05",
        "--render-seconds",
        "1",
        "--threads",
        "1",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "loudness mouth" in capsys.readouterr().out
    for name in ("eval.md", "eval.json", "sync_levels.png", "drift.png"):
        assert (out / name).is_file(), name
    md = (out / "eval.md").read_text()
    for row in (GT, STATIC, SHUFFLED, "loudness mouth", "tiny", "tiny: last 40 of 60", "tiny: last 40 of 0.05 min"):
        assert f"| {row} |" in md, row
    assert FD_NAME in md and "I3D" in md
    res = json.loads((out / "eval.json").read_text())
    methods = res["methods"]
    n = methods[GT]["n"]
    assert n == len(res["sequences"]) >= 2
    # --max-clips counts as in `msync eval-sync` (tests/test_eval_sync.py)
    meta = res["meta"]
    assert meta["clips_selected"] == 3 and meta["num_clips"] == len({q["clip_id"] for q in res["sequences"]})
    assert methods["tiny"]["n"] == n and methods["loudness mouth"]["n"] == n
    assert all(e["fd"] < 1e-6 for e in methods[GT]["fd_motion"])
    assert methods[STATIC]["fd_motion"][0]["fd"] > 0
    assert methods[GT]["plausible"] > 0.9
    assert methods["loudness mouth"]["motion"]["mouth_open_std"]["mean"] > 0
    lr = res["long_rollout"]["tiny"]
    assert lr["frames"] == 75 and lr["non_finite_frames"] == 0 and lr["step_equivalence_max_abs"] < 1e-4
    assert len(lr["curves"]["plausible"]) >= 2
    assert [Path(v).name for v in lr["videos"]] == ["tiny_long_first_1s.mp4", "tiny_long_last_1s.mp4"]
    import av

    with av.open(lr["videos"][1]) as video:  # 1 s of landmarks over its audio
        assert {s.type for s in video.streams} == {"video", "audio"}
        assert sum(1 for _ in video.decode(video=0)) == 25
    assert "videos/tiny_long_first_1s.mp4" in md
    assert {"tiny: last 40 of 40", "tiny: last 40 of 60", "tiny: last 40 of 0.05 min"} <= set(res["drift"])
    preds = load_predictions(out / "predictions" / "tiny")
    assert len(preds) == n and all(p.method == "tiny" and p.landmarks.shape == (40, 68, 2) for p in preds)
    # what a viewer sees: every row but shuffled audio, the non-speech set, the side-by-side with its audio
    v = res["viewer"]
    assert set(v["methods"]) == {GT, STATIC, "loudness mouth", "tiny"}
    assert v["methods"][GT]["amplitude_ratio"] == 1.0 and v["methods"][GT]["r_lag0"] > 0.999
    assert set(v["rest"]["rows"]) == {STATIC, "loudness mouth", "tiny"} and v["rest"]["streams"] > 0
    assert v["rest"]["rows"]["tiny"]["silence"]["n"] > 0
    assert "## 5. What a viewer sees" in md and "![side by side](side_by_side.png)" in md
    for name in ("viewer.png", "side_by_side.png"):
        assert (out / name).is_file(), name
    with av.open(str(out / "videos" / "side_by_side.mp4")) as video:
        assert {s.type for s in video.streams} == {"video", "audio"}
        assert video.streams.video[0].width == 4 * 200


def test_cli_missing_syncers(tmp_path, capsys):
    from stream_engine.cli import main

    rc = main(
        ["eval", "--model", "x=nowhere", "--metric-syncers", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert rc == 1 and "metric syncers not found" in capsys.readouterr().err


def test_shape_space_for_a_set_without_a_training_split(shared_data):
    """A set evaluated whole (no training split of its own) gets a clear error, and with `shape_data_dir` its
    plausibility is fitted on that directory's training split and calibrated on the set's own frames."""
    import dataclasses
    from types import SimpleNamespace

    from training.data.manifest import read_manifest
    from training.data.splits import SplitConfig, assign_splits
    from training.eval.quality import EvalConfig, fit_shape_space

    test = assign_splits(read_manifest(shared_data), SplitConfig())["test"][:3]
    segments = [SimpleNamespace(landmarks=np.load(r.landmarks_path)) for r in test]
    segments = [SimpleNamespace(landmarks=s.landmarks[np.all(np.isfinite(s.landmarks), axis=(1, 2))]) for s in segments]
    inputs = SimpleNamespace(by_split={"train": [], "val": [], "test": test}, segments=segments)
    cfg = EvalConfig(data_dir="/nonexistent/external")
    with pytest.raises(ValueError, match="shape_data_dir"):
        fit_shape_space(cfg, inputs)
    space = fit_shape_space(dataclasses.replace(cfg, shape_data_dir=str(shared_data)), inputs)
    assert space.threshold is not None and space.threshold > 0
    frames = np.concatenate([s.landmarks for s in segments])
    assert np.mean(space.distance(frames) <= space.threshold) > 0.95
