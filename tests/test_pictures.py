"""The report's pictures: layout, ticks, colours, and what slide_figure / heatmap_figure draw where."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from wsicount.report import pictures
from wsicount.report.pictures import Picture, inferno, outline, ticks
from wsicount.aggregate import Aggregate
from wsicount.report import heatmap_figure, slide_figure
from wsicount.tissue import TissueMask


@pytest.mark.parametrize("extent", [(13500.0, 12000.0), (1200.0, 14400.0), (30000.0, 900.0), (50.0, 50.0)])
@pytest.mark.parametrize("colorbar", [False, True])
def test_box_keeps_the_slide_aspect_with_margins(extent, colorbar):
    """The image box has the extent's aspect (to the pixel), its longer side AXES_PX, and room around it."""
    pic = Picture.new(*extent, colorbar=colorbar)
    h, w = pic.size
    assert max(h, w) == pictures.AXES_PX
    assert abs(w / h - extent[0] / extent[1]) <= 1.0 / min(h, w) * max(1.0, extent[0] / extent[1])
    x0, y0, x1, y1 = pic.box
    W, H = pic.image.size
    assert x0 >= pictures.LEFT and y0 >= pictures.TOP and H - y1 >= pictures.BOTTOM
    assert W - x1 >= pictures.RIGHT + (pictures.CB_GAP + pictures.CB_W + pictures.CB_ROOM if colorbar else 0)


@pytest.mark.parametrize("lo,hi", [(0.0, 13500.0), (0.0, 1.0), (0.0, 7.3), (12.5, 913.0), (-3.0, 3.0), (0.0, 2.4e6)])
def test_ticks_are_round_steps_inside_the_range(lo, hi):
    t = ticks(lo, hi)
    assert 3 <= len(t) <= 11
    assert t[0] >= lo - 1e-9 * abs(hi - lo) and t[-1] <= hi + 1e-9 * abs(hi - lo)
    step = np.diff(t)
    assert np.allclose(step, step[0])
    mantissa = step[0] / 10 ** np.floor(np.log10(step[0]))
    assert min(abs(mantissa - m) for m in (1, 2, 2.5, 5)) < 1e-9
    assert t[0] - lo < step[0] - 1e-9 * abs(hi - lo)  # the first tick is the first round value in range


def test_ticks_of_an_empty_range_are_one_value():
    assert list(ticks(4.0, 4.0)) == [4.0]


def test_inferno_table_matches_matplotlib():
    """The 17-point table stays within 7/255 of matplotlib's 'inferno', ends included."""
    import matplotlib

    ref = np.round(matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255)
    lut = inferno().astype(float)
    assert lut.shape == (256, 3)
    assert np.abs(lut - ref).max() <= 7
    assert np.array_equal(lut[[0, -1]], ref[[0, -1]])


def test_outline_marks_both_sides_of_every_edge_and_nothing_else():
    m = np.zeros((9, 9), bool)
    m[2:6, 3:7] = True
    e = outline(m)
    interior, far = m.copy(), ~m.copy()
    interior[:3, :] = interior[5:, :] = False
    interior[:, :4] = interior[:, 6:] = False  # 2 px inside every edge
    far[1:7, 2:8] = False  # 2 px outside every edge
    assert e[2, 3] and e[1, 3] and e[5, 6] and e[5, 7] and e[6, 6]
    assert not e[interior].any() and not e[far].any()
    assert not outline(np.ones((5, 5), bool)).any()


def _png_pixels(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class _FlatSlide:
    """A one-level grey slide of ``shape`` px at ``mpp`` (what _thumbnail reads)."""

    def __init__(self, shape: tuple[int, int], mpp: float, value: int = 40):
        self.shapes, self.mpp, self._v = [(*shape, 3)], mpp, value

    def read_region(self, level, y, x, h, w):
        return np.full((h, w, 3), self._v, np.uint8)


def test_slide_picture_outlines_the_mask_where_it_lies():
    """The lime outline runs along the mask's edge at its µm position, not elsewhere; the canvas is a PNG."""
    sl = _FlatSlide((800, 1200), 2.0)  # 2400 x 1600 um
    mask = np.zeros((100, 150), bool)  # 16 um mask px
    mask[25:75, 30:90] = True  # x 480..1440 um, y 400..1200 um
    tm = TissueMask(mask, 8.0, 8.0, 2.0, "test")
    sf = slide_figure(sl, tm)
    px = _png_pixels(sf.png)
    pic = Picture.new(2400.0, 1600.0)
    x0, y0, x1, y1 = pic.box
    box = px[y0:y1, x0:x1]
    lime = (box[..., 0] == 0) & (box[..., 1] == 255) & (box[..., 2] == 0)
    ys, xs = np.nonzero(lime)
    k = pictures.AXES_PX / 2400.0  # box px per um
    assert abs(xs.min() - 480 * k) <= 2 and abs(xs.max() - 1440 * k) <= 2
    assert abs(ys.min() - 400 * k) <= 2 and abs(ys.max() - 1200 * k) <= 2
    assert lime.sum() < 6 * (960 + 800) * k  # a thin line, not a filled area
    assert sf.extent_um == [0, 2400.0, 1600.0, 0]


def test_heat_map_colours_cells_by_density_and_leaves_bare_glass_alone():
    """The densest grid cell gets inferno's top colour blended over the thumbnail, the emptiest its bottom; cells with
    under a quarter of their area on tissue stay the thumbnail's grey; the colour bar spans the densities."""
    sl = _FlatSlide((400, 600), 2.0)  # 1200 x 800 um
    tm = TissueMask(np.ones((40, 60), bool), 10.0, 10.0, 2.0, "test")
    sf = slide_figure(sl, tm)
    g = 400.0  # a 2 x 3 grid of 400 um cells
    full = (g / 1000) ** 2
    tissue = np.array([[full, full, 0.1 * full], [full, full, full]])
    counts = np.array([[16.0, 80.0, 5.0], [32.0, 48.0, 64.0]])  # 100..500 cells/mm²; (0, 2) is left out
    agg = Aggregate(total=float(counts.sum()), peaks=np.zeros((0, 3)), counts={g: counts}, tissue_mm2={g: tissue})
    px = _png_pixels(heatmap_figure(sf, agg, g))
    pic = Picture.new(1200.0, 800.0, colorbar=True)
    x0, y0, x1, y1 = pic.box
    (h, w) = pic.size

    def centre(r: int, c: int) -> np.ndarray:
        return px[y0 + int((r + 0.5) * h / 2), x0 + int((c + 0.5) * w / 3)].astype(int)

    grey = sf.thumb[0, 0].astype(float)
    lut = inferno().astype(float)
    blend = lambda colour: np.round(grey * 0.4 + colour * 0.6)  # noqa: E731
    assert np.abs(centre(0, 1) - blend(lut[-1])).max() <= 1  # 500 cells/mm², the maximum
    assert np.abs(centre(0, 0) - blend(lut[0])).max() <= 1  # 100, the minimum
    assert np.abs(centre(0, 2) - grey).max() <= 1  # not enough tissue: no colour
    mid = centre(1, 1)  # 300: half way up the scale
    assert np.abs(mid - blend(lut[128])).max() <= 2
    bar = px[y0:y1, x1 + pictures.CB_GAP + pictures.CB_W // 2]
    assert np.array_equal(bar[0], lut[-1]) and np.array_equal(bar[-1], lut[0])
