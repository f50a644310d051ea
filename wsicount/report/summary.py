"""summary.json: the run's results and provenance, its schema in one place, written last.

A ``summary.json`` on disk always describes a finished run: it is written after every other
output, atomically. The CLI prints from it, ``wsicount batch`` tabulates it and
:func:`wsicount.count` returns it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..aggregate import Aggregate
from ..store import Layout, atomic_write, json_text
from ..tiling import Geometry
from .figures import figures
from .html import report_html
from .tables import Tables, write_tables

__all__ = ["build_summary", "write_report", "OUTPUTS"]

#: what summary.json lists under "outputs"
OUTPUTS = ["summary.json", "regions.csv", "cells.csv", "cells.geojson", "bad_tiles.csv", "report.html",
           "thumbnail.png", "heatmap.png", "density/ (OME-Zarr)"]


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
        "complete": True, "n_cells_detected": len(agg.peaks),
        "regional": agg.regional, "bad_tiles": agg.bad_tiles,
        "bad_tiles_tissue_mm2": float(sum(b["tissue_mm2"] for b in agg.bad_tiles)),
        "slide": slide, "model": model, "processing": processing, "parameters": parameters, "timings": timings,
        "wsicount_version": __version__,
    }


def write_report(out: Path, slide, tm, geom: Geometry, agg: Aggregate, summary: dict[str, Any], t_start: float,
                 units: str = "px", pngs: tuple[bytes, bytes] | None = None, tables: Tables | None = None):
    """Write the tables (unless ``tables`` says they are written), figures, HTML and (last) summary.json; return the cell table.

    ``pngs``: the (thumbnail, heat map) of :func:`figures` when already drawn.
    """
    t = time.perf_counter()
    tables = tables or write_tables(out, slide, geom, agg, units)
    g_small = min(agg.counts)
    thumb, heat = pngs if pngs is not None else figures(slide, tm, agg, g_small)
    atomic_write(Layout(out).file("thumbnail.png"), thumb)
    atomic_write(Layout(out).file("heatmap.png"), heat)
    summary["timings"]["report"] = summary["timings"].get("report", 0.0) + time.perf_counter() - t
    summary["timings"]["total"] = time.perf_counter() - t_start
    summary["outputs"] = list(OUTPUTS)
    atomic_write(Layout(out).file("report.html"), report_html(summary, thumb, heat, tables.rows, g_small))
    atomic_write(Layout(out).file("summary.json"), json_text(summary))
    return tables.cells


