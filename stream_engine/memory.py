"""Giving the heap memory a process has freed back to the operating system (glibc's `malloc_trim`).

glibc's malloc keeps freed memory in its arenas for reuse and returns it to the kernel only from the top of
the main heap, and only past a trim threshold that rises on its own once the process has freed a large block
(ONNX Runtime and numpy do at start-up). Memory freed in the middle of a heap (the buffers of closed
connections, interleaved with memory still in use) therefore stays resident after a burst of streams: in the
100-stream loopback soak, 4-20 MiB of the server's RSS after every stream had closed was free heap
(benchmarks/results/ws_soak_rss_14f.md). `malloc_trim(0)` returns every whole free page of every arena
(madvise MADV_DONTNEED) and keeps the memory in use where it is; reusing a returned page later costs a page
fault. It takes a few milliseconds on a heap of tens of MiB (about 8 ms for 90 MiB with half of it free in
small holes, on this project's 2-core EPYC machine), so it is called at quiet moments, not per frame.

Python's own small-object allocator (pymalloc) keeps its 1 MiB arenas while any object lives in them; this
does not touch them.
"""

from __future__ import annotations

import ctypes
import sys


def release_free_heap() -> bool:
    """Return the C heap's free pages to the kernel (glibc `malloc_trim(0)`).

    Returns:
        True when memory was returned; False when there was none to return, or the C library is not glibc
        (macOS, Windows, musl: nothing is done there).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))
