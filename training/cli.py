"""Registers the training-side `msync` subcommands. Imports nothing heavy: handlers load torch when run."""

from __future__ import annotations

# (name, module, help). Each module exposes add_arguments(parser) and run(args) and keeps top-level imports
# light (no torch at import time) so that `msync --help` stays fast.
COMMANDS = (
    ("data", "training.data.prepare", "Prepare a dataset: `msync data prepare VIDEOS... --out DIR`."),
    ("train-syncers", "training.train_syncers", "Train the syncer pyramid (InfoNCE) or the metric syncers (SyncNet loss)."),
    ("train", "training.train_generator", "Train the causal generator (GAN + multi-scale sync loss): "
                                          "`msync train --config training/configs/generator.json --out runs/generator`."),
    ("eval-sync", "training.eval_sync", "Multi-scale AV offset/confidence, LMD and motion statistics (paper Table 3)."),
    ("eval", "training.evaluate", "Quality report: generate from held-out speech, score every method (sync at four "
                                  "scales, LMD, motion, FD-motion, plausibility, drift): "
                                  "`msync eval --model ours=CKPT --out runs/eval`."),
    ("export", "export.cli", "Export the generator step to ONNX (+ TensorRT engines, Triton repository): "
                             "`msync export --checkpoint CKPT --out model.onnx`."),
)


def register(sub, add) -> None:
    for name, module, help_text in COMMANDS:
        add(sub, name, module, help_text)
