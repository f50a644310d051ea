"""Tile records -> the slide's results: total, count maps on physical grids, regional densities, cells.

Aggregation reads only the tiles' records (never the density map): the total is the sum of
the tile sums in key order, so it does not depend on the order the tiles finished in, and a
grid cell's count is the sum of the partial sums of the tiles overlapping it. Tile variance
terms, when present, add up the same way (tile errors taken as independent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .store import TileRecord
from .tiling import Geometry, Tile, mask_on_grid

__all__ = ["Aggregate", "aggregate", "bad_tile_rows", "BAD_TILE_FIELDS"]

BAD_TILE_FIELDS = ["tile", "row", "col", "y0_um", "x0_um", "y1_um", "x1_um", "tissue_mm2", "error"]


@dataclass
class Aggregate:
    """Slide-level results assembled from tile records."""

    total: float
    peaks: np.ndarray  # (N, 3): y, x on the model grid, density value
    counts: dict[float, np.ndarray]
    tissue_mm2: dict[float, np.ndarray]
    regional: dict[str, Any] = field(default_factory=dict)
    bad_tiles: list[dict[str, Any]] = field(default_factory=list)
    #: sum of the tiles' count-variance terms (None when the tiles carry none)
    variance: float | None = None


def aggregate(records: list[TileRecord], tm: Any, geom: Geometry, grid_um: tuple[float, ...],
              grid_shape: tuple[tuple[int, int], ...]) -> Aggregate:
    """Sum tile records (in key order, so totals do not depend on completion order)."""
    records = sorted(records, key=lambda r: Tile.index_of(r.key))
    total = float(sum(r.sum for r in records))
    pk = np.asarray([p for r in records for p in r.peaks], dtype=np.float64).reshape(-1, 3)
    counts, tissue = {}, {}
    for g, shape in zip(grid_um, grid_shape):
        c = np.zeros(shape[0] * shape[1], dtype=np.float64)
        for r in records:
            part = r.grid.get(str(g))
            if part and part["i"]:
                np.add.at(c, np.asarray(part["i"], dtype=np.int64), np.asarray(part["v"]))
        counts[g] = c.reshape(shape)
        tissue[g] = _tissue_per_cell(tm, g, shape)
    bad = [{"tile": r.key, "error": r.error} for r in records if r.bad]
    terms = [r.var for r in records if r.var is not None]
    agg = Aggregate(total, pk, counts, tissue, bad_tiles=bad, variance=float(sum(terms)) if terms else None)
    agg.regional = {f"{g:g}um": _regional(counts[g], tissue[g], g) for g in grid_um}
    return agg


def _tissue_per_cell(tm: Any, g: float, shape: tuple[int, int]) -> np.ndarray:
    """Tissue area (mm²) of each grid cell of size g um, from the mask.

    A mask pixel belongs to the grid cell holding its centre. The cell index grows with the
    pixel index, so each cell's pixels are one run of rows and columns: the mask is summed
    one band of rows at a time (no per-pixel index or cast arrays: memory ~ mask width x grid rows).
    """
    mh, mw = tm.mask.shape
    py, px = tm.mpp0 * tm.scale_y, tm.mpp0 * tm.scale_x  # um per mask pixel
    iy = np.minimum(((np.arange(mh) + 0.5) * py / g).astype(np.int64), shape[0] - 1)
    ix = np.minimum(((np.arange(mw) + 0.5) * px / g).astype(np.int64), shape[1] - 1)
    ry = np.flatnonzero(np.r_[True, iy[1:] != iy[:-1]])  # first mask row of each occupied grid row
    rx = np.flatnonzero(np.r_[True, ix[1:] != ix[:-1]])
    rows = np.stack([band.sum(axis=0) for band in np.split(tm.mask, ry[1:], axis=0)])
    cells = np.add.reduceat(rows, rx, axis=1)
    area = np.zeros(shape, dtype=np.float64)
    area[np.ix_(iy[ry], ix[rx])] = cells * (py * px / 1e6)
    return area


def _regional(counts: np.ndarray, tissue_mm2: np.ndarray, g: float, min_fraction: float = 0.5) -> dict[str, Any]:
    """Min/mean/max density over grid cells at least ``min_fraction`` covered by tissue."""
    cell_mm2 = (g / 1000.0) ** 2
    ok = tissue_mm2 >= min_fraction * cell_mm2
    if not ok.any():
        return {"n_cells": 0, "min_tissue_fraction": min_fraction}
    dens = np.where(ok, counts / np.where(ok, tissue_mm2, 1.0), np.nan)

    def loc(idx: int) -> dict[str, float]:
        r, c = divmod(int(idx), counts.shape[1])
        return {"density": float(dens[r, c]), "row": r, "col": c, "y_um": (r + 0.5) * g, "x_um": (c + 0.5) * g,
                "count": float(counts[r, c])}

    return {"n_cells": int(ok.sum()), "min_tissue_fraction": min_fraction,
            "min": loc(np.nanargmin(dens)), "max": loc(np.nanargmax(dens)),
            "mean": float(np.nanmean(dens)), "std": float(np.nanstd(dens)),
            "pooled": float(counts[ok].sum() / tissue_mm2[ok].sum())}


def bad_tile_rows(bad: list[dict[str, Any]], tiles: list[Tile], geom: Geometry, tm: Any,
                  scale: tuple[float, float]) -> list[dict[str, Any]]:
    """Where each undecodable tile lies (core box in level-0 µm) and how much tissue it holds."""
    by_key = {t.key: t for t in tiles}
    m = geom.model_mpp
    rows = []
    for b in bad:
        t = by_key[b["tile"]]
        y0, y1, x0, x1 = t.core
        tissue_px = int(mask_on_grid(tm.mask, *scale, t.core).sum())
        um = {k: round(v * m, 3) for k, v in (("y0_um", y0), ("x0_um", x0), ("y1_um", y1), ("x1_um", x1))}
        rows.append({"tile": t.key, "row": t.ty, "col": t.tx, **um, "tissue_mm2": round(tissue_px * m * m / 1e6, 6),
                     "error": b["error"]})
    return rows
