"""One slide's run as a sequence of short stages: open, plan, tiles, tail, results.

Data flow (one direction)::

    io.open_slide -> [side worker] plan.prepare (tissue, geometry, normalisation) + slide picture
      -> plan.make_plan + tiling.tissue_tiles -> execute.run_tasks(task.process_tiles)
         (each tile: its density chunk, then its record)
      -> aggregate -> [side] heat map + text tables, [thread] density pyramid, count maps
      -> report.write_report (summary.json last)

Fixed costs stay off the critical path: the side worker (:mod:`wsicount.runner.side`) prepares
the slide while this thread imports torch and loads the weights; the density store and the
tissue label are created on a thread while the first tiles run; the heat map and the tables
are written by the side worker while the pyramid is built. ``summary.json``'s ``timings``
holds each stage and the waits.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .. import __version__
from ..errors import WsicountError
from ..guard import check_result
from ..progress import ProgressFn, progress_fn, tile_updates
from ..store import RunState, TileRecord, slide_fingerprint
from ..tiling import tissue_tiles
from . import side as side_worker
from .config import RunConfig, with_options
from .execute import Placement, run_tasks
from .plan import RunPlan, SlidePrep, make_plan, plan_tile
from .prepare import OnStage, Prepared, submit_preparation
from .task import ModelSpec, SlideSource, TileJob, by_shape, cached, chunks, model_key, pending_stores, \
    process_tiles, run_key, task_order

__all__ = ["run", "count", "count_each", "RunConfig"]



def run(slide: str | os.PathLike, out: str | os.PathLike, model: str | os.PathLike | None = None,
        config: RunConfig | None = None, client: Any = None, **options: Any) -> Any:
    """Count cells on a whole slide; writes the output folder and returns an xarray Dataset.

    ``options`` override fields of :class:`RunConfig`; ``client`` is an optional
    ``distributed.Client`` to run the tile tasks on (``wsicount batch`` shares one). Raises a
    :class:`~wsicount.errors.WsicountError` subclass for every input problem (README: exit codes).
    """
    from ..report import results_dataset

    r = _count(slide, out, model, with_options(config, options), client)
    return results_dataset(r.out, r.prep.tissue, r.prep.geom, r.agg, r.summary, r.cells)


def count(slide: str | os.PathLike, out: str | os.PathLike, model: str | os.PathLike | None = None,
          config: RunConfig | None = None, client: Any = None, **options: Any) -> dict[str, Any]:
    """:func:`run` returning the summary (summary.json's content) instead of a Dataset (no dask or xarray import)."""
    return _count(slide, out, model, with_options(config, options), client).summary


def count_each(jobs: Iterable[tuple[str | os.PathLike, str | os.PathLike]], model: str | os.PathLike | None = None,
               config: RunConfig | None = None, client: Any = None, on_stage: OnStage | None = None,
               **options: Any) -> Iterator[tuple[dict[str, Any] | None, WsicountError | None]]:
    """:func:`count` for each (slide, output folder) in turn: yields (summary, None), or (None, error) for a slide that failed.

    One side worker serves every slide (a forked process when this is called before torch is
    imported, as by ``wsicount batch``), and the next slide's preparation is queued as soon as
    a slide's tiles start. Results are those of :func:`count` slide by slide. Errors other
    than :class:`WsicountError` stop the sequence. ``on_stage(stage, slide name)`` is told of
    each slide's "prepare" and "tiles".
    """
    cfg = with_options(config, options)
    jobs = list(jobs)
    say = progress_fn(cfg.progress)
    side, _ = side_worker.side_executor()

    def prepare_at(i: int) -> Prepared | WsicountError | None:
        if i >= len(jobs):
            return None
        try:
            return submit_preparation(side, jobs[i][0], model, cfg, on_stage)
        except WsicountError as e:  # a bad slide or card: reported when its turn comes
            return e

    try:
        ahead = prepare_at(0)
        for i, (slide, out) in enumerate(jobs):
            current, ahead = ahead, None

            def start_next(i: int = i) -> None:
                nonlocal ahead
                ahead = prepare_at(i + 1)

            if say is not None:
                say("slide", i + 1, len(jobs))
            try:
                if isinstance(current, WsicountError):
                    raise current
                summary = _count(slide, out, model, cfg, client, side=side, ahead=current, on_tiles=start_next,
                                 on_stage=on_stage, say=say).summary
            except WsicountError as e:
                yield None, e
            else:
                yield summary, None
            if ahead is None:  # the slide failed before its tiles started
                ahead = prepare_at(i + 1)
        side.shutdown(wait=True)
    except BaseException:  # includes the consumer closing the generator early
        side_worker.stop_side(side)
        raise


@dataclass
class _Opened:
    """The run after its folder is claimed: model, device, placement, tile size, run state."""

    ahead: Prepared
    lm: Any
    device: Any
    precision: str
    placement: Placement
    tile_plan: Any
    fingerprint: dict[str, Any]
    state: RunState
    resumed: bool
    client: Any
    own_client: Any
    regions: Any = None  # the user's regions (wsicount.regions), read and checked before any tile


@dataclass
class _Result:
    """What a run returns: its folder, preparation, aggregate, summary and cell table."""

    out: Path
    prep: SlidePrep
    agg: Any
    summary: dict[str, Any]
    cells: dict[str, Any]


#: notes a user should see before a long run ends (the CLI prints them on stderr)
log = logging.getLogger("wsicount")


def _count(slide: str | os.PathLike, out: str | os.PathLike, model: str | os.PathLike | None, cfg: RunConfig,
           client: Any, side: Executor | None = None, ahead: Prepared | None = None,
           on_tiles: Callable[[], None] | None = None, on_stage: OnStage | None = None,
           say: ProgressFn | None = None) -> _Result:
    """The whole run. ``side``: a side worker owned by the caller (:func:`count_each`), with ``ahead`` this slide's
    preparation already queued on it; ``on_tiles`` is called as the tiles start; ``say`` gets the stages
    (default: :func:`wsicount.progress.progress_fn` of ``cfg.progress``)."""
    from ..checks import check_device, check_tile_size

    check_tile_size(cfg.tile_size, model)  # a bad option is a UsageError before anything is written
    check_device(cfg.device)
    say = say if say is not None else progress_fn(cfg.progress)
    stage = say or (lambda *_: None)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    out = Path(out)
    own_side = side is None
    if side is None:
        side, _ = side_worker.side_executor()
    try:
        stage("open", 0, 0)
        opened = _open(slide, out, model, cfg, client, side, ahead, timings, on_stage)
    except BaseException:
        if own_side:
            side_worker.stop_side(side)
        raise
    try:
        prep, plan, tiles, job, picture = _plan(opened, out, cfg, side, timings, stage)
        timings["before_tiles"] = time.perf_counter() - t_start
        records, n_tasks, n_todo = _run_tiles(opened, prep, plan, tiles, job, cfg, timings, on_tiles, on_stage, say)
        stage("pyramid", 0, 0)
        agg, pngs, tables, n_levels = _tail(opened, out, prep, plan, tiles, records, cfg, side, picture, timings)
        facts = {"n_tasks": n_tasks, "n_todo": n_todo, "n_levels": n_levels,
                 "side_worker": "process" if isinstance(side, ProcessPoolExecutor) else "thread"}
        summary = _summary(opened, prep, plan, tiles, records, agg, cfg, model, timings, facts)
        stage("report", 0, 0)
        cells = _write_results(out, opened, prep, agg, summary, t_start, cfg, pngs, tables)
        if own_side:
            # its work is done; wait for it to exit (milliseconds), so that nothing of the pool is
            # still closing when the interpreter's exit hook wakes it (see side.stop_side)
            side.shutdown(wait=True)
        return _Result(out, prep, agg, summary, cells)
    except BaseException:
        if own_side:
            side_worker.stop_side(side)
        raise
    finally:
        opened.state.release()
        if opened.own_client is not None:
            opened.own_client.close()


def _open(slide: str | os.PathLike, out: Path, model: str | os.PathLike | None, cfg: RunConfig, client: Any,
          side: Executor, ahead: Prepared | None, timings: dict[str, float], on_stage: OnStage | None) -> _Opened:
    """Queue the slide's preparation, load the model, decide the placement and tile size, and claim the folder.

    Torch is imported here, after the side worker was forked, so that the worker starts at once.
    """
    t = time.perf_counter()
    ahead = ahead or submit_preparation(side, slide, model, cfg, on_stage)
    from ..infer import pick_device, resolve_precision
    from ..models import load_model

    lm = load_model(model)
    from ..uncertainty import card_calibration

    card_calibration(lm.card.calibration, cfg.uncertainty)  # a method the card is not calibrated for: fail now
    regions = _user_regions(cfg, ahead.slide)
    device = pick_device(cfg.device)
    precision = resolve_precision(device, cfg.precision, lm.card)
    own_client = None
    if client is None and cfg.scheduler:
        from distributed import Client

        client = own_client = Client(cfg.scheduler)  # now: the tile size is planned for its workers
    try:
        placement = Placement.decide(cfg, client)
        tile_plan = plan_tile(cfg, lm, device, precision, placement, client, out)
        if not tile_plan.fits:
            log.warning("tile size %d: %s", tile_plan.tile_size, tile_plan.reason)
        timings["open"] = time.perf_counter() - t
        card = lm.card
        # the resolved precision and tile size, not 'auto': results depend on what actually ran
        fingerprint = {"slide": slide_fingerprint(ahead.slide.path),
                       "model": {"name": card.name, "version": card.version, "path": str(lm.path)},
                       "params": {**cfg.result_params(), "precision": precision, "tile_size": tile_plan.tile_size},
                       "wsicount": __version__}
        state = RunState(out)
        resumed = state.prepare(fingerprint, cfg.overwrite)
        if not ahead.prep.done():
            from .. import detect  # noqa: F401  (else each tile thread's first tile waits on its imports)
    except BaseException:
        if own_client is not None:
            own_client.close()
        raise
    return _Opened(ahead, lm, device, precision, placement, tile_plan, fingerprint, state, resumed, client, own_client,
                   regions)


def _user_regions(cfg: RunConfig, sl: Any) -> Any:
    """The user's regions (None without ``cfg.regions``), checked against the slide: a bad region fails the run now."""
    if not cfg.regions:
        return None
    from ..regions import check_regions, read_regions

    regs = read_regions(cfg.regions, units=cfg.regions_units, mpp0=sl.mpp, label_scale=cfg.regions_scale)
    check_regions(regs, tuple(sl.shapes[0][:2]))
    return regs


def _plan(o: _Opened, out: Path, cfg: RunConfig, side: Executor, timings: dict[str, float],
          stage: ProgressFn) -> tuple[SlidePrep, RunPlan, list, TileJob, Future]:
    """Wait for the slide's preparation, then fix the plan, the tissue tiles and the tile job."""
    from ..report import slide_figure

    t = time.perf_counter()
    stage("tissue", 0, 0)
    prep = o.ahead.prep.result()
    stage("plan", 0, 0)
    timings.update(prep.seconds)  # tissue, normalization: computed while "open" loaded the model
    timings["tissue_wait"] = time.perf_counter() - t
    picture = o.ahead.picture or side_worker.side_submit(side, slide_figure, o.ahead.slide, prep.tissue)
    t = time.perf_counter()
    plan = make_plan(prep, o.lm.card, o.tile_plan.tile_size, cfg.grid_um, cfg.uncertainty, o.lm.path)
    tiles = tissue_tiles(plan.grid, prep.tissue.mask, *plan.mask_scale)
    job = TileJob(SlideSource(str(o.ahead.slide.path), cfg.backend, cfg.mpp, max(0, cfg.decode_cache_mb) << 20,
                              cfg.time_index),
                  ModelSpec(str(o.lm.path), str(o.device), o.precision, cfg.batch_size, o.placement.torch_threads,
                            o.placement.device_tasks),
                  plan, str(out), cfg.skip_bad_tiles, cfg.prefetch)
    timings["plan"] = time.perf_counter() - t
    # the tasks of this process reuse the weights loaded above, and the mask (other
    # processes, Dask's workers, read it from the tissue label)
    cached(model_key(job.model), lambda: o.lm)
    cached(run_key(job.out, "mask"), lambda: prep.tissue.mask)
    return prep, plan, tiles, job, picture


def _run_tiles(o: _Opened, prep: SlidePrep, plan: RunPlan, tiles: list, job: TileJob, cfg: RunConfig,
               timings: dict[str, float], on_tiles: Callable[[], None] | None,
               on_stage: OnStage | None, say: ProgressFn | None) -> tuple[list[TileRecord], int, int]:
    """Run the tiles not done yet; every tissue tile's record (resumed ones from disk), the task and to-do counts.

    The density store and the tissue label are written on a thread while this process's first
    tiles are read and inferred; the tiles take the mask from memory and wait for the store only
    at their first write. Tasks in other processes open both from disk: they are written first.
    """
    t = time.perf_counter()
    done = o.state.done_keys()
    todo = [x for x in tiles if x.key not in done]
    # small tasks balance the workers at the end of a run; <= ~500 of them keep the
    # distributed scheduler's per-task cost negligible
    per_task = cfg.tiles_per_task or max(2, math.ceil(len(todo) / 500))
    tasks = chunks(task_order(todo), per_task)
    if on_tiles is not None:
        on_tiles()
    if on_stage is not None:
        on_stage("tiles", Path(job.slide.path).name)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsicount-aux") as aux:
        geom = plan.geom
        stores = aux.submit(_create_stores, Path(job.out), (geom.height, geom.width), plan.grid.core, geom.model_mpp,
                            prep.tissue)
        if not o.placement.in_process:
            stores.result()
        pending_stores.add(job.out, stores)
        try:
            fresh = run_tasks(process_tiles, job, tasks, o.placement, o.client, tile_updates(say, len(todo)))
        finally:
            pending_stores.discard(job.out)
        stores.result()
    timings["tiles"] = time.perf_counter() - t
    # this run's records as the tasks returned them (what they wrote), resumed ones from disk
    return [fresh.get(x.key) or o.state.record(x.key) for x in tiles], len(tasks), len(todo)


def _create_stores(out: Path, shape: tuple[int, int], core: int, mpp: float, tm: Any) -> None:
    """Create the density arrays (``density/0``, ``/1``) and write the tissue label (imports Zarr)."""
    from ..store.density import create_density, write_label

    create_density(out, shape, core, mpp)
    write_label(out, "tissue", tm.mask, tm.mpp)


def _tail(o: _Opened, out: Path, prep: SlidePrep, plan: RunPlan, tiles: list, records: list[TileRecord],
          cfg: RunConfig, side: Executor, picture: Future,
          timings: dict[str, float]) -> tuple[Any, tuple[bytes, bytes], Any, int]:
    """Aggregate, then three at once: the side worker draws the heat map and writes the text tables
    (Python-bound), a thread builds the density pyramid, this thread writes the count maps (both
    Zarr: numpy sums and blosc release the GIL, Zarr's I/O loop does not)."""
    from ..aggregate import add_intervals, aggregate, bad_tile_rows
    from ..report import for_heatmap, heatmap_figure, write_count_maps, write_text_tables
    from ..store.density import build_pyramid

    t = time.perf_counter()
    tm, geom = prep.tissue, plan.geom
    agg = aggregate(records, tm, geom, plan.grid_um, plan.grid_shape)
    agg.bad_tiles = bad_tile_rows(agg.bad_tiles, tiles, geom, tm, plan.mask_scale)
    add_intervals(agg, plan.calibration, geom.model_mpp, cfg.interval_level, plan.area_calibration)
    if o.regions is not None:
        agg.user_regions = _count_regions(o.regions, out, plan, tm, cfg.interval_level)
    sf = picture.result()
    drawing = side_worker.side_submit(side, heatmap_figure, sf, for_heatmap(agg))
    tables_f = side_worker.side_submit(side, write_text_tables, out, o.ahead.slide.mpp, geom, agg, cfg.geojson_units)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsicount-aux") as aux:
        # ("stitch" is the pyramid's own seconds, overlapping the first part of "report")
        pyramid_f = aux.submit(_timed, build_pyramid, out, geom.model_mpp)
        write_count_maps(out, agg)
        tables = tables_f.result()
        n_levels, timings["stitch"] = pyramid_f.result()
    timings["report"] = time.perf_counter() - t  # aggregation and tables; write_report adds the rest
    return agg, (sf.png, drawing.result()), tables, n_levels


def _count_regions(regions: Any, out: Path, plan: RunPlan, tm: Any, level: float) -> list[dict[str, Any]]:
    """Count, interval, tissue area and density of each user region on the stitched density (read in row bands)."""
    import zarr

    from ..regions import region_counts
    from ..store import Layout

    density = zarr.open_array(str(Layout(out).density_level(0)), mode="r")
    return region_counts(regions, density, plan.geom.model_mpp, plan.geom.scale0, tm.mask, plan.area_calibration,
                         level)


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and the seconds it took."""
    t = time.perf_counter()
    return fn(*args), time.perf_counter() - t


def _summary(o: _Opened, prep: SlidePrep, plan: RunPlan, tiles: list, records: list[TileRecord], agg: Any,
             cfg: RunConfig, model: Any, timings: dict[str, float], facts: dict[str, Any]) -> dict[str, Any]:
    """summary.json's content (its schema: :func:`wsicount.report.build_summary`)."""
    from ..io import slide_info
    from ..report import build_summary

    sl, card, grid, geom = o.ahead.slide, o.lm.card, plan.grid, plan.geom
    stage = {k: float(sum(r.t.get(k, 0.0) for r in records))
             for k in ("read", "read_cpu", "infer", "infer_cpu", "post", "post_cpu")}
    processing = {"level": geom.level, "level_mpp": geom.level_mpp, "model_mpp": geom.model_mpp,
                  "resampled": geom.resampled, "grid_shape": [geom.height, geom.width],
                  "tile_size": grid.tile_size, "tile_plan": asdict(o.tile_plan),
                  "tile_core": grid.core, "halo": grid.halo, "n_tiles": grid.shape[0] * grid.shape[1],
                  "n_tiles_tissue": len(tiles), "n_tiles_resumed": len(tiles) - facts["n_todo"],
                  # pixels the network ran on (windows trimmed to the tissue, halos included)
                  "network_input_px": int(sum(t.window_shape[0] * t.window_shape[1] for t in tiles)),
                  "window_shapes": [[*g[0].window_shape, len(g)] for g in by_shape(task_order(tiles))],
                  "normalization": _normalization_record(plan, card), "tissue_source": prep.tissue.source,
                  "tissue_mask_mpp": prep.tissue.mpp, "density_levels": facts["n_levels"], "device": str(o.device),
                  "precision": o.precision, "n_tasks": facts["n_tasks"], "threads": o.placement.threads,
                  "side_worker": facts["side_worker"], "resumed": o.resumed}
    model_info = {"name": card.name, "version": card.version, "arch": card.arch, "path": str(o.lm.path),
                  "mpp": card.mpp, "density_scale": card.density_scale, "training_data": card.training.get("data")}
    summary = build_summary(
        agg, prep.tissue,
        slide={**slide_info(sl), "path": str(sl.path), "fingerprint": o.fingerprint["slide"]},
        model=model_info, processing=processing,
        parameters={**asdict(replace(cfg, progress=bool(cfg.progress))), "grid_um": list(cfg.grid_um),
                    "model": str(model) if model else card.name},
        timings={**timings, "stage_seconds_summed_over_tiles": stage})
    # results no in-domain run gives: one line each (the CLI prints them, the report shows them)
    summary["warnings"] = o.ahead.warnings + check_result(
        card, total=agg.total, tile_sums=[r.sum for r in records if not r.bad], regional=agg.regional,
        mpp=geom.model_mpp, tissue_mm2=prep.tissue.area_mm2,
        density_outside_mask=summary.get("density_outside_mask"))
    return summary


def _normalization_record(plan: RunPlan, card: Any) -> dict[str, Any]:
    """How intensities were scaled: the field's offsets and spans (or the slide-wide pair) and the card's rule."""
    stats = plan.field.summary() if plan.field is not None else {"offset": plan.norm[0], "span": plan.norm[1]}
    return {**stats, "card": card.normalization}


def _write_results(out: Path, o: _Opened, prep: SlidePrep, agg: Any, summary: dict[str, Any], t_start: float,
                   cfg: RunConfig, pngs: tuple[bytes, bytes], tables: Any) -> dict[str, Any]:
    """Write the pictures, report.html and (last) summary.json; the cell table."""
    from ..report import write_report

    return write_report(out, o.ahead.slide, prep.tissue, prep.geom, agg, summary, t_start, cfg.geojson_units,
                        pngs, tables)
