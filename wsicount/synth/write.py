"""Pyramid writers for synthetic slides: NDPI, generic tiled TIFF, Aperio SVS, OME-TIFF, OME-Zarr.

Level 0 comes from a ``render(y0, y1) -> (y1 - y0, w, 3) uint8`` callback and is written
band by band while :class:`PyramidBuilder` accumulates the lower levels (memmaps for big
ones), so memory stays bounded by a few bands whatever the slide size. Output goes to a
temporary name first and is renamed into place, so a failed run leaves no half slide.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

from ..errors import OutputError
from ..io._pyramid import PyramidBuilder, pyramid_shapes
from ..io._zarr import is_zarr_dir
from ._ndpi import write_ndpi

__all__ = ["FORMATS", "COMPRESSIONS", "write_pyramid", "level_shapes", "default_suffix"]

FORMATS = ("ndpi", "tiff", "ome-tiff", "ome-zarr", "svs")
_SUFFIX = {"ndpi": ".ndpi", "tiff": ".tiff", "ome-tiff": ".ome.tiff", "ome-zarr": ".ome.zarr",
           "svs": ".svs"}
# first entry is the default; lossless options give pixel-exact round trips
COMPRESSIONS = {"ndpi": ("jpeg",), "svs": ("jpeg",), "tiff": ("jpeg", "deflate"),
                "ome-tiff": ("jpeg", "deflate"), "ome-zarr": ("zstd", "none")}
Render = Callable[[int, int], np.ndarray]


def default_suffix(fmt: str) -> str:
    """File name suffix of a format ('.ndpi', '.ome.zarr', ...)."""
    return _SUFFIX[fmt]


#: largest NDPI side this writer can store (libjpeg's limit, rounded down to a multiple of 8)
NDPI_MAX_SIDE = 65496


def level_shapes(fmt: str, shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Pyramid level shapes a format gets (NDPI pads lower levels to multiples of 8 px)."""
    if fmt == "ndpi" and (shape[0] % 8 or shape[1] % 8):
        # OpenSlide 4 returns black pixels for partial JPEG MCUs at NDPI level edges
        raise ValueError(f"NDPI size must be a multiple of 8 px on both sides, got {shape[0]}x{shape[1]}")
    if fmt == "ndpi" and max(shape) > NDPI_MAX_SIDE:
        # each NDPI level is one baseline JPEG; libjpeg refuses sides above 65500
        raise ValueError(f"NDPI sides are at most {NDPI_MAX_SIDE} px (one JPEG per level), got {shape[0]}x{shape[1]}")
    return pyramid_shapes(shape, multiple=8 if fmt == "ndpi" else 1)


def write_pyramid(
    path: Path, fmt: str, shape: tuple[int, int], render: Render, mpp: float | None,
    objective: float, tile: int = 512, quality: int = 90, compression: str | None = None,
) -> list[tuple[int, int]]:
    """Write a pyramidal RGB slide; returns the level shapes. ``mpp`` None writes no pixel size."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    compression = compression or COMPRESSIONS[fmt][0]
    if compression not in COMPRESSIONS[fmt]:
        raise ValueError(f"{fmt} supports compression {', '.join(COMPRESSIONS[fmt])}, not {compression!r}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    shapes = level_shapes(fmt, shape)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    _remove(tmp)
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".pyramid-") as scratch:
            builder = PyramidBuilder(shapes, 3, scratch)
            bands = [_level0(render, shapes[0], tile, builder)]
            bands += [_stored(builder, k, tile) for k in range(1, len(shapes))]
            _WRITERS[fmt](tmp, shapes, bands, mpp, objective, tile, quality, compression, builder)
        _replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return shapes


def _level0(render: Render, shape: tuple[int, int], band: int,
            builder: PyramidBuilder) -> Iterator[np.ndarray]:
    """Rendered level-0 bands, fed to the pyramid builder as they pass."""
    h, w = shape
    for y in range(0, h, band):
        rows = render(y, min(y + band, h))
        if rows.shape != (min(band, h - y), w, 3) or rows.dtype != np.uint8:
            raise ValueError(f"render returned {rows.shape} {rows.dtype} for rows {y}..")
        builder.push(rows)
        yield rows
    builder.finish()


def _stored(builder: PyramidBuilder, k: int, band: int) -> Iterator[np.ndarray]:
    """Bands of finished level ``k`` (only valid once level 0 has been consumed)."""
    a = builder.level(k)
    for y in range(0, a.shape[0], band):
        yield np.asarray(a[y : y + band])


def _tiles(bands: Iterator[np.ndarray], tile: int) -> Iterator[np.ndarray]:
    """Row-major tiles of a level streamed as bands of ``tile`` rows (edge tiles partial)."""
    for b in bands:
        for x in range(0, b.shape[1], tile):
            yield b[:, x : x + tile]


def _write_ndpi(path, shapes, bands, mpp, objective, tile, quality, compression, builder) -> None:
    """NDPI: one restart-marker JPEG per level (see _ndpi)."""
    write_ndpi(path, shapes, bands, mpp, objective, quality)


def _tiff_options(compression: str, quality: int, tile: int) -> dict:
    """tifffile.write options shared by every level of a tiled RGB TIFF."""
    opts: dict = {"tile": (tile, tile), "photometric": "rgb", "metadata": None, "maxworkers": 2,
                  "software": "wsicount synth"}
    if compression == "jpeg":
        opts |= {"compression": "jpeg", "compressionargs": {"level": quality}}
    else:
        opts |= {"compression": "adobe_deflate", "compressionargs": {"level": 6},
                 "predictor": True}
    return opts


def _resolution(mpp: float | None, shapes, k: int) -> dict:
    """X/YResolution in pixels per centimetre for level ``k`` (nothing without mpp)."""
    if mpp is None:
        return {"resolution": None}
    ds_x, ds_y = shapes[0][1] / shapes[k][1], shapes[0][0] / shapes[k][0]
    return {"resolution": (1e4 / (mpp * ds_x), 1e4 / (mpp * ds_y)), "resolutionunit": "CENTIMETER"}


def _bigtiff(shapes) -> bool:
    """BigTIFF when raw data could approach the 4 GiB classic-TIFF limit."""
    return sum(h * w * 3 for h, w in shapes) > 2**31


def _write_tiff(path, shapes, bands, mpp, objective, tile, quality, compression, builder) -> None:
    """Generic pyramidal TIFF: levels are top-level IFDs, reduced ones with SubFileType 1."""
    opts = _tiff_options(compression, quality, tile)
    with tifffile.TiffWriter(path, bigtiff=_bigtiff(shapes)) as tw:
        for k, (h, w) in enumerate(shapes):
            tw.write(_tiles(bands[k], tile), shape=(h, w, 3), dtype=np.uint8,
                     subfiletype=0 if k == 0 else 1, **_resolution(mpp, shapes, k), **opts)


def _write_svs(path, shapes, bands, mpp, objective, tile, quality, compression, builder) -> None:
    """Aperio SVS: tiled levels (SubFileType 0) with a stripped thumbnail as the second IFD."""
    opts = _tiff_options(compression, quality, tile)
    h0, w0 = shapes[0]
    head = f"Aperio Image Library v12.0.15 \r\n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile})"
    meta = f"|AppMag = {objective:g}" + (f"|MPP = {mpp:.6g}" if mpp is not None else "")
    with tifffile.TiffWriter(path, bigtiff=_bigtiff(shapes)) as tw:
        for k, (h, w) in enumerate(shapes):
            desc = f"{head} JPEG/RGB Q={quality}" + (meta if k == 0 else f" -> {w}x{h}")
            tw.write(_tiles(bands[k], tile), shape=(h, w, 3), dtype=np.uint8, subfiletype=0,
                     description=desc, **opts)
            if k == 0:
                thumb = np.asarray(builder.level(len(shapes) - 1)) if len(shapes) > 1 else None
                if thumb is not None:
                    th, tw_ = thumb.shape[:2]
                    tw.write(thumb, photometric="rgb", compression="jpeg", metadata=None,
                             description=f"Aperio Image Library v12.0.15 \r\n{w0}x{h0} -> {tw_}x{th} - ",
                             software="wsicount synth")


def _write_ome_tiff(path, shapes, bands, mpp, objective, tile, quality, compression, builder) -> None:
    """OME-TIFF: level 0 in the main IFD, reduced levels as its SubIFDs."""
    opts = _tiff_options(compression, quality, tile)
    meta: dict = {"axes": "YXS", "Name": "wsicount synthetic slide"}
    if mpp is not None:
        meta |= {"PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm",
                 "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm"}
    with tifffile.TiffWriter(path, bigtiff=_bigtiff(shapes), ome=True) as tw:
        for k, (h, w) in enumerate(shapes):
            level_opts = dict(opts)
            if k == 0:
                level_opts |= {"metadata": meta, "subifds": len(shapes) - 1}
            else:
                level_opts |= {"subfiletype": 1}
            tw.write(_tiles(bands[k], tile), shape=(h, w, 3), dtype=np.uint8,
                     **_resolution(mpp, shapes, k), **level_opts)


def _write_ome_zarr(path, shapes, bands, mpp, objective, tile, quality, compression, builder) -> None:
    """OME-Zarr, NGFF 0.4 (Zarr v2): axes c,y,x, one dataset per level, scale in micrometres."""
    import numcodecs
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    comp = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.NOSHUFFLE) \
        if compression == "zstd" else None
    datasets = []
    for k, (h, w) in enumerate(shapes):
        arr = root.create_array(str(k), shape=(3, h, w), chunks=(3, tile, tile), dtype="uint8",
                                compressors=comp, fill_value=0,
                                chunk_key_encoding={"name": "v2", "separator": "/"})
        y = 0
        for band in bands[k]:
            # zarr encodes strided input several times slower: hand it (c, y, x) contiguous
            arr[:, y : y + band.shape[0], :] = np.ascontiguousarray(np.moveaxis(band, -1, 0))
            y += band.shape[0]
        scale_x = (mpp or 1.0) * shapes[0][1] / w
        scale_y = (mpp or 1.0) * shapes[0][0] / h
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, scale_y, scale_x]}]})
    unit = {"unit": "micrometer"} if mpp is not None else {}
    root.attrs["multiscales"] = [{
        "version": "0.4", "name": "wsicount synthetic slide", "type": "mean",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", **unit},
                 {"name": "x", "type": "space", **unit}],
        "datasets": datasets}]
    root.attrs["omero"] = {"version": "0.4", "rdefs": {"model": "color"}, "channels": [
        {"label": n, "color": c, "active": True,
         "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
        for n, c in (("R", "FF0000"), ("G", "00FF00"), ("B", "0000FF"))]}


_WRITERS = {"ndpi": _write_ndpi, "tiff": _write_tiff, "svs": _write_svs,
            "ome-tiff": _write_ome_tiff, "ome-zarr": _write_ome_zarr}


def _remove(p: Path) -> None:
    """Delete a file or directory tree if present."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _replace(tmp: Path, final: Path) -> None:
    """Move the finished output into place, replacing an older slide of the same kind."""
    if final.is_dir() and not final.is_symlink():
        if not is_zarr_dir(final):
            raise OutputError(f"{final} is a directory that is not a Zarr store; not replacing it")
        shutil.rmtree(final)
    os.replace(tmp, final)
