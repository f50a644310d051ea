"""``wsicount batch``: many slides, one output folder each, and a study-level table.

A failing slide is recorded (status ``failed`` and its one-line error) and the others
finish. Each row's ``warnings`` holds the slide's domain-guard warnings (``summary.json``'s
``warnings``, joined by ``WARNING_SEP``; empty when there are none), so a study table never
shows an implausible count without its flag. ``study.csv`` is rewritten atomically after
every slide, so it always reflects what is done. Slides run one after another through
:func:`wsicount.runner.count_each`: one side worker for all, each slide's tissue mask,
normalisation and picture prepared while the previous slide's tiles run. With ``workers``/``scheduler`` one Dask client is
shared by all slides and each slide's tiles are spread over the cluster.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import time
from pathlib import Path
from typing import Any

from .errors import InputError
from .store import atomic_write

__all__ = ["batch", "read_manifest"]

FIELDS = ["slide", "output", "status", "total_cells", "tissue_area_mm2", "cells_per_mm2", "bad_tiles", "seconds",
          "warnings", "error"]
#: separates a slide's guard warnings in the ``warnings`` column (a warning's own text may hold ';' and ',')
WARNING_SEP = " | "


def read_manifest(path: str | os.PathLike) -> list[Path]:
    """Slides listed in a CSV with a ``slide`` (or ``path``) column; relative to the CSV."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"manifest {p}: no such file")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    col = next((c for c in ("slide", "path") if rows and c in rows[0]), None)
    if col is None:
        raise InputError(f"manifest {p}: needs a 'slide' column")
    return [(p.parent / r[col]).resolve() if not os.path.isabs(r[col]) else Path(r[col]) for r in rows]


def _out_name(slide: Path, used: set[str]) -> str:
    """Output folder name for a slide, unique within the study."""
    base = slide.name.split(".")[0] or "slide"
    name, i = base, 1
    while name in used:
        i += 1
        name = f"{base}-{i}"
    used.add(name)
    return name


def batch(slides: list[str | os.PathLike], out: str | os.PathLike, model: str | None = None,
          workers: int | None = None, scheduler: str | None = None, progress: Any = False,
          **run_opts: Any) -> list[dict[str, Any]]:
    """Run every slide into ``out/<name>/``; returns the rows of ``out/study.csv``."""
    from .runner import count_each

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from .errors import OutputError

        raise OutputError(f"output folder {out} is not writable ({e.strerror or e})") from None
    client, cluster = _client(workers, scheduler)
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    jobs = [(Path(s), out / _out_name(Path(s), used)) for s in slides]
    try:
        t = time.perf_counter()
        # closed on the way out: an error here stops its side worker at once, not when collected
        with contextlib.closing(count_each(jobs, model=model, client=client, workers=workers, progress=progress,
                                           **run_opts)) as results:
            for (s, dest), (summary, error) in zip(jobs, results, strict=True):  # to the end: its worker exits
                row = _row(s, dest, summary, error, time.perf_counter() - t)
                t = time.perf_counter()
                rows.append(row)
                _write_study(out / "study.csv", rows)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return rows


def _row(slide: Path, dest: Path, summary: dict[str, Any] | None, error: Exception | None,
         seconds: float) -> dict[str, Any]:
    """A study.csv row; ``seconds`` from the previous slide's end (what of this slide was not prepared ahead)."""
    row: dict[str, Any] = {"slide": str(slide), "output": str(dest), "status": "ok", "seconds": round(seconds, 2)}
    if error is not None:
        row.update(status="failed", error=str(error))
    elif summary is not None:
        row.update(total_cells=round(summary["total_cells"], 3), tissue_area_mm2=round(summary["tissue_area_mm2"], 6),
                   cells_per_mm2=round(summary["cells_per_mm2"] or 0.0, 3), bad_tiles=len(summary["bad_tiles"]),
                   status="ok" if summary["complete"] else "incomplete",
                   warnings=WARNING_SEP.join(summary.get("warnings") or []))
    return row


def _client(workers: int | None, scheduler: str | None):
    """A shared distributed client (and the LocalCluster it owns), or (None, None)."""
    if not workers and not scheduler:
        return None, None
    from distributed import Client

    from .runner import local_cluster

    if scheduler:
        return Client(scheduler), None
    cluster = local_cluster(workers)
    return Client(cluster), cluster


def _write_study(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write study.csv atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in FIELDS})
    atomic_write(path, buf.getvalue())
