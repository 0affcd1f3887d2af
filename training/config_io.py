"""Loading run configs: a JSON file (optional) plus `--set key.sub=value` overrides, into frozen dataclasses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from training.checkpoint import _to_jsonable, dataclass_from_dict


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    """Defaults of `cls`, updated by the JSON file at `path`, then by `key.sub=value` overrides."""
    data = _to_jsonable(cls())
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        loaded = json.loads(path.read_text())
        loaded.pop("_comment", None)  # presets explain themselves
        _merge(data, loaded, str(path))
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ValueError(f"unknown setting {key!r}")
            node = node[p]
        if parts[-1] not in node:
            raise ValueError(f"unknown setting {key!r}")
        node[parts[-1]] = _parse_value(value)
    return dataclass_from_dict(cls, data)


def _merge(base: dict, new: dict, where: str) -> None:
    for k, v in new.items():
        if k not in base:
            raise ValueError(f"{where}: unknown setting {k!r}")
        if isinstance(base[k], dict) and isinstance(v, dict):
            _merge(base[k], v, where)
        else:
            base[k] = v


def dump_config(cfg, path: str | Path) -> None:
    Path(path).write_text(json.dumps(_to_jsonable(cfg), indent=2))


def config_dict(cfg) -> dict:
    return _to_jsonable(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def add_run_arguments(p, default_out: str, example_override: str) -> None:
    """The flags every training run shares: --config, --out, --set, --no-resume, --no-progress."""
    p.add_argument("--config", help="JSON config file (see training/configs/)")
    p.add_argument("--out", default=default_out, help="output directory (checkpoints, metrics, curves)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, e.g. {example_override}")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT holds a checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
