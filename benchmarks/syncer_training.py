"""Syncer-pyramid training speed: optimisation steps per second (all four levels, InfoNCE, 49-pair groups).

    python -m benchmarks.syncer_training --out benchmarks/results --threads 1 2 [--device cuda]

Times each step (batch sampling + forward + backward + update) after a warm-up, on the default syncer
architecture and training config; reports median and p90 step time, steps/s and aligned pairs/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np


def measure(threads: int, device: str, steps: int, warmup: int, data_dir: str, max_clips: int) -> dict:
    import torch

    from benchmarks.common import summarise
    from training.data.syncer_batches import syncer_store
    from training.train_syncers import TrainSyncersConfig, build_model, load_split_segments, train_step

    torch.set_num_threads(threads)
    cfg = dataclasses.replace(TrainSyncersConfig(), data_dir=data_dir, max_clips=max_clips, device=device)
    segs = load_split_segments(cfg, progress=False)["train"]
    sc = cfg.syncer
    store = syncer_store(segs, sc, cfg.clips.frontend)
    weights = [store.sampling_weights(l) for l in range(sc.num_levels)]
    model = build_model(cfg, store, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(0)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        train_step(model, model, opt, store, cfg, rng, weights, device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    s = summarise(times)
    pairs = sc.num_levels * cfg.groups_per_level * cfg.group_size
    return {
        "threads": threads,
        "device": device,
        "pairs_per_step": pairs,
        **s,
        "steps_per_s": 1e3 / s["p50_ms"],
        "pairs_per_s": pairs * 1e3 / s["p50_ms"],
    }


def main() -> int:
    from benchmarks.common import machine_info, write_report

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-clips", type=int, default=300, help="clips loaded (speed does not depend on it)")
    a = p.parse_args()
    rows = [measure(t, a.device, a.steps, a.warmup, a.data, a.max_clips) for t in a.threads]
    result: dict[str, Any] = {
        "benchmark": "syncer_training",
        "machine": machine_info(),
        "rows": rows,
        "conditions": "default SyncerConfig/TrainSyncersConfig; 4 levels x 2 groups x 49 pairs per step; "
        "times include batch sampling and augmentation",
    }
    md = ["| device | threads | step p50 (ms) | step p90 (ms) | steps/s | pairs/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(
            f"| {r['device']} | {r['threads']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['steps_per_s']:.2f} | {r['pairs_per_s']:.0f} |"
        )
    m = result["machine"]
    md.append(
        f"\nMachine: {m['cpu']} ({m['logical_cpus']} logical CPUs), torch {m.get('torch')}, "
        f"load avg {m['load_avg_1m']:.2f} at {m['time_utc']}."
    )
    write_report(a.out, "syncer_training", result, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
