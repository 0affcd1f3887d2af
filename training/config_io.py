"""Every dataclass-configured command takes `--config FILE` (JSON or TOML) plus `--set key.sub=value` overrides;
this module declares those flags and turns them into the config (the rules are `stream_engine.dataclass_io`'s)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from typing import Any, TypeVar

from stream_engine.dataclass_io import load_config

T = TypeVar("T")


def add_config_arguments(p: argparse.ArgumentParser, example_override: str, what: str = "JSON config file") -> None:
    """--config FILE and --set KEY=VALUE (repeatable)."""
    p.add_argument("--config", help=what)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value (dotted keys, JSON values), e.g. {example_override}",
    )


def add_run_arguments(p: argparse.ArgumentParser, default_out: str, example_override: str) -> None:
    """The flags every training run shares: --config, --out, --set, --no-resume, --no-progress."""
    add_config_arguments(
        p, example_override, "JSON or TOML config file (see training/configs/; without it, the defaults)"
    )
    p.add_argument(
        "--out", default=default_out, help="output directory (checkpoints, metrics, curves; default: %(default)s)"
    )
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT holds a checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(
    cls: type[T], args: argparse.Namespace, base: T | None = None, extra: list[str] | tuple[str, ...] = ()
) -> T:
    """`base` (default `cls()`), then `args.config`, then `extra` overrides (from dedicated flags), then
    `args.overrides` (--set wins)."""
    overrides: list[Any] = [*extra, *getattr(args, "overrides", [])]
    return load_config(cls, getattr(args, "config", None), overrides, base=base)


def report_run(command: str, train: Callable[[], dict], errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a training command and print its result as JSON (exit status 0). Errors a user can fix (a device that
    is not there, and the command's `errors`: missing data, checkpoints...) are one line on stderr, exit 1, no
    traceback."""
    import sys

    from training.run.context import DeviceUnavailable
    from training.run.trainer import ResumeError, TrainingDataError

    expected: tuple[type[BaseException], ...] = (DeviceUnavailable, ResumeError, TrainingDataError, *errors)
    try:
        result = train()
    except expected as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


@dataclasses.dataclass(frozen=True)
class Flag:
    """A convenience flag that sets one config key: `--flag V` is `--set key=V` (an explicit --set wins)."""

    flag: str
    key: str
    type: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None


def add_flags(p: argparse.ArgumentParser, flags: tuple[Flag, ...]) -> None:
    """Declare the convenience flags (default None: unset flags leave the config alone)."""
    for f in flags:
        p.add_argument(
            f.flag,
            dest=_dest(f),
            type=f.type,
            metavar=None if f.choices else f.key.split(".")[-1].upper(),
            default=None,
            choices=f.choices,
            help=f"{f.help} (config key {f.key})",
        )


def flag_overrides(args: argparse.Namespace, flags: tuple[Flag, ...]) -> list[str]:
    """`key=JSON` overrides for the convenience flags that were given."""
    return [f"{f.key}={json.dumps(getattr(args, _dest(f)))}" for f in flags if getattr(args, _dest(f)) is not None]


def _dest(f: Flag) -> str:
    return "flag_" + f.flag.lstrip("-").replace("-", "_")


def command_main(
    doc: str | None, add_arguments: Callable[[argparse.ArgumentParser], None], run: Callable[[argparse.Namespace], int]
) -> int:
    """`python -m MODULE ...` for a command module (what torchrun starts): parse with its flags, then run."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args())
