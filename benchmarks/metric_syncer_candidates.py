"""Metric syncer candidates side by side: `msync eval-sync --padding valid` on the test split, per candidate.

    python -m benchmarks.metric_syncer_candidates --out benchmarks/results \
        --candidate v3=training/weights/metric_syncers_v3 --candidate v4=training/weights/metric_syncers_v4 ...

For every candidate pyramid (NAME=PATH, path without suffix) and every sequence length of `--seq-frames` (80 as in
the paper, 0 = whole gap-free segments), the evaluation runs exactly as

    msync eval-sync --split test --padding valid --seq-frames N --threads 1 --metric-syncers PATH --out DIR

(`training.eval.sync_eval.evaluate`, the same code) and the table gets issue 10's checks: ground truth's AV-Conf
over the static face's and over shuffled audio's at each scale (target ≥ 1.10×) and ground truth's median
|AV-Off| per scale (target ≤ 1 at 200 ms). What each candidate reads is taken from its checkpoint's JSON
(pooled, full-rate or composite levels; training step). Outputs `OUT/NAME.{md,json}` (`--name`), with the
machine and its load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.common import machine_info, write_report

SCALES = ("200 ms", "400 ms", "800 ms", "1600 ms")


def describe(meta: dict) -> str:
    """What each level of a pyramid reads, from its checkpoint meta."""
    sc = meta.get("syncer", {})
    full, comp = set(sc.get("full_rate_levels", ())), set(sc.get("composite_levels", ()))
    kinds = [
        "composite" if l in comp else "full-rate" if l in full else "pooled" for l in range(sc.get("num_levels", 4))
    ]
    src = meta.get("composed_from")
    made = f"composed from {src['source']}" if src else f"step {meta.get('step')}"
    return f"{'/'.join(kinds)}; audio {sc.get('audio_input', 'mfcc')}; {made}"


def measure(name: str, path: str, seq_frames: int, data_dir: str, threads: int, work: Path) -> dict:
    from training.checkpoint import load_meta
    from training.eval.sync_eval import EvalSyncConfig, evaluate

    cfg = EvalSyncConfig(
        data_dir=data_dir, split="test", metric_syncers=path, seq_frames=seq_frames, padding="valid", threads=threads
    )
    res = evaluate(cfg, work / f"{name}_{seq_frames}", progress=False)
    chk = res["checks"]
    gt = res["methods"]["ground truth"]["levels"]
    return {
        "candidate": name,
        "path": path,
        "reads": describe(load_meta(path)),
        "seq_frames": seq_frames,
        "sequences": res["meta"]["num_sequences"],
        "command": (
            f"msync eval-sync --split test --padding valid --seq-frames {seq_frames} --threads {threads} "
            f"--metric-syncers {path} --out DIR"
        ),
        "gt_over_static": chk["gt_conf_ratio_static_face"],
        "gt_over_shuffled": chk["gt_conf_ratio_shuffled_audio"],
        "gt_median_abs_offset": [lv["abs_offset"]["median"] for lv in gt],
        "all_pass": chk["all_pass"],
    }


def markdown(rows: list[dict], machine: dict, notes: list[str]) -> str:
    def ratios(v: list[float]) -> str:
        return " / ".join(f"**{x:.2f}×**" if x < 1.10 else f"{x:.2f}×" for x in v)

    lines = [
        "# Metric syncer candidates (issue 10): `msync eval-sync --padding valid`, test split",
        "",
        f"Machine: {machine['cpu']} ({machine['logical_cpus']} logical CPUs), load {machine['load_avg_1m']:.2f} at "
        f"{machine['time_utc']}, torch {machine.get('torch')}; one torch thread.",
        "Ratios are ground truth's mean AV-Conf over the control's at 200 / 400 / 800 / 1600 ms (target ≥ 1.10×, "
        "misses in bold); offsets are ground truth's median |AV-Off| per scale in that scale's samples (target ≤ 1 "
        "at 200 ms). Sequences of 80 frames (the paper's protocol; the targets are stated for these) and whole "
        "gap-free segments (`--seq-frames 0`).",
        "",
        "| candidate | levels read | seq | n | GT ÷ shuffled audio | GT ÷ static face | GT median \\|AV-Off\\| | all targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        off = " / ".join(f"{v:g}" for v in r["gt_median_abs_offset"])
        lines.append(
            f"| {r['candidate']} | {r['reads']} | {r['seq_frames'] or 'whole'} | {r['sequences']} | "
            f"{ratios(r['gt_over_shuffled'])} | {ratios(r['gt_over_static'])} | {off} | "
            f"{'pass' if r['all_pass'] else 'FAIL'} |"
        )
    lines += ["", "Commands (DIR is any output folder):", ""]
    for r in rows:
        lines.append(f"- {r['candidate']}, {r['seq_frames'] or 'whole'}: `{r['command']}`")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidate", action="append", required=True, help="NAME=PATH (checkpoint without suffix)")
    p.add_argument("--seq-frames", type=int, nargs="+", default=[80, 0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", action="append", default=[], help="a line for the Notes section")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="metric_syncers_v4_candidates")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.candidate:
            name, _, path = spec.partition("=")
            if not path:
                p.error(f"--candidate wants NAME=PATH, got {spec!r}")
            for sf in args.seq_frames:
                rows.append(measure(name, path, sf, args.data, args.threads, Path(tmp)))
                print(f"{name} seq {sf}: shuffled {rows[-1]['gt_over_shuffled']}", file=sys.stderr)
    machine = machine_info()
    write_report(
        args.out, args.name, {"machine": machine, "rows": rows, "notes": args.note}, markdown(rows, machine, args.note)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
