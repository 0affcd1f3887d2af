"""The `msync` command. It only parses arguments and calls; the work lives in the modules it names.

Runtime subcommands come from `stream_engine`; training, data and evaluation subcommands are registered by
`training.cli` when the `train` extra is installed, so the runtime never depends on torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module exposing `add_arguments(parser)` and `run(args) -> int`; imported lazily and kept light.
RUNTIME_COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("stream_engine.info", "Print the step contract of an exported model (`msync info MODEL [--json]`)."),
    "stream": ("stream_engine.stream", "Run the real-time engine: speech in, landmarks out over WebSocket/OSC/VMC."),
    "animate": ("stream_engine.animate_cli", "Whole audio files to animations (landmarks, signals, ARKit "
                "blendshapes; json/csv/npz; --video for an MP4 preview)."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msync",
        description="msync: live speech to 68-point facial landmarks (MS-Sync, causal and streamable).",
    )
    parser.add_argument("--version", action="version", version=f"msync {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in RUNTIME_COMMANDS.items():
        _add(sub, name, module, help_text)
    try:
        training_cli = importlib.import_module("training.cli")
    except ImportError:
        training_cli = None
    if training_cli is not None:
        training_cli.register(sub, _add)
    return parser


def _add(sub, name: str, module: str, help_text: str) -> argparse.ArgumentParser:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        # A command whose optional dependencies are missing stays listed and explains itself when run,
        # instead of breaking every other command.
        p = sub.add_parser(name, help=f"{help_text} [unavailable: {exc}]", description=help_text)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(_module=None, _unavailable=f"{exc}")
        return p
    p = sub.add_parser(name, help=help_text, description=help_text)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_unavailable", None):
        print(f"msync {args.command}: unavailable here: {args._unavailable}. "
              "Install the extras: pip install 'msync[train,export]'", file=sys.stderr)
        return 1
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:
        print(f"msync {args.command}: missing dependency: {exc}. Install the extra: pip install 'msync[train]'",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
