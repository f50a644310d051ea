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
``--mask-of OUT`` also counts the detections inside the tissue mask a ``wsicount run`` wrote
to OUT (its tissue label), to compare with that run's count; ``--beside`` then prints one line
with that run's count next to the classical ones (what ``make demo`` shows).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
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


def log_peaks(img: np.ndarray, px_um: float, radius_um: float, smooth_um: float) -> np.ndarray:
    """(n, 2) y, x of nuclei: maxima of the scale-normalised LoG inside the Otsu foreground."""
    sigma = radius_um / np.sqrt(2) / px_um
    response = -ndi.gaussian_laplace(img, sigma) * sigma**2
    smooth = ndi.gaussian_filter(img, smooth_um / px_um)
    fg = smooth > threshold_otsu(smooth)
    peaks = peak_local_max(response, min_distance=max(1, int(round(radius_um / px_um))), threshold_abs=0.0,
                           labels=fg.astype(np.uint8), exclude_border=False)
    return peaks


def hmax_peaks(img: np.ndarray, px_um: float, smooth_um: float, h: float) -> tuple[np.ndarray, float]:
    """((n, 2) centres of the regional maxima of height >= h of the smoothed image inside the Otsu foreground,
    foreground mm²)."""
    smooth = ndi.gaussian_filter(img, smooth_um / px_um)
    fg = smooth > threshold_otsu(smooth)
    lab, n = ndi.label(h_maxima(smooth, h) & fg, structure=np.ones((3, 3)))
    centres = np.array(ndi.center_of_mass(lab > 0, lab, range(1, n + 1))).reshape(-1, 2)
    return centres, float(fg.sum() * px_um**2 / 1e6)


def inside_mask(points: np.ndarray, px_um: float, out: str) -> int:
    """How many points (level pixels at ``px_um``) fall in the tissue label a run wrote to ``out``."""
    import zarr

    from wsicount.store.layout import TISSUE_LABEL

    group = zarr.open_group(f"{out}/{TISSUE_LABEL}", mode="r")
    mask = np.asarray(group["0"]) > 0
    mask_um = group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][-1]
    iy = np.clip((points[:, 0] + 0.5) * px_um / mask_um, 0, mask.shape[0] - 1).astype(int)
    ix = np.clip((points[:, 1] + 0.5) * px_um / mask_um, 0, mask.shape[1] - 1).astype(int)
    return int(mask[iy, ix].sum())


def main() -> None:
    """Count and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide")
    ap.add_argument("--channel", default="dapi", help="channel name or index (see wsicount info)")
    ap.add_argument("--mpp", type=float, default=0.45, help="µm/px to count at (nearest level, no resampling)")
    ap.add_argument("--radius-um", type=float, default=3.5, help="nucleus radius for the LoG scale")
    ap.add_argument("--smooth-um", type=float, default=1.0, help="Gaussian smoothing sigma before h-maxima")
    ap.add_argument("--h", type=float, default=10.0, help="h-maxima height in grey levels (0-255)")
    ap.add_argument("--mask-of", default=None, help="a wsicount run's output folder: also count inside its tissue mask")
    ap.add_argument("--beside", action="store_true", help="with --mask-of: one line, the run's count beside these")
    args = ap.parse_args()
    t = time.perf_counter()
    img, px = read_channel(args.slide, args.channel, args.mpp)
    log_pk = log_peaks(img, px, args.radius_um, args.smooth_um)
    hmax_pk, area = hmax_peaks(img, px, args.smooth_um, args.h)
    res = {"slide": args.slide, "channel": args.channel, "level_mpp": px, "shape": list(img.shape),
           "log_count": len(log_pk), "hmaxima_count": len(hmax_pk), "foreground_mm2": round(area, 4),
           "params": {"radius_um": args.radius_um, "smooth_um": args.smooth_um, "h": args.h}}
    if args.mask_of:
        res["in_mask_of"] = {"run": args.mask_of, "log_count": inside_mask(log_pk, px, args.mask_of),
                             "hmaxima_count": inside_mask(hmax_pk, px, args.mask_of)}
    res["seconds"] = round(time.perf_counter() - t, 1)
    if args.beside and args.mask_of:
        print(beside_line(args.mask_of, res))
    else:
        print(json.dumps(res, indent=1))


def beside_line(run: str, res: dict) -> str:
    """One line: a wsicount run's count (summary.json) beside the classical counts inside its tissue mask."""
    with open(f"{run}/summary.json") as f:
        summ = json.load(f)
    inside = res["in_mask_of"]
    return (f"wsicount {summ['model']['name']}: "
            f"{summ['total_cells']:.0f} nuclei | classical (scikit-image, same tissue mask): "
            f"LoG {inside['log_count']}, h-maxima {inside['hmaxima_count']} "
            f"(whole slide: LoG {res['log_count']}, h-maxima {res['hmaxima_count']})")


if __name__ == "__main__":
    main()
