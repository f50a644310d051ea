"""The text tables of a run: regions.csv (count maps per grid cell), cells.csv, cells.geojson, bad_tiles.csv.

Each is written atomically; numbers are written as Python writes them (``repr`` for floats),
so a table read back gives the exact values of the run. The count maps are also written as
NGFF images (``counts_<G>um``, ``tissue_<G>um``) for viewers.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..aggregate import BAD_TILE_FIELDS, Aggregate
from ..store import Layout, atomic_write
from ..tiling import Geometry

__all__ = ["REGION_FIELDS", "CELL_FIELDS", "Tables", "region_columns", "regions_csv", "region_rows", "cell_table",
           "cells_csv", "cells_geojson", "write_tables", "write_text_tables", "write_count_maps"]


REGION_FIELDS = ["grid_um", "row", "col", "region", "class", "x0_um", "y0_um", "x1_um", "y1_um", "tissue_fraction",
                 "tissue_mm2", "count", "count_lo", "count_hi", "cells_per_mm2", "cells_per_mm2_lo", "cells_per_mm2_hi"]
#: columns that may hold "" (no tissue, no calibration, or not a user region)
_MAYBE_EMPTY = {"region", "class", "count_lo", "count_hi", "cells_per_mm2", "cells_per_mm2_lo", "cells_per_mm2_hi"}


def region_columns(agg: Aggregate, g: float) -> dict[str, list]:
    """regions.csv's columns for the ``g``-um grid: one entry per grid cell with tissue or counts, row-major.

    Computed on whole arrays (a slide has 10^4+ grid cells); each value equals the scalar
    expression it replaces (same dtypes, Python's ``round`` for the fraction). Interval
    columns are filled when the aggregate has intervals (:func:`wsicount.aggregate.add_intervals`).
    """
    t, c = agg.tissue_mm2[g], agg.counts[g]
    r, col = np.nonzero((t > 0) | (c > 0))
    tv, cv = t[r, col], c[r, col]
    has = tv > 0
    per = np.divide(cv, tv, out=np.zeros(len(tv), dtype=np.result_type(cv, tv)), where=has)
    n = len(r)
    cols = {"grid_um": [g] * n, "row": r.tolist(), "col": col.tolist(), "region": [""] * n, "class": [""] * n,
            "x0_um": (col * g).tolist(), "y0_um": (r * g).tolist(), "x1_um": ((col + 1) * g).tolist(),
            "y1_um": ((r + 1) * g).tolist(), "tissue_fraction": [round(v, 6) for v in (tv / (g / 1000.0) ** 2).tolist()],
            "tissue_mm2": tv.tolist(), "count": cv.tolist(),
            "cells_per_mm2": [v if h else "" for v, h in zip(per.tolist(), has.tolist())]}
    ci = agg.cell_ci.get(g)
    if ci is None:
        cols.update({k: [""] * n for k in ("count_lo", "count_hi", "cells_per_mm2_lo", "cells_per_mm2_hi")})
        return cols
    lo, hi = ci[0][r, col], ci[1][r, col]
    cols.update(count_lo=lo.tolist(), count_hi=hi.tolist(),
                cells_per_mm2_lo=[v / a if h else "" for v, a, h in zip(lo.tolist(), tv.tolist(), has.tolist())],
                cells_per_mm2_hi=[v / a if h else "" for v, a, h in zip(hi.tolist(), tv.tolist(), has.tolist())])
    return cols


def regions_csv(columns: dict[float, dict[str, list]], user_rows: list[dict[str, Any]] = ()) -> str:
    """regions.csv text: each grid's :func:`region_columns` (what ``csv.DictWriter`` writes, floats as ``repr``),
    then one row per user region (grid columns empty)."""
    lines = [",".join(REGION_FIELDS)]
    for cols in columns.values():
        txt = [list(map(_csv_field if k in _MAYBE_EMPTY else str if k in ("row", "col") else repr, cols[k]))
               for k in REGION_FIELDS]
        lines.extend(map(",".join, zip(*txt)))
    text = "\n".join(lines) + "\n"
    if user_rows:
        text += _csv_text([{k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()
                            if k in REGION_FIELDS} for row in user_rows],
                          REGION_FIELDS).split("\n", 1)[1]
    return text


def _csv_field(v: Any) -> str:
    """A value as the csv module writes it: floats by ``repr``, others by ``str``."""
    return repr(v) if isinstance(v, float) else str(v)


def region_rows(cols: dict[str, list]) -> list[dict[str, Any]]:
    """One grid's :func:`region_columns` as row dicts (what the HTML report lists)."""
    return [dict(zip(REGION_FIELDS, row)) for row in zip(*(cols[k] for k in REGION_FIELDS))]


def _csv_text(rows: list[dict[str, Any]], fields: list[str]) -> str:
    """Rows as CSV text."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


CELL_FIELDS = ["x_px", "y_px", "x_um", "y_um", "peak_density"]


def cell_table(agg: Aggregate, geom: Geometry, mpp0: float) -> dict[str, np.ndarray]:
    """Detected cell centres in level-0 pixels and um, as columns (vectorised: slides have 10^5+ cells)."""
    pk = np.asarray(agg.peaks, dtype=np.float64).reshape(-1, 3)
    yu, xu = (pk[:, 0] + 0.5) * geom.model_mpp, (pk[:, 1] + 0.5) * geom.model_mpp
    return {"x_px": np.round(xu / mpp0 - 0.5, 2), "y_px": np.round(yu / mpp0 - 0.5, 2),
            "x_um": np.round(xu, 3), "y_um": np.round(yu, 3), "peak_density": pk[:, 2]}


def cells_csv(cells: dict[str, np.ndarray]) -> str:
    """cells.csv text: a header and one row per cell."""
    cols = [cells[k].tolist() for k in CELL_FIELDS]
    return "\n".join([",".join(CELL_FIELDS), *(",".join(map(repr, row)) for row in zip(*cols))]) + "\n"


def cells_geojson(cells: dict[str, np.ndarray], units: str, mpp0: float) -> str:
    """QuPath-importable FeatureCollection of points (level-0 pixels or um, stated)."""
    kx, ky = ("x_px", "y_px") if units == "px" else ("x_um", "y_um")
    # one template per feature: json.dumps of 10^5 nested dicts is the slow part otherwise
    feats = ",".join(
        '{"type":"Feature","geometry":{"type":"Point","coordinates":[%r,%r]},"properties":{"objectType":"detection",'
        '"classification":{"name":"Cell"},"measurements":{"peak_density":%r}}}' % t
        for t in zip(cells[kx].tolist(), cells[ky].tolist(), cells["peak_density"].tolist()))
    head = json.dumps({"type": "FeatureCollection",
                       "wsicount": {"coordinates": "level-0 pixels" if units == "px" else "micrometres", "mpp": mpp0}})
    return head[:-1] + ', "features": [' + feats + "]}"


@dataclass
class Tables:
    """What :func:`write_tables` wrote and the report reuses: the coarsest grid's region rows and the cell coordinates."""

    rows: list[dict[str, Any]]
    cells: dict[str, np.ndarray]


def write_tables(out: Path, slide, geom: Geometry, agg: Aggregate, units: str = "px") -> Tables:
    """Write the count maps, regions.csv, cells.csv, cells.geojson and bad_tiles.csv (:func:`write_text_tables`, :func:`write_count_maps`)."""
    tables = write_text_tables(out, slide.mpp, geom, agg, units)
    write_count_maps(out, agg)
    return tables


def write_text_tables(out: Path, mpp0: float, geom: Geometry, agg: Aggregate, units: str = "px") -> Tables:
    """Write regions.csv, cells.csv, cells.geojson and bad_tiles.csv (``mpp0``: the slide's level-0 um/px).

    Pure Python string building (~0.4 CPU-s for 30 000 cells) and no Zarr, so that
    :func:`wsicount.run` writes them in its side process, under another GIL than the
    pyramid's Zarr I/O loop (run on one GIL, each slowed the other down: 1.4 s for both).
    """
    columns = {g: region_columns(agg, g) for g in agg.counts}
    atomic_write(Layout(out).file("regions.csv"), regions_csv(columns, agg.user_regions))
    rows = region_rows(columns[max(columns)]) if columns else []  # the HTML lists the coarsest grid
    cells = cell_table(agg, geom, mpp0)
    atomic_write(Layout(out).file("cells.csv"), cells_csv(cells))
    atomic_write(Layout(out).file("cells.geojson"), cells_geojson(cells, units, mpp0))
    atomic_write(Layout(out).file("bad_tiles.csv"), _csv_text(agg.bad_tiles, BAD_TILE_FIELDS))
    return Tables(rows, cells)


def write_count_maps(out: Path, agg: Aggregate) -> None:
    """Write ``counts_<g>um`` and ``tissue_<g>um``, the count and tissue-area maps of each grid, as NGFF images."""
    from ..store.density import write_image

    for g in agg.counts:
        write_image(out, Layout(out).count_map(g), agg.counts[g].astype(np.float32), g)
        write_image(out, Layout(out).tissue_map(g), agg.tissue_mm2[g].astype(np.float32), g)


