"""Measure a bundled model's training domain (cells/Mpx, cells/mm², intensity range) from its training images.

Prints the ``domain`` statistics the run's guard reads (see :mod:`wsicount.guard`) for the
images of the card's training dataset (``training.data``) in split ``train``:

    python benchmarks/card_domain.py melanocyte-trp1 vgg-cells adipocyte-he

``cells_per_mpx`` is [min, max] over the images of count / pixels x 1e6; ``cells_per_mm2`` the
same at the dataset's µm/px (only where the manifest states one); ``intensity`` the 1st and
99th percentile of the raw channel(s) the model reads, pooled over the images; ``image_px``
the images' side. The remaining keys (modality, stain, channel, cell size) are stated by hand
from each dataset's README.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from wsicount.models import read_card

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def measure(model: str, data: Path = DATA) -> dict:
    """The measured part of ``model``'s domain from its training split."""
    card, _ = read_card(model)
    root = data / card.training["data"]
    rows = [r for r in csv.DictReader(open(root / "manifest.csv")) if r["split"] == "train"]
    dens, px, sides, mpps = [], [], set(), set()
    for r in rows:
        a = np.asarray(Image.open(root / "images" / f"{r['name']}.png"))
        if a.ndim == 3:
            a = a[..., :3][..., card.channels]
        dens.append(float(r["count"]) / (a.shape[0] * a.shape[1]) * 1e6)
        px.append(a.ravel())
        sides.add(max(a.shape[:2]))
        mpps.add(r.get("um_per_px") or None)
    lo_i, hi_i = np.percentile(np.concatenate(px), [1, 99])
    out = {"cells_per_mpx": [round(min(dens), 1), round(max(dens), 1)],
           "intensity": [float(lo_i), float(hi_i)], "image_px": max(sides), "n_images": len(rows)}
    if len(mpps) == 1 and None not in mpps:
        mpp = float(mpps.pop())
        out["cells_per_mm2"] = [round(min(dens) / mpp**2, 1), round(max(dens) / mpp**2, 1)]
    return out


def main() -> None:
    """Print each model's measured domain as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    args = ap.parse_args()
    for m in args.models:
        print(m, json.dumps(measure(m)))


if __name__ == "__main__":
    main()
