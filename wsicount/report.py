"""Aggregating tile records into counts and writing the human- and machine-readable outputs.

Files in ``OUT/`` (each written to a temporary name, then renamed; ``summary.json`` last,
so a summary on disk always describes a finished run):
``regions.csv`` (one row per grid cell), ``cells.csv`` and ``cells.geojson`` (detected cell
centres), ``bad_tiles.csv`` (tiles skipped as undecodable; header only when none),
``thumbnail.png``, ``heatmap.png``, ``report.html``, ``summary.json``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .runstate import atomic_write
from .tiling import Geometry

__all__ = ["Aggregate", "aggregate", "write_report", "results_dataset", "write_tables", "write_text_tables",
           "write_count_maps", "Tables", "figures",
           "slide_figure", "heatmap_figure", "SlideFigure", "BAD_TILE_FIELDS"]

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


def _tissue_per_cell(tm, g: float, shape: tuple[int, int]) -> np.ndarray:
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


def aggregate(records: list[dict], tm, geom: Geometry, grid_um: tuple[float, ...], grid_shape) -> Aggregate:
    """Sum tile records (in key order, so totals do not depend on completion order)."""
    records = sorted(records, key=lambda r: tuple(int(v) for v in r["key"].split("_")))
    total = float(sum(r["sum"] for r in records))
    peaks = [p for r in records for p in r["peaks"]]
    pk = np.asarray(peaks, dtype=np.float64).reshape(-1, 3)
    counts, tissue = {}, {}
    for g, shape in zip(grid_um, grid_shape):
        c = np.zeros(shape[0] * shape[1], dtype=np.float64)
        for r in records:
            part = r["grid"].get(str(g))
            if part and part["i"]:
                np.add.at(c, np.asarray(part["i"], dtype=np.int64), np.asarray(part["v"]))
        counts[g] = c.reshape(shape)
        tissue[g] = _tissue_per_cell(tm, g, shape)
    bad = [{"tile": r["key"], "error": r.get("error", "")} for r in records if r.get("bad")]
    agg = Aggregate(total, pk, counts, tissue, bad_tiles=bad)
    agg.regional = {f"{g:g}um": _regional(counts[g], tissue[g], g) for g in grid_um}
    return agg


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


def _decodable_level(slide, first: int) -> tuple[np.ndarray, int]:
    """Pixels of level ``first``, or of the next coarser level that decodes (black if none).

    A picture is not worth failing a finished count for (undecodable tiles, --skip-bad-tiles).
    """
    from .errors import TileReadError

    for level in range(first, len(slide.shapes)):
        h, w = slide.shapes[level][:2]
        try:
            return slide.read_region(level, 0, 0, h, w), level
        except TileReadError:
            continue
    return np.zeros(slide.shapes[-1], np.uint8), len(slide.shapes) - 1


#: longer side of the thumbnail the pictures are drawn from (the axes are ~570 px)
_THUMB_SIDE = 768


def _thumbnail(slide, max_side: int = 1024) -> tuple[np.ndarray, int]:
    """Smallest level that still has >= max_side/2 px on its longer side, as RGB uint8."""
    from .io import reduce_level

    best = len(slide.shapes) - 1
    for i, shape in enumerate(slide.shapes):
        if max(shape[:2]) <= max_side * 2:
            best = i
            break
    lh, lw = slide.shapes[best][:2]
    if max(lh, lw) > 4 * max_side:  # no small level (e.g. a flat TIFF): subsample it block by block
        k = int(np.ceil(max(lh, lw) / max_side))
        img = reduce_level(slide, best, k, "subsample")
    else:
        img, best = _decodable_level(slide, best)
    h, w = img.shape[:2]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    step = max(1, int(np.ceil(max(h, w) / max_side)))
    img = img[::step, ::step, :3]
    # fluorescence scans are dark: stretch for display only
    lo, hi = np.percentile(img, [1, 99.8])
    if hi - lo > 1 and img.mean() < 100:
        img = np.clip((img.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    return img, best


@dataclass
class SlideFigure:
    """The slide picture with the tissue outline, and the thumbnail it was drawn on."""

    png: bytes
    thumb: np.ndarray  # (h, w, 3) uint8, display-stretched
    extent_um: list[float]  # [0, width, height, 0] of the whole slide in um


def slide_figure(slide, tm) -> SlideFigure:
    """Thumbnail PNG with the tissue outline; needs no counts, so :func:`wsicount.run` draws it
    while the model loads."""
    from .pictures import Picture, outline, png

    thumb, _ = _thumbnail(slide, _THUMB_SIDE)
    h0, w0 = slide.shapes[0][:2]
    ext_um = [0, w0 * slide.mpp, h0 * slide.mpp, 0]
    pic = Picture.new(ext_um[1], ext_um[2])
    pic.show(thumb)
    px = pic.pixels()
    # mask pixel i covers [i, i+1) x scale level-0 px
    px[outline(pic.sample(tm.mask, tm.mpp0 * tm.scale_y, tm.mpp0 * tm.scale_x))] = (0, 255, 0)
    pic.put(px)
    pic.axes("slide and tissue outline")
    return SlideFigure(png(pic), thumb, ext_um)


#: opacity of the heat map over the thumbnail
_HEAT_ALPHA = 0.6


def heatmap_figure(sf: SlideFigure, agg: Aggregate, g: float | None = None) -> bytes:
    """Density heat map PNG over the thumbnail (cells/mm² per ``g``-um cell; default the finest grid).

    Grid cells with under a quarter of their area on tissue are left out (their density is
    noise); the colour scale runs from the lowest to the highest density of the other cells.
    """
    from .pictures import Picture, inferno, png

    g = min(agg.counts) if g is None else g
    c, t = agg.counts[g], agg.tissue_mm2[g]
    dens = np.where(t > 0.25 * (g / 1000) ** 2, c / np.maximum(t, 1e-12), np.nan)
    pic = Picture.new(sf.extent_um[1], sf.extent_um[2], colorbar=True)
    pic.show(sf.thumb)
    shown = pic.sample(dens, g, g)
    ok = np.isfinite(shown)
    vmin, vmax = (float(np.nanmin(dens)), float(np.nanmax(dens))) if ok.any() else (0.0, 1.0)
    level = np.clip((shown[ok] - vmin) / ((vmax - vmin) or 1.0) * 255.0, 0, 255).round().astype(np.intp)
    px = pic.pixels()
    px[ok] = (px[ok] * (1 - _HEAT_ALPHA) + inferno()[level] * _HEAT_ALPHA).round().astype(np.uint8)
    pic.put(px)
    pic.axes("cell density")
    pic.colorbar(vmin, vmax, f"cells / mm² ({g:g} µm cells)")
    return png(pic)


def figures(slide, tm, agg: Aggregate, g: float | None = None) -> tuple[bytes, bytes]:
    """Thumbnail PNG and density heat map over it (see :func:`slide_figure`, :func:`heatmap_figure`)."""
    sf = slide_figure(slide, tm)
    return sf.png, heatmap_figure(sf, agg, g)


REGION_FIELDS = ["grid_um", "row", "col", "x0_um", "y0_um", "x1_um", "y1_um", "tissue_fraction", "tissue_mm2", "count",
                 "cells_per_mm2"]


def _region_columns(agg: Aggregate, g: float) -> dict[str, list]:
    """regions.csv's columns for the ``g``-um grid: one entry per grid cell with tissue or counts, row-major.

    Computed on whole arrays (a slide has 10^4+ grid cells); each value equals the scalar
    expression it replaces (same dtypes, Python's ``round`` for the fraction).
    """
    t, c = agg.tissue_mm2[g], agg.counts[g]
    r, col = np.nonzero((t > 0) | (c > 0))
    tv, cv = t[r, col], c[r, col]
    has = tv > 0
    per = np.divide(cv, tv, out=np.zeros(len(tv), dtype=np.result_type(cv, tv)), where=has)
    return {"grid_um": [g] * len(r), "row": r.tolist(), "col": col.tolist(),
            "x0_um": (col * g).tolist(), "y0_um": (r * g).tolist(), "x1_um": ((col + 1) * g).tolist(),
            "y1_um": ((r + 1) * g).tolist(), "tissue_fraction": [round(v, 6) for v in (tv / (g / 1000.0) ** 2).tolist()],
            "tissue_mm2": tv.tolist(), "count": cv.tolist(),
            "cells_per_mm2": [v if h else "" for v, h in zip(per.tolist(), has.tolist())]}


def _regions_csv(columns: dict[float, dict[str, list]]) -> str:
    """regions.csv text from each grid's :func:`_region_columns`: what ``csv.DictWriter`` writes (floats as ``repr``)."""
    lines = [",".join(REGION_FIELDS)]
    for cols in columns.values():
        txt = [list(map(_csv_field if k == "cells_per_mm2" else str if k in ("row", "col") else repr, cols[k]))
               for k in REGION_FIELDS]
        lines.extend(map(",".join, zip(*txt)))
    return "\n".join(lines) + "\n"


def _csv_field(v: Any) -> str:
    """A value as the csv module writes it: floats by ``repr``, others by ``str``."""
    return repr(v) if isinstance(v, float) else str(v)


def _regions_rows(cols: dict[str, list]) -> list[dict[str, Any]]:
    """One grid's :func:`_region_columns` as row dicts (what the HTML report lists)."""
    return [dict(zip(REGION_FIELDS, row)) for row in zip(*(cols[k] for k in REGION_FIELDS))]


def _csv_text(rows: list[dict[str, Any]], fields: list[str]) -> str:
    """Rows as CSV text."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


CELL_FIELDS = ["x_px", "y_px", "x_um", "y_um", "peak_density"]


def _cells(agg: Aggregate, geom: Geometry, mpp0: float) -> dict[str, np.ndarray]:
    """Detected cell centres in level-0 pixels and um, as columns (vectorised: slides have 10^5+ cells)."""
    pk = np.asarray(agg.peaks, dtype=np.float64).reshape(-1, 3)
    yu, xu = (pk[:, 0] + 0.5) * geom.model_mpp, (pk[:, 1] + 0.5) * geom.model_mpp
    return {"x_px": np.round(xu / mpp0 - 0.5, 2), "y_px": np.round(yu / mpp0 - 0.5, 2),
            "x_um": np.round(xu, 3), "y_um": np.round(yu, 3), "peak_density": pk[:, 2]}


def _cells_csv(cells: dict[str, np.ndarray]) -> str:
    """cells.csv text: a header and one row per cell."""
    cols = [cells[k].tolist() for k in CELL_FIELDS]
    return "\n".join([",".join(CELL_FIELDS), *(",".join(map(repr, row)) for row in zip(*cols))]) + "\n"


def _geojson(cells: dict[str, np.ndarray], units: str, mpp0: float) -> str:
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


def _html(summary: dict[str, Any], thumb: bytes, heat: bytes, rows: list[dict[str, Any]], g: float) -> str:
    """Self-contained HTML report (images embedded)."""
    def img(b: bytes) -> str:
        return f'<img src="data:image/png;base64,{base64.b64encode(b).decode()}" style="max-width:48%">'

    reg = summary["regional"].get(f"{g:g}um", {})
    cpm = summary["cells_per_mm2"]
    facts = [("Slide", summary["slide"]["path"]), ("Vendor", summary["slide"].get("vendor")),
             ("Total cells", f"{summary['total_cells']:.1f}"), ("Tissue area", f"{summary['tissue_area_mm2']:.3f} mm²"),
             ("Cells per mm² of tissue", f"{cpm:.1f}" if cpm is not None else "n/a"),
             ("Cells detected (peaks)", summary["n_cells_detected"]),
             (f"Min density ({g:g} µm cells)", _loc(reg.get("min"))),
             (f"Max density ({g:g} µm cells)", _loc(reg.get("max"))),
             ("Model", f"{summary['model']['name']} v{summary['model']['version']} ({summary['model']['arch']})"),
             ("Complete", summary["complete"]),
             ("Undecodable tiles (counted as 0 cells)", len(summary.get("bad_tiles", []))),
             ("Run time", f"{summary['timings'].get('total', 0):.1f} s")]
    table = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    sel = [r for r in rows if r["grid_um"] == max(summary["parameters"]["grid_um"])]
    sel = sorted(sel, key=lambda r: (-(r["count"] or 0)))[:200]
    head = "".join(f"<th>{h}</th>" for h in ("row", "col", "x0 µm", "y0 µm", "tissue %", "count", "cells/mm²"))
    body = "".join(
        f"<tr><td>{r['row']}</td><td>{r['col']}</td><td>{r['x0_um']:.0f}</td><td>{r['y0_um']:.0f}</td>"
        f"<td>{100 * r['tissue_fraction']:.1f}</td><td>{r['count']:.1f}</td>"
        f"<td>{r['cells_per_mm2'] if r['cells_per_mm2'] == '' else format(r['cells_per_mm2'], '.1f')}</td></tr>"
        for r in sel)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>wsicount report</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}</style></head><body>"
            f"<h1>wsicount report</h1><table>{table}</table><h2>Slide and density</h2>{img(thumb)} {img(heat)}"
            f"<h2>Regions ({max(summary['parameters']['grid_um']):g} µm grid, top {len(sel)} by count)</h2>"
            f"<table><tr>{head}</tr>{body}</table><p>Full table: regions.csv. Cell centres: cells.csv, cells.geojson."
            f" Density map: density/ (OME-Zarr).</p></body></html>")


def _loc(d: dict | None) -> str:
    """Format a regional extreme."""
    if not d:
        return "n/a"
    return f"{d['density']:.1f} cells/mm² at x={d['x_um']:.0f} µm, y={d['y_um']:.0f} µm"


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
    columns = {g: _region_columns(agg, g) for g in agg.counts}
    atomic_write(out / "regions.csv", _regions_csv(columns))
    rows = _regions_rows(columns[max(columns)]) if columns else []  # the HTML lists the coarsest grid
    cells = _cells(agg, geom, mpp0)
    atomic_write(out / "cells.csv", _cells_csv(cells))
    atomic_write(out / "cells.geojson", _geojson(cells, units, mpp0))
    atomic_write(out / "bad_tiles.csv", _csv_text(agg.bad_tiles, BAD_TILE_FIELDS))
    return Tables(rows, cells)


def write_count_maps(out: Path, agg: Aggregate) -> None:
    """Write ``counts_<g>um`` and ``tissue_<g>um``, the count and tissue-area maps of each grid, as NGFF images."""
    from .stitch import write_image

    for g in agg.counts:
        write_image(out, f"counts_{g:g}um", agg.counts[g].astype(np.float32), g)
        write_image(out, f"tissue_{g:g}um", agg.tissue_mm2[g].astype(np.float32), g)


def write_report(out: Path, slide, tm, geom: Geometry, agg: Aggregate, summary: dict[str, Any], t_start: float,
                 units: str = "px", pngs: tuple[bytes, bytes] | None = None, tables: Tables | None = None):
    """Write the tables (unless ``tables`` says they are written), figures, HTML and (last) summary.json; return the cell table.

    ``pngs``: the (thumbnail, heat map) of :func:`figures` when already drawn.
    """
    t = time.perf_counter()
    tables = tables or write_tables(out, slide, geom, agg, units)
    g_small = min(agg.counts)
    thumb, heat = pngs if pngs is not None else figures(slide, tm, agg, g_small)
    atomic_write(out / "thumbnail.png", thumb)
    atomic_write(out / "heatmap.png", heat)
    summary["timings"]["report"] = summary["timings"].get("report", 0.0) + time.perf_counter() - t
    summary["timings"]["total"] = time.perf_counter() - t_start
    summary["outputs"] = ["summary.json", "regions.csv", "cells.csv", "cells.geojson", "bad_tiles.csv", "report.html",
                          "thumbnail.png", "heatmap.png", "density/ (OME-Zarr)"]
    atomic_write(out / "report.html", _html(summary, thumb, heat, tables.rows, g_small))
    atomic_write(out / "summary.json", json.dumps(_jsonable(summary), indent=2))
    return tables.cells


def _jsonable(o: Any) -> Any:
    """Convert numpy scalars/paths/tuples for json.dumps."""
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return o


def results_dataset(out: Path, tm, geom: Geometry, agg: Aggregate, summary: dict[str, Any], cells: dict[str, np.ndarray]):
    """Results as an xarray Dataset (density lazily from the Zarr store; imports dask and xarray)."""
    import dask.array as da
    import xarray as xr
    import zarr

    dens = da.from_zarr(zarr.open_array(str(out / "density" / "0"), mode="r"))
    m = geom.model_mpp
    data = {
        "density": xr.DataArray(dens, dims=("y", "x"), coords={"y": (np.arange(dens.shape[0]) + 0.5) * m,
                                                              "x": (np.arange(dens.shape[1]) + 0.5) * m},
                                attrs={"units": "cells per pixel", "mpp": m}),
        "tissue": xr.DataArray(tm.mask, dims=("mask_y", "mask_x"),
                               coords={"mask_y": (np.arange(tm.mask.shape[0]) + 0.5) * tm.mpp0 * tm.scale_y,
                                       "mask_x": (np.arange(tm.mask.shape[1]) + 0.5) * tm.mpp0 * tm.scale_x}),
        "cell_y_um": xr.DataArray(cells["y_um"], dims=("cell",)),
        "cell_x_um": xr.DataArray(cells["x_um"], dims=("cell",)),
    }
    for g in agg.counts:
        gy, gx = f"grid{g:g}_y", f"grid{g:g}_x"
        coords = {gy: (np.arange(agg.counts[g].shape[0]) + 0.5) * g, gx: (np.arange(agg.counts[g].shape[1]) + 0.5) * g}
        data[f"counts_{g:g}um"] = xr.DataArray(agg.counts[g], dims=(gy, gx), coords=coords)
        data[f"tissue_mm2_{g:g}um"] = xr.DataArray(agg.tissue_mm2[g], dims=(gy, gx), coords=coords)
    return xr.Dataset(data, attrs={k: summary[k] for k in ("total_cells", "tissue_area_mm2", "cells_per_mm2", "complete")}
                      | {"summary": summary})
