"""Render the ``blastomere`` model's count-calibration set: synthetic embryo stacks with per-frame truth.

    nice -n 10 python benchmarks/blastomere_calset.py --out /tmp/blastomere-cal [--stacks 30] [--frames 100]

Seeds 4000.. : neither training (1000-1039 train, 2000-2005 validation, ``train_blastomere.py``)
nor the held-out benchmark (3000.. default, 3100.. hard, ``timelapse.py``) uses them. Each stack's
settings are drawn exactly as training draws its own (``train_blastomere.stack_params``: spread
around the defaults, never as hard as ``HARD``), so the set resembles the training domain, not
the benchmark's hard setting. Stacks are written as OME-TIFF with their truth beside them
(``NAME.truth.json``: per-frame counts), the layout ``python -m wsicount.training.calibrate MODEL
DIR --stacks`` reads; ``calset.json`` records the seeds, settings and this command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_blastomere import stack_params  # noqa: E402

from wsicount.synth.embryo import synth_embryo  # noqa: E402

FIRST_SEED = 4000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/blastomere-cal"))
    ap.add_argument("--stacks", type=int, default=30)
    ap.add_argument("--frames", type=int, default=100)
    a = ap.parse_args()
    if not 1 <= a.stacks <= 1000:
        ap.error("--stacks must be 1..1000 (seeds 4000..4999 stay clear of training and benchmark seeds)")
    a.out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(FIRST_SEED, FIRST_SEED + a.stacks))
    settings = {}
    for s in seeds:
        t0 = time.perf_counter()
        p = stack_params(np.random.default_rng(s), a.frames)
        synth_embryo(a.out / f"e{s}.ome.tif", format="ome-tiff", params=p, seed=s)
        settings[str(s)] = dataclasses.asdict(p)
        print(f"seed {s}: {time.perf_counter() - t0:.1f} s", flush=True)
    rec = {"description": f"synthetic embryo stacks, seeds {seeds[0]}-{seeds[-1]} ({a.stacks} x {a.frames} frames, "
                          "settings drawn as training draws them, never HARD)",
           "seeds": [seeds[0], seeds[-1]], "frames": a.frames, "settings": settings,
           "command": f"python benchmarks/blastomere_calset.py --out {a.out.as_posix()} --stacks {a.stacks} "
                      f"--frames {a.frames}"}
    (a.out / "calset.json").write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
