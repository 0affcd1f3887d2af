"""Build a metric pyramid with composite levels (`SyncerConfig.composite_levels`) from a trained one.

    python -m training.compose_syncers --source training/weights/metric_syncers_v3 --levels 2 3 \
        --out training/weights/metric_syncers_v4                                   # metric syncers v4

Nothing is trained: the source's weights and input statistics are copied, the composite levels' own encoders are
dropped, and those levels score with level 0's encoders over the sub-windows that tile their span. The output
keeps the source's precision (half for the shipped weights) and records where it came from in its JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.config_io import command_main


def compose(source: str | Path, levels: tuple[int, ...], out: str | Path) -> dict:
    """Write `out.{safetensors,json}`: the pyramid at `source` (path without suffix) with `levels` composite.

    Returns:
        the written JSON meta.
    Raises:
        FileNotFoundError / ValueError: no syncer checkpoint at `source`, or a level that cannot be composite.
    """
    import torch

    from training.checkpoint import load_meta, save_module
    from training.models.syncer import load_pyramid, with_composite_levels

    src = load_pyramid(source)
    meta = load_meta(source)
    pyr = with_composite_levels(src, levels)
    half = any(t.dtype == torch.float16 for t in _stored_tensors(source))
    out_meta = {
        **meta,
        "syncer": pyr.cfg,
        "composed_from": {"source": str(source), "source_step": meta.get("step"), "composite_levels": list(levels)},
    }
    save_module(out, pyr, out_meta, dtype=torch.float16 if half else None)
    return load_meta(out)


def _stored_tensors(path: str | Path):
    from safetensors.torch import load_file

    return load_file(str(Path(path).with_suffix(".safetensors"))).values()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="syncer checkpoint path without suffix")
    p.add_argument("--levels", type=int, nargs="+", required=True, help="levels to make composite (not 0)")
    p.add_argument("--out", required=True, help="output path without suffix")


def run(args: argparse.Namespace) -> int:
    meta = compose(args.source, tuple(args.levels), args.out)
    print(f"wrote {args.out}.{{safetensors,json}}: composite levels {meta['syncer']['composite_levels']}")
    return 0


if __name__ == "__main__":
    sys.exit(command_main(__doc__, add_arguments, run))
