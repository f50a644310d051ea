"""A slide's plan, fixed before the first tile: tissue, model-grid geometry, normalisation, tile grid and size.

Everything here is a pure function of the slide, the model card and the result parameters, and
none of it depends on the tile size except the tile grid itself: the normalisation field
(:mod:`wsicount.normalize`) gives each pixel statistics that depend only on its slide position,
and the tissue mask comes from the slide, so the density (and so the count) is the same
whatever tile size the memory allows.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from ..guard import model_mpp, run_channels
from ..store import RunState
from ..tiling import Geometry, TileGrid, plan_geometry
from .config import RunConfig
from .execute import Placement

__all__ = ["SlidePrep", "RunPlan", "prepare", "make_plan", "plan_tile", "grid_shapes", "mask_scale",
           "normalization_field"]


@dataclass(frozen=True)
class SlidePrep:
    """The slide work that needs no torch (done on the side worker): mask, geometry, normalisation, their seconds."""

    tissue: Any  # wsicount.tissue.TissueMask
    geom: Geometry
    norm: tuple[float, float]  # the field's median (offset, span), for the summary
    seconds: dict[str, float]
    field: Any = None  # wsicount.normalize.NormField: each pixel's (offset, span)
    channels: tuple[int, ...] = ()  # what the model reads: --channel resolved on the slide, else the card's


@dataclass(frozen=True)
class RunPlan:
    """What every tile task needs to know about the slide; small and picklable."""

    geom: Geometry
    grid: TileGrid
    norm: tuple[float, float]  # the field's median (offset, span), for the summary
    mask_scale: tuple[float, float]  # model-grid px per mask px (y, x)
    grid_um: tuple[float, ...]
    grid_shape: tuple[tuple[int, int], ...]
    channels: tuple[int, ...]  # the slide channels fed to the model
    sigma_px: float
    peak_min_distance: int
    #: peaks are searched in the core grown by this margin, so a peak on a core's edge is seen whole
    peak_margin: int
    #: the run's count-interval calibration (wsicount.uncertainty.Calibration), or None
    calibration: Any = None
    #: each model-grid pixel's normalisation (wsicount.normalize.NormField)
    field: Any = None
    #: calibration of grid cells and user regions, whose terms hold no per-view sums: the card's
    #: default where the run's method is a view method (tta, ensemble), else ``calibration``
    area_calibration: Any = None
    #: view methods: "tta" (8 dihedral views), "ensemble" (its members' card paths in ``members``) or
    #: "mcdropout" (``mc``: dropout probability and passes)
    views: str | None = None
    members: tuple[str, ...] = ()
    #: hetero: the variance head's path (wsicount.models.variance); tiles add its summed variance to their ``var``
    head: str | None = None
    mc: tuple[float, int] | None = None


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
    channels = tuple(run_channels(card, sl, cfg.channel))
    geom = plan_geometry(sl, model_mpp(card, cfg.model_mpp))
    field = normalization_field(sl, geom, tm, card, cfg.skip_bad_tiles, channels)
    seconds["normalization"] = time.perf_counter() - t
    return SlidePrep(tm, geom, _median_stats(field), seconds, field, channels)


def tissue_mask(sl: Any, cfg: RunConfig, modality: str) -> Any:
    """The user's mask, or the mask detected in the card's (or the chosen) tissue mode."""
    from ..tissue import detect_tissue, load_user_mask

    if cfg.mask:
        h0, w0 = sl.shapes[0][:2]
        return load_user_mask(cfg.mask, (h0, w0), sl.mpp)
    return detect_tissue(sl, cfg.tissue_mode or modality, skip_bad_tiles=cfg.skip_bad_tiles)


def normalization_field(slide: Any, geom: Geometry, tm: Any, card: Any, skip_bad: bool = False,
                        channels: tuple[int, ...] | None = None) -> Any:
    """Each model-grid pixel's intensity normalisation, as the card's training images were normalised.

    See :func:`wsicount.normalize.build_norm_field`: statistics over a training image's field
    around each position on a fixed lattice (never the tile grid); with ``skip_bad`` an
    undecodable block is left out of them (its tiles are recorded bad later). ``channels``: those
    the model reads (default the card's).
    """
    from ..normalize import build_norm_field

    return build_norm_field(slide, geom, tm, mask_scale(tm, geom), card.normalization,
                            list(channels or card.channels), skip_bad)


def _median_stats(field: Any) -> tuple[float, float]:
    """The field's median (offset, span): one pair to report."""
    s = field.summary()
    return s["offset"][1], s["span"][1]


def mask_scale(tm: Any, geom: Geometry) -> tuple[float, float]:
    """Model-grid pixels per tissue-mask pixel (y, x)."""
    return tm.scale_y / geom.scale0, tm.scale_x / geom.scale0


def grid_shapes(geom: Geometry, grid_um: tuple[float, ...]) -> tuple[tuple[int, int], ...]:
    """Cells (rows, columns) of each physical count grid of ``grid_um`` µm over the slide."""
    return tuple((int(math.ceil(geom.height * geom.model_mpp / g)), int(math.ceil(geom.width * geom.model_mpp / g)))
                 for g in grid_um)


def make_plan(prep: SlidePrep, card: Any, tile_size: int, grid_um: tuple[float, ...], method: str | None = None,
              card_path: Any = None) -> RunPlan:
    """The run's plan for a prepared slide, a card (at ``card_path``), a tile size and an interval method."""
    geom, margin = prep.geom, card.peak_min_distance_px + 1
    grid = TileGrid.for_model(geom.height, geom.width, tile_size, card.receptive_radius, card.stride, margin)
    from ..uncertainty import card_calibration, method_record
    from ..views import VIEW_METHODS, ensemble_members, head_path

    cal = card_calibration(card.calibration, method)
    mapped = (*VIEW_METHODS, "hetero")  # terms from extra maps, which grid cells and regions do not carry
    views = cal.method if cal is not None and cal.method in VIEW_METHODS else None
    area_cal = card_calibration(card.calibration) if cal is not None and cal.method in mapped else cal
    if area_cal is not None and area_cal.method in mapped:  # such a default: areas get no interval
        area_cal = None
    members: tuple[str, ...] = ()
    head, mc = None, None
    if cal is not None and cal.method in ("ensemble", "hetero", "mcdropout"):
        rec = method_record(card.calibration, cal.method)
        if cal.method == "ensemble":
            members = tuple(str(p) for p in ensemble_members(rec, card_path))
        elif cal.method == "mcdropout":
            mc = (float(rec.get("p", 0.2)), int(rec.get("passes", 8)))
        else:
            head = str(head_path(rec, card_path))
    return RunPlan(geom, grid, prep.norm, mask_scale(prep.tissue, geom), tuple(grid_um), grid_shapes(geom, grid_um),
                   prep.channels, card.sigma_px, card.peak_min_distance_px, margin, cal, prep.field, area_cal, views,
                   members, head, mc)


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
