"""How msync uses numba: one policy for every compiled loop (`signal_kernel`, `core_kernel`).

numba is optional. `compile_with_numba(build, what)` returns None (the caller runs its numpy code) when
MSYNC_NO_NUMBA=1 is set, when numba is not installed (silently), or when it is installed but cannot be used (a
broken numba or LLVM: logged as a warning). Otherwise it calls `build(numba, options)` with the project's jit
options: machine code cached on disk, numpy's error model, the GIL released.

The cache: numba reads its directory from the environment variable NUMBA_CACHE_DIR when it is first imported.
When that is unset and numba not yet imported, it is set (process-wide) to `cache_dir()`:
`$MSYNC_CACHE_DIR/numba`, else `$XDG_CACHE_HOME/msync/numba` (default `~/.cache/msync/numba`), never beside the
package's source. A NUMBA_CACHE_DIR of the user's is used as it is. When the directory cannot be written (or numba
was imported earlier without it), nothing is cached: the loops compile in every process, said once each.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def cache_dir() -> Path:
    """Where numba keeps compiled loops: `$MSYNC_CACHE_DIR/numba`, else `$XDG_CACHE_HOME/msync/numba`
    (default `~/.cache/msync/numba`)."""
    root = os.environ.get("MSYNC_CACHE_DIR")
    if root:
        return Path(root) / "numba"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "msync" / "numba"


def writable_dir(path: str) -> bool:
    """Whether `path` is (or can be made) a directory this process can write to."""
    if not path:
        return False
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def compile_with_numba(build: Callable[[Any, dict[str, Any]], T], what: str, fallback: str) -> T | None:
    """`build(numba, options)` under the policy above, or None for the numpy code.

    Args:
        build: wraps the loops with `numba.njit(**options)` (compiled lazily at their first call) and returns them.
        what: the loops in words, for the cache warning ("the signals loop").
        fallback: what happens without numba, for the warnings ("deriving signals with numpy").
    """
    if os.environ.get("MSYNC_NO_NUMBA", "") in ("1", "true", "yes"):
        return None
    if "numba" not in sys.modules and "NUMBA_CACHE_DIR" not in os.environ:
        os.environ["NUMBA_CACHE_DIR"] = str(cache_dir())
    try:
        import numba

        where = os.environ.get("NUMBA_CACHE_DIR", "")
        cache = writable_dir(where)
        if not cache:
            log.warning(
                "numba's cache directory %s: %s compiles at every start; set MSYNC_CACHE_DIR (or NUMBA_CACHE_DIR) "
                "to a writable directory",
                f"{where!r} cannot be written" if where else "is unset (numba was imported before msync set it)",
                what,
            )
        return build(numba, {"cache": cache, "error_model": "numpy", "nogil": True})
    except ModuleNotFoundError as exc:
        if exc.name != "numba":  # numba there, something it needs missing
            log.warning("numba cannot be imported (%s); %s", exc, fallback)
        return None  # not installed: the numpy code, silently (an optional dependency)
    except Exception as exc:  # installed but broken (llvmlite's library fails to load, numpy too new, ...)
        log.warning(
            "numba is installed but cannot be used (%s: %s); %s (set MSYNC_NO_NUMBA=1 to skip it)",
            type(exc).__name__,
            exc,
            fallback,
        )
        return None
