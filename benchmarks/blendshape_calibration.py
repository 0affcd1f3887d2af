"""Calibrate the ARKit blendshape spans (`stream_engine.blendshapes.SPANS`) on the real speakers of ../shared/data.

    python -m benchmarks.blendshape_calibration [--data ../shared/data] [--out benchmarks/results]

Per clip: the neutral face is the frame with the smallest inner-lip gap among frames whose mouth width is within
10 % of the clip's median width (closed, not smiling or puckering); each feature's deviation from it is taken on
every frame with landmarks (NaN rows skipped). A span is the 95th percentile, over all frames of all clips, of
the deviation in its direction ("+" = increase). Writes blendshape_calibration.{json,md}, and compares the
result with the constants in `SPANS`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, write_report
from stream_engine.blendshapes import FEATURES, SPANS, face_features


def clip_deviations(lm: np.ndarray) -> np.ndarray | None:
    lm = lm[np.all(np.isfinite(lm), axis=(1, 2))]
    if len(lm) < 10:
        return None
    f = face_features(lm)
    width = f[:, FEATURES.index("width")]
    ok = np.abs(width - np.median(width)) <= 0.1 * np.median(width)
    gap = np.where(ok, f[:, FEATURES.index("gap")], np.inf)
    return f - f[int(np.argmin(gap))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    devs = []
    files = sorted(Path(a.data, "clips").glob("*.lm68.npy"))
    for path in files:
        d = clip_deviations(np.load(path))
        if d is not None:
            devs.append(d)
    dev = np.concatenate(devs)
    spans = {}
    for key in SPANS:
        sign = 1.0 if key.endswith("+") else -1.0
        x = sign * dev[:, FEATURES.index(key[:-1])]
        spans[key] = float(np.percentile(np.clip(x, 0.0, None), 95))
    result = {
        "clips": len(devs),
        "frames": int(len(dev)),
        "spans": spans,
        "constants": dict(SPANS),
        "machine": machine_info(),
    }
    rows = "\n".join(f"| {k} | {v:.3f} | {SPANS[k]:.3f} |" for k, v in spans.items())
    md = (
        f"# ARKit blendshape spans on real speakers\n\n{len(devs)} clips, {len(dev)} frames of `{a.data}`; "
        "95th percentile of each feature's deviation from the clip's neutral face (inter-ocular units).\n\n"
        "| feature | measured | in SPANS |\n|---|---|---|\n" + rows + "\n"
    )
    write_report(a.out, "blendshape_calibration", result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
