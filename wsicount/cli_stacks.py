"""``wsicount run`` on time-lapse inputs: a stack of frames, or a whole-slide time series (one pyramid per time point)."""

from __future__ import annotations

from pathlib import Path

import click

from . import checks
from .errors import UsageError

__all__ = ["run_stack", "run_series"]


def run_stack(stack: Path, out: Path, model: str | None, frame_interval: float | None, times: Path | None,
               focus: str, opts: dict) -> None:
    """``wsicount run`` on a time-lapse stack: every frame counted, stages and cleavage times fitted."""
    if focus not in ("best", "all") and not focus.isdigit():
        raise UsageError(f"--focus must be best, all or a plane index, got {focus!r}")
    for name in ("channel", "model_mpp", "mask", "tissue_mode", "workers", "scheduler", "uncertainty"):
        if opts.get(name):
            raise UsageError(f"--{name.replace('_', '-')} applies to whole slides, not to a time-lapse stack")
    if times is not None:
        checks.require_path(times, "times", "file")
    if opts["regions"] is not None:
        checks.require_path(opts["regions"], "regions", "file")
    checks.check_device(opts["device"])
    from .timelapse import count_stack

    s = count_stack(stack, out, model or "blastomere", focus=int(focus) if focus.isdigit() else focus,
                    batch_size=opts["batch_size"] or 4, device=opts["device"],
                    precision="fp32" if opts["precision"] == "auto" else opts["precision"], mpp=opts["mpp"],
                    frame_interval_min=frame_interval, times_csv=times, overwrite=opts["overwrite"],
                    regions=opts["regions"], regions_units=opts["regions_units"], regions_scale=opts["regions_scale"])
    hours = {k: v for k, v in s["cleavage"]["hours"].items() if v is not None}
    when = ", ".join(f"{k} {v:.1f} h" for k, v in hours.items()) or "no cleavage seen"
    fit = s["growth"].get("field") or {}
    if fit.get("doubling_time_h"):
        lo, hi = fit["ci_h"]
        when += f"; field doubling time {fit['doubling_time_h']:.1f} h (95 % CI {lo:.1f}–{hi:.1f})"
    click.echo(f"{stack.name}: {s['frames']} frames, {when} -> {out / 'timeline.csv'}")


def run_series(series: Path, out: Path, model: str | None, quiet: bool, frame_interval: float | None,
                times: Path | None, opts: dict) -> None:
    """``wsicount run`` on a whole-slide time series: each time point counted as a slide into OUT/tNNNN."""
    if times is not None:
        checks.require_path(times, "times", "file")
    if opts["regions"] is not None:
        checks.require_path(opts["regions"], "regions", "file")
        opts["regions"] = str(opts["regions"])
    if opts["mask"] is not None:
        checks.require_path(opts["mask"], "mask", "file")
        opts["mask"] = str(opts["mask"])
    checks.check_tile_size(opts["tile_size"], model)
    checks.check_device(opts["device"])
    from .timelapse.series import count_slide_series

    opts["grid_um"] = tuple(opts["grid_um"])
    s = count_slide_series(series, out, model, frame_interval_min=frame_interval, times_csv=times,
                           progress=not quiet, **opts)
    fit = s["growth"].get("field") or {}
    grows = (f"; doubling time {fit['doubling_time_h']:.1f} h (95 % CI {fit['ci_h'][0]:.1f}–{fit['ci_h'][1]:.1f})"
             if fit.get("doubling_time_h") else "")
    failed = f", {len(s['failed_frames'])} failed" if s["failed_frames"] else ""
    click.echo(f"{series.name}: {s['frames']} time points{failed}{grows} -> {out / 'timeline.csv'}")
    for f in s["failed_frames"]:
        click.echo(f"wsicount: warning: time point {f['frame']}: {f['error']}", err=True)
