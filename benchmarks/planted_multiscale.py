"""Planted-correlation benchmark: is the syncer pyramid multi-scale, for each pyramid kernel?

The larger version of tests/test_planted_multiscale.py (see training/synthetic.py for the data): for every
pyramid kernel and seed, train a syncer pyramid with the real trainer on synthetic faces whose mouth follows
the speech at the 200 ms scale and whose head follows it at the 1.6 s scale, then measure at every level how
often aligned audio beats the same clip's audio shifted by >= 3.2 s (two-alternative forced choice, chance
0.5) on held-out audio for the variants both / mouth_only / head_only / none.

    python benchmarks/planted_multiscale.py --out runs/planted --kernels 7 3 --seeds 0 1

Writes OUT/results.json (every run, every cell, training metrics, timings) and OUT/results.md (tables of
the detection rate per level x variant, mean over seeds, and the separation checks of the unit test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import synthetic as syn  # noqa: E402

# Margins of the unit test (tests/test_planted_multiscale.py).
L0_MARGIN, L3_MARGIN = 0.25, 0.12

BENCH_GROUPS = (
    "hallo3",
    "talkvid",
    "stmux",
    "deepavsr",
    "text2video",
    "latentsync",
    "spectre",
    "retalk",
    "mimictalk",
    "lipnet",
    "yiranran",
    "sadtalker",
    "liveportrait",
    "vasa1hack",
    "edtalk",
    "lia",
)


def _mean_table(runs: list[dict], key: str = "afc") -> tuple[dict, dict]:
    """Mean and (when several seeds) min/max per variant x level over runs."""
    variants = list(runs[0]["detection"])
    levels = sorted(runs[0]["detection"][variants[0]])
    mean = {v: {l: {key: float(np.mean([r["detection"][v][l][key] for r in runs]))} for l in levels} for v in variants}
    spread = {
        v: {
            l: (min(r["detection"][v][l][key] for r in runs), max(r["detection"][v][l][key] for r in runs))
            for l in levels
        }
        for v in variants
    }
    return mean, spread


def _separation(det: dict) -> dict:
    top = max(det["none"])
    return {
        "l0_mouth_minus_head": det["mouth_only"][0]["afc"] - det["head_only"][0]["afc"],
        "l3_head_minus_mouth": det["head_only"][top]["afc"] - det["mouth_only"][top]["afc"],
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (results.json, results.md)")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--kernels", type=int, nargs="+", default=[7, 3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--train-clips", type=int, default=44)
    p.add_argument("--eval-clips", type=int, default=16)
    p.add_argument("--clip-s", type=float, default=16.0)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--audio-widths", type=int, nargs="+", default=[32, 64, 64])
    p.add_argument("--landmark-widths", type=int, nargs="+", default=[64, 64])
    p.add_argument("--groups-per-level", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--augment", choices=["none", "audio", "all"], default="none")
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--centering", default="", help="SyncerConfig.landmark_centering ('' = its default)")
    p.add_argument(
        "--head-roll-deg",
        type=float,
        default=0.0,
        help="also roll the head with the slow envelope (a per-frame posture, visible at every level)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--keep-work", action="store_true", help="keep the generated datasets and checkpoints")
    return p.parse_args(argv)


def _run_all(args: argparse.Namespace, out: Path) -> dict[int, list[dict]]:
    """One experiment per (kernel, seed); returns the results per kernel."""
    planted = dataclasses.replace(syn.PlantedConfig(), head_roll_deg=args.head_roll_deg)
    runs: dict[int, list[dict]] = {}
    for kernel in args.kernels:
        runs[kernel] = []
        for seed in args.seeds:
            cfg = syn.ExperimentConfig(
                data_dir=args.data_dir,
                groups=BENCH_GROUPS,
                train_clips=args.train_clips,
                eval_clips=args.eval_clips,
                clip_s=args.clip_s,
                planted=planted,
                pyramid_kernel=kernel,
                embed_dim=args.embed_dim,
                audio_widths=tuple(args.audio_widths),
                landmark_widths=tuple(args.landmark_widths),
                steps=args.steps,
                groups_per_level=args.groups_per_level,
                lr=args.lr,
                warmup_steps=max(1, args.steps // 10),
                augment=args.augment,
                pairs=args.pairs,
                seed=seed,
                device=args.device,
                landmark_centering=args.centering,
            )
            work = out / "work" / f"k{kernel}_s{seed}"
            r = syn.run_experiment(cfg, work)
            r["separation"] = _separation(r["detection"])
            runs[kernel].append(r)
            print(
                f"kernel {kernel} seed {seed}: {r['train_s']:.0f} s training\n{syn.markdown_table(r['detection'])}",
                flush=True,
            )
            if not args.keep_work:
                shutil.rmtree(work)
    if not args.keep_work:
        shutil.rmtree(out / "work", ignore_errors=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs = _run_all(args, out)
    total_s = time.perf_counter() - t0
    (out / "results.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "total_s": total_s,
                "margins": {"l0": L0_MARGIN, "l3": L3_MARGIN},
                "runs": {str(k): v for k, v in runs.items()},
            },
            indent=2,
        )
    )

    md = _markdown(args, runs, total_s)
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def _markdown(args: argparse.Namespace, runs: dict[int, list[dict]], total_s: float) -> list[str]:
    md = [
        "# Planted-correlation benchmark: per-level sync detection",
        "",
        "Detection = fraction of held-out landmark segments whose aligned audio scores higher than the same clip's",
        "audio shifted by >= 3.2 s (chance 0.5). Mouth planted at the 200 ms scale, head at the 1.6 s scale.",
        f"{args.train_clips} training clips and {args.eval_clips} evaluation clips of {args.clip_s:g} s, "
        f"{args.steps} steps, embed {args.embed_dim}, augment={args.augment}, head roll {args.head_roll_deg:g} deg, "
        f"landmark centring {runs[args.kernels[0]][0]['syncer'].get('landmark_centering', 'n/a')}, "
        f"{args.pairs} pairs per cell, seeds {args.seeds}; {total_s / 60:.1f} min in all.",
        "",
    ]
    for kernel, rs in runs.items():
        mean, spread = _mean_table(rs)
        md += [
            f"## pyramid_kernel = {kernel}"
            + (" (authors' code)" if kernel == 7 else " (paper)" if kernel == 3 else ""),
            "",
            "Mean over seeds:",
            "",
            syn.markdown_table(mean),
            "",
        ]
        if len(rs) > 1:
            md += [
                "Per seed (" + ", ".join(str(s) for s in args.seeds) + "):",
                "",
                "| variant | " + " | ".join(f"L{l}" for l in sorted(mean["none"])) + " |",
                "|---|" + "---:|" * len(mean["none"]),
            ]
            for v in mean:
                cells = [" / ".join(f"{r['detection'][v][l]['afc']:.3f}" for r in rs) for l in sorted(mean[v])]
                md.append(f"| {v} | " + " | ".join(cells) + " |")
            md.append("")
        seps = [r["separation"] for r in rs]
        l0 = [s["l0_mouth_minus_head"] for s in seps]
        l3 = [s["l3_head_minus_mouth"] for s in seps]
        ok0, ok3 = all(x > L0_MARGIN for x in l0), all(x > L3_MARGIN for x in l3)
        md += [
            f"- L0 mouth_only - head_only: {', '.join(f'{x:+.3f}' for x in l0)} "
            f"(margin {L0_MARGIN}: {'holds' if ok0 else 'FAILS'})",
            f"- L3 head_only - mouth_only: {', '.join(f'{x:+.3f}' for x in l3)} "
            f"(margin {L3_MARGIN}: {'holds' if ok3 else 'FAILS'})",
            "- training time per run: "
            + ", ".join(f"{r['train_s']:.0f} s" for r in rs)
            + "; final train top-1 of 49: "
            + "; ".join(" ".join(f"{k[4:]}={v:.2f}" for k, v in sorted(r["train_acc_last"].items())) for r in rs),
            "",
        ]
    return md


if __name__ == "__main__":
    sys.exit(main())
