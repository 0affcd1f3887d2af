"""The native C++ runtime (stream_engine/native): configure, build and run its ctest suite.

The ctest suite checks the C++ runtime against the Python runtime on a real speech clip (<= 1e-4; in practice
bit-identical), its seeded start state, the WAV/raw/stdin inputs, CSV and float32 outputs, and the clear errors
for missing/corrupt models, contract mismatches and unusable audio. This wrapper builds into `build/` (or
$MSYNC_NATIVE_BUILD_DIR), incrementally, with the Python running pytest, and hands ctest the session's shared
exported model so nothing is exported twice.

It skips, with the reason, when cmake, a C++ compiler or the ONNX Runtime headers (`bash .ci/fetch_ort_headers`)
are missing; set MSYNC_REQUIRE_NATIVE=1 (CI) to make that a failure instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx")  # the error tests edit model metadata with it
pytest.importorskip("torch")  # the shared exported model

from export_helpers import exported_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HEADERS = REPO / "third_party" / "ortdev" / "usr" / "include" / "onnxruntime" / "onnxruntime_cxx_api.h"
CTESTS = (
    "native_unit_tests",
    "cli_help",
    "native_reference",
    "parity_wav_s16_seed",
    "parity_raw_f32_stdin_face",
    "parity_wav_f32_initial_state",
    "parity_raw_s16_file_csv",
    "parity_tail_counts",
    "errors",
    "bench_mode",
)


def _missing_prerequisite() -> str | None:
    if shutil.which("cmake") is None:
        return "cmake not found (apt-get install cmake)"
    if shutil.which("ctest") is None:
        return "ctest not found (it ships with cmake)"
    if not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
        return "no C++ compiler found (apt-get install g++)"
    include = os.environ.get("ORT_INCLUDE_DIR")
    if include:
        if not (Path(include) / "onnxruntime_cxx_api.h").is_file():
            return f"ORT_INCLUDE_DIR={include} has no onnxruntime_cxx_api.h"
    elif not HEADERS.is_file():
        return f"ONNX Runtime headers not found at {HEADERS.parent}: run `bash .ci/fetch_ort_headers`"
    return None


def _run(cmd: list[str], env: dict, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.slow
def test_cpp_runtime_builds_and_passes_ctest(tmp_path_factory):
    """cmake configures and builds msync_runtime + msync_stream, and every ctest passes (C++ == Python runtime)."""
    reason = _missing_prerequisite()
    if reason:
        if os.environ.get("MSYNC_REQUIRE_NATIVE") == "1":
            pytest.fail(f"MSYNC_REQUIRE_NATIVE=1 but {reason}")
        pytest.skip(reason)
    model, _, _ = exported_model(tmp_path_factory)
    build = Path(os.environ.get("MSYNC_NATIVE_BUILD_DIR", REPO / "build"))
    env = dict(os.environ, MSYNC_TEST_MODEL=str(model))
    configure = [
        "cmake",
        "-S",
        str(REPO),
        "-B",
        str(build),
        f"-DPython3_EXECUTABLE={sys.executable}",
        "-DMSYNC_BUILD_TESTS=ON",
        "-DMSYNC_BUILD_CLI=ON",
    ]
    if os.environ.get("ORT_INCLUDE_DIR"):
        configure.append(f"-DORT_INCLUDE_DIR={os.environ['ORT_INCLUDE_DIR']}")
    for cmd, timeout_s in ((configure, 300), (["cmake", "--build", str(build), "-j2"], 900)):
        proc = _run(cmd, env, timeout_s)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    proc = _run(["ctest", "--test-dir", str(build), "--output-on-failure"], env, 900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"ctest failed:\n{out[-8000:]}"
    assert "100% tests passed" in out, out[-4000:]
    passed = set(re.findall(r"Test\s+#\d+: (\S+) \.+\s+Passed", out))
    assert passed >= set(CTESTS), f"ctests that did not run or pass: {sorted(set(CTESTS) - passed)}\n{out[-4000:]}"
