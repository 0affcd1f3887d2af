"""benchmarks/core_passes.py runs both paths of the core's passes and writes its table."""

from __future__ import annotations

import json

import pytest

from benchmarks import core_passes
from stream_engine import core_kernel


@pytest.mark.skipif(core_kernel.load() is None, reason="numba is not installed (or MSYNC_NO_NUMBA=1)")
def test_quick_run_times_both_paths(tmp_path):
    assert core_passes.main(["--out", str(tmp_path), "--streams", "64", "--rounds", "1", "--feed-rounds", "10"]) == 0
    result = json.loads((tmp_path / "core_passes.json").read_text())
    for path in ("numpy", "compiled"):
        assert all(result["paths"][path][k] > 0 for k in core_passes.STAGES)
    assert "| all three |" in (tmp_path / "core_passes.md").read_text()
