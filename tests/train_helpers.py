"""A tiny `msync train` run for tests: tiny syncers saved once per test, the settings that make a generator run
take seconds, and a runner that returns the logged training records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def tiny_train_settings(tmp_path: Path, seq_len: int = 40) -> dict[str, Any]:
    """`--set` values for a two-iteration run of a 16-wide generator on 30 clips with half of each batch mixed
    with non-speech; tiny syncers are written to tmp_path/sync."""
    from training.checkpoint import save_module
    from training.models.syncer import SyncerConfig, SyncerPyramid

    tiny = SyncerConfig(
        embed_dim=16, audio_widths=(16, 16), audio_depths=(1, 1), landmark_widths=(16,), landmark_depths=(1,)
    )
    save_module(tmp_path / "sync", SyncerPyramid(tiny), {"kind": "syncer_pyramid", "syncer": tiny})
    return {
        "syncers": str(tmp_path / "sync"),
        "max_clips": 30,
        "batch_size": 4,
        "seq_len": seq_len,
        "steps": 2,
        "log_every": 1,
        "eval_every": 2,
        "checkpoint_every": 2,
        "sample_every": 0,
        "threads": 1,
        "rest.fraction": 0.5,
        "generator.audio_channels": 16,
        "generator.landmark_embed": 16,
        "generator.lstm_hidden": 16,
        "generator.branch_hidden": 16,
        "discriminator.embed_dim": 16,
        "discriminator.lstm_hidden": 16,
        "discriminator.projection_hidden": 16,
        "discriminator.windows": [5, 10],
    }


def run_train(settings: dict[str, Any], out: Path) -> list[dict]:
    """`python -m training.train_generator --out OUT --set ...` in a subprocess (raises on failure) -> every
    record of OUT/metrics.jsonl."""
    argv = [sys.executable, "-m", "training.train_generator", "--out", str(out), "--no-progress"]
    for k, v in settings.items():
        argv += ["--set", f"{k}={json.dumps(v)}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(argv, check=True, cwd=REPO, env=env, timeout=600, capture_output=True)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
