"""Backend interface, the per-process handle cache and the lazy level arrays dask wraps.

Dask graphs never carry an open file: a level is a :class:`LazyLevel` holding only a
:class:`SlideKey` (path, backend, mpp override); each process opens the slide once on first
use and keeps the handle in a small cache keyed by key and process id (a handle inherited
through ``fork`` is never reused, since file offsets and decoder state would be shared).
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from wsicount.errors import TileReadError, WsicountError

__all__ = ["Backend", "SegmentCache", "SlideKey", "LazyLevel", "get_backend", "register_backend",
           "drop_backend", "read_window", "aligned_chunks", "IntensityMap", "CHUNK"]

CHUNK = 2048  # target dask chunk side in pixels (a multiple of the native tile size)
_MAX_HANDLES = 16


@dataclass(frozen=True)
class SlideKey:
    """What a worker process needs to reopen a slide: cheap to pickle and hash."""

    path: str
    backend: str
    mpp: float | None = None


@dataclass
class IntensityMap:
    """Per-channel affine map of raw samples to uint8: ``clip((v - offset) * scale, 0, 255)``.

    Identity (``None`` arrays) for uint8 data, which is the common case and stays a no-op.
    """

    offset: np.ndarray | None = None
    scale: np.ndarray | None = None

    def apply(self, a: np.ndarray) -> np.ndarray:
        """Map an (h, w, c) array of raw samples to uint8."""
        if self.scale is None:
            return a if a.dtype == np.uint8 else np.clip(a, 0, 255).astype(np.uint8)
        v = (a.astype(np.float32) - self.offset) * self.scale
        return np.clip(v + 0.5, 0, 255).astype(np.uint8)

    @classmethod
    def from_sample(cls, a: np.ndarray, windows: list[tuple[float, float]] | None = None) -> IntensityMap:
        """Map for non-uint8 data: display windows if given, else 0..per-channel max of ``a``."""
        if a.dtype == np.uint8 and windows is None:
            return cls()
        c = a.shape[-1]
        if windows is not None and len(windows) == c:
            lo = np.array([w[0] for w in windows], np.float32)
            hi = np.array([w[1] for w in windows], np.float32)
        else:
            lo = np.zeros(c, np.float32)
            hi = a.reshape(-1, c).max(axis=0).astype(np.float32) if a.size else np.ones(c, np.float32)
        span = np.maximum(hi - lo, 1e-6)
        return cls(offset=lo, scale=(255.0 / span).astype(np.float32))

    def describe(self) -> str:
        """One-line description for slide properties."""
        if self.scale is None:
            return "identity"
        return "; ".join(f"c{i}: (v - {o:g}) * {s:g}" for i, (o, s) in
                         enumerate(zip(self.offset.tolist(), self.scale.tolist(), strict=True)))


class Backend(ABC):
    """An open slide: level geometry, metadata and a raw window reader.

    Invariants: ``shapes[0]`` is the largest level; :meth:`read` only receives windows that
    lie inside the level and returns (h, w, channels) uint8.
    """

    name: str = ""
    vendor: str = ""
    owned: bool = False  # True while a Slide owns (and will close) this handle
    shapes: list[tuple[int, int]]
    tiles: list[tuple[int, int]]  # native tile (h, w) per level, used to align dask chunks
    channels: int
    channel_names: list[str]
    mpp_xy: tuple[float, float] | None
    objective_power: float | None
    properties: dict[str, str]

    @abstractmethod
    def read(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """(h, w, c) uint8 window fully inside ``level``."""

    def prepare_intensity(self) -> None:
        """Derive the map of non-uint8 samples to uint8 (default: data is uint8)."""

    def set_decode_cache(self, nbytes: int) -> None:
        """Keep up to ``nbytes`` of decoded segments for reuse (backends that decode segments themselves)."""

    @abstractmethod
    def close(self) -> None:
        """Release file handles."""


class SegmentCache:
    """Least-recently-used decoded segments (tiles, strips, JPEG restart intervals), bounded in bytes.

    Overlapping tile windows decode the same segments again: halos overlap, and a window
    rarely aligns with the file's segments (an NDPI level stored as 8-row x 1072-px restart
    intervals decodes ~2.2x the window's pixels without a cache, ~1.0x with 128 MiB: a
    simulation of the paper-size slide's reads in the pipeline's order, not a benchmark).
    ``nbytes`` 0 disables it.

    The segments live in one slab of equal slots, allocated at the first ``put``: thousands
    of long-lived small arrays scattered through the heap would keep the allocator from
    reusing the freed activation memory of the network (a hand probe with /usr/bin/time on
    the 1.07 Gpx slide: peak RSS +170-550 MiB for a 128 MiB cache of separate arrays, about
    +128 MiB for the slab; memory.py's runs before and after are in BENCHMARKS.md). ``get`` returns a copy, so a slot
    reused by another thread never changes what a reader is pasting. Thread-safe.
    """

    def __init__(self, nbytes: int = 0) -> None:
        """An empty cache holding at most ``nbytes``."""
        self.limit = max(0, int(nbytes))
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        """Drop every segment and the slab."""
        self._items: OrderedDict[tuple, tuple[int, tuple[int, ...], np.dtype, tuple, int]] = OrderedDict()
        self._slab: np.ndarray | None = None
        self._slot = 0  # bytes per slot
        self._free: list[int] = []

    def get(self, key: tuple) -> tuple[np.ndarray, tuple] | None:
        """A copy of the cached segment of ``key`` and its position, or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            slot, shape, dtype, pos, n = item
            seg = self._slab[slot * self._slot : slot * self._slot + n].view(dtype).reshape(shape).copy()
        return seg, pos

    def put(self, key: tuple, seg: np.ndarray, pos: tuple) -> None:
        """Store a decoded segment, evicting the least recently used when the slab is full."""
        if not 0 < seg.nbytes <= self.limit:
            return
        with self._lock:
            if key in self._items:
                return
            if seg.nbytes > self._slot:  # first segment, or larger ones (another level): new slots
                self._clear()
                self._slot = seg.nbytes
                n_slots = self.limit // self._slot
                self._slab = np.empty(n_slots * self._slot, np.uint8)
                self._free = list(range(n_slots - 1, -1, -1))
            if not self._free:
                _, (old, *_rest) = self._items.popitem(last=False)
                self._free.append(old)
            slot = self._free.pop()
            flat = np.ascontiguousarray(seg).reshape(-1).view(np.uint8)
            self._slab[slot * self._slot : slot * self._slot + flat.size] = flat
            self._items[key] = (slot, seg.shape, seg.dtype, pos, flat.size)  # size kept: np.prod per get cost ~10 µs

    def resize(self, nbytes: int) -> None:
        """Change the limit (dropping what is cached)."""
        with self._lock:
            self.limit = max(0, int(nbytes))
            self._clear()

    @property
    def nbytes(self) -> int:
        """Bytes held now (the slab)."""
        return 0 if self._slab is None else int(self._slab.nbytes)


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
    from wsicount.io._open import open_backend  # import here: _open imports this module

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


def aligned_chunks(size: int, tile: int, target: int = CHUNK) -> tuple[int, ...]:
    """Chunk sizes along one axis covering ``size``: multiples of ``tile`` near ``target``.

    Chunks stay within 1024..4096 px; tiles wider than 4096 px (single-segment NDPI rows)
    are split, since a gigantic chunk costs more memory than re-decoding a row.
    """
    tile = max(1, int(tile))
    step = max(1, target // tile) * tile
    if step < 1024:
        step = -(-1024 // tile) * tile
    step = min(step, 4096)
    n, rest = divmod(size, step)
    return (step,) * n + ((rest,) if rest else ())
