"""Scoring landmark sequences against their audio: AV offset/confidence per pyramid level with the metric
syncers, LMD, motion statistics, FD-motion, and their summaries over sequences."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from training.eval.sequences import GT, SHUFFLED, STATIC, EvalSequence

MOTION_KEYS_DOC = {
    "velocity": "mean per-point speed, normalised units/frame",
    "acceleration": "mean per-point acceleration, normalised units/frame²",
    "head_energy_l{l}": "mean squared velocity of the level-l head (jaw+nose centroid) trajectory, units²/level-l sample",
    "mouth_open_mean/std": "inner-lip gap ‖p62−p66‖, normalised units",
}


def score_method(
    pyr, items, sequences: list[EvalSequence], vshift: int, desc: str, progress: bool = True, padding: str = "zero"
) -> list[dict]:
    """Per-sequence results: `key`, `levels` (av_sync output, mdist as list), `lmd`, `motion`."""
    from tqdm import tqdm

    from training.metrics.motion import lmd_stats, motion_stats
    from training.metrics.sync import av_sync

    cfg = pyr.cfg
    out = []
    for i, lm, mf in tqdm(items, desc=desc, disable=not progress, unit="seq"):
        levels = av_sync(pyr, lm, mf, vshift=vshift, padding=padding)
        for e in levels:
            e["mdist"] = (
                None if e["mdist"] is None else [round(float(v), 5) if np.isfinite(v) else None for v in e["mdist"]]
            )
        out.append(
            {
                "key": sequences[i].key,
                "levels": levels,
                "lmd": lmd_stats(lm, sequences[i].landmarks),
                "motion": motion_stats(lm, cfg.num_levels, cfg.pyramid_kernel),
            }
        )
    return out


def score_pieces(
    pyr, pieces: list[tuple[np.ndarray, np.ndarray]], vshift: int, padding: str, desc: str, progress: bool
) -> list[dict]:
    """AV sync per level and motion statistics of (landmarks, mfcc) pieces without ground truth (the drift rows):
    the per-sequence records of :func:`score_method`, with an empty `lmd` and no `mdist`."""
    from tqdm import tqdm

    from training.metrics.motion import motion_stats
    from training.metrics.sync import av_sync

    cfg = pyr.cfg
    out = []
    for lm, mf in tqdm(pieces, desc=desc, disable=not progress, unit="seq"):
        levels = av_sync(pyr, lm, mf, vshift=vshift, padding=padding)
        for e in levels:
            e.pop("mdist", None)
        out.append({"levels": levels, "lmd": {}, "motion": motion_stats(lm, cfg.num_levels, cfg.pyramid_kernel)})
    return out


def mean_std(values) -> dict:
    """Mean, std, median and count of the finite, non-None values (NaN with n = 0 when none)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not v.size:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)), "n": int(v.size)}


def summarise(records: list[dict], num_levels: int) -> dict:
    """Aggregate per-sequence records of one method: per level |AV-Off|, signed AV-Off, AV-Conf, LSE-D; LMD; motion."""
    levels = []
    for lvl in range(num_levels):
        ents = [r["levels"][lvl] for r in records if r["levels"][lvl]["offset_frames"] is not None]
        levels.append(
            {
                "level": lvl,
                "segment_ms": 200.0 * 2**lvl,
                "n": len(ents),
                "abs_offset": mean_std([abs(e["offset_frames"]) for e in ents]),
                "offset": mean_std([e["offset_frames"] for e in ents]),
                "confidence": mean_std([e["confidence"] for e in ents]),
                "min_dist": mean_std([e["min_dist"] for e in ents]),
            }
        )
    lmd = {k: mean_std([r["lmd"][k] for r in records]) for k in (records[0]["lmd"] if records else {})}
    motion = {k: mean_std([r["motion"][k] for r in records]) for k in (records[0]["motion"] if records else {})}
    return {"n": len(records), "levels": levels, "lmd": lmd, "motion": motion}


TARGET_MARGIN = 1.10  # issue 10: ground truth's AV-Conf at least 10 % above each control at every level


MIN_CHECK_SEQUENCES = 30  # below this the checks' means are too noisy to call (the test split gives 42)


def checks(summaries: dict, padding: str | None = None) -> dict:
    """The sanity conditions the metric must meet on real data: GT beats both controls on AV-Conf at every level
    (and by how much: `gt_conf_ratio_*`, and whether by at least TARGET_MARGIN), and the GT median |AV-Off| at the
    finest level is at most 1 frame. `all_pass` asks for the margin; `padding` records the offset search used."""
    gt = summaries[GT]["levels"]
    out: dict[str, Any] = {"padding": padding, "sequences": int(summaries[GT].get("n", 0))}
    margins = []
    for name in (STATIC, SHUFFLED):
        other = summaries[name]["levels"]
        key = name.replace(" ", "_")
        out[f"gt_conf_above_{key}"] = [
            bool(g["confidence"]["mean"] > o["confidence"]["mean"]) for g, o in zip(gt, other)
        ]
        ratios = [
            g["confidence"]["mean"] / o["confidence"]["mean"] if o["confidence"]["mean"] > 0 else math.inf
            for g, o in zip(gt, other)
        ]
        out[f"gt_conf_ratio_{key}"] = ratios
        out[f"gt_conf_margin_{key}"] = [bool(r >= TARGET_MARGIN) for r in ratios]
        margins += out[f"gt_conf_margin_{key}"]
    out["gt_median_abs_offset_l0"] = gt[0]["abs_offset"]["median"]
    out["gt_median_abs_offset_l0_le_1"] = bool(gt[0]["abs_offset"]["median"] <= 1)
    out["all_pass"] = bool(all(margins) and out["gt_median_abs_offset_l0_le_1"])
    return out


def valid_padding_checks(pyr, rows: dict, sequences: list[EvalSequence], vshift: int, progress: bool) -> dict:
    """:func:`checks` of the three control rows (GT, static face, shuffled audio) re-scored with valid padding."""
    summaries = {
        m: summarise(
            score_method(pyr, rows[m], sequences, vshift, f"{m} (valid)", progress, "valid"), pyr.cfg.num_levels
        )
        for m in (GT, STATIC, SHUFFLED)
    }
    return checks(summaries, "valid")


def fd_levels(gt_feats: list[np.ndarray], feats: list[np.ndarray]) -> list[dict]:
    from training.metrics.dynamics import frechet_distance

    return [
        {"level": l, "fd": frechet_distance(g, f), "n_gt": len(g), "n": len(f)}
        for l, (g, f) in enumerate(zip(gt_feats, feats))
    ]
