"""A whole pyramid level reduced by an integer factor, read block by block (no dask).

Used for the tissue mask (block mean) and the thumbnail (every ``factor``-th pixel) where
no small enough level exists. Memory stays at a few blocks of ~:data:`CHUNK`² level pixels
whatever the level's size; blocks decode on a small thread pool (decoders release the GIL).

Invariant: the result equals the reduction of the whole level at once, trimmed to a
multiple of ``factor``: blocks are aligned to ``factor``, and each block mean is a float32
sum of at most 65536 integers <= 255, exact in any summation order, then divided once.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from wsicount.io._base import CHUNK

if TYPE_CHECKING:
    from wsicount.io._slide import Slide

__all__ = ["reduce_level"]


def reduce_level(slide: Slide, level: int, factor: int, method: str = "mean", threads: int | None = None) -> np.ndarray:
    """Level ``level`` reduced ``factor``×: ``'mean'`` of factor² blocks (uint8, truncated) or ``'subsample'``.

    ``'mean'`` drops the last rows/columns that do not fill a block (output
    ``(h // factor, w // factor, c)``); ``'subsample'`` keeps pixel ``(i*factor, j*factor)``
    (output ``(ceil(h / factor), ceil(w / factor), c)``).
    """
    if factor < 1 or (method == "mean" and factor > 256):
        raise ValueError(f"reduction factor must be 1..256 for 'mean', >= 1 for 'subsample', got {factor}")
    if method not in ("mean", "subsample"):
        raise ValueError(f"unknown reduction {method!r}")
    h, w, c = slide.shapes[level]
    if method == "mean":
        h, w = (h // factor) * factor, (w // factor) * factor
    step = max(1, CHUNK // factor) * factor  # block side in level pixels, a multiple of factor
    blocks = [(y, x, min(step, h - y), min(step, w - x)) for y in range(0, h, step) for x in range(0, w, step)]
    out = np.zeros((-(-h // factor), -(-w // factor), c), np.uint8)
    if not blocks:
        return out

    def one(b: tuple[int, int, int, int]) -> np.ndarray:
        """One block, reduced."""
        y, x, bh, bw = b
        px = slide.read_region(level, y, x, bh, bw)
        if method == "subsample" or factor == 1:
            return px[::factor, ::factor]
        blk = px.astype(np.float32).reshape(bh // factor, factor, bw // factor, factor, c, 1)
        return blk.mean(axis=(1, 3, 5)).astype(np.uint8)

    n = threads or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="wsicount-reduce") as pool:
        for (y, x, _, _), r in zip(blocks, pool.map(one, blocks)):
            out[y // factor : y // factor + r.shape[0], x // factor : x // factor + r.shape[1]] = r
    return out
