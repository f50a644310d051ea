"""How fast wsicount can feed a network: the tile stage with the network replaced by a replay.

    python benchmarks/feed.py                      # paper-sized slide, 1, 2 and 4 tile threads, 2 runs each
    python benchmarks/feed.py --threads 2 --repeat 1 --no-write
    python benchmarks/feed.py --zarr-writes --threads 2 --repeat 4   # tile chunks through zarr vs as files

On a GPU a run should be bound by decoding, not by Python. A GPU computes the U-Net far
faster than a CPU, so what is left of a run's tile stage is
everything but the network: reading and decoding the windows, normalising them, and per tile
the mask, the peaks, the grid sums, the Zarr chunks and the completion record. This script
measures that part alone, on this machine, through the run's own code: ``wsicount.count``
runs in this process with ``infer.predict_batch`` replaced by a replay of the density a real
run of the same slide wrote (so the peaks, sums and chunks are those of real output, and the
count must equal the real run's: checked).

Figures, per tile-thread count (``--threads``; the machine has ``CORES`` cores):

* the tile stage's wall time, tiles/s and network-input Mpx/s: the most a network could be
  fed per second on this CPU;
* the CPU seconds of the process during the tile stage and how they split: decoding and
  normalising (Σ ``read_cpu``), the rest of each tile (Σ ``post_cpu``), and everything else
  (Zarr's I/O threads, Python's thread switches);
* decoding alone: one thread reading every window of the run back to back (no cache), Mpx/s.

``--zarr-writes`` alternates runs whose tiles write their chunks through zarr's own pipeline
(``store.density.ChunkFiles`` disabled) with runs that write them as files, and
adds a row per way: the comparison behind that change, rerunnable.

Bound by decoding means: the feed rate with N threads is close to N × the decode-alone rate
(or to the cores' worth of it), and ``read_cpu`` is most of the tile stage's CPU. The
reference run is made once and kept in ``runs/bench-feed/`` (a normal ``wsicount run``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import ROOT, publish  # noqa: E402
from throughput import CORES, ensure_slide, steal_seconds  # noqa: E402

PAPER = (26624, 30000)


def reference_run(slide: Path, out: Path) -> dict:
    """A real run of ``slide`` into ``out`` (made once; reused while its summary is there)."""
    if not (out / "summary.json").exists():
        print(f"reference run of {slide.name} ...", flush=True)
        subprocess.run([sys.executable, "-m", "wsicount", "run", str(slide), "-o", str(out), "-q", "--overwrite"],
                       check=True, cwd=ROOT)
    return json.loads((out / "summary.json").read_text())


class Replay:
    """Stands in for ``infer.predict_batch``: the density a real run wrote, cropped to each window (zeros past the grid)."""

    def __init__(self, density: np.ndarray) -> None:
        self.density = density
        self.local = threading.local()  # the windows of the batch this thread is inferring

    def predict_batch(self, model, batch: np.ndarray, device, precision: str = "fp32") -> np.ndarray:
        """(N, C, H, W) -> (N, H, W): the stored density over each window of the current batch."""
        out = np.zeros((batch.shape[0], *batch.shape[-2:]), dtype=np.float32)
        for i, (y0, y1, x0, x1) in enumerate(self.local.windows):
            crop = self.density[y0:min(y1, self.density.shape[0]), x0:min(x1, self.density.shape[1])]
            out[i, : crop.shape[0], : crop.shape[1]] = crop
        return out


def feed_run(slide: Path, out: Path, threads: int, replay: Replay, zarr_writes: bool = False) -> dict:
    """One ``count`` with the replay (tile chunks through zarr if ``zarr_writes``); the tile stage's seconds, CPU and summary."""
    from wsicount import infer
    from wsicount.runner import count, slide as run_slide, task
    from wsicount.store import density

    orig_infer, orig_execute, orig_predict = task.infer_batch, run_slide.run_tasks, infer.predict_batch
    cpu: dict[str, float] = {}

    def infer_batch(job, model, device, mask, state, items):
        replay.local.windows = [t.window for t, x, *_ in items if not isinstance(x, Exception)]
        return orig_infer(job, model, device, mask, state, items)

    def execute(*args, **kwargs):
        c, st = time.process_time(), steal_seconds()
        try:
            return orig_execute(*args, **kwargs)
        finally:
            cpu["tiles"] = time.process_time() - c
            cpu["steal"] = steal_seconds() - st if st is not None else float("nan")

    orig_files = density.ChunkFiles.of
    task.infer_batch, run_slide.run_tasks, infer.predict_batch = infer_batch, execute, replay.predict_batch
    if zarr_writes:
        density.ChunkFiles.of = classmethod(lambda cls, arr: None)
    try:
        shutil.rmtree(out, ignore_errors=True)
        # a fresh process's caches, as a run has: the decoded-segment cache (io.SegmentCache) of the
        # previous run would serve this one's reads, and the density store is reopened with or
        # without chunk files
        task.clear_caches()
        s = count(slide, out, threads=threads, progress=False)
    finally:
        task.infer_batch, run_slide.run_tasks, infer.predict_batch = orig_infer, orig_execute, orig_predict
        density.ChunkFiles.of = orig_files
    stage = s["timings"]["stage_seconds_summed_over_tiles"]
    return {"threads": threads, "zarr_writes": zarr_writes, "tiles_s": s["timings"]["tiles"], "cpu": cpu["tiles"],
            "steal": cpu["steal"],
            "read_cpu": stage["read_cpu"],
            "post_cpu": stage["post_cpu"], "infer_cpu": stage["infer_cpu"], "cells": s["total_cells"],
            "n_tiles": s["processing"]["n_tiles_tissue"], "net_px": s["processing"]["network_input_px"]}


def decode_alone(slide: Path, ref: Path) -> dict:
    """One thread reading and normalising every window of the reference run back to back (no decode cache)."""
    from wsicount.io import open_slide
    from wsicount.models import read_card
    from wsicount.preprocess import apply_normalization, select_channels
    from wsicount.tiling import TileGrid, plan_geometry, read_model_window, tissue_tiles

    s = json.loads((ref / "summary.json").read_text())
    card, _ = read_card(None)
    sl = open_slide(slide)
    geom = plan_geometry(sl, card.mpp)
    grid = TileGrid.for_model(geom.height, geom.width, s["processing"]["tile_size"], card.receptive_radius,
                              card.stride, card.peak_min_distance_px + 1)
    import zarr

    mask = zarr.open_array(str(ref / "density" / "labels" / "tissue" / "0"), mode="r")[...].astype(bool)
    tiles = tissue_tiles(grid, mask, geom.height / mask.shape[0], geom.width / mask.shape[1])
    norm = (s["processing"]["normalization"]["offset"], s["processing"]["normalization"]["span"])
    c, t, px = time.thread_time(), time.perf_counter(), 0
    for tile in tiles:
        img = read_model_window(sl, geom, tile.window, native=True)
        x = apply_normalization(select_channels(img, card.channels), *norm)
        px += x.shape[-1] * x.shape[-2]
    return {"cpu": time.thread_time() - c, "wall": time.perf_counter() - t, "px": px, "n": len(tiles)}


def table(rows: list[dict], dec: dict, ref_cells: float) -> str:
    """Markdown table: medians per thread count, and the decode-alone line."""
    lines = ["| tile threads | runs | tile stage s | tiles/s | net-in Mpx/s | process CPU-s in the tile stage | "
             "stolen CPU-s | cores busy (CPU ÷ wall) | Σ read_cpu (decode + normalise) | Σ post_cpu (rest of each tile) | "
             "other CPU-s | read share of the CPU | ÷ decode-alone rate | count = real run's |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    dec_rate = dec["px"] / dec["cpu"] / 1e6
    for n, zw in sorted({(r["threads"], r["zarr_writes"]) for r in rows}):
        rs = [r for r in rows if (r["threads"], r["zarr_writes"]) == (n, zw)]
        med = {k: statistics.median(r[k] for r in rs) for k in ("tiles_s", "cpu", "steal", "read_cpu", "post_cpu")}
        mpx = rs[0]["net_px"] / med["tiles_s"] / 1e6
        other = med["cpu"] - med["read_cpu"] - med["post_cpu"]
        same = all(abs(r["cells"] - ref_cells) <= 1e-6 * ref_cells for r in rs)
        lines.append(f"| {n}{' (chunks through zarr)' if zw else ''} | {len(rs)} | {med['tiles_s']:.2f} | {rs[0]['n_tiles'] / med['tiles_s']:.1f} | {mpx:.1f} | "
                     f"{med['cpu']:.2f} | {med['steal']:.2f} | {med['cpu'] / med['tiles_s']:.2f} | "
                     f"{med['read_cpu']:.2f} | {med['post_cpu']:.2f} | {other:.2f} | "
                     f"{med['read_cpu'] / med['cpu']:.2f} | {mpx / dec_rate:.2f} | {'yes' if same else '**no**'} |")
    lines.append(f"| decoding alone (1 thread) | 1 | {dec['wall']:.2f} | {dec['n'] / dec['wall']:.1f} | "
                 f"{dec['px'] / dec['wall'] / 1e6:.1f} | {dec['cpu']:.2f} | — | {dec['cpu'] / dec['wall']:.2f} | "
                 f"{dec['cpu']:.2f} | — | — | 1.00 | 1.00 | — |")
    return "\n".join(lines)


def main() -> None:
    """Make the reference run, replay it at each thread count, print and append the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--slides-dir", type=Path, default=ROOT / "runs" / "bench-slides")
    ap.add_argument("--zarr-writes", action="store_true",
                    help="alternate with runs that write the tile chunks through zarr's own pipeline")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from wsicount.allocator import tune_allocator

    tune_allocator()  # as the CLI does
    spec = ensure_slide(args.slides_dir, PAPER, 0.6, 0)
    work = ROOT / "runs" / "bench-feed"
    ref = reference_run(spec.path, work / "reference")
    import zarr

    replay = Replay(zarr.open_array(str(work / "reference" / "density" / "0"), mode="r")[...])
    rows = []
    feed_run(spec.path, work / "feed", args.threads[0], replay)  # imports and caches before timing
    for _ in range(args.repeat):
        for n in args.threads:
            for zw in ((True, False) if args.zarr_writes else (False,)):
                r = feed_run(spec.path, work / "feed", n, replay, zw)
                print(f"threads {n}{' zarr writes' if zw else ''}: tile stage {r['tiles_s']:.2f} s, CPU {r['cpu']:.2f} s "
                      f"(read {r['read_cpu']:.2f}, post {r['post_cpu']:.2f}), {r['cells']:.1f} cells", flush=True)
                rows.append(r)
    dec = decode_alone(spec.path, work / "reference")
    print(f"decoding alone: {dec['px'] / dec['cpu'] / 1e6:.1f} Mpx/s per core", flush=True)
    body = (f"{table(rows, dec, ref['total_cells'])}\n\nSlide {spec.path.name} ({ref['processing']['n_tiles_tissue']} "
            f"tissue tiles, {ref['processing']['network_input_px'] / 1e6:.1f} Mpx of network input), {CORES} cores. "
            "The network is replaced by a replay of the density a real run wrote (`benchmarks/feed.py`), so the tile "
            "stage is everything a GPU would leave to the CPU: the rate here is the most this machine could feed "
            "any network. Other CPU-s = the process's CPU in the tile stage − Σ read_cpu − Σ post_cpu: Zarr's I/O "
            "threads, the replay's copies, thread switches. Stolen: machine-wide CPU seconds the hypervisor took "
            "during the tile stage (medians). Cores busy: the process's CPU ÷ the tile stage's wall (2 threads that a "
            "shared lock serialises stay near 1). ÷ decode-alone rate: the feed rate over one thread's "
            "decoding rate (N threads bound by decoding would approach min(N, cores)).")
    publish("Feeding a network: the tile stage without it", body, not args.no_write)


if __name__ == "__main__":
    main()
