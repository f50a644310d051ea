"""The backend interface every reader implements, and the pieces readers share.

:class:`SlideKey` is what identifies an open slide across processes; :class:`IntensityMap`
maps non-uint8 samples to uint8; :class:`SegmentCache` keeps decoded segments for
overlapping reads; :func:`aligned_chunks` lays dask chunks on native tiles. The per-process
handle cache lives in :mod:`wsicount.io._handles`, above the backends it opens.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

__all__ = ["Backend", "SegmentCache", "SlideKey", "aligned_chunks", "IntensityMap", "CHUNK"]

CHUNK = 2048  # target dask chunk side in pixels (a multiple of the native tile size)


@dataclass(frozen=True)
class SlideKey:
    """What a worker process needs to reopen a slide: cheap to pickle and hash."""

    path: str
    backend: str
    mpp: float | None = None
    #: the time point read from a time series (T > 1); 0 for every other slide
    t: int = 0


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
    rarely aligns with the file's segments (an NDPI level stored as 8-row restart intervals
    as wide as the level). ``nbytes`` 0 disables it.

    The segments live in one slab of equal slots, allocated at the first ``put``: thousands
    of long-lived small arrays scattered through the heap would keep the allocator from
    reusing the freed activation memory of the network, so the cache costs its limit and no
    more (``python benchmarks/memory.py`` measures the run's peak with it). ``get`` returns a
    copy, so a slot reused by another thread never changes what a reader is pasting. Thread-safe.
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
            self._items[key] = (slot, seg.shape, seg.dtype, pos, flat.size)  # size kept: no np.prod per get

    def resize(self, nbytes: int) -> None:
        """Change the limit (dropping what is cached)."""
        with self._lock:
            self.limit = max(0, int(nbytes))
            self._clear()

    @property
    def nbytes(self) -> int:
        """Bytes held now (the slab)."""
        return 0 if self._slab is None else int(self._slab.nbytes)


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
