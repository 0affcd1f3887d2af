"""The import rules CI enforces, read from the source (every `import` statement, at any depth):

- `stream_engine` (the runtime) never imports `training`, `export`, `benchmarks` or torch;
- `training` never imports `benchmarks` or `export`;
- no module of the packages imports another module's private (`_name`) objects.

A tolerated violation would be listed in ALLOWED with its reason (none is); an entry that no longer matches a
violation fails the test, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stream_engine", "training", "export", "benchmarks")
FORBIDDEN = {
    "stream_engine": ("training", "export", "benchmarks", "torch"),
    "training": ("benchmarks", "export"),
}

# (file, imported module, name or "") -> why it is tolerated; an entry needs a reason that outlives a branch.
ALLOWED: dict[tuple[str, str, str], str] = {}


def _sources():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


def _module_name(rel: str) -> str:
    parts = rel[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(rel: str, tree: ast.AST):
    """(imported module, imported name or "") for every import statement; relative imports resolved."""
    here = _module_name(rel).split(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, ""
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = here if rel.endswith("__init__.py") else here[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                yield base, a.name


def violations() -> set[tuple[str, str, str]]:
    found = set()
    for rel, tree in _sources():
        top = rel.split("/")[0]
        me = _module_name(rel)
        for module, name in _imports(rel, tree):
            root = module.split(".")[0]
            if root in FORBIDDEN.get(top, ()):
                found.add((rel, module, ""))
            private = name.startswith("_") and not name.startswith("__")
            if private and module.split(".")[0] in PACKAGES and module != me:
                found.add((rel, module, name))
    return found


def test_layering_and_private_imports():
    found = violations()
    new = sorted(found - set(ALLOWED))
    assert not new, "import rule violations (see this test's docstring):\n" + "\n".join(
        f"  {f}: imports {m}{'.' + n if n else ''}" for f, m, n in new
    )
    stale = sorted(set(ALLOWED) - found)
    assert not stale, f"ALLOWED lists violations that are gone, remove them: {stale}"


def test_the_rules_catch_what_they_should(tmp_path, monkeypatch):
    """The checker itself: a runtime module importing torch lazily and a private name are both caught."""
    src = "def f():\n    import torch\n    from training.checkpoint import _x\n    from .clock import _y\n"
    tree = ast.parse(src)
    got = list(_imports("stream_engine/foo.py", tree))
    assert ("torch", "") in got and ("training.checkpoint", "_x") in got and ("stream_engine.clock", "_y") in got


@pytest.mark.parametrize("pkg", ["stream_engine"])
def test_runtime_imports_without_torch_in_a_fresh_interpreter(pkg):
    """Importing every runtime module loads neither torch, nor the training/export/benchmarks packages, nor
    librosa (the front end's filterbank reference is built lazily, by training and export only)."""
    modules = sorted(
        {_module_name(rel) for rel, _ in _sources() if rel.startswith(pkg + "/") and "/native/" not in rel}
    )
    code = (
        "import importlib\n"
        f"for m in {modules!r}:\n"
        "    try:\n        importlib.import_module(m)\n    except ImportError:\n        pass\n"
    )
    assert _heavy_modules_after(code) == "[]"


@pytest.mark.parametrize("argv", [["info", "stream_engine/models/default.onnx"], ["stream", "--help"]])
def test_runtime_commands_through_the_cli_load_no_training_code(argv):
    """`msync stream` / `msync info` through the CLI's entry point import only their own command module: the
    `msync` parser must not import every command (training's modules import torch at their top, ~180 MB of a
    server's resident memory before this was caught by a soak)."""
    code = f"from stream_engine.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
    assert _heavy_modules_after(code) == "[]"


def _heavy_modules_after(code: str) -> str:
    """Run `code` in a fresh interpreter; the sorted list (as printed) of torch / training / export / benchmarks /
    librosa modules it left loaded."""
    import subprocess
    import sys

    code += (
        "\nimport sys\nheavy = ('torch', 'training', 'export', 'benchmarks', 'librosa')\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]
