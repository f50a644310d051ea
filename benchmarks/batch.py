"""``wsicount batch`` over N slides next to N separate ``wsicount run`` processes (a shell loop).

    python benchmarks/batch.py                     # the paper-sized slide, 3 times each way
    python benchmarks/batch.py --n 4 --repeat 2    # alternate the two ways twice

Workload: the cached synthetic 26624x30000 NDPI of ``throughput.py`` (``runs/bench-slides/``),
counted N times with the default model. Both ways run in subprocesses, one after the other
(their order alternates with ``--repeat``), and for each this records: wall time in total and
per slide, CPU seconds of the process tree, CPU seconds the hypervisor stole meanwhile, the
network's CPU (the sum of ``infer_cpu`` over every slide's summary.json) and its share of the
CPU the run got (network CPU / (cores x wall - steal)), and, per slide, ``tissue_wait`` and
``before_tiles`` from summary.json (``batch`` prepares slide n+1 while slide n's tiles run, so
its later slides should wait on nothing). Counts must agree between the two ways.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, publish  # noqa: E402
from throughput import CORES, ensure_slide, measure_process  # noqa: E402


def _summaries(folders: list[Path]) -> list[dict]:
    """summary.json of each output folder."""
    return [json.loads((f / "summary.json").read_text()) for f in folders]


def run_loop(slide: Path, n: int, work: Path) -> dict:
    """N ``wsicount run`` processes one after another."""
    outs = [work / f"loop-{i}" for i in range(n)]
    wall = cpu = steal = 0.0
    for out in outs:
        w, _, rc, c, s = measure_process([sys.executable, "-m", "wsicount", "run", str(slide), "-o", str(out), "-q"],
                                         work / "loop.log")
        if rc:
            raise SystemExit(f"wsicount run failed (exit {rc}); see {work / 'loop.log'}")
        wall, cpu, steal = wall + w, cpu + (c or 0.0), steal + (s or 0.0)
    return _result("run ×N", wall, cpu, steal, _summaries(outs))


def run_batch(slide: Path, n: int, work: Path) -> dict:
    """One ``wsicount batch`` process over N copies of the slide."""
    study = work / "study"
    w, _, rc, c, s = measure_process([sys.executable, "-m", "wsicount", "batch", *[str(slide)] * n, "-o", str(study), "-q"],
                                     work / "batch.log")
    if rc:
        raise SystemExit(f"wsicount batch failed (exit {rc}); see {work / 'batch.log'}")
    outs = sorted((p for p in study.iterdir() if (p / "summary.json").exists()), key=lambda p: (len(p.name), p.name))
    return _result("batch", w, c or 0.0, s or 0.0, _summaries(outs))


def _result(name: str, wall: float, cpu: float, steal: float, summaries: list[dict]) -> dict:
    """The figures of one way of running the N slides."""
    net = sum(s["timings"]["stage_seconds_summed_over_tiles"]["infer_cpu"] for s in summaries)
    return {"name": name, "wall": wall, "cpu": cpu, "steal": steal, "net": net, "share": net / (CORES * wall - steal),
            "cells": [round(s["total_cells"], 3) for s in summaries],
            "tissue_wait": [s["timings"]["tissue_wait"] for s in summaries],
            "before_tiles": [s["timings"]["before_tiles"] for s in summaries],
            "side": sorted({s["processing"]["side_worker"] for s in summaries})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="26624x30000", help="slide H x W (level 0 px)")
    ap.add_argument("--n", type=int, default=3, help="slides per way")
    ap.add_argument("--repeat", type=int, default=1, help="times each way runs (alternating)")
    ap.add_argument("--slides-dir", default=str(ROOT / "runs" / "bench-slides"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-batch"))
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to BENCHMARKS.md")
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.lower().split("x"))
    spec = ensure_slide(Path(a.slides_dir), (h, w), 0.6, 0)
    work = Path(a.work)
    results = []
    for r in range(a.repeat):
        for way in ((run_loop, run_batch) if r % 2 == 0 else (run_batch, run_loop)):
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            print(f"{way.__name__} #{r + 1} ...", flush=True)
            results.append(way(spec.path, a.n, work))
    shutil.rmtree(work, ignore_errors=True)
    cells = {tuple(x["cells"]) for x in results}
    if len(cells) != 1:
        raise SystemExit(f"counts differ between runs: {cells}")
    rows = ["| way | wall s | s per slide | CPU-s | steal CPU-s | network CPU-s | network share of the CPU got | "
            "tissue_wait per slide, s | before_tiles per slide, s | side worker |", "|---" * 10 + "|"]
    for x in results:
        rows.append(f"| {x['name']} | {x['wall']:.1f} | {x['wall'] / a.n:.1f} | {x['cpu']:.1f} | {x['steal']:.1f} | "
                    f"{x['net']:.1f} | {x['share']:.3f} | {' / '.join(f'{v:.2f}' for v in x['tissue_wait'])} | "
                    f"{' / '.join(f'{v:.2f}' for v in x['before_tiles'])} | {', '.join(x['side'])} |")
    for name in ("run ×N", "batch"):
        mine = [x for x in results if x["name"] == name]
        rows.append(f"\n{name}: median wall {statistics.median(x['wall'] for x in mine):.1f} s, median network share "
                    f"{statistics.median(x['share'] for x in mine):.3f}")
    body = (f"Slide {spec.path.name} ({h * w / 1e9:.2f} Gpx) × {a.n}, default model; cells per slide "
            f"{results[0]['cells'][0]} (equal in every run). `run ×N`: N `wsicount run` processes in a row; `batch`: one "
            "`wsicount batch` process.\n\n" + "\n".join(rows))
    publish(f"Batch throughput ({spec.path.name} × {a.n})", body, write=not a.no_write)


if __name__ == "__main__":
    main()
