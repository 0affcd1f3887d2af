"""One table of the `msync eval` columns that issue 15's targets name, every row of one report side by side.

    python -m benchmarks.eval_summary --eval runs/eval_distill/eval.json --out benchmarks/results/eval_v03_distill

Reads the report's JSON (nothing is recomputed, so every row was scored in the same run on the same sequences)
and writes OUT.md / OUT.json: AV confidence at the four scales (mean over sequences), the inner-lip gap's r with
ground truth (lag 0 / best lag), its amplitude ratio, bilabial closure, the gap in the non-speech set (p50 / p90,
all kinds, and p90 per kind), head energy per scale and ranges as ratios to ground truth, head bias.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KINDS = ("silence", "noise -48 dBFS", "noise -42 dBFS", "hum", "chord", "breathing")


def _f(x, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def summarise(report: dict) -> dict[str, dict]:
    """{row name: {measure: value}} for every method of the report."""
    viewer = report.get("viewer", {}).get("methods", {})
    rest = report.get("viewer", {}).get("rest", {}).get("rows", {})
    out = {}
    for name, m in report["methods"].items():
        v, r = viewer.get(name, {}), rest.get(name, {})
        row = {"av_conf": [lvl["confidence"]["mean"] for lvl in m["levels"]]}
        for k in (
            "r_lag0",
            "r_best",
            "r_lag0_history",
            "r_best_history",
            "amplitude_ratio",
            "bilabial_min_gap_median",
            "bilabial_closed_share",
        ):
            row[k] = v.get(k)
        row["head_energy_ratio"] = v.get("head_energy_ratio")
        row["range_ratio"] = [v.get(f"{a}_range_ratio") for a in ("yaw", "pitch", "roll")]
        row["bias"] = [v.get(f"{a}_bias") for a in ("yaw", "pitch", "roll")]
        if r:
            row["rest_all"] = [r.get("all", {}).get("gap_p50"), r.get("all", {}).get("gap_p90")]
            row["rest_p90"] = [r.get(k, {}).get("gap_p90") for k in KINDS]
        out[name] = row
    return out


def lag_profile(
    predictions_dir: str | Path, data_dir: str = "../shared/data", lags=range(-3, 4), config: dict | None = None
) -> dict:
    """{model: {lag: median over clips of r}} of the inner-lip gap against ground truth at each lag (pred[t + k]
    with ref[t]; k < 0: the model's mouth moves early), from an `msync eval` predictions folder (test split; each
    sequence's gap centred on its own mean, a clip's sequences joined, like the report's articulation columns)."""
    import collections

    import numpy as np

    from stream_engine.dataclass_io import from_dict
    from training.data.clips import ClipLoadConfig, load_all
    from training.data.manifest import read_manifest
    from training.data.splits import SplitConfig, assign_splits
    from training.eval.sequences import load_predictions
    from training.metrics.viewer import lip_gap

    cfg = config or {}
    splits = from_dict(SplitConfig, cfg["splits"]) if isinstance(cfg.get("splits"), dict) else SplitConfig()
    split = cfg.get("split", "test")
    segs = load_all(
        assign_splits(read_manifest(cfg.get("data_dir", data_dir)), splits)[split], ClipLoadConfig(), progress=False
    )
    out = {}
    for model_dir in sorted(Path(predictions_dir).iterdir()):
        preds = load_predictions(model_dir)
        by_clip = collections.defaultdict(list)
        for p in preds:
            for seg in segs:
                off = p.start_frame - seg.start_frame
                if seg.clip_id == p.clip_id and 0 <= off and off + len(p.landmarks) <= seg.num_frames:
                    by_clip[p.clip_id].append((p.start_frame, p.landmarks, seg.landmarks[off : off + len(p.landmarks)]))
                    break
        prof = collections.defaultdict(list)
        for group in by_clip.values():
            group.sort(key=lambda x: x[0])
            a = np.concatenate([lip_gap(x[1]) - lip_gap(x[1]).mean() for x in group])
            b = np.concatenate([lip_gap(x[2]) - lip_gap(x[2]).mean() for x in group])
            for k in lags:
                pa, rb = (a[k:], b[: len(b) - k]) if k >= 0 else (a[:k], b[-k:])
                if pa.std() > 0 and rb.std() > 0:
                    prof[k].append(float(np.corrcoef(pa, rb)[0, 1]))
        out[model_dir.name] = {k: float(np.median(v)) for k, v in sorted(prof.items()) if v}
    return out


def markdown(rows: dict[str, dict], source: str) -> str:
    names = list(rows)
    lines = [
        f"Summary of `{source}` (`python -m benchmarks.eval_summary`): every row scored in one `msync eval` run.",
        "",
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def add(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(rows[n]) for n in names) + " |")

    add("AV-Conf 200 / 400 / 800 / 1600 ms", lambda r: " / ".join(_f(c) for c in r["av_conf"]))
    add("inner-lip gap r, lag 0 / best", lambda r: f"{_f(r['r_lag0'])} / {_f(r['r_best'])}")
    add(
        "the same on frames with real audio history",
        lambda r: f"{_f(r.get('r_lag0_history'))} / {_f(r.get('r_best_history'))}",
    )
    add("gap amplitude (std ratio)", lambda r: _f(r["amplitude_ratio"]))
    add(
        "bilabial min gap / closed ≤ 0.04",
        lambda r: f"{_f(r['bilabial_min_gap_median'], '{:.3f}')} / {_f(r['bilabial_closed_share'], '{:.0%}')}",
    )
    add(
        "non-speech gap p50 / p90, all kinds (IOD)",
        lambda r: " / ".join(_f(x, "{:.3f}") for x in r["rest_all"]) if "rest_all" in r else "–",
    )
    add(
        "… p90: silence / noise −48 / −42 / hum / chord / breathing",
        lambda r: " / ".join(_f(x, "{:.3f}") for x in r["rest_p90"]) if "rest_p90" in r else "–",
    )
    add(
        "head energy 200 / 400 / 800 / 1600 ms (× GT)",
        lambda r: " / ".join(_f(x) for x in r["head_energy_ratio"]) if r["head_energy_ratio"] else "–",
    )
    add("head range yaw / pitch / roll (× GT)", lambda r: " / ".join(_f(x) for x in r["range_ratio"]))
    add("head bias yaw / pitch / roll (°)", lambda r: " / ".join(_f(x, "{:+.1f}") for x in r["bias"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval", required=True, help="an `msync eval` report JSON (OUT/eval.json)")
    p.add_argument("--out", required=True, help="output stem: OUT.md and OUT.json")
    p.add_argument("--lags", action="store_true", help="add the gap's r at lags -3..+3 from the eval's predictions/")
    args = p.parse_args(argv)
    if not Path(args.eval).is_file():
        p.error(f"{args.eval} is not a file (give the eval.json an `msync eval --out DIR` run wrote)")
    try:
        report = json.loads(Path(args.eval).read_text())
        report["methods"]
    except (ValueError, KeyError, TypeError):
        p.error(f"{args.eval} is not an `msync eval` report (eval.json)")
    rows = summarise(report)
    md = markdown(rows, args.eval)
    if args.lags:
        predictions = Path(args.eval).parent / "predictions"
        if not predictions.is_dir():
            p.error(f"--lags reads the predictions/ folder beside {args.eval}, and there is none")
        prof = lag_profile(predictions, config=report.get("config"))
        lags = sorted({k for v in prof.values() for k in v})
        md += "\nInner-lip gap r with ground truth at each lag (pred[t + k] vs GT[t]; k < 0 = the mouth moves early), "
        md += (
            "median over clips:\n\n| row | "
            + " | ".join(f"{k:+d}" for k in lags)
            + " |\n|---|"
            + "---|" * len(lags)
            + "\n"
        )
        for name, v in prof.items():
            md += f"| {name} | " + " | ".join(_f(v.get(k)) for k in lags) + " |\n"
        for name, v in prof.items():
            for key in rows:
                if key.replace(" ", "_") == name:
                    rows[key]["lag_profile"] = v
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
