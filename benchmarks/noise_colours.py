"""The raw mouth in steady noise of every colour: white (full band, microphone hiss), white low-passed at 7 and
2 kHz, and pink, at -48 and -36 dBFS, 6 s each, one fresh stream per sound (`training.eval.generation.stream_rollout`,
the exported step's result) from each model's own reference face.

    python -m benchmarks.noise_colours --model 0.3.0=OLD --model 0.3.2=training/weights/generator --out DIR

The evaluation's non-speech set (`training.eval.rest`) holds noise low-passed at 2 kHz only; this adds the colours
a microphone brings. Reports the inner-lip gap (IOD, `training.metrics.viewer.lip_gap`) p50 / p90 after the first
200 ms; a mouth at rest sits near 0.01-0.03 IOD. Writes noise_colours.json and .md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SR, SPF, SECONDS, LEVELS = 16000, 640, 6.0, (-48.0, -36.0)


def sounds(seed: int = 11) -> dict[str, np.ndarray]:
    from training.data.nonspeech import shape_spectrum

    w = np.random.default_rng(seed).standard_normal(int(SECONDS * SR))
    return {
        "white": w,
        "white < 7 kHz": shape_spectrum(w, lambda f: (f <= 7000).astype(float)),
        "white < 2 kHz": shape_spectrum(w, lambda f: (f <= 2000).astype(float)),
        "pink": shape_spectrum(w, lambda f: 1.0 / np.sqrt(np.maximum(f, 20.0))),
    }


def measure(name: str, path: str) -> dict:
    from training.data.nonspeech import scale_to_dbfs
    from training.eval.generation import load_model, stream_rollout
    from training.metrics import viewer as vm

    m = load_model(name, path, "cpu")
    ref = np.asarray(m.meta["reference_face"], np.float32)
    out = {}
    for kind, x in sounds().items():
        for db in LEVELS:
            pcm = scale_to_dbfs(x, db).astype(np.float32)
            gap = vm.lip_gap(stream_rollout(m, pcm, ref, 7, len(pcm) // SPF, "cpu"))[5:]
            out[f"{kind} @ {db:g} dBFS"] = {"p50": float(np.median(gap)), "p90": float(np.percentile(gap, 90))}
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import machine_info, write_report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT")
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args(argv)
    rows = {n: measure(n, path) for n, path in (s.split("=", 1) for s in a.model)}
    cols = list(next(iter(rows.values())))
    md = [
        "# The raw mouth in steady noise of every colour (inner-lip gap / IOD, p50 / p90)",
        "",
        f"`python -m benchmarks.noise_colours {' '.join('--model ' + s for s in a.model)}`; "
        f"machine {machine_info().get('cpu')}. 6 s of each sound alone, from each model's reference face.",
        "",
        "| model | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    md += [
        f"| {n} | " + " | ".join(f"{r[c]['p50']:.3f} / {r[c]['p90']:.3f}" for c in cols) + " |" for n, r in rows.items()
    ]
    write_report(Path(a.out), "noise_colours", {"models": rows}, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
