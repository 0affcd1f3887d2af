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
import sys
from pathlib import Path
from typing import Any

from training.config_io import command_main
from training.data.augment import AugmentConfig
from training.data.clips import ClipLoadConfig
from training.data.nonspeech import RestMixConfig
from training.data.splits import SplitConfig
from training.models.discriminators import DiscriminatorConfig
from training.models.generator import GeneratorConfig
from training.run import context, curves
from training.run.metrics import read_records
from training.run.trainer import Checkpointed, Trainer

HELP = (
    "Train the causal generator (GAN + multi-scale sync loss): `msync train --config "
    "training/configs/generator.json --out runs/generator`."
)


@dataclasses.dataclass(frozen=True)
class TrainGeneratorConfig:
    """Everything a generator run needs; written to `OUT/config.json`.

    Defaults follow the paper (lambda = 8, Adam beta = (0, 0.999), lr 2e-5 / 1e-5, 40-frame windows);
    `training/configs/` holds the presets actually used, with their reasons.

    Model 0.3's terms (all off by default, `training.face_losses`): `rest` mixes non-speech into a share of each
    batch (`training.data.nonspeech`); those windows train only the rest terms (`rest_*_weight`) and the L2 and
    articulation terms on their speech frames, while the synchrony loss and the discriminators see only the
    unmixed windows. `mouth_*_weight` are the articulation terms, `head_*_weight` the head terms;
    `head_angle_momentum` is the share of the running head-angle bias kept per step (0 = each batch alone; the
    running value starts afresh with every run, warm starts included, and is not checkpointed).
    `head_quantile_weight` matches the distribution of the windows' head energy at `head_quantile_levels`
    (`training.face_losses.head_quantile_terms`) against ground truth's of this batch (`head_quantile_bank` 0) or
    of the last `head_quantile_bank` real windows (kept like the head-angle bias: afresh each run, not
    checkpointed). `head_speech_weight` pulls the head's coupling to the audio's loudness at
    `head_speech_scales_ms` (mean over the batch's windows) to ground truth's (`training.face_losses.
    head_speech_terms`; measured by `benchmarks.head_speech`; not used by a shipped model); `head_pose_speech_weight`
    does the same for the signed yaw, pitch and roll at the same scales (a head that leans with the loudness).

    Distilled audio (`training.train_distill`): `init_audio_from` names a generator checkpoint whose causal audio
    encoder (MFCC normalisation, `audio_stem`, `blocks`) replaces the warm start's after `init_from` is loaded;
    `distill_weight` > 0 adds the distillation loss of the frozen head `distill_head` (a `msync distill` run) on
    the unmixed windows, against the speech teacher's features of their clean audio, so that the encoder stays
    teacher-like while the generator trains (`teacher_cache`: "" = ~/.cache/msync/teacher). `freeze_audio_encoder`
    keeps the causal audio encoder as the warm start left it (`requires_grad` off for `audio_stem` and `blocks`, the
    whole encoder; the MFCC normalisation is buffers, taken from the checkpoint): a fine-tune without the
    distillation head, whose term holds the encoder teacher-like, cannot let it drift. It needs `init_from` or
    `init_audio_from`, and is refused with `distill_weight` > 0 (that term would train nothing).

    `stream_start_prob` is the share of windows that are a stream's first frames: the window starts at the first
    frame of its segment, so every warm-up frame lies before the stream (zero or silence history, see
    `GeneratorConfig.silence_history`) and the speech begins with the stream, as when a file is animated from its
    first sample; 0 draws the windows as before (uniform starts, the same random stream).

    `d_warmup_steps` > 0 makes the run's first steps discriminator-only: the generator makes its windows without
    gradients and is not updated, so a warm start whose source run left no discriminators (the shipped weights:
    `training/weights/generator` has none) does not train the generator against critics that start from random
    weights. Those steps count in `steps`: the generator's first update is the step at 0-based index
    `d_warmup_steps`, logged in `metrics.jsonl` as step `d_warmup_steps + 1` (records count steps done). Warm-up
    records hold `loss_d` alone.

    `prefetch` > 0 draws that many batches ahead in a forked worker process (`training.data.prefetch`): the same
    batches in the same order, with the host-side batch work overlapping the step (worth it on a GPU, where drawing
    a batch of 256 takes about half the step; 0 draws them inline).
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
    stream_start_prob: float = 0.0
    rest: RestMixConfig = RestMixConfig()
    rest_gap_target: float = 0.02
    rest_gap_weight: float = 0.0
    rest_still_weight: float = 0.0
    rest_pose_weight: float = 0.0
    mouth_shape_weight: float = 0.0
    mouth_gap_weight: float = 0.0
    mouth_amplitude_weight: float = 0.0
    mouth_under_weight: float = 0.0
    mouth_corr_weight: float = 0.0
    head_energy_weight: float = 0.0
    head_pyramid_weight: float = 0.0
    head_pyramid_first_level: int = 0
    head_mean_weight: float = 0.0
    head_tail_weight: float = 0.0
    head_quantile_weight: float = 0.0
    head_quantile_levels: tuple[int, ...] = (2, 3)
    head_quantile_bank: int = 0
    head_angle_weight: float = 0.0
    head_angle_momentum: float = 0.0
    head_speech_weight: float = 0.0
    head_speech_scales_ms: tuple[float, ...] = (200.0, 400.0)
    head_pose_speech_weight: float = 0.0
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    log_every: int = 25
    eval_every: int = 250
    checkpoint_every: int = 500
    sample_every: int = 1000
    max_clips: int = 0
    prefetch: int = 0
    d_warmup_steps: int = 0
    freeze_audio_encoder: bool = False
    init_from: str = ""
    init_audio_from: str = ""
    distill_head: str = ""
    distill_weight: float = 0.0
    distill_cosine_weight: float = 0.5
    teacher_cache: str = ""

    def __post_init__(self) -> None:
        if self.generator.frontend != self.clips.frontend:
            raise ValueError(
                "generator.frontend and clips.frontend differ: the generator must read the features "
                "its training clips were computed with"
            )
        clean = self.batch_size - int(round(self.rest.fraction * self.batch_size))
        if clean < 2 or clean % 2:
            raise ValueError(
                f"batch_size {self.batch_size} with rest.fraction {self.rest.fraction} leaves {clean} unmixed "
                "windows; the discriminators need an even number >= 2"
            )
        if self.rest.fraction > 0:
            need = self.rest.min_speech_frames + self.rest.min_rest_frames
            if need > self.seq_len:
                raise ValueError(
                    f"rest.min_speech_frames + rest.min_rest_frames = {need} does not fit in seq_len {self.seq_len}"
                )
        weights = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.endswith("_weight")}
        negative = [name for name, w in weights.items() if w < 0]
        if negative:
            raise ValueError(f"loss weights must be >= 0: {', '.join(negative)}")
        if not 0.0 <= self.head_angle_momentum < 1.0:
            raise ValueError(f"head_angle_momentum must be in [0, 1), got {self.head_angle_momentum}")
        if not self.head_quantile_levels or any(not 0 <= lv <= 7 for lv in self.head_quantile_levels):
            raise ValueError(f"head_quantile_levels must be pyramid levels 0..7, got {self.head_quantile_levels}")
        if self.head_quantile_bank < 0:
            raise ValueError(f"head_quantile_bank must be >= 0 windows, got {self.head_quantile_bank}")
        if self.d_warmup_steps < 0 or (self.d_warmup_steps and self.d_warmup_steps >= self.steps):
            raise ValueError(
                f"d_warmup_steps must be >= 0 and < steps ({self.steps}) so that the generator trains at all, "
                f"got {self.d_warmup_steps}"
            )
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0 (batches drawn ahead), got {self.prefetch}")
        if not 0.0 <= self.stream_start_prob <= 1.0:
            raise ValueError(f"stream_start_prob must be in [0, 1], got {self.stream_start_prob}")
        if self.freeze_audio_encoder and not (self.init_from or self.init_audio_from):
            raise ValueError("freeze_audio_encoder needs init_from or init_audio_from (a trained encoder to keep)")
        if self.freeze_audio_encoder and self.distill_weight > 0:
            raise ValueError(
                "freeze_audio_encoder with distill_weight > 0: the distillation term trains only the audio encoder, "
                "which is frozen; set one of them"
            )
        if self.distill_weight > 0 and not self.distill_head:
            raise ValueError("distill_weight > 0 needs distill_head (the head of a `msync distill` run)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training.config_io import add_run_arguments

    add_run_arguments(p, "runs/generator", "--set steps=500 --set generator.lookahead_frames=0")
    p.epilog = (
        "Settings (--set KEY=VALUE) are the fields of TrainGeneratorConfig in training/train_generator.py, whose "
        "docstring explains each (e.g. d_warmup_steps and freeze_audio_encoder for a fine-tune of the shipped "
        "model); OUT/config.json lists every value a run used."
    )


def run(args: argparse.Namespace) -> int:
    from training.config_io import config_from_args, report_run

    cfg = config_from_args(TrainGeneratorConfig, args)
    trainer = GeneratorTrainer(cfg, Path(args.out))
    return report_run(  # missing data, syncers or checkpoint: one line
        "msync train",
        lambda: trainer.run(resume=not args.no_resume, progress=not args.no_progress),
        (FileNotFoundError,),
    )


def training_data_summary(records_by_split: dict) -> dict:
    """What a model was trained on (for its card and the ONNX contract)."""
    train = records_by_split.get("train", [])
    groups: dict[str, float] = {}
    for r in train:
        groups[r.group or "unknown"] = groups.get(r.group or "unknown", 0.0) + r.duration_s / 60.0
    return {
        "clips": len(train),
        "minutes": round(sum(r.duration_s for r in train) / 60.0, 1),
        "identities": len({r.identity for r in train}),
        "groups_minutes": {k: round(v, 2) for k, v in sorted(groups.items())},
        "licence_note": "includes non-commercial / research-only sources; see ../shared/data/manifest.tsv",
    }


class GeneratorTrainer(Trainer):
    """The models, optimisers, data and one GAN iteration; the loop, DDP, resume and logging are `Trainer`'s."""

    desc, unit, rate_key = "generator", "it", "it_per_s"

    def setup(self, progress: bool) -> None:
        import numpy as np
        import torch

        from stream_engine.features import mfcc_from_logmel
        from training.data.clips import load_all
        from training.data.generator_batches import WindowSampler
        from training.data.manifest import read_manifest
        from training.data.splits import assign_splits
        from training.models.discriminators import Discriminators
        from training.models.generator import Generator
        from training.models.syncer import load_pyramid

        cfg = self.cfg
        self.device, self.rank, self.world, self.is_main = (
            self.ctx.device,
            self.ctx.rank,
            self.ctx.world,
            self.ctx.is_main,
        )
        records = assign_splits(read_manifest(cfg.data_dir), cfg.split)
        if cfg.max_clips:
            records = {k: v[: cfg.max_clips] for k, v in records.items()}
        if not records.get("train"):
            from training.run.trainer import TrainingDataError

            held = {k: len(v) for k, v in records.items() if k != "train"}
            raise TrainingDataError(
                f"the training split of {cfg.data_dir} is empty ({held} clips held out: whole speakers go to one "
                "split); with few speakers, train on them all: --set split.test_fraction=0 --set "
                "split.val_fraction=0"
            )
        self.data_summary = training_data_summary(records)
        segs = {k: load_all(v, cfg.clips, progress=progress and self.is_main) for k, v in records.items()}
        g, fe = cfg.generator, cfg.clips.frontend
        self.warmup = g.receptive_field_frames[-1] - 1
        self.sampler = WindowSampler(segs["train"], cfg.seq_len, g.lookahead_frames, self.warmup, fe)
        self.val_sampler = (
            WindowSampler(segs["val"], 2 * cfg.seq_len, g.lookahead_frames, self.warmup, fe)
            if segs.get("val")
            else None
        )
        self.val_segments = segs.get("val", [])

        self.syncers = load_pyramid(cfg.syncers, self.device)
        for p in self.syncers.parameters():
            p.requires_grad_(False)
        self.G = Generator(g).to(self.device)
        allm = np.concatenate([mfcc_from_logmel(s.logmel.astype(np.float64), fe) for s in segs["train"]])
        self.G.mfcc_mean.copy_(torch.tensor(allm.mean(0), dtype=torch.float32))
        self.G.mfcc_std.copy_(torch.tensor(allm.std(0) + 1e-3, dtype=torch.float32))
        train_frames = np.concatenate([s.landmarks for s in segs["train"]])
        self.reference_face = train_frames.mean(axis=0).astype(np.float32)
        self.shape_prior, self.eval_tau = None, None
        if cfg.shape_weight > 0:
            from training.shape_prior import ShapePrior

            self.shape_prior = ShapePrior.fit(train_frames, cfg.shape_quantile, seed=cfg.seed).to(self.device)
            self.eval_tau = eval_plausibility_tau(self.shape_prior, segs.get("val", []))
        if cfg.freeze_audio_encoder:  # the warm start's encoder as it is (Adam skips parameters without gradients)
            for p in [*self.G.audio_stem.parameters(), *self.G.blocks.parameters()]:
                p.requires_grad_(False)
            if self.is_main:
                print(
                    "audio encoder frozen (freeze_audio_encoder): audio_stem and blocks keep the warm start's weights"
                )
        self.D = Discriminators(cfg.discriminator).to(self.device)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
        self.G_ddp, self.D_ddp = context.wrap_ddp(self.G, self.ctx), context.wrap_ddp(self.D, self.ctx)
        self.checkpointed = [
            Checkpointed("checkpoint", self.G, self.opt_g, self.meta),
            Checkpointed("discriminators", self.D, self.opt_d, lambda step: {"kind": "discriminators", "step": step}),
        ]
        self.add_callback("on_checkpoint", lambda t: plot_generator_curves(t.metrics_path, t.out_dir / "curves.png"))
        self.add_callback("on_step_end", GeneratorTrainer._maybe_render_sample)
        self.distill_head: Any = None
        self.teacher: list = []
        self.distill_shift = 0
        self.prefetcher: Any = None
        self.head_angle_bias: Any = None  # running head-angle bias (training.face_losses.head_angle_terms)
        self.head_quantile_bank: Any = None  # real windows' log head energies (head_quantile_terms)
        if cfg.distill_weight > 0:
            self.setup_distill(progress)

    def setup_distill(self, progress: bool) -> None:
        """The frozen distillation head and the teacher's features of every training segment (cached)."""
        from training.checkpoint import load_meta
        from training.models.distill_head import load_distill_head
        from training.teacher import default_cache_dir, features_at_mfcc_rate

        head_path = Path(self.cfg.distill_head)
        if not (head_path / "distill_head.json").is_file() and not head_path.with_suffix(".json").is_file():
            raise FileNotFoundError(
                f"distill_head {head_path}: no `msync distill` run there; run "
                "`msync distill --config training/configs/distill.json --out runs/distill` first"
            )
        head = load_distill_head(self.cfg.distill_head, self.device)
        head_path = head_path / "distill_head" if head_path.is_dir() else head_path
        self.distill_shift = int(load_meta(head_path).get("target_shift_frames", 0))
        for p in head.parameters():
            p.requires_grad_(False)
        self.distill_head = head
        self.teacher = features_at_mfcc_rate(
            [s.audio for s in self.sampler.segments],
            cache_dir=self.cfg.teacher_cache or default_cache_dir(),
            mfcc_per_frame=1,
            progress=(progress and self.is_main) or None,
        )

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

    def draw_batch(self, rng):
        cfg = self.cfg
        return self.sampler.sample(
            cfg.batch_size, rng, cfg.augment, cfg.rest, self.reference_face, stream_start_prob=cfg.stream_start_prob
        )

    def next_batch(self, rng):
        """The step's batch: drawn inline from `rng`, or (`prefetch` > 0) taken from the worker that owns `rng`
        from the first call on; both give the same batches in the same order."""
        if not self.cfg.prefetch:
            return self.draw_batch(rng)
        if self.prefetcher is None:
            from training.data.prefetch import Prefetcher

            self.prefetcher = Prefetcher(self.draw_batch, rng, depth=self.cfg.prefetch)
        return self.prefetcher.next()

    def train_step(self, rng) -> dict[str, float]:
        import torch

        from training.losses import multiscale_sync_loss
        from training.models.discriminators import hinge_d, hinge_g

        cfg = self.cfg
        batch = self.next_batch(rng)
        mfcc, valid, lm = self._tensors(batch)
        x_ref, real = lm[:, :1], lm[:, 1:]
        critics_only = self.step < cfg.d_warmup_steps
        with torch.set_grad_enabled(not critics_only):
            fake = self.generate(mfcc, valid, x_ref[:, 0], cfg.seq_len)
        speech = torch.from_numpy(batch.speech).to(self.device)
        rest = torch.from_numpy(batch.rest).to(self.device)
        clean = ~torch.from_numpy(batch.mixed).to(self.device)  # windows of pure speech: sync loss and critics

        # Discriminator update.
        d_real = self.D_ddp(x_ref[clean], real[clean])
        d_fake = self.D_ddp(x_ref[clean], fake[clean].detach())
        weights = {"frame": cfg.frame_weight, "sequence": cfg.sequence_weight, "pair": cfg.pair_weight}
        loss_d = sum(weights[k] * hinge_d(d_real[k], d_fake[k]) for k in d_real)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        torch.nn.utils.clip_grad_norm_(self.D.parameters(), cfg.grad_clip)
        self.opt_d.step()
        if critics_only:  # discriminator warm-up (`d_warmup_steps`): the generator is not updated
            return {"loss_d": float(loss_d.detach())}

        # Generator update.
        g_fake = self.D_ddp(x_ref[clean], fake[clean])
        adv = {k: hinge_g(v) for k, v in g_fake.items()}
        sync, cosines = multiscale_sync_loss(
            self.syncers,
            torch.cat([x_ref, fake], dim=1)[clean],
            self.sync_mfcc(mfcc, cfg.seq_len)[clean],
            cfg.sync_levels,
        )
        sq = ((fake - real) ** 2).sum(-1).mean(-1)  # (B, T)
        l2 = (sq * speech).sum() / speech.sum().clamp_min(1)
        loss_g = cfg.lambda_sync * sync + sum(weights[k] * v for k, v in adv.items()) + cfg.l2_weight * l2
        shape = None
        if self.shape_prior is not None:
            shape = self.shape_prior(fake)
            loss_g = loss_g + cfg.shape_weight * shape
        face = self.face_terms(fake, real, x_ref[:, 0], speech, rest, clean, batch)
        for name, value in face.items():
            loss_g = loss_g + getattr(cfg, f"{name}_weight") * value
        distill = None
        if self.distill_head is not None:
            distill = self.distill_term(mfcc[clean], valid[clean], batch, clean.cpu().numpy())
            loss_g = loss_g + cfg.distill_weight * distill
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        torch.nn.utils.clip_grad_norm_(self.G.parameters(), cfg.grad_clip)
        self.opt_g.step()
        rec = {
            "loss_d": float(loss_d.detach()),
            "loss_g": float(loss_g.detach()),
            "sync": float(sync.detach()),
            "l2": float(l2.detach()),
        }
        if shape is not None:
            rec["shape"] = float(shape.detach())
        if distill is not None:
            rec["distill"] = float(distill.detach())
        rec.update({k: float(v.detach()) for k, v in face.items()})
        rec.update({f"adv_{k}": float(v.detach()) for k, v in adv.items()})
        rec.update({f"cos_l{k}": v for k, v in cosines.items()})
        return rec

    def distill_term(self, mfcc, valid, batch, keep):
        """The distillation loss (`training.models.distill_head.distill_loss`) of the kept windows: the head reads
        every audio level at column W + t + L and predicts the teacher's row of target frame t."""
        import numpy as np
        import torch

        from training.models.distill_head import distill_loss, level_columns

        n, shift = self.cfg.seq_len, self.distill_shift
        rows = []
        for k, s, use in zip(batch.segment_index, batch.start_frame, keep):
            if use:  # rows s - shift .. (the first row repeated where the window starts within `shift` frames)
                rows.append(self.teacher[int(k)][np.clip(np.arange(n) + int(s) - shift, 0, None)])
        target = self.distill_head.standardise(torch.from_numpy(np.stack(rows)).to(self.device))
        levels = self.G.audio_levels(mfcc, valid)
        pred = self.distill_head(level_columns(levels, self.warmup + self.cfg.generator.lookahead_frames, n))
        loss, _ = distill_loss(pred, target, self.cfg.distill_cosine_weight)
        return loss

    def face_terms(self, fake, real, x_ref, speech, rest, clean, batch) -> dict:
        """The `training.face_losses` terms whose weight is not 0: {name: scalar}."""
        from training.face_losses import (
            articulation_terms,
            head_angle_terms,
            head_quantile_terms,
            head_terms,
            rest_terms,
        )

        cfg, out = self.cfg, {}
        if cfg.rest_gap_weight or cfg.rest_still_weight or cfg.rest_pose_weight:
            out.update(rest_terms(fake, rest, x_ref, cfg.rest_gap_target))
        mouth = ("shape", "gap", "amplitude", "under", "corr")
        if any(getattr(cfg, f"mouth_{k}_weight") for k in mouth):
            out.update(articulation_terms(fake, real, speech))
        if cfg.head_energy_weight or cfg.head_pyramid_weight or cfg.head_mean_weight or cfg.head_tail_weight:
            out.update(head_terms(fake, real, clean, first_level=cfg.head_pyramid_first_level))
        if cfg.head_angle_weight:
            terms, self.head_angle_bias = head_angle_terms(
                fake, real, x_ref, clean, self.head_angle_bias, cfg.head_angle_momentum
            )
            out.update(terms)
        if cfg.head_quantile_weight:
            terms, self.head_quantile_bank = head_quantile_terms(
                fake, real, clean, cfg.head_quantile_levels, self.head_quantile_bank, cfg.head_quantile_bank
            )
            out.update(terms)
        if cfg.head_speech_weight or cfg.head_pose_speech_weight:
            from training.face_losses import head_speech_terms

            out.update(
                head_speech_terms(fake, real, x_ref, self.window_loudness(batch), clean, cfg.head_speech_scales_ms)
            )
        return {k: v for k, v in out.items() if getattr(cfg, f"{k}_weight")}

    def window_loudness(self, batch):
        """(B, T) dBFS level of each generated frame's 640 samples: the target frames start `warmup` frames after
        the audio's front-end context, where the sample renderer starts too (`training.face_losses.
        window_loudness_db`)."""
        import torch

        from training.face_losses import window_loudness_db

        spf, ctx = self.sampler.frontend.samples_per_landmark_frame, self.sampler.frontend.context_samples
        db = window_loudness_db(batch.audio, ctx + self.warmup * spf, self.cfg.seq_len, spf)
        return torch.from_numpy(db).to(self.device)

    # ------------------------------------------------------------- evaluation
    def validate(self) -> dict:
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
        rec = {
            "l2": float(((fake - lm[:, 1:]) ** 2).sum(-1).mean()),
            "velocity": float(vel),
            "velocity_gt": float(vel_gt),
            "finite": bool(torch.isfinite(fake).all()),
        }
        rec.update({f"cos_l{k}": v for k, v in cos.items()})
        rec.update({f"cos_gt_l{k}": v for k, v in cos_gt.items()})
        if self.shape_prior is not None:  # share of frames inside the training shape space (tau)
            # plausible / plausible_gt: the loss's tau (shape_quantile percentile of *training* frames, 95 in the
            # v0.3 configs), so ground truth scores about that share by construction. plausible_eval(_gt): tau as
            # `msync eval` sets it (99th percentile of the held-out split's ground truth, here val), so ground
            # truth scores about 0.99 and the model's figure compares with the report's "plausible" column.
            with torch.no_grad():
                rec["plausible"] = float(self.shape_prior.plausible(fake).float().mean())
                rec["plausible_gt"] = float(self.shape_prior.plausible(lm[:, 1:]).float().mean())
                if self.eval_tau is not None:
                    rec["plausible_eval"] = float((self.shape_prior.distance(fake) <= self.eval_tau).float().mean())
                    rec["plausible_eval_gt"] = float(
                        (self.shape_prior.distance(lm[:, 1:]) <= self.eval_tau).float().mean()
                    )
        rec.update(self.validate_mouth(fake, lm[:, 1:]))
        return rec

    def validate_mouth(self, fake, real) -> dict:
        """Inner-lip gap amplitude ratio (std over each window, median) and the gap's correlation with ground truth
        (Pearson r over each window, median; `gap_r_lag1` pairs the generated frame t + 1 with ground truth's t, so
        it exceeds `gap_r` when the mouth is late) on the validation windows and, when non-speech mixing is on,
        the gap in the rest frames of fixed mixed validation windows (p50, p90, IOD)."""
        import numpy as np
        import torch

        from training.face_losses import lip_gap, masked_corr

        g_f, g_r = lip_gap(fake), lip_gap(real)
        rec = {"gap_amplitude": float((g_f.std(1) / g_r.std(1).clamp_min(1e-4)).median())}
        every = torch.ones_like(g_f[:, 1:], dtype=torch.bool)
        rec["gap_r"] = float(masked_corr(g_f, g_r, torch.ones_like(g_f, dtype=torch.bool)).median())
        rec["gap_r_lag1"] = float(masked_corr(g_f[:, 1:], g_r[:, :-1], every).median())
        if self.cfg.rest.fraction <= 0 or self.val_sampler is None:
            return rec
        n = min(16, 2 * len(self.val_sampler.segments))
        mix = dataclasses.replace(self.cfg.rest, fraction=1.0)
        batch = self.val_sampler.sample(n, np.random.default_rng(4321), None, mix, self.reference_face)
        mfcc, valid, lm = self._tensors(batch)
        self.G.eval()
        with torch.no_grad():
            torch.manual_seed(4321)
            out = self.generate(mfcc, valid, lm[:, 0], lm.shape[1] - 1, model=self.G)
        self.G.train()
        gap = lip_gap(out)[torch.from_numpy(batch.rest).to(self.device)].cpu().numpy()
        if len(gap):
            rec["rest_gap_p50"], rec["rest_gap_p90"] = (float(v) for v in np.percentile(gap, [50, 90]))
        return rec

    def postfix(self, record: dict) -> dict[str, str]:
        if "sync" not in record:  # a discriminator warm-up record (`d_warmup_steps`): loss_d alone
            return {"d-warmup": f"{record['loss_d']:.2f}"}
        return {"sync": f"{record['sync']:.3f}", "d": f"{record['loss_d']:.2f}"}

    def _maybe_render_sample(self) -> None:
        every = self.cfg.sample_every
        if self.ctx.is_main and every and (self.step % every == 0 or self.step == self.cfg.steps):
            self.render_sample(self.step)

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
        return {
            "kind": "generator",
            "step": step,
            "generator": self.cfg.generator,
            "config": self.cfg,
            "reference_face": self.reference_face.tolist(),
            "training_data": self.data_summary,
        }

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
            print(
                f"warm start from {ck}"
                + (" and its discriminators" if took_d else "")
                + (f"; adapted {', '.join(adapted)}" if adapted else "")
            )
            if not took_d and not self.cfg.d_warmup_steps:
                print(
                    f"note: {ck.parent} has no discriminators, so they start untrained; --set d_warmup_steps=N "
                    "trains them alone for the first N steps"
                )

    def on_fresh_start(self) -> None:
        if self.cfg.init_from:
            self.warm_start(self.cfg.init_from)
        if self.cfg.init_audio_from:
            self.take_audio_encoder(self.cfg.init_audio_from)

    def take_audio_encoder(self, path: str) -> None:
        """Replace the causal audio encoder (MFCC normalisation, `audio_stem`, `blocks`) with another generator
        checkpoint's (e.g. a `msync distill` run's `generator`); the architectures must match."""
        from training.models.generator import load_generator

        other, _ = load_generator(path, self.device)
        if (
            other.cfg.audio_channels != self.G.cfg.audio_channels
            or other.cfg.level_dilations != self.G.cfg.level_dilations
        ):
            raise ValueError(f"init_audio_from {path}: its audio encoder has another architecture")
        prefixes = ("audio_stem.", "blocks.", "mfcc_mean", "mfcc_std")
        theirs = {k: v for k, v in other.state_dict().items() if k.startswith(prefixes)}
        self.G.load_state_dict({**self.G.state_dict(), **theirs})
        if self.is_main:
            print(f"audio encoder from {path} ({len(theirs)} tensors)")

    def finish(self, rate: float | None) -> dict:
        from training.checkpoint import save_module

        if self.prefetcher is not None:
            self.prefetcher.close()
            self.prefetcher = None

        save_module(self.out_dir / "generator", self.G, self.meta(self.step))
        return {
            "steps": self.step,
            "device": self.device,
            "world_size": self.world,
            "it_per_s": rate,
            "val": self.validate(),
        }


def plot_generator_curves(metrics_path: Path, png_path: Path) -> None:
    """Losses and syncer cosines (train and validation) against iterations."""
    recs = read_records(metrics_path)
    tr = [r for r in recs if r.get("split") == "train"]
    va = [r for r in recs if r.get("split") == "val"]
    fig, axes = curves.panels(3, 15)
    for key in ("loss_d", "loss_g", "adv_frame", "adv_sequence", "adv_pair"):
        has = [r for r in tr if key in r]  # discriminator warm-up records (`d_warmup_steps`) log loss_d alone
        if has:
            axes[0].plot([r["step"] for r in has], [r[key] for r in has], label=key)
    for lvl in range(4):
        k = f"cos_l{lvl}"
        has = [r for r in tr if k in r]
        if has:
            axes[1].plot([r["step"] for r in has], [r[k] for r in has], label=f"train L{lvl}")
        if va and k in va[-1]:
            axes[1].plot([r["step"] for r in va], [r[k] for r in va], "o--", label=f"val L{lvl}")
    if va:
        axes[2].plot([r["step"] for r in va], [r.get("l2", 0) for r in va], label="val L2")
        axes[2].plot([r["step"] for r in va], [r.get("velocity", 0) for r in va], label="val velocity")
        axes[2].plot([r["step"] for r in va], [r.get("velocity_gt", 0) for r in va], label="GT velocity")
    titles = ("losses", "syncer cosine (higher = more in sync)", "validation")
    curves.save(fig, axes, titles, "iteration", png_path)


def eval_plausibility_tau(prior, heldout_segments, quantile: float = 99.0) -> float | None:
    """The plausibility threshold as `msync eval` sets it (`EvalConfig.plausibility_quantile`, default 99): the
    `quantile` percentile of the prior's distances over held-out ground-truth frames (`heldout_segments`, e.g. the
    val split). None without held-out frames."""
    import numpy as np
    import torch

    frames = [s.landmarks for s in heldout_segments]
    if not frames:
        return None
    with torch.no_grad():
        x = torch.from_numpy(np.concatenate(frames).astype(np.float32)).to(prior.threshold.device)
        d = prior.distance(x).cpu().numpy()
    d = d[np.isfinite(d)]
    return float(np.percentile(d, quantile)) if d.size else None


if __name__ == "__main__":  # torchrun entry point
    sys.exit(command_main(__doc__, add_arguments, run))
