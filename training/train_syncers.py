"""`msync train-syncers`: train a syncer pyramid on a dataset directory.

    msync train-syncers --config training/configs/syncers.json --out runs/syncers
    msync train-syncers --config training/configs/metric_syncers.json --out runs/metric_syncers        # v1
    msync train-syncers --config training/configs/metric_syncers_v2.json --out runs/metric_syncers_v2  # v2
    msync train-syncers --config training/configs/metric_syncers_v3.json --out runs/metric_syncers_v3  # v3
    python -m training.compose_syncers --source training/weights/metric_syncers_v3 --levels 2 3 \
        --out runs/metric_syncers_v4/syncers                                  # v4, the default (nothing trained)
    torchrun --nproc-per-node 2 -m training.train_syncers --set device=cpu ...     # DDP (gloo on CPU)

Every level is trained at every step (one group of 49 aligned pairs per level and `groups_per_level`
groups), so one run yields the whole pyramid. Checkpoints are safetensors + JSON; a run resumes from the
newest checkpoint in its output directory. Metrics go to `metrics.jsonl`, curves to `curves.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from training.config_io import command_main
from training.data.augment import AugmentConfig
from training.data.clips import ClipLoadConfig
from training.data.splits import SplitConfig
from training.models.syncer import SyncerConfig
from training.run import context, curves
from training.run.metrics import mean_record, read_records
from training.run.trainer import Checkpointed, Trainer

HELP = "Train the syncer pyramid (InfoNCE) or the metric syncers (SyncNet loss)."


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
    # Keep each level's best-validation weights (group + shift loss) in OUT/syncers; False keeps the final weights
    # (metric v3: the validation group loss rises from step 250 on while offset discrimination keeps improving).
    per_level_best: bool = True
    # SyncNet-style hard negatives (0 = off): per level and step, `shift_anchors` landmark segments each scored
    # against their aligned audio and `shift_negatives` windows of the same clip shifted by up to
    # `max_shift[level]` samples at that level's rate (the offset search of `msync eval-sync` at 80 frames,
    # valid padding, covers +-15, +-15, +-8, +-3).
    shift_negatives: int = 0
    shift_anchors: int = 32
    max_shift: tuple[int, ...] = (15, 15, 8, 3)
    shift_weight: float = 1.0
    # Per level, how many of each anchor's hard-negative candidates are other speakers' audio (0 = time shifts
    # only); a tuple of num_levels counts, or () for none.
    foreign_negatives: tuple[int, ...] = ()
    # Levels trained by this run (() = all). The others are copied from `init_from` (a syncer checkpoint path
    # without suffix, same architecture at those levels) together with their input statistics, and kept frozen.
    train_levels: tuple[int, ...] = ()
    init_from: str = ""

    def __post_init__(self) -> None:
        nl = self.syncer.num_levels
        if any(not 0 <= lvl < nl for lvl in self.train_levels) or len(set(self.train_levels)) != len(self.train_levels):
            raise ValueError(f"train_levels must be distinct levels in 0..{nl - 1}, got {list(self.train_levels)}")
        if self.train_levels and len(self.train_levels) < nl and not self.init_from:
            raise ValueError("train_levels leaves levels untrained: set init_from to the checkpoint they come from")
        if self.foreign_negatives and len(self.foreign_negatives) != nl:
            raise ValueError(f"foreign_negatives needs {nl} counts (one per level), got {list(self.foreign_negatives)}")
        if len(self.max_shift) < nl:
            raise ValueError(f"max_shift needs {nl} values (one per level), got {list(self.max_shift)}")

    @property
    def levels(self) -> list[int]:
        """The levels this run trains, in order."""
        return sorted(self.train_levels) if self.train_levels else list(range(self.syncer.num_levels))

    def foreign(self, lvl: int) -> int:
        return self.foreign_negatives[lvl] if self.foreign_negatives else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training.config_io import add_run_arguments

    add_run_arguments(p, "runs/syncers", "--set steps=500 --set syncer.loss=syncnet")


def run(args: argparse.Namespace) -> int:
    from training.config_io import config_from_args, report_run

    cfg = config_from_args(TrainSyncersConfig, args)
    return report_run(
        "msync train-syncers",
        lambda: train(cfg, Path(args.out), resume=not args.no_resume, progress=not args.no_progress),
    )


def _lr_at(cfg: TrainSyncersConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))


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


def evaluate(model, store, cfg: TrainSyncersConfig, device: str, seed: int = 1234, levels=None) -> dict:
    """Loss and top-1 retrieval accuracy (1 positive vs 48 candidates) per level (`levels`, default all) on fixed,
    unaugmented groups."""
    import numpy as np
    import torch

    from training.models.syncer import group_loss

    out = {}
    rng = np.random.default_rng(seed)
    model.eval()
    with torch.no_grad():
        for lvl in range(cfg.syncer.num_levels) if levels is None else levels:
            if store.num_positions(lvl).sum() < cfg.group_size:
                continue
            losses, accs = [], []
            for _ in range(cfg.eval_groups):
                g = store.sample_group(lvl, rng, cfg.group_size, cfg.per_clip, augment=None)
                e_a, e_x = model.embed(
                    lvl, torch.from_numpy(g.landmarks).to(device), torch.from_numpy(g.mfcc).to(device)
                )
                loss, acc = group_loss(cfg.syncer, e_a[None], e_x[None])
                losses.append(float(loss))
                accs.append(float(acc))
            out[f"loss_l{lvl}"] = float(np.mean(losses))
            out[f"acc_l{lvl}"] = float(np.mean(accs))
            if cfg.shift_negatives:
                sl, sa = [], []
                for _ in range(max(1, cfg.eval_groups // 4)):
                    lm, mf = store.sample_shift_group(
                        lvl,
                        rng,
                        cfg.shift_anchors,
                        cfg.max_shift[lvl],
                        cfg.shift_negatives,
                        augment=None,
                        num_foreign=cfg.foreign(lvl),
                    )
                    loss, acc = _shift_loss(model, cfg, lvl, lm, mf, device)
                    sl.append(float(loss))
                    sa.append(float(acc))
                out[f"shift_loss_l{lvl}"] = float(np.mean(sl))
                out[f"shift_acc_l{lvl}"] = float(np.mean(sa))
    model.train()
    return out


def _shift_loss(model, cfg: TrainSyncersConfig, lvl: int, lm, mf, device: str):
    import torch

    from training.models.syncer import shift_loss

    n, c = mf.shape[:2]
    e_a, e_x = model.embed(
        lvl, torch.from_numpy(lm).to(device), torch.from_numpy(mf.reshape(n * c, *mf.shape[2:])).to(device)
    )
    return shift_loss(e_a.view(n, c, -1), e_x, cfg.syncer.syncnet_margin)


def build_model(cfg: TrainSyncersConfig, train_store, device: str):
    """A fresh pyramid whose input normalisation (MFCC mean/std, landmark position/velocity statistics per
    level) is measured on the training data, augmentation included. With `cfg.init_from`, the levels not in
    `cfg.levels` (and the MFCC normalisation every level shares) are copied from that checkpoint and frozen.

    Raises:
        ValueError: `init_from` is not a syncer checkpoint, or differs at a copied level.
    """
    import numpy as np
    import torch

    from training.models.syncer import SyncerPyramid, load_pyramid

    sc = cfg.syncer
    model = SyncerPyramid(sc)
    mean, std = train_store.mfcc_stats()
    model.mfcc_mean.copy_(torch.from_numpy(mean))
    model.mfcc_std.copy_(torch.from_numpy(std))
    frozen = [lvl for lvl in range(sc.num_levels) if lvl not in cfg.levels]
    if cfg.init_from:
        src = load_pyramid(cfg.init_from)
        if src.cfg.num_levels != sc.num_levels or src.cfg.n_mfcc != sc.n_mfcc or src.cfg.audio_input != sc.audio_input:
            raise ValueError(f"{cfg.init_from}: levels, audio input or n_mfcc differ from this config")
        model.mfcc_mean.copy_(src.mfcc_mean)
        model.mfcc_std.copy_(src.mfcc_std)
        for lvl in frozen:
            if src.cfg.window(lvl) != sc.window(lvl):
                raise ValueError(f"{cfg.init_from}: level {lvl} reads other windows than this config's")
            try:
                model.levels[lvl].load_state_dict(src.levels[lvl].state_dict())
            except RuntimeError as e:
                raise ValueError(f"{cfg.init_from}: level {lvl} has another architecture: {e}") from e
            for name in ("position_mean", "position_std", "velocity_std"):
                getattr(model, name)[lvl] = getattr(src, name)[lvl]
            model.levels[lvl].requires_grad_(False)
    stats_rng = np.random.default_rng(cfg.seed + 99)
    for lvl in cfg.levels:
        lm = np.concatenate(
            [
                train_store.sample_group(lvl, stats_rng, cfg.group_size, cfg.per_clip, cfg.augment).landmarks
                for _ in range(20)
            ]
        )
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
    for lvl in cfg.levels:
        gs = [
            store.sample_group(lvl, rng, cfg.group_size, cfg.per_clip, cfg.augment, weights[lvl])
            for _ in range(cfg.groups_per_level)
        ]
        lm = torch.from_numpy(np.concatenate([g.landmarks for g in gs])).to(device)
        mf = torch.from_numpy(np.concatenate([g.mfcc for g in gs])).to(device)
        batches.append((lvl, lm, mf))
    if cfg.shift_negatives:
        for lvl in cfg.levels:
            lm, mf = store.sample_shift_group(
                lvl,
                rng,
                cfg.shift_anchors,
                cfg.max_shift[lvl],
                cfg.shift_negatives,
                cfg.augment,
                weights[lvl],
                cfg.foreign(lvl),
            )
            n, c = mf.shape[:2]
            batches.append(
                (lvl, torch.from_numpy(lm).to(device), torch.from_numpy(mf.reshape(n * c, *mf.shape[2:])).to(device))
            )
    return batches


def train_step(ddp_model, model, opt, store, cfg: TrainSyncersConfig, rng, weights, device: str):
    """Sample, forward the trained levels (`cfg.levels`), backward, clip, update. Returns (losses, accuracies) as
    floats: the group terms of every trained level, then their shift terms when `cfg.shift_negatives`."""
    import torch

    from training.models.syncer import group_loss, shift_loss

    embeddings = ddp_model(sample_batches(store, cfg, rng, weights, device))
    total = torch.zeros((), device=device)
    losses, accs = [], []
    for i, (e_a, e_x) in enumerate(embeddings):
        if i < len(cfg.levels):
            n = cfg.group_size
            loss, acc = group_loss(cfg.syncer, e_a.view(-1, n, e_a.shape[-1]), e_x.view(-1, n, e_x.shape[-1]))
        else:
            loss, acc = shift_loss(e_a.view(len(e_x), -1, e_a.shape[-1]), e_x, cfg.syncer.syncnet_margin)
            loss = cfg.shift_weight * loss
        total = total + loss
        losses.append(float(loss.detach()))
        accs.append(float(acc))
    opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return losses, accs


class SyncerTrainer(Trainer):
    """Trains every level of the pyramid at every step; keeps each level's best validation weights."""

    desc, unit, rate_key = "syncers", "step", "steps_per_s"
    seed_per_rank = False

    def setup(self, progress: bool) -> None:
        import torch

        from training.data.syncer_batches import syncer_store

        cfg, sc = self.cfg, self.cfg.syncer
        data = load_split_segments(cfg, progress and self.ctx.is_main)
        self.stores = {k: syncer_store(v, sc, cfg.clips.frontend) for k, v in data.items() if v}
        if "train" not in self.stores:
            raise RuntimeError(f"{cfg.data_dir}: the train split is empty")
        self.weights = [self.stores["train"].sampling_weights(lvl) for lvl in range(sc.num_levels)]
        self.model = build_model(cfg, self.stores["train"], self.ctx.device)
        params = [p for p in self.model.parameters() if p.requires_grad]  # frozen copied levels stay as they are
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ddp_model = context.wrap_ddp(self.model, self.ctx)
        # Early stopping per level: coarse levels see few distinct segments and start to memorise clips long
        # before the fine ones stop improving, so each level keeps its own best validation weights.
        self.best: dict[int, tuple[float, int, dict | None]] = {}
        self.checkpointed = [
            Checkpointed(
                "checkpoint",
                self.model,
                self.opt,
                lambda step: {"step": step, "config": cfg, "kind": "syncer_pyramid", "syncer": sc},
            )
        ]
        self.add_callback("on_checkpoint", lambda t: plot_curves(t.metrics_path, t.out_dir / "curves.png"))

    def train_step(self, rng) -> dict[str, float]:
        for g in self.opt.param_groups:
            g["lr"] = _lr_at(self.cfg, self.step)
        losses, accs = train_step(
            self.ddp_model, self.model, self.opt, self.stores["train"], self.cfg, rng, self.weights, self.ctx.device
        )
        levels = self.cfg.levels
        nl = len(levels)
        out = {k: v for i, lvl in enumerate(levels) for k, v in ((f"loss_l{lvl}", losses[i]), (f"acc_l{lvl}", accs[i]))}
        for i in range(nl, len(losses)):
            out[f"shift_loss_l{levels[i - nl]}"], out[f"shift_acc_l{levels[i - nl]}"] = losses[i], accs[i]
        return out

    def log_record(self, records: list[dict[str, float]], rate: float) -> dict:
        return {
            "step": self.step,
            "split": "train",
            "lr": _lr_at(self.cfg, self.step - 1),
            "steps_per_s": rate,
            "world_size": self.ctx.world,
            **mean_record(records),
        }

    def postfix(self, record: dict) -> dict[str, str]:
        key = "shift_acc_l" if self.cfg.shift_negatives else "acc_l"
        return {f"acc{lvl}": f"{record[f'{key}{lvl}']:.2f}" for lvl in self.cfg.levels}

    def validate(self) -> dict | None:
        if "val" not in self.stores:
            return None
        val = evaluate(self.model, self.stores["val"], self.cfg, self.ctx.device, levels=self.cfg.levels)
        for lvl in self.cfg.levels:
            loss = val.get(f"loss_l{lvl}")
            if loss is not None and f"shift_loss_l{lvl}" in val:
                loss = loss + self.cfg.shift_weight * val[f"shift_loss_l{lvl}"]
            if loss is not None and loss < self.best.get(lvl, (float("inf"),))[0]:
                state = {k: v.detach().clone() for k, v in self.model.levels[lvl].state_dict().items()}
                self.best[lvl] = (loss, self.step, state)
        return val

    def finish(self, rate: float | None) -> dict:
        from training.checkpoint import save_module

        cfg, sc = self.cfg, self.cfg.syncer
        best_steps = {}
        for lvl, (_, at, state) in sorted(self.best.items()):
            best_steps[lvl] = at
            if cfg.per_level_best:
                self.model.levels[lvl].load_state_dict(state)
        result = {
            "steps": self.step,
            "device": self.ctx.device,
            "world_size": self.ctx.world,
            "best_val_step_per_level": best_steps,
            "weights": "best validation per level" if cfg.per_level_best else "final",
            "steps_per_s": rate,
        }
        for split in ("val", "test"):
            if split in self.stores:
                result[split] = evaluate(self.model, self.stores[split], cfg, self.ctx.device)
        save_module(
            self.out_dir / "syncers",
            self.model,
            {
                "kind": "syncer_pyramid",
                "syncer": sc,
                "step": self.step,
                "data_dir": cfg.data_dir,
                "split": cfg.split,
                "result": result,
            },
        )
        return result


def train(cfg: TrainSyncersConfig, out_dir: Path, resume: bool = True, progress: bool = True) -> dict:
    """Train (or resume) a syncer pyramid. Returns the final validation and test metrics."""
    return SyncerTrainer(cfg, out_dir).run(resume=resume, progress=progress)


def plot_curves(metrics_path: Path, png_path: Path) -> None:
    """Loss and retrieval accuracy per level, train and val, against steps."""
    records = read_records(metrics_path)
    fig, axes = curves.panels(2, 11)
    levels = sorted({int(k[6:]) for r in records for k in r if k.startswith("loss_l")})
    for split, style in (("train", "-"), ("val", "o--")):
        rs = [r for r in records if r.get("split") == split]
        for lvl in levels:
            xs = [r["step"] for r in rs if f"loss_l{lvl}" in r]
            if not xs:
                continue
            axes[0].plot(xs, [r[f"loss_l{lvl}"] for r in rs if f"loss_l{lvl}" in r], style, label=f"{split} L{lvl}")
            axes[1].plot(xs, [r[f"acc_l{lvl}"] for r in rs if f"acc_l{lvl}" in r], style, label=f"{split} L{lvl}")
    curves.save(fig, axes, ("loss", "top-1 retrieval among 49 (chance 2%)"), "step", png_path)


if __name__ == "__main__":  # torchrun entry point
    sys.exit(command_main(__doc__, add_arguments, run))
