"""User regions of interest: QuPath GeoJSON annotations or a label image, and the count in each.

Regions are held in level-0 pixel coordinates (x = column, y = row, the pixel ``(r, c)``
spanning ``[c, c+1) x [r, r+1)``). The density lives on the model grid, whose pixel is ``scale``
level-0 pixels wide; a model pixel belongs to a region when its centre does (level-0
``((c + 0.5) * scale, (r + 0.5) * scale)``). Polygons are rasterised by testing those centres
with ``shapely.contains_xy`` (holes included), only in blocks on the boundary: blocks inside are
taken whole. Label images are sampled at the pixel centres. The density is read in row bands, one region window at a time, so a slide-sized Zarr
array is never loaded whole.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry
from scipy.ndimage import find_objects

from .errors import RegionError

__all__ = ["Region", "LabelRegions", "read_geojson", "read_label_image", "read_regions", "check_regions",
           "region_counts"]

#: spellings of the units a GeoJSON file or caller may state
_UNITS = {"px": "px", "pixel": "px", "pixels": "px", "um": "um", "µm": "um", "micrometer": "um",
          "micrometre": "um", "micron": "um", "microns": "um"}
#: model-grid elements read per window (64 MiB of float32)
_BAND_ELEMENTS = 1 << 24
#: side of the blocks a region's window is classified in (inside / outside / rasterised)
_BLOCK = 64


@dataclass(frozen=True)
class Region:
    """One named polygonal region in level-0 pixel coordinates."""

    name: str
    cls: str | None
    geometry: BaseGeometry


@dataclass(frozen=True)
class LabelRegions:
    """Integer label image: label k > 0 is region ``names[k]``; one label pixel = ``scale`` level-0 px."""

    labels: np.ndarray
    scale: float = 1.0
    names: dict[int, str] = field(default_factory=dict)


def _units(value: Any, where: str) -> str:
    """Normalise a units string ('px', 'µm', ...) or raise naming where it came from."""
    u = _UNITS.get(str(value).strip().lower())
    if u is None:
        raise RegionError(f"{where}: unknown units {value!r} (use px or um)")
    return u


def _features(doc: Any, path: Path) -> list[dict]:
    """The features of a FeatureCollection, a list of features, or a single Feature."""
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        doc = doc.get("features", [])
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        doc = [doc]
    if not isinstance(doc, list) or not all(isinstance(f, dict) for f in doc):
        raise RegionError(f"{path}: not a GeoJSON FeatureCollection or list of features")
    return doc


def _name_and_class(props: dict, index: int) -> tuple[str, str | None]:
    """QuPath's ``properties.name`` and ``properties.classification.name`` (older exports: a string)."""
    cls = props.get("classification")
    if isinstance(cls, dict):
        cls = cls.get("name")
    cls = str(cls) if cls else None
    name = props.get("name") or f"{cls or 'region'}_{index + 1}"
    return str(name), cls


def _polygonal(geom: BaseGeometry, name: str) -> BaseGeometry:
    """Valid, non-empty Polygon/MultiPolygon; invalid rings are repaired with ``make_valid`` and a warning."""
    if not isinstance(geom, (Polygon, MultiPolygon)):
        raise RegionError(f"region {name!r}: geometry type {geom.geom_type} is not a Polygon or MultiPolygon")
    if geom.is_valid and (geom.is_empty or geom.area <= 0):
        raise RegionError(f"region {name!r}: polygon is empty (zero area)")
    if not geom.is_valid:
        why = shapely.is_valid_reason(geom)
        fixed = shapely.make_valid(geom)
        parts = [g for g in getattr(fixed, "geoms", [fixed]) if isinstance(g, (Polygon, MultiPolygon))]
        fixed = shapely.unary_union(parts) if parts else Polygon()
        if fixed.is_empty or fixed.area <= 0:
            raise RegionError(f"region {name!r}: invalid polygon ({why}) with no area left after repair")
        warnings.warn(f"region {name!r}: invalid polygon ({why}) repaired with make_valid", stacklevel=3)
        geom = fixed
    return geom


def read_geojson(path: str | Path, units: str | None = None, mpp0: float | None = None) -> list[Region]:
    """Annotations of a QuPath GeoJSON export as level-0 pixel regions.

    ``units`` ('px' or 'um') overrides what the file states (a top-level or per-feature
    ``units`` / ``unit`` key); by default coordinates are level-0 pixels, as QuPath exports
    them. Micrometres are divided by ``mpp0`` (level-0 µm/px). Features whose ``objectType``
    is not ``annotation`` (QuPath detections, cells) are skipped.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegionError(f"cannot read regions from {path}: {e}") from None
    file_units = doc.get("units", doc.get("unit")) if isinstance(doc, dict) else None
    regions, names = [], set()
    for i, feat in enumerate(_features(doc, path)):
        props = feat.get("properties") or {}
        if props.get("objectType", "annotation") != "annotation":
            continue
        name, cls = _name_and_class(props, i)
        if name in names:
            raise RegionError(f"region {name!r}: the name is used twice in {path.name}; names must be unique")
        names.add(name)
        stated = units or props.get("units", props.get("unit")) or file_units or "px"
        unit = _units(stated, f"region {name!r}")
        try:
            geom = shape(feat["geometry"])
        except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException) as e:
            raise RegionError(f"region {name!r}: unreadable geometry ({e})") from None
        geom = _polygonal(geom, name)
        if unit == "um":
            if not mpp0 or mpp0 <= 0:
                raise RegionError(f"region {name!r} is in µm but the slide's µm/px is unknown")
            geom = shapely.affinity.scale(geom, 1 / mpp0, 1 / mpp0, origin=(0, 0))
        regions.append(Region(name, cls, geom))
    if not regions:
        raise RegionError(f"{path}: no annotation polygons found")
    return regions


def read_label_image(path: str | Path, scale: float = 1.0, names: dict[int, str] | None = None) -> LabelRegions:
    """An integer label image (TIFF or PNG; 0 = background); one label pixel = ``scale`` level-0 px."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            labels = tifffile.imread(path)
        else:
            from PIL import Image

            labels = np.asarray(Image.open(path))
    except Exception as e:  # any decoder failure is a bad input file
        raise RegionError(f"cannot read label image {path}: {e}") from None
    labels = np.squeeze(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise RegionError(f"label image {path} must be 2-D integer labels, got {labels.dtype} {labels.shape}")
    if scale <= 0:
        raise RegionError(f"label image scale must be > 0, got {scale}")
    if not (labels > 0).any():
        raise RegionError(f"label image {path} has no labelled pixels (all 0)")
    return LabelRegions(labels, float(scale), dict(names or {}))


def read_regions(path: str | Path, units: str | None = None, mpp0: float | None = None,
                 label_scale: float = 1.0) -> list[Region] | LabelRegions:
    """GeoJSON (``.geojson``/``.json``) or a label image (anything else), by extension."""
    path = Path(path)
    if not path.is_file():
        raise RegionError(f"regions file {path} does not exist")
    if path.suffix.lower() in (".geojson", ".json"):
        return read_geojson(path, units=units, mpp0=mpp0)
    return read_label_image(path, scale=label_scale)


def check_regions(regions: Sequence[Region] | LabelRegions, shape0: tuple[float, float]) -> None:
    """Fail fast, before any inference: a region wholly outside the level-0 ``(height, width)`` is a
    RegionError, one crossing the edge a warning (only its part on the slide counts)."""
    if isinstance(regions, LabelRegions):
        return  # a label image's extent is checked against the grid when counted
    h0, w0 = shape0
    for r in regions:
        x0, y0, x1, y1 = r.geometry.bounds
        if x1 <= 0 or y1 <= 0 or x0 >= w0 or y0 >= h0:
            raise RegionError(f"region {r.name!r} lies outside the slide (bounds x {x0:.0f}-{x1:.0f}, "
                              f"y {y0:.0f}-{y1:.0f} level-0 px; slide {w0:.0f} x {h0:.0f})")
        if x0 < 0 or y0 < 0 or x1 > w0 or y1 > h0:
            warnings.warn(f"region {r.name!r} extends past the slide's edge; only its part on the slide counts",
                          stacklevel=2)


def _region_mask(geom: BaseGeometry, win: tuple[int, int, int, int], scale: float) -> np.ndarray:
    """Boolean mask of a (Multi)Polygon on the model-grid window (r0, r1, c0, c1): the pixels whose centre it contains.

    ``shapely.contains_xy`` decides each centre exactly (holes included), so a region's pixels
    do not depend on the polygon's orientation or on how an edge crosses the pixel grid.
    """
    r0, r1, c0, c1 = win
    rows, cols = np.mgrid[r0:r1, c0:c1]
    return shapely.contains_xy(geom, (cols + 0.5) * scale, (rows + 0.5) * scale)


def _block_masks(geom: BaseGeometry, win: tuple[int, int, int, int], scale: float):
    """Yield ``(block window, mask)`` for the ``_BLOCK``-px blocks of ``win`` that meet ``geom``.

    ``mask`` is None when every pixel centre of the block lies in the region (shapely decides it
    from the box of the centres); only blocks on the boundary are rasterised, each with the
    region clipped to the block (few vertices), so the cost follows the region's perimeter.
    """
    r0, r1, c0, c1 = win
    for rb in range(r0, r1, _BLOCK):
        for cb in range(c0, c1, _BLOCK):
            blk = (rb, min(rb + _BLOCK, r1), cb, min(cb + _BLOCK, c1))
            centres = shapely.box((blk[2] + 0.5) * scale, (blk[0] + 0.5) * scale,
                                  (blk[3] - 0.5) * scale, (blk[1] - 0.5) * scale)
            if not shapely.intersects(geom, centres):
                continue
            if blk[1] - blk[0] > 1 and blk[3] - blk[2] > 1 and shapely.contains_properly(geom, centres):
                yield blk, None
                continue
            pad = scale  # one model pixel around the block keeps every edge centre's side of the boundary
            part = shapely.clip_by_rect(geom, blk[2] * scale - pad, blk[0] * scale - pad,
                                        blk[3] * scale + pad, blk[1] * scale + pad)
            polys = [g for g in getattr(part, "geoms", [part]) if isinstance(g, Polygon) and not g.is_empty]
            if not polys:
                continue
            mask = _region_mask(MultiPolygon(polys) if len(polys) > 1 else polys[0], blk, scale)
            if mask.any():
                yield blk, mask


def _tissue_window(tissue: np.ndarray | None, grid: tuple[int, int], win: tuple[int, int, int, int]) -> np.ndarray | None:
    """Tissue mask (any resolution covering the grid) sampled at the window's model-pixel centres."""
    if tissue is None:
        return None
    r0, r1, c0, c1 = win
    mh, mw = tissue.shape[:2]
    ri = np.minimum(((np.arange(r0, r1) + 0.5) * mh / grid[0]).astype(np.int64), mh - 1)
    ci = np.minimum(((np.arange(c0, c1) + 0.5) * mw / grid[1]).astype(np.int64), mw - 1)
    return np.asarray(tissue[ri[0]:ri[-1] + 1])[ri - ri[0]][:, ci].astype(bool)


def _bands(r0: int, r1: int, width: int) -> list[tuple[int, int]]:
    """Row bands of [r0, r1) holding at most ``_BAND_ELEMENTS`` elements of ``width`` columns."""
    step = max(1, _BAND_ELEMENTS // max(1, width))
    return [(a, min(a + step, r1)) for a in range(r0, r1, step)]


def _polygon_sums(region: Region, density: Any, scale: float, tissue: np.ndarray | None) -> dict[str, float]:
    """Density sum, pixel count and tissue-pixel count of one polygonal region, band by band, block by block."""
    h, w = density.shape[:2]
    x0, y0, x1, y1 = region.geometry.bounds
    check_regions([region], (h * scale, w * scale))
    c0, c1 = max(0, math.floor(x0 / scale)), min(w, math.ceil(x1 / scale) + 1)
    r0, r1 = max(0, math.floor(y0 / scale)), min(h, math.ceil(y1 / scale) + 1)
    shapely.prepare(region.geometry)  # the block predicates below reuse its index
    total, n_px, tissue_px = 0.0, 0, 0
    for a, b in _bands(r0, r1, c1 - c0):
        dens = tw = None
        for win, mask in _block_masks(region.geometry, (a, b, c0, c1), scale):
            if dens is None:  # the band is read only when some block of it is in the region
                dens = np.asarray(density[a:b, c0:c1])
                tw = _tissue_window(tissue, (h, w), (a, b, c0, c1))
            sl = np.s_[win[0] - a:win[1] - a, win[2] - c0:win[3] - c0]
            part = dens[sl] if mask is None else dens[sl][mask]
            total += float(part.sum(dtype=np.float64))
            n = (win[1] - win[0]) * (win[3] - win[2]) if mask is None else int(mask.sum())
            n_px += n
            if tw is None:
                tissue_px += n
            else:
                tissue_px += int(tw[sl].sum()) if mask is None else int(tw[sl][mask].sum())
    if n_px == 0:
        raise RegionError(f"region {region.name!r} covers no pixel centre of the model grid "
                          f"({scale:g} level-0 px per pixel): it is too small")
    return {"count": total, "n_px": n_px, "tissue_px": tissue_px, "bounds": (x0, y0, x1, y1)}


def _label_sums(lr: LabelRegions, density: Any, scale: float, tissue: np.ndarray | None) -> dict[int, dict]:
    """Per-label density sums, pixel counts and tissue pixels over full-width row bands; bounds from the labels."""
    h, w = density.shape[:2]
    lh, lw = lr.labels.shape
    if abs(lh * lr.scale - h * scale) > lr.scale + scale or abs(lw * lr.scale - w * scale) > lr.scale + scale:
        raise RegionError(f"label image {lw} x {lh} at {lr.scale:g} level-0 px per pixel does not cover the slide "
                          f"({w * scale:.0f} x {h * scale:.0f} level-0 px)")
    n = int(lr.labels.max()) + 1
    count, n_px, tis = np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.int64)
    ci = np.minimum(((np.arange(w) + 0.5) * scale / lr.scale).astype(np.int64), lw - 1)
    for a, b in _bands(0, h, w):
        ri = np.minimum(((np.arange(a, b) + 0.5) * scale / lr.scale).astype(np.int64), lh - 1)
        lab = np.asarray(lr.labels[ri[0]:ri[-1] + 1])[ri - ri[0]][:, ci].astype(np.int64)
        dens = np.asarray(density[a:b])
        count += np.bincount(lab.ravel(), weights=dens.ravel(), minlength=n)
        n_px += np.bincount(lab.ravel(), minlength=n)
        tw = _tissue_window(tissue, (h, w), (a, b, 0, w))
        tis += np.bincount(lab.ravel(), minlength=n) if tw is None else np.bincount(lab[tw], minlength=n)
    out = {}
    for k, sl in enumerate(find_objects(lr.labels), start=1):
        if sl is None:
            continue
        if n_px[k] == 0:
            raise RegionError(f"region {lr.names.get(k, str(k))!r} covers no pixel centre of the model grid")
        (ys, xs), f = sl, lr.scale  # bounds of the label's pixels, in level-0 px
        out[k] = {"count": float(count[k]), "n_px": int(n_px[k]), "tissue_px": int(tis[k]),
                  "bounds": (xs.start * f, ys.start * f, xs.stop * f, ys.stop * f)}
    return out


def _row(name: str, cls: str | None, s: dict, model_mpp: float | None, scale: float) -> dict[str, Any]:
    """One output row: count, areas, density and the bounding box in µm (NaN where µm/px is unknown)."""
    mm2_per_px = (model_mpp * 1e-3) ** 2 if model_mpp else math.nan
    tissue_mm2 = s["tissue_px"] * mm2_per_px
    um0 = model_mpp / scale if model_mpp else math.nan  # µm per level-0 pixel
    x0, y0, x1, y1 = s["bounds"]
    return {
        "region": name, "class": cls or "", "count": s["count"], "n_px": s["n_px"], "tissue_px": s["tissue_px"],
        "tissue_mm2": tissue_mm2,
        "cells_per_mm2": s["count"] / tissue_mm2 if tissue_mm2 > 0 else math.nan,
        "x0_um": x0 * um0, "y0_um": y0 * um0, "x1_um": x1 * um0, "y1_um": y1 * um0,
    }


def region_counts(regions: Sequence[Region] | LabelRegions, density: Any, model_mpp: float | None, scale: float,
                  tissue_mask: np.ndarray | None = None, calibration: Any = None,
                  level: float = 0.95) -> list[dict[str, Any]]:
    """Count, tissue area, cells/mm² and µm bounding box of each region on a model-grid density.

    ``density`` is any (H, W) array that slices lazily (Zarr, memmap, NumPy); ``scale`` is
    level-0 pixels per model pixel and ``model_mpp`` µm per model pixel (None: areas are NaN).
    ``tissue_mask`` (any resolution spanning the same extent) restricts the area, not the count:
    the density outside tissue is already zero. With a :class:`wsicount.uncertainty.Calibration`
    each row also gets ``count_lo``/``count_hi`` and ``cells_per_mm2_lo``/``_hi`` at ``level``,
    from the region's variance terms (its predicted count and tissue pixels; see that module
    for the independence assumption).
    """
    if scale <= 0:
        raise RegionError(f"scale must be > 0 level-0 px per model pixel, got {scale}")
    if isinstance(regions, LabelRegions):
        sums = _label_sums(regions, density, scale, tissue_mask)
        rows = [_row(regions.names.get(k, str(k)), None, s, model_mpp, scale) for k, s in sums.items()]
    else:
        rows = [_row(r.name, r.cls, _polygon_sums(r, density, scale, tissue_mask), model_mpp, scale) for r in regions]
    if calibration is not None:
        for row in rows:
            lo, hi = calibration.interval(row["count"], {"pred": max(row["count"], 0.0), "area": row["tissue_px"]},
                                          level)
            a = row["tissue_mm2"]
            row.update(count_lo=lo, count_hi=hi, level=level,
                       cells_per_mm2_lo=lo / a if a > 0 else math.nan, cells_per_mm2_hi=hi / a if a > 0 else math.nan)
    return rows
