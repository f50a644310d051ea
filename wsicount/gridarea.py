"""Tissue area per physical grid cell from a coarse tissue mask, by exact pixel overlap.

A mask pixel is ``py x px`` µm; a grid cell ``g x g`` µm rarely holds a whole number of them.
Giving each pixel wholly to the cell holding its centre makes some cells own one row or column
of pixels more than fits in them: with 3.6184 µm pixels and 100 µm cells a full cell then reads
28 x 3.6184 = 101.3 µm on a side, a tissue fraction of 1.026. Splitting each pixel between the
cells it overlaps, in proportion to the overlap, gives no cell more than its own area, and the
cells still add up to the mask's whole area.
"""

from __future__ import annotations

import numpy as np

__all__ = ["integrate_cells", "tissue_area_per_cell"]

#: mask rows summed at a time (bounds the temporary cumulative sums)
_BAND = 1024


def integrate_cells(a: np.ndarray, px_um: float, g: float, n_cells: int, axis: int) -> np.ndarray:
    """Sums of ``a`` along ``axis`` over cells ``[j, j+1) x g`` µm, pixel ``i`` covering ``[i, i+1) x px_um``.

    The running sum of ``a`` is read at each cell boundary, inside a pixel in proportion to
    the part of it before the boundary; a cell's sum is the difference of its two boundaries.
    Pixels past the last cell's end (rounding only: the grid covers the slide) go to the last cell.
    """
    n = a.shape[axis]
    u = np.minimum(np.arange(n_cells + 1) * (g / px_um), n)
    u[-1] = n
    i = np.minimum(u.astype(np.int64), n - 1)  # the pixel holding each boundary
    frac = u - i  # its share before the boundary (1 at the far end)
    run = np.cumsum(a, axis=axis, dtype=np.int32 if a.dtype == bool else np.float64)  # a mask band: exact counts
    at = np.take(a, i, axis=axis).astype(np.float64)
    shape = [1] * a.ndim
    shape[axis] = len(frac)
    edge = np.take(run, i, axis=axis) - at + at * frac.reshape(shape)  # sum before pixel i, plus its share
    return np.diff(edge, axis=axis)


def tissue_area_per_cell(mask: np.ndarray, py: float, px: float, g: float, shape: tuple[int, int]) -> np.ndarray:
    """Tissue area (mm²) in each cell of the ``g``-µm grid of ``shape``; ``py``, ``px``: µm per mask pixel.

    Columns first, one band of mask rows at a time, then rows: memory ~ a band of the mask
    plus mask height x grid columns.
    """
    per_row = np.concatenate([integrate_cells(mask[y : y + _BAND], px, g, shape[1], axis=1)
                              for y in range(0, mask.shape[0], _BAND)])
    return integrate_cells(per_row, py, g, shape[0], axis=0) * (py * px / 1e6)
