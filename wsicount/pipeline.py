"""``wsicount.run``: a whole slide -> density map, counts, regional densities, report.

Data flow (one direction)::

    io.open_slide -> tissue.detect_tissue -> tiling.plan_geometry/TileGrid/tissue_tiles
      -> [per task, on workers] tiling.read_model_window -> preprocess -> infer.predict_batch
         -> stitch.write_chunk + runstate.write_record
      -> aggregate records -> stitch.build_pyramid + report.write_text_tables + report.write_count_maps
      -> report.write_report

Fixed costs are kept off the critical path: the tissue mask, the normalisation sample and
the slide picture are computed by a side worker (a forked process where that is safe, else
a thread: ``summary.json`` ``processing.side_worker``) while the main thread imports torch
and loads the weights; the density store and the tissue label are created while the first
tiles run; the heat map and the text tables are written by the side worker while the
pyramid is built; and the tiles run
largest first so the threads finish together (``timings`` has each stage and the waits).

Counting invariant: the density map is masked by the tissue mask (nearest-neighbour on the
model grid), so the total is the integral over tissue and does not depend on which
tissue-touching tiles were processed (tile size) nor on how tasks were scheduled.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from . import __version__
from .errors import TileReadError, WsicountError
from .runstate import RunState, slide_fingerprint
from .tiling import (Geometry, Tile, TileGrid, mask_covers, mask_on_grid, plan_geometry, read_model_window,
                     tissue_tiles)

__all__ = ["RunConfig", "run", "count", "count_each", "TileJob", "process_tiles"]

#: notes a user should see before a long run ends (the CLI prints them on stderr)
log = logging.getLogger("wsicount")


@dataclass
class RunConfig:
    """Parameters of :func:`run` (all recorded in summary.json)."""

    tile_size: int = 0  # 0: auto (budget.choose_tile_size: 1024 where it fits)
    batch_size: int = 0  # 0: auto (infer.auto_batch_size)
    device: str = "auto"
    precision: str = "auto"
    prefetch: int = 2
    decode_cache_mb: int = 128  # decoded segments kept per process (io.SegmentCache); results do not depend on it
    mpp: float | None = None
    mask: str | None = None
    tissue_mode: str | None = None
    grid_um: tuple[float, ...] = (100.0, 1000.0)
    threads: int | None = None
    workers: int | None = None
    scheduler: str | None = None
    backend: str = "auto"
    tiles_per_task: int | None = None
    overwrite: bool = False
    skip_bad_tiles: bool = False
    progress: bool = True
    geojson_units: str = "px"

    def result_params(self) -> dict[str, Any]:
        """Parameters that change the results (resuming requires them unchanged)."""
        return {"tile_size": self.tile_size, "precision": self.precision, "mpp": self.mpp,
                "mask": self.mask, "tissue_mode": self.tissue_mode, "grid_um": list(self.grid_um),
                "backend": self.backend, "skip_bad_tiles": self.skip_bad_tiles}


@dataclass(frozen=True)
class TileJob:
    """Everything a worker needs to process tiles; small and picklable."""

    slide_path: str
    backend: str
    mpp_override: float | None
    model_path: str
    device: str
    precision: str
    batch_size: int
    out: str
    geom: Geometry
    grid: TileGrid
    norm: tuple[float, float]
    mask_scale: tuple[float, float]  # model-grid px per mask px (y, x)
    grid_um: tuple[float, ...]
    grid_shape: tuple[tuple[int, int], ...]
    peak_min_distance: int
    sigma_px: float
    peak_margin: int
    skip_bad_tiles: bool
    torch_threads: int | None = None
    prefetch: int = 2
    decode_cache_bytes: int = 0
    #: tile tasks of one process that share its device at once (they split its memory for batches)
    device_tasks: int = 1


# --- per-process caches: a worker opens the slide and loads the model once ---------------
_cache_lock = threading.Lock()
_cache: dict[tuple, Any] = {}


def _cached(key: tuple, make: Callable[[], Any]) -> Any:
    """Build-once cache shared by the threads of a process."""
    with _cache_lock:
        if key not in _cache:
            _cache[key] = make()
        return _cache[key]


def _worker_slide(job: TileJob):
    from .io import open_slide

    def make():
        slide = open_slide(job.slide_path, mpp=job.mpp_override, backend=job.backend)
        slide.set_decode_cache(job.decode_cache_bytes)
        return slide

    return _cached(("slide", job.slide_path, job.backend, job.mpp_override), make)


def _worker_model(job: TileJob):
    from .infer import pick_device, set_threads
    from .models import load_model

    def make():
        if job.torch_threads:
            set_threads(job.torch_threads)
        return load_model(job.model_path, device=pick_device(job.device))

    return _cached(("model", job.model_path, job.device, os.path.getmtime(job.model_path)), make)


def _worker_density(job: TileJob):
    """The density arrays the tiles write (opening them reads four JSON files: ~7 ms, once per process, not per task).

    In the run's own process they may still be being created, on a thread beside the first
    tiles (see :func:`_count`): opening waits for that.
    """
    pending = _stores_pending.get(job.out)
    if pending is not None:
        pending.result()
    from .stitch import open_density

    return _cached(_run_key(job, "density"), lambda: open_density(Path(job.out)))


def _worker_mask(job: TileJob) -> np.ndarray:
    """The tissue mask: the run's own in the process that computed it, else read from the stored tissue label."""
    import zarr

    def make():
        return zarr.open_array(str(Path(job.out) / "density" / "labels" / "tissue" / "0"), mode="r")[...].astype(bool)

    return _cached(_run_key(job, "mask"), make)


def _run_key(job: TileJob, what: str) -> tuple:
    """Per-process cache key of one of a run's objects (the run's lock file dates the run)."""
    return (what, job.out, os.path.getmtime(Path(job.out) / ".wsicount" / "run.json"))


# --- the tile task ----------------------------------------------------------------------
def process_tiles(job: TileJob, tiles: list[Tile]) -> list[dict[str, Any]]:
    """Read, infer, stitch and record a list of tiles; returns their records.

    Tiles are batched by window shape. A reader thread decodes up to ``job.prefetch``
    batches ahead of the network, so that decoding (GIL-free in imagecodecs/libjpeg) and
    inference overlap; memory held by the queue is ``prefetch x batch x window pixels``.
    """
    from .infer import auto_batch_size, pick_device, set_threads

    slide, model, mask = _worker_slide(job), _worker_model(job), _worker_mask(job)
    if job.torch_threads:
        # OpenMP's thread count is per calling thread: set it in every task's thread
        set_threads(job.torch_threads)
    device = pick_device(job.device)
    state = RunState(Path(job.out))
    key = ("batch", job.model_path, str(device), job.precision, job.grid.core, job.device_tasks)
    size = job.batch_size or _cached(key, lambda: auto_batch_size(model, device, job.precision, job.grid.tile_size,
                                                                  tasks=job.device_tasks))
    batches = [b for group in _by_shape(tiles) for b in _chunks(group, size)]
    records: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsicount-read") as reader:
        ahead: deque = deque()
        todo = iter(batches)
        for part in itertools.islice(todo, max(1, job.prefetch)):
            ahead.append(reader.submit(_read_batch, job, slide, model.card.channels, part))
        while ahead:
            items = ahead.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                ahead.append(reader.submit(_read_batch, job, slide, model.card.channels, nxt))
            records += _infer_batch(job, model, device, mask, state, items)
    return records


def _by_shape(tiles: list[Tile]) -> list[list[Tile]]:
    """Tiles grouped by input-window shape (only equal shapes stack into one batch), order kept."""
    groups: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        groups.setdefault(t.window_shape, []).append(t)
    return list(groups.values())


def _task_order(tiles: list[Tile]) -> list[Tile]:
    """Largest windows first, equal shapes adjacent (so that a task's tiles batch together), then row by row.

    Longest-processing-time-first: the threads run out of work at nearly the same time,
    with only small edge tiles left at the end (measured: in key order the last full tiles
    ran on one thread while the other was idle, ~2 s of a 45 s run). Row-major within a
    shape, so that neighbouring windows, which share decoded segments, are read close
    together in time (see io.SegmentCache).
    """
    return sorted(tiles, key=lambda t: (-t.window_shape[0] * t.window_shape[1], t.window_shape, t.ty, t.tx))


def _read_batch(job: TileJob, slide, channels, tiles: list[Tile]) -> list[tuple[Tile, Any, float, float]]:
    """Decode and normalise tiles: (tile, (C, h, w) array or the TileReadError, seconds, this thread's CPU seconds) each."""
    from .preprocess import apply_normalization, select_channels

    items = []
    for t in tiles:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            img = read_model_window(slide, job.geom, t.window, native=True)
        except TileReadError as e:
            if not job.skip_bad_tiles:
                raise
            items.append((t, e, 0.0, 0.0))
            continue
        x = apply_normalization(select_channels(img, channels), *job.norm)
        items.append((t, x, time.perf_counter() - t0, time.thread_time() - c0))
    return items


def _infer_batch(job: TileJob, model, device, mask: np.ndarray, state: RunState,
                 items: list[tuple[Tile, Any, float, float]]) -> list[dict[str, Any]]:
    """Run one batch through the network, then stitch and record each tile (bad ones as bad)."""
    from .infer import predict_batch

    records = []
    for t, err, *_ in (i for i in items if isinstance(i[1], TileReadError)):
        rec = {"key": t.key, "bad": True, "error": str(err), "sum": 0.0, "peaks": [], "grid": {}, "t": {}}
        state.write_record(t.key, rec)
        records.append(rec)
    good = [i for i in items if not isinstance(i[1], TileReadError)]
    if not good:
        return records
    t1, c1 = time.perf_counter(), time.thread_time()
    dens = predict_batch(model, np.stack([x for _, x, *_ in good]), device, job.precision)
    # wall and this thread's CPU seconds: less CPU than wall = waiting for a core or the GIL
    t_inf, c_inf = (time.perf_counter() - t1) / len(good), (time.thread_time() - c1) / len(good)
    # Zarr only now: the first tiles of a run are inferred while the store is created
    from .stitch import write_chunk

    density = _worker_density(job)
    for (t, _, t_read, c_read), d in zip(good, dens):
        t2, c2 = time.perf_counter(), time.thread_time()
        rec = _finish_tile(job, t, d, mask)
        write_chunk(density, t.core[0], t.core[2], rec.pop("_core"))
        rec["t"] = {"read": t_read, "read_cpu": c_read, "infer": t_inf, "infer_cpu": c_inf,
                    "post": time.perf_counter() - t2, "post_cpu": time.thread_time() - c2}
        state.write_record(t.key, rec)
        records.append(rec)
    return records


def _finish_tile(job: TileJob, t: Tile, d: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Mask the tile output, crop its core, find peaks and grid partial sums."""
    from .detect import density_peaks

    wy0, wy1, wx0, wx1 = t.window
    y0, y1, x0, x1 = t.core
    m = job.peak_margin
    # valid region for peak finding: core grown by the margin, inside window and grid
    vy0, vy1 = max(y0 - m, wy0), min(y1 + m, wy1, job.grid.height)
    vx0, vx1 = max(x0 - m, wx0), min(x1 + m, wx1, job.grid.width)
    valid = d[vy0 - wy0 : vy1 - wy0, vx0 - wx0 : vx1 - wx0]
    if not mask_covers(mask, *job.mask_scale, (vy0, vy1, vx0, vx1)):  # inside the tissue x 1 changes nothing
        valid = valid * mask_on_grid(mask, *job.mask_scale, (vy0, vy1, vx0, vx1))
    # a window trimmed to the tissue may not span the core: the rest of the core is not tissue
    core = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    oy0, oy1, ox0, ox1 = max(y0, vy0), min(y1, vy1), max(x0, vx0), min(x1, vx1)
    core[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] = valid[oy0 - vy0 : oy1 - vy0, ox0 - vx0 : ox1 - vx0]
    peaks: list[list[float]] = []
    if core.any():
        pk = density_peaks(valid, job.sigma_px, min_distance=job.peak_min_distance)
        iy, ix = np.rint(pk[:, 0]).astype(np.int64), np.rint(pk[:, 1]).astype(np.int64)
        # a peak belongs to the tile whose core holds its pixel: no duplicates, no gaps
        own = (y0 <= iy + vy0) & (iy + vy0 < y1) & (x0 <= ix + vx0) & (ix + vx0 < x1)
        pk, iy, ix = pk[own], iy[own], ix[own]
        peaks = np.column_stack([np.round(pk[:, 0] + vy0, 3), np.round(pk[:, 1] + vx0, 3),
                                 valid[iy, ix].astype(np.float64)]).tolist()
    grid = {str(g): _grid_sums(core, (y0, x0), g / job.geom.model_mpp, shape)
            for g, shape in zip(job.grid_um, job.grid_shape)}
    return {"key": t.key, "sum": float(core.sum(dtype=np.float64)), "peaks": peaks, "grid": grid, "_core": core}


def _grid_sums(core: np.ndarray, origin: tuple[int, int], cell: float, shape: tuple[int, int]) -> dict[str, list]:
    """Cells of a physical grid (``cell`` model px, ``shape`` cells) that the core overlaps: flat indices, sums.

    A pixel belongs to the cell holding its centre. Pixels of one cell are contiguous runs of
    rows and columns, so the sums are two ``reduceat`` passes (in float64), not a scatter:
    along the rows' own memory first (~1.6x faster than columns first; hand probe).
    """
    (y0, x0), (h, w), (ngy, ngx) = origin, core.shape, shape
    iy = np.minimum(((np.arange(y0, y0 + h) + 0.5) / cell).astype(np.int64), ngy - 1)
    ix = np.minimum(((np.arange(x0, x0 + w) + 0.5) / cell).astype(np.int64), ngx - 1)
    ry = np.flatnonzero(np.r_[True, iy[1:] != iy[:-1]])  # first row of each cell row
    rx = np.flatnonzero(np.r_[True, ix[1:] != ix[:-1]])
    sums = np.add.reduceat(np.add.reduceat(core, rx, axis=1, dtype=np.float64), ry, axis=0)
    nz = np.nonzero(sums)
    return {"i": (iy[ry][nz[0]] * ngx + ix[rx][nz[1]]).tolist(), "v": sums[nz].tolist()}


# --- orchestration ----------------------------------------------------------------------
def _normalization_stats(slide, geom: Geometry, tm, mask_scale, card, skip_bad: bool = False, n: int = 16,
                         block: int = 512) -> tuple[float, float]:
    """Slide-level intensity normalisation from up to ``n`` tissue blocks of the model grid.

    The blocks come from a fixed ``block``-px lattice, not from the tile grid, so the
    statistics (and hence the density) do not depend on the tile size. With ``skip_bad``
    an undecodable block is left out of the sample (its tiles are recorded bad later).
    """
    from .preprocess import percentile_stats, select_channels

    if card.normalization.get("kind") == "fixed":
        return percentile_stats(np.zeros(1), card.normalization)
    lattice = TileGrid(geom.height, geom.width, block, 0, 1)
    cands = tissue_tiles(lattice, tm.mask, *mask_scale)
    pick = [cands[int(i)] for i in np.linspace(0, len(cands) - 1, min(n, len(cands)))]
    vals, error = [], None
    for t in pick:
        try:
            img = read_model_window(slide, geom, t.core)
        except TileReadError as e:
            if not skip_bad:
                raise
            error = e
            continue
        x = select_channels(img, card.channels)
        m = mask_on_grid(tm.mask, *mask_scale, t.core)
        vals.append(x[:, m].ravel())
    if not vals and error is not None:
        raise error  # nothing decodable to normalise with
    return percentile_stats(np.concatenate(vals), card.normalization)


def _bad_tile_rows(bad: list[dict[str, Any]], tiles: list[Tile], geom: Geometry, tm,
                   mask_scale: tuple[float, float]) -> list[dict[str, Any]]:
    """Where each undecodable tile lies (core box in level-0 µm) and how much tissue it holds."""
    by_key = {t.key: t for t in tiles}
    m = geom.model_mpp
    rows = []
    for b in bad:
        t = by_key[b["tile"]]
        y0, y1, x0, x1 = t.core
        tissue_px = int(mask_on_grid(tm.mask, *mask_scale, t.core).sum())
        um = {k: round(v * m, 3) for k, v in (("y0_um", y0), ("x0_um", x0), ("y1_um", y1), ("x1_um", x1))}
        rows.append({"tile": t.key, "row": t.ty, "col": t.tx, **um, "tissue_mm2": round(tissue_px * m * m / 1e6, 6),
                     "error": b["error"]})
    return rows


def _chunks(seq: list, size: int) -> list[list]:
    """Split a list into consecutive parts of ``size``."""
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def _execute(job: TileJob, batches: list[list[Tile]], cfg: RunConfig, n_tiles: int, threads: int,
             client=None) -> dict[str, dict[str, Any]]:
    """Run the tile tasks on the local threaded scheduler or a distributed cluster; returns their records by tile key."""
    from tqdm.auto import tqdm

    bar = tqdm(total=n_tiles, desc="tiles", unit="tile", disable=not cfg.progress, leave=False)
    try:
        if client is not None or cfg.scheduler or cfg.workers:
            results = _execute_distributed(job, batches, cfg, bar, client)
        else:
            results = _execute_local(job, batches, threads, bar)
    finally:
        bar.close()
    return {r["key"]: r for recs in results for r in recs}


def _execute_local(job: TileJob, batches: list[list[Tile]], threads: int, bar) -> list[list[dict[str, Any]]]:
    """A pool of ``threads`` threads taking the tasks strictly in the given order; the tasks' records.

    Not Dask's threaded scheduler: that one orders independent tasks by its own heuristics,
    and the order matters here (largest tiles first, see :func:`_task_order`).
    """
    results = []
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsicount-tiles") as pool:
        futures = [pool.submit(process_tiles, job, b) for b in batches]
        try:
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update(len(results[-1]))
        except BaseException:
            for fut in futures:  # fail fast: do not start the remaining tasks
                fut.cancel()
            raise
    return results


def _execute_distributed(job: TileJob, batches: list[list[Tile]], cfg: RunConfig, bar,
                         client=None) -> list[list[dict[str, Any]]]:
    """A dask.distributed cluster (a given client, or a LocalCluster of ``cfg.workers``); the tasks' records."""
    from distributed import Client, as_completed

    def collect(c) -> list[list[dict[str, Any]]]:
        results = []
        for fut in as_completed(c.map(process_tiles, [job] * len(batches), batches, pure=False, retries=3)):
            results.append(fut.result())
            bar.update(len(results[-1]))
        return results

    if client is not None:  # given, or connected to --scheduler by _count
        return collect(client)
    cluster = local_cluster(cfg.workers)
    client = Client(cluster)
    try:
        return collect(client)
    finally:
        client.close()
        cluster.close()


def run(slide: str | os.PathLike, out: str | os.PathLike, model: str | os.PathLike | None = None,
        config: RunConfig | None = None, client=None, **kwargs: Any):
    """Count cells on a whole slide; writes the output folder and returns an xarray Dataset.

    ``kwargs`` override fields of :class:`RunConfig`; ``client`` is an optional
    ``distributed.Client`` to run the tile tasks on (``wsicount batch`` shares one). Raises a :class:`WsicountError`
    subclass for every input problem (see README: exit codes).
    """
    from .report import results_dataset

    return results_dataset(*_count(slide, out, model, _config(config, kwargs), client))


def count(slide: str | os.PathLike, out: str | os.PathLike, model: str | os.PathLike | None = None,
          config: RunConfig | None = None, client=None, **kwargs: Any) -> dict[str, Any]:
    """:func:`run` returning the summary (summary.json's content) instead of a Dataset.

    What the CLI calls: the same outputs, without importing dask and xarray (~1.2 s, timed by
    hand) for a Dataset nobody reads.
    """
    return _count(slide, out, model, _config(config, kwargs), client)[4]


def local_cluster(workers: int):
    """A Dask LocalCluster of ``workers`` one-thread worker processes, with this process's allocator tuning (imports distributed)."""
    import dask
    from distributed import LocalCluster

    from .allocator import worker_environ

    environ = worker_environ(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)


def _config(config: RunConfig | None, kwargs: dict[str, Any]) -> RunConfig:
    """``config`` (or the defaults) with ``kwargs`` applied and checked."""
    cfg = config or RunConfig()
    for k, v in kwargs.items():
        if not hasattr(cfg, k):
            raise TypeError(f"unknown run option {k!r}")
        setattr(cfg, k, v)
    cfg.grid_um = tuple(float(g) for g in cfg.grid_um)
    return cfg


def count_each(jobs: Iterable[tuple[str | os.PathLike, str | os.PathLike]], model: str | os.PathLike | None = None,
               config: RunConfig | None = None, client=None,
               **kwargs: Any) -> Iterator[tuple[dict[str, Any] | None, WsicountError | None]]:
    """:func:`count` for each (slide, output folder) in turn: yields (summary, None), or (None, error) for a slide that failed.

    One side worker serves every slide (a forked process when this is called before torch is
    imported, as by ``wsicount batch``), and the next slide's preparation (tissue mask,
    normalisation, picture) is queued as soon as a slide's tiles start: it is ready when its
    turn comes instead of being waited for with a core idle. Results are those of
    :func:`count` slide by slide. Errors other than :class:`WsicountError` stop the sequence.
    """
    cfg = _config(config, kwargs)
    jobs = list(jobs)
    side, _ = _side_executor()

    def prepare(i: int) -> _Prepared | WsicountError | None:
        if i >= len(jobs):
            return None
        try:
            return _submit_preparation(side, jobs[i][0], model, cfg)
        except WsicountError as e:  # a bad slide or card: reported when its turn comes
            return e

    try:
        ahead = prepare(0)
        for i, (slide, out) in enumerate(jobs):
            current, ahead = ahead, None

            def start_next(i: int = i) -> None:
                nonlocal ahead
                ahead = prepare(i + 1)

            try:
                if isinstance(current, WsicountError):
                    raise current
                summary = _count(slide, out, model, cfg, client, side=side, ahead=current, on_tiles=start_next)[4]
            except WsicountError as e:
                yield None, e
            else:
                yield summary, None
            if ahead is None:  # the slide failed before its tiles started
                ahead = prepare(i + 1)
        side.shutdown(wait=True)
    except BaseException:  # includes the consumer closing the generator early
        _stop_side(side)
        raise


@dataclass
class _Prepared:
    """A slide opened, its model card read, and its preparation (and picture) queued on a side worker."""

    slide: Any
    card: Any
    prep: Future
    picture: Future | None  # None: drawn once the mask is back (side thread)


def _submit_preparation(side: Executor, slide: str | os.PathLike, model: str | os.PathLike | None,
                        cfg: RunConfig) -> _Prepared:
    """Open ``slide`` and read the card (no torch yet: a bad slide or card is reported at once), then queue :func:`_prepare`.

    A side process queues the slide picture right behind the preparation, so that it is drawn
    while the main thread still loads torch; it hands the mask over in its own memory (a
    failed run ends the process, and a shared one pops the mask when it draws). A side thread
    draws it once the mask is back in the main thread.
    """
    from .io import open_slide
    from .models import read_card

    sl = open_slide(slide, mpp=cfg.mpp, backend=cfg.backend)
    card, _ = read_card(model)
    token = f"{os.getpid()}-{time.monotonic_ns()}" if isinstance(side, ProcessPoolExecutor) else None
    prep = _side_submit(side, _prepare, sl, cfg, card, token)
    return _Prepared(sl, card, prep, _side_submit(side, _slide_picture, sl, token) if token else None)


def _count(slide: str | os.PathLike, out: str | os.PathLike, model: str | os.PathLike | None, cfg: RunConfig,
           client, side: Executor | None = None, ahead: _Prepared | None = None,
           on_tiles: Callable[[], None] | None = None) -> tuple[Path, Any, Geometry, Any, dict[str, Any], dict[str, np.ndarray]]:
    """The whole run; returns what :func:`wsicount.report.results_dataset` takes (out, mask, geometry, aggregate, summary, cells).

    ``side``: a side worker owned by the caller (:func:`count_each`), with ``ahead`` this
    slide's preparation already queued on it; ``on_tiles`` is called as the tiles start.
    """
    from .io import slide_info
    from .report import aggregate, heatmap_figure, slide_figure, write_count_maps, write_report, write_text_tables

    timings: dict[str, float] = {}
    t_start = t = time.perf_counter()
    out = Path(out)
    # Until the tiles start, this thread imports torch and loads the weights while a side
    # worker computes the tissue mask and the normalisation, then draws the slide picture.
    # Both are mostly GIL-bound Python and scipy.ndimage, so the side worker is a forked
    # process where that is safe (see _side_executor), else a thread.
    own_side = side is None
    if side is None:
        side, _ = _side_executor()
    side_kind = "process" if isinstance(side, ProcessPoolExecutor) else "thread"
    own_client = None  # a client this run connects (--scheduler) and closes
    try:
        ahead = ahead or _submit_preparation(side, slide, model, cfg)
        sl, prep_f, picture_f = ahead.slide, ahead.prep, ahead.picture
        # imported after the fork (torch: ~1-2 s) so that the side worker starts at once; Zarr
        # is imported later still, beside the first tiles (see _create_stores)
        from .infer import pick_device, resolve_precision
        from .models import load_model
        lm = load_model(model)
        card = lm.card
        device = pick_device(cfg.device)
        precision = resolve_precision(device, cfg.precision, card)
        threads = cfg.threads or min(2, os.cpu_count() or 1)
        if client is None and cfg.scheduler:
            from distributed import Client

            client = own_client = Client(cfg.scheduler)  # now: the tile size is planned for its workers
        plan = _plan_tile(cfg, lm, device, precision, threads, client, out)
        if not plan.fits:
            log.warning("tile size %d: %s", plan.tile_size, plan.reason)
        timings["open"] = time.perf_counter() - t
        # the resolved precision and tile size, not 'auto': results depend on what actually ran
        fingerprint = {"slide": slide_fingerprint(sl.path), "model": {"name": card.name, "version": card.version,
                       "path": str(lm.path)}, "params": {**cfg.result_params(), "precision": precision,
                                                         "tile_size": plan.tile_size},
                       "wsicount": __version__}
        state = RunState(out)
        resumed = state.prepare(fingerprint, cfg.overwrite)
        if not prep_f.done():
            _warm_imports()  # or each tile thread's first tile would wait on them
    except BaseException:
        if own_side:
            _stop_side(side)
        if own_client is not None:
            own_client.close()
        raise
    try:
        t = time.perf_counter()
        tm, geom, norm, prep_seconds = prep_f.result()
        timings.update(prep_seconds)  # tissue, normalization: computed while "open" loaded the model
        timings["tissue_wait"] = time.perf_counter() - t
        picture_f = picture_f or _side_submit(side, slide_figure, sl, tm)
        t = time.perf_counter()
        peak_margin = card.peak_min_distance_px + 1
        grid = TileGrid.for_model(geom.height, geom.width, plan.tile_size, card.receptive_radius, card.stride, peak_margin)
        mask_scale = _mask_scale(tm, geom)
        tiles = tissue_tiles(grid, tm.mask, *mask_scale)
        grid_shape = grid_shapes(geom, cfg.grid_um)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        job = TileJob(str(sl.path), cfg.backend, cfg.mpp, str(lm.path), str(device), precision, cfg.batch_size,
                      str(out), geom, grid, norm, mask_scale, cfg.grid_um, grid_shape, card.peak_min_distance_px,
                      card.sigma_px, peak_margin, cfg.skip_bad_tiles,
                      torch_threads=_torch_threads(cores, threads, cfg, client), prefetch=cfg.prefetch,
                      decode_cache_bytes=max(0, cfg.decode_cache_mb) << 20,
                      device_tasks=_device_tasks(threads, cfg, client))
        timings["plan"] = time.perf_counter() - t
        t = time.perf_counter()
        # the tasks of this process reuse the weights loaded above, and the mask (other
        # processes, Dask's workers, read it from the tissue label)
        _cached(("model", job.model_path, job.device, os.path.getmtime(job.model_path)), lambda: lm)
        _cached(_run_key(job, "mask"), lambda: tm.mask)
        timings["before_tiles"] = time.perf_counter() - t_start
        done = state.done_keys()
        todo = [x for x in tiles if x.key not in done]
        # small tasks balance the workers at the end of a run; <= ~500 of them keep the
        # distributed scheduler's per-task cost (~2 ms) negligible
        per_task = cfg.tiles_per_task or max(2, math.ceil(len(todo) / 500))
        tasks = _chunks(_task_order(todo), per_task)
        if on_tiles is not None:
            on_tiles()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsicount-aux") as aux:
            # The density store and the tissue label are written on a thread while this
            # process's first tiles are read and inferred; the tiles take the mask from memory
            # and wait for the store only at their first write. Before them, importing Zarr
            # and writing both took ~0.4-0.6 s with the other core idle. Dask's workers, other
            # processes, open both from disk: they are written first.
            stores_f = aux.submit(_create_stores, out, (geom.height, geom.width), grid.core, geom.model_mpp, tm)
            if client is not None:
                stores_f.result()
            _stores_pending[job.out] = stores_f
            try:
                fresh = _execute(job, tasks, cfg, len(todo), threads, client)
            finally:
                del _stores_pending[job.out]
            stores_f.result()
            timings["tiles"] = time.perf_counter() - t
            t = time.perf_counter()
            # this run's records as the tasks returned them (what they wrote), resumed ones from disk
            records = [fresh.get(x.key) or state.record(x.key) for x in tiles]
            agg = aggregate(records, tm, geom, cfg.grid_um, grid_shape)
            agg.bad_tiles = _bad_tile_rows(agg.bad_tiles, tiles, geom, tm, mask_scale)
            # Three at once: the side worker draws the heat map and writes the text tables
            # (Python-bound), a thread builds the pyramid, this thread writes the count maps
            # (both Zarr: numpy sums and blosc release the GIL, Zarr's I/O loop does not).
            sf = picture_f.result()
            drawing = _side_submit(side, heatmap_figure, sf, _for_heatmap(agg))
            tables_f = _side_submit(side, write_text_tables, out, sl.mpp, geom, agg, cfg.geojson_units)
            # ("stitch" is the pyramid's own seconds, overlapping the first part of "report")
            from .stitch import build_pyramid

            pyramid_f = aux.submit(_timed, build_pyramid, out, geom.model_mpp)
            write_count_maps(out, agg)
            tables = tables_f.result()
            n_levels, timings["stitch"] = pyramid_f.result()
        timings["report"] = time.perf_counter() - t  # aggregation and tables; write_report adds the rest
        pngs = (sf.png, drawing.result())
        stage = {k: float(sum(r.get("t", {}).get(k, 0.0) for r in records))
                 for k in ("read", "read_cpu", "infer", "infer_cpu", "post", "post_cpu")}
        info = slide_info(sl)
        summary = {
            "total_cells": agg.total, "tissue_area_mm2": tm.area_mm2,
            "cells_per_mm2": agg.total / tm.area_mm2 if tm.area_mm2 > 0 else None,
            # complete: every tissue tile was counted or, with --skip-bad-tiles, is listed in
            # bad_tiles (0 cells there; bad_tiles_tissue_mm2 says how much tissue that is)
            "complete": True, "n_cells_detected": len(agg.peaks),
            "regional": agg.regional, "bad_tiles": agg.bad_tiles,
            "bad_tiles_tissue_mm2": float(sum(b["tissue_mm2"] for b in agg.bad_tiles)),
            "slide": {**info, "path": str(sl.path), "fingerprint": fingerprint["slide"]},
            "model": {"name": card.name, "version": card.version, "arch": card.arch, "path": str(lm.path),
                      "mpp": card.mpp, "density_scale": card.density_scale, "training_data": card.training.get("data")},
            "processing": {"level": geom.level, "level_mpp": geom.level_mpp, "model_mpp": geom.model_mpp,
                           "resampled": geom.resampled, "grid_shape": [geom.height, geom.width],
                           "tile_size": grid.tile_size, "tile_plan": asdict(plan),
                           "tile_core": grid.core, "halo": grid.halo, "n_tiles": grid.shape[0] * grid.shape[1],
                           "n_tiles_tissue": len(tiles), "n_tiles_resumed": len(tiles) - len(todo),
                           # pixels the network ran on (windows trimmed to the tissue, halos included)
                           "network_input_px": int(sum(t.window_shape[0] * t.window_shape[1] for t in tiles)),
                           "window_shapes": _shape_counts(tiles),
                           "normalization": {"offset": norm[0], "span": norm[1]}, "tissue_source": tm.source,
                           "tissue_mask_mpp": tm.mpp, "density_levels": n_levels, "device": str(device),
                           "precision": precision, "n_tasks": len(tasks),
                           "threads": threads, "side_worker": side_kind, "resumed": resumed},
            "parameters": {**asdict(cfg), "grid_um": list(cfg.grid_um), "model": str(model) if model else card.name},
            "timings": {**timings, "stage_seconds_summed_over_tiles": stage},
            "wsicount_version": __version__,
        }
        cells = write_report(out, sl, tm, geom, agg, summary, t_start, cfg.geojson_units, pngs, tables)
        if own_side:
            # its work is done; wait for it to exit (milliseconds), so that nothing of the pool is
            # still closing when the interpreter's exit hook wakes it (see _stop_side)
            side.shutdown(wait=True)
        return out, tm, geom, agg, summary, cells
    except BaseException:
        if own_side:
            _stop_side(side)
        raise
    finally:
        state.release()
        if own_client is not None:
            own_client.close()


#: out folder -> the future of :func:`_create_stores` while a run's own tiles may wait for it
_stores_pending: dict[str, Future] = {}


def _create_stores(out: Path, shape: tuple[int, int], core: int, mpp: float, tm) -> None:
    """Create the density arrays (``density/0``, ``/1``) and write the tissue label (imports Zarr: ~0.3 CPU-s)."""
    from .stitch import create_density, write_label

    create_density(out, shape, core, mpp)
    write_label(out, "tissue", tm.mask, tm.mpp)


def grid_shapes(geom: Geometry, grid_um: tuple[float, ...]) -> tuple[tuple[int, int], ...]:
    """Cells (rows, columns) of each physical count grid of ``grid_um`` µm over the slide."""
    return tuple((int(math.ceil(geom.height * geom.model_mpp / g)), int(math.ceil(geom.width * geom.model_mpp / g)))
                 for g in grid_um)


def _shape_counts(tiles: list[Tile]) -> list[list[int]]:
    """[[h, w, number of tiles], ...] of the input windows, largest first (what the network ran on)."""
    return [[*group[0].window_shape, len(group)] for group in _by_shape(_task_order(tiles))]


def _warm_imports() -> None:
    """Import what the tile tasks import on first use (peak finding: wsicount.detect and its scipy modules)."""
    from . import detect  # noqa: F401


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and the seconds it took."""
    t = time.perf_counter()
    return fn(*args), time.perf_counter() - t


def _side_executor() -> tuple[Executor, str]:
    """One side worker for the fixed costs: a forked process where forking is safe, else a thread.

    Tissue detection, the normalisation sample and the pictures are GIL-bound; run on a thread
    they queue behind the torch import for the GIL (measured: the mask took 4.2 s beside it,
    1.5 s alone). A fork is safe only before any other thread, torch's OpenMP pool included,
    exists in this process: on Linux, with one Python thread and torch not imported yet (the
    CLI's case). The worker is forked now, before opening the slide starts any reader thread.
    """
    if sys.platform.startswith("linux") and threading.active_count() == 1 and "torch" not in sys.modules:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_side_init, initargs=(os.getpid(),))
        pool.submit(int).result()  # fork now
        return pool, "process"
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsicount-side"), "thread"


def _side_init(parent: int) -> None:
    """In the forked side worker: leave Ctrl-C to the main process, stop on request, and die with it.

    A main process killed outright (SIGKILL, out of memory) cannot stop its worker, and the
    worker, holding its own copy of the task pipe, would wait for work forever: the kernel
    sends it SIGTERM when the main process's thread that forked it ends (PR_SET_PDEATHSIG).
    SIGUSR1 is :func:`_stop_side`'s request to end the current task (:func:`_on_stop_request`).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _on_stop_request)
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the main process died before the line above
        os._exit(0)


class _SideStopped(BaseException):
    """A side-process task ended early because the run failed (see :func:`_stop_side`).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` in the task
    swallows it.
    """


# in the side process: whether one of our tasks is running, and whether a stop was requested
_side_busy = False
_side_stopping = False


def _side_task(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in the side process, interruptible by a stop request until it returns.

    The result is sent back by the pool after this returns, when a stop request no longer
    raises: a worker interrupted (or killed) while sending leaves the pool's manager thread
    waiting forever for the rest of the message, and the process hanging at exit.
    """
    global _side_busy
    if _side_stopping:
        raise _SideStopped()  # a task queued behind the one the request ended
    _side_busy = True
    try:
        return fn(*args)
    finally:
        _side_busy = False


def _on_stop_request(signum: int, frame: Any) -> None:
    """SIGUSR1 in the side process: end the running task and skip the queued ones."""
    global _side_stopping
    _side_stopping = True
    if _side_busy:
        raise _SideStopped()


def _side_submit(side: Executor, fn: Callable[..., Any], *args: Any) -> Future:
    """Submit ``fn(*args)`` to the side worker (through :func:`_side_task` in a process)."""
    if isinstance(side, ProcessPoolExecutor):
        return side.submit(_side_task, fn, *args)
    return side.submit(fn, *args)


def _stop_side(side: Executor) -> None:
    """On failure: drop the side worker's queued work and, if it is a process, end its current task now.

    Without this the process would exit only after the worker's current task (seconds of
    tissue detection for a run that already failed). The worker is asked (SIGUSR1) rather
    than killed: terminating it could cut a result it was sending, and the pool's manager
    thread then waits for the rest forever (a run with an unwritable output folder hung so,
    once in a fresh-clone test run). Asked, it ends the task at the next Python bytecode
    (after the current numpy or scipy call), sends that small exception back, and exits on
    the shutdown below, which waits for it and for the manager thread: nothing of the pool is
    left closing when the interpreter's exit hook runs (CPython 3.11 printed "OSError: Bad
    file descriptor" and a traceback after the one-line error when it was).
    """
    if not isinstance(side, ProcessPoolExecutor):
        side.shutdown(wait=False, cancel_futures=True)  # a thread cannot be stopped; don't wait for it
        return
    for proc in list((getattr(side, "_processes", None) or {}).values()):  # no public API for the workers
        if proc.is_alive() and proc.pid:
            try:
                os.kill(proc.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
    side.shutdown(wait=True, cancel_futures=True)


# tissue masks handed from _prepare to _slide_picture, the next task of the same side process
_side_masks: dict[str, Any] = {}


def _prepare(sl, cfg: RunConfig, card, token: str | None = None) -> tuple[Any, Geometry, tuple[float, float], dict[str, float]]:
    """Tissue mask, model-grid geometry, normalisation statistics and their seconds: the slide work that needs no torch.

    With a ``token`` the mask also stays in this (side) process for :func:`_slide_picture`.
    """
    t = time.perf_counter()
    tm = _tissue_mask(sl, cfg, card.modality)
    if token:
        _side_masks[token] = tm
    seconds = {"tissue": time.perf_counter() - t}
    t = time.perf_counter()
    geom = plan_geometry(sl, card.mpp)
    norm = _normalization_stats(sl, geom, tm, _mask_scale(tm, geom), card, cfg.skip_bad_tiles)
    seconds["normalization"] = time.perf_counter() - t
    return tm, geom, norm, seconds


def _slide_picture(sl, token: str):
    """The slide picture with the tissue outline, from the mask :func:`_prepare` left under ``token``."""
    from .report import slide_figure

    tm = _side_masks.pop(token, None)
    if tm is None:  # _prepare failed: the run is stopping with its error
        raise RuntimeError("no tissue mask to draw")
    return slide_figure(sl, tm)


def _mask_scale(tm, geom: Geometry) -> tuple[float, float]:
    """Model-grid pixels per tissue-mask pixel (y, x)."""
    return tm.scale_y / geom.scale0, tm.scale_x / geom.scale0


def _for_heatmap(agg):
    """The aggregate without its per-cell lists (what the heat map needs crosses a process cheaply)."""
    return replace(agg, peaks=agg.peaks[:0], regional={}, bad_tiles=[])


def _tissue_mask(sl, cfg: RunConfig, modality: str):
    """The user's mask, or the mask detected in the card's (or the chosen) tissue mode."""
    from .tissue import detect_tissue, load_user_mask

    if cfg.mask:
        h0, w0 = sl.shapes[0][:2]
        return load_user_mask(cfg.mask, (h0, w0), sl.mpp)
    return detect_tissue(sl, cfg.tissue_mode or modality, skip_bad_tiles=cfg.skip_bad_tiles)


def _plan_tile(cfg: RunConfig, lm, device, precision: str, threads: int, client, out: Path):
    """The tile size of this run (``budget.TilePlan``): requested, resumed, or the largest that fits the memory where tiles run.

    Where: this process's ``threads`` tasks (a GPU's free memory for the activations on
    CUDA); ``--workers N`` on this machine, N one-thread processes each holding what this
    process holds now; a cluster's workers, each with its memory limit and threads (the
    tightest one decides). An auto run being resumed keeps the size it started with: the
    density chunks are laid out by it.
    """
    import psutil

    from .budget import TilePlan, available_memory, choose_tile_size
    from .infer import activation_bytes_per_px

    if not cfg.tile_size and not cfg.overwrite:
        started = RunState(out).stored_params().get("tile_size")
        if started:
            return TilePlan(int(started), "auto: the size of the run being resumed")
    card = lm.card
    halo = TileGrid.halo_for(card.receptive_radius, card.stride, card.peak_min_distance_px + 1)
    plan = functools.partial(choose_tile_size, cfg.tile_size, act_per_px=activation_bytes_per_px(lm, device, precision),
                             channels=len(card.channels), core_of=lambda t: TileGrid.core_for(t, halo, card.stride),
                             batch=cfg.batch_size or 1, prefetch=cfg.prefetch)
    cache = max(0, cfg.decode_cache_mb) << 20
    if client is not None or cfg.workers:
        worker_base = psutil.Process().memory_info().rss + cache  # a worker holds what this process holds now
    if client is not None and not cfg.workers:
        workers = [w for w in client.scheduler_info().get("workers", {}).values() if w.get("memory_limit")]
        plans = [plan(tasks=w.get("nthreads", 1), available=int(w["memory_limit"]), fixed_bytes=worker_base)
                 for w in workers]
        return min(plans, key=lambda p: p.tile_size) if plans else plan(tasks=1, available=None)
    if cfg.workers:
        return plan(tasks=cfg.workers, available=available_memory(), fixed_bytes=cfg.workers * worker_base)
    if device.type == "cuda":
        import torch

        return plan(tasks=threads, available=int(torch.cuda.mem_get_info(device)[0]))
    return plan(tasks=threads, available=available_memory(), fixed_bytes=cache)


def _device_tasks(threads: int, cfg: RunConfig, client) -> int:
    """Tile tasks running on one device at once: this process's threads, or ``--workers`` processes sharing this machine's.

    A cluster's workers are assumed to have a device each (one task per worker thread is
    not knowable here); they take the batch from the memory they find free.
    """
    if cfg.workers:
        return cfg.workers
    if client is not None or cfg.scheduler:
        return 1
    return threads


def _torch_threads(cores: int, threads: int, cfg: RunConfig, client) -> int | None:
    """Intra-op threads per task so that concurrent tasks do not oversubscribe the cores."""
    if cfg.workers:  # a LocalCluster on this machine (ours or batch's)
        return max(1, cores // cfg.workers)
    if client is not None or cfg.scheduler:
        return None  # the cluster's workers know their own cores
    return max(1, cores // threads)
