"""A slide's plan, fixed before the first tile: tissue, model-grid geometry, normalisation, tile grid and size.

Everything here is a pure function of the slide, the model card and the result parameters, and
none of it depends on the tile size except the tile grid itself: the normalisation sample comes
from a fixed lattice and the tissue mask from the slide, so the density (and so the count) is
the same whatever tile size the memory allows.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TileReadError
from ..store import RunState
from ..tiling import Geometry, TileGrid, mask_on_grid, plan_geometry, read_model_window, tissue_tiles
from .config import RunConfig
from .execute import Placement

__all__ = ["SlidePrep", "RunPlan", "prepare", "make_plan", "plan_tile", "grid_shapes", "mask_scale",
           "normalization_stats"]


@dataclass(frozen=True)
class SlidePrep:
    """The slide work that needs no torch (done on the side worker): mask, geometry, normalisation, their seconds."""

    tissue: Any  # wsicount.tissue.TissueMask
    geom: Geometry
    norm: tuple[float, float]
    seconds: dict[str, float]


@dataclass(frozen=True)
class RunPlan:
    """What every tile task needs to know about the slide; small and picklable."""

    geom: Geometry
    grid: TileGrid
    norm: tuple[float, float]
    mask_scale: tuple[float, float]  # model-grid px per mask px (y, x)
    grid_um: tuple[float, ...]
    grid_shape: tuple[tuple[int, int], ...]
    sigma_px: float
    peak_min_distance: int
    #: peaks are searched in the core grown by this margin, so a peak on a core's edge is seen whole
    peak_margin: int


def prepare(sl: Any, cfg: RunConfig, card: Any, keep: Any = None) -> SlidePrep:
    """Tissue mask, model-grid geometry and normalisation statistics, with their seconds.

    ``keep(tm)``, when given, is called with the mask as soon as it exists (the side process
    keeps it for the slide picture, its next task).
    """
    t = time.perf_counter()
    tm = tissue_mask(sl, cfg, card.modality)
    if keep is not None:
        keep(tm)
    seconds = {"tissue": time.perf_counter() - t}
    t = time.perf_counter()
    geom = plan_geometry(sl, card.mpp)
    norm = normalization_stats(sl, geom, tm, mask_scale(tm, geom), card, cfg.skip_bad_tiles)
    seconds["normalization"] = time.perf_counter() - t
    return SlidePrep(tm, geom, norm, seconds)


def tissue_mask(sl: Any, cfg: RunConfig, modality: str) -> Any:
    """The user's mask, or the mask detected in the card's (or the chosen) tissue mode."""
    from ..tissue import detect_tissue, load_user_mask

    if cfg.mask:
        h0, w0 = sl.shapes[0][:2]
        return load_user_mask(cfg.mask, (h0, w0), sl.mpp)
    return detect_tissue(sl, cfg.tissue_mode or modality, skip_bad_tiles=cfg.skip_bad_tiles)


def normalization_stats(slide: Any, geom: Geometry, tm: Any, scale: tuple[float, float], card: Any,
                        skip_bad: bool = False, n: int = 16, block: int = 512) -> tuple[float, float]:
    """Slide-level intensity normalisation from up to ``n`` tissue blocks of the model grid.

    The blocks come from a fixed ``block``-px lattice, not from the tile grid, so the
    statistics (and hence the density) do not depend on the tile size. With ``skip_bad``
    an undecodable block is left out of the sample (its tiles are recorded bad later).
    """
    from ..preprocess import percentile_stats, select_channels

    if card.normalization.get("kind") == "fixed":
        return percentile_stats(np.zeros(1), card.normalization)
    lattice = TileGrid(geom.height, geom.width, block, 0, 1)
    cands = tissue_tiles(lattice, tm.mask, *scale)
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
        vals.append(select_channels(img, card.channels)[:, mask_on_grid(tm.mask, *scale, t.core)].ravel())
    if not vals and error is not None:
        raise error  # nothing decodable to normalise with
    return percentile_stats(np.concatenate(vals), card.normalization)


def mask_scale(tm: Any, geom: Geometry) -> tuple[float, float]:
    """Model-grid pixels per tissue-mask pixel (y, x)."""
    return tm.scale_y / geom.scale0, tm.scale_x / geom.scale0


def grid_shapes(geom: Geometry, grid_um: tuple[float, ...]) -> tuple[tuple[int, int], ...]:
    """Cells (rows, columns) of each physical count grid of ``grid_um`` µm over the slide."""
    return tuple((int(math.ceil(geom.height * geom.model_mpp / g)), int(math.ceil(geom.width * geom.model_mpp / g)))
                 for g in grid_um)


def make_plan(prep: SlidePrep, card: Any, tile_size: int, grid_um: tuple[float, ...]) -> RunPlan:
    """The run's plan for a prepared slide, a card and a tile size."""
    geom, margin = prep.geom, card.peak_min_distance_px + 1
    grid = TileGrid.for_model(geom.height, geom.width, tile_size, card.receptive_radius, card.stride, margin)
    return RunPlan(geom, grid, prep.norm, mask_scale(prep.tissue, geom), tuple(grid_um), grid_shapes(geom, grid_um),
                   card.sigma_px, card.peak_min_distance_px, margin)


def plan_tile(cfg: RunConfig, lm: Any, device: Any, precision: str, placement: Placement, client: Any,
              out: Path) -> Any:
    """The tile size of this run (``budget.TilePlan``): requested, resumed, or the largest that fits where tiles run.

    Where: this process's ``threads`` tasks (a GPU's free memory for the activations on
    CUDA); ``--workers N`` on this machine, N one-thread processes each holding what this
    process holds now; a cluster's workers, each with its memory limit and threads (the
    tightest one decides). An auto run being resumed keeps the size it started with: the
    density chunks are laid out by it.
    """
    from ..budget import TilePlan, choose_tile_size
    from ..infer import activation_bytes_per_px

    if not cfg.tile_size and not cfg.overwrite:
        started = RunState(out).stored_params().get("tile_size")
        if started:
            return TilePlan(int(started), "auto: the size of the run being resumed")
    card = lm.card
    halo = TileGrid.halo_for(card.receptive_radius, card.stride, card.peak_min_distance_px + 1)
    plan = functools.partial(choose_tile_size, cfg.tile_size, act_per_px=activation_bytes_per_px(lm, device, precision),
                             channels=len(card.channels), core_of=lambda t: TileGrid.core_for(t, halo, card.stride),
                             batch=cfg.batch_size or 1, prefetch=cfg.prefetch)
    return _plan_for_placement(plan, cfg, placement, client, device)


def _plan_for_placement(plan: Any, cfg: RunConfig, placement: Placement, client: Any, device: Any) -> Any:
    """``plan`` (choose_tile_size with the model's terms bound) for the memory where the tasks run."""
    import psutil

    from ..budget import available_memory

    cache = max(0, cfg.decode_cache_mb) << 20
    if not placement.in_process:
        worker_base = psutil.Process().memory_info().rss + cache  # a worker holds what this process holds now
    if placement.kind == "cluster":
        workers = [w for w in client.scheduler_info().get("workers", {}).values() if w.get("memory_limit")]
        plans = [plan(tasks=w.get("nthreads", 1), available=int(w["memory_limit"]), fixed_bytes=worker_base)
                 for w in workers]
        return min(plans, key=lambda p: p.tile_size) if plans else plan(tasks=1, available=None)
    if placement.kind == "local-cluster":
        n = placement.workers or 1
        return plan(tasks=n, available=available_memory(), fixed_bytes=n * worker_base)
    if device.type == "cuda":
        import torch

        return plan(tasks=placement.threads, available=int(torch.cuda.mem_get_info(device)[0]))
    return plan(tasks=placement.threads, available=available_memory(), fixed_bytes=cache)
