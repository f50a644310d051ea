"""A whole-slide time series (one pyramid per time point) counted through the slide tile path, frame by frame.

Frames too large to hold in memory -- a pyramidal OME-TIFF or an OME-Zarr with a ``t`` axis whose
frames are tiled slides -- are not read whole as a time-lapse stack's frames are: time point
``t`` is opened as a slide (:func:`wsicount.io.open_slide` with ``t``) and counted by
:func:`wsicount.runner.count` into ``OUT/tNNNN/`` (a complete slide-run folder: density, tissue,
maps, regions, report; each resumes on its own). The series' own files, in ``OUT``
(:class:`wsicount.store.layout.StackLayout`):

* ``timeline.csv``: frame, time_h, count, count_lo, count_hi, tissue_mm2, cells_per_mm2, status;
* ``growth.csv`` and the doubling times in ``summary.json`` (:mod:`.growth`), per field and per
  ``--regions`` region (each region's count and interval from the frame's ``regions.csv`` terms);
* ``timeline.png`` (counts and their intervals over time) and ``summary.json``.

A time point that fails (an undecodable frame) is recorded with its error; the others are counted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from wsicount.errors import OutputError, WsicountError
from wsicount.store.atomic import atomic_write
from wsicount.store.layout import StackLayout, remove_owned

from .growth import GROWTH_COLUMNS, growth_table

__all__ = ["LARGE_FRAME_PX", "SERIES_COLUMNS", "is_slide_series", "count_slide_series"]

#: frames larger than this (pixels) go through the slide tile path even when the file holds one level
LARGE_FRAME_PX = 4096 * 4096
SERIES_COLUMNS = ["frame", "time_h", "count", "count_lo", "count_hi", "tissue_mm2", "cells_per_mm2", "status"]


def is_slide_series(path: str | Path) -> bool:
    """Whether a stack with more than one time point holds whole slides: pyramidal or larger than LARGE_FRAME_PX."""
    from .frames import is_frames_dir
    from .stack import is_stack

    p = Path(path)
    if not is_stack(p) or (p.is_dir() and is_frames_dir(p)):
        return False
    try:
        from wsicount.io import open_slide

        with open_slide(p, mpp=1.0) as sl:  # the pixel size is not needed to see the geometry
            h, w, _ = sl.shapes[0]
            return len(sl.shapes) > 1 or h * w > LARGE_FRAME_PX
    except WsicountError:
        return False


def _prepare(lay: StackLayout, overwrite: bool) -> None:
    """Refuse a folder with a user's files (unless resuming there); ``overwrite`` removes only what a run wrote."""
    from wsicount.store.records import _foreign_message

    foreign = lay.foreign()
    if foreign and (overwrite or not lay.frame_dirs()):
        raise OutputError(_foreign_message(lay.root, foreign))
    lay.root.mkdir(parents=True, exist_ok=True)
    if overwrite:
        remove_owned(lay.root, lay.owned())


def _row(t: int, time_h: float, s: dict | None, error: str) -> dict[str, Any]:
    """One time point's timeline values from its slide summary (None: it failed with ``error``)."""
    if s is None:
        return {"frame": t, "time_h": time_h, "count": np.nan, "lo": np.nan, "hi": np.nan, "tissue_mm2": np.nan,
                "cpm": np.nan, "status": "failed", "error": error, "regions": {}}
    ci = s.get("total_cells_ci") or {}
    regions = {r["region"]: (r["count"], r.get("count_lo", np.nan), r.get("count_hi", np.nan))
               for r in s.get("user_regions") or []}
    return {"frame": t, "time_h": time_h, "count": s["total_cells"], "lo": ci.get("lo", np.nan),
            "hi": ci.get("hi", np.nan), "tissue_mm2": s["tissue_area_mm2"], "cpm": s["cells_per_mm2"],
            "status": "ok", "error": "", "regions": regions, "ci": ci}


def _num(v: Any, spec: str = ".3f") -> str:
    """A CSV number, empty for None/NaN."""
    return "" if v is None or not np.isfinite(v) else f"{v:{spec}}"


def count_slide_series(path: str | Path, out: str | Path, model: Any = None, *, overwrite: bool = False,
                       frame_interval_min: float | None = None, times_csv: str | Path | None = None,
                       **run_options: Any) -> dict:
    """Count every time point of a whole-slide time series into ``out/tNNNN/``; the series' files in ``out``.

    ``run_options`` are :func:`wsicount.runner.count`'s (tile size, device, ``regions``, ...).
    Returns the series' summary.
    """
    from wsicount.runner import count

    from .stack import open_stack

    t0 = time.perf_counter()
    p, lay = Path(path), StackLayout(Path(out))
    stack = open_stack(p, frame_interval_min=frame_interval_min, times_csv=times_csv)  # lazy: only its times are read
    times = stack.times_h
    _prepare(lay, overwrite)
    rows = []
    for t in range(stack.n_frames):
        try:
            s, err = count(p, lay.frame_dir(t), model, time_index=t, overwrite=overwrite, **run_options), ""
        except WsicountError as e:
            s, err = None, str(e)
        rows.append(_row(t, float(times[t]), s, err))
    return _write(lay, p, stack, rows, time.perf_counter() - t0)


def _write(lay: StackLayout, path: Path, stack: Any, rows: list[dict], seconds: float) -> dict:
    """timeline.csv, growth.csv, timeline.png and summary.json of the series."""
    from .plot import timeline_png
    from .run import _csv_bytes

    have_times = bool(np.isfinite(stack.times_h).all())
    tl = [[r["frame"], _num(r["time_h"], ".4f") if have_times else "", _num(r["count"]), _num(r["lo"]),
           _num(r["hi"]), _num(r["tissue_mm2"], ".6f"), _num(r["cpm"], ".2f"), r["status"]] for r in rows]
    atomic_write(lay.file("timeline.csv"), _csv_bytes(SERIES_COLUMNS, tl))
    field = {k: np.array([r[k] for r in rows], dtype=float) for k in ("count", "lo", "hi")}
    names = list(dict.fromkeys(n for r in rows for n in r["regions"]))
    regions = {n: {k: np.array([r["regions"].get(n, (np.nan,) * 3)[i] for r in rows], dtype=float)
                   for i, k in enumerate(("count", "lo", "hi"))} for n in names}
    g_rows, growth = growth_table(stack.times_h if have_times else None, field, regions)
    atomic_write(lay.file("growth.csv"), _csv_bytes(GROWTH_COLUMNS, g_rows))
    ci = next((r["ci"] for r in rows if r.get("ci")), None)
    x = stack.times_h if have_times else np.arange(len(rows), dtype=float)
    atomic_write(lay.file("timeline.png"), timeline_png(
        x, field["count"], np.zeros(0, int), {}, f"{path.name}: cells per time point",
        "time (h)" if have_times else "frame", band=(field["lo"], field["hi"], ci["level"]) if ci else None,
        growth=growth.get("field")))
    summary = {
        "input": str(path), "kind": "slide-series", "frames": len(rows), "time_source": stack.time_source,
        "counts": [None if not np.isfinite(c) else round(float(c), 3) for c in field["count"]],
        "count_interval": ({"method": ci["method"], "level": ci["level"], "unit": "the whole slide of each time point"}
                           if ci else {"method": None, "level": None,
                                       "note": "the model card carries no count calibration: no interval is given"}),
        "growth": growth, "frame_outputs": [lay.frame_dir(r["frame"]).name for r in rows],
        "failed_frames": [{"frame": r["frame"], "error": r["error"]} for r in rows if r["status"] != "ok"],
        "seconds": round(seconds, 2),
        "outputs": {"timeline": "timeline.csv", "growth": "growth.csv", "plot": "timeline.png"},
    }
    atomic_write(lay.file("summary.json"), json.dumps(summary, indent=1))
    return summary
