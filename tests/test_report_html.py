"""report.html as a reader sees it: the count as an integer with its interval slot, words not Python
values, regions in µm with no near-empty edge cells, a heat map at a readable scale, a close-up
with the cells ringed; rendered in headless Chromium (when installed) with every image loaded and
nothing wider than the window."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import wsicount
from wsicount.aggregate import Aggregate
from wsicount.cli import cli
from wsicount.report.figures import HEAT_MIN_CELLS, HEAT_MIN_SQUARES, coarsen, heat_grid
from wsicount.report.html import REGION_MIN_TISSUE, count_text, interval_text, report_html
from wsicount.report.zoom import ZOOM_PX, zoom_figure
from wsicount.store import tidy
from wsicount.synth import synth_slide


def _summary(**over) -> dict:
    s = {"total_cells": 5429.9, "tissue_area_mm2": 17.5, "cells_per_mm2": 310.3, "complete": True,
         "n_cells_detected": 5597, "bad_tiles": [], "wsicount_version": "0.1.0", "finished_utc": "2026-12-07T02:00:00+00:00",
         "slide": {"path": "/data/a.ndpi", "vendor": "hamamatsu", "mpp": 0.4523, "mpp_source": "file",
                   "levels": [{"width": 12288, "height": 12288}]},
         "model": {"name": "melanocyte-trp1", "version": "1", "arch": "unet"},
         "processing": {"model_mpp": 1.8092, "precision": "bf16", "device": "cpu", "n_tiles_tissue": 40, "tile_size": 1024},
         "timings": {"total": 83.4}}
    return {**s, **over}


def _row(col: int, frac: float, count: float, g: float = 1000.0) -> dict:
    t = frac * (g / 1000) ** 2
    return {"grid_um": g, "row": 0, "col": col, "x0_um": col * g, "y0_um": 0.0, "x1_um": (col + 1) * g, "y1_um": g,
            "tissue_fraction": frac, "tissue_mm2": t, "count": count, "cells_per_mm2": count / t if t else ""}


def test_the_count_is_a_whole_number_with_its_interval_slot() -> None:
    page = report_html(_summary(), b"png", b"png", [], "caption")
    assert "5\u2009430 cells" in page and "5429.9" not in page
    assert "uncertainty interval: not computed" in page
    iv = _summary(count_interval={"low": 5210.2, "high": 5655.7, "level": 0.95})
    assert "95 % interval 5\u2009210 – 5\u2009656" in report_html(iv, b"png", b"png", [], "c")
    assert interval_text({"count_interval": {"low": 1, "high": 3, "level": 0.9}}) == "90 % interval 1 – 3"
    assert count_text(999.5) == "1\u2009000"


def test_facts_are_words_and_say_which_number_to_use() -> None:
    page = report_html(_summary(), b"png", b"png", [], "caption")
    assert ">True<" not in page and "yes: every tissue tile counted" in page
    assert "use it for totals" in page and "5\u2009597 cell centres" in page
    for fact in ("melanocyte-trp1 v1 (unet)", "bf16 on cpu", "0.4523 µm/px", "1 min 23 s", "2026-12-07 02:00:00 UTC",
                 "0.1.0"):
        assert fact in page, fact
    bad = _summary(bad_tiles=[{"tile": "0_0"}])
    assert "1 undecodable tile(s) counted as 0 cells" in report_html(bad, b"png", b"png", [], "c")


def test_regions_leave_out_edge_cells_and_are_sorted_densest_first() -> None:
    rows = [_row(0, 1.0, 300.0), _row(1, 0.9, 450.0), _row(2, 0.05, 40.0), _row(3, REGION_MIN_TISSUE, 100.0)]
    page = report_html(_summary(), b"png", b"png", rows, "caption")
    table = page[page.index("<h2>Regions"):]
    cells = re.findall(r"<td class='num'>([^<]*)</td>", table)
    densities = [int(c.replace("\u2009", "")) for c in cells[4::5]]
    assert densities == [500, 300, 200]  # 450/0.9, 300/1, 100/0.5; the 5 % edge cell is left out
    assert "3000–4000" in table and "2000–3000" not in table
    assert "(3 of 4)" in table


def _agg(counts: np.ndarray, g: float = 100.0) -> Aggregate:
    tissue = np.full(counts.shape, (g / 1000) ** 2)
    return Aggregate(float(counts.sum()), np.zeros((0, 3)), {g: counts}, {g: tissue})


def test_heat_map_squares_hold_enough_cells() -> None:
    g, k, per = heat_grid(_agg(np.full((60, 80), 3.0)))  # 300 cells/mm²: 3 per 100 µm cell
    assert (g, k) == (100.0, 3) and per == pytest.approx(27.0) and per >= HEAT_MIN_CELLS
    g, k, per = heat_grid(_agg(np.full((60, 80), 40.0)))  # dense: the grid as it is
    assert k == 1 and per == pytest.approx(40.0)
    _, k, per = heat_grid(_agg(np.full((10, 12), 3.0)))  # a small slide keeps its squares
    assert k == max(1, 12 // HEAT_MIN_SQUARES) and per < HEAT_MIN_CELLS
    a = np.arange(20.0).reshape(4, 5)
    c = coarsen(a, 2)
    assert c.shape == (2, 3) and c.sum() == a.sum() and c[0, 0] == a[:2, :2].sum() and c[1, 2] == a[2:, 4].sum()


def test_tidy_rounds_float_noise_only() -> None:
    assert tidy({"mpp": 0.45230000000000004, "levels": [{"mpp": 1.8092000000000001}], "n": 3, "s": "x"}) == \
        {"mpp": 0.4523, "levels": [{"mpp": 1.8092}], "n": 3, "s": "x"}
    assert tidy(0.24317731) == 0.24317731


class _Slide:
    """A grey level-0-only slide of 0.5 µm pixels."""

    def __init__(self, side: int = 2000) -> None:
        self.shapes, self.mpp = [(side, side, 3)], 0.5

    def best_level(self, target: float) -> int:
        return 0

    def level_mpp(self, level: int) -> float:
        return self.mpp

    def read_region(self, level, y, x, h, w):
        return np.full((h, w, 3), 200, np.uint8)


def test_close_up_rings_the_cells_inside_it() -> None:
    from io import BytesIO

    from PIL import Image

    model_mpp = 2.0
    peaks = np.array([[100.0, 100.0, 1.0], [110.0, 130.0, 1.0], [400.0, 400.0, 1.0]])  # the last one lies outside
    z = zoom_figure(_Slide(), model_mpp, peaks, centre_um=(220.0, 240.0))
    assert (z.x0_um, z.y0_um, z.n_cells) == (115.0, 95.0, 2)
    px = np.asarray(Image.open(BytesIO(z.png)).convert("RGB")).astype(int)
    assert px.shape == (ZOOM_PX, ZOOM_PX, 3)
    k = ZOOM_PX / z.side_um
    y, x = round(((100 + 0.5) * model_mpp - z.y0_um) * k), round(((100 + 0.5) * model_mpp - z.x0_um) * k)
    ring = px[y - 10 : y + 11, x - 10 : x + 11]
    assert ((ring[..., 0] < 60) & (ring[..., 2] > 200)).any()  # cyan around the cell
    assert (px[y, x] == 200).all()  # the cell itself is not covered


# -- a real run, rendered in a real browser -------------------------------------------------------------

_CHECK = """<script>
window.addEventListener("load", () => {
  const root = document.documentElement, imgs = [...document.images];
  const wide = [...document.querySelectorAll("body *")].filter(e => e.getBoundingClientRect().right > root.clientWidth + 1);
  const clipped = [...document.querySelectorAll("td, th, figcaption, p, h1, h2")].filter(e => e.scrollWidth > e.clientWidth + 1);
  const r = {images: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
             wide: wide.map(e => e.tagName), clipped: clipped.map(e => e.tagName), page: root.scrollWidth - root.clientWidth,
             shown: imgs.map(i => [Math.round(i.getBoundingClientRect().width), Math.round(i.getBoundingClientRect().top)])};
  document.body.setAttribute("data-check", JSON.stringify(r));
});
</script>"""


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture(scope="module")
def run_out(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("report")
    slide = synth_slide(d / "s.ndpi", format="ndpi", size=(4096, 4096), seed=4, cell_density_per_mm2=400.0).path
    wsicount.count(slide, d / "out", progress=False)
    return d / "out"


def test_summary_and_info_numbers_read_cleanly(run_out: Path) -> None:
    s = json.loads((run_out / "summary.json").read_text())
    assert repr(s["slide"]["mpp"]) == "0.4523" and repr(s["processing"]["model_mpp"]) == "1.8092"
    assert s["finished_utc"].endswith("+00:00")
    page = (run_out / "report.html").read_text()
    assert f"{count_text(s['total_cells'])} cells" in page and "True" not in page
    info = CliRunner().invoke(cli, ["info", str(run_out.parent / "s.ndpi")])
    assert info.exit_code == 0 and re.search(r"mpp: 0.4523\n", info.output), info.output


@pytest.mark.parametrize("width", [1280, 700])
def test_report_renders_in_chromium(run_out: Path, tmp_path: Path, width: int) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium here (apt-get install chromium)")
    page = tmp_path / "report.html"
    page.write_text((run_out / "report.html").read_text().replace("</body>", _CHECK + "</body>"))
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},1000",
                        "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    found = re.search(r'data-check="([^"]*)"', r.stdout)
    assert found, r.stderr[-2000:]
    check = json.loads(found.group(1).replace("&quot;", '"'))
    assert check["images"] == 3 and check["broken"] == 0  # slide, heat map, close-up
    assert check["wide"] == [] and check["clipped"] == [] and check["page"] <= 0
    (w1, t1), (w2, t2) = check["shown"][:2]
    assert w1 == w2  # the slide and its heat map at the same size
    if width >= 1000:
        assert t1 == t2  # side by side, aligned
