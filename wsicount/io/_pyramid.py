"""Streaming 2x pyramid construction for writers that receive level 0 band by band.

Invariant: level ``k`` has shape ``ceil(h_{k-1} / 2) x ceil(w_{k-1} / 2)`` (rounded up to a
multiple of ``multiple`` if asked, the extra rows/columns replicating the edge) and every
pixel is the rounded mean of its 2x2 parent block, an odd last row/column being averaged
with itself; the result is the same whatever band heights level 0 is streamed in.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["pyramid_shapes", "downsample2", "PyramidBuilder"]

# Levels held in RAM up to this size; bigger ones go to a disk-backed memmap.
_RAM_LEVEL_BYTES = 64 * 1024**2


def pyramid_shapes(
    shape: tuple[int, int], min_size: int = 1024, multiple: int = 1
) -> list[tuple[int, int]]:
    """Level shapes (h, w), halving (rounding up) until the longer side is below ``min_size``.

    With ``multiple`` > 1 the levels below 0 are rounded up to multiples of it (NDPI needs 8).
    """
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"image shape must be positive, got {shape}")
    shapes = [(h, w)]
    while max(h, w) >= min_size and min(h, w) > multiple:
        h = -(-math.ceil(h / 2) // multiple) * multiple
        w = -(-math.ceil(w / 2) // multiple) * multiple
        shapes.append((h, w))
    return shapes


def downsample2(a: np.ndarray) -> np.ndarray:
    """2x2 box mean of an (h, w, c) uint8 array -> (ceil(h/2), ceil(w/2), c) uint8."""
    if a.shape[0] % 2 or a.shape[1] % 2:
        # replicate the odd last row/column so it is averaged with itself
        a = np.pad(a, ((0, a.shape[0] % 2), (0, a.shape[1] % 2), (0, 0)), mode="edge")
    s = a[0::2, 0::2].astype(np.uint16)
    s += a[1::2, 0::2]
    s += a[0::2, 1::2]
    s += a[1::2, 1::2]
    s += 2  # round half up
    return (s >> 2).astype(np.uint8)


class PyramidBuilder:
    """Fills levels 1.. of a pyramid from level-0 rows pushed in order (bounded memory).

    Each level keeps at most one pending row of its parent; big levels live in memmaps under
    ``tmpdir`` so a gigapixel level 0 never has to be held in memory.
    """

    def __init__(self, shapes: list[tuple[int, int]], channels: int, tmpdir: Path | str) -> None:
        """Allocate the buffers of levels 1..len(shapes)-1."""
        self.shapes = shapes
        self.levels: list[np.ndarray] = []
        for k, (h, w) in enumerate(shapes[1:], start=1):
            shape = (h, w, channels)
            if h * w * channels <= _RAM_LEVEL_BYTES:
                self.levels.append(np.zeros(shape, np.uint8))
            else:
                path = Path(tmpdir) / f"level{k}.u8"
                self.levels.append(np.memmap(path, dtype=np.uint8, mode="w+", shape=shape))
        self._pending: list[np.ndarray | None] = [None] * len(shapes)
        self._rows = [0] * len(shapes)
        self._finished = False

    def push(self, rows: np.ndarray) -> None:
        """Feed the next rows of level 0 (full width)."""
        self._push(1, rows)

    def _push(self, k: int, rows: np.ndarray) -> None:
        """Downsample parent rows into level ``k`` and cascade to level ``k + 1``."""
        if k >= len(self.shapes) or rows.shape[0] == 0:
            return
        pend = self._pending[k]
        if pend is not None:
            rows = np.concatenate([pend, rows], axis=0)
        even = rows.shape[0] - rows.shape[0] % 2
        self._pending[k] = rows[even:].copy() if even < rows.shape[0] else None
        if even:
            self._emit(k, downsample2(rows[:even]))

    def _emit(self, k: int, out: np.ndarray) -> None:
        """Store finished rows of level ``k`` (edge-padded to its width) and pass them on."""
        pad = self.shapes[k][1] - out.shape[1]
        if pad:
            out = np.pad(out, ((0, 0), (0, pad), (0, 0)), mode="edge")
        y = self._rows[k]
        self.levels[k - 1][y : y + out.shape[0]] = out
        self._rows[k] = y + out.shape[0]
        self._push(k + 1, out)

    def finish(self) -> None:
        """Flush the odd last rows of every level once all of level 0 was pushed (idempotent)."""
        if self._finished:
            return
        self._finished = True
        for k in range(1, len(self.shapes)):
            pend = self._pending[k]
            if pend is not None:
                self._pending[k] = None
                self._emit(k, downsample2(pend))
            missing = self.shapes[k][0] - self._rows[k]
            if missing > 0:  # rounding up to ``multiple``: replicate the last row
                last = self.levels[k - 1][self._rows[k] - 1 : self._rows[k]]
                self._emit(k, np.repeat(np.asarray(last), missing, axis=0))
        for k, (h, _w) in enumerate(self.shapes[1:], start=1):
            if self._rows[k] != h:
                raise RuntimeError(f"pyramid level {k} got {self._rows[k]} rows, expected {h}")

    def level(self, k: int) -> np.ndarray:
        """The finished level ``k`` >= 1 (finishes the pyramid if level 0 is complete)."""
        self.finish()
        return self.levels[k - 1]
