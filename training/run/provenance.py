"""What a run was: its resolved config (`OUT/config.json`) and the code and command it ran with
(`OUT/run_info.json`), written beside its outputs. A resumed run keeps both honest: config.json is the config
the latest invocation ran with, and run_info.json lists every invocation (`invocations`, oldest first) with the
config keys it changed."""

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


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """Dotted key -> [old, new] for every setting that differs between two config dicts (nested)."""
    out: dict[str, list[Any]] = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(config_changes(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = [a, b]
    return out


def write_run_info(
    out_dir: Path, start_step: int, world: int, device: str, changed: dict[str, list[Any]] | None = None
) -> None:
    """Append this invocation to `OUT/run_info.json` (`invocations`: git commit, command line, time, world size,
    device, the step started from, and on a resume the config keys changed since the previous invocation)."""
    path = out_dir / "run_info.json"
    info = {
        "git_commit": git_commit(),
        "argv": sys.argv,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "start_step": start_step,
        "world_size": world,
        "device": device,
        "config_changed": changed or {},
    }
    history: list[Any] = []
    if start_step and path.is_file():
        try:
            old = json.loads(path.read_text())
            history = list(old.get("invocations", [old]))  # an older single-record file becomes the first entry
        except (OSError, ValueError):
            history = []
    path.write_text(json.dumps({"invocations": [*history, info]}, indent=2))
