"""Cutting a slide into overlapping, stride-aligned tiles at the model's resolution.

Geometry. The *model grid* is the slide resampled to the model's um/px, ``height x width``
pixels. Tile cores are ``core x core`` squares on that grid (the last row/column shorter);
each tile's input window is its core grown by ``halo`` on every side, clipped to
``[0, padded)`` where ``padded`` rounds the grid size up to the model stride. Pixels in
``[height, padded)`` are filled by symmetric reflection, exactly as whole-image inference
pads an image (``infer.pad_to_stride``).

Invariant (the seam-free guarantee, as in StarDist's ``big.py``): if ``core`` and ``halo``
are multiples of the model stride and ``halo >= receptive_radius + peak_margin``, then every
window starts at a multiple of the stride and the model output restricted to the core
(and ``peak_margin`` pixels around it) equals the whole-image output on those pixels, up to
float summation order. Writing cores into a Zarr array whose chunks are the cores
therefore reproduces whole-image inference, and no two tiles write the same chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Geometry", "Tile", "TileGrid", "plan_geometry", "read_model_window", "tissue_tiles"]


@dataclass(frozen=True)
class Geometry:
    """How the model grid maps onto a pyramid level of the slide."""

    level: int  # pyramid level read
    level_mpp: float
    model_mpp: float  # um/px of the model grid (the level's own mpp when no resampling)
    factor: float  # level pixels per model pixel (1.0: read as is)
    height: int  # model-grid size
    width: int
    level_height: int
    level_width: int
    mpp0: float
    level0_height: int
    level0_width: int

    @property
    def resampled(self) -> bool:
        """Whether level pixels are resampled to the model grid."""
        return self.factor != 1.0

    @property
    def scale0(self) -> float:
        """Level-0 pixels per model-grid pixel."""
        return self.model_mpp / self.mpp0


def plan_geometry(slide, model_mpp: float | None, tol: float = 0.02) -> Geometry:
    """Pick the level nearest the model's um/px (never upsampling) and the grid size."""
    h0, w0 = slide.shapes[0][:2]
    if model_mpp is None:  # model without physical scale: run on level 0 pixels
        level, target = 0, slide.mpp
    else:
        level, target = slide.best_level(model_mpp, tol), float(model_mpp)
    lh, lw = slide.shapes[level][:2]
    lmpp = slide.level_mpp(level)
    if abs(lmpp / target - 1.0) <= tol:
        return Geometry(level, lmpp, lmpp, 1.0, lh, lw, lh, lw, slide.mpp, h0, w0)
    factor = target / lmpp  # > 1: level finer than model grid
    h = int(math.floor(lh / factor))
    w = int(math.floor(lw / factor))
    return Geometry(level, lmpp, target, factor, h, w, lh, lw, slide.mpp, h0, w0)


@dataclass(frozen=True)
class Tile:
    """One tile: its index, core box and input window on the model grid (half-open)."""

    ty: int
    tx: int
    core: tuple[int, int, int, int]  # y0, y1, x0, x1
    window: tuple[int, int, int, int]

    @property
    def key(self) -> str:
        """Stable identifier used for completion records: ``"{ty}_{tx}"``."""
        return f"{self.ty}_{self.tx}"

    @staticmethod
    def index_of(key: str) -> tuple[int, int]:
        """(ty, tx) of a :attr:`key`."""
        ty, tx = key.split("_")
        return int(ty), int(tx)

    @property
    def window_shape(self) -> tuple[int, int]:
        """(h, w) of the input window."""
        return self.window[1] - self.window[0], self.window[3] - self.window[2]


@dataclass(frozen=True)
class TileGrid:
    """The grid of tiles over a ``height x width`` model grid."""

    height: int
    width: int
    core: int
    halo: int
    stride: int

    @classmethod
    def for_model(cls, height: int, width: int, tile_size: int, receptive_radius: int, stride: int, peak_margin: int = 0) -> "TileGrid":
        """Grid whose windows are at most ``tile_size`` px; halo covers RF + peak margin."""
        halo = cls.halo_for(receptive_radius, stride, peak_margin)
        core = cls.core_for(tile_size, halo, stride)
        if core < stride:
            raise ValueError(
                f"tile size {tile_size} too small: the halo alone is {halo} px per side "
                f"(receptive radius {receptive_radius}); use --tile-size >= {2 * halo + 8 * stride}"
            )
        return cls(height, width, core, halo, stride)

    @staticmethod
    def halo_for(receptive_radius: int, stride: int, peak_margin: int = 0) -> int:
        """Halo (px per side) covering the receptive radius plus the peak margin, a multiple of the stride."""
        return int(math.ceil((receptive_radius + peak_margin) / stride) * stride)

    @staticmethod
    def core_for(tile_size: int, halo: int, stride: int) -> int:
        """Core side of a ``tile_size`` window (a multiple of the stride; < stride: too small)."""
        return (tile_size - 2 * halo) // stride * stride

    @property
    def tile_size(self) -> int:
        """Side of a full input window (core plus halo on both sides)."""
        return self.core + 2 * self.halo

    @property
    def padded(self) -> tuple[int, int]:
        """Grid size rounded up to the stride."""
        s = self.stride
        return -(-self.height // s) * s, -(-self.width // s) * s

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tiles (rows, cols)."""
        return -(-self.height // self.core), -(-self.width // self.core)

    def tile(self, ty: int, tx: int) -> Tile:
        """Tile at index (ty, tx)."""
        c = self.core
        y0, x0 = ty * c, tx * c
        core = (y0, min(y0 + c, self.height), x0, min(x0 + c, self.width))
        return Tile(ty, tx, core, self.window(core))

    def window(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """Input window of a box of the grid: grown by the halo, clipped to ``[0, padded)``.

        A box whose start is a multiple of the stride gets a stride-aligned window.
        """
        hh = self.halo
        ph, pw = self.padded
        y0, y1, x0, x1 = box
        return max(y0 - hh, 0), min(y1 + hh, ph), max(x0 - hh, 0), min(x1 + hh, pw)

    def __iter__(self):
        ny, nx = self.shape
        for ty in range(ny):
            for tx in range(nx):
                yield self.tile(ty, tx)


def tissue_tiles(grid: TileGrid, mask: np.ndarray, scale_y: float, scale_x: float, trim: bool = True) -> list[Tile]:
    """Tiles whose core overlaps tissue; ``scale_*`` = model-grid px per mask px.

    With ``trim`` a tile's window covers only the stride-aligned bounding box of the tissue
    in its core (plus the halo), not the whole core: outside that box the density is
    masked to zero anyway, and inside it every pixel still has its receptive field in the
    window, so values are unchanged while boundary tiles cost fewer network pixels.
    """
    out = []
    mh, mw = mask.shape
    s = grid.stride
    for t in grid:
        y0, y1, x0, x1 = t.core
        # conservative: any mask pixel the core touches counts
        my0, my1 = max(int(math.floor(y0 / scale_y)), 0), min(int(math.ceil(y1 / scale_y)), mh)
        mx0, mx1 = max(int(math.floor(x0 / scale_x)), 0), min(int(math.ceil(x1 / scale_x)), mw)
        sub = mask[my0:my1, mx0:mx1]
        if not sub.any():
            continue
        if not trim:
            out.append(t)
            continue
        rows, cols = np.flatnonzero(sub.any(axis=1)), np.flatnonzero(sub.any(axis=0))
        by0, by1 = _tissue_span(my0 + rows[0], my0 + rows[-1] + 1, scale_y, s, y0, y1)
        bx0, bx1 = _tissue_span(mx0 + cols[0], mx0 + cols[-1] + 1, scale_x, s, x0, x1)
        out.append(Tile(t.ty, t.tx, t.core, grid.window((by0, by1, bx0, bx1))))
    return out


def _tissue_span(m0: int, m1: int, scale: float, stride: int, lo: int, hi: int) -> tuple[int, int]:
    """Model-grid span of mask pixels [m0, m1): grown by 1 px against rounding, aligned outward, within [lo, hi)."""
    a = (int(math.floor(m0 * scale)) - 1) // stride * stride
    b = -(-(int(math.ceil(m1 * scale)) + 1) // stride) * stride
    return max(lo, a), min(hi, b)


def mask_on_grid(mask: np.ndarray, scale_y: float, scale_x: float, box: tuple[int, int, int, int]) -> np.ndarray:
    """Nearest-neighbour tissue mask on model-grid pixels ``box`` (y0, y1, x0, x1)."""
    y0, y1, x0, x1 = box
    iy = np.minimum(((np.arange(y0, y1) + 0.5) / scale_y).astype(np.int64), mask.shape[0] - 1)
    ix = np.minimum(((np.arange(x0, x1) + 0.5) / scale_x).astype(np.int64), mask.shape[1] - 1)
    return mask[iy][:, ix]  # rows, then columns: two 1-D gathers instead of one 2-D fancy index


def mask_covers(mask: np.ndarray, scale_y: float, scale_x: float, box: tuple[int, int, int, int]) -> bool:
    """Whether every model-grid pixel of ``box`` is tissue, checked on the mask rather than on the grid.

    True implies ``mask_on_grid(mask, scale_y, scale_x, box).all()``; the two agree whenever the
    mask is no finer than the grid (scales >= 1, as in every run: the mask is ~4 um/px), since
    nearest-neighbour sampling then visits every mask pixel between the first and the last.
    """
    y0, y1, x0, x1 = box
    if y1 <= y0 or x1 <= x0:
        return True
    # mask_on_grid's nearest-neighbour index is monotonic: the first and last pixel bound the rows it samples
    iy0, iy1 = (min(int((v + 0.5) / scale_y), mask.shape[0] - 1) for v in (y0, y1 - 1))
    ix0, ix1 = (min(int((v + 0.5) / scale_x), mask.shape[1] - 1) for v in (x0, x1 - 1))
    return bool(mask[iy0 : iy1 + 1, ix0 : ix1 + 1].all())


def _resample(img: np.ndarray, origin: tuple[int, int], rows: np.ndarray, cols: np.ndarray, factor: float) -> np.ndarray:
    """Sample model-grid pixels (rows x cols) from a level window starting at ``origin``.

    Source coordinates are global ((i + 0.5) * factor - 0.5), and the anti-aliasing blur's
    margin lies inside the window, so the result does not depend on how the grid is tiled.
    """
    from scipy import ndimage  # here: an import that only resampled slides need

    sigma = max((factor - 1.0) / 2.0, 0.0)
    out = []
    sy = (rows + 0.5) * factor - 0.5 - origin[0]
    sx = (cols + 0.5) * factor - 0.5 - origin[1]
    yy, xx = np.meshgrid(sy, sx, indexing="ij")
    for c in range(img.shape[2]):
        ch = img[..., c].astype(np.float32)
        if sigma > 0:
            ch = ndimage.gaussian_filter(ch, sigma, mode="nearest")
        out.append(ndimage.map_coordinates(ch, [yy, xx], order=1, mode="nearest"))
    return np.stack(out, axis=-1)


def read_model_window(slide, geom: Geometry, window: tuple[int, int, int, int], native: bool = False) -> np.ndarray:
    """(h, w, C) float32 pixels of a model-grid window, reflect-padded past the grid end.

    ``native``: where the grid is a pyramid level (no resampling), return the level's uint8
    pixels instead (same values; callers that keep only some channels convert less).
    """
    y0, y1, x0, x1 = window
    vy1, vx1 = min(y1, geom.height), min(x1, geom.width)
    if not geom.resampled:
        img = slide.read_region(geom.level, y0, x0, vy1 - y0, vx1 - x0)
        if not native:
            img = img.astype(np.float32)
    else:
        f = geom.factor
        margin = int(math.ceil(4 * max((f - 1) / 2, 0))) + 2
        ly0 = int(math.floor(y0 * f)) - margin
        lx0 = int(math.floor(x0 * f)) - margin
        ly1 = int(math.ceil(vy1 * f)) + margin
        lx1 = int(math.ceil(vx1 * f)) + margin
        src = slide.read_region(geom.level, ly0, lx0, ly1 - ly0, lx1 - lx0)
        # zero-filled parts outside the level would bleed in: replicate the edge instead
        src = _edge_fill(src, ly0, lx0, geom.level_height, geom.level_width)
        img = _resample(src, (ly0, lx0), np.arange(y0, vy1), np.arange(x0, vx1), f)
    ph, pw = y1 - vy1, x1 - vx1
    if ph or pw:
        img = np.pad(img, [(0, ph), (0, pw), (0, 0)], mode="symmetric")
    return img


def _edge_fill(src: np.ndarray, y0: int, x0: int, lh: int, lw: int) -> np.ndarray:
    """Replace out-of-level rows/cols of a window with the nearest in-level ones."""
    h, w = src.shape[:2]
    iy = np.clip(np.arange(y0, y0 + h), 0, lh - 1) - y0
    ix = np.clip(np.arange(x0, x0 + w), 0, lw - 1) - x0
    iy = np.clip(iy, 0, h - 1)
    ix = np.clip(ix, 0, w - 1)
    return src[iy[:, None], ix[None, :]]
