"""Distilling the speech teacher into the causal audio encoder: channel augmentation, windows, the distillation
step and where the head lives (tiny generated audio and a tiny generator; no corpus, teacher or network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.data import channel_augment as ca
from training.data.distill_windows import DistillWindows, Track, pack_clips

SR = 16000


def _power(x):
    return float(np.mean(np.asarray(x, np.float64) ** 2))


@pytest.mark.parametrize("snr", [5.0, 20.0, 40.0])
def test_add_noise_reaches_the_requested_snr(snr):
    rng = np.random.default_rng(1)
    speech = (0.1 * np.sin(2 * np.pi * 200 * np.arange(SR) / SR)).astype(np.float32)
    noise = rng.standard_normal(SR).astype(np.float32)
    mixed = ca.add_noise(speech, noise, snr)
    got = 10 * np.log10(_power(speech) / _power(mixed - speech))
    assert got == pytest.approx(snr, abs=0.05)


def test_telephone_band_removes_energy_above_4_khz():
    x = np.random.default_rng(2).standard_normal(2 * SR).astype(np.float32) * 0.1
    y = ca.telephone_band(x)
    assert y.shape == x.shape
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    px, py = np.abs(np.fft.rfft(x)) ** 2, np.abs(np.fft.rfft(y)) ** 2
    high = freqs > 4000
    assert py[high].sum() < 1e-3 * px[high].sum()
    mid = (freqs > 500) & (freqs < 3000)
    assert py[mid].sum() > 0.8 * px[mid].sum()  # the speech band passes


def test_reverberation_keeps_length_and_level_and_decays():
    rng = np.random.default_rng(3)
    rir = ca.synthetic_rir(0.5, rng)
    tail = rir[len(rir) // 2 :]
    head = rir[1 : len(rir) // 4]
    assert _power(tail) < 0.05 * _power(head)  # -60 dB over RT60: the second half is far weaker
    x = rng.standard_normal(SR).astype(np.float32) * 0.1
    y = ca.reverberate(x, rir)
    assert y.shape == x.shape and _power(y) == pytest.approx(_power(x), rel=1e-3)


def test_degrade_keeps_shape_and_range():
    rng = np.random.default_rng(4)
    x = (0.5 * np.sin(2 * np.pi * 300 * np.arange(SR) / SR)).astype(np.float32)
    cfg = ca.ChannelAugmentConfig(noise_prob=1.0, telephone_prob=1.0, reverb_prob=1.0)
    for _ in range(5):
        y = ca.degrade(x, rng, cfg, babble=rng.standard_normal(SR).astype(np.float32))
        assert y.shape == x.shape and y.dtype == np.float32 and np.all(np.abs(y) <= 1.0)
    with pytest.raises(ValueError):
        ca.ChannelAugmentConfig(noise_prob=1.5)


def test_pack_clips_fills_whole_frames_up_to_the_limit():
    clips = [np.ones(int(s * SR), np.float32) for s in (3.0, 10.0, 20.0, 40.0, 0.5)]
    packs = pack_clips(clips, max_seconds=29.0)
    assert all(len(p) % 640 == 0 and len(p) <= 29 * SR + 640 for p in packs)
    assert [round(len(p) / SR, 2) for p in packs] == [13.2, 20.0, 29.0, 0.52]  # 3 + 0.2 gap + 10, 20, 40 cut, 0.5
    assert sum(float(p.sum()) for p in packs) == pytest.approx((3 + 10 + 20 + 29 + 0.5) * SR)


def _band_teacher(audio: np.ndarray, dim: int = 8) -> np.ndarray:
    """A stand-in teacher: per 40 ms frame, log energy in `dim` frequency bands (a function of the audio)."""
    frames = audio[: len(audio) // 640 * 640].reshape(-1, 640)
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    bands = np.array_split(spec[:, 1:], dim, axis=1)
    return np.log(np.stack([b.sum(1) for b in bands], axis=1) + 1e-4).astype(np.float32)


def _speechlike(seconds: float, rng) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f = 150 + 100 * np.sin(2 * np.pi * 0.7 * t)
    env = (np.sin(2 * np.pi * 3 * t) > 0).astype(np.float32)
    x = env * np.sin(2 * np.pi * np.cumsum(f) / SR) + 0.3 * env * rng.standard_normal(len(t))
    return (0.2 * x).astype(np.float32)


def test_windows_align_audio_and_teacher_rows():
    rng = np.random.default_rng(5)
    audio = _speechlike(6.4, rng)
    track = Track(audio, _band_teacher(audio), "t")
    w = DistillWindows([track], num_frames=10, lookahead_frames=2, warmup_frames=5)
    b = w.sample(3, rng)
    assert b.audio.shape == (3, 352 + 640 * 17) and b.valid.shape == (3, 17) and b.teacher.shape == (3, 10, 8)
    a0, v0 = w.window_audio(0, 0)
    assert v0.tolist() == [False] * 5 + [True] * 12  # the warm-up before the track's start is not valid
    assert not a0[: 352 + 5 * 640].any()
    a, v = w.window_audio(0, 7)
    assert v.all()  # 7 >= warm-up 5: the whole window lies inside the track
    np.testing.assert_array_equal(a[352 + 5 * 640 : 352 + 6 * 640], audio[7 * 640 : 8 * 640])


def test_shifted_targets_are_the_teacher_rows_shift_frames_earlier():
    rng = np.random.default_rng(8)
    audio = _speechlike(4.0, rng)
    teacher = _band_teacher(audio)
    track = Track(audio, teacher, "t")
    w2 = DistillWindows([track], num_frames=10, lookahead_frames=2, warmup_frames=5, target_shift_frames=2)
    b2 = w2.sample(6, np.random.default_rng(3))
    for i in range(6):
        start = next(s for s in range(len(teacher)) if np.array_equal(w2.window_audio(0, s)[0], b2.audio[i]))
        assert start >= 2
        np.testing.assert_array_equal(b2.teacher[i], teacher[start - 2 : start + 8])


TINY = dict(
    audio_channels=16,
    audio_expansion=2,
    level_dilations=((1,), (2,)),
    branch_levels=(0, 1),
    landmark_embed=16,
    lstm_hidden=16,
    branch_hidden=16,
    lookahead_frames=2,
)


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """A tiny generator checkpoint, a two-file corpus in a cache, and the band-energy stand-in for the teacher."""
    from training.checkpoint import save_module
    from training.data import distill_windows, speech_corpus
    from training.models.generator import Generator, GeneratorConfig

    torch.manual_seed(0)
    cfg = GeneratorConfig(**TINY)
    save_module(tmp_path / "init", Generator(cfg), {"kind": "generator", "step": 0, "generator": cfg})
    rng = np.random.default_rng(6)
    cache = tmp_path / "corpus"
    entries = []
    for i in range(2):
        pcm = _speechlike(8.0, rng)
        e = speech_corpus.CorpusEntry("o/n", "c" * 40, f"{i}.wav", "CC0", f"s{i}", 8.0, f"{i:064x}")
        speech_corpus.cache_path(cache, e).parent.mkdir(parents=True, exist_ok=True)
        np.save(speech_corpus.cache_path(cache, e), pcm)
        entries.append(e)
    speech_corpus.write_manifest(entries, tmp_path / "corpus.tsv")

    def fake_teacher_tracks(audios, names, cache_dir, progress=True):
        return [Track(a, _band_teacher(a), n) for a, n in zip(audios, names)]

    monkeypatch.setattr(distill_windows, "teacher_tracks", fake_teacher_tracks)
    return tmp_path


def _config(root, **kw):
    from training.data.channel_augment import ChannelAugmentConfig
    from training.train_distill import TrainDistillConfig

    base = dict(
        init_from=str(root / "init"),
        corpus_manifest=str(root / "corpus.tsv"),
        corpus_cache=str(root / "corpus"),
        shared_splits=(),
        teacher_cache=str(root / "teacher"),
        val_every_nth_pack=0,
        seq_len=16,
        batch_size=8,
        lr_encoder=3e-3,
        lr_head=1e-2,
        log_every=10,
        eval_every=1000,
        checkpoint_every=1000,
        threads=1,
        augment=ChannelAugmentConfig(noise_prob=0.0, telephone_prob=0.0, reverb_prob=0.0, gain_db=0.0),
    )
    base.update(kw)
    return TrainDistillConfig(**base)


@pytest.mark.slow
def test_distillation_lowers_the_loss_and_trains_only_the_audio_encoder(tiny_run):
    from training.models.distill_head import load_distill_head
    from training.models.generator import load_generator
    from training.train_distill import DistillTrainer

    out = tiny_run / "run"
    DistillTrainer(_config(tiny_run, steps=60), out).run(progress=False)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["split"] == "train"]
    assert train[-1]["distill_mse"] < 0.7 * train[0]["distill_mse"]
    assert train[-1]["distill_cos"] > train[0]["distill_cos"]

    init, _ = load_generator(tiny_run / "init")
    student, meta = load_generator(out / "generator")  # strict load: exactly the generator's tensors
    a, b = init.state_dict(), student.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.startswith(("audio_stem.", "blocks.")) for k in changed)
    assert meta["distilled_from"]["init_from"] == str(tiny_run / "init")
    head = load_distill_head(out)
    assert head.proj.in_features == 2 * 16 and head.proj.out_features == 8


@pytest.mark.slow
def test_the_head_never_enters_the_generator_or_its_exported_step(tiny_run):
    import onnx

    from export.onnx_export import export_onnx
    from training.models.generator import load_generator
    from training.train_distill import DistillTrainer

    out = tiny_run / "run"
    DistillTrainer(_config(tiny_run, steps=3), out).run(progress=False)
    student, _ = load_generator(out / "generator")
    assert not any("proj" in k or "teacher" in k or "norm" == k.split(".")[0] for k in student.state_dict())
    onnx_path = tiny_run / "step.onnx"
    export_onnx(student, onnx_path)
    model = onnx.load(str(onnx_path))
    dims = {tuple(t.dims) for t in model.graph.initializer}
    assert not any(8 in d and 32 in d for d in dims)  # the head's (8, 32) projection is nowhere in the step
    names = [t.name for t in model.graph.initializer]
    assert not any("teacher" in n or "proj" in n for n in names)


def test_shared_test_split_is_refused():
    from training.train_distill import TrainDistillConfig

    with pytest.raises(ValueError, match="test"):
        TrainDistillConfig(shared_splits=("train", "test"))


@pytest.mark.slow
def test_generator_fine_tune_takes_the_distilled_encoder_and_its_term(shared_data, tiny_run, monkeypatch):
    """`msync train` with init_audio_from starts from the distilled encoder (the rest of the warm start kept) and
    logs a finite distillation term computed against the teacher rows of its windows."""
    import dataclasses

    from training import teacher as teacher_mod
    from training.checkpoint import save_module
    from training.models.discriminators import DiscriminatorConfig
    from training.models.generator import Generator, GeneratorConfig, load_generator
    from training.models.syncer import SyncerConfig, SyncerPyramid
    from training.train_distill import DistillTrainer
    from training.train_generator import GeneratorTrainer, TrainGeneratorConfig

    gcfg = GeneratorConfig(audio_channels=16, landmark_embed=16, lstm_hidden=16, branch_hidden=16)
    torch.manual_seed(1)
    save_module(tiny_run / "init", Generator(gcfg), {"kind": "generator", "step": 0, "generator": gcfg})
    DistillTrainer(_config(tiny_run, steps=4, seq_len=8), tiny_run / "distill").run(progress=False)
    sync = SyncerConfig(
        embed_dim=16, audio_widths=(16, 16), audio_depths=(1, 1), landmark_widths=(16,), landmark_depths=(1,)
    )
    save_module(tiny_run / "sync", SyncerPyramid(sync), {"kind": "syncer_pyramid", "syncer": sync})

    def fake_features(audios, cache_dir=None, mfcc_per_frame=4, progress=None, **kw):
        return [np.repeat(_band_teacher(np.asarray(a, np.float32)), mfcc_per_frame, axis=0) for a in audios]

    monkeypatch.setattr(teacher_mod, "features_at_mfcc_rate", fake_features)
    cfg = TrainGeneratorConfig(
        data_dir=str(shared_data),
        syncers=str(tiny_run / "sync"),
        generator=gcfg,
        discriminator=DiscriminatorConfig(embed_dim=16, lstm_hidden=16, projection_hidden=16, windows=(5, 10)),
        max_clips=30,
        batch_size=2,
        seq_len=12,
        steps=2,
        log_every=1,
        eval_every=100,
        checkpoint_every=100,
        sample_every=0,
        threads=1,
        device="cpu",
        init_from=str(tiny_run / "init"),
        init_audio_from=str(tiny_run / "distill" / "generator"),
        distill_head=str(tiny_run / "distill"),
        distill_weight=1.0,
    )
    out = tiny_run / "gen"
    GeneratorTrainer(dataclasses.replace(cfg, steps=0), out).run(progress=False)
    started, _ = load_generator(out / "generator")
    distilled, _ = load_generator(tiny_run / "distill" / "generator")
    init, _ = load_generator(tiny_run / "init")
    s, d, i = started.state_dict(), distilled.state_dict(), init.state_dict()
    for k in s:
        ref = d if k.startswith(("audio_stem.", "blocks.", "mfcc_")) else i
        assert torch.equal(s[k], ref[k]), k
    GeneratorTrainer(cfg, tiny_run / "gen2").run(progress=False)
    recs = [json.loads(line) for line in (tiny_run / "gen2" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["distill"]) for r in recs if r["split"] == "train")
    with pytest.raises(ValueError, match="distill_head"):
        TrainGeneratorConfig(distill_weight=1.0)


def test_student_generator_sets_the_look_ahead_and_redraws_only_the_audio_encoder():
    from training.models.generator import Generator, GeneratorConfig
    from training.train_distill import TrainDistillConfig, student_generator

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(**TINY)).eval()
    assert student_generator(G) is G  # nothing asked: the init itself

    moved = student_generator(G, lookahead_frames=4)
    assert moved.cfg.lookahead_frames == 4 and G.cfg.lookahead_frames == 2
    a, b = G.state_dict(), moved.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same weights, other look-ahead
    assert not moved.training

    fresh0 = student_generator(G, lookahead_frames=0, reinit_seed=3)
    fresh4 = student_generator(G, lookahead_frames=4, reinit_seed=3)
    other = student_generator(G, reinit_seed=4)
    c, d, e = fresh0.state_dict(), fresh4.state_dict(), other.state_dict()
    encoder = {k for k in a if k.startswith(("audio_stem.", "blocks."))}
    redrawn = {k for k in a if not torch.equal(a[k], c[k])}
    # every weight of the encoder but the LayerNorms' (whose defaults are the ones and zeros they may still hold)
    assert redrawn <= encoder and {k for k in encoder if ".norm." not in k} <= redrawn
    assert all(torch.equal(c[k], d[k]) for k in a)  # the same draw for every look-ahead
    assert any(not torch.equal(c[k], e[k]) for k in encoder)  # another seed, another draw
    assert torch.equal(c["mfcc_mean"], a["mfcc_mean"]) and torch.equal(c["mfcc_std"], a["mfcc_std"])

    with pytest.raises(ValueError, match="lookahead_frames"):
        TrainDistillConfig(lookahead_frames=-2)
    with pytest.raises(ValueError, match="reinit_encoder_seed"):
        TrainDistillConfig(reinit_encoder_seed=-5)
