"""The `msync` command. It only parses arguments and calls; the work lives in the modules it names.

Subcommands are registered through the entry-point group "msync.commands" (pyproject.toml,
`[project.entry-points."msync.commands"]`): each entry maps a command name to a module that exposes
`add_arguments(parser)` and `run(args) -> int`, an optional `HELP` string (else the first line of its docstring),
and keeps its top-level imports light (no torch at import time), so `msync --help` stays fast. A command whose
module cannot be imported (its extra is not installed) stays listed and explains itself when run.

To add a command: write the module, add `NAME = "package.module"` to that table, and reinstall
(`pip install -e .`) so the entry point is registered. `RUNTIME_COMMANDS` below is the fallback for a source
tree that is not installed (and the place where a runtime command may be listed before it gets its entry point).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from stream_engine.dataclass_io import ConfigError

ENTRY_POINT_GROUP = "msync.commands"

# name -> (module, help) of the runtime's own commands; used when the entry points do not list them.
RUNTIME_COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("stream_engine.info", "Print the step contract of an exported model (`msync info MODEL [--json]`)."),
    "stream": ("stream_engine.stream", "Run the real-time engine: speech in, landmarks out over WebSocket/OSC/VMC."),
    "animate": (
        "stream_engine.animate_cli",
        "Whole audio files to animations (landmarks, signals, ARKit "
        "blendshapes; json/csv/npz; --video for an MP4 preview).",
    ),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `msync` parser with every subcommand, or (`only`) with that one alone.

    `main` passes `only` when the command line names a command, so running one command imports one command
    module: `msync stream` must not load what `msync train` imports (torch, ~100 MB of a server's memory).
    """
    parser = argparse.ArgumentParser(
        prog="msync",
        description="msync: live speech to 68-point facial landmarks (MS-Sync, causal and streamable).",
    )
    parser.add_argument("--version", action="version", version=f"msync {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in commands().items():
        if only is None or name == only:
            _add(sub, name, module, help_text)
    return parser


def commands() -> dict[str, tuple[str, str]]:
    """name -> (module, help override or "") of every subcommand: the "msync.commands" entry points, plus the
    runtime commands they do not list."""
    from importlib.metadata import entry_points

    found = {ep.name: (ep.value, "") for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**RUNTIME_COMMANDS, **{k: v for k, v in found.items() if k not in RUNTIME_COMMANDS}}


def _help(mod: object, override: str) -> str:
    if override:
        return override
    text = getattr(mod, "HELP", None) or (getattr(mod, "__doc__", None) or "").strip().split("\n")[0]
    return str(text)


def _add(sub: Any, name: str, module: str, help_text: str) -> argparse.ArgumentParser:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        # A command whose optional dependencies are missing stays listed and explains itself when run,
        # instead of breaking every other command.
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=f"{help_text or name} [unavailable: {exc}]", description=help_text or name
        )
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(_module=None, _unavailable=f"{exc}")
        return p
    help_text = _help(mod, help_text)
    p = sub.add_parser(name, help=help_text, description=help_text)  # the same variable, typed above
    mod.add_arguments(p)
    p.set_defaults(_module=module)
    return p


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("msync")
    except Exception:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = argv[0] if argv and argv[0] in commands() else None
    parser = build_parser(only=chosen)
    args = parser.parse_args(argv)
    if getattr(args, "_unavailable", None):
        print(
            f"msync {args.command}: unavailable here: {args._unavailable}. "
            "Install the extras: pip install 'msync[train,export]'",
            file=sys.stderr,
        )
        return 1
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        code = int(importlib.import_module(args._module).run(args) or 0)
        sys.stdout.flush()  # inside the try: a reader that went away is seen here, not at interpreter exit
        return code
    except BrokenPipeError:  # `msync info M | head`: the reader closed the pipe; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ConfigError as exc:  # a bad --config file or --set value, in any command: say which, no traceback
        print(f"msync {args.command}: bad configuration: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(
            f"msync {args.command}: missing dependency: {exc}. Install the extra: pip install 'msync[train]'",
            file=sys.stderr,
        )
        return 1
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        # an --out (or input) path of the wrong kind, in any command: which path, no traceback
        print(f"msync {args.command}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
