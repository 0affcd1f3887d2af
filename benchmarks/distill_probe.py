"""How much lip information each audio representation carries, on voices no encoder has heard: a linear probe.

    python -m benchmarks.distill_probe --encoder 0.2.0=training/weights/generator \
        --encoder distilled=runs/distill/generator --out benchmarks/results

Ridge regression from per-frame audio features to the inner-lip gap over the inter-ocular distance
(`training.metrics.viewer.lip_gap`) of `../shared/data`: fitted on the train split's frames, the ridge strength
picked on the val split (alphas 1 .. 1e4), scored on the test split (speakers in no training set) as the median
over clips of the per-clip Pearson r. Features per landmark frame t:

- MFCC: the generator's normalised MFCC rows of frames t-6 .. t+2 (9 x 4 x 26), the representation 0.2.0 reads;
- each encoder: every audio level of the generator at column t + L (L = its look-ahead; 4 x 128), exactly what
  the generator's branches read for frame t (causal, 80 ms look-ahead);
- teacher: the Whisper tiny.en encoder's rows of frames t-6 .. t+2 (9 x 384; not causal, 30 s context).

"clean" scores the test clips as recorded, "10 dB" with steady coloured noise (`training.data.nonspeech`,
"noise" kind, seeded per clip) added at 10 dB SNR; the probe is always fitted on clean train audio.
"""

from __future__ import annotations

import argparse
import shlex
import time
from typing import Any

import numpy as np

CONTEXT = (-6, 2)  # frames before / after t for the stacked representations (MFCC, teacher)


def stack_context(x: np.ndarray, lo: int = CONTEXT[0], hi: int = CONTEXT[1]) -> np.ndarray:
    """(T, D) -> (T, (hi - lo + 1) D): rows t+lo .. t+hi side by side, zeros beyond the ends."""
    t = len(x)
    pad = np.concatenate([np.zeros((-lo, x.shape[1]), x.dtype), x, np.zeros((hi, x.shape[1]), x.dtype)])
    return np.concatenate([pad[k : k + t] for k in range(hi - lo + 1)], axis=1)


def add_noise_10db(pcm: np.ndarray, seed: int, snr_db: float = 10.0) -> np.ndarray:
    from training.data.channel_augment import add_noise
    from training.data.nonspeech import sound

    return add_noise(pcm, sound("noise", len(pcm), np.random.default_rng(seed)), snr_db)


def encoder_features(model, pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(levels at column t + L (T, G C), normalised MFCC (T, 4 n_mfcc)) of one clip of T whole frames."""
    import torch

    fe, lookahead = model.frontend, model.cfg.lookahead_frames
    t = len(pcm) // fe.samples_per_landmark_frame
    audio = np.concatenate(
        [np.zeros(fe.context_samples, np.float32), pcm[: t * 640], np.zeros(lookahead * 640, np.float32)]
    )
    with torch.no_grad():
        mfcc = model.mfcc(torch.from_numpy(audio)[None])
        levels = model.audio_levels(mfcc)
        cols = torch.cat([lvl[0, :, lookahead : lookahead + t] for lvl in levels], dim=0).T
        norm = ((mfcc - model.mfcc_mean) / model.mfcc_std)[0, : 4 * t].reshape(t, -1)
    return cols.numpy(), norm.numpy()


def fit_ridge(x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...]) -> list[tuple]:
    """Ridge on standardised features, one fit per alpha (the Gram matrix is formed once):
    [(weights, feature mean, feature std, intercept)] in the order of `alphas`."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = ((x - mu) / sd).astype(np.float64)
    ym = y.mean()
    gram, rhs = z.T @ z, z.T @ (y - ym)
    eye = np.eye(z.shape[1])
    return [(np.linalg.solve(gram + a * eye, rhs), mu, sd, ym) for a in alphas]


def clip_r(pred: np.ndarray, ref: np.ndarray) -> float:
    if pred.std() < 1e-12 or ref.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(pred, ref)[0, 1])


def median_r(model: tuple, feats: list[np.ndarray], gaps: list[np.ndarray]) -> float:
    w, mu, sd, ym = model
    rs = [clip_r(((f - mu) / sd) @ w + ym, g) for f, g in zip(feats, gaps)]
    return float(np.nanmedian(rs))


def probe(train: tuple, val: tuple, test: dict[str, tuple]) -> dict:
    """Fit on train (lists of per-clip features and gaps), pick alpha on val, score every test condition."""
    x, y = np.concatenate(train[0]), np.concatenate(train[1])
    best = None
    alphas = (1.0, 10.0, 100.0, 1000.0, 10000.0)
    for alpha, m in zip(alphas, fit_ridge(x, y, alphas)):
        r = median_r(m, *val)
        if best is None or r > best[0]:
            best = (r, alpha, m)
    assert best is not None
    out = {"alpha": best[1], "val_r": round(best[0], 3)}
    out.update({name: round(median_r(best[2], *cond), 3) for name, cond in test.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", action="append", default=[], metavar="NAME=CKPT", help="generator checkpoints")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--max-clips", type=int, default=0, help="per split (0 = all)")
    p.add_argument("--name", default="distill_probe", help="stem of the files written (default: %(default)s)")
    args = p.parse_args(argv)

    import torch

    from benchmarks.common import machine_info, write_report
    from training.data.clips import ClipLoadConfig, load_all
    from training.data.manifest import read_manifest
    from training.data.splits import assign_splits
    from training.metrics.viewer import lip_gap
    from training.models.generator import load_generator
    from training.teacher import default_cache_dir, features_at_mfcc_rate

    torch.set_num_threads(1)
    t0 = time.time()
    records = assign_splits(read_manifest(args.data_dir))
    segs = {}
    for split in ("train", "val", "test"):
        recs = records[split][: args.max_clips] if args.max_clips else records[split]
        segs[split] = [s for s in load_all(recs, ClipLoadConfig(), progress=False) if s.num_frames >= 20]
    gaps = {k: [lip_gap(s.landmarks).astype(np.float32) for s in v] for k, v in segs.items()}
    audio = {k: [s.audio for s in v] for k, v in segs.items()}
    audio["test_10db"] = [add_noise_10db(a, i) for i, a in enumerate(audio["test"])]
    conditions = {"train": "train", "val": "val", "clean": "test", "10 dB": "test_10db"}

    encoders = [e.split("=", 1) for e in args.encoder]
    feats: dict[str, dict[str, list[np.ndarray]]] = {}
    lookahead: dict[str, int] = {}
    for name, ckpt in encoders:
        model, _ = load_generator(ckpt)
        lookahead[name] = int(model.cfg.lookahead_frames)
        feats[name] = {}
        for cond, key in conditions.items():
            both = [encoder_features(model, a) for a in audio[key]]
            feats[name][cond] = [c for c, _ in both]
            if name == encoders[0][0]:
                feats.setdefault("MFCC", {})[cond] = [stack_context(m) for _, m in both]
    feats["teacher"] = {}
    for cond, key in conditions.items():
        teacher_rows = features_at_mfcc_rate(audio[key], cache_dir=default_cache_dir(), mfcc_per_frame=1)
        feats["teacher"][cond] = [stack_context(f) for f in teacher_rows]

    gap_of = {"train": gaps["train"], "val": gaps["val"], "clean": gaps["test"], "10 dB": gaps["test"]}

    def pairs(name: str, cond: str) -> tuple:
        fs = feats[name][cond]
        return fs, [g[: len(f)] for f, g in zip(fs, gap_of[cond])]

    order = ["MFCC", *[n for n, _ in encoders], "teacher"]
    rows: dict[str, dict] = {}
    for name in order:
        raw = {c: pairs(name, c) for c in conditions}
        fs = {c: ([f[: len(g)] for f, g in zip(*v)], v[1]) for c, v in raw.items()}
        rows[name] = probe(fs["train"], fs["val"], {"clean": fs["clean"], "10 dB": fs["10 dB"]})
        rows[name]["dims"] = int(fs["train"][0][0].shape[1])
        rows[name]["lookahead_frames"] = lookahead.get(name, CONTEXT[1] if name == "MFCC" else None)
    info = machine_info()
    result: dict[str, Any] = {
        "rows": rows,
        "encoders": dict(encoders),
        "clips": {k: len(v) for k, v in segs.items()},
        "frames": {k: int(sum(len(g) for g in v)) for k, v in gaps.items()},
        "machine": info,
        "wall_s": round(time.time() - t0, 1),
    }
    md = [
        "# Linear probe: audio features -> inner-lip gap (IOD) on unseen speakers",
        "",
        f"`python -m benchmarks.distill_probe {' '.join('--encoder ' + shlex.quote(e) for e in args.encoder)}`. Ridge fitted on "
        f"the train split ({result['clips']['train']} clips, {result['frames']['train']} frames), alpha picked on "
        f"val ({result['clips']['val']} clips), scored on the test split ({result['clips']['test']} clips, speakers "
        "in no training set): median over clips of the per-clip Pearson r. 10 dB: steady coloured noise added to "
        "the test audio at 10 dB SNR (probe fitted on clean audio). Features: see the module docstring of "
        "`benchmarks/distill_probe.py` (encoders: every level at column t + L, what the generator reads).",
        "",
        f"Machine: {info['cpu']} ({info['logical_cpus']} logical CPUs, load {info['load_avg_1m']:.2f}), "
        f"{info['time_utc']}; wall {result['wall_s']} s.",
        "",
        "| features | look-ahead (frames) | dims | r clean ↑ | r 10 dB ↑ | r val | alpha |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in order:
        r = rows[name]
        la = "– (30 s context)" if r["lookahead_frames"] is None else str(r["lookahead_frames"])
        md.append(
            f"| {name} | {la} | {r['dims']} | {r['clean']:.3f} | {r['10 dB']:.3f} | {r['val_r']:.3f} | {r['alpha']:g} |"
        )
    write_report(args.out, args.name, result, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
