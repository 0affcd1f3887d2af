"""`msync train-syncers`: train a syncer pyramid on a dataset directory.

    msync train-syncers --config training/configs/syncers.json --out runs/syncers
    msync train-syncers --config training/configs/metric_syncers.json --out runs/metric_syncers
    torchrun --nproc-per-node 2 -m training.train_syncers --set device=cpu ...     # DDP (gloo on CPU)

Every level is trained at every step (one group of 49 aligned pairs per level and `groups_per_level`
groups), so one run yields the whole pyramid. Checkpoints are safetensors + JSON; a run resumes from the
newest checkpoint in its output directory. Metrics go to `metrics.jsonl`, curves to `curves.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

from training.data.augment import AugmentConfig
from training.data.clips import ClipLoadConfig
from training.data.splits import SplitConfig
from training.models.syncer import SyncerConfig


@dataclasses.dataclass(frozen=True)
class TrainSyncersConfig:
    """Everything a syncer run needs; written to `OUT/config.json`."""

    data_dir: str = "../shared/data"
    syncer: SyncerConfig = SyncerConfig()
    split: SplitConfig = SplitConfig()
    clips: ClipLoadConfig = ClipLoadConfig()
    augment: AugmentConfig = AugmentConfig()
    steps: int = 3000
    groups_per_level: int = 2
    group_size: int = 49  # one positive + 48 negatives
    per_clip: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch intra-op threads per process; 0 = torch default
    eval_every: int = 250
    eval_groups: int = 16
    checkpoint_every: int = 500
    log_every: int = 25
    max_clips: int = 0  # 0 = all; small values make smoke tests


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training.config_io import add_run_arguments

    add_run_arguments(p, "runs/syncers", "--set steps=500 --set syncer.loss=syncnet")


def run(args: argparse.Namespace) -> int:
    from training.config_io import load_config

    cfg = load_config(TrainSyncersConfig, args.config, args.overrides)
    result = train(cfg, Path(args.out), resume=not args.no_resume, progress=not args.no_progress)
    print(json.dumps(result, indent=2))
    return 0


def _lr_at(cfg: TrainSyncersConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device=cuda requested but no CUDA GPU is available")
    return name


def load_split_segments(cfg: TrainSyncersConfig, progress: bool):
    """Segments of the train/val/test splits of `cfg.data_dir`."""
    from training.data.clips import load_all
    from training.data.manifest import read_manifest
    from training.data.splits import assign_splits

    records = read_manifest(cfg.data_dir)
    splits = assign_splits(records, cfg.split)
    if cfg.max_clips:
        splits = {k: v[: cfg.max_clips] for k, v in splits.items()}
    return {k: load_all(v, cfg.clips, progress=progress) for k, v in splits.items()}


def evaluate(model, store, cfg: TrainSyncersConfig, device: str, seed: int = 1234) -> dict:
    """Loss and top-1 retrieval accuracy (1 positive vs 48 candidates) per level on fixed, unaugmented groups."""
    import numpy as np
    import torch

    from training.models.syncer import group_loss

    out = {}
    rng = np.random.default_rng(seed)
    model.eval()
    with torch.no_grad():
        for lvl in range(cfg.syncer.num_levels):
            if store.num_positions(lvl).sum() < cfg.group_size:
                continue
            losses, accs = [], []
            for _ in range(cfg.eval_groups):
                g = store.sample_group(lvl, rng, cfg.group_size, cfg.per_clip, augment=None)
                e_a, e_x = model.embed(lvl, torch.from_numpy(g.landmarks).to(device), torch.from_numpy(g.mfcc).to(device))
                loss, acc = group_loss(cfg.syncer, e_a[None], e_x[None])
                losses.append(float(loss))
                accs.append(float(acc))
            out[f"loss_l{lvl}"] = float(np.mean(losses))
            out[f"acc_l{lvl}"] = float(np.mean(accs))
    model.train()
    return out


def build_model(cfg: TrainSyncersConfig, train_store, device: str):
    """A fresh pyramid whose input normalisation (MFCC mean/std, landmark position/velocity statistics per
    level) is measured on the training data, augmentation included."""
    import numpy as np
    import torch

    from training.models.syncer import SyncerPyramid

    sc = cfg.syncer
    model = SyncerPyramid(sc)
    mean, std = train_store.mfcc_stats()
    model.mfcc_mean.copy_(torch.from_numpy(mean))
    model.mfcc_std.copy_(torch.from_numpy(std))
    stats_rng = np.random.default_rng(cfg.seed + 99)
    for lvl in range(sc.num_levels):
        lm = np.concatenate([train_store.sample_group(lvl, stats_rng, cfg.group_size, cfg.per_clip, cfg.augment).landmarks
                             for _ in range(20)])
        pos, vel = model.raw_landmark_features(torch.from_numpy(lm))
        model.position_mean[lvl] = pos.mean(dim=(0, 1))
        model.position_std[lvl] = pos.std(dim=(0, 1)) + 1e-4
        model.velocity_std[lvl] = vel[:, 1:].std(dim=(0, 1)) + 1e-5
    return model.to(device)


def sample_batches(store, cfg: TrainSyncersConfig, rng, weights, device: str):
    """One step's data: per level, `groups_per_level` groups stacked -> [(level, landmarks, mfcc)]."""
    import numpy as np
    import torch

    batches = []
    for lvl in range(cfg.syncer.num_levels):
        gs = [store.sample_group(lvl, rng, cfg.group_size, cfg.per_clip, cfg.augment, weights[lvl])
              for _ in range(cfg.groups_per_level)]
        lm = torch.from_numpy(np.concatenate([g.landmarks for g in gs])).to(device)
        mf = torch.from_numpy(np.concatenate([g.mfcc for g in gs])).to(device)
        batches.append((lvl, lm, mf))
    return batches


def train_step(ddp_model, model, opt, store, cfg: TrainSyncersConfig, rng, weights, device: str):
    """Sample, forward all levels, backward, clip, update. Returns per-level (losses, accuracies) as floats."""
    import torch

    from training.models.syncer import group_loss

    embeddings = ddp_model(sample_batches(store, cfg, rng, weights, device))
    total = 0.0
    losses, accs = [], []
    for e_a, e_x in embeddings:
        n = cfg.group_size
        loss, acc = group_loss(cfg.syncer, e_a.view(-1, n, e_a.shape[-1]), e_x.view(-1, n, e_x.shape[-1]))
        total = total + loss
        losses.append(float(loss.detach()))
        accs.append(float(acc))
    opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return losses, accs


def train(cfg: TrainSyncersConfig, out_dir: Path, resume: bool = True, progress: bool = True) -> dict:
    """Train (or resume) a syncer pyramid. Returns the final validation and test metrics."""
    import numpy as np
    import torch
    import torch.distributed as dist

    from training.checkpoint import load_meta, load_optimizer, load_state, save_module, save_optimizer
    from training.config_io import dump_config
    from training.data.syncer_batches import PyramidStore
    from training.models.syncer import SyncerPyramid

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = _resolve_device(cfg.device)
    if world > 1:
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    is_main = rank == 0
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    data = load_split_segments(cfg, progress and is_main)
    sc = cfg.syncer
    stores = {k: PyramidStore(v, sc.num_levels, sc.pyramid_kernel, sc.landmark_frames, sc.audio_frames,
                              sequence_centring=sc.landmark_centering == "sequence")
              for k, v in data.items() if v}
    if "train" not in stores:
        raise RuntimeError(f"{cfg.data_dir}: the train split is empty")
    train_store = stores["train"]
    weights = [train_store.sampling_weights(lvl) for lvl in range(sc.num_levels)]

    model = build_model(cfg, train_store, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    step = 0
    ckpt = out_dir / "checkpoint"
    if resume and ckpt.with_suffix(".json").is_file():
        model.load_state_dict(load_state(ckpt, device))
        load_optimizer(ckpt, opt)
        step = int(load_meta(ckpt)["step"])
        if is_main:
            print(f"resuming from {ckpt} at step {step}")
    elif is_main:
        dump_config(cfg, out_dir / "config.json")
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    rng = np.random.default_rng(cfg.seed * 1000 + rank * 7919 + step)
    metrics_path = out_dir / "metrics.jsonl"
    bar = None
    if is_main and progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="syncers", unit="step")
    t_start, steps_timed = time.perf_counter(), 0
    run_acc = {lvl: [] for lvl in range(sc.num_levels)}
    best = {lvl: (float("inf"), step, None) for lvl in range(sc.num_levels)}
    run_loss = {lvl: [] for lvl in range(sc.num_levels)}
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        losses, accs = train_step(ddp_model, model, opt, train_store, cfg, rng, weights, device)
        for lvl in range(sc.num_levels):
            run_loss[lvl].append(losses[lvl])
            run_acc[lvl].append(accs[lvl])
        step += 1
        steps_timed += 1
        if bar is not None:
            bar.update(1)
        if is_main and (step % cfg.log_every == 0 or step == cfg.steps):
            elapsed = time.perf_counter() - t_start
            rec = {"step": step, "split": "train", "lr": _lr_at(cfg, step - 1),
                   "steps_per_s": steps_timed / max(elapsed, 1e-9), "world_size": world}
            for lvl in range(sc.num_levels):
                rec[f"loss_l{lvl}"] = float(np.mean(run_loss[lvl]))
                rec[f"acc_l{lvl}"] = float(np.mean(run_acc[lvl]))
                run_loss[lvl].clear()
                run_acc[lvl].clear()
            _append(metrics_path, rec)
            if bar is not None:
                bar.set_postfix({f"acc{l}": f"{rec[f'acc_l{l}']:.2f}" for l in range(sc.num_levels)})
        if is_main and "val" in stores and (step % cfg.eval_every == 0 or step == cfg.steps):
            val = evaluate(model, stores["val"], cfg, device)
            _append(metrics_path, {"step": step, "split": "val", **val})
            # Early stopping per level: coarse levels see few distinct segments and start to memorise clips
            # long before the fine ones stop improving, so each level keeps its own best validation weights.
            for lvl in range(sc.num_levels):
                loss = val.get(f"loss_l{lvl}")
                if loss is not None and loss < best[lvl][0]:
                    best[lvl] = (loss, step, {k: v.detach().clone() for k, v in model.levels[lvl].state_dict().items()})
        if is_main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            meta = {"step": step, "config": cfg, "kind": "syncer_pyramid", "syncer": sc}
            save_module(ckpt, model, meta)
            save_optimizer(ckpt, opt)
            plot_curves(metrics_path, out_dir / "curves.png")
    if bar is not None:
        bar.close()
    result = {}
    if is_main:
        elapsed = time.perf_counter() - t_start
        best_steps = {}
        for lvl, (loss, at, state) in best.items():
            if state is not None:
                model.levels[lvl].load_state_dict(state)
                best_steps[lvl] = at
        result = {"steps": step, "device": device, "world_size": world, "best_val_step_per_level": best_steps,
                  "steps_per_s": steps_timed / max(elapsed, 1e-9) if steps_timed else None}
        for split in ("val", "test"):
            if split in stores:
                result[split] = evaluate(model, stores[split], cfg, device)
        save_module(out_dir / "syncers", model, {"kind": "syncer_pyramid", "syncer": sc, "step": step,
                                                  "data_dir": cfg.data_dir, "split": cfg.split, "result": result})
        (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def _append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def plot_curves(metrics_path: Path, png_path: Path) -> None:
    """Loss and retrieval accuracy per level, train and val, against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    levels = sorted({int(k[6:]) for r in records for k in r if k.startswith("loss_l")})
    for split, style in (("train", "-"), ("val", "o--")):
        rs = [r for r in records if r.get("split") == split]
        for lvl in levels:
            xs = [r["step"] for r in rs if f"loss_l{lvl}" in r]
            if not xs:
                continue
            axes[0].plot(xs, [r[f"loss_l{lvl}"] for r in rs if f"loss_l{lvl}" in r], style, label=f"{split} L{lvl}")
            axes[1].plot(xs, [r[f"acc_l{lvl}"] for r in rs if f"acc_l{lvl}" in r], style, label=f"{split} L{lvl}")
    axes[0].set_title("loss")
    axes[1].set_title("top-1 retrieval among 49 (chance 2%)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":  # torchrun entry point
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
