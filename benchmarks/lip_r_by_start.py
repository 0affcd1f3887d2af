"""Lip timing at a stream's start: the inner-lip gap's correlation with ground truth, split by where a sequence
starts and by time into it, read from the predictions an `msync eval` run saved.

    python -m benchmarks.lip_r_by_start --predictions runs/EVAL/predictions [--data ../shared/data] [--out DIR]

`msync eval` generates each test sequence as a fresh stream. A sequence that starts at its clip's first frame
("clip start") has nothing before it (the stream's history is the model's initial state); the others have the
receptive field's worth of real audio before them. The evaluation's lip r joins each clip's sequences, so a
change to the initial state shows there only through the clip-start sequences. This splits it: per method, the
mean over sequences of Pearson's r between the row's gap and ground truth's (`training.metrics.viewer.lip_gap`,
IOD) over the first 1.2 s (30 frames) and over the rest, for clip-start and later sequences. Writes
lip_r_by_start.json and .md to --out (default: beside the predictions).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_info, write_report

FIRST = 30


def split_r(predictions: Path, data: Path) -> dict[str, Any]:
    """{method: {"clip start" | "later": {"first 1.2 s" | "after": {"mean": r, "sequences": n}}}}."""
    from training.metrics import viewer as vm

    out: dict[str, Any] = {}
    for method_dir in sorted(p for p in predictions.iterdir() if p.is_dir()):
        acc: dict[tuple[str, str], list[float]] = {}
        for f in sorted(method_dir.glob("*.npz")):
            z = np.load(f)
            clip, start = str(z["clip_id"]), int(z["start_frame"])
            pred = vm.lip_gap(z["landmarks"])
            gt = vm.lip_gap(np.load(data / "clips" / f"{clip}.lm68.npy")[start : start + len(pred)])
            n = min(len(gt), len(pred))
            for part, sl in (("first 1.2 s", slice(0, FIRST)), ("after", slice(FIRST, n))):
                a, b = gt[sl], pred[sl]
                if len(a) > 5 and a.std() > 0 and b.std() > 0:
                    acc.setdefault(("clip start" if start == 0 else "later", part), []).append(
                        float(np.corrcoef(a, b)[0, 1])
                    )
        out[method_dir.name] = {}
        for (where, part), rs in sorted(acc.items()):
            out[method_dir.name].setdefault(where, {})[part] = {"mean": float(np.mean(rs)), "sequences": len(rs)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--predictions", required=True, help="the predictions/ folder of an msync eval run")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--out", help="where the report goes (default: the predictions' parent)")
    a = p.parse_args(argv)
    pred = Path(a.predictions)
    if not pred.is_dir():
        p.error(f"{pred} is not a folder (give the predictions/ folder of an msync eval run)")
    result: dict[str, Any] = {
        "machine": machine_info(),
        "predictions": str(pred),
        "methods": split_r(pred, Path(a.data)),
    }
    cols = [("clip start", "first 1.2 s"), ("clip start", "after"), ("later", "first 1.2 s"), ("later", "after")]
    md = [
        "# Lip r by where a sequence starts",
        "",
        f"`python -m benchmarks.lip_r_by_start --predictions {pred}` (module docstring): mean over sequences of r(gap, "
        "ground truth's gap).",
        "",
        "| method | " + " | ".join(f"{w}, {part}" for w, part in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for name, m in result["methods"].items():
        cells = []
        for w, part in cols:
            c = m.get(w, {}).get(part)
            cells.append("–" if c is None else f"{c['mean']:.3f} ({c['sequences']})")
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    write_report(a.out or pred.parent, "lip_r_by_start", result, "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
