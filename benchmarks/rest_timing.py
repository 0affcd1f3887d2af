"""Time to rest on the evaluation's non-speech set, split by layout (the `msync eval` column pools both).

    python -m benchmarks.rest_timing --model 0.2.0=training/weights/generator --model 0.3=runs/generator_v03

`msync eval` reports one time-to-rest median over the "appended" and "inserted" streams of
`training.eval.rest`. In an inserted stream the non-speech segment ends where speech resumes, so a model with
look-ahead L opens its mouth in the segment's last L frames and the stream counts as never at rest. This
script scores the same streams (same stimuli, reference faces and noise seeds as `msync eval`'s defaults)
per layout, and for inserted streams also with the last L frames of the segment left out.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from training.eval import rest
    from training.eval.generation import generate, load_model, noise_seed
    from training.eval.quality import EvalConfig, load_inputs
    from training.metrics import viewer as vm

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT")
    p.add_argument("--out", default="", help="optional JSON output")
    args = p.parse_args(argv)
    cfg = EvalConfig()
    inputs = load_inputs(cfg, progress=False)
    stimuli = rest.build(cfg.rest, inputs.segs_by_clip, inputs.pcm)
    n = stimuli[0].num_frames
    result = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        m = load_model(name, path, "cpu")
        ys = generate(
            m,
            [st.pcm for st in stimuli],
            [0] * len(stimuli),
            np.stack([st.reference for st in stimuli]),
            [noise_seed(cfg.seed, st.key) for st in stimuli],
            n,
            "cpu",
            cfg.batch_size,
            None,
        )
        rows: dict[str, list[float]] = {}
        for st, y in zip(stimuli, ys):
            gap = vm.lip_gap(y)[st.rest_start : st.rest_end]
            rows.setdefault(st.layout, []).append(vm.time_to_rest(gap))
            if st.layout == "inserted":
                rows.setdefault("inserted, last L frames left out", []).append(vm.time_to_rest(gap[: -m.lookahead]))
        result[name] = {
            k: {
                "median_ms": float(np.median(v)),
                "never": float(np.mean([not math.isfinite(x) for x in v])),
                "within_200ms": float(np.mean([x <= 200 for x in v])),
                "n": len(v),
            }
            for k, v in rows.items()
        }
        for k, v in result[name].items():
            print(
                f"{name:10s} {k:34s} median {v['median_ms']:7.0f} ms  never {v['never']:.0%}  <=200 ms {v['within_200ms']:.0%}  n {v['n']}"
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
