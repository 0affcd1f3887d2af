"""Is the generated mouth early or late, and does the synchrony loss care? Inner-lip gap r by lag, two splits.

    python -m benchmarks.gap_lag --model 0.2.0=training/weights/generator --model s1w4=runs/generator_v03_distill_s1w4 \
        --out benchmarks/results

Two measurements, both on fixed windows of `../shared/data` (no augmentation, seeded):

- Generators: each model runs in its training-time form (`Generator.forward` over a window with W warm-up frames
  of real audio before it and L look-ahead frames after it, the form `msync eval` uses for its sequences) on
  `--windows` windows of `--frames` frames of the val split (speakers held out from training, same sources) and of
  the test split (unseen speakers and sources). Per window: Pearson r of the inner-lip gap
  (`training.metrics.viewer.lip_gap`) of pred[t + k] against ground truth[t] for k = -3 .. +3 (k < 0: the mouth
  moves early, k > 0: late), after dropping the first 10 frames; reported as the median over windows, with the
  amplitude ratio std(pred gap) / std(GT gap) (median over windows).
- The training syncer pyramid (`--syncers`, the synchrony loss of `msync train`): mean cosine of audio[t] with
  ground-truth landmarks[t + m] for m = -3 .. +3 (m > 0 pairs the audio with later landmarks, i.e. scores a mouth
  that moves m frames early), per level and averaged. A loss that scores m = +1 as high as m = 0 does not pin
  the mouth's timing.

`msync eval`'s lag table (`benchmarks.eval_summary --lags`) is the median over ~22 test clips with their sequences
joined; per-clip container offsets (manifest `sync_best_lag`) move it. These windows are many more and the val
split's offsets are those of the training sources.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

LAGS = range(-3, 4)


def lag_profile(pred: np.ndarray, ref: np.ndarray, lags=LAGS) -> dict[int, float]:
    """(N, T) generated and ground-truth series -> {k: median over rows of r(pred[t + k], ref[t])}.

    Rows where either piece is constant are left out of that lag's median (NaN when none is left)."""
    out = {}
    for k in lags:
        rs = []
        for a, b in zip(pred, ref):
            n = len(a)
            x, y = (a[k:], b[: n - k]) if k >= 0 else (a[: n + k], b[-k:])
            if x.std() > 1e-12 and y.std() > 1e-12:
                rs.append(float(np.corrcoef(x, y)[0, 1]))
        out[k] = float(np.median(rs)) if rs else float("nan")
    return out


def generated_gaps(model, sampler, windows: int, seed: int, drop: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(pred gaps (N, T - drop), ground-truth gaps (N, T - drop)) of fixed windows in training-time form."""
    import torch

    from training.face_losses import lip_gap

    b = sampler.fixed(windows, seed=seed)
    with torch.no_grad():
        mfcc = model.mfcc(torch.from_numpy(b.audio))
        lm = torch.from_numpy(b.landmarks)
        h, c = model.initial_lstm_state(lm.shape[0], generator=torch.Generator().manual_seed(seed))
        fake = model(mfcc, lm[:, 0], h, c, sampler.num_frames, sampler.warmup, torch.from_numpy(b.valid))
    return lip_gap(fake).numpy()[:, drop:], lip_gap(lm[:, 1:]).numpy()[:, drop:]


def syncer_profile(syncers, model, sampler, windows: int, seed: int, lags=LAGS) -> dict[int, dict]:
    """{m: {level: mean cosine, "mean": over levels}} of audio[t] against ground-truth landmarks[t + m]."""
    import torch

    from training.losses import multiscale_sync_loss

    pad = max(abs(k) for k in lags)
    b = sampler.fixed(windows, seed=seed)
    n, w = sampler.num_frames - 2 * pad, sampler.warmup
    out = {}
    with torch.no_grad():
        mfcc = model.mfcc(torch.from_numpy(b.audio))
        lm = torch.from_numpy(b.landmarks)
        audio = mfcc[:, 4 * (w - 1 + pad) : 4 * (w - 1 + pad + n)]  # the frames of lm[:, pad : pad + n]
        for m in lags:
            _, cos = multiscale_sync_loss(syncers, lm[:, pad + m : pad + m + n], audio)
            out[m] = {**{str(k): float(v) for k, v in cos.items()}, "mean": float(np.mean(list(cos.values())))}
    return out


def _f(v: float) -> str:
    return "–" if not np.isfinite(v) else f"{v:.2f}"


def markdown(result: dict) -> str:
    lines = [
        "# Inner-lip gap r by lag, training-time form, val and test windows",
        "",
        f"`{result['command']}`",
        "",
        f"{result['windows']} windows of {result['frames']} frames per split (first 10 dropped), seed {result['seed']}; "
        "r of pred[t + k] vs GT[t], median over windows (k < 0: the mouth moves early, k > 0: late); amp = median "
        "std ratio. See the module docstring of `benchmarks/gap_lag.py`.",
        "",
        f"Machine: {result['machine'].get('cpu', '?')}, load {result['machine'].get('load_avg_1m', float('nan')):.1f}; wall "
        f"{result['wall_s']:.0f} s.",
        "",
        "| model | split | " + " | ".join(f"{k:+d}" for k in LAGS) + " | amp |",
        "|---|---|" + "---|" * (len(LAGS) + 1),
    ]
    for name, per in result["models"].items():
        for split, row in per.items():
            cells = " | ".join(_f(row["r"][str(k)]) for k in LAGS)
            lines.append(f"| {name} | {split} | {cells} | {row['amplitude']:.2f} |")
    lines += [
        "",
        "Training syncers (`msync train`'s synchrony loss): mean cosine of audio[t] with GT landmarks[t + m] "
        "(m > 0 scores a mouth m frames early), mean over levels 0-3:",
        "",
        "| split | " + " | ".join(f"{k:+d}" for k in LAGS) + " |",
        "|---|" + "---|" * len(LAGS),
    ]
    for split, prof in result["syncers"].items():
        lines.append(f"| {split} | " + " | ".join(f"{prof[str(k)]['mean']:.3f}" for k in LAGS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], metavar="NAME=CKPT", help="generator checkpoints")
    p.add_argument("--syncers", default="training/weights/syncers")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--windows", type=int, default=48)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="gap_lag")
    args = p.parse_args(argv)
    if not args.model:
        p.error("give at least one --model NAME=CKPT")

    import sys

    import torch

    from benchmarks.common import machine_info, write_report
    from training.data.clips import ClipLoadConfig, load_all
    from training.data.generator_batches import WindowSampler
    from training.data.manifest import read_manifest
    from training.data.splits import assign_splits
    from training.models.generator import load_generator
    from training.models.syncer import load_pyramid

    torch.set_num_threads(1)
    t0 = time.time()
    records = assign_splits(read_manifest(args.data_dir))
    segs = {k: load_all(records[k], ClipLoadConfig(), progress=False) for k in ("val", "test")}
    result: dict = {"command": "python -m benchmarks.gap_lag " + " ".join(sys.argv[1:] if argv is None else argv)}
    result.update({"windows": args.windows, "frames": args.frames, "seed": args.seed, "models": {}, "syncers": {}})
    first: Any = None
    for name, ckpt in (m.split("=", 1) for m in args.model):
        model, _ = load_generator(ckpt)
        model.eval()
        first = first or model
        w, la = model.cfg.receptive_field_frames[-1] - 1, model.cfg.lookahead_frames
        result["models"][name] = {}
        for split, ss in segs.items():
            sampler = WindowSampler(ss, args.frames, la, w, ClipLoadConfig().frontend)
            pred, ref = generated_gaps(model, sampler, args.windows, args.seed)
            prof = lag_profile(pred, ref)
            amp = float(np.median(pred.std(1) / np.maximum(ref.std(1), 1e-6)))
            result["models"][name][split] = {"r": {str(k): v for k, v in prof.items()}, "amplitude": amp}
    syncers = load_pyramid(args.syncers, "cpu")
    w = first.cfg.receptive_field_frames[-1] - 1
    for split, ss in segs.items():
        sampler = WindowSampler(ss, args.frames, first.cfg.lookahead_frames, w, ClipLoadConfig().frontend)
        sprof = syncer_profile(syncers, first, sampler, args.windows, args.seed)
        result["syncers"][split] = {str(k): v for k, v in sprof.items()}
    result["wall_s"] = time.time() - t0
    result["machine"] = machine_info()
    write_report(args.out, args.name, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
