"""A study of many embryos (one stack each): cleavage times per embryo in one table.

Each stack is counted into ``OUT/<name>/`` by :func:`~wsicount.timelapse.run.count_stack`
(so each one resumes on its own); a stack that fails is recorded with its error and the rest
finish. ``OUT/study_timelapse.csv`` has one row per embryo (or well): t2..t8 in hours and frames,
cc2 = t3 - t2, s2 = t4 - t3, the number of unreadable frames, and the field's doubling time with
its 95 % interval (empty when none was fitted; the summary's ``growth.field.reason`` says why).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from wsicount.errors import WsicountError
from wsicount.store.atomic import atomic_write

from .run import count_stack
from .stages import CLEAVAGES, DURATIONS

__all__ = ["STUDY_COLUMNS", "study_row", "write_study_table", "count_stacks"]

STUDY_COLUMNS = (["embryo", "status", "frames", *(f"{k}_h" for k in CLEAVAGES), *(f"{n}_h" for n, _, _ in DURATIONS),
                  *(f"{k}_frame" for k in CLEAVAGES), "censored", "unreadable_frames", "doubling_time_h",
                  "doubling_time_lo_h", "doubling_time_hi_h", "error"])


def _name(path: Path) -> str:
    """An embryo's name: the stack's file name without its (double) suffix."""
    n = path.name
    for suf in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr"):
        if n.lower().endswith(suf):
            return n[: -len(suf)]
    return n


def study_row(embryo: str, summary: dict | None, error: str = "") -> dict[str, Any]:
    """One table row from a stack's summary (None and ``error`` for a stack that failed)."""
    row: dict[str, Any] = {c: "" for c in STUDY_COLUMNS}
    row["embryo"] = embryo
    if summary is None:
        row.update(status="error", error=error)
        return row
    bad = summary.get("unreadable_frames", summary.get("failed_frames", []))
    row.update(status="ok", frames=summary["frames"], unreadable_frames=len(bad))
    cl = summary.get("cleavage")  # a whole-slide time series fits no stages
    if cl is not None:
        row["censored"] = " ".join(cl["censored_at_first_frame"])
        for k in CLEAVAGES:
            h, f = cl["hours"][k], cl["frames"][k]
            row[f"{k}_h"] = "" if h is None else f"{h:.3f}"
            row[f"{k}_frame"] = "" if f is None else f
        for n, _, _ in DURATIONS:
            v = cl["durations_h"][n]
            row[f"{n}_h"] = "" if v is None else f"{v:.3f}"
    fit = (summary.get("growth") or {}).get("field") or {}
    if fit.get("doubling_time_h"):
        row["doubling_time_h"] = f"{fit['doubling_time_h']:.3f}"
        row["doubling_time_lo_h"], row["doubling_time_hi_h"] = (f"{v:.3f}" for v in fit["ci_h"])
    return row


def write_study_table(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the study rows as CSV atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=STUDY_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return atomic_write(path, buf.getvalue())


def count_stacks(paths: list[str | Path], out: str | Path, model: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Count each stack into ``out/<embryo>/`` and write ``out/study_timelapse.csv``; failures are rows too.

    A whole-slide time series among them goes through :func:`~.series.count_slide_series` with
    ``model`` as given (a name or path; None: the slide default).
    """
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    from wsicount.models import LoadedModel, load_model

    # a whole-slide series is counted by the slide path (a model name or card path; None: the slide default)
    given = model.path if isinstance(model, LoadedModel) else model
    if model is None or isinstance(model, (str, Path)):
        model = load_model(model or "blastomere")  # loaded once for every stack
    from .series import count_slide_series, is_slide_series

    rows = []
    for p in map(Path, paths):
        name = _name(p)
        try:
            if is_slide_series(p):  # whole slides per time point: the slide path (stack-only options do not apply)
                series_opts = {k: v for k, v in kwargs.items() if k in ("mpp", "overwrite")}
                rows.append(study_row(name, count_slide_series(p, outp / name, given, **series_opts)))
                continue
            rows.append(study_row(name, count_stack(p, outp / name, model, **kwargs)))
        except WsicountError as e:
            rows.append(study_row(name, None, str(e)))
    write_study_table(rows, outp / "study_timelapse.csv")
    return rows
