"""Process-wide memory-allocator tuning for inference on Linux/glibc.

A forward pass allocates and frees activations of tens of MB per layer. glibc serves
such blocks with fresh ``mmap`` pages and unmaps them on free, so every layer of every
tile page-faults its output in and the kernel zeroes it, a large share of the tile's CPU
(``python benchmarks/floor_variants.py --allocator`` measures it).
With :func:`tune_allocator` the process keeps freed memory and reuses it. The price is that
the process does not hand memory back to the OS until it exits (its RSS stays at its peak),
so the CLI applies it (one short-lived process per command; ``WSICOUNT_ALLOCATOR=default``
turns it off) and library users opt in. It also raises the peak a little: blocks are reused
from one heap instead of being returned whole (README, "Memory": the activation term A).

The tuning also goes to the processes this one starts, through glibc's environment variables
for the same settings: a ``--workers N`` LocalCluster's workers are new processes and would
otherwise run the network untuned (``python benchmarks/memory.py --modes workers``, with and
without ``WSICOUNT_ALLOCATOR=default``, compares the two).
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["tune_allocator", "worker_environ", "CHILD_ENV"]

# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_TRIM = 2**31 - 1
#: the same settings as glibc reads them from the environment when a process starts
CHILD_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(_TRIM)}

_applied = False


def worker_environ(base: dict) -> dict:
    """A Dask nanny's ``pre-spawn-environ`` with this process's tuning, if applied, in place of its own.

    Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker it starts, which would
    undo the trim setting of :data:`CHILD_ENV` (freed memory handed back, then faulted in
    again for the next layer).
    """
    return {**base, **CHILD_ENV} if _applied else dict(base)


def tune_allocator() -> bool:
    """Keep freed memory for reuse (glibc only; call before starting threads). True if applied.

    * ``M_MMAP_MAX = 0``: large blocks come from the heap, not from fresh mmap pages;
    * ``M_ARENA_MAX = 1``: one heap for all threads (a thread's own arena cannot hold a block
      larger than 64 MB and would fall back to mmap);
    * ``M_TRIM_THRESHOLD = 2 GiB``: freed memory at the top of the heap is kept.

    When applied, :data:`CHILD_ENV` is also set in ``os.environ`` (where unset), so that the
    processes started afterwards (Dask workers) are tuned from their start.
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
    ok = all(libc.mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM)))
    _applied = ok
    if ok:
        for k, v in CHILD_ENV.items():
            os.environ.setdefault(k, v)
    return ok
