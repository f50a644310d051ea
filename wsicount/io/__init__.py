"""Whole-slide image readers: one :class:`Slide` API over OpenSlide, tifffile and OME-Zarr.

Invariants of an open :class:`Slide`:

* ``levels[i]`` is a dask-backed ``xarray.DataArray`` of uint8 with dims ``('y', 'x', 'c')``,
  coordinates in micrometres at pixel centres (``(i + 0.5) * level_mpp``) and attrs
  ``{'level', 'downsample', 'mpp'}``; level 0 is the largest. ``shapes[i]`` is its
  ``(height, width, channels)``.
* ``levels`` is built on first use, so that dask and xarray are imported only when asked for: the
  pipeline reads through :meth:`Slide.read_region` and :func:`reduce_level` without them.
* Dask graphs carry only (path, backend, mpp override): each process opens the file once
  and caches the handle, so graphs pickle cheaply to ``dask.distributed`` workers.
* A slide pickles as (path, backend, mpp override) and reopens lazily on first use.
* Opening reads no pixels except a window of the smallest level (validation).
"""

from wsicount.io._open import BACKENDS
from wsicount.io._reduce import reduce_level
from wsicount.io._slide import VENDORS, Slide, open_slide, slide_info

__all__ = ["Slide", "open_slide", "slide_info", "reduce_level", "BACKENDS", "VENDORS"]
