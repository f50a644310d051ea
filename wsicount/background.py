"""The slide background of a detection signal: the level of glass, dark mount or black padding.

:func:`signal_image` turns pixels into a signal in which the slide background is the darkest
level (fluorescence: the brightest channel; brightfield: darkness plus saturation);
:func:`background_threshold` finds that level and the threshold above which tissue begins,
however dim the tissue. :mod:`wsicount.tissue` cuts its masks there, and the normalisation
field (:mod:`wsicount.normalize`) leaves pixels at the background level out of its statistics.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Background", "background_threshold", "signal_image", "MIN_MARGIN"]

#: a low quantile (%) of the background's signal, and how many sd it lies below the background's mode
BACKGROUND_LOW, Z_LOW = 0.5, 2.5758
#: most a background threshold may reach, as a share of the way from the darkest level to the 95th percentile
MAX_CONTRAST = 0.13
#: bins of the histogram whose highest bin is the background's mode
HIST_BINS = 64
#: background threshold: this many background sd above the background's mode ...
BACKGROUND_K = 4.0
#: ... and at least this many grey levels above it (black padding has no noise)
MIN_MARGIN = 1.0


def signal_image(img: np.ndarray, mode: str) -> np.ndarray:
    """(H, W[, C]) uint8 image -> float32 signal in which the slide background is the darkest level.

    Fluorescence: the brightest channel (a dye scanned into one channel of an RGB file, as
    DAPI into blue, is not diluted by the two dark ones; mount and padding are dark in all).
    Brightfield: half the darkness (255 - channel mean) plus the saturation, since stain
    separates from white glass better by its colour than by its brightness alone.
    """
    if img.ndim == 2:
        g = img.astype(np.float32)
        if mode == "brightfield":
            return 255.0 - g
        if mode == "fluorescence":
            return g
    elif mode == "fluorescence":
        return img.max(axis=-1).astype(np.float32)
    if mode != "brightfield":
        raise ValueError(f"unknown tissue mode {mode!r} (fluorescence|brightfield|none)")
    # the channel mean, plane by plane: ~3x faster than mean(axis=-1) over the short
    # channel axis, and exactly equal (sums of uint8 are exact in float32)
    g = img[..., 0].astype(np.float32)
    for c in range(1, img.shape[-1]):
        g += img[..., c]
    g /= img.shape[-1]
    if img.shape[-1] >= 3:
        rgb = img[..., :3]
        return 0.5 * (255.0 - g) + (rgb.max(-1).astype(np.float32) - rgb.min(-1))
    return 255.0 - g


class Background(NamedTuple):
    """The slide background of a signal: its level, the threshold above which tissue begins, and whether a background peak was found."""

    level: float
    threshold: float
    found: bool


def background_threshold(s: np.ndarray, k: float = BACKGROUND_K, min_margin: float = MIN_MARGIN) -> Background:
    """The background of the smoothed signal ``s``: above its threshold a pixel is not slide background.

    The background (glass, mount, padding) is the darkest common level of the signal: the
    mode of the darker half of its histogram. Its noise, including slow variations such as
    uneven illumination, is read from the lower side of that peak, which tissue does not
    reach (tissue is brighter). The threshold lies ``k`` of those sd above the mode (at least
    ``min_margin`` grey levels, for a noiseless black padding): far below the tissue's own
    level however dim the tissue, not a split between bright cells and dim tissue as Otsu's
    threshold on fluorescence is. A threshold above ``MAX_CONTRAST`` of the way from the
    darkest level to the 95th percentile means no background peak exists (measured: real
    slides 0.04-0.10, TRP1 images filled with tissue 0.16-1.2); then only the darkest level
    (black padding) is background.
    """
    sample = s[:: max(1, s.shape[0] // 512), :: max(1, s.shape[1] // 512)].ravel()
    lo, mid = (float(v) for v in np.percentile(sample, [BACKGROUND_LOW, 50.0]))
    mode = lo
    if mid - lo > 1e-3:
        hist, edges = np.histogram(sample, bins=HIST_BINS, range=(lo, mid))
        hist = np.convolve(hist, [1, 2, 1], mode="same")  # one noisy bin is not a mode
        i = int(np.argmax(hist))
        mode = float(0.5 * (edges[i] + edges[i + 1]))
    t = mode + max(k * (mode - lo) / Z_LOW, min_margin)
    if t - lo > MAX_CONTRAST * (float(np.percentile(sample, 95.0)) - lo):
        # not a background well below the bulk of the signal but the slide's own dimmest
        # tissue (an image filled with tissue): only the darkest level itself is background
        return Background(float(sample.min()), float(sample.min()) + min_margin, False)
    return Background(mode, t, True)
