"""report.html: one self-contained page (pictures embedded) to show a slide's count in a lab meeting.

Top to bottom: the count (an integer, with its uncertainty interval when the run has one),
the tissue area and density, and which number to use; the slide and the density map side by
side at the same scale; a close-up with the detected cells ringed beside the run's facts
(model, precision, µm/px, version, date, run time); the densest and sparsest regions of the
coarsest grid in µm. Numbers are right-aligned; nothing is wider than the page.
"""

from __future__ import annotations

import base64
import html
from typing import Any

__all__ = ["report_html", "count_text", "interval_text", "REGION_MIN_TISSUE"]

#: regions with less of their area on tissue are left out of the table (edge cells: noisy densities)
REGION_MIN_TISSUE = 0.5
#: regions listed from each end of the density ranking
REGION_ROWS = 8

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f4f2;color:#222}
main{max-width:1180px;margin:0 auto;padding:20px 28px;background:#fff;overflow-wrap:anywhere}
h1{font-size:1.5em;margin:0 0 2px}h2{font-size:1.1em;margin:26px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#666;margin:0 0 14px}
.result{display:flex;flex-wrap:wrap;gap:8px 40px;align-items:baseline;background:#f7f7fb;padding:14px 18px;
border-radius:6px}
.count{font-size:2.6em;font-weight:600}.interval{font-size:1.1em;color:#444}.note{flex-basis:100%;color:#555;margin:4px 0 0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.close{display:grid;grid-template-columns:minmax(0,5fr) minmax(0,6fr);gap:24px;align-items:start}
figure{margin:0}figure img{width:100%;height:auto;display:block;border:1px solid #ddd}
figcaption{font-size:.88em;color:#555;margin-top:4px}
table{border-collapse:collapse;width:100%;font-size:.92em}
td,th{border-bottom:1px solid #e4e4e4;padding:4px 8px;text-align:left;vertical-align:top}
th{font-weight:600;color:#333}.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
footer{color:#777;font-size:.85em;margin-top:24px}
@media (max-width:760px){.pair,.close{grid-template-columns:1fr}}
"""


def report_html(summary: dict[str, Any], thumb: bytes, heat: bytes, rows: list[dict[str, Any]], heat_caption: str,
                zoom: Any | None = None) -> str:
    """The page: ``rows`` are the coarsest grid's regions.csv rows, ``zoom`` a :class:`~wsicount.report.zoom.Zoom`."""
    slide = summary["slide"]
    name = html.escape(str(slide["path"]).replace("\\", "/").rsplit("/", 1)[-1])
    body = [f"<h1>Cell count: {name}</h1>",
            f"<p class='sub'>{html.escape(_date(summary))} · wsicount {html.escape(summary['wsicount_version'])}</p>",
            _warnings(summary), _result(summary),
            "<div class='pair'>", _figure(thumb, "The slide; tissue found outlined in green."),
            _figure(heat, heat_caption), "</div>",
            "<h2>Close-up and run</h2><div class='close'>",
            _figure(zoom.png, _zoom_caption(zoom)) if zoom is not None else "<p>No close-up: no region is mostly tissue.</p>",
            _facts(summary), "</div>", _regions(rows, summary),
            "<footer>Full tables: regions.csv (every grid cell), cells.csv and cells.geojson (cell centres). "
            "Density map: this folder is an OME-Zarr image (open it in napari or QuPath); summary.json holds every "
            "number above.</footer>"]
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>wsicount: {name}</title><style>{_CSS}</style></head><body><main>{''.join(body)}</main></body></html>")


def count_text(n: float) -> str:
    """A count as a whole number with thin spaces between thousands (5 430)."""
    return f"{round(n):,}".replace(",", "\u2009")


def interval_text(summary: dict[str, Any]) -> str:
    """The count's uncertainty interval (``summary["total_cells_ci"]``: lo, hi, level), or what stands in for it."""
    iv = summary.get("total_cells_ci")
    if not iv:
        return "uncertainty interval: not computed for this run"
    return f"{100 * iv.get('level', 0.95):g} % interval {count_text(iv['lo'])} – {count_text(iv['hi'])}"


def _warnings(s: dict[str, Any]) -> str:
    """The domain guard's warnings (summary.json "warnings"), above the result they qualify."""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in s.get("warnings", []))
    return f"<section class='warnings' style='color:#a00'><h2>Warnings</h2><ul>{items}</ul></section>" if items else ""


def _result(s: dict[str, Any]) -> str:
    if s["total_cells"] < 0:  # never shown as a count: the warnings say why
        return (f"<section class='result'><div class='count'>No count</div><div>the density map sums to "
                f"{s['total_cells']:.0f}, below zero: the slide is outside the model's domain</div></section>")
    cpm = s["cells_per_mm2"]
    density = f"{count_text(cpm)} cells/mm²" if cpm is not None else "no tissue area"
    return (f"<section class='result'><div class='count'>{count_text(s['total_cells'])} cells</div>"
            f"<div class='interval'>{html.escape(interval_text(s))}</div>"
            f"<div>in {s['tissue_area_mm2']:.2f} mm² of tissue · {density}</div>"
            "<p class='note'>The count is the sum of the density map over the tissue: use it for totals and "
            f"densities. {count_text(s['n_cells_detected'])} cell centres were located (the map's peaks, ringed in "
            "the close-up): use them for positions; touching or faint cells can merge or drop out there.</p></section>")


def _figure(png: bytes, caption: str) -> str:
    src = base64.b64encode(png).decode()
    return f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{src}'>" \
           f"<figcaption>{html.escape(caption)}</figcaption></figure>"


def _zoom_caption(z: Any) -> str:
    return (f"Close-up of the densest region: {z.side_um:.0f} × {z.side_um:.0f} µm at x = {z.x0_um:.0f} µm, "
            f"y = {z.y0_um:.0f} µm; {z.n_cells} detected cells ringed.")


def _facts(s: dict[str, Any]) -> str:
    sl, m, p = s["slide"], s["model"], s["processing"]
    bad = len(s.get("bad_tiles", []))
    rows = [("Slide", f"{sl.get('vendor') or 'unknown'} scan, {sl['levels'][0]['width']} × {sl['levels'][0]['height']} px"),
            ("Pixel size", f"{sl['mpp']:.4g} µm/px (from the {sl.get('mpp_source', 'file')})"),
            ("Model", f"{m['name']} v{m['version']} ({m['arch']}), run at {p['model_mpp']:.4g} µm/px"),
            ("Precision", f"{p['precision']} on {p['device']}"),
            ("Tiles", f"{p['n_tiles_tissue']} with tissue, {p['tile_size']} px"),
            ("Complete", "yes: every tissue tile counted" if s["complete"] and not bad else
             f"yes, but {bad} undecodable tile(s) counted as 0 cells" if s["complete"] else "no"),
            ("Run time", _duration(s["timings"].get("total", 0.0))),
            ("wsicount", s["wsicount_version"]), ("Date", _date(s))]
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</table>"


def _regions(rows: list[dict[str, Any]], s: dict[str, Any]) -> str:
    """The densest and the sparsest regions that are mostly tissue, in µm, densest first."""
    ok = sorted((r for r in rows if r["tissue_fraction"] >= REGION_MIN_TISSUE),
                key=lambda r: -float(r["cells_per_mm2"]))
    if not ok:
        return ""
    shown = ok if len(ok) <= 2 * REGION_ROWS else ok[:REGION_ROWS] + [None] + ok[-REGION_ROWS:]
    g = rows[0]["grid_um"]
    head = "<tr><th class='num'>x (µm)</th><th class='num'>y (µm)</th><th class='num'>tissue %</th><th class='num'>cells</th>" \
           "<th class='num'>cells/mm²</th></tr>"
    body = "".join(
        f"<tr><td colspan='5'>… {len(ok) - 2 * REGION_ROWS} more …</td></tr>" if r is None else
        f"<tr><td class='num'>{r['x0_um']:.0f}–{r['x1_um']:.0f}</td><td class='num'>{r['y0_um']:.0f}–{r['y1_um']:.0f}</td>"
        f"<td class='num'>{100 * r['tissue_fraction']:.0f}</td><td class='num'>{count_text(r['count'])}</td>"
        f"<td class='num'>{count_text(float(r['cells_per_mm2']))}</td></tr>" for r in shown)
    return (f"<h2>Regions: {g:g} µm squares at least {100 * REGION_MIN_TISSUE:.0f} % tissue, densest first "
            f"({len(ok)} of {len(rows)})</h2><table>{head}{body}</table>")


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{seconds:.1f} s"


def _date(s: dict[str, Any]) -> str:
    return s.get("finished_utc", "date not recorded").replace("T", " ").replace("+00:00", " UTC")
