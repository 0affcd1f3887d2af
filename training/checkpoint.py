"""Checkpoints as safetensors (weights, optimiser moments) plus JSON (config, counters): no pickle anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from stream_engine.dataclass_io import to_dict


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
    _atomic_write_text(path.with_suffix(".json"), json.dumps(to_dict(meta), indent=2))


def load_meta(path: str | Path) -> dict:
    path = Path(path).with_suffix(".json")
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the current folder {Path.cwd()})"
        raise FileNotFoundError(f"checkpoint {path} not found{where}")
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
