"""The :class:`Slide` object, :func:`open_slide` and :func:`slide_info` (invariants: :mod:`wsicount.io`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsicount.errors import InputError, MissingMppError, SlideFormatError
from wsicount.io._base import Backend, SlideKey, aligned_chunks
from wsicount.io._handles import LazyLevel, drop_backend, read_window, register_backend
from wsicount.io._open import open_backend, resolve

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["Slide", "open_slide", "slide_info", "VENDORS"]

VENDORS = ("hamamatsu", "aperio", "mirax", "generic-tiff", "ome-tiff", "tiff", "ome-zarr")


@dataclass(eq=False)
class Slide:
    """An open whole-slide image (see :mod:`wsicount.io` for the invariants)."""

    path: Path
    vendor: str
    backend: str
    mpp: float
    mpp_y: float
    objective_power: float | None
    downsamples: list[float]
    shapes: list[tuple[int, int, int]]  # (height, width, channels) per level
    properties: dict[str, str]

    @property
    def levels(self) -> list[xr.DataArray]:
        """The pyramid as dask-backed DataArrays (built, and dask/xarray imported, on first use)."""
        if "_levels" not in self.__dict__:
            self.__dict__["_levels"] = [_level_array(self, k) for k in range(len(self.shapes))]
        return self.__dict__["_levels"]

    def __repr__(self) -> str:
        """Short description (the dataclass default would print every dask graph)."""
        if "_reopen" in self.__dict__:
            return f"Slide({self.__dict__['_reopen']['path']!r}, not yet reopened)"
        h, w, c = self.shapes[0]
        return (f"Slide({str(self.path)!r}, vendor={self.vendor!r}, backend={self.backend!r}, "
                f"{w}x{h}x{c}, mpp={self.mpp:.4g}, levels={len(self.shapes)})")

    def level_mpp(self, level: int) -> float:
        """Micrometres per pixel (x) of ``level``."""
        return self.mpp * self.downsamples[level]

    def best_level(self, target_mpp: float, tol: float = 0.02) -> int:
        """Coarsest level whose mpp <= target_mpp*(1+tol) (never upsample); level 0 if none."""
        limit = target_mpp * (1.0 + tol)
        ok = [i for i in range(len(self.shapes)) if self.level_mpp(i) <= limit]
        return max(ok, key=self.level_mpp) if ok else 0

    def read_region(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """(h, w, c) uint8 pixels of a level window; parts outside the level are zero-filled.

        Fast path, no dask: decodes only the tiles the window touches.
        """
        if not 0 <= level < len(self.shapes):
            raise IndexError(f"{self.path}: level {level} does not exist ({len(self.shapes)} levels)")
        if h < 0 or w < 0:
            raise ValueError(f"window size must be non-negative, got {h}x{w}")
        lh, lw, c = self.shapes[level]
        out = np.zeros((h, w, c), np.uint8)
        ya, yb = max(y0, 0), min(y0 + h, lh)
        xa, xb = max(x0, 0), min(x0 + w, lw)
        if ya < yb and xa < xb:
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = read_window(
                self._key, self._impl, level, ya, xa, yb - ya, xb - xa)
        return out

    def set_decode_cache(self, nbytes: int) -> None:
        """Keep up to ``nbytes`` of decoded segments for overlapping reads (tifffile backend; 0 = off, the default)."""
        self._impl.set_decode_cache(nbytes)

    def close(self) -> None:
        """Close the file handle (dask arrays of this slide reopen it if computed later)."""
        if "_impl" in self.__dict__:
            drop_backend(self._key, self._impl)
            self._impl.close()

    def __enter__(self) -> Slide:
        """Context manager: closes on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the slide."""
        self.close()

    def __getstate__(self) -> dict:
        """Only what reopening needs; pixels and handles never travel."""
        if "_reopen" in self.__dict__:
            return dict(self.__dict__["_reopen"])
        return {"path": str(self.path), "abspath": self._key.path, "backend": self._key.backend,
                "mpp": self._key.mpp, "t": self._key.t}

    def __setstate__(self, state: dict) -> None:
        """Defer reopening to the first attribute access (in the receiving process)."""
        self.__dict__["_reopen"] = dict(state)

    def __getattr__(self, name: str):
        """Reopen an unpickled slide on first use of any of its attributes."""
        state = self.__dict__.get("_reopen")
        if state is None or name.startswith("__"):
            raise AttributeError(name)
        key = SlideKey(state["abspath"], state["backend"], state["mpp"], state.get("t", 0))
        fresh = _slide_from_backend(Path(state["path"]), key, open_backend(key))
        self.__dict__.pop("_reopen", None)
        self.__dict__.update(fresh.__dict__)
        return getattr(self, name)


def open_slide(path: str | Path, mpp: float | None = None, backend: str = "auto", t: int = 0) -> Slide:
    """Open a slide file or OME-Zarr store; ``mpp`` overrides the file's pixel size; ``t`` picks a
    time series' time point (the first by default).

    Raises InputError (missing path, plain directory, bad ``mpp``), SlideFormatError
    (empty, unsupported, truncated or undecodable) or MissingMppError.
    """
    p = Path(path).expanduser()
    if mpp is not None and not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise InputError(f"{p}: --mpp must be a positive number of micrometres per pixel, got {mpp!r}")
    name, impl = resolve(p, backend, t)
    key = SlideKey(str(p.absolute()), name, None if mpp is None else float(mpp), int(t))
    try:
        return _slide_from_backend(p, key, impl)
    except Exception:
        impl.close()
        raise


def _slide_from_backend(path: Path, key: SlideKey, impl: Backend) -> Slide:
    """Assemble a Slide around an open backend and register its handle for dask reads."""
    if key.mpp is not None:
        mx = my = key.mpp
        source = "override"
    elif impl.mpp_xy is not None:
        (mx, my), source = impl.mpp_xy, "file"
    else:
        raise MissingMppError(f"{path}: no pixel size (mpp) in the file; pass --mpp")
    h0, w0 = impl.shapes[0]
    if any(h < 1 or w < 1 for h, w in impl.shapes):
        raise SlideFormatError(f"{path} has an empty pyramid level")
    downsamples = [(w0 / w + h0 / h) / 2.0 for h, w in impl.shapes]
    shapes = [(int(h), int(w), int(impl.channels)) for h, w in impl.shapes]
    props = dict(impl.properties)
    props["wsicount.mpp_source"] = source
    slide = Slide(path=path, vendor=impl.vendor, backend=impl.name, mpp=float(mx), mpp_y=float(my),
                  objective_power=impl.objective_power, downsamples=downsamples, shapes=shapes,
                  properties=props)
    slide.__dict__["_impl"] = impl
    slide.__dict__["_key"] = key
    slide.__dict__["_channel_names"] = list(impl.channel_names)
    register_backend(key, impl)
    return slide


def _level_array(slide: Slide, k: int) -> xr.DataArray:
    """Dask-backed DataArray of level ``k`` with micrometre pixel-centre coordinates."""
    import dask.array as da
    import xarray as xr
    from dask.base import tokenize

    key, impl = slide._key, slide._impl
    h, w, c = slide.shapes[k]
    h0, w0, _ = slide.shapes[0]
    mpp_x, mpp_y = slide.mpp * w0 / w, slide.mpp_y * h0 / h
    lazy = LazyLevel(key, k, (h, w, c))
    arr = da.from_array(lazy, chunks=_level_chunks(slide, k), name=f"wsicount-level{k}-{tokenize(lazy)}",
                        asarray=False, fancy=False, lock=False, inline_array=False,
                        meta=np.empty((0, 0, 0), np.uint8))
    coords = {"y": (np.arange(h) + 0.5) * mpp_y, "x": (np.arange(w) + 0.5) * mpp_x}
    return xr.DataArray(arr, dims=("y", "x", "c"), coords=coords,
                        attrs={"level": k, "downsample": slide.downsamples[k], "mpp": mpp_x})


def _level_chunks(slide: Slide, k: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int]]:
    """Dask chunks of level ``k``: multiples of the native tile near :data:`CHUNK` px."""
    h, w, c = slide.shapes[k]
    th, tw = slide._impl.tiles[k]
    return aligned_chunks(h, th), aligned_chunks(w, tw), (c,)


def slide_info(slide: Slide) -> dict:
    """JSON-ready summary: vendor, backend, pixel size, channels and every level's geometry."""
    impl: Backend = slide._impl
    levels = []
    for k, (h, w, _c) in enumerate(slide.shapes):
        cy, cx, _ = _level_chunks(slide, k)
        levels.append({"level": k, "height": int(h), "width": int(w),
                       "downsample": round(float(slide.downsamples[k]), 6),
                       "mpp": round(slide.level_mpp(k), 6),
                       "tile": [int(t) for t in impl.tiles[k]],
                       "chunk": [int(max(cy)), int(max(cx))]})
    props = slide.properties
    return {
        "path": str(slide.path),
        "vendor": slide.vendor,
        "backend": slide.backend,
        "mpp": slide.mpp,
        "mpp_y": slide.mpp_y,
        "mpp_source": props.get("wsicount.mpp_source", "file"),
        "objective_power": slide.objective_power,
        "channels": int(slide.shapes[0][2]),
        "channel_names": list(slide._channel_names),
        "dtype": "uint8",
        "t_size": int(props.get("wsicount.t_size", 1)),
        "z_size": int(props.get("wsicount.z_size", 1)),
        "levels": levels,
    }
