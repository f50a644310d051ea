"""A/B of two code trees: alternated ``wsicount run`` pairs on one slide, with each run's CPU budget.

    git worktree add /tmp/before <commit>
    python benchmarks/ab.py runs/bench-slides/nz-26624x30000-tf0.6-s0.ndpi /tmp/before . --pairs 3

Each tree runs as ``PYTHONPATH=TREE wsicount run SLIDE`` (the console script of this
environment, started outside the repository, so that ``TREE``'s package is the one imported);
the order alternates pair by pair, so that a drift of the VM's speed hits both trees alike.
Per run: wall time, CPU seconds of the process tree (``RUSAGE_CHILDREN``), CPU seconds stolen
by the hypervisor (/proc/stat), the network's CPU (summary.json ``infer_cpu``), the rest
("other") and idle, and the network's share of the CPU the run got (network / (cores x wall -
steal)); then the medians per tree. Prints only: a comparison of commits, not a record of one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import CORES, _rusage, steal_seconds  # noqa: E402


def one_run(tree: Path, slide: Path, work: Path) -> dict:
    """``wsicount run`` with ``tree``'s package; its wall, CPU budget and count."""
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).with_name("wsicount")
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    r0, s0, t0 = _rusage(children=True), steal_seconds(), time.perf_counter()
    subprocess.run([str(exe), "run", str(slide.resolve()), "-o", str(out), "-q"], env=env, cwd=work, check=True,
                   stdout=subprocess.DEVNULL)
    wall, cpu, steal = time.perf_counter() - t0, _rusage(children=True) - r0, steal_seconds() - s0
    s = json.loads((out / "summary.json").read_text())
    net = s["timings"]["stage_seconds_summed_over_tiles"]["infer_cpu"]
    return {"wall": wall, "cpu": cpu, "steal": steal, "net": net, "other": cpu - net,
            "idle": CORES * wall - steal - cpu, "share": net / (CORES * wall - steal), "cells": s["total_cells"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slide", type=Path)
    ap.add_argument("tree_a", type=Path, help="a checkout of the repository (e.g. a git worktree)")
    ap.add_argument("tree_b", type=Path)
    ap.add_argument("--pairs", type=int, default=3)
    a = ap.parse_args()
    trees = [a.tree_a, a.tree_b]
    res: dict[Path, list[dict]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory(prefix="wsicount-ab-") as tmp:
        for i in range(a.pairs):
            for tree in trees if i % 2 == 0 else trees[::-1]:
                r = one_run(tree, a.slide, Path(tmp))
                res[tree].append(r)
                print(f"{str(tree):24s} wall {r['wall']:6.2f} cpu {r['cpu']:6.2f} steal {r['steal']:5.2f} net "
                      f"{r['net']:6.2f} other {r['other']:5.2f} idle {r['idle']:5.2f} share {r['share']:.3f} "
                      f"cells {r['cells']:.2f}", flush=True)
    for tree, rs in res.items():
        print(f"{tree}: median share {statistics.median(r['share'] for r in rs):.3f}, median other "
              f"{statistics.median(r['other'] for r in rs):.2f} CPU-s, median idle {statistics.median(r['idle'] for r in rs):.2f}")


if __name__ == "__main__":
    main()
