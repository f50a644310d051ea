"""A classical nuclei count on one channel of a slide (scikit-image), to put beside a model's count.

Two standard detectors on the channel (e.g. DAPI), both on the level nearest ``--mpp`` µm/px:

* **LoG**: the scale-normalised Laplacian of Gaussian at the nucleus scale
  (sigma = radius / sqrt(2)); a nucleus is a local maximum of the response at least a
  radius from a stronger one, whose smoothed intensity is above the Otsu threshold.
* **h-maxima**: Gaussian smoothing (sigma ``--smooth-um``), then the regional maxima of
  height >= ``--h`` grey levels inside the Otsu foreground; one nucleus per maximum.

    python benchmarks/classical_count.py "../shared/data/slides/test3-DAPI-2-(387).ndpi" --channel dapi

Prints both counts, the tissue (foreground) area and the parameters. Saturated touching
nuclei share one flat top, which h-maxima counts once; the LoG separates them by shape.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.measure import label
from skimage.morphology import h_maxima

from wsicount.channels import resolve_channel
from wsicount.io import open_slide, slide_info


def read_channel(path: str, channel: str, mpp: float) -> tuple[np.ndarray, float]:
    """(float32 image of the channel at the level nearest ``mpp``, that level's µm/px)."""
    s = open_slide(path)
    idx = resolve_channel(channel, slide_info(s)["channel_names"], default=[0])[0]
    level = s.best_level(mpp)
    h, w, _ = s.shapes[level]
    return s.read_region(level, 0, 0, h, w)[..., idx].astype(np.float32), s.level_mpp(level)


def log_count(img: np.ndarray, px_um: float, radius_um: float, smooth_um: float) -> int:
    """Nuclei as maxima of the scale-normalised LoG inside the Otsu foreground."""
    sigma = radius_um / np.sqrt(2) / px_um
    response = -ndi.gaussian_laplace(img, sigma) * sigma**2
    smooth = ndi.gaussian_filter(img, smooth_um / px_um)
    fg = smooth > threshold_otsu(smooth)
    peaks = peak_local_max(response, min_distance=max(1, int(round(radius_um / px_um))), threshold_abs=0.0,
                           labels=fg.astype(np.uint8), exclude_border=False)
    return int(len(peaks))


def hmax_count(img: np.ndarray, px_um: float, smooth_um: float, h: float) -> tuple[int, float]:
    """(regional maxima of height >= h of the smoothed image inside the Otsu foreground, foreground mm²)."""
    smooth = ndi.gaussian_filter(img, smooth_um / px_um)
    fg = smooth > threshold_otsu(smooth)
    maxima = h_maxima(smooth, h) & fg
    return int(label(maxima, connectivity=2).max()), float(fg.sum() * px_um**2 / 1e6)


def main() -> None:
    """Count and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide")
    ap.add_argument("--channel", default="dapi", help="channel name or index (see wsicount info)")
    ap.add_argument("--mpp", type=float, default=0.45, help="µm/px to count at (nearest level, no resampling)")
    ap.add_argument("--radius-um", type=float, default=3.5, help="nucleus radius for the LoG scale")
    ap.add_argument("--smooth-um", type=float, default=1.0, help="Gaussian smoothing sigma before h-maxima")
    ap.add_argument("--h", type=float, default=10.0, help="h-maxima height in grey levels (0-255)")
    args = ap.parse_args()
    t = time.perf_counter()
    img, px = read_channel(args.slide, args.channel, args.mpp)
    n_log = log_count(img, px, args.radius_um, args.smooth_um)
    n_hmax, area = hmax_count(img, px, args.smooth_um, args.h)
    print(json.dumps({"slide": args.slide, "channel": args.channel, "level_mpp": px, "shape": list(img.shape),
                      "log_count": n_log, "hmaxima_count": n_hmax, "foreground_mm2": round(area, 4),
                      "params": {"radius_um": args.radius_um, "smooth_um": args.smooth_um, "h": args.h},
                      "seconds": round(time.perf_counter() - t, 1)}, indent=1))


if __name__ == "__main__":
    main()
