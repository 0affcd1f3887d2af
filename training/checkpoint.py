"""Checkpoints as safetensors (weights, optimiser moments) plus JSON (config, counters): no pickle anywhere."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dataclass_from_dict(cls, data: dict):
    """Build a (possibly nested) frozen dataclass from JSON data; lists become tuples, unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown settings {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        ftype = fields[name].type
        default = getattr(cls, name, None) if not isinstance(getattr(cls, name, None), property) else None
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = dataclass_from_dict(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_module(path: str | Path, module: torch.nn.Module, meta: dict, dtype: torch.dtype | None = None) -> None:
    """Write `path.safetensors` (state dict, buffers included) and `path.json` (meta).

    `dtype=torch.float16` halves the size of released weights; loading copies them into float32 parameters.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".safetensors.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path.with_suffix(".safetensors"))
    _atomic_write_text(path.with_suffix(".json"), json.dumps(_to_jsonable(meta), indent=2))


def load_meta(path: str | Path) -> dict:
    path = Path(path).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing checkpoint metadata")
    return json.loads(path.read_text())


def load_state(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path).with_suffix(".safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing checkpoint weights")
    try:
        return load_file(str(path), device=device)
    except Exception as exc:
        raise ValueError(f"{path}: corrupt checkpoint ({exc})") from exc


def save_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Adam-style optimiser state as tensors (`path.optim.safetensors`) + scalars (`path.optim.json`)."""
    path = Path(path)
    state = optimizer.state_dict()
    tensors, scalars = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, st in state["state"].items():
        scalars["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v) and v.ndim > 0:
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars["state"][str(pid)][k] = float(v)
    tmp = path.with_name(path.name + ".optim.safetensors.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path.with_name(path.name + ".optim.safetensors"))
    _atomic_write_text(path.with_name(path.name + ".optim.json"), json.dumps(scalars))


def load_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    path = Path(path)
    tensors = load_file(str(path.with_name(path.name + ".optim.safetensors")))
    scalars = json.loads(path.with_name(path.name + ".optim.json").read_text())
    state = {}
    for pid, st in scalars["state"].items():
        entry = {k: torch.tensor(v) for k, v in st.items()}
        for key, tensor in tensors.items():
            p, name = key.split(".", 1)
            if p == pid:
                entry[name] = tensor
        state[int(pid)] = entry
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})
