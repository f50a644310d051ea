"""The report's pictures: the slide thumbnail with the tissue outline, and the density heat map over it.

Both are drawn on the same box (:class:`~wsicount.report.pictures.Picture`) at the slide's
aspect, so they line up: a pixel of one is the same place of the slide as the pixel of the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..aggregate import Aggregate

__all__ = ["SlideFigure", "slide_figure", "heatmap_figure", "figures", "thumbnail", "for_heatmap", "heat_grid",
           "coarsen", "stretch", "HEAT_MIN_CELLS"]

#: cells a heat-map square holds on average, at least: counting noise (Poisson) is then <= 1/sqrt(25) = 20 %
#: of a square's density, so the map shows where density changes, not salt and pepper
HEAT_MIN_CELLS = 25
#: the heat map keeps at least this many squares along the grid's longer side
HEAT_MIN_SQUARES = 8


def _decodable_level(slide, first: int) -> tuple[np.ndarray, int]:
    """Pixels of level ``first``, or of the next coarser level that decodes (black if none).

    A picture is not worth failing a finished count for (undecodable tiles, --skip-bad-tiles).
    """
    from ..errors import TileReadError

    for level in range(first, len(slide.shapes)):
        h, w = slide.shapes[level][:2]
        try:
            return slide.read_region(level, 0, 0, h, w), level
        except TileReadError:
            continue
    return np.zeros(slide.shapes[-1], np.uint8), len(slide.shapes) - 1


#: longer side of the thumbnail the pictures are drawn from (the axes are ~570 px)
_THUMB_SIDE = 768


def thumbnail(slide, max_side: int = 1024) -> tuple[np.ndarray, int]:
    """Smallest level that still has >= max_side/2 px on its longer side, as RGB uint8."""
    from ..io import reduce_level

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
    return stretch(img[::step, ::step, :3]), best


def stretch(img: np.ndarray) -> np.ndarray:
    """A dark (fluorescence) picture stretched from its 1st to 99.8th percentile, for display only; others as they are."""
    lo, hi = np.percentile(img, [1, 99.8])
    if hi - lo > 1 and img.mean() < 100:
        return np.clip((img.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    return img


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

    thumb, _ = thumbnail(slide, _THUMB_SIDE)
    h0, w0 = slide.shapes[0][:2]
    ext_um = [0, w0 * slide.mpp, h0 * slide.mpp, 0]
    pic = Picture.new(ext_um[1], ext_um[2], colorbar=True)  # the heat map's canvas: the two line up side by side
    pic.show(thumb)
    px = pic.pixels()
    # mask pixel i covers [i, i+1) x scale level-0 px
    px[outline(pic.sample(tm.mask, tm.mpp0 * tm.scale_y, tm.mpp0 * tm.scale_x))] = (0, 255, 0)
    pic.put(px)
    pic.axes("slide and tissue outline")
    return SlideFigure(png(pic), thumb, ext_um)


#: opacity of the heat map over the thumbnail
_HEAT_ALPHA = 0.6


def heat_grid(agg: Aggregate) -> tuple[float, int, float]:
    """The heat map's squares: (the finest grid g, k, mean cells per square) for squares of k x k grid cells.

    The smallest k whose squares hold :data:`HEAT_MIN_CELLS` cells on average at the slide's
    pooled density, unless that leaves fewer than :data:`HEAT_MIN_SQUARES` squares along the
    grid's longer side (a small slide): then the largest k that keeps them.
    """
    g = min(agg.counts)
    c, t = agg.counts[g], agg.tissue_mm2[g]
    area = float(t.sum())
    density = float(c.sum()) / area if area > 0 else 0.0
    k = 1
    if density > 0:
        k = math.ceil(math.sqrt(HEAT_MIN_CELLS / density) * 1000.0 / g - 1e-9)
        k = int(max(1, min(k, max(c.shape) // HEAT_MIN_SQUARES)))
    return g, k, density * (k * g / 1000.0) ** 2


def coarsen(a: np.ndarray, k: int) -> np.ndarray:
    """Sums of ``k`` x ``k`` blocks of ``a`` (the last row and column of blocks may be partial)."""
    if k == 1:
        return a
    h, w = a.shape
    padded = np.zeros((-(-h // k) * k, -(-w // k) * k), dtype=a.dtype)
    padded[:h, :w] = a
    return padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k).sum(axis=(1, 3))


def heatmap_figure(sf: SlideFigure, agg: Aggregate, g: float | None = None) -> bytes:
    """Density heat map PNG over the thumbnail: cells/mm² per ``g``-um square (default :func:`heat_grid`'s squares).

    Squares with under a quarter of their area on tissue are left out (their density is
    noise); the colour scale runs from the lowest to the highest density of the other squares.
    """
    from .pictures import Picture, inferno, png

    if g is None:
        g, k, _ = heat_grid(agg)
        c, t = coarsen(agg.counts[g], k), coarsen(agg.tissue_mm2[g], k)
        g *= k
    else:
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
    pic.colorbar(vmin, vmax, f"cells / mm² ({g:g} µm squares)")
    return png(pic)


def figures(slide, tm, agg: Aggregate, g: float | None = None) -> tuple[bytes, bytes]:
    """Thumbnail PNG and density heat map over it (see :func:`slide_figure`, :func:`heatmap_figure`)."""
    sf = slide_figure(slide, tm)
    return sf.png, heatmap_figure(sf, agg, g)


def for_heatmap(agg: Aggregate) -> Aggregate:
    """The aggregate without its per-cell lists (what the heat map needs crosses a process cheaply)."""
    return replace(agg, peaks=agg.peaks[:0], regional={}, bad_tiles=[])
