"""Does adapting the audio encoder to one voice, from that voice's audio alone, make the lips follow it better?

    python -m benchmarks.voice_adapt [--steps 200] [--out benchmarks/results]

Why: on voices its distillation audio contained (the val split's: audio only, never their faces) the generator's
inner-lip gap follows ground truth at r 0.46-0.51; on unseen voices (the test split) at 0.28-0.32
(`benchmarks/results/gap_lag.md`), near a linear probe on the encoder. A user with one voice (a VTuber) could
give a few minutes of it. This asks whether that helps, with an honest split: the test-split speakers that have
two or more clips in `../shared/data` (enrolment = the audio of the first half of their clips, sorted by id;
evaluation = the other clips, whose audio only the upper-bound row adapts on; a speaker with less than 4 s of
enrolment or of evaluation audio is left out, and said so). Caveats of `../shared/data` itself: an identity there
is a speaker name or an automatic face cluster, so two clips of one cluster need not share a voice, and some clips
fail the manifest's crude sync check (`sync_r`); read the manifest rows of the speakers measured.

Steps, all on the CPU (one torch thread):

1. A distillation head (`training.models.distill_head`, linear) is fitted to the shipped generator's frozen
   encoder on the train/val audio of `../shared/data` (the Whisper tiny.en teacher's features, `training.teacher`,
   through its cache).
2. "adapted": the audio encoder (`audio_stem`, `blocks`) and the head train `--steps` steps of the distillation
   loss on batches half from the enrolment audio and half from the train/val audio (`--no-base`: enrolment only),
   the student's input degraded as in `msync distill`, plus `--keep-weight` (0.1) x the mean squared distance of
   the encoder's levels from the shipped encoder's on the same windows, which holds the encoder near what the
   generator was trained on (without it the encoder drifted and lip r fell: results/voice_adapt_variants/).
3. "control": the same steps with the val split's audio in place of the enrolment audio (no test voice), to tell
   the voice's own audio from any further distillation (one model, trained once, scored on every speaker).
4. "evaluation audio": the same steps on the evaluation clips' own audio (their faces still unseen): the setting
   of the issue's probe, an upper bound for what this much enrolment could give.

Measured on fixed windows of the evaluation clips (the generator in its training-time form, as `benchmarks.gap_lag`):
median over windows of the lag-0 inner-lip gap r with ground truth, and the amplitude ratio; the same on windows of
the val split (voices in the distillation audio) to see that nothing else broke. Writes NAME.json/.md (--name).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def enrolment_split(records: list, share: float = 0.5) -> dict[str, tuple[list, list]]:
    """{identity: (enrolment records, evaluation records)} for identities with >= 2 clips: of the clips sorted by id,
    the first floor(n x share) enrol (at least one, and at least one is left to evaluate on), the rest evaluate.

    Raises:
        ValueError: share outside (0, 1).
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"the enrolment share must be between 0 and 1, got {share}")
    by_id: dict[str, list] = defaultdict(list)
    for r in records:
        by_id[r.identity].append(r)
    out = {}
    for ident, rs in sorted(by_id.items()):
        if len(rs) >= 2:
            rs = sorted(rs, key=lambda r: r.id)
            k = min(len(rs) - 1, max(1, int(len(rs) * share)))
            out[ident] = (rs[:k], rs[k:])
    return out


def adapt(
    G,
    head,
    enrol_tracks,
    base_tracks,
    steps: int,
    seed: int,
    lr: float,
    warmup: int,
    seq_len: int = 64,
    keep_weight: float = 0.0,
    reference=None,
):
    """Train G's audio encoder and `head` for `steps` steps of the distillation loss (in place). Each step takes 8
    enrolment windows and, when `base_tracks` is not None, 8 base windows. With `keep_weight` > 0 a term
    keep_weight x MSE(G's levels, `reference`'s levels) on the same windows holds the encoder near the one the
    generator was trained with. Returns the loss per step."""
    import torch

    from training.data.channel_augment import ChannelAugmentConfig
    from training.data.distill_windows import DistillWindows
    from training.models.distill_head import distill_loss, level_columns

    g = G.cfg
    sources = [enrol_tracks] if base_tracks is None else [enrol_tracks, base_tracks]
    samplers = [DistillWindows(t, seq_len, g.lookahead_frames, warmup, g.frontend, 0) for t in sources]
    params = [*G.audio_stem.parameters(), *G.blocks.parameters()]
    for p in G.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": params, "lr": lr}, {"params": head.parameters(), "lr": 1e-3}])
    rng = np.random.default_rng(seed)
    aug = ChannelAugmentConfig()
    G.train()
    losses = []
    for _ in range(steps):
        total = 0.0
        opt.zero_grad(set_to_none=True)
        for s in samplers:
            b = s.sample(8, rng, aug)
            with torch.no_grad():
                mfcc = G.mfcc(torch.from_numpy(b.audio))
            valid = torch.from_numpy(b.valid)
            levels = G.audio_levels(mfcc, valid)
            pred = head(level_columns(levels, warmup + g.lookahead_frames, seq_len))
            loss, _ = distill_loss(pred, head.standardise(torch.from_numpy(b.teacher)))
            if keep_weight > 0:
                with torch.no_grad():
                    ref = reference.audio_levels(mfcc, valid)
                loss = loss + keep_weight * sum(((a - r) ** 2).mean() for a, r in zip(levels, ref)) / len(levels)
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_([*params, *head.parameters()], 1.0)
        opt.step()
        losses.append(total / len(samplers))
    G.eval()
    for p in G.parameters():
        p.requires_grad_(False)
    return losses


def fit_head(G, tracks, steps: int, seed: int, warmup: int, seq_len: int = 64):
    """A new linear head on G's frozen encoder (its input degraded as in distillation)."""
    import torch

    from training.data.channel_augment import ChannelAugmentConfig
    from training.data.distill_windows import DistillWindows
    from training.models.distill_head import DistillHead, distill_loss, level_columns

    g = G.cfg
    allt = np.concatenate([t.teacher for t in tracks])
    head = DistillHead(len(g.level_dilations) * g.audio_channels, allt.shape[1])
    head.set_teacher_statistics(allt)
    sampler = DistillWindows(tracks, seq_len, g.lookahead_frames, warmup, g.frontend, 0)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    G.eval()
    for _ in range(steps):
        b = sampler.sample(32, rng, ChannelAugmentConfig())
        with torch.no_grad():
            levels = G.audio_levels(G.mfcc(torch.from_numpy(b.audio)), torch.from_numpy(b.valid))
            cols = level_columns(levels, warmup + g.lookahead_frames, seq_len)
        loss, rec = distill_loss(head(cols), head.standardise(torch.from_numpy(b.teacher)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head, rec


def lip_scores(G, segments, windows: int, frames: int, seed: int) -> dict[str, float]:
    """Median lag-0 gap r and amplitude ratio over fixed windows of `segments`."""
    from benchmarks.gap_lag import generated_gaps, lag_profile
    from training.data.clips import ClipLoadConfig
    from training.data.generator_batches import WindowSampler

    w, la = G.cfg.receptive_field_frames[-1] - 1, G.cfg.lookahead_frames
    sampler = WindowSampler(segments, frames, la, w, ClipLoadConfig().frontend)
    pred, ref = generated_gaps(G, sampler, windows, seed)
    return {
        "r": lag_profile(pred, ref, lags=[0])[0],
        "amplitude": float(np.median(pred.std(1) / np.maximum(ref.std(1), 1e-6))),
    }


def condition_audio(enrol_segs: list, eval_segs: list, val_segs: list) -> dict[str, list[np.ndarray]]:
    """The audio each adapted condition of one speaker trains on (beside the base windows): "adapted" its enrolment
    clips, "control" the val split (no test voice), "evaluation audio" the clips it is scored on (the upper-bound
    row: their audio, never their faces). Only the last one holds audio of the evaluation clips."""
    return {
        "adapted": [s.audio for s in enrol_segs],
        "control": [s.audio for s in val_segs],
        "evaluation audio": [s.audio for s in eval_segs],
    }


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module doc as written, and every option's default in --help."""


MIN_SECONDS = 4.0  # the least enrolment or evaluation audio of a speaker that is measured


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--generator", default="training/weights/generator", help="the generator checkpoint adapted")
    p.add_argument("--data-dir", default="../shared/data", help="the talking-face data (splits by identity)")
    p.add_argument("--steps", type=int, default=200, help="adaptation steps (8 enrolment + 8 base windows each)")
    p.add_argument("--head-steps", type=int, default=300, help="steps fitting the distillation head first")
    p.add_argument("--lr", type=float, default=1e-4, help="the audio encoder's learning rate while adapting")
    p.add_argument("--keep-weight", type=float, default=0.1, help="weight of the term holding the encoder's levels")
    p.add_argument("--no-base", action="store_true", help="adapt on the enrolment audio alone (no base windows)")
    p.add_argument("--enrol-share", type=float, default=0.5, help="share of each speaker's clips that enrol")
    p.add_argument("--windows", type=int, default=48, help="evaluation windows per speaker and on the val split")
    p.add_argument("--frames", type=int, default=50, help="frames per evaluation window (the first 10 unscored)")
    p.add_argument(
        "--seed",
        type=int,
        default=5,
        help="draws the head's and the adaptation's windows, the generator's noise and the evaluation windows",
    )
    p.add_argument("--out", default="benchmarks/results", help="folder of the report")
    p.add_argument("--name", default="voice_adapt", help="the report's file name: NAME.json and NAME.md")
    a = p.parse_args(argv)

    import copy

    import torch

    sys.path.insert(0, str(REPO))
    from benchmarks.common import machine_info, write_report
    from training.data.clips import ClipLoadConfig, load_all
    from training.data.distill_windows import pack_clips, teacher_tracks
    from training.data.manifest import read_manifest
    from training.data.splits import assign_splits
    from training.models.generator import load_generator
    from training.teacher import default_cache_dir

    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    t0 = time.time()
    records = assign_splits(read_manifest(a.data_dir))
    cache = default_cache_dir()
    cfg = ClipLoadConfig()

    def tracks(audios, tag, pack=False):
        audios = pack_clips(audios) if pack else audios
        return teacher_tracks(audios, [f"{tag} {i}" for i in range(len(audios))], cache, False)

    base_segs = load_all(records["train"], cfg, progress=False)
    val_segs = load_all(records["val"], cfg, progress=False)
    base_tracks = tracks([s.audio for s in base_segs + val_segs], "shared")
    split = enrolment_split(records["test"], a.enrol_share)
    G0, _ = load_generator(a.generator)
    G0.eval()
    warmup = G0.cfg.receptive_field_frames[-1] - 1
    head0, head_rec = fit_head(G0, base_tracks, a.head_steps, a.seed, warmup)
    print(f"head fitted: {head_rec} ({time.time() - t0:.0f} s)", file=sys.stderr)
    flags = (
        f"--steps {a.steps} --keep-weight {a.keep_weight} --lr {a.lr} --seed {a.seed} --enrol-share {a.enrol_share}"
        + (" --no-base" if a.no_base else "")
    )
    result: dict[str, Any] = {
        "command": "python -m benchmarks.voice_adapt " + " ".join(sys.argv[1:] if argv is None else argv),
        "effective_flags": flags,
        "args": vars(a),
        "head": head_rec,
        "speakers": {},
        "left_out": {},
        "val_split": {"shipped": lip_scores(G0, val_segs, a.windows, a.frames, a.seed)},
    }

    def adapted(audio):
        G, head = copy.deepcopy(G0), copy.deepcopy(head0)
        base = None if a.no_base else base_tracks
        losses = adapt(G, head, audio, base, a.steps, a.seed, a.lr, warmup, keep_weight=a.keep_weight, reference=G0)
        return G, [float(np.mean(losses[:10])), float(np.mean(losses[-10:]))]

    control: Any = None  # the same model for every speaker: trained once, on the val split's audio
    for ident, (enrol, held) in split.items():
        enrol_segs, eval_segs = load_all(enrol, cfg, progress=False), load_all(held, cfg, progress=False)
        enrol_s = sum(len(s.audio) for s in enrol_segs) / 16000
        eval_s = sum(len(s.audio) for s in eval_segs) / 16000
        if min(enrol_s, eval_s) < MIN_SECONDS:
            why = (
                f"{enrol_s:.1f} s of enrolment and {eval_s:.1f} s of evaluation audio (needs {MIN_SECONDS:.0f} s each)"
            )
            result["left_out"][ident] = why
            print(f"{ident}: left out, {why}", file=sys.stderr)
            continue
        row: dict[str, Any] = {"enrol_seconds": round(enrol_s, 1), "eval_seconds": round(eval_s, 1)}
        row["shipped"] = lip_scores(G0, eval_segs, a.windows, a.frames, a.seed)
        for kind, audio in condition_audio(enrol_segs, eval_segs, val_segs).items():
            if kind == "control":
                if control is None:
                    control = adapted(tracks(audio, "shared val"))
                G, losses = control
            else:
                G, losses = adapted(tracks(audio, f"{kind} {ident}", pack=True))
            row[kind] = {**lip_scores(G, eval_segs, a.windows, a.frames, a.seed), "loss_first_last": losses}
            if kind == "adapted":
                row[kind]["val_split"] = lip_scores(G, val_segs, a.windows, a.frames, a.seed)
        result["speakers"][ident] = row
        scores = ", ".join(f"{k} r {row[k]['r']:.2f}" for k in ("shipped", "control", "adapted", "evaluation audio"))
        print(f"{ident}: {scores} ({time.time() - t0:.0f} s)", file=sys.stderr)
    result["wall_s"] = time.time() - t0
    result["machine"] = machine_info()
    write_report(Path(a.out), a.name, result, markdown(result))
    return 0


def markdown(result: dict) -> str:
    """One row per speaker: enrolment and evaluation seconds, lag-0 gap r and amplitude, shipped / control / adapted."""
    lines = [
        "# Adapting the audio encoder to a voice from its audio alone",
        "",
        f"Command: `{result['command'].strip()}` (in effect: {result.get('effective_flags', '-')}). Machine: "
        f"{result['machine'].get('cpu')}, one torch thread, {result['wall_s'] / 60:.0f} min. "
        f"{result['args']['windows']} windows of {result['args']['frames']} frames (the last "
        f"{result['args']['frames'] - 10} scored) of each speaker's evaluation clips, whose audio only the "
        '"evaluation audio" column adapted on; lag-0 inner-lip gap r with ground truth and amplitude ratio, medians '
        "over windows.",
        "",
        "| test speaker | enrol / eval s | shipped: r, amplitude | control (val audio): r, amplitude "
        "| adapted: r, amplitude | on the evaluation audio itself: r, amplitude "
        "| adapted, val split windows: r, amplitude |",
        "|---|---|---|---|---|---|---|",
    ]
    v0 = result["val_split"]["shipped"]
    for ident, row in result["speakers"].items():
        kinds = ("shipped", "control", "adapted", "evaluation audio")
        cells = [f"{row[k]['r']:.2f}, {row[k]['amplitude']:.2f}" if k in row else "-" for k in kinds]
        vs = row["adapted"]["val_split"]
        lines.append(
            f"| {ident} | {row['enrol_seconds']:.0f} / {row['eval_seconds']:.0f} | {' | '.join(cells)} | "
            f"{vs['r']:.2f}, {vs['amplitude']:.2f} (shipped {v0['r']:.2f}, {v0['amplitude']:.2f}) |"
        )
    for ident, why in result.get("left_out", {}).items():
        lines.append(f"\nLeft out: {ident}, {why}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
