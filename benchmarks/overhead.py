"""The work around the network, piece by piece: what each part of a ``wsicount run`` costs besides the model.

    python benchmarks/overhead.py                 # paper-sized slide, 3 repetitions of each piece
    python benchmarks/overhead.py --repeat 5 --no-write

Workload: the cached synthetic 26624x30000 NDPI of ``throughput.py`` (``runs/bench-slides/``)
and the default model. Three kinds of figures, each the median of ``--repeat`` measurements:

* imports -- CPU seconds of importing a module in a fresh interpreter (numpy already imported,
  as it is everywhere it matters): torch and zarr (the run's main process, before the first
  tile), scipy.ndimage (the side worker's tissue mask), matplotlib.figure (a reference: the
  usual library for such pictures) and Pillow's drawing modules;
* pieces -- each function of the run that is not the network, called alone in this process on
  this slide (warm: its imports done): the tissue mask and the normalisation sample
  (``run.plan.prepare``), the two pictures, loading the model, creating the density store,
  the tissue label, aggregating the tile records, the text tables, the count maps, the density
  pyramid, the HTML report. Wall and CPU seconds (``time.process_time``: this process's threads, Zarr's I/O
  and codec threads included). Run alone they meet no contention: a lower bound of their
  cost inside a run;
* in the run -- one ``wsicount run`` of the slide first (its output feeds the pieces): the
  stage timings of its summary.json and the tile threads' CPU seconds summed over tiles:
  reading (decode + normalise), the network, and the rest of each tile (peaks, grid sums,
  density chunks).

The rows name the stage of the run each piece belongs to, and whether it is on the critical
path (the main thread before the first tile or after the last) or runs beside the tiles
(the side worker; the tile threads). Prints a table; appends it to BENCHMARKS.md unless
``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, publish  # noqa: E402
from throughput import CORES, ensure_slide, measure_process  # noqa: E402

PAPER = (26624, 30000)
IMPORTS = [("torch", "main, before the first tile"), ("zarr", "main, before the first tile"),
           ("scipy.ndimage", "side worker (tissue mask)"), ("PIL.ImageDraw, PIL.ImageFont", "side worker (pictures)"),
           ("matplotlib.figure", "reference: not imported by a run")]


def import_cpu(module: str) -> float:
    """CPU seconds of ``import module`` in a fresh interpreter that has imported numpy."""
    code = ("import time, numpy\nc = time.process_time()\n"
            + "".join(f"import {m.strip()}\n" for m in module.split(","))
            + "print(time.process_time() - c)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip())


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Median wall and CPU seconds of ``fn()`` over ``repeat`` calls, and its last result."""
    walls, cpus, res = [], [], None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        res = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), res


def pieces(slide: Path, out: Path, scratch: Path, repeat: int) -> list[tuple[str, str, float, float]]:
    """(piece, where it runs, wall s, CPU s) of the run's non-network functions, called alone on ``slide``."""
    import wsicount.infer  # noqa: F401  (torch: the model's load is timed without its import)
    from wsicount import report
    from wsicount.aggregate import aggregate
    from wsicount.io import open_slide
    from wsicount.models import load_model, read_card
    from wsicount.runner import plan as run_plan
    from wsicount.runner.config import RunConfig
    from wsicount.runner.execute import Placement
    from wsicount.store import RunState
    from wsicount.store.density import build_pyramid, create_density, write_label
    from wsicount.tiling import TileGrid, tissue_tiles

    summary = json.loads((out / "summary.json").read_text())
    cfg = RunConfig()
    sl = open_slide(slide)
    card, _ = read_card(None)
    rows = []
    run_plan.prepare(sl, cfg, card)  # imports (scipy, skimage) before timing
    w, c, prep = timed(lambda: run_plan.prepare(sl, cfg, card), repeat)
    tm, geom = prep.tissue, prep.geom
    rows.append(("tissue mask + normalisation sample (`run.plan.prepare`)", "side worker, before the first tile", w, c))
    rows.append(("  of which the tissue mask (wall)", "", prep.seconds["tissue"], float("nan")))
    w, c, sf = timed(lambda: report.slide_figure(sl, tm), repeat)
    rows.append(("slide picture", "side worker, beside the tiles", w, c))
    w, c, lm = timed(lambda: load_model(None), repeat)
    rows.append(("load the model (torch imported)", "main, before the first tile", w, c))
    import torch

    from wsicount.infer import resolve_precision

    device = torch.device("cpu")
    precision = resolve_precision(device, cfg.precision, card)
    lm.__dict__.pop("_activation_bytes", None)  # the first call of a run estimates the activations

    def plan_tile():
        lm.__dict__.pop("_activation_bytes", None)
        return run_plan.plan_tile(cfg, lm, device, precision, Placement.decide(cfg), None,
                                  Path(tempfile.gettempdir()) / "no-run-here")

    w, c, plan = timed(plan_tile, repeat)
    rows.append(("plan the tile size (activation estimate, available memory)", "main, before the first tile", w, c))
    grid = TileGrid.for_model(geom.height, geom.width, plan.tile_size, card.receptive_radius, card.stride,
                              card.peak_min_distance_px + 1)
    mask_scale = run_plan.mask_scale(tm, geom)
    w, c, tiles = timed(lambda: tissue_tiles(grid, tm.mask, *mask_scale), repeat)
    rows.append(("plan the tissue tiles", "main, before the first tile", w, c))

    def fresh_store() -> None:
        shutil.rmtree(scratch, ignore_errors=True)
        create_density(scratch, (geom.height, geom.width), grid.core, geom.model_mpp)

    w, c, _ = timed(fresh_store, repeat)
    rows.append(("create the density store", "a thread beside the first tiles", w, c))
    w, c, _ = timed(lambda: write_label(scratch, "tissue", tm.mask, tm.mpp), repeat)
    rows.append(("write the tissue label", "a thread beside the first tiles", w, c))

    state = RunState(out)
    records = [state.record(t.key) for t in tiles]
    grid_um = tuple(summary["parameters"]["grid_um"])
    grid_shape = run_plan.grid_shapes(geom, grid_um)
    w, c, agg = timed(lambda: aggregate(records, tm, geom, grid_um, grid_shape), repeat)
    rows.append(("aggregate the tile records", "main, after the last tile", w, c))
    w, c, heat = timed(lambda: report.heatmap_figure(sf, report.for_heatmap(agg)), repeat)
    rows.append(("heat map", "side worker, after the last tile", w, c))
    w, c, tables = timed(lambda: report.write_text_tables(scratch, sl.mpp, geom, agg, cfg.geojson_units), repeat)
    rows.append(("text tables (regions.csv, cells.csv, cells.geojson)", "side worker, after the heat map", w, c))
    w, c, _ = timed(lambda: report.write_count_maps(scratch, agg), repeat)
    rows.append(("count maps (Zarr)", "main, after the last tile, beside the pyramid", w, c))
    w, c, _ = timed(lambda: build_pyramid(out, geom.model_mpp), repeat)
    rows.append(("density pyramid (levels 2..n)", "a thread, after the last tile, beside the count maps", w, c))
    w, c, _ = timed(lambda: _pyramid_one_chunk_per_call(out, geom.model_mpp), repeat)
    rows.append(("  the same, one chunk per Zarr call", "", w, c))
    pngs = (sf.png, heat)
    w, c, _ = timed(lambda: report.write_report(scratch, sl, tm, geom, agg, summary, time.perf_counter(),
                                                cfg.geojson_units, pngs, tables), repeat)
    rows.append(("HTML report + summary.json", "main, after the last tile", w, c))
    del lm
    return rows


def _pyramid_one_chunk_per_call(out: Path, mpp: float) -> int:
    """``build_pyramid`` with ``PYRAMID_BLOCK = 1``: what each block of chunks per call saves."""
    from wsicount.store import density

    block, density.PYRAMID_BLOCK = density.PYRAMID_BLOCK, 1
    try:
        return density.build_pyramid(out, mpp)
    finally:
        density.PYRAMID_BLOCK = block


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--slides-dir", type=Path, default=ROOT / "runs" / "bench-slides")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    spec = ensure_slide(a.slides_dir, PAPER, 0.6, 0)
    slide = spec.path
    with tempfile.TemporaryDirectory(prefix="wsicount-overhead-") as tmp:
        work = Path(tmp)
        out = work / "run"
        print(f"wsicount run {slide.name} ...", flush=True)
        wall, rss, rc, cpu, steal = measure_process([sys.executable, "-m", "wsicount", "run", str(slide), "-o", str(out),
                                                     "-q"], work / "run.log")
        if rc:
            raise SystemExit(f"wsicount run failed (exit {rc}); see {work / 'run.log'}")
        summary = json.loads((out / "summary.json").read_text())
        print("imports ...", flush=True)
        imports = [(m, where, statistics.median(import_cpu(m) for _ in range(a.repeat))) for m, where in IMPORTS]
        print("pieces ...", flush=True)
        rows = pieces(slide, out, work / "scratch", a.repeat)
    publish(f"Overhead around the network ({slide.name})", _table(summary, wall, cpu, steal, imports, rows, a.repeat),
            write=not a.no_write)


def _table(summary: dict, wall: float, cpu: float | None, steal: float | None, imports, rows, repeat: int) -> str:
    """The markdown section."""
    t = summary["timings"]
    st = t["stage_seconds_summed_over_tiles"]
    lines = [f"Medians of {repeat} measurements. In the run: `wsicount run` of the slide, {wall:.1f} s wall, "
             f"{cpu or float('nan'):.1f} CPU-s of its process tree ({steal or 0.0:.1f} stolen), {CORES} cores.", "",
             "| in the run (summary.json) | seconds |", "|---|---|"]
    for k in ("open", "tissue", "normalization", "tissue_wait", "plan", "before_tiles", "tiles", "stitch", "report", "total"):
        if k in t:
            lines.append(f"| {k} | {t[k]:.2f} |")
    for k, what in (("read", "reading, wall summed over tiles"), ("read_cpu", "reading, reader threads' CPU"),
                    ("infer_cpu", "network, tile threads' CPU"), ("post", "rest of each tile, wall summed"),
                    ("post_cpu", "rest of each tile, tile threads' CPU")):
        if k in st:
            lines.append(f"| Σ {k} ({what}) | {st[k]:.2f} |")
    lines += ["", "| import (fresh interpreter, numpy imported) | where | CPU s |", "|---|---|---|"]
    lines += [f"| {m} | {where} | {c:.2f} |" for m, where, c in imports]
    lines += ["", "| piece, called alone | where it runs in `wsicount run` | wall s | CPU s |", "|---|---|---|---|"]
    lines += [f"| {name} | {where} | {w:.3f} | {'' if c != c else f'{c:.3f}'} |" for name, where, w, c in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
