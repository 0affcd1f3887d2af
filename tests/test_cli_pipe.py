"""The CLI stops quietly when the reader of its output goes away (`msync info M | head`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[1] / "stream_engine" / "models" / "default.onnx"


@pytest.mark.skipif(not MODEL.is_file(), reason="the shipped default.onnx is not in this checkout")
def test_closed_pipe_gives_no_traceback():
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_engine.cli", "info", str(MODEL)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
