"""Shared benchmark helpers: the machine/conditions block and percentile summaries."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from training.run.machine import machine_info

__all__ = ["baseline_tree", "machine_info", "summarise", "write_report"]

REPO = Path(__file__).resolve().parents[1]


def baseline_tree(ref: str) -> Path:
    """`git archive REF stream_engine` unpacked into a new temporary folder (a baseline's engine, to measure
    beside this checkout's in one run). The caller removes it."""
    root = Path(tempfile.mkdtemp(prefix="msync-baseline-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "stream_engine"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root


def summarise(samples_s: list[float] | np.ndarray) -> dict:
    """Seconds -> {n, mean, p50, p90, p95, p99, max} in milliseconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {
        "n": int(a.size),
        "mean_ms": float(a.mean()),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


def write_report(out_dir: str | Path, name: str, result: dict, markdown: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
