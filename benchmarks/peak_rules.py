"""F1 of a model's density peaks against the annotated points under other peak rules and match radii.

    python benchmarks/peak_rules.py nuclei-he-40x --data nuclei_he --split val

Counts are the density's sum; centroids (cells.csv, GeoJSON) are its peaks (:func:`wsicount.detect.density_peaks`:
peaks at least ``fraction`` of a unit Gaussian's height, optionally after smoothing). This prints precision,
recall and F1 over a split for each rule, so a low F1 can be told apart as the rule's or the density's.
Use a validation split: it is a diagnostic, not a tuning of the test score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import DATA, command, git_rev, machine  # noqa: E402


def main() -> None:
    """Evaluate once, then score the stored densities' peaks under each rule."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True, help="dataset folder or a name under ../shared/data")
    ap.add_argument("--split", default="val")
    a = ap.parse_args()
    import torch

    from wsicount.detect import density_peaks, match_points
    from wsicount.models import load_model
    from wsicount.training.evaluate import evaluate

    torch.set_num_threads(1)
    lm = load_model(a.model)
    data = Path(a.data) if Path(a.data).exists() else DATA / a.data
    kept = []
    evaluate(lm, data, split=a.split, precision="fp32", on_image=lambda s, d: kept.append((s, d)))
    sig = lm.card.sigma_px
    print(f"# {command()}  (commit {git_rev()}; {machine()})")
    print(f"# {len(kept)} images, {sum(len(s.points) for s, _ in kept)} points; sigma {sig} px at the card's scale")
    print("| peak height (x unit Gaussian) | smoothing sd px | match radius px | peaks | precision | recall | F1 |")
    print("|---|---|---|---|---|---|---|")
    for frac in (0.5, 0.25, 0.1):
        for smooth in (0.0, sig / 2, sig):
            peaks = [density_peaks(d, sig, min_distance=lm.card.peak_min_distance_px, peak_fraction=frac,
                                   smooth_sigma=smooth or None) for _, d in kept]
            for radius in (1.5 * sig, 3 * sig):
                tp = fp = fn = 0
                for (s, _), p in zip(kept, peaks):
                    m = match_points(p, s.points[:, ::-1], radius)  # points are (x, y); peaks (y, x)
                    tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
                print(f"| {frac:g} | {smooth:g} | {radius:g} | {sum(map(len, peaks))} | {tp / max(tp + fp, 1):.3f} "
                      f"| {tp / max(tp + fn, 1):.3f} | {2 * tp / max(2 * tp + fp + fn, 1):.3f} |")


if __name__ == "__main__":
    main()
