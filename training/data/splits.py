"""Speaker-disjoint train/val/test splits, deterministic for a given manifest."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict

from training.data.manifest import ClipRecord

# Clips whose audio runs 200-400 ms behind the lips (../shared/data/README.md): unusable as sync ground truth.
KNOWN_OFFSET_CLIPS = (
    "edtalk__test_data__pose_source2.mp4",
    "lia__data__vox__obama.mov",
)


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How identities are assigned to splits.

    Attributes:
        test_fraction, val_fraction: share of eligible identities sent to test and val.
        max_heldout_minutes: identities with more speech than this always train (GRID s1, the long TV speakers):
            holding them out would leave too little to learn from.
        seed: salt of the hash that assigns identities; change it for another split.
        exclude_ids: clips used nowhere.
    """

    test_fraction: float = 0.15
    val_fraction: float = 0.10
    max_heldout_minutes: float = 1.0
    seed: str = "msync-v1"
    exclude_ids: tuple[str, ...] = KNOWN_OFFSET_CLIPS


def _unit_hash(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / float(16**12)


def assign_splits(records: list[ClipRecord], cfg: SplitConfig = SplitConfig()) -> dict[str, list[ClipRecord]]:
    """Split clips by identity into {"train", "val", "test"}; no identity appears in two splits."""
    minutes: dict[str, float] = defaultdict(float)
    for r in records:
        minutes[r.identity] += r.duration_s / 60.0
    out: dict[str, list[ClipRecord]] = {"train": [], "val": [], "test": []}
    for r in records:
        if r.id in cfg.exclude_ids:
            continue
        if minutes[r.identity] > cfg.max_heldout_minutes:
            split = "train"
        else:
            u = _unit_hash(f"{cfg.seed}:{r.identity}")
            split = "test" if u < cfg.test_fraction else "val" if u < cfg.test_fraction + cfg.val_fraction else "train"
        out[split].append(r)
    return out
