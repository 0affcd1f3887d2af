"""benchmarks.voice_adapt: the enrolment split never shares a clip with the evaluation, and adapting moves only the
audio encoder, lowers the distillation loss, and with the holding term stays nearer the encoder it started from
(a tiny generator and a stand-in teacher; no corpus, teacher or network)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from test_distill import TINY  # the tiny generator of the distillation tests

from benchmarks.voice_adapt import adapt, condition_audio, enrolment_split, markdown
from training.data.distill_windows import Track


@dataclasses.dataclass
class _Record:
    id: str
    identity: str


def test_enrolment_split_takes_the_first_half_of_each_speakers_clips_and_leaves_single_clips_out():
    recs = [_Record(f"{s}_{i}", s) for s, n in (("a", 5), ("b", 2), ("c", 1)) for i in range(n)][::-1]
    split = enrolment_split(recs)
    assert set(split) == {"a", "b"}  # one clip: nothing to enrol from and evaluate on
    enrol, held = split["a"]
    assert [r.id for r in enrol] == ["a_0", "a_1"] and [r.id for r in held] == ["a_2", "a_3", "a_4"]
    assert [r.id for r in split["b"][0]] == ["b_0"] and [r.id for r in split["b"][1]] == ["b_1"]
    for enrol, held in split.values():
        assert not {r.id for r in enrol} & {r.id for r in held}
    more = enrolment_split(recs, 0.8)  # 4 of a's 5 clips enrol; b keeps one clip to evaluate on
    assert [r.id for r in more["a"][1]] == ["a_4"] and [r.id for r in more["b"][1]] == ["b_1"]
    with pytest.raises(ValueError):
        enrolment_split(recs, 1.0)


def _tracks(seed: int, count: int = 2, seconds: float = 6.0) -> list[Track]:
    """Noise-band audio with a stand-in teacher: log energy in 8 bands per 40 ms frame."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(seconds * 16000) // 640 * 640
        env = np.repeat(rng.uniform(0.02, 0.3, n // 640), 640)
        audio = (env * rng.standard_normal(n)).astype(np.float32)
        spec = np.abs(np.fft.rfft(audio.reshape(-1, 640), axis=1)) ** 2
        teacher = np.log(np.stack([b.sum(1) for b in np.array_split(spec[:, 1:], 8, axis=1)], 1) + 1e-4)
        out.append(Track(audio, teacher.astype(np.float32), f"t{seed}-{i}"))
    return out


def _level_distance(a, b, tracks, warmup: int) -> float:
    """Mean squared difference of two generators' audio levels on fixed windows of `tracks`."""
    from training.data.distill_windows import DistillWindows

    batch = DistillWindows(tracks, 16, a.cfg.lookahead_frames, warmup, a.cfg.frontend, 0).fixed(4)
    with torch.no_grad():
        mfcc, valid = a.mfcc(torch.from_numpy(batch.audio)), torch.from_numpy(batch.valid)
        return float(
            sum(((x - y) ** 2).mean() for x, y in zip(a.audio_levels(mfcc, valid), b.audio_levels(mfcc, valid)))
        )


def test_adapting_trains_only_the_audio_encoder_and_lowers_the_loss_and_the_holding_term_holds(monkeypatch):
    from training.models.distill_head import DistillHead
    from training.models.generator import Generator, GeneratorConfig

    torch.manual_seed(0)
    g0 = Generator(GeneratorConfig(**TINY)).eval()
    warmup = g0.cfg.receptive_field_frames[-1] - 1
    enrol, base = _tracks(1), _tracks(2)
    head0 = DistillHead(len(g0.cfg.level_dilations) * g0.cfg.audio_channels, 8)
    encoder = {n for n, _ in g0.named_parameters() if n.startswith(("audio_stem.", "blocks."))}
    optimised = []
    real_adam = torch.optim.Adam

    def recording_adam(groups, **kw):
        optimised.append([p for group in groups for p in group["params"]])
        return real_adam(groups, **kw)

    monkeypatch.setattr(torch.optim, "Adam", recording_adam)
    moved = {}
    for keep in (0.0, 50.0):
        g, head = copy.deepcopy(g0), copy.deepcopy(head0)
        losses = adapt(g, head, enrol, base, 40, 0, 3e-3, warmup, seq_len=16, keep_weight=keep, reference=g0)
        # exactly the audio encoder's weights and the head's are handed to the optimiser
        names = {id(p): n for n, p in g.named_parameters()} | {id(p): "head." + n for n, p in head.named_parameters()}
        assert sorted(names[id(p)] for p in optimised[-1]) == sorted(
            list(encoder) + ["head." + n for n, _ in head.named_parameters()]
        )
        assert len(losses) == 40 and all(np.isfinite(losses))
        if keep == 0.0:
            assert np.mean(losses[-5:]) < np.mean(losses[:5])
        before, after = dict(g0.named_parameters()), dict(g.named_parameters())
        changed = {n for n in before if not torch.equal(before[n], after[n])}
        assert changed and changed <= encoder  # the LSTM, branches and heads are the generator's as trained
        assert not any(p.requires_grad for p in g.parameters()) and not g.training
        moved[keep] = _level_distance(g, g0, enrol, warmup)
    assert moved[50.0] < moved[0.0]  # the holding term keeps the encoder's levels nearer where they were


@dataclasses.dataclass
class _Segment:
    audio: np.ndarray


def test_only_the_upper_bound_condition_hears_the_evaluation_clips():
    rng = np.random.default_rng(0)
    enrol, held, val = ([_Segment(rng.standard_normal(800).astype(np.float32)) for _ in range(k)] for k in (2, 3, 4))
    conds = condition_audio(enrol, held, val)
    assert set(conds) == {"adapted", "control", "evaluation audio"}

    def same(a, segs):
        return [x is s.audio for x in a for s in segs]

    for kind in ("adapted", "control"):
        assert not any(same(conds[kind], held))  # the evaluation clips' audio is never adapted on
    assert all(any(x is s.audio for s in enrol) for x in conds["adapted"]) and len(conds["adapted"]) == 2
    assert all(any(x is s.audio for s in val) for x in conds["control"]) and len(conds["control"]) == 4
    assert [id(x) for x in conds["evaluation audio"]] == [id(s.audio) for s in held]


def test_markdown_has_a_row_per_speaker_and_says_who_was_left_out():
    cell = {"r": 0.4, "amplitude": 1.1}
    row = {"enrol_seconds": 7.0, "eval_seconds": 6.0, "shipped": cell, "control": cell, "evaluation audio": cell}
    row["adapted"] = {"r": 0.58, "amplitude": 0.57, "val_split": {"r": 0.46, "amplitude": 1.12}}
    result = {
        "command": "python -m benchmarks.voice_adapt ",
        "effective_flags": "--steps 200 --keep-weight 0.1 --lr 0.0001 --seed 5",
        "args": {"windows": 48, "frames": 50},
        "machine": {"cpu": "AMD EPYC"},
        "wall_s": 540.0,
        "speakers": {"cluster:c103": row},
        "left_out": {"cluster:c152": "1.9 s of enrolment"},
        "val_split": {"shipped": {"r": 0.49, "amplitude": 1.22}},
    }
    md = markdown(result)
    assert (
        "| cluster:c103 | 7 / 6 | 0.40, 1.10 | 0.40, 1.10 | 0.58, 0.57 | 0.40, 1.10 | 0.46, 1.12 (shipped 0.49, 1.22) |"
        in md
    )
    assert "Left out: cluster:c152, 1.9 s of enrolment." in md and "--keep-weight 0.1" in md and "40 scored" in md
