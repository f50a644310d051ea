"""The per-process handle cache and the lazy level arrays dask wraps.

Dask graphs never carry an open file: a level is a :class:`LazyLevel` holding only a
:class:`SlideKey` (path, backend, mpp override); each process opens the slide once on first
use and keeps the handle in a small cache keyed by key and process id (a handle inherited
through ``fork`` is never reused, since file offsets and decoder state would be shared).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from wsicount.errors import TileReadError, WsicountError
from wsicount.io._base import Backend, SlideKey
from wsicount.io._open import open_backend

__all__ = ["LazyLevel", "get_backend", "register_backend", "drop_backend", "read_window"]

_MAX_HANDLES = 16

_CACHE: OrderedDict[tuple[SlideKey, int], Backend] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def register_backend(key: SlideKey, backend: Backend) -> None:
    """Make a Slide's open backend the cached handle of ``key`` (the Slide closes it)."""
    backend.owned = True
    with _CACHE_LOCK:
        _CACHE[(key, os.getpid())] = backend
        _evict()


def drop_backend(key: SlideKey, backend: Backend | None = None) -> None:
    """Forget the cached handle of ``key`` (only if it is ``backend``, when given)."""
    with _CACHE_LOCK:
        ck = (key, os.getpid())
        if ck in _CACHE and (backend is None or _CACHE[ck] is backend):
            del _CACHE[ck]


def _evict() -> None:
    """Close the least recently used handles beyond the cache size (lock held)."""
    while len(_CACHE) > _MAX_HANDLES:
        _, old = _CACHE.popitem(last=False)
        if not old.owned:  # a live Slide may still read through its own handle
            old.close()


def get_backend(key: SlideKey) -> Backend:
    """This process's handle for ``key``, opening it on first use."""
    ck = (key, os.getpid())
    with _CACHE_LOCK:
        if ck in _CACHE:
            _CACHE.move_to_end(ck)
            return _CACHE[ck]
    backend = open_backend(key)
    with _CACHE_LOCK:
        if ck in _CACHE:  # another thread won the race; keep one handle
            backend.close()
            return _CACHE[ck]
        _CACHE[ck] = backend
        _evict()
        return backend


def read_window(key: SlideKey, backend: Backend, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Backend read with decode failures reported as :class:`TileReadError`."""
    try:
        return backend.read(level, y0, x0, h, w)
    except WsicountError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a tile read error
        msg = f"{key.path}: cannot decode level {level} tile at y={y0}, x={x0} ({h}x{w} px): {exc}"
        raise TileReadError(" ".join(msg.split())) from exc


@dataclass(eq=False)
class LazyLevel:
    """Array-like view of one level for ``dask.array.from_array`` (pickles as its key)."""

    key: SlideKey
    level: int
    shape: tuple[int, int, int]
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.uint8))
    ndim: int = 3

    def __getitem__(self, idx: tuple[slice, ...]) -> np.ndarray:
        """Read a block; dask only asks for in-bounds slices with unit step."""
        ys, xs, cs = (tuple(idx) + (slice(None),) * 3)[:3]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), self.shape[2]), np.uint8)[..., cs]
        block = read_window(self.key, get_backend(self.key), self.level, y0, x0, y1 - y0, x1 - x0)
        return block[..., cs]

    def __dask_tokenize__(self) -> tuple:
        """Deterministic token: the file identity (size, mtime) and the level."""
        try:
            st = os.stat(self.key.path)
            ident = (st.st_size, st.st_mtime_ns)
        except OSError:
            ident = (0, 0)
        return ("wsicount.LazyLevel", self.key, ident, self.level, self.shape)
