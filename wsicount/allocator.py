"""Process-wide memory-allocator tuning for inference on Linux/glibc.

A forward pass allocates and frees activations of tens of MB per layer. glibc serves
such blocks with fresh ``mmap`` pages and unmaps them on free, so every layer of every
tile page-faults its output in and the kernel zeroes it: on the project's 2-core VM,
0.5-0.6 s of system time per 1024² tile, about a third of the tile's CPU
(``python benchmarks/floor_variants.py --allocator`` measures it; BENCHMARKS.md).
With :func:`tune_allocator` the process keeps freed memory and reuses it. The price is that
the process does not hand memory back to the OS until it exits (its RSS stays at its peak),
so the CLI applies it (one short-lived process per command; ``WSICOUNT_ALLOCATOR=default``
turns it off) and library users opt in. It also raises the peak a little: blocks are reused
from one heap instead of being returned whole (README, "Performance and memory", term A).
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["tune_allocator"]

# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8

_applied = False


def tune_allocator() -> bool:
    """Keep freed memory for reuse (glibc only; call before starting threads). True if applied.

    * ``M_MMAP_MAX = 0``: large blocks come from the heap, not from fresh mmap pages;
    * ``M_ARENA_MAX = 1``: one heap for all threads (a thread's own arena cannot hold a block
      larger than 64 MB and would fall back to mmap);
    * ``M_TRIM_THRESHOLD = 2 GiB``: freed memory at the top of the heap is kept.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc, not musl
    except (OSError, AttributeError):
        return False
    ok = all(libc.mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))
    _applied = ok
    return ok
