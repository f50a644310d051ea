"""Local intensity normalisation of a slide, as each training image was normalised.

A model card's percentile normalisation (``low``/``high`` percentiles) was computed over each
training image, a field of ``field_px`` model-grid pixels. The slide path reproduces it
locally: fields of that size centred on a fixed lattice (step half a field) over the model
grid, their statistics taken over tissue pixels only, and bilinear interpolation between
lattice centres. A piece of tissue no larger than ``SMALL_FIELDS`` fields (a fragment, or an
image placed on a slide) is normalised as a whole, by its own statistics, as a training
image was. Each pixel's (offset, span) depends only on its position on the slide, never on
the tile that reads it, so tiled inference stays seam-free and tile-size invariant.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import TileReadError
from .preprocess import apply_normalization, norm_floor, percentile_stats, select_channels
from .tiling import Geometry, read_model_window

__all__ = ["NormField", "Part", "StatsRegion", "build_norm_field", "stats_region", "field_px", "percentiles_from_hist", "training_field"]

#: histogram bins per grey level: lattice percentiles are exact to 1/BINS_PER_LEVEL of a level
BINS_PER_LEVEL = 4
#: a field holding fewer tissue pixels than this share of its area takes its neighbours' statistics
MIN_TISSUE_SHARE = 0.05
#: tissue pieces whose bounding box fits in this many fields (per side) are normalised whole
SMALL_FIELDS = 1.5


@dataclass(frozen=True, eq=False)
class Part:
    """A small tissue piece normalised as a whole: its mask (bit-packed; mask px, origin ``y0, x0``) and statistics.

    Packed, a piece costs an eighth of a boolean mask in every pickled tile job.
    """

    y0: int
    x0: int
    shape: tuple[int, int]
    bits: bytes
    offset: float
    span: float

    @classmethod
    def of(cls, y0: int, x0: int, mask: np.ndarray, offset: float, span: float) -> "Part":
        """The part of boolean ``mask`` at mask pixel (y0, x0)."""
        return cls(y0, x0, tuple(mask.shape), np.packbits(mask).tobytes(), float(offset), float(span))

    @functools.cached_property
    def mask(self) -> np.ndarray:
        """The boolean mask (unpacked once per process)."""
        n = self.shape[0] * self.shape[1]
        return np.unpackbits(np.frombuffer(self.bits, np.uint8), count=n).astype(bool).reshape(self.shape)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "mask"}  # never ship the unpacked copy


@dataclass(frozen=True, eq=False)
class NormField:
    """Per-pixel (offset, span) over the model grid: lattice centres ``k * step`` (k = 0..n), bilinear between them.

    ``offset``/``span`` are (ny + 1, nx + 1) float32 lattice values; ``parts`` override them
    on small tissue pieces; ``mask_scale`` is model-grid px per mask px (y, x), for the parts.
    """

    step: int
    offset: np.ndarray
    span: np.ndarray
    parts: tuple[Part, ...] = ()
    mask_scale: tuple[float, float] = (1.0, 1.0)
    #: the card's floor of normalised values (:func:`wsicount.preprocess.norm_floor`)
    floor: float | None = None

    @classmethod
    def constant(cls, offset: float, span: float, floor: float | None = None) -> "NormField":
        """The same (offset, span) everywhere (a ``fixed`` card, or a slide-wide scaling)."""
        return cls(1 << 30, np.full((2, 2), offset, np.float32), np.full((2, 2), span, np.float32), floor=floor)

    def window(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """(offset, span), each (y1 - y0, x1 - x0) float32, of the model-grid pixels of a window."""
        (ky, fy), (kx, fx) = self._coords(y0, y1, 0), self._coords(x0, x1, 1)
        out = []
        for g in (self.offset, self.span):
            top = g[ky][:, kx] * (1 - fx) + g[ky][:, kx + 1] * fx
            bot = g[ky + 1][:, kx] * (1 - fx) + g[ky + 1][:, kx + 1] * fx
            out.append((top * (1 - fy)[:, None] + bot * fy[:, None]).astype(np.float32))
        for p in self.parts:
            self._paint(p, out, y0, y1, x0, x1)
        return out[0], out[1]

    def _coords(self, a: int, b: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """Lattice cell and fraction of pixel centres ``a..b-1`` along ``axis``."""
        n = self.offset.shape[axis] - 1  # lattice intervals (>= 1)
        u = (np.arange(a, b, dtype=np.float64) + 0.5) / self.step
        k = np.clip(np.floor(u).astype(np.int64), 0, n - 1)
        return k, np.clip(u - k, 0.0, 1.0)

    def _paint(self, p: Part, out: list[np.ndarray], y0: int, y1: int, x0: int, x1: int) -> None:
        """Set a part's statistics on its pixels (nearest mask pixel, as the tissue mask maps to the grid)."""
        on = _on_grid(p.mask, (p.y0, p.x0), self.mask_scale, (y0, y1, x0, x1))
        if on.any():
            out[0][on], out[1][on] = p.offset, p.span

    def apply(self, x: np.ndarray, box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
        """(C, h, w) pixels of model-grid window ``box`` -> normalised float32 (a new array).

        Rows/columns past ``height``/``width`` are reflections (as read_model_window pads); they
        get the statistics of the pixels they reflect, as whole-image inference normalises
        before padding.
        """
        y0, y1, x0, x1 = box
        vy1, vx1 = min(y1, height), min(x1, width)
        off, span = self.window(y0, vy1, x0, vx1)
        if (y1, x1) != (vy1, vx1):
            pad = [(0, y1 - vy1), (0, x1 - vx1)]
            off, span = np.pad(off, pad, mode="symmetric"), np.pad(span, pad, mode="symmetric")
        return apply_normalization(x, off, span, self.floor)

    def summary(self) -> dict[str, Any]:
        """What summary.json records: the field size and the range of offsets and spans."""
        o = np.concatenate([self.offset.ravel(), [p.offset for p in self.parts]])
        s = np.concatenate([self.span.ravel(), [p.span for p in self.parts]])
        return {"kind": "local", "step_px": self.step, "n_parts": len(self.parts),
                "offset": [float(o.min()), float(np.median(o)), float(o.max())],
                "span": [float(s.min()), float(np.median(s)), float(s.max())]}


def _on_grid(m: np.ndarray, origin: tuple[int, int], scale: tuple[float, float],
             box: tuple[int, int, int, int]) -> np.ndarray:
    """Nearest-neighbour values on model-grid ``box`` of mask ``m`` whose pixel (0, 0) is mask pixel ``origin`` (False outside it)."""
    y0, y1, x0, x1 = box
    iy = ((np.arange(y0, y1) + 0.5) / scale[0]).astype(np.int64) - origin[0]
    ix = ((np.arange(x0, x1) + 0.5) / scale[1]).astype(np.int64) - origin[1]
    oky, okx = (iy >= 0) & (iy < m.shape[0]), (ix >= 0) & (ix < m.shape[1])
    out = m[np.clip(iy, 0, m.shape[0] - 1)][:, np.clip(ix, 0, m.shape[1] - 1)]
    return out & oky[:, None] & okx[None, :]


def field_px(normalization: dict, model_mpp: float | None) -> float | None:
    """Side of a training image in model-grid px, from the card's ``field_px`` or ``field_um`` (None: not stated)."""
    if normalization.get("field_px"):
        return float(normalization["field_px"])
    if normalization.get("field_um") and model_mpp:
        return float(normalization["field_um"]) / model_mpp
    return None


def training_field(shapes: list[tuple[int, int]], mpp: float | None) -> dict[str, float]:
    """The card's record of the field a training image covered: its median side in px (and um when known)."""
    side = float(np.median([math.sqrt(h * w) for h, w in shapes]))
    return {"field_px": round(side, 1), **({"field_um": round(side * mpp, 2)} if mpp else {})}


def percentiles_from_hist(hist: np.ndarray, qs: tuple[float, float], width: float) -> tuple[float, float]:
    """Percentiles (as np.percentile's linear rule, values spread evenly within a bin) of binned values."""
    cum = np.cumsum(hist)
    n = int(cum[-1])
    out = []
    for q in qs:
        r = q / 100.0 * (n - 1) + 0.5  # rank of the value, counting from the bin's lower edge
        i = int(np.searchsorted(cum, r, side="left"))
        below = cum[i - 1] if i else 0
        out.append((i + (r - below) / max(int(hist[i]), 1)) * width)
    return out[0], out[1]


def build_norm_field(slide: Any, geom: Geometry, tm: Any, scale: tuple[float, float], normalization: dict,
                     channels: list[int], skip_bad: bool = False) -> NormField:
    """The slide's normalisation field for a card's ``normalization`` (see the module docstring).

    A ``fixed`` card keeps its fixed scaling; a card stating no training field gets one
    field, the whole slide. Statistics are taken over :func:`stats_region`.
    """
    if normalization.get("kind") == "fixed":
        return NormField.constant(*percentile_stats(np.zeros(1), normalization), norm_floor(normalization))
    core = stats_region(tm)
    f = field_px(normalization, geom.model_mpp)
    if f is None:
        f = float(max(geom.height, geom.width))  # one field: the whole slide
    step = max(8, int(round(f / 2)))
    offset, span = _lattice_stats(slide, geom, core, scale, step, channels, normalization, skip_bad)
    parts = _small_parts(slide, geom, tm.mask, core, scale, f, normalization, channels, skip_bad)
    return NormField(step, offset, span, parts, scale, norm_floor(normalization))


@dataclass(frozen=True, eq=False)
class StatsRegion:
    """Where intensities enter the statistics: pixels of ``mask`` (mask px) whose signal is above ``floor``.

    ``floor`` is the detection signal's background level (:attr:`wsicount.tissue.TissueMask.background`;
    None: every pixel of ``mask``).
    """

    mask: np.ndarray
    mode: str | None = None
    floor: float | None = None

    def pixels(self, img: np.ndarray, on_grid: Any) -> np.ndarray:
        """Boolean (h, w) of a model-grid window's pixels ``img`` (h, w[, C]); ``on_grid`` maps a mask px array onto it."""
        m = on_grid(self.mask)
        if self.floor is not None:
            from .background import signal_image

            m &= signal_image(img, self.mode) > self.floor
        return m

    def any_on(self, on_grid: Any) -> bool:
        """Whether the window may hold a counted pixel (before its pixels are read)."""
        return bool(on_grid(self.mask).any())


def stats_region(tm: Any) -> StatsRegion:
    """The pixels whose intensities enter the statistics: the tissue's own, to its edge, and no background.

    A detected mask states the slide background's level: every pixel of the counted region
    above it, so an image's edge pixels count as in its own statistics (a geometric band
    inside the outline would leave them out: on vignetted images that raised the 1st
    percentile) and the black, dark mount or glass around it never does. Without a level,
    the tissue shrunk by one smoothing sd and the counted region shrunk past the foot of its
    edge. A user's mask, or mode ``none``: the counted region shrunk by one pixel.
    """
    from .tissue import MARGIN_UM, SMOOTH_UM, _dilate_disk

    def shrink(m: np.ndarray, r: int) -> np.ndarray:
        return ~_dilate_disk(np.pad(~m, r), r)[r:-r, r:-r]  # outside the mask counts as inside

    if getattr(tm, "background", None) is not None:
        return StatsRegion(tm.mask, tm.mode, tm.background)
    if getattr(tm, "tissue", None) is None:
        out = shrink(tm.mask, 1)
        return StatsRegion(out if out.any() else tm.mask)
    sd = SMOOTH_UM / tm.mpp
    out = shrink(tm.tissue, int(math.ceil(sd))) | shrink(tm.mask, int(math.ceil(MARGIN_UM / tm.mpp + 3 * sd)) + 1)
    return StatsRegion(out if out.any() else tm.tissue)


def _row_histograms(slide: Any, geom: Geometry, core: StatsRegion, scale: tuple[float, float], step: int, by: int,
                    channels: list[int], skip_bad: bool) -> np.ndarray:
    """(nbx, bins) histograms of the tissue pixels of each ``step``-px block of block row ``by`` (each pixel read once).

    With ``skip_bad`` an undecodable block is left out (its tiles are recorded bad later).
    """

    nbx, nbins = -(-geom.width // step), 256 * BINS_PER_LEVEL
    hists = np.zeros((nbx, nbins), np.int64)
    y0, y1 = by * step, min((by + 1) * step, geom.height)
    for bx in range(nbx):
        box = (y0, y1, bx * step, min((bx + 1) * step, geom.width))
        on_grid = functools.partial(_mask_on_grid, scale=scale, box=box)
        if not core.any_on(on_grid):
            continue
        img = _read(slide, geom, box, skip_bad)
        if img is None:
            continue
        m = core.pixels(img, on_grid)
        v = select_channels(img, channels)[:, m].ravel() * BINS_PER_LEVEL
        hists[bx] = np.bincount(np.clip(v, 0, nbins - 1).astype(np.int64), minlength=nbins)
    return hists


def _lattice_stats(slide: Any, geom: Geometry, core: StatsRegion, scale: tuple[float, float], step: int,
                   channels: list[int], normalization: dict, skip_bad: bool) -> tuple[np.ndarray, np.ndarray]:
    """(offset, span) at lattice centres ``k * step``; centre k's field is blocks k-1 and k on each axis.

    Block rows are read one at a time (memory: two rows of histograms). A field with too
    little tissue takes the statistics of the nearest field that has enough.
    """
    from scipy import ndimage

    nby, nbx = -(-geom.height // step), -(-geom.width // step)
    lo_q, hi_q = float(normalization.get("low", 1.0)), float(normalization.get("high", 99.5))
    min_span = float(normalization.get("min_span", 8.0))
    offset = np.full((nby + 1, nbx + 1), np.nan, np.float32)
    span = np.full_like(offset, np.nan)
    need = MIN_TISSUE_SHARE * (2 * step) ** 2 * len(channels)
    total = np.zeros(256 * BINS_PER_LEVEL, np.int64)
    prev = None
    for k in range(nby + 1):
        cur = _row_histograms(slide, geom, core, scale, step, k, channels, skip_bad) if k < nby else None
        rows = sum(r for r in (prev, cur) if r is not None)  # blocks k-1 and k of each column
        if cur is not None:
            total += cur.sum(0)
        for j in range(nbx + 1):
            h = rows[max(j - 1, 0) : j + 1].sum(0)
            if h.sum() >= need:
                lo, hi = percentiles_from_hist(h, (lo_q, hi_q), 1.0 / BINS_PER_LEVEL)
                offset[k, j], span[k, j] = lo, max(hi - lo, min_span)
        prev = cur
    bad = np.isnan(offset)
    if bad.all():
        if not total.any():
            return np.zeros_like(offset), np.ones_like(span)
        lo, hi = percentiles_from_hist(total, (lo_q, hi_q), 1.0 / BINS_PER_LEVEL)
        return np.full_like(offset, lo), np.full_like(span, max(hi - lo, min_span))
    if bad.any():
        iy, ix = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
        offset, span = offset[iy, ix], span[iy, ix]
    return offset, span


def _small_parts(slide: Any, geom: Geometry, counted: np.ndarray, core: StatsRegion, scale: tuple[float, float],
                 field: float, normalization: dict, channels: list[int], skip_bad: bool) -> tuple[Part, ...]:
    """The tissue pieces (connected parts of the counted region) that fit in ``SMALL_FIELDS`` fields, with their own statistics.

    Each piece's statistics also cover the background nearest to it, up to half a field away
    (:func:`_surroundings`): the network sees that background around the piece's cells, and a
    lone image's background is normalised by the image's own statistics (``evaluate
    --context background``).
    """
    from scipy import ndimage

    lab, _ = ndimage.label(counted)
    stats = {}
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        (my0, my1), (mx0, mx1) = (sl[0].start, sl[0].stop), (sl[1].start, sl[1].stop)
        box = (int(math.floor(my0 * scale[0])), min(int(math.ceil(my1 * scale[0])), geom.height),
               int(math.floor(mx0 * scale[1])), min(int(math.ceil(mx1 * scale[1])), geom.width))
        if max(box[1] - box[0], box[3] - box[2]) > SMALL_FIELDS * field or box[1] <= box[0] or box[3] <= box[2]:
            continue
        own = lab[sl] == i

        def on_grid(m: np.ndarray, sl: tuple = sl, own: np.ndarray = own, box: tuple = box) -> np.ndarray:
            return _on_grid(own & m[sl], (sl[0].start, sl[1].start), scale, box)

        if not core.any_on(on_grid):
            continue
        img = _read(slide, geom, box, skip_bad)
        if img is None:
            continue
        m = core.pixels(img, on_grid)
        if m.any():
            stats[i] = percentile_stats(select_channels(img, channels)[:, m], normalization)
    if not stats:
        return ()
    reach = 0.5 * field / min(scale)  # mask px
    return tuple(Part.of(y0, x0, m, *stats[i]) for i, (y0, x0, m) in _surroundings(lab, list(stats), reach).items())


def _surroundings(lab: np.ndarray, keep: list[int], reach: float) -> dict[int, tuple[int, int, np.ndarray]]:
    """Label -> (y0, x0, mask) of each kept piece grown over the background nearest to it, up to ``reach`` mask px."""
    from scipy import ndimage

    kept = np.isin(lab, keep)
    dist, (iy, ix) = ndimage.distance_transform_edt(~kept, return_indices=True)
    nearest = lab[iy, ix]
    grown = np.where(((lab == 0) & (dist <= reach)) | kept, nearest, 0)
    out = {}
    for i, sl in enumerate(ndimage.find_objects(grown), start=1):
        if sl is not None and i in keep:
            out[i] = (sl[0].start, sl[1].start, grown[sl] == i)
    return out


def _mask_on_grid(m: np.ndarray, scale: tuple[float, float], box: tuple[int, int, int, int]) -> np.ndarray:
    """:func:`wsicount.tiling.mask_on_grid` with the arguments ``functools.partial`` binds by name."""
    from .tiling import mask_on_grid

    return mask_on_grid(m, *scale, box)


def _read(slide: Any, geom: Any, box: tuple[int, int, int, int], skip_bad: bool) -> np.ndarray | None:
    """The model-grid window ``box``, or None where it cannot be decoded and ``skip_bad`` (its tiles are recorded bad)."""
    try:
        return read_model_window(slide, geom, box)
    except TileReadError:
        if not skip_bad:
            raise
        return None
