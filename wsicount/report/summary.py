"""summary.json: the run's results and provenance, its schema in one place, written last.

A ``summary.json`` on disk always describes a finished run: it is written after every other
output, atomically. The CLI prints from it, ``wsicount batch`` tabulates it and
:func:`wsicount.count` returns it.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..aggregate import Aggregate
from ..errors import WsicountError
from ..store import Layout, atomic_write, json_text, tidy
from ..tiling import Geometry
from .figures import HEAT_MIN_CELLS, figures, heat_grid
from .html import report_html
from .zoom import Zoom, zoom_figure
from .tables import Tables, write_tables

__all__ = ["build_summary", "write_report", "heat_caption", "OUTPUTS"]

#: what summary.json lists under "outputs"
OUTPUTS = ["summary.json", "regions.csv", "cells.csv", "cells.geojson", "bad_tiles.csv", "report.html",
           "thumbnail.png", "heatmap.png", ". (OME-Zarr: the density image density/, its tissue label labels/tissue)"]


def build_summary(agg: Aggregate, tm: Any, slide: dict[str, Any], model: dict[str, Any], processing: dict[str, Any],
                  parameters: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    """summary.json's content: the counts first, then provenance (``timings`` gets "report" and "total" on writing).

    ``complete``: every tissue tile was counted or, with --skip-bad-tiles, is listed in
    ``bad_tiles`` (0 cells there; ``bad_tiles_tissue_mm2`` says how much tissue that is).
    """
    from .. import __version__

    return {
        "total_cells": agg.total, "tissue_area_mm2": tm.area_mm2,
        "cells_per_mm2": agg.total / tm.area_mm2 if tm.area_mm2 > 0 else None,
        # {"lo", "hi", "level", "method"}: the calibrated interval of the total (None: no calibration in the card)
        "total_cells_ci": agg.total_ci,
        # the share of the network's density that fell outside the counted region (removed by the mask)
        "density_outside_mask": agg.outside / (agg.total + agg.outside) if agg.total + agg.outside > 0 else 0.0,
        "complete": True, "n_cells_detected": len(agg.peaks),
        "regional": agg.regional, "user_regions": agg.user_regions, "bad_tiles": agg.bad_tiles,
        "bad_tiles_tissue_mm2": float(sum(b["tissue_mm2"] for b in agg.bad_tiles)),
        # pixel sizes computed from the file's resolution carry float noise (0.45230000000000004)
        "slide": tidy(slide), "model": tidy(model),
        "processing": {k: tidy(v) if k.endswith("mpp") else v for k, v in processing.items()},
        "parameters": parameters, "timings": timings,
        "wsicount_version": __version__,
    }


def write_report(out: Path, slide, tm, geom: Geometry, agg: Aggregate, summary: dict[str, Any], t_start: float,
                 units: str = "px", pngs: tuple[bytes, bytes] | None = None, tables: Tables | None = None):
    """Write the tables (unless ``tables`` says they are written), figures, HTML and (last) summary.json; return the cell table.

    ``pngs``: the (thumbnail, heat map) of :func:`figures` when already drawn.
    """
    t = time.perf_counter()
    tables = tables or write_tables(out, slide, geom, agg, units)
    thumb, heat = pngs if pngs is not None else figures(slide, tm, agg)
    atomic_write(Layout(out).file("thumbnail.png"), thumb)
    atomic_write(Layout(out).file("heatmap.png"), heat)
    zoom = _zoom(slide, geom, agg)
    summary["timings"]["report"] = summary["timings"].get("report", 0.0) + time.perf_counter() - t
    summary["timings"]["total"] = time.perf_counter() - t_start
    summary["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    summary["outputs"] = list(OUTPUTS)
    page = report_html(summary, thumb, heat, tables.rows, heat_caption(agg), zoom)
    atomic_write(Layout(out).file("report.html"), page)
    atomic_write(Layout(out).file("summary.json"), json_text(summary))
    return tables.cells


def heat_caption(agg: Aggregate) -> str:
    """What the heat map's squares are and why they are that size (:func:`~wsicount.report.figures.heat_grid`)."""
    g, k, per_square = heat_grid(agg)
    size = f"{k} × {k} cells of the {g:g} µm grid" if k > 1 else f"the {g:g} µm grid"
    noise = 100 / math.sqrt(per_square) if per_square > 0 else float("inf")
    why = ("so that each holds enough cells for the colours to show density rather than counting noise"
           if per_square >= HEAT_MIN_CELLS else "the slide is too small for larger squares: read single squares with care")
    return (f"Cell density (cells/mm²) in {g * k:g} µm squares ({size}), about {per_square:.0f} cells per square "
            f"on average (counting noise ±{noise:.0f} %): {why}. Squares under a quarter tissue are left "
            "uncoloured. Same scale as the slide on the left.")


def _zoom(slide, geom: Geometry, agg: Aggregate) -> Zoom | None:
    """The close-up around the densest region of the finest grid; None when there is none or it cannot be read."""
    densest = agg.regional.get(f"{min(agg.counts):g}um", {}).get("max") if agg.counts else None
    if not densest:
        return None
    try:
        return zoom_figure(slide, geom.model_mpp, agg.peaks, (densest["y_um"], densest["x_um"]))
    except WsicountError:  # undecodable there (--skip-bad-tiles): a picture is not worth failing the run for
        return None


