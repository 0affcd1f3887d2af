"""How well syncer pyramids discriminate on a held-out split, per level: retrieval and time offsets.

    python -m training.eval.syncer_check --syncers loss=training/weights/syncers \\
        --syncers metric-v2=training/weights/metric_syncers_v2 --split test --out benchmarks/results/syncer_check

For every pyramid and level, on fixed unaugmented samples of the split (the same seeds for every pyramid):
- retrieval: top-1 accuracy of the aligned audio among 49 candidates (48 other segments, mixed clips and times;
  chance 2.0 %), as `msync train-syncers` measures it;
- offset discrimination: top-1 accuracy of the aligned audio against 8 windows of the same clip shifted by 1 to
  `max_shift[level]` samples at the level's rate (±15, 15, 8, 3: the range `msync eval-sync --padding valid`
  searches on 80-frame sequences; chance 1/9 = 11 % at levels 0-2, higher at level 3 where fewer distinct
  shifts exist: shown as `chance` from the same draws), i.e. SyncNet's question "is this the right time?".
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np


def check(path: str, segments: list, cfg, device: str = "cpu", groups: int = 48, seed: int = 1234) -> dict:
    """Per-level retrieval and offset accuracy of the pyramid at `path` on `segments` (one split)."""
    import torch

    from training.data.syncer_batches import syncer_store
    from training.models.syncer import group_loss, load_pyramid

    pyr = load_pyramid(path, device)
    out: dict = {
        "path": path,
        "loss": pyr.cfg.loss,
        "centring": pyr.cfg.landmark_centering,
        "audio": pyr.cfg.audio_input,
        "levels": [],
    }
    store = syncer_store(segments, pyr.cfg, cfg.clips.frontend)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for lvl in range(pyr.cfg.num_levels):
            accs, shift_accs, chance = [], [], []
            for _ in range(groups):
                g = store.sample_group(lvl, rng, 49, cfg.per_clip, augment=None)
                e_a, e_x = pyr.embed(lvl, torch.from_numpy(g.landmarks), torch.from_numpy(g.mfcc))
                accs.append(float(group_loss(pyr.cfg, e_a[None], e_x[None])[1]))
                lm, mf = store.sample_shift_group(lvl, rng, 32, cfg.max_shift[lvl], 8, augment=None)
                n, c = mf.shape[:2]
                e_a, e_x = pyr.embed(lvl, torch.from_numpy(lm), torch.from_numpy(mf.reshape(n * c, *mf.shape[2:])))
                d = (e_a.view(n, c, -1) - e_x[:, None]).norm(dim=-1)
                shift_accs.append(float((d.argmin(-1) == 0).float().mean()))
                # chance: 1 / number of distinct candidates (shifts drawn with replacement where few exist)
                flat = mf.reshape(n, c, -1)
                chance.append(float(np.mean([1.0 / len(np.unique(f, axis=0)) for f in flat])))
            out["levels"].append(
                {
                    "level": lvl,
                    "segment_ms": pyr.cfg.segment_ms[lvl],
                    "retrieval": float(np.mean(accs)),
                    "offset_accuracy": float(np.mean(shift_accs)),
                    "offset_chance": float(np.mean(chance)),
                    "max_shift": cfg.max_shift[lvl],
                }
            )
    return out


def markdown(result: dict) -> str:
    lines = [
        "# Syncer pyramids on held-out speakers: retrieval and offset discrimination",
        "",
        f"Split `{result['split']}` of `{result['data_dir']}` ({result['segments']} segments); "
        f"{result['groups']} fixed groups per level; machine: {result['machine']}.",
        "Retrieval: top-1 of the aligned audio among 49 candidates (chance 2.0 %). Offset: top-1 of the aligned "
        "audio against 8 windows of the same clip shifted by 1..max shift samples at the level's rate (chance "
        "in brackets).",
        "",
    ]
    names = list(result["pyramids"])
    levels = result["pyramids"][names[0]]["levels"]
    head = ["pyramid", "loss / centring / audio"] + [
        f"{int(lv['segment_ms'])} ms: retrieval / offset (±{lv['max_shift']})" for lv in levels
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        p = result["pyramids"][name]
        cells = [
            f"{100 * lv['retrieval']:.1f} % / {100 * lv['offset_accuracy']:.0f} % ({100 * lv['offset_chance']:.0f} %)"
            for lv in p["levels"]
        ]
        kind = f"{p['loss']} / {p['centring']} / {p.get('audio', 'mfcc')}"
        lines.append(f"| {name} (`{p['path']}`) | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from training.run.machine import machine_info
    from training.train_syncers import TrainSyncersConfig, load_split_segments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--syncers", action="append", required=True, metavar="NAME=PATH", help="pyramid (repeatable)")
    ap.add_argument("--data", default="../shared/data", help="dataset directory (default: %(default)s)")
    ap.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="speaker-disjoint split (default: %(default)s)",
    )
    ap.add_argument(
        "--groups", type=int, default=48, help="fixed groups of clips scored per level (default: %(default)s)"
    )
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default: %(default)s)")
    ap.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(TrainSyncersConfig(), data_dir=args.data)
    segments = load_split_segments(cfg, progress=False)[args.split]
    mach = machine_info()
    result = {
        "split": args.split,
        "data_dir": args.data,
        "segments": len(segments),
        "groups": args.groups,
        "machine": f"{mach.get('cpu')}, load {mach.get('load_avg_1m')}",
        "pyramids": {},
    }
    for spec in args.syncers:
        name, _, path = spec.partition("=")
        result["pyramids"][name] = check(path, segments, cfg, groups=args.groups)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
