"""A real subset of a data folder that fits a size budget, for machines that take only a few tens of MB of files
(a lent GPU here takes 64 MiB with the checkout): every validation clip, the small training collections whole,
then the three large ones (GRID s1, TalkVid, Hallo3) in turn until the budget is spent; test clips never.

    python -m benchmarks.data_subset --data ../shared/data --out .gpudata --mb 16     # 64 clips, 16.0 MB

Writes OUT/manifest.tsv (the source manifest's rows of the chosen clips, so the speaker-disjoint splits stay the
same) and OUT/clips/ (their .flac, .lm68.npy and .det.npy). Deterministic (`--seed`).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

LARGE_GROUPS = ("tvr28lipnet", "talkvid", "hallo3")
SUFFIXES = (".flac", ".lm68.npy", ".det.npy")


def clip_bytes(clips: Path, clip_id: str) -> int:
    return sum((clips / f"{clip_id}{s}").stat().st_size for s in SUFFIXES if (clips / f"{clip_id}{s}").exists())


def choose(records: dict, clips: Path, budget: int, seed: int = 0) -> list[str]:
    """Clip ids: validation first, then small training groups, then the large groups round-robin, within `budget`
    bytes."""
    train = list(records["train"])
    random.Random(seed).shuffle(train)
    picked, total = [], 0

    def take(rec) -> None:
        nonlocal total
        size = clip_bytes(clips, rec.id)
        if total + size <= budget:
            picked.append(rec.id)
            total += size

    for rec in records["val"]:
        take(rec)
    for rec in train:
        if rec.group not in LARGE_GROUPS:
            take(rec)
    queues = [[r for r in train if r.group == g] for g in LARGE_GROUPS]
    while any(queues) and total < budget:
        for q in queues:
            if q:
                take(q.pop())
    return picked


def main(argv: list[str] | None = None) -> int:
    from training.data.manifest import read_manifest
    from training.data.splits import assign_splits

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", required=True, help="new folder (replaced if it exists)")
    p.add_argument("--mb", type=float, default=16.0, help="size budget in MB (10^6 bytes)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    src, out = Path(a.data), Path(a.out)
    if not (src / "manifest.tsv").is_file():
        print(f"data_subset: {src}/manifest.tsv not found", file=sys.stderr)
        return 2
    ids = set(choose(assign_splits(read_manifest(src)), src / "clips", int(a.mb * 1e6), a.seed))
    if out.exists():
        shutil.rmtree(out)
    (out / "clips").mkdir(parents=True)
    lines = (src / "manifest.tsv").read_text().splitlines(keepends=True)
    (out / "manifest.tsv").write_text(lines[0] + "".join(ln for ln in lines[1:] if ln.split("\t")[0] in ids))
    for cid in sorted(ids):
        for s in SUFFIXES:
            f = src / "clips" / f"{cid}{s}"
            if f.exists():
                shutil.copy(f, out / "clips" / f.name)
    size = sum(f.stat().st_size for f in (out / "clips").iterdir())
    print(f"data_subset: {len(ids)} clips, {size / 1e6:.1f} MB in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
