"""The output folder: its layout, the density image, tile records and crash-safe writes.

``layout``: every path a slide or stack run writes; ``density``: the density Zarr image, chunk writes and the
sum pyramid; ``records``: the lock, run manifest and :class:`TileRecord` files; ``atomic``:
atomic writes and strict JSON.
"""

from __future__ import annotations

from .atomic import atomic_write, atomic_write_with, json_text, jsonable, tidy
from .layout import Layout, StackLayout
from .records import RunState, TileRecord, slide_fingerprint

__all__ = ["Layout", "StackLayout", "RunState", "TileRecord", "atomic_write", "atomic_write_with", "json_text", "jsonable",
           "slide_fingerprint", "tidy"]
