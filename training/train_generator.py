"""`msync train`: adversarial training of the causal generator against the frozen syncer pyramid.

    msync train --config training/configs/generator.json --out runs/generator
    torchrun --nproc-per-node 2 -m training.train_generator --set device=cpu ...     # DDP

Each iteration: one discriminator update (hinge losses of D_f, D_s, D_s^j on ground truth vs generated
sequences), then one generator update on L = lambda * L_MS-AV + adversarial terms + the weak L2 term. The
generator sees the audio of a warm-up context before each window (its causal convolutions need it) and L
frames after it (its look-ahead), exactly as a stream would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from training.data.augment import AugmentConfig
from training.data.clips import ClipLoadConfig
from training.data.splits import SplitConfig
from training.models.discriminators import DiscriminatorConfig
from training.models.generator import GeneratorConfig


@dataclasses.dataclass(frozen=True)
class TrainGeneratorConfig:
    """Everything a generator run needs; written to `OUT/config.json`.

    Defaults follow the paper (lambda = 8, Adam beta = (0, 0.999), lr 2e-5 / 1e-5, 40-frame windows);
    `training/configs/` holds the presets actually used, with their reasons.
    """

    data_dir: str = "../shared/data"
    syncers: str = "training/weights/syncers"
    generator: GeneratorConfig = GeneratorConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    split: SplitConfig = SplitConfig()
    clips: ClipLoadConfig = ClipLoadConfig()
    augment: AugmentConfig = AugmentConfig()
    seq_len: int = 40
    batch_size: int = 16
    steps: int = 70000
    lambda_sync: float = 8.0
    sync_levels: tuple[int, ...] = (0, 1, 2, 3)
    frame_weight: float = 1.0
    sequence_weight: float = 1.0
    pair_weight: float = 1.0
    l2_weight: float = 0.01
    shape_weight: float = 0.0
    shape_quantile: float = 99.0
    lr_g: float = 2e-5
    lr_d: float = 1e-5
    beta1: float = 0.0
    beta2: float = 0.999
    grad_clip: float = 1.0
    zero_noise_prob: float = 0.2
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    log_every: int = 25
    eval_every: int = 250
    checkpoint_every: int = 500
    sample_every: int = 1000
    max_clips: int = 0
    init_from: str = ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training.config_io import add_run_arguments

    add_run_arguments(p, "runs/generator", "--set steps=500 --set generator.lookahead_frames=0")


def run(args: argparse.Namespace) -> int:
    from training.config_io import load_config

    cfg = load_config(TrainGeneratorConfig, args.config, args.overrides)
    try:
        result = GeneratorTrainer(cfg, Path(args.out)).run(resume=not args.no_resume, progress=not args.no_progress)
    except FileNotFoundError as exc:  # missing data, syncers or warm-start checkpoint: say which, no traceback
        print(f"msync train: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def training_data_summary(records_by_split: dict) -> dict:
    """What a model was trained on (for its card and the ONNX contract)."""
    train = records_by_split.get("train", [])
    groups: dict[str, float] = {}
    for r in train:
        groups[r.group or "unknown"] = groups.get(r.group or "unknown", 0.0) + r.duration_s / 60.0
    return {"clips": len(train), "minutes": round(sum(r.duration_s for r in train) / 60.0, 1),
            "identities": len({r.identity for r in train}),
            "groups_minutes": {k: round(v, 2) for k, v in sorted(groups.items())},
            "licence_note": "includes non-commercial / research-only sources; see ../shared/data/manifest.tsv"}


class GeneratorTrainer:
    """Owns the models, optimisers, data and the loop; no global state. Call `run()`."""

    def __init__(self, cfg: TrainGeneratorConfig, out_dir: Path) -> None:
        self.cfg, self.out_dir = cfg, out_dir

    # ----------------------------------------------------------------- set-up
    def _setup(self, progress: bool) -> None:
        import numpy as np
        import torch
        import torch.distributed as dist

        from stream_engine.features import mfcc_from_logmel
        from training.data.clips import load_all
        from training.data.generator_batches import WindowSampler
        from training.data.manifest import read_manifest
        from training.data.splits import assign_splits
        from training.models.discriminators import Discriminators
        from training.models.generator import Generator
        from training.models.syncer import load_pyramid
        from training.train_syncers import _resolve_device

        cfg = self.cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = _resolve_device(cfg.device)
        if self.world > 1:
            dist.init_process_group(backend="nccl" if self.device.startswith("cuda") else "gloo")
            if self.device.startswith("cuda"):
                self.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                torch.cuda.set_device(self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.is_main = self.rank == 0
        torch.manual_seed(cfg.seed + self.rank)
        self.out_dir.mkdir(parents=True, exist_ok=True)

        records = assign_splits(read_manifest(cfg.data_dir), cfg.split)
        if cfg.max_clips:
            records = {k: v[: cfg.max_clips] for k, v in records.items()}
        self.data_summary = training_data_summary(records)
        segs = {k: load_all(v, cfg.clips, progress=progress and self.is_main) for k, v in records.items()}
        g = cfg.generator
        self.warmup = g.receptive_field_frames[-1] - 1
        self.sampler = WindowSampler(segs["train"], cfg.seq_len, g.lookahead_frames, self.warmup)
        self.val_sampler = (WindowSampler(segs["val"], 2 * cfg.seq_len, g.lookahead_frames, self.warmup)
                            if segs.get("val") else None)
        self.val_segments = segs.get("val", [])

        self.syncers = load_pyramid(cfg.syncers, self.device)
        for p in self.syncers.parameters():
            p.requires_grad_(False)
        self.G = Generator(g).to(self.device)
        allm = np.concatenate([mfcc_from_logmel(s.logmel.astype(np.float64)) for s in segs["train"]])
        self.G.mfcc_mean.copy_(torch.tensor(allm.mean(0), dtype=torch.float32))
        self.G.mfcc_std.copy_(torch.tensor(allm.std(0) + 1e-3, dtype=torch.float32))
        train_frames = np.concatenate([s.landmarks for s in segs["train"]])
        self.reference_face = train_frames.mean(axis=0).astype(np.float32)
        self.shape_prior = None
        if cfg.shape_weight > 0:
            from training.shape_prior import ShapePrior

            self.shape_prior = ShapePrior.fit(train_frames, cfg.shape_quantile, seed=cfg.seed).to(self.device)
        self.D = Discriminators(cfg.discriminator).to(self.device)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
        if self.world > 1:
            self.G_ddp = torch.nn.parallel.DistributedDataParallel(self.G)
            self.D_ddp = torch.nn.parallel.DistributedDataParallel(self.D)
        else:
            self.G_ddp, self.D_ddp = self.G, self.D

    # ------------------------------------------------------------------- step
    def _tensors(self, batch):
        import torch

        dev = self.device
        audio = torch.from_numpy(batch.audio).to(dev)
        valid = torch.from_numpy(batch.valid).to(dev)
        lm = torch.from_numpy(batch.landmarks).to(dev)
        with torch.no_grad():
            mfcc = self.G.mfcc(audio)  # (B, 4 (W + T + L), 26): the same front end as the exported step
        return mfcc, valid, lm

    def _noise(self, batch_size: int):
        import torch

        h0, c0 = self.G.initial_lstm_state(batch_size, device=self.device)
        keep = (torch.rand(batch_size, 1, device=self.device) >= self.cfg.zero_noise_prob).float()
        return h0 * keep, c0 * keep  # some streams start from zeros (Triton's zero initial state)

    def generate(self, mfcc, valid, x_ref, num_frames: int, model=None):
        h0, c0 = self._noise(x_ref.shape[0])
        return (model or self.G_ddp)(mfcc, x_ref, h0, c0, num_frames=num_frames, warmup_frames=self.warmup, valid=valid)

    def sync_mfcc(self, mfcc, num_frames: int):
        """The audio of [reference frame, generated frames]: (B, 4 (T + 1), 26)."""
        start = 4 * (self.warmup - 1)
        return mfcc[:, start : start + 4 * (num_frames + 1)]

    def train_step(self, rng) -> dict:
        import torch

        from training.losses import multiscale_sync_loss
        from training.models.discriminators import hinge_d, hinge_g

        cfg = self.cfg
        batch = self.sampler.sample(cfg.batch_size, rng, cfg.augment)
        mfcc, valid, lm = self._tensors(batch)
        x_ref, real = lm[:, :1], lm[:, 1:]
        fake = self.generate(mfcc, valid, x_ref[:, 0], cfg.seq_len)

        # Discriminator update.
        d_real = self.D_ddp(x_ref, real)
        d_fake = self.D_ddp(x_ref, fake.detach())
        weights = {"frame": cfg.frame_weight, "sequence": cfg.sequence_weight, "pair": cfg.pair_weight}
        loss_d = sum(weights[k] * hinge_d(d_real[k], d_fake[k]) for k in d_real)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        torch.nn.utils.clip_grad_norm_(self.D.parameters(), cfg.grad_clip)
        self.opt_d.step()

        # Generator update.
        g_fake = self.D_ddp(x_ref, fake)
        adv = {k: hinge_g(v) for k, v in g_fake.items()}
        sync, cosines = multiscale_sync_loss(self.syncers, torch.cat([x_ref, fake], dim=1),
                                             self.sync_mfcc(mfcc, cfg.seq_len), cfg.sync_levels)
        l2 = ((fake - real) ** 2).sum(-1).mean()
        loss_g = cfg.lambda_sync * sync + sum(weights[k] * v for k, v in adv.items()) + cfg.l2_weight * l2
        shape = None
        if self.shape_prior is not None:
            shape = self.shape_prior(fake)
            loss_g = loss_g + cfg.shape_weight * shape
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        torch.nn.utils.clip_grad_norm_(self.G.parameters(), cfg.grad_clip)
        self.opt_g.step()
        rec = {"loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach()), "sync": float(sync.detach()),
               "l2": float(l2.detach())}
        if shape is not None:
            rec["shape"] = float(shape.detach())
        rec.update({f"adv_{k}": float(v.detach()) for k, v in adv.items()})
        rec.update({f"cos_l{k}": v for k, v in cosines.items()})
        return rec

    # ------------------------------------------------------------- evaluation
    def evaluate(self) -> dict:
        """Validation: syncer cosine per level and L2 on fixed 80-frame windows, plus motion statistics."""
        import torch

        from training.losses import multiscale_sync_loss

        if self.val_sampler is None:
            return {}
        batch = self.val_sampler.fixed(min(16, 2 * len(self.val_sampler.segments)))
        mfcc, valid, lm = self._tensors(batch)
        n = lm.shape[1] - 1
        self.G.eval()
        with torch.no_grad():
            torch.manual_seed(1234)
            fake = self.generate(mfcc, valid, lm[:, 0], n, model=self.G)
            _, cos = multiscale_sync_loss(self.syncers, torch.cat([lm[:, :1], fake], 1), self.sync_mfcc(mfcc, n))
            _, cos_gt = multiscale_sync_loss(self.syncers, lm, self.sync_mfcc(mfcc, n))
        self.G.train()
        vel = (fake[:, 1:] - fake[:, :-1]).norm(dim=-1).mean()
        vel_gt = (lm[:, 2:] - lm[:, 1:-1]).norm(dim=-1).mean()
        rec = {"l2": float(((fake - lm[:, 1:]) ** 2).sum(-1).mean()), "velocity": float(vel), "velocity_gt": float(vel_gt),
               "finite": bool(torch.isfinite(fake).all())}
        rec.update({f"cos_l{k}": v for k, v in cos.items()})
        rec.update({f"cos_gt_l{k}": v for k, v in cos_gt.items()})
        if self.shape_prior is not None:  # share of frames inside the training shape space (tau)
            with torch.no_grad():
                rec["plausible"] = float(self.shape_prior.plausible(fake).float().mean())
                rec["plausible_gt"] = float(self.shape_prior.plausible(lm[:, 1:]).float().mean())
        return rec

    def render_sample(self, step: int) -> None:
        """Renders the first validation window: generated (green) over ground truth (grey), with audio."""
        import torch

        from training.render import render_video

        if self.val_sampler is None:
            return
        batch = self.val_sampler.fixed(1, seed=7)
        mfcc, valid, lm = self._tensors(batch)
        n = lm.shape[1] - 1
        self.G.eval()
        with torch.no_grad():
            torch.manual_seed(7)
            fake = self.generate(mfcc, valid, lm[:, 0], n, model=self.G)[0].cpu().numpy()
        self.G.train()
        spf, ctx = self.sampler.frontend.samples_per_landmark_frame, self.sampler.frontend.context_samples
        audio = batch.audio[0, ctx + self.warmup * spf :]
        render_video(self.out_dir / "samples" / f"step{step:07d}.mp4", fake, audio, reference=batch.landmarks[0, 1:])

    # ------------------------------------------------------------ checkpoints
    def meta(self, step: int) -> dict:
        return {"kind": "generator", "step": step, "generator": self.cfg.generator, "config": self.cfg,
                "reference_face": self.reference_face.tolist(), "training_data": self.data_summary}

    def save(self, step: int) -> None:
        from training.checkpoint import save_module, save_optimizer

        ck = self.out_dir / "checkpoint"
        save_module(ck, self.G, self.meta(step))
        save_module(self.out_dir / "discriminators", self.D, {"kind": "discriminators", "step": step})
        save_optimizer(ck, self.opt_g)
        save_optimizer(self.out_dir / "discriminators", self.opt_d)

    def warm_start(self, path: str) -> None:
        """Start a fresh run from another run's generator checkpoint (and its discriminators when present).

        `path` is a checkpoint stem (e.g. runs/generator/checkpoint). Optimiser state is not taken: a warm start
        is a new run. A checkpoint without `reference_input` loads into a generator with it (zero new columns).
        """
        from training.checkpoint import load_state

        ck = Path(path)
        if not ck.with_suffix(".json").is_file():
            raise FileNotFoundError(f"init_from: no checkpoint {ck}.json/.safetensors")
        adapted = self.G.load_compatible({k: v.float() for k, v in load_state(ck, self.device).items()})
        disc = ck.parent / "discriminators"
        took_d = disc.with_suffix(".json").is_file()
        if took_d:
            self.D.load_state_dict(load_state(disc, self.device))
        if self.is_main:
            print(f"warm start from {ck}" + (" and its discriminators" if took_d else "")
                  + (f"; adapted {', '.join(adapted)}" if adapted else ""))

    def try_resume(self) -> int:
        from training.checkpoint import load_meta, load_optimizer, load_state

        ck = self.out_dir / "checkpoint"
        if not ck.with_suffix(".json").is_file():
            return 0
        self.G.load_state_dict(load_state(ck, self.device))
        self.D.load_state_dict(load_state(self.out_dir / "discriminators", self.device))
        load_optimizer(ck, self.opt_g)
        load_optimizer(self.out_dir / "discriminators", self.opt_d)
        return int(load_meta(ck)["step"])

    # ------------------------------------------------------------------- loop
    def run(self, resume: bool = True, progress: bool = True) -> dict:
        import numpy as np
        import torch.distributed as dist

        from training.config_io import dump_config
        from training.train_syncers import _append, plot_curves

        self._setup(progress)
        cfg = self.cfg
        step = self.try_resume() if resume else 0
        if not step and cfg.init_from:
            self.warm_start(cfg.init_from)
        if self.is_main:
            if step:
                print(f"resuming from {self.out_dir / 'checkpoint'} at step {step}")
            else:
                dump_config(cfg, self.out_dir / "config.json")
        rng = np.random.default_rng(cfg.seed * 1000 + self.rank * 7919 + step)
        metrics = self.out_dir / "metrics.jsonl"
        bar = None
        if self.is_main and progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=step, desc="generator", unit="it")
        t0, timed, acc = time.perf_counter(), 0, []
        while step < cfg.steps:
            acc.append(self.train_step(rng))
            step += 1
            timed += 1
            if bar is not None:
                bar.update(1)
            if self.is_main and (step % cfg.log_every == 0 or step == cfg.steps):
                rec = {k: float(np.mean([a[k] for a in acc if k in a])) for k in acc[-1]}
                rec.update({"step": step, "split": "train", "it_per_s": timed / (time.perf_counter() - t0)})
                acc.clear()
                _append(metrics, rec)
                if bar is not None:
                    bar.set_postfix(sync=f"{rec['sync']:.3f}", d=f"{rec['loss_d']:.2f}")
            if self.is_main and (step % cfg.eval_every == 0 or step == cfg.steps):
                _append(metrics, {"step": step, "split": "val", **self.evaluate()})
            if self.is_main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                self.save(step)
                plot_generator_curves(metrics, self.out_dir / "curves.png")
            if self.is_main and cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.steps):
                self.render_sample(step)
        if bar is not None:
            bar.close()
        result = {}
        if self.is_main:
            from training.checkpoint import save_module

            save_module(self.out_dir / "generator", self.G, self.meta(step))
            result = {"steps": step, "device": self.device, "world_size": self.world,
                      "it_per_s": timed / max(time.perf_counter() - t0, 1e-9) if timed else None,
                      "val": self.evaluate()}
            (self.out_dir / "result.json").write_text(json.dumps(result, indent=2))
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()
        return result


def plot_generator_curves(metrics_path: Path, png_path: Path) -> None:
    """Losses and syncer cosines (train and validation) against iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(l) for l in metrics_path.read_text().splitlines() if l.strip()]
    tr = [r for r in recs if r.get("split") == "train"]
    va = [r for r in recs if r.get("split") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("loss_d", "loss_g", "adv_frame", "adv_sequence", "adv_pair"):
        if tr and key in tr[-1]:
            axes[0].plot([r["step"] for r in tr], [r[key] for r in tr], label=key)
    for lvl in range(4):
        k = f"cos_l{lvl}"
        if tr and k in tr[-1]:
            axes[1].plot([r["step"] for r in tr], [r[k] for r in tr], label=f"train L{lvl}")
        if va and k in va[-1]:
            axes[1].plot([r["step"] for r in va], [r[k] for r in va], "o--", label=f"val L{lvl}")
    if va:
        axes[2].plot([r["step"] for r in va], [r.get("l2", 0) for r in va], label="val L2")
        axes[2].plot([r["step"] for r in va], [r.get("velocity", 0) for r in va], label="val velocity")
        axes[2].plot([r["step"] for r in va], [r.get("velocity_gt", 0) for r in va], label="GT velocity")
    for ax, title in zip(axes, ("losses", "syncer cosine (higher = more in sync)", "validation")):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":  # torchrun entry point
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
