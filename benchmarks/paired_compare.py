"""Paired comparison of two generators' AV confidence in one `msync eval` report.

Every model in a report is scored on the same test sequences with the same noise seed, so the honest question
"does A beat B at scale l?" is about per-sequence differences, not about two overlapping mean ± std columns.
For each level this writes the mean difference conf(A) − conf(B), its standard error, a 95 % bootstrap
confidence interval (10,000 resamples of sequences) and the share of sequences where A scores higher.

    python -m benchmarks.paired_compare --eval runs/eval_ablations/eval.json --reference full \\
        --against "single-scale loss" --against "single-scale generator" --out benchmarks/results

Training seeds: a name may join several rows of the report with "+" (`--reference L2+L2_s1 --against L4+L4_s1`);
each sequence then scores the mean of those rows' confidences, so the comparison is over sequences with the seeds
averaged (the rows must be the same setting trained with different seeds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_report


def per_sequence_confidence(report: dict, model: str) -> np.ndarray:
    """(num_sequences, num_levels) AV confidence of `model`, NaN where a level could not be scored."""
    if model not in report["per_sequence"]:
        raise ValueError(f"no model {model!r} in the report; it has {sorted(report['per_sequence'])}")
    rows = report["per_sequence"][model]
    num_levels = max(len(r["levels"]) for r in rows)
    out = np.full((len(rows), num_levels), np.nan)
    for i, r in enumerate(rows):
        for lv in r["levels"]:
            if lv.get("confidence") is not None:
                out[i, lv["level"]] = lv["confidence"]
    return out


def pooled_confidence(report: dict, name: str) -> np.ndarray:
    """`per_sequence_confidence` of one row, or for "A+B+..." the per-sequence mean over those rows (a level is
    NaN where any row could not score it)."""
    parts = name.split("+")
    if not all(parts) or len(set(parts)) != len(parts):
        raise ValueError(f"model name {name!r}: rows joined with '+' must be distinct and non-empty")
    rows = [per_sequence_confidence(report, n) for n in parts]
    if len({r.shape for r in rows}) != 1:
        raise ValueError(f"{name}: the rows were not scored on the same sequences and levels")
    return np.mean(rows, axis=0)


def compare(a: np.ndarray, b: np.ndarray, resamples: int = 10000, seed: int = 0) -> list[dict]:
    """Per level: paired statistics of a − b over the sequences both scored."""
    rng = np.random.default_rng(seed)
    out = []
    for lvl in range(a.shape[1]):
        ok = np.isfinite(a[:, lvl]) & np.isfinite(b[:, lvl])
        d = a[ok, lvl] - b[ok, lvl]
        n = int(d.size)
        if n < 2:
            out.append({"level": lvl, "n": n})
            continue
        boot = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
        entry: dict[str, Any] = {
            "level": lvl,
            "segment_ms": 200 * 2**lvl,
            "n": n,
            "mean_diff": float(d.mean()),
            "se": float(d.std(ddof=1) / np.sqrt(n)),
            "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "win_share": float((d > 0).mean()),
        }
        out.append(entry)
    return out


def markdown(res: dict) -> str:
    lines = [
        "# Paired AV-confidence comparison",
        "",
        f"Report `{res['eval']}`; reference `{res['reference']}`. Per level: mean of conf(reference) − "
        "conf(other) over the same test sequences, its standard error, a 95 % bootstrap interval and the share "
        "of sequences where the reference scores higher. An interval above 0 means the reference wins at that "
        "scale on these sequences.",
        "",
    ]
    for other, levels in res["comparisons"].items():
        lines += [
            f"## {res['reference']} vs {other}",
            "",
            "| level | n | mean diff | s.e. | 95 % CI | reference higher |",
            "|---|---|---|---|---|---|",
        ]
        for r in levels:
            if "mean_diff" not in r:
                lines.append(f"| {r['level']} | {r['n']} | – | – | – | – |")
                continue
            lines.append(
                f"| {r['segment_ms']} ms | {r['n']} | {r['mean_diff']:+.3f} | {r['se']:.3f} | "
                f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {100 * r['win_share']:.0f} % |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--eval", required=True, help="eval.json of an `msync eval` run")
    p.add_argument("--reference", required=True, help='model name A ("A+A_s1": seeds averaged per sequence)')
    p.add_argument("--against", action="append", required=True, help="model name B (repeatable; + as above)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="paired_compare", help="output file stem")
    args = p.parse_args(argv)
    path = Path(args.eval)
    if not path.is_file():
        p.error(f"{path}: no such eval report")
    report = json.loads(path.read_text())
    try:
        ref = pooled_confidence(report, args.reference)
        comps = {o: compare(ref, pooled_confidence(report, o)) for o in args.against}
    except ValueError as exc:
        p.error(str(exc))
    res = {"eval": str(path), "reference": args.reference, "comparisons": comps}
    write_report(args.out, args.name, res, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
