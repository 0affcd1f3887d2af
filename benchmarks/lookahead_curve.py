"""The latency/quality curve over the look-ahead L: what each 40 ms of waiting for future audio buys.

Input: an `msync eval` report (eval.json) that scored generators trained with different look-aheads (and
otherwise the same config, e.g. `training/configs/lookahead_L*.json`). For every model in it this benchmark

- reads L from the report (msync eval records each model's look-ahead),
- computes the algorithmic latency: a frame can only be produced once the last audio it reads has arrived,
  (L + 1) x 40 ms after its first sample (the MFCC window adds nothing: the last MFCC frame of a landmark frame
  ends with it),
- exports the checkpoint to ONNX in a temporary directory and times the 40 ms step with ONNX Runtime
  (batch 1, one thread): compute is the same architecture for every L, so this column mainly shows that the
  curve is about waiting, not computing,
- takes the quality columns from the report: AV confidence at the four scales, FD-motion, mouth LMD,
  plausible frames, and the articulation of the viewer table: inner-lip gap r with ground truth at lag 0 on the
  frames with real audio history (`r_lag0_history`; at the best lag beside it) and the amplitude ratio.

It writes `NAME.json`, `NAME.md` (readable table) and `NAME.png` (`--name`, default `lookahead_curve`).

    python -m benchmarks.lookahead_curve --eval runs/eval_ablations/eval.json --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, summarise, write_report

FRAME_MS = 40.0


def time_step(checkpoint: str, steps: int, warmup: int = 50) -> dict:
    """Export `checkpoint` to a temporary ONNX file and time `steps` batch-1 steps on one thread."""
    from export.onnx_export import export_onnx
    from stream_engine.runtime.onnxrt import OnnxStepRunner
    from training.models.generator import load_generator

    generator, meta = load_generator(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "step.onnx"
        export_onnx(generator, path, meta=meta, model_version="lookahead-curve")
        runner = OnnxStepRunner(path, threads=1)
        rng = np.random.default_rng(0)
        state = runner.initial_state(1, rng=rng)
        audio = (rng.standard_normal((1, runner.contract.samples_per_frame)) * 0.1).astype(np.float32)
        samples = []
        for k in range(warmup + steps):
            t0 = time.perf_counter_ns()
            _, state = runner.step(audio, state)
            if k >= warmup:
                samples.append((time.perf_counter_ns() - t0) * 1e-9)
    return summarise(samples)


def _viewer(report: dict, name: str, key: str) -> float | None:
    """A viewer-table value of one model (None when the report predates the column)."""
    v = ((report.get("viewer") or {}).get("methods") or {}).get(name, {}).get(key)
    return None if v is None else float(v)


def collect(eval_json: Path, steps: int, only: list[str] | None = None) -> dict:
    report = json.loads(eval_json.read_text())
    models = [(n, c) for n, c in report["config"]["models"] if not only or n in only]
    missing = sorted(set(only or []) - {n for n, _ in models})
    if missing:
        raise ValueError(f"{eval_json}: no model(s) {missing}; it has {[n for n, _ in report['config']['models']]}")
    rows = []
    for name, checkpoint in models:
        m = report["methods"][name]
        L = int(report["meta"]["models"][name]["lookahead_frames"])  # msync eval read it from the checkpoint
        row = {
            "model": name,
            "checkpoint": checkpoint,
            "lookahead_frames": L,
            "algorithmic_latency_ms": (L + 1) * FRAME_MS,
            "av_conf": [lv["confidence"]["mean"] for lv in m["levels"]],
            "av_conf_std": [lv["confidence"]["std"] for lv in m["levels"]],
            "fd_motion": [f["fd"] for f in m.get("fd_motion") or []] or None,
            "m_lmd_px": (m.get("lmd") or {}).get("m_lmd_px", {}).get("mean"),
            "velocity": (m.get("motion") or {}).get("velocity", {}).get("mean"),
            "plausible": m.get("plausible"),
            "lip_r_history": _viewer(report, name, "r_lag0_history"),
            "lip_r_best_history": _viewer(report, name, "r_best_history"),
            "amplitude_ratio": _viewer(report, name, "amplitude_ratio"),
        }
        print(f"{name}: L={L}, timing the exported step ...", flush=True)
        row["step"] = time_step(checkpoint, steps)
        rows.append(row)
    rows.sort(key=lambda r: r["lookahead_frames"])
    gt = report["methods"]["ground truth"]
    return {
        "eval": str(eval_json),
        "num_sequences": int(report["meta"]["num_sequences"]),
        "machine": machine_info(),
        "step_timing": f"ONNX Runtime CPU, batch 1, 1 thread, {steps} steps after 50 warm-up",
        "rows": rows,
        "ground_truth_av_conf": [lv["confidence"]["mean"] for lv in gt["levels"]],
        "static_face_av_conf": [lv["confidence"]["mean"] for lv in report["methods"]["static face"]["levels"]],
    }


def _fmt(v, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Latency/quality over the look-ahead L",
        "",
        f"Quality from `{res['eval']}` (test speakers; see that report for the protocol); step timing: "
        f"{res['step_timing']}, on {m['cpu']} ({m['logical_cpus']} logical CPUs, load {m['load_avg_1m']:.2f}), "
        f"{m['time_utc']}.",
        "",
        "Algorithmic latency = (L + 1) × 40 ms from a frame's first audio sample to the last sample it needs; "
        "the engine adds its own few milliseconds (benchmarks/results/e2e_latency.md) and the step's compute.",
        "",
        "| L | algorithmic latency (ms) | step p50 / p99 (ms) | AV-Conf 200 ms | 400 ms | 800 ms | 1600 ms | "
        "FD-motion L0 / L3 | M-LMD (px) | plausible | lip r lag 0 / best (real history) | amplitude |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        conf = " | ".join(f"{c:.2f} ± {s:.2f}" for c, s in zip(r["av_conf"], r["av_conf_std"]))
        fd = r["fd_motion"] or [None] * 4
        plaus = r["plausible"]
        lines.append(
            f"| {r['lookahead_frames']} | {r['algorithmic_latency_ms']:.0f} | {r['step']['p50_ms']:.2f} / "
            f"{r['step']['p99_ms']:.2f} | {conf} | {_fmt(fd[0], '.3f')} / {_fmt(fd[-1], '.3f')} | "
            f"{_fmt(r['m_lmd_px'])} | {_fmt(None if plaus is None else 100 * plaus, '.1f')} % | "
            f"{_fmt(r.get('lip_r_history'))} / {_fmt(r.get('lip_r_best_history'))} | {_fmt(r.get('amplitude_ratio'))} |"
        )
    gt, st = res["ground_truth_av_conf"], res["static_face_av_conf"]
    lines += [
        "",
        f"Reference rows: ground truth AV-Conf {' / '.join(f'{v:.2f}' for v in gt)}; static face "
        f"{' / '.join(f'{v:.2f}' for v in st)}.",
        "",
    ]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    x = [r["algorithmic_latency_ms"] for r in rows]
    fig, ax = plt.subplots(1, 4, figsize=(13, 3.2))
    for lvl in range(4):
        y = [r["av_conf"][lvl] for r in rows]
        e = [r["av_conf_std"][lvl] / np.sqrt(res["num_sequences"]) for r in rows]
        ax[lvl].errorbar(x, y, yerr=e, marker="o", capsize=3, label="ours (±s.e.)")
        ax[lvl].axhline(res["ground_truth_av_conf"][lvl], color="k", ls="--", lw=1, label="ground truth")
        ax[lvl].axhline(res["static_face_av_conf"][lvl], color="grey", ls=":", lw=1, label="static face")
        ax[lvl].set_title(f"AV-Conf, {200 * 2**lvl} ms")
        ax[lvl].set_xlabel("algorithmic latency (ms)")
        ax[lvl].set_xticks(x, [f"{v:.0f}\nL={r['lookahead_frames']}" for v, r in zip(x, rows)])
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--eval", required=True, help="eval.json of an `msync eval` run over the look-ahead models")
    p.add_argument("--out", default="benchmarks/results", help="output directory")
    p.add_argument("--steps", type=int, default=1000, help="timed steps per model")
    p.add_argument("--name", default="lookahead_curve", help="stem of the files written (default: %(default)s)")
    p.add_argument(
        "--models",
        default="",
        help="comma list of the report's model names to use (default: all); "
        "the other rows of the report should differ only in L",
    )
    args = p.parse_args(argv)
    eval_json = Path(args.eval)
    if not eval_json.is_file():
        p.error(f"{eval_json}: no such eval report (run `msync eval --model L0=... --model L1=... --out DIR`)")
    only = [m.strip() for m in args.models.split(",") if m.strip()] or None
    try:
        res = collect(eval_json, args.steps, only)
    except ValueError as exc:
        p.error(str(exc))
    except FileNotFoundError as exc:
        p.error(
            f"{exc}; the report's checkpoint paths are as `msync eval` was given them (relative ones from the "
            "folder it ran in): run this from there, with the runs present"
        )
    write_report(args.out, args.name, res, markdown(res))
    plot(res, Path(args.out) / f"{args.name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
