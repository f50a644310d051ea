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

__all__ = ["Aggregate", "aggregate", "add_intervals", "bad_tile_rows", "BAD_TILE_FIELDS"]

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
    #: the total's interval: {"lo", "hi", "level", "method"} (None: the model card has no calibration)
    total_ci: dict[str, Any] | None = None
    #: per grid: (lo, hi, sd) arrays of each cell's count interval and modelled error sd
    cell_ci: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: density the tissue mask removed from the tile cores (summed over tiles, before masking)
    outside: float = 0.0
    #: rows of the user's regions (wsicount.regions.region_counts), [] without --regions
    user_regions: list[dict[str, Any]] = field(default_factory=list)
    #: the slide's per-view counts (sums of the tiles' ``views``; None without a view method)
    view_sums: np.ndarray | None = None


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
    views = [r.views for r in records if not r.bad]
    view_sums = np.sum(views, axis=0, dtype=np.float64) if views and all(v is not None for v in views) else None
    agg = Aggregate(total, pk, counts, tissue, bad_tiles=bad, variance=float(sum(terms)) if terms else None,
                    outside=float(sum(r.outside for r in records)), view_sums=view_sums)
    agg.regional = {f"{g:g}um": _regional(counts[g], tissue[g], g) for g in grid_um}
    return agg


def add_intervals(agg: Aggregate, cal: Any, model_mpp: float, level: float = 0.95, cell_cal: Any = "same") -> None:
    """Set the total's and every grid cell's count interval from a :class:`wsicount.uncertainty.Calibration`.

    The total uses the tiles' summed additive terms (tile errors independent), its own count
    for the shared relative error and, under a view method, the variance of its per-view
    counts; a grid cell uses its count and tissue area with ``cell_cal`` (default ``cal``; a
    cell has no per-view sums, so a view method's run passes the card's default calibration).
    """
    from .uncertainty import cell_terms
    from .views import VIEW_METHODS

    cell_cal = cal if cell_cal == "same" else cell_cal
    if cal is not None:
        tissue_mm2 = float(next(iter(agg.tissue_mm2.values())).sum()) if agg.tissue_mm2 else 0.0
        terms = ({"var": agg.variance, "pred": max(agg.total, 0.0)} if agg.variance is not None
                 else cell_terms(agg.total, tissue_mm2, model_mpp))
        if cal.method in VIEW_METHODS and agg.view_sums is not None:
            terms = {**terms, VIEW_METHODS[cal.method]: float(np.var(agg.view_sums))}
        lo, hi = cal.interval(agg.total, terms, level)
        agg.total_ci = {"lo": lo, "hi": hi, "level": level, "method": cal.method}
    if cell_cal is None:
        return
    cal = cell_cal
    for g, counts in agg.counts.items():
        t = cell_terms(counts, agg.tissue_mm2[g], model_mpp)
        clo, chi = cal.interval(counts, t, level)
        agg.cell_ci[g] = (np.asarray(clo), np.asarray(chi), np.sqrt(cal.variance(t)))


def _tissue_per_cell(tm: Any, g: float, shape: tuple[int, int]) -> np.ndarray:
    """Tissue area (mm²) of each grid cell of size g um, from the mask, by exact pixel overlap (:mod:`wsicount.gridarea`)."""
    from .gridarea import tissue_area_per_cell

    return tissue_area_per_cell(tm.mask, tm.mpp0 * tm.scale_y, tm.mpp0 * tm.scale_x, g, shape)


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
