"""How a model's head motion is spread over sequences, against ground truth's: quantiles and a 1-D Wasserstein.

    python -m benchmarks.head_distribution --eval runs/eval_15t/eval.json --out benchmarks/results/head_dist

Reads one `msync eval` report (`viewer.methods[row].head_energy_by_sequence`: each sequence's head energy at the
pyramid levels 200 / 400 / 800 / 1600 ms, `training.metrics.viewer.head_energy`), nothing recomputed. The
evaluation's ratio of means and paired median say how much a row moves; this says in which sequences: per level,
the 25th / 50th / 75th / 90th percentile over sequences of the row's energy as a ratio to ground truth's same
percentile (unpaired: a large movement in any sequence answers a large one in any other), and W1, the mean
absolute difference of the sorted log energies of the row and ground truth (the 1-D Wasserstein-1 distance the
training term `training.face_losses.head_quantile_terms` uses, here over the evaluation's sequences; 0 = the same
distribution). Ground truth's heavy upper tail (a few sequences with large, slow movements) shows as ratios
below 1 at p90 while p25-p50 sit above 1 for a row that sways everywhere. Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

LEVEL_MS = (200, 400, 800, 1600)
PERCENTILES = (25, 50, 75, 90)
FLOOR = 1e-8  # IOD² per sample, as the training term's


def energies(report: dict, row: str) -> np.ndarray:
    """(n_sequences, 4) head energy per sequence and level of one row, sequences in index order."""
    seqs = report["viewer"]["methods"][row]["head_energy_by_sequence"]
    return np.array([seqs[k] for k in sorted(seqs, key=int)], dtype=np.float64)


def distribution(e: np.ndarray, gt: np.ndarray) -> dict:
    """Per level: the row's percentiles over sequences ÷ ground truth's, and W1 of the log energies.

    Args:
        e, gt: (n, levels) energies of the row and ground truth (same n, same sequences).
    Returns:
        {"percentile_ratio": [[p25, p50, p75, p90] per level], "w1_log": [per level]}.
    Raises:
        ValueError: the two hold different numbers of sequences.
    """
    if e.shape != gt.shape:
        raise ValueError(f"row and ground truth differ in shape: {e.shape} vs {gt.shape}")
    ratios, w1 = [], []
    for lvl in range(e.shape[1]):
        pe, pg = np.percentile(e[:, lvl], PERCENTILES), np.percentile(gt[:, lvl], PERCENTILES)
        ratios.append([float(a / b) if b > 0 else math.nan for a, b in zip(pe, pg)])
        le, lg = np.sort(np.log(e[:, lvl] + FLOOR)), np.sort(np.log(gt[:, lvl] + FLOOR))
        w1.append(float(np.abs(le - lg).mean()))
    return {"percentile_ratio": ratios, "w1_log": w1}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import write_report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval", required=True, help="an `msync eval` report's eval.json")
    p.add_argument("--out", default="benchmarks/results/head_distribution", help="OUT.md / OUT.json")
    p.add_argument("--levels", default="2,3", help="pyramid levels to show (0 = 200 ms ... 3 = 1.6 s)")
    a = p.parse_args(argv)
    with open(a.eval) as f:
        report = json.load(f)
    levels = [int(x) for x in a.levels.split(",")]
    gt = energies(report, "ground truth")
    rows = {}
    for name, m in report["viewer"]["methods"].items():
        if name == "ground truth" or not m.get("head_energy_by_sequence") or energies(report, name).max() < FLOOR:
            continue
        rows[name] = distribution(energies(report, name), gt)
    head = " | ".join(f"{LEVEL_MS[lv]} ms p{'/'.join(map(str, PERCENTILES))}" for lv in levels)
    md = [
        "# Head energy over sequences: percentiles against ground truth's, and W1 of the log energies",
        "",
        f"`python -m benchmarks.head_distribution --eval {a.eval} --levels {a.levels}` ({len(gt)} sequences). "
        "Percentile ratios: the row's p-th percentile over sequences ÷ ground truth's (1 = the same spread); "
        "W1: mean |sorted log E_row − sorted log E_gt| (0 = the same distribution). Ground truth's percentiles "
        "(×10⁻⁶): "
        + "; ".join(
            f"{LEVEL_MS[lv]} ms " + "/".join(f"{v * 1e6:.0f}" for v in np.percentile(gt[:, lv], PERCENTILES))
            for lv in levels
        )
        + ".",
        "",
        f"| row | {head} | " + " | ".join(f"W1 {LEVEL_MS[lv]} ms" for lv in levels) + " |",
        "|---|" + "---|" * (2 * len(levels)),
    ]
    for name, r in rows.items():
        cells = ["/".join(f"{x:.2f}" for x in r["percentile_ratio"][lv]) for lv in levels]
        cells += [f"{r['w1_log'][lv]:.2f}" for lv in levels]
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    out = Path(a.out)
    write_report(out.parent, out.name, {"rows": rows, "levels": levels, "eval": a.eval}, "\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
