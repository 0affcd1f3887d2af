"""Run metrics as JSON lines (`OUT/metrics.jsonl`): one record per log or validation event."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON record as a line."""
    with Path(path).open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a metrics file (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def mean_record(records: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean over the records that have the key, for the keys of the last record."""
    import numpy as np

    return {k: float(np.mean([r[k] for r in records if k in r])) for k in records[-1]}
