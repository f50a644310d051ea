"""The tile task: read, normalise, infer, mask, stitch and record a list of tiles.

A task is a pure function of its :class:`TileJob` and tiles: it writes each tile's core into
its own density chunk and then the tile's :class:`~wsicount.store.TileRecord`, so tasks can run
in any order, on any worker, and be rerun after a crash with the same result. Per-process
caches (:func:`cached`) open the slide and load the model once per worker process.

Counting invariant: a tile's density is masked by the tissue mask (nearest-neighbour on the
model grid) before its core is cut out, so the total is the integral over tissue and does not
depend on which tissue-touching tiles were processed (tile size) nor on the schedule.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import TileReadError
from ..store import Layout, RunState, TileRecord
from ..tiling import Tile, read_model_window
from ..tissue import mask_density
from .plan import RunPlan

__all__ = ["SlideSource", "ModelSpec", "TileJob", "process_tiles", "task_order", "by_shape", "chunks", "grid_sums",
           "cached", "clear_caches", "infer_batch", "worker_density", "PendingStores", "pending_stores"]


@dataclass(frozen=True)
class SlideSource:
    """How a worker opens the slide."""

    path: str
    backend: str
    mpp_override: float | None
    decode_cache_bytes: int = 0
    #: the time point of a time series
    t: int = 0


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads and runs the model."""

    path: str
    device: str
    precision: str
    batch_size: int  # 0: auto
    torch_threads: int | None = None
    #: tile tasks of one process that share its device at once (they split its memory for batches)
    device_tasks: int = 1


@dataclass(frozen=True)
class TileJob:
    """Everything a worker needs to process tiles; small and picklable."""

    slide: SlideSource
    model: ModelSpec
    plan: RunPlan
    out: str
    skip_bad_tiles: bool = False
    prefetch: int = 2


# --- per-process caches: a worker opens the slide and loads the model once ---------------
_cache_lock = threading.Lock()
_cache: dict[tuple, Any] = {}


def clear_caches() -> None:
    """Forget this process's slides, models and stores (a benchmark's fresh start, as a new process has)."""
    with _cache_lock:
        _cache.clear()


def cached(key: tuple, make: Callable[[], Any]) -> Any:
    """Build-once cache shared by the threads of a process (keys: :func:`model_key`, :func:`run_key`...)."""
    with _cache_lock:
        if key not in _cache:
            _cache[key] = make()
        return _cache[key]


def model_key(spec: ModelSpec) -> tuple:
    """Cache key of a loaded model (the weights file's time dates it)."""
    return ("model", spec.path, spec.device, os.path.getmtime(spec.path))


def run_key(out: str, what: str) -> tuple:
    """Per-process cache key of one of a run's objects (the run's manifest dates the run)."""
    return (what, out, os.path.getmtime(Layout(out).run_json))


class PendingStores:
    """Output folders whose density store is still being created beside this process's first tiles.

    A tile waits for its folder's store only at its first write (see :func:`worker_density`);
    a failure to create it is the tile's failure.
    """

    def __init__(self) -> None:
        self._futures: dict[str, Future] = {}

    def add(self, out: str, fut: Future) -> None:
        self._futures[out] = fut

    def discard(self, out: str) -> None:
        self._futures.pop(out, None)

    def wait(self, out: str) -> None:
        """Return once the store of ``out`` exists (at once when none is pending); raise its creation's error."""
        fut = self._futures.get(out)
        if fut is not None:
            fut.result()


#: this process's pending stores (one owner: the run in this process, see wsicount.runner.slide)
pending_stores = PendingStores()


def worker_slide(src: SlideSource) -> Any:
    """The slide, opened once per process."""
    from ..io import open_slide

    def make() -> Any:
        slide = open_slide(src.path, mpp=src.mpp_override, backend=src.backend, t=src.t)
        slide.set_decode_cache(src.decode_cache_bytes)
        return slide

    return cached(("slide", src.path, src.backend, src.mpp_override, src.t), make)


def worker_model(spec: ModelSpec) -> Any:
    """The model, loaded once per process."""
    from ..infer import pick_device, set_threads
    from ..models import load_model

    def make() -> Any:
        if spec.torch_threads:
            set_threads(spec.torch_threads)
        return load_model(spec.path, device=pick_device(spec.device))

    return cached(model_key(spec), make)


def worker_members(spec: ModelSpec, paths: tuple[str, ...]) -> list[Any]:
    """An ensemble's member models, loaded once per process."""
    from ..infer import pick_device
    from ..views import load_members

    return cached(("members", paths, spec.device), lambda: load_members(paths, pick_device(spec.device)))


def worker_density(out: str) -> Any:
    """The density arrays the tiles write, opened once per process (after any pending creation)."""
    from ..store.density import open_density

    pending_stores.wait(out)
    return cached(run_key(out, "density"), lambda: open_density(Path(out)))


def worker_mask(out: str) -> np.ndarray:
    """The tissue mask: the run's own in the process that computed it, else read from the stored label."""
    import zarr

    def make() -> np.ndarray:
        return zarr.open_array(str(Layout(out).tissue_label / "0"), mode="r")[...].astype(bool)

    return cached(run_key(out, "mask"), make)


# --- the task -----------------------------------------------------------------------------
def process_tiles(job: TileJob, tiles: list[Tile]) -> list[TileRecord]:
    """Read, infer, stitch and record a list of tiles; returns their records.

    Tiles are batched by window shape. A reader thread decodes up to ``job.prefetch``
    batches ahead of the network, so that decoding (GIL-free in imagecodecs/libjpeg) and
    inference overlap; memory held by the queue is ``prefetch x batch x window pixels``.
    """
    from ..infer import auto_batch_size, pick_device, set_threads

    spec = job.model
    slide, model, mask = worker_slide(job.slide), worker_model(spec), worker_mask(job.out)
    if spec.torch_threads:
        set_threads(spec.torch_threads)  # OpenMP's thread count is per calling thread
    device = pick_device(spec.device)
    state = RunState(Path(job.out))
    key = ("batch", spec.path, str(device), spec.precision, job.plan.grid.core, spec.device_tasks)
    size = spec.batch_size or cached(key, lambda: auto_batch_size(model, device, spec.precision,
                                                                  job.plan.grid.tile_size, tasks=spec.device_tasks))
    batches = [b for group in by_shape(tiles) for b in chunks(group, size)]
    records: list[TileRecord] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsicount-read") as reader:
        ahead: deque = deque()
        todo = iter(batches)
        for part in itertools.islice(todo, max(1, job.prefetch)):
            ahead.append(reader.submit(_read_batch, job, slide, list(job.plan.channels), part))
        while ahead:
            items = ahead.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                ahead.append(reader.submit(_read_batch, job, slide, list(job.plan.channels), nxt))
            records += infer_batch(job, model, device, mask, state, items)
    return records


def by_shape(tiles: list[Tile]) -> list[list[Tile]]:
    """Tiles grouped by input-window shape (only equal shapes stack into one batch), order kept."""
    groups: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        groups.setdefault(t.window_shape, []).append(t)
    return list(groups.values())


def task_order(tiles: list[Tile]) -> list[Tile]:
    """Largest windows first, equal shapes adjacent (so that a task's tiles batch together), then row by row.

    Longest-processing-time-first: the threads run out of work at nearly the same time, with
    only small edge tiles left at the end. Row-major within a shape, so that neighbouring
    windows, which share decoded segments, are read close together in time (io.SegmentCache).
    """
    return sorted(tiles, key=lambda t: (-t.window_shape[0] * t.window_shape[1], t.window_shape, t.ty, t.tx))


def chunks(seq: list, size: int) -> list[list]:
    """Split a list into consecutive parts of ``size``."""
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def _read_batch(job: TileJob, slide: Any, channels: list[int], tiles: list[Tile]) -> list[tuple[Tile, Any, float, float]]:
    """Decode and normalise tiles: (tile, (C, h, w) array or the TileReadError, seconds, this thread's CPU seconds) each."""
    from ..preprocess import select_channels

    items = []
    for t in tiles:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            img = read_model_window(slide, job.plan.geom, t.window, native=True)
        except TileReadError as e:
            if not job.skip_bad_tiles:
                raise
            items.append((t, e, 0.0, 0.0))
            continue
        g = job.plan.geom
        x = job.plan.field.apply(select_channels(img, channels), t.window, g.height, g.width)
        items.append((t, x, time.perf_counter() - t0, time.thread_time() - c0))
    return items


def infer_batch(job: TileJob, model: Any, device: Any, mask: np.ndarray, state: RunState,
                 items: list[tuple[Tile, Any, float, float]]) -> list[TileRecord]:
    """Run one batch through the network, then stitch and record each tile (bad ones as bad)."""
    from ..infer import predict_batch

    records = []
    for t, err, *_ in (i for i in items if isinstance(i[1], TileReadError)):
        rec = TileRecord.failed(t.key, str(err))
        state.write_record(rec)
        records.append(rec)
    good = [i for i in items if not isinstance(i[1], TileReadError)]
    if not good:
        return records
    t1, c1 = time.perf_counter(), time.thread_time()
    batch, plan = np.stack([x for _, x, *_ in good]), job.plan
    views = None
    if plan.views:  # tta: 8 dihedral views of this model; ensemble: one view per member
        from ..views import mc_members, predict_views_batch

        models = (worker_members(job.model, plan.members) if plan.views == "ensemble" else
                  cached(("mc", job.model.path, plan.mc), lambda: mc_members(model, *plan.mc))
                  if plan.views == "mcdropout" else [model])
        views = predict_views_batch(models, batch, device, job.model.precision, plan.views == "tta")
        dens = views.mean(axis=0)
    elif plan.head:  # hetero: the density and the head's per-pixel variance from one fp32 pass
        from ..models.variance import load_head, predict_batch_variance

        head = cached(("head", plan.head), lambda: load_head(plan.head))
        dens, var = predict_batch_variance(model, head, batch, device, job.model.precision)
    else:
        dens = predict_batch(model, batch, device, job.model.precision)
    # wall and this thread's CPU seconds: less CPU than wall = waiting for a core or the GIL
    t_inf, c_inf = (time.perf_counter() - t1) / len(good), (time.thread_time() - c1) / len(good)
    # Zarr only now: the first tiles of a run are inferred while the store is created
    from ..store.density import write_chunk

    density = worker_density(job.out)
    for i, ((t, _, t_read, c_read), d) in enumerate(zip(good, dens)):
        t2, c2 = time.perf_counter(), time.thread_time()
        het = float(counted_core(plan, t, var[i], mask)[0].sum(dtype=np.float64)) if plan.head else 0.0
        rec, core = finish_tile(job.plan, t, d, mask, het)
        if views is not None:  # each view's count of the core, masked as the mean is
            rec.views = [float(counted_core(plan, t, v, mask)[0].sum(dtype=np.float64)) for v in views[:, i]]
        write_chunk(density, t.core[0], t.core[2], core)
        rec.t = {"read": t_read, "read_cpu": c_read, "infer": t_inf, "infer_cpu": c_inf,
                 "post": time.perf_counter() - t2, "post_cpu": time.thread_time() - c2}
        state.write_record(rec)
        records.append(rec)
    return records


def finish_tile(plan: RunPlan, t: Tile, d: np.ndarray, mask: np.ndarray, het: float = 0.0) -> tuple[TileRecord, np.ndarray]:
    """Mask the tile's density window, crop its core, find its peaks and grid sums: (record, core).

    ``het``: the core's summed head variance (hetero), part of the record's ``var``."""
    from ..detect import density_peaks

    y0, y1, x0, x1 = t.core
    core, valid, (vy0, vy1, vx0, vx1), outside, on = counted_core(plan, t, d, mask)
    inside = on is None  # all of the window is counted
    oy0, oy1, ox0, ox1 = max(y0, vy0), min(y1, vy1), max(x0, vx0), min(x1, vx1)
    peaks: list[list[float]] = []
    if core.any():
        pk = density_peaks(valid, plan.sigma_px, min_distance=plan.peak_min_distance)
        iy, ix = np.rint(pk[:, 0]).astype(np.int64), np.rint(pk[:, 1]).astype(np.int64)
        # a peak belongs to the tile whose core holds its pixel: no duplicates, no gaps
        own = (y0 <= iy + vy0) & (iy + vy0 < y1) & (x0 <= ix + vx0) & (ix + vx0 < x1)
        pk, iy, ix = pk[own], iy[own], ix[own]
        peaks = np.column_stack([np.round(pk[:, 0] + vy0, 3), np.round(pk[:, 1] + vx0, 3),
                                 valid[iy, ix].astype(np.float64)]).tolist()
    grid = {str(g): grid_sums(core, (y0, x0), g / plan.geom.model_mpp, shape)
            for g, shape in zip(plan.grid_um, plan.grid_shape)}
    rec = TileRecord(t.key, float(core.sum(dtype=np.float64)), peaks, grid, outside=outside)
    if plan.calibration is not None:  # the tile's additive count-variance term, from its count and tissue pixels
        area = (oy1 - oy0) * (ox1 - ox0) if inside else int(on[oy0 - vy0 : oy1 - vy0, ox0 - vx0 : ox1 - vx0].sum())
        rec.var = plan.calibration.tile_var(rec.sum, area, het)
    return rec, core


def counted_core(plan: RunPlan, t: Tile, d: np.ndarray, mask: np.ndarray) -> tuple:
    """(core, valid, valid box, outside, on): the tile's masked core density, the masked window part
    peaks are searched in (the core grown by the peak margin), its box, the density the mask removed
    from the core, and the counted region on the box (None: all of it)."""
    wy0, wy1, wx0, wx1 = t.window
    y0, y1, x0, x1 = t.core
    m = plan.peak_margin
    # valid region for peak finding: core grown by the margin, inside window and grid
    vy0, vy1 = max(y0 - m, wy0), min(y1 + m, wy1, plan.grid.height)
    vx0, vx1 = max(x0 - m, wx0), min(x1 + m, wx1, plan.grid.width)
    valid = d[vy0 - wy0 : vy1 - wy0, vx0 - wx0 : vx1 - wx0]
    # the density outside the counted region is not counted; what it held is measured on the core
    valid, outside, on = mask_density(valid, mask, plan.mask_scale, (vy0, vy1, vx0, vx1), t.core)
    # a window trimmed to the tissue may not span the core: the rest of the core is not tissue
    core = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    oy0, oy1, ox0, ox1 = max(y0, vy0), min(y1, vy1), max(x0, vx0), min(x1, vx1)
    core[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] = valid[oy0 - vy0 : oy1 - vy0, ox0 - vx0 : ox1 - vx0]
    return core, valid, (vy0, vy1, vx0, vx1), outside, on


def grid_sums(core: np.ndarray, origin: tuple[int, int], cell: float, shape: tuple[int, int]) -> dict[str, list]:
    """Cells of a physical grid (``cell`` model px, ``shape`` cells) that the core overlaps: flat indices, sums.

    A pixel belongs to the cell holding its centre. Pixels of one cell are contiguous runs of
    rows and columns, so the sums are two ``reduceat`` passes (in float64), not a scatter,
    along the rows' own memory first.
    """
    (y0, x0), (h, w), (ngy, ngx) = origin, core.shape, shape
    iy = np.minimum(((np.arange(y0, y0 + h) + 0.5) / cell).astype(np.int64), ngy - 1)
    ix = np.minimum(((np.arange(x0, x0 + w) + 0.5) / cell).astype(np.int64), ngx - 1)
    ry = np.flatnonzero(np.r_[True, iy[1:] != iy[:-1]])  # first row of each cell row
    rx = np.flatnonzero(np.r_[True, ix[1:] != ix[:-1]])
    sums = np.add.reduceat(np.add.reduceat(core, rx, axis=1, dtype=np.float64), ry, axis=0)
    nz = np.nonzero(sums)
    return {"i": (iy[ry][nz[0]] * ngx + ix[rx][nz[1]]).tolist(), "v": sums[nz].tolist()}
