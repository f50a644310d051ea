"""The density image in the output store: created once, one chunk written per tile, then a sum pyramid.

Layout (see :mod:`wsicount.store.layout`): ``density/0`` is float32 density at model resolution,
cells per pixel, one chunk per tile core; ``density/1..n`` are 2x2 *sums* of the level below,
so every level sums to the same count; ``labels/tissue/0`` is the tissue mask. The root group
repeats the density's ``multiscales`` with paths ``density/<k>``: the root is the density image
with the tissue as its label, what an OME-Zarr reader given the output folder opens.

Stitching invariant: each tile writes exactly one chunk of ``density/0`` (chunk = tile core)
and, on a slide large enough for a pyramid, exactly one chunk of ``density/1`` (its 2x2 sums),
so parallel writers never share a chunk and the stitched map is the concatenation of the tile
cores, free of seams by construction; a tile is marked done only after its chunks are written
(see :mod:`wsicount.store.records`). Levels 2..n are summed from level 1 once all tiles are
done (:func:`build_pyramid`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from .atomic import atomic_write
from .layout import DENSITY, LABELS, Layout

__all__ = ["DensityStore", "ChunkFiles", "create_density", "open_density", "write_chunk", "build_pyramid", "write_label",
           "write_image", "ngff_multiscales", "PYRAMID_MIN_SIDE"]

_V = "0.4"
#: a level is added while the level below has both sides >= 2x this
PYRAMID_MIN_SIDE = 512
#: output chunks side by side per pyramid read and write (see :func:`build_pyramid`)
PYRAMID_BLOCK = 4
#: attribute of a ``density/1`` that the tiles write (see :func:`create_density`)
_PER_TILE = "written_per_tile"


def ngff_multiscales(name: str, scales: list[float], translations: list[float], unit: str = "micrometer") -> dict:
    """NGFF 0.4 ``multiscales`` attribute for a 2-D (y, x) image with isotropic scales."""
    return {
        "multiscales": [
            {
                "version": _V,
                "name": name,
                "axes": [{"name": "y", "type": "space", "unit": unit}, {"name": "x", "type": "space", "unit": unit}],
                "datasets": [
                    {
                        "path": str(i),
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [s, s]},
                            {"type": "translation", "translation": [t, t]},
                        ],
                    }
                    for i, (s, t) in enumerate(zip(scales, translations))
                ],
                "type": "sum" if name == DENSITY else "nearest",
            }
        ]
    }


def _root(out: Path) -> zarr.Group:
    """Open (or create) the output root group as Zarr v2."""
    return zarr.open_group(str(out), mode="a", zarr_format=2)


@dataclass(frozen=True)
class ChunkFiles:
    """Whole chunks of a local Zarr v2 array written as its chunk files: the array's own codec and key, atomically.

    zarr-python 3 writes every chunk through its asyncio codec pipeline (an event loop, worker
    threads, a check of whether the chunk is complete, a temporary name), on threads that
    compete with the network (``benchmarks/feed.py --zarr-writes`` compares the two). A tile
    writes each of its chunks exactly once
    and whole, so none of that is needed. The bytes are what the Zarr v2 spec prescribes and
    zarr itself writes: the full chunk in C order (an edge chunk padded with the fill value),
    encoded by the array's compressor, under the key ``"{row}{separator}{col}"``. Reading
    stays with zarr; a test reads every written chunk back through it.
    """

    folder: Path
    chunks: tuple[int, int]
    separator: str
    compressor: object | None  # a numcodecs codec
    dtype: np.dtype
    fill: float

    @classmethod
    def of(cls, arr: zarr.Array) -> "ChunkFiles | None":
        """The writer for ``arr``, or None where its layout is not the one written here (zarr writes it then)."""
        from zarr.storage import LocalStore

        m = arr.metadata
        store = arr.store_path.store
        if (getattr(m, "zarr_format", None) != 2 or not isinstance(store, LocalStore) or m.filters
                or m.order != "C" or len(m.chunks) != 2):
            return None
        return cls(Path(store.root) / arr.store_path.path, tuple(m.chunks), m.dimension_separator, m.compressor,
                   np.dtype(arr.dtype), float(m.fill_value or 0))

    def write(self, row: int, col: int, block: np.ndarray) -> None:
        """Write chunk (row, col) holding ``block`` at its corner (smaller only at the array's end)."""
        if block.shape != self.chunks:
            full = np.full(self.chunks, self.fill, dtype=self.dtype)
            full[: block.shape[0], : block.shape[1]] = block
            block = full
        raw = np.ascontiguousarray(block, dtype=self.dtype)
        data = self.compressor.encode(raw) if self.compressor is not None else raw.tobytes()
        atomic_write(self.folder / f"{row}{self.separator}{col}", data)


@dataclass
class DensityStore:
    """The arrays a tile writes: ``density/0`` and, when it is written per tile, ``density/1``, with their chunk writers."""

    level0: zarr.Array
    level1: zarr.Array | None
    files0: ChunkFiles | None = None
    files1: ChunkFiles | None = None


def create_density(out: Path, shape: tuple[int, int], chunk: int, mpp: float,
                   min_side: int = PYRAMID_MIN_SIDE) -> zarr.Array:
    """Create (or reopen, if identical) ``density/0`` with one chunk per tile core.

    A new ``density/0`` comes with a new ``density/1`` of ``chunk // 2`` chunks for the
    tiles to write (when the slide has a level 1 at all and ``chunk`` is even). A reopened
    one keeps the ``density/1`` it had; if it had none (a run started by a version that
    built all levels at the end), :func:`build_pyramid` builds level 1 from level 0.
    """
    root = _root(out)
    g = root.require_group(DENSITY)
    g.attrs.update(ngff_multiscales(DENSITY, [mpp], [0.5 * mpp]))
    _mirror_at_root(root, g)
    if "0" in g:
        arr = g["0"]
        if tuple(arr.shape) == tuple(shape) and tuple(arr.chunks) == (chunk, chunk):
            return arr
        del g["0"]
    arr = g.create_array("0", shape=shape, chunks=(chunk, chunk), dtype="float32", fill_value=0.0)
    if "1" in g:
        del g["1"]  # summed from the level 0 just replaced
    if min(shape) // 2 >= min_side and chunk % 2 == 0:
        lv1 = g.create_array("1", shape=(shape[0] // 2, shape[1] // 2), chunks=(chunk // 2, chunk // 2),
                             dtype="float32", fill_value=0.0)
        lv1.attrs[_PER_TILE] = True
    return arr


def open_density(out: Path) -> DensityStore:
    """Open the arrays the tiles write, for writing.

    With ``write_empty_chunks``: zarr's check of every chunk against the fill value costs
    more than it saves here (a tile core is tissue, so hardly ever all zero). An all-zero core (tissue only
    in its halo) is then a small file instead of none; it reads the same.
    """
    g = zarr.open_group(str(Layout(out).density), mode="r+", zarr_format=2)
    lv1 = g["1"] if "1" in g and g["1"].attrs.get(_PER_TILE) else None
    cfg = {"write_empty_chunks": True}
    lv0 = g["0"].with_config(cfg)
    lv1 = lv1.with_config(cfg) if lv1 is not None else None
    return DensityStore(lv0, lv1, ChunkFiles.of(lv0), ChunkFiles.of(lv1) if lv1 is not None else None)


def write_chunk(store: DensityStore, y0: int, x0: int, block: np.ndarray) -> None:
    """Write one tile core (aligned to one chunk) into ``density/0``, and its 2x2 sums into ``density/1``.

    ``block`` starts at an even row and column (a chunk corner), so its 2x2 sums are exactly
    the level-1 chunk at (y0/2, x0/2); an odd last row or column of the slide is dropped, as
    level 1 has ``shape // 2``.
    """
    put_block(store.level0, store.files0, y0, x0, block)
    lv1 = store.level1
    if lv1 is None:
        return
    h, w = min(block.shape[0] // 2, lv1.shape[0] - y0 // 2), min(block.shape[1] // 2, lv1.shape[1] - x0 // 2)
    if h > 0 and w > 0 and block.any():  # an all-zero chunk reads as the fill value: not written
        put_block(lv1, store.files1, y0 // 2, x0 // 2, _sum2x2(block[: 2 * h, : 2 * w]))


def put_block(arr: zarr.Array, files: ChunkFiles | None, y0: int, x0: int, block: np.ndarray) -> None:
    """Write ``block`` at the chunk corner (y0, x0) of ``arr``: as its chunk file, or through zarr."""
    (ch, cw), (h, w) = arr.chunks, block.shape
    # a whole chunk, or all of one that the array's end cuts short: nothing of the old chunk is kept
    whole = (y0 % ch == 0 and x0 % cw == 0 and (h == ch or (h < ch and y0 + h == arr.shape[0]))
             and (w == cw or (w < cw and x0 + w == arr.shape[1])))
    if files is not None and whole:
        files.write(y0 // ch, x0 // cw, block)
    else:
        arr[y0 : y0 + block.shape[0], x0 : x0 + block.shape[1]] = block


def _sum2x2(a: np.ndarray) -> np.ndarray:
    """2x2 block sums of an even-sided array (strided pair sums, cheaper than reshape(...).sum(axis=(1, 3)))."""
    rows = a[0::2] + a[1::2]
    return rows[:, 0::2] + rows[:, 1::2]


def build_pyramid(out: Path, mpp: float, min_side: int = PYRAMID_MIN_SIDE, threads: int = 2) -> int:
    """Write density levels 2..n (and level 1 unless the tiles wrote it) as 2x2 block sums of the level below; returns n levels.

    A level built here has the chunk shape of the level it is summed from (half a tile core
    from the tiles' level 1, else a tile core), so an output chunk is the 2x2 sum of exactly
    2x2 source chunks. The work goes in blocks of up to ``PYRAMID_BLOCK`` output chunks
    side by side, one Zarr read and one write each, whose chunks Zarr then decodes and
    encodes concurrently (``benchmarks/overhead.py`` times it against one chunk per call): each
    source chunk is read once, memory holds ``threads`` x 4 x ``PYRAMID_BLOCK`` source
    chunks, and chunks with no tissue (all zero) are not written at all. Level k sums to the
    same total as level 0 (up to float32 rounding).
    """
    root = _root(out)
    g = root[DENSITY]
    src = g["0"]
    scales, trans = [mpp], [0.5 * mpp]
    level = 0
    if "1" in g and g["1"].attrs.get(_PER_TILE):
        src, level = g["1"], 1
        scales.append(2 * mpp)
        trans.append(mpp)
    c = src.chunks
    while min(src.shape) // 2 >= min_side:
        level += 1
        if str(level) in g:
            del g[str(level)]
        shape = (src.shape[0] // 2, src.shape[1] // 2)
        dst = g.create_array(str(level), shape=shape, chunks=tuple(min(a, b) for a, b in zip(c, shape)),
                             dtype="float32", fill_value=0.0)
        width = dst.chunks[1] * PYRAMID_BLOCK
        blocks = [(y, x) for y in range(0, shape[0], dst.chunks[0]) for x in range(0, shape[1], width)]
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsicount-pyramid") as pool:
            list(pool.map(lambda yx: _sum_block(src, dst, *yx, width), blocks))
        s = mpp * 2**level
        scales.append(s)
        trans.append(0.5 * s)
        src = dst
    g.attrs.update(ngff_multiscales(DENSITY, scales, trans))
    _mirror_at_root(root, g)
    return level + 1


def _mirror_at_root(root: zarr.Group, density: zarr.Group) -> None:
    """Give the root the density's ``multiscales``, its dataset paths prefixed with ``density/``."""
    ms = [{**m, "datasets": [{**d, "path": f"{DENSITY}/{d['path']}"} for d in m["datasets"]]}
          for m in density.attrs["multiscales"]]
    root.attrs["multiscales"] = ms


def _sum_block(src: zarr.Array, dst: zarr.Array, y: int, x: int, width: int) -> None:
    """One row of ``dst`` chunks from (y, x), ``width`` columns wide, from the 2x2 block sums of the matching region of ``src``."""
    h, w = min(dst.chunks[0], dst.shape[0] - y), min(width, dst.shape[1] - x)
    a = src[2 * y : 2 * (y + h), 2 * x : 2 * (x + w)]
    if not a.any():
        return  # no tissue: the fill value already reads as 0
    dst[y : y + h, x : x + w] = _sum2x2(a)  # all-zero chunks in it are not stored (zarr's write_empty_chunks=False)


def write_image(out: Path, name: str, data: np.ndarray, mpp: float) -> None:
    """Write a small single-level 2-D image group ``name/0`` with NGFF metadata."""
    root = _root(out)
    g = root.require_group(name)
    if "0" in g:
        del g["0"]
    arr = g.create_array("0", shape=data.shape, chunks=tuple(min(1024, s) for s in data.shape), dtype=data.dtype, fill_value=0)
    arr[...] = data
    g.attrs.update(ngff_multiscales(name, [mpp], [0.5 * mpp]))


def write_label(out: Path, name: str, mask: np.ndarray, mpp: float) -> None:
    """Write ``labels/<name>`` as an NGFF label image of the root (uint8, 1 = tissue)."""
    root = _root(out)
    labels = root.require_group(LABELS)
    labels.attrs["labels"] = [name]
    g = labels.require_group(name)
    if "0" in g:
        del g["0"]
    data = mask.astype(np.uint8)
    arr = g.create_array("0", shape=data.shape, chunks=tuple(min(2048, s) for s in data.shape), dtype="uint8", fill_value=0)
    arr[...] = data
    attrs = ngff_multiscales(name, [mpp], [0.5 * mpp])
    attrs["image-label"] = {"version": _V, "colors": [{"label-value": 1, "rgba": [0, 200, 0, 128]}], "source": {"image": "../../"}}
    g.attrs.update(attrs)
