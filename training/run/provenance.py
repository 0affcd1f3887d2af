"""What a run was: its resolved config (`OUT/config.json`) and the code and command it ran with
(`OUT/run_info.json`), written beside its outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from stream_engine.dataclass_io import to_dict


def git_commit(where: str | Path | None = None) -> str:
    """The checkout's commit (with "-dirty" for uncommitted changes), or "" outside git."""
    cwd = Path(where) if where else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=cwd)
        if sha.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5, cwd=cwd
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def dump_config(cfg: Any, path: str | Path) -> None:
    """A config dataclass as indented JSON (what `--config` reads back)."""
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2))


def write_run_info(out_dir: Path, start_step: int, world: int, device: str) -> None:
    """`OUT/run_info.json`: git commit, command line, time, world size, device, and the step started from."""
    info = {
        "git_commit": git_commit(),
        "argv": sys.argv,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "start_step": start_step,
        "world_size": world,
        "device": device,
    }
    (out_dir / "run_info.json").write_text(json.dumps(info, indent=2))
