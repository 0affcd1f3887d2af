"""`msync distill`: distil the speech teacher (Whisper tiny.en encoder, `training.teacher`) into the generator's
causal audio encoder (MFCC stem + ConvNeXt blocks), from audio alone.

    python -m training.data.speech_corpus materialise          # once: the public speech corpus into the cache
    msync distill --config training/configs/distill.json --out runs/distill

The student is a whole generator (initialised from `init_from`, e.g. model 0.2.0); only `audio_stem` and
`blocks` train, with a training-only linear head (`training.models.distill_head`) reading every level at column
t + L to predict the teacher's frame t. The student hears a degraded copy of the audio (noise 5-40 dB SNR,
gain, telephone band, reverberation: `training.data.channel_augment`), the teacher the clean one. Outputs:
`OUT/generator` (a complete generator checkpoint whose audio encoder is distilled: `msync train` can take its
encoder with `init_audio_from`) and `OUT/distill_head` (the head, with the teacher's mean and std).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from training.config_io import command_main
from training.data.channel_augment import ChannelAugmentConfig
from training.data.clips import ClipLoadConfig
from training.data.splits import SplitConfig
from training.run import curves
from training.run.metrics import read_records
from training.run.trainer import Checkpointed, Trainer

HELP = (
    "Distil the speech teacher into the generator's causal audio encoder: "
    "`msync distill --config training/configs/distill.json --out runs/distill`."
)


@dataclasses.dataclass(frozen=True)
class TrainDistillConfig:
    """A distillation run; written to `OUT/config.json`.

    Attributes:
        init_from: generator checkpoint whose architecture, MFCC normalisation and weights the student starts from.
        corpus_manifest: the speech corpus manifest ("" = none); corpus_cache: its cache ("" = the default).
        max_corpus_files: use only the first N manifest rows (0 = all; for quick runs and tests).
        data_dir, shared_splits: `../shared/data` clips whose audio joins the distillation set (never "test").
        teacher_cache: teacher feature cache ("" = ~/.cache/msync/teacher).
        val_every_nth_pack: every n-th corpus pack is held out for the validation loss (0 = none).
        seq_len: target frames per window; batch_size: windows per step.
        lr_encoder, lr_head: Adam learning rates of the audio encoder and of the head.
        cosine_weight: weight of (1 - cosine) beside the MSE on standardised teacher features.
        target_shift_frames: the head at column t + L predicts the teacher's frame t - s (s > 0 delays the
            student's features against the teacher's; stored with the head, `msync train` uses the same).
        init_head_from: a distillation head to start from ("" = a new one; e.g. to continue a run with a shift).
        lookahead_frames: the student's look-ahead L (the head reads column t + L); -1 = `init_from`'s. The
            architecture is the same for every L, so any generator checkpoint can start any L.
        reinit_encoder_seed: >= 0 draws the audio encoder (`audio_stem`, `blocks`) anew from this seed (PyTorch's
            default initialisation), keeping `init_from`'s MFCC statistics: a from-scratch student, the same draw
            for every L (the look-ahead study, `training/configs/distill_lookahead_L*.json`); -1 = keep its weights.
    """

    init_from: str = "training/weights/generator"
    corpus_manifest: str = "training/data/speech_corpus.tsv"
    corpus_cache: str = ""
    max_corpus_files: int = 0
    data_dir: str = "../shared/data"
    shared_splits: tuple[str, ...] = ("train", "val")
    split: SplitConfig = SplitConfig()
    clips: ClipLoadConfig = ClipLoadConfig()
    teacher_cache: str = ""
    augment: ChannelAugmentConfig = ChannelAugmentConfig()
    val_every_nth_pack: int = 20
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 3000
    lr_encoder: float = 3e-4
    lr_head: float = 1e-3
    cosine_weight: float = 0.5
    target_shift_frames: int = 0
    init_head_from: str = ""
    lookahead_frames: int = -1
    reinit_encoder_seed: int = -1
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    log_every: int = 25
    eval_every: int = 250
    checkpoint_every: int = 250

    def __post_init__(self) -> None:
        if "test" in self.shared_splits:
            raise ValueError("shared_splits must not include 'test': its voices must stay unseen")
        if self.seq_len < 1 or self.batch_size < 1:
            raise ValueError("seq_len and batch_size must be >= 1")
        if self.lookahead_frames < -1:
            raise ValueError(f"lookahead_frames must be >= 0 (or -1 = init_from's), got {self.lookahead_frames}")
        if self.reinit_encoder_seed < -1:
            raise ValueError(
                f"reinit_encoder_seed must be >= 0 (or -1 = keep init_from's), got {self.reinit_encoder_seed}"
            )


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training.config_io import add_run_arguments

    add_run_arguments(p, "runs/distill", "--set steps=500 --set max_corpus_files=200")


def run(args: argparse.Namespace) -> int:
    from training.config_io import config_from_args, report_run
    from training.data.speech_corpus import CorpusError

    cfg = config_from_args(TrainDistillConfig, args)
    trainer = DistillTrainer(cfg, Path(args.out))
    return report_run(
        "msync distill",
        lambda: trainer.run(resume=not args.no_resume, progress=not args.no_progress),
        (FileNotFoundError, CorpusError),
    )


def load_tracks(cfg: TrainDistillConfig, progress: bool) -> tuple[list, list, dict]:
    """(train tracks, validation tracks, summary): packed corpus clips and the chosen shared splits' audio."""
    from training.data.distill_windows import pack_clips, teacher_tracks
    from training.teacher import default_cache_dir

    teacher_cache = cfg.teacher_cache or default_cache_dir()
    train: list = []
    val: list = []
    summary: dict = {"corpus_files": 0, "corpus_minutes": 0.0, "shared_minutes": 0.0}
    if cfg.corpus_manifest:
        from training.data.speech_corpus import load_clip, read_manifest

        entries = read_manifest(cfg.corpus_manifest)
        if cfg.max_corpus_files:
            entries = entries[: cfg.max_corpus_files]
        clips = [load_clip(e, cfg.corpus_cache or None) for e in entries]
        packs = pack_clips(clips)
        tracks = teacher_tracks(packs, [f"corpus pack {i}" for i in range(len(packs))], teacher_cache, progress)
        n = cfg.val_every_nth_pack
        for i, t in enumerate(tracks):
            (val if n and i % n == n - 1 else train).append(t)
        summary["corpus_files"] = len(entries)
        summary["corpus_minutes"] = round(sum(len(c) for c in clips) / 16000 / 60, 1)
    if cfg.shared_splits:
        from training.data.clips import load_all
        from training.data.manifest import read_manifest as read_clips
        from training.data.splits import assign_splits

        records = assign_splits(read_clips(cfg.data_dir), cfg.split)
        segs = [s for name in cfg.shared_splits for s in load_all(records.get(name, []), cfg.clips, progress=progress)]
        train += teacher_tracks(
            [s.audio for s in segs], [f"shared {i}" for i in range(len(segs))], teacher_cache, progress
        )
        summary["shared_minutes"] = round(sum(len(s.audio) for s in segs) / 16000 / 60, 1)
    return train, val, summary


def student_generator(G, lookahead_frames: int = -1, reinit_seed: int = -1):
    """The student: `G` with look-ahead `lookahead_frames` (-1 = G's) and, for `reinit_seed` >= 0, its audio
    encoder (`audio_stem`, every `blocks` layer) drawn anew from that seed; the MFCC statistics and every other
    weight are G's. Returns G itself when nothing changes, else a new generator on G's device."""
    import torch

    from training.models.generator import Generator

    if (lookahead_frames < 0 or lookahead_frames == G.cfg.lookahead_frames) and reinit_seed < 0:
        return G
    L = G.cfg.lookahead_frames if lookahead_frames < 0 else int(lookahead_frames)
    new = Generator(dataclasses.replace(G.cfg, lookahead_frames=L)).to(G.mfcc_mean.device)
    new.load_state_dict(G.state_dict())
    if reinit_seed >= 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(reinit_seed))
            new.audio_stem.reset_parameters()
            for block in new.blocks:
                for layer in block.modules():
                    reset = getattr(layer, "reset_parameters", None)
                    if layer is not block and callable(reset):
                        reset()
    return new.train(G.training)


class DistillTrainer(Trainer):
    """Student (generator audio encoder) + head, one distillation step; the loop is `Trainer`'s."""

    desc, unit, rate_key = "distill", "step", "steps_per_s"

    def setup(self, progress: bool) -> None:
        import numpy as np
        import torch

        from training.data.distill_windows import DistillWindows
        from training.models.distill_head import DistillHead
        from training.models.generator import load_generator

        cfg = self.cfg
        self.G, self.init_meta = load_generator(cfg.init_from, self.ctx.device)
        self.G = student_generator(self.G, cfg.lookahead_frames, cfg.reinit_encoder_seed)
        self.G.train()
        g = self.G.cfg
        self.warmup = g.receptive_field_frames[-1] - 1
        train, val, self.data_summary = load_tracks(cfg, progress and self.ctx.is_main)
        shift = cfg.target_shift_frames
        self.sampler = DistillWindows(train, cfg.seq_len, g.lookahead_frames, self.warmup, g.frontend, shift)
        self.val_sampler = (
            DistillWindows(val, cfg.seq_len, g.lookahead_frames, self.warmup, g.frontend, shift) if val else None
        )
        allt = np.concatenate([t.teacher for t in train])
        self.head = DistillHead(len(g.level_dilations) * g.audio_channels, allt.shape[1]).to(self.ctx.device)
        self.head.set_teacher_statistics(allt)
        if cfg.init_head_from:
            from training.models.distill_head import load_distill_head

            self.head.load_state_dict(load_distill_head(cfg.init_head_from, self.ctx.device).state_dict())
        self.data_summary["train_frames"] = int(len(allt))
        for p in self.G.parameters():
            p.requires_grad_(False)
        self.encoder_params = [*self.G.audio_stem.parameters(), *self.G.blocks.parameters()]
        for p in self.encoder_params:
            p.requires_grad_(True)
        self.opt = torch.optim.Adam(
            [
                {"params": self.encoder_params, "lr": cfg.lr_encoder},
                {"params": self.head.parameters(), "lr": cfg.lr_head},
            ]
        )
        self.checkpointed = [
            Checkpointed("checkpoint", self.G, self.opt, self.generator_meta),
            Checkpointed("distill_head", self.head, None, self.head_meta),
        ]
        self.add_callback("on_checkpoint", lambda t: plot_distill_curves(t.metrics_path, t.out_dir / "curves.png"))

    def predict(self, audio, valid):
        """Degraded window audio (B, S) and valid (B, W + T + L) -> head predictions (B, T, D)."""
        import torch

        from training.models.distill_head import level_columns

        with torch.no_grad():
            mfcc = self.G.mfcc(audio)
        levels = self.G.audio_levels(mfcc, valid)
        return self.head(level_columns(levels, self.warmup + self.G.cfg.lookahead_frames, self.cfg.seq_len))

    def loss(self, batch):
        import torch

        from training.models.distill_head import distill_loss

        dev = self.ctx.device
        pred = self.predict(torch.from_numpy(batch.audio).to(dev), torch.from_numpy(batch.valid).to(dev))
        target = self.head.standardise(torch.from_numpy(batch.teacher).to(dev))
        return distill_loss(pred, target, self.cfg.cosine_weight)

    def train_step(self, rng) -> dict[str, float]:
        import torch

        cfg = self.cfg
        loss, rec = self.loss(self.sampler.sample(cfg.batch_size, rng, cfg.augment))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*self.encoder_params, *self.head.parameters()], cfg.grad_clip)
        self.opt.step()
        return {"loss": float(loss.detach()), **rec}

    def validate(self) -> dict | None:
        """Distillation loss on held-out corpus packs, clean and degraded (fixed draws)."""
        import torch

        if self.val_sampler is None:
            return None
        self.G.eval()
        out = {}
        with torch.no_grad():
            for name, aug in (("clean", None), ("degraded", self.cfg.augment)):
                _, rec = self.loss(self.val_sampler.fixed(32, augment=aug))
                out.update({f"{k}_{name}": v for k, v in rec.items()})
        self.G.train()
        return out

    def postfix(self, record: dict) -> dict[str, str]:
        return {"mse": f"{record['distill_mse']:.3f}", "cos": f"{record['distill_cos']:.3f}"}

    def generator_meta(self, step: int) -> dict:
        meta = {k: v for k, v in self.init_meta.items() if k not in ("step", "config")}
        return {
            **meta,
            "kind": "generator",
            "step": step,
            "generator": self.G.cfg,
            "distilled_from": {"init_from": self.cfg.init_from, "config": self.cfg, "data": self.data_summary},
        }

    def head_meta(self, step: int) -> dict:
        return {
            "kind": "distill_head",
            "step": step,
            "in_dim": self.head.proj.in_features,
            "teacher_dim": self.head.proj.out_features,
            "target_shift_frames": self.cfg.target_shift_frames,
            "teacher": "whisper-tiny.en encoder (training.teacher)",
        }

    def finish(self, rate: float | None) -> dict:
        from training.checkpoint import save_module

        save_module(self.out_dir / "generator", self.G, self.generator_meta(self.step))
        save_module(self.out_dir / "distill_head", self.head, self.head_meta(self.step))
        return {"steps": self.step, "steps_per_s": rate, "data": self.data_summary, "val": self.validate()}


def plot_distill_curves(metrics_path: Path, png_path: Path) -> None:
    """Train and validation MSE / cosine against steps."""
    recs = read_records(metrics_path)
    tr = [r for r in recs if r.get("split") == "train"]
    va = [r for r in recs if r.get("split") == "val"]
    fig, axes = curves.panels(2, 10)
    for i, key in enumerate(("distill_mse", "distill_cos")):
        axes[i].plot([r["step"] for r in tr], [r[key] for r in tr], label="train (degraded)")
        for name in ("clean", "degraded"):
            k = f"{key}_{name}"
            if va and k in va[-1]:
                axes[i].plot([r["step"] for r in va], [r[k] for r in va], "o--", label=f"val {name}")
    curves.save(fig, axes, ("MSE (standardised teacher)", "cosine"), "step", png_path)


if __name__ == "__main__":
    sys.exit(command_main(__doc__, add_arguments, run))
