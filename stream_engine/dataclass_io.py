"""The one converter between frozen config dataclasses and plain JSON/TOML data, used by stream configs,
training configs, checkpoints and the exported contract.

- :func:`to_dict`: a dataclass (nested dataclasses, tuples, mappings, paths) -> JSON-able dicts and lists.
- :func:`from_dict`: the inverse, driven by the field annotations: nested tables become dataclasses, lists become
  tuples at every depth (``tuple[tuple[int, ...], ...]`` included), optionals and unions are honoured, numbers
  are checked; unknown keys are errors that name the key's dotted path. ``from_dict(type(c), to_dict(c)) == c``
  for every config, and the result is hashable when ``c`` is.
- :func:`load_config`: defaults of a class, then a JSON/TOML file, then ``key.sub=value`` overrides.

This module imports only the standard library (the runtime uses it without torch).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or value that cannot be used (the message names the key)."""


def to_dict(obj: Any) -> Any:
    """A config as plain JSON-able data: dataclasses -> dicts, tuples/lists -> lists, paths -> str."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _convert_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _convert_tuple(args: tuple[Any, ...], value: Any, where: str) -> tuple[Any, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
        raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
    return tuple(convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


def _is_pairs(args: tuple[Any, ...]) -> bool:
    """Whether tuple[args] is `tuple[tuple[K, V], ...]` (a hashable map)."""
    if len(args) != 2 or args[1] is not Ellipsis:
        return False
    inner = args[0]
    return (
        typing.get_origin(inner) is tuple
        and len(typing.get_args(inner)) == 2
        and Ellipsis not in typing.get_args(inner)
    )


def _convert_union(args: tuple[Any, ...], value: Any, where: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for option in (a for a in args if a is not type(None)):
        try:
            return convert(option, value, where)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {errors}")


def convert(tp: Any, value: Any, where: str) -> Any:
    """Convert JSON/TOML `value` to the annotated type `tp` (dataclasses, tuples, unions, mappings, scalars).

    Raises:
        ConfigError: the value does not fit; the message starts with `where` (the dotted key).
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table/object, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(args, value, where)
    if origin is tuple or tp is tuple:
        if _is_pairs(args):  # a tuple of (key, value) pairs is written as a table, or as a preset name
            if isinstance(value, str):  # such as vmc.blend_names = "vrm1": the class resolves it
                return value
            if isinstance(value, Mapping):
                value = list(value.items())
        return _convert_tuple(args, value, where)
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if isinstance(value, str):  # a preset name, which the class resolves
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table/object, got {value!r}")
        return dict(value)
    if tp is Path:
        return Path(value)
    return _convert_scalar(tp, value, where)


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Instantiate dataclass `cls` from a mapping (missing keys keep their defaults).

    Raises:
        ConfigError: unknown keys (named with their dotted path), values of the wrong type, or a value the
            class's own validation rejects.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - fields)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]}; known: {sorted(fields)}")
    kwargs = {k: convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def read_data(path: str | Path) -> dict[str, Any]:
    """A JSON (.json) or TOML (.toml) file as a dict; a top-level `_comment` key is dropped (presets explain
    themselves).

    Raises:
        ConfigError: missing, unreadable or malformed file, or not a table/object at the top.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
    try:
        if kind == "TOML":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise ConfigError(f"{path}: not valid {kind} ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table/object")
    data.pop("_comment", None)
    return data


def merge(base: dict[str, Any], new: Mapping[str, Any], where: str = "") -> None:
    """Update the nested dict `base` in place with `new`; keys must already exist in `base`.

    Raises:
        ConfigError: a key of `new` that `base` lacks (named with its dotted path).
    """
    for k, v in new.items():
        key = f"{where}.{k}" if where else k
        if k not in base:
            raise ConfigError(f"unknown setting {key!r}")
        if isinstance(base[k], dict) and isinstance(v, Mapping):
            merge(base[k], v, key)
        else:
            base[k] = v


def parse_override(item: str) -> tuple[str, Any]:
    """ "a.b=VALUE" -> ("a.b", value): VALUE is read as JSON when it parses (numbers, true, lists), else as text.

    Raises:
        ConfigError: no "=".
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value")
    key, text = item.split("=", 1)
    try:
        return key.strip(), json.loads(text)
    except json.JSONDecodeError:
        return key.strip(), text


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> None:
    """Apply `key.sub=value` overrides to the nested dict `data` in place (keys must exist)."""
    for item in overrides:
        key, value = parse_override(item)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"unknown setting {key!r}")
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"unknown setting {key!r}")
        node[parts[-1]] = value


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (), base: T | None = None
) -> T:
    """`base` (default: `cls()`), updated by the JSON/TOML file at `path`, then by `key.sub=value` overrides.

    Raises:
        ConfigError: unknown keys, malformed values or files (FileNotFoundError for a missing file).
    """
    data = to_dict(base if base is not None else cls())
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        try:
            merge(data, read_data(path))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    apply_overrides(data, overrides)
    return from_dict(cls, data)


def replace_path(cfg: T, dotted: str, value: Any) -> T:
    """Return `cfg` with the field at "a.b.c" replaced (flag overrides on top of a file)."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})  # type: ignore[type-var]
    return dataclasses.replace(cfg, **{head: replace_path(getattr(cfg, head), rest, value)})  # type: ignore[type-var]
