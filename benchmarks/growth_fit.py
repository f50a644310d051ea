"""Coverage of the doubling-time interval on simulated growth curves.

    python benchmarks/growth_fit.py [--series 1000] [--seed 123]

Each scenario draws ``--series`` 25-frame series (one frame per hour) around a known doubling time and
fits them with :func:`wsicount.timelapse.growth.doubling_time`; prints how many were fitted, the share
whose 95 % interval holds the true doubling time, and the median fitted doubling time.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsicount.timelapse.growth import doubling_time  # noqa: E402

HOURS = np.arange(25.0)


def scenarios(rng: np.random.Generator) -> dict[str, tuple[float, Callable[[], np.ndarray]]]:
    """name -> (true doubling time h, draw counts for HOURS)."""
    return {
        "50·2^(t/8)·lognormal(sd 0.05) (the fit's assumption)":
            (8.0, lambda: 50 * 2 ** (HOURS / 8) * rng.lognormal(0.0, 0.05, HOURS.size)),
        "Poisson, mean 20·2^(t/8)": (8.0, lambda: rng.poisson(20 * 2 ** (HOURS / 8)).astype(float)),
        "Poisson, mean 3·2^(t/6) (few cells early)": (6.0, lambda: rng.poisson(3 * 2 ** (HOURS / 6)).astype(float)),
    }


def main() -> None:
    """Print one table row per scenario."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=123)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    print("| counts | fitted | 95 % CI covers the true Td | median Td (h) |\n|---|---|---|---|")
    for name, (td, draw) in scenarios(rng).items():
        fits = [doubling_time(HOURS, draw()) for _ in range(a.series)]
        ok = [f for f in fits if f["doubling_time_h"] is not None]
        cover = np.mean([f["ci_h"][0] <= td <= f["ci_h"][1] for f in ok]) if ok else float("nan")
        med = float(np.median([f["doubling_time_h"] for f in ok])) if ok else float("nan")
        print(f"| {name} | {len(ok)}/{a.series} | {100 * cover:.1f} % | {med:.2f} |")


if __name__ == "__main__":
    main()
