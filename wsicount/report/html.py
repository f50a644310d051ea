"""report.html: one self-contained page (pictures embedded) with the run's facts and its densest regions."""

from __future__ import annotations

import base64
import html
from typing import Any

__all__ = ["report_html"]


def report_html(summary: dict[str, Any], thumb: bytes, heat: bytes, rows: list[dict[str, Any]], g: float) -> str:
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


